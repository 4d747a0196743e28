// SPDX-License-Identifier: MIT
// The head program of the multi-node tests (tests/cluster/t_*.sh run it under
// `srun --mpi=pmix -N3 dragon -- cluster_probe MODE`). Each mode exercises one capability
// through the public C++ API and prints "probe: ok ..." or "probe: FAIL ..." (exit 1).
#include <dragon/client.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <memory>
#include <span>
#include <poll.h>
#include <unistd.h>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

using dragon::Client;
using dragon::Result;
using dragon::Placement;
using dragon::SpawnOptions;
using dragon::StatusCode;

int failWith(const std::string& what) {
  std::printf("probe: FAIL %s\n", what.c_str());
  std::fflush(stdout);
  return 1;
}

SpawnOptions shell(const std::string& script, Placement where) {
  SpawnOptions o;
  o.argv = {"/bin/sh", "-c", script};
  o.placement = where;
  return o;
}

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One process on every node, each exiting with its node id; their output comes back through
// every node's launcher.
int spawnAll(Client& c) {
  auto nodes = c.nodes();
  if (!nodes.has_value()) return failWith("nodes: " + nodes.error().toString());
  std::printf("probe: %zu nodes:", nodes->size());
  for (const auto& n : *nodes) std::printf(" %u=%s(%u cpus)", n.node, n.hostname.c_str(), n.cpus);
  std::printf("\n");
  std::fflush(stdout);
  std::vector<std::uint64_t> puids;
  for (const auto& n : *nodes) {
    auto p = c.spawn(shell("echo \"hello from $(hostname) node " + std::to_string(n.node) +
                               " socket ${DRAGON_SOCKET##*/}\"; exit " + std::to_string(n.node),
                           Placement::onNode(n.node)));
    if (!p.has_value()) return failWith("spawn on " + std::to_string(n.node) + ": " + p.error().toString());
    puids.push_back(p->front().puid);
  }
  auto exits = c.wait(puids, dragon::Timeout::after(std::chrono::seconds(30)));
  if (!exits.has_value()) return failWith("wait: " + exits.error().toString());
  for (std::size_t i = 0; i < nodes->size(); ++i) {
    if ((*exits)[i].exitCode != static_cast<int>((*nodes)[i].node)) {
      return failWith("process on node " + std::to_string((*nodes)[i].node) + " exited " +
                      std::to_string((*exits)[i].exitCode));
    }
  }
  auto bad = c.spawn(shell("true", Placement::onNode(1000)));
  if (bad.has_value() || bad.error().code() != StatusCode::NotFound) {
    return failWith("spawn on a node that does not exist was not NotFound");
  }
  std::printf("probe: ok spawn-all %zu nodes\n", nodes->size());
  return 0;
}

Result<std::vector<dragon::ProcessInfo>> spawnSelf(Client& c, std::vector<std::string> args,
                                                   std::uint32_t node);

// Long-running processes everywhere: ps lists them with their nodes, a signal reaches them,
// wait reports the signal.
int psAndSignal(Client& c) {
  auto nodes = c.nodes();
  if (!nodes.has_value()) return failWith("nodes: " + nodes.error().toString());
  std::vector<std::uint64_t> puids;
  for (const auto& n : *nodes) {
    auto p = c.spawn(shell("exec sleep 600", Placement::onNode(n.node)));
    if (!p.has_value()) return failWith("spawn: " + p.error().toString());
    puids.push_back(p->front().puid);
  }
  auto list = c.listProcesses();
  if (!list.has_value()) return failWith("ps: " + list.error().toString());
  std::set<std::uint32_t> seen;
  for (const auto& e : *list) {
    for (auto p : puids) {
      if (e.puid == p && e.running) seen.insert(e.node);
    }
  }
  if (seen.size() != nodes->size()) {
    return failWith("ps shows the sleepers on " + std::to_string(seen.size()) + " of " +
                    std::to_string(nodes->size()) + " nodes");
  }
  dragon::Status st = c.signal(puids, SIGTERM);
  if (!st.isOk()) return failWith("signal: " + st.toString());
  auto exits = c.wait(puids, dragon::Timeout::after(std::chrono::seconds(30)));
  if (!exits.has_value()) return failWith("wait: " + exits.error().toString());
  for (const auto& e : *exits) {
    if (e.signal != SIGTERM) return failWith("a sleeper ended without SIGTERM");
  }
  // The ends are in the job-wide table too.
  list = c.listProcesses();
  if (!list.has_value()) return failWith("ps: " + list.error().toString());
  std::size_t ended = 0;
  for (const auto& e : *list) {
    for (auto p : puids) {
      if (e.puid == p && !e.running && e.exit.signal == SIGTERM) ++ended;
    }
  }
  if (ended != puids.size()) return failWith("ps does not show every sleeper ended by SIGTERM");
  // From a process on another node than the head's (where global services are).
  if (nodes->size() >= 3) {
    const std::uint32_t from = (*nodes)[1].node;
    const std::uint32_t to = (*nodes)[2].node;
    auto third = spawnSelf(c, {"ps-third", std::to_string(to)}, from);
    if (!third.has_value()) return failWith("spawn ps-third: " + third.error().toString());
    auto done = c.wait({third->front().puid}, dragon::Timeout::after(std::chrono::seconds(60)));
    if (!done.has_value()) return failWith("wait ps-third: " + done.error().toString());
    if (done->front().exitCode != 0) return failWith("ps-third failed (its output is above)");
  }
  std::printf("probe: ok ps-signal %zu nodes\n", nodes->size());
  return 0;
}

// Run on node `from` (neither the head's node nor node `to`): the job-wide process table, kept
// by global services on the head's node, lists at once what this process just started on node
// `to`, and its end once a wait here has seen it.
int psThirdNode(Client& c, std::uint32_t to) {
  // Objects made here carry this node, in their descriptor and in their id's top bits.
  auto pool = c.createPool(1 << 20);
  if (!pool.has_value()) return failWith("pool: " + pool.error().toString());
  const auto pd = (*pool)->descriptor();
  if (c.node() == 0 || pd.node != c.node() || (pd.id >> 40) != pd.node) {
    return failWith("a pool of node " + std::to_string(c.node()) + " has descriptor " + pd.toString());
  }
  for (int round = 0; round < 20; ++round) {
    auto p = c.spawn(shell("exec sleep 600", Placement::onNode(to)));
    if (!p.has_value()) return failWith("spawn on " + std::to_string(to) + ": " + p.error().toString());
    const std::uint64_t puid = p->front().puid;
    auto state = [&](bool& found, bool& running, int& sig) -> dragon::Status {
      auto list = c.listProcesses();
      if (!list.has_value()) return list.error();
      found = false;
      for (const auto& e : *list) {
        if (e.puid != puid) continue;
        if (e.node != to) return dragon::Status(StatusCode::Internal, "listed on the wrong node");
        found = true;
        running = e.running;
        sig = e.exit.signal;
      }
      return dragon::Status::ok();
    };
    bool found = false;
    bool running = false;
    int sig = 0;
    dragon::Status st = state(found, running, sig);
    if (!st.isOk()) return failWith("ps: " + st.toString());
    if (!found || !running) return failWith("ps from a third node does not list a process just started");
    st = c.signal({puid}, SIGKILL);
    if (!st.isOk()) return failWith("signal: " + st.toString());
    auto exits = c.wait({puid}, dragon::Timeout::after(std::chrono::seconds(30)));
    if (!exits.has_value()) return failWith("wait: " + exits.error().toString());
    st = state(found, running, sig);
    if (!st.isOk()) return failWith("ps: " + st.toString());
    if (!found || running || sig != SIGKILL) {
      return failWith("ps from a third node does not show the end a wait there saw");
    }
  }
  std::printf("probe: ok ps from a third node\n");
  return 0;
}

// A process group that spans nodes: two processes started as a group on node 1, one joining it
// on node 2 and one here (the head's node); ps lists all four in it, one signal to the group
// ends all four, and joining a group that does not exist is NotFound.
int groups(Client& c) {
  auto nodes = c.nodes();
  if (!nodes.has_value()) return failWith("nodes: " + nodes.error().toString());
  if (nodes->size() < 3) return failWith("groups needs 3 nodes");
  auto sleeper = [](Placement where, std::uint64_t group, std::uint32_t count) {
    SpawnOptions o = shell("exec sleep 600", where);
    o.group = group;
    o.count = count;
    return o;
  };
  auto first = c.spawn(sleeper(Placement::onNode((*nodes)[1].node), 0, 2));
  if (!first.has_value() || first->size() != 2) return failWith("spawn the group on node 1");
  const std::uint64_t group = first->front().group;
  if (group == 0) return failWith("a spawn of 2 made no group");
  std::vector<std::uint64_t> puids{(*first)[0].puid, (*first)[1].puid};
  auto there = c.spawn(sleeper(Placement::onNode((*nodes)[2].node), group, 1));
  if (!there.has_value()) return failWith("join the group on node 2: " + there.error().toString());
  auto here = c.spawn(sleeper(Placement::thisNode(), group, 1));
  if (!here.has_value()) return failWith("join the group here: " + here.error().toString());
  puids.push_back(there->front().puid);
  puids.push_back(here->front().puid);
  auto list = c.listProcesses();
  if (!list.has_value()) return failWith("ps: " + list.error().toString());
  std::set<std::uint32_t> groupNodes;
  std::size_t inGroup = 0;
  for (const auto& e : *list) {
    if (e.group == group && e.running) {
      ++inGroup;
      groupNodes.insert(e.node);
    }
  }
  if (inGroup != 4 || groupNodes.size() != 3) {
    return failWith("ps shows " + std::to_string(inGroup) + " members of the group on " +
                    std::to_string(groupNodes.size()) + " nodes, not 4 on 3");
  }
  dragon::Status st = c.signalGroup(group, SIGTERM);
  if (!st.isOk()) return failWith("signalGroup: " + st.toString());
  auto exits = c.wait(puids, dragon::Timeout::after(std::chrono::seconds(30)));
  if (!exits.has_value()) return failWith("wait: " + exits.error().toString());
  for (const auto& e : *exits) {
    if (e.signal != SIGTERM) return failWith("a member ended without SIGTERM");
  }
  const std::uint64_t missing = (std::uint64_t{(*nodes)[2].node} << 40) + 999999;
  auto bad = c.spawn(sleeper(Placement::onNode((*nodes)[1].node), missing, 1));
  if (bad.has_value() || bad.error().code() != StatusCode::NotFound) {
    return failWith("joining a group that does not exist was not NotFound");
  }
  st = c.signalGroup(missing, SIGTERM);
  if (st.code() != StatusCode::NotFound) return failWith("signalling a group that does not exist was not NotFound");
  std::printf("probe: ok a group over 3 nodes\n");
  return 0;
}

// Round-robin placement visits every node in turn.
int roundRobin(Client& c, int count) {
  auto nodes = c.nodes();
  if (!nodes.has_value()) return failWith("nodes: " + nodes.error().toString());
  std::vector<std::uint64_t> puids;
  std::map<std::uint32_t, int> perNode;
  for (int i = 0; i < count; ++i) {
    auto p = c.spawn(shell("true", Placement::roundRobin()));
    if (!p.has_value()) return failWith("spawn: " + p.error().toString());
    puids.push_back(p->front().puid);
    ++perNode[static_cast<std::uint32_t>(p->front().puid >> 40)];
  }
  auto exits = c.wait(puids, dragon::Timeout::after(std::chrono::seconds(60)));
  if (!exits.has_value()) return failWith("wait: " + exits.error().toString());
  // Each node's share follows the CPUs the job was granted there (within one process).
  std::uint32_t cpus = 0;
  for (const auto& n : *nodes) cpus += std::max<std::uint32_t>(n.cpus, 1);
  std::string shares;
  for (const auto& n : *nodes) {
    const double want = static_cast<double>(count) * std::max<std::uint32_t>(n.cpus, 1) / cpus;
    shares += " " + std::to_string(n.node) + ":" + std::to_string(perNode[n.node]);
    if (perNode[n.node] < want - 1 || perNode[n.node] > want + 1) {
      return failWith("node " + std::to_string(n.node) + " (" + std::to_string(n.cpus) +
                      " cpus) got " + std::to_string(perNode[n.node]) + " of " +
                      std::to_string(count));
    }
  }
  std::printf("probe: ok round-robin %d over %zu nodes,%s\n", count, nodes->size(), shares.c_str());
  return 0;
}

// A sleeper on `node`; the test kills that node's dragond; the wait must end with NodeLost
// (not hang). Prints the time it took from the moment the sleeper was running.
int waitLost(Client& c, std::uint32_t node) {
  auto p = c.spawn(shell("exec sleep 600", Placement::onNode(node)));
  if (!p.has_value()) return failWith("spawn: " + p.error().toString());
  std::printf("probe: sleeper %llu running on node %u\n",
              static_cast<unsigned long long>(p->front().puid), node);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  auto exits = c.wait({p->front().puid}, dragon::Timeout::after(std::chrono::seconds(60)));
  if (exits.has_value()) return failWith("the wait returned an exit, not NodeLost");
  if (exits.error().code() != StatusCode::NodeLost) {
    return failWith("the wait failed with " + exits.error().toString() + ", not NodeLost");
  }
  std::printf("probe: ok wait-lost after %.2f s: %s\n", secondsSince(t0),
              exits.error().toString().c_str());
  std::fflush(stdout);
  return 3;  // the job goes on failing: the launcher must still say which node was lost
}

// Spawn + reap of /bin/true on `node`, one at a time, for `seconds`: prints the rate.
int spawnRate(Client& c, std::uint32_t node, double seconds) {
  SpawnOptions o;
  o.argv = {"/bin/true"};
  o.stdoutMode = dragon::Stdio::Null;
  o.stderrMode = dragon::Stdio::Null;
  o.placement = Placement::onNode(node);
  const auto t0 = std::chrono::steady_clock::now();
  int n = 0;
  while (secondsSince(t0) < seconds) {
    auto p = c.spawn(o);
    if (!p.has_value()) return failWith("spawn: " + p.error().toString());
    auto e = c.wait({p->front().puid}, dragon::Timeout::after(std::chrono::seconds(30)));
    if (!e.has_value()) return failWith("wait: " + e.error().toString());
    ++n;
  }
  std::printf("probe: spawn-rate node %u %.1f per s\n", node, n / secondsSince(t0));
  return 0;
}

// --- Remote channels ---

using dragon::ClientChannel;
using dragon::Timeout;
using dragon::WaitFor;
using namespace std::chrono_literals;

std::span<const std::byte> bytesOf(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}
std::string textOf(const std::vector<std::byte>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size());
}

// This program's own path (to start a copy of it on another node).
std::string selfPath() {
  char link[64];
  std::snprintf(link, sizeof link, "/proc/%d/exe", static_cast<int>(getpid()));
  char exe[4096] = {};
  return readlink(link, exe, sizeof exe - 1) < 0 ? std::string() : std::string(exe);
}

// Starts a copy of this program on `node` with `args` (its mode first).
Result<std::vector<dragon::ProcessInfo>> spawnSelf(Client& c, std::vector<std::string> args,
                                                   std::uint32_t node) {
  SpawnOptions so;
  so.argv = {selfPath()};
  so.argv.insert(so.argv.end(), args.begin(), args.end());
  so.placement = Placement::onNode(node);
  return c.spawn(so);
}

// The next message of `ch` read as a descriptor, attached.
Result<std::unique_ptr<ClientChannel>> attachSent(Client& c, ClientChannel& ch, Timeout t) {
  auto m = ch.recvBytes(t);
  if (!m) return m.error();
  auto d = dragon::ObjectDescriptor::fromString(textOf(*m));
  if (!d) return d.error();
  return c.attachChannel(*d);
}

// The process on another node: attaches the head's channels REQ and REP (remote to it),
// creates P and Q on its own node and sends their descriptors back on REP; then forwards every
// message of P to REP until "stop", then waits (a remote blocking recv) for one message on
// REQ and answers "bye:" + it on REP.
int channelEcho(Client& c, const std::string& reqText, const std::string& repText) {
  auto reqDesc = dragon::ObjectDescriptor::fromString(reqText);
  auto repDesc = dragon::ObjectDescriptor::fromString(repText);
  if (!reqDesc || !repDesc) return failWith("echo: bad descriptors");
  auto req = c.attachChannel(*reqDesc);
  auto rep = c.attachChannel(*repDesc);
  if (!req || !rep) return failWith("echo: attach: " + (req ? rep.error() : req.error()).toString());
  if (!(*req)->isRemote() || !(*rep)->isRemote()) return failWith("echo: the head's channels are not remote here");
  auto pool = c.createPool(std::size_t{64} << 20);
  if (!pool) return failWith("echo: pool: " + pool.error().toString());
  dragon::ChannelOptions po;
  po.capacity = 4;
  auto p = c.createChannel((*pool)->descriptor(), po);
  po.capacity = 2;
  po.inlineSize = 64;
  po.maxMessageSize = 64;
  auto q = c.createChannel((*pool)->descriptor(), po);
  auto last = c.createChannel((*pool)->descriptor(), {});
  if (!p || !q || !last) return failWith("echo: channels");
  for (const auto* ch : {&*p, &*q, &*last}) {
    dragon::Status st = (*rep)->send(bytesOf((**ch).descriptor().toString()));
    if (!st.isOk()) return failWith("echo: send descriptor: " + st.toString());
  }
  for (;;) {
    auto m = (*p)->recvBytes();
    if (!m) return failWith("echo: recv: " + m.error().toString());
    if (textOf(*m) == "stop") break;
    dragon::Status st = (*rep)->send(*m);
    if (!st.isOk()) return failWith("echo: forward: " + st.toString());
  }
  auto final = (*req)->recvBytes();
  if (!final) return failWith("echo: remote recv: " + final.error().toString());
  dragon::Status st = (*last)->send(bytesOf("bye:" + textOf(*final)));
  if (!st.isOk()) return failWith("echo: bye: " + st.toString());
  // Until the head has read it (the channel goes with this process's references).
  auto gone = (*req)->recvBytes(Timeout::after(30s));
  return gone ? 0 : failWith("echo: no goodbye: " + gone.error().toString());
}

// The head: a channel on another node behaves as a local one (FIFO, exactly once, try,
// deadline, poll, MessageTooLarge, close), both ways, with large messages too.
int channels(Client& c, std::uint32_t node) {
  auto pool = c.createPool(std::size_t{64} << 20);
  if (!pool) return failWith("pool: " + pool.error().toString());
  dragon::ChannelOptions o;
  o.capacity = 4;
  auto req = c.createChannel((*pool)->descriptor(), o);
  o.capacity = 1024;
  auto rep = c.createChannel((*pool)->descriptor(), o);
  if (!req || !rep) return failWith("channels: " + (req ? rep.error() : req.error()).toString());
  auto echo = spawnSelf(c, {"channel-echo", (*req)->descriptor().toString(),
                           (*rep)->descriptor().toString()}, node);
  if (!echo) return failWith("spawn echo: " + echo.error().toString());
  const auto deadline = Timeout::after(30s);
  std::unique_ptr<ClientChannel> pq[3];
  for (auto& ch : pq) {
    auto a = attachSent(c, **rep, deadline);
    if (!a) return failWith("a channel of the echo: " + a.error().toString());
    if (!(*a)->isRemote() || (*a)->descriptor().node != node) {
      return failWith("a channel of node " + std::to_string(node) + " is not remote here");
    }
    ch = std::move(*a);
  }
  ClientChannel& p = *pq[0];
  ClientChannel& q = *pq[1];
  ClientChannel& last = *pq[2];
  auto mine = c.createChannel((*pool)->descriptor(), {});  // a local one nobody sends to
  if (!mine) return failWith("local channel: " + mine.error().toString());
  if (p.capacity() != 4 || q.maxMessageSize() != 64) return failWith("remote channel facts");

  // waitAny over a local and a remote channel: the deadline, then a remote one ready.
  dragon::ClientWaitItem both[2] = {{mine->get(), WaitFor::Readable, {}}, {&q, WaitFor::Readable, {}}};
  auto t1 = std::chrono::steady_clock::now();
  auto nw = c.waitAny(both, Timeout::after(200ms));
  if (!nw || *nw != 0) return failWith("waitAny of empty channels: " + (nw ? std::to_string(*nw) : nw.error().toString()));
  if (secondsSince(t1) < 0.2 || secondsSince(t1) > 2.0) return failWith("waitAny deadline honoured badly");
  if (!q.send(bytesOf("w"), Timeout::none()).isOk()) return failWith("send w");
  nw = c.waitAny(both, Timeout::after(10s));
  if (!nw || *nw != 1 || both[1].ready != WaitFor::Readable || both[0].ready != WaitFor{}) {
    return failWith("waitAny did not see the remote channel ready");
  }
  if (!q.recvBytes(Timeout::none())) return failWith("recv w");

  // Try, deadline, poll and the error codes on Q (nobody reads it).
  std::byte buf[128];
  auto r = q.recv(buf, Timeout::none());
  if (r || r.error().code() != StatusCode::WouldBlock) return failWith("try recv of empty: not WouldBlock");
  auto t0 = std::chrono::steady_clock::now();
  r = q.recv(buf, Timeout::after(300ms));
  const double waited = secondsSince(t0);
  if (r || r.error().code() != StatusCode::Timeout) return failWith("recv with deadline: not Timeout");
  if (waited < 0.3 || waited > 2.0) return failWith("recv deadline honoured badly: " + std::to_string(waited) + " s");
  auto ready = q.poll(WaitFor::Readable, Timeout::after(100ms));
  if (!ready || *ready != WaitFor{}) return failWith("poll of empty was ready");
  for (const char* m : {"one", "two"}) {
    if (!q.send(bytesOf(m), Timeout::none()).isOk()) return failWith("send to Q");
  }
  dragon::Status st = q.send(bytesOf("three"), Timeout::none());
  if (st.code() != StatusCode::ChannelFull) return failWith("try send to full: " + st.toString());
  st = q.send(bytesOf("three"), Timeout::after(200ms));
  if (st.code() != StatusCode::Timeout) return failWith("send to full with deadline: " + st.toString());
  ready = q.poll(WaitFor::Either, Timeout::after(100ms));
  if (!ready || *ready != WaitFor::Readable) return failWith("poll of full: not just readable");
  st = q.send(bytesOf(std::string(65, 'x')), Timeout::none());
  if (st.code() != StatusCode::MessageTooLarge) return failWith("oversized send: " + st.toString());
  r = q.recv(std::span(buf, 2), Timeout::none());
  if (r || r.error().code() != StatusCode::MessageTooLarge) return failWith("small buffer: not MessageTooLarge");
  r = q.recv(buf, Timeout::none());
  if (!r || std::string(reinterpret_cast<char*>(buf), *r) != "one") return failWith("the message was lost by a small buffer");
  if (!q.close().isOk()) return failWith("close");
  auto m2 = q.recvBytes(Timeout::none());
  if (!m2 || textOf(*m2) != "two") return failWith("a closed channel is not drained first");
  m2 = q.recvBytes(Timeout::after(1s));
  if (m2 || m2.error().code() != StatusCode::ChannelClosed) return failWith("drained closed channel: not ChannelClosed");

  // FIFO and exactly once through P (capacity 4: the sends wait on the home node) and back.
  constexpr int kMessages = 1000;
  for (int i = 0; i < kMessages; ++i) {
    st = p.send(bytesOf("m" + std::to_string(i)), deadline);
    if (!st.isOk()) return failWith("send " + std::to_string(i) + ": " + st.toString());
  }
  for (int i = 0; i < kMessages; ++i) {
    auto m = (*rep)->recvBytes(deadline);
    if (!m) return failWith("recv " + std::to_string(i) + ": " + m.error().toString());
    if (textOf(*m) != "m" + std::to_string(i)) return failWith("out of order at " + std::to_string(i) + ": " + textOf(*m));
  }
  // Large messages, both ways; 40 MiB is more than one message between nodes carries, so it
  // crosses in parts (ChannelOp SEND_PART).
  for (std::size_t size : {std::size_t{1} << 20, std::size_t{8} << 20, std::size_t{40} << 20}) {
    std::string big(size, '\0');
    for (std::size_t i = 0; i < size; ++i) big[i] = static_cast<char>((i * 7 + size) & 0xff);
    st = p.send(bytesOf(big), deadline);
    if (!st.isOk()) return failWith("large send: " + st.toString());
    auto m = (*rep)->recvBytes(deadline);
    if (!m || textOf(*m) != big) return failWith("large message changed on the way");
  }
  // Filled in place (ClientChannel::sendFilled, what Python's put uses): staged, inline, and
  // in parts through a buffer of its own.
  for (std::size_t size : {std::size_t{100} << 10, std::size_t{1000}, std::size_t{20} << 20}) {
    std::string want(size, '\0');
    for (std::size_t i = 0; i < size; ++i) want[i] = static_cast<char>((i * 11 + 3) & 0xff);
    int fills = 0;
    st = p.sendFilled(size, [&](std::span<std::byte> to) {
      ++fills;
      if (to.size() == size) std::memcpy(to.data(), want.data(), size);
    }, deadline);
    if (!st.isOk()) return failWith("filled send: " + st.toString());
    if (fills != 1) return failWith("a filled send filled " + std::to_string(fills) + " times");
    auto m = (*rep)->recvBytes(deadline);
    if (!m || textOf(*m) != want) return failWith("a filled message changed on the way");
  }
  auto extra = (*rep)->recvBytes(Timeout::none());
  if (extra) return failWith("a message arrived twice");
  // The echo blocks in a remote recv on REQ (home: here) until we send.
  if (!p.send(bytesOf("stop"), deadline).isOk()) return failWith("stop");
  // Local first: a remote poll is parked on node 2 while a local channel gets a message.
  if (!(*rep)->send(bytesOf("local"), Timeout::none()).isOk()) return failWith("local send");
  dragon::ClientWaitItem mixed[2] = {{&last, WaitFor::Readable, {}}, {rep->get(), WaitFor::Readable, {}}};
  nw = c.waitAny(mixed, Timeout::after(10s));
  if (!nw || *nw != 1 || mixed[1].ready != WaitFor::Readable) return failWith("waitAny missed the local channel");
  if (!(*rep)->recvBytes(Timeout::none())) return failWith("recv local");
  // Remote later: the echo answers on its own channel once it has our message.
  if (!(*req)->send(bytesOf("last"), deadline).isOk()) return failWith("last");
  dragon::ClientWaitItem later[2] = {{mine->get(), WaitFor::Readable, {}}, {&last, WaitFor::Readable, {}}};
  nw = c.waitAny(later, Timeout::after(30s));
  if (!nw || *nw != 1 || later[1].ready != WaitFor::Readable) return failWith("waitAny missed the remote channel");
  auto bye = last.recvBytes(Timeout::none());
  if (!bye || textOf(*bye) != "bye:last") return failWith("the echo's remote recv did not get the message");
  if (!(*req)->send(bytesOf("goodbye"), deadline).isOk()) return failWith("goodbye");
  auto exits = c.wait({echo->front().puid}, deadline);
  if (!exits || (*exits)[0].exitCode != 0) return failWith("the echo failed");
  // A reference given back once is gone: a second detach must not take another client's.
  if (!c.detach(q.descriptor()).isOk()) return failWith("detach of a remote channel");
  st = c.detach(q.descriptor());
  if (st.code() != StatusCode::NotFound) return failWith("a second detach of a remote channel: " + st.toString());
  std::printf("probe: ok channels with node %u: %d messages in order, try/deadline/poll/close/waitAny, 1, 8 and 40 MiB, filled in place\n",
              node, kMessages);
  return 0;
}

// A process on `node` makes a channel there and sends its descriptor; the head blocks in a
// recv on it; the test kills that node's dragond: the recv must end with NodeLost.
int channelHost(Client& c, const std::string& repText) {
  auto repDesc = dragon::ObjectDescriptor::fromString(repText);
  if (!repDesc) return failWith("host: bad descriptor");
  auto rep = c.attachChannel(*repDesc);
  auto pool = c.createPool(std::size_t{16} << 20);
  if (!rep || !pool) return failWith("host: attach or pool");
  auto ch = c.createChannel((*pool)->descriptor(), {});
  if (!ch) return failWith("host: channel: " + ch.error().toString());
  if (!(*rep)->send(bytesOf((*ch)->descriptor().toString())).isOk()) return failWith("host: send");
  auto never = (*ch)->recvBytes();  // until the job ends
  return never ? 0 : 1;
}

int recvLost(Client& c, std::uint32_t node) {
  auto pool = c.createPool(std::size_t{16} << 20);
  if (!pool) return failWith("pool");
  auto rep = c.createChannel((*pool)->descriptor(), {});
  if (!rep) return failWith("channel");
  auto host = spawnSelf(c, {"channel-host", (*rep)->descriptor().toString()}, node);
  if (!host) return failWith("spawn: " + host.error().toString());
  auto remote = attachSent(c, **rep, Timeout::after(30s));
  if (!remote) return failWith("the host's channel: " + remote.error().toString());
  std::printf("probe: blocked on a channel of node %u\n", node);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  auto got = (*remote)->recvBytes(Timeout::after(60s));
  if (got) return failWith("the recv returned a message");
  if (got.error().code() != StatusCode::NodeLost) {
    return failWith("the recv failed with " + got.error().toString() + ", not NodeLost");
  }
  std::printf("probe: ok recv-lost after %.2f s: %s\n", secondsSince(t0), got.error().toString().c_str());
  std::fflush(stdout);
  return 3;
}

// The far end of channel-bench: makes a channel on its node, sends its descriptor on REP and
// drains it until a 1-byte message.
int channelSink(Client& c, const std::string& repText) {
  auto repDesc = dragon::ObjectDescriptor::fromString(repText);
  if (!repDesc) return failWith("sink: bad descriptor");
  auto rep = c.attachChannel(*repDesc);
  auto pool = c.createPool(std::size_t{256} << 20);
  if (!rep || !pool) return failWith("sink: attach or pool");
  dragon::ChannelOptions o;
  o.capacity = 64;
  auto ch = c.createChannel((*pool)->descriptor(), o);
  if (!ch) return failWith("sink: channel: " + ch.error().toString());
  if (!(*rep)->send(bytesOf((*ch)->descriptor().toString())).isOk()) return failWith("sink: send");
  dragon::Message m;
  for (;;) {
    dragon::Status st = (*ch)->channel().recv(m);
    if (!st.isOk()) return failWith("sink: recv: " + st.toString());
    if (m.size() == 1) return 0;
    m.reset();
  }
}

// Sends `count` messages of `size` bytes to a channel on `node` (each send returns once the
// home node has queued it: one round trip across nodes) and prints the time per send and the
// bandwidth.
int channelBench(Client& c, std::uint32_t node, int count, std::size_t size) {
  auto pool = c.createPool(std::size_t{16} << 20);
  if (!pool) return failWith("pool");
  auto rep = c.createChannel((*pool)->descriptor(), {});
  if (!rep) return failWith("channel");
  auto sink = spawnSelf(c, {"channel-sink", (*rep)->descriptor().toString()}, node);
  if (!sink) return failWith("spawn: " + sink.error().toString());
  auto ch = attachSent(c, **rep, Timeout::after(30s));
  if (!ch) return failWith("the sink's channel: " + ch.error().toString());
  const std::string payload(size, 'p');
  auto run = [&](int n) -> dragon::Status {
    for (int i = 0; i < n; ++i) {
      dragon::Status st = (*ch)->send(bytesOf(payload), Timeout::after(30s));
      if (!st.isOk()) return st;
    }
    return dragon::Status::ok();
  };
  dragon::Status st = run(std::max(10, count / 10));  // warm up
  if (!st.isOk()) return failWith("send: " + st.toString());
  const auto t0 = std::chrono::steady_clock::now();
  st = run(count);
  const double secs = secondsSince(t0);
  if (!st.isOk()) return failWith("send: " + st.toString());
  (void)(*ch)->send(bytesOf("x"), Timeout::after(30s));
  auto e = c.wait({sink->front().puid}, Timeout::after(30s));
  if (!e || (*e)[0].exitCode != 0) return failWith("the sink failed");
  std::printf("probe: channel-bench %zu B: %.2f us per send, %.1f MB/s\n", size,
              secs * 1e6 / count, static_cast<double>(size) * count / secs / 1e6);
  return 0;
}

// --- Waiting sends past the home's limit (cluster.parked_send_bytes) ---

std::string crowdMessage(int index, std::size_t size) {
  std::string m(size, '\0');
  for (std::size_t i = 0; i < size; ++i) m[i] = static_cast<char>((index * 131 + i * 7) % 251);
  m[0] = static_cast<char>('A' + index);
  return m;
}

// One of the crowd, on another node than CH's: says "sending INDEX" on REP, then sends its
// message to CH, waiting as long as it takes.
// The channels CH and REP of the crowd's head, attached.
Result<std::pair<std::unique_ptr<ClientChannel>, std::unique_ptr<ClientChannel>>> attachCrowd(
    Client& c, const std::string& chText, const std::string& repText) {
  auto chDesc = dragon::ObjectDescriptor::fromString(chText);
  auto repDesc = dragon::ObjectDescriptor::fromString(repText);
  if (!chDesc || !repDesc) return dragon::Status(StatusCode::InvalidArgument, "bad descriptors");
  auto ch = c.attachChannel(*chDesc);
  if (!ch) return ch.error();
  auto rep = c.attachChannel(*repDesc);
  if (!rep) return rep.error();
  return std::make_pair(std::move(*ch), std::move(*rep));
}

int crowdSender(Client& c, const std::string& chText, const std::string& repText, int index,
                std::size_t size) {
  auto both = attachCrowd(c, chText, repText);
  if (!both) return failWith("crowd: " + both.error().toString());
  auto& [ch, rep] = *both;
  if (!rep->send(bytesOf("sending " + std::to_string(index))).isOk()) return failWith("crowd: rep");
  dragon::Status st = ch->send(bytesOf(crowdMessage(index, size)), Timeout::forever());
  if (!st.isOk()) return failWith("crowd: send: " + st.toString());
  return 0;
}

// The latecomer: sends to the full channel with a 500 ms deadline, up to 3 times, and says on
// REP what the last Timeout said ("timeout: MESSAGE"), or what else happened.
int crowdLate(Client& c, const std::string& chText, const std::string& repText) {
  auto both = attachCrowd(c, chText, repText);
  if (!both) return failWith("late: " + both.error().toString());
  auto& [ch, rep] = *both;
  std::string said;
  for (int i = 0; i < 3; ++i) {
    dragon::Status st = ch->send(bytesOf(std::string(1000, 'z')), Timeout::after(500ms));
    if (st.code() != StatusCode::Timeout) {
      said = "not a timeout: " + st.toString();
      break;
    }
    said = "timeout: " + std::string(st.message());
    if (said.find("parked_send_bytes") != std::string::npos) break;
  }
  return rep->send(bytesOf(said)).isOk() ? 0 : failWith("late: rep");
}

// COUNT processes of NODE send SIZE bytes each to a full 1-slot channel of this node, more than
// its dragond may hold (the job runs with a small cluster.parked_send_bytes): the sends past
// the limit wait on NODE and go again. A latecomer with a deadline must time out naming the
// key; then every message arrives exactly once, intact.
int crowd(Client& c, std::uint32_t node, int count, std::size_t size) {
  auto pool = c.createPool(std::size_t{64} << 20);
  if (!pool) return failWith("pool");
  dragon::ChannelOptions o;
  o.capacity = 1;
  auto ch = c.createChannel((*pool)->descriptor(), o);
  auto rep = c.createChannel((*pool)->descriptor(), {});
  if (!ch || !rep) return failWith("channels");
  if (!(*ch)->send(bytesOf("first")).isOk()) return failWith("fill");
  std::vector<std::uint64_t> puids;
  for (int i = 0; i < count; ++i) {
    auto p = spawnSelf(c, {"crowd-sender", (*ch)->descriptor().toString(),
                           (*rep)->descriptor().toString(), std::to_string(i), std::to_string(size)},
                       node);
    if (!p) return failWith("spawn: " + p.error().toString());
    puids.push_back(p->front().puid);
  }
  for (int i = 0; i < count; ++i) {
    auto m = (*rep)->recvBytes(Timeout::after(30s));
    if (!m || textOf(*m).rfind("sending ", 0) != 0) return failWith("a sender did not start");
  }
  auto late = spawnSelf(c, {"crowd-late", (*ch)->descriptor().toString(), (*rep)->descriptor().toString()},
                        node);
  if (!late) return failWith("spawn: " + late.error().toString());
  auto said = (*rep)->recvBytes(Timeout::after(30s));
  if (!said) return failWith("the latecomer said nothing");
  const std::string lateText = textOf(*said);
  if (lateText.find("parked_send_bytes") == std::string::npos) {
    return failWith("the latecomer: " + lateText);
  }
  std::set<int> seen;
  auto first = (*ch)->recvBytes(Timeout::after(30s));
  if (!first || textOf(*first) != "first") return failWith("the first message");
  for (int i = 0; i < count; ++i) {
    auto m = (*ch)->recvBytes(Timeout::after(30s));
    if (!m) return failWith("message " + std::to_string(i) + ": " + m.error().toString());
    const std::string text = textOf(*m);
    const int index = text.empty() ? -1 : text[0] - 'A';
    if (index < 0 || index >= count || text != crowdMessage(index, size) || !seen.insert(index).second) {
      return failWith("a message changed, or came twice");
    }
  }
  auto stray = (*ch)->recvBytes(Timeout::after(200ms));
  if (stray) return failWith("a message came more than once");
  puids.push_back(late->front().puid);
  auto e = c.wait(puids, Timeout::after(30s));
  if (!e) return failWith("wait: " + e.error().toString());
  for (const auto& x : *e) {
    if (x.exitCode != 0) return failWith("a sender failed");
  }
  std::printf("probe: ok crowd: %d sends of %zu B to a full channel of node 0 from node %u, each "
              "once; the latecomer: %s\n", count, size, node, lateText.c_str());
  return 0;
}

// --- Remote memory ---

void fillPattern(void* p, std::size_t n, std::uint64_t seed) {
  auto* b = static_cast<unsigned char*>(p);
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (std::size_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(b + i, &x, std::min<std::size_t>(8, n - i));
  }
}

bool hasPattern(const void* p, std::size_t n, std::uint64_t seed) {
  std::vector<unsigned char> want(n);
  fillPattern(want.data(), n, seed);
  return std::memcmp(p, want.data(), n) == 0;
}

// The far end of the memory modes, on another node: a pool with one allocation of SIZE bytes
// holding pattern 1, and a channel; sends "POOL ALLOCATION CHANNEL" on REP, then answers each
// "check SEED" on its channel with "ok" or "bad" on REP, until "stop".
int memoryHost(Client& c, const std::string& repText, std::size_t size) {
  auto repDesc = dragon::ObjectDescriptor::fromString(repText);
  if (!repDesc) return failWith("memory-host: bad descriptor");
  auto rep = c.attachChannel(*repDesc);
  auto pool = c.createPool(size + (std::size_t{8} << 20));
  if (!rep || !pool) return failWith("memory-host: attach or pool");
  auto a = (*pool)->alloc(size);
  auto ch = c.createChannel((*pool)->descriptor(), {});
  if (!a || !ch) return failWith("memory-host: alloc or channel");
  fillPattern((*pool)->pointer(*a), size, 1);
  const std::string facts = (*pool)->descriptor().toString() + " " + std::to_string(a->offset) +
                            " " + (*ch)->descriptor().toString();
  if (!(*rep)->send(bytesOf(facts)).isOk()) return failWith("memory-host: send");
  for (;;) {
    auto m = (*ch)->recvBytes();
    if (!m) return failWith("memory-host: recv: " + m.error().toString());
    const std::string text = textOf(*m);
    if (text == "stop") return 0;
    const std::uint64_t seed = std::strtoull(text.c_str() + 6, nullptr, 10);
    const bool ok = hasPattern((*pool)->pointer(*a), size, seed);
    if (!(*rep)->send(bytesOf(ok ? "ok" : "bad")).isOk()) return failWith("memory-host: answer");
  }
}

struct MemoryPeer {
  dragon::MemoryRange range;
  std::unique_ptr<dragon::ClientChannel> control;
  std::uint64_t puid = 0;
};

// Starts memory-host on `node` and learns its allocation; `rep` receives its answers.
Result<MemoryPeer> startMemoryHost(Client& c, dragon::ClientChannel& rep, std::uint32_t node,
                                   std::size_t size) {
  auto host = spawnSelf(c, {"memory-host", rep.descriptor().toString(), std::to_string(size)}, node);
  if (!host) return host.error();
  auto m = rep.recvBytes(Timeout::after(30s));
  if (!m) return m.error();
  const std::string text = textOf(*m);
  const auto sp1 = text.find(' ');
  const auto sp2 = text.find(' ', sp1 + 1);
  auto pool = dragon::ObjectDescriptor::fromString(text.substr(0, sp1));
  auto chd = dragon::ObjectDescriptor::fromString(text.substr(sp2 + 1));
  if (!pool || !chd) return dragon::Status(StatusCode::Internal, "memory-host sent '" + text + "'");
  MemoryPeer p;
  p.range = dragon::MemoryRange{*pool, std::strtoull(text.c_str() + sp1 + 1, nullptr, 10), 0};
  auto ch = c.attachChannel(*chd);
  if (!ch) return ch.error();
  p.control = std::move(*ch);
  p.puid = host->front().puid;
  return p;
}

// A pool here with one allocation of `size` bytes, a channel for memory-host's answers, and
// memory-host started on `node`.
struct MemoryPair {
  std::shared_ptr<dragon::Pool> pool;
  std::unique_ptr<dragon::ClientChannel> rep;
  dragon::PoolAllocation mine;
  MemoryPeer peer;
  dragon::MemoryRange here;
};

Result<MemoryPair> memoryPair(Client& c, std::uint32_t node, std::size_t size) {
  MemoryPair m;
  auto pool = c.createPool(2 * size + (std::size_t{8} << 20));
  if (!pool) return pool.error();
  m.pool = *pool;
  auto rep = c.createChannel(m.pool->descriptor(), {});
  if (!rep) return rep.error();
  m.rep = std::move(*rep);
  auto mine = m.pool->alloc(size);
  if (!mine) return mine.error();
  m.mine = *mine;
  auto peer = startMemoryHost(c, *m.rep, node, size);
  if (!peer) return peer.error();
  m.peer = std::move(*peer);
  if (m.peer.range.pool.node != node) {
    return dragon::Status(StatusCode::Internal, "the far pool is not of node " + std::to_string(node));
  }
  m.here = dragon::MemoryRange{m.pool->descriptor(), m.mine.offset, 0};
  return m;
}

// Gets and puts between a pool here and one on `node`: whole, in parts, many in flight, and
// the errors (a range outside the far allocation, a put whose source is not of this node).
int memory(Client& c, std::uint32_t node, std::size_t size) {
  auto pair = memoryPair(c, node, size);
  if (!pair) return failWith("memory: " + pair.error().toString());
  auto& rep = pair->rep;
  MemoryPeer* peer = &pair->peer;
  const dragon::MemoryRange here = pair->here;
  void* local = pair->pool->pointer(pair->mine);
  auto ask = [&](std::uint64_t seed) -> std::string {
    if (!peer->control->send(bytesOf("check " + std::to_string(seed))).isOk()) return "send failed";
    auto m = rep->recvBytes(Timeout::after(30s));
    return m ? textOf(*m) : m.error().toString();
  };
  // 1. get the whole allocation.
  std::memset(local, 0, size);
  auto g = c.get(peer->range, here, size);
  if (!g) return failWith("get: " + g.error().toString());
  dragon::Status st = g->wait(Timeout::after(60s));
  if (!st.isOk()) return failWith("get: " + st.toString());
  if (!hasPattern(local, size, 1)) return failWith("get: the bytes are not the far node's");
  // 2. put the whole allocation; the far node checks it.
  fillPattern(local, size, 2);
  auto p = c.put(here, peer->range, size);
  if (!p) return failWith("put: " + p.error().toString());
  st = p->wait(Timeout::after(60s));
  if (!st.isOk()) return failWith("put: " + st.toString());
  if (std::string a = ask(2); a != "ok") return failWith("put: the far node says " + a);
  // 3. in parts, all in flight at once, to offsets of the far allocation.
  fillPattern(local, size, 3);
  const std::size_t parts = 16;
  const std::size_t piece = size / parts;
  std::vector<dragon::MemoryTransfer> flying;
  for (std::size_t i = 0; i < parts; ++i) {
    const std::size_t n = i + 1 == parts ? size - i * piece : piece;
    dragon::MemoryRange from = here;
    from.offset = i * piece;
    dragon::MemoryRange to = peer->range;
    to.offset = i * piece;
    auto t = c.put(from, to, n);
    if (!t) return failWith("put part: " + t.error().toString());
    flying.push_back(std::move(*t));
  }
  for (auto& t : flying) {
    st = t.wait(Timeout::after(60s));
    if (!st.isOk()) return failWith("put part: " + st.toString());
  }
  if (std::string a = ask(3); a != "ok") return failWith("puts in parts: the far node says " + a);
  // 3b. waitAny over a remote channel, a local one (both empty) and a get: the get wakes it,
  // and then a remote channel and the get alone.
  std::memset(local, 0, size);
  for (const bool withLocal : {true, false}) {
    auto t = c.get(peer->range, here, size);
    if (!t) return failWith("get for waitAny: " + t.error().toString());
    dragon::ClientWaitItem items[3];
    items[0].channel = peer->control.get();
    items[1].channel = withLocal ? rep.get() : nullptr;
    items[1].transfer = withLocal ? nullptr : &*t;
    items[2].transfer = &*t;
    auto n = c.waitAny(std::span(items, withLocal ? 3 : 2), Timeout::after(60s));
    if (!n || *n != 1) return failWith("waitAny with a transfer: " + (n ? std::to_string(*n) : n.error().toString()));
    if (items[withLocal ? 2 : 1].ready != WaitFor::Readable || items[0].ready != WaitFor{}) {
      return failWith("waitAny did not see the transfer done");
    }
    if (!t->wait(Timeout::none()).isOk() || !hasPattern(local, size, 3)) return failWith("the get waited on is wrong");
  }
  // 4. a range past the far allocation's end is refused there; nothing is written.
  dragon::MemoryRange past = peer->range;
  past.offset = size - 8;
  auto bad = c.put(here, past, 16);
  if (!bad) return failWith("bad put: " + bad.error().toString());
  st = bad->wait(Timeout::after(60s));
  if (st.code() != StatusCode::InvalidArgument) return failWith("a put past the far end gave " + st.toString());
  if (std::string a = ask(3); a != "ok") return failWith("a refused put wrote: the far node says " + a);
  // 5. put wants its source here.
  auto wrong = c.put(peer->range, here, 8);
  if (wrong || wrong.error().code() != StatusCode::InvalidArgument) return failWith("put from another node was not refused");
  (void)peer->control->send(bytesOf("stop"));
  auto e = c.wait({peer->puid}, Timeout::after(30s));
  if (!e || (*e)[0].exitCode != 0) return failWith("memory-host failed");
  std::printf("probe: ok memory with node %u, %zu bytes\n", node, size);
  return 0;
}

// Gets from `node` over and over until one fails; expects NodeLost (the test kills the node).
int memoryLost(Client& c, std::uint32_t node) {
  const std::size_t size = std::size_t{4} << 20;
  auto pair = memoryPair(c, node, size);
  if (!pair) return failWith("memory-lost: " + pair.error().toString());
  MemoryPeer* peer = &pair->peer;
  const dragon::MemoryRange here = pair->here;
  std::printf("probe: getting from node %u\n", node);
  std::fflush(stdout);
  std::chrono::steady_clock::time_point failedAt{};
  for (int i = 0; i < 1'000'000; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto g = c.get(peer->range, here, size);
    dragon::Status st = g ? g->wait(Timeout::after(60s)) : g.error();
    if (st.isOk()) continue;
    failedAt = t0;
    if (st.code() != StatusCode::NodeLost) return failWith("a get failed with " + st.toString() + ", not NodeLost");
    std::printf("probe: ok memory-lost after %.2f s: %s\n", secondsSince(failedAt), st.toString().c_str());
    return 3;
  }
  return failWith("the node was never lost");
}

// `count` puts, then `count` gets, of `size` bytes with `node`, one at a time: MB/s of each.
int memoryBench(Client& c, std::uint32_t node, std::size_t size, int count) {
  auto pair = memoryPair(c, node, size);
  if (!pair) return failWith("memory-bench: " + pair.error().toString());
  MemoryPeer* peer = &pair->peer;
  const dragon::MemoryRange here = pair->here;
  auto run = [&](bool put, int n) -> Result<double> {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) {
      auto t = put ? c.put(here, peer->range, size) : c.get(peer->range, here, size);
      if (!t) return t.error();
      dragon::Status st = t->wait(Timeout::after(60s));
      if (!st.isOk()) return st;
    }
    return static_cast<double>(size) * n / secondsSince(t0) / 1e6;
  };
  if (auto w = run(true, 3); !w) return failWith("warm-up: " + w.error().toString());
  auto putBw = run(true, count);
  auto getBw = run(false, count);
  if (!putBw || !getBw) return failWith("bench: " + (putBw ? getBw.error() : putBw.error()).toString());
  (void)peer->control->send(bytesOf("stop"));
  (void)c.wait({peer->puid}, Timeout::after(30s));
  std::printf("probe: memory-bench %zu B: put %.1f MB/s, get %.1f MB/s\n", size, *putBw, *getBw);
  return 0;
}

// --- Names across nodes ---

// On another node: names a channel of its node (plain and scoped), says so on REP, answers
// one message that arrives on its channel (sent by the head, which found it by name), looks up
// the head's name, and exits when told (its scoped name goes with it).
int nameHost(Client& c, const std::string& repText) {
  auto repDesc = dragon::ObjectDescriptor::fromString(repText);
  if (!repDesc) return failWith("name-host: bad descriptor");
  auto rep = c.attachChannel(*repDesc);
  auto pool = c.createPool(std::size_t{16} << 20);
  if (!rep || !pool) return failWith("name-host: attach or pool");
  auto ch = c.createChannel((*pool)->descriptor(), {});
  auto scoped = c.createChannel((*pool)->descriptor(), {});
  if (!ch || !scoped) return failWith("name-host: channels");
  dragon::Status st = c.registerName("cluster-name-plain", (*ch)->descriptor());
  if (!st.isOk()) return failWith("name-host: register: " + st.toString());
  st = c.registerName("cluster-name-scoped", (*scoped)->descriptor(), /*scoped=*/true);
  if (!st.isOk()) return failWith("name-host: register scoped: " + st.toString());
  if (!(*rep)->send(bytesOf("named")).isOk()) return failWith("name-host: send");
  auto head = c.lookupName("cluster-name-head");
  if (!head) return failWith("name-host: the head's name is not found here: " + head.error().toString());
  // Every message is answered until the goodbye (at most a few: bounded).
  for (int i = 0; i < 8; ++i) {
    auto m = (*ch)->recvBytes(Timeout::after(30s));
    if (!m) return failWith("name-host: recv: " + m.error().toString());
    if (textOf(*m) == "bye") return 0;
    if (!(*rep)->send(bytesOf("got:" + textOf(*m) + " head-on-node:" + std::to_string(head->node))).isOk()) {
      return failWith("name-host: answer");
    }
  }
  return failWith("name-host: no goodbye");
}

int names(Client& c, std::uint32_t node) {
  auto pool = c.createPool(std::size_t{16} << 20);
  if (!pool) return failWith("pool");
  auto rep = c.createChannel((*pool)->descriptor(), {});
  auto mineCh = c.createChannel((*pool)->descriptor(), {});
  if (!rep || !mineCh) return failWith("channels");
  dragon::Status st = c.registerName("cluster-name-head", (*mineCh)->descriptor());
  if (!st.isOk()) return failWith("register: " + st.toString());
  auto host = spawnSelf(c, {"name-host", (*rep)->descriptor().toString()}, node);
  if (!host) return failWith("spawn: " + host.error().toString());
  auto ready = (*rep)->recvBytes(Timeout::after(30s));
  if (!ready || textOf(*ready) != "named") return failWith("the host did not name its channels");
  auto found = c.lookupName("cluster-name-plain");
  if (!found) return failWith("a name of node " + std::to_string(node) + " is not found here: " + found.error().toString());
  if (found->node != node) return failWith("the name points at node " + std::to_string(found->node));
  auto byName = c.attachChannel("cluster-name-plain");
  if (!byName) return failWith("attach by name: " + byName.error().toString());
  if (!(*byName)->isRemote()) return failWith("attached by name, a channel of another node is not remote");
  if (!(*byName)->send(bytesOf("via-name")).isOk()) return failWith("send via name");
  auto answer = (*rep)->recvBytes(Timeout::after(30s));
  const std::string want = "got:via-name head-on-node:" + std::to_string(c.node());
  if (!answer || textOf(*answer) != want) return failWith("the host answered '" + (answer ? textOf(*answer) : answer.error().toString()) + "'");
  // Python attaches that channel of another node by name and sends through it; the host
  // answers as above.
  {
    std::string dir = selfPath();
    dir = dir.substr(0, dir.rfind('/'));          // .../tests/cluster
    dir = dir.substr(0, dir.rfind('/'));          // .../tests
    dir = dir.substr(0, dir.rfind('/')) + "/python";
    SpawnOptions py;
    py.argv = {"/usr/bin/python3", "-c",
               "import sys, dragon._runtime as r\n"
               "ch = r.attach_channel('cluster-name-plain')\n"
               "if not ch.is_remote: sys.exit(3)\n"
               "ch.send(b'via-python', 30)\n"};
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "PYTHONPATH=", 11) != 0) py.env.emplace_back(*e);
    }
    py.env.push_back("PYTHONPATH=" + dir);
    auto pp = c.spawn(py);
    if (!pp) return failWith("spawn python: " + pp.error().toString());
    auto pe = c.wait({pp->front().puid}, Timeout::after(30s));
    if (!pe || (*pe)[0].exitCode != 0) {
      return failWith("Python attaching a channel of another node: exit " +
                      (pe ? std::to_string((*pe)[0].exitCode) : pe.error().toString()));
    }
    auto fromPython = (*rep)->recvBytes(Timeout::after(30s));
    const std::string wantPy = "got:via-python head-on-node:" + std::to_string(c.node());
    if (!fromPython || textOf(*fromPython) != wantPy) {
      return failWith("the host answered Python with '" +
                      (fromPython ? textOf(*fromPython) : fromPython.error().toString()) + "'");
    }
  }
  // A name is unique job-wide: taken on another node is AlreadyExists here.
  st = c.registerName("cluster-name-plain", (*mineCh)->descriptor());
  if (st.code() != StatusCode::AlreadyExists) return failWith("a name taken on another node: " + st.toString());
  st = c.registerName("cluster-name-scoped", (*mineCh)->descriptor(), true);
  if (st.code() != StatusCode::AlreadyExists) return failWith("a scoped name taken on another node: " + st.toString());
  // The host goes: its scoped name goes with it, everywhere.
  if (!(*byName)->send(bytesOf("bye")).isOk()) return failWith("bye");
  auto exits = c.wait({host->front().puid}, Timeout::after(30s));
  if (!exits || (*exits)[0].exitCode != 0) return failWith("the host failed");
  const auto t0 = std::chrono::steady_clock::now();
  while (c.lookupName("cluster-name-scoped").has_value()) {
    if (secondsSince(t0) > 10) return failWith("the scoped name outlived its owner");
    poll(nullptr, 0, 10);
  }
  // The plain name keeps its channel alive and is still found.
  if (!c.lookupName("cluster-name-plain")) return failWith("the plain name went with the process");
  std::printf("probe: ok names across nodes with node %u\n", node);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 2) return failWith("usage: cluster_probe spawn-all|ps-signal|round-robin N|wait-lost NODE|sleep");
  auto client = Client::connect();
  if (!client.has_value()) return failWith("connect: " + client.error().toString());
  const std::string mode = argv[1];
  if (mode == "spawn-all") return spawnAll(*client);
  if (mode == "ps-signal") return psAndSignal(*client);
  if (mode == "groups") return groups(*client);
  if (mode == "ps-third" && argc == 3) return psThirdNode(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
  if (mode == "round-robin" && argc == 3) return roundRobin(*client, std::atoi(argv[2]));
  if (mode == "spawn-rate" && argc == 4) {
    return spawnRate(*client, static_cast<std::uint32_t>(std::atoi(argv[2])), std::atof(argv[3]));
  }
  if (mode == "memory-host" && argc == 4) return memoryHost(*client, argv[2], std::strtoull(argv[3], nullptr, 10));
  if (mode == "memory" && argc == 4) {
    return memory(*client, static_cast<std::uint32_t>(std::atoi(argv[2])), std::strtoull(argv[3], nullptr, 10));
  }
  if (mode == "memory-lost" && argc == 3) return memoryLost(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
  if (mode == "memory-bench" && argc == 5) {
    return memoryBench(*client, static_cast<std::uint32_t>(std::atoi(argv[2])),
                       std::strtoull(argv[3], nullptr, 10), std::atoi(argv[4]));
  }
  if (mode == "crowd" && argc == 5) {
    return crowd(*client, static_cast<std::uint32_t>(std::atoi(argv[2])), std::atoi(argv[3]),
                 static_cast<std::size_t>(std::atoll(argv[4])));
  }
  if (mode == "crowd-sender" && argc == 6) {
    return crowdSender(*client, argv[2], argv[3], std::atoi(argv[4]),
                       static_cast<std::size_t>(std::atoll(argv[5])));
  }
  if (mode == "crowd-late" && argc == 4) return crowdLate(*client, argv[2], argv[3]);
  if (mode == "channels" && argc == 3) {
    return channels(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
  }
  if (mode == "channel-echo" && argc == 4) return channelEcho(*client, argv[2], argv[3]);
  if (mode == "channel-host" && argc == 3) return channelHost(*client, argv[2]);
  if (mode == "control-rtt" && argc == 3) {
    // The round trip of a request this node's dragond answers itself (the control plane's
    // floor under every remote operation).
    const int n = std::atoi(argv[2]);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) {
      if (!client->nodes()) return failWith("nodes");
    }
    std::printf("probe: control-rtt %.2f us\n", secondsSince(t0) * 1e6 / n);
    return 0;
  }
  if (mode == "names" && argc == 3) return names(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
  if (mode == "name-host" && argc == 3) return nameHost(*client, argv[2]);
  if (mode == "channel-sink" && argc == 3) return channelSink(*client, argv[2]);
  if (mode == "channel-bench" && argc == 5) {
    return channelBench(*client, static_cast<std::uint32_t>(std::atoi(argv[2])), std::atoi(argv[3]),
                        static_cast<std::size_t>(std::atoll(argv[4])));
  }
  if (mode == "recv-lost" && argc == 3) {
    return recvLost(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
  }
  if (mode == "wait-lost" && argc == 3) {
    return waitLost(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
  }
  return failWith("unknown mode " + mode);
}
