#include "core/presence.h"

#include <algorithm>

#include "core/core.h"
#include "core/settings_cache.h"

namespace iris::core {

size_t SessionRefHash::operator()(const SessionRef& r) const {
  return std::hash<uint64_t>()(r.session * 1315423911u + r.edge + (uint64_t{r.node} << 32));
}

PresenceService::PresenceService(store::InboxStore& store, EdgeSink& sink, SettingsCache& settings,
                                 const Clock& clock)
    : store_(store), sink_(sink), settings_(settings), clock_(clock) {
  worker_ = std::thread([this] { WorkerLoop(); });
}

PresenceService::~PresenceService() {
  {
    std::lock_guard<std::mutex> lock(jobs_mu_);
    stopping_ = true;
  }
  jobs_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void PresenceService::Enqueue(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(jobs_mu_);
    jobs_.push_back(std::move(job));
  }
  jobs_cv_.notify_all();
}

void PresenceService::WorkerLoop() {
  std::unique_lock<std::mutex> lock(jobs_mu_);
  for (;;) {
    jobs_cv_.wait(lock, [&] { return !jobs_.empty() || stopping_; });
    if (jobs_.empty()) return;  // stopping and drained
    auto job = std::move(jobs_.front());
    jobs_.pop_front();
    ++running_;
    lock.unlock();
    job();
    lock.lock();
    --running_;
    jobs_cv_.notify_all();
  }
}

void PresenceService::Drain() {
  std::unique_lock<std::mutex> lock(jobs_mu_);
  jobs_cv_.wait(lock, [&] {
    return (jobs_.empty() && running_ == 0) || worker_.get_id() == std::this_thread::get_id();
  });
}

v1::Presence PresenceService::Current(uint64_t user, bool online) {
  v1::Presence p;
  p.set_user(user);
  if (!settings_.Get(user).share_presence) return p;  // offline, last_seen 0
  p.set_online(online);
  if (!online) {
    auto ls = store_.GetLastSeen(user);
    p.set_last_seen_ms(ls.ok() ? *ls : 0);
  }
  return p;
}

void PresenceService::OnOnline(uint64_t user) {
  Enqueue([this, user] { AnnounceNow(user, true); });
}

void PresenceService::OnOffline(uint64_t user) {
  const auto now = static_cast<uint64_t>(clock_.WallMillis());
  Enqueue([this, user, now] {
    // Durable before it is announced, so a query right after sees the same time.
    store_.PutLastSeen(user, now).IgnoreError();  // a failed write only loses precision
    AnnounceNow(user, false);
  });
}

void PresenceService::Announce(uint64_t user, bool online) {
  Enqueue([this, user, online] { AnnounceNow(user, online); });
}

void PresenceService::AnnounceNow(uint64_t user, bool online) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (watchers_.find(user) == watchers_.end()) return;
  }
  if (shed_ && shed_()) return;
  Notify(user, Current(user, online));
}

void PresenceService::Notify(uint64_t user, const v1::Presence& p) {
  std::vector<SessionRef> to;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = watchers_.find(user);
    if (it == watchers_.end()) return;
    to = it->second;
  }
  for (const SessionRef& r : to) sink_.SendPresence(r, p);
}

void PresenceService::Subscribe(const SessionRef& watcher, const std::vector<uint64_t>& users) {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t u : users) {
    auto& v = watchers_[u];
    if (std::find(v.begin(), v.end(), watcher) == v.end()) v.push_back(watcher);
  }
}

void PresenceService::Unsubscribe(const SessionRef& watcher, const std::vector<uint64_t>& users) {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t u : users) {
    auto it = watchers_.find(u);
    if (it == watchers_.end()) continue;
    auto& v = it->second;
    v.erase(std::remove(v.begin(), v.end(), watcher), v.end());
    if (v.empty()) watchers_.erase(it);
  }
}

void PresenceService::ForgetWatchersOn(uint32_t node) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = watchers_.begin(); it != watchers_.end();) {
    auto& v = it->second;
    v.erase(
        std::remove_if(v.begin(), v.end(), [node](const SessionRef& r) { return r.node == node; }),
        v.end());
    it = v.empty() ? watchers_.erase(it) : std::next(it);
  }
}

size_t PresenceService::watched_users() const {
  std::lock_guard<std::mutex> lock(mu_);
  return watchers_.size();
}

}  // namespace iris::core
