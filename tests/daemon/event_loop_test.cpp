// SPDX-License-Identifier: MIT
// EventLoop::post, the loop's one thread-safe call: work posted from other threads runs on the
// loop's thread, each thread's in the order it posted, nothing lost or run twice.
#include "daemon/event_loop.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace dragon::daemon {
namespace {

constexpr std::int64_t kWatchdogNs = std::int64_t{30} * 1'000'000'000;

TEST(EventLoopPost, WorkFromManyThreadsRunsOnTheLoopInOrder) {
  auto loop = EventLoop::create();
  ASSERT_TRUE(loop.has_value()) << loop.error().toString();
  constexpr int kThreads = 4;
  constexpr int kEach = 20000;
  const auto loopThread = std::this_thread::get_id();
  std::vector<int> next(kThreads, 0);  // touched only on the loop's thread
  int total = 0;
  bool outOfOrder = false;
  bool offThread = false;
  bool timedOut = false;
  loop->addTimerAfterNs(kWatchdogNs, [&] {
    timedOut = true;
    loop->stop();
  });
  std::vector<std::thread> posters;
  for (int t = 0; t < kThreads; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        loop->post([&, t, i] {
          if (std::this_thread::get_id() != loopThread) offThread = true;
          if (next[static_cast<std::size_t>(t)] != i) outOfOrder = true;
          next[static_cast<std::size_t>(t)] = i + 1;
          if (++total == kThreads * kEach) loop->stop();
        });
      }
    });
  }
  ASSERT_TRUE(loop->run().isOk());
  for (auto& p : posters) p.join();
  EXPECT_FALSE(timedOut) << "only " << total << " of " << kThreads * kEach << " ran";
  EXPECT_EQ(total, kThreads * kEach);
  EXPECT_FALSE(outOfOrder);
  EXPECT_FALSE(offThread);
}

TEST(EventLoopPost, WorkPostedOnTheLoopRunsAtItsNextTurnNotInline) {
  auto loop = EventLoop::create();
  ASSERT_TRUE(loop.has_value());
  std::vector<int> order;
  loop->addTimerAfterNs(kWatchdogNs, [&] { loop->stop(); });
  loop->post([&] {
    order.push_back(1);
    loop->post([&] {
      order.push_back(3);
      loop->stop();
    });
    order.push_back(2);
  });
  ASSERT_TRUE(loop->run().isOk());
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

}  // namespace
}  // namespace dragon::daemon
