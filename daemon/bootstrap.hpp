// SPDX-License-Identifier: MIT
// The Bootstrap seam: how the launchers of a multi-node job learn about each other before any
// dragond can talk to another. The PMIx implementation is a loadable module (pmix_plugin/
// builds dragon-bootstrap-pmix.so, exporting one versioned `extern "C"` info symbol) so that
// dragon runs, and says so clearly, on a machine without PMIx; without a PMIx server the
// launcher runs standalone (one node) and loads nothing.
//
// Used by the launcher only, on its main thread.
#pragma once

#include "base/private.hpp"

#include <dragon/result.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace dragon::bootstrap {

inline constexpr std::uint32_t kAbiVersion = 1;

// What the bootstrap says about this process and its job.
struct JobFacts {
  std::string job;              // the job's name (PMIx namespace)
  std::uint32_t rank = 0;       // this launcher, 0 .. size-1
  std::uint32_t size = 1;
  std::uint32_t localRank = 0;  // among the launchers on this node
  std::uint32_t localSize = 1;
  std::uint32_t nodeId = 0;     // this node, 0 .. nodeCount-1
  std::uint32_t nodeCount = 1;
  std::string hostname;
  std::uint32_t cpus = 1;       // CPUs the job was granted on this node
};

class Bootstrap {
 public:
  virtual ~Bootstrap() = default;
  virtual std::string_view name() const = 0;
  virtual const JobFacts& facts() const = 0;
  // Publishes `value` under `key` for every rank, after the next exchange().
  virtual Status put(std::string_view key, std::string_view value) = 0;
  // Commits what was put and waits (collectively, every rank) until every rank's values are
  // here: the one collective of the wire-up. Timeout after `timeoutNs`.
  virtual Status exchange(std::int64_t timeoutNs) = 0;
  // A value `rank` published before the last exchange(); NotFound if it published none.
  virtual Result<std::string> get(std::uint32_t rank, std::string_view key) = 0;
  // Ends the whole job at once (every rank), with `code`.
  virtual void abort(int code, std::string_view message) = 0;
};

// What a bootstrap module exports, as
// `extern "C" const dragon::bootstrap::BootstrapModule* dragon_bootstrap_module_v1(void)`.
struct BootstrapModule {
  std::uint32_t abiVersion;
  const char* name;
  // Connects to the bootstrap server (PMIx_Init) and reads the job facts.
  std::unique_ptr<Bootstrap> (*create)(Status& error);
};

inline constexpr const char* kBootstrapModuleSymbol = "dragon_bootstrap_module_v1";

}  // namespace dragon::bootstrap
