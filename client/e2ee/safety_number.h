#pragma once
// Safety numbers: what two users compare out of band to verify each other's identity keys,
// computed as Signal's NumericFingerprint (version 0) from the published description:
//
//   fingerprint(id, key) = H^5200, where H^0 = 0x00 0x00 (version) || key || id and
//                          H^(i+1) = SHA-512(H^i || key)
//   `key` is the serialised public identity key (33 bytes, 0x05 || Curve25519 point),
//   `id` the user id in decimal ASCII.
//   digits(f) = for each of the first six 5-byte big-endian chunks c of f: (c mod 100000)
//               as five digits (30 digits).
//   safety number = the two 30-digit strings, the smaller first (both users see the same 60
//                   digits), shown as 12 groups of 5.
//
// The scannable (QR-friendly) form is "iris-sn:v0:" followed by the lowercase hex of the
// first 32 bytes of each fingerprint, in the same (sorted by digits) order.
//
// Thread-safety: pure functions.

#include <cstdint>
#include <string>
#include <string_view>

namespace iris::client::e2ee {

constexpr int kSafetyNumberIterations = 5200;

struct SafetyNumber {
  std::string digits;     // 60 digits, no separators
  std::string scannable;  // "iris-sn:v0:<128 hex digits>"
  // "12345 67890 ..." (12 groups of 5, single spaces).
  std::string Grouped() const;
};

// The 64-byte iterated fingerprint of one user's identity key (see above).
std::string IdentityFingerprintBytes(uint64_t user, std::string_view public_key);
// The 30-digit display form of one fingerprint.
std::string FingerprintDigits(std::string_view fingerprint);
SafetyNumber ComputeSafetyNumber(uint64_t local_user, std::string_view local_key,
                                 uint64_t remote_user, std::string_view remote_key);

// Lowercase hex SHA-256 of a serialised public key: the short "key fingerprint" that
// `iris status` shows for the own key and `iris trust USER FINGERPRINT` accepts.
std::string KeyFingerprint(std::string_view public_key);

// "abc def" -> "abcdef" lowercased; what users type may contain spaces, dashes or colons.
std::string NormalizeFingerprint(std::string_view text);

}  // namespace iris::client::e2ee
