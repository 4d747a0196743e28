// SPDX-License-Identifier: MIT
#include "daemon/event_loop.hpp"

#include "base/log.hpp"

#include <dragon/timeout.hpp>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

namespace dragon::daemon {

namespace {
constexpr int kTimerKey = -1;
constexpr int kPostKey = -2;
std::uint64_t key(int fd, std::uint32_t generation) {
  return (std::uint64_t{generation} << 32) | static_cast<std::uint32_t>(fd);
}
}  // namespace

EventLoop::EventLoop(UniqueFd epoll, UniqueFd timer, std::unique_ptr<Posted> posted)
    : epoll_(std::move(epoll)), timerFd_(std::move(timer)), posted_(std::move(posted)) {}

Result<EventLoop> EventLoop::create() {
  UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  if (!ep) {
    return Status::fromErrno("epoll_create1", errno);
  }
  UniqueFd tf(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!tf) {
    return Status::fromErrno("timerfd_create", errno);
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = key(kTimerKey, 0);
  if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, tf.get(), &ev) != 0) {
    return Status::fromErrno("epoll_ctl(timerfd)", errno);
  }
  auto posted = std::make_unique<Posted>();
  posted->fd = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!posted->fd) {
    return Status::fromErrno("eventfd", errno);
  }
  ev.data.u64 = key(kPostKey, 0);
  if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, posted->fd.get(), &ev) != 0) {
    return Status::fromErrno("epoll_ctl(eventfd)", errno);
  }
  return EventLoop(std::move(ep), std::move(tf), std::move(posted));
}

Status EventLoop::add(int fd, std::uint32_t events, Handler handler) {
  const std::uint32_t gen = ++generation_;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = key(fd, gen);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return Status::fromErrno("epoll_ctl(add)", errno);
  }
  handlers_[fd] = Entry{gen, std::make_shared<Handler>(std::move(handler))};
  return Status::ok();
}

Status EventLoop::modify(int fd, std::uint32_t events) {
  auto it = handlers_.find(fd);
  if (it == handlers_.end()) {
    return Status(StatusCode::NotFound, "fd is not watched");
  }
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = key(fd, it->second.generation);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return Status::fromErrno("epoll_ctl(mod)", errno);
  }
  return Status::ok();
}

void EventLoop::remove(int fd) {
  if (handlers_.erase(fd) != 0) {
    (void)epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  }
}

EventLoop::TimerId EventLoop::addTimer(std::int64_t atNs, std::function<void()> fn) {
  const TimerId id = nextTimer_++;
  timers_[id] = Timer{atNs, std::move(fn)};
  byTime_.emplace(atNs, id);
  armTimer();
  return id;
}

EventLoop::TimerId EventLoop::addTimerAfterNs(std::int64_t ns, std::function<void()> fn) {
  const std::int64_t now = monotonicNowNs();  // saturated: a huge delay must not wrap to the past
  return addTimer(ns > INT64_MAX - now ? INT64_MAX : now + ns, std::move(fn));
}

void EventLoop::cancelTimer(TimerId id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) {
    return;
  }
  auto range = byTime_.equal_range(it->second.atNs);
  for (auto b = range.first; b != range.second; ++b) {
    if (b->second == id) {
      byTime_.erase(b);
      break;
    }
  }
  timers_.erase(it);
}

void EventLoop::post(std::function<void()> fn) {
  bool wake = false;
  {
    std::lock_guard lk(posted_->mu);
    wake = posted_->fns.empty();  // else the loop has been woken and not run them yet
    posted_->fns.push_back(std::move(fn));
  }
  if (wake) {
    const std::uint64_t one = 1;
    (void)!write(posted_->fd.get(), &one, sizeof one);
  }
}

void EventLoop::runPosted() {
  std::uint64_t n = 0;
  (void)!read(posted_->fd.get(), &n, sizeof n);
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard lk(posted_->mu);
    fns.swap(posted_->fns);
  }
  for (auto& fn : fns) fn();
}

void EventLoop::armTimer() {
  const std::int64_t next = byTime_.empty() ? 0 : byTime_.begin()->first;
  if (next == armedAt_) {
    return;
  }
  armedAt_ = next;
  itimerspec spec{};
  if (next != 0) {
    const std::int64_t at = next <= 0 ? 1 : next;
    spec.it_value.tv_sec = at / 1'000'000'000;
    spec.it_value.tv_nsec = at % 1'000'000'000;
  }
  (void)timerfd_settime(timerFd_.get(), TFD_TIMER_ABSTIME, &spec, nullptr);
}

void EventLoop::fireTimers() {
  // Only to clear the timerfd's readiness: the timers due are found by their times below (a
  // spurious wake-up reads EAGAIN and fires nothing early).
  std::uint64_t expirations = 0;
  if (read(timerFd_.get(), &expirations, sizeof expirations) < 0 && errno != EAGAIN) {
    DRAGON_LOG(Warn, "loop", "reading the timerfd: %s", std::strerror(errno));
  }
  armedAt_ = -1;
  const std::int64_t now = monotonicNowNs();
  while (!byTime_.empty() && byTime_.begin()->first <= now) {
    const TimerId id = byTime_.begin()->second;
    byTime_.erase(byTime_.begin());
    auto it = timers_.find(id);
    if (it == timers_.end()) {
      continue;
    }
    auto fn = std::move(it->second.fn);
    timers_.erase(it);
    fn();
  }
  armTimer();
}

Status EventLoop::run() {
  epoll_event events[64];
  stopping_ = false;  // a loop stopped once may run again
  while (!stopping_) {
    int n = epoll_wait(epoll_.get(), events, 64, deferred_.empty() && pollNs_ == 0 ? -1 : 0);
    if (n == 0 && deferred_.empty() && pollNs_ > 0) {
      // Nothing now: poll a while (setPollNs) before sleeping.
      const std::int64_t until = monotonicNowNs() + pollNs_;
      // Yielding between looks: a process that needs the CPU (another dragond of an
      // oversubscribed host, the job's own work) gets it, and polling costs only idle time.
      while (n == 0 && monotonicNowNs() < until) {
        sched_yield();
        n = epoll_wait(epoll_.get(), events, 64, 0);
      }
      if (n == 0) n = epoll_wait(epoll_.get(), events, 64, -1);
    }
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return Status::fromErrno("epoll_wait", errno);
    }
    for (int i = 0; i < n && !stopping_; ++i) {
      const int fd = static_cast<int>(static_cast<std::uint32_t>(events[i].data.u64));
      const auto gen = static_cast<std::uint32_t>(events[i].data.u64 >> 32);
      if (fd == kTimerKey) {
        fireTimers();
        continue;
      }
      if (fd == kPostKey) {
        runPosted();
        continue;
      }
      auto it = handlers_.find(fd);
      if (it == handlers_.end() || it->second.generation != gen) {
        continue;  // removed (and perhaps reused) by an earlier handler of this batch
      }
      auto handler = it->second.handler;  // keeps it alive if the handler removes itself
      (*handler)(events[i].events);
    }
    std::vector<std::function<void()>> now;
    now.swap(deferred_);
    std::size_t ran = 0;
    while (ran < now.size() && !stopping_) now[ran++]();
    // Stopped: what is left runs if the loop runs again, before anything deferred since.
    deferred_.insert(deferred_.begin(), std::make_move_iterator(now.begin() + static_cast<std::ptrdiff_t>(ran)),
                     std::make_move_iterator(now.end()));
  }
  return Status::ok();
}

}  // namespace dragon::daemon
