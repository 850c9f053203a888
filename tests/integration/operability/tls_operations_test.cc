// TLS for real deployments and load balancers (issue 20), against a real irisd:
//   --tls-san names in the generated certificate; SIGHUP reloads the certificate and key
//   (new handshakes see the new one, open connections stay, a bad file keeps the old one);
//   public-key pins survive a renewal with the same key; PROXY protocol v2 from trusted
//   sources feeds the per-IP limits the client's address.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "integration/harness/server_process.h"
#include "iris/client/connection.h"
#include "net/tls.h"
#include "support/wait_for.h"
#include "wire/frame.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

namespace fs = std::filesystem;

// A temporary directory for certificate files, removed at the end.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/iris-tls-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

// Writes a new certificate for the key in `key_file` (a renewal with the same key).
void RenewWithSameKey(const std::string& key_file, const std::string& cert_out) {
  FILE* f = fopen(key_file.c_str(), "r");
  ASSERT_NE(f, nullptr);
  EVP_PKEY* key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
  fclose(f);
  ASSERT_NE(key, nullptr);
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  X509_NAME* n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("iris"),
                             -1, -1, 0);
  X509_set_issuer_name(x, n);
  ASSERT_GT(X509_sign(x, key, EVP_sha256()), 0);
  FILE* out = fopen(cert_out.c_str(), "w");
  ASSERT_NE(out, nullptr);
  PEM_write_X509(out, x);
  fclose(out);
  X509_free(x);
  EVP_PKEY_free(key);
}

// Puts `from` at `to` in one step (rename), as a certificate manager does.
void ReplaceFile(const std::string& from, const std::string& to) {
  const std::string tmp = to + ".new";
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing);
  fs::permissions(tmp, fs::status(from).permissions());
  ASSERT_EQ(rename(tmp.c_str(), to.c_str()), 0);
}

// A TCP connection from `source_ip` to 127.0.0.1/`server_ip`:port, every blocking call
// bounded by 5 s. -1 on failure.
int Dial(const std::string& server_ip, uint16_t port, const std::string& source_ip = "") {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (!source_ip.empty()) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    inet_pton(AF_INET, source_ip.c_str(), &src.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
      close(fd);
      return -1;
    }
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, server_ip.c_str(), &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// A TLS 1.3 client over a socket Dial() made, with OpenSSL directly: it can send bytes
// before the handshake (a PROXY header) and shows the certificate the server presented.
class RawTls {
 public:
  // verify_host: the name (DNS or IP) the certificate must carry, checked against ca_file;
  // with an empty ca_file nothing is verified (the test reads the certificate instead).
  RawTls(int fd, const std::string& ca_file, const std::string& verify_host) : fd_(fd) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    if (!ca_file.empty()) {
      SSL_CTX_load_verify_locations(ctx_, ca_file.c_str(), nullptr);
      SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    }
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    if (!verify_host.empty()) {
      in_addr a4;
      if (inet_pton(AF_INET, verify_host.c_str(), &a4) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), verify_host.c_str());
      } else {
        SSL_set1_host(ssl_, verify_host.c_str());
      }
    }
  }
  ~RawTls() {
    SSL_free(ssl_);
    SSL_CTX_free(ctx_);
    if (fd_ >= 0) close(fd_);
  }
  bool SendPlain(const std::string& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // "" when the handshake succeeded, else why not.
  std::string Handshake() {
    ERR_clear_error();
    if (SSL_connect(ssl_) == 1) return "";
    const long v = SSL_get_verify_result(ssl_);
    std::string why = net::DrainOpenSslErrors();
    if (v != X509_V_OK) why += std::string(" (") + X509_verify_cert_error_string(v) + ")";
    return why.empty() ? "connection closed" : why;
  }
  // SPKI pin of the certificate the server presented ("" when none).
  std::string PresentedPin() {
    X509* x = SSL_get1_peer_certificate(ssl_);
    if (x == nullptr) return "";
    std::string pin = net::SpkiPin(x);
    X509_free(x);
    return pin;
  }
  // HELLO with `token`; the opcode of the reply and its payload.
  client::ReceivedFrame Hello(const std::string& token) {
    v1::Hello h;
    h.add_versions(1);
    h.set_token(token);
    h.set_client("iris-test/1");
    std::string out;
    EXPECT_TRUE(wire::AppendMessageFrame(&out, static_cast<uint8_t>(wire::Opcode::kHello), h).ok());
    EXPECT_EQ(SSL_write(ssl_, out.data(), static_cast<int>(out.size())),
              static_cast<int>(out.size()));
    client::ReceivedFrame got;
    wire::FrameDecoder decoder;
    bool done = false;
    while (!done) {
      uint8_t buf[4096];
      const int n = SSL_read(ssl_, buf, sizeof(buf));
      if (n <= 0) break;
      decoder.Consume(std::span<const uint8_t>(buf, static_cast<size_t>(n)),
                      [&](const wire::Frame& f) {
                        got.opcode = f.opcode;
                        got.payload = std::string(f.payload);
                        done = true;
                        return false;
                      });
    }
    return got;
  }

 private:
  int fd_;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
};

// A connection pinned to `pin` (client library): OK, or why not.
Status ConnectPinned(const ServerProcess& server, const std::string& pin) {
  client::ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = server.port();
  o.fingerprint = pin;
  auto c = client::Connection::Connect(o);
  return c.ok() ? Status::Ok() : c.status();
}

// The pin of the certificate a new connection to `server` gets now.
std::string ServedPin(const ServerProcess& server) {
  RawTls t(Dial("127.0.0.1", server.port()), "", "");
  if (!t.Handshake().empty()) return "";
  return t.PresentedPin();
}

// ---- --tls-san ----

TEST(TlsSan, GeneratedCertificateCarriesTheNamesAndClientsVerifyThem) {
  ServerProcess server(
      {"--tls-san", "example.test", "--tls-san", "127.0.0.2", "--listen", "127.0.0.2:0"});
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  FILE* f = fopen(server.cert_file().c_str(), "r");
  ASSERT_NE(f, nullptr);
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(X509_check_host(x, "example.test", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(x, "127.0.0.2", 0), 1);
  EXPECT_EQ(X509_check_host(x, "localhost", 0, 0, nullptr), 1);
  EXPECT_NE(X509_check_host(x, "other.test", 0, 0, nullptr), 1);
  X509_free(x);

  // Verified by name and by IP address against the certificate as CA.
  RawTls by_name(Dial("127.0.0.2", server.port()), server.cert_file(), "example.test");
  EXPECT_EQ(by_name.Handshake(), "");
  RawTls wrong_name(Dial("127.0.0.2", server.port()), server.cert_file(), "other.test");
  EXPECT_NE(wrong_name.Handshake(), "");
  client::ConnectOptions o;
  o.host = "127.0.0.2";
  o.port = server.port();
  o.ca_file = server.cert_file();
  auto c = client::Connection::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
}

TEST(TlsSan, MalformedNameIsAConfigurationError) {
  ServerProcess server({"--tls-san", "bad name,DNS:evil.test"});
  std::string out;
  EXPECT_EQ(server.RunUntilExit(&out), 2) << out;
  EXPECT_NE(out.find("--tls-san 'bad name,DNS:evil.test'"), std::string::npos) << out;
}

// ---- SIGHUP reload, public-key pins ----

class TlsReload : public ::testing::Test {
 protected:
  void SetUp() override {
    cert_ = dir_ / "server.crt";
    key_ = dir_ / "server.key";
    ASSERT_TRUE(net::GenerateSelfSignedCertificate(cert_, key_, "iris").ok());
    pin_a_ = *net::SpkiPin(cert_);
    server_ = std::make_unique<ServerProcess>(
        std::vector<std::string>{"--tls-cert", cert_, "--tls-key", key_});
    server_->Start();
  }
  void Sighup() { ASSERT_EQ(kill(server_->pid(), SIGHUP), 0); }
  // Waits until every process of the node (the core and each edge process, when the suite
  // runs them) has counted `count` reloads with `result` ("ok" or "error"): from then on
  // every new connection gets what those reloads left in force.
  bool AllReloaded(const std::string& result, int count) {
    int processes = 1;
    if (const char* n = std::getenv("IRIS_TEST_EDGE_PROCESSES"); n != nullptr && *n != '\0') {
      processes += std::atoi(n);
    }
    return PollUntil(
        [&] {
          const auto v = FreshMetric(*server_, "iris_tls_reloads_total{result=\"" + result + "\"}");
          return v && *v >= count * processes;
        },
        15'000, 20);
  }

  TempDir dir_;
  std::string cert_, key_, pin_a_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(TlsReload, SighupServesTheNewCertificateAndKeepsOpenConnections) {
  ASSERT_FALSE(HasFatalFailure());
  // An open, logged-in connection made with certificate A.
  client::ConnectOptions o;
  o.port = server_->port();
  o.fingerprint = pin_a_;
  auto old_conn = client::Connection::Connect(o);
  ASSERT_TRUE(old_conn.ok()) << old_conn.status().ToString();
  v1::Hello h;
  h.add_versions(1);
  h.set_token(server_->Token(7));
  ASSERT_TRUE((*old_conn)->SendFrame(static_cast<uint8_t>(wire::Opcode::kHello), h).ok());
  auto welcome = (*old_conn)->ReadFrame(10'000);
  ASSERT_TRUE(welcome.ok()) << welcome.status().ToString();
  ASSERT_EQ(welcome->opcode, static_cast<uint8_t>(wire::Opcode::kWelcome));

  // Certificate B, with a new key, replaces A's files.
  ASSERT_TRUE(net::GenerateSelfSignedCertificate(dir_ / "b.crt", dir_ / "b.key", "iris").ok());
  const std::string pin_b = *net::SpkiPin(dir_ / "b.crt");
  ASSERT_NE(pin_a_, pin_b);
  ReplaceFile(dir_ / "b.key", key_);
  ReplaceFile(dir_ / "b.crt", cert_);
  EXPECT_EQ(ServedPin(*server_), pin_a_) << "nothing changes before the signal";
  Sighup();
  ASSERT_TRUE(AllReloaded("ok", 1));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(ServedPin(*server_), pin_b) << "a new connection after the reload, " << i;
  }
  EXPECT_TRUE(ConnectPinned(*server_, pin_b).ok());
  // A client pinned to A's key is refused, saying what it was shown.
  const Status refused = ConnectPinned(*server_, pin_a_);
  EXPECT_EQ(refused.code(), StatusCode::kUnauthenticated);
  EXPECT_NE(refused.message().find("does not match the pinned public key " + pin_a_),
            std::string::npos)
      << refused.message();
  EXPECT_NE(refused.message().find("presented " + pin_b), std::string::npos) << refused.message();

  // The connection opened before the reload still works.
  v1::Ping ping;
  ping.set_nonce(99);
  ASSERT_TRUE((*old_conn)->SendFrame(static_cast<uint8_t>(wire::Opcode::kPing), ping).ok());
  // Frames of the catch-up after WELCOME may come first.
  bool ponged = false;
  for (int i = 0; i < 16 && !ponged; ++i) {
    auto f = (*old_conn)->ReadFrame(10'000);
    ASSERT_TRUE(f.ok()) << "the connection opened before the reload: " << f.status().ToString();
    ponged = f->opcode == static_cast<uint8_t>(wire::Opcode::kPong);
  }
  EXPECT_TRUE(ponged);

  // A garbage certificate: the reload fails (counted, logged) and B is still served.
  {
    std::ofstream g(dir_ / "garbage.crt");
    g << "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n";
  }
  ReplaceFile(dir_ / "garbage.crt", cert_);
  Sighup();
  ASSERT_TRUE(AllReloaded("error", 1));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(ServedPin(*server_), pin_b) << i;
  EXPECT_TRUE(ConnectPinned(*server_, pin_b).ok());
}

// A renewal with the same key (what certbot --reuse-key and most ACME clients can do): a
// client pinned to the public key keeps connecting; one pinned to the old certificate's
// fingerprint does not, and is told why.
TEST_F(TlsReload, KeyPinSurvivesARenewalWithTheSameKey) {
  ASSERT_FALSE(HasFatalFailure());
  const std::string old_fingerprint = "SHA256:" + *net::CertificateFingerprint(cert_);
  ASSERT_TRUE(ConnectPinned(*server_, pin_a_).ok());
  ASSERT_TRUE(ConnectPinned(*server_, old_fingerprint).ok()) << "the older form still works";

  RenewWithSameKey(key_, dir_ / "renewed.crt");
  ASSERT_FALSE(HasFatalFailure());
  ReplaceFile(dir_ / "renewed.crt", cert_);
  const std::string renewed_fingerprint = *net::CertificateFingerprint(cert_);
  Sighup();
  ASSERT_TRUE(AllReloaded("ok", 1));
  EXPECT_TRUE(ConnectPinned(*server_, "SHA256:" + renewed_fingerprint).ok())
      << "the renewed certificate is served";
  const Status with_pin = ConnectPinned(*server_, pin_a_);
  EXPECT_TRUE(with_pin.ok()) << with_pin.ToString();
  const Status with_fingerprint = ConnectPinned(*server_, old_fingerprint);
  EXPECT_EQ(with_fingerprint.code(), StatusCode::kUnauthenticated);
  EXPECT_NE(with_fingerprint.message().find("pin the public key"), std::string::npos)
      << with_fingerprint.message();
}

// ---- PROXY protocol v2 ----

// A PROXY v2 header: PROXY TCP4 from `source` (port 40000) to 127.0.0.1:7443.
std::string ProxyV2(const std::string& source) {
  std::string h = std::string("\r\n\r\n\0\r\nQUIT\n", 12);
  h += '\x21';  // version 2, PROXY
  h += '\x11';  // INET, STREAM
  h += '\x00';
  h += '\x0C';
  in_addr src{}, dst{};
  inet_pton(AF_INET, source.c_str(), &src);
  inet_pton(AF_INET, "127.0.0.1", &dst);
  h.append(reinterpret_cast<const char*>(&src), 4);
  h.append(reinterpret_cast<const char*>(&dst), 4);
  h += "\x9C\x40\x1D\x13";
  return h;
}

// Connects from `source_ip`, sends `prefix` (a PROXY header or nothing), then TLS and HELLO.
// The reply's opcode and error code (0 for WELCOME), or opcode 0 when the TLS handshake
// failed (*why says how).
struct HelloOutcome {
  uint8_t opcode = 0;
  uint32_t error_code = 0;
  std::string why;
};
HelloOutcome HelloThrough(const ServerProcess& server, const std::string& source_ip,
                          const std::string& prefix, uint64_t user) {
  HelloOutcome out;
  const int fd = Dial("127.0.0.1", server.port(), source_ip);
  if (fd < 0) {
    out.why = "cannot connect";
    return out;
  }
  RawTls t(fd, server.cert_file(), "127.0.0.1");
  if (!prefix.empty() && !t.SendPlain(prefix)) {
    out.why = "cannot send the prefix";
    return out;
  }
  out.why = t.Handshake();
  if (!out.why.empty()) return out;
  const client::ReceivedFrame f = t.Hello(server.Token(user));
  out.opcode = f.opcode;
  if (f.opcode == static_cast<uint8_t>(wire::Opcode::kError)) {
    v1::Error e;
    e.ParseFromString(f.payload);
    out.error_code = e.code();
  }
  return out;
}

constexpr auto kWelcome = static_cast<uint8_t>(wire::Opcode::kWelcome);

// Per-IP limits count the address the balancer's header carries: five connections "from"
// 10.1.2.3 are served and the sixth is RATE_LIMITED (the RFC's 5 per minute), while a
// seventh "from" 10.9.9.9, through the same balancer at 127.0.0.1, is served.
TEST(ProxyProtocol, PerIpLimitCountsTheCarriedAddress) {
  ServerProcess server({"--proxy-protocol-from", "127.0.0.1/32"},
                       ServerProcess::Defaults::kProductionLimits);
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  for (int i = 0; i < 5; ++i) {
    const HelloOutcome r = HelloThrough(server, "127.0.0.1", ProxyV2("10.1.2.3"), 100 + i);
    ASSERT_EQ(r.opcode, kWelcome) << "connection " << i << ": " << r.why << " " << r.error_code;
  }
  const HelloOutcome sixth = HelloThrough(server, "127.0.0.1", ProxyV2("10.1.2.3"), 106);
  EXPECT_EQ(sixth.opcode, static_cast<uint8_t>(wire::Opcode::kError)) << sixth.why;
  EXPECT_EQ(sixth.error_code, static_cast<uint32_t>(StatusCode::kRateLimited));
  const HelloOutcome other = HelloThrough(server, "127.0.0.1", ProxyV2("10.9.9.9"), 107);
  EXPECT_EQ(other.opcode, kWelcome) << other.why << " " << other.error_code;
}

// From the trusted source the header is required (plain TLS is closed and counted); from
// any other source a header is not TLS and the connection is closed, while plain TLS from
// there is served.
TEST(ProxyProtocol, HeaderRequiredFromTrustedSourcesAndRefusedFromOthers) {
  ServerProcess server({"--proxy-protocol-from", "127.0.0.1"},
                       ServerProcess::Defaults::kProductionLimits);
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  const HelloOutcome untrusted = HelloThrough(server, "127.0.0.2", ProxyV2("10.1.2.3"), 200);
  EXPECT_EQ(untrusted.opcode, 0);
  EXPECT_NE(untrusted.why, "");
  const HelloOutcome plain_untrusted = HelloThrough(server, "127.0.0.2", "", 201);
  EXPECT_EQ(plain_untrusted.opcode, kWelcome) << plain_untrusted.why;

  const HelloOutcome plain_trusted = HelloThrough(server, "127.0.0.1", "", 202);
  EXPECT_EQ(plain_trusted.opcode, 0);
  EXPECT_NE(plain_trusted.why, "");
  const auto errors = FreshMetric(server, "iris_proxy_header_errors_total");
  ASSERT_TRUE(errors.has_value());
  EXPECT_GE(*errors, 1);
  const HelloOutcome proxied = HelloThrough(server, "127.0.0.1", ProxyV2("10.1.2.3"), 203);
  EXPECT_EQ(proxied.opcode, kWelcome) << proxied.why;
}

}  // namespace
}  // namespace iris::testing
