// SPDX-License-Identifier: MIT
// Cuts a captured stream into whole lines. A line longer than the limit is passed on in
// limit-sized pieces (so a process that never writes a newline cannot grow dragond's memory);
// at end of stream the unterminated rest is passed on as a last line without a newline.
#pragma once

#include "base/private.hpp"

#include <cstddef>
#include <string>
#include <string_view>

namespace dragon::daemon {

class LineSplitter {
 public:
  static constexpr std::size_t kMaxLine = std::size_t{64} << 10;

  template <typename Emit>
  void feed(std::string_view bytes, Emit&& emit) {
    while (!bytes.empty()) {
      const std::size_t nl = bytes.find('\n');
      if (nl == std::string_view::npos) {
        partial_.append(bytes);
        while (partial_.size() >= kMaxLine) {
          emit(std::string_view(partial_).substr(0, kMaxLine));
          partial_.erase(0, kMaxLine);
        }
        return;
      }
      if (partial_.empty()) {
        emit(bytes.substr(0, nl + 1));
      } else {
        partial_.append(bytes.substr(0, nl + 1));
        emit(std::string_view(partial_));
        partial_.clear();
      }
      bytes.remove_prefix(nl + 1);
    }
  }

  template <typename Emit>
  void finish(Emit&& emit) {
    if (!partial_.empty()) {
      emit(std::string_view(partial_));
      partial_.clear();
    }
  }

 private:
  std::string partial_;
};

}  // namespace dragon::daemon
