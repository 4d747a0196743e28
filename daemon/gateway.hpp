// SPDX-License-Identifier: MIT
// The home side of remote channel operations (docs/cluster.md, "Remote channels"): a send,
// receive or poll that a process on another node makes of a channel of this node arrives here
// (forwarded by its own dragond) and is done with the channel's own semantics.
//
// The event loop tries each operation once at once; most complete there. One that would block
// and may wait is parked with the gateway's one thread, which sleeps in Channel::waitAny over
// every parked channel (plus a doorbell channel that new work rings), completes the operation
// as soon as the channel allows or answers Timeout at its deadline, and hands the answer back
// to the loop with EventLoop::post. So is a send of a message larger than one part that is not
// in a block of its pool yet: the thread copies it there, not the loop. The thread's pools are
// mapped by the loop for it (a dup of the pool's memfd, sharedMapping), so a pool that the
// manager releases stays mapped for it; the loop cancels an operation before its channel is
// destroyed, and the thread touches no channel of a cancelled one after that.
//
// Neither the loop nor the thread ever waits on a channel's send or receive lock that a process
// holds (base::LockPatience): a process stopped inside a send, by a debugger or SIGSTOP, must
// not stall the node. An operation that finds its lock held goes to the thread (a try too,
// answered as the local try once the lock is free), which tries it again every few ms. So
// does a send that finds no free block in its channel's pool (a freed block wakes no channel
// wait): it waits for one until its deadline, as a local send does, and a try answers
// PoolExhausted.
//
// Owning thread: the event loop calls everything here; the gateway thread is internal.
#pragma once

#include "base/private.hpp"
#include "daemon/event_loop.hpp"
#include "daemon/object_manager.hpp"
#include "daemon/parts.hpp"
#include "protocol/codec.hpp"

#include <dragon/client.hpp>
#include <dragon/unique_fd.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

namespace dragon::daemon {

class Gateway {
 public:
  // The answer; with it, for a RECV with parts that took a message larger than one part, the
  // message (the answer then carries no data: the caller hands it out in parts).
  using Reply = std::function<void(protocol::Envelope, std::shared_ptr<WholeMessage>)>;

  // The largest message a RECV takes: one that crosses nodes travels whole in one transport
  // message; a larger one stays queued and the receiver gets MessageTooLarge.
  static constexpr std::uint64_t kMaxMessage = kMaxMessageAcrossNodes;

  Gateway(EventLoop& loop, ObjectManager& objects);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Does `op` (SEND, RECV or POLL) on the channel of this node it names and calls `reply` on
  // the loop thread with the answer: at once, or when the parked operation completes.
  // `from` and op.op_key() name it for cancel(). Returns false, leaving `reply` as it was, for
  // a SEND that would wait while the waiting sends hold the limit (setParkedSendLimit) or more
  // (admits): the caller tells its sender to try again later (ChannelOpReply retry_after_ns),
  // so that the bytes wait on the sender's node, as a local send's do.
  // `block`: a SEND's message, in a block of the channel's pool (its op carries no data).
  // `data`: a SEND's message where it arrived (its op carries none), valid during the call: a
  // send that completes at once is copied from there into the channel, and one that waits
  // keeps a copy.
  // `op` is moved from only when it is parked (true is returned).
  [[nodiscard]] bool submit(std::uint32_t from, protocol::ChannelOp&& op, Reply&& reply,
                            std::shared_ptr<PartBlock> block = nullptr,
                            std::span<const char> data = {});
  // A free block of `bytes` in the pool of channel `desc`, for a send in parts to be assembled
  // in; null when there is none now (the pool is full, or a process holds its lock).
  std::shared_ptr<PartBlock> blockFor(const ObjectDescriptor& desc, std::uint64_t bytes);
  // Would a SEND (ChannelOp.ask_room bytes) be taken now: its channel has room, or it may
  // wait here? True for a channel that is not here (the send itself then fails).
  bool wouldTake(const protocol::ChannelOp& ask);
  // Whether a waiting send of `bytes` may be held, with `held` bytes of waiting sends held
  // already under `limit`: when nothing is held, when it fits, or when it is overdue and no
  // other overdue one is held (`overdueHeld`).
  static bool admits(std::uint64_t held, std::uint64_t limit, std::uint64_t bytes, bool overdue,
                     std::uint32_t overdueHeld);
  // cluster.parked_send_bytes.
  static constexpr std::uint64_t kDefaultParkedSendLimit = std::uint64_t{1} << 30;
  void setParkedSendLimit(std::uint64_t bytes) { parkedSendLimit_ = bytes; }
  // Ends a parked operation whose requester no longer wants it, answered as a timeout.
  void cancel(std::uint32_t from, std::uint64_t opKey);
  // Drops every parked operation of a lost node (none is attempted after this returns).
  void cancelFrom(std::uint32_t from);
  // Ends the parked receives made for `holder` (a Channel::holderWord: a process that has
  // ended), answered as timeouts, before its locks are broken: a receive completed after that
  // would take a token for the dead process.
  void dropReceivesOf(std::uint64_t holder);
  // The channel is about to be destroyed: its parked operations fail with ChannelClosed (a
  // POLL for readable answers readable, as a closed channel's). Returns once the gateway
  // thread no longer touches the channel.
  void channelGone(std::uint64_t channelId);
  // The pool is about to be destroyed: the gateway's own mapping of it goes (operations and
  // messages that hold it keep it until they end).
  void poolGone(std::uint64_t poolId);
  // Operations parked now (for the SIGUSR1 dump).
  std::size_t parked() const;

 private:
  struct Op;
  Status startThread();
  // The loop's own shared mapping of the pool of channel `desc` (kept until the pool goes).
  Result<std::shared_ptr<Pool>> sharedMapping(const ObjectDescriptor& desc);
  void run();
  void copyIntoBlocks(std::vector<Op*>& toCopy);
  void ring();
  // `overdueSlot`: a SEND held past the limit because it is overdue (parkedOverdue_).
  void park(std::uint32_t from, protocol::ChannelOp&& op, Channel mine,
            std::shared_ptr<Pool> pool, std::shared_ptr<PartBlock> block, Reply reply,
            bool tryOnce, bool overdueSlot);
  // Finishes the parked operations `which` selects, answering each with `answer` (if given).
  void fail(const std::function<bool(const Op&)>& which,
            const std::function<protocol::Envelope(const Op&)>& answer);

  EventLoop& loop_;
  ObjectManager& objects_;
  std::string loopBuf_;  // the loop's receive buffer for RECVs tried at once

  std::uint64_t parkedSendLimit_ = kDefaultParkedSendLimit;
  // Of the parked SENDs' messages: counted by the loop when it parks one, and given back when
  // the operation is dropped (by the thread, or the loop). Declared before ops_, which holds
  // what counts against it.
  std::atomic<std::uint64_t> parkedSendBytes_{0};
  std::atomic<std::uint32_t> parkedOverdue_{0};  // of them, those held past it as overdue

  // Shared with the thread, under mu_.
  mutable std::mutex mu_;
  std::list<std::unique_ptr<Op>> ops_;  // parked; the thread erases finished and cancelled ones
  bool stop_ = false;
  std::uint64_t pass_ = 0;      // the thread's passes: one begins after every wait
  bool inWait_ = false;         // the thread waits on the parked channels (or sleeps)
  std::condition_variable passed_;

  std::unique_ptr<Pool> bellPool_;  // the doorbell: a one-slot channel of a private pool
  std::unique_ptr<Channel> bell_;
  // The loop's shared mappings, by pool id, kept until the pool goes (poolGone): a page is
  // faulted in once, not once per message. Parked operations and messages in parts hold them
  // too, so a pool the manager destroys stays mapped for them.
  std::map<std::uint64_t, std::shared_ptr<Pool>> mappings_;
  std::thread thread_;
};

}  // namespace dragon::daemon
