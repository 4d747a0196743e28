// SPDX-License-Identifier: MIT
// PartStore: what a channel's home dragond keeps of messages larger than one message between
// nodes carries, sent or received in parts (daemon/parts.hpp).
#include "daemon/parts.hpp"

#include "daemon/gateway.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace dragon::daemon {
namespace {

namespace pb = dragon::protocol;
constexpr std::uint64_t kPart = PartStore::kPart;

pb::ChannelOp part(std::uint64_t transfer, std::uint64_t offset, std::uint64_t total,
                   std::string data) {
  pb::ChannelOp op;
  op.set_kind(pb::ChannelOp::SEND_PART);
  op.set_transfer(transfer);
  op.set_part_offset(offset);
  op.set_total_size(total);
  op.set_data(std::move(data));
  return op;
}

std::string pattern(std::uint64_t n, char seed) {
  std::string s(n, '\0');
  for (std::uint64_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i % 251);
  return s;
}

// A message taken whole, as the gateway hands it over (here not a pool block).
std::shared_ptr<const WholeMessage> held(const std::string& bytes) {
  auto w = std::make_shared<WholeMessage>();
  const auto* p = reinterpret_cast<const std::byte*>(bytes.data());
  w->message = Message::fromBytes(std::vector<std::byte>(p, p + bytes.size()));
  return w;
}

TEST(PartStore, ASendInPartsBecomesTheWholeMessageWithItsLastPart) {
  std::shared_ptr<PartBlock> noBlock;  // stays null: parts kept in memory
  PartStore store;
  const std::uint64_t total = 2 * kPart + 5;
  const std::string whole = pattern(total, 'a');
  ASSERT_TRUE(store.keep(1, part(7, 0, total, whole.substr(0, kPart)), 0).isOk());
  ASSERT_TRUE(store.keep(1, part(7, kPart, total, whole.substr(kPart, kPart)), 0).isOk());
  EXPECT_EQ(store.keptSendBytes(), total);
  // The same transfer id from another node is another transfer.
  pb::ChannelOp last = part(7, 2 * kPart, total, whole.substr(2 * kPart));
  last.set_kind(pb::ChannelOp::SEND);
  EXPECT_EQ(store.assemble(2, last, noBlock).code(), StatusCode::InvalidArgument);
  ASSERT_TRUE(store.assemble(1, last, noBlock).isOk());
  EXPECT_EQ(last.data(), whole);
  EXPECT_EQ(last.transfer(), 0u);
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(store.keptSendBytes(), 0u);
}

TEST(PartStore, PartsOutOfOrderOrPastTheEndEndTheTransfer) {
  std::shared_ptr<PartBlock> noBlock;  // stays null: parts kept in memory
  PartStore store;
  const std::uint64_t total = 3 * kPart;
  EXPECT_EQ(store.keep(1, part(0, 0, total, "x"), 0).code(), StatusCode::InvalidArgument);
  // A part is never the whole message (that is a plain SEND), nor empty.
  EXPECT_EQ(store.keep(1, part(1, 0, 1, "x"), 0).code(), StatusCode::InvalidArgument);
  EXPECT_EQ(store.keep(1, part(1, 0, total, ""), 0).code(), StatusCode::InvalidArgument);
  EXPECT_EQ(store.keep(1, part(1, kPart, total, "x"), 0).code(), StatusCode::InvalidArgument);
  ASSERT_TRUE(store.keep(1, part(1, 0, total, std::string(10, 'a')), 0).isOk());
  EXPECT_EQ(store.keep(1, part(1, 0, total, "b"), 0).code(), StatusCode::InvalidArgument);
  ASSERT_TRUE(store.keep(1, part(2, 0, total, std::string(10, 'a')), 0).isOk());
  EXPECT_EQ(store.keep(1, part(2, 11, total, "gap"), 0).code(), StatusCode::InvalidArgument);
  EXPECT_EQ(store.size(), 0u);  // both dropped: a sender that erred starts again
  // A SEND_PART may not complete the message (the last part comes with the SEND), and the
  // last part must complete it exactly.
  ASSERT_TRUE(store.keep(1, part(3, 0, kPart + 4, std::string(kPart, 'a')), 0).isOk());
  EXPECT_EQ(store.keep(1, part(3, kPart, kPart + 4, "abcd"), 0).code(),
            StatusCode::InvalidArgument);
  ASSERT_TRUE(store.keep(1, part(4, 0, kPart + 4, std::string(kPart, 'a')), 0).isOk());
  pb::ChannelOp last = part(4, kPart, kPart + 4, "abc");
  EXPECT_EQ(store.assemble(1, last, noBlock).code(), StatusCode::InvalidArgument);
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(store.keptSendBytes(), 0u);
}

TEST(PartStore, UnfinishedSendsAreBoundedAndGoWithTheirNodeOrWhenIdle) {
  PartStore store;
  const std::uint64_t big = PartStore::kMaxKeptSendBytes - kPart;
  ASSERT_TRUE(store.keep(1, part(1, 0, big, "a"), 0).isOk());
  EXPECT_EQ(store.keep(2, part(1, 0, 2 * kPart, "a"), 0).code(), StatusCode::PoolExhausted);
  store.dropNode(1);
  EXPECT_EQ(store.size(), 0u);
  ASSERT_TRUE(store.keep(2, part(2, 0, kPart + 1, "a"), 10).isOk());
  EXPECT_EQ(store.size(), 1u);
  EXPECT_EQ(store.keptSendBytes(), kPart + 1);
  EXPECT_TRUE(store.expire(10 + PartStore::kIdleNs));  // idle for exactly the limit: kept
  EXPECT_FALSE(store.expire(11 + PartStore::kIdleNs));
  EXPECT_EQ(store.keptSendBytes(), 0u);
}

TEST(PartStore, ASizeThatWouldWrapTheBoundIsRefusedNotReserved) {
  // With some bytes kept, a total of 2^64 - kept + 1 wraps their sum to 1: it must be refused
  // as too large (before, the bound passed and the reserve threw, ending dragond).
  PartStore store;
  ASSERT_TRUE(store.keep(1, part(1, 0, kPart + 1, "a"), 0).isOk());
  const std::uint64_t wraps = ~std::uint64_t{0} - store.keptSendBytes() + 2;
  EXPECT_EQ(store.keep(1, part(2, 0, wraps, "a"), 0).code(), StatusCode::PoolExhausted);
  EXPECT_EQ(store.keep(1, part(3, 0, ~std::uint64_t{0}, "a"), 0).code(),
            StatusCode::PoolExhausted);
  EXPECT_EQ(store.keptSendBytes(), kPart + 1);
}

TEST(PartStore, AReceiveLargerThanOnePartIsHandedOutInOrder) {
  PartStore store;
  pb::ChannelOpReply small;
  store.split(3, small, held("tiny"), 0);
  EXPECT_EQ(small.data(), "tiny");
  EXPECT_EQ(small.total_size(), 0u);  // one part: nothing kept
  EXPECT_EQ(store.size(), 0u);

  const std::string whole = pattern(2 * kPart + 9, 'k');
  pb::ChannelOpReply reply;
  store.split(3, reply, held(whole), 0);
  ASSERT_EQ(reply.data().size(), kPart);
  EXPECT_EQ(reply.total_size(), whole.size());
  ASSERT_NE(reply.transfer(), 0u);
  std::string got = reply.data();
  pb::ChannelOp ask;
  ask.set_kind(pb::ChannelOp::RECV_PART);
  ask.set_transfer(reply.transfer());
  ask.set_part_offset(got.size());
  EXPECT_FALSE(store.next(4, ask, 0).has_value());  // another node's transfer
  while (got.size() < whole.size()) {
    ask.set_part_offset(got.size());
    auto more = store.next(3, ask, 0);
    ASSERT_TRUE(more.has_value()) << more.error().toString();
    got += *more;
  }
  EXPECT_EQ(got, whole);
  EXPECT_EQ(store.size(), 0u);  // all handed out
  EXPECT_FALSE(store.next(3, ask, 0).has_value());
}

TEST(PartStore, AReceivePartAskedOutOfOrderEndsTheTransfer) {
  PartStore store;
  pb::ChannelOpReply reply;
  store.split(3, reply, held(pattern(kPart + 1, 'z')), 0);
  pb::ChannelOp ask;
  ask.set_kind(pb::ChannelOp::RECV_PART);
  ask.set_transfer(reply.transfer());
  ask.set_part_offset(0);
  EXPECT_EQ(store.next(3, ask, 0).error().code(), StatusCode::InvalidArgument);
  EXPECT_EQ(store.size(), 0u);
}

TEST(PartStore, AReceiveWhoseReceiverLeftIsDroppedOnlyForItsNode) {
  PartStore store;
  pb::ChannelOpReply reply;
  store.split(3, reply, held(pattern(kPart + 1, 'r')), 0);
  ASSERT_EQ(store.size(), 1u);
  store.drop(3, reply.transfer(), false);  // a send's id is another transfer
  store.drop(4, reply.transfer(), true);   // another node's
  EXPECT_EQ(store.size(), 1u);
  store.drop(3, reply.transfer(), true);
  EXPECT_EQ(store.size(), 0u);
  pb::ChannelOp ask;
  ask.set_kind(pb::ChannelOp::RECV_PART);
  ask.set_transfer(reply.transfer());
  ask.set_part_offset(kPart);
  EXPECT_EQ(store.next(3, ask, 0).error().code(), StatusCode::InvalidArgument);
}

TEST(PartStore, ASendRestoredAfterItsLastPartWasRefusedAssemblesAgainOrIsDropped) {
  std::shared_ptr<PartBlock> noBlock;  // stays null: parts kept in memory
  // A SEND of a last part that the home could not take yet (cluster.parked_send_bytes): its
  // other parts are kept again for the next try, counted, until it is taken or its sender
  // gives up.
  PartStore s;
  const std::string whole = pattern(kPart + 10, 'r');
  ASSERT_TRUE(s.keep(3, part(5, 0, whole.size(), whole.substr(0, kPart)), 1).isOk());
  pb::ChannelOp last = part(5, kPart, whole.size(), whole.substr(kPart));
  last.set_kind(pb::ChannelOp::SEND);
  pb::ChannelOp first = last;
  ASSERT_TRUE(s.assemble(3, first, noBlock).isOk());
  EXPECT_EQ(s.keptSendBytes(), 0u);
  s.restore(3, 5, whole.size(), kPart, std::move(*first.mutable_data()), nullptr, 2);
  EXPECT_EQ(s.keptSendBytes(), whole.size());
  pb::ChannelOp again = last;
  ASSERT_TRUE(s.assemble(3, again, noBlock).isOk());
  EXPECT_TRUE(again.data() == whole) << "the message changed on its second assembly";
  s.restore(3, 5, whole.size(), kPart, std::move(*again.mutable_data()), nullptr, 3);
  s.touch(3, 5, PartStore::kIdleNs + 10);
  EXPECT_TRUE(s.expire(PartStore::kIdleNs + 5)) << "a touched transfer expired";
  EXPECT_EQ(s.size(), 1u);
  s.drop(3, 5, false);
  EXPECT_EQ(s.size(), 0u);
  EXPECT_EQ(s.keptSendBytes(), 0u);
  pb::ChannelOp gone = last;
  EXPECT_EQ(s.assemble(3, gone, noBlock).code(), StatusCode::InvalidArgument);
}

TEST(PartStore, ASendInABlockOfThePoolIsAssembledThereAndTheBlockGoesWithTheTransfer) {
  // A first part given a block of the channel's pool: the message is assembled in it (nothing
  // counted against the home's limit), the SEND of the last part hands the block on, and a
  // transfer dropped before that frees its block.
  PoolOptions po;
  po.size = std::size_t{64} << 20;
  po.prefault = false;
  auto created = Pool::create(po);
  ASSERT_TRUE(created.has_value()) << created.error().toString();
  auto pool = std::make_shared<Pool>(std::move(*created));
  auto used = [&] { return pool->stats().value().allocationCount; };
  auto blockOf = [&](std::uint64_t n) {
    auto a = pool->alloc(n);
    EXPECT_TRUE(a.has_value());
    return a.has_value() ? std::make_shared<PartBlock>(pool, *a, n) : nullptr;
  };
  const std::uint64_t total = kPart + 7;
  const std::string whole = pattern(total, 'b');
  PartStore store;
  EXPECT_EQ(store.keep(1, part(1, 0, total, whole.substr(0, kPart)), 0, blockOf(total - 1)).code(),
            StatusCode::InvalidArgument) << "a block of another size was taken";
  EXPECT_EQ(used(), 0u);
  ASSERT_TRUE(store.keep(1, part(1, 0, total, whole.substr(0, kPart)), 0, blockOf(total)).isOk());
  EXPECT_EQ(store.keptSendBytes(), 0u) << "a send in a block counted against the home's memory";
  pb::ChannelOp last = part(1, kPart, total, whole.substr(kPart));
  last.set_kind(pb::ChannelOp::SEND);
  std::shared_ptr<PartBlock> block;
  ASSERT_TRUE(store.assemble(1, last, block).isOk());
  ASSERT_NE(block, nullptr);
  EXPECT_TRUE(last.data().empty()) << "the message was copied out of its block";
  ASSERT_EQ(block->length(), total);
  EXPECT_EQ(std::memcmp(block->bytes().data(), whole.data(), total), 0);
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(used(), 1u);
  // Restored (the home could not take the SEND yet): assembled again in the same block.
  store.restore(1, 1, total, kPart, "", block, 0);
  block.reset();
  EXPECT_EQ(used(), 1u);
  pb::ChannelOp again = part(1, kPart, total, whole.substr(kPart));
  again.set_kind(pb::ChannelOp::SEND);
  ASSERT_TRUE(store.assemble(1, again, block).isOk());
  ASSERT_NE(block, nullptr);
  EXPECT_EQ(std::memcmp(block->bytes().data(), whole.data(), total), 0);
  block.reset();
  EXPECT_EQ(used(), 0u) << "the block of a send nobody took stayed allocated";
  // Dropped mid-transfer (its sender left): the block goes back at once.
  ASSERT_TRUE(store.keep(2, part(9, 0, total, "x"), 0, blockOf(total)).isOk());
  EXPECT_EQ(used(), 1u);
  store.drop(2, 9, false);
  EXPECT_EQ(used(), 0u);
  // A block the channel took (released) is not freed again.
  auto taken = blockOf(total);
  taken->release();
  taken.reset();
  EXPECT_EQ(used(), 1u);
}

TEST(GatewayLimit, AWaitingSendIsHeldWhenItFitsWhenNothingIsOrWhenItIsTheOneOverdue) {
  // Gateway::admits, the rule of cluster.parked_send_bytes (gateway_test has it at work).
  const std::uint64_t limit = 1000;
  EXPECT_TRUE(Gateway::admits(0, limit, 5000, false, 0)) << "one is always held";
  EXPECT_TRUE(Gateway::admits(600, limit, 400, false, 0));
  EXPECT_FALSE(Gateway::admits(600, limit, 401, false, 0));
  EXPECT_FALSE(Gateway::admits(1500, limit, 1, false, 0)) << "past the limit already";
  EXPECT_TRUE(Gateway::admits(1500, limit, 5000, true, 0)) << "the one overdue";
  EXPECT_FALSE(Gateway::admits(1500, limit, 5000, true, 1)) << "a second overdue";
  EXPECT_TRUE(Gateway::admits(600, limit, 400, true, 1)) << "overdue and fitting";
  EXPECT_TRUE(Gateway::admits(0, 0, 1, false, 0)) << "limit 0: one at a time";
  EXPECT_FALSE(Gateway::admits(1, 0, 1, false, 0));
}

}  // namespace
}  // namespace dragon::daemon
