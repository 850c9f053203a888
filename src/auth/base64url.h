#pragma once
// Base64url (RFC 4648 section 5) without padding, as JWS compact serialisation uses it
// (RFC 7515 section 2).
//
// Decoding is strict, so that every byte string has exactly one accepted text form:
// only the characters A-Z a-z 0-9 '-' '_' are accepted; '=' padding, whitespace, the
// standard alphabet's '+' and '/', a length of 1 modulo 4, and non-zero unused bits in the
// last character are all rejected.
//
// Thread-safety: pure functions.

#include <optional>
#include <string>
#include <string_view>

namespace iris::auth {

std::string Base64UrlEncode(std::string_view bytes);

// The decoded bytes, or nullopt when `text` is not strict unpadded base64url.
std::optional<std::string> Base64UrlDecode(std::string_view text);

}  // namespace iris::auth
