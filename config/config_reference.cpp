// SPDX-License-Identifier: MIT
// Build tool, both outputs from the configuration table so that neither can drift from it:
//   config_reference SOURCE.scd.in  the dragon.yaml(5) source with its "@KEYS@" line replaced
//                                   by every key;
//   config_reference --yaml         the default /etc/dragon/dragon.yaml: every key, commented
//                                   out, with its default and help.
#include "config/config.hpp"

#include <cstdio>
#include <fstream>
#include <string>

namespace {

using dragon::config::KeySpec;
using dragon::config::Type;

const char* typeName(Type t) {
  switch (t) {
    case Type::Bool: return "boolean";
    case Type::Int: return "integer";
    case Type::Size: return "size";
    case Type::Duration: return "duration";
    case Type::String: return "string";
    case Type::Enum: return "one of";
  }
  return "?";
}

std::string bound(const KeySpec& k, std::int64_t n) {
  dragon::config::Value v;
  v.number = n;
  return dragon::config::formatValue(k, v);
}

void printKey(const KeySpec& k) {
  std::string type = typeName(k.type);
  if (k.type == Type::Enum) {
    std::string choices;
    for (char c : k.choices) {
      choices += c == '|' ? std::string(", ") : std::string(1, c);
    }
    type += " " + choices;
  } else if ((k.type == Type::Int || k.type == Type::Size || k.type == Type::Duration) &&
             k.max > k.min) {
    type += ", " + bound(k, k.min) + " to " + bound(k, k.max);
  }
  const std::string def = k.defaultValue.empty() ? "empty" : std::string(k.defaultValue);
  std::printf("*%.*s* (%s; default %s; environment *%s*)\n\t%.*s.\n\n",
              static_cast<int>(k.name.size()), k.name.data(), type.c_str(), def.c_str(),
              dragon::config::envName(k.name).c_str(), static_cast<int>(k.help.size()),
              k.help.data());
}

}  // namespace

void printYaml() {
  std::printf(
      "# Dragon's system-wide configuration, read by every dragond on this host before\n"
      "# ~/.config/dragon/dragon.yaml, DRAGON_* variables and flags (see dragon.yaml(5)).\n"
      "# Every key is shown with its built-in default, commented out. A dotted key may also\n"
      "# be written as a nested mapping (pool:, then default_size: 1GiB indented).\n");
  for (const KeySpec& k : dragon::config::keys()) {
    const std::string def = k.defaultValue.empty() ? "\"\"" : std::string(k.defaultValue);
    std::printf("\n# %.*s\n# %.*s: %s\n", static_cast<int>(k.help.size()), k.help.data(),
                static_cast<int>(k.name.size()), k.name.data(), def.c_str());
  }
}

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--yaml") {
    printYaml();
    return 0;
  }
  if (argc != 2) {
    std::fprintf(stderr, "usage: config_reference SOURCE.scd.in | --yaml\n");
    return 2;
  }
  std::ifstream in(argv[1]);
  if (!in) {
    std::fprintf(stderr, "config_reference: cannot read %s\n", argv[1]);
    return 1;
  }
  std::string line;
  bool replaced = false;
  while (std::getline(in, line)) {
    if (line == "@KEYS@") {
      for (const KeySpec& k : dragon::config::keys()) printKey(k);
      replaced = true;
    } else {
      std::printf("%s\n", line.c_str());
    }
  }
  if (!replaced) {
    std::fprintf(stderr, "config_reference: %s has no @KEYS@ line\n", argv[1]);
    return 1;
  }
  return 0;
}
