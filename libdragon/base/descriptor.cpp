// SPDX-License-Identifier: MIT
#include <dragon/descriptor.hpp>

namespace dragon {
namespace {

void put(std::array<std::byte, ObjectDescriptor::kSerializedSize>& b, std::size_t at,
         std::uint64_t v, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    b[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
  }
}

std::uint64_t get(std::span<const std::byte> b, std::size_t at, std::size_t n) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) {
    v |= std::uint64_t{std::to_integer<std::uint8_t>(b[at + i])} << (8 * i);
  }
  return v;
}

constexpr std::string_view kPrefix = "dragon:";
constexpr std::size_t kCheckAt = ObjectDescriptor::kSerializedSize - 2;
constexpr std::uint64_t kMaxOffset = (std::uint64_t{1} << 48) - 1;

// CRC-16/CCITT-FALSE of the first 30 bytes: a CRC of 16 bits detects every error burst of up to
// 16 bits, so every change confined to one byte (or two adjacent ones) of a descriptor is caught.
std::uint16_t check(std::span<const std::byte> b) {
  std::uint16_t crc = 0xffff;
  for (std::size_t i = 0; i < kCheckAt; ++i) {
    crc ^= static_cast<std::uint16_t>(std::to_integer<std::uint16_t>(b[i]) << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) != 0 ? static_cast<std::uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<std::uint16_t>(crc << 1);
    }
  }
  return crc;
}

}  // namespace

std::array<std::byte, ObjectDescriptor::kSerializedSize> ObjectDescriptor::serialize() const {
  std::array<std::byte, kSerializedSize> b{};
  b[0] = std::byte{'D'};
  b[1] = std::byte{'g'};
  b[2] = std::byte{kVersion};
  b[3] = static_cast<std::byte>(kind);
  put(b, 4, node, 4);
  put(b, 8, id, 8);
  put(b, 16, poolId, 8);
  put(b, 24, offset & kMaxOffset, 6);  // pools are at most 1 TiB: offsets fit 48 bits
  put(b, kCheckAt, check(b), 2);
  return b;
}

Result<ObjectDescriptor> ObjectDescriptor::parse(std::span<const std::byte> b) {
  if (b.size() != kSerializedSize) {
    return Status(StatusCode::InvalidArgument,
                  "a descriptor is " + std::to_string(kSerializedSize) + " bytes, not " +
                      std::to_string(b.size()));
  }
  if (b[0] != std::byte{'D'} || b[1] != std::byte{'g'}) {
    return Status(StatusCode::InvalidArgument, "not a Dragon descriptor (bad magic)");
  }
  if (b[2] != std::byte{kVersion}) {
    return Status(StatusCode::InvalidArgument,
                  "descriptor version " + std::to_string(std::to_integer<int>(b[2])) +
                      " is not supported (expected " + std::to_string(kVersion) + ")");
  }
  const auto kind = std::to_integer<std::uint8_t>(b[3]);
  if (kind != static_cast<std::uint8_t>(ObjectKind::Pool) &&
      kind != static_cast<std::uint8_t>(ObjectKind::Channel)) {
    return Status(StatusCode::InvalidArgument,
                  "descriptor names an unknown object kind " + std::to_string(kind));
  }
  if (get(b, kCheckAt, 2) != check(b)) {
    return Status(StatusCode::InvalidArgument,
                  "descriptor is corrupt (its check bytes do not match its contents)");
  }
  ObjectDescriptor d;
  d.kind = static_cast<ObjectKind>(kind);
  d.node = static_cast<std::uint32_t>(get(b, 4, 4));
  d.id = get(b, 8, 8);
  d.poolId = get(b, 16, 8);
  d.offset = get(b, 24, 6);
  if (d.id == 0 || d.poolId == 0) {
    return Status(StatusCode::InvalidArgument, "descriptor has a zero id");
  }
  return d;
}

std::string ObjectDescriptor::toString() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(kPrefix);
  for (std::byte x : serialize()) {
    const auto v = std::to_integer<unsigned>(x);
    s += kHex[v >> 4];
    s += kHex[v & 15];
  }
  return s;
}

Result<ObjectDescriptor> ObjectDescriptor::fromString(std::string_view text) {
  if (text.substr(0, kPrefix.size()) != kPrefix ||
      text.size() != kPrefix.size() + 2 * kSerializedSize) {
    return Status(StatusCode::InvalidArgument,
                  "a descriptor string is 'dragon:' and " + std::to_string(2 * kSerializedSize) +
                      " hex digits");
  }
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::array<std::byte, kSerializedSize> b{};
  for (std::size_t i = 0; i < kSerializedSize; ++i) {
    const int hi = nibble(text[kPrefix.size() + 2 * i]);
    const int lo = nibble(text[kPrefix.size() + 2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return Status(StatusCode::InvalidArgument, "descriptor string has a non-hex digit");
    }
    b[i] = static_cast<std::byte>(hi * 16 + lo);
  }
  return parse(b);
}

}  // namespace dragon
