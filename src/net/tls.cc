#include "net/tls.h"

#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace iris::net {

std::string DrainOpenSslErrors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

std::string OpenSslError() {
  std::string out = DrainOpenSslErrors();
  return out.empty() ? "unknown TLS error" : out;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

namespace {
int SecretsIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// OpenSSL reports every TLS 1.3 secret as an NSS key log line: "LABEL <client random hex>
// <secret hex>". The two application traffic secrets are kept; the line is not logged.
void OnKeyLogLine(const SSL* ssl, const char* line) {
  auto* secrets = static_cast<TlsTrafficSecrets*>(SSL_get_ex_data(ssl, SecretsIndex()));
  if (secrets == nullptr) return;
  const std::string_view l(line);
  uint8_t* dest;
  uint8_t* len;
  if (l.starts_with("CLIENT_TRAFFIC_SECRET_0 ")) {
    dest = secrets->client, len = &secrets->client_len;
  } else if (l.starts_with("SERVER_TRAFFIC_SECRET_0 ")) {
    dest = secrets->server, len = &secrets->server_len;
  } else {
    return;
  }
  const size_t sp = l.rfind(' ');
  const std::string_view hex = l.substr(sp + 1);
  if (hex.size() % 2 != 0 || hex.size() / 2 > sizeof(secrets->client)) return;
  for (size_t i = 0; i < hex.size() / 2; ++i) {
    const int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return;
    dest[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  *len = static_cast<uint8_t>(hex.size() / 2);
}
}  // namespace

void CaptureTrafficSecrets(SSL* ssl, TlsTrafficSecrets* secrets) {
  SSL_set_ex_data(ssl, SecretsIndex(), secrets);
}

void EnableTrafficSecretCapture(SSL_CTX* ctx) { SSL_CTX_set_keylog_callback(ctx, OnKeyLogLine); }

Result<std::unique_ptr<TlsContext>> TlsContext::Server(const std::string& cert_file,
                                                       const std::string& key_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return Internal("SSL_CTX_new: " + OpenSslError());
  std::unique_ptr<TlsContext> out(new TlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // Exactly the suites Tls13Records implements (OpenSSL's TLS 1.3 defaults).
  if (SSL_CTX_set_ciphersuites(ctx,
                               "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                               "TLS_CHACHA20_POLY1305_SHA256") != 1) {
    return Internal("SSL_CTX_set_ciphersuites: " + OpenSslError());
  }
  SSL_CTX_set_keylog_callback(ctx, OnKeyLogLine);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return BadRequest("cannot load TLS certificate " + cert_file + ": " + OpenSslError());
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return BadRequest("cannot load TLS key " + key_file + ": " + OpenSslError());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return BadRequest("TLS key does not match the certificate: " + OpenSslError());
  }
  return out;
}

namespace {
int VerifyPinned(X509_STORE_CTX* store, void* arg) {
  const auto* self = static_cast<const TlsContext*>(arg);
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  if (leaf == nullptr) return 0;
  if (!self->pinned_sha256().empty()) {
    return NormalizeFingerprint(CertificateFingerprint(leaf)) == self->pinned_sha256() ? 1 : 0;
  }
  return X509_verify_cert(store);
}
}  // namespace

Result<std::unique_ptr<TlsContext>> TlsContext::Client(const std::string& ca_file,
                                                       const std::string& pinned_sha256) {
  if (ca_file.empty() && pinned_sha256.empty()) {
    return BadRequest("TLS verification needs a CA file or a pinned certificate fingerprint");
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return Internal("SSL_CTX_new: " + OpenSslError());
  std::unique_ptr<TlsContext> out(new TlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (!pinned_sha256.empty()) {
    out->pinned_ = NormalizeFingerprint(pinned_sha256);
    if (out->pinned_.size() != 64) return BadRequest("pinned fingerprint must be SHA-256 hex");
  } else if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
    return BadRequest("cannot load CA file " + ca_file + ": " + OpenSslError());
  }
  SSL_CTX_set_cert_verify_callback(ctx, VerifyPinned, out.get());
  return out;
}

namespace {
// A new file opened for writing: open(O_CREAT | O_EXCL | O_NOFOLLOW, mode). nullptr with
// errno set when it exists already or cannot be created.
FILE* CreateExclusive(const std::string& path, mode_t mode) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return nullptr;
  FILE* f = fdopen(fd, "w");
  if (f == nullptr) {
    const int err = errno;
    close(fd);
    unlink(path.c_str());
    errno = err;
  }
  return f;
}
}  // namespace

Status GenerateSelfSignedCertificate(const std::string& cert_file, const std::string& key_file,
                                     const std::string& common_name) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  if (key == nullptr) return Internal("EC key generation failed: " + OpenSslError());
  X509* x = X509_new();
  Status result;
  do {
    X509_set_version(x, 2);
    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof(serial)) != 1) {
      result = Internal("RAND_bytes failed");
      break;
    }
    serial[0] &= 0x7f;
    BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 24 * 3600);
    X509_set_pubkey(x, key);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
    const char* exts[][2] = {{"subjectAltName", "DNS:localhost,IP:127.0.0.1,IP:::1"},
                             {"basicConstraints", "critical,CA:TRUE"},
                             {"keyUsage", "critical,digitalSignature,keyCertSign"}};
    for (auto& e : exts) {
      X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, OBJ_sn2nid(e[0]), e[1]);
      if (ext != nullptr) {
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
      }
    }
    if (X509_sign(x, key, EVP_sha256()) == 0) {
      result = Internal("certificate signing failed: " + OpenSslError());
      break;
    }
    // The key is 0600 from its creation (no moment at the umask's mode); neither file
    // overwrites anything or follows a link planted at its path.
    FILE* kf = CreateExclusive(key_file, 0600);
    if (kf == nullptr) {
      result = Internal("cannot create " + key_file + ": " + std::strerror(errno));
      break;
    }
    const bool key_ok = PEM_write_PrivateKey(kf, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
    const bool key_closed = fflush(kf) == 0 && fsync(fileno(kf)) == 0;
    fclose(kf);
    if (!key_ok || !key_closed) {
      unlink(key_file.c_str());
      result = Internal("writing " + key_file + " failed: " + OpenSslError());
      break;
    }
    FILE* cf = CreateExclusive(cert_file, 0644);
    if (cf == nullptr) {
      result = Internal("cannot create " + cert_file + ": " + std::strerror(errno));
      break;
    }
    const bool cert_ok = PEM_write_X509(cf, x) == 1;
    const bool cert_closed = fflush(cf) == 0 && fsync(fileno(cf)) == 0;
    fclose(cf);
    if (!cert_ok || !cert_closed) {
      unlink(cert_file.c_str());
      result = Internal("writing " + cert_file + " failed: " + OpenSslError());
    }
  } while (false);
  X509_free(x);
  EVP_PKEY_free(key);
  return result;
}

std::string CertificateFingerprint(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(cert, EVP_sha256(), md, &len);
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    if (i) out.push_back(':');
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 0xf]);
  }
  return out;
}

Result<std::string> CertificateFingerprint(const std::string& cert_file) {
  FILE* f = fopen(cert_file.c_str(), "r");
  if (f == nullptr) return NotFound("cannot open " + cert_file);
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  if (x == nullptr) return BadRequest("not a PEM certificate: " + cert_file);
  std::string fp = CertificateFingerprint(x);
  X509_free(x);
  return fp;
}

std::string NormalizeFingerprint(const std::string& text) {
  std::string_view t = text;
  if (t.size() > 7 && (t.substr(0, 7) == "SHA256:" || t.substr(0, 7) == "sha256:")) {
    t.remove_prefix(7);
  }
  std::string out;
  for (char c : t) {
    if (std::isxdigit(static_cast<unsigned char>(c))) {
      out.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
    }
  }
  return out;
}

}  // namespace iris::net
