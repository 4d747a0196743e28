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

Status encode(const Envelope& msg, std::span<const char> data, std::string& out,
              std::size_t maxBody) {
  if (msg.body_case() == Envelope::BODY_NOT_SET) {
    return Status(StatusCode::InvalidArgument, "an envelope must carry a message");
  }
  if (!data.empty() && (!msg.has_channel_op() || !msg.channel_op().data().empty())) {
    return Status(StatusCode::InvalidArgument,
                  "data beside a message goes into a channel_op that has none");
  }
  const std::size_t size = msg.ByteSizeLong();
  if (size > maxBody || data.size() > maxBody - size) {
    return Status(StatusCode::InvalidArgument, "message of " + std::to_string(size + data.size()) +
                                                   " bytes exceeds the " +
                                                   std::to_string(maxBody) + "-byte limit");
  }
  const std::size_t start = out.size();
  out.reserve(start + kHeaderSize + size + data.size());
  out.append(kMagic, sizeof kMagic);
  writeLe(out, kVersion, 2);
  writeLe(out, data.empty() ? 0 : kFlagData, 2);
  writeLe(out, static_cast<std::uint32_t>(size), 4);
  const std::size_t at = out.size();
  out.resize(at + size);
  if (!msg.SerializeToArray(out.data() + at, static_cast<int>(size))) {
    out.resize(start);
    return Status(StatusCode::Internal, "protobuf serialization failed");
  }
  out.append(data.data(), data.size());
  return Status::ok();
}

Status encode(const Envelope& msg, std::string& out, std::size_t maxBody) {
  return encode(msg, std::span<const char>(), out, maxBody);
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

namespace {

// Judges a frame's header in `p` (`avail` bytes, maybe fewer than a header): WouldBlock until
// it is whole, InvalidArgument (what is wrong) for a header that must be refused, else the body's
// length. The magic is judged as soon as its bytes arrive: never wait for a body that must be
// refused.
// `allowed`: the flags this reader takes; the header's are returned in *flags.
Result<std::uint32_t> judgeHeader(const char* p, std::size_t avail, std::size_t maxBody,
                                  std::uint16_t allowed = 0, std::uint16_t* flags = nullptr) {
  if (avail == 0) return StatusCode::WouldBlock;  // (p may be null)
  if (std::memcmp(p, kMagic, avail < 4 ? avail : 4) != 0) {
    return Status(StatusCode::InvalidArgument, "bad magic (not a Dragon control stream)");
  }
  if (avail < kHeaderSize) {
    return StatusCode::WouldBlock;
  }
  const std::uint32_t version = readLe(p + 4, 2);
  if (version != kVersion) {
    return Status(StatusCode::InvalidArgument,
                  "protocol version " + std::to_string(version) +
                      " is not supported (this side speaks " + std::to_string(kVersion) + ")");
  }
  const auto f = static_cast<std::uint16_t>(readLe(p + 6, 2));
  if ((f & ~allowed) != 0) {
    return Status(StatusCode::InvalidArgument, allowed == 0 ? "reserved flags are set"
                                                            : "unknown flags are set");
  }
  if (flags != nullptr) *flags = f;
  const std::uint32_t length = readLe(p + 8, 4);
  if (length > maxBody) {
    return Status(StatusCode::InvalidArgument, "body of " + std::to_string(length) +
                                                   " bytes exceeds the " +
                                                   std::to_string(maxBody) + "-byte limit");
  }
  return length;
}

Status parseBody(const char* p, std::uint32_t length, Envelope& msg) {
  if (!msg.ParseFromArray(p, static_cast<int>(length))) {
    return Status(StatusCode::InvalidArgument, "body does not parse");
  }
  if (msg.body_case() == Envelope::BODY_NOT_SET) {
    return Status(StatusCode::InvalidArgument,
                  "envelope carries no message (or only one this side does not know)");
  }
  return Status::ok();
}

}  // namespace

Result<Envelope> FrameDecoder::next() {
  if (!broken_.isOk()) {
    return broken_;
  }
  auto fail = [this](const Status& why) -> Status {
    broken_ = Status(StatusCode::InvalidArgument, "bad control frame: " + std::string(why.message()));
    buf_.clear();
    pos_ = 0;
    return broken_;
  };
  const std::size_t avail = buf_.size() - pos_;
  const char* p = buf_.data() + pos_;
  Result<std::uint32_t> length = judgeHeader(p, avail, maxBody_);
  if (!length.has_value()) {
    if (length.error().code() == StatusCode::WouldBlock) return StatusCode::WouldBlock;
    return fail(length.error());
  }
  if (avail < kHeaderSize + *length) {
    return StatusCode::WouldBlock;
  }
  Envelope msg;
  if (Status st = parseBody(p + kHeaderSize, *length, msg); !st.isOk()) {
    return fail(st);
  }
  pos_ += kHeaderSize + *length;
  return msg;
}

Result<Envelope> decodeFrame(std::span<const std::byte> frame, std::size_t maxBody,
                             std::span<const char>* data) {
  const char* p = reinterpret_cast<const char*>(frame.data());
  auto bad = [](const Status& why) {
    return Status(StatusCode::InvalidArgument, "bad control frame: " + std::string(why.message()));
  };
  if (data != nullptr) *data = {};
  std::uint16_t flags = 0;
  Result<std::uint32_t> length = judgeHeader(p, frame.size(), maxBody, kFlagData, &flags);
  if (!length.has_value()) {
    if (length.error().code() == StatusCode::WouldBlock) {
      return bad(Status(StatusCode::InvalidArgument,
                        "truncated header (" + std::to_string(frame.size()) + " bytes)"));
    }
    return bad(length.error());
  }
  const std::size_t after = frame.size() - kHeaderSize;  // the body, and the data with kFlagData
  if (flags == 0 ? after != *length : after <= *length) {
    return bad(Status(StatusCode::InvalidArgument,
                      "the header says " + std::to_string(*length) + " bytes of body" +
                          (flags == 0 ? "" : " and data after it") + ", the frame has " +
                          std::to_string(after)));
  }
  if (after > maxBody) {
    return bad(Status(StatusCode::InvalidArgument, "body and data of " + std::to_string(after) +
                                                       " bytes exceed the " +
                                                       std::to_string(maxBody) + "-byte limit"));
  }
  Envelope msg;
  if (Status st = parseBody(p + kHeaderSize, *length, msg); !st.isOk()) {
    return bad(st);
  }
  if (flags != 0) {
    if (!msg.has_channel_op() || !msg.channel_op().data().empty()) {
      return bad(Status(StatusCode::InvalidArgument,
                        "data after the body, and no channel_op without data for it"));
    }
    const std::span<const char> rest(p + kHeaderSize + *length, after - *length);
    if (data != nullptr) {
      *data = rest;
    } else {
      msg.mutable_channel_op()->set_data(rest.data(), rest.size());
    }
  }
  return msg;
}

}  // namespace dragon::protocol
