// SPDX-License-Identifier: MIT
#include "base/futex.hpp"

#include <cerrno>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace dragon::base {
namespace {

// The longest one futex sleep lasts before the caller looks at its condition again. A process
// killed between its commit and its wake-up (a sender after publishing, a receiver after
// taking, a pool block's freer) leaves sleepers that no wake-up will reach: each finds the
// change by itself within this, instead of sleeping until its deadline, or for ever.
constexpr std::int64_t kSliceNs = 1'000'000'000;

// Until when one sleep lasts: the deadline, or the end of a slice before it (`sliced`).
std::int64_t sleepUntil(const Deadline& deadline, bool& sliced) noexcept {
  const std::int64_t sliceEnd = monotonicNowNs() + kSliceNs;
  sliced = deadline.isForever() || deadline.monotonicNs() > sliceEnd;
  return sliced ? sliceEnd : deadline.monotonicNs();
}

bool passed(const Deadline& deadline) noexcept {
  return !deadline.isForever() && monotonicNowNs() >= deadline.monotonicNs();
}

timespec toTimespec(std::int64_t ns) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  return ts;
}

}  // namespace

WaitOutcome futexWait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                      const Deadline& deadline) noexcept {
  if (deadline.isNow()) {
    return WaitOutcome::TimedOut;
  }
  bool sliced = false;
  timespec ts = toTimespec(sleepUntil(deadline, sliced));
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so retries never stretch it.
  long rc = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_BITSET,
                    expected, &ts, nullptr, FUTEX_BITSET_MATCH_ANY);
  if (rc == -1 && errno == ETIMEDOUT) {
    return sliced ? WaitOutcome::Woken : WaitOutcome::TimedOut;
  }
  return WaitOutcome::Woken;  // woken, EAGAIN (value changed) or EINTR: caller re-checks
}

std::uint32_t relaxesPerMicrosecond() noexcept {
  static const std::uint32_t kPerUs = [] {
    constexpr int kProbe = 2000;
    const std::int64_t t0 = monotonicNowNs();
    for (int i = 0; i < kProbe; ++i) {
      cpuRelax();
    }
    const std::int64_t ns = monotonicNowNs() - t0;
    const std::int64_t v = ns > 0 ? kProbe * 1000 / ns : 1000;
    return static_cast<std::uint32_t>(v < 1 ? 1 : (v > 10000 ? 10000 : v));
  }();
  return kPerUs;
}

void yieldCore() noexcept { sched_yield(); }

void futexWakeAll(std::atomic<std::uint32_t>* word) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr,
          nullptr, 0);
}

WaitOutcome futexWaitMany(std::span<const FutexWaitItem> items, const Deadline& deadline) noexcept {
  if (deadline.isNow()) {
    return WaitOutcome::TimedOut;
  }
  struct futex_waitv v[kMaxWaitItems] = {};
  const std::size_t n = items.size() < kMaxWaitItems ? items.size() : kMaxWaitItems;
  for (std::size_t i = 0; i < n; ++i) {
    v[i].val = items[i].expected;
    v[i].uaddr = reinterpret_cast<std::uintptr_t>(items[i].word);
    v[i].flags = FUTEX_32;  // shared (no FUTEX_PRIVATE_FLAG): the words live in shared memory
  }
  bool sliced = false;
  timespec ts = toTimespec(sleepUntil(deadline, sliced));
  long rc = syscall(SYS_futex_waitv, v, static_cast<unsigned>(n), 0u, &ts, CLOCK_MONOTONIC);
  if (rc == -1 && errno == ETIMEDOUT) {
    return sliced ? WaitOutcome::Woken : WaitOutcome::TimedOut;
  }
  if (rc == -1 && errno != EAGAIN && errno != EINTR) {
    // Nothing to wait on (no words), or no futex_waitv here (a kernel before 5.16, a seccomp
    // filter): a short nap, after which the caller looks again; the deadline still holds.
    if (passed(deadline)) return WaitOutcome::TimedOut;
    timespec nap{0, 1'000'000};
    clock_nanosleep(CLOCK_MONOTONIC, 0, &nap, nullptr);
    return passed(deadline) ? WaitOutcome::TimedOut : WaitOutcome::Woken;
  }
  return WaitOutcome::Woken;
}

}  // namespace dragon::base
