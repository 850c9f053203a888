#pragma once
// Valid example messages for every opcode a client may send, shared by the wire unit tests,
// the wire property tests and the fuzz corpus generator.
//
// Thread-safety: pure functions.

#include <cstdint>
#include <string>
#include <vector>

#include "iris/v1/client.pb.h"

namespace iris::wire::samples {

// A well-formed UUIDv7 (16 bytes) whose random bits are derived from `salt`.
inline std::string ValidUuidV7(uint64_t salt = 1) {
  std::string k(16, '\0');
  const uint64_t ms = 0x018bcfe56800ULL;  // 2023-11-14
  for (int i = 0; i < 6; ++i) k[i] = static_cast<char>(ms >> (8 * (5 - i)));
  for (int i = 6; i < 16; ++i) k[i] = static_cast<char>((salt >> (8 * (i % 8))) ^ (i * 37));
  k[6] = static_cast<char>(0x70 | (k[6] & 0x0f));
  k[8] = static_cast<char>(0x80 | (k[8] & 0x3f));
  return k;
}

inline v1::Hello SampleHello() {
  v1::Hello m;
  m.add_versions(1);
  m.add_capabilities("receipts");
  m.add_capabilities("presence");
  m.set_token("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2ln");
  m.set_cursor(0x0123456789abcdefULL);
  m.set_page_size(256);
  m.set_client("iris-cli/0.1");
  return m;
}

inline v1::Ping SamplePing() {
  v1::Ping m;
  m.set_nonce(77);
  return m;
}

inline v1::Pong SamplePong() {
  v1::Pong m;
  m.set_nonce(78);
  return m;
}

inline v1::Send SampleSend() {
  v1::Send m;
  m.set_request_id(1001);
  m.set_idempotency_key(ValidUuidV7(1001));
  m.set_recipient(42);
  m.set_body("ciphertext");
  m.set_trace_id(
      std::string("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10", 16));
  return m;
}

inline v1::DeliverAck SampleDeliverAck() {
  v1::DeliverAck m;
  m.set_cursor(0x018bcfe568000101ULL);
  return m;
}

inline v1::Sync SampleSync() {
  v1::Sync m;
  m.set_cursor(0x018bcfe568000001ULL);
  m.set_page_size(100);
  return m;
}

inline v1::SyncAck SampleSyncAck() {
  v1::SyncAck m;
  m.set_cursor(0x018bcfe568000201ULL);
  return m;
}

inline v1::History SampleHistory() {
  v1::History m;
  m.set_request_id(1002);
  m.set_before(0x018bcfe568000001ULL);
  m.set_limit(50);
  return m;
}

inline v1::Receipt SampleReceipt() {
  v1::Receipt m;
  m.set_request_id(1003);
  m.set_to_user(43);
  m.set_type(v1::READ);
  m.add_message_ids(0x018bcfe568000001ULL);
  m.add_message_ids(0x018bcfe568000101ULL);
  m.set_idempotency_key(ValidUuidV7(1003));
  return m;
}

inline v1::Settings SampleSettings() {
  v1::Settings m;
  m.set_request_id(1004);
  m.set_read_receipts(false);
  m.add_block(45);
  m.add_unblock(46);
  m.set_group_invites(v1::GROUP_INVITES_CONTACTS);
  return m;
}

inline v1::SettingsGet SampleSettingsGet() {
  v1::SettingsGet m;
  m.set_request_id(1013);
  return m;
}

inline v1::PresenceSubscribe SamplePresenceSubscribe() {
  v1::PresenceSubscribe m;
  m.set_request_id(1005);
  m.add_users(43);
  m.add_users(44);
  return m;
}

inline v1::PresenceUnsubscribe SamplePresenceUnsubscribe() {
  v1::PresenceUnsubscribe m;
  m.set_request_id(1006);
  m.add_users(44);
  return m;
}

inline v1::PresenceQuery SamplePresenceQuery() {
  v1::PresenceQuery m;
  m.set_request_id(1007);
  m.add_users(45);
  return m;
}

inline v1::Typing SampleTyping() {
  v1::Typing m;
  m.set_user(43);
  m.set_typing(true);
  return m;
}

inline v1::KeysUpload SampleKeysUpload() {
  v1::KeysUpload m;
  m.set_request_id(1008);
  m.set_registration_id(7);
  m.set_identity_key(std::string(32, 'I'));
  m.mutable_signed_prekey()->set_id(1);
  m.mutable_signed_prekey()->set_public_key(std::string(32, 'S'));
  m.mutable_signed_prekey()->set_signature(std::string(64, 'G'));
  for (uint32_t i = 1; i <= 3; ++i) {
    v1::PreKey* pk = m.add_one_time_prekeys();
    pk->set_id(i);
    pk->set_public_key(std::string(32, static_cast<char>('a' + i)));
  }
  return m;
}

inline v1::KeysFetch SampleKeysFetch() {
  v1::KeysFetch m;
  m.set_request_id(1009);
  m.set_user(43);
  return m;
}

inline v1::GroupCreate SampleGroupCreate() {
  v1::GroupCreate m;
  m.set_request_id(1010);
  m.set_kind(v1::E2EE);
  m.add_members(43);
  m.add_members(44);
  m.set_idempotency_key(ValidUuidV7(1010));
  return m;
}

inline v1::GroupUpdate SampleGroupUpdate() {
  v1::GroupUpdate m;
  m.set_request_id(1011);
  m.set_group_id(900);
  m.add_add(45);
  m.add_remove(44);
  return m;
}

inline v1::GroupGet SampleGroupGet() {
  v1::GroupGet m;
  m.set_request_id(1012);
  m.set_group_id(900);
  return m;
}

// One valid payload per client opcode, serialised.
struct SamplePayload {
  uint8_t opcode;
  std::string payload;
};

inline std::vector<SamplePayload> AllSamplePayloads() {
  return {
      {0x01, SampleHello().SerializeAsString()},
      {0x04, SamplePing().SerializeAsString()},
      {0x05, SamplePong().SerializeAsString()},
      {0x10, SampleSend().SerializeAsString()},
      {0x13, SampleDeliverAck().SerializeAsString()},
      {0x20, SampleSync().SerializeAsString()},
      {0x22, SampleSyncAck().SerializeAsString()},
      {0x24, SampleHistory().SerializeAsString()},
      {0x30, SampleReceipt().SerializeAsString()},
      {0x31, SampleSettings().SerializeAsString()},
      {0x33, SampleSettingsGet().SerializeAsString()},
      {0x40, SamplePresenceSubscribe().SerializeAsString()},
      {0x41, SamplePresenceUnsubscribe().SerializeAsString()},
      {0x42, SamplePresenceQuery().SerializeAsString()},
      {0x44, SampleTyping().SerializeAsString()},
      {0x50, SampleKeysUpload().SerializeAsString()},
      {0x51, SampleKeysFetch().SerializeAsString()},
      {0x60, SampleGroupCreate().SerializeAsString()},
      {0x61, SampleGroupUpdate().SerializeAsString()},
      {0x62, SampleGroupGet().SerializeAsString()},
  };
}

}  // namespace iris::wire::samples
