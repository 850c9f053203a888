#pragma once
// Edge: the client-facing side of irisd (DESIGN.md section 1): TLS 1.3 termination, HELLO
// and token checks, rate limits, sessions. One EdgeLoop per core, each with its own
// SO_REUSEPORT listening socket on the same port and its own sessions; the kernel spreads
// new connections among the loops.
//
// Edge implements core::EdgeSink: pushes from the core are posted to the loop that holds the
// target session (SessionRef::edge is the loop index).
//
// Thread-safety: Start/StopAccepting/Shutdown from one controlling thread; EdgeSink methods,
// RecheckAllSessions and the counters from any thread; everything else in EdgeLoop runs on
// its loop thread.

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "auth/jwt.h"
#include "common/clock.h"
#include "core/core_api.h"
#include "edge/rate_limit.h"
#include "net/event_loop.h"
#include "net/listener.h"
#include "net/tls.h"
#include "wire/validate.h"

namespace iris::edge {

struct EdgeOptions {
  std::string listen = "0.0.0.0:7443";
  int loops = 0;                       // 0 = one per core (at most 256)
  uint32_t process_index = 0;          // edge process index (--edge-processes); 0 embedded
  uint32_t hello_timeout_ms = 10'000;  // TLS handshake + valid HELLO
  uint32_t idle_timeout_ms = 25'000;
  size_t max_output_bytes = 1 << 20;     // per connection; a slower reader is disconnected
  uint32_t max_inflight_requests = 256;  // per connection; reading pauses beyond it
  uint32_t default_page_size = 256;
  uint32_t max_presence_subscriptions = 1024;
  // Graceful degradation: pressure = max(loop lag / loop_lag_budget_ms, ...).
  double loop_lag_budget_ms = 200;
  wire::ValidationLimits limits;
  SendRateConfig send_rate;  // per user: SEND and RECEIPT
  // A cluster node: a closing session hands its user's per-user limiter state to the owner
  // of the user's shard and a new one waits for the owner's (core::RateDebt). Off on a
  // single node, whose tables already hold every session of the user.
  bool carry_rate_debt = false;
  // Per user, for the other requests that write durably or take from another user's data
  // (docs/protocol.md "Limits"). Same two-bucket semantics as send_rate.
  SendRateConfig settings_rate = kSettingsRate;              // SETTINGS
  SendRateConfig keys_upload_rate = kKeysUploadRate;         // KEYS_UPLOAD
  SendRateConfig keys_fetch_rate = kKeysFetchRate;           // KEYS_FETCH, per requester
  SendRateConfig keys_fetch_pair_rate = kKeysFetchPairRate;  // KEYS_FETCH, per (requester, target)
  SendRateConfig keys_fetch_group_rate = kKeysFetchGroupRate;  // KEYS_FETCH in a group, per requester
  SendRateConfig group_rate = kGroupRate;                    // GROUP_CREATE and GROUP_UPDATE
  ConnectionLimitConfig connection_rate;                     // per IP
  std::vector<std::string> connection_allowlist;             // addresses or CIDR ranges
  // Load balancers (addresses or CIDR ranges) whose connections start with a PROXY protocol
  // v2 header before TLS (net/proxy_protocol.h): required from them, refused from anyone
  // else (it is not TLS). The per-IP checks of such a connection (pre-login cap, connection
  // rate, failed logins) and its logs use the client address the header carries; its
  // header must arrive within hello_timeout_ms, like the handshake.
  std::vector<std::string> proxy_protocol_from;
  // Pre-login connections (accepted, HELLO not accepted yet) are capped when accepted; a
  // connection over a cap is closed at once (iris_connections_refused_total). Per address
  // (IPv6: per connection_rate.ipv6_prefix_bits prefix; allow-listed addresses are exempt;
  // 0 = no cap) and in total in this process (0 = half the open-file limit, RLIMIT_NOFILE,
  // read when the Edge is constructed).
  uint32_t max_prelogin_per_ip = 64;
  uint32_t max_prelogin_total = 0;
  FailedLoginConfig failed_logins;  // per account
  // The node's limiter tables (LimiterTables): the region the core process shares with its
  // edge processes; null: the Edge makes a private one (the embedded shape). Its tables
  // must match connection_rate and failed_logins (LimiterTables::Specs).
  std::shared_ptr<internal::SharedRegion> shared_limits;
  std::vector<std::string> capabilities = {"receipts", "presence", "typing", "e2ee", "groups"};
};

class Edge;

// Counts pre-login connections (accepted, HELLO not accepted yet) per address and in total,
// so that connections that never log in cannot take every descriptor of the process.
//
// Thread-safety: any thread (the loops of one Edge share it): the total is an atomic and
// never exceeds its cap; the per-address counts are spread over 16 shards, each behind a
// mutex. Memory: one entry per address with a pre-login connection.
class PreLoginLimiter {
 public:
  using Key = std::array<uint8_t, 16>;
  enum class Verdict { kAdmitted, kOverPerAddress, kOverTotal };
  // per_address 0: no per-address cap. total is at least 1.
  PreLoginLimiter(uint32_t per_address, uint32_t total);
  // Counts one connection from `key` unless a cap is reached (then counts nothing);
  // `exempt` skips the per-address cap (and count).
  Verdict Admit(const Key& key, bool exempt);
  // Uncounts a connection that Admit() admitted with the same arguments.
  void Release(const Key& key, bool exempt);
  size_t total() const { return total_.load(std::memory_order_relaxed); }
  uint32_t total_cap() const { return total_cap_; }
  uint32_t per_address_cap() const { return per_address_cap_; }

 private:
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  struct alignas(64) Shard {
    std::mutex mu;
    std::unordered_map<Key, uint32_t, KeyHash> counts;
  };
  Shard& ShardOf(const Key& key);

  const uint32_t per_address_cap_;
  const uint32_t total_cap_;
  std::atomic<size_t> total_{0};
  std::array<Shard, 16> shards_;
};

// One loop thread and the sessions it holds.
class EdgeLoop {
 public:
  EdgeLoop(Edge& edge, uint32_t index);
  Edge& edge() { return edge_; }
  net::EventLoop& loop() { return loop_; }
  uint32_t index() const { return index_; }
  // The core's name for a session of this loop: (edge process << 8) | loop index.
  core::SessionRef RefOf(uint64_t session_id) const;
  // Loop thread only.
  class Session* Find(uint64_t session_id);
  void Forget(uint64_t session_id);  // destroys the session after this loop turn
  // The session's HELLO was accepted: it no longer counts as pre-login. Idempotent.
  void EndPreLogin(uint64_t session_id);
  // A connection from a load balancer gave its PROXY header: the per-IP checks Accept left
  // for later, now for the client address `client_ip`. False: over the pre-login cap (the
  // session must close). *retry_after_ms: non-zero when over the per-IP connection rate.
  bool AdmitProxied(uint64_t session_id, const std::string& client_ip, uint32_t* retry_after_ms);
  size_t session_count() const { return count_.load(std::memory_order_relaxed); }

 private:
  friend class Edge;
  void Accept(int fd, const std::string& peer_ip);
  void Sweep();
  struct PreLoginEntry;
  PreLoginEntry PreLoginEntryOf(const std::string& ip) const;
  void ReleaseAllPreLogin();

  // What Admit() counted for a pre-login session, to release it with.
  struct PreLoginEntry {
    PreLoginLimiter::Key key{};
    bool exempt = false;
  };

  Edge& edge_;
  const uint32_t index_;
  net::EventLoop loop_;
  std::unique_ptr<net::Listener> listener_;
  std::unordered_map<uint64_t, std::unique_ptr<class Session>> sessions_;
  std::unordered_map<uint64_t, PreLoginEntry> prelogin_;  // sessions still before HELLO
  uint64_t next_session_ = 1;
  int64_t last_sweep_ms_ = 0;
  int last_degradation_level_ = 0;  // loop 0: the level last reported (the log's "from")
  std::atomic<size_t> count_{0};
  std::thread thread_;
};

// The slots of core::RateDebt: two buckets ({sustained, peak}) of each per-user limiter.
enum class LimiterDebt : size_t {
  kSend = 0,        // SEND and RECEIPT
  kSettings = 2,    // SETTINGS
  kKeysUpload = 4,  // KEYS_UPLOAD
  kKeysFetch = 6,   // KEYS_FETCH
  kGroups = 8,      // GROUP_CREATE, GROUP_UPDATE
};

class Edge final : public core::EdgeSink {
 public:
  // Every reference must outlive the Edge.
  Edge(EdgeOptions options, core::CoreApi& core, const auth::TokenVerifier& verifier,
       const net::TlsContext& tls, const Clock& clock);
  ~Edge() override;

  Status Start();
  uint16_t port() const { return port_; }
  void StopAccepting();
  // Closes every session gracefully (in-flight replies are written first), within
  // `deadline_ms`, then stops the loops.
  void Shutdown(int64_t deadline_ms);
  // Re-checks every session's token (after a revocation): revoked sessions are closed.
  void RecheckAllSessions();
  // Ends the session `ref` of this edge with a fatal error `why` (e.g. UNAVAILABLE when the
  // node holding its registration went away: the client reconnects and resumes from its
  // cursor). Any thread.
  void Disconnect(const core::SessionRef& ref, const Status& why);
  size_t session_count() const;
  // Connections accepted whose HELLO has not been accepted yet (all loops).
  size_t prelogin_count() const { return prelogin_.total(); }
  uint32_t prelogin_total_cap() const { return prelogin_.total_cap(); }

  void Deliver(const core::SessionRef& to, const v1::Envelope& envelope) override;
  void Replace(const core::SessionRef& old_session) override;
  void RemoveDevice(const core::SessionRef& session) override;
  void SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& debt) override;
  void SendPresence(const core::SessionRef& to, const v1::Presence& presence) override;
  void SendTyping(const core::SessionRef& to, const v1::Typing& typing) override;

  const EdgeOptions& options() const { return options_; }
  core::CoreApi& core() { return core_; }
  const auth::TokenVerifier& verifier() const { return verifier_; }
  const net::TlsContext& tls() const { return tls_; }
  const Clock& clock() const { return clock_; }
  KeyedSendLimiter& send_limiter() { return send_limiter_; }
  KeyedSendLimiter& settings_limiter() { return settings_limiter_; }
  KeyedSendLimiter& keys_upload_limiter() { return keys_upload_limiter_; }
  KeyedSendLimiter& keys_fetch_limiter() { return keys_fetch_limiter_; }
  KeyedSendLimiter& keys_fetch_pair_limiter() { return keys_fetch_pair_limiter_; }
  KeyedSendLimiter& keys_fetch_group_limiter() { return keys_fetch_group_limiter_; }
  KeyedSendLimiter& group_limiter() { return group_limiter_; }
  FailedLoginLimiter& failed_logins() { return failed_logins_; }
  ConnectionRateLimiter& connection_limiter() { return connection_limiter_; }
  // Whether connections from `peer_ip` start with a PROXY header (proxy_protocol_from).
  bool IsProxySource(const std::string& peer_ip) const;
  PreLoginLimiter& prelogin_limiter() { return prelogin_; }
  // The user's debt in every per-user limiter of this node (core::RateDebt; slots in
  // LimiterDebt order), taken out: the user's buckets here are full afterwards.
  core::RateDebt TakeRateDebt(uint64_t user);
  // Adds a debt taken on another node (or kept by the owner) to the user's buckets here.
  void AddRateDebt(uint64_t user, const core::RateDebt& debt);
  EdgeLoop& loop_at(uint32_t i) { return *loops_[i]; }
  uint32_t loop_count() const { return static_cast<uint32_t>(loops_.size()); }

 private:
  // The loop of this process that runs `ref`'s session, or nullptr (another process's).
  EdgeLoop* LoopOf(const core::SessionRef& ref);
  // Runs fn(session) on the loop of `ref`'s session, if it still exists there.
  template <typename Fn>
  void PostToSession(const core::SessionRef& ref, Fn fn);
  // A loop's listener ran out of descriptors (starved) or is accepting again.
  void OnListenerStarved(uint32_t loop, bool starved, int err);

  EdgeOptions options_;
  core::CoreApi& core_;
  const auth::TokenVerifier& verifier_;
  const net::TlsContext& tls_;
  const Clock& clock_;
  KeyedSendLimiter send_limiter_;
  KeyedSendLimiter settings_limiter_;
  KeyedSendLimiter keys_upload_limiter_;
  KeyedSendLimiter keys_fetch_limiter_;
  KeyedSendLimiter keys_fetch_pair_limiter_;
  KeyedSendLimiter keys_fetch_group_limiter_;
  KeyedSendLimiter group_limiter_;
  FailedLoginLimiter failed_logins_;
  ConnectionRateLimiter connection_limiter_;
  PreLoginLimiter prelogin_;
  std::vector<CidrRange> proxy_sources_;  // set in Start()
  // Loops whose listener is paused for want of descriptors (log once per episode).
  std::atomic<int> starved_loops_{0};
  std::vector<std::unique_ptr<EdgeLoop>> loops_;
  uint16_t port_ = 0;
  bool started_ = false;
};

}  // namespace iris::edge
