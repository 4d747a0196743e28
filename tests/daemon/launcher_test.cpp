// SPDX-License-Identifier: MIT
// The `dragon` launcher, run as a user would: exit codes, output, Ctrl-C, a private dragond
// that leaves nothing behind, `dragon ps`.
#include "daemon_fixture.hpp"

#include <dirent.h>
#include <fstream>
#include <random>
#include <set>
#include <sys/stat.h>

namespace dragon {
namespace {

using namespace std::chrono_literals;
using testing::RunningDaemon;

struct Launched {
  pid_t pid = -1;
  int out = -1;  // the launcher's stdout and stderr, merged
};

// Starts `dragon ARGS...` with a private runtime directory (XDG_RUNTIME_DIR=runtimeDir).
// `ignored`: signals it starts with ignored (as nohup, or a shell's background job, leaves them).
Launched launch(const std::vector<std::string>& args, const std::string& runtimeDir,
                const std::vector<std::string>& env = {}, const std::vector<int>& ignored = {}) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    dup2(p[1], 2);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    setenv("XDG_RUNTIME_DIR", runtimeDir.c_str(), 1);
    setenv("DRAGON_ALLOW_ROOT", "true", 1);
    setenv("DRAGON_PROCESS_KILL_GRACE", "2s", 1);
    unsetenv("DRAGON_SOCKET");
    for (const auto& e : env) putenv(const_cast<char*>(e.c_str()));
    for (int sig : ignored) signal(sig, SIG_IGN);
    std::vector<std::string> all = {LAUNCHER_PATH};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(p[1]);
  return {pid, p[0]};
}

// Reads the launcher's output until it closes (bounded), then reaps it: (wait status, output).
std::pair<int, std::string> finish(Launched l, std::chrono::milliseconds timeout = 60s) {
  std::string out;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{l.out, POLLIN, 0};
    if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    const ssize_t n = read(l.out, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  close(l.out);
  return {testing::waitFor(l.pid, 10s), out};
}

// Reads from the launcher's output until `text` appears (bounded).
bool readUntil(int fd, const std::string& text, std::string& out) {
  return testing::eventually(
      [&] {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, 10) == 1) {
          char buf[4096];
          const ssize_t n = read(fd, buf, sizeof buf);
          if (n > 0) out.append(buf, static_cast<std::size_t>(n));
        }
        return out.find(text) != std::string::npos;
      },
      30s);
}

std::set<std::string> entries(const std::string& dir) {
  std::set<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') out.insert(e->d_name);
    }
    closedir(d);
  }
  return out;
}

class Launcher : public ::testing::Test {
 protected:
  void SetUp() override { runtime_ = testing::makeTempDir(); }
  void TearDown() override { testing::removeTree(runtime_); }
  std::string runtime_;
};

TEST_F(Launcher, ExitsWithTheHeadsCodeAndForwardsItsOutput) {
  auto [st, out] = finish(launch({"--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st), 7);
  EXPECT_NE(out.find("out\n"), std::string::npos) << out;
  EXPECT_NE(out.find("err\n"), std::string::npos) << out;
  auto [st2, out2] = finish(launch({"/bin/sh", "-c", "kill -USR1 $$"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st2), 128 + SIGUSR1);
  auto [st3, out3] = finish(launch({"--label", "/bin/echo", "labelled"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st3), 0);
  // "[NODE:PUID] ": node 0 outside a multi-node job.
  EXPECT_EQ(out3.rfind("[0:", 0), 0u) << out3;
  EXPECT_NE(out3.find("] labelled\n"), std::string::npos) << out3;
}

TEST_F(Launcher, AnXdgRuntimeDirThatIsNotThereFallsBackToTmp) {
  // srun passes on the login node's XDG_RUNTIME_DIR, which a compute node may not have: the
  // private dragond then lives in /tmp/dragon-UID, where it did not start at all before.
  auto [st, out] = finish(launch({"--", "/bin/sh", "-c", "echo ran; echo $DRAGON_SOCKET"},
                                 runtime_ + "/not-there"));
  EXPECT_EQ(testing::exitCodeOf(st), 0) << out;
  EXPECT_NE(out.find("ran\n/tmp/dragon-" + std::to_string(getuid()) + "/job-"), std::string::npos)
      << out;
}

TEST_F(Launcher, BadCommandLinesAndMissingProgramsAreClearErrors) {
  auto [st, out] = finish(launch({}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st), 2);
  EXPECT_NE(out.find("no program"), std::string::npos) << out;
  auto [st2, out2] = finish(launch({"--bogus", "x"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st2), 2);
  EXPECT_NE(out2.find("--bogus"), std::string::npos) << out2;
  // Short options run together are named by the one that is unknown, not by "dragon".
  auto [st4, out4] = finish(launch({"-help"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st4), 2);
  EXPECT_NE(out4.find("option '-h'"), std::string::npos) << out4;
  auto [st5, out5] = finish(launch({"--socket"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st5), 2);
  EXPECT_NE(out5.find("option '--socket'"), std::string::npos) << out5;
  auto [st6, out6] = finish(launch({"--private", "--socket", runtime_ + "/x.sock", "true"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st6), 2);
  EXPECT_NE(out6.find("--private"), std::string::npos) << out6;
  auto [st7, out7] = finish(launch({"--config", "/dev/null", "--socket", runtime_ + "/x.sock", "true"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st7), 2);
  EXPECT_NE(out7.find("--config starts a dragond of the job's own"), std::string::npos) << out7;
  auto [st3, out3] = finish(launch({"no-such-program-xyz"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st3), 127);
  EXPECT_NE(out3.find("no-such-program-xyz"), std::string::npos) << out3;
  EXPECT_TRUE(entries(runtime_ + "/dragon").empty()) << "nothing left after a failed start";
}

TEST_F(Launcher, APrivateDragondJobLeavesNoProcessSocketOrMemoryBehind) {
  // The head starts a background process that would outlive it, and reports both pids.
  Launched l = launch({"/bin/sh", "-c", "sleep 600 & echo \"pids $$ $!\"; exit 0"}, runtime_);
  auto [st, out] = finish(l);
  EXPECT_EQ(testing::exitCodeOf(st), 0) << out;
  int head = 0, background = 0;
  const auto at = out.find("pids ");
  ASSERT_NE(at, std::string::npos) << out;
  ASSERT_EQ(std::sscanf(out.c_str() + at, "pids %d %d", &head, &background), 2);
  EXPECT_TRUE(testing::processGone(head));
  EXPECT_TRUE(testing::eventually([&] { return testing::processGone(background); }))
      << "the job's leftover process is ended";
  EXPECT_TRUE(entries(runtime_ + "/dragon").empty()) << "no socket is left";
  // No dragond of this runtime directory is left either (memfds die with it).
  bool daemonLeft = false;
  for (const auto& pid : entries("/proc")) {
    const std::string e = testing::readFile("/proc/" + pid + "/environ");
    const std::string name = testing::readFile("/proc/" + pid + "/comm");
    if (name == "dragond\n" && e.find(runtime_) != std::string::npos) daemonLeft = true;
  }
  EXPECT_FALSE(daemonLeft);
}

// The live (not zombie) processes that run with `runtimeDir` in their environment: the
// private dragond and every process of its job inherit the launcher's XDG_RUNTIME_DIR.
std::vector<pid_t> processesOf(const std::string& runtimeDir) {
  std::vector<pid_t> out;
  const std::string needle = "XDG_RUNTIME_DIR=" + runtimeDir + '\0';
  for (const auto& name : entries("/proc")) {
    const pid_t pid = std::atoi(name.c_str());
    if (pid <= 0 || pid == getpid()) continue;
    if (testing::readFile("/proc/" + name + "/environ").find(needle) != std::string::npos &&
        !testing::processGone(pid)) {
      out.push_back(pid);
    }
  }
  return out;
}

TEST_F(Launcher, ASigkilledLauncherTakesItsPrivateDragondAndJobWithIt) {
  // SIGKILL at random points: while the private dragond starts, while the head starts, and
  // while the job runs (a head with two background processes that would outlive it).
  const unsigned seed = static_cast<unsigned>(std::random_device{}());
  std::mt19937 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int round = 0; round < 8; ++round) {
    Launched l = launch({"/bin/sh", "-c", "sleep 600 & sleep 600 & echo running; wait"},
                        runtime_, {"DRAGON_PROCESS_KILL_GRACE=1s"});
    std::string out;
    if (round % 2 == 0) {
      // Somewhere in the first 150 ms: the daemon's or the head's start, or just after.
      const int us = std::uniform_int_distribution<int>(0, 150'000)(rng);
      pollfd none{-1, 0, 0};
      poll(&none, 0, us / 1000);
    } else {
      ASSERT_TRUE(readUntil(l.out, "running\n", out)) << out;
    }
    kill(l.pid, SIGKILL);
    auto [st, rest] = finish(l, 10s);
    EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << out << rest;
    std::vector<pid_t> left;
    EXPECT_TRUE(testing::eventually([&] { return (left = processesOf(runtime_)).empty(); }, 20s))
        << "round " << round << ": " << left.size() << " processes of the job are left, first "
        << (left.empty() ? 0 : left.front());
    EXPECT_TRUE(testing::eventually([&] { return entries(runtime_ + "/dragon").empty(); }, 10s))
        << "round " << round << ": the private dragond's socket is left";
    for (pid_t pid : left) kill(pid, SIGKILL);
  }
}

TEST_F(Launcher, CtrlCGoesToTheHeadAndASecondOneKillsTheJob) {
  // A head that reports SIGINT and carries on, with a helper that ignores SIGTERM.
  Launched l = launch({"/bin/sh", "-c",
                       "trap 'echo got-int' INT; echo ready; while :; do sleep 0.05; done"},
                      runtime_);
  std::string out;
  ASSERT_TRUE(readUntil(l.out, "ready\n", out)) << out;
  kill(l.pid, SIGINT);
  ASSERT_TRUE(readUntil(l.out, "got-int\n", out)) << out;
  kill(l.pid, SIGINT);
  auto [st, rest] = finish(l);
  out += rest;
  EXPECT_EQ(testing::exitCodeOf(st), 128 + SIGKILL) << out;
  EXPECT_NE(out.find("killing the job"), std::string::npos) << out;
}

// SIGUSR1, SIGUSR2 and SIGALRM (Slurm's --signal, a checkpoint script) go to the head, which
// decides what they mean; the launcher does not die of them and take the job with it.
TEST_F(Launcher, Usr1Usr2AndAlrmGoToTheHead) {
  Launched l = launch({"/bin/sh", "-c",
                       "trap 'echo got-usr1' USR1; trap 'echo got-alrm' ALRM; "
                       "trap 'echo got-usr2; exit 3' USR2; echo ready; while :; do sleep 0.05; done"},
                      runtime_);
  std::string out;
  ASSERT_TRUE(readUntil(l.out, "ready\n", out)) << out;
  kill(l.pid, SIGUSR1);
  ASSERT_TRUE(readUntil(l.out, "got-usr1\n", out)) << out;
  kill(l.pid, SIGALRM);
  ASSERT_TRUE(readUntil(l.out, "got-alrm\n", out)) << out;
  kill(l.pid, SIGUSR2);
  auto [st, rest] = finish(l);
  out += rest;
  EXPECT_EQ(testing::exitCodeOf(st), 3) << out;
  EXPECT_NE(out.find("got-usr2"), std::string::npos) << out;
}

// `nohup dragon ...`: a hangup it was started ignoring does not end the job.
TEST_F(Launcher, ASignalItWasStartedIgnoringStaysIgnored) {
  Launched l = launch({"/bin/sh", "-c",
                       "trap 'exit 5' USR1; echo ready; while :; do sleep 0.05; done"},
                      runtime_, {}, {SIGHUP});
  std::string out;
  ASSERT_TRUE(readUntil(l.out, "ready\n", out)) << out;
  kill(l.pid, SIGHUP);  // before SIGUSR1 (a signalfd gives the lower number first)
  kill(l.pid, SIGUSR1);
  auto [st, rest] = finish(l);
  EXPECT_EQ(testing::exitCodeOf(st), 5) << out << rest;
}

// Ctrl-C or SIGTERM while the job is set up (here: its private dragond starting) ends it
// before its program starts, which then never runs.
TEST_F(Launcher, ASignalBeforeTheProgramStartsEndsTheJobWithoutStartingIt) {
  const std::string started = runtime_ + "/dragond-starting";
  const std::string go = runtime_ + "/go";
  const std::string ran = runtime_ + "/program-ran";
  const std::string wrapper = runtime_ + "/slow-dragond";
  {
    std::ofstream f(wrapper);
    f << "#!/bin/sh\ntouch '" << started << "'\nwhile [ ! -e '" << go
      << "' ]; do sleep 0.01; done\nexec '" << DRAGOND_PATH << "' \"$@\"\n";
  }
  ASSERT_EQ(chmod(wrapper.c_str(), 0755), 0);
  Launched l = launch({"/bin/sh", "-c", "touch '" + ran + "'"}, runtime_,
                      {"DRAGON_DAEMON=" + wrapper});
  ASSERT_TRUE(testing::eventually([&] { return access(started.c_str(), F_OK) == 0; }, 30s));
  kill(l.pid, SIGTERM);
  { std::ofstream(go.c_str()) << ""; }
  auto [st, out] = finish(l);
  EXPECT_EQ(testing::exitCodeOf(st), 128 + SIGTERM) << out;
  EXPECT_NE(out.find("before the program started"), std::string::npos) << out;
  EXPECT_NE(access(ran.c_str(), F_OK), 0) << "the program ran";
}

// `dragon` run by a process of a job (a pipeline script of steps, subprocess.run): a job of
// its own on the same dragond, whose end leaves the enclosing job alone.
TEST_F(Launcher, ADragonInsideAJobRunsAJobOfItsOwnAndLeavesTheEnclosingOneAlone) {
  const std::string inner = std::string(LAUNCHER_PATH);
  Launched l = launch({"/bin/sh", "-c",
                       "sleep 600 & echo \"outer-bg $!\"; " + inner +
                           " -- /bin/sh -c 'sleep 600 & echo \"inner-bg $!\"; exit 4'; "
                           "echo \"inner-exit $?\"; kill -0 $! && echo outer-bg-alive; exit 0"},
                      runtime_);
  auto [st, out] = finish(l);
  EXPECT_EQ(testing::exitCodeOf(st), 0) << out;
  EXPECT_NE(out.find("inner-exit 4"), std::string::npos) << out;
  EXPECT_NE(out.find("outer-bg-alive"), std::string::npos) << out;
  int innerBg = 0;
  const auto at = out.find("inner-bg ");
  ASSERT_NE(at, std::string::npos) << out;
  ASSERT_EQ(std::sscanf(out.c_str() + at, "inner-bg %d", &innerBg), 1);
  EXPECT_TRUE(testing::eventually([&] { return testing::processGone(innerBg); }))
      << "the inner job's leftover process is ended with the inner job";
  EXPECT_TRUE(entries(runtime_ + "/dragon").empty()) << "no socket is left";
}

TEST_F(Launcher, SigtermEndsTheJob) {
  Launched l = launch({"/bin/sh", "-c", "echo ready; exec sleep 600"}, runtime_);
  std::string out;
  ASSERT_TRUE(readUntil(l.out, "ready\n", out)) << out;
  kill(l.pid, SIGTERM);
  auto [st, rest] = finish(l);
  EXPECT_EQ(testing::exitCodeOf(st), 128 + SIGTERM) << out << rest;
}

TEST_F(Launcher, UsesARunningDragondAndPsListsTheJob) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  const std::string env = "DRAGON_SOCKET=" + d->socket();
  Launched l = launch({"/bin/sh", "-c", "echo ready; exec sleep 600"}, runtime_, {env});
  std::string out;
  ASSERT_TRUE(readUntil(l.out, "ready\n", out)) << out;
  Launched ps = launch({"ps"}, runtime_, {env});
  auto [pst, listing] = finish(ps);
  EXPECT_EQ(testing::exitCodeOf(pst), 0) << listing;
  EXPECT_NE(listing.find("PUID"), std::string::npos) << listing;
  EXPECT_NE(listing.find("sleep 600"), std::string::npos) << listing;
  EXPECT_NE(listing.find("running"), std::string::npos) << listing;
  // The socket named as elsewhere: --socket PATH or --socket=PATH.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"ps", "--socket", d->socket()},
        std::vector<std::string>{"ps", "--socket=" + d->socket()}}) {
    auto [named, named_listing] = finish(launch(args, runtime_));
    EXPECT_EQ(testing::exitCodeOf(named), 0) << named_listing;
    EXPECT_NE(named_listing.find("sleep 600"), std::string::npos) << named_listing;
  }
  kill(l.pid, SIGTERM);
  auto [st, rest] = finish(l);
  EXPECT_EQ(testing::exitCodeOf(st), 128 + SIGTERM) << out << rest;
  EXPECT_TRUE(entries(runtime_ + "/dragon").empty()) << "no private dragond was started";
  // The shared dragond keeps serving after the job.
  Client c = d->connect();
  EXPECT_TRUE(c.listProcesses().has_value());
}

TEST_F(Launcher, FindsTheDragondWhereTheConfigurationPutsItAndConfigFlagsStartItsOwn) {
  // The user's dragon.yaml puts dragond's runtime directory elsewhere: the launcher looks
  // there, as dragond listens there.
  const std::string home = testing::makeTempDir();
  const std::string served = testing::makeTempDir();
  ASSERT_EQ(mkdir((home + "/dragon").c_str(), 0700), 0);
  {
    std::ofstream f(home + "/dragon/dragon.yaml");
    f << "runtime_dir: " << served << "\n";
  }
  auto d = RunningDaemon::start({}, served, "dragond.sock");
  ASSERT_TRUE(d);
  const std::string xdg = "XDG_CONFIG_HOME=" + home;
  auto [st, out] = finish(launch({"/bin/sh", "-c", "echo $DRAGON_SOCKET"}, runtime_, {xdg}));
  EXPECT_EQ(testing::exitCodeOf(st), 0) << out;
  EXPECT_NE(out.find(served + "/dragond.sock\n"), std::string::npos) << out;
  EXPECT_TRUE(entries(runtime_ + "/dragon").empty()) << "no private dragond was started";
  d.reset();
  // Nothing there, and a dragond in the default place (as the system's per-user one, which
  // listens where its unit says whatever the configuration): that one.
  ASSERT_TRUE(mkdir((runtime_ + "/dragon").c_str(), 0700) == 0 || errno == EEXIST);
  auto running = RunningDaemon::start({}, runtime_ + "/dragon", "dragond.sock");
  ASSERT_TRUE(running);
  auto [st3, out3] = finish(launch({"/bin/sh", "-c", "echo $DRAGON_SOCKET"}, runtime_, {xdg}));
  EXPECT_EQ(testing::exitCodeOf(st3), 0) << out3;
  EXPECT_NE(out3.find(runtime_ + "/dragon/dragond.sock\n"), std::string::npos) << out3;
  testing::removeTree(home);
  // --log-level (as --config) is for a dragond of the job's own: it starts one, also when
  // one serves in the default place.
  auto [st2, out2] =
      finish(launch({"--log-level", "warn", "/bin/sh", "-c", "echo $DRAGON_SOCKET"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st2), 0) << out2;
  EXPECT_NE(out2.find(runtime_ + "/dragon/job-"), std::string::npos) << out2;
}

TEST_F(Launcher, PsWithoutADragondSaysSo) {
  auto [st, out] = finish(launch({"ps"}, runtime_));
  EXPECT_EQ(testing::exitCodeOf(st), 1);
  EXPECT_NE(out.find("no dragond"), std::string::npos) << out;
}

}  // namespace
}  // namespace dragon
