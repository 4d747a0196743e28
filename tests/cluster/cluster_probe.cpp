// SPDX-License-Identifier: MIT
// The head program of the multi-node tests (tests/cluster/t_*.sh run it under
// `srun --mpi=pmix -N3 dragon -- cluster_probe MODE`). Each mode exercises one capability
// through the public C++ API and prints "probe: ok ..." or "probe: FAIL ..." (exit 1).
#include <dragon/client.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

using dragon::Client;
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
  std::printf("probe: ok ps-signal %zu nodes\n", nodes->size());
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
  for (const auto& n : *nodes) {
    const int want = count / static_cast<int>(nodes->size());
    if (perNode[n.node] < want) {
      return failWith("node " + std::to_string(n.node) + " got " +
                      std::to_string(perNode[n.node]) + " of " + std::to_string(count));
    }
  }
  std::printf("probe: ok round-robin %d over %zu nodes\n", count, nodes->size());
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

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 2) return failWith("usage: cluster_probe spawn-all|ps-signal|round-robin N|wait-lost NODE|sleep");
  auto client = Client::connect();
  if (!client.has_value()) return failWith("connect: " + client.error().toString());
  const std::string mode = argv[1];
  if (mode == "spawn-all") return spawnAll(*client);
  if (mode == "ps-signal") return psAndSignal(*client);
  if (mode == "round-robin" && argc == 3) return roundRobin(*client, std::atoi(argv[2]));
  if (mode == "spawn-rate" && argc == 4) {
    return spawnRate(*client, static_cast<std::uint32_t>(std::atoi(argv[2])), std::atof(argv[3]));
  }
  if (mode == "wait-lost" && argc == 3) {
    return waitLost(*client, static_cast<std::uint32_t>(std::atoi(argv[2])));
  }
  return failWith("unknown mode " + mode);
}
