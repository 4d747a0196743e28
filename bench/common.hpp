// SPDX-License-Identifier: MIT
// Helpers shared by the benchmark programs: shared memory between forked processes, a clock,
// medians, and the one output format `bench/run` reads: "metric NAME VALUE UNIT".
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace bench {

inline double nowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <typename T>
T* sharedNew() {
  void* p = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    _exit(1);
  }
  return new (p) T();
}

inline pid_t forkRun(const std::function<void()>& fn) {
  pid_t pid = fork();
  if (pid == 0) {
    fn();
    _exit(0);
  }
  return pid;
}

inline void reap(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
}

// Median of `reps` runs of fn() (each returns one measurement).
inline double median(int reps, const std::function<double()>& fn) {
  std::vector<double> v;
  for (int i = 0; i < reps; ++i) v.push_back(fn());
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

inline void metric(const char* name, double value, const char* unit) {
  std::printf("metric %s %.6g %s\n", name, value, unit);
  std::fflush(stdout);
}

inline constexpr int kReps = 5;

}  // namespace bench
