// SPDX-License-Identifier: MIT
// dragond's Cluster over the in-process fake transport: forwarding and replies, lost nodes
// (failed endpoint, silence past cluster.node_timeout), malformed peer messages, and the
// validation of the node table.
#include "config/config.hpp"
#include "daemon/cluster.hpp"
#include "daemon/event_loop.hpp"
#include "daemon/transport.hpp"
#include "support/cluster_unit.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace dragon::daemon {
namespace {

namespace pb = dragon::protocol;

struct Fixture : ::testing::Test {
  static constexpr std::uint32_t kNodes = 3;
  std::unique_ptr<EventLoop> loop;
  std::shared_ptr<transport::FakeHub> hub = transport::makeFakeHub();
  std::vector<std::unique_ptr<Cluster>> nodes;
  std::vector<transport::Transport*> raw;  // each node's transport, owned by its Cluster

  void make(const config::Config& cfg) {
    auto l = EventLoop::create();
    ASSERT_TRUE(l.has_value());
    loop = std::make_unique<EventLoop>(std::move(*l));
    for (std::uint32_t i = 0; i < kNodes; ++i) {
      transport::TransportOptions o;
      o.selfNode = i;
      o.maxMessageBytes = Cluster::maxMessageBytes();
      auto t = transport::makeFakeTransport(hub, o);
      raw.push_back(t.get());
      auto c = Cluster::create(*loop, i, cfg, std::move(t));
      ASSERT_TRUE(c.has_value()) << c.error().toString();
      nodes.push_back(std::move(*c));
    }
  }

  pb::JoinCluster table(const std::string& secret = std::string(32, 's')) {
    return nodeTable(nodes, secret);
  }

  void joinAll(const config::Config& cfg) {
    make(cfg);
    for (std::uint32_t i = 0; i < kNodes; ++i) {
      ASSERT_TRUE(nodes[i]->join(table()).isOk());
    }
  }
};

TEST_F(Fixture, ForwardedRequestIsAnsweredThroughThePeersHandler) {
  joinAll(testConfig());
  nodes[2]->setRequestHandler(
      [](std::uint32_t from, pb::Envelope& req, std::span<const char>, Cluster::Reply reply) {
    pb::Envelope r;
    auto* e = r.mutable_process_list()->add_process();
    e->set_node(2);
    e->set_puid(from);  // echo who asked
    e->set_signal(req.has_list_processes() ? 1 : 0);
    reply(std::move(r));
  });
  std::optional<Result<pb::Envelope>> got;
  pb::Envelope req;
  req.mutable_list_processes()->set_this_node_only(true);
  nodes[1]->forward(2, req, [&](Result<pb::Envelope> r) { got = std::move(r); });
  ASSERT_TRUE(runUntil(*loop, [&] { return got.has_value(); }));
  ASSERT_TRUE(got->has_value()) << got->error().toString();
  ASSERT_EQ((*got)->process_list().process_size(), 1);
  EXPECT_EQ((*got)->process_list().process(0).puid(), 1u);
  EXPECT_EQ((*got)->process_list().process(0).signal(), 1);
}

TEST_F(Fixture, ARequestsDataTravelsAfterItsEnvelopeAndReachesTheHandlerWhole) {
  joinAll(testConfig());
  std::string seen;
  bool inEnvelope = true;
  nodes[2]->setRequestHandler(
      [&](std::uint32_t, pb::Envelope& req, std::span<const char> data, Cluster::Reply reply) {
        seen.assign(data.data(), data.size());
        inEnvelope = !req.channel_op().data().empty();
        reply(pb::Envelope(req));
      });
  std::string message(std::size_t{1} << 20, '\0');
  for (std::size_t i = 0; i < message.size(); ++i) message[i] = static_cast<char>(i * 7 + i / 251);
  pb::Envelope req;
  req.mutable_channel_op()->set_kind(pb::ChannelOp::SEND);
  std::optional<Result<pb::Envelope>> got;
  nodes[0]->forward(2, req, [&](Result<pb::Envelope> r) { got = std::move(r); },
                    std::span<const char>(message));
  ASSERT_TRUE(runUntil(*loop, [&] { return got.has_value(); }));
  ASSERT_TRUE(got->has_value()) << got->error().toString();
  EXPECT_FALSE(inEnvelope) << "the bytes are handed beside the request, not parsed into it";
  EXPECT_TRUE(seen == message) << "the handler saw " << seen.size() << " bytes";
}

TEST_F(Fixture, RepliesKeepTheirRequestsApartAndArriveInOrder) {
  joinAll(testConfig());
  nodes[1]->setRequestHandler(
      [](std::uint32_t, pb::Envelope& req, std::span<const char>, Cluster::Reply reply) {
    pb::Envelope r;
    r.mutable_job_ended()->set_exit_code(req.peer_end_job().exit_code());
    reply(std::move(r));
  });
  std::vector<int> codes;
  for (int i = 0; i < 1000; ++i) {
    pb::Envelope req;
    req.mutable_peer_end_job()->set_exit_code(i);
    nodes[0]->forward(1, req, [&codes](Result<pb::Envelope> r) {
      codes.push_back(r.has_value() ? r->job_ended().exit_code() : -1);
    });
  }
  ASSERT_TRUE(runUntil(*loop, [&] { return codes.size() == 1000; }));
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(codes[static_cast<std::size_t>(i)], i);
}

TEST_F(Fixture, AFailedNodeFailsWhatWaitsOnItWithNodeLostAndIsReportedOnce) {
  joinAll(testConfig());
  std::vector<Cluster::Reply> held;  // node 2 never answers
  nodes[2]->setRequestHandler(
      [&](std::uint32_t, pb::Envelope&, std::span<const char>, Cluster::Reply reply) {
    held.push_back(std::move(reply));
  });
  std::vector<std::uint32_t> lostSeen;
  nodes[0]->setLostHandler([&](std::uint32_t n, const Status& why) {
    EXPECT_EQ(why.code(), StatusCode::NodeLost);
    lostSeen.push_back(n);
  });
  std::vector<Status> results;
  for (int i = 0; i < 3; ++i) {
    pb::Envelope req;
    req.mutable_list_processes();
    nodes[0]->forward(2, req, [&](Result<pb::Envelope> r) {
      results.push_back(r.has_value() ? Status::ok() : r.error());
    });
  }
  ASSERT_TRUE(runUntil(*loop, [&] { return held.size() == 3; }));
  transport::fakeKillNode(hub, 2);
  ASSERT_TRUE(runUntil(*loop, [&] { return results.size() == 3; }));
  for (const auto& st : results) {
    EXPECT_EQ(st.code(), StatusCode::NodeLost);
    EXPECT_NE(std::string(st.message()).find("node 2 (n3)"), std::string::npos) << st.toString();
  }
  ASSERT_EQ(lostSeen, std::vector<std::uint32_t>{2});
  EXPECT_TRUE(nodes[0]->lost(2));
  // Later requests fail at once, and the other node still answers.
  std::optional<Status> late;
  pb::Envelope req;
  req.mutable_list_processes();
  nodes[0]->forward(2, req, [&](Result<pb::Envelope> r) { late = r.has_value() ? Status::ok() : r.error(); });
  ASSERT_TRUE(late.has_value());
  EXPECT_EQ(late->code(), StatusCode::NodeLost);
  nodes[1]->setRequestHandler(
      [](std::uint32_t, pb::Envelope&, std::span<const char>, Cluster::Reply reply) {
    pb::Envelope r;
    r.mutable_ok();
    reply(std::move(r));
  });
  std::optional<bool> okFrom1;
  nodes[0]->forward(1, req, [&](Result<pb::Envelope> r) { okFrom1 = r.has_value() && r->has_ok(); });
  ASSERT_TRUE(runUntil(*loop, [&] { return okFrom1.has_value(); }));
  EXPECT_TRUE(*okFrom1);
  EXPECT_EQ(lostSeen.size(), 1u);
}

TEST_F(Fixture, ANodeThatFallsSilentIsLostAfterTheNodeTimeoutAndEveryNodeIsTold) {
  joinAll(testConfig("10ms", "150ms"));
  std::vector<std::uint32_t> lostAt0, lostAt2;
  nodes[0]->setLostHandler([&](std::uint32_t n, const Status&) { lostAt0.push_back(n); });
  nodes[2]->setLostHandler([&](std::uint32_t n, const Status&) { lostAt2.push_back(n); });
  // Every node has greeted the head.
  std::optional<Status> ready;
  nodes[0]->whenAllJoined([&](Status st) { ready = st; });
  ASSERT_TRUE(runUntil(*loop, [&] { return ready.has_value(); }));
  ASSERT_TRUE(ready->isOk());
  // Node 2 forwards a request to node 1, which never answers it.
  nodes[1]->setRequestHandler(
      [](std::uint32_t, pb::Envelope&, std::span<const char>, Cluster::Reply) {});
  std::optional<Status> fromNode1;
  pb::Envelope req;
  req.mutable_list_processes();
  nodes[2]->forward(1, req, [&](Result<pb::Envelope> r) {
    fromNode1 = r.has_value() ? Status::ok() : r.error();
  });
  // Then node 1 goes silent (a partition: its endpoint does not fail, nobody is told).
  const auto t0 = std::chrono::steady_clock::now();
  transport::fakePartitionNode(hub, 1);
  ASSERT_TRUE(runUntil(*loop, [&] { return !lostAt0.empty() && fromNode1.has_value(); }));
  EXPECT_EQ(lostAt0, std::vector<std::uint32_t>{1});
  // Not before the timeout (heartbeats kept the others alive meanwhile).
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(100));
  EXPECT_FALSE(nodes[0]->lost(2));
  // Node 2 never talks to node 1 on its own (heartbeats are a star around the head): the
  // head's notice failed its request.
  EXPECT_EQ(fromNode1->code(), StatusCode::NodeLost);
  EXPECT_EQ(lostAt2, std::vector<std::uint32_t>{1});
}

TEST_F(Fixture, ANodeHeardFromWhileItsMessagesWaitBehindALargeOneIsNotLost) {
  // A large message still arriving holds back the node's later messages, its heartbeats
  // among them, for longer than node_timeout on a slow link: what arrives keeps it alive.
  joinAll(testConfig("10ms", "150ms"));
  std::vector<std::uint32_t> lostAt0;
  nodes[0]->setLostHandler([&](std::uint32_t n, const Status&) { lostAt0.push_back(n); });
  std::optional<Status> ready;
  nodes[0]->whenAllJoined([&](Status st) { ready = st; });
  ASSERT_TRUE(runUntil(*loop, [&] { return ready.has_value(); }));
  ASSERT_TRUE(ready->isOk());
  nodes[0]->setRequestHandler(
      [](std::uint32_t, pb::Envelope& req, std::span<const char>, Cluster::Reply reply) {
    reply(std::move(req));
  });
  transport::fakeHoldNode(hub, 1, true);
  std::optional<Status> answered;
  pb::Envelope req;
  req.mutable_list_processes();
  nodes[1]->forward(0, req, [&](Result<pb::Envelope> r) {
    answered = r.has_value() ? Status::ok() : r.error();
  });
  // Four node timeouts: nothing of node 1 is handed up meanwhile, not even its request.
  (void)runUntil(*loop, [&] { return !lostAt0.empty() || answered.has_value(); },
                 std::chrono::milliseconds(600));
  EXPECT_TRUE(lostAt0.empty()) << "node 1 was declared lost while it was heard from";
  EXPECT_FALSE(answered.has_value());
  transport::fakeHoldNode(hub, 1, false);
  ASSERT_TRUE(runUntil(*loop, [&] { return answered.has_value(); }));
  EXPECT_TRUE(answered->isOk()) << answered->toString();
  EXPECT_TRUE(lostAt0.empty());
}

TEST_F(Fixture, ANodeNotYetHeardFromIsNotTimedOutButTheJoinWaitIs) {
  make(testConfig("10ms", "100ms", "400ms"));
  ASSERT_TRUE(nodes[0]->join(table()).isOk());
  ASSERT_TRUE(nodes[1]->join(table()).isOk());
  std::vector<std::uint32_t> lost;
  nodes[0]->setLostHandler([&](std::uint32_t n, const Status&) { lost.push_back(n); });
  std::optional<Status> ready;
  nodes[0]->whenAllJoined([&](Status st) { ready = st; });
  ASSERT_TRUE(runUntil(*loop, [&] { return ready.has_value(); }));
  EXPECT_EQ(ready->code(), StatusCode::Timeout);
  EXPECT_TRUE(lost.empty()) << "node " << lost.front() << " was lost before it joined";
}

// A node's head frozen or cut off from the moment the job began: the node never hears from it,
// and must not wait on it for ever (its launcher, and every request it forwarded there).
TEST_F(Fixture, AHeadNeverHeardFromIsLostAfterTheConnectAndNodeTimeouts) {
  make(testConfig("10ms", "100ms", "300ms"));
  transport::fakePartitionNode(hub, 0);
  for (std::uint32_t i = 0; i < kNodes; ++i) ASSERT_TRUE(nodes[i]->join(table()).isOk());
  std::vector<std::pair<std::uint32_t, Status>> lostAt1;
  nodes[1]->setLostHandler([&](std::uint32_t n, const Status& why) { lostAt1.emplace_back(n, why); });
  std::optional<Status> answer;
  pb::Envelope req;
  req.mutable_list_processes();
  nodes[1]->forward(0, req, [&](Result<pb::Envelope> r) {
    answer = r.has_value() ? Status::ok() : r.error();
  });
  ASSERT_TRUE(runUntil(*loop, [&] { return answer.has_value() && !lostAt1.empty(); }));
  EXPECT_EQ(answer->code(), StatusCode::NodeLost) << answer->toString();
  ASSERT_EQ(lostAt1.size(), 1u);
  EXPECT_EQ(lostAt1.front().first, 0u);
  EXPECT_NE(std::string(lostAt1.front().second.message()).find("cluster.connect_timeout"),
            std::string::npos)
      << lostAt1.front().second.toString();
}

TEST_F(Fixture, AMalformedMessageFromAPeerIsDroppedAndTheLinkStays) {
  joinAll(testConfig());
  int requests = 0;
  nodes[0]->setRequestHandler([&](std::uint32_t, pb::Envelope& asked, std::span<const char>,
                                  Cluster::Reply reply) {
    ++requests;
    // First an answer with data after its envelope, which no answer has: dropped, so the
    // request is answered by the right one after it.
    pb::Envelope bogus;
    bogus.mutable_channel_op()->set_kind(pb::ChannelOp::SEND);
    bogus.set_peer_reply(true);
    bogus.set_request_id(asked.request_id());
    std::string bad;
    ASSERT_TRUE(pb::encode(bogus, std::span<const char>("data", 4), bad).isOk());
    ASSERT_TRUE(raw[0]->send(1, std::move(bad)).isOk());
    pb::Envelope r;
    r.mutable_ok();
    reply(std::move(r));
  });
  // Garbage, a truncated frame, a frame with trailing bytes, and an answer with data, all with
  // the right secret.
  ASSERT_TRUE(raw[1]->send(0, "not a frame at all").isOk());
  std::string frame;
  pb::Envelope req;
  req.mutable_list_processes();
  req.set_request_id(77);
  ASSERT_TRUE(pb::encode(req, frame).isOk());
  ASSERT_TRUE(raw[1]->send(0, frame.substr(0, frame.size() - 1)).isOk());
  ASSERT_TRUE(raw[1]->send(0, frame + "x").isOk());
  ASSERT_TRUE(raw[1]->send(0, "").isOk());
  std::optional<bool> ok;
  nodes[1]->forward(0, req, [&](Result<pb::Envelope> r) { ok = r.has_value() && r->has_ok(); });
  ASSERT_TRUE(runUntil(*loop, [&] { return ok.has_value(); }));
  EXPECT_TRUE(*ok);
  EXPECT_EQ(requests, 1);
  EXPECT_FALSE(nodes[0]->lost(1));
}

TEST_F(Fixture, ForwardingToANodeNotInTheJobIsNotFound) {
  joinAll(testConfig());
  std::optional<Status> st;
  pb::Envelope req;
  req.mutable_list_processes();
  nodes[0]->forward(9, req, [&](Result<pb::Envelope> r) { st = r.has_value() ? Status::ok() : r.error(); });
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->code(), StatusCode::NotFound);
}

TEST_F(Fixture, TheHeadIsReadyOnlyOnceEveryNodeHasJoinedWhateverTheOrder) {
  // A long heartbeat: only the greetings can make the head ready in time.
  make(testConfig("10s", "60s"));
  // Node 1 joins before the head (its greeting is dropped: the head has no secret yet).
  ASSERT_TRUE(nodes[1]->join(table()).isOk());
  ASSERT_TRUE(runUntil(*loop, [] { return false; }, std::chrono::milliseconds(20)) == false);
  ASSERT_TRUE(nodes[0]->join(table()).isOk());
  std::optional<Status> ready;
  nodes[0]->whenAllJoined([&](Status st) { ready = st; });
  ASSERT_TRUE(runUntil(*loop, [] { return false; }, std::chrono::milliseconds(50)) == false);
  EXPECT_FALSE(ready.has_value()) << "ready before node 2 joined";
  ASSERT_TRUE(nodes[2]->join(table()).isOk());  // after the head
  ASSERT_TRUE(runUntil(*loop, [&] { return ready.has_value(); }, std::chrono::milliseconds(2000)));
  EXPECT_TRUE(ready->isOk()) << ready->toString();
}

TEST_F(Fixture, ANodeThatNeverJoinsFailsTheHeadsWaitAfterTheConnectTimeout) {
  make(testConfig("10s", "60s", "200ms"));
  ASSERT_TRUE(nodes[0]->join(table()).isOk());
  ASSERT_TRUE(nodes[1]->join(table()).isOk());
  std::optional<Status> ready;
  nodes[0]->whenAllJoined([&](Status st) { ready = st; });
  ASSERT_TRUE(runUntil(*loop, [&] { return ready.has_value(); }));
  EXPECT_EQ(ready->code(), StatusCode::Timeout);
  EXPECT_NE(std::string(ready->message()).find("node 2 (n3)"), std::string::npos) << ready->toString();
  EXPECT_EQ(std::string(ready->message()).find("node 1"), std::string::npos) << ready->toString();
}

TEST_F(Fixture, ABadNodeTableIsRefused) {
  make(testConfig());
  auto j = table("short");
  EXPECT_EQ(nodes[0]->join(j).code(), StatusCode::InvalidArgument);  // secret too short
  j = table();
  j.mutable_node(0)->set_address(nodes[1]->address());
  EXPECT_EQ(nodes[0]->join(j).code(), StatusCode::InvalidArgument);  // not our address
  j = table();
  j.mutable_node(2)->set_node(1);
  EXPECT_EQ(nodes[0]->join(j).code(), StatusCode::InvalidArgument);  // listed twice
  j = table();
  j.set_head_node(7);
  EXPECT_EQ(nodes[0]->join(j).code(), StatusCode::InvalidArgument);  // no such head
  EXPECT_FALSE(nodes[0]->joined());
  EXPECT_TRUE(nodes[0]->join(table()).isOk());
  EXPECT_EQ(nodes[0]->join(table()).code(), StatusCode::AlreadyExists);
}

}  // namespace
}  // namespace dragon::daemon
