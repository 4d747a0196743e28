// SPDX-License-Identifier: MIT
// A process-shared robust mutex that lives in shared memory. When its owner dies while holding
// it, the next locker is told so (OwnerDied) and must repair the state the mutex guards before
// calling markConsistent().
#pragma once

#include "base/private.hpp"

#include <dragon/status.hpp>

#include <cstdint>
#include <pthread.h>

namespace dragon::base {

enum class LockState {
  Locked,         // acquired; the guarded state is consistent
  OwnerDied,      // acquired; the previous owner died holding it: repair, then markConsistent()
  Unrecoverable,  // a previous repair was abandoned: the guarded state is lost
  Busy,           // not acquired: its holder kept it past this thread's LockPatience
};

// For a thread that serves every process of the node and so must not wait for long on a lock
// one of them holds (dragond's event loop and its channel gateway thread: a holder stopped by
// a debugger or SIGSTOP would stall them all). While one is alive on a thread, lock() there
// RobustMutex::lockOrGiveUp() there gives up with Busy after its spin plus `waitNs` (0: the
// spin alone) instead of blocking.
// busyLocks() counts the locks this thread gave up on, so that a caller tells a lock it could
// not take from what the operation under it answered.
class LockPatience {
 public:
  explicit LockPatience(std::int64_t waitNs) noexcept;
  ~LockPatience();
  LockPatience(const LockPatience&) = delete;
  LockPatience& operator=(const LockPatience&) = delete;

  static std::uint64_t busyLocks() noexcept;

 private:
  std::int64_t previous_;
};

class RobustMutex {
 public:
  // Initialises a mutex placed in shared memory (done once, by the creator).
  static Status init(pthread_mutex_t* m);
  // Spins briefly with trylock (no syscall), then blocks in the kernel.
  static LockState lock(pthread_mutex_t* m) noexcept;
  // As lock(), but on a thread with a LockPatience gives up (Busy) once that has passed. Only
  // for a lock whose caller can give up before it changed anything (a channel's send and
  // receive locks, a pool's to allocate): never for one taken after a commit (a pool's, to
  // free a block).
  static LockState lockOrGiveUp(pthread_mutex_t* m) noexcept;
  static void markConsistent(pthread_mutex_t* m) noexcept;
  static void unlock(pthread_mutex_t* m) noexcept;
};

// Scope guard for a lock that has been acquired.
class RobustGuard {
 public:
  explicit RobustGuard(pthread_mutex_t* m) noexcept : m_(m) {}
  RobustGuard(const RobustGuard&) = delete;
  RobustGuard& operator=(const RobustGuard&) = delete;
  ~RobustGuard() {
    if (m_ != nullptr) {
      RobustMutex::unlock(m_);
    }
  }

 private:
  pthread_mutex_t* m_;
};

}  // namespace dragon::base
