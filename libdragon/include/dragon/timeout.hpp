// SPDX-License-Identifier: MIT
// How long a blocking call may wait: not at all, for a duration, or forever.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>

namespace dragon {

class Timeout {
 public:
  static constexpr std::int64_t kForeverNs = std::numeric_limits<std::int64_t>::max();

  // A try: return at once when the call would block.
  static constexpr Timeout none() { return Timeout(0); }
  static constexpr Timeout forever() { return Timeout(kForeverNs); }
  template <typename Rep, typename Period>
  static constexpr Timeout after(std::chrono::duration<Rep, Period> d) {
    if (!(d > d.zero())) return none();
    // A duration past what int64 nanoseconds hold (seconds::max(), say) waits for ever; its
    // cast to nanoseconds would overflow.
    if (std::chrono::duration<double, std::nano>(d).count() >= static_cast<double>(kForeverNs)) {
      return forever();
    }
    return Timeout(static_cast<std::int64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
  }

  constexpr std::int64_t nanoseconds() const { return ns_; }
  constexpr bool isNone() const { return ns_ == 0; }
  constexpr bool isForever() const { return ns_ == kForeverNs; }

 private:
  constexpr explicit Timeout(std::int64_t ns) : ns_(ns) {}
  std::int64_t ns_;
};

// A point on CLOCK_MONOTONIC by which a call must return, made from a Timeout once at the start
// of the call so that retries do not stretch it.
class Deadline {
 public:
  explicit Deadline(Timeout t);
  bool isForever() const { return forever_; }
  bool isNow() const { return now_; }
  bool expired() const;
  // Absolute CLOCK_MONOTONIC time in ns (meaningless when forever).
  std::int64_t monotonicNs() const { return absNs_; }

 private:
  std::int64_t absNs_ = 0;
  bool forever_ = false;
  bool now_ = false;
};

// CLOCK_MONOTONIC in ns.
std::int64_t monotonicNowNs() noexcept;

}  // namespace dragon
