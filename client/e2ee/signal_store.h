#pragma once
// The five libsignal-protocol-c stores (identity, prekeys, signed prekeys, sessions, sender
// keys) backed by the client's LocalStore (SQLite). The local identity key pair and
// registration id live in LocalStore's kv table under kIdentityPublicKey,
// kIdentityPrivateKey and kRegistrationId.
//
// Identity trust (Signal's model, docs/security.md): the first identity key seen for a user
// is saved and trusted ("trust on first use", shown as unverified). A different key later is
// accepted (and saved) when the user never verified the contact, and refused (libsignal then
// fails with SG_ERR_UNTRUSTED_IDENTITY) when the user marked the saved key verified
// (LocalStore::VerifiedIdentity), until MessageCipher::TrustIdentity approves that new key.
//
// Linked devices (docs/protocol.md appendix 20): the identity of device d > 1 of user U is
// saved under the name "U.d" and is trusted when it is the saved one or when the verified
// device list of U kept under DeviceListKey(U) lists device d with exactly that key; any
// other key of a linked device is refused (it is vouched for by the primary device's
// signature, never trusted on first use). Device 1's identity is saved under "U".
//
// Thread-safety: as LocalStore (the caller serialises); `store` must outlive `context`.

#include <signal_protocol.h>

#include "client/local_store.h"

namespace iris::client::e2ee {

inline constexpr const char* kIdentityPublicKey = "identity_public";
inline constexpr const char* kIdentityPrivateKey = "identity_private";
inline constexpr const char* kRegistrationId = "registration_id";

// The kv entry holding the verified v1::DeviceList of `user` (MessageCipher keeps it).
std::string DeviceListKey(uint64_t user);
// The name a device's identity key is saved under: "U" for device 1 (and 0), "U.d" else.
std::string IdentityName(uint64_t user, uint32_t device);

// Installs all five stores into `context`. Returns libsignal's result (0 on success).
int InstallSignalStores(signal_protocol_store_context* context, LocalStore* store);

}  // namespace iris::client::e2ee
