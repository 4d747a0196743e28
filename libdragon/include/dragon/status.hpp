// SPDX-License-Identifier: MIT
// Status codes of the Dragon core, grouped by blast radius. Errors are values: nothing in the
// core throws.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace dragon {

enum class StatusCode : std::uint16_t {
  Ok = 0,
  // Not failures of the system: try again later, or wait longer.
  WouldBlock = 1,
  Timeout = 2,
  // The caller asked for something wrong.
  InvalidArgument = 10,
  NotFound = 11,
  PermissionDenied = 12,
  AlreadyExists = 13,
  MessageTooLarge = 14,
  ChannelClosed = 15,
  // A shared resource is full.
  PoolExhausted = 20,
  ChannelFull = 21,
  // A peer went away.
  PeerLost = 30,
  NodeLost = 31,
  // Our own state, the OS, or shared memory is not what it must be.
  SystemError = 40,
  Corrupt = 41,
  Internal = 42,
};

// A short, stable name for a code ("PoolExhausted").
[[nodiscard]] std::string_view statusCodeName(StatusCode code) noexcept;

// A code plus an optional human-readable message. A Status built from a code alone does not
// allocate, so hot paths can return WouldBlock / ChannelFull cheaply.
class [[nodiscard]] Status {
 public:
  Status() noexcept = default;
  Status(StatusCode code) noexcept : code_(code) {}  // NOLINT: implicit by design
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() noexcept { return Status(); }
  // SystemError carrying strerror(err) after `what`.
  static Status fromErrno(std::string_view what, int err);

  bool isOk() const noexcept { return code_ == StatusCode::Ok; }
  explicit operator bool() const noexcept { return isOk(); }
  StatusCode code() const noexcept { return code_; }
  // The message, or the code's name when none was given.
  std::string_view message() const noexcept;
  // "Code: message".
  std::string toString() const;

  bool operator==(StatusCode code) const noexcept { return code_ == code; }

 private:
  StatusCode code_ = StatusCode::Ok;
  std::string message_;
};

}  // namespace dragon
