// SPDX-License-Identifier: MIT
// Pool: a shared-memory segment (a sealed memfd) with an allocator whose metadata lives inside
// the segment as offsets, usable from every process that maps it. Allocation and free take a
// process-shared robust lock; a process killed at any instruction leaves the pool consistent
// for the others (its own allocations are left owned by it until reclaim()).
#pragma once

#include <dragon/descriptor.hpp>
#include <dragon/mapped_region.hpp>
#include <dragon/result.hpp>
#include <dragon/timeout.hpp>
#include <dragon/unique_fd.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace dragon {

namespace detail {
struct PoolHeader;
}

// Who owns an allocation: a process, a channel (the message is queued in it), or a runtime
// object (never reclaimed on its own). The top byte is the kind.
class OwnerTag {
 public:
  enum class Kind : std::uint8_t { None = 0, Process = 1, Channel = 2, Object = 3 };

  constexpr OwnerTag() = default;
  static constexpr OwnerTag fromRaw(std::uint64_t raw) { return OwnerTag(raw); }
  static constexpr OwnerTag process(std::uint32_t pid) { return make(Kind::Process, pid); }
  static constexpr OwnerTag channel(std::uint64_t channelOffset) {
    return make(Kind::Channel, channelOffset);
  }
  static constexpr OwnerTag object() { return make(Kind::Object, 0); }
  // The tag of the calling process (its pid, cached; refreshed in a forked child).
  static OwnerTag self() noexcept;

  constexpr Kind kind() const { return static_cast<Kind>(raw_ >> 56); }
  constexpr std::uint64_t value() const { return raw_ & ((std::uint64_t{1} << 56) - 1); }
  constexpr std::uint64_t raw() const { return raw_; }
  constexpr bool operator==(const OwnerTag&) const = default;

 private:
  constexpr explicit OwnerTag(std::uint64_t raw) : raw_(raw) {}
  static constexpr OwnerTag make(Kind k, std::uint64_t v) {
    return OwnerTag((std::uint64_t{static_cast<std::uint8_t>(k)} << 56) |
                    (v & ((std::uint64_t{1} << 56) - 1)));
  }
  std::uint64_t raw_ = 0;
};

// A handle to memory in a pool: a plain value, valid in every process attached to the pool.
struct PoolAllocation {
  std::uint64_t poolId = 0;
  std::uint64_t offset = 0;  // of the payload, from the start of the segment
  std::uint64_t size = 0;    // bytes the caller may use
  bool operator==(const PoolAllocation&) const = default;
};

struct PoolOptions {
  std::size_t size = std::size_t{64} << 20;  // segment size in bytes (rounded up to pages)
  std::uint64_t id = 0;                      // job-unique id; 0 picks a random one
  std::uint32_t node = 0;                    // home node
  bool prefault = true;                      // fault every page in at create/attach
};

struct PoolStats {
  std::uint64_t totalBytes = 0;        // the heap: every block, headers included
  std::uint64_t usedBytes = 0;         // allocated blocks, headers included
  std::uint64_t freeBytes = 0;         // free blocks, headers included
  std::uint64_t largestFreeBlock = 0;  // the largest single allocation possible now
  std::uint64_t allocationCount = 0;
  std::uint64_t freeBlockCount = 0;
};

class Pool {
 public:
  static constexpr std::size_t kMinSize = std::size_t{64} << 10;
  static constexpr std::size_t kMaxSize = std::size_t{1} << 40;
  static constexpr std::size_t kAlignment = 64;  // every payload starts on a cache line

  static Result<Pool> create(const PoolOptions& options);
  // Maps a pool from an fd that another process passed or left to this one (the fd is kept).
  // The descriptor must name this pool: its id is checked against the segment.
  static Result<Pool> attach(UniqueFd fd, const ObjectDescriptor& desc, bool prefault = true);

  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&&) noexcept = default;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() = default;

  std::uint64_t id() const noexcept { return id_; }
  std::uint32_t node() const noexcept { return node_; }
  // The memfd the pool lives in (-1 once closeFd() closed it).
  int fd() const noexcept { return fd_.get(); }
  // Closes the fd, which only mapping the pool again needs: the mapping stays. A Client keeps
  // no fd for a pool dragond granted it (a process using many pools would run out of fds).
  void closeFd() noexcept { fd_.reset(); }
  std::size_t segmentSize() const noexcept { return map_.size(); }
  ObjectDescriptor descriptor() const noexcept;

  // Allocates `bytes` (> 0), owned by the calling process. With a timeout, waits for memory to
  // be freed: PoolExhausted for a try, Timeout when the deadline passes, InvalidArgument when the
  // request could never fit.
  Result<PoolAllocation> alloc(std::size_t bytes, Timeout timeout = Timeout::none()) {
    return allocAs(bytes, OwnerTag::self(), timeout);
  }
  Result<PoolAllocation> allocAs(std::size_t bytes, OwnerTag owner, Timeout timeout);
  // InvalidArgument for anything that is not a live allocation of this pool (double free).
  Status free(const PoolAllocation& a);

  // The payload's address in this process. The allocation must be live and of this pool.
  void* pointer(const PoolAllocation& a) const noexcept {
    return static_cast<char*>(map_.data()) + a.offset;
  }
  void* pointerAt(std::uint64_t offset) const noexcept {
    return static_cast<char*>(map_.data()) + offset;
  }
  // Checks that `payloadOffset` is a live allocation of this pool and returns its handle.
  Result<PoolAllocation> allocationAt(std::uint64_t payloadOffset) const;
  Result<OwnerTag> ownerOf(const PoolAllocation& a) const;
  // Hands an allocation to a new owner: a single store, no lock (ownership is what makes a
  // block reclaimable, see reclaim()).
  Status setOwner(const PoolAllocation& a, OwnerTag owner) noexcept;

  Result<PoolStats> stats() const;
  // Walks the whole heap and checks every invariant of the allocator; Corrupt says which failed.
  Status validate() const;
  // Frees every allocation for which keep(owner, allocation) is false; returns how many it
  // freed. keep runs under the pool's lock: it may use allocationAt, ownerOf and pointer, but
  // nothing that takes the lock (alloc, free, stats, validate, reclaim).
  Result<std::size_t> reclaim(const std::function<bool(OwnerTag, const PoolAllocation&)>& keep);

 private:
  Pool(UniqueFd fd, MappedRegion map) noexcept;
  detail::PoolHeader* header() const noexcept {
    return static_cast<detail::PoolHeader*>(map_.data());
  }

  UniqueFd fd_;
  MappedRegion map_;
  std::uint64_t id_ = 0;
  std::uint32_t node_ = 0;
};

}  // namespace dragon
