// SPDX-License-Identifier: MIT
#include "protocol/socket_io.hpp"

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>

namespace dragon::protocol {

Result<std::size_t> sendSome(int sock, std::span<const char> bytes, std::span<const int> fds) {
  if (fds.size() > kMaxFdsPerMessage) {
    return Status(StatusCode::InvalidArgument, "too many fds for one message");
  }
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (!fds.empty()) {
    std::memset(control, 0, sizeof control);
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) {
      return static_cast<std::size_t>(n);
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno == EAGAIN) {
      return StatusCode::WouldBlock;
    }
    if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) {
      return Status(StatusCode::PeerLost, "the peer closed the connection");
    }
    return Status::fromErrno("sendmsg", errno);
  }
}

Result<std::size_t> recvSome(int sock, std::span<char> buf, std::vector<UniqueFd>& fds) {
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) {
      return StatusCode::WouldBlock;
    }
    if (errno == ECONNRESET || errno == ENOTCONN) {
      return Status(StatusCode::PeerLost, "the peer closed the connection");
    }
    return Status::fromErrno("recvmsg", errno);
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.emplace_back(fd);
      }
    }
  }
  if ((mh.msg_flags & MSG_CTRUNC) != 0) {
    return Status(StatusCode::InvalidArgument, "the peer sent more fds than a message may carry");
  }
  if (n == 0) {
    return Status(StatusCode::PeerLost, "the peer closed the connection");
  }
  return static_cast<std::size_t>(n);
}

Status sendAll(int sock, std::span<const char> bytes, std::span<const int> fds) {
  while (!bytes.empty()) {
    auto n = sendSome(sock, bytes, fds);
    if (n.has_value()) {
      bytes = bytes.subspan(*n);
      fds = {};
      continue;
    }
    if (n.error().code() != StatusCode::WouldBlock) {
      return n.error();
    }
    pollfd p{sock, POLLOUT, 0};
    if (poll(&p, 1, -1) < 0 && errno != EINTR) {
      return Status::fromErrno("poll", errno);
    }
  }
  return Status::ok();
}

Status statusFromError(const Error& e) {
  StatusCode code = StatusCode::Internal;
  const std::uint32_t c = e.code();
  if (c != 0 && c <= static_cast<std::uint32_t>(StatusCode::Internal) &&
      statusCodeName(static_cast<StatusCode>(c)) != "Unknown") {
    code = static_cast<StatusCode>(c);
  }
  return Status(code, e.message());
}

void fillError(Error& e, const Status& st) {
  e.set_code(static_cast<std::uint32_t>(st.code()));
  e.set_message(std::string(st.message()));
}

}  // namespace dragon::protocol
