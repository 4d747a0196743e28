// SPDX-License-Identifier: MIT
// The client side of the control protocol: one request at a time per call, replies matched by
// request id (calls may nest from an interrupt handler), output lines dispatched as they come.
#include <dragon/client.hpp>

#include "protocol/codec.hpp"
#include "protocol/socket_io.hpp"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

extern char** environ;

namespace dragon {
namespace pb = dragon::protocol;

std::string defaultRuntimeDir() {
  // Only a directory of ours: srun and sbatch export the login node's XDG_RUNTIME_DIR
  // (/run/user/UID, made by logind there) to compute nodes where it may not exist.
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  struct stat st {};
  if (xdg != nullptr && xdg[0] == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode) &&
      st.st_uid == getuid()) {
    return std::string(xdg) + "/dragon";
  }
  return "/tmp/dragon-" + std::to_string(getuid());
}

std::string defaultSocketPath() {
  const char* s = std::getenv("DRAGON_SOCKET");
  if (s != nullptr && s[0] != '\0') {
    return s;
  }
  // The system's per-user instance (dragond@UID.socket), when one is set up; not inside a
  // Slurm job: its processes would run in the service's cgroup, outside the job's limits and
  // accounting, and outlive the job (the job's epilog ends only the job's dragonds).
  const std::string system = "/run/dragon/" + std::to_string(getuid()) + "/dragond.sock";
  const char* slurmJob = std::getenv("SLURM_JOB_ID");
  if ((slurmJob == nullptr || slurmJob[0] == '\0') && access(system.c_str(), F_OK) == 0) {
    return system;
  }
  return defaultRuntimeDir() + "/dragond.sock";
}

namespace {
// A remote send of at least this many bytes is staged (ClientConnection::stage) ...
constexpr std::size_t kStagedMin = std::size_t{64} << 10;
// ... in a pool of this size (its pages taken as used): a message of the largest size one
// transport message carries, or the first parts of a larger one; what does not fit goes inline.
constexpr std::uint64_t kStagingPoolBytes = std::uint64_t{32} << 20;
}  // namespace

namespace detail {
// What a remote ClientChannel reaches its dragond through (the Client's Impl).
struct ClientConnection {
  Result<pb::ChannelOpReply> channelOp(pb::ChannelOp& op);
  // Sends a channel operation whose answer channelOpResult(id) waits for: the parts of a large
  // send go out one after another without waiting for each answer.
  Result<std::uint64_t> startChannelOp(pb::ChannelOp& op);
  Status channelOpResult(std::uint64_t id);
  // A request started earlier (a memory transfer): its outcome, Timeout if not by `deadline`.
  Status awaitStarted(std::uint64_t id, const Deadline& deadline);
  // Its reply is not wanted any more.
  void forgetStarted(std::uint64_t id);
  // A large remote send's bytes reach dragond in shared memory instead of through the socket
  // (which copies them twice, and dragond's decoding a third time): copied into an allocation
  // of this process's staging pool, made on first use, which the op names (ChannelOp.staged);
  // dragond copies them out before it answers, and the block is freed then. False when they
  // go inline instead: a small message, the pool full (parts in flight) or not to be had.
  // Returns where the `size` bytes go (the caller writes them before it sends the op), or null.
  std::byte* stage(pb::ChannelOp& op, std::size_t size, PoolAllocation& block);
  void unstage(const PoolAllocation& block) { (void)staging->free(block); }
  std::shared_ptr<Pool> staging;
  bool noStaging = false;  // the pool could not be made: inline from then on
  // The message of a remote send, kept between sends: glibc serves a block as large as the
  // last one freed with a fresh mmap each time (its threshold rises only to that size), so a
  // new 1 MiB string per send cost more than the rest of the send.
  std::string payloadBuffer;
};
}  // namespace detail

struct Client::Impl : detail::ClientConnection {
  struct Reply {
    pb::Envelope msg;
    std::vector<UniqueFd> fds;
  };

  UniqueFd sock;
  pb::FrameDecoder decoder{std::size_t{64} << 20};
  std::vector<UniqueFd> inFds;  // received, not yet matched to a reply
  std::uint64_t nextId = 1;
  std::uint32_t node = 0;
  std::string sendBuffer;
  std::unique_ptr<ClientChannel> doorbell;  // rung by dragond when a WaitAny is answered
  Status broken;
  std::map<std::uint64_t, Reply> stash;  // replies of outer (nesting) calls
  std::set<std::uint64_t> unwanted;        // requests posted without waiting: replies dropped
  std::function<void(const OutputLine&)> output;
  int interruptFd = -1;
  std::function<void()> interrupt;
  bool inInterrupt = false;
  std::map<std::uint64_t, std::weak_ptr<Pool>> pools;  // one mapping per pool
  bool prefault = true;                                // Options::prefault

  Status fail(Status st) {
    if (broken.isOk()) {
      broken = st;
    }
    return broken;
  }

  // Reads what is there and decodes whole frames; PeerLost when dragond has gone.
  Status readAvailable() {
    char buf[65536];
    for (;;) {
      auto n = pb::recvSome(sock.get(), buf, inFds);
      if (!n.has_value()) {
        if (n.error().code() == StatusCode::WouldBlock) {
          return Status::ok();
        }
        if (n.error().code() == StatusCode::PeerLost) {
          return fail(Status(StatusCode::PeerLost, "dragond closed the connection"));
        }
        return fail(n.error());
      }
      decoder.feed(std::as_bytes(std::span<const char>(buf, *n)));
      for (;;) {
        auto m = decoder.next();
        if (!m.has_value()) {
          if (m.error().code() == StatusCode::WouldBlock) {
            break;
          }
          return fail(Status(StatusCode::PeerLost, "dragond sent a bad frame: " +
                                                       std::string(m.error().message())));
        }
        dispatch(std::move(*m));
      }
      if (*n < sizeof buf) {
        return Status::ok();
      }
    }
  }

  void dispatch(pb::Envelope&& msg) {
    if (msg.has_output_line()) {
      if (output) {
        const auto& o = msg.output_line();
        output(OutputLine{o.puid(), o.stream() == pb::OutputLine::STDERR, o.line()});
      }
      return;
    }
    Reply r;
    // A reply declares the fds that came with it.
    if (msg.has_object()) {
      for (std::uint32_t i = 0; i < msg.object().fd_count() && !inFds.empty(); ++i) {
        r.fds.push_back(std::move(inFds.front()));
        inFds.erase(inFds.begin());
      }
    }
    const std::uint64_t id = msg.request_id();
    if (unwanted.erase(id) != 0) {
      return;
    }
    r.msg = std::move(msg);
    stash[id] = std::move(r);
  }

  // Waits for input (or the interrupt fd) up to `timeout`; false when the time is up.
  Result<bool> waitInput(const Deadline& deadline) {
    pollfd p[2] = {{sock.get(), POLLIN, 0}, {interruptFd, POLLIN, 0}};
    const nfds_t n = interruptFd >= 0 && !inInterrupt ? 2 : 1;
    int ms = -1;
    if (!deadline.isForever()) {
      const std::int64_t ns = deadline.monotonicNs() - monotonicNowNs();
      ms = ns <= 0 ? 0 : static_cast<int>(std::min<std::int64_t>((ns + 999'999) / 1'000'000, 1 << 30));
    }
    int rc = poll(p, n, ms);
    if (rc < 0) {
      if (errno == EINTR) {
        return true;
      }
      return fail(Status::fromErrno("poll", errno));
    }
    if (n == 2 && (p[1].revents & POLLIN) != 0) {
      inInterrupt = true;
      interrupt();
      inInterrupt = false;
    }
    return rc > 0;
  }

  // Sends a request whose reply nobody waits for (it is dropped when it comes).
  Status post(pb::Envelope& req) {
    if (!broken.isOk()) {
      return broken;
    }
    if (unwanted.size() >= 64) {
      DRAGON_TRY(readAvailable());  // what came so far (without waiting): replies do not pile up
    }
    const std::uint64_t id = nextId++;
    req.set_request_id(id);
    std::string frame;
    DRAGON_TRY(pb::encode(req, frame, std::size_t{64} << 20));
    Status st = pb::sendAll(sock.get(), frame, {});
    if (!st.isOk()) {
      return fail(st.code() == StatusCode::PeerLost
                      ? Status(StatusCode::PeerLost, "dragond closed the connection")
                      : st);
    }
    unwanted.insert(id);
    return Status::ok();
  }

  // Sends a request and returns its id; finish(id) waits for its reply.
  Result<std::uint64_t> start(pb::Envelope& req, std::span<const int> fds = {}) {
    if (!broken.isOk()) {
      return broken;
    }
    // An fd that is not open fails this request alone: sendmsg would refuse the whole frame
    // (EBADF) before a byte went, and that must not end the connection.
    for (const int fd : fds) {
      if (fd < 0 || fcntl(fd, F_GETFD) == -1) {
        return Status(StatusCode::InvalidArgument,
                      "fd " + std::to_string(fd) + " to pass to dragond is not open");
      }
    }
    const std::uint64_t id = nextId++;
    req.set_request_id(id);
    // One buffer for every request: a large one (a remote channel's message) is not
    // allocated, faulted in and given back each time.
    std::string& frame = sendBuffer;
    frame.clear();
    DRAGON_TRY(pb::encode(req, frame, std::size_t{64} << 20));
    Status st = pb::sendAll(sock.get(), frame, fds);
    if (frame.capacity() > (std::size_t{1} << 20) && frame.size() < (std::size_t{64} << 10)) {
      std::string().swap(frame);  // a big one once: do not keep it for small requests forever
    }
    if (!st.isOk()) {
      return fail(st.code() == StatusCode::PeerLost
                      ? Status(StatusCode::PeerLost, "dragond closed the connection")
                      : st);
    }
    return id;
  }

  // The reply to `id`; Timeout (the request stays pending) when none came by `deadline`.
  Result<Reply> finish(std::uint64_t id, const Deadline& deadline = Deadline(Timeout::forever())) {
    for (;;) {
      auto it = stash.find(id);
      if (it != stash.end()) {
        Reply r = std::move(it->second);
        stash.erase(it);
        if (r.msg.has_error()) {
          return pb::statusFromError(r.msg.error());
        }
        return r;
      }
      if (!broken.isOk()) {
        return broken;
      }
      auto w = waitInput(deadline);
      if (!w.has_value()) {
        return w.error();
      }
      DRAGON_TRY(readAvailable());
      // The deadline holds also while other input (output lines, other replies) keeps coming.
      if (!deadline.isForever() && (!*w || deadline.expired()) && stash.count(id) == 0) {
        return Status(StatusCode::Timeout);
      }
    }
  }

  Result<Reply> call(pb::Envelope& req, std::span<const int> fds = {}) {
    DRAGON_ASSIGN_OR_RETURN(std::uint64_t id, start(req, fds));
    return finish(id);
  }

  // The doorbell channel (Client::waitAny), made on first use.
  Status ensureDoorbell(Client& client) {
    if (doorbell) return Status::ok();
    DRAGON_ASSIGN_OR_RETURN(std::shared_ptr<Pool> pool, client.createPool(std::size_t{64} << 10));
    ChannelOptions o;
    o.capacity = 1;
    o.inlineSize = 8;
    DRAGON_ASSIGN_OR_RETURN(doorbell, client.createChannel(pool->descriptor(), o));
    return Status::ok();
  }

  // Gives back the reference an attach of the wrong kind took.
  void dropReference(const ObjectDescriptor& d) {
    pb::Envelope req;
    *req.mutable_detach()->mutable_object() = pb::toRef(d);
    (void)call(req);
  }

  // `lazy`: mapped without faulting its pages in, whatever Options::prefault says.
  Result<std::shared_ptr<Pool>> poolFromReply(Reply& r, const ObjectDescriptor& poolDesc,
                                              bool lazy = false) {
    auto it = pools.find(poolDesc.id);
    if (it != pools.end()) {
      if (auto p = it->second.lock()) {
        return p;
      }
    }
    if (r.fds.empty()) {
      return Status(StatusCode::Internal, "dragond sent no memory for pool " +
                                              std::to_string(poolDesc.id));
    }
    DRAGON_ASSIGN_OR_RETURN(Pool pool,
                            Pool::attach(std::move(r.fds.front()), poolDesc, prefault && !lazy));
    pool.closeFd();  // mapped: dragond keeps the pool's fd, this process needs none
    auto p = std::make_shared<Pool>(std::move(pool));
    pools[poolDesc.id] = p;
    return p;
  }

  Result<std::shared_ptr<Pool>> poolCall(pb::Envelope& req, bool lazy = false) {
    DRAGON_ASSIGN_OR_RETURN(Reply r, call(req));
    if (!r.msg.has_object()) {
      return Status(StatusCode::Internal, "unexpected reply to a pool request");
    }
    DRAGON_ASSIGN_OR_RETURN(ObjectDescriptor d, pb::fromRef(r.msg.object().object()));
    if (d.kind != ObjectKind::Pool) {
      dropReference(d);
      return Status(StatusCode::InvalidArgument, "the object is not a pool");
    }
    return poolFromReply(r, d, lazy);
  }

  Result<std::unique_ptr<ClientChannel>> channelCall(pb::Envelope& req) {
    DRAGON_ASSIGN_OR_RETURN(Reply r, call(req));
    if (!r.msg.has_object()) {
      return Status(StatusCode::Internal, "unexpected reply to a channel request");
    }
    DRAGON_ASSIGN_OR_RETURN(ObjectDescriptor d, pb::fromRef(r.msg.object().object()));
    if (d.kind != ObjectKind::Channel) {
      dropReference(d);
      return Status(StatusCode::InvalidArgument, "the object is not a channel");
    }
    if (r.msg.object().remote()) {
      return std::unique_ptr<ClientChannel>(new ClientChannel(
          this, d, r.msg.object().capacity(), r.msg.object().max_message_size()));
    }
    DRAGON_ASSIGN_OR_RETURN(ObjectDescriptor pd, pb::fromRef(r.msg.object().pool()));
    DRAGON_ASSIGN_OR_RETURN(std::shared_ptr<Pool> pool, poolFromReply(r, pd));
    DRAGON_ASSIGN_OR_RETURN(Channel ch, Channel::attach(*pool, d));
    return std::unique_ptr<ClientChannel>(new ClientChannel(std::move(pool), std::move(ch)));
  }
};

Status detail::ClientConnection::awaitStarted(std::uint64_t id, const Deadline& deadline) {
  auto* impl = static_cast<Client::Impl*>(this);
  return impl->finish(id, deadline).status();
}

void detail::ClientConnection::forgetStarted(std::uint64_t id) {
  auto* impl = static_cast<Client::Impl*>(this);
  if (impl->stash.erase(id) == 0) impl->unwanted.insert(id);
}

MemoryTransfer::MemoryTransfer(MemoryTransfer&& o) noexcept
    : conn_(std::exchange(o.conn_, nullptr)), id_(std::exchange(o.id_, 0)),
      result_(std::move(o.result_)) {}

MemoryTransfer& MemoryTransfer::operator=(MemoryTransfer&& o) noexcept {
  if (this != &o) {
    abandon();
    conn_ = std::exchange(o.conn_, nullptr);
    id_ = std::exchange(o.id_, 0);
    result_ = std::move(o.result_);
  }
  return *this;
}

MemoryTransfer::~MemoryTransfer() { abandon(); }

void MemoryTransfer::abandon() noexcept {
  if (conn_ != nullptr && !result_.has_value()) conn_->forgetStarted(id_);
  conn_ = nullptr;
}

Status MemoryTransfer::wait(Timeout timeout) {
  if (result_.has_value()) return *result_;
  if (conn_ == nullptr) return Status(StatusCode::InvalidArgument, "not a transfer");
  Status st = conn_->awaitStarted(id_, Deadline(timeout));
  if (st.code() == StatusCode::Timeout) return st;
  result_ = st;
  return st;
}

namespace {
// The side of a put (its source) or a get (its destination) that must be of this node.
Status ofThisNode(const MemoryRange& side, std::uint32_t node, std::string_view what,
                  std::string_view instead) {
  if (side.pool.node == node) return Status::ok();
  return Status(StatusCode::InvalidArgument,
                std::string(what) + " " + side.pool.toString() + " is not a pool of this node (" +
                    std::to_string(node) + "); " + std::string(instead));
}
}  // namespace

Result<MemoryTransfer> Client::put(const MemoryRange& from, const MemoryRange& to,
                                   std::uint64_t length) {
  DRAGON_TRY(ofThisNode(from, impl_->node, "put: the source", "use get to read another node's"));
  return transfer(from, to, length);
}

Result<MemoryTransfer> Client::get(const MemoryRange& from, const MemoryRange& to,
                                   std::uint64_t length) {
  DRAGON_TRY(ofThisNode(to, impl_->node, "get: the destination", "use put to write another node's"));
  return transfer(from, to, length);
}

Result<MemoryTransfer> Client::transfer(const MemoryRange& from, const MemoryRange& to,
                                        std::uint64_t length) {
  pb::Envelope req;
  auto* op = req.mutable_memory_op();
  *op->mutable_from()->mutable_pool() = pb::toRef(from.pool);
  op->mutable_from()->set_allocation(from.allocation);
  op->mutable_from()->set_offset(from.offset);
  *op->mutable_to()->mutable_pool() = pb::toRef(to.pool);
  op->mutable_to()->set_allocation(to.allocation);
  op->mutable_to()->set_offset(to.offset);
  op->set_length(length);
  // Rung when the answer comes, so that a waitAny over channels and this transfer wakes up.
  DRAGON_TRY(impl_->ensureDoorbell(*this));
  *op->mutable_doorbell() = pb::toRef(impl_->doorbell->descriptor());
  DRAGON_ASSIGN_OR_RETURN(std::uint64_t id, impl_->start(req));
  MemoryTransfer t;
  t.conn_ = impl_.get();
  t.id_ = id;
  return t;
}

Result<ClientChannel> Client::reach(const ClientChannel& channel) {
  if (!channel.isRemote()) {
    return Status(StatusCode::InvalidArgument,
                  "channel " + channel.desc_.toString() + " is of this node: it is used mapped");
  }
  return ClientChannel(impl_.get(), channel.desc_, channel.capacity_, channel.maxMessageSize_);
}

Result<pb::ChannelOpReply> detail::ClientConnection::channelOp(pb::ChannelOp& op) {
  auto* impl = static_cast<Client::Impl*>(this);
  pb::Envelope req;
  *req.mutable_channel_op() = std::move(op);
  const bool send = req.channel_op().kind() == pb::ChannelOp::SEND && !req.channel_op().has_staged();
  auto r = impl->call(req);
  // The payload buffer goes back for the next send (see payloadBuffer).
  if (send) req.mutable_channel_op()->mutable_data()->swap(payloadBuffer);
  if (!r.has_value()) return r.error();
  if (!r->msg.has_channel_op_reply()) {
    return Status(StatusCode::Internal, "unexpected reply to a channel operation");
  }
  return std::move(*r->msg.mutable_channel_op_reply());
}

Result<std::uint64_t> detail::ClientConnection::startChannelOp(pb::ChannelOp& op) {
  auto* impl = static_cast<Client::Impl*>(this);
  pb::Envelope req;
  *req.mutable_channel_op() = std::move(op);
  auto id = impl->start(req);
  // Encoded: the payload buffer goes back for the next part or send.
  if (!req.channel_op().has_staged()) req.mutable_channel_op()->mutable_data()->swap(payloadBuffer);
  return id;
}

Status detail::ClientConnection::channelOpResult(std::uint64_t id) {
  auto r = static_cast<Client::Impl*>(this)->finish(id);
  if (!r.has_value()) return r.error();
  if (!r->msg.has_channel_op_reply()) {
    return Status(StatusCode::Internal, "unexpected reply to a channel operation");
  }
  return Status::ok();
}

std::byte* detail::ClientConnection::stage(pb::ChannelOp& op, std::size_t size,
                                           PoolAllocation& block) {
  // Not on a broken connection: a block freed after a send that got no answer may still be read
  // by dragond, and must not be handed to the next send.
  if (size < kStagedMin || noStaging || !static_cast<Client::Impl*>(this)->broken.isOk()) {
    return nullptr;
  }
  if (!staging) {
    pb::Envelope req;
    req.mutable_create_pool()->set_size(kStagingPoolBytes);
    req.mutable_create_pool()->set_lazy(true);  // pages as messages need them
    auto pool = static_cast<Client::Impl*>(this)->poolCall(req, /*lazy=*/true);
    if (!pool.has_value()) {
      noStaging = true;  // a pool limit, say: the socket carries them
      return nullptr;
    }
    staging = std::move(*pool);
  }
  auto a = staging->alloc(size);
  if (!a.has_value()) return nullptr;
  pb::MemoryRange* r = op.mutable_staged();
  *r->mutable_pool() = pb::toRef(staging->descriptor());
  r->set_allocation(a->offset);
  op.set_staged_size(size);
  block = *a;
  return static_cast<std::byte*>(staging->pointer(*a));
}

namespace {

// A message larger than one transport message goes in parts (ClientChannel::send), of
// partSize(its size) each: a few, so that they overlap on the way.
std::size_t partSize(std::size_t message) {
  return std::clamp<std::size_t>(message / 4, std::size_t{1} << 20, kMaxMessageAcrossNodes);
}

// A send's bytes, copied into the connection's payload buffer (which the op gives back once
// encoded: see payloadBuffer).
void setPayload(detail::ClientConnection& c, pb::ChannelOp& op, std::span<const std::byte> bytes) {
  c.payloadBuffer.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  op.mutable_data()->swap(c.payloadBuffer);
}

pb::ChannelOp remoteOp(const ObjectDescriptor& d, pb::ChannelOp::Kind kind, Timeout t) {
  pb::ChannelOp op;
  *op.mutable_channel() = pb::toRef(d);
  op.set_kind(kind);
  op.set_timeout_ns(t.isForever() ? -1 : t.nanoseconds());
  return op;
}

// A SEND of one transport message, its `size` bytes written by `fill`: into a staged block, or
// into the payload buffer.
Status sendWhole(detail::ClientConnection& c, pb::ChannelOp& op, std::size_t size,
                 const std::function<void(std::span<std::byte>)>& fill) {
  PoolAllocation block;
  if (std::byte* to = c.stage(op, size, block)) {
    fill({to, size});
    Status st = c.channelOp(op).status();
    c.unstage(block);  // dragond copied the bytes out before it answered
    return st;
  }
  c.payloadBuffer.resize(size);
  fill({reinterpret_cast<std::byte*>(c.payloadBuffer.data()), size});
  op.mutable_data()->swap(c.payloadBuffer);
  Status st = c.channelOp(op).status();
  if (c.payloadBuffer.capacity() > (std::size_t{16} << 20)) std::string().swap(c.payloadBuffer);
  return st;
}

// A transfer in parts (ChannelOp SEND_PART, RECV_PART): a count of this process's (the low 32
// bits), which dragond makes unique on its node by the connection it came through (the
// home dragond keys it by the node it comes from); the pid above it names it in logs.
std::uint64_t newTransferId() {
  static std::atomic<std::uint32_t> count{0};
  return (std::uint64_t{static_cast<std::uint32_t>(getpid())} << 32) | ++count;
}

}  // namespace

std::uint32_t ClientChannel::capacity() const noexcept {
  return channel_ ? channel_->capacity() : capacity_;
}

std::uint64_t ClientChannel::maxMessageSize() const noexcept {
  return channel_ ? channel_->maxMessageSize() : maxMessageSize_;
}

Status ClientChannel::send(std::span<const std::byte> msg, Timeout timeout) {
  if (channel_) return channel_->send(msg, timeout);
  if (msg.size() > maxMessageSize_) {
    return Status(StatusCode::MessageTooLarge,
                  "message of " + std::to_string(msg.size()) + " bytes; the channel takes " +
                      std::to_string(maxMessageSize_));
  }
  pb::ChannelOp op = remoteOp(desc_, pb::ChannelOp::SEND, timeout);
  std::size_t at = 0;
  if (msg.size() > kMaxMessageAcrossNodes) {
    // In parts, all but the last kept by the home dragond, which sends the whole message when
    // the last comes (with the send's timeout). The parts go out back to back, their answers
    // collected after the last, so that one part's way to the home overlaps the next one's
    // (one 16 MiB part at a time, each waited for, moved a 40 MiB message at a third of the
    // rate). The home takes them in order (one connection, one transport endpoint), so the
    // last finds every earlier part kept unless one was refused, and then the first refusal
    // is the send's outcome.
    const std::size_t part = partSize(msg.size());
    const std::uint64_t transfer = newTransferId();
    std::vector<std::uint64_t> started;
    std::vector<PoolAllocation> staged;
    started.reserve(msg.size() / part + 1);
    Status first = Status::ok();
    auto fill = [&](pb::ChannelOp& o, std::span<const std::byte> bytes) {
      PoolAllocation block;
      if (std::byte* to = remote_->stage(o, bytes.size(), block)) {
        std::memcpy(to, bytes.data(), bytes.size());
        staged.push_back(block);
      } else {
        setPayload(*remote_, o, bytes);
      }
    };
    for (; msg.size() - at > part; at += part) {
      pb::ChannelOp p = remoteOp(desc_, pb::ChannelOp::SEND_PART, Timeout::none());
      p.set_transfer(transfer);
      p.set_part_offset(at);
      p.set_total_size(msg.size());
      fill(p, msg.subspan(at, part));
      auto id = remote_->startChannelOp(p);
      if (!id.has_value()) {
        first = id.error();
        break;
      }
      started.push_back(*id);
    }
    Status last = Status::ok();
    if (first.isOk()) {
      op.set_transfer(transfer);
      op.set_part_offset(at);
      op.set_total_size(msg.size());
      fill(op, msg.subspan(at));
      auto id = remote_->startChannelOp(op);
      last = id.has_value() ? remote_->channelOpResult(*id) : id.error();
    }
    // Every answer is read (a later request must not find them), the first refusal kept.
    for (std::uint64_t id : started) {
      Status st = remote_->channelOpResult(id);
      if (first.isOk() && !st.isOk()) first = st;
    }
    // dragond has copied the staged bytes out when it answers.
    for (const PoolAllocation& block : staged) remote_->unstage(block);
    return first.isOk() ? last : first;
  }
  return sendWhole(*remote_, op, msg.size(),
                   [msg](std::span<std::byte> to) { std::memcpy(to.data(), msg.data(), msg.size()); });
}

Status ClientChannel::sendFilled(std::size_t size,
                                 const std::function<void(std::span<std::byte>)>& fill,
                                 Timeout timeout) {
  if (channel_ || size > kMaxMessageAcrossNodes) {
    std::vector<std::byte> whole(size);
    fill(whole);
    return send(whole, timeout);
  }
  if (size > maxMessageSize_) {
    return Status(StatusCode::MessageTooLarge,
                  "message of " + std::to_string(size) + " bytes; the channel takes " +
                      std::to_string(maxMessageSize_));
  }
  pb::ChannelOp op = remoteOp(desc_, pb::ChannelOp::SEND, timeout);
  return sendWhole(*remote_, op, size, fill);
}

Result<std::size_t> ClientChannel::recv(std::span<std::byte> buf, Timeout timeout) {
  if (channel_) return channel_->recv(buf, timeout);
  pb::ChannelOp op = remoteOp(desc_, pb::ChannelOp::RECV, timeout);
  op.set_bounded(true);
  op.set_max_size(buf.size());
  DRAGON_ASSIGN_OR_RETURN(pb::ChannelOpReply r, remote_->channelOp(op));
  if (r.data().size() > buf.size()) {
    return Status(StatusCode::Internal, "the home node sent more than the buffer holds");
  }
  std::memcpy(buf.data(), r.data().data(), r.data().size());
  return r.data().size();
}

Result<std::vector<std::byte>> ClientChannel::recvBytes(Timeout timeout) {
  if (channel_) {
    Message m;
    DRAGON_TRY(channel_->recv(m, timeout));
    auto d = m.data();
    return std::vector<std::byte>(d.begin(), d.end());
  }
  pb::ChannelOp op = remoteOp(desc_, pb::ChannelOp::RECV, timeout);
  op.set_parts(true);
  DRAGON_ASSIGN_OR_RETURN(pb::ChannelOpReply r, remote_->channelOp(op));
  const auto* p = reinterpret_cast<const std::byte*>(r.data().data());
  std::vector<std::byte> out(p, p + r.data().size());
  if (r.total_size() <= out.size()) return out;
  // The rest in parts, kept for us by the home dragond (the message is ours: it left the
  // channel with the first part).
  out.reserve(r.total_size());
  while (out.size() < r.total_size()) {
    pb::ChannelOp part = remoteOp(desc_, pb::ChannelOp::RECV_PART, Timeout::none());
    part.set_transfer(r.transfer());
    part.set_part_offset(out.size());
    DRAGON_ASSIGN_OR_RETURN(pb::ChannelOpReply more, remote_->channelOp(part));
    if (more.data().empty() || out.size() + more.data().size() > r.total_size()) {
      return Status(StatusCode::Internal, "the home node sent a wrong part of a message");
    }
    const auto* q = reinterpret_cast<const std::byte*>(more.data().data());
    out.insert(out.end(), q, q + more.data().size());
  }
  return out;
}

Result<WaitFor> ClientChannel::poll(WaitFor events, Timeout timeout) {
  if (channel_) {
    Channel::WaitItem item{&*channel_, events, {}};
    DRAGON_ASSIGN_OR_RETURN(std::size_t n, Channel::waitAny(std::span(&item, 1), timeout));
    return n == 0 ? WaitFor{} : item.ready;
  }
  if ((static_cast<unsigned>(events) & 3u) == 0) {
    return Status(StatusCode::InvalidArgument, "poll without events");
  }
  pb::ChannelOp op = remoteOp(desc_, pb::ChannelOp::POLL, timeout);
  op.set_events(static_cast<unsigned>(events) & 3u);
  DRAGON_ASSIGN_OR_RETURN(pb::ChannelOpReply r, remote_->channelOp(op));
  return static_cast<WaitFor>(r.ready() & 3u);
}

Status ClientChannel::close() {
  if (channel_) return channel_->close();
  pb::ChannelOp op = remoteOp(desc_, pb::ChannelOp::CLOSE, Timeout::none());
  return remote_->channelOp(op).status();
}

Client::Client(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

int Client::fd() const noexcept { return impl_->sock.get(); }
std::uint32_t Client::node() const noexcept { return impl_->node; }

Result<Client> Client::connect(const Options& options) {
  const std::string path = options.socketPath.empty() ? defaultSocketPath() : options.socketPath;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return Status(StatusCode::InvalidArgument, "socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock) {
    return Status::fromErrno("socket", errno);
  }
  if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ECONNREFUSED) {
      return Status(StatusCode::NotFound, "no dragond at " + path);
    }
    if (err == EACCES) {
      return Status(StatusCode::PermissionDenied, "not allowed to reach dragond at " + path);
    }
    return Status::fromErrno("connect " + path, err);
  }
  auto impl = std::make_unique<Impl>();
  impl->sock = std::move(sock);
  impl->prefault = options.prefault;
  pb::Envelope hello;
  hello.mutable_hello()->set_min_version(pb::kVersion);
  hello.mutable_hello()->set_max_version(pb::kVersion);
  hello.mutable_hello()->set_client_name(options.name);
  hello.mutable_hello()->set_new_job(options.newJob);
  // The handshake is bounded: a socket that accepts but never answers is not a dragond.
  hello.set_request_id(impl->nextId++);
  std::string frame;
  DRAGON_TRY(pb::encode(hello, frame));
  Status sent = pb::sendAll(impl->sock.get(), frame, {});
  if (!sent.isOk() && sent.code() != StatusCode::PeerLost) {
    return sent;
  }
  // A dragond that refuses us says why and closes, perhaps before our Hello arrived: its
  // answer is still there to read.
  const Deadline deadline(options.connectTimeout);
  while (impl->stash.empty()) {
    DRAGON_ASSIGN_OR_RETURN(bool ready, impl->waitInput(deadline));
    if (!ready && deadline.expired()) {
      return Status(StatusCode::Timeout, "dragond at " + path + " did not answer the handshake");
    }
    Status st = impl->readAvailable();
    if (!st.isOk() && impl->stash.empty()) {
      return st;
    }
  }
  Impl::Reply r = std::move(impl->stash.begin()->second);
  impl->stash.clear();
  if (r.msg.has_error()) {
    return pb::statusFromError(r.msg.error());
  }
  if (!r.msg.has_hello_reply()) {
    return Status(StatusCode::PeerLost, "the peer at " + path + " is not a dragond");
  }
  impl->node = r.msg.hello_reply().node();
  return Client(std::move(impl));
}

Result<std::shared_ptr<Pool>> Client::createPool(std::uint64_t size, std::string_view name,
                                                 bool lazy) {
  pb::Envelope req;
  req.mutable_create_pool()->set_size(size);
  req.mutable_create_pool()->set_name(std::string(name));
  req.mutable_create_pool()->set_lazy(lazy);
  return impl_->poolCall(req, lazy);
}

Result<std::unique_ptr<ClientChannel>> Client::createChannel(const ObjectDescriptor& pool,
                                                             const ChannelOptions& options,
                                                             std::string_view name) {
  pb::Envelope req;
  auto* c = req.mutable_create_channel();
  *c->mutable_pool() = pb::toRef(pool);
  c->set_capacity(options.capacity);
  c->set_inline_size(options.inlineSize);
  c->set_max_message_size(options.maxMessageSize);
  c->set_track_holder(options.trackHolder);
  c->set_holder_owns(options.holderOwns);
  c->set_name(std::string(name));
  return impl_->channelCall(req);
}

Result<std::shared_ptr<Pool>> Client::attachPool(const ObjectDescriptor& pool) {
  pb::Envelope req;
  *req.mutable_attach()->mutable_object() = pb::toRef(pool);
  return impl_->poolCall(req);
}

Result<std::shared_ptr<Pool>> Client::attachPool(std::string_view name) {
  pb::Envelope req;
  req.mutable_attach()->set_name(std::string(name));
  return impl_->poolCall(req);
}

Result<std::unique_ptr<ClientChannel>> Client::attachChannel(const ObjectDescriptor& channel) {
  pb::Envelope req;
  *req.mutable_attach()->mutable_object() = pb::toRef(channel);
  return impl_->channelCall(req);
}

Result<std::unique_ptr<ClientChannel>> Client::attachChannel(std::string_view name) {
  pb::Envelope req;
  req.mutable_attach()->set_name(std::string(name));
  return impl_->channelCall(req);
}

Status Client::detach(const ObjectDescriptor& object) {
  pb::Envelope req;
  *req.mutable_detach()->mutable_object() = pb::toRef(object);
  return impl_->call(req).status();
}

Status Client::detachLater(const ObjectDescriptor& object) {
  pb::Envelope req;
  *req.mutable_detach()->mutable_object() = pb::toRef(object);
  return impl_->post(req);
}

Status Client::destroy(const ObjectDescriptor& object) {
  pb::Envelope req;
  *req.mutable_destroy()->mutable_object() = pb::toRef(object);
  return impl_->call(req).status();
}

Status Client::registerName(std::string_view name, const ObjectDescriptor& object, bool scoped,
                            bool replace) {
  pb::Envelope req;
  req.mutable_register_name()->set_name(std::string(name));
  req.mutable_register_name()->set_scoped(scoped);
  req.mutable_register_name()->set_replace(replace);
  *req.mutable_register_name()->mutable_object() = pb::toRef(object);
  return impl_->call(req).status();
}

Result<ObjectDescriptor> Client::lookupName(std::string_view name) {
  pb::Envelope req;
  req.mutable_lookup_name()->set_name(std::string(name));
  DRAGON_ASSIGN_OR_RETURN(Impl::Reply r, impl_->call(req));
  if (!r.msg.has_object()) {
    return Status(StatusCode::Internal, "unexpected reply to a lookup");
  }
  return pb::fromRef(r.msg.object().object());
}

namespace {

pb::Spawn::Stdio toWire(Stdio s) {
  switch (s) {
    case Stdio::Inherit: return pb::Spawn::INHERIT;
    case Stdio::Capture: return pb::Spawn::CAPTURE;
    case Stdio::Null: return pb::Spawn::NULL_DEVICE;
    case Stdio::File: return pb::Spawn::FILE;
    case Stdio::Passed: return pb::Spawn::PASSED;
  }
  return pb::Spawn::NULL_DEVICE;
}

}  // namespace

Result<std::vector<ProcessInfo>> Client::spawn(const SpawnOptions& o) {
  if (o.argv.empty()) {
    return Status(StatusCode::InvalidArgument, "spawn needs a program");
  }
  pb::Envelope req;
  auto* s = req.mutable_spawn();
  for (const auto& a : o.argv) s->add_argv(a);
  if (o.env.empty() && o.inheritEnv) {
    for (char** e = environ; *e != nullptr; ++e) s->add_env(*e);
  } else {
    for (const auto& e : o.env) s->add_env(e);
  }
  if (o.cwd.empty()) {
    char buf[4096];
    if (getcwd(buf, sizeof buf) != nullptr) s->set_cwd(buf);
  } else {
    s->set_cwd(o.cwd);
  }
  s->set_stdin_mode(toWire(o.stdinMode));
  s->set_stdout_mode(toWire(o.stdoutMode));
  s->set_stderr_mode(toWire(o.stderrMode));
  s->set_stdin_file(o.stdinFile);
  s->set_stdout_file(o.stdoutFile);
  s->set_stderr_file(o.stderrFile);
  s->set_label(o.label);
  s->set_group(o.group);
  s->set_count(o.count);
  switch (o.placement.kind) {
    case Placement::Kind::ThisNode: s->set_placement(pb::Spawn::THIS_NODE); break;
    case Placement::Kind::Node:
      s->set_placement(pb::Spawn::PLACE_NODE);
      s->set_node(o.placement.node);
      break;
    case Placement::Kind::RoundRobin: s->set_placement(pb::Spawn::ROUND_ROBIN); break;
  }
  std::vector<int> fds;
  if (o.stdinMode == Stdio::Passed) fds.push_back(o.stdinFd);
  if (o.stdoutMode == Stdio::Passed) fds.push_back(o.stdoutFd);
  if (o.stderrMode == Stdio::Passed) fds.push_back(o.stderrFd);
  if (o.extraFds.size() > 32) {
    return Status(StatusCode::InvalidArgument, "at most 32 extra fds per spawn");
  }
  fds.insert(fds.end(), o.extraFds.begin(), o.extraFds.end());
  s->set_extra_fds(static_cast<std::uint32_t>(o.extraFds.size()));
  s->set_extra_fd_base(static_cast<std::uint32_t>(o.extraFdBase));
  DRAGON_ASSIGN_OR_RETURN(Impl::Reply r, impl_->call(req, fds));
  if (!r.msg.has_spawned() || r.msg.spawned().puid_size() != r.msg.spawned().pid_size()) {
    return Status(StatusCode::Internal, "unexpected reply to spawn");
  }
  std::vector<ProcessInfo> out;
  for (int i = 0; i < r.msg.spawned().puid_size(); ++i) {
    out.push_back(ProcessInfo{r.msg.spawned().puid(i), r.msg.spawned().pid(i),
                              r.msg.spawned().group()});
  }
  return out;
}

Result<std::vector<ExitInfo>> Client::wait(const std::vector<std::uint64_t>& puids,
                                           Timeout timeout) {
  pb::Envelope req;
  for (auto p : puids) req.mutable_wait()->add_puid(p);
  req.mutable_wait()->set_timeout_ns(timeout.isForever() ? -1 : timeout.nanoseconds());
  DRAGON_ASSIGN_OR_RETURN(Impl::Reply r, impl_->call(req));
  if (!r.msg.has_wait_reply()) {
    return Status(StatusCode::Internal, "unexpected reply to wait");
  }
  std::vector<ExitInfo> out;
  for (const auto& e : r.msg.wait_reply().exited()) {
    out.push_back(ExitInfo{e.puid(), e.exit_code(), e.signal()});
  }
  return out;
}

Status Client::signal(const std::vector<std::uint64_t>& puids, int sig) {
  pb::Envelope req;
  for (auto p : puids) req.mutable_signal()->add_puid(p);
  req.mutable_signal()->set_signal(sig);
  return impl_->call(req).status();
}

Status Client::signalGroup(std::uint64_t group, int sig) {
  pb::Envelope req;
  req.mutable_signal()->set_group(group);
  req.mutable_signal()->set_signal(sig);
  return impl_->call(req).status();
}

Result<std::vector<ProcessEntry>> Client::listProcesses() {
  pb::Envelope req;
  req.mutable_list_processes();
  DRAGON_ASSIGN_OR_RETURN(Impl::Reply r, impl_->call(req));
  if (!r.msg.has_process_list()) {
    return Status(StatusCode::Internal, "unexpected reply to a process listing");
  }
  std::vector<ProcessEntry> out;
  for (const auto& p : r.msg.process_list().process()) {
    ProcessEntry e;
    e.puid = p.puid();
    e.pid = p.pid();
    e.running = p.state() == pb::ProcessEntry::RUNNING;
    for (const auto& a : p.argv()) e.argv.push_back(a);
    e.exit = ExitInfo{p.puid(), p.exit_code(), p.signal()};
    e.group = p.group();
    e.job = p.job();
    e.label = p.label();
    e.node = p.node();
    out.push_back(std::move(e));
  }
  return out;
}

Result<ProcessInfo> Client::adopt(pid_t pid, const std::vector<std::string>& argv, bool idle,
                                  int stdoutFd, int stderrFd) {
  pb::Envelope req;
  auto* a = req.mutable_adopt();
  a->set_pid(pid);
  for (const auto& s : argv) a->add_argv(s);
  a->set_idle(idle);
  std::vector<int> fds;
  if (stdoutFd >= 0) {
    a->set_capture_stdout(true);
    fds.push_back(stdoutFd);
  }
  if (stderrFd >= 0) {
    a->set_capture_stderr(true);
    fds.push_back(stderrFd);
  }
  DRAGON_ASSIGN_OR_RETURN(Impl::Reply r, impl_->call(req, fds));
  if (!r.msg.has_spawned() || r.msg.spawned().puid_size() != 1) {
    return Status(StatusCode::Internal, "unexpected reply to adopt");
  }
  return ProcessInfo{r.msg.spawned().puid(0), pid, r.msg.spawned().group()};
}

Status Client::reportStarted(std::uint64_t puid, std::string_view label) {
  pb::Envelope req;
  req.mutable_adopted_started()->set_puid(puid);
  req.mutable_adopted_started()->set_label(std::string(label));
  return impl_->post(req);
}

Status Client::reportExited(const ExitInfo& exit) {
  pb::Envelope req;
  auto* e = req.mutable_exited();
  e->set_puid(exit.puid);
  e->set_exit_code(exit.exitCode);
  e->set_signal(exit.signal);
  return impl_->post(req);
}

Status Client::endJob(bool now, int exitCode) {
  pb::Envelope req;
  req.mutable_end_job()->set_now(now);
  req.mutable_end_job()->set_exit_code(exitCode);
  return impl_->call(req).status();
}

Result<std::vector<NodeInfo>> Client::nodes() {
  pb::Envelope req;
  req.mutable_list_nodes();
  auto r = impl_->call(req);
  if (!r.has_value()) {
    if (r.error().code() != StatusCode::InvalidArgument) return r.error();
    return std::vector<NodeInfo>{NodeInfo{impl_->node, {}, 0, 0}};  // not a multi-node job
  }
  if (!r->msg.has_node_list()) return Status(StatusCode::Internal, "unexpected reply to ListNodes");
  std::vector<NodeInfo> out;
  for (const auto& n : r->msg.node_list().node()) {
    out.push_back(NodeInfo{n.node(), n.hostname(), n.cpus(), n.rank()});
  }
  return out;
}

Result<ClusterEndpoint> Client::clusterAddress() {
  pb::Envelope req;
  req.mutable_cluster_address();
  DRAGON_ASSIGN_OR_RETURN(Impl::Reply r, impl_->call(req));
  if (!r.msg.has_cluster_address_reply()) {
    return Status(StatusCode::Internal, "unexpected reply to ClusterAddress");
  }
  const auto& a = r.msg.cluster_address_reply();
  return ClusterEndpoint{a.node(), a.address()};
}

Status Client::joinCluster(const ClusterJoin& join) {
  pb::Envelope req;
  auto* j = req.mutable_join_cluster();
  for (const auto& p : join.nodes) {
    auto* n = j->add_node();
    n->set_node(p.info.node);
    n->set_hostname(p.info.hostname);
    n->set_cpus(p.info.cpus);
    n->set_rank(p.info.rank);
    n->set_address(p.address);
  }
  j->set_secret(join.secret);
  j->set_global_node(join.globalNode);
  j->set_head_node(join.headNode);
  return impl_->call(req).status();
}

Result<int> Client::waitJobEnd(std::uint32_t otherLaunchers) {
  pb::Envelope req;
  req.mutable_wait_job_end()->set_others(otherLaunchers);
  DRAGON_ASSIGN_OR_RETURN(Impl::Reply r, impl_->call(req));
  if (!r.msg.has_job_ended()) return Status(StatusCode::Internal, "unexpected reply to WaitJobEnd");
  return r.msg.job_ended().exit_code();
}

void Client::setOutputHandler(std::function<void(const OutputLine&)> handler) {
  impl_->output = std::move(handler);
}

void Client::setInterrupt(int fd, std::function<void()> handler) {
  impl_->interruptFd = fd;
  impl_->interrupt = std::move(handler);
}

Result<std::size_t> Client::waitAny(std::span<ClientWaitItem> items, Timeout timeout) {
  if (items.size() >= Channel::kMaxWaitItems) {
    return Status(StatusCode::InvalidArgument,
                  "waitAny takes at most " + std::to_string(Channel::kMaxWaitItems - 1) + " items");
  }
  Impl& impl = *impl_;
  std::vector<Channel::WaitItem> local;
  std::vector<std::size_t> localAt;
  pb::Envelope req;
  auto* w = req.mutable_wait_any();
  std::vector<std::size_t> remoteAt;
  std::vector<std::size_t> transferAt;
  for (std::size_t i = 0; i < items.size(); ++i) {
    ClientWaitItem& it = items[i];
    it.ready = WaitFor{};
    if ((it.transfer != nullptr) + (it.channel != nullptr) + (it.mapped != nullptr) > 1) {
      return Status(StatusCode::InvalidArgument, "a waitAny item is one channel or one transfer");
    }
    if (it.transfer != nullptr) {
      if (!it.transfer->done() && it.transfer->conn_ != &impl) {
        return Status(StatusCode::InvalidArgument, "a waitAny transfer of another client");
      }
      transferAt.push_back(i);
      continue;
    }
    const auto ev = static_cast<unsigned>(it.events);
    if ((it.channel == nullptr && it.mapped == nullptr) || (ev & 3u) == 0 || ev > 3u) {
      return Status(StatusCode::InvalidArgument, "waitAny item without a channel or events");
    }
    if (it.mapped != nullptr) {
      local.push_back({it.mapped, it.events, {}});
      localAt.push_back(i);
    } else if (it.channel->isRemote()) {
      auto* item = w->add_item();
      *item->mutable_channel() = pb::toRef(it.channel->descriptor());
      item->set_events(ev);
      remoteAt.push_back(i);
    } else {
      local.push_back({&it.channel->channel(), it.events, {}});
      localAt.push_back(i);
    }
  }
  auto collectLocal = [&](std::size_t& n) {
    for (std::size_t k = 0; k < local.size(); ++k) {
      items[localAt[k]].ready = local[k].ready;
      n += local[k].ready != WaitFor{} ? 1 : 0;
    }
  };
  // A transfer whose answer has come is ready (done, or failed: its wait() says which).
  auto collectTransfers = [&](std::size_t& n) {
    for (std::size_t i : transferAt) {
      MemoryTransfer& t = *items[i].transfer;
      if (!t.done() && impl.stash.count(t.id_) != 0) (void)t.wait(Timeout::none());
      if (t.done()) {
        items[i].ready = WaitFor::Readable;
        ++n;
      }
    }
  };
  if (remoteAt.empty() && transferAt.empty()) {
    DRAGON_ASSIGN_OR_RETURN(std::size_t n, Channel::waitAny(local, timeout));
    (void)n;
    std::size_t count = 0;
    collectLocal(count);
    return count;
  }
  // What is ready already needs no request and no sleep.
  std::size_t count = 0;
  if (!transferAt.empty()) {
    pollfd p{impl.sock.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) DRAGON_TRY(impl.readAvailable());
    collectTransfers(count);
  }
  if (!local.empty()) {
    DRAGON_ASSIGN_OR_RETURN(std::size_t n, Channel::waitAny(local, Timeout::none()));
    if (n > 0) collectLocal(count);
  }
  if (count > 0) return count;
  const Deadline deadline(timeout);
  if (local.empty() && remoteAt.empty()) {
    // Transfers alone: their answers come on the socket.
    for (;;) {
      DRAGON_ASSIGN_OR_RETURN(bool input, impl.waitInput(deadline));
      if (input) DRAGON_TRY(impl.readAvailable());
      collectTransfers(count);
      if (count > 0) return count;
      if (!impl.broken.isOk()) return impl.broken;
      if (!timeout.isForever() && deadline.expired()) return std::size_t{0};
    }
  }
  // With channels of this node or transfers, the client sleeps here, on its channels and its
  // doorbell: a one-slot channel of this client that dragond rings when it answers a WaitAny
  // or a transfer. With remote channels alone it just waits for the WaitAny's answer.
  const bool sleepHere = !local.empty() || !transferAt.empty();
  if (sleepHere) {
    DRAGON_TRY(impl.ensureDoorbell(*this));
    *w->mutable_doorbell() = pb::toRef(impl.doorbell->descriptor());
  }
  auto drainBell = [&] {
    std::byte b[8];
    while (impl.doorbell && impl.doorbell->channel().recv(b, Timeout::none()).has_value()) {
    }
  };
  drainBell();
  std::uint64_t id = 0;  // the WaitAny of the remote channels, if any
  if (!remoteAt.empty()) {
    w->set_timeout_ns(timeout.isForever() ? -1 : timeout.nanoseconds());
    DRAGON_ASSIGN_OR_RETURN(id, impl.start(req));
  }
  if (sleepHere) {
    local.push_back({&impl.doorbell->channel(), WaitFor::Readable, {}});
    // In slices: between them, the socket is looked at, for an answer that came without the
    // doorbell (an error, a transfer started before the doorbell existed) and for a dragond
    // that has gone.
    constexpr std::int64_t kSliceNs = 50'000'000;
    Result<std::size_t> n = std::size_t{0};
    bool answered = false;  // the WaitAny's answer is here
    for (;;) {
      std::int64_t left = kSliceNs;
      if (!timeout.isForever()) {
        left = std::min(left, std::max<std::int64_t>(0, deadline.monotonicNs() - monotonicNowNs()));
      }
      n = Channel::waitAny(local, Timeout::after(std::chrono::nanoseconds(left)));
      if (!n.has_value()) break;
      const bool bell = local.back().ready != WaitFor{};
      if (*n > (bell ? 1u : 0u)) break;  // a channel of the caller
      // What dragond sent: the WaitAny's answer, a transfer's. True when the wait is over.
      auto readAnswers = [&] {
        (void)impl.readAvailable();
        if (!impl.broken.isOk()) return true;
        answered = id != 0 && impl.stash.count(id) != 0;
        std::size_t done = 0;
        collectTransfers(done);
        return answered || done > 0;
      };
      pollfd p{impl.sock.get(), POLLIN, 0};
      if (bell || ::poll(&p, 1, 0) > 0) {
        if (readAnswers()) break;
        if (bell) {
          drainBell();
          // dragond rings just before it sends the answer, which may not have reached the
          // socket yet: it is waited for there (briefly), not in the next slice's sleep.
          constexpr std::int64_t kAnswerNs = 50'000'000;
          std::int64_t ns = kAnswerNs;
          if (!timeout.isForever()) {
            ns = std::min(ns, std::max<std::int64_t>(0, deadline.monotonicNs() - monotonicNowNs()));
          }
          pollfd q{impl.sock.get(), POLLIN, 0};
          if (::poll(&q, 1, static_cast<int>((ns + 999'999) / 1'000'000)) > 0 && readAnswers()) break;
        }
      }
      if (!timeout.isForever() && deadline.expired()) break;
    }
    local.pop_back();
    if (id != 0 && !answered) {
      // Something here (or the deadline) came first: dragond answers the wait at once.
      pb::Envelope cancel;
      cancel.mutable_cancel_wait()->set_wait_request_id(id);
      DRAGON_TRY(impl.post(cancel));
    }
    if (!n.has_value()) {
      if (id != 0) (void)impl.finish(id);
      drainBell();
      return n.error();
    }
    collectLocal(count);
  }
  if (id != 0) {
    auto r = impl.finish(id);
    drainBell();
    if (!r.has_value()) return r.error();
    const auto& ready = r->msg.wait_any_reply().ready();
    for (std::size_t k = 0; k < remoteAt.size() && k < static_cast<std::size_t>(ready.size()); ++k) {
      items[remoteAt[k]].ready = static_cast<WaitFor>(ready[static_cast<int>(k)] & 3u);
      count += ready[static_cast<int>(k)] != 0 ? 1 : 0;
    }
  }
  drainBell();
  collectTransfers(count);
  return count;
}

Status Client::pump(Timeout timeout) {
  if (!impl_->broken.isOk()) {
    return impl_->broken;
  }
  DRAGON_ASSIGN_OR_RETURN(bool ready, impl_->waitInput(Deadline(timeout)));
  if (ready) {
    DRAGON_TRY(impl_->readAvailable());
  }
  return impl_->broken;
}

}  // namespace dragon
