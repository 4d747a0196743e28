// SPDX-License-Identifier: MIT
#include "protocol/codec.hpp"

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <string>

namespace dragon::protocol {
namespace {

std::span<const std::byte> bytesOf(const std::string& s) { return std::as_bytes(std::span(s)); }

std::string frame(const Envelope& e) {
  std::string out;
  EXPECT_TRUE(encode(e, out).isOk());
  return out;
}

std::string header(std::uint16_t version, std::uint16_t flags, std::uint32_t length) {
  std::string h = "DRGN";
  h += static_cast<char>(version & 0xff);
  h += static_cast<char>(version >> 8);
  h += static_cast<char>(flags & 0xff);
  h += static_cast<char>(flags >> 8);
  for (int i = 0; i < 4; ++i) h += static_cast<char>((length >> (8 * i)) & 0xff);
  return h;
}

Status errorOf(const std::string& stream, std::size_t maxBody = kDefaultMaxBody) {
  FrameDecoder d(maxBody);
  d.feed(bytesOf(stream));
  auto r = d.next();
  EXPECT_FALSE(r.has_value());
  return r.has_value() ? Status::ok() : r.error();
}

TEST(Codec, MessagesRoundTripThroughAStreamFedOneByteAtATime) {
  Envelope hello;
  hello.set_request_id(1);
  hello.mutable_hello()->set_min_version(1);
  hello.mutable_hello()->set_max_version(1);
  hello.mutable_hello()->set_client_name("test");
  Envelope spawn;
  spawn.set_request_id(2);
  auto* s = spawn.mutable_spawn();
  s->add_argv("/bin/echo");
  s->add_argv("hi");
  s->add_env("PATH=/bin");
  s->add_argv(std::string("caf\xe9-latin1", 11));  // argv is bytes: not UTF-8 is fine
  s->set_stdout_mode(Spawn::CAPTURE);
  Envelope line;
  line.mutable_output_line()->set_puid(7);
  line.mutable_output_line()->set_line(std::string("bin\0ary\n", 8));
  const std::string stream = frame(hello) + frame(spawn) + frame(line);

  FrameDecoder d;
  std::vector<Envelope> got;
  for (char c : stream) {
    d.feed(std::as_bytes(std::span(&c, 1)));
    for (auto r = d.next(); r.has_value(); r = d.next()) got.push_back(*r);
  }
  ASSERT_EQ(got.size(), 3u);
  using google::protobuf::util::MessageDifferencer;
  EXPECT_TRUE(MessageDifferencer::Equals(got[0], hello));
  EXPECT_TRUE(MessageDifferencer::Equals(got[1], spawn));
  EXPECT_TRUE(MessageDifferencer::Equals(got[2], line));
  EXPECT_EQ(d.next().error().code(), StatusCode::WouldBlock);
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(Codec, EncodeRefusesEmptyAndOversizedMessages) {
  std::string out;
  EXPECT_EQ(encode(Envelope(), out).code(), StatusCode::InvalidArgument);
  Envelope big;
  big.mutable_output_line()->set_line(std::string(2000, 'x'));
  Status st = encode(big, out, 1000);
  EXPECT_EQ(st.code(), StatusCode::InvalidArgument);
  EXPECT_NE(st.toString().find("1000-byte limit"), std::string::npos);
  EXPECT_TRUE(out.empty()) << "nothing is written for a refused message";
}

TEST(Codec, BadMagicIsRefusedFromTheFirstWrongByte) {
  Status st = errorOf("X");
  EXPECT_EQ(st.code(), StatusCode::InvalidArgument);
  EXPECT_NE(st.toString().find("bad magic"), std::string::npos);
  EXPECT_NE(errorOf("DRGX").toString().find("bad magic"), std::string::npos);
}

TEST(Codec, HeadersAreJudgedBeforeAnyBodyIsBuffered) {
  EXPECT_NE(errorOf(header(kVersion + 1, 0, 0))
                .toString()
                .find("version " + std::to_string(kVersion + 1) + " is not supported"),
            std::string::npos);
  EXPECT_NE(errorOf(header(kVersion, 4, 0)).toString().find("reserved flags"), std::string::npos);
  FrameDecoder d(1000);
  d.feed(bytesOf(header(kVersion, 0, 0x7fffffff)));
  auto r = d.next();
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().toString().find("2147483647 bytes exceeds the 1000-byte limit"),
            std::string::npos);
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(Codec, ATruncatedFrameWaitsForTheRest) {
  Envelope e;
  e.mutable_ok();
  e.set_request_id(99);
  const std::string f = frame(e);
  FrameDecoder d;
  d.feed(bytesOf(f.substr(0, f.size() - 1)));
  EXPECT_EQ(d.next().error().code(), StatusCode::WouldBlock);
  EXPECT_EQ(d.buffered(), f.size() - 1);
  d.feed(bytesOf(f.substr(f.size() - 1)));
  auto r = d.next();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->request_id(), 99u);
}

TEST(Codec, MalformedBodiesBreakTheStreamForGood) {
  EXPECT_NE(errorOf(header(kVersion, 0, 3) + "\xff\xff\xff").toString().find("does not parse"),
            std::string::npos);
  EXPECT_NE(errorOf(header(kVersion, 0, 0)).toString().find("carries no message"), std::string::npos);
  // A message from a newer peer that this side does not know (field 99): no body it knows.
  EXPECT_NE(errorOf(header(kVersion, 0, 3) + "\x98\x06\x01").toString().find("carries no message"),
            std::string::npos);
  FrameDecoder d;
  d.feed(bytesOf("garbage"));
  EXPECT_FALSE(d.next().has_value());
  Envelope ok;
  ok.mutable_ok();
  d.feed(bytesOf(frame(ok)));
  EXPECT_EQ(d.next().error().code(), StatusCode::InvalidArgument) << "a broken stream stays broken";
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(Codec, TheBufferNeverHoldsMoreThanTheUnreadPart) {
  Envelope e;
  e.mutable_output_line()->set_line("a line of output\n");
  const std::string f = frame(e);
  FrameDecoder d;
  for (int i = 0; i < 10000; ++i) {
    d.feed(bytesOf(f));
    ASSERT_TRUE(d.next().has_value());
    ASSERT_EQ(d.buffered(), 0u);
  }
}

TEST(Codec, DataBesideTheMessageFollowsTheBodyAndDecodesInPlaceOrIntoTheChannelOp) {
  Envelope e;
  e.set_request_id(77);
  e.mutable_channel_op()->set_kind(ChannelOp::SEND);
  e.mutable_channel_op()->set_timeout_ns(-1);
  e.mutable_channel_op()->mutable_channel()->set_serialized(std::string(32, '\x05'));
  for (std::size_t n : {std::size_t{1}, std::size_t{127}, std::size_t{128}, std::size_t{1} << 20}) {
    std::string data(n, '\0');
    for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<char>(i * 131 + n);
    std::string f;
    ASSERT_TRUE(encode(e, std::span<const char>(data), f, std::size_t{2} << 20).isOk());
    // The raw bytes end the frame, after the envelope: nothing re-encodes them.
    ASSERT_EQ(f.substr(f.size() - n), data);
    EXPECT_EQ(f[6], static_cast<char>(kFlagData));
    auto d = decodeFrame(bytesOf(f), std::size_t{2} << 20);
    ASSERT_TRUE(d.has_value()) << d.error().toString();
    Envelope want = e;
    want.mutable_channel_op()->set_data(data);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*d, want)) << n << " bytes";
    // In place: the envelope as sent, and the data where it lies in the frame.
    std::span<const char> inPlace;
    auto p = decodeFrame(bytesOf(f), std::size_t{2} << 20, &inPlace);
    ASSERT_TRUE(p.has_value()) << p.error().toString();
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*p, e)) << n << " bytes";
    EXPECT_EQ(inPlace.data(), f.data() + f.size() - n);
    EXPECT_EQ(inPlace.size(), n);
    // A stream never carries such a frame.
    FrameDecoder stream(std::size_t{2} << 20);
    stream.feed(bytesOf(f));
    auto r = stream.next();
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().toString().find("flags"), std::string::npos);
  }
  const std::string plainFrame = frame(e);
  std::span<const char> none(plainFrame.data(), 1);
  auto plain = decodeFrame(bytesOf(plainFrame), kDefaultMaxBody, &none);
  ASSERT_TRUE(plain.has_value());
  EXPECT_TRUE(none.empty()) << "a frame without data says so";
  std::string f;
  EXPECT_TRUE(encode(e, std::span<const char>(), f).isOk()) << "no data: a plain frame";
  EXPECT_EQ(f, frame(e));
  const std::string big(1000, 'x');
  EXPECT_EQ(encode(e, std::span<const char>(big), f, 900).code(), StatusCode::InvalidArgument)
      << "the data counts against the limit";
  Envelope ok;
  ok.mutable_ok();
  EXPECT_EQ(encode(ok, std::span<const char>(big), f).code(), StatusCode::InvalidArgument)
      << "data needs a channel_op to go into";
  Envelope both = e;
  both.mutable_channel_op()->set_data("already");
  EXPECT_EQ(encode(both, std::span<const char>(big), f).code(), StatusCode::InvalidArgument);
}

TEST(Codec, AWholeFrameDecodesInPlaceAndAnythingElseIsRefused) {
  Envelope e;
  e.mutable_output_line()->set_line("one line\n");
  const std::string f = frame(e);
  auto d = decodeFrame(bytesOf(f));
  ASSERT_TRUE(d.has_value()) << d.error().toString();
  EXPECT_EQ(d->output_line().line(), "one line\n");
  auto refused = [](const std::string& bytes, std::size_t maxBody = kDefaultMaxBody) {
    auto r = decodeFrame(bytesOf(bytes), maxBody);
    EXPECT_FALSE(r.has_value());
    return r.has_value() ? std::string() : r.error().toString();
  };
  EXPECT_NE(refused(f.substr(0, f.size() - 1)).find("the frame has"), std::string::npos);
  EXPECT_NE(refused(f + "x").find("the frame has"), std::string::npos);
  EXPECT_NE(refused(f.substr(0, 7)).find("truncated header"), std::string::npos);
  EXPECT_NE(refused("").find("truncated header"), std::string::npos);
  auto none = decodeFrame(std::span<const std::byte>());  // no bytes at all, not even a pointer
  ASSERT_FALSE(none.has_value());
  EXPECT_NE(none.error().toString().find("truncated header"), std::string::npos);
  EXPECT_NE(refused("XRGN" + f.substr(4)).find("bad magic"), std::string::npos);
  EXPECT_NE(refused(header(kVersion + 1, 0, 0)).find("not supported"), std::string::npos);
  EXPECT_NE(refused(header(kVersion, 2, 0)).find("flags"), std::string::npos);
  EXPECT_NE(refused(f, 3).find("limit"), std::string::npos);
  EXPECT_NE(refused(header(kVersion, 0, 3) + "\xff\xff\xff").find("does not parse"),
            std::string::npos);
  EXPECT_NE(refused(header(kVersion, 0, 0)).find("carries no message"), std::string::npos);
}

TEST(Codec, DataAfterTheBodyIsRefusedWhereItHasNoChannelOpToGoInto) {
  auto refused = [](const std::string& bytes, std::size_t maxBody = kDefaultMaxBody) {
    std::span<const char> data;
    auto r = decodeFrame(bytesOf(bytes), maxBody, &data);
    EXPECT_FALSE(r.has_value());
    EXPECT_TRUE(data.empty());
    return r.has_value() ? std::string() : r.error().toString();
  };
  Envelope e;
  e.mutable_channel_op()->set_kind(ChannelOp::SEND);
  std::string f;
  ASSERT_TRUE(encode(e, std::span<const char>("abcd", 4), f).isOk());
  const std::string body = f.substr(kHeaderSize, f.size() - kHeaderSize - 4);
  const auto length = static_cast<std::uint32_t>(body.size());
  // The flag with nothing after the body.
  EXPECT_NE(refused(header(kVersion, kFlagData, length) + body).find("data after it"),
            std::string::npos);
  // Data counts against the limit.
  EXPECT_NE(refused(f, f.size() - kHeaderSize - 1).find("limit"), std::string::npos);
  // Data for an envelope without a channel_op, or one that has data of its own.
  auto withData = [](const Envelope& m) {
    const std::string plain = frame(m).substr(kHeaderSize);
    return header(kVersion, kFlagData, static_cast<std::uint32_t>(plain.size())) + plain + "data";
  };
  Envelope line;
  line.mutable_output_line()->set_line("x\n");
  EXPECT_NE(refused(withData(line)).find("no channel_op"), std::string::npos);
  Envelope both = e;
  both.mutable_channel_op()->set_data("own");
  EXPECT_NE(refused(withData(both)).find("no channel_op"), std::string::npos);
}

}  // namespace
}  // namespace dragon::protocol
