#include "edge/edge.h"

#include <unistd.h>

#include "edge/edge_metrics.h"
#include "edge/session.h"
#include "obs/log.h"

namespace iris::edge {

EdgeLoop::EdgeLoop(Edge& edge, uint32_t index) : edge_(edge), index_(index) {}

core::SessionRef EdgeLoop::RefOf(uint64_t session_id) const {
  return core::SessionRef{(edge_.options().process_index << 8) | index_, session_id};
}

Session* EdgeLoop::Find(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? nullptr : it->second.get();
}

void EdgeLoop::Forget(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  // Destroy after this loop turn: the session may be on the call stack right now.
  std::shared_ptr<Session> doomed(it->second.release());
  sessions_.erase(it);
  count_.fetch_sub(1, std::memory_order_relaxed);
  loop_.Defer([doomed] {});
}

void EdgeLoop::Accept(int fd, const std::string& peer_ip) {
  EdgeMetrics::Get().accepted.Inc();
  // Over the per-IP rate the connection still gets its TLS handshake, and its HELLO is
  // answered RATE_LIMITED (fatal) with retry_after_ms, as PROTOCOL.md section 7 says.
  uint32_t retry_after = 0;
  Status admit = edge_.connection_limiter().Admit(peer_ip, edge_.clock().MonoNanos());
  if (!admit.ok()) retry_after = std::max<uint32_t>(admit.retry_after_ms(), 1);
  const uint64_t id = next_session_++;
  auto session = std::make_unique<Session>(*this, id, fd, peer_ip, retry_after);
  Session* raw = session.get();
  sessions_.emplace(id, std::move(session));
  count_.fetch_add(1, std::memory_order_relaxed);
  if (!raw->Start().ok()) Forget(id);
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
    bool changed = false;
    const int level = edge_.core().ReportPressure(pressure, now, &changed);
    if (changed) {
      obs::LogWarn("degradation level changed", {{"to", level}, {"pressure", pressure}});
    }
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
      send_limiter_(options_.send_rate),
      settings_limiter_(options_.settings_rate),
      keys_upload_limiter_(options_.keys_upload_rate),
      keys_fetch_limiter_(options_.keys_fetch_rate),
      group_limiter_(options_.group_rate),
      failed_logins_(options_.failed_logins),
      connection_limiter_(options_.connection_rate) {}

Edge::~Edge() {
  if (started_) Shutdown(0);
}

Status Edge::Start() {
  EdgeMetrics::Get();  // every series exists (at zero) from the first scrape: rate() needs it
  for (const auto& cidr : options_.connection_allowlist) {
    IRIS_RETURN_IF_ERROR(connection_limiter_.AllowCidr(cidr));
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
        el->loop_, *fd, [raw](int cfd, const std::string& ip) { raw->Accept(cfd, ip); });
    IRIS_RETURN_IF_ERROR(el->listener_->Start());
    el->loop_.AddTicker([raw] { raw->Sweep(); });
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
    el->listener_.reset();
  }
  started_ = false;
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

void Edge::Deliver(const core::SessionRef& to, const v1::Envelope& envelope) {
  const uint32_t loop = to.edge & 0xff;
  if ((to.edge >> 8) != options_.process_index || loop >= loops_.size()) return;
  EdgeLoop* raw = loops_[loop].get();
  raw->loop_.Post([raw, sid = to.session, e = envelope] {
    if (Session* s = raw->Find(sid)) s->Push(e);
  });
}

void Edge::SendPresence(const core::SessionRef& to, const v1::Presence& presence) {
  const uint32_t loop = to.edge & 0xff;
  if ((to.edge >> 8) != options_.process_index || loop >= loops_.size()) return;
  EdgeLoop* raw = loops_[loop].get();
  raw->loop_.Post([raw, sid = to.session, p = presence] {
    if (Session* s = raw->Find(sid)) s->DeliverPresence(p);
  });
}

void Edge::SendTyping(const core::SessionRef& to, const v1::Typing& typing) {
  const uint32_t loop = to.edge & 0xff;
  if ((to.edge >> 8) != options_.process_index || loop >= loops_.size()) return;
  EdgeLoop* raw = loops_[loop].get();
  raw->loop_.Post([raw, sid = to.session, t = typing] {
    if (Session* s = raw->Find(sid)) s->DeliverTyping(t);
  });
}

void Edge::Replace(const core::SessionRef& old_session) {
  const uint32_t loop = old_session.edge & 0xff;
  if ((old_session.edge >> 8) != options_.process_index || loop >= loops_.size()) return;
  EdgeLoop* raw = loops_[loop].get();
  raw->loop_.Post([raw, sid = old_session.session] {
    if (Session* s = raw->Find(sid)) s->Replaced();
  });
}

}  // namespace iris::edge
