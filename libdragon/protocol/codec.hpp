// SPDX-License-Identifier: MIT
// Framing of control messages. A frame is a 12-byte header, then one serialized Envelope:
//   bytes 0-3  magic "DRGN"
//   bytes 4-5  protocol version (little-endian)
//   bytes 6-7  flags: 0 on a stream; between dragonds, kFlagData (below) or 0
//   bytes 8-11 body length (little-endian), at most the decoder's limit
// Nothing a peer sends can crash the decoder or make it buffer more than one frame: bad
// magic, an unsupported version, set flags, an oversized length, a body that does not parse
// and an envelope with no body are errors, after which the stream is unusable and the
// connection should be closed (after an Error reply, if the peer is worth answering).
#pragma once

#include "base/private.hpp"

#include <dragon/result.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "dragon.pb.h"

namespace dragon::protocol {

// The protocol a client and its dragond speak; a hello outside it is refused with a clear error.
// 2: ChannelOp.staged (a dragond of version 1 would ignore it and send an empty message).
inline constexpr std::uint16_t kVersion = 2;
inline constexpr std::size_t kHeaderSize = 12;
inline constexpr std::size_t kDefaultMaxBody = std::size_t{1} << 20;

// Appends one frame holding `msg` to `out`. InvalidArgument for an empty envelope or one
// larger than `maxBody`.
Status encode(const Envelope& msg, std::string& out, std::size_t maxBody = kDefaultMaxBody);

// A frame of one datagram (a message between dragonds) whose body is followed by the `data` of
// its envelope's channel_op, raw: the receiver finds those bytes in place, with no parse that
// copies them. Streams never carry it (FrameDecoder refuses any flag).
inline constexpr std::uint16_t kFlagData = 1;

// As encode, with `data` as the `data` of msg's channel_op (which msg must carry, with no data
// of its own), for a datagram: the bytes go from where they are into the frame in one copy,
// never through a message, after the body (kFlagData). The data counts against `maxBody`.
Status encode(const Envelope& msg, std::span<const char> data, std::string& out,
              std::size_t maxBody = kDefaultMaxBody);

// The message of one whole frame (a datagram: `frame` holds exactly one frame, as a message
// between dragonds does), parsed in place. InvalidArgument as FrameDecoder::next, and for a
// frame shorter or longer than its header says. A frame with kFlagData: with `data`, *data is
// set to its channel_op's data where it lies in `frame` (the envelope's own is empty); without,
// the data is copied into the envelope. *data is empty for a frame without.
Result<Envelope> decodeFrame(std::span<const std::byte> frame, std::size_t maxBody = kDefaultMaxBody,
                             std::span<const char>* data = nullptr);

// Incremental decoder for one connection's byte stream.
class FrameDecoder {
 public:
  explicit FrameDecoder(std::size_t maxBody = kDefaultMaxBody) : maxBody_(maxBody) {}

  // Appends bytes as they arrive (any split, down to one byte at a time).
  void feed(std::span<const std::byte> bytes);
  // The next whole message; WouldBlock until one is complete; InvalidArgument for a bad
  // stream (then every later call returns the same error).
  Result<Envelope> next();
  // Bytes held that do not yet make a whole frame.
  std::size_t buffered() const noexcept { return buf_.size() - pos_; }

 private:
  std::size_t maxBody_;
  std::string buf_;
  std::size_t pos_ = 0;
  Status broken_;
};

}  // namespace dragon::protocol
