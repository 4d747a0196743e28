// SPDX-License-Identifier: MIT
// The client of the local dragond: every control operation (objects, names, processes) is a
// request over dragond's Unix socket. Data operations never go through it: the pools and
// channels it hands out are mapped into this process and used directly.
//
// A Client is used by one thread at a time. If dragond goes away, every call, including one
// already blocked, returns PeerLost at once (the socket reports the hang-up), and so does every
// later call.
#pragma once

#include <dragon/channel.hpp>
#include <dragon/descriptor.hpp>
#include <dragon/pool.hpp>
#include <dragon/result.hpp>
#include <dragon/timeout.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace dragon {

// The runtime directory of the calling user: $XDG_RUNTIME_DIR/dragon if XDG_RUNTIME_DIR names
// an existing directory of the user's, else /tmp/dragon-UID.
std::string defaultRuntimeDir();
// Where a client looks for dragond: $DRAGON_SOCKET if set, else the system's per-user instance
// /run/dragon/UID/dragond.sock if it exists, else RUNTIME_DIR/dragond.sock.
std::string defaultSocketPath();

// The most that one message between nodes carries. A larger channel message crosses in parts
// (send, and recvBytes, of a remote channel); recv into a buffer from a channel of another
// node takes at most this, and a larger message stays queued (MessageTooLarge).
inline constexpr std::uint64_t kMaxMessageAcrossNodes = (std::uint64_t{16} << 20) - (std::uint64_t{64} << 10);

namespace detail {
struct ClientConnection;
}

// A channel handed out by dragond. On this node it is mapped into this process (channel()),
// with the pool that holds it kept mapped as long as it lives. A channel of another node of a
// multi-node job is remote: its operations go through this node's dragond to the channel's
// home dragond, with the same semantics (FIFO per sender, exactly once, the same status codes
// and deadlines) and NodeLost when its node is lost. send/recv/poll work on both kinds; a
// remote channel must not outlive the Client that attached it.
class ClientChannel {
 public:
  bool isRemote() const noexcept { return remote_ != nullptr; }
  // The mapped channel and its pool: a local channel's only (isRemote() false).
  Channel& channel() noexcept { return *channel_; }
  Pool& pool() noexcept { return *pool_; }
  std::shared_ptr<Pool> sharedPool() const noexcept { return pool_; }
  ObjectDescriptor descriptor() const noexcept { return desc_; }
  std::uint32_t capacity() const noexcept;
  std::uint64_t maxMessageSize() const noexcept;

  // Channel::send, Channel::recv (into `buf`; MessageTooLarge leaves the message queued) and a
  // recv of the next message whatever its size, on either kind of channel.
  Status send(std::span<const std::byte> msg, Timeout timeout = Timeout::forever());
  // send() of a message of `size` bytes that `fill` writes, once, in place: for a remote
  // channel, straight into what goes to dragond, so that a message laid out from pieces is
  // not first copied into a buffer of its own (on a local channel, or past one transport
  // message, it is).
  Status sendFilled(std::size_t size, const std::function<void(std::span<std::byte>)>& fill,
                    Timeout timeout = Timeout::forever());
  Result<std::size_t> recv(std::span<std::byte> buf, Timeout timeout = Timeout::forever());
  Result<std::vector<std::byte>> recvBytes(Timeout timeout = Timeout::forever());
  // Waits until `events` hold (a closed channel counts as readable) and returns those that do;
  // WaitFor{} (0) when the timeout passed first.
  Result<WaitFor> poll(WaitFor events, Timeout timeout);
  Status close();

 private:
  friend class Client;
  friend struct detail::ClientConnection;
  ClientChannel(std::shared_ptr<Pool> pool, Channel channel)
      : pool_(std::move(pool)), desc_(channel.descriptor()) {
    channel_.emplace(std::move(channel));
  }
  ClientChannel(detail::ClientConnection* remote, ObjectDescriptor desc, std::uint32_t capacity,
                std::uint64_t maxMessageSize)
      : desc_(desc), remote_(remote), capacity_(capacity), maxMessageSize_(maxMessageSize) {}
  std::shared_ptr<Pool> pool_;  // declared first: outlives channel_
  std::optional<Channel> channel_;
  ObjectDescriptor desc_;
  detail::ClientConnection* remote_ = nullptr;
  std::uint32_t capacity_ = 0;
  std::uint64_t maxMessageSize_ = 0;
};

// One entry of Client::waitAny: a channel, local or remote, and what to wait for.
class MemoryTransfer;

// One item of Client::waitAny: a channel (local or remote) and the events to wait for, or a
// transfer (Client::put / get), ready (Readable) once its outcome is in: wait() gives it.
// `mapped` names a channel of this node mapped without a ClientChannel (Channel::attach), in
// place of `channel`.
struct ClientWaitItem {
  ClientChannel* channel = nullptr;
  WaitFor events = WaitFor::Readable;
  WaitFor ready{};  // set by waitAny: the subset of events that hold (0 when none)
  MemoryTransfer* transfer = nullptr;
  Channel* mapped = nullptr;
};

enum class Stdio : std::uint8_t {
  Inherit = 0,  // dragond's own fd (a daemon's is usually /dev/null or the journal)
  Capture = 1,  // forwarded to this client line by line (outputHandler)
  Null = 2,
  File = 3,     // the path in SpawnOptions (stdout/stderr appended to, created 0600)
  Passed = 4,   // this process's own fd 0/1/2 (or the fd given), lent to the child
};

// Where a process starts, in a multi-node job (on one node, every placement is this node).
struct Placement {
  enum class Kind : std::uint8_t {
    ThisNode,    // the requester's node
    Node,        // the node given
    RoundRobin,  // the next live node in turn, weighted by the CPUs the job was granted on each
                 // (the turns are job-wide, kept by global services)
  };
  Kind kind = Kind::ThisNode;
  std::uint32_t node = 0;
  static Placement thisNode() { return {}; }
  static Placement onNode(std::uint32_t n) { return {Kind::Node, n}; }
  static Placement roundRobin() { return {Kind::RoundRobin, 0}; }
};

struct SpawnOptions {
  std::vector<std::string> argv;  // argv[0] is the program: a path, or a name looked up in PATH
  std::vector<std::string> env;   // the whole environment ("NAME=value"); empty: see next
  bool inheritEnv = true;         // an empty env means this process's; false: env exactly
  std::string cwd;                // empty: this process's
  Stdio stdinMode = Stdio::Null;
  Stdio stdoutMode = Stdio::Capture;
  Stdio stderrMode = Stdio::Capture;
  std::string stdinFile, stdoutFile, stderrFile;
  int stdinFd = 0, stdoutFd = 1, stderrFd = 2;  // for Passed
  std::string label;       // prefixes captured lines, e.g. "[worker 3] "
  std::uint64_t group = 0;  // join this process group (on any node of the job); 0: none
  std::uint32_t count = 1;  // start this many, all in `group` if set
  // This process's fds to lend the child, which finds extraFds[i] as fd extraFdBase + i
  // (base 3 or more; at most 32 of them).
  std::vector<int> extraFds;
  int extraFdBase = 100;
  // On another node, Passed streams become Capture (stdin: Null; output comes back through the
  // launcher of that node) and extraFds are refused.
  Placement placement;
};

struct ProcessInfo {
  std::uint64_t puid = 0;  // runtime-unique id
  pid_t pid = 0;
  std::uint64_t group = 0;  // its process group, if any
};

struct ExitInfo {
  std::uint64_t puid = 0;
  int exitCode = 0;  // when it exited normally
  int signal = 0;    // when a signal killed it, else 0
  // A shell-style code: exitCode, or 128 + signal.
  int shellCode() const noexcept { return signal != 0 ? 128 + signal : exitCode; }
};

struct ProcessEntry {
  std::uint64_t puid = 0;
  pid_t pid = 0;
  bool running = false;
  std::vector<std::string> argv;
  ExitInfo exit;
  std::uint64_t group = 0;
  std::uint64_t job = 0;
  std::string label;
  std::uint32_t node = 0;
};

// A node of a multi-node job.
struct NodeInfo {
  std::uint32_t node = 0;
  std::string hostname;
  std::uint32_t cpus = 0;  // granted to the job there
  std::uint32_t rank = 0;  // of the launcher that serves it
};

// What a launcher of a multi-node job hands its dragond after the PMIx exchange.
struct ClusterJoin {
  struct Peer {
    NodeInfo info;
    std::string address;  // its transport address
  };
  std::vector<Peer> nodes;  // every node, this one included
  std::string secret;
  std::uint32_t globalNode = 0;
  std::uint32_t headNode = 0;
};

// What the launcher publishes for its node (Client::clusterAddress).
struct ClusterEndpoint {
  std::uint32_t node = 0;  // the node id dragond was started with (--node-id)
  std::string address;     // its transport address
};

// Bytes of a live pool allocation, on any node (Client::put, Client::get).
struct MemoryRange {
  ObjectDescriptor pool;
  std::uint64_t allocation = 0;  // the allocation's PoolAllocation::offset
  std::uint64_t offset = 0;      // from the start of the allocation
};

// A put or get in flight. wait() gives its outcome; one dropped unwaited still completes, its
// outcome unseen. It must not outlive the Client that started it.
class MemoryTransfer {
 public:
  MemoryTransfer() = default;
  MemoryTransfer(MemoryTransfer&& o) noexcept;
  MemoryTransfer& operator=(MemoryTransfer&& o) noexcept;
  MemoryTransfer(const MemoryTransfer&) = delete;
  MemoryTransfer& operator=(const MemoryTransfer&) = delete;
  ~MemoryTransfer();

  // Ok once the bytes are at their destination (visible to every process there); Timeout when
  // `timeout` passed first (the transfer goes on: wait again); otherwise its error (NodeLost,
  // InvalidArgument for a range outside a live allocation, NotFound...). Then always the same.
  Status wait(Timeout timeout = Timeout::forever());
  bool done() const noexcept { return result_.has_value(); }

 private:
  friend class Client;
  void abandon() noexcept;
  detail::ClientConnection* conn_ = nullptr;
  std::uint64_t id_ = 0;
  std::optional<Status> result_;
};

struct OutputLine {
  std::uint64_t puid = 0;
  bool isStderr = false;
  std::string_view line;  // the label, then one whole line, newline included (the last may lack it)
};

class Client {
 public:
  struct Options {
    std::string socketPath;  // empty: defaultSocketPath()
    std::string name;        // shown in dragond's log
    Timeout connectTimeout = Timeout::after(std::chrono::seconds(5));
    // Fault every page of a pool in when it is mapped (no page faults on the data path later);
    // false maps lazily, so a process touches only the pages it uses.
    bool prefault = true;
    // Start a job of its own (as the launcher does), even from a process of another job: what
    // it spawns is in that new job, and its endJob() leaves the other job alone.
    bool newJob = false;
  };
  static Result<Client> connect(const Options& options);
  static Result<Client> connect() { return connect(Options{}); }

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  // Objects. An object lives while some client holds it (create and attach take a reference,
  // detach drops one, a client's references go when it disconnects) or while it has a name.
  // lazy: dragond and this client map the pool without faulting its pages in (a large pool
  // then costs memory only where it is used). A pool a client maps holds no fd of this
  // process (Pool::fd() is -1): dragond keeps the memfd.
  Result<std::shared_ptr<Pool>> createPool(std::uint64_t size = 0, std::string_view name = {},
                                           bool lazy = false);
  Result<std::unique_ptr<ClientChannel>> createChannel(const ObjectDescriptor& pool,
                                                       const ChannelOptions& options,
                                                       std::string_view name = {});
  Result<std::shared_ptr<Pool>> attachPool(const ObjectDescriptor& pool);
  Result<std::shared_ptr<Pool>> attachPool(std::string_view name);
  Result<std::unique_ptr<ClientChannel>> attachChannel(const ObjectDescriptor& channel);
  Result<std::unique_ptr<ClientChannel>> attachChannel(std::string_view name);
  Status detach(const ObjectDescriptor& object);
  // A channel of another node, attached by any client of this process, reached over this
  // client's connection: its operations (which wait at its home) go through this client, while
  // the reference stays with the client that attached it, which must hold it as long as this
  // is used. Lets a process keep its references on one connection and run operations on a few
  // pooled ones, instead of one connection per channel. A channel of this node is mapped, and
  // used directly: InvalidArgument.
  Result<ClientChannel> reach(const ClientChannel& channel);
  // Sends the detach without waiting for dragond's answer (which is dropped when it comes, so
  // a failure goes unreported): for references dropped on a hot path. Later requests of this
  // client are handled after it.
  Status detachLater(const ObjectDescriptor& object);
  // Destroys the object now, for every user: its name goes and later attaches fail.
  Status destroy(const ObjectDescriptor& object);
  // A name keeps its object alive until destroy(). A scoped one does not: it is this client's,
  // like a listening address, and goes with the object or when this client disconnects; a
  // channel whose scoped name goes that way is also closed (ChannelClosed for its senders).
  // replace (with scoped): takes over a name another scoped registration holds (its channel is
  // closed, as if its client had gone); a plain name is never replaced.
  Status registerName(std::string_view name, const ObjectDescriptor& object, bool scoped = false,
                      bool replace = false);
  Result<ObjectDescriptor> lookupName(std::string_view name);

  // Processes.
  Result<std::vector<ProcessInfo>> spawn(const SpawnOptions& options);
  // Waits until every listed process has exited (Timeout if not by then; they keep running).
  Result<std::vector<ExitInfo>> wait(const std::vector<std::uint64_t>& puids,
                                     Timeout timeout = Timeout::forever());
  Status signal(const std::vector<std::uint64_t>& puids, int sig);
  Status signalGroup(std::uint64_t group, int sig);
  Result<std::vector<ProcessEntry>> listProcesses();
  // Puts this process's own child `pid` (which it forked, and must not reap before this
  // returns) in dragond's process table and this client's job. dragond cannot reap it: this
  // client reaps it and reports its end with reportExited(); if this client goes first, its
  // end is recorded with exit code 255. idle: forked ahead of use, not listed until
  // reportStarted(). stdoutFd/stderrFd (-1: none): the read end of the pipe the process
  // writes that stream to, which dragond then reads as its captured output, under its puid
  // (dragond gets a copy: the caller still owns its fd and closes it). The process's puid
  // (group 0).
  Result<ProcessInfo> adopt(pid_t pid, const std::vector<std::string>& argv, bool idle = false,
                            int stdoutFd = -1, int stderrFd = -1);
  // One-way (sent without waiting for dragond's answer, like detachLater): an idle adopted
  // process now runs, shown with `label`; an adopted process has ended, as waitid() said.
  Status reportStarted(std::uint64_t puid, std::string_view label);
  Status reportExited(const ExitInfo& exit);
  // Ends this client's job: its processes get SIGTERM (SIGKILL after dragond's grace period,
  // or at once with `now`); returns when all have exited and their output was delivered.
  // On the head node of a multi-node job, called by the launcher that joined, it ends the job
  // on every node, and `exitCode` is what the other nodes' launchers exit with; NodeLost if a
  // node was lost during the job.
  Status endJob(bool now = false, int exitCode = 0);

  // Remote memory (docs/cluster.md): copies `length` bytes from `from` to `to`, allocations of
  // two pools. put: `from` is of this node, `to` of any node; get: `from` of any node, `to` of
  // this node. Between nodes the bytes move by RMA between the two dragonds' own mappings of
  // the pools, no copy through messages on either side; on one node dragond copies. Returns at
  // once; the transfer's wait() says when the bytes are there.
  Result<MemoryTransfer> put(const MemoryRange& from, const MemoryRange& to, std::uint64_t length);
  Result<MemoryTransfer> get(const MemoryRange& from, const MemoryRange& to, std::uint64_t length);

  // Multi-node jobs. The nodes of this job (one, this node, outside a multi-node job).
  Result<std::vector<NodeInfo>> nodes();
  // For the launcher: this dragond's node id and transport address (InvalidArgument if it was
  // not started for a multi-node job, AlreadyExists if it already served a job step), then the
  // node table; waitJobEnd() returns the head's exit code once
  // the job has ended on this node, or NodeLost.
  Result<ClusterEndpoint> clusterAddress();
  Status joinCluster(const ClusterJoin& join);
  // otherLaunchers: from the launcher that serves the node, the number of this node's other
  // launchers; the answer then also waits until they have had theirs.
  Result<int> waitJobEnd(std::uint32_t otherLaunchers = 0);

  // Captured output of processes this client spawned arrives while a call is in progress (or
  // in pump()). The handler must not call back into this Client.
  void setOutputHandler(std::function<void(const OutputLine&)> handler);
  // Called while a call is blocked, whenever `fd` becomes readable (a launcher's signal fd):
  // the handler may make calls on this Client (they nest) and must consume what made `fd`
  // readable. -1 removes it.
  void setInterrupt(int fd, std::function<void()> handler);
  // Channel::waitAny over channels of this node and of other nodes, and transfers, together:
  // waits until at least one item is ready (a closed channel counts as readable, a transfer
  // once its outcome is in) and returns how many are; 0 when the timeout passed first. At most
  // 63 items. With only local channels it is
  // Channel::waitAny; remote ones are polled at their homes by this node's dragond. With local
  // ones too, the client sleeps on them and on a private doorbell channel that dragond rings
  // when it answers (ready, error or timeout), looking at its socket every 50 ms. NodeLost when
  // a remote channel's node is lost.
  Result<std::size_t> waitAny(std::span<ClientWaitItem> items, Timeout timeout);

  // Handles what dragond sent (output) for up to `timeout`; PeerLost if it went away.
  Status pump(Timeout timeout);

  int fd() const noexcept;
  std::uint32_t node() const noexcept;

 private:
  friend struct detail::ClientConnection;
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl) noexcept;
  Result<MemoryTransfer> transfer(const MemoryRange& from, const MemoryRange& to,
                                  std::uint64_t length);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dragon
