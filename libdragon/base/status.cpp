// SPDX-License-Identifier: MIT
#include <dragon/status.hpp>

#include <cstring>

namespace dragon {

std::string_view statusCodeName(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::Ok: return "Ok";
    case StatusCode::WouldBlock: return "WouldBlock";
    case StatusCode::Timeout: return "Timeout";
    case StatusCode::InvalidArgument: return "InvalidArgument";
    case StatusCode::NotFound: return "NotFound";
    case StatusCode::PermissionDenied: return "PermissionDenied";
    case StatusCode::AlreadyExists: return "AlreadyExists";
    case StatusCode::MessageTooLarge: return "MessageTooLarge";
    case StatusCode::ChannelClosed: return "ChannelClosed";
    case StatusCode::PoolExhausted: return "PoolExhausted";
    case StatusCode::ChannelFull: return "ChannelFull";
    case StatusCode::PeerLost: return "PeerLost";
    case StatusCode::NodeLost: return "NodeLost";
    case StatusCode::SystemError: return "SystemError";
    case StatusCode::Corrupt: return "Corrupt";
    case StatusCode::Internal: return "Internal";
  }
  return "Unknown";
}

Status Status::fromErrno(std::string_view what, int err) {
  char buf[256];
  // GNU strerror_r returns the message pointer (possibly static, possibly buf).
  const char* msg = strerror_r(err, buf, sizeof buf);
  std::string m(what);
  m += ": ";
  m += msg;
  return Status(StatusCode::SystemError, std::move(m));
}

std::string_view Status::message() const noexcept {
  if (message_.empty()) {
    return statusCodeName(code_);
  }
  return message_;
}

std::string Status::toString() const {
  std::string s(statusCodeName(code_));
  if (!message_.empty()) {
    s += ": ";
    s += message_;
  }
  return s;
}

}  // namespace dragon
