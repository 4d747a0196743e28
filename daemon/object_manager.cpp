// SPDX-License-Identifier: MIT
#include "daemon/object_manager.hpp"

#include "base/log.hpp"

#include <sys/random.h>

namespace dragon::daemon {
namespace {

bool dropRef(std::map<std::uint64_t, std::uint32_t>& refs, std::uint64_t owner) {
  auto it = refs.find(owner);
  if (it == refs.end()) {
    return false;
  }
  if (--it->second == 0) {
    refs.erase(it);
  }
  return true;
}

Status notHere(const ObjectDescriptor& d) {
  return Status(StatusCode::NotFound, "no such object on this node: " + d.toString());
}

}  // namespace

Result<std::uint64_t> ObjectManager::newId() const {
  // The node in the top bits (as in a puid): ids made by two nodes never meet. Random below
  // them, and checked against every object here, so none is given twice.
  for (int attempt = 0; attempt < 64; ++attempt) {
    std::uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != static_cast<ssize_t>(sizeof r)) {
      return Status::fromErrno("getrandom", errno);
    }
    const std::uint64_t id = (std::uint64_t{node_} << kNodeShift) | (r & ((std::uint64_t{1} << kNodeShift) - 1));
    if (id != 0 && pools_.count(id) == 0 && channels_.count(id) == 0) return id;
  }
  return Status(StatusCode::Internal, "no free object id after 64 tries");
}

Result<ObjectGrant> ObjectManager::named(Result<ObjectGrant> created, std::string_view name) {
  if (!created.has_value() || name.empty()) {
    return created;
  }
  Status st = registerName(name, created->object);
  if (!st.isOk()) {
    (void)destroy(created->object);
    return st;
  }
  return created;
}

Result<ObjectGrant> ObjectManager::createPool(std::uint64_t owner, std::uint64_t size,
                                              std::string_view name, bool lazy) {
  PoolOptions o;
  o.size = size == 0 ? limits_.defaultPoolSize : size;
  o.node = node_;
  o.prefault = limits_.prefault && !lazy;
  DRAGON_ASSIGN_OR_RETURN(o.id, newId());
  if (o.size < Pool::kMinSize || o.size > Pool::kMaxSize) {
    return Status(StatusCode::InvalidArgument,
                  "a pool has " + std::to_string(Pool::kMinSize) + " to " +
                      std::to_string(Pool::kMaxSize) + " bytes, not " + std::to_string(o.size));
  }
  DRAGON_ASSIGN_OR_RETURN(Pool pool, Pool::create(o));
  const ObjectDescriptor d = pool.descriptor();
  auto& e = pools_[d.id];
  e.pool = std::make_unique<Pool>(std::move(pool));
  e.refs[owner] = 1;
  DRAGON_LOG(Debug, "objects", "pool %llu created (%zu bytes) for owner %llu",
             static_cast<unsigned long long>(d.id), e.pool->segmentSize(),
             static_cast<unsigned long long>(owner));
  return named(ObjectGrant{d, d, e.pool->fd()}, name);
}

Result<ObjectGrant> ObjectManager::createChannel(std::uint64_t owner, const ObjectDescriptor& pool,
                                                 ChannelOptions options, std::string_view name) {
  if (pool.kind != ObjectKind::Pool) {
    return Status(StatusCode::InvalidArgument, "a channel is created in a pool");
  }
  auto p = pools_.find(pool.id);
  if (p == pools_.end() || pool.node != node_) {
    return notHere(pool);
  }
  if (options.capacity == 0) options.capacity = limits_.defaultCapacity;
  if (options.inlineSize == 0) options.inlineSize = limits_.defaultInlineSize;
  DRAGON_ASSIGN_OR_RETURN(options.id, newId());
  DRAGON_ASSIGN_OR_RETURN(Channel ch, Channel::create(*p->second.pool, options));
  const ObjectDescriptor d = ch.descriptor();
  auto& e = channels_[d.id];
  e.desc = d;
  e.refs[owner] = 1;
  if (options.trackHolder) locks_[d.id] = options.holderOwns;
  p->second.channels++;
  return named(ObjectGrant{d, p->second.pool->descriptor(), p->second.pool->fd()}, name);
}

std::size_t ObjectManager::breakHolds(const std::function<bool(std::uint64_t)>& gone,
                                      bool cleanEnd) {
  std::size_t broken = 0;
  for (const auto& [id, owns] : locks_) {
    if (cleanEnd && !owns) continue;  // a clean end breaks only an owned one
    auto it = channels_.find(id);
    if (it == channels_.end()) continue;
    auto ch = channel(it->second.desc);
    if (ch.has_value() && ch->breakHold(gone, cleanEnd)) ++broken;
  }
  return broken;
}

Result<ObjectGrant> ObjectManager::attach(std::uint64_t owner, const ObjectDescriptor& object) {
  if (object.node != node_) {
    return notHere(object);
  }
  if (object.kind == ObjectKind::Pool) {
    auto p = pools_.find(object.id);
    if (p == pools_.end()) {
      return notHere(object);
    }
    p->second.refs[owner]++;
    return ObjectGrant{object, object, p->second.pool->fd()};
  }
  DRAGON_ASSIGN_OR_RETURN(ObjectGrant grant, find(object));
  channels_.find(object.id)->second.refs[owner]++;
  return grant;
}

Status ObjectManager::detach(std::uint64_t owner, const ObjectDescriptor& object) {
  bool had = false;
  if (object.kind == ObjectKind::Pool) {
    auto p = pools_.find(object.id);
    had = p != pools_.end() && dropRef(p->second.refs, owner);
  } else {
    auto c = channels_.find(object.id);
    had = c != channels_.end() && dropRef(c->second.refs, owner);
  }
  if (!had) {
    return Status(StatusCode::NotFound, "this client holds no reference to " + object.toString());
  }
  maybeRelease(object);
  return Status::ok();
}

Status ObjectManager::registerName(std::string_view name, const ObjectDescriptor& object,
                                   std::uint64_t scopedOwner, bool replace) {
  const bool exists = object.kind == ObjectKind::Pool ? pools_.count(object.id) != 0
                                                      : channels_.count(object.id) != 0;
  if (!exists || object.node != node_) {
    return notHere(object);
  }
  auto taken = scoped_.find(name);
  if (replace && scopedOwner != 0 && taken != scoped_.end() && !(taken->second.object == object)) {
    const ObjectDescriptor old = taken->second.object;
    scoped_.erase(taken);
    (void)registry_.dropName(name, old);
    closeChannel(old);
    maybeRelease(old);
  }
  const bool wasNamed = registry_.lookupName(name).has_value();
  DRAGON_TRY(registry_.registerName(name, object));
  if (scopedOwner != 0 && !wasNamed) {
    scoped_.emplace(std::string(name), ScopedName{scopedOwner, object});
  }
  return Status::ok();
}

void ObjectManager::closeChannel(const ObjectDescriptor& object) {
  if (object.kind != ObjectKind::Channel) return;
  auto c = channels_.find(object.id);
  auto p = pools_.find(object.poolId);
  if (c == channels_.end() || p == pools_.end()) return;
  auto ch = Channel::attach(*p->second.pool, object);
  if (ch.has_value()) (void)ch->close();
}

bool ObjectManager::keptByName(std::uint64_t objectId) const {
  for (const auto& name : registry_.namesOf(objectId)) {
    if (scoped_.count(name) == 0) return true;
  }
  return false;
}

void ObjectManager::dropNamesOf(std::uint64_t objectId) {
  for (const auto& name : registry_.namesOf(objectId)) {
    auto it = scoped_.find(name);
    if (it != scoped_.end()) scoped_.erase(it);
  }
  registry_.dropNamesOf(objectId);
}

void ObjectManager::maybeRelease(const ObjectDescriptor& object) {
  if (keptByName(object.id)) {
    return;
  }
  if (object.kind == ObjectKind::Channel) {
    auto c = channels_.find(object.id);
    if (c != channels_.end() && c->second.refs.empty()) {
      const std::uint64_t poolId = c->second.desc.poolId;
      destroyChannel(c);
      auto p = pools_.find(poolId);
      if (p != pools_.end()) {
        maybeRelease(p->second.pool->descriptor());
      }
    }
    return;
  }
  auto p = pools_.find(object.id);
  if (p != pools_.end() && p->second.refs.empty() && p->second.channels == 0) {
    destroyPool(p);
  }
}

Result<ObjectGrant> ObjectManager::find(const ObjectDescriptor& object) const {
  if (object.node == node_ && object.kind == ObjectKind::Pool) {
    auto p = pools_.find(object.id);
    if (p == pools_.end() || !(p->second.pool->descriptor() == object)) return notHere(object);
    return ObjectGrant{object, object, p->second.pool->fd()};
  }
  if (object.node != node_ || object.kind != ObjectKind::Channel) {
    return notHere(object);
  }
  auto c = channels_.find(object.id);
  if (c == channels_.end() || !(c->second.desc == object)) {
    return notHere(object);
  }
  auto p = pools_.find(object.poolId);
  if (p == pools_.end()) {
    return Status(StatusCode::Internal, "channel outlived its pool");
  }
  return ObjectGrant{object, p->second.pool->descriptor(), p->second.pool->fd()};
}

Result<Channel> ObjectManager::channel(const ObjectDescriptor& object) {
  DRAGON_TRY(find(object).status());
  return Channel::attach(*pools_.find(object.poolId)->second.pool, object);
}

void ObjectManager::destroyChannel(std::map<std::uint64_t, ChannelEntry>::iterator it) {
  if (channelGone_) channelGone_(it->first);
  locks_.erase(it->first);
  auto p = pools_.find(it->second.desc.poolId);
  if (p != pools_.end()) {
    auto ch = Channel::attach(*p->second.pool, it->second.desc);
    if (ch.has_value()) {
      Status st = ch->destroy();
      if (!st.isOk()) {
        DRAGON_LOG(Warn, "objects", "destroying channel %llu: %s",
                   static_cast<unsigned long long>(it->first), st.toString().c_str());
      }
    }
    p->second.channels--;
  }
  dropNamesOf(it->first);
  channels_.erase(it);
}

void ObjectManager::destroyPool(std::map<std::uint64_t, PoolEntry>::iterator it) {
  for (auto c = channels_.begin(); c != channels_.end();) {
    if (c->second.desc.poolId == it->first) {
      if (channelGone_) channelGone_(c->first);
      dropNamesOf(c->first);
      locks_.erase(c->first);
      c = channels_.erase(c);
    } else {
      ++c;
    }
  }
  dropNamesOf(it->first);
  if (poolGone_) poolGone_(it->first);
  DRAGON_LOG(Debug, "objects", "pool %llu released", static_cast<unsigned long long>(it->first));
  pools_.erase(it);  // unmaps and closes the memfd; clients' mappings stay valid until unmapped
}

Status ObjectManager::destroy(const ObjectDescriptor& object) {
  if (object.kind == ObjectKind::Pool) {
    auto p = pools_.find(object.id);
    if (p == pools_.end()) {
      return notHere(object);
    }
    destroyPool(p);
    return Status::ok();
  }
  auto c = channels_.find(object.id);
  if (c == channels_.end()) {
    return notHere(object);
  }
  const std::uint64_t poolId = c->second.desc.poolId;
  destroyChannel(c);
  auto p = pools_.find(poolId);
  if (p != pools_.end()) {
    maybeRelease(p->second.pool->descriptor());
  }
  return Status::ok();
}

void ObjectManager::releaseOwner(std::uint64_t owner) {
  std::vector<ObjectDescriptor> touched;
  for (auto it = scoped_.begin(); it != scoped_.end();) {
    if (it->second.owner != owner) {
      ++it;
      continue;
    }
    (void)registry_.dropName(it->first, it->second.object);
    touched.push_back(it->second.object);
    closeChannel(it->second.object);
    it = scoped_.erase(it);
  }
  for (auto& [id, c] : channels_) {
    if (c.refs.erase(owner) != 0) touched.push_back(c.desc);
  }
  for (auto& [id, p] : pools_) {
    if (p.refs.erase(owner) != 0) touched.push_back(p.pool->descriptor());
  }
  for (const auto& d : touched) {
    maybeRelease(d);
  }
}

std::string ObjectManager::dump() const {
  std::string out = "objects: " + std::to_string(pools_.size()) + " pools, " +
                    std::to_string(channels_.size()) + " channels";
  for (const auto& [id, p] : pools_) {
    auto st = p.pool->stats();
    out += "\n  pool " + std::to_string(id) + ": " + std::to_string(p.pool->segmentSize()) +
           " bytes, " + std::to_string(p.refs.size()) + " owners, " +
           std::to_string(p.channels) + " channels";
    if (st.has_value()) {
      out += ", " + std::to_string(st->usedBytes) + " used in " +
             std::to_string(st->allocationCount) + " allocations";
    }
  }
  for (const auto& [id, c] : channels_) {
    out += "\n  channel " + std::to_string(id) + " in pool " + std::to_string(c.desc.poolId) +
           ": " + std::to_string(c.refs.size()) + " owners";
  }
  return out;
}

}  // namespace dragon::daemon
