// SPDX-License-Identifier: MIT
// dragond: composes the event loop, global services, the object and process managers and the
// server, serves until SIGTERM/SIGINT, then shuts down in order: stop accepting, end every
// job (SIGTERM, SIGKILL after the grace period), close the clients, release the memory.
#pragma once

#include "base/private.hpp"
#include "config/config.hpp"

#include <dragon/result.hpp>

#include <cstdint>
#include <string>

namespace dragon::daemon {

struct DaemonOptions {
  config::Config config = config::Config::defaults();
  bool standalone = true;
  int readyFd = -1;  // written "ready\n" and closed once serving (the launcher waits on it)
  // Stop as on SIGTERM once this fd (a pipe's read end) reaches end of file: the process that
  // holds the write end has gone, however it ended (a private dragond dies with its creator).
  int exitWithFd = -1;
  // Serve node `nodeId` of a multi-node job (the launcher gives it from PMIx): the transport
  // is loaded and opened, and the launcher hands over the node table (JoinCluster). -1: one
  // node, no transport.
  std::int64_t nodeId = -1;
};

// The socket path dragond uses with this configuration.
std::string socketPathFor(const config::Config& config);

// Runs dragond until it is told to stop; the exit code.
int runDaemon(const DaemonOptions& options);

}  // namespace dragon::daemon
