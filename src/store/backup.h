#pragma once
// Online backup and offline restore of one node (docs/operations.md, "Backup and restore").
//
// A backup is a directory:
//   store/            a RocksDB checkpoint of the running store (InboxStore::Checkpoint):
//                     consistent, taken while writes continue; holds every write
//                     acknowledged before the backup began
//   tls/server.crt, tls/server.key, jwt.secret, admin.token
//                     the node's generated secrets, when they live in its data directory
//                     (so restored clients keep their pinned certificate and tokens)
//   iris-backup.json  the manifest: backup format, store layout version, node id, vnodes,
//                     time, RocksDB sequence number, HLC high-water mark, file count, bytes
//   SHA256SUMS        SHA-256 of every other file, `sha256sum -c` format; written last, so
//                     a backup without it is incomplete
//
// Thread-safety: the functions are independent; CreateBackup may run while the store
// serves (it blocks the calling thread on disk I/O: never call it on an event loop).

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "store/inbox_store.h"

namespace iris::store {

// The backup format this build writes and the newest it restores.
inline constexpr uint32_t kBackupFormat = 1;
inline constexpr char kBackupManifestFile[] = "iris-backup.json";
inline constexpr char kBackupChecksumFile[] = "SHA256SUMS";
inline constexpr char kBackupStoreDir[] = "store";

struct BackupManifest {
  uint32_t format = kBackupFormat;
  uint32_t layout_version = 0;  // of the store (store_keys.h kLayoutVersion when written)
  uint32_t node_id = 0;
  uint32_t vnodes = 0;
  int64_t created_at_ms = 0;
  uint64_t sequence = 0;  // the RocksDB sequence number the checkpoint holds
  uint64_t last_id = 0;   // the greatest HLC high-water mark in it (message ids <= it)
  uint64_t files = 0;     // data files (all but the manifest and SHA256SUMS)
  uint64_t bytes = 0;     // their total size
  std::string irisd_version;

  std::string ToJson() const;
};

struct BackupRequest {
  std::string target;  // absolute; must not exist, or be an empty directory
  uint32_t node_id = 0;
  std::string irisd_version;
  // Files copied besides the store: source path -> path inside the backup (relative, no
  // ".."). Sources that do not exist are skipped.
  std::vector<std::pair<std::string, std::string>> extra_files;
};

// Where a backup asked for as `to` goes: an absolute path as given; a relative one (no ".."
// component) under `backup_dir`. Pure: touches no disk. BAD_REQUEST for an empty `to`, a
// relative one with "..", or a relative one without a backup_dir.
Result<std::string> ResolveBackupTarget(const std::string& backup_dir, const std::string& to);

// Makes a backup of the running `store` in request.target (created with missing parents,
// mode 0700). On error nothing is left there (a target that existed empty stays, empty).
// Errors: BAD_REQUEST when the target exists and is not an empty directory; the store's
// checkpoint errors; INTERNAL for other I/O errors (naming the file).
Result<BackupManifest> CreateBackup(const InboxStore& store, const BackupRequest& request,
                                    const Clock& clock);

// Reads every file of the backup in `dir` against SHA256SUMS and checks the manifest.
// Errors: BAD_REQUEST for an incomplete or damaged backup (naming the file and what is
// wrong); UNSUPPORTED_VERSION for a backup of a newer format or store layout than this
// build reads; INTERNAL for I/O errors.
Result<BackupManifest> VerifyBackup(const std::string& dir);

// Restores the backup in `from` into `data_dir`, which must not exist or be empty (offline:
// no irisd may run on it). Checks the manifest first, verifies every file's checksum while
// copying (into data_dir/.restore-partial, moved into place only when all is verified and
// synced), then opens the restored store read-only. Errors as VerifyBackup, plus
// BAD_REQUEST for a data directory that is not empty. On error data_dir is left as it was
// (created if it did not exist).
Result<BackupManifest> RestoreBackup(const std::string& from, const std::string& data_dir);

}  // namespace iris::store
