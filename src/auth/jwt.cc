#include "auth/jwt.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <exception>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "auth/base64url.h"

namespace iris::auth {
namespace {

using Json = nlohmann::json;

constexpr size_t kSha256Bytes = 32;
// Deeper JSON nesting than this is refused (claims are flat; this only bounds work).
constexpr int kMaxJsonDepth = 16;

// HMAC-SHA256 of `data` under `key`; false only on an OpenSSL failure.
bool HmacSha256(std::string_view key, std::string_view data,
                std::array<unsigned char, kSha256Bytes>* out) {
  unsigned int len = 0;
  const unsigned char* r =
      HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), out->data(), &len);
  return r != nullptr && len == kSha256Bytes;
}

// Parses `text` as a JSON object with no duplicate key in any object and nesting of at
// most kMaxJsonDepth. nullopt on anything else. Never throws.
std::optional<Json> ParseObject(std::string_view text) {
  try {
    std::vector<std::unordered_set<std::string>> keys;  // one set per open object
    bool bad = false;
    Json::parser_callback_t cb = [&](int depth, Json::parse_event_t event, Json& parsed) {
      if (depth > kMaxJsonDepth) bad = true;
      switch (event) {
        case Json::parse_event_t::object_start:
          keys.emplace_back();
          break;
        case Json::parse_event_t::object_end:
          if (!keys.empty()) keys.pop_back();
          break;
        case Json::parse_event_t::key:
          if (keys.empty() || !parsed.is_string() ||
              !keys.back().insert(parsed.get_ref<const std::string&>()).second) {
            bad = true;
          }
          break;
        default:
          break;
      }
      return true;
    };
    Json j = Json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false,
                         /*ignore_comments=*/false);
    if (bad || j.is_discarded() || !j.is_object()) return std::nullopt;
    return j;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Strict decimal non-zero uint64: digits only, no leading zero, no overflow.
std::optional<uint64_t> ParseUserId(std::string_view s) {
  if (s.empty() || s.size() > 20 || s[0] == '0') return std::nullopt;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v == 0) return std::nullopt;
  return v;
}

std::optional<uint64_t> SubjectOf(const Json& payload) {
  auto it = payload.find("sub");
  if (it == payload.end() || !it->is_string()) return std::nullopt;
  return ParseUserId(it->get_ref<const std::string&>());
}

enum class TimeClaim { kOk, kMissing, kInvalid };

// A JSON integer in [0, kMaxTimestampS].
TimeClaim ReadTime(const Json& payload, const char* name, int64_t* out) {
  auto it = payload.find(name);
  if (it == payload.end()) return TimeClaim::kMissing;
  if (it->is_number_unsigned()) {
    const uint64_t v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(kMaxTimestampS)) return TimeClaim::kInvalid;
    *out = static_cast<int64_t>(v);
    return TimeClaim::kOk;
  }
  if (it->is_number_integer()) {
    const int64_t v = it->get<int64_t>();
    if (v < 0 || v > kMaxTimestampS) return TimeClaim::kInvalid;
    *out = v;
    return TimeClaim::kOk;
  }
  return TimeClaim::kInvalid;
}

Status Refuse(std::string_view reason) { return Unauthenticated(std::string(reason)); }

// The one answer for a signature that does not verify, whatever the reason: wrong key,
// tampered token, or a kid that names no key (which must not be told apart from the rest).
constexpr std::string_view kBadSignature = "token signature invalid";

// The HMAC key used when a token's kid names no key: random, made once per process, never
// handed out, so no token verifies under it (the comparison is also forced to fail).
std::string_view UnknownKidKey() {
  static const std::string key = [] {
    std::string k(kMinSecretBytes, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(k.data()), static_cast<int>(k.size())) != 1) {
      k.assign(kMinSecretBytes, '\x5c');  // still never accepted: see the caller
    }
    return k;
  }();
  return key;
}

struct Segments {
  std::string_view header, payload, signature, signing_input;
};

std::optional<Segments> Split(std::string_view token) {
  const size_t d1 = token.find('.');
  if (d1 == std::string_view::npos) return std::nullopt;
  const size_t d2 = token.find('.', d1 + 1);
  if (d2 == std::string_view::npos) return std::nullopt;
  if (token.find('.', d2 + 1) != std::string_view::npos) return std::nullopt;
  Segments s;
  s.header = token.substr(0, d1);
  s.payload = token.substr(d1 + 1, d2 - d1 - 1);
  s.signature = token.substr(d2 + 1);
  s.signing_input = token.substr(0, d2);
  return s;
}

Result<Claims> VerifyImpl(const Keyring& keys, const RevocationList& revocations,
                          const VerifyOptions& opts, std::string_view token, int64_t now_ms) {
  // 1. Shape.
  if (token.empty()) return Refuse("token missing");
  if (token.size() > kMaxTokenBytes) return Refuse("token too long");
  std::optional<Segments> seg = Split(token);
  if (!seg) return Refuse("token malformed: not three segments");
  // An empty signature (as "alg":"none" tokens have) is refused at the signature check,
  // after the header, so that the reason names the algorithm.
  if (seg->header.empty() || seg->payload.empty()) return Refuse("token malformed: empty segment");

  // 2. Header.
  std::optional<std::string> header_text = Base64UrlDecode(seg->header);
  if (!header_text) return Refuse("token malformed: header is not base64url");
  std::optional<Json> header = ParseObject(*header_text);
  if (!header) return Refuse("token malformed: header is not a JSON object");
  auto alg = header->find("alg");
  if (alg == header->end()) return Refuse("token alg missing");
  if (!alg->is_string() || alg->get_ref<const std::string&>() != "HS256") {
    return Refuse("token alg not allowed: only HS256 is accepted");
  }
  if (header->contains("crit")) return Refuse("token header crit is not supported");
  if (auto typ = header->find("typ"); typ != header->end() && !typ->is_string()) {
    return Refuse("token malformed: typ is not a string");
  }
  Claims claims;
  if (auto kid = header->find("kid"); kid != header->end()) {
    if (!kid->is_string()) return Refuse("token malformed: kid is not a string");
    const std::string& k = kid->get_ref<const std::string&>();
    if (k.empty() || k.size() > kMaxKidBytes) return Refuse("token malformed: bad kid length");
    claims.kid = k;
  }
  // 3. Signature, before anything in the payload is read. A kid that names no key is
  // answered exactly like a bad signature, after the same HMAC work (with a key nobody
  // holds), so that neither the message nor the time taken tells which kids exist.
  const std::string* key = keys.Find(claims.kid);
  std::optional<std::string> sig = Base64UrlDecode(seg->signature);
  if (!sig || sig->size() != kSha256Bytes) return Refuse(kBadSignature);
  std::array<unsigned char, kSha256Bytes> mac{};
  if (!HmacSha256(key != nullptr ? std::string_view(*key) : UnknownKidKey(), seg->signing_input,
                  &mac)) {
    return Internal("HMAC-SHA256 failed");
  }
  const bool sig_ok = CRYPTO_memcmp(mac.data(), sig->data(), kSha256Bytes) == 0 && key != nullptr;
  OPENSSL_cleanse(mac.data(), mac.size());
  if (!sig_ok) return Refuse(kBadSignature);

  // 4. Payload claims.
  std::optional<std::string> payload_text = Base64UrlDecode(seg->payload);
  if (!payload_text) return Refuse("token malformed: payload is not base64url");
  std::optional<Json> payload = ParseObject(*payload_text);
  if (!payload) return Refuse("token malformed: payload is not a JSON object");

  if (!payload->contains("sub")) return Refuse("token sub missing");
  std::optional<uint64_t> user = SubjectOf(*payload);
  if (!user) return Refuse("token sub is not a decimal non-zero user id");
  claims.user_id = *user;

  switch (ReadTime(*payload, "iat", &claims.iat)) {
    case TimeClaim::kMissing: return Refuse("token iat missing");
    case TimeClaim::kInvalid: return Refuse("token iat is not an integer timestamp");
    case TimeClaim::kOk: break;
  }
  switch (ReadTime(*payload, "exp", &claims.exp)) {
    case TimeClaim::kMissing: return Refuse("token exp missing");
    case TimeClaim::kInvalid: return Refuse("token exp is not an integer timestamp");
    case TimeClaim::kOk: break;
  }
  int64_t nbf = 0;
  const TimeClaim nbf_state = ReadTime(*payload, "nbf", &nbf);
  if (nbf_state == TimeClaim::kInvalid) return Refuse("token nbf is not an integer timestamp");

  auto jti = payload->find("jti");
  if (jti == payload->end()) return Refuse("token jti missing");
  if (!jti->is_string()) return Refuse("token jti is not a string");
  const std::string& jti_s = jti->get_ref<const std::string&>();
  if (jti_s.empty() || jti_s.size() > kMaxJtiBytes) return Refuse("token jti has a bad length");
  claims.jti = jti_s;

  // dev (Iris extension, docs/protocol.md appendix 20): the device, a JSON integer 1..63;
  // absent = device 1, the primary device.
  if (auto dev = payload->find("dev"); dev != payload->end()) {
    if (!dev->is_number_unsigned() || dev->get<uint64_t>() < 1 ||
        dev->get<uint64_t>() > kMaxDeviceClaim) {
      return Refuse("token dev is not a device id (an integer 1..63)");
    }
    claims.device = static_cast<uint32_t>(dev->get<uint64_t>());
  }

  bool aud_matches = false;
  const bool has_aud = payload->contains("aud");
  const bool has_iss = payload->contains("iss");
  if (auto aud = payload->find("aud"); aud != payload->end()) {
    if (aud->is_string()) {
      claims.aud = aud->get_ref<const std::string&>();
      aud_matches = claims.aud == opts.audience;
    } else if (aud->is_array()) {
      for (const Json& a : *aud) {
        if (!a.is_string()) return Refuse("token aud is not a string or an array of strings");
        const std::string& as = a.get_ref<const std::string&>();
        if (claims.aud.empty()) claims.aud = as;
        if (as == opts.audience) aud_matches = true;
      }
    } else {
      return Refuse("token aud is not a string or an array of strings");
    }
  }
  if (auto iss = payload->find("iss"); iss != payload->end()) {
    if (!iss->is_string()) return Refuse("token iss is not a string");
    claims.iss = iss->get_ref<const std::string&>();
  }

  // 5. Time. All values are bounded (kMaxTimestampS, leeway clamp), so nothing overflows.
  const int64_t leeway = opts.leeway_s;
  if (claims.exp <= claims.iat) return Refuse("token exp is not after iat");
  if (claims.exp - claims.iat > opts.max_lifetime_s) {
    return Refuse("token lifetime exceeds the maximum (exp - iat)");
  }
  if (now_ms >= (claims.exp + leeway) * 1000) return Refuse("token expired");
  if ((claims.iat - leeway) * 1000 > now_ms) return Refuse("token issued in the future");
  if (nbf_state == TimeClaim::kOk && (nbf - leeway) * 1000 > now_ms) {
    return Refuse("token not yet valid (nbf)");
  }

  // 6. Audience and issuer, when configured.
  if (!opts.audience.empty()) {
    if (!has_aud) return Refuse("token aud missing");
    if (!aud_matches) return Refuse("token audience does not match");
    claims.aud = opts.audience;
  }
  if (!opts.issuer.empty() && !has_iss) return Refuse("token iss missing");
  if (!opts.issuer.empty() && claims.iss != opts.issuer) {
    return Refuse("token issuer does not match");
  }

  // 7. Revocation.
  if (revocations.IsRevoked(claims)) return Refuse("token revoked");
  return claims;
}

}  // namespace

TokenVerifier::TokenVerifier(const Keyring& keys, const RevocationList& revocations,
                             VerifyOptions opts)
    : keys_(keys), revocations_(revocations), opts_(std::move(opts)) {
  opts_.leeway_s = std::clamp<int64_t>(opts_.leeway_s, 0, 86'400);
  opts_.max_lifetime_s = std::clamp<int64_t>(opts_.max_lifetime_s, 0, kMaxTimestampS);
}

Result<Claims> TokenVerifier::Verify(std::string_view token, int64_t now_ms) const {
  // The JSON library may throw (e.g. std::bad_alloc); this is the boundary that turns any
  // exception into a refusal.
  try {
    return VerifyImpl(keys_, revocations_, opts_, token, now_ms);
  } catch (const std::exception&) {
    return Refuse("token could not be verified");
  }
}

Status TokenVerifier::Recheck(const Claims& c, int64_t now_ms) const {
  const int64_t exp = std::min(c.exp, kMaxTimestampS);
  if (now_ms >= (exp + opts_.leeway_s) * 1000) return Refuse("token expired");
  if (revocations_.IsRevoked(c)) return Refuse("token revoked");
  return Status::Ok();
}

std::string MintRawToken(std::string_view secret, std::string_view header_json,
                         std::string_view payload_json) {
  std::string out = Base64UrlEncode(header_json);
  out.push_back('.');
  out += Base64UrlEncode(payload_json);
  std::array<unsigned char, kSha256Bytes> mac{};
  if (!HmacSha256(secret, out, &mac)) return {};
  out.push_back('.');
  out += Base64UrlEncode(
      std::string_view(reinterpret_cast<const char*>(mac.data()), mac.size()));
  return out;
}

std::string MintToken(std::string_view secret, const Claims& claims) {
  Json header = {{"alg", "HS256"}, {"typ", "JWT"}};
  if (!claims.kid.empty()) header["kid"] = claims.kid;
  Json payload = {{"sub", std::to_string(claims.user_id)},
                  {"iat", claims.iat},
                  {"exp", claims.exp},
                  {"jti", claims.jti}};
  if (!claims.aud.empty()) payload["aud"] = claims.aud;
  if (!claims.iss.empty()) payload["iss"] = claims.iss;
  if (claims.device != 1) payload["dev"] = claims.device;
  // error_handler_t::replace: invalid UTF-8 in a string becomes U+FFFD instead of throwing.
  return MintRawToken(secret, header.dump(-1, ' ', false, Json::error_handler_t::replace),
                      payload.dump(-1, ' ', false, Json::error_handler_t::replace));
}

std::optional<uint64_t> UnverifiedSubject(std::string_view token) {
  if (token.size() > kMaxTokenBytes) return std::nullopt;
  std::optional<Segments> seg = Split(token);
  if (!seg) return std::nullopt;
  std::optional<std::string> text = Base64UrlDecode(seg->payload);
  if (!text) return std::nullopt;
  std::optional<Json> payload = ParseObject(*text);
  if (!payload) return std::nullopt;
  return SubjectOf(*payload);
}

}  // namespace iris::auth
