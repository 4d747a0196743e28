// SPDX-License-Identifier: MIT
#include "base/robust_mutex.hpp"

#include "base/futex.hpp"

#include <cerrno>
#include <ctime>

namespace dragon::base {

namespace {
thread_local std::int64_t tPatienceNs = -1;  // -1: wait as long as it takes
thread_local std::uint64_t tBusyLocks = 0;
}  // namespace

LockPatience::LockPatience(std::int64_t waitNs) noexcept : previous_(tPatienceNs) {
  tPatienceNs = waitNs < 0 ? 0 : waitNs;
}

LockPatience::~LockPatience() { tPatienceNs = previous_; }

std::uint64_t LockPatience::busyLocks() noexcept { return tBusyLocks; }

Status RobustMutex::init(pthread_mutex_t* m) {
  pthread_mutexattr_t attr;
  int rc = pthread_mutexattr_init(&attr);
  if (rc != 0) {
    return Status::fromErrno("pthread_mutexattr_init", rc);
  }
  rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  if (rc == 0) {
    rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  }
  if (rc == 0) {
    rc = pthread_mutex_init(m, &attr);
  }
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) {
    return Status::fromErrno("robust mutex init", rc);
  }
  return Status::ok();
}

namespace {

// lock() with `patienceNs` (-1: wait as long as it takes) after the spin.
LockState lockWithin(pthread_mutex_t* m, std::int64_t patienceNs) noexcept {
  // Critical sections are a few dozen instructions: a short trylock spin avoids sleeping in the
  // kernel when the holder is running on the other core.
  int rc = EBUSY;
  for (int i = 0; i < 64 && rc == EBUSY; ++i) {
    rc = pthread_mutex_trylock(m);
    if (rc == EBUSY) {
      cpuRelax();
    }
  }
  if (rc == EBUSY) {
    if (patienceNs < 0) {
      rc = pthread_mutex_lock(m);
    } else if (patienceNs > 0) {
      timespec until{};
      clock_gettime(CLOCK_MONOTONIC, &until);
      const std::int64_t ns = until.tv_nsec + patienceNs % 1'000'000'000;
      until.tv_sec += static_cast<time_t>(patienceNs / 1'000'000'000 + ns / 1'000'000'000);
      until.tv_nsec = static_cast<long>(ns % 1'000'000'000);
      rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &until);
      if (rc == ETIMEDOUT) rc = EBUSY;
    }
    if (rc == EBUSY) {
      ++tBusyLocks;
      return LockState::Busy;
    }
  }
  if (rc == 0) {
    return LockState::Locked;
  }
  if (rc == EOWNERDEAD) {
    return LockState::OwnerDied;
  }
  return LockState::Unrecoverable;
}

}  // namespace

LockState RobustMutex::lock(pthread_mutex_t* m) noexcept { return lockWithin(m, -1); }

LockState RobustMutex::lockOrGiveUp(pthread_mutex_t* m) noexcept {
  return lockWithin(m, tPatienceNs);
}

void RobustMutex::markConsistent(pthread_mutex_t* m) noexcept { pthread_mutex_consistent(m); }

void RobustMutex::unlock(pthread_mutex_t* m) noexcept { pthread_mutex_unlock(m); }

}  // namespace dragon::base
