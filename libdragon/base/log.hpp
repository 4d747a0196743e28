// SPDX-License-Identifier: MIT
// Logging by component and level, to stderr. Never on a hot path.
#pragma once

#include "base/private.hpp"

#include <string_view>

namespace dragon::base {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

// The threshold, read once from DRAGON_LOG_LEVEL (debug, info, warn, error, off; default warn).
LogLevel logThreshold() noexcept;
// Overrides it (dragond's --log-level and config).
void setLogThreshold(LogLevel level) noexcept;
// "debug" .. "off"; false for anything else.
bool parseLogLevel(const char* name, LogLevel& out) noexcept;
void logMessage(LogLevel level, std::string_view component, const char* fmt, ...) noexcept
    __attribute__((format(printf, 3, 4)));

}  // namespace dragon::base

#define DRAGON_LOG(level, component, ...)                                         \
  do {                                                                            \
    if (::dragon::base::LogLevel::level >= ::dragon::base::logThreshold()) {      \
      ::dragon::base::logMessage(::dragon::base::LogLevel::level, component,      \
                                 __VA_ARGS__);                                    \
    }                                                                             \
  } while (0)
