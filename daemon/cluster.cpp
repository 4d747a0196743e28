// SPDX-License-Identifier: MIT
#include "daemon/cluster.hpp"

#include "base/log.hpp"
#include "daemon/modules.hpp"
#include "protocol/socket_io.hpp"

#include <ctime>
#include <sys/epoll.h>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

std::int64_t nowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Largest control message between dragonds (a spawn's argv and environment, a process list).
constexpr std::size_t kMaxPeerMessage = std::size_t{16} << 20;

}  // namespace

Result<std::unique_ptr<Cluster>> Cluster::create(EventLoop& loop, std::uint32_t self,
                                                 const config::Config& config) {
  const std::string kind = config.getString("cluster.transport");
  auto info = modules::loadModule("ucx_transport", "dragon-transport-" + kind + ".so",
                                  transport::kTransportModuleSymbol,
                                  "the " + kind + " transport (multi-node jobs)");
  if (!info.has_value()) return info.error();
  const auto* module = static_cast<const transport::TransportModule*>(*info);
  if (module->abiVersion != transport::kAbiVersion) {
    return Status(StatusCode::InvalidArgument,
                  "the " + kind + " transport module was built for another dragond (module ABI " +
                      std::to_string(module->abiVersion) + ", dragond's " +
                      std::to_string(transport::kAbiVersion) + ")");
  }
  transport::TransportOptions o;
  o.selfNode = self;
  o.maxMessageBytes = maxMessageBytes();
  const std::string rma = config.getString("cluster.rma");
  o.rma = rma == "messages" ? transport::RmaPath::Messages
          : rma == "native" ? transport::RmaPath::Native
                            : transport::RmaPath::Auto;
  Status error;
  std::unique_ptr<transport::Transport> t = module->create(o, error);
  if (t == nullptr) {
    return Status(error.code(), "starting the " + kind + " transport: " +
                                    std::string(error.message()));
  }
  return create(loop, self, config, std::move(t));
}

std::uint64_t Cluster::maxMessageBytes() { return kMaxPeerMessage + pb::kHeaderSize; }

Result<std::unique_ptr<Cluster>> Cluster::create(EventLoop& loop, std::uint32_t self,
                                                 const config::Config& config,
                                                 std::unique_ptr<transport::Transport> t) {
  std::unique_ptr<Cluster> c(new Cluster(loop, self, std::move(t), config));
  Cluster* raw = c.get();
  DRAGON_TRY(loop.add(raw->transport_->eventFd(), EPOLLIN, [raw](std::uint32_t) { raw->pump(); }));
  return c;
}

Cluster::Cluster(EventLoop& loop, std::uint32_t self, std::unique_ptr<transport::Transport> t,
                 const config::Config& config)
    : loop_(loop),
      self_(self),
      transport_(std::move(t)),
      connectTimeoutNs_(config.getDurationNs("cluster.connect_timeout")),
      heartbeatNs_(config.getDurationNs("cluster.heartbeat_interval")),
      nodeTimeoutNs_(config.getDurationNs("cluster.node_timeout")) {
  transport::TransportCallbacks cb;
  cb.onMessage = [this](std::uint32_t from, std::string_view bytes) { onMessage(from, bytes); };
  cb.onPeerLost = [this](std::uint32_t node, const Status& why) { onPeerLost(node, why); };
  // A node is alive when anything of it arrives, not only when a message of it is handed up:
  // its heartbeats wait behind a large message still arriving, which can take longer than
  // cluster.node_timeout on a slow link.
  cb.onHeard = [this](std::uint32_t node) {
    if (auto it = nodes_.find(node); it != nodes_.end()) it->second.lastHeardNs = nowNs();
  };
  transport_->setCallbacks(std::move(cb));
}

Cluster::~Cluster() {
  if (transport_ != nullptr && !closed_) loop_.remove(transport_->eventFd());
}

std::string_view Cluster::transportName() const { return transport_->name(); }
std::string Cluster::address() const { return transport_->address(); }

bool Cluster::lost(std::uint32_t node) const {
  auto it = nodes_.find(node);
  return it == nodes_.end() || it->second.lost;
}

std::string Cluster::describe(std::uint32_t node) const {
  auto it = nodes_.find(node);
  std::string s = "node " + std::to_string(node);
  if (it != nodes_.end() && !it->second.hostname.empty()) s += " (" + it->second.hostname + ")";
  return s;
}

Status Cluster::join(const pb::JoinCluster& join) {
  if (joined_) return Status(StatusCode::AlreadyExists, "this dragond already joined its job");
  if (join.secret().size() < 16) {
    return Status(StatusCode::InvalidArgument, "the job secret must be at least 16 bytes");
  }
  std::map<std::uint32_t, Node> table;
  for (const auto& n : join.node()) {
    if (table.count(n.node()) != 0) {
      return Status(StatusCode::InvalidArgument,
                    "node " + std::to_string(n.node()) + " is listed twice");
    }
    Node node;
    node.id = n.node();
    node.hostname = n.hostname().substr(0, 255);
    node.cpus = n.cpus();
    node.rank = n.rank();
    node.address = n.address();
    table[node.id] = std::move(node);
  }
  for (std::uint32_t must : {self_, join.head_node(), join.global_node()}) {
    if (table.count(must) == 0) {
      return Status(StatusCode::InvalidArgument,
                    "the node table lacks node " + std::to_string(must));
    }
  }
  if (table[self_].address != transport_->address()) {
    return Status(StatusCode::InvalidArgument,
                  "the node table gives this node another dragond's address");
  }
  transport_->setSecret(join.secret());
  const std::int64_t now = nowNs();
  joinedNs_ = now;
  for (auto& [id, n] : table) {
    n.lastHeardNs = now;
    if (id == self_) continue;
    Status st = transport_->addPeer(id, n.address);
    if (!st.isOk()) {
      return Status(st.code(), "connecting to node " + std::to_string(id) + " (" + n.hostname +
                                   "): " + std::string(st.message()));
    }
  }
  nodes_ = std::move(table);
  head_ = join.head_node();
  global_ = join.global_node();
  joined_ = true;
  scheduleProgress();
  DRAGON_LOG(Info, "cluster", "node %u of %zu joined its job (head node %u, global services on %u)",
             self_, nodes_.size(), head_, global_);
  if (nodes_.size() > 1) loop_.addTimerAfterNs(heartbeatNs_, [this] { heartbeat(); });
  // The greeting: the head node to every node, every other node to the head node.
  pb::Envelope hello;
  hello.mutable_heartbeat();
  for (const auto& [id, n] : nodes_) {
    if (id != self_ && (self_ == head_ || id == head_)) (void)sendEnvelope(id, hello);
  }
  loop_.addTimerAfterNs(connectTimeoutNs_, [this] {
    if (joinWaiters_.empty()) return;
    std::string missing;
    for (const auto& [id, n] : nodes_) {
      if (id != self_ && heard_.count(id) == 0) missing += (missing.empty() ? "" : ", ") + describe(id);
    }
    auto waiters = std::move(joinWaiters_);
    joinWaiters_.clear();
    const Status st(StatusCode::Timeout, "not heard from " + missing + " within " +
                                             std::to_string(connectTimeoutNs_ / 1'000'000) +
                                             " ms of joining (cluster.connect_timeout)");
    for (auto& w : waiters) w(st);
  });
  return Status::ok();
}

void Cluster::whenAllJoined(std::function<void(Status)> done) {
  joinWaiters_.push_back(std::move(done));
  checkAllJoined();
}

void Cluster::checkAllJoined() {
  if (joinWaiters_.empty() || heard_.size() + 1 < nodes_.size()) return;
  auto waiters = std::move(joinWaiters_);
  joinWaiters_.clear();
  for (auto& w : waiters) w(Status::ok());
}

Status Cluster::sendEnvelope(std::uint32_t node, const pb::Envelope& msg,
                             std::span<const char> data) {
  if (closed_) return Status(StatusCode::PeerLost, "dragond is shutting down");
  std::string bytes;
  DRAGON_TRY(pb::encode(msg, data, bytes, kMaxPeerMessage));
  Status st = transport_->send(node, std::move(bytes));
  scheduleProgress();
  return st;
}

void Cluster::forward(std::uint32_t node, pb::Envelope request, Done done,
                      std::span<const char> data) {
  if (!known(node)) {
    done(Status(StatusCode::NotFound, "there is no node " + std::to_string(node) + " in this job"));
    return;
  }
  if (lost(node)) {
    done(Status(StatusCode::NodeLost, describe(node) + " was lost"));
    return;
  }
  const std::uint64_t id = nextId_++;
  request.set_request_id(id);
  request.set_peer_reply(false);
  Status st = sendEnvelope(node, request, data);
  if (!st.isOk()) {
    done(st.code() == StatusCode::NodeLost
             ? Status(StatusCode::NodeLost, describe(node) + " was lost")
             : st);
    return;
  }
  pending_[id] = Pending{node, std::move(done)};
}

void Cluster::onMessage(std::uint32_t from, std::string_view bytes) {
  auto it = nodes_.find(from);
  if (it == nodes_.end() || it->second.lost) return;  // the transport checked the secret
  it->second.lastHeardNs = nowNs();
  if (joined_ && heard_.insert(from).second) {
    if (from == head_ && !greetedHead_ && self_ != head_) {
      // The head node has joined (its greeting got through): greet it back, in case ours
      // came before it could read it.
      greetedHead_ = true;
      pb::Envelope hello;
      hello.mutable_heartbeat();
      (void)sendEnvelope(head_, hello);
    }
    checkAllJoined();
  }
  std::span<const char> data;  // a request's channel_op data, where the transport holds it
  auto msg = pb::decodeFrame(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())),
                             kMaxPeerMessage, &data);
  if (msg.has_value() && !data.empty() && msg->peer_reply()) {
    msg = Status(StatusCode::InvalidArgument, "an answer with data after its envelope");
  }
  if (!msg.has_value()) {
    // Only a dragond holding the job secret gets here: a bug or a version mismatch, not an
    // attack. The message is dropped; the connection stays.
    if (dropped_++ < 10) {
      DRAGON_LOG(Warn, "cluster", "dropped a malformed message from %s: %s",
                 describe(from).c_str(), std::string(msg.error().message()).c_str());
    }
    return;
  }
  if (msg->has_heartbeat()) return;
  if (msg->has_node_lost()) {
    if (from == head_ && msg->node_lost().node() != self_) {
      onPeerLost(msg->node_lost().node(),
                 Status(StatusCode::NodeLost, "the head node lost it: " +
                                                  msg->node_lost().why().substr(0, 200)));
    }
    return;
  }
  if (msg->peer_reply()) {
    auto p = pending_.find(msg->request_id());
    if (p == pending_.end() || p->second.node != from) return;  // late, after NodeLost
    Done done = std::move(p->second.done);
    pending_.erase(p);
    done(std::move(*msg));
    return;
  }
  if (!onRequest_) return;
  const std::uint64_t rid = msg->request_id();
  onRequest_(from, *msg, data, [this, from, rid](pb::Envelope reply) {
    reply.set_request_id(rid);
    reply.set_peer_reply(true);
    if (lost(from)) return;
    Status st = sendEnvelope(from, reply);
    if (!st.isOk() && st.code() != StatusCode::NodeLost && st.code() != StatusCode::PeerLost) {
      // Too large to send (a listing of 100,000 exited processes): the requester must still
      // get an answer, or it waits forever.
      pb::Envelope error;
      error.set_request_id(rid);
      error.set_peer_reply(true);
      pb::fillError(*error.mutable_error(),
                    Status(StatusCode::MessageTooLarge,
                           "the answer of " + describe(self_) + " could not be sent: " +
                               std::string(st.message())));
      (void)sendEnvelope(from, error);
    }
  });
}

void Cluster::onPeerLost(std::uint32_t node, const Status& why) {
  auto it = nodes_.find(node);
  if (it == nodes_.end() || it->second.lost) return;
  it->second.lost = true;
  // The owner logs it: whether a loss is a failure depends on the job (a node that has done
  // its part of the job's end just leaves).
  DRAGON_LOG(Debug, "cluster", "%s was lost: %s", describe(node).c_str(),
             std::string(why.message()).c_str());
  const Status lostStatus(StatusCode::NodeLost,
                          describe(node) + " was lost (" + std::string(why.message()) + ")");
  std::vector<Done> failed;
  for (auto p = pending_.begin(); p != pending_.end();) {
    if (p->second.node == node) {
      failed.push_back(std::move(p->second.done));
      p = pending_.erase(p);
    } else {
      ++p;
    }
  }
  for (auto& d : failed) d(lostStatus);
  if (!joinWaiters_.empty()) {
    auto waiters = std::move(joinWaiters_);
    joinWaiters_.clear();
    for (auto& w : waiters) w(lostStatus);
  }
  // The head node tells every other node: a node that never talks to the lost one directly
  // (heartbeats are a star) must still fail what it forwarded there.
  if (self_ == head_ && joined_ && !closed_) {
    pb::Envelope notice;
    notice.mutable_node_lost()->set_node(node);
    notice.mutable_node_lost()->set_why(std::string(why.message()));
    for (const auto& [id, n] : nodes_) {
      if (id != self_ && !n.lost) (void)sendEnvelope(id, notice);
    }
  }
  if (onLost_) onLost_(node, lostStatus);
}

void Cluster::heartbeat() {
  if (closed_) return;
  const std::int64_t now = nowNs();
  pb::Envelope beat;
  beat.mutable_heartbeat();
  // A star around the head node: it hears from every node, and every node from it.
  std::vector<std::pair<std::uint32_t, Status>> silent;
  for (auto& [id, n] : nodes_) {
    if (id == self_ || n.lost) continue;
    if (self_ != head_ && id != head_) continue;
    (void)sendEnvelope(id, beat);
    if (heard_.count(id) != 0) {
      if (now - n.lastHeardNs > nodeTimeoutNs_) {
        silent.emplace_back(id, Status(StatusCode::NodeLost,
                                       "not heard from for " +
                                           std::to_string(nodeTimeoutNs_ / 1'000'000) +
                                           " ms (cluster.node_timeout)"));
      }
    } else if (now - joinedNs_ > connectTimeoutNs_ + nodeTimeoutNs_) {
      // A node not heard from since the join has cluster.connect_timeout to greet us (the
      // head's join wait fails then), and node_timeout more before it is lost: a node whose
      // head froze or was cut off as the job began must not wait on it for ever.
      silent.emplace_back(id, Status(StatusCode::NodeLost,
                                     "never heard from within " +
                                         std::to_string(connectTimeoutNs_ / 1'000'000) +
                                         " ms of joining (cluster.connect_timeout)"));
    }
  }
  for (auto& [id, why] : silent) onPeerLost(id, why);
  loop_.addTimerAfterNs(heartbeatNs_, [this] { heartbeat(); });
}

Result<transport::RegisteredRegion> Cluster::registerRegion(void* base, std::size_t length) {
  if (closed_) return Status(StatusCode::PeerLost, "the job's transport is closed");
  return transport_->registerRegion(base, length);
}

void Cluster::deregisterRegion(std::uint64_t id, std::shared_ptr<void> mapping) {
  if (!closed_) transport_->deregisterRegion(id, std::move(mapping));
}

Status Cluster::rma(std::uint32_t node, transport::RmaKind kind, void* local, std::size_t length,
                    std::uint64_t remote, std::string_view key, std::function<void(Status)> done) {
  if (closed_) return Status(StatusCode::PeerLost, "the job's transport is closed");
  if (!known(node)) return Status(StatusCode::NotFound, "there is no node " + std::to_string(node) + " in this job");
  if (lost(node)) return Status(StatusCode::NodeLost, describe(node) + " was lost");
  Status st = transport_->rma(node, kind, local, length, remote, key, std::move(done));
  scheduleProgress();
  return st;
}

void Cluster::pump() {
  if (closed_) return;
  transport_->progress();
  if (transport_->needsProgress()) scheduleProgress();
}

void Cluster::scheduleProgress() {
  if (progressScheduled_ || closed_) return;
  progressScheduled_ = true;
  loop_.defer([this] {
    progressScheduled_ = false;
    pump();
  });
}

void Cluster::shutdown() {
  if (closed_) return;
  // Replies and end-of-job messages still queued get a moment to leave.
  transport_->shutdown(std::min<std::int64_t>(connectTimeoutNs_, 2'000'000'000));
  loop_.remove(transport_->eventFd());
  closed_ = true;
  std::vector<Done> failed;
  for (auto& [id, p] : pending_) failed.push_back(std::move(p.done));
  pending_.clear();
  for (auto& d : failed) d(Status(StatusCode::PeerLost, "dragond is shutting down"));
}

std::string Cluster::dump() const {
  std::string out = "cluster: node " + std::to_string(self_) + ", transport " +
                    std::string(transport_->name()) + (joined_ ? "" : ", not joined") + ", " +
                    std::to_string(pending_.size()) + " forwarded requests pending";
  for (const auto& [id, n] : nodes_) {
    out += "\n  " + describe(id) + " rank " + std::to_string(n.rank) + " cpus " +
           std::to_string(n.cpus) + (n.lost ? " LOST" : "");
  }
  return out;
}

}  // namespace dragon::daemon
