// Public-key pins (net::ParsePin, SpkiPin, TlsContext::Client): a certificate renewed with
// the same key still matches a pin-sha256 pin; a different key is refused; the older
// certificate-fingerprint form keeps working. Also the generated certificate's extra names
// (--tls-san) and a server context's Reload.
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "net/tls.h"

namespace iris::net {
namespace {

namespace fs = std::filesystem;

class TlsPinTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("iris_tls_pin_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // A new certificate for the key in `key_file` (a renewal: same key, new serial/validity).
  std::string Renew(const std::string& key_file, const std::string& name, long serial) {
    FILE* f = fopen(key_file.c_str(), "r");
    EVP_PKEY* key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
    fclose(f);
    X509* x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME* n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("iris"), -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_sign(x, key, EVP_sha256());
    const std::string path = Path(name);
    FILE* out = fopen(path.c_str(), "w");
    PEM_write_X509(out, x);
    fclose(out);
    X509_free(x);
    EVP_PKEY_free(key);
    return path;
  }

  // A TLS 1.3 handshake in memory between a server context on (cert, key) and a client
  // pinned to `pin`: "" when it verifies, else the client's OpenSSL error.
  std::string Handshake(const std::string& cert, const std::string& key, const std::string& pin) {
    auto server = TlsContext::Server(cert, key);
    EXPECT_TRUE(server.ok()) << server.status().ToString();
    auto client = TlsContext::Client("", pin);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    if (!server.ok() || !client.ok()) return "no context";
    return HandshakeWith((*server)->get(), (*client)->get());
  }

  static std::string HandshakeWith(SSL_CTX* server_ctx, SSL_CTX* client_ctx) {
    SSL* s = SSL_new(server_ctx);
    SSL* c = SSL_new(client_ctx);
    BIO *sb = nullptr, *cb = nullptr;
    BIO_new_bio_pair(&sb, 0, &cb, 0);
    SSL_set_bio(s, sb, sb);
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    std::string error;
    int rc = 0, rs = 0;
    for (int i = 0; i < 20; ++i) {
      ERR_clear_error();
      rc = SSL_do_handshake(c);
      if (rc <= 0 && SSL_get_error(c, rc) != SSL_ERROR_WANT_READ) {
        error = OpenSslError();
        break;
      }
      rs = SSL_do_handshake(s);
      if (rc == 1 && rs == 1) break;
    }
    if (error.empty() && rc != 1) error = "handshake did not finish";
    SSL_free(s);
    SSL_free(c);
    return error;
  }

  fs::path dir_;
};

TEST_F(TlsPinTest, RenewalWithTheSameKeyKeepsMatchingTheKeyPin) {
  const std::string cert = Path("a.crt"), key = Path("a.key");
  ASSERT_TRUE(GenerateSelfSignedCertificate(cert, key, "iris").ok());
  const std::string pin = *SpkiPin(cert);
  ASSERT_TRUE(pin.starts_with("pin-sha256:")) << pin;
  const std::string old_fingerprint = *CertificateFingerprint(cert);

  const std::string renewed = Renew(key, "renewed.crt", 2);
  EXPECT_EQ(*SpkiPin(renewed), pin);
  EXPECT_NE(*CertificateFingerprint(renewed), old_fingerprint);

  EXPECT_EQ(Handshake(cert, key, pin), "");
  EXPECT_EQ(Handshake(renewed, key, pin), "");
  // The older fingerprint form still pins the certificate it names, and only it.
  EXPECT_EQ(Handshake(cert, key, "SHA256:" + old_fingerprint), "");
  EXPECT_NE(Handshake(renewed, key, "SHA256:" + old_fingerprint), "");
}

TEST_F(TlsPinTest, ADifferentKeyIsRefused) {
  ASSERT_TRUE(GenerateSelfSignedCertificate(Path("a.crt"), Path("a.key"), "iris").ok());
  ASSERT_TRUE(GenerateSelfSignedCertificate(Path("b.crt"), Path("b.key"), "iris").ok());
  const std::string pin_a = *SpkiPin(Path("a.crt"));
  EXPECT_NE(*SpkiPin(Path("b.crt")), pin_a);
  const std::string error = Handshake(Path("b.crt"), Path("b.key"), pin_a);
  EXPECT_NE(error.find("certificate verify failed"), std::string::npos) << error;

  // The client can say what the server presented.
  auto server = TlsContext::Server(Path("b.crt"), Path("b.key"));
  auto client = TlsContext::Client("", pin_a);
  ASSERT_TRUE(server.ok() && client.ok());
  SSL* s = SSL_new((*server)->get());
  SSL* c = SSL_new((*client)->get());
  BIO *sb = nullptr, *cb = nullptr;
  BIO_new_bio_pair(&sb, 0, &cb, 0);
  SSL_set_bio(s, sb, sb);
  SSL_set_bio(c, cb, cb);
  SSL_set_accept_state(s);
  SSL_set_connect_state(c);
  std::string presented;
  CapturePresentedPin(c, &presented);
  for (int i = 0; i < 10; ++i) {
    const int r = SSL_do_handshake(c);
    if (r == 1 || SSL_get_error(c, r) != SSL_ERROR_WANT_READ) break;
    SSL_do_handshake(s);
  }
  CapturePresentedPin(c, nullptr);
  ERR_clear_error();
  SSL_free(s);
  SSL_free(c);
  EXPECT_EQ(presented, *SpkiPin(Path("b.crt")));
}

TEST_F(TlsPinTest, ParsePinAcceptsEveryWrittenFormAndRejectsGarbage) {
  ASSERT_TRUE(GenerateSelfSignedCertificate(Path("a.crt"), Path("a.key"), "iris").ok());
  const std::string pin = *SpkiPin(Path("a.crt"));
  const std::string b64 = pin.substr(11);
  for (const std::string& form :
       {pin, "pin-sha256=\"" + b64 + "\"", "sha256//" + b64, b64, " " + pin + "\n"}) {
    auto p = ParsePin(form);
    ASSERT_TRUE(p.ok()) << form << ": " << p.status().ToString();
    EXPECT_EQ(p->kind, TlsContext::PinKind::kSpki) << form;
    EXPECT_EQ(p->digest.size(), 32u);
  }
  const std::string fp = *CertificateFingerprint(Path("a.crt"));
  for (const std::string& form : {fp, "SHA256:" + fp, NormalizeFingerprint(fp)}) {
    auto p = ParsePin(form);
    ASSERT_TRUE(p.ok()) << form << ": " << p.status().ToString();
    EXPECT_EQ(p->kind, TlsContext::PinKind::kCertificate) << form;
  }
  std::string bad_char = pin;
  bad_char[20] = '!';
  for (const std::string& bad : {std::string("pin-sha256:abc"), bad_char, std::string("SHA256:ZZ"),
                                 fp.substr(3), std::string("hello"), "pin-sha256:" + b64 + "AA"}) {
    auto p = ParsePin(bad);
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_EQ(p.status().code(), StatusCode::kBadRequest);
    EXPECT_NE(p.status().message().find("pin-sha256:BASE64"), std::string::npos)
        << p.status().message();
  }
}

TEST_F(TlsPinTest, GeneratedCertificateCarriesTheExtraNames) {
  ASSERT_TRUE(GenerateSelfSignedCertificate(Path("a.crt"), Path("a.key"), "iris",
                                            {"example.test", "127.0.0.2", "2001:db8::1"})
                  .ok());
  FILE* f = fopen(Path("a.crt").c_str(), "r");
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(X509_check_host(x, "example.test", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(x, "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(x, "127.0.0.2", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(x, "2001:db8::1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
  EXPECT_NE(X509_check_host(x, "other.test", 0, 0, nullptr), 1);
  X509_free(x);

  for (const std::string& bad : {std::string(""), std::string("-bad.test"), std::string("a..b"),
                                 std::string("sp ace"), std::string("x,DNS:evil.test")}) {
    const Status s = ValidateSubjectAltName(bad);
    EXPECT_EQ(s.code(), StatusCode::kBadRequest) << "'" << bad << "'";
  }
  EXPECT_EQ(GenerateSelfSignedCertificate(Path("b.crt"), Path("b.key"), "iris", {"x,DNS:evil.test"})
                .code(),
            StatusCode::kBadRequest);
  EXPECT_FALSE(fs::exists(Path("b.key")));
}

TEST_F(TlsPinTest, ReloadSwapsThePairAndKeepsTheOldOneOnError) {
  ASSERT_TRUE(GenerateSelfSignedCertificate(Path("a.crt"), Path("a.key"), "iris").ok());
  ASSERT_TRUE(GenerateSelfSignedCertificate(Path("b.crt"), Path("b.key"), "iris").ok());
  auto server = TlsContext::Server(Path("a.crt"), Path("a.key"));
  ASSERT_TRUE(server.ok());
  auto pinned_a = TlsContext::Client("", *SpkiPin(Path("a.crt")));
  auto pinned_b = TlsContext::Client("", *SpkiPin(Path("b.crt")));
  ASSERT_TRUE(pinned_a.ok() && pinned_b.ok());
  const std::shared_ptr<SSL_CTX> before = (*server)->Current();
  EXPECT_EQ(HandshakeWith((*server)->get(), (*pinned_a)->get()), "");

  ASSERT_TRUE((*server)->Reload(Path("b.crt"), Path("b.key")).ok());
  EXPECT_EQ(HandshakeWith((*server)->get(), (*pinned_b)->get()), "");
  EXPECT_NE(HandshakeWith((*server)->get(), (*pinned_a)->get()), "");
  // A context taken before the reload still works (open connections keep theirs).
  EXPECT_EQ(HandshakeWith(before.get(), (*pinned_a)->get()), "");

  // Garbage, or a key that does not match: an error naming the file, B kept.
  {
    FILE* g = fopen(Path("garbage.crt").c_str(), "w");
    fputs("not a certificate\n", g);
    fclose(g);
  }
  const Status garbage = (*server)->Reload(Path("garbage.crt"), Path("b.key"));
  EXPECT_EQ(garbage.code(), StatusCode::kBadRequest);
  EXPECT_NE(garbage.message().find("garbage.crt"), std::string::npos) << garbage.message();
  const Status mismatch = (*server)->Reload(Path("a.crt"), Path("b.key"));
  EXPECT_EQ(mismatch.code(), StatusCode::kBadRequest);
  EXPECT_NE(mismatch.message().find("does not match"), std::string::npos) << mismatch.message();
  EXPECT_EQ(HandshakeWith((*server)->get(), (*pinned_b)->get()), "");
}

}  // namespace
}  // namespace iris::net
