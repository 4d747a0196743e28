// SPDX-License-Identifier: MIT
// Many threads of one process on one channel and pool: the suite ThreadSanitizer runs, since it
// can follow threads but not processes that share memory.
#include <dragon/channel.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

namespace dragon {
namespace {

using namespace std::chrono_literals;

TEST(ChannelThreads, ProducersAndConsumersInThreadsDeliverEachMessageOnceAndWhole) {
  constexpr int kProducers = 3;
  constexpr int kConsumers = 2;
  constexpr std::uint32_t kPerProducer = 5000;
  PoolOptions po;
  po.size = std::size_t{8} << 20;
  auto pool = Pool::create(po);
  ASSERT_TRUE(pool.has_value());
  ChannelOptions co;
  co.capacity = 8;
  co.inlineSize = 32;
  auto ch = Channel::create(*pool, co);
  ASSERT_TRUE(ch.has_value());
  std::vector<std::atomic<int>> seen(kProducers * kPerProducer);
  std::atomic<int> bad{0};

  std::vector<std::thread> threads;
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      auto mine = Channel::attach(*pool, ch->descriptor());
      if (!mine) {
        bad++;
        return;
      }
      std::vector<std::byte> buf(2048);
      Message m;
      for (int n = c;; ++n) {
        std::span<const std::byte> got;
        if (n % 2 == 0) {
          auto r = mine->recv(buf, Timeout::after(20s));
          if (!r) {
            if (r.error().code() != StatusCode::ChannelClosed) bad++;
            return;
          }
          got = {buf.data(), *r};
        } else {
          Status st = mine->recv(m, Timeout::after(20s));
          if (!st.isOk()) {
            if (st.code() != StatusCode::ChannelClosed) bad++;
            return;
          }
          got = m.data();
        }
        std::uint32_t id = 0;
        std::memcpy(&id, got.data(), sizeof id);
        for (std::size_t i = sizeof id; i < got.size(); ++i) {
          if (got[i] != static_cast<std::byte>(id + i)) bad++;
        }
        seen[id].fetch_add(1);
      }
    });
  }
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      std::vector<std::byte> msg(1500);
      for (std::uint32_t i = 0; i < kPerProducer; ++i) {
        const std::uint32_t id = static_cast<std::uint32_t>(p) * kPerProducer + i;
        const std::size_t len = i % 3 == 0 ? 1500 : 20;
        if (i % 5 == 0 && len > 32) {
          // Zero copy from a block the thread fills itself.
          auto a = pool->alloc(len, Timeout::after(20s));
          if (!a) {
            bad++;
            return;
          }
          auto* out = static_cast<std::byte*>(pool->pointer(*a));
          std::memcpy(out, &id, sizeof id);
          for (std::size_t j = sizeof id; j < len; ++j) out[j] = static_cast<std::byte>(id + j);
          if (!ch->sendBlock(*a, len, Timeout::after(20s)).isOk()) bad++;
          continue;
        }
        std::memcpy(msg.data(), &id, sizeof id);
        for (std::size_t j = sizeof id; j < len; ++j) msg[j] = static_cast<std::byte>(id + j);
        if (!ch->send({msg.data(), len}, Timeout::after(20s)).isOk()) bad++;
      }
    });
  }
  for (int p = 0; p < kProducers; ++p) threads[kConsumers + p].join();
  ASSERT_TRUE(ch->close().isOk());
  for (int c = 0; c < kConsumers; ++c) threads[c].join();
  EXPECT_EQ(bad.load(), 0);
  for (auto& s : seen) ASSERT_EQ(s.load(), 1);
  EXPECT_TRUE(pool->validate().isOk());
  EXPECT_EQ(pool->stats()->allocationCount, 1u) << "only the channel itself remains";
}

TEST(ChannelThreads, WaitAnyInOneThreadIsWokenBySendsFromOthers) {
  PoolOptions po;
  po.size = std::size_t{1} << 20;
  auto pool = Pool::create(po);
  ASSERT_TRUE(pool.has_value());
  std::vector<Channel> chans;
  for (int i = 0; i < 4; ++i) chans.push_back(*Channel::create(*pool, {}));
  std::thread sender([&] {
    for (int round = 0; round < 200; ++round) {
      const std::string s = std::to_string(round);
      EXPECT_TRUE(chans[round % 4].send(std::as_bytes(std::span(s)), Timeout::after(10s)).isOk());
    }
  });
  std::vector<Channel::WaitItem> items;
  for (auto& c : chans) items.push_back({&c, WaitFor::Readable, {}});
  int received = 0;
  std::byte buf[16];
  while (received < 200) {
    auto n = Channel::waitAny(items, Timeout::after(10s));
    ASSERT_TRUE(n.has_value());
    ASSERT_GT(*n, 0u) << "waitAny timed out with a sender running";
    for (auto& it : items) {
      if (it.ready == WaitFor::Readable) {
        while (it.channel->recv(buf, Timeout::none()).has_value()) received++;
      }
    }
  }
  sender.join();
  EXPECT_EQ(received, 200);
}

}  // namespace
}  // namespace dragon
