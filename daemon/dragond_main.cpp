// SPDX-License-Identifier: MIT
// dragond's command line. main() only parses and calls runDaemon().
#include "config/config.hpp"
#include "daemon/daemon.hpp"

#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <string>

namespace {

constexpr const char* kUsage = R"(Usage: dragond [OPTIONS]
The Dragon runtime's per-node service: processes, output, shared-memory pools and channels.

  --standalone        serve this node alone (a laptop, or one node without PMIx)
  --config FILE       read FILE after )" DRAGON_SYSTEM_CONFIG R"( and ~/.config/dragon/dragon.yaml
  --set KEY=VALUE     set any configuration key (see --print-config), highest precedence
  --socket PATH       listen on PATH instead of RUNTIME_DIR/dragond.sock
  --log-level LEVEL   debug, info, warn, error or off
  --allow-root        run even as root (dragond should run as the user it serves)
  --ready-fd FD       write "ready" to FD, then close it, once serving (how a Slurm prolog
                      or a Python program that starts dragond waits for it)
  --exit-with-fd FD   stop (as on SIGTERM) once FD, a pipe's read end, reaches end of file:
                      a private dragond ends with the process holding the write end
  --node-id N         serve node N of a multi-node job: open the transport
                      (cluster.transport) and wait for the launcher's node table
  --print-config      print the resulting configuration as YAML and exit
  --version           print the version and exit
  --help              print this and exit

Signals: SIGTERM or SIGINT stop it (processes get SIGTERM, then SIGKILL after
process.kill_grace); SIGUSR1 writes every manager's state to the log.
Under systemd it takes a socket-activated listener (LISTEN_FDS) and reports
READY, STOPPING and WATCHDOG through NOTIFY_SOCKET.
)";

int run(int argc, char** argv) {
  enum { OptConfig = 1, OptSet, OptSocket, OptLogLevel, OptAllowRoot, OptPrint, OptVersion, OptHelp, OptStandalone,
         OptReadyFd, OptExitWithFd, OptNodeId };
  static const option kOptions[] = {
      {"standalone", no_argument, nullptr, OptStandalone},
      {"config", required_argument, nullptr, OptConfig},
      {"set", required_argument, nullptr, OptSet},
      {"socket", required_argument, nullptr, OptSocket},
      {"log-level", required_argument, nullptr, OptLogLevel},
      {"allow-root", no_argument, nullptr, OptAllowRoot},
      {"print-config", no_argument, nullptr, OptPrint},
      {"version", no_argument, nullptr, OptVersion},
      {"help", no_argument, nullptr, OptHelp},
      {"ready-fd", required_argument, nullptr, OptReadyFd},  // for the launcher
      {"exit-with-fd", required_argument, nullptr, OptExitWithFd},
      {"node-id", required_argument, nullptr, OptNodeId},
      {nullptr, 0, nullptr, 0},
  };
  dragon::config::LoadOptions load;
  dragon::daemon::DaemonOptions options;
  bool standalone = false;
  bool print = false;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "", kOptions, nullptr)) != -1) {
    switch (c) {
      case OptStandalone: standalone = true; break;
      case OptConfig: load.explicitFile = optarg; break;
      case OptSet: {
        std::string kv = optarg;
        const auto eq = kv.find('=');
        if (eq == std::string::npos) {
          std::fprintf(stderr, "dragond: --set wants KEY=VALUE, not '%s'\n", optarg);
          return 2;
        }
        load.overrides.push_back({kv.substr(0, eq), kv.substr(eq + 1), "--set " + kv.substr(0, eq)});
        break;
      }
      case OptSocket: load.overrides.push_back({"socket", optarg, "--socket"}); break;
      case OptLogLevel: load.overrides.push_back({"log_level", optarg, "--log-level"}); break;
      case OptAllowRoot: load.overrides.push_back({"allow_root", "true", "--allow-root"}); break;
      case OptPrint: print = true; break;
      case OptVersion: std::printf("dragond %s\n", DRAGON_VERSION); return 0;
      case OptHelp: std::fputs(kUsage, stdout); return 0;
      case OptReadyFd: {
        char* end = nullptr;
        const long fd = std::strtol(optarg, &end, 10);
        if (end == optarg || *end != '\0' || fd < 0 || fd > 1 << 20 ||
            fcntl(static_cast<int>(fd), F_GETFD) < 0) {
          std::fprintf(stderr, "dragond: --ready-fd wants an open fd, not '%s'\n", optarg);
          return 2;
        }
        options.readyFd = static_cast<int>(fd);
        break;
      }
      case OptExitWithFd: {
        char* end = nullptr;
        const long fd = std::strtol(optarg, &end, 10);
        if (end == optarg || *end != '\0' || fd < 0 || fd > 1 << 20 ||
            fcntl(static_cast<int>(fd), F_GETFD) < 0) {
          std::fprintf(stderr, "dragond: --exit-with-fd wants an open fd, not '%s'\n", optarg);
          return 2;
        }
        options.exitWithFd = static_cast<int>(fd);
        break;
      }
      case OptNodeId: {
        char* end = nullptr;
        const long long id = std::strtoll(optarg, &end, 10);
        if (end == optarg || *end != '\0' || id < 0 || id >= (1LL << 24)) {
          std::fprintf(stderr, "dragond: --node-id wants a node number below 2^24, not '%s'\n",
                       optarg);
          return 2;
        }
        options.nodeId = id;
        break;
      }
      default:
        std::fprintf(stderr, "dragond: unknown or incomplete option '%s' (see --help)\n",
                     argv[optind - 1]);
        return 2;
    }
  }
  if (optind < argc) {
    std::fprintf(stderr, "dragond: unexpected argument '%s' (see --help)\n", argv[optind]);
    return 2;
  }
  if (standalone && options.nodeId >= 0) {
    std::fputs("dragond: --standalone and --node-id exclude each other: a node of a multi-node "
               "job is not alone\n", stderr);
    return 2;
  }
  options.standalone = options.nodeId < 0;
  auto config = dragon::config::Config::load(load);
  if (!config.has_value()) {
    std::fprintf(stderr, "dragond: %s\n", std::string(config.error().message()).c_str());
    return 2;
  }
  for (const auto& w : config->warnings()) std::fprintf(stderr, "dragond: warning: %s\n", w.c_str());
  if (print) {
    std::fputs(config->print().c_str(), stdout);
    return 0;
  }
  options.config = std::move(*config);
  return dragon::daemon::runDaemon(options);
}

}  // namespace

int main(int argc, char** argv) {
  // Messages that cross nodes are up to 16 MiB, each in a few short-lived buffers (the request,
  // its frame, the transport's copy). glibc would give such blocks back to the kernel on every
  // free (mmap above its threshold, heap trimming past 128 KiB) and fault fresh zeroed pages in
  // for the next message: that tripled the cost of a 1 MiB remote send. Keep them for reuse.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  return run(argc, argv);
}
