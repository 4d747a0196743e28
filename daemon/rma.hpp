// SPDX-License-Identifier: MIT
// Remote memory (docs/cluster.md, "Remote memory"): the pools of this node as dragond maps them
// for one-sided transfers. Each pool gets a mapping of its own (a dup of the pool's memfd), so a
// pool destroyed while a transfer reads or writes it stays mapped until the transfer is done;
// in a multi-node job the mapping is registered with the transport, whose key lets a peer
// dragond reach it.
//
// Owning thread: the daemon's event-loop thread.
#pragma once

#include "daemon/cluster.hpp"
#include "daemon/object_manager.hpp"

#include <dragon/pool.hpp>
#include <dragon/result.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace dragon::daemon {

class RmaRegions {
 public:
  // A pool of this node, mapped (and registered, once a transfer to another node needs it).
  struct Region {
    Region(Pool p, std::shared_ptr<Cluster*> c) : pool(std::move(p)), cluster(std::move(c)) {}
    ~Region();
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;
    // The bytes [offset, offset + length) of the live allocation whose payload starts at
    // `allocation`; InvalidArgument when that is not a live allocation or the bytes leave it.
    Result<char*> bytes(std::uint64_t allocation, std::uint64_t offset, std::uint64_t length) const;

    Pool pool;
    std::shared_ptr<Cluster*> cluster;  // null once the cluster is gone
    std::uint64_t regionId = 0;         // registered when non-zero
    std::string key;
  };

  explicit RmaRegions(ObjectManager& objects) : objects_(objects) {}
  ~RmaRegions() { forgetCluster(); }

  void setCluster(Cluster& cluster) { *cluster_ = &cluster; }
  // Before the cluster is destroyed: registrations are then the transport's to drop.
  void forgetCluster() { *cluster_ = nullptr; }

  // The region of pool `pool` of this node; `registered` also registers it with the transport.
  // A transfer keeps the returned pointer until it is done.
  Result<std::shared_ptr<Region>> region(const ObjectDescriptor& pool, bool registered);
  // The pool went: its region is dropped once no transfer holds it.
  void poolGone(std::uint64_t poolId) { regions_.erase(poolId); }

 private:
  ObjectManager& objects_;
  std::shared_ptr<Cluster*> cluster_ = std::make_shared<Cluster*>(nullptr);
  std::map<std::uint64_t, std::shared_ptr<Region>> regions_;
};

}  // namespace dragon::daemon
