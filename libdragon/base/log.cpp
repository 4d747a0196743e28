// SPDX-License-Identifier: MIT
#include "base/log.hpp"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

namespace dragon::base {
namespace {

LogLevel parseLevel(const char* s) {
  if (s == nullptr) {
    return LogLevel::Warn;
  }
  static constexpr struct {
    const char* name;
    LogLevel level;
  } kNames[] = {{"debug", LogLevel::Debug}, {"info", LogLevel::Info}, {"warn", LogLevel::Warn},
                {"error", LogLevel::Error}, {"off", LogLevel::Off}};
  for (const auto& n : kNames) {
    if (std::strcmp(s, n.name) == 0) {
      return n.level;
    }
  }
  return LogLevel::Warn;
}

const char* levelName(LogLevel l) {
  switch (l) {
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warn: return "warn";
    case LogLevel::Error: return "error";
    case LogLevel::Off: break;
  }
  return "off";
}

}  // namespace

std::atomic<int>& threshold() noexcept {
  static std::atomic<int> level{static_cast<int>(parseLevel(std::getenv("DRAGON_LOG_LEVEL")))};
  return level;
}

LogLevel logThreshold() noexcept {
  return static_cast<LogLevel>(threshold().load(std::memory_order_relaxed));
}

void setLogThreshold(LogLevel level) noexcept {
  threshold().store(static_cast<int>(level), std::memory_order_relaxed);
}

bool parseLogLevel(const char* name, LogLevel& out) noexcept {
  if (name == nullptr) return false;
  static constexpr const char* kNames[] = {"debug", "info", "warn", "error", "off"};
  for (int i = 0; i < 5; ++i) {
    if (std::strcmp(name, kNames[i]) == 0) {
      out = static_cast<LogLevel>(i);
      return true;
    }
  }
  return false;
}

void logMessage(LogLevel level, std::string_view component, const char* fmt, ...) noexcept {
  char buf[1024];
  int n = std::snprintf(buf, sizeof buf, "dragon[%d] %s %.*s: ", static_cast<int>(getpid()),
                        levelName(level), static_cast<int>(component.size()), component.data());
  if (n < 0 || static_cast<std::size_t>(n) >= sizeof buf) {
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + n, sizeof buf - static_cast<std::size_t>(n) - 1, fmt, ap);
  va_end(ap);
  std::size_t len = static_cast<std::size_t>(n) + (m < 0 ? 0 : static_cast<std::size_t>(m));
  if (len > sizeof buf - 2) {
    len = sizeof buf - 2;
  }
  buf[len++] = '\n';
  // One write() per line, so lines from concurrent processes never interleave.
  ssize_t w = write(STDERR_FILENO, buf, len);
  (void)w;
}

}  // namespace dragon::base
