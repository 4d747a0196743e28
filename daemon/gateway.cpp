// SPDX-License-Identifier: MIT
#include "daemon/gateway.hpp"

#include "base/log.hpp"
#include "base/robust_mutex.hpp"
#include "protocol/socket_io.hpp"

#include <algorithm>
#include <chrono>
#include <thread>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

constexpr std::size_t kBellSlots = 1;
// waitAny takes 64 items; one is the doorbell. Beyond that many channels with parked
// operations, the thread waits on the first ones and looks at the rest every kScanNs.
constexpr std::size_t kWaitChannels = Channel::kMaxWaitItems - 1;
constexpr std::int64_t kScanNs = 1'000'000;
// How soon the thread tries again an operation whose channel lock a process held.
constexpr std::int64_t kBusyRetryNs = 2'000'000;

pb::Envelope errorOf(const Status& st) {
  pb::Envelope e;
  pb::fillError(*e.mutable_error(), st);
  return e;
}

// The outcome of one attempt: an answer, or nothing yet (the operation would block).
struct Attempt {
  bool done = false;
  pb::Envelope answer;
  Status wouldBlock;  // what a try answers
  // A send found no free block in the channel's pool: a block freed wakes no channel wait,
  // so the operation is tried again after a while (as one that found a lock held).
  bool poolFull = false;
  // A RECV with parts that took a message larger than one part: the message, in its block
  // (the answer is a channel_op_reply without data; the caller sends it on in parts).
  std::shared_ptr<WholeMessage> whole;
};

// A mapping of the channel's pool that the caller shares (a message taken whole holds it).
using SharedMapping = std::function<Result<std::shared_ptr<Pool>>()>;

// Whoever receives a lock's token holds it: the process its dragond named, which only a
// process of the node the operation came from can be.
std::uint64_t holderOf(std::uint32_t from, const pb::ChannelOp& op) {
  return (op.holder() >> 32) == from ? op.holder() : Channel::holderWord(from, 0);
}

// A SEND of a message larger than one part that is not in a block of its pool: copying it into
// one is the gateway thread's, outside its lock (Gateway::run), never an attempt's.
bool needsBlock(const pb::ChannelOp& op, const PartBlock* block) {
  return block == nullptr && op.kind() == pb::ChannelOp::SEND &&
         op.data().size() > Gateway::kMaxMessage;
}

// A RECV with parts of a message larger than one part: the whole message, left in its pool
// block (not copied: the caller hands it out in parts), received through a handle on `mapping`
// so that the block stays readable for as long as the message is held.
Attempt receiveWhole(Channel& ch, std::uint32_t from, const pb::ChannelOp& op,
                     const SharedMapping& mapping) {
  Attempt a;
  auto pool = mapping();
  auto own = pool.has_value() ? Channel::attach(**pool, ch.descriptor())
                              : Result<Channel>(pool.error());
  if (!own.has_value()) {  // nothing was taken: the message stays queued
    a.done = true;
    a.answer = errorOf(own.error());
    return a;
  }
  auto whole = std::make_shared<WholeMessage>();
  whole->pool = std::move(*pool);
  own->receiveAs(holderOf(from, op));
  Status st = own->recv(whole->message, Timeout::none());
  if (st.code() == StatusCode::WouldBlock) {  // taken by another receiver meanwhile
    a.wouldBlock = st;
    return a;
  }
  a.done = true;
  if (!st.isOk()) {
    a.answer = errorOf(st);
    return a;
  }
  a.answer.mutable_channel_op_reply();
  a.whole = std::move(whole);
  return a;
}

// `buf`: a receive buffer kept between calls (resized, so zero-filled only where it grows).
// `from`: the node the operation comes from. `mapping`: for a message a RECV with parts takes
// whole. `block`: a SEND's message, in a block of the channel's pool. `data`: a SEND's
// message where it arrived, in place of op.data.
Attempt attempt(Channel& ch, std::uint32_t from, const pb::ChannelOp& op, std::string& buf,
                const SharedMapping& mapping, PartBlock* block, std::span<const char> data = {}) {
  Attempt a;
  switch (op.kind()) {
    case pb::ChannelOp::SEND: {
      if (needsBlock(op, block)) {  // no block yet: the thread takes one first
        a.wouldBlock = Status(StatusCode::PoolExhausted, "no free block for the message yet");
        a.poolFull = true;
        return a;
      }
      if (data.empty()) data = std::span(op.data().data(), op.data().size());
      Status st = block != nullptr
                      ? ch.sendBlock(block->allocation(), block->length(), Timeout::none())
                      : ch.send(std::as_bytes(data), Timeout::none());
      if (block != nullptr && st.isOk()) block->release();  // the channel's now
      if (st.code() == StatusCode::ChannelFull || st.code() == StatusCode::PoolExhausted) {
        a.wouldBlock = st;  // a try answers either, as the local try does
        a.poolFull = st.code() == StatusCode::PoolExhausted;
        return a;
      }
      a.done = true;
      if (st.isOk()) {
        a.answer.mutable_channel_op_reply();
      } else {
        a.answer = errorOf(st);
      }
      return a;
    }
    case pb::ChannelOp::RECV: {
      // Into a bounded buffer: a message larger than what one message between nodes carries
      // (or than the receiver's buffer) stays queued, MessageTooLarge; with `parts`, such a
      // message is then taken whole (receiveWhole), and sent on in parts by the caller.
      std::uint64_t max = std::min<std::uint64_t>(ch.maxMessageSize(), Gateway::kMaxMessage);
      if (op.bounded()) max = std::min<std::uint64_t>(max, op.max_size());
      if (buf.size() < max) buf.resize(max);
      ch.receiveAs(holderOf(from, op));
      auto n = ch.recv(std::as_writable_bytes(std::span(buf.data(), max)), Timeout::none());
      if (!n.has_value() && n.error().code() == StatusCode::WouldBlock) {
        a.wouldBlock = n.error();
        return a;
      }
      a.done = true;
      if (!n.has_value()) {
        Status st = n.error();
        if (st.code() == StatusCode::MessageTooLarge && op.parts() && !op.bounded()) {
          return receiveWhole(ch, from, op, mapping);
        }
        if (st.code() == StatusCode::MessageTooLarge && max == Gateway::kMaxMessage) {
          st = Status(st.code(), std::string(st.message()) +
                                     " (the most that one message carries between nodes; it "
                                     "stays queued for a receiver of its node)");
        }
        a.answer = errorOf(st);
        return a;
      }
      a.answer.mutable_channel_op_reply()->set_data(buf.data(), *n);
      return a;
    }
    case pb::ChannelOp::POLL: {
      unsigned ready = 0;
      if ((op.events() & 1u) != 0 && (ch.readable() || ch.isClosed())) ready |= 1u;
      if ((op.events() & 2u) != 0 && ch.writable()) ready |= 2u;
      if (ready == 0) return a;
      a.done = true;
      a.answer.mutable_channel_op_reply()->set_ready(ready);
      return a;
    }
    case pb::ChannelOp::CLOSE: {
      a.done = true;
      Status st = ch.close();
      if (st.isOk()) {
        a.answer.mutable_channel_op_reply();
      } else {
        a.answer = errorOf(st);
      }
      return a;
    }
    default:
      a.done = true;
      a.answer = errorOf(Status(StatusCode::InvalidArgument, "not a channel operation"));
      return a;
  }
}

// The answer of an operation whose deadline passed: as the local call's.
pb::Envelope expired(const pb::ChannelOp& op) {
  if (op.kind() == pb::ChannelOp::POLL) {
    pb::Envelope e;
    e.mutable_channel_op_reply()->set_ready(0);
    return e;
  }
  return errorOf(Status(StatusCode::Timeout, op.kind() == pb::ChannelOp::SEND
                                                 ? "the channel stayed full until the deadline"
                                                 : "no message came before the deadline"));
}

}  // namespace

struct Gateway::Op {
  // A parked SEND's message, counted in Gateway::parkedSendBytes_ for as long as it is held.
  struct Counted {
    std::atomic<std::uint64_t>* total = nullptr;
    std::uint64_t bytes = 0;
    std::atomic<std::uint32_t>* overdue = nullptr;  // set when it counts there too
    Counted() = default;
    Counted(const Counted&) = delete;
    Counted& operator=(const Counted&) = delete;
    ~Counted() {
      if (total != nullptr) total->fetch_sub(bytes);
      if (overdue != nullptr) overdue->fetch_sub(1);
    }
  };
  Counted counted;
  std::uint32_t from = 0;
  std::uint64_t key = 0;
  std::uint64_t channelId = 0;
  pb::ChannelOp op;
  Channel channel;             // on a mapping of the pool that the op holds
  std::shared_ptr<Pool> pool;  // that mapping
  std::shared_ptr<PartBlock> block;  // a SEND's message in a block of the pool
  std::int64_t deadlineNs = 0; // CLOCK_MONOTONIC; INT64_MAX: forever
  Reply reply;
  bool finished = false;       // answered or cancelled: the thread drops it
  // A try (timeout 0) parked only because a lock was held: answered after one attempt that
  // got the lock, as the local try would be once it had waited for the lock.
  bool tryOnce = false;
  // A SEND whose message is not in a block yet (needsBlock): the thread tried to copy it into
  // one (copyIntoBlocks) and found no room, so an attempt may answer; or it never can be.
  bool copyTried = false;
  Status copyError;
};

namespace {

// `a` = attempt(...) on this thread, never waiting on a lock a process holds (the caller's
// LockPatience): true when a lock was held, so that the attempt decided nothing.
template <typename F>
bool lockWasBusy(F&& attemptIt) {
  const std::uint64_t before = base::LockPatience::busyLocks();
  attemptIt();
  return base::LockPatience::busyLocks() != before;
}

}  // namespace

Gateway::Gateway(EventLoop& loop, ObjectManager& objects) : loop_(loop), objects_(objects) {}

Gateway::~Gateway() {
  if (thread_.joinable()) {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    ring();
    thread_.join();
  }
}

Status Gateway::startThread() {
  if (thread_.joinable()) return Status::ok();
  PoolOptions po;
  po.size = std::size_t{64} << 10;
  po.prefault = false;
  DRAGON_ASSIGN_OR_RETURN(Pool pool, Pool::create(po));
  bellPool_ = std::make_unique<Pool>(std::move(pool));
  ChannelOptions co;
  co.capacity = kBellSlots;
  co.inlineSize = 8;
  DRAGON_ASSIGN_OR_RETURN(Channel bell, Channel::create(*bellPool_, co));
  bell_ = std::make_unique<Channel>(std::move(bell));
  thread_ = std::thread([this] { run(); });
  return Status::ok();
}

void Gateway::ring() {
  if (!bell_) return;  // no thread yet, nothing parked
  const std::byte b{1};
  (void)bell_->send(std::span(&b, 1), Timeout::none());  // full: it rang already
}

bool Gateway::submit(std::uint32_t from, pb::ChannelOp&& op, Reply&& reply,
                     std::shared_ptr<PartBlock> block, std::span<const char> data) {
  auto desc = pb::fromRef(op.channel());
  if (!desc.has_value()) {
    reply(errorOf(desc.error()), nullptr);
    return true;
  }
  auto ch = objects_.channel(*desc);
  if (!ch.has_value()) {
    reply(errorOf(ch.error()), nullptr);
    return true;
  }
  const bool poll = op.kind() == pb::ChannelOp::POLL;
  if ((op.kind() != pb::ChannelOp::SEND && op.kind() != pb::ChannelOp::RECV && !poll &&
       op.kind() != pb::ChannelOp::CLOSE) ||
      (poll && (op.events() == 0 || op.events() > 3))) {
    reply(errorOf(Status(StatusCode::InvalidArgument, "not a channel operation")), nullptr);
    return true;
  }
  if (!data.empty() && (op.kind() != pb::ChannelOp::SEND || !op.data().empty() || block)) {
    reply(errorOf(Status(StatusCode::InvalidArgument,
                         "only a send carries a message, and only once")),
          nullptr);
    return true;
  }
  if (data.size() > kMaxMessage) {
    // Larger than one part (a peer's bug: its sender sends such a message in parts): copied
    // into the pool by the thread, as any message not yet in a block.
    op.mutable_data()->assign(data.data(), data.size());
    data = {};
  }
  // The loop never waits on a lock of a process (one stopped inside a send would stall every
  // client of the node): a held lock hands the operation to the thread, which tries it again.
  // A message larger than one part that is not in a block yet (its pool had none free at its
  // first part) is copied into the pool by the thread, as if a lock had been held: a copy of
  // that size here would hold the loop, heartbeats included.
  const bool copyOnThread = needsBlock(op, block.get());
  Attempt a;
  bool busy = copyOnThread;
  if (!copyOnThread) {
    base::LockPatience patience(0);
    busy = lockWasBusy([&] {
      a = attempt(*ch, from, op, loopBuf_, [&] { return sharedMapping(*desc); }, block.get(),
                  data);
    });
  }
  if (a.done && !busy) {
    reply(std::move(a.answer), std::move(a.whole));
    return true;
  }
  if (op.timeout_ns() == 0 && !busy) {
    if (op.kind() == pb::ChannelOp::POLL) {
      pb::Envelope e;
      e.mutable_channel_op_reply()->set_ready(0);
      reply(std::move(e), nullptr);
    } else {
      reply(errorOf(a.wouldBlock), nullptr);
    }
    return true;
  }
  // A send that waits holds its message here; past the limit, it waits on its sender's node
  // (the caller has it sent again later). A try waits only for a lock: it is held briefly.
  const bool mayWait = op.kind() == pb::ChannelOp::SEND && op.timeout_ns() != 0;
  const std::uint64_t held = parkedSendBytes_.load();
  const std::uint64_t bytes = data.empty() ? op.data().size() : data.size();
  const bool pastLimit = mayWait && !admits(held, parkedSendLimit_, bytes, false, 0);
  if (pastLimit && !admits(held, parkedSendLimit_, bytes, op.overdue(), parkedOverdue_.load())) {
    return false;  // held only as the node's one overdue send, and that place is taken
  }
  // Park it with the thread, on a mapping of the pool it shares with the loop.
  Status st = startThread();
  if (!st.isOk()) {
    reply(errorOf(st), nullptr);
    return true;
  }
  auto mine = sharedMapping(*desc);
  if (!mine.has_value()) {
    reply(errorOf(mine.error()), nullptr);
    return true;
  }
  auto own = Channel::attach(**mine, *desc);
  if (!own.has_value()) {
    reply(errorOf(own.error()), nullptr);
    return true;
  }
  const bool tryOnce = op.timeout_ns() == 0;
  if (!data.empty()) op.mutable_data()->assign(data.data(), data.size());  // it waits: kept
  park(from, std::move(op), std::move(*own), std::move(*mine), std::move(block), std::move(reply),
       tryOnce, pastLimit);
  return true;
}

Result<std::shared_ptr<Pool>> Gateway::sharedMapping(const ObjectDescriptor& desc) {
  if (auto it = mappings_.find(desc.poolId); it != mappings_.end()) return it->second;
  auto grant = objects_.find(desc);
  UniqueFd fd(grant.has_value() ? fcntl(grant->poolFd, F_DUPFD_CLOEXEC, 3) : -1);
  if (!fd) return grant.has_value() ? Status::fromErrno("dup", errno) : grant.error();
  DRAGON_ASSIGN_OR_RETURN(Pool pool, Pool::attach(std::move(fd), grant->pool, /*prefault=*/false));
  auto mine = std::make_shared<Pool>(std::move(pool));
  mappings_[desc.poolId] = mine;
  return mine;
}

std::shared_ptr<PartBlock> Gateway::blockFor(const ObjectDescriptor& desc, std::uint64_t bytes) {
  auto mine = sharedMapping(desc);
  if (!mine.has_value()) return nullptr;
  base::LockPatience patience(0);  // never wait for a pool lock a process holds
  auto a = (*mine)->alloc(bytes, Timeout::none());
  if (!a.has_value()) return nullptr;
  return std::make_shared<PartBlock>(std::move(*mine), *a, bytes);
}

void Gateway::poolGone(std::uint64_t poolId) { mappings_.erase(poolId); }

bool Gateway::admits(std::uint64_t held, std::uint64_t limit, std::uint64_t bytes, bool overdue,
                     std::uint32_t overdueHeld) {
  return held == 0 || bytes <= limit - std::min(held, limit) || (overdue && overdueHeld == 0);
}

bool Gateway::wouldTake(const pb::ChannelOp& ask) {
  auto desc = pb::fromRef(ask.channel());
  if (!desc.has_value()) return true;
  auto ch = objects_.channel(*desc);
  if (!ch.has_value() || ch->writable()) return true;
  return admits(parkedSendBytes_.load(), parkedSendLimit_, ask.ask_room(), ask.overdue(),
                parkedOverdue_.load());
}

void Gateway::park(std::uint32_t from, pb::ChannelOp&& theOp, Channel mine,
                   std::shared_ptr<Pool> pool, std::shared_ptr<PartBlock> block, Reply reply,
                   bool tryOnce, bool overdueSlot) {
  const std::uint64_t key = theOp.op_key();
  const std::uint64_t channelId = mine.id();
  // Moved, not copied: a send's message may be large.
  auto o = std::unique_ptr<Op>(new Op{{}, from, key, channelId, std::move(theOp),
                                      std::move(mine), std::move(pool), std::move(block), 0,
                                      std::move(reply), false, tryOnce, false, Status::ok()});
  const pb::ChannelOp& op = o->op;
  if (op.kind() == pb::ChannelOp::SEND) {
    o->counted.bytes = op.data().size();
    o->counted.total = &parkedSendBytes_;
    parkedSendBytes_ += o->counted.bytes;
    if (overdueSlot) {
      o->counted.overdue = &parkedOverdue_;
      ++parkedOverdue_;
    }
  }
  const std::int64_t t = op.timeout_ns();
  const std::int64_t now = monotonicNowNs();
  o->deadlineNs = tryOnce || t < 0 || t >= INT64_MAX - now ? INT64_MAX : now + t;
  {
    std::lock_guard lk(mu_);
    ops_.push_back(std::move(o));
  }
  ring();
}

void Gateway::fail(const std::function<bool(const Op&)>& which,
                   const std::function<pb::Envelope(const Op&)>& answer) {
  std::vector<std::pair<Reply, pb::Envelope>> answers;
  {
    std::lock_guard lk(mu_);
    for (auto& o : ops_) {
      if (!o->finished && which(*o)) {
        o->finished = true;
        if (answer) answers.emplace_back(std::move(o->reply), answer(*o));
      }
    }
  }
  ring();  // the thread drops them
  for (auto& [reply, e] : answers) reply(std::move(e), nullptr);
}

void Gateway::cancel(std::uint32_t from, std::uint64_t opKey) {
  // Answered as if its time ran out, so that whoever forwarded it is not left waiting.
  fail([&](const Op& o) { return o.from == from && o.key == opKey; },
       [](const Op& o) { return expired(o.op); });
}

void Gateway::dropReceivesOf(std::uint64_t holder) {
  auto its = [holder](const Op& o) {
    return !o.finished && o.op.kind() == pb::ChannelOp::RECV && holderOf(o.from, o.op) == holder;
  };
  {
    std::lock_guard lk(mu_);  // attempts run under it: none is under way now
    if (std::none_of(ops_.begin(), ops_.end(), [&](const auto& o) { return its(*o); })) return;
  }
  // Only the loop parks operations, so none of this holder's came meanwhile. Once fail()
  // returns, a token the thread took for this holder already shows as its, and none is taken
  // for it after.
  fail(its, [](const Op& o) { return expired(o.op); });
}

void Gateway::cancelFrom(std::uint32_t from) {
  fail([&](const Op& o) { return o.from == from; }, nullptr);
}

void Gateway::channelGone(std::uint64_t channelId) {
  if (!thread_.joinable()) return;
  std::uint64_t pass = 0;
  {
    std::lock_guard lk(mu_);
    // Finished operations stay in ops_ until the thread's next pass: it may be waiting on the
    // channel's words (waitAny arms them, a write) right now.
    if (std::none_of(ops_.begin(), ops_.end(),
                     [&](const auto& o) { return o->channelId == channelId; })) {
      return;
    }
    pass = pass_;
  }
  fail([&](const Op& o) { return o.channelId == channelId; }, [](const Op& o) {
    if (o.op.kind() == pb::ChannelOp::POLL && (o.op.events() & 1u) != 0) {
      pb::Envelope e;
      e.mutable_channel_op_reply()->set_ready(1);  // as a closed channel: readable
      return e;
    }
    return errorOf(Status(StatusCode::ChannelClosed, "the channel was destroyed"));
  });
  // Before the channel's memory goes back to its pool, the thread must have left the wait
  // that used it (fail() rang the doorbell); copying a message into a block, it uses none.
  std::unique_lock lk(mu_);
  passed_.wait(lk, [&] { return pass_ != pass || !inWait_ || stop_; });
}

std::size_t Gateway::parked() const {
  std::lock_guard lk(mu_);
  return static_cast<std::size_t>(
      std::count_if(ops_.begin(), ops_.end(), [](const auto& o) { return !o->finished; }));
}

// On the gateway thread: the parked sends whose message is not in a block of its pool yet
// (needsBlock) are copied into one, outside mu_, so that the loop, which takes mu_ too, never
// waits for such a copy (channelGone does not wait for it either: it touches no channel).
// Only this thread erases ops_, so the ops stay; the loop reads an op's ChannelOp under mu_
// and never changes it. A pool without a free block leaves the op as it is, copyTried: its
// attempt then answers PoolExhausted (a waiting send tries again, as a local send waits for a
// block); one the message can never fit, MessageTooLarge; one whose lock a process holds, no
// answer yet.
void Gateway::copyIntoBlocks(std::vector<Op*>& toCopy) {
  toCopy.clear();
  {
    std::lock_guard lk(mu_);
    inWait_ = false;
    passed_.notify_all();
    for (auto& o : ops_) {
      if (!o->finished && needsBlock(o->op, o->block.get())) toCopy.push_back(o.get());
    }
  }
  for (Op* o : toCopy) {
    const std::string& data = o->op.data();
    Result<PoolAllocation> a = Status(StatusCode::PoolExhausted);
    const bool held = lockWasBusy([&] { a = o->pool->alloc(data.size(), Timeout::none()); });
    if (!a.has_value()) {
      if (held) continue;  // tried again on the next pass
      std::lock_guard lk(mu_);
      o->copyTried = true;
      if (a.error().code() == StatusCode::InvalidArgument) {
        o->copyError = Status(StatusCode::MessageTooLarge,
                              "message of " + std::to_string(data.size()) +
                                  " bytes can never fit the pool");
      }
      continue;
    }
    auto block = std::make_shared<PartBlock>(o->pool, *a, data.size());
    std::memcpy(block->bytes().data(), data.data(), data.size());
    std::string gone;  // the message's old copy, freed after mu_ is let go
    std::lock_guard lk(mu_);
    o->block = std::move(block);
    o->op.mutable_data()->swap(gone);
    // This process holds the message no more: it no longer counts against the parked limit.
    if (o->counted.total != nullptr) o->counted.total->fetch_sub(o->counted.bytes);
    o->counted.bytes = 0;
  }
}

// The gateway thread: completes parked operations as their channels allow.
void Gateway::run() {
  // Attempts run under mu_, which the loop takes too: this thread never waits on a lock a
  // process holds either, and tries such an operation again kBusyRetryNs later.
  base::LockPatience patience(0);
  std::string buf;  // every RECV's buffer (grown once, never zeroed again)
  std::vector<Channel::WaitItem> items;
  std::vector<std::uint64_t> waitedIds;
  std::size_t rotate = 0;
  std::vector<Op*> toCopy;
  for (;;) {
    copyIntoBlocks(toCopy);
    std::int64_t nextDeadline = INT64_MAX;
    bool partial = false;
    bool busy = false;  // an operation found its channel's lock held, or its pool full
    items.clear();
    waitedIds.clear();
    {
      std::lock_guard lk(mu_);
      ++pass_;
      passed_.notify_all();
      if (stop_) return;
      const std::int64_t now = monotonicNowNs();
      for (auto it = ops_.begin(); it != ops_.end();) {
        Op& o = **it;
        if (!o.finished) {
          Attempt a;
          bool held = false;
          if (needsBlock(o.op, o.block.get()) && !o.copyTried) {
            held = true;  // its copy into a block comes first (copyIntoBlocks)
          } else if (!o.copyError.isOk()) {
            a.done = true;
            a.answer = errorOf(o.copyError);
          } else {
            held = lockWasBusy([&] {
              a = attempt(o.channel, o.from, o.op, buf,
                          [&] { return Result<std::shared_ptr<Pool>>(o.pool); }, o.block.get());
            });
          }
          busy = busy || held;
          if ((!held && (a.done || o.tryOnce)) || now >= o.deadlineNs) {
            pb::Envelope answer = !held && a.done ? std::move(a.answer)
                                  : !held && o.tryOnce ? errorOf(a.wouldBlock)
                                                       : expired(o.op);
            // Answered on the loop's thread, which owns the reply paths.
            loop_.post([reply = std::move(o.reply), answer = std::move(answer),
                        whole = std::move(a.whole)]() mutable {
              reply(std::move(answer), std::move(whole));
            });
            o.finished = true;
          } else if (a.poolFull) {
            busy = true;
          }
        }
        if (o.finished) {
          it = ops_.erase(it);
          continue;
        }
        nextDeadline = std::min(nextDeadline, o.deadlineNs);
        ++it;
      }
      // One wait item per channel and direction, the doorbell first.
      items.push_back({bell_.get(), WaitFor::Readable, {}});
      const std::size_t count = ops_.size();
      for (std::size_t i = 0; i < count; ++i) {
        auto it = std::next(ops_.begin(), static_cast<std::ptrdiff_t>((i + rotate) % count));
        Op& o = **it;
        const WaitFor ev = o.op.kind() == pb::ChannelOp::SEND ? WaitFor::Writable
                           : o.op.kind() == pb::ChannelOp::RECV
                               ? WaitFor::Readable
                               : static_cast<WaitFor>(o.op.events() & 3u);
        bool merged = false;
        for (std::size_t k = 1; k < items.size(); ++k) {
          if (waitedIds[k - 1] == o.channelId) {
            items[k].events = static_cast<WaitFor>(static_cast<unsigned>(items[k].events) |
                                                   static_cast<unsigned>(ev));
            merged = true;
            break;
          }
        }
        if (merged) continue;
        if (items.size() > kWaitChannels) {
          partial = true;
          continue;
        }
        items.push_back({&o.channel, ev, {}});
        waitedIds.push_back(o.channelId);
      }
      ++rotate;
      inWait_ = true;  // until copyIntoBlocks, after the wait
    }
    std::int64_t waitNs = nextDeadline == INT64_MAX ? Timeout::kForeverNs
                                                    : std::max<std::int64_t>(
                                                          0, nextDeadline - monotonicNowNs());
    if (partial) waitNs = std::min(waitNs, kScanNs);
    const Timeout t = waitNs == Timeout::kForeverNs
                          ? Timeout::forever()
                          : Timeout::after(std::chrono::nanoseconds(waitNs));
    // A channel is destroyed only after channelGone() has seen this wait end (pass_). With a
    // lock held, its channel may well look ready (a stopped sender has not committed): sleep
    // instead of a wait that would return at once, so that the retries do not spin.
    if (busy) {
      std::this_thread::sleep_for(std::chrono::nanoseconds(std::min(waitNs, kBusyRetryNs)));
      continue;
    }
    auto r = Channel::waitAny(items, t);
    if (!r.has_value()) {
      DRAGON_LOG(Warn, "gateway", "waiting on parked channels: %s", r.error().toString().c_str());
    }
    std::byte drain[8];
    while (bell_->recv(std::span(drain), Timeout::none()).has_value()) {
    }
  }
}

}  // namespace dragon::daemon
