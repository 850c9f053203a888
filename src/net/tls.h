#pragma once
// TLS 1.3 contexts on OpenSSL 3 (PROTOCOL.md section 1; NFR-14): TLS 1.2 and older are
// refused in the handshake. Server contexts use SSL_MODE_RELEASE_BUFFERS so an idle
// connection holds no record buffers (NFR-19), and issue no session tickets.
//
// Certificate renewal: a server context can load its certificate and key again (Reload)
// while connections are served. New handshakes use the new pair; connections already open
// keep theirs (an SSL object holds its own reference to the context it was made from).
//
// Thread-safety: every method may be called from any thread. Current() is cheap (a mutex
// held for a pointer copy, never across I/O); Reload() reads files and must not run on an
// event loop thread.

#include <openssl/ssl.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"

namespace iris::net {

class TlsContext {
 public:
  // A server context from PEM files (certificate chain and private key).
  static Result<std::unique_ptr<TlsContext>> Server(const std::string& cert_file,
                                                    const std::string& key_file);
  // A client context. Verification: with ca_file, the chain must verify against it; with a
  // pin (ParsePin: the SHA-256 of the server's public key, or of its whole certificate in
  // the older form), the leaf must match it. At least one is required: verification is
  // never off.
  static Result<std::unique_ptr<TlsContext>> Client(const std::string& ca_file,
                                                    const std::string& pin);
  ~TlsContext();

  // The context new connections are made from, and a reference that keeps it alive (hold it
  // until SSL_new has taken its own).
  std::shared_ptr<SSL_CTX> Current() const;
  // Current().get(), for contexts that are never reloaded (clients, tests): the pointer is
  // valid until the next Reload().
  SSL_CTX* get() const { return Current().get(); }

  // Server contexts: loads `cert_file` and `key_file` again, as Server() does. On success,
  // handshakes from now on present the new pair; on an error nothing changes (the current
  // pair is kept) and the error says which file is wrong. Reads files: never call it on an
  // event loop thread.
  Status Reload(const std::string& cert_file, const std::string& key_file);

  enum class PinKind : uint8_t { kNone, kSpki, kCertificate };
  PinKind pin_kind() const { return pin_kind_; }
  // The pinned SHA-256 (32 bytes): of the leaf's SubjectPublicKeyInfo (kSpki) or of its
  // DER certificate (kCertificate).
  const std::string& pin_digest() const { return pin_; }

 private:
  explicit TlsContext(SSL_CTX* ctx);
  mutable std::mutex mu_;
  std::shared_ptr<SSL_CTX> ctx_;  // guarded by mu_
  PinKind pin_kind_ = PinKind::kNone;
  std::string pin_;
};

// A pin as an operator writes it: "pin-sha256:BASE64" (what irisd's banner prints; also
// pin-sha256="BASE64" as in HPKP, curl's "sha256//BASE64", or the bare 44-character
// BASE64): the SHA-256 of the server's SubjectPublicKeyInfo, which survives a renewal of
// the certificate with the same key. The older form, a SHA-256 fingerprint of the whole
// certificate ("SHA256:AB:CD:..", colons and prefix optional, 64 hex digits), is still
// accepted; it breaks at every renewal. BAD_REQUEST naming both forms otherwise.
struct Pin {
  TlsContext::PinKind kind = TlsContext::PinKind::kNone;
  std::string digest;  // 32 bytes
};
Result<Pin> ParsePin(const std::string& text);

// Writes a new self-signed certificate (EC P-256, 10 years) and its key as PEM files. Its
// subjectAltName holds localhost, 127.0.0.1 and ::1, then every name of `extra_sans`: an IP
// address (v4 or v6) goes in as an IP entry, anything else as a DNS name (BAD_REQUEST for
// an empty or malformed name). Both files are created exclusively (an existing file or a
// link at either path is an error, nothing is overwritten); the key is mode 0600 from its
// creation.
Status GenerateSelfSignedCertificate(const std::string& cert_file, const std::string& key_file,
                                     const std::string& common_name,
                                     const std::vector<std::string>& extra_sans = {});
// Checks one --tls-san value (see GenerateSelfSignedCertificate).
Status ValidateSubjectAltName(const std::string& name);

// SHA-256 of the DER certificate in a PEM file, as upper-case hex pairs joined by ':'.
Result<std::string> CertificateFingerprint(const std::string& cert_file);
// SHA-256 fingerprint of a peer certificate, same format.
std::string CertificateFingerprint(X509* cert);
// Normalises a fingerprint text for comparison: upper-case hex, no separators.
std::string NormalizeFingerprint(const std::string& text);
// The public-key pin of a certificate: "pin-sha256:" and the base64 of the SHA-256 of its
// DER SubjectPublicKeyInfo (ParsePin reads it back).
std::string SpkiPin(X509* cert);
Result<std::string> SpkiPin(const std::string& cert_file);
// Makes a client handshake of `ssl` (from a pinned TlsContext::Client context) record the
// pin of the certificate the server presented into *presented (empty when it presented
// none), so a refusal can say what was seen. *presented must outlive the handshake.
void CapturePresentedPin(SSL* ssl, std::string* presented);

// The application traffic secrets of a server handshake, captured for Tls13Records
// (tls_records.h) so the connection can free its SSL object once the handshake is done.
struct TlsTrafficSecrets {
  uint8_t client[48];
  uint8_t server[48];
  uint8_t client_len = 0;
  uint8_t server_len = 0;
  bool complete() const { return client_len != 0 && client_len == server_len; }
};
// Makes the handshake of `ssl` (from a TlsContext::Server context) record its application
// traffic secrets into *secrets, which must outlive the handshake. Pass nullptr to detach.
void CaptureTrafficSecrets(SSL* ssl, TlsTrafficSecrets* secrets);
// Server contexts capture by default; this lets another context (a test's client) do the
// same, so a test can speak the record layer directly after an OpenSSL handshake.
void EnableTrafficSecretCapture(SSL_CTX* ctx);

// Every error queued in this thread's OpenSSL error queue, oldest first, as text joined by
// "; "; empty when the queue is empty. Clears the queue.
std::string DrainOpenSslErrors();
// As DrainOpenSslErrors, but "unknown TLS error" when the queue is empty.
std::string OpenSslError();

}  // namespace iris::net
