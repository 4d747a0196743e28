// SPDX-License-Identifier: MIT
#include <dragon/descriptor.hpp>
#include <dragon/result.hpp>
#include <dragon/timeout.hpp>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>

namespace dragon {
namespace {

Result<int> half(int v) {
  if (v % 2 != 0) {
    return Status(StatusCode::InvalidArgument, "odd");
  }
  return v / 2;
}

Status quarter(int v, int* out) {
  DRAGON_ASSIGN_OR_RETURN(int h, half(v));
  DRAGON_ASSIGN_OR_RETURN(int q, half(h));
  *out = q;
  return Status::ok();
}

TEST(Status, CodeOnlyStatusNamesItsCode) {
  Status s(StatusCode::PoolExhausted);
  EXPECT_FALSE(s.isOk());
  EXPECT_EQ(s.message(), "PoolExhausted");
  EXPECT_EQ(s.toString(), "PoolExhausted");
}

TEST(Status, FromErrnoCarriesTheSystemMessage) {
  Status s = Status::fromErrno("open /nope", ENOENT);
  EXPECT_EQ(s.code(), StatusCode::SystemError);
  EXPECT_NE(s.toString().find("open /nope: No such file or directory"), std::string::npos);
}

TEST(Result, AssignOrReturnPropagatesTheFirstError) {
  int out = 0;
  EXPECT_TRUE(quarter(12, &out).isOk());
  EXPECT_EQ(out, 3);
  Status s = quarter(6, &out);
  EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
  EXPECT_EQ(s.message(), "odd");
}

TEST(Result, BuiltFromAnOkStatusBecomesInternal) {
  Result<int> r{Status::ok()};
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::Internal);
}

TEST(Deadline, NoneIsExpiredAndForeverNever) {
  EXPECT_TRUE(Deadline(Timeout::none()).expired());
  EXPECT_FALSE(Deadline(Timeout::forever()).expired());
  Deadline d(Timeout::after(std::chrono::hours(1)));
  EXPECT_FALSE(d.expired());
  EXPECT_GT(d.monotonicNs(), monotonicNowNs());
}

TEST(Timeout, DurationsBeyondInt64NanosecondsWaitForEverAndNegativeOnesAreTries) {
  // seconds::max() in nanoseconds overflows int64: it must not wrap into a try.
  EXPECT_TRUE(Timeout::after(std::chrono::seconds::max()).isForever());
  EXPECT_TRUE(Timeout::after(std::chrono::hours(300'000'000)).isForever());
  EXPECT_TRUE(Timeout::after(std::chrono::duration<double>(1e300)).isForever());
  EXPECT_TRUE(Timeout::after(std::chrono::seconds(-5)).isNone());
  EXPECT_TRUE(Timeout::after(std::chrono::seconds::min()).isNone());
  EXPECT_TRUE(Timeout::after(std::chrono::nanoseconds(0)).isNone());
  EXPECT_EQ(Timeout::after(std::chrono::milliseconds(1500)).nanoseconds(), 1'500'000'000);
  EXPECT_EQ(Timeout::after(std::chrono::duration<double>(0.25)).nanoseconds(), 250'000'000);
}

TEST(Descriptor, RoundTripsThroughBytesAndText) {
  ObjectDescriptor d;
  d.kind = ObjectKind::Channel;
  d.node = 7;
  d.id = 0x1122334455667788ull;
  d.poolId = 42;
  d.offset = 4096;
  auto bytes = d.serialize();
  auto parsed = ObjectDescriptor::parse(bytes);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().toString();
  EXPECT_EQ(*parsed, d);
  auto text = d.toString();
  EXPECT_EQ(text.rfind("dragon:", 0), 0u);
  auto fromText = ObjectDescriptor::fromString(text);
  ASSERT_TRUE(fromText.has_value());
  EXPECT_EQ(*fromText, d);
}

TEST(Descriptor, RejectsMalformedInputWithClearErrors) {
  ObjectDescriptor d;
  d.id = 1;
  d.poolId = 1;
  auto bytes = d.serialize();
  EXPECT_EQ(ObjectDescriptor::parse(std::span(bytes).first(31)).error().code(),
            StatusCode::InvalidArgument);
  auto badMagic = bytes;
  badMagic[0] = std::byte{'X'};
  EXPECT_NE(ObjectDescriptor::parse(badMagic).error().toString().find("magic"), std::string::npos);
  auto badVersion = bytes;
  badVersion[2] = std::byte{9};
  EXPECT_NE(ObjectDescriptor::parse(badVersion).error().toString().find("version 9"),
            std::string::npos);
  auto badKind = bytes;
  badKind[3] = std::byte{77};
  EXPECT_NE(ObjectDescriptor::parse(badKind).error().toString().find("kind 77"),
            std::string::npos);
  auto zeroId = bytes;
  for (int i = 8; i < 16; ++i) zeroId[i] = std::byte{0};
  EXPECT_EQ(ObjectDescriptor::parse(zeroId).error().code(), StatusCode::InvalidArgument);
  EXPECT_FALSE(ObjectDescriptor::fromString("dragon:zz").has_value());
  std::string text = d.toString();
  text[10] = 'g';
  EXPECT_NE(ObjectDescriptor::fromString(text).error().toString().find("hex"), std::string::npos);
  EXPECT_FALSE(ObjectDescriptor::fromString("").has_value());
}

// Every change confined to one byte of a valid descriptor, and to two adjacent bytes, is
// refused as corrupt (the CRC-16 detects every burst of up to 16 bits), for descriptors of each
// kind with every field in use.
TEST(Descriptor, EveryByteChangeIsDetected) {
  ObjectDescriptor pool;
  pool.kind = ObjectKind::Pool;
  pool.node = 3;
  pool.id = pool.poolId = 0x0123456789abcdefull;
  ObjectDescriptor channel;
  channel.kind = ObjectKind::Channel;
  channel.node = 0xfffffffe;
  channel.id = 5;
  channel.poolId = 0xfedcba9876543210ull;
  channel.offset = (std::uint64_t{1} << 40) + 4096;
  for (const ObjectDescriptor& d : {pool, channel}) {
    const auto good = d.serialize();
    ASSERT_EQ(ObjectDescriptor::parse(good).value(), d);
    int refused = 0;
    for (std::size_t i = 0; i < good.size(); ++i) {
      for (int v = 0; v < 256; ++v) {
        if (static_cast<std::byte>(v) == good[i]) continue;
        auto b = good;
        b[i] = static_cast<std::byte>(v);
        auto r = ObjectDescriptor::parse(b);
        ASSERT_FALSE(r.has_value()) << "byte " << i << " set to " << v << " went unnoticed";
        EXPECT_EQ(r.error().code(), StatusCode::InvalidArgument);
        ++refused;
      }
    }
    EXPECT_EQ(refused, 32 * 255);
    for (std::size_t i = 0; i + 1 < good.size(); ++i) {
      for (int v = 1; v < 65536; v += 257) {  // a spread of two-byte patterns
        auto b = good;
        b[i] ^= static_cast<std::byte>(v & 0xff);
        b[i + 1] ^= static_cast<std::byte>(v >> 8);
        EXPECT_FALSE(ObjectDescriptor::parse(b).has_value()) << "bytes " << i << ", " << i + 1;
      }
    }
  }
}

}  // namespace
}  // namespace dragon
