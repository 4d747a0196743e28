// SPDX-License-Identifier: MIT
// The UCX transport (daemon/transport.hpp): one ucp context and one worker per dragond, driven
// from the owner's event loop through the worker's event fd; there is no progress thread.
//
// Wire (wire.hpp): each message is one UCP active message (id kAmId) whose AM header is a fixed
// header (magic, version, kind, sender node, sequence number, payload length) followed by the
// job secret, compared in constant time; the payload is the message.
//
// Order: UCX may run the AM handler out of send order (a multi-fragment eager message on several
// lanes), and a rendezvous message is whole only once ucp_am_recv_data_nbx completes, so every
// message takes a slot by its per-(sender, receiver) sequence number and slots are delivered
// strictly in sequence. A message from the job that the receiver drops (sent before this node
// knew the secret or the sender, or over maxMessageBytes) leaves a skipped slot, so it cannot
// stall the messages after it.
//
// Lost peers: the endpoint's error handler (UCP_ERR_HANDLING_MODE_PEER), a send that fails, or
// the "bye" a peer sends from shutdown() marks the peer failed; progress() then delivers what had
// arrived from it, reports onPeerLost once, and force-closes the endpoint.
//
// RMA: a region is ucp_mem_map'ed and its key is its id and the packed rkey (wire.hpp). Toward a
// peer that UCX reaches with native RMA (the endpoint has RMA lanes: shared memory, InfiniBand,
// RoCE...), rma() is ucp_put/ucp_get: a peer's keys are unpacked on its endpoint once and kept
// (bounded) until the endpoint closes, and a Put is followed by a flush of the endpoint, whose
// completion says the bytes are visible at the peer. Toward a peer without (tcp), UCX 1.13 would
// emulate RMA with active messages whose target answers each operation from inside UCX, and
// aborts the process (ucs_fatal in ucp_request_send) when that answer cannot be sent because the
// initiator died. So there the transfer is messages of our own, on AM id kRmaAmId: the request
// (a Put with its bytes, sent zero-copy from the initiator's memory; or a Get), and the answer
// (PutDone once the bytes are in the region; or GetData with the bytes, sent from the region),
// all sent and received by requests whose failures this transport handles. Large payloads go
// by UCX's rendezvous straight between the two memories. The region's node checks every
// transfer against the region's bounds, and keeps a deregistered region mapped (the owner's
// `mapping`) while a transfer of a peer still reads or writes it. TransportOptions::rma (config
// cluster.rma) chooses: Auto (the default), Messages (always), Native (always ucp_put/ucp_get).
//
// Owning thread: the daemon's event-loop thread (the worker is UCS_THREAD_MODE_SINGLE). UCX
// callbacks only record what happened; the owner's callbacks run in progress(), outside them.
#include "daemon/transport.hpp"
#include "daemon/transport_util.hpp"

#include "base/log.hpp"
#include "ucx_transport/wire.hpp"

#include <dragon/unique_fd.hpp>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <iterator>
#include <list>
#include <map>
#include <memory>
#include <poll.h>
#include <string>
#include <string_view>
#include <unistd.h>
#include <utility>
#include <vector>

namespace dragon::transport {
namespace {

constexpr const char* kLog = "transport";
// How far past the next message to deliver a sequence number may be.
constexpr std::uint64_t kMaxReorder = std::uint64_t{1} << 24;
// What is remembered of messages dropped before this node knew their secret or sender.
constexpr std::size_t kMaxEarlyDrops = 4096;
constexpr std::size_t kMaxSkipped = 65536;
// Once a drop could not be remembered (those bounds were reached: a flood before this node
// joined, from a process without the secret or from a very large job), a gap in a peer's
// sequence that stays open this long is taken for such a drop and passed over. On a live
// endpoint a missing message is one overtaken on another lane, for microseconds.
constexpr std::int64_t kForgottenGapNs = 1'000'000'000;
// ucp_worker_progress calls per round, and rounds per progress() call: a flood cannot keep
// progress() from returning to the event loop (needsProgress() says there is more).
constexpr unsigned kMaxProgressCalls = 1024;
constexpr unsigned kMaxRounds = 8;
constexpr std::int64_t kDestructorShutdownNs = 200'000'000;
// Unpacked remote keys kept per peer (a job registers a region per pool it transfers from).
constexpr std::size_t kMaxRkeysPerPeer = 1024;
// Drop reports: at most kDropBurst per kDropWindowNs, the rest counted.

using namespace ucx_wire;

// Whether UCX gives `ep` RMA lanes of its own (else ucp_put/ucp_get would be emulated with
// active messages). UCX 1.13 has no query for it; its endpoint report lists them as "put[N]".
bool hasNativeRma(ucp_ep_h ep) {
  char* text = nullptr;
  std::size_t bytes = 0;
  FILE* f = open_memstream(&text, &bytes);
  if (f == nullptr) return false;
  ucp_ep_print_info(ep, f);
  std::fclose(f);
  const bool native = std::string_view(text, bytes).find(" put[") != std::string_view::npos;
  std::free(text);
  return native;
}

// "writing to node 2 failed: WHY" (a Put) or "reading from node 2 failed: WHY" (a Get).
Status transferFailed(StatusCode code, RmaKind kind, std::uint32_t node, std::string_view why) {
  return Status(code, std::string(kind == RmaKind::Put ? "writing to" : "reading from") +
                          " node " + std::to_string(node) + " failed: " + std::string(why));
}

std::int64_t nowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

Status ucxError(const std::string& what, ucs_status_t st) {
  return Status(StatusCode::SystemError, what + ": " + ucs_status_string(st));
}

class UcpContext {
 public:
  static Result<UcpContext> create() {
    ucp_config_t* config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);  // UCX_* from the environment
    if (st != UCS_OK) return ucxError("reading the UCX configuration", st);
    // UCX's keepalive times out an endpoint whose peer it has not heard from. Dragon finds a
    // lost node by its own heartbeats (cluster.node_timeout, within 2 s), and a killed peer's
    // connection is reset at once; the keepalive is the last resort. 5 s: at 250 ms, 16
    // dragonds that poll (cluster.poll) on the 2 cores of the test machine timed each other's
    // live endpoints out at the end of 3 jobs of 40, at 1 s of 1 in 50, at 5 s of none of 30.
    // UCX's own default is 20 s. The environment still wins.
    if (std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
      (void)ucp_config_modify(config, "KEEPALIVE_INTERVAL", "5s");
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
    params.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
    params.name = "dragond";
    ucp_context_h h = nullptr;
    st = ucp_init(&params, config, &h);
    ucp_config_release(config);
    if (st != UCS_OK) return ucxError("initialising UCX (check UCX_TLS)", st);
    return UcpContext(h);
  }
  UcpContext(UcpContext&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  UcpContext& operator=(UcpContext&&) = delete;
  ~UcpContext() { reset(); }
  void reset() {
    if (h_ != nullptr) ucp_cleanup(std::exchange(h_, nullptr));
  }
  ucp_context_h get() const { return h_; }

 private:
  explicit UcpContext(ucp_context_h h) : h_(h) {}
  ucp_context_h h_ = nullptr;
};

class UcpWorker {
 public:
  static Result<UcpWorker> create(ucp_context_h context) {
    ucp_worker_params_t params{};
    params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    params.thread_mode = UCS_THREAD_MODE_SINGLE;
    ucp_worker_h h = nullptr;
    const ucs_status_t st = ucp_worker_create(context, &params, &h);
    if (st != UCS_OK) return ucxError("creating the UCX worker", st);
    return UcpWorker(h);
  }
  UcpWorker(UcpWorker&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  UcpWorker& operator=(UcpWorker&&) = delete;
  ~UcpWorker() { reset(); }
  void reset() {
    if (h_ != nullptr) ucp_worker_destroy(std::exchange(h_, nullptr));
  }
  ucp_worker_h get() const { return h_; }

 private:
  explicit UcpWorker(ucp_worker_h h) : h_(h) {}
  ucp_worker_h h_ = nullptr;
};

class UcxTransport;

// A message being sent: the copies UCX reads until the send completes.
struct SendOp {
  UcxTransport* self = nullptr;
  std::uint32_t node = 0;
  std::string header;
  std::string payload;
  ucs_status_t status = UCS_INPROGRESS;
  std::list<SendOp>::iterator it;
};

// A received message's bytes: a large one is written whole by UCX, so its buffer is never
// zero-filled first (as a std::string's resize would).
class Bytes {
 public:
  Bytes() = default;
  static Bytes ofSize(std::size_t n) {
    Bytes b;
    if (n != 0) b.p_ = std::make_unique_for_overwrite<char[]>(n);
    b.n_ = n;
    return b;
  }
  static Bytes copyOf(const void* data, std::size_t n) {
    Bytes b = ofSize(n);
    if (n != 0) std::memcpy(b.p_.get(), data, n);
    return b;
  }
  char* data() noexcept { return p_.get(); }
  std::size_t size() const noexcept { return n_; }
  std::string_view view() const noexcept { return {p_.get(), n_}; }

 private:
  std::unique_ptr<char[]> p_;
  std::size_t n_ = 0;
};

// A rendezvous message being received into `data`.
struct RecvOp {
  UcxTransport* self = nullptr;
  std::uint32_t node = 0;
  std::uint64_t seq = 0;
  Bytes data;
  ucs_status_t status = UCS_INPROGRESS;
  std::list<RecvOp>::iterator it;
};

// A one-sided transfer: the operation itself, then (for a Put) the flush that makes it visible.
struct RmaOp {
  UcxTransport* self = nullptr;
  std::uint32_t node = 0;
  RmaKind kind = RmaKind::Put;
  std::function<void(Status)> done;
  ucs_status_t status = UCS_OK;  // the first failure of its requests
  int outstanding = 0;           // requests not completed yet
  std::list<RmaOp>::iterator it;
};

// A region of this process registered for peers: its UCX registration (native RMA) and the
// bounds that transfers carried as messages stay within.
struct LocalRegion {
  ucp_mem_h memh = nullptr;
  char* base = nullptr;
  std::size_t length = 0;
  int busy = 0;                   // peers' transfers reading or writing it now
  bool gone = false;              // deregistered: dropped once no longer busy
  std::shared_ptr<void> mapping;  // what keeps a gone, busy region mapped
};

// A transfer this node started as messages: the request went out, and the answer (PutDone,
// or GetData with the bytes) completes it.
struct MessageRma {
  UcxTransport* self = nullptr;
  std::uint64_t id = 0;
  std::uint32_t node = 0;
  RmaKind kind = RmaKind::Put;
  char* local = nullptr;
  std::size_t length = 0;
  std::function<void(Status)> done;
  std::string header;     // read by UCX until the request's send completes
  int requests = 0;       // UCX requests in flight: the request's send, the answer's receive
  bool answered = false;  // the answer is in (or will never come)
  bool told = false;      // done ran; the operation waits only for its requests
  ucs_status_t failure = UCS_OK;  // the first failed request
  Status result;
};

// This node's part of a peer's transfer carried as messages: receiving a Put's bytes into a
// region, or sending an answer (a GetData from a region, or a PutDone).
struct Serving {
  UcxTransport* self = nullptr;
  std::uint32_t node = 0;
  std::uint64_t region = 0;  // busy while this runs; 0 for none
  RmaHeader answer;          // a receive's PutDone, sent once the bytes are in
  std::string header;        // of the message being sent
  bool sending = false;
  ucs_status_t status = UCS_OK;
  std::list<Serving>::iterator it;
};

// An answer the AM handler decided on, sent from settle() (outside UCX's callbacks).
struct Answer {
  std::uint32_t node = 0;
  RmaHeader header;
};

// A message by its sequence number, waiting for its turn.
struct Slot {
  enum class State { Ready, Receiving, Skip };
  State state = State::Skip;
  Kind kind = Kind::Data;
  Bytes data;
  RecvOp* op = nullptr;  // while Receiving
};

struct Peer {
  UcxTransport* self = nullptr;
  std::uint32_t node = 0;
  ucp_ep_h ep = nullptr;
  bool failed = false;    // no more messages to or from it
  bool reported = false;  // onPeerLost ran
  bool nativeRma = false; // rma() is ucp_put/ucp_get, else messages
  bool heard = false;     // a message of the job arrived (or part of one) since reportHeard()
  bool saidBye = false;   // its Bye was handed up: its endpoint closes once its ByeAck is out
  bool byeHeard = false;  // while this node shuts down: it acknowledged our Bye, or said its own
  int sending = 0;        // sends to it in flight
  Status why;
  std::uint64_t sendSeq = 0;
  std::uint64_t nextSeq = 0;  // the next to deliver
  std::map<std::uint64_t, Slot> slots;
  std::int64_t gapSinceNs = 0;  // when deliver() first found nextSeq missing with later ones here
  std::map<std::string, ucp_rkey_h, std::less<>> rkeys;  // unpacked on ep, by packed key
};

struct EarlyDrop {
  std::uint32_t node;
  std::uint64_t seq;
  std::string secret;
};

class UcxTransport final : public Transport {
 public:
  static Result<std::unique_ptr<UcxTransport>> create(const TransportOptions& options);
  ~UcxTransport() override { shutdown(kDestructorShutdownNs); }

  std::string_view name() const override { return "ucx"; }
  std::string address() const override { return address_; }
  int eventFd() const override { return efd_.get(); }
  void progress() override;
  bool needsProgress() const override {
    return !closed_ && (kick_ || !sendOps_.empty() || !closeReqs_.empty() || !rmaOps_.empty() ||
                        messageRequests_ > 0);
  }
  void setCallbacks(TransportCallbacks callbacks) override { callbacks_ = std::move(callbacks); }
  void setSecret(std::string secret) override;
  Status addPeer(std::uint32_t node, std::string_view address) override;
  Status send(std::uint32_t node, std::string bytes) override;
  Result<RegisteredRegion> registerRegion(void* base, std::size_t length) override;
  void deregisterRegion(std::uint64_t id, std::shared_ptr<void> mapping) override;
  Status rma(std::uint32_t node, RmaKind kind, void* local, std::size_t length,
             std::uint64_t remote, std::string_view key, std::function<void(Status)> done) override;
  void shutdown(std::int64_t timeoutNs) override;

 private:
  UcxTransport(const TransportOptions& options, UcpContext context, UcpWorker worker,
               UniqueFd efd, std::string address, std::size_t maxAmHeader)
      : options_(options),
        address_(std::move(address)),
        maxAmHeader_(maxAmHeader),
        efd_(std::move(efd)),
        context_(std::move(context)),
        worker_(std::move(worker)) {
    options_.secret.clear();
  }

  static ucs_status_t onAmCallback(void* arg, const void* header, std::size_t headerLength,
                                   void* data, std::size_t length,
                                   const ucp_am_recv_param_t* param) noexcept {
    return static_cast<UcxTransport*>(arg)->onAm(header, headerLength, data, length, param);
  }
  static ucs_status_t onRmaAmCallback(void* arg, const void* header, std::size_t headerLength,
                                      void* data, std::size_t length,
                                      const ucp_am_recv_param_t* param) noexcept {
    return static_cast<UcxTransport*>(arg)->onRmaAm(header, headerLength, data, length, param);
  }
  // A request of a MessageRma completed (the operation stays while it has requests in flight).
  static void onMessageRmaSent(void* request, ucs_status_t status, void* user) noexcept {
    auto* op = static_cast<MessageRma*>(user);
    if (status != UCS_OK && op->failure == UCS_OK) op->failure = status;
    --op->requests;
    --op->self->messageRequests_;
    op->self->settledRmas_.push_back(op->id);
    ucp_request_free(request);
  }
  static void onMessageRmaReceived(void* request, ucs_status_t status, std::size_t length,
                                   void* user) noexcept {
    auto* op = static_cast<MessageRma*>(user);
    onMessageRmaSent(request,
                     (status == UCS_OK && length != op->length) ? UCS_ERR_MESSAGE_TRUNCATED
                                                                : status,
                     user);
  }
  static void onServingSent(void* request, ucs_status_t status, void* user) noexcept {
    auto* s = static_cast<Serving*>(user);
    s->status = status;
    --s->self->messageRequests_;
    s->self->doneServing_.push_back(s);
    ucp_request_free(request);
  }
  static void onServingReceived(void* request, ucs_status_t status, std::size_t,
                                void* user) noexcept {
    onServingSent(request, status, user);
  }
  static void onSendDone(void* request, ucs_status_t status, void* user) noexcept {
    auto* op = static_cast<SendOp*>(user);
    op->status = status;
    op->self->doneSends_.push_back(op);
    ucp_request_free(request);
  }
  static void onRecvDone(void* request, ucs_status_t status, std::size_t length,
                         void* user) noexcept {
    auto* op = static_cast<RecvOp*>(user);
    op->status = (status == UCS_OK && length != op->data.size()) ? UCS_ERR_MESSAGE_TRUNCATED
                                                                  : status;
    op->self->doneRecvs_.push_back(op);
    ucp_request_free(request);
  }
  static void onRmaDone(void* request, ucs_status_t status, void* user) noexcept {
    auto* op = static_cast<RmaOp*>(user);
    if (status != UCS_OK && op->status == UCS_OK) op->status = status;
    if (--op->outstanding == 0) op->self->doneRmas_.push_back(op);
    ucp_request_free(request);
  }
  static void onEndpointError(void* arg, ucp_ep_h, ucs_status_t status) noexcept {
    auto* peer = static_cast<Peer*>(arg);
    peer->self->markFailed(*peer, Status(StatusCode::NodeLost,
                                         "the connection to node " + std::to_string(peer->node) +
                                             " failed: " + ucs_status_string(status)));
  }

  ucs_status_t onAm(const void* header, std::size_t headerLength, void* data, std::size_t length,
                    const ucp_am_recv_param_t* param);
  ucs_status_t receiveRendezvous(Peer& peer, Slot& slot, std::uint64_t seq, void* desc,
                                 std::size_t length);
  ucs_status_t onRmaAm(const void* header, std::size_t headerLength, void* data,
                       std::size_t length, const ucp_am_recv_param_t* param);
  // A peer's Put: its bytes into the region, then the PutDone.
  ucs_status_t servePut(Peer& peer, const RmaHeader& h, void* data, std::size_t length, bool rndv);
  // The answer to one of this node's transfers.
  ucs_status_t takeAnswer(const RmaHeader& h, void* data, std::size_t length, bool rndv);
  // Where [address, address + length) of region `id` is, or why a peer may not reach it.
  RmaRefusal regionBytes(std::uint64_t id, std::uint64_t address, std::uint64_t length,
                         char*& at);
  void sendAnswers();
  // Drops region `id` once it is deregistered and no peer's transfer uses it; endUse() ends one
  // such use first.
  void releaseRegion(std::uint64_t id);
  void endUse(std::uint64_t id) {
    --regions_[id].busy;
    releaseRegion(id);
  }
  Status messageRma(Peer& peer, RmaKind kind, char* local, std::size_t length,
                    std::uint64_t remote, std::uint64_t region, std::function<void(Status)> done);
  Status nativeRma(Peer& peer, RmaKind kind, void* local, std::size_t length,
                   std::uint64_t remote, std::string_view key, std::string_view packedRkey,
                   std::function<void(Status)> done);
  void reapServing();
  void reapMessageRmas();
  // Runs `op`'s done (once) and drops it once no UCX request of it is in flight.
  void finishMessageRma(std::uint64_t id);
  void failMessageRmas(std::uint32_t node, const Status& why);
  // The peer `node`, if this transport may send to it now.
  Result<Peer*> usablePeer(std::uint32_t node);
  Status post(Peer& peer, Kind kind, std::string bytes);
  void markFailed(Peer& peer, Status why);
  void noteSkipped(std::uint32_t node, std::uint64_t seq);
  void dropped(const WireHeader* h, const char* why);
  // One round's bookkeeping after ucp_worker_progress; runs the owner's callbacks.
  void settle();
  void reapSends();
  void reapRecvs();
  void reapCloses();
  void reapRmas();
  // Tracks one request of `op` (the result of a ucp_*_nbx call).
  void track(RmaOp& op, ucs_status_ptr_t r);
  void destroyRkeys(Peer& peer);
  void reportHeard();
  void deliver();
  void reportLost();
  void closeEndpoint(Peer& peer);
  // Progresses (sleeping on the event fd when idle) until `done` or the deadline.
  template <typename Done>
  bool waitUntil(Done done, std::int64_t deadlineNs);
  void flushWorker(std::int64_t deadlineNs);

  TransportOptions options_;
  TransportCallbacks callbacks_;
  const std::string address_;
  const std::size_t maxAmHeader_;
  std::string secret_;
  bool secretSet_ = false;
  bool secretRefused_ = false;
  bool kick_ = true;  // progress() has work the event fd will not announce
  bool inProgress_ = false;
  bool closing_ = false;  // shutdown() began: nothing more is delivered
  bool closed_ = false;   // the worker and context are gone
  // A dup of the worker's event fd: stays valid (and quiet) after shutdown() until destruction.
  UniqueFd efd_;
  // Declared in the order of construction: the worker references the peers and operations below
  // (callbacks' arguments), the context outlives the worker.
  UcpContext context_;
  std::map<std::uint32_t, std::unique_ptr<Peer>> peers_;
  std::list<SendOp> sendOps_;
  std::list<RecvOp> recvOps_;
  std::vector<SendOp*> doneSends_;
  std::vector<RecvOp*> doneRecvs_;
  std::vector<void*> closeReqs_;
  std::list<RmaOp> rmaOps_;
  std::vector<RmaOp*> doneRmas_;
  std::map<std::uint64_t, LocalRegion> regions_;
  std::uint64_t nextRegion_ = 1;
  std::map<std::uint64_t, MessageRma> messageRmas_;
  std::uint64_t nextTransfer_ = 1;
  std::vector<std::uint64_t> settledRmas_;  // ids of MessageRmas whose requests completed
  std::list<Serving> serving_;
  std::vector<Serving*> doneServing_;
  std::vector<Answer> answers_;
  int messageRequests_ = 0;  // UCX requests of messageRmas_ and serving_ in flight
  std::vector<EarlyDrop> early_;
  std::map<std::uint32_t, std::vector<std::uint64_t>> skipped_;
  std::size_t skippedCount_ = 0;
  bool forgotDrops_ = false;  // a drop's sequence number was not remembered (kForgottenGapNs)
  DropLog dropLog_;
  UcpWorker worker_;
};

Result<std::unique_ptr<UcxTransport>> UcxTransport::create(const TransportOptions& options) {
  DRAGON_ASSIGN_OR_RETURN(UcpContext context, UcpContext::create());
  DRAGON_ASSIGN_OR_RETURN(UcpWorker worker, UcpWorker::create(context.get()));
  ucp_worker_attr_t attr{};
  attr.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  ucs_status_t st = ucp_worker_query(worker.get(), &attr);
  if (st != UCS_OK) return ucxError("querying the UCX worker", st);
  int fd = -1;
  st = ucp_worker_get_efd(worker.get(), &fd);
  if (st != UCS_OK) return ucxError("getting the UCX worker's event fd", st);
  UniqueFd efd(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!efd) return Status::fromErrno("duplicating the UCX worker's event fd", errno);
  ucp_address_t* raw = nullptr;
  std::size_t rawBytes = 0;
  st = ucp_worker_get_address(worker.get(), &raw, &rawBytes);
  if (st != UCS_OK) return ucxError("getting the UCX worker's address", st);
  std::string address = wrapAddress(std::string_view(reinterpret_cast<const char*>(raw), rawBytes));
  ucp_worker_release_address(worker.get(), raw);

  std::unique_ptr<UcxTransport> t(new UcxTransport(options, std::move(context), std::move(worker),
                                                   std::move(efd), std::move(address),
                                                   attr.max_am_header));
  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                       UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  handler.id = kAmId;
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  handler.cb = &UcxTransport::onAmCallback;
  handler.arg = t.get();
  st = ucp_worker_set_am_recv_handler(t->worker_.get(), &handler);
  if (st != UCS_OK) return ucxError("setting the UCX active message handler", st);
  handler.id = kRmaAmId;
  handler.cb = &UcxTransport::onRmaAmCallback;
  st = ucp_worker_set_am_recv_handler(t->worker_.get(), &handler);
  if (st != UCS_OK) return ucxError("setting the UCX active message handler", st);
  if (!options.secret.empty()) t->setSecret(options.secret);
  t->progress();  // arms the event fd
  return t;
}

void UcxTransport::setSecret(std::string secret) {
  if (closing_ || secret.empty()) return;
  if (secretSet_) {
    if (!sameSecret(secret, secret_)) {
      DRAGON_LOG(Warn, kLog, "node %u: the job secret is already set; the new one is ignored",
                 options_.selfNode);
    }
    return;
  }
  // The larger of the two headers (messages, transfer messages) must fit UCX's AM header.
  if (secret.size() > kMaxSecretBytes || kRmaHeaderBytes + secret.size() > maxAmHeader_) {
    DRAGON_LOG(Error, kLog, "node %u: a job secret of %zu bytes is too long for UCX (at most %zu)",
               options_.selfNode, secret.size(),
               std::min(kMaxSecretBytes, maxAmHeader_ - std::min(maxAmHeader_, kRmaHeaderBytes)));
    secretRefused_ = true;
    return;
  }
  secret_ = std::move(secret);
  secretSet_ = true;
  // Messages dropped before now that carried this secret came from the job: keep their
  // sequence numbers, or the messages after them would wait for them forever.
  std::vector<EarlyDrop> early = std::exchange(early_, {});
  // A peer that joined first may reach this node before its own launcher hands over the
  // secret (a heartbeat, say): dropping that is part of wiring up, so only a wrong secret is
  // worth a warning.
  for (const EarlyDrop& e : early) {
    if (sameSecret(e.secret, secret_)) {
      noteSkipped(e.node, e.seq);
    } else if (dropLog_.admit(nowNs(), kLog, options_.selfNode)) {
      DRAGON_LOG(Warn, kLog,
                 "node %u dropped a message that claims to come from node %u: wrong job secret "
                 "(it came before this node joined)",
                 options_.selfNode, e.node);
    }
  }
}

Status UcxTransport::addPeer(std::uint32_t node, std::string_view address) {
  if (closing_) return Status(StatusCode::PeerLost, "the UCX transport is shut down");
  if (node == options_.selfNode) {
    return Status(StatusCode::InvalidArgument, "node " + std::to_string(node) + " is this node");
  }
  if (peers_.count(node) != 0) {
    return Status(StatusCode::AlreadyExists, "node " + std::to_string(node) + " is already known");
  }
  const std::string_view raw = unwrapAddress(address);
  if (raw.empty()) {
    return Status(StatusCode::InvalidArgument,
                  "the address of node " + std::to_string(node) +
                      " is not a UCX transport address (or is one of another Dragon version)");
  }
  auto peer = std::make_unique<Peer>();
  peer->self = this;
  peer->node = node;
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(raw.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &UcxTransport::onEndpointError;
  params.err_handler.arg = peer.get();
  const ucs_status_t st = ucp_ep_create(worker_.get(), &params, &peer->ep);
  if (st == UCS_ERR_UNREACHABLE) {
    // UCX 1.13's shared memory (posix) detects peer failures only with
    // UCX_POSIX_ERROR_HANDLING=y; it is not set for the user because the pid check it does is
    // wrong across pid namespaces that share a boot_id (containers of one host).
    return Status(StatusCode::SystemError,
                  "connecting to node " + std::to_string(node) + ": no UCX transport in UCX_TLS "
                  "reaches it with peer failure detection (tcp does; shared memory only with "
                  "UCX_POSIX_ERROR_HANDLING=y)");
  }
  if (st != UCS_OK) return ucxError("connecting to node " + std::to_string(node), st);
  peer->nativeRma = options_.rma == RmaPath::Native ||
                    (options_.rma == RmaPath::Auto && hasNativeRma(peer->ep));
  DRAGON_LOG(Debug, kLog, "node %u: transfers to node %u are %s", options_.selfNode, node,
             peer->nativeRma ? "UCX RMA" : "messages");
  if (auto s = skipped_.find(node); s != skipped_.end()) {
    for (std::uint64_t seq : s->second) {
      if (seq <= kMaxReorder) peer->slots.try_emplace(seq);  // a Skip slot
    }
    skippedCount_ -= s->second.size();
    skipped_.erase(s);
  }
  peers_.emplace(node, std::move(peer));
  kick_ = true;  // wire-up needs progress
  return Status::ok();
}

Result<Peer*> UcxTransport::usablePeer(std::uint32_t node) {
  if (closing_) return Status(StatusCode::PeerLost, "the UCX transport is shut down");
  if (!secretSet_) {
    return Status(StatusCode::PermissionDenied, secretRefused_
                                                    ? "the job secret is too long for UCX"
                                                    : "no job secret yet");
  }
  auto it = peers_.find(node);
  if (it == peers_.end()) {
    return Status(StatusCode::NotFound, "node " + std::to_string(node) + " is not a known peer");
  }
  Peer& peer = *it->second;
  if (peer.failed || peer.ep == nullptr) {
    return Status(StatusCode::NodeLost, std::string(peer.why.message()));
  }
  return &peer;
}

Status UcxTransport::send(std::uint32_t node, std::string bytes) {
  DRAGON_ASSIGN_OR_RETURN(Peer * p, usablePeer(node));
  Peer& peer = *p;
  if (bytes.size() > options_.maxMessageBytes) {
    return Status(StatusCode::MessageTooLarge,
                  "a message of " + std::to_string(bytes.size()) + " bytes is over the limit of " +
                      std::to_string(options_.maxMessageBytes));
  }
  return post(peer, Kind::Data, std::move(bytes));
}

Status UcxTransport::post(Peer& peer, Kind kind, std::string bytes) {
  SendOp& op = sendOps_.emplace_back();
  op.it = std::prev(sendOps_.end());
  op.self = this;
  op.node = peer.node;
  op.header = encodeHeader(kind, options_.selfNode, peer.sendSeq++, bytes.size(), secret_);
  op.payload = std::move(bytes);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &UcxTransport::onSendDone;
  param.user_data = &op;
  const ucs_status_ptr_t r = ucp_am_send_nbx(peer.ep, kAmId, op.header.data(), op.header.size(),
                                             op.payload.data(), op.payload.size(), &param);
  if (r == nullptr) {
    sendOps_.erase(op.it);
    return Status::ok();
  }
  if (UCS_PTR_IS_ERR(r)) {
    sendOps_.erase(op.it);
    Status why(StatusCode::NodeLost, "sending to node " + std::to_string(peer.node) +
                                         " failed: " + ucs_status_string(UCS_PTR_STATUS(r)));
    markFailed(peer, why);
    return why;
  }
  ++peer.sending;
  return Status::ok();  // in flight: onSendDone
}

void UcxTransport::markFailed(Peer& peer, Status why) {
  if (peer.failed) return;
  peer.failed = true;
  peer.why = std::move(why);
  kick_ = true;  // reported from progress()
}

void UcxTransport::noteSkipped(std::uint32_t node, std::uint64_t seq) {
  if (auto it = peers_.find(node); it != peers_.end()) {
    Peer& peer = *it->second;
    if (!peer.failed && seq >= peer.nextSeq && seq - peer.nextSeq <= kMaxReorder) {
      peer.slots.try_emplace(seq);
    }
    return;
  }
  if (skippedCount_ >= kMaxSkipped) {
    forgotDrops_ = true;
    return;
  }
  skipped_[node].push_back(seq);
  ++skippedCount_;
}

void UcxTransport::dropped(const WireHeader* h, const char* why) {
  if (!dropLog_.admit(nowNs(), kLog, options_.selfNode)) return;
  if (h != nullptr) {
    DRAGON_LOG(Warn, kLog, "node %u dropped a message that claims to come from node %u: %s",
               options_.selfNode, h->node, why);
  } else {
    DRAGON_LOG(Warn, kLog, "node %u dropped a message: %s", options_.selfNode, why);
  }
}

ucs_status_t UcxTransport::onAm(const void* header, std::size_t headerLength, void* data,
                                std::size_t length, const ucp_am_recv_param_t* param) {
  // Returning UCS_OK drops a rendezvous message without receiving it.
  if (closing_) {
    // Nothing more is handed up; shutdown() waits for each peer's ByeAck (or its own Bye).
    WireHeader h;
    if (parseHeader(header, headerLength, length, h) == nullptr && h.kind != Kind::Data &&
        secretSet_ && sameSecret(h.secret, secret_)) {
      if (auto it = peers_.find(h.node); it != peers_.end()) it->second->byeHeard = true;
    }
    return UCS_OK;
  }
  WireHeader h;
  if (const char* why = parseHeader(header, headerLength, length, h)) {
    dropped(nullptr, why);
    return UCS_OK;
  }
  if (!secretSet_) {
    if (early_.size() < kMaxEarlyDrops) {
      early_.push_back({h.node, h.seq, std::string(h.secret)});  // judged by setSecret
    } else {
      forgotDrops_ = true;
      dropped(&h, "this node has no job secret yet");
    }
    return UCS_OK;
  }
  if (!sameSecret(h.secret, secret_)) {
    dropped(&h, "wrong job secret");
    return UCS_OK;
  }
  auto it = peers_.find(h.node);
  if (it == peers_.end()) {
    noteSkipped(h.node, h.seq);
    dropped(&h, "unknown sender node");
    return UCS_OK;
  }
  Peer& peer = *it->second;
  if (peer.failed) return UCS_OK;  // lost, or said goodbye
  if (h.seq < peer.nextSeq || peer.slots.count(h.seq) != 0) {
    dropped(&h, "duplicate sequence number");
    return UCS_OK;
  }
  if (h.seq - peer.nextSeq > kMaxReorder) {
    dropped(&h, "sequence number out of range");
    return UCS_OK;
  }
  peer.heard = true;  // a message taken in (a duplicate or one out of range says nothing)
  Slot& slot = peer.slots[h.seq];
  slot.kind = h.kind;
  if (length > options_.maxMessageBytes) {
    dropped(&h, "larger than maxMessageBytes");
    return UCS_OK;  // a Skip slot
  }
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    return receiveRendezvous(peer, slot, h.seq, data, length);
  }
  slot.data = Bytes::copyOf(data, length);
  slot.state = Slot::State::Ready;
  return UCS_OK;
}

ucs_status_t UcxTransport::receiveRendezvous(Peer& peer, Slot& slot, std::uint64_t seq,
                                             void* desc, std::size_t length) {
  RecvOp& op = recvOps_.emplace_back();
  op.it = std::prev(recvOps_.end());
  op.self = this;
  op.node = peer.node;
  op.seq = seq;
  op.data = Bytes::ofSize(length);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.recv_am = &UcxTransport::onRecvDone;
  param.user_data = &op;
  const ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_.get(), desc, op.data.data(), length,
                                                  &param);
  if (r == nullptr) {
    slot.data = std::move(op.data);
    slot.state = Slot::State::Ready;
    recvOps_.erase(op.it);
    return UCS_OK;
  }
  if (UCS_PTR_IS_ERR(r)) {
    WireHeader h;
    h.node = peer.node;
    dropped(&h, ucs_status_string(UCS_PTR_STATUS(r)));
    recvOps_.erase(op.it);
    return UCS_OK;  // a Skip slot
  }
  slot.state = Slot::State::Receiving;
  slot.op = &op;
  return UCS_INPROGRESS;
}

void UcxTransport::progress() {
  if (closing_ || inProgress_) return;
  inProgress_ = true;
  kick_ = false;
  for (unsigned round = 0;; ++round) {
    unsigned calls = 0;
    while (calls < kMaxProgressCalls && ucp_worker_progress(worker_.get()) != 0) ++calls;
    settle();
    if (closing_) break;  // shutdown() from a callback
    if (calls == kMaxProgressCalls || round + 1 == kMaxRounds) {
      kick_ = true;
      break;
    }
    const ucs_status_t st = ucp_worker_arm(worker_.get());
    if (st == UCS_ERR_BUSY) continue;  // events arrived meanwhile
    if (st != UCS_OK) {
      DRAGON_LOG(Error, kLog, "node %u: arming the UCX worker failed: %s", options_.selfNode,
                 ucs_status_string(st));
      kick_ = true;
    }
    break;
  }
  inProgress_ = false;
}

void UcxTransport::settle() {
  reapRecvs();
  reapSends();
  reapCloses();
  reapServing();
  sendAnswers();
  reapRmas();
  if (closing_) return;
  reapMessageRmas();
  if (closing_) return;
  reportHeard();
  deliver();
  if (closing_) return;
  reportLost();
  if (closing_) return;
  for (auto& [node, peer] : peers_) {
    // A peer that said Bye waits for its ByeAck, so its endpoint stays until that is out.
    if (peer->failed && peer->ep != nullptr && !(peer->saidBye && peer->sending > 0)) {
      closeEndpoint(*peer);
    }
  }
}

void UcxTransport::reapSends() {
  for (SendOp* op : std::exchange(doneSends_, {})) {
    if (auto it = peers_.find(op->node); it != peers_.end()) {
      --it->second->sending;
      if (op->status != UCS_OK) {
        markFailed(*it->second, Status(StatusCode::NodeLost,
                                       "sending to node " + std::to_string(op->node) +
                                           " failed: " + ucs_status_string(op->status)));
      }
    }
    sendOps_.erase(op->it);
  }
}

void UcxTransport::reapRecvs() {
  for (RecvOp* op : std::exchange(doneRecvs_, {})) {
    if (auto p = peers_.find(op->node); p != peers_.end()) {
      auto s = p->second->slots.find(op->seq);
      if (s != p->second->slots.end() && s->second.op == op) {
        s->second.op = nullptr;
        if (op->status == UCS_OK) {
          p->second->heard = true;
          s->second.data = std::move(op->data);
          s->second.state = Slot::State::Ready;
        } else {
          s->second.state = Slot::State::Skip;
          WireHeader h;
          h.node = op->node;
          dropped(&h, ucs_status_string(op->status));
        }
      }
    }
    recvOps_.erase(op->it);
  }
}

void UcxTransport::reapCloses() {
  std::erase_if(closeReqs_, [](void* r) {
    if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
    ucp_request_free(r);
    return true;
  });
}

void UcxTransport::reportHeard() {
  for (auto& [node, peer] : peers_) {
    if (!std::exchange(peer->heard, false) || peer->failed) continue;
    if (callbacks_.onHeard) callbacks_.onHeard(node);
  }
}

void UcxTransport::deliver() {
  // Callbacks may send, add peers (std::map insertion keeps this iteration valid) or shut down.
  for (auto& [node, peerPtr] : peers_) {
    Peer& peer = *peerPtr;
    while (!peer.reported) {
      auto it = peer.slots.begin();
      if (it != peer.slots.end() && it->first != peer.nextSeq && forgotDrops_) {
        const std::int64_t now = nowNs();
        if (peer.gapSinceNs == 0) peer.gapSinceNs = now;
        if (now - peer.gapSinceNs >= kForgottenGapNs) {
          DRAGON_LOG(Warn, kLog,
                     "node %u: messages %llu to %llu of node %u never came; taken for drops "
                     "that were not remembered (before this node joined), and passed over",
                     options_.selfNode, static_cast<unsigned long long>(peer.nextSeq),
                     static_cast<unsigned long long>(it->first - 1), node);
          peer.nextSeq = it->first;
        }
      }
      if (it == peer.slots.end() || it->first != peer.nextSeq ||
          it->second.state == Slot::State::Receiving) {
        break;
      }
      peer.gapSinceNs = 0;
      Slot slot = std::move(it->second);
      peer.slots.erase(it);
      ++peer.nextSeq;
      if (slot.state == Slot::State::Skip || slot.kind == Kind::ByeAck) continue;
      if (slot.kind == Kind::Bye) {
        // Everything it sent before is handed up: it may close (a connection closed while
        // this node still sent to it would drop what this node had not read yet).
        peer.saidBye = true;
        (void)post(peer, Kind::ByeAck, {});
        markFailed(peer, Status(StatusCode::NodeLost,
                                "node " + std::to_string(node) + " shut down its transport"));
        break;
      }
      if (callbacks_.onMessage) callbacks_.onMessage(node, slot.data.view());
      if (closing_) return;
    }
  }
}

void UcxTransport::reportLost() {
  for (auto& [node, peer] : peers_) {
    if (!peer->failed || peer->reported) continue;
    peer->reported = true;
    peer->slots.clear();  // a receive still in flight keeps its RecvOp until it completes
    failMessageRmas(node, peer->why);
    if (closing_) return;
    if (callbacks_.onPeerLost) callbacks_.onPeerLost(node, peer->why);
    if (closing_) return;
  }
}

void UcxTransport::closeEndpoint(Peer& peer) {
  destroyRkeys(peer);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;  // valid: both sides use UCP_ERR_HANDLING_MODE_PEER
  const ucs_status_ptr_t r = ucp_ep_close_nbx(std::exchange(peer.ep, nullptr), &param);
  if (UCS_PTR_IS_PTR(r)) closeReqs_.push_back(r);
}

void UcxTransport::destroyRkeys(Peer& peer) {
  for (auto& [key, rkey] : peer.rkeys) ucp_rkey_destroy(rkey);
  peer.rkeys.clear();
}

Result<RegisteredRegion> UcxTransport::registerRegion(void* base, std::size_t length) {
  if (closing_) return Status(StatusCode::PeerLost, "the UCX transport is shut down");
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = base;
  params.length = length;
  ucp_mem_h memh = nullptr;
  ucs_status_t st = ucp_mem_map(context_.get(), &params, &memh);
  if (st != UCS_OK) return ucxError("registering memory for RMA", st);
  void* packed = nullptr;
  std::size_t packedBytes = 0;
  st = ucp_rkey_pack(context_.get(), memh, &packed, &packedBytes);
  if (st != UCS_OK) {
    ucp_mem_unmap(context_.get(), memh);
    return ucxError("packing the key of registered memory", st);
  }
  const std::uint64_t id = nextRegion_++;
  RegisteredRegion region{
      id, regionKey(id, std::string_view(static_cast<const char*>(packed), packedBytes))};
  ucp_rkey_buffer_release(packed);
  LocalRegion& r = regions_[id];
  r.memh = memh;
  r.base = static_cast<char*>(base);
  r.length = length;
  return region;
}

void UcxTransport::deregisterRegion(std::uint64_t id, std::shared_ptr<void> mapping) {
  auto it = regions_.find(id);
  if (it == regions_.end() || it->second.gone) return;
  it->second.gone = true;
  it->second.mapping = std::move(mapping);
  releaseRegion(id);
}

void UcxTransport::releaseRegion(std::uint64_t id) {
  auto it = regions_.find(id);
  if (it == regions_.end() || !it->second.gone || it->second.busy > 0) return;
  if (!closed_ && it->second.memh != nullptr) ucp_mem_unmap(context_.get(), it->second.memh);
  regions_.erase(it);  // and the mapping with it
}

RmaRefusal UcxTransport::regionBytes(std::uint64_t id, std::uint64_t address,
                                     std::uint64_t length, char*& at) {
  auto it = regions_.find(id);
  if (it == regions_.end() || it->second.gone) return RmaRefusal::NoRegion;
  const LocalRegion& r = it->second;
  const auto base = reinterpret_cast<std::uint64_t>(r.base);
  if (address < base || length > r.length || address - base > r.length - length) {
    return RmaRefusal::OutOfRange;
  }
  at = r.base + (address - base);
  return RmaRefusal::None;
}

void UcxTransport::track(RmaOp& op, ucs_status_ptr_t r) {
  if (r == nullptr) return;  // completed at once
  if (UCS_PTR_IS_ERR(r)) {
    if (op.status == UCS_OK) op.status = UCS_PTR_STATUS(r);
    return;
  }
  ++op.outstanding;
}

Status UcxTransport::rma(std::uint32_t node, RmaKind kind, void* local, std::size_t length,
                         std::uint64_t remote, std::string_view key,
                         std::function<void(Status)> done) {
  DRAGON_ASSIGN_OR_RETURN(Peer * p, usablePeer(node));
  std::uint64_t region = 0;
  std::string_view packedRkey;
  if (!splitRegionKey(key, region, packedRkey)) {
    return Status(StatusCode::InvalidArgument,
                  "not a key of node " + std::to_string(node) + ": too short");
  }
  if (p->nativeRma) {
    return nativeRma(*p, kind, local, length, remote, key, packedRkey, std::move(done));
  }
  return messageRma(*p, kind, static_cast<char*>(local), length, remote, region, std::move(done));
}

Status UcxTransport::nativeRma(Peer& peer, RmaKind kind, void* local, std::size_t length,
                               std::uint64_t remote, std::string_view key,
                               std::string_view packedRkey, std::function<void(Status)> done) {
  const std::uint32_t node = peer.node;
  auto k = peer.rkeys.find(key);
  if (k == peer.rkeys.end()) {
    if (peer.rkeys.size() >= kMaxRkeysPerPeer) {
      // A key may be dropped only once nothing in flight uses it.
      if (!rmaOps_.empty()) {
        return Status(StatusCode::WouldBlock,
                      "over " + std::to_string(kMaxRkeysPerPeer) + " regions of node " +
                          std::to_string(node) + " in use at once");
      }
      destroyRkeys(peer);
    }
    ucp_rkey_h rkey = nullptr;
    const ucs_status_t st = ucp_ep_rkey_unpack(peer.ep, packedRkey.data(), &rkey);
    if (st != UCS_OK) {
      return Status(StatusCode::InvalidArgument,
                    std::string("not a key of node ") + std::to_string(node) + ": " +
                        ucs_status_string(st));
    }
    k = peer.rkeys.emplace(std::string(key), rkey).first;
  }
  RmaOp& op = rmaOps_.emplace_back();
  op.it = std::prev(rmaOps_.end());
  op.self = this;
  op.node = node;
  op.kind = kind;
  op.done = std::move(done);
  op.outstanding = 1;  // held until both requests are posted
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &UcxTransport::onRmaDone;
  param.user_data = &op;
  if (length > 0) {
    track(op, kind == RmaKind::Put
                  ? ucp_put_nbx(peer.ep, local, length, remote, k->second, &param)
                  : ucp_get_nbx(peer.ep, local, length, remote, k->second, &param));
  }
  // A Put completes locally once its buffer may be reused; the flush completes once it (and
  // everything before it on the endpoint) is done at the peer.
  if (kind == RmaKind::Put && op.status == UCS_OK) track(op, ucp_ep_flush_nbx(peer.ep, &param));
  if (--op.outstanding == 0) doneRmas_.push_back(&op);
  kick_ = true;
  return Status::ok();
}

Status UcxTransport::messageRma(Peer& peer, RmaKind kind, char* local, std::size_t length,
                                std::uint64_t remote, std::uint64_t region,
                                std::function<void(Status)> done) {
  const std::uint64_t id = nextTransfer_++;
  MessageRma& op = messageRmas_[id];
  op.self = this;
  op.id = id;
  op.node = peer.node;
  op.kind = kind;
  op.local = local;
  op.length = length;
  op.done = std::move(done);
  RmaHeader h;
  h.kind = kind == RmaKind::Put ? RmaMessage::Put : RmaMessage::Get;
  h.node = options_.selfNode;
  h.transfer = id;
  h.region = region;
  h.address = remote;
  h.length = length;
  op.header = encodeRmaHeader(h, secret_);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &UcxTransport::onMessageRmaSent;
  param.user_data = &op;
  const bool withBytes = kind == RmaKind::Put && length > 0;
  const ucs_status_ptr_t r =
      ucp_am_send_nbx(peer.ep, kRmaAmId, op.header.data(), op.header.size(),
                      withBytes ? local : nullptr, withBytes ? length : 0, &param);
  if (UCS_PTR_IS_ERR(r)) {
    Status why(StatusCode::NodeLost, "sending to node " + std::to_string(peer.node) +
                                         " failed: " + ucs_status_string(UCS_PTR_STATUS(r)));
    messageRmas_.erase(id);
    markFailed(peer, why);
    return why;
  }
  if (r != nullptr) {
    ++op.requests;
    ++messageRequests_;
  }
  kick_ = true;
  return Status::ok();
}

ucs_status_t UcxTransport::onRmaAm(const void* header, std::size_t headerLength, void* data,
                                   std::size_t length, const ucp_am_recv_param_t* param) {
  if (closing_) return UCS_OK;
  RmaHeader h;
  if (const char* why = parseRmaHeader(header, headerLength, length, h)) {
    dropped(nullptr, why);
    return UCS_OK;
  }
  WireHeader from;
  from.node = h.node;
  if (!secretSet_) {
    dropped(&from, "a transfer before this node has the job secret");
    return UCS_OK;
  }
  if (!sameSecret(h.secret, secret_)) {
    dropped(&from, "wrong job secret");
    return UCS_OK;
  }
  auto it = peers_.find(h.node);
  if (it == peers_.end()) {
    dropped(&from, "unknown sender node");
    return UCS_OK;
  }
  Peer& peer = *it->second;
  if (peer.failed) return UCS_OK;
  peer.heard = true;
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  switch (h.kind) {
    case RmaMessage::Put:
      return servePut(peer, h, data, length, rndv);
    case RmaMessage::Get: {
      Answer& a = answers_.emplace_back();
      a.node = peer.node;
      a.header = h;
      a.header.kind = RmaMessage::GetData;
      kick_ = true;
      return UCS_OK;
    }
    case RmaMessage::PutDone:
    case RmaMessage::GetData:
      return takeAnswer(h, data, length, rndv);
  }
  return UCS_OK;
}

ucs_status_t UcxTransport::servePut(Peer& peer, const RmaHeader& h, void* data,
                                    std::size_t length, bool rndv) {
  kick_ = true;
  RmaHeader done = h;
  done.kind = RmaMessage::PutDone;
  char* at = nullptr;
  done.refusal = regionBytes(h.region, h.address, h.length, at);
  if (done.refusal == RmaRefusal::None && rndv) {
    Serving& s = serving_.emplace_back();
    s.it = std::prev(serving_.end());
    s.self = this;
    s.node = peer.node;
    s.region = h.region;
    s.answer = done;  // sent once the bytes are in
    ++regions_[h.region].busy;
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.recv_am = &UcxTransport::onServingReceived;
    param.user_data = &s;
    const ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_.get(), data, at, length, &param);
    if (r != nullptr && !UCS_PTR_IS_ERR(r)) {
      ++messageRequests_;
      return UCS_INPROGRESS;
    }
    if (UCS_PTR_IS_ERR(r)) {
      done.refusal = RmaRefusal::Failed;
      WireHeader from;
      from.node = peer.node;
      dropped(&from, "a transfer's bytes could not be received");
    }
    serving_.erase(s.it);
    endUse(h.region);
  } else if (done.refusal == RmaRefusal::None && length > 0) {
    std::memcpy(at, data, length);
  }
  // A refused rendezvous's bytes stay away (UCS_OK drops them).
  answers_.push_back({peer.node, done});
  return UCS_OK;
}

ucs_status_t UcxTransport::takeAnswer(const RmaHeader& h, void* data, std::size_t length,
                                      bool rndv) {
  auto it = messageRmas_.find(h.transfer);
  const bool expected =
      it != messageRmas_.end() && it->second.node == h.node && !it->second.answered &&
      !it->second.told &&
      (h.kind == RmaMessage::PutDone) == (it->second.kind == RmaKind::Put) &&
      h.length == it->second.length;
  if (!expected) {
    WireHeader from;
    from.node = h.node;
    dropped(&from, "an answer to no transfer of this node");
    return UCS_OK;
  }
  MessageRma& op = it->second;
  if (h.refusal != RmaRefusal::None) {
    op.answered = true;
    op.result = transferFailed(
        h.refusal == RmaRefusal::Failed ? StatusCode::SystemError : StatusCode::InvalidArgument,
        op.kind, op.node,
        h.refusal == RmaRefusal::NoRegion     ? "no such region there"
        : h.refusal == RmaRefusal::OutOfRange ? "outside the region"
                                              : "the transfer failed there");
    settledRmas_.push_back(op.id);
    return UCS_OK;
  }
  if (h.kind == RmaMessage::PutDone || !rndv) {
    if (h.kind == RmaMessage::GetData && length > 0) std::memcpy(op.local, data, length);
    op.answered = true;
    settledRmas_.push_back(op.id);
    return UCS_OK;
  }
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.recv_am = &UcxTransport::onMessageRmaReceived;
  param.user_data = &op;
  const ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_.get(), data, op.local, length, &param);
  if (r == nullptr) {
    op.answered = true;
    settledRmas_.push_back(op.id);
    return UCS_OK;
  }
  if (UCS_PTR_IS_ERR(r)) {
    op.answered = true;
    op.result = transferFailed(StatusCode::SystemError, op.kind, op.node,
                               ucs_status_string(UCS_PTR_STATUS(r)));
    settledRmas_.push_back(op.id);
    return UCS_OK;
  }
  op.answered = true;  // done once the bytes are in
  ++op.requests;
  ++messageRequests_;
  return UCS_INPROGRESS;
}

void UcxTransport::sendAnswers() {
  for (Answer& a : std::exchange(answers_, {})) {
    auto p = peers_.find(a.node);
    if (p == peers_.end() || p->second->failed || p->second->ep == nullptr) continue;
    Peer& peer = *p->second;
    RmaHeader h = a.header;
    h.node = options_.selfNode;
    char* at = nullptr;
    if (h.kind == RmaMessage::GetData && h.refusal == RmaRefusal::None) {
      h.refusal = regionBytes(h.region, h.address, h.length, at);
    }
    const bool withBytes = h.kind == RmaMessage::GetData && h.refusal == RmaRefusal::None;
    Serving& s = serving_.emplace_back();
    s.it = std::prev(serving_.end());
    s.self = this;
    s.node = peer.node;
    s.sending = true;
    s.header = encodeRmaHeader(h, secret_);
    if (withBytes && h.length > 0) {
      s.region = h.region;
      ++regions_[h.region].busy;
    }
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &UcxTransport::onServingSent;
    param.user_data = &s;
    const ucs_status_ptr_t r =
        ucp_am_send_nbx(peer.ep, kRmaAmId, s.header.data(), s.header.size(),
                        withBytes ? at : nullptr, withBytes ? h.length : 0, &param);
    if (r != nullptr && !UCS_PTR_IS_ERR(r)) {
      ++messageRequests_;
      continue;
    }
    if (UCS_PTR_IS_ERR(r)) {
      markFailed(peer, Status(StatusCode::NodeLost,
                              "sending to node " + std::to_string(peer.node) + " failed: " +
                                  ucs_status_string(UCS_PTR_STATUS(r))));
    }
    const std::uint64_t region = s.region;
    serving_.erase(s.it);
    if (region != 0) endUse(region);
  }
}

void UcxTransport::reapServing() {
  for (Serving* s : std::exchange(doneServing_, {})) {
    if (!s->sending) {
      // A Put's bytes are in (or failed to come): answer.
      Answer& a = answers_.emplace_back();
      a.node = s->node;
      a.header = s->answer;
      if (s->status != UCS_OK) a.header.refusal = RmaRefusal::Failed;
    } else if (s->status != UCS_OK) {
      if (auto p = peers_.find(s->node); p != peers_.end()) {
        markFailed(*p->second, Status(StatusCode::NodeLost,
                                      "sending to node " + std::to_string(s->node) +
                                          " failed: " + ucs_status_string(s->status)));
      }
    }
    const std::uint64_t region = s->region;
    serving_.erase(s->it);
    if (region != 0) endUse(region);
  }
}

void UcxTransport::reapMessageRmas() {
  for (std::uint64_t id : std::exchange(settledRmas_, {})) {
    finishMessageRma(id);
    if (closing_) return;
  }
}

void UcxTransport::finishMessageRma(std::uint64_t id) {
  auto it = messageRmas_.find(id);
  if (it == messageRmas_.end()) return;
  MessageRma& op = it->second;
  if (op.failure != UCS_OK && op.result.isOk() && !op.told) {
    // The request could not be sent, or the answer's bytes not received.
    // On an endpoint that reports peer failures, a failed request is a failed connection.
    op.answered = true;
    op.result =
        transferFailed(StatusCode::NodeLost, op.kind, op.node, ucs_status_string(op.failure));
    if (auto p = peers_.find(op.node); p != peers_.end()) markFailed(*p->second, op.result);
  }
  if (op.requests > 0) return;
  if (op.told) {
    messageRmas_.erase(it);  // and what its done kept alive
    return;
  }
  if (!op.answered) return;
  std::function<void(Status)> done = std::move(op.done);
  Status result = std::move(op.result);
  messageRmas_.erase(it);
  if (done) done(result);
}

void UcxTransport::failMessageRmas(std::uint32_t node, const Status& why) {
  std::vector<std::uint64_t> ids;
  for (auto& [id, op] : messageRmas_) {
    if (op.node == node && !op.told) ids.push_back(id);
  }
  for (std::uint64_t id : ids) {
    auto it = messageRmas_.find(id);
    if (it == messageRmas_.end()) continue;
    it->second.told = true;
    const Status st = transferFailed(StatusCode::NodeLost, it->second.kind, node, why.message());
    // done runs from a local: it may shut the transport down, which drops the operations.
    std::function<void(Status)> done = std::move(it->second.done);
    if (done) done(st);
    if (closing_) return;
    // A request still reading or writing the memory that done keeps alive holds the operation
    // (and done) until it completes.
    it = messageRmas_.find(id);
    if (it == messageRmas_.end()) continue;
    if (it->second.requests == 0) {
      messageRmas_.erase(it);
    } else {
      it->second.done = std::move(done);
    }
  }
}

void UcxTransport::reapRmas() {
  for (RmaOp* op : std::exchange(doneRmas_, {})) {
    Status st;
    if (op->status != UCS_OK) {
      auto p = peers_.find(op->node);
      const bool lost = p == peers_.end() || p->second->failed || op->status == UCS_ERR_CANCELED ||
                        op->status == UCS_ERR_CONNECTION_RESET ||
                        op->status == UCS_ERR_ENDPOINT_TIMEOUT || op->status == UCS_ERR_UNREACHABLE;
      st = transferFailed(lost ? StatusCode::NodeLost : StatusCode::SystemError, op->kind,
                          op->node, ucs_status_string(op->status));
    }
    auto done = std::move(op->done);
    rmaOps_.erase(op->it);
    if (done) done(st);
    if (closing_) return;
  }
}

template <typename Done>
bool UcxTransport::waitUntil(Done done, std::int64_t deadlineNs) {
  for (;;) {
    unsigned calls = 0;
    while (calls < kMaxProgressCalls && ucp_worker_progress(worker_.get()) != 0) ++calls;
    reapRecvs();
    reapSends();
    reapCloses();
    if (done()) return true;
    const std::int64_t left = deadlineNs - nowNs();
    if (left <= 0) return false;
    if (calls == 0 && ucp_worker_arm(worker_.get()) == UCS_OK) {
      // Not every completion is announced on the fd: wake up every millisecond regardless.
      pollfd p{efd_.get(), POLLIN, 0};
      (void)poll(&p, 1, 1);
    }
  }
}

void UcxTransport::flushWorker(std::int64_t deadlineNs) {
  ucp_request_param_t param{};
  const ucs_status_ptr_t r = ucp_worker_flush_nbx(worker_.get(), &param);
  if (!UCS_PTR_IS_PTR(r)) return;
  (void)waitUntil([r] { return ucp_request_check_status(r) != UCS_INPROGRESS; }, deadlineNs);
  ucp_request_free(r);
}

void UcxTransport::shutdown(std::int64_t timeoutNs) {
  if (closing_) return;
  closing_ = true;
  const std::int64_t deadline = nowNs() + std::max<std::int64_t>(timeoutNs, 0);
  // Peers hear of the end at once (after everything sent before it) instead of by a failure.
  // Each acknowledges the Bye once it has taken in what came before; only then does the
  // connection close: a peer that sent to a closed connection would lose what it had not read.
  std::vector<Peer*> told;
  if (secretSet_) {
    for (auto& [node, peer] : peers_) {
      if (!peer->failed && peer->ep != nullptr && post(*peer, Kind::Bye, {}).isOk()) {
        told.push_back(peer.get());
      }
    }
  }
  // Transfers in flight finish first: a remote key is destroyed only after its operations.
  if (waitUntil(
          [this, &told] {
            return sendOps_.empty() && doneRmas_.size() == rmaOps_.size() &&
                   messageRequests_ == 0 &&
                   std::all_of(told.begin(), told.end(),
                               [](const Peer* p) { return p->failed || p->byeHeard; });
          },
          deadline)) {
    flushWorker(deadline);
  }
  for (auto& [node, peer] : peers_) {
    if (peer->ep != nullptr) closeEndpoint(*peer);
  }
  (void)waitUntil([this] { return closeReqs_.empty(); }, deadline);
  for (auto& [id, r] : regions_) {
    if (r.memh != nullptr) ucp_mem_unmap(context_.get(), std::exchange(r.memh, nullptr));
  }
  for (void* r : std::exchange(closeReqs_, {})) ucp_request_free(r);
  worker_.reset();  // completes what is left (callbacks may still run here)
  context_.reset();
  closed_ = true;
  regions_.clear();  // the mappings kept for peers' transfers too: there are none any more
  messageRmas_.clear();
  settledRmas_.clear();
  doneServing_.clear();
  serving_.clear();
  answers_.clear();
  doneSends_.clear();
  doneRecvs_.clear();
  doneRmas_.clear();
  rmaOps_.clear();  // their owners hear nothing more: the transport is gone
  sendOps_.clear();
  recvOps_.clear();
  for (auto& [node, peer] : peers_) peer->slots.clear();
}

std::unique_ptr<Transport> createTransport(const TransportOptions& options, Status& error) {
  auto t = UcxTransport::create(options);
  if (!t.has_value()) {
    error = std::move(t).error();
    return nullptr;
  }
  return std::move(*t);
}

const TransportModule kModule{kAbiVersion, "ucx", &createTransport};

}  // namespace
}  // namespace dragon::transport

extern "C" __attribute__((visibility("default"))) const dragon::transport::TransportModule*
dragon_transport_module_v1() {  // NOLINT(readability-identifier-naming): the ABI symbol
  return &dragon::transport::kModule;
}
