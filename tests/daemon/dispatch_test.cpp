// SPDX-License-Identifier: MIT
// dragond's dispatcher (Server::dispatch) as other nodes meet it: a real Server on node 1, its
// cluster on the in-process fake transport, and two other nodes' Clusters that send it requests
// as a dragond would, or forged as a faulty or hostile one would. Every request takes the one
// dispatcher path; these check what it refuses by origin and what a peer may claim.
#include "base/robust_mutex.hpp"
#include "channel/layout.hpp"
#include "config/config.hpp"
#include "daemon/cluster.hpp"
#include "daemon/event_loop.hpp"
#include "daemon/listener.hpp"
#include "daemon/node_registry.hpp"
#include "daemon/object_manager.hpp"
#include "daemon/process_manager.hpp"
#include "daemon/server.hpp"
#include "daemon/transport.hpp"
#include "protocol/socket_io.hpp"
#include "support/cluster_unit.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace dragon::daemon {
namespace {

namespace pb = dragon::protocol;

constexpr std::uint32_t kServed = 1;  // the node whose dragond is real here
constexpr std::uint32_t kNodes = 3;

struct Dispatch : ::testing::Test {
  config::Config cfg = testConfig();
  std::string dir;
  std::unique_ptr<EventLoop> loop;
  std::shared_ptr<transport::FakeHub> hub = transport::makeFakeHub();
  std::unique_ptr<NodeRegistry> registry;
  std::unique_ptr<ObjectManager> objects;
  std::unique_ptr<Server> server;
  std::unique_ptr<ProcessManager> processes;
  std::vector<std::unique_ptr<Cluster>> nodes;  // node 1's is the server's
  // Node 1 joins as under a launcher: its JoinCluster on this connection, which stays open
  // (global services start with it). Otherwise its Cluster is joined directly.
  bool joinThroughServer = false;
  UniqueFd launcher;

  void SetUp() override {
    char tmpl[] = "/tmp/dragon-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir = tmpl;
    auto l = EventLoop::create();
    ASSERT_TRUE(l.has_value());
    loop = std::make_unique<EventLoop>(std::move(*l));
    auto listener = bindListener(dir + "/dragond.sock");
    ASSERT_TRUE(listener.has_value()) << listener.error().toString();
    registry = std::make_unique<NodeRegistry>(kServed);
    ObjectLimits limits;
    limits.defaultPoolSize = std::uint64_t{1} << 20;
    objects = std::make_unique<ObjectManager>(*registry, kServed, limits);
    server = std::make_unique<Server>(*loop, std::move(*listener), *registry, kServed);
    processes = std::make_unique<ProcessManager>(
        *loop, *registry, kServed, 1'000'000'000,
        [](std::uint64_t, const pb::Envelope&) { return false; });
    ASSERT_TRUE(server->start(*objects, *processes).isOk());
    for (std::uint32_t i = 0; i < kNodes; ++i) {
      transport::TransportOptions o;
      o.selfNode = i;
      o.maxMessageBytes = Cluster::maxMessageBytes();
      auto c = Cluster::create(*loop, i, cfg, transport::makeFakeTransport(hub, o));
      ASSERT_TRUE(c.has_value()) << c.error().toString();
      nodes.push_back(std::move(*c));
    }
    server->setCluster(*nodes[kServed], dir + "/dragond.sock", 1'000'000'000, 1'000'000'000);
    const pb::JoinCluster j = nodeTable(nodes);
    for (std::uint32_t i = 0; i < kNodes; ++i) {
      if (i == kServed && joinThroughServer) continue;
      ASSERT_TRUE(nodes[i]->join(j).isOk());
    }
    if (joinThroughServer) {
      launcher = connectClient();
      pb::Envelope join;
      *join.mutable_join_cluster() = j;
      const std::vector<pb::Envelope> joined = askOn(launcher.get(), {join});
      ASSERT_EQ(joined.size(), 1u);
      ASSERT_FALSE(joined[0].has_error()) << joined[0].DebugString();
    }
  }

  void TearDown() override {
    if (server) server->forgetCluster();
    nodes.clear();
    processes.reset();
    server.reset();
    objects.reset();
    registry.reset();
    if (dir.rfind("/tmp/dragon-test-", 0) == 0) {
      (void)!std::system(("rm -rf '" + dir + "'").c_str());
    }
  }

  // `request` sent by node `from`'s dragond to the served node (with `data`, its channel_op's,
  // after it); its answer.
  pb::Envelope ask(std::uint32_t from, pb::Envelope request, std::span<const char> data = {}) {
    std::optional<Result<pb::Envelope>> answer;
    nodes[from]->forward(
        kServed, std::move(request),
        [&answer](Result<pb::Envelope> r) { answer = std::move(r); }, data);
    EXPECT_TRUE(runUntil(*loop, [&] { return answer.has_value(); })) << "no answer";
    if (!answer.has_value() || !answer->has_value()) {
      pb::Envelope e;
      pb::fillError(*e.mutable_error(), answer.has_value() ? answer->error()
                                                           : Status(StatusCode::Timeout, "none"));
      return e;
    }
    return std::move(**answer);
  }

  static std::string errorOf(const pb::Envelope& e) {
    return e.has_error() ? e.error().message() : std::string();
  }

  // A new client connection to the served node's Unix socket.
  UniqueFd connectClient() {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = dir + "/dragond.sock";
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(fcntl(fd.get(), F_SETFL, O_NONBLOCK), 0);
    return fd;
  }

  // `requests` sent on `fd`, after a Hello if `hello` (a new connection); the answers, in
  // order.
  std::vector<pb::Envelope> askOn(int fd, const std::vector<pb::Envelope>& requests,
                                  bool hello = true) {
    std::string bytes;
    std::vector<pb::Envelope> all;
    if (hello) {
      all.emplace_back().mutable_hello()->set_min_version(pb::kVersion);
      all.back().mutable_hello()->set_max_version(pb::kVersion);
    }
    all.insert(all.end(), requests.begin(), requests.end());
    for (std::size_t i = 0; i < all.size(); ++i) {
      all[i].set_request_id(++lastRequestId);
      std::string frame;
      EXPECT_TRUE(pb::encode(all[i], frame).isOk());
      bytes += frame;
    }
    EXPECT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    pb::FrameDecoder decoder;
    std::vector<pb::Envelope> answers;
    runUntil(*loop, [&] {
      char buf[4096];
      const ssize_t n = read(fd, buf, sizeof buf);
      if (n > 0) decoder.feed(std::as_bytes(std::span<const char>(buf, static_cast<std::size_t>(n))));
      for (auto m = decoder.next(); m.has_value(); m = decoder.next()) answers.push_back(*m);
      return answers.size() == all.size();
    });
    EXPECT_EQ(answers.size(), all.size());
    if (hello && !answers.empty()) answers.erase(answers.begin());  // the HelloReply
    return answers;
  }
  std::uint64_t lastRequestId = 0;

  // `requests` sent by a client of the served node on a connection of their own.
  std::vector<pb::Envelope> askAsClient(const std::vector<pb::Envelope>& requests) {
    UniqueFd fd = connectClient();
    return askOn(fd.get(), requests);
  }

  // A lock of the served node: a channel that tracks its holder, with its one token in it.
  ObjectDescriptor makeLock() {
    auto pool = objects->createPool(7, std::uint64_t{1} << 20);
    EXPECT_TRUE(pool.has_value());
    ChannelOptions o;
    o.capacity = 1;
    o.trackHolder = true;
    auto ch = objects->createChannel(7, pool->object, o);
    EXPECT_TRUE(ch.has_value());
    auto channel = objects->channel(ch->object);
    EXPECT_TRUE(channel.has_value());
    const std::byte token{1};
    EXPECT_TRUE(channel->send(std::span(&token, 1), Timeout::none()).isOk());
    return ch->object;
  }

  static pb::Envelope channelOp(const ObjectDescriptor& d, pb::ChannelOp::Kind kind) {
    pb::Envelope e;
    *e.mutable_channel_op()->mutable_channel() = pb::toRef(d);
    e.mutable_channel_op()->set_kind(kind);
    e.mutable_channel_op()->set_timeout_ns(0);
    e.mutable_channel_op()->set_op_key(1);
    return e;
  }
};

TEST_F(Dispatch, RequestsOnlyAClientMakesAreRefusedFromAnotherNode) {
  pb::Envelope pool;
  pool.mutable_create_pool()->set_size(1 << 20);
  pb::Envelope adopt;
  adopt.mutable_adopt()->set_pid(getpid());
  pb::Envelope join;
  join.mutable_join_cluster();
  pb::Envelope end;
  end.mutable_end_job();
  for (auto* request : {&pool, &adopt, &join, &end}) {
    pb::Envelope answer = ask(0, *request);
    EXPECT_EQ(errorOf(answer), "not a request one dragond makes of another")
        << request->DebugString();
  }
  EXPECT_TRUE(registry->listProcesses().empty());  // nothing was adopted
}

TEST_F(Dispatch, OnlyTheHeadNodeEndsTheJob) {
  pb::Envelope end;
  end.mutable_peer_end_job()->set_exit_code(0);
  EXPECT_EQ(errorOf(ask(2, end)), "only the head node ends the job");
}

TEST_F(Dispatch, ASpawnFromAnotherNodeAfterTheJobEndedHereIsRefused) {
  pb::Envelope end;
  end.mutable_peer_end_job()->set_exit_code(0);
  ASSERT_FALSE(ask(0, end).has_error());
  pb::Envelope spawn;
  spawn.mutable_spawn()->add_argv("/bin/true");
  EXPECT_EQ(errorOf(ask(2, spawn)), "the job has ended on this node");
  EXPECT_TRUE(registry->listProcesses().empty());
}

TEST_F(Dispatch, APeerThatClaimsAnotherNodesProcessIsRefusedAndTheLockStaysHeld) {
  const ObjectDescriptor lock = makeLock();
  const std::uint64_t holder = Channel::holderWord(2, 4242);

  // Node 0 receives the token in the name of a process of node 2: refused, token untouched.
  pb::Envelope forged = channelOp(lock, pb::ChannelOp::RECV);
  forged.mutable_channel_op()->set_holder(holder);
  EXPECT_EQ(errorOf(ask(0, forged)), "a RECV names a holder of another node");
  auto channel = objects->channel(lock);
  ASSERT_TRUE(channel.has_value());
  EXPECT_EQ(channel->size(), 1u);

  // Node 2 takes it for its own process: the lock is held by that process.
  pb::Envelope take = channelOp(lock, pb::ChannelOp::RECV);
  take.mutable_channel_op()->set_holder(holder);
  take.mutable_channel_op()->set_bounded(true);
  take.mutable_channel_op()->set_max_size(16);
  pb::Envelope taken = ask(2, take);
  ASSERT_FALSE(taken.has_error()) << errorOf(taken);
  EXPECT_EQ(channel->holder(), holder);

  // Node 0 says that process is gone: not its to say; the lock stays held and unbroken.
  pb::Envelope gone;
  gone.mutable_channel_op()->set_kind(pb::ChannelOp::HOLDER_GONE);
  gone.mutable_channel_op()->set_holder(holder);
  EXPECT_EQ(errorOf(ask(0, gone)), "HOLDER_GONE names a process of another node");
  EXPECT_EQ(channel->holder(), holder);
  EXPECT_FALSE(channel->isClosed());

  // Its own node says so: the lock breaks, and whoever uses it next hears why.
  EXPECT_FALSE(ask(2, gone).has_error());
  EXPECT_TRUE(channel->isClosed());
  const std::byte back{1};
  auto st = channel->send(std::span(&back, 1), Timeout::none());
  EXPECT_EQ(st.code(), StatusCode::ChannelClosed) << st.toString();
}

TEST_F(Dispatch, APeerSpeaksToGlobalServicesOnlyForItsOwnObjectsAndProcesses) {
  // Node 0 claims and releases a name for an object of node 2, and reports a process of node
  // 2: refused before global services see them. Node 2 itself passes that check (node 1 then
  // says it hosts no global services: node 0 does).
  ObjectDescriptor of2 = makeLock();
  of2.node = 2;
  const std::string own = "this node does not host global services";
  const std::string refused = "a node names or reports only its own objects and processes";
  pb::Envelope claim;
  claim.mutable_name_claim()->set_name("q");
  *claim.mutable_name_claim()->mutable_object() = pb::toRef(of2);
  claim.mutable_name_claim()->set_replace(true);
  EXPECT_EQ(errorOf(ask(0, claim)), refused);
  EXPECT_EQ(errorOf(ask(2, claim)), own);
  pb::Envelope release;
  release.mutable_name_release()->set_name("q");
  *release.mutable_name_release()->mutable_object() = pb::toRef(of2);
  EXPECT_EQ(errorOf(ask(0, release)), refused);
  EXPECT_EQ(errorOf(ask(2, release)), own);
  for (bool started : {true, false}) {
    pb::Envelope report;
    pb::ProcessEntry* e =
        started ? report.mutable_process_started() : report.mutable_process_ended();
    e->set_node(2);
    e->set_puid((std::uint64_t{2} << 48) | 7);
    EXPECT_EQ(errorOf(ask(0, report)), refused);
    EXPECT_EQ(errorOf(ask(2, report)), own);
  }
}

TEST_F(Dispatch, ALockWhoseSendLockIsHeldBreaksOnceItIsFreeAndDragondWaitsForNothing) {
  // The holder of a lock ends while another process sits inside a send on that lock's channel
  // (stopped there, say): dragond answers at once and breaks the lock once the send lock is
  // free, never waiting on it on its loop.
  const ObjectDescriptor lock = makeLock();
  const std::uint64_t holder = Channel::holderWord(2, 4242);
  pb::Envelope take = channelOp(lock, pb::ChannelOp::RECV);
  take.mutable_channel_op()->set_holder(holder);
  take.mutable_channel_op()->set_bounded(true);
  take.mutable_channel_op()->set_max_size(16);
  ASSERT_FALSE(ask(2, take).has_error());
  auto channel = objects->channel(lock);
  ASSERT_TRUE(channel.has_value());
  ASSERT_EQ(channel->holder(), holder);

  auto grant = objects->find(lock);  // the channel's pool and its memfd
  ASSERT_TRUE(grant.has_value()) << grant.error().toString();
  auto mapped = Pool::attach(UniqueFd(fcntl(grant->poolFd, F_DUPFD_CLOEXEC, 3)), grant->pool,
                             /*prefault=*/false);
  ASSERT_TRUE(mapped.has_value()) << mapped.error().toString();
  auto* h = static_cast<detail::ChannelHeader*>(mapped->pointerAt(lock.offset));
  std::promise<void> locked;
  std::promise<void> release;
  std::thread user([&] {
    ASSERT_EQ(base::RobustMutex::lock(&h->sendLock), base::LockState::Locked);
    locked.set_value();
    release.get_future().wait();
    base::RobustMutex::unlock(&h->sendLock);
  });
  locked.get_future().wait();

  pb::Envelope gone;
  gone.mutable_channel_op()->set_kind(pb::ChannelOp::HOLDER_GONE);
  gone.mutable_channel_op()->set_holder(holder);
  EXPECT_FALSE(ask(2, gone).has_error());  // answered while the send lock is held
  EXPECT_FALSE(channel->isClosed());
  release.set_value();
  user.join();
  EXPECT_TRUE(runUntil(*loop, [&] { return channel->isClosed(); }))
      << "the lock did not break once its send lock was free";
}

TEST_F(Dispatch, APeersSendWhoseBytesFollowItsRequestArrivesWholeAlsoWhenItWaits) {
  // A send from another node carries its message after the request (protocol::kFlagData), in
  // the transport's buffer: a send that completes copies it from there into the channel, and
  // one that waits must keep a copy of its own (the buffer goes when the handler returns).
  auto pool = objects->createPool(7, std::uint64_t{4} << 20);
  ASSERT_TRUE(pool.has_value());
  ChannelOptions o;
  o.capacity = 1;
  auto ch = objects->createChannel(7, pool->object, o);
  ASSERT_TRUE(ch.has_value());
  auto channel = objects->channel(ch->object);
  ASSERT_TRUE(channel.has_value());
  auto message = [](char seed) {
    std::string m(std::size_t{256} << 10, '\0');
    for (std::size_t i = 0; i < m.size(); ++i) m[i] = static_cast<char>(seed + i * 13 + i / 4093);
    return m;
  };
  const std::string first = message('a');
  const std::string second = message('b');
  const std::string third = message('c');
  pb::Envelope send = channelOp(ch->object, pb::ChannelOp::SEND);
  EXPECT_EQ(errorOf(ask(2, send, first)), "");
  // The channel is full: the second waits at the gateway, and the third, a try, is refused.
  pb::Envelope waits = send;
  waits.mutable_channel_op()->set_timeout_ns(-1);
  waits.mutable_channel_op()->set_op_key(2);
  std::optional<Result<pb::Envelope>> waited;
  nodes[2]->forward(
      kServed, waits, [&](Result<pb::Envelope> r) { waited = std::move(r); }, second);
  send.mutable_channel_op()->set_op_key(3);
  const pb::Envelope refused = ask(2, send, third);  // after the second: messages keep order
  EXPECT_TRUE(refused.has_error()) << refused.DebugString();
  EXPECT_FALSE(waited.has_value()) << "the second did not wait";
  std::string got(first.size() + 1, '\0');
  auto n = channel->recv(std::as_writable_bytes(std::span(got)), Timeout::none());
  ASSERT_TRUE(n.has_value()) << n.error().toString();
  EXPECT_TRUE(got.substr(0, *n) == first);
  ASSERT_TRUE(runUntil(*loop, [&] { return waited.has_value(); }));
  ASSERT_TRUE(waited->has_value()) << waited->error().toString();
  EXPECT_FALSE((*waited)->has_error()) << (*waited)->DebugString();
  n = channel->recv(std::as_writable_bytes(std::span(got)), Timeout::none());
  ASSERT_TRUE(n.has_value()) << n.error().toString();
  EXPECT_EQ(*n, second.size());
  EXPECT_TRUE(got.substr(0, *n) == second) << "the waiting send's bytes changed";
  EXPECT_FALSE(channel->readable()) << "the refused try left a message";
  // A send in parts, each part after its request, the last one with the SEND.
  const std::string whole = first + second + third;
  const std::size_t part = first.size();
  for (std::size_t at = 0; at < whole.size(); at += part) {
    pb::Envelope p = channelOp(ch->object, at + part < whole.size() ? pb::ChannelOp::SEND_PART
                                                                     : pb::ChannelOp::SEND);
    p.mutable_channel_op()->set_transfer(77);
    p.mutable_channel_op()->set_part_offset(at);
    p.mutable_channel_op()->set_total_size(whole.size());
    const pb::Envelope a = ask(2, p, std::span<const char>(whole).subspan(at, part));
    ASSERT_FALSE(a.has_error()) << a.DebugString();
  }
  std::string all(whole.size() + 1, '\0');
  n = channel->recv(std::as_writable_bytes(std::span(all)), Timeout::none());
  ASSERT_TRUE(n.has_value()) << n.error().toString();
  EXPECT_EQ(*n, whole.size());
  EXPECT_TRUE(all.substr(0, *n) == whole) << "the parts did not make the message";
  // Bytes after anything but a send are refused, and nothing is received for them.
  const std::byte token{1};
  ASSERT_TRUE(channel->send(std::span(&token, 1), Timeout::none()).isOk());
  pb::Envelope recv = channelOp(ch->object, pb::ChannelOp::RECV);
  EXPECT_EQ(errorOf(ask(2, recv, first)), "only a send's bytes come after its request");
  pb::Envelope cancel = channelOp(ch->object, pb::ChannelOp::CANCEL);
  EXPECT_EQ(errorOf(ask(2, cancel, first)), "only a send's bytes come after its request");
  EXPECT_TRUE(channel->readable());
}

TEST_F(Dispatch, ThePeersRequestsAreRefusedFromALocalClient) {
  // A client of this node (a raw connection on the Unix socket: the Client API never sends
  // these) asks what only another node's dragond may: refused, and the lock stays as it is.
  const ObjectDescriptor lock = makeLock();
  auto channel = objects->channel(lock);
  ASSERT_TRUE(channel.has_value());
  pb::Envelope gone = channelOp(lock, pb::ChannelOp::HOLDER_GONE);
  gone.mutable_channel_op()->set_holder(Channel::holderWord(kServed, 1));
  pb::Envelope claim;
  claim.mutable_name_claim()->set_name("n");
  pb::Envelope end;
  end.mutable_peer_end_job();
  const std::vector<pb::Envelope> answers = askAsClient({gone, claim, end});
  ASSERT_EQ(answers.size(), 3u);
  EXPECT_EQ(errorOf(answers[0]), "CANCEL and HOLDER_GONE are between dragonds");
  EXPECT_EQ(errorOf(answers[1]), "not a request dragond serves");
  EXPECT_EQ(errorOf(answers[2]), "not a request dragond serves");
  EXPECT_FALSE(channel->isClosed());
  EXPECT_EQ(channel->size(), 1u);
}

struct DispatchUnderALauncher : Dispatch {
  void SetUp() override {
    joinThroughServer = true;
    Dispatch::SetUp();
  }
};

TEST_F(DispatchUnderALauncher, AGroupSignalThatCannotListTheGroupIsAnErrorAlsoWhenThisNodesMembersWereSignalled) {
  // Global services (node 0 here) cannot list the group: its members on other nodes are not
  // reached, so the requester must not hear Ok, though this node's members were signalled.
  nodes[0]->setRequestHandler(
      [](std::uint32_t, pb::Envelope& m, std::span<const char>, Cluster::Reply reply) {
    pb::Envelope answer;
    if (m.has_list_processes()) {
      pb::fillError(*answer.mutable_error(), Status(StatusCode::Internal, "listing failed"));
    } else {
      answer.mutable_ok();
    }
    reply(std::move(answer));
  });
  pb::Envelope spawn;
  spawn.mutable_spawn()->add_argv("/bin/sleep");
  spawn.mutable_spawn()->add_argv("600");
  spawn.mutable_spawn()->set_count(2);
  spawn.mutable_spawn()->set_stdout_mode(pb::Spawn::NULL_DEVICE);
  spawn.mutable_spawn()->set_stderr_mode(pb::Spawn::NULL_DEVICE);
  spawn.mutable_spawn()->set_stdin_mode(pb::Spawn::NULL_DEVICE);
  // Started by the launcher's connection, which stays open (a connection's processes end with
  // it), into a group of their own on this node.
  const std::vector<pb::Envelope> started = askOn(launcher.get(), {spawn}, false);
  ASSERT_EQ(started.size(), 1u);
  ASSERT_TRUE(started[0].has_spawned()) << started[0].DebugString();
  const std::uint64_t group = started[0].spawned().group();
  ASSERT_NE(group, 0u);
  pb::Envelope sig;
  sig.mutable_signal()->set_group(group);
  sig.mutable_signal()->set_signal(SIGTERM);
  const std::vector<pb::Envelope> answers = askOn(launcher.get(), {sig}, false);
  ASSERT_EQ(answers.size(), 1u);
  ASSERT_TRUE(answers[0].has_error()) << answers[0].DebugString();
  EXPECT_EQ(errorOf(answers[0]),
            "signalled the group's processes on this node only: listing failed");
  // This node's members did get the signal.
  std::optional<Result<std::vector<ExitRecord>>> exits;
  processes->wait({started[0].spawned().puid().begin(), started[0].spawned().puid().end()},
                  -1, [&](Result<std::vector<ExitRecord>> r) { exits = std::move(r); });
  ASSERT_TRUE(runUntil(*loop, [&] { return exits.has_value(); }));
  ASSERT_TRUE(exits->has_value()) << exits->error().toString();
  ASSERT_EQ((*exits)->size(), 2u);
  for (const auto& e : **exits) EXPECT_EQ(e.signal, SIGTERM);
}

}  // namespace
}  // namespace dragon::daemon
