// SPDX-License-Identifier: MIT
// A connection to a dragond that speaks the protocol by hand, for tests that send what the
// client library never would (a send's first part only, a receive's first part only, ops
// between dragonds): requests without waiting, replies with a bounded wait. Needs the
// protocol's internal headers (codec, socket_io).
#pragma once

#include "protocol/codec.hpp"
#include "protocol/socket_io.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <string>

namespace dragon::testing {

class RawConnection {
 public:
  RawConnection() = default;
  // Over a connection already made (dragond knows it as its maker's).
  explicit RawConnection(int connected) : fd_(connected) {}
  ~RawConnection() { closeNow(); }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  // A Unix socket connected to `path`, or -1.
  static int connectTo(const std::string& path) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }

  // Connects to `path` and says Hello; false when either fails.
  bool open(const std::string& path, std::chrono::milliseconds timeout) {
    closeNow();
    fd_ = connectTo(path);
    return fd_ >= 0 && hello(timeout);
  }
  bool hello(std::chrono::milliseconds timeout) {
    protocol::Envelope h;
    h.mutable_hello()->set_min_version(protocol::kVersion);
    h.mutable_hello()->set_max_version(protocol::kVersion);
    auto r = reply(post(h), timeout);
    return r.has_value() && r->has_hello_reply();
  }
  int fd() const { return fd_; }
  void closeNow() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  // Sends `e` as the next request; its id (0 when it could not be sent).
  std::uint64_t post(protocol::Envelope e) {
    const std::uint64_t id = next_++;
    e.set_request_id(id);
    std::string frame;
    if (!protocol::encode(e, frame, std::size_t{64} << 20).isOk()) return 0;
    if (!protocol::sendAll(fd_, frame, {}).isOk()) return 0;
    return id;
  }
  // The reply to request `id`, or nothing when none came within `timeout`.
  std::optional<protocol::Envelope> reply(std::uint64_t id, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto it = got_.find(id); it != got_.end()) {
        protocol::Envelope e = std::move(it->second);
        got_.erase(it);
        return e;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || fd_ < 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[65536];
      const ssize_t n = read(fd_, buf, sizeof buf);
      if (n <= 0) return std::nullopt;
      dec_.feed(std::as_bytes(std::span<const char>(buf, static_cast<std::size_t>(n))));
      for (auto m = dec_.next(); m.has_value(); m = dec_.next()) got_[m->request_id()] = *m;
    }
  }

 private:
  int fd_ = -1;
  std::uint64_t next_ = 1;
  protocol::FrameDecoder dec_{std::size_t{64} << 20};
  std::map<std::uint64_t, protocol::Envelope> got_;
};

}  // namespace dragon::testing
