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
// section 5.4: ciphertext at most 2^14 + 256 bytes, inner plaintext at most 2^14 + 1.
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

  // `suite` is the IANA id (0x1301, 0x1302 or 0x1303); the secrets are the
  // client/server_application_traffic_secret_0 of the handshake (hash length each).
  static Result<Tls13Records> ForServer(uint16_t suite, std::span<const uint8_t> client_secret,
                                        std::span<const uint8_t> server_secret);
  // The mirror image (client side), used by tests that drive a server with these records.
  static Result<Tls13Records> ForClient(uint16_t suite, std::span<const uint8_t> client_secret,
                                        std::span<const uint8_t> server_secret);

  // Length of the record at the head of `buf` (header included) once all of it is there:
  // 0 while the header or body is still incomplete; an error for a header no TLS 1.3 peer
  // sends after the handshake (wrong outer type or version, oversized length).
  static Result<size_t> CompleteRecordLength(std::span<const uint8_t> buf);

  // Encrypts `plain` as application-data records of at most 16 KiB, appended to *out.
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
  // Processes an opened non-application record: a KeyUpdate (may append our own KeyUpdate
  // to *out when the peer asks for it), close_notify (kCloseNotify), or an error for
  // anything else (including fatal alerts, reported with their description).
  Result<Event> HandleControl(const Opened& opened, std::string* out);

  // Starts a KeyUpdate of our sending direction (appends the message to *out).
  Status UpdateSendingKey(bool request_peer_update, std::string* out);

  uint64_t read_sequence() const { return read_.seq; }
  uint64_t write_sequence() const { return write_.seq; }

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
  Status Seal(uint8_t type, std::string_view plain, std::string* out);

  uint8_t cipher_ = 0;    // 1: AES-128-GCM, 2: AES-256-GCM, 3: ChaCha20-Poly1305
  uint8_t hash_len_ = 0;  // 32 (SHA-256) or 48 (SHA-384)
  uint8_t key_len_ = 0;   // 16 or 32
  Direction read_{};
  Direction write_{};
};

}  // namespace iris::net
