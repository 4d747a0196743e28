// SPDX-License-Identifier: MIT
// Pools and channels served by a real dragond: created, handed over by fd, named, counted,
// released when their owner dies.
#include "daemon_fixture.hpp"

#include <cstdio>
#include <cstring>
#include <set>

namespace dragon {
namespace {

using namespace std::chrono_literals;
using testing::RunningDaemon;

std::span<const std::byte> bytesOf(const std::string& s) { return std::as_bytes(std::span(s)); }

TEST(Objects, AChannelCreatedByOneClientCarriesMessagesFromAnotherProcess) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client c = d->connect();
  auto pool = c.createPool(1 << 20);
  ASSERT_TRUE(pool.has_value()) << pool.error().toString();
  ChannelOptions co;
  co.capacity = 8;
  auto ch = c.createChannel((*pool)->descriptor(), co, "inbox");
  ASSERT_TRUE(ch.has_value()) << ch.error().toString();
  // A separate process attaches by name through its own connection and sends.
  const std::string socket = d->socket();
  pid_t child = testing::forkChild([&] {
    Client::Options o;
    o.socketPath = socket;
    auto cc = Client::connect(o);
    if (!cc.has_value()) return 10;
    auto peer = cc->attachChannel(std::string_view("inbox"));
    if (!peer.has_value()) return 11;
    const std::string big(100000, 'z');  // through a pool block, not the ring
    if (!(*peer)->channel().send(bytesOf("hello")).isOk()) return 12;
    if (!(*peer)->channel().send(bytesOf(big)).isOk()) return 13;
    return 0;
  });
  EXPECT_EQ(testing::exitCodeOf(testing::waitFor(child, 30s)), 0);
  Message m;
  ASSERT_TRUE((*ch)->channel().recv(m, Timeout::after(10s)).isOk());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m.data().data()), m.data().size()), "hello");
  ASSERT_TRUE((*ch)->channel().recv(m, Timeout::after(10s)).isOk());
  EXPECT_EQ(m.data().size(), 100000u);
}

// The shared memory this process has faulted in (RssShmem of /proc/self/status), in KiB.
long rssShmemKiB() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long kib = -1;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "RssShmem: %ld kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib;
}

TEST(Objects, ALazyPoolIsMappedWithoutItsPagesAndAnEagerOneWithThem) {
  // A client's staging pool for remote sends is lazy: 32 MiB that must not be resident in
  // every process that once sent a large message.
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client c = d->connect();
  const long before = rssShmemKiB();
  ASSERT_GE(before, 0);
  auto lazy = c.createPool(std::size_t{64} << 20, {}, /*lazy=*/true);
  ASSERT_TRUE(lazy.has_value()) << lazy.error().toString();
  const long afterLazy = rssShmemKiB();
  EXPECT_LT(afterLazy - before, 4 * 1024) << "a lazy pool's pages were faulted in here";
  auto eager = c.createPool(std::size_t{64} << 20);
  ASSERT_TRUE(eager.has_value()) << eager.error().toString();
  EXPECT_GE(rssShmemKiB() - afterLazy, 60 * 1024) << "an eager pool is faulted in (prefault)";
}

TEST(Objects, NamesAreUniqueAndLookupsFindThem) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client c = d->connect();
  auto a = c.createPool(1 << 20, "shared");
  ASSERT_TRUE(a.has_value());
  auto b = c.createPool(1 << 20, "shared");
  ASSERT_FALSE(b.has_value());
  EXPECT_EQ(b.error().code(), StatusCode::AlreadyExists);
  auto found = c.lookupName("shared");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(*found, (*a)->descriptor());
  EXPECT_EQ(c.lookupName("absent").error().code(), StatusCode::NotFound);
  auto other = c.createPool(1 << 20);
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(c.registerName("shared", (*other)->descriptor()).code(), StatusCode::AlreadyExists);
  EXPECT_TRUE(c.registerName("second", (*other)->descriptor()).isOk());
  EXPECT_EQ(c.attachChannel(std::string_view("shared")).error().code(),
            StatusCode::InvalidArgument);  // it names a pool
}

TEST(Objects, AScopedNameGoesWithItsClientAndAPlainOneStays) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client other = d->connect();
  ObjectDescriptor listening, kept;
  Result<std::unique_ptr<ClientChannel>> held = Status(StatusCode::NotFound);
  {
    Client owner = d->connect();
    auto pool = owner.createPool(1 << 20);
    ASSERT_TRUE(pool.has_value());
    auto ch = owner.createChannel((*pool)->descriptor(), ChannelOptions{});
    ASSERT_TRUE(ch.has_value());
    listening = (*ch)->descriptor();
    ASSERT_TRUE(owner.registerName("listen", listening, /*scoped=*/true).isOk());
    auto named = owner.createPool(1 << 20, "kept");
    ASSERT_TRUE(named.has_value());
    kept = (*named)->descriptor();
    // While its client lives, the name is like any other: found, and not taken twice.
    auto found = other.lookupName("listen");
    ASSERT_TRUE(found.has_value());
    EXPECT_EQ(*found, listening);
    EXPECT_EQ(other.registerName("listen", kept).code(), StatusCode::AlreadyExists);
    held = other.attachChannel(std::string_view("listen"));
    ASSERT_TRUE(held.has_value());
  }  // the owner disconnects
  ASSERT_TRUE(testing::eventually([&] {
    auto r = other.lookupName("listen");
    return !r.has_value() && r.error().code() == StatusCode::NotFound;
  }));
  // The channel is closed for the client that still holds it, and goes with that reference.
  EXPECT_TRUE((*held)->channel().isClosed());
  EXPECT_EQ((*held)->channel().send(bytesOf("x")).code(), StatusCode::ChannelClosed);
  ASSERT_TRUE(other.detach(listening).isOk());
  held = Status(StatusCode::NotFound);
  EXPECT_EQ(other.attachChannel(listening).error().code(), StatusCode::NotFound);
  auto stays = other.lookupName("kept");
  ASSERT_TRUE(stays.has_value());
  EXPECT_EQ(*stays, kept);
  // A scoped name does not keep its object: the last detach releases both at once.
  auto pool3 = other.createPool(1 << 20);
  ASSERT_TRUE(pool3.has_value());
  const auto desc3 = (*pool3)->descriptor();
  ASSERT_TRUE(other.registerName("brief", desc3, true).isOk());
  ASSERT_TRUE(other.lookupName("brief").has_value());
  ASSERT_TRUE(other.detach(desc3).isOk());
  EXPECT_EQ(other.lookupName("brief").error().code(), StatusCode::NotFound);
  EXPECT_EQ(other.attachPool(desc3).error().code(), StatusCode::NotFound);
  // ...and the name is free again, for a plain name this time.
  auto pool4 = other.createPool(1 << 20, "brief");
  ASSERT_TRUE(pool4.has_value());
  // A taken name registered again as scoped stays the plain name it was.
  auto pool2 = other.createPool(1 << 20, "plain");
  ASSERT_TRUE(pool2.has_value());
  {
    Client third = d->connect();
    EXPECT_TRUE(third.registerName("plain", (*pool2)->descriptor(), true).isOk());
    auto marker = third.createPool(1 << 20);
    ASSERT_TRUE(marker.has_value());
    ASSERT_TRUE(third.registerName("marker", (*marker)->descriptor(), true).isOk());
  }
  // Once dragond has handled third's hang-up (its own scoped name is gone)...
  ASSERT_TRUE(testing::eventually([&] { return !other.lookupName("marker").has_value(); }));
  EXPECT_TRUE(other.lookupName("plain").has_value());
}

TEST(Objects, AScopedNameIsTakenOverWithReplaceAndAPlainOneNever) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client b = d->connect();
  auto bPool = b.createPool(1 << 20);
  ASSERT_TRUE(bPool.has_value());
  auto bChannel = b.createChannel((*bPool)->descriptor(), ChannelOptions{});
  ASSERT_TRUE(bChannel.has_value());
  {
    Client a = d->connect();
    auto aPool = a.createPool(1 << 20);
    ASSERT_TRUE(aPool.has_value());
    auto aChannel = a.createChannel((*aPool)->descriptor(), ChannelOptions{});
    ASSERT_TRUE(aChannel.has_value());
    ASSERT_TRUE(a.registerName("addr", (*aChannel)->descriptor(), true).isOk());
    // Without replace a taken name stays taken.
    EXPECT_EQ(b.registerName("addr", (*bChannel)->descriptor(), true).code(),
              StatusCode::AlreadyExists);
    ASSERT_TRUE(b.registerName("addr", (*bChannel)->descriptor(), true, true).isOk());
    auto found = b.lookupName("addr");
    ASSERT_TRUE(found.has_value());
    EXPECT_EQ(*found, (*bChannel)->descriptor());
    // The channel that lost the name is closed for its holder.
    EXPECT_TRUE((*aChannel)->channel().isClosed());
    ASSERT_TRUE(a.registerName("gone-with-a", (*aPool)->descriptor(), true).isOk());
  }  // a disconnects: the name it lost is not taken from b
  ASSERT_TRUE(testing::eventually([&] { return !b.lookupName("gone-with-a").has_value(); }));
  auto still = b.lookupName("addr");
  ASSERT_TRUE(still.has_value());
  EXPECT_EQ(*still, (*bChannel)->descriptor());
  // A plain name is never replaced.
  ASSERT_TRUE(b.registerName("plain-addr", (*bPool)->descriptor()).isOk());
  EXPECT_EQ(b.registerName("plain-addr", (*bChannel)->descriptor(), true, true).code(),
            StatusCode::AlreadyExists);
}

TEST(Objects, IdsNameTheirNodeAndAreNeverGivenTwice) {
  // dragond makes every id: its node in the top 24 bits (node 0 here), distinct on the node.
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client c = d->connect();
  std::set<std::uint64_t> seen;
  std::vector<std::shared_ptr<Pool>> pools;
  std::vector<std::unique_ptr<ClientChannel>> channels;
  for (int i = 0; i < 100; ++i) {
    auto pool = c.createPool(1 << 20);
    ASSERT_TRUE(pool.has_value()) << pool.error().toString();
    ChannelOptions co;
    co.capacity = 2;
    auto ch = c.createChannel((*pool)->descriptor(), co);
    ASSERT_TRUE(ch.has_value()) << ch.error().toString();
    for (const auto& desc : {(*pool)->descriptor(), (*ch)->descriptor()}) {
      EXPECT_EQ(desc.id >> 40, desc.node) << desc.toString();
      EXPECT_NE(desc.id, 0u);
      EXPECT_TRUE(seen.insert(desc.id).second) << "id given twice: " << desc.id;
    }
    pools.push_back(std::move(*pool));
    channels.push_back(std::move(*ch));
  }
}

TEST(Objects, DetachOfTheLastReferenceReleasesAndDestroyEndsAtOnce) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client c = d->connect();
  auto pool = c.createPool(1 << 20);
  ASSERT_TRUE(pool.has_value());
  const auto desc = (*pool)->descriptor();
  ASSERT_TRUE(c.detach(desc).isOk());
  EXPECT_EQ(c.attachPool(desc).error().code(), StatusCode::NotFound);
  EXPECT_EQ(c.detach(desc).code(), StatusCode::NotFound);

  auto named = c.createPool(1 << 20, "keep");
  ASSERT_TRUE(named.has_value());
  ASSERT_TRUE(c.detach((*named)->descriptor()).isOk());
  EXPECT_TRUE(c.attachPool(std::string_view("keep")).has_value()) << "a name keeps it";
  ASSERT_TRUE(c.destroy((*named)->descriptor()).isOk());
  EXPECT_EQ(c.attachPool(std::string_view("keep")).error().code(), StatusCode::NotFound);
  EXPECT_EQ(c.destroy((*named)->descriptor()).code(), StatusCode::NotFound);
}

TEST(Objects, AKilledClientsUnnamedObjectsAreReleasedButNamedAndSharedOnesStay) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const std::string socket = d->socket();
  pid_t child = testing::forkChild([&] {
    Client::Options o;
    o.socketPath = socket;
    auto cc = Client::connect(o);
    if (!cc.has_value()) return 1;
    auto lone = cc->createPool(1 << 20);
    auto named = cc->createPool(1 << 20, "survivor");
    auto shared = cc->createPool(1 << 20);
    if (!lone.has_value() || !named.has_value() || !shared.has_value()) return 2;
    ObjectDescriptor ds[3] = {(*lone)->descriptor(), (*named)->descriptor(),
                              (*shared)->descriptor()};
    (void)!write(fds[1], ds, sizeof ds);
    pause();  // until SIGKILL
    return 0;
  });
  ObjectDescriptor ds[3];
  ASSERT_EQ(read(fds[0], ds, sizeof ds), static_cast<ssize_t>(sizeof ds));
  Client c = d->connect();
  auto shared = c.attachPool(ds[2]);  // handed on: this client holds it too
  ASSERT_TRUE(shared.has_value());
  kill(child, SIGKILL);
  testing::waitFor(child, 10s);
  EXPECT_TRUE(testing::eventually([&] {
    auto r = c.attachPool(ds[0]);
    if (r.has_value()) {
      (void)c.detach(ds[0]);  // not yet released: give back the reference this probe took
      return false;
    }
    return r.error().code() == StatusCode::NotFound;
  })) << "the dead client's unnamed pool is released";
  EXPECT_TRUE(c.attachPool(std::string_view("survivor")).has_value());
  EXPECT_TRUE(c.attachPool(ds[2]).has_value());
  close(fds[0]);
  close(fds[1]);
}

TEST(Objects, BadObjectRequestsGetClearErrors) {
  auto d = RunningDaemon::start();
  ASSERT_TRUE(d);
  Client c = d->connect();
  EXPECT_EQ(c.createPool(1024).error().code(), StatusCode::InvalidArgument);  // below the minimum
  ObjectDescriptor bogus;
  bogus.kind = ObjectKind::Pool;
  bogus.id = 42;
  bogus.poolId = 42;
  EXPECT_EQ(c.attachPool(bogus).error().code(), StatusCode::NotFound);
  EXPECT_EQ(c.createChannel(bogus, ChannelOptions{}).error().code(), StatusCode::NotFound);
  auto pool = c.createPool(1 << 20);
  ASSERT_TRUE(pool.has_value());
  ChannelOptions huge;
  huge.capacity = 1u << 23;  // cannot fit in a 1 MiB pool
  EXPECT_FALSE(c.createChannel((*pool)->descriptor(), huge).has_value());
  EXPECT_TRUE(c.createChannel((*pool)->descriptor(), ChannelOptions{}).has_value());
}

}  // namespace
}  // namespace dragon
