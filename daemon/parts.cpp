// SPDX-License-Identifier: MIT
#include "daemon/parts.hpp"

#include <algorithm>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

Status badPart(const std::string& what) {
  return Status(StatusCode::InvalidArgument, "message part: " + what);
}

}  // namespace

void PartStore::forget(std::map<Key, Kept>::iterator it) {
  keptSendBytes_ -= it->second.counted;
  kept_.erase(it);
}

Status PartStore::keep(std::uint32_t node, const pb::ChannelOp& op, std::int64_t nowNs) {
  if (op.transfer() == 0) return badPart("no transfer id");
  if (op.data().empty() || op.data().size() >= op.total_size()) {
    return badPart("a part is of some bytes, and fewer than its message's");
  }
  const Key key{node, false, op.transfer()};
  auto it = kept_.find(key);
  if (op.part_offset() == 0) {
    if (it != kept_.end()) {
      forget(it);
      return badPart("transfer " + std::to_string(op.transfer()) + " began twice");
    }
    if (op.total_size() > kMaxKeptSendBytes - keptSendBytes_) {  // no sum that could wrap
      return Status(StatusCode::PoolExhausted,
                    "messages in parts being sent here hold " + std::to_string(keptSendBytes_) +
                        " bytes; one of " + std::to_string(op.total_size()) + " more is refused");
    }
    it = kept_.emplace(key, Kept{}).first;
    it->second.total = op.total_size();
    it->second.counted = op.total_size();  // counted whole from its first part
    keptSendBytes_ += op.total_size();
    it->second.data.reserve(op.total_size());  // one buffer: no copy per part as it grows
  } else if (it == kept_.end()) {
    return badPart("no transfer " + std::to_string(op.transfer()) + " (it was dropped)");
  }
  Kept& k = it->second;
  if (op.total_size() != k.total || op.part_offset() != k.data.size() ||
      k.data.size() + op.data().size() >= k.total) {
    forget(it);
    return badPart("a part out of order, or past the message's end");
  }
  k.data.append(op.data());
  k.touched = nowNs;
  return Status::ok();
}

Status PartStore::assemble(std::uint32_t node, pb::ChannelOp& op) {
  auto it = kept_.find(Key{node, false, op.transfer()});
  if (it == kept_.end()) {
    return badPart("no transfer " + std::to_string(op.transfer()) + " (it was dropped)");
  }
  Kept& k = it->second;
  if (op.total_size() != k.total || op.part_offset() != k.data.size() ||
      k.data.size() + op.data().size() != k.total) {
    forget(it);
    return badPart("the last part does not complete the message");
  }
  k.data.append(op.data());
  op.mutable_data()->swap(k.data);
  op.clear_transfer();
  op.clear_part_offset();
  op.clear_total_size();
  forget(it);
  return Status::ok();
}

void PartStore::restore(std::uint32_t node, std::uint64_t transfer, std::uint64_t total,
                        std::uint64_t lastOffset, std::string whole, std::int64_t nowNs) {
  whole.resize(std::min<std::uint64_t>(lastOffset, whole.size()));
  Kept& k = kept_[Key{node, false, transfer}];
  keptSendBytes_ -= k.counted;  // none: assemble() ended the transfer
  k.data = std::move(whole);
  k.total = total;
  k.counted = total;
  k.touched = nowNs;
  keptSendBytes_ += total;
}

void PartStore::split(std::uint32_t node, pb::ChannelOpReply& reply, std::int64_t nowNs) {
  if (reply.data().size() <= kPart) return;
  const std::uint64_t id = nextReceive_++;
  Kept k;
  k.data.swap(*reply.mutable_data());
  k.sent = kPart;
  k.touched = nowNs;
  reply.set_data(k.data.data(), kPart);
  reply.set_total_size(k.data.size());
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
  const std::uint64_t n = std::min<std::uint64_t>(kPart, k.data.size() - k.sent);
  std::string part = k.data.substr(k.sent, n);
  k.sent += n;
  k.touched = nowNs;
  if (k.sent == k.data.size()) forget(it);
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
