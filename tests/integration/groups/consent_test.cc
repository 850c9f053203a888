// Consent against a real irisd (docs/protocol.md appendix 19): blocking a user refuses its
// 1:1 messages and receipts and its group adds; who may add a user to a group; SETTINGS_GET.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

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

void ExpectOk(TestClient& c, const v1::Settings& m) {
  const client::ReceivedFrame f = c.Ask(wire::Opcode::kSettings, m, {wire::Opcode::kOk});
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kOk)) << ErrorOf(f).message();
}

v1::Settings Block(uint64_t request_id, std::vector<uint64_t> block,
                   std::vector<uint64_t> unblock = {}) {
  v1::Settings m;
  m.set_request_id(request_id);
  for (uint64_t u : block) m.add_block(u);
  for (uint64_t u : unblock) m.add_unblock(u);
  return m;
}

v1::SettingsInfo GetSettings(TestClient& c, uint64_t request_id) {
  v1::SettingsGet get;
  get.set_request_id(request_id);
  const client::ReceivedFrame f =
      c.Ask(wire::Opcode::kSettingsGet, get, {wire::Opcode::kSettingsInfo});
  v1::SettingsInfo info;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kSettingsInfo));
  EXPECT_TRUE(info.ParseFromString(f.payload));
  EXPECT_EQ(info.request_id(), request_id);
  return info;
}

v1::Envelope NextDeliver(TestClient& c) {
  auto f = c.Expect(Op(wire::Opcode::kDeliver), 10'000);
  v1::Deliver d;
  EXPECT_TRUE(d.ParseFromString(f.payload));
  return d.message();
}

TEST(ConsentTest, ABlockedUsersMessagesAndReceiptsAreRefusedUntilUnblocked) {
  ServerProcess server;
  server.Start();
  constexpr uint64_t kAlice = 1, kBob = 2, kMallory = 9;
  auto alice = Online(server, kAlice);
  auto bob = Online(server, kBob);
  auto mallory = Online(server, kMallory);

  // Malformed changes are refused and change nothing.
  EXPECT_EQ(
      ErrorOf(alice->Ask(wire::Opcode::kSettings, Block(1, {kAlice}), {wire::Opcode::kOk})).code(),
      1u);  // BAD_REQUEST: blocking oneself
  EXPECT_EQ(ErrorOf(alice->Ask(wire::Opcode::kSettings, Block(2, {kMallory}, {kMallory}),
                               {wire::Opcode::kOk}))
                .code(),
            1u);  // BAD_REQUEST: both lists
  EXPECT_TRUE(GetSettings(*alice, 3).blocked().empty());

  ExpectOk(*alice, Block(4, {kMallory}));
  const v1::SettingsInfo info = GetSettings(*alice, 5);
  EXPECT_EQ(std::vector<uint64_t>(info.blocked().begin(), info.blocked().end()),
            std::vector<uint64_t>{kMallory});
  EXPECT_TRUE(info.read_receipts());
  EXPECT_EQ(info.group_invites(), v1::GROUP_INVITES_EVERYONE);

  const std::string key = NewKey();
  const v1::Error refused = ErrorOf(mallory->Send(10, kAlice, "spam", key));
  EXPECT_EQ(refused.code(), 9u);  // FORBIDDEN
  EXPECT_EQ(refused.request_id(), 10u);
  EXPECT_FALSE(refused.fatal());
  v1::Receipt receipt;
  receipt.set_request_id(11);
  receipt.set_to_user(kAlice);
  receipt.set_type(v1::DELIVERED);
  receipt.add_message_ids(1);
  receipt.set_idempotency_key(NewKey());
  EXPECT_EQ(ErrorOf(mallory->Ask(wire::Opcode::kReceipt, receipt, {wire::Opcode::kOk})).code(), 9u);
  // Mallory may still write to others, and others to Alice.
  EXPECT_EQ(mallory->Send(12, kBob, "hello bob", NewKey()).opcode, Op(wire::Opcode::kSendAck));
  EXPECT_EQ(NextDeliver(*bob).body(), "hello bob");
  EXPECT_EQ(bob->Send(13, kAlice, "from bob", NewKey()).opcode, Op(wire::Opcode::kSendAck));
  EXPECT_EQ(NextDeliver(*alice).body(), "from bob");  // nothing of Mallory's came first

  ExpectOk(*alice, Block(6, {}, {kMallory}));
  EXPECT_TRUE(GetSettings(*alice, 7).blocked().empty());
  // The refused send's retry (same key) is stored now: the refusal kept nothing of it.
  const client::ReceivedFrame ack = mallory->Send(14, kAlice, "spam", key);
  ASSERT_EQ(ack.opcode, Op(wire::Opcode::kSendAck));
  v1::SendAck a;
  ASSERT_TRUE(a.ParseFromString(ack.payload));
  EXPECT_FALSE(a.duplicate());
  const v1::Envelope got = NextDeliver(*alice);
  EXPECT_EQ(got.sender(), kMallory);
  EXPECT_EQ(got.body(), "spam");

  // A SETTINGS_GET right behind a SETTINGS, without waiting for its OK, sees the change.
  ASSERT_TRUE(alice->conn().SendFrame(Op(wire::Opcode::kSettings), Block(20, {kBob})).ok());
  v1::SettingsGet get;
  get.set_request_id(21);
  ASSERT_TRUE(alice->conn().SendFrame(Op(wire::Opcode::kSettingsGet), get).ok());
  v1::Ok ok;
  ASSERT_TRUE(ok.ParseFromString(alice->Expect(Op(wire::Opcode::kOk)).payload));
  EXPECT_EQ(ok.request_id(), 20u);
  v1::SettingsInfo after;
  ASSERT_TRUE(after.ParseFromString(alice->Expect(Op(wire::Opcode::kSettingsInfo)).payload));
  EXPECT_EQ(std::vector<uint64_t>(after.blocked().begin(), after.blocked().end()),
            std::vector<uint64_t>{kBob});
}

TEST(ConsentTest, GroupAddsNeedTheInviteesConsent) {
  ServerProcess server;
  server.Start();
  // Group changes are limited to bursts of 5 per user: Erin tries to add Alice, Bob Dave.
  constexpr uint64_t kAlice = 1, kBob = 2, kCarol = 3, kDave = 4, kErin = 5;
  auto alice = Online(server, kAlice);
  auto bob = Online(server, kBob);
  auto dave = Online(server, kDave);
  auto erin = Online(server, kErin);

  ExpectOk(*alice, Block(1, {kBob, kErin}));
  v1::GroupCreate create;
  create.set_request_id(2);
  create.set_kind(v1::E2EE);
  create.add_members(kAlice);
  create.add_members(kCarol);
  create.set_idempotency_key(NewKey());
  const v1::Error no =
      ErrorOf(erin->Ask(wire::Opcode::kGroupCreate, create, {wire::Opcode::kGroupInfo}));
  EXPECT_EQ(no.code(), 9u);  // FORBIDDEN, the whole create
  EXPECT_NE(no.message().find("user 1 "), std::string::npos) << no.message();

  // Erin's own group: adding Alice later is refused as well.
  create.clear_members();
  create.add_members(kCarol);
  create.set_idempotency_key(NewKey());
  const client::ReceivedFrame erins =
      erin->Ask(wire::Opcode::kGroupCreate, create, {wire::Opcode::kGroupInfo});
  ASSERT_EQ(erins.opcode, Op(wire::Opcode::kGroupInfo));
  v1::GroupInfo erins_group;
  ASSERT_TRUE(erins_group.ParseFromString(erins.payload));
  v1::GroupUpdate add;
  add.set_request_id(3);
  add.set_group_id(erins_group.group_id());
  add.add_add(kAlice);
  EXPECT_EQ(ErrorOf(erin->Ask(wire::Opcode::kGroupUpdate, add, {wire::Opcode::kGroupInfo})).code(),
            9u);

  create.set_idempotency_key(NewKey());
  const client::ReceivedFrame made =
      bob->Ask(wire::Opcode::kGroupCreate, create, {wire::Opcode::kGroupInfo});
  ASSERT_EQ(made.opcode, Op(wire::Opcode::kGroupInfo));
  v1::GroupInfo group;
  ASSERT_TRUE(group.ParseFromString(made.payload));
  add.set_group_id(group.group_id());

  // Dave takes invitations only from users he has written to.
  v1::Settings contacts;
  contacts.set_request_id(4);
  contacts.set_group_invites(v1::GROUP_INVITES_CONTACTS);
  ExpectOk(*dave, contacts);
  EXPECT_EQ(GetSettings(*dave, 5).group_invites(), v1::GROUP_INVITES_CONTACTS);
  add.clear_add();
  add.add_add(kDave);
  EXPECT_EQ(ErrorOf(bob->Ask(wire::Opcode::kGroupUpdate, add, {wire::Opcode::kGroupInfo})).code(),
            9u);
  // Bob writing to Dave does not make Bob Dave's contact...
  EXPECT_EQ(bob->Send(6, kDave, "hi dave", NewKey()).opcode, Op(wire::Opcode::kSendAck));
  EXPECT_EQ(ErrorOf(bob->Ask(wire::Opcode::kGroupUpdate, add, {wire::Opcode::kGroupInfo})).code(),
            9u);
  // ...nor does a message Dave's client sends on its own (an encrypted receipt, say)...
  EXPECT_EQ(dave->Send(7, kBob, "automatic", NewKey()).opcode, Op(wire::Opcode::kSendAck));
  EXPECT_EQ(ErrorOf(bob->Ask(wire::Opcode::kGroupUpdate, add, {wire::Opcode::kGroupInfo})).code(),
            9u);
  // ...Dave choosing to write to Bob does.
  v1::Send hello;
  hello.set_request_id(8);
  hello.set_recipient(kBob);
  hello.set_body("hi bob");
  hello.set_idempotency_key(NewKey());
  hello.set_adds_contact(true);
  EXPECT_EQ(dave->Ask(wire::Opcode::kSend, hello, {wire::Opcode::kSendAck}).opcode,
            Op(wire::Opcode::kSendAck));
  const client::ReceivedFrame added =
      bob->Ask(wire::Opcode::kGroupUpdate, add, {wire::Opcode::kGroupInfo});
  ASSERT_EQ(added.opcode, Op(wire::Opcode::kGroupInfo)) << ErrorOf(added).message();
  v1::GroupInfo after;
  ASSERT_TRUE(after.ParseFromString(added.payload));
  EXPECT_NE(std::find(after.members().begin(), after.members().end(), kDave),
            after.members().end());
}

}  // namespace
}  // namespace iris::testing
