// Groups against a real irisd (PROTOCOL.md "Groups", RFC-001 §8 group sizes).

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>

#include "harness/server_process.h"
#include "iris/client/client.h"
#include "store/inbox_store.h"
#include "support/wait_for.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

constexpr uint8_t Op(wire::Opcode o) { return static_cast<uint8_t>(o); }

std::unique_ptr<TestClient> Online(const ServerProcess& s, uint64_t user) {
  auto c = TestClient::Connect(s);
  c->Login(s, user);
  std::vector<v1::Envelope> ignored;
  c->CatchUp(&ignored);
  return c;
}

// Sends a request and returns the GROUP_INFO or ERROR answering it.
client::ReceivedFrame Ask(TestClient& c, wire::Opcode op, const google::protobuf::MessageLite& m) {
  EXPECT_TRUE(c.conn().SendFrame(Op(op), m).ok());
  for (;;) {
    auto f = c.Next(10'000);
    if (!f.ok()) {
      ADD_FAILURE() << f.status().ToString();
      return {};
    }
    if (f->opcode == Op(wire::Opcode::kGroupInfo) || f->opcode == Op(wire::Opcode::kError)) {
      return *f;
    }
  }
}

v1::GroupInfo Info(const client::ReceivedFrame& f) {
  v1::GroupInfo g;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kGroupInfo));
  EXPECT_TRUE(g.ParseFromString(f.payload));
  return g;
}

uint32_t ErrorCode(const client::ReceivedFrame& f) {
  v1::Error e;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kError));
  EXPECT_TRUE(e.ParseFromString(f.payload));
  return e.code();
}

v1::Envelope NextDeliver(TestClient& c) {
  auto f = c.Expect(Op(wire::Opcode::kDeliver), 10'000);
  v1::Deliver d;
  EXPECT_TRUE(d.ParseFromString(f.payload));
  return d.message();
}

TEST(GroupsTest, CreateSendUpdateAndPermissions) {
  ServerProcess server;
  server.Start();
  auto owner = Online(server, 1);
  auto bob = Online(server, 2);
  auto carol = Online(server, 3);
  auto mallory = Online(server, 9);

  v1::GroupCreate create;
  create.set_request_id(7);
  create.set_kind(v1::E2EE);
  create.add_members(2);
  create.add_members(3);
  const std::string key = NewKey();
  create.set_idempotency_key(key);
  v1::GroupInfo g = Info(Ask(*owner, wire::Opcode::kGroupCreate, create));
  EXPECT_EQ(g.request_id(), 7u);
  EXPECT_NE(g.group_id(), 0u);
  EXPECT_EQ(g.owner(), 1u);
  EXPECT_EQ(g.members_size(), 3);
  EXPECT_EQ(g.version(), 1u);
  for (TestClient* c : {owner.get(), bob.get(), carol.get()}) {
    v1::Envelope e = NextDeliver(*c);
    EXPECT_EQ(e.kind(), v1::GROUP_EVENT);
    EXPECT_EQ(e.group_id(), g.group_id());
  }

  // A retried create returns the same group and stores no second event.
  create.set_request_id(8);
  EXPECT_EQ(Info(Ask(*owner, wire::Opcode::kGroupCreate, create)).group_id(), g.group_id());

  // Group send: every member but the sender gets it.
  v1::Send send;
  send.set_request_id(10);
  send.set_group_id(g.group_id());
  send.set_body("to the group");
  send.set_idempotency_key(NewKey());
  ASSERT_TRUE(bob->conn().SendFrame(Op(wire::Opcode::kSend), send).ok());
  bob->Expect(Op(wire::Opcode::kSendAck));
  for (TestClient* c : {owner.get(), carol.get()}) {
    v1::Envelope e = NextDeliver(*c);
    EXPECT_EQ(e.kind(), v1::MESSAGE);
    EXPECT_EQ(e.body(), "to the group");
    EXPECT_EQ(e.sender(), 2u);
    EXPECT_EQ(e.group_id(), g.group_id());
  }

  // Non-members may neither send nor read.
  send.set_idempotency_key(NewKey());
  ASSERT_TRUE(mallory->conn().SendFrame(Op(wire::Opcode::kSend), send).ok());
  EXPECT_EQ(ErrorCode(mallory->Expect(Op(wire::Opcode::kError))),
            static_cast<uint32_t>(StatusCode::kForbidden));
  v1::GroupGet get;
  get.set_request_id(11);
  get.set_group_id(g.group_id());
  EXPECT_EQ(ErrorCode(Ask(*mallory, wire::Opcode::kGroupGet, get)),
            static_cast<uint32_t>(StatusCode::kForbidden));
  get.set_group_id(12345);
  EXPECT_EQ(ErrorCode(Ask(*owner, wire::Opcode::kGroupGet, get)),
            static_cast<uint32_t>(StatusCode::kNotFound));

  // Only the owner changes membership; a member may leave.
  v1::GroupUpdate upd;
  upd.set_request_id(12);
  upd.set_group_id(g.group_id());
  upd.add_add(9);
  EXPECT_EQ(ErrorCode(Ask(*bob, wire::Opcode::kGroupUpdate, upd)),
            static_cast<uint32_t>(StatusCode::kForbidden));
  v1::GroupInfo g2 = Info(Ask(*owner, wire::Opcode::kGroupUpdate, upd));
  EXPECT_EQ(g2.version(), 2u);
  EXPECT_EQ(g2.members_size(), 4);
  EXPECT_EQ(NextDeliver(*mallory).kind(), v1::GROUP_EVENT);
  v1::GroupUpdate leave;
  leave.set_request_id(13);
  leave.set_group_id(g.group_id());
  leave.add_remove(3);
  EXPECT_EQ(Info(Ask(*carol, wire::Opcode::kGroupUpdate, leave)).version(), 3u);
  get.set_group_id(g.group_id());
  EXPECT_EQ(Info(Ask(*bob, wire::Opcode::kGroupGet, get)).members_size(), 3);
}

TEST(GroupsTest, BroadcastOnlyOwnerSendsAndSizeCaps) {
  ServerProcess server;
  server.Start();
  auto owner = Online(server, 20);
  auto fan = Online(server, 21);
  v1::GroupCreate create;
  create.set_request_id(1);
  create.set_kind(v1::BROADCAST);
  create.add_members(21);
  create.set_idempotency_key(NewKey());
  v1::GroupInfo g = Info(Ask(*owner, wire::Opcode::kGroupCreate, create));
  v1::Send send;
  send.set_request_id(2);
  send.set_group_id(g.group_id());
  send.set_body("news");
  send.set_idempotency_key(NewKey());
  ASSERT_TRUE(fan->conn().SendFrame(Op(wire::Opcode::kSend), send).ok());
  EXPECT_EQ(ErrorCode(fan->Expect(Op(wire::Opcode::kError))),
            static_cast<uint32_t>(StatusCode::kForbidden));

  // E2EE groups hold at most 256 members: 256 listed + the owner is one too many.
  v1::GroupCreate big;
  big.set_request_id(3);
  big.set_kind(v1::E2EE);
  for (uint64_t u = 1000; u < 1256; ++u) big.add_members(u);
  big.set_idempotency_key(NewKey());
  EXPECT_EQ(ErrorCode(Ask(*owner, wire::Opcode::kGroupCreate, big)),
            static_cast<uint32_t>(StatusCode::kTooLarge));
}

// Reads `c`'s frames until the answer (GROUP_INFO, SEND_ACK or ERROR) to `request_id`,
// skipping pushes and other answers.
client::ReceivedFrame AnswerTo(TestClient& c, uint64_t request_id) {
  for (;;) {
    auto f = c.Next(10'000);
    if (!f.ok()) {
      ADD_FAILURE() << "no answer to request " << request_id << ": " << f.status().ToString();
      return {};
    }
    if (f->opcode != Op(wire::Opcode::kGroupInfo) && f->opcode != Op(wire::Opcode::kSendAck) &&
        f->opcode != Op(wire::Opcode::kError)) {
      continue;
    }
    if (wire::PeekRequestId(f->payload) == request_id) return *f;  // field 1 of all three
  }
}

// Sends a PING and returns the DELIVERs that arrive before its PONG.
std::vector<v1::Envelope> DeliversUntilPong(TestClient& c, uint64_t nonce) {
  v1::Ping ping;
  ping.set_nonce(nonce);
  EXPECT_TRUE(c.conn().SendFrame(Op(wire::Opcode::kPing), ping).ok());
  std::vector<v1::Envelope> out;
  for (;;) {
    auto f = c.Next(10'000);
    if (!f.ok()) {
      ADD_FAILURE() << "no PONG: " << f.status().ToString();
      return out;
    }
    if (f->opcode == Op(wire::Opcode::kPong)) return out;
    if (f->opcode == Op(wire::Opcode::kDeliver)) {
      v1::Deliver d;
      EXPECT_TRUE(d.ParseFromString(f->payload));
      out.push_back(d.message());
    }
  }
}

// Requests one client pipelines without waiting keep their order (PROTOCOL.md: messages of
// one sender reach a recipient in send order; a group change applies to the sends after
// it), although group work runs on core workers: a GROUP_CREATE followed at once by a 1:1
// send, a group send, a removal followed at once by a send the removed member must not get,
// and a last 1:1 send.
TEST(GroupsTest, PipelinedGroupRequestsKeepTheSendersOrder) {
  ServerProcess server;
  server.Start();
  auto bob = Online(server, 22);
  auto carol = Online(server, 23);
  constexpr int kRounds = 20;
  const auto label = [](const v1::Envelope& e) {
    return e.kind() == v1::GROUP_EVENT ? std::string("event") : e.body();
  };
  for (int round = 0; round < kRounds; ++round) {
    const std::string r = std::to_string(round);
    const uint64_t base = 100 * static_cast<uint64_t>(round + 1);
    // A new owner each round: group changes have a per-user budget (5 at once).
    auto owner = Online(server, 1000 + static_cast<uint64_t>(round));
    v1::GroupCreate create;
    create.set_request_id(base + 1);
    create.set_kind(v1::E2EE);
    create.add_members(22);
    create.add_members(23);
    create.set_idempotency_key(NewKey());
    ASSERT_TRUE(owner->conn().SendFrame(Op(wire::Opcode::kGroupCreate), create).ok());
    v1::Send direct;
    direct.set_request_id(base + 2);
    direct.set_recipient(22);
    direct.set_body("direct " + r + " a");
    direct.set_idempotency_key(NewKey());
    ASSERT_TRUE(owner->conn().SendFrame(Op(wire::Opcode::kSend), direct).ok());
    const v1::GroupInfo g = Info(AnswerTo(*owner, base + 1));
    ASSERT_NE(g.group_id(), 0u);
    v1::Send to_all;
    to_all.set_request_id(base + 3);
    to_all.set_group_id(g.group_id());
    to_all.set_body("all " + r);
    to_all.set_idempotency_key(NewKey());
    v1::GroupUpdate remove;
    remove.set_request_id(base + 4);
    remove.set_group_id(g.group_id());
    remove.add_remove(23);
    v1::Send after;
    after.set_request_id(base + 5);
    after.set_group_id(g.group_id());
    after.set_body("without carol " + r);
    after.set_idempotency_key(NewKey());
    direct.set_request_id(base + 6);
    direct.set_body("direct " + r + " b");
    direct.set_idempotency_key(NewKey());
    ASSERT_TRUE(owner->conn().SendFrame(Op(wire::Opcode::kSend), to_all).ok());
    ASSERT_TRUE(owner->conn().SendFrame(Op(wire::Opcode::kGroupUpdate), remove).ok());
    ASSERT_TRUE(owner->conn().SendFrame(Op(wire::Opcode::kSend), after).ok());
    ASSERT_TRUE(owner->conn().SendFrame(Op(wire::Opcode::kSend), direct).ok());
    EXPECT_EQ(AnswerTo(*owner, base + 4).opcode, Op(wire::Opcode::kGroupInfo));
    EXPECT_EQ(AnswerTo(*owner, base + 6).opcode, Op(wire::Opcode::kSendAck));

    std::vector<std::string> bob_saw;
    for (int i = 0; i < 6; ++i) bob_saw.push_back(label(NextDeliver(*bob)));
    EXPECT_EQ(bob_saw, (std::vector<std::string>{"event", "direct " + r + " a", "all " + r, "event",
                                                 "without carol " + r, "direct " + r + " b"}))
        << "round " << round;
    std::vector<std::string> carol_saw;
    for (int i = 0; i < 3; ++i) carol_saw.push_back(label(NextDeliver(*carol)));
    EXPECT_EQ(carol_saw, (std::vector<std::string>{"event", "all " + r, "event"}))
        << "round " << round;
  }
  // Nothing sent after her removals ever reached carol.
  for (const v1::Envelope& e : DeliversUntilPong(*carol, 9999)) {
    ADD_FAILURE() << "carol got " << label(e) << " after her removal";
  }
}

// Sends `m` (GROUP_CREATE or GROUP_UPDATE) until it is not RATE_LIMITED (group changes have
// a per-user budget that refills over time) and returns the answer; a failed test when the
// budget does not come back within 60 s.
client::ReceivedFrame AskPastRateLimit(TestClient& c, wire::Opcode op,
                                       const google::protobuf::MessageLite& m) {
  client::ReceivedFrame answer;
  const bool answered = PollUntil(
      [&] {
        answer = Ask(c, op, m);
        if (answer.opcode != Op(wire::Opcode::kError)) return true;
        v1::Error e;
        EXPECT_TRUE(e.ParseFromString(answer.payload));
        return e.code() != static_cast<uint32_t>(StatusCode::kRateLimited);
      },
      60'000, 50);
  if (!answered) ADD_FAILURE() << "still rate limited";
  return answer;
}

// A BROADCAST group of `members` users (the owner included) whose ids are 64-bit (10-byte
// varints): the whole list (about 100 KB) cannot fit one frame. Built with one create and
// updates of 256 (the per-request user-list cap).
v1::GroupInfo BuildBroadcastGroup(TestClient& owner, uint64_t base, uint32_t members) {
  v1::GroupCreate create;
  create.set_request_id(1);
  create.set_kind(v1::BROADCAST);
  create.set_idempotency_key(NewKey());
  uint64_t next = base + 1;
  const uint64_t end = base + members;  // members - 1 besides the owner
  for (; next < end && create.members_size() < 256; ++next) create.add_members(next);
  v1::GroupInfo g = Info(AskPastRateLimit(owner, wire::Opcode::kGroupCreate, create));
  uint64_t rid = 2;
  while (next < end) {
    v1::GroupUpdate upd;
    upd.set_request_id(rid++);
    upd.set_group_id(g.group_id());
    for (; next < end && upd.add_size() < 256; ++next) upd.add_add(next);
    g = Info(AskPastRateLimit(owner, wire::Opcode::kGroupUpdate, upd));
  }
  return g;
}

// Collects a library client's events.
class EventLog {
 public:
  void Add(const client::Event& e) {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(e);
    cv_.notify_all();
  }
  template <typename T>
  std::optional<T> WaitFor(int timeout_ms) {
    std::unique_lock<std::mutex> l(mu_);
    std::optional<T> found;
    cv_.wait_for(l, std::chrono::milliseconds(timeout_ms), [&] {
      for (const client::Event& e : events_) {
        if (const T* t = std::get_if<T>(&e)) {
          found = *t;
          return true;
        }
      }
      return false;
    });
    return found;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<client::Event> events_;
};

// Issue 19: the member list of a 10,000-member broadcast group with 64-bit ids (~100 KB)
// is paged (GROUP_INFO.members_has_more / members_cursor, GROUP_GET.members_after), every
// page within one frame; the client library joins the pages and reports the whole list.
TEST(GroupsTest, LargeMemberListIsPagedAndTheLibraryReturnsItWhole) {
  ServerProcess server;
  server.Start();
  constexpr uint64_t kBase = 0xF000'0000'0000'0000ULL;
  constexpr uint32_t kMembers = 10'000;
  auto owner = Online(server, kBase);
  const v1::GroupInfo created = BuildBroadcastGroup(*owner, kBase, kMembers);
  EXPECT_EQ(created.member_count(), kMembers);
  EXPECT_TRUE(created.members_has_more());
  std::vector<uint64_t> expected;
  for (uint64_t u = kBase; u < kBase + kMembers; ++u) expected.push_back(u);

  // On the wire: pages of at most one frame, ascending, together the whole list.
  std::vector<uint64_t> paged;
  uint64_t after = 0;
  int pages = 0;
  for (;;) {
    v1::GroupGet get;
    get.set_request_id(1000 + static_cast<uint64_t>(pages));
    get.set_group_id(created.group_id());
    get.set_members_after(after);
    client::ReceivedFrame f = Ask(*owner, wire::Opcode::kGroupGet, get);
    ASSERT_EQ(f.opcode, Op(wire::Opcode::kGroupInfo));
    EXPECT_LE(f.payload.size(), 65'535u);
    const v1::GroupInfo page = Info(f);
    ++pages;
    EXPECT_EQ(page.member_count(), kMembers);
    EXPECT_EQ(page.version(), created.version());
    paged.insert(paged.end(), page.members().begin(), page.members().end());
    if (!page.members_has_more()) break;
    ASSERT_GT(page.members_size(), 0);
    EXPECT_EQ(page.members_cursor(), page.members(page.members_size() - 1));
    after = page.members_cursor();
    ASSERT_LT(pages, 10);
  }
  EXPECT_EQ(pages, 3);  // 4,096 per page
  EXPECT_EQ(paged, expected);

  // The library: one GetGroup, one event with the whole list.
  char tmpl[] = "/tmp/iris-groups-test-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  EventLog log;
  client::ClientOptions o;
  o.state_dir = dir + "/member";
  o.server.host = "127.0.0.1";
  o.server.port = server.port();
  o.server.ca_file = server.cert_file();
  o.token = server.Token(kBase + 1);
  o.prekey_pool_size = 5;
  o.seed = 19;
  o.on_event = [&log](const client::Event& e) { log.Add(e); };
  auto member = client::Client::Open(std::move(o));
  ASSERT_TRUE(member.ok()) << member.status().ToString();
  (*member)->Start();
  (*member)->GetGroup(created.group_id());
  const auto got = log.WaitFor<client::GroupInfoEvent>(60'000);
  (*member)->Stop();
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(got.has_value()) << "no GroupInfoEvent";
  EXPECT_EQ(got->group_id, created.group_id());
  EXPECT_EQ(got->kind, client::GroupKind::kBroadcast);
  EXPECT_EQ(got->owner, kBase);
  EXPECT_EQ(got->version, created.version());
  EXPECT_EQ(got->pages, 3u);
  EXPECT_EQ(got->members, expected);
}

double Metric(const ServerProcess& server, const std::string& series) {
  return FreshMetric(server, series).value_or(-1);
}

// Issue 19, RFC-001 §8: a message to a 10,000-member broadcast group is acknowledged once it
// is durable as one fan-out job; the fan-out worker then appends it to the members' inboxes
// at --fanout-inboxes-per-sec. irisd is killed (SIGKILL) in the middle of the fan-out and
// restarted: every member ends up with the message exactly once (read from the store), no
// 1 s window saw more than twice the flag's appends, another user's 1:1 send was answered
// while the fan-out ran, and a retried SEND is answered as the same message.
TEST(GroupsTest, LargeGroupFanOutIsThrottledAndResumesExactlyOnceAfterKill9) {
  constexpr uint32_t kRate = 1000;
  ServerProcess server({"--fanout-inboxes-per-sec", std::to_string(kRate)});
  server.Start();
  constexpr uint64_t kBase = 0xE000'0000'0000'0000ULL;
  constexpr uint32_t kMembers = 10'000;
  const v1::GroupInfo g = [&] {
    auto owner = Online(server, kBase);
    return BuildBroadcastGroup(*owner, kBase, kMembers);
  }();
  auto owner = Online(server, kBase);
  auto alice = Online(server, 31);
  auto bob = Online(server, 32);

  v1::Send news;
  news.set_request_id(500);
  news.set_group_id(g.group_id());
  news.set_body("news for everyone");
  news.set_idempotency_key(NewKey());
  ASSERT_TRUE(owner->conn().SendFrame(Op(wire::Opcode::kSend), news).ok());
  client::ReceivedFrame ack = AnswerTo(*owner, 500);
  ASSERT_EQ(ack.opcode, Op(wire::Opcode::kSendAck));
  v1::SendAck first;
  ASSERT_TRUE(first.ParseFromString(ack.payload));

  // Other traffic is answered while the fan-out runs.
  v1::Send direct;
  direct.set_request_id(501);
  direct.set_recipient(32);
  direct.set_body("hi bob");
  direct.set_idempotency_key(NewKey());
  ASSERT_TRUE(alice->conn().SendFrame(Op(wire::Opcode::kSend), direct).ok());
  EXPECT_EQ(AnswerTo(*alice, 501).opcode, Op(wire::Opcode::kSendAck));
  EXPECT_EQ(NextDeliver(*bob).body(), "hi bob");
  EXPECT_GT(Metric(server, "iris_group_fanout_backlog"), 0) << "the fan-out already ended";
  EXPECT_EQ(Metric(server, "iris_group_fanout_jobs"), 1);

  // SIGKILL once a good part, not all, is out.
  ASSERT_TRUE(PollUntil([&] { return Metric(server, "iris_group_fanout_appended_total") >= 3000; },
                        60'000, 20));
  const double before_kill = Metric(server, "iris_group_fanout_appended_total");
  EXPECT_LT(before_kill, kMembers - 1);
  owner.reset();
  alice.reset();
  bob.reset();
  server.KillAndRestart();
  // The job resumes from the store and finishes.
  ASSERT_TRUE(PollUntil(
      [&] {
        return Metric(server, "iris_group_fanout_jobs") == 0 &&
               Metric(server, "iris_group_fanout_appended_total") > 0;
      },
      60'000, 50));
  EXPECT_EQ(Metric(server, "iris_group_fanout_backlog"), 0);
  // A retry of the SEND is the same message: no second fan-out.
  owner = Online(server, kBase);
  news.set_request_id(502);
  ASSERT_TRUE(owner->conn().SendFrame(Op(wire::Opcode::kSend), news).ok());
  ack = AnswerTo(*owner, 502);
  ASSERT_EQ(ack.opcode, Op(wire::Opcode::kSendAck));
  v1::SendAck again;
  ASSERT_TRUE(again.ParseFromString(ack.payload));
  EXPECT_TRUE(again.duplicate());
  EXPECT_EQ(again.message_id(), first.message_id());
  EXPECT_EQ(Metric(server, "iris_group_fanout_jobs"), 0);
  owner.reset();
  ASSERT_EQ(server.Stop(), 0);

  // Every member's inbox, from the store itself.
  store::StoreOptions so;
  so.path = server.data_dir() + "/store";
  so.run_archiver = false;
  auto st = store::InboxStore::Open(so);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  std::vector<uint64_t> at_ms;  // when each copy was appended (the HLC id's time)
  uint32_t missing = 0, doubled = 0;
  for (uint64_t u = kBase + 1; u < kBase + kMembers; ++u) {
    auto page = (*st)->Scan(u, 0, 1000, 1u << 24);
    ASSERT_TRUE(page.ok());
    int copies = 0;
    for (const v1::Envelope& e : page->messages) {
      if (e.kind() != v1::MESSAGE) continue;
      EXPECT_EQ(e.body(), "news for everyone");
      EXPECT_EQ(e.group_id(), g.group_id());
      ++copies;
      at_ms.push_back(e.id() >> 16);
    }
    if (copies == 0) ++missing;
    if (copies > 1) ++doubled;
  }
  auto owner_inbox = (*st)->Scan(kBase, 0, 1000, 1u << 24);
  ASSERT_TRUE(owner_inbox.ok());
  for (const v1::Envelope& e : owner_inbox->messages) EXPECT_NE(e.kind(), v1::MESSAGE);
  EXPECT_EQ(missing, 0u);
  EXPECT_EQ(doubled, 0u);
  // The rate: a generous bound, twice the flag, over every 1 s window.
  std::sort(at_ms.begin(), at_ms.end());
  size_t worst = 0;
  for (size_t lo = 0, hi = 0; hi < at_ms.size(); ++hi) {
    while (at_ms[hi] - at_ms[lo] >= 1000) ++lo;
    worst = std::max(worst, hi - lo + 1);
  }
  EXPECT_LE(worst, 2u * kRate) << "appends in the busiest 1 s window";
  std::cout << "fan-out: busiest 1 s window " << worst << " appends; " << at_ms.size() << " in "
            << (at_ms.back() - at_ms.front()) << " ms; " << before_kill << " before the kill\n";
}

}  // namespace
}  // namespace iris::testing
