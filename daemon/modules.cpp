// SPDX-License-Identifier: MIT
#include "daemon/modules.hpp"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <unistd.h>

namespace dragon::modules {

std::string selfDir() {
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return {};
  std::string dir(self, static_cast<std::size_t>(n));
  dir.resize(dir.rfind('/'));
  return dir;
}

std::string moduleDir(const std::string& kind) {
  if (const char* env = std::getenv("DRAGON_MODULE_DIR"); env != nullptr && env[0] != '\0') {
    return env;
  }
  // A binary of a build tree (build/daemon/dragon) finds the modules built beside it.
  const std::string dir = selfDir();
  const std::string built = dir + "/../" + kind;
  if (!dir.empty() && access((dir + "/../meson-info").c_str(), F_OK) == 0 &&
      access(built.c_str(), F_OK) == 0) {
    return built;
  }
  return DRAGON_MODULE_DIR;
}

Result<const void*> loadModule(const std::string& kind, const std::string& file,
                               const std::string& symbol, const std::string& what) {
  const std::string path = moduleDir(kind) + "/" + file;
  // RTLD_LOCAL: the module's dependencies (libpmix, libucp) stay out of the global namespace.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* err = dlerror();
    return Status(StatusCode::NotFound,
                  what + " is not available: cannot load " + path + " (" +
                      (err != nullptr ? err : "unknown error") +
                      "); install the package that provides it, or set DRAGON_MODULE_DIR");
  }
  dlerror();
  void* sym = dlsym(handle, symbol.c_str());
  if (sym == nullptr) {
    dlclose(handle);
    return Status(StatusCode::InvalidArgument,
                  path + " is not a Dragon module for " + what + ": it has no " + symbol);
  }
  using Info = const void* (*)();
  Info fn = nullptr;
  static_assert(sizeof fn == sizeof sym);
  std::memcpy(&fn, &sym, sizeof fn);  // dlsym gives an object pointer to a function
  const void* info = fn();
  if (info == nullptr) {
    dlclose(handle);
    return Status(StatusCode::Internal, path + ": " + symbol + " returned nothing");
  }
  return info;  // the handle is never closed: the module's code runs until exit
}

}  // namespace dragon::modules
