#include "load_loop.h"

#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "auth/jwt.h"
#include "common/clock.h"
#include "common/status.h"
#include "wire/opcode.h"

namespace iris::bench {
namespace {

using wire::Opcode;
constexpr uint8_t Op(Opcode o) { return static_cast<uint8_t>(o); }

}  // namespace

// The loop's 1 ms timerfd: paced sending and storm retries.
class LoadLoop::Timer final : public net::EventLoop::Handler {
 public:
  explicit Timer(LoadLoop& owner) : owner_(owner) {}
  void OnEvents(uint32_t) override {
    uint64_t expirations;
    [[maybe_unused]] ssize_t n = read(owner_.timer_fd_, &expirations, sizeof(expirations));
    owner_.OnTimer();
  }

 private:
  LoadLoop& owner_;
};

LoadLoop::LoadLoop(const BenchOptions& options, int index, std::atomic<uint64_t>* deliveries_seen)
    : options_(options),
      index_(index),
      deliveries_seen_(deliveries_seen),
      keys_(SystemClock::Instance(),
            static_cast<uint64_t>(getpid()) * 131 + static_cast<uint64_t>(index)) {
  auto& h = result_.histograms;
  h_tcp_ = &h["connect_tcp"];
  h_tls_ = &h["connect_tls"];
  h_welcome_ = &h["connect_welcome"];
  h_ready_ = &h["connect_ready"];
  h_reconnect_ = &h["reconnect"];
  h_ack_ = &h["send_ack"];
  h_deliver_ = &h["deliver"];
}

LoadLoop::~LoadLoop() {
  Join();
  slots_.clear();  // connections deregister from the loop before it goes
  if (timer_fd_ >= 0) close(timer_fd_);
}

size_t LoadLoop::AddSession(uint64_t user, const Target* target, std::optional<in_addr> source) {
  Slot s;
  s.conn = std::make_unique<BenchConnection>(loop_, this);
  s.conn->tag = static_cast<uint32_t>(slots_.size());
  s.user = user;
  s.target = target;
  s.source = source;
  slots_.push_back(std::move(s));
  return slots_.size() - 1;
}

void LoadLoop::AddLedger(size_t sender, size_t recipient) {
  ledgers_.push_back(std::make_unique<DeliveryLedger>(slots_[sender].user, slots_[recipient].user));
  slots_[sender].out = ledgers_.back().get();
  slots_[recipient].in = ledgers_.back().get();
  senders_.push_back(sender);
}

Status LoadLoop::Init() {
  IRIS_RETURN_IF_ERROR(loop_.Init());
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timer_fd_ < 0) return Internal("timerfd_create failed");
  timer_ = std::make_unique<Timer>(*this);
  IRIS_RETURN_IF_ERROR(loop_.Add(timer_fd_, EPOLLIN, timer_.get()));
  loop_.AddTicker([this] { KeepAlive(); });
  body_.reserve(static_cast<size_t>(std::max(options_.body_bytes, 16)));
  return Status::Ok();
}

void LoadLoop::Spawn() {
  thread_ = std::thread([this] { loop_.Run(); });
}

void LoadLoop::Join() {
  if (!thread_.joinable()) return;
  loop_.Stop();
  thread_.join();
}

void LoadLoop::ResetPhase() {
  planned_.store(kUnknown);
  ready_.store(0);
  failed_.store(0);
}

LoopProgress LoadLoop::Progress() const {
  LoopProgress p;
  p.planned = planned_.load(std::memory_order_relaxed);
  p.ready = ready_.load(std::memory_order_relaxed);
  p.failed = failed_.load(std::memory_order_relaxed);
  p.sent = sent_.load(std::memory_order_relaxed);
  p.acked = acked_.load(std::memory_order_relaxed);
  p.refused = refused_.load(std::memory_order_relaxed);
  p.delivered = delivered_.load(std::memory_order_relaxed);
  p.first_start_ns = first_start_ns_.load(std::memory_order_relaxed);
  p.last_ready_ns = last_ready_ns_.load(std::memory_order_relaxed);
  return p;
}

std::string LoadLoop::MintToken(const Slot& s) {
  auth::Claims c;
  c.user_id = s.user;
  c.iat = SystemClock::Instance().WallMillis() / 1000;
  c.exp = c.iat + 3600;
  c.jti = "bench-" + std::to_string(getpid()) + "-" + std::to_string(index_) + "-" +
          std::to_string(++token_serial_);
  return auth::MintToken(s.target->jwt_secret, c);
}

// ---- connecting ----

void LoadLoop::BeginConnect(ConnectMode mode, int concurrency) {
  phase_ = Phase::kConnecting;
  mode_ = mode;
  max_in_flight_ = std::max(1, concurrency);
  in_flight_ = 0;
  first_start_ns_.store(MonoNowNs());
  last_ready_ns_.store(0);
  pending_.clear();
  for (size_t i = slots_.size(); i-- > 0;) {
    if (!slots_[i].established) pending_.push_back(i);
  }
  planned_.store(pending_.size());
  StartMore();
}

void LoadLoop::StartMore() {
  while (in_flight_ < max_in_flight_ && !pending_.empty()) {
    const size_t idx = pending_.back();
    pending_.pop_back();
    StartSlot(idx);
  }
}

void LoadLoop::StartSlot(size_t idx) {
  Slot& s = slots_[idx];
  Endpoint ep;
  ep.server = s.target->addr;
  ep.source = s.source;
  ep.tls = s.target->tls->get();
  ++result_.counters["attempts"];
  s.in_attempt = true;
  ++in_flight_;
  if (!s.conn->Start(ep, MintToken(s), s.conn->cursor())) {
    AttemptFailed(s, s.conn->failure(), 0);
  }
}

void LoadLoop::AttemptFailed(Slot& s, const std::string& reason, uint32_t retry_after_ms) {
  s.in_attempt = false;
  --in_flight_;
  ++result_.failures[reason];
  const int64_t now = MonoNowNs();
  if (phase_ == Phase::kStorm && now < storm_deadline_ns_) {
    // As fast as the server admits: retry after its retry_after_ms, or after 50-100 ms.
    const int64_t wait_ms = retry_after_ms > 0 ? retry_after_ms : 50 + (s.user % 51);
    retries_.emplace_back(now + wait_ms * 1'000'000, s.conn->tag);
  } else {
    failed_.fetch_add(1, std::memory_order_relaxed);
  }
  StartMore();
}

void LoadLoop::AbandonConnect() {
  const uint64_t never_started = pending_.size() + retries_.size();
  if (never_started > 0) {
    result_.failures["not admitted before the deadline"] += never_started;
    failed_.fetch_add(never_started, std::memory_order_relaxed);
  }
  pending_.clear();
  retries_.clear();
  for (auto& s : slots_) {
    if (s.in_attempt) {
      s.conn->Close(true);
      s.in_attempt = false;
      --in_flight_;
      ++result_.failures["no answer before the deadline"];
      failed_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  if (phase_ == Phase::kConnecting || phase_ == Phase::kStorm) phase_ = Phase::kHolding;
}

void LoadLoop::OnReady(BenchConnection& c) {
  Slot& s = slots_[c.tag];
  if (!s.in_attempt) return;
  s.in_attempt = false;
  --in_flight_;
  if (c.welcome_user() != s.user) {
    ++result_.violations.wrong_user;
    result_.violations.Note("WELCOME for user " + std::to_string(c.welcome_user()) +
                            " on a session of user " + std::to_string(s.user));
  }
  const int64_t start = c.start_ns();
  h_tcp_->Record(c.tcp_ns() - start);
  h_tls_->Record(c.tls_ns() - start);
  h_welcome_->Record(c.welcome_ns() - start);
  h_ready_->Record(c.ready_ns() - start);
  last_ready_ns_.store(c.ready_ns(), std::memory_order_relaxed);
  if (phase_ == Phase::kStorm) {
    h_reconnect_->Record(c.ready_ns() - storm_start_ns_);
    ++result_.counters["reconnected"];
  }
  if (mode_ == ConnectMode::kOnce && phase_ == Phase::kConnecting) {
    c.Close(false);
  } else {
    s.established = true;
    if (s.send_after_ready && s.out != nullptr) {
      s.send_after_ready = false;
      SendOne(s, MonoNowNs());
    }
  }
  ready_.fetch_add(1, std::memory_order_relaxed);
  StartMore();
}

void LoadLoop::OnFailed(BenchConnection& c) {
  Slot& s = slots_[c.tag];
  if (s.out != nullptr) s.out->AbandonInFlight();
  if (s.in_attempt) {
    AttemptFailed(s, c.failure(), c.last_retry_after_ms());
    return;
  }
  if (s.established) {
    s.established = false;
    ++result_.violations.sessions_dropped;
    result_.violations.Note("session of user " + std::to_string(s.user) +
                            " closed while it should stay open: " + c.failure());
    ++result_.failures["established session lost: " + c.failure()];
  }
}

// ---- keep-alive ----

void LoadLoop::KeepAlive() {
  const int64_t now = MonoNowNs();
  if (now - last_keepalive_ns_ < 1'000'000'000) return;
  last_keepalive_ns_ = now;
  const int64_t every = static_cast<int64_t>(options_.keepalive_ms) * 1'000'000;
  v1::Ping ping;
  for (auto& s : slots_) {
    if (s.established && s.conn->ready() && now - s.conn->last_send_ns() > every) {
      ping.set_nonce(now);
      s.conn->Send(Op(Opcode::kPing), ping);
      ++result_.counters["pings"];
    }
  }
}

// ---- traffic ----

void LoadLoop::SendOne(Slot& s, int64_t intended_ns) {
  DeliveryLedger& l = *s.out;
  const uint64_t seq = l.Begin(intended_ns);
  v1::Send m;
  m.set_request_id(seq + 1);
  const Uuid key = keys_.Next();
  m.set_idempotency_key(UuidBytes(key).data(), 16);
  m.set_recipient(l.recipient());
  m.set_body(EncodeBody(seq, intended_ns, static_cast<size_t>(options_.body_bytes)));
  s.conn->Send(Op(Opcode::kSend), m);
  sent_.fetch_add(1, std::memory_order_relaxed);
}

void LoadLoop::BeginTraffic(double rate, int window) {
  traffic_on_ = true;
  traffic_start_ns_ = MonoNowNs();
  window_ = std::max(1, window);
  paced_ = rate > 0;
  if (paced_) {
    rate_per_ns_ = rate / 1e9;
    paced_sent_ = 0;
    itimerspec t{};
    t.it_interval.tv_nsec = 1'000'000;
    t.it_value.tv_nsec = 1'000'000;
    timerfd_settime(timer_fd_, 0, &t, nullptr);
    return;
  }
  for (size_t idx : senders_) {
    Slot& s = slots_[idx];
    if (!s.established) continue;
    for (int i = 0; i < window_; ++i) SendOne(s, MonoNowNs());
  }
}

void LoadLoop::StopTraffic() {
  traffic_on_ = false;
  if (phase_ != Phase::kStorm) {
    itimerspec t{};
    timerfd_settime(timer_fd_, 0, &t, nullptr);
  }
}

void LoadLoop::SendOnePerSender() {
  for (size_t idx : senders_) {
    Slot& s = slots_[idx];
    if (s.established) SendOne(s, MonoNowNs());
  }
}

void LoadLoop::OnTimer() {
  const int64_t now = MonoNowNs();
  if (traffic_on_ && paced_ && !senders_.empty()) {
    // Message k (from 0) is due at traffic_start + k / rate: k = 0 at once.
    const auto due =
        static_cast<uint64_t>(static_cast<double>(now - traffic_start_ns_) * rate_per_ns_) + 1;
    while (paced_sent_ < due) {
      // Open loop: the intended time is the schedule's, so a stall anywhere (server, kernel,
      // this loop) shows in the latency instead of silently lowering the offered rate.
      const int64_t intended =
          traffic_start_ns_ + static_cast<int64_t>(static_cast<double>(paced_sent_) / rate_per_ns_);
      ++paced_sent_;
      Slot& s = slots_[senders_[next_sender_]];
      next_sender_ = (next_sender_ + 1) % senders_.size();
      if (s.established && s.conn->ready()) {
        SendOne(s, intended);
      } else {
        ++result_.counters["paced_skipped_not_connected"];
      }
    }
  }
  if (!retries_.empty()) {
    size_t kept = 0;
    for (auto& r : retries_) {
      if (r.first <= now) {
        pending_.push_back(r.second);
      } else {
        retries_[kept++] = r;
      }
    }
    retries_.resize(kept);
    StartMore();
  }
}

void LoadLoop::OnFrame(BenchConnection& c, uint8_t opcode, std::string_view payload) {
  Slot& s = slots_[c.tag];
  if (opcode == Op(Opcode::kSendAck)) {
    v1::SendAck a;
    if (!a.ParseFromArray(payload.data(), static_cast<int>(payload.size())) || s.out == nullptr) {
      ++result_.violations.unexpected;
      result_.violations.Note("SEND_ACK that no request of user " + std::to_string(s.user) +
                              " expects");
      return;
    }
    const int64_t intended =
        s.out->OnAck(a.request_id(), a.message_id(), a.duplicate(), result_.violations);
    if (intended >= 0) h_ack_->Record(MonoNowNs() - intended);
    acked_.fetch_add(1, std::memory_order_relaxed);
    if (traffic_on_ && !paced_ && s.established) SendOne(s, MonoNowNs());
    return;
  }
  if (opcode == Op(Opcode::kError)) {
    v1::Error e;
    e.ParseFromArray(payload.data(), static_cast<int>(payload.size()));
    const std::string code(StatusCodeName(static_cast<StatusCode>(e.code())));
    if (e.request_id() != 0 && s.out != nullptr) {
      s.out->OnRefused(e.request_id(), result_.violations);
      refused_.fetch_add(1, std::memory_order_relaxed);
      ++result_.counters["send_refused_" + code];
      if (traffic_on_ && !paced_ && s.established) SendOne(s, MonoNowNs());
    } else {
      ++result_.counters["error_" + code];
    }
    return;
  }
  if (opcode == Op(Opcode::kPong)) return;
  ++result_.counters["other_frames"];
}

void LoadLoop::OnEnvelope(BenchConnection& c, const v1::Envelope& e) {
  Slot& s = slots_[c.tag];
  const uint64_t nth = deliveries_seen_->fetch_add(1, std::memory_order_relaxed) + 1;
  if (options_.inject_drop_delivery == nth) return;  // self-test: as if lost
  const int repeat = options_.inject_duplicate_delivery == nth ? 2 : 1;
  for (int r = 0; r < repeat; ++r) {
    uint64_t seq = 0;
    int64_t intended = 0;
    if (s.in == nullptr || e.sender() != s.in->sender() || e.recipient() != s.user ||
        !DecodeBody(e.body(), &seq, &intended)) {
      ++result_.violations.unexpected;
      result_.violations.Note("user " + std::to_string(s.user) + ": unexpected message " +
                              std::to_string(e.id()) + " from " + std::to_string(e.sender()));
      return;
    }
    if (s.in->OnDelivered(seq, e.id(), result_.violations)) {
      h_deliver_->Record(MonoNowNs() - intended);
      delivered_.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

// ---- reconnect storm ----

void LoadLoop::BeginStorm(int concurrency, int64_t deadline_ns) {
  phase_ = Phase::kStorm;
  mode_ = ConnectMode::kHold;
  storm_deadline_ns_ = deadline_ns;
  max_in_flight_ = std::max(1, concurrency);
  in_flight_ = 0;
  pending_.clear();
  storm_start_ns_ = MonoNowNs();
  first_start_ns_.store(storm_start_ns_);
  last_ready_ns_.store(0);
  // Drop everything first, at once; only then start reconnecting.
  std::vector<size_t> dropped;
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (!s.established) continue;
    if (s.out != nullptr && s.out->in_flight() > 0) {
      // The worker waited --drain-s for every reply before the drop: a SEND still without
      // SEND_ACK or ERROR now was never answered while its connection was up.
      result_.violations.unanswered += s.out->in_flight();
      result_.violations.Note("user " + std::to_string(s.user) + ": " +
                              std::to_string(s.out->in_flight()) +
                              " SEND(s) unanswered before the drop");
      s.out->AbandonInFlight();
    }
    s.conn->Close(true);
    s.established = false;
    s.send_after_ready = s.out != nullptr;
    dropped.push_back(i);
  }
  result_.counters["dropped"] += dropped.size();
  pending_.assign(dropped.rbegin(), dropped.rend());
  planned_.store(dropped.size());
  itimerspec t{};
  t.it_interval.tv_nsec = 1'000'000;
  t.it_value.tv_nsec = 1'000'000;
  timerfd_settime(timer_fd_, 0, &t, nullptr);
  StartMore();
}

void LoadLoop::CloseAll() {
  phase_ = Phase::kClosing;
  traffic_on_ = false;
  itimerspec t{};
  timerfd_settime(timer_fd_, 0, &t, nullptr);
  pending_.clear();
  retries_.clear();
  for (auto& s : slots_) {
    s.conn->Close(false);
    s.established = false;
    s.in_attempt = false;
  }
  in_flight_ = 0;
}

void LoadLoop::Finish() {
  for (auto& l : ledgers_) l->Finish(result_.violations);
  LoopProgress p = Progress();
  result_.counters["sent"] = p.sent;
  result_.counters["acked"] = p.acked;
  result_.counters["refused"] = p.refused;
  result_.counters["delivered"] = p.delivered;
}

}  // namespace iris::bench
