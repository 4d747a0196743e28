// SPDX-License-Identifier: MIT
#include "daemon/rma.hpp"

#include <cerrno>
#include <fcntl.h>

namespace dragon::daemon {

RmaRegions::Region::~Region() {
  if (regionId != 0 && *cluster != nullptr) {
    // A peer's transfer the requester gave up on may still write here: the transport keeps the
    // mapping until it is over.
    (*cluster)->deregisterRegion(regionId, std::make_shared<Pool>(std::move(pool)));
  }
}

Result<char*> RmaRegions::Region::bytes(std::uint64_t allocation, std::uint64_t offset,
                                        std::uint64_t length) const {
  DRAGON_ASSIGN_OR_RETURN(PoolAllocation a, pool.allocationAt(allocation));
  if (offset > a.size || length > a.size - offset) {
    return Status(StatusCode::InvalidArgument,
                  "bytes " + std::to_string(offset) + ".." + std::to_string(offset + length) +
                      " are outside the allocation of " + std::to_string(a.size) + " bytes at " +
                      std::to_string(allocation) + " of pool " + pool.descriptor().toString());
  }
  return static_cast<char*>(pool.pointerAt(allocation)) + offset;
}

Result<std::shared_ptr<RmaRegions::Region>> RmaRegions::region(const ObjectDescriptor& pool,
                                                               bool registered) {
  auto it = regions_.find(pool.id);
  if (it == regions_.end()) {
    DRAGON_ASSIGN_OR_RETURN(ObjectGrant grant, objects_.find(pool));
    if (grant.object.kind != ObjectKind::Pool) {
      return Status(StatusCode::InvalidArgument, pool.toString() + " is not a pool");
    }
    UniqueFd fd(fcntl(grant.poolFd, F_DUPFD_CLOEXEC, 3));
    if (!fd) return Status::fromErrno("dup of a pool's memfd", errno);
    DRAGON_ASSIGN_OR_RETURN(Pool mapped, Pool::attach(std::move(fd), grant.pool, /*prefault=*/false));
    mapped.closeFd();  // mapped: the manager keeps the pool's fd
    it = regions_.emplace(pool.id, std::make_shared<Region>(std::move(mapped), cluster_)).first;
  }
  Region& r = *it->second;
  if (registered && r.regionId == 0) {
    if (*cluster_ == nullptr) {
      return Status(StatusCode::InvalidArgument, "this dragond is not part of a multi-node job");
    }
    DRAGON_ASSIGN_OR_RETURN(transport::RegisteredRegion reg,
                            (*cluster_)->registerRegion(r.pool.pointerAt(0), r.pool.segmentSize()));
    r.regionId = reg.id;
    r.key = std::move(reg.key);
  }
  return it->second;
}

}  // namespace dragon::daemon
