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
// Thread-safety: as LocalStore (the caller serialises); `store` must outlive `context`.

#include <signal_protocol.h>

#include "client/local_store.h"

namespace iris::client::e2ee {

inline constexpr const char* kIdentityPublicKey = "identity_public";
inline constexpr const char* kIdentityPrivateKey = "identity_private";
inline constexpr const char* kRegistrationId = "registration_id";

// Installs all five stores into `context`. Returns libsignal's result (0 on success).
int InstallSignalStores(signal_protocol_store_context* context, LocalStore* store);

}  // namespace iris::client::e2ee
