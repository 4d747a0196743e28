// SPDX-License-Identifier: MIT
#include <dragon/pool.hpp>

#include "base/futex.hpp"
#include "base/log.hpp"
#include "base/robust_mutex.hpp"
#include "pool/heap.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace dragon {

using detail::BlockHeader;
using detail::Heap;
using detail::PoolHeader;

namespace {

std::atomic<std::uint32_t> gPid{0};

void forgetPidInChild() { gPid.store(0, std::memory_order_relaxed); }

std::uint64_t randomId() {
  std::uint64_t id = 0;
  while (id == 0) {
    if (getrandom(&id, sizeof id, 0) != static_cast<ssize_t>(sizeof id)) {
      id = static_cast<std::uint64_t>(monotonicNowNs()) ^ (std::uint64_t{1} << 63);
    }
  }
  return id;
}

std::size_t roundUp(std::size_t v, std::size_t to) { return (v + to - 1) / to * to; }

// Takes the pool lock, repairing the heap if its last owner died holding it. The returned guard
// is empty (and the status not OK) when the pool is beyond repair. `mayGiveUp`: for a caller
// that has changed nothing yet (an allocation): on a thread with a LockPatience (dragond's
// loop, its gateway) it gives up with WouldBlock while another process holds the lock (stopped
// by a debugger, say), as a channel's locks do.
class PoolLock {
 public:
  explicit PoolLock(PoolHeader* h, void* base, bool mayGiveUp = false) : h_(h) {
    switch (mayGiveUp ? base::RobustMutex::lockOrGiveUp(&h->lock)
                      : base::RobustMutex::lock(&h->lock)) {
      case base::LockState::Locked:
        locked_ = true;
        return;
      case base::LockState::OwnerDied: {
        locked_ = true;
        Heap heap(base, h);
        status_ = heap.rebuild();
        if (!status_.isOk()) {
          // Unlocking without markConsistent() makes the mutex unrecoverable for everyone.
          DRAGON_LOG(Error, "pool", "pool %llu: %s", static_cast<unsigned long long>(h->id),
                     status_.toString().c_str());
          return;
        }
        h->recoveries++;
        base::RobustMutex::markConsistent(&h->lock);
        DRAGON_LOG(Info, "pool", "pool %llu: recovered the lock from a dead owner",
                   static_cast<unsigned long long>(h->id));
        return;
      }
      case base::LockState::Busy:  // lockOrGiveUp() only
        status_ = Status(StatusCode::WouldBlock, "the pool's lock is held by another process");
        return;
      case base::LockState::Unrecoverable:
        status_ = Status(StatusCode::Corrupt, "pool lock is unrecoverable: a repair was abandoned");
        return;
    }
  }
  PoolLock(const PoolLock&) = delete;
  PoolLock& operator=(const PoolLock&) = delete;
  ~PoolLock() {
    if (locked_) {
      base::RobustMutex::unlock(&h_->lock);
    }
  }
  bool ok() const { return locked_ && status_.isOk(); }
  const Status& status() const { return status_; }

 private:
  PoolHeader* h_;
  bool locked_ = false;
  Status status_;
};

}  // namespace

OwnerTag OwnerTag::self() noexcept {
  std::uint32_t pid = gPid.load(std::memory_order_relaxed);
  if (pid == 0) {
    static const int kRegistered = pthread_atfork(nullptr, nullptr, forgetPidInChild);
    (void)kRegistered;
    pid = static_cast<std::uint32_t>(getpid());
    gPid.store(pid, std::memory_order_relaxed);
  }
  return process(pid);
}

Pool::Pool(UniqueFd fd, MappedRegion map) noexcept : fd_(std::move(fd)), map_(std::move(map)) {
  id_ = header()->id;
  node_ = header()->node;
}

Result<Pool> Pool::create(const PoolOptions& options) {
  if (options.size < kMinSize || options.size > kMaxSize) {
    return Status(StatusCode::InvalidArgument,
                  "pool size " + std::to_string(options.size) + " is outside [" +
                      std::to_string(kMinSize) + ", " + std::to_string(kMaxSize) + "]");
  }
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t size = roundUp(options.size, page);

  UniqueFd fd(memfd_create("dragon-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.isValid()) {
    return Status::fromErrno("memfd_create", errno);
  }
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return Status::fromErrno("ftruncate of the pool segment", errno);
  }
  // Nobody may shrink the segment under a mapping (that would SIGBUS every user).
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return Status::fromErrno("sealing the pool segment", errno);
  }
  DRAGON_ASSIGN_OR_RETURN(MappedRegion map, MappedRegion::mapShared(fd.get(), size, options.prefault));

  auto* h = new (map.data()) PoolHeader();
  h->version = detail::kPoolVersion;
  h->headerBytes = sizeof(PoolHeader);
  h->segmentSize = size;
  h->id = options.id != 0 ? options.id : randomId();
  h->node = options.node;
  h->heapBegin = roundUp(sizeof(PoolHeader), detail::kGranule);
  h->heapEnd = size & ~(detail::kGranule - 1);
  h->recoveries = 0;
  h->freedWord.store(0, std::memory_order_relaxed);
  DRAGON_TRY(base::RobustMutex::init(&h->lock));
  Heap(map.data(), h).format();
  std::atomic_ref<std::uint64_t>(h->magic).store(detail::kPoolMagic, std::memory_order_release);
  return Pool(std::move(fd), std::move(map));
}

Result<Pool> Pool::attach(UniqueFd fd, const ObjectDescriptor& desc, bool prefault) {
  if (!fd.isValid()) {
    return Status(StatusCode::InvalidArgument, "attach needs a valid pool fd");
  }
  if (desc.kind != ObjectKind::Pool) {
    return Status(StatusCode::InvalidArgument, "descriptor does not name a pool");
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) {
    return Status::fromErrno("fstat of the pool fd", errno);
  }
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return Status(StatusCode::InvalidArgument, "fd is not a sealed Dragon pool segment");
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size < kMinSize || size > kMaxSize) {
    return Status(StatusCode::InvalidArgument, "fd has the size of no Dragon pool");
  }
  DRAGON_ASSIGN_OR_RETURN(MappedRegion map, MappedRegion::mapShared(fd.get(), size, prefault));
  auto* h = static_cast<PoolHeader*>(map.data());
  if (std::atomic_ref<std::uint64_t>(h->magic).load(std::memory_order_acquire) !=
          detail::kPoolMagic ||
      h->version != detail::kPoolVersion || h->segmentSize != size ||
      h->headerBytes != sizeof(PoolHeader) || h->heapEnd > size || h->heapBegin >= h->heapEnd) {
    return Status(StatusCode::InvalidArgument, "fd is not a Dragon pool of this version");
  }
  if (h->id != desc.id) {
    return Status(StatusCode::InvalidArgument,
                  "descriptor names pool " + std::to_string(desc.id) + " but the fd holds pool " +
                      std::to_string(h->id));
  }
  return Pool(std::move(fd), std::move(map));
}

ObjectDescriptor Pool::descriptor() const noexcept {
  ObjectDescriptor d;
  d.kind = ObjectKind::Pool;
  d.node = node_;
  d.id = id_;
  d.poolId = id_;
  return d;
}

Result<PoolAllocation> Pool::allocAs(std::size_t bytes, OwnerTag owner, Timeout timeout) {
  PoolHeader* h = header();
  Heap heap(map_.data(), h);
  if (heap.blockSizeFor(bytes) == 0 || heap.blockSizeFor(bytes) > h->heapEnd - h->heapBegin) {
    return Status(StatusCode::InvalidArgument,
                  "cannot allocate " + std::to_string(bytes) + " bytes from a pool of " +
                      std::to_string(h->heapEnd - h->heapBegin) + " heap bytes");
  }
  auto attempt = [&]() -> Result<PoolAllocation> {
    PoolLock lock(h, map_.data(), /*mayGiveUp=*/true);
    if (!lock.ok()) {
      return lock.status();
    }
    const std::uint64_t block = heap.allocate(bytes, owner.raw());
    if (block == detail::kNone) {
      return StatusCode::PoolExhausted;
    }
    return PoolAllocation{id_, block + detail::kHeaderBytes, bytes};
  };
  Result<PoolAllocation> r = attempt();
  if (r.has_value() || r.error().code() != StatusCode::PoolExhausted || timeout.isNone()) {
    return r;
  }
  const Deadline deadline(timeout);
  for (;;) {
    const std::uint32_t armed = base::WaitWord::arm(h->freedWord);
    r = attempt();
    if (r.has_value() || r.error().code() != StatusCode::PoolExhausted) {
      return r;
    }
    if (base::futexWait(&h->freedWord, armed, deadline) == base::WaitOutcome::TimedOut) {
      r = attempt();
      if (r.has_value() || r.error().code() != StatusCode::PoolExhausted) {
        return r;
      }
      return Status(StatusCode::Timeout, "no block of " + std::to_string(bytes) +
                                             " bytes became free before the deadline");
    }
  }
}

Status Pool::free(const PoolAllocation& a) {
  if (a.poolId != id_) {
    return Status(StatusCode::InvalidArgument, "allocation belongs to another pool");
  }
  PoolHeader* h = header();
  Heap heap(map_.data(), h);
  {
    PoolLock lock(h, map_.data());
    if (!lock.ok()) {
      return lock.status();
    }
    if (heap.usedBlockAtPayload(a.offset, map_.size()) == nullptr) {
      return Status(StatusCode::InvalidArgument,
                    "offset " + std::to_string(a.offset) +
                        " is not a live allocation of this pool (double free?)");
    }
    heap.release(a.offset - detail::kHeaderBytes);
  }
  base::publishFence();
  base::WaitWord::notify(h->freedWord);
  return Status::ok();
}

Result<PoolAllocation> Pool::allocationAt(std::uint64_t payloadOffset) const {
  Heap heap(map_.data(), header());
  const BlockHeader* b = heap.usedBlockAtPayload(payloadOffset, map_.size());
  // Its length read once, and checked again: another process may write the header meanwhile.
  const std::uint64_t requested = b != nullptr ? b->requested : 0;
  if (b == nullptr || requested > map_.size() - payloadOffset) {
    return Status(StatusCode::InvalidArgument,
                  "offset " + std::to_string(payloadOffset) + " is not a live allocation");
  }
  return PoolAllocation{id_, payloadOffset, requested};
}

Result<OwnerTag> Pool::ownerOf(const PoolAllocation& a) const {
  Heap heap(map_.data(), header());
  const BlockHeader* b = a.poolId == id_ ? heap.usedBlockAtPayload(a.offset, map_.size()) : nullptr;
  if (b == nullptr) {
    return Status(StatusCode::InvalidArgument, "not a live allocation of this pool");
  }
  return OwnerTag::fromRaw(b->owner.load(std::memory_order_acquire));
}

Status Pool::setOwner(const PoolAllocation& a, OwnerTag owner) noexcept {
  Heap heap(map_.data(), header());
  BlockHeader* b = a.poolId == id_ ? heap.usedBlockAtPayload(a.offset, map_.size()) : nullptr;
  if (b == nullptr) {
    return Status(StatusCode::InvalidArgument);
  }
  b->owner.store(owner.raw(), std::memory_order_release);
  return Status::ok();
}

Result<PoolStats> Pool::stats() const {
  PoolLock lock(header(), map_.data());
  if (!lock.ok()) {
    return lock.status();
  }
  return Heap(map_.data(), header()).stats();
}

Status Pool::validate() const {
  PoolLock lock(header(), map_.data());
  if (!lock.ok()) {
    return lock.status();
  }
  return Heap(map_.data(), header()).validate();
}

Result<std::size_t> Pool::reclaim(
    const std::function<bool(OwnerTag, const PoolAllocation&)>& keep) {
  PoolHeader* h = header();
  Heap heap(map_.data(), h);
  std::size_t freed = 0;
  {
    PoolLock lock(h, map_.data());
    if (!lock.ok()) {
      return lock.status();
    }
    std::vector<std::uint64_t> doomed;
    std::uint64_t size = 0;
    for (std::uint64_t off = h->heapBegin; off < h->heapEnd; off += size) {
      const BlockHeader* b = heap.at(off);
      // The pool is memory its clients can write: a size that would loop, or leave the heap,
      // ends the walk (dragond walks it when a process ends) with Corrupt.
      size = Heap::sizeOf(b);
      if (size < detail::kMinBlock || size % detail::kGranule != 0 || size > h->heapEnd - off) {
        return Status(StatusCode::Corrupt,
                      "pool heap chain is broken at offset " + std::to_string(off));
      }
      if (!Heap::isUsed(b)) {
        continue;
      }
      const PoolAllocation a{id_, off + detail::kHeaderBytes, b->requested};
      if (!keep(OwnerTag::fromRaw(b->owner.load(std::memory_order_acquire)), a)) {
        doomed.push_back(off);
      }
    }
    // Freeing merges blocks, so walk first and free afterwards; each doomed block is still a
    // block start because only merges of free blocks happen in between.
    for (std::uint64_t off : doomed) {
      heap.release(off);
      freed++;
    }
  }
  if (freed > 0) {
    base::publishFence();
    base::WaitWord::notify(h->freedWord);
  }
  return freed;
}

}  // namespace dragon
