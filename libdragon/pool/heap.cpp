// SPDX-License-Identifier: MIT
#include "pool/heap.hpp"

#include <algorithm>

#include <bit>
#include <string>

namespace dragon::detail {
namespace {

struct Mapping {
  unsigned fl;
  unsigned sl;
};

// Size class of a block of `size` bytes (a multiple of the granule).
Mapping mapping(std::uint64_t size) noexcept {
  const std::uint64_t g = size / kGranule;
  if (g < kSlCount) {
    return {0, static_cast<unsigned>(g)};
  }
  const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(g));
  return {msb - kSlLog2 + 1, static_cast<unsigned>((g >> (msb - kSlLog2)) - kSlCount)};
}

// Rounds a request up to the next class boundary, so that every block of the class found fits.
std::uint64_t roundToClass(std::uint64_t size) noexcept {
  const std::uint64_t g = size / kGranule;
  if (g < kSlCount) {
    return size;
  }
  const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(g));
  const std::uint64_t step = std::uint64_t{1} << (msb - kSlLog2);
  return ((g + step - 1) & ~(step - 1)) * kGranule;
}

}  // namespace

std::uint64_t Heap::blockSizeFor(std::uint64_t bytes) const noexcept {
  const std::uint64_t heap = h_->heapEnd - h_->heapBegin;
  if (bytes == 0 || bytes > heap) {
    return 0;
  }
  std::uint64_t size = (bytes + kHeaderBytes + kGranule - 1) & ~(kGranule - 1);
  return size < kMinBlock ? kMinBlock : size;
}

void Heap::setPrevOfNext(std::uint64_t block, std::uint64_t prev) noexcept {
  const std::uint64_t next = block + sizeOf(at(block));
  if (next < h_->heapEnd) {
    at(next)->prevPhys = prev;
  }
}

void Heap::insertFree(std::uint64_t block) noexcept {
  BlockHeader* b = at(block);
  const Mapping m = mapping(sizeOf(b));
  const std::uint64_t head = h_->freeHead[m.fl][m.sl];
  b->prevFree = kNone;
  b->nextFree = head;
  if (head != kNone) {
    at(head)->prevFree = block;
  }
  h_->freeHead[m.fl][m.sl] = block;
  h_->flBitmap |= std::uint64_t{1} << m.fl;
  h_->slBitmap[m.fl] |= 1u << m.sl;
  h_->freeBlockCount++;
}

void Heap::removeFree(std::uint64_t block) noexcept {
  BlockHeader* b = at(block);
  const Mapping m = mapping(sizeOf(b));
  if (b->prevFree != kNone) {
    at(b->prevFree)->nextFree = b->nextFree;
  } else {
    h_->freeHead[m.fl][m.sl] = b->nextFree;
  }
  if (b->nextFree != kNone) {
    at(b->nextFree)->prevFree = b->prevFree;
  }
  if (h_->freeHead[m.fl][m.sl] == kNone) {
    h_->slBitmap[m.fl] &= ~(1u << m.sl);
    if (h_->slBitmap[m.fl] == 0) {
      h_->flBitmap &= ~(std::uint64_t{1} << m.fl);
    }
  }
  h_->freeBlockCount--;
}

std::uint64_t Heap::findFree(std::uint64_t size) const noexcept {
  const std::uint64_t rounded = roundToClass(size);
  Mapping m = mapping(rounded);
  if (m.fl < kFlCount) {
    std::uint32_t slMap = h_->slBitmap[m.fl] & (~0u << m.sl);
    std::uint64_t flMap = 0;
    if (slMap == 0 && m.fl + 1 < kFlCount) {
      flMap = h_->flBitmap & (~std::uint64_t{0} << (m.fl + 1));
      if (flMap != 0) {
        m.fl = static_cast<unsigned>(std::countr_zero(flMap));
        slMap = h_->slBitmap[m.fl];
      }
    }
    if (slMap != 0) {
      m.sl = static_cast<unsigned>(std::countr_zero(slMap));
      return h_->freeHead[m.fl][m.sl];  // good fit: O(1)
    }
  }
  // Near exhaustion, the only blocks that fit may share the request's own class, which the
  // rounded search skips: scan that one list for an exact fit.
  const Mapping exact = mapping(size);
  if (exact.fl >= kFlCount) {
    return kNone;
  }
  for (std::uint64_t f = h_->freeHead[exact.fl][exact.sl]; f != kNone; f = at(f)->nextFree) {
    if (sizeOf(at(f)) >= size) {
      return f;
    }
  }
  return kNone;
}

void Heap::format() noexcept {
  h_->usedBytes = 0;
  h_->allocationCount = 0;
  h_->freeBlockCount = 0;
  h_->flBitmap = 0;
  for (unsigned f = 0; f < kFlCount; ++f) {
    h_->slBitmap[f] = 0;
    for (unsigned s = 0; s < kSlCount; ++s) {
      h_->freeHead[f][s] = kNone;
    }
  }
  BlockHeader* b = at(h_->heapBegin);
  b->owner.store(0, std::memory_order_relaxed);
  b->check = h_->heapBegin ^ kBlockMagic;
  b->prevPhys = kNone;
  b->sizeFlags.store(h_->heapEnd - h_->heapBegin, std::memory_order_relaxed);
  insertFree(h_->heapBegin);
}

std::uint64_t Heap::allocate(std::uint64_t bytes, std::uint64_t ownerRaw) noexcept {
  const std::uint64_t need = blockSizeFor(bytes);
  if (need == 0) {
    return kNone;
  }
  const std::uint64_t block = findFree(need);
  if (block == kNone) {
    return kNone;
  }
  BlockHeader* b = at(block);
  removeFree(block);
  std::uint64_t size = sizeOf(b);
  if (size - need >= kMinBlock) {
    // Remainder header first: until the commit below, the chain still skips over it.
    const std::uint64_t rest = block + need;
    BlockHeader* r = at(rest);
    r->owner.store(0, std::memory_order_relaxed);
    r->check = rest ^ kBlockMagic;
    r->prevPhys = block;
    r->sizeFlags.store(size - need, std::memory_order_release);
    setPrevOfNext(rest, rest);
    insertFree(rest);
    size = need;
  }
  b->owner.store(ownerRaw, std::memory_order_relaxed);
  b->requested = bytes;
  b->sizeFlags.store(size | kUsedBit, std::memory_order_release);  // commit
  h_->usedBytes += size;
  h_->allocationCount++;
  return block;
}

void Heap::release(std::uint64_t block) noexcept {
  BlockHeader* b = at(block);
  std::uint64_t size = sizeOf(b);
  b->sizeFlags.store(size, std::memory_order_release);  // commit: the block is free
  h_->usedBytes -= size;
  h_->allocationCount--;

  const std::uint64_t next = block + size;
  if (next < h_->heapEnd && !isUsed(at(next))) {
    removeFree(next);
    size += sizeOf(at(next));
    b->sizeFlags.store(size, std::memory_order_release);  // commit: absorbed the next block
    at(next)->check = 0;
  }
  if (b->prevPhys != kNone && !isUsed(at(b->prevPhys))) {
    const std::uint64_t prev = b->prevPhys;
    removeFree(prev);
    size += sizeOf(at(prev));
    at(prev)->sizeFlags.store(size, std::memory_order_release);  // commit: absorbed into prev
    b->check = 0;
    block = prev;
  }
  setPrevOfNext(block, block);
  insertFree(block);
}

BlockHeader* Heap::usedBlockAtPayload(std::uint64_t payload, std::uint64_t mapped) const noexcept {
  // The pool's header is memory every client can write: bounded by the mapping too (and read
  // once), so that a scribbled header cannot send the caller outside it.
  const std::uint64_t begin = h_->heapBegin;
  const std::uint64_t end = std::min(h_->heapEnd, mapped);
  if (payload < kHeaderBytes || payload >= end || payload - kHeaderBytes < begin ||
      (payload - begin) % kGranule != 0) {
    return nullptr;
  }
  const std::uint64_t block = payload - kHeaderBytes;
  BlockHeader* b = at(block);
  const std::uint64_t sf = b->sizeFlags.load(std::memory_order_acquire);
  if (b->check != (block ^ kBlockMagic) || (sf & kUsedBit) == 0) {
    return nullptr;
  }
  const std::uint64_t size = sf & ~kUsedBit;
  if (size < kMinBlock || size > end - block || b->requested > size - kHeaderBytes) {
    return nullptr;
  }
  return b;
}

Status Heap::rebuild() {
  // Pass 1: walk the chain, merge neighbouring free blocks, fix prevPhys and checks.
  std::uint64_t prev = kNone;
  std::uint64_t off = h_->heapBegin;
  while (off < h_->heapEnd) {
    BlockHeader* b = at(off);
    const std::uint64_t size = sizeOf(b);
    if (size < kMinBlock || size % kGranule != 0 || size > h_->heapEnd - off) {
      return Status(StatusCode::Corrupt,
                    "pool heap chain is broken at offset " + std::to_string(off));
    }
    if (!isUsed(b) && prev != kNone && !isUsed(at(prev))) {
      at(prev)->sizeFlags.store(sizeOf(at(prev)) + size, std::memory_order_release);
      off += size;
      continue;
    }
    b->prevPhys = prev;
    b->check = off ^ kBlockMagic;
    prev = off;
    off += size;
  }
  // Pass 2: derived state from scratch.
  h_->usedBytes = 0;
  h_->allocationCount = 0;
  h_->freeBlockCount = 0;
  h_->flBitmap = 0;
  for (unsigned f = 0; f < kFlCount; ++f) {
    h_->slBitmap[f] = 0;
    for (unsigned s = 0; s < kSlCount; ++s) {
      h_->freeHead[f][s] = kNone;
    }
  }
  for (off = h_->heapBegin; off < h_->heapEnd; off += sizeOf(at(off))) {
    if (isUsed(at(off))) {
      h_->usedBytes += sizeOf(at(off));
      h_->allocationCount++;
    } else {
      insertFree(off);
    }
  }
  return Status::ok();
}

Status Heap::validate() const {
  auto corrupt = [](const std::string& what, std::uint64_t off) {
    return Status(StatusCode::Corrupt, what + " at offset " + std::to_string(off));
  };
  std::uint64_t used = 0;
  std::uint64_t count = 0;
  std::uint64_t freeBlocks = 0;
  std::uint64_t prev = kNone;
  bool prevFree = false;
  std::uint64_t off = h_->heapBegin;
  while (off < h_->heapEnd) {
    const BlockHeader* b = at(off);
    const std::uint64_t size = sizeOf(b);
    if (size < kMinBlock || size % kGranule != 0 || size > h_->heapEnd - off) {
      return corrupt("bad block size", off);
    }
    if (b->check != (off ^ kBlockMagic)) {
      return corrupt("bad block check word", off);
    }
    if (b->prevPhys != prev) {
      return corrupt("bad previous-block link", off);
    }
    if (isUsed(b)) {
      used += size;
      count++;
      prevFree = false;
    } else {
      if (prevFree) {
        return corrupt("two neighbouring free blocks", off);
      }
      const Mapping m = mapping(size);
      bool listed = false;
      for (std::uint64_t f = h_->freeHead[m.fl][m.sl]; f != kNone; f = at(f)->nextFree) {
        if (f == off) {
          listed = true;
          break;
        }
      }
      if (!listed) {
        return corrupt("free block missing from its free list", off);
      }
      freeBlocks++;
      prevFree = true;
    }
    prev = off;
    off += size;
  }
  if (off != h_->heapEnd) {
    return corrupt("chain overruns the heap", off);
  }
  if (used != h_->usedBytes || count != h_->allocationCount ||
      freeBlocks != h_->freeBlockCount) {
    return Status(StatusCode::Corrupt,
                  "pool accounting mismatch: walked used=" + std::to_string(used) +
                      " allocations=" + std::to_string(count) +
                      " free blocks=" + std::to_string(freeBlocks) + ", recorded used=" +
                      std::to_string(h_->usedBytes) + " allocations=" +
                      std::to_string(h_->allocationCount) +
                      " free blocks=" + std::to_string(h_->freeBlockCount));
  }
  return Status::ok();
}

PoolStats Heap::stats() const noexcept {
  PoolStats s;
  s.totalBytes = h_->heapEnd - h_->heapBegin;
  s.usedBytes = h_->usedBytes;
  s.freeBytes = s.totalBytes - s.usedBytes;
  s.allocationCount = h_->allocationCount;
  s.freeBlockCount = h_->freeBlockCount;
  if (h_->flBitmap != 0) {
    const unsigned fl = 63u - static_cast<unsigned>(std::countl_zero(h_->flBitmap));
    const unsigned sl = 31u - static_cast<unsigned>(std::countl_zero(h_->slBitmap[fl]));
    std::uint64_t largest = 0;
    for (std::uint64_t f = h_->freeHead[fl][sl]; f != kNone; f = at(f)->nextFree) {
      largest = sizeOf(at(f)) > largest ? sizeOf(at(f)) : largest;
    }
    s.largestFreeBlock = largest - kHeaderBytes;
  }
  return s;
}

}  // namespace dragon::detail
