#include "client/e2ee/safety_number.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cctype>
#include <memory>

namespace iris::client::e2ee {
namespace {

std::string Hex(const unsigned char* p, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 15]);
  }
  return out;
}

}  // namespace

std::string SafetyNumber::Grouped() const {
  std::string out;
  for (size_t i = 0; i < digits.size(); i += 5) {
    if (!out.empty()) out.push_back(' ');
    out += digits.substr(i, 5);
  }
  return out;
}

std::string IdentityFingerprintBytes(uint64_t user, std::string_view public_key) {
  const std::string id = std::to_string(user);
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx) return {};
  // hash = version || key || id; then `iterations` times hash = SHA-512(hash || key).
  std::string hash;
  hash.push_back('\0');
  hash.push_back('\0');
  hash.append(public_key);
  hash.append(id);
  unsigned char md[64];
  unsigned int len = 0;
  for (int i = 0; i < kSafetyNumberIterations; ++i) {
    if (EVP_DigestInit_ex(ctx.get(), EVP_sha512(), nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), hash.data(), hash.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), public_key.data(), public_key.size()) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), md, &len) != 1) {
      OPENSSL_cleanse(md, sizeof(md));
      return {};
    }
    hash.assign(reinterpret_cast<const char*>(md), len);
  }
  OPENSSL_cleanse(md, sizeof(md));
  return hash;
}

std::string FingerprintDigits(std::string_view f) {
  if (f.size() < 30) return {};
  std::string out;
  for (size_t off = 0; off < 30; off += 5) {
    uint64_t chunk = 0;
    for (size_t i = 0; i < 5; ++i) chunk = (chunk << 8) | static_cast<unsigned char>(f[off + i]);
    std::string five = std::to_string(chunk % 100000);
    out += std::string(5 - five.size(), '0') + five;
  }
  return out;
}

SafetyNumber ComputeSafetyNumber(uint64_t local_user, std::string_view local_key,
                                 uint64_t remote_user, std::string_view remote_key) {
  std::string local = IdentityFingerprintBytes(local_user, local_key);
  std::string remote = IdentityFingerprintBytes(remote_user, remote_key);
  SafetyNumber sn;
  if (local.size() < 32 || remote.size() < 32) return sn;
  std::string a = FingerprintDigits(local), b = FingerprintDigits(remote);
  const bool local_first = a <= b;
  sn.digits = local_first ? a + b : b + a;
  const std::string& first = local_first ? local : remote;
  const std::string& second = local_first ? remote : local;
  sn.scannable = "iris-sn:v0:" + Hex(reinterpret_cast<const unsigned char*>(first.data()), 32) +
                 Hex(reinterpret_cast<const unsigned char*>(second.data()), 32);
  OPENSSL_cleanse(local.data(), local.size());
  OPENSSL_cleanse(remote.data(), remote.size());
  return sn;
}

std::string KeyFingerprint(std::string_view public_key) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(public_key.data(), public_key.size(), md, &n, EVP_sha256(), nullptr) != 1) {
    return {};
  }
  std::string out = Hex(md, n);
  OPENSSL_cleanse(md, sizeof(md));
  return out;
}

std::string NormalizeFingerprint(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == ' ' || c == '-' || c == ':' || c == '\t') continue;
    out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return out;
}

}  // namespace iris::client::e2ee
