#include "core/core.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "common/devices.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/trace.h"

namespace iris::core {
namespace {

// The store's answers in the CoreApi's types.
store::AppendCallback ToAppendCallback(CoreApi::SendDone done) {
  return [done = std::move(done)](Result<store::AppendOutcome> r) {
    if (!r.ok()) {
      done(r.status());
      return;
    }
    done(AppendResult{r->message_id, r->accepted_at_ms, r->duplicate});
  };
}

Result<Page> ToPage(Result<store::ScanPage> r) {
  if (!r.ok()) return r.status();
  return Page{std::move(r->messages), r->has_more, r->gap};
}

}  // namespace

Core::Core(store::InboxStore& store, EdgeSink& sink, const Clock& clock, CoreOptions options)
    : store_(store),
      sink_(sink),
      clock_(clock),
      options_(options),
      settings_(store),
      degradation_(options.degradation),
      presence_(store, sink, settings_, clock),
      groups_(store, options.groups),
      fanout_(store, clock,
              FanOutWorker::Options{std::max<uint32_t>(options.fanout_inboxes_per_sec, 1), 0,
                                    options.fanout_drop_refused}),
      readers_(options.read_workers, "iris-read"),
      writers_(options.write_workers, "iris-write") {
  presence_.set_shed([this] { return degradation_.ShedPresence(); });
  store_.SetCommitListener(
      [this](const std::vector<v1::Envelope>& envelopes) { OnCommitted(envelopes); });
}

void Core::RegisterSession(uint64_t user, SessionRef ref) { Register(user, ref, true); }

void Core::ReRegisterSession(uint64_t user, SessionRef ref) { Register(user, ref, false); }

void Core::Register(uint64_t user, SessionRef ref, bool displace) {
  // A device the user's device list removed goes at once when the settings are cached (they
  // are after a removal made here), else once they are read (RefuseRemovedDevice).
  std::optional<store::UserSettings> cached;
  if (ref.device != kPrimaryDevice) {
    cached = settings_.Peek(user);
    if (cached && HasDevice(cached->removed_devices, ref.device)) {
      sink_.RemoveDevice(ref);
      return;
    }
  }
  std::optional<SessionRef> old;
  bool refused = false;
  bool came_online = false;
  RateDebt debt;
  {
    RegistryShard& shard = ShardFor(user);
    std::lock_guard<std::mutex> lock(shard.mu);
    std::vector<SessionRef>& live = shard.sessions[user];
    came_online = live.empty();
    auto same_device = std::find_if(live.begin(), live.end(),
                                    [&ref](const SessionRef& r) { return r.device == ref.device; });
    if (same_device == live.end()) {
      if (live.size() >= kMaxSessionsPerUser) {
        refused = true;  // more devices at once than any account has: the newest goes
      } else {
        live.push_back(ref);
      }
    } else if (!(*same_device == ref)) {
      if (displace) {
        old = *same_device;
        *same_device = ref;
      } else {
        refused = true;
      }
    }
    if (!refused) {
      if (auto p = shard.parked.find(user); p != shard.parked.end()) {
        debt = p->second.debt.AgedBy(clock_.MonoNanos() - p->second.at_ns);
        shard.parked.erase(p);
      }
    }
  }
  if (refused) {
    sink_.Replace(ref);  // a newer session registered while this one was unanswered
    return;
  }
  if (old) sink_.Replace(*old);
  sink_.SettleRate(ref, user, debt);
  if (came_online) presence_.OnOnline(user);
  if (ref.device != kPrimaryDevice) {
    // A removal that committed between the check above and the insertion found no session
    // to end (UpdateSettings updates the cache before it looks): look again. And the cache
    // may be stale (this node owned the user before, in a cluster): read the store too.
    if (auto now = settings_.Peek(user); now && HasDevice(now->removed_devices, ref.device)) {
      DropSession(user, ref);
      return;
    }
    RefuseRemovedDevice(user, ref);
  }
}

void Core::RefuseRemovedDevice(uint64_t user, SessionRef ref) {
  readers_.Submit([this, user, ref] {
    // From the store, not the cache (which may be from before this node last owned the user).
    Result<store::UserSettings> s = store_.GetSettings(user);
    if (s.ok() && HasDevice(s->removed_devices, ref.device)) DropSession(user, ref);
  });
}

void Core::DropSession(uint64_t user, SessionRef ref) {
  bool went_offline = false;
  bool found = false;
  {
    RegistryShard& shard = ShardFor(user);
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.sessions.find(user);
    if (it != shard.sessions.end()) {
      found = std::erase(it->second, ref) > 0;
      if (it->second.empty()) {
        shard.sessions.erase(it);
        went_offline = found;
      }
    }
  }
  if (!found) return;
  sink_.RemoveDevice(ref);
  if (went_offline) presence_.OnOffline(user);
}

void Core::UnregisterSession(uint64_t user, SessionRef ref, const RateDebt& debt) {
  bool went_offline = false;
  std::optional<SessionRef> live;
  {
    RegistryShard& shard = ShardFor(user);
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.sessions.find(user);
    if (it != shard.sessions.end()) {
      std::erase(it->second, ref);
      if (it->second.empty()) {
        shard.sessions.erase(it);
        went_offline = true;
      } else {
        // Another session of the user is live (a newer one of this device, or another
        // device, whose node shares the user's budget): the debt is its to carry.
        live = it->second.front();
        for (const SessionRef& r : it->second) {
          if (r.device == ref.device) live = r;
        }
      }
    }
    if (!live && !debt.zero()) ParkDebt(shard, user, debt, clock_.MonoNanos());
  }
  if (live && !debt.zero()) sink_.SettleRate(*live, user, debt);
  if (went_offline) presence_.OnOffline(user);
}

void Core::ParkDebt(RegistryShard& shard, uint64_t user, const RateDebt& debt, int64_t now_ns) {
  auto it = shard.parked.find(user);
  if (it != shard.parked.end()) {
    RateDebt sum = it->second.debt.AgedBy(now_ns - it->second.at_ns);
    sum.Add(debt);
    it->second = ParkedDebt{now_ns, sum};
    return;
  }
  if (shard.parked.size() >= kMaxParkedPerShard &&
      now_ns - shard.parked_swept_ns >= int64_t{1'000'000'000}) {
    shard.parked_swept_ns = now_ns;
    std::erase_if(shard.parked, [now_ns](const auto& entry) {
      return entry.second.debt.AgedBy(now_ns - entry.second.at_ns).zero();
    });
  }
  if (shard.parked.size() >= kMaxParkedPerShard) {
    static obs::Counter& dropped = obs::Registry::Default().GetCounter(
        "iris_rate_debt_dropped_total",
        "Rate debts of users without a session not kept (the table was full)");
    dropped.Inc();
    return;
  }
  shard.parked.emplace(user, ParkedDebt{now_ns, debt});
}

size_t Core::parked_debt_count() const {
  size_t n = 0;
  for (const RegistryShard& shard : registry_) {
    std::lock_guard<std::mutex> lock(shard.mu);
    n += shard.parked.size();
  }
  return n;
}

void Core::ForgetNode(uint32_t node) {
  if (node == 0) return;
  // On a worker: going offline records the last-seen time.
  readers_.Submit([this, node] {
    std::vector<std::pair<uint64_t, SessionRef>> gone;
    for (RegistryShard& shard : registry_) {
      std::lock_guard<std::mutex> lock(shard.mu);
      for (const auto& [user, refs] : shard.sessions) {
        for (const SessionRef& ref : refs) {
          if (ref.node == node) gone.emplace_back(user, ref);
        }
      }
    }
    for (const auto& [user, ref] : gone) UnregisterSession(user, ref, RateDebt{});
    presence_.ForgetWatchersOn(node);
  });
}

void Core::Receipt(uint64_t author, const v1::Receipt& r, SendDone done) {
  if (r.type() == v1::READ && directory_ != nullptr && !directory_->Owns(author)) {
    // The author's settings live on the author's owner: asked for when the receipt's turn
    // among the author's writes comes, so that it keeps its place; nothing waits meanwhile.
    // The directory (cluster::Router) answers every call once, within its deadline.
    InAuthorOrderAsync(author, [this, author, r, done = std::move(done)](Release release) mutable {
      directory_->GetRemoteSettings(
          author, [this, author, r, done = std::move(done),
                   release = std::move(release)](Result<UserSettings> a) mutable {
            if (!a.ok()) {
              done(a.status());
              release();
              return;
            }
            // On a worker: the recipient's settings may need a store read.
            readers_.Submit([this, author, r, a = *a, done = std::move(done),
                             release = std::move(release)]() mutable {
              settings_.Get(r.to_user());
              AppendReceipt(author, r, std::move(done),
                            store::UserSettings{a.read_receipts, a.share_presence});
              release();
            });
          });
    });
    return;
  }
  if (r.type() == v1::READ) {
    const std::optional<store::UserSettings> a = settings_.Peek(author);
    const std::optional<store::UserSettings> b = settings_.Peek(r.to_user());
    if (!a || !b) {
      // A settings read from the store: on a worker, then appended with both cached.
      InAuthorOrder(author, [this, author, r, done = std::move(done)]() mutable {
        settings_.Get(author);
        settings_.Get(r.to_user());
        AppendReceipt(author, r, std::move(done));
      });
      return;
    }
  }
  if (AuthorQueued(author)) {
    InAuthorOrder(author, [this, author, r, done = std::move(done)]() mutable {
      AppendReceipt(author, r, std::move(done));
    });
    return;
  }
  AppendReceipt(author, r, std::move(done));
}

bool Core::AuthorQueued(uint64_t author) {
  std::lock_guard<std::mutex> lock(author_mu_);
  return author_queued_.count(author) != 0;
}

void Core::InAuthorOrder(uint64_t author, std::function<void()> job) {
  InAuthorOrderAsync(author, [job = std::move(job)](Release release) {
    job();
    release();
  });
}

void Core::InAuthorOrderAsync(uint64_t author, std::function<void(Release)> job) {
  {
    std::lock_guard<std::mutex> lock(author_mu_);
    ++author_queued_[author].jobs;
  }
  writers_.SubmitOrdered(author, [this, author, job = std::move(job)]() mutable {
    EnterLine(author, std::move(job));
  });
}

void Core::EnterLine(uint64_t author, std::function<void(Release)> job) {
  {
    std::lock_guard<std::mutex> lock(author_mu_);
    AuthorLine& line = author_queued_[author];
    if (line.held || !line.parked.empty()) {
      line.parked.push_back(std::move(job));
      return;
    }
    line.held = true;
  }
  job([this, author] { ReleaseLine(author); });
}

void Core::ReleaseLine(uint64_t author) {
  std::function<void(Release)> next;
  {
    std::lock_guard<std::mutex> lock(author_mu_);
    auto it = author_queued_.find(author);
    if (it == author_queued_.end()) return;  // a bug: released twice
    AuthorLine& line = it->second;
    line.held = false;
    if (--line.jobs == 0) {
      author_queued_.erase(it);
      return;
    }
    if (line.parked.empty()) return;
    next = std::move(line.parked.front());
    line.parked.pop_front();
    line.held = true;  // reserved for `next`: later arrivals park behind it
  }
  writers_.SubmitOrdered(author, [this, author, next = std::move(next)]() mutable {
    next([this, author] { ReleaseLine(author); });
  });
}

void Core::AppendReceipt(uint64_t author, const v1::Receipt& r, SendDone done,
                         std::optional<store::UserSettings> author_settings) {
  if (r.type() == v1::READ) {
    if (!author_settings) author_settings = settings_.Peek(author);
    const bool dropped = degradation_.ShedReadReceipts() ||
                         !author_settings.value_or(store::UserSettings{}).read_receipts ||
                         !settings_.Peek(r.to_user()).value_or(store::UserSettings{}).read_receipts;
    if (dropped) {
      done(AppendResult{0, static_cast<uint64_t>(clock_.WallMillis()), false});
      return;
    }
  }
  v1::ReceiptBody body;
  body.set_type(r.type());
  *body.mutable_message_ids() = r.message_ids();
  std::vector<v1::Envelope> envelopes(1);
  v1::Envelope& e = envelopes[0];
  e.set_sender(author);
  e.set_recipient(r.to_user());
  e.set_kind(v1::RECEIPT);
  e.set_body(body.SerializeAsString());
  store_.AppendAsync(author, r.idempotency_key(), std::move(envelopes),
                     ToAppendCallback(std::move(done)));
}

void Core::UpdateSettings(uint64_t user, const v1::Settings& m, StatusDone done) {
  InAuthorOrder(user, [this, user, m, done = std::move(done)] {
    if (m.has_device_list()) {
      // Every listed device has uploaded its keys: a device nobody can fetch keys for would
      // make every 1:1 message to the user MISMATCHED_DEVICES.
      v1::DeviceList list;
      DeviceMask listed = 0;
      if (list.ParseFromString(m.device_list().list())) {
        for (const v1::Device& d : list.devices()) listed |= DeviceBit(d.id());
      }
      Result<DeviceMask> with_keys = store_.DevicesWithKeys(user, listed);
      if (!with_keys.ok()) {
        done(with_keys.status());
        return;
      }
      if (const DeviceMask keyless = listed & ~*with_keys; keyless != 0) {
        done(BadRequest("device_list: device " + std::to_string(DeviceIds(keyless).front()) +
                        " has not uploaded its keys"));
        return;
      }
    }
    bool was_sharing = true;
    Result<store::UserSettings> s = settings_.Update(user, [&](store::UserSettings& cur) {
      was_sharing = cur.share_presence;
      if (m.has_read_receipts()) cur.read_receipts = m.read_receipts();
      if (m.has_share_presence()) cur.share_presence = m.share_presence();
      if (m.group_invites() != v1::GROUP_INVITES_UNSPECIFIED) {
        cur.group_invites_contacts_only = m.group_invites() == v1::GROUP_INVITES_CONTACTS;
      }
      for (uint64_t u : m.unblock()) std::erase(cur.blocked, u);
      for (uint64_t u : m.block()) {
        if (u == user) return BadRequest("settings.block: a user cannot block itself");
        cur.blocked.push_back(u);  // sorted and deduplicated by the store
      }
      if (m.has_device_list()) IRIS_RETURN_IF_ERROR(ApplyDeviceList(user, m.device_list(), cur));
      return Status::Ok();
    });
    if (s.ok() && was_sharing != s->share_presence) {
      presence_.Announce(user, FindSession(user).has_value());
    }
    if (s.ok() && m.has_device_list()) {
      // The removed devices' sessions end now (their next ones at registration), and their
      // keys go: nobody can start a session with them any more. Every removed device's, not
      // only this change's: a retry of the list repairs a removal a crash interrupted.
      for (const SessionRef& ref : FindSessions(user)) {
        if (HasDevice(s->removed_devices, ref.device)) DropSession(user, ref);
      }
      for (uint32_t device : DeviceIds(s->removed_devices)) {
        Status dropped = store_.DropDeviceKeys(user, device);
        if (!dropped.ok()) {
          obs::LogWarn("keys of a removed device not deleted",
                       {{"user", user}, {"device", device}, {"error", dropped.ToString()}});
        }
      }
    }
    done(s.status());
  });
}

Status Core::ApplyDeviceList(uint64_t user, const v1::SignedDeviceList& signed_list,
                             store::UserSettings& cur) {
  v1::DeviceList list;
  if (!list.ParseFromString(signed_list.list())) {
    return BadRequest("device_list.list is not a DeviceList");
  }
  if (list.user() != user) return BadRequest("device_list: the list is another user's");
  std::string stored = signed_list.SerializeAsString();
  if (list.version() == cur.device_list_version && stored == cur.device_list) {
    return Status::Ok();  // a retry of the list in force
  }
  if (list.version() <= cur.device_list_version) {
    return BadRequest("device_list: version " + std::to_string(list.version()) +
                      " is not above the stored " + std::to_string(cur.device_list_version));
  }
  DeviceMask listed = 0;
  for (const v1::Device& d : list.devices()) listed |= DeviceBit(d.id());
  if (const DeviceMask reused = listed & cur.removed_devices; reused != 0) {
    return BadRequest("device_list: device " + std::to_string(DeviceIds(reused).front()) +
                      " was removed; a device is linked again under a new id");
  }
  cur.removed_devices |= cur.Devices() & ~listed;
  cur.devices = listed;
  cur.device_list_version = list.version();
  cur.device_list = std::move(stored);
  return Status::Ok();
}

bool Core::Typing(uint64_t from, const v1::Typing& t) {
  if (degradation_.ShedTyping()) return false;
  if (t.group_id() != 0) {
    // The member list is a store read: on a worker.
    readers_.Submit([this, from, t] {
      auto members = groups_.MembersFor(from, t.group_id());
      if (!members.ok()) return;
      v1::Typing out;
      out.set_user(from);
      out.set_typing(t.typing());
      out.set_group_id(t.group_id());
      for (uint64_t m : *members) {
        if (m == from) continue;
        if (directory_ != nullptr && !directory_->Owns(m)) {
          directory_->RelayTyping(m, out);  // the member's session is registered there
        } else {
          for (const SessionRef& ref : FindSessions(m)) sink_.SendTyping(ref, out);
        }
      }
    });
    return true;
  }
  if (t.user() == 0) return false;
  const std::vector<SessionRef> refs = FindSessions(t.user());
  if (refs.empty()) return false;
  if (Blocks(t.user(), from)) return false;
  v1::Typing out;
  out.set_user(from);
  out.set_typing(t.typing());
  for (const SessionRef& ref : refs) sink_.SendTyping(ref, out);  // every device
  return true;
}

void Core::Subscribe(const SessionRef& ref, const std::vector<uint64_t>& users, PresenceDone done) {
  presence_.Subscribe(ref, users);
  QueryPresence(users, std::move(done));
}

void Core::Unsubscribe(const SessionRef& ref, const std::vector<uint64_t>& users) {
  presence_.Unsubscribe(ref, users);
}

void Core::QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) {
  // Settings and last-seen times may have to be read from the store.
  readers_.Submit([this, users, done = std::move(done)] {
    std::vector<v1::Presence> out;
    out.reserve(users.size());
    for (uint64_t u : users) out.push_back(presence_.Current(u, FindSession(u).has_value()));
    done(std::move(out));
  });
}

void Core::UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) {
  writers_.SubmitOrdered(user, [this, user, upload, done = std::move(done)] {
    // A removed device's keys stay deleted (docs/protocol.md appendix 20).
    if (upload.device_id() > kPrimaryDevice &&
        HasDevice(settings_.Get(user).removed_devices, upload.device_id())) {
      done(Forbidden("device " + std::to_string(upload.device_id()) +
                     " was removed from the device list"));
      return;
    }
    done(store_.UploadKeys(user, upload));
  });
}

void Core::FetchKeys(uint64_t user, KeysDone done) {
  writers_.SubmitOrdered(user,
                         [this, user, done = std::move(done)] { done(store_.FetchKeys(user)); });
}

namespace {
Status RefusedInvitationsError(const std::vector<uint64_t>& refused) {
  std::string message = refused.size() == 1 ? "user " : "users ";
  for (size_t i = 0; i < refused.size(); ++i) {
    if (i > 0) message += ", ";
    message += std::to_string(refused[i]);
  }
  message += refused.size() == 1 ? " does" : " do";
  message += " not accept group invitations from you";
  return Forbidden(std::move(message));
}
}  // namespace

void Core::ChangeGroupWithConsent(uint64_t author, std::vector<uint64_t> invited, Release release,
                                  GroupDone done, std::function<void(GroupDone)> change) {
  RefusedInvitations(author, std::move(invited),
                     [this, author, release = std::move(release), done = std::move(done),
                      change = std::move(change)](Result<std::vector<uint64_t>> refused) mutable {
                       if (!refused.ok() || !refused->empty()) {
                         done(refused.ok() ? RefusedInvitationsError(*refused) : refused.status());
                         release();
                         return;
                       }
                       // The group record is a store read-modify-write: on the author's writer
                       // stripe.
                       writers_.SubmitOrdered(author,
                                              [release = std::move(release), done = std::move(done),
                                               change = std::move(change)]() mutable {
                                                change(std::move(done));
                                                release();
                                              });
                     });
}

void Core::CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) {
  // Consent first (the members' owners may be other nodes: nothing waits meanwhile), then
  // the group, in the author's order.
  InAuthorOrderAsync(owner, [this, owner, m, done = std::move(done)](Release release) mutable {
    ChangeGroupWithConsent(
        owner, std::vector<uint64_t>(m.members().begin(), m.members().end()), std::move(release),
        std::move(done), [this, owner, m](GroupDone d) { groups_.Create(owner, m, std::move(d)); });
  });
}

void Core::UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) {
  // In the author's order (a send after it sees the new members); changes of one group by
  // several members are serialised by GroupService's per-group lock. Users added need
  // their consent (asked first; only the owner adds, and its changes are in this order, so
  // the members added meanwhile can only be fewer).
  InAuthorOrderAsync(user, [this, user, m, done = std::move(done)](Release release) mutable {
    std::vector<uint64_t> invited;
    if (!m.add().empty()) {
      Result<v1::GroupInfo> g = store_.GetGroup(m.group_id());
      if (g.ok() && g->owner() == user) {  // else GroupService answers (nobody is asked)
        for (uint64_t u : m.add()) {
          if (std::find(g->members().begin(), g->members().end(), u) == g->members().end()) {
            invited.push_back(u);
          }
        }
      }
    }
    ChangeGroupWithConsent(user, std::move(invited), std::move(release), std::move(done),
                           [this, user, m](GroupDone d) { groups_.Update(user, m, std::move(d)); });
  });
}

void Core::GetGroup(uint64_t user, uint64_t group_id, GroupDone done) {
  readers_.Submit(
      [this, user, group_id, done = std::move(done)] { done(groups_.Get(user, group_id)); });
}

std::optional<SessionRef> Core::FindSession(uint64_t user) const {
  const RegistryShard& shard = ShardFor(user);
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.sessions.find(user);
  if (it == shard.sessions.end() || it->second.empty()) return std::nullopt;
  return it->second.front();
}

std::vector<SessionRef> Core::FindSessions(uint64_t user) const {
  const RegistryShard& shard = ShardFor(user);
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.sessions.find(user);
  if (it == shard.sessions.end()) return {};
  return it->second;
}

size_t Core::session_count() const {
  size_t n = 0;
  for (const auto& shard : registry_) {
    std::lock_guard<std::mutex> lock(shard.mu);
    for (const auto& [user, refs] : shard.sessions) n += refs.size();
  }
  return n;
}

void Core::Send(uint64_t sender, const v1::Send& send, const std::string& trace_id, SendDone done,
                uint64_t parent_span_id) {
  // core.send: this call -> the append's completion; parent of the store's store.append.
  obs::SharedSpan span = obs::StartSharedSpan(
      "core.send", obs::SpanContext::FromTraceIdBytes(trace_id, parent_span_id));
  if (span) done = obs::EndSpanBefore(span, std::move(done));
  const obs::SpanContext trace = obs::ContextOf(span);
  if (send.group_id() != 0) {
    // The member list is a store read: fan out on a worker, in the sender's order.
    InAuthorOrder(sender, [this, sender, send, trace_id, trace, done = std::move(done)]() mutable {
      auto target = groups_.SendTarget(sender, send.group_id());
      if (!target.ok()) {
        done(target.status());
        return;
      }
      const uint32_t recipients = static_cast<uint32_t>(target->members_size()) - 1;
      if (recipients > options_.direct_fanout_max_members) {
        // A large group: durable as one fan-out job; FanOutWorker delivers it.
        v1::Envelope message;
        message.set_sender(sender);
        message.set_sender_device(std::max<uint32_t>(send.sender_device(), kPrimaryDevice));
        message.set_group_id(send.group_id());
        message.set_kind(v1::MESSAGE);
        message.set_body(send.body());
        message.set_trace_id(trace_id);
        store_.AppendFanOutJob(
            sender, DedupKeyOf(send), message,
            [this, message, recipients, done = std::move(done)](Result<store::AppendOutcome> r) {
              if (r.ok() && !r->duplicate) {
                store::InboxStore::FanOutJob job;
                job.group_id = message.group_id();
                job.job_id = r->message_id;
                job.message = message;
                job.message.set_id(r->message_id);
                job.message.set_sent_at_ms(r->accepted_at_ms);
                fanout_.Add(std::move(job), recipients);
              }
              ToAppendCallback(std::move(done))(std::move(r));
            });
        return;
      }
      auto envelopes = groups_.FanOut(sender, send.group_id(), send.body(), trace_id);
      if (!envelopes.ok()) {
        done(envelopes.status());
        return;
      }
      for (v1::Envelope& e : *envelopes) {
        e.set_sender_device(std::max<uint32_t>(send.sender_device(), kPrimaryDevice));
      }
      AppendSplit(sender, DedupKeyOf(send), std::move(envelopes).value(), std::move(done), trace);
    });
    return;
  }
  if (AuthorQueued(sender)) {
    // Behind the sender's queued group work (the copy of the request is the price of the
    // wait; the usual path below copies nothing).
    InAuthorOrder(sender, [this, sender, send, trace_id, trace, done = std::move(done)]() mutable {
      AppendMessage(sender, send, trace_id, trace, std::move(done));
    });
    return;
  }
  AppendMessage(sender, send, trace_id, trace, std::move(done));
}

std::string Core::DedupKeyOf(const v1::Send& send) {
  // Two devices of one sender choose their keys independently: a device other than 1 has
  // its id after the key (17 bytes; a key is 16, so no device's key is another's).
  std::string key = send.idempotency_key();
  if (send.sender_device() > kPrimaryDevice) key.push_back(static_cast<char>(send.sender_device()));
  return key;
}

void Core::AppendMessage(uint64_t sender, const v1::Send& send, const std::string& trace_id,
                         const obs::SpanContext& trace, SendDone done) {
  // One envelope per device copy (docs/protocol.md appendix 20), appended as one request:
  // atomically, and checked against the recipient's devices on the commit thread. A single
  // body is an older client's message for device 1 (to oneself: for every device).
  const size_t copies = send.copies_size() > 0 ? static_cast<size_t>(send.copies_size()) : 1;
  std::vector<v1::Envelope> envelopes(copies);
  for (size_t i = 0; i < copies; ++i) {
    v1::Envelope& e = envelopes[i];
    e.set_sender(sender);
    e.set_sender_device(std::max<uint32_t>(send.sender_device(), kPrimaryDevice));
    e.set_recipient(send.recipient());
    e.set_kind(v1::MESSAGE);
    if (send.copies_size() > 0) {
      e.set_recipient_device(send.copies(static_cast<int>(i)).device());
      e.set_body(send.copies(static_cast<int>(i)).body());
    } else {
      if (send.recipient() != sender) e.set_recipient_device(kPrimaryDevice);
      e.set_body(send.body());
    }
    e.set_trace_id(trace_id);
  }
  store_.AppendAsync(sender, DedupKeyOf(send), std::move(envelopes),
                     ToAppendCallback(std::move(done)), trace, send.adds_contact());
}

void Core::SetClusterDirectory(ClusterDirectory* directory) {
  directory_ = directory;
  groups_.set_appender([this](uint64_t actor, std::string key, std::vector<v1::Envelope> envelopes,
                              store::AppendCallback done) {
    AppendSplit(
        actor, std::move(key), std::move(envelopes),
        [done = std::move(done)](Result<AppendResult> r) {
          if (!r.ok()) return done(r.status());
          done(store::AppendOutcome{r->message_id, r->accepted_at_ms, r->duplicate});
        },
        obs::SpanContext{});
  });
}

Status Core::StartFanOut() {
  if (directory_ != nullptr) {
    // What the batch's local write (AppendFanOutBatch, with the job's progress, in the
    // group's shard) cannot take: members owned by other nodes, and members here in other
    // shards (one write over several shards could commit the progress without them). Both
    // deduplicated by the batch's key, so the batch's retry stores them once.
    fanout_.set_remote([this](const std::string& key, std::vector<v1::Envelope>* envelopes,
                              std::function<void(Status)> done) {
      if (envelopes->empty()) return done(Status::Ok());
      // Only the group's shard primary runs a job (every replica holds it): another node's
      // worker would send these shares and then have its progress write refused, while
      // the primary's worker writes the group's-shard members again (not deduplicated).
      const uint64_t group = envelopes->front().group_id();
      if (!directory_->Owns(group)) {
        return done(
            Unavailable("this node does not lead the shard of group " + std::to_string(group)));
      }
      const uint32_t group_shard = store_.ShardOf(group);
      auto local_end = std::stable_partition(
          envelopes->begin(), envelopes->end(),
          [this](const v1::Envelope& e) { return directory_->Owns(e.recipient()); });
      std::vector<v1::Envelope> remote(std::make_move_iterator(local_end),
                                       std::make_move_iterator(envelopes->end()));
      envelopes->erase(local_end, envelopes->end());
      auto with_job = std::stable_partition(
          envelopes->begin(), envelopes->end(),
          [&](const v1::Envelope& e) { return store_.ShardOf(e.recipient()) == group_shard; });
      std::vector<v1::Envelope> other_shards(std::make_move_iterator(with_job),
                                             std::make_move_iterator(envelopes->end()));
      envelopes->erase(with_job, envelopes->end());
      if (remote.empty() && other_shards.empty()) return done(Status::Ok());
      struct Join {
        std::mutex mu;
        int pending = 0;
        Status error;
        std::function<void(Status)> done;
      };
      auto join = std::make_shared<Join>();
      join->pending = (remote.empty() ? 0 : 1) + (other_shards.empty() ? 0 : 1);
      join->done = std::move(done);
      const auto answer = [join](Result<AppendResult> r) {
        std::unique_lock<std::mutex> lock(join->mu);
        if (!r.ok() && join->error.ok()) join->error = r.status();
        if (--join->pending > 0) return;
        lock.unlock();
        join->done(join->error);
      };
      if (!remote.empty()) {
        const uint64_t sender = remote.front().sender();
        directory_->AppendRemote(sender, key, std::move(remote), answer);
      }
      if (!other_shards.empty()) {
        const uint64_t sender = other_shards.front().sender();
        AppendByShard(sender, key, std::move(other_shards), answer, obs::SpanContext{});
      }
    });
  }
  return fanout_.Start();
}

void Core::AppendSplit(uint64_t sender, std::string key, std::vector<v1::Envelope> envelopes,
                       SendDone done, const obs::SpanContext& trace) {
  std::vector<v1::Envelope> remote;
  if (directory_ != nullptr) {
    auto local_end = std::stable_partition(
        envelopes.begin(), envelopes.end(),
        [this](const v1::Envelope& e) { return directory_->Owns(e.recipient()); });
    remote.assign(std::make_move_iterator(local_end), std::make_move_iterator(envelopes.end()));
    envelopes.erase(local_end, envelopes.end());
  }
  if (remote.empty()) {
    AppendByShard(sender, std::move(key), std::move(envelopes), std::move(done), trace);
    return;
  }
  if (envelopes.empty()) {
    directory_->AppendRemote(sender, key, std::move(remote), std::move(done));
    return;
  }
  // Two shares (here, elsewhere), each durable and deduplicated on its own: done once both
  // answered. A retry with the same key fills whichever share failed; dedup answers the
  // other as a duplicate.
  struct Join {
    std::mutex mu;
    int pending = 2;
    std::optional<Result<AppendResult>> local, remote;
    SendDone done;
  };
  auto join = std::make_shared<Join>();
  join->done = std::move(done);
  auto finish = [join](bool is_local, Result<AppendResult> r) {
    std::unique_lock<std::mutex> lock(join->mu);
    (is_local ? join->local : join->remote) = std::move(r);
    if (--join->pending > 0) return;
    lock.unlock();
    if (!join->local->ok()) return join->done(join->local->status());
    if (!join->remote->ok()) return join->done(join->remote->status());
    AppendResult out = **join->local;
    // A duplicate only when neither share stored anything.
    out.duplicate = out.duplicate && (*join->remote)->duplicate;
    join->done(out);
  };
  directory_->AppendRemote(sender, key, std::move(remote),
                           [finish](Result<AppendResult> r) { finish(false, std::move(r)); });
  AppendByShard(
      sender, std::move(key), std::move(envelopes),
      [finish](Result<AppendResult> r) { finish(true, std::move(r)); }, trace);
}

void Core::AppendByShard(uint64_t sender, std::string key, std::vector<v1::Envelope> envelopes,
                         SendDone done, const obs::SpanContext& trace) {
  std::map<uint32_t, std::vector<v1::Envelope>> shares;
  for (v1::Envelope& e : envelopes) shares[store_.ShardOf(e.recipient())].push_back(std::move(e));
  if (shares.size() <= 1) {
    std::vector<v1::Envelope> all =
        shares.empty() ? std::vector<v1::Envelope>() : std::move(shares.begin()->second);
    store_.AppendAsync(sender, std::move(key), std::move(all), ToAppendCallback(std::move(done)),
                       trace);
    return;
  }
  struct Join {
    std::mutex mu;
    size_t pending = 0;
    Status error;
    std::optional<AppendResult> first;  // of the first shard (the map's order)
    bool all_duplicate = true;
    SendDone done;
  };
  auto join = std::make_shared<Join>();
  join->pending = shares.size();
  join->done = std::move(done);
  bool is_first = true;
  for (auto& [shard, share] : shares) {
    store_.AppendAsync(sender, key, std::move(share),
                       ToAppendCallback([join, is_first](Result<AppendResult> r) {
                         std::unique_lock<std::mutex> lock(join->mu);
                         if (!r.ok()) {
                           if (join->error.ok()) join->error = r.status();
                         } else {
                           if (is_first) join->first = *r;
                           join->all_duplicate = join->all_duplicate && r->duplicate;
                         }
                         if (--join->pending > 0) return;
                         lock.unlock();
                         if (!join->error.ok()) return join->done(join->error);
                         AppendResult out = *join->first;
                         out.duplicate = join->all_duplicate;
                         join->done(out);
                       }),
                       trace);
    is_first = false;
  }
}

void Core::AppendEnvelopes(uint64_t sender, const std::string& idempotency_key,
                           std::vector<v1::Envelope> envelopes, SendDone done) {
  AppendByShard(sender, idempotency_key, std::move(envelopes), std::move(done), obs::SpanContext());
}

bool Core::Blocks(uint64_t user, uint64_t other) {
  const std::optional<store::UserSettings> s = settings_.Peek(user);
  return s && s->Blocks(other);
}

namespace {
UserSettings ToCore(const store::UserSettings& s) {
  return UserSettings{s.read_receipts, s.share_presence, s.group_invites_contacts_only, s.blocked,
                      s.device_list};
}
}  // namespace

void Core::GetSettings(uint64_t user, SettingsDone done) {
  readers_.Submit([this, user, done = std::move(done)] { done(ToCore(settings_.Get(user))); });
}

void Core::GetOwnSettings(uint64_t user, SettingsDone done) {
  // In the user's order: a SETTINGS_GET after a SETTINGS on one connection sees its change.
  InAuthorOrder(user, [this, user, done = std::move(done)] { done(ToCore(settings_.Get(user))); });
}

void Core::CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                        ConsentDone done) {
  readers_.Submit([this, inviter, users, wrote_only, done = std::move(done)] {
    Consent c;
    if (wrote_only) {
      Result<std::vector<uint64_t>> wrote = store_.WhoWrote(inviter, users);
      if (!wrote.ok()) {
        done(wrote.status());
        return;
      }
      c.wrote = std::move(*wrote);
      done(std::move(c));
      return;
    }
    for (uint64_t u : users) {
      // From the store, not the cache: a block made on another replica before this node
      // took the shard over is in the store.
      Result<store::UserSettings> s = store_.GetSettings(u);
      if (!s.ok()) {
        done(s.status());
        return;
      }
      if (s->Blocks(inviter)) {
        c.blocked.push_back(u);
      } else if (s->group_invites_contacts_only) {
        c.contacts_only.push_back(u);
      }
    }
    done(std::move(c));
  });
}

void Core::ConsentOn(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                     ConsentDone done) {
  if (directory_ != nullptr) {
    directory_->CheckRemoteConsent(inviter, users, wrote_only, std::move(done));
  } else {
    CheckConsent(inviter, users, wrote_only, std::move(done));
  }
}

void Core::RefusedInvitations(uint64_t inviter, std::vector<uint64_t> invited, RefusedDone done) {
  std::sort(invited.begin(), invited.end());
  invited.erase(std::unique(invited.begin(), invited.end()), invited.end());
  std::erase(invited, inviter);
  if (invited.empty()) {
    done(std::vector<uint64_t>{});
    return;
  }
  ConsentOn(inviter, invited, false,
            [this, inviter, done = std::move(done)](Result<Consent> c) mutable {
              if (!c.ok()) {
                done(c.status());
                return;
              }
              std::vector<uint64_t> refused = std::move(c->blocked);
              if (c->contacts_only.empty()) {
                std::sort(refused.begin(), refused.end());
                done(std::move(refused));
                return;
              }
              std::vector<uint64_t> asked = c->contacts_only;
              ConsentOn(inviter, asked, true,
                        [asked, refused = std::move(refused),
                         done = std::move(done)](Result<Consent> w) mutable {
                          if (!w.ok()) {
                            done(w.status());
                            return;
                          }
                          for (uint64_t u : asked) {
                            if (std::find(w->wrote.begin(), w->wrote.end(), u) == w->wrote.end()) {
                              refused.push_back(u);
                            }
                          }
                          std::sort(refused.begin(), refused.end());
                          done(std::move(refused));
                        });
            });
}

void Core::RelayTyping(uint64_t to, const v1::Typing& typing) {
  if (degradation_.ShedTyping()) return;
  if (typing.group_id() == 0 && Blocks(to, typing.user())) return;
  for (const SessionRef& ref : FindSessions(to)) sink_.SendTyping(ref, typing);
}

void Core::Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes, PageDone done) {
  limit = std::min(limit, options_.max_page_messages);
  readers_.Submit([this, user, after_id, limit, max_bytes, done = std::move(done)] {
    done(ToPage(store_.Scan(user, after_id, limit, max_bytes)));
  });
}

void Core::History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
                   PageDone done) {
  limit = std::min(limit, options_.max_page_messages);
  readers_.Submit([this, user, before_id, limit, max_bytes, done = std::move(done)] {
    done(ToPage(store_.History(user, before_id, limit, max_bytes)));
  });
}

void Core::OnCommitted(const std::vector<v1::Envelope>& envelopes) {
  for (const v1::Envelope& e : envelopes) {
    for (const SessionRef& ref : FindSessions(e.recipient())) {
      if (ForDevice(e.recipient_device(), ref.device)) sink_.Deliver(ref, e);
    }
  }
}

}  // namespace iris::core

namespace iris::core {

PressureReport Core::ReportPressure(double pressure, int64_t now_ms) {
  const bool changed = degradation_.Update(pressure, now_ms);
  return PressureReport{degradation_.level(), changed};
}

}  // namespace iris::core
