// SPDX-License-Identifier: MIT
// Channel: a bounded multi-producer multi-consumer FIFO message queue living in a pool.
// Messages up to the channel's inline size are copied into its ring; larger ones travel in a
// pool allocation whose ownership passes to the receiver (zero copy: sendBlock() and
// recv(Message&)). Blocking calls spin briefly, then sleep on a futex, and honour deadlines.
// A process killed at any instruction loses at most the message it was sending or receiving.
#pragma once

#include <dragon/descriptor.hpp>
#include <dragon/pool.hpp>
#include <dragon/result.hpp>
#include <dragon/timeout.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace dragon {

namespace detail {
struct ChannelHeader;
}

struct ChannelOptions {
  std::uint32_t capacity = 64;      // messages the ring holds
  std::uint32_t inlineSize = 256;   // largest message copied into the ring
  std::uint64_t maxMessageSize = 0; // 0: as large as the pool can hold
  std::uint64_t id = 0;             // job-unique id; 0 picks a random one
  // Remember which process received last, until the next send (a lock's one token: its
  // holder). dragond breaks the channel when that process is killed or fails, or its node is
  // lost.
  bool trackHolder = false;
  // With trackHolder: only the holder gives the token back (a recursive lock), so the channel
  // breaks however the holder ends, also with status 0.
  bool holderOwns = false;
};

// A received message: the bytes, either copied out of the ring or in place in a pool block
// that this Message owns and frees (or hands on with takeBlock()). Reuse one Message across
// receives to avoid allocating.
class Message {
 public:
  Message() = default;
  Message(Message&&) noexcept;
  Message& operator=(Message&&) noexcept;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message() { reset(); }

  std::span<const std::byte> data() const noexcept;
  std::span<std::byte> mutableData() noexcept;
  std::size_t size() const noexcept { return size_; }
  // True when the payload is a pool block read in place.
  bool isBlock() const noexcept { return pool_ != nullptr; }
  // Takes the pool block out of the message; the caller then owns (and frees) it.
  Result<PoolAllocation> takeBlock();
  // Frees the block, if any.
  void reset() noexcept;
  // A message holding `bytes` (one received from a channel of another node, through dragond).
  static Message fromBytes(std::vector<std::byte> bytes);

 private:
  friend class Channel;
  Pool* pool_ = nullptr;
  PoolAllocation block_;
  std::vector<std::byte> inline_;
  std::size_t size_ = 0;
};

enum class WaitFor : std::uint8_t { Readable = 1, Writable = 2, Either = 3 };

class Channel {
 public:
  // Creates a channel in `pool`. The Pool object must outlive every handle to the channel and
  // stay where it is (a handle keeps its address): don't move it while channels use it.
  static Result<Channel> create(Pool& pool, const ChannelOptions& options);
  static Result<Channel> attach(Pool& pool, const ObjectDescriptor& desc);

  Channel(Channel&&) noexcept;
  Channel& operator=(Channel&&) noexcept;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel();

  ObjectDescriptor descriptor() const noexcept;
  std::uint64_t id() const noexcept;
  std::uint32_t capacity() const noexcept;
  std::uint32_t inlineSize() const noexcept;
  std::uint64_t maxMessageSize() const noexcept;
  Pool& pool() const noexcept { return *pool_; }

  // Copies `msg` into the channel. ChannelFull for a try, Timeout when the deadline passes,
  // ChannelClosed after close(), MessageTooLarge above maxMessageSize().
  Status send(std::span<const std::byte> msg, Timeout timeout = Timeout::forever());
  // Zero copy: queues `length` bytes of `block` (an allocation of this channel's pool owned by
  // the caller). On success the channel owns the block; on failure the caller still does.
  Status sendBlock(const PoolAllocation& block, std::size_t length,
                   Timeout timeout = Timeout::forever());

  // Copies the next message into `buf` and returns its length. WouldBlock for a try, Timeout
  // when the deadline passes, ChannelClosed once closed and drained, MessageTooLarge (the
  // message stays queued) when `buf` is too small.
  Result<std::size_t> recv(std::span<std::byte> buf, Timeout timeout = Timeout::forever());
  // Receives the next message into `out`: large messages are read in place (zero copy).
  Status recv(Message& out, Timeout timeout = Timeout::forever());

  // No further sends; receivers drain what is queued, then get ChannelClosed. Wakes all waiters.
  Status close();
  bool isClosed() const noexcept;
  // Messages queued now (a snapshot).
  std::size_t size() const noexcept;
  bool readable() const noexcept;  // a recv would not block
  bool writable() const noexcept;  // a send would not block

  // Holders (trackHolder channels): a process as a 64-bit word, its node above its pid.
  static constexpr std::uint64_t holderWord(std::uint32_t node, std::uint32_t pid) noexcept {
    return (std::uint64_t{node} << 32) | pid;
  }
  bool tracksHolder() const noexcept;
  // The holder word of the last receiver since the last send (0: none, or not tracked).
  std::uint64_t holder() const noexcept;
  // Receives through this handle count as `holder`'s (dragond receiving for a process of
  // another node); 0 (the default): this process of the channel's node.
  void receiveAs(std::uint64_t holder) noexcept { receiveAs_ = holder; }
  // When the holder is one `gone` says has ended (and the token is not queued), closes the
  // channel for good: every receive and send then fails with ChannelClosed naming that holder.
  // `cleanEnd`: the holder exited with status 0, which breaks only a channel its holder owns
  // (holderOwns). Returns whether it broke the channel.
  bool breakHold(const std::function<bool(std::uint64_t holder)>& gone, bool cleanEnd = false);

  // Frees the channel and every queued message. No other process may use it afterwards.
  Status destroy();

  // Frees the allocations of `pool` whose owners are gone: blocks of processes that no longer
  // exist (a zombie still counts as alive until reaped), and blocks tagged as queued in a
  // channel that no longer holds them (a sender or receiver died between the two steps of a
  // hand-over). Returns how many it freed.
  static Result<std::size_t> reclaimOrphans(Pool& pool);

  struct WaitItem {
    Channel* channel = nullptr;
    WaitFor events = WaitFor::Readable;
    WaitFor ready{};  // set by waitAny: the subset of events that hold (0 when none)
  };
  // Waits until at least one item is ready (or closed) and returns how many are; 0 when the
  // deadline passed first. At most 64 items.
  static Result<std::size_t> waitAny(std::span<WaitItem> items, Timeout timeout);
  static constexpr std::size_t kMaxWaitItems = 64;

 private:
  struct SpinState;
  Channel(Pool* pool, detail::ChannelHeader* h, std::uint64_t offset);
  Status sendSlot(std::span<const std::byte> inlineMsg, const PoolAllocation* block,
                  std::size_t length, Timeout timeout);
  Status trySendSlot(std::span<const std::byte> inlineMsg, const PoolAllocation* block,
                     std::size_t length);
  template <typename Take>
  Status recvWith(Take&& take, Timeout timeout);
  std::uint64_t holderWordOfReceiver() const noexcept;

  Pool* pool_;
  detail::ChannelHeader* h_;
  std::uint64_t offset_;  // of the channel header in the pool
  std::unique_ptr<SpinState> spin_;
  std::uint64_t receiveAs_ = 0;
};

}  // namespace dragon
