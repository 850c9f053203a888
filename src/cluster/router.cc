#include "cluster/router.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "core/groups.h"

namespace iris::cluster {
namespace {

using Clock = std::chrono::steady_clock;

const Status& StatusOf(const Status& s) { return s; }
template <typename T>
Status StatusOf(const Result<T>& r) {
  return r.status();
}

bool Retryable(const Status& s) {
  return s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kNotOwner;
}

Status NotOwnedHere(NodeId self, uint64_t id) {
  return NotOwner("node " + std::to_string(self) + " does not own " + std::to_string(id));
}

}  // namespace

// What the other nodes' peer links call: the local core, for ids this node owns.
class Router::ServedCore final : public core::CoreApi {
 public:
  explicit ServedCore(Router& r) : r_(r) {}

  void RegisterSession(uint64_t user, core::SessionRef ref) override {
    // Fire and forget: a registration that reaches a node that no longer owns the user is
    // dropped; the session's next scan re-registers at the owner (see sessions_).
    if (Owns(user)) r_.local_->RegisterSession(user, ref);
  }
  void ReRegisterSession(uint64_t user, core::SessionRef ref) override {
    // Dropped like a registration when not (yet) the owner: the session asks again.
    if (Owns(user)) r_.local_->ReRegisterSession(user, ref);
  }
  void UnregisterSession(uint64_t user, core::SessionRef ref, const core::RateDebt& debt) override {
    if (r_.local_ != nullptr) r_.local_->UnregisterSession(user, ref, debt);
  }
  bool Typing(uint64_t from, const v1::Typing& t) override {
    if (!Owns(t.group_id() != 0 ? t.group_id() : t.user())) return false;
    return r_.local_->Typing(from, t);
  }
  void Unsubscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users) override {
    if (r_.local_ != nullptr) r_.local_->Unsubscribe(ref, users);
  }
  core::PressureReport ReportPressure(double pressure, int64_t now_ms) override {
    return r_.ReportPressure(pressure, now_ms);
  }
  void Send(uint64_t sender, const v1::Send& send, const std::string& trace_id, SendDone done,
            uint64_t parent_span_id) override {
    const uint64_t id = send.group_id() != 0 ? send.group_id() : send.recipient();
    if (!Check(id, done)) return;
    r_.local_->Send(sender, send, trace_id, std::move(done), parent_span_id);
  }
  void Receipt(uint64_t author, const v1::Receipt& receipt, SendDone done) override {
    if (!Check(receipt.to_user(), done)) return;
    r_.local_->Receipt(author, receipt, std::move(done));
  }
  void UpdateSettings(uint64_t user, const v1::Settings& s, StatusDone done) override {
    if (!Check(user, done)) return;
    r_.local_->UpdateSettings(user, s, std::move(done));
  }
  void Subscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users,
                 PresenceDone done) override {
    if (!CheckAll(users, done)) return;
    r_.local_->Subscribe(ref, users, std::move(done));
  }
  void QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) override {
    if (!CheckAll(users, done)) return;
    r_.local_->QueryPresence(users, std::move(done));
  }
  void UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) override {
    if (!Check(user, done)) return;
    r_.local_->UploadKeys(user, upload, std::move(done));
  }
  void FetchKeys(uint64_t user, KeysDone done) override {
    if (!Check(user, done)) return;
    r_.local_->FetchKeys(user, std::move(done));
  }
  void CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) override {
    if (!Check(core::GroupService::GroupIdFor(owner, m.idempotency_key()), done)) return;
    r_.local_->CreateGroup(owner, m, std::move(done));
  }
  void UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) override {
    if (!Check(m.group_id(), done)) return;
    r_.local_->UpdateGroup(user, m, std::move(done));
  }
  void GetGroup(uint64_t user, uint64_t group_id, GroupDone done) override {
    if (!Check(group_id, done)) return;
    r_.local_->GetGroup(user, group_id, std::move(done));
  }
  void Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes,
            PageDone done) override {
    if (!Check(user, done)) return;
    r_.local_->Scan(user, after_id, limit, max_bytes, std::move(done));
  }
  void History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
               PageDone done) override {
    if (!Check(user, done)) return;
    r_.local_->History(user, before_id, limit, max_bytes, std::move(done));
  }
  void AppendEnvelopes(uint64_t sender, const std::string& key, std::vector<v1::Envelope> envelopes,
                       SendDone done) override {
    for (const v1::Envelope& e : envelopes) {
      if (!Check(e.recipient(), done)) return;
    }
    r_.local_->AppendEnvelopes(sender, key, std::move(envelopes), std::move(done));
  }
  void GetSettings(uint64_t user, SettingsDone done) override {
    if (!Check(user, done)) return;
    r_.local_->GetSettings(user, std::move(done));
  }
  void GetOwnSettings(uint64_t user, SettingsDone done) override {
    if (!Check(user, done)) return;
    r_.local_->GetOwnSettings(user, std::move(done));
  }
  void CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                    ConsentDone done) override {
    if (wrote_only ? !Check(inviter, done) : !CheckAll(users, done)) return;
    r_.local_->CheckConsent(inviter, users, wrote_only, std::move(done));
  }
  void RelayTyping(uint64_t to, const v1::Typing& typing) override {
    if (Owns(to)) r_.local_->RelayTyping(to, typing);
  }

 private:
  bool Owns(uint64_t id) const { return r_.local_ != nullptr && r_.Owns(id); }
  // Answers NOT_OWNER through `done` and returns false when `id` is not this node's.
  template <typename Done>
  bool Check(uint64_t id, Done& done) {
    if (Owns(id)) return true;
    r_.Count(&RouterStats::not_owner_answered);
    done(NotOwnedHere(r_.self_, id));
    return false;
  }
  template <typename Done>
  bool CheckAll(const std::vector<uint64_t>& ids, Done& done) {
    for (uint64_t id : ids) {
      if (!Check(id, done)) return false;
    }
    return true;
  }

  Router& r_;
};

// What the other nodes' peer links deliver pushes to: this node's edge.
class Router::IncomingSink final : public core::EdgeSink {
 public:
  explicit IncomingSink(Router& r) : r_(r) {}
  void Deliver(const core::SessionRef& to, const v1::Envelope& e) override {
    if (core::EdgeSink* edge = Edge(to)) edge->Deliver(to, e);
  }
  void Replace(const core::SessionRef& old_session) override {
    core::EdgeSink* edge = Edge(old_session);
    if (edge == nullptr) return;
    r_.ForgetReplaced(old_session);
    edge->Replace(old_session);
  }
  void RemoveDevice(const core::SessionRef& session) override {
    core::EdgeSink* edge = Edge(session);
    if (edge == nullptr) return;
    r_.ForgetReplaced(session);
    edge->RemoveDevice(session);
  }
  void SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& d) override {
    if (core::EdgeSink* edge = Edge(to)) edge->SettleRate(to, user, d);
  }
  void SendPresence(const core::SessionRef& to, const v1::Presence& p) override {
    if (core::EdgeSink* edge = Edge(to)) edge->SendPresence(to, p);
  }
  void SendTyping(const core::SessionRef& to, const v1::Typing& t) override {
    if (core::EdgeSink* edge = Edge(to)) edge->SendTyping(to, t);
  }

 private:
  // Only this node's sessions (a push for another node's session is a routing bug: dropped).
  core::EdgeSink* Edge(const core::SessionRef& to) const {
    return to.node == r_.self_ ? r_.local_edge_ : nullptr;
  }
  Router& r_;
};

Router::Router(NodeId self, const RouteTable& routes, Peers& peers, RouterOptions options)
    : self_(self),
      routes_(routes),
      peers_(peers),
      options_(options),
      served_owner_(std::make_unique<ServedCore>(*this)),
      incoming_owner_(std::make_unique<IncomingSink>(*this)),
      served_(*served_owner_),
      incoming_(*incoming_owner_) {
  timer_ = std::thread([this] { TimerLoop(); });
}

void Router::SetLocalCore(core::Core* local) {
  local_ = local;
  if (local_ != nullptr) local_->SetClusterDirectory(this);
}

Router::~Router() {
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    stopping_ = true;
  }
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
}

core::CoreApi& Router::Served() { return served_; }
core::EdgeSink& Router::Incoming() { return incoming_; }

RouterStats Router::Stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

void Router::Count(uint64_t RouterStats::*counter) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  ++(stats_.*counter);
}

bool Router::Owns(uint64_t id) const { return routes_.OwnerOf(id) == std::optional<NodeId>(self_); }

core::CoreApi* Router::CoreOf(NodeId node) {
  if (node == self_) return local_ != nullptr ? &served_ : nullptr;
  return peers_.PeerCore(node);
}

core::EdgeSink* Router::SinkOf(NodeId node) {
  if (node == self_ || node == 0) return local_edge_;
  return peers_.PeerSink(node);
}

// ---- timer thread ----

void Router::After(std::chrono::milliseconds delay, std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    if (!stopping_) {
      timers_.emplace(Clock::now() + delay, std::move(job));
      job = nullptr;
    }
  }
  if (job) {
    job();  // stopping: run now (it answers UNAVAILABLE)
    return;
  }
  timer_cv_.notify_all();
}

void Router::TimerLoop() {
  std::unique_lock<std::mutex> lock(timer_mu_);
  for (;;) {
    if (stopping_) {
      // Pending retries run now; they see stopping_ and answer UNAVAILABLE.
      while (!timers_.empty()) {
        auto job = std::move(timers_.begin()->second);
        timers_.erase(timers_.begin());
        lock.unlock();
        job();
        lock.lock();
      }
      return;
    }
    if (timers_.empty()) {
      timer_cv_.wait(lock);
      continue;
    }
    const auto when = timers_.begin()->first;
    if (Clock::now() < when) {
      timer_cv_.wait_until(lock, when);
      continue;
    }
    auto job = std::move(timers_.begin()->second);
    timers_.erase(timers_.begin());
    lock.unlock();
    job();
    lock.lock();
  }
}

// ---- routing with retries ----

template <typename R>
void Router::Route(uint64_t id,
                   std::function<void(NodeId, core::CoreApi&, std::function<void(R)>)> op,
                   std::function<void(R)> done, uint64_t sender) {
  auto p = std::make_shared<Pending<R>>(Pending<R>{id, std::move(op), std::move(done),
                                                   Clock::now() + options_.deadline,
                                                   options_.initial_backoff});
  if (sender != 0) {
    uint64_t seq = 0;
    {
      std::lock_guard<std::mutex> lock(lines_mu_);
      SenderLine& line = lines_[sender];
      seq = line.next_seq++;
      line.open.insert(seq);
    }
    p->sender = sender;
    p->seq = seq;
    p->done = [this, sender, seq, done = std::move(p->done)](R r) mutable {
      LeaveLine(sender, seq);
      done(std::move(r));
    };
  }
  Attempt(std::move(p));
}

bool Router::ParkInLine(uint64_t sender, uint64_t seq, std::function<void()> attempt) {
  std::lock_guard<std::mutex> lock(lines_mu_);
  auto it = lines_.find(sender);
  if (it == lines_.end()) return false;
  SenderLine& line = it->second;
  if (line.open.empty() || *line.open.begin() >= seq) return false;
  line.parked.emplace(seq, std::move(attempt));
  return true;
}

void Router::LeaveLine(uint64_t sender, uint64_t seq) {
  std::function<void()> next;
  {
    std::lock_guard<std::mutex> lock(lines_mu_);
    auto it = lines_.find(sender);
    if (it == lines_.end()) return;
    SenderLine& line = it->second;
    line.open.erase(seq);
    if (line.open.empty()) {
      lines_.erase(it);
      return;
    }
    // The line's next write goes out if it is waiting (else it is still on its way to
    // Attempt, which will find nothing earlier open).
    auto p = line.parked.find(*line.open.begin());
    if (p != line.parked.end()) {
      next = std::move(p->second);
      line.parked.erase(p);
    }
  }
  // From the timer thread (not inline: this may run on a link's I/O thread).
  if (next) After(std::chrono::milliseconds(0), std::move(next));
}

template <typename R>
void Router::Attempt(std::shared_ptr<Pending<R>> p) {
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    if (stopping_) {
      p->done(R(Unavailable("the node is shutting down")));
      return;
    }
  }
  if (p->sender != 0 &&
      ParkInLine(p->sender, p->seq, [this, p]() mutable { Attempt(std::move(p)); })) {
    return;
  }
  if (p->sender != 0 && Clock::now() > p->deadline) {
    // It waited in its sender's line past its own deadline: answered as any write that
    // could not be routed in time, never sent (the client retries with the same key).
    Count(&RouterStats::gave_up);
    p->done(R(Unavailable("not routed within the routing deadline (waited behind the "
                          "sender's earlier writes)")));
    return;
  }
  const std::optional<NodeId> owner = routes_.OwnerOf(p->id);
  core::CoreApi* target = owner ? CoreOf(*owner) : nullptr;
  if (target == nullptr) {
    RetryLater(std::move(p),
               Unavailable(owner ? "the owner of " + std::to_string(p->id) + " (node " +
                                       std::to_string(*owner) + ") is not reachable"
                                 : "no owner known for " + std::to_string(p->id)));
    return;
  }
  p->op(*owner, *target, [this, p](R r) {
    const Status s = StatusOf(r);
    if (Retryable(s)) {
      RetryLater(p, s);
      return;
    }
    p->done(std::move(r));
  });
}

template <typename R>
void Router::RetryLater(std::shared_ptr<Pending<R>> p, const Status& why) {
  const auto delay = p->backoff;
  if (Clock::now() + delay > p->deadline) {
    Count(&RouterStats::gave_up);
    p->done(R(Unavailable("not answered within the routing deadline: " + why.ToString())));
    return;
  }
  p->backoff = std::min(p->backoff * 2, options_.max_backoff);
  Count(&RouterStats::retries);
  After(delay, [this, p]() mutable { Attempt(std::move(p)); });
}

std::map<std::optional<NodeId>, std::vector<size_t>> Router::SplitByOwner(
    const std::vector<uint64_t>& users, bool named) const {
  std::map<std::optional<NodeId>, std::vector<size_t>> out;
  for (size_t i = 0; i < users.size(); ++i) {
    out[named ? routes_.NamedOwnerOf(users[i]) : routes_.OwnerOf(users[i])].push_back(i);
  }
  return out;
}

// ---- CoreApi ----

void Router::RegisterSession(uint64_t user, core::SessionRef ref) {
  ref.node = self_;
  const std::optional<NodeId> owner = routes_.OwnerOf(user);
  core::CoreApi* target = owner ? CoreOf(*owner) : nullptr;
  {
    // registered_at names the owner only once the registration goes there: a session whose
    // owner is unknown or unreachable now (its link still being dialled) is registered by
    // its catch-up scan, which registers wherever registered_at differs from the scanned node.
    const LocalSession s{ref, target != nullptr ? *owner : NodeId{0}};
    std::lock_guard<std::mutex> lock(sessions_mu_);
    auto [it, inserted] = sessions_.try_emplace(SessionKey{user, ref.device}, s);
    if (!inserted) {
      user_of_.erase(it->second.ref);
      it->second = s;
    }
    user_of_[ref] = user;
  }
  if (target != nullptr) {
    target->RegisterSession(user, ref);  // the owner answers with SettleRate
    return;
  }
  // No owner to ask now (the scan that follows registers once one is known): the session
  // goes on with this node's budget for the user rather than wait.
  if (local_edge_ != nullptr) local_edge_->SettleRate(ref, user, core::RateDebt{});
}

void Router::ReRegisterSession(uint64_t user, core::SessionRef ref) {
  ref.node = self_;
  const std::optional<NodeId> owner = routes_.OwnerOf(user);
  core::CoreApi* target = owner ? CoreOf(*owner) : nullptr;
  {
    std::lock_guard<std::mutex> lock(sessions_mu_);
    auto it = sessions_.find(SessionKey{user, ref.device});
    if (it == sessions_.end() || !(it->second.ref == ref)) return;  // closed or replaced here
    it->second.registered_at = target != nullptr ? *owner : NodeId{0};
  }
  // No owner reachable now: the session asks again later (and its next scan registers).
  if (target != nullptr) target->ReRegisterSession(user, ref);
}

void Router::UnregisterSession(uint64_t user, core::SessionRef ref, const core::RateDebt& debt) {
  ref.node = self_;
  {
    std::lock_guard<std::mutex> lock(sessions_mu_);
    auto it = sessions_.find(SessionKey{user, ref.device});
    if (it != sessions_.end() && it->second.ref == ref) {
      sessions_.erase(it);
      user_of_.erase(ref);
    }
  }
  // Also to this node's core while it does not serve the user's shard: the registration
  // it may hold from before must end (else the user would look online there).
  const std::optional<NodeId> owner = routes_.NamedOwnerOf(user);
  if (!owner) return;
  // A debt that finds no owner is lost: the user's next session starts with a refilled
  // budget (at most one burst early, only while the owner is unreachable).
  if (core::CoreApi* target = CoreOf(*owner)) target->UnregisterSession(user, ref, debt);
}

bool Router::Typing(uint64_t from, const v1::Typing& typing) {
  const uint64_t id = typing.group_id() != 0 ? typing.group_id() : typing.user();
  if (id == 0) return false;
  const std::optional<NodeId> owner = routes_.OwnerOf(id);
  core::CoreApi* target = owner ? CoreOf(*owner) : nullptr;
  if (target == nullptr) return false;
  return target->Typing(from, typing);
}

void Router::Unsubscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users) {
  core::SessionRef r = ref;
  r.node = self_;
  for (const auto& [owner, idx] : SplitByOwner(users, /*named=*/true)) {
    core::CoreApi* target = owner ? CoreOf(*owner) : nullptr;
    if (target == nullptr) continue;
    std::vector<uint64_t> part;
    part.reserve(idx.size());
    for (size_t i : idx) part.push_back(users[i]);
    target->Unsubscribe(r, part);
  }
}

core::PressureReport Router::ReportPressure(double pressure, int64_t now_ms) {
  if (local_ != nullptr) return local_->ReportPressure(pressure, now_ms);
  return {};
}

void Router::Send(uint64_t sender, const v1::Send& send, const std::string& trace_id, SendDone done,
                  uint64_t parent_span_id) {
  const uint64_t id = send.group_id() != 0 ? send.group_id() : send.recipient();
  Route<Result<core::AppendResult>>(
      id,
      [sender, send, trace_id, parent_span_id](NodeId, core::CoreApi& c, SendDone d) {
        c.Send(sender, send, trace_id, std::move(d), parent_span_id);
      },
      std::move(done), sender);
}

void Router::Receipt(uint64_t author, const v1::Receipt& receipt, SendDone done) {
  Route<Result<core::AppendResult>>(
      receipt.to_user(),
      [author, receipt](NodeId, core::CoreApi& c, SendDone d) {
        c.Receipt(author, receipt, std::move(d));
      },
      std::move(done), author);
}

void Router::UpdateSettings(uint64_t user, const v1::Settings& settings, StatusDone done) {
  Route<Status>(
      user,
      [user, settings](NodeId, core::CoreApi& c, StatusDone d) {
        c.UpdateSettings(user, settings, std::move(d));
      },
      std::move(done));
}

namespace {
// The answers of the owners of parts of one presence request, merged in the order asked.
struct PresenceJoin {
  std::mutex mu;
  size_t pending;
  std::vector<v1::Presence> states;
  Status error;
  core::CoreApi::PresenceDone done;
};
}  // namespace

void Router::FanOutPresence(const std::vector<uint64_t>& users, const PresenceCall& call,
                            PresenceDone done) {
  auto parts = SplitByOwner(users);
  if (parts.empty()) {
    done(std::vector<v1::Presence>{});
    return;
  }
  auto join = std::make_shared<PresenceJoin>();
  join->pending = parts.size();
  join->states.resize(users.size());
  join->done = std::move(done);
  for (auto& entry : parts) {
    std::vector<size_t> idx = std::move(entry.second);
    std::vector<uint64_t> part;
    part.reserve(idx.size());
    for (size_t i : idx) part.push_back(users[i]);
    const uint64_t key = part.front();
    Route<Result<std::vector<v1::Presence>>>(
        key,
        [call, part = std::move(part)](NodeId, core::CoreApi& c, PresenceDone d) {
          call(c, part, std::move(d));
        },
        [join, idx = std::move(idx)](Result<std::vector<v1::Presence>> got) {
          std::unique_lock<std::mutex> lock(join->mu);
          if (!got.ok()) {
            if (join->error.ok()) join->error = got.status();
          } else {
            for (size_t k = 0; k < idx.size() && k < got->size(); ++k) {
              join->states[idx[k]] = std::move((*got)[k]);
            }
          }
          if (--join->pending > 0) return;
          lock.unlock();
          if (!join->error.ok()) {
            join->done(join->error);
          } else {
            join->done(std::move(join->states));
          }
        });
  }
}

void Router::Subscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users,
                       PresenceDone done) {
  core::SessionRef r = ref;
  r.node = self_;
  FanOutPresence(
      users,
      [r](core::CoreApi& c, const std::vector<uint64_t>& part, PresenceDone d) {
        c.Subscribe(r, part, std::move(d));
      },
      std::move(done));
}

void Router::QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) {
  FanOutPresence(
      users,
      [](core::CoreApi& c, const std::vector<uint64_t>& part, PresenceDone d) {
        c.QueryPresence(part, std::move(d));
      },
      std::move(done));
}

void Router::UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) {
  Route<Status>(
      user,
      [user, upload](NodeId, core::CoreApi& c, StatusDone d) {
        c.UploadKeys(user, upload, std::move(d));
      },
      std::move(done));
}

void Router::FetchKeys(uint64_t user, KeysDone done) {
  Route<Result<v1::KeysBundle>>(
      user, [user](NodeId, core::CoreApi& c, KeysDone d) { c.FetchKeys(user, std::move(d)); },
      std::move(done));
}

void Router::CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) {
  Route<Result<v1::GroupInfo>>(
      core::GroupService::GroupIdFor(owner, m.idempotency_key()),
      [owner, m](NodeId, core::CoreApi& c, GroupDone d) { c.CreateGroup(owner, m, std::move(d)); },
      std::move(done));
}

void Router::UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) {
  Route<Result<v1::GroupInfo>>(
      m.group_id(),
      [user, m](NodeId, core::CoreApi& c, GroupDone d) { c.UpdateGroup(user, m, std::move(d)); },
      std::move(done));
}

void Router::GetGroup(uint64_t user, uint64_t group_id, GroupDone done) {
  Route<Result<v1::GroupInfo>>(
      group_id,
      [user, group_id](NodeId, core::CoreApi& c, GroupDone d) {
        c.GetGroup(user, group_id, std::move(d));
      },
      std::move(done));
}

void Router::Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes,
                  PageDone done) {
  Route<Result<core::Page>>(
      user,
      [this, user, after_id, limit, max_bytes](NodeId node, core::CoreApi& c, PageDone d) {
        // The session must be registered with the node that reads its catch-up page before
        // the read (docs/architecture.md): when the owner changed since the registration,
        // register there first, on the same link (requests on one link run in order).
        // Every device of the user that this node holds a session of (the scan does not say
        // which one it serves; re-registering the others early does no harm).
        std::vector<core::SessionRef> reregister;
        {
          std::lock_guard<std::mutex> lock(sessions_mu_);
          for (auto it = sessions_.lower_bound(SessionKey{user, 0});
               it != sessions_.end() && it->first.first == user; ++it) {
            if (it->second.registered_at != node) {
              it->second.registered_at = node;
              reregister.push_back(it->second.ref);
            }
          }
        }
        for (const core::SessionRef& ref : reregister) c.RegisterSession(user, ref);
        c.Scan(user, after_id, limit, max_bytes, std::move(d));
      },
      std::move(done));
}

void Router::History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
                     PageDone done) {
  Route<Result<core::Page>>(
      user,
      [user, before_id, limit, max_bytes](NodeId, core::CoreApi& c, PageDone d) {
        c.History(user, before_id, limit, max_bytes, std::move(d));
      },
      std::move(done));
}

void Router::AppendEnvelopes(uint64_t sender, const std::string& idempotency_key,
                             std::vector<v1::Envelope> envelopes, SendDone done) {
  AppendRemote(sender, idempotency_key, std::move(envelopes), std::move(done));
}

void Router::GetSettings(uint64_t user, SettingsDone done) {
  Route<Result<core::UserSettings>>(
      user, [user](NodeId, core::CoreApi& c, SettingsDone d) { c.GetSettings(user, std::move(d)); },
      std::move(done));
}

void Router::GetOwnSettings(uint64_t user, SettingsDone done) {
  Route<Result<core::UserSettings>>(
      user,
      [user](NodeId, core::CoreApi& c, SettingsDone d) { c.GetOwnSettings(user, std::move(d)); },
      std::move(done));
}

namespace {
struct ConsentJoin {
  std::mutex mu;
  size_t pending;
  core::Consent consent;
  Status error;
  core::CoreApi::ConsentDone done;
};
}  // namespace

void Router::CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                          ConsentDone done) {
  if (wrote_only) {
    Route<Result<core::Consent>>(
        inviter,
        [inviter, users](NodeId, core::CoreApi& c, ConsentDone d) {
          c.CheckConsent(inviter, users, true, std::move(d));
        },
        std::move(done));
    return;
  }
  auto parts = SplitByOwner(users);
  if (parts.empty()) {
    done(core::Consent{});
    return;
  }
  auto join = std::make_shared<ConsentJoin>();
  join->pending = parts.size();
  join->done = std::move(done);
  for (auto& entry : parts) {
    std::vector<uint64_t> part;
    part.reserve(entry.second.size());
    for (size_t i : entry.second) part.push_back(users[i]);
    const uint64_t key = part.front();
    Route<Result<core::Consent>>(
        key,
        [inviter, part = std::move(part)](NodeId, core::CoreApi& c, ConsentDone d) {
          c.CheckConsent(inviter, part, false, std::move(d));
        },
        [join](Result<core::Consent> got) {
          std::unique_lock<std::mutex> lock(join->mu);
          if (!got.ok()) {
            if (join->error.ok()) join->error = got.status();
          } else {
            core::Consent& c = join->consent;
            c.blocked.insert(c.blocked.end(), got->blocked.begin(), got->blocked.end());
            c.contacts_only.insert(c.contacts_only.end(), got->contacts_only.begin(),
                                   got->contacts_only.end());
          }
          if (--join->pending > 0) return;
          lock.unlock();
          if (!join->error.ok()) {
            join->done(join->error);
          } else {
            join->done(std::move(join->consent));
          }
        });
  }
}

void Router::CheckRemoteConsent(uint64_t inviter, const std::vector<uint64_t>& users,
                                bool wrote_only, ConsentDone done) {
  CheckConsent(inviter, users, wrote_only, std::move(done));
}

void Router::RelayTyping(uint64_t to, const v1::Typing& typing) {
  const std::optional<NodeId> owner = routes_.OwnerOf(to);
  core::CoreApi* target = owner ? CoreOf(*owner) : nullptr;
  if (target != nullptr) target->RelayTyping(to, typing);
}

// ---- EdgeSink: the local core's pushes, to whichever node holds the session ----

void Router::Deliver(const core::SessionRef& to, const v1::Envelope& envelope) {
  if (core::EdgeSink* sink = SinkOf(to.node)) sink->Deliver(to, envelope);
}

void Router::Replace(const core::SessionRef& old_session) {
  if (old_session.node == self_ || old_session.node == 0) ForgetReplaced(old_session);
  if (core::EdgeSink* sink = SinkOf(old_session.node)) sink->Replace(old_session);
}

void Router::RemoveDevice(const core::SessionRef& session) {
  if (session.node == self_ || session.node == 0) ForgetReplaced(session);
  if (core::EdgeSink* sink = SinkOf(session.node)) sink->RemoveDevice(session);
}

void Router::SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& debt) {
  if (core::EdgeSink* sink = SinkOf(to.node)) sink->SettleRate(to, user, debt);
}

void Router::ForgetReplaced(const core::SessionRef& ref) {
  std::lock_guard<std::mutex> lock(sessions_mu_);
  auto by_ref = user_of_.find(ref);
  if (by_ref == user_of_.end()) return;
  auto it = sessions_.find(SessionKey{by_ref->second, ref.device});
  if (it != sessions_.end() && it->second.ref == ref) sessions_.erase(it);
  user_of_.erase(by_ref);
}

std::vector<core::SessionRef> Router::SessionsRegisteredAt(NodeId node) {
  std::lock_guard<std::mutex> lock(sessions_mu_);
  std::vector<core::SessionRef> out;
  for (const auto& [key, s] : sessions_) {
    if (s.registered_at == node) out.push_back(s.ref);
  }
  return out;
}

size_t Router::local_sessions() {
  std::lock_guard<std::mutex> lock(sessions_mu_);
  return sessions_.size();
}

void Router::SendPresence(const core::SessionRef& to, const v1::Presence& presence) {
  if (core::EdgeSink* sink = SinkOf(to.node)) sink->SendPresence(to, presence);
}

void Router::SendTyping(const core::SessionRef& to, const v1::Typing& typing) {
  if (core::EdgeSink* sink = SinkOf(to.node)) sink->SendTyping(to, typing);
}

// ---- ClusterDirectory ----

void Router::AppendRemote(uint64_t sender, const std::string& key,
                          std::vector<v1::Envelope> envelopes, SendDone done) {
  AppendShares(sender, key, std::move(envelopes), std::move(done), Clock::now() + options_.deadline,
               options_.initial_backoff);
}

void Router::AppendShares(uint64_t sender, const std::string& key,
                          std::vector<v1::Envelope> envelopes, SendDone done,
                          Clock::time_point deadline, std::chrono::milliseconds backoff) {
  if (envelopes.empty()) {
    done(BadRequest("no envelopes to append"));
    return;
  }
  std::map<std::optional<NodeId>, std::vector<v1::Envelope>> shares;
  for (v1::Envelope& e : envelopes) shares[routes_.OwnerOf(e.recipient())].push_back(std::move(e));
  // One answer for all shares: the first error, else the first share's outcome, a duplicate
  // only when every share was one.
  struct Join {
    std::mutex mu;
    size_t pending;
    Status error;
    std::optional<core::AppendResult> first;
    bool all_duplicate = true;
    SendDone done;
  };
  auto join = std::make_shared<Join>();
  join->pending = shares.size();
  join->done = std::move(done);
  auto answer = [join](Result<core::AppendResult> r) {
    std::unique_lock<std::mutex> lock(join->mu);
    if (!r.ok()) {
      if (join->error.ok()) join->error = r.status();
    } else {
      if (!join->first) join->first = *r;
      join->all_duplicate = join->all_duplicate && r->duplicate;
    }
    if (--join->pending > 0) return;
    lock.unlock();
    if (!join->error.ok()) {
      join->done(join->error);
      return;
    }
    core::AppendResult out = *join->first;
    out.duplicate = join->all_duplicate;
    join->done(out);
  };
  for (auto& [owner, share] : shares) {
    // A retryable failure re-splits this share (its recipients may have moved apart).
    auto retry = [this, sender, key, share = share, answer, deadline, backoff](const Status& why) {
      if (Clock::now() + backoff > deadline) {
        Count(&RouterStats::gave_up);
        answer(Unavailable("not answered within the routing deadline: " + why.ToString()));
        return;
      }
      Count(&RouterStats::retries);
      After(backoff, [this, sender, key, share, answer, deadline, backoff] {
        {
          std::lock_guard<std::mutex> lock(timer_mu_);
          if (stopping_) {
            answer(Unavailable("the node is shutting down"));
            return;
          }
        }
        AppendShares(sender, key, share, answer, deadline,
                     std::min(backoff * 2, options_.max_backoff));
      });
    };
    core::CoreApi* target = owner ? CoreOf(*owner) : nullptr;
    if (target == nullptr) {
      retry(Unavailable("no reachable owner for a group member"));
      continue;
    }
    target->AppendEnvelopes(sender, key, std::move(share),
                            [retry, answer](Result<core::AppendResult> r) {
                              if (!r.ok() && Retryable(r.status())) {
                                retry(r.status());
                                return;
                              }
                              answer(std::move(r));
                            });
  }
}

void Router::GetRemoteSettings(uint64_t user, SettingsDone done) {
  GetSettings(user, std::move(done));
}

}  // namespace iris::cluster
