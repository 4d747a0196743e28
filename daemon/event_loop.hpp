// SPDX-License-Identifier: MIT
// dragond's event loop: epoll over every fd the daemon waits on (listening socket, client
// connections, signalfd, pidfds, output pipes) plus one timerfd for all deadlines.
//
// Why epoll with signalfd / pidfd / timerfd rather than Asio: everything dragond waits for is
// already an fd on Linux, so one epoll set covers it with no extra threads, no signal handlers
// and no dependency; Asio would add an abstraction over exactly these calls.
//
// Owning thread: the daemon's main thread. Nothing here is thread-safe except post(), by which
// other threads (the gateway's) hand work to the loop.
#pragma once

#include "base/private.hpp"

#include <dragon/result.hpp>
#include <dragon/unique_fd.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace dragon::daemon {

class EventLoop {
 public:
  using Handler = std::function<void(std::uint32_t events)>;
  using TimerId = std::uint64_t;

  static Result<EventLoop> create();

  // Watches `fd` (which the caller owns and keeps open until remove()).
  Status add(int fd, std::uint32_t events, Handler handler);
  Status modify(int fd, std::uint32_t events);
  // Safe from inside a handler, including the fd's own.
  void remove(int fd);

  // Runs `fn` once at CLOCK_MONOTONIC time `atNs`.
  TimerId addTimer(std::int64_t atNs, std::function<void()> fn);
  TimerId addTimerAfterNs(std::int64_t ns, std::function<void()> fn);
  void cancelTimer(TimerId id);

  // Runs `fn` once this turn's events have been handled, before the loop sleeps again (work
  // deferred by deferred work waits for the next turn). Costs no system call, unlike a timer
  // due now (a timerfd_settime, slow in a VM: it was a fifth of dragond's time per message).
  void defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }

  // Thread-safe: runs `fn` on the loop's thread at its next turn, in the order posted (an
  // eventfd in the epoll set wakes the loop).
  void post(std::function<void()> fn);

  // After handling events, keep polling (epoll_wait without sleeping, yielding the CPU between
  // looks) for up to `ns` before sleeping: the next event is handled without a wake-up (the
  // latency of a multi-node job's request chain), at the price of a CPU kept busy while
  // nothing else wants it. 0: never.
  void setPollNs(std::int64_t ns) noexcept { pollNs_ = ns; }

  // Dispatches events until stop() (called from a handler or timer).
  Status run();
  void stop() noexcept { stopping_ = true; }

  std::size_t watchedFds() const noexcept { return handlers_.size(); }
  std::size_t pendingTimers() const noexcept { return timers_.size(); }

 private:
  struct Posted {
    std::mutex mu;
    std::vector<std::function<void()>> fns;  // under mu
    UniqueFd fd;                             // eventfd: fns is not empty
  };

  EventLoop(UniqueFd epoll, UniqueFd timer, std::unique_ptr<Posted> posted);
  void runPosted();
  void fireTimers();
  void armTimer();

  struct Entry {
    std::uint32_t generation;
    std::shared_ptr<Handler> handler;
  };
  struct Timer {
    std::int64_t atNs;
    std::function<void()> fn;
  };

  UniqueFd epoll_;
  UniqueFd timerFd_;
  std::map<int, Entry> handlers_;
  std::uint32_t generation_ = 0;
  std::map<TimerId, Timer> timers_;
  std::multimap<std::int64_t, TimerId> byTime_;
  TimerId nextTimer_ = 1;
  std::int64_t armedAt_ = -1;
  bool stopping_ = false;
  std::unique_ptr<Posted> posted_;  // at one address, whatever moves the loop
  std::vector<std::function<void()>> deferred_;
  std::int64_t pollNs_ = 0;
};

}  // namespace dragon::daemon
