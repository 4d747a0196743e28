// SPDX-License-Identifier: MIT
// The node's pools and channels: created as memfds here, handed to clients by fd, counted by
// the references each owner (a client connection) holds. An object whose last reference goes
// is destroyed unless it has a name; destroy() ends it at once.
//
// Owning thread: the daemon's event-loop thread.
#pragma once

#include "base/private.hpp"
#include "daemon/node_registry.hpp"

#include <dragon/channel.hpp>
#include <dragon/descriptor.hpp>
#include <dragon/pool.hpp>
#include <dragon/result.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace dragon::daemon {

struct ObjectLimits {
  std::uint64_t defaultPoolSize = std::uint64_t{256} << 20;
  bool prefault = true;
  std::uint32_t defaultCapacity = 64;
  std::uint32_t defaultInlineSize = 256;
};

// What a client needs to map an object: its descriptor, its pool's, and the pool's memfd.
struct ObjectGrant {
  ObjectDescriptor object;
  ObjectDescriptor pool;
  int poolFd = -1;  // owned by the manager; dup or send before the next call
};

class ObjectManager {
 public:
  ObjectManager(NodeRegistry& global, std::uint32_t node, ObjectLimits limits)
      : registry_(global), node_(node), limits_(limits) {}

  // With a name, the object is created and named at once: a taken name creates nothing.
  // lazy: no prefault whatever pool.prefault says (a large pool costs only what is touched).
  Result<ObjectGrant> createPool(std::uint64_t owner, std::uint64_t size,
                                 std::string_view name = {}, bool lazy = false);
  Result<ObjectGrant> createChannel(std::uint64_t owner, const ObjectDescriptor& pool,
                                    ChannelOptions options, std::string_view name = {});
  Result<ObjectGrant> attach(std::uint64_t owner, const ObjectDescriptor& object);
  Status detach(std::uint64_t owner, const ObjectDescriptor& object);
  Status destroy(const ObjectDescriptor& object);
  // A name keeps an object alive with no references. A scoped name does not: it is the owner's,
  // and goes with the object or when the owner's references do (releaseOwner); a channel whose
  // scoped name goes that way is also closed (nobody is left to answer what is sent to it).
  // A name that is taken already stays what it was.
  // replace (scoped only): a scoped name that is taken is moved to this object, and the
  // object it named loses it as if its owner had gone (a listening address that was bound
  // again: the process that binds it knows the old name is stale).
  Status registerName(std::string_view name, const ObjectDescriptor& object,
                      std::uint64_t scopedOwner = 0, bool replace = false);
  // True if `name` is a scoped name (one a scoped registration with replace may take over).
  bool isScopedName(std::string_view name) const { return scoped_.find(name) != scoped_.end(); }
  // Drops every reference `owner` holds (its connection closed).
  void releaseOwner(std::uint64_t owner);
  // The channel `object` of this node, without taking a reference: a handle on the manager's
  // own mapping (valid until the channel or its pool goes) and its grant (pool and memfd).
  Result<Channel> channel(const ObjectDescriptor& object);
  // A channel or a pool of this node (its grant: for a pool, itself and its memfd).
  Result<ObjectGrant> find(const ObjectDescriptor& object) const;
  // Breaks every channel of this node whose holder `gone` says has ended (Channel::breakHold):
  // a lock held by a process that ended or whose node was lost. Returns how many.
  std::size_t breakHolds(const std::function<bool(std::uint64_t holder)>& gone,
                         bool cleanEnd = false);
  // Called with a channel's id just before the channel is destroyed (or its pool is).
  void setChannelGoneHook(std::function<void(std::uint64_t channelId)> hook) {
    channelGone_ = std::move(hook);
  }

  // Called with a pool's id just before the pool is destroyed.
  void setPoolGoneHook(std::function<void(std::uint64_t poolId)> hook) { poolGone_ = std::move(hook); }

  std::string dump() const;

 private:
  struct PoolEntry {
    std::unique_ptr<Pool> pool;  // stays at one address: channels point into it
    std::map<std::uint64_t, std::uint32_t> refs;  // owner -> count
    std::size_t channels = 0;
  };
  struct ChannelEntry {
    ObjectDescriptor desc;
    std::map<std::uint64_t, std::uint32_t> refs;
  };

  // Ids are job-unique: the node in the top 24 bits, random below them, unique on the node.
  static constexpr unsigned kNodeShift = 40;
  Result<std::uint64_t> newId() const;
  // Names a just-created object, or destroys it again if the name is taken.
  Result<ObjectGrant> named(Result<ObjectGrant> created, std::string_view name);
  void maybeRelease(const ObjectDescriptor& object);
  void destroyChannel(std::map<std::uint64_t, ChannelEntry>::iterator it);
  void destroyPool(std::map<std::uint64_t, PoolEntry>::iterator it);

  NodeRegistry& registry_;
  std::uint32_t node_;
  ObjectLimits limits_;
  std::map<std::uint64_t, PoolEntry> pools_;        // by id
  std::map<std::uint64_t, ChannelEntry> channels_;  // by id
  std::map<std::uint64_t, bool> locks_;  // the channels that track their holder: id -> owns
  struct ScopedName {
    std::uint64_t owner;
    ObjectDescriptor object;
  };
  std::map<std::string, ScopedName, std::less<>> scoped_;
  std::function<void(std::uint64_t)> channelGone_;
  std::function<void(std::uint64_t)> poolGone_;
  // True if a name that is not scoped keeps the object alive.
  bool keptByName(std::uint64_t objectId) const;
  void dropNamesOf(std::uint64_t objectId);
  void closeChannel(const ObjectDescriptor& object);
};

}  // namespace dragon::daemon
