// SPDX-License-Identifier: MIT
// dragond under systemd's protocols without systemd as PID 1: systemd-socket-activate hands it
// the listening socket (LISTEN_FDS) and this test plays the service manager's NOTIFY_SOCKET.
#include "daemon/daemon_fixture.hpp"

#include <sys/socket.h>
#include <sys/un.h>

namespace dragon {
namespace {

using namespace std::chrono_literals;

class NotifyListener {
 public:
  explicit NotifyListener(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    bound_ = bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~NotifyListener() { close(fd_); }
  bool bound() const { return bound_; }

  // The next datagram, or "" after `timeout`.
  std::string next(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return {};
    char buf[4096];
    const ssize_t n = recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }
  // Reads datagrams until one contains `text` (bounded); all of them, joined.
  bool awaitText(const std::string& text, std::string& seen, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string m = next(std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now()));
      seen += m + "|";
      if (m.find(text) != std::string::npos) return true;
    }
    return false;
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool bound_ = false;
};

TEST(SystemdProtocols, SocketActivatedDragondServesTheInheritedSocketAndReportsItsState) {
  const std::string dir = testing::makeTempDir();
  const std::string sock = dir + "/dragond.sock";
  const std::string notify = dir + "/notify.sock";
  NotifyListener listener(notify);
  ASSERT_TRUE(listener.bound());
  pid_t pid = fork();
  if (pid == 0) {
    // systemd-socket-activate passes on only the variables given with -E.
    const std::string n = "NOTIFY_SOCKET=" + notify;
    execlp("systemd-socket-activate", "systemd-socket-activate", "-l", sock.c_str(), "-E",
           n.c_str(), "-E", "WATCHDOG_USEC=200000", "-E", "DRAGON_ALLOW_ROOT=true", "-E",
           "DRAGON_LOG_LEVEL=info", DRAGOND_PATH, static_cast<char*>(nullptr));
    _exit(127);
  }
  testing::ChildReaper reaper;
  reaper.add(pid);
  // The socket exists before dragond does: systemd-socket-activate binds it, then starts
  // dragond on the first connection.
  ASSERT_TRUE(testing::eventually([&] { return access(sock.c_str(), F_OK) == 0; }));
  Client::Options o;
  o.socketPath = sock;
  auto c = Client::connect(o);
  ASSERT_TRUE(c.has_value()) << c.error().toString();
  std::string seen;
  ASSERT_TRUE(listener.awaitText("READY=1", seen, 10s)) << seen;
  EXPECT_NE(seen.find("STATUS=serving"), std::string::npos) << seen;
  // The watchdog is petted at half the interval systemd asked for.
  ASSERT_TRUE(listener.awaitText("WATCHDOG=1", seen, 10s)) << seen;
  ASSERT_TRUE(listener.awaitText("WATCHDOG=1", seen, 10s)) << seen;
  // It really serves: a process through the activated dragond.
  SpawnOptions s;
  s.argv = {"/bin/true"};
  auto r = c->spawn(s);
  ASSERT_TRUE(r.has_value()) << r.error().toString();
  ASSERT_TRUE(c->wait({r->front().puid}, Timeout::after(30s)).has_value());
  // systemd-socket-activate execs dragond in place: the pid is dragond's.
  kill(pid, SIGTERM);
  ASSERT_TRUE(listener.awaitText("STOPPING=1", seen, 10s)) << seen;
  EXPECT_EQ(testing::exitCodeOf(testing::waitFor(pid, 30s)), 0);
  reaper.forget(pid);
  EXPECT_EQ(access(sock.c_str(), F_OK), 0) << "an inherited socket is systemd's to remove";
  testing::removeTree(dir);
}

}  // namespace
}  // namespace dragon
