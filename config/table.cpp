// SPDX-License-Identifier: MIT
// The key table, and the parsers and formatters every source shares.
#include "config/config.hpp"

#include <cctype>
#include <charconv>
#include <limits>

namespace dragon::config {
namespace {

constexpr std::int64_t kKiB = 1024;
constexpr std::int64_t kMiB = kKiB * 1024;
constexpr std::int64_t kGiB = kMiB * 1024;
constexpr std::int64_t kTiB = kGiB * 1024;
constexpr std::int64_t kSecond = 1'000'000'000;

constexpr KeySpec kKeys[] = {
    {"log_level", Type::Enum, "warn", "least severe log level written", "debug|info|warn|error|off"},
    {"runtime_dir", Type::String, "",
     "dragond's private directory (0700); empty: $XDG_RUNTIME_DIR/dragon when that is a "
     "directory of the user's, else /tmp/dragon-UID"},
    {"socket", Type::String, "", "dragond's Unix socket; empty: RUNTIME_DIR/dragond.sock"},
    {"allow_root", Type::Bool, "false", "let dragond run as root (it never should serve users so)"},
    {"pool.default_size", Type::Size, "256MiB", "size of a pool created without one", "",
     64 * kKiB, kTiB},
    {"pool.prefault", Type::Bool, "true", "fault every page of a pool in when it is mapped"},
    {"channel.capacity", Type::Int, "64", "messages a channel holds when created without a capacity",
     "", 1, std::int64_t{1} << 24},
    {"channel.inline_size", Type::Size, "256",
     "largest message copied into a channel's ring (larger ones travel in pool blocks)", "", 0,
     kMiB},
    {"process.kill_grace", Type::Duration, "5s",
     "how long dragond waits after SIGTERM before SIGKILL when it stops processes", "", 0,
     3600 * kSecond},
    {"cluster.transport", Type::Enum, "ucx",
     "how the dragonds of a multi-node job reach each other (a module in LIBDIR/dragon)", "ucx"},
    {"cluster.rma", Type::Enum, "auto",
     "how remote memory transfers travel to a node: auto (UCX RMA where UCX has it natively, "
     "else transfer messages), messages, native (UCX RMA, emulated over tcp)",
     "auto|messages|native"},
    {"cluster.connect_timeout", Type::Duration, "30s",
     "how long the wire-up of a multi-node job (PMIx exchange, first contact) may take", "",
     kSecond / 10, 3600 * kSecond},
    {"cluster.heartbeat_interval", Type::Duration, "250ms",
     "how often a dragond tells the head node it is alive (and hears back)", "",
     kSecond / 100, 600 * kSecond},
    {"cluster.node_timeout", Type::Duration, "1500ms",
     "a node not heard from for this long is lost (a partition, a hung node)", "",
     kSecond / 10, 3600 * kSecond},
    {"cluster.poll", Type::Duration, "0s",
     "how long dragond keeps polling for the next event after one before it sleeps, in a "
     "multi-node job (0s: it sleeps at once); a remote operation then costs no wake-up. For "
     "nodes where dragond has a core to itself",
     "", 0, kSecond / 100},
    {"cluster.parked_send_bytes", Type::Size, "1GiB",
     "bytes of waiting sends (to a full channel) that a dragond holds for its channels; past "
     "it a sender's message waits on its own node, whose dragond asks again 1 to 100 ms apart "
     "(one send is always held, and one that has waited a second)",
     "", 0, kTiB},
    {"cluster.node_lost_grace", Type::Duration, "2s",
     "after a node is lost, how long the job's processes have to act on NodeLost before the "
     "job is ended", "", 0, 3600 * kSecond},
};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

enum class Num { Ok, NotANumber, TooLarge };

// Splits "256MiB" into 256 and "MiB".
Num splitNumber(std::string_view s, std::int64_t& n, std::string_view& unit) {
  const auto* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, n);
  if (ec == std::errc::result_out_of_range) {
    return Num::TooLarge;
  }
  if (ec != std::errc() || p == s.data() || n < 0) {
    return Num::NotANumber;
  }
  unit = trim(std::string_view(p, static_cast<std::size_t>(end - p)));
  return Num::Ok;
}

Status outOfRange(const KeySpec& spec, std::string_view text) {
  Value lo{spec.min, {}, {}};
  Value hi{spec.max, {}, {}};
  return Status(StatusCode::InvalidArgument, "'" + std::string(text) + "' is outside " +
                                                 formatValue(spec, lo) + " .. " +
                                                 formatValue(spec, hi));
}

struct Unit {
  std::string_view name;  // lower case
  std::int64_t scale;
};

// "<whole number><unit>" -> number * scale, the unit looked up case-insensitively in `units`
// (an empty name there allows a bare number).
Result<std::int64_t> parseScaled(const KeySpec& spec, std::string_view text,
                                 std::span<const Unit> units, const char* what,
                                 const char* unitKind, const char* unitList) {
  std::string_view unit;
  std::int64_t n = 0;
  const Num r = splitNumber(text, n, unit);
  if (r == Num::TooLarge) {
    return outOfRange(spec, text);
  }
  if (r != Num::Ok) {
    return Status(StatusCode::InvalidArgument, "'" + std::string(text) + "' is not " + what);
  }
  const std::string u = lower(unit);
  for (const Unit& candidate : units) {
    if (candidate.name == u) {
      if (n > std::numeric_limits<std::int64_t>::max() / candidate.scale) {
        return outOfRange(spec, text);
      }
      return n * candidate.scale;
    }
  }
  if (u.empty()) {
    return Status(StatusCode::InvalidArgument, "'" + std::string(text) + "' is not " + what);
  }
  return Status(StatusCode::InvalidArgument, "'" + std::string(text) + "' has an unknown " +
                                                 unitKind + " '" + std::string(unit) + "' (" +
                                                 unitList + ")");
}

}  // namespace

std::span<const KeySpec> keys() noexcept { return kKeys; }

const KeySpec* findKey(std::string_view name) noexcept {
  for (const KeySpec& k : kKeys) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

std::string envName(std::string_view key) {
  std::string s = "DRAGON_";
  for (char c : key) {
    s += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return s;
}

Result<Value> parseValue(const KeySpec& spec, std::string_view raw) {
  const std::string_view text = trim(raw);
  Value v;
  switch (spec.type) {
    case Type::Bool: {
      const std::string t = lower(text);
      if (t == "true" || t == "yes" || t == "on" || t == "1") {
        v.number = 1;
      } else if (t == "false" || t == "no" || t == "off" || t == "0") {
        v.number = 0;
      } else {
        return Status(StatusCode::InvalidArgument,
                      "'" + std::string(text) + "' is not a boolean (true/false, yes/no, on/off)");
      }
      return v;
    }
    case Type::Int: {
      std::string_view unit;
      const Num r = splitNumber(text, v.number, unit);
      if (r == Num::TooLarge) {
        return outOfRange(spec, text);
      }
      if (r != Num::Ok || !unit.empty()) {
        return Status(StatusCode::InvalidArgument, "'" + std::string(text) + "' is not a whole number");
      }
      break;
    }
    case Type::Size: {
      static constexpr Unit kSizeUnits[] = {
          {"", 1},       {"b", 1},        {"k", kKiB},    {"kb", kKiB},   {"kib", kKiB},
          {"m", kMiB},   {"mb", kMiB},    {"mib", kMiB},  {"g", kGiB},    {"gb", kGiB},
          {"gib", kGiB}, {"t", kTiB},     {"tb", kTiB},   {"tib", kTiB}};
      DRAGON_ASSIGN_OR_RETURN(v.number,
                              parseScaled(spec, text, kSizeUnits, "a size (e.g. 4096, 64KiB, 256MiB, 1GiB)",
                                          "size unit", "B, KiB, MiB, GiB, TiB; K/KB mean KiB"));
      break;
    }
    case Type::Duration: {
      static constexpr Unit kTimeUnits[] = {
          {"ns", 1},           {"us", 1000},         {"ms", 1'000'000},         {"s", kSecond},
          {"m", 60 * kSecond}, {"min", 60 * kSecond}, {"h", 3600 * kSecond}};
      DRAGON_ASSIGN_OR_RETURN(v.number,
                              parseScaled(spec, text, kTimeUnits, "a duration (e.g. 250ms, 5s, 2m)",
                                          "time unit", "ns, us, ms, s, m (or min), h"));
      break;
    }
    case Type::String:
      v.text = std::string(text);
      return v;
    case Type::Enum: {
      std::string_view rest = spec.choices;
      while (!rest.empty()) {
        const auto bar = rest.find('|');
        const std::string_view choice = rest.substr(0, bar);
        if (choice == text) {
          v.text = std::string(text);
          return v;
        }
        rest = bar == std::string_view::npos ? std::string_view() : rest.substr(bar + 1);
      }
      return Status(StatusCode::InvalidArgument, "'" + std::string(text) + "' is not one of " +
                                                     std::string(spec.choices));
    }
  }
  if (v.number < spec.min || v.number > spec.max) {
    return outOfRange(spec, text);
  }
  return v;
}

std::string formatValue(const KeySpec& spec, const Value& v) {
  switch (spec.type) {
    case Type::Bool:
      return v.number != 0 ? "true" : "false";
    case Type::Int:
      return std::to_string(v.number);
    case Type::Size: {
      static constexpr std::pair<std::int64_t, const char*> kUnits[] = {
          {kTiB, "TiB"}, {kGiB, "GiB"}, {kMiB, "MiB"}, {kKiB, "KiB"}};
      for (auto [mult, name] : kUnits) {
        if (v.number != 0 && v.number % mult == 0) return std::to_string(v.number / mult) + name;
      }
      return std::to_string(v.number);
    }
    case Type::Duration: {
      static constexpr std::pair<std::int64_t, const char*> kUnits[] = {
          {3600 * kSecond, "h"}, {60 * kSecond, "m"}, {kSecond, "s"}, {1'000'000, "ms"},
          {1000, "us"}};
      for (auto [mult, name] : kUnits) {
        if (v.number != 0 && v.number % mult == 0) return std::to_string(v.number / mult) + name;
      }
      return std::to_string(v.number) + "ns";
    }
    case Type::String:
    case Type::Enum:
      break;
  }
  // Quote strings so that the printed file loads back unchanged.
  std::string q = "\"";
  for (char c : v.text) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}

}  // namespace dragon::config
