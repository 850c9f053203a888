#pragma once
// Field validation of client payloads (PROTOCOL.md section 8) as pure functions that return
// the protocol's error code: BAD_REQUEST for a malformed field, TOO_LARGE for a body or list
// over its limit. Every field of every client message is checked here before use.

#include <cstdint>
#include <string_view>

#include "common/status.h"
#include "iris/v1/client.pb.h"

namespace iris::wire {

struct ValidationLimits {
  uint32_t max_body_bytes = 64000;
  uint32_t max_page_messages = 1000;
  uint32_t max_users_per_request = 256;
  uint32_t max_receipt_ids = 256;
  uint32_t max_group_members_e2ee = 256;
  uint32_t max_group_members_broadcast = 10000;
  uint32_t max_prekeys_per_upload = 100;
  uint32_t max_client_name_bytes = 64;
  uint32_t max_key_bytes = 256;         // a public key or signature
  uint32_t max_token_bytes = 4096;
  uint32_t max_versions = 16;
  uint32_t max_capabilities = 32;
  uint32_t max_capability_bytes = 32;
};

// Idempotency key: exactly 16 bytes, UUIDv7.
Status ValidateIdempotencyKey(std::string_view key);
// Trace id: empty, or 16 bytes not all zero.
Status ValidateTraceId(std::string_view trace_id);

// A signed device list (docs/protocol.md appendix 20) as far as its shape goes: `list`
// parses as a DeviceList of 1..5 devices with distinct ids 1..63, device 1 among them,
// each with an identity key; a signature. The parsed list goes to *out (when not null).
// What depends on the account (its user, a version above the stored one, ids never
// removed before) is checked where the list is stored.
Status ValidateDeviceList(const v1::SignedDeviceList& m, const ValidationLimits& l,
                          v1::DeviceList* out = nullptr);

Status Validate(const v1::Hello& m, const ValidationLimits& l);
Status Validate(const v1::Ping& m, const ValidationLimits& l);
Status Validate(const v1::Pong& m, const ValidationLimits& l);
Status Validate(const v1::Send& m, const ValidationLimits& l);
Status Validate(const v1::DeliverAck& m, const ValidationLimits& l);
Status Validate(const v1::Sync& m, const ValidationLimits& l);
Status Validate(const v1::SyncAck& m, const ValidationLimits& l);
Status Validate(const v1::History& m, const ValidationLimits& l);
Status Validate(const v1::Receipt& m, const ValidationLimits& l);
Status Validate(const v1::Settings& m, const ValidationLimits& l);
Status Validate(const v1::SettingsGet& m, const ValidationLimits& l);
Status Validate(const v1::PresenceSubscribe& m, const ValidationLimits& l);
Status Validate(const v1::PresenceUnsubscribe& m, const ValidationLimits& l);
Status Validate(const v1::PresenceQuery& m, const ValidationLimits& l);
Status Validate(const v1::Typing& m, const ValidationLimits& l);
Status Validate(const v1::KeysUpload& m, const ValidationLimits& l);
Status Validate(const v1::KeysFetch& m, const ValidationLimits& l);
Status Validate(const v1::GroupCreate& m, const ValidationLimits& l);
Status Validate(const v1::GroupUpdate& m, const ValidationLimits& l);
Status Validate(const v1::GroupGet& m, const ValidationLimits& l);

}  // namespace iris::wire
