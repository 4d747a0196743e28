// SPDX-License-Identifier: MIT
// Child processes for multi-process tests: fork a function, wait for it with a deadline
// (pidfd + poll, never a sleep), and kill whatever is left when a test fails early.
#pragma once

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace dragon::testing {

// Runs fn() in a forked child that exits with its return value (never returns in the child).
inline pid_t forkChild(const std::function<int()>& fn) {
  pid_t pid = fork();
  if (pid == 0) {
    int rc = 1;
    try {
      rc = fn();
    } catch (...) {
      rc = 99;
    }
    _exit(rc);
  }
  return pid;
}

// Waits until `pid` exits or `timeout` passes; returns the wait status, or -1 on timeout (the
// child is then killed and reaped, so no test leaves a process behind).
inline int waitFor(pid_t pid, std::chrono::milliseconds timeout) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) {
    pollfd p{pidfd, POLLIN, 0};
    int rc = poll(&p, 1, static_cast<int>(timeout.count()));
    close(pidfd);
    if (rc == 0) {
      kill(pid, SIGKILL);
      int st = 0;
      waitpid(pid, &st, 0);
      return -1;
    }
  }
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) {
    return -1;
  }
  return st;
}

// Exit code of a child that exited normally, or -1.
inline int exitCodeOf(int status) { return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

// Kills and reaps every child still registered when it goes out of scope.
class ChildReaper {
 public:
  ~ChildReaper() {
    for (pid_t p : pids_) {
      kill(p, SIGKILL);
      int st = 0;
      waitpid(p, &st, 0);
    }
  }
  pid_t add(pid_t p) {
    pids_.push_back(p);
    return p;
  }
  void forget(pid_t p) { std::erase(pids_, p); }

 private:
  std::vector<pid_t> pids_;
};

}  // namespace dragon::testing
