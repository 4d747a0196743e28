// SPDX-License-Identifier: MIT
// dragond's side of a multi-node job: the transport to the other dragonds (a loadable module,
// daemon/transport.hpp), the node table the launcher hands over after the PMIx exchange, the
// requests this dragond forwards to others (each with its completion), heartbeats, and lost
// nodes.
//
// Every message between dragonds is a control frame (protocol/codec.hpp) holding an Envelope:
// a request (answered by the receiver's dispatcher, exactly as if a local client had sent it)
// or, with peer_reply set, the answer to a request this dragond forwarded.
//
// A node is lost when its transport endpoint fails (its dragond died, its connection broke) or
// when it has not been heard from for cluster.node_timeout (a partition, a hung node). Every
// request forwarded to it then completes with NodeLost, and the owner's lost handler runs once.
//
// Owning thread: the daemon's event-loop thread.
#pragma once

#include "base/private.hpp"
#include "config/config.hpp"
#include "daemon/event_loop.hpp"
#include "daemon/transport.hpp"
#include "protocol/codec.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>
#include <span>
#include <string>

namespace dragon::daemon {

class Cluster {
 public:
  struct Node {
    std::uint32_t id = 0;
    std::string hostname;
    std::uint32_t cpus = 0;
    std::uint32_t rank = 0;
    std::string address;
    bool lost = false;
    std::int64_t lastHeardNs = 0;
  };
  using Reply = std::function<void(protocol::Envelope reply)>;
  // `data`: the data of the request's channel_op when it came after the envelope, in place
  // (protocol::kFlagData); valid during the call alone.
  using RequestHandler = std::function<void(std::uint32_t from, protocol::Envelope& request,
                                            std::span<const char> data, Reply reply)>;
  using LostHandler = std::function<void(std::uint32_t node, const Status& why)>;
  using Done = std::function<void(Result<protocol::Envelope> reply)>;

  // Loads the configured transport and opens it for node `self`.
  static Result<std::unique_ptr<Cluster>> create(EventLoop& loop, std::uint32_t self,
                                                 const config::Config& config);
  // With a transport made by the caller (the fake, in unit tests).
  static Result<std::unique_ptr<Cluster>> create(EventLoop& loop, std::uint32_t self,
                                                 const config::Config& config,
                                                 std::unique_ptr<transport::Transport> t);
  // What the transport needs to know of the messages it carries.
  static std::uint64_t maxMessageBytes();
  ~Cluster();

  std::uint32_t self() const noexcept { return self_; }
  std::string_view transportName() const;
  std::string address() const;

  void setRequestHandler(RequestHandler handler) { onRequest_ = std::move(handler); }
  void setLostHandler(LostHandler handler) { onLost_ = std::move(handler); }

  // The node table from the launcher: connects to every other node.
  Status join(const protocol::JoinCluster& join);
  bool joined() const noexcept { return joined_; }
  // Calls `done` once this node has heard from every other node since it joined (each node
  // greets the head node when it joins, and answers the head node's greeting), or with Timeout
  // after cluster.connect_timeout naming the nodes missing. The head node starts the job only
  // then: a message to a node that has not joined yet would be dropped (it has no secret).
  void whenAllJoined(std::function<void(Status)> done);
  std::uint32_t headNode() const noexcept { return head_; }
  std::uint32_t globalNode() const noexcept { return global_; }
  const std::map<std::uint32_t, Node>& nodes() const noexcept { return nodes_; }
  bool known(std::uint32_t node) const { return nodes_.count(node) != 0; }
  bool lost(std::uint32_t node) const;
  // "node 2 (n3)".
  std::string describe(std::uint32_t node) const;

  // Sends `request` to `node`; `done` runs once with its reply (an Error reply stays an
  // Envelope) or with NodeLost / NotFound when it cannot be answered. `data`, when given, is
  // the data of the request's channel_op, read before forward returns (protocol::encode): it
  // travels after the envelope, and the receiver's handler finds it in place.
  void forward(std::uint32_t node, protocol::Envelope request, Done done,
               std::span<const char> data = {});

  // One-sided transfers through the transport (daemon/transport.hpp); `done` runs on the loop.
  Result<transport::RegisteredRegion> registerRegion(void* base, std::size_t length);
  void deregisterRegion(std::uint64_t id, std::shared_ptr<void> mapping);
  Status rma(std::uint32_t node, transport::RmaKind kind, void* local, std::size_t length,
             std::uint64_t remote, std::string_view key, std::function<void(Status)> done);

  // Sends what is queued (bounded) and closes the transport.
  void shutdown();
  std::string dump() const;

 private:
  Cluster(EventLoop& loop, std::uint32_t self, std::unique_ptr<transport::Transport> t,
          const config::Config& config);
  void onMessage(std::uint32_t from, std::string_view bytes);
  void onPeerLost(std::uint32_t node, const Status& why);
  void pump();
  void scheduleProgress();
  void heartbeat();
  Status sendEnvelope(std::uint32_t node, const protocol::Envelope& msg,
                      std::span<const char> data = {});

  EventLoop& loop_;
  std::uint32_t self_;
  std::unique_ptr<transport::Transport> transport_;
  std::int64_t connectTimeoutNs_;
  std::int64_t joinedNs_ = 0;  // when join() took the node table
  std::int64_t heartbeatNs_;
  std::int64_t nodeTimeoutNs_;
  RequestHandler onRequest_;
  LostHandler onLost_;
  std::map<std::uint32_t, Node> nodes_;
  bool joined_ = false;
  std::uint32_t head_ = 0;
  std::uint32_t global_ = 0;
  struct Pending {
    std::uint32_t node;
    Done done;
  };
  std::map<std::uint64_t, Pending> pending_;
  std::uint64_t nextId_ = 1;
  bool progressScheduled_ = false;
  bool closed_ = false;
  std::uint64_t dropped_ = 0;
  std::set<std::uint32_t> heard_;  // nodes heard from since the join
  bool greetedHead_ = false;
  std::vector<std::function<void(Status)>> joinWaiters_;
  void checkAllJoined();
};

}  // namespace dragon::daemon
