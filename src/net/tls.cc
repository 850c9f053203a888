#include "net/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
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

namespace {
struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

// A server context holding the pair in `cert_file` and `key_file`.
Result<SslCtxPtr> NewServerContext(const std::string& cert_file, const std::string& key_file) {
  SslCtxPtr owned(SSL_CTX_new(TLS_server_method()));
  SSL_CTX* ctx = owned.get();
  if (ctx == nullptr) return Internal("SSL_CTX_new: " + OpenSslError());
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
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
      return BadRequest("TLS key " + key_file + " does not match the certificate " + cert_file +
                        ": " + OpenSslError());
    }
    return BadRequest("cannot load TLS key " + key_file + ": " + OpenSslError());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return BadRequest("TLS key " + key_file + " does not match the certificate " + cert_file +
                      ": " + OpenSslError());
  }
  return owned;
}
}  // namespace

TlsContext::TlsContext(SSL_CTX* ctx) : ctx_(ctx, SslCtxFree{}) {}

TlsContext::~TlsContext() = default;

std::shared_ptr<SSL_CTX> TlsContext::Current() const {
  std::lock_guard lock(mu_);
  return ctx_;
}

Result<std::unique_ptr<TlsContext>> TlsContext::Server(const std::string& cert_file,
                                                       const std::string& key_file) {
  IRIS_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewServerContext(cert_file, key_file));
  return std::unique_ptr<TlsContext>(new TlsContext(ctx.release()));
}

Status TlsContext::Reload(const std::string& cert_file, const std::string& key_file) {
  IRIS_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewServerContext(cert_file, key_file));
  std::shared_ptr<SSL_CTX> fresh(ctx.release(), SslCtxFree{});
  {
    std::lock_guard lock(mu_);
    ctx_.swap(fresh);
  }
  return Status::Ok();  // the old context goes with its last connection's SSL object
}

namespace {
constexpr std::string_view kPinPrefix = "pin-sha256:";

int PresentedPinIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

std::string Sha256(const unsigned char* data, size_t len) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(data, len, md, &md_len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(md), md_len);
}

std::string SpkiDigest(X509* cert) {
  EVP_PKEY* key = X509_get0_pubkey(cert);
  if (key == nullptr) return "";
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key, &der);
  if (len <= 0) return "";
  std::string out = Sha256(der, static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string CertificateDigest(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(cert, EVP_sha256(), md, &len);
  return std::string(reinterpret_cast<const char*>(md), len);
}

std::string Base64(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

int VerifyPinned(X509_STORE_CTX* store, void* arg) {
  const auto* self = static_cast<const TlsContext*>(arg);
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  if (leaf == nullptr) return 0;
  if (self->pin_kind() == TlsContext::PinKind::kNone) return X509_verify_cert(store);
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (ssl != nullptr) {
    if (auto* presented = static_cast<std::string*>(SSL_get_ex_data(ssl, PresentedPinIndex()))) {
      *presented = SpkiPin(leaf);
    }
  }
  const std::string digest =
      self->pin_kind() == TlsContext::PinKind::kSpki ? SpkiDigest(leaf) : CertificateDigest(leaf);
  const std::string& want = self->pin_digest();
  if (digest.empty() || digest.size() != want.size()) return 0;
  return CRYPTO_memcmp(digest.data(), want.data(), want.size()) == 0 ? 1 : 0;
}
}  // namespace

std::string SpkiPin(X509* cert) { return std::string(kPinPrefix) + Base64(SpkiDigest(cert)); }

Result<std::string> SpkiPin(const std::string& cert_file) {
  FILE* f = fopen(cert_file.c_str(), "r");
  if (f == nullptr) return NotFound("cannot open " + cert_file);
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  if (x == nullptr) return BadRequest("not a PEM certificate: " + cert_file);
  std::string pin = SpkiPin(x);
  X509_free(x);
  return pin;
}

void CapturePresentedPin(SSL* ssl, std::string* presented) {
  SSL_set_ex_data(ssl, PresentedPinIndex(), presented);
}

Result<Pin> ParsePin(const std::string& text) {
  std::string_view t = text;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.remove_prefix(1);
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.remove_suffix(1);
  const auto bad = [&text] {
    return BadRequest("cannot read the pin '" + text +
                      "': expected pin-sha256:BASE64 (the server's public key, as irisd's "
                      "banner prints it) or a SHA-256 certificate fingerprint (SHA256:AB:CD:..)");
  };
  std::string_view b64;
  bool spki = false;
  if (t.starts_with(kPinPrefix)) {
    b64 = t.substr(kPinPrefix.size()), spki = true;
  } else if (t.starts_with("pin-sha256=")) {
    b64 = t.substr(11), spki = true;
    if (b64.size() >= 2 && b64.front() == '"' && b64.back() == '"') {
      b64 = b64.substr(1, b64.size() - 2);
    }
  } else if (t.starts_with("sha256//")) {
    b64 = t.substr(8), spki = true;
  } else if (t.size() == 44 && t.back() == '=') {
    b64 = t, spki = true;
  }
  Pin pin;
  if (spki) {
    if (b64.size() != 44) return bad();
    unsigned char raw[48];
    if (EVP_DecodeBlock(raw, reinterpret_cast<const unsigned char*>(b64.data()), 44) != 33) {
      return bad();
    }
    pin.kind = TlsContext::PinKind::kSpki;
    pin.digest.assign(reinterpret_cast<const char*>(raw), 32);
    // Canonical form only: what encodes back to the same text (no stray bits or padding).
    if (Base64(pin.digest) != b64) return bad();
    return pin;
  }
  const std::string hex = NormalizeFingerprint(std::string(t));
  // Anything but hex digits, colons and the SHA256: prefix is not a fingerprint.
  std::string_view rest = t;
  if (rest.starts_with("SHA256:") || rest.starts_with("sha256:")) rest.remove_prefix(7);
  for (char c : rest) {
    if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':') return bad();
  }
  if (hex.size() != 64) return bad();
  pin.kind = TlsContext::PinKind::kCertificate;
  for (size_t i = 0; i < 64; i += 2) {
    pin.digest.push_back(static_cast<char>(HexValue(hex[i]) << 4 | HexValue(hex[i + 1])));
  }
  return pin;
}

Result<std::unique_ptr<TlsContext>> TlsContext::Client(const std::string& ca_file,
                                                       const std::string& pin) {
  if (ca_file.empty() && pin.empty()) {
    return BadRequest("TLS verification needs a CA file or a pinned public key");
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return Internal("SSL_CTX_new: " + OpenSslError());
  std::unique_ptr<TlsContext> out(new TlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (!pin.empty()) {
    IRIS_ASSIGN_OR_RETURN(Pin p, ParsePin(pin));
    out->pin_kind_ = p.kind;
    out->pin_ = std::move(p.digest);
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

Status ValidateSubjectAltName(const std::string& name) {
  in_addr a4;
  in6_addr a6;
  if (inet_pton(AF_INET, name.c_str(), &a4) == 1 || inet_pton(AF_INET6, name.c_str(), &a6) == 1) {
    return Status::Ok();
  }
  // A DNS name (RFC 1123 labels; a leading "*." wildcard allowed), at most 253 bytes.
  std::string_view n = name;
  if (n.starts_with("*.")) n.remove_prefix(2);
  bool ok = !n.empty() && name.size() <= 253;
  size_t label = 0;
  for (size_t i = 0; ok && i <= n.size(); ++i) {
    if (i == n.size() || n[i] == '.') {
      ok = label >= 1 && label <= 63 && n[i - label] != '-' && n[i - 1] != '-';
      label = 0;
      continue;
    }
    const char c = n[i];
    ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-';
    ++label;
  }
  if (!ok) {
    return BadRequest("--tls-san '" + name +
                      "' is neither an IP address nor a DNS name (letters, digits, '-' and "
                      "dots; e.g. chat.example.com or 203.0.113.7)");
  }
  return Status::Ok();
}

Status GenerateSelfSignedCertificate(const std::string& cert_file, const std::string& key_file,
                                     const std::string& common_name,
                                     const std::vector<std::string>& extra_sans) {
  std::string san = "DNS:localhost,IP:127.0.0.1,IP:::1";
  for (const std::string& name : extra_sans) {
    IRIS_RETURN_IF_ERROR(ValidateSubjectAltName(name));
    in_addr a4;
    in6_addr a6;
    const bool ip =
        inet_pton(AF_INET, name.c_str(), &a4) == 1 || inet_pton(AF_INET6, name.c_str(), &a6) == 1;
    san += (ip ? ",IP:" : ",DNS:") + name;
  }
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
    const char* exts[][2] = {{"subjectAltName", san.c_str()},
                             {"basicConstraints", "critical,CA:TRUE"},
                             {"keyUsage", "critical,digitalSignature,keyCertSign"}};
    for (auto& e : exts) {
      X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, OBJ_sn2nid(e[0]), e[1]);
      if (ext == nullptr) {
        result = Internal(std::string("cannot make the ") + e[0] + " extension: " + OpenSslError());
        break;
      }
      X509_add_ext(x, ext, -1);
      X509_EXTENSION_free(ext);
    }
    if (!result.ok()) break;
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
