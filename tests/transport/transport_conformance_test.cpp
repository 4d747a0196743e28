// SPDX-License-Identifier: MIT
// The Transport conformance suite (daemon/transport.hpp), one set of cases run against every
// implementation: the in-process fake, and the UCX module (loaded with dlopen, as dragond does)
// over tcp and over shared memory. Transports live in this process and are pumped by a bounded
// poll loop that calls progress() only when the event fd is readable or needsProgress() says
// so, which checks the wake-up contract too. A killed peer is a child process (this binary,
// re-run as TransportPeerProcess.DISABLED_EchoesUntilKilled) for UCX, fakeKillNode for the fake.
#include "daemon/transport.hpp"

#include <gtest/gtest.h>

#ifdef DRAGON_UCX_MODULE
#include "ucx_transport/wire.hpp"

#include <ucp/api/ucp.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <functional>
#include <memory>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

extern char** environ;

namespace dragon::transport {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const std::string kSecret = "0123456789abcdef0123456789ABCDEF";
constexpr std::uint64_t kLimit = std::uint64_t{64} << 20;

#ifdef DRAGON_UCX_MODULE
constexpr const char* kUcxModulePath = DRAGON_UCX_MODULE;
#else
constexpr const char* kUcxModulePath = "(not built)";
#endif

struct Impl {
  const char* name;
  const char* tls;  // UCX_TLS, or null for the fake
};

const TransportModule* ucxModule() {
#ifdef DRAGON_UCX_MODULE
  static const TransportModule* module = []() -> const TransportModule* {
    void* handle = dlopen(DRAGON_UCX_MODULE, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) return nullptr;
    void* sym = dlsym(handle, kTransportModuleSymbol);
    if (sym == nullptr) return nullptr;
    using Info = const TransportModule* (*)();
    Info info = nullptr;
    std::memcpy(&info, &sym, sizeof info);
    return info();
  }();
  return module;
#else
  return nullptr;
#endif
}

// The transports' cluster.rma: Auto, or what DRAGON_TEST_RMA_PATH (messages, native) says, to
// run the suite (and the child peer) on one path throughout.
RmaPath rmaPathForTests() {
  const char* v = std::getenv("DRAGON_TEST_RMA_PATH");
  if (v != nullptr && std::string_view(v) == "messages") return RmaPath::Messages;
  if (v != nullptr && std::string_view(v) == "native") return RmaPath::Native;
  return RmaPath::Auto;
}

std::string pattern(std::size_t n, std::uint64_t seed) {
  std::string s(n, '\0');
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (char& c : s) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  return s;
}

std::uint64_t checksum(std::string_view s) {
  std::uint64_t h = 14695981039346656037ull;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

std::string toHex(std::string_view s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (char c : s) {
    out.push_back(kDigits[static_cast<unsigned char>(c) >> 4]);
    out.push_back(kDigits[static_cast<unsigned char>(c) & 15]);
  }
  return out;
}

std::string fromHex(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i + 1 < s.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

// One transport and what its callbacks saw.
struct Node {
  std::uint32_t id = 0;
  std::unique_ptr<Transport> t;
  std::vector<std::pair<std::uint32_t, std::string>> got;
  std::vector<std::pair<std::uint32_t, Status>> lost;
  std::function<void(std::uint32_t, std::string_view)> onMessage;  // after `got` is updated
  std::vector<std::pair<std::uint32_t, std::size_t>> heard;  // (node, got.size() then)
};

void watch(Node& n) {
  TransportCallbacks cb;
  cb.onMessage = [&n](std::uint32_t from, std::string_view bytes) {
    n.got.emplace_back(from, std::string(bytes));
    if (n.onMessage) n.onMessage(from, bytes);
  };
  cb.onPeerLost = [&n](std::uint32_t node, const Status& why) { n.lost.emplace_back(node, why); };
  cb.onHeard = [&n](std::uint32_t node) { n.heard.emplace_back(node, n.got.size()); };
  n.t->setCallbacks(std::move(cb));
}

// Pumps `nodes` (and `extra`, when given) until `done` or `limit`. `everyRound` also calls
// progress() on every poll timeout, as dragond's heartbeats do (UCX's keepalive runs there).
bool pump(const std::vector<Node*>& nodes, const std::function<bool()>& done,
          Clock::duration limit, bool everyRound = false,
          const std::function<void()>& extra = nullptr) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    if (done()) return true;
    const auto now = Clock::now();
    if (now >= deadline) return false;
    std::vector<pollfd> fds;
    std::vector<Transport*> live;
    bool busy = extra != nullptr;
    for (Node* n : nodes) {
      if (n->t == nullptr) continue;
      fds.push_back({n->t->eventFd(), POLLIN, 0});
      live.push_back(n->t.get());
      busy = busy || n->t->needsProgress();
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    const int waitMs = busy ? 0 : static_cast<int>(std::clamp<std::int64_t>(left.count(), 1, 20));
    if (poll(fds.data(), fds.size(), waitMs) < 0 && errno != EINTR) return false;
    for (std::size_t i = 0; i < live.size(); ++i) {
      if (everyRound || (fds[i].revents & POLLIN) != 0 || live[i]->needsProgress()) {
        live[i]->progress();
      }
    }
    if (extra) extra();
  }
}

class TransportConformance : public ::testing::TestWithParam<Impl> {
 protected:
  void SetUp() override {
    if (ucx()) {
      ASSERT_NE(ucxModule(), nullptr) << "cannot load " << kUcxModulePath;
      setenv("UCX_TLS", GetParam().tls, 1);
      // UCX 1.13's shared memory offers peer failure detection (UCP_ERR_HANDLING_MODE_PEER)
      // only when asked; without it UCX_TLS=sm has no transport for the module's endpoints.
      if (std::string_view(GetParam().tls) == "sm") {
        setenv("UCX_POSIX_ERROR_HANDLING", "y", 1);
      } else {
        unsetenv("UCX_POSIX_ERROR_HANDLING");
      }
      // A shared-memory peer's death is seen by UCX's keepalive (default 20 s).
      setenv("UCX_KEEPALIVE_INTERVAL", "100ms", 1);
    } else {
      hub_ = makeFakeHub();
    }
  }

  bool ucx() const { return GetParam().tls != nullptr; }

  std::unique_ptr<Transport> create(std::uint32_t id, const std::string& secret,
                                    std::uint64_t limit, RmaPath rma) {
    TransportOptions o;
    o.selfNode = id;
    o.secret = secret;
    o.maxMessageBytes = limit;
    o.rma = rma;
    if (!ucx()) return makeFakeTransport(hub_, o);
    Status error;
    auto t = ucxModule()->create(o, error);
    if (t == nullptr) ADD_FAILURE() << "creating a UCX transport: " << error.toString();
    return t;
  }

  Node* make(std::uint32_t id, const std::string& secret = kSecret, std::uint64_t limit = kLimit,
             RmaPath rma = rmaPathForTests()) {
    auto t = create(id, secret, limit, rma);
    if (t == nullptr) return nullptr;
    auto n = std::make_unique<Node>();
    n->id = id;
    n->t = std::move(t);
    watch(*n);
    nodes_.push_back(std::move(n));
    return nodes_.back().get();
  }

  static void link(Node& from, const Node& to) {
    const Status st = from.t->addPeer(to.id, to.t->address());
    EXPECT_TRUE(st.isOk()) << st.toString();
  }
  static void connect(Node& a, Node& b) {
    link(a, b);
    link(b, a);
  }

  bool pumpUntil(const std::function<bool()>& done, Clock::duration limit = 30s,
                 bool everyRound = false, const std::function<void()>& extra = nullptr) {
    std::vector<Node*> all;
    for (auto& n : nodes_) all.push_back(n.get());
    return pump(all, done, limit, everyRound, extra);
  }
  // For what must not happen: pumps for a while.
  void pumpFor(Clock::duration d) { (void)pumpUntil([] { return false; }, d); }

  // a -> b -> a once, so that both directions are wired up.
  void roundTrip(Node& a, Node& b) {
    b.onMessage = [&b](std::uint32_t from, std::string_view bytes) {
      (void)b.t->send(from, "re:" + std::string(bytes));
    };
    const std::size_t before = a.got.size();
    ASSERT_TRUE(a.t->send(b.id, "hello").isOk());
    ASSERT_TRUE(pumpUntil([&] { return a.got.size() > before; }));
    EXPECT_EQ(a.got.back(), std::make_pair(b.id, std::string("re:hello")));
    b.onMessage = nullptr;
  }

  std::shared_ptr<FakeHub> hub_;
  std::vector<std::unique_ptr<Node>> nodes_;
};

TEST_P(TransportConformance, AddressesAreExchangedAndAMessageMakesARoundTrip) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  EXPECT_EQ(a->t->name(), ucx() ? "ucx" : "fake");
  EXPECT_FALSE(a->t->address().empty());
  EXPECT_NE(a->t->address(), b->t->address());
  EXPECT_EQ(a->t->address(), a->t->address());
  EXPECT_GE(a->t->eventFd(), 0);
  connect(*a, *b);
  // The reply is sent from inside the receiver's callback.
  b->onMessage = [b](std::uint32_t from, std::string_view bytes) {
    const Status st = b->t->send(from, "pong:" + std::string(bytes));
    EXPECT_TRUE(st.isOk()) << st.toString();
  };
  ASSERT_TRUE(a->t->send(1, "ping").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !a->got.empty(); }));
  EXPECT_EQ(b->got, (std::vector<std::pair<std::uint32_t, std::string>>{{0, "ping"}}));
  EXPECT_EQ(a->got, (std::vector<std::pair<std::uint32_t, std::string>>{{1, "pong:ping"}}));
  EXPECT_TRUE(a->lost.empty());
  EXPECT_TRUE(b->lost.empty());
}

TEST_P(TransportConformance, AddPeerRefusesAKnownNodeAndAGarbageAddress) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  EXPECT_EQ(a->t->addPeer(1, b->t->address()).code(), StatusCode::AlreadyExists);
  EXPECT_FALSE(a->t->addPeer(2, "").isOk());
  EXPECT_FALSE(a->t->addPeer(3, "not an address").isOk());
  const std::string addr = b->t->address();
  EXPECT_FALSE(a->t->addPeer(4, addr.substr(0, addr.size() / 2)).isOk());
  std::string flipped = addr;
  flipped.back() = static_cast<char>(flipped.back() ^ 0x5a);
  if (ucx()) {
    EXPECT_FALSE(a->t->addPeer(5, flipped).isOk());
  }
  // Still usable.
  ASSERT_TRUE(a->t->send(1, "x").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !b->got.empty(); }));
}

TEST_P(TransportConformance, SendIsRefusedUntilTheSecretIsSet) {
  Node* a = make(0, "");
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  EXPECT_EQ(a->t->send(1, "x").code(), StatusCode::PermissionDenied);
  a->t->setSecret(kSecret);
  ASSERT_TRUE(a->t->send(1, "y").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !b->got.empty(); }));
  EXPECT_EQ(b->got.front().second, "y");
}

TEST_P(TransportConformance, TenThousandSmallMessagesArriveInOrderBothWays) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  constexpr int kCount = 10'000;
  for (int i = 0; i < kCount; ++i) {
    const std::string m = std::to_string(i) + std::string(static_cast<std::size_t>(i % 61), 'x');
    ASSERT_TRUE(a->t->send(1, m).isOk()) << i;
    ASSERT_TRUE(b->t->send(0, m).isOk()) << i;
  }
  ASSERT_TRUE(pumpUntil([&] { return a->got.size() >= kCount && b->got.size() >= kCount; }))
      << a->got.size() << " and " << b->got.size() << " arrived";
  ASSERT_EQ(a->got.size(), static_cast<std::size_t>(kCount));
  ASSERT_EQ(b->got.size(), static_cast<std::size_t>(kCount));
  for (int i = 0; i < kCount; ++i) {
    const std::string m = std::to_string(i) + std::string(static_cast<std::size_t>(i % 61), 'x');
    ASSERT_EQ(b->got[static_cast<std::size_t>(i)], std::make_pair(0u, m)) << i;
    ASSERT_EQ(a->got[static_cast<std::size_t>(i)], std::make_pair(1u, m)) << i;
  }
}

TEST_P(TransportConformance, MessagesOfEverySizeArriveWholeIntactAndInOrder) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  // Large (rendezvous) and small (eager) messages interleaved: order must survive both.
  const std::vector<std::size_t> sizes = {16u << 20, 0, 1, 8u << 10, 1u << 20, 0, 1,
                                          (1u << 20) + 3, 8u << 10, 16u << 20, 1};
  std::vector<std::uint64_t> sums;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::string m = pattern(sizes[i], i);
    sums.push_back(checksum(m));
    ASSERT_TRUE(a->t->send(1, m).isOk()) << "size " << sizes[i];
  }
  ASSERT_TRUE(pumpUntil([&] { return b->got.size() >= sizes.size(); }, 60s))
      << b->got.size() << " arrived";
  ASSERT_EQ(b->got.size(), sizes.size());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(b->got[i].first, 0u);
    EXPECT_EQ(b->got[i].second.size(), sizes[i]) << "message " << i;
    EXPECT_EQ(checksum(b->got[i].second), sums[i]) << "message " << i;
    EXPECT_TRUE(b->got[i].second == pattern(sizes[i], i)) << "message " << i;
  }
}

TEST_P(TransportConformance, APeerIsHeardFromBeforeItsLargeMessageIsHandedUp) {
  // dragond counts a node alive when anything of it arrives: a heartbeat sent after a large
  // message is handed up only after it, which on a slow link comes after node_timeout.
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  ASSERT_TRUE(a->t->send(1, pattern(16u << 20, 1)).isOk());
  ASSERT_TRUE(a->t->send(1, "beat").isOk());
  ASSERT_TRUE(pumpUntil([&] { return b->got.size() == 2; }, 60s)) << b->got.size();
  EXPECT_EQ(b->got[1].second, "beat");
  ASSERT_FALSE(b->heard.empty());
  EXPECT_EQ(b->heard.front(), std::make_pair(0u, std::size_t{0}));
  for (const auto& [node, _] : b->heard) EXPECT_EQ(node, 0u);
  EXPECT_TRUE(a->heard.empty());  // b sent nothing
}

TEST_P(TransportConformance, SendToAnUnknownNodeIsNotFound) {
  Node* a = make(0);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->t->send(7, "x").code(), StatusCode::NotFound);
}

TEST_P(TransportConformance, AMessageOverTheLimitIsRefusedAndOneAtTheLimitArrives) {
  constexpr std::uint64_t kSmall = 1u << 20;
  Node* a = make(0, kSecret, kSmall);
  Node* b = make(1, kSecret, kSmall);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  EXPECT_EQ(a->t->send(1, pattern(kSmall + 1, 1)).code(), StatusCode::MessageTooLarge);
  ASSERT_TRUE(a->t->send(1, pattern(kSmall, 2)).isOk());
  ASSERT_TRUE(pumpUntil([&] { return !b->got.empty(); }));
  EXPECT_TRUE(b->got.front().second == pattern(kSmall, 2));
}

TEST_P(TransportConformance, AMessageOverTheReceiversLimitIsDroppedAndLaterOnesArrive) {
  Node* a = make(0, kSecret, 1u << 20);
  Node* b = make(1, kSecret, 64u << 10);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  ASSERT_TRUE(a->t->send(1, "before").isOk());
  ASSERT_TRUE(a->t->send(1, pattern(100u << 10, 3)).isOk());  // eager or rendezvous, dropped
  ASSERT_TRUE(a->t->send(1, pattern(900u << 10, 4)).isOk());
  ASSERT_TRUE(a->t->send(1, "after").isOk());
  ASSERT_TRUE(pumpUntil([&] { return b->got.size() >= 2; }));
  EXPECT_EQ(b->got, (std::vector<std::pair<std::uint32_t, std::string>>{{0, "before"},
                                                                          {0, "after"}}));
  EXPECT_TRUE(b->lost.empty());
}

TEST_P(TransportConformance, AMessageWithTheWrongSecretIsDropped) {
  Node* a = make(0);
  Node* b = make(1);
  Node* c = make(2, "another job's secret, same size!");
  Node* impostor = make(1, "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ");  // claims to be b
  ASSERT_TRUE(a != nullptr && b != nullptr && c != nullptr && impostor != nullptr);
  connect(*a, *b);
  link(*a, *c);
  link(*c, *a);
  link(*impostor, *a);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(c->t->send(0, "from c").isOk());
    ASSERT_TRUE(impostor->t->send(0, "from the impostor").isOk());
  }
  ASSERT_TRUE(pumpUntil([&] { return !c->t->needsProgress() && !impostor->t->needsProgress(); }));
  ASSERT_TRUE(b->t->send(0, "from b").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !a->got.empty(); }));
  pumpFor(300ms);
  EXPECT_EQ(a->got, (std::vector<std::pair<std::uint32_t, std::string>>{{1, "from b"}}));
  EXPECT_TRUE(a->lost.empty());
  // The right secret still works both ways.
  ASSERT_TRUE(a->t->send(1, "to b").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !b->got.empty(); }));
  EXPECT_EQ(b->got.front(), std::make_pair(0u, std::string("to b")));
}

TEST_P(TransportConformance, MessagesBeforeTheReceiverIsReadyAreDroppedWithoutStallingLaterOnes) {
  Node* a = make(0);
  Node* b = make(1, "");  // no secret yet, no peers
  ASSERT_TRUE(a != nullptr && b != nullptr);
  link(*a, *b);
  ASSERT_TRUE(a->t->send(1, "early 1").isOk());
  ASSERT_TRUE(a->t->send(1, pattern(1u << 20, 5)).isOk());
  ASSERT_TRUE(a->t->send(1, "early 2").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !a->t->needsProgress(); }));
  pumpFor(200ms);
  EXPECT_TRUE(b->got.empty());
  b->t->setSecret(kSecret);  // knows the secret, but not node 0 yet
  ASSERT_TRUE(a->t->send(1, "early 3").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !a->t->needsProgress(); }));
  pumpFor(200ms);
  EXPECT_TRUE(b->got.empty());
  link(*b, *a);
  ASSERT_TRUE(a->t->send(1, "late").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !b->got.empty(); }));
  pumpFor(100ms);
  EXPECT_EQ(b->got, (std::vector<std::pair<std::uint32_t, std::string>>{{0, "late"}}));
}

TEST_P(TransportConformance, ADestroyedPeerIsLostOnceAndSendThenFailsWithNodeLost) {
  Node* a = make(0);
  Node* b = make(1);
  Node* c = make(2);
  ASSERT_TRUE(a != nullptr && b != nullptr && c != nullptr);
  connect(*a, *b);
  connect(*a, *c);
  roundTrip(*a, *b);
  ASSERT_TRUE(b->t->send(0, "last words").isOk());
  b->t.reset();
  ASSERT_TRUE(pumpUntil([&] { return !a->lost.empty(); }));
  EXPECT_EQ(a->got.back(), std::make_pair(1u, std::string("last words")));  // before the loss
  EXPECT_EQ(a->lost.front().first, 1u);
  EXPECT_EQ(a->lost.front().second.code(), StatusCode::NodeLost)
      << a->lost.front().second.toString();
  EXPECT_EQ(a->t->send(1, "x").code(), StatusCode::NodeLost);
  // The others go on.
  ASSERT_TRUE(a->t->send(2, "still here").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !c->got.empty(); }));
  EXPECT_EQ(c->got.front(), std::make_pair(0u, std::string("still here")));
  pumpFor(200ms);
  EXPECT_EQ(a->lost.size(), 1u);
  EXPECT_TRUE(c->lost.empty());
}

// Registered memory for the RMA cases: a page-aligned buffer and its registration.
struct RmaBuffer {
  explicit RmaBuffer(std::size_t n) : bytes(n) {}
  std::vector<char> bytes;
  RegisteredRegion region;
  std::uint64_t at(std::size_t offset) const {
    return reinterpret_cast<std::uint64_t>(bytes.data()) + offset;
  }
};

TEST_P(TransportConformance, RmaPutAndGetMoveBytesOfEverySizeBothWays) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  roundTrip(*a, *b);
  constexpr std::size_t kSize = std::size_t{9} << 20;
  RmaBuffer mine(kSize);
  RmaBuffer theirs(kSize);
  auto ra = a->t->registerRegion(mine.bytes.data(), kSize);
  auto rb = b->t->registerRegion(theirs.bytes.data(), kSize);
  ASSERT_TRUE(ra.has_value()) << ra.error().toString();
  ASSERT_TRUE(rb.has_value()) << rb.error().toString();
  EXPECT_FALSE(rb->key.empty());
  std::uint64_t seed = 1;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{8}, std::size_t{4096},
                        std::size_t{65537}, (std::size_t{1} << 20) + 3, std::size_t{8} << 20}) {
    SCOPED_TRACE("size " + std::to_string(n));
    const std::size_t off = n == 0 ? 0 : (seed * 4099) % (kSize - n);
    // Put: a's bytes land in b's region, visible there when done runs.
    const std::string out = pattern(n, ++seed);
    std::memcpy(mine.bytes.data(), out.data(), n);
    int done = 0;
    Status result;
    auto finish = [&](Status st) {
      ++done;
      result = st;
    };
    ASSERT_TRUE(a->t->rma(1, RmaKind::Put, mine.bytes.data(), n, theirs.at(off), rb->key, finish).isOk());
    ASSERT_TRUE(pumpUntil([&] { return done > 0; }));
    ASSERT_TRUE(result.isOk()) << result.toString();
    EXPECT_EQ(std::memcmp(theirs.bytes.data() + off, out.data(), n), 0);
    // Get: b's bytes land in a's buffer.
    const std::string in = pattern(n, ++seed);
    std::memcpy(theirs.bytes.data() + off, in.data(), n);
    ASSERT_TRUE(a->t->rma(1, RmaKind::Get, mine.bytes.data() + 7, n, theirs.at(off), rb->key, finish).isOk());
    ASSERT_TRUE(pumpUntil([&] { return done > 1; }));
    ASSERT_TRUE(result.isOk()) << result.toString();
    EXPECT_EQ(std::memcmp(mine.bytes.data() + 7, in.data(), n), 0);
    EXPECT_EQ(done, 2);  // once each
  }
  // And the other way, into a's region.
  const std::string back = pattern(5000, 99);
  std::memcpy(theirs.bytes.data(), back.data(), back.size());
  int done = 0;
  Status result;
  ASSERT_TRUE(b->t->rma(0, RmaKind::Put, theirs.bytes.data(), back.size(), mine.at(100), ra->key,
                        [&](Status st) { ++done; result = st; }).isOk());
  ASSERT_TRUE(pumpUntil([&] { return done > 0; }));
  ASSERT_TRUE(result.isOk()) << result.toString();
  EXPECT_EQ(std::memcmp(mine.bytes.data() + 100, back.data(), back.size()), 0);
  a->t->deregisterRegion(ra->id, nullptr);
  b->t->deregisterRegion(rb->id, nullptr);
}

TEST_P(TransportConformance, ManyRmaOperationsInFlightAllComplete) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  roundTrip(*a, *b);
  constexpr std::size_t kPiece = 64 << 10;
  constexpr int kPieces = 64;
  RmaBuffer mine(kPiece * kPieces);
  RmaBuffer theirs(kPiece * kPieces);
  const std::string out = pattern(mine.bytes.size(), 5);
  std::memcpy(mine.bytes.data(), out.data(), out.size());
  auto rb = b->t->registerRegion(theirs.bytes.data(), theirs.bytes.size());
  ASSERT_TRUE(rb.has_value()) << rb.error().toString();
  int done = 0;
  int failed = 0;
  for (int i = 0; i < kPieces; ++i) {
    const std::size_t off = static_cast<std::size_t>(i) * kPiece;
    ASSERT_TRUE(a->t->rma(1, RmaKind::Put, mine.bytes.data() + off, kPiece, theirs.at(off), rb->key,
                          [&](Status st) {
                            ++done;
                            if (!st.isOk()) ++failed;
                          }).isOk());
  }
  ASSERT_TRUE(pumpUntil([&] { return done == kPieces; }));
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(checksum(std::string_view(theirs.bytes.data(), theirs.bytes.size())), checksum(out));
}

TEST_P(TransportConformance, RmaToALostPeerFailsWithNodeLost) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  roundTrip(*a, *b);
  RmaBuffer theirs(4096);
  auto rb = b->t->registerRegion(theirs.bytes.data(), theirs.bytes.size());
  ASSERT_TRUE(rb.has_value()) << rb.error().toString();
  const std::string key = rb->key;
  RmaBuffer mine(4096);
  EXPECT_EQ(a->t->rma(7, RmaKind::Get, mine.bytes.data(), 8, theirs.at(0), key, [](Status) {}).code(),
            StatusCode::NotFound);
  b->t.reset();  // its memory stays allocated (theirs), its transport goes
  ASSERT_TRUE(pumpUntil([&] { return !a->lost.empty(); }, 30s, true));
  EXPECT_EQ(a->t->rma(1, RmaKind::Get, mine.bytes.data(), 8, theirs.at(0), key, [](Status) {}).code(),
            StatusCode::NodeLost);
}

TEST_P(TransportConformance, RmaIsRefusedUntilTheSecretIsSet) {
  Node* a = make(0, "");
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  RmaBuffer theirs(4096);
  auto rb = b->t->registerRegion(theirs.bytes.data(), theirs.bytes.size());
  ASSERT_TRUE(rb.has_value()) << rb.error().toString();
  RmaBuffer mine(4096);
  EXPECT_EQ(a->t->rma(1, RmaKind::Get, mine.bytes.data(), 8, theirs.at(0), rb->key, [](Status) {}).code(),
            StatusCode::PermissionDenied);
}

// This binary, re-run in a child process by AKilledPeerIsLostOnce: a UCX transport for node 1
// that echoes what it gets, until it is killed or its parent goes.
TEST(TransportPeerProcess, DISABLED_EchoesUntilKilled) {
  const char* in = std::getenv("DRAGON_TEST_PEER_IN");
  const char* out = std::getenv("DRAGON_TEST_PEER_OUT");
  if (in == nullptr || out == nullptr || ucxModule() == nullptr) GTEST_SKIP();
  const int inFd = std::atoi(in);
  const int outFd = std::atoi(out);
  // Before the transport, which its destructor still progresses: memory its transfers use and
  // what their callbacks touch.
  std::vector<char> local(std::size_t{1} << 20, 'c');
  std::vector<char> region(std::size_t{4} << 20, 'r');
  int inFlight = 0;
  bool said = false;
  TransportOptions o;
  o.selfNode = 1;
  o.secret = kSecret;
  o.rma = rmaPathForTests();
  Status error;
  std::unique_ptr<Transport> t = ucxModule()->create(o, error);
  ASSERT_NE(t, nullptr) << error.toString();
  const std::string line = toHex(t->address()) + "\n";
  ASSERT_EQ(write(outFd, line.data(), line.size()), static_cast<ssize_t>(line.size()));
  std::string parent;
  char c = 0;
  while (read(inFd, &c, 1) == 1 && c != '\n') parent.push_back(c);
  ASSERT_TRUE(t->addPeer(0, fromHex(parent)).isOk());
  TransportCallbacks cb;
  cb.onMessage = [&t](std::uint32_t from, std::string_view bytes) { (void)t->send(from, std::string(bytes)); };
  t->setCallbacks(std::move(cb));
  // With DRAGON_TEST_PEER_RMA: the parent's region ("<hex key> <address> <bytes>" on a second
  // line), written and read by transfers of every size, many in flight, without end; once one
  // has succeeded, "go <hex key> <address> <bytes>" of a region of this process for the parent.
  std::string key;
  std::uint64_t base = 0;
  std::uint64_t bytes = 0;
  if (std::getenv("DRAGON_TEST_PEER_RMA") != nullptr) {
    std::string theirs;
    while (read(inFd, &c, 1) == 1 && c != '\n') theirs.push_back(c);
    const std::size_t sp1 = theirs.find(' ');
    const std::size_t sp2 = theirs.find(' ', sp1 + 1);
    ASSERT_NE(sp2, std::string::npos) << theirs;
    key = fromHex(theirs.substr(0, sp1));
    base = std::stoull(theirs.substr(sp1 + 1, sp2 - sp1 - 1));
    bytes = std::stoull(theirs.substr(sp2 + 1));
  }
  std::string go = "go";
  if (!key.empty()) {
    auto mine = t->registerRegion(region.data(), region.size());
    ASSERT_TRUE(mine.has_value()) << mine.error().toString();
    go += " " + toHex(mine->key) + " " + std::to_string(reinterpret_cast<std::uint64_t>(region.data())) +
          " " + std::to_string(region.size());
  }
  go += "\n";
  constexpr std::size_t kSizes[] = {100, 70000, std::size_t{1} << 20};
  for (std::uint64_t n = 0;; ++n) {
    while (!key.empty() && inFlight < 16) {
      const std::size_t size = std::min<std::uint64_t>(kSizes[n % 3], bytes);
      const RmaKind kind = n % 2 == 0 ? RmaKind::Put : RmaKind::Get;
      const Status st = t->rma(0, kind, local.data(), size, base + (n * 4096) % (bytes - size + 1),
                               key, [&](Status done) {
                                 --inFlight;
                                 if (!said && done.isOk()) {
                                   said = write(outFd, go.data(), go.size()) ==
                                          static_cast<ssize_t>(go.size());
                                 }
                               });
      if (!st.isOk()) break;
      ++inFlight;
      ++n;
    }
    pollfd fds[2] = {{t->eventFd(), POLLIN, 0}, {inFd, POLLIN, 0}};
    (void)poll(fds, 2, t->needsProgress() ? 0 : 100);
    if (fds[1].revents != 0) {  // the parent closed its end
      t.reset();
      return;
    }
    t->progress();
  }
}

// A UCX transport for node 1 in a child process: this binary, re-run as
// TransportPeerProcess.DISABLED_EchoesUntilKilled, wired up to `parent` (as node 0) by start().
struct ChildPeer {
  ~ChildPeer() {
    killNow();
    if (toChild >= 0) close(toChild);
    if (fromChild >= 0) close(fromChild);
  }
  bool start(Transport& parent, const std::vector<std::string>& extraEnv) {
    int in[2];
    int out[2];
    if (pipe2(in, O_CLOEXEC) != 0) return false;
    if (pipe2(out, O_CLOEXEC) != 0) return false;
    toChild = in[1];
    fromChild = out[0];
    (void)fcntl(fromChild, F_SETFL, O_NONBLOCK);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 100);
    posix_spawn_file_actions_adddup2(&fa, out[1], 101);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    std::vector<std::string> env = {"DRAGON_TEST_PEER_IN=100", "DRAGON_TEST_PEER_OUT=101"};
    env.insert(env.end(), extraEnv.begin(), extraEnv.end());
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string exe = "/proc/self/exe";
    std::string filter = "--gtest_filter=TransportPeerProcess.DISABLED_EchoesUntilKilled";
    std::string disabled = "--gtest_also_run_disabled_tests";
    char* argv[] = {exe.data(), filter.data(), disabled.data(), nullptr};
    const int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    EXPECT_EQ(rc, 0) << std::strerror(rc);
    if (rc != 0) {
      pid = -1;
      return false;
    }
    std::string childAddress;
    if (!readLine(childAddress, Clock::now() + 30s) || childAddress.empty()) {
      ADD_FAILURE() << "the child peer did not come up";
      return false;
    }
    const Status st = parent.addPeer(1, fromHex(childAddress));
    EXPECT_TRUE(st.isOk()) << st.toString();
    return st.isOk() && say(toHex(parent.address()));
  }
  bool say(const std::string& line) {
    const std::string l = line + "\n";
    return write(toChild, l.data(), l.size()) == static_cast<ssize_t>(l.size());
  }
  // Reads a line from the child, within `deadline`.
  bool readLine(std::string& line, Clock::time_point deadline) {
    line.clear();
    while (Clock::now() < deadline) {
      if (!lineReady(line)) continue;
      return true;
    }
    return false;
  }
  // Adds what the child wrote (waiting at most 10 ms) to `partial`; true once it holds a line.
  bool lineReady(std::string& partial) {
    pollfd p{fromChild, POLLIN, 0};
    if (poll(&p, 1, 10) != 1) return false;
    char c = 0;
    while (read(fromChild, &c, 1) == 1) {
      if (c == '\n') return true;
      partial.push_back(c);
    }
    return false;
  }
  void killNow() {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    int status = 0;
    (void)waitpid(pid, &status, 0);
    pid = -1;
  }
  pid_t pid = -1;
  int toChild = -1;
  int fromChild = -1;
};

TEST_P(TransportConformance, AKilledPeerIsLostOnce) {
  Node* a = make(0);
  ASSERT_NE(a, nullptr);
  if (!ucx()) {
    Node* b = make(1);
    ASSERT_NE(b, nullptr);
    connect(*a, *b);
    roundTrip(*a, *b);
    fakeKillNode(hub_, 1);
    ASSERT_TRUE(pumpUntil([&] { return !a->lost.empty(); }));
    EXPECT_EQ(b->t->send(0, "from the dead").code(), StatusCode::Ok);  // it does not know
  } else {
    ChildPeer child;
    ASSERT_TRUE(child.start(*a->t, {}));
    ASSERT_TRUE(a->t->send(1, "echo?").isOk());
    ASSERT_TRUE(pumpUntil([&] { return !a->got.empty(); })) << "no echo from the child";
    EXPECT_EQ(a->got.front(), std::make_pair(1u, std::string("echo?")));
    child.killNow();
    ASSERT_TRUE(pumpUntil([&] { return !a->lost.empty(); }, 30s, /*everyRound=*/true));
  }
  EXPECT_EQ(a->lost.front().first, 1u);
  EXPECT_EQ(a->lost.front().second.code(), StatusCode::NodeLost);
  EXPECT_EQ(a->t->send(1, "x").code(), StatusCode::NodeLost);
  pumpFor(200ms);
  EXPECT_EQ(a->lost.size(), 1u);
  EXPECT_EQ(a->got.size(), 1u);  // the echo only
}

TEST_P(TransportConformance, ShutdownSendsWhatIsQueuedThenThePeerSeesTheLoss) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  roundTrip(*a, *b);
  a->got.clear();
  // b has its own owning thread while a shuts down on this one.
  std::jthread owner([&] {
    (void)pump({b}, [&] { return !b->lost.empty(); }, 30s);
  });
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(a->t->send(1, "m" + std::to_string(i)).isOk());
  ASSERT_TRUE(a->t->send(1, pattern(1u << 20, 6)).isOk());
  ASSERT_TRUE(a->t->send(1, "last").isOk());
  a->t->shutdown(10'000'000'000);
  owner.join();
  ASSERT_EQ(b->got.size(), 103u);  // "hello" from the round trip, then these
  for (std::size_t i = 0; i < 100; ++i) {
    EXPECT_EQ(b->got[1 + i].second, "m" + std::to_string(i));
  }
  EXPECT_TRUE(b->got[101].second == pattern(1u << 20, 6));
  EXPECT_EQ(b->got[102].second, "last");
  ASSERT_EQ(b->lost.size(), 1u);
  EXPECT_EQ(b->lost.front().first, 0u);
  EXPECT_EQ(b->lost.front().second.code(), StatusCode::NodeLost);
  // After shutdown: sends are refused, the event fd stays open and quiet.
  EXPECT_FALSE(a->t->send(1, "x").isOk());
  pollfd p{a->t->eventFd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 0), 0);
  EXPECT_GE(fcntl(a->t->eventFd(), F_GETFD), 0);
}

// A node that shuts down while its peer, slow to read, still sends to it: what it sent before
// arrives, and the peer sees it leave, not a failed connection. (With UCX over tcp, a send to
// a closed socket fails the endpoint, and the bytes that came before and were not read yet
// are dropped with it: a dragond's last answer at the end of a job, then a spurious lost node.)
TEST_P(TransportConformance, ShutdownLosesNothingItSentToAPeerSlowToRead) {
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  roundTrip(*a, *b);
  std::atomic<bool> closing{false};
  std::jthread owner([&] {
    const auto until = Clock::now() + 30s;
    while (!closing && Clock::now() < until) std::this_thread::yield();
    // b is busy elsewhere while a shuts down (not waiting for anything a does), then sends to
    // a before it reads what a sent.
    std::this_thread::sleep_for(200ms);
    (void)b->t->send(0, "late");
    (void)pump({b}, [&] { return !b->lost.empty(); }, 30s);
  });
  constexpr int kSent = 200;
  for (int i = 0; i < kSent; ++i) {
    ASSERT_TRUE(a->t->send(1, "m" + std::to_string(i)).isOk());
  }
  closing = true;
  a->t->shutdown(10'000'000'000);
  owner.join();
  ASSERT_EQ(b->got.size(), static_cast<std::size_t>(kSent) + 1);  // "hello", then these
  for (int i = 0; i < kSent; ++i) ASSERT_EQ(b->got[1 + i].second, "m" + std::to_string(i));
  ASSERT_EQ(b->lost.size(), 1u);
  EXPECT_EQ(b->lost.front().first, 0u);
  EXPECT_EQ(b->lost.front().second.code(), StatusCode::NodeLost);
  EXPECT_NE(b->lost.front().second.message().find("shut down"), std::string_view::npos)
      << b->lost.front().second.toString();
}

#ifdef DRAGON_UCX_MODULE
// An AM header laid out as ucx_transport/wire.hpp says, with any field wrong.
std::string wireHeader(std::uint32_t magic, std::uint16_t version, std::uint16_t kind,
                       std::uint32_t node, std::string_view secret, std::uint64_t seq,
                       std::uint64_t length) {
  std::string h;
  ucx_wire::putLe(h, magic);
  ucx_wire::putLe(h, version);
  ucx_wire::putLe(h, kind);
  ucx_wire::putLe(h, node);
  ucx_wire::putLe(h, static_cast<std::uint32_t>(secret.size()));
  ucx_wire::putLe(h, seq);
  ucx_wire::putLe(h, length);
  h.append(secret);
  return h;
}

// A bare UCP worker that sends whatever it is told to the module's AM handler.
class RawSender {
 public:
  explicit RawSender(const std::string& address) {
    ucp_config_t* config = nullptr;
    if (ucp_config_read(nullptr, nullptr, &config) != UCS_OK) return;
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_AM;
    const ucs_status_t st = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    if (st != UCS_OK) return;
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    if (ucp_worker_create(context_, &wp, &worker_) != UCS_OK) return;
    const std::string_view raw = ucx_wire::unwrapAddress(address);
    if (raw.empty()) return;
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.address = reinterpret_cast<const ucp_address_t*>(raw.data());
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    if (ucp_ep_create(worker_, &ep, &ep_) != UCS_OK) ep_ = nullptr;
  }
  ~RawSender() {
    if (ep_ != nullptr) {
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_EP_CLOSE_FLAG_FORCE;
      const ucs_status_ptr_t r = ucp_ep_close_nbx(ep_, &p);
      if (UCS_PTR_IS_PTR(r)) {
        while (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_worker_progress(worker_);
        ucp_request_free(r);
      }
    }
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    if (context_ != nullptr) ucp_cleanup(context_);
  }
  bool ok() const { return ep_ != nullptr; }
  void send(const std::string& header, const std::string& payload, bool rndv,
            unsigned amId = ucx_wire::kAmId) {
    pending_.push_back(std::make_unique<std::pair<std::string, std::string>>(header, payload));
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = rndv ? UCP_AM_SEND_FLAG_RNDV : 0;
    const auto& [h, d] = *pending_.back();
    const ucs_status_ptr_t r =
        ucp_am_send_nbx(ep_, amId, h.data(), h.size(), d.data(), d.size(), &p);
    if (UCS_PTR_IS_PTR(r)) requests_.push_back(r);
  }
  void progress() {
    ucp_worker_progress(worker_);
    std::erase_if(requests_, [](void* r) {
      if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
      ucp_request_free(r);
      return true;
    });
  }
  bool idle() const { return requests_.empty(); }

 private:
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
  std::vector<std::unique_ptr<std::pair<std::string, std::string>>> pending_;
  std::vector<void*> requests_;
};
#endif

// Raw bytes on the wire: only a real transport has one (nothing reaches the fake but its own
// transports), so this runs for the UCX implementations alone.
class UcxWire : public TransportConformance {};
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(UcxWire);

TEST_P(UcxWire, GarbageOnTheWireIsDroppedWithoutACrash) {
#ifndef DRAGON_UCX_MODULE
  GTEST_SKIP() << "the UCX module is not built";
#else
  Node* a = make(0);
  Node* b = make(1);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  RawSender raw(a->t->address());
  ASSERT_TRUE(raw.ok());
  constexpr std::uint32_t kMagic = ucx_wire::kWireMagic;
  const std::string wrong(kSecret.size(), 'w');
  const std::string big = pattern(1u << 20, 7);
  raw.send("", "no header", false);
  raw.send("abc", "short header", false);
  raw.send(std::string(32, '\0'), "zero header", false);
  raw.send(wireHeader(0xdeadbeef, 1, 0, 1, kSecret, 0, 3), "bad", false);
  raw.send(wireHeader(kMagic, 99, 0, 1, kSecret, 0, 3), "ver", false);
  raw.send(wireHeader(kMagic, 1, 7, 1, kSecret, 0, 4), "kind", false);
  raw.send(wireHeader(kMagic, 1, 0, 1, kSecret, 0, 4).substr(0, 40), "trun", false);
  raw.send(wireHeader(kMagic, 1, 0, 1, kSecret, 0, 999), "len", false);
  raw.send(wireHeader(kMagic, 1, 0, 1, wrong, 0, 6), "secret", false);
  raw.send(wireHeader(kMagic, 1, 0, 77, kSecret, 0, 7), "unknown", false);
  raw.send(wireHeader(kMagic, 1, 0, 1, kSecret, std::uint64_t{1} << 40, 3), "far", false);
  raw.send(wireHeader(0, 0, 0, 0, "", 0, 0), big, true);
  raw.send(wireHeader(kMagic, 1, 0, 1, wrong, 0, big.size()), big, true);
  raw.send(wireHeader(kMagic, 1, 0, 1, kSecret, std::uint64_t{1} << 40, big.size()), big, true);
  // Transfers carried as messages: none may touch a's region or disturb a.
  RmaBuffer region(std::size_t{2} << 20);
  auto ra = a->t->registerRegion(region.bytes.data(), region.bytes.size());
  ASSERT_TRUE(ra.has_value()) << ra.error().toString();
  std::uint64_t regionId = 0;
  std::string_view packed;
  ASSERT_TRUE(ucx_wire::splitRegionKey(ra->key, regionId, packed));
  auto rma = [&](ucx_wire::RmaMessage kind, std::uint32_t node, std::string_view secret,
                 std::uint64_t length) {
    ucx_wire::RmaHeader h;
    h.kind = kind;
    h.node = node;
    h.transfer = 5;
    h.region = regionId;
    h.address = region.at(0);
    h.length = length;
    return ucx_wire::encodeRmaHeader(h, secret);
  };
  using ucx_wire::RmaMessage;
  constexpr unsigned kRma = ucx_wire::kRmaAmId;
  raw.send("abc", "", false, kRma);
  raw.send(std::string(80, '\0'), "", false, kRma);
  std::string badKind = rma(RmaMessage::Put, 1, kSecret, 3);
  badKind[6] = 9;
  raw.send(badKind, "xyz", false, kRma);
  raw.send(rma(RmaMessage::Put, 1, kSecret, 3), "too long", false, kRma);
  raw.send(rma(RmaMessage::Put, 1, wrong, 3), "xyz", false, kRma);
  raw.send(rma(RmaMessage::Put, 1, wrong, big.size()), big, true, kRma);
  raw.send(rma(RmaMessage::Put, 77, kSecret, 3), "xyz", false, kRma);
  raw.send(rma(RmaMessage::Get, 1, wrong, 4096), "", false, kRma);
  raw.send(rma(RmaMessage::PutDone, 1, kSecret, 3), "", false, kRma);
  raw.send(rma(RmaMessage::GetData, 1, kSecret, big.size()), big, true, kRma);
  ASSERT_TRUE(pumpUntil([&] { return raw.idle(); }, 30s, false, [&] { raw.progress(); }));
  ASSERT_TRUE(b->t->send(0, "after").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !a->got.empty(); }, 30s, false, [&] { raw.progress(); }));
  pumpFor(200ms);
  EXPECT_EQ(a->got, (std::vector<std::pair<std::uint32_t, std::string>>{{1, "after"}}));
  EXPECT_TRUE(a->lost.empty());
  EXPECT_EQ(std::count(region.bytes.begin(), region.bytes.end(), '\0'),
            static_cast<std::ptrdiff_t>(region.bytes.size()));
#endif
}

// A node that has not joined keeps a bounded record of what it drops (so that a peer's later
// messages need not wait for those); a flood of messages without the secret fills it. A real
// peer's message dropped after that is not remembered: the gap it leaves in that peer's
// sequence is passed over once it has stayed open for a while, not waited for forever.
TEST_P(UcxWire, AFloodBeforeJoiningDoesNotStallAPeerForGood) {
#ifndef DRAGON_UCX_MODULE
  GTEST_SKIP() << "the UCX module is not built";
#else
  Node* a = make(0);
  Node* b = make(1, "");  // no secret yet, no peers
  ASSERT_TRUE(a != nullptr && b != nullptr);
  link(*a, *b);
  RawSender raw(b->t->address());
  ASSERT_TRUE(raw.ok());
  const std::string wrong(kSecret.size(), 'w');
  for (std::uint64_t seq = 0; seq < 5000; ++seq) {  // "from node 0", without the secret
    raw.send(wireHeader(ucx_wire::kWireMagic, 1, 0, 0, wrong, seq, 1), "f", false);
  }
  ASSERT_TRUE(pumpUntil([&] { return raw.idle(); }, 30s, false, [&] { raw.progress(); }));
  pumpFor(200ms);
  ASSERT_TRUE(a->t->send(1, "early").isOk());  // dropped, and nothing left to remember it by
  ASSERT_TRUE(pumpUntil([&] { return !a->t->needsProgress(); }));
  pumpFor(200ms);
  EXPECT_TRUE(b->got.empty());
  b->t->setSecret(kSecret);
  link(*b, *a);
  ASSERT_TRUE(a->t->send(1, "after").isOk());
  ASSERT_TRUE(pumpUntil([&] { return !b->got.empty(); }, 20s, true));
  ASSERT_TRUE(a->t->send(1, "and on").isOk());
  ASSERT_TRUE(pumpUntil([&] { return b->got.size() >= 2; }, 20s, true));
  EXPECT_EQ(b->got, (std::vector<std::pair<std::uint32_t, std::string>>{{0, "after"},
                                                                          {0, "and on"}}));
  EXPECT_TRUE(b->lost.empty());
#endif
}

// Transfers carried as messages (RmaPath::Messages here, Auto's choice over tcp): the
// region's node checks each against the region, and refuses one outside it or naming a region
// it does not have (or no longer has) instead of touching memory it does not own.
TEST_P(UcxWire, TransfersOutsideARegionOrToAnUnknownRegionAreRefused) {
#ifndef DRAGON_UCX_MODULE
  GTEST_SKIP() << "the UCX module is not built";
#else
  Node* a = make(0, kSecret, kLimit, RmaPath::Messages);
  Node* b = make(1, kSecret, kLimit, RmaPath::Messages);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  roundTrip(*a, *b);
  RmaBuffer theirs(std::size_t{1} << 20);
  RmaBuffer guard(4096);  // what lies outside; nothing may write it
  std::memset(guard.bytes.data(), 'g', guard.bytes.size());
  auto rb = b->t->registerRegion(theirs.bytes.data(), theirs.bytes.size());
  ASSERT_TRUE(rb.has_value()) << rb.error().toString();
  RmaBuffer mine(std::size_t{1} << 20);
  std::memset(mine.bytes.data(), 'm', mine.bytes.size());
  std::vector<Status> results;
  auto finish = [&](Status st) { results.push_back(st); };
  const std::size_t big = 200000;  // by rendezvous
  ASSERT_TRUE(a->t->rma(1, RmaKind::Put, mine.bytes.data(), 16, guard.at(0), rb->key, finish).isOk());
  ASSERT_TRUE(a->t->rma(1, RmaKind::Put, mine.bytes.data(), big, theirs.at(theirs.bytes.size() - 10),
                        rb->key, finish).isOk());
  ASSERT_TRUE(a->t->rma(1, RmaKind::Get, mine.bytes.data(), 16, theirs.at(0) - 16, rb->key, finish).isOk());
  // A length that wraps the address space.
  ASSERT_TRUE(a->t->rma(1, RmaKind::Get, mine.bytes.data(), 16, ~std::uint64_t{0} - 4, rb->key, finish).isOk());
  // A region id b never gave out.
  std::string forged = rb->key;
  forged[0] = static_cast<char>(forged[0] + 100);
  ASSERT_TRUE(a->t->rma(1, RmaKind::Put, mine.bytes.data(), 16, theirs.at(0), forged, finish).isOk());
  EXPECT_EQ(a->t->rma(1, RmaKind::Put, mine.bytes.data(), 16, theirs.at(0), "short", finish).code(),
            StatusCode::InvalidArgument);
  ASSERT_TRUE(pumpUntil([&] { return results.size() == 5; }));
  for (const Status& st : results) {
    EXPECT_EQ(st.code(), StatusCode::InvalidArgument) << st.toString();
  }
  EXPECT_EQ(std::count(guard.bytes.begin(), guard.bytes.end(), 'g'), 4096);
  EXPECT_EQ(std::count(theirs.bytes.begin(), theirs.bytes.end(), 'm'), 0);
  // A deregistered region is unknown too, and the peer stays usable throughout.
  b->t->deregisterRegion(rb->id, nullptr);
  results.clear();
  ASSERT_TRUE(a->t->rma(1, RmaKind::Get, mine.bytes.data(), big, theirs.at(0), rb->key, finish).isOk());
  ASSERT_TRUE(pumpUntil([&] { return results.size() == 1; }));
  EXPECT_EQ(results.front().code(), StatusCode::InvalidArgument) << results.front().toString();
  roundTrip(*a, *b);
  EXPECT_TRUE(a->lost.empty());
  EXPECT_TRUE(b->lost.empty());
#endif
}

// A peer killed while its transfers to and from this node are in flight (over tcp, UCX 1.13
// emulates RMA with messages whose target answers from inside UCX, and aborts the process when
// the initiator is gone: the transport must not use that): this node sees the loss, once, and
// goes on with the others; a transfer toward it ends, and its region can go.
class UcxPeerDeath : public TransportConformance {};
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(UcxPeerDeath);

TEST_P(UcxPeerDeath, ATransfersTargetOutlivesItsInitiatorsDeath) {
#ifndef DRAGON_UCX_MODULE
  GTEST_SKIP() << "the UCX module is not built";
#else
  Node* a = make(0);
  Node* b = make(2);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  connect(*a, *b);
  roundTrip(*a, *b);
  RmaBuffer mine(std::size_t{4} << 20);
  auto ra = a->t->registerRegion(mine.bytes.data(), mine.bytes.size());
  ASSERT_TRUE(ra.has_value()) << ra.error().toString();
  ChildPeer child;
  ASSERT_TRUE(child.start(*a->t, {"DRAGON_TEST_PEER_RMA=1"}));
  ASSERT_TRUE(child.say(toHex(ra->key) + " " + std::to_string(mine.at(0)) + " " +
                        std::to_string(mine.bytes.size())));
  // Once a transfer of the child is done, it keeps 16 in flight: kill it amid them.
  std::string line;
  bool go = false;
  ASSERT_TRUE(pumpUntil([&] { return go; }, 30s, false, [&] { go = go || child.lineReady(line); }))
      << "no transfer of the child completed";
  // "go KEY ADDRESS BYTES": the child's region, which this node then writes and reads too.
  const std::size_t sp1 = line.find(' ');
  const std::size_t sp2 = line.find(' ', sp1 + 1);
  const std::size_t sp3 = line.find(' ', sp2 + 1);
  ASSERT_TRUE(line.rfind("go ", 0) == 0 && sp3 != std::string::npos) << line;
  const std::string childKey = fromHex(line.substr(sp1 + 1, sp2 - sp1 - 1));
  const std::uint64_t childBase = std::stoull(line.substr(sp2 + 1, sp3 - sp2 - 1));
  ASSERT_EQ(std::stoull(line.substr(sp3 + 1)), std::uint64_t{4} << 20);
  constexpr int kOwn = 16;
  RmaBuffer scratch(std::size_t{1} << 20);
  std::vector<int> calls(kOwn, 0);
  std::vector<Status> outcomes(kOwn);
  for (int i = 0; i < kOwn; ++i) {
    const RmaKind kind = i % 2 == 0 ? RmaKind::Put : RmaKind::Get;
    ASSERT_TRUE(a->t->rma(1, kind, scratch.bytes.data(), scratch.bytes.size(),
                          childBase + (i % 4) * scratch.bytes.size(), childKey,
                          [&, i](Status st) {
                            ++calls[i];
                            outcomes[i] = st;
                          }).isOk());
  }
  child.killNow();
  ASSERT_TRUE(pumpUntil([&] { return !a->lost.empty(); }, 30s, /*everyRound=*/true));
  // Each of this node's own transfers toward the dead child ends, once: done, or NodeLost.
  ASSERT_TRUE(pumpUntil(
      [&] { return std::count(calls.begin(), calls.end(), 0) == 0; }, 30s, /*everyRound=*/true));
  int lostOnes = 0;
  for (int i = 0; i < kOwn; ++i) {
    EXPECT_EQ(calls[i], 1) << i;
    EXPECT_TRUE(outcomes[i].isOk() || outcomes[i].code() == StatusCode::NodeLost)
        << i << ": " << outcomes[i].toString();
    if (outcomes[i].code() == StatusCode::NodeLost) ++lostOnes;
  }
  std::printf("note: %d of this node's %d transfers toward the killed peer ended NodeLost\n",
              lostOnes, kOwn);
  EXPECT_EQ(a->lost.front().first, 1u);
  EXPECT_EQ(a->lost.front().second.code(), StatusCode::NodeLost)
      << a->lost.front().second.toString();
  a->t->deregisterRegion(ra->id, nullptr);
  roundTrip(*a, *b);
  pumpFor(200ms);
  EXPECT_EQ(a->lost.size(), 1u);
  EXPECT_TRUE(b->lost.empty());
#endif
}

std::vector<Impl> implementations() {
  std::vector<Impl> impls = {{"fake", nullptr}};
#ifdef DRAGON_UCX_MODULE
  impls.push_back({"ucx_tcp", "tcp"});
  impls.push_back({"ucx_sm", "sm"});
#endif
  return impls;
}

std::string implName(const ::testing::TestParamInfo<Impl>& p) { return p.param.name; }

INSTANTIATE_TEST_SUITE_P(All, TransportConformance, ::testing::ValuesIn(implementations()),
                         implName);
#ifdef DRAGON_UCX_MODULE
INSTANTIATE_TEST_SUITE_P(Ucx, UcxWire,
                         ::testing::Values(Impl{"ucx_tcp", "tcp"}, Impl{"ucx_sm", "sm"}),
                         implName);
// Over tcp only: over shared memory (two dragonds of one host) the survivor's messages to a third
// peer afterwards were not delivered in about one run of 20 here (UCX's shared-memory transport
// with a peer killed amid its traffic; not Dragon's transfers, whose two paths both passed 15
// runs of 15 there). Nodes on different hosts never use it.
INSTANTIATE_TEST_SUITE_P(Ucx, UcxPeerDeath, ::testing::Values(Impl{"ucx_tcp", "tcp"}), implName);
#endif

TEST(TransportModule, TheUcxModuleExportsItsVersionedInfoSymbol) {
#ifndef DRAGON_UCX_MODULE
  GTEST_SKIP() << "the UCX module is not built";
#else
  void* handle = dlopen(DRAGON_UCX_MODULE, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(handle, nullptr) << dlerror();
  void* sym = dlsym(handle, kTransportModuleSymbol);
  ASSERT_NE(sym, nullptr) << dlerror();
  using Info = const TransportModule* (*)();
  Info info = nullptr;
  std::memcpy(&info, &sym, sizeof info);
  const TransportModule* m = info();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->abiVersion, kAbiVersion);
  EXPECT_STREQ(m->name, "ucx");
  ASSERT_NE(m->create, nullptr);
  Status error;
  TransportOptions o;
  auto t = m->create(o, error);
  ASSERT_NE(t, nullptr) << error.toString();
  EXPECT_EQ(t->name(), "ucx");
#endif
}

}  // namespace
}  // namespace dragon::transport
