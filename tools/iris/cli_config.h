#pragma once
// The iris CLI's saved login (config.json in the state directory, mode 0600) and the
// state directory itself: --home, else $IRIS_HOME, else ~/.iris. The client library keeps
// its database (state.db) in the same directory.
//
// Thread-safety: plain functions; not for concurrent use on one directory.

#include <cstdint>
#include <optional>
#include <string>

#include "common/status.h"

namespace iris::cli {

struct CliConfig {
  std::string server;       // "host:port"
  std::string ca_file;      // absolute path, or empty
  // Older logins' pin: the certificate's SHA-256 fingerprint ("SHA256:..."), which breaks at
  // every renewal of the server's certificate; still honoured when `pin` is empty.
  std::string fingerprint;
  std::string pin;  // "pin-sha256:..." (the server's public key) or empty
  std::string token;
  uint32_t prekeys = 100;  // one-time prekey pool size
};

std::string StateDir(const std::string& home_flag);
Result<CliConfig> LoadConfig(const std::string& dir);
Status SaveConfig(const std::string& dir, const CliConfig& config);

// "host:port" -> parts. BAD_REQUEST when malformed.
Status SplitHostPort(const std::string& text, std::string* host, uint16_t* port);

// The token's exp claim (seconds since the epoch), read without verifying the signature;
// nullopt when the token is not a readable JWT.
std::optional<int64_t> TokenExpiry(const std::string& token);

// The id of the newest message the CLI has printed (kept apart from the sync cursor: the
// library stores messages before anything prints them).
uint64_t LoadShownCursor(const std::string& dir);
void SaveShownCursor(const std::string& dir, uint64_t id);

// The newest message of `peer` that `iris read` marked read (read_marks, one "peer id" pair
// a line); 0 when none.
uint64_t LoadReadMark(const std::string& dir, uint64_t peer);
void SaveReadMark(const std::string& dir, uint64_t peer, uint64_t id);

}  // namespace iris::cli
