// SPDX-License-Identifier: MIT
// The Transport seam: how one dragond sends messages to the dragonds of other nodes of its job.
// An implementation is a loadable module (ucx_transport/ builds dragon-transport-ucx.so) that
// exports one versioned `extern "C"` info symbol; dragond dlopens it when it joins a
// multi-node job. tests/transport/ holds the conformance suite every implementation passes
// (UCX over tcp, UCX over shared memory, and the in-process fake for unit tests).
//
// Contract:
// - Messages are opaque byte strings, delivered whole, exactly once, in the order sent, per
//   (sender, receiver) pair; a message larger than `maxMessageBytes` is refused by send().
// - Every message carries the job's secret; the receiver drops (and logs) any message whose
//   secret or sender node does not match: a process that reaches the address without the
//   secret can neither inject messages nor learn anything.
// - A peer that fails (its process dies, the network to it goes) is reported once through
//   onPeerLost, after which send() to it fails with NodeLost.
// - Nothing blocks, and nothing runs on another thread: the owner watches eventFd() in its own
//   event loop and calls progress() when it is readable (and after every send() or
//   addPeer(), if the implementation says so through needsProgress()). Callbacks run only
//   inside progress().
// - One-sided transfers (RMA): memory registered with registerRegion() can be read and written
//   by a peer that holds its key (opaque bytes, which travel inside messages, so only the job's
//   nodes learn them); rma() moves bytes between memory of this node and a peer's registered
//   region without a copy through a message.
//
// Owning thread: the daemon's event-loop thread.
#pragma once

#include "base/private.hpp"

#include <dragon/result.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace dragon::transport {

// Bumped when this header changes incompatibly; a module built for another version is refused.
inline constexpr std::uint32_t kAbiVersion = 4;

// How rma() reaches a peer (config cluster.rma): the transport's own one-sided operations where
// they are native to the path, else messages of its own (Auto); always messages; always its
// one-sided operations.
enum class RmaPath : std::uint8_t { Auto, Messages, Native };

struct TransportOptions {
  std::uint32_t selfNode = 0;
  // The job secret (compared whole), or empty when it is not known yet: a dragond must publish
  // its address before the exchange that distributes the secret; see setSecret().
  std::string secret;
  std::uint64_t maxMessageBytes = std::uint64_t{64} << 20;
  RmaPath rma = RmaPath::Auto;
};

// Memory registered for RMA: its id here, and the key a peer needs to reach it.
struct RegisteredRegion {
  std::uint64_t id = 0;
  std::string key;
};

enum class RmaKind : std::uint8_t {
  Put,  // this node's memory -> the peer's region
  Get,  // the peer's region -> this node's memory
};

struct TransportCallbacks {
  // A message from `node`, whole.
  std::function<void(std::uint32_t node, std::string_view bytes)> onMessage;
  // Something of the job came from `node` (a message began to arrive, or part of one did),
  // before onMessage can hand it up: messages are handed up in order, so a small one (a
  // heartbeat) waits behind a large one that is still arriving. Optional; it must not call
  // back into the transport.
  std::function<void(std::uint32_t node)> onHeard;
  // `node` failed: reported once.
  std::function<void(std::uint32_t node, const Status& why)> onPeerLost;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual std::string_view name() const = 0;
  // What peers need to reach this one (opaque bytes, published through the bootstrap).
  virtual std::string address() const = 0;
  // Readable when progress() has something to do.
  virtual int eventFd() const = 0;
  // Does whatever is ready (receives, completes sends, detects failed peers) and runs the
  // callbacks; never blocks.
  virtual void progress() = 0;
  // True when work was queued that eventFd() will not announce: call progress() again soon.
  virtual bool needsProgress() const = 0;

  virtual void setCallbacks(TransportCallbacks callbacks) = 0;
  // Sets the job secret (once, before any addPeer/send). Until then every arriving message is
  // dropped and send() is refused (PermissionDenied).
  virtual void setSecret(std::string secret) = 0;
  // Makes `node` reachable at `address`. AlreadyExists if known.
  virtual Status addPeer(std::uint32_t node, std::string_view address) = 0;
  // Queues a message to `node`: NotFound for an unknown node, NodeLost for a failed one,
  // MessageTooLarge past maxMessageBytes. The transport takes the bytes (a large message is
  // not copied again).
  virtual Status send(std::uint32_t node, std::string bytes) = 0;
  // Registers [base, base + length) of this process for RMA by peers. The memory must stay
  // mapped until deregisterRegion(id), which the owner calls only once no rma() on it is in
  // flight here.
  virtual Result<RegisteredRegion> registerRegion(void* base, std::size_t length) = 0;
  // No peer reaches the region any more. A transfer of a peer may still be reading or writing
  // it (one the owner has given up on: its peer was lost, say): the transport keeps `mapping`
  // (whatever keeps the memory mapped; may be null) until that transfer is over, as far as it
  // can see one (UCX: a transfer carried as messages; a peer's one-sided RMA is the NIC's, and
  // its key dies with the registration).
  virtual void deregisterRegion(std::uint64_t id, std::shared_ptr<void> mapping) = 0;
  // Copies `length` bytes between `local` (this process's memory, registered or not) and the
  // address `remote` of `node`'s region whose key is `key`. `done` runs once, from progress(),
  // when the bytes are at their destination (for Put: visible to the peer's processes), or
  // with NodeLost (the peer failed) or another error; the call itself fails at once for an
  // unknown or lost node or a key this transport cannot use.
  virtual Status rma(std::uint32_t node, RmaKind kind, void* local, std::size_t length,
                     std::uint64_t remote, std::string_view key,
                     std::function<void(Status)> done) = 0;
  // Sends what is queued, within `timeoutNs`, then closes every connection (end of job).
  virtual void shutdown(std::int64_t timeoutNs) = 0;
};

// What a transport module exports, as `extern "C" const TransportModule*
// dragon_transport_module_v1(void)`.
struct TransportModule {
  std::uint32_t abiVersion;  // kAbiVersion of the header it was built with
  const char* name;          // "ucx"
  // Creates an instance; on failure returns null and fills `error`.
  std::unique_ptr<Transport> (*create)(const TransportOptions& options, Status& error);
};

inline constexpr const char* kTransportModuleSymbol = "dragon_transport_module_v1";

// The in-process fake (for unit tests): transports created from the same hub reach each other.
class FakeHub;
std::shared_ptr<FakeHub> makeFakeHub();
std::unique_ptr<Transport> makeFakeTransport(const std::shared_ptr<FakeHub>& hub,
                                             const TransportOptions& options);
// The fake's failure injection: `node` behaves as a lost peer for every other transport.
void fakeKillNode(const std::shared_ptr<FakeHub>& hub, std::uint32_t node);
// A partition: messages to and from `node` vanish, and nobody is told (only silence says so).
void fakePartitionNode(const std::shared_ptr<FakeHub>& hub, std::uint32_t node);
// While `held`, messages from `node` arrive (onHeard) but are handed up (onMessage) only once
// released, in order: as behind a large message of `node` that is still arriving.
void fakeHoldNode(const std::shared_ptr<FakeHub>& hub, std::uint32_t node, bool held);

}  // namespace dragon::transport
