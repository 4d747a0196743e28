// SPDX-License-Identifier: MIT
// Remote memory's API (Client::put / Client::get, daemon/server_memory.cpp) on one real dragond:
// the same calls that move bytes by RMA between nodes copy between two pools of this node.
// Ranges are checked against live allocations, a dropped transfer still completes, a pool
// destroyed during use is an error and not a crash, and descriptors of nodes outside the job
// are refused. Across nodes: tests/cluster/t_dragon_memory.sh.
#include "daemon_fixture.hpp"

#include <cstring>
#include <optional>

namespace dragon {
namespace {

using namespace std::chrono_literals;
using testing::RunningDaemon;

struct Pools {
  std::shared_ptr<Pool> a;
  std::shared_ptr<Pool> b;
  PoolAllocation inA;
  PoolAllocation inB;
};

Pools twoPools(Client& c, std::size_t bytes) {
  Pools p;
  const std::uint64_t size = std::max<std::uint64_t>(8 << 20, bytes + (4 << 20));
  auto a = c.createPool(size);
  auto b = c.createPool(size);
  EXPECT_TRUE(a.has_value() && b.has_value());
  if (!a.has_value() || !b.has_value()) return p;
  p.a = *a;
  p.b = *b;
  auto x = p.a->alloc(bytes);
  auto y = p.b->alloc(bytes);
  EXPECT_TRUE(x.has_value() && y.has_value());
  if (x.has_value()) p.inA = *x;
  if (y.has_value()) p.inB = *y;
  return p;
}

MemoryRange rangeOf(const Pool& pool, const PoolAllocation& a, std::uint64_t offset = 0) {
  return MemoryRange{pool.descriptor(), a.offset, offset};
}

// A dragond and a client of it.
class Memory : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = RunningDaemon::start();
    ASSERT_TRUE(daemon_);
    client_.emplace(daemon_->connect());
  }
  Client& client() { return *client_; }

 private:
  std::unique_ptr<RunningDaemon> daemon_;
  std::optional<Client> client_;
};

TEST_F(Memory, PutAndGetCopyBetweenPoolsOfThisNode) {
  Client& c = client();
  constexpr std::size_t kBytes = 3 << 20;
  Pools p = twoPools(c, kBytes);
  ASSERT_TRUE(p.a && p.b);
  auto* src = static_cast<unsigned char*>(p.a->pointer(p.inA));
  for (std::size_t i = 0; i < kBytes; ++i) src[i] = static_cast<unsigned char>(i * 7 + 3);
  auto put = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), kBytes);
  ASSERT_TRUE(put.has_value()) << put.error().toString();
  Status st = put->wait(Timeout::after(10s));
  ASSERT_TRUE(st.isOk()) << st.toString();
  EXPECT_TRUE(put->done());
  EXPECT_EQ(std::memcmp(p.b->pointer(p.inB), src, kBytes), 0);
  EXPECT_TRUE(put->wait(Timeout::none()).isOk());  // the same outcome again
  // A get of a middle part, into the middle of the other allocation.
  auto* there = static_cast<unsigned char*>(p.b->pointer(p.inB));
  for (std::size_t i = 0; i < 5000; ++i) there[1000 + i] = static_cast<unsigned char>(i ^ 0x5a);
  auto get = c.get(rangeOf(*p.b, p.inB, 1000), rangeOf(*p.a, p.inA, 77), 5000);
  ASSERT_TRUE(get.has_value()) << get.error().toString();
  ASSERT_TRUE(get->wait().isOk());
  EXPECT_EQ(std::memcmp(src + 77, there + 1000, 5000), 0);
  // Nothing to copy is a transfer too.
  auto none = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), 0);
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->wait(Timeout::after(10s)).isOk());
}

TEST_F(Memory, ALargeCopyOnThisNodeIsRightInStepsAlsoWhereItsRangesOverlap) {
  // dragond copies 16 MiB per turn of its loop: a 40 MiB put takes three steps, and ranges
  // that overlap in one allocation move as memmove moves them, either way.
  Client& c = client();
  constexpr std::size_t kBytes = 40 << 20;
  constexpr std::size_t kShift = 4 << 20;
  Pools p = twoPools(c, kBytes);
  ASSERT_TRUE(p.a && p.b);
  std::vector<unsigned char> want(kBytes);
  for (std::size_t i = 0; i < kBytes; ++i) want[i] = static_cast<unsigned char>(i * 131 + i / 4093);
  auto* a = static_cast<unsigned char*>(p.a->pointer(p.inA));
  auto* b = static_cast<unsigned char*>(p.b->pointer(p.inB));
  std::memcpy(a, want.data(), kBytes);
  auto whole = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), kBytes);
  ASSERT_TRUE(whole.has_value()) << whole.error().toString();
  ASSERT_TRUE(whole->wait(Timeout::after(30s)).isOk());
  EXPECT_EQ(std::memcmp(b, want.data(), kBytes), 0);
  // Up by kShift in b (the destination after the source: copied from the end).
  auto up = c.put(rangeOf(*p.b, p.inB), rangeOf(*p.b, p.inB, kShift), kBytes - kShift);
  ASSERT_TRUE(up.has_value()) << up.error().toString();
  ASSERT_TRUE(up->wait(Timeout::after(30s)).isOk());
  EXPECT_EQ(std::memcmp(b + kShift, want.data(), kBytes - kShift), 0);
  EXPECT_EQ(std::memcmp(b, want.data(), kShift), 0);
  // Down by kShift in a.
  auto down = c.put(rangeOf(*p.a, p.inA, kShift), rangeOf(*p.a, p.inA), kBytes - kShift);
  ASSERT_TRUE(down.has_value()) << down.error().toString();
  ASSERT_TRUE(down->wait(Timeout::after(30s)).isOk());
  EXPECT_EQ(std::memcmp(a, want.data() + kShift, kBytes - kShift), 0);
  EXPECT_EQ(std::memcmp(a + kBytes - kShift, want.data() + kBytes - kShift, kShift), 0);
}

TEST_F(Memory, RangesOutsideALiveAllocationAreRefusedAndNothingIsWritten) {
  Client& c = client();
  Pools p = twoPools(c, 4096);
  ASSERT_TRUE(p.a && p.b);
  std::memset(p.b->pointer(p.inB), 0x11, 4096);
  auto expectRefused = [&](const MemoryRange& from, const MemoryRange& to, std::uint64_t n,
                           const char* what) {
    SCOPED_TRACE(what);
    auto t = c.put(from, to, n);
    ASSERT_TRUE(t.has_value()) << t.error().toString();
    const Status st = t->wait(Timeout::after(10s));
    EXPECT_EQ(st.code(), StatusCode::InvalidArgument) << st.toString();
  };
  expectRefused(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), 4097, "one byte past the end");
  expectRefused(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB, 4000), 100, "an offset near the end");
  expectRefused(rangeOf(*p.a, p.inA, 1), rangeOf(*p.b, p.inB), 4096, "the source's end");
  expectRefused(rangeOf(*p.a, p.inA), MemoryRange{p.b->descriptor(), p.inB.offset + 64, 0}, 8,
                "not the start of an allocation");
  expectRefused(rangeOf(*p.a, p.inA), MemoryRange{p.b->descriptor(), 0, 0}, 8,
                "the pool's header");
  expectRefused(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB, ~std::uint64_t{0}), 2,
                "an offset that wraps");
  // Freed: not a live allocation any more.
  PoolAllocation gone = *p.b->alloc(4096);
  ASSERT_TRUE(p.b->free(gone).isOk());
  expectRefused(rangeOf(*p.a, p.inA), rangeOf(*p.b, gone), 8, "a freed allocation");
  const auto* b = static_cast<const unsigned char*>(p.b->pointer(p.inB));
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(b[i], 0x11) << "byte " << i << " was written";
}

TEST_F(Memory, PutAndGetSayWhichSideMustBeOfThisNodeAndForeignNodesAreNotFound) {
  Client& c = client();
  Pools p = twoPools(c, 64);
  ASSERT_TRUE(p.a && p.b);
  ObjectDescriptor elsewhere = p.b->descriptor();
  elsewhere.node = c.node() + 5;
  const MemoryRange far{elsewhere, p.inB.offset, 0};
  // put writes from this node; get reads into this node.
  EXPECT_EQ(c.put(far, rangeOf(*p.a, p.inA), 8).status().code(), StatusCode::InvalidArgument);
  EXPECT_EQ(c.get(rangeOf(*p.a, p.inA), far, 8).status().code(), StatusCode::InvalidArgument);
  // A node that is not in the job (this dragond serves no multi-node job).
  auto t = c.put(rangeOf(*p.a, p.inA), far, 8);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->wait(Timeout::after(10s)).code(), StatusCode::NotFound);
  // A channel is not a pool.
  ChannelOptions co;
  co.capacity = 4;
  auto ch = c.createChannel(p.a->descriptor(), co);
  ASSERT_TRUE(ch.has_value());
  auto u = c.put(rangeOf(*p.a, p.inA), MemoryRange{(*ch)->descriptor(), 0, 0}, 8);
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->wait(Timeout::after(10s)).code(), StatusCode::InvalidArgument);
}

TEST_F(Memory, ADestroyedPoolIsNotFoundAndDroppedTransfersStillComplete) {
  Client& c = client();
  Pools p = twoPools(c, 1 << 20);
  ASSERT_TRUE(p.a && p.b);
  std::memset(p.a->pointer(p.inA), 0x42, 1 << 20);
  // Many transfers dropped without a wait: each completes, and the replies do not confuse the
  // calls after them.
  for (int i = 0; i < 200; ++i) {
    auto t = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), 1 << 20);
    ASSERT_TRUE(t.has_value()) << t.error().toString();
  }
  auto last = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), 16);
  ASSERT_TRUE(last.has_value());
  ASSERT_TRUE(last->wait(Timeout::after(10s)).isOk());
  EXPECT_EQ(static_cast<const unsigned char*>(p.b->pointer(p.inB))[(1 << 20) - 1], 0x42);
  const ObjectDescriptor b = p.b->descriptor();
  ASSERT_TRUE(c.destroy(b).isOk());
  auto t = c.put(rangeOf(*p.a, p.inA), MemoryRange{b, p.inB.offset, 0}, 8);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->wait(Timeout::after(10s)).code(), StatusCode::NotFound);
  // The surviving pool still works.
  PoolAllocation other = *p.a->alloc(64);
  auto ok = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.a, other), 64);
  ASSERT_TRUE(ok.has_value());
  EXPECT_TRUE(ok->wait(Timeout::after(10s)).isOk());
}

TEST_F(Memory, AWaitsDeadlineHoldsWhileOtherInputKeepsComing) {
  // MemoryTransfer::wait(timeout) returns Timeout at its deadline even when the client keeps
  // being woken meanwhile (here its interrupt fd, left readable by a handler that does not
  // drain it; output lines and other replies do the same). Before, it went on waiting until
  // the transfer ended and answered Ok long past the deadline.
  Client& c = client();
  constexpr std::size_t kBytes = std::size_t{256} << 20;  // a copy of tens of milliseconds
  Pools p = twoPools(c, kBytes);
  ASSERT_TRUE(p.a && p.b);
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  int woken = 0;
  c.setInterrupt(fds[0], [&] { ++woken; });
  auto t = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), kBytes);
  ASSERT_TRUE(t.has_value()) << t.error().toString();
  EXPECT_EQ(t->wait(Timeout::after(1ms)).code(), StatusCode::Timeout);
  EXPECT_GT(woken, 0) << "the interrupt fd did not wake the wait";
  c.setInterrupt(-1, {});
  close(fds[0]);
  close(fds[1]);
  EXPECT_TRUE(t->wait(Timeout::after(30s)).isOk()) << "the transfer itself still completes";
}

TEST_F(Memory, TransfersAreWaitedOnTogetherWithChannels) {
  Client& c = client();
  constexpr std::size_t kBytes = 2 << 20;
  Pools p = twoPools(c, kBytes);
  ASSERT_TRUE(p.a && p.b);
  ChannelOptions co;
  co.capacity = 4;
  auto ch = c.createChannel(p.a->descriptor(), co);
  ASSERT_TRUE(ch.has_value()) << ch.error().toString();
  std::memset(p.a->pointer(p.inA), 0x77, kBytes);
  // An empty channel and a transfer: the transfer wakes the wait.
  auto t = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), kBytes);
  ASSERT_TRUE(t.has_value());
  ClientWaitItem items[2];
  items[0].channel = ch->get();
  items[1].transfer = &*t;
  auto n = c.waitAny(items, Timeout::after(30s));
  ASSERT_TRUE(n.has_value()) << n.error().toString();
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(items[0].ready, WaitFor{});
  EXPECT_EQ(items[1].ready, WaitFor::Readable);
  EXPECT_TRUE(t->done());
  EXPECT_TRUE(t->wait(Timeout::none()).isOk());
  EXPECT_EQ(static_cast<const unsigned char*>(p.b->pointer(p.inB))[kBytes - 1], 0x77);
  // Both ready: a message in the channel and the transfer done already.
  ASSERT_TRUE((*ch)->send(std::as_bytes(std::span("x", 1))).isOk());
  n = c.waitAny(items, Timeout::after(30s));
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 2u);
  EXPECT_EQ(items[0].ready, WaitFor::Readable);
  ASSERT_TRUE((*ch)->recvBytes(Timeout::none()).has_value());
  // A transfer alone, and one that fails: ready, its wait() says how it ended.
  auto bad = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB, 1), kBytes);
  ASSERT_TRUE(bad.has_value());
  ClientWaitItem one[1];
  one[0].transfer = &*bad;
  n = c.waitAny(one, Timeout::after(30s));
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(bad->wait(Timeout::none()).code(), StatusCode::InvalidArgument);
  // Nothing ready: the deadline.
  items[1].transfer = nullptr;
  items[1].channel = ch->get();
  const auto t0 = std::chrono::steady_clock::now();
  n = c.waitAny(std::span(items, 1), Timeout::after(100ms));
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 0u);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 100ms);
  // An item is a channel or a transfer.
  items[0].transfer = &*t;
  EXPECT_EQ(c.waitAny(std::span(items, 1), Timeout::none()).status().code(),
            StatusCode::InvalidArgument);
  // Many transfers in flight, waited on (those not done yet) until every one is done: each
  // wait returns at least one more.
  std::vector<MemoryTransfer> flying;
  for (int i = 0; i < 20; ++i) {
    auto f = c.put(rangeOf(*p.a, p.inA), rangeOf(*p.b, p.inB), kBytes);
    ASSERT_TRUE(f.has_value());
    flying.push_back(std::move(*f));
  }
  for (int round = 0; round < 20; ++round) {
    std::vector<ClientWaitItem> pending;
    for (auto& f : flying) {
      if (!f.done()) pending.push_back(ClientWaitItem{.transfer = &f});
    }
    if (pending.empty()) break;
    auto got = c.waitAny(pending, Timeout::after(30s));
    ASSERT_TRUE(got.has_value()) << got.error().toString();
    ASSERT_GT(*got, 0u);
  }
  for (auto& f : flying) EXPECT_TRUE(f.wait(Timeout::none()).isOk());
}

}  // namespace
}  // namespace dragon
