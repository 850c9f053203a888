// Groups against a real irisd (PROTOCOL.md "Groups", RFC-001 §8 group sizes).

#include <gtest/gtest.h>

#include "harness/server_process.h"
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

}  // namespace
}  // namespace iris::testing
