// SPDX-License-Identifier: MIT
// Loading the layers. yaml-cpp throws; every exception is caught here and becomes a Status.
#include "config/config.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <vector>

extern char** environ;

namespace dragon::config {
namespace {

std::size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string unknownKey(std::string_view name) {
  std::string msg = "unknown key '" + std::string(name) + "'";
  const KeySpec* best = nullptr;
  std::size_t bestDist = 4;
  for (const KeySpec& k : keys()) {
    const std::size_t d = editDistance(name, k.name);
    if (d < bestDist) {
      bestDist = d;
      best = &k;
    }
  }
  if (best != nullptr) {
    msg += " (did you mean '" + std::string(best->name) + "'?)";
  }
  return msg;
}

bool isSection(std::string_view prefix) {
  for (const KeySpec& k : keys()) {
    if (k.name.size() > prefix.size() && k.name.substr(0, prefix.size()) == prefix &&
        k.name[prefix.size()] == '.') {
      return true;
    }
  }
  return false;
}

std::string where(const std::string& path, const YAML::Mark& m) {
  return path + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
}

Status invalid(std::string msg) { return Status(StatusCode::InvalidArgument, std::move(msg)); }

}  // namespace

class Loader {
 public:
  explicit Loader(Config& c) : c_(c) {}

  Status set(const KeySpec& spec, std::string_view text, std::string source) {
    auto v = parseValue(spec, text);
    if (!v) {
      return invalid(source + ": key '" + std::string(spec.name) + "': " +
                     std::string(v.error().message()));
    }
    v->source = std::move(source);
    c_.values_[std::string(spec.name)] = std::move(*v);
    return Status::ok();
  }

  Status loadFile(const std::string& path, bool required) {
    std::ifstream in(path);
    if (!in) {
      if (!required && errno == ENOENT) {
        return Status::ok();
      }
      return Status::fromErrno("cannot read configuration file " + path, errno);
    }
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      // An ifstream opens a directory and reads nothing from it: it would set nothing. (A
      // pipe or /dev/null is read as any file.)
      return invalid("configuration file " + path + " is a directory");
    }
    std::stringstream text;
    text << in.rdbuf();
    if (in.bad()) return Status::fromErrno("cannot read configuration file " + path, errno);
    try {
      const std::vector<YAML::Node> documents = YAML::LoadAll(text.str());
      if (documents.size() > 1) {
        // Only the first would be read: what follows a `---` would be ignored unsaid.
        return invalid(where(path, documents[1].Mark()) +
                       ": a configuration file is one YAML document (this is its second)");
      }
      const YAML::Node root = documents.empty() ? YAML::Node() : documents.front();
      if (root.IsNull()) {
        return Status::ok();  // an empty file sets nothing
      }
      if (!root.IsMap()) {
        return invalid(where(path, root.Mark()) + ": the file must be a mapping of keys to values");
      }
      std::set<std::string> seen;
      return walk(root, "", path, seen);
    } catch (const YAML::Exception& e) {
      return invalid(where(path, e.mark) + ": YAML syntax error: " + e.msg);
    } catch (const std::exception& e) {
      return invalid(path + ": " + e.what());
    }
  }

  // Variables of Dragon's that are no configuration keys but are read by the launcher, the
  // module loader or the Python layer (documented in dragon(1) and docs/python.md), or set by
  // Dragon for the processes it starts: not warned about.
  static bool readElsewhere(const std::string& name) {
    static const std::set<std::string> kNames = {
        "DRAGON_DAEMON",          "DRAGON_PYTHON",        "DRAGON_MODULE_DIR",
        "DRAGON_PLACEMENT",       "DRAGON_PY_POOL_SIZE",  "DRAGON_PY_PREFAULT",
        "DRAGON_PROCESS_TEMPLATE", "DRAGON_CAPTURED_PIPES", "DRAGON_ORIGIN_NODE",
        "DRAGON_PARENT_LIFE",     "DRAGON_PARENT_START"};
    return kNames.contains(name);
  }

  Status loadEnvironment(const std::vector<std::pair<std::string, std::string>>& env) {
    for (const auto& [name, value] : env) {
      if (name.rfind("DRAGON_", 0) != 0) {
        continue;
      }
      const KeySpec* spec = nullptr;
      for (const KeySpec& k : keys()) {
        if (envName(k.name) == name) spec = &k;
      }
      if (spec == nullptr) {
        if (!readElsewhere(name)) {
          c_.warnings_.push_back("environment " + name +
                                 " is not a configuration variable; ignored");
        }
        continue;
      }
      DRAGON_TRY(set(*spec, value, "environment " + name));
    }
    return Status::ok();
  }

  Status loadOverride(const LoadOptions::Override& o) {
    const KeySpec* spec = findKey(o.key);
    if (spec == nullptr) {
      return invalid(o.flag + ": " + unknownKey(o.key));
    }
    return set(*spec, o.text, o.flag);
  }

 private:
  Status walk(const YAML::Node& map, const std::string& prefix, const std::string& path,
              std::set<std::string>& seen) {
    for (const auto& kv : map) {
      const std::string at = where(path, kv.first.Mark());
      if (!kv.first.IsScalar()) {
        return invalid(at + ": keys must be plain names");
      }
      const std::string name =
          prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
      if (!seen.insert(name).second) {
        return invalid(at + ": key '" + name + "' is given twice");
      }
      const YAML::Node& value = kv.second;
      const KeySpec* spec = findKey(name);
      if (value.IsMap()) {
        if (spec != nullptr || !isSection(name)) {
          return invalid(at + ": " + (spec != nullptr ? "key '" + name + "' takes a value, not a mapping"
                                                      : unknownKey(name)));
        }
        DRAGON_TRY(walk(value, name, path, seen));
        continue;
      }
      if (spec == nullptr) {
        return invalid(at + ": " + (isSection(name) ? "'" + name + "' is a section: give it keys"
                                                     : unknownKey(name)));
      }
      if (value.IsNull()) {
        return invalid(at + ": key '" + name + "' has no value");
      }
      if (!value.IsScalar()) {
        return invalid(at + ": key '" + name + "' takes a single value, not a list");
      }
      DRAGON_TRY(set(*spec, value.Scalar(), where(path, value.Mark())));
    }
    return Status::ok();
  }

  Config& c_;
};

Config Config::defaults() {
  Config c;
  Loader loader(c);
  for (const KeySpec& k : keys()) {
    // The table's own defaults must parse: a failure is a bug in the table, caught by tests.
    (void)loader.set(k, k.defaultValue, "default");
  }
  return c;
}

Result<Config> Config::load(const LoadOptions& o) {
  Config c = defaults();
  Loader loader(c);
  if (o.systemFile) {
    DRAGON_TRY(loader.loadFile(*o.systemFile, false));
  }
  std::optional<std::string> user = o.userFile;
  if (!user) {
    if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg != nullptr && *xdg != '\0') {
      user = std::string(xdg) + "/dragon/dragon.yaml";
    } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
      user = std::string(home) + "/.config/dragon/dragon.yaml";
    }
  }
  if (user) {
    DRAGON_TRY(loader.loadFile(*user, false));
  }
  if (o.explicitFile) {
    DRAGON_TRY(loader.loadFile(*o.explicitFile, true));
  }
  std::vector<std::pair<std::string, std::string>> env = o.environment;
  if (o.useProcessEnvironment) {
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      const char* eq = std::strchr(*e, '=');
      if (eq != nullptr) env.emplace_back(std::string(*e, static_cast<std::size_t>(eq - *e)), std::string(eq + 1));
    }
  }
  DRAGON_TRY(loader.loadEnvironment(env));
  for (const auto& ov : o.overrides) {
    DRAGON_TRY(loader.loadOverride(ov));
  }
  // Keys that only make sense together: a node must be able to miss a heartbeat before it is
  // lost, or every node of a job is declared lost in its first seconds.
  const Value& beat = c.get("cluster.heartbeat_interval");
  const Value& lost = c.get("cluster.node_timeout");
  if (lost.number < 2 * beat.number) {
    return invalid(lost.source + ": key 'cluster.node_timeout' (" + std::to_string(lost.number / 1'000'000) +
                   " ms) must be at least twice cluster.heartbeat_interval (" +
                   std::to_string(beat.number / 1'000'000) + " ms, from " + beat.source + ")");
  }
  return c;
}

const Value& Config::get(std::string_view key) const {
  auto it = values_.find(key);
  if (it == values_.end()) {
    // Asking for a key that is not in the table is a bug in the caller, not bad input.
    std::fprintf(stderr, "dragon: configuration key '%.*s' is not in the table\n",
                 static_cast<int>(key.size()), key.data());
    std::abort();
  }
  return it->second;
}

bool Config::getBool(std::string_view key) const { return get(key).number != 0; }
std::int64_t Config::getInt(std::string_view key) const { return get(key).number; }
std::uint64_t Config::getSize(std::string_view key) const {
  return static_cast<std::uint64_t>(get(key).number);
}
std::int64_t Config::getDurationNs(std::string_view key) const { return get(key).number; }
const std::string& Config::getString(std::string_view key) const { return get(key).text; }

std::string Config::print() const {
  std::string out = "# Dragon configuration: value, then where it came from.\n";
  for (const KeySpec& k : keys()) {
    const Value& v = get(k.name);
    out += std::string(k.name) + ": " + formatValue(k, v) + "  # " + v.source + "; " +
           std::string(k.help) + "\n";
  }
  return out;
}

std::string configuredSocketPath(const Config& config) {
  const std::string& socket = config.getString("socket");
  if (!socket.empty()) return socket;
  const std::string& dir = config.getString("runtime_dir");
  return dir.empty() ? std::string() : dir + "/dragond.sock";
}

}  // namespace dragon::config
