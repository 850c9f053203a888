#pragma once
// The crypto provider libsignal-protocol-c calls for every primitive it does not implement
// itself (random bytes, HMAC-SHA256, SHA-512, AES-CBC/PKCS#5 and AES-CTR), built on
// OpenSSL 3's EVP interfaces.
//
// Thread-safety: the callbacks keep no shared state (each HMAC/digest context is its own
// allocation); they may run on any thread.

#include <signal_protocol.h>

namespace iris::client::e2ee {

// The provider table; user_data is unused (nullptr).
signal_crypto_provider OpenSslCryptoProvider();

}  // namespace iris::client::e2ee
