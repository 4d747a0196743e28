// SPDX-License-Identifier: MIT
// ObjectDescriptor: the small serialisable value that names a pool or channel anywhere in a job.
#pragma once

#include <dragon/result.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace dragon {

enum class ObjectKind : std::uint8_t { Pool = 1, Channel = 2 };

struct ObjectDescriptor {
  static constexpr std::size_t kSerializedSize = 32;
  static constexpr std::uint8_t kVersion = 2;

  ObjectKind kind = ObjectKind::Pool;
  std::uint32_t node = 0;    // home node
  std::uint64_t id = 0;      // job-unique id of the object
  std::uint64_t poolId = 0;  // the pool that holds it (its own id for a pool)
  std::uint64_t offset = 0;  // where it lives in that pool (0 for a pool); below 2^48

  // Fixed little-endian layout: "Dg", version, kind, node (4), id (8), poolId (8), offset (6),
  // then a CRC-16 of the 30 bytes before it: parse() refuses any change confined to one byte.
  std::array<std::byte, kSerializedSize> serialize() const;
  static Result<ObjectDescriptor> parse(std::span<const std::byte> bytes);
  // "dragon:" followed by the 64 hex digits of serialize(); safe in argv and the environment.
  std::string toString() const;
  static Result<ObjectDescriptor> fromString(std::string_view text);

  bool operator==(const ObjectDescriptor&) const = default;
};

}  // namespace dragon
