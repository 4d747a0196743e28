// SPDX-License-Identifier: MIT
// The pool's allocator: TLSF (two-level segregated fit) over a heap inside a shared segment,
// with boundary tags for O(1) coalescing. Every link is an offset from the segment's start.
//
// Crash consistency. The only authoritative state is each block's `sizeFlags` word (size + used
// bit) and, for a used block, its `owner`. Each change to them is one 8-byte store made in an
// order that leaves the physical chain walkable at every instruction:
//   split: write the remainder's header, then commit the allocated block's new size+used bit;
//   free:  commit the used bit cleared, then each merge commits the surviving block's new size.
// Everything else (free lists, bitmaps, prevPhys links, statistics) is derived, and rebuild()
// recomputes it from a walk of the chain when the lock comes back from a dead owner.
#pragma once

#include "base/private.hpp"

#include <dragon/pool.hpp>

#include <atomic>
#include <cstdint>
#include <pthread.h>

namespace dragon::detail {

inline constexpr std::uint64_t kPoolMagic = 0x4c4f4f504e475244ull;  // "DRGNPOOL"
inline constexpr std::uint32_t kPoolVersion = 1;
inline constexpr std::uint64_t kBlockMagic = 0x9e3779b97f4a7c15ull;
inline constexpr std::uint64_t kNone = ~std::uint64_t{0};
inline constexpr std::uint64_t kGranule = 64;
inline constexpr std::uint64_t kHeaderBytes = 64;
inline constexpr std::uint64_t kMinBlock = 2 * kGranule;
inline constexpr std::uint64_t kUsedBit = 1;

inline constexpr unsigned kSlLog2 = 4;
inline constexpr unsigned kSlCount = 1u << kSlLog2;
inline constexpr unsigned kFlCount = 40;

struct BlockHeader {
  std::atomic<std::uint64_t> sizeFlags;  // authoritative: size incl. header | used bit
  std::atomic<std::uint64_t> owner;      // authoritative for used blocks: OwnerTag raw value
  std::uint64_t check;                   // own offset ^ kBlockMagic: catches bogus offsets
  std::uint64_t prevPhys;                // derived: previous block in the chain, or kNone
  std::uint64_t nextFree;                // derived: free-list links (free blocks only)
  std::uint64_t prevFree;
  std::uint64_t requested;               // payload bytes asked for (used blocks only)
  std::uint64_t reserved;
};
static_assert(sizeof(BlockHeader) == kHeaderBytes);

struct alignas(64) PoolHeader {
  std::uint64_t magic;  // written last at creation
  std::uint32_t version;
  std::uint32_t headerBytes;
  std::uint64_t segmentSize;
  std::uint64_t id;
  std::uint32_t node;
  std::uint32_t reserved0;
  std::uint64_t heapBegin;
  std::uint64_t heapEnd;

  alignas(64) pthread_mutex_t lock;
  // Derived state, under `lock`.
  std::uint64_t usedBytes;
  std::uint64_t allocationCount;
  std::uint64_t freeBlockCount;
  std::uint64_t recoveries;  // how often the lock came back from a dead owner
  std::uint64_t flBitmap;
  std::uint32_t slBitmap[kFlCount];
  std::uint64_t freeHead[kFlCount][kSlCount];

  // Allocators blocked on a full pool sleep here; free() notifies.
  alignas(64) std::atomic<std::uint32_t> freedWord;
};

// Operations on the heap of a mapped segment. The caller holds the pool lock for all but
// blockAt() checks. Process-local and stateless beyond the two pointers.
class Heap {
 public:
  Heap(void* base, PoolHeader* h) noexcept : base_(static_cast<char*>(base)), h_(h) {}

  // Lays out one free block over the whole heap (creation only).
  void format() noexcept;
  // Finds and takes a block for `bytes` of payload; kNone when nothing fits.
  std::uint64_t allocate(std::uint64_t bytes, std::uint64_t ownerRaw) noexcept;
  // Frees the block whose header is at `block` (must be used).
  void release(std::uint64_t block) noexcept;
  // Recomputes all derived state from the chain; Corrupt if the chain itself is broken.
  Status rebuild();
  Status validate() const;
  PoolStats stats() const noexcept;

  // The header of the block whose payload is at `payload`, if that is a live allocation.
  // The used block whose payload is at `payload`, inside the first `mapped` bytes; null if none.
  BlockHeader* usedBlockAtPayload(std::uint64_t payload, std::uint64_t mapped) const noexcept;
  BlockHeader* at(std::uint64_t off) const noexcept {
    return reinterpret_cast<BlockHeader*>(base_ + off);
  }
  static std::uint64_t sizeOf(const BlockHeader* b) noexcept {
    return b->sizeFlags.load(std::memory_order_relaxed) & ~kUsedBit;
  }
  static bool isUsed(const BlockHeader* b) noexcept {
    return (b->sizeFlags.load(std::memory_order_relaxed) & kUsedBit) != 0;
  }
  // Request size -> block size, or 0 when the request can never fit.
  std::uint64_t blockSizeFor(std::uint64_t bytes) const noexcept;

 private:
  void insertFree(std::uint64_t block) noexcept;
  void removeFree(std::uint64_t block) noexcept;
  std::uint64_t findFree(std::uint64_t size) const noexcept;
  void setPrevOfNext(std::uint64_t block, std::uint64_t prev) noexcept;

  char* base_;
  PoolHeader* h_;
};

}  // namespace dragon::detail
