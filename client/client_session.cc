// The I/O thread of Client::Impl: connect, HELLO, catch-up, push, the send queue, keys.
// See client_impl.h for the concurrency model.
#include <signal_protocol.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <optional>

#include "client/client_impl.h"
#include "client/e2ee/body_format.h"
#include "wire/opcode.h"

namespace iris::client {
namespace {

constexpr const char* kKeysUploaded = "keys_uploaded";
constexpr const char* kPreKeysOnServer = "prekeys_on_server";
constexpr const char* kPreKeysFilling = "prekeys_filling";
// Wall-clock ms of the last count of this account's one-time prekeys from the server.
constexpr const char* kPreKeysChecked = "prekeys_checked_ms";
// 1 while a rotated signed prekey has not been acknowledged by the server.
constexpr const char* kSignedPreKeyUnpublished = "signed_prekey_unpublished";
constexpr int kHelloTimeoutMs = 10'000;
constexpr const char* kOwnerUserId = "user_id";
constexpr uint32_t kMaxPreKeysPerFrame = 100;

// Errors that retrying with the same configuration cannot fix.
bool IsFatalForRetry(StatusCode c) {
  return c == StatusCode::kUnauthenticated || c == StatusCode::kUnsupportedVersion ||
         c == StatusCode::kBadRequest || c == StatusCode::kSessionReplaced ||
         c == StatusCode::kDeviceRemoved;
}

// Send errors after which the same request may succeed later.
bool IsRetryable(StatusCode c) {
  return c == StatusCode::kRateLimited || c == StatusCode::kOverloaded ||
         c == StatusCode::kUnavailable || c == StatusCode::kStorageFull ||
         c == StatusCode::kInternal;
}

template <typename M>
bool Parse(const ReceivedFrame& f, M* m) {
  return m->ParseFromString(f.payload);
}

Status FromError(const v1::Error& e) {
  return Status(static_cast<StatusCode>(e.code()), e.message(), e.retry_after_ms());
}

// kv: the first distribution of this device's current sender key of a group given to a member.
std::string SenderKeyGivenKey(uint64_t group, uint64_t member) {
  return "sender_key_given/" + std::to_string(group) + "/" + std::to_string(member);
}

std::string LocalId(const std::string& idem) {
  Uuid u{};
  std::copy_n(idem.begin(), std::min(idem.size(), u.size()), u.begin());
  return UuidToString(u);
}

}  // namespace

namespace {
thread_local bool tl_emitting = false;  // this thread is inside Emit (the handler runs)
}  // namespace

bool Client::Impl::EmittingElsewhere() const { return emitting_.load() != 0 && !tl_emitting; }

void Client::Impl::Emit(const Event& e) {
  // Other threads see the frame's effects through Settled() only once the handler has the
  // event (an answer's event is never still on its way when Settled() turns true); the
  // handler itself already sees them.
  emitting_.fetch_add(1);
  const bool outer = tl_emitting;  // an Emit from within the handler
  tl_emitting = true;
  if (session_ != nullptr) in_flight_count_ = session_->in_flight.size();
  if (options_.on_event) options_.on_event(e);
  tl_emitting = outer;
  emitting_.fetch_sub(1);
}

void Client::Impl::SetState(SessionState st, Status why) {
  state_ = st;
  Emit(StateEvent{st, std::move(why), user_id_.load()});
}

void Client::Impl::Run() {
  uint32_t failures = 0;
  while (!stop_) {
    SetState(SessionState::kConnecting);
    Session s;
    session_ = &s;
    Status why = RunSession(s);
    session_ = nullptr;
    in_flight_count_ = 0;
    // HISTORY is not retried on the next connection: its requester hears that it failed.
    // So are group creates and updates (a create is not idempotent across calls).
    for (const auto& [rid, r] : s.in_flight) {
      const Status lost = why.ok() ? Unavailable("the connection closed before the answer") : why;
      if (r.kind == InFlight::kHistory) {
        Emit(RequestFailedEvent{"history", lost, r.history});
      } else if (r.kind == InFlight::kSettingsGet) {
        Emit(RequestFailedEvent{r.devices_op != 0 ? "devices" : "settings_get", lost, r.history});
      } else if (r.kind == InFlight::kSettings && r.device_list) {
        Emit(RequestFailedEvent{"devices", lost, r.history});
      } else if (r.kind == InFlight::kGroupGet && r.group && r.group->request != 0) {
        Emit(RequestFailedEvent{r.what, lost, r.group->request});
      }
    }
    if (s.conn) s.conn->Close();
    if (stop_) break;
    if (s.live) failures = 0;
    if (IsFatalForRetry(why.code())) {
      SetState(SessionState::kFailed, why);
      // Wait for a new token (or Stop()).
      for (;;) {
        if (!Idle(60'000)) break;
        std::lock_guard<std::mutex> l(cmd_mu_);
        if (token_changed_) break;
      }
      failures = 0;
      continue;
    }
    const uint32_t delay = backoff_.DelayMs(failures++, why.retry_after_ms());
    state_ = SessionState::kConnecting;
    Emit(StateEvent{SessionState::kConnecting, why, user_id_.load(), delay});
    if (!Idle(delay)) break;
  }
  state_ = SessionState::kStopped;
  Emit(StateEvent{SessionState::kStopped, Status::Ok(), user_id_.load()});
}

Status Client::Impl::Write(Session& s, wire::Opcode op, const google::protobuf::MessageLite& m) {
  IRIS_RETURN_IF_ERROR(s.conn->SendFrame(static_cast<uint8_t>(op), m));
  s.last_write_ms = clock_.MonoMillis();
  return Status::Ok();
}

Status Client::Impl::RunSession(Session& s) {
  IRIS_ASSIGN_OR_RETURN(s.conn, Connection::Connect(options_.server));
  v1::Hello hello;
  hello.add_versions(1);
  for (const char* cap : {"receipts", "presence", "typing", "e2ee"}) hello.add_capabilities(cap);
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    hello.set_token(token_);
    token_changed_ = false;
  }
  uint64_t cursor;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    cursor = store_->Cursor();
  }
  hello.set_cursor(cursor);
  hello.set_page_size(options_.page_size);
  hello.set_client(options_.client_name);
  IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kHello, hello));
  IRIS_ASSIGN_OR_RETURN(ReceivedFrame first, s.conn->ReadFrame(kHelloTimeoutMs));
  if (first.opcode == static_cast<uint8_t>(wire::Opcode::kError)) {
    v1::Error e;
    if (!Parse(first, &e)) return Unavailable("malformed ERROR in reply to HELLO");
    return FromError(e);
  }
  v1::Welcome welcome;
  if (first.opcode != static_cast<uint8_t>(wire::Opcode::kWelcome) || !Parse(first, &welcome)) {
    return Unavailable("the server did not answer HELLO with WELCOME");
  }
  {
    // The local identity belongs to one account: refuse a token for another one.
    std::lock_guard<std::mutex> l(db_mu_);
    const uint64_t owner = store_->GetU64(kOwnerUserId);
    if (owner != 0 && owner != welcome.user_id()) {
      return BadRequest("the state directory " + options_.state_dir + " belongs to user " +
                        std::to_string(owner) + " but the token is for user " +
                        std::to_string(welcome.user_id()) + "; use another state directory");
    }
    if (owner == 0) IRIS_RETURN_IF_ERROR(store_->PutU64(kOwnerUserId, welcome.user_id()));
    // And to one device of it (its identity key is that device's).
    const uint32_t device = welcome.device_id() == 0 ? 1 : welcome.device_id();
    const uint64_t owner_device = store_->GetU64(kOwnerDeviceId, 0);
    if (owner != 0 && owner_device == 0 && device != 1) {
      return BadRequest("the state directory " + options_.state_dir + " is device 1 of user " +
                        std::to_string(owner) + " but the token is for device " +
                        std::to_string(device) + "; a linked device needs its own state directory");
    }
    if (owner_device != 0 && owner_device != device) {
      return BadRequest("the state directory " + options_.state_dir + " is device " +
                        std::to_string(owner_device) + " of user " + std::to_string(owner) +
                        " but the token is for device " + std::to_string(device) +
                        "; use another state directory");
    }
    if (owner_device == 0) IRIS_RETURN_IF_ERROR(store_->PutU64(kOwnerDeviceId, device));
    device_id_ = device;
    cipher_->set_local_device(device);
  }
  user_id_ = welcome.user_id();
  s.last_read_ms = clock_.MonoMillis();
  if (welcome.limits().max_body_bytes() != 0) s.max_body_bytes = welcome.limits().max_body_bytes();
  if (welcome.limits().idle_timeout_ms() != 0) {
    s.ping_interval_ms =
        std::max<int>(500, static_cast<int>(welcome.limits().idle_timeout_ms() / 2));
  }
  {
    std::lock_guard<std::mutex> l(db_mu_);
    retry_at_.clear();
    fetch_retry_at_.clear();
    // Messages kept because their linked device was not in the list known here: the lists
    // are fetched again (also when the last program run ended before the fetch came back).
    for (uint64_t peer : store_->PeersWithKeptFromLinkedDevices()) refetch_.insert(peer);
    // Sender keys still missing are asked for again (an answer may have gone only to the
    // devices the sender knew then).
    sender_keys_asked_.clear();
    for (const Undecryptable& u : store_->KeptGroupMessages()) {
      IRIS_RETURN_IF_ERROR(RequestSenderKey(u.peer, u.group_id, u.device));
    }
  }
  queue_dirty_ = true;
  SetState(SessionState::kSyncing);

  // Presence subscriptions belong to a session: renew them.
  {
    std::vector<uint64_t> subs;
    {
      std::lock_guard<std::mutex> l(cmd_mu_);
      subs.assign(subscriptions_.begin(), subscriptions_.end());
      // Queued subscribe commands are covered by this renewal.
      std::erase_if(commands_, [](const Command& c) { return c.kind == Command::kSubscribe; });
    }
    for (size_t i = 0; i < subs.size(); i += 256) {
      v1::PresenceSubscribe m;
      m.set_request_id(s.next_request_id++);
      for (size_t j = i; j < std::min(subs.size(), i + 256); ++j) m.add_users(subs[j]);
      s.in_flight[m.request_id()] = InFlight{InFlight::kPresence};
      IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kPresenceSubscribe, m));
    }
  }
  // Settings the server has not confirmed (their SETTINGS was lost with a connection, refused,
  // or never sent; flags, group invites, block changes): again, unless a change is queued
  // already. First: a SETTINGS_GET queued meanwhile is answered with them.
  {
    bool pending = false;
    {
      std::lock_guard<std::mutex> l(db_mu_);
      // A block of this account itself, made before its first connection named it, would
      // have the whole SETTINGS refused: dropped.
      v1::Settings c = PendingConsentLocked();
      const uint64_t self = welcome.user_id();
      if (std::find(c.block().begin(), c.block().end(), self) != c.block().end() ||
          std::find(c.unblock().begin(), c.unblock().end(), self) != c.unblock().end()) {
        v1::Settings left;
        for (uint64_t u : c.block()) {
          if (u != self) left.add_block(u);
        }
        for (uint64_t u : c.unblock()) {
          if (u != self) left.add_unblock(u);
        }
        IRIS_RETURN_IF_ERROR(store_->Put(kConsentPending, left.SerializeAsString()));
      }
      pending = SettingsPendingLocked();
    }
    std::lock_guard<std::mutex> l(cmd_mu_);
    if (pending && std::none_of(commands_.begin(), commands_.end(),
                                [](const Command& c) { return c.kind == Command::kSettings; })) {
      commands_.push_front(Command{Command::kSettings, {}, false, false});
    }
  }
  IRIS_RETURN_IF_ERROR(MaybeUploadKeys(s));

  int64_t next_pump = 0;
  while (!stop_) {
    IRIS_RETURN_IF_ERROR(RunCommands(s));
    in_flight_count_ = s.in_flight.size();
    int64_t now = clock_.MonoMillis();
    if (s.live && (queue_dirty_.exchange(false) || now >= next_pump)) {
      IRIS_RETURN_IF_ERROR(PumpSends(s));
      in_flight_count_ = s.in_flight.size();
      // The earliest retry time decides when to look again.
      std::lock_guard<std::mutex> l(db_mu_);
      next_pump = now + 60'000;
      for (const auto& [seq, at] : retry_at_) next_pump = std::min(next_pump, at);
      for (const auto& [user, at] : fetch_retry_at_) next_pump = std::min(next_pump, at);
    }
    now = clock_.MonoMillis();
    // Keep the server's idle timer fed, and probe a server we have not heard from: it
    // answers PING with PONG, so silence past dead_after means a dead connection.
    const int64_t dead_after = 3 * int64_t{s.ping_interval_ms} + 1'000;
    if (now - s.last_read_ms > dead_after) {
      return Unavailable("no frame from the server for " + std::to_string(now - s.last_read_ms) +
                         " ms");
    }
    const bool quiet_out = now - s.last_write_ms >= s.ping_interval_ms;
    const bool quiet_in =
        now - s.last_read_ms >= s.ping_interval_ms && now - s.last_ping_ms >= s.ping_interval_ms;
    if (quiet_out || quiet_in) {
      v1::Ping ping;
      ping.set_nonce(static_cast<uint64_t>(now));
      IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kPing, ping));
      s.last_ping_ms = now;
    }
    int64_t wait = std::min({s.last_write_ms + s.ping_interval_ms,
                             std::max(s.last_read_ms, s.last_ping_ms) + s.ping_interval_ms,
                             s.last_read_ms + dead_after + 1}) -
                   now;
    if (s.live) wait = std::min(wait, next_pump - now);
    if (s.upload_retry_at != 0) {
      if (now >= s.upload_retry_at) {
        IRIS_RETURN_IF_ERROR(MaybeUploadKeys(s));
        in_flight_count_ = s.in_flight.size();
        continue;
      }
      wait = std::min(wait, s.upload_retry_at - now);
    }
    wait = std::clamp<int64_t>(wait, 0, 60'000);
    auto f = s.conn->ReadFrame(static_cast<int>(wait), wake_fd_);
    if (!f.ok()) {
      if (f.status().code() != StatusCode::kOverloaded) return f.status();
      uint64_t v;
      if (read(wake_fd_, &v, sizeof(v)) < 0) {
        // Nothing to drain: a timeout, not a wake-up.
      }
      continue;
    }
    s.last_read_ms = clock_.MonoMillis();
    const Status handled = HandleFrame(s, *f);
    in_flight_count_ = s.in_flight.size();
    IRIS_RETURN_IF_ERROR(handled);
  }
  return Status::Ok();
}

Status Client::Impl::RunCommands(Session& s) {
  std::deque<Command> cmds;
  {
    std::lock_guard<std::mutex> l(cmd_mu_);
    cmds.swap(commands_);
    commands_running_ = !cmds.empty();
  }
  if (cmds.empty()) return Status::Ok();
  // Until the requests written here are counted in flight, Settled() must not see the
  // commands as done (on every way out, an error included).
  struct CountWhenDone {
    Impl* self;
    Session& s;
    ~CountWhenDone() {
      self->in_flight_count_ = s.in_flight.size();
      std::lock_guard<std::mutex> l(self->cmd_mu_);
      self->commands_running_ = false;
    }
  } count_when_done{this, s};
  bool settings_written = false;
  for (Command& c : cmds) {
    switch (c.kind) {
      case Command::kTyping: {
        v1::Typing t;
        t.set_user(c.users[0]);
        t.set_typing(c.flag_a);
        IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kTyping, t));
        break;
      }
      case Command::kSubscribe:
      case Command::kQuery: {
        for (size_t i = 0; i < c.users.size(); i += 256) {
          const uint64_t rid = s.next_request_id++;
          s.in_flight[rid] = InFlight{InFlight::kPresence};
          if (c.kind == Command::kSubscribe) {
            v1::PresenceSubscribe m;
            m.set_request_id(rid);
            for (size_t j = i; j < std::min(c.users.size(), i + 256); ++j) m.add_users(c.users[j]);
            IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kPresenceSubscribe, m));
          } else {
            v1::PresenceQuery m;
            m.set_request_id(rid);
            for (size_t j = i; j < std::min(c.users.size(), i + 256); ++j) m.add_users(c.users[j]);
            IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kPresenceQuery, m));
          }
        }
        break;
      }
      case Command::kGroupGet: {
        auto paging = std::make_shared<GroupInfoEvent>();
        paging->group_id = c.users[0];
        IRIS_RETURN_IF_ERROR(RequestGroupPage(s, std::move(paging), 0, "group_get"));
        break;
      }
      case Command::kGroupCreate:
      case Command::kGroupUpdate: {
        const bool create = c.kind == Command::kGroupCreate;
        auto paging = std::make_shared<GroupInfoEvent>();
        paging->request = c.request;
        InFlight r{InFlight::kGroupGet};
        r.what = create ? "group_create" : "group_update";
        const uint64_t rid = s.next_request_id++;
        if (create) {
          v1::GroupCreate m;
          m.set_request_id(rid);
          m.set_kind(v1::E2EE);
          for (uint64_t u : c.users) m.add_members(u);
          m.set_idempotency_key(std::string(UuidBytes(uuids_.Next())));
          r.group = std::move(paging);
          s.in_flight[rid] = std::move(r);
          IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kGroupCreate, m));
        } else {
          v1::GroupUpdate m;
          m.set_request_id(rid);
          m.set_group_id(c.before);
          for (uint64_t u : c.users) m.add_add(u);
          for (uint64_t u : c.remove) m.add_remove(u);
          if (c.flag_a) m.add_remove(user_id_.load());  // leave
          paging->group_id = c.before;
          r.recipient = c.before;
          r.group = std::move(paging);
          s.in_flight[rid] = std::move(r);
          IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kGroupUpdate, m));
        }
        break;
      }
      case Command::kSettings: {
        // The frame carries what is pending now: one per batch of commands is enough.
        if (settings_written) break;
        settings_written = true;
        IRIS_RETURN_IF_ERROR(WritePendingSettings(s));
        break;
      }
      case Command::kDevices:
      case Command::kSettingsGet: {
        InFlight r{InFlight::kSettingsGet};
        r.history = c.request;
        r.unsent = true;
        if (c.kind == Command::kDevices) {
          r.devices_op = static_cast<uint8_t>(c.limit);
          r.device = static_cast<uint32_t>(c.before);
          r.device_key = std::move(c.key);
        }
        s.in_flight[s.next_request_id++] = r;  // before the write: a lost one is reported
        IRIS_RETURN_IF_ERROR(FlushSettingsGets(s));
        break;
      }
      case Command::kHistory: {
        v1::History m;
        m.set_request_id(s.next_request_id++);
        m.set_before(c.before);
        m.set_limit(c.limit);
        InFlight r{InFlight::kHistory};
        r.history = c.request;
        s.in_flight[m.request_id()] = r;  // before the write: a failed write reports it
        IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kHistory, m));
        break;
      }
    }
  }
  return Status::Ok();
}

Status Client::Impl::WritePendingSettings(Session& s) {
  v1::Settings m;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    m = PendingSettingsLocked();
  }
  if (!m.has_read_receipts() && m.group_invites() == v1::GROUP_INVITES_UNSPECIFIED &&
      m.block_size() == 0 && m.unblock_size() == 0) {
    return Status::Ok();  // confirmed meanwhile (an earlier SETTINGS carried it)
  }
  m.set_request_id(s.next_request_id++);
  InFlight r{InFlight::kSettings};
  r.settings = std::make_shared<const v1::Settings>(m);
  s.in_flight[m.request_id()] = std::move(r);
  return Write(s, wire::Opcode::kSettings, m);
}

Status Client::Impl::FlushSettingsGets(Session& s) {
  for (const auto& [rid, r] : s.in_flight) {
    if (r.kind == InFlight::kSettings) return Status::Ok();  // its answer flushes them
  }
  for (auto& [rid, r] : s.in_flight) {
    if (r.kind != InFlight::kSettingsGet || !r.unsent) continue;
    r.unsent = false;
    v1::SettingsGet m;
    m.set_request_id(rid);
    IRIS_RETURN_IF_ERROR(Write(s, wire::Opcode::kSettingsGet, m));
  }
  return Status::Ok();
}

Status Client::Impl::MaybeUploadKeys(Session& s) {
  if (s.upload_in_flight) return Status::Ok();
  if (s.upload_retry_at != 0 && clock_.MonoMillis() < s.upload_retry_at) return Status::Ok();
  s.upload_retry_at = 0;
  v1::KeysUpload up;
  uint32_t n = 0;
  bool identity = false;
  bool signed_prekey = false;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    const bool uploaded = store_->GetU64(kKeysUploaded) != 0;
    const uint64_t on_server = store_->GetU64(kPreKeysOnServer);
    // A refill (initial or after falling below the low-water mark) goes on, one frame of
    // at most 100 keys at a time, until the pool is full again.
    bool filling = store_->GetU64(kPreKeysFilling) != 0;
    if (!uploaded) {
      identity = true;
      filling = true;
    } else if (on_server < options_.prekey_low_water) {
      filling = true;
    }
    // A rotated signed prekey goes up on its own when no prekeys are due.
    signed_prekey = store_->GetU64(kSignedPreKeyUnpublished) != 0;
    const bool need_keys = filling && on_server < options_.prekey_pool_size;
    if (filling && !need_keys) IRIS_RETURN_IF_ERROR(store_->PutU64(kPreKeysFilling, 0));
    if (!need_keys && !signed_prekey) return Status::Ok();
    if (need_keys) {
      IRIS_RETURN_IF_ERROR(store_->PutU64(kPreKeysFilling, 1));
      n = static_cast<uint32_t>(
          std::min<uint64_t>(options_.prekey_pool_size - on_server, kMaxPreKeysPerFrame));
    }
    IRIS_ASSIGN_OR_RETURN(up, cipher_->PrepareUpload(n));
  }
  up.set_request_id(s.next_request_id++);
  InFlight r{InFlight::kKeysUpload};
  r.prekeys = n;
  r.identity = identity;
  r.signed_prekey = signed_prekey;
  s.in_flight[up.request_id()] = r;
  s.upload_in_flight = true;
  return Write(s, wire::Opcode::kKeysUpload, up);
}

Status Client::Impl::PumpSends(Session& s) {
  const int64_t now = clock_.MonoMillis();
  std::vector<Event> events;
  std::vector<std::pair<wire::Opcode, std::unique_ptr<google::protobuf::MessageLite>>> frames;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    std::set<uint64_t> seen;
    std::set<uint64_t> seen_groups;
    const std::vector<QueuedSend> queue = store_->Queue();
    // Groups whose messages wait for sender-key distributions queued before them (they
    // must reach the members' inboxes first). A distribution whose member has no usable
    // keys (none published, or a refused identity), or that failed 5 times, stops holding
    // the group back (a rate-limited key fetch holds it: it is retried).
    std::set<uint64_t> distributing;
    for (const QueuedSend& q : queue) {
      if (q.kind != kQueuedSenderKey) continue;
      if (unreachable_.count(q.recipient) != 0) continue;
      if (auto a = attempts_.find(q.seq); a != attempts_.end() && a->second >= 5) continue;
      if (auto d = e2ee::DecodeSenderKeyDistribution(q.payload); d.ok()) {
        distributing.insert(d->group_id);
      }
    }
    for (QueuedSend q : queue) {
      if (q.kind == kQueuedGroupMessage) {
        // One group SEND at a time per group, in queue order.
        if (!seen_groups.insert(q.recipient).second) continue;
        if (s.busy_groups.count(q.recipient) != 0) continue;
        if (auto it = retry_at_.find(q.seq); it != retry_at_.end() && it->second > now) continue;
        if (q.wire_body.empty()) {
          LocalStore::Transaction tx(*store_);
          Result<std::string> body = PrepareGroupMessage(q);
          Status st = body.ok() ? store_->SetWireBody(q.seq, *body) : body.status();
          if (st.ok() && body->size() > s.max_body_bytes) {
            st = TooLarge("encrypted body is " + std::to_string(body->size()) + " bytes");
          }
          if (st.ok()) st = tx.Commit();
          if (!st.ok()) {
            const bool permanent = st.code() != StatusCode::kInternal;
            const uint32_t attempts = ++attempts_[q.seq];
            if (permanent) {
              store_->Dequeue(q.seq, 0, 0).IgnoreError();
            } else {
              retry_at_[q.seq] = now + backoff_.DelayMs(attempts);
            }
            SendFailedEvent f{LocalId(q.idem_key), 0, st, permanent, attempts};
            f.group_id = q.recipient;
            events.push_back(std::move(f));
            continue;
          }
          // The distributions just queued go first: pump again at once.
          queue_dirty_ = true;
          Wake();
          continue;
        }
        if (distributing.count(q.recipient) != 0) continue;
        InFlight r{InFlight::kSend};
        r.seq = q.seq;
        r.idem = q.idem_key;
        r.group_id = q.recipient;
        r.queued_kind = q.kind;
        const uint64_t rid = s.next_request_id++;
        s.in_flight[rid] = r;
        s.busy_groups.insert(q.recipient);
        auto m = std::make_unique<v1::Send>();
        m->set_request_id(rid);
        m->set_idempotency_key(q.idem_key);
        m->set_group_id(q.recipient);
        m->set_body(q.wire_body);
        frames.emplace_back(wire::Opcode::kSend, std::move(m));
        continue;
      }
      if (!seen.insert(q.recipient).second) continue;  // FIFO: only each recipient's head
      if (s.busy.count(q.recipient) != 0) continue;
      if (auto it = retry_at_.find(q.seq); it != retry_at_.end() && it->second > now) continue;
      // Messages, control messages, sealed receipts and transcripts are encrypted once, when
      // first at the head: one ciphertext per device of the recipient.
      const bool resealed = q.wire_body.starts_with(kSealedMarker);
      if (q.kind != kQueuedReceipt && (q.wire_body.empty() || resealed)) {
        const std::vector<uint32_t> devices = TargetDevices(q.recipient);
        if ((q.kind == kQueuedTranscript || q.kind == kQueuedGroupTranscript ||
             q.kind == kQueuedTranscriptIds) &&
            devices.empty()) {
          // This account has no other device (any more): nobody to copy it to.
          store_->Dequeue(q.seq, 0, 0).IgnoreError();
          queue_dirty_ = true;
          continue;
        }
        if (q.kind == kQueuedResend) {
          const std::optional<Resend> resend = DecodeResend(q.payload);
          if (!resend ||
              std::find(devices.begin(), devices.end(), resend->device) == devices.end()) {
            // The device that asked is no longer listed (or the entry is unreadable):
            // nobody to re-send to.
            store_->Dequeue(q.seq, 0, 0).IgnoreError();
            queue_dirty_ = true;
            continue;
          }
        }
        bool ready = refetch_.count(q.recipient) == 0;
        for (uint32_t d : devices) ready = ready && cipher_->HasSession(q.recipient, d);
        if (!ready) {
          if (auto it = fetch_retry_at_.find(q.recipient);
              it != fetch_retry_at_.end() && it->second > now) {
            continue;
          }
          auto fetch = std::make_unique<v1::KeysFetch>();
          fetch->set_request_id(s.next_request_id++);
          fetch->set_user(q.recipient);
          // A sender key goes to a fellow member of the group: the fetch names the group, so
          // it counts against the server's group budget (a whole group's sessions in seconds)
          // instead of the per-user one (30 a minute).
          // (Not after the server refused that for this user: e.g. one side already left the
          // group on the server. The fetch then goes without it.)
          if (q.kind == kQueuedSenderKey && plain_fetch_.count(q.recipient) == 0) {
            if (auto d = e2ee::DecodeSenderKeyDistribution(q.payload); d.ok()) {
              fetch->set_group_id(d->group_id);
            }
          }
          InFlight r{InFlight::kKeysFetch};
          r.recipient = q.recipient;
          r.sender_key_group = fetch->group_id();
          s.in_flight[fetch->request_id()] = r;
          s.busy.insert(q.recipient);
          frames.emplace_back(wire::Opcode::kKeysFetch, std::move(fetch));
          continue;
        }
        LocalStore::Transaction tx(*store_);
        // A message the user chose to send makes this user a contact of its recipient on
        // the server (Send.adds_contact, Client conventions 12) until one SEND carrying the
        // flag was acknowledged; nothing the client sends on its own carries it. Decided
        // now, with the ciphertext: every retry under this idempotency key carries the same.
        bool adds_contact = false;
        Status looked_up = Status::Ok();
        if (q.kind == kQueuedMessage) {
          Result<bool> added = store_->ContactAdded(q.recipient);
          if (added.ok()) {
            adds_contact = !*added;
          } else {
            looked_up = added.status();  // INTERNAL: retried like a failed encryption
          }
        }
        // The sealed plaintext is kept with the ciphertexts (never sent): after a
        // MISMATCHED_DEVICES answer the same message is encrypted for the new device set.
        std::string sealed;
        Result<std::vector<std::string>> bodies = BadRequest("malformed control message");
        if (!looked_up.ok()) {
          bodies = looked_up;
        } else if (q.kind == kQueuedResend) {
          bodies = ResendBodies(q.recipient, devices, *DecodeResend(q.payload));
        } else if (resealed) {
          sealed = q.wire_body.substr(kSealedMarker.size());
          bodies = cipher_->EncryptSealed(q.recipient, devices, sealed);
        } else if (q.kind == kQueuedControl) {
          if (auto control = e2ee::DecodeControl(q.payload); control.ok()) {
            bodies = cipher_->EncryptForDevices(q.recipient, devices, e2ee::EncodeControl(*control),
                                                e2ee::kContentControl, &sealed);
          }
        } else {
          uint8_t type = e2ee::kContentText;
          if (q.kind == kQueuedSenderKey) type = e2ee::kContentSenderKey;
          if (q.kind == kQueuedSealedReceipt) type = e2ee::kContentReceipt;
          if (q.kind == kQueuedTranscript) type = e2ee::kContentTranscript;
          if (q.kind == kQueuedGroupTranscript) type = e2ee::kContentGroupTranscript;
          if (q.kind == kQueuedTranscriptIds) type = e2ee::kContentTranscriptIds;
          bodies = cipher_->EncryptForDevices(q.recipient, devices, q.payload, type, &sealed);
        }
        Result<std::string> body = bodies.status();
        if (bodies.ok()) {
          size_t largest = 0;
          for (const std::string& b : *bodies) largest = std::max(largest, b.size());
          if (largest > s.max_body_bytes) {
            body = TooLarge("encrypted body is " + std::to_string(largest) + " bytes");
          } else {
            v1::Send copies;
            for (size_t i = 0; i < devices.size(); ++i) {
              v1::DeviceCopy* c = copies.add_copies();
              c->set_device(devices[i]);
              c->set_body(std::move((*bodies)[i]));
            }
            // The whole SEND must fit one frame (65,535 bytes) with its other fields.
            const size_t frame = copies.ByteSizeLong();
            copies.set_body(sealed);
            body = std::string(kCopiesMarker) + copies.SerializeAsString();
            if (frame > kMaxCopiesBytes) {
              body = TooLarge("the encrypted copies for " + std::to_string(devices.size()) +
                              " devices take " + std::to_string(frame) + " bytes");
            }
          }
        }
        Status st = body.ok() ? store_->SetWireBody(q.seq, *body, adds_contact) : body.status();
        if (st.ok()) st = tx.Commit();
        if (!st.ok()) {
          const bool permanent = st.code() == StatusCode::kTooLarge;
          const uint32_t attempts = ++attempts_[q.seq];
          if (permanent) {
            store_->Dequeue(q.seq, 0, 0).IgnoreError();
          } else {
            retry_at_[q.seq] = now + backoff_.DelayMs(attempts);
          }
          events.push_back(
              SendFailedEvent{LocalId(q.idem_key), q.recipient, st, permanent, attempts});
          continue;
        }
        q.wire_body = std::move(*body);
        q.adds_contact = adds_contact;
      }
      InFlight r{InFlight::kSend};
      r.seq = q.seq;
      r.recipient = q.recipient;
      r.idem = q.idem_key;
      r.receipt = q.kind != kQueuedMessage;  // receipts, control messages, sender keys
      r.queued_kind = q.kind;
      r.adds_contact = q.adds_contact && q.kind == kQueuedMessage;
      if (q.kind == kQueuedSenderKey) {
        if (auto d = e2ee::DecodeSenderKeyDistribution(q.payload); d.ok()) {
          r.sender_key_group = d->group_id;
        }
      }
      const uint64_t rid = s.next_request_id++;
      s.in_flight[rid] = r;
      s.busy.insert(q.recipient);
      if (q.kind != kQueuedReceipt) {  // a message, a control message or a sealed receipt: a SEND
        auto m = std::make_unique<v1::Send>();
        m->set_request_id(rid);
        m->set_idempotency_key(q.idem_key);
        m->set_recipient(q.recipient);
        if (q.wire_body.starts_with(kCopiesMarker)) {
          v1::Send copies;
          copies.ParseFromString(q.wire_body.substr(kCopiesMarker.size()));
          if (copies.copies_size() == 1 && copies.copies(0).device() == 1 &&
              q.recipient != user_id_.load()) {
            // One device: the plain body of PROTOCOL.md.
            m->set_body(std::move(*copies.mutable_copies(0)->mutable_body()));
          } else {
            *m->mutable_copies() = std::move(*copies.mutable_copies());
          }
        } else {
          m->set_body(q.wire_body);  // queued by an older version of this client
        }
        if (r.adds_contact) m->set_adds_contact(true);
        frames.emplace_back(wire::Opcode::kSend, std::move(m));
      } else {
        v1::ReceiptBody body;
        body.ParseFromString(q.payload);
        auto m = std::make_unique<v1::Receipt>();
        m->set_request_id(rid);
        m->set_to_user(q.recipient);
        m->set_type(body.type());
        *m->mutable_message_ids() = body.message_ids();
        m->set_idempotency_key(q.idem_key);
        frames.emplace_back(wire::Opcode::kReceipt, std::move(m));
      }
    }
    // Device lists to fetch again with nothing queued for their user (a message came from a
    // linked device not in the list known here).
    for (uint64_t user : refetch_) {
      if (seen.count(user) != 0 || s.busy.count(user) != 0) continue;
      if (auto it = fetch_retry_at_.find(user); it != fetch_retry_at_.end() && it->second > now) {
        continue;
      }
      auto fetch = std::make_unique<v1::KeysFetch>();
      fetch->set_request_id(s.next_request_id++);
      fetch->set_user(user);
      InFlight r{InFlight::kKeysFetch};
      r.recipient = user;
      s.in_flight[fetch->request_id()] = r;
      s.busy.insert(user);
      frames.emplace_back(wire::Opcode::kKeysFetch, std::move(fetch));
    }
  }
  for (const Event& e : events) Emit(e);
  for (auto& [op, m] : frames) IRIS_RETURN_IF_ERROR(Write(s, op, *m));
  return Status::Ok();
}

void Client::Impl::RetryLater(int64_t seq, uint32_t attempts, uint32_t retry_after_ms) {
  // Caller holds db_mu_.
  retry_at_[seq] = clock_.MonoMillis() + backoff_.DelayMs(attempts, retry_after_ms);
  store_->SetAttempts(seq, attempts).IgnoreError();  // advisory only
}

Status Client::Impl::OnSendError(Session& s, const InFlight& r, const Status& server_error) {
  Status error = server_error;
  if (error.code() == StatusCode::kMismatchedDevices && r.group_id == 0) {
    // The recipient's devices changed (docs/protocol.md appendix 20): nothing was stored, so
    // the keys and the signed device list are fetched again and the message is encrypted
    // anew for the devices it names, under the same idempotency key. After 5 times in a row
    // (a list the server contradicts) it fails for good.
    s.busy.erase(r.recipient);
    queue_dirty_ = true;
    std::lock_guard<std::mutex> l(db_mu_);
    const uint32_t attempts = ++attempts_[r.seq];
    if (attempts < 5) {
      // The same sealed plaintext is encrypted again (one conversation counter value);
      // a body queued by an older client version is sealed anew.
      std::string again;
      if (auto q = store_->FindQueued(r.idem);
          q.ok() && q->has_value() && (*q)->wire_body.starts_with(kCopiesMarker)) {
        v1::Send copies;
        if (copies.ParseFromString((*q)->wire_body.substr(kCopiesMarker.size())) &&
            !copies.body().empty()) {
          again = std::string(kSealedMarker) + copies.body();
        }
      }
      IRIS_RETURN_IF_ERROR(store_->SetWireBody(r.seq, again));
      refetch_.insert(r.recipient);
      retry_at_.erase(r.seq);
      return Status::Ok();
    }
    error =
        Status(StatusCode::kMismatchedDevices,
               "the devices of user " + std::to_string(r.recipient) +
                   " still do not match its signed device list after " + std::to_string(attempts) +
                   " tries (server: " + server_error.message() + ")");
  }
  if (r.group_id != 0) {
    s.busy_groups.erase(r.group_id);
  } else {
    s.busy.erase(r.recipient);
  }
  queue_dirty_ = true;
  bool permanent = !IsRetryable(error.code());
  uint32_t attempts;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    attempts = ++attempts_[r.seq];
    if (permanent) {
      LocalStore::Transaction tx(*store_);
      IRIS_RETURN_IF_ERROR(store_->Dequeue(r.seq, 0, 0));
      // The member never got this user's sender key: the next group send distributes again.
      if (r.sender_key_group != 0) {
        IRIS_RETURN_IF_ERROR(store_->RemoveGroupKeyHolder(r.sender_key_group, r.recipient));
      }
      IRIS_RETURN_IF_ERROR(tx.Commit());
    } else {
      RetryLater(r.seq, attempts, error.retry_after_ms());
    }
  }
  SendFailedEvent f{LocalId(r.idem), r.recipient, error, permanent, attempts};
  f.group_id = r.group_id;
  Emit(f);
  return Status::Ok();
}

Status Client::Impl::HandleFrame(Session& s, const ReceivedFrame& f) {
  using wire::Opcode;
  switch (static_cast<Opcode>(f.opcode)) {
    case Opcode::kSyncPage: {
      v1::SyncPage page;
      if (!Parse(f, &page)) return Unavailable("malformed SYNC_PAGE");
      if (page.gap()) {
        // Reported before the page's messages, which come after the archived ones.
        uint64_t cursor;
        {
          std::lock_guard<std::mutex> l(db_mu_);
          cursor = store_->Cursor();
        }
        Emit(ArchiveGapEvent{cursor, page.messages_size() > 0 ? page.messages(0).id() : 0});
      }
      IRIS_RETURN_IF_ERROR(IngestPage(s, page));
      if (page.has_more()) {
        v1::SyncAck ack;
        ack.set_cursor(page.cursor());
        IRIS_RETURN_IF_ERROR(Write(s, Opcode::kSyncAck, ack));
      }
      return Status::Ok();
    }
    case Opcode::kSyncDone: {
      v1::SyncDone done;
      Parse(f, &done);
      s.live = true;
      queue_dirty_ = true;
      IRIS_RETURN_IF_ERROR(MaybeRotateAndCheckKeys(s));
      IRIS_RETURN_IF_ERROR(MaybeUploadKeys(s));
      // Count what MaybeUploadKeys put in flight before the session shows as live: Settled()
      // reads the count, and would otherwise see a live session with nothing in flight
      // while a key upload is still unanswered.
      in_flight_count_ = s.in_flight.size();
      SetState(SessionState::kLive);
      Emit(SyncedEvent{done.cursor(), s.received});
      return Status::Ok();
    }
    case Opcode::kDeliver: {
      v1::Deliver d;
      if (!Parse(f, &d)) return Unavailable("malformed DELIVER");
      IRIS_RETURN_IF_ERROR(Ingest(s, d.message(), false));
      v1::DeliverAck ack;
      ack.set_cursor(d.message().id());
      IRIS_RETURN_IF_ERROR(Write(s, Opcode::kDeliverAck, ack));
      return MaybeUploadKeys(s);
    }
    case Opcode::kSendAck: {
      v1::SendAck a;
      if (!Parse(f, &a)) return Unavailable("malformed SEND_ACK");
      auto it = s.in_flight.find(a.request_id());
      if (it == s.in_flight.end() || it->second.kind != InFlight::kSend) return Status::Ok();
      InFlight r = it->second;
      s.in_flight.erase(it);
      if (r.group_id != 0) {
        s.busy_groups.erase(r.group_id);
      } else {
        s.busy.erase(r.recipient);
      }
      queue_dirty_ = true;
      {
        std::lock_guard<std::mutex> l(db_mu_);
        LocalStore::Transaction tx(*store_);
        // A sealed receipt is not part of the sent history.
        // What the user sent goes to this account's other devices once the server has it
        // (a cancelled or refused message never does): a transcript, queued in the same
        // transaction.
        if (r.queued_kind == kQueuedMessage) {
          // Named by the ids the recipient's devices will name in their receipts.
          std::vector<uint64_t> ids(a.copy_ids().begin(), a.copy_ids().end());
          if (ids.empty() && a.message_id() != 0) ids.push_back(a.message_id());
          IRIS_RETURN_IF_ERROR(QueueTranscript(r.idem, r.recipient, 0, ids));
        } else if (r.queued_kind == kQueuedGroupMessage) {
          IRIS_RETURN_IF_ERROR(QueueTranscript(r.idem, 0, r.group_id));
        }
        std::optional<QueuedSend> queued;  // read before it leaves the queue
        if (r.queued_kind == kQueuedMessage || r.queued_kind == kQueuedResend) {
          IRIS_ASSIGN_OR_RETURN(queued, store_->FindQueued(r.idem));
        }
        IRIS_RETURN_IF_ERROR(store_->Dequeue(r.seq, r.receipt ? 0 : a.message_id(),
                                             r.receipt ? 0 : clock_.WallMillis()));
        if (queued) IRIS_RETURN_IF_ERROR(RecordCopies(r, a, *queued));
        // The server counts this user as having written to the recipient: later messages
        // to it go without the flag (also when this one was cancelled meanwhile).
        if (r.adds_contact) {
          IRIS_RETURN_IF_ERROR(
              store_->MarkContactAdded(r.recipient, a.message_id(), clock_.WallMillis()));
        }
        IRIS_RETURN_IF_ERROR(tx.Commit());
        retry_at_.erase(r.seq);
        attempts_.erase(r.seq);
      }
      Emit(SendAckedEvent{LocalId(r.idem), r.recipient, a.message_id(), a.duplicate(), r.receipt,
                          r.group_id, r.adds_contact});
      return Status::Ok();
    }
    case Opcode::kOk: {
      v1::Ok ok;
      Parse(f, &ok);
      auto it = s.in_flight.find(ok.request_id());
      if (it == s.in_flight.end()) return Status::Ok();
      InFlight r = it->second;
      s.in_flight.erase(it);
      if (r.kind == InFlight::kSend) {  // a receipt
        s.busy.erase(r.recipient);
        queue_dirty_ = true;
        {
          std::lock_guard<std::mutex> l(db_mu_);
          IRIS_RETURN_IF_ERROR(store_->Dequeue(r.seq, 0, 0));
          retry_at_.erase(r.seq);
          attempts_.erase(r.seq);
        }
        Emit(SendAckedEvent{LocalId(r.idem), r.recipient, 0, false, true});
      } else if (r.kind == InFlight::kKeysUpload) {
        s.upload_in_flight = false;
        s.upload_attempts = 0;
        {
          std::lock_guard<std::mutex> l(db_mu_);
          LocalStore::Transaction tx(*store_);
          IRIS_RETURN_IF_ERROR(store_->PutU64(kKeysUploaded, 1));
          IRIS_RETURN_IF_ERROR(
              store_->PutU64(kPreKeysOnServer, store_->GetU64(kPreKeysOnServer) + r.prekeys));
          if (r.signed_prekey) IRIS_RETURN_IF_ERROR(store_->PutU64(kSignedPreKeyUnpublished, 0));
          // A fresh pool is counted exactly: the first check comes an interval later.
          if (store_->GetU64(kPreKeysChecked) == 0) {
            IRIS_RETURN_IF_ERROR(
                store_->PutU64(kPreKeysChecked, static_cast<uint64_t>(clock_.WallMillis())));
          }
          IRIS_RETURN_IF_ERROR(tx.Commit());
        }
        Emit(KeysUploadedEvent{r.prekeys, r.identity});
        return MaybeUploadKeys(s);
      } else if (r.kind == InFlight::kSettings && r.device_list) {
        // A new device list: current from now on; this device's other devices change.
        DevicesEvent ev;
        ev.request = r.history;
        ev.version = r.device_list->version();
        {
          std::lock_guard<std::mutex> l(db_mu_);
          IRIS_RETURN_IF_ERROR(cipher_->SaveDeviceList(*r.device_list).status());
        }
        for (const v1::Device& d : r.device_list->devices()) {
          ev.devices.push_back(DeviceEntry{d.id(), e2ee::KeyFingerprint(d.identity_key()),
                                           d.id() == device_id_.load()});
        }
        std::sort(ev.devices.begin(), ev.devices.end(),
                  [](const DeviceEntry& a, const DeviceEntry& b) { return a.id < b.id; });
        Emit(ev);
        return FlushSettingsGets(s);
      } else if (r.kind == InFlight::kSettings) {
        // Confirmed, unless the user changed them again meanwhile (that SETTINGS follows).
        bool more = false;
        {
          std::lock_guard<std::mutex> l(db_mu_);
          IRIS_RETURN_IF_ERROR(SettleSettingsLocked(*r.settings, /*refused=*/false));
          // A full frame: the block changes beyond it go next.
          more = (r.settings->block_size() == kMaxConsentIdsPerFrame ||
                  r.settings->unblock_size() == kMaxConsentIdsPerFrame) &&
                 SettingsPendingLocked();
        }
        if (more) IRIS_RETURN_IF_ERROR(WritePendingSettings(s));
        return FlushSettingsGets(s);
      }
      return Status::Ok();
    }
    case Opcode::kError: {
      v1::Error e;
      if (!Parse(f, &e)) return Unavailable("malformed ERROR");
      const Status st = FromError(e);
      auto it = s.in_flight.find(e.request_id());
      if (it != s.in_flight.end()) {
        InFlight r = it->second;
        s.in_flight.erase(it);
        switch (r.kind) {
          case InFlight::kSend: IRIS_RETURN_IF_ERROR(OnSendError(s, r, st)); break;
          case InFlight::kKeysFetch: {
            s.busy.erase(r.recipient);
            queue_dirty_ = true;
            if (r.sender_key_group != 0 && st.code() == StatusCode::kForbidden) {
              // The server did not accept the group for this fetch (its membership moved on):
              // fetch again at once without it, within the per-user budget.
              plain_fetch_.insert(r.recipient);
              break;
            }
            uint32_t attempts;
            std::string local_id;
            {
              std::lock_guard<std::mutex> l(db_mu_);
              attempts = ++fetch_attempts_[r.recipient];
              fetch_retry_at_[r.recipient] =
                  clock_.MonoMillis() + backoff_.DelayMs(attempts, st.retry_after_ms());
              if (st.code() == StatusCode::kNotFound) unreachable_.insert(r.recipient);
              for (const QueuedSend& q : store_->Queue()) {
                if (q.recipient == r.recipient) {
                  local_id = LocalId(q.idem_key);
                  break;
                }
              }
            }
            Status why = st.code() == StatusCode::kNotFound
                             ? NotFound("user " + std::to_string(r.recipient) +
                                        " has not published encryption keys (never logged in "
                                        "with an E2EE client?)")
                             : st;
            if (!local_id.empty())
              Emit(SendFailedEvent{local_id, r.recipient, why, false, attempts});
            break;
          }
          case InFlight::kKeysUpload:
            s.upload_in_flight = false;
            if (IsRetryable(st.code())) {
              // Refused for now (e.g. a reinstall within the server's KEYS_UPLOAD budget):
              // again after the server's hint.
              s.upload_retry_at =
                  clock_.MonoMillis() + backoff_.DelayMs(++s.upload_attempts, st.retry_after_ms());
              break;
            }
            Emit(RequestFailedEvent{"keys_upload", st});
            break;
          case InFlight::kKeysCheck: {
            s.check_in_flight = false;
            {
              std::lock_guard<std::mutex> l(db_mu_);  // no retry before the next interval
              IRIS_RETURN_IF_ERROR(
                  store_->PutU64(kPreKeysChecked, static_cast<uint64_t>(clock_.WallMillis())));
            }
            Emit(RequestFailedEvent{"keys_check", st});
            break;
          }
          case InFlight::kPresence: Emit(RequestFailedEvent{"presence", st}); break;
          case InFlight::kSettings: {
            if (r.device_list) {
              IRIS_RETURN_IF_ERROR(FlushSettingsGets(s));
              Emit(RequestFailedEvent{"devices", st, r.history});
              break;
            }
            // Block changes refused for good (BAD_REQUEST, TOO_LARGE, ...) are dropped, and
            // what else is pending goes again at once; after a retryable refusal everything
            // stays pending for the next connection.
            bool again = false;
            if (!IsRetryable(st.code()) &&
                (r.settings->block_size() > 0 || r.settings->unblock_size() > 0)) {
              std::lock_guard<std::mutex> l(db_mu_);
              IRIS_RETURN_IF_ERROR(SettleSettingsLocked(*r.settings, /*refused=*/true));
              again = SettingsPendingLocked();
            }
            if (again) IRIS_RETURN_IF_ERROR(WritePendingSettings(s));
            IRIS_RETURN_IF_ERROR(FlushSettingsGets(s));
            Emit(RequestFailedEvent{"settings", st});
            break;
          }
          case InFlight::kSettingsGet:
            Emit(RequestFailedEvent{r.devices_op != 0 ? "devices" : "settings_get", st, r.history});
            break;
          case InFlight::kHistory: Emit(RequestFailedEvent{"history", st, r.history}); break;
          case InFlight::kGroupGet:
            Emit(RequestFailedEvent{r.what, st, r.group ? r.group->request : 0});
            break;
        }
      }
      if (e.fatal()) return st;
      return Status::Ok();
    }
    case Opcode::kKeysBundle: {
      v1::KeysBundle b;
      if (!Parse(f, &b)) return Unavailable("malformed KEYS_BUNDLE");
      auto it = s.in_flight.find(b.request_id());
      if (it == s.in_flight.end()) return Status::Ok();
      InFlight r = it->second;
      s.in_flight.erase(it);
      if (r.kind == InFlight::kKeysCheck) return OnKeysCheck(s, b);
      s.busy.erase(r.recipient);
      queue_dirty_ = true;
      b.set_user(r.recipient);
      Status st;
      std::string local_id;
      uint32_t attempts = 0;
      std::optional<IdentityChangedEvent> changed;
      std::vector<Event> retried;
      bool list_refused = false;
      bool permanent = false;
      {
        std::lock_guard<std::mutex> l(db_mu_);
        st = ProcessFetchedKeys(r.recipient, b, &changed, &list_refused);
        if (st.ok()) {
          // Messages kept because their linked device was not in the list known here.
          LocalStore::Transaction tx(*store_);
          std::vector<StoredMessage> now_readable;
          Status retry = RetryKept(r.recipient, /*linked_only=*/true, &now_readable, &retried);
          if (retry.ok() && options_.delivery_receipts) {
            std::vector<uint64_t> ids;
            for (const StoredMessage& m : now_readable) {
              if (!m.outgoing) ids.push_back(m.id);
            }
            if (!ids.empty()) retry = QueueReceipt(&s, r.recipient, v1::DELIVERED, ids, true);
          }
          if (retry.ok()) retry = tx.Commit();
          if (!retry.ok()) return retry;  // a local failure: the connection starts over
        }
        bool ready = st.ok();
        for (uint32_t d : TargetDevices(r.recipient)) {
          ready = ready && cipher_->HasSession(r.recipient, d);
        }
        if (ready) {
          fetch_attempts_.erase(r.recipient);
          fetch_retry_at_.erase(r.recipient);
          unreachable_.erase(r.recipient);
        } else if (st.ok()) {
          // A listed device's keys were missing from the answer: again later, not at once
          // (every fetch uses up a one-time prekey of each device).
          attempts = ++fetch_attempts_[r.recipient];
          fetch_retry_at_[r.recipient] = clock_.MonoMillis() + backoff_.DelayMs(attempts);
        } else {
          unreachable_.insert(r.recipient);
          attempts = ++fetch_attempts_[r.recipient];
          fetch_retry_at_[r.recipient] = clock_.MonoMillis() + backoff_.DelayMs(attempts);
          for (const QueuedSend& q : store_->Queue()) {
            if (q.recipient == r.recipient) {
              local_id = LocalId(q.idem_key);
              // A device list its primary device did not sign: nothing may be encrypted
              // for that user's devices; the message fails for good (the next one to the
              // user fetches again).
              if (list_refused) {
                IRIS_RETURN_IF_ERROR(store_->Dequeue(q.seq, 0, 0));
                attempts_.erase(q.seq);
                retry_at_.erase(q.seq);
                permanent = true;
              }
              break;
            }
          }
        }
      }
      if (changed) Emit(*changed);
      for (const Event& e : retried) Emit(e);
      if (!st.ok() && !local_id.empty()) {
        Emit(SendFailedEvent{local_id, r.recipient, st, permanent, attempts});
      }
      return Status::Ok();
    }
    case Opcode::kSettingsInfo: {
      v1::SettingsInfo info;
      if (!Parse(f, &info)) return Unavailable("malformed SETTINGS_INFO");
      auto it = s.in_flight.find(info.request_id());
      if (it == s.in_flight.end() || it->second.kind != InFlight::kSettingsGet) {
        return Status::Ok();
      }
      if (it->second.devices_op != 0) {
        const InFlight r = it->second;
        s.in_flight.erase(it);
        return OnDevicesInfo(s, r, info);
      }
      SettingsEvent ev;
      ev.request = it->second.history;
      s.in_flight.erase(it);
      ev.read_receipts = info.read_receipts();
      ev.share_presence = info.share_presence();
      ev.group_invites = info.group_invites() == v1::GROUP_INVITES_CONTACTS
                             ? GroupInvites::kContacts
                             : GroupInvites::kEveryone;
      ev.blocked.assign(info.blocked().begin(), info.blocked().end());
      Emit(ev);
      return Status::Ok();
    }
    case Opcode::kHistoryPage: {
      v1::HistoryPage page;
      if (!Parse(f, &page)) return Unavailable("malformed HISTORY_PAGE");
      return OnHistoryPage(s, page);
    }
    case Opcode::kGroupInfo: {
      v1::GroupInfo g;
      if (!Parse(f, &g)) return Unavailable("malformed GROUP_INFO");
      return OnGroupInfo(s, g);
    }
    case Opcode::kPresence: {
      v1::Presence p;
      if (Parse(f, &p)) Emit(PresenceEvent{p.user(), p.online(), p.last_seen_ms()});
      return Status::Ok();
    }
    case Opcode::kTyping: {
      v1::Typing t;
      if (Parse(f, &t)) Emit(TypingEvent{t.user(), t.typing()});
      return Status::Ok();
    }
    case Opcode::kPing: {
      v1::Ping p;
      Parse(f, &p);
      v1::Pong pong;
      pong.set_nonce(p.nonce());
      return Write(s, Opcode::kPong, pong);
    }
    default: return Status::Ok();  // PONG, and anything newer than this client
  }
}

Status Client::Impl::RequestGroupPage(Session& s, std::shared_ptr<GroupInfoEvent> paging,
                                      uint64_t members_after, const char* what) {
  v1::GroupGet m;
  m.set_request_id(s.next_request_id++);
  m.set_group_id(paging->group_id);
  m.set_members_after(members_after);
  InFlight r{InFlight::kGroupGet};
  r.recipient = paging->group_id;
  r.group = std::move(paging);
  r.what = what;
  s.in_flight[m.request_id()] = std::move(r);
  return Write(s, wire::Opcode::kGroupGet, m);
}

Status Client::Impl::OnGroupInfo(Session& s, const v1::GroupInfo& g) {
  auto it = s.in_flight.find(g.request_id());
  if (it == s.in_flight.end() || it->second.kind != InFlight::kGroupGet) return Status::Ok();
  std::shared_ptr<GroupInfoEvent> paging = std::move(it->second.group);
  const char* what = it->second.what;
  s.in_flight.erase(it);
  if (paging->group_id == 0) paging->group_id = g.group_id();  // a create's answer
  if (paging->pages > 0 && paging->version != g.version()) {
    // The membership changed between two pages: start over, so that the list is one version.
    const uint64_t group_id = paging->group_id;
    const uint64_t request = paging->request;
    paging = std::make_shared<GroupInfoEvent>();
    paging->group_id = group_id;
    paging->request = request;
    return RequestGroupPage(s, std::move(paging), 0, what);
  }
  ++paging->pages;
  paging->kind = static_cast<GroupKind>(g.kind());
  paging->owner = g.owner();
  paging->version = g.version();
  paging->members.insert(paging->members.end(), g.members().begin(), g.members().end());
  // A server without paging never sets members_has_more: its one answer is the whole list.
  // A page that lists nobody cannot advance the cursor: take what was received.
  if (g.members_has_more() && g.members_size() > 0) {
    return RequestGroupPage(s, std::move(paging), g.members_cursor(), what);
  }
  std::string name;
  if (paging->request != 0) {
    std::lock_guard<std::mutex> l(cmd_mu_);
    if (auto n = group_names_.find(paging->request); n != group_names_.end()) {
      name = std::move(n->second);
      group_names_.erase(n);
    }
  }
  {
    std::lock_guard<std::mutex> l(db_mu_);
    IRIS_RETURN_IF_ERROR(RecordGroup(*paging, name));
  }
  Emit(*paging);
  return Status::Ok();
}

Status Client::Impl::RecordGroup(const GroupInfoEvent& g, const std::string& name) {
  IRIS_ASSIGN_OR_RETURN(std::optional<LocalGroup> old, store_->GetGroup(g.group_id));
  LocalGroup rec;
  rec.id = g.group_id;
  if (old) {
    v1::GroupInfo known;
    known.ParseFromString(old->info);
    rec.name = old->name;
    if (known.version() > g.version) {  // an older answer than what an event told already
      if (name.empty()) return Status::Ok();
      old->name = name;
      return store_->PutGroup(*old);
    }
  }
  if (!name.empty()) rec.name = name;
  v1::GroupInfo info;
  info.set_group_id(g.group_id);
  info.set_kind(static_cast<v1::GroupKind>(g.kind));
  info.set_owner(g.owner);
  info.set_version(g.version);
  for (uint64_t m : g.members) info.add_members(m);
  info.set_member_count(static_cast<uint32_t>(g.members.size()));
  rec.info = info.SerializeAsString();
  rec.member = std::find(g.members.begin(), g.members.end(), user_id_.load()) != g.members.end();
  return store_->PutGroup(rec);
}

Status Client::Impl::IngestGroupEvent(const v1::Envelope& e, std::vector<Event>* out) {
  v1::GroupInfo info;
  if (!info.ParseFromString(e.body()) || info.group_id() == 0) return Status::Ok();
  GroupEvent ev;
  ev.id = e.id();
  ev.group_id = info.group_id();
  ev.actor = e.sender();
  ev.kind = static_cast<GroupKind>(info.kind());
  ev.owner = info.owner();
  ev.version = info.version();
  IRIS_ASSIGN_OR_RETURN(std::optional<LocalGroup> old, store_->GetGroup(info.group_id()));
  v1::GroupInfo known;
  if (old) known.ParseFromString(old->info);
  const uint64_t self = user_id_.load();
  if (info.members_has_more()) {
    // A group over 256 members (broadcast): the event lists nobody; keep the known list.
    ev.member = old ? old->member : true;
    *info.mutable_members() = known.members();
  } else {
    ev.members.assign(info.members().begin(), info.members().end());
    const std::set<uint64_t> now(info.members().begin(), info.members().end());
    const std::set<uint64_t> before(known.members().begin(), known.members().end());
    for (uint64_t m : now) {
      if (before.count(m) == 0) ev.added.push_back(m);
    }
    for (uint64_t m : before) {
      if (now.count(m) == 0) ev.removed.push_back(m);
    }
    ev.member = now.count(self) != 0;
  }
  if (!old || known.version() <= info.version()) {
    LocalGroup rec;
    rec.id = info.group_id();
    rec.name = old ? old->name : "";
    rec.member = ev.member;
    info.set_members_has_more(false);
    info.set_members_cursor(0);
    info.set_member_count(static_cast<uint32_t>(info.members_size()));
    rec.info = info.SerializeAsString();
    IRIS_RETURN_IF_ERROR(store_->PutGroup(rec));
  }
  out->push_back(std::move(ev));
  return Status::Ok();
}

Result<std::string> Client::Impl::PrepareGroupMessage(const QueuedSend& q) {
  const uint64_t group = q.recipient;
  const uint64_t self = user_id_.load();
  IRIS_ASSIGN_OR_RETURN(std::optional<LocalGroup> g, store_->GetGroup(group));
  if (!g) return NotFound("no group " + std::to_string(group) + " is known here");
  if (!g->member) {
    return Forbidden("you are no longer a member of group " + std::to_string(group));
  }
  v1::GroupInfo info;
  info.ParseFromString(g->info);
  if (info.kind() != v1::E2EE) {
    return BadRequest("group " + std::to_string(group) +
                      " is not an end-to-end encrypted group (this client sends to E2EE groups "
                      "only)");
  }
  std::set<uint64_t> members(info.members().begin(), info.members().end());
  members.erase(self);
  if (members.empty()) return BadRequest("the group has no other members");
  const std::vector<uint64_t> holders = store_->GroupKeyHolders(group);
  // Rotation: someone who holds the current sender key has left or was removed, so it
  // could decrypt what is encrypted with it: make a new key and give it to members only.
  bool rotate = false;
  for (uint64_t h : holders) rotate = rotate || members.count(h) == 0;
  if (rotate) {
    IRIS_RETURN_IF_ERROR(cipher_->RotateSenderKey(group, self));
    IRIS_RETURN_IF_ERROR(store_->ClearGroupKeyHolders(group));
  }
  std::set<uint64_t> missing = members;
  if (!rotate) {
    for (uint64_t h : holders) missing.erase(h);
  }
  // Always through SenderKeyDistributionFor: it makes the key when there is none.
  IRIS_ASSIGN_OR_RETURN(std::string skdm, cipher_->SenderKeyDistributionFor(group, self));
  if (!missing.empty()) {
    const std::string payload = e2ee::EncodeSenderKeyDistribution({group, skdm});
    for (uint64_t m : missing) IRIS_RETURN_IF_ERROR(QueueDistribution(group, m, payload));
  }
  return cipher_->EncryptGroup(group, self, q.payload);
}

Status Client::Impl::QueueDistribution(uint64_t group, uint64_t member,
                                       const std::string& payload) {
  QueuedSend d;
  d.idem_key = std::string(UuidBytes(uuids_.Next()));
  d.recipient = member;
  d.kind = kQueuedSenderKey;
  d.payload = payload;
  d.created_ms = clock_.WallMillis();
  IRIS_RETURN_IF_ERROR(store_->Enqueue(d).status());
  queue_dirty_ = true;
  // The first distribution of this key a member was given (it outlives the holders, which a
  // device-list change resets): a request from its device linked later gets that one again.
  if (auto dist = e2ee::DecodeSenderKeyDistribution(payload); dist.ok()) {
    IRIS_ASSIGN_OR_RETURN(std::optional<std::string> given,
                          store_->Get(SenderKeyGivenKey(group, member)));
    if (!given || !cipher_->SameSenderKey(*given, dist->message)) {
      IRIS_RETURN_IF_ERROR(store_->Put(SenderKeyGivenKey(group, member), dist->message));
    }
  }
  return store_->AddGroupKeyHolder(group, member);
}

Result<std::optional<v1::GroupInfo>> Client::Impl::GroupWithFellowMember(uint64_t group,
                                                                         uint64_t user) {
  IRIS_ASSIGN_OR_RETURN(std::optional<LocalGroup> g, store_->GetGroup(group));
  if (!g || !g->member) return std::optional<v1::GroupInfo>();
  v1::GroupInfo info;
  if (!info.ParseFromString(g->info) ||
      std::find(info.members().begin(), info.members().end(), user) == info.members().end()) {
    return std::optional<v1::GroupInfo>();
  }
  return std::optional<v1::GroupInfo>(std::move(info));
}

Status Client::Impl::RequestSenderKey(uint64_t sender, uint64_t group, uint32_t device) {
  // Only of a fellow member of a group known here.
  IRIS_ASSIGN_OR_RETURN(std::optional<v1::GroupInfo> info, GroupWithFellowMember(group, sender));
  if (!info) return Status::Ok();
  if (!sender_keys_asked_.insert({sender, group, device}).second) return Status::Ok();
  e2ee::ControlContent c;
  c.kind = e2ee::kControlSenderKeyRequest;
  c.message_ids = {group, device};
  QueuedSend q;
  q.idem_key = std::string(UuidBytes(uuids_.Next()));
  q.recipient = sender;
  q.kind = kQueuedControl;
  q.payload = e2ee::EncodeControl(c);
  q.created_ms = clock_.WallMillis();
  IRIS_RETURN_IF_ERROR(store_->Enqueue(q).status());
  queue_dirty_ = true;
  return Status::Ok();
}

Status Client::Impl::AnswerSenderKeyRequest(uint64_t member, uint64_t group) {
  // Only a fellow member, only for a group this device has sent to (it has a key to give),
  // and only this device's current key (a rotated-away key is never handed out).
  IRIS_ASSIGN_OR_RETURN(std::optional<v1::GroupInfo> info, GroupWithFellowMember(group, member));
  if (!info || info->kind() != v1::E2EE) return Status::Ok();
  const uint64_t self = user_id_.load();
  if (!cipher_->HasSenderKey(group, self)) return Status::Ok();
  // A member given this key before gets the distribution it was given (from that point on,
  // never earlier: a member who joined later gets no earlier messages); anyone else gets it
  // from now on.
  IRIS_ASSIGN_OR_RETURN(std::optional<std::string> given,
                        store_->Get(SenderKeyGivenKey(group, member)));
  IRIS_ASSIGN_OR_RETURN(std::string skdm,
                        given ? cipher_->SenderKeyDistributionSince(group, self, *given)
                              : cipher_->SenderKeyDistributionFor(group, self));
  const std::string payload = e2ee::EncodeSenderKeyDistribution({group, skdm});
  // A distribution still waiting for this member (not encrypted yet) carries this one.
  for (const QueuedSend& q : store_->Queue()) {
    if (q.recipient != member || q.kind != kQueuedSenderKey || !q.wire_body.empty()) continue;
    if (auto d = e2ee::DecodeSenderKeyDistribution(q.payload); d.ok() && d->group_id == group) {
      queue_dirty_ = true;
      return store_->SetPayload(q.seq, payload);
    }
  }
  return QueueDistribution(group, member, payload);
}

bool Client::Impl::InFlightSend(const Session& s, int64_t seq) {
  for (const auto& [rid, r] : s.in_flight) {
    if (r.kind == InFlight::kSend && r.seq == seq) return true;
  }
  return false;
}

Status Client::Impl::Ingest(Session& s, const v1::Envelope& e, bool catch_up) {
  std::vector<Event> events;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    LocalStore::Transaction tx(*store_);
    IRIS_RETURN_IF_ERROR(IngestLocked(s, e, catch_up, &events));
    IRIS_RETURN_IF_ERROR(tx.Commit());
  }
  for (const Event& ev : events) Emit(ev);
  return Status::Ok();
}

Status Client::Impl::IngestPage(Session& s, const v1::SyncPage& page) {
  // One local transaction for the whole page; events only once it is durable.
  std::vector<Event> events;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    LocalStore::Transaction tx(*store_);
    for (const v1::Envelope& e : page.messages()) {
      IRIS_RETURN_IF_ERROR(IngestLocked(s, e, true, &events));
    }
    IRIS_RETURN_IF_ERROR(tx.Commit());
  }
  for (const Event& ev : events) Emit(ev);
  return Status::Ok();
}

Status Client::Impl::IngestLocked(Session& s, const v1::Envelope& e, bool catch_up,
                                  std::vector<Event>* out) {
  std::vector<Event>& events = *out;
  {
    if (e.id() <= store_->Cursor()) return Status::Ok();  // stored before
    StoredIncoming rec;
    rec.id = e.id();
    rec.peer = e.sender();
    rec.sent_at_ms = e.sent_at_ms();
    rec.kind = static_cast<uint8_t>(e.kind());
    if (e.kind() == v1::MESSAGE) {
      bool deliver_receipt = false;
      if (e.group_id() != 0) {
        // Sender Keys; no receipts for group messages (one per member would flood the sender).
        IRIS_RETURN_IF_ERROR(DecryptGroupIncoming(e, catch_up, &rec, &events));
      } else {
        IRIS_RETURN_IF_ERROR(DecryptIncoming(&s, e, catch_up, /*retry=*/false, &rec, &events));
        // A delivered text message (not a control message, not a failure) gets a receipt.
        deliver_receipt = rec.ok && rec.kind == static_cast<uint8_t>(v1::MESSAGE);
      }
      if (options_.delivery_receipts && deliver_receipt) {
        // The RECEIPT frame for the server and the sealed copy for the author (only what
        // decrypted is receipted: the author learns nothing from a receipt it cannot
        // authenticate, and encrypting needs a working session).
        IRIS_RETURN_IF_ERROR(QueueReceipt(&s, e.sender(), v1::DELIVERED, {e.id()}, true));
      }
    } else if (e.kind() == v1::RECEIPT) {
      // The server's plaintext copy: the server writes it and could forge it, so it is
      // kept for the record and never reported (the author's sealed copy is).
      rec.body = e.body();
      rec.ok = false;
      rec.error = "plaintext receipt ignored: not end-to-end authenticated";
    } else if (e.kind() == v1::GROUP_EVENT) {
      rec.body = e.body();
      rec.group_id = e.group_id();
      IRIS_RETURN_IF_ERROR(IngestGroupEvent(e, &events));
    } else {
      rec.body = e.body();
    }
    IRIS_RETURN_IF_ERROR(store_->InsertIncoming(rec).status());
    IRIS_RETURN_IF_ERROR(store_->SetCursor(e.id()));
  }
  ++s.received;
  return Status::Ok();
}

namespace {

// libsignal errors that mean "the session this message belongs to is gone" (the peer
// built it from keys this install no longer has, e.g. after a re-install, or a one-time
// prekey was used twice), or a gap beyond the skipped-key limit: only a new session and a
// re-send from the sender recover the message.
bool LostSession(int signal_error) {
  return signal_error == SG_ERR_NO_SESSION || signal_error == SG_ERR_INVALID_MAC ||
         signal_error == SG_ERR_INVALID_KEY_ID || signal_error == SG_ERR_INVALID_MESSAGE ||
         signal_error == SG_ERR_INVALID_KEY;
}

}  // namespace

Status Client::Impl::DecryptIncoming(Session* s, const v1::Envelope& e, bool catch_up, bool retry,
                                     StoredIncoming* rec, std::vector<Event>* out) {
  MessageEvent ev;
  ev.id = e.id();
  ev.sender = e.sender();
  ev.sent_at_ms = e.sent_at_ms();
  ev.from_catch_up = catch_up;
  const uint32_t device = e.sender_device() == 0 ? 1 : e.sender_device();
  ev.sender_device = device;
  const std::string old_key = cipher_->SavedIdentity(e.sender());
  auto d = cipher_->Decrypt(e.sender(), e.body(), device);
  // A local failure (SQLite) says nothing about the message: the caller rolls back and the
  // cursor stays before it, so it is decrypted again later. Never stored as "undecryptable".
  if (!d.ok() && d.status().code() == StatusCode::kInternal) {
    return Internal("local error while decrypting message " + std::to_string(e.id()) +
                    " (it stays unread and is processed again): " + d.status().message());
  }
  if (d.ok()) {
    const std::string new_key = cipher_->SavedIdentity(e.sender());
    if (!old_key.empty() && new_key != old_key) {
      out->push_back(IdentityChangedEvent{e.sender(), e2ee::KeyFingerprint(old_key),
                                          e2ee::KeyFingerprint(new_key), false, false});
    }
    if (retry) IRIS_RETURN_IF_ERROR(store_->RemoveUndecryptable(e.id()));
    ev.retried = retry;
    if (d->consumed_prekey) {
      const uint64_t left = store_->GetU64(kPreKeysOnServer);
      IRIS_RETURN_IF_ERROR(store_->PutU64(kPreKeysOnServer, left > 0 ? left - 1 : 0));
    }
    rec->ok = true;
    rec->error.clear();
    if (e2ee::IsTranscript(d->content_type)) {
      // A message this account sent from another of its devices (to a user, or a group).
      const bool group = d->content_type == e2ee::kContentGroupTranscript;
      auto t = e2ee::DecodeTranscript(d->text, d->content_type == e2ee::kContentTranscriptIds);
      if (e.sender() != user_id_.load() || !t.ok()) {
        rec->kind = kIncomingControl;
        rec->ok = false;
        rec->error = e.sender() != user_id_.load()
                         ? "a sent-message transcript from another user: ignored"
                         : t.status().message();
        return Status::Ok();
      }
      rec->kind = kIncomingSentByOwnDevice;
      rec->peer = group ? e.sender() : t->recipient;
      rec->group_id = group ? t->recipient : 0;
      rec->body = t->text;
      // The recipient's receipts name these ids: they are matched to this transcript.
      IRIS_RETURN_IF_ERROR(store_->RecordTranscriptCopies(e.id(), t->recipient, t->copy_ids));
      ev.outgoing = true;
      ev.sent_to = group ? 0 : t->recipient;
      ev.group_id = rec->group_id;
      ev.text = std::move(t->text);
      ev.sender_clock_ms = d->sender_ms;
      out->push_back(std::move(ev));
      return Status::Ok();
    }
    // Each content type once: control -> session reset, receipt -> ReceiptEvent, text ->
    // MessageEvent (the caller receipts only the last).
    if (d->content_type == e2ee::kContentReceipt) {
      // An end-to-end encrypted receipt: authenticated by the session with its author.
      return IngestSealedReceipt(e, *d, rec, out);
    }
    if (d->content_type == e2ee::kContentSenderKey) {
      // A member's sender key for a group: stored in the Signal store, never shown.
      rec->kind = kIncomingControl;
      rec->body.clear();  // key material stays in the sender-key store only
      auto dist = e2ee::DecodeSenderKeyDistribution(d->text);
      Status st = dist.ok() ? cipher_->ProcessSenderKeyDistribution(e.sender(), *dist, device)
                            : dist.status();
      if (st.code() == StatusCode::kInternal) return st;
      if (!st.ok()) {
        rec->ok = false;
        rec->error = "sender key not accepted: " + st.message();
        return Status::Ok();
      }
      // The group's messages from this sender kept while its key was missing.
      std::vector<StoredMessage> now_readable;
      return RetryKept(e.sender(), /*linked_only=*/false, &now_readable, out, dist->group_id);
    }
    if (d->control) {
      rec->kind = kIncomingControl;
      rec->body = e2ee::EncodeControl(*d->control);
      // A re-send's copy for a device that did not ask for it: nothing to do.
      if (d->control->kind == e2ee::kControlFiller) return Status::Ok();
      if (d->control->kind == e2ee::kControlSenderKeyRequest) {
        const std::vector<uint64_t>& ids = d->control->message_ids;
        if (ids.size() == 2 && ids[1] == device_id_.load()) {
          // From a device not in the member's list as known here (linked since): the list
          // is fetched again first, so the key reaches that device.
          const std::vector<uint32_t> known = cipher_->DevicesOf(e.sender());
          if (std::find(known.begin(), known.end(), device) == known.end()) {
            refetch_.insert(e.sender());
          }
          return AnswerSenderKeyRequest(e.sender(), ids[0]);
        }
        return Status::Ok();  // for another device of this account
      }
      // The peer lost its sessions, so also the sender keys it held: give it ours again at
      // the next group send.
      for (const LocalGroup& g : store_->Groups()) {
        IRIS_RETURN_IF_ERROR(store_->RemoveGroupKeyHolder(g.id, e.sender()));
      }
      PeerDecryptFailedEvent f;
      f.peer = e.sender();
      f.message_ids = d->control->message_ids;
      IRIS_RETURN_IF_ERROR(ResendForPeer(e.sender(), f.message_ids, &f.resent));
      out->push_back(std::move(f));
      return Status::Ok();
    }
    rec->body = d->text;
    ev.text = std::move(d->text);
    ev.prekey_message = d->prekey_message;
    ev.sender_clock_ms = d->sender_ms;
    ev.counter = d->counter;
    ev.missing = d->missing;
    ev.reordered = d->reordered;
    out->push_back(std::move(ev));
    return Status::Ok();
  }

  const int code = cipher_->last_decrypt_error();
  rec->ok = false;
  rec->error = d.status().message();
  const std::string presented =
      code == SG_ERR_UNTRUSTED_IDENTITY ? cipher_->PreKeyMessageIdentity(e.body()) : std::string();
  if (code == SG_ERR_UNTRUSTED_IDENTITY && device > 1) {
    // A linked device whose key is not in the sender's device list as known here: kept
    // until the list is fetched (again); decrypted then if the primary device signed for
    // it, kept for good otherwise (a device the server made up).
    rec->error = "from device " + std::to_string(device) + " of user " +
                 std::to_string(e.sender()) +
                 ", which is not in that user's signed device list as this device knows it "
                 "(kept until the list is fetched again)";
    if (!retry) {
      Undecryptable u{e.id(), e.sender(), e.sent_at_ms(), e.body(), rec->error};
      u.device = device;
      IRIS_RETURN_IF_ERROR(store_->StoreUndecryptable(u));
      refetch_.insert(e.sender());
      queue_dirty_ = true;
    }
    ev.pending = true;
  } else if (code == SG_ERR_UNTRUSTED_IDENTITY &&
             cipher_->WasReplacedIdentity(e.sender(), presented)) {
    // A key the user replaced by approving another one: an old message delivered again (a
    // replay by the server). Refused for good: not kept for a retry, not offered to `trust`.
    rec->error = "refused: a replayed old message (it carries identity key " +
                 e2ee::KeyFingerprint(presented) + " of user " + std::to_string(e.sender()) +
                 ", which you replaced by approving " +
                 e2ee::KeyFingerprint(cipher_->SavedIdentity(e.sender())) + ")";
  } else if (code == SG_ERR_UNTRUSTED_IDENTITY) {
    // The sender's key changed and the user had verified the old one: keep the ciphertext
    // until the user approves the new key (TrustIdentity) - or forever.
    const std::string& key = presented;
    auto c = cipher_->Contact(e.sender());
    if (!c.ok()) return c.status();
    if (!key.empty() && key != c->refused_key) {
      IRIS_RETURN_IF_ERROR(cipher_->NoteRefusedIdentity(e.sender(), key));
      out->push_back(
          IdentityChangedEvent{e.sender(), c->fingerprint, e2ee::KeyFingerprint(key), true, true});
    }
    if (!retry) {
      Undecryptable u{e.id(), e.sender(), e.sent_at_ms(), e.body(), rec->error};
      u.device = device;
      IRIS_RETURN_IF_ERROR(store_->StoreUndecryptable(u));
    }
    ev.pending = true;
  } else if (code == SG_ERR_DUPLICATE_MESSAGE) {
    rec->error += " (this ciphertext was received before: a replay)";
  } else if (LostSession(code) && !retry) {
    if (code == SG_ERR_INVALID_MESSAGE) {
      rec->error +=
          " (made for keys this install no longer has, corrupt, or more than 2000 messages "
          "skipped: libsignal's limit)";
    }
    // Signal's automatic session reset: drop the session, start a new one from a fresh
    // bundle and ask the sender to re-send. The ciphertext is kept (it cannot be decrypted
    // by this install, but nothing is thrown away).
    Undecryptable u{e.id(), e.sender(), e.sent_at_ms(), e.body(), rec->error};
    u.device = device;
    IRIS_RETURN_IF_ERROR(store_->StoreUndecryptable(u));
    IRIS_RETURN_IF_ERROR(QueueSessionReset(e.sender(), e.id()));
    rec->error += "; asked the sender to re-send it in a new session";
  }
  (void)s;
  ev.decrypted = false;
  ev.error = rec->error;
  if (!retry) out->push_back(std::move(ev));
  return Status::Ok();
}

Status Client::Impl::QueueSessionReset(uint64_t peer, uint64_t message_id) {
  // Extend a reset request that is still waiting to be encrypted (one per peer at a time).
  for (const QueuedSend& q : store_->Queue()) {
    if (q.recipient != peer || q.kind != kQueuedControl || !q.wire_body.empty()) continue;
    auto c = e2ee::DecodeControl(q.payload);
    if (!c.ok() || c->kind != e2ee::kControlSessionReset ||
        c->message_ids.size() >= e2ee::kMaxControlIds) {
      continue;
    }
    c->message_ids.push_back(message_id);
    IRIS_RETURN_IF_ERROR(store_->SetPayload(q.seq, e2ee::EncodeControl(*c)));
    queue_dirty_ = true;
    return Status::Ok();
  }
  IRIS_RETURN_IF_ERROR(cipher_->ResetSession(peer));
  e2ee::ControlContent c;
  c.kind = e2ee::kControlSessionReset;
  c.message_ids.push_back(message_id);
  QueuedSend q;
  q.idem_key = std::string(UuidBytes(uuids_.Next()));
  q.recipient = peer;
  q.kind = kQueuedControl;
  q.payload = e2ee::EncodeControl(c);
  q.created_ms = clock_.WallMillis();
  IRIS_RETURN_IF_ERROR(store_->Enqueue(q).status());
  queue_dirty_ = true;
  return Status::Ok();
}

// ---- prekey hygiene (issue 18, item 3) ----

Status Client::Impl::MaybeRotateAndCheckKeys(Session& s) {
  const int64_t now = clock_.WallMillis();
  bool check = false;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    if (store_->GetU64(kKeysUploaded) == 0) return Status::Ok();  // the first upload first
    IRIS_ASSIGN_OR_RETURN(const bool rotated,
                          cipher_->RotateSignedPreKeyIfDue(now, options_.signed_prekey_rotation_ms,
                                                           options_.signed_prekey_grace_ms));
    if (rotated) IRIS_RETURN_IF_ERROR(store_->PutU64(kSignedPreKeyUnpublished, 1));
    const auto last = static_cast<int64_t>(store_->GetU64(kPreKeysChecked));
    check = !s.check_in_flight && now - last >= options_.prekey_check_interval_ms;
  }
  const uint64_t self = user_id_.load();
  if (!check || self == 0) return Status::Ok();
  v1::KeysFetch f;
  f.set_request_id(s.next_request_id++);
  f.set_user(self);
  s.in_flight[f.request_id()] = InFlight{InFlight::kKeysCheck};
  s.check_in_flight = true;
  return Write(s, wire::Opcode::kKeysFetch, f);
}

Status Client::Impl::OnKeysCheck(Session& s, const v1::KeysBundle& all) {
  s.check_in_flight = false;
  // The top-level fields are device 1's bundle; a linked device reads its own entry.
  const v1::KeysBundle* own = &all;
  if (const uint32_t me = device_id_.load(); me != 1) {
    own = nullptr;
    for (const v1::KeysBundle& d : all.devices()) {
      if (d.device_id() == me) own = &d;
    }
    if (own == nullptr) {  // not listed (yet): nothing known about this device's pool
      std::lock_guard<std::mutex> l(db_mu_);
      IRIS_RETURN_IF_ERROR(
          store_->PutU64(kPreKeysChecked, static_cast<uint64_t>(clock_.WallMillis())));
      return MaybeUploadKeys(s);
    }
  }
  const v1::KeysBundle& b = *own;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    LocalStore::Transaction tx(*store_);
    // The key the server just handed to us is used up: nobody else gets it.
    if (b.has_one_time_prekey() && b.one_time_prekey().id() != 0) {
      IRIS_RETURN_IF_ERROR(cipher_->DiscardPreKey(b.one_time_prekey().id()));
    }
    IRIS_RETURN_IF_ERROR(store_->PutU64(kPreKeysOnServer, b.one_time_prekeys_left()));
    IRIS_RETURN_IF_ERROR(
        store_->PutU64(kPreKeysChecked, static_cast<uint64_t>(clock_.WallMillis())));
    IRIS_RETURN_IF_ERROR(tx.Commit());
  }
  return MaybeUploadKeys(s);
}

// ---- history (the server's archive) ----

Status Client::Impl::OnHistoryPage(Session& s, const v1::HistoryPage& page) {
  auto it = s.in_flight.find(page.request_id());
  if (it == s.in_flight.end() || it->second.kind != InFlight::kHistory) return Status::Ok();
  HistoryEvent h;
  h.request = it->second.history;
  s.in_flight.erase(it);
  h.has_more = page.has_more();
  std::vector<Event> side;  // identity changes, session resets asked for by the peer
  Status st = [&]() -> Status {
    std::lock_guard<std::mutex> l(db_mu_);
    LocalStore::Transaction tx(*store_);
    std::map<uint64_t, std::vector<uint64_t>> receipts;  // sender -> ids decrypted now
    for (const v1::Envelope& e : page.messages()) {
      h.next_before = e.id();                 // descending: the last one is the oldest
      if (e.kind() != v1::MESSAGE) continue;  // the server's plaintext receipts, group events
      HistoryMessage m;
      m.id = e.id();
      m.sender = e.sender();
      m.sent_at_ms = e.sent_at_ms();
      m.group_id = e.group_id();
      const std::vector<StoredIncoming> have = store_->Incoming(e.id() - 1, 1);
      if (!have.empty() && have[0].id == e.id()) {
        // Received before: its message keys are gone, the stored copy is the message.
        if (have[0].kind == kIncomingSentByOwnDevice) {
          m.sent_to = have[0].group_id == 0 ? have[0].peer : 0;
          m.group_id = have[0].group_id;
        } else if (have[0].kind != static_cast<uint8_t>(v1::MESSAGE)) {
          continue;
        }
        m.stored_before = true;
        m.text = have[0].body;
        m.decrypted = have[0].ok;
        m.error = have[0].error;
        h.messages.push_back(std::move(m));
        continue;
      }
      if (e.group_id() != 0) {
        StoredIncoming rec;
        rec.id = e.id();
        rec.peer = e.sender();
        rec.sent_at_ms = e.sent_at_ms();
        rec.kind = static_cast<uint8_t>(v1::MESSAGE);
        std::vector<Event> ignored;  // reported in the HistoryEvent instead
        IRIS_RETURN_IF_ERROR(DecryptGroupIncoming(e, true, &rec, &ignored));
        m.decrypted = rec.ok;
        m.error = rec.error;
        m.text = rec.body;
        if (rec.ok) IRIS_RETURN_IF_ERROR(store_->InsertIncoming(rec).status());
        h.messages.push_back(std::move(m));
        continue;
      }
      StoredIncoming rec;
      rec.id = e.id();
      rec.peer = e.sender();
      rec.sent_at_ms = e.sent_at_ms();
      rec.kind = static_cast<uint8_t>(v1::MESSAGE);
      std::vector<Event> out;
      // retry = true: a failure changes nothing (no session reset for an old message, nothing
      // kept), so a later request can try again, e.g. after iris trust.
      IRIS_RETURN_IF_ERROR(DecryptIncoming(nullptr, e, true, /*retry=*/true, &rec, &out));
      for (Event& ev : out) {
        if (std::holds_alternative<IdentityChangedEvent>(ev) ||
            std::holds_alternative<PeerDecryptFailedEvent>(ev)) {
          side.push_back(std::move(ev));
        }
      }
      if (!rec.ok) {
        m.decrypted = false;
        m.error = rec.error;
        h.messages.push_back(std::move(m));
        continue;
      }
      IRIS_RETURN_IF_ERROR(store_->InsertIncoming(rec).status());
      if (rec.kind == kIncomingSentByOwnDevice) {  // a transcript: no receipt
        m.sent_to = rec.group_id == 0 ? rec.peer : 0;
        m.group_id = rec.group_id;
        m.text = rec.body;
        h.messages.push_back(std::move(m));
        continue;
      }
      if (rec.kind != static_cast<uint8_t>(v1::MESSAGE)) continue;  // a receipt or control
      if (options_.delivery_receipts) receipts[e.sender()].push_back(e.id());
      m.text = rec.body;
      h.messages.push_back(std::move(m));
    }
    for (const auto& [to, ids] : receipts) {
      for (size_t i = 0; i < ids.size(); i += 256) {
        const std::vector<uint64_t> chunk(
            ids.begin() + static_cast<std::ptrdiff_t>(i),
            ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + 256)));
        IRIS_RETURN_IF_ERROR(QueueReceipt(&s, to, v1::DELIVERED, chunk, /*sealed=*/true));
      }
    }
    return tx.Commit();
  }();
  if (!st.ok()) {
    // Rolled back (Signal sessions included): nothing of the page was kept.
    Emit(RequestFailedEvent{"history", st, h.request});
    return Status::Ok();
  }
  for (const Event& ev : side) Emit(ev);
  Emit(std::move(h));
  return Status::Ok();
}

// ---- receipts (issue 18, item 5) ----

Status Client::Impl::QueueReceipt(Session* s, uint64_t to, v1::ReceiptType type,
                                  const std::vector<uint64_t>& ids, bool sealed) {
  // Each copy coalesces with the newest queued receipt of its kind and type to the same
  // user that has not gone out yet (one receipt carries up to 256 ids, which keeps
  // receipts from eating the sender's rate limit), else is queued.
  const std::vector<QueuedSend> queue = store_->Queue();
  for (const uint8_t kind : {kQueuedReceipt, kQueuedSealedReceipt}) {
    if (kind == kQueuedSealedReceipt && !sealed) continue;
    const QueuedSend* into = nullptr;
    v1::ReceiptBody body;
    for (auto it = queue.rbegin(); it != queue.rend(); ++it) {
      if (it->recipient != to || it->kind != kind) continue;
      if (it->wire_body.empty() && (s == nullptr || !InFlightSend(*s, it->seq)) &&
          body.ParseFromString(it->payload) && body.type() == type &&
          body.message_ids_size() + ids.size() <= 256) {
        into = &*it;
      }
      break;
    }
    if (into != nullptr) {
      for (uint64_t id : ids) body.add_message_ids(id);
      IRIS_RETURN_IF_ERROR(store_->SetPayload(into->seq, body.SerializeAsString()));
      continue;
    }
    body.Clear();
    body.set_type(type);
    for (uint64_t id : ids) body.add_message_ids(id);
    QueuedSend q;
    q.idem_key = std::string(UuidBytes(uuids_.Next()));
    q.recipient = to;
    q.kind = kind;
    q.payload = body.SerializeAsString();
    q.created_ms = clock_.WallMillis();
    IRIS_RETURN_IF_ERROR(store_->Enqueue(q).status());
  }
  queue_dirty_ = true;
  return Status::Ok();
}

Status Client::Impl::ResendForPeer(uint64_t peer, const std::vector<uint64_t>& ids,
                                   std::vector<uint64_t>* resent) {
  for (uint64_t id : ids) {
    // The id is the asking device's copy: the message's first copy or another one.
    IRIS_ASSIGN_OR_RETURN(std::optional<SentMessage> sent, store_->FindSent(peer, id));
    // Only the user's messages: receipts and control messages are never re-sent.
    if (!sent || sent->sent.kind != kQueuedMessage) continue;
    QueuedSend q;
    q.idem_key = std::string(UuidBytes(uuids_.Next()));
    q.recipient = peer;
    q.created_ms = clock_.WallMillis();
    if (!sent->sealed.empty()) {
      // To the asking device only, as it was first sealed (the other devices have it).
      q.kind = kQueuedResend;
      q.payload = EncodeResend({sent->device, sent->sent.idem_key, sent->sealed});
    } else {
      // Sent before copies were kept: a new message to every device, as it always was.
      q.kind = kQueuedMessage;
      q.payload = sent->sent.payload;
    }
    IRIS_RETURN_IF_ERROR(store_->Enqueue(q).status());
    resent->push_back(sent->message_id);
  }
  if (!resent->empty()) queue_dirty_ = true;
  return Status::Ok();
}

Result<std::vector<std::string>> Client::Impl::ResendBodies(uint64_t peer,
                                                            const std::vector<uint32_t>& devices,
                                                            const Resend& resend) {
  // The asking device: the original sealed plaintext, in the session it started. The
  // others: a filler control message (no conversation counter, nothing shown).
  std::vector<uint32_t> others;
  for (uint32_t d : devices) {
    if (d != resend.device) others.push_back(d);
  }
  IRIS_ASSIGN_OR_RETURN(std::vector<std::string> mine,
                        cipher_->EncryptSealed(peer, {resend.device}, resend.sealed));
  std::vector<std::string> filler;
  if (!others.empty()) {
    e2ee::ControlContent c;
    c.kind = e2ee::kControlFiller;
    std::string sealed;
    IRIS_ASSIGN_OR_RETURN(filler, cipher_->EncryptForDevices(peer, others, e2ee::EncodeControl(c),
                                                             e2ee::kContentControl, &sealed));
  }
  std::vector<std::string> out;
  size_t next_other = 0;
  for (uint32_t d : devices) {
    out.push_back(d == resend.device ? std::move(mine.front()) : std::move(filler[next_other++]));
  }
  return out;
}

Status Client::Impl::RecordCopies(const InFlight& r, const v1::SendAck& a, const QueuedSend& q) {
  // The sent history learns the id of each copy of a 1:1 message (SEND_ACK.copy_ids, in the
  // order of the SEND's copies) and keeps the sealed plaintext for a later re-send; a
  // re-send adds the id of its one real copy to the message it re-sent.
  if (!q.wire_body.starts_with(kCopiesMarker)) return Status::Ok();
  v1::Send copies;
  if (!copies.ParseFromString(q.wire_body.substr(kCopiesMarker.size()))) return Status::Ok();
  // A single copy went as the plain body: its id is message_id. Copy ids that are not one
  // per copy, ascending from message_id, are not believed.
  bool named = a.copy_ids_size() == copies.copies_size() && a.copy_ids_size() > 0 &&
               a.copy_ids(0) == a.message_id();
  for (int i = 1; named && i < a.copy_ids_size(); ++i) named = a.copy_ids(i) > a.copy_ids(i - 1);
  auto copy_id = [&](int i) -> uint64_t {
    if (named) return a.copy_ids(i);
    return copies.copies_size() == 1 ? a.message_id() : 0;
  };
  std::vector<SentCopy> ids;
  std::string idem = r.idem;
  std::string sealed = copies.body();
  std::optional<uint32_t> only;
  if (r.queued_kind == kQueuedResend) {
    const std::optional<Resend> resend = DecodeResend(q.payload);
    if (!resend) return Status::Ok();
    idem = resend->idem;
    sealed.clear();
    only = resend->device;
  }
  for (int i = 0; i < copies.copies_size(); ++i) {
    const uint32_t device = copies.copies(i).device();
    if (copy_id(i) != 0 && (!only || device == *only)) ids.push_back({copy_id(i), device});
  }
  return store_->RecordSentCopies(idem, ids, sealed);
}

Status Client::Impl::IngestSealedReceipt(const v1::Envelope& e,
                                         const e2ee::MessageCipher::Decrypted& d,
                                         StoredIncoming* rec, std::vector<Event>* out) {
  rec->kind = static_cast<uint8_t>(v1::RECEIPT);
  rec->body = d.text;
  v1::ReceiptBody body;
  if (!body.ParseFromString(d.text) || (body.type() != v1::DELIVERED && body.type() != v1::READ)) {
    rec->ok = false;
    rec->error = "malformed encrypted receipt";
    return Status::Ok();
  }
  // Read receipts go both ways or not at all: with them off, others' are not shown either.
  if (body.type() == v1::READ && store_->GetU64(kReadReceiptsOff) != 0) return Status::Ok();
  ReceiptEvent ev;
  ev.id = e.id();
  ev.from = e.sender();
  ev.kind = body.type() == v1::READ ? ReceiptKind::kRead : ReceiptKind::kDelivered;
  // A device of the recipient names its own copy: reported as the id this device knows the
  // message by (SEND_ACK.message_id), once.
  for (uint64_t id : body.message_ids()) {
    IRIS_ASSIGN_OR_RETURN(std::optional<SentMessage> sent, store_->FindSent(e.sender(), id));
    uint64_t known = sent ? sent->message_id : id;
    if (!sent) {
      // Sent from another device of this account: reported as its transcript here.
      IRIS_ASSIGN_OR_RETURN(std::optional<uint64_t> local,
                            store_->FindTranscriptCopy(e.sender(), id));
      if (local) known = *local;
    }
    if (std::find(ev.message_ids.begin(), ev.message_ids.end(), known) == ev.message_ids.end()) {
      ev.message_ids.push_back(known);
    }
  }
  out->emplace_back(std::move(ev));
  return Status::Ok();
}

Status Client::Impl::DecryptGroupIncoming(const v1::Envelope& e, bool catch_up, StoredIncoming* rec,
                                          std::vector<Event>* out, bool retry) {
  MessageEvent ev;
  ev.id = e.id();
  ev.sender = e.sender();
  ev.sent_at_ms = e.sent_at_ms();
  ev.from_catch_up = catch_up;
  ev.group_id = e.group_id();
  rec->group_id = e.group_id();
  const uint32_t device = e.sender_device() == 0 ? 1 : e.sender_device();
  ev.sender_device = device;
  auto d = cipher_->DecryptGroup(e.group_id(), e.sender(), e.body(), device);
  if (!d.ok() && d.status().code() == StatusCode::kInternal) {
    return Internal("local error while decrypting group message " + std::to_string(e.id()) +
                    " (it stays unread and is processed again): " + d.status().message());
  }
  if (d.ok()) {
    if (retry) IRIS_RETURN_IF_ERROR(store_->RemoveUndecryptable(e.id()));
    rec->ok = true;
    rec->error.clear();
    rec->body = d->text;
    ev.text = std::move(d->text);
    ev.sender_clock_ms = d->sender_ms;
    ev.retried = retry;
  } else {
    rec->ok = false;
    rec->error = d.status().message() + " (group " + std::to_string(e.group_id()) + ")";
    ev.decrypted = false;
    ev.error = rec->error;
    // No sender key yet from a linked device whose pairwise messages are kept (its device
    // list is being fetched): its distribution is probably among them. Kept as well.
    // Otherwise no sender key means the sender's device distributed it before this device
    // existed for it (linked later): kept, and the key asked for.
    const bool no_key = !retry && cipher_->last_decrypt_error() == SG_ERR_NO_SESSION;
    bool waiting = false;
    if (no_key && device > 1) {
      for (const Undecryptable& u : store_->UndecryptableFrom(e.sender())) {
        waiting |= u.device == device && u.group_id == 0;
      }
    }
    if (no_key && !waiting && e.sender() != user_id_.load()) {
      IRIS_RETURN_IF_ERROR(RequestSenderKey(e.sender(), e.group_id(), device));
      rec->error += "; asked the sender for its key (the message is kept until it comes)";
      ev.error = rec->error;
    }
    if (no_key) {
      Undecryptable u{e.id(), e.sender(), e.sent_at_ms(), e.body(), rec->error};
      u.device = device;
      u.group_id = e.group_id();
      IRIS_RETURN_IF_ERROR(store_->StoreUndecryptable(u));
      ev.pending = true;
    }
  }
  if (!retry || d.ok()) out->push_back(std::move(ev));
  return Status::Ok();
}

}  // namespace iris::client

// ---- Devices (docs/protocol.md appendix 20, "Devices in the client") ----

namespace iris::client {

std::vector<uint32_t> Client::Impl::TargetDevices(uint64_t user) const {
  std::vector<uint32_t> devices = cipher_->DevicesOf(user);
  if (user == user_id_.load()) std::erase(devices, device_id_.load());
  return devices;
}

Status Client::Impl::ProcessFetchedKeys(uint64_t user, v1::KeysBundle& b,
                                        std::optional<IdentityChangedEvent>* changed,
                                        bool* list_refused) {
  refetch_.erase(user);
  const bool self = user == user_id_.load();
  const uint32_t me = device_id_.load();
  b.set_user(user);
  b.set_device_id(1);
  // Device 1: its bundle is the one the old fields carry. A session with it and the same
  // identity key is kept (a fetch for another device's sake does not restart it).
  const std::string old_key =
      self && me == 1 ? cipher_->LocalIdentityKey() : cipher_->SavedIdentity(user);
  if (!(self && me == 1) && !(cipher_->HasSession(user, 1) && old_key == b.identity_key())) {
    Status st = cipher_->ProcessBundle(b);
    if (st.ok() && !old_key.empty() && old_key != b.identity_key()) {
      *changed = IdentityChangedEvent{user, e2ee::KeyFingerprint(old_key),
                                      e2ee::KeyFingerprint(b.identity_key()), false, false};
    } else if (st.code() == StatusCode::kForbidden) {
      auto c = cipher_->Contact(user);
      if (c.ok() && c->refused_key != b.identity_key()) {
        *changed = IdentityChangedEvent{user, c->fingerprint,
                                        e2ee::KeyFingerprint(b.identity_key()), true, true};
      }
      cipher_->NoteRefusedIdentity(user, b.identity_key()).IgnoreError();
    }
    IRIS_RETURN_IF_ERROR(st);
  }
  // The device list: only what device 1's identity key signed counts.
  if (!b.has_device_list()) {
    if (b.devices_size() > 0 || cipher_->DeviceListOf(user)) {
      // A list once set is never unset (the primary device can list itself alone): its
      // absence now would roll back to before it.
      *list_refused = true;
      return Forbidden("the server sent keys of user " + std::to_string(user) +
                       " without the signed device list (linked devices without a list, or a "
                       "list known here left out): refused");
    }
    return cipher_->ForgetDeviceList(user);
  }
  const std::string primary =
      self && me == 1 ? cipher_->LocalIdentityKey() : cipher_->SavedIdentity(user);
  Result<v1::DeviceList> verified = cipher_->VerifyDeviceList(b.device_list(), user, primary);
  if (!verified.ok()) {
    *list_refused = true;
    return verified.status();
  }
  v1::DeviceList list = std::move(*verified);
  const std::vector<uint32_t> before = cipher_->DevicesOf(user);
  Result<bool> saved = cipher_->SaveDeviceList(list);
  if (!saved.ok()) {
    *list_refused = saved.status().code() == StatusCode::kForbidden;
    return saved.status();
  }
  const bool newer = *saved;
  if (newer && cipher_->DevicesOf(user) != before && !self) {
    // New devices hold none of this user's sender keys: the next group send distributes
    // them again (to every device of the user).
    for (const LocalGroup& g : store_->Groups()) {
      IRIS_RETURN_IF_ERROR(store_->RemoveGroupKeyHolder(g.id, user));
    }
  }
  if (!newer) list = *cipher_->DeviceListOf(user);  // an older list than one seen: ignored
  for (v1::KeysBundle& d : *b.mutable_devices()) {
    const uint32_t id = d.device_id();
    if (id <= 1 || (self && id == me) || cipher_->HasSession(user, id)) continue;
    bool listed = false;
    for (const v1::Device& l : list.devices()) listed |= l.id() == id;
    if (!listed) continue;  // not signed for: never written to
    d.set_user(user);
    // Trusted only with the key the list names (signal_store.h).
    IRIS_RETURN_IF_ERROR(cipher_->ProcessBundle(d));
  }
  return Status::Ok();
}

Status Client::Impl::OnDevicesInfo(Session& s, const InFlight& r, const v1::SettingsInfo& info) {
  const uint64_t self = user_id_.load();
  const uint32_t me = device_id_.load();
  DevicesEvent ev;
  ev.request = r.history;
  v1::DeviceList current;
  Status st;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    const std::string own_key = cipher_->LocalIdentityKey();
    if (info.has_device_list()) {
      // The primary device checks with its own key; a linked device with the primary's key
      // it saved (first use: the list must name this device with this device's key).
      std::string primary = me == 1 ? own_key : cipher_->SavedIdentity(self);
      if (primary.empty()) {
        v1::DeviceList unverified;
        unverified.ParseFromString(info.device_list().list());
        for (const v1::Device& d : unverified.devices()) {
          if (d.id() == 1) primary = d.identity_key();
        }
      }
      auto list = cipher_->VerifyDeviceList(info.device_list(), self, primary);
      if (list.ok() && me != 1) {
        bool listed = false;
        for (const v1::Device& d : list->devices()) {
          listed |= d.id() == me && d.identity_key() == own_key;
        }
        if (!listed) {
          list = Forbidden("the device list of this account does not name this device (" +
                           std::to_string(me) +
                           ") with its key: it was removed, or the list "
                           "is not the primary device's");
        }
      }
      if (list.ok()) {
        current = *list;
        auto saved = cipher_->SaveDeviceList(current);
        if (!saved.ok()) {
          st = saved.status();
        } else if (!*saved) {
          // Older than the list kept here (a replay): the kept one is the account's list.
          current = *cipher_->DeviceListOf(self);
        }
      } else if (me == 1 && r.devices_op != kDevicesList &&
                 list.status().code() == StatusCode::kForbidden) {
        // Not signed by this device: a list from before a reinstall of the primary device
        // (or not its own). The new one starts over from this device alone.
        v1::DeviceList unverified;
        if (unverified.ParseFromString(info.device_list().list())) {
          current.set_version(unverified.version());
        }
        current.clear_devices();
      } else {
        st = list.status();
      }
    }
    if (st.ok() && current.devices_size() == 0) {
      current.set_user(self);
      v1::Device* d = current.add_devices();
      d->set_id(1);
      d->set_identity_key(me == 1 ? own_key : cipher_->SavedIdentity(self));
    }
  }
  if (!st.ok()) {
    Emit(RequestFailedEvent{"devices", st, r.history});
    return Status::Ok();
  }
  auto report = [&](const v1::DeviceList& list) {
    ev.version = list.version();
    for (const v1::Device& d : list.devices()) {
      ev.devices.push_back(
          DeviceEntry{d.id(), e2ee::KeyFingerprint(d.identity_key()), d.id() == me});
    }
    std::sort(ev.devices.begin(), ev.devices.end(),
              [](const DeviceEntry& a, const DeviceEntry& b) { return a.id < b.id; });
  };
  if (r.devices_op == kDevicesList) {
    report(current);
    Emit(ev);
    return Status::Ok();
  }
  // Link or remove (on the primary device): the changed list, signed, one version up.
  v1::DeviceList next;
  next.set_user(self);
  next.set_version(current.version() + 1);
  bool found = false;
  for (const v1::Device& d : current.devices()) {
    if (d.id() == r.device) {
      found = true;
      if (r.devices_op == kDevicesRemove) continue;
      v1::Device* n = next.add_devices();
      n->set_id(d.id());
      n->set_identity_key(r.device_key);  // a relinked device: its new key
      continue;
    }
    *next.add_devices() = d;
  }
  if (r.devices_op == kDevicesRemove && !found) {
    Emit(RequestFailedEvent{
        "devices",
        NotFound("device " + std::to_string(r.device) + " is not in this account's device list"),
        r.history});
    return Status::Ok();
  }
  if (r.devices_op == kDevicesAdd && !found) {
    if (next.devices_size() >= 5) {
      Emit(RequestFailedEvent{"devices",
                              BadRequest("an account has at most 5 devices (the primary and 4 "
                                         "linked ones): remove one first"),
                              r.history});
      return Status::Ok();
    }
    v1::Device* n = next.add_devices();
    n->set_id(r.device);
    n->set_identity_key(r.device_key);
  }
  v1::Settings m;
  {
    std::lock_guard<std::mutex> l(db_mu_);
    auto signed_list = cipher_->SignDeviceList(next);
    if (!signed_list.ok()) {
      Emit(RequestFailedEvent{"devices", signed_list.status(), r.history});
      return Status::Ok();
    }
    *m.mutable_device_list() = std::move(*signed_list);
  }
  m.set_request_id(s.next_request_id++);
  InFlight w{InFlight::kSettings};
  w.settings = std::make_shared<const v1::Settings>(m);
  w.device_list = std::make_shared<const v1::DeviceList>(next);
  w.history = r.history;
  s.in_flight[m.request_id()] = std::move(w);
  return Write(s, wire::Opcode::kSettings, m);
}

}  // namespace iris::client
