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
inline constexpr std::uint32_t kAbiVersion = 1;

struct TransportOptions {
  std::uint32_t selfNode = 0;
  // The job secret (compared whole), or empty when it is not known yet: a dragond must publish
  // its address before the exchange that distributes the secret; see setSecret().
  std::string secret;
  std::uint64_t maxMessageBytes = std::uint64_t{64} << 20;
};

struct TransportCallbacks {
  // A message from `node`, whole.
  std::function<void(std::uint32_t node, std::string_view bytes)> onMessage;
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
  // MessageTooLarge past maxMessageBytes.
  virtual Status send(std::uint32_t node, std::string_view bytes) = 0;
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

}  // namespace dragon::transport
