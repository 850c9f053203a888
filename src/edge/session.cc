#include "edge/session.h"

#include <algorithm>
#include <random>

#include "common/assert.h"
#include "common/devices.h"
#include "common/hlc.h"
#include "core/groups.h"
#include "edge/edge.h"
#include "edge/edge_metrics.h"
#include "obs/log.h"
#include "obs/trace.h"
#include "wire/opcode.h"

namespace iris::edge {
namespace {

constexpr uint32_t kProtocolVersion = 1;
// A SYNC_PAGE / HISTORY_PAGE must fit one frame: leave room for the page's own fields.
constexpr size_t kPageBytes = wire::kMaxPayloadBytes - 64;
// A connection being closed gets this long past its idle deadline to drain its output; a
// peer that stops reading would otherwise hold the socket and its queue forever.
constexpr int64_t kCloseGraceMs = 5'000;
// How long a new session holds its requests for the owner's answer to its registration
// (the user's rate debt) before it goes on without it.
constexpr int64_t kSettleTimeoutMs = 2'000;

std::string NewTraceId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  std::string t(16, '\0');
  uint64_t a = rng(), b = rng() | 1;  // never all zero
  for (int i = 0; i < 8; ++i) {
    t[i] = static_cast<char>(a >> (8 * i));
    t[8 + i] = static_cast<char>(b >> (8 * i));
  }
  return t;
}

// MISMATCHED_DEVICES carries its device lists in the status message (common/devices.h).
void SetMismatchedDevices(const Status& st, v1::Error* err) {
  std::vector<uint32_t> missing, extra;
  if (!ParseMismatchedDevices(st, &missing, &extra)) return;
  for (uint32_t d : missing) err->add_missing_devices(d);
  for (uint32_t d : extra) err->add_extra_devices(d);
}

std::string ErrorFrame(uint64_t request_id, const Status& st) {
  v1::Error err;
  err.set_request_id(request_id);
  err.set_code(static_cast<uint32_t>(st.code()));
  err.set_message(st.message());
  err.set_retry_after_ms(st.retry_after_ms());
  SetMismatchedDevices(st, &err);
  EdgeMetrics::Get().ErrorOut(st.code());
  std::string frame;
  wire::AppendMessageFrame(&frame, static_cast<uint8_t>(wire::Opcode::kError), err).IgnoreError();
  return frame;
}

std::string OkFrame(uint64_t request_id) {
  v1::Ok ok;
  ok.set_request_id(request_id);
  std::string frame;
  wire::AppendMessageFrame(&frame, static_cast<uint8_t>(wire::Opcode::kOk), ok).IgnoreError();
  return frame;
}

// `m` as one frame, appended to *out; an ERROR (INTERNAL) for request_id when it does not
// fit one frame.
void AppendFrame(std::string* out, wire::Opcode op, const google::protobuf::MessageLite& m,
                 uint64_t request_id) {
  std::string frame;
  if (!wire::AppendMessageFrame(&frame, static_cast<uint8_t>(op), m).ok()) {
    IRIS_BUG("an outgoing message did not fit one frame");
    *out += ErrorFrame(request_id, Internal("the answer did not fit one frame"));
    return;
  }
  *out += frame;
}

// The answer of a per-user limiter for one kind of request (`what`), with retry_after_ms
// at least 1 as PROTOCOL.md requires for RATE_LIMITED and OVERLOADED.
Status Limited(const Status& refused, std::string_view what) {
  std::string message = refused.code() == StatusCode::kRateLimited
                            ? std::string(what) + " rate limit exceeded"
                            : refused.message();
  return Status(refused.code(), std::move(message),
                std::max<uint32_t>(refused.retry_after_ms(), 1));
}

// Requests answered through the ordered reply slots (Session::ReserveReply).
bool AnsweredInOrder(uint8_t opcode) {
  switch (static_cast<wire::Opcode>(opcode)) {
    case wire::Opcode::kSend:
    case wire::Opcode::kReceipt:
    case wire::Opcode::kSettings:
    case wire::Opcode::kSettingsGet:
    case wire::Opcode::kPresenceSubscribe:
    case wire::Opcode::kPresenceUnsubscribe:
    case wire::Opcode::kPresenceQuery:
    case wire::Opcode::kKeysUpload:
    case wire::Opcode::kKeysFetch:
    case wire::Opcode::kHistory:
    case wire::Opcode::kGroupCreate:
    case wire::Opcode::kGroupUpdate:
    case wire::Opcode::kGroupGet: return true;
    default: return false;
  }
}

// At most this many HISTORY requests of one session wait for the store at a time; each
// answer may be close to a full frame (64 KiB), held until the replies before it are out.
constexpr uint32_t kMaxHistoryInFlight = 8;
// Pushes held while a catch-up scan is out (see Push); past this many, the catch-up scans
// once more instead of switching to push mode.
constexpr size_t kMaxHeldPushes = 1024;

}  // namespace

Session::ReplyTarget Session::TargetOf(uint64_t seq) {
  return ReplyTarget{&loop_.loop(), &loop_, id_, seq};
}

void Session::PostReply(const ReplyTarget& t, std::string frame) {
  t.loop->Post([owner = t.owner, sid = t.sid, seq = t.seq, f = std::move(frame)]() mutable {
    if (Session* s = owner->Find(sid)) s->CompleteReply(seq, std::move(f));
  });
}

Session::Session(EdgeLoop& loop, uint64_t id, int fd, std::string peer_ip,
                 uint32_t ip_retry_after_ms)
    : loop_(loop), id_(id), ip_retry_after_ms_(ip_retry_after_ms) {
  const Edge& edge = loop_.edge();
  // The certificate in force now (SIGHUP may swap it): SSL_new keeps its own reference.
  const std::shared_ptr<SSL_CTX> ctx = edge.tls().Current();
  conn_ = std::make_unique<net::Connection>(loop_.loop(), ctx.get(), fd, this,
                                            edge.options().max_output_bytes);
  conn_->set_peer_address(std::move(peer_ip));
  opened_ms_ = last_frame_ms_ = edge.clock().MonoMillis();
}

Session::~Session() = default;

Status Session::Start() { return conn_->Start(); }

core::SessionRef Session::Ref() const {
  core::SessionRef r = loop_.RefOf(id_);
  r.device = device_;
  return r;
}

void Session::OnHandshakeDone() { EdgeMetrics::Get().handshakes.Inc(); }

bool Session::OnProxyHeader(const Result<net::ProxyHeader>& header) {
  static obs::Counter& malformed = obs::Registry::Default().GetCounter(
      "iris_proxy_header_errors_total",
      "Connections from a --proxy-protocol-from source closed for a malformed PROXY header");
  if (!header.ok()) {
    malformed.Inc();
    obs::LogWarn("malformed PROXY protocol header from a load balancer; connection closed",
                 {{"source", conn_->peer_address()}, {"error", header.status().message()}});
    return false;
  }
  // LOCAL (the balancer's own connection): the balancer is the client.
  const std::string client = header->local ? conn_->peer_address() : header->source_ip;
  uint32_t retry_after = 0;
  if (!loop_.AdmitProxied(id_, client, &retry_after)) return false;
  conn_->set_peer_address(client);
  ip_retry_after_ms_ = retry_after;
  return true;
}

void Session::OnData(std::span<const uint8_t> data) {
  decoder_.Consume(data, [this](const wire::Frame& f) { return HandleFrame(f.opcode, f.payload); });
  // Backpressure: stop reading while too many requests wait for the store (or for the
  // rate budget).
  if (ReadingHeld()) conn_->PauseReading(true);
}

bool Session::ReadingHeld() const {
  const size_t max = loop_.edge().options().max_inflight_requests;
  return replies_.size() >= max || (!rate_settled_ && unsettled_frames_.size() >= max);
}

void Session::SettleRate(const core::RateDebt& debt) {
  owner_answered_ = true;
  ApplyRate(debt);
}

void Session::ApplyRate(const core::RateDebt& debt) {
  Edge& edge = loop_.edge();
  edge.AddRateDebt(user_, debt);
  if (rate_settled_) return;
  rate_settled_ = true;
  std::vector<std::pair<uint8_t, std::string>> held;
  held.swap(unsettled_frames_);
  for (const auto& [opcode, payload] : held) {
    if (!HandleFrame(opcode, payload)) return;  // closing
  }
  if (!ReadingHeld() && !conn_->closing()) conn_->PauseReading(false);
}

void Session::OnWritable() {}

void Session::OnClosed(std::string_view reason) {
  (void)reason;
  state_ = State::kClosing;
  if (!watching_.empty()) {
    loop_.edge().core().Unsubscribe(Ref(), watching_);
    watching_.clear();
  }
  if (registered_) {
    // What the user still owes goes to the owner, for the user's next session wherever it is.
    Edge& edge = loop_.edge();
    const core::RateDebt debt =
        edge.options().carry_rate_debt ? edge.TakeRateDebt(user_) : core::RateDebt{};
    edge.core().UnregisterSession(user_, Ref(), debt);
    registered_ = false;
  }
  EdgeMetrics::Get().closed.Inc();
  loop_.Forget(id_);
}

bool Session::HandleFrame(uint8_t opcode, std::string_view payload) {
  if (state_ == State::kClosing) return false;
  if (!rate_settled_) {
    // Handled in order once the owner has answered the registration (SettleRate).
    unsettled_frames_.emplace_back(opcode, std::string(payload));
    return true;
  }
  EdgeMetrics::Get().FrameIn(opcode);
  Edge& edge = loop_.edge();
  // Only complete frames count as activity: bytes that never finish a frame do not keep a
  // connection alive past the idle timeout.
  last_frame_ms_ = edge.clock().MonoMillis();
  // Field 1 is a request id only for some messages (for SYNC it is the cursor).
  const uint64_t peeked_id = wire::PeekRequestId(opcode, payload);
  if (state_ == State::kAwaitHello && opcode != static_cast<uint8_t>(wire::Opcode::kHello) &&
      opcode != static_cast<uint8_t>(wire::Opcode::kPing)) {
    CloseWith(peeked_id, Unauthenticated("HELLO must come first"));
    return false;
  }
  // Every frame after HELLO re-checks the token (expiry, revocation), whatever the frame,
  // before anything else is done with it: cheap, no crypto.
  if (state_ != State::kAwaitHello) {
    Status auth = edge.verifier().Recheck(claims_, edge.clock().WallMillis());
    if (!auth.ok()) {
      CloseWith(peeked_id, auth);
      return false;
    }
  }
  auto decoded = wire::DecodeClientFrame(opcode, payload, edge.options().limits);
  if (!decoded.ok()) {
    const Status& s = decoded.status();
    const uint64_t request_id = s.code() == StatusCode::kUnknownOpcode ? 0 : peeked_id;
    if (state_ != State::kAwaitHello && AnsweredInOrder(opcode)) {
      // Requests the core answers are answered in the order received, refusals included.
      CompleteReply(ReserveReply(), ErrorFrame(request_id, s));
    } else {
      SendError(request_id, s, false);
    }
    return state_ != State::kClosing;
  }
  std::visit(
      [this](auto& m) {
        using M = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<M, v1::Hello>) {
          if (state_ != State::kAwaitHello) {
            SendError(0, BadRequest("HELLO was already accepted on this connection"), false);
          } else {
            HandleHello(m);
          }
        } else if constexpr (std::is_same_v<M, v1::Ping>) {
          v1::Pong pong;
          pong.set_nonce(m.nonce());
          SendMessage(wire::Opcode::kPong, pong);
        } else if constexpr (std::is_same_v<M, v1::Pong>) {
          // keep-alive answer: the activity itself is what counts
        } else if constexpr (std::is_same_v<M, v1::Send>) {
          HandleSend(m);
        } else if constexpr (std::is_same_v<M, v1::DeliverAck>) {
          HandleDeliverAck(m);
        } else if constexpr (std::is_same_v<M, v1::Sync>) {
          HandleSync(m);
        } else if constexpr (std::is_same_v<M, v1::SyncAck>) {
          HandleSyncAck(m);
        } else if constexpr (std::is_same_v<M, v1::History>) {
          HandleHistory(m);
        } else if constexpr (std::is_same_v<M, v1::Receipt>) {
          HandleReceipt(m);
        } else if constexpr (std::is_same_v<M, v1::Settings>) {
          HandleSettings(m);
        } else if constexpr (std::is_same_v<M, v1::SettingsGet>) {
          HandleSettingsGet(m);
        } else if constexpr (std::is_same_v<M, v1::PresenceSubscribe>) {
          HandlePresenceSubscribe(m);
        } else if constexpr (std::is_same_v<M, v1::PresenceUnsubscribe>) {
          HandlePresenceUnsubscribe(m);
        } else if constexpr (std::is_same_v<M, v1::PresenceQuery>) {
          HandlePresenceQuery(m);
        } else if constexpr (std::is_same_v<M, v1::Typing>) {
          HandleTyping(m);
        } else if constexpr (std::is_same_v<M, v1::KeysUpload>) {
          HandleKeysUpload(m);
        } else if constexpr (std::is_same_v<M, v1::KeysFetch>) {
          HandleKeysFetch(m);
        } else if constexpr (std::is_same_v<M, v1::GroupCreate>) {
          HandleGroupCreate(m);
        } else if constexpr (std::is_same_v<M, v1::GroupUpdate>) {
          HandleGroupUpdate(m);
        } else if constexpr (std::is_same_v<M, v1::GroupGet>) {
          HandleGroupGet(m);
        }
      },
      *decoded);
  return state_ != State::kClosing;
}

void Session::HandleHello(const v1::Hello& m) {
  Edge& edge = loop_.edge();
  uint32_t version = 0;
  for (uint32_t v : m.versions()) {
    if (v == kProtocolVersion) version = v;
  }
  if (version == 0) {
    CloseWith(0, Status(StatusCode::kUnsupportedVersion, "this server speaks protocol version 1"));
    return;
  }
  if (ip_retry_after_ms_ > 0) {
    EdgeMetrics::Get().rate_limited_connect.Inc();
    CloseWith(0, RateLimited("too many connections from this address", ip_retry_after_ms_));
    return;
  }
  const int64_t now_ms = edge.clock().WallMillis();
  const int64_t now_ns = edge.clock().MonoNanos();
  // The token is verified first: a valid token is never refused by the failed-login limit
  // (so bad tokens naming someone cannot lock them out). Failures are counted per source
  // address (allow-listed addresses excepted) and per account the token names (unverified
  // `sub`); over either budget a bad token is answered RATE_LIMITED instead.
  auto claims = edge.verifier().Verify(m.token(), now_ms);
  if (!claims.ok()) {
    EdgeMetrics::Get().auth_failures.Inc();
    std::optional<IpAddress> from = IpAddress::Parse(conn_->peer_address());
    if (from && edge.connection_limiter().IsAllowListed(*from)) from.reset();
    const uint64_t claimed = auth::UnverifiedSubject(m.token()).value_or(0);
    Status limited = edge.failed_logins().RecordFailure(from, claimed, now_ns);
    if (!limited.ok()) {
      EdgeMetrics::Get().rate_limited_login.Inc();
      CloseWith(0, limited);
      return;
    }
    CloseWith(0, claims.status());
    return;
  }
  claims_ = std::move(claims).value();
  user_ = claims_.user_id;
  device_ = claims_.device;
  page_size_ = m.page_size() == 0 ? edge.options().default_page_size : m.page_size();
  last_sent_ = m.cursor();

  v1::Welcome w;
  w.set_version(version);
  for (const auto& c : m.capabilities()) {
    for (const auto& ours : edge.options().capabilities) {
      if (c == ours) {
        w.add_capabilities(c);
        break;
      }
    }
  }
  w.set_user_id(user_);
  w.set_server_time_ms(static_cast<uint64_t>(now_ms));
  w.set_session_id(id_ | (static_cast<uint64_t>(loop_.index()) << 56));
  w.set_device_id(device_);
  v1::Limits* l = w.mutable_limits();
  const auto& lim = edge.options().limits;
  l->set_max_body_bytes(lim.max_body_bytes);
  l->set_max_page_messages(lim.max_page_messages);
  l->set_rate_per_sec(static_cast<uint32_t>(edge.options().send_rate.sustained_per_sec));
  l->set_rate_burst(static_cast<uint32_t>(edge.options().send_rate.burst_per_sec));
  l->set_max_presence_subscriptions(1024);
  l->set_idle_timeout_ms(edge.options().idle_timeout_ms);
  SendMessage(wire::Opcode::kWelcome, w);
  if (state_ == State::kClosing) return;
  loop_.EndPreLogin(id_);  // logged in: no longer under the pre-login caps

  // In a cluster the owner answers with the user's rate debt (SettleRate); frames wait for it.
  if (edge.options().carry_rate_debt) {
    rate_settled_ = false;
    owner_answered_ = false;
    settle_deadline_ms_ = edge.clock().MonoMillis() + kSettleTimeoutMs;
  }
  edge.core().RegisterSession(user_, Ref());
  registered_ = true;
  EdgeMetrics::Get().sessions_opened.Inc();
  state_ = State::kCatchUp;
  ContinueCatchUp();
}

void Session::ContinueCatchUp() {
  if (scan_inflight_) {
    // One scan per session at a time: its page is discarded and the catch-up restarts from
    // the cursor now in force when it comes back.
    restart_scan_ = true;
    return;
  }
  // Whatever was held is visible to this scan (or to a later page of it).
  held_.clear();
  held_overflow_ = false;
  scan_inflight_ = true;
  const uint64_t gen = ++scan_gen_;
  net::EventLoop* loop = &loop_.loop();
  EdgeLoop* owner = &loop_;
  const uint64_t sid = id_;
  loop_.edge().core().Scan(user_, last_sent_, page_size_, kPageBytes,
                           [loop, owner, sid, gen](Result<core::Page> page) {
                             loop->Post([owner, sid, gen, page = std::move(page)]() mutable {
                               if (Session* s = owner->Find(sid))
                                 s->OnScanPage(gen, std::move(page));
                             });
                           });
}

void Session::OnScanPage(uint64_t gen, Result<core::Page> page) {
  if (gen != scan_gen_ || !scan_inflight_) return;
  scan_inflight_ = false;
  if (state_ == State::kClosing) return;
  if (restart_scan_) {
    restart_scan_ = false;
    ContinueCatchUp();
    return;
  }
  if (!page.ok()) {
    // The inbox could not be read. Push mode now would skip every message between the
    // cursor and the next push (the client would ack past them), so the session ends with
    // the error and the client reconnects from its cursor.
    held_.clear();
    CloseWith(0, page.status());
    return;
  }
  // The page covers every message of the user's inbox up to its last; this device gets
  // those for it (docs/protocol.md appendix 20), and the cursor covers the others too.
  const uint64_t cursor = page->messages.empty() ? last_sent_ : page->messages.back().id();
  v1::SyncPage out;
  for (auto& e : page->messages) {
    if (ForDevice(e.recipient_device(), device_)) *out.add_messages() = std::move(e);
  }
  if (out.messages_size() == 0 && !page->gap) {
    // Nothing newer, or every message of the page was for other devices: read on without a
    // round trip when more remains or pushes were lost from the hold (the next scan reads
    // them), else catch-up is done.
    last_sent_ = cursor;
    if (page->has_more || held_overflow_) {
      ContinueCatchUp();
      return;
    }
    v1::SyncDone done;
    done.set_cursor(last_sent_);
    state_ = State::kPush;
    SendMessage(wire::Opcode::kSyncDone, done);
    ReplayHeld();
    return;
  }
  // A hold that overflowed: the client acknowledges this page and the next scan reads
  // what the hold dropped.
  const bool has_more = page->has_more || held_overflow_;
  out.set_has_more(has_more);
  out.set_cursor(cursor);
  out.set_gap(page->gap);
  EdgeMetrics::Get().msg_out.Inc(static_cast<uint64_t>(out.messages_size()));
  EdgeMetrics::Get().sync_pages.Inc();
  last_sent_ = cursor;
  if (has_more) {
    held_.clear();
    state_ = State::kAwaitSyncAck;
    awaited_ack_ = cursor;
    SendMessage(wire::Opcode::kSyncPage, out);
    return;
  }
  // Last page: switch to push mode, then replay what arrived while the scan was out.
  state_ = State::kPush;
  SendMessage(wire::Opcode::kSyncPage, out);
  if (state_ == State::kClosing) return;
  v1::SyncDone done;
  done.set_cursor(last_sent_);
  SendMessage(wire::Opcode::kSyncDone, done);
  ReplayHeld();
}

void Session::ReplayHeld() {
  std::vector<v1::Envelope> held;
  held.swap(held_);
  for (const v1::Envelope& e : held) Push(e);  // drops ids <= last_sent_
}

void Session::HandleSync(const v1::Sync& m) {
  last_sent_ = m.cursor();
  if (m.page_size() != 0) page_size_ = m.page_size();
  state_ = State::kCatchUp;
  ContinueCatchUp();
}

void Session::HandleSyncAck(const v1::SyncAck& m) {
  if (state_ != State::kAwaitSyncAck) {
    SendError(0, BadRequest("no sync page is waiting for an acknowledgement"), false);
    return;
  }
  if (m.cursor() != awaited_ack_) {
    SendError(0, BadRequest("SYNC_ACK cursor does not match the last page's cursor"), false);
    return;
  }
  if (m.cursor() > acked_) acked_ = m.cursor();
  state_ = State::kCatchUp;
  ContinueCatchUp();
}

void Session::HandleDeliverAck(const v1::DeliverAck& m) {
  if (m.cursor() > acked_) {
    acked_ = m.cursor();
    // End-to-end latency: accepted (the id's physical time) to the recipient's ack.
    const int64_t accepted_ms = static_cast<int64_t>(m.cursor() >> 16);
    const int64_t now_ms = loop_.edge().clock().WallMillis();
    if (m.cursor() <= last_sent_ && now_ms >= accepted_ms) {
      EdgeMetrics::Get().e2e_latency.Observe(static_cast<double>(now_ms - accepted_ms) / 1000.0);
    }
  }
}

void Session::HandleHistory(const v1::History& m) {
  const uint64_t seq = ReserveReply();
  const uint64_t request_id = m.request_id();
  if (history_inflight_ >= kMaxHistoryInFlight) {
    CompleteReply(
        seq, ErrorFrame(request_id, Overloaded("at most " + std::to_string(kMaxHistoryInFlight) +
                                                   " HISTORY requests in flight per connection",
                                               100)));
    return;
  }
  ++history_inflight_;
  const ReplyTarget t = TargetOf(seq);
  loop_.edge().core().History(
      user_, m.before(), m.limit() == 0 ? 256 : m.limit(), kPageBytes,
      [t, request_id, device = device_](Result<core::Page> page) {
        std::string frame;
        if (!page.ok()) {
          frame = ErrorFrame(request_id, page.status());
        } else {
          v1::HistoryPage out;
          out.set_request_id(request_id);
          // The lowest id the page covers, this device's or not (appendix 20).
          out.set_cursor(page->messages.empty() ? 0 : page->messages.back().id());
          for (auto& e : page->messages) {
            if (ForDevice(e.recipient_device(), device)) *out.add_messages() = std::move(e);
          }
          out.set_has_more(page->has_more);
          AppendFrame(&frame, wire::Opcode::kHistoryPage, out, request_id);
        }
        t.loop->Post([owner = t.owner, sid = t.sid, seq = t.seq, f = std::move(frame)]() mutable {
          if (Session* s = owner->Find(sid)) {
            --s->history_inflight_;
            s->CompleteReply(seq, std::move(f));
          }
        });
      });
}

void Session::HandleSend(v1::Send& m) {
  m.set_sender_device(device_);  // the server says which device sent it
  Edge& edge = loop_.edge();
  const uint64_t seq = ReserveReply();
  std::string trace = m.trace_id().empty() ? NewTraceId() : m.trace_id();
  // edge.send: SEND received -> its SEND_ACK (or ERROR) queued; parent of core.send.
  obs::SharedSpan span = obs::StartSharedSpan(
      "edge.send", obs::SpanContext::FromTraceIdBytes(trace), obs::SpanKind::kServer);
  Status allowed = edge.send_limiter().TryTake(user_, edge.clock().MonoNanos());
  if (!allowed.ok()) {
    EdgeMetrics::Get().rate_limited_send.Inc();
    Status limited(allowed.code(), allowed.message(),
                   std::max<uint32_t>(allowed.retry_after_ms(), 1));
    if (span) span->SetStatus(limited);
    CompleteReply(seq, ErrorFrame(m.request_id(), limited));
    return;
  }
  const uint64_t request_id = m.request_id();
  const int64_t start_ns = edge.clock().MonoNanos();
  const Clock* clock = &edge.clock();
  const uint32_t copies = static_cast<uint32_t>(m.copies_size());
  ReplyBuilder build = [request_id, trace, start_ns, clock, copies](Result<core::AppendResult> r) {
    std::string frame;
    auto& metrics = EdgeMetrics::Get();
    if (!r.ok()) return std::string();
    v1::SendAck ack;
    ack.set_request_id(request_id);
    ack.set_message_id(r->message_id);
    ack.set_duplicate(r->duplicate);
    ack.set_accepted_at_ms(r->accepted_at_ms);
    ack.set_trace_id(trace);
    // The store gives one SEND's copies consecutive ids (InboxStore: one HLC range).
    for (uint32_t i = 0; i < copies && r->message_id != 0; ++i) {
      ack.add_copy_ids(HlcIdAfter(r->message_id, i));
    }
    wire::AppendMessageFrame(&frame, static_cast<uint8_t>(wire::Opcode::kSendAck), ack)
        .IgnoreError();
    if (r->duplicate) {
      metrics.dedup_hit.Inc();
    } else {
      metrics.msg_in.Inc();
    }
    metrics.send_latency.Observe(static_cast<double>(clock->MonoNanos() - start_ns) / 1e9);
    return frame;
  };
  net::EventLoop* loop = &loop_.loop();
  EdgeLoop* owner = &loop_;
  const uint64_t sid = id_;
  edge.core().Send(
      user_, m, trace,
      [loop, owner, sid, seq, request_id, build, span, trace](Result<core::AppendResult> r) {
        std::string frame = r.ok() ? build(r) : ErrorFrame(request_id, r.status());
        if (!r.ok() && obs::Logger::Default().Enabled(obs::LogLevel::kDebug)) {
          obs::LogDebug("send failed",
                        {{"code", StatusCodeName(r.status().code())},
                         {"error", r.status().message()},
                         obs::LogField::Trace(obs::SpanContext::FromTraceIdBytes(trace))});
        }
        if (span) {
          span->SetStatus(r.status());
          if (r.ok()) span->SetInt("iris.message_id", static_cast<int64_t>(r->message_id));
        }
        loop->Post([owner, sid, seq, f = std::move(frame), span]() mutable {
          if (Session* s = owner->Find(sid)) s->CompleteReply(seq, std::move(f));
          if (span) span->End();
        });
      },
      obs::ContextOf(span).span_id);
}

void Session::HandleReceipt(const v1::Receipt& m) {
  Edge& edge = loop_.edge();
  const uint64_t seq = ReserveReply();
  Status allowed = edge.send_limiter().TryTake(user_, edge.clock().MonoNanos());
  if (!allowed.ok()) {
    EdgeMetrics::Get().rate_limited_send.Inc();
    Status limited(allowed.code(), allowed.message(),
                   std::max<uint32_t>(allowed.retry_after_ms(), 1));
    CompleteReply(seq, ErrorFrame(m.request_id(), limited));
    return;
  }
  net::EventLoop* loop = &loop_.loop();
  EdgeLoop* owner = &loop_;
  const uint64_t sid = id_;
  const uint64_t request_id = m.request_id();
  edge.core().Receipt(user_, m, [loop, owner, sid, seq, request_id](Result<core::AppendResult> r) {
    std::string frame;
    if (r.ok()) {
      v1::Ok ok;
      ok.set_request_id(request_id);
      wire::AppendMessageFrame(&frame, static_cast<uint8_t>(wire::Opcode::kOk), ok).IgnoreError();
    } else {
      frame = ErrorFrame(request_id, r.status());
    }
    loop->Post([owner, sid, seq, f = std::move(frame)]() mutable {
      if (Session* s = owner->Find(sid)) s->CompleteReply(seq, std::move(f));
    });
  });
}

bool Session::AdmitLimited(KeyedSendLimiter& limiter, std::string_view what, uint64_t seq,
                           uint64_t request_id, std::optional<uint64_t> key) {
  Status allowed = limiter.TryTake(key.value_or(user_), loop_.edge().clock().MonoNanos());
  if (allowed.ok()) return true;
  CompleteReply(seq, ErrorFrame(request_id, Limited(allowed, what)));
  return false;
}

void Session::HandleSettings(const v1::Settings& m) {
  const uint64_t seq = ReserveReply();
  const uint64_t request_id = m.request_id();
  if (!AdmitLimited(loop_.edge().settings_limiter(), "SETTINGS", seq, request_id)) return;
  if (m.has_device_list() && device_ != kPrimaryDevice) {
    CompleteReply(seq, ErrorFrame(request_id, Forbidden("only the primary device (device 1) "
                                                        "sets the device list")));
    return;
  }
  const ReplyTarget t = TargetOf(seq);
  loop_.edge().core().UpdateSettings(user_, m, [t, request_id](Status s) {
    PostReply(t, s.ok() ? OkFrame(request_id) : ErrorFrame(request_id, s));
  });
}

void Session::HandleSettingsGet(const v1::SettingsGet& m) {
  const uint64_t seq = ReserveReply();
  const uint64_t request_id = m.request_id();
  const ReplyTarget t = TargetOf(seq);
  loop_.edge().core().GetOwnSettings(user_, [t, request_id](Result<core::UserSettings> s) {
    if (!s.ok()) {
      PostReply(t, ErrorFrame(request_id, s.status()));
      return;
    }
    v1::SettingsInfo info;
    info.set_request_id(request_id);
    info.set_read_receipts(s->read_receipts);
    info.set_share_presence(s->share_presence);
    info.set_group_invites(s->group_invites_contacts_only ? v1::GROUP_INVITES_CONTACTS
                                                          : v1::GROUP_INVITES_EVERYONE);
    for (uint64_t u : s->blocked) info.add_blocked(u);
    if (!s->device_list.empty()) {
      info.mutable_device_list()->ParseFromString(s->device_list);
    }
    std::string frame;
    AppendFrame(&frame, wire::Opcode::kSettingsInfo, info, request_id);
    PostReply(t, std::move(frame));
  });
}

namespace {
// PRESENCE frames for `states`, then OK: one reply slot.
std::string PresenceAnswer(uint64_t request_id, Result<std::vector<v1::Presence>> states) {
  if (!states.ok()) return ErrorFrame(request_id, states.status());
  std::string out;
  for (const auto& p : *states) {
    EdgeMetrics::Get().presence_out.Inc();
    AppendFrame(&out, wire::Opcode::kPresence, p, request_id);
  }
  out += OkFrame(request_id);
  return out;
}
}  // namespace

void Session::HandlePresenceSubscribe(const v1::PresenceSubscribe& m) {
  std::vector<uint64_t> added;
  for (uint64_t u : m.users()) {
    if (std::find(watching_.begin(), watching_.end(), u) == watching_.end() &&
        std::find(added.begin(), added.end(), u) == added.end()) {
      added.push_back(u);
    }
  }
  const uint32_t cap = loop_.edge().options().max_presence_subscriptions;
  if (watching_.size() + added.size() > cap) {
    CompleteReply(ReserveReply(),
                  ErrorFrame(m.request_id(), TooLarge("at most " + std::to_string(cap) +
                                                      " presence subscriptions per session")));
    return;
  }
  watching_.insert(watching_.end(), added.begin(), added.end());
  std::vector<uint64_t> all(m.users().begin(), m.users().end());
  const uint64_t request_id = m.request_id();
  const ReplyTarget t = TargetOf(ReservePresenceAnswer());
  loop_.edge().core().Subscribe(Ref(), all,
                                [t, request_id](Result<std::vector<v1::Presence>> states) {
                                  PostReply(t, PresenceAnswer(request_id, std::move(states)));
                                });
}

void Session::HandlePresenceUnsubscribe(const v1::PresenceUnsubscribe& m) {
  std::vector<uint64_t> users(m.users().begin(), m.users().end());
  for (uint64_t u : users)
    watching_.erase(std::remove(watching_.begin(), watching_.end(), u), watching_.end());
  if (watching_.empty()) std::vector<uint64_t>().swap(watching_);
  loop_.edge().core().Unsubscribe(Ref(), users);
  CompleteReply(ReserveReply(), OkFrame(m.request_id()));  // behind the answers before it
}

void Session::HandlePresenceQuery(const v1::PresenceQuery& m) {
  std::vector<uint64_t> users(m.users().begin(), m.users().end());
  const uint64_t request_id = m.request_id();
  const ReplyTarget t = TargetOf(ReservePresenceAnswer());
  loop_.edge().core().QueryPresence(users,
                                    [t, request_id](Result<std::vector<v1::Presence>> states) {
                                      PostReply(t, PresenceAnswer(request_id, std::move(states)));
                                    });
}

void Session::HandleTyping(const v1::Typing& m) {
  uint32_t retry = 0;
  if (!typing_bucket_.TryTake(loop_.edge().clock().MonoNanos(), &retry)) {
    EdgeMetrics::Get().typing_dropped.Inc();  // best effort: excess indicators are dropped
    return;
  }
  if (!loop_.edge().core().Typing(user_, m)) EdgeMetrics::Get().typing_dropped.Inc();
}

void Session::HandleKeysUpload(v1::KeysUpload& m) {
  m.set_device_id(device_);  // the keys are this device's
  const uint64_t seq = ReserveReply();
  const uint64_t request_id = m.request_id();
  // Per device: each device fills its own prekey pool. Device 1's key is the user id, as
  // before devices; another device's is a 64-bit hash of (user, device) (SplitMix64's
  // finaliser), so that no user id can be chosen to share a linked device's bucket.
  uint64_t device_key = user_;
  if (device_ != kPrimaryDevice) {
    uint64_t z = user_ + 0x9e3779b97f4a7c15ULL * (static_cast<uint64_t>(device_) + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    device_key = z ^ (z >> 31);
  }
  if (!AdmitLimited(loop_.edge().keys_upload_limiter(), "KEYS_UPLOAD", seq, request_id,
                    device_key)) {
    return;
  }
  const ReplyTarget t = TargetOf(seq);
  loop_.edge().core().UploadKeys(user_, m, [t, request_id](Status s) {
    PostReply(t, s.ok() ? OkFrame(request_id) : ErrorFrame(request_id, s));
  });
}

void Session::HandleKeysFetch(const v1::KeysFetch& m) {
  const uint64_t seq = ReserveReply();
  const uint64_t request_id = m.request_id();
  const uint64_t group_id = m.group_id();
  const uint64_t target = m.user();
  // Per requester: bounds the one-time prekeys one user can take from others' pools. A fetch
  // that names an E2EE group both users are in has a budget of its own, sized for a whole
  // group (edge/rate_limit.h), once the group's home confirmed the membership.
  Edge& edge = loop_.edge();
  KeyedSendLimiter& requester_limit =
      group_id != 0 ? edge.keys_fetch_group_limiter() : edge.keys_fetch_limiter();
  if (!AdmitLimited(requester_limit, "KEYS_FETCH", seq, request_id)) return;
  if (group_id == 0) {
    FetchKeysOf(seq, request_id, target);
    return;
  }
  const ReplyTarget t = TargetOf(seq);
  edge.core().GetGroup(user_, group_id, [t, request_id, target](Result<v1::GroupInfo> g) {
    // Every refusal is FORBIDDEN (a missing group too: NOT_FOUND would read as "the user has
    // no keys"); the client then fetches without the group.
    Status why = g.ok() ? Status::Ok() : Forbidden("not a member of group: " + g.status().message());
    if (why.ok() && g->kind() != v1::E2EE) {
      why = Forbidden("KEYS_FETCH with a group_id is for E2EE groups");
    } else if (why.ok() && std::find(g->members().begin(), g->members().end(), target) ==
                               g->members().end()) {
      why = Forbidden("the user is not a member of this group");
    }
    if (!why.ok()) {
      PostReply(t, ErrorFrame(request_id, why));
      return;
    }
    // Back on the session's loop: the pair's budget is taken only by a fetch that passed.
    t.loop->Post([t, request_id, target] {
      if (Session* s = t.owner->Find(t.sid)) s->FetchKeysOf(t.seq, request_id, target);
    });
  });
}

void Session::FetchKeysOf(uint64_t seq, uint64_t request_id, uint64_t target) {
  // Per (requester, target): bounds the one-time prekeys one user takes from one pool.
  Edge& edge = loop_.edge();
  const Status pair = edge.keys_fetch_pair_limiter().TryTake(KeysFetchPairKey(user_, target),
                                                             edge.clock().MonoNanos());
  if (!pair.ok()) {
    CompleteReply(seq, ErrorFrame(request_id, Limited(pair, "KEYS_FETCH of this user")));
    return;
  }
  const ReplyTarget t = TargetOf(seq);
  edge.core().FetchKeys(target, [t, request_id, target](Result<v1::KeysBundle> bundle) {
    std::string frame;
    if (!bundle.ok()) {
      frame = ErrorFrame(request_id, bundle.status());
    } else {
      bundle->set_request_id(request_id);
      bundle->set_user(target);
      AppendFrame(&frame, wire::Opcode::kKeysBundle, *bundle, request_id);
    }
    PostReply(t, std::move(frame));
  });
}

namespace {
// Completion of a group create/update/get: GROUP_INFO (or ERROR), answered in request
// order. The core answers the whole group; the frame carries the page of its members after
// `members_after` (GroupService::MembersPage: always within one frame).
core::CoreApi::GroupDone GroupReply(net::EventLoop* loop, EdgeLoop* owner, uint64_t sid,
                                    uint64_t seq, uint64_t request_id, uint64_t members_after) {
  return [loop, owner, sid, seq, request_id, members_after](Result<v1::GroupInfo> r) {
    std::string frame;
    if (r.ok()) {
      v1::GroupInfo page = core::GroupService::MembersPage(*r, members_after);
      page.set_request_id(request_id);
      const Status s =
          wire::AppendMessageFrame(&frame, static_cast<uint8_t>(wire::Opcode::kGroupInfo), page);
      if (!s.ok()) frame = ErrorFrame(request_id, Internal("GROUP_INFO: " + s.message()));
    } else {
      frame = ErrorFrame(request_id, r.status());
    }
    loop->Post([owner, sid, seq, f = std::move(frame)]() mutable {
      if (Session* s = owner->Find(sid)) s->CompleteReply(seq, std::move(f));
    });
  };
}
}  // namespace

void Session::HandleGroupCreate(const v1::GroupCreate& m) {
  const uint64_t seq = ReserveReply();
  if (!AdmitLimited(loop_.edge().group_limiter(), "GROUP_CREATE", seq, m.request_id())) return;
  loop_.edge().core().CreateGroup(user_, m,
                                  GroupReply(&loop_.loop(), &loop_, id_, seq, m.request_id(), 0));
}

void Session::HandleGroupUpdate(const v1::GroupUpdate& m) {
  const uint64_t seq = ReserveReply();
  if (!AdmitLimited(loop_.edge().group_limiter(), "GROUP_UPDATE", seq, m.request_id())) return;
  loop_.edge().core().UpdateGroup(user_, m,
                                  GroupReply(&loop_.loop(), &loop_, id_, seq, m.request_id(), 0));
}

void Session::HandleGroupGet(const v1::GroupGet& m) {
  const uint64_t seq = ReserveReply();
  loop_.edge().core().GetGroup(
      user_, m.group_id(),
      GroupReply(&loop_.loop(), &loop_, id_, seq, m.request_id(), m.members_after()));
}

void Session::DeliverPresence(const v1::Presence& p) {
  if (state_ == State::kAwaitHello || state_ == State::kClosing) return;
  if (std::find(watching_.begin(), watching_.end(), p.user()) == watching_.end()) return;
  if (presence_answers_pending_ > 0) {
    // Not before the pending answer, which may carry an older state of this user.
    auto it = std::find_if(held_presence_.begin(), held_presence_.end(),
                           [&](const v1::Presence& h) { return h.user() == p.user(); });
    if (it != held_presence_.end()) {
      held_presence_.erase(it);  // keep only the latest, in arrival order
    }
    held_presence_.push_back(p);
    return;
  }
  EdgeMetrics::Get().presence_out.Inc();
  SendMessage(wire::Opcode::kPresence, p);
}

void Session::DeliverTyping(const v1::Typing& t) {
  if (state_ == State::kAwaitHello || state_ == State::kClosing) return;
  EdgeMetrics::Get().typing_out.Inc();
  SendMessage(wire::Opcode::kTyping, t);
}

uint64_t Session::ReservePresenceAnswer() {
  const uint64_t seq = ReserveReply();
  replies_[seq - reply_base_].presence_answer = true;
  ++presence_answers_pending_;
  return seq;
}

uint64_t Session::ReserveReply() {
  replies_.emplace_back();
  return reply_base_ + replies_.size() - 1;
}

void Session::CompleteReply(uint64_t seq, std::string frame) {
  if (seq < reply_base_ || seq - reply_base_ >= replies_.size()) {
    IRIS_BUG("reply for an unknown slot");
    return;
  }
  Reply& r = replies_[seq - reply_base_];
  r.ready = true;
  r.frame = std::move(frame);
  FlushReplies();
}

void Session::FlushReplies() {
  while (!replies_.empty() && replies_.front().ready) {
    std::string frame = std::move(replies_.front().frame);
    const bool presence_answer = replies_.front().presence_answer;
    replies_.pop_front();
    ++reply_base_;
    if (presence_answer && --presence_answers_pending_ == 0 && !held_presence_.empty()) {
      // The answers are out (or dropped): the pushes held behind them follow.
      std::vector<v1::Presence> held;
      held.swap(held_presence_);
      if (!(state_ == State::kClosing && !shutting_down_)) {
        if (!conn_->Write(frame)) {
          EdgeMetrics::Get().slow_readers.Inc();
          state_ = State::kClosing;
          conn_->Abort("output queue full (slow reader)");
          return;
        }
        for (const v1::Presence& p : held) DeliverPresence(p);
      }
      continue;
    }
    if (state_ == State::kClosing && !shutting_down_) continue;
    if (!conn_->Write(frame)) {
      EdgeMetrics::Get().slow_readers.Inc();
      state_ = State::kClosing;
      conn_->Abort("output queue full (slow reader)");
      return;
    }
    if (static_cast<uint8_t>(frame[0]) == static_cast<uint8_t>(wire::Opcode::kSendAck)) {
      EdgeMetrics::Get().ack_sent.Inc();
    }
  }
  if (!ReadingHeld() && !conn_->closing()) conn_->PauseReading(false);
  if (shutting_down_ && replies_.empty()) conn_->Close("server shutting down");
}

void Session::Push(const v1::Envelope& e) {
  // Only this session's user's messages: a stale session reference (an edge process that
  // restarted and reuses ids) must never show one user another's inbox.
  if (e.recipient() != user_) return;
  if (!ForDevice(e.recipient_device(), device_)) return;  // another device's copy
  if (scan_inflight_ && state_ == State::kCatchUp) {
    // The scan out may or may not include it: hold it for after the page (see the class
    // comment). Pushes come in id order, so the hold is in id order too.
    if (held_.size() < kMaxHeldPushes) {
      held_.push_back(e);
    } else {
      held_overflow_ = true;
    }
    return;
  }
  if (state_ != State::kPush || e.id() <= last_sent_) return;
  // edge.deliver: the push of a traced message (in its trace, as a root: caused by the
  // commit, not by a request of this session).
  const obs::SpanContext trace = obs::SpanContext::FromTraceIdBytes(e.trace_id());
  obs::Span span =
      trace.valid() ? obs::StartSpan("edge.deliver", trace, obs::SpanKind::kProducer) : obs::Span();
  span.SetInt("iris.message_id", static_cast<int64_t>(e.id()));
  v1::Deliver d;
  *d.mutable_message() = e;
  last_sent_ = e.id();
  EdgeMetrics::Get().msg_out.Inc();
  SendMessage(wire::Opcode::kDeliver, d);
}

void Session::Replaced() {
  if (state_ == State::kClosing) return;
  registered_ = false;  // the registry already points at the newer session
  CloseWith(0, Status(StatusCode::kSessionReplaced, "a newer session of this user took over"));
}

void Session::Removed() {
  if (state_ == State::kClosing) return;
  registered_ = false;  // the registry no longer holds it
  CloseWith(0, Status(StatusCode::kDeviceRemoved,
                      "device " + std::to_string(device_) +
                          " was removed from the account's device list: it cannot connect "
                          "again (a device linked anew gets a new id)"));
}

void Session::RecheckAuth(int64_t now_ms) {
  if (state_ == State::kAwaitHello || state_ == State::kClosing) return;
  Status s = loop_.edge().verifier().Recheck(claims_, now_ms);
  if (!s.ok()) CloseWith(0, s);
}

void Session::Tick(int64_t now_mono_ms) {
  const Edge& edge = loop_.edge();
  conn_->TrimBuffers();
  if (state_ == State::kClosing) {
    // Still here: the close is waiting for output that the peer does not read.
    if (now_mono_ms - last_frame_ms_ > edge.options().idle_timeout_ms + kCloseGraceMs) {
      conn_->Abort("close did not drain");
    }
    return;
  }
  if (state_ == State::kAwaitHello) {
    if (now_mono_ms - opened_ms_ > edge.options().hello_timeout_ms) {
      EdgeMetrics::Get().timeouts.Inc();
      if (conn_->handshake_done()) {
        CloseWith(0, Unauthenticated("no valid HELLO within the handshake timeout"));
      } else {
        state_ = State::kClosing;
        conn_->Abort("TLS handshake timeout");
      }
    }
    return;
  }
  if (!owner_answered_ && registered_ && now_mono_ms >= settle_deadline_ms_) {
    // The owner did not answer the registration (not the owner yet, unreachable, or its
    // answer lost with a link): go on with this node's budget rather than hold the
    // client's requests, and ask again until it answers.
    if (!rate_settled_) {
      obs::LogWarn("no rate budget from the owner of the user's shard in time; asking again",
                   {{"user", std::to_string(user_)}});
      ApplyRate(core::RateDebt{});
      if (state_ == State::kClosing) return;
    }
    EdgeMetrics::Get().reregistrations.Inc();
    settle_deadline_ms_ = now_mono_ms + kSettleTimeoutMs;
    loop_.edge().core().ReRegisterSession(user_, Ref());
  }
  if (now_mono_ms - last_frame_ms_ > edge.options().idle_timeout_ms) {
    EdgeMetrics::Get().timeouts.Inc();
    state_ = State::kClosing;
    conn_->Close("idle timeout");
    return;
  }
  // A token that expires while the session is silent ends it too, not only the next frame.
  RecheckAuth(edge.clock().WallMillis());
}

void Session::Shutdown() {
  if (state_ == State::kClosing) return;
  shutting_down_ = true;
  conn_->PauseReading(true);
  if (replies_.empty()) conn_->Close("server shutting down");
}

void Session::SendMessage(wire::Opcode op, const google::protobuf::MessageLite& m) {
  if (state_ == State::kClosing && !shutting_down_) return;
  std::string frame;
  Status s = wire::AppendMessageFrame(&frame, static_cast<uint8_t>(op), m);
  if (!s.ok()) {
    IRIS_BUG("an outgoing message did not fit one frame");
    return;
  }
  if (!conn_->Write(frame)) {
    EdgeMetrics::Get().slow_readers.Inc();
    state_ = State::kClosing;
    conn_->Abort("output queue full (slow reader)");
  }
}

void Session::SendError(uint64_t request_id, const Status& s, bool fatal) {
  v1::Error err;
  err.set_request_id(request_id);
  err.set_code(static_cast<uint32_t>(s.code()));
  err.set_message(s.message());
  err.set_retry_after_ms(s.retry_after_ms());
  err.set_fatal(fatal);
  SetMismatchedDevices(s, &err);
  EdgeMetrics::Get().ErrorOut(s.code());
  SendMessage(wire::Opcode::kError, err);
}

void Session::CloseWith(uint64_t request_id, const Status& s) {
  if (state_ == State::kClosing) return;
  SendError(request_id, s, true);
  state_ = State::kClosing;
  conn_->Close(s.message());
}

}  // namespace iris::edge
