#pragma once
// Tls13Records: the TLS 1.3 record layer (RFC 8446 section 5) for a server connection whose
// handshake OpenSSL has completed.
//
// Why (NFR-19, at most 10 KB per connection): an OpenSSL SSL object costs about 14 KB per
// idle TLS 1.3 connection even with SSL_MODE_RELEASE_BUFFERS, more than the whole budget,
// and kTLS is not available. So OpenSSL does what is hard to get right — the handshake,
// certificates, key exchange — and once it is done the connection keeps only the two
// application traffic secrets, keys and sequence numbers (about 200 bytes, this object) and
// frees the SSL object. Records are sealed and opened with OpenSSL's AEAD ciphers through
// one EVP context per thread, keyed per record.
//
// Supported: the three TLS 1.3 suites OpenSSL enables by default (TLS_AES_128_GCM_SHA256,
// TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256; the server context offers only
// these), application data, alerts (close_notify ends the stream; any other alert is a
// fatal error) and KeyUpdate in both directions (RFC 8446 section 4.6.3). Every other
// post-handshake message (NewSessionTicket from a client, CertificateRequest, a fragmented
// handshake message) is an unexpected_message error. Record size and padding rules follow
// section 5.4: ciphertext at most 2^14 + 256 bytes, inner plaintext (content, type and
// padding) at most 2^14 + 1.
//
// Limits that keep one peer from hurting others or the keys (RFC 8446 sections 4.6.3, 5.3,
// 5.5):
//  - A KeyUpdate with update_requested is answered once, by a KeyUpdate sealed in front of
//    the next application data we send: a peer that sends many while we are silent gets
//    one answer, and answers never queue up behind a peer that does not read.
//  - More than kMaxKeyUpdatesWithoutData KeyUpdates in a row with no application data
//    between them is an error (each costs two HMACs; nothing legitimate needs a run).
//  - Our sending key is updated before kRecordsPerKey records have used it (the AES-GCM
//    limit is 2^24.5); from kRecordsPerKey / 2 records under the peer's key we ask the peer
//    to update it, and a peer that reaches kRecordsPerKey without doing so is an error.
//    No sequence number can wrap.
//  - Every error that RFC 8446 answers with an alert names it (alert()); the connection
//    seals it before closing. Keys, IVs and secrets are zeroed when the object is destroyed
//    or moved from.
//
// Thread-safety: an object belongs to one connection (one loop thread).

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"

namespace iris::net {

class Tls13Records {
 public:
  static constexpr size_t kHeaderBytes = 5;
  static constexpr size_t kMaxPlaintext = 16384;
  static constexpr size_t kMaxCiphertext = kMaxPlaintext + 256;
  static constexpr size_t kTagBytes = 16;
  // Record content types (RFC 8446 section 5.1).
  static constexpr uint8_t kAlert = 21;
  static constexpr uint8_t kHandshake = 22;
  static constexpr uint8_t kApplicationData = 23;
  // Alert descriptions (RFC 8446 section 6).
  static constexpr uint8_t kAlertCloseNotify = 0;
  static constexpr uint8_t kAlertUnexpectedMessage = 10;
  static constexpr uint8_t kAlertBadRecordMac = 20;
  static constexpr uint8_t kAlertRecordOverflow = 22;
  static constexpr uint8_t kAlertDecodeError = 50;
  static constexpr uint8_t kAlertIllegalParameter = 47;
  static constexpr uint8_t kAlertInternalError = 80;
  static constexpr uint8_t kNoAlert = 255;  // not an alert description: send none
  // Records one key may protect before it is replaced: 2^24 (below AES-GCM's 2^24.5).
  static constexpr uint64_t kRecordsPerKey = uint64_t{1} << 24;
  static constexpr uint32_t kMaxKeyUpdatesWithoutData = 32;

  Tls13Records() = default;
  Tls13Records(Tls13Records&& other) noexcept;
  Tls13Records& operator=(Tls13Records&& other) noexcept;
  Tls13Records(const Tls13Records&) = delete;
  Tls13Records& operator=(const Tls13Records&) = delete;
  ~Tls13Records();

  // `suite` is the IANA id (0x1301, 0x1302 or 0x1303); the secrets are the
  // client/server_application_traffic_secret_0 of the handshake (hash length each).
  static Result<Tls13Records> ForServer(uint16_t suite, std::span<const uint8_t> client_secret,
                                        std::span<const uint8_t> server_secret);
  // The mirror image (client side), used by tests that drive a server with these records.
  static Result<Tls13Records> ForClient(uint16_t suite, std::span<const uint8_t> client_secret,
                                        std::span<const uint8_t> server_secret);

  // Length of the record at the head of `buf` (header included) once all of it is there:
  // 0 while the header or body is still incomplete; an error for a header no TLS 1.3 peer
  // sends after the handshake (wrong outer type or version, oversized length), with the
  // alert to send in *alert when it is not null.
  static Result<size_t> CompleteRecordLength(std::span<const uint8_t> buf,
                                             uint8_t* alert = nullptr);

  // Encrypts `plain` as application-data records of at most 16 KiB, appended to *out,
  // preceded by a KeyUpdate when one is owed (the peer asked) or due (record limits).
  Status SealApplicationData(std::string_view plain, std::string* out);
  // Encrypts an alert (level warning for close_notify, fatal otherwise), appended to *out.
  Status SealAlert(uint8_t description, std::string* out);

  struct Opened {
    uint8_t type = 0;              // inner content type
    std::span<uint8_t> content;    // the plaintext, inside the record's buffer
  };
  // Decrypts one complete record (as CompleteRecordLength measured it) in place.
  Result<Opened> Open(std::span<uint8_t> record);

  enum class Event : uint8_t { kNone, kCloseNotify };
  // Processes an opened non-application record: a KeyUpdate (when the peer asks for ours,
  // it is owed and goes out with our next application data), close_notify (kCloseNotify),
  // or an error for anything else (including fatal alerts, reported with their
  // description). `out` is unused and kept for callers that pass one.
  Result<Event> HandleControl(const Opened& opened, std::string* out = nullptr);

  // Starts a KeyUpdate of our sending direction (appends the message to *out).
  Status UpdateSendingKey(bool request_peer_update, std::string* out);

  // The alert that the last error of Open or HandleControl calls for (kNoAlert: none, e.g.
  // when the peer itself sent a fatal alert).
  uint8_t alert() const { return alert_; }
  // True while an answer to the peer's update_requested KeyUpdate is owed.
  bool key_update_owed() const { return key_update_owed_; }

  uint64_t read_sequence() const { return read_.seq; }
  uint64_t write_sequence() const { return write_.seq; }

  // Tests only: start both directions' sequence numbers at `seq` (to reach the record
  // limits without sealing millions of records).
  void SetSequencesForTesting(uint64_t read_seq, uint64_t write_seq) {
    read_.seq = read_seq;
    write_.seq = write_seq;
  }
  // Tests only: one record of `type` with `padding` zero bytes after the content type.
  Status SealPaddedForTesting(uint8_t type, std::string_view plain, size_t padding,
                              std::string* out) {
    return Seal(type, plain, out, padding);
  }

 private:
  struct Direction {
    uint8_t secret[48];
    uint8_t key[32];
    uint8_t iv[12];
    uint64_t seq = 0;
  };
  static Result<Tls13Records> Make(uint16_t suite, std::span<const uint8_t> read_secret,
                                   std::span<const uint8_t> write_secret);
  Status DeriveKeys(Direction& d) const;
  Status NextSecret(Direction& d) const;
  Status Seal(uint8_t type, std::string_view plain, std::string* out, size_t padding = 0);
  // Seals the KeyUpdate that is owed or due, if any, in front of application data.
  Status SealDueKeyUpdate(std::string* out);
  Status Fail(uint8_t alert, std::string message);
  void Wipe();

  uint8_t cipher_ = 0;    // 1: AES-128-GCM, 2: AES-256-GCM, 3: ChaCha20-Poly1305
  uint8_t hash_len_ = 0;  // 32 (SHA-256) or 48 (SHA-384)
  uint8_t key_len_ = 0;   // 16 or 32
  Direction read_{};
  Direction write_{};
  uint8_t alert_ = kNoAlert;
  bool key_update_owed_ = false;         // the peer asked; answer before our next data
  bool peer_update_requested_ = false;   // we asked the peer (read key past half its life)
  uint32_t key_updates_without_data_ = 0;
};

}  // namespace iris::net
