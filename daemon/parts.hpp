// SPDX-License-Identifier: MIT
// Channel messages larger than one message between nodes carries (kMaxMessageAcrossNodes),
// moved in parts (ChannelOp SEND_PART and RECV_PART, see dragon.proto): what a channel's home
// dragond keeps of each unfinished transfer, by the node it comes from. A send's parts are kept
// until its last part comes with the SEND, which then carries the whole message; a receive
// taken whole keeps all but its first part until the receiver has fetched them. Used on the
// event loop only.
#pragma once

#include <dragon/client.hpp>
#include <dragon/result.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

#include "dragon.pb.h"

namespace dragon::daemon {

class PartStore {
 public:
  static constexpr std::uint64_t kPart = kMaxMessageAcrossNodes;
  // Unfinished sends kept at once, from every node: a part past it is refused (PoolExhausted).
  static constexpr std::uint64_t kMaxKeptSendBytes = std::uint64_t{4} << 30;
  // A transfer without a part for this long is dropped (its sender or receiver went).
  static constexpr std::int64_t kIdleNs = 60'000'000'000;

  // SEND_PART: keeps op.data() as the part at op.part_offset() of transfer op.transfer().
  Status keep(std::uint32_t node, const protocol::ChannelOp& op, std::int64_t nowNs);
  // A SEND of a transfer's last part: op.data() becomes the whole message and the transfer
  // ends (its fields are cleared).
  Status assemble(std::uint32_t node, protocol::ChannelOp& op);
  // Undoes assemble() of a SEND that the home could not take yet: the message, less its last
  // part (from `lastOffset` on, which the sender sends again), is kept again as `transfer` of
  // `total` bytes, counted whatever the limit (it was counted a moment ago).
  void restore(std::uint32_t node, std::uint64_t transfer, std::uint64_t total,
               std::uint64_t lastOffset, std::string whole, std::int64_t nowNs);
  // The reply to a RECV with parts: a message larger than one part keeps all but its first,
  // and the reply says the total size and the transfer the rest comes by.
  void split(std::uint32_t node, protocol::ChannelOpReply& reply, std::int64_t nowNs);
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
    std::string data;         // a send: its parts so far; a receive: the whole message
    std::uint64_t total = 0;  // a send: the message's size
    std::uint64_t sent = 0;   // a receive: the bytes handed out so far
    std::uint64_t counted = 0;  // what it counts in keptSendBytes_
    std::int64_t touched = 0;
  };
  // (node, is a receive, transfer)
  using Key = std::tuple<std::uint32_t, bool, std::uint64_t>;
  void forget(std::map<Key, Kept>::iterator it);

  std::map<Key, Kept> kept_;
  std::uint64_t keptSendBytes_ = 0;
  std::uint64_t nextReceive_ = 1;
};

}  // namespace dragon::daemon
