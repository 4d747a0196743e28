// SPDX-License-Identifier: MIT
// dragon._native: the pybind11 edge over libdragon's public C++ API. The one place where a
// Status becomes a Python exception; blocking calls release the GIL.
#include "edge.hpp"

#include "config/config.hpp"

#include <dragon/client.hpp>

#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <poll.h>
#include <string>

namespace dragon::python {

namespace {

// The bytes of a buffer to send: one contiguous run, or a ValueError.
std::span<const std::byte> sendable(const py::buffer_info& info) {
  if (info.ndim > 1 && info.strides.back() != info.itemsize) {
    throw py::value_error("send needs a contiguous buffer");
  }
  return {static_cast<const std::byte*>(info.ptr), static_cast<std::size_t>(info.size * info.itemsize)};
}

}  // namespace

void PyChannel::send(py::buffer data, const py::object& timeout) {
  const py::buffer_info info = data.request();
  check(sendBytes(sendable(info), timeoutOf(timeout)));
}

bool PyChannel::trySend(py::buffer data) {
  const py::buffer_info info = data.request();
  const Status st = sendBytes(sendable(info), dragon::Timeout::none());
  if (!st.isOk() && isNotNow(st.code())) return false;
  check(st);
  return true;
}

py::bytes PyChannel::recv(const py::object& timeout) {
  dragon::Message m;
  check(receive(m, timeoutOf(timeout)));
  return py::bytes(reinterpret_cast<const char*>(m.data().data()), m.data().size());
}

}  // namespace dragon::python

namespace {

using namespace dragon::python;  // NOLINT(google-build-using-namespace): this file's own edge

dragon::Stdio stdioOf(const std::string& s) {
  if (s == "inherit") return dragon::Stdio::Inherit;
  if (s == "capture") return dragon::Stdio::Capture;
  if (s == "null") return dragon::Stdio::Null;
  if (s == "file") return dragon::Stdio::File;
  if (s == "passed") return dragon::Stdio::Passed;
  throw py::value_error("stdio mode is one of inherit, capture, null, file, passed: " + s);
}

// Word `index` of a live allocation (allocations are 8-aligned).
std::uint64_t* wordAt(const dragon::Pool& p, std::uint64_t offset, std::uint64_t index) {
  const dragon::PoolAllocation a = take(p.allocationAt(offset));
  if (a.size / sizeof(std::uint64_t) <= index) {
    throw py::value_error("the allocation has no word " + std::to_string(index));
  }
  return static_cast<std::uint64_t*>(p.pointerAt(offset)) + index;
}

// Whether a channel of another node has `events`: now (a try poll at its home), or within
// `timeout` (a poll parked at its home, in remoteOp's slices).
bool remoteReady(PyChannel& c, dragon::WaitFor events,
                 const dragon::Timeout& timeout = dragon::Timeout::none()) {
  const auto has = [&](dragon::WaitFor w) {
    return (static_cast<unsigned>(w) & static_cast<unsigned>(events)) != 0;
  };
  dragon::WaitFor got{};
  const Status st = c.remoteOp(timeout, [&](dragon::ClientChannel& via,
                                            dragon::Timeout t) -> Status {
    auto r = via.poll(events, t);
    if (!r.has_value()) return r.error();
    got = *r;
    if (has(got) || t.isNone()) return Status::ok();
    return Status(StatusCode::Timeout, "not ready yet");
  });
  if (st.code() == StatusCode::Timeout) return false;
  check(st);
  return has(got);
}

// Writable memory of a live pool allocation, exported through the buffer protocol; holding it
// keeps the pool mapped.
struct PoolView {
  std::shared_ptr<dragon::Pool> pool;
  std::uint64_t offset;
  std::size_t size;
};

// connection.wait over dragon channels and fds. The channels are waited on with their futexes
// (Channel::waitAny); fds, which no futex reports, are polled between slices of that wait that
// grow from 50 us to 5 ms. The GIL is released throughout (other threads run), and signals are
// checked between slices, as in every blocking call here.
bool waitAnyMixed(const std::vector<PyChannel*>& channels, std::vector<pollfd>& pfds,
                  const dragon::Deadline& deadline);

bool waitAnyOf(const std::vector<PyChannel*>& channels, const std::vector<int>& fds,
               const py::object& timeout) {
  if (channels.empty() || channels.size() > dragon::Channel::kMaxWaitItems) {
    throw py::value_error("wait_any takes 1 to 64 channels");
  }
  bool anyRemote = false;
  for (PyChannel* c : channels) {
    if (c == nullptr) throw py::value_error("wait_any: None is not a channel");
    anyRemote = anyRemote || c->remote();
  }
  std::vector<pollfd> pfds;
  for (int fd : fds) pfds.push_back({fd, POLLIN, 0});
  const dragon::Deadline deadline(timeoutOf(timeout));
  if (anyRemote) return waitAnyMixed(channels, pfds, deadline);
  std::vector<dragon::Channel::WaitItem> items;
  items.reserve(channels.size());
  for (PyChannel* c : channels) items.push_back({&c->ch->channel(), dragon::WaitFor::Readable, {}});
  constexpr std::int64_t kSignalSliceNs = 50'000'000;
  std::int64_t slice = pfds.empty() ? kSignalSliceNs : 50'000;
  for (;;) {
    std::int64_t left = slice;
    if (!deadline.isForever()) {
      left = std::min(slice, deadline.monotonicNs() - dragon::monotonicNowNs());
      if (left < 0) left = 0;
    }
    dragon::Result<std::size_t> n = std::size_t{0};
    bool fdReady = false;
    {
      GilReleased released;
      if (!pfds.empty()) fdReady = ::poll(pfds.data(), pfds.size(), 0) > 0;
      if (!fdReady) {
        n = dragon::Channel::waitAny(items, dragon::Timeout::after(std::chrono::nanoseconds(left)));
      }
    }
    if (fdReady) return true;
    if (!n.has_value()) raise(n.error());
    if (*n > 0) return true;
    if (!deadline.isForever() && deadline.expired()) return false;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (!pfds.empty()) slice = std::min<std::int64_t>(slice * 2, 5'000'000);
  }
}

// The same over channels of this node and of others: one Client::waitAny on a borrowed
// connection (the remote ones parked at their homes, the local ones slept on here), in slices of
// 200 ms, or, with fds to look at, of 1 ms growing to 5 ms (each slice is one request to
// dragond, whatever the number of channels). NodeLost when a remote channel's node is lost.
bool waitAnyMixed(const std::vector<PyChannel*>& channels, std::vector<pollfd>& pfds,
                  const dragon::Deadline& deadline) {
  constexpr std::size_t kMaxClientWaitItems = 63;  // Client::waitAny's limit
  if (channels.size() > kMaxClientWaitItems) {
    throw py::value_error("wait_any over channels of other nodes takes at most 63 channels");
  }
  std::int64_t slice = pfds.empty() ? 200'000'000 : 1'000'000;
  for (;;) {
    std::int64_t left = slice;
    if (!deadline.isForever()) {
      left = std::min(slice, deadline.monotonicNs() - dragon::monotonicNowNs());
      if (left < 0) left = 0;
    }
    bool fdReady = false;
    bool ready = false;
    Status st;
    {
      GilReleased released;
      if (!pfds.empty()) fdReady = ::poll(pfds.data(), pfds.size(), 0) > 0;
      if (!fdReady) {
        auto conn = OpConnections::instance().borrow(channels.front()->socket);
        if (!conn.has_value()) {
          st = conn.error();
        } else {
          std::vector<dragon::ClientChannel> via;  // the remote ones over this connection
          via.reserve(channels.size());
          std::vector<dragon::ClientWaitItem> items(channels.size());
          for (std::size_t i = 0; i < channels.size() && st.isOk(); ++i) {
            PyChannel* c = channels[i];
            items[i].events = dragon::WaitFor::Readable;
            if (!c->remote()) {
              items[i].mapped = &c->ch->channel();
              continue;
            }
            auto v = (*conn)->reach(*c->ch);
            if (!v.has_value()) {
              st = v.error();
              break;
            }
            via.push_back(std::move(*v));
            items[i].channel = &via.back();
          }
          if (st.isOk()) {
            auto n = (*conn)->waitAny(items, dragon::Timeout::after(std::chrono::nanoseconds(left)));
            if (n.has_value()) {
              ready = *n > 0;
            } else {
              st = n.error();
            }
          }
          OpConnections::instance().giveBack(std::move(*conn), st);
        }
      }
    }
    if (fdReady || ready) return true;
    if (!st.isOk() && st.code() != StatusCode::Timeout) check(st);
    if (!deadline.isForever() && deadline.expired()) return false;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (!pfds.empty()) slice = std::min<std::int64_t>(slice * 2, 5'000'000);
  }
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "Dragon's native layer: the dragond client, pools and channels";
  static py::exception<std::runtime_error> dragonError(m, "DragonError");
  gDragonError = dragonError.ptr();
  static py::exception<std::runtime_error> channelClosed(m, "ChannelClosed", dragonError.ptr());
  gChannelClosed = channelClosed.ptr();
  static py::exception<std::runtime_error> peerLost(m, "PeerLost", PyExc_ConnectionError);
  gPeerLost = peerLost.ptr();
  static py::exception<std::runtime_error> nodeLost(m, "NodeLost", dragonError.ptr());
  gNodeLost = nodeLost.ptr();
  gMainThread =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();

  bindCodec(m);

  m.def("wait_any", &waitAnyOf, py::arg("channels"), py::arg("fds"), py::arg("timeout"),
        "Waits until one of the channels is readable or closed, or one of the fds readable "
        "(True), or the timeout (seconds, None: forever) passes (False)");
  m.def("home_node", [](const std::string& desc) { return parseDesc(desc).node; },
        py::arg("descriptor"), "The node that holds the object of a descriptor");
  m.def("default_socket_path", &dragon::defaultSocketPath);
  m.def("default_runtime_dir", &dragon::defaultRuntimeDir);
  // Where dragon.yaml (and DRAGON_* variables) put dragond's socket, as the launcher reads
  // them; "" when they put it nowhere special or do not load (a private dragond started next
  // reports why).
  m.def("configured_socket_path", [] {
    auto cfg = dragon::config::Config::load(dragon::config::LoadOptions{});
    return cfg.has_value() ? dragon::config::configuredSocketPath(*cfg) : std::string();
  });

  py::class_<dragon::Pool, std::shared_ptr<dragon::Pool>>(m, "Pool")
      .def_property_readonly("descriptor",
                             [](const dragon::Pool& p) { return descOf(p.descriptor()); })
      .def_property_readonly("size", &dragon::Pool::segmentSize)
      .def("alloc",
           [](dragon::Pool& p, std::size_t bytes, bool shared) {
             if (bytes == 0) throw py::value_error("an allocation needs at least one byte");
             if (shared) {
               return take(p.allocAs(bytes, dragon::OwnerTag::object(), dragon::Timeout::none()))
                   .offset;
             }
             return take(p.alloc(bytes)).offset;
           },
           py::arg("size"), py::arg("shared") = false,
           "Allocates size bytes, owned by this process (freed if it dies) or, shared, by no "
           "process (freed by whoever frees it last); returns the offset")
      .def("free",
           [](dragon::Pool& p, std::uint64_t offset) { check(p.free(take(p.allocationAt(offset)))); },
           py::arg("offset"))
      .def("view",
           [](const std::shared_ptr<dragon::Pool>& p, std::uint64_t offset, std::size_t size) {
             const dragon::PoolAllocation a = take(p->allocationAt(offset));
             if (size > a.size) throw py::value_error("the view is larger than the allocation");
             return PoolView{p, offset, size};
           },
           py::arg("offset"), py::arg("size"),
           "A writable buffer over an allocation (it keeps the pool mapped)")
      .def("load_u64",
           [](const dragon::Pool& p, std::uint64_t offset, std::uint64_t index) {
             return std::atomic_ref<std::uint64_t>(*wordAt(p, offset, index)).load();
           },
           py::arg("offset"), py::arg("index") = 0,
           "Atomically reads word `index` (8 bytes) of an allocation")
      .def("store_u64",
           [](const dragon::Pool& p, std::uint64_t offset, std::uint64_t value,
              std::uint64_t index) {
             std::atomic_ref<std::uint64_t>(*wordAt(p, offset, index)).store(value);
           },
           py::arg("offset"), py::arg("value"), py::arg("index") = 0)
      .def("add_u64",
           [](const dragon::Pool& p, std::uint64_t offset, std::int64_t delta,
              std::uint64_t index) {
             return static_cast<std::int64_t>(
                 std::atomic_ref<std::uint64_t>(*wordAt(p, offset, index))
                     .fetch_add(static_cast<std::uint64_t>(delta)) +
                 static_cast<std::uint64_t>(delta));
           },
           py::arg("offset"), py::arg("delta"), py::arg("index") = 0,
           "Atomically adds delta to word `index` of an allocation; returns the new value")
      .def("cas_u64",
           [](const dragon::Pool& p, std::uint64_t offset, std::uint64_t expected,
              std::uint64_t desired, std::uint64_t index) {
             return std::atomic_ref<std::uint64_t>(*wordAt(p, offset, index))
                 .compare_exchange_strong(expected, desired);
           },
           py::arg("offset"), py::arg("expected"), py::arg("desired"), py::arg("index") = 0,
           "Atomically replaces the word if it holds expected; True if it did")
      .def("allocations",
           [](dragon::Pool& p) {
             std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
             check(p.reclaim([&](dragon::OwnerTag, const dragon::PoolAllocation& a) {
                      out.emplace_back(a.offset, a.size);
                      return true;  // keeps every one: a walk, not a reclaim
                    })
                       .status());
             return out;
           },
           "(offset, size) of every live allocation")
      .def("stats", [](const dragon::Pool& p) {
        auto s = take(p.stats());
        py::dict d;
        d["total_bytes"] = s.totalBytes;
        d["used_bytes"] = s.usedBytes;
        d["free_bytes"] = s.freeBytes;
        d["largest_free_block"] = s.largestFreeBlock;
        d["allocation_count"] = s.allocationCount;
        return d;
      });

  py::class_<PoolView>(m, "PoolView", py::buffer_protocol())
      .def_buffer([](PoolView& v) {
        return py::buffer_info(v.pool->pointerAt(v.offset), 1,
                               py::format_descriptor<std::uint8_t>::format(),
                               static_cast<py::ssize_t>(v.size), false);
      });

  py::class_<PyChannel>(m, "Channel")
      .def_property_readonly("descriptor",
                             [](const PyChannel& c) { return descOf(c.ch->descriptor()); })
      .def_property_readonly("pool", [](const PyChannel& c) { return c.ch->sharedPool(); },
                             "The pool that holds it (holding it keeps the pool mapped)")
      .def_property_readonly("capacity",
                             [](PyChannel& c) { return c.ch->capacity(); })
      .def("send", &PyChannel::send, py::arg("data"), py::arg("timeout") = py::none())
      .def("try_send", &PyChannel::trySend, py::arg("data"))
      .def("recv", &PyChannel::recv, py::arg("timeout") = py::none())
      .def("put", &PyChannel::put, py::arg("obj"), py::arg("block") = true,
           py::arg("timeout") = py::none(), py::arg("on_error") = py::none())
      .def("get", &PyChannel::get, py::arg("block") = true, py::arg("timeout") = py::none())
      .def("recv_object", &PyChannel::recvObject, py::arg("timeout") = py::none())
      .def("size",
           [](PyChannel& c) {
             if (c.remote()) {
               // As the stdlib's qsize() and get_value() where sem_getvalue is missing.
               PyErr_SetString(PyExc_NotImplementedError,
                               "the size of a channel of another node is not known here");
               throw py::error_already_set();
             }
             return c.ch->channel().size();
           })
      .def("readable",
           [](PyChannel& c) {
             return c.remote() ? remoteReady(c, dragon::WaitFor::Readable) : c.ch->channel().readable();
           })
      .def("wait_readable",
           [](PyChannel& c, const py::object& timeout) {
             if (!c.remote()) {
               std::vector<PyChannel*> one{&c};
               return waitAnyOf(one, {}, timeout);
             }
             return remoteReady(c, dragon::WaitFor::Readable, timeoutOf(timeout));
           },
           py::arg("timeout") = py::none(),
           "Waits until a receive would not block (or the channel is closed), at most "
           "timeout seconds (None: forever); False if the time ran out")
      .def("writable",
           [](PyChannel& c) {
             return c.remote() ? remoteReady(c, dragon::WaitFor::Writable) : c.ch->channel().writable();
           })
      .def("wait_writable",
           [](PyChannel& c, const py::object& timeout) {
             if (c.remote()) return remoteReady(c, dragon::WaitFor::Writable, timeoutOf(timeout));
             dragon::Channel::WaitItem item{&c.ch->channel(), dragon::WaitFor::Writable, {}};
             const Status st = sliced(timeoutOf(timeout), [&](dragon::Timeout t) -> Status {
               auto n = dragon::Channel::waitAny(std::span(&item, 1), t);
               if (!n.has_value()) return n.error();
               return *n != 0 ? Status::ok() : Status(StatusCode::Timeout);
             });
             if (st.code() == StatusCode::Timeout) return false;
             check(st);
             return true;
           },
           py::arg("timeout") = py::none(),
           "Waits until a send would not block (or the channel is closed), at most timeout "
           "seconds (None: forever); False if the time ran out")
      .def("close",
           [](PyChannel& c) {
             if (!c.remote()) {
               check(c.ch->channel().close());
               return;
             }
             check(c.remoteOp(dragon::Timeout::none(),
                              [](dragon::ClientChannel& via, dragon::Timeout) { return via.close(); }));
           })
      .def("is_closed",
           [](PyChannel& c) {
             // A closed channel polls readable; of another node, only a receive tells closed
             // from readable, and it would take a message: false there (readable() covers it).
             return !c.remote() && c.ch->channel().isClosed();
           })
      .def_property_readonly("is_remote", &PyChannel::remote)
      .def_property_readonly("home_node", [](const PyChannel& c) { return c.ch->descriptor().node; },
                             "The node that holds it");

  py::class_<dragon::Client>(m, "Client")
      .def(py::init([](const std::string& socket, const std::string& name, bool prefault) {
             dragon::Client::Options o;
             o.socketPath = socket;
             o.name = name;
             o.prefault = prefault;
             return take(dragon::Client::connect(o));
           }),
           py::arg("socket") = "", py::arg("name") = "python", py::arg("prefault") = true)
      .def("create_pool",
           [](dragon::Client& c, std::uint64_t size, const std::string& name, bool lazy) {
             return take(unlocked([&] { return c.createPool(size, name, lazy); }));
           },
           py::arg("size") = 0, py::arg("name") = "", py::arg("lazy") = false)
      .def("create_channel",
           [](dragon::Client& c, const std::shared_ptr<dragon::Pool>& pool, std::uint32_t capacity,
              std::uint32_t inlineSize, const std::string& name, bool trackHolder,
              bool holderOwns) {
             dragon::ChannelOptions o;
             o.capacity = capacity;
             o.inlineSize = inlineSize;
             o.trackHolder = trackHolder;
             o.holderOwns = holderOwns;
             const dragon::ObjectDescriptor pd = pool->descriptor();
             return PyChannel{take(unlocked([&] { return c.createChannel(pd, o, name); })), {}};
           },
           py::arg("pool"), py::arg("capacity") = 0, py::arg("inline_size") = 0,
           py::arg("name") = "", py::arg("track_holder") = false,
           py::arg("holder_owns") = false)
      .def("attach_channel",
           [](dragon::Client& c, const std::string& desc, const std::string& socket) {
             std::unique_ptr<dragon::ClientChannel> ch;
             if (desc.rfind("dragon:", 0) == 0) {
               const dragon::ObjectDescriptor d = parseDesc(desc);
               ch = take(unlocked([&] { return c.attachChannel(d); }));
             } else {
               const std::string_view name(desc);
               ch = take(unlocked([&] { return c.attachChannel(name); }));
             }
             // A channel of another node (found by name or descriptor in a multi-node job): this
             // client holds its reference; its operations borrow connections (OpConnections).
             std::string via = ch->isRemote() ? socket : std::string();
             return PyChannel{std::move(ch), std::move(via)};
           },
           py::arg("desc"), py::arg("socket") = "")
      .def("attach_pool",
           [](dragon::Client& c, const std::string& desc) {
             if (desc.rfind("dragon:", 0) == 0) {
               const dragon::ObjectDescriptor d = parseDesc(desc);
               return take(unlocked([&] { return c.attachPool(d); }));
             }
             return take(unlocked([&] { return c.attachPool(std::string_view(desc)); }));
           })
      .def("detach",
           [](dragon::Client& c, const std::string& d) {
             const dragon::ObjectDescriptor desc = parseDesc(d);
             check(unlocked([&] { return c.detach(desc); }));
           })
      .def("detach_later",
           [](dragon::Client& c, const std::string& d) {
             const dragon::ObjectDescriptor desc = parseDesc(d);
             check(unlocked([&] { return c.detachLater(desc); }));
           },
           "Detaches without waiting for dragond's answer")
      .def("destroy",
           [](dragon::Client& c, const std::string& d) {
             const dragon::ObjectDescriptor desc = parseDesc(d);
             check(unlocked([&] { return c.destroy(desc); }));
           })
      .def("register_name",
           [](dragon::Client& c, const std::string& name, const std::string& desc, bool scoped,
              bool replace) {
             const dragon::ObjectDescriptor d = parseDesc(desc);
             check(unlocked([&] { return c.registerName(name, d, scoped, replace); }));
           },
           py::arg("name"), py::arg("descriptor"), py::arg("scoped") = false,
           py::arg("replace") = false,
           "Names an object; a scoped name goes when this client disconnects")
      .def("lookup_name",
           [](dragon::Client& c, const std::string& name) {
             return descOf(take(unlocked([&] { return c.lookupName(name); })));
           })
      .def("spawn",
           [](dragon::Client& c, const std::vector<std::string>& argv,
              const std::vector<std::string>& env, const std::string& cwd, const std::string& in,
              const std::string& out, const std::string& err, int inFd, int outFd, int errFd,
              const std::string& label, std::uint32_t count, const std::vector<int>& extraFds,
              int extraFdBase, const py::object& node) {
             dragon::SpawnOptions o;
             if (!node.is_none()) o.placement = dragon::Placement::onNode(node.cast<std::uint32_t>());
             o.argv = argv;
             o.env = env;
             o.cwd = cwd;
             o.stdinMode = stdioOf(in);
             o.stdoutMode = stdioOf(out);
             o.stderrMode = stdioOf(err);
             o.stdinFd = inFd;
             o.stdoutFd = outFd;
             o.stderrFd = errFd;
             o.label = label;
             o.count = count;
             o.extraFds = extraFds;
             o.extraFdBase = extraFdBase;
             std::vector<std::tuple<std::uint64_t, int, std::uint64_t>> out2;
             for (const auto& p : take(unlocked([&] { return c.spawn(o); }))) {
               out2.emplace_back(p.puid, p.pid, p.group);
             }
             return out2;
           },
           py::arg("argv"), py::arg("env") = std::vector<std::string>{}, py::arg("cwd") = "",
           py::arg("stdin") = "null", py::arg("stdout") = "passed", py::arg("stderr") = "passed",
           py::arg("stdin_fd") = 0, py::arg("stdout_fd") = 1, py::arg("stderr_fd") = 2,
           py::arg("label") = "", py::arg("count") = 1,
           py::arg("extra_fds") = std::vector<int>{}, py::arg("extra_fd_base") = 100,
           py::arg("node") = py::none())
      .def("wait",
           [](dragon::Client& c, const std::vector<std::uint64_t>& puids, const py::object& timeout) {
             const dragon::Timeout t = timeoutOf(timeout);
             std::vector<std::tuple<std::uint64_t, int, int>> out;
             for (const auto& e : take(unlocked([&] { return c.wait(puids, t); }))) {
               out.emplace_back(e.puid, e.exitCode, e.signal);
             }
             return out;
           },
           py::arg("puids"), py::arg("timeout") = py::none())
      .def("signal",
           [](dragon::Client& c, const std::vector<std::uint64_t>& puids, int sig) {
             check(unlocked([&] { return c.signal(puids, sig); }));
           })
      .def("list_processes",
           [](dragon::Client& c) {
             py::list out;
             for (const auto& p : take(unlocked([&] { return c.listProcesses(); }))) {
               py::dict d;
               d["puid"] = p.puid;
               d["pid"] = p.pid;
               d["running"] = p.running;
               d["argv"] = p.argv;
               d["exit_code"] = p.exit.exitCode;
               d["signal"] = p.exit.signal;
               d["group"] = p.group;
               d["job"] = p.job;
               d["label"] = p.label;
               out.append(d);
             }
             return out;
           })
      .def("adopt",
           [](dragon::Client& c, int pid, const std::vector<std::string>& argv, bool idle,
              int stdoutFd, int stderrFd) {
             return take(unlocked([&] { return c.adopt(pid, argv, idle, stdoutFd, stderrFd); }))
                 .puid;
           },
           py::arg("pid"), py::arg("argv"), py::arg("idle") = false, py::arg("stdout_fd") = -1,
           py::arg("stderr_fd") = -1,
           "Puts this process's own child in dragond's process table and job (it must not be "
           "reaped before this returns); its puid. Report its end with report_exited. "
           "stdout_fd/stderr_fd: the read end of the pipe it writes that stream to, which "
           "dragond then reads as its output (this process closes its own fd)")
      .def("report_started",
           [](dragon::Client& c, std::uint64_t puid, const std::string& label) {
             check(unlocked([&] { return c.reportStarted(puid, label); }));
           },
           py::arg("puid"), py::arg("label") = "",
           "One-way: an idle adopted process now runs (dragond lists it from now on)")
      .def("report_exited",
           [](dragon::Client& c, std::uint64_t puid, int exitCode, int sig) {
             check(unlocked([&] { return c.reportExited(dragon::ExitInfo{puid, exitCode, sig}); }));
           },
           py::arg("puid"), py::arg("exit_code"), py::arg("signal"),
           "One-way: how an adopted process ended, as waitpid() said (having reaped it)")
      .def("end_job", [](dragon::Client& c, bool now) { check(c.endJob(now)); },
           py::arg("now") = false)
      .def("nodes",
           [](dragon::Client& c) {
             py::list out;
             for (const auto& n : take(unlocked([&] { return c.nodes(); }))) {
               out.append(py::make_tuple(n.node, n.hostname, n.cpus));
             }
             return out;
           },
           "[(node, hostname, cpus)]: the job's live nodes; outside a multi-node job, this one "
           "alone, with cpus 0")
      .def("copy_memory",
           [](dragon::Client& c, bool put, const std::string& localPool, std::uint64_t localAlloc,
              const std::string& farPool, std::uint64_t farAlloc, std::uint64_t length,
              const py::object& timeout, std::uint64_t localOffset, std::uint64_t farOffset) {
             const dragon::MemoryRange local{parseDesc(localPool), localAlloc, localOffset};
             const dragon::MemoryRange far{parseDesc(farPool), farAlloc, farOffset};
             const dragon::Timeout t = timeoutOf(timeout);
             check(unlocked([&]() -> Status {
               auto transfer = put ? c.put(local, far, length) : c.get(far, local, length);
               if (!transfer.has_value()) return transfer.error();
               return transfer->wait(t);
             }));
           },
           py::arg("put"), py::arg("local_pool"), py::arg("local_allocation"),
           py::arg("far_pool"), py::arg("far_allocation"), py::arg("length"),
           py::arg("timeout") = py::none(), py::arg("local_offset") = 0,
           py::arg("far_offset") = 0,
           "Copies `length` bytes between an allocation of this node's pool (from local_offset "
           "in it) and one of a pool of any node (from far_offset; put: to it; else from it), "
           "and waits for the copy")
      .def_property_readonly("node", &dragon::Client::node)
      .def_property_readonly("fd", &dragon::Client::fd);
}
