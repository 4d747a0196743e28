// SPDX-License-Identifier: MIT
// Channel messages larger than one message between nodes carries (kMaxMessageAcrossNodes),
// moved in parts (ChannelOp SEND_PART and RECV_PART, see dragon.proto): what a channel's home
// dragond keeps of each unfinished transfer, by the node it comes from. A send's parts go
// straight into a block of the channel's pool (PartBlock) when one is free at its first part,
// else into dragond's memory, until its last part comes with the SEND, which then sends the
// block (or carries the whole message). A receive taken whole stays in its pool block
// (WholeMessage), read in place, until the receiver has fetched every part. Either way the
// home's event loop copies one part per request, never the whole message at once: it would
// answer nothing meanwhile, heartbeats included (a message kept in memory is copied into its
// pool by the gateway thread). PartStore is used on the event loop only; a PartBlock or
// WholeMessage it hands on may go on the gateway thread.
#pragma once

#include <dragon/channel.hpp>
#include <dragon/client.hpp>
#include <dragon/pool.hpp>
#include <dragon/result.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>

#include "dragon.pb.h"

namespace dragon::daemon {

// A message a receive in parts took from its channel: in place in its pool block, which the
// Message frees when it goes, on a mapping of the pool that this holds, so that its bytes stay
// readable after the channel and its pool are destroyed (as a local receiver's Message does).
struct WholeMessage {
  std::shared_ptr<Pool> pool;  // null for a message that is not a block (Message::fromBytes)
  Message message;             // declared after pool: freed while the mapping is still there
};

// A block of a channel's pool that a send in parts is assembled in at the channel's home:
// freed when it goes, unless the channel took it (release()). Holds a mapping of the pool.
class PartBlock {
 public:
  PartBlock(std::shared_ptr<Pool> pool, PoolAllocation block, std::uint64_t length)
      : pool_(std::move(pool)), block_(block), length_(length) {}
  ~PartBlock() {
    if (pool_) (void)pool_->free(block_);
  }
  PartBlock(const PartBlock&) = delete;
  PartBlock& operator=(const PartBlock&) = delete;

  // The message's bytes (`length` of the block).
  std::span<std::byte> bytes() const noexcept {
    return {static_cast<std::byte*>(pool_->pointer(block_)), length_};
  }
  const PoolAllocation& allocation() const noexcept { return block_; }
  std::uint64_t length() const noexcept { return length_; }
  // The channel owns the block now (Channel::sendBlock took it).
  void release() noexcept { pool_.reset(); }

 private:
  std::shared_ptr<Pool> pool_;
  PoolAllocation block_;
  std::uint64_t length_;
};

class PartStore {
 public:
  static constexpr std::uint64_t kPart = kMaxMessageAcrossNodes;
  // Unfinished sends kept at once, from every node: a part past it is refused (PoolExhausted).
  static constexpr std::uint64_t kMaxKeptSendBytes = std::uint64_t{4} << 30;
  // A transfer without a part for this long is dropped (its sender or receiver went).
  static constexpr std::int64_t kIdleNs = 60'000'000'000;

  // SEND_PART: keeps the part at op.part_offset() of transfer op.transfer(): `part`, or
  // op.data() when `part` is empty.
  // `block` (a first part only): where the message is assembled, of op.total_size() bytes; it
  // counts nothing against kMaxKeptSendBytes (it is the pool's memory). Without one, the parts
  // are kept in this process's memory.
  Status keep(std::uint32_t node, const protocol::ChannelOp& op, std::int64_t nowNs,
              std::shared_ptr<PartBlock> block = nullptr, std::string_view part = {});
  // A SEND of a transfer's last part (`part`, or op.data() when `part` is empty): the transfer
  // ends (its fields are cleared), and either `block` is set to the block that holds the whole
  // message (op.data() is then cleared), or op.data() becomes the whole message.
  Status assemble(std::uint32_t node, protocol::ChannelOp& op, std::shared_ptr<PartBlock>& block,
                  std::string_view part = {});
  // Undoes assemble() of a SEND that the home could not take yet: the message, less its last
  // part (from `lastOffset` on, which the sender sends again), is kept again as `transfer` of
  // `total` bytes: in `block`, or else as `whole`, counted whatever the limit (it was counted
  // a moment ago).
  void restore(std::uint32_t node, std::uint64_t transfer, std::uint64_t total,
               std::uint64_t lastOffset, std::string whole, std::shared_ptr<PartBlock> block,
               std::int64_t nowNs);
  // The reply to a RECV with parts that took `whole`: its first part (a copy) goes in `reply`;
  // a message larger than one part is kept for the rest, and the reply says its total size
  // and the transfer the rest comes by.
  void split(std::uint32_t node, protocol::ChannelOpReply& reply,
             std::shared_ptr<const WholeMessage> whole, std::int64_t nowNs);
  // RECV_PART: the next part of a receive kept by split(); the last one ends the transfer.
  Result<std::string> next(std::uint32_t node, const protocol::ChannelOp& op, std::int64_t nowNs);

  void dropNode(std::uint32_t node);
  // The send `transfer` of `node` will not be finished (its sender gave up or left): its parts
  // go; with `receive`, that receive will not be fetched (its receiver left): the rest goes.
  void drop(std::uint32_t node, std::uint64_t transfer, bool receive);
  // The send `transfer` of `node` is still wanted (its sender waits to send its last part).
  void touch(std::uint32_t node, std::uint64_t transfer, std::int64_t nowNs);
  // Drops the transfers idle since before nowNs - kIdleNs; true while any is left.
  bool expire(std::int64_t nowNs);
  std::size_t size() const noexcept { return kept_.size(); }
  std::uint64_t keptSendBytes() const noexcept { return keptSendBytes_; }

 private:
  struct Kept {
    std::string data;         // a send without a block: its parts so far
    std::shared_ptr<PartBlock> block;  // a send's block
    std::uint64_t filled = 0;  // a send: the bytes it has so far
    std::shared_ptr<const WholeMessage> whole;  // a receive: the message
    std::uint64_t total = 0;  // a send: the message's size
    std::uint64_t sent = 0;   // a receive: the bytes handed out so far
    std::uint64_t counted = 0;  // what it counts in keptSendBytes_
    std::int64_t touched = 0;
  };
  // (node, is a receive, transfer)
  using Key = std::tuple<std::uint32_t, bool, std::uint64_t>;
  void forget(std::map<Key, Kept>::iterator it);
  static void append(Kept& k, std::string_view part);

  std::map<Key, Kept> kept_;
  std::uint64_t keptSendBytes_ = 0;
  std::uint64_t nextReceive_ = 1;
};

}  // namespace dragon::daemon
