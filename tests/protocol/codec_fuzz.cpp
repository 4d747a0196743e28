// SPDX-License-Identifier: MIT
// libFuzzer target for the control-frame decoder: arbitrary bytes, fed in chunks whose size
// the first input byte picks, must never crash, hang or grow the buffer past one frame; every
// message that decodes must survive a re-encode and decode unchanged. The same bytes, taken
// whole as a datagram between dragonds (decodeFrame, which also reads kFlagData frames), must
// decode to a message and data inside the input that survive the same round trip.
#include "protocol/codec.hpp"

#include <google/protobuf/util/message_differencer.h>

#include <algorithm>
#include <cstdlib>
#include <span>
#include <string>

namespace {
constexpr std::size_t kMaxBody = 4096;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using dragon::protocol::FrameDecoder;
  if (size == 0) {
    return 0;
  }
  const std::size_t chunk = data[0] % 32 + 1;
  FrameDecoder d(kMaxBody);
  for (std::size_t i = 1; i < size; i += chunk) {
    const std::size_t n = size - i < chunk ? size - i : chunk;
    d.feed(std::as_bytes(std::span(data + i, n)));
    if (d.buffered() > dragon::protocol::kHeaderSize + kMaxBody + chunk) {
      std::abort();  // held more than one frame plus the latest input
    }
    for (auto r = d.next(); r.has_value(); r = d.next()) {
      std::string out;
      if (!dragon::protocol::encode(*r, out, kMaxBody).isOk()) {
        std::abort();  // what decoded within the limit must encode within it
      }
      FrameDecoder again(kMaxBody);
      again.feed(std::as_bytes(std::span(out)));
      auto r2 = again.next();
      if (!r2.has_value() || !google::protobuf::util::MessageDifferencer::Equals(*r, *r2)) {
        std::abort();
      }
    }
  }
  std::span<const char> bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  std::span<const char> extra;
  auto whole = dragon::protocol::decodeFrame(std::as_bytes(bytes), kMaxBody, &extra);
  if (whole.has_value()) {
    if (!extra.empty() && (extra.data() < bytes.data() ||
                           extra.data() + extra.size() != bytes.data() + bytes.size())) {
      std::abort();  // the data is the end of the datagram, never outside it
    }
    std::string out;
    if (!dragon::protocol::encode(*whole, extra, out, kMaxBody).isOk()) std::abort();
    std::span<const char> extra2;
    auto again = dragon::protocol::decodeFrame(std::as_bytes(std::span<const char>(out)), kMaxBody,
                                               &extra2);
    if (!again.has_value() ||
        !google::protobuf::util::MessageDifferencer::Equals(*whole, *again) ||
        !std::equal(extra.begin(), extra.end(), extra2.begin(), extra2.end())) {
      std::abort();
    }
  }
  return 0;
}
