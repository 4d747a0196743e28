// SPDX-License-Identifier: MIT
// The daemon group: dragond's spawn+reap rate against posix_spawn+waitpid done directly, and a
// control request's round trip against a bare Unix-socket ping-pong, all in one run; and the
// longest a control request waits while a large message crosses dragond in parts, as it does
// for a process of another node (its ChannelOps spoken by hand, support/raw_connection.hpp).
// Prints "metric <name> <value> <unit>" lines for bench/goals.py.
#include <dragon/client.hpp>

#include "support/raw_connection.hpp"

#include <algorithm>
#include <atomic>
#include <thread>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void metric(const char* name, double value, const char* unit) {
  std::printf("metric %s %.6g %s\n", name, value, unit);
  std::fflush(stdout);
}

constexpr int kSpawns = 400;
constexpr int kPings = 20000;

double directSpawnRate() {
  char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  const auto t0 = Clock::now();
  for (int i = 0; i < kSpawns; ++i) {
    pid_t pid;
    if (posix_spawn(&pid, argv[0], &fa, nullptr, argv, environ) != 0) std::abort();
    int st;
    waitpid(pid, &st, 0);
  }
  const double s = secondsSince(t0);
  posix_spawn_file_actions_destroy(&fa);
  return kSpawns / s;
}

double dragondSpawnRate(dragon::Client& c) {
  dragon::SpawnOptions o;
  o.argv = {"/bin/true"};
  o.stdoutMode = dragon::Stdio::Null;
  o.stderrMode = dragon::Stdio::Null;
  const auto t0 = Clock::now();
  for (int i = 0; i < kSpawns; ++i) {
    auto r = c.spawn(o);
    if (!r.has_value()) std::abort();
    auto w = c.wait({r->front().puid});
    if (!w.has_value() || w->front().exitCode != 0) std::abort();
  }
  return kSpawns / secondsSince(t0);
}

// A bare ping-pong over a Unix stream socket between two processes, `bytes` each way.
double bareSocketRttUs(std::size_t bytes) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  pid_t child = fork();
  if (child == 0) {
    close(sv[0]);
    std::vector<char> buf(bytes);
    for (;;) {
      std::size_t got = 0;
      while (got < bytes) {
        const ssize_t n = read(sv[1], buf.data() + got, bytes - got);
        if (n <= 0) _exit(0);
        got += static_cast<std::size_t>(n);
      }
      if (write(sv[1], buf.data(), bytes) != static_cast<ssize_t>(bytes)) _exit(1);
    }
  }
  close(sv[1]);
  std::vector<char> buf(bytes, 'x');
  const auto t0 = Clock::now();
  for (int i = 0; i < kPings; ++i) {
    if (write(sv[0], buf.data(), bytes) != static_cast<ssize_t>(bytes)) std::abort();
    std::size_t got = 0;
    while (got < bytes) {
      const ssize_t n = read(sv[0], buf.data() + got, bytes - got);
      if (n <= 0) std::abort();
      got += static_cast<std::size_t>(n);
    }
  }
  const double us = secondsSince(t0) * 1e6 / kPings;
  close(sv[0]);
  int st;
  waitpid(child, &st, 0);
  return us;
}

double controlRttUs(dragon::Client& c) {
  const auto t0 = Clock::now();
  for (int i = 0; i < kPings; ++i) {
    auto d = c.lookupName("bench");
    if (!d.has_value()) std::abort();
  }
  return secondsSince(t0) * 1e6 / kPings;
}

namespace pb = dragon::protocol;

pb::Envelope channelOp(const dragon::ObjectDescriptor& ch, pb::ChannelOp::Kind kind) {
  pb::Envelope e;
  *e.mutable_channel_op()->mutable_channel() = pb::toRef(ch);
  e.mutable_channel_op()->set_kind(kind);
  return e;
}

bool answered(dragon::testing::RawConnection& raw, pb::Envelope e, pb::Envelope* out = nullptr) {
  auto r = raw.reply(raw.post(std::move(e)), std::chrono::seconds(60));
  if (!r.has_value() || r->has_error() || r->channel_op_reply().retry_after_ns() != 0) {
    return false;  // refused, or "later" (a send the home would not hold)
  }
  if (out != nullptr) *out = std::move(*r);
  return true;
}

// The longest control round trip (us) of another client while a message of `bytes` crosses
// dragond in parts, as for a process of another node: received (`receive`), or sent.
double longestAnswerUs(dragon::Client& c, const std::string& socket, std::size_t bytes,
                       bool receive) {
  auto pool = c.createPool(bytes + (std::size_t{64} << 20), {}, /*lazy=*/true);
  if (!pool.has_value()) std::abort();
  auto ch = c.createChannel((*pool)->descriptor(), {});
  if (!ch.has_value()) std::abort();
  const dragon::ObjectDescriptor d = (*ch)->descriptor();
  const std::string payload(bytes, 'm');
  if (receive && !(*ch)->send(std::as_bytes(std::span(payload.data(), bytes))).isOk()) {
    std::abort();
  }
  dragon::Client::Options o;
  o.socketPath = socket;
  auto other = dragon::Client::connect(o);
  if (!other.has_value()) std::abort();
  std::atomic<bool> stop{false};
  double longest = 0;
  std::thread asker([&] {
    while (!stop.load()) {
      const auto t0 = Clock::now();
      if (!other->lookupName("bench").has_value()) std::abort();
      longest = std::max(longest, secondsSince(t0) * 1e6);
    }
  });
  dragon::testing::RawConnection raw;
  if (!raw.open(socket, std::chrono::seconds(10))) std::abort();
  const std::size_t part = dragon::kMaxMessageAcrossNodes;
  bool ok = true;
  if (receive) {
    pb::Envelope take = channelOp(d, pb::ChannelOp::RECV);
    take.mutable_channel_op()->set_parts(true);
    pb::Envelope r;
    ok = answered(raw, std::move(take), &r);
    std::size_t got = r.channel_op_reply().data().size();
    while (ok && got < bytes) {
      pb::Envelope more = channelOp(d, pb::ChannelOp::RECV_PART);
      more.mutable_channel_op()->set_transfer(r.channel_op_reply().transfer());
      more.mutable_channel_op()->set_part_offset(got);
      pb::Envelope m;
      ok = answered(raw, std::move(more), &m) && !m.channel_op_reply().data().empty();
      got += m.channel_op_reply().data().size();
    }
  } else {
    for (std::size_t at = 0; ok && at < bytes; at += part) {
      const bool last = at + part >= bytes;
      pb::Envelope e = channelOp(d, last ? pb::ChannelOp::SEND : pb::ChannelOp::SEND_PART);
      e.mutable_channel_op()->set_transfer(1);
      e.mutable_channel_op()->set_part_offset(at);
      e.mutable_channel_op()->set_total_size(bytes);
      e.mutable_channel_op()->set_data(payload.substr(at, part));
      ok = answered(raw, std::move(e));
    }
  }
  stop = true;
  asker.join();
  if (!ok) {
    std::fprintf(stderr, "bench_daemon: a message in parts was refused\n");
    std::exit(1);
  }
  (void)c.destroy(d);
  (void)c.destroy((*pool)->descriptor());
  return longest;
}

pid_t startDragond(const std::string& socket) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) std::abort();
  pid_t pid = fork();
  if (pid == 0) {
    fcntl(ready[1], F_SETFD, 0);
    const std::string fd = std::to_string(ready[1]);
    execl(DRAGOND_PATH, DRAGOND_PATH, "--standalone", "--allow-root", "--socket", socket.c_str(),
          "--ready-fd", fd.c_str(), "--set", "pool.default_size=1MiB",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(ready[1]);
  pollfd p{ready[0], POLLIN, 0};
  char buf[8];
  if (poll(&p, 1, 30'000) != 1 || read(ready[0], buf, 5) != 5) {
    std::fprintf(stderr, "bench_daemon: dragond did not start\n");
    std::exit(1);
  }
  close(ready[0]);
  return pid;
}

}  // namespace

int main() {
  char dir[] = "/tmp/dragon-bench-XXXXXX";
  if (mkdtemp(dir) == nullptr) return 1;
  const std::string socket = std::string(dir) + "/dragond.sock";
  const pid_t daemon = startDragond(socket);
  dragon::Client::Options o;
  o.socketPath = socket;
  auto c = dragon::Client::connect(o);
  if (!c.has_value()) {
    std::fprintf(stderr, "bench_daemon: %s\n", c.error().toString().c_str());
    return 1;
  }
  auto pool = c->createPool(1 << 20, "bench");
  if (!pool.has_value()) return 1;

  // About the size of a LookupName request frame (its reply is ~60 bytes).
  const std::size_t frame = 32;
  // Alternate the measurements so that drift in the machine's load hits both alike.
  double direct = 0, viaDragond = 0, bare = 0, control = 0;
  for (int round = 0; round < 3; ++round) {
    direct = std::max(direct, directSpawnRate());
    viaDragond = std::max(viaDragond, dragondSpawnRate(*c));
    bare = round == 0 ? bareSocketRttUs(frame) : std::min(bare, bareSocketRttUs(frame));
    control = round == 0 ? controlRttUs(*c) : std::min(control, controlRttUs(*c));
  }
  metric("spawn_direct_rate", direct, "proc/s");
  metric("spawn_dragond_rate", viaDragond, "proc/s");
  metric("unix_socket_rtt", bare, "us");
  metric("control_rtt", control, "us");
  // The median of 3 of the longest wait during each transfer.
  constexpr std::size_t kLarge = std::size_t{200} << 20;
  std::vector<double> recvs, sends;
  for (int round = 0; round < 3; ++round) {
    recvs.push_back(longestAnswerUs(*c, socket, kLarge, true));
    sends.push_back(longestAnswerUs(*c, socket, kLarge, false));
  }
  std::sort(recvs.begin(), recvs.end());
  std::sort(sends.begin(), sends.end());
  metric("control_rtt_longest_during_200MiB_recv_in_parts", recvs[1], "us");
  metric("control_rtt_longest_during_200MiB_send_in_parts", sends[1], "us");

  pool = dragon::Status(dragon::StatusCode::NotFound);
  c = dragon::Status(dragon::StatusCode::PeerLost);
  kill(daemon, SIGTERM);
  int st;
  waitpid(daemon, &st, 0);
  rmdir(dir);
  return 0;
}
