// cluster::Router in an in-process cluster: three nodes, each a real core::Core on its own
// RocksDB store, connected by in-process links that run every call and every answer or push
// on a per-direction FIFO thread (as a TLS peer link would: nothing completes on the
// caller's thread, order on one link is kept), and a fake routing table per node.

#include "cluster/router.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "../store/store_test_util.h"
#include "common/clock.h"
#include "core/core.h"
#include "core/groups.h"
#include "store/inbox_store.h"
#include "support/wait_for.h"

namespace iris::cluster {
namespace {

using namespace std::chrono_literals;
constexpr auto kWait = 20s;  // generous bound for anything the tests wait for

// ---- routing table ----

class FakeRoutes final : public RouteTable {
 public:
  std::optional<NodeId> OwnerOf(uint64_t id) const override {
    std::lock_guard<std::mutex> lock(mu_);
    if (not_served_.count(id) != 0) return std::nullopt;
    return NamedLocked(id);
  }
  std::optional<NodeId> NamedOwnerOf(uint64_t id) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return NamedLocked(id);
  }
  void Set(uint64_t id, NodeId node) {
    std::lock_guard<std::mutex> lock(mu_);
    owners_[id] = node;
  }
  // As this node's PlacementRoutes while the map names it but it does not serve the shard
  // (a replica deposed, or not taken over yet): OwnerOf nullopt, NamedOwnerOf the owner.
  void SetNotServed(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    not_served_.insert(id);
  }

 private:
  NodeId NamedLocked(uint64_t id) const {
    auto it = owners_.find(id);
    if (it != owners_.end()) return it->second;
    return static_cast<NodeId>(1 + id % 3);
  }

  mutable std::mutex mu_;
  std::map<uint64_t, NodeId> owners_;
  std::set<uint64_t> not_served_;
};

// ---- one direction of a peer link: a FIFO thread ----

class Link {
 public:
  Link() : thread_([this] { Run(); }) {}
  ~Link() { Stop(); }
  void Post(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;  // the link is down: dropped
    jobs_.push_back(std::move(job));
    cv_.notify_all();
  }
  // Whether nothing is queued or running.
  bool Idle() {
    std::lock_guard<std::mutex> lock(mu_);
    return jobs_.empty() && !running_;
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
      jobs_.clear();
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }
  // Answers crossing this link: the next `n` are replaced by UNAVAILABLE (the work was
  // done, its answer lost).
  std::atomic<int> lose_answers{0};
  // A slow peer: what is posted waits (in order) until Resume().
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  void Resume() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stopped_ || (!held_ && !jobs_.empty()); });
      if (stopped_) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      running_ = true;
      lock.unlock();
      job();
      lock.lock();
      running_ = false;
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool running_ = false;
  bool stopped_ = false;
  bool held_ = false;
  std::thread thread_;
};

class Links {
 public:
  Link& Between(NodeId from, NodeId to) { return *links_[(from - 1) * 3 + (to - 1)]; }
  // Waits until every link is idle twice in a row (a job may post to another link).
  bool WaitQuiet() {
    const auto end = std::chrono::steady_clock::now() + kWait;
    int quiet_passes = 0;
    while (std::chrono::steady_clock::now() < end) {
      bool idle = true;
      for (auto& l : links_) idle = idle && l->Idle();
      quiet_passes = idle ? quiet_passes + 1 : 0;
      if (quiet_passes >= 2) return true;
      std::this_thread::yield();
    }
    return false;
  }
  void StopAll() {
    for (auto& l : links_) l->Stop();
  }

 private:
  std::array<std::unique_ptr<Link>, 9> links_ = {
      std::make_unique<Link>(), std::make_unique<Link>(), std::make_unique<Link>(),
      std::make_unique<Link>(), std::make_unique<Link>(), std::make_unique<Link>(),
      std::make_unique<Link>(), std::make_unique<Link>(), std::make_unique<Link>()};
};

// The answer of a call from `from` to `to`: back over the link to -> from.
template <typename R>
std::function<void(R)> Back(Link& back, std::function<void(R)> done) {
  return [&back, done = std::move(done)](R r) mutable {
    if (back.lose_answers.load() > 0 && back.lose_answers.fetch_sub(1) > 0) {
      r = R(Unavailable("the answer was lost on the link"));
    }
    back.Post([done = std::move(done), r = std::move(r)]() mutable { done(std::move(r)); });
  };
}

// A remote node's core as seen from `from`: every call crosses the link from -> to, every
// answer the link to -> from.
class LinkedCore final : public core::CoreApi {
 public:
  LinkedCore(Link& there, Link& back, core::CoreApi& target)
      : there_(there), back_(back), t_(target) {}

  void RegisterSession(uint64_t user, core::SessionRef ref) override {
    there_.Post([this, user, ref] { t_.RegisterSession(user, ref); });
  }
  void ReRegisterSession(uint64_t user, core::SessionRef ref) override {
    there_.Post([this, user, ref] { t_.ReRegisterSession(user, ref); });
  }
  void UnregisterSession(uint64_t user, core::SessionRef ref, const core::RateDebt& debt) override {
    there_.Post([this, user, ref, debt] { t_.UnregisterSession(user, ref, debt); });
  }
  bool Typing(uint64_t from, const v1::Typing& t) override {
    there_.Post([this, from, t] { t_.Typing(from, t); });
    return true;
  }
  void Unsubscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users) override {
    there_.Post([this, ref, users] { t_.Unsubscribe(ref, users); });
  }
  core::PressureReport ReportPressure(double, int64_t) override { return {}; }
  void Send(uint64_t sender, const v1::Send& send, const std::string& trace_id, SendDone done,
            uint64_t parent_span_id) override {
    there_.Post([this, sender, send, trace_id, parent_span_id, d = Back(back_, std::move(done))] {
      t_.Send(sender, send, trace_id, d, parent_span_id);
    });
  }
  void Receipt(uint64_t author, const v1::Receipt& r, SendDone done) override {
    there_.Post([this, author, r, d = Back(back_, std::move(done))] { t_.Receipt(author, r, d); });
  }
  void UpdateSettings(uint64_t user, const v1::Settings& s, StatusDone done) override {
    there_.Post(
        [this, user, s, d = Back(back_, std::move(done))] { t_.UpdateSettings(user, s, d); });
  }
  void Subscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users,
                 PresenceDone done) override {
    there_.Post(
        [this, ref, users, d = Back(back_, std::move(done))] { t_.Subscribe(ref, users, d); });
  }
  void QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) override {
    there_.Post([this, users, d = Back(back_, std::move(done))] { t_.QueryPresence(users, d); });
  }
  void UploadKeys(uint64_t user, const v1::KeysUpload& u, StatusDone done) override {
    there_.Post([this, user, u, d = Back(back_, std::move(done))] { t_.UploadKeys(user, u, d); });
  }
  void FetchKeys(uint64_t user, KeysDone done) override {
    there_.Post([this, user, d = Back(back_, std::move(done))] { t_.FetchKeys(user, d); });
  }
  void CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) override {
    there_.Post(
        [this, owner, m, d = Back(back_, std::move(done))] { t_.CreateGroup(owner, m, d); });
  }
  void UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) override {
    there_.Post([this, user, m, d = Back(back_, std::move(done))] { t_.UpdateGroup(user, m, d); });
  }
  void GetGroup(uint64_t user, uint64_t gid, GroupDone done) override {
    there_.Post([this, user, gid, d = Back(back_, std::move(done))] { t_.GetGroup(user, gid, d); });
  }
  void Scan(uint64_t user, uint64_t after, uint32_t limit, size_t max_bytes,
            PageDone done) override {
    there_.Post([this, user, after, limit, max_bytes, d = Back(back_, std::move(done))] {
      t_.Scan(user, after, limit, max_bytes, d);
    });
  }
  void History(uint64_t user, uint64_t before, uint32_t limit, size_t max_bytes,
               PageDone done) override {
    there_.Post([this, user, before, limit, max_bytes, d = Back(back_, std::move(done))] {
      t_.History(user, before, limit, max_bytes, d);
    });
  }
  void AppendEnvelopes(uint64_t sender, const std::string& key, std::vector<v1::Envelope> envelopes,
                       SendDone done) override {
    there_.Post([this, sender, key, envelopes, d = Back(back_, std::move(done))] {
      t_.AppendEnvelopes(sender, key, envelopes, d);
    });
  }
  void GetSettings(uint64_t user, SettingsDone done) override {
    there_.Post([this, user, d = Back(back_, std::move(done))] { t_.GetSettings(user, d); });
  }
  void CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                    ConsentDone done) override {
    there_.Post([this, inviter, users, wrote_only, d = Back(back_, std::move(done))] {
      t_.CheckConsent(inviter, users, wrote_only, d);
    });
  }
  void RelayTyping(uint64_t to, const v1::Typing& t) override {
    there_.Post([this, to, t] { t_.RelayTyping(to, t); });
  }

 private:
  Link& there_;
  Link& back_;
  core::CoreApi& t_;
};

// Pushes from `from`'s core to sessions held by `to`: over the link from -> to.
class LinkedSink final : public core::EdgeSink {
 public:
  LinkedSink(Link& link, core::EdgeSink& target) : link_(link), t_(target) {}
  void Deliver(const core::SessionRef& to, const v1::Envelope& e) override {
    link_.Post([this, to, e] { t_.Deliver(to, e); });
  }
  void Replace(const core::SessionRef& old) override {
    link_.Post([this, old] { t_.Replace(old); });
  }
  void SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& d) override {
    link_.Post([this, to, user, d] { t_.SettleRate(to, user, d); });
  }
  void SendPresence(const core::SessionRef& to, const v1::Presence& p) override {
    link_.Post([this, to, p] { t_.SendPresence(to, p); });
  }
  void SendTyping(const core::SessionRef& to, const v1::Typing& t) override {
    link_.Post([this, to, t] { t_.SendTyping(to, t); });
  }

 private:
  Link& link_;
  core::EdgeSink& t_;
};

// ---- a node's edge: records what reaches its sessions ----

class RecordingEdge final : public core::EdgeSink {
 public:
  struct Pushed {
    core::SessionRef to;
    v1::Envelope envelope;
  };
  void Deliver(const core::SessionRef& to, const v1::Envelope& e) override {
    std::function<void(const core::SessionRef&, const v1::Envelope&)> hook;
    {
      std::lock_guard<std::mutex> lock(mu_);
      delivered.push_back({to, e});
      hook = on_deliver;
      cv_.notify_all();
    }
    if (hook) hook(to, e);
  }
  void Replace(const core::SessionRef& old) override {
    std::lock_guard<std::mutex> lock(mu_);
    replaced.push_back(old);
    cv_.notify_all();
  }
  void SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& d) override {
    std::lock_guard<std::mutex> lock(mu_);
    settled.push_back({to, user, d});
    cv_.notify_all();
  }
  void SendPresence(const core::SessionRef& to, const v1::Presence& p) override {
    std::lock_guard<std::mutex> lock(mu_);
    presence.emplace_back(to, p);
    cv_.notify_all();
  }
  void SendTyping(const core::SessionRef& to, const v1::Typing& t) override {
    std::lock_guard<std::mutex> lock(mu_);
    typing.emplace_back(to, t);
    cv_.notify_all();
  }
  // Waits (bounded) until `pred` holds; evaluated under the lock.
  template <typename Pred>
  bool WaitFor(Pred pred) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return pred(*this); });
  }
  template <typename F>
  auto Locked(F f) {
    std::lock_guard<std::mutex> lock(mu_);
    return f(*this);
  }

  std::vector<Pushed> delivered;
  std::vector<core::SessionRef> replaced;
  struct Settled {
    core::SessionRef to;
    uint64_t user = 0;
    core::RateDebt debt;
  };
  std::vector<Settled> settled;
  std::vector<std::pair<core::SessionRef, v1::Presence>> presence;
  std::vector<std::pair<core::SessionRef, v1::Typing>> typing;
  void SetHook(std::function<void(const core::SessionRef&, const v1::Envelope&)> hook) {
    std::lock_guard<std::mutex> lock(mu_);
    on_deliver = std::move(hook);
  }

 private:
  std::function<void(const core::SessionRef&, const v1::Envelope&)> on_deliver;
  std::mutex mu_;
  std::condition_variable cv_;
};

// ---- the cluster ----

class TestPeers final : public Peers {
 public:
  core::CoreApi* PeerCore(NodeId node) override {
    {
      std::lock_guard<std::mutex> lock(down_mu_);
      if (down_.count(node) != 0) return nullptr;  // its link is not up (being dialled)
    }
    auto it = cores.find(node);
    return it == cores.end() ? nullptr : it->second.get();
  }
  core::EdgeSink* PeerSink(NodeId node) override {
    auto it = sinks.find(node);
    return it == sinks.end() ? nullptr : it->second.get();
  }
  void SetLinkUp(NodeId node, bool up) {
    std::lock_guard<std::mutex> lock(down_mu_);
    if (up) {
      down_.erase(node);
    } else {
      down_.insert(node);
    }
  }
  std::map<NodeId, std::unique_ptr<LinkedCore>> cores;
  std::map<NodeId, std::unique_ptr<LinkedSink>> sinks;

 private:
  std::mutex down_mu_;
  std::set<NodeId> down_;
};

struct Node {
  NodeId id;
  FakeRoutes routes;
  TestPeers peers;
  RecordingEdge edge;
  std::unique_ptr<store::InboxStore> store;
  std::unique_ptr<Router> router;
  std::unique_ptr<core::Core> core;
};

class Cluster {
 public:
  Cluster() {
    RouterOptions ro;
    ro.deadline = 10s;
    ro.initial_backoff = 1ms;
    ro.max_backoff = 20ms;
    for (NodeId n = 1; n <= 3; ++n) {
      auto node = std::make_unique<Node>();
      node->id = n;
      store::StoreOptions so;
      so.path = dir_.Sub("node-" + std::to_string(n));
      so.node_id = static_cast<uint8_t>(n);
      so.write_buffer_bytes = 1 << 20;
      so.block_cache_bytes = 1 << 20;
      so.run_archiver = false;
      auto st = store::InboxStore::Open(so);
      if (!st.ok()) std::abort();
      node->store = std::move(st).value();
      node->router = std::make_unique<Router>(n, node->routes, node->peers, ro);
      core::CoreOptions co;
      co.read_workers = 2;
      co.write_workers = 2;
      node->core =
          std::make_unique<core::Core>(*node->store, *node->router, SystemClock::Instance(), co);
      node->router->SetLocalCore(node->core.get());
      node->router->SetLocalEdge(&node->edge);
      nodes_[n - 1] = std::move(node);
    }
    for (NodeId a = 1; a <= 3; ++a) {
      for (NodeId b = 1; b <= 3; ++b) {
        if (a == b) continue;
        N(a).peers.cores[b] = std::make_unique<LinkedCore>(
            links_.Between(a, b), links_.Between(b, a), N(b).router->Served());
        N(a).peers.sinks[b] =
            std::make_unique<LinkedSink>(links_.Between(a, b), N(b).router->Incoming());
      }
    }
  }

  ~Cluster() {
    links_.WaitQuiet();
    for (auto& n : nodes_) n->core->StopWorkers();
    links_.WaitQuiet();
    for (auto& n : nodes_) n->store->Stop();
    links_.StopAll();
    for (auto& n : nodes_) n->core.reset();
    for (auto& n : nodes_) n->router.reset();
  }

  Node& N(NodeId n) { return *nodes_[n - 1]; }
  Router& R(NodeId n) { return *N(n).router; }
  Links& links() { return links_; }
  // Owner of `id` in every node's table.
  void SetOwner(uint64_t id, NodeId owner) {
    for (auto& n : nodes_) n->routes.Set(id, owner);
  }
  // The messages of `user`'s inbox in node `n`'s store.
  std::vector<v1::Envelope> Inbox(NodeId n, uint64_t user) {
    auto page = N(n).store->Scan(user, 0, 10000, 64 << 20);
    EXPECT_TRUE(page.ok());
    return page.ok() ? page->messages : std::vector<v1::Envelope>{};
  }

 private:
  store::testing::TempDir dir_;
  Links links_;
  std::array<std::unique_ptr<Node>, 3> nodes_;
};

template <typename R, typename Call>
R Await(Call call) {
  auto p = std::make_shared<std::promise<R>>();
  auto f = p->get_future();
  call([p](R r) { p->set_value(std::move(r)); });
  if (f.wait_for(kWait) != std::future_status::ready) {
    ADD_FAILURE() << "no answer within the deadline";
    return R(Internal("no answer"));
  }
  return f.get();
}

v1::Send MakeSend(uint64_t recipient, std::string body, std::string key, uint64_t group = 0) {
  v1::Send s;
  s.set_recipient(recipient);
  s.set_group_id(group);
  s.set_body(std::move(body));
  s.set_idempotency_key(std::move(key));
  return s;
}

Result<core::AppendResult> SendVia(Router& r, uint64_t sender, const v1::Send& s) {
  return Await<Result<core::AppendResult>>(
      [&](core::CoreApi::SendDone d) { r.Send(sender, s, "", std::move(d)); });
}

core::SessionRef Ref(uint64_t session) {
  return core::SessionRef{.node = 0, .edge = 0, .session = session};
}

size_t CountKind(const std::vector<v1::Envelope>& v, v1::Kind kind) {
  return static_cast<size_t>(
      std::count_if(v.begin(), v.end(), [&](const v1::Envelope& e) { return e.kind() == kind; }));
}

// ---- tests ----

TEST(RouterTest, OneToOneLandsOnTheOwnerAndIsPushedToTheNodeHoldingTheSession) {
  Cluster c;
  const uint64_t sender = 100, recipient = 200;
  c.SetOwner(sender, 1);
  c.SetOwner(recipient, 3);
  c.R(2).RegisterSession(recipient, Ref(7));  // the recipient is connected to node 2
  ASSERT_TRUE(c.links().WaitQuiet());

  auto ack = SendVia(c.R(1), sender, MakeSend(recipient, "hello", "k1"));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_FALSE(ack->duplicate);

  auto inbox = c.Inbox(3, recipient);
  ASSERT_EQ(inbox.size(), 1u);
  EXPECT_EQ(inbox[0].body(), "hello");
  EXPECT_EQ(inbox[0].id(), ack->message_id);
  EXPECT_TRUE(c.Inbox(1, recipient).empty());
  EXPECT_TRUE(c.Inbox(2, recipient).empty());

  ASSERT_TRUE(c.N(2).edge.WaitFor([](RecordingEdge& e) { return !e.delivered.empty(); }));
  const auto pushed = c.N(2).edge.Locked([](RecordingEdge& e) { return e.delivered; });
  ASSERT_EQ(pushed.size(), 1u);
  EXPECT_EQ(pushed[0].to.session, 7u);
  EXPECT_EQ(pushed[0].to.node, 2u);
  EXPECT_EQ(pushed[0].envelope.id(), ack->message_id);
  ASSERT_TRUE(c.links().WaitQuiet());
  EXPECT_TRUE(c.N(1).edge.Locked([](RecordingEdge& e) { return e.delivered.empty(); }));
  EXPECT_TRUE(c.N(3).edge.Locked([](RecordingEdge& e) { return e.delivered.empty(); }));
}

TEST(RouterTest, GroupSendReachesEveryMemberOnEveryNodeOnce) {
  Cluster c;
  const uint64_t a = 11, b = 12, d = 13;  // owned by nodes 1, 2, 3
  c.SetOwner(a, 1);
  c.SetOwner(b, 2);
  c.SetOwner(d, 3);
  v1::GroupCreate create;
  create.set_idempotency_key("g1");
  create.add_members(b);
  create.add_members(d);
  const uint64_t gid = core::GroupService::GroupIdFor(a, "g1");
  c.SetOwner(gid, 2);  // the group's home
  c.R(3).RegisterSession(b, Ref(1));
  c.R(1).RegisterSession(d, Ref(2));
  ASSERT_TRUE(c.links().WaitQuiet());

  auto info = Await<Result<v1::GroupInfo>>(
      [&](core::CoreApi::GroupDone done) { c.R(1).CreateGroup(a, create, std::move(done)); });
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->group_id(), gid);
  EXPECT_TRUE(c.N(2).store->GetGroup(gid).ok());   // at the home
  EXPECT_FALSE(c.N(1).store->GetGroup(gid).ok());  // nowhere else

  auto ack = SendVia(c.R(1), a, MakeSend(0, "to all", "gs1", gid));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  // A retry of the same send: nothing twice.
  auto again = SendVia(c.R(1), a, MakeSend(0, "to all", "gs1", gid));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);

  // Each member's owner holds its GROUP_EVENT and one MESSAGE; no store holds another's.
  const std::map<uint64_t, NodeId> owner = {{a, 1}, {b, 2}, {d, 3}};
  for (auto [user, node] : owner) {
    auto inbox = c.Inbox(node, user);
    EXPECT_EQ(CountKind(inbox, v1::GROUP_EVENT), 1u) << user;
    EXPECT_EQ(CountKind(inbox, v1::MESSAGE), user == a ? 0u : 1u) << user;
    for (NodeId other = 1; other <= 3; ++other) {
      if (other != node) {
        EXPECT_TRUE(c.Inbox(other, user).empty()) << user << "@" << other;
      }
    }
  }
  // Pushed to the nodes holding the sessions: b on node 3, d on node 1.
  auto messages_to = [](uint64_t user) {
    return [user](RecordingEdge& e) {
      return std::count_if(e.delivered.begin(), e.delivered.end(), [&](const auto& p) {
        return p.envelope.recipient() == user && p.envelope.kind() == v1::MESSAGE;
      });
    };
  };
  ASSERT_TRUE(c.N(3).edge.WaitFor([&](RecordingEdge& e) { return messages_to(b)(e) == 1; }));
  ASSERT_TRUE(c.N(1).edge.WaitFor([&](RecordingEdge& e) { return messages_to(d)(e) == 1; }));
  ASSERT_TRUE(c.links().WaitQuiet());
  EXPECT_EQ(c.N(3).edge.Locked(messages_to(b)), 1);
  EXPECT_EQ(c.N(1).edge.Locked(messages_to(d)), 1);
}

TEST(RouterTest, RetryAfterALostAnswerKeepsTheSameKeyAndDoesNotDuplicate) {
  Cluster c;
  const uint64_t sender = 21, recipient = 22;
  c.SetOwner(sender, 1);
  c.SetOwner(recipient, 3);
  c.links().Between(3, 1).lose_answers = 1;  // the append is done, its answer lost
  auto ack = SendVia(c.R(1), sender, MakeSend(recipient, "once", "k-lost"));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_TRUE(ack->duplicate);  // the retry found the first attempt's message
  EXPECT_GE(c.R(1).Stats().retries, 1u);
  auto inbox = c.Inbox(3, recipient);
  ASSERT_EQ(inbox.size(), 1u);
  EXPECT_EQ(inbox[0].id(), ack->message_id);

  // The same for a group's remote share: the home (node 2) loses node 3's answer.
  const uint64_t m2 = 23;
  c.SetOwner(m2, 2);
  v1::GroupCreate create;
  create.set_idempotency_key("g-lost");
  create.add_members(recipient);
  create.add_members(m2);
  const uint64_t gid = core::GroupService::GroupIdFor(sender, "g-lost");
  c.SetOwner(gid, 2);
  auto info = Await<Result<v1::GroupInfo>>(
      [&](core::CoreApi::GroupDone done) { c.R(1).CreateGroup(sender, create, std::move(done)); });
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  c.links().Between(3, 2).lose_answers = 1;
  auto gack = SendVia(c.R(1), sender, MakeSend(0, "group once", "gk-lost", gid));
  ASSERT_TRUE(gack.ok()) << gack.status().ToString();
  EXPECT_GE(c.R(2).Stats().retries, 1u);
  auto r_inbox = c.Inbox(3, recipient);
  EXPECT_EQ(std::count_if(r_inbox.begin(), r_inbox.end(),
                          [](const v1::Envelope& e) { return e.body() == "group once"; }),
            1);
  EXPECT_EQ(CountKind(c.Inbox(2, m2), v1::MESSAGE), 1u);
}

TEST(RouterTest, MovedOwnershipIsAnsweredNotOwnerAndRetriedAtTheNewOwner) {
  Cluster c;
  const uint64_t sender = 31, recipient = 32;
  c.SetOwner(sender, 1);
  c.SetOwner(recipient, 3);
  // The shard moved to node 2: nodes 2 and 3 know, node 1's view is stale.
  c.N(2).routes.Set(recipient, 2);
  c.N(3).routes.Set(recipient, 2);
  auto pending = std::make_shared<std::promise<Result<core::AppendResult>>>();
  auto answer = pending->get_future();
  c.R(1).Send(sender, MakeSend(recipient, "moved", "k-moved"), "",
              [pending](Result<core::AppendResult> r) { pending->set_value(std::move(r)); });
  // Node 3 refuses it (possibly several times) until node 1 learns the new owner.
  const auto end = std::chrono::steady_clock::now() + kWait;
  while (c.R(3).Stats().not_owner_answered == 0 && std::chrono::steady_clock::now() < end) {
    std::this_thread::yield();
  }
  ASSERT_GE(c.R(3).Stats().not_owner_answered, 1u);
  c.N(1).routes.Set(recipient, 2);
  ASSERT_EQ(answer.wait_for(kWait), std::future_status::ready);
  auto ack = answer.get();
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_FALSE(ack->duplicate);
  EXPECT_EQ(c.Inbox(2, recipient).size(), 1u);
  EXPECT_TRUE(c.Inbox(3, recipient).empty());
}

TEST(RouterTest, NoOwnerWithinTheDeadlineAnswersUnavailable) {
  Cluster c;
  const uint64_t sender = 41, recipient = 42;
  c.SetOwner(sender, 1);
  c.SetOwner(recipient, 3);
  c.N(3).routes.Set(recipient, 2);  // node 3 gave it away, node 2 does not know yet
  c.N(2).routes.Set(recipient, 3);
  RouterOptions fast;
  fast.deadline = 50ms;
  fast.initial_backoff = 1ms;
  fast.max_backoff = 5ms;
  TestPeers& peers = c.N(1).peers;
  Router edge_only(1, c.N(1).routes, peers, fast);  // a `--role edge` router on node 1
  auto ack = SendVia(edge_only, sender, MakeSend(recipient, "x", "k-x"));
  ASSERT_FALSE(ack.ok());
  EXPECT_EQ(ack.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(edge_only.Stats().gave_up, 1u);
  ASSERT_TRUE(c.links().WaitQuiet());
}

TEST(RouterTest, PresenceSubscriptionAcrossNodesSeesTheWatchedUsersChanges) {
  Cluster c;
  const uint64_t watcher = 51, watched = 52, other = 53;
  c.SetOwner(watcher, 1);
  c.SetOwner(watched, 3);
  c.SetOwner(other, 2);
  c.R(1).RegisterSession(watcher, Ref(5));
  auto states = Await<Result<std::vector<v1::Presence>>>([&](core::CoreApi::PresenceDone d) {
    c.R(1).Subscribe(Ref(5), {watched, other}, std::move(d));
  });
  ASSERT_TRUE(states.ok()) << states.status().ToString();
  ASSERT_EQ(states->size(), 2u);
  EXPECT_EQ((*states)[0].user(), watched);  // merged in the order asked
  EXPECT_EQ((*states)[1].user(), other);
  EXPECT_FALSE((*states)[0].online());

  c.R(2).RegisterSession(watched, Ref(9));  // the watched user connects to node 2
  auto online_seen = [&](bool online) {
    return [&, online](RecordingEdge& e) {
      return std::any_of(e.presence.begin(), e.presence.end(), [&](const auto& p) {
        return p.first.session == 5 && p.first.node == 1 && p.second.user() == watched &&
               p.second.online() == online;
      });
    };
  };
  ASSERT_TRUE(c.N(1).edge.WaitFor(online_seen(true)));
  auto q = Await<Result<std::vector<v1::Presence>>>([&](core::CoreApi::PresenceDone d) {
    c.R(2).QueryPresence({other, watched}, std::move(d));
  });
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->size(), 2u);
  EXPECT_EQ((*q)[1].user(), watched);
  EXPECT_TRUE((*q)[1].online());
  c.R(2).UnregisterSession(watched, Ref(9), core::RateDebt{});
  ASSERT_TRUE(c.N(1).edge.WaitFor(online_seen(false)));
}

TEST(RouterTest, TypingIsRelayedToTheNodeHoldingTheSession) {
  Cluster c;
  const uint64_t a = 61, b = 62, d = 63;
  c.SetOwner(a, 1);
  c.SetOwner(b, 2);
  c.SetOwner(d, 3);
  c.R(3).RegisterSession(b, Ref(3));
  c.R(1).RegisterSession(d, Ref(4));
  ASSERT_TRUE(c.links().WaitQuiet());
  v1::Typing t;
  t.set_user(b);
  t.set_typing(true);
  EXPECT_TRUE(c.R(1).Typing(a, t));
  ASSERT_TRUE(c.N(3).edge.WaitFor([&](RecordingEdge& e) {
    return e.typing.size() == 1 && e.typing[0].first.session == 3 && e.typing[0].second.user() == a;
  }));
  // Group typing: the home (node 2) relays to d's owner (node 3), which pushes to node 1.
  v1::GroupCreate create;
  create.set_idempotency_key("gt");
  create.add_members(b);
  create.add_members(d);
  const uint64_t gid = core::GroupService::GroupIdFor(a, "gt");
  c.SetOwner(gid, 2);
  ASSERT_TRUE(Await<Result<v1::GroupInfo>>([&](core::CoreApi::GroupDone done) {
                c.R(1).CreateGroup(a, create, std::move(done));
              }).ok());
  v1::Typing g;
  g.set_group_id(gid);
  g.set_typing(true);
  EXPECT_TRUE(c.R(1).Typing(a, g));
  ASSERT_TRUE(c.N(1).edge.WaitFor([&](RecordingEdge& e) {
    return e.typing.size() == 1 && e.typing[0].first.session == 4 &&
           e.typing[0].second.group_id() == gid && e.typing[0].second.user() == a;
  }));
  ASSERT_TRUE(c.N(3).edge.WaitFor([&](RecordingEdge& e) { return e.typing.size() == 2; }));
}

TEST(RouterTest, ReadReceiptUsesTheSettingsOfAnAuthorOwnedElsewhere) {
  Cluster c;
  const uint64_t author = 71, to = 72;
  c.SetOwner(author, 1);
  c.SetOwner(to, 2);
  v1::Receipt r;
  r.set_to_user(to);
  r.set_type(v1::READ);
  r.add_message_ids(5);
  r.set_idempotency_key("r1");
  auto first = Await<Result<core::AppendResult>>(
      [&](core::CoreApi::SendDone d) { c.R(3).Receipt(author, r, std::move(d)); });
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_NE(first->message_id, 0u);
  EXPECT_EQ(CountKind(c.Inbox(2, to), v1::RECEIPT), 1u);

  v1::Settings off;
  off.set_read_receipts(false);
  ASSERT_TRUE(Await<Status>([&](core::CoreApi::StatusDone d) {
                c.R(3).UpdateSettings(author, off, std::move(d));
              }).ok());
  EXPECT_FALSE(c.N(1).store->GetSettings(author)->read_receipts);  // on the author's owner
  r.set_idempotency_key("r2");
  auto second = Await<Result<core::AppendResult>>(
      [&](core::CoreApi::SendDone d) { c.R(3).Receipt(author, r, std::move(d)); });
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->message_id, 0u);  // dropped: the author turned read receipts off
  EXPECT_EQ(CountKind(c.Inbox(2, to), v1::RECEIPT), 1u);
}

// A READ receipt whose author is owned elsewhere waits for the author's settings without
// holding a worker or the writer stripe it shares with other users (issue 15: one user's
// slow peer must not stall others), and still keeps its place among its author's writes.
TEST(RouterTest, RemoteSettingsWaitHoldsNoWorkerAndKeepsTheAuthorsOrder) {
  Cluster c;
  const uint64_t author = 171, to = 172;
  const uint64_t neighbour = author + 64;  // same writer stripe on node 2 (key % 64)
  c.SetOwner(author, 1);
  c.SetOwner(to, 2);
  for (uint64_t i = 0; i < 4; ++i) c.SetOwner(neighbour + 64 * i, 2);
  c.links().Between(1, 2).Hold();  // node 1's answers to node 2 wait

  v1::Receipt r;
  r.set_to_user(to);
  r.set_type(v1::READ);
  r.add_message_ids(5);
  r.set_idempotency_key("r-held");
  auto receipt = std::make_shared<std::promise<Result<core::AppendResult>>>();
  auto receipt_done = receipt->get_future();
  c.R(2).Receipt(author, r,
                 [receipt](Result<core::AppendResult> x) { receipt->set_value(std::move(x)); });
  // The author's next message to the same user queues behind the receipt.
  auto message = std::make_shared<std::promise<Result<core::AppendResult>>>();
  auto message_done = message->get_future();
  c.R(2).Send(author, MakeSend(to, "after the receipt", "m-after"), "",
              [message](Result<core::AppendResult> x) { message->set_value(std::move(x)); });

  // Every worker and the shared stripe stay free: other users' ordered writes go through
  // while the settings are on their way (two per write worker, more than the pool has).
  for (int i = 0; i < 4; ++i) {
    v1::Settings s;
    s.set_read_receipts(i % 2 == 0);
    ASSERT_TRUE(Await<Status>([&](core::CoreApi::StatusDone d) {
                  c.R(2).UpdateSettings(neighbour + 64 * static_cast<uint64_t>(i), s, std::move(d));
                }).ok())
        << "a write on the receipt's stripe waited for another node";
  }
  EXPECT_EQ(receipt_done.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  EXPECT_EQ(message_done.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);

  c.links().Between(1, 2).Resume();
  ASSERT_EQ(receipt_done.wait_for(kWait), std::future_status::ready);
  ASSERT_EQ(message_done.wait_for(kWait), std::future_status::ready);
  const auto rr = receipt_done.get();
  const auto mr = message_done.get();
  ASSERT_TRUE(rr.ok()) << rr.status().ToString();
  ASSERT_TRUE(mr.ok()) << mr.status().ToString();
  EXPECT_LT(rr->message_id, mr->message_id);  // the receipt kept its place
  const auto inbox = c.Inbox(2, to);
  ASSERT_EQ(inbox.size(), 2u);
  EXPECT_EQ(inbox[0].kind(), v1::RECEIPT);
  EXPECT_EQ(inbox[1].body(), "after the receipt");
}

// Pipelined sends of one sender: the first finds no reachable owner and is retried; the
// second is made once the owner is back. The second must not overtake the first: it waits
// in the sender's line until the first is answered (issue 15).
TEST(RouterTest, ARetriedSendIsNotOvertakenByTheSendersNextOne) {
  Cluster c;
  const uint64_t sender = 181, to = 182;
  c.SetOwner(to, 9);  // a node nobody can reach: every attempt is retried
  auto first = std::make_shared<std::promise<Result<core::AppendResult>>>();
  auto first_done = first->get_future();
  c.R(1).Send(sender, MakeSend(to, "first", "k-first"), "",
              [first](Result<core::AppendResult> r) { first->set_value(std::move(r)); });
  // Retried a few times: its backoff is now several milliseconds.
  ASSERT_TRUE(iris::testing::PollUntil([&] { return c.R(1).Stats().retries >= 4; }, 10'000));
  c.SetOwner(to, 2);
  auto second = SendVia(c.R(1), sender, MakeSend(to, "second", "k-second"));
  ASSERT_EQ(first_done.wait_for(kWait), std::future_status::ready);
  const auto f = first_done.get();
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_LT(f->message_id, second->message_id);
  const auto inbox = c.Inbox(2, to);
  ASSERT_EQ(inbox.size(), 2u);
  EXPECT_EQ(inbox[0].body(), "first");
  EXPECT_EQ(inbox[1].body(), "second");
  // Another sender is not held back by this sender's retries.
  c.SetOwner(to, 9);
  auto stuck = std::make_shared<std::promise<Result<core::AppendResult>>>();
  auto stuck_done = stuck->get_future();
  c.R(1).Send(sender, MakeSend(to, "third", "k-third"), "",
              [stuck](Result<core::AppendResult> r) { stuck->set_value(std::move(r)); });
  c.SetOwner(183, 2);
  EXPECT_TRUE(SendVia(c.R(1), 184, MakeSend(183, "other sender", "k-other")).ok());
  c.SetOwner(to, 2);
  ASSERT_EQ(stuck_done.wait_for(kWait), std::future_status::ready);
  EXPECT_TRUE(stuck_done.get().ok());
}

// A sender's write goes out only once its previous one is answered. Here the first reaches
// node 3 before node 3 knows it owns the recipient ("not the owner": retried), and node 3
// learns it before the second is made. Sent at once (pipelined), the second would be stored
// first; it waits in the sender's line instead.
TEST(RouterTest, APipelinedSendWaitsUntilTheSendersPreviousOneIsAnswered) {
  Cluster c;
  const uint64_t sender = 191, to = 192;
  c.N(1).routes.Set(to, 3);
  c.N(2).routes.Set(to, 3);
  c.N(3).routes.Set(to, 2);  // node 3's view lags: it does not own `to` yet
  c.links().Between(3, 1).Hold();  // node 3's answers to node 1 wait
  auto first = std::make_shared<std::promise<Result<core::AppendResult>>>();
  auto first_done = first->get_future();
  c.R(1).Send(sender, MakeSend(to, "first", "k-first"), "",
              [first](Result<core::AppendResult> r) { first->set_value(std::move(r)); });
  ASSERT_TRUE(iris::testing::PollUntil(
      [&] { return c.R(3).Stats().not_owner_answered >= 1; }, 10'000));
  c.N(3).routes.Set(to, 3);  // node 3 catches up
  auto second = std::make_shared<std::promise<Result<core::AppendResult>>>();
  auto second_done = second->get_future();
  c.R(1).Send(sender, MakeSend(to, "second", "k-second"), "",
              [second](Result<core::AppendResult> r) { second->set_value(std::move(r)); });
  c.links().Between(3, 1).Resume();
  ASSERT_EQ(first_done.wait_for(kWait), std::future_status::ready);
  ASSERT_EQ(second_done.wait_for(kWait), std::future_status::ready);
  const auto f = first_done.get();
  const auto g = second_done.get();
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_LT(f->message_id, g->message_id);
  const auto inbox = c.Inbox(3, to);
  ASSERT_EQ(inbox.size(), 2u);
  EXPECT_EQ(inbox[0].body(), "first");
  EXPECT_EQ(inbox[1].body(), "second");
}

TEST(RouterTest, OneSessionPerUserAcrossNodes) {
  Cluster c;
  const uint64_t user = 81;
  c.SetOwner(user, 3);
  c.R(1).RegisterSession(user, Ref(7));
  ASSERT_TRUE(c.links().WaitQuiet());
  c.R(2).RegisterSession(user, Ref(7));  // same loop and session id, another node
  ASSERT_TRUE(c.N(1).edge.WaitFor([](RecordingEdge& e) { return e.replaced.size() == 1; }));
  const auto replaced = c.N(1).edge.Locked([](RecordingEdge& e) { return e.replaced; });
  ASSERT_EQ(replaced.size(), 1u);
  EXPECT_EQ(replaced[0].session, 7u);
  EXPECT_EQ(replaced[0].node, 1u);
  EXPECT_EQ(c.R(1).local_sessions(), 0u);  // node 1 forgot the replaced session
  EXPECT_EQ(c.R(2).local_sessions(), 1u);
  // The replaced session's late unregister does not end the newer one.
  c.R(1).UnregisterSession(user, Ref(7), core::RateDebt{});
  ASSERT_TRUE(c.links().WaitQuiet());
  auto live = c.N(3).core->FindSession(user);
  ASSERT_TRUE(live.has_value());
  EXPECT_EQ(live->node, 2u);
  EXPECT_TRUE(c.N(2).edge.Locked([](RecordingEdge& e) { return e.replaced.empty(); }));
}

// A session ends while its node is named the owner of the user's shard but does not serve
// it (deposed while cut off, or not taken over yet): reads and writes are not routed there
// (OwnerOf), but the end of the session still reaches the local core, which registered it
// before; else the user would stay "online" there with a session that no longer exists.
TEST(RouterTest, ASessionEndReachesTheLocalCoreWhileItDoesNotServeTheShard) {
  Cluster c;
  const uint64_t user = 84;
  c.SetOwner(user, 1);
  c.R(1).RegisterSession(user, Ref(7));
  ASSERT_TRUE(c.links().WaitQuiet());
  ASSERT_TRUE(c.N(1).core->FindSession(user).has_value());
  c.N(1).routes.SetNotServed(user);
  c.R(1).UnregisterSession(user, Ref(7), core::RateDebt{});
  ASSERT_TRUE(c.links().WaitQuiet());
  EXPECT_FALSE(c.N(1).core->FindSession(user).has_value());
  EXPECT_EQ(c.R(1).local_sessions(), 0u);
}

// A debt of `ms` milliseconds in the send limiter's sustained bucket.
core::RateDebt SendDebt(int64_t ms) {
  core::RateDebt d;
  d.ns[0] = ms * 1'000'000;
  return d;
}

// The user's rate budget lives with the owner of the user's shard while the user has no
// session: what a session spent on node 1 reaches the user's next session on node 2.
TEST(RouterTest, RateDebtOfAClosedSessionReachesTheNextSessionOnAnotherNode) {
  Cluster c;
  const uint64_t user = 83;
  c.SetOwner(user, 3);
  c.R(1).RegisterSession(user, Ref(7));
  ASSERT_TRUE(c.N(1).edge.WaitFor([](RecordingEdge& e) { return e.settled.size() == 1; }));
  // Nothing was owed yet: the registration is answered with a zero debt.
  EXPECT_TRUE(c.N(1).edge.Locked([](RecordingEdge& e) { return e.settled[0].debt.zero(); }));
  c.R(1).UnregisterSession(user, Ref(7), SendDebt(60'000));
  ASSERT_TRUE(c.links().WaitQuiet());
  EXPECT_EQ(c.N(3).core->parked_debt_count(), 1u);  // kept by the owner, not by node 1

  c.R(2).RegisterSession(user, Ref(5));
  ASSERT_TRUE(c.N(2).edge.WaitFor([](RecordingEdge& e) { return e.settled.size() == 1; }));
  const auto settled = c.N(2).edge.Locked([](RecordingEdge& e) { return e.settled[0]; });
  EXPECT_EQ(settled.user, user);
  EXPECT_EQ(settled.to.node, 2u);
  EXPECT_EQ(settled.to.session, 5u);
  // Aged by the time it was kept (well under the 60 s owed), never more than owed.
  EXPECT_GT(settled.debt.ns[0], int64_t{50'000} * 1'000'000);
  EXPECT_LE(settled.debt.ns[0], int64_t{60'000} * 1'000'000);
  EXPECT_EQ(c.N(3).core->parked_debt_count(), 0u);  // handed over once, not twice
}

// A replaced session's debt is not lost in the race with its successor: the owner hands
// it on to the live session.
TEST(RouterTest, RateDebtOfAReplacedSessionGoesToItsSuccessor) {
  Cluster c;
  const uint64_t user = 84;
  c.SetOwner(user, 3);
  c.R(1).RegisterSession(user, Ref(7));
  ASSERT_TRUE(c.links().WaitQuiet());
  c.R(2).RegisterSession(user, Ref(5));  // replaces the session on node 1
  ASSERT_TRUE(c.N(1).edge.WaitFor([](RecordingEdge& e) { return e.replaced.size() == 1; }));
  ASSERT_TRUE(c.N(2).edge.WaitFor([](RecordingEdge& e) { return e.settled.size() == 1; }));
  // Node 1's session closes with what it spent while the new one was registering.
  c.R(1).UnregisterSession(user, Ref(7), SendDebt(20'000));
  ASSERT_TRUE(c.N(2).edge.WaitFor([](RecordingEdge& e) { return e.settled.size() == 2; }));
  const auto second = c.N(2).edge.Locked([](RecordingEdge& e) { return e.settled[1]; });
  EXPECT_EQ(second.to.session, 5u);
  EXPECT_EQ(second.debt.ns[0], int64_t{20'000} * 1'000'000);
  EXPECT_EQ(c.N(3).core->parked_debt_count(), 0u);
}

TEST(RouterTest, ScanAtANewOwnerRegistersTheSessionThereFirst) {
  Cluster c;
  const uint64_t user = 91, sender = 92;
  c.SetOwner(user, 3);
  c.SetOwner(sender, 3);
  c.R(2).RegisterSession(user, Ref(8));  // registered with node 3
  ASSERT_TRUE(c.links().WaitQuiet());
  c.SetOwner(user, 1);  // the shard moves to node 1 before the session's catch-up scan
  auto page = Await<Result<core::Page>>(
      [&](core::CoreApi::PageDone d) { c.R(2).Scan(user, 0, 10, 1 << 20, std::move(d)); });
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  auto live = c.N(1).core->FindSession(user);
  ASSERT_TRUE(live.has_value());  // registered at the new owner before it read
  EXPECT_EQ(live->node, 2u);
  // So a message committed after the scan is pushed to the session on node 2.
  auto ack = SendVia(c.R(3), sender, MakeSend(user, "after the move", "k-after"));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  ASSERT_TRUE(c.N(2).edge.WaitFor([&](RecordingEdge& e) {
    return e.delivered.size() == 1 && e.delivered[0].envelope.id() == ack->message_id;
  }));
}

// A login on a node whose link to the user's owner is not up yet (still being dialled, as
// right after the node started): the registration cannot go out then, so the session's
// catch-up scan registers it once the link is up, and pushes and presence reach it. (The
// registration used to be recorded as sent, so the scan skipped it and the session got no
// pushes until it reconnected.)
TEST(RouterTest, SessionWhoseOwnerWasUnreachableAtLoginIsRegisteredByItsScan) {
  Cluster c;
  const uint64_t user = 95, sender = 96;
  c.SetOwner(user, 3);
  c.SetOwner(sender, 3);
  c.N(2).peers.SetLinkUp(3, false);
  c.R(2).RegisterSession(user, Ref(8));
  ASSERT_TRUE(c.links().WaitQuiet());
  EXPECT_FALSE(c.N(3).core->FindSession(user).has_value());
  c.N(2).peers.SetLinkUp(3, true);
  auto page = Await<Result<core::Page>>(
      [&](core::CoreApi::PageDone d) { c.R(2).Scan(user, 0, 10, 1 << 20, std::move(d)); });
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  auto live = c.N(3).core->FindSession(user);
  ASSERT_TRUE(live.has_value()) << "the scan did not register the session at its owner";
  EXPECT_EQ(live->node, 2u);
  auto ack = SendVia(c.R(3), sender, MakeSend(user, "pushed", "k-pushed"));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  ASSERT_TRUE(c.N(2).edge.WaitFor([&](RecordingEdge& e) {
    return e.delivered.size() == 1 && e.delivered[0].envelope.id() == ack->message_id;
  }));
}

// A registration that reaches the owner before the owner knows it owns the user (right
// after a start or a failover, the nodes' views of the shard map differ for a moment) is
// dropped; the session, unanswered, asks again (edge::Session does so every settle
// timeout), and once the owner has caught up it is registered and gets pushes.
TEST(RouterTest, RegistrationDroppedByAnOwnerThatDidNotKnowYetIsAskedAgain) {
  Cluster c;
  const uint64_t user = 97, sender = 98;
  c.SetOwner(user, 3);
  c.SetOwner(sender, 3);
  c.N(3).routes.Set(user, 1);  // node 3 has not seen the new map yet
  c.R(2).RegisterSession(user, Ref(8));
  ASSERT_TRUE(c.links().WaitQuiet());
  EXPECT_FALSE(c.N(3).core->FindSession(user).has_value());
  EXPECT_FALSE(c.N(1).core->FindSession(user).has_value());
  EXPECT_TRUE(c.N(2).edge.Locked([](RecordingEdge& e) { return e.settled.empty(); }));
  c.N(3).routes.Set(user, 3);  // now it has
  c.R(2).ReRegisterSession(user, Ref(8));
  ASSERT_TRUE(c.N(2).edge.WaitFor([](RecordingEdge& e) { return e.settled.size() == 1; }));
  auto live = c.N(3).core->FindSession(user);
  ASSERT_TRUE(live.has_value());
  EXPECT_EQ(live->node, 2u);
  auto ack = SendVia(c.R(3), sender, MakeSend(user, "pushed", "k-asked-again"));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  ASSERT_TRUE(c.N(2).edge.WaitFor([&](RecordingEdge& e) {
    return e.delivered.size() == 1 && e.delivered[0].envelope.id() == ack->message_id;
  }));
  // Asking again while registered is answered again and changes nothing.
  c.R(2).ReRegisterSession(user, Ref(8));
  ASSERT_TRUE(c.N(2).edge.WaitFor([](RecordingEdge& e) { return e.settled.size() == 2; }));
  EXPECT_TRUE(c.N(2).edge.Locked([](RecordingEdge& e) { return e.replaced.empty(); }));
}

// A session that asks again after a newer session of the same user registered does not
// displace it: it is the one told to go away.
TEST(RouterTest, AskingAgainNeverDisplacesANewerSession) {
  Cluster c;
  const uint64_t user = 99;
  c.SetOwner(user, 3);
  c.N(3).routes.Set(user, 1);
  c.R(2).RegisterSession(user, Ref(8));  // dropped: node 3 did not know yet
  ASSERT_TRUE(c.links().WaitQuiet());
  c.N(3).routes.Set(user, 3);
  c.R(1).RegisterSession(user, Ref(4));  // the user's newer session, on node 1
  ASSERT_TRUE(c.N(1).edge.WaitFor([](RecordingEdge& e) { return e.settled.size() == 1; }));
  c.R(2).ReRegisterSession(user, Ref(8));
  ASSERT_TRUE(c.N(2).edge.WaitFor([](RecordingEdge& e) { return e.replaced.size() == 1; }));
  EXPECT_EQ(c.N(2).edge.Locked([](RecordingEdge& e) { return e.replaced[0].session; }), 8u);
  auto live = c.N(3).core->FindSession(user);
  ASSERT_TRUE(live.has_value());
  EXPECT_EQ(live->node, 1u);
  EXPECT_EQ(live->session, 4u);
  EXPECT_TRUE(c.N(1).edge.Locked([](RecordingEdge& e) { return e.replaced.empty(); }));
}

// ---- catch-up -> push across nodes ----

// The catch-up/push state machine of edge::Session (session.h), on its own loop thread:
// register, scan pages from the cursor (each page acknowledged before the next), hold the
// pushes that arrive while a scan is out and replay them after the page, drop pushes
// between pages and pushes at or below the last id sent.
class ModelSession {
 public:
  ModelSession(Router& router, uint64_t user, core::SessionRef ref, uint32_t page_size)
      : router_(router), user_(user), ref_(ref), page_size_(page_size) {}

  Link& loop() { return loop_; }
  void Hello() {
    loop_.Post([this] {
      router_.RegisterSession(user_, ref_);
      ContinueCatchUp();
    });
  }
  void Push(const v1::Envelope& e) {
    loop_.Post([this, e] { OnPush(e); });
  }
  std::vector<uint64_t> Delivered() {
    std::lock_guard<std::mutex> lock(mu_);
    return delivered_;
  }
  bool pushing() {
    std::lock_guard<std::mutex> lock(mu_);
    return push_mode_;
  }

 private:
  void ContinueCatchUp() {
    held_.clear();
    scan_inflight_ = true;
    router_.Scan(user_, last_sent_, page_size_, 1 << 20, [this](Result<core::Page> p) {
      loop_.Post([this, p = std::move(p)]() mutable { OnPage(std::move(p)); });
    });
  }
  void OnPage(Result<core::Page> page) {
    scan_inflight_ = false;
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    for (const auto& e : page->messages) Emit(e.id());
    if (page->has_more) {
      held_.clear();
      // SYNC_ACK comes later; pushes meanwhile are dropped (the next scan returns them).
      loop_.Post([this] { ContinueCatchUp(); });
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      push_mode_ = true;
    }
    std::vector<v1::Envelope> held;
    held.swap(held_);
    for (const auto& e : held) OnPush(e);
  }
  void OnPush(const v1::Envelope& e) {
    if (e.recipient() != user_) return;
    bool push_mode;
    {
      std::lock_guard<std::mutex> lock(mu_);
      push_mode = push_mode_;
    }
    if (scan_inflight_ && !push_mode) {
      held_.push_back(e);
      return;
    }
    if (!push_mode || e.id() <= last_sent_) return;
    Emit(e.id());
  }
  void Emit(uint64_t id) {
    last_sent_ = id;
    std::lock_guard<std::mutex> lock(mu_);
    delivered_.push_back(id);
  }

  Router& router_;
  const uint64_t user_;
  const core::SessionRef ref_;
  const uint32_t page_size_;
  uint64_t last_sent_ = 0;
  bool scan_inflight_ = false;
  std::vector<v1::Envelope> held_;
  std::mutex mu_;
  bool push_mode_ = false;
  std::vector<uint64_t> delivered_;
  Link loop_;  // last: joined first
};

TEST(RouterTest, CatchUpToPushSwitchAcrossNodesIsExactlyOnceInOrder) {
  for (uint32_t seed = 1; seed <= 8; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    // Declared before the cluster: answers still in flight when a check fails find them.
    std::mutex acks_mu;
    std::condition_variable acks_cv;
    std::set<uint64_t> acked;
    int answered = 0;
    Cluster c;
    const uint64_t sender = 1000 + seed, recipient = 2000 + seed;
    c.SetOwner(sender, 1);
    c.SetOwner(recipient, 3);
    const int total = 300;
    const int start_at = std::uniform_int_distribution<int>(0, total - 1)(rng);
    const uint32_t page = std::uniform_int_distribution<uint32_t>(1, 8)(rng);
    ModelSession session(c.R(2), recipient, Ref(42), page);
    c.N(2).edge.SetHook([&session](const core::SessionRef& to, const v1::Envelope& e) {
      if (to.session == 42) session.Push(e);
    });
    struct Unhook {
      RecordingEdge& edge;
      ~Unhook() { edge.SetHook(nullptr); }
    } unhook{c.N(2).edge};
    // A random schedule: rounds of 1-10 pipelined sends, after about half of them the sends
    // wait for every answer so far (so commits spread over time: before, during and after
    // the catch-up), the session says HELLO at a random point.
    for (int i = 0; i < total;) {
      const int round = std::uniform_int_distribution<int>(1, 10)(rng);
      for (int k = 0; k < round && i < total; ++k, ++i) {
        if (i == start_at) session.Hello();
        c.R(1).Send(sender, MakeSend(recipient, "m" + std::to_string(i), "k" + std::to_string(i)),
                    "", [&](Result<core::AppendResult> r) {
                      std::lock_guard<std::mutex> lock(acks_mu);
                      if (r.ok()) acked.insert(r->message_id);
                      ++answered;
                      acks_cv.notify_all();
                    });
      }
      if (std::uniform_int_distribution<int>(0, 1)(rng) == 0) {
        std::unique_lock<std::mutex> lock(acks_mu);
        ASSERT_TRUE(acks_cv.wait_for(lock, kWait, [&] { return answered == i; }));
      }
    }
    {
      std::unique_lock<std::mutex> lock(acks_mu);
      ASSERT_TRUE(acks_cv.wait_for(lock, kWait, [&] { return answered == total; }));
      ASSERT_EQ(acked.size(), static_cast<size_t>(total));
    }
    // Every acknowledged message reaches the session exactly once, in id order.
    const auto end = std::chrono::steady_clock::now() + kWait;
    while (std::chrono::steady_clock::now() < end &&
           !(session.pushing() && session.Delivered().size() >= acked.size())) {
      std::this_thread::yield();
    }
    ASSERT_TRUE(c.links().WaitQuiet());
    while (!session.loop().Idle() && std::chrono::steady_clock::now() < end) {
      std::this_thread::yield();
    }
    const std::vector<uint64_t> got = session.Delivered();
    EXPECT_TRUE(std::is_sorted(got.begin(), got.end()));
    EXPECT_EQ(std::adjacent_find(got.begin(), got.end()), got.end()) << "a duplicate";
    EXPECT_EQ(std::set<uint64_t>(got.begin(), got.end()), acked);
  }
}

}  // namespace
}  // namespace iris::cluster
