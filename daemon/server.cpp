// SPDX-License-Identifier: MIT
#include "daemon/server.hpp"

#include "base/log.hpp"
#include "protocol/socket_io.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {
// Requests handled per readiness event: one busy client cannot starve the others.
constexpr int kMaxRequestsPerEvent = 64;
}  // namespace

Server::Server(EventLoop& loop, UniqueFd listener, NodeRegistry& global, std::uint32_t node)
    : loop_(loop), listener_(std::move(listener)), registry_(global), node_(node), uid_(geteuid()) {}

Server::~Server() {
  if (partsSweep_ != 0) loop_.cancelTimer(partsSweep_);
  if (objects_ != nullptr) {
    objects_->setChannelGoneHook(nullptr);
    objects_->setPoolGoneHook(nullptr);
  }
  gateway_.reset();
  rma_.reset();
  // The managers may already be gone: drop the connections without calling back into them.
  for (auto& [id, c] : conns_) {
    if (!c->dead) loop_.remove(c->fd.get());
  }
  conns_.clear();
}

Status Server::start(ObjectManager& objects, ProcessManager& processes,
                     std::uint64_t parkedSendBytes) {
  objects_ = &objects;
  processes_ = &processes;
  gateway_ = std::make_unique<Gateway>(loop_, objects);
  gateway_->setParkedSendLimit(parkedSendBytes);
  objects.setChannelGoneHook([this](std::uint64_t id) { gateway_->channelGone(id); });
  rma_ = std::make_unique<RmaRegions>(objects);
  objects.setPoolGoneHook([this](std::uint64_t id) {
    rma_->poolGone(id);
    gateway_->poolGone(id);
  });
  registry_.setProcessHooks(nullptr, [this](const ProcessRecord& r) { processEnded(r); });
  return loop_.add(listener_.get(), EPOLLIN, [this](std::uint32_t) { onAccept(); });
}

void Server::stopAccepting() {
  if (listener_) {
    loop_.remove(listener_.get());
    listener_.reset();
  }
}

void Server::onAccept() {
  for (int i = 0; i < 64; ++i) {
    UniqueFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      if (errno != EAGAIN && errno != EINTR) {
        DRAGON_LOG(Warn, "server", "accept: %s", std::strerror(errno));
      }
      return;
    }
    ucred peer{};
    socklen_t len = sizeof peer;
    if (getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) {
      DRAGON_LOG(Warn, "server", "SO_PEERCRED: %s", std::strerror(errno));
      continue;
    }
    auto c = std::make_unique<Connection>();
    c->id = nextConn_++;
    c->fd = std::move(fd);
    c->peer = peer;
    Connection& conn = *c;
    conns_[c->id] = std::move(c);
    if (peer.uid != uid_) {
      DRAGON_LOG(Warn, "server", "refused a connection from uid %u (pid %d): dragond serves uid %u",
                 peer.uid, peer.pid, uid_);
      sendError(conn, 0,
                Status(StatusCode::PermissionDenied,
                       "this dragond serves uid " + std::to_string(uid_) + " only"));
      conn.closing = true;
    }
    const std::uint64_t id = conn.id;
    conn.events = EPOLLIN | EPOLLRDHUP;
    Status st = loop_.add(conn.fd.get(), conn.events,
                          [this, id](std::uint32_t ev) { onEvent(id, ev); });
    if (!st.isOk()) {
      DRAGON_LOG(Error, "server", "watching a connection: %s", st.toString().c_str());
      conns_.erase(id);
      continue;
    }
    flush(conn);
  }
}

Server::Connection* Server::find(std::uint64_t id) {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : it->second.get();
}

void Server::onEvent(std::uint64_t id, std::uint32_t events) {
  Connection* c = find(id);
  if (c == nullptr || c->dead) return;
  if ((events & EPOLLOUT) != 0) {
    flush(*c);
    if (c->dead) return;
  }
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) != 0) {
    if (c->closing) {
      // Refused or broken: discard what it sends, but notice when it goes.
      char buf[4096];
      std::vector<UniqueFd> fds;
      auto n = pb::recvSome(c->fd.get(), buf, fds);
      if (!n.has_value() && n.error().code() != StatusCode::WouldBlock) scheduleClose(*c);
      return;
    }
    // Requests already read but not yet handled come first: reading more now would let a
    // fast sender grow the decoder's buffer without bound.
    if (!c->drainScheduled || (events & (EPOLLHUP | EPOLLERR)) != 0) readFrom(*c);
  }
}

void Server::readFrom(Connection& c) {
  char buf[65536];
  auto n = pb::recvSome(c.fd.get(), buf, c.inFds);
  if (!n.has_value()) {
    if (n.error().code() == StatusCode::WouldBlock) return;
    if (n.error().code() != StatusCode::PeerLost) {
      DRAGON_LOG(Info, "server", "connection %llu: %s", static_cast<unsigned long long>(c.id),
                 n.error().toString().c_str());
    }
    scheduleClose(c);
    return;
  }
  if (c.inFds.size() > 3 * pb::kMaxFdsPerMessage) {
    sendError(c, 0, Status(StatusCode::InvalidArgument, "too many fds passed"));
    c.closing = true;
    flush(c);
    return;
  }
  c.decoder.feed(std::as_bytes(std::span<const char>(buf, *n)));
  processBuffered(c.id);
}

void Server::processBuffered(std::uint64_t id) {
  for (int i = 0; i < kMaxRequestsPerEvent; ++i) {
    Connection* c = find(id);
    if (c == nullptr || c->dead || c->closing) return;
    auto msg = c->decoder.next();
    if (!msg.has_value()) {
      if (msg.error().code() == StatusCode::WouldBlock) return;
      DRAGON_LOG(Info, "server", "connection %llu (pid %d) sent a bad frame: %s",
                 static_cast<unsigned long long>(c->id), c->peer.pid,
                 std::string(msg.error().message()).c_str());
      sendError(*c, 0, msg.error());
      c->closing = true;
      flush(*c);
      return;
    }
    handle(*c, *msg);
  }
  // More whole frames may be buffered, and the socket may have nothing new to wake us: come
  // back on the next turn of the loop, after the other connections had theirs.
  Connection* c = find(id);
  if (c != nullptr && !c->drainScheduled) {
    c->drainScheduled = true;
    loop_.defer([this, id] {
      if (Connection* again = find(id)) {
        again->drainScheduled = false;
        processBuffered(id);
      }
    });
  }
}

std::uint64_t Server::jobOf(Connection& c) {
  if (c.job != 0) return c.job;
  // A process the runtime started, or one that such a process forked (the Python template's
  // children), acts in its job; anyone else, or a launcher (Hello's new_job), starts a job of
  // its own.
  c.job = c.newJob ? 0 : processes_->jobOfPidOrAncestor(c.peer.pid);
  if (c.job == 0) {
    c.job = registry_.newJob();
    c.jobRoot = true;
    jobRoots_[c.job] = c.id;
  }
  return c.job;
}

void Server::handle(Connection& c, pb::Envelope& msg) {
  const std::uint64_t rid = msg.request_id();
  if (!c.hello) {
    if (!msg.has_hello()) {
      sendError(c, rid, Status(StatusCode::InvalidArgument, "the first message must be Hello"));
      c.closing = true;
      flush(c);
      return;
    }
    const auto& h = msg.hello();
    if (h.min_version() > pb::kVersion || h.max_version() < pb::kVersion) {
      sendError(c, rid, Status(StatusCode::InvalidArgument,
                               "dragond speaks protocol version " + std::to_string(pb::kVersion)));
      c.closing = true;
      flush(c);
      return;
    }
    c.hello = true;
    c.newJob = h.new_job();
    c.name = h.client_name().substr(0, 64);
    pb::Envelope reply;
    reply.set_request_id(rid);
    reply.mutable_hello_reply()->set_version(pb::kVersion);
    reply.mutable_hello_reply()->set_node(node_);
    send(c, reply);
    return;
  }
  Request rq = clientRequest(c, rid);
  dispatch(rq, msg);
  // Fds are kept until the request they came with is handled: one read can return requests
  // sent before that one as well (the kernel ends a read after the bytes that carried fds, not
  // before), so clearing them after every request lost a Spawn's fds whenever a one-way
  // request (a detach) was read with it. Only a Spawn or an Adopt that captures output takes fds; a client that
  // sends fds with anything else is refused once they pile up (readFrom).
  if (msg.body_case() == pb::Envelope::kSpawn ||
      (msg.body_case() == pb::Envelope::kAdopt &&
       (msg.adopt().capture_stdout() || msg.adopt().capture_stderr()))) {
    c.inFds.clear();
  }
}

Server::Request Server::clientRequest(Connection& c, std::uint64_t rid) {
  Request rq;
  rq.node = node_;
  rq.connection = c.id;
  rq.id = rid;
  rq.fds = &c.inFds;
  rq.sink = [this, cid = c.id, rid](pb::Envelope reply, std::vector<UniqueFd> fds) {
    Connection* conn = find(cid);
    if (conn == nullptr || conn->dead) return;  // it left: nobody to answer
    reply.set_request_id(rid);
    send(*conn, reply, std::move(fds));
  };
  return rq;
}

Server::Request Server::peerRequest(std::uint32_t from, Reply reply) {
  Request rq;
  rq.node = from;
  rq.sink = [from, reply = std::move(reply)](pb::Envelope e, std::vector<UniqueFd> fds) {
    if (!fds.empty()) {  // no fd crosses nodes: a handler that grants one to a peer is wrong
      DRAGON_LOG(Error, "server", "an answer to node %u came with %zu fds: refused",
                 static_cast<unsigned>(from), fds.size());
      reply(errorEnvelope(Status(StatusCode::Internal, "an answer with fds to another node")));
      return;
    }
    reply(std::move(e));
  };
  return rq;
}

namespace {

// Who may make each request: a client of this node, another node's dragond, or both.
constexpr unsigned kNobody = 0;
constexpr unsigned kClient = 1;
constexpr unsigned kPeer = 2;
constexpr unsigned kBoth = kClient | kPeer;

unsigned originsOf(pb::Envelope::BodyCase body) {
  switch (body) {
    case pb::Envelope::kAttach:
    case pb::Envelope::kDetach:
    case pb::Envelope::kDestroy:
    case pb::Envelope::kRegisterName:
    case pb::Envelope::kLookupName:
    case pb::Envelope::kChannelOp:
    case pb::Envelope::kMemoryOp:
    case pb::Envelope::kSpawn:
    case pb::Envelope::kWait:
    case pb::Envelope::kSignal:
    case pb::Envelope::kListProcesses:
      return kBoth;
    case pb::Envelope::kCreatePool:
    case pb::Envelope::kCreateChannel:
    case pb::Envelope::kWaitAny:
    case pb::Envelope::kCancelWait:
    case pb::Envelope::kEndJob:
    case pb::Envelope::kAdopt:
    case pb::Envelope::kAdoptedStarted:
    case pb::Envelope::kExited:
    case pb::Envelope::kClusterAddress:
    case pb::Envelope::kJoinCluster:
    case pb::Envelope::kWaitJobEnd:
    case pb::Envelope::kListNodes:
      return kClient;
    case pb::Envelope::kNameClaim:
    case pb::Envelope::kNameRelease:
    case pb::Envelope::kProcessStarted:
    case pb::Envelope::kProcessEnded:
    case pb::Envelope::kPlace:
    case pb::Envelope::kPeerEndJob:
      return kPeer;
    default:
      return kNobody;
  }
}

}  // namespace

void Server::dispatch(const Request& rq, pb::Envelope& msg) {
  if ((originsOf(msg.body_case()) & (rq.fromPeer() ? kPeer : kClient)) == 0) {
    rq.fail(Status(StatusCode::InvalidArgument, rq.fromPeer()
                                                    ? "not a request one dragond makes of another"
                                                    : "not a request dragond serves"));
    return;
  }
  switch (msg.body_case()) {
    case pb::Envelope::kAttach:
    case pb::Envelope::kDetach:
    case pb::Envelope::kDestroy:
    case pb::Envelope::kRegisterName:
    case pb::Envelope::kCreatePool:
    case pb::Envelope::kCreateChannel:
      handleObject(rq, msg);
      return;
    case pb::Envelope::kLookupName:
      // A client looks a name up here (and in the job's directory); another node asks this
      // node's directory, which it hosts.
      rq.fromPeer() ? handleGlobal(rq, msg) : handleObject(rq, msg);
      return;
    case pb::Envelope::kChannelOp:
      handleChannelOp(rq, msg);
      return;
    case pb::Envelope::kMemoryOp:
      handleMemoryOp(rq, msg);
      return;
    case pb::Envelope::kWaitAny:
      handleWaitAny(rq, msg);
      return;
    case pb::Envelope::kCancelWait:
      handleCancelWait(rq, msg);
      return;
    case pb::Envelope::kListProcesses:
      // Another node asks for the job's processes: the table of global services hosted here.
      if (rq.fromPeer() && !msg.list_processes().this_node_only()) {
        handleGlobal(rq, msg);
        return;
      }
      handleProcess(rq, msg);
      return;
    case pb::Envelope::kSpawn:
    case pb::Envelope::kWait:
    case pb::Envelope::kSignal:
    case pb::Envelope::kEndJob:
    case pb::Envelope::kAdopt:
    case pb::Envelope::kAdoptedStarted:
    case pb::Envelope::kExited:
    case pb::Envelope::kPeerEndJob:
      handleProcess(rq, msg);
      return;
    case pb::Envelope::kClusterAddress:
    case pb::Envelope::kJoinCluster:
    case pb::Envelope::kWaitJobEnd:
    case pb::Envelope::kListNodes:
      handleJob(rq, msg);
      return;
    case pb::Envelope::kNameClaim:
    case pb::Envelope::kNameRelease:
    case pb::Envelope::kProcessStarted:
    case pb::Envelope::kProcessEnded:
    case pb::Envelope::kPlace:
      handleGlobal(rq, msg);
      return;
    default:
      return;  // refused above
  }
}

void Server::replyObject(const Request& rq, Result<ObjectGrant> grant) {
  if (!grant.has_value()) {
    rq.fail(grant.error());
    return;
  }
  pb::Envelope reply;
  *reply.mutable_object()->mutable_object() = pb::toRef(grant->object);
  *reply.mutable_object()->mutable_pool() = pb::toRef(grant->pool);
  reply.mutable_object()->set_fd_count(1);
  std::vector<UniqueFd> fds;
  fds.emplace_back(fcntl(grant->poolFd, F_DUPFD_CLOEXEC, 3));
  if (!fds.back()) {
    rq.fail(Status::fromErrno("dup", errno));
    return;
  }
  rq.sink(std::move(reply), std::move(fds));
}

void Server::handleObject(const Request& rq, pb::Envelope& msg) {
  const std::uint64_t owner = ownerOf(rq);
  // A client's request may name another node's object, or a name of the job's directory.
  if (!rq.fromPeer() && cluster_ != nullptr) {
    switch (msg.body_case()) {
      case pb::Envelope::kAttach:
      case pb::Envelope::kDetach:
      case pb::Envelope::kDestroy:
        if (clusterObject(rq, msg) || clusterNames(rq, msg)) return;
        break;
      case pb::Envelope::kRegisterName:
      case pb::Envelope::kLookupName:
        if (clusterNames(rq, msg)) return;
        break;
      default:
        break;
    }
  }
  switch (msg.body_case()) {
    case pb::Envelope::kCreatePool: {
      replyObject(rq, objects_->createPool(owner, msg.create_pool().size(),
                                           msg.create_pool().name(), msg.create_pool().lazy()));
      return;
    }
    case pb::Envelope::kCreateChannel: {
      const auto& r = msg.create_channel();
      auto pool = pb::fromRef(r.pool());
      if (!pool.has_value()) {
        rq.fail(pool.error());
        return;
      }
      ChannelOptions o;
      o.capacity = r.capacity();
      o.inlineSize = r.inline_size();
      o.maxMessageSize = r.max_message_size();
      o.trackHolder = r.track_holder();
      o.holderOwns = r.holder_owns();
      replyObject(rq, objects_->createChannel(owner, *pool, o, r.name()));
      return;
    }
    case pb::Envelope::kAttach: {
      if (rq.fromPeer()) {  // a channel of this node, used from another (no fd goes there)
        rq.reply(peerAttach(rq.node, msg.attach()));
        return;
      }
      Result<ObjectDescriptor> d = msg.attach().has_object()
                                       ? pb::fromRef(msg.attach().object())
                                       : registry_.lookupName(msg.attach().name());
      if (!d.has_value()) {
        rq.fail(d.error());
        return;
      }
      replyObject(rq, objects_->attach(owner, *d));
      return;
    }
    case pb::Envelope::kDetach:
    case pb::Envelope::kDestroy: {
      const bool detach = msg.has_detach();
      auto d = pb::fromRef(detach ? msg.detach().object() : msg.destroy().object());
      if (!d.has_value()) {
        rq.fail(d.error());
        return;
      }
      Status st = detach ? objects_->detach(owner, *d) : objects_->destroy(*d);
      st.isOk() ? rq.ok() : rq.fail(st);
      return;
    }
    case pb::Envelope::kRegisterName: {
      auto d = pb::fromRef(msg.register_name().object());
      const auto& r = msg.register_name();
      if (rq.fromPeer()) {
        // Another node names an object of this one (never a scoped name: its owner is there).
        if (!d.has_value() || r.scoped()) {
          rq.fail(d.has_value() ? Status(StatusCode::InvalidArgument,
                                         "a scoped name is registered on its object's node")
                                : d.error());
          return;
        }
        registerClaimed(0, r, *d, rq.later());
        return;
      }
      Status st = d.has_value() ? objects_->registerName(r.name(), *d, r.scoped() ? owner : 0,
                                                         r.replace())
                                : d.error();
      st.isOk() ? rq.ok() : rq.fail(st);
      return;
    }
    case pb::Envelope::kLookupName: {
      auto d = registry_.lookupName(msg.lookup_name().name());
      if (!d.has_value()) {
        rq.fail(d.error());
        return;
      }
      pb::Envelope reply;
      *reply.mutable_object()->mutable_object() = pb::toRef(*d);
      rq.reply(std::move(reply));
      return;
    }
    default:
      return;
  }
}

pb::Envelope Server::errorEnvelope(const Status& st) {
  pb::Envelope e;
  pb::fillError(*e.mutable_error(), st);
  return e;
}

pb::Envelope Server::okEnvelope() {
  pb::Envelope e;
  e.mutable_ok();
  return e;
}

void Server::localSpawn(const pb::Spawn& spawn, std::uint64_t job, std::vector<UniqueFd>& fds,
                        const Reply& reply) {
  auto r = processes_->spawn(spawn, job, fds);
  if (!r.has_value()) {
    reply(errorEnvelope(r.error()));
    return;
  }
  pb::Envelope e;
  for (auto p : r->puids) e.mutable_spawned()->add_puid(p);
  for (auto p : r->pids) e.mutable_spawned()->add_pid(p);
  e.mutable_spawned()->set_group(r->group);
  reply(std::move(e));
}

void Server::localWait(const pb::Wait& wait, Reply reply) {
  std::vector<std::uint64_t> puids(wait.puid().begin(), wait.puid().end());
  processes_->wait(puids, wait.timeout_ns(),
                   [reply = std::move(reply)](Result<std::vector<ExitRecord>> r) {
                     if (!r.has_value()) {
                       reply(errorEnvelope(r.error()));
                       return;
                     }
                     pb::Envelope e;
                     auto* w = e.mutable_wait_reply();
                     for (const auto& x : *r) {
                       auto* out = w->add_exited();
                       out->set_puid(x.puid);
                       out->set_exit_code(x.exitCode);
                       out->set_signal(x.signal);
                     }
                     reply(std::move(e));
                   });
}

Status Server::localSignal(const pb::Signal& s) {
  return s.group() != 0 ? processes_->signalGroup(s.group(), s.signal())
                        : processes_->signal({s.puid().begin(), s.puid().end()}, s.signal());
}

pb::Envelope Server::localList() {
  pb::Envelope reply;
  auto* list = reply.mutable_process_list();
  for (const auto& r : registry_.listProcesses()) {  // idle adopted processes are not there
    *list->add_process() = toEntry(r);
  }
  return reply;
}

void Server::handleProcess(const Request& rq, pb::Envelope& msg) {
  if (rq.fromPeer()) {
    switch (msg.body_case()) {
      case pb::Envelope::kSpawn: {
        if (clusterEnded_) {
          // Sent before the head's end reached this node, arrived after: nothing may start in
          // a job that has ended here (this dragond may outlive it: the Slurm prolog's does).
          rq.fail(Status(StatusCode::PeerLost, "the job has ended on this node"));
          return;
        }
        pb::Spawn sp = msg.spawn();
        if (sp.stdin_mode() == pb::Spawn::PASSED || sp.stdout_mode() == pb::Spawn::PASSED ||
            sp.stderr_mode() == pb::Spawn::PASSED || sp.extra_fds() != 0) {
          rq.fail(Status(StatusCode::InvalidArgument, "no fds cross nodes"));
          return;
        }
        if (sp.stdin_mode() == pb::Spawn::INHERIT) sp.set_stdin_mode(pb::Spawn::NULL_DEVICE);
        if (sp.stdout_mode() == pb::Spawn::INHERIT) sp.set_stdout_mode(pb::Spawn::CAPTURE);
        if (sp.stderr_mode() == pb::Spawn::INHERIT) sp.set_stderr_mode(pb::Spawn::CAPTURE);
        // It talks to this node's dragond, whatever the requester's environment said.
        bool set = false;
        for (auto& e : *sp.mutable_env()) {
          if (e.rfind("DRAGON_SOCKET=", 0) == 0) {
            e = "DRAGON_SOCKET=" + socketPath_;
            set = true;
          }
        }
        if (!set && sp.env_size() > 0) sp.add_env("DRAGON_SOCKET=" + socketPath_);
        std::vector<UniqueFd> none;
        localSpawn(sp, clusterJob_, none, afterGlobalSync(rq.node, rq.later()));
        return;
      }
      case pb::Envelope::kWait:
        localWait(msg.wait(), afterGlobalSync(rq.node, rq.later()));
        return;
      case pb::Envelope::kPeerEndJob: {
        if (rq.node != cluster_->headNode()) {
          rq.fail(Status(StatusCode::PermissionDenied, "only the head node ends the job"));
          return;
        }
        const int code = msg.peer_end_job().exit_code();
        processes_->endJob(clusterJob_, [this, reply = rq.later(), code] {
          reply(okEnvelope());
          finishClusterJob(code);
        }, msg.peer_end_job().now());
        return;
      }
      default:
        break;  // Signal and ListProcesses of this node: as a client's below
    }
  } else {
    if (cluster_ != nullptr && cluster_->joined() && clusterProcess(rq, msg)) return;
    if (msg.has_spawn() && msg.spawn().placement() == pb::Spawn::PLACE_NODE &&
        msg.spawn().node() != node_) {
      rq.fail(Status(StatusCode::NotFound,
                     "there is no node " + std::to_string(msg.spawn().node()) +
                         ": this job runs on node " + std::to_string(node_) + " only"));
      rq.fds->clear();
      return;
    }
  }
  Connection* c = clientOf(rq);  // the requests below that only a client makes need it
  switch (msg.body_case()) {
    case pb::Envelope::kSpawn:
      localSpawn(msg.spawn(), jobOf(*c), *rq.fds, rq.later());
      return;
    case pb::Envelope::kWait:
      localWait(msg.wait(), rq.later());
      return;
    case pb::Envelope::kSignal: {
      Status st = localSignal(msg.signal());
      st.isOk() ? rq.ok() : rq.fail(st);
      return;
    }
    case pb::Envelope::kListProcesses:
      rq.reply(localList());
      return;
    case pb::Envelope::kAdopt: {
      auto r = processes_->adopt(msg.adopt(), c->peer.pid, c->id, jobOf(*c), *rq.fds);
      if (!r.has_value()) {
        rq.fail(r.error());
        return;
      }
      pb::Envelope reply;
      reply.mutable_spawned()->add_puid(*r);
      reply.mutable_spawned()->add_pid(msg.adopt().pid());
      rq.reply(std::move(reply));
      return;
    }
    case pb::Envelope::kAdoptedStarted: {
      const auto& s = msg.adopted_started();
      Status st = processes_->adoptedStarted(c->id, s.puid(), s.label());
      st.isOk() ? rq.ok() : rq.fail(st);
      return;
    }
    case pb::Envelope::kExited: {
      const auto& e = msg.exited();
      Status st = processes_->reportExit(c->id, e.puid(), e.exit_code(), e.signal());
      st.isOk() ? rq.ok() : rq.fail(st);
      return;
    }
    case pb::Envelope::kEndJob:
      processes_->endJob(jobOf(*c), [reply = rq.later()] { reply(okEnvelope()); },
                         msg.end_job().now());
      return;
    default:
      return;
  }
}

void Server::send(Connection& c, const pb::Envelope& msg, std::vector<UniqueFd> fds) {
  if (c.dead) return;
  OutFrame f;
  Status st = pb::encode(msg, f.bytes, std::size_t{64} << 20);
  if (!st.isOk()) {
    DRAGON_LOG(Error, "server", "encoding a reply: %s", st.toString().c_str());
    // The request that asked still gets an answer (a listing of processes with long command
    // lines can pass the limit), or its client waits for ever.
    if (msg.request_id() != 0 && !msg.has_error()) {
      sendError(c, msg.request_id(),
                Status(StatusCode::MessageTooLarge,
                       "the answer is too large to send: " + std::string(st.message())));
    }
    return;
  }
  f.fds = std::move(fds);
  c.outBytes += f.bytes.size();
  c.out.push_back(std::move(f));
  flush(c);
}

void Server::sendError(Connection& c, std::uint64_t rid, const Status& st) {
  pb::Envelope reply;
  reply.set_request_id(rid);
  pb::fillError(*reply.mutable_error(), st);
  send(c, reply);
}

void Server::flush(Connection& c) {
  const std::size_t before = c.outBytes;
  while (!c.out.empty() && !c.dead) {
    OutFrame& f = c.out.front();
    std::vector<int> raw;
    if (f.offset == 0) {
      for (const auto& fd : f.fds) raw.push_back(fd.get());
    }
    auto n = pb::sendSome(c.fd.get(), std::span<const char>(f.bytes).subspan(f.offset), raw);
    if (!n.has_value()) {
      if (n.error().code() == StatusCode::WouldBlock) break;
      scheduleClose(c);
      return;
    }
    f.offset += *n;
    c.outBytes -= *n;
    if (f.offset == f.bytes.size()) c.out.pop_front();
  }
  // Reading stops above the high-water mark and resumes below the low one.
  const bool readable = c.outBytes < (c.events & EPOLLIN ? kHighWater : kLowWater);
  const std::uint32_t events = EPOLLRDHUP | (readable ? std::uint32_t{EPOLLIN} : 0u) |
                               (c.out.empty() ? 0u : std::uint32_t{EPOLLOUT});
  if (events != c.events) {
    c.events = events;
    (void)loop_.modify(c.fd.get(), events);
  }
  if (c.jobRoot && before >= kLowWater && c.outBytes < kLowWater) {
    processes_->resumeOutput(c.job);
  }
  if (c.out.empty() && c.closing) {
    scheduleClose(c);
  }
}

bool Server::deliverOutput(std::uint64_t job, const pb::Envelope& line) {
  auto it = jobRoots_.find(job);
  if (it == jobRoots_.end()) return false;
  Connection* c = find(it->second);
  if (c == nullptr || c->dead) return false;
  send(*c, line);
  return c->outBytes >= kHighWater;
}

void Server::scheduleClose(Connection& c) {
  if (c.dead) return;
  c.dead = true;
  loop_.remove(c.fd.get());
  const std::uint64_t id = c.id;
  // Never close inside a manager's callback: the manager may be iterating its own state.
  loop_.defer([this, id] { closeConnection(id); });
}

void Server::closeConnection(std::uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  std::unique_ptr<Connection> c = std::move(it->second);
  conns_.erase(it);
  if (!c->dead) loop_.remove(c->fd.get());
  if (objects_ != nullptr) objects_->releaseOwner(c->id);
  cancelRemoteOps(c->id);
  // Before its job may end below: the ends of the processes it adopted can no longer come.
  if (processes_ != nullptr) processes_->adopterGone(c->id);
  if (c->jobRoot) {
    jobRoots_.erase(c->job);
    if (processes_ != nullptr) processes_->endJob(c->job, nullptr);
  }
  if (id == clusterRoot_) clusterRootGone();
  DRAGON_LOG(Debug, "server", "connection %llu (pid %d) closed",
             static_cast<unsigned long long>(id), c->peer.pid);
}

void Server::closeAll() {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, c] : conns_) ids.push_back(id);
  for (auto id : ids) {
    Connection* c = find(id);
    if (c != nullptr) {
      // Best effort: whatever is queued goes out if the socket takes it now.
      c->closing = false;
      flush(*c);
    }
    closeConnection(id);
  }
}

std::string Server::dump() const {
  std::string out = "server: " + std::to_string(conns_.size()) + " connections" +
                    (listener_ ? "" : " (not accepting)");
  if (gateway_) out += ", " + std::to_string(gateway_->parked()) + " channel operations parked";
  if (global_) out += "\n" + global_->dump();
  for (const auto& [id, c] : conns_) {
    out += "\n  connection " + std::to_string(id) + " pid " + std::to_string(c->peer.pid) +
           " '" + c->name + "' job " + std::to_string(c->job) + (c->jobRoot ? " (root)" : "") +
           ", " + std::to_string(c->outBytes) + " bytes queued";
  }
  return out;
}

}  // namespace dragon::daemon
