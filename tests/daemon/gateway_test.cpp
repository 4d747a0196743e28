// SPDX-License-Identifier: MIT
// dragond's channel gateway (daemon/gateway.cpp), on one real dragond: the ChannelOp requests
// that another node's dragond forwards, sent here straight over the Unix socket to a channel of
// this node. Parked operations complete when the channel allows, deadlines give Timeout, a
// destroyed channel fails its waiters, a requester that leaves takes no message, and
// malformed operations are errors.
#include "daemon_fixture.hpp"

#include "base/robust_mutex.hpp"
#include "channel/layout.hpp"
#include "pool/heap.hpp"
#include "protocol/codec.hpp"
#include "protocol/socket_io.hpp"
#include "support/raw_connection.hpp"

#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <thread>

namespace dragon {
namespace {

using namespace std::chrono_literals;
using testing::RunningDaemon;
namespace pb = dragon::protocol;

// A connection that speaks the protocol by hand (support/raw_connection.hpp), its Hello
// answered or the test fails.
class RawConn : public testing::RawConnection {
 public:
  explicit RawConn(const std::string& path) : RawConn(connectTo(path)) {}
  // Over a connection another process made (dragond knows it as that process's).
  explicit RawConn(int connected) : RawConnection(connected) {
    EXPECT_GE(connected, 0);
    EXPECT_TRUE(hello(10s)) << "no HelloReply";
  }
  std::uint64_t post(pb::Envelope e) {
    const std::uint64_t id = RawConnection::post(std::move(e));
    EXPECT_NE(id, 0u) << "a request could not be sent";
    return id;
  }
};

pb::Envelope op(const ObjectDescriptor& ch, pb::ChannelOp::Kind kind, std::int64_t timeoutNs) {
  pb::Envelope e;
  auto* o = e.mutable_channel_op();
  *o->mutable_channel() = pb::toRef(ch);
  o->set_kind(kind);
  o->set_timeout_ns(timeoutNs);
  return e;
}

// A SEND_PART, or the SEND of a transfer's last part: `data` at `at` of `total` bytes.
pb::Envelope partOp(const ObjectDescriptor& ch, pb::ChannelOp::Kind kind, std::int64_t timeoutNs,
                    std::uint64_t transfer, std::uint64_t at, std::uint64_t total,
                    std::string data) {
  pb::Envelope e = op(ch, kind, timeoutNs);
  e.mutable_channel_op()->set_transfer(transfer);
  e.mutable_channel_op()->set_part_offset(at);
  e.mutable_channel_op()->set_total_size(total);
  e.mutable_channel_op()->set_data(std::move(data));
  return e;
}

StatusCode codeOf(const pb::Envelope& e) {
  return e.has_error() ? static_cast<StatusCode>(e.error().code()) : StatusCode::Ok;
}

std::span<const std::byte> bytesOf(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

// Sends every part of `payload` but its last to `ch` as transfer `transfer` (SEND_PARTs of one
// part each, every one answered Ok, else the test fails), calling `after` with the bytes sent
// so far after each. The last part's offset; nothing when a part was refused.
std::optional<std::uint64_t> sendAllButLast(
    testing::RawConnection& raw, const ObjectDescriptor& ch, std::uint64_t transfer,
    const std::string& payload, const std::function<void(std::uint64_t)>& after = {}) {
  const std::uint64_t part = kMaxMessageAcrossNodes;
  std::uint64_t at = 0;
  for (; at + part < payload.size(); at += part) {
    auto r = raw.reply(raw.post(partOp(ch, pb::ChannelOp::SEND_PART, 0, transfer, at,
                                       payload.size(), payload.substr(at, part))),
                       std::chrono::seconds(10));
    if (!r.has_value() || codeOf(*r) != StatusCode::Ok) {
      ADD_FAILURE() << "the part at " << at << " was refused: "
                    << (r ? r->DebugString().substr(0, 300) : std::string("no answer"));
      return std::nullopt;
    }
    if (after) after(at + part);
  }
  return at;
}

// The SEND of `payload`'s last part, from `at`, as transfer `transfer`.
pb::Envelope lastPart(const ObjectDescriptor& ch, std::int64_t timeoutNs, std::uint64_t transfer,
                      std::uint64_t at, const std::string& payload) {
  return partOp(ch, pb::ChannelOp::SEND, timeoutNs, transfer, at, payload.size(),
                payload.substr(at));
}

// The answer to a RECV with parts of `ch`'s next message: its first part, or nothing (the test
// fails) when there was no such answer.
std::optional<pb::Envelope> receiveFirstPart(testing::RawConnection& raw,
                                             const ObjectDescriptor& ch) {
  pb::Envelope take = op(ch, pb::ChannelOp::RECV, 0);
  take.mutable_channel_op()->set_parts(true);
  auto r = raw.reply(raw.post(std::move(take)), std::chrono::seconds(10));
  if (!r.has_value() || !r->has_channel_op_reply()) {
    ADD_FAILURE() << "no first part: " << (r ? r->DebugString() : std::string("no answer"));
    return std::nullopt;
  }
  return r;
}

struct Gateway : ::testing::Test {
  std::unique_ptr<RunningDaemon> d = RunningDaemon::start();
  Client client = d->connect();
  std::shared_ptr<Pool> pool;
  std::unique_ptr<ClientChannel> ch;

  // A channel (options `o`) of a lazy pool of its own of `bytes`, as a large message needs:
  // `big` and `c`, or a fatal failure.
  void lazyChannel(std::size_t bytes, std::shared_ptr<Pool>& big,
                   std::unique_ptr<ClientChannel>& c, const ChannelOptions& o = {}) {
    auto p = client.createPool(bytes, {}, /*lazy=*/true);
    ASSERT_TRUE(p.has_value()) << p.error().toString();
    auto made = client.createChannel((*p)->descriptor(), o);
    ASSERT_TRUE(made.has_value()) << made.error().toString();
    big = std::move(*p);
    c = std::move(*made);
  }

  void SetUp() override {
    auto p = client.createPool(std::size_t{4} << 20);
    ASSERT_TRUE(p.has_value()) << p.error().toString();
    pool = *p;
    ChannelOptions o;
    o.capacity = 2;
    o.inlineSize = 64;
    auto c = client.createChannel(pool->descriptor(), o);
    ASSERT_TRUE(c.has_value()) << c.error().toString();
    ch = std::move(*c);
  }
};

// A child process that takes `m` (a lock in shared memory) and stops itself holding it (as a
// debugger or SIGSTOP would leave it): its pid once it is stopped; -1 if it did not get there.
// SIGCONT lets it release the lock and exit 0.
pid_t stoppedHolding(pthread_mutex_t* m) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) return -1;
  const pid_t holder = fork();
  if (holder == 0) {
    if (base::RobustMutex::lock(m) != base::LockState::Locked) _exit(2);
    (void)!write(ready[1], "x", 1);
    raise(SIGSTOP);
    base::RobustMutex::unlock(m);
    _exit(0);
  }
  close(ready[1]);
  char c = 0;
  const bool locked = holder > 0 && read(ready[0], &c, 1) == 1;
  close(ready[0]);
  int st = 0;
  if (!locked || waitpid(holder, &st, WUNTRACED) != holder || !WIFSTOPPED(st)) {
    if (holder > 0) kill(holder, SIGKILL);
    return -1;
  }
  return holder;
}

// A lock's channel (its holder tracked) holding its token.
Result<std::unique_ptr<ClientChannel>> lockWithToken(Client& client, const Pool& pool) {
  ChannelOptions o;
  o.capacity = 1;
  o.inlineSize = 8;
  o.trackHolder = true;
  DRAGON_ASSIGN_OR_RETURN(std::unique_ptr<ClientChannel> lock,
                          client.createChannel(pool.descriptor(), o));
  DRAGON_TRY(lock->send(bytesOf("t")));
  return lock;
}

TEST_F(Gateway, AParkedRecvCompletesWhenAMessageIsSentAndOrderIsKept) {
  RawConn raw(d->socket());
  const auto first = raw.post(op(ch->descriptor(), pb::ChannelOp::RECV, -1));
  EXPECT_FALSE(raw.reply(first, 100ms).has_value()) << "a recv of an empty channel waits";
  ASSERT_TRUE(ch->send(bytesOf("one")).isOk());
  ASSERT_TRUE(ch->send(bytesOf("two")).isOk());
  auto r = raw.reply(first, 10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->has_channel_op_reply()) << r->DebugString();
  EXPECT_EQ(r->channel_op_reply().data(), "one");
  r = raw.reply(raw.post(op(ch->descriptor(), pb::ChannelOp::RECV, -1)), 10s);
  ASSERT_TRUE(r.has_value() && r->has_channel_op_reply());
  EXPECT_EQ(r->channel_op_reply().data(), "two");
}

TEST_F(Gateway, AParkedSendCompletesWhenRoomIsMadeAndPollSeesIt) {
  RawConn raw(d->socket());
  ASSERT_TRUE(ch->send(bytesOf("a")).isOk());
  ASSERT_TRUE(ch->send(bytesOf("b")).isOk());
  auto send = op(ch->descriptor(), pb::ChannelOp::SEND, -1);
  send.mutable_channel_op()->set_data("c");
  const auto sent = raw.post(send);
  auto poll = op(ch->descriptor(), pb::ChannelOp::POLL, -1);
  poll.mutable_channel_op()->set_events(2);
  EXPECT_FALSE(raw.reply(sent, 100ms).has_value()) << "a send to a full channel waits";
  std::byte buf[8];
  ASSERT_TRUE(ch->recv(buf).has_value());
  auto r = raw.reply(sent, 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  for (const char* want : {"b", "c"}) {
    auto n = ch->recv(buf, Timeout::none());
    ASSERT_TRUE(n.has_value());
    EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), *n), want);
  }
  r = raw.reply(raw.post(poll), 10s);
  ASSERT_TRUE(r.has_value() && r->has_channel_op_reply());
  EXPECT_EQ(r->channel_op_reply().ready(), 2u);
}

TEST_F(Gateway, TriesAndDeadlinesAnswerAsTheLocalCalls) {
  RawConn raw(d->socket());
  auto r = raw.reply(raw.post(op(ch->descriptor(), pb::ChannelOp::RECV, 0)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::WouldBlock);
  const auto t0 = std::chrono::steady_clock::now();
  r = raw.reply(raw.post(op(ch->descriptor(), pb::ChannelOp::RECV, 200'000'000)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Timeout);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 200ms);
  auto poll = op(ch->descriptor(), pb::ChannelOp::POLL, 50'000'000);
  poll.mutable_channel_op()->set_events(1);
  r = raw.reply(raw.post(poll), 10s);
  ASSERT_TRUE(r.has_value() && r->has_channel_op_reply());
  EXPECT_EQ(r->channel_op_reply().ready(), 0u);
  ASSERT_TRUE(ch->send(bytesOf("x")).isOk());
  ASSERT_TRUE(ch->send(bytesOf("y")).isOk());
  auto send = op(ch->descriptor(), pb::ChannelOp::SEND, 0);
  send.mutable_channel_op()->set_data("z");
  r = raw.reply(raw.post(send), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::ChannelFull);
  send.mutable_channel_op()->set_timeout_ns(100'000'000);
  r = raw.reply(raw.post(send), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Timeout);
  auto small = op(ch->descriptor(), pb::ChannelOp::RECV, 0);
  small.mutable_channel_op()->set_bounded(true);
  small.mutable_channel_op()->set_max_size(0);
  r = raw.reply(raw.post(small), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::MessageTooLarge);
  EXPECT_EQ(ch->channel().size(), 2u) << "a message too large for the buffer stays queued";
}

TEST_F(Gateway, ASendToAChannelWhosePoolIsFullWaitsForABlockAsTheLocalSend) {
  // The channel has room; its pool has none: a try is PoolExhausted, a deadline waits for a
  // block and gives Timeout, a blocking send completes once a receive frees one.
  auto p = client.createPool(std::size_t{1} << 20);
  ASSERT_TRUE(p.has_value()) << p.error().toString();
  ChannelOptions o;
  o.capacity = 64;
  o.inlineSize = 64;
  auto c = client.createChannel((*p)->descriptor(), o);
  ASSERT_TRUE(c.has_value()) << c.error().toString();
  const std::string big(200 << 10, 'm');
  int queued = 0;
  for (; queued < 64; ++queued) {
    Status st = (*c)->send(bytesOf(big), Timeout::none());
    if (st.code() == StatusCode::PoolExhausted) break;
    ASSERT_TRUE(st.isOk()) << st.toString();
  }
  ASSERT_GT(queued, 0);
  ASSERT_LT(queued, 64) << "the pool never filled";
  RawConn raw(d->socket());
  auto send = op((*c)->descriptor(), pb::ChannelOp::SEND, 0);
  send.mutable_channel_op()->set_data(big);
  auto r = raw.reply(raw.post(send), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::PoolExhausted) << r->DebugString();
  send.mutable_channel_op()->set_timeout_ns(100'000'000);
  const auto t0 = std::chrono::steady_clock::now();
  r = raw.reply(raw.post(send), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Timeout) << r->DebugString();
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 100ms);
  send.mutable_channel_op()->set_timeout_ns(-1);
  const auto sent = raw.post(send);
  EXPECT_FALSE(raw.reply(sent, 100ms).has_value()) << "a send with no block free waits";
  std::string buf(big.size(), '\0');
  ASSERT_TRUE((*c)->recv(std::as_writable_bytes(std::span(buf.data(), buf.size()))).has_value());
  r = raw.reply(sent, 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  EXPECT_EQ((*c)->channel().size(), static_cast<std::size_t>(queued));
}

TEST_F(Gateway, DestroyingTheChannelFailsItsParkedOperationsWithChannelClosed) {
  RawConn raw(d->socket());
  const auto waiting = raw.post(op(ch->descriptor(), pb::ChannelOp::RECV, -1));
  EXPECT_FALSE(raw.reply(waiting, 100ms).has_value());
  ASSERT_TRUE(client.destroy(ch->descriptor()).isOk());
  auto r = raw.reply(waiting, 10s);
  ASSERT_TRUE(r.has_value()) << "the waiter was not answered";
  EXPECT_EQ(codeOf(*r), StatusCode::ChannelClosed);
}

TEST_F(Gateway, AParkedPollOfADestroyedChannelSaysReadableAsForAClosedOne) {
  RawConn raw(d->socket());
  auto poll = op(ch->descriptor(), pb::ChannelOp::POLL, -1);
  poll.mutable_channel_op()->set_events(1);
  const auto waiting = raw.post(poll);
  EXPECT_FALSE(raw.reply(waiting, 100ms).has_value());
  ASSERT_TRUE(client.destroy(ch->descriptor()).isOk());
  auto r = raw.reply(waiting, 10s);
  ASSERT_TRUE(r.has_value() && r->has_channel_op_reply()) << (r ? r->DebugString() : "none");
  EXPECT_EQ(r->channel_op_reply().ready(), 1u);
}

TEST_F(Gateway, AMessageTooLargeToCrossNodesStaysQueued) {
  // Larger than one transport message may carry: a receive through the gateway must leave it
  // there (MessageTooLarge) rather than take it and fail to send it on.
  auto big = client.createPool(std::size_t{48} << 20, {}, /*lazy=*/true);
  ASSERT_TRUE(big.has_value()) << big.error().toString();
  auto c = client.createChannel((*big)->descriptor(), {});
  ASSERT_TRUE(c.has_value());
  // Gateway::kMaxMessage (daemon/gateway.hpp): 16 MiB less 64 KiB.
  const std::string payload((std::size_t{16} << 20) - (std::size_t{64} << 10) + 1, 'b');
  ASSERT_TRUE((*c)->send(bytesOf(payload)).isOk());
  RawConn raw(d->socket());
  auto r = raw.reply(raw.post(op((*c)->descriptor(), pb::ChannelOp::RECV, 0)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::MessageTooLarge);
  EXPECT_EQ((*c)->channel().size(), 1u);
  ASSERT_TRUE((*c)->send(bytesOf("after")).isOk());
  auto n = (*c)->recvBytes(Timeout::none());
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(n->size(), payload.size()) << "the large message is still first in line";
}

TEST_F(Gateway, AMessageLargerThanOnePartCrossesInPartsBothWays) {
  // What a client of another node does (ClientChannel::send, recvBytes), here over the raw
  // protocol: SEND_PARTs then the SEND of the last part; a RECV with parts, then RECV_PARTs.
  auto big = client.createPool(std::size_t{96} << 20, {}, /*lazy=*/true);
  ASSERT_TRUE(big.has_value()) << big.error().toString();
  auto c = client.createChannel((*big)->descriptor(), {});
  ASSERT_TRUE(c.has_value());
  const std::uint64_t part = kMaxMessageAcrossNodes;
  std::string payload(2 * part + 12345, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 13 % 251);
  RawConn raw(d->socket());
  const std::uint64_t transfer = 0x5eed;
  for (std::uint64_t at = 0; at < 2 * part; at += part) {
    pb::Envelope e = op((*c)->descriptor(), pb::ChannelOp::SEND_PART, 0);
    e.mutable_channel_op()->set_transfer(transfer);
    e.mutable_channel_op()->set_part_offset(at);
    e.mutable_channel_op()->set_total_size(payload.size());
    e.mutable_channel_op()->set_data(payload.substr(at, part));
    auto r = raw.reply(raw.post(std::move(e)), 10s);
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString().substr(0, 300);
    EXPECT_EQ((*c)->channel().size(), 0u) << "a part was sent on its own";
  }
  pb::Envelope last = op((*c)->descriptor(), pb::ChannelOp::SEND, 0);
  last.mutable_channel_op()->set_transfer(transfer);
  last.mutable_channel_op()->set_part_offset(2 * part);
  last.mutable_channel_op()->set_total_size(payload.size());
  last.mutable_channel_op()->set_data(payload.substr(2 * part));
  auto r = raw.reply(raw.post(std::move(last)), 10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok);
  ASSERT_EQ((*c)->channel().size(), 1u);

  // Back out in parts: the first with the reply, the rest kept until fetched in order.
  pb::Envelope take = op((*c)->descriptor(), pb::ChannelOp::RECV, 0);
  take.mutable_channel_op()->set_parts(true);
  r = raw.reply(raw.post(std::move(take)), 10s);
  ASSERT_TRUE(r.has_value() && r->has_channel_op_reply()) << (r ? r->DebugString() : "");
  EXPECT_EQ((*c)->channel().size(), 0u) << "the message left with its first part";
  std::string got = r->channel_op_reply().data();
  ASSERT_EQ(got.size(), part);
  ASSERT_EQ(r->channel_op_reply().total_size(), payload.size());
  const std::uint64_t back = r->channel_op_reply().transfer();
  while (got.size() < payload.size()) {
    pb::Envelope more = op((*c)->descriptor(), pb::ChannelOp::RECV_PART, 0);
    more.mutable_channel_op()->set_transfer(back);
    more.mutable_channel_op()->set_part_offset(got.size());
    auto m = raw.reply(raw.post(std::move(more)), 10s);
    ASSERT_TRUE(m.has_value() && m->has_channel_op_reply()) << (m ? m->DebugString() : "");
    ASSERT_FALSE(m->channel_op_reply().data().empty());
    got += m->channel_op_reply().data();
  }
  EXPECT_TRUE(got == payload) << "the message changed on the way";
  // A transfer that is over, or never was, is an error, not another message.
  pb::Envelope again = op((*c)->descriptor(), pb::ChannelOp::RECV_PART, 0);
  again.mutable_channel_op()->set_transfer(back);
  again.mutable_channel_op()->set_part_offset(got.size());
  r = raw.reply(raw.post(std::move(again)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  pb::Envelope orphan = op((*c)->descriptor(), pb::ChannelOp::SEND, 0);
  orphan.mutable_channel_op()->set_transfer(0xdead);
  orphan.mutable_channel_op()->set_part_offset(part);
  orphan.mutable_channel_op()->set_total_size(part + 1);
  orphan.mutable_channel_op()->set_data("x");
  r = raw.reply(raw.post(std::move(orphan)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  EXPECT_EQ((*c)->channel().size(), 0u) << "a last part without its others was sent";
  // A first part larger in total than the channel takes is refused at once.
  auto small = client.createChannel(pool->descriptor(), {});
  ASSERT_TRUE(small.has_value());
  pb::Envelope huge = op((*small)->descriptor(), pb::ChannelOp::SEND_PART, 0);
  huge.mutable_channel_op()->set_transfer(1);
  huge.mutable_channel_op()->set_total_size((*small)->maxMessageSize() + 1);
  huge.mutable_channel_op()->set_data("x");
  r = raw.reply(raw.post(std::move(huge)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::MessageTooLarge);
}

TEST_F(Gateway, SendsInPartsOfTwoProcessesWithTheSameTransferIdStayApart) {
  // Clients number their transfers by pid and a count, and pids repeat across pid namespaces:
  // two processes' sends in parts with one id, interleaved, must arrive as two messages.
  RawConn a(d->socket());
  RawConn b(d->socket());
  const std::uint64_t transfer = (std::uint64_t{4242} << 32) | 1;
  auto part = [&](pb::ChannelOp::Kind kind, std::uint64_t at, std::string data) {
    return partOp(ch->descriptor(), kind, 0, transfer, at, 10, std::move(data));
  };
  for (auto [conn, first] : {std::pair{&a, "aaaaa"}, std::pair{&b, "bbbbb"}}) {
    auto r = conn->reply(conn->post(part(pb::ChannelOp::SEND_PART, 0, first)), 10s);
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  }
  for (auto [conn, last] : {std::pair{&b, "BBBBB"}, std::pair{&a, "AAAAA"}}) {
    auto r = conn->reply(conn->post(part(pb::ChannelOp::SEND, 5, last)), 10s);
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  }
  std::vector<std::string> got;
  for (int i = 0; i < 2; ++i) {
    auto m = ch->recvBytes(Timeout::after(10s));
    ASSERT_TRUE(m.has_value()) << m.error().toString();
    got.emplace_back(reinterpret_cast<const char*>(m->data()), m->size());
  }
  EXPECT_EQ(got, (std::vector<std::string>{"bbbbbBBBBB", "aaaaaAAAAA"}));
  EXPECT_EQ(ch->channel().size(), 0u);
}

TEST_F(Gateway, AClientThatLeavesMidSendHasItsKeptPartsDroppedAtOnce) {
  // A home keeps the parts of unfinished sends in parts whose channel's pool has no free block
  // for them in its own memory, counted whole from the first, up to
  // PartStore::kMaxKeptSendBytes. A sender killed after its first part must not hold that room
  // until the parts' idle expiry (a minute): another send of over half of it fits once the
  // first sender's connection is gone. Before, it was refused (PoolExhausted) for that minute.
  constexpr std::uint64_t kKeptLimit = std::uint64_t{4} << 30;  // PartStore::kMaxKeptSendBytes
  const std::uint64_t total = kKeptLimit / 2 + 1;
  std::shared_ptr<Pool> big;
  std::unique_ptr<ClientChannel> c;
  ASSERT_NO_FATAL_FAILURE(lazyChannel(total + (std::size_t{64} << 20), big, c));
  ASSERT_GE(c->maxMessageSize(), total);
  auto full = big->alloc(total);  // the pool has no block for the parts
  ASSERT_TRUE(full.has_value()) << full.error().toString();
  auto first = [&](RawConn& conn, std::uint64_t transfer) {
    auto r = conn.reply(conn.post(partOp(c->descriptor(), pb::ChannelOp::SEND_PART, 0,
                                         transfer, 0, total, "x")),
                        10s);
    EXPECT_TRUE(r.has_value());
    return r.has_value() ? codeOf(*r) : StatusCode::Timeout;
  };
  auto gone = std::make_unique<RawConn>(d->socket());
  ASSERT_EQ(first(*gone, 1), StatusCode::Ok);
  RawConn other(d->socket());
  ASSERT_EQ(first(other, 1), StatusCode::PoolExhausted) << "the first send holds no room";
  gone.reset();  // its process ends between two parts
  // Its connection closes on dragond's loop a moment later: bounded tries, each a new send.
  StatusCode code = StatusCode::PoolExhausted;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  std::uint64_t kept = 1;  // the transfer `other` began
  while (code == StatusCode::PoolExhausted && std::chrono::steady_clock::now() < deadline) {
    code = first(other, ++kept);
    if (code == StatusCode::PoolExhausted) std::this_thread::yield();
  }
  ASSERT_EQ(code, StatusCode::Ok) << "the parts of a sender that left still held their room";
  // A last part that fails before it leaves this dragond (its staged bytes are not there)
  // ends its transfer: its other parts go at once too.
  pb::Envelope last = partOp(c->descriptor(), pb::ChannelOp::SEND, 0, kept, 1, total, "");
  auto* staged = last.mutable_channel_op()->mutable_staged();
  ObjectDescriptor far = big->descriptor();
  far.node = 7;
  *staged->mutable_pool() = pb::toRef(far);
  last.mutable_channel_op()->set_staged_size(total - 1);
  auto r = other.reply(other.post(std::move(last)), 10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::InvalidArgument) << r->DebugString();
  RawConn third(d->socket());
  EXPECT_EQ(first(third, 1), StatusCode::Ok) << "the parts of a send that failed held their room";
}

TEST_F(Gateway, ASendInPartsWhosePoolHadNoRoomIsKeptInMemoryAndArrivesWholeLater) {
  // No free block in the pool at its first part: the parts are kept in dragond's memory, and
  // the send of the last part waits for room as the local send does (the copy into the pool is
  // then the gateway thread's); a try is answered as the local try.
  constexpr std::size_t kBytes = 2 * kMaxMessageAcrossNodes + 3;
  std::shared_ptr<Pool> big;
  std::unique_ptr<ClientChannel> c;
  ASSERT_NO_FATAL_FAILURE(lazyChannel(kBytes + (std::size_t{8} << 20), big, c));
  auto full = big->alloc(kBytes);
  ASSERT_TRUE(full.has_value()) << full.error().toString();
  std::string payload(kBytes, '\0');
  for (std::size_t i = 0; i < kBytes; ++i) payload[i] = static_cast<char>(i * 5 % 239);
  RawConn raw(d->socket());
  auto at = sendAllButLast(raw, c->descriptor(), 8, payload);
  ASSERT_TRUE(at.has_value());
  auto r = raw.reply(raw.post(lastPart(c->descriptor(), 0, 8, *at, payload)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::PoolExhausted) << r->DebugString().substr(0, 300);
  EXPECT_EQ(c->channel().size(), 0u);
  // Its parts were dropped with that answer (the sender gives up, or starts again): again,
  // now waiting until room is made.
  at = sendAllButLast(raw, c->descriptor(), 9, payload);
  ASSERT_TRUE(at.has_value());
  const std::uint64_t id = raw.post(lastPart(c->descriptor(), 10'000'000'000, 9, *at, payload));
  ASSERT_TRUE(big->free(*full).isOk());
  r = raw.reply(id, 20s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString().substr(0, 300);
  auto m = c->recvBytes(Timeout::after(10s));
  ASSERT_TRUE(m.has_value()) << m.error().toString();
  ASSERT_EQ(m->size(), kBytes);
  EXPECT_EQ(std::memcmp(m->data(), payload.data(), kBytes), 0) << "the message changed";
}

TEST_F(Gateway, ASendKeptInMemoryIsTriedOnceWithRoomAndRefusedIfItCanNeverFit) {
  // Kept in dragond's memory (no free block at its first part), then: a try with room in the
  // pool by its last part is sent (copied by the gateway thread first, not answered
  // PoolExhausted before the copy was tried); a message the pool can never hold (the size of
  // its whole segment, which the channel's limit allows) is refused MessageTooLarge, not tried
  // again until its deadline.
  const std::uint64_t part = kMaxMessageAcrossNodes;
  auto sendKept = [&](ClientChannel& to, std::uint64_t transfer, const std::string& payload,
                      std::int64_t timeoutNs, Pool* fill) -> StatusCode {
    std::optional<PoolAllocation> full;
    if (fill != nullptr) {
      auto f = fill->alloc(fill->stats().value().largestFreeBlock - 4096);
      EXPECT_TRUE(f.has_value());
      if (f.has_value()) full = *f;
    }
    RawConn raw(d->socket());
    auto at = sendAllButLast(raw, to.descriptor(), transfer, payload);
    if (!at.has_value()) return StatusCode::Internal;
    if (full) {
      EXPECT_TRUE(fill->free(*full).isOk());
    }
    auto r = raw.reply(raw.post(lastPart(to.descriptor(), timeoutNs, transfer, *at, payload)), 10s);
    return r.has_value() ? codeOf(*r) : StatusCode::Timeout;
  };
  {
    const std::string payload(2 * part + 1, 't');
    std::shared_ptr<Pool> big;
    std::unique_ptr<ClientChannel> c;
    ASSERT_NO_FATAL_FAILURE(lazyChannel(2 * payload.size(), big, c));
    EXPECT_EQ(sendKept(*c, 1, payload, 0, big.get()), StatusCode::Ok);
    auto m = c->recvBytes(Timeout::after(10s));
    ASSERT_TRUE(m.has_value()) << m.error().toString();
    EXPECT_EQ(m->size(), payload.size());
  }
  {
    const std::size_t segment = 2 * part + (std::size_t{8} << 20);
    std::shared_ptr<Pool> small;
    std::unique_ptr<ClientChannel> c;
    ASSERT_NO_FATAL_FAILURE(lazyChannel(segment, small, c));
    const std::uint64_t limit = c->maxMessageSize();
    ASSERT_GT(limit, small->stats().value().largestFreeBlock);
    EXPECT_EQ(sendKept(*c, 2, std::string(limit, 'n'), -1, nullptr), StatusCode::MessageTooLarge);
  }
}

// Polls `holds` every 10 ms for up to 10 s, for a figure that no event announces (a pool's use,
// a process's memory); whether it came to hold.
bool pollUntil(const std::function<bool()>& holds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!holds()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// Whether a process's RssAnon shows what it holds: ASan keeps freed memory in its quarantine,
// so there a drop (or the absence of growth) says nothing, and those checks are not made.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRssShowsWhatIsHeld = false;
#else
constexpr bool kRssShowsWhatIsHeld = true;
#endif

// A process's anonymous memory in bytes (RssAnon), or -1.
std::int64_t anonymousBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoll(line.substr(8)) * 1024;
  }
  return -1;
}

// The inode of the file that `pid` maps at `start` (a pool's memfd), or 0.
std::uint64_t mappedInode(pid_t pid, const void* start) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  const auto want = reinterpret_cast<std::uintptr_t>(start);
  for (std::string line; std::getline(in, line);) {
    std::istringstream f(line);
    std::string range, perms, offset, dev;
    std::uint64_t inode = 0;
    f >> range >> perms >> offset >> dev >> inode;
    if (std::stoull(range.substr(0, range.find('-')), nullptr, 16) == want) return inode;
  }
  return 0;
}

// How many mappings of the file with `inode` process `pid` has.
int mappingsOf(pid_t pid, std::uint64_t inode) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    std::istringstream f(line);
    std::string range, perms, offset, dev;
    std::uint64_t ino = 0;
    f >> range >> perms >> offset >> dev >> ino;
    if (ino == inode) ++n;
  }
  return n;
}

TEST_F(Gateway, ASendKeptInMemoryIsCopiedIntoABlockByTheGatewayThreadWhileItWaits) {
  // A message in parts that dragond kept in its memory (no free block at its first part)
  // and whose channel is full waits at the home: the gateway thread copies it into a block of
  // the pool once there is one, outside the lock the event loop takes, and dragond's own copy
  // goes. Before, every wake of the thread copied it into a block under that lock and freed
  // the block again on finding the channel full.
  constexpr std::size_t kBytes = 4 * kMaxMessageAcrossNodes + 3;
  ChannelOptions o;
  o.capacity = 1;
  std::shared_ptr<Pool> big;
  std::unique_ptr<ClientChannel> c;
  ASSERT_NO_FATAL_FAILURE(lazyChannel(2 * kBytes, big, c, o));
  ASSERT_TRUE(c->send(bytesOf("first")).isOk());  // the channel is full
  auto full = big->alloc(2 * kBytes - (std::size_t{1} << 20));
  ASSERT_TRUE(full.has_value()) << full.error().toString();
  std::string payload(kBytes, '\0');
  for (std::size_t i = 0; i < kBytes; ++i) payload[i] = static_cast<char>(i * 3 % 233);
  RawConn raw(d->socket());
  auto at = sendAllButLast(raw, c->descriptor(), 5, payload);
  ASSERT_TRUE(at.has_value());
  ASSERT_TRUE(big->free(*full).isOk());
  auto used = [&] { return big->stats().value().usedBytes; };
  const std::uint64_t before = used();
  const std::int64_t holding = anonymousBytes(d->pid());
  const std::uint64_t id = raw.post(lastPart(c->descriptor(), 30'000'000'000, 5, *at, payload));
  // Polled (there is no event to wait for): a block holds it, and dragond's copy went.
  auto copyGone = [&] {
    return !kRssShowsWhatIsHeld ||
           anonymousBytes(d->pid()) <= holding - static_cast<std::int64_t>(kBytes) / 2;
  };
  (void)pollUntil([&] { return used() >= before + kBytes && copyGone(); });  // checked below
  EXPECT_GE(used(), before + kBytes) << "no block holds the waiting message";
  EXPECT_TRUE(copyGone()) << "dragond still holds its copy of the waiting message ("
                          << anonymousBytes(d->pid()) << " bytes, " << holding << " before)";
  EXPECT_FALSE(raw.reply(id, 0ms).has_value()) << "the send did not wait for room";
  auto first = c->recvBytes(Timeout::after(10s));
  ASSERT_TRUE(first.has_value()) << first.error().toString();
  auto r = raw.reply(id, 20s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString().substr(0, 300);
  auto m = c->recvBytes(Timeout::after(10s));
  ASSERT_TRUE(m.has_value()) << m.error().toString();
  ASSERT_EQ(m->size(), kBytes);
  EXPECT_EQ(std::memcmp(m->data(), payload.data(), kBytes), 0) << "the message changed";
}

TEST_F(Gateway, ASendInPartsIsAssembledInABlockOfThePoolThatGoesWhenItsSenderLeaves) {
  // With a free block in the channel's pool, a send in parts is written there part by part
  // from its first (dragond's memory does not hold it, nor does its last part copy the whole
  // message on the event loop); a sender that leaves in the middle has the block freed at once.
  constexpr std::size_t kBytes = 6 * kMaxMessageAcrossNodes + 5;
  std::shared_ptr<Pool> big;
  std::unique_ptr<ClientChannel> c;
  ASSERT_NO_FATAL_FAILURE(lazyChannel(2 * kBytes, big, c));
  auto used = [&] { return big->stats().value().usedBytes; };
  const std::uint64_t before = used();
  std::string payload(kBytes, '\0');
  for (std::size_t i = 0; i < kBytes; ++i) payload[i] = static_cast<char>(i * 11 % 241);
  const std::uint64_t part = kMaxMessageAcrossNodes;
  {
    RawConn raw(d->socket());
    std::int64_t rss = 0;  // after the first part: dragond's buffers of a part's way are grown
    auto at = sendAllButLast(raw, c->descriptor(), 3, payload, [&](std::uint64_t sent) {
      if (sent == part) rss = anonymousBytes(d->pid());
      EXPECT_GE(used(), before + kBytes) << "no block of the pool holds the message";
    });
    ASSERT_TRUE(at.has_value());
    const std::int64_t grown = anonymousBytes(d->pid()) - rss;
    if (kRssShowsWhatIsHeld) {
      EXPECT_LT(grown, static_cast<std::int64_t>(2 * part))
          << "dragond's memory grew by " << grown << " bytes over 4 parts: it holds them itself";
    }
    auto r = raw.reply(raw.post(lastPart(c->descriptor(), 0, 3, *at, payload)), 10s);
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString().substr(0, 300);
  }
  auto m = c->recvBytes(Timeout::after(10s));
  ASSERT_TRUE(m.has_value()) << m.error().toString();
  ASSERT_EQ(m->size(), kBytes);
  EXPECT_EQ(std::memcmp(m->data(), payload.data(), kBytes), 0) << "the message changed";
  m->clear();
  m->shrink_to_fit();

  // A sender that leaves between two parts: its block goes back to the pool.
  const std::uint64_t idle = used();
  auto gone = std::make_unique<RawConn>(d->socket());
  auto r = gone->reply(gone->post(partOp(c->descriptor(), pb::ChannelOp::SEND_PART, 0, 4, 0,
                                         kBytes, payload.substr(0, part))),
                       10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok);
  ASSERT_GE(used(), idle + kBytes);
  gone.reset();
  EXPECT_TRUE(pollUntil([&] { return used() == idle; }))
      << "the block of a sender that left is still allocated: " << used() << " bytes used";
}

TEST_F(Gateway, AClientThatLeavesMidReceiveHasTheRestOfItsMessageDroppedAtOnce) {
  // A message taken in parts waits at its home, in its pool block, until its receiver has
  // fetched every part. A receiver killed after the first part must not leave it there until
  // the parts' idle expiry (a minute): the block goes back to the pool once it has left.
  constexpr std::size_t kBytes = std::size_t{128} << 20;
  std::shared_ptr<Pool> big;
  std::unique_ptr<ClientChannel> c;
  ASSERT_NO_FATAL_FAILURE(lazyChannel(kBytes + (std::size_t{64} << 20), big, c));
  ASSERT_TRUE(c->send(std::vector<std::byte>(kBytes, std::byte{7})).isOk());
  auto gone = std::make_unique<RawConn>(d->socket());
  auto r = receiveFirstPart(*gone, c->descriptor());
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->channel_op_reply().total_size(), kBytes);
  EXPECT_EQ(c->channel().size(), 0u) << "the message left the channel with its first part";
  {  // The rest is its receiver's alone: another connection of this node cannot fetch it.
    RawConn thief(d->socket());
    pb::Envelope more = op(c->descriptor(), pb::ChannelOp::RECV_PART, 0);
    more.mutable_channel_op()->set_transfer(r->channel_op_reply().transfer());
    more.mutable_channel_op()->set_part_offset(r->channel_op_reply().data().size());
    auto stolen = thief.reply(thief.post(std::move(more)), 10s);
    ASSERT_TRUE(stolen.has_value());
    EXPECT_EQ(codeOf(*stolen), StatusCode::InvalidArgument) << stolen->DebugString().substr(0, 200);
  }
  auto used = [&] { return big->stats().value().usedBytes; };
  ASSERT_GT(used(), kBytes) << "the home does not hold the message in its block";
  gone.reset();  // its process ends between two parts
  EXPECT_TRUE(pollUntil([&] { return used() < kBytes; }))
      << "the message's block is still held: " << used() << " bytes used";
}

TEST_F(Gateway, AMessageReceivedInPartsIsNeverCopiedWholeAndOutlivesItsChannel) {
  // The home hands a large message out from its pool block, one part per request: its
  // memory grows by parts (a copy of the whole on the event loop held it, heartbeats
  // included, for about a second per 200 MiB). The block stays readable, as a local
  // receiver's Message does, after the channel and its pool are destroyed.
  constexpr std::size_t kBytes = std::size_t{160} << 20;
  std::shared_ptr<Pool> big;
  std::unique_ptr<ClientChannel> c;
  ASSERT_NO_FATAL_FAILURE(lazyChannel(kBytes + (std::size_t{64} << 20), big, c));
  std::vector<std::byte> payload(kBytes);
  for (std::size_t i = 0; i < kBytes; ++i) payload[i] = static_cast<std::byte>(i * 7 % 253);
  ASSERT_TRUE(c->send(payload).isOk());
  const std::int64_t before = anonymousBytes(d->pid());
  RawConn raw(d->socket());
  auto r = receiveFirstPart(raw, c->descriptor());
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->channel_op_reply().total_size(), kBytes);
  const std::int64_t grown = anonymousBytes(d->pid()) - before;
  EXPECT_LT(grown, static_cast<std::int64_t>(kBytes) / 2)
      << "dragond's memory grew by " << grown << " bytes: the message was copied whole";
  const std::uint64_t transfer = r->channel_op_reply().transfer();
  std::string got = r->channel_op_reply().data();
  const ObjectDescriptor cd = c->descriptor();
  const ObjectDescriptor pd = big->descriptor();
  const std::uint64_t inode = mappedInode(getpid(), big->pointerAt(0));
  ASSERT_NE(inode, 0u) << "this process's mapping of the pool not found";
  ASSERT_GT(mappingsOf(d->pid(), inode), 0);
  c.reset();
  big.reset();
  ASSERT_TRUE(client.destroy(cd).isOk());
  ASSERT_TRUE(client.destroy(pd).isOk());
  while (got.size() < kBytes) {
    pb::Envelope more = op(cd, pb::ChannelOp::RECV_PART, 0);
    more.mutable_channel_op()->set_transfer(transfer);
    more.mutable_channel_op()->set_part_offset(got.size());
    auto m = raw.reply(raw.post(std::move(more)), 10s);
    ASSERT_TRUE(m.has_value() && m->has_channel_op_reply()) << (m ? m->DebugString() : "");
    ASSERT_FALSE(m->channel_op_reply().data().empty());
    got += m->channel_op_reply().data();
  }
  ASSERT_EQ(got.size(), kBytes);
  EXPECT_TRUE(std::memcmp(got.data(), payload.data(), kBytes) == 0) << "the message changed";
  // The pool's memory goes with the last part: dragond maps it no more.
  EXPECT_EQ(mappingsOf(d->pid(), inode), 0) << "dragond still maps the destroyed pool";
}

TEST(GatewayLimit, WaitingSendsPastTheLimitWaitOnTheirSendersNodeAndArriveInOrder) {
  // cluster.parked_send_bytes: the home holds 1 KiB of waiting sends; one more is answered
  // "later" and its sender's dragond (here the same one) sends it again until it fits, a
  // message in parts keeping its other parts at the home meanwhile. Without the limit the
  // home held every waiting send's bytes however many came.
  auto d = RunningDaemon::start({"--set", "cluster.parked_send_bytes=1KiB"});
  ASSERT_TRUE(d);
  Client client = d->connect();
  auto pool = client.createPool(std::size_t{4} << 20);
  ASSERT_TRUE(pool.has_value());
  ChannelOptions o;
  o.capacity = 1;
  auto c = client.createChannel((*pool)->descriptor(), o);
  ASSERT_TRUE(c.has_value());
  ClientChannel& ch = **c;
  ASSERT_TRUE(ch.send(bytesOf("first")).isOk());
  const std::string a(800, 'a');
  std::string b(1000, 'b');
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>('A' + i % 26);
  RawConn ra(d->socket());
  auto sendA = op(ch.descriptor(), pb::ChannelOp::SEND, -1);
  sendA.mutable_channel_op()->set_data(a);
  const auto idA = ra.post(sendA);  // held at the home: nothing else is
  EXPECT_FALSE(ra.reply(idA, 100ms).has_value()) << "a send to a full channel waits";
  // B: in two parts; its last part would be held past the limit.
  RawConn rb(d->socket());
  auto r = rb.reply(
      rb.post(partOp(ch.descriptor(), pb::ChannelOp::SEND_PART, 0, 7, 0, b.size(), b.substr(0, 600))),
      10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  const auto idB =
      rb.post(partOp(ch.descriptor(), pb::ChannelOp::SEND, -1, 7, 600, b.size(), b.substr(600)));
  // C: past the limit until its deadline.
  RawConn rc(d->socket());
  auto sendC = op(ch.descriptor(), pb::ChannelOp::SEND, 300'000'000);
  sendC.mutable_channel_op()->set_data(std::string(300, 'c'));
  r = rc.reply(rc.post(sendC), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Timeout);
  EXPECT_NE(r->error().message().find("cluster.parked_send_bytes"), std::string::npos)
      << r->error().message();
  // E: in parts, past the limit until its deadline: its kept parts go with it (a last part
  // sent again finds no transfer).
  RawConn re(d->socket());
  r = re.reply(re.post(partOp(ch.descriptor(), pb::ChannelOp::SEND_PART, 0, 9, 0, 1000,
                              std::string(600, 'e'))),
               10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  const pb::Envelope lastE = partOp(ch.descriptor(), pb::ChannelOp::SEND, 300'000'000, 9, 600,
                                    1000, std::string(400, 'E'));
  r = re.reply(re.post(lastE), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Timeout) << r->DebugString();
  r = re.reply(re.post(lastE), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument) << r->DebugString();
  EXPECT_NE(r->error().message().find("no transfer"), std::string::npos) << r->error().message();
  // What only dragonds say to each other is refused from a client.
  auto asking = op(ch.descriptor(), pb::ChannelOp::SEND, -1);
  asking.mutable_channel_op()->set_ask_room(100);
  r = re.reply(re.post(asking), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  // D: past the limit, and its client leaves: its message is never sent.
  {
    RawConn rd(d->socket());
    auto sendD = op(ch.descriptor(), pb::ChannelOp::SEND, -1);
    sendD.mutable_channel_op()->set_data(std::string(500, 'd'));
    EXPECT_FALSE(rd.reply(rd.post(sendD), 50ms).has_value());
  }
  EXPECT_FALSE(rb.reply(idB, 100ms).has_value()) << "B waits while A is held";
  std::vector<std::string> got;
  for (int i = 0; i < 3; ++i) {
    auto m = ch.recvBytes(Timeout::after(10s));
    ASSERT_TRUE(m.has_value()) << m.error().toString();
    got.emplace_back(reinterpret_cast<const char*>(m->data()), m->size());
  }
  EXPECT_EQ(got, (std::vector<std::string>{"first", a, b}));
  for (auto [conn, id] : {std::pair{&ra, idA}, std::pair{&rb, idB}}) {
    r = conn->reply(id, 10s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
    EXPECT_EQ(r->channel_op_reply().retry_after_ns(), 0u) << "the client saw a retry";
  }
  auto stray = ch.recvBytes(Timeout::after(300ms));
  EXPECT_FALSE(stray.has_value()) << "a message of a client that left was sent";
}

TEST_F(Gateway, AStagedSendTakesItsBytesFromAnAllocationOfThisNode) {
  // What ClientChannel::send does with a large message: the bytes in its staging pool, the
  // request naming them (ChannelOp.staged), here over the raw protocol.
  auto stagingPool = client.createPool(std::size_t{2} << 20);
  ASSERT_TRUE(stagingPool.has_value()) << stagingPool.error().toString();
  Pool& sp = **stagingPool;
  const std::size_t n = 100'000;
  auto block = sp.alloc(n);
  ASSERT_TRUE(block.has_value());
  auto* b = static_cast<unsigned char*>(sp.pointer(*block));
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(i * 7 % 253);
  auto staged = [&](pb::ChannelOp::Kind kind, std::uint64_t offset, std::uint64_t size) {
    pb::Envelope e = op(ch->descriptor(), kind, 0);
    pb::MemoryRange* r = e.mutable_channel_op()->mutable_staged();
    *r->mutable_pool() = pb::toRef(sp.descriptor());
    r->set_allocation(block->offset);
    r->set_offset(offset);
    e.mutable_channel_op()->set_staged_size(size);
    return e;
  };
  RawConn raw(d->socket());
  auto r = raw.reply(raw.post(staged(pb::ChannelOp::SEND, 0, n)), 10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  Message m;
  ASSERT_TRUE(ch->channel().recv(m, Timeout::none()).isOk());
  ASSERT_EQ(m.size(), n);
  EXPECT_EQ(std::memcmp(m.data().data(), b, n), 0) << "the staged bytes changed on the way";
  m.reset();

  // A transfer in parts, each part staged (a large message's parts from one staging pool).
  const std::uint64_t transfer = 0x57a9ed;
  pb::Envelope first = staged(pb::ChannelOp::SEND_PART, 0, 60'000);
  first.mutable_channel_op()->set_transfer(transfer);
  first.mutable_channel_op()->set_total_size(n);
  pb::Envelope last = staged(pb::ChannelOp::SEND, 60'000, n - 60'000);
  last.mutable_channel_op()->set_transfer(transfer);
  last.mutable_channel_op()->set_part_offset(60'000);
  last.mutable_channel_op()->set_total_size(n);
  const auto id1 = raw.post(std::move(first));  // back to back, as the client sends them
  const auto id2 = raw.post(std::move(last));
  r = raw.reply(id1, 10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  r = raw.reply(id2, 10s);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  ASSERT_TRUE(ch->channel().recv(m, Timeout::none()).isOk());
  ASSERT_EQ(m.size(), n);
  EXPECT_EQ(std::memcmp(m.data().data(), b, n), 0) << "the parts were put together wrong";
  m.reset();

  // What cannot be staged is refused, and nothing is sent.
  auto refused = [&](pb::Envelope e, const char* why, const char* says = "") {
    auto a = raw.reply(raw.post(std::move(e)), 10s);
    ASSERT_TRUE(a.has_value()) << why;
    EXPECT_EQ(codeOf(*a), StatusCode::InvalidArgument) << why;
    EXPECT_NE(a->error().message().find(says), std::string::npos)
        << why << ": " << a->error().message();
  };
  refused(staged(pb::ChannelOp::SEND, 1, n), "bytes past the allocation's end");
  // Refused for its size before its range is looked at (the block is smaller).
  refused(staged(pb::ChannelOp::SEND, 0, kMaxMessageAcrossNodes + 1), "more than one request carries",
          "per request");
  refused(staged(pb::ChannelOp::RECV, 0, n), "a receive has no bytes to stage");
  pb::Envelope both = staged(pb::ChannelOp::SEND, 0, 10);
  both.mutable_channel_op()->set_data("and inline");
  refused(std::move(both), "data and staged bytes at once");
  pb::Envelope notLive = staged(pb::ChannelOp::SEND, 0, 10);
  notLive.mutable_channel_op()->mutable_staged()->set_allocation(block->offset + 64);
  refused(std::move(notLive), "no allocation there");
  pb::Envelope elsewhere = staged(pb::ChannelOp::SEND, 0, 10);
  ObjectDescriptor far = sp.descriptor();
  far.node = 7;
  *elsewhere.mutable_channel_op()->mutable_staged()->mutable_pool() = pb::toRef(far);
  refused(std::move(elsewhere), "a pool of another node");
  pb::Envelope notPool = staged(pb::ChannelOp::SEND, 0, 10);
  *notPool.mutable_channel_op()->mutable_staged()->mutable_pool() = pb::toRef(ch->descriptor());
  refused(std::move(notPool), "a channel is not a pool");
  ASSERT_TRUE(sp.free(*block).isOk());
  refused(staged(pb::ChannelOp::SEND, 0, 10), "a freed allocation");
  EXPECT_EQ(ch->channel().size(), 0u) << "a refused staged send sent something";
}

TEST_F(Gateway, ClosingTheChannelWakesAParkedRecvWithChannelClosed) {
  RawConn raw(d->socket());
  const auto waiting = raw.post(op(ch->descriptor(), pb::ChannelOp::RECV, -1));
  EXPECT_FALSE(raw.reply(waiting, 100ms).has_value());
  auto r = raw.reply(raw.post(op(ch->descriptor(), pb::ChannelOp::CLOSE, 0)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Ok);
  r = raw.reply(waiting, 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::ChannelClosed);
  EXPECT_TRUE(ch->channel().isClosed());
}

TEST_F(Gateway, ARequesterThatLeavesTakesNoMessage) {
  auto raw = std::make_unique<RawConn>(d->socket());
  // A scoped name of its own (for another channel: a scoped name's channel is closed with it)
  // goes when dragond has handled the connection's end.
  auto other = client.createChannel(pool->descriptor(), {});
  ASSERT_TRUE(other.has_value());
  pb::Envelope name;
  name.mutable_register_name()->set_name("gateway-test-marker");
  *name.mutable_register_name()->mutable_object() = pb::toRef((*other)->descriptor());
  name.mutable_register_name()->set_scoped(true);
  auto named = raw->reply(raw->post(name), 10s);
  ASSERT_TRUE(named.has_value() && named->has_ok());
  ASSERT_TRUE(client.lookupName("gateway-test-marker").has_value());
  const auto waiting = raw->post(op(ch->descriptor(), pb::ChannelOp::RECV, -1));
  EXPECT_FALSE(raw->reply(waiting, 100ms).has_value());
  raw.reset();
  ASSERT_TRUE(testing::eventually([&] { return !client.lookupName("gateway-test-marker").has_value(); }))
      << "dragond did not notice the connection's end";
  // A receiver that stays, parked after the one that left: it must get the message (the
  // gateway serves parked operations in order, so a stale one would take it first).
  RawConn stays(d->socket());
  const auto second = stays.post(op(ch->descriptor(), pb::ChannelOp::RECV, -1));
  EXPECT_FALSE(stays.reply(second, 100ms).has_value());
  ASSERT_TRUE(ch->send(bytesOf("kept")).isOk());
  auto r = stays.reply(second, 5s);
  ASSERT_TRUE(r.has_value()) << "the message went to a receiver that had left";
  ASSERT_TRUE(r->has_channel_op_reply()) << r->DebugString();
  EXPECT_EQ(r->channel_op_reply().data(), "kept");
}

TEST_F(Gateway, MalformedOperationsAreErrorsAndTheConnectionStays) {
  RawConn raw(d->socket());
  pb::Envelope bad;
  bad.mutable_channel_op()->mutable_channel()->set_serialized("not a descriptor");
  auto r = raw.reply(raw.post(bad), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  auto poll = op(ch->descriptor(), pb::ChannelOp::POLL, -1);
  poll.mutable_channel_op()->set_events(0);
  r = raw.reply(raw.post(poll), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  r = raw.reply(raw.post(op(ch->descriptor(), pb::ChannelOp::CANCEL, 0)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument) << "CANCEL is between dragonds only";
  auto kind = op(ch->descriptor(), static_cast<pb::ChannelOp::Kind>(77), 0);
  r = raw.reply(raw.post(kind), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  ObjectDescriptor elsewhere = ch->descriptor();
  elsewhere.node = 7;
  r = raw.reply(raw.post(op(elsewhere, pb::ChannelOp::RECV, -1)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::NotFound) << "no node 7 outside a multi-node job";
  auto attach = client.attachChannel(elsewhere);
  ASSERT_FALSE(attach.has_value());
  EXPECT_EQ(attach.error().code(), StatusCode::NotFound);
  // Still served.
  r = raw.reply(raw.post(op(ch->descriptor(), pb::ChannelOp::RECV, 0)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::WouldBlock);
}

// A receive through dragond of a lock's channel (trackHolder) makes the requesting process the
// holder, whatever holder the request claims; HOLDER_GONE is between dragonds only.
TEST_F(Gateway, AReceiveThroughDragondHoldsAsTheRequesterAndHolderGoneIsRefused) {
  auto lock = lockWithToken(client, *pool);
  ASSERT_TRUE(lock.has_value()) << lock.error().toString();
  RawConn raw(d->socket());
  const ObjectDescriptor desc = (*lock)->descriptor();
  auto recv = op(desc, pb::ChannelOp::RECV, -1);
  recv.mutable_channel_op()->set_holder(Channel::holderWord(desc.node, 999999));  // a lie
  auto r = raw.reply(raw.post(recv), 10s);
  ASSERT_TRUE(r.has_value() && r->has_channel_op_reply()) << (r ? r->DebugString() : "none");
  EXPECT_EQ((*lock)->channel().holder(),
            Channel::holderWord(desc.node, static_cast<std::uint32_t>(getpid())));
  auto gone = op(desc, pb::ChannelOp::HOLDER_GONE, 0);
  gone.mutable_channel_op()->set_holder(Channel::holderWord(desc.node, static_cast<std::uint32_t>(getpid())));
  r = raw.reply(raw.post(gone), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument) << "HOLDER_GONE is between dragonds only";
  EXPECT_FALSE((*lock)->channel().isClosed());
  ASSERT_TRUE((*lock)->send(bytesOf("t")).isOk());
  EXPECT_EQ((*lock)->channel().holder(), 0u);
}

TEST_F(Gateway, AReceiveReadAfterItsProcessEndedTakesNothing) {
  // A process can die with a RECV written and not yet read: dragond then sees its end first
  // (and breaks its holds), and reads the request after. No token may be taken for it: no
  // end would come to give it back. Here the process connects, hands its connection over,
  // and ends; the request comes on that connection once dragond has seen the end.
  auto lock = lockWithToken(client, *pool);
  ASSERT_TRUE(lock.has_value()) << lock.error().toString();
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const int conn = RawConn::connectTo(d->socket());
    const int fds[1] = {conn};
    char go = 0;
    const bool sent = pb::sendAll(sv[1], std::string_view("c"), fds).isOk();
    _exit(sent && read(sv[1], &go, 1) == 1 ? 0 : 1);
  }
  close(sv[1]);
  std::vector<UniqueFd> got;
  char buf[1];
  for (int i = 0; i < 1000 && got.empty(); ++i) {
    pollfd p{sv[0], POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 10'000), 1) << "the child never handed its connection over";
    auto n = pb::recvSome(sv[0], std::span(buf, 1), got);
    ASSERT_TRUE(n.has_value() && *n == 1);
  }
  ASSERT_EQ(got.size(), 1u);
  auto adopted = client.adopt(child, {"gateway-test-child"});
  ASSERT_TRUE(adopted.has_value()) << adopted.error().toString();
  ASSERT_EQ(write(sv[0], "x", 1), 1);
  close(sv[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);  // it exits as soon as it reads
  ASSERT_TRUE(client.reportExited({adopted->puid, WEXITSTATUS(status), 0}).isOk());
  auto ended = client.wait({adopted->puid}, Timeout::after(10s));
  ASSERT_TRUE(ended.has_value()) << ended.error().toString();
  RawConn raw(got.front().release());
  const ObjectDescriptor desc = (*lock)->descriptor();
  auto r = raw.reply(raw.post(op(desc, pb::ChannelOp::RECV, -1)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::PeerLost) << r->DebugString();
  EXPECT_EQ((*lock)->channel().size(), 1u) << "the token stays for the living";
  EXPECT_EQ((*lock)->channel().holder(), 0u);
}

TEST_F(Gateway, AProcessStoppedHoldingTheChannelsLockStallsNothingElse) {
  // A process stopped (by a debugger, by SIGSTOP) inside a send holds the channel's send lock.
  // dragond's loop and its gateway never wait on it: other requests are answered meanwhile,
  // and the operations on this channel, a try included, complete once the lock is free.
  auto* h = static_cast<detail::ChannelHeader*>(pool->pointerAt(ch->descriptor().offset));
  const pid_t holder = stoppedHolding(&h->sendLock);
  ASSERT_GT(holder, 0);
  int st = 0;

  RawConn raw(d->socket());
  auto send = op(ch->descriptor(), pb::ChannelOp::SEND, -1);
  send.mutable_channel_op()->set_data("waited");
  const auto parked = raw.post(send);
  auto trySend = op(ch->descriptor(), pb::ChannelOp::SEND, 0);
  trySend.mutable_channel_op()->set_data("tried");
  const auto tried = raw.post(trySend);
  ChannelOptions o;
  o.capacity = 1;
  auto other = client.createChannel(pool->descriptor(), o);  // through dragond's loop
  ASSERT_TRUE(other.has_value()) << other.error().toString();
  auto r = raw.reply(raw.post(op((*other)->descriptor(), pb::ChannelOp::RECV, 0)), 10s);
  ASSERT_TRUE(r.has_value()) << "dragond stalled on a lock a stopped process holds";
  EXPECT_EQ(codeOf(*r), StatusCode::WouldBlock);
  EXPECT_FALSE(raw.reply(parked, 100ms).has_value()) << "a send while the lock is held";
  EXPECT_FALSE(raw.reply(tried, 0ms).has_value()) << "a try waits for the lock, as a local one";

  ASSERT_EQ(kill(holder, SIGCONT), 0);
  ASSERT_EQ(waitpid(holder, &st, 0), holder);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  for (auto id : {parked, tried}) {
    r = raw.reply(id, 10s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  }
  std::set<std::string> got;
  std::byte buf[16];
  for (int i = 0; i < 2; ++i) {
    auto n = ch->recv(buf, Timeout::none());
    ASSERT_TRUE(n.has_value()) << n.error().toString();
    got.insert(std::string(reinterpret_cast<char*>(buf), *n));
  }
  EXPECT_EQ(got, (std::set<std::string>{"tried", "waited"}));
}

TEST_F(Gateway, AProcessStoppedHoldingThePoolsLockStallsNothingElse) {
  // A large message is copied into a block of the channel's pool before it is queued: the
  // gateway's allocation gives up while a stopped process holds the pool's lock, as it does
  // for a channel's locks, and serves the other channels meanwhile.
  auto otherPool = client.createPool(std::size_t{1} << 20);
  ASSERT_TRUE(otherPool.has_value()) << otherPool.error().toString();
  ChannelOptions o;
  o.capacity = 1;
  auto other = client.createChannel((*otherPool)->descriptor(), o);
  ASSERT_TRUE(other.has_value()) << other.error().toString();
  auto* h = static_cast<detail::PoolHeader*>(pool->pointerAt(0));  // at the mapping's start
  const pid_t holder = stoppedHolding(&h->lock);
  ASSERT_GT(holder, 0);
  int st = 0;

  RawConn raw(d->socket());
  const std::string large(1000, 'L');  // past the channel's 64 inline bytes
  auto send = op(ch->descriptor(), pb::ChannelOp::SEND, -1);
  send.mutable_channel_op()->set_data(large);
  const auto parked = raw.post(send);
  auto r = raw.reply(raw.post(op((*other)->descriptor(), pb::ChannelOp::RECV, 0)), 10s);
  if (!r.has_value()) kill(holder, SIGKILL);  // the gateway is stuck: let the test end
  ASSERT_TRUE(r.has_value()) << "the gateway stalled on a pool lock a stopped process holds";
  EXPECT_EQ(codeOf(*r), StatusCode::WouldBlock);
  EXPECT_FALSE(raw.reply(parked, 100ms).has_value()) << "a send while the pool lock is held";

  ASSERT_EQ(kill(holder, SIGCONT), 0);
  ASSERT_EQ(waitpid(holder, &st, 0), holder);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  r = raw.reply(parked, 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::Ok) << r->DebugString();
  std::string buf(2000, '\0');
  auto n = ch->recv(std::as_writable_bytes(std::span(buf.data(), buf.size())), Timeout::none());
  ASSERT_TRUE(n.has_value()) << n.error().toString();
  EXPECT_EQ(buf.substr(0, *n), large);
}

TEST_F(Gateway, ManyParkedOperationsOnManyChannelsAllComplete) {
  // More channels than one waitAny takes (64): the gateway still completes every one.
  constexpr int kChannels = 80;
  RawConn raw(d->socket());
  std::vector<std::unique_ptr<ClientChannel>> chans;
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < kChannels; ++i) {
    ChannelOptions o;
    o.capacity = 1;
    auto c = client.createChannel(pool->descriptor(), o);
    ASSERT_TRUE(c.has_value()) << c.error().toString();
    ids.push_back(raw.post(op((*c)->descriptor(), pb::ChannelOp::RECV, -1)));
    chans.push_back(std::move(*c));
  }
  EXPECT_FALSE(raw.reply(ids.back(), 100ms).has_value());
  // One channel at a time: while more than 63 wait, some are not in the thread's waitAny, and
  // a message to one of those must still be seen (the thread looks at them every millisecond).
  for (int i = 0; i < kChannels; ++i) {
    ASSERT_TRUE(chans[static_cast<std::size_t>(i)]->send(bytesOf(std::to_string(i))).isOk());
    auto r = raw.reply(ids[static_cast<std::size_t>(i)], 10s);
    ASSERT_TRUE(r.has_value()) << "channel " << i << " was not answered";
    ASSERT_TRUE(r->has_channel_op_reply()) << r->DebugString();
    EXPECT_EQ(r->channel_op_reply().data(), std::to_string(i));
  }
}

}  // namespace
}  // namespace dragon

namespace dragon {
namespace {

pb::Envelope waitAnyOf(const std::vector<ObjectDescriptor>& chans, std::int64_t timeoutNs,
                       const ObjectDescriptor* bell) {
  pb::Envelope e;
  auto* w = e.mutable_wait_any();
  for (const auto& d : chans) {
    auto* item = w->add_item();
    *item->mutable_channel() = pb::toRef(d);
    item->set_events(1);
  }
  w->set_timeout_ns(timeoutNs);
  if (bell != nullptr) *w->mutable_doorbell() = pb::toRef(*bell);
  return e;
}

TEST_F(Gateway, WaitAnyAnswersTheFirstReadyChannelAndRingsTheDoorbell) {
  RawConn raw(d->socket());
  auto other = client.createChannel(pool->descriptor(), {});
  ChannelOptions bo;
  bo.capacity = 1;
  auto bell = client.createChannel(pool->descriptor(), bo);
  ASSERT_TRUE(other.has_value() && bell.has_value());
  const ObjectDescriptor b = (*bell)->descriptor();
  // Nothing comes: all zero at the deadline, and the doorbell rings.
  auto r = raw.reply(raw.post(waitAnyOf({ch->descriptor(), (*other)->descriptor()}, 100'000'000, &b)), 10s);
  ASSERT_TRUE(r.has_value() && r->has_wait_any_reply()) << (r ? r->DebugString() : "no reply");
  ASSERT_EQ(r->wait_any_reply().ready_size(), 2);
  EXPECT_EQ(r->wait_any_reply().ready(0) | r->wait_any_reply().ready(1), 0u);
  std::byte one[8];
  EXPECT_TRUE((*bell)->recv(one, Timeout::after(5s)).has_value()) << "the doorbell did not ring";
  // The second channel gets a message while the wait is parked: it answers, ready there.
  const auto id = raw.post(waitAnyOf({ch->descriptor(), (*other)->descriptor()}, -1, &b));
  EXPECT_FALSE(raw.reply(id, 100ms).has_value());
  ASSERT_TRUE((*other)->send(bytesOf("go")).isOk());
  r = raw.reply(id, 10s);
  ASSERT_TRUE(r.has_value() && r->has_wait_any_reply());
  EXPECT_EQ(r->wait_any_reply().ready(0), 0u);
  EXPECT_EQ(r->wait_any_reply().ready(1), 1u);
  EXPECT_TRUE((*bell)->recv(one, Timeout::after(5s)).has_value());
  // A poll does not take the message, and the other poll was cancelled, not left behind: a
  // message to the first channel is there for a plain recv.
  EXPECT_EQ((*other)->channel().size(), 1u);
  ASSERT_TRUE(ch->send(bytesOf("mine")).isOk());
  EXPECT_TRUE(ch->recv(one, Timeout::none()).has_value());
}

TEST_F(Gateway, CancelWaitAnswersAtOnceAndBadWaitsAreErrors) {
  RawConn raw(d->socket());
  const auto id = raw.post(waitAnyOf({ch->descriptor()}, -1, nullptr));
  EXPECT_FALSE(raw.reply(id, 100ms).has_value());
  pb::Envelope cancel;
  cancel.mutable_cancel_wait()->set_wait_request_id(id);
  const auto cid = raw.post(cancel);
  auto r = raw.reply(id, 10s);
  ASSERT_TRUE(r.has_value() && r->has_wait_any_reply()) << (r ? r->DebugString() : "none");
  EXPECT_EQ(r->wait_any_reply().ready(0), 0u);
  r = raw.reply(cid, 10s);
  ASSERT_TRUE(r.has_value() && r->has_ok());
  // Nothing lists, a bad item, a doorbell that is not a channel here.
  r = raw.reply(raw.post(waitAnyOf({}, 0, nullptr)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  auto bad = waitAnyOf({ch->descriptor()}, 0, nullptr);
  bad.mutable_wait_any()->mutable_item(0)->set_events(0);
  r = raw.reply(raw.post(bad), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  ObjectDescriptor elsewhere = ch->descriptor();
  elsewhere.node = 9;
  r = raw.reply(raw.post(waitAnyOf({ch->descriptor()}, 0, &elsewhere)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::InvalidArgument);
  // A channel of a node that is not in the job.
  r = raw.reply(raw.post(waitAnyOf({elsewhere}, -1, nullptr)), 10s);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(codeOf(*r), StatusCode::NotFound);
}

TEST_F(Gateway, ClientWaitAnyOverLocalChannelsOnlyIsChannelWaitAny) {
  auto other = client.createChannel(pool->descriptor(), {});
  ASSERT_TRUE(other.has_value());
  ClientWaitItem items[2] = {{ch.get(), WaitFor::Readable, {}}, {other->get(), WaitFor::Writable, {}}};
  auto n = client.waitAny(items, Timeout::after(1s));
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(items[0].ready, WaitFor{});
  EXPECT_EQ(items[1].ready, WaitFor::Writable);
  ClientWaitItem none[1] = {{nullptr, WaitFor::Readable, {}}};
  EXPECT_FALSE(client.waitAny(none, Timeout::none()).has_value());
}

}  // namespace
}  // namespace dragon
