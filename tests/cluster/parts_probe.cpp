// SPDX-License-Identifier: MIT
// The job program of t_dragon_parts_left.sh: a process of another node that leaves in the
// middle of a message in parts (a send after its first part, a receive after its first part)
// has what the channel's home kept of that message dropped at once, through its own dragond
// (ChannelOp CANCEL between dragonds), not after the home's minute of idleness: the parts of
// a send kept in the home's memory (its channel's pool had no room), the block of the pool a
// send is assembled in, the block of a message taken in parts. The leaving processes speak the
// protocol by hand (support/raw_connection.hpp): the client library never stops between two
// parts.
//
//   parts_probe head NODE      on node 0: the whole test, its helpers placed on NODE
//   parts_probe leave-send CH  begins a send in parts to CH and ends
//   parts_probe send-after CH  begins one that only fits once the first one's parts are gone
//   parts_probe stop-send CH REP   begins a send in parts to CH, says so on REP and waits to
//                              be killed
//   parts_probe leave-recv CH REP  takes the first part of CH's message, says so on REP and
//                              waits to be killed
#include <dragon/client.hpp>

#include "support/raw_connection.hpp"

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using dragon::Client;
using dragon::ObjectDescriptor;
using dragon::StatusCode;
using dragon::Timeout;
namespace pb = dragon::protocol;

// What a home keeps of unfinished sends at most (PartStore::kMaxKeptSendBytes): two sends of
// over half of it do not fit at once.
constexpr std::uint64_t kKeptLimit = std::uint64_t{4} << 30;
constexpr std::uint64_t kSendTotal = kKeptLimit / 2 + 1;
constexpr std::size_t kReceived = std::size_t{64} << 20;

int failWith(const std::string& what) {
  std::printf("probe: FAIL %s\n", what.c_str());
  std::fflush(stdout);
  return 1;
}

StatusCode codeOf(const pb::Envelope& e) {
  return e.has_error() ? static_cast<StatusCode>(e.error().code()) : StatusCode::Ok;
}

std::string selfPath() {
  char exe[4096] = {};
  return readlink("/proc/self/exe", exe, sizeof exe - 1) < 0 ? std::string() : std::string(exe);
}

// The first part of a send in parts of kSendTotal bytes to `ch`, as transfer `transfer`.
pb::Envelope firstPart(const ObjectDescriptor& ch, std::uint64_t transfer) {
  pb::Envelope e;
  auto* o = e.mutable_channel_op();
  *o->mutable_channel() = pb::toRef(ch);
  o->set_kind(pb::ChannelOp::SEND_PART);
  o->set_transfer(transfer);
  o->set_part_offset(0);
  o->set_total_size(kSendTotal);
  o->set_data("x");
  return e;
}

// Starts this program with `args` (its mode first) on `node`: its puid, or 0 (said why).
std::uint64_t startOn(Client& c, std::uint32_t node, const std::vector<std::string>& args) {
  std::printf("probe: %s on node %u\n", args.front().c_str(), node);
  std::fflush(stdout);
  dragon::SpawnOptions so;
  so.argv = {selfPath()};
  so.argv.insert(so.argv.end(), args.begin(), args.end());
  so.placement = dragon::Placement::onNode(node);
  auto p = c.spawn(so);
  if (!p) {
    failWith(args.front() + ": spawn: " + p.error().toString());
    return 0;
  }
  return p->front().puid;
}

// Runs this program with `args` (its mode first) on `node`, and gives its exit code.
int runOn(Client& c, std::uint32_t node, const std::vector<std::string>& args) {
  const std::uint64_t puid = startOn(c, node, args);
  if (puid == 0) return 1;
  auto e = c.wait({puid}, Timeout::after(60s));
  if (!e) return failWith(args.front() + ": wait: " + e.error().toString());
  return e->front().shellCode();
}

// Runs this program with `args` (its mode first) on `node` until it says something on `rep`,
// then kills it. `check` (run while it waits) and `gone` (polled after it ended, for up to 10 s:
// there is no event to wait for) say what is wrong, or nothing.
int stopMidway(Client& c, std::uint32_t node, const std::vector<std::string>& args,
               dragon::ClientChannel& rep, const std::function<std::string()>& check,
               const std::function<std::string()>& gone) {
  const std::string& mode = args.front();
  const std::uint64_t puid = startOn(c, node, args);
  if (puid == 0) return 1;
  auto said = rep.recvBytes(Timeout::after(60s));
  std::string wrong = said ? check() : mode + " said nothing: " + said.error().toString();
  (void)c.signal({puid}, SIGKILL);
  auto e = c.wait({puid}, Timeout::after(60s));
  if (!wrong.empty()) return failWith(wrong);
  if (!e || e->front().signal != SIGKILL) return failWith(mode + " did not end by SIGKILL");
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!(wrong = gone()).empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  return wrong.empty() ? 0 : failWith(wrong);
}

int head(Client& c, std::uint32_t node) {
  auto pool = c.createPool(kSendTotal + (std::size_t{64} << 20), {}, /*lazy=*/true);
  if (!pool) return failWith("pool: " + pool.error().toString());
  auto ch = c.createChannel((*pool)->descriptor(), {});
  auto rep = c.createChannel((*pool)->descriptor(), {});
  if (!ch || !rep) return failWith("channels");
  const ObjectDescriptor d = (*ch)->descriptor();
  const std::string repName = (*rep)->descriptor().toString();
  auto used = [&]() -> std::int64_t {
    auto st = (*pool)->stats();
    return st ? static_cast<std::int64_t>(st->usedBytes) : -1;
  };
  const std::int64_t idle = used();

  // With no room in the pool, the home keeps the parts in its own memory (at most 4 GiB).
  auto full = (*pool)->alloc(kSendTotal);
  if (!full) return failWith("filling the pool: " + full.error().toString());
  if (runOn(c, node, {"leave-send", d.toString()}) != 0) return failWith("leave-send");
  if (runOn(c, node, {"send-after", d.toString()}) != 0) return failWith("send-after");
  if (!(*pool)->free(*full).isOk()) return failWith("freeing the pool");

  // With room, a send is assembled in a block of the pool from its first part.
  const auto sendBlock = [&]() -> std::string {
    return used() >= idle + static_cast<std::int64_t>(kSendTotal)
               ? ""
               : "no block of the pool holds the send: " + std::to_string(used()) + " bytes used";
  };
  const auto blockGone = [&]() -> std::string {
    return used() <= idle ? "" : "the block of a send whose sender ended is still held: " +
                                     std::to_string(used()) + " bytes of the pool used";
  };
  if (stopMidway(c, node, {"stop-send", d.toString(), repName}, **rep, sendBlock, blockGone) !=
      0) {
    return 1;
  }

  // A receive in parts whose receiver is killed after its first part.
  if (!(*ch)->send(std::vector<std::byte>(kReceived, std::byte{5})).isOk()) {
    return failWith("the message to receive");
  }
  const std::int64_t holding = used();
  const auto received = [&]() -> std::string {
    return (*ch)->channel().size() == 0 && used() == holding
               ? ""
               : "the message left its channel or its block: " + std::to_string(used()) +
                     " bytes of the pool used, " + std::to_string(holding) + " before";
  };
  const auto messageGone = [&]() -> std::string {
    return used() <= holding - static_cast<std::int64_t>(kReceived)
               ? ""
               : "the home still holds the message: the pool's use went from " +
                     std::to_string(holding) + " to " + std::to_string(used()) + " bytes only";
  };
  if (stopMidway(c, node, {"leave-recv", d.toString(), repName}, **rep, received, messageGone) !=
      0) {
    return 1;
  }
  std::printf("probe: ok parts left: a send's parts (kept in memory, or in a block of the "
              "pool) and a receive's rest dropped at the home (node 0) when their process of "
              "node %u ended\n",
              node);
  return 0;
}

int leaveSend(const ObjectDescriptor& ch) {
  dragon::testing::RawConnection raw;
  if (!raw.open(dragon::defaultSocketPath(), 10s)) return failWith("leave-send: connect");
  auto r = raw.reply(raw.post(firstPart(ch, 1)), 30s);
  if (!r || codeOf(*r) != StatusCode::Ok) {
    return failWith("leave-send: " + (r ? r->DebugString() : std::string("no answer")));
  }
  return 0;  // and ends between two parts
}

int sendAfter(const ObjectDescriptor& ch) {
  dragon::testing::RawConnection raw;
  if (!raw.open(dragon::defaultSocketPath(), 10s)) return failWith("send-after: connect");
  // The first sender's end reached the home a moment ago, or is about to: bounded tries.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  for (std::uint64_t t = 1; std::chrono::steady_clock::now() < deadline; ++t) {
    auto r = raw.reply(raw.post(firstPart(ch, t)), 30s);
    if (!r) return failWith("send-after: no answer");
    if (codeOf(*r) == StatusCode::Ok) return 0;
    if (codeOf(*r) != StatusCode::PoolExhausted) return failWith("send-after: " + r->DebugString());
  }
  return failWith("send-after: the parts of the sender that ended still hold their room");
}

int stopSend(Client& c, const ObjectDescriptor& ch, const ObjectDescriptor& repDesc) {
  auto rep = c.attachChannel(repDesc);
  if (!rep) return failWith("stop-send: attach: " + rep.error().toString());
  dragon::testing::RawConnection raw;
  if (!raw.open(dragon::defaultSocketPath(), 10s)) return failWith("stop-send: connect");
  auto r = raw.reply(raw.post(firstPart(ch, 1)), 30s);
  if (!r || codeOf(*r) != StatusCode::Ok) {
    return failWith("stop-send: " + (r ? r->DebugString() : std::string("no answer")));
  }
  const std::string sent = "sent";
  if (!(*rep)->send(std::as_bytes(std::span(sent.data(), sent.size()))).isOk()) {
    return failWith("stop-send: rep");
  }
  pause();  // killed here, before its other parts
  return 0;
}

int leaveRecv(Client& c, const ObjectDescriptor& ch, const ObjectDescriptor& repDesc) {
  auto rep = c.attachChannel(repDesc);
  if (!rep) return failWith("leave-recv: attach: " + rep.error().toString());
  dragon::testing::RawConnection raw;
  if (!raw.open(dragon::defaultSocketPath(), 10s)) return failWith("leave-recv: connect");
  pb::Envelope e;
  auto* o = e.mutable_channel_op();
  *o->mutable_channel() = pb::toRef(ch);
  o->set_kind(pb::ChannelOp::RECV);
  o->set_timeout_ns(-1);
  o->set_parts(true);
  auto r = raw.reply(raw.post(e), 30s);
  if (!r || !r->has_channel_op_reply() || r->channel_op_reply().total_size() != kReceived) {
    return failWith("leave-recv: " + (r ? r->DebugString().substr(0, 300) : std::string("no answer")));
  }
  const std::string got = "got";
  if (!(*rep)->send(std::as_bytes(std::span(got.data(), got.size()))).isOk()) {
    return failWith("leave-recv: rep");
  }
  pause();  // killed here, before the rest
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    return failWith(
        "usage: parts_probe head NODE | leave-send|send-after CH | stop-send|leave-recv CH REP");
  }
  const std::string mode = argv[1];
  if (mode == "head" || mode == "leave-recv" || mode == "stop-send") {
    auto client = Client::connect();
    if (!client) return failWith("connect: " + client.error().toString());
    if (mode == "head") return head(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
    auto ch = ObjectDescriptor::fromString(argv[2]);
    auto rep = argc == 4 ? ObjectDescriptor::fromString(argv[3]) : ch;
    if (!ch || !rep || argc != 4) return failWith(mode + ": bad channels");
    return mode == "stop-send" ? stopSend(*client, *ch, *rep) : leaveRecv(*client, *ch, *rep);
  }
  auto ch = ObjectDescriptor::fromString(argv[2]);
  if (!ch) return failWith("bad channel " + std::string(argv[2]));
  if (mode == "leave-send") return leaveSend(*ch);
  if (mode == "send-after") return sendAfter(*ch);
  return failWith("unknown mode " + mode);
}
