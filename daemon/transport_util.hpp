// SPDX-License-Identifier: MIT
// What every Transport implementation shares (header-only: the UCX module links no daemon
// code): the constant-time secret comparison and the rate limit on logging dropped messages,
// so that a flood of bad messages cannot fill the log.
#pragma once

#include "base/log.hpp"

#include <cstdint>
#include <string_view>

namespace dragon::transport {

// Equal lengths and bytes, in time that depends on the length only.
inline bool sameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  volatile unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = static_cast<unsigned char>(diff | (static_cast<unsigned char>(a[i]) ^
                                              static_cast<unsigned char>(b[i])));
  }
  return diff == 0;
}

// At most kBurst drops logged per kWindowNs; the number left out is logged when the next
// window opens.
class DropLog {
 public:
  static constexpr unsigned kBurst = 5;
  static constexpr std::int64_t kWindowNs = 10'000'000'000;

  // Whether this drop, at `nowNs`, may be logged.
  bool admit(std::int64_t nowNs, const char* component, std::uint32_t selfNode) {
    if (nowNs - windowStartNs_ >= kWindowNs) {
      if (suppressed_ > 0) {
        DRAGON_LOG(Warn, component, "node %u: %llu more dropped messages were not logged",
                   selfNode, static_cast<unsigned long long>(suppressed_));
      }
      windowStartNs_ = nowNs;
      inWindow_ = 0;
      suppressed_ = 0;
    }
    if (inWindow_ >= kBurst) {
      ++suppressed_;
      return false;
    }
    ++inWindow_;
    return true;
  }

 private:
  std::int64_t windowStartNs_ = 0;
  unsigned inWindow_ = 0;
  std::uint64_t suppressed_ = 0;
};

}  // namespace dragon::transport
