// SPDX-License-Identifier: MIT
// This node's registry: its process table, the names of its objects and its process groups,
// read and written synchronously by the managers. The job-wide tables of a multi-node job are
// global services' (global_services.hpp), which hear of every change here through the hooks.
//
// Owning thread: the daemon's event-loop thread.
#pragma once

#include "base/private.hpp"

#include <dragon/descriptor.hpp>
#include <dragon/result.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace dragon::daemon {

struct ProcessRecord {
  std::uint64_t puid = 0;
  pid_t pid = 0;
  std::uint32_t node = 0;
  std::vector<std::string> argv;
  std::string label;
  std::uint64_t group = 0;
  std::uint64_t job = 0;
  bool running = true;
  int exitCode = 0;
  int signal = 0;
};

class NodeRegistry {
 public:
  explicit NodeRegistry(std::uint32_t node) : node_(node) {}

  std::uint64_t newPuid() { return nextPuid_++; }
  std::uint64_t newGroup() { return nextGroup_++; }
  std::uint64_t newJob() { return nextJob_++; }

  void addProcess(const ProcessRecord& record);
  void processExited(std::uint64_t puid, int exitCode, int signal);
  void forgetJob(std::uint64_t job);
  const ProcessRecord* findProcess(std::uint64_t puid) const;
  std::vector<ProcessRecord> listProcesses() const;
  std::vector<std::uint64_t> groupMembers(std::uint64_t group) const;

  Status registerName(std::string_view name, const ObjectDescriptor& object);
  Result<ObjectDescriptor> lookupName(std::string_view name) const;
  bool dropNamesOf(std::uint64_t objectId);
  bool dropName(std::string_view name, const ObjectDescriptor& object);
  bool isNamed(std::uint64_t objectId) const;
  std::vector<std::string> namesOf(std::uint64_t objectId) const;

  std::string dump() const;
  // Called for every name that goes (dropName, dropNamesOf): the job-wide directory of a
  // multi-node job hears of it.
  void setNameDroppedHook(std::function<void(const std::string&, const ObjectDescriptor&)> hook) {
    nameDropped_ = std::move(hook);
  }
  // Called for every process added and every exit recorded: the job-wide process table of a
  // multi-node job hears of them.
  void setProcessHooks(std::function<void(const ProcessRecord&)> added,
                       std::function<void(const ProcessRecord&)> exited) {
    processAdded_ = std::move(added);
    processExited_ = std::move(exited);
  }

 private:
  std::function<void(const std::string&, const ObjectDescriptor&)> nameDropped_;
  std::function<void(const ProcessRecord&)> processAdded_;
  std::function<void(const ProcessRecord&)> processExited_;
  std::uint32_t node_;
  // puids start high in the node's range so that a puid names its node (multi-node issue).
  std::uint64_t nextPuid_ = (std::uint64_t{node_} << 40) + 1;
  // Groups too: a group id names the node its processes are on (groups are per node).
  std::uint64_t nextGroup_ = (std::uint64_t{node_} << 40) + 1;
  std::uint64_t nextJob_ = 1;
  std::map<std::uint64_t, ProcessRecord> processes_;
  std::map<std::uint64_t, std::vector<std::uint64_t>> groups_;
  std::map<std::string, ObjectDescriptor, std::less<>> names_;
};

}  // namespace dragon::daemon
