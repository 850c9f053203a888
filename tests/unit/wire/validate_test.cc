// Validation rules of PROTOCOL.md section 8, checked through DecodeClientFrame (the path the
// server takes) with the exact error code each rule must produce.

#include "wire/validate.h"

#include <gtest/gtest.h>

#include <string>

#include "unit/wire/sample_messages.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace iris::wire {
namespace {

using namespace samples;  // NOLINT(google-build-using-namespace)

constexpr StatusCode kOk = StatusCode::kOk;
constexpr StatusCode kBad = StatusCode::kBadRequest;
constexpr StatusCode kTooLarge = StatusCode::kTooLarge;

template <typename M>
StatusCode Code(uint8_t opcode, const M& m, const ValidationLimits& limits = {}) {
  Result<ClientMessage> r = DecodeClientFrame(opcode, m.SerializeAsString(), limits);
  if (r.ok()) {
    EXPECT_TRUE(std::holds_alternative<M>(*r));
    return kOk;
  }
  EXPECT_FALSE(r.status().message().empty());
  return r.status().code();
}

std::string UuidWithVersion(int version) {
  std::string k = ValidUuidV7(9);
  k[6] = static_cast<char>((version << 4) | (k[6] & 0x0f));
  return k;
}

std::string UuidWithVariant(int variant) {
  std::string k = ValidUuidV7(9);
  k[8] = static_cast<char>((variant << 6) | (k[8] & 0x3f));
  return k;
}

// Every way an idempotency key can be malformed: BAD_REQUEST.
std::vector<std::string> BadIdempotencyKeys() {
  return {"",
          ValidUuidV7().substr(0, 15),
          ValidUuidV7() + "x",
          std::string(32, 'a'),
          std::string(16, '\0'),
          UuidWithVersion(4),
          UuidWithVersion(8),
          UuidWithVariant(0b00),
          UuidWithVariant(0b01),
          UuidWithVariant(0b11)};
}

TEST(ValidateIdempotencyKeyTest, SixteenByteUuidV7Only) {
  EXPECT_TRUE(ValidateIdempotencyKey(ValidUuidV7()).ok());
  for (const std::string& k : BadIdempotencyKeys()) {
    EXPECT_EQ(ValidateIdempotencyKey(k).code(), kBad) << k.size();
  }
}

TEST(ValidateTraceIdTest, EmptyOrSixteenBytesNotAllZero) {
  EXPECT_TRUE(ValidateTraceId("").ok());
  EXPECT_TRUE(ValidateTraceId(std::string(16, '\x01')).ok());
  std::string one_bit(16, '\0');
  one_bit[15] = 1;
  EXPECT_TRUE(ValidateTraceId(one_bit).ok());
  EXPECT_EQ(ValidateTraceId(std::string(16, '\0')).code(), kBad);
  EXPECT_EQ(ValidateTraceId(std::string(8, '\x01')).code(), kBad);
  EXPECT_EQ(ValidateTraceId(std::string(15, '\x01')).code(), kBad);
  EXPECT_EQ(ValidateTraceId(std::string(17, '\x01')).code(), kBad);
  EXPECT_EQ(ValidateTraceId(std::string(32, '\x01')).code(), kBad);
}

// ---- SEND ----

TEST(ValidateSendTest, BodyIsOneTo64000Bytes) {
  v1::Send m = SampleSend();
  m.set_body("");
  EXPECT_EQ(Code(0x10, m), kBad);
  m.set_body("x");
  EXPECT_EQ(Code(0x10, m), kOk);
  m.set_body(std::string(64'000, 'x'));
  EXPECT_EQ(Code(0x10, m), kOk);
  m.set_body(std::string(64'001, 'x'));
  EXPECT_EQ(Code(0x10, m), kTooLarge);
  m.set_body(std::string(65'000, 'x'));
  EXPECT_EQ(Code(0x10, m), kTooLarge);
}

TEST(ValidateSendTest, CopiesAreOnePerDeviceWithoutABody) {
  v1::Send m = SampleSend();
  m.clear_body();
  for (uint32_t d : {1u, 2u, 63u}) {
    v1::DeviceCopy* c = m.add_copies();
    c->set_device(d);
    c->set_body("c" + std::to_string(d));
  }
  EXPECT_EQ(Code(0x10, m), kOk);
  v1::Send both = m;
  both.set_body("x");
  EXPECT_EQ(Code(0x10, both), kBad);
  v1::Send twice = m;
  twice.mutable_copies(1)->set_device(1);
  EXPECT_EQ(Code(0x10, twice), kBad);
  for (uint32_t bad : {0u, 64u}) {
    v1::Send out_of_range = m;
    out_of_range.mutable_copies(0)->set_device(bad);
    EXPECT_EQ(Code(0x10, out_of_range), kBad) << bad;
  }
  v1::Send empty = m;
  empty.mutable_copies(2)->clear_body();
  EXPECT_EQ(Code(0x10, empty), kBad);
  v1::Send large = m;
  large.mutable_copies(0)->set_body(std::string(64'001, 'x'));
  EXPECT_EQ(Code(0x10, large), kTooLarge);
  v1::Send many = m;
  for (uint32_t d : {4u, 5u, 6u}) {
    v1::DeviceCopy* c = many.add_copies();
    c->set_device(d);
    c->set_body("c");
  }
  EXPECT_EQ(Code(0x10, many), kTooLarge);  // more than 5 devices
  v1::Send group = m;
  group.set_recipient(0);
  group.set_group_id(9);
  EXPECT_EQ(Code(0x10, group), kBad);
}

TEST(ValidateSettingsTest, DeviceListShape) {
  const auto settings = [](std::vector<uint32_t> ids, uint64_t user = 5, uint64_t version = 1) {
    v1::DeviceList list;
    list.set_user(user);
    list.set_version(version);
    for (uint32_t id : ids) {
      v1::Device* d = list.add_devices();
      d->set_id(id);
      d->set_identity_key("key" + std::to_string(id));
    }
    v1::Settings m;
    m.mutable_device_list()->set_list(list.SerializeAsString());
    m.mutable_device_list()->set_signature("sig");
    return m;
  };
  EXPECT_EQ(Code(0x31, settings({1})), kOk);
  EXPECT_EQ(Code(0x31, settings({1, 2, 3, 40, 63})), kOk);
  EXPECT_EQ(Code(0x31, settings({1, 2, 3, 4, 5, 6})), kTooLarge);
  EXPECT_EQ(Code(0x31, settings({2, 3})), kBad);   // no primary device
  EXPECT_EQ(Code(0x31, settings({1, 1})), kBad);   // twice
  EXPECT_EQ(Code(0x31, settings({1, 64})), kBad);  // not a device id
  EXPECT_EQ(Code(0x31, settings({})), kBad);
  EXPECT_EQ(Code(0x31, settings({1}, 0)), kBad);     // user 0
  EXPECT_EQ(Code(0x31, settings({1}, 5, 0)), kBad);  // version 0
  v1::Settings unsigned_list = settings({1});
  unsigned_list.mutable_device_list()->clear_signature();
  EXPECT_EQ(Code(0x31, unsigned_list), kBad);
  v1::Settings garbage = settings({1});
  garbage.mutable_device_list()->set_list("\xff\xff\xff");
  EXPECT_EQ(Code(0x31, garbage), kBad);
  v1::Settings keyless = settings({1});
  v1::DeviceList list;
  list.set_user(5);
  list.set_version(1);
  list.add_devices()->set_id(1);
  keyless.mutable_device_list()->set_list(list.SerializeAsString());
  EXPECT_EQ(Code(0x31, keyless), kBad);
}

TEST(ValidateSendTest, BodyLimitIsConfigurable) {
  ValidationLimits l;
  l.max_body_bytes = 10;
  v1::Send m = SampleSend();
  m.set_body(std::string(10, 'x'));
  EXPECT_EQ(Code(0x10, m, l), kOk);
  m.set_body(std::string(11, 'x'));
  EXPECT_EQ(Code(0x10, m, l), kTooLarge);
}

TEST(ValidateSendTest, ExactlyOneOfRecipientAndGroup) {
  v1::Send m = SampleSend();
  m.set_recipient(0);
  m.set_group_id(0);
  EXPECT_EQ(Code(0x10, m), kBad);
  m.set_recipient(42);
  m.set_group_id(900);
  EXPECT_EQ(Code(0x10, m), kBad);
  m.set_recipient(0);
  EXPECT_EQ(Code(0x10, m), kOk);
  m.set_recipient(42);
  m.set_group_id(0);
  EXPECT_EQ(Code(0x10, m), kOk);
}

TEST(ValidateSendTest, IdempotencyKeyMustBeUuidV7) {
  v1::Send m = SampleSend();
  for (const std::string& k : BadIdempotencyKeys()) {
    m.set_idempotency_key(k);
    EXPECT_EQ(Code(0x10, m), kBad) << k.size();
  }
}

TEST(ValidateSendTest, TraceIdIsEmptyOr16NonZeroBytes) {
  v1::Send m = SampleSend();
  m.set_trace_id("");
  EXPECT_EQ(Code(0x10, m), kOk);
  m.set_trace_id(std::string(16, '\0'));
  EXPECT_EQ(Code(0x10, m), kBad);
  m.set_trace_id(std::string(12, 't'));
  EXPECT_EQ(Code(0x10, m), kBad);
}

TEST(ValidateSendTest, OversizedBodyIsTooLargeEvenWithABadKey) {
  // Rule order: a body over the limit is TOO_LARGE even if the key is also bad, because
  // the size is checked first (a client fixing one problem at a time converges).
  v1::Send m = SampleSend();
  m.set_body(std::string(64'001, 'x'));
  m.set_idempotency_key("short");
  EXPECT_EQ(Code(0x10, m), kTooLarge);
}

// ---- page sizes: HELLO, SYNC, HISTORY ----

TEST(ValidatePageSizeTest, ZeroTo1000) {
  for (uint32_t size : {0u, 1u, 256u, 1000u}) {
    v1::Hello h = SampleHello();
    h.set_page_size(size);
    EXPECT_EQ(Code(0x01, h), kOk) << size;
    v1::Sync s = SampleSync();
    s.set_page_size(size);
    EXPECT_EQ(Code(0x20, s), kOk) << size;
    v1::History hi = SampleHistory();
    hi.set_limit(size);
    EXPECT_EQ(Code(0x24, hi), kOk) << size;
  }
  for (uint32_t size : {1001u, 65'536u, 0xffffffffu}) {
    v1::Hello h = SampleHello();
    h.set_page_size(size);
    EXPECT_EQ(Code(0x01, h), kBad) << size;
    v1::Sync s = SampleSync();
    s.set_page_size(size);
    EXPECT_EQ(Code(0x20, s), kBad) << size;
    v1::History hi = SampleHistory();
    hi.set_limit(size);
    EXPECT_EQ(Code(0x24, hi), kBad) << size;
  }
}

// ---- HELLO ----

TEST(ValidateHelloTest, FieldLimits) {
  v1::Hello h = SampleHello();
  h.clear_versions();
  EXPECT_EQ(Code(0x01, h), kBad);

  h = SampleHello();
  for (uint32_t v = 2; v <= 16; ++v) h.add_versions(v);
  EXPECT_EQ(Code(0x01, h), kOk);  // 16 versions
  h.add_versions(17);
  EXPECT_EQ(Code(0x01, h), kTooLarge);

  h = SampleHello();
  h.clear_capabilities();
  for (int i = 0; i < 32; ++i) h.add_capabilities("cap" + std::to_string(i));
  EXPECT_EQ(Code(0x01, h), kOk);
  h.add_capabilities("one-too-many");
  EXPECT_EQ(Code(0x01, h), kTooLarge);

  h = SampleHello();
  h.add_capabilities(std::string(32, 'c'));
  EXPECT_EQ(Code(0x01, h), kOk);
  h.add_capabilities(std::string(33, 'c'));
  EXPECT_EQ(Code(0x01, h), kTooLarge);

  h = SampleHello();
  h.set_token(std::string(4096, 't'));
  EXPECT_EQ(Code(0x01, h), kOk);
  h.set_token(std::string(4097, 't'));
  EXPECT_EQ(Code(0x01, h), kTooLarge);

  h = SampleHello();
  h.set_client(std::string(64, 'n'));
  EXPECT_EQ(Code(0x01, h), kOk);
  h.set_client(std::string(65, 'n'));
  EXPECT_EQ(Code(0x01, h), kBad);

  h = SampleHello();
  h.set_token("");  // a missing token is the session's business (UNAUTHENTICATED), not here
  EXPECT_EQ(Code(0x01, h), kOk);
}

// ---- user lists: PRESENCE_SUBSCRIBE / UNSUBSCRIBE / QUERY ----

template <typename M>
void CheckUserList(uint8_t opcode) {
  SCOPED_TRACE(std::string(OpcodeName(opcode)));
  M m;
  m.set_request_id(1);
  EXPECT_EQ(Code(opcode, m), kBad);  // empty
  for (uint64_t u = 1; u <= 256; ++u) m.add_users(u);
  EXPECT_EQ(Code(opcode, m), kOk);  // 256 ids
  m.add_users(257);
  EXPECT_EQ(Code(opcode, m), kTooLarge);  // 257 ids
  M zero;
  zero.add_users(5);
  zero.add_users(0);
  EXPECT_EQ(Code(opcode, zero), kBad);
  ValidationLimits l;
  l.max_users_per_request = 3;
  M four;
  for (uint64_t u = 1; u <= 4; ++u) four.add_users(u);
  EXPECT_EQ(Code(opcode, four, l), kTooLarge);
}

TEST(ValidateUserListTest, PresenceSubscribe) { CheckUserList<v1::PresenceSubscribe>(0x40); }
TEST(ValidateUserListTest, PresenceUnsubscribe) { CheckUserList<v1::PresenceUnsubscribe>(0x41); }
TEST(ValidateUserListTest, PresenceQuery) { CheckUserList<v1::PresenceQuery>(0x42); }

// ---- RECEIPT ----

TEST(ValidateReceiptTest, MessageIdsOneTo256) {
  v1::Receipt m = SampleReceipt();
  m.clear_message_ids();
  EXPECT_EQ(Code(0x30, m), kBad);
  for (uint64_t id = 1; id <= 256; ++id) m.add_message_ids(id);
  EXPECT_EQ(Code(0x30, m), kOk);
  m.add_message_ids(257);
  EXPECT_EQ(Code(0x30, m), kTooLarge);
  m = SampleReceipt();
  m.add_message_ids(0);
  EXPECT_EQ(Code(0x30, m), kBad);
}

TEST(ValidateReceiptTest, ToUserTypeAndKey) {
  v1::Receipt m = SampleReceipt();
  m.set_to_user(0);
  EXPECT_EQ(Code(0x30, m), kBad);
  m = SampleReceipt();
  m.set_type(v1::DELIVERED);
  EXPECT_EQ(Code(0x30, m), kOk);
  m.set_type(v1::RECEIPT_UNSPECIFIED);
  EXPECT_EQ(Code(0x30, m), kBad);
  m.set_type(static_cast<v1::ReceiptType>(7));  // a value from a newer protocol
  EXPECT_EQ(Code(0x30, m), kBad);
  m = SampleReceipt();
  for (const std::string& k : BadIdempotencyKeys()) {
    m.set_idempotency_key(k);
    EXPECT_EQ(Code(0x30, m), kBad) << k.size();
  }
}

// ---- TYPING ----

TEST(ValidateTypingTest, ExactlyOneOfUserAndGroup) {
  v1::Typing m;
  EXPECT_EQ(Code(0x44, m), kBad);
  m.set_user(5);
  EXPECT_EQ(Code(0x44, m), kOk);
  m.set_group_id(6);
  EXPECT_EQ(Code(0x44, m), kBad);
  m.set_user(0);
  EXPECT_EQ(Code(0x44, m), kOk);
}

// ---- KEYS ----

TEST(ValidateKeysTest, UploadFields) {
  v1::KeysUpload m = SampleKeysUpload();
  m.clear_identity_key();
  EXPECT_EQ(Code(0x50, m), kBad);
  m.set_identity_key(std::string(256, 'k'));
  EXPECT_EQ(Code(0x50, m), kOk);
  m.set_identity_key(std::string(257, 'k'));
  EXPECT_EQ(Code(0x50, m), kTooLarge);

  m = SampleKeysUpload();
  m.clear_signed_prekey();
  EXPECT_EQ(Code(0x50, m), kBad);
  m = SampleKeysUpload();
  m.mutable_signed_prekey()->clear_public_key();
  EXPECT_EQ(Code(0x50, m), kBad);
  m = SampleKeysUpload();
  m.mutable_signed_prekey()->clear_signature();
  EXPECT_EQ(Code(0x50, m), kBad);
  m = SampleKeysUpload();
  m.mutable_signed_prekey()->set_signature(std::string(257, 's'));
  EXPECT_EQ(Code(0x50, m), kTooLarge);

  m = SampleKeysUpload();
  m.clear_one_time_prekeys();
  EXPECT_EQ(Code(0x50, m), kOk);  // an upload may carry no one-time prekeys
  for (uint32_t i = 0; i < 100; ++i) {
    v1::PreKey* pk = m.add_one_time_prekeys();
    pk->set_id(i);
    pk->set_public_key(std::string(32, 'p'));
  }
  EXPECT_EQ(Code(0x50, m), kOk);  // 100 per frame
  m.add_one_time_prekeys()->set_public_key(std::string(32, 'p'));
  EXPECT_EQ(Code(0x50, m), kTooLarge);  // 101

  m = SampleKeysUpload();
  m.add_one_time_prekeys()->set_id(99);  // no public key
  EXPECT_EQ(Code(0x50, m), kBad);
}

TEST(ValidateKeysTest, FetchNeedsAUser) {
  v1::KeysFetch m = SampleKeysFetch();
  EXPECT_EQ(Code(0x51, m), kOk);
  m.set_user(0);
  EXPECT_EQ(Code(0x51, m), kBad);
}

// ---- GROUPS ----

TEST(ValidateGroupTest, CreateKindMembersAndKey) {
  v1::GroupCreate m = SampleGroupCreate();
  m.set_kind(v1::GROUP_KIND_UNSPECIFIED);
  EXPECT_EQ(Code(0x60, m), kBad);
  m.set_kind(static_cast<v1::GroupKind>(9));
  EXPECT_EQ(Code(0x60, m), kBad);
  m = SampleGroupCreate();
  m.clear_members();
  EXPECT_EQ(Code(0x60, m), kOk);  // the owner alone
  m.add_members(0);
  EXPECT_EQ(Code(0x60, m), kBad);
  m = SampleGroupCreate();
  for (const std::string& k : BadIdempotencyKeys()) {
    m.set_idempotency_key(k);
    EXPECT_EQ(Code(0x60, m), kBad) << k.size();
  }
}

TEST(ValidateGroupTest, E2eeGroupAtMost256MembersIncludingOwner) {
  v1::GroupCreate m = SampleGroupCreate();
  m.set_kind(v1::E2EE);
  m.clear_members();
  for (uint64_t u = 1; u <= 255; ++u) m.add_members(u);
  EXPECT_EQ(Code(0x60, m), kOk);  // 255 + owner = 256
  m.add_members(256);
  EXPECT_EQ(Code(0x60, m), kTooLarge);  // 257
}

TEST(ValidateGroupTest, BroadcastGroupAtMost10000Members) {
  // One request lists at most 256 users; a broadcast group grows by GROUP_UPDATE.
  v1::GroupCreate m = SampleGroupCreate();
  m.set_kind(v1::BROADCAST);
  m.clear_members();
  for (uint64_t u = 1; u <= 256; ++u) m.add_members(u);
  EXPECT_EQ(Code(0x60, m), kOk);
  m.add_members(257);
  EXPECT_EQ(Code(0x60, m), kTooLarge);
  // With a larger per-request limit the group-size cap of 10,000 applies.
  ValidationLimits l;
  l.max_users_per_request = 20'000;
  m.clear_members();
  for (uint64_t u = 1; u <= 9'999; ++u) m.add_members(u);
  EXPECT_EQ(Code(0x60, m, l), kOk);  // 9,999 + owner
  m.add_members(10'000);
  EXPECT_EQ(Code(0x60, m, l), kTooLarge);
}

TEST(ValidateGroupTest, UpdateFields) {
  v1::GroupUpdate m = SampleGroupUpdate();
  m.set_group_id(0);
  EXPECT_EQ(Code(0x61, m), kBad);
  m = SampleGroupUpdate();
  m.clear_add();
  m.clear_remove();
  EXPECT_EQ(Code(0x61, m), kBad);  // changes nothing
  m.add_remove(5);
  EXPECT_EQ(Code(0x61, m), kOk);  // remove only
  m.add_add(0);
  EXPECT_EQ(Code(0x61, m), kBad);
  m = SampleGroupUpdate();
  m.add_remove(0);
  EXPECT_EQ(Code(0x61, m), kBad);
  m = SampleGroupUpdate();
  m.clear_add();
  m.clear_remove();
  for (uint64_t u = 1; u <= 128; ++u) m.add_add(u);
  for (uint64_t u = 1001; u <= 1128; ++u) m.add_remove(u);
  EXPECT_EQ(Code(0x61, m), kOk);  // 256 ids in all
  m.add_add(129);
  EXPECT_EQ(Code(0x61, m), kTooLarge);  // 257 ids in all
}

TEST(ValidateGroupTest, GetNeedsAGroup) {
  v1::GroupGet m = SampleGroupGet();
  EXPECT_EQ(Code(0x62, m), kOk);
  m.set_group_id(0);
  EXPECT_EQ(Code(0x62, m), kBad);
}

// ---- messages without rules ----

TEST(ValidateTest, MessagesWithoutRulesAcceptAnyValues) {
  v1::Ping p;
  p.set_nonce(~0ULL);
  EXPECT_EQ(Code(0x04, p), kOk);
  v1::Pong q;
  EXPECT_EQ(Code(0x05, q), kOk);
  v1::DeliverAck d;
  d.set_cursor(~0ULL);
  EXPECT_EQ(Code(0x13, d), kOk);
  v1::SyncAck a;
  a.set_cursor(1);
  EXPECT_EQ(Code(0x22, a), kOk);
  v1::Settings s;
  s.set_share_presence(false);
  EXPECT_EQ(Code(0x31, s), kOk);
}

TEST(ValidateTest, SettingsBlockListsAreCheckedUserLists) {
  v1::Settings s;
  for (uint64_t u = 1; u <= 256; ++u) s.add_block(u);
  s.add_unblock(1000);
  s.set_group_invites(v1::GROUP_INVITES_CONTACTS);
  EXPECT_EQ(Code(0x31, s), kOk);
  s.add_block(257);
  EXPECT_EQ(Code(0x31, s), kTooLarge);
  s.clear_block();
  s.add_block(0);
  EXPECT_EQ(Code(0x31, s), kBad);
  s.clear_block();
  s.add_block(1000);  // also in unblock
  EXPECT_EQ(Code(0x31, s), kBad);
  s.clear_block();
  s.set_group_invites(static_cast<v1::GroupInvites>(7));
  EXPECT_EQ(Code(0x31, s), kBad);
}

}  // namespace
}  // namespace iris::wire
