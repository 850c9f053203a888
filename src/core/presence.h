#pragma once
// PresenceService: online state, last seen and interest-based presence fan-out
// (RFC-001 FR-6, FR-7, §3.2 note; PROTOCOL.md "Presence").
//
// A user is online while it has a registered session. Changes are sent only to sessions
// that subscribed to that user (never a broadcast): watchers_ maps a watched user to its
// subscribers. last_seen_ms is written durably when the last session ends (also by idle
// timeout). A user with share_presence = false appears offline with last_seen_ms = 0.
//
// Online/offline transitions run on one presence worker thread, in the order they happened:
// the durable last-seen write (an fdatasync) never blocks an event loop, and a user's
// "online" can never overtake its earlier "offline".
//
// Thread-safety: all methods may be called from any thread (one mutex; presence changes are
// rare next to messages). Frames leave through EdgeSink::SendPresence without the lock held.

#include <cstdint>
#include <condition_variable>
#include <deque>
#include <functional>
#include <thread>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/clock.h"
#include "iris/v1/client.pb.h"

namespace iris::store {
class InboxStore;
}

namespace iris::core {

struct SessionRef;
class EdgeSink;
class SettingsCache;

struct SessionRefHash {
  size_t operator()(const SessionRef& r) const;
};

class PresenceService {
 public:
  PresenceService(store::InboxStore& store, EdgeSink& sink, SettingsCache& settings,
                  const Clock& clock);
  ~PresenceService();  // finishes queued transitions

  // Queued to the presence worker; return at once.
  void OnOnline(uint64_t user);
  void OnOffline(uint64_t user);
  // Waits until every transition queued so far ran (tests, shutdown).
  void Drain();
  // The state a watcher sees now.
  v1::Presence Current(uint64_t user, bool online);
  // Adds subscriptions; the caller enforces the per-session limit.
  void Subscribe(const SessionRef& watcher, const std::vector<uint64_t>& users);
  void Unsubscribe(const SessionRef& watcher, const std::vector<uint64_t>& users);
  // Drops every subscription of sessions held by cluster node `node` (its link ended: their
  // sessions re-subscribe when their clients reconnect).
  void ForgetWatchersOn(uint32_t node);
  // Re-announces `user` to its watchers (after a share_presence change). Queued behind the
  // transitions before it, so an earlier login's "online" cannot reach a watcher after the
  // "offline" of a user who has just hidden their presence.
  void Announce(uint64_t user, bool online);
  // Whether presence updates are currently shed (graceful degradation).
  void set_shed(std::function<bool()> shed) { shed_ = std::move(shed); }

  size_t watched_users() const;

 private:
  void AnnounceNow(uint64_t user, bool online);  // on the presence worker
  void Notify(uint64_t user, const v1::Presence& p);
  void Enqueue(std::function<void()> job);
  void WorkerLoop();

  store::InboxStore& store_;
  EdgeSink& sink_;
  SettingsCache& settings_;
  const Clock& clock_;
  std::function<bool()> shed_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::vector<SessionRef>> watchers_;
  // The presence worker.
  std::mutex jobs_mu_;
  std::condition_variable jobs_cv_;
  std::deque<std::function<void()>> jobs_;
  size_t running_ = 0;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace iris::core
