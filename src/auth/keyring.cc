#include "auth/keyring.h"

#include <openssl/crypto.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

namespace iris::auth {

Result<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    if (err == ENOENT) return NotFound("jwt secret file not found: " + path);
    return BadRequest("cannot open jwt secret file " + path + ": " + std::strerror(err));
  }
  std::string bytes;
  char buf[4096];
  while (in) {
    in.read(buf, sizeof(buf));
    bytes.append(buf, static_cast<size_t>(in.gcount()));
    if (bytes.size() > kMaxSecretFileBytes) {
      OPENSSL_cleanse(bytes.data(), bytes.size());
      OPENSSL_cleanse(buf, sizeof(buf));
      return BadRequest("jwt secret file " + path + " is longer than " +
                        std::to_string(kMaxSecretFileBytes) + " bytes");
    }
  }
  OPENSSL_cleanse(buf, sizeof(buf));
  if (in.bad()) {
    OPENSSL_cleanse(bytes.data(), bytes.size());
    return BadRequest("cannot read jwt secret file " + path);
  }
  if (!bytes.empty() && bytes.back() == '\n') bytes.pop_back();
  if (bytes.size() < kMinSecretBytes) {
    const size_t n = bytes.size();
    OPENSSL_cleanse(bytes.data(), bytes.size());
    return BadRequest("jwt secret in " + path + " is " + std::to_string(n) +
                      " bytes; at least " + std::to_string(kMinSecretBytes) + " are required");
  }
  return bytes;
}

Keyring::~Keyring() {
  for (auto& [kid, secret] : keys_) OPENSSL_cleanse(secret.data(), secret.size());
}

Keyring& Keyring::operator=(Keyring&& other) noexcept {
  if (this != &other) {
    for (auto& [kid, secret] : keys_) OPENSSL_cleanse(secret.data(), secret.size());
    keys_ = std::move(other.keys_);
    other.keys_.clear();
  }
  return *this;
}

Status Keyring::AddKey(std::string kid, std::string secret) {
  if (secret.size() < kMinSecretBytes) {
    OPENSSL_cleanse(secret.data(), secret.size());
    return BadRequest("jwt secret is " + std::to_string(secret.size()) + " bytes; at least " +
                      std::to_string(kMinSecretBytes) + " are required");
  }
  if (kid.size() > kMaxKidBytes) {
    OPENSSL_cleanse(secret.data(), secret.size());
    return BadRequest("kid is longer than " + std::to_string(kMaxKidBytes) + " bytes");
  }
  if (keys_.contains(kid)) {
    OPENSSL_cleanse(secret.data(), secret.size());
    return BadRequest(kid.empty() ? std::string("default key already present")
                                  : "key id '" + kid + "' already present");
  }
  keys_.emplace(std::move(kid), std::move(secret));
  return Status::Ok();
}

const std::string* Keyring::Find(std::string_view kid) const {
  auto it = keys_.find(kid);
  return it == keys_.end() ? nullptr : &it->second;
}

}  // namespace iris::auth

