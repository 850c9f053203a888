// Client facade and the application-thread side of Client::Impl (local state, queueing,
// commands). The I/O thread's side is in client_session.cc.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "client/client_impl.h"
#include "common/bytes.h"

namespace iris::client {
namespace {

// Plaintext limit: the encrypted body (padding, Signal headers, prekey message extras) must
// stay within the protocol's 64,000-byte body limit.
constexpr size_t kMaxTextBytes = 63'000;

uint64_t SeedOf(uint64_t seed) { return seed != 0 ? seed : std::random_device{}(); }

}  // namespace

const char* SessionStateName(SessionState s) {
  switch (s) {
    case SessionState::kStopped: return "stopped";
    case SessionState::kConnecting: return "connecting";
    case SessionState::kSyncing: return "syncing";
    case SessionState::kLive: return "live";
    case SessionState::kFailed: return "failed";
  }
  return "unknown";
}

Client::Impl::Impl(ClientOptions options)
    : options_(std::move(options)),
      uuids_(SystemClock::Instance(), SeedOf(options_.seed)),
      backoff_(options_.backoff, SeedOf(options_.seed) ^ 0x9e3779b97f4a7c15ULL),
      token_(options_.token) {}

Client::Impl::~Impl() {
  Stop();
  if (wake_fd_ >= 0) close(wake_fd_);
  if (lock_fd_ >= 0) close(lock_fd_);  // releases the flock
}

Status Client::Impl::OpenState() {
  if (options_.state_dir.empty()) return BadRequest("state_dir is required");
  if (options_.server.ca_file.empty() && options_.server.fingerprint.empty()) {
    return BadRequest("the server must be verified: give a CA file or a pinned public key");
  }
  // Private from the start: the directory holds the identity key and the history.
  IRIS_RETURN_IF_ERROR(EnsurePrivateDirectory(options_.state_dir));
  const std::string lock_path = options_.state_dir + "/state.lock";
  lock_fd_ = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return Internal("cannot open " + lock_path + ": " + strerror(errno));
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return Unavailable(
        "the state directory " + options_.state_dir + " is in use by another iris client process",
        0);
  }
  IRIS_ASSIGN_OR_RETURN(store_, LocalStore::Open(options_.state_dir + "/state.db"));
  IRIS_ASSIGN_OR_RETURN(cipher_, e2ee::MessageCipher::Open(*store_));
  user_id_ = store_->GetU64("user_id");  // the account this state belongs to (0 = not known yet)
  device_id_ = static_cast<uint32_t>(store_->GetU64(kOwnerDeviceId, 1));
  cipher_->set_local_device(device_id_);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return Internal(std::string("eventfd: ") + strerror(errno));
  return Status::Ok();
}

void Client::Impl::Start() {
  std::lock_guard<std::mutex> l(start_mu_);
  if (started_) return;
  started_ = true;
  stop_ = false;
  io_ = std::thread([this] { Run(); });
}

void Client::Impl::Stop() {
  std::lock_guard<std::mutex> l(start_mu_);
  if (!started_) return;
  stop_ = true;
  Wake();
  io_.join();
  started_ = false;
}

void Client::Impl::Wake() {
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0 && errno != EAGAIN) {
    // The counter is saturated: the I/O thread is awake anyway.
  }
}

bool Client::Impl::Idle(int64_t timeout_ms) {
  const int64_t deadline = clock_.MonoMillis() + timeout_ms;
  while (!stop_) {
    const int64_t left = deadline - clock_.MonoMillis();
    if (left <= 0) return true;
    pollfd p{wake_fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) > 0) {
      uint64_t v;
      if (read(wake_fd_, &v, sizeof(v)) < 0) {
        // EAGAIN: another reader drained it.
      }
      return !stop_;
    }
  }
  return false;
}

Result<std::string> Client::Impl::Send(uint64_t recipient, std::string_view text) {
  if (recipient == 0) return BadRequest("recipient must be a non-zero user id");
  if (text.empty()) return BadRequest("message text is empty");
  if (recipient == user_id_.load()) return BadRequest("cannot send a message to yourself");
  if (text.size() > kMaxTextBytes) {
    return TooLarge("message text is " + std::to_string(text.size()) + " bytes; at most " +
                    std::to_string(kMaxTextBytes));
  }
  const Uuid key = uuids_.Next();
  QueuedSend q;
  q.idem_key = std::string(UuidBytes(key));
  q.recipient = recipient;
  q.kind = kQueuedMessage;
  q.payload = std::string(text);
  q.created_ms = clock_.WallMillis();
  {
    std::lock_guard<std::mutex> l(db_mu_);
    LocalStore::Transaction tx(*store_);
    auto seq = store_->Enqueue(q);
    if (!seq.ok()) return seq.status();
    IRIS_RETURN_IF_ERROR(tx.Commit());
  }
  queue_dirty_ = true;
  Wake();
  return UuidToString(key);
}

Status Client::Impl::Cancel(const std::string& local_id) {
  std::lock_guard<std::mutex> l(db_mu_);
  for (const QueuedSend& q : store_->Queue()) {
    Uuid u;
    std::memcpy(u.data(), q.idem_key.data(), std::min(q.idem_key.size(), u.size()));
    if (UuidToString(u) == local_id) {
      IRIS_RETURN_IF_ERROR(store_->Dequeue(q.seq, 0, 0));
      queue_dirty_ = true;
      return Status::Ok();
    }
  }
  return NotFound("no queued send " + local_id);
}

Status Client::Impl::MarkRead(uint64_t sender, const std::vector<uint64_t>& ids) {
  if (sender == 0) return BadRequest("sender must be a non-zero user id");
  if (ids.empty() || ids.size() > 256) return BadRequest("between 1 and 256 message ids");
  v1::ReceiptBody body;
  body.set_type(v1::READ);
  for (uint64_t id : ids) body.add_message_ids(id);
  {
    std::lock_guard<std::mutex> l(db_mu_);
    // The RECEIPT frame for the server, then the copy encrypted to the author (the only
    // one the author's client believes), unless this user turned read receipts off.
    LocalStore::Transaction tx(*store_);
    const bool off = store_->GetU64(kReadReceiptsOff) != 0;
    for (const uint8_t kind : {kQueuedReceipt, kQueuedSealedReceipt}) {
      if (kind == kQueuedSealedReceipt && off) break;
      QueuedSend q;
      q.idem_key = std::string(UuidBytes(uuids_.Next()));
      q.recipient = sender;
      q.kind = kind;
      q.payload = body.SerializeAsString();
      q.created_ms = clock_.WallMillis();
      auto seq = store_->Enqueue(q);
      if (!seq.ok()) return seq.status();
    }
    IRIS_RETURN_IF_ERROR(tx.Commit());
  }
  queue_dirty_ = true;
  Wake();
  return Status::Ok();
}

void Client::Impl::SetTyping(uint64_t user, bool typing) {
  if (user == 0) return;
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    commands_.push_back(Command{Command::kTyping, {user}, typing, false});
  }
  Wake();
}

void Client::Impl::SubscribePresence(const std::vector<uint64_t>& users) {
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    std::vector<uint64_t> fresh;
    for (uint64_t u : users) {
      if (u != 0 && subscriptions_.insert(u).second) fresh.push_back(u);
    }
    if (fresh.empty()) return;
    commands_.push_back(Command{Command::kSubscribe, std::move(fresh), false, false});
  }
  Wake();
}

void Client::Impl::QueryPresence(const std::vector<uint64_t>& users) {
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    commands_.push_back(Command{Command::kQuery, users, false, false});
  }
  Wake();
}

void Client::Impl::GetGroup(uint64_t group_id) {
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    commands_.push_back(Command{Command::kGroupGet, {group_id}, false, false});
  }
  Wake();
}

uint64_t Client::Impl::CreateGroup(const std::vector<uint64_t>& members, std::string name) {
  const uint64_t request = next_history_.fetch_add(1);
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    Command c{Command::kGroupCreate, members, false, false};
    c.request = request;
    commands_.push_back(std::move(c));
    if (!name.empty()) group_names_[request] = std::move(name);
  }
  Wake();
  return request;
}

uint64_t Client::Impl::UpdateGroup(uint64_t group_id, const std::vector<uint64_t>& add,
                                   const std::vector<uint64_t>& remove, bool leave) {
  const uint64_t request = next_history_.fetch_add(1);
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    Command c{Command::kGroupUpdate, add, leave, false};
    c.before = group_id;
    c.request = request;
    c.remove = remove;
    commands_.push_back(std::move(c));
  }
  Wake();
  return request;
}

Result<std::string> Client::Impl::SendGroup(uint64_t group_id, std::string_view text) {
  if (group_id == 0) return BadRequest("group must be a non-zero group id");
  if (text.empty()) return BadRequest("message text is empty");
  if (text.size() > kMaxTextBytes) {
    return TooLarge("message text is " + std::to_string(text.size()) + " bytes; at most " +
                    std::to_string(kMaxTextBytes));
  }
  const Uuid key = uuids_.Next();
  QueuedSend q;
  q.idem_key = std::string(UuidBytes(key));
  q.recipient = group_id;
  q.kind = kQueuedGroupMessage;
  q.payload = std::string(text);
  q.created_ms = clock_.WallMillis();
  {
    std::lock_guard<std::mutex> l(db_mu_);
    IRIS_ASSIGN_OR_RETURN(std::optional<LocalGroup> g, store_->GetGroup(group_id));
    if (!g) {
      return NotFound("no group " + std::to_string(group_id) +
                      " is known here (groups are learnt from their GROUP_EVENT: sync first)");
    }
    if (!g->member) {
      return BadRequest("you are no longer a member of group " + std::to_string(group_id));
    }
    auto seq = store_->Enqueue(q);
    if (!seq.ok()) return seq.status();
  }
  queue_dirty_ = true;
  Wake();
  return UuidToString(key);
}

std::vector<GroupRecord> Client::Impl::Groups() const {
  std::vector<GroupRecord> out;
  std::lock_guard<std::mutex> l(db_mu_);
  for (const LocalGroup& g : store_->Groups()) {
    v1::GroupInfo info;
    info.ParseFromString(g.info);
    GroupRecord r;
    r.id = g.id;
    r.name = g.name;
    r.kind = static_cast<GroupKind>(info.kind());
    r.owner = info.owner();
    r.version = info.version();
    r.members.assign(info.members().begin(), info.members().end());
    r.member = g.member;
    out.push_back(std::move(r));
  }
  return out;
}

Status Client::Impl::NameGroup(uint64_t group_id, std::string name) {
  std::lock_guard<std::mutex> l(db_mu_);
  IRIS_ASSIGN_OR_RETURN(std::optional<LocalGroup> g, store_->GetGroup(group_id));
  if (!g) return NotFound("no group " + std::to_string(group_id) + " is known here");
  g->name = std::move(name);
  return store_->PutGroup(*g);
}

void Client::Impl::UpdateSettings(bool read_receipts, bool share_presence) {
  {
    std::lock_guard<std::mutex> l(db_mu_);
    // Recorded at once (the READ receipt rule follows it from now on) and pending until the
    // server's OK: the SETTINGS is sent again at the next connection until then. Best
    // effort: a failed local write only loses that record.
    LocalStore::Transaction tx(*store_);
    store_->PutU64(kReadReceiptsOff, read_receipts ? 0 : 1).IgnoreError();
    store_->PutU64(kSharePresenceOff, share_presence ? 0 : 1).IgnoreError();
    store_->PutU64(kSettingsSet, 1).IgnoreError();
    store_->PutU64(kSettingsPending, 1).IgnoreError();
    tx.Commit().IgnoreError();
  }
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    commands_.push_back(Command{Command::kSettings, {}, read_receipts, share_presence});
  }
  Wake();
}

namespace {

bool Contains(const google::protobuf::RepeatedField<uint64_t>& list, uint64_t u) {
  return std::find(list.begin(), list.end(), u) != list.end();
}

}  // namespace

v1::Settings Client::Impl::PendingConsentLocked() const {
  v1::Settings m;
  auto raw = store_->Get(kConsentPending);
  if (raw.ok() && raw->has_value()) m.ParseFromString(**raw);  // malformed: nothing pending
  return m;
}

bool Client::Impl::SettingsPendingLocked() const {
  if (store_->GetU64(kSettingsPending) != 0 || store_->GetU64(kGroupInvitesPending) != 0) {
    return true;
  }
  const v1::Settings c = PendingConsentLocked();
  return c.block_size() > 0 || c.unblock_size() > 0;
}

v1::Settings Client::Impl::PendingSettingsLocked() const {
  v1::Settings m;
  if (store_->GetU64(kSettingsPending) != 0) {
    m.set_read_receipts(store_->GetU64(kReadReceiptsOff) == 0);
    m.set_share_presence(store_->GetU64(kSharePresenceOff) == 0);
  }
  if (store_->GetU64(kGroupInvitesPending) != 0) {
    const uint64_t g = store_->GetU64(kGroupInvites);
    if (v1::GroupInvites_IsValid(static_cast<int>(g)) && g != v1::GROUP_INVITES_UNSPECIFIED) {
      m.set_group_invites(static_cast<v1::GroupInvites>(g));
    }
  }
  const v1::Settings c = PendingConsentLocked();
  for (int i = 0; i < std::min(c.block_size(), kMaxConsentIdsPerFrame); ++i) {
    m.add_block(c.block(i));
  }
  for (int i = 0; i < std::min(c.unblock_size(), kMaxConsentIdsPerFrame); ++i) {
    m.add_unblock(c.unblock(i));
  }
  return m;
}

Status Client::Impl::SettleSettingsLocked(const v1::Settings& sent, bool refused) {
  LocalStore::Transaction tx(*store_);
  if (!refused) {
    // Confirmed, unless the user changed them again meanwhile (that SETTINGS follows).
    if (sent.has_read_receipts() &&
        (store_->GetU64(kReadReceiptsOff) == 0) == sent.read_receipts() &&
        (store_->GetU64(kSharePresenceOff) == 0) == sent.share_presence()) {
      IRIS_RETURN_IF_ERROR(store_->PutU64(kSettingsPending, 0));
    }
    if (sent.group_invites() != v1::GROUP_INVITES_UNSPECIFIED &&
        store_->GetU64(kGroupInvites) == static_cast<uint64_t>(sent.group_invites())) {
      IRIS_RETURN_IF_ERROR(store_->PutU64(kGroupInvitesPending, 0));
    }
  }
  if (sent.block_size() > 0 || sent.unblock_size() > 0) {
    // An entry that changed direction meanwhile (Block, then Unblock) stays pending.
    const v1::Settings cur = PendingConsentLocked();
    v1::Settings left;
    for (uint64_t u : cur.block()) {
      if (!Contains(sent.block(), u)) left.add_block(u);
    }
    for (uint64_t u : cur.unblock()) {
      if (!Contains(sent.unblock(), u)) left.add_unblock(u);
    }
    IRIS_RETURN_IF_ERROR(store_->Put(kConsentPending, left.SerializeAsString()));
  }
  return tx.Commit();
}

Status Client::Impl::Block(uint64_t user, bool block) {
  if (user == 0) return BadRequest("user must be a non-zero user id");
  if (user == user_id_.load()) {
    return BadRequest(std::string("cannot ") + (block ? "block" : "unblock") + " yourself");
  }
  {
    std::lock_guard<std::mutex> l(db_mu_);
    const v1::Settings cur = PendingConsentLocked();
    v1::Settings next;
    for (uint64_t u : cur.block()) {
      if (u != user) next.add_block(u);
    }
    for (uint64_t u : cur.unblock()) {
      if (u != user) next.add_unblock(u);
    }
    if (block) {
      if (static_cast<size_t>(next.block_size()) >= kMaxPendingBlocks) {
        return TooLarge("already " + std::to_string(next.block_size()) +
                        " block changes wait for the server; connect first");
      }
      next.add_block(user);
    } else {
      next.add_unblock(user);
    }
    IRIS_RETURN_IF_ERROR(store_->Put(kConsentPending, next.SerializeAsString()));
  }
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    commands_.push_back(Command{Command::kSettings, {}, false, false});
  }
  Wake();
  return Status::Ok();
}

Status Client::Impl::SetGroupInvites(GroupInvites who) {
  if (who != GroupInvites::kEveryone && who != GroupInvites::kContacts) {
    return BadRequest("group invites: everyone or contacts");
  }
  {
    std::lock_guard<std::mutex> l(db_mu_);
    LocalStore::Transaction tx(*store_);
    IRIS_RETURN_IF_ERROR(store_->PutU64(kGroupInvites, static_cast<uint64_t>(who)));
    IRIS_RETURN_IF_ERROR(store_->PutU64(kGroupInvitesPending, 1));
    IRIS_RETURN_IF_ERROR(tx.Commit());
  }
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    commands_.push_back(Command{Command::kSettings, {}, false, false});
  }
  Wake();
  return Status::Ok();
}

Client::SettingsRecord Client::Impl::LocalSettings() const {
  std::lock_guard<std::mutex> l(db_mu_);
  Client::SettingsRecord r;
  r.set = store_->GetU64(kSettingsSet) != 0;
  r.read_receipts = store_->GetU64(kReadReceiptsOff) == 0;
  r.share_presence = store_->GetU64(kSharePresenceOff) == 0;
  const uint64_t g = store_->GetU64(kGroupInvites);
  if (g == static_cast<uint64_t>(GroupInvites::kEveryone) ||
      g == static_cast<uint64_t>(GroupInvites::kContacts)) {
    r.group_invites = static_cast<GroupInvites>(g);
  }
  const v1::Settings c = PendingConsentLocked();
  r.pending_block.assign(c.block().begin(), c.block().end());
  r.pending_unblock.assign(c.unblock().begin(), c.unblock().end());
  std::sort(r.pending_block.begin(), r.pending_block.end());
  std::sort(r.pending_unblock.begin(), r.pending_unblock.end());
  r.pending = SettingsPendingLocked();
  return r;
}

uint64_t Client::Impl::RequestSettings() {
  const uint64_t request = next_history_.fetch_add(1);
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    Command c{Command::kSettingsGet, {}, false, false};
    c.request = request;
    commands_.push_back(std::move(c));
  }
  Wake();
  return request;
}

uint64_t Client::Impl::RequestHistory(uint64_t before, uint32_t limit) {
  const uint64_t request = next_history_.fetch_add(1);
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    Command c{Command::kHistory, {}, false, false};
    c.before = before;
    c.limit = limit;
    c.request = request;
    commands_.push_back(std::move(c));
  }
  Wake();
  return request;
}

void Client::Impl::SetToken(std::string token) {
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    token_ = std::move(token);
    token_changed_ = true;
  }
  Wake();
}

uint64_t Client::Impl::cursor() const {
  std::lock_guard<std::mutex> l(db_mu_);
  return store_->Cursor();
}

std::vector<PendingSend> Client::Impl::PendingSends() const {
  std::vector<PendingSend> out;
  std::lock_guard<std::mutex> l(db_mu_);
  for (const QueuedSend& q : store_->Queue()) {
    PendingSend p;
    Uuid u{};
    std::memcpy(u.data(), q.idem_key.data(), std::min(q.idem_key.size(), u.size()));
    p.local_id = UuidToString(u);
    p.recipient = q.kind == kQueuedGroupMessage ? 0 : q.recipient;
    p.group_id = q.kind == kQueuedGroupMessage ? q.recipient : 0;
    p.receipt = q.kind != kQueuedMessage && q.kind != kQueuedGroupMessage;
    if (!p.receipt) p.text = q.payload;
    p.attempts = q.attempts;
    p.encrypted = !q.wire_body.empty();
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<StoredMessage> Client::Impl::Messages(uint64_t after_id, size_t limit) const {
  std::vector<StoredMessage> out;
  std::lock_guard<std::mutex> l(db_mu_);
  uint64_t from = after_id;
  while (out.size() < limit) {
    auto batch = store_->Incoming(from, 256);
    if (batch.empty()) break;
    for (StoredIncoming& m : batch) {
      from = m.id;
      if (m.kind != v1::MESSAGE && m.kind != kIncomingSentByOwnDevice) continue;
      out.push_back(StoredMessage{m.id, m.peer, m.sent_at_ms, std::move(m.body), m.ok,
                                  std::move(m.error), m.group_id,
                                  m.kind == kIncomingSentByOwnDevice});
      if (out.size() == limit) break;
    }
  }
  return out;
}

std::string Client::Impl::IdentityFingerprint() const {
  std::lock_guard<std::mutex> l(db_mu_);
  return cipher_->IdentityFingerprint();
}

bool Client::Impl::Settled() const {
  if (state_.load() != SessionState::kLive || in_flight_count_.load() != 0) return false;
  if (EmittingElsewhere()) return false;
  {
    // A command posted but not yet written (e.g. the SETTINGS of UpdateSettings), or being
    // written (its request is not counted in flight yet).
    std::lock_guard<std::mutex> l(cmd_mu_);
    if (!commands_.empty() || commands_running_) return false;
  }
  std::lock_guard<std::mutex> l(db_mu_);
  // refetch_: a device list still to fetch for messages kept from an unlisted device.
  return store_->Queue().empty() && refetch_.empty();
}

bool Client::Impl::KeysPublished() const {
  std::lock_guard<std::mutex> l(db_mu_);
  return store_->GetU64("keys_uploaded") != 0;
}

Result<ContactVerification> Client::Impl::Verification(uint64_t user) const {
  std::lock_guard<std::mutex> l(db_mu_);
  IRIS_ASSIGN_OR_RETURN(e2ee::MessageCipher::ContactIdentity c, cipher_->Contact(user));
  ContactVerification v;
  v.user = user;
  v.known = !c.key.empty();
  v.verified = c.verified;
  v.fingerprint = c.fingerprint;
  v.refused_fingerprint = c.refused_fingerprint;
  if (v.known) {
    IRIS_ASSIGN_OR_RETURN(e2ee::SafetyNumber sn, cipher_->SafetyNumberFor(user_id_, user, c.key));
    v.safety_number = sn.Grouped();
    v.scannable = sn.scannable;
  }
  if (!c.refused_key.empty()) {
    IRIS_ASSIGN_OR_RETURN(e2ee::SafetyNumber sn,
                          cipher_->SafetyNumberFor(user_id_, user, c.refused_key));
    v.refused_safety_number = sn.Grouped();
  }
  return v;
}

Status Client::Impl::MarkVerified(uint64_t user) {
  std::lock_guard<std::mutex> l(db_mu_);
  return cipher_->MarkVerified(user);
}

Result<std::vector<StoredMessage>> Client::Impl::TrustIdentity(uint64_t user,
                                                               std::string_view fingerprint) {
  std::vector<StoredMessage> out;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    LocalStore::Transaction tx(*store_);
    IRIS_ASSIGN_OR_RETURN(bool changed, cipher_->TrustIdentity(user_id_, user, fingerprint));
    if (changed) {
      std::vector<Event> events;
      IRIS_RETURN_IF_ERROR(RetryKept(user, /*linked_only=*/false, &out, &events));
    }
    if (options_.delivery_receipts && !out.empty()) {
      std::vector<uint64_t> ids;
      for (const StoredMessage& m : out) ids.push_back(m.id);
      IRIS_RETURN_IF_ERROR(QueueReceipt(nullptr, user, v1::DELIVERED, ids, /*sealed=*/true));
    }
    IRIS_RETURN_IF_ERROR(tx.Commit());
    fetch_retry_at_.erase(user);
  }
  queue_dirty_ = true;
  Wake();
  return out;
}

Status Client::Impl::QueueTranscript(const std::string& idem, uint64_t recipient, uint64_t group,
                                     const std::vector<uint64_t>& copy_ids) {
  // This account's other devices get a transcript (a SEND to this account itself, one copy
  // per other device): a linked device always has the primary; the primary has others once
  // it linked one.
  const uint64_t self = user_id_.load();
  if (self == 0 || (device_id_.load() == 1 && cipher_->DevicesOf(self).size() <= 1)) {
    return Status::Ok();
  }
  IRIS_ASSIGN_OR_RETURN(std::optional<QueuedSend> sent, store_->FindQueued(idem));
  if (!sent) return Status::Ok();
  QueuedSend t;
  t.idem_key = std::string(UuidBytes(uuids_.Next()));
  t.recipient = self;
  t.kind = group != 0 ? kQueuedGroupTranscript : kQueuedTranscript;
  e2ee::Transcript content{group != 0 ? group : recipient, sent->payload, copy_ids};
  const bool with_ids = group == 0 && !copy_ids.empty() && copy_ids.size() <= 255;
  if (with_ids) t.kind = kQueuedTranscriptIds;
  t.payload = e2ee::EncodeTranscript(content, with_ids);
  t.created_ms = clock_.WallMillis();
  return store_->Enqueue(t).status();
}

Status Client::Impl::RetryKept(uint64_t user, bool linked_only, std::vector<StoredMessage>* out,
                               std::vector<Event>* events, uint64_t group) {
  // The kept ciphertexts, oldest first; those that still fail stay kept.
  for (const Undecryptable& u : store_->UndecryptableFrom(user)) {
    if (linked_only && u.device <= 1) continue;
    if (group != 0 && u.group_id != group) continue;
    v1::Envelope e;
    e.set_id(u.id);
    e.set_sender(u.peer);
    e.set_sent_at_ms(u.sent_at_ms);
    e.set_kind(v1::MESSAGE);
    e.set_body(u.body);
    e.set_sender_device(u.device);
    e.set_group_id(u.group_id);
    StoredIncoming rec;
    rec.id = u.id;
    rec.peer = u.peer;
    rec.sent_at_ms = u.sent_at_ms;
    rec.kind = static_cast<uint8_t>(v1::MESSAGE);
    if (u.group_id != 0) {
      IRIS_RETURN_IF_ERROR(DecryptGroupIncoming(e, false, &rec, events, /*retry=*/true));
    } else {
      IRIS_RETURN_IF_ERROR(DecryptIncoming(nullptr, e, false, /*retry=*/true, &rec, events));
    }
    if (!rec.ok) continue;
    IRIS_RETURN_IF_ERROR(store_->UpdateIncoming(rec));
    if (rec.kind == v1::MESSAGE || rec.kind == kIncomingSentByOwnDevice) {
      out->push_back(StoredMessage{rec.id, rec.peer, rec.sent_at_ms, rec.body, true, "",
                                   rec.group_id, rec.kind == kIncomingSentByOwnDevice});
    }
  }
  return Status::Ok();
}

// ---- Devices ----

Result<std::string> Client::Impl::LinkCode() const {
  const uint64_t user = user_id_.load();
  if (user == 0) {
    return NotFound("this device has not connected yet: log in (connect) once with its token");
  }
  if (device_id_.load() == 1) {
    return BadRequest(
        "this is the primary device (1): a linked device shows the code, with a "
        "token naming its device (irisctl token ... --device N)");
  }
  std::lock_guard<std::mutex> l(db_mu_);
  return std::string(kLinkCodePrefix) + std::to_string(user) + ":" +
         std::to_string(device_id_.load()) + ":" + HexEncode(cipher_->LocalIdentityKey());
}

Result<Client::Impl::LinkCodeParts> Client::Impl::ParseLinkCode(std::string_view code) {
  auto bad = [&](const std::string& why) {
    return BadRequest("not a device link code (" + why +
                      "): it looks like iris-link:1:USER:DEVICE:KEY, shown by iris devices code "
                      "on the new device");
  };
  if (code.substr(0, std::string_view(kLinkCodePrefix).size()) != kLinkCodePrefix) {
    return bad("wrong prefix");
  }
  code.remove_prefix(std::string_view(kLinkCodePrefix).size());
  std::vector<std::string_view> parts;
  while (true) {
    const size_t colon = code.find(':');
    parts.push_back(code.substr(0, colon));
    if (colon == std::string_view::npos) break;
    code.remove_prefix(colon + 1);
  }
  if (parts.size() != 3) return bad("three fields after the prefix");
  auto number = [](std::string_view v, uint64_t* out) {
    if (v.empty() || v.size() > 20) return false;
    uint64_t n = 0;
    for (char c : v) {
      if (c < '0' || c > '9') return false;
      n = n * 10 + static_cast<uint64_t>(c - '0');
    }
    *out = n;
    return true;
  };
  LinkCodeParts p;
  uint64_t device = 0;
  if (!number(parts[0], &p.user) || p.user == 0) return bad("user id");
  if (!number(parts[1], &device) || device < 2 || device > 63) return bad("device id 2..63");
  p.device = static_cast<uint32_t>(device);
  const std::string_view hex = parts[2];
  if (hex.size() != 66) return bad("identity key");
  for (size_t i = 0; i < hex.size(); i += 2) {
    auto digit = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = digit(hex[i]), lo = digit(hex[i + 1]);
    if (hi < 0 || lo < 0) return bad("identity key");
    p.identity_key.push_back(static_cast<char>(hi * 16 + lo));
  }
  return p;
}

Result<uint64_t> Client::Impl::ChangeDevices(uint8_t op, uint32_t device, std::string key) {
  if (op != kDevicesList && device_id_.load() != 1) {
    return BadRequest("only the primary device (1) links and removes devices; this is device " +
                      std::to_string(device_id_.load()));
  }
  const uint64_t request = next_history_++;
  Command c{Command::kDevices};
  c.limit = op;
  c.before = device;
  c.key = std::move(key);
  c.request = request;
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    commands_.push_back(std::move(c));
  }
  Wake();
  return request;
}

Result<uint64_t> Client::Impl::LinkDevice(std::string_view code) {
  IRIS_ASSIGN_OR_RETURN(LinkCodeParts p, ParseLinkCode(code));
  const uint64_t self = user_id_.load();
  if (self != 0 && p.user != self) {
    return BadRequest("this code is for user " + std::to_string(p.user) +
                      "'s device, and this is "
                      "user " +
                      std::to_string(self));
  }
  return ChangeDevices(kDevicesAdd, p.device, std::move(p.identity_key));
}

Result<uint64_t> Client::Impl::RemoveDevice(uint32_t device) {
  if (device < 2 || device > 63) {
    return BadRequest("a linked device id is 2..63 (the primary device 1 cannot be removed)");
  }
  return ChangeDevices(kDevicesRemove, device, "");
}

uint64_t Client::Impl::RequestDevices() { return *ChangeDevices(kDevicesList, 0, ""); }

// ---- Client facade ----

Result<std::unique_ptr<Client>> Client::Open(ClientOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  IRIS_RETURN_IF_ERROR(impl->OpenState());
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() { impl_->Stop(); }

void Client::Start() { impl_->Start(); }
void Client::Stop() { impl_->Stop(); }
Result<std::string> Client::Send(uint64_t recipient, std::string_view text) {
  return impl_->Send(recipient, text);
}
Status Client::Cancel(const std::string& local_id) { return impl_->Cancel(local_id); }
Status Client::MarkRead(uint64_t sender, const std::vector<uint64_t>& ids) {
  return impl_->MarkRead(sender, ids);
}
void Client::SetTyping(uint64_t user, bool typing) { impl_->SetTyping(user, typing); }
void Client::SubscribePresence(const std::vector<uint64_t>& users) {
  impl_->SubscribePresence(users);
}
void Client::QueryPresence(const std::vector<uint64_t>& users) { impl_->QueryPresence(users); }
void Client::GetGroup(uint64_t group_id) { impl_->GetGroup(group_id); }
uint64_t Client::CreateGroup(const std::vector<uint64_t>& members, std::string name) {
  return impl_->CreateGroup(members, std::move(name));
}
uint64_t Client::UpdateGroup(uint64_t group_id, const std::vector<uint64_t>& add,
                             const std::vector<uint64_t>& remove) {
  return impl_->UpdateGroup(group_id, add, remove, false);
}
uint64_t Client::LeaveGroup(uint64_t group_id) {
  return impl_->UpdateGroup(group_id, {}, {}, true);
}
Result<std::string> Client::SendGroup(uint64_t group_id, std::string_view text) {
  return impl_->SendGroup(group_id, text);
}
std::vector<GroupRecord> Client::Groups() const { return impl_->Groups(); }
Status Client::NameGroup(uint64_t group_id, std::string name) {
  return impl_->NameGroup(group_id, std::move(name));
}
void Client::UpdateSettings(bool read_receipts, bool share_presence) {
  impl_->UpdateSettings(read_receipts, share_presence);
}
Status Client::Block(uint64_t user) { return impl_->Block(user, true); }
Status Client::Unblock(uint64_t user) { return impl_->Block(user, false); }
Status Client::SetGroupInvites(GroupInvites who) { return impl_->SetGroupInvites(who); }
Client::SettingsRecord Client::LocalSettings() const { return impl_->LocalSettings(); }
uint64_t Client::RequestSettings() { return impl_->RequestSettings(); }
uint64_t Client::RequestHistory(uint64_t before, uint32_t limit) {
  return impl_->RequestHistory(before, limit);
}
void Client::SetToken(std::string token) { impl_->SetToken(std::move(token)); }
SessionState Client::state() const { return impl_->state(); }
bool Client::Settled() const { return impl_->Settled(); }
uint64_t Client::user_id() const { return impl_->user_id(); }
uint64_t Client::cursor() const { return impl_->cursor(); }
std::vector<PendingSend> Client::PendingSends() const { return impl_->PendingSends(); }
std::vector<StoredMessage> Client::Messages(uint64_t after_id, size_t limit) const {
  return impl_->Messages(after_id, limit);
}
std::string Client::IdentityFingerprint() const { return impl_->IdentityFingerprint(); }
bool Client::KeysPublished() const { return impl_->KeysPublished(); }
Result<ContactVerification> Client::Verification(uint64_t user) const {
  return impl_->Verification(user);
}
Status Client::MarkVerified(uint64_t user) { return impl_->MarkVerified(user); }
uint32_t Client::device_id() const { return impl_->device_id(); }
Result<std::string> Client::LinkCode() const { return impl_->LinkCode(); }
Result<uint64_t> Client::LinkDevice(std::string_view code) { return impl_->LinkDevice(code); }
Result<uint64_t> Client::RemoveDevice(uint32_t device) { return impl_->RemoveDevice(device); }
uint64_t Client::RequestDevices() { return impl_->RequestDevices(); }
Result<std::vector<StoredMessage>> Client::TrustIdentity(uint64_t user,
                                                         std::string_view fingerprint) {
  return impl_->TrustIdentity(user, fingerprint);
}

}  // namespace iris::client
