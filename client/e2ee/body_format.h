#pragma once
// The end-to-end encrypted message body (a client convention, docs/protocol.md
// "Client conventions: encrypted bodies"). The server sees only the outer layer:
//
//   Send.body / Envelope.body = version (1 byte, 0x01)
//                               || type (1 byte: 0x02 Signal message, 0x03 prekey Signal message)
//                               || libsignal's serialised ciphertext message
//
// and inside the ciphertext the plaintext is
//
//   content type (1 byte, 0x01 = UTF-8 text) || length (4 bytes, big-endian) || content
//   || zero bytes up to a multiple of 64 bytes (hides the exact length)
//
// Thread-safety: pure functions.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace iris::client::e2ee {

constexpr uint8_t kBodyVersion = 1;
constexpr uint8_t kBodySignalMessage = 2;  // CIPHERTEXT_SIGNAL_TYPE
constexpr uint8_t kBodyPreKeyMessage = 3;  // CIPHERTEXT_PREKEY_TYPE
constexpr uint8_t kContentText = 1;
constexpr size_t kPlaintextPadding = 64;

struct SealedBody {
  uint8_t type = kBodySignalMessage;
  std::string ciphertext;
};

std::string EncodeBody(const SealedBody& body);
// BAD_REQUEST for an unknown version or type, or no ciphertext.
Result<SealedBody> DecodeBody(std::string_view body);

std::string EncodePlaintext(std::string_view text);
// BAD_REQUEST when the framing is wrong or the content type unknown.
Result<std::string> DecodePlaintext(std::string_view plaintext);

// Control content (never shown as a message), inside the ciphertext like text:
//
//   content type (1 byte, 0x02) || control kind (1 byte) || count (4 bytes, big-endian)
//   || count message ids (8 bytes each, big-endian) || zero padding to a multiple of 64
//
// Kind 0x01, session reset: "I could not decrypt these messages of yours (the session was
// lost, e.g. I re-installed); this message starts a new session: re-send them in it".
constexpr uint8_t kContentControl = 2;
constexpr uint8_t kControlSessionReset = 1;
constexpr size_t kMaxControlIds = 1000;

struct ControlContent {
  uint8_t kind = kControlSessionReset;
  std::vector<uint64_t> message_ids;
};
bool IsControlContent(std::string_view plaintext);
std::string EncodeControl(const ControlContent& c);
// BAD_REQUEST when the framing is wrong, the kind unknown or there are too many ids.
Result<ControlContent> DecodeControl(std::string_view plaintext);

}  // namespace iris::client::e2ee
