// SPDX-License-Identifier: MIT
// `dragon`, the launcher: runs a program as the head process of a job on this node's dragond
// (starting a private one when none serves this user), forwards the job's output, passes
// Ctrl-C to the head, and exits with the head's exit code. `dragon ps` lists processes.
#include "base/log.hpp"
#include "daemon/listener.hpp"

#include <dragon/client.hpp>

#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <getopt.h>
#include <optional>
#include <poll.h>
#include <string>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace {

using dragon::Client;
using dragon::Status;
using dragon::StatusCode;
using dragon::Result;

constexpr const char* kUsage = R"(Usage: dragon [OPTIONS] [--] PROGRAM [ARGS...]
       dragon [OPTIONS] SCRIPT.py [ARGS...]
       dragon ps [--socket PATH]
Runs PROGRAM as the head process of a Dragon job on this node and exits with its exit code
(128+N when signal N ended it). A Python script runs under /usr/bin/python3 (or
$DRAGON_PYTHON) as __main__ with the multiprocessing start method "dragon". Uses the dragond serving this user, or starts a private one
for the job and stops it at the end.

  --label          prefix every output line with "[PUID] "
  --socket PATH    the dragond to use (default: $DRAGON_SOCKET, else RUNTIME_DIR/dragond.sock)
  --private        always start a private dragond for this job
  --config FILE    configuration file for a private dragond
  --log-level L    log level of a private dragond (debug, info, warn, error, off)
  --version        print the version and exit
  --help           print this and exit

Ctrl-C is passed to the head process; a second Ctrl-C kills the whole job at once. SIGTERM or
SIGHUP end the job (SIGTERM to its processes, SIGKILL after the grace period).
)";

struct Options {
  bool label = false;
  bool forcePrivate = false;
  std::string socket;
  std::string config;
  std::string logLevel;
  std::vector<std::string> program;
};

void writeAll(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = write(fd, s.data(), s.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // stdout closed: the job goes on; its output has nowhere to go
    }
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

void complain(const std::string& what) { writeAll(2, "dragon: " + what + "\n"); }

// The directory this launcher's binary is in, or "" if unknown.
std::string selfDir() {
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return {};
  std::string dir(self, static_cast<std::size_t>(n));
  dir.resize(dir.rfind('/'));
  return dir;
}

std::string daemonPath() {
  if (const char* env = std::getenv("DRAGON_DAEMON"); env != nullptr && env[0] != '\0') {
    return env;
  }
  const std::string dir = selfDir();
  if (!dir.empty() && access((dir + "/dragond").c_str(), X_OK) == 0) return dir + "/dragond";
  return "dragond";  // looked up in PATH
}

// A job-private dragond: our child in a session of its own (so terminal signals reach only
// the launcher), serving a socket named after this launcher.
class PrivateDaemon {
 public:
  ~PrivateDaemon() { stop(); }

  Status start(const Options& o, std::string& socketPath) {
    const std::string dir = dragon::defaultRuntimeDir();
    DRAGON_TRY(dragon::daemon::ensurePrivateDir(dir));
    socketPath = dir + "/job-" + std::to_string(getpid()) + ".sock";
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) != 0) return Status::fromErrno("pipe2", errno);
    // The lifeline: dragond holds the read end and stops (as on SIGTERM: the job's processes,
    // its memory and its socket go) once it reads end of file, which the kernel delivers when
    // this launcher ends however it ends, SIGKILL included. Only this process holds the write
    // end (close-on-exec), so no process of the job keeps dragond alive.
    int life[2];
    if (pipe2(life, O_CLOEXEC) != 0) {
      const int e = errno;
      close(ready[0]);
      close(ready[1]);
      return Status::fromErrno("pipe2", e);
    }
    lifeline_ = dragon::UniqueFd(life[1]);
    std::vector<std::string> args = {daemonPath(), "--standalone", "--socket", socketPath,
                                     "--ready-fd", std::to_string(ready[1]),
                                     "--exit-with-fd", std::to_string(life[0])};
    if (!o.config.empty()) args.insert(args.end(), {"--config", o.config});
    if (!o.logLevel.empty()) args.insert(args.end(), {"--log-level", o.logLevel});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ < 0) {
      const int e = errno;
      close(ready[0]);
      close(ready[1]);
      close(life[0]);
      return Status::fromErrno("fork", e);
    }
    if (pid_ == 0) {
      setsid();
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      fcntl(ready[1], F_SETFD, 0);
      fcntl(life[0], F_SETFD, 0);
      execvp(argv[0], argv.data());
      std::fprintf(stderr, "dragon: cannot run %s: %s\n", argv[0], std::strerror(errno));
      _exit(127);
    }
    close(ready[1]);
    close(life[0]);
    dragon::UniqueFd readFd(ready[0]);
    // dragond writes "ready" once it serves, or exits (closing the pipe) when it cannot.
    pollfd p{readFd.get(), POLLIN, 0};
    const int rc = poll(&p, 1, 30'000);
    char buf[16] = {};
    const ssize_t n = rc > 0 ? read(readFd.get(), buf, sizeof buf - 1) : -1;
    if (n <= 0 || std::strncmp(buf, "ready", 5) != 0) {
      int st = 0;
      if (rc == 0) kill(pid_, SIGKILL);
      waitpid(pid_, &st, 0);
      pid_ = -1;
      return Status(StatusCode::Internal,
                    rc == 0 ? "the private dragond did not start within 30 s"
                            : "the private dragond could not start (see its message above)");
    }
    return Status::ok();
  }

  // SIGTERM, then wait: dragond ends what is left of the job and releases its memory.
  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int st = 0;
    while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  dragon::UniqueFd lifeline_;  // write end of dragond's --exit-with-fd pipe
};

bool isPythonScript(const std::string& program) {
  return program.size() > 3 && program.compare(program.size() - 3, 3, ".py") == 0;
}

// Where the `dragon` package is: beside this launcher in a build tree (build/python), else
// where `meson install` put it.
std::string pythonPackageDir() {
  const std::string dir = selfDir();
  const std::string build = dir + "/../python";
  if (!dir.empty() && access((build + "/dragon/__init__.py").c_str(), F_OK) == 0) return build;
  return DRAGON_PYTHON_DIR;
}

int listProcesses(const Options& o) {
  Client::Options co;
  co.socketPath = o.socket;
  co.name = "dragon ps";
  auto client = Client::connect(co);
  if (!client.has_value()) {
    complain("ps: " + client.error().toString());
    return 1;
  }
  auto list = client->listProcesses();
  if (!list.has_value()) {
    complain("ps: " + list.error().toString());
    return 1;
  }
  std::printf("%-14s %-8s %-12s %-6s %-6s %s\n", "PUID", "PID", "STATE", "JOB", "GROUP",
              "COMMAND");
  for (const auto& p : *list) {
    std::string state = p.running ? "running"
                        : p.exit.signal != 0 ? "signal " + std::to_string(p.exit.signal)
                                             : "exit " + std::to_string(p.exit.exitCode);
    std::string cmd;
    for (const auto& a : p.argv) cmd += (cmd.empty() ? "" : " ") + a;
    // A Python Process forked by the template runs the template's command line; its label is
    // the Process's name. (A spawned process's label is its output prefix, a "{puid}" format.)
    if (!p.label.empty() && p.label.find('{') == std::string::npos) cmd += " (" + p.label + ")";
    std::printf("%-14llu %-8d %-12s %-6llu %-6llu %s\n", static_cast<unsigned long long>(p.puid),
                static_cast<int>(p.pid), state.c_str(), static_cast<unsigned long long>(p.job),
                static_cast<unsigned long long>(p.group), cmd.c_str());
  }
  return 0;
}

std::optional<int> parse(int argc, char** argv, Options& o) {
  enum { OptLabel = 1, OptSocket, OptPrivate, OptConfig, OptLogLevel, OptVersion, OptHelp };
  static const option kOptions[] = {
      {"label", no_argument, nullptr, OptLabel},
      {"socket", required_argument, nullptr, OptSocket},
      {"private", no_argument, nullptr, OptPrivate},
      {"config", required_argument, nullptr, OptConfig},
      {"log-level", required_argument, nullptr, OptLogLevel},
      {"version", no_argument, nullptr, OptVersion},
      {"help", no_argument, nullptr, OptHelp},
      {nullptr, 0, nullptr, 0},
  };
  opterr = 0;
  int c;
  // "+": options end at the program's name, so its own options are left alone.
  while ((c = getopt_long(argc, argv, "+", kOptions, nullptr)) != -1) {
    switch (c) {
      case OptLabel: o.label = true; break;
      case OptSocket: o.socket = optarg; break;
      case OptPrivate: o.forcePrivate = true; break;
      case OptConfig: o.config = optarg; break;
      case OptLogLevel: o.logLevel = optarg; break;
      case OptVersion: std::printf("dragon %s\n", DRAGON_VERSION); return 0;
      case OptHelp: std::fputs(kUsage, stdout); return 0;
      default:
        complain(std::string("unknown or incomplete option '") + argv[optind - 1] + "' (see --help)");
        return 2;
    }
  }
  for (int i = optind; i < argc; ++i) o.program.emplace_back(argv[i]);
  if (o.program.empty()) {
    complain(std::string("no program to run (see --help)"));
    return 2;
  }
  return std::nullopt;
}

int runJob(const Options& o) {
  // Terminal signals arrive through a signalfd that the client watches while it waits.
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&set, s);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  dragon::UniqueFd sigfd(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));

  PrivateDaemon privateDaemon;
  std::string socket = o.socket.empty() ? dragon::defaultSocketPath() : o.socket;
  Client::Options co;
  co.name = "dragon launcher";
  co.socketPath = socket;
  Result<Client> client = Status(StatusCode::NotFound);
  if (!o.forcePrivate) client = Client::connect(co);
  if (!client.has_value() && client.error().code() == StatusCode::NotFound && o.socket.empty()) {
    Status st = privateDaemon.start(o, socket);
    if (!st.isOk()) {
      complain(std::string(st.message()));
      return 1;
    }
    co.socketPath = socket;
    client = Client::connect(co);
  }
  if (!client.has_value()) {
    complain(client.error().toString());
    return 1;
  }
  client->setOutputHandler([](const dragon::OutputLine& l) { writeAll(l.isStderr ? 2 : 1, l.line); });

  dragon::SpawnOptions spawn;
  spawn.argv = o.program;
  std::string pythonPath;
  if (isPythonScript(o.program.front())) {
    // `dragon app.py`: the script runs as __main__ with the dragon start method.
    const char* py = std::getenv("DRAGON_PYTHON");
    spawn.argv = {py != nullptr && py[0] != '\0' ? py : "/usr/bin/python3", "-m", "dragon.run"};
    spawn.argv.insert(spawn.argv.end(), o.program.begin(), o.program.end());
    pythonPath = pythonPackageDir();
  }
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "DRAGON_SOCKET=", 14) == 0) continue;
    if (!pythonPath.empty() && std::strncmp(*e, "PYTHONPATH=", 11) == 0) {
      pythonPath += ":" + std::string(*e + 11);
      continue;
    }
    spawn.env.emplace_back(*e);
  }
  spawn.env.push_back("DRAGON_SOCKET=" + socket);
  if (!pythonPath.empty()) spawn.env.push_back("PYTHONPATH=" + pythonPath);
  spawn.stdinMode = dragon::Stdio::Passed;
  spawn.label = o.label ? "[{puid}] " : "";
  auto head = client->spawn(spawn);
  if (!head.has_value()) {
    complain(head.error().toString());
    return head.error().code() == StatusCode::NotFound ? 127 : 126;
  }
  const std::uint64_t puid = head->front().puid;

  int interrupts = 0;
  Client* cl = &*client;
  client->setInterrupt(sigfd.get(), [&] {
    signalfd_siginfo si{};
    while (read(sigfd.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      if (si.ssi_signo == SIGINT) {
        if (++interrupts == 1) {
          (void)cl->signal({puid}, SIGINT);
        } else {
          complain(std::string("interrupted again: killing the job"));
          (void)cl->endJob(true);
        }
      } else {
        (void)cl->endJob(false);
      }
    }
  });
  auto exited = client->wait({puid});
  if (!exited.has_value()) {
    complain("lost the job: " + exited.error().toString());
    return 1;
  }
  const int code = exited->front().shellCode();
  // Whatever the head left running goes with it.
  Status st = client->endJob(false);
  if (!st.isOk()) complain("ending the job: " + st.toString());
  client = Status(StatusCode::PeerLost);  // disconnect before the private dragond stops
  privateDaemon.stop();
  return code;
}

int run(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "ps") == 0) {
    Options o;
    if (argc == 4 && std::strcmp(argv[2], "--socket") == 0) {
      o.socket = argv[3];
    } else if (argc != 2) {
      complain(std::string("usage: dragon ps [--socket PATH]"));
      return 2;
    }
    return listProcesses(o);
  }
  Options o;
  if (auto rc = parse(argc, argv, o)) return *rc;
  return runJob(o);
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
