// Authentication against a real irisd (RFC-001 FR-9, FR-10, FR-11, NFR-14, NFR-16;
// PROTOCOL.md sections 1, 2, 5 and 6): every refused token is answered ERROR
// UNAUTHENTICATED (fatal) and the connection is closed; revocation through the admin API
// closes live sessions at once; frames before HELLO, unsupported versions and TLS 1.2 are
// refused. Each refusal is paired with an accepted control that differs only in the refused
// property, so a test cannot pass because everything is refused.

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "auth/base64url.h"
#include "security/security_util.h"

namespace iris::testing {
namespace {

using nlohmann::json;

int64_t NowS() { return WallMs() / 1000; }

std::string PayloadJson(uint64_t sub, int64_t iat, int64_t exp, const std::string& jti) {
  return json{{"sub", std::to_string(sub)}, {"iat", iat}, {"exp", exp}, {"jti", jti}}.dump();
}

std::string UniqueJti(const std::string& what) {
  static int n = 0;
  return what + "-" + std::to_string(MonoMs()) + "-" + std::to_string(++n);
}

// header.payload signed with HMAC(md) under `secret`: a genuine HS384/HS512 token when md
// is SHA-384/512.
std::string HmacToken(const EVP_MD* md, const std::string& secret, const std::string& header,
                      const std::string& payload) {
  std::string input = auth::Base64UrlEncode(header) + "." + auth::Base64UrlEncode(payload);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(md, secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  return input + "." + auth::Base64UrlEncode(std::string(reinterpret_cast<char*>(mac), len));
}

// A genuine RS256 token under a freshly generated RSA key.
std::string Rs256Token(const std::string& payload) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
  if (key == nullptr) return {};
  std::string input = auth::Base64UrlEncode(R"({"alg":"RS256","typ":"JWT"})") + "." +
                      auth::Base64UrlEncode(payload);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  size_t len = 0;
  std::string sig;
  if (EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
      EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()),
                     input.size()) == 1) {
    sig.resize(len);
    if (EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                       reinterpret_cast<const unsigned char*>(input.data()),
                       input.size()) == 1) {
      sig.resize(len);
    } else {
      sig.clear();
    }
  }
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(key);
  return sig.empty() ? std::string() : input + "." + auth::Base64UrlEncode(sig);
}

// The token must log its user in (the accepted control of a refusal).
::testing::AssertionResult Accepted(const ServerProcess& server, const std::string& token,
                                    uint64_t user) {
  std::unique_ptr<TestClient> c;
  client::ReceivedFrame f = HelloOnNewConnection(server, token, &c);
  if (f.opcode != Op(wire::Opcode::kWelcome)) {
    return ::testing::AssertionFailure() << "control token refused: " << ParseError(f).message();
  }
  v1::Welcome w;
  if (!w.ParseFromString(f.payload)) return ::testing::AssertionFailure() << "bad WELCOME";
  if (w.user_id() != user) {
    return ::testing::AssertionFailure() << "WELCOME for user " << w.user_id() << ", not " << user;
  }
  return ::testing::AssertionSuccess();
}

// The token must be refused with a message that never echoes the token.
::testing::AssertionResult Refused(const ServerProcess& server, const std::string& token,
                                   const char* what) {
  SCOPED_TRACE(what);
  v1::Error e = ExpectHelloRefused(server, token);  // reports an accepted token itself
  if (e.message().empty()) return ::testing::AssertionFailure() << what << ": no error message";
  if (token.size() >= 20 && e.message().find(token.substr(0, 20)) != std::string::npos) {
    return ::testing::AssertionFailure() << what << ": the error echoes the token: " << e.message();
  }
  return ::testing::AssertionSuccess();
}

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A second signing key, selected by kid (key rotation).
    k2_secret_ = "k2-secret-0123456789abcdef0123456789abcdef";
    const std::string path = server_.data_dir() + "/k2.secret";
    std::ofstream(path) << k2_secret_ << "\n";
    std::filesystem::permissions(path,
                                 std::filesystem::perms::owner_read |
                                     std::filesystem::perms::owner_write);  // irisd wants 0600
    server_.args().push_back("--jwt-key");
    server_.args().push_back("k2=" + path);
    server_.Start();
    secret_ = server_.jwt_secret();
    ASSERT_GE(secret_.size(), 32u);
  }

  std::string Valid(uint64_t user, const std::string& jti = "") const {
    const int64_t now = NowS();
    return auth::MintRawToken(secret_, R"({"alg":"HS256","typ":"JWT"})",
                              PayloadJson(user, now, now + 3600, jti.empty() ? UniqueJti("v") : jti));
  }

  ServerProcess server_;
  std::string secret_;
  std::string k2_secret_;
};

// FR-9/NFR-16: a signature that does not verify under the server's key.
TEST_F(AuthTest, RefusesBadSignatures) {
  EXPECT_TRUE(Accepted(server_, Valid(2001), 2001));
  const int64_t now = NowS();
  auth::Claims c;
  c.user_id = 2002;
  c.iat = now;
  c.exp = now + 3600;
  c.jti = UniqueJti("badsig");
  EXPECT_TRUE(Refused(server_, auth::MintToken("another-secret-of-at-least-32-bytes!!", c),
                "signed with another key"));
  // The header and payload of a user-2003 token with the signature of a user-2004 token.
  const std::string t3 = Valid(2003);
  const std::string t4 = Valid(2004);
  EXPECT_TRUE(Refused(server_, t3.substr(0, t3.rfind('.')) + t4.substr(t4.rfind('.')),
                "signature of another token"));
  EXPECT_TRUE(Refused(server_, t3.substr(0, t3.rfind('.') + 1), "signature removed"));
  EXPECT_TRUE(Refused(server_, t3.substr(0, t3.rfind('.') + 1) + auth::Base64UrlEncode(std::string(32, 'x')),
                "signature replaced"));
  EXPECT_TRUE(Refused(server_, "", "empty token"));
  EXPECT_TRUE(Refused(server_, "not-a-jwt", "not a JWT"));
}

// FR-9/NFR-16: alg none and every algorithm other than HS256, even when correctly signed
// in that algorithm, or signed with HMAC under the server's secret (key confusion).
TEST_F(AuthTest, RefusesAlgNoneAndOtherAlgorithms) {
  const int64_t now = NowS();
  auto payload = [&](uint64_t user) { return PayloadJson(user, now, now + 3600, UniqueJti("alg")); };
  EXPECT_TRUE(Accepted(server_, auth::MintRawToken(secret_, R"({"alg":"HS256"})", payload(2101)), 2101));
  EXPECT_TRUE(Refused(server_,
                auth::Base64UrlEncode(R"({"alg":"none","typ":"JWT"})") + "." +
                    auth::Base64UrlEncode(payload(2102)) + ".",
                "alg none, unsigned"));
  EXPECT_TRUE(Refused(server_, auth::MintRawToken(secret_, R"({"alg":"none","typ":"JWT"})", payload(2103)),
                "alg none with an HS256 signature"));
  EXPECT_TRUE(Refused(server_, auth::MintRawToken(secret_, R"({"alg":"None"})", payload(2104)),
                "alg None"));
  EXPECT_TRUE(Refused(server_, HmacToken(EVP_sha384(), secret_, R"({"alg":"HS384","typ":"JWT"})", payload(2105)),
                "genuine HS384"));
  EXPECT_TRUE(Refused(server_, HmacToken(EVP_sha512(), secret_, R"({"alg":"HS512","typ":"JWT"})", payload(2106)),
                "genuine HS512"));
  const std::string rs = Rs256Token(payload(2107));
  ASSERT_FALSE(rs.empty());
  EXPECT_TRUE(Refused(server_, rs, "genuine RS256"));
  EXPECT_TRUE(Refused(server_, auth::MintRawToken(secret_, R"({"alg":"RS256","typ":"JWT"})", payload(2108)),
                "RS256 header, HMAC-SHA256 signature (key confusion)"));
  EXPECT_TRUE(Refused(server_, auth::MintRawToken(secret_, R"({"alg":"HS384"})", payload(2109)),
                "HS384 header, HS256 signature"));
  EXPECT_TRUE(Refused(server_, auth::MintRawToken(secret_, R"({"typ":"JWT"})", payload(2110)),
                "no alg"));
}

// FR-10: expired tokens, lifetimes over 24 h and iat in the future, with the 30 s leeway
// honoured on both sides.
TEST_F(AuthTest, RefusesExpiredOverlongAndFutureTokens) {
  const int64_t now = NowS();
  auto token = [&](uint64_t user, int64_t iat, int64_t exp) {
    return auth::MintRawToken(secret_, R"({"alg":"HS256"})",
                              PayloadJson(user, iat, exp, UniqueJti("time")));
  };
  EXPECT_TRUE(Refused(server_, token(2201, now - 7200, now - 3600), "expired an hour ago"));
  EXPECT_TRUE(Refused(server_, token(2202, now - 600, now - 45), "expired beyond the leeway"));
  EXPECT_TRUE(Accepted(server_, token(2203, now - 600, now - 15), 2203));  // within the 30 s leeway
  EXPECT_TRUE(Refused(server_, token(2204, now - 10, now - 10 + 86'401), "lifetime 24 h + 1 s"));
  EXPECT_TRUE(Accepted(server_, token(2205, now - 10, now - 10 + 86'400), 2205));  // exactly 24 h
  EXPECT_TRUE(Refused(server_, token(2206, now + 3600, now + 3700), "iat an hour ahead"));
  EXPECT_TRUE(Refused(server_, token(2207, now + 45, now + 600), "iat beyond the leeway"));
  EXPECT_TRUE(Accepted(server_, token(2208, now + 15, now + 600), 2208));  // within the leeway
  EXPECT_TRUE(Refused(server_, token(2209, now, now), "exp equal to iat"));
}

// FR-9: each required claim (sub, iat, exp, jti) missing or malformed.
TEST_F(AuthTest, RefusesTokensMissingARequiredClaim) {
  const int64_t now = NowS();
  auto claims = [&](uint64_t user) {
    return json{{"sub", std::to_string(user)}, {"iat", now}, {"exp", now + 3600},
                {"jti", UniqueJti("claims")}};
  };
  auto sign = [&](const json& payload) {
    return auth::MintRawToken(secret_, R"({"alg":"HS256","typ":"JWT"})", payload.dump());
  };
  EXPECT_TRUE(Accepted(server_, sign(claims(2301)), 2301));
  uint64_t user = 2302;
  for (const char* missing : {"sub", "iat", "exp", "jti"}) {
    json p = claims(user++);
    p.erase(missing);
    EXPECT_TRUE(Refused(server_, sign(p), (std::string("without ") + missing).c_str()));
  }
  json p = claims(user++);
  p["sub"] = 2310;  // a number, not the decimal string
  EXPECT_TRUE(Refused(server_, sign(p), "numeric sub"));
  p = claims(user++);
  p["sub"] = "0";
  EXPECT_TRUE(Refused(server_, sign(p), "user id 0"));
  p = claims(user++);
  p["jti"] = std::string(65, 'j');
  EXPECT_TRUE(Refused(server_, sign(p), "jti over 64 bytes"));
  p = claims(user++);
  p["exp"] = std::to_string(now + 3600);
  EXPECT_TRUE(Refused(server_, sign(p), "exp as a string"));
}

// Key rotation: kid selects the key; an unknown kid, or a token signed with another key
// than its kid names, is refused.
TEST_F(AuthTest, SelectsTheKeyByKidAndRefusesUnknownKids) {
  const int64_t now = NowS();
  auth::Claims c;
  c.iat = now;
  c.exp = now + 3600;
  auto with = [&](uint64_t user, const std::string& kid, const std::string& secret) {
    c.user_id = user;
    c.kid = kid;
    c.jti = UniqueJti("kid");
    return auth::MintToken(secret, c);
  };
  EXPECT_TRUE(Accepted(server_, with(2401, "k2", k2_secret_), 2401));
  EXPECT_TRUE(Accepted(server_, with(2402, "", secret_), 2402));
  EXPECT_TRUE(Refused(server_, with(2403, "unknown-kid", secret_), "unknown kid"));
  EXPECT_TRUE(Refused(server_, with(2404, "unknown-kid", k2_secret_), "unknown kid, k2's key"));
  EXPECT_TRUE(Refused(server_, with(2405, "k2", secret_), "kid k2, default key"));
  EXPECT_TRUE(Refused(server_, with(2406, "", k2_secret_), "no kid, k2's key"));
}

// FR-11: a token revoked by jti through POST /v1/revoke closes its live session at once;
// the admin API needs the bearer token; other sessions are untouched; the revoked token
// cannot log in again while another token of the same user can.
TEST_F(AuthTest, RevocationByJtiClosesTheLiveSessionAtOnce) {
  const std::string jti = UniqueJti("revoked");
  const std::string token = Valid(3001, jti);
  auto victim = TestClient::Connect(server_);
  ASSERT_TRUE(victim);
  ASSERT_EQ(victim->Hello(token).opcode, Op(wire::Opcode::kWelcome));
  std::vector<v1::Envelope> none;
  victim->CatchUp(&none);
  auto bystander = LoggedIn(server_, 3002);
  ASSERT_TRUE(bystander);

  const std::string body = json{{"jti", jti}}.dump();
  std::string response;
  EXPECT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke", "", body, &response), 401);
  EXPECT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke",
                         server_.admin_token() + "x", body, &response), 401);
  EXPECT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke", "Bearer", body, &response),
            401);
  ExpectPong(*victim, 1);  // nothing was revoked without the admin token

  ASSERT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke", server_.admin_token(), body,
                         &response), 200) << response;
  const int64_t revoked_at = MonoMs();
  // Unprompted: the client sends nothing after the revocation.
  ExpectFatal(*victim, StatusCode::kUnauthenticated);
  EXPECT_LT(MonoMs() - revoked_at, 2'000) << "the session was not closed at once";

  ExpectPong(*bystander, 2);
  EXPECT_TRUE(Refused(server_, token, "revoked jti"));
  EXPECT_TRUE(Accepted(server_, Valid(3001), 3001));
}

// FR-11: revocation of every token of a user issued before a time.
TEST_F(AuthTest, RevocationByUserBeforeTimeClosesTheLiveSession) {
  const int64_t now = NowS();
  auto token = [&](uint64_t user, int64_t iat) {
    return auth::MintRawToken(secret_, R"({"alg":"HS256"})",
                              PayloadJson(user, iat, iat + 3600, UniqueJti("user")));
  };
  const std::string old_token = token(3101, now - 60);
  auto victim = TestClient::Connect(server_);
  ASSERT_TRUE(victim);
  ASSERT_EQ(victim->Hello(old_token).opcode, Op(wire::Opcode::kWelcome));
  std::vector<v1::Envelope> none;
  victim->CatchUp(&none);
  auto other_user = TestClient::Connect(server_);
  ASSERT_EQ(other_user->Hello(token(3102, now - 60)).opcode, Op(wire::Opcode::kWelcome));

  const std::string body = json{{"user", 3101}, {"before_ms", (now - 30) * 1000}}.dump();
  std::string response;
  EXPECT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke", "", body, &response), 401);
  ExpectPong(*victim, 1);
  ASSERT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke", server_.admin_token(), body,
                         &response), 200) << response;
  const int64_t revoked_at = MonoMs();
  ExpectFatal(*victim, StatusCode::kUnauthenticated);
  EXPECT_LT(MonoMs() - revoked_at, 2'000) << "the session was not closed at once";

  ExpectPong(*other_user, 2);  // same iat, another user
  EXPECT_TRUE(Refused(server_, old_token, "issued before the user's revocation time"));
  EXPECT_TRUE(Accepted(server_, token(3101, now - 10), 3101));  // issued after it
}

// FR-11: revocations are durable: after the server is killed (SIGKILL, no shutdown) and
// started again, a revoked jti and a user's older tokens are still refused, and nothing
// else is.
TEST_F(AuthTest, RevocationsSurviveAKillAndRestart) {
  const std::string jti = UniqueJti("durable");
  const std::string revoked_jti_token = Valid(3201, jti);
  const int64_t now = NowS();
  const std::string old_token = auth::MintRawToken(
      secret_, R"({"alg":"HS256"})", PayloadJson(3202, now - 60, now + 3600, UniqueJti("old")));
  EXPECT_TRUE(Accepted(server_, revoked_jti_token, 3201));
  EXPECT_TRUE(Accepted(server_, old_token, 3202));
  std::string response;
  ASSERT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke", server_.admin_token(),
                         json{{"jti", jti}}.dump(), &response), 200) << response;
  ASSERT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke", server_.admin_token(),
                         json{{"user", 3202}, {"before_ms", (now - 30) * 1000}}.dump(),
                         &response), 200) << response;
  // An earlier time for the same user must not shorten the revocation.
  ASSERT_EQ(AdminRequest(server_.admin_port(), "POST", "/v1/revoke", server_.admin_token(),
                         json{{"user", 3202}, {"before_ms", (now - 3600) * 1000}}.dump(),
                         &response), 200) << response;

  server_.KillAndRestart();

  EXPECT_TRUE(Refused(server_, revoked_jti_token, "jti revoked before the restart"));
  EXPECT_TRUE(Refused(server_, old_token, "user revoked before the restart"));
  EXPECT_TRUE(Accepted(server_, Valid(3201), 3201));
  EXPECT_TRUE(Accepted(server_,
                       auth::MintRawToken(secret_, R"({"alg":"HS256"})",
                                          PayloadJson(3202, now - 10, now + 3600, UniqueJti("new"))),
                       3202));
}

// PROTOCOL.md section 2: any frame other than HELLO or PING before HELLO is answered
// UNAUTHENTICATED (fatal), with the frame's request_id when it has one; PING is answered.
TEST_F(AuthTest, FramesOtherThanHelloOrPingBeforeHelloAreFatal) {
  {
    auto c = TestClient::Connect(server_);
    ASSERT_TRUE(c);
    ExpectPong(*c, 77);
    ASSERT_EQ(c->Hello(Valid(3201)).opcode, Op(wire::Opcode::kWelcome));
  }
  {
    auto c = TestClient::Connect(server_);
    c->SendAsync(9, 3201, "too early", NewKey());
    ExpectFatal(*c, StatusCode::kUnauthenticated, 9);
  }
  {
    // SYNC's field 1 is the cursor, not a request id: the error names no request.
    auto c = TestClient::Connect(server_);
    v1::Sync s;
    s.set_cursor(555);
    ASSERT_TRUE(c->conn().SendFrame(Op(wire::Opcode::kSync), s).ok());
    ExpectFatal(*c, StatusCode::kUnauthenticated, 0);
  }
  {
    auto c = TestClient::Connect(server_);
    ASSERT_TRUE(c->SendRaw(RawFrame(0x7e, "x")).ok());
    ExpectFatal(*c, StatusCode::kUnauthenticated, 0);
  }
  {
    auto c = TestClient::Connect(server_);
    v1::DeliverAck a;
    a.set_cursor(1);
    ASSERT_TRUE(c->conn().SendFrame(Op(wire::Opcode::kDeliverAck), a).ok());
    ExpectFatal(*c, StatusCode::kUnauthenticated, 0);
  }
}

// PROTOCOL.md section 6: no common version is UNSUPPORTED_VERSION (fatal); otherwise the
// highest common version is chosen.
TEST_F(AuthTest, NoCommonVersionIsUnsupportedVersion) {
  auto hello = [&](std::vector<uint32_t> versions, uint64_t user, std::unique_ptr<TestClient>* c) {
    *c = TestClient::Connect(server_);
    v1::Hello h;
    for (uint32_t v : versions) h.add_versions(v);
    h.set_token(Valid(user));
    EXPECT_TRUE((*c)->conn().SendFrame(Op(wire::Opcode::kHello), h).ok());
  };
  std::unique_ptr<TestClient> c;
  hello({2}, 3301, &c);
  ExpectFatal(*c, StatusCode::kUnsupportedVersion);
  hello({2, 3, 200}, 3302, &c);
  ExpectFatal(*c, StatusCode::kUnsupportedVersion);
  hello({1, 2}, 3303, &c);
  client::ReceivedFrame f = c->Expect(Op(wire::Opcode::kWelcome));
  v1::Welcome w;
  ASSERT_TRUE(w.ParseFromString(f.payload));
  EXPECT_EQ(w.version(), 1u);
  EXPECT_EQ(w.user_id(), 3303u);
}

// NFR-14: TLS 1.3 only; a TLS 1.2 ClientHello is refused in the handshake.
TEST_F(AuthTest, Tls12IsRefusedAndTls13Connects) {
  const std::string target = "127.0.0.1:" + std::to_string(server_.port());
  std::string out12;
  const int st12 = RunBounded({"openssl", "s_client", "-connect", target, "-tls1_2", "-CAfile",
                               server_.cert_file()}, 15'000, &out12);
  ASSERT_TRUE(WIFEXITED(st12)) << out12;
  EXPECT_NE(WEXITSTATUS(st12), 0) << out12;
  // s_client prints its session either way; no cipher means no handshake.
  EXPECT_NE(out12.find("Cipher is (NONE)"), std::string::npos) << out12;
  EXPECT_EQ(out12.find("New, TLSv1.2"), std::string::npos) << out12;

  std::string out13;
  const int st13 = RunBounded({"openssl", "s_client", "-connect", target, "-tls1_3", "-CAfile",
                               server_.cert_file()}, 15'000, &out13);
  ASSERT_TRUE(WIFEXITED(st13)) << out13;
  EXPECT_EQ(WEXITSTATUS(st13), 0) << out13;
  EXPECT_NE(out13.find("New, TLSv1.3"), std::string::npos) << out13;
  EXPECT_NE(out13.find("Verify return code: 0 (ok)"), std::string::npos) << out13;
}

// PROTOCOL.md section 5: the token is checked on every frame. With no leeway, a token that
// expires during the session closes it: the next frame is answered UNAUTHENTICATED (fatal),
// whatever the frame is, and a silent session is closed without being prompted.
TEST(TokenExpiryTest, TokenExpiringMidSessionClosesTheSession) {
  ServerProcess server({"--jwt-leeway-s", "0"});
  server.Start();
  const int64_t iat = NowS();
  const int64_t exp = iat + 3;
  auth::Claims c;
  c.iat = iat;
  c.exp = exp;
  c.user_id = 4001;
  c.jti = UniqueJti("exp-a");
  auto talker = TestClient::Connect(server);
  ASSERT_EQ(talker->Hello(server.Token(c)).opcode, Op(wire::Opcode::kWelcome));
  c.user_id = 4002;
  c.jti = UniqueJti("exp-b");
  auto silent = TestClient::Connect(server);
  ASSERT_EQ(silent->Hello(server.Token(c)).opcode, Op(wire::Opcode::kWelcome));
  std::vector<v1::Envelope> none;
  talker->CatchUp(&none);
  silent->CatchUp(&none);
  ASSERT_LT(WallMs(), exp * 1000 - 500) << "the machine is too slow for a 3 s token";
  ExpectPong(*talker, 1);

  // Wait for the wall clock to pass exp, blocked in poll() on the talker's socket: nothing
  // may arrive before expiry.
  while (WallMs() < exp * 1000) {
    auto f = talker->Next(static_cast<int>(exp * 1000 - WallMs()) + 1);
    ASSERT_FALSE(f.ok()) << "unexpected " << wire::OpcodeName(f->opcode) << " before expiry";
    ASSERT_EQ(f.status().code(), StatusCode::kOverloaded) << f.status().ToString();
  }
  // The next frame after expiry, even one the server would otherwise skip.
  ASSERT_TRUE(talker->SendRaw(RawFrame(0x7e, "after expiry")).ok());
  ExpectFatal(*talker, StatusCode::kUnauthenticated);

  // The silent session is closed too, within about a second of expiry.
  ExpectFatal(*silent, StatusCode::kUnauthenticated);
  EXPECT_LT(WallMs(), exp * 1000 + 4'000);

  // A fresh token keeps working: the closes were about expiry.
  ExpectServerServes(server, 4010);
}

}  // namespace
}  // namespace iris::testing
