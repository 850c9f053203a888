#include "broadcast_load.h"

#include <algorithm>

#include <chrono>

#include "auth/jwt.h"
#include "common/clock.h"
#include "common/uuid.h"
#include "iris/v1/client.pb.h"
#include "wire/opcode.h"

namespace iris::bench {
namespace {

constexpr uint8_t Op(wire::Opcode o) { return static_cast<uint8_t>(o); }

int64_t NowNs() { return SystemClock::Instance().MonoNanos(); }

// The frame answering `request_id` (its answer or an ERROR naming it), within `timeout_ms`.
Result<client::ReceivedFrame> AnswerTo(client::Connection& c, uint64_t request_id,
                                       int timeout_ms) {
  const int64_t deadline = NowNs() + int64_t{timeout_ms} * 1'000'000;
  while (NowNs() < deadline) {
    auto f = c.ReadFrame(static_cast<int>((deadline - NowNs()) / 1'000'000) + 1);
    if (!f.ok()) {
      if (f.status().code() == StatusCode::kOverloaded) continue;  // timed out: loop checks
      return f.status();
    }
    if (f->opcode == Op(wire::Opcode::kError)) {
      v1::Error e;
      if (e.ParseFromString(f->payload) && e.request_id() == request_id) return *f;
      continue;
    }
    if (f->opcode == Op(wire::Opcode::kGroupInfo) || f->opcode == Op(wire::Opcode::kSendAck)) {
      return *f;  // one request at a time: the answer to it
    }
  }
  return Unavailable("no answer to request " + std::to_string(request_id));
}

// Sends `m` and returns its answer, waiting out RATE_LIMITED (GROUP_UPDATE: 1/s, bursts 5/s).
template <typename M>
Result<client::ReceivedFrame> Ask(client::Connection& c, wire::Opcode op, M m) {
  for (int attempt = 0; attempt < 600; ++attempt) {
    IRIS_RETURN_IF_ERROR(c.SendFrame(Op(op), m));
    IRIS_ASSIGN_OR_RETURN(client::ReceivedFrame f, AnswerTo(c, m.request_id(), 30'000));
    if (f.opcode != Op(wire::Opcode::kError)) return f;
    v1::Error e;
    e.ParseFromString(f.payload);
    if (e.code() != static_cast<uint32_t>(StatusCode::kRateLimited)) {
      return Status(static_cast<StatusCode>(e.code()), e.message());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::max<uint32_t>(e.retry_after_ms(), 50)));
  }
  return Unavailable("still rate limited");
}

}  // namespace

BroadcastLoad::~BroadcastLoad() {
  if (thread_.joinable()) thread_.join();
}

Result<std::unique_ptr<client::Connection>> BroadcastLoad::Login(uint64_t user) {
  client::ConnectOptions co;
  co.host = host_;
  co.port = port_;
  co.ca_file = ca_file_;
  IRIS_ASSIGN_OR_RETURN(std::unique_ptr<client::Connection> c, client::Connection::Connect(co));
  auth::Claims claims;
  claims.user_id = user;
  claims.iat = SystemClock::Instance().WallMillis() / 1000;
  claims.exp = claims.iat + 3600;
  claims.jti = "bench-broadcast-" + std::to_string(user) + "-" + std::to_string(NowNs());
  v1::Hello hello;
  hello.add_versions(1);
  hello.set_token(auth::MintToken(secret_, claims));
  IRIS_RETURN_IF_ERROR(c->SendFrame(Op(wire::Opcode::kHello), hello));
  // Catch-up: acknowledge pages until SYNC_DONE.
  for (;;) {
    IRIS_ASSIGN_OR_RETURN(client::ReceivedFrame f, c->ReadFrame(30'000));
    if (f.opcode == Op(wire::Opcode::kError)) {
      v1::Error e;
      e.ParseFromString(f.payload);
      return Unavailable("login refused: " + e.message());
    }
    if (f.opcode == Op(wire::Opcode::kSyncPage)) {
      v1::SyncPage page;
      page.ParseFromString(f.payload);
      if (page.has_more()) {
        v1::SyncAck ack;
        ack.set_cursor(page.cursor());
        IRIS_RETURN_IF_ERROR(c->SendFrame(Op(wire::Opcode::kSyncAck), ack));
      }
    }
    if (f.opcode == Op(wire::Opcode::kSyncDone)) return c;
  }
}

Status BroadcastLoad::Prepare(const std::string& target, const std::string& ca_file,
                              const std::string& secret, uint64_t owner, uint32_t members) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos) return BadRequest("target is not host:port: " + target);
  host_ = target.substr(0, colon);
  port_ = static_cast<uint16_t>(std::stoi(target.substr(colon + 1)));
  ca_file_ = ca_file;
  secret_ = secret;
  owner_ = owner;
  members_ = members;
  if (members < 2) return BadRequest("--broadcast-members: at least 2");
  IRIS_ASSIGN_OR_RETURN(owner_conn_, Login(owner));
  UuidV7Generator keys(SystemClock::Instance());
  v1::GroupCreate create;
  create.set_request_id(1);
  create.set_kind(v1::BROADCAST);
  create.set_idempotency_key(std::string(UuidBytes(keys.Next())));
  uint64_t next = owner + 1;
  const uint64_t end = owner + members;
  for (; next < end && create.members_size() < 256; ++next) create.add_members(next);
  IRIS_ASSIGN_OR_RETURN(client::ReceivedFrame f, Ask(*owner_conn_, wire::Opcode::kGroupCreate, create));
  v1::GroupInfo info;
  info.ParseFromString(f.payload);
  group_id_ = info.group_id();
  uint64_t rid = 2;
  while (next < end) {
    v1::GroupUpdate upd;
    upd.set_request_id(rid++);
    upd.set_group_id(group_id_);
    for (; next < end && upd.add_size() < 256; ++next) upd.add_add(next);
    IRIS_ASSIGN_OR_RETURN(f, Ask(*owner_conn_, wire::Opcode::kGroupUpdate, upd));
  }
  // Group events went to every member's inbox; the last member's catch-up reads them all.
  IRIS_ASSIGN_OR_RETURN(last_member_, Login(end - 1));
  return Status::Ok();
}

void BroadcastLoad::Start(double after_s) {
  start_ns_ = NowNs();
  thread_ = std::thread([this, after_s] { Run(after_s); });
}

void BroadcastLoad::Run(double after_s) {
  // A timed load event, not a synchronisation: the broadcast starts once the latency load
  // is under way.
  std::this_thread::sleep_for(std::chrono::duration<double>(after_s));
  UuidV7Generator keys(SystemClock::Instance());
  v1::Send send;
  send.set_request_id(1000);
  send.set_group_id(group_id_);
  send.set_idempotency_key(std::string(UuidBytes(keys.Next())));
  send.set_body(std::string(100, 'b'));
  const int64_t sent = NowNs();
  sent_at_s_ = static_cast<double>(sent - start_ns_) / 1e9;
  auto ack = Ask(*owner_conn_, wire::Opcode::kSend, send);
  if (!ack.ok()) {
    error_ = "broadcast SEND: " + ack.status().ToString();
    return;
  }
  ack_ms_ = static_cast<double>(NowNs() - sent) / 1e6;
  for (;;) {
    auto f = last_member_->ReadFrame(1000);
    if (!f.ok()) {
      if (f.status().code() == StatusCode::kOverloaded) {
        if (deadline_ns_ != 0 && NowNs() > deadline_ns_) {
          error_ = "the fan-out did not reach the last member in time";
          return;
        }
        continue;
      }
      error_ = "last member: " + f.status().ToString();
      return;
    }
    if (f->opcode != Op(wire::Opcode::kDeliver)) continue;
    v1::Deliver d;
    if (d.ParseFromString(f->payload) && d.message().group_id() == group_id_ &&
        d.message().kind() == v1::MESSAGE) {
      fan_out_ms_ = static_cast<double>(NowNs() - sent) / 1e6;
      return;
    }
  }
}

nlohmann::json BroadcastLoad::Finish(double timeout_s) {
  deadline_ns_ = NowNs() + static_cast<int64_t>(timeout_s * 1e9);
  if (thread_.joinable()) thread_.join();
  nlohmann::json out = {{"members", members_}, {"sent_at_s", sent_at_s_}};
  out["ack_ms"] = ack_ms_ >= 0 ? nlohmann::json(ack_ms_) : nlohmann::json(nullptr);
  out["fan_out_ms"] = fan_out_ms_ >= 0 ? nlohmann::json(fan_out_ms_) : nlohmann::json(nullptr);
  if (!error_.empty()) out["error"] = error_;
  return out;
}

}  // namespace iris::bench
