// SPDX-License-Identifier: MIT
// dragond's front door: the handshake, malformed frames, other users, a vanished daemon,
// its command line and configuration errors.
#include "daemon_fixture.hpp"

#include "protocol/codec.hpp"
#include "protocol/socket_io.hpp"
#include "support/raw_connection.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <atomic>
#include <future>
#include <ctime>
#include <optional>
#include <thread>

namespace dragon {
namespace {

using namespace std::chrono_literals;
using testing::RunningDaemon;

int rawConnect(const std::string& path) { return testing::RawConnection::connectTo(path); }

// Reads until dragond closes the connection (bounded by a 10 s receive timeout); returns the
// messages it sent and whether it closed.
std::vector<protocol::Envelope> readUntilClosed(int fd, bool& closed) {
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  protocol::FrameDecoder dec;
  std::vector<protocol::Envelope> out;
  closed = false;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0) {
      closed = true;
      break;
    }
    if (n < 0) break;
    dec.feed(std::as_bytes(std::span<const char>(buf, static_cast<std::size_t>(n))));
    for (auto m = dec.next(); m.has_value(); m = dec.next()) out.push_back(*m);
  }
  return out;
}

void expectErrorThenClose(const std::string& socket, const std::string& bytes, StatusCode code) {
  int fd = rawConnect(socket);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  bool closed = false;
  auto msgs = readUntilClosed(fd, closed);
  close(fd);
  EXPECT_TRUE(closed) << "dragond closes a connection that sent a bad stream";
  ASSERT_EQ(msgs.size(), 1u);
  ASSERT_TRUE(msgs[0].has_error());
  EXPECT_EQ(msgs[0].error().code(), static_cast<std::uint32_t>(code));
}

std::string frameOf(const protocol::Envelope& e) {
  std::string s;
  EXPECT_TRUE(protocol::encode(e, s).isOk());
  return s;
}

TEST(Server, MalformedTruncatedAndOversizedFramesGetAnErrorAndACloseNeverACrash) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  expectErrorThenClose(d->socket(), "GET / HTTP/1.1\r\n\r\n", StatusCode::InvalidArgument);
  const char v = static_cast<char>(protocol::kVersion);  // frames of this side's version
  std::string oversized = std::string("DRGN") + v + '\0' + '\0' + '\0' + "\xff\xff\xff\x7f";
  expectErrorThenClose(d->socket(), oversized, StatusCode::InvalidArgument);
  std::string badVersion = std::string("DRGN") + '\x09' + '\0' + '\0' + '\0' + '\0' + '\0' + '\0' + '\0';
  expectErrorThenClose(d->socket(), badVersion, StatusCode::InvalidArgument);
  std::string garbageBody = std::string("DRGN") + v + '\0' + '\0' + '\0' + '\x04' + '\0' +
                            '\0' + '\0' + "\xff\xff\xff\xff";
  expectErrorThenClose(d->socket(), garbageBody, StatusCode::InvalidArgument);
  // A request before Hello.
  protocol::Envelope spawn;
  spawn.set_request_id(1);
  spawn.mutable_spawn()->add_argv("/bin/true");
  expectErrorThenClose(d->socket(), frameOf(spawn), StatusCode::InvalidArgument);
  // A Hello for versions dragond does not speak.
  protocol::Envelope hello;
  hello.mutable_hello()->set_min_version(7);
  hello.mutable_hello()->set_max_version(9);
  expectErrorThenClose(d->socket(), frameOf(hello), StatusCode::InvalidArgument);
  // Half a frame, then the client vanishes.
  int fd = rawConnect(d->socket());
  const std::string half = frameOf(spawn).substr(0, 7);
  ASSERT_EQ(write(fd, half.data(), half.size()), static_cast<ssize_t>(half.size()));
  close(fd);
  // dragond serves on.
  Client c = d->connect();
  EXPECT_TRUE(c.listProcesses().has_value());
  EXPECT_EQ(testing::exitCodeOf(d->stop()), 0);
}

TEST(Server, AClientThatSendsRequestsButNeverReadsIsThrottledAndLosesNothing) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client owner = d->connect();
  ASSERT_TRUE(owner.createPool(1 << 20, "flood").has_value());
  int fd = rawConnect(d->socket());
  ASSERT_GE(fd, 0);
  protocol::Envelope hello;
  hello.mutable_hello()->set_min_version(protocol::kVersion);
  hello.mutable_hello()->set_max_version(protocol::kVersion);
  protocol::Envelope lookup;
  lookup.set_request_id(7);
  lookup.mutable_lookup_name()->set_name("flood");
  std::string batch;
  for (int i = 0; i < 1000; ++i) batch += frameOf(lookup);
  const std::string first = frameOf(hello);
  ASSERT_EQ(write(fd, first.data(), first.size()), static_cast<ssize_t>(first.size()));
  ASSERT_EQ(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
  // dragond must stop reading once its replies pile up (16 MiB): the socket then stays full.
  // Were it buffering every reply, it would keep draining the socket up to this bound.
  std::size_t sentBytes = 0;
  bool blocked = false;
  std::size_t off = 0;
  while (!blocked && sentBytes < (std::size_t{64} << 20)) {
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, 2000) == 0) {
      blocked = true;  // nothing taken for 2 s: dragond has stopped reading us
      break;
    }
    const ssize_t n = write(fd, batch.data() + off, batch.size() - off);
    if (n > 0) {
      sentBytes += static_cast<std::size_t>(n);
      off = (off + static_cast<std::size_t>(n)) % batch.size();
    }
  }
  ASSERT_TRUE(blocked) << "dragond kept reading a client that never reads its replies (sent " << sentBytes << " bytes)";
  // Others are served meanwhile.
  EXPECT_TRUE(owner.listProcesses().has_value());
  // Every whole request sent gets its reply once the client reads.
  const std::size_t frameSize = frameOf(lookup).size();
  const std::size_t requests = sentBytes / frameSize;
  ASSERT_EQ(fcntl(fd, F_SETFL, 0), 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  protocol::FrameDecoder dec(std::size_t{1} << 20);
  std::size_t replies = 0;
  std::vector<char> buf(1 << 16);
  while (replies < requests + 1) {  // + the hello reply
    const ssize_t n = read(fd, buf.data(), buf.size());
    if (n <= 0) break;
    dec.feed(std::as_bytes(std::span<const char>(buf.data(), static_cast<std::size_t>(n))));
    for (auto m = dec.next(); m.has_value(); m = dec.next()) {
      if (m->has_object() || m->has_hello_reply()) ++replies;
    }
  }
  EXPECT_EQ(replies, requests + 1);
  close(fd);
}

// One read can return a request and, after it, a Spawn whose fds came with it (the kernel ends
// a read after the bytes that carried fds, not before): the Spawn still gets its fds. dragond
// is stopped while both are sent, so that it reads them at once.
TEST(Server, FdsSentWithASpawnReachItWhenAnEarlierRequestIsReadWithIt) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  int fd = rawConnect(d->socket());
  ASSERT_GE(fd, 0);
  protocol::Envelope hello;
  hello.mutable_hello()->set_min_version(protocol::kVersion);
  hello.mutable_hello()->set_max_version(protocol::kVersion);
  const std::string first = frameOf(hello);
  ASSERT_EQ(write(fd, first.data(), first.size()), static_cast<ssize_t>(first.size()));
  protocol::FrameDecoder dec;
  auto next = [&]() -> std::optional<protocol::Envelope> {
    char buf[4096];
    for (int i = 0; i < 100; ++i) {
      if (auto m = dec.next(); m.has_value()) return *m;
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 10'000) != 1) return std::nullopt;
      const ssize_t n = read(fd, buf, sizeof buf);
      if (n <= 0) return std::nullopt;
      dec.feed(std::as_bytes(std::span<const char>(buf, static_cast<std::size_t>(n))));
    }
    return std::nullopt;
  };
  ASSERT_TRUE(next().has_value());  // the hello reply
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  protocol::Envelope lookup;
  lookup.set_request_id(1);
  lookup.mutable_lookup_name()->set_name("nothing-by-this-name");
  protocol::Envelope spawn;
  spawn.set_request_id(2);
  auto* s = spawn.mutable_spawn();
  s->add_argv("/bin/echo");
  s->add_argv("through the passed fd");
  s->set_stdout_mode(protocol::Spawn::PASSED);
  s->set_stdin_mode(protocol::Spawn::NULL_DEVICE);
  s->set_stderr_mode(protocol::Spawn::NULL_DEVICE);
  ASSERT_EQ(kill(d->pid(), SIGSTOP), 0);
  const std::string a = frameOf(lookup);
  const std::string b = frameOf(spawn);
  const int passed[] = {out[1]};
  EXPECT_TRUE(protocol::sendAll(fd, std::span<const char>(a.data(), a.size()), {}).isOk());
  EXPECT_TRUE(protocol::sendAll(fd, std::span<const char>(b.data(), b.size()), passed).isOk());
  ASSERT_EQ(kill(d->pid(), SIGCONT), 0);
  close(out[1]);
  auto r1 = next();
  auto r2 = next();
  ASSERT_TRUE(r1.has_value() && r2.has_value());
  EXPECT_EQ(r1->request_id(), 1u);
  EXPECT_TRUE(r1->has_error());  // no such name
  EXPECT_EQ(r2->request_id(), 2u);
  EXPECT_TRUE(r2->has_spawned()) << r2->DebugString();
  std::string text;
  char buf[256];
  pollfd p{out[0], POLLIN, 0};
  while (poll(&p, 1, 10'000) == 1) {
    const ssize_t n = read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  EXPECT_EQ(text, "through the passed fd\n");
  close(out[0]);
  close(fd);
}

TEST(Server, AClientBlockedOnADragondThatDiesGetsPeerLostWithinASecond) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client c = d->connect();
  SpawnOptions o;
  o.argv = {"/bin/sleep", "600"};
  auto r = c.spawn(o);
  ASSERT_TRUE(r.has_value());
  const pid_t daemonPid = d->pid();
  const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
  std::atomic<std::int64_t> killedAtNs{0};
  std::thread killer([daemonPid, tid, &killedAtNs] {
    // Kill dragond once the client thread sits in poll() (syscall 7 on x86-64, waiting for
    // the reply), so the kill lands on a blocked call.
    const std::string path = "/proc/self/task/" + std::to_string(tid) + "/syscall";
    testing::eventually([&] {
      FILE* f = std::fopen(path.c_str(), "r");
      long nr = -1;
      if (f != nullptr) {
        if (std::fscanf(f, "%ld", &nr) != 1) nr = -1;
        std::fclose(f);
      }
      return nr == SYS_poll || nr == SYS_ppoll;
    });
    killedAtNs = monotonicNowNs();
    kill(daemonPid, SIGKILL);
  });
  auto w = c.wait({r->front().puid}, Timeout::forever());
  const std::int64_t returnedNs = monotonicNowNs();
  killer.join();
  d->crash();
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), StatusCode::PeerLost);
  EXPECT_LT(returnedNs - killedAtNs.load(), 1'000'000'000) << "PeerLost within a second";
  EXPECT_EQ(c.listProcesses().error().code(), StatusCode::PeerLost) << "and every later call";
  kill(r->front().pid, SIGKILL);  // orphaned by the crash
}

// An answer too large to send (a listing of processes with long command lines, past 64 MiB)
// is an error for the request that asked, not a silence that leaves the client waiting.
TEST(Server, AnAnswerTooLargeToSendIsAnErrorNotASilence) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client c = d->connect();
  SpawnOptions o;
  o.argv = {"/bin/sh", "-c", "exec sleep 600", "sh"};
  for (int i = 0; i < 15; ++i) o.argv.push_back(std::string(120'000, static_cast<char>('a' + i)));
  o.count = 45;  // 45 records of 1.8 MB: 81 MB
  auto r = c.spawn(o);
  ASSERT_TRUE(r.has_value()) << r.error().toString();
  std::promise<Status> listed;
  auto answer = listed.get_future();
  std::thread asker([&] {
    auto l = c.listProcesses();
    listed.set_value(l.has_value() ? Status::ok() : l.error());
  });
  const bool answered = answer.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  EXPECT_TRUE(answered) << "no answer within 30 s";
  if (!answered) d->crash();  // the call then returns PeerLost
  asker.join();
  if (answered) {
    const Status st = answer.get();
    EXPECT_EQ(st.code(), StatusCode::MessageTooLarge) << st.toString();
    EXPECT_TRUE(c.signal({r->front().puid}, SIGKILL).isOk()) << "the connection still serves";
  }
  for (const auto& p : *r) kill(p.pid, SIGKILL);
}

// Another user, made for the test.
struct OtherUser {
  uid_t uid = 0;
  gid_t gid = 0;
};

std::optional<OtherUser> otherUser() {
  if (geteuid() != 0) return std::nullopt;
  const char* name = "dragon-test-user";
  if (getpwnam(name) == nullptr) {
    (void)!std::system("useradd --system --no-create-home --shell /usr/sbin/nologin "
                       "dragon-test-user >/dev/null 2>&1");
  }
  const passwd* pw = getpwnam(name);
  if (pw == nullptr) return std::nullopt;
  return OtherUser{pw->pw_uid, pw->pw_gid};
}

TEST(Server, OneLauncherAtATimeMayJoinADragondToAJob) {
  // A dragond of a multi-node job (the Slurm prolog's): the first launcher that asks for its
  // address claims it; a second step's launcher, asking meanwhile, is told to start its own;
  // once the first goes without joining, the next may have it.
  auto d = RunningDaemon::start({"--node-id", "0"});
  ASSERT_TRUE(d);
  std::optional<Client> first(d->connect("step 1"));
  Client second = d->connect("step 2");
  ASSERT_TRUE(first->clusterAddress().has_value());
  auto refused = second.clusterAddress();
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), StatusCode::AlreadyExists);
  EXPECT_EQ(second.joinCluster(ClusterJoin{}).code(), StatusCode::AlreadyExists);
  EXPECT_TRUE(first->clusterAddress().has_value()) << "the claimant may ask again";
  first.reset();
  EXPECT_TRUE(testing::eventually([&] { return second.clusterAddress().has_value(); }))
      << "the claim outlived its launcher's connection";
}

TEST(Server, AnotherUserIsRefused) {
  auto other = otherUser();
  if (!other) GTEST_SKIP() << "needs root to create a second user";
  // 1. The other user cannot even reach the socket of ours (0700 directory).
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  const std::string socket = d->socket();
  pid_t child = testing::forkChild([&] {
    if (setgroups(0, nullptr) != 0 || setgid(other->gid) != 0 || setuid(other->uid) != 0) return 9;
    Client::Options o;
    o.socketPath = socket;
    auto c = Client::connect(o);
    return !c.has_value() && c.error().code() == StatusCode::PermissionDenied ? 0 : 1;
  });
  EXPECT_EQ(testing::exitCodeOf(testing::waitFor(child, 30s)), 0);

  // 2. A dragond of the other user refuses us (root can reach its socket; SO_PEERCRED says no).
  const std::string dir = testing::makeTempDir();
  ASSERT_EQ(chown(dir.c_str(), other->uid, other->gid), 0);
  const std::string theirs = dir + "/dragond.sock";
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t daemon = fork();
  if (daemon == 0) {
    close(ready[0]);
    if (setgroups(0, nullptr) != 0 || setgid(other->gid) != 0 || setuid(other->uid) != 0) _exit(9);
    setenv("HOME", dir.c_str(), 1);  // root's home is not readable by the other user
    unsetenv("XDG_CONFIG_HOME");
    const std::string fd = std::to_string(ready[1]);
    execl(DRAGOND_PATH, DRAGOND_PATH, "--standalone", "--socket", theirs.c_str(), "--ready-fd",
          fd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(ready[1]);
  char buf[8];
  pollfd p{ready[0], POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 30'000), 1);
  ASSERT_EQ(read(ready[0], buf, 5), 5);
  close(ready[0]);
  Client::Options o;
  o.socketPath = theirs;
  auto c = Client::connect(o);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), StatusCode::PermissionDenied) << c.error().toString();
  kill(daemon, SIGTERM);
  EXPECT_EQ(testing::exitCodeOf(testing::waitFor(daemon, 30s)), 0);
  testing::removeTree(dir);
}

// Runs dragond with `args` (and `env` added); its exit code and everything it printed.
std::pair<int, std::string> runDragond(const std::string& args, const std::string& env = "") {
  const std::string cmd = env + " " DRAGOND_PATH " " + args + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const int st = pclose(f);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

TEST(Server, RootIsRefusedUnlessAllowed) {
  if (geteuid() != 0) GTEST_SKIP() << "only meaningful as root";
  auto [rc, out] = runDragond("--standalone --socket /tmp/dragon-test-never.sock",
                              "env -u DRAGON_ALLOW_ROOT");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("refusing to run as root"), std::string::npos) << out;
}

TEST(Server, EveryConfigurationErrorStopsDragondWithWhereAndWhich) {
  const std::string dir = testing::makeTempDir();
  auto write = [&](const std::string& name, const std::string& text) {
    const std::string path = dir + "/" + name;
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs(text.c_str(), f);
    std::fclose(f);
    return path;
  };
  struct Case {
    std::string args, env, mustContain;
  };
  const std::vector<Case> cases = {
      {"--config " + write("unknown.yaml", "log_level: info\npool:\n  defualt_size: 1GiB\n"), "",
       "unknown.yaml:3"},
      {"--config " + dir + "/unknown.yaml", "", "pool.defualt_size"},
      {"--config " + write("type.yaml", "channel:\n  capacity: lots\n"), "", "type.yaml:2"},
      {"--config " + dir + "/type.yaml", "", "channel.capacity"},
      {"--config " + write("size.yaml", "pool:\n  default_size: 12 parsecs\n"), "", "pool.default_size"},
      {"--config " + write("range.yaml", "pool:\n  default_size: 1KiB\n"), "", "range.yaml:2"},
      {"--config " + write("enum.yaml", "log_level: chatty\n"), "", "log_level"},
      {"--config " + write("syntax.yaml", "pool: [unclosed\n"), "", "syntax.yaml"},
      {"--config " + dir + "/missing.yaml", "", "missing.yaml"},
      {"--set pool.default_size=banana", "", "--set pool.default_size"},
      {"--set no.such.key=1", "", "no.such.key"},
      {"--log-level loud", "", "--log-level"},
      {"", "DRAGON_CHANNEL_CAPACITY=0", "DRAGON_CHANNEL_CAPACITY"},
      {"--no-such-flag", "", "--no-such-flag"},
      {"--ready-fd x", "", "--ready-fd"},
      {"--ready-fd 1000", "", "--ready-fd wants an open fd"},
      {"--node-id 3", "", "--standalone and --node-id"},
      {"--config " + dir, "", "is a directory"},
      {"--config " + write("two.yaml", "log_level: info\n---\nlog_level: debug\n"), "",
       "two.yaml:3:1"},
      {"stray", "", "stray"},
  };
  for (const auto& c : cases) {
    auto [rc, out] = runDragond("--standalone --allow-root --socket " + dir + "/s.sock " + c.args,
                                c.env);
    EXPECT_EQ(rc, 2) << c.args << " " << c.env << ":\n" << out;
    EXPECT_NE(out.find(c.mustContain), std::string::npos)
        << c.args << " " << c.env << " should name " << c.mustContain << ":\n" << out;
  }
  testing::removeTree(dir);
}

TEST(Server, PrintConfigShowsEveryKeyWithItsSourceAndVersionAndHelpWork) {
  auto [rc, out] = runDragond("--print-config --set channel.capacity=99", "DRAGON_LOG_LEVEL=info");
  EXPECT_EQ(rc, 0);
  EXPECT_NE(out.find("capacity: 99"), std::string::npos) << out;
  EXPECT_NE(out.find("--set channel.capacity"), std::string::npos) << out;
  EXPECT_NE(out.find("DRAGON_LOG_LEVEL"), std::string::npos) << out;
  EXPECT_NE(out.find("kill_grace"), std::string::npos) << out;
  auto [vrc, version] = runDragond("--version");
  EXPECT_EQ(vrc, 0);
  EXPECT_EQ(version, "dragond " DRAGON_VERSION "\n");
  auto [hrc, help] = runDragond("--help");
  EXPECT_EQ(hrc, 0);
  EXPECT_NE(help.find("--print-config"), std::string::npos);
}

TEST(Server, ASecondDragondOnALiveSocketAndAnUnsafeRuntimeDirectoryAreRefused) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  auto [rc, out] = runDragond("--standalone --allow-root --socket " + d->socket());
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("another dragond"), std::string::npos) << out;
  Client c = d->connect();
  EXPECT_TRUE(c.listProcesses().has_value()) << "the first one still serves";

  const std::string dir = testing::makeTempDir();
  ASSERT_EQ(chmod(dir.c_str(), 0755), 0);
  auto [rc2, out2] = runDragond("--standalone --allow-root --set runtime_dir=" + dir);
  EXPECT_EQ(rc2, 1);
  EXPECT_NE(out2.find("0755"), std::string::npos) << out2;
  testing::removeTree(dir);
}

// A unix socket file at dir/name that nobody listens on (its listener closed without removing
// it, as a SIGKILLed dragond leaves it), or, with `listening`, one that is served (the fd).
int socketFile(const std::string& path, bool listening, std::time_t mtime) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << path;
  if (listening) {
    EXPECT_EQ(listen(fd, 4), 0);
  } else {
    close(fd);
    fd = -1;
  }
  const timespec times[2] = {{mtime, 0}, {mtime, 0}};
  EXPECT_EQ(utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << path;
  return fd;
}

bool exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

TEST(Server, AJobsDragondRemovesTheSocketsOfKilledJobDragondsAndNothingElse) {
  const std::string dir = testing::makeTempDir();
  const std::time_t old = std::time(nullptr) - 3600;
  socketFile(dir + "/job-slurm.pmix.7.0-node1.sock", false, old);  // a killed dragond's
  socketFile(dir + "/job-4242.sock", false, old);                  // a killed laptop job's
  socketFile(dir + "/job-young.sock", false, std::time(nullptr));  // may not listen yet
  const int live = socketFile(dir + "/job-live.sock", true, old);  // served
  socketFile(dir + "/dragond.sock", false, old);                   // not a job's
  auto d = RunningDaemon::start({}, dir, "job-slurm.pmix.8.0-node0.sock");
  ASSERT_TRUE(d);
  EXPECT_FALSE(exists(dir + "/job-slurm.pmix.7.0-node1.sock"));
  EXPECT_FALSE(exists(dir + "/job-4242.sock"));
  EXPECT_TRUE(exists(dir + "/job-young.sock"));
  EXPECT_TRUE(exists(dir + "/job-live.sock"));
  EXPECT_TRUE(exists(dir + "/dragond.sock"));
  EXPECT_TRUE(exists(d->socket()));
  Client c = d->connect();
  EXPECT_TRUE(c.listProcesses().has_value());
  close(live);
}

TEST(Server, Sigusr1DumpsEveryManagersState) {
  const std::string dir = testing::makeTempDir();
  const std::string log = dir + "/log";
  const std::string sock = dir + "/d.sock";
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    execl(DRAGOND_PATH, DRAGOND_PATH, "--standalone", "--allow-root", "--socket", sock.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  Client::Options o;
  o.socketPath = sock;
  Result<Client> c = Status(StatusCode::NotFound);
  ASSERT_TRUE(testing::eventually([&] { return (c = Client::connect(o)).has_value(); }));
  ASSERT_TRUE(c->createPool(1 << 20, "dumped").has_value());
  kill(pid, SIGUSR1);
  auto contents = [&] {
    FILE* f = std::fopen(log.c_str(), "r");
    std::string s;
    char buf[4096];
    std::size_t n;
    while (f != nullptr && (n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    if (f != nullptr) std::fclose(f);
    return s;
  };
  EXPECT_TRUE(testing::eventually([&] { return contents().find("event loop:") != std::string::npos; }));
  const std::string text = contents();
  for (const char* part : {"node registry", "processes:", "objects: 1 pools", "server: 1 connections",
                           "name 'dumped'"}) {
    EXPECT_NE(text.find(part), std::string::npos) << part << " missing from:\n" << text;
  }
  kill(pid, SIGTERM);
  EXPECT_EQ(testing::exitCodeOf(testing::waitFor(pid, 30s)), 0);
  testing::removeTree(dir);
}

}  // namespace
}  // namespace dragon
