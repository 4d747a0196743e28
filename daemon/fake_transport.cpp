// SPDX-License-Identifier: MIT
// The in-process fake transport (daemon/transport.hpp), for unit tests. Transports made from one
// FakeHub reach each other through mailboxes in the hub, under the real contract: whole
// messages, in order per pair, the secret and the sender checked by the receiver, a lost peer
// reported once, callbacks only inside progress(), an eventfd as the event fd. A transport that
// shuts down (or is destroyed) is lost for its peers, like a dragond that exits; fakeKillNode()
// makes a node lost without destroying anything.
//
// Owning thread: each transport's owner. The hub's mutex guards the mailboxes, so the
// transports of one hub may have different owning threads.
#include "daemon/transport.hpp"
#include "daemon/transport_util.hpp"

#include "base/log.hpp"

#include <dragon/unique_fd.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sys/eventfd.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace dragon::transport {

class FakeHub {
 public:
  struct Event {
    enum class Kind { Message, Gone, Killed };
    Kind kind = Kind::Message;
    std::uint32_t node = 0;     // Message: the sender; Killed: the node
    std::uint64_t address = 0;  // Gone: the address of the transport that went
    std::string secret;
    std::string bytes;
  };
  struct Mailbox {
    int wakeFd = -1;  // the owner's eventfd, open while the mailbox exists
    std::deque<Event> events;
  };

  // Appends to the mailbox of `address` and wakes its owner; false when there is none.
  bool post(std::uint64_t address, Event event) {
    auto it = mailboxes.find(address);
    if (it == mailboxes.end()) return false;
    it->second.events.push_back(std::move(event));
    wake(it->second.wakeFd);
    return true;
  }
  static void wake(int fd) {
    const std::uint64_t one = 1;
    (void)!write(fd, &one, sizeof one);  // EAGAIN only when the counter is already huge
  }

  std::mutex mu;
  std::uint64_t nextAddress = 1;                 // under mu
  std::map<std::uint64_t, Mailbox> mailboxes;    // under mu
  std::set<std::uint32_t> killed;                // under mu
  std::set<std::uint32_t> partitioned;           // under mu: silent, nobody told
  std::set<std::uint32_t> held;                  // under mu: heard, handed up once released
  // Registered memory, by key: the transport (address) that registered it, and where it is.
  struct Region {
    std::uint64_t address = 0;
    char* base = nullptr;
    std::size_t length = 0;
  };
  std::map<std::string, Region, std::less<>> regions;  // under mu
  std::uint64_t nextRegion = 1;                        // under mu
};

namespace {

constexpr const char* kLog = "transport";
constexpr std::string_view kAddressPrefix = "fake:";

std::int64_t nowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}


using Event = FakeHub::Event;

class FakeTransport final : public Transport {
 public:
  FakeTransport(std::shared_ptr<FakeHub> hub, const TransportOptions& options, UniqueFd wake)
      : hub_(std::move(hub)), options_(options), wake_(std::move(wake)) {
    options_.secret.clear();
    std::lock_guard lock(hub_->mu);
    address_ = hub_->nextAddress++;
    hub_->mailboxes[address_].wakeFd = wake_.get();
  }
  ~FakeTransport() override { shutdown(0); }

  std::string_view name() const override { return "fake"; }
  std::string address() const override {
    return std::string(kAddressPrefix) + std::to_string(address_);
  }
  int eventFd() const override { return wake_.get(); }
  bool needsProgress() const override { return false; }  // all work is announced on the eventfd
  void setCallbacks(TransportCallbacks callbacks) override { callbacks_ = std::move(callbacks); }

  void setSecret(std::string secret) override {
    if (secret.empty() || closed_) return;
    if (secretSet_) {
      if (!sameSecret(secret, secret_)) {
        DRAGON_LOG(Warn, kLog, "node %u: the job secret is already set; the new one is ignored",
                   options_.selfNode);
      }
      return;
    }
    secret_ = std::move(secret);
    secretSet_ = true;
  }

  Status addPeer(std::uint32_t node, std::string_view address) override {
    if (closed_) return Status(StatusCode::PeerLost, "the fake transport is shut down");
    if (node == options_.selfNode) {
      return Status(StatusCode::InvalidArgument, "node " + std::to_string(node) + " is this node");
    }
    if (peers_.count(node) != 0) {
      return Status(StatusCode::AlreadyExists,
                    "node " + std::to_string(node) + " is already known");
    }
    std::uint64_t id = 0;
    const std::string_view digits = address.substr(std::min(address.size(), kAddressPrefix.size()));
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
    if (!address.starts_with(kAddressPrefix) || digits.empty() || ec != std::errc() ||
        end != digits.data() + digits.size()) {
      return Status(StatusCode::InvalidArgument, "the address of node " + std::to_string(node) +
                                                     " is not a fake transport address");
    }
    Peer& peer = peers_[node];
    peer.address = id;
    std::lock_guard lock(hub_->mu);
    if (hub_->mailboxes.count(id) == 0 || hub_->killed.count(node) != 0) {
      markFailed(peer, node, "is not there");
    }
    return Status::ok();
  }

  Status send(std::uint32_t node, std::string bytes) override {
    auto p = usablePeer(node);
    if (!p.has_value()) return p.error();
    Peer& peer = **p;
    if (bytes.size() > options_.maxMessageBytes) {
      return Status(StatusCode::MessageTooLarge,
                    "a message of " + std::to_string(bytes.size()) +
                        " bytes is over the limit of " + std::to_string(options_.maxMessageBytes));
    }
    std::lock_guard lock(hub_->mu);
    // A killed node's messages go nowhere; the Killed event reports it to its peers.
    if (hub_->killed.count(options_.selfNode) != 0 || hub_->killed.count(node) != 0) {
      return Status::ok();
    }
    // A partitioned node's messages, both ways, are lost without a word.
    if (hub_->partitioned.count(options_.selfNode) != 0 || hub_->partitioned.count(node) != 0) {
      return Status::ok();
    }
    Event e;
    e.kind = Event::Kind::Message;
    e.node = options_.selfNode;
    e.secret = secret_;
    e.bytes = std::move(bytes);
    // A peer that shut down is reported by its Gone event, after everything it sent before
    // (failing it here would drop those): what is sent to it meanwhile goes nowhere.
    (void)hub_->post(peer.address, std::move(e));
    return Status::ok();
  }

  void progress() override {
    if (closed_ || inProgress_) return;
    inProgress_ = true;
    std::uint64_t count = 0;
    (void)!read(wake_.get(), &count, sizeof count);  // EAGAIN when there was no wake-up
    std::deque<Event> events;
    std::set<std::uint32_t> held;
    {
      std::lock_guard lock(hub_->mu);
      if (auto it = hub_->mailboxes.find(address_); it != hub_->mailboxes.end()) {
        events.swap(it->second.events);
      }
      held = hub_->held;
    }
    // Messages of a node no longer held first, in the order they came.
    std::erase_if(heldBack_, [&](Event& e) {
      if (closed_ || held.count(e.node) != 0) return false;
      deliver(e);
      return true;
    });
    for (Event& e : events) {
      if (closed_) break;  // shutdown() from a callback
      handle(e, held);
    }
    // Transfers toward a node now lost fail with its loss.
    std::erase_if(stalled_, [this](Completion& c) {
      auto p = peers_.find(c.node);
      if (p == peers_.end() || !p->second.failed) return false;
      completions_.push_back({c.node, std::move(c.done), p->second.why});
      return true;
    });
    for (Completion& c : std::exchange(completions_, {})) {
      if (closed_) break;
      if (c.done) c.done(c.status);
    }
    for (auto& [node, peer] : peers_) {
      if (closed_) break;
      if (!peer.failed || peer.reported) continue;
      peer.reported = true;
      if (callbacks_.onPeerLost) callbacks_.onPeerLost(node, peer.why);
    }
    inProgress_ = false;
  }

  Result<RegisteredRegion> registerRegion(void* base, std::size_t length) override {
    if (closed_) return Status(StatusCode::PeerLost, "the fake transport is shut down");
    std::lock_guard lock(hub_->mu);
    RegisteredRegion r;
    r.id = hub_->nextRegion++;
    r.key = "fakemem:" + std::to_string(address_) + ":" + std::to_string(r.id);
    hub_->regions[r.key] = FakeHub::Region{address_, static_cast<char*>(base), length};
    regionKeys_[r.id] = r.key;
    return r;
  }

  // The fake's transfers are over when rma() returns: nothing of a peer can still touch it.
  void deregisterRegion(std::uint64_t id, std::shared_ptr<void> /*mapping*/) override {
    auto it = regionKeys_.find(id);
    if (it == regionKeys_.end()) return;
    std::lock_guard lock(hub_->mu);
    hub_->regions.erase(it->second);
    regionKeys_.erase(it);
  }

  // The bytes move at once (the peer is in this process); `done` runs in the next progress(),
  // or, toward a partitioned node, only once that node is declared lost.
  Status rma(std::uint32_t node, RmaKind kind, void* local, std::size_t length,
             std::uint64_t remote, std::string_view key,
             std::function<void(Status)> done) override {
    auto p = usablePeer(node);
    if (!p.has_value()) return p.error();
    const Peer& peer = **p;
    std::lock_guard lock(hub_->mu);
    auto r = hub_->regions.find(key);
    if (r == hub_->regions.end() || r->second.address != peer.address) {
      return Status(StatusCode::InvalidArgument, "not a key of node " + std::to_string(node));
    }
    const FakeHub::Region& region = r->second;
    const auto base = reinterpret_cast<std::uintptr_t>(region.base);
    if (remote < base || length > region.length || remote - base > region.length - length) {
      // UCX would fault at the peer or fail the operation; the fake says so plainly.
      completions_.push_back({node, std::move(done),
                              Status(StatusCode::InvalidArgument, "outside the peer's region")});
      FakeHub::wake(wake_.get());
      return Status::ok();
    }
    if (hub_->partitioned.count(node) != 0 || hub_->partitioned.count(options_.selfNode) != 0) {
      stalled_.push_back({node, std::move(done), Status()});
      return Status::ok();
    }
    if (hub_->killed.count(node) != 0) {
      completions_.push_back({node, std::move(done), Status(StatusCode::NodeLost, "node " +
                                                                 std::to_string(node) + " was killed")});
    } else {
      char* there = reinterpret_cast<char*>(remote);
      if (length > 0) {
        if (kind == RmaKind::Put) {
          std::memmove(there, local, length);
        } else {
          std::memmove(local, there, length);
        }
      }
      completions_.push_back({node, std::move(done), Status()});
    }
    FakeHub::wake(wake_.get());
    return Status::ok();
  }

  void shutdown(std::int64_t) override {
    if (closed_) return;
    closed_ = true;
    completions_.clear();
    stalled_.clear();
    regionKeys_.clear();
    // Messages already posted are in their receivers' mailboxes: nothing is left to send.
    std::lock_guard lock(hub_->mu);
    std::erase_if(hub_->regions, [this](const auto& r) { return r.second.address == address_; });
    hub_->mailboxes.erase(address_);
    for (auto& [id, box] : hub_->mailboxes) {
      Event e;
      e.kind = Event::Kind::Gone;
      e.address = address_;
      (void)hub_->post(id, std::move(e));
    }
  }

 private:
  struct Peer {
    std::uint64_t address = 0;
    bool failed = false;
    bool reported = false;
    Status why;
  };

  // The peer `node`, if this transport may send to it now.
  Result<Peer*> usablePeer(std::uint32_t node) {
    if (closed_) return Status(StatusCode::PeerLost, "the fake transport is shut down");
    if (!secretSet_) return Status(StatusCode::PermissionDenied, "no job secret yet");
    auto it = peers_.find(node);
    if (it == peers_.end()) {
      return Status(StatusCode::NotFound, "node " + std::to_string(node) + " is not a known peer");
    }
    if (it->second.failed) return Status(StatusCode::NodeLost, std::string(it->second.why.message()));
    return &it->second;
  }

  // Reported by the next progress(), which the eventfd asks for.
  void markFailed(Peer& peer, std::uint32_t node, const char* what) {
    if (peer.failed) return;
    peer.failed = true;
    peer.why = Status(StatusCode::NodeLost, "node " + std::to_string(node) + " " + what);
    FakeHub::wake(wake_.get());
  }

  void handle(Event& e, const std::set<std::uint32_t>& held) {
    switch (e.kind) {
      case Event::Kind::Gone:
        for (auto& [node, peer] : peers_) {
          if (peer.address == e.address) markFailed(peer, node, "shut down its transport");
        }
        return;
      case Event::Kind::Killed:
        if (auto it = peers_.find(e.node); it != peers_.end()) {
          markFailed(it->second, e.node, "was killed (fake transport)");
        }
        return;
      case Event::Kind::Message:
        break;
    }
    if (e.bytes.size() > options_.maxMessageBytes) {
      return dropped(e.node, "larger than maxMessageBytes");
    }
    if (!secretSet_) return dropped(e.node, "this node has no job secret yet");
    if (!sameSecret(e.secret, secret_)) return dropped(e.node, "wrong job secret");
    auto it = peers_.find(e.node);
    if (it == peers_.end()) return dropped(e.node, "unknown sender node");
    if (it->second.failed) return;
    if (callbacks_.onHeard) callbacks_.onHeard(e.node);
    const bool behind = std::any_of(heldBack_.begin(), heldBack_.end(),
                                    [&](const Event& h) { return h.node == e.node; });
    if (held.count(e.node) != 0 || behind) {
      heldBack_.push_back(std::move(e));
      return;
    }
    deliver(e);
  }

  void deliver(const Event& e) {
    auto it = peers_.find(e.node);
    if (it == peers_.end() || it->second.failed) return;
    if (callbacks_.onMessage) callbacks_.onMessage(e.node, e.bytes);
  }

  void dropped(std::uint32_t node, const char* why) {
    if (!dropLog_.admit(nowNs(), kLog, options_.selfNode)) return;
    DRAGON_LOG(Warn, kLog, "node %u dropped a message that claims to come from node %u: %s",
               options_.selfNode, node, why);
  }

  struct Completion {
    std::uint32_t node = 0;
    std::function<void(Status)> done;
    Status status;
  };

  const std::shared_ptr<FakeHub> hub_;
  TransportOptions options_;
  std::vector<Completion> completions_;  // run by the next progress()
  std::vector<Completion> stalled_;      // toward a partitioned node: until it is lost
  std::vector<Event> heldBack_;          // heard from a held node, not yet handed up
  std::map<std::uint64_t, std::string> regionKeys_;
  UniqueFd wake_;
  std::uint64_t address_ = 0;
  TransportCallbacks callbacks_;
  std::string secret_;
  bool secretSet_ = false;
  bool inProgress_ = false;
  bool closed_ = false;
  std::map<std::uint32_t, Peer> peers_;
  DropLog dropLog_;
};

}  // namespace

std::shared_ptr<FakeHub> makeFakeHub() { return std::make_shared<FakeHub>(); }

std::unique_ptr<Transport> makeFakeTransport(const std::shared_ptr<FakeHub>& hub,
                                             const TransportOptions& options) {
  UniqueFd wake(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake) {
    // Out of fds in a unit test: nothing sensible to return but a loud failure.
    DRAGON_LOG(Error, kLog, "eventfd for the fake transport: %s", std::strerror(errno));
    return nullptr;
  }
  auto t = std::make_unique<FakeTransport>(hub, options, std::move(wake));
  if (!options.secret.empty()) t->setSecret(options.secret);
  return t;
}

void fakePartitionNode(const std::shared_ptr<FakeHub>& hub, std::uint32_t node) {
  std::lock_guard lock(hub->mu);
  hub->partitioned.insert(node);
}

void fakeHoldNode(const std::shared_ptr<FakeHub>& hub, std::uint32_t node, bool held) {
  std::lock_guard lock(hub->mu);
  if (held) {
    hub->held.insert(node);
    return;
  }
  hub->held.erase(node);
  for (auto& [id, box] : hub->mailboxes) FakeHub::wake(box.wakeFd);
}

void fakeKillNode(const std::shared_ptr<FakeHub>& hub, std::uint32_t node) {
  std::lock_guard lock(hub->mu);
  if (!hub->killed.insert(node).second) return;
  for (auto& [id, box] : hub->mailboxes) {
    Event e;
    e.kind = Event::Kind::Killed;
    e.node = node;
    (void)hub->post(id, std::move(e));
  }
}

}  // namespace dragon::transport
