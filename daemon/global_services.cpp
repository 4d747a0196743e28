// SPDX-License-Identifier: MIT
#include "daemon/global_services.hpp"

#include "protocol/socket_io.hpp"

#include <algorithm>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

Status answerStatus(const Result<pb::Envelope>& r) {
  if (!r.has_value()) return r.error();
  if (r->has_error()) return pb::statusFromError(r->error());
  return Status::ok();
}

pb::Envelope errorEnvelope(const Status& st) {
  pb::Envelope e;
  pb::fillError(*e.mutable_error(), st);
  return e;
}

}  // namespace

pb::ProcessEntry toEntry(const ProcessRecord& r) {
  pb::ProcessEntry e;
  e.set_puid(r.puid);
  e.set_pid(r.pid);
  e.set_state(r.running ? pb::ProcessEntry::RUNNING : pb::ProcessEntry::EXITED);
  for (const auto& a : r.argv) e.add_argv(a);
  e.set_exit_code(r.exitCode);
  e.set_signal(r.signal);
  e.set_group(r.group);
  e.set_job(r.job);
  e.set_label(r.label);
  e.set_node(r.node);
  return e;
}

ProcessRecord fromEntry(const pb::ProcessEntry& e) {
  ProcessRecord r;
  r.puid = e.puid();
  r.pid = e.pid();
  r.node = e.node();
  r.argv.assign(e.argv().begin(), e.argv().end());
  r.label = e.label();
  r.group = e.group();
  r.job = e.job();
  r.running = e.state() == pb::ProcessEntry::RUNNING;
  r.exitCode = e.exit_code();
  r.signal = e.signal();
  return r;
}

// ---- HostedGlobalServices ----

HostedGlobalServices::HostedGlobalServices(std::map<std::uint32_t, std::uint32_t> cpusByNode) {
  for (const auto& [node, cpus] : cpusByNode) placement_[node].weight = std::max<std::uint32_t>(cpus, 1);
}

void HostedGlobalServices::place(Placed done) {
  std::int64_t total = 0;
  auto best = placement_.end();
  for (auto it = placement_.begin(); it != placement_.end(); ++it) {
    total += it->second.weight;
    it->second.credit += it->second.weight;
    if (best == placement_.end() || it->second.credit > best->second.credit) best = it;
  }
  if (best == placement_.end()) {
    done(Status(StatusCode::NotFound, "no node is left to place a process on"));
    return;
  }
  best->second.credit -= total;
  done(best->first);
}

Status HostedGlobalServices::claim(const std::string& name, const ObjectDescriptor& object,
                                   bool replace) {
  if (name.empty() || name.size() > 255) {
    return Status(StatusCode::InvalidArgument, "a name has 1 to 255 bytes");
  }
  auto [it, inserted] = names_.try_emplace(name, object);
  if (inserted || it->second == object) return Status::ok();
  if (replace && it->second.node == object.node) {
    it->second = object;
    return Status::ok();
  }
  return Status(StatusCode::AlreadyExists, "the name '" + name + "' is taken (by an object of node " +
                                               std::to_string(it->second.node) + ")");
}

void HostedGlobalServices::claimName(const std::string& name, const ObjectDescriptor& object,
                                     bool replace, Done done) {
  done(claim(name, object, replace));
}

void HostedGlobalServices::releaseName(const std::string& name, const ObjectDescriptor& object) {
  auto it = names_.find(name);
  if (it != names_.end() && it->second == object) names_.erase(it);
}

void HostedGlobalServices::lookupName(const std::string& name, Found done) {
  auto it = names_.find(name);
  if (it == names_.end()) {
    done(Status(StatusCode::NotFound, "no object is named '" + name + "'"));
  } else {
    done(it->second);
  }
}

void HostedGlobalServices::processStarted(const ProcessRecord& record) {
  processes_[{record.node, record.puid}] = record;
}

void HostedGlobalServices::processEnded(const ProcessRecord& record) {
  // An end without its start (told before the start reached here cannot happen: one node's
  // calls keep their order) still records what is known.
  auto& r = processes_[{record.node, record.puid}];
  r = record;
  r.running = false;
}

std::vector<ProcessRecord> HostedGlobalServices::select(std::uint64_t group) const {
  std::vector<ProcessRecord> out;
  for (const auto& [key, r] : processes_) {
    if (group == 0 || r.group == group) out.push_back(r);
  }
  return out;
}

void HostedGlobalServices::listProcesses(Listed done) { done(select(0)); }

void HostedGlobalServices::listGroup(std::uint64_t group, Listed done) {
  done(group == 0 ? std::vector<ProcessRecord>{} : select(group));
}

void HostedGlobalServices::nodeLost(std::uint32_t node) {
  std::erase_if(names_, [node](const auto& kv) { return kv.second.node == node; });
  std::erase_if(processes_, [node](const auto& kv) { return kv.first.first == node; });
  placement_.erase(node);
}

bool HostedGlobalServices::serve(const pb::Envelope& request, pb::Envelope& reply) {
  if (!answer(request, reply)) return false;
  if (reply.body_case() == pb::Envelope::BODY_NOT_SET) reply.mutable_ok();  // every answer says something
  return true;
}

bool HostedGlobalServices::answer(const pb::Envelope& request, pb::Envelope& reply) {
  switch (request.body_case()) {
    case pb::Envelope::kNameClaim: {
      auto d = pb::fromRef(request.name_claim().object());
      Status st = d.has_value()
                      ? claim(request.name_claim().name(), *d, request.name_claim().replace())
                      : d.error();
      if (!st.isOk()) reply = errorEnvelope(st);
      return true;
    }
    case pb::Envelope::kNameRelease: {
      auto d = pb::fromRef(request.name_release().object());
      if (d.has_value()) releaseName(request.name_release().name(), *d);
      return true;
    }
    case pb::Envelope::kLookupName: {
      auto it = names_.find(request.lookup_name().name());
      if (it == names_.end()) {
        reply = errorEnvelope(Status(StatusCode::NotFound, "no object is named '" +
                                                               request.lookup_name().name() + "'"));
      } else {
        *reply.mutable_object()->mutable_object() = pb::toRef(it->second);
      }
      return true;
    }
    case pb::Envelope::kProcessStarted:
      processStarted(fromEntry(request.process_started()));
      return true;
    case pb::Envelope::kProcessEnded:
      processEnded(fromEntry(request.process_ended()));
      return true;
    case pb::Envelope::kPlace:
      place([&reply](Result<std::uint32_t> node) {
        if (node.has_value()) {
          reply.mutable_placed()->set_node(*node);
        } else {
          reply = errorEnvelope(node.error());
        }
      });
      return true;
    case pb::Envelope::kListProcesses: {
      if (request.list_processes().this_node_only()) return false;
      auto* list = reply.mutable_process_list();
      for (const auto& r : select(request.list_processes().group())) *list->add_process() = toEntry(r);
      return true;
    }
    default:
      return false;
  }
}

std::string HostedGlobalServices::dump() const {
  std::size_t running = 0;
  for (const auto& [key, r] : processes_) running += r.running ? 1 : 0;
  std::string out = "global services (hosted here): " + std::to_string(names_.size()) +
                    " names, " + std::to_string(processes_.size()) + " processes (" +
                    std::to_string(running) + " running)";
  for (const auto& [name, d] : names_) out += "\n  name '" + name + "' -> " + d.toString();
  return out;
}

// ---- RemoteGlobalServices ----

void RemoteGlobalServices::send(pb::Envelope request) {
  ++sent_;
  forward_(std::move(request), [](Result<pb::Envelope>) {});
}

void RemoteGlobalServices::askStatus(pb::Envelope request, Done done) {
  ++sent_;
  forward_(std::move(request), [done = std::move(done)](Result<pb::Envelope> r) {
    done(answerStatus(r));
  });
}

template <typename T, typename Extract>
void RemoteGlobalServices::ask(pb::Envelope request, std::function<void(Result<T>)> done,
                               pb::Envelope::BodyCase expected, const char* what,
                               Extract extract) {
  ++sent_;
  forward_(std::move(request), [done = std::move(done), expected, what,
                                extract = std::move(extract)](Result<pb::Envelope> r) {
    Status st = answerStatus(r);
    if (!st.isOk()) {
      done(st);
    } else if (r->body_case() != expected) {
      done(Status(StatusCode::Internal, std::string("unexpected answer to ") + what));
    } else {
      done(extract(*r));
    }
  });
}

void RemoteGlobalServices::claimName(const std::string& name, const ObjectDescriptor& object,
                                     bool replace, Done done) {
  pb::Envelope req;
  auto* claim = req.mutable_name_claim();
  claim->set_name(name);
  *claim->mutable_object() = pb::toRef(object);
  claim->set_replace(replace);
  askStatus(std::move(req), std::move(done));
}

void RemoteGlobalServices::releaseName(const std::string& name, const ObjectDescriptor& object) {
  pb::Envelope req;
  req.mutable_name_release()->set_name(name);
  *req.mutable_name_release()->mutable_object() = pb::toRef(object);
  send(std::move(req));
}

void RemoteGlobalServices::lookupName(const std::string& name, Found done) {
  pb::Envelope req;
  req.mutable_lookup_name()->set_name(name);
  ask<ObjectDescriptor>(std::move(req), std::move(done), pb::Envelope::kObject, "a name lookup",
                        [](const pb::Envelope& e) { return pb::fromRef(e.object().object()); });
}

void RemoteGlobalServices::processStarted(const ProcessRecord& record) {
  pb::Envelope req;
  *req.mutable_process_started() = toEntry(record);
  send(std::move(req));
}

void RemoteGlobalServices::processEnded(const ProcessRecord& record) {
  pb::Envelope req;
  *req.mutable_process_ended() = toEntry(record);
  send(std::move(req));
}

void RemoteGlobalServices::listProcesses(Listed done) { list(0, std::move(done)); }

void RemoteGlobalServices::listGroup(std::uint64_t group, Listed done) {
  if (group == 0) {
    done(std::vector<ProcessRecord>{});
    return;
  }
  list(group, std::move(done));
}

void RemoteGlobalServices::list(std::uint64_t group, Listed done) {
  pb::Envelope req;
  req.mutable_list_processes()->set_this_node_only(false);
  req.mutable_list_processes()->set_group(group);
  ask<std::vector<ProcessRecord>>(
      std::move(req), std::move(done), pb::Envelope::kProcessList, "a process list",
      [](const pb::Envelope& e) {
        std::vector<ProcessRecord> out;
        out.reserve(static_cast<std::size_t>(e.process_list().process_size()));
        for (const auto& p : e.process_list().process()) out.push_back(fromEntry(p));
        return out;
      });
}

void RemoteGlobalServices::place(Placed done) {
  pb::Envelope req;
  req.mutable_place();
  ask<std::uint32_t>(std::move(req), std::move(done), pb::Envelope::kPlaced, "a placement",
                     [](const pb::Envelope& e) { return e.placed().node(); });
}

void RemoteGlobalServices::sync(Done done) {
  // The cheapest request the tables answer: a lookup of a name no object can have.
  pb::Envelope req;
  req.mutable_lookup_name()->set_name("");
  askStatus(std::move(req), [done = std::move(done)](Status st) {
    done(st.code() == StatusCode::NotFound ? Status::ok() : st);
  });
}

std::string RemoteGlobalServices::dump() const {
  return "global services (on node " + std::to_string(globalNode_) + "): " +
         std::to_string(sent_) + " requests sent";
}

}  // namespace dragon::daemon
