// SPDX-License-Identifier: MIT
// One conformance suite for both implementations of global services: the hosted tables, and
// the proxy another node uses (RemoteGlobalServices), here linked to hosted tables by an
// in-process fake of the transport that carries every request and answer as bytes and
// delivers the answers later (as the transport does), in order. Then what only the proxy has:
// several nodes racing for one name, a lost global services node, malformed requests.
#include "daemon/global_services.hpp"
#include "protocol/socket_io.hpp"

#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <optional>

namespace dragon::daemon {
namespace {
namespace pb = dragon::protocol;

ObjectDescriptor channelOn(std::uint32_t node, std::uint64_t id) {
  ObjectDescriptor d;
  d.kind = ObjectKind::Channel;
  d.node = node;
  d.id = id;
  d.poolId = id + 1000;
  d.offset = 4096;
  return d;
}

ProcessRecord processOn(std::uint32_t node, std::uint64_t puid, pid_t pid) {
  ProcessRecord r;
  r.node = node;
  r.puid = puid;
  r.pid = pid;
  r.argv = {"/bin/sleep", "5"};
  r.label = "sleeper";
  r.group = 7;
  r.job = 3;
  return r;
}

// The fake link: requests cross as bytes to the hosted tables at once (the global services
// node answers in the order requests arrive); answers come back as bytes when the test
// delivers them (settle), in order, as the event loop would run them.
class FakeLink {
 public:
  explicit FakeLink(HostedGlobalServices& hosted) : hosted_(hosted) {}

  RemoteGlobalServices::Forward forward() {
    return [this](pb::Envelope request, std::function<void(Result<pb::Envelope>)> done) {
      ++requests_;
      if (lost_) {
        answers_.push_back([done] { done(Status(StatusCode::NodeLost, "node 0 (n1) was lost")); });
        return;
      }
      pb::Envelope arrived;
      ASSERT_TRUE(arrived.ParseFromString(request.SerializeAsString()));
      pb::Envelope answer;
      if (!hosted_.serve(arrived, answer)) {
        pb::fillError(*answer.mutable_error(),
                      Status(StatusCode::InvalidArgument, "not a request of global services"));
      }
      // The transport carries only envelopes that say something.
      EXPECT_NE(answer.body_case(), pb::Envelope::BODY_NOT_SET) << arrived.DebugString();
      answers_.push_back([done, bytes = answer.SerializeAsString()] {
        pb::Envelope back;
        if (!back.ParseFromString(bytes)) {
          done(Status(StatusCode::Internal, "unparsable answer"));
          return;
        }
        done(std::move(back));
      });
    };
  }
  void settle() {
    for (int i = 0; i < 10000 && !answers_.empty(); ++i) {
      auto next = std::move(answers_.front());
      answers_.pop_front();
      next();
    }
    ASSERT_TRUE(answers_.empty());
  }
  void lose() { lost_ = true; }
  std::size_t pending() const { return answers_.size(); }
  std::size_t requests() const { return requests_; }

 private:
  HostedGlobalServices& hosted_;
  std::deque<std::function<void()>> answers_;
  bool lost_ = false;
  std::size_t requests_ = 0;
};

// Each implementation under test, with a way to let its answers arrive.
// A job of three nodes, granted 2, 1 and 1 CPUs.
const std::map<std::uint32_t, std::uint32_t> kCpus = {{0, 2}, {1, 1}, {2, 1}};

struct HostedImpl {
  HostedGlobalServices tables{kCpus};
  GlobalServices& services() { return tables; }
  void settle() {}
};

struct RemoteImpl {
  HostedGlobalServices tables{kCpus};
  FakeLink link{tables};
  RemoteGlobalServices proxy{0, link.forward()};
  GlobalServices& services() { return proxy; }
  void settle() { link.settle(); }
};

template <typename Impl>
class GlobalServicesConformance : public ::testing::Test {
 protected:
  Impl impl;
  GlobalServices& gs() { return impl.services(); }

  Status claim(const std::string& name, const ObjectDescriptor& d, bool replace = false) {
    std::optional<Status> out;
    int calls = 0;
    gs().claimName(name, d, replace, [&](Status st) {
      ++calls;
      out = st;
    });
    impl.settle();
    EXPECT_EQ(calls, 1);
    return out.value_or(Status(StatusCode::Internal, "no answer"));
  }
  Result<ObjectDescriptor> lookup(const std::string& name) {
    std::optional<Result<ObjectDescriptor>> out;
    int calls = 0;
    gs().lookupName(name, [&](Result<ObjectDescriptor> r) {
      ++calls;
      out = std::move(r);
    });
    impl.settle();
    EXPECT_EQ(calls, 1);
    return out.value_or(Status(StatusCode::Internal, "no answer"));
  }
  Result<std::uint32_t> place() {
    std::optional<Result<std::uint32_t>> out;
    int calls = 0;
    gs().place([&](Result<std::uint32_t> r) {
      ++calls;
      out = std::move(r);
    });
    impl.settle();
    EXPECT_EQ(calls, 1);
    return out.value_or(Status(StatusCode::Internal, "no answer"));
  }
  std::vector<ProcessRecord> list() {
    std::optional<Result<std::vector<ProcessRecord>>> out;
    gs().listProcesses([&](Result<std::vector<ProcessRecord>> r) { out = std::move(r); });
    impl.settle();
    EXPECT_TRUE(out.has_value());
    EXPECT_TRUE(out->has_value());
    return out.has_value() && out->has_value() ? **out : std::vector<ProcessRecord>{};
  }
};

using Implementations = ::testing::Types<HostedImpl, RemoteImpl>;
TYPED_TEST_SUITE(GlobalServicesConformance, Implementations);

TYPED_TEST(GlobalServicesConformance, ClaimedNameIsFoundAndExclusive) {
  const auto a = channelOn(1, 11);
  const auto b = channelOn(2, 22);
  EXPECT_EQ(this->lookup("jobs").error().code(), StatusCode::NotFound);
  ASSERT_TRUE(this->claim("jobs", a).isOk());
  auto found = this->lookup("jobs");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(*found, a);
  // Another object, on any node, with or without replace: taken, and naming the holder's node.
  Status taken = this->claim("jobs", b);
  EXPECT_EQ(taken.code(), StatusCode::AlreadyExists);
  EXPECT_NE(std::string(taken.message()).find("node 1"), std::string::npos) << taken.message();
  EXPECT_EQ(this->claim("jobs", b, true).code(), StatusCode::AlreadyExists);
  EXPECT_EQ(*this->lookup("jobs"), a);
  // The same object again is no conflict.
  EXPECT_TRUE(this->claim("jobs", a).isOk());
}

TYPED_TEST(GlobalServicesConformance, ReplaceTakesOverOnlyAnObjectOfTheSameNode) {
  const auto old = channelOn(1, 11);
  const auto rebound = channelOn(1, 12);
  ASSERT_TRUE(this->claim("addr", old).isOk());
  EXPECT_EQ(this->claim("addr", rebound).code(), StatusCode::AlreadyExists);
  ASSERT_TRUE(this->claim("addr", rebound, true).isOk());
  EXPECT_EQ(*this->lookup("addr"), rebound);
}

TYPED_TEST(GlobalServicesConformance, ReleaseDropsOnlyTheObjectItNames) {
  const auto a = channelOn(1, 11);
  const auto b = channelOn(1, 12);
  ASSERT_TRUE(this->claim("n", a).isOk());
  this->gs().releaseName("n", b);  // stale: the name is a's
  this->impl.settle();
  EXPECT_EQ(*this->lookup("n"), a);
  this->gs().releaseName("n", a);
  this->impl.settle();
  EXPECT_EQ(this->lookup("n").error().code(), StatusCode::NotFound);
  ASSERT_TRUE(this->claim("n", b).isOk());  // free again
  this->gs().releaseName("never-claimed", a);
  this->impl.settle();
}

TYPED_TEST(GlobalServicesConformance, BadNamesAreRefused) {
  EXPECT_EQ(this->claim("", channelOn(1, 1)).code(), StatusCode::InvalidArgument);
  EXPECT_EQ(this->claim(std::string(256, 'x'), channelOn(1, 1)).code(),
            StatusCode::InvalidArgument);
  EXPECT_TRUE(this->claim(std::string(255, 'x'), channelOn(1, 1)).isOk());
  EXPECT_EQ(this->lookup("").error().code(), StatusCode::NotFound);
}

TYPED_TEST(GlobalServicesConformance, ProcessTableFollowsStartsAndEnds) {
  auto p1 = processOn(1, (std::uint64_t{1} << 40) + 1, 100);
  auto p2 = processOn(0, (std::uint64_t{0} << 40) + 5, 200);
  auto p3 = processOn(1, (std::uint64_t{1} << 40) + 2, 101);
  this->gs().processStarted(p1);
  this->gs().processStarted(p2);
  this->gs().processStarted(p3);
  auto all = this->list();
  ASSERT_EQ(all.size(), 3u);
  // By node, then puid; every field kept.
  EXPECT_EQ(all[0].puid, p2.puid);
  EXPECT_EQ(all[1].puid, p1.puid);
  EXPECT_EQ(all[2].puid, p3.puid);
  EXPECT_EQ(all[1].pid, 100);
  EXPECT_EQ(all[1].argv, p1.argv);
  EXPECT_EQ(all[1].label, "sleeper");
  EXPECT_EQ(all[1].group, 7u);
  EXPECT_EQ(all[1].job, 3u);
  EXPECT_TRUE(all[1].running);

  p1.running = false;
  p1.signal = 9;
  this->gs().processEnded(p1);
  p3.running = false;
  p3.exitCode = 3;
  this->gs().processEnded(p3);
  all = this->list();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_FALSE(all[1].running);
  EXPECT_EQ(all[1].signal, 9);
  EXPECT_FALSE(all[2].running);
  EXPECT_EQ(all[2].exitCode, 3);
  EXPECT_TRUE(all[0].running);
}

TYPED_TEST(GlobalServicesConformance, GroupsSpanNodes) {
  auto a = processOn(1, (std::uint64_t{1} << 40) + 1, 100);  // group 7, on node 1
  auto b = processOn(2, (std::uint64_t{2} << 40) + 1, 200);  // group 7 too, on node 2
  auto c = processOn(2, (std::uint64_t{2} << 40) + 2, 201);
  c.group = 8;
  this->gs().processStarted(a);
  this->gs().processStarted(b);
  this->gs().processStarted(c);
  auto members = [&](std::uint64_t group) {
    std::optional<Result<std::vector<ProcessRecord>>> out;
    this->gs().listGroup(group, [&](Result<std::vector<ProcessRecord>> r) { out = std::move(r); });
    this->impl.settle();
    EXPECT_TRUE(out.has_value() && out->has_value());
    std::vector<std::uint64_t> puids;
    if (out.has_value() && out->has_value()) {
      for (const auto& r : **out) puids.push_back(r.puid);
    }
    return puids;
  };
  EXPECT_EQ(members(7), (std::vector<std::uint64_t>{a.puid, b.puid}));
  EXPECT_EQ(members(8), (std::vector<std::uint64_t>{c.puid}));
  EXPECT_TRUE(members(9).empty());
  EXPECT_TRUE(members(0).empty());  // 0 is no group, not every process
  this->impl.tables.nodeLost(2);
  EXPECT_EQ(members(7), (std::vector<std::uint64_t>{a.puid}));
}

TYPED_TEST(GlobalServicesConformance, SyncCompletesAfterEarlierCalls) {
  this->gs().processStarted(processOn(2, (std::uint64_t{2} << 40) + 1, 300));
  bool synced = false;
  this->gs().sync([&](Status st) {
    EXPECT_TRUE(st.isOk()) << st.toString();
    synced = true;
  });
  this->impl.settle();
  EXPECT_TRUE(synced);
  EXPECT_EQ(this->list().size(), 1u);
}

TYPED_TEST(GlobalServicesConformance, LostNodeLeavesTheTables) {
  ASSERT_TRUE(this->claim("on2", channelOn(2, 21)).isOk());
  ASSERT_TRUE(this->claim("on1", channelOn(1, 11)).isOk());
  this->gs().processStarted(processOn(2, (std::uint64_t{2} << 40) + 1, 300));
  this->gs().processStarted(processOn(1, (std::uint64_t{1} << 40) + 1, 301));
  this->impl.tables.nodeLost(2);  // what the global services node does when it hears
  EXPECT_EQ(this->lookup("on2").error().code(), StatusCode::NotFound);
  EXPECT_TRUE(this->lookup("on1").has_value());
  auto all = this->list();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].node, 1u);
  ASSERT_TRUE(this->claim("on2", channelOn(1, 12)).isOk());  // the name is free for others
}

TYPED_TEST(GlobalServicesConformance, PlacementIsWeightedRoundRobinOverLiveNodes) {
  // Weights 2, 1, 1: of every 4 turns, two go to node 0, spread between the others.
  std::vector<std::uint32_t> turns;
  for (int i = 0; i < 8; ++i) {
    auto n = this->place();
    ASSERT_TRUE(n.has_value()) << n.error().toString();
    turns.push_back(*n);
  }
  EXPECT_EQ(turns, (std::vector<std::uint32_t>{0, 1, 2, 0, 0, 1, 2, 0}));
  this->impl.tables.nodeLost(1);
  std::map<std::uint32_t, int> count;
  for (int i = 0; i < 30; ++i) ++count[*this->place()];
  EXPECT_EQ(count.count(1), 0u);
  EXPECT_EQ(count[0], 20);
  EXPECT_EQ(count[2], 10);
  this->impl.tables.nodeLost(0);
  this->impl.tables.nodeLost(2);
  EXPECT_EQ(this->place().error().code(), StatusCode::NotFound);
}

// ---- the proxy only ----

TEST(RemoteGlobalServices, CallsCompleteOnlyWhenTheAnswerArrives) {
  HostedGlobalServices tables;
  FakeLink link(tables);
  RemoteGlobalServices proxy(0, link.forward());
  bool answered = false;
  proxy.claimName("late", channelOn(1, 1), false, [&](Status st) {
    EXPECT_TRUE(st.isOk());
    answered = true;
  });
  EXPECT_FALSE(answered);
  EXPECT_EQ(link.pending(), 1u);
  link.settle();
  EXPECT_TRUE(answered);
}

TEST(RemoteGlobalServices, TwoNodesRacingForOneNameGetOneWinner) {
  HostedGlobalServices tables(kCpus);
  FakeLink link(tables);
  RemoteGlobalServices node1(0, link.forward());
  RemoteGlobalServices node2(0, link.forward());
  for (int round = 0; round < 50; ++round) {
    const std::string name = "race" + std::to_string(round);
    int won = 0;
    int lost = 0;
    auto tally = [&](Status st) {
      if (st.isOk()) ++won;
      if (st.code() == StatusCode::AlreadyExists) ++lost;
    };
    // Both claims are in flight before either answer arrives.
    if (round % 2 == 0) {
      node1.claimName(name, channelOn(1, 100 + round), false, tally);
      node2.claimName(name, channelOn(2, 200 + round), false, tally);
    } else {
      node2.claimName(name, channelOn(2, 200 + round), false, tally);
      node1.claimName(name, channelOn(1, 100 + round), false, tally);
    }
    link.settle();
    EXPECT_EQ(won, 1) << name;
    EXPECT_EQ(lost, 1) << name;
    std::optional<Result<ObjectDescriptor>> seen1;
    std::optional<Result<ObjectDescriptor>> seen2;
    node1.lookupName(name, [&](Result<ObjectDescriptor> r) { seen1 = r; });
    node2.lookupName(name, [&](Result<ObjectDescriptor> r) { seen2 = r; });
    link.settle();
    ASSERT_TRUE(seen1.has_value() && seen1->has_value());
    ASSERT_TRUE(seen2.has_value() && seen2->has_value());
    EXPECT_EQ(**seen1, **seen2);  // every node sees the same winner
    EXPECT_EQ((*seen1)->node, round % 2 == 0 ? 1u : 2u);
  }
  // Placement is job-wide: two nodes asking in turn share one sequence of turns.
  std::vector<std::uint32_t> turns;
  for (int i = 0; i < 4; ++i) {
    (i % 2 == 0 ? node1 : node2).place([&](Result<std::uint32_t> r) { turns.push_back(*r); });
  }
  link.settle();
  EXPECT_EQ(turns, (std::vector<std::uint32_t>{0, 1, 2, 0}));
}

TEST(RemoteGlobalServices, ALostGlobalServicesNodeFailsEveryCallWithNodeLost) {
  HostedGlobalServices tables;
  FakeLink link(tables);
  RemoteGlobalServices proxy(0, link.forward());
  link.lose();
  int answers = 0;
  proxy.claimName("x", channelOn(1, 1), false, [&](Status st) {
    EXPECT_EQ(st.code(), StatusCode::NodeLost);
    ++answers;
  });
  proxy.lookupName("x", [&](Result<ObjectDescriptor> r) {
    EXPECT_EQ(r.error().code(), StatusCode::NodeLost);
    ++answers;
  });
  proxy.listProcesses([&](Result<std::vector<ProcessRecord>> r) {
    EXPECT_EQ(r.error().code(), StatusCode::NodeLost);
    ++answers;
  });
  proxy.sync([&](Status st) {
    EXPECT_EQ(st.code(), StatusCode::NodeLost);
    ++answers;
  });
  proxy.place([&](Result<std::uint32_t> r) {
    EXPECT_EQ(r.error().code(), StatusCode::NodeLost);
    ++answers;
  });
  proxy.listGroup(7, [&](Result<std::vector<ProcessRecord>> r) {
    EXPECT_EQ(r.error().code(), StatusCode::NodeLost);
    ++answers;
  });
  // One-way calls go nowhere, without an error to anyone.
  proxy.releaseName("x", channelOn(1, 1));
  proxy.processStarted(processOn(1, 1, 1));
  proxy.processEnded(processOn(1, 1, 1));
  link.settle();
  EXPECT_EQ(answers, 6);
  EXPECT_EQ(link.requests(), 9u);
}

TEST(HostedGlobalServices, MalformedRequestsAreAnsweredWithAnError) {
  HostedGlobalServices tables;
  pb::Envelope claim;
  claim.mutable_name_claim()->set_name("bad");
  claim.mutable_name_claim()->mutable_object()->set_serialized(std::string(32, '\x7f'));
  pb::Envelope answer;
  ASSERT_TRUE(tables.serve(claim, answer));
  ASSERT_TRUE(answer.has_error());
  EXPECT_EQ(pb::statusFromError(answer.error()).code(), StatusCode::InvalidArgument);

  pb::Envelope release;  // an unparsable object: nothing happens
  release.mutable_name_release()->set_name("bad");
  answer.Clear();
  ASSERT_TRUE(tables.serve(release, answer));
  EXPECT_TRUE(answer.has_ok());

  pb::Envelope other;  // not a request of global services: not served
  other.mutable_spawn();
  answer.Clear();
  EXPECT_FALSE(tables.serve(other, answer));
  pb::Envelope thisNode;
  thisNode.mutable_list_processes()->set_this_node_only(true);
  EXPECT_FALSE(tables.serve(thisNode, answer));
}

}  // namespace
}  // namespace dragon::daemon
