// SPDX-License-Identifier: MIT
#include "daemon/process_manager.hpp"

#include "base/log.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace dragon::daemon {
namespace pb = dragon::protocol;

namespace {

constexpr std::uint32_t kMaxCount = 10000;
constexpr std::size_t kReadChunk = 64 * 1024;

bool hasNul(const std::string& s) { return s.find('\0') != std::string::npos; }

// argv[0] as execvp would find it, but in the child's PATH and relative to the child's cwd.
Result<std::string> resolveProgram(const pb::Spawn& req) {
  const std::string& prog = req.argv(0);
  if (prog.empty()) {
    return Status(StatusCode::InvalidArgument, "the program name is empty");
  }
  if (prog.find('/') != std::string::npos) {
    return prog;  // posix_spawn resolves it after the chdir
  }
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& e : req.env()) {
    if (e.rfind("PATH=", 0) == 0) {
      path = e.substr(5);
    }
  }
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    if (dir.empty()) dir = ".";
    if (dir[0] != '/' && !req.cwd().empty()) dir = req.cwd() + "/" + dir;
    const std::string candidate = dir + "/" + prog;
    struct stat st {};
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return Status(StatusCode::NotFound, "program not found in PATH: " + prog);
}

class FileActions {
 public:
  FileActions() { posix_spawn_file_actions_init(&fa_); }
  ~FileActions() { posix_spawn_file_actions_destroy(&fa_); }
  FileActions(const FileActions&) = delete;
  FileActions& operator=(const FileActions&) = delete;
  posix_spawn_file_actions_t* get() { return &fa_; }

 private:
  posix_spawn_file_actions_t fa_;
};

class SpawnAttr {
 public:
  SpawnAttr() { posix_spawnattr_init(&a_); }
  ~SpawnAttr() { posix_spawnattr_destroy(&a_); }
  SpawnAttr(const SpawnAttr&) = delete;
  SpawnAttr& operator=(const SpawnAttr&) = delete;
  posix_spawnattr_t* get() { return &a_; }

 private:
  posix_spawnattr_t a_;
};

std::string expandLabel(const std::string& label, std::uint64_t puid, pid_t pid) {
  std::string out;
  for (std::size_t i = 0; i < label.size(); ++i) {
    if (label.compare(i, 6, "{puid}") == 0) {
      out += std::to_string(puid);
      i += 5;
    } else if (label.compare(i, 5, "{pid}") == 0) {
      out += std::to_string(pid);
      i += 4;
    } else {
      out += label[i];
    }
  }
  return out;
}

constexpr std::string_view kCapturedPipesVar = "DRAGON_CAPTURED_PIPES";

// The inode number of an open fd (0 for none).
unsigned long long inodeOf(const UniqueFd& fd) {
  struct stat st {};
  if (!fd || fstat(fd.get(), &st) != 0) return 0;
  return static_cast<unsigned long long>(st.st_ino);
}

// Through the pidfd: the pid of an adopted process may name another process once its parent
// has reaped it. 0, or -1 with errno.
int pidfdSignal(const UniqueFd& pidfd, int sig) {
  if (!pidfd) return 0;  // it has ended
  return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd.get(), sig, nullptr, 0));
}

}  // namespace

ProcessManager::~ProcessManager() {
  // dragond only gets here after endAll() finished, or on a fatal error: leave nothing behind.
  for (auto& [puid, p] : processes_) {
    if (p.adopted) {
      (void)pidfdSignal(p.pidfd, SIGKILL);  // its parent reaps it
      continue;
    }
    if (!p.exited) {
      kill(-p.pid, SIGKILL);
      kill(p.pid, SIGKILL);
      siginfo_t info{};
      waitid(P_PID, static_cast<id_t>(p.pid), &info, WEXITED);
    }
  }
}

Result<pid_t> ProcessManager::spawnOne(const pb::Spawn& req, std::vector<UniqueFd>& passed,
                                       UniqueFd& outRead, UniqueFd& errRead) {
  DRAGON_ASSIGN_OR_RETURN(std::string program, resolveProgram(req));
  // A passed fd must not sit where an earlier dup2 of the child's setup would overwrite it:
  // move any below 3 or inside the extra fds' target range above that range.
  const int top = static_cast<int>(req.extra_fd_base() + req.extra_fds());
  for (auto& fd : passed) {
    const int n = fd.get();
    if (n < 3 || (req.extra_fds() > 0 && n >= static_cast<int>(req.extra_fd_base()) && n < top)) {
      UniqueFd moved(fcntl(n, F_DUPFD_CLOEXEC, std::max(top, 3)));
      if (!moved) return Status::fromErrno("fcntl(F_DUPFD_CLOEXEC)", errno);
      fd = std::move(moved);
    }
  }
  FileActions fa;
  std::size_t nextPassed = 0;
  UniqueFd outWrite, errWrite;
  auto setup = [&](int target, pb::Spawn::Stdio mode, const std::string& file) -> Status {
    switch (mode) {
      case pb::Spawn::INHERIT:
        return Status::ok();
      case pb::Spawn::NULL_DEVICE:
        posix_spawn_file_actions_addopen(fa.get(), target, "/dev/null",
                                         target == 0 ? O_RDONLY : O_WRONLY, 0);
        return Status::ok();
      case pb::Spawn::FILE:
        if (file.empty() || hasNul(file)) {
          return Status(StatusCode::InvalidArgument, "a FILE stream needs a path");
        }
        posix_spawn_file_actions_addopen(
            fa.get(), target, file.c_str(),
            target == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND, 0600);
        return Status::ok();
      case pb::Spawn::PASSED:
        if (nextPassed >= passed.size()) {
          return Status(StatusCode::InvalidArgument, "a PASSED stream came without its fd");
        }
        posix_spawn_file_actions_adddup2(fa.get(), passed[nextPassed++].get(), target);
        return Status::ok();
      case pb::Spawn::CAPTURE: {
        if (target == 0) {
          return Status(StatusCode::InvalidArgument, "stdin cannot be captured");
        }
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) != 0) {
          return Status::fromErrno("pipe2", errno);
        }
        (target == 1 ? outRead : errRead).reset(fds[0]);
        (target == 1 ? outWrite : errWrite).reset(fds[1]);
        (void)fcntl(fds[0], F_SETFL, O_NONBLOCK);
        posix_spawn_file_actions_adddup2(fa.get(), fds[1], target);
        return Status::ok();
      }
      default:
        return Status(StatusCode::InvalidArgument, "unknown stdio mode");
    }
  };
  DRAGON_TRY(setup(0, req.stdin_mode(), req.stdin_file()));
  DRAGON_TRY(setup(1, req.stdout_mode(), req.stdout_file()));
  DRAGON_TRY(setup(2, req.stderr_mode(), req.stderr_file()));
  if (req.extra_fds() > 0) {
    if (req.extra_fds() > 32 || req.extra_fd_base() < 3 || req.extra_fd_base() > 4096) {
      return Status(StatusCode::InvalidArgument,
                    "extra fds: at most 32, placed from fd 3 to 4128");
    }
    if (passed.size() < nextPassed + req.extra_fds()) {
      return Status(StatusCode::InvalidArgument, "fewer fds came with the request than it names");
    }
    for (std::uint32_t i = 0; i < req.extra_fds(); ++i) {
      posix_spawn_file_actions_adddup2(fa.get(), passed[nextPassed + i].get(),
                                       static_cast<int>(req.extra_fd_base() + i));
    }
  }
  // The child gets its stdio and the fds lent to it, nothing of dragond's: libraries it uses
  // (UCX above all) open fds without FD_CLOEXEC, which would otherwise reach every process.
  // (glibc ignores a close of an fd that is not open.)
  const int lentFrom = req.extra_fds() > 0 ? static_cast<int>(req.extra_fd_base()) : 3;
  for (int fd = 3; fd < lentFrom; ++fd) posix_spawn_file_actions_addclose(fa.get(), fd);
  posix_spawn_file_actions_addclosefrom_np(fa.get(), req.extra_fds() > 0 ? top : 3);
  if (!req.cwd().empty()) {
    posix_spawn_file_actions_addchdir_np(fa.get(), req.cwd().c_str());
  }

  SpawnAttr attr;
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(attr.get(), &none);  // dragond blocks signals for its signalfd
  posix_spawnattr_setsigdefault(attr.get(), &all);
  posix_spawnattr_setpgroup(attr.get(), 0);
  posix_spawnattr_setflags(attr.get(), POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                           POSIX_SPAWN_SETPGROUP);

  std::vector<char*> argv, envp;
  for (const auto& a : req.argv()) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // DRAGON_CAPTURED_PIPES names the pipes dragond reads the process's stdout and stderr from
  // (their inode numbers, 0 for a stream not captured): a Python parent whose fds 1 and 2 are
  // still those pipes has its children's output captured too, each under its own puid.
  std::string captured = std::string(kCapturedPipesVar) + "=" + std::to_string(inodeOf(outWrite)) +
                         "," + std::to_string(inodeOf(errWrite));
  for (const auto& e : req.env()) {
    if (e.compare(0, kCapturedPipesVar.size() + 1, std::string(kCapturedPipesVar) + "=") == 0) {
      continue;
    }
    envp.push_back(const_cast<char*>(e.c_str()));
  }
  if (outWrite || errWrite) envp.push_back(captured.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, program.c_str(), fa.get(), attr.get(), argv.data(),
                             envp.data());
  if (rc != 0) {
    outRead.reset();
    errRead.reset();
    if (rc == ENOENT || rc == EACCES || rc == ENOEXEC || rc == ENOTDIR) {
      return Status(rc == ENOENT ? StatusCode::NotFound : StatusCode::PermissionDenied,
                    "cannot start " + program + ": " + std::strerror(rc));
    }
    return Status::fromErrno("posix_spawn " + program, rc);
  }
  return pid;
}

Result<ProcessManager::Spawned> ProcessManager::spawn(const pb::Spawn& req, std::uint64_t job,
                                                      std::vector<UniqueFd>& passed) {
  if (req.argv_size() == 0) {
    return Status(StatusCode::InvalidArgument, "spawn needs a program");
  }
  if (ending_.count(job) != 0) {
    // Its end would wait for a process started after the kill: refused instead.
    return Status(StatusCode::PeerLost, "the job is ending");
  }
  for (const auto& a : req.argv()) {
    if (hasNul(a)) return Status(StatusCode::InvalidArgument, "an argument holds a NUL byte");
  }
  for (const auto& e : req.env()) {
    if (hasNul(e) || e.find('=') == std::string::npos) {
      return Status(StatusCode::InvalidArgument, "an environment entry is not NAME=value");
    }
  }
  if (hasNul(req.cwd())) {
    return Status(StatusCode::InvalidArgument, "the working directory holds a NUL byte");
  }
  const std::uint32_t count = req.count() == 0 ? 1 : req.count();
  if (count > kMaxCount) {
    return Status(StatusCode::InvalidArgument,
                  "at most " + std::to_string(kMaxCount) + " processes per spawn");
  }
  std::uint64_t group = req.group();
  const bool otherNode = (group >> 40) != node_;
  if (group != 0 && (!otherNode || !groupsOfOtherNodes_) && registry_.groupMembers(group).empty()) {
    return Status(StatusCode::NotFound, "no process group " + std::to_string(group));
  }
  if (group == 0 && count > 1) {
    group = registry_.newGroup();
  }
  Spawned out;
  out.group = group;
  for (std::uint32_t i = 0; i < count; ++i) {
    UniqueFd outRead, errRead;
    auto pid = spawnOne(req, passed, outRead, errRead);
    if (!pid.has_value()) {
      if (i == 0) return pid.error();
      DRAGON_LOG(Warn, "processes", "spawn %u of %u failed: %s", i + 1, count,
                 pid.error().toString().c_str());
      break;  // the ones started are reported; the caller sees fewer than asked
    }
    Process p;
    p.puid = registry_.newPuid();
    p.pid = *pid;
    p.job = job;
    p.label = expandLabel(req.label(), p.puid, p.pid);
    p.pidfd.reset(static_cast<int>(syscall(SYS_pidfd_open, p.pid, 0)));
    if (!p.pidfd) {
      const int err = errno;
      kill(p.pid, SIGKILL);
      siginfo_t info{};
      waitid(P_PID, static_cast<id_t>(p.pid), &info, WEXITED);
      return Status::fromErrno("pidfd_open", err);
    }
    if (outRead) {
      p.out = std::make_unique<Stream>();
      p.out->fd = std::move(outRead);
    }
    if (errRead) {
      p.err = std::make_unique<Stream>();
      p.err->fd = std::move(errRead);
      p.err->isStderr = true;
    }
    ProcessRecord rec;
    rec.puid = p.puid;
    rec.pid = p.pid;
    rec.node = node_;
    for (const auto& a : req.argv()) rec.argv.push_back(a);
    rec.label = p.label;
    rec.group = group;
    rec.job = job;
    registry_.addProcess(rec);
    out.puids.push_back(p.puid);
    out.pids.push_back(p.pid);
    byPid_[p.pid] = p.puid;
    auto& stored = processes_[p.puid] = std::move(p);
    watch(stored);
  }
  return out;
}

void ProcessManager::watch(Process& p) {
  const std::uint64_t puid = p.puid;
  Status st = loop_.add(p.pidfd.get(), EPOLLIN, [this, puid](std::uint32_t) { onExit(puid); });
  if (!st.isOk()) {
    DRAGON_LOG(Error, "processes", "watching process %d: %s", p.pid, st.toString().c_str());
  }
  const bool paused = pausedJobs_.count(p.job) != 0;
  for (Stream* s : {p.out.get(), p.err.get()}) {
    if (s == nullptr) continue;
    const bool isErr = s->isStderr;
    s->paused = paused;
    st = loop_.add(s->fd.get(), paused ? 0u : std::uint32_t{EPOLLIN},
                   [this, puid, isErr](std::uint32_t) { onOutput(puid, isErr); });
    if (!st.isOk()) {
      DRAGON_LOG(Error, "processes", "watching output of %d: %s", p.pid, st.toString().c_str());
    }
  }
}

void ProcessManager::onExit(std::uint64_t puid) {
  auto it = processes_.find(puid);
  if (it == processes_.end()) return;
  Process& p = it->second;
  if (p.adopted) {
    onAdoptedEnd(p);
    return;
  }
  siginfo_t info{};
  const int rc = waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(p.pidfd.get()), &info,
                        WEXITED | WNOHANG);
  if ((rc != 0 && errno != ECHILD) || (rc == 0 && info.si_pid == 0)) {
    return;  // not yet (spurious wakeup)
  }
  if (rc != 0) {
    // Reaped by the kernel (SIGCHLD ignored: runDaemon resets it, so not by our doing): it
    // has ended, and its status is lost. Left in the loop, its pidfd would stay readable.
    DRAGON_LOG(Warn, "processes", "puid %llu (pid %d) was reaped without us: status lost",
               static_cast<unsigned long long>(p.puid), p.pid);
    info.si_code = CLD_EXITED;
    info.si_status = 255;
  }
  loop_.remove(p.pidfd.get());
  p.pidfd.reset();
  p.exited = true;
  byPid_.erase(p.pid);
  if (info.si_code == CLD_EXITED) {
    p.exitCode = info.si_status;
  } else {
    p.signal = info.si_status;
  }
  DRAGON_LOG(Debug, "processes", "puid %llu (pid %d) ended: code %d signal %d",
             static_cast<unsigned long long>(puid), p.pid, p.exitCode, p.signal);
  if (p.out || p.err) {
    p.drainTimer = loop_.addTimerAfterNs(kDrainAfterExitNs, [this, puid] {
      auto f = processes_.find(puid);
      if (f != processes_.end()) {
        f->second.drainTimer = 0;
        if (!f->second.finished) finished(f->second);
      }
    });
  }
  maybeFinish(p);
}

void ProcessManager::emit(Process& p, bool isStderr, std::string_view line) {
  pb::Envelope msg;
  auto* o = msg.mutable_output_line();
  o->set_puid(p.puid);
  o->set_stream(isStderr ? pb::OutputLine::STDERR : pb::OutputLine::STDOUT);
  // A spawned process's label is its output prefix; an adopted one's is a name for listings.
  const std::string_view prefix = p.adopted ? std::string_view() : std::string_view(p.label);
  std::string text;
  text.reserve(prefix.size() + line.size());
  text.append(prefix).append(line);
  o->set_line(std::move(text));
  if (sink_(p.job, msg) && pausedJobs_.insert(p.job).second) {
    for (auto& [puid, q] : processes_) {
      if (q.job != p.job) continue;
      for (Stream* s : {q.out.get(), q.err.get()}) {
        if (s != nullptr && s->fd && !s->paused) {
          s->paused = true;
          (void)loop_.modify(s->fd.get(), 0);
        }
      }
    }
  }
}

void ProcessManager::resumeOutput(std::uint64_t job) {
  if (pausedJobs_.erase(job) == 0) return;
  for (auto& [puid, q] : processes_) {
    if (q.job != job) continue;
    for (Stream* s : {q.out.get(), q.err.get()}) {
      if (s != nullptr && s->fd && s->paused) {
        s->paused = false;
        (void)loop_.modify(s->fd.get(), EPOLLIN);
      }
    }
  }
}

void ProcessManager::onOutput(std::uint64_t puid, bool isStderr) {
  auto it = processes_.find(puid);
  if (it == processes_.end()) return;
  Process& p = it->second;
  Stream* s = isStderr ? p.err.get() : p.out.get();
  if (s == nullptr || !s->fd) return;
  char buf[kReadChunk];
  const ssize_t n = read(s->fd.get(), buf, sizeof buf);
  if (n > 0) {
    s->lines.feed(std::string_view(buf, static_cast<std::size_t>(n)),
                  [&](std::string_view line) { emit(p, isStderr, line); });
    return;
  }
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  closeStream(p, isStderr);
  maybeFinish(p);
}

void ProcessManager::closeStream(Process& p, bool isStderr) {
  std::unique_ptr<Stream>& s = isStderr ? p.err : p.out;
  if (!s) return;
  // Whatever is still in the pipe (a descendant may keep writing) is read first.
  if (s->fd) {
    char buf[kReadChunk];
    for (int i = 0; i < 64; ++i) {
      const ssize_t n = read(s->fd.get(), buf, sizeof buf);
      if (n <= 0) break;
      s->lines.feed(std::string_view(buf, static_cast<std::size_t>(n)),
                    [&](std::string_view line) { emit(p, isStderr, line); });
    }
  }
  s->lines.finish([&](std::string_view line) { emit(p, isStderr, line); });
  if (s->fd) loop_.remove(s->fd.get());
  s.reset();
}

void ProcessManager::maybeFinish(Process& p) {
  if (p.exited && !p.finished && !p.out && !p.err) {
    finished(p);
  }
}

void ProcessManager::finished(Process& p) {
  // Output still held open by a descendant after the grace second is cut off here.
  closeStream(p, false);
  closeStream(p, true);
  if (p.drainTimer != 0) {
    loop_.cancelTimer(p.drainTimer);
    p.drainTimer = 0;
  }
  p.finished = true;
  registry_.processExited(p.puid, p.exitCode, p.signal);
  const std::uint64_t job = p.job;
  checkWaiters();
  checkEnding(job);
}

void ProcessManager::wait(const std::vector<std::uint64_t>& puids, std::int64_t timeoutNs,
                          WaitDone done) {
  for (auto puid : puids) {
    if (processes_.count(puid) == 0) {
      done(Status(StatusCode::NotFound, "no process with puid " + std::to_string(puid)));
      return;
    }
  }
  const std::uint64_t id = nextWaiter_++;
  Waiter& w = waiters_[id];
  w.puids = puids;
  w.done = std::move(done);
  if (timeoutNs >= 0) {
    w.timer = loop_.addTimerAfterNs(timeoutNs, [this, id] {
      auto it = waiters_.find(id);
      if (it == waiters_.end()) return;
      auto cb = std::move(it->second.done);
      waiters_.erase(it);
      cb(Status(StatusCode::Timeout, "the processes had not all exited by the deadline"));
    });
  }
  checkWaiters();
}

void ProcessManager::checkWaiters() {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    std::vector<ExitRecord> out;
    bool all = true;
    for (auto puid : it->second.puids) {
      auto p = processes_.find(puid);
      if (p == processes_.end() || !p->second.finished) {
        all = false;
        break;
      }
      out.push_back(ExitRecord{puid, p->second.exitCode, p->second.signal});
    }
    if (!all) {
      ++it;
      continue;
    }
    auto cb = std::move(it->second.done);
    if (it->second.timer != 0) loop_.cancelTimer(it->second.timer);
    it = waiters_.erase(it);
    cb(std::move(out));
  }
}

Status ProcessManager::signal(const std::vector<std::uint64_t>& puids, int sig) {
  if (sig < 0 || sig >= NSIG) {
    return Status(StatusCode::InvalidArgument, "no signal " + std::to_string(sig));
  }
  for (auto puid : puids) {
    auto it = processes_.find(puid);
    if (it == processes_.end()) {
      return Status(StatusCode::NotFound, "no process with puid " + std::to_string(puid));
    }
  }
  for (auto puid : puids) {
    const Process& p = processes_.at(puid);
    if (p.adopted) {
      if (pidfdSignal(p.pidfd, sig) != 0 && errno != ESRCH) {
        return Status::fromErrno("pidfd_send_signal", errno);
      }
    } else if (!p.exited && kill(p.pid, sig) != 0 && errno != ESRCH) {
      return Status::fromErrno("kill", errno);
    }
  }
  return Status::ok();
}

Status ProcessManager::signalGroup(std::uint64_t group, int sig) {
  auto members = registry_.groupMembers(group);
  if (members.empty()) {
    return Status(StatusCode::NotFound, "no process group " + std::to_string(group));
  }
  return signal(members, sig);
}

void ProcessManager::killJob(std::uint64_t job, int sig) {
  for (auto& [puid, p] : processes_) {
    if (p.job != job) continue;
    if (p.adopted) {
      // It leads no group of its own (it is in its adopter's, which is signalled as a
      // process of the job if dragond started it).
      (void)pidfdSignal(p.pidfd, sig);
    } else if (!p.exited) {
      // The whole process group: descendants that stayed in it go too.
      if (kill(-p.pid, sig) != 0) kill(p.pid, sig);
    } else if (byPid_.count(p.pid) == 0) {
      // Its group may outlive it (a background child). The group id is the reaped leader's
      // pid; skipped when that pid now belongs to another process of ours. A foreign process
      // of this user that reused the pid as a new group's id in between would be hit: a
      // window accepted for not leaving a job's processes behind.
      kill(-p.pid, sig);
    }
  }
}

void ProcessManager::endJob(std::uint64_t job, std::function<void()> done, bool now) {
  auto [it, fresh] = ending_.try_emplace(job);
  if (done) it->second.done.push_back(std::move(done));
  if (now) {
    killJob(job, SIGKILL);
  } else if (fresh) {
    killJob(job, SIGTERM);
    it->second.killTimer = loop_.addTimerAfterNs(killGraceNs_, [this, job] {
      auto e = ending_.find(job);
      if (e == ending_.end()) return;
      e->second.killTimer = 0;
      killJob(job, SIGKILL);
    });
  }
  checkEnding(job);
}

void ProcessManager::endAll(std::function<void()> done) {
  std::set<std::uint64_t> jobs;
  for (const auto& [puid, p] : processes_) jobs.insert(p.job);
  if (jobs.empty()) {
    if (done) done();
    return;
  }
  auto remaining = std::make_shared<std::size_t>(jobs.size());
  auto shared = std::make_shared<std::function<void()>>(std::move(done));
  for (auto job : jobs) {
    endJob(job, [remaining, shared] {
      if (--*remaining == 0 && *shared) (*shared)();
    });
  }
}

void ProcessManager::checkEnding(std::uint64_t job) {
  auto e = ending_.find(job);
  if (e == ending_.end()) return;
  for (const auto& [puid, p] : processes_) {
    if (p.job == job && !p.finished) return;
  }
  if (e->second.killTimer != 0) loop_.cancelTimer(e->second.killTimer);
  auto callbacks = std::move(e->second.done);
  ending_.erase(e);
  // Waiters on these puids were answered as each finished; forget the job's records.
  std::erase_if(processes_, [&](const auto& kv) { return kv.second.job == job; });
  registry_.forgetJob(job);
  pausedJobs_.erase(job);
  for (auto& cb : callbacks) cb();
}

std::uint64_t ProcessManager::jobOfPid(pid_t pid) const {
  auto it = byPid_.find(pid);
  if (it == byPid_.end()) return 0;
  return processes_.at(it->second).job;
}

// The parent of pid from /proc/PID/stat ("pid (comm) state ppid ..."; comm may hold spaces
// and parentheses, so the fields after the last ')' are read), or 0.
pid_t parentOf(pid_t pid) {
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  UniqueFd fd(open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return 0;
  char buf[512];
  const ssize_t n = read(fd.get(), buf, sizeof buf - 1);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* close = std::strrchr(buf, ')');
  if (close == nullptr) return 0;
  char state = 0;
  int ppid = 0;
  if (std::sscanf(close + 1, " %c %d", &state, &ppid) != 2) return 0;
  return static_cast<pid_t>(ppid);
}

std::uint64_t ProcessManager::jobOfPidOrAncestor(pid_t pid) const {
  constexpr int kMaxDepth = 64;  // bounded: a chain of forks this deep is not ours
  for (int depth = 0; pid > 1 && depth < kMaxDepth; ++depth) {
    if (const std::uint64_t job = jobOfPid(pid); job != 0) return job;
    pid = parentOf(pid);
  }
  return 0;
}

std::string ProcessManager::dump() const {
  std::string out = "processes: " + std::to_string(processes_.size()) + " known, " +
                    std::to_string(byPid_.size()) + " running, " +
                    std::to_string(waiters_.size()) + " waits, " +
                    std::to_string(ending_.size()) + " jobs ending, " +
                    std::to_string(pausedJobs_.size()) + " jobs with output paused";
  for (const auto& [puid, p] : processes_) {
    out += "\n  puid " + std::to_string(puid) + " pid " + std::to_string(p.pid) + " job " +
           std::to_string(p.job) +
           (p.adopted ? " adopted" : "") + (p.idle ? " idle" : "") +
           (p.finished ? " finished (code " + std::to_string(p.exitCode) + ", signal " +
                             std::to_string(p.signal) + ")"
                       : p.exited ? " exited, draining output" : " running");
  }
  return out;
}

}  // namespace dragon::daemon
