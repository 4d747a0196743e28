// SPDX-License-Identifier: MIT
#include <dragon/channel.hpp>

#include "base/robust_mutex.hpp"
#include "channel/layout.hpp"
#include "pool/heap.hpp"
#include "support/process.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <future>
#include <numeric>
#include <spawn.h>
#include <sys/mman.h>
#include <thread>
#include <vector>

extern char** environ;

namespace dragon {
namespace {

using namespace std::chrono_literals;
using testing::exitCodeOf;
using testing::forkChild;
using testing::waitFor;

constexpr Timeout kBounded = Timeout::after(std::chrono::seconds(10));

std::span<const std::byte> bytesOf(const std::string& s) { return std::as_bytes(std::span(s)); }

// What a sender does under the send lock, up to publishing "abc" in the tail's slot (a test
// that kills the sender after it goes on from there).
void publishAbc(detail::ChannelHeader* h, std::uint64_t t) {
  detail::Slot* s = detail::slotAt(h, t);
  std::memcpy(detail::inlineBytes(s), "abc", 3);
  s->kind = detail::SlotKind::Inline;
  s->length = 3;
  s->seq.store(t + 1);
}

class ChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PoolOptions o;
    o.size = std::size_t{16} << 20;
    auto p = Pool::create(o);
    ASSERT_TRUE(p.has_value()) << p.error().toString();
    pool_.emplace(std::move(*p));
  }
  Channel make(std::uint32_t capacity = 8, std::uint32_t inlineSize = 64,
               std::uint64_t maxMessage = 0) {
    ChannelOptions o;
    o.capacity = capacity;
    o.inlineSize = inlineSize;
    o.maxMessageSize = maxMessage;
    auto c = Channel::create(*pool_, o);
    EXPECT_TRUE(c.has_value()) << c.error().toString();
    return std::move(*c);
  }
  // A lock's channel: one token's room, its holder tracked (and owned, for a recursive one).
  Channel makeLock(bool owns = false) {
    ChannelOptions o;
    o.capacity = 1;
    o.inlineSize = 8;
    o.trackHolder = true;
    o.holderOwns = owns;
    auto c = Channel::create(*pool_, o);
    EXPECT_TRUE(c.has_value()) << c.error().toString();
    return std::move(*c);
  }
  std::string recvString(Channel& ch, Timeout t = Timeout::after(5s)) {
    std::vector<std::byte> buf(1 << 21);
    auto n = ch.recv(buf, t);
    EXPECT_TRUE(n.has_value()) << n.error().toString();
    return n ? std::string(reinterpret_cast<char*>(buf.data()), *n) : std::string();
  }
  std::optional<Pool> pool_;
};

TEST_F(ChannelTest, InvalidOptionsAreRejected) {
  ChannelOptions o;
  o.capacity = 0;
  EXPECT_EQ(Channel::create(*pool_, o).error().code(), StatusCode::InvalidArgument);
  o.capacity = 8;
  o.inlineSize = 1u << 30;
  EXPECT_EQ(Channel::create(*pool_, o).error().code(), StatusCode::InvalidArgument);
  o.inlineSize = 64;
  o.capacity = 1u << 23;  // a ring bigger than the pool
  EXPECT_EQ(Channel::create(*pool_, o).error().code(), StatusCode::InvalidArgument);
}

TEST_F(ChannelTest, MessagesArriveInFifoOrder) {
  Channel ch = make(16);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(ch.send(bytesOf("m" + std::to_string(i)), kBounded).isOk());
  }
  EXPECT_EQ(ch.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(recvString(ch), "m" + std::to_string(i));
  }
}

TEST_F(ChannelTest, EmptyMessagesAreMessagesToo) {
  Channel ch = make();
  ASSERT_TRUE(ch.send({}, kBounded).isOk());
  std::byte b[1];
  auto n = ch.recv(b, Timeout::none());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 0u);
}

TEST_F(ChannelTest, TrySendOnFullAndTryRecvOnEmptyDoNotBlock) {
  Channel ch = make(2);
  std::byte b[8];
  EXPECT_EQ(ch.recv(b, Timeout::none()).error().code(), StatusCode::WouldBlock);
  ASSERT_TRUE(ch.send(bytesOf("a"), Timeout::none()).isOk());
  ASSERT_TRUE(ch.send(bytesOf("b"), Timeout::none()).isOk());
  EXPECT_EQ(ch.send(bytesOf("c"), Timeout::none()).code(), StatusCode::ChannelFull);
  EXPECT_FALSE(ch.writable());
  EXPECT_TRUE(ch.readable());
}

TEST_F(ChannelTest, TimedSendAndRecvTimeOutAfterTheirDeadline) {
  Channel ch = make(1);
  std::byte b[8];
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(ch.recv(b, Timeout::after(40ms)).error().code(), StatusCode::Timeout);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 40ms);
  ASSERT_TRUE(ch.send(bytesOf("x"), kBounded).isOk());
  t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(ch.send(bytesOf("y"), Timeout::after(40ms)).code(), StatusCode::Timeout);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 40ms);
  EXPECT_EQ(recvString(ch), "x");
}

TEST_F(ChannelTest, OversizedMessagesAreRefusedAndSmallBuffersKeepTheMessage) {
  Channel ch = make(4, 16, 1000);
  std::string big(1001, 'z');
  Status st = ch.send(bytesOf(big), kBounded);
  EXPECT_EQ(st.code(), StatusCode::MessageTooLarge);
  EXPECT_NE(st.toString().find("1001"), std::string::npos);
  ASSERT_TRUE(ch.send(bytesOf(std::string(500, 'k')), kBounded).isOk());
  std::byte small[100];
  auto r = ch.recv(small, Timeout::none());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::MessageTooLarge);
  EXPECT_NE(r.error().toString().find("500 bytes"), std::string::npos);
  EXPECT_EQ(ch.size(), 1u) << "the message must stay queued";
  EXPECT_EQ(recvString(ch), std::string(500, 'k'));
}

TEST_F(ChannelTest, MessagesBeyondThePoolAreTooLargeNotAHang) {
  Channel ch = make();
  std::string huge(std::size_t{17} << 20, 'h');
  EXPECT_EQ(ch.send(bytesOf(huge), kBounded).code(), StatusCode::MessageTooLarge);
}

TEST_F(ChannelTest, LargeMessagesTravelThroughThePoolAndAreFreedOnReceipt) {
  Channel ch = make(4, 64);
  const auto before = *pool_->stats();
  std::string big(100000, '\0');
  std::iota(big.begin(), big.end(), 'a');
  ASSERT_TRUE(ch.send(bytesOf(big), kBounded).isOk());
  EXPECT_EQ(pool_->stats()->allocationCount, before.allocationCount + 1);
  EXPECT_EQ(recvString(ch), big);
  EXPECT_EQ(pool_->stats()->allocationCount, before.allocationCount);
}

TEST_F(ChannelTest, ZeroCopySendAndInPlaceReceiveShareTheSameMemory) {
  Channel ch = make(4, 64);
  auto block = pool_->alloc(1 << 20);
  ASSERT_TRUE(block.has_value());
  auto* p = static_cast<char*>(pool_->pointer(*block));
  std::memset(p, 'Z', 1 << 20);
  ASSERT_TRUE(ch.sendBlock(*block, 1 << 20, kBounded).isOk());
  EXPECT_EQ(pool_->ownerOf(*block)->kind(), OwnerTag::Kind::Channel);
  Message m;
  ASSERT_TRUE(ch.recv(m, Timeout::after(5s)).isOk());
  ASSERT_TRUE(m.isBlock());
  EXPECT_EQ(m.size(), std::size_t{1} << 20);
  EXPECT_EQ(static_cast<const void*>(m.data().data()), static_cast<void*>(p))
      << "the receiver must read the sender's bytes in place";
  EXPECT_EQ(*pool_->ownerOf(*block), OwnerTag::self());
  auto taken = m.takeBlock();
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->offset, block->offset);
  EXPECT_TRUE(pool_->free(*taken).isOk());
}

TEST_F(ChannelTest, MessageFreesItsBlockWhenReset) {
  Channel ch = make(4, 64);
  const auto before = pool_->stats()->allocationCount;
  ASSERT_TRUE(ch.send(bytesOf(std::string(5000, 'q')), kBounded).isOk());
  {
    Message m;
    ASSERT_TRUE(ch.recv(m, kBounded).isOk());
    EXPECT_EQ(pool_->stats()->allocationCount, before + 1);
  }
  EXPECT_EQ(pool_->stats()->allocationCount, before);
}

TEST_F(ChannelTest, SendBlockRejectsForeignOrShortBlocks) {
  Channel ch = make();
  auto a = *pool_->alloc(100);
  EXPECT_EQ(ch.sendBlock(a, 101, kBounded).code(), StatusCode::InvalidArgument);
  PoolAllocation foreign = a;
  foreign.poolId ^= 1;
  EXPECT_EQ(ch.sendBlock(foreign, 10, kBounded).code(), StatusCode::InvalidArgument);
  ASSERT_TRUE(pool_->free(a).isOk());
  EXPECT_EQ(ch.sendBlock(a, 10, kBounded).code(), StatusCode::InvalidArgument) << "freed block";
}

TEST_F(ChannelTest, CloseDrainsThenReportsClosedAndWakesBlockedReceivers) {
  Channel ch = make();
  ASSERT_TRUE(ch.send(bytesOf("last"), kBounded).isOk());
  ASSERT_TRUE(ch.close().isOk());
  EXPECT_EQ(ch.send(bytesOf("late"), kBounded).code(), StatusCode::ChannelClosed);
  EXPECT_EQ(recvString(ch), "last");
  std::byte b[8];
  EXPECT_EQ(ch.recv(b, kBounded).error().code(), StatusCode::ChannelClosed);

  Channel other = make();
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(other.descriptor().offset));
  std::thread closer([&] {
    // Close once the receiver sleeps: wait (bounded) for it to arm the wait word.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while ((h->notEmpty.load() & 1u) == 0 && std::chrono::steady_clock::now() < deadline) {
      sched_yield();
    }
    EXPECT_NE(h->notEmpty.load() & 1u, 0u) << "the receiver never went to sleep";
    EXPECT_TRUE(other.close().isOk());
  });
  EXPECT_EQ(other.recv(b, Timeout::after(10s)).error().code(), StatusCode::ChannelClosed);
  closer.join();
}

TEST_F(ChannelTest, DestroyReleasesTheRingAndEveryQueuedBlock) {
  const auto before = *pool_->stats();
  Channel ch = make(16, 64);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(ch.send(bytesOf(std::string(1000 + i, 'd')), Timeout::none()).isOk());
    ASSERT_TRUE(ch.send(bytesOf("small"), Timeout::none()).isOk());
  }
  const ObjectDescriptor desc = ch.descriptor();
  ASSERT_TRUE(ch.destroy().isOk());
  const auto after = *pool_->stats();
  EXPECT_EQ(after.allocationCount, before.allocationCount);
  EXPECT_EQ(after.usedBytes, before.usedBytes);
  EXPECT_EQ(Channel::attach(*pool_, desc).error().code(), StatusCode::NotFound);
}

TEST_F(ChannelTest, AttachValidatesTheDescriptor) {
  Channel ch = make();
  ObjectDescriptor d = ch.descriptor();
  EXPECT_TRUE(Channel::attach(*pool_, d).has_value());
  ObjectDescriptor wrongPool = d;
  wrongPool.poolId ^= 1;
  EXPECT_EQ(Channel::attach(*pool_, wrongPool).error().code(), StatusCode::InvalidArgument);
  ObjectDescriptor wrongOffset = d;
  wrongOffset.offset += 64;
  EXPECT_EQ(Channel::attach(*pool_, wrongOffset).error().code(), StatusCode::NotFound);
  ObjectDescriptor wrongId = d;
  wrongId.id ^= 1;
  EXPECT_EQ(Channel::attach(*pool_, wrongId).error().code(), StatusCode::NotFound);
  EXPECT_EQ(Channel::attach(*pool_, pool_->descriptor()).error().code(),
            StatusCode::InvalidArgument);
}

TEST_F(ChannelTest, AttachRefusesAScribbledHeaderInsteadOfReadingOutOfBounds) {
  Channel ch = make(4, 64);
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(ch.descriptor().offset));
  const std::uint32_t capacity = h->capacity;
  h->capacity = 1u << 30;  // a ring far larger than the channel's allocation
  auto r = Channel::attach(*pool_, ch.descriptor());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::Corrupt);
  h->capacity = capacity;
  h->slotStride = 8;  // smaller than a slot header
  EXPECT_EQ(Channel::attach(*pool_, ch.descriptor()).error().code(), StatusCode::Corrupt);
}

TEST_F(ChannelTest, AttachRefusesAHeaderWhoseSizesWrapAround) {
  // Sizes chosen so that slotsOffset + stride * capacity wraps to a small number: a check of
  // that sum alone passes, and the ring would then lie far outside the mapping.
  Channel ch = make(4, 64);
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(ch.descriptor().offset));
  std::vector<std::byte> saved(sizeof(detail::ChannelHeader));
  std::memcpy(saved.data(), static_cast<void*>(h), saved.size());
  auto restore = [&] { std::memcpy(static_cast<void*>(h), saved.data(), saved.size()); };
  h->capacity = 1u << 20;
  h->slotStride = 1u << 20;
  h->inlineSize = 0;
  h->slotsOffset = 0 - (std::uint64_t{1} << 40) + 64;
  EXPECT_EQ(Channel::attach(*pool_, ch.descriptor()).error().code(), StatusCode::Corrupt);
  restore();
  h->inlineSize = 1u << 21;  // over the largest inline size
  h->slotStride = (sizeof(detail::Slot) + (1u << 21) + 63) / 64 * 64;
  EXPECT_EQ(Channel::attach(*pool_, ch.descriptor()).error().code(), StatusCode::Corrupt);
  restore();
  h->slotStride += 64;  // not the stride create() makes for its inline size
  EXPECT_EQ(Channel::attach(*pool_, ch.descriptor()).error().code(), StatusCode::Corrupt);
  restore();
  EXPECT_TRUE(Channel::attach(*pool_, ch.descriptor()).has_value());
}

TEST_F(ChannelTest, ABlockWhoseRecordedSizeExceedsItIsNoAllocation) {
  auto a = pool_->alloc(100);
  ASSERT_TRUE(a.has_value());
  auto* b = reinterpret_cast<detail::BlockHeader*>(static_cast<char*>(pool_->pointerAt(a->offset)) -
                                                   detail::kHeaderBytes);
  ASSERT_EQ(b->requested, 100u);
  b->requested = std::uint64_t{1} << 40;  // scribbled: reading that much would leave the pool
  EXPECT_FALSE(pool_->allocationAt(a->offset).has_value());
  b->requested = 100;
  ASSERT_TRUE(pool_->allocationAt(a->offset).has_value());
  EXPECT_EQ(pool_->allocationAt(a->offset)->size, 100u);
}

// A sender killed after its commit but before its wake-up: the message is queued and nothing
// will wake a receiver asleep on the channel. That receiver must still find it, by itself.
TEST_F(ChannelTest, AReceiverFindsAMessageWhoseSenderDiedBeforeWakingIt) {
  Channel ch = make(4, 64);
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(ch.descriptor().offset));
  std::string text;
  std::promise<void> got;
  std::future<void> received = got.get_future();
  std::thread receiver([&] {
    std::vector<std::byte> buf(64);
    auto n = ch.recv(buf, Timeout::forever());
    if (n.has_value()) text.assign(reinterpret_cast<char*>(buf.data()), *n);
    got.set_value();
  });
  const auto limit = std::chrono::steady_clock::now() + 10s;
  while ((h->notEmpty.load() & 1u) == 0 && std::chrono::steady_clock::now() < limit) {
    std::this_thread::yield();  // until the receiver sleeps on the channel
  }
  ASSERT_NE(h->notEmpty.load() & 1u, 0u) << "the receiver never went to sleep";
  pid_t pid = forkChild([&] {
    if (base::RobustMutex::lock(&h->sendLock) != base::LockState::Locked) return 2;
    const std::uint64_t t = h->tail.load();
    publishAbc(h, t);
    h->tail.store(t + 1);
    base::RobustMutex::unlock(&h->sendLock);
    raise(SIGKILL);  // committed, and killed before its wake-up
    return 3;
  });
  ASSERT_TRUE(WIFSIGNALED(waitFor(pid, 10s)));
  const bool found = received.wait_for(10s) == std::future_status::ready;
  if (!found) {
    ASSERT_TRUE(ch.send(bytesOf("release"), kBounded).isOk());  // let it go
  }
  receiver.join();
  EXPECT_TRUE(found) << "the receiver slept on with a message queued";
  EXPECT_EQ(text, "abc");
}

TEST_F(ChannelTest, WaitAnyOverNoChannelsWaitsOutItsDeadline) {
  std::vector<Channel::WaitItem> none;
  auto r = Channel::waitAny(none, Timeout::after(50ms));
  ASSERT_TRUE(r.has_value()) << r.error().toString();
  EXPECT_EQ(*r, 0u);
  r = Channel::waitAny(none, Timeout::none());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, 0u);
}

TEST_F(ChannelTest, ManyProducersAndConsumersAcrossProcessesDeliverEachMessageOnce) {
  constexpr int kProducers = 4;
  constexpr int kConsumers = 3;
  constexpr int kPerProducer = 20000;
  Channel ch = make(32, 64);
  auto* seen = static_cast<std::atomic<std::uint8_t>*>(
      mmap(nullptr, kProducers * kPerProducer, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
           -1, 0));
  ASSERT_NE(seen, MAP_FAILED);
  const ObjectDescriptor desc = ch.descriptor();
  std::vector<pid_t> consumers;
  for (int c = 0; c < kConsumers; ++c) {
    consumers.push_back(forkChild([&] {
      auto mine = Channel::attach(*pool_, desc);
      if (!mine) return 2;
      std::vector<std::byte> buf(4096);
      for (;;) {
        auto n = mine->recv(buf, Timeout::after(20s));
        if (!n) return n.error().code() == StatusCode::ChannelClosed ? 0 : 3;
        std::uint32_t v[2];
        if (*n < sizeof v) return 4;
        std::memcpy(v, buf.data(), sizeof v);
        // Every other message is large (pool block); both kinds carry a checked pattern.
        for (std::size_t i = sizeof v; i < *n; ++i) {
          if (buf[i] != static_cast<std::byte>(v[1] + i)) return 5;
        }
        seen[v[0] * kPerProducer + v[1]].fetch_add(1);
      }
    }));
  }
  std::vector<pid_t> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.push_back(forkChild([&, p] {
      std::vector<std::byte> msg(1000);
      for (std::uint32_t i = 0; i < kPerProducer; ++i) {
        std::uint32_t v[2] = {static_cast<std::uint32_t>(p), i};
        std::size_t len = i % 2 == 0 ? 40 : 1000;
        std::memcpy(msg.data(), v, sizeof v);
        for (std::size_t j = sizeof v; j < len; ++j) msg[j] = static_cast<std::byte>(i + j);
        if (!ch.send({msg.data(), len}, Timeout::after(20s)).isOk()) return 2;
      }
      return 0;
    }));
  }
  for (pid_t p : producers) EXPECT_EQ(exitCodeOf(waitFor(p, 60s)), 0);
  ASSERT_TRUE(ch.close().isOk());
  for (pid_t c : consumers) EXPECT_EQ(exitCodeOf(waitFor(c, 60s)), 0);
  int missing = 0, dup = 0;
  for (int i = 0; i < kProducers * kPerProducer; ++i) {
    missing += seen[i].load() == 0;
    dup += seen[i].load() > 1;
  }
  EXPECT_EQ(missing, 0);
  EXPECT_EQ(dup, 0);
  EXPECT_TRUE(pool_->validate().isOk());
  munmap(seen, kProducers * kPerProducer);
}

TEST_F(ChannelTest, WaitAnyReportsWhichChannelsAreReady) {
  Channel a = make(1), b = make(1), c = make(1);
  Channel::WaitItem items[3] = {{&a, WaitFor::Readable, {}},
                                {&b, WaitFor::Readable, {}},
                                {&c, WaitFor::Writable, {}}};
  ASSERT_TRUE(c.send(bytesOf("fill"), kBounded).isOk());
  auto n = Channel::waitAny(items, Timeout::after(20ms));
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 0u) << "nothing is ready: the deadline passes";
  ASSERT_TRUE(b.send(bytesOf("go"), kBounded).isOk());
  n = Channel::waitAny(items, Timeout::none());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(items[0].ready, WaitFor{});
  EXPECT_EQ(items[1].ready, WaitFor::Readable);
  EXPECT_EQ(items[2].ready, WaitFor{});
}

// A child that attaches channel `desc` and, once the parent is asleep in waitAny (a bounded
// wait on a shared flag the parent raises just before), runs act on it; exits with act's code.
class AfterParentSleeps {
 public:
  AfterParentSleeps(Pool& pool, const ObjectDescriptor& desc,
                    const std::function<bool(Channel&)>& act)
      : go_(static_cast<std::atomic<int>*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE,
                                                MAP_SHARED | MAP_ANONYMOUS, -1, 0))) {
    new (go_) std::atomic<int>(0);
    pid_ = forkChild([&] {
      auto mine = Channel::attach(pool, desc);
      if (!mine) return 2;
      const auto deadline = std::chrono::steady_clock::now() + 10s;
      while (go_->load() == 0 && std::chrono::steady_clock::now() < deadline) sched_yield();
      return act(*mine) ? 0 : 3;
    });
  }
  AfterParentSleeps(const AfterParentSleeps&) = delete;
  AfterParentSleeps& operator=(const AfterParentSleeps&) = delete;
  ~AfterParentSleeps() { munmap(go_, 4096); }
  void go() { go_->store(1); }
  int exitCode() { return exitCodeOf(waitFor(pid_, 10s)); }

 private:
  std::atomic<int>* go_;
  pid_t pid_ = -1;
};

// waitAny over channels a and b sleeps until a child process acts on b, and reports b alone.
void expectWaitAnyWakesForB(Pool& pool, Channel& a, Channel& b,
                            const std::function<bool(Channel&)>& act) {
  AfterParentSleeps child(pool, b.descriptor(), act);
  Channel::WaitItem items[2] = {{&a, WaitFor::Readable, {}}, {&b, WaitFor::Readable, {}}};
  child.go();
  auto n = Channel::waitAny(items, Timeout::after(20s));
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(items[1].ready, WaitFor::Readable);
  EXPECT_EQ(child.exitCode(), 0);
}

TEST_F(ChannelTest, WaitAnySleepsUntilAnotherProcessSends) {
  Channel a = make(1), b = make(1);
  expectWaitAnyWakesForB(*pool_, a, b, [](Channel& c) {
    return c.send(std::as_bytes(std::span("hi", 2)), kBounded).isOk();
  });
}

TEST_F(ChannelTest, WaitAnyReportsAChannelClosedWhileItSleeps) {
  // Closed and empty: a recv would not block (it reports ChannelClosed), so it is ready.
  Channel a = make(1), b = make(1);
  expectWaitAnyWakesForB(*pool_, a, b, [](Channel& c) { return c.close().isOk(); });
}

TEST_F(ChannelTest, WaitAnyRejectsBadItems) {
  Channel a = make();
  std::vector<Channel::WaitItem> many(Channel::kMaxWaitItems + 1, {&a, WaitFor::Readable, {}});
  EXPECT_EQ(Channel::waitAny(many, Timeout::none()).error().code(), StatusCode::InvalidArgument);
  Channel::WaitItem none[1] = {{nullptr, WaitFor::Readable, {}}};
  EXPECT_EQ(Channel::waitAny(none, Timeout::none()).error().code(), StatusCode::InvalidArgument);
}

TEST_F(ChannelTest, ReclaimFreesBlocksLeftByADeadProcessButNotQueuedOnes) {
  Channel ch = make(4, 64);
  const auto before = pool_->stats()->allocationCount;
  ASSERT_TRUE(ch.send(bytesOf(std::string(3000, 'q')), kBounded).isOk());  // queued: must survive
  pid_t pid = forkChild([&] {
    auto a = pool_->alloc(5000);  // allocated, never sent, then killed
    if (!a) return 2;
    raise(SIGKILL);
    return 3;
  });
  ASSERT_TRUE(WIFSIGNALED(waitFor(pid, 10s)));
  EXPECT_EQ(pool_->stats()->allocationCount, before + 2);
  auto n = Channel::reclaimOrphans(*pool_);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(recvString(ch), std::string(3000, 'q'));
  EXPECT_EQ(pool_->stats()->allocationCount, before);
}

// A lock's channel (trackHolder): the last receiver holds it until the next send; breaking it
// for a holder that is gone closes it for good, naming that holder, and wakes its waiters;
// a holder that is not gone, or a channel that does not track, is left alone.
TEST_F(ChannelTest, TrackedHolderIsTheLastReceiverUntilTheNextSend) {
  Channel lock = makeLock();
  EXPECT_TRUE(lock.tracksHolder());
  const std::uint64_t me = Channel::holderWord(pool_->node(), static_cast<std::uint32_t>(getpid()));
  ASSERT_TRUE(lock.send(bytesOf("t"), kBounded).isOk());
  EXPECT_EQ(lock.holder(), 0u);
  EXPECT_EQ(recvString(lock), "t");
  EXPECT_EQ(lock.holder(), me);
  EXPECT_FALSE(lock.breakHold([&](std::uint64_t h) { return h != me; }));  // the holder lives
  ASSERT_TRUE(lock.send(bytesOf("t"), kBounded).isOk());                   // released
  EXPECT_EQ(lock.holder(), 0u);
  EXPECT_FALSE(lock.breakHold([](std::uint64_t) { return true; }));  // nobody holds it
  lock.receiveAs(Channel::holderWord(7, 4242));                      // dragond for node 7
  EXPECT_EQ(recvString(lock), "t");
  EXPECT_EQ(lock.holder(), Channel::holderWord(7, 4242));

  // A holder that exited with status 0 may have left it for another: not broken; the token
  // back in the ring (given back by another process) is held by nobody, whatever the word.
  EXPECT_FALSE(lock.breakHold([](std::uint64_t) { return true; }, /*cleanEnd=*/true));
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(lock.descriptor().offset));
  ASSERT_TRUE(lock.send(bytesOf("t"), kBounded).isOk());
  h->holder.store(Channel::holderWord(7, 4242));  // a receiver killed before its commit
  EXPECT_FALSE(lock.breakHold([](std::uint64_t) { return true; }));
  EXPECT_EQ(recvString(lock), "t");

  Channel plain = make(1, 8);
  ASSERT_TRUE(plain.send(bytesOf("t"), kBounded).isOk());
  EXPECT_EQ(recvString(plain), "t");
  EXPECT_EQ(plain.holder(), 0u);
  EXPECT_FALSE(plain.breakHold([](std::uint64_t) { return true; }));

  // One its holder owns (a recursive lock's) breaks however the holder ended.
  Channel owned = makeLock(/*owns=*/true);
  ASSERT_TRUE(owned.send(bytesOf("t"), kBounded).isOk());
  EXPECT_EQ(recvString(owned), "t");
  EXPECT_TRUE(owned.breakHold([&](std::uint64_t w) { return w == me; }, /*cleanEnd=*/true));
}

TEST_F(ChannelTest, ALockWhoseHolderDiedBreaksAndWakesItsWaiters) {
  Channel lock = makeLock();
  ASSERT_TRUE(lock.send(bytesOf("t"), kBounded).isOk());
  // A child takes the token and is killed holding it.
  pid_t pid = forkChild([&] {
    std::byte b[8];
    if (!lock.recv(b, kBounded).has_value()) return 2;
    raise(SIGKILL);
    return 3;
  });
  ASSERT_TRUE(WIFSIGNALED(waitFor(pid, 10s)));
  const std::uint64_t dead = Channel::holderWord(pool_->node(), static_cast<std::uint32_t>(pid));
  EXPECT_EQ(lock.holder(), dead);
  // A waiter blocks without a deadline until the break wakes it.
  std::atomic<int> outcome{-1};
  std::string why;
  std::thread waiter([&] {
    std::byte b[8];
    auto n = lock.recv(b, Timeout::forever());
    if (!n.has_value()) why = std::string(n.error().message());
    outcome = n.has_value() ? 0 : static_cast<int>(n.error().code());
  });
  // Break it once the waiter sleeps: wait (bounded) for it to arm the wait word.
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(lock.descriptor().offset));
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while ((h->notEmpty.load() & 1u) == 0 && std::chrono::steady_clock::now() < deadline) {
    sched_yield();
  }
  EXPECT_NE(h->notEmpty.load() & 1u, 0u) << "the waiter never went to sleep";
  EXPECT_TRUE(lock.breakHold([&](std::uint64_t w) { return w == dead; }));
  waiter.join();
  EXPECT_EQ(outcome.load(), static_cast<int>(StatusCode::ChannelClosed));
  EXPECT_NE(why.find("pid " + std::to_string(pid)), std::string::npos) << why;
  // Broken for good: sends fail too, a later close() keeps the reason, a second break is a no-op.
  Status st = lock.send(bytesOf("t"), kBounded);
  EXPECT_EQ(st.code(), StatusCode::ChannelClosed);
  EXPECT_NE(std::string(st.message()).find("before giving it back"), std::string::npos);
  ASSERT_TRUE(lock.close().isOk());
  std::byte b[8];
  EXPECT_NE(std::string(lock.recv(b, Timeout::none()).error().message()).find("pid"),
            std::string::npos);
  EXPECT_FALSE(lock.breakHold([](std::uint64_t) { return true; }));
}

// Shared memory scribbled by a buggy peer: a malformed slot or one naming no live block is
// skipped with Corrupt, never a crash, and the channel keeps working.
TEST_F(ChannelTest, MalformedSlotsAreReportedAsCorruptAndSkipped) {
  Channel ch = make(4, 64);
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(ch.descriptor().offset));
  ASSERT_TRUE(ch.send(bytesOf("one"), kBounded).isOk());
  ASSERT_TRUE(ch.send(bytesOf(std::string(1000, 'b')), kBounded).isOk());
  ASSERT_TRUE(ch.send(bytesOf("three"), kBounded).isOk());
  detail::slotAt(h, 0)->kind = static_cast<detail::SlotKind>(77);
  const std::uint64_t realBlock = detail::slotAt(h, 1)->blockOffset;
  detail::slotAt(h, 1)->blockOffset = 12345;  // no allocation starts there
  std::byte buf[2000];
  EXPECT_EQ(ch.recv(buf, kBounded).error().code(), StatusCode::Corrupt);
  Message m;
  EXPECT_EQ(ch.recv(m, kBounded).code(), StatusCode::Corrupt);
  EXPECT_EQ(recvString(ch), "three");
  ASSERT_TRUE(ch.send(bytesOf("four"), kBounded).isOk());
  EXPECT_EQ(recvString(ch), "four");
  // The block the scribbled slot lost is an orphan tagged for the channel: reclaim frees it.
  EXPECT_EQ(pool_->ownerOf(*pool_->allocationAt(realBlock))->kind(), OwnerTag::Kind::Channel);
  EXPECT_EQ(*Channel::reclaimOrphans(*pool_), 1u);
  EXPECT_TRUE(pool_->validate().isOk());
}

// A sender killed after publishing its slot but before advancing tail: the next sender gets
// the lock back EOWNERDEAD and must advance tail, not overwrite the published message.
TEST_F(ChannelTest, ASenderKilledBetweenPublishAndTailKeepsItsMessage) {
  Channel ch = make(4, 64);
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(ch.descriptor().offset));
  pid_t pid = forkChild([&] {
    if (base::RobustMutex::lock(&h->sendLock) != base::LockState::Locked) return 2;
    publishAbc(h, h->tail.load());  // published...
    raise(SIGKILL);  // ...but tail never advanced, and the lock dies with us
    return 3;
  });
  ASSERT_TRUE(WIFSIGNALED(waitFor(pid, 10s)));
  ASSERT_TRUE(ch.send(bytesOf("xyz"), kBounded).isOk());
  EXPECT_EQ(recvString(ch), "abc");
  EXPECT_EQ(recvString(ch), "xyz");
  EXPECT_EQ(ch.size(), 0u);
}

// Pool memory is reused: a channel made where an old one left published-looking slots must
// start empty.
TEST_F(ChannelTest, ANewChannelInReusedMemoryStartsEmpty) {
  Channel old = make(8, 64);
  auto* h = static_cast<detail::ChannelHeader*>(pool_->pointerAt(old.descriptor().offset));
  for (std::uint64_t i = 0; i < 8; ++i) {
    detail::slotAt(h, i)->seq.store(i + 1);  // looks like messages 0..7 were published
    detail::slotAt(h, i)->kind = detail::SlotKind::Inline;
  }
  const std::uint64_t offset = old.descriptor().offset;
  ASSERT_TRUE(old.destroy().isOk());
  Channel fresh = make(8, 64);
  ASSERT_EQ(fresh.descriptor().offset, offset) << "the allocator should reuse the block";
  std::byte b[64];
  EXPECT_EQ(fresh.recv(b, Timeout::none()).error().code(), StatusCode::WouldBlock);
  EXPECT_FALSE(fresh.readable());
}

// A process started from scratch (posix_spawn + exec) attaches through the fd it inherits and
// the descriptor strings on its command line.
TEST_F(ChannelTest, AFreshProcessAttachesThroughAnInheritedFd) {
  Channel ch = make(4, 64);
  const int fd = dup(pool_->fd());  // without O_CLOEXEC: inherited across exec
  ASSERT_GE(fd, 0);
  const std::string fdArg = std::to_string(fd);
  const std::string poolArg = pool_->descriptor().toString();
  const std::string chArg = ch.descriptor().toString();
  const char* argv[] = {DRAGON_TEST_ATTACH_HELPER, fdArg.c_str(), poolArg.c_str(), chArg.c_str(),
                        nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, argv[0], nullptr, nullptr, const_cast<char**>(argv), environ), 0);
  close(fd);
  EXPECT_EQ(recvString(ch, Timeout::after(20s)), "hello from pid " + std::to_string(pid));
  EXPECT_EQ(exitCodeOf(waitFor(pid, 20s)), 0);
}

}  // namespace
}  // namespace dragon
