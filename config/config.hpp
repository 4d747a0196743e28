// SPDX-License-Identifier: MIT
// Dragon's configuration: every key declared once in a table (name, type, default, bounds,
// help) that drives YAML loading, validation, DRAGON_* environment overrides and printing.
// Precedence, lowest first: built-in defaults < /etc/dragon/dragon.yaml <
// ~/.config/dragon/dragon.yaml < --config FILE < DRAGON_* environment < command-line overrides.
// Errors name where the bad value came from (file:line:column, variable or flag) and the key.
#pragma once

#include "base/private.hpp"

#include <dragon/result.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dragon::config {

enum class Type { Bool, Int, Size, Duration, String, Enum };

struct KeySpec {
  std::string_view name;          // dotted: "pool.default_size" is `pool: {default_size: …}`
  Type type;
  std::string_view defaultValue;  // text, parsed like any other source
  std::string_view help;
  std::string_view choices = {};  // Enum: "a|b|c"
  std::int64_t min = 0;           // Int, Size (bytes), Duration (ns): inclusive bounds
  std::int64_t max = 0;
};

// The table of every key dragond and the launcher know.
std::span<const KeySpec> keys() noexcept;
const KeySpec* findKey(std::string_view name) noexcept;
// DRAGON_POOL_DEFAULT_SIZE for pool.default_size.
std::string envName(std::string_view key);

struct Value {
  std::int64_t number = 0;  // Bool (0/1), Int, Size in bytes, Duration in ns
  std::string text;         // String, Enum
  std::string source;       // "default", "FILE:LINE:COL", "environment DRAGON_X", "--flag"
};

#ifndef DRAGON_SYSTEM_CONFIG  // set by the build: PREFIX/SYSCONFDIR/dragon/dragon.yaml
#define DRAGON_SYSTEM_CONFIG "/etc/dragon/dragon.yaml"
#endif

struct LoadOptions {
  std::optional<std::string> systemFile = DRAGON_SYSTEM_CONFIG;  // optional if absent
  std::optional<std::string> userFile;      // default: $XDG_CONFIG_HOME or ~/.config, optional
  std::optional<std::string> explicitFile;  // --config FILE: must exist
  std::vector<std::pair<std::string, std::string>> environment;  // default: the process's
  bool useProcessEnvironment = true;
  // Command-line overrides: (key, text, flag name for messages).
  struct Override {
    std::string key;
    std::string text;
    std::string flag;
  };
  std::vector<Override> overrides;
};

class Config {
 public:
  static Result<Config> load(const LoadOptions& options);
  // Defaults only.
  static Config defaults();

  bool getBool(std::string_view key) const;
  std::int64_t getInt(std::string_view key) const;
  std::uint64_t getSize(std::string_view key) const;
  std::int64_t getDurationNs(std::string_view key) const;
  const std::string& getString(std::string_view key) const;  // String and Enum
  const Value& get(std::string_view key) const;

  // Loadable YAML: one `key: value  # source` line per key, in table order.
  std::string print() const;
  // Non-fatal notes (an unknown DRAGON_* variable: the environment is shared with other tools).
  const std::vector<std::string>& warnings() const noexcept { return warnings_; }

 private:
  std::map<std::string, Value, std::less<>> values_;
  std::vector<std::string> warnings_;
  friend class Loader;
};

// Where the configuration puts dragond's socket: the `socket` key, else `runtime_dir`'s
// dragond.sock; empty when it sets neither (then the client library's default applies). What
// dragond listens on, and where the launcher and Python look for it.
std::string configuredSocketPath(const Config& config);

// Parsers shared by every source, exposed for tests: the value as text -> a Value, or a
// message saying what was expected.
Result<Value> parseValue(const KeySpec& spec, std::string_view text);
std::string formatValue(const KeySpec& spec, const Value& v);

}  // namespace dragon::config
