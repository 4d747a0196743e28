// SPDX-License-Identifier: MIT
// For unit tests that drive dragond's event loop in-process: a test configuration with the
// cluster's timings, and running the loop until a condition holds or a deadline passes.
#pragma once

#include "config/config.hpp"
#include "daemon/event_loop.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>

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

}  // namespace dragon::daemon
