// SPDX-License-Identifier: MIT
// What the UCX transport puts on the wire and in its address (ucx_transport.cpp). A header of its
// own so that tests/transport can build well-formed and malformed messages by the same rules.
//
// AM header, little-endian: magic u32, version u16, kind u16, sender node u32, secret length
// u32, sequence number u64, payload length u64; then the job secret.
// Address: magic u32, version u16, zero u16, length u32, FNV-1a of the worker address u32; then
// the UCX worker address. It keeps ucp_ep_create, which trusts its input, from a corrupt table.
#pragma once

#include "base/private.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dragon::transport::ucx_wire {

// The one AM handler id.
inline constexpr unsigned kAmId = 1;
inline constexpr std::uint32_t kWireMagic = 0x4e475244;  // "DRGN"
inline constexpr std::uint16_t kWireVersion = 1;
inline constexpr std::size_t kWireHeaderBytes = 32;
inline constexpr std::size_t kMaxSecretBytes = 256;
inline constexpr std::uint32_t kAddressMagic = 0x58435544;  // "DUCX"
inline constexpr std::uint16_t kAddressVersion = 1;
inline constexpr std::size_t kAddressHeaderBytes = 16;

enum class Kind : std::uint16_t { Data = 0, Bye = 1 };

template <typename T>
void putLe(std::string& out, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
}

template <typename T>
T getLe(const unsigned char* p) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    v = static_cast<T>(v | (static_cast<T>(p[i]) << (8 * i)));
  }
  return v;
}

inline std::uint32_t fnv1a(std::string_view bytes) {
  std::uint32_t h = 2166136261u;
  for (char c : bytes) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  return h;
}


// A parsed header; `secret` points into the AM header it came from.
struct WireHeader {
  Kind kind = Kind::Data;
  std::uint32_t node = 0;
  std::uint64_t seq = 0;
  std::string_view secret;
};

inline std::string encodeHeader(Kind kind, std::uint32_t node, std::uint64_t seq,
                                std::uint64_t length, std::string_view secret) {
  std::string h;
  h.reserve(kWireHeaderBytes + secret.size());
  putLe(h, kWireMagic);
  putLe(h, kWireVersion);
  putLe(h, static_cast<std::uint16_t>(kind));
  putLe(h, node);
  putLe(h, static_cast<std::uint32_t>(secret.size()));
  putLe(h, seq);
  putLe(h, length);
  h.append(secret);
  return h;
}

// Why `header` is not a well-formed header for a payload of `length` bytes; null when it is.
inline const char* parseHeader(const void* header, std::size_t headerLength,
                               std::size_t length, WireHeader& out) {
  if (header == nullptr || headerLength < kWireHeaderBytes) return "truncated header";
  const auto* p = static_cast<const unsigned char*>(header);
  if (getLe<std::uint32_t>(p) != kWireMagic) return "bad magic";
  if (getLe<std::uint16_t>(p + 4) != kWireVersion) return "unknown protocol version";
  const auto kind = getLe<std::uint16_t>(p + 6);
  if (kind != static_cast<std::uint16_t>(Kind::Data) &&
      kind != static_cast<std::uint16_t>(Kind::Bye)) {
    return "unknown message kind";
  }
  const auto secretBytes = getLe<std::uint32_t>(p + 12);
  if (secretBytes > kMaxSecretBytes || kWireHeaderBytes + secretBytes != headerLength) {
    return "header length does not match its secret";
  }
  if (getLe<std::uint64_t>(p + 24) != length) return "payload length does not match the header";
  out.kind = static_cast<Kind>(kind);
  out.node = getLe<std::uint32_t>(p + 8);
  out.seq = getLe<std::uint64_t>(p + 16);
  out.secret = std::string_view(static_cast<const char*>(header) + kWireHeaderBytes, secretBytes);
  return nullptr;
}

inline std::string wrapAddress(std::string_view raw) {
  std::string a;
  a.reserve(kAddressHeaderBytes + raw.size());
  putLe(a, kAddressMagic);
  putLe(a, kAddressVersion);
  putLe(a, std::uint16_t{0});
  putLe(a, static_cast<std::uint32_t>(raw.size()));
  putLe(a, fnv1a(raw));
  a.append(raw);
  return a;
}

// The worker address inside `address`, or empty when it is not one of ours.
inline std::string_view unwrapAddress(std::string_view address) {
  if (address.size() <= kAddressHeaderBytes) return {};
  const auto* p = reinterpret_cast<const unsigned char*>(address.data());
  const std::string_view raw = address.substr(kAddressHeaderBytes);
  if (getLe<std::uint32_t>(p) != kAddressMagic || getLe<std::uint16_t>(p + 4) != kAddressVersion ||
      getLe<std::uint32_t>(p + 8) != raw.size() || getLe<std::uint32_t>(p + 12) != fnv1a(raw)) {
    return {};
  }
  return raw;
}

}  // namespace dragon::transport::ucx_wire
