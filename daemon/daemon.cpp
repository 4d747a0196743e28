// SPDX-License-Identifier: MIT
#include "daemon/daemon.hpp"

#include "base/log.hpp"
#include "daemon/cluster.hpp"
#include "daemon/event_loop.hpp"
#include "daemon/node_registry.hpp"
#include "daemon/listener.hpp"
#include "daemon/object_manager.hpp"
#include "daemon/process_manager.hpp"
#include "daemon/server.hpp"

#include <dragon/client.hpp>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

namespace dragon::daemon {

namespace {

std::string runtimeDirFor(const config::Config& config) {
  const std::string& dir = config.getString("runtime_dir");
  return dir.empty() ? defaultRuntimeDir() : dir;
}

// Everything dragond holds while it serves, in construction order (teardown is the reverse).
class Daemon {
 public:
  Daemon(const DaemonOptions& options, EventLoop loop, UniqueFd signals, UniqueFd listener,
         std::string boundPath)
      : options_(options),
        node_(options.nodeId < 0 ? 0 : static_cast<std::uint32_t>(options.nodeId)),
        loop_(std::move(loop)),
        signals_(std::move(signals)),
        boundPath_(std::move(boundPath)),
        registry_(node_),
        objects_(registry_, node_, limits(options.config)),
        server_(loop_, std::move(listener), registry_, node_),
        processes_(loop_, registry_, node_, options.config.getDurationNs("process.kill_grace"),
                   [this](std::uint64_t job, const protocol::Envelope& line) {
                     return server_.deliverOutput(job, line);
                   }) {}
  // The server outlives the cluster (members go in reverse order): it must not use it then.
  ~Daemon() { server_.forgetCluster(); }

  int run() {
    Status st = loop_.add(signals_.get(), EPOLLIN, [this](std::uint32_t) { onSignal(); });
    if (st.isOk() && options_.exitWithFd >= 0) {
      st = loop_.add(options_.exitWithFd, EPOLLIN, [this](std::uint32_t) { onCreatorFd(); });
    }
    if (st.isOk()) {
      st = server_.start(objects_, processes_, options_.config.getSize("cluster.parked_send_bytes"));
    }
    if (st.isOk() && options_.nodeId >= 0) {
      auto cluster = Cluster::create(loop_, node_, options_.config);
      if (cluster.has_value()) {
        cluster_ = std::move(*cluster);
        loop_.setPollNs(options_.config.getDurationNs("cluster.poll"));
        server_.setCluster(*cluster_, boundPath_,
                           options_.config.getDurationNs("cluster.node_lost_grace"),
                           options_.config.getDurationNs("cluster.connect_timeout"));
        registry_.setNameDroppedHook([this](const std::string& name, const ObjectDescriptor& d) {
          server_.nameDropped(name, d);
        });
      } else {
        st = cluster.error();
      }
    }
    if (!st.isOk()) {
      DRAGON_LOG(Error, "dragond", "%s", st.toString().c_str());
      return 1;
    }
    startWatchdog();
    // READY only now: the socket is bound and the loop is about to serve it.
    const std::string where =
        boundPath_.empty() ? std::string("the socket systemd passed") : boundPath_;
    const std::string status = "READY=1\nSTATUS=serving " + where;
    (void)sd_notify(0, status.c_str());
    if (options_.readyFd >= 0) {
      const char msg[] = "ready\n";
      (void)!write(options_.readyFd, msg, sizeof msg - 1);
      close(options_.readyFd);
    }
    DRAGON_LOG(Info, "dragond", "serving %s (pid %d)", where.c_str(), static_cast<int>(getpid()));
    st = loop_.run();
    if (!st.isOk()) {
      DRAGON_LOG(Error, "dragond", "event loop: %s", st.toString().c_str());
      return 1;
    }
    DRAGON_LOG(Info, "dragond", "stopped");
    return 0;
  }

 private:
  static ObjectLimits limits(const config::Config& c) {
    ObjectLimits l;
    l.defaultPoolSize = c.getSize("pool.default_size");
    l.prefault = c.getBool("pool.prefault");
    l.defaultCapacity = static_cast<std::uint32_t>(c.getInt("channel.capacity"));
    l.defaultInlineSize = static_cast<std::uint32_t>(c.getSize("channel.inline_size"));
    return l;
  }

  // The --exit-with-fd pipe: bytes written to it are ignored; end of file (or an error) means
  // the creator has gone.
  void onCreatorFd() {
    char buf[64];
    const ssize_t n = read(options_.exitWithFd, buf, sizeof buf);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) return;
    loop_.remove(options_.exitWithFd);
    DRAGON_LOG(Info, "dragond", "the process that started it has gone (--exit-with-fd)");
    shutdown(SIGTERM);
  }

  void onSignal() {
    signalfd_siginfo si{};
    while (read(signals_.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      switch (si.ssi_signo) {
        case SIGTERM:
        case SIGINT:
          shutdown(static_cast<int>(si.ssi_signo));
          break;
        case SIGUSR1:
          dump();
          break;
        default:
          break;
      }
    }
  }

  void shutdown(int sig) {
    if (stopping_) {
      DRAGON_LOG(Info, "dragond", "%s again: still waiting for processes to end", strsignal(sig));
      return;
    }
    stopping_ = true;
    (void)sd_notify(0, "STOPPING=1");
    DRAGON_LOG(Info, "dragond", "%s: shutting down", strsignal(sig));
    server_.stopAccepting();
    if (!boundPath_.empty()) unlink(boundPath_.c_str());
    processes_.endAll([this] {
      if (cluster_ != nullptr) cluster_->shutdown();
      server_.closeAll();
      loop_.stop();
    });
  }

  void dump() {
    // Asked for explicitly: written whatever the log level.
    const std::string text = "state dump\n" + (cluster_ ? cluster_->dump() + "\n" : "") + registry_.dump() + "\n" + processes_.dump() + "\n" +
                             objects_.dump() + "\n" + server_.dump() + "\nevent loop: " +
                             std::to_string(loop_.watchedFds()) + " fds, " +
                             std::to_string(loop_.pendingTimers()) + " timers";
    std::size_t start = 0;
    while (start < text.size()) {
      std::size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      base::logMessage(base::LogLevel::Info, "dump", "%.*s", static_cast<int>(end - start),
                       text.data() + start);
      start = end + 1;
    }
  }

  void startWatchdog() {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
      watchdogNs_ = static_cast<std::int64_t>(usec) * 1000 / 2;
      petWatchdog();
    }
  }

  void petWatchdog() {
    (void)sd_notify(0, "WATCHDOG=1");
    loop_.addTimerAfterNs(watchdogNs_, [this] { petWatchdog(); });
  }

  const DaemonOptions& options_;
  std::uint32_t node_;
  EventLoop loop_;
  UniqueFd signals_;
  std::string boundPath_;
  NodeRegistry registry_;
  ObjectManager objects_;
  Server server_;
  ProcessManager processes_;
  std::unique_ptr<Cluster> cluster_;  // in a multi-node job
  bool stopping_ = false;
  std::int64_t watchdogNs_ = 0;
};

}  // namespace

std::string socketPathFor(const config::Config& config) {
  const std::string s = config::configuredSocketPath(config);
  return s.empty() ? defaultRuntimeDir() + "/dragond.sock" : s;
}

int runDaemon(const DaemonOptions& options) {
  const config::Config& cfg = options.config;
  base::LogLevel level;
  if (base::parseLogLevel(cfg.getString("log_level").c_str(), level)) {
    base::setLogThreshold(level);
  }
  if (geteuid() == 0 && !cfg.getBool("allow_root")) {
    DRAGON_LOG(Error, "dragond",
               "refusing to run as root: dragond runs user code and should run as that user "
               "(dragond@UID.service); set allow_root: true or --allow-root to override");
    return 1;
  }
  // Each process costs dragond up to three fds (pidfd, two pipes): take the hard limit.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &nofile);
  }
  std::signal(SIGPIPE, SIG_IGN);
  // An ignored SIGCHLD (inherited through fork and exec) makes the kernel reap our children
  // itself: waitid() would then never give their status.
  std::signal(SIGCHLD, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGUSR1, SIGHUP}) sigaddset(&set, s);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  UniqueFd signals(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signals) {
    DRAGON_LOG(Error, "dragond", "signalfd: %s", std::strerror(errno));
    return 1;
  }
  auto loop = EventLoop::create();
  if (!loop.has_value()) {
    DRAGON_LOG(Error, "dragond", "%s", loop.error().toString().c_str());
    return 1;
  }
  std::string bound;
  auto listener = inheritedListener();
  if (!listener.has_value() && listener.error().code() == StatusCode::NotFound) {
    const std::string path = socketPathFor(cfg);
    if (cfg.getString("socket").empty()) {
      Status st = ensurePrivateDir(runtimeDirFor(cfg));
      if (!st.isOk()) {
        DRAGON_LOG(Error, "dragond", "runtime directory: %s", st.toString().c_str());
        return 1;
      }
    }
    listener = bindListener(path);
    bound = path;
    const std::size_t slash = path.rfind('/');
    if (listener.has_value() && slash != std::string::npos &&
        path.compare(slash + 1, 4, "job-") == 0) {
      // A job's private dragond cleans up after those of earlier jobs that were killed
      // outright (a step Slurm forces down ends with SIGKILL).
      constexpr std::int64_t kStaleAfterSeconds = 60;
      (void)sweepStaleJobSockets(path.substr(0, slash), kStaleAfterSeconds);
    }
  }
  if (!listener.has_value()) {
    DRAGON_LOG(Error, "dragond", "%s", listener.error().toString().c_str());
    return 1;
  }
  // The listener is a socket systemd passed us, or one we bound (and unlink at the end).
  Daemon d(options, std::move(*loop), std::move(signals), std::move(*listener), bound);
  const int rc = d.run();
  if (!bound.empty()) unlink(bound.c_str());
  return rc;
}

}  // namespace dragon::daemon
