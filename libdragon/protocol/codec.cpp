// SPDX-License-Identifier: MIT
#include "protocol/codec.hpp"

#include <cstring>

namespace dragon::protocol {
namespace {

constexpr char kMagic[4] = {'D', 'R', 'G', 'N'};

std::uint32_t readLe(const char* p, int n) {
  std::uint32_t v = 0;
  for (int i = 0; i < n; ++i) {
    v |= std::uint32_t{static_cast<unsigned char>(p[i])} << (8 * i);
  }
  return v;
}

void writeLe(std::string& out, std::uint32_t v, int n) {
  for (int i = 0; i < n; ++i) {
    out += static_cast<char>((v >> (8 * i)) & 0xff);
  }
}

}  // namespace

Status encode(const Envelope& msg, std::string& out, std::size_t maxBody) {
  if (msg.body_case() == Envelope::BODY_NOT_SET) {
    return Status(StatusCode::InvalidArgument, "an envelope must carry a message");
  }
  const std::size_t size = msg.ByteSizeLong();
  if (size > maxBody) {
    return Status(StatusCode::InvalidArgument, "message of " + std::to_string(size) +
                                                   " bytes exceeds the " +
                                                   std::to_string(maxBody) + "-byte limit");
  }
  out.append(kMagic, sizeof kMagic);
  writeLe(out, kVersion, 2);
  writeLe(out, 0, 2);
  writeLe(out, static_cast<std::uint32_t>(size), 4);
  const std::size_t at = out.size();
  out.resize(at + size);
  if (!msg.SerializeToArray(out.data() + at, static_cast<int>(size))) {
    out.resize(at - kHeaderSize);
    return Status(StatusCode::Internal, "protobuf serialization failed");
  }
  return Status::ok();
}

void FrameDecoder::feed(std::span<const std::byte> bytes) {
  if (!broken_.isOk()) {
    return;  // nothing more is read from a broken stream
  }
  // Drop consumed bytes before growing, so the buffer holds at most one frame plus the input.
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > buf_.size() / 2) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

Result<Envelope> FrameDecoder::next() {
  if (!broken_.isOk()) {
    return broken_;
  }
  auto fail = [this](std::string what) -> Status {
    broken_ = Status(StatusCode::InvalidArgument, "bad control frame: " + std::move(what));
    buf_.clear();
    pos_ = 0;
    return broken_;
  };
  const std::size_t avail = buf_.size() - pos_;
  const char* p = buf_.data() + pos_;
  // Judge the header as soon as its bytes arrive: never wait for a body that must be refused.
  if (std::memcmp(p, kMagic, avail < 4 ? avail : 4) != 0) {
    return fail("bad magic (not a Dragon control stream)");
  }
  if (avail < kHeaderSize) {
    return StatusCode::WouldBlock;
  }
  const std::uint32_t version = readLe(p + 4, 2);
  if (version != kVersion) {
    return fail("protocol version " + std::to_string(version) + " is not supported (this side speaks " +
                std::to_string(kVersion) + ")");
  }
  if (readLe(p + 6, 2) != 0) {
    return fail("reserved flags are set");
  }
  const std::uint32_t length = readLe(p + 8, 4);
  if (length > maxBody_) {
    return fail("body of " + std::to_string(length) + " bytes exceeds the " +
                std::to_string(maxBody_) + "-byte limit");
  }
  if (avail < kHeaderSize + length) {
    return StatusCode::WouldBlock;
  }
  Envelope msg;
  if (!msg.ParseFromArray(p + kHeaderSize, static_cast<int>(length))) {
    return fail("body does not parse");
  }
  if (msg.body_case() == Envelope::BODY_NOT_SET) {
    return fail("envelope carries no message (or only one this side does not know)");
  }
  pos_ += kHeaderSize + length;
  return msg;
}

}  // namespace dragon::protocol
