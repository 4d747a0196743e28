// SPDX-License-Identifier: MIT
// Every installed header together, with only the public include path, in a program that runs
// against libdragon (tests/meson.build also compiles each header alone).
#include <dragon/channel.hpp>
#include <dragon/client.hpp>
#include <dragon/descriptor.hpp>
#include <dragon/dragon.h>
#include <dragon/mapped_region.hpp>
#include <dragon/pool.hpp>
#include <dragon/result.hpp>
#include <dragon/status.hpp>
#include <dragon/timeout.hpp>
#include <dragon/unique_fd.hpp>

int main() {
  dragon::PoolOptions o;
  o.size = dragon::Pool::kMinSize;
  auto pool = dragon::Pool::create(o);
  return pool.has_value() ? 0 : 1;
}
