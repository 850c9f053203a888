#pragma once
// TLS 1.3 contexts on OpenSSL 3 (PROTOCOL.md section 1; NFR-14): TLS 1.2 and older are
// refused in the handshake. Server contexts use SSL_MODE_RELEASE_BUFFERS so an idle
// connection holds no record buffers (NFR-19), and issue no session tickets.
//
// Thread-safety: a TlsContext is immutable after creation and may be shared by all loops.

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "common/status.h"

namespace iris::net {

class TlsContext {
 public:
  // A server context from PEM files (certificate chain and private key).
  static Result<std::unique_ptr<TlsContext>> Server(const std::string& cert_file,
                                                    const std::string& key_file);
  // A client context. Verification: with ca_file, the chain must verify against it; with a
  // pinned SHA-256 fingerprint (hex, colons optional), the leaf must match it. At least one
  // is required: verification is never off.
  static Result<std::unique_ptr<TlsContext>> Client(const std::string& ca_file,
                                                    const std::string& pinned_sha256);
  ~TlsContext();

  SSL_CTX* get() const { return ctx_; }
  const std::string& pinned_sha256() const { return pinned_; }

 private:
  explicit TlsContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;
  std::string pinned_;
};

// Writes a new self-signed certificate (EC P-256, SAN localhost/127.0.0.1/::1, 10 years) and
// its key as PEM files. Both are created exclusively (an existing file or a link at either
// path is an error, nothing is overwritten); the key is mode 0600 from its creation.
Status GenerateSelfSignedCertificate(const std::string& cert_file, const std::string& key_file,
                                     const std::string& common_name);

// SHA-256 of the DER certificate in a PEM file, as upper-case hex pairs joined by ':'.
Result<std::string> CertificateFingerprint(const std::string& cert_file);
// SHA-256 fingerprint of a peer certificate, same format.
std::string CertificateFingerprint(X509* cert);
// Normalises a fingerprint text for comparison: upper-case hex, no separators.
std::string NormalizeFingerprint(const std::string& text);

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
