// SPDX-License-Identifier: MIT
// dragond's client side: accepts connections on the Unix socket, refuses other users
// (SO_PEERCRED), decodes requests and answers them from the managers. Replies and output lines
// are queued per connection and written as the socket takes them. A connection whose queue
// grows past the high-water mark is not read from (a client that sends requests but never
// reads the replies cannot grow dragond's memory) and pauses its job's output pipes, until it
// drains below the low-water mark.
//
// Owning thread: the daemon's event-loop thread.
#pragma once

#include "base/private.hpp"
#include "daemon/cluster.hpp"
#include "daemon/event_loop.hpp"
#include "daemon/gateway.hpp"
#include "daemon/parts.hpp"
#include "daemon/global_services.hpp"
#include "daemon/node_registry.hpp"
#include "daemon/object_manager.hpp"
#include "daemon/process_manager.hpp"
#include "daemon/rma.hpp"
#include "protocol/codec.hpp"

#include <dragon/unique_fd.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sys/socket.h>

namespace dragon::daemon {

class Server {
 public:
  static constexpr std::size_t kHighWater = std::size_t{16} << 20;
  static constexpr std::size_t kLowWater = std::size_t{4} << 20;
  static constexpr std::size_t kMaxRequestBody = (std::size_t{16} << 20) + (std::size_t{64} << 10);

  Server(EventLoop& loop, UniqueFd listener, NodeRegistry& global, std::uint32_t node);
  ~Server();

  // `parkedSendBytes`: config cluster.parked_send_bytes (Gateway::setParkedSendLimit).
  Status start(ObjectManager& objects, ProcessManager& processes,
               std::uint64_t parkedSendBytes = Gateway::kDefaultParkedSendLimit);
  // A dragond of a multi-node job: requests may name other nodes, and other nodes' requests
  // arrive through `cluster` (server_cluster.cpp). `socketPath` is given to processes started
  // here for other nodes (as DRAGON_SOCKET).
  void setCluster(Cluster& cluster, std::string socketPath, std::int64_t nodeLostGraceNs,
                  std::int64_t drainTimeoutNs);
  // Closes the listening socket (shutdown: no new clients).
  void stopAccepting();
  // Sends an output line to the job's launcher; true when its backlog is high.
  bool deliverOutput(std::uint64_t job, const protocol::Envelope& line);
  // Closes every connection (end of shutdown).
  void closeAll();
  // Before the cluster is destroyed.
  void forgetCluster();

  std::size_t connections() const noexcept { return conns_.size(); }
  std::string dump() const;
  // A name of this node went (its object or its owner did): the directory forgets it.
  void nameDropped(const std::string& name, const ObjectDescriptor& d);

 private:
  struct OutFrame {
    std::string bytes;
    std::size_t offset = 0;
    std::vector<UniqueFd> fds;  // sent with the first byte
  };
  struct Connection {
    std::uint64_t id = 0;
    UniqueFd fd;
    ucred peer{};
    // A request carries at most one channel message that crosses nodes (ChannelOp).
    protocol::FrameDecoder decoder{kMaxRequestBody};
    std::vector<UniqueFd> inFds;
    std::deque<OutFrame> out;
    std::size_t outBytes = 0;
    bool hello = false;
    bool closing = false;    // close once the queue is flushed
    bool dead = false;       // close at the next turn of the loop
    std::uint64_t job = 0;   // the job its requests act in
    bool newJob = false;     // its Hello asked for a job of its own
    bool jobRoot = false;    // it started the job: output goes here; closing ends the job
    std::uint32_t events = 0;  // what the loop watches for now
    bool drainScheduled = false;
    // Its process has ended (processEnded ran; requests it wrote before it died may still be
    // read): a receive is not made for it, whose holds were already broken.
    bool peerEnded = false;
    std::string name;
  };

  void onAccept();
  void onEvent(std::uint64_t id, std::uint32_t events);
  void readFrom(Connection& c);
  // Handles up to a turn's worth of the requests already decoded-ready in its buffer.
  void processBuffered(std::uint64_t id);
  // A client's frame: its Hello, then its requests, each through dispatch().
  void handle(Connection& c, protocol::Envelope& msg);
  void send(Connection& c, const protocol::Envelope& msg, std::vector<UniqueFd> fds = {});
  void sendError(Connection& c, std::uint64_t requestId, const Status& st);
  void flush(Connection& c);
  void scheduleClose(Connection& c);
  void closeConnection(std::uint64_t id);
  Connection* find(std::uint64_t id);
  std::uint64_t jobOf(Connection& c);

  // The reply path of one request, whoever sent it: a local connection or a peer dragond.
  using Reply = std::function<void(protocol::Envelope reply)>;
  // The same, with fds to pass along (only a client of this node takes fds).
  using Sink = std::function<void(protocol::Envelope reply, std::vector<UniqueFd> fds)>;

  // One request on its way through dispatch(), whoever sent it: a client of this node (over
  // its connection on the Unix socket) or another node's dragond (through the cluster). Both
  // take the same path: dispatch() checks that the origin may make the request and hands it
  // to the one handler of its kind, which answers through `sink`, once (now or later), and
  // looks at the origin only where the two differ (who holds the references it takes, what
  // fds came with it, a client's own process).
  struct Request {
    std::uint32_t node = 0;        // the node it came from (this one for a client)
    std::uint64_t connection = 0;  // the client's connection; 0 for another node's dragond
    std::uint64_t id = 0;          // the client's request id (0 from a peer)
    // Fds that came with it (a client's only); valid during dispatch() alone.
    std::vector<UniqueFd>* fds = nullptr;
    // A peer's send: its channel_op's data, where it arrived (protocol::kFlagData); valid
    // during dispatch() alone.
    std::span<const char> data;
    Sink sink;

    bool fromPeer() const noexcept { return connection == 0; }
    void reply(protocol::Envelope e) const { sink(std::move(e), {}); }
    void fail(const Status& st) const { reply(errorEnvelope(st)); }
    void ok() const { reply(okEnvelope()); }
    // The reply path, kept for an answer that comes later.
    Reply later() const {
      return [s = sink](protocol::Envelope e) { s(std::move(e), {}); };
    }
  };
  Request clientRequest(Connection& c, std::uint64_t requestId);
  Request peerRequest(std::uint32_t from, Reply reply);
  void dispatch(const Request& rq, protocol::Envelope& msg);
  // Who holds the references a request takes: the client's connection, or the node.
  static std::uint64_t ownerOf(const Request& rq) {
    return rq.fromPeer() ? peerOwner(rq.node) : rq.connection;
  }
  // The client's connection (null for a peer's request, or once the client has gone).
  Connection* clientOf(const Request& rq) { return rq.fromPeer() ? nullptr : find(rq.connection); }

  // Pools, channels, references and names (attach, detach, destroy, register, look up).
  void handleObject(const Request& rq, protocol::Envelope& msg);
  void replyObject(const Request& rq, Result<ObjectGrant> grant);
  // Processes: spawn, wait, signal, list, adopt, end the job.
  void handleProcess(const Request& rq, protocol::Envelope& msg);
  static protocol::Envelope errorEnvelope(const Status& st);
  static protocol::Envelope okEnvelope();
  // An answer from a peer dragond (or why none came), as this node's client should see it.
  static protocol::Envelope fromPeer(Result<protocol::Envelope> r);
  // The local halves of the process requests, whatever their origin.
  void localSpawn(const protocol::Spawn& spawn, std::uint64_t job, std::vector<UniqueFd>& fds,
                  const Reply& reply);
  void localWait(const protocol::Wait& wait, Reply reply);
  Status localSignal(const protocol::Signal& signal);
  protocol::Envelope localList();
  // Multi-node (server_cluster.cpp).
  // A launcher's part in the job (ClusterAddress, JoinCluster, WaitJobEnd, ListNodes).
  void handleJob(const Request& rq, protocol::Envelope& msg);
  // Whether another launcher's connection claimed this dragond for its step (then `rq` has
  // failed with AlreadyExists).
  bool claimedByAnother(const Request& rq, const Connection& c);
  // A client's process request that involves other nodes; false when it is this node's alone.
  bool clusterProcess(const Request& rq, protocol::Envelope& msg);
  // A request for the job-wide tables this node hosts (global services), from another node.
  void handleGlobal(const Request& rq, protocol::Envelope& msg);
  // Attach, detach and destroy of another node's object; false when it is this node's.
  bool clusterObject(const Request& rq, protocol::Envelope& msg);
  void clusterAttach(std::uint64_t connection, const protocol::Attach& attach,
                     const ObjectDescriptor& d, Reply reply);
  // A copy between pool allocations (server_memory.cpp): here, or by RMA with another node.
  void handleMemoryOp(const Request& rq, protocol::Envelope& msg);
  void clientMemoryOp(const protocol::MemoryOp& op, Reply reply);
  void peerMemoryOp(std::uint32_t requester, const protocol::MemoryOp& op, Reply reply);
  // A channel operation: through this node's gateway, or forwarded to the channel's home.
  void handleChannelOp(const Request& rq, protocol::Envelope& msg);
  // Runs `op` where its channel lives (the gateway here, or forwarded), for connection `cid`,
  // under `key` (from nextOpKey_), by which cancelOp() ends it while it waits.
  // `staged`: a send's bytes where the client staged them (takeStaged), in place of op.data.
  void routeChannelOp(std::uint64_t cid, std::uint64_t key, protocol::ChannelOp op, Reply reply,
                      std::span<const char> staged = {});
  // Runs `op` on a channel of this node for node `from`: the gateway's operations, and a
  // message larger than one between nodes carries, in parts (parts_). `data`: a send's bytes
  // (or its part's) where they are, in place of op.data, valid during the call.
  void submitHere(std::uint32_t from, protocol::ChannelOp op, Reply reply,
                  std::span<const char> data = {});
  // A client's send whose bytes are in a pool of this node (ChannelOp.staged): checks the
  // reference, clears it from the op, and gives the bytes where they are (valid until the loop
  // next runs; the client keeps its block until its answer).
  Result<std::span<const char>> takeStaged(protocol::ChannelOp& op);
  void armPartsSweep();
  // A client's SEND that may wait: routed (routeChannelOp), and routed again while its home
  // answers that it cannot hold it yet (retry_after_ns), until its deadline.
  struct BlockedSend;
  void routeSend(std::shared_ptr<BlockedSend> send);
  // Told "later" by its home (retry_after_ns): tries again after a while, or gives up at its
  // deadline.
  void retrySendLater(std::shared_ptr<BlockedSend> send, std::uint64_t afterNs);
  // It will not be sent: what its home keeps for it goes.
  void giveUpSend(const BlockedSend& send);
  // Cancels the waiting op `key` (0: none) at `node`, and drops what it keeps of `transfer` (0:
  // none), a send's parts or, with `receive`, the rest of a receive.
  void cancelOp(std::uint32_t node, std::uint64_t key, std::uint64_t transfer = 0,
                bool receive = false);
  // Gives back a reference this node's client held on another node's channel.
  void dropRemoteRef(const ObjectDescriptor& d);
  struct WaitAnyState;
  void handleWaitAny(const Request& rq, protocol::Envelope& msg);
  void handleCancelWait(const Request& rq, protocol::Envelope& msg);
  // Sends one byte to a client's doorbell channel (Client::waitAny), if it is there.
  void ringDoorbell(const ObjectDescriptor& bell);
  // By value: `st` may be the entry of waits_ that it erases.
  void finishWaitAny(std::shared_ptr<WaitAnyState> st,
                     std::optional<protocol::Envelope> error);
  protocol::Envelope peerAttach(std::uint32_t from, const protocol::Attach& attach);
  // Names across nodes: the job-wide directory lives on the global services node; every node
  // claims a name there before naming one of its objects, and releases it when the name goes.
  // A client's name request that involves the directory; false when this node answers alone.
  bool clusterNames(const Request& rq, protocol::Envelope& msg);
  // Registers a name for an object of this node, claimed job-wide first.
  void registerClaimed(std::uint64_t owner, const protocol::RegisterName& r,
                       const ObjectDescriptor& d, Reply reply);
  // Tells the home nodes of a closed connection's waiting channel operations to drop them.
  void cancelRemoteOps(std::uint64_t connection);
  // (the channel's node, transfer) -> the message's size (sendsInParts_, receivesInParts_).
  using TransfersInParts = std::map<std::pair<std::uint32_t, std::uint64_t>, std::uint64_t>;
  // The reply to a client's RECV with parts or RECV_PART, noting the receive in parts that
  // its home keeps the rest of until the client has fetched it (receivesInParts_).
  Reply trackReceiveInParts(std::uint64_t cid, std::uint32_t node,
                            const protocol::ChannelOp& op, Reply reply);
  static void forgetTransfer(std::map<std::uint64_t, TransfersInParts>& all, std::uint64_t cid,
                             std::uint32_t node, std::uint64_t transfer);
  // Who holds the references another node's clients took here: one owner per node.
  static std::uint64_t peerOwner(std::uint32_t node) {
    return (std::uint64_t{1} << 63) | node;
  }
  // Makes this node's global services (hosted here, or a proxy of the global services node's).
  void startGlobalServices();
  // `reply`, or one that waits until the global services have heard everything this node
  // told them before it (for an answer to a third node, which may ask them next).
  Reply afterGlobalSync(std::uint32_t requester, Reply reply);
  void clusterSpawn(const Request& rq, const protocol::Spawn& sp);
  // Starts a spawn on `target` (here or forwarded), once global services confirm a group of
  // another node it joins.
  void spawnPlaced(std::uint64_t cid, Reply reply, std::uint64_t job, protocol::Spawn sp,
                   std::uint32_t target, std::shared_ptr<std::vector<UniqueFd>> fds);
  // Forwards a spawn to the node it names (another node's).
  void spawnOn(Reply reply, protocol::Spawn sp);
  // Signals a process group on every node that has members (global services know which).
  void clusterSignalGroup(Reply reply, const protocol::Signal& sig);
  void clusterWait(Reply reply, const protocol::Wait& w);
  void clusterSignal(Reply reply, const protocol::Signal& s);
  void clusterList(Reply reply);
  void clusterEndJob(Reply reply, const protocol::EndJob& end);
  void onNodeLost(std::uint32_t node, const Status& why);
  // A process of this node ended: its exit goes into the job-wide table, and, when it was
  // killed or failed, the locks it held, here and on the nodes it received from, break
  // (Channel::breakHold).
  void processEnded(const ProcessRecord& r);
  // Breaks the locks of this node whose holder `gone` says is gone (ObjectManager::breakHolds),
  // without waiting on a channel's lock that a process holds: those are tried again every
  // kBreakRetryNs until they are free. The number broken now.
  std::size_t breakHolds(std::function<bool(std::uint64_t)> gone, bool cleanEnd);
  static constexpr std::int64_t kBreakRetryNs = 10'000'000;
  void finishClusterJob(Result<int> outcome);
  // This node's launcher went (killed, or it ended its part on a signal) before the job ended:
  // this node leaves the job, so that the others hear of it even when this dragond stays (the
  // Slurm prolog's).
  void clusterRootGone();
  void leaveClusterJob();
  protocol::Envelope jobEndEnvelope() const;
  // Answers the serving launcher's final WaitJobEnd once enough others were answered.
  void answerDrainWaiters(bool timedOut);
  static std::uint32_t nodeOfPuid(std::uint64_t puid) {
    return static_cast<std::uint32_t>(puid >> 40);
  }

  EventLoop& loop_;
  UniqueFd listener_;
  NodeRegistry& registry_;
  std::uint32_t node_;
  ObjectManager* objects_ = nullptr;
  std::unique_ptr<Gateway> gateway_;
  std::unique_ptr<RmaRegions> rma_;
  ProcessManager* processes_ = nullptr;
  std::map<std::uint64_t, std::unique_ptr<Connection>> conns_;
  std::map<std::uint64_t, std::uint64_t> jobRoots_;  // job -> connection id
  std::uint64_t nextConn_ = 1;
  uid_t uid_;

  // Multi-node state.
  Cluster* cluster_ = nullptr;
  std::string socketPath_;
  std::int64_t nodeLostGraceNs_ = 0;
  std::uint64_t clusterRoot_ = 0;  // the connection that joined (this node's launcher)
  std::uint64_t clusterClaim_ = 0;  // the connection that asked for the address first
  std::uint64_t clusterJob_ = 0;   // its job: processes other nodes place here
  bool clusterEnded_ = false;
  Result<int> clusterOutcome_ = 0;
  Status nodeLost_;                // the first lost node, reported at the end of the job
  std::vector<std::pair<std::uint64_t, Reply>> jobEndWaiters_;  // by connection
  std::set<std::uint32_t> endedPeers_;  // nodes that have ended their part of the job
  std::uint32_t jobEndAnswered_ = 0;    // WaitJobEnd answers sent to this node's other launchers
  std::vector<std::pair<std::uint32_t, Reply>> drainWaiters_;
  std::int64_t drainTimeoutNs_ = 0;
  // Channel operations forwarded to other nodes and not answered yet: connection -> (node, key).
  std::map<std::uint64_t, std::set<std::pair<std::uint32_t, std::uint64_t>>> remoteOps_;
  std::uint64_t nextOpKey_ = 1;
  // The nodes each process of this node has received from through this dragond (pid ->
  // nodes): they hear when it ends (HOLDER_GONE), for the locks of theirs it may hold.
  std::map<pid_t, std::set<std::uint32_t>> remoteReceivers_;
  PartStore parts_;  // unfinished transfers in parts of other nodes' messages
  EventLoop::TimerId partsSweep_ = 0;
  // The job's global services (set when this node joins): hosted_ is the same object when
  // this node hosts them, else null.
  std::unique_ptr<GlobalServices> global_;
  HostedGlobalServices* hosted_ = nullptr;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::shared_ptr<WaitAnyState>> waits_;
  // References this node's clients hold on other nodes' channels, given back when they leave.
  std::map<std::uint64_t, std::vector<ObjectDescriptor>> remoteRefs_;
  // Transfers in parts of this node's clients that their homes keep parts of: connection ->
  // ((the channel's node, transfer) -> the message's size). Sends are begun and not finished;
  // receives have a rest not fetched yet. A client that leaves in the middle of one has what
  // its home keeps dropped at once (ChannelOp CANCEL), and fetches only its own receives.
  std::map<std::uint64_t, TransfersInParts> sendsInParts_;
  std::map<std::uint64_t, TransfersInParts> receivesInParts_;
};

}  // namespace dragon::daemon
