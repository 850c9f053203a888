#include "auth/jwt.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <atomic>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "auth/base64url.h"

namespace iris::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;

constexpr int64_t kNowS = 1'700'000'000;
constexpr int64_t kNowMs = kNowS * 1000;
const std::string kSecret = "default-secret-0123456789-abcdefghij";  // 36 bytes
const std::string kSecret2 = "rotated-secret-ZYXWVUTSRQ-9876543210";
const std::string kUnknownSecret = "attacker-secret-000000000000000000000";
const std::string kHeader = R"({"alg":"HS256","typ":"JWT"})";

Claims ValidClaims() {
  Claims c;
  c.user_id = 42;
  c.iat = kNowS - 10;
  c.exp = kNowS + 3600;
  c.jti = "jti-0001";
  return c;
}

Json ValidPayload() {
  return Json{{"sub", "42"}, {"iat", kNowS - 10}, {"exp", kNowS + 3600}, {"jti", "jti-0001"}};
}

std::string Signed(const Json& payload, const std::string& header = kHeader,
                   const std::string& secret = kSecret) {
  return MintRawToken(secret, header, payload.dump());
}

// Splits a compact token into its three segments.
std::vector<std::string> Segments(const std::string& token) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t dot = token.find('.', start);
    out.push_back(token.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return out;
}

// header_segment "." payload_segment "." base64url(HMAC-SHA256) over the texts as given.
std::string SignSegments(const std::string& secret, const std::string& header_segment,
                         const std::string& payload_segment) {
  const std::string input = header_segment + "." + payload_segment;
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  return input + "." + Base64UrlEncode(std::string_view(reinterpret_cast<char*>(mac), len));
}

class JwtTest : public ::testing::Test {
 protected:
  JwtTest() {
    EXPECT_TRUE(keys_.AddKey("", kSecret).ok());
    EXPECT_TRUE(keys_.AddKey("k2", kSecret2).ok());
  }

  TokenVerifier Verifier(VerifyOptions o = {}) const {
    return TokenVerifier(keys_, revocations_, std::move(o));
  }

  Result<Claims> Verify(const std::string& token, int64_t now_ms = kNowMs,
                        VerifyOptions o = {}) const {
    return Verifier(std::move(o)).Verify(token, now_ms);
  }

  // The token is refused with UNAUTHENTICATED, a message naming `reason`, and no secret
  // material or token text in the message.
  static ::testing::AssertionResult Refused(const Result<Claims>& r, std::string_view reason,
                                            const std::string& token = "") {
    if (r.ok()) return ::testing::AssertionFailure() << "accepted; expected refusal: " << reason;
    const std::string msg = r.status().message();
    if (r.status().code() != StatusCode::kUnauthenticated) {
      return ::testing::AssertionFailure() << "code " << static_cast<int>(r.status().code())
                                           << " instead of UNAUTHENTICATED: " << msg;
    }
    if (msg.find(reason) == std::string::npos) {
      return ::testing::AssertionFailure() << "message \"" << msg << "\" does not name \""
                                           << reason << "\"";
    }
    for (const std::string& secret : {kSecret, kSecret2, kUnknownSecret}) {
      if (msg.find(secret) != std::string::npos) {
        return ::testing::AssertionFailure() << "message leaks a secret: " << msg;
      }
    }
    if (token.size() > 8) {
      for (const std::string& seg : Segments(token)) {
        if (seg.size() > 8 && msg.find(seg) != std::string::npos) {
          return ::testing::AssertionFailure() << "message echoes the token: " << msg;
        }
      }
    }
    return ::testing::AssertionSuccess();
  }

  ::testing::AssertionResult PayloadRefused(const Json& payload, std::string_view reason,
                                            VerifyOptions o = {}) const {
    const std::string token = Signed(payload);
    return Refused(Verify(token, kNowMs, std::move(o)), reason, token);
  }

  Keyring keys_;
  RevocationList revocations_;
};

// --- Acceptance ------------------------------------------------------------------------

TEST_F(JwtTest, AcceptsValidToken) {
  const std::string token = MintToken(kSecret, ValidClaims());
  auto r = Verify(token);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->user_id, 42u);
  EXPECT_EQ(r->iat, kNowS - 10);
  EXPECT_EQ(r->exp, kNowS + 3600);
  EXPECT_EQ(r->jti, "jti-0001");
  EXPECT_EQ(r->kid, "");
  EXPECT_EQ(r->aud, "");
  EXPECT_EQ(r->iss, "");
}

TEST_F(JwtTest, MintTokenWritesTheDocumentedHeader) {
  Claims c = ValidClaims();
  c.kid = "k2";
  const std::vector<std::string> seg = Segments(MintToken(kSecret2, c));
  ASSERT_EQ(seg.size(), 3u);
  Json header = Json::parse(*Base64UrlDecode(seg[0]));
  EXPECT_EQ(header, (Json{{"alg", "HS256"}, {"typ", "JWT"}, {"kid", "k2"}}));
  Json payload = Json::parse(*Base64UrlDecode(seg[1]));
  EXPECT_EQ(payload["sub"], "42");
  EXPECT_FALSE(payload.contains("aud"));
  EXPECT_EQ(Base64UrlDecode(seg[2])->size(), 32u);
}

TEST_F(JwtTest, AcceptsLargestUserId) {
  Json p = ValidPayload();
  p["sub"] = "18446744073709551615";
  auto r = Verify(Signed(p));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->user_id, UINT64_MAX);
}

TEST_F(JwtTest, DevClaimNamesTheDeviceAndIsDeviceOneWhenAbsent) {
  auto r = Verify(Signed(ValidPayload()));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->device, 1u);
  for (int dev : {1, 2, 63}) {
    Json p = ValidPayload();
    p["dev"] = dev;
    r = Verify(Signed(p));
    ASSERT_TRUE(r.ok()) << dev << ": " << r.status().ToString();
    EXPECT_EQ(r->device, static_cast<uint32_t>(dev));
  }
  for (const Json& bad :
       {Json(0), Json(64), Json(-1), Json(2.0), Json("2"), Json(nullptr), Json(UINT64_MAX)}) {
    Json p = ValidPayload();
    p["dev"] = bad;
    EXPECT_TRUE(PayloadRefused(p, "token dev")) << bad.dump();
  }
  // MintToken writes dev only for devices other than 1.
  Claims c = ValidClaims();
  c.device = 5;
  r = Verify(MintToken(kSecret, c));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->device, 5u);
  const std::vector<std::string> seg = Segments(MintToken(kSecret, ValidClaims()));
  EXPECT_FALSE(Json::parse(*Base64UrlDecode(seg[1])).contains("dev"));
}

TEST_F(JwtTest, IgnoresUnknownClaimsAndHeaderFields) {
  Json p = ValidPayload();
  p["scope"] = "chat";
  p["extra"] = Json{{"nested", {1, 2, 3}}};
  auto r = Verify(Signed(p, R"({"alg":"HS256","typ":"JWT","cty":"x"})"));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
}

TEST_F(JwtTest, AcceptsHeaderWithoutTyp) {
  auto r = Verify(Signed(ValidPayload(), R"({"alg":"HS256"})"));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
}

// --- Algorithm -------------------------------------------------------------------------

TEST_F(JwtTest, RefusesAlgNoneWithoutSignature) {
  const std::string token = Base64UrlEncode(R"({"alg":"none","typ":"JWT"})") + "." +
                            Base64UrlEncode(ValidPayload().dump()) + ".";
  EXPECT_TRUE(Refused(Verify(token), "alg not allowed", token));
}

TEST_F(JwtTest, RefusesAlgNoneEvenWithAValidHmac) {
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), R"({"alg":"none"})")), "alg not allowed"));
}

TEST_F(JwtTest, RefusesOtherAlgorithms) {
  for (const char* header :
       {R"({"alg":"HS384"})", R"({"alg":"HS512"})", R"({"alg":"RS256"})", R"({"alg":"ES256"})",
        R"({"alg":"PS256"})", R"({"alg":"hs256"})", R"({"alg":"HS256 "})", R"({"alg":""})",
        R"({"alg":"None"})"}) {
    SCOPED_TRACE(header);
    EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), header)), "alg not allowed"));
  }
}

TEST_F(JwtTest, RefusesNonStringAlg) {
  for (const char* header : {R"({"alg":256})", R"({"alg":null})", R"({"alg":["HS256"]})",
                             R"({"alg":{"name":"HS256"}})", R"({"alg":true})"}) {
    SCOPED_TRACE(header);
    EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), header)), "alg not allowed"));
  }
}

TEST_F(JwtTest, RefusesMissingAlg) {
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), R"({"typ":"JWT"})")), "alg missing"));
}

TEST_F(JwtTest, RefusesDuplicateAlg) {
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), R"({"alg":"none","alg":"HS256"})")),
                "header is not a JSON object"));
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), R"({"alg":"HS256","alg":"HS256"})")),
                "header is not a JSON object"));
}

TEST_F(JwtTest, RefusesCriticalHeader) {
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), R"({"alg":"HS256","crit":["exp"]})")),
                "crit is not supported"));
}

TEST_F(JwtTest, RefusesNonStringTyp) {
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), R"({"alg":"HS256","typ":1})")),
                "typ is not a string"));
}

// --- Keys ------------------------------------------------------------------------------

TEST_F(JwtTest, KidSelectsTheKey) {
  Claims c = ValidClaims();
  c.kid = "k2";
  auto r = Verify(MintToken(kSecret2, c));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kid, "k2");
}

TEST_F(JwtTest, RefusesTokenSignedWithAnotherKidsKey) {
  Claims c = ValidClaims();
  c.kid = "k2";
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c)), "signature invalid"));
  c.kid = "";
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret2, c)), "signature invalid"));
}

TEST_F(JwtTest, RefusesUnknownKid) {
  Claims c = ValidClaims();
  c.kid = "k3";
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c)), "signature invalid"));
}

// Which kids exist is not for clients to learn: a token naming an unknown kid gets exactly
// the answer of a token naming a known kid with a wrong signature.
TEST_F(JwtTest, UnknownKidAndBadSignatureGiveTheSameAnswer) {
  Claims c = ValidClaims();
  c.kid = "k2";  // exists
  const Result<Claims> bad_signature = Verify(MintToken(kUnknownSecret, c));
  c.kid = "k3";  // does not
  const Result<Claims> unknown_kid = Verify(MintToken(kUnknownSecret, c));
  const Result<Claims> unknown_kid_signed = Verify(MintToken(kSecret2, c));
  ASSERT_FALSE(bad_signature.ok());
  ASSERT_FALSE(unknown_kid.ok());
  ASSERT_FALSE(unknown_kid_signed.ok());
  EXPECT_EQ(unknown_kid.status().code(), bad_signature.status().code());
  EXPECT_EQ(unknown_kid.status().message(), bad_signature.status().message());
  EXPECT_EQ(unknown_kid_signed.status().message(), bad_signature.status().message());
  EXPECT_EQ(unknown_kid.status().ToString(), bad_signature.status().ToString());
}

TEST_F(JwtTest, RefusesBadKid) {
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), R"({"alg":"HS256","kid":7})")),
                "kid is not a string"));
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), R"({"alg":"HS256","kid":""})")), "bad kid length"));
  const std::string long_kid = Json{{"alg", "HS256"}, {"kid", std::string(65, 'k')}}.dump();
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), long_kid)), "bad kid length"));
}

TEST_F(JwtTest, RefusesTokenWithoutKidWhenThereIsNoDefaultKey) {
  Keyring only_k2;
  ASSERT_TRUE(only_k2.AddKey("k2", kSecret2).ok());
  TokenVerifier v(only_k2, revocations_, {});
  EXPECT_TRUE(Refused(v.Verify(MintToken(kSecret2, ValidClaims()), kNowMs), "signature invalid"));
}

TEST_F(JwtTest, RefusesUnknownSecret) {
  EXPECT_TRUE(Refused(Verify(MintToken(kUnknownSecret, ValidClaims())), "signature invalid"));
}

// --- Tampering -------------------------------------------------------------------------

TEST_F(JwtTest, RefusesTamperedPayload) {
  std::vector<std::string> seg = Segments(MintToken(kSecret, ValidClaims()));
  Json p = ValidPayload();
  p["sub"] = "43";
  const std::string token = seg[0] + "." + Base64UrlEncode(p.dump()) + "." + seg[2];
  EXPECT_TRUE(Refused(Verify(token), "signature invalid", token));
}

TEST_F(JwtTest, RefusesTamperedHeader) {
  std::vector<std::string> seg = Segments(MintToken(kSecret, ValidClaims()));
  const std::string token = Base64UrlEncode(R"({"alg":"HS256","typ":"JWT","x":1})") + "." +
                            seg[1] + "." + seg[2];
  EXPECT_TRUE(Refused(Verify(token), "signature invalid", token));
}

TEST_F(JwtTest, RefusesEveryFlippedSignatureCharacter) {
  const std::string token = MintToken(kSecret, ValidClaims());
  const size_t sig_start = token.rfind('.') + 1;
  for (size_t i = sig_start; i < token.size(); ++i) {
    std::string t = token;
    t[i] = t[i] == 'A' ? 'B' : 'A';
    auto r = Verify(t);
    ASSERT_FALSE(r.ok()) << "position " << i;
    EXPECT_EQ(r.status().code(), StatusCode::kUnauthenticated);
  }
}

TEST_F(JwtTest, RefusesTruncatedAndExtendedSignature) {
  const std::string token = MintToken(kSecret, ValidClaims());
  EXPECT_TRUE(Refused(Verify(token.substr(0, token.size() - 4)), "signature invalid"));
  EXPECT_TRUE(Refused(Verify(token + "AAAA"), "signature invalid"));
}

TEST_F(JwtTest, RefusesNonCanonicalSignatureEncoding) {
  // 32 bytes encode to 43 characters with 2 unused bits; setting them changes the text but
  // not the bytes, and must be refused.
  const std::string token = MintToken(kSecret, ValidClaims());
  std::string t = token;
  const char last = t.back();
  const std::string alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const size_t v = alphabet.find(last);
  ASSERT_EQ(v & 3, 0u);
  t.back() = alphabet[v | 1];
  EXPECT_TRUE(Refused(Verify(t), "signature invalid"));
}

// --- Shape -----------------------------------------------------------------------------

TEST_F(JwtTest, RefusesEmptyToken) { EXPECT_TRUE(Refused(Verify(""), "token missing")); }

TEST_F(JwtTest, RefusesWrongSegmentCount) {
  const std::string token = MintToken(kSecret, ValidClaims());
  std::vector<std::string> seg = Segments(token);
  EXPECT_TRUE(Refused(Verify(seg[0] + "." + seg[1]), "not three segments"));
  EXPECT_TRUE(Refused(Verify(token + "." + seg[2]), "not three segments"));
  EXPECT_TRUE(Refused(Verify(seg[0]), "not three segments"));
  EXPECT_TRUE(Refused(Verify(".."), "empty segment"));
  EXPECT_TRUE(Refused(Verify("." + seg[1] + "." + seg[2]), "empty segment"));
}

TEST_F(JwtTest, RefusesOverlongToken) {
  Json p = ValidPayload();
  p["pad"] = std::string(kMaxTokenBytes, 'p');
  EXPECT_TRUE(Refused(Verify(Signed(p)), "token too long"));
}

TEST_F(JwtTest, AcceptsTokenJustUnderTheLengthLimit) {
  Json p = ValidPayload();
  p["pad"] = "";
  const size_t base = Signed(p).size();
  // Every 3 payload bytes add 4 token characters.
  p["pad"] = std::string((kMaxTokenBytes - base) / 4 * 3, 'p');
  const std::string token = Signed(p);
  ASSERT_LE(token.size(), kMaxTokenBytes);
  ASSERT_GT(token.size(), kMaxTokenBytes - 8);
  EXPECT_TRUE(Verify(token).ok());
}

TEST_F(JwtTest, RefusesPaddedOrStandardBase64Segments) {
  const std::string token = MintToken(kSecret, ValidClaims());
  std::vector<std::string> seg = Segments(token);
  EXPECT_TRUE(Refused(Verify(seg[0] + "=." + seg[1] + "." + seg[2]), "header is not base64url"));
  EXPECT_TRUE(Refused(Verify(seg[0] + "." + seg[1] + "." + seg[2] + "="), "signature invalid"));
  // A payload segment with a character outside the URL alphabet: refused (at the signature,
  // which covers the segment text, or at decoding).
  std::string bad_payload = seg[1];
  bad_payload[0] = '+';
  auto r = Verify(seg[0] + "." + bad_payload + "." + seg[2]);
  EXPECT_EQ(r.status().code(), StatusCode::kUnauthenticated);
  // Correctly signed over payload text that is not strict base64url: the signature
  // passes, the decoding does not.
  for (const char* bad : {"e30=", "e30+", "e3 0", "e"}) {
    SCOPED_TRACE(bad);
    const std::string t = SignSegments(kSecret, Base64UrlEncode(kHeader), bad);
    EXPECT_TRUE(Refused(Verify(t), "payload is not base64url"));
  }
}

TEST_F(JwtTest, RefusesHeaderThatIsNotAJsonObject) {
  for (const char* header : {"not json", "[\"HS256\"]", "\"HS256\"", "{\"alg\":\"HS256\"", "",
                             "{\"alg\":\"HS256\"} x", "{'alg':'HS256'}"}) {
    SCOPED_TRACE(header);
    auto r = Verify(Signed(ValidPayload(), header));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnauthenticated);
  }
  EXPECT_TRUE(Refused(Verify(Signed(ValidPayload(), "[1]")), "header is not a JSON object"));
}

TEST_F(JwtTest, RefusesPayloadThatIsNotAJsonObject) {
  for (const char* payload : {"[]", "42", "\"sub\"", "{", "{\"sub\":\"42\"}}", "null"}) {
    SCOPED_TRACE(payload);
    EXPECT_TRUE(Refused(Verify(MintRawToken(kSecret, kHeader, payload)),
                  "payload is not a JSON object"));
  }
}

TEST_F(JwtTest, RefusesPayloadWithInvalidUtf8) {
  EXPECT_TRUE(Refused(Verify(MintRawToken(kSecret, kHeader,
                                    R"({"sub":"42","iat":1,"exp":2,"jti":"a)"
                                    "\xC3\x28"
                                    R"("})")),
                "payload is not a JSON object"));
}

TEST_F(JwtTest, RefusesDuplicateClaims) {
  const std::string p = R"({"sub":"42","sub":"1","iat":)" + std::to_string(kNowS) +
                        R"(,"exp":)" + std::to_string(kNowS + 60) + R"(,"jti":"a"})";
  EXPECT_TRUE(Refused(Verify(MintRawToken(kSecret, kHeader, p)), "payload is not a JSON object"));
}

TEST_F(JwtTest, RefusesDeeplyNestedPayload) {
  Json p = ValidPayload();
  std::string nested = "1";
  for (int i = 0; i < 40; ++i) nested = "[" + nested + "]";
  std::string text = p.dump();
  text.insert(1, "\"deep\":" + nested + ",");
  EXPECT_TRUE(Refused(Verify(MintRawToken(kSecret, kHeader, text)), "payload is not a JSON object"));
}

// --- Claims ----------------------------------------------------------------------------

TEST_F(JwtTest, RefusesEachMissingRequiredClaim) {
  for (const char* claim : {"sub", "iat", "exp", "jti"}) {
    SCOPED_TRACE(claim);
    Json p = ValidPayload();
    p.erase(claim);
    EXPECT_TRUE(PayloadRefused(p, std::string("token ") + claim + " missing"));
  }
}

TEST_F(JwtTest, RefusesMalformedSubject) {
  for (const char* sub : {"+42", "-42", " 42", "42 ", "042", "0", "00", "", "4a2", "1e3", "0x2a",
                          "18446744073709551616", "99999999999999999999",
                          "123456789012345678901", "42\n"}) {
    SCOPED_TRACE(sub);
    Json p = ValidPayload();
    p["sub"] = sub;
    EXPECT_TRUE(PayloadRefused(p, "sub is not a decimal non-zero user id"));
  }
}

TEST_F(JwtTest, RefusesSubjectThatIsNotAString) {
  for (const Json& sub : {Json(42), Json(42.0), Json(nullptr), Json::array({"42"}), Json(true)}) {
    SCOPED_TRACE(sub.dump());
    Json p = ValidPayload();
    p["sub"] = sub;
    EXPECT_TRUE(PayloadRefused(p, "sub is not a decimal non-zero user id"));
  }
}

TEST_F(JwtTest, RefusesNonIntegerTimes) {
  for (const char* claim : {"iat", "exp"}) {
    for (const Json& v : {Json(static_cast<double>(kNowS)), Json(std::to_string(kNowS)),
                          Json(-1), Json(kMaxTimestampS + 1), Json(nullptr), Json(true),
                          Json(UINT64_MAX), Json::array({kNowS})}) {
      SCOPED_TRACE(std::string(claim) + "=" + v.dump());
      Json p = ValidPayload();
      p[claim] = v;
      EXPECT_TRUE(PayloadRefused(p, std::string("token ") + claim + " is not an integer timestamp"));
    }
  }
}

TEST_F(JwtTest, RefusesFloatTimeWrittenAsExponent) {
  const std::string p = R"({"sub":"42","iat":1.7e9,"exp":)" + std::to_string(kNowS + 60) +
                        R"(,"jti":"a"})";
  EXPECT_TRUE(Refused(Verify(MintRawToken(kSecret, kHeader, p)), "iat is not an integer timestamp"));
}

TEST_F(JwtTest, JtiLengthBounds) {
  Json p = ValidPayload();
  p["jti"] = std::string(kMaxJtiBytes, 'j');
  EXPECT_TRUE(Verify(Signed(p)).ok());
  p["jti"] = std::string(kMaxJtiBytes + 1, 'j');
  EXPECT_TRUE(PayloadRefused(p, "jti has a bad length"));
  p["jti"] = "";
  EXPECT_TRUE(PayloadRefused(p, "jti has a bad length"));
  p["jti"] = 17;
  EXPECT_TRUE(PayloadRefused(p, "jti is not a string"));
}

// --- Time ------------------------------------------------------------------------------

TEST_F(JwtTest, ExpiryHonoursLeewayToTheMillisecond) {
  const Claims c = ValidClaims();
  const std::string token = MintToken(kSecret, c);
  const int64_t limit_ms = (c.exp + 30) * 1000;
  EXPECT_TRUE(Verify(token, limit_ms - 1).ok());
  EXPECT_TRUE(Refused(Verify(token, limit_ms), "token expired", token));
  EXPECT_TRUE(Refused(Verify(token, limit_ms + 86'400'000), "token expired", token));
}

TEST_F(JwtTest, ExpiredWithoutLeeway) {
  const Claims c = ValidClaims();
  const std::string token = MintToken(kSecret, c);
  VerifyOptions o;
  o.leeway_s = 0;
  EXPECT_TRUE(Verify(token, c.exp * 1000 - 1, o).ok());
  EXPECT_TRUE(Refused(Verify(token, c.exp * 1000, o), "token expired"));
}

TEST_F(JwtTest, IssuedInTheFutureHonoursLeeway) {
  Claims c = ValidClaims();
  c.iat = kNowS + 30;  // exactly the leeway ahead: accepted
  c.exp = c.iat + 3600;
  EXPECT_TRUE(Verify(MintToken(kSecret, c), kNowMs).ok());
  c.iat = kNowS + 31;
  c.exp = c.iat + 3600;
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c), kNowMs), "issued in the future"));
  // Same token, one millisecond later than the edge: accepted.
  EXPECT_TRUE(Verify(MintToken(kSecret, c), kNowMs + 1000).ok());
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c), kNowMs + 999), "issued in the future"));
}

TEST_F(JwtTest, LifetimeOfAtMost24Hours) {
  Claims c = ValidClaims();
  c.iat = kNowS - 10;
  c.exp = c.iat + 86'400;
  EXPECT_TRUE(Verify(MintToken(kSecret, c)).ok());
  c.exp = c.iat + 86'401;
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c)), "lifetime exceeds"));
  c.exp = c.iat + 10 * 86'400;
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c)), "lifetime exceeds"));
}

TEST_F(JwtTest, ConfigurableMaximumLifetime) {
  Claims c = ValidClaims();
  c.exp = c.iat + 3601;
  VerifyOptions o;
  o.max_lifetime_s = 3600;
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c), kNowMs, o), "lifetime exceeds"));
  c.exp = c.iat + 3600;
  EXPECT_TRUE(Verify(MintToken(kSecret, c), kNowMs, o).ok());
}

TEST_F(JwtTest, RefusesExpNotAfterIat) {
  Claims c = ValidClaims();
  c.exp = c.iat;
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c)), "exp is not after iat"));
  c.exp = c.iat - 100;
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c)), "exp is not after iat"));
}

TEST_F(JwtTest, HonoursNotBefore) {
  Json p = ValidPayload();
  p["nbf"] = kNowS + 30;
  EXPECT_TRUE(Verify(Signed(p)).ok());
  p["nbf"] = kNowS + 31;
  EXPECT_TRUE(PayloadRefused(p, "not yet valid"));
  p["nbf"] = "soon";
  EXPECT_TRUE(PayloadRefused(p, "nbf is not an integer timestamp"));
}

// --- Audience and issuer ---------------------------------------------------------------

TEST_F(JwtTest, AudienceCheckedOnlyWhenConfigured) {
  VerifyOptions o;
  o.audience = "iris";
  Json p = ValidPayload();
  p["aud"] = "iris";
  auto r = Verify(Signed(p), kNowMs, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->aud, "iris");

  p["aud"] = Json::array({"other", "iris"});
  r = Verify(Signed(p), kNowMs, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->aud, "iris");

  p["aud"] = "other";
  EXPECT_TRUE(PayloadRefused(p, "audience does not match", o));
  p["aud"] = Json::array({"other", "Iris"});
  EXPECT_TRUE(PayloadRefused(p, "audience does not match", o));
  p["aud"] = Json::array();
  EXPECT_TRUE(PayloadRefused(p, "audience does not match", o));
  p.erase("aud");
  EXPECT_TRUE(PayloadRefused(p, "aud missing", o));

  // Not configured: any well-formed aud (or none) is accepted.
  p["aud"] = "other";
  r = Verify(Signed(p));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->aud, "other");
}

TEST_F(JwtTest, RefusesMalformedAudience) {
  Json p = ValidPayload();
  p["aud"] = 5;
  EXPECT_TRUE(PayloadRefused(p, "aud is not a string or an array of strings"));
  p["aud"] = Json::array({"iris", 5});
  EXPECT_TRUE(PayloadRefused(p, "aud is not a string or an array of strings"));
}

TEST_F(JwtTest, IssuerCheckedOnlyWhenConfigured) {
  VerifyOptions o;
  o.issuer = "https://id.example";
  Json p = ValidPayload();
  p["iss"] = "https://id.example";
  auto r = Verify(Signed(p), kNowMs, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->iss, "https://id.example");
  p["iss"] = "https://evil.example";
  EXPECT_TRUE(PayloadRefused(p, "issuer does not match", o));
  EXPECT_TRUE(Verify(Signed(p)).ok());  // not configured
  p["iss"] = 3;
  EXPECT_TRUE(PayloadRefused(p, "iss is not a string"));
  p.erase("iss");
  EXPECT_TRUE(PayloadRefused(p, "iss missing", o));
}

TEST_F(JwtTest, MintTokenCarriesAudienceAndIssuer) {
  Claims c = ValidClaims();
  c.aud = "iris";
  c.iss = "idp";
  VerifyOptions o;
  o.audience = "iris";
  o.issuer = "idp";
  auto r = Verify(MintToken(kSecret, c), kNowMs, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->aud, "iris");
  EXPECT_EQ(r->iss, "idp");
}

// --- Revocation ------------------------------------------------------------------------

TEST_F(JwtTest, RefusesRevokedJti) {
  const std::string token = MintToken(kSecret, ValidClaims());
  ASSERT_TRUE(Verify(token).ok());
  revocations_.RevokeJti("jti-0001", kNowMs + kJtiRetentionMs);
  EXPECT_TRUE(Refused(Verify(token), "token revoked", token));
  Claims other = ValidClaims();
  other.jti = "jti-0002";
  EXPECT_TRUE(Verify(MintToken(kSecret, other)).ok());
}

TEST_F(JwtTest, RefusesTokenIssuedBeforeUserRevocation) {
  const Claims c = ValidClaims();  // iat = kNowS - 10
  revocations_.RevokeUserBefore(42, c.iat * 1000 + 1);
  EXPECT_TRUE(Refused(Verify(MintToken(kSecret, c)), "token revoked"));

  Claims later = c;
  later.iat = c.iat + 1;  // issued after the cut-off (iat * 1000 >= before)
  later.jti = "jti-0002";
  EXPECT_TRUE(Verify(MintToken(kSecret, later)).ok());

  Claims other_user = c;
  other_user.user_id = 43;
  EXPECT_TRUE(Verify(MintToken(kSecret, other_user)).ok());
}

TEST_F(JwtTest, TokenIssuedExactlyAtRevocationTimeIsKept) {
  const Claims c = ValidClaims();
  revocations_.RevokeUserBefore(42, c.iat * 1000);
  EXPECT_TRUE(Verify(MintToken(kSecret, c)).ok());
}

// --- Recheck ---------------------------------------------------------------------------

TEST_F(JwtTest, RecheckPassesForALiveToken) {
  auto r = Verify(MintToken(kSecret, ValidClaims()));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(Verifier().Recheck(*r, kNowMs + 1000).ok());
}

TEST_F(JwtTest, RecheckRefusesAtExpiryPlusLeeway) {
  auto r = Verify(MintToken(kSecret, ValidClaims()));
  ASSERT_TRUE(r.ok());
  const TokenVerifier v = Verifier();
  const int64_t limit_ms = (r->exp + 30) * 1000;
  EXPECT_TRUE(v.Recheck(*r, limit_ms - 1).ok());
  Status s = v.Recheck(*r, limit_ms);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("token expired"));
}

TEST_F(JwtTest, RecheckSeesRevocationsMadeAfterVerify) {
  auto r = Verify(MintToken(kSecret, ValidClaims()));
  ASSERT_TRUE(r.ok());
  const TokenVerifier v = Verifier();
  const uint64_t g = revocations_.generation();
  revocations_.RevokeUserBefore(42, kNowMs);
  EXPECT_NE(revocations_.generation(), g);
  Status s = v.Recheck(*r, kNowMs + 1);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("token revoked"));
}

TEST_F(JwtTest, RecheckSeesJtiRevocation) {
  auto r = Verify(MintToken(kSecret, ValidClaims()));
  ASSERT_TRUE(r.ok());
  revocations_.RevokeJti(r->jti, kNowMs + kJtiRetentionMs);
  EXPECT_EQ(Verifier().Recheck(*r, kNowMs).code(), StatusCode::kUnauthenticated);
}

// --- Misc ------------------------------------------------------------------------------

TEST_F(JwtTest, NegativeLeewayIsClampedToZero) {
  VerifyOptions o;
  o.leeway_s = -100;
  const TokenVerifier v = Verifier(o);
  EXPECT_EQ(v.options().leeway_s, 0);
  const Claims c = ValidClaims();
  EXPECT_TRUE(v.Verify(MintToken(kSecret, c), c.exp * 1000 - 1).ok());
}

TEST_F(JwtTest, UnverifiedSubjectReadsSubWithoutChecking) {
  EXPECT_EQ(UnverifiedSubject(MintToken(kUnknownSecret, ValidClaims())), 42u);
  Json p = ValidPayload();
  p["sub"] = "+42";
  EXPECT_EQ(UnverifiedSubject(Signed(p)), std::nullopt);
  EXPECT_EQ(UnverifiedSubject("garbage"), std::nullopt);
  EXPECT_EQ(UnverifiedSubject(""), std::nullopt);
}

TEST_F(JwtTest, VerifierIsUsableFromManyThreadsAtOnce) {
  // Const methods only; run under TSan in CI to check for races.
  const TokenVerifier v = Verifier();
  const std::string token = MintToken(kSecret, ValidClaims());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        if (v.Verify(token, kNowMs).ok()) ok.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 800);
}

}  // namespace
}  // namespace iris::auth
