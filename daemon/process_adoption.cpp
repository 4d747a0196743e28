// SPDX-License-Identifier: MIT
// ProcessManager's adopted processes: a client's own children (a Python template's), put in
// the process table by their parent, which reaps them and reports how they ended.
#include "daemon/process_manager.hpp"

#include "base/log.hpp"

#include <csignal>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

// The exit code recorded for an adopted process whose adopter went before reporting its end.
constexpr int kLostExitCode = 255;

}  // namespace

Result<std::uint64_t> ProcessManager::adopt(const pb::Adopt& req, pid_t adopterPid,
                                            std::uint64_t adopter, std::uint64_t job,
                                            std::vector<UniqueFd>& fds) {
  const pid_t pid = req.pid();
  if (pid <= 0) {
    return Status(StatusCode::InvalidArgument, "adopt needs a pid");
  }
  for (const auto& a : req.argv()) {
    if (a.find('\0') != std::string::npos) {
      return Status(StatusCode::InvalidArgument, "an argument holds a NUL byte");
    }
  }
  const std::size_t pipes = (req.capture_stdout() ? 1 : 0) + (req.capture_stderr() ? 1 : 0);
  if (fds.size() < pipes) {
    return Status(StatusCode::InvalidArgument,
                  "an adopt that captures output came without the read ends of its pipes");
  }
  for (std::size_t i = 0; i < pipes; ++i) {
    struct stat st {};
    const int flags = fcntl(fds[i].get(), F_GETFL);
    if (fstat(fds[i].get(), &st) != 0 || !S_ISFIFO(st.st_mode) || flags < 0 ||
        (flags & O_ACCMODE) != O_RDONLY) {
      return Status(StatusCode::InvalidArgument,
                    "the captured output of an adopted process must be the read end of a pipe");
    }
  }
  if (byPid_.count(pid) != 0) {
    return Status(StatusCode::AlreadyExists,
                  "process " + std::to_string(pid) + " is already in the process table");
  }
  // The pidfd first, then the parent check: the adopter does not reap the process before our
  // reply, so the pid cannot name another process in between.
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) {
    if (errno == ESRCH) return Status(StatusCode::NotFound, "no process " + std::to_string(pid));
    return Status::fromErrno("pidfd_open", errno);
  }
  // Only its parent may adopt it: the parent is the one that can reap it and report its end,
  // and no client may put another's processes in its job.
  if (adopterPid <= 0 || parentOf(pid) != adopterPid) {
    return Status(StatusCode::PermissionDenied,
                  "process " + std::to_string(pid) + " is not the requester's child");
  }
  Process p;
  p.puid = registry_.newPuid();
  p.pid = pid;
  p.job = job;
  p.pidfd = std::move(pidfd);
  p.adopted = true;
  p.adopter = adopter;
  p.idle = req.idle();
  p.argv.assign(req.argv().begin(), req.argv().end());
  std::size_t next = 0;
  for (const bool isStderr : {false, true}) {
    if (!(isStderr ? req.capture_stderr() : req.capture_stdout())) continue;
    auto s = std::make_unique<Stream>();
    s->fd = std::move(fds[next++]);
    s->isStderr = isStderr;
    (void)fcntl(s->fd.get(), F_SETFL, fcntl(s->fd.get(), F_GETFL) | O_NONBLOCK);
    (isStderr ? p.err : p.out) = std::move(s);
  }
  if (!p.idle) {
    ProcessRecord rec;
    rec.puid = p.puid;
    rec.pid = p.pid;
    rec.node = node_;
    rec.argv = std::move(p.argv);
    rec.job = job;
    registry_.addProcess(rec);
  }
  const std::uint64_t puid = p.puid;
  byPid_[pid] = puid;
  watch(processes_[puid] = std::move(p));
  return puid;
}

Result<ProcessManager::Process*> ProcessManager::adoptedBy(std::uint64_t adopter,
                                                           std::uint64_t puid) {
  auto it = processes_.find(puid);
  if (it == processes_.end() || !it->second.adopted) {
    return Status(StatusCode::NotFound, "no adopted process with puid " + std::to_string(puid));
  }
  if (it->second.adopter != adopter) {
    return Status(StatusCode::PermissionDenied,
                  "puid " + std::to_string(puid) + " was adopted by another client");
  }
  return &it->second;
}

Status ProcessManager::adoptedStarted(std::uint64_t adopter, std::uint64_t puid,
                                      const std::string& label) {
  DRAGON_ASSIGN_OR_RETURN(Process * p, adoptedBy(adopter, puid));
  if (!p->idle) {
    return Status(StatusCode::InvalidArgument, "puid " + std::to_string(puid) + " already runs");
  }
  p->idle = false;
  p->label = label;
  ProcessRecord rec;
  rec.puid = p->puid;
  rec.pid = p->pid;
  rec.node = node_;
  rec.argv = std::move(p->argv);
  rec.label = label;
  rec.job = p->job;
  rec.running = !p->finished;
  rec.exitCode = p->exitCode;
  rec.signal = p->signal;
  registry_.addProcess(rec);
  return Status::ok();
}

Status ProcessManager::reportExit(std::uint64_t adopter, std::uint64_t puid, int exitCode,
                                  int signal) {
  // As waitid() reports it: a code of 0-255, or a signal (never both).
  if (exitCode < 0 || exitCode > 255 || signal < 0 || signal >= NSIG ||
      (signal != 0 && exitCode != 0)) {
    return Status(StatusCode::InvalidArgument, "not an exit status: code " +
                                                   std::to_string(exitCode) + ", signal " +
                                                   std::to_string(signal));
  }
  DRAGON_ASSIGN_OR_RETURN(Process * p, adoptedBy(adopter, puid));
  if (p->finished || p->exited) {
    return Status(StatusCode::InvalidArgument, "puid " + std::to_string(puid) + " has ended");
  }
  // It may be reported before its pidfd's readiness is handled: the report is the end.
  if (p->pidfd) {
    loop_.remove(p->pidfd.get());
    p->pidfd.reset();
  }
  p->gone = true;
  forgetPid(*p);
  recordExit(*p, exitCode, signal);  // may forget it (its job ended): not used after this
  return Status::ok();
}

void ProcessManager::onAdoptedEnd(Process& p) {
  // Not our child: the pidfd says it ended, its status comes from its adopter.
  loop_.remove(p.pidfd.get());
  p.pidfd.reset();
  p.gone = true;
  forgetPid(p);
  if (p.adopter == 0 && !p.finished) {
    DRAGON_LOG(Debug, "processes", "puid %llu (pid %d) ended after its adopter: status lost",
               static_cast<unsigned long long>(p.puid), p.pid);
    recordExit(p, kLostExitCode, 0);
  }
}

void ProcessManager::adopterGone(std::uint64_t adopter) {
  std::vector<std::uint64_t> lost;
  std::size_t orphans = 0;
  for (auto& [puid, p] : processes_) {
    if (!p.adopted || p.adopter != adopter || p.finished) continue;
    p.adopter = 0;
    if (p.exited) continue;  // its end was reported; its output is still being read
    if (!p.idle) ++orphans;  // an unused spare ran nothing of the program: its end is no loss
    if (p.gone) lost.push_back(puid);  // the others are recorded when their pidfd says so
  }
  if (orphans == 0 && lost.empty()) return;
  if (orphans != 0) {
    DRAGON_LOG(Warn, "processes",
               "connection %llu went before reporting the end of %zu process(es) it adopted: "
               "their exit status is lost and reads %d",
               static_cast<unsigned long long>(adopter), orphans, kLostExitCode);
  }
  // One at a time, looked up again: recording an end may end a job and forget its records.
  for (auto puid : lost) {
    auto it = processes_.find(puid);
    if (it != processes_.end() && !it->second.finished) {
      recordExit(it->second, kLostExitCode, 0);
    }
  }
}

void ProcessManager::recordExit(Process& p, int exitCode, int signal) {
  p.exited = true;
  p.exitCode = exitCode;
  p.signal = signal;
  DRAGON_LOG(Debug, "processes", "adopted puid %llu (pid %d) ended: code %d signal %d",
             static_cast<unsigned long long>(p.puid), p.pid, exitCode, signal);
  if (p.out || p.err) {
    // As for a spawned process (onExit): its output is read to its end first, for at most the
    // grace a descendant that still holds its pipes gets.
    const std::uint64_t puid = p.puid;
    p.drainTimer = loop_.addTimerAfterNs(kDrainAfterExitNs, [this, puid] {
      auto f = processes_.find(puid);
      if (f != processes_.end()) {
        f->second.drainTimer = 0;
        if (!f->second.finished) finished(f->second);
      }
    });
    return;
  }
  finished(p);
}

void ProcessManager::forgetPid(const Process& p) {
  // Only its own entry: once reaped, its pid may already be another process's.
  auto it = byPid_.find(p.pid);
  if (it != byPid_.end() && it->second == p.puid) byPid_.erase(it);
}

}  // namespace dragon::daemon
