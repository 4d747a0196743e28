// SPDX-License-Identifier: MIT
// Futex primitives on process-shared 32-bit words, and the wait-word protocol every blocking
// object of the data plane uses.
#pragma once

#include "base/private.hpp"

#include <dragon/timeout.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

namespace dragon::base {

inline void cpuRelax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

enum class WaitOutcome { Woken, TimedOut };

// Sleeps while *word == expected, until woken or the deadline passes. Spurious wake-ups are
// possible: callers re-check their condition. EINTR is treated as a wake-up, and so is the end
// of a slice of at most 1 s: a notifier killed before its wake-up leaves no sleeper for longer.
WaitOutcome futexWait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                      const Deadline& deadline) noexcept;
void futexWakeAll(std::atomic<std::uint32_t>* word) noexcept;

struct FutexWaitItem {
  std::atomic<std::uint32_t>* word;
  std::uint32_t expected;
};
inline constexpr std::size_t kMaxWaitItems = 128;  // FUTEX_WAITV_MAX
// Sleeps until any word differs from its expected value or is woken, or the deadline passes.
WaitOutcome futexWaitMany(std::span<const FutexWaitItem> items, const Deadline& deadline) noexcept;

// A wait word: bit 0 says "someone sleeps on me", bits 1.. count changes. Waiters arm the bit,
// re-check their condition, then sleep on the armed value. Notifiers change the state, issue a
// full fence, then call notify(), which costs one load when nobody sleeps. A waiter killed while
// armed costs at most one spurious wake-up: the next notify clears the bit.
class WaitWord {
 public:
  // Sets the sleeper bit (seq_cst) and returns the value to sleep on.
  static std::uint32_t arm(std::atomic<std::uint32_t>& w) noexcept {
    std::uint32_t v = w.load(std::memory_order_relaxed);
    while ((v & 1u) == 0) {
      if (w.compare_exchange_weak(v, v | 1u, std::memory_order_seq_cst)) {
        return v | 1u;
      }
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return v;
  }
  // Call after the state change and a seq_cst fence (see publishFence()).
  static void notify(std::atomic<std::uint32_t>& w) noexcept {
    std::uint32_t v = w.load(std::memory_order_relaxed);
    if ((v & 1u) != 0 && w.compare_exchange_strong(v, (v + 2u) & ~1u)) {
      futexWakeAll(&w);
    }
  }
  // Bumps the counter whether or not anyone sleeps, and wakes sleepers (used by close()).
  static void notifyAlways(std::atomic<std::uint32_t>& w) noexcept {
    std::uint32_t old = w.fetch_add(2u);
    if ((old & 1u) != 0) {
      w.fetch_and(~1u);
    }
    futexWakeAll(&w);
  }
};

// The fence between a state change and WaitWord::notify().
inline void publishFence() noexcept { std::atomic_thread_fence(std::memory_order_seq_cst); }

// How many cpuRelax() calls take one microsecond on this machine, measured once per process
// (a pause costs 3 to 150 cycles depending on the CPU, so budgets are set in time, not counts).
std::uint32_t relaxesPerMicrosecond() noexcept;
// sched_yield(): gives the core to another runnable process, if any.
void yieldCore() noexcept;

// Bounded, adaptive spinning before a futex sleep. The budget is a time: it doubles while
// spinning pays off and halves after two sleeps in a row, so oversubscribed processes stop
// burning the core their peer needs. A single sleep leaves it alone: when one side of a
// ping-pong sleeps once (a descheduled vCPU), its peer's next wait lasts a whole wake-up, and
// shrinking on that would cascade into both sides sleeping every turn. The floor (~2 us) stays
// well below a futex sleep and wake-up (~10 us here). Process-local; relaxed atomics make
// sharing a handle harmless.
class AdaptiveSpin {
 public:
  static constexpr std::uint32_t kMinUs = 2;
  static constexpr std::uint32_t kMaxUs = 50;
  static constexpr std::uint32_t kInitialUs = 20;

  AdaptiveSpin() noexcept : perUs_(relaxesPerMicrosecond()), budget_(kInitialUs * perUs_) {}

  std::uint32_t budget() const noexcept { return budget_.load(std::memory_order_relaxed); }
  void succeeded(std::uint32_t used) noexcept {
    misses_.store(0, std::memory_order_relaxed);
    const std::uint32_t b = budget();
    if (used * 2 >= b && b < kMaxUs * perUs_) {
      budget_.store(b * 2 > kMaxUs * perUs_ ? kMaxUs * perUs_ : b * 2, std::memory_order_relaxed);
    }
  }
  void failed() noexcept {
    if (misses_.fetch_add(1, std::memory_order_relaxed) == 0) {
      return;
    }
    const std::uint32_t b = budget();
    budget_.store(b / 2 < kMinUs * perUs_ ? kMinUs * perUs_ : b / 2, std::memory_order_relaxed);
  }

  // Spins until pred() holds or the budget is spent; true when pred() held. One poll per
  // pause: polling a line more often only steals it from the writer filling it.
  template <typename Pred>
  bool spin(Pred&& pred) noexcept {
    const std::uint32_t b = budget();
    for (std::uint32_t i = 0; i < b; ++i) {
      if (pred()) {
        succeeded(i);
        return true;
      }
      cpuRelax();
    }
    failed();
    return false;
  }

  // After a failed spin: yields the core up to kYields times, checking pred() after each.
  // When more processes are runnable than there are cores, the one we wait for is often
  // queued behind us, and a yield lets it run without a futex sleep and wake-up. Sets
  // `contended` when a yield gave the core away (it took long): the machine is oversubscribed.
  template <typename Pred>
  static bool yieldWhile(Pred&& pred, bool& contended) noexcept {
    for (int i = 0; i < kYields; ++i) {
      const std::int64_t t0 = monotonicNowNs();
      yieldCore();
      contended = contended || monotonicNowNs() - t0 > kContendedYieldNs;
      if (pred()) {
        return true;
      }
    }
    return false;
  }

  // After a wait that spinning did not cover: if it lasted less than the ceiling and nobody
  // else needed the core, spinning that long would have been cheaper than sleeping, so the
  // budget grows to twice the wait. (Growing only on spin successes can never escape the
  // floor once waits are longer than it, e.g. a receiver waiting out a 1 MiB memcpy.)
  void learn(std::int64_t waitedNs, bool contended) noexcept {
    if (contended || waitedNs <= 0 || waitedNs >= std::int64_t{kMaxUs} * 1000) {
      return;
    }
    const auto want = static_cast<std::uint32_t>(waitedNs * 2 * perUs_ / 1000);
    if (want > budget()) {
      budget_.store(want > kMaxUs * perUs_ ? kMaxUs * perUs_ : want, std::memory_order_relaxed);
      misses_.store(0, std::memory_order_relaxed);
    }
  }
  static constexpr std::int64_t kContendedYieldNs = 3000;
  static constexpr int kYields = 8;

 private:
  std::uint32_t perUs_;
  std::atomic<std::uint32_t> budget_;
  std::atomic<std::uint32_t> misses_{0};
};

}  // namespace dragon::base
