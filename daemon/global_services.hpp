// SPDX-License-Identifier: MIT
// Global services: the job-wide tables of a multi-node job, owned by one instance on the global
// services node (the node of the lowest PMIx rank): the directory of names (name -> the
// descriptor of an object of any node) and the process table (every process of the job, on
// every node). HostedGlobalServices is that instance; every other node reaches it through
// RemoteGlobalServices, which sends each call over the transport.
//
// Every call is one atomic operation on the tables (a claim checks and takes a name in one
// step; there is no look-then-act across calls). A call completes through its callback: before
// it returns on the hosting node, when the answer arrives on the others, or with NodeLost when
// the hosting node is lost. The calls of one node reach the tables in the order it made them
// (the transport keeps order per pair of nodes), and `sync` completes once every call made
// before it has.
//
// The managers keep their own node's state (node_registry.hpp) and do not see this interface:
// the server tells it what changes there.
//
// Owning thread: the daemon's event-loop thread.
#pragma once

#include "base/private.hpp"
#include "daemon/node_registry.hpp"
#include "dragon.pb.h"

#include <dragon/descriptor.hpp>
#include <dragon/result.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace dragon::daemon {

class GlobalServices {
 public:
  using Done = std::function<void(Status)>;
  using Found = std::function<void(Result<ObjectDescriptor>)>;
  using Listed = std::function<void(Result<std::vector<ProcessRecord>>)>;
  using Placed = std::function<void(Result<std::uint32_t>)>;

  virtual ~GlobalServices() = default;

  // Names. A claim of a free name takes it; a claim of a name that `object` has already is Ok;
  // a name another object has is AlreadyExists, unless `replace` and that object lives on the
  // same node as `object` (a node rebinding one of its own scoped names).
  virtual void claimName(const std::string& name, const ObjectDescriptor& object, bool replace,
                         Done done) = 0;
  // Drops the name if it still names `object` (one-way: the name's owner has let it go).
  virtual void releaseName(const std::string& name, const ObjectDescriptor& object) = 0;
  virtual void lookupName(const std::string& name, Found done) = 0;

  // The process table, told by the node that runs the process (one-way).
  virtual void processStarted(const ProcessRecord& record) = 0;
  virtual void processEnded(const ProcessRecord& record) = 0;
  // Every process of the job, sorted by node, then puid.
  virtual void listProcesses(Listed done) = 0;
  // The processes of a process group (which may span nodes), sorted the same way; empty when
  // the group does not exist.
  virtual void listGroup(std::uint64_t group, Listed done) = 0;

  // Placement: the node the next round-robin process of the job goes to, whichever node asks.
  // A smooth weighted round-robin over the live nodes, weighted by the CPUs the job was granted
  // on each: every turn each node earns its weight, the richest is chosen and pays the total.
  // Equal weights give plain turns in node order; weights 2, 1, 1 give the first node 2 of
  // every 4. NotFound when no node is left.
  virtual void place(Placed done) = 0;

  // Completes once every call made before it has reached the tables.
  virtual void sync(Done done) = 0;
  // A node was lost: its names and its processes leave the tables.
  virtual void nodeLost(std::uint32_t node) = 0;

  virtual std::string dump() const = 0;
};

// The tables themselves, on the global services node.
class HostedGlobalServices final : public GlobalServices {
 public:
  // The job's nodes and the CPUs it was granted on each (placement's weights; 0 counts as 1).
  explicit HostedGlobalServices(std::map<std::uint32_t, std::uint32_t> cpusByNode = {});

  void claimName(const std::string& name, const ObjectDescriptor& object, bool replace,
                 Done done) override;
  void releaseName(const std::string& name, const ObjectDescriptor& object) override;
  void lookupName(const std::string& name, Found done) override;
  void processStarted(const ProcessRecord& record) override;
  void processEnded(const ProcessRecord& record) override;
  void listProcesses(Listed done) override;
  void listGroup(std::uint64_t group, Listed done) override;
  void place(Placed done) override;
  void sync(Done done) override { done(Status::ok()); }
  void nodeLost(std::uint32_t node) override;
  std::string dump() const override;

  // Answers a request another node's RemoteGlobalServices sent; false if `request` is not one
  // (then `reply` is untouched).
  bool serve(const protocol::Envelope& request, protocol::Envelope& reply);

 private:
  Status claim(const std::string& name, const ObjectDescriptor& object, bool replace);
  bool answer(const protocol::Envelope& request, protocol::Envelope& reply);
  std::vector<ProcessRecord> select(std::uint64_t group) const;  // 0: all

  std::map<std::string, ObjectDescriptor, std::less<>> names_;
  std::map<std::pair<std::uint32_t, std::uint64_t>, ProcessRecord> processes_;  // (node, puid)
  struct Weight {
    std::int64_t weight = 1;
    std::int64_t credit = 0;
  };
  std::map<std::uint32_t, Weight> placement_;  // the live nodes
};

// Every other node's view: each call is a request to the global services node.
class RemoteGlobalServices final : public GlobalServices {
 public:
  // Sends a request to the global services node; `done` runs once with its answer (an Error
  // answer stays an Envelope) or with why none came (NodeLost).
  using Forward = std::function<void(protocol::Envelope request,
                                     std::function<void(Result<protocol::Envelope>)> done)>;

  RemoteGlobalServices(std::uint32_t globalNode, Forward forward)
      : globalNode_(globalNode), forward_(std::move(forward)) {}

  void claimName(const std::string& name, const ObjectDescriptor& object, bool replace,
                 Done done) override;
  void releaseName(const std::string& name, const ObjectDescriptor& object) override;
  void lookupName(const std::string& name, Found done) override;
  void processStarted(const ProcessRecord& record) override;
  void processEnded(const ProcessRecord& record) override;
  void listProcesses(Listed done) override;
  void listGroup(std::uint64_t group, Listed done) override;
  void place(Placed done) override;
  void sync(Done done) override;
  // The hosting node keeps the tables; a lost node is its business (the pending calls of a
  // lost global services node fail through Forward).
  void nodeLost(std::uint32_t /*node*/) override {}
  std::string dump() const override;

 private:
  std::uint32_t globalNode_;
  Forward forward_;
  void list(std::uint64_t group, Listed done);
  // A one-way call.
  void send(protocol::Envelope request);
  // A call whose answer is Ok or an error.
  void askStatus(protocol::Envelope request, Done done);
  // A call whose answer carries `expected`, from which `extract` takes the result.
  template <typename T, typename Extract>
  void ask(protocol::Envelope request, std::function<void(Result<T>)> done,
           protocol::Envelope::BodyCase expected, const char* what, Extract extract);

  std::uint64_t sent_ = 0;
};

// A process record as the protocol carries it, and back.
protocol::ProcessEntry toEntry(const ProcessRecord& r);
ProcessRecord fromEntry(const protocol::ProcessEntry& e);

}  // namespace dragon::daemon
