#include "edge/edge.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "edge/edge_metrics.h"
#include "edge/session.h"
#include "obs/log.h"

namespace iris::edge {
namespace {

obs::Counter& RefusedPreLogin(PreLoginLimiter::Verdict v) {
  static obs::Counter& per_ip = obs::Registry::Default().GetCounter(
      "iris_connections_refused_total",
      "Connections closed as soon as accepted: a pre-login cap was reached",
      {{"reason", "prelogin_per_ip"}});
  static obs::Counter& total = obs::Registry::Default().GetCounter(
      "iris_connections_refused_total",
      "Connections closed as soon as accepted: a pre-login cap was reached",
      {{"reason", "prelogin_total"}});
  return v == PreLoginLimiter::Verdict::kOverPerAddress ? per_ip : total;
}

obs::Counter& AcceptPauses() {
  static obs::Counter& c = obs::Registry::Default().GetCounter(
      "iris_accept_paused_total",
      "Times the edge stopped accepting because the process ran out of file descriptors");
  return c;
}

// Half the soft open-file limit: pre-login connections never take more than half of the
// descriptors, the rest stays for logged-in sessions, the store and the admin listener.
uint32_t DefaultPreLoginTotal() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == 0) return 512;
  const rlim_t half = rl.rlim_cur == RLIM_INFINITY ? rlim_t{1} << 20 : rl.rlim_cur / 2;
  return static_cast<uint32_t>(std::clamp<rlim_t>(half, 1, rlim_t{1} << 24));
}

// The limiter tables of the Edge: the node's shared region when given, else a private one
// (the same code either way). Aborts when a private region cannot be mapped.
std::shared_ptr<internal::SharedRegion> NodeLimits(EdgeOptions& o) {
  if (!o.shared_limits) {
    auto r = LimiterTables::Create(o.connection_rate, o.failed_logins,
                                   internal::SharedRegion::Mode::kPrivate);
    if (!r.ok()) {
      obs::LogError("cannot map the limiter tables", {{"error", r.status().ToString()}});
      std::abort();
    }
    o.shared_limits = *r;
  }
  return o.shared_limits;
}

}  // namespace

PreLoginLimiter::PreLoginLimiter(uint32_t per_address, uint32_t total)
    : per_address_cap_(per_address), total_cap_(std::max<uint32_t>(total, 1)) {}

size_t PreLoginLimiter::KeyHash::operator()(const Key& k) const {
  // FNV-1a: keys are counted connections (at most total_cap_), not attacker-chosen floods
  // of entries, so a seeded hash buys nothing here.
  uint64_t h = 1469598103934665603ull;
  for (uint8_t b : k) h = (h ^ b) * 1099511628211ull;
  return static_cast<size_t>(h);
}

PreLoginLimiter::Shard& PreLoginLimiter::ShardOf(const Key& key) {
  return shards_[KeyHash{}(key) % shards_.size()];
}

PreLoginLimiter::Verdict PreLoginLimiter::Admit(const Key& key, bool exempt) {
  if (total_.fetch_add(1, std::memory_order_relaxed) >= total_cap_) {
    total_.fetch_sub(1, std::memory_order_relaxed);
    return Verdict::kOverTotal;
  }
  if (exempt || per_address_cap_ == 0) return Verdict::kAdmitted;
  Shard& s = ShardOf(key);
  std::lock_guard lock(s.mu);
  uint32_t& n = s.counts[key];
  if (n >= per_address_cap_) {
    total_.fetch_sub(1, std::memory_order_relaxed);
    return Verdict::kOverPerAddress;
  }
  ++n;
  return Verdict::kAdmitted;
}

void PreLoginLimiter::Release(const Key& key, bool exempt) {
  total_.fetch_sub(1, std::memory_order_relaxed);
  if (exempt || per_address_cap_ == 0) return;
  Shard& s = ShardOf(key);
  std::lock_guard lock(s.mu);
  auto it = s.counts.find(key);
  if (it == s.counts.end()) return;
  if (--it->second == 0) s.counts.erase(it);
}

EdgeLoop::EdgeLoop(Edge& edge, uint32_t index)
    : edge_(edge),
      index_(index),
      // Session ids start at the process's start time in seconds times 2^24 (room for 16 M
      // sessions per second of uptime; below 2^56 until 2106, as WELCOME's session id puts
      // the loop above bit 56), so a restarted edge process or node does not reuse a session
      // id its previous incarnation registered with a core: a late unregister, or a core
      // forgetting the old incarnation's sessions, cannot match a new session.
      next_session_((static_cast<uint64_t>(edge.clock().WallMillis()) / 1000) << 24) {}

core::SessionRef EdgeLoop::RefOf(uint64_t session_id) const {
  return core::SessionRef{
      .node = 0, .edge = (edge_.options().process_index << 8) | index_, .session = session_id};
}

Session* EdgeLoop::Find(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? nullptr : it->second.get();
}

void EdgeLoop::Forget(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  EndPreLogin(session_id);
  // Destroy after this loop turn: the session may be on the call stack right now.
  std::shared_ptr<Session> doomed(it->second.release());
  sessions_.erase(it);
  count_.fetch_sub(1, std::memory_order_relaxed);
  loop_.Defer([this, doomed]() mutable {
    doomed.reset();  // closes the socket
    // A descriptor is free: a listener paused for want of one tries again now.
    if (listener_) listener_->Resume();
  });
}

void EdgeLoop::EndPreLogin(uint64_t session_id) {
  auto it = prelogin_.find(session_id);
  if (it == prelogin_.end()) return;
  edge_.prelogin_limiter().Release(it->second.key, it->second.exempt);
  prelogin_.erase(it);
}

void EdgeLoop::ReleaseAllPreLogin() {
  for (const auto& [id, e] : prelogin_) edge_.prelogin_limiter().Release(e.key, e.exempt);
  prelogin_.clear();
}

EdgeLoop::PreLoginEntry EdgeLoop::PreLoginEntryOf(const std::string& ip) const {
  PreLoginEntry pre;
  const std::optional<IpAddress> addr = IpAddress::Parse(ip);
  if (addr) {
    const int bits = edge_.options().connection_rate.ipv6_prefix_bits;
    pre.key = (addr->is_v4() ? *addr : addr->Masked(bits)).bytes();
    pre.exempt = edge_.connection_limiter().IsAllowListed(*addr);
  }
  return pre;
}

void EdgeLoop::Accept(int fd, const std::string& peer_ip) {
  EdgeMetrics::Get().accepted.Inc();
  // A load balancer's connection: the client's address comes with its PROXY header, and
  // the per-IP checks wait for it (AdmitProxied); meanwhile it counts in the total only.
  const bool proxied = edge_.IsProxySource(peer_ip);
  // Pre-login caps first, before any other work for the connection: over a cap it is closed
  // at once, so connections that never log in cannot take every descriptor.
  PreLoginEntry pre = proxied ? PreLoginEntry{{}, true} : PreLoginEntryOf(peer_ip);
  {
    const auto verdict = edge_.prelogin_limiter().Admit(pre.key, pre.exempt);
    if (verdict != PreLoginLimiter::Verdict::kAdmitted) {
      RefusedPreLogin(verdict).Inc();
      close(fd);
      return;
    }
  }
  // Over the per-IP rate the connection still gets its TLS handshake, and its HELLO is
  // answered RATE_LIMITED (fatal) with retry_after_ms, as PROTOCOL.md section 7 says.
  uint32_t retry_after = 0;
  if (!proxied) {
    Status admit = edge_.connection_limiter().Admit(peer_ip, edge_.clock().MonoNanos());
    if (!admit.ok()) retry_after = std::max<uint32_t>(admit.retry_after_ms(), 1);
  }
  const uint64_t id = next_session_++;
  auto session = std::make_unique<Session>(*this, id, fd, peer_ip, retry_after);
  Session* raw = session.get();
  if (proxied) raw->ExpectProxyHeader();
  sessions_.emplace(id, std::move(session));
  prelogin_.emplace(id, pre);
  count_.fetch_add(1, std::memory_order_relaxed);
  if (!raw->Start().ok()) Forget(id);
}

bool EdgeLoop::AdmitProxied(uint64_t session_id, const std::string& client_ip,
                            uint32_t* retry_after_ms) {
  *retry_after_ms = 0;
  auto it = prelogin_.find(session_id);
  if (it == prelogin_.end()) return false;
  // The connection's place in the total becomes the client's entry.
  edge_.prelogin_limiter().Release(it->second.key, it->second.exempt);
  const PreLoginEntry pre = PreLoginEntryOf(client_ip);
  const auto verdict = edge_.prelogin_limiter().Admit(pre.key, pre.exempt);
  if (verdict != PreLoginLimiter::Verdict::kAdmitted) {
    RefusedPreLogin(verdict).Inc();
    prelogin_.erase(it);
    return false;
  }
  it->second = pre;
  Status admit = edge_.connection_limiter().Admit(client_ip, edge_.clock().MonoNanos());
  if (!admit.ok()) *retry_after_ms = std::max<uint32_t>(admit.retry_after_ms(), 1);
  return true;
}

void EdgeLoop::Sweep() {
  const int64_t now = edge_.clock().MonoMillis();
  if (now - last_sweep_ms_ < 1000) return;
  last_sweep_ms_ = now;
  if (index_ == 0) {
    const int64_t now_ns = edge_.clock().MonoNanos();
    edge_.send_limiter().Sweep(now_ns);
    edge_.settings_limiter().Sweep(now_ns);
    edge_.keys_upload_limiter().Sweep(now_ns);
    edge_.keys_fetch_limiter().Sweep(now_ns);
    edge_.keys_fetch_pair_limiter().Sweep(now_ns);
    edge_.keys_fetch_group_limiter().Sweep(now_ns);
    edge_.group_limiter().Sweep(now_ns);
    edge_.connection_limiter().Sweep(now_ns);
    edge_.failed_logins().Sweep(now_ns);
    // Overload signal: the worst recent event-loop lag against its budget.
    int64_t lag_ns = 0;
    for (uint32_t i = 0; i < edge_.loop_count(); ++i) {
      lag_ns = std::max(lag_ns, edge_.loop_at(i).loop().recent_lag_ns());
    }
    const double pressure =
        static_cast<double>(lag_ns) / 1e6 / std::max(1.0, edge_.options().loop_lag_budget_ms);
    const core::PressureReport report = edge_.core().ReportPressure(pressure, now);
    if (report.changed) {
      obs::LogWarn(
          "degradation level changed",
          {{"from", last_degradation_level_}, {"to", report.level}, {"pressure", pressure}});
    }
    last_degradation_level_ = report.level;
  }
  std::vector<Session*> all;
  all.reserve(sessions_.size());
  for (auto& [id, s] : sessions_) all.push_back(s.get());
  for (Session* s : all) s->Tick(now);
}

Edge::Edge(EdgeOptions options, core::CoreApi& core, const auth::TokenVerifier& verifier,
           const net::TlsContext& tls, const Clock& clock)
    : options_(std::move(options)),
      core_(core),
      verifier_(verifier),
      tls_(tls),
      clock_(clock),
      send_limiter_(options_.send_rate, NodeLimits(options_)),
      settings_limiter_(options_.settings_rate, options_.shared_limits, LimiterTables::kSettings),
      keys_upload_limiter_(options_.keys_upload_rate, options_.shared_limits,
                           LimiterTables::kKeysUpload),
      keys_fetch_limiter_(options_.keys_fetch_rate, options_.shared_limits,
                          LimiterTables::kKeysFetch),
      keys_fetch_pair_limiter_(options_.keys_fetch_pair_rate, options_.shared_limits,
                               LimiterTables::kKeysFetchPair),
      keys_fetch_group_limiter_(options_.keys_fetch_group_rate, options_.shared_limits,
                                LimiterTables::kKeysFetchGroup),
      group_limiter_(options_.group_rate, options_.shared_limits, LimiterTables::kGroups),
      failed_logins_(options_.failed_logins, options_.shared_limits),
      connection_limiter_(options_.connection_rate, options_.shared_limits),
      prelogin_(options_.max_prelogin_per_ip, options_.max_prelogin_total != 0
                                                  ? options_.max_prelogin_total
                                                  : DefaultPreLoginTotal()) {}

bool Edge::IsProxySource(const std::string& peer_ip) const {
  if (proxy_sources_.empty()) return false;
  const std::optional<IpAddress> addr = IpAddress::Parse(peer_ip);
  if (!addr) return false;
  for (const CidrRange& r : proxy_sources_) {
    if (r.Contains(*addr)) return true;
  }
  return false;
}

Edge::~Edge() {
  if (started_) Shutdown(0);
}

Status Edge::Start() {
  EdgeMetrics::Get();  // every series exists (at zero) from the first scrape: rate() needs it
  RefusedPreLogin(PreLoginLimiter::Verdict::kOverPerAddress);
  RefusedPreLogin(PreLoginLimiter::Verdict::kOverTotal);
  AcceptPauses();
  for (const auto& cidr : options_.connection_allowlist) {
    IRIS_RETURN_IF_ERROR(connection_limiter_.AllowCidr(cidr));
  }
  proxy_sources_.clear();
  for (const auto& cidr : options_.proxy_protocol_from) {
    IRIS_ASSIGN_OR_RETURN(CidrRange range, CidrRange::Parse(cidr, "--proxy-protocol-from"));
    proxy_sources_.push_back(range);
  }
  int n = options_.loops > 0 ? options_.loops : static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  n = std::clamp(n, 1, 256);
  std::string listen = options_.listen;
  for (int i = 0; i < n; ++i) {
    auto el = std::make_unique<EdgeLoop>(*this, static_cast<uint32_t>(i));
    IRIS_RETURN_IF_ERROR(el->loop_.Init());
    auto fd = net::ListenTcp(listen);
    if (!fd.ok()) return fd.status();
    if (i == 0) {
      auto port = net::LocalPort(*fd);
      if (!port.ok()) return port.status();
      port_ = *port;
      // With port 0 the other loops must bind the port the first one got.
      std::string host;
      uint16_t ignored = 0;
      IRIS_RETURN_IF_ERROR(net::SplitHostPort(listen, &host, &ignored));
      listen = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
               std::to_string(port_);
    }
    EdgeLoop* raw = el.get();
    el->listener_ = std::make_unique<net::Listener>(
        el->loop_, *fd, [raw](int cfd, const std::string& ip) { raw->Accept(cfd, ip); },
        [this, i](bool starved, int err) {
          OnListenerStarved(static_cast<uint32_t>(i), starved, err);
        });
    IRIS_RETURN_IF_ERROR(el->listener_->Start());
    el->loop_.AddTicker([raw] { raw->Sweep(); });
    // A listener paused for want of descriptors resumes on a tick 100 ms later at most.
    el->loop_.AddTicker([raw] {
      if (raw->listener_) raw->listener_->OnTick();
    });
    loops_.push_back(std::move(el));
  }
  for (auto& el : loops_) {
    EdgeLoop* raw = el.get();
    el->thread_ = std::thread([raw] { raw->loop_.Run(); });
  }
  started_ = true;
  return Status::Ok();
}

void Edge::StopAccepting() {
  for (auto& el : loops_) {
    EdgeLoop* raw = el.get();
    raw->loop_.Post([raw] {
      if (raw->listener_) raw->listener_->Stop();
    });
  }
}

void Edge::Shutdown(int64_t deadline_ms) {
  if (!started_) return;
  StopAccepting();
  for (auto& el : loops_) {
    EdgeLoop* raw = el.get();
    raw->loop_.Post([raw] {
      std::vector<Session*> all;
      for (auto& [id, s] : raw->sessions_) all.push_back(s.get());
      for (Session* s : all) s->Shutdown();
    });
  }
  // Wait (bounded) for sessions to flush and close.
  const int64_t until = clock_.MonoMillis() + deadline_ms;
  while (session_count() > 0 && clock_.MonoMillis() < until) {
    usleep(10'000);  // shutdown path only: polls a counter owned by the loop threads
  }
  for (auto& el : loops_) el->loop_.Stop();
  for (auto& el : loops_) {
    if (el->thread_.joinable()) el->thread_.join();
  }
  for (auto& el : loops_) {
    el->sessions_.clear();
    el->ReleaseAllPreLogin();
    el->listener_.reset();
  }
  started_ = false;
}

void Edge::OnListenerStarved(uint32_t loop, bool starved, int err) {
  // Once per episode for the process: the first loop to starve logs, the last to recover
  // logs again. Each loop's listener already reports only the edges of its own episode.
  if (starved) {
    if (starved_loops_.fetch_add(1) == 0) {
      AcceptPauses().Inc();
      rlimit rl{};
      getrlimit(RLIMIT_NOFILE, &rl);
      obs::LogWarn("out of file descriptors: accepting paused, retried every 100 ms",
                   {{"error", std::strerror(err)},
                    {"loop", loop},
                    {"open_file_limit", static_cast<uint64_t>(rl.rlim_cur)},
                    {"connections", static_cast<uint64_t>(session_count())},
                    {"prelogin", static_cast<uint64_t>(prelogin_count())}});
    }
  } else if (starved_loops_.fetch_sub(1) == 1) {
    obs::LogInfo("accepting connections again", {{"loop", loop}});
  }
}

void Edge::RecheckAllSessions() {
  for (auto& el : loops_) {
    EdgeLoop* raw = el.get();
    raw->loop_.Post([raw] {
      const int64_t now = raw->edge_.clock_.WallMillis();
      std::vector<Session*> all;
      for (auto& [id, s] : raw->sessions_) all.push_back(s.get());
      for (Session* s : all) s->RecheckAuth(now);
    });
  }
}

size_t Edge::session_count() const {
  size_t n = 0;
  for (const auto& el : loops_) n += el->session_count();
  return n;
}

EdgeLoop* Edge::LoopOf(const core::SessionRef& ref) {
  const uint32_t loop = ref.edge & 0xff;
  if ((ref.edge >> 8) != options_.process_index || loop >= loops_.size()) return nullptr;
  return loops_[loop].get();
}

template <typename Fn>
void Edge::PostToSession(const core::SessionRef& ref, Fn fn) {
  EdgeLoop* raw = LoopOf(ref);
  if (raw == nullptr) return;
  raw->loop_.Post([raw, sid = ref.session, fn = std::move(fn)]() mutable {
    if (Session* s = raw->Find(sid)) fn(*s);
  });
}

void Edge::Deliver(const core::SessionRef& to, const v1::Envelope& envelope) {
  PostToSession(to, [e = envelope](Session& s) { s.Push(e); });
}

void Edge::SendPresence(const core::SessionRef& to, const v1::Presence& presence) {
  PostToSession(to, [p = presence](Session& s) { s.DeliverPresence(p); });
}

void Edge::SendTyping(const core::SessionRef& to, const v1::Typing& typing) {
  PostToSession(to, [t = typing](Session& s) { s.DeliverTyping(t); });
}

void Edge::Disconnect(const core::SessionRef& ref, const Status& why) {
  PostToSession(ref, [why](Session& s) { s.Disconnect(why); });
}

void Edge::Replace(const core::SessionRef& old_session) {
  PostToSession(old_session, [](Session& s) { s.Replaced(); });
}

void Edge::RemoveDevice(const core::SessionRef& session) {
  PostToSession(session, [](Session& s) { s.Removed(); });
}

void Edge::SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& debt) {
  EdgeLoop* raw = LoopOf(to);
  if (raw == nullptr) return;
  raw->loop_.Post([this, raw, to, user, debt] {
    if (Session* s = raw->Find(to.session); s != nullptr && s->user() == user) {
      s->SettleRate(debt);
    } else if (!debt.zero()) {
      // The session has gone (its own debt went to the owner as it closed): this debt goes
      // back the same way, to be kept for the user's next session.
      core_.UnregisterSession(user, to, debt);
    }
  });
}

namespace {

// The per-user limiters of `edge` with their slots in core::RateDebt.
template <typename Fn>
void ForEachUserLimiter(Edge& edge, Fn fn) {
  fn(edge.send_limiter(), LimiterDebt::kSend);
  fn(edge.settings_limiter(), LimiterDebt::kSettings);
  fn(edge.keys_upload_limiter(), LimiterDebt::kKeysUpload);
  fn(edge.keys_fetch_limiter(), LimiterDebt::kKeysFetch);
  fn(edge.group_limiter(), LimiterDebt::kGroups);
}

}  // namespace

core::RateDebt Edge::TakeRateDebt(uint64_t user) {
  core::RateDebt debt;
  const int64_t now_ns = clock_.MonoNanos();
  ForEachUserLimiter(*this, [&](KeyedSendLimiter& limiter, LimiterDebt slot) {
    const auto taken = limiter.TakeDebt(user, now_ns);
    debt.ns[static_cast<size_t>(slot)] = taken[0];
    debt.ns[static_cast<size_t>(slot) + 1] = taken[1];
  });
  return debt;
}

void Edge::AddRateDebt(uint64_t user, const core::RateDebt& debt) {
  if (debt.zero()) return;
  const int64_t now_ns = clock_.MonoNanos();
  ForEachUserLimiter(*this, [&](KeyedSendLimiter& limiter, LimiterDebt slot) {
    const size_t i = static_cast<size_t>(slot);
    if (!limiter.AddDebt(user, now_ns, {debt.ns[i], debt.ns[i + 1]})) {
      obs::LogWarn("a user's rate debt was not kept: the limiter table is full",
                   {{"user", std::to_string(user)}});
    }
  });
}

}  // namespace iris::edge
