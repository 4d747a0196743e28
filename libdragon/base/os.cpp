// SPDX-License-Identifier: MIT
// UniqueFd, MappedRegion and the monotonic clock.
#include <dragon/mapped_region.hpp>
#include <dragon/timeout.hpp>
#include <dragon/unique_fd.hpp>

#include <cerrno>
#include <ctime>
#include <sys/mman.h>
#include <unistd.h>

namespace dragon {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0 && fd_ != fd) {
    ::close(fd_);
  }
  fd_ = fd;
}

MappedRegion& MappedRegion::operator=(MappedRegion&& o) noexcept {
  if (this != &o) {
    reset();
    addr_ = std::exchange(o.addr_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Result<MappedRegion> MappedRegion::mapShared(int fd, std::size_t size, bool prefault) {
  if (size == 0) {
    return Status(StatusCode::InvalidArgument, "cannot map an empty region");
  }
  int flags = MAP_SHARED | (prefault ? MAP_POPULATE : 0);
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (p == MAP_FAILED) {
    return Status::fromErrno("mmap", errno);
  }
  // Where the kernel backs shared memory with transparent huge pages on request (shmem_enabled
  // = advise), ask for them: fewer TLB misses and page faults. A no-op elsewhere.
  (void)::madvise(p, size, MADV_HUGEPAGE);
  return MappedRegion(p, size);
}

void MappedRegion::reset() noexcept {
  if (addr_ != nullptr) {
    ::munmap(addr_, size_);
  }
  addr_ = nullptr;
  size_ = 0;
}

std::int64_t monotonicNowNs() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

Deadline::Deadline(Timeout t) {
  if (t.isForever()) {
    forever_ = true;
  } else if (t.isNone()) {
    now_ = true;
  } else {
    std::int64_t now = monotonicNowNs();
    absNs_ = t.nanoseconds() > Timeout::kForeverNs - now ? Timeout::kForeverNs
                                                          : now + t.nanoseconds();
  }
}

bool Deadline::expired() const {
  if (forever_) {
    return false;
  }
  if (now_) {
    return true;
  }
  return monotonicNowNs() >= absNs_;
}

}  // namespace dragon
