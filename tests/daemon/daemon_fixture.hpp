// SPDX-License-Identifier: MIT
// A real dragond for integration tests: started on a socket in a fresh private directory,
// awaited through its --ready-fd, stopped with SIGTERM (and reaped) at the end.
#pragma once

#include <dragon/client.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <poll.h>
#include <string>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "support/process.hpp"

namespace dragon::testing {

inline std::string makeTempDir() {
  char tmpl[] = "/tmp/dragon-test-XXXXXX";
  const char* d = mkdtemp(tmpl);
  return d == nullptr ? std::string() : std::string(d);
}

inline void removeTree(const std::string& dir) {
  if (!dir.empty() && dir.rfind("/tmp/dragon-test-", 0) == 0) {
    const std::string cmd = "rm -rf '" + dir + "'";
    (void)!std::system(cmd.c_str());
  }
}

class RunningDaemon {
 public:
  // extra: more dragond arguments. Returns null (after a gtest failure) if it did not start.
  // dir: where its socket `socketName` is (a new temporary directory when empty; the fixture
  // removes it in either case).
  static std::unique_ptr<RunningDaemon> start(std::vector<std::string> extra = {},
                                              const std::string& dir = {},
                                              const std::string& socketName = "dragond.sock") {
    auto d = std::unique_ptr<RunningDaemon>(new RunningDaemon());
    d->dir_ = dir.empty() ? makeTempDir() : dir;
    d->socket_ = d->dir_ + "/" + socketName;
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) != 0) return nullptr;
    std::vector<std::string> args = {DRAGOND_PATH, "--socket", d->socket_,
                                     "--ready-fd", std::to_string(ready[1]), "--allow-root",
                                     "--set", "process.kill_grace=2s", "--set",
                                     "pool.default_size=4MiB"};
    // Alone unless `extra` makes it a node of a job.
    if (std::find(extra.begin(), extra.end(), "--node-id") == extra.end()) {
      args.push_back("--standalone");
    }
    args.insert(args.end(), extra.begin(), extra.end());
    d->pid_ = fork();
    if (d->pid_ == 0) {
      fcntl(ready[1], F_SETFD, 0);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(ready[1]);
    pollfd p{ready[0], POLLIN, 0};
    char buf[8] = {};
    const bool ok = poll(&p, 1, 30'000) == 1 && read(ready[0], buf, 5) == 5;
    close(ready[0]);
    if (!ok) {
      ADD_FAILURE() << "dragond did not report ready";
      return nullptr;
    }
    return d;
  }

  ~RunningDaemon() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
    }
    removeTree(dir_);
  }

  const std::string& socket() const { return socket_; }
  const std::string& dir() const { return dir_; }
  pid_t pid() const { return pid_; }

  Client connect(const std::string& name = "test") {
    Client::Options o;
    o.socketPath = socket_;
    o.name = name;
    auto c = Client::connect(o);
    if (!c.has_value()) {
      ADD_FAILURE() << "connect: " << c.error().toString();
      std::abort();
    }
    return std::move(*c);
  }

  // SIGTERM, then the wait status (-1 if it did not exit within `timeout`).
  int stop(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    const int st = waitFor(pid_, timeout);
    pid_ = -1;
    return st;
  }
  // SIGKILL and reap.
  void crash() {
    kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
    pid_ = -1;
  }

 private:
  RunningDaemon() = default;
  std::string dir_;
  std::string socket_;
  pid_t pid_ = -1;
};

// True once `pred()` holds, polling until `timeout` (for effects dragond applies after an event
// it cannot report to the test, like a dead client's connection being closed).
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    pollfd none{-1, 0, 0};
    poll(&none, 0, 5);
  }
  return pred();
}

inline std::string readFile(const std::string& path) {
  std::string s;
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return s;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  std::fclose(f);
  return s;
}

// Gone, or a zombie that only its (re)parent has yet to reap.
inline bool processGone(pid_t pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return true;
  char buf[512] = {};
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const char* close = std::strrchr(buf, ')');
  return n > 0 && close != nullptr && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X');
}

}  // namespace dragon::testing
