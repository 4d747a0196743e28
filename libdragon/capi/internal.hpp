// SPDX-License-Identifier: MIT
// What the C ABI's translation units share: the handle types and the status plumbing.
#pragma once

#include <dragon/channel.hpp>
#include <dragon/client.hpp>
#include <dragon/dragon.h>
#include <dragon/pool.hpp>

#include <cstring>
#include <memory>
#include <optional>
#include <new>
#include <string>

// Pools are shared: a channel handle keeps its pool mapped even after the pool's handle is
// released, and pools from dragond are shared with the client's own cache.
struct dragon_pool {
  std::shared_ptr<dragon::Pool> pool;
};
struct dragon_channel {
  std::shared_ptr<dragon::Pool> keep;  // declared first: outlives channel
  std::optional<dragon::Channel> channel;           // a channel mapped here, or
  std::unique_ptr<dragon::ClientChannel> remote;    // one of another node (through dragond)
};
struct dragon_message {
  // The pool a block message lives in, kept mapped while the message lives (also once the
  // channel's and the pool's handles are released). Declared first: it goes last.
  std::shared_ptr<dragon::Pool> keep;
  dragon::Message message;
};

namespace dragon::capi {

// This thread's last error message (dragon_last_error).
std::string& lastError() noexcept;

inline dragon_status_t fail(const dragon::Status& st) {
  try {
    lastError() = st.toString();
  } catch (...) {
    lastError().clear();
  }
  return static_cast<dragon_status_t>(st.code());
}

inline dragon_status_t invalid(const char* what) {
  return fail(dragon::Status(dragon::StatusCode::InvalidArgument, what));
}

inline dragon::Timeout toTimeout(int64_t ns) {
  if (ns < 0) {
    return dragon::Timeout::forever();
  }
  return dragon::Timeout::after(std::chrono::nanoseconds(ns));
}

inline dragon::PoolAllocation toAlloc(const dragon_allocation_t* a) {
  return {a->pool_id, a->offset, a->size};
}

inline dragon::Result<dragon::ObjectDescriptor> toDesc(const dragon_descriptor_t* d) {
  return dragon::ObjectDescriptor::parse(std::as_bytes(std::span(d->bytes)));
}

inline void fromDesc(const dragon::ObjectDescriptor& d, dragon_descriptor_t* out) {
  const auto b = d.serialize();
  std::memcpy(out->bytes, b.data(), b.size());
}

// Runs `body`, turning any escaping exception into a status.
template <typename F>
dragon_status_t guarded(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(dragon::Status(dragon::StatusCode::SystemError, "out of memory"));
  } catch (...) {
    return fail(dragon::Status(dragon::StatusCode::Internal, "unexpected exception"));
  }
}

}  // namespace dragon::capi
