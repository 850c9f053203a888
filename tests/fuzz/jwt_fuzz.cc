// libFuzzer target for the JWT verifier (auth/jwt.h); CMake lines in tests/fuzz/jwt.cmake.
//
// The first input byte picks what the rest is, so that the fuzzer reaches past the
// signature check as well as attacking it:
//   byte % 3 == 0: the rest is a token, verified as received;
//   byte % 3 == 1: the rest is a payload, signed under the default key with a valid header;
//   byte % 3 == 2: the rest is "header\npayload", signed under the key the header's kid
//                  names when that kid is "k2", else under the default key.
// Beyond "no crash, no sanitizer report", it checks what an accepted token guarantees.
// Seeds: tests/fuzz/corpus/jwt/ (printable: '0', '1' or '2' followed by the input).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "auth/jwt.h"

namespace {

using iris::auth::Claims;
using iris::auth::Keyring;
using iris::auth::RevocationList;
using iris::auth::TokenVerifier;

constexpr int64_t kNowMs = 1'700'000'000'000;
const char kDefaultSecret[] = "fuzz-default-secret-0123456789abcdef";
const char kSecondSecret[] = "fuzz-second-secret-fedcba9876543210";

struct World {
  Keyring keys;
  RevocationList revocations;
  TokenVerifier* verifier = nullptr;

  World() {
    if (!keys.AddKey("", kDefaultSecret).ok() || !keys.AddKey("k2", kSecondSecret).ok()) {
      std::abort();
    }
    revocations.RevokeJti("revoked", kNowMs + iris::auth::kJtiRetentionMs);
    revocations.RevokeUserBefore(13, kNowMs);
    verifier = new TokenVerifier(keys, revocations, iris::auth::VerifyOptions{});
  }
};

World& TheWorld() {
  static World* w = new World();
  return *w;
}

void Check(bool cond) {
  if (!cond) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  World& w = TheWorld();
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);

  std::string token;
  switch (data[0] % 3) {
    case 0:
      token.assign(rest);
      break;
    case 1:
      token = iris::auth::MintRawToken(kDefaultSecret, R"({"alg":"HS256","typ":"JWT"})", rest);
      break;
    default: {
      const size_t nl = rest.find('\n');
      const std::string_view header = rest.substr(0, nl);
      const std::string_view payload = nl == std::string_view::npos ? "" : rest.substr(nl + 1);
      const bool second = header.find("\"k2\"") != std::string_view::npos;
      token = iris::auth::MintRawToken(second ? kSecondSecret : kDefaultSecret, header, payload);
      break;
    }
  }

  (void)iris::auth::UnverifiedSubject(token);
  iris::Result<Claims> r = w.verifier->Verify(token, kNowMs);
  if (!r.ok()) {
    Check(r.status().code() == iris::StatusCode::kUnauthenticated);
    Check(r.status().message().find(kDefaultSecret) == std::string::npos);
    Check(r.status().message().find(kSecondSecret) == std::string::npos);
    return 0;
  }

  // What acceptance guarantees.
  const Claims& c = *r;
  Check(token.size() <= iris::auth::kMaxTokenBytes);
  Check(c.user_id != 0);
  Check(c.exp > c.iat && c.exp - c.iat <= 86'400);
  Check(kNowMs < (c.exp + 30) * 1000);
  Check((c.iat - 30) * 1000 <= kNowMs);
  Check(!c.jti.empty() && c.jti.size() <= iris::auth::kMaxJtiBytes);
  Check(c.jti != "revoked");
  Check(c.user_id != 13 || c.iat * 1000 >= kNowMs);
  Check(c.kid.empty() || c.kid == "k2");
  Check(w.verifier->Recheck(c, kNowMs).ok());
  Check(iris::auth::UnverifiedSubject(token) == c.user_id);

  // Re-minting the accepted claims gives a token that verifies to the same claims.
  const std::string again = iris::auth::MintToken(
      c.kid.empty() ? std::string_view(kDefaultSecret) : std::string_view(kSecondSecret), c);
  iris::Result<Claims> r2 = w.verifier->Verify(again, kNowMs);
  if (again.size() <= iris::auth::kMaxTokenBytes) {
    Check(r2.ok());
    Check(r2->user_id == c.user_id && r2->iat == c.iat && r2->exp == c.exp &&
          r2->jti == c.jti && r2->kid == c.kid);
  }
  return 0;
}
