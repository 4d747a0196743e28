// SPDX-License-Identifier: MIT
#include <dragon/pool.hpp>

#include "base/robust_mutex.hpp"
#include "pool/heap.hpp"
#include "support/process.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <fcntl.h>
#include <random>
#include <sys/mman.h>
#include <vector>

namespace dragon {
namespace {

using namespace std::chrono_literals;
using testing::exitCodeOf;
using testing::forkChild;
using testing::waitFor;

Pool makePool(std::size_t size = std::size_t{1} << 20) {
  PoolOptions o;
  o.size = size;
  auto p = Pool::create(o);
  EXPECT_TRUE(p.has_value()) << p.error().toString();
  return std::move(*p);
}

TEST(Pool, RejectsSizesOutsideItsLimits) {
  PoolOptions o;
  o.size = 1024;
  auto p = Pool::create(o);
  ASSERT_FALSE(p.has_value());
  EXPECT_EQ(p.error().code(), StatusCode::InvalidArgument);
  EXPECT_NE(p.error().toString().find("outside"), std::string::npos);
  o.size = Pool::kMaxSize + 1;
  EXPECT_EQ(Pool::create(o).error().code(), StatusCode::InvalidArgument);
}

TEST(Pool, SegmentIsASealedMemfdWithNoNameInDevShm) {
  Pool pool = makePool();
  const int seals = fcntl(pool.fd(), F_GET_SEALS);
  ASSERT_GE(seals, 0);
  EXPECT_NE(seals & F_SEAL_SHRINK, 0);
  EXPECT_NE(seals & F_SEAL_GROW, 0);
  EXPECT_NE(ftruncate(pool.fd(), 4096), 0) << "a sealed pool must refuse to shrink";
  char link[256] = {};
  std::string path = "/proc/self/fd/" + std::to_string(pool.fd());
  ASSERT_GT(readlink(path.c_str(), link, sizeof link - 1), 0);
  EXPECT_EQ(std::string(link).rfind("/memfd:dragon-pool", 0), 0u) << link;
}

TEST(Pool, AllocationsAreAlignedDisjointAndWritable) {
  Pool pool = makePool();
  std::vector<PoolAllocation> as;
  for (std::size_t sz : {1u, 63u, 64u, 65u, 1000u, 4096u, 10000u}) {
    auto a = pool.alloc(sz);
    ASSERT_TRUE(a.has_value()) << a.error().toString();
    EXPECT_EQ(a->offset % Pool::kAlignment, 0u);
    EXPECT_EQ(a->size, sz);
    std::memset(pool.pointer(*a), static_cast<int>(as.size() + 1), sz);
    as.push_back(*a);
  }
  for (std::size_t i = 0; i < as.size(); ++i) {
    auto* p = static_cast<unsigned char*>(pool.pointer(as[i]));
    for (std::size_t j = 0; j < as[i].size; ++j) {
      ASSERT_EQ(p[j], i + 1) << "allocation " << i << " overlaps another";
    }
  }
  EXPECT_TRUE(pool.validate().isOk());
  for (auto& a : as) {
    EXPECT_TRUE(pool.free(a).isOk());
  }
  auto s = pool.stats();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->usedBytes, 0u);
  EXPECT_EQ(s->allocationCount, 0u);
  EXPECT_EQ(s->freeBlockCount, 1u) << "all blocks must coalesce back into one";
}

TEST(Pool, ZeroAndImpossibleSizesAreInvalidArguments) {
  Pool pool = makePool();
  EXPECT_EQ(pool.alloc(0).error().code(), StatusCode::InvalidArgument);
  auto big = pool.alloc(std::size_t{2} << 20, Timeout::forever());
  ASSERT_FALSE(big.has_value());
  EXPECT_EQ(big.error().code(), StatusCode::InvalidArgument) << "must not wait forever";
}

TEST(Pool, ExhaustionIsReportedAndATimedAllocTimesOut) {
  Pool pool = makePool(Pool::kMinSize);
  auto s = pool.stats();
  ASSERT_TRUE(s.has_value());
  auto all = pool.alloc(s->largestFreeBlock);
  ASSERT_TRUE(all.has_value()) << all.error().toString();
  auto more = pool.alloc(64);
  ASSERT_FALSE(more.has_value());
  EXPECT_EQ(more.error().code(), StatusCode::PoolExhausted);
  const auto t0 = std::chrono::steady_clock::now();
  auto timed = pool.alloc(64, Timeout::after(30ms));
  ASSERT_FALSE(timed.has_value());
  EXPECT_EQ(timed.error().code(), StatusCode::Timeout);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 30ms);
}

TEST(Pool, DoubleFreeAndForeignOffsetsAreRejected) {
  Pool pool = makePool();
  Pool other = makePool();
  auto a = pool.alloc(128);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(other.free(*a).code(), StatusCode::InvalidArgument);
  EXPECT_TRUE(pool.free(*a).isOk());
  auto again = pool.free(*a);
  EXPECT_EQ(again.code(), StatusCode::InvalidArgument);
  EXPECT_NE(again.toString().find("double free"), std::string::npos);
  for (std::uint64_t off : {std::uint64_t{0}, std::uint64_t{3}, a->offset + 64, ~std::uint64_t{0}}) {
    EXPECT_EQ(pool.free({pool.id(), off, 1}).code(), StatusCode::InvalidArgument) << off;
  }
  EXPECT_TRUE(pool.validate().isOk());
}

// Cycles many mixed-size allocations in random order; afterwards the whole heap must be one
// block again and the largest possible allocation must succeed.
TEST(Pool, MixedSizeCyclingLeavesNoFragmentation) {
  Pool pool = makePool(std::size_t{4} << 20);
  const auto initial = *pool.stats();
  std::mt19937_64 rng(12345);
  std::vector<PoolAllocation> live;
  const std::size_t sizes[] = {8, 100, 700, 3000, 20000, 120000};
  for (int round = 0; round < 20000; ++round) {
    if (live.empty() || (rng() % 3 != 0 && live.size() < 200)) {
      auto a = pool.alloc(sizes[rng() % std::size(sizes)] + rng() % 50);
      if (a.has_value()) {
        live.push_back(*a);
      } else {
        ASSERT_EQ(a.error().code(), StatusCode::PoolExhausted);
      }
    } else {
      std::size_t i = rng() % live.size();
      ASSERT_TRUE(pool.free(live[i]).isOk());
      live[i] = live.back();
      live.pop_back();
    }
  }
  ASSERT_TRUE(pool.validate().isOk());
  for (auto& a : live) {
    ASSERT_TRUE(pool.free(a).isOk());
  }
  const auto after = *pool.stats();
  EXPECT_EQ(after.freeBlockCount, 1u);
  EXPECT_EQ(after.largestFreeBlock, initial.largestFreeBlock);
  auto largest = pool.alloc(initial.largestFreeBlock);
  EXPECT_TRUE(largest.has_value());
}

TEST(Pool, AttachesFromAnInheritedFdInAnotherProcess) {
  Pool pool = makePool();
  auto a = pool.alloc(64);
  ASSERT_TRUE(a.has_value());
  std::strcpy(static_cast<char*>(pool.pointer(*a)), "from the parent");
  const ObjectDescriptor desc = pool.descriptor();
  const int fd = pool.fd();
  pid_t pid = forkChild([&] {
    auto child = Pool::attach(UniqueFd(dup(fd)), desc);
    if (!child) return 2;
    if (std::strcmp(static_cast<char*>(child->pointer(*a)), "from the parent") != 0) return 3;
    auto b = child->alloc(64);
    if (!b) return 4;
    std::strcpy(static_cast<char*>(child->pointer(*b)), "from the child");
    std::memcpy(child->pointer(*a), &*b, sizeof(PoolAllocation));
    return 0;
  });
  ASSERT_EQ(exitCodeOf(waitFor(pid, 10s)), 0);
  PoolAllocation b;
  std::memcpy(&b, pool.pointer(*a), sizeof b);
  EXPECT_STREQ(static_cast<char*>(pool.pointer(b)), "from the child");
  EXPECT_EQ(pool.stats()->allocationCount, 2u);
}

TEST(Pool, AttachRefusesTheWrongFdOrDescriptor) {
  Pool pool = makePool();
  ObjectDescriptor wrong = pool.descriptor();
  wrong.id ^= 1;
  auto r = Pool::attach(UniqueFd(dup(pool.fd())), wrong);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().toString().find("descriptor names pool"), std::string::npos);
  UniqueFd plain(memfd_create("not-a-pool", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(plain.get(), 1 << 20), 0);
  EXPECT_EQ(Pool::attach(std::move(plain), pool.descriptor()).error().code(),
            StatusCode::InvalidArgument);
  UniqueFd sealedZeros(memfd_create("zeros", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  ASSERT_EQ(ftruncate(sealedZeros.get(), 1 << 20), 0);
  ASSERT_EQ(fcntl(sealedZeros.get(), F_ADD_SEALS, F_SEAL_SHRINK), 0);
  EXPECT_EQ(Pool::attach(std::move(sealedZeros), pool.descriptor()).error().code(),
            StatusCode::InvalidArgument);
  EXPECT_EQ(Pool::attach(UniqueFd(), pool.descriptor()).error().code(),
            StatusCode::InvalidArgument);
}

TEST(Pool, BlockedAllocIsWokenByAFreeInAnotherProcess) {
  Pool pool = makePool(Pool::kMinSize);
  auto all = pool.alloc(pool.stats()->largestFreeBlock);
  ASSERT_TRUE(all.has_value());
  std::atomic<int>* ready = static_cast<std::atomic<int>*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (ready) std::atomic<int>(0);
  pid_t pid = forkChild([&] {
    ready->store(1);
    auto a = pool.alloc(1000, Timeout::after(20s));
    return a.has_value() ? 0 : 1;
  });
  // Wait (with a deadline) for the child to be about to block, then free.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (ready->load() == 0 && std::chrono::steady_clock::now() < deadline) {
    sched_yield();
  }
  ASSERT_TRUE(pool.free(*all).isOk());
  EXPECT_EQ(exitCodeOf(waitFor(pid, 20s)), 0);
  munmap(ready, 4096);
}

TEST(Pool, ManyProcessesAllocatingAndFreingKeepTheHeapConsistent) {
  Pool pool = makePool(std::size_t{8} << 20);
  std::vector<pid_t> kids;
  for (int k = 0; k < 4; ++k) {
    kids.push_back(forkChild([&, k] {
      std::mt19937 rng(static_cast<unsigned>(k));
      std::vector<std::pair<PoolAllocation, unsigned char>> live;
      for (int i = 0; i < 20000; ++i) {
        if (live.size() < 32 && rng() % 2 == 0) {
          auto a = pool.alloc(1 + rng() % 5000, Timeout::after(5s));
          if (!a) return 2;
          auto tag = static_cast<unsigned char>(rng());
          std::memset(pool.pointer(*a), tag, a->size);
          live.emplace_back(*a, tag);
        } else if (!live.empty()) {
          auto [a, tag] = live.back();
          live.pop_back();
          auto* p = static_cast<unsigned char*>(pool.pointer(a));
          for (std::size_t j = 0; j < a.size; ++j) {
            if (p[j] != tag) return 3;  // someone else wrote into our block
          }
          if (!pool.free(a).isOk()) return 4;
        }
      }
      for (auto& [a, tag] : live) {
        if (!pool.free(a).isOk()) return 4;
      }
      return 0;
    }));
  }
  for (pid_t p : kids) {
    EXPECT_EQ(exitCodeOf(waitFor(p, 60s)), 0);
  }
  EXPECT_TRUE(pool.validate().isOk());
  EXPECT_EQ(pool.stats()->allocationCount, 0u);
  EXPECT_EQ(pool.stats()->freeBlockCount, 1u);
}

TEST(Pool, LockHeldByAKilledProcessIsRecovered) {
  Pool pool = makePool();
  auto keep = pool.alloc(100);
  ASSERT_TRUE(keep.has_value());
  auto* h = static_cast<detail::PoolHeader*>(pool.pointerAt(0));
  pid_t pid = forkChild([&] {
    if (base::RobustMutex::lock(&h->lock) != base::LockState::Locked) return 2;
    raise(SIGKILL);  // die holding the pool lock
    return 3;
  });
  ASSERT_TRUE(WIFSIGNALED(waitFor(pid, 10s)));
  auto a = pool.alloc(100, Timeout::after(5s));
  ASSERT_TRUE(a.has_value()) << a.error().toString();
  EXPECT_EQ(h->recoveries, 1u);
  EXPECT_TRUE(pool.validate().isOk());
  EXPECT_EQ(pool.stats()->allocationCount, 2u);
}

// The pool's header and block headers are memory every client of the pool can write: a
// program that scribbles over them (a stray write through a raw view) must not send dragond,
// which looks allocations up for remote transfers, outside its mapping.
TEST(Pool, AnAllocationLookupStaysInsideTheMappingWhateverTheHeadersSay) {
  Pool pool = makePool();
  auto a = *pool.alloc(1000);
  auto* h = static_cast<detail::PoolHeader*>(pool.pointerAt(0));
  detail::Heap heap(pool.pointerAt(0), h);
  const std::uint64_t size = pool.segmentSize();
  // The heap's bounds scribbled over.
  const std::uint64_t begin = h->heapBegin, end = h->heapEnd;
  h->heapEnd = ~std::uint64_t{0} - 4096;
  for (std::uint64_t at : {size, size + 4096, size + (std::uint64_t{1} << 40), ~std::uint64_t{0} - 63}) {
    EXPECT_FALSE(pool.allocationAt(at).has_value()) << at;
  }
  h->heapBegin = ~std::uint64_t{0} - 32;  // heapBegin + a header wraps past zero
  EXPECT_FALSE(pool.allocationAt(16).has_value());
  EXPECT_FALSE(pool.allocationAt(0).has_value());
  h->heapBegin = begin;
  h->heapEnd = end;
  // A live block's size and requested length scribbled over.
  auto* b = heap.at(a.offset - detail::kHeaderBytes);
  const std::uint64_t requested = b->requested;
  b->requested = size;  // past the mapping's end from the block's payload
  EXPECT_FALSE(pool.allocationAt(a.offset).has_value());
  b->requested = requested;
  auto ok = pool.allocationAt(a.offset);
  ASSERT_TRUE(ok.has_value()) << ok.error().toString();
  EXPECT_EQ(ok->size, 1000u);
}

// The states a process killed half-way through alloc or free leaves behind, made by hand, must
// all be repaired by the rebuild that follows a dead lock owner.
TEST(Pool, RebuildRepairsEveryHalfDoneOperation) {
  Pool pool = makePool();
  auto* h = static_cast<detail::PoolHeader*>(pool.pointerAt(0));
  detail::Heap heap(pool.pointerAt(0), h);
  auto a = *pool.alloc(1000);
  auto b = *pool.alloc(1000);
  auto c = *pool.alloc(1000);
  // 1. Killed after the free's commit (used bit cleared) but before merging and listing.
  auto* hb = heap.at(b.offset - detail::kHeaderBytes);
  hb->sizeFlags.store(detail::Heap::sizeOf(hb));
  // 2. Killed in a split after writing the remainder header, before the commit: a stale header
  //    inside a free block's payload.
  const std::uint64_t cBlock = c.offset - detail::kHeaderBytes;
  const std::uint64_t freeAfterC = cBlock + detail::Heap::sizeOf(heap.at(cBlock));
  ASSERT_FALSE(detail::Heap::isUsed(heap.at(freeAfterC)));
  auto* stale = heap.at(freeAfterC + 512);
  stale->sizeFlags.store(128);
  // 3. Derived state scribbled: counters and a list head.
  h->allocationCount = 77;
  h->usedBytes = 1;
  EXPECT_FALSE(heap.validate().isOk());
  ASSERT_TRUE(heap.rebuild().isOk());
  ASSERT_TRUE(heap.validate().isOk()) << heap.validate().toString();
  EXPECT_EQ(h->allocationCount, 2u);
  EXPECT_FALSE(pool.allocationAt(b.offset).has_value()) << "b was freed before the crash";
  EXPECT_TRUE(pool.free(a).isOk());
  EXPECT_TRUE(pool.free(c).isOk());
  EXPECT_EQ(pool.stats()->freeBlockCount, 1u);
}

TEST(Pool, ABrokenChainIsReportedAsCorruptNotACrash) {
  Pool pool = makePool();
  auto* h = static_cast<detail::PoolHeader*>(pool.pointerAt(0));
  detail::Heap heap(pool.pointerAt(0), h);
  heap.at(h->heapBegin)->sizeFlags.store(3);  // impossible size
  Status st = heap.rebuild();
  EXPECT_EQ(st.code(), StatusCode::Corrupt);
  EXPECT_NE(st.toString().find("chain is broken"), std::string::npos);
}

TEST(Pool, ReclaimOverABrokenChainIsCorruptNotAnEndlessWalk) {
  // A block whose size a client overwrote with 0 (the walk would stay on it for ever) or
  // with more than the heap holds: reclaim says Corrupt and frees nothing.
  for (std::uint64_t bad : {std::uint64_t{0}, ~std::uint64_t{0} >> 1}) {
    Pool pool = makePool();
    auto a = *pool.alloc(100);
    ASSERT_EQ(a.offset - detail::kHeaderBytes, static_cast<detail::PoolHeader*>(pool.pointerAt(0))->heapBegin);
    auto* h = static_cast<detail::PoolHeader*>(pool.pointerAt(0));
    detail::Heap heap(pool.pointerAt(0), h);
    heap.at(h->heapBegin)->sizeFlags.store((bad & ~detail::kUsedBit) | detail::kUsedBit);
    std::size_t asked = 0;
    auto n = pool.reclaim([&asked](OwnerTag, const PoolAllocation&) {
      ++asked;
      return false;
    });
    ASSERT_FALSE(n.has_value());
    EXPECT_EQ(n.error().code(), StatusCode::Corrupt);
    EXPECT_EQ(asked, 0u);
  }
}

TEST(Pool, ReclaimFreesOnlyWhatTheCallerRejects) {
  Pool pool = makePool();
  auto mine = *pool.alloc(100);
  auto dead = *pool.allocAs(100, OwnerTag::process(0x7ffffff0), Timeout::none());
  auto obj = *pool.allocAs(100, OwnerTag::object(), Timeout::none());
  auto n = pool.reclaim([](OwnerTag o, const PoolAllocation&) {
    return o.kind() != OwnerTag::Kind::Process || o.value() != 0x7ffffff0;
  });
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
  EXPECT_FALSE(pool.allocationAt(dead.offset).has_value());
  EXPECT_TRUE(pool.allocationAt(mine.offset).has_value());
  EXPECT_TRUE(pool.allocationAt(obj.offset).has_value());
  EXPECT_EQ(*pool.ownerOf(mine), OwnerTag::self());
  EXPECT_TRUE(pool.validate().isOk());
}

}  // namespace
}  // namespace dragon
