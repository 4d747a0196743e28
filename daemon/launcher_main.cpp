// SPDX-License-Identifier: MIT
// `dragon`, the launcher: runs a program as the head process of a job on this node's dragond
// (starting a private one when none serves this user), forwards the job's output, passes
// Ctrl-C to the head, and exits with the head's exit code. `dragon ps` lists processes.
#include "base/log.hpp"
#include "config/config.hpp"
#include "daemon/bootstrap.hpp"
#include "daemon/listener.hpp"
#include "daemon/modules.hpp"
#include "protocol/codec.hpp"

#include <dragon/client.hpp>

#include <cctype>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <optional>
#include <poll.h>
#include <sys/syscall.h>
#include <string>
#include <sys/random.h>
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

  --label          prefix every output line with "[NODE:PUID] " (the node it ran on, its id)
  --socket PATH    the dragond to use (default: $DRAGON_SOCKET, else RUNTIME_DIR/dragond.sock)
  --private        always start a private dragond for this job
  --config FILE    configuration file for a private dragond (implies --private)
  --log-level L    log level of a private dragond (debug, info, warn, error, off;
                   implies --private)
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

// An output line of the job: as it came, or with --label, after "[NODE:PUID] " (every process
// of the job, on any node, whatever label its spawner gave it: like srun --label's rank).
void printLine(bool label, const dragon::OutputLine& l) {
  const int fd = l.isStderr ? 2 : 1;
  if (!label) {
    writeAll(fd, l.line);
    return;
  }
  std::string out = "[" + std::to_string(l.puid >> 40) + ":" + std::to_string(l.puid) + "] ";
  out += l.line;
  writeAll(fd, out);
}

void complain(const std::string& what) { writeAll(2, "dragon: " + what + "\n"); }

using dragon::modules::selfDir;

std::string daemonPath() {
  if (const char* env = std::getenv("DRAGON_DAEMON"); env != nullptr && env[0] != '\0') {
    return env;
  }
  const std::string dir = selfDir();
  if (!dir.empty() && access((dir + "/dragond").c_str(), X_OK) == 0) return dir + "/dragond";
  return "dragond";  // looked up in PATH
}

// Kills (SIGKILL) every process whose environment names `socket` as its DRAGON_SOCKET: what a
// job left on this node if its dragond died without ending it (SIGKILL, a crash). Bounded.
void sweepJobProcesses(const std::string& socket) {
  const std::string marker = "DRAGON_SOCKET=" + socket;
  for (int round = 0; round < 20; ++round) {
    int found = 0;
    DIR* proc = opendir("/proc");
    if (proc == nullptr) return;
    while (dirent* e = readdir(proc)) {
      char* end = nullptr;
      const long pid = std::strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end != '\0' || pid <= 1 || pid == getpid()) continue;
      // The process first, then its environment: a pid reused in between is a new process,
      // which the environment then describes, while the pidfd still names the one that went
      // (the signal fails), so no process is killed for another's environment.
      dragon::UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0)));
      if (!pidfd) continue;
      const std::string path = std::string("/proc/") + e->d_name + "/environ";
      FILE* f = std::fopen(path.c_str(), "re");
      if (f == nullptr) continue;
      std::string env;
      char buf[4096];
      std::size_t n;
      while ((n = std::fread(buf, 1, sizeof buf, f)) > 0 && env.size() < (std::size_t{1} << 20)) {
        env.append(buf, n);
      }
      std::fclose(f);
      std::size_t at = 0;
      bool match = false;
      while (at < env.size()) {
        const std::size_t nul = env.find('\0', at);
        const std::size_t len = (nul == std::string::npos ? env.size() : nul) - at;
        if (env.compare(at, len, marker) == 0) {
          match = true;
          break;
        }
        if (nul == std::string::npos) break;
        at = nul + 1;
      }
      if (match && syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) == 0) ++found;
    }
    closedir(proc);
    if (found == 0) return;
    // Killed ones leave the table once reaped by their parent (init for orphans).
    pollfd none{-1, 0, 0};
    (void)poll(&none, 0, 20);
  }
}

// A job-private dragond: our child in a session of its own (so terminal signals reach only
// the launcher), serving a socket named after this launcher.
class PrivateDaemon {
 public:
  ~PrivateDaemon() { stop(); }

  // nodeId >= 0: node nodeId of a multi-node job, serving `socketPath` (which must be per node:
  // nodes may share /tmp).
  Status start(const Options& o, std::string& socketPath, std::int64_t nodeId = -1) {
    const std::string dir = dragon::defaultRuntimeDir();
    DRAGON_TRY(dragon::daemon::ensurePrivateDir(dir));
    if (nodeId < 0) socketPath = dir + "/job-" + std::to_string(getpid()) + ".sock";
    socket_ = socketPath;
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
    std::vector<std::string> args = {daemonPath(), "--socket", socketPath,
                                     "--ready-fd", std::to_string(ready[1]),
                                     "--exit-with-fd", std::to_string(life[0])};
    if (nodeId >= 0) {
      args.insert(args.end(), {"--node-id", std::to_string(nodeId)});
    } else {
      args.push_back("--standalone");
    }
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

  // SIGTERM, then wait: dragond ends what is left of the job and releases its memory. If it
  // had died before (SIGKILL, a crash), what it left is cleared here: the job's processes on
  // this node and its socket.
  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int st = 0;
    while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      sweepJobProcesses(socket_);
      (void)unlink(socket_.c_str());
    }
  }

 private:
  pid_t pid_ = -1;
  std::string socket_;
  dragon::UniqueFd lifeline_;  // write end of dragond's --exit-with-fd pipe
};

bool isPythonScript(const std::string& program) {
  return (program.size() > 3 && program.compare(program.size() - 3, 3, ".py") == 0) ||
         (program.size() > 4 && program.compare(program.size() - 4, 4, ".pyc") == 0);
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
      default: {
        // A long option names itself; a short one (`-help` is -h, e, l, p: there are none) is
        // optopt, while optind may still point at the word it came from.
        const bool isLong = optind >= 2 && std::strncmp(argv[optind - 1], "--", 2) == 0;
        const std::string what = !isLong && optopt > ' ' && optopt < 127
                                     ? std::string("-") + static_cast<char>(optopt)
                                     : std::string(argv[optind - 1]);
        complain("unknown or incomplete option '" + what + "' (see --help)");
        return 2;
      }
    }
  }
  if (!o.socket.empty() && (o.forcePrivate || !o.config.empty() || !o.logLevel.empty())) {
    const char* own = o.forcePrivate ? "--private" : !o.config.empty() ? "--config" : "--log-level";
    complain(std::string(own) + " starts a dragond of the job's own; --socket names one to use: "
                                "give one of them");
    return 2;
  }
  for (int i = optind; i < argc; ++i) o.program.emplace_back(argv[i]);
  if (o.program.empty()) {
    complain(std::string("no program to run (see --help)"));
    return 2;
  }
  return std::nullopt;
}

// Signals the launcher passes on to the head process, as Slurm's --signal or a checkpoint
// script sends them to the job's tasks; their default action would end the launcher, and with
// it the job.
bool passedToHead(std::uint32_t sig) {
  return sig == SIGUSR1 || sig == SIGUSR2 || sig == SIGALRM;
}

// Terminal signals, and those passed to the head, arrive through a signalfd that the client
// watches while it waits.
// One that this launcher was started ignoring stays ignored: `nohup dragon ...` must outlive a
// hangup, and `dragon ... &` in a script an interrupt (a blocked signal is queued even when
// ignored, and would reach the signalfd).
dragon::UniqueFd blockTerminalSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM}) {
    struct sigaction old {};
    if (sigaction(s, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    sigaddset(&set, s);
  }
  sigprocmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  return dragon::UniqueFd(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
}

// Runs the head program on `client`'s dragond and waits for it; its shell-style exit code, or
// -1 after saying why it could not run or was lost. `endCode` is passed to endJob.
int runHead(const Options& o, Client& client, const std::string& socket, int sigfd,
            bool multiNode) {
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
    // The job's processes are Dragon's, not the PMIx server's clients: a PMIx_Init in one of
    // them must not pose as this launcher.
    if (multiNode && std::strncmp(*e, "PMIX_", 5) == 0) continue;
    if (!pythonPath.empty() && std::strncmp(*e, "PYTHONPATH=", 11) == 0) {
      pythonPath += ":" + std::string(*e + 11);
      continue;
    }
    spawn.env.emplace_back(*e);
  }
  spawn.env.push_back("DRAGON_SOCKET=" + socket);
  if (!pythonPath.empty()) spawn.env.push_back("PYTHONPATH=" + pythonPath);
  spawn.stdinMode = dragon::Stdio::Passed;
  // A signal that came while the job was set up (a private dragond starting, the PMIx fence)
  // ends it before its program starts: Ctrl-C or scancel then must not start it after all.
  // One for the head (SIGUSR1...) has no head to go to yet.
  signalfd_siginfo early{};
  while (sigfd >= 0 && read(sigfd, &early, sizeof early) == static_cast<ssize_t>(sizeof early)) {
    if (passedToHead(early.ssi_signo)) continue;
    complain(std::string(strsignal(static_cast<int>(early.ssi_signo))) +
             " before the program started: not started");
    return 128 + static_cast<int>(early.ssi_signo);
  }
  auto head = client.spawn(spawn);
  if (!head.has_value()) {
    complain(head.error().toString());
    return head.error().code() == StatusCode::NotFound ? 127 : 126;
  }
  const std::uint64_t puid = head->front().puid;

  int interrupts = 0;
  Client* cl = &client;
  client.setInterrupt(sigfd, [&] {
    signalfd_siginfo si{};
    while (read(sigfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      if (passedToHead(si.ssi_signo)) {
        (void)cl->signal({puid}, static_cast<int>(si.ssi_signo));
      } else if (si.ssi_signo == SIGINT) {
        if (++interrupts == 1) {
          (void)cl->signal({puid}, SIGINT);
        } else {
          complain(std::string("interrupted again: killing the job"));
          (void)cl->endJob(true, 128 + SIGINT);
        }
      } else {
        (void)cl->endJob(false, 128 + static_cast<int>(si.ssi_signo));
      }
    }
  });
  auto exited = client.wait({puid});
  client.setInterrupt(-1, nullptr);
  if (!exited.has_value()) {
    complain("lost the job: " + exited.error().toString());
    return -1;
  }
  return exited->front().shellCode();
}

// Where the configuration puts dragond's socket (`socket`, `runtime_dir`: as dragond reads
// them), when DRAGON_SOCKET does not say; empty when it puts it nowhere special.
std::string configuredSocket(const Options& o) {
  const char* env = std::getenv("DRAGON_SOCKET");
  if (env != nullptr && env[0] != '\0') return {};
  dragon::config::LoadOptions lo;
  if (!o.config.empty()) lo.explicitFile = o.config;
  auto cfg = dragon::config::Config::load(lo);
  // A configuration that does not load: the private dragond started next reports why.
  return cfg.has_value() ? dragon::config::configuredSocketPath(*cfg) : std::string();
}

int runJob(const Options& o, dragon::UniqueFd sigfd) {
  PrivateDaemon privateDaemon;
  // Unless told (--socket): DRAGON_SOCKET, else the configuration's place for dragond's
  // socket, then the default one (the system's per-user dragond, which listens where its
  // unit says whatever the configuration); with none there, a private dragond.
  std::string socket = o.socket.empty() ? dragon::defaultSocketPath() : o.socket;
  Client::Options co;
  co.name = "dragon launcher";
  co.socketPath = socket;
  co.newJob = true;  // also when a process of another job runs `dragon`
  Result<Client> client = Status(StatusCode::NotFound);
  // --config and --log-level are for a dragond of the job's own (a running one has its
  // configuration): they start one, as in a multi-node job.
  const bool ownDragond = o.forcePrivate || !o.config.empty() || !o.logLevel.empty();
  if (!ownDragond) {
    std::vector<std::string> places = {socket};
    if (o.socket.empty()) {
      const std::string configured = configuredSocket(o);
      if (!configured.empty() && configured != socket) places.insert(places.begin(), configured);
    }
    for (const auto& place : places) {
      co.socketPath = place;
      client = Client::connect(co);
      if (client.has_value() || client.error().code() != StatusCode::NotFound) {
        socket = place;
        break;
      }
    }
  }
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
  client->setOutputHandler([label = o.label](const dragon::OutputLine& l) { printLine(label, l); });
  int code = runHead(o, *client, socket, sigfd.get(), false);
  if (code < 0) return 1;
  // Whatever the head left running goes with it.
  Status st = client->endJob(false);
  if (!st.isOk()) complain("ending the job: " + st.toString());
  client = Status(StatusCode::PeerLost);  // disconnect before the private dragond stops
  privateDaemon.stop();
  return code;
}

// --- Multi-node jobs (docs/cluster.md) ---

constexpr const char* kNodeKey = "dragon.node";
constexpr const char* kSecretKey = "dragon.secret";

// How many tasks Slurm started in this step, when it did (0 otherwise).
long slurmStepTasks() {
  const char* step = std::getenv("SLURM_STEP_ID");
  const char* n = std::getenv("SLURM_STEP_NUM_TASKS");
  if (n == nullptr) n = std::getenv("SLURM_NTASKS");
  if (step == nullptr || n == nullptr) return 0;
  return std::strtol(n, nullptr, 10);
}

// The PMIx bootstrap when a PMIx server started us; null for a one-node job; an error when the
// environment says several tasks were started but no PMIx server is there to wire them up.
Result<std::unique_ptr<dragon::bootstrap::Bootstrap>> chooseBootstrap() {
  const char* ns = std::getenv("PMIX_NAMESPACE");
  const char* rank = std::getenv("PMIX_RANK");
  if (ns != nullptr && rank != nullptr) {
    auto info = dragon::modules::loadModule("pmix_plugin", "dragon-bootstrap-pmix.so",
                                            dragon::bootstrap::kBootstrapModuleSymbol,
                                            "PMIx (a PMIx server started this dragon)");
    if (!info.has_value()) return info.error();
    const auto* m = static_cast<const dragon::bootstrap::BootstrapModule*>(*info);
    if (m->abiVersion != dragon::bootstrap::kAbiVersion) {
      return Status(StatusCode::InvalidArgument,
                    "the PMIx module was built for another dragon (ABI " +
                        std::to_string(m->abiVersion) + ")");
    }
    Status error;
    auto b = m->create(error);
    if (b == nullptr) return Status(error.code(), "PMIx: " + std::string(error.message()));
    return b;
  }
  const long tasks = slurmStepTasks();
  // A process of a job (DRAGON_SOCKET names its node's dragond) that runs `dragon` inherits
  // the step's SLURM_* but not its PMIX_* (runHead leaves those out): a job of its own on
  // that dragond, not a step to wire up.
  const char* inJob = std::getenv("DRAGON_SOCKET");
  if (tasks > 1 && (inJob == nullptr || inJob[0] == '\0')) {
    return Status(StatusCode::InvalidArgument,
                  "srun started " + std::to_string(tasks) +
                      " tasks but no PMIx server answers, so they cannot form one job: run "
                      "`srun --mpi=pmix ... dragon ...` (or set MpiDefault=pmix in slurm.conf); "
                      "one task per node is enough (--ntasks-per-node=1)");
  }
  return std::unique_ptr<dragon::bootstrap::Bootstrap>();
}

std::string randomSecret() {
  std::string s(32, '\0');
  std::size_t got = 0;
  while (got < s.size()) {
    const ssize_t n = getrandom(s.data() + got, s.size() - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return {};
    }
    got += static_cast<std::size_t>(n);
  }
  return s;
}

// A name safe in a file name, from the PMIx namespace ("slurm.pmix.42.0").
std::string fileSafe(const std::string& s) {
  std::string out;
  for (char ch : s) {
    out += (std::isalnum(static_cast<unsigned char>(ch)) != 0 || ch == '.' || ch == '-') ? ch : '_';
  }
  return out.substr(0, 64);
}

// The dragond that the Slurm prolog (packaging/slurm/dragon-prolog) started for this job on
// this node, or "" outside a Slurm job. The name carries the node because nodes may share /run.
std::string slurmPrologSocket() {
  const char* job = std::getenv("SLURM_JOB_ID");
  const char* node = std::getenv("SLURMD_NODENAME");
  if (job == nullptr || node == nullptr || job[0] == '\0' || node[0] == '\0') return {};
  return "/run/dragon/slurm-job-" + fileSafe(job) + "-" + fileSafe(node) + "/dragond.sock";
}

// The configuration this launcher was given for its dragond (--config, --log-level, DRAGON_
// configuration variables), if any: the Slurm prolog's dragond, started before the job with
// the user's files only, would not have it. "" when none.
std::string ownConfiguration(const Options& o) {
  if (!o.config.empty()) return "--config";
  if (!o.logLevel.empty()) return "--log-level";
  for (const auto& k : dragon::config::keys()) {
    const std::string env = dragon::config::envName(k.name);
    if (env != "DRAGON_SOCKET" && std::getenv(env.c_str()) != nullptr) return env;
  }
  return {};
}

int runCluster(const Options& o, dragon::bootstrap::Bootstrap& b, dragon::UniqueFd sigfd) {
  const auto& f = b.facts();
  const bool serving = f.localRank == 0;
  if (f.rank == 0 && !serving) {
    complain("PMIx placed rank 0 after another rank on its node; dragon needs rank 0 to be "
             "the first rank of its node");
    b.abort(1, "dragon: rank 0 is not its node's first rank");
    return 1;
  }
  // Nodes may share /tmp (and do, in network namespaces): the socket is named after the node.
  std::string socket = dragon::defaultRuntimeDir() + "/job-" + fileSafe(f.job) + "-node" +
                       std::to_string(f.nodeId) + ".sock";
  PrivateDaemon privateDaemon;
  Client::Options co;
  co.name = "dragon launcher (rank " + std::to_string(f.rank) + ")";
  co.newJob = true;
  Result<Client> client = Status(StatusCode::NotFound);
  auto fail = [&](const std::string& what) {
    complain("rank " + std::to_string(f.rank) + " on " + f.hostname + ": " + what);
    // Our dragond first, while it can clean up: the abort ends the step, with SIGKILL.
    privateDaemon.stop();
    b.abort(1, "dragon: " + what);
    return 1;
  };
  if (serving) {
    Result<dragon::ClusterEndpoint> endpoint = Status(StatusCode::NotFound);
    // The prolog's dragond serves the job's first step; a later step (its cluster layer is
    // wired once) or a node without one starts a private dragond, as without the prolog.
    const std::string prolog = slurmPrologSocket();
    const std::string own = ownConfiguration(o);
    const bool prologServes = !prolog.empty() && access(prolog.c_str(), F_OK) == 0;
    if (prologServes && !own.empty() && f.rank == 0) {
      complain("rank 0 on " + f.hostname + ": " + own +
               " given: this step starts private dragonds with it, not the Slurm prolog's");
    }
    if (prologServes && own.empty()) {
      co.socketPath = prolog;
      client = Client::connect(co);
      if (client.has_value()) endpoint = client->clusterAddress();
      if (endpoint.has_value()) {
        socket = prolog;
      } else {
        const Status why = client.has_value() ? endpoint.error() : client.error();
        if (why.code() != StatusCode::AlreadyExists) {
          complain("rank " + std::to_string(f.rank) + " on " + f.hostname +
                   ": not using the dragond of the Slurm prolog (" + why.toString() +
                   "): starting a private one");
        }
        client = Status(StatusCode::NotFound);
      }
    }
    if (!endpoint.has_value()) {
      Status st = privateDaemon.start(o, socket, f.nodeId);
      if (!st.isOk()) return fail(std::string(st.message()));
      co.socketPath = socket;
      client = Client::connect(co);
      if (!client.has_value()) return fail(client.error().toString());
      endpoint = client->clusterAddress();
      if (!endpoint.has_value()) return fail(endpoint.error().toString());
    }
    dragon::protocol::NodeInfo me;
    me.set_node(endpoint->node);
    me.set_hostname(f.hostname);
    me.set_cpus(f.cpus);
    me.set_rank(f.rank);
    me.set_address(endpoint->address);
    me.set_socket(socket);
    Status put = b.put(kNodeKey, me.SerializeAsString());
    if (!put.isOk()) return fail(put.toString());
  }
  if (f.rank == 0) {
    const std::string secret = randomSecret();
    if (secret.empty()) return fail("no random bytes for the job secret");
    Status put = b.put(kSecretKey, secret);
    if (!put.isOk()) return fail(put.toString());
  }
  // The fence is bounded by cluster.connect_timeout, as the join that follows it is (the
  // configuration as dragond reads it; dragond reports its errors and warnings).
  dragon::config::LoadOptions lo;
  if (!o.config.empty()) lo.explicitFile = o.config;
  auto cfg = dragon::config::Config::load(lo);
  if (!cfg.has_value()) return fail(std::string(cfg.error().message()));
  Status ex = b.exchange(cfg->getDurationNs("cluster.connect_timeout"));
  if (ex.code() == StatusCode::Timeout) {
    // Every rank waits as long and ends by itself: an abort here would SIGKILL the ranks
    // still waiting, and their dragonds, which then could not clean up.
    complain("rank " + std::to_string(f.rank) + " on " + f.hostname +
             ": the PMIx exchange failed: " + ex.toString());
    privateDaemon.stop();
    return 1;
  }
  if (!ex.isOk()) return fail("the PMIx exchange failed: " + ex.toString());

  dragon::ClusterJoin join;
  std::string servedBy;  // the socket of this node's dragond, from the launcher that serves it
  for (std::uint32_t r = 0; r < f.size; ++r) {
    auto v = b.get(r, kNodeKey);
    if (!v.has_value()) {
      if (v.error().code() == StatusCode::NotFound) continue;  // not its node's first rank
      return fail(v.error().toString());
    }
    dragon::protocol::NodeInfo n;
    if (!n.ParseFromString(*v)) return fail("rank " + std::to_string(r) + " published a bad node");
    for (const auto& p : join.nodes) {
      if (p.info.node == n.node()) {
        return fail("nodes " + p.info.hostname + " and " + n.hostname() + " both say they are node " +
                    std::to_string(n.node()) + " (a Slurm prolog's dragond on one and not on the other?)");
      }
    }
    if (n.hostname() == f.hostname) servedBy = n.socket();
    dragon::ClusterJoin::Peer p;
    p.info = dragon::NodeInfo{n.node(), n.hostname(), n.cpus(), n.rank()};
    p.address = n.address();
    if (r == 0) join.headNode = n.node();
    join.nodes.push_back(std::move(p));
  }
  if (!serving) {
    // Another launcher of this node serves it: wait for the job's end there, and exit as the
    // job does. (Its dragond is up: that launcher started or found it before the exchange.)
    if (servedBy.empty()) return fail("no launcher of " + f.hostname + " published its dragond");
    co.socketPath = servedBy;
    client = Client::connect(co);
    if (!client.has_value()) return fail(client.error().toString());
    // Taking no part in the job, it ends of SIGTERM, SIGHUP or SIGQUIT as a process without a
    // handler would (its node's serving launcher, which Slurm signals too, ends the node's
    // part). Ctrl-C and the head's signals go to rank 0's launcher, as on the other ranks.
    client->setInterrupt(sigfd.get(), [fd = sigfd.get()] {
      signalfd_siginfo si{};
      while (read(fd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        const int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGINT || passedToHead(si.ssi_signo)) continue;
        std::signal(sig, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        sigprocmask(SIG_UNBLOCK, &one, nullptr);
        raise(sig);
      }
    });
    auto end = client->waitJobEnd();
    if (!end.has_value()) {
      complain(end.error().toString());
      return 1;
    }
    return *end;
  }

  auto secret = b.get(0, kSecretKey);
  if (!secret.has_value()) return fail(secret.error().toString());
  join.secret = *secret;
  // Global services live with the lowest rank: known to every node from the exchange alone.
  join.globalNode = join.headNode;
  Status st = client->joinCluster(join);
  if (!st.isOk()) return fail("joining the job: " + st.toString());
  client->setOutputHandler([label = o.label](const dragon::OutputLine& l) { printLine(label, l); });

  int code = 0;
  if (f.rank == 0) {
    code = runHead(o, *client, socket, sigfd.get(), true);
    if (code < 0) code = 1;
    Status end = client->endJob(false, code);
    if (!end.isOk()) {
      complain("the job failed: " + std::string(end.message()));
      if (code == 0) code = 1;
    }
  } else {
    // Until the head node ends the job. SIGTERM (scancel) or SIGHUP end it here at once; the
    // head node then hears that this node left.
    Client* cl = &*client;
    int fd = sigfd.get();
    int signalled = 0;
    client->setInterrupt(fd, [&] {
      signalfd_siginfo si{};
      while (read(fd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        // Rank 0 passes Ctrl-C, SIGUSR1, SIGUSR2 and SIGALRM to the head.
        if (si.ssi_signo == SIGINT || passedToHead(si.ssi_signo)) continue;
        signalled = static_cast<int>(si.ssi_signo);
        // Ends this node's part of the job; dragond then answers the waitJobEnd below.
        (void)cl->endJob(false, 128 + signalled);
      }
    });
    auto end = client->waitJobEnd();
    client->setInterrupt(-1, nullptr);
    if (signalled != 0) {
      code = 128 + signalled;
    } else if (!end.has_value()) {
      complain(end.error().toString());
      code = 1;
    } else {
      code = *end;
    }
  }
  if (f.localSize > 1) {
    // This node's other launchers learn the job's end from this dragond: it stays until they
    // have (bounded by cluster.connect_timeout).
    (void)client->waitJobEnd(f.localSize - 1);
  }
  client = Status(StatusCode::PeerLost);
  privateDaemon.stop();
  return code;
}

int run(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "ps") == 0) {
    Options o;
    if (argc == 4 && std::strcmp(argv[2], "--socket") == 0) {
      o.socket = argv[3];
    } else if (argc == 3 && std::strncmp(argv[2], "--socket=", 9) == 0 && argv[2][9] != '\0') {
      o.socket = argv[2] + 9;
    } else if (argc != 2) {
      complain(std::string("usage: dragon ps [--socket PATH]"));
      return 2;
    }
    return listProcesses(o);
  }
  Options o;
  if (auto rc = parse(argc, argv, o)) return *rc;
  // Inherited as ignored, SIGCHLD would have the kernel reap the private dragond, and its exit
  // status (which says whether to sweep up after it) would be lost.
  std::signal(SIGCHLD, SIG_DFL);
  // Before PMIx_Init: the threads it starts inherit the mask, so that terminal signals reach
  // the signalfd instead of killing the launcher in one of them.
  dragon::UniqueFd sigfd = blockTerminalSignals();
  auto bootstrap = chooseBootstrap();
  if (!bootstrap.has_value()) {
    complain(std::string(bootstrap.error().message()));
    return 1;
  }
  if (*bootstrap != nullptr) {
    if (!o.socket.empty() || o.forcePrivate) {
      complain(std::string("--socket and --private do not apply to a multi-node job: each node "
                           "gets a private dragond"));
      return 2;
    }
    return runCluster(o, **bootstrap, std::move(sigfd));
  }
  return runJob(o, std::move(sigfd));
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
