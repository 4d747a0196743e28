// SPDX-License-Identifier: MIT
// The node's processes: spawned with posix_spawn (vfork semantics, no shell in between), each
// in its own process group, watched through a pidfd, reaped with waitid(P_PIDFD). Captured
// stdout/stderr is cut into lines and handed to the job's output sink; a process counts as
// finished once it has exited and its pipes are drained (or a second after it exited, when a
// descendant still holds them), so no line is lost and its last lines come before its exit.
//
// Adopted processes: a client's own child that it registers (the Python template's children,
// forked from a spare). dragond cannot reap what it did not start: its pidfd says when the
// process ends, and the adopter, which reaps it, reports its status (reportExit). That report
// is the one record of the status. If the adopter goes first, the status is lost: the end is
// recorded with exit code 255 (kLostExitCode).
//
// Jobs: every process belongs to a job (the launcher's connection, or whichever client started
// it from outside the runtime). Ending a job terminates its processes: SIGTERM to each process
// group, SIGKILL after the grace period.
//
// Owning thread: the daemon's event-loop thread.
#pragma once

#include "base/private.hpp"
#include "daemon/event_loop.hpp"
#include "daemon/node_registry.hpp"
#include "daemon/line_splitter.hpp"

#include <dragon/result.hpp>
#include <dragon/unique_fd.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "dragon.pb.h"

namespace dragon::daemon {

struct ExitRecord {
  std::uint64_t puid = 0;
  int exitCode = 0;
  int signal = 0;
};

// The parent of pid, from /proc/PID/stat, or 0 when it cannot be read.
pid_t parentOf(pid_t pid);

class ProcessManager {
 public:
  // Delivers one captured line to a job's launcher; returns true when that connection's
  // backlog is high, so the job's pipes pause until resumeOutput(job).
  using OutputSink = std::function<bool(std::uint64_t job, const protocol::Envelope& line)>;
  using WaitDone = std::function<void(Result<std::vector<ExitRecord>>)>;

  ProcessManager(EventLoop& loop, NodeRegistry& global, std::uint32_t node,
                 std::int64_t killGraceNs, OutputSink sink)
      : loop_(loop), registry_(global), node_(node), killGraceNs_(killGraceNs),
        sink_(std::move(sink)) {}
  ~ProcessManager();

  struct Spawned {
    std::vector<std::uint64_t> puids;
    std::vector<pid_t> pids;
    std::uint64_t group = 0;
  };
  // `passed` holds the requester's fds for PASSED streams, in stdin, stdout, stderr order.
  // A group of this node must have members here; another node's group (a multi-node job's
  // groups span nodes) is taken as the server gives it, which checked it with global services,
  // once the server allows them (on one node there are none).
  Result<Spawned> spawn(const protocol::Spawn& request, std::uint64_t job,
                        std::vector<UniqueFd>& passed);
  // Calls `done` once every process in `puids` has finished, or with Timeout at the deadline
  // (timeoutNs < 0: none). NotFound at once for an unknown puid.
  void wait(const std::vector<std::uint64_t>& puids, std::int64_t timeoutNs, WaitDone done);
  Status signal(const std::vector<std::uint64_t>& puids, int sig);
  Status signalGroup(std::uint64_t group, int sig);
  void allowGroupsOfOtherNodes() { groupsOfOtherNodes_ = true; }

  // Terminates the job's processes (SIGTERM, SIGKILL after the grace period) and calls `done`
  // when all have finished; forgets them then. `done` may be empty.
  void endJob(std::uint64_t job, std::function<void()> done, bool now = false);
  // endJob for every job (shutdown).
  void endAll(std::function<void()> done);
  void resumeOutput(std::uint64_t job);

  // The adopter's own child request.pid() joins the table, in `job`; adopterPid is the
  // requesting connection's peer pid, `adopter` its id; `fds`, what came with the request (the
  // read ends of its captured output, stdout's first). Its puid.
  Result<std::uint64_t> adopt(const protocol::Adopt& request, pid_t adopterPid,
                              std::uint64_t adopter, std::uint64_t job,
                              std::vector<UniqueFd>& fds);
  // From the adopter: an idle adopted process now runs (it is listed from now on).
  Status adoptedStarted(std::uint64_t adopter, std::uint64_t puid, const std::string& label);
  // From the adopter, which reaped it: how an adopted process ended.
  Status reportExit(std::uint64_t adopter, std::uint64_t puid, int exitCode, int signal);
  // The connection `adopter` closed: its adopted processes' statuses can no longer come.
  void adopterGone(std::uint64_t adopter);

  // The job of a running process of this node with this pid, or 0.
  std::uint64_t jobOfPid(pid_t pid) const;
  // The job of pid or of its nearest ancestor that is a running process of this node (a
  // process that one of ours forked, as the Python template does, acts in its job), or 0.
  std::uint64_t jobOfPidOrAncestor(pid_t pid) const;
  std::string dump() const;

 private:
  // How long an ended process's output is still read while a descendant holds its pipes.
  static constexpr std::int64_t kDrainAfterExitNs = 1'000'000'000;
  struct Stream {
    UniqueFd fd;
    LineSplitter lines;
    bool isStderr = false;
    bool paused = false;
  };
  struct Process {
    std::uint64_t puid = 0;
    pid_t pid = 0;
    std::uint64_t job = 0;
    std::string label;
    UniqueFd pidfd;
    std::unique_ptr<Stream> out, err;
    bool exited = false;
    bool finished = false;
    int exitCode = 0;
    int signal = 0;
    EventLoop::TimerId drainTimer = 0;
    // Adopted (not our child): the connection that adopted it and reports its status (0 once
    // that connection has gone); `gone` once its pidfd said it ended; `idle` until it runs
    // something, with the argv it is listed with then.
    bool adopted = false;
    std::uint64_t adopter = 0;
    bool gone = false;
    bool idle = false;
    std::vector<std::string> argv;
  };
  struct Waiter {
    std::vector<std::uint64_t> puids;
    WaitDone done;
    EventLoop::TimerId timer = 0;
  };
  struct Ending {
    std::vector<std::function<void()>> done;
    EventLoop::TimerId killTimer = 0;
  };

  Result<pid_t> spawnOne(const protocol::Spawn& request, std::vector<UniqueFd>& passed,
                         UniqueFd& outRead, UniqueFd& errRead);
  void watch(Process& p);
  void onExit(std::uint64_t puid);
  void onAdoptedEnd(Process& p);
  Result<Process*> adoptedBy(std::uint64_t adopter, std::uint64_t puid);
  void recordExit(Process& p, int exitCode, int signal);
  void forgetPid(const Process& p);
  void onOutput(std::uint64_t puid, bool isStderr);
  void closeStream(Process& p, bool isStderr);
  void emit(Process& p, bool isStderr, std::string_view line);
  void maybeFinish(Process& p);
  void finished(Process& p);
  void checkWaiters();
  void checkEnding(std::uint64_t job);
  void killJob(std::uint64_t job, int sig);

  EventLoop& loop_;
  NodeRegistry& registry_;
  bool groupsOfOtherNodes_ = false;
  std::uint32_t node_;
  std::int64_t killGraceNs_;
  OutputSink sink_;
  std::map<std::uint64_t, Process> processes_;  // by puid, until their job ends
  std::map<pid_t, std::uint64_t> byPid_;        // running ones
  std::map<std::uint64_t, Waiter> waiters_;
  std::uint64_t nextWaiter_ = 1;
  std::map<std::uint64_t, Ending> ending_;      // by job
  std::set<std::uint64_t> pausedJobs_;
};

}  // namespace dragon::daemon
