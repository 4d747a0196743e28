// SPDX-License-Identifier: MIT
// The job program of t_dragon_parts_left.sh: a process of another node that leaves in the
// middle of a message in parts (a send after its first part, a receive after its first part)
// has what the channel's home kept of that message dropped at once, through its own dragond
// (ChannelOp CANCEL between dragonds), not after the home's minute of idleness. The leaving
// processes speak the protocol by hand (support/raw_connection.hpp): the client library never
// stops between two parts.
//
//   parts_probe head NODE      on node 0: the whole test, its helpers placed on NODE
//   parts_probe leave-send CH  begins a send in parts to CH and ends
//   parts_probe send-after CH  begins one that only fits once the first one's parts are gone
//   parts_probe leave-recv CH REP  takes the first part of CH's message, says so on REP and
//                              waits to be killed
#include <dragon/client.hpp>

#include "support/raw_connection.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
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

// A process's anonymous memory in bytes (RssAnon), or -1.
std::int64_t anonymousBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoll(line.substr(8)) * 1024;
  }
  return -1;
}

// The pid of this node's dragond: the peer of a connection to its socket.
pid_t dragondPid() {
  dragon::testing::RawConnection raw;
  if (!raw.open(dragon::defaultSocketPath(), 10s)) return -1;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(raw.fd(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
  return cred.pid;
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

// Runs this program with `args` (its mode first) on `node`, and gives its exit code.
int runOn(Client& c, std::uint32_t node, const std::vector<std::string>& args) {
  std::printf("probe: %s on node %u\n", args.front().c_str(), node);
  std::fflush(stdout);
  dragon::SpawnOptions so;
  so.argv = {selfPath()};
  so.argv.insert(so.argv.end(), args.begin(), args.end());
  so.placement = dragon::Placement::onNode(node);
  auto p = c.spawn(so);
  if (!p) return failWith(args.front() + ": spawn: " + p.error().toString());
  auto e = c.wait({p->front().puid}, Timeout::after(60s));
  if (!e) return failWith(args.front() + ": wait: " + e.error().toString());
  return e->front().shellCode();
}

int head(Client& c, std::uint32_t node) {
  auto pool = c.createPool(kSendTotal + (std::size_t{64} << 20), {}, /*lazy=*/true);
  if (!pool) return failWith("pool: " + pool.error().toString());
  auto ch = c.createChannel((*pool)->descriptor(), {});
  auto rep = c.createChannel((*pool)->descriptor(), {});
  if (!ch || !rep) return failWith("channels");
  const ObjectDescriptor d = (*ch)->descriptor();
  if (runOn(c, node, {"leave-send", d.toString()}) != 0) return failWith("leave-send");
  if (runOn(c, node, {"send-after", d.toString()}) != 0) return failWith("send-after");

  // A receive in parts whose receiver is killed after its first part.
  const pid_t dragond = dragondPid();
  if (anonymousBytes(dragond) < 0) return failWith("no RssAnon of this node's dragond");
  if (!(*ch)->send(std::vector<std::byte>(kReceived, std::byte{5})).isOk()) {
    return failWith("the message to receive");
  }
  std::printf("probe: leave-recv on node %u\n", node);
  std::fflush(stdout);
  dragon::SpawnOptions so;
  so.argv = {selfPath(), "leave-recv", d.toString(), (*rep)->descriptor().toString()};
  so.placement = dragon::Placement::onNode(node);
  auto receiver = c.spawn(so);
  if (!receiver) return failWith("leave-recv: spawn: " + receiver.error().toString());
  const std::uint64_t puid = receiver->front().puid;
  auto got = (*rep)->recvBytes(Timeout::after(60s));
  if (!got) return failWith("leave-recv said nothing: " + got.error().toString());
  // The home holds the message whole now (and its buffers of the first part's way).
  const std::int64_t holding = anonymousBytes(dragond);
  if (!c.signal({puid}, SIGKILL).isOk()) return failWith("leave-recv: signal");
  auto e = c.wait({puid}, Timeout::after(60s));
  if (!e || e->front().signal != SIGKILL) return failWith("leave-recv did not end by SIGKILL");
  // The message goes when the receiver's dragond says so (polled: there is no event to wait
  // for). Without that, dragond's memory stayed where it was for a minute.
  const std::int64_t dropped = holding - static_cast<std::int64_t>(kReceived) * 3 / 4;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  std::int64_t now = holding;
  while (now > dropped && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
    now = anonymousBytes(dragond);
  }
  if (now > dropped) {
    return failWith("the home still holds the message: dragond's memory went from " +
                    std::to_string(holding) + " to " + std::to_string(now) + " bytes only");
  }
  std::printf("probe: ok parts left: a send's first part and a receive's rest dropped at the "
              "home (node 0) when their process of node %u ended (%lld bytes of dragond's "
              "memory went)\n",
              node, static_cast<long long>(holding - now));
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
    return failWith("usage: parts_probe head NODE | leave-send|send-after CH | leave-recv CH REP");
  }
  const std::string mode = argv[1];
  if (mode == "head" || mode == "leave-recv") {
    auto client = Client::connect();
    if (!client) return failWith("connect: " + client.error().toString());
    if (mode == "head") return head(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
    auto ch = ObjectDescriptor::fromString(argv[2]);
    auto rep = argc == 4 ? ObjectDescriptor::fromString(argv[3]) : ch;
    if (!ch || !rep || argc != 4) return failWith("leave-recv: bad channels");
    return leaveRecv(*client, *ch, *rep);
  }
  auto ch = ObjectDescriptor::fromString(argv[2]);
  if (!ch) return failWith("bad channel " + std::string(argv[2]));
  if (mode == "leave-send") return leaveSend(*ch);
  if (mode == "send-after") return sendAfter(*ch);
  return failWith("unknown mode " + mode);
}
