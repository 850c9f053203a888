#include "net/tls_records.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstring>

namespace iris::net {
namespace {

constexpr uint8_t kKeyUpdate = 24;  // handshake message type
constexpr uint8_t kCloseNotify = 0;

// The AEAD ciphers, fetched once, and one reusable EVP context per cipher and thread: a
// record re-keys the context (AES key expansion is tens of nanoseconds with AES-NI), so a
// connection holds raw keys only.
const EVP_CIPHER* CipherOf(uint8_t cipher) {
  static const EVP_CIPHER* const kCiphers[3] = {
      EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr),
      EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr),
      EVP_CIPHER_fetch(nullptr, "ChaCha20-Poly1305", nullptr)};
  return kCiphers[cipher - 1];
}

class ThreadContexts {
 public:
  ~ThreadContexts() {
    for (EVP_CIPHER_CTX* c : ctx_) EVP_CIPHER_CTX_free(c);
  }
  // A context set up for `cipher` (key and IV still to be given).
  EVP_CIPHER_CTX* Get(uint8_t cipher) {
    EVP_CIPHER_CTX*& c = ctx_[cipher - 1];
    if (c == nullptr) {
      c = EVP_CIPHER_CTX_new();
      if (c == nullptr) return nullptr;
      if (EVP_CipherInit_ex2(c, CipherOf(cipher), nullptr, nullptr, 1, nullptr) != 1) {
        EVP_CIPHER_CTX_free(c);
        c = nullptr;
      }
    }
    return c;
  }

 private:
  EVP_CIPHER_CTX* ctx_[3] = {nullptr, nullptr, nullptr};
};

EVP_CIPHER_CTX* ContextFor(uint8_t cipher) {
  thread_local ThreadContexts contexts;
  return contexts.Get(cipher);
}

const EVP_MD* DigestOf(uint8_t hash_len) { return hash_len == 48 ? EVP_sha384() : EVP_sha256(); }

// HKDF-Expand-Label(secret, label, "", length) for length <= hash length (one HMAC block).
bool ExpandLabel(const uint8_t* secret, uint8_t hash_len, std::string_view label, uint8_t* out,
                 size_t length) {
  uint8_t info[2 + 1 + 6 + 32 + 1 + 1];
  size_t n = 0;
  info[n++] = static_cast<uint8_t>(length >> 8);
  info[n++] = static_cast<uint8_t>(length);
  info[n++] = static_cast<uint8_t>(6 + label.size());
  std::memcpy(info + n, "tls13 ", 6);
  n += 6;
  std::memcpy(info + n, label.data(), label.size());
  n += label.size();
  info[n++] = 0;  // empty context
  info[n++] = 1;  // HKDF-Expand counter T(1)
  uint8_t block[EVP_MAX_MD_SIZE];
  unsigned int block_len = 0;
  if (HMAC(DigestOf(hash_len), secret, hash_len, info, n, block, &block_len) == nullptr ||
      block_len < length) {
    return false;
  }
  std::memcpy(out, block, length);
  OPENSSL_cleanse(block, sizeof(block));
  return true;
}

void MakeNonce(const uint8_t iv[12], uint64_t seq, uint8_t nonce[12]) {
  std::memcpy(nonce, iv, 12);
  for (int i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<uint8_t>(seq >> (8 * i));
}

Status Protocol(std::string message) {
  return Status(StatusCode::kBadRequest, "TLS: " + std::move(message));
}

// For the static header check, which has no object to hold the alert.
Status ProtocolAlert(uint8_t* alert_out, uint8_t alert, std::string message) {
  if (alert_out != nullptr) *alert_out = alert;
  return Protocol(std::move(message));
}

}  // namespace

Tls13Records::Tls13Records(Tls13Records&& other) noexcept { *this = std::move(other); }

Tls13Records& Tls13Records::operator=(Tls13Records&& other) noexcept {
  if (this == &other) return *this;
  cipher_ = other.cipher_;
  hash_len_ = other.hash_len_;
  key_len_ = other.key_len_;
  read_ = other.read_;
  write_ = other.write_;
  alert_ = other.alert_;
  key_update_owed_ = other.key_update_owed_;
  peer_update_requested_ = other.peer_update_requested_;
  key_updates_without_data_ = other.key_updates_without_data_;
  other.Wipe();
  return *this;
}

Tls13Records::~Tls13Records() { Wipe(); }

void Tls13Records::Wipe() {
  OPENSSL_cleanse(&read_, sizeof(read_));
  OPENSSL_cleanse(&write_, sizeof(write_));
}

Status Tls13Records::Fail(uint8_t alert, std::string message) {
  alert_ = alert;
  return Protocol(std::move(message));
}

Result<Tls13Records> Tls13Records::Make(uint16_t suite, std::span<const uint8_t> read_secret,
                                        std::span<const uint8_t> write_secret) {
  Tls13Records r;
  switch (suite) {
    case 0x1301:
      r.cipher_ = 1, r.hash_len_ = 32, r.key_len_ = 16;
      break;
    case 0x1302:
      r.cipher_ = 2, r.hash_len_ = 48, r.key_len_ = 32;
      break;
    case 0x1303:
      r.cipher_ = 3, r.hash_len_ = 32, r.key_len_ = 32;
      break;
    default:
      return Internal("TLS: cipher suite " + std::to_string(suite) + " is not supported");
  }
  if (CipherOf(r.cipher_) == nullptr) return Internal("TLS: cipher unavailable in OpenSSL");
  if (read_secret.size() != r.hash_len_ || write_secret.size() != r.hash_len_) {
    return Internal("TLS: traffic secret has the wrong length");
  }
  std::memcpy(r.read_.secret, read_secret.data(), r.hash_len_);
  std::memcpy(r.write_.secret, write_secret.data(), r.hash_len_);
  IRIS_RETURN_IF_ERROR(r.DeriveKeys(r.read_));
  IRIS_RETURN_IF_ERROR(r.DeriveKeys(r.write_));
  return Result<Tls13Records>(std::move(r));
}

Result<Tls13Records> Tls13Records::ForServer(uint16_t suite,
                                             std::span<const uint8_t> client_secret,
                                             std::span<const uint8_t> server_secret) {
  return Make(suite, client_secret, server_secret);
}

Result<Tls13Records> Tls13Records::ForClient(uint16_t suite,
                                             std::span<const uint8_t> client_secret,
                                             std::span<const uint8_t> server_secret) {
  return Make(suite, server_secret, client_secret);
}

Status Tls13Records::DeriveKeys(Direction& d) const {
  if (!ExpandLabel(d.secret, hash_len_, "key", d.key, key_len_) ||
      !ExpandLabel(d.secret, hash_len_, "iv", d.iv, sizeof(d.iv))) {
    return Internal("TLS: key derivation failed");
  }
  d.seq = 0;
  return Status::Ok();
}

Status Tls13Records::NextSecret(Direction& d) const {
  uint8_t next[48];
  if (!ExpandLabel(d.secret, hash_len_, "traffic upd", next, hash_len_)) {
    return Internal("TLS: key update derivation failed");
  }
  std::memcpy(d.secret, next, hash_len_);
  OPENSSL_cleanse(next, sizeof(next));
  return DeriveKeys(d);
}

Result<size_t> Tls13Records::CompleteRecordLength(std::span<const uint8_t> buf,
                                                  uint8_t* alert) {
  if (buf.size() < kHeaderBytes) return size_t{0};
  if (buf[0] != kApplicationData) {
    return ProtocolAlert(alert, kAlertUnexpectedMessage,
                         "unexpected record type " + std::to_string(buf[0]) +
                             " after the handshake");
  }
  if (buf[1] != 0x03 || buf[2] != 0x03) {
    return ProtocolAlert(alert, kAlertDecodeError, "bad record version");
  }
  const size_t len = (static_cast<size_t>(buf[3]) << 8) | buf[4];
  if (len > kMaxCiphertext) return ProtocolAlert(alert, kAlertRecordOverflow, "record_overflow");
  if (len < kTagBytes + 1) return ProtocolAlert(alert, kAlertDecodeError, "record too short");
  return buf.size() >= kHeaderBytes + len ? kHeaderBytes + len : 0;
}

Status Tls13Records::Seal(uint8_t type, std::string_view plain, std::string* out,
                          size_t padding) {
  EVP_CIPHER_CTX* ctx = ContextFor(cipher_);
  if (ctx == nullptr) return Internal("TLS: no cipher context");
  // SealDueKeyUpdate replaces the key long before this; the check keeps a wrap impossible
  // whatever the caller does (RFC 8446 section 5.3).
  if (write_.seq >= kRecordsPerKey + 1024) return Internal("TLS: sending key used up");
  const size_t body = plain.size() + 1 + padding + kTagBytes;
  if (body > kMaxCiphertext) return Internal("TLS: record too large to seal");
  const size_t at = out->size();
  out->resize(at + kHeaderBytes + body);
  auto* rec = reinterpret_cast<uint8_t*>(out->data() + at);
  rec[0] = kApplicationData;
  rec[1] = 0x03;
  rec[2] = 0x03;
  rec[3] = static_cast<uint8_t>(body >> 8);
  rec[4] = static_cast<uint8_t>(body);
  uint8_t* p = rec + kHeaderBytes;
  std::memcpy(p, plain.data(), plain.size());
  p[plain.size()] = type;
  std::memset(p + plain.size() + 1, 0, padding);
  uint8_t nonce[12];
  MakeNonce(write_.iv, write_.seq, nonce);
  int len = 0, fin = 0;
  const int inner = static_cast<int>(plain.size() + 1 + padding);
  if (EVP_CipherInit_ex2(ctx, nullptr, write_.key, nonce, 1, nullptr) != 1 ||
      EVP_EncryptUpdate(ctx, nullptr, &len, rec, kHeaderBytes) != 1 ||
      EVP_EncryptUpdate(ctx, p, &len, p, inner) != 1 ||
      EVP_EncryptFinal_ex(ctx, p + len, &fin) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, kTagBytes, p + inner) != 1) {
    out->resize(at);
    return Internal("TLS: encryption failed");
  }
  ++write_.seq;
  return Status::Ok();
}

Status Tls13Records::SealDueKeyUpdate(std::string* out) {
  const bool request = !peer_update_requested_ && read_.seq >= kRecordsPerKey / 2;
  if (!key_update_owed_ && !request && write_.seq < kRecordsPerKey - 64) return Status::Ok();
  key_update_owed_ = false;
  if (request) peer_update_requested_ = true;
  return UpdateSendingKey(request, out);
}

Status Tls13Records::SealApplicationData(std::string_view plain, std::string* out) {
  if (plain.empty()) return Status::Ok();  // no record, so nothing owed goes out either
  IRIS_RETURN_IF_ERROR(SealDueKeyUpdate(out));
  out->reserve(out->size() + plain.size() +
               (plain.size() / kMaxPlaintext + 1) * (kHeaderBytes + 1 + kTagBytes));
  while (!plain.empty()) {
    const size_t n = std::min(plain.size(), kMaxPlaintext);
    IRIS_RETURN_IF_ERROR(Seal(kApplicationData, plain.substr(0, n), out));
    plain.remove_prefix(n);
    if (write_.seq >= kRecordsPerKey - 64) IRIS_RETURN_IF_ERROR(SealDueKeyUpdate(out));
  }
  return Status::Ok();
}

Status Tls13Records::SealAlert(uint8_t description, std::string* out) {
  const char alert[2] = {static_cast<char>(description == kCloseNotify ? 1 : 2),
                         static_cast<char>(description)};
  return Seal(kAlert, std::string_view(alert, 2), out);
}

Result<Tls13Records::Opened> Tls13Records::Open(std::span<uint8_t> record) {
  EVP_CIPHER_CTX* ctx = ContextFor(cipher_);
  if (ctx == nullptr) {
    alert_ = kAlertInternalError;
    return Internal("TLS: no cipher context");
  }
  if (record.size() < kHeaderBytes + kTagBytes + 1) {
    return Fail(kAlertDecodeError, "record too short");
  }
  if (read_.seq >= kRecordsPerKey) {
    // We asked for an update at half the limit (RFC 8446 section 5.5).
    return Fail(kAlertUnexpectedMessage, "peer used one key past the record limit");
  }
  uint8_t* p = record.data() + kHeaderBytes;
  const size_t inner_len = record.size() - kHeaderBytes - kTagBytes;
  // Section 5.4: TLSInnerPlaintext (content, type and padding) is at most 2^14 + 1 bytes.
  if (inner_len > kMaxPlaintext + 1) return Fail(kAlertRecordOverflow, "record_overflow");
  const int inner = static_cast<int>(inner_len);
  uint8_t nonce[12];
  MakeNonce(read_.iv, read_.seq, nonce);
  int len = 0, fin = 0;
  if (EVP_CipherInit_ex2(ctx, nullptr, read_.key, nonce, 0, nullptr) != 1 ||
      EVP_DecryptUpdate(ctx, nullptr, &len, record.data(), kHeaderBytes) != 1 ||
      EVP_DecryptUpdate(ctx, p, &len, p, inner) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, kTagBytes, p + inner) != 1 ||
      EVP_DecryptFinal_ex(ctx, p + len, &fin) != 1) {
    return Fail(kAlertBadRecordMac, "bad_record_mac");
  }
  ++read_.seq;
  // Strip the zero padding; the last non-zero byte is the real content type.
  size_t n = static_cast<size_t>(inner);
  while (n > 0 && p[n - 1] == 0) --n;
  if (n == 0) return Fail(kAlertUnexpectedMessage, "record without a content type");
  Opened o;
  o.type = p[n - 1];
  o.content = std::span<uint8_t>(p, n - 1);
  if (o.type == kApplicationData) {
    if (!o.content.empty()) key_updates_without_data_ = 0;
    return o;
  }
  if (o.content.empty()) return Fail(kAlertUnexpectedMessage, "empty control record");
  return o;
}

Status Tls13Records::UpdateSendingKey(bool request_peer_update, std::string* out) {
  const char msg[5] = {static_cast<char>(kKeyUpdate), 0, 0, 1,
                       static_cast<char>(request_peer_update ? 1 : 0)};
  IRIS_RETURN_IF_ERROR(Seal(kHandshake, std::string_view(msg, 5), out));
  return NextSecret(write_);
}

Result<Tls13Records::Event> Tls13Records::HandleControl(const Opened& opened,
                                                         std::string* /*out*/) {
  const std::span<const uint8_t> c = opened.content;
  if (opened.type == kAlert) {
    if (c.size() != 2) return Fail(kAlertDecodeError, "malformed alert");
    if (c[1] == kCloseNotify) return Event::kCloseNotify;
    alert_ = kNoAlert;  // never answer an alert with one
    return Protocol("peer sent alert " + std::to_string(c[1]));
  }
  if (opened.type != kHandshake) {
    return Fail(kAlertUnexpectedMessage, "unexpected content type " + std::to_string(opened.type));
  }
  // Whole handshake messages only; after the handshake a client sends nothing but KeyUpdate.
  size_t at = 0;
  while (at < c.size()) {
    if (c.size() - at < 4) {
      return Fail(kAlertUnexpectedMessage, "fragmented post-handshake message");
    }
    const size_t len = (static_cast<size_t>(c[at + 1]) << 16) |
                       (static_cast<size_t>(c[at + 2]) << 8) | c[at + 3];
    if (c.size() - at - 4 < len) {
      return Fail(kAlertUnexpectedMessage, "fragmented post-handshake message");
    }
    if (c[at] != kKeyUpdate) {
      return Fail(kAlertUnexpectedMessage,
                  "unexpected post-handshake message " + std::to_string(c[at]));
    }
    if (len != 1) return Fail(kAlertDecodeError, "malformed KeyUpdate");
    if (c[at + 4] > 1) return Fail(kAlertIllegalParameter, "malformed KeyUpdate");
    // RFC 8446 4.6.3: a KeyUpdate must be the last message of its record (the keys change).
    if (at + 5 != c.size()) {
      return Fail(kAlertUnexpectedMessage, "data after KeyUpdate in the same record");
    }
    if (++key_updates_without_data_ > kMaxKeyUpdatesWithoutData) {
      return Fail(kAlertUnexpectedMessage, "too many KeyUpdates without application data");
    }
    IRIS_RETURN_IF_ERROR(NextSecret(read_));
    peer_update_requested_ = false;  // the peer's new key starts a new count
    // Answered once, in front of our next application data (section 4.6.3).
    if (c[at + 4] == 1) key_update_owed_ = true;
    at += 5;
  }
  return Event::kNone;
}

}  // namespace iris::net
