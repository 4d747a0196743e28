// SPDX-License-Identifier: MIT
// MappedRegion: sole owner of an mmap()ed range; unmaps it on destruction.
#pragma once

#include <dragon/result.hpp>

#include <cstddef>
#include <utility>

namespace dragon {

class MappedRegion {
 public:
  MappedRegion() noexcept = default;
  MappedRegion(MappedRegion&& o) noexcept
      : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  MappedRegion& operator=(MappedRegion&& o) noexcept;
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  ~MappedRegion() { reset(); }

  // Maps `size` bytes of `fd` shared, read-write. With `prefault`, every page is faulted in now
  // so later accesses never take a page fault.
  static Result<MappedRegion> mapShared(int fd, std::size_t size, bool prefault);

  void* data() const noexcept { return addr_; }
  std::size_t size() const noexcept { return size_; }
  void reset() noexcept;

 private:
  MappedRegion(void* addr, std::size_t size) noexcept : addr_(addr), size_(size) {}
  void* addr_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace dragon
