// SPDX-License-Identifier: MIT
// Loading Dragon's modules (the PMIx bootstrap, the UCX transport): dlopen by file name from the
// module directory, then one versioned info symbol, whose ABI version must match. A missing or
// mismatched module is one clear error naming the file and what it lacks.
#pragma once

#include "base/private.hpp"

#include <dragon/result.hpp>

#include <cstdint>
#include <string>

namespace dragon::modules {

// The directory of the running binary (from /proc/self/exe), or "" if unknown.
std::string selfDir();

// Where modules are looked for: $DRAGON_MODULE_DIR, else the build tree's module directories
// when this binary runs from a build tree, else LIBDIR/dragon.
std::string moduleDir(const std::string& kind);

// Loads `file` (e.g. "dragon-transport-ucx.so") for `what` ("the UCX transport") and returns
// the address of `symbol`, called with no arguments; the module stays loaded for the life of
// the process.
Result<const void*> loadModule(const std::string& kind, const std::string& file,
                               const std::string& symbol, const std::string& what);

}  // namespace dragon::modules
