#pragma once
// HMAC keys for token verification (PROTOCOL.md section 5): the secret file format and
// the set of keys selected by a token's `kid` header (key rotation).
//
// Thread-safety: a Keyring is built at start-up (AddKey) and then only read (Find); reads
// may run concurrently, AddKey may not run concurrently with anything. To rotate keys at
// run time, build a new Keyring and a new TokenVerifier, and publish them together.

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/status.h"

namespace iris::auth {

// The shortest HMAC key accepted (PROTOCOL.md section 5).
inline constexpr size_t kMinSecretBytes = 32;
// The longest secret file read (anything longer is refused as not a secret file).
inline constexpr size_t kMaxSecretFileBytes = 64 * 1024;
// The longest `kid` accepted, in a token header or in AddKey.
inline constexpr size_t kMaxKidBytes = 64;

// Reads a secret file: the key is the file's bytes less exactly one trailing '\n' if there
// is one (so "secret\r\n" keeps its '\r', and "secret\n\n" keeps one '\n').
// Errors: NOT_FOUND when the file does not exist; BAD_REQUEST when it cannot be read, is
// longer than kMaxSecretFileBytes, or the key is shorter than kMinSecretBytes. Messages
// name the path and the length, never the content.
Result<std::string> ReadSecretFile(const std::string& path);

// Creates `path` holding `contents`, readable by the owner only from its first byte:
// open(O_CREAT | O_EXCL | O_NOFOLLOW, 0600), so there is no moment at a wider mode, an
// existing file is never overwritten, and a symbolic link planted at `path` is not followed.
// Returns true when the file was created, false when something already exists at `path`
// (left untouched). INTERNAL when the file cannot be created or written (a partly written
// file is removed).
Result<bool> CreateSecretFile(const std::string& path, std::string_view contents);

// Secret files (keys, tokens) must not be readable or writable by group or others. OK when
// the mode of `path` (following links) has no group/other bits; otherwise BAD_REQUEST
// naming `what`, the path, its mode, and the `chmod 600 <path>` that fixes it. NOT_FOUND
// when it does not exist.
Status CheckSecretFileMode(const std::string& path, std::string_view what);

class Keyring {
 public:
  Keyring() = default;
  ~Keyring();  // wipes the secrets from memory
  Keyring(const Keyring&) = delete;
  Keyring& operator=(const Keyring&) = delete;
  Keyring(Keyring&&) = default;
  Keyring& operator=(Keyring&& other) noexcept;  // wipes the secrets it replaces

  // Adds `secret` under `kid`. kid "" is the default key, used for tokens without a kid.
  // BAD_REQUEST when the secret is shorter than kMinSecretBytes, the kid is longer than
  // kMaxKidBytes, or the kid is already present.
  Status AddKey(std::string kid, std::string secret);

  // The secret for `kid`, or nullptr. The pointer stays valid while the Keyring lives and
  // no key is added.
  const std::string* Find(std::string_view kid) const;

  size_t size() const { return keys_.size(); }

 private:
  struct KidHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, std::string, KidHash, std::equal_to<>> keys_;
};

}  // namespace iris::auth
