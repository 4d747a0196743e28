// SPDX-License-Identifier: MIT
// A process-shared robust mutex that lives in shared memory. When its owner dies while holding
// it, the next locker is told so (OwnerDied) and must repair the state the mutex guards before
// calling markConsistent().
#pragma once

#include "base/private.hpp"

#include <dragon/status.hpp>

#include <pthread.h>

namespace dragon::base {

enum class LockState {
  Locked,         // acquired; the guarded state is consistent
  OwnerDied,      // acquired; the previous owner died holding it: repair, then markConsistent()
  Unrecoverable,  // a previous repair was abandoned: the guarded state is lost
};

class RobustMutex {
 public:
  // Initialises a mutex placed in shared memory (done once, by the creator).
  static Status init(pthread_mutex_t* m);
  // Spins briefly with trylock (no syscall), then blocks in the kernel.
  static LockState lock(pthread_mutex_t* m) noexcept;
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
