// SPDX-License-Identifier: MIT
// What the UCX transport puts on the wire and in its address (ucx_transport.cpp). A header of its
// own so that tests/transport can build well-formed and malformed messages by the same rules.
//
// AM header, little-endian: magic u32, version u16, kind u16, sender node u32, secret length
// u32, sequence number u64, payload length u64; then the job secret.
// Transfers carried as messages (peers UCX reaches without native RMA; ucx_transport.cpp,
// "RMA"), AM id kRmaAmId, header little-endian: magic u32, version u16, kind u16, sender node
// u32, secret length u32, transfer id u64, region id u64, address u64, length u64, refusal u32,
// zero u32; then the job secret. A Put carries `length` bytes for the region, a GetData the
// bytes a Get asked for (none when refused); PutDone and Get carry nothing.
// Region key: the region's id u64, then the packed UCX rkey.
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
// 2: a message may be a frame with data after its envelope (protocol::kFlagData), which a
// dragond of version 1 drops; a job's dragonds must all speak the same version.
inline constexpr std::uint16_t kWireVersion = 2;
inline constexpr std::size_t kWireHeaderBytes = 32;
inline constexpr std::size_t kMaxSecretBytes = 256;
inline constexpr std::uint32_t kAddressMagic = 0x58435544;  // "DUCX"
// Follows kWireVersion: a dragond of another version is refused at the job's start.
inline constexpr std::uint16_t kAddressVersion = 2;
inline constexpr std::size_t kAddressHeaderBytes = 16;

// Bye: the sender shuts down after everything it sent before. ByeAck: the answer of a peer
// that took in everything up to a Bye (the one who said it may now close its connection).
enum class Kind : std::uint16_t { Data = 0, Bye = 1, ByeAck = 2 };

inline constexpr unsigned kRmaAmId = 2;
inline constexpr std::size_t kRmaHeaderBytes = 56;
enum class RmaMessage : std::uint16_t { Put = 1, PutDone = 2, Get = 3, GetData = 4 };
// Why the region's node refused a transfer.
enum class RmaRefusal : std::uint32_t { None = 0, NoRegion = 1, OutOfRange = 2, Failed = 3 };

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
  if (kind > static_cast<std::uint16_t>(Kind::ByeAck)) {
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

// A parsed transfer header; `secret` points into the AM header it came from.
struct RmaHeader {
  RmaMessage kind = RmaMessage::Put;
  std::uint32_t node = 0;
  std::uint64_t transfer = 0;
  std::uint64_t region = 0;
  std::uint64_t address = 0;
  std::uint64_t length = 0;
  RmaRefusal refusal = RmaRefusal::None;
  std::string_view secret;
};

inline std::string encodeRmaHeader(const RmaHeader& r, std::string_view secret) {
  std::string h;
  h.reserve(kRmaHeaderBytes + secret.size());
  putLe(h, kWireMagic);
  putLe(h, kWireVersion);
  putLe(h, static_cast<std::uint16_t>(r.kind));
  putLe(h, r.node);
  putLe(h, static_cast<std::uint32_t>(secret.size()));
  putLe(h, r.transfer);
  putLe(h, r.region);
  putLe(h, r.address);
  putLe(h, r.length);
  putLe(h, static_cast<std::uint32_t>(r.refusal));
  putLe(h, std::uint32_t{0});
  h.append(secret);
  return h;
}

// The payload length a well-formed transfer message of this header carries.
inline std::uint64_t rmaPayloadBytes(const RmaHeader& r) {
  if (r.kind == RmaMessage::Put) return r.length;
  if (r.kind == RmaMessage::GetData && r.refusal == RmaRefusal::None) return r.length;
  return 0;
}

// Why `header` is not a well-formed transfer header for a payload of `length` bytes; null when
// it is.
inline const char* parseRmaHeader(const void* header, std::size_t headerLength,
                                  std::size_t length, RmaHeader& out) {
  if (header == nullptr || headerLength < kRmaHeaderBytes) return "truncated transfer header";
  const auto* p = static_cast<const unsigned char*>(header);
  if (getLe<std::uint32_t>(p) != kWireMagic) return "bad magic";
  if (getLe<std::uint16_t>(p + 4) != kWireVersion) return "unknown protocol version";
  const auto kind = getLe<std::uint16_t>(p + 6);
  if (kind < static_cast<std::uint16_t>(RmaMessage::Put) ||
      kind > static_cast<std::uint16_t>(RmaMessage::GetData)) {
    return "unknown transfer message kind";
  }
  const auto secretBytes = getLe<std::uint32_t>(p + 12);
  if (secretBytes > kMaxSecretBytes || kRmaHeaderBytes + secretBytes != headerLength) {
    return "header length does not match its secret";
  }
  const auto refusal = getLe<std::uint32_t>(p + 48);
  if (refusal > static_cast<std::uint32_t>(RmaRefusal::Failed) || getLe<std::uint32_t>(p + 52) != 0) {
    return "malformed transfer answer";
  }
  RmaHeader r;
  r.kind = static_cast<RmaMessage>(kind);
  r.node = getLe<std::uint32_t>(p + 8);
  r.transfer = getLe<std::uint64_t>(p + 16);
  r.region = getLe<std::uint64_t>(p + 24);
  r.address = getLe<std::uint64_t>(p + 32);
  r.length = getLe<std::uint64_t>(p + 40);
  r.refusal = static_cast<RmaRefusal>(refusal);
  if (rmaPayloadBytes(r) != length) return "payload length does not match the header";
  r.secret = std::string_view(static_cast<const char*>(header) + kRmaHeaderBytes, secretBytes);
  out = r;
  return nullptr;
}

inline std::string regionKey(std::uint64_t id, std::string_view packedRkey) {
  std::string k;
  k.reserve(8 + packedRkey.size());
  putLe(k, id);
  k.append(packedRkey);
  return k;
}

// Splits a region key; false when it cannot be one.
inline bool splitRegionKey(std::string_view key, std::uint64_t& id, std::string_view& packedRkey) {
  if (key.size() <= 8) return false;
  id = getLe<std::uint64_t>(reinterpret_cast<const unsigned char*>(key.data()));
  packedRkey = key.substr(8);
  return true;
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
