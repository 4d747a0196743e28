// SPDX-License-Identifier: MIT
// Remote memory (docs/cluster.md, "Remote memory"): MemoryOp, a copy between allocations of two
// pools. On one node dragond copies between its own mappings of the pools. Across nodes the
// requester's dragond checks its side, registers that pool with the transport and forwards the
// request with the address and key of its side; the other pool's home dragond checks its side
// and moves the bytes with one RMA operation (a Get from the requester for a put, a Put to it
// for a get), then answers. Either dragond keeps the pool it reads or writes mapped until the
// transfer is done, even if the pool is destroyed meanwhile.
#include "daemon/rma.hpp"
#include "daemon/server.hpp"

#include "base/log.hpp"
#include "protocol/socket_io.hpp"

#include <algorithm>
#include <cstring>
#include <functional>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

// The pools of both sides, checked to be pools.
Status poolsOf(const pb::MemoryOp& op, ObjectDescriptor& from, ObjectDescriptor& to) {
  auto f = pb::fromRef(op.from().pool());
  if (!f.has_value()) return f.error();
  auto t = pb::fromRef(op.to().pool());
  if (!t.has_value()) return t.error();
  if (f->kind != ObjectKind::Pool || t->kind != ObjectKind::Pool) {
    return Status(StatusCode::InvalidArgument, "a memory transfer is between allocations of pools");
  }
  from = *f;
  to = *t;
  return Status::ok();
}

}  // namespace

void Server::handleMemoryOp(const Request& rq, pb::Envelope& msg) {
  if (rq.fromPeer()) {
    peerMemoryOp(rq.node, msg.memory_op(), rq.later());
  } else {
    clientMemoryOp(msg.memory_op(), rq.later());
  }
}

namespace {

// A transfer between two pools of this node: copied by dragond itself, a step of at most
// kCopyStep bytes per turn of its loop, so that a copy of gigabytes does not hold back its
// clients, the gateway and the heartbeats that keep this node in its job.
constexpr std::uint64_t kCopyStep = std::uint64_t{16} << 20;

struct LocalCopy {
  std::shared_ptr<RmaRegions::Region> keepFrom, keepTo;  // mapped until the answer
  char* from = nullptr;
  char* to = nullptr;
  std::uint64_t length = 0;
  std::uint64_t done = 0;
  bool backward = false;
  std::function<void()> answer;  // Ok, to the requester
};

void copyStep(EventLoop& loop, std::shared_ptr<LocalCopy> c) {
  const std::uint64_t n = std::min(kCopyStep, c->length - c->done);
  const std::uint64_t at = c->backward ? c->length - c->done - n : c->done;
  if (n > 0) std::memmove(c->to + at, c->from + at, n);
  c->done += n;
  if (c->done == c->length) {
    c->answer();
    return;
  }
  loop.defer([&loop, c = std::move(c)]() mutable { copyStep(loop, std::move(c)); });
}

}  // namespace

void Server::clientMemoryOp(const pb::MemoryOp& op, Reply reply) {
  if (op.has_doorbell()) {
    auto bell = pb::fromRef(op.doorbell());
    if (!bell.has_value()) {
      reply(errorEnvelope(bell.error()));
      return;
    }
    reply = [this, bell = *bell, answer = std::move(reply)](pb::Envelope e) {
      ringDoorbell(bell);
      answer(std::move(e));
    };
  }
  ObjectDescriptor from;
  ObjectDescriptor to;
  if (Status st = poolsOf(op, from, to); !st.isOk()) {
    reply(errorEnvelope(st));
    return;
  }
  const bool fromHere = from.node == node_;
  const bool toHere = to.node == node_;
  auto fail = [&reply](const Status& st) { reply(errorEnvelope(st)); };
  if (fromHere && toHere) {
    auto src = rma_->region(from, false);
    if (!src.has_value()) return fail(src.error());
    auto dst = rma_->region(to, false);
    if (!dst.has_value()) return fail(dst.error());
    auto s = (*src)->bytes(op.from().allocation(), op.from().offset(), op.length());
    if (!s.has_value()) return fail(s.error());
    auto d = (*dst)->bytes(op.to().allocation(), op.to().offset(), op.length());
    if (!d.has_value()) return fail(d.error());
    auto copy = std::make_shared<LocalCopy>();
    copy->keepFrom = *src;
    copy->keepTo = *dst;
    copy->from = *s;
    copy->to = *d;
    copy->length = op.length();
    // Overlapping with the destination after the source: the last step first, as memmove.
    copy->backward = *d > *s && *d < *s + op.length();
    copy->answer = [reply = std::move(reply)] { reply(okEnvelope()); };
    copyStep(loop_, std::move(copy));
    return;
  }
  if (!fromHere && !toHere) {
    return fail(Status(StatusCode::InvalidArgument,
                       "one side of a memory transfer must be a pool of this node (node " +
                           std::to_string(node_) + "); " + from.toString() + " and " +
                           to.toString() + " are not"));
  }
  const ObjectDescriptor& mine = fromHere ? from : to;
  const pb::MemoryRange& mineRange = fromHere ? op.from() : op.to();
  const std::uint32_t home = fromHere ? to.node : from.node;
  if (cluster_ == nullptr || !cluster_->joined() || !cluster_->known(home)) {
    return fail(Status(StatusCode::NotFound, "pool " + (fromHere ? to : from).toString() +
                                                 " names node " + std::to_string(home) +
                                                 ", which is not in this job"));
  }
  auto region = rma_->region(mine, true);
  if (!region.has_value()) return fail(region.error());
  auto bytes = (*region)->bytes(mineRange.allocation(), mineRange.offset(), op.length());
  if (!bytes.has_value()) return fail(bytes.error());
  pb::Envelope fwd;
  pb::MemoryOp* out = fwd.mutable_memory_op();
  *out = op;
  out->set_peer_address(reinterpret_cast<std::uint64_t>(*bytes));
  out->set_peer_key((*region)->key);
  out->clear_doorbell();
  // The region stays mapped (and registered) until the home node has answered.
  cluster_->forward(home, std::move(fwd),
                    [reply = std::move(reply), keep = *region](Result<pb::Envelope> r) {
                      reply(fromPeer(std::move(r)));
                    });
}

void Server::peerMemoryOp(std::uint32_t requester, const pb::MemoryOp& op, Reply reply) {
  ObjectDescriptor from;
  ObjectDescriptor to;
  if (Status st = poolsOf(op, from, to); !st.isOk()) {
    reply(errorEnvelope(st));
    return;
  }
  // A put of the requester's bytes into a pool here is a Get from the requester; a get of
  // bytes here is a Put to it.
  transport::RmaKind kind;
  const ObjectDescriptor* mine = nullptr;
  const pb::MemoryRange* mineRange = nullptr;
  if (to.node == node_ && from.node == requester) {
    kind = transport::RmaKind::Get;
    mine = &to;
    mineRange = &op.to();
  } else if (from.node == node_ && to.node == requester) {
    kind = transport::RmaKind::Put;
    mine = &from;
    mineRange = &op.from();
  } else {
    reply(errorEnvelope(Status(StatusCode::InvalidArgument,
                               "a memory transfer forwarded by node " + std::to_string(requester) +
                                   " must be between its pool and one of node " +
                                   std::to_string(node_))));
    return;
  }
  if (op.peer_key().empty()) {
    reply(errorEnvelope(Status(StatusCode::InvalidArgument, "a forwarded memory transfer without a key")));
    return;
  }
  auto region = rma_->region(*mine, true);
  if (!region.has_value()) {
    reply(errorEnvelope(region.error()));
    return;
  }
  auto bytes = (*region)->bytes(mineRange->allocation(), mineRange->offset(), op.length());
  if (!bytes.has_value()) {
    reply(errorEnvelope(bytes.error()));
    return;
  }
  Status st = cluster_->rma(requester, kind, *bytes, op.length(), op.peer_address(), op.peer_key(),
                            [reply, keep = *region](Status done) {
                              reply(done.isOk() ? okEnvelope() : errorEnvelope(done));
                            });
  if (!st.isOk()) reply(errorEnvelope(st));
}

}  // namespace dragon::daemon
