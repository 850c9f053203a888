#include "client/local_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace iris::client {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS incoming (
  id INTEGER PRIMARY KEY, peer INTEGER NOT NULL, sent_at_ms INTEGER NOT NULL,
  kind INTEGER NOT NULL, body BLOB NOT NULL, ok INTEGER NOT NULL, error TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS send_queue (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, idem BLOB NOT NULL UNIQUE, recipient INTEGER NOT NULL,
  kind INTEGER NOT NULL, payload BLOB NOT NULL, wire_body BLOB NOT NULL, attempts INTEGER NOT NULL,
  created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sent (
  idem BLOB PRIMARY KEY, recipient INTEGER NOT NULL, kind INTEGER NOT NULL, payload BLOB NOT NULL,
  message_id INTEGER NOT NULL, acked_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS signal_sessions (
  name TEXT NOT NULL, device INTEGER NOT NULL, record BLOB NOT NULL, PRIMARY KEY (name, device));
CREATE TABLE IF NOT EXISTS signal_prekeys (id INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS signal_signed_prekeys (id INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS signal_identities (name TEXT PRIMARY KEY, key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS signal_sender_keys (
  grp TEXT NOT NULL, name TEXT NOT NULL, device INTEGER NOT NULL, record BLOB NOT NULL,
  PRIMARY KEY (grp, name, device));
CREATE TABLE IF NOT EXISTS identity_verified (name TEXT PRIMARY KEY, key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS identity_blocked (name TEXT PRIMARY KEY, key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS undecryptable (
  id INTEGER PRIMARY KEY, peer INTEGER NOT NULL, sent_at_ms INTEGER NOT NULL, body BLOB NOT NULL,
  error TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sent_by_message_id ON sent (message_id);
CREATE TABLE IF NOT EXISTS sent_copies (
  id INTEGER PRIMARY KEY, idem BLOB NOT NULL, device INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS transcript_copies (
  id INTEGER PRIMARY KEY, peer INTEGER NOT NULL, local INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
  id INTEGER PRIMARY KEY, info BLOB NOT NULL, name TEXT NOT NULL, member INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS group_key_holders (
  grp INTEGER NOT NULL, member INTEGER NOT NULL, PRIMARY KEY (grp, member));
CREATE TABLE IF NOT EXISTS contacts_added (
  peer INTEGER PRIMARY KEY, message_id INTEGER NOT NULL, acked_ms INTEGER NOT NULL);
)sql";

// One prepared statement, finalized on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(s_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  Stmt& Bind(int i, std::string_view v) {
    sqlite3_bind_blob(s_, i, v.empty() ? "" : v.data(), static_cast<int>(v.size()),
                      SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindText(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& BindU(int i, uint64_t v) { return Bind(i, static_cast<int64_t>(v)); }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return ok() ? sqlite3_step(s_) : rc_; }
  std::string Blob(int col) const {
    const void* p = sqlite3_column_blob(s_, col);
    const int n = sqlite3_column_bytes(s_, col);
    return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), n);
  }
  int64_t Int(int col) const { return sqlite3_column_int64(s_, col); }
  uint64_t U64(int col) const { return static_cast<uint64_t>(Int(col)); }
  Status Done(const char* what) {
    const int rc = Step();
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return Status::Ok();
    return Internal(std::string("local store: ") + what + ": " + sqlite3_errmsg(db_));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  int rc_ = SQLITE_OK;
};

Result<std::optional<std::string>> QueryBlob(sqlite3* db, Stmt& s, const char* what) {
  const int rc = s.Step();
  if (rc == SQLITE_ROW) return std::optional<std::string>(s.Blob(0));
  if (rc == SQLITE_DONE) return std::optional<std::string>();
  return Internal(std::string("local store: ") + what + ": " + sqlite3_errmsg(db));
}

// Creates `path` 0600 when missing and tightens an existing file to 0600.
Status MakePrivateFile(const std::string& path, bool create) {
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0), 0600);
  if (fd < 0) {
    if (!create && errno == ENOENT) return Status::Ok();
    return Internal("cannot open " + path + ": " + strerror(errno));
  }
  const bool ok = fchmod(fd, 0600) == 0;
  const int err = errno;
  close(fd);
  if (!ok) return Internal("cannot make " + path + " private: " + strerror(err));
  return Status::Ok();
}

}  // namespace

Status EnsurePrivateDirectory(const std::string& dir) {
  std::error_code ec;
  const std::filesystem::path p(dir);
  if (p.has_parent_path() && !p.parent_path().empty()) {
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) return Internal("cannot create " + p.parent_path().string() + ": " + ec.message());
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Internal("cannot create " + dir + ": " + strerror(errno));
  }
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Internal(dir + " is not a directory");
  }
  if ((st.st_mode & 0077) != 0 && chmod(dir.c_str(), 0700) != 0) {
    return Internal("cannot make " + dir + " private (mode 0700): " + strerror(errno));
  }
  return Status::Ok();
}

Result<std::unique_ptr<LocalStore>> LocalStore::Open(const std::string& path) {
  // The database holds the identity private key and plaintext history: private from its
  // first byte. SQLite gives -wal, -shm and -journal the database file's mode.
  IRIS_RETURN_IF_ERROR(MakePrivateFile(path, /*create=*/true));
  for (const char* suffix : {"-wal", "-shm", "-journal"}) {
    IRIS_RETURN_IF_ERROR(MakePrivateFile(path + suffix, /*create=*/false));
  }
  sqlite3* db = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Internal("cannot open local database " + path + ": " + msg);
  }
  std::unique_ptr<LocalStore> s(new LocalStore(db));
  sqlite3_busy_timeout(db, 5000);
  IRIS_RETURN_IF_ERROR(s->Exec("PRAGMA journal_mode=WAL"));
  IRIS_RETURN_IF_ERROR(s->Exec("PRAGMA synchronous=FULL"));
  // Deleted records (used one-time prekeys, old sessions) are overwritten, not left behind.
  IRIS_RETURN_IF_ERROR(s->Exec("PRAGMA secure_delete=ON"));
  IRIS_RETURN_IF_ERROR(s->Exec(kSchema));
  // Databases from before groups: incoming messages gain their group id (0 = direct).
  if (!s->Exec("SELECT grp FROM incoming LIMIT 0").ok()) {
    IRIS_RETURN_IF_ERROR(s->Exec("ALTER TABLE incoming ADD COLUMN grp INTEGER NOT NULL DEFAULT 0"));
  }
  // Databases from before Send.adds_contact: queued sends go without the flag.
  if (!s->Exec("SELECT adds_contact FROM send_queue LIMIT 0").ok()) {
    IRIS_RETURN_IF_ERROR(
        s->Exec("ALTER TABLE send_queue ADD COLUMN adds_contact INTEGER NOT NULL DEFAULT 0"));
  }
  // Databases from before linked devices: kept ciphertexts came from device 1.
  if (!s->Exec("SELECT device FROM undecryptable LIMIT 0").ok()) {
    IRIS_RETURN_IF_ERROR(
        s->Exec("ALTER TABLE undecryptable ADD COLUMN device INTEGER NOT NULL DEFAULT 1"));
  }
  if (!s->Exec("SELECT grp FROM undecryptable LIMIT 0").ok()) {
    IRIS_RETURN_IF_ERROR(
        s->Exec("ALTER TABLE undecryptable ADD COLUMN grp INTEGER NOT NULL DEFAULT 0"));
  }
  // Databases from before per-device copies: sent messages keep no sealed plaintext (a
  // re-send of one goes out as a new message, as it did).
  if (!s->Exec("SELECT sealed FROM sent LIMIT 0").ok()) {
    IRIS_RETURN_IF_ERROR(s->Exec("ALTER TABLE sent ADD COLUMN sealed BLOB NOT NULL DEFAULT ''"));
  }
  if (const char* fault = std::getenv("IRIS_TEST_LOCAL_STORE_FAULT"); fault != nullptr) {
    s->SetFaultForTesting(fault);
  }
  return s;
}

LocalStore::~LocalStore() { sqlite3_close(db_); }

Status LocalStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    return Internal(std::string("local store: ") + msg);
  }
  return Status::Ok();
}

Status LocalStore::Error(const char* what) const {
  return Internal(std::string("local store: ") + what + ": " + sqlite3_errmsg(db_));
}

LocalStore::Transaction::Transaction(LocalStore& store) : store_(store) {
  depth_ = store_.tx_depth_++;
  // A failure to begin shows at Commit().
  if (depth_ == 0) {
    store_.Exec("BEGIN IMMEDIATE").IgnoreError();
  } else {
    store_.Exec(("SAVEPOINT sp" + std::to_string(depth_)).c_str()).IgnoreError();
  }
}

LocalStore::Transaction::~Transaction() {
  --store_.tx_depth_;
  if (done_) return;
  if (depth_ == 0) {
    store_.Exec("ROLLBACK").IgnoreError();
  } else {
    const std::string sp = "sp" + std::to_string(depth_);
    store_.Exec(("ROLLBACK TO " + sp).c_str()).IgnoreError();
    store_.Exec(("RELEASE " + sp).c_str()).IgnoreError();
  }
}

Status LocalStore::Transaction::Commit() {
  done_ = true;
  if (depth_ != 0) return store_.Exec(("RELEASE sp" + std::to_string(depth_)).c_str());
  Status s = store_.Exec("COMMIT");
  if (!s.ok()) store_.Exec("ROLLBACK").IgnoreError();
  return s;
}

Result<std::optional<std::string>> LocalStore::Get(std::string_view key) const {
  Stmt s(db_, "SELECT v FROM kv WHERE k = ?");
  s.BindText(1, key);
  return QueryBlob(db_, s, "read kv");
}

Status LocalStore::Put(std::string_view key, std::string_view value) {
  Stmt s(db_, "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v");
  s.BindText(1, key).Bind(2, value);
  return s.Done("write kv");
}

Status LocalStore::Delete(std::string_view key) {
  Stmt s(db_, "DELETE FROM kv WHERE k = ?");
  s.BindText(1, key);
  return s.Done("delete kv");
}

uint64_t LocalStore::GetU64(std::string_view key, uint64_t fallback) const {
  auto v = Get(key);
  if (!v.ok() || !v->has_value() || (*v)->size() != 8) return fallback;
  uint64_t out = 0;
  for (unsigned char c : **v) out = (out << 8) | c;
  return out;
}

Status LocalStore::PutU64(std::string_view key, uint64_t value) {
  std::string b(8, '\0');
  for (int i = 7; i >= 0; --i) {
    b[static_cast<size_t>(i)] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
  return Put(key, b);
}

Result<bool> LocalStore::InsertIncoming(const StoredIncoming& m) {
  if (Faulty("insert_incoming")) return Internal("local store: store message: injected fault");
  Stmt s(db_,
         "INSERT OR IGNORE INTO incoming (id, peer, sent_at_ms, kind, body, ok, error, grp) "
         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  s.BindU(1, m.id).BindU(2, m.peer).BindU(3, m.sent_at_ms).Bind(4, int64_t{m.kind});
  s.Bind(5, m.body).Bind(6, int64_t{m.ok ? 1 : 0}).BindText(7, m.error).BindU(8, m.group_id);
  IRIS_RETURN_IF_ERROR(s.Done("store message"));
  return sqlite3_changes(db_) > 0;
}

std::vector<StoredIncoming> LocalStore::Incoming(uint64_t after_id, size_t limit) const {
  std::vector<StoredIncoming> out;
  Stmt s(db_,
         "SELECT id, peer, sent_at_ms, kind, body, ok, error, grp FROM incoming WHERE id > ? "
         "ORDER BY id LIMIT ?");
  s.BindU(1, after_id).Bind(2, static_cast<int64_t>(limit));
  while (s.Step() == SQLITE_ROW) {
    StoredIncoming m;
    m.id = s.U64(0);
    m.peer = s.U64(1);
    m.sent_at_ms = s.U64(2);
    m.kind = static_cast<uint8_t>(s.Int(3));
    m.body = s.Blob(4);
    m.ok = s.Int(5) != 0;
    m.error = s.Blob(6);
    m.group_id = s.U64(7);
    out.push_back(std::move(m));
  }
  return out;
}

Result<int64_t> LocalStore::Enqueue(const QueuedSend& q) {
  Stmt s(db_,
         "INSERT INTO send_queue (idem, recipient, kind, payload, wire_body, attempts, created_ms, "
         "adds_contact) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  s.Bind(1, q.idem_key).BindU(2, q.recipient).Bind(3, int64_t{q.kind}).Bind(4, q.payload);
  s.Bind(5, q.wire_body).Bind(6, int64_t{q.attempts}).Bind(7, q.created_ms);
  s.Bind(8, int64_t{q.adds_contact ? 1 : 0});
  IRIS_RETURN_IF_ERROR(s.Done("enqueue send"));
  return static_cast<int64_t>(sqlite3_last_insert_rowid(db_));
}

namespace {
QueuedSend ReadQueued(const Stmt& s) {
  QueuedSend q;
  q.seq = s.Int(0);
  q.idem_key = s.Blob(1);
  q.recipient = s.U64(2);
  q.kind = static_cast<uint8_t>(s.Int(3));
  q.payload = s.Blob(4);
  q.wire_body = s.Blob(5);
  q.attempts = static_cast<uint32_t>(s.Int(6));
  q.created_ms = s.Int(7);
  q.adds_contact = s.Int(8) != 0;
  return q;
}
constexpr const char* kQueueColumns =
    "SELECT seq, idem, recipient, kind, payload, wire_body, attempts, created_ms, adds_contact "
    "FROM send_queue ";
}  // namespace

std::vector<QueuedSend> LocalStore::Queue() const {
  std::vector<QueuedSend> out;
  Stmt s(db_, (std::string(kQueueColumns) + "ORDER BY seq").c_str());
  while (s.Step() == SQLITE_ROW) out.push_back(ReadQueued(s));
  return out;
}

Result<std::optional<QueuedSend>> LocalStore::FindQueued(std::string_view idem_key) const {
  Stmt s(db_, (std::string(kQueueColumns) + "WHERE idem = ?").c_str());
  s.Bind(1, idem_key);
  const int rc = s.Step();
  if (rc == SQLITE_ROW) return std::optional<QueuedSend>(ReadQueued(s));
  if (rc == SQLITE_DONE) return std::optional<QueuedSend>();
  return Error("find queued send");
}

Status LocalStore::SetWireBody(int64_t seq, std::string_view body, bool adds_contact) {
  Stmt s(db_, "UPDATE send_queue SET wire_body = ?, adds_contact = ? WHERE seq = ?");
  s.Bind(1, body).Bind(2, int64_t{adds_contact ? 1 : 0}).Bind(3, seq);
  return s.Done("store ciphertext");
}

Status LocalStore::SetAttempts(int64_t seq, uint32_t attempts) {
  Stmt s(db_, "UPDATE send_queue SET attempts = ? WHERE seq = ?");
  s.Bind(1, int64_t{attempts}).Bind(2, seq);
  return s.Done("count attempt");
}

Status LocalStore::SetPayload(int64_t seq, std::string_view payload) {
  Stmt s(db_, "UPDATE send_queue SET payload = ? WHERE seq = ?");
  s.Bind(1, payload).Bind(2, seq);
  return s.Done("update queued payload");
}

Result<std::optional<QueuedSend>> LocalStore::LastQueuedFor(uint64_t recipient) const {
  Stmt s(db_,
         (std::string(kQueueColumns) + "WHERE recipient = ? ORDER BY seq DESC LIMIT 1").c_str());
  s.BindU(1, recipient);
  const int rc = s.Step();
  if (rc == SQLITE_ROW) return std::optional<QueuedSend>(ReadQueued(s));
  if (rc == SQLITE_DONE) return std::optional<QueuedSend>();
  return Error("find queue tail");
}

Status LocalStore::Dequeue(int64_t seq, uint64_t message_id, int64_t acked_ms) {
  Transaction tx(*this);
  if (message_id != 0) {
    Stmt s(db_,
           "INSERT OR REPLACE INTO sent (idem, recipient, kind, payload, message_id, acked_ms) "
           "SELECT idem, recipient, kind, payload, ?, ? FROM send_queue WHERE seq = ?");
    s.BindU(1, message_id).Bind(2, acked_ms).Bind(3, seq);
    IRIS_RETURN_IF_ERROR(s.Done("record sent"));
  }
  Stmt d(db_, "DELETE FROM send_queue WHERE seq = ?");
  d.Bind(1, seq);
  IRIS_RETURN_IF_ERROR(d.Done("dequeue"));
  return tx.Commit();
}

Result<std::optional<std::string>> LocalStore::LoadSession(std::string_view name,
                                                           int32_t device) const {
  if (Faulty("load_session")) return Internal("local store: load session: injected fault");
  Stmt s(db_, "SELECT record FROM signal_sessions WHERE name = ? AND device = ?");
  s.BindText(1, name).Bind(2, int64_t{device});
  return QueryBlob(db_, s, "load session");
}

Status LocalStore::StoreSession(std::string_view name, int32_t device, std::string_view record) {
  if (Faulty("store_session")) return Internal("local store: store session: injected fault");
  Stmt s(db_, "INSERT OR REPLACE INTO signal_sessions (name, device, record) VALUES (?, ?, ?)");
  s.BindText(1, name).Bind(2, int64_t{device}).Bind(3, record);
  return s.Done("store session");
}

bool LocalStore::ContainsSession(std::string_view name, int32_t device) const {
  auto r = LoadSession(name, device);
  return r.ok() && r->has_value();
}

Status LocalStore::DeleteSession(std::string_view name, int32_t device) {
  Stmt s(db_, "DELETE FROM signal_sessions WHERE name = ? AND device = ?");
  s.BindText(1, name).Bind(2, int64_t{device});
  return s.Done("delete session");
}

Status LocalStore::DeleteAllSessions(std::string_view name) {
  Stmt s(db_, "DELETE FROM signal_sessions WHERE name = ?");
  s.BindText(1, name);
  return s.Done("delete sessions");
}

std::vector<int32_t> LocalStore::SubDeviceSessions(std::string_view name) const {
  std::vector<int32_t> out;
  Stmt s(db_, "SELECT device FROM signal_sessions WHERE name = ? AND device != 1 ORDER BY device");
  s.BindText(1, name);
  while (s.Step() == SQLITE_ROW) out.push_back(static_cast<int32_t>(s.Int(0)));
  return out;
}

Result<std::optional<std::string>> LocalStore::LoadPreKey(uint32_t id) const {
  Stmt s(db_, "SELECT record FROM signal_prekeys WHERE id = ?");
  s.Bind(1, int64_t{id});
  return QueryBlob(db_, s, "load prekey");
}

Status LocalStore::StorePreKey(uint32_t id, std::string_view record) {
  Stmt s(db_, "INSERT OR REPLACE INTO signal_prekeys (id, record) VALUES (?, ?)");
  s.Bind(1, int64_t{id}).Bind(2, record);
  return s.Done("store prekey");
}

Status LocalStore::RemovePreKey(uint32_t id) {
  Stmt s(db_, "DELETE FROM signal_prekeys WHERE id = ?");
  s.Bind(1, int64_t{id});
  return s.Done("remove prekey");
}

uint32_t LocalStore::CountPreKeys() const {
  Stmt s(db_, "SELECT COUNT(*) FROM signal_prekeys");
  return s.Step() == SQLITE_ROW ? static_cast<uint32_t>(s.Int(0)) : 0;
}

Result<std::optional<std::string>> LocalStore::LoadSignedPreKey(uint32_t id) const {
  Stmt s(db_, "SELECT record FROM signal_signed_prekeys WHERE id = ?");
  s.Bind(1, int64_t{id});
  return QueryBlob(db_, s, "load signed prekey");
}

Status LocalStore::StoreSignedPreKey(uint32_t id, std::string_view record) {
  Stmt s(db_, "INSERT OR REPLACE INTO signal_signed_prekeys (id, record) VALUES (?, ?)");
  s.Bind(1, int64_t{id}).Bind(2, record);
  return s.Done("store signed prekey");
}

Status LocalStore::RemoveSignedPreKey(uint32_t id) {
  Stmt s(db_, "DELETE FROM signal_signed_prekeys WHERE id = ?");
  s.Bind(1, int64_t{id});
  return s.Done("remove signed prekey");
}

Result<std::optional<std::string>> LocalStore::LoadIdentity(std::string_view name) const {
  if (Faulty("load_identity")) return Internal("local store: load identity: injected fault");
  Stmt s(db_, "SELECT key FROM signal_identities WHERE name = ?");
  s.BindText(1, name);
  return QueryBlob(db_, s, "load identity");
}

Status LocalStore::ForgetIdentity(std::string_view name) {
  Stmt s(db_, "DELETE FROM signal_identities WHERE name = ?");
  s.BindText(1, name);
  return s.Done("forget identity");
}

Status LocalStore::SaveIdentity(std::string_view name, std::string_view key) {
  Stmt s(db_, "INSERT OR REPLACE INTO signal_identities (name, key) VALUES (?, ?)");
  s.BindText(1, name).Bind(2, key);
  return s.Done("save identity");
}

Result<std::optional<std::string>> LocalStore::VerifiedIdentity(std::string_view name) const {
  Stmt s(db_, "SELECT key FROM identity_verified WHERE name = ?");
  s.BindText(1, name);
  return QueryBlob(db_, s, "load verified identity");
}

Status LocalStore::SetVerifiedIdentity(std::string_view name, std::string_view key) {
  Stmt s(db_, key.empty() ? "DELETE FROM identity_verified WHERE name = ?"
                          : "INSERT OR REPLACE INTO identity_verified (name, key) VALUES (?, ?)");
  s.BindText(1, name);
  if (!key.empty()) s.Bind(2, key);
  return s.Done("store verified identity");
}

Result<std::optional<std::string>> LocalStore::BlockedIdentity(std::string_view name) const {
  Stmt s(db_, "SELECT key FROM identity_blocked WHERE name = ?");
  s.BindText(1, name);
  return QueryBlob(db_, s, "load blocked identity");
}

Status LocalStore::SetBlockedIdentity(std::string_view name, std::string_view key) {
  Stmt s(db_, key.empty() ? "DELETE FROM identity_blocked WHERE name = ?"
                          : "INSERT OR REPLACE INTO identity_blocked (name, key) VALUES (?, ?)");
  s.BindText(1, name);
  if (!key.empty()) s.Bind(2, key);
  return s.Done("store blocked identity");
}

Status LocalStore::StoreUndecryptable(const Undecryptable& u) {
  Stmt s(db_,
         "INSERT OR REPLACE INTO undecryptable (id, peer, sent_at_ms, body, error, device, grp) "
         "VALUES (?, ?, ?, ?, ?, ?, ?)");
  s.BindU(1, u.id).BindU(2, u.peer).BindU(3, u.sent_at_ms).Bind(4, u.body).BindText(5, u.error);
  s.BindU(6, u.device == 0 ? 1 : u.device).BindU(7, u.group_id);
  return s.Done("keep undecryptable message");
}

std::vector<Undecryptable> LocalStore::UndecryptableFrom(uint64_t peer) const {
  std::vector<Undecryptable> out;
  Stmt s(db_,
         "SELECT id, peer, sent_at_ms, body, error, device, grp FROM undecryptable "
         "WHERE peer = ? ORDER BY id");
  s.BindU(1, peer);
  while (s.Step() == SQLITE_ROW) {
    Undecryptable u;
    u.id = s.U64(0);
    u.peer = s.U64(1);
    u.sent_at_ms = s.U64(2);
    u.body = s.Blob(3);
    u.error = s.Blob(4);
    u.device = static_cast<uint32_t>(s.U64(5));
    u.group_id = s.U64(6);
    out.push_back(std::move(u));
  }
  return out;
}

std::vector<Undecryptable> LocalStore::KeptGroupMessages() const {
  std::vector<Undecryptable> out;
  Stmt s(db_, "SELECT DISTINCT peer, grp, device FROM undecryptable WHERE grp != 0");
  while (s.Step() == SQLITE_ROW) {
    Undecryptable u;
    u.peer = s.U64(0);
    u.group_id = s.U64(1);
    u.device = static_cast<uint32_t>(s.Int(2));
    out.push_back(std::move(u));
  }
  return out;
}

std::vector<uint64_t> LocalStore::PeersWithKeptFromLinkedDevices() const {
  std::vector<uint64_t> out;
  Stmt s(db_, "SELECT DISTINCT peer FROM undecryptable WHERE device > 1 ORDER BY peer");
  while (s.Step() == SQLITE_ROW) out.push_back(s.U64(0));
  return out;
}

Status LocalStore::RemoveUndecryptable(uint64_t id) {
  Stmt s(db_, "DELETE FROM undecryptable WHERE id = ?");
  s.BindU(1, id);
  return s.Done("remove undecryptable message");
}

Status LocalStore::UpdateIncoming(const StoredIncoming& m) {
  Stmt s(db_,
         "UPDATE incoming SET kind = ?, body = ?, ok = ?, error = ?, peer = ?, grp = ? "
         "WHERE id = ?");
  s.Bind(1, int64_t{m.kind}).Bind(2, m.body).Bind(3, int64_t{m.ok ? 1 : 0}).BindText(4, m.error);
  s.BindU(5, m.peer).BindU(6, m.group_id).BindU(7, m.id);
  return s.Done("update message");
}

Result<std::optional<SentMessage>> LocalStore::FindSent(uint64_t recipient,
                                                        uint64_t message_id) const {
  // By the message's id (its first copy) or the id of any copy of it, re-sends included.
  Stmt s(db_,
         "SELECT s.idem, s.recipient, s.kind, s.payload, s.message_id, s.sealed, "
         "COALESCE((SELECT c.device FROM sent_copies c WHERE c.id = ?1 AND c.idem = s.idem), 1) "
         "FROM sent s WHERE s.recipient = ?2 AND (s.message_id = ?1 OR s.idem = "
         "(SELECT c.idem FROM sent_copies c WHERE c.id = ?1)) "
         "ORDER BY s.message_id = ?1 DESC LIMIT 1");
  s.BindU(1, message_id).BindU(2, recipient);
  const int rc = s.Step();
  if (rc == SQLITE_DONE) return std::optional<SentMessage>();
  if (rc != SQLITE_ROW) return Error("find sent message");
  SentMessage m;
  m.sent.idem_key = s.Blob(0);
  m.sent.recipient = s.U64(1);
  m.sent.kind = static_cast<uint8_t>(s.Int(2));
  m.sent.payload = s.Blob(3);
  m.message_id = s.U64(4);
  m.sealed = s.Blob(5);
  m.device = static_cast<uint32_t>(s.Int(6));
  return std::optional<SentMessage>(std::move(m));
}

Status LocalStore::RecordTranscriptCopies(uint64_t local, uint64_t peer,
                                          const std::vector<uint64_t>& copy_ids) {
  for (uint64_t id : copy_ids) {
    Stmt s(db_, "INSERT OR IGNORE INTO transcript_copies (id, peer, local) VALUES (?, ?, ?)");
    s.BindU(1, id).BindU(2, peer).BindU(3, local);
    IRIS_RETURN_IF_ERROR(s.Done("record a transcript's copy"));
  }
  return Status::Ok();
}

Result<std::optional<uint64_t>> LocalStore::FindTranscriptCopy(uint64_t peer, uint64_t id) const {
  Stmt s(db_, "SELECT local FROM transcript_copies WHERE id = ? AND peer = ?");
  s.BindU(1, id).BindU(2, peer);
  const int rc = s.Step();
  if (rc == SQLITE_ROW) return std::optional<uint64_t>(s.U64(0));
  if (rc == SQLITE_DONE) return std::optional<uint64_t>();
  return Error("find a transcript's copy");
}

Status LocalStore::RecordSentCopies(std::string_view idem, const std::vector<SentCopy>& copies,
                                    std::string_view sealed) {
  for (const SentCopy& c : copies) {
    Stmt s(db_, "INSERT OR IGNORE INTO sent_copies (id, idem, device) VALUES (?, ?, ?)");
    s.BindU(1, c.id).Bind(2, idem).Bind(3, int64_t{c.device});
    IRIS_RETURN_IF_ERROR(s.Done("record a sent copy"));
  }
  if (sealed.empty()) return Status::Ok();
  Stmt s(db_, "UPDATE sent SET sealed = ? WHERE idem = ?");
  s.Bind(1, sealed).Bind(2, idem);
  return s.Done("record a sent message's sealed plaintext");
}

Result<bool> LocalStore::ContactAdded(uint64_t peer) const {
  Stmt s(db_, "SELECT 1 FROM contacts_added WHERE peer = ?");
  s.BindU(1, peer);
  const int rc = s.Step();
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return Error("look up contact");
}

Status LocalStore::MarkContactAdded(uint64_t peer, uint64_t message_id, int64_t acked_ms) {
  Stmt s(db_, "INSERT OR IGNORE INTO contacts_added (peer, message_id, acked_ms) VALUES (?, ?, ?)");
  s.BindU(1, peer).BindU(2, message_id).Bind(3, acked_ms);
  return s.Done("record contact");
}

Result<std::optional<std::string>> LocalStore::LoadSenderKey(std::string_view group,
                                                             std::string_view name,
                                                             int32_t device) const {
  Stmt s(db_, "SELECT record FROM signal_sender_keys WHERE grp = ? AND name = ? AND device = ?");
  s.BindText(1, group).BindText(2, name).Bind(3, int64_t{device});
  return QueryBlob(db_, s, "load sender key");
}

Status LocalStore::StoreSenderKey(std::string_view group, std::string_view name, int32_t device,
                                  std::string_view record) {
  Stmt s(
      db_,
      "INSERT OR REPLACE INTO signal_sender_keys (grp, name, device, record) VALUES (?, ?, ?, ?)");
  s.BindText(1, group).BindText(2, name).Bind(3, int64_t{device}).Bind(4, record);
  return s.Done("store sender key");
}

Status LocalStore::DeleteSenderKey(std::string_view group, std::string_view name, int32_t device) {
  Stmt s(db_, "DELETE FROM signal_sender_keys WHERE grp = ? AND name = ? AND device = ?");
  s.BindText(1, group).BindText(2, name).Bind(3, int64_t{device});
  return s.Done("delete sender key");
}

Status LocalStore::PutGroup(const LocalGroup& g) {
  Stmt s(db_, "INSERT OR REPLACE INTO groups (id, info, name, member) VALUES (?, ?, ?, ?)");
  s.BindU(1, g.id).Bind(2, g.info).BindText(3, g.name).Bind(4, int64_t{g.member ? 1 : 0});
  return s.Done("store group");
}

Result<std::optional<LocalGroup>> LocalStore::GetGroup(uint64_t id) const {
  Stmt s(db_, "SELECT id, info, name, member FROM groups WHERE id = ?");
  s.BindU(1, id);
  const int rc = s.Step();
  if (rc == SQLITE_DONE) return std::optional<LocalGroup>();
  if (rc != SQLITE_ROW) return Error("load group");
  return std::optional<LocalGroup>(LocalGroup{s.U64(0), s.Blob(1), s.Blob(2), s.Int(3) != 0});
}

std::vector<LocalGroup> LocalStore::Groups() const {
  std::vector<LocalGroup> out;
  Stmt s(db_, "SELECT id, info, name, member FROM groups ORDER BY id");
  while (s.Step() == SQLITE_ROW) {
    out.push_back(LocalGroup{s.U64(0), s.Blob(1), s.Blob(2), s.Int(3) != 0});
  }
  return out;
}

std::vector<uint64_t> LocalStore::GroupKeyHolders(uint64_t group) const {
  std::vector<uint64_t> out;
  Stmt s(db_, "SELECT member FROM group_key_holders WHERE grp = ? ORDER BY member");
  s.BindU(1, group);
  while (s.Step() == SQLITE_ROW) out.push_back(s.U64(0));
  return out;
}

Status LocalStore::AddGroupKeyHolder(uint64_t group, uint64_t member) {
  Stmt s(db_, "INSERT OR IGNORE INTO group_key_holders (grp, member) VALUES (?, ?)");
  s.BindU(1, group).BindU(2, member);
  return s.Done("add group key holder");
}

Status LocalStore::RemoveGroupKeyHolder(uint64_t group, uint64_t member) {
  Stmt s(db_, "DELETE FROM group_key_holders WHERE grp = ? AND member = ?");
  s.BindU(1, group).BindU(2, member);
  return s.Done("remove group key holder");
}

Status LocalStore::ClearGroupKeyHolders(uint64_t group) {
  Stmt s(db_, "DELETE FROM group_key_holders WHERE grp = ?");
  s.BindU(1, group);
  return s.Done("clear group key holders");
}

}  // namespace iris::client
