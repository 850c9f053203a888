#pragma once
// JWT verification for client sessions (PROTOCOL.md section 5; RFC-001 FR-9, FR-10, FR-11,
// NFR-16): HS256 compact JWS tokens carrying sub, iat, exp and jti, checked in full on
// HELLO (Verify) and cheaply on every later frame (Recheck).
//
// What Verify accepts, in the order it checks (the first failure is the answer, always
// UNAUTHENTICATED with a fixed message that never contains key material or token text):
//   1. at most kMaxTokenBytes bytes, exactly three '.'-separated segments, each strict
//      unpadded base64url (auth/base64url.h);
//   2. header: a JSON object without duplicate keys; "alg" exactly the string "HS256"
//      (none, HS384, RS256, a missing or non-string alg are refused); no "crit"; "typ", if
//      present, a string; "kid", if present, a non-empty string of at most kMaxKidBytes;
//      without "kid" the default key ("") is used;
//   3. signature: the kid names a key in the Keyring, and the signature is 32 bytes equal
//      (CRYPTO_memcmp) to HMAC-SHA256(key, "header.payload") computed over the segments
//      exactly as received; nothing in the payload is looked at before this check passes.
//      An unknown kid gets the same message ("token signature invalid") after the same
//      HMAC work as a bad signature, so a client cannot learn which kids exist;
//   4. payload: a JSON object without duplicate keys, with
//        sub  a string, the decimal form of a non-zero uint64 without sign, spaces or
//             leading zeros (a JSON number is refused);
//        iat, exp  JSON integers (not 1.0 or "1") in [0, kMaxTimestampS] seconds;
//        jti  a string of 1..kMaxJtiBytes bytes;
//        nbf  optional, like iat;
//        aud  optional, a string or an array of strings; iss optional, a string;
//        dev  optional, the device (docs/protocol.md appendix 20): a JSON integer 1..63
//             (absent = 1, the primary device);
//   5. time (leeway L = VerifyOptions::leeway_s): refused when now >= exp + L (expired),
//      when iat - L > now (issued in the future), when nbf - L > now, when exp <= iat, and
//      when exp - iat > max_lifetime_s (24 h);
//   6. aud must contain VerifyOptions::audience and iss must equal VerifyOptions::issuer,
//      each only when configured (non-empty); when configured, a missing claim is refused;
//   7. revocation: the jti is revoked, or iat * 1000 < the user's revocation time.
//
// Thread-safety: TokenVerifier is immutable after construction; Verify and Recheck may run
// concurrently from any thread. The Keyring must not change while a verifier uses it, and
// both the Keyring and the RevocationList must outlive the verifier.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "auth/keyring.h"
#include "auth/revocation.h"
#include "common/status.h"

namespace iris::auth {

inline constexpr size_t kMaxTokenBytes = 4096;
inline constexpr size_t kMaxJtiBytes = 64;
inline constexpr uint64_t kMaxDeviceClaim = 63;  // common/devices.h kMaxDeviceId
// 9999-12-31T23:59:59Z: the largest iat/exp/nbf accepted (keeps seconds * 1000 far from
// overflow).
inline constexpr int64_t kMaxTimestampS = 253'402'300'799;

struct Claims {
  uint64_t user_id = 0;  // sub
  int64_t iat = 0;       // seconds since the epoch
  int64_t exp = 0;       // seconds since the epoch
  std::string jti;
  std::string kid;  // the key id the token was verified with; "" = the default key
  std::string aud;  // the configured audience when checked; else the aud string (or the
                    // first element of an aud array), "" when absent
  std::string iss;  // "" when absent
  uint32_t device = 1;  // dev; 1 (the primary device) when absent
};

struct VerifyOptions {
  int64_t leeway_s = 30;           // clock leeway for exp, iat and nbf; clamped to [0, 1 day]
  int64_t max_lifetime_s = 86400;  // exp - iat above this is refused
  std::string audience;            // empty = aud not checked
  std::string issuer;              // empty = iss not checked
};

class TokenVerifier {
 public:
  // `keys` and `revocations` must outlive the verifier.
  TokenVerifier(const Keyring& keys, const RevocationList& revocations, VerifyOptions opts);

  // Full check of `token` at wall time `now_ms` (unix ms): the claims, or UNAUTHENTICATED
  // with the reason (see the list at the top of this file).
  Result<Claims> Verify(std::string_view token, int64_t now_ms) const;

  // The per-frame check of claims that Verify accepted: expiry (with leeway) and
  // revocation only; no parsing, no crypto. OK or UNAUTHENTICATED.
  Status Recheck(const Claims& c, int64_t now_ms) const;

  const VerifyOptions& options() const { return opts_; }

 private:
  const Keyring& keys_;
  const RevocationList& revocations_;
  VerifyOptions opts_;
};

// For tools and tests: an HS256 token for `claims`, with header {"alg":"HS256","typ":"JWT"}
// plus "kid" when claims.kid is non-empty; aud and iss are included when non-empty.
std::string MintToken(std::string_view secret, const Claims& claims);

// For tests and fuzzing: a compact JWS whose header and payload segments are the base64url
// of the given bytes verbatim (not necessarily JSON), signed with HMAC-SHA256 under `secret`.
std::string MintRawToken(std::string_view secret, std::string_view header_json,
                         std::string_view payload_json);

// The user id named by a token's sub claim WITHOUT verifying anything else, or nullopt.
// Only for accounting failed logins per account (PROTOCOL.md section 8); never for
// authorisation.
std::optional<uint64_t> UnverifiedSubject(std::string_view token);

}  // namespace iris::auth
