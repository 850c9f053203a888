#include "store/backup.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/bytes.h"
#include "store/store_db.h"
#include "store/store_keys.h"

namespace iris::store {
namespace fs = std::filesystem;
namespace {

constexpr char kPartialDir[] = ".restore-partial";
constexpr size_t kCopyChunk = 1u << 20;

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

// A relative path that stays inside its directory: not empty, not absolute, no "." or ".."
// component.
bool IsPlainRelative(const std::string& p) {
  if (p.empty() || p.front() == '/') return false;
  for (const auto& part : fs::path(p)) {
    if (part == ".." || part == ".") return false;
  }
  return true;
}

Status FsyncPath(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Internal(Errno("open " + path));
  const int r = fsync(fd);
  const int saved = errno;
  close(fd);
  if (r != 0) {
    errno = saved;
    return Internal(Errno("fsync " + path));
  }
  return Status::Ok();
}

// Copies `from` to `to` (created exclusively with `mode`), fsyncs it and returns the
// SHA-256 of the bytes copied as hex. With to empty, only hashes.
Result<std::string> CopyAndHash(const std::string& from, const std::string& to, mode_t mode,
                                uint64_t* bytes) {
  const int in = open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return Internal(Errno("open " + from));
  int out = -1;
  if (!to.empty()) {
    out = open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (out < 0) {
      close(in);
      return Internal(Errno("create " + to));
    }
  }
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::string buf(kCopyChunk, '\0');
  Status error;
  uint64_t total = 0;
  for (;;) {
    const ssize_t n = read(in, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      error = Internal(Errno("read " + from));
      break;
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
    for (ssize_t off = 0; out >= 0 && off < n;) {
      const ssize_t w = write(out, buf.data() + off, static_cast<size_t>(n - off));
      if (w < 0) {
        if (errno == EINTR) continue;
        error = errno == ENOSPC ? StorageFull("no space writing " + to)
                                : Internal(Errno("write " + to));
        break;
      }
      off += w;
    }
    if (!error.ok()) break;
  }
  close(in);
  if (out >= 0) {
    if (error.ok() && fsync(out) != 0) error = Internal(Errno("fsync " + to));
    close(out);
  }
  if (!error.ok()) return error;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  if (bytes != nullptr) *bytes = total;
  return HexEncode(std::string_view(reinterpret_cast<const char*>(digest), len));
}

Status WriteFileDurably(const std::string& path, const std::string& content, mode_t mode) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Internal(Errno("create " + path));
  size_t off = 0;
  while (off < content.size()) {
    const ssize_t w = write(fd, content.data() + off, content.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      const Status s = errno == ENOSPC ? StorageFull("no space writing " + path)
                                       : Internal(Errno("write " + path));
      close(fd);
      return s;
    }
    off += static_cast<size_t>(w);
  }
  const int r = fsync(fd);
  close(fd);
  if (r != 0) return Internal(Errno("fsync " + path));
  return Status::Ok();
}

// Every regular file under `dir`, as sorted relative paths. Anything else (a link, a
// device) is an error: a backup holds only files and directories.
Result<std::vector<std::string>> ListFiles(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_directory(st)) continue;
    const std::string rel = fs::relative(it->path(), dir, ec).string();
    if (ec) break;
    if (!fs::is_regular_file(st)) return BadRequest(dir + "/" + rel + " is not a regular file");
    out.push_back(rel);
  }
  if (ec) return Internal("cannot list " + dir + ": " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

// Whether `dir` does not exist or is an empty directory; BAD_REQUEST naming `what` else.
Status MustBeAbsentOrEmpty(const std::string& dir, const std::string& what,
                           const std::string& hint) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (!fs::exists(st)) return Status::Ok();
  if (!fs::is_directory(st)) return BadRequest(what + " " + dir + " exists and is not a directory");
  if (!fs::is_empty(dir, ec) || ec) {
    return BadRequest(what + " " + dir + " exists and is not empty" + hint);
  }
  return Status::Ok();
}

// Creates `dir` (0700) and its missing parents; true in *created when `dir` was made here.
Status MakePrivateDir(const std::string& dir, bool* created) {
  std::error_code ec;
  const fs::path p(dir);
  if (p.has_parent_path()) fs::create_directories(p.parent_path(), ec);
  if (ec) return Internal("cannot create " + p.parent_path().string() + ": " + ec.message());
  if (mkdir(dir.c_str(), 0700) == 0) {
    if (created != nullptr) *created = true;
    return Status::Ok();
  }
  if (errno == EEXIST && fs::is_directory(dir, ec)) return Status::Ok();
  return Internal(Errno("cannot create " + dir));
}

void RemoveContents(const std::string& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code ignored;
    fs::remove_all(it->path(), ignored);
  }
}

std::string Rfc3339(int64_t ms) {
  const time_t t = static_cast<time_t>(ms / 1000);
  tm utc{};
  gmtime_r(&t, &utc);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

Result<BackupManifest> ParseManifest(const std::string& dir) {
  const std::string path = dir + "/" + kBackupManifestFile;
  std::ifstream in(path);
  if (!in) {
    return BadRequest(dir + " is not an Iris backup: " + kBackupManifestFile + " is missing");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  auto bad = [&](const std::string& why) {
    return BadRequest("backup manifest " + path + " is damaged: " + why);
  };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  BackupManifest m;
  auto u64 = [&](const char* key, uint64_t* out) -> Status {
    if (!j.contains(key) || !j[key].is_number_unsigned()) return bad(std::string(key) + " missing");
    *out = j[key].get<uint64_t>();
    return Status::Ok();
  };
  uint64_t v = 0;
  IRIS_RETURN_IF_ERROR(u64("format", &v));
  m.format = static_cast<uint32_t>(v);
  if (m.format > kBackupFormat) {
    return Status(StatusCode::kUnsupportedVersion,
                  "backup " + dir + " has backup format " + std::to_string(m.format) +
                      "; this build reads backup format " + std::to_string(kBackupFormat) +
                      " and older: restore it with the irisctl of the irisd that made it");
  }
  IRIS_RETURN_IF_ERROR(u64("layout_version", &v));
  m.layout_version = static_cast<uint32_t>(v);
  if (m.layout_version > kLayoutVersion) {
    return Status(StatusCode::kUnsupportedVersion,
                  "backup " + dir + " holds a store of layout version " +
                      std::to_string(m.layout_version) + "; this build reads layout version " +
                      std::to_string(kLayoutVersion) +
                      " and older: restore it with the irisctl of the irisd that made it");
  }
  IRIS_RETURN_IF_ERROR(u64("node_id", &v));
  m.node_id = static_cast<uint32_t>(v);
  IRIS_RETURN_IF_ERROR(u64("vnodes", &v));
  m.vnodes = static_cast<uint32_t>(v);
  IRIS_RETURN_IF_ERROR(u64("created_at_ms", &v));
  m.created_at_ms = static_cast<int64_t>(v);
  IRIS_RETURN_IF_ERROR(u64("rocksdb_sequence", &m.sequence));
  IRIS_RETURN_IF_ERROR(u64("last_id", &m.last_id));
  IRIS_RETURN_IF_ERROR(u64("files", &m.files));
  IRIS_RETURN_IF_ERROR(u64("bytes", &m.bytes));
  if (j.contains("irisd_version") && j["irisd_version"].is_string()) {
    m.irisd_version = j["irisd_version"].get<std::string>();
  }
  return m;
}

// SHA256SUMS: relative path -> hex digest. Checks every line's shape and path.
Result<std::map<std::string, std::string>> ParseChecksums(const std::string& dir) {
  const std::string path = dir + "/" + kBackupChecksumFile;
  std::ifstream in(path);
  if (!in) {
    return BadRequest(dir + " is not a complete Iris backup: " + kBackupChecksumFile +
                      " is missing (an interrupted backup?)");
  }
  std::map<std::string, std::string> sums;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    // "<64 hex>  <path>"
    if (line.size() < 67 || line[64] != ' ' || line[65] != ' ' ||
        line.find_first_not_of("0123456789abcdef") < 64) {
      return BadRequest(path + " line " + std::to_string(n) + " is damaged");
    }
    const std::string file = line.substr(66);
    if (!IsPlainRelative(file) || file == kBackupChecksumFile) {
      return BadRequest(path + " line " + std::to_string(n) + " names a bad path: " + file);
    }
    sums[file] = line.substr(0, 64);
  }
  if (sums.count(kBackupManifestFile) == 0) {
    return BadRequest(path + " does not list " + kBackupManifestFile);
  }
  return sums;
}

// The manifest and the checksum list of `dir`, and that they name exactly its files.
struct CheckedBackup {
  BackupManifest manifest;
  std::map<std::string, std::string> sums;
};
Result<CheckedBackup> CheckListing(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return BadRequest("backup " + dir + " is not a directory");
  CheckedBackup b;
  IRIS_ASSIGN_OR_RETURN(b.sums, ParseChecksums(dir));
  IRIS_ASSIGN_OR_RETURN(b.manifest, ParseManifest(dir));
  IRIS_ASSIGN_OR_RETURN(const std::vector<std::string> files, ListFiles(dir));
  for (const std::string& f : files) {
    if (f == kBackupChecksumFile) continue;
    if (b.sums.count(f) == 0) {
      return BadRequest("backup " + dir + " has a file " + kBackupChecksumFile +
                        " does not list: " + f);
    }
  }
  for (const auto& entry : b.sums) {
    if (!std::binary_search(files.begin(), files.end(), entry.first)) {
      return BadRequest("backup " + dir + " is damaged: " + entry.first + " is missing");
    }
  }
  if (b.sums.size() != b.manifest.files + 1) {
    return BadRequest("backup " + dir + " is damaged: the manifest counts " +
                      std::to_string(b.manifest.files) + " data files, " + kBackupChecksumFile +
                      " lists " + std::to_string(b.sums.size() - 1));
  }
  return b;
}

Status Mismatch(const std::string& dir, const std::string& file) {
  return BadRequest("backup " + dir + " is damaged: " + file + " does not match its checksum in " +
                    kBackupChecksumFile);
}

}  // namespace

std::string BackupManifest::ToJson() const {
  nlohmann::json j;
  j["format"] = format;
  j["kind"] = "iris-node-backup";
  j["layout_version"] = layout_version;
  j["node_id"] = node_id;
  j["vnodes"] = vnodes;
  j["created_at_ms"] = created_at_ms;
  j["created_at"] = Rfc3339(created_at_ms);
  j["rocksdb_sequence"] = sequence;
  j["last_id"] = last_id;
  j["files"] = files;
  j["bytes"] = bytes;
  j["irisd_version"] = irisd_version;
  return j.dump(2) + "\n";
}

Result<std::string> ResolveBackupTarget(const std::string& backup_dir, const std::string& to) {
  if (to.empty()) return BadRequest("give the backup's directory (\"to\")");
  if (to.front() == '/') return fs::path(to).lexically_normal().string();
  if (!IsPlainRelative(to)) {
    return BadRequest("backup directory " + to +
                      " must be absolute, or relative to the backup directory without . or ..");
  }
  if (backup_dir.empty()) {
    return BadRequest("backup directory " + to +
                      " is relative and irisd has no --backup-dir: give an absolute path");
  }
  return (fs::path(backup_dir) / to).lexically_normal().string();
}

Result<BackupManifest> CreateBackup(const InboxStore& store, const BackupRequest& request,
                                    const Clock& clock) {
  const std::string& target = request.target;
  if (target.empty() || target.front() != '/') {
    return BadRequest("backup target must be an absolute path, got '" + target + "'");
  }
  IRIS_RETURN_IF_ERROR(MustBeAbsentOrEmpty(target, "backup target",
                                           ": give a new directory (backups never overwrite)"));
  bool created = false;
  IRIS_RETURN_IF_ERROR(MakePrivateDir(target, &created));
  const auto cleanup = [&] {
    std::error_code ec;
    if (created) {
      fs::remove_all(target, ec);
    } else {
      RemoveContents(target);
    }
  };
  auto fail = [&](Status s) {
    cleanup();
    return s;
  };

  BackupManifest m;
  m.node_id = request.node_id;
  m.irisd_version = request.irisd_version;
  m.created_at_ms = clock.WallMillis();
  const std::string store_dir = target + "/" + kBackupStoreDir;
  Result<uint64_t> sequence = store.Checkpoint(store_dir);
  if (!sequence.ok()) return fail(sequence.status());
  m.sequence = *sequence;

  for (const auto& [source, name] : request.extra_files) {
    if (!IsPlainRelative(name)) return fail(BadRequest("bad name in the backup: " + name));
    std::error_code ec;
    if (!fs::exists(source, ec)) continue;
    const fs::path dest = fs::path(target) / name;
    if (dest.has_parent_path() && dest.parent_path() != fs::path(target)) {
      if (Status s = MakePrivateDir(dest.parent_path().string(), nullptr); !s.ok()) return fail(s);
    }
    const Result<std::string> copied = CopyAndHash(source, dest.string(), 0600, nullptr);
    if (!copied.ok()) return fail(copied.status());
  }

  Result<StoreFacts> facts = ReadStoreFacts(store_dir);
  if (!facts.ok()) return fail(facts.status());
  m.layout_version = facts->layout_version.value_or(kLayoutVersion);
  m.vnodes = facts->vnodes.value_or(0);
  m.last_id = facts->last_id;

  // Checksums of the data files, then the manifest (which counts them), then the list.
  Result<std::vector<std::string>> files = ListFiles(target);
  if (!files.ok()) return fail(files.status());
  std::string sums;
  for (const std::string& f : *files) {
    uint64_t bytes = 0;
    const Result<std::string> digest = CopyAndHash(target + "/" + f, "", 0, &bytes);
    if (!digest.ok()) return fail(digest.status());
    sums += *digest + "  " + f + "\n";
    ++m.files;
    m.bytes += bytes;
  }
  const std::string manifest_path = target + "/" + kBackupManifestFile;
  if (Status s = WriteFileDurably(manifest_path, m.ToJson(), 0600); !s.ok()) return fail(s);
  const Result<std::string> manifest_digest = CopyAndHash(manifest_path, "", 0, nullptr);
  if (!manifest_digest.ok()) return fail(manifest_digest.status());
  sums += *manifest_digest + "  " + kBackupManifestFile + "\n";
  // Written last (to a temporary name, then renamed): a backup is complete with it.
  const std::string sums_path = target + "/" + kBackupChecksumFile;
  if (Status s = WriteFileDurably(sums_path + ".tmp", sums, 0600); !s.ok()) return fail(s);
  if (rename((sums_path + ".tmp").c_str(), sums_path.c_str()) != 0) {
    return fail(Internal(Errno("rename " + sums_path)));
  }
  for (const std::string& d : {store_dir, target + "/tls", target}) {
    std::error_code ec;
    if (!fs::is_directory(d, ec)) continue;
    if (Status s = FsyncPath(d); !s.ok()) return fail(s);
  }
  return m;
}

Result<BackupManifest> VerifyBackup(const std::string& dir) {
  IRIS_ASSIGN_OR_RETURN(const CheckedBackup b, CheckListing(dir));
  for (const auto& [file, digest] : b.sums) {
    IRIS_ASSIGN_OR_RETURN(const std::string actual, CopyAndHash(dir + "/" + file, "", 0, nullptr));
    if (actual != digest) return Mismatch(dir, file);
  }
  return b.manifest;
}

Result<BackupManifest> RestoreBackup(const std::string& from, const std::string& data_dir) {
  IRIS_ASSIGN_OR_RETURN(const CheckedBackup b, CheckListing(from));
  IRIS_RETURN_IF_ERROR(MustBeAbsentOrEmpty(
      data_dir, "data directory",
      ": restore needs an empty or new directory (it never overwrites a node's data)"));
  IRIS_RETURN_IF_ERROR(MakePrivateDir(data_dir, nullptr));
  const std::string partial = data_dir + "/" + kPartialDir;
  auto fail = [&](Status s) {
    std::error_code ec;
    fs::remove_all(partial, ec);
    return s;
  };
  if (mkdir(partial.c_str(), 0700) != 0) return fail(Internal(Errno("create " + partial)));

  // Copy and verify every file in one read.
  std::vector<std::string> dirs = {partial};
  for (const auto& [file, digest] : b.sums) {
    if (file == kBackupManifestFile) continue;
    const fs::path dest = fs::path(partial) / file;
    const std::string parent = dest.parent_path().string();
    if (std::find(dirs.begin(), dirs.end(), parent) == dirs.end()) {
      if (Status s = MakePrivateDir(parent, nullptr); !s.ok()) return fail(s);
      dirs.push_back(parent);
    }
    const Result<std::string> actual = CopyAndHash(from + "/" + file, dest.string(), 0600, nullptr);
    if (!actual.ok()) return fail(actual.status());
    if (*actual != digest) return fail(Mismatch(from, file));
  }
  {
    const Result<std::string> actual =
        CopyAndHash(from + "/" + kBackupManifestFile, "", 0, nullptr);
    if (!actual.ok()) return fail(actual.status());
    if (*actual != b.sums.at(kBackupManifestFile)) return fail(Mismatch(from, kBackupManifestFile));
  }
  // Deepest first, so every directory's entries are durable before its parent's.
  std::sort(dirs.begin(), dirs.end(),
            [](const auto& a, const auto& c) { return a.size() > c.size(); });
  for (const std::string& d : dirs) {
    if (Status s = FsyncPath(d); !s.ok()) return fail(s);
  }
  // The restored store opens, and is what the manifest says.
  Result<StoreFacts> facts = ReadStoreFacts(partial + "/" + kBackupStoreDir);
  if (!facts.ok()) {
    return fail(BadRequest("backup " + from +
                           ": the restored store does not open: " + facts.status().message()));
  }
  if (facts->layout_version.value_or(0) != b.manifest.layout_version) {
    return fail(BadRequest("backup " + from + " is damaged: its store has layout version " +
                           std::to_string(facts->layout_version.value_or(0)) +
                           ", the manifest says " + std::to_string(b.manifest.layout_version)));
  }
  // Into place: the secrets first, the store last (a data directory with a store is one
  // irisd takes as restored).
  std::vector<std::string> entries;
  std::error_code ec;
  for (fs::directory_iterator it(partial, ec), end; !ec && it != end; it.increment(ec)) {
    entries.push_back(it->path().filename().string());
  }
  if (ec) return fail(Internal("cannot list " + partial + ": " + ec.message()));
  std::stable_partition(entries.begin(), entries.end(),
                        [](const std::string& e) { return e != kBackupStoreDir; });
  for (const std::string& e : entries) {
    if (rename((partial + "/" + e).c_str(), (data_dir + "/" + e).c_str()) != 0) {
      return fail(Internal(Errno("move " + e + " into " + data_dir)));
    }
  }
  fs::remove(partial, ec);
  if (Status s = FsyncPath(data_dir); !s.ok()) return s;
  return b.manifest;
}

}  // namespace iris::store
