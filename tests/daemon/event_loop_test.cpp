// SPDX-License-Identifier: MIT
// EventLoop::post, the loop's one thread-safe call: work posted from other threads runs on the
// loop's thread, each thread's in the order it posted, nothing lost or run twice.
#include "daemon/event_loop.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
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

namespace dragon::daemon {
namespace {

TEST(EventLoopDefer, RunsAfterTheTurnAndKeepsWhatAStopLeft) {
  auto loop = EventLoop::create();
  ASSERT_TRUE(loop.has_value());
  std::vector<int> order;
  loop->defer([&] {
    order.push_back(1);
    loop->defer([&] { order.push_back(4); });  // deferred by deferred work: the next turn
  });
  loop->defer([&] {
    order.push_back(2);
    loop->stop();
  });
  loop->defer([&] { order.push_back(3); });  // left by the stop
  ASSERT_TRUE(loop->run().isOk());
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  loop->addTimerAfterNs(kWatchdogNs, [&] { loop->stop(); });
  loop->defer([&] { loop->stop(); });
  ASSERT_TRUE(loop->run().isOk());  // runs again: what was left first, in order
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

TEST(EventLoopPoll, APollingLoopStillSleepsAndWakes) {
  // With polling on, the loop polls a while after each event, then sleeps: work posted later
  // from another thread and a timer both still run.
  auto loop = EventLoop::create();
  ASSERT_TRUE(loop.has_value());
  loop->setPollNs(100'000);
  bool timerRan = false;
  bool postRan = false;
  bool timedOut = false;
  loop->addTimerAfterNs(kWatchdogNs, [&] {
    timedOut = true;
    loop->stop();
  });
  loop->addTimerAfterNs(20'000'000, [&] {
    timerRan = true;
    if (postRan) loop->stop();
  });
  std::atomic<bool> go{false};
  std::thread poster([&] {
    while (!go.load()) std::this_thread::yield();
    // Well after the loop's polling window has ended: it is asleep in epoll_wait.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    loop->post([&] {
      postRan = true;
      if (timerRan) loop->stop();
    });
  });
  loop->defer([&] { go = true; });
  ASSERT_TRUE(loop->run().isOk());
  poster.join();
  EXPECT_FALSE(timedOut);
  EXPECT_TRUE(postRan);
  EXPECT_TRUE(timerRan);
}

}  // namespace
}  // namespace dragon::daemon
