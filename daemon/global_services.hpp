// SPDX-License-Identifier: MIT
// Global services: the job-wide process table, object names and process groups. On one node
// they live inside the only dragond (LocalGlobalServices); the multi-node issue puts one
// instance on the elected node and makes this interface remote for the others.
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

class GlobalServices {
 public:
  virtual ~GlobalServices() = default;

  virtual std::uint64_t newPuid() = 0;
  virtual std::uint64_t newGroup() = 0;
  virtual std::uint64_t newJob() = 0;

  virtual void addProcess(const ProcessRecord& record) = 0;
  virtual void processExited(std::uint64_t puid, int exitCode, int signal) = 0;
  // Forgets exited processes of a job that has ended.
  virtual void forgetJob(std::uint64_t job) = 0;
  virtual const ProcessRecord* findProcess(std::uint64_t puid) const = 0;
  virtual std::vector<ProcessRecord> listProcesses() const = 0;
  virtual std::vector<std::uint64_t> groupMembers(std::uint64_t group) const = 0;

  // Names: AlreadyExists when taken, NotFound when absent.
  virtual Status registerName(std::string_view name, const ObjectDescriptor& object) = 0;
  virtual Result<ObjectDescriptor> lookupName(std::string_view name) const = 0;
  // Drops every name of the object; true if it had one.
  virtual bool dropNamesOf(std::uint64_t objectId) = 0;
  // Drops the name if it still names `object`; true if it did.
  virtual bool dropName(std::string_view name, const ObjectDescriptor& object) = 0;
  virtual bool isNamed(std::uint64_t objectId) const = 0;
  virtual std::vector<std::string> namesOf(std::uint64_t objectId) const = 0;

  virtual std::string dump() const = 0;
};

class LocalGlobalServices final : public GlobalServices {
 public:
  explicit LocalGlobalServices(std::uint32_t node) : node_(node) {}

  std::uint64_t newPuid() override { return nextPuid_++; }
  std::uint64_t newGroup() override { return nextGroup_++; }
  std::uint64_t newJob() override { return nextJob_++; }

  void addProcess(const ProcessRecord& record) override;
  void processExited(std::uint64_t puid, int exitCode, int signal) override;
  void forgetJob(std::uint64_t job) override;
  const ProcessRecord* findProcess(std::uint64_t puid) const override;
  std::vector<ProcessRecord> listProcesses() const override;
  std::vector<std::uint64_t> groupMembers(std::uint64_t group) const override;

  Status registerName(std::string_view name, const ObjectDescriptor& object) override;
  Result<ObjectDescriptor> lookupName(std::string_view name) const override;
  bool dropNamesOf(std::uint64_t objectId) override;
  bool dropName(std::string_view name, const ObjectDescriptor& object) override;
  bool isNamed(std::uint64_t objectId) const override;
  std::vector<std::string> namesOf(std::uint64_t objectId) const override;

  std::string dump() const override;
  // Called for every name that goes (dropName, dropNamesOf): the job-wide directory of a
  // multi-node job hears of it.
  void setNameDroppedHook(std::function<void(const std::string&, const ObjectDescriptor&)> hook) {
    nameDropped_ = std::move(hook);
  }

 private:
  std::function<void(const std::string&, const ObjectDescriptor&)> nameDropped_;
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
