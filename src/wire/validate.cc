#include "wire/validate.h"

#include <algorithm>
#include <string>

#include "common/devices.h"
#include "common/uuid.h"

namespace iris::wire {
namespace {

template <typename List>
Status ValidateUserList(const List& users, const ValidationLimits& l, const char* what,
                        bool allow_empty = false) {
  if (users.empty() && !allow_empty) return BadRequest(std::string(what) + " is empty");
  if (static_cast<uint32_t>(users.size()) > l.max_users_per_request) {
    return TooLarge(std::string(what) + " has " + std::to_string(users.size()) +
                    " ids; at most " + std::to_string(l.max_users_per_request));
  }
  for (uint64_t u : users) {
    if (u == 0) return BadRequest(std::string(what) + " contains user id 0");
  }
  return Status::Ok();
}

Status ValidatePageSize(uint32_t page_size, const ValidationLimits& l) {
  if (page_size > l.max_page_messages) {
    return BadRequest("page_size " + std::to_string(page_size) + " exceeds " +
                      std::to_string(l.max_page_messages));
  }
  return Status::Ok();
}

Status ValidateKey(std::string_view key, const ValidationLimits& l, const char* what) {
  if (key.empty()) return BadRequest(std::string(what) + " is empty");
  if (key.size() > l.max_key_bytes) return TooLarge(std::string(what) + " is too long");
  return Status::Ok();
}

}  // namespace

Status ValidateIdempotencyKey(std::string_view key) {
  if (key.size() != 16) {
    return BadRequest("idempotency_key must be 16 bytes, got " + std::to_string(key.size()));
  }
  if (!IsUuidV7(key)) return BadRequest("idempotency_key is not a UUIDv7");
  return Status::Ok();
}

Status ValidateTraceId(std::string_view t) {
  if (t.empty()) return Status::Ok();
  if (t.size() != 16) return BadRequest("trace_id must be empty or 16 bytes");
  for (char c : t) {
    if (c != 0) return Status::Ok();
  }
  return BadRequest("trace_id is all zero");
}

Status Validate(const v1::Hello& m, const ValidationLimits& l) {
  if (m.versions().empty()) return BadRequest("hello.versions is empty");
  if (static_cast<uint32_t>(m.versions_size()) > l.max_versions) {
    return TooLarge("hello.versions has too many entries");
  }
  if (static_cast<uint32_t>(m.capabilities_size()) > l.max_capabilities) {
    return TooLarge("hello.capabilities has too many entries");
  }
  for (const auto& c : m.capabilities()) {
    if (c.size() > l.max_capability_bytes) return TooLarge("hello capability name too long");
  }
  if (m.token().size() > l.max_token_bytes) return TooLarge("hello.token is too long");
  if (m.client().size() > l.max_client_name_bytes) {
    return BadRequest("hello.client is longer than " + std::to_string(l.max_client_name_bytes) +
                      " bytes");
  }
  return ValidatePageSize(m.page_size(), l);
}

Status Validate(const v1::Ping&, const ValidationLimits&) { return Status::Ok(); }
Status Validate(const v1::Pong&, const ValidationLimits&) { return Status::Ok(); }

Status Validate(const v1::Send& m, const ValidationLimits& l) {
  if ((m.recipient() == 0) == (m.group_id() == 0)) {
    return BadRequest("send needs exactly one of recipient and group_id");
  }
  if (m.copies_size() > 0) {
    // One ciphertext per device (appendix 20): 1:1 only, no body beside them.
    if (m.group_id() != 0) return BadRequest("send.copies are for 1:1 sends only");
    if (!m.body().empty()) return BadRequest("send has both a body and copies");
    if (static_cast<size_t>(m.copies_size()) > kMaxDevices) {
      return TooLarge("send.copies has more than " + std::to_string(kMaxDevices) + " devices");
    }
    DeviceMask seen = 0;
    for (const v1::DeviceCopy& c : m.copies()) {
      if (c.device() < 1 || c.device() > kMaxDeviceId) {
        return BadRequest("send.copies: device " + std::to_string(c.device()) +
                          " is not a device id (1..63)");
      }
      if (HasDevice(seen, c.device())) {
        return BadRequest("send.copies: device " + std::to_string(c.device()) + " twice");
      }
      seen |= DeviceBit(c.device());
      if (c.body().empty()) return BadRequest("send.copies: a body is empty");
      if (c.body().size() > l.max_body_bytes) {
        return TooLarge("send.copies: a body is " + std::to_string(c.body().size()) +
                        " bytes; at most " + std::to_string(l.max_body_bytes));
      }
    }
  } else {
    if (m.body().empty()) return BadRequest("send.body is empty");
    if (m.body().size() > l.max_body_bytes) {
      return TooLarge("send.body is " + std::to_string(m.body().size()) + " bytes; at most " +
                      std::to_string(l.max_body_bytes));
    }
  }
  IRIS_RETURN_IF_ERROR(ValidateIdempotencyKey(m.idempotency_key()));
  return ValidateTraceId(m.trace_id());
}

Status Validate(const v1::DeliverAck&, const ValidationLimits&) { return Status::Ok(); }
Status Validate(const v1::Sync& m, const ValidationLimits& l) {
  return ValidatePageSize(m.page_size(), l);
}
Status Validate(const v1::SyncAck&, const ValidationLimits&) { return Status::Ok(); }

Status Validate(const v1::History& m, const ValidationLimits& l) {
  return ValidatePageSize(m.limit(), l);
}

Status Validate(const v1::Receipt& m, const ValidationLimits& l) {
  if (m.to_user() == 0) return BadRequest("receipt.to_user is 0");
  if (m.type() != v1::DELIVERED && m.type() != v1::READ) {
    return BadRequest("receipt.type must be DELIVERED or READ");
  }
  if (m.message_ids().empty()) return BadRequest("receipt.message_ids is empty");
  if (static_cast<uint32_t>(m.message_ids_size()) > l.max_receipt_ids) {
    return TooLarge("receipt.message_ids has more than " + std::to_string(l.max_receipt_ids) +
                    " ids");
  }
  for (uint64_t id : m.message_ids()) {
    if (id == 0) return BadRequest("receipt.message_ids contains 0");
  }
  return ValidateIdempotencyKey(m.idempotency_key());
}

Status Validate(const v1::Settings& m, const ValidationLimits& l) {
  IRIS_RETURN_IF_ERROR(ValidateUserList(m.block(), l, "settings.block", true));
  IRIS_RETURN_IF_ERROR(ValidateUserList(m.unblock(), l, "settings.unblock", true));
  for (uint64_t u : m.block()) {
    if (std::find(m.unblock().begin(), m.unblock().end(), u) != m.unblock().end()) {
      return BadRequest("settings: user " + std::to_string(u) + " is in both block and unblock");
    }
  }
  if (!v1::GroupInvites_IsValid(m.group_invites())) {
    return BadRequest("settings.group_invites is not a known value");
  }
  if (m.has_device_list()) return ValidateDeviceList(m.device_list(), l);
  return Status::Ok();
}

Status ValidateDeviceList(const v1::SignedDeviceList& m, const ValidationLimits& l,
                          v1::DeviceList* out) {
  IRIS_RETURN_IF_ERROR(ValidateKey(m.signature(), l, "device_list.signature"));
  v1::DeviceList list;
  if (m.list().empty() || !list.ParseFromString(m.list())) {
    return BadRequest("device_list.list is not a DeviceList");
  }
  if (list.user() == 0) return BadRequest("device_list: user is 0");
  if (list.version() == 0) return BadRequest("device_list: version is 0");
  if (list.devices_size() == 0) return BadRequest("device_list: no devices");
  if (static_cast<size_t>(list.devices_size()) > kMaxDevices) {
    return TooLarge("device_list: more than " + std::to_string(kMaxDevices) +
                    " devices (the primary and 4 linked)");
  }
  DeviceMask seen = 0;
  for (const v1::Device& d : list.devices()) {
    if (d.id() < 1 || d.id() > kMaxDeviceId) {
      return BadRequest("device_list: " + std::to_string(d.id()) + " is not a device id (1..63)");
    }
    if (HasDevice(seen, d.id())) {
      return BadRequest("device_list: device " + std::to_string(d.id()) + " twice");
    }
    seen |= DeviceBit(d.id());
    IRIS_RETURN_IF_ERROR(ValidateKey(d.identity_key(), l, "device_list.identity_key"));
  }
  if (!HasDevice(seen, kPrimaryDevice)) {
    return BadRequest("device_list: the primary device (1) is missing");
  }
  if (out != nullptr) *out = std::move(list);
  return Status::Ok();
}
Status Validate(const v1::SettingsGet&, const ValidationLimits&) { return Status::Ok(); }

Status Validate(const v1::PresenceSubscribe& m, const ValidationLimits& l) {
  return ValidateUserList(m.users(), l, "presence_subscribe.users");
}
Status Validate(const v1::PresenceUnsubscribe& m, const ValidationLimits& l) {
  return ValidateUserList(m.users(), l, "presence_unsubscribe.users");
}
Status Validate(const v1::PresenceQuery& m, const ValidationLimits& l) {
  return ValidateUserList(m.users(), l, "presence_query.users");
}

Status Validate(const v1::Typing& m, const ValidationLimits&) {
  if ((m.user() == 0) == (m.group_id() == 0)) {
    return BadRequest("typing needs exactly one of user and group_id");
  }
  return Status::Ok();
}

Status Validate(const v1::KeysUpload& m, const ValidationLimits& l) {
  IRIS_RETURN_IF_ERROR(ValidateKey(m.identity_key(), l, "keys_upload.identity_key"));
  if (!m.has_signed_prekey()) return BadRequest("keys_upload.signed_prekey is missing");
  IRIS_RETURN_IF_ERROR(
      ValidateKey(m.signed_prekey().public_key(), l, "keys_upload.signed_prekey.public_key"));
  IRIS_RETURN_IF_ERROR(
      ValidateKey(m.signed_prekey().signature(), l, "keys_upload.signed_prekey.signature"));
  if (static_cast<uint32_t>(m.one_time_prekeys_size()) > l.max_prekeys_per_upload) {
    return TooLarge("keys_upload.one_time_prekeys has more than " +
                    std::to_string(l.max_prekeys_per_upload) + " keys");
  }
  for (const auto& pk : m.one_time_prekeys()) {
    IRIS_RETURN_IF_ERROR(ValidateKey(pk.public_key(), l, "keys_upload.one_time_prekey"));
  }
  return Status::Ok();
}

Status Validate(const v1::KeysFetch& m, const ValidationLimits&) {
  if (m.user() == 0) return BadRequest("keys_fetch.user is 0");
  return Status::Ok();
}

Status Validate(const v1::GroupCreate& m, const ValidationLimits& l) {
  if (m.kind() != v1::E2EE && m.kind() != v1::BROADCAST) {
    return BadRequest("group_create.kind must be E2EE or BROADCAST");
  }
  IRIS_RETURN_IF_ERROR(ValidateUserList(m.members(), l, "group_create.members", true));
  const uint32_t cap =
      m.kind() == v1::E2EE ? l.max_group_members_e2ee : l.max_group_members_broadcast;
  if (static_cast<uint32_t>(m.members_size()) + 1 > cap) {
    return TooLarge("group would exceed " + std::to_string(cap) + " members");
  }
  return ValidateIdempotencyKey(m.idempotency_key());
}

Status Validate(const v1::GroupUpdate& m, const ValidationLimits& l) {
  if (m.group_id() == 0) return BadRequest("group_update.group_id is 0");
  if (m.add().empty() && m.remove().empty()) return BadRequest("group_update changes nothing");
  if (static_cast<uint32_t>(m.add_size() + m.remove_size()) > l.max_users_per_request) {
    return TooLarge("group_update lists more than " + std::to_string(l.max_users_per_request) +
                    " ids");
  }
  IRIS_RETURN_IF_ERROR(ValidateUserList(m.add(), l, "group_update.add", true));
  return ValidateUserList(m.remove(), l, "group_update.remove", true);
}

Status Validate(const v1::GroupGet& m, const ValidationLimits&) {
  if (m.group_id() == 0) return BadRequest("group_get.group_id is 0");
  return Status::Ok();
}

}  // namespace iris::wire
