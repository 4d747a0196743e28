// SPDX-License-Identifier: MIT
// The multi-node half of the server: requests that name another node are forwarded to its
// dragond through the cluster and answered when it replies; requests from other dragonds are
// served here by the same local code that serves this node's clients.
#include "base/log.hpp"
#include "base/robust_mutex.hpp"
#include "daemon/rma.hpp"
#include "daemon/server.hpp"
#include "protocol/socket_io.hpp"

#include <algorithm>
#include <memory>
#include <optional>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

// A SEND its home could not take yet (its gateway holds cluster.parked_send_bytes of waiting
// sends) is sent again after what the home says, then twice as long each time, up to this.
constexpr std::int64_t kBlockedSendRetryNs = 1'000'000;
constexpr std::int64_t kBlockedSendRetryMaxNs = 100'000'000;
// Told "later" for this long, a send is overdue (ChannelOp.overdue).
constexpr std::int64_t kOverdueNs = 1'000'000'000;

Status statusOf(const pb::Envelope& e) {
  if (!e.has_error()) return Status::ok();
  return pb::statusFromError(e.error());
}

// Counts answers from several nodes and replies once: with the first error, at once, or with
// `finish()` when every node has answered.
struct FanIn {
  int remaining = 0;
  bool done = false;
  std::function<void(pb::Envelope)> reply;
};

}  // namespace

pb::Envelope Server::fromPeer(Result<pb::Envelope> r) {
  if (!r.has_value()) return errorEnvelope(r.error());
  r->set_peer_reply(false);
  return std::move(*r);
}

void Server::setCluster(Cluster& cluster, std::string socketPath, std::int64_t nodeLostGraceNs,
                        std::int64_t drainTimeoutNs) {
  cluster_ = &cluster;
  drainTimeoutNs_ = drainTimeoutNs;
  socketPath_ = std::move(socketPath);
  nodeLostGraceNs_ = nodeLostGraceNs;
  // Another node's request takes the path of a client's, with the peer as its origin.
  cluster_->setRequestHandler(
      [this](std::uint32_t from, pb::Envelope& msg, std::span<const char> data, Reply reply) {
        Request rq = peerRequest(from, std::move(reply));
        rq.data = data;
        dispatch(rq, msg);
      });
  cluster_->setLostHandler([this](std::uint32_t node, const Status& why) { onNodeLost(node, why); });
  if (rma_ != nullptr) rma_->setCluster(cluster);
}

void Server::startGlobalServices() {
  const std::uint32_t globalNode = cluster_->globalNode();
  if (globalNode == cluster_->self()) {
    std::map<std::uint32_t, std::uint32_t> cpus;
    for (const auto& [id, n] : cluster_->nodes()) cpus[id] = n.cpus;
    auto hosted = std::make_unique<HostedGlobalServices>(std::move(cpus));
    hosted_ = hosted.get();
    global_ = std::move(hosted);
  } else {
    global_ = std::make_unique<RemoteGlobalServices>(
        globalNode, [this, globalNode](pb::Envelope request, Cluster::Done done) {
          cluster_->forward(globalNode, std::move(request), std::move(done));
        });
  }
  processes_->allowGroupsOfOtherNodes();  // checked with global services first
  // The job's processes on this node go into the job-wide table as they start and end.
  registry_.setProcessHooks(
      [this](const ProcessRecord& r) {
        if (global_ != nullptr && r.job == clusterJob_ && !clusterEnded_) global_->processStarted(r);
      },
      [this](const ProcessRecord& r) { processEnded(r); });
}

void Server::processEnded(const ProcessRecord& r) {
  if (global_ != nullptr && r.job == clusterJob_ && !clusterEnded_) global_->processEnded(r);
  // A process that ends with status 0 may have left a Lock taken on purpose, for another to
  // release (the stdlib's Lock allows it), but not an RLock (holderOwns); one killed or
  // failing gives back neither.
  const bool clean = r.signal == 0 && r.exitCode == 0;
  const std::uint64_t me = Channel::holderWord(node_, static_cast<std::uint32_t>(r.pid));
  for (auto& [id, c] : conns_) {
    if (c->peer.pid == r.pid) c->peerEnded = true;
  }
  gateway_->dropReceivesOf(me);
  const std::size_t broken =
      breakHolds([me](std::uint64_t h) { return h == me; }, clean);
  if (broken != 0) {
    DRAGON_LOG(Info, "server", "process %d ended holding %zu lock(s) of this node: broken",
               static_cast<int>(r.pid), broken);
  }
  auto it = remoteReceivers_.find(r.pid);
  if (it == remoteReceivers_.end()) return;
  const std::set<std::uint32_t> nodes = std::move(it->second);
  remoteReceivers_.erase(it);
  if (cluster_ == nullptr) return;
  for (std::uint32_t node : nodes) {
    if (cluster_->lost(node)) continue;
    pb::Envelope gone;
    gone.mutable_channel_op()->set_kind(pb::ChannelOp::HOLDER_GONE);
    gone.mutable_channel_op()->set_holder(me);
    gone.mutable_channel_op()->set_clean_end(clean);
    cluster_->forward(node, std::move(gone), [](Result<pb::Envelope>) {});
  }
}

std::size_t Server::breakHolds(std::function<bool(std::uint64_t)> gone, bool cleanEnd) {
  // Never waiting here on a lock a process holds (one stopped inside a send would stall the
  // node): a lock that is held is looked at again a little later, until it is free.
  base::LockPatience patience(0);
  const std::uint64_t busy = base::LockPatience::busyLocks();
  const std::size_t broken = objects_->breakHolds(gone, cleanEnd);
  if (base::LockPatience::busyLocks() != busy) {
    loop_.addTimerAfterNs(kBreakRetryNs, [this, gone = std::move(gone), cleanEnd]() mutable {
      breakHolds(std::move(gone), cleanEnd);
    });
  }
  return broken;
}

Server::Reply Server::afterGlobalSync(std::uint32_t requester, Reply reply) {
  // The tables hear of this node's processes in the order this node tells them; the global
  // services node hears that before this answer, since both go the same way. Another node
  // might ask the tables before they heard: the answer waits until they have.
  if (global_ == nullptr || requester == cluster_->globalNode() ||
      cluster_->self() == cluster_->globalNode()) {
    return reply;
  }
  return [this, reply = std::move(reply)](pb::Envelope answer) {
    global_->sync([reply, answer = std::move(answer)](Status) mutable { reply(std::move(answer)); });
  };
}

void Server::forgetCluster() {
  registry_.setProcessHooks(nullptr, [this](const ProcessRecord& r) { processEnded(r); });
  remoteReceivers_.clear();
  hosted_ = nullptr;
  global_.reset();
  if (rma_ != nullptr) rma_->forgetCluster();
  cluster_ = nullptr;
}

bool Server::claimedByAnother(const Request& rq, const Connection& c) {
  if (clusterClaim_ == 0 || clusterClaim_ == c.id || !conns_.contains(clusterClaim_)) {
    return false;
  }
  rq.fail(Status(StatusCode::AlreadyExists, "another job step's launcher is joining this dragond"));
  return true;
}

void Server::handleJob(const Request& rq, pb::Envelope& msg) {
  if (cluster_ == nullptr) {
    rq.fail(Status(StatusCode::InvalidArgument,
                   "this dragond does not serve a multi-node job (no --node-id)"));
    return;
  }
  Connection* c = clientOf(rq);
  if (c == nullptr) return;
  switch (msg.body_case()) {
    case pb::Envelope::kClusterAddress: {
      if (cluster_->joined()) {
        // A dragond started by the Slurm prolog serves the job's first step; its cluster
        // layer is wired once, so a later step's launcher starts its own dragonds.
        rq.fail(Status(StatusCode::AlreadyExists, "this dragond already served a job step"));
        return;
      }
      // The first launcher to ask claims it until it joins or goes: two steps started at
      // once would otherwise both take it and, each winning the join on some nodes, both
      // fail after the PMIx fence. The later one starts its own dragond.
      if (claimedByAnother(rq, *c)) return;
      clusterClaim_ = c->id;
      pb::Envelope reply;
      auto* a = reply.mutable_cluster_address_reply();
      a->set_node(cluster_->self());
      a->set_transport(std::string(cluster_->transportName()));
      a->set_address(cluster_->address());
      rq.reply(std::move(reply));
      return;
    }
    case pb::Envelope::kJoinCluster: {
      if (claimedByAnother(rq, *c)) return;
      Status st = cluster_->join(msg.join_cluster());
      if (!st.isOk()) {
        rq.fail(st);
        return;
      }
      // The launcher that joined is this node's root of the job: what other nodes start here
      // is in its job, and their output goes to it.
      jobOf(*c);
      clusterRoot_ = c->id;
      clusterJob_ = c->job;
      startGlobalServices();
      if (cluster_->self() != cluster_->headNode()) {
        rq.ok();
        return;
      }
      // The head node answers once every node has joined: then the job may start.
      cluster_->whenAllJoined([reply = rq.later()](Status joined) {
        reply(joined.isOk() ? okEnvelope() : errorEnvelope(joined));
      });
      return;
    }
    case pb::Envelope::kWaitJobEnd: {
      // Taken before the join too: the node's other launchers ask as soon as dragond is up.
      const std::uint32_t others = msg.wait_job_end().others();
      Reply reply = rq.later();
      if (others > 0) {
        drainWaiters_.push_back({others, std::move(reply)});
        loop_.addTimerAfterNs(drainTimeoutNs_, [this] { answerDrainWaiters(true); });
        answerDrainWaiters(false);
      } else if (!clusterEnded_) {
        jobEndWaiters_.push_back({c->id, std::move(reply)});
      } else {
        if (c->id != clusterRoot_) ++jobEndAnswered_;
        reply(jobEndEnvelope());
        answerDrainWaiters(false);
      }
      return;
    }
    case pb::Envelope::kListNodes: {
      if (!cluster_->joined()) {
        rq.fail(Status(StatusCode::InvalidArgument,
                       "this dragond's node has not joined its job yet (no JoinCluster)"));
        return;
      }
      pb::Envelope reply;
      auto* list = reply.mutable_node_list();
      list->set_this_node(cluster_->self());
      list->set_global_node(cluster_->globalNode());
      for (const auto& [id, n] : cluster_->nodes()) {
        if (n.lost) continue;
        auto* e = list->add_node();
        e->set_node(id);
        e->set_hostname(n.hostname);
        e->set_cpus(n.cpus);
        e->set_rank(n.rank);
      }
      rq.reply(std::move(reply));
      return;
    }
    default:
      return;
  }
}

bool Server::clusterProcess(const Request& rq, pb::Envelope& msg) {
  switch (msg.body_case()) {
    case pb::Envelope::kSpawn: {
      const auto& sp = msg.spawn();
      const bool here = sp.placement() == pb::Spawn::THIS_NODE ||
                        (sp.placement() == pb::Spawn::PLACE_NODE && sp.node() == cluster_->self());
      // Into a group of this node, or none: the local path.
      if (here && (sp.group() == 0 || nodeOfPuid(sp.group()) == cluster_->self())) return false;
      clusterSpawn(rq, sp);
      return true;
    }
    case pb::Envelope::kWait: {
      for (auto p : msg.wait().puid()) {
        if (nodeOfPuid(p) != cluster_->self()) {
          clusterWait(rq.later(), msg.wait());
          return true;
        }
      }
      return false;
    }
    case pb::Envelope::kSignal: {
      if (msg.signal().group() != 0) {
        clusterSignalGroup(rq.later(), msg.signal());
        return true;
      }
      for (auto p : msg.signal().puid()) {
        if (nodeOfPuid(p) != cluster_->self()) {
          clusterSignal(rq.later(), msg.signal());
          return true;
        }
      }
      return false;
    }
    case pb::Envelope::kListProcesses:
      if (msg.list_processes().this_node_only()) return false;
      clusterList(rq.later());
      return true;
    case pb::Envelope::kEndJob: {
      if (rq.connection != clusterRoot_) return false;
      if (cluster_->self() == cluster_->headNode()) {
        clusterEndJob(rq.later(), msg.end_job());
        return true;
      }
      // This node's launcher was told to stop (SIGTERM, scancel): its part of the job ends
      // here, and so does its wait for the job's end. The head node hears of it when this
      // node leaves the job.
      const int code = msg.end_job().exit_code();
      processes_->endJob(clusterJob_, [this, reply = rq.later(), code] {
        finishClusterJob(code);
        reply(okEnvelope());
        leaveClusterJob();
      }, msg.end_job().now());
      return true;
    }
    default:
      return false;
  }
}

void Server::clusterSpawn(const Request& rq, const pb::Spawn& sp) {
  if (sp.placement() != pb::Spawn::ROUND_ROBIN && sp.placement() != pb::Spawn::PLACE_NODE &&
      sp.placement() != pb::Spawn::THIS_NODE) {
    rq.fail(Status(StatusCode::InvalidArgument, "unknown placement"));
    return;
  }
  Connection* c = clientOf(rq);
  if (c == nullptr) return;
  // The request's fds are taken now: the connection's next request may bring its own while
  // global services answer.
  auto fds = std::make_shared<std::vector<UniqueFd>>(std::move(*rq.fds));
  const std::uint64_t job = jobOf(*c);
  if (sp.placement() == pb::Spawn::ROUND_ROBIN) {
    // Global services choose the node (job-wide turns, whichever node asks).
    global_->place([this, cid = c->id, reply = rq.later(), job, sp, fds](
                       Result<std::uint32_t> node) mutable {
      if (!node.has_value()) {
        reply(errorEnvelope(node.error()));
        return;
      }
      spawnPlaced(cid, std::move(reply), job, std::move(sp), *node, fds);
    });
    return;
  }
  spawnPlaced(c->id, rq.later(), job, sp,
              sp.placement() == pb::Spawn::THIS_NODE ? cluster_->self() : sp.node(), fds);
}

void Server::spawnPlaced(std::uint64_t cid, Reply reply, std::uint64_t job, pb::Spawn sp,
                         std::uint32_t target, std::shared_ptr<std::vector<UniqueFd>> fds) {
  if (find(cid) == nullptr) return;  // the client left: start nothing for it
  const std::uint64_t group = sp.group();
  auto start = [this, cid, reply, job, target, fds](pb::Spawn request) {
    if (find(cid) == nullptr) return;
    if (target == cluster_->self()) {
      localSpawn(request, job, *fds, reply);
    } else {
      request.set_placement(pb::Spawn::PLACE_NODE);
      request.set_node(target);
      spawnOn(reply, std::move(request));
    }
  };
  if (group == 0 || nodeOfPuid(group) == target) {
    start(std::move(sp));  // a group of the target node: its dragond knows it
    return;
  }
  // A group may span nodes: global services know whether it exists.
  global_->listGroup(group, [this, cid, reply, group, start, sp = std::move(sp)](
                                Result<std::vector<ProcessRecord>> members) mutable {
    if (find(cid) == nullptr) return;
    if (!members.has_value()) {
      reply(errorEnvelope(members.error()));
    } else if (members->empty()) {
      reply(errorEnvelope(Status(StatusCode::NotFound, "no process group " + std::to_string(group))));
    } else {
      start(std::move(sp));
    }
  });
}

void Server::spawnOn(Reply reply, pb::Spawn sp) {
  const std::uint32_t target = sp.node();
  if (!cluster_->known(target)) {
    reply(errorEnvelope(
        Status(StatusCode::NotFound, "there is no node " + std::to_string(target) +
                                         " in this job (it has " +
                                         std::to_string(cluster_->nodes().size()) +
                                         " nodes, 0 .. " +
                                         std::to_string(cluster_->nodes().size() - 1) + ")")));
    return;
  }
  if (sp.extra_fds() != 0) {
    reply(errorEnvelope(Status(StatusCode::InvalidArgument,
                               "fds cannot be lent to a process on another node")));
    return;
  }
  // This process's terminal cannot be lent across nodes: its output comes back through the
  // launcher of the node it runs on (as srun gathers every task's output), its stdin is empty.
  // (Inherit likewise: that node's dragond's stdio is its launcher's, the user's terminal.)
  auto remote = [](pb::Spawn::Stdio m) {
    return m == pb::Spawn::PASSED || m == pb::Spawn::INHERIT;
  };
  if (remote(sp.stdin_mode())) sp.set_stdin_mode(pb::Spawn::NULL_DEVICE);
  if (remote(sp.stdout_mode())) sp.set_stdout_mode(pb::Spawn::CAPTURE);
  if (remote(sp.stderr_mode())) sp.set_stderr_mode(pb::Spawn::CAPTURE);
  sp.set_placement(pb::Spawn::PLACE_NODE);
  sp.set_node(target);
  pb::Envelope fwd;
  *fwd.mutable_spawn() = std::move(sp);
  cluster_->forward(target, std::move(fwd),
                    [reply](Result<pb::Envelope> r) { reply(fromPeer(std::move(r))); });
}

void Server::clusterSignalGroup(Reply reply, const pb::Signal& sig) {
  // A group may span nodes. Its members here (of any job) are signalled at once; global
  // services say which other nodes have members, and each of those signals its own.
  const bool here = !registry_.groupMembers(sig.group()).empty();
  const Status local = here ? localSignal(sig) : Status::ok();
  global_->listGroup(sig.group(), [this, sig, reply, here, local](Result<std::vector<ProcessRecord>> members) {
    if (!members.has_value()) {
      // Members on other nodes, if any, were not signalled: not an Ok, also when this node's
      // were.
      reply(errorEnvelope(
          !here ? members.error()
                : Status(members.error().code(),
                         "signalled the group's processes on this node only: " +
                             std::string(members.error().message()))));
      return;
    }
    std::set<std::uint32_t> others;
    for (const auto& m : *members) {
      if (m.node != cluster_->self()) others.insert(m.node);
    }
    if (others.empty()) {
      reply(!here ? errorEnvelope(Status(StatusCode::NotFound, "no process group " + std::to_string(sig.group())))
            : local.isOk() ? okEnvelope()
                           : errorEnvelope(local));
      return;
    }
    // Ok when every node that has members signalled them; else the first error.
    auto fan = std::make_shared<FanIn>();
    fan->reply = reply;
    fan->remaining = static_cast<int>(others.size());
    auto first = std::make_shared<Status>(local);
    auto one = [fan, first](const Status& st) {
      if (!st.isOk() && first->isOk()) *first = st;
      if (--fan->remaining > 0) return;
      fan->reply(first->isOk() ? okEnvelope() : errorEnvelope(*first));
    };
    for (auto node : others) {
      pb::Envelope fwd;
      *fwd.mutable_signal() = sig;
      cluster_->forward(node, std::move(fwd), [one](Result<pb::Envelope> r) {
        one(statusOf(fromPeer(std::move(r))));
      });
    }
  });
}

void Server::clusterWait(Reply reply, const pb::Wait& w) {
  std::map<std::uint32_t, pb::Wait> byNode;
  for (auto p : w.puid()) {
    const std::uint32_t node = nodeOfPuid(p);
    if (node != cluster_->self() && !cluster_->known(node)) {
      reply(errorEnvelope(
          Status(StatusCode::NotFound, "no process " + std::to_string(p) + " in this job")));
      return;
    }
    auto& sub = byNode[node];
    sub.add_puid(p);
    sub.set_timeout_ns(w.timeout_ns());
  }
  auto fan = std::make_shared<FanIn>();
  fan->remaining = static_cast<int>(byNode.size());
  fan->reply = std::move(reply);
  auto exits = std::make_shared<std::map<std::uint64_t, pb::Exited>>();
  std::vector<std::uint64_t> order(w.puid().begin(), w.puid().end());
  auto collect = [fan, exits, order](pb::Envelope e) {
    if (fan->done) return;
    Status st = statusOf(e);
    if (!st.isOk()) {
      // The first failure answers at once: a lost node does not wait for the others.
      fan->done = true;
      fan->reply(std::move(e));
      return;
    }
    for (const auto& x : e.wait_reply().exited()) (*exits)[x.puid()] = x;
    if (--fan->remaining > 0) return;
    fan->done = true;
    pb::Envelope out;
    auto* wr = out.mutable_wait_reply();
    for (auto p : order) {
      auto it = exits->find(p);
      if (it == exits->end()) {
        // A node answered without this process: never make up an exit for it.
        fan->reply(errorEnvelope(Status(StatusCode::Internal,
                                        "no exit reported for process " + std::to_string(p))));
        return;
      }
      *wr->add_exited() = it->second;
    }
    fan->reply(std::move(out));
  };
  for (auto& [node, sub] : byNode) {
    if (node == cluster_->self()) {
      localWait(sub, collect);
    } else {
      pb::Envelope fwd;
      *fwd.mutable_wait() = std::move(sub);
      cluster_->forward(node, std::move(fwd),
                        [collect](Result<pb::Envelope> r) { collect(fromPeer(std::move(r))); });
    }
  }
}

void Server::clusterSignal(Reply reply, const pb::Signal& s) {
  std::map<std::uint32_t, pb::Signal> byNode;
  for (auto p : s.puid()) {
    auto& sub = byNode[nodeOfPuid(p)];
    sub.add_puid(p);
    sub.set_signal(s.signal());
  }
  auto fan = std::make_shared<FanIn>();
  fan->remaining = static_cast<int>(byNode.size());
  fan->reply = std::move(reply);
  auto collect = [fan](pb::Envelope e) {
    if (fan->done) return;
    if (e.has_error() || --fan->remaining == 0) {
      fan->done = true;
      fan->reply(e.has_error() ? std::move(e) : okEnvelope());
    }
  };
  for (auto& [node, sub] : byNode) {
    if (node == cluster_->self()) {
      Status st = processes_->signal({sub.puid().begin(), sub.puid().end()}, sub.signal());
      collect(st.isOk() ? okEnvelope() : errorEnvelope(st));
    } else {
      pb::Envelope fwd;
      *fwd.mutable_signal() = std::move(sub);
      cluster_->forward(node, std::move(fwd),
                        [collect](Result<pb::Envelope> r) { collect(fromPeer(std::move(r))); });
    }
  }
}

void Server::clusterList(Reply reply) {
  // The job's processes on every node, from global services' table, and this node's
  // processes of other jobs (clients that are not the job's), which that table does not hold.
  // Without global services (their node lost), this node's alone: ps shows what is there.
  global_->listProcesses([this, reply](Result<std::vector<ProcessRecord>> r) {
    pb::Envelope e = localList();
    if (!r.has_value()) {
      reply(std::move(e));
      return;
    }
    auto* list = e.mutable_process_list()->mutable_process();
    const std::uint64_t job = clusterJob_;
    list->erase(std::remove_if(list->begin(), list->end(),
                               [job](const pb::ProcessEntry& p) { return p.job() == job; }),
                list->end());
    for (const auto& p : *r) *list->Add() = toEntry(p);
    std::sort(list->begin(), list->end(), [](const pb::ProcessEntry& a, const pb::ProcessEntry& b) {
      return a.node() != b.node() ? a.node() < b.node() : a.puid() < b.puid();
    });
    reply(std::move(e));
  });
}

void Server::clusterEndJob(Reply reply, const pb::EndJob& end) {
  const int code = end.exit_code();
  const bool now = end.now();
  auto fan = std::make_shared<FanIn>();
  fan->reply = std::move(reply);
  std::vector<std::uint32_t> peers;
  for (const auto& [id, n] : cluster_->nodes()) {
    if (id != cluster_->self() && !n.lost) peers.push_back(id);
  }
  fan->remaining = static_cast<int>(peers.size()) + 1;
  auto one = [this, fan, code] {
    if (--fan->remaining > 0) return;
    fan->done = true;
    // A node lost during the job makes the whole job fail, whatever the head returned.
    if (!nodeLost_.isOk()) {
      finishClusterJob(nodeLost_);
      fan->reply(errorEnvelope(nodeLost_));
    } else {
      finishClusterJob(code);
      fan->reply(okEnvelope());
    }
  };
  for (auto node : peers) {
    pb::Envelope fwd;
    fwd.mutable_peer_end_job()->set_exit_code(code);
    fwd.mutable_peer_end_job()->set_now(now);
    cluster_->forward(node, std::move(fwd), [this, one, node](Result<pb::Envelope> r) {
      // Done there: its dragond may go now without that being a loss.
      if (r.has_value() && !r->has_error()) {
        endedPeers_.insert(node);
      } else if (nodeLost_.isOk()) {
        nodeLost_ = r.has_value() ? statusOf(*r) : r.error();
      }
      one();
    });
  }
  processes_->endJob(clusterJob_, one, now);
}

// A peer speaks for its own node only: the names of its objects, the records of its
// processes. The node a request names, for the kinds that name one (else `from`).
static std::uint32_t namedNode(const pb::Envelope& msg, std::uint32_t from) {
  auto homeOf = [from](const pb::ObjectRef& ref) {
    auto d = pb::fromRef(ref);
    return d.has_value() ? d->node : from;  // a bad reference is refused by the service itself
  };
  switch (msg.body_case()) {
    case pb::Envelope::kNameClaim:
      return homeOf(msg.name_claim().object());
    case pb::Envelope::kNameRelease:
      return homeOf(msg.name_release().object());
    case pb::Envelope::kProcessStarted:
      return msg.process_started().node();
    case pb::Envelope::kProcessEnded:
      return msg.process_ended().node();
    default:
      return from;
  }
}

void Server::handleGlobal(const Request& rq, pb::Envelope& msg) {
  pb::Envelope answer;
  const std::uint32_t named = rq.fromPeer() ? namedNode(msg, rq.node) : rq.node;
  if (named != rq.node) {
    DRAGON_LOG(Warn, "cluster", "%s spoke for node %u in a request to global services: refused",
               cluster_->describe(rq.node).c_str(), named);
    answer = errorEnvelope(Status(StatusCode::PermissionDenied,
                                  "a node names or reports only its own objects and processes"));
  } else if (hosted_ == nullptr) {
    answer = errorEnvelope(Status(StatusCode::InvalidArgument, "this node does not host global services"));
  } else if (!hosted_->serve(msg, answer)) {
    answer = errorEnvelope(Status(StatusCode::InvalidArgument, "not a request of global services"));
  }
  rq.reply(std::move(answer));
}

void Server::onNodeLost(std::uint32_t node, const Status& why) {
  // Its clients' waiting channel operations and references here go with it, and its names;
  // the locks of this node that its processes held break.
  gateway_->cancelFrom(node);
  parts_.dropNode(node);
  for (auto* all : {&sendsInParts_, &receivesInParts_}) {  // what it kept went with it
    for (auto it = all->begin(); it != all->end();) {
      std::erase_if(it->second, [node](const auto& t) { return t.first.first == node; });
      it = it->second.empty() ? all->erase(it) : std::next(it);
    }
  }
  const std::size_t broken =
      breakHolds([node](std::uint64_t h) { return (h >> 32) == node; }, false);
  if (broken != 0) {
    DRAGON_LOG(Info, "cluster", "%zu lock(s) held on %s broken", broken,
               cluster_->describe(node).c_str());
  }
  objects_->releaseOwner(peerOwner(node));
  if (global_ != nullptr) global_->nodeLost(node);
  if (clusterEnded_ || endedPeers_.count(node) != 0) {
    DRAGON_LOG(Debug, "cluster", "%s left at the end of the job", cluster_->describe(node).c_str());
    return;
  }
  if (cluster_->self() != cluster_->headNode() && node != cluster_->headNode()) {
    // Another node than the head, seen from another node than the head: what waited on it
    // has its NodeLost (above); the head node reports the loss and decides the job's fate.
    // (At the end of a job, a node that finished first may leave before this one has heard
    // that the job ends.)
    DRAGON_LOG(Info, "cluster", "%s", std::string(why.message()).c_str());
    return;
  }
  DRAGON_LOG(Error, "cluster", "%s", std::string(why.message()).c_str());
  if (nodeLost_.isOk()) nodeLost_ = why;
  if (node == cluster_->headNode()) {
    // Nobody is left to end the job: end it here, and tell whoever waits for its end.
    processes_->endJob(clusterJob_, [this, why] { finishClusterJob(why); });
    return;
  }
  if (cluster_->self() == cluster_->headNode()) {
    // The job's processes get NodeLost from what they wait on; after the grace period the
    // job ends (its head, then the launcher reports the lost node).
    loop_.addTimerAfterNs(nodeLostGraceNs_, [this] {
      if (!clusterEnded_) processes_->endJob(clusterJob_, nullptr);
    });
  }
}

void Server::clusterRootGone() {
  if (cluster_ == nullptr || !cluster_->joined() || clusterEnded_) return;
  const Status why(StatusCode::PeerLost, "the launcher of " + cluster_->describe(cluster_->self()) +
                                             " went before the job ended");
  DRAGON_LOG(Warn, "cluster", "%s: this node leaves the job", std::string(why.message()).c_str());
  processes_->endJob(clusterJob_, nullptr);  // SIGTERM, then SIGKILL after kill_grace
  finishClusterJob(why);
  leaveClusterJob();
}

void Server::leaveClusterJob() {
  // A private dragond goes with its launcher anyway; the Slurm prolog's stays for the
  // allocation, and would otherwise keep its node in the job (heartbeats and all) while the
  // other nodes wait for its part to end.
  if (cluster_ != nullptr && cluster_->joined()) cluster_->shutdown();
}

pb::Envelope Server::jobEndEnvelope() const {
  if (!clusterOutcome_.has_value()) return errorEnvelope(clusterOutcome_.error());
  pb::Envelope e;
  e.mutable_job_ended()->set_exit_code(*clusterOutcome_);
  return e;
}

void Server::finishClusterJob(Result<int> outcome) {
  if (clusterEnded_) return;
  clusterEnded_ = true;
  clusterOutcome_ = outcome;
  auto waiters = std::move(jobEndWaiters_);
  jobEndWaiters_.clear();
  for (auto& [conn, w] : waiters) {
    if (conn != clusterRoot_) ++jobEndAnswered_;  // another launcher of this node
    w(jobEndEnvelope());
  }
  answerDrainWaiters(false);
}

void Server::answerDrainWaiters(bool timedOut) {
  if (!clusterEnded_ && !timedOut) return;
  for (auto it = drainWaiters_.begin(); it != drainWaiters_.end();) {
    if (timedOut || jobEndAnswered_ >= it->first) {
      Reply w = std::move(it->second);
      it = drainWaiters_.erase(it);
      w(clusterEnded_ ? jobEndEnvelope()
                      : errorEnvelope(Status(StatusCode::Timeout,
                                             "the job had not ended (cluster.connect_timeout)")));
    } else {
      ++it;
    }
  }
}

}  // namespace dragon::daemon

namespace dragon::daemon {

bool Server::clusterObject(const Request& rq, pb::Envelope& msg) {
  const pb::ObjectRef* ref = nullptr;
  if (msg.has_attach()) {
    if (!msg.attach().has_object()) return false;  // names are looked up on this node
    ref = &msg.attach().object();
  } else if (msg.has_detach()) {
    ref = &msg.detach().object();
  } else if (msg.has_destroy()) {
    ref = &msg.destroy().object();
  }
  if (ref == nullptr) return false;
  auto d = pb::fromRef(*ref);
  if (!d.has_value() || d->node == node_) return false;  // the local path answers
  if (!cluster_->joined() || cluster_->nodes().count(d->node) == 0) {
    rq.fail(Status(StatusCode::NotFound, "object " + d->toString() + " names node " +
                                             std::to_string(d->node) + ", which is not in this job"));
    return true;
  }
  if (msg.has_attach()) {
    clusterAttach(rq.connection, msg.attach(), *d, rq.later());
    return true;
  }
  pb::Envelope fwd;
  if (msg.has_detach()) {
    // The home node counts one reference per node: only one this client holds goes.
    auto it = remoteRefs_.find(rq.connection);
    auto one = it == remoteRefs_.end() ? std::vector<ObjectDescriptor>::iterator{}
                                       : std::find(it->second.begin(), it->second.end(), *d);
    if (it == remoteRefs_.end() || one == it->second.end()) {
      rq.fail(Status(StatusCode::NotFound, "this client holds no reference to " + d->toString()));
      return true;
    }
    it->second.erase(one);
    *fwd.mutable_detach() = msg.detach();
  } else {
    *fwd.mutable_destroy() = msg.destroy();
  }
  cluster_->forward(d->node, std::move(fwd),
                    [reply = rq.later()](Result<pb::Envelope> r) { reply(fromPeer(std::move(r))); });
  return true;
}

void Server::clusterAttach(std::uint64_t cid, const pb::Attach& attach,
                           const ObjectDescriptor& d, Reply reply) {
  if (d.kind != ObjectKind::Channel) {
    reply(errorEnvelope(Status(StatusCode::InvalidArgument,
                               "pool " + d.toString() + " lives on node " + std::to_string(d.node) +
                                   ": a pool is mapped only on its own node")));
    return;
  }
  pb::Envelope fwd;
  *fwd.mutable_attach() = attach;
  cluster_->forward(d.node, std::move(fwd), [this, reply, cid, d](Result<pb::Envelope> r) {
    if (r.has_value() && r->has_object()) {
      if (find(cid) != nullptr) {
        remoteRefs_[cid].push_back(d);
      } else {
        dropRemoteRef(d);  // the client left meanwhile: give the reference back
      }
    }
    reply(fromPeer(std::move(r)));
  });
}

pb::Envelope Server::peerAttach(std::uint32_t from, const pb::Attach& attach) {
  if (!attach.has_object()) {
    return errorEnvelope(Status(StatusCode::InvalidArgument, "a name is looked up on its own node"));
  }
  auto d = pb::fromRef(attach.object());
  if (!d.has_value()) return errorEnvelope(d.error());
  if (d->kind != ObjectKind::Channel) {
    return errorEnvelope(Status(StatusCode::InvalidArgument, "only channels are used across nodes"));
  }
  auto ch = objects_->channel(*d);
  if (!ch.has_value()) return errorEnvelope(ch.error());
  auto grant = objects_->attach(peerOwner(from), *d);
  if (!grant.has_value()) return errorEnvelope(grant.error());
  pb::Envelope e;
  auto* o = e.mutable_object();
  *o->mutable_object() = pb::toRef(grant->object);
  *o->mutable_pool() = pb::toRef(grant->pool);
  o->set_fd_count(0);
  o->set_remote(true);
  o->set_capacity(ch->capacity());
  // A larger message than one transport message carries crosses in parts (ChannelOp
  // SEND_PART, RECV_PART), so the channel's own limit holds across nodes too.
  o->set_max_message_size(ch->maxMessageSize());
  return e;
}

struct Server::BlockedSend {
  std::uint64_t cid = 0;
  std::uint64_t key = 0;
  pb::ChannelOp op;  // as the client sent it: its bytes (small), or where it staged them
  Reply reply;
  std::int64_t deadlineNs = INT64_MAX;
  std::int64_t waitNs = 0;  // before the next try
  bool asking = false;      // told "later": asks for room (ChannelOp.ask_room) before it sends
  std::int64_t refusedSinceNs = 0;  // first told "later" (0: never)
};

void Server::handleChannelOp(const Request& rq, pb::Envelope& msg) {
  const pb::ChannelOp::Kind kind = msg.channel_op().kind();
  if (rq.fromPeer()) {
    if (!rq.data.empty() && kind != pb::ChannelOp::SEND && kind != pb::ChannelOp::SEND_PART) {
      rq.fail(Status(StatusCode::InvalidArgument, "only a send's bytes come after its request"));
      return;
    }
    if (kind == pb::ChannelOp::CANCEL) {
      if (const std::uint64_t t = msg.channel_op().transfer(); t != 0) {
        parts_.drop(rq.node, t, /*receive=*/msg.channel_op().parts());
      }
      if (msg.channel_op().op_key() != 0) gateway_->cancel(rq.node, msg.channel_op().op_key());
      rq.ok();
      return;
    }
    if (kind == pb::ChannelOp::HOLDER_GONE) {
      // A process of that node ended: the locks of this node it held break. Only its own node
      // speaks for it.
      const std::uint64_t gone = msg.channel_op().holder();
      if ((gone >> 32) != rq.node || static_cast<std::uint32_t>(gone) == 0) {
        rq.fail(Status(StatusCode::InvalidArgument, "HOLDER_GONE names a process of another node"));
        return;
      }
      gateway_->dropReceivesOf(gone);
      breakHolds([gone](std::uint64_t h) { return h == gone; }, msg.channel_op().clean_end());
      rq.ok();
      return;
    }
    if (msg.channel_op().has_staged()) {
      rq.fail(Status(StatusCode::InvalidArgument, "staged bytes do not cross nodes"));
      return;
    }
    // The requester's dragond names the receiving process (holder): one of its own node.
    const std::uint64_t holder = msg.channel_op().holder();
    if (kind == pb::ChannelOp::RECV && holder != 0 && (holder >> 32) != rq.node) {
      rq.fail(Status(StatusCode::InvalidArgument, "a RECV names a holder of another node"));
      return;
    }
    // A send's bytes are taken from where they arrived (no copy into the request).
    submitHere(rq.node, std::move(*msg.mutable_channel_op()), rq.later(), rq.data);
    return;
  }
  auto d = pb::fromRef(msg.channel_op().channel());
  if (!d.has_value()) {
    rq.fail(d.error());
    return;
  }
  if (kind == pb::ChannelOp::CANCEL || kind == pb::ChannelOp::HOLDER_GONE) {
    rq.fail(Status(StatusCode::InvalidArgument, "CANCEL and HOLDER_GONE are between dragonds"));
    return;
  }
  Connection* c = clientOf(rq);
  if (c == nullptr) return;
  if (msg.channel_op().ask_room() != 0 || msg.channel_op().overdue()) {
    rq.fail(Status(StatusCode::InvalidArgument, "ask_room and overdue are between dragonds"));
    return;
  }
  const bool mayWait = kind == pb::ChannelOp::SEND && msg.channel_op().timeout_ns() != 0;
  if (const std::uint64_t t = msg.channel_op().transfer();
      t != 0 && (kind == pb::ChannelOp::SEND_PART || kind == pb::ChannelOp::SEND)) {
    // A send in parts is keyed at its home by the node it comes from and its transfer id,
    // which must be unique on this node: the client's own count (its low half) made so by the
    // connection's id (pids, which clients put above it, repeat across pid namespaces). A
    // RECV_PART's id is the home's own.
    const std::uint64_t transfer = (c->id << 32) | (t & 0xffffffffu);
    msg.mutable_channel_op()->set_transfer(transfer);
    // Its parts wait at the home until the last one comes: they go when the client leaves
    // before (killed mid-send, say), not after a minute idle (PartStore::kIdleNs).
    if (kind == pb::ChannelOp::SEND_PART) {
      sendsInParts_[c->id][{d->node, transfer}] = msg.channel_op().total_size();
    } else {
      // The last part: the home takes the transfer over (and drops it if this SEND fails
      // there; one that fails here cancels it below).
      forgetTransfer(sendsInParts_, c->id, d->node, transfer);
    }
  }
  if (kind == pb::ChannelOp::RECV_PART) {
    // The rest of a receive is its receiver's alone (a home numbers its receives in order).
    auto mine = receivesInParts_.find(c->id);
    if (mine == receivesInParts_.end() ||
        mine->second.count({d->node, msg.channel_op().transfer()}) == 0) {
      rq.fail(Status(StatusCode::InvalidArgument,
                     "no transfer " + std::to_string(msg.channel_op().transfer()) +
                         " of this connection's (it ended, or was dropped)"));
      return;
    }
  }
  if (mayWait) {
    auto send = std::make_shared<BlockedSend>();
    send->cid = c->id;
    send->key = nextOpKey_++;
    send->op = std::move(*msg.mutable_channel_op());
    send->reply = rq.later();
    const std::int64_t t = send->op.timeout_ns();
    const std::int64_t now = monotonicNowNs();
    send->deadlineNs = t < 0 || t >= INT64_MAX - now ? INT64_MAX : now + t;
    routeSend(std::move(send));
    return;
  }
  std::span<const char> staged;
  if (msg.channel_op().has_staged()) {
    auto bytes = takeStaged(*msg.mutable_channel_op());
    if (!bytes.has_value()) {
      // The last part of a send in parts that goes nowhere: its other parts go too.
      if (kind == pb::ChannelOp::SEND && msg.channel_op().transfer() != 0) {
        cancelOp(d->node, 0, msg.channel_op().transfer());
      }
      rq.fail(bytes.error());
      return;
    }
    staged = *bytes;
  }
  if (kind == pb::ChannelOp::RECV) {
    if (c->peerEnded) {  // its holds are broken: one taken now would never be
      rq.fail(Status(StatusCode::PeerLost, "process " + std::to_string(c->peer.pid) +
                                               " has ended: nothing is received for it"));
      return;
    }
    // The receiver is this connection's process: it holds what it receives of a lock.
    msg.mutable_channel_op()->set_holder(
        Channel::holderWord(node_, static_cast<std::uint32_t>(c->peer.pid)));
    if (d->node != node_ && cluster_ != nullptr) remoteReceivers_[c->peer.pid].insert(d->node);
  }
  Reply reply = rq.later();
  if ((kind == pb::ChannelOp::RECV && msg.channel_op().parts()) ||
      kind == pb::ChannelOp::RECV_PART) {
    reply = trackReceiveInParts(c->id, d->node, msg.channel_op(), std::move(reply));
  }
  routeChannelOp(c->id, nextOpKey_++, std::move(*msg.mutable_channel_op()), std::move(reply),
                 staged);
}

Server::Reply Server::trackReceiveInParts(std::uint64_t cid, std::uint32_t node,
                                          const pb::ChannelOp& op, Reply reply) {
  // The rest of a message taken in parts waits at its home until fetched: it goes when the
  // client leaves before (killed mid-receive, say), not after a minute idle.
  const std::uint64_t transfer = op.transfer();
  const std::uint64_t offset = op.part_offset();
  return [this, cid, node, transfer, offset, reply = std::move(reply)](pb::Envelope answer) {
    if (!answer.has_channel_op_reply()) {
      // The home dropped it (or a RECV failed: nothing was taken).
      if (transfer != 0) forgetTransfer(receivesInParts_, cid, node, transfer);
    } else if (transfer == 0) {  // a RECV: the first part, and the transfer of the rest
      const auto& r = answer.channel_op_reply();
      if (r.transfer() != 0 && r.total_size() > r.data().size()) {
        if (conns_.count(cid) == 0) {
          cancelOp(node, 0, r.transfer(), /*receive=*/true);  // it left while it waited
        } else {
          receivesInParts_[cid][{node, r.transfer()}] = r.total_size();
        }
      }
    } else if (auto it = receivesInParts_.find(cid); it != receivesInParts_.end()) {
      // A RECV_PART: the last part ends the transfer at the home too.
      auto t = it->second.find({node, transfer});
      if (t != it->second.end() && offset + answer.channel_op_reply().data().size() >= t->second) {
        forgetTransfer(receivesInParts_, cid, node, transfer);
      }
    }
    reply(std::move(answer));
  };
}

void Server::forgetTransfer(std::map<std::uint64_t, TransfersInParts>& all, std::uint64_t cid,
                            std::uint32_t node, std::uint64_t transfer) {
  auto it = all.find(cid);
  if (it == all.end()) return;
  it->second.erase({node, transfer});
  if (it->second.empty()) all.erase(it);
}

void Server::routeSend(std::shared_ptr<BlockedSend> send) {
  if (conns_.count(send->cid) == 0) {  // its client has gone (while it waited, or asked)
    giveUpSend(*send);
    return;
  }
  const std::int64_t now = monotonicNowNs();
  const bool overdue = send->refusedSinceNs != 0 && now - send->refusedSinceNs >= kOverdueNs;
  if (send->asking) {
    // Told "later" before: first ask whether the home would take it now, without the bytes.
    const pb::ChannelOp& op = send->op;
    pb::ChannelOp ask;
    *ask.mutable_channel() = op.channel();
    ask.set_kind(pb::ChannelOp::SEND);
    const std::uint64_t bytes = op.transfer() != 0 ? op.total_size()
                                : op.has_staged()  ? op.staged_size()
                                                   : op.data().size();
    ask.set_ask_room(std::max<std::uint64_t>(bytes, 1));
    ask.set_transfer(op.transfer());
    ask.set_overdue(overdue);
    routeChannelOp(send->cid, send->key, std::move(ask), [this, send](pb::Envelope answer) {
      if (answer.has_channel_op_reply() && answer.channel_op_reply().room()) {
        send->asking = false;
        routeSend(send);
      } else if (answer.has_channel_op_reply()) {
        retrySendLater(send, answer.channel_op_reply().retry_after_ns());
      } else {
        giveUpSend(*send);
        send->reply(std::move(answer));  // its node was lost, say
      }
    });
    return;
  }
  pb::ChannelOp op = send->op;  // kept for another try: small bytes (a large message is staged)
  std::span<const char> staged;
  if (op.has_staged()) {
    // Taken again for each try: the client keeps its block until its answer, and the check
    // sees a pool or block it gave up meanwhile.
    auto bytes = takeStaged(op);
    if (!bytes.has_value()) {
      giveUpSend(*send);
      send->reply(errorEnvelope(bytes.error()));
      return;
    }
    staged = *bytes;
  }
  if (send->deadlineNs != INT64_MAX) {
    op.set_timeout_ns(std::max<std::int64_t>(send->deadlineNs - now, 1));
  }
  op.set_overdue(overdue);
  routeChannelOp(send->cid, send->key, std::move(op), [this, send](pb::Envelope answer) {
    const std::uint64_t after =
        answer.has_channel_op_reply() ? answer.channel_op_reply().retry_after_ns() : 0;
    if (after == 0) {
      send->reply(std::move(answer));
      return;
    }
    // Its home holds as many waiting sends as it may: this one waits here, and asks again.
    send->asking = true;
    if (send->refusedSinceNs == 0) send->refusedSinceNs = monotonicNowNs();
    retrySendLater(send, after);
  }, staged);
}

void Server::retrySendLater(std::shared_ptr<BlockedSend> send, std::uint64_t afterNs) {
  // After what the home said, then twice as long each time; a last time at the deadline.
  const auto hint =
      static_cast<std::int64_t>(std::min<std::uint64_t>(afterNs, kBlockedSendRetryMaxNs));
  send->waitNs =
      std::clamp<std::int64_t>(std::max(hint, 2 * send->waitNs), 1, kBlockedSendRetryMaxNs);
  std::int64_t wait = send->waitNs;
  if (send->deadlineNs != INT64_MAX) {
    const std::int64_t left = send->deadlineNs - monotonicNowNs();
    if (left <= 0) {
      giveUpSend(*send);
      send->reply(errorEnvelope(Status(StatusCode::Timeout,
                                       "the channel's node held as many waiting sends as it may "
                                       "(cluster.parked_send_bytes) until the deadline")));
      return;
    }
    wait = std::min(wait, left);
  }
  loop_.addTimerAfterNs(wait, [this, send] { routeSend(send); });
}

void Server::giveUpSend(const BlockedSend& send) {
  // A message in parts has its other parts kept at the home for the next try: they go now.
  auto d = pb::fromRef(send.op.channel());
  if (send.op.transfer() != 0 && d.has_value()) cancelOp(d->node, 0, send.op.transfer());
}

Result<std::span<const char>> Server::takeStaged(pb::ChannelOp& op) {
  if (op.kind() != pb::ChannelOp::SEND && op.kind() != pb::ChannelOp::SEND_PART) {
    return Status(StatusCode::InvalidArgument, "only a send's bytes are staged");
  }
  if (!op.data().empty()) {
    return Status(StatusCode::InvalidArgument, "a send has data or staged bytes, not both");
  }
  if (op.staged_size() > kMaxMessageAcrossNodes) {  // as a request's body is bounded
    return Status(StatusCode::InvalidArgument,
                  "staged bytes are at most " + std::to_string(kMaxMessageAcrossNodes) +
                      " per request, not " + std::to_string(op.staged_size()));
  }
  DRAGON_ASSIGN_OR_RETURN(ObjectDescriptor pool, pb::fromRef(op.staged().pool()));
  if (pool.kind != ObjectKind::Pool || pool.node != node_) {
    return Status(StatusCode::InvalidArgument, "staged bytes are in a pool of the sender's node, not in " +
                                                   pool.toString());
  }
  DRAGON_ASSIGN_OR_RETURN(std::shared_ptr<RmaRegions::Region> region, rma_->region(pool, false));
  DRAGON_ASSIGN_OR_RETURN(char* bytes, region->bytes(op.staged().allocation(),
                                                     op.staged().offset(), op.staged_size()));
  const std::span<const char> staged(bytes, op.staged_size());
  op.clear_staged();
  op.clear_staged_size();
  return staged;
}

void Server::submitHere(std::uint32_t from, pb::ChannelOp op, Reply reply,
                        std::span<const char> data) {
  // `data` comes only with a SEND or SEND_PART whose op has none (handleChannelOp,
  // takeStaged); parts_ and the gateway refuse it otherwise.
  const std::int64_t now = monotonicNowNs();
  std::uint64_t transfer = 0;  // a SEND of a message in parts: its transfer, as sent
  std::uint64_t lastOffset = 0;
  std::uint64_t total = 0;
  std::shared_ptr<PartBlock> block;  // a send in parts assembled in the channel's pool
  switch (op.kind()) {
    case pb::ChannelOp::SEND_PART: {
      if (op.part_offset() == 0) {  // the channel must exist and take a message this large
        auto d = pb::fromRef(op.channel());
        Result<Channel> ch = d.has_value() ? objects_->channel(*d) : Result<Channel>(d.error());
        if (!ch.has_value()) {
          reply(errorEnvelope(ch.error()));
          return;
        }
        if (op.total_size() > ch->maxMessageSize()) {
          reply(errorEnvelope(Status(StatusCode::MessageTooLarge,
                                     "message of " + std::to_string(op.total_size()) +
                                         " bytes; the channel takes " +
                                         std::to_string(ch->maxMessageSize()))));
          return;
        }
        // Assembled in a block of the channel's pool when one is free: no copy of the whole
        // message at its last part.
        block = gateway_->blockFor(*d, op.total_size());
      }
      Status st = parts_.keep(from, op, now, std::move(block),
                              std::string_view(data.data(), data.size()));
      armPartsSweep();
      if (!st.isOk()) {
        reply(errorEnvelope(st));
        return;
      }
      pb::Envelope e;
      e.mutable_channel_op_reply();
      reply(std::move(e));
      return;
    }
    case pb::ChannelOp::RECV_PART: {
      auto part = parts_.next(from, op, now);
      if (!part.has_value()) {
        reply(errorEnvelope(part.error()));
        return;
      }
      pb::Envelope e;
      e.mutable_channel_op_reply()->set_data(std::move(*part));
      reply(std::move(e));
      return;
    }
    case pb::ChannelOp::SEND: {
      if (op.ask_room() != 0) {  // a sender told "later" asks again, without its bytes
        if (op.transfer() != 0) parts_.touch(from, op.transfer(), now);
        pb::Envelope e;
        if (gateway_->wouldTake(op)) {
          e.mutable_channel_op_reply()->set_room(true);
        } else {
          e.mutable_channel_op_reply()->set_retry_after_ns(kBlockedSendRetryNs);
        }
        reply(std::move(e));
        return;
      }
      transfer = op.transfer();
      lastOffset = op.part_offset();
      total = op.total_size();
      if (transfer != 0) {
        Status st = parts_.assemble(from, op, block, std::string_view(data.data(), data.size()));
        data = {};  // the message is in `block` or op.data now
        if (!st.isOk()) {
          reply(errorEnvelope(st));
          return;
        }
      }
      break;
    }
    default:
      break;
  }
  // A RECV with parts of a message larger than one part: the gateway answers with the message
  // in its pool block, handed out here a part at a time.
  Gateway::Reply answer = [this, from, reply = std::move(reply)](
                              pb::Envelope e, std::shared_ptr<WholeMessage> whole) {
    if (whole && e.has_channel_op_reply()) {
      parts_.split(from, *e.mutable_channel_op_reply(), std::move(whole), monotonicNowNs());
      armPartsSweep();
    }
    reply(std::move(e));
  };
  // submit() leaves `answer` (and `op`) as they were when it returns false.
  if (gateway_->submit(from, std::move(op), std::move(answer), block, data)) return;
  // A SEND that would wait while the waiting sends hold all the gateway may: it waits on its
  // sender's node (the sender's dragond sends it again; a message in parts keeps its other
  // parts here for that).
  if (transfer != 0) {
    parts_.restore(from, transfer, total, lastOffset, std::move(*op.mutable_data()),
                   std::move(block), now);
    armPartsSweep();
  }
  pb::Envelope e;
  e.mutable_channel_op_reply()->set_retry_after_ns(kBlockedSendRetryNs);
  answer(std::move(e), nullptr);
}

void Server::armPartsSweep() {
  if (partsSweep_ != 0 || parts_.size() == 0) return;
  partsSweep_ = loop_.addTimerAfterNs(PartStore::kIdleNs / 6, [this] {
    partsSweep_ = 0;
    if (parts_.expire(monotonicNowNs())) armPartsSweep();
  });
}

void Server::routeChannelOp(std::uint64_t cid, std::uint64_t key, pb::ChannelOp op, Reply reply,
                            std::span<const char> staged) {
  auto d = pb::fromRef(op.channel());
  if (!d.has_value()) {
    reply(errorEnvelope(d.error()));
    return;
  }
  const std::uint32_t node = d->node;
  op.set_op_key(key);
  remoteOps_[cid].insert({node, key});
  auto done = [this, cid, node, key, reply = std::move(reply)](pb::Envelope answer) {
    auto it = remoteOps_.find(cid);
    if (it != remoteOps_.end()) {
      it->second.erase({node, key});
      if (it->second.empty()) remoteOps_.erase(it);
    }
    reply(std::move(answer));
  };
  if (node == node_ || cluster_ == nullptr) {
    // A channel of this node (or no cluster: the gateway answers NotFound for another node's).
    submitHere(node_, std::move(op), std::move(done), staged);
    return;
  }
  if (!cluster_->joined() || cluster_->nodes().count(node) == 0) {
    done(errorEnvelope(Status(StatusCode::NotFound, "channel " + d->toString() + " names node " +
                                                        std::to_string(node) +
                                                        ", which is not in this job")));
    return;
  }
  pb::Envelope fwd;
  *fwd.mutable_channel_op() = std::move(op);
  cluster_->forward(
      node, std::move(fwd), [done](Result<pb::Envelope> r) { done(fromPeer(std::move(r))); },
      staged);  // the staged bytes go from the client's block into the frame
}

// One WaitAny: a POLL per channel at its home; the first that is ready (or fails) answers it,
// and the others are cancelled there.
struct Server::WaitAnyState {
  std::uint64_t cid = 0;
  std::uint64_t rid = 0;
  Reply reply;
  std::vector<std::uint32_t> ready;
  std::vector<std::pair<std::uint32_t, std::uint64_t>> polls;  // (node, op key) per item
  std::size_t remaining = 0;
  bool done = false;
  std::optional<ObjectDescriptor> doorbell;
};

void Server::handleWaitAny(const Request& rq, pb::Envelope& msg) {
  const auto& w = msg.wait_any();
  if (w.item_size() == 0 || w.item_size() > static_cast<int>(Channel::kMaxWaitItems)) {
    rq.fail(Status(StatusCode::InvalidArgument, "WaitAny takes 1 to 64 channels"));
    return;
  }
  auto st = std::make_shared<WaitAnyState>();
  st->cid = rq.connection;
  st->rid = rq.id;
  st->reply = rq.later();
  st->ready.assign(static_cast<std::size_t>(w.item_size()), 0);
  if (w.has_doorbell()) {
    auto bell = pb::fromRef(w.doorbell());
    if (!bell.has_value() || bell->node != node_ || !objects_->channel(*bell).has_value()) {
      rq.fail(Status(StatusCode::InvalidArgument, "the doorbell is not a channel of this node"));
      return;
    }
    st->doorbell = *bell;
  }
  std::vector<pb::ChannelOp> ops;
  for (const auto& item : w.item()) {
    if (item.events() == 0 || item.events() > 3 || !pb::fromRef(item.channel()).has_value()) {
      rq.fail(Status(StatusCode::InvalidArgument, "a WaitAny item without a channel or events"));
      return;
    }
    pb::ChannelOp op;
    *op.mutable_channel() = item.channel();
    op.set_kind(pb::ChannelOp::POLL);
    op.set_events(item.events());
    op.set_timeout_ns(w.timeout_ns());
    ops.push_back(std::move(op));
  }
  waits_[{rq.connection, rq.id}] = st;
  st->remaining = ops.size();
  st->polls.resize(ops.size());
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const std::uint64_t key = nextOpKey_++;  // to cancel it while it waits
    st->polls[i] = {pb::fromRef(ops[i].channel())->node, key};
    routeChannelOp(rq.connection, key, std::move(ops[i]), [this, st, i](pb::Envelope answer) {
      if (st->done) return;
      st->polls[i].second = 0;  // answered
      if (answer.has_error()) {
        finishWaitAny(st, answer);
        return;
      }
      st->ready[i] = answer.channel_op_reply().ready();
      if (st->ready[i] != 0 || --st->remaining == 0) finishWaitAny(st, std::nullopt);
    });
    if (st->done) break;  // answered at once (an error, or ready)
  }
}

void Server::finishWaitAny(std::shared_ptr<WaitAnyState> st,
                           std::optional<pb::Envelope> error) {
  if (st->done) return;
  st->done = true;
  waits_.erase({st->cid, st->rid});
  // The polls still waiting at their homes are cancelled (each then answers "not ready").
  for (const auto& [node, key] : st->polls) {
    if (key != 0) cancelOp(node, key);
  }
  // The doorbell first: the client, waiting on its local channels too, then reads the answer.
  // Rung after the answer, the byte could arrive after the client has drained its doorbell
  // and be taken by its next wait as that wait's answer.
  if (st->doorbell.has_value()) ringDoorbell(*st->doorbell);
  if (error.has_value()) {
    st->reply(std::move(*error));
  } else {
    pb::Envelope e;
    for (auto r : st->ready) e.mutable_wait_any_reply()->add_ready(r);
    st->reply(std::move(e));
  }
}

void Server::ringDoorbell(const ObjectDescriptor& bell) {
  // A full doorbell has been rung already; one that went has nobody to wake.
  auto ch = objects_->channel(bell);
  const std::byte one{1};
  if (ch.has_value()) (void)ch->send(std::span(&one, 1), Timeout::none());
}

void Server::handleCancelWait(const Request& rq, pb::Envelope& msg) {
  auto it = waits_.find({rq.connection, msg.cancel_wait().wait_request_id()});
  if (it != waits_.end()) finishWaitAny(it->second, std::nullopt);  // else answered already
  rq.ok();
}

void Server::cancelRemoteOps(std::uint64_t connection) {
  for (auto it = waits_.begin(); it != waits_.end();) {
    if (it->first.first == connection) {
      it->second->done = true;  // nobody to answer; its polls are cancelled below
      it = waits_.erase(it);
    } else {
      ++it;
    }
  }
  for (const bool receive : {false, true}) {
    auto& all = receive ? receivesInParts_ : sendsInParts_;
    if (auto mine = all.find(connection); mine != all.end()) {
      for (const auto& [at, size] : mine->second) cancelOp(at.first, 0, at.second, receive);
      all.erase(mine);
    }
  }
  if (auto refs = remoteRefs_.find(connection); refs != remoteRefs_.end()) {
    for (const auto& d : refs->second) dropRemoteRef(d);
    remoteRefs_.erase(refs);
  }
  auto it = remoteOps_.find(connection);
  if (it == remoteOps_.end()) return;
  // Taken out first: a cancelled operation is answered at once, and its answer updates the map.
  const auto ops = std::move(it->second);
  remoteOps_.erase(it);
  for (const auto& [node, key] : ops) cancelOp(node, key);
}

void Server::cancelOp(std::uint32_t node, std::uint64_t key, std::uint64_t transfer,
                      bool receive) {
  if (node == node_) {
    if (transfer != 0) parts_.drop(node_, transfer, receive);
    if (key != 0) gateway_->cancel(node_, key);
  } else if (cluster_ != nullptr && cluster_->nodes().count(node) != 0) {
    pb::Envelope fwd;
    fwd.mutable_channel_op()->set_kind(pb::ChannelOp::CANCEL);
    fwd.mutable_channel_op()->set_op_key(key);
    fwd.mutable_channel_op()->set_transfer(transfer);
    fwd.mutable_channel_op()->set_parts(receive);
    cluster_->forward(node, std::move(fwd), [](Result<pb::Envelope>) {});
  }
}

void Server::dropRemoteRef(const ObjectDescriptor& d) {
  pb::Envelope drop;
  *drop.mutable_detach()->mutable_object() = pb::toRef(d);
  cluster_->forward(d.node, std::move(drop), [](Result<pb::Envelope>) {});
}

}  // namespace dragon::daemon

namespace dragon::daemon {

void Server::nameDropped(const std::string& name, const ObjectDescriptor& d) {
  if (global_ == nullptr || clusterEnded_) return;
  global_->releaseName(name, d);
}

void Server::registerClaimed(std::uint64_t owner, const pb::RegisterName& r,
                             const ObjectDescriptor& d, Reply reply) {
  const std::string name = r.name();
  const bool replace = r.replace() && owner != 0;
  global_->claimName(name, d, replace, [this, owner, name, d, replace, reply](Status claimed) {
    if (!claimed.isOk()) {
      reply(errorEnvelope(claimed));
      return;
    }
    if (owner != 0 && find(owner) == nullptr) {
      global_->releaseName(name, d);  // its owner left meanwhile: a scoped name would be stale at once
      return;
    }
    const bool had = registry_.lookupName(name).has_value();
    Status st = objects_->registerName(name, d, owner, replace);
    if (!st.isOk() && !had) global_->releaseName(name, d);
    reply(st.isOk() ? okEnvelope() : errorEnvelope(st));
  });
}

bool Server::clusterNames(const Request& rq, pb::Envelope& msg) {
  if (!cluster_->joined()) return false;
  const std::uint64_t cid = rq.connection;
  switch (msg.body_case()) {
    case pb::Envelope::kRegisterName: {
      const auto& r = msg.register_name();
      auto d = pb::fromRef(r.object());
      if (!d.has_value()) return false;  // the local path says why
      if (d->node != node_) {
        if (r.scoped()) {
          rq.fail(Status(StatusCode::InvalidArgument,
                         "a scoped name is registered on its object's node"));
          return true;
        }
        if (cluster_->nodes().count(d->node) == 0) return false;  // NotFound from the local path
        pb::Envelope fwd;
        *fwd.mutable_register_name() = r;
        cluster_->forward(d->node, std::move(fwd), [reply = rq.later()](Result<pb::Envelope> res) {
          reply(fromPeer(std::move(res)));
        });
        return true;
      }
      // Taken here by another object, and not a scoped name a scoped one may replace: the
      // local path says so (before anything is claimed).
      auto here = registry_.lookupName(r.name());
      if (here.has_value() && !(*here == *d) &&
          !(r.replace() && r.scoped() && objects_->isScopedName(r.name()))) {
        return false;
      }
      registerClaimed(r.scoped() ? cid : 0, r, *d, rq.later());
      return true;
    }
    case pb::Envelope::kLookupName: {
      if (registry_.lookupName(msg.lookup_name().name()).has_value()) return false;
      global_->lookupName(msg.lookup_name().name(), [reply = rq.later()](Result<ObjectDescriptor> d) {
        if (!d.has_value()) {
          reply(errorEnvelope(d.error()));
          return;
        }
        pb::Envelope e;
        *e.mutable_object()->mutable_object() = pb::toRef(*d);
        reply(std::move(e));
      });
      return true;
    }
    case pb::Envelope::kAttach: {
      if (!msg.attach().has_name() || registry_.lookupName(msg.attach().name()).has_value()) {
        return false;
      }
      global_->lookupName(msg.attach().name(), [this, rq](Result<ObjectDescriptor> d) {
        if (clientOf(rq) == nullptr) return;
        if (!d.has_value()) {
          rq.fail(d.error());
          return;
        }
        if (d->node == node_) {
          replyObject(rq, objects_->attach(rq.connection, *d));
          return;
        }
        pb::Attach byObject;
        *byObject.mutable_object() = pb::toRef(*d);
        clusterAttach(rq.connection, byObject, *d, rq.later());
      });
      return true;
    }
    default:
      return false;
  }
}

}  // namespace dragon::daemon
