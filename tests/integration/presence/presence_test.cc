// Presence, last seen, typing, read receipts, settings and graceful degradation against a
// real irisd (RFC-001 FR-4, FR-6, FR-7, FR-8, §3.2 note, §7.4).

#include <gtest/gtest.h>

#include <regex>
#include <thread>

#include "common/clock.h"
#include "harness/server_process.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

constexpr uint8_t Op(wire::Opcode o) { return static_cast<uint8_t>(o); }

int64_t WallMs() { return SystemClock::Instance().WallMillis(); }

// Logs in and finishes catch-up.
std::unique_ptr<TestClient> Online(const ServerProcess& s, uint64_t user) {
  auto c = TestClient::Connect(s);
  c->Login(s, user);
  std::vector<v1::Envelope> ignored;
  c->CatchUp(&ignored);
  return c;
}

void Subscribe(TestClient& c, uint64_t request_id, std::vector<uint64_t> users) {
  v1::PresenceSubscribe m;
  m.set_request_id(request_id);
  for (uint64_t u : users) m.add_users(u);
  ASSERT_TRUE(c.conn().SendFrame(Op(wire::Opcode::kPresenceSubscribe), m).ok());
}

v1::Presence NextPresence(TestClient& c, int timeout_ms = 30'000) {
  auto f = c.Expect(Op(wire::Opcode::kPresence), timeout_ms);
  v1::Presence p;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kPresence));
  EXPECT_TRUE(p.ParseFromString(f.payload));
  return p;
}

// Waits for the next PRESENCE frame while keeping the connection alive with PINGs (the
// poll timeout paces the pings; no sleeping).
v1::Presence NextPresenceKeepingAlive(TestClient& c, int timeout_ms) {
  const int64_t deadline = SystemClock::Instance().MonoMillis() + timeout_ms;
  uint64_t nonce = 1;
  while (SystemClock::Instance().MonoMillis() < deadline) {
    auto f = c.Next(400);
    if (f.ok() && f->opcode == Op(wire::Opcode::kPresence)) {
      v1::Presence p;
      EXPECT_TRUE(p.ParseFromString(f->payload));
      return p;
    }
    v1::Ping ping;
    ping.set_nonce(nonce++);
    EXPECT_TRUE(c.conn().SendFrame(Op(wire::Opcode::kPing), ping).ok());
  }
  ADD_FAILURE() << "no PRESENCE within " << timeout_ms << " ms";
  return {};
}

uint64_t MetricValue(const ServerProcess& s, const std::string& name) {
  std::string body;
  EXPECT_EQ(AdminRequest(s.admin_port(), "GET", "/metrics", "", "", &body), 200);
  std::smatch m;
  std::regex re("\n" + name + " ([0-9.e+]+)");
  if (!std::regex_search(body, m, re)) return 0;
  return static_cast<uint64_t>(std::stod(m[1]));
}

void SendReceipt(TestClient& c, uint64_t request_id, uint64_t to, v1::ReceiptType type,
                 uint64_t id) {
  v1::Receipt r;
  r.set_request_id(request_id);
  r.set_to_user(to);
  r.set_type(type);
  r.add_message_ids(id);
  r.set_idempotency_key(NewKey());
  ASSERT_TRUE(c.conn().SendFrame(Op(wire::Opcode::kReceipt), r).ok());
  auto ok = c.Expect(Op(wire::Opcode::kOk));
  v1::Ok o;
  ASSERT_TRUE(o.ParseFromString(ok.payload));
  EXPECT_EQ(o.request_id(), request_id);
}

void SetReadReceipts(TestClient& c, bool on) {
  v1::Settings s;
  s.set_request_id(77);
  s.set_read_receipts(on);
  ASSERT_TRUE(c.conn().SendFrame(Op(wire::Opcode::kSettings), s).ok());
  c.Expect(Op(wire::Opcode::kOk));
}

v1::Envelope NextDeliver(TestClient& c) {
  auto f = c.Expect(Op(wire::Opcode::kDeliver), 20'000);
  v1::Deliver d;
  EXPECT_TRUE(d.ParseFromString(f.payload));
  return d.message();
}

uint64_t SendOne(TestClient& from, uint64_t to, const std::string& body) {
  auto f = from.Send(1, to, body, NewKey());
  v1::SendAck a;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kSendAck));
  EXPECT_TRUE(a.ParseFromString(f.payload));
  return a.message_id();
}

// FR-6 / FR-7: a subscriber sees the watched user go online, then offline with a last-seen
// time inside the bounds.
TEST(PresenceTest, SubscriberSeesOnlineThenOfflineWithLastSeen) {
  ServerProcess server;
  server.Start();
  auto watcher = Online(server, 100);
  Subscribe(*watcher, 1, {101});
  v1::Presence p = NextPresence(*watcher);
  EXPECT_EQ(p.user(), 101u);
  EXPECT_FALSE(p.online());
  watcher->Expect(Op(wire::Opcode::kOk));

  auto watched = Online(server, 101);
  p = NextPresence(*watcher);
  EXPECT_EQ(p.user(), 101u);
  EXPECT_TRUE(p.online());

  const int64_t before_close = WallMs();
  watched->conn().Close();
  p = NextPresence(*watcher);
  const int64_t after = WallMs();
  EXPECT_FALSE(p.online());
  EXPECT_GE(static_cast<int64_t>(p.last_seen_ms()), before_close - 1000);
  EXPECT_LE(static_cast<int64_t>(p.last_seen_ms()), after);

  // PRESENCE_QUERY answers pull-on-demand with the same last seen.
  v1::PresenceQuery q;
  q.set_request_id(5);
  q.add_users(101);
  ASSERT_TRUE(watcher->conn().SendFrame(Op(wire::Opcode::kPresenceQuery), q).ok());
  v1::Presence again = NextPresence(*watcher);
  EXPECT_EQ(again.last_seen_ms(), p.last_seen_ms());
}

// FR-7 with a vanished network: no TCP close, the idle timeout ends the session and the
// subscriber sees the user offline.
TEST(PresenceTest, IdleTimeoutOfVanishedPeerTurnsItOffline) {
  ServerProcess server({"--idle-timeout-ms", "3000"});
  server.Start();
  auto watcher = Online(server, 110);
  Subscribe(*watcher, 1, {111});
  NextPresence(*watcher);
  auto watched = Online(server, 111);  // then silent: it never sends another byte
  EXPECT_TRUE(NextPresenceKeepingAlive(*watcher, 10'000).online());
  const int64_t went_silent = WallMs();
  v1::Presence p = NextPresenceKeepingAlive(*watcher, 30'000);
  EXPECT_FALSE(p.online());
  EXPECT_GE(static_cast<int64_t>(p.last_seen_ms()), went_silent);
}

// share_presence = false: the user appears offline with last_seen 0, at once.
TEST(PresenceTest, SharePresenceOffHidesUser) {
  ServerProcess server;
  server.Start();
  auto watcher = Online(server, 120);
  auto shy = Online(server, 121);
  Subscribe(*watcher, 1, {121});
  EXPECT_TRUE(NextPresence(*watcher).online());
  v1::Settings s;
  s.set_request_id(2);
  s.set_share_presence(false);
  ASSERT_TRUE(shy->conn().SendFrame(Op(wire::Opcode::kSettings), s).ok());
  shy->Expect(Op(wire::Opcode::kOk));
  // The server announces a login on its presence worker, after the login completed: that
  // "online" may reach the watcher after the subscription's answer, but never after the
  // "offline" of the settings change, which is queued behind it.
  v1::Presence p = NextPresence(*watcher);
  if (p.online()) p = NextPresence(*watcher);
  EXPECT_EQ(p.user(), 121u);
  EXPECT_FALSE(p.online());
  EXPECT_EQ(p.last_seen_ms(), 0u);
}

// FR-8: typing reaches the recipient; nothing is stored; an offline recipient gets nothing.
TEST(TypingTest, RelayedLiveNeverStored) {
  ServerProcess server;
  server.Start();
  auto a = Online(server, 130);
  auto b = Online(server, 131);
  v1::Typing t;
  t.set_user(131);
  t.set_typing(true);
  ASSERT_TRUE(a->conn().SendFrame(Op(wire::Opcode::kTyping), t).ok());
  auto f = b->Expect(Op(wire::Opcode::kTyping), 2'000);
  v1::Typing got;
  ASSERT_TRUE(got.ParseFromString(f.payload));
  EXPECT_EQ(got.user(), 130u);
  EXPECT_TRUE(got.typing());

  // To an offline user, then a message as a marker: the user later gets the message only.
  t.set_user(132);
  ASSERT_TRUE(a->conn().SendFrame(Op(wire::Opcode::kTyping), t).ok());
  SendOne(*a, 132, "after typing");
  auto c = TestClient::Connect(server);
  c->Login(server, 132);
  std::vector<v1::Envelope> got_msgs;
  c->CatchUp(&got_msgs);
  ASSERT_EQ(got_msgs.size(), 1u);
  EXPECT_EQ(got_msgs[0].body(), "after typing");
  EXPECT_EQ(got_msgs[0].kind(), v1::MESSAGE);

  // b's inbox holds no trace of the typing either.
  auto b2 = TestClient::Connect(server);
  b2->Login(server, 131);
  std::vector<v1::Envelope> inbox;
  b2->CatchUp(&inbox);
  EXPECT_TRUE(inbox.empty());
}

// FR-4: DELIVERED and READ reach the sender; after either side turns read receipts off, READ
// no longer arrives while DELIVERED still does.
TEST(ReceiptTest, ReadReceiptsFollowBothSidesSettings) {
  ServerProcess server;
  server.Start();
  auto alice = Online(server, 140);
  auto bob = Online(server, 141);
  const uint64_t id = SendOne(*alice, 141, "hi");
  EXPECT_EQ(NextDeliver(*bob).id(), id);

  auto expect_receipt = [&](v1::ReceiptType type) {
    v1::Envelope e = NextDeliver(*alice);
    EXPECT_EQ(e.kind(), v1::RECEIPT);
    EXPECT_EQ(e.sender(), 141u);
    v1::ReceiptBody body;
    EXPECT_TRUE(body.ParseFromString(e.body()));
    EXPECT_EQ(body.type(), type);
    ASSERT_EQ(body.message_ids_size(), 1);
    EXPECT_EQ(body.message_ids(0), id);
  };
  SendReceipt(*bob, 1, 140, v1::DELIVERED, id);
  expect_receipt(v1::DELIVERED);
  SendReceipt(*bob, 2, 140, v1::READ, id);
  expect_receipt(v1::READ);

  // Bob turns read receipts off: READ is dropped (still OK), DELIVERED still flows. The
  // DELIVERED sent after the READ is the next thing Alice sees.
  SetReadReceipts(*bob, false);
  SendReceipt(*bob, 3, 140, v1::READ, id);
  SendReceipt(*bob, 4, 140, v1::DELIVERED, id);
  expect_receipt(v1::DELIVERED);

  // Bob on again, Alice off: same.
  SetReadReceipts(*bob, true);
  SetReadReceipts(*alice, false);
  SendReceipt(*bob, 5, 140, v1::READ, id);
  SendReceipt(*bob, 6, 140, v1::DELIVERED, id);
  expect_receipt(v1::DELIVERED);
}

// Interest-based fan-out: 1,000 subscribers and 10,000 other connected users; the watched
// user's change produces presence frames for the 1,000 only.
TEST(PresenceTest, FanOutReachesOnlySubscribers) {
  // 11,000 sessions take a while to open on a loaded machine (more with edge processes):
  // the early ones must not reach the idle timeout before the last one is in.
  ServerProcess server({"--idle-timeout-ms", "300000"});
  server.Start();
  constexpr int kSubscribers = 1000, kOthers = 10000;
  std::vector<std::unique_ptr<TestClient>> subs(kSubscribers), others(kOthers);
  auto connect_range = [&](std::vector<std::unique_ptr<TestClient>>& v, uint64_t base, int from,
                           int to) {
    for (int i = from; i < to; ++i) {
      v[i] = TestClient::Connect(server);
      ASSERT_TRUE(v[i] != nullptr);
      v[i]->Login(server, base + static_cast<uint64_t>(i));
    }
  };
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back(connect_range, std::ref(subs), 10'000, t * kSubscribers / 4,
                           (t + 1) * kSubscribers / 4);
      threads.emplace_back(connect_range, std::ref(others), 100'000, t * kOthers / 4,
                           (t + 1) * kOthers / 4);
    }
    for (auto& th : threads) th.join();
  }
  for (auto& s : subs) {
    std::vector<v1::Envelope> none;
    s->CatchUp(&none);
    Subscribe(*s, 1, {999});
    NextPresence(*s);
    s->Expect(Op(wire::Opcode::kOk));
  }
  const uint64_t before = static_cast<uint64_t>(FreshMetric(server, "iris_presence_frames_total").value_or(0));
  auto watched = Online(server, 999);
  for (auto& s : subs) EXPECT_TRUE(NextPresence(*s).online());
  const uint64_t after = static_cast<uint64_t>(FreshMetric(server, "iris_presence_frames_total").value_or(0));
  EXPECT_EQ(after - before, static_cast<uint64_t>(kSubscribers))
      << "presence frames must go to subscribers only";
}

// Reads frames until the next DELIVER and reports whether one with `opcode` came before
// it. With `wait_for_it`, a frame of `opcode` that did not come first is waited for after
// the DELIVER (deadline 20 s): two kinds of push need not arrive in the order they were made.
bool ReadUntil(TestClient& c, uint8_t opcode, bool wait_for_it) {
  bool seen = false, delivered = false;
  while (!delivered || (wait_for_it && !seen)) {
    auto f = c.Next(20'000);
    if (!f.ok()) {
      ADD_FAILURE() << "no " << (delivered ? "frame " + std::to_string(opcode) : "DELIVER")
                    << " within 20 s";
      return seen;
    }
    if (f->opcode == opcode) seen = true;
    if (f->opcode == Op(wire::Opcode::kDeliver)) delivered = true;
  }
  return seen;
}

// Graceful degradation: forced levels shed typing first, then presence, then read receipts,
// while every message is still acknowledged and delivered.
class DegradationTest : public ::testing::TestWithParam<int> {};

TEST_P(DegradationTest, ShedsInOrderAndNeverMessages) {
  const int level = GetParam();
  ServerProcess server({"--degradation-level", std::to_string(level)});
  server.Start();
  auto a = Online(server, 150);
  auto b = Online(server, 151);
  Subscribe(*b, 1, {152});
  NextPresence(*b);  // the subscription's answer is always given (pull-on-demand)
  b->Expect(Op(wire::Opcode::kOk));

  // Typing, then a message. The relayed indicator and the DELIVER take different paths
  // through the server, so their order is not defined: where the indicator is expected,
  // wait for it with a deadline; where it is shed, the marker message is what bounds the
  // wait and the counter of relayed indicators shows none was sent.
  const uint64_t typing_before =
      static_cast<uint64_t>(FreshMetric(server, "iris_typing_frames_total").value_or(0));
  v1::Typing t;
  t.set_user(151);
  t.set_typing(true);
  ASSERT_TRUE(a->conn().SendFrame(Op(wire::Opcode::kTyping), t).ok());
  const uint64_t id = SendOne(*a, 151, "still delivered");
  EXPECT_EQ(ReadUntil(*b, Op(wire::Opcode::kTyping), level < 1), level < 1);
  if (level >= 1) {
    EXPECT_EQ(static_cast<uint64_t>(FreshMetric(server, "iris_typing_frames_total").value_or(0)),
              typing_before);
  }

  // A presence change, then a message, the same way.
  const uint64_t presence_before =
      static_cast<uint64_t>(FreshMetric(server, "iris_presence_frames_total").value_or(0));
  auto c = Online(server, 152);
  SendOne(*a, 151, "marker");
  EXPECT_EQ(ReadUntil(*b, Op(wire::Opcode::kPresence), level < 2), level < 2);
  if (level >= 2) {
    EXPECT_EQ(static_cast<uint64_t>(FreshMetric(server, "iris_presence_frames_total").value_or(0)),
              presence_before);
  }

  // READ then DELIVERED: with receipts shed only DELIVERED arrives.
  SendReceipt(*b, 2, 150, v1::READ, id);
  SendReceipt(*b, 3, 150, v1::DELIVERED, id);
  v1::Envelope first = NextDeliver(*a);
  v1::ReceiptBody body;
  ASSERT_TRUE(body.ParseFromString(first.body()));
  EXPECT_EQ(body.type(), level < 3 ? v1::READ : v1::DELIVERED);

  // Metrics show the level.
  EXPECT_EQ(MetricValue(server, "iris_degradation_level"), static_cast<uint64_t>(level));
}

INSTANTIATE_TEST_SUITE_P(Levels, DegradationTest, ::testing::Values(0, 1, 2, 3));

}  // namespace
}  // namespace iris::testing
