#pragma once
// The end-to-end encrypted message body (a client convention, docs/protocol.md
// "Client conventions: encrypted bodies"). The server sees only the outer layer:
//
//   Send.body / Envelope.body = version (1 byte, 0x01)
//                               || type (1 byte: 0x02 Signal message, 0x03 prekey Signal message,
//                                  0x04 sender key message: a group message, only in a group
//                                  SEND, encrypted with the sender's sender key)
//                               || libsignal's serialised ciphertext message
//
// and inside the ciphertext the plaintext is, in format 2 (written since issue 18):
//
//   0x02 || content type (1 byte: 0x01 UTF-8 text, 0x02 receipt = serialised v1.ReceiptBody,
//                         0x03 control, 0x04 sender-key distribution, both below)
//   || sender's clock, ms since the epoch (8 bytes, big-endian)
//   || conversation epoch (8 bytes: random, chosen by the sender per recipient)
//   || conversation counter (8 bytes: 1, 2, 3... per epoch, every message and receipt;
//      0 for control content, which neither advances nor checks it)
//   || length (4 bytes) || content || zero bytes up to a multiple of 64 bytes
//
// and in format 1 (still read, no longer written):
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
constexpr uint8_t kBodySignalMessage = 2;     // CIPHERTEXT_SIGNAL_TYPE
constexpr uint8_t kBodyPreKeyMessage = 3;     // CIPHERTEXT_PREKEY_TYPE
constexpr uint8_t kBodySenderKeyMessage = 4;  // CIPHERTEXT_SENDERKEY_TYPE (group SEND only)
constexpr uint8_t kContentText = 1;
constexpr uint8_t kContentReceipt = 2;
constexpr uint8_t kContentControl = 3;
constexpr uint8_t kContentSenderKey = 4;
constexpr uint8_t kContentTranscript = 5;  // a sent message, copied to the sender's own devices
constexpr uint8_t kContentGroupTranscript = 6;  // the same for a group message (id: the group)
// A 1:1 transcript that also names the ids of the message's copies (EncodeTranscript with
// ids), so the other devices match the recipient's receipts to it.
constexpr uint8_t kContentTranscriptIds = 7;
// The transcript content types (no conversation counter; never a message of another user).
constexpr bool IsTranscript(uint8_t type) {
  return type == kContentTranscript || type == kContentGroupTranscript ||
         type == kContentTranscriptIds;
}
constexpr uint8_t kPlaintextV2 = 2;
constexpr size_t kPlaintextPadding = 64;

// A decrypted plaintext. `has_order` is false for format 1 (no timestamp or counter).
struct Content {
  uint8_t type = kContentText;
  std::string data;
  bool has_order = false;
  uint64_t sender_ms = 0;
  uint64_t epoch = 0;
  uint64_t counter = 0;
};

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

// Format 2 (type, data, sender_ms, epoch, counter; has_order is ignored).
std::string EncodeContent(const Content& c);
// Either format. BAD_REQUEST when the framing is wrong or the content type unknown.
Result<Content> DecodeContent(std::string_view plaintext);

// Control content (content type 0x03 of format 2; never shown as a message):
//
//   control kind (1 byte) || count (4 bytes, big-endian)
//   || count message ids (8 bytes each, big-endian)
//
// Kind 0x01, session reset: "I could not decrypt these messages of yours (the session was
// lost, e.g. I re-installed); this message starts a new session: re-send them in it".
// (Before format 2 existed, control content was its own plaintext starting 0x02; no client
// release wrote it, so it is not read inside ciphertexts. DecodeControl still skips that
// leading 0x02, which is not a valid kind, so sends queued locally then still go out.)
// Kind 0x03, sender-key request (two ids: a group and a device of the recipient): "I have
// no sender key of yours, from that device, for this group: send it to me" (a member's
// device linked after that device last distributed its key).
// Kind 0x04, filler (no ids): "nothing for you". A SEND must carry a copy for every device
// of its recipient; a re-send meant for one of them carries this in the others' copies.
// (Kind 0x02 is never used: it is the legacy leading byte skipped below.)
constexpr uint8_t kControlSessionReset = 1;
constexpr uint8_t kControlSenderKeyRequest = 3;
constexpr uint8_t kControlFiller = 4;
constexpr size_t kMaxControlIds = 1000;

struct ControlContent {
  uint8_t kind = kControlSessionReset;
  std::vector<uint64_t> message_ids;
};
// The control data (the `data` of a Content of type kContentControl).
std::string EncodeControl(const ControlContent& c);
// BAD_REQUEST when the framing is wrong, the kind unknown or there are too many ids.
Result<ControlContent> DecodeControl(std::string_view data);

// Sender-key distribution content (content type 0x04 of format 2, inside a pairwise Signal
// message; never shown as a message; conversation counter 0 like control content):
//
//   group id (8 bytes, big-endian) || libsignal's serialised SenderKeyDistributionMessage
//
// "From now on my messages to this group are encrypted with this sender key" (chain key,
// iteration and signing key; docs/protocol.md, "Client-side group encryption").
struct SenderKeyDistribution {
  uint64_t group_id = 0;
  std::string message;  // the serialised SenderKeyDistributionMessage
};
std::string EncodeSenderKeyDistribution(const SenderKeyDistribution& d);
// BAD_REQUEST when it is too short or names group 0.
Result<SenderKeyDistribution> DecodeSenderKeyDistribution(std::string_view data);

// Sent-message transcript content (content type 0x05 of format 2, in a SEND to this
// account itself, one copy per other device of the account; conversation counter 0):
//
//   recipient user id (8 bytes, big-endian) || the message's UTF-8 text
//
// "I sent this text to that user from another device" (docs/protocol.md Client conventions
// 13); a receiving device shows it as an outgoing message. Content type 0x06 has the same
// layout with the group id in place of the user id: a group message this account sent.
// Content type 0x07 inserts, after the recipient, the ids of the message's copies in the
// recipient's inbox (SEND_ACK.copy_ids): count (1 byte, 1..255) || count ids (8 bytes each).
struct Transcript {
  uint64_t recipient = 0;
  std::string text;
  std::vector<uint64_t> copy_ids;  // content type 0x07 only
};
// Type 0x05/0x06 layout when `with_ids` is false, 0x07 when true (at most 255 ids).
std::string EncodeTranscript(const Transcript& t, bool with_ids = false);
// BAD_REQUEST when it is too short or names user 0 (or, with ids, none or too few bytes).
Result<Transcript> DecodeTranscript(std::string_view data, bool with_ids = false);

}  // namespace iris::client::e2ee
