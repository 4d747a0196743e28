// SPDX-License-Identifier: MIT
// Build tool: copies the dragon.yaml(5) source (argv[1]) to stdout with its "@KEYS@" line
// replaced by every key of the configuration table, so the man page cannot drift from it.
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

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: config_reference SOURCE.scd.in\n");
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
