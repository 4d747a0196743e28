// SPDX-License-Identifier: MIT
// Queue messages: how a Python object travels through a channel.
//
// A message is one of
//   - a pickle stream (protocol 5; its first byte is 0x80, PROTO): the object pickled in band;
//   - kRawBytes, then the contents of a bytes object (a large bytes object is not pickled);
//   - kOutOfBand, 7 bytes of padding, u64 count, u64 pickle length, count x u64 buffer length,
//     then the pickle stream, then each out-of-band buffer (pickle protocol 5's PickleBuffer)
//     at the next 64-byte boundary. The receiver unpickles with buffers that are views of the
//     message's pool block, so a numpy array arrives without a second copy: the block is freed
//     when the last view of it goes.
// A sender copies each payload once, straight into the pool block it then hands over; small
// messages are copied into the channel's ring.
#include "edge.hpp"

#include <cstring>
#include <optional>
#include <vector>

namespace dragon::python {

namespace {

constexpr std::uint8_t kRawBytes = 0x00;
constexpr std::uint8_t kOutOfBand = 0x01;
constexpr std::uint8_t kPickleProto = 0x80;
constexpr std::size_t kRawThreshold = 1024;    // bytes objects at least this long travel raw
constexpr std::size_t kAlign = 64;             // of out-of-band buffers in a message
constexpr std::size_t kCopyWithoutGil = 64 << 10;
constexpr std::size_t kOobFixed = 24;          // tag + padding, count, pickle length
constexpr std::size_t kSmallMessage = 4096;    // unpickled from a bytes copy, not a view

// The Python functions the codec calls, looked up once and kept for the interpreter's life
// (never destroyed: they would outlive the interpreter at exit).
struct Codec {
  py::object dumps;       // pickle.dumps
  py::object loads;       // pickle.loads
  py::object dumpsOob;    // dragon._pickling.dumps: ForkingPickler semantics, protocol 5
  py::object full;        // queue.Full
  py::object empty;       // queue.Empty
  py::object memoryview;  // builtins.memoryview
  py::object protocol;    // 5
};

Codec& codec() {
  static Codec* c = [] {
    auto* k = new Codec;
    py::module_ pickle = py::module_::import("pickle");
    k->dumps = pickle.attr("dumps");
    k->loads = pickle.attr("loads");
    k->dumpsOob = py::module_::import("dragon._pickling").attr("dumps");
    py::module_ queue = py::module_::import("queue");
    k->full = queue.attr("Full");
    k->empty = queue.attr("Empty");
    k->memoryview = py::module_::import("builtins").attr("memoryview");
    k->protocol = py::int_(5);
    return k;
  }();
  return *c;
}

std::size_t alignUp(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// What remains of a deadline, as a Timeout for the next step of the same call.
dragon::Timeout remaining(const dragon::Timeout& original, const dragon::Deadline& d) {
  if (original.isNone() || d.isForever()) return original;
  const std::int64_t left = d.monotonicNs() - dragon::monotonicNowNs();
  if (left <= 0) return dragon::Timeout::none();
  return dragon::Timeout::after(std::chrono::nanoseconds(left));
}

// Where each piece goes in the message (`at`), one after another at its alignment; the total.
std::size_t layOut(std::span<const Piece> pieces, std::vector<std::size_t>& at) {
  at.resize(pieces.size());
  std::size_t total = 0;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    at[i] = alignUp(total, pieces[i].align);
    total = at[i] + pieces[i].size;
  }
  return total;
}

void copyPieces(std::byte* dst, std::span<const Piece> pieces, std::span<const std::size_t> at) {
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    if (pieces[i].size > 0) std::memcpy(dst + at[i], pieces[i].data, pieces[i].size);
  }
}

// Lays the pieces out one after another (each at its alignment) and sends them as one message:
// into the ring when it fits there, else straight into a pool block that is handed over.
Status sendPieces(dragon::Channel& c, std::span<const Piece> pieces,
                  const dragon::Timeout& timeout) {
  std::vector<std::size_t> at;
  const std::size_t total = layOut(pieces, at);
  constexpr std::size_t kStack = 1024;
  if (total <= c.inlineSize() && total <= kStack) {
    std::byte buf[kStack];
    copyPieces(buf, pieces, at);
    return tryThenSliced(timeout, [&](dragon::Timeout t) { return c.send({buf, total}, t); });
  }
  const dragon::Deadline deadline(timeout);
  dragon::Pool& pool = c.pool();
  std::optional<dragon::PoolAllocation> block;
  DRAGON_TRY(tryThenSliced(timeout, [&](dragon::Timeout t) {
    auto r = pool.alloc(total, t);
    if (!r.has_value()) return r.error();
    block = *r;
    return Status::ok();
  }));
  auto* dst = static_cast<std::byte*>(pool.pointer(*block));
  if (total >= kCopyWithoutGil) {
    GilReleased released;
    copyPieces(dst, pieces, at);
  } else {
    copyPieces(dst, pieces, at);
  }
  Status st;
  try {
    st = tryThenSliced(remaining(timeout, deadline),
                       [&](dragon::Timeout t) { return c.sendBlock(*block, total, t); });
  } catch (...) {  // a signal handler raised while it waited: the block is still ours
    (void)pool.free(*block);
    throw;
  }
  if (!st.isOk()) (void)pool.free(*block);
  return st;
}

// A received message kept alive for the views that out-of-band buffers are: the buffer protocol
// of _native.Block exposes it, writable (the receiver owns the block).
struct PyBlock {
  // The pool of a block received from a channel of this node: its views (a numpy array that
  // get() returned) keep it mapped, also once the queue and every other reference to its pool
  // are gone. Declared first: it goes last, after the message has freed the block in it.
  std::shared_ptr<dragon::Pool> pool;
  std::unique_ptr<dragon::Message> message;
};

[[noreturn]] void corrupt(const char* what) {
  raise(Status(StatusCode::Corrupt, std::string("malformed queue message: ") + what));
}

// Reads a u64 of an out-of-band header (bounds checked by the caller).
std::uint64_t u64At(std::span<const std::byte> d, std::size_t offset) {
  std::uint64_t v;
  std::memcpy(&v, d.data() + offset, sizeof v);
  return v;
}

// Takes the message over: its views outlive this call.
py::object decodeOutOfBand(dragon::Message&& received, std::shared_ptr<dragon::Pool> pool) {
  auto m = std::make_unique<dragon::Message>(std::move(received));
  const std::span<const std::byte> d = m->data();
  if (d.size() < kOobFixed) corrupt("short out-of-band header");
  const std::uint64_t count = u64At(d, 8);
  const std::uint64_t pickleLen = u64At(d, 16);
  // As many as the sender had (a list of 100,000 arrays is one message); their lengths, 8 bytes
  // each, must fit in the message.
  if (count == 0 || count > (d.size() - kOobFixed) / 8) corrupt("bad buffer count");
  const std::size_t header = kOobFixed + 8 * count;
  if (header > d.size()) corrupt("short out-of-band header");
  if (pickleLen > d.size() - header) corrupt("pickle runs past the end");
  std::vector<std::pair<std::size_t, std::size_t>> spans;  // offset, length of each buffer
  std::size_t end = header + pickleLen;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t len = u64At(d, kOobFixed + 8 * i);
    const std::size_t at = alignUp(end, kAlign);
    if (at > d.size() || len > d.size() - at) corrupt("buffer runs past the end");
    spans.emplace_back(at, len);
    end = at + len;
  }
  Codec& k = codec();
  py::object holder = py::cast(PyBlock{std::move(pool), std::move(m)});
  py::object whole = k.memoryview(holder);
  py::list buffers;
  for (const auto& [at, len] : spans) {
    buffers.append(whole[py::slice(static_cast<py::ssize_t>(at), static_cast<py::ssize_t>(at + len), 1)]);
  }
  py::object pickle = whole[py::slice(static_cast<py::ssize_t>(header),
                                      static_cast<py::ssize_t>(header + pickleLen), 1)];
  py::object obj = k.loads(pickle, py::arg("buffers") = buffers);
  pickle.attr("release")();
  return obj;
}

// `from`: the channel it came from (whose pool out-of-band views keep mapped).
py::object decode(dragon::Message&& m, const PyChannel& from) {
  const std::span<const std::byte> d = m.data();
  if (d.empty()) corrupt("empty");
  const auto tag = static_cast<std::uint8_t>(d[0]);
  if (tag == kPickleProto && d.size() <= kSmallMessage) {
    // A small stream: a bytes copy costs less than making and releasing a view.
    PyObject* b = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(d.data()),
                                            static_cast<py::ssize_t>(d.size()));
    if (b == nullptr) throw py::error_already_set();
    PyObject* args[] = {b};
    PyObject* obj = PyObject_Vectorcall(codec().loads.ptr(), args, 1, nullptr);
    Py_DECREF(b);
    if (obj == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(obj);
  }
  if (tag == kPickleProto) {
    // Unpickled from a view of the message itself: no copy of the stream.
    py::object view = py::reinterpret_steal<py::object>(PyMemoryView_FromMemory(
        const_cast<char*>(reinterpret_cast<const char*>(d.data())),
        static_cast<py::ssize_t>(d.size()), PyBUF_READ));
    if (!view) throw py::error_already_set();
    py::object obj;
    try {
      obj = codec().loads(view);
    } catch (...) {
      view.attr("release")();
      throw;
    }
    view.attr("release")();
    return obj;
  }
  if (tag == kRawBytes) {
    const std::size_t n = d.size() - 1;
    PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<py::ssize_t>(n));
    if (b == nullptr) throw py::error_already_set();
    if (n >= kCopyWithoutGil) {
      GilReleased released;
      std::memcpy(PyBytes_AS_STRING(b), d.data() + 1, n);
    } else {
      std::memcpy(PyBytes_AS_STRING(b), d.data() + 1, n);
    }
    return py::reinterpret_steal<py::object>(b);
  }
  if (tag == kOutOfBand) {
    return decodeOutOfBand(std::move(m), from.remote() ? nullptr : from.ch->sharedPool());
  }
  corrupt("unknown tag");
}

// Exact types that no reducer of ForkingPickler's can change: pickle.dumps is the same there.
bool plainPickle(PyObject* o) {
  return PyBytes_CheckExact(o) || PyUnicode_CheckExact(o) || PyLong_CheckExact(o) ||
         PyFloat_CheckExact(o) || o == Py_None || PyBool_Check(o);
}

std::span<const std::byte> bytesOf(const py::buffer_info& b) {
  return {static_cast<const std::byte*>(b.ptr), static_cast<std::size_t>(b.size * b.itemsize)};
}

[[noreturn]] void raiseQueue(const Status& st, const py::object& instead) {
  if (isNotNow(st.code())) {
    PyErr_SetNone(instead.ptr());
    throw py::error_already_set();
  }
  raise(st);
}

}  // namespace

// Sends one message laid out from `pieces`: into the channel here, or as one contiguous
// message (the same layout) to a channel of another node.
Status PyChannel::sendLaidOut(std::span<const Piece> pieces, const dragon::Timeout& t) {
  if (!remote()) return sendPieces(ch->channel(), pieces, t);
  // Laid out straight into what goes to dragond (ClientChannel::sendFilled): a large message
  // is copied once on this side, as into a local channel's block.
  std::vector<std::size_t> at;
  const std::size_t total = layOut(pieces, at);
  return remoteOp(t, [&](dragon::ClientChannel& via, dragon::Timeout tt) {
    return via.sendFilled(total, [&](std::span<std::byte> to) { copyPieces(to.data(), pieces, at); }, tt);
  });
}

Status PyChannel::sendBytes(std::span<const std::byte> s, const dragon::Timeout& t) {
  if (remote()) {
    return remoteOp(t, [&](dragon::ClientChannel& via, dragon::Timeout tt) {
      return via.send(s, tt);
    });
  }
  dragon::Channel& c = ch->channel();
  return tryThenSliced(t, [&](dragon::Timeout tt) { return c.send(s, tt); });
}

Status PyChannel::receive(dragon::Message& m, const dragon::Timeout& t) {
  if (remote()) {
    return remoteOp(t, [&](dragon::ClientChannel& via, dragon::Timeout tt) -> Status {
      auto r = via.recvBytes(tt);
      if (!r.has_value()) return r.error();
      m = dragon::Message::fromBytes(std::move(*r));
      return Status::ok();
    });
  }
  dragon::Channel& c = ch->channel();
  return tryThenSliced(t, [&](dragon::Timeout tt) { return c.recv(m, tt); });
}

void PyChannel::put(const py::object& obj, bool block, const py::object& timeout,
                    const py::object& onError) {
  const dragon::Timeout t = block ? timeoutOf(timeout) : dragon::Timeout::none();
  Codec& k = codec();
  PyObject* o = obj.ptr();
  Status st;
  if (PyBytes_CheckExact(o) && static_cast<std::size_t>(PyBytes_GET_SIZE(o)) >= kRawThreshold) {
    static const std::byte tag{kRawBytes};
    const Piece pieces[] = {{&tag, 1, 1},
                            {reinterpret_cast<const std::byte*>(PyBytes_AS_STRING(o)),
                             static_cast<std::size_t>(PyBytes_GET_SIZE(o)), 1}};
    st = sendLaidOut(pieces, t);
  } else if (plainPickle(o)) {
    PyObject* args[] = {o, k.protocol.ptr()};
    auto data = py::reinterpret_steal<py::object>(
        PyObject_Vectorcall(k.dumps.ptr(), args, 2, nullptr));
    if (!data) throw py::error_already_set();
    const char* p = PyBytes_AS_STRING(data.ptr());
    const auto n = static_cast<std::size_t>(PyBytes_GET_SIZE(data.ptr()));
    st = sendBytes({reinterpret_cast<const std::byte*>(p), n}, t);
  } else {
    py::tuple res;
    try {
      PyObject* args[] = {o};
      PyObject* r = PyObject_Vectorcall(k.dumpsOob.ptr(), args, 1, nullptr);
      if (r == nullptr) throw py::error_already_set();
      res = py::reinterpret_steal<py::tuple>(r);
    } catch (py::error_already_set& e) {
      if (onError.is_none()) throw;
      // As the stdlib Queue's feeder thread does: report the object and drop it.
      onError(e.value(), obj);
      return;
    }
    py::buffer data = res[0];
    py::list bufs = res[1];
    py::buffer_info pinfo = data.request();
    if (bufs.empty()) {
      st = sendBytes(bytesOf(pinfo), t);
    } else {
      // Header, pickle stream, then every buffer (PickleBuffer.raw(): contiguous bytes).
      const std::size_t hdr = kOobFixed + 8 * bufs.size();
      std::vector<std::byte> header(hdr);
      header[0] = std::byte{kOutOfBand};
      const std::uint64_t count = bufs.size();
      const std::uint64_t plen = bytesOf(pinfo).size();
      std::memcpy(header.data() + 8, &count, 8);
      std::memcpy(header.data() + 16, &plen, 8);
      std::vector<py::buffer_info> infos;
      infos.reserve(bufs.size());
      for (py::handle b : bufs) {
        infos.push_back(py::reinterpret_borrow<py::object>(b).attr("raw")().cast<py::buffer>().request());
      }
      std::vector<Piece> pieces{{header.data(), hdr, 1}, {bytesOf(pinfo).data(), plen, 1}};
      for (std::size_t i = 0; i < infos.size(); ++i) {
        const auto s = bytesOf(infos[i]);
        const std::uint64_t len = s.size();
        std::memcpy(header.data() + kOobFixed + 8 * i, &len, 8);
        pieces.push_back({s.data(), s.size(), kAlign});
      }
      st = sendLaidOut(pieces, t);
    }
  }
  if (!st.isOk()) raiseQueue(st, k.full);
}

py::object PyChannel::get(bool block, const py::object& timeout) {
  const dragon::Timeout t = block ? timeoutOf(timeout) : dragon::Timeout::none();
  dragon::Message m;
  Status st = receive(m, t);
  if (!st.isOk()) raiseQueue(st, codec().empty);
  return decode(std::move(m), *this);
}

py::object PyChannel::recvObject(const py::object& timeout) {
  dragon::Message m;
  check(receive(m, timeoutOf(timeout)));
  const std::span<const std::byte> d = m.data();
  if (d.empty() || static_cast<std::uint8_t>(d[0]) != kPickleProto) {
    // Not a pickle (send_bytes data): unpickled as it is, so the error is the stdlib's
    // recv() error for it, never another tag's reading of the caller's bytes.
    py::bytes b(reinterpret_cast<const char*>(d.data()), d.size());
    return codec().loads(b);
  }
  return decode(std::move(m), *this);
}

void bindCodec(py::module_& m) {
  py::class_<PyBlock>(m, "Block", py::buffer_protocol(),
                      "A received message's pool memory, seen through memoryviews")
      .def_buffer([](PyBlock& b) {
        const std::span<std::byte> d = b.message->mutableData();
        return py::buffer_info(d.data(), 1, py::format_descriptor<std::uint8_t>::format(),
                               static_cast<py::ssize_t>(d.size()), false);
      })
      .def_property_readonly("in_pool", [](const PyBlock& b) { return b.message->isBlock(); });
}

}  // namespace dragon::python
