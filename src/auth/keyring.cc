#include "auth/keyring.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
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

Result<bool> CreateSecretFile(const std::string& path, std::string_view contents) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    if (err == EEXIST) return false;
    return Internal("cannot create " + path + ": " + std::strerror(err));
  }
  // The umask may only have narrowed 0600; make sure of the exact mode all the same.
  int err = fchmod(fd, 0600) == 0 ? 0 : errno;
  while (err == 0 && !contents.empty()) {
    const ssize_t n = write(fd, contents.data(), contents.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    contents.remove_prefix(static_cast<size_t>(n));
  }
  if (err == 0 && fsync(fd) != 0) err = errno;
  if (close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    unlink(path.c_str());
    return Internal("cannot write " + path + ": " + std::strerror(err));
  }
  return true;
}

Status CheckSecretFileMode(const std::string& path, std::string_view what) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return NotFound(std::string(what) + " not found: " + path);
    return BadRequest("cannot stat " + std::string(what) + " " + path + ": " + std::strerror(err));
  }
  const mode_t open_bits = st.st_mode & 077;
  if (open_bits == 0) return Status::Ok();
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return BadRequest(std::string(what) + " " + path + " has mode " + mode + ": group or others " +
                    ((open_bits & 044) != 0 ? "can read it" : "have access to it") +
                    "; refusing to start. Run: chmod 600 " + path);
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

