// SPDX-License-Identifier: MIT
#include "daemon/listener.hpp"

#include "base/log.hpp"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

namespace dragon::daemon {

Status ensurePrivateDir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::fromErrno("creating " + dir, errno);
  }
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0) {
    return Status::fromErrno("lstat " + dir, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status(StatusCode::PermissionDenied, dir + " is not a directory (a symlink?)");
  }
  if (st.st_uid != geteuid()) {
    return Status(StatusCode::PermissionDenied,
                  dir + " belongs to uid " + std::to_string(st.st_uid) + ", not to us");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
    return Status(StatusCode::PermissionDenied,
                  dir + " has mode " + mode + ": others could reach the socket; want 0700");
  }
  return Status::ok();
}

namespace {

// What a connect to the socket at `addr` gives, without waiting: 0 (or EAGAIN: its backlog is
// full) when a dragond serves it, ECONNREFUSED when nobody listens on it any more.
int connectError(const sockaddr_un& addr) {
  UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe) return errno;
  return connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 ? 0 : errno;
}

}  // namespace

Result<UniqueFd> bindListener(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return Status(StatusCode::InvalidArgument, "bad socket path '" + path + "'");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    return Status::fromErrno("socket", errno);
  }
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status(StatusCode::AlreadyExists, path + " exists and is not a socket");
    }
    const int err = connectError(addr);
    if (err == 0 || err == EAGAIN) {
      return Status(StatusCode::AlreadyExists, "another dragond is serving " + path);
    }
    unlink(path.c_str());  // stale: its dragond is gone
  }
  const mode_t old = umask(0177);
  const int rc = bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  umask(old);
  if (rc != 0) {
    return Status::fromErrno("bind " + path, err);
  }
  if (listen(fd.get(), 512) != 0) {
    return Status::fromErrno("listen " + path, errno);
  }
  return fd;
}

std::size_t sweepStaleJobSockets(const std::string& dir, std::int64_t minAgeSeconds) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return 0;
  std::size_t removed = 0;
  const std::time_t now = std::time(nullptr);
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind("job-", 0) != 0 || name.size() < 9 ||
        name.compare(name.size() - 5, 5, ".sock") != 0) {
      continue;
    }
    const std::string path = dir + "/" + name;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    struct stat st {};
    if (path.size() >= sizeof addr.sun_path || lstat(path.c_str(), &st) != 0 ||
        !S_ISSOCK(st.st_mode) || st.st_uid != geteuid() || now - st.st_mtime < minAgeSeconds) {
      continue;  // not a socket of ours, or bound so recently its dragond may not listen yet
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    if (connectError(addr) == ECONNREFUSED && unlink(path.c_str()) == 0) {
      DRAGON_LOG(Info, "dragond", "removed %s: the dragond of that job is gone", path.c_str());
      ++removed;
    }
  }
  closedir(d);
  return removed;
}

Result<UniqueFd> inheritedListener() {
  const int n = sd_listen_fds(1);
  if (n < 0) {
    return Status::fromErrno("sd_listen_fds", -n);
  }
  if (n == 0) {
    return Status(StatusCode::NotFound, "no socket passed by systemd");
  }
  if (n > 1) {
    return Status(StatusCode::InvalidArgument,
                  "systemd passed " + std::to_string(n) + " sockets; dragond takes one");
  }
  const int fd = SD_LISTEN_FDS_START;
  if (sd_is_socket_unix(fd, SOCK_STREAM, 1, nullptr, 0) <= 0) {
    return Status(StatusCode::InvalidArgument, "the socket systemd passed is not a listening AF_UNIX stream socket");
  }
  (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
  (void)fcntl(fd, F_SETFL, O_NONBLOCK);
  return UniqueFd(fd);
}

}  // namespace dragon::daemon
