// SPDX-License-Identifier: MIT
// For unit tests of dragond's cluster layer that drive its event loop in-process: a test
// configuration with the cluster's timings, running the loop until a condition holds or a
// deadline passes, and the node table of a job of in-process Clusters.
#pragma once

#include "config/config.hpp"
#include "daemon/cluster.hpp"
#include "daemon/event_loop.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace dragon::daemon {

inline config::Config testConfig(const std::string& heartbeat = "20ms",
                                 const std::string& timeout = "5s",
                                 const std::string& connect = "30s") {
  config::LoadOptions o;
  o.systemFile.reset();
  o.userFile = "/nonexistent";
  o.useProcessEnvironment = false;
  o.overrides.push_back({"cluster.heartbeat_interval", heartbeat, "test"});
  o.overrides.push_back({"cluster.node_timeout", timeout, "test"});
  o.overrides.push_back({"cluster.connect_timeout", connect, "test"});
  auto c = config::Config::load(o);
  EXPECT_TRUE(c.has_value()) << (c.has_value() ? "" : c.error().toString());
  return *c;
}

// Runs the loop until `done()` or the deadline; whether done() held.
inline bool runUntil(EventLoop& loop, const std::function<bool()>& done,
              std::chrono::milliseconds deadline = std::chrono::milliseconds(5000)) {
  if (done()) return true;
  bool expired = false;
  auto deadlineTimer = loop.addTimerAfterNs(
      std::chrono::duration_cast<std::chrono::nanoseconds>(deadline).count(), [&] {
        expired = true;
        loop.stop();
      });
  // The pending check is cancelled before returning: it refers to this call's locals.
  EventLoop::TimerId pending = 0;
  std::function<void()> check = [&] {
    pending = 0;
    if (done()) {
      loop.stop();
      return;
    }
    pending = loop.addTimerAfterNs(1'000'000, check);
  };
  pending = loop.addTimerAfterNs(0, check);
  EXPECT_TRUE(loop.run().isOk());
  loop.cancelTimer(deadlineTimer);
  if (pending != 0) loop.cancelTimer(pending);
  (void)expired;
  return done();
}

// The JoinCluster of a job whose node i is nodes[i] (hostname n<i+1>, 2 CPUs, rank i), head
// and global services on node 0.
inline protocol::JoinCluster nodeTable(const std::vector<std::unique_ptr<Cluster>>& nodes,
                                       const std::string& secret = std::string(32, 's')) {
  protocol::JoinCluster j;
  for (std::uint32_t i = 0; i < nodes.size(); ++i) {
    auto* n = j.add_node();
    n->set_node(i);
    n->set_hostname("n" + std::to_string(i + 1));
    n->set_cpus(2);
    n->set_rank(i);
    n->set_address(nodes[i]->address());
  }
  j.set_secret(secret);
  j.set_head_node(0);
  j.set_global_node(0);
  return j;
}

}  // namespace dragon::daemon
