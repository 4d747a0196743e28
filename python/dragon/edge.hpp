// SPDX-License-Identifier: MIT
// The Python edge's shared helpers: Status -> Python exception (the one place it happens),
// timeouts from seconds, and blocking calls sliced so that signals are seen.
#pragma once

#include <pthread.h>
#include <unistd.h>

#include <dragon/client.hpp>

#include <pybind11/pybind11.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace dragon::python {

namespace py = pybind11;

using dragon::Status;
using dragon::StatusCode;

// Registered in PYBIND11_MODULE: DragonError and its subclasses.
inline PyObject* gDragonError = nullptr;
inline PyObject* gChannelClosed = nullptr;
inline PyObject* gPeerLost = nullptr;
inline PyObject* gNodeLost = nullptr;

[[noreturn]] inline void raise(const Status& st) {
  const std::string msg = st.toString();
  switch (st.code()) {
    case StatusCode::Timeout:
    case StatusCode::WouldBlock:
    case StatusCode::ChannelFull:  // a try that found no room: "not now", like a timeout
      PyErr_SetString(PyExc_TimeoutError, msg.c_str());
      break;
    case StatusCode::NotFound:
      PyErr_SetString(PyExc_LookupError, msg.c_str());
      break;
    case StatusCode::AlreadyExists:  // a name that is taken
      PyErr_SetString(PyExc_FileExistsError, msg.c_str());
      break;
    case StatusCode::InvalidArgument:
      PyErr_SetString(PyExc_ValueError, msg.c_str());
      break;
    case StatusCode::PermissionDenied:
      PyErr_SetString(PyExc_PermissionError, msg.c_str());
      break;
    case StatusCode::ChannelClosed:
      PyErr_SetString(gChannelClosed, msg.c_str());
      break;
    case StatusCode::PeerLost:
      PyErr_SetString(gPeerLost, msg.c_str());
      break;
    case StatusCode::NodeLost:  // the object's node, or the process's, left the job
      PyErr_SetString(gNodeLost, msg.c_str());
      break;
    default:
      PyErr_SetString(gDragonError, msg.c_str());
      break;
  }
  throw py::error_already_set();
}

inline void check(const Status& st) {
  if (!st.isOk()) raise(st);
}

template <typename T>
T take(dragon::Result<T>&& r) {
  if (!r.has_value()) raise(r.error());
  return std::move(*r);
}

// seconds (None: forever) -> Timeout
inline dragon::Timeout timeoutOf(const py::object& seconds) {
  if (seconds.is_none()) return dragon::Timeout::forever();
  const double s = seconds.cast<double>();
  if (!(s > 0)) return dragon::Timeout::none();  // NaN too
  return dragon::Timeout::after(std::chrono::duration<double>(s));  // saturates to forever
}

inline std::string descOf(const dragon::ObjectDescriptor& d) { return d.toString(); }
inline dragon::ObjectDescriptor parseDesc(const std::string& s) {
  return take(dragon::ObjectDescriptor::fromString(s));
}

// Releases the GIL for its scope, like py::gil_scoped_release, but safe for a daemon thread
// whose scope ends while the interpreter finalizes. Such a thread is ended inside
// PyEval_RestoreThread (by pthread_exit, which unwinds the stack): through a noexcept
// destructor, as py::gil_scoped_release's is, that unwinding aborts the process ("terminate
// called without an active exception"), so this destructor lets it pass. A thread that finds
// finalization already begun is parked instead, for the moment the process has left to live;
// not the main thread, which is the one finalizing (its objects collected at exit, a
// SharedMemory's close among them, still call dragond), and would never come back.
inline unsigned long gMainThread = 0;  // set by the module's init, from threading.main_thread()

class GilReleased {
 public:
  GilReleased() : state_(PyEval_SaveThread()) {}
  GilReleased(const GilReleased&) = delete;
  GilReleased& operator=(const GilReleased&) = delete;
  // NOLINTNEXTLINE(bugprone-exception-escape): the unwinding of pthread_exit, see above
  ~GilReleased() noexcept(false) {
    while (_Py_IsFinalizing() && PyThread_get_thread_ident() != gMainThread) pause();
    PyEval_RestoreThread(state_);
  }

 private:
  PyThreadState* state_;
};

// Runs f() (a call on the dragond client, which touches no Python object) with the GIL
// released: a round trip to dragond does not stop the process's other threads.
template <typename F>
auto unlocked(F&& f) {
  GilReleased released;
  return f();
}

// Runs a blocking channel call in slices of at most 50 ms with the GIL released, checking for
// signals between them: Ctrl-C interrupts a blocked get() or acquire() the way it would a
// blocked stdlib one (KeyboardInterrupt raised before anything was taken).
template <typename Op>
Status sliced(const dragon::Timeout& timeout, Op&& op, std::int64_t sliceNs = 50'000'000) {
  const dragon::Deadline deadline(timeout);
  for (;;) {
    std::int64_t left = sliceNs;
    if (!deadline.isForever()) {
      left = std::min(sliceNs, deadline.monotonicNs() - dragon::monotonicNowNs());
      if (left < 0) left = 0;
    }
    Status st;
    {
      GilReleased released;
      st = op(dragon::Timeout::after(std::chrono::nanoseconds(left)));
    }
    if (st.code() != StatusCode::Timeout || (!deadline.isForever() && deadline.expired()) ||
        timeout.isNone()) {
      return st;
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

// A status that means "not now" (nothing to take, no room yet, the deadline passed), not an
// error: what a blocking call retries, and what a queue reports as Empty or Full.
inline bool isNotNow(StatusCode c) {
  return c == StatusCode::WouldBlock || c == StatusCode::ChannelFull ||
         c == StatusCode::Timeout || c == StatusCode::PoolExhausted;
}

// Runs `op` once as a try with the GIL held (the fast path: no GIL hand-over, no sleep), and
// only when that finds nothing to do, sliced() as above.
template <typename Op>
Status tryThenSliced(const dragon::Timeout& timeout, Op&& op) {
  Status st = op(dragon::Timeout::none());
  if (timeout.isNone() || !isNotNow(st.code())) return st;
  return sliced(timeout, op);
}

// One part of a message: bytes to copy in, starting at a multiple of `align`.
struct Piece {
  const std::byte* data;
  std::size_t size;
  std::size_t align;
};

// Connections to this node's dragond for the operations on channels of other nodes. Such an
// operation waits at the channel's home, on a connection it borrows for that one call, so that
// a waiting get() holds back no other thread's operation. A process holds as many as it has
// operations in flight (not one per channel: a process using a thousand channels of other
// nodes holds a few connections, not a thousand), keeps at most kIdle, and a forked child
// starts with none (its parent's are closed in it).
class OpConnections {
 public:
  static constexpr std::size_t kIdle = 4;

  // Never destroyed: the connections close with the process.
  static OpConnections& instance() {
    static OpConnections* one = [] {
      one_ = new OpConnections();  // before the fork handlers that use it
      pthread_atfork([] { one_->mu_.lock(); }, [] { one_->mu_.unlock(); },
                     [] {
                       one_->idle_.clear();  // closes this child's copies of the parent's fds
                       one_->mu_.unlock();
                     });
      return one_;
    }();
    return *one;
  }

  dragon::Result<std::unique_ptr<dragon::Client>> borrow(const std::string& socket) {
    {
      std::lock_guard lk(mu_);
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    dragon::Client::Options o;
    o.socketPath = socket;
    o.name = "python " + std::to_string(::getpid()) + " remote channel operations";
    auto c = dragon::Client::connect(o);
    if (!c.has_value()) return c.error();
    return std::make_unique<dragon::Client>(std::move(*c));
  }

  // `last`: what the operation on it returned. A connection that failed (dragond gone, a
  // broken frame) is not kept.
  void giveBack(std::unique_ptr<dragon::Client> c, const Status& last) {
    const StatusCode k = last.code();
    const bool sound = last.isOk() || k == StatusCode::Timeout || k == StatusCode::WouldBlock ||
                       k == StatusCode::ChannelFull || k == StatusCode::ChannelClosed ||
                       k == StatusCode::MessageTooLarge || k == StatusCode::PoolExhausted;
    if (!sound) return;
    std::lock_guard lk(mu_);
    if (idle_.size() < kIdle) idle_.push_back(std::move(c));
  }

 private:
  OpConnections() = default;
  static inline OpConnections* one_ = nullptr;
  std::mutex mu_;
  std::vector<std::unique_ptr<dragon::Client>> idle_;
};

// A channel with the pool that holds it: what Python code holds. A channel of another node
// (ch->isRemote()) is reached through dragond: this process's client holds its reference, and
// each operation runs on a connection borrowed from OpConnections (`socket`: dragond's).
struct PyChannel {
  std::unique_ptr<dragon::ClientChannel> ch;
  std::string socket;

  bool remote() const { return ch->isRemote(); }
  // Runs a remote operation `op(via, timeout)` (via: this channel over the borrowed
  // connection) with the GIL released: a try once, a blocking one sliced() in slices of at
  // most 200 ms (each a request parked at the channel's home: a Timeout there took nothing).
  template <typename Op>
  Status remoteOp(const dragon::Timeout& timeout, Op&& op) {
    auto once = [&](dragon::Timeout t) -> Status {
      auto conn = OpConnections::instance().borrow(socket);
      if (!conn.has_value()) return conn.error();
      auto via = (*conn)->reach(*ch);
      if (!via.has_value()) return via.error();
      Status st = op(*via, t);
      OpConnections::instance().giveBack(std::move(*conn), st);
      return st;
    };
    if (timeout.isNone()) {
      GilReleased released;
      return once(timeout);
    }
    return sliced(timeout, once, 200'000'000);
  }

  void send(py::buffer data, const py::object& timeout);
  // Sent now, or false: no room (the channel full, or its pool out of blocks).
  bool trySend(py::buffer data);
  py::bytes recv(const py::object& timeout);
  // Queue messages (codec.cpp): put pickles (or not) and sends; get receives and unpickles.
  // put() reports an object that cannot be pickled to on_error(exception, obj) when given (and
  // drops it, as the stdlib Queue's feeder thread does); get() and put() raise queue.Empty and
  // queue.Full. recv_object() (Connection.recv) unpickles a message as pickle.loads does
  // (what is not a pickle fails as the stdlib's recv() would) and raises TimeoutError.
  void put(const py::object& obj, bool block, const py::object& timeout, const py::object& onError);
  py::object get(bool block, const py::object& timeout);
  py::object recvObject(const py::object& timeout);
  // Either kind of channel (codec.cpp).
  Status sendLaidOut(std::span<const Piece> pieces, const dragon::Timeout& t);
  Status sendBytes(std::span<const std::byte> s, const dragon::Timeout& t);
  Status receive(dragon::Message& m, const dragon::Timeout& t);
};

// Registers the codec's types and functions (codec.cpp).
void bindCodec(py::module_& m);

}  // namespace dragon::python
