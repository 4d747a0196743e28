// SPDX-License-Identifier: MIT
#include "daemon/parts.hpp"

#include <algorithm>
#include <cstring>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

Status badPart(const std::string& what) {
  return Status(StatusCode::InvalidArgument, "message part: " + what);
}

// A part's bytes: `part` (where they arrived), or else the op's own; not both.
Result<std::string_view> bytesOf(const pb::ChannelOp& op, std::string_view part) {
  if (part.empty()) return std::string_view(op.data());
  if (!op.data().empty()) return badPart("its bytes came twice");
  return part;
}

}  // namespace

void PartStore::append(Kept& k, std::string_view part) {
  if (k.block) {
    std::memcpy(k.block->bytes().data() + k.filled, part.data(), part.size());
  } else {
    k.data.append(part);
  }
  k.filled += part.size();
}

void PartStore::forget(std::map<Key, Kept>::iterator it) {
  keptSendBytes_ -= it->second.counted;
  kept_.erase(it);
}

Status PartStore::keep(std::uint32_t node, const pb::ChannelOp& op, std::int64_t nowNs,
                       std::shared_ptr<PartBlock> block, std::string_view part) {
  if (op.transfer() == 0) return badPart("no transfer id");
  DRAGON_ASSIGN_OR_RETURN(part, bytesOf(op, part));
  if (part.empty() || part.size() >= op.total_size()) {
    return badPart("a part is of some bytes, and fewer than its message's");
  }
  const Key key{node, false, op.transfer()};
  auto it = kept_.find(key);
  if (op.part_offset() == 0) {
    if (it != kept_.end()) {
      forget(it);
      return badPart("transfer " + std::to_string(op.transfer()) + " began twice");
    }
    if (block && block->length() != op.total_size()) return badPart("a block of another size");
    if (!block && op.total_size() > kMaxKeptSendBytes - keptSendBytes_) {  // no sum that wraps
      return Status(StatusCode::PoolExhausted,
                    "messages in parts being sent here hold " + std::to_string(keptSendBytes_) +
                        " bytes; one of " + std::to_string(op.total_size()) + " more is refused");
    }
    it = kept_.emplace(key, Kept{}).first;
    Kept& k = it->second;
    k.total = op.total_size();
    if (block) {
      k.block = std::move(block);
    } else {
      k.counted = op.total_size();  // counted whole from its first part
      keptSendBytes_ += op.total_size();
      k.data.reserve(op.total_size());  // one buffer: no copy per part as it grows
    }
  } else if (it == kept_.end()) {
    return badPart("no transfer " + std::to_string(op.transfer()) + " (it was dropped)");
  }
  Kept& k = it->second;
  if (op.total_size() != k.total || op.part_offset() != k.filled ||
      k.filled + part.size() >= k.total) {
    forget(it);
    return badPart("a part out of order, or past the message's end");
  }
  append(k, part);
  k.touched = nowNs;
  return Status::ok();
}

Status PartStore::assemble(std::uint32_t node, pb::ChannelOp& op,
                           std::shared_ptr<PartBlock>& block, std::string_view part) {
  DRAGON_ASSIGN_OR_RETURN(part, bytesOf(op, part));
  auto it = kept_.find(Key{node, false, op.transfer()});
  if (it == kept_.end()) {
    return badPart("no transfer " + std::to_string(op.transfer()) + " (it was dropped)");
  }
  Kept& k = it->second;
  if (op.total_size() != k.total || op.part_offset() != k.filled ||
      k.filled + part.size() != k.total) {
    forget(it);
    return badPart("the last part does not complete the message");
  }
  append(k, part);
  if (k.block) {
    block = std::move(k.block);
    op.clear_data();
  } else {
    op.mutable_data()->swap(k.data);
  }
  op.clear_transfer();
  op.clear_part_offset();
  op.clear_total_size();
  forget(it);
  return Status::ok();
}

void PartStore::restore(std::uint32_t node, std::uint64_t transfer, std::uint64_t total,
                        std::uint64_t lastOffset, std::string whole,
                        std::shared_ptr<PartBlock> block, std::int64_t nowNs) {
  Kept& k = kept_[Key{node, false, transfer}];
  keptSendBytes_ -= k.counted;  // none: assemble() ended the transfer
  k.total = total;
  k.touched = nowNs;
  k.counted = 0;
  if (block) {
    k.block = std::move(block);
    k.filled = std::min<std::uint64_t>(lastOffset, k.block->length());
    return;
  }
  whole.resize(std::min<std::uint64_t>(lastOffset, whole.size()));
  k.filled = whole.size();
  k.data = std::move(whole);
  k.counted = total;
  keptSendBytes_ += total;
}

void PartStore::split(std::uint32_t node, pb::ChannelOpReply& reply,
                      std::shared_ptr<const WholeMessage> whole, std::int64_t nowNs) {
  const auto bytes = whole->message.data();
  const std::uint64_t first = std::min<std::uint64_t>(kPart, bytes.size());
  reply.set_data(reinterpret_cast<const char*>(bytes.data()), first);
  if (first == bytes.size()) return;  // one part: nothing kept
  const std::uint64_t id = nextReceive_++;
  Kept k;
  k.whole = std::move(whole);
  k.sent = first;
  k.touched = nowNs;
  reply.set_total_size(bytes.size());
  reply.set_transfer(id);
  kept_.emplace(Key{node, true, id}, std::move(k));
}

Result<std::string> PartStore::next(std::uint32_t node, const pb::ChannelOp& op,
                                    std::int64_t nowNs) {
  auto it = kept_.find(Key{node, true, op.transfer()});
  if (it == kept_.end()) {
    return badPart("no transfer " + std::to_string(op.transfer()) + " (it was dropped)");
  }
  Kept& k = it->second;
  if (op.part_offset() != k.sent) {
    forget(it);
    return badPart("a part asked out of order");
  }
  const auto bytes = k.whole->message.data();
  const std::uint64_t n = std::min<std::uint64_t>(kPart, bytes.size() - k.sent);
  std::string part(reinterpret_cast<const char*>(bytes.data()) + k.sent, n);
  k.sent += n;
  k.touched = nowNs;
  if (k.sent == bytes.size()) forget(it);  // the block goes back to its pool
  return part;
}

void PartStore::dropNode(std::uint32_t node) {
  for (auto it = kept_.begin(); it != kept_.end();) {
    auto here = it++;
    if (std::get<0>(here->first) == node) forget(here);
  }
}

void PartStore::drop(std::uint32_t node, std::uint64_t transfer, bool receive) {
  if (auto it = kept_.find(Key{node, receive, transfer}); it != kept_.end()) forget(it);
}

void PartStore::touch(std::uint32_t node, std::uint64_t transfer, std::int64_t nowNs) {
  if (auto it = kept_.find(Key{node, false, transfer}); it != kept_.end()) it->second.touched = nowNs;
}

bool PartStore::expire(std::int64_t nowNs) {
  for (auto it = kept_.begin(); it != kept_.end();) {
    auto here = it++;
    if (here->second.touched < nowNs - kIdleNs) forget(here);
  }
  return !kept_.empty();
}

}  // namespace dragon::daemon
