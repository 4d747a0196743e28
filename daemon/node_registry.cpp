// SPDX-License-Identifier: MIT
#include "daemon/node_registry.hpp"

#include <algorithm>

namespace dragon::daemon {

void NodeRegistry::addProcess(const ProcessRecord& record) {
  processes_[record.puid] = record;
  if (record.group != 0) {
    groups_[record.group].push_back(record.puid);
  }
  if (processAdded_) processAdded_(record);
}

void NodeRegistry::processExited(std::uint64_t puid, int exitCode, int signal) {
  auto it = processes_.find(puid);
  if (it != processes_.end()) {
    it->second.running = false;
    it->second.exitCode = exitCode;
    it->second.signal = signal;
    if (processExited_) processExited_(it->second);
  }
}

void NodeRegistry::forgetJob(std::uint64_t job) {
  for (auto it = processes_.begin(); it != processes_.end();) {
    if (it->second.job == job && !it->second.running) {
      if (it->second.group != 0) {
        auto g = groups_.find(it->second.group);
        if (g != groups_.end()) {
          std::erase(g->second, it->first);
          if (g->second.empty()) groups_.erase(g);
        }
      }
      it = processes_.erase(it);
    } else {
      ++it;
    }
  }
}

const ProcessRecord* NodeRegistry::findProcess(std::uint64_t puid) const {
  auto it = processes_.find(puid);
  return it == processes_.end() ? nullptr : &it->second;
}

std::vector<ProcessRecord> NodeRegistry::listProcesses() const {
  std::vector<ProcessRecord> out;
  out.reserve(processes_.size());
  for (const auto& [puid, r] : processes_) out.push_back(r);
  return out;
}

std::vector<std::uint64_t> NodeRegistry::groupMembers(std::uint64_t group) const {
  auto it = groups_.find(group);
  return it == groups_.end() ? std::vector<std::uint64_t>{} : it->second;
}

Status NodeRegistry::registerName(std::string_view name, const ObjectDescriptor& object) {
  if (name.empty() || name.size() > 255) {
    return Status(StatusCode::InvalidArgument, "a name has 1 to 255 bytes");
  }
  auto [it, inserted] = names_.try_emplace(std::string(name), object);
  if (!inserted) {
    if (it->second == object) {
      return Status::ok();
    }
    return Status(StatusCode::AlreadyExists, "the name '" + std::string(name) + "' is taken");
  }
  return Status::ok();
}

Result<ObjectDescriptor> NodeRegistry::lookupName(std::string_view name) const {
  auto it = names_.find(name);
  if (it == names_.end()) {
    return Status(StatusCode::NotFound, "no object is named '" + std::string(name) + "'");
  }
  return it->second;
}

bool NodeRegistry::dropNamesOf(std::uint64_t objectId) {
  return std::erase_if(names_, [&](const auto& kv) {
           if (kv.second.id != objectId) return false;
           if (nameDropped_) nameDropped_(kv.first, kv.second);
           return true;
         }) != 0;
}

bool NodeRegistry::dropName(std::string_view name, const ObjectDescriptor& object) {
  auto it = names_.find(name);
  if (it == names_.end() || !(it->second == object)) {
    return false;
  }
  if (nameDropped_) nameDropped_(it->first, it->second);
  names_.erase(it);
  return true;
}

bool NodeRegistry::isNamed(std::uint64_t objectId) const {
  return std::any_of(names_.begin(), names_.end(),
                     [&](const auto& kv) { return kv.second.id == objectId; });
}

std::vector<std::string> NodeRegistry::namesOf(std::uint64_t objectId) const {
  std::vector<std::string> out;
  for (const auto& [name, d] : names_) {
    if (d.id == objectId) out.push_back(name);
  }
  return out;
}

std::string NodeRegistry::dump() const {
  std::size_t running = 0;
  for (const auto& [puid, r] : processes_) running += r.running ? 1 : 0;
  std::string out = "node registry (node " + std::to_string(node_) + "): " +
                    std::to_string(processes_.size()) + " processes (" +
                    std::to_string(running) + " running), " + std::to_string(groups_.size()) +
                    " groups, " + std::to_string(names_.size()) + " names";
  for (const auto& [name, d] : names_) {
    out += "\n  name '" + name + "' -> " + d.toString();
  }
  return out;
}

}  // namespace dragon::daemon
