#include "edge/remote_core.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>

#include "common/assert.h"
#include "common/clock.h"
#include "core/core_server.h"
#include "core/link_io.h"

namespace iris::edge {

namespace ipb = ::iris::internal::v1;

namespace {

void SetRef(ipb::CoreRequest& req, const core::SessionRef& ref) {
  req.mutable_ref()->set_edge(ref.edge);
  req.mutable_ref()->set_session(ref.session);
}

ipb::CoreMessage Unavailable(uint64_t call) {
  ipb::CoreMessage m;
  m.set_call_id(call);
  core::ToProto(iris::Unavailable("the core process is unreachable", 1000), m.mutable_status());
  return m;
}

store::ScanPage PageFrom(const ipb::ScanPage& p) {
  store::ScanPage out;
  out.messages.assign(p.messages().begin(), p.messages().end());
  out.has_more = p.has_more();
  out.gap = p.gap();
  return out;
}

std::vector<v1::Presence> PresencesFrom(const ipb::CoreMessage& m) {
  return std::vector<v1::Presence>(m.presences().items().begin(), m.presences().items().end());
}

}  // namespace

RemoteCore::RemoteCore(uint32_t process_index, int64_t call_timeout_ms)
    : process_index_(process_index), call_timeout_ms_(call_timeout_ms) {}

RemoteCore::~RemoteCore() { Stop(); }

Status RemoteCore::Connect(const std::string& path, int64_t timeout_ms) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return BadRequest("core socket path too long");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  const int64_t deadline = SystemClock::Instance().MonoMillis() + timeout_ms;
  for (;;) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return Internal(std::string("socket: ") + strerror(errno));
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) break;
    const std::string err = strerror(errno);
    close(fd_);
    fd_ = -1;
    if (SystemClock::Instance().MonoMillis() >= deadline) {
      return iris::Unavailable("cannot reach the core process at " + path + ": " + err, 0);
    }
    // Start-up only: the core process creates the socket before it starts edge processes,
    // so this retry loop runs at most briefly.
    usleep(20'000);
  }
  link_up_.store(true);
  return Status::Ok();
}

void RemoteCore::Start(PushHandler handler) {
  handler_ = std::move(handler);
  reader_ = std::thread([this] { ReadLoop(); });
}

Status RemoteCore::SayHello() {
  ipb::CoreRequest hello;
  hello.set_hello(process_index_);
  return core::FromProto(Call(hello).status());
}

Result<ipb::Revocations> RemoteCore::FetchRevocations() {
  ipb::CoreRequest req;
  req.set_revocations(true);
  ipb::CoreMessage reply = Call(req);
  IRIS_RETURN_IF_ERROR(core::FromProto(reply.status()));
  return reply.revocations();
}

void RemoteCore::Stop() {
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
  if (reader_.joinable()) reader_.join();
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
}

void RemoteCore::ReadLoop() {
  std::string buf;
  ipb::CoreMessage m;
  while (core::ReadLinkMessage(fd_, &m, &buf).ok()) {
    if (m.has_push()) {
      const ipb::Push& p = m.push();
      const core::SessionRef to{p.to().edge(), p.to().session()};
      switch (p.what_case()) {
        case ipb::Push::kDeliver:
          if (handler_.sink) handler_.sink->Deliver(to, p.deliver());
          break;
        case ipb::Push::kReplace:
          if (handler_.sink) handler_.sink->Replace(to);
          break;
        case ipb::Push::kPresence:
          if (handler_.sink) handler_.sink->SendPresence(to, p.presence());
          break;
        case ipb::Push::kTyping:
          if (handler_.sink) handler_.sink->SendTyping(to, p.typing());
          break;
        case ipb::Push::kRevokeJti:
          if (handler_.revoke_jti) handler_.revoke_jti(p.revoke_jti().jti(), p.revoke_jti().until_ms());
          break;
        case ipb::Push::kRevokeUser:
          if (handler_.revoke_user) {
            handler_.revoke_user(p.revoke_user().user(), p.revoke_user().before_ms());
          }
          break;
        case ipb::Push::WHAT_NOT_SET:
          break;
      }
      continue;
    }
    Completion done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(m.call_id());
      if (it == pending_.end()) continue;  // a call that already timed out
      done = std::move(it->second.done);
      pending_.erase(it);
    }
    done(m);
  }
  link_up_.store(false);
  FailAll();
  if (handler_.on_link_lost) handler_.on_link_lost();
}

void RemoteCore::FailAll() {
  std::unordered_map<uint64_t, Pending> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all.swap(pending_);
  }
  for (auto& [call, p] : all) p.done(Unavailable(call));
}

void RemoteCore::CallAsync(ipb::CoreRequest& req, Completion done) {
  const uint64_t call = next_call_.fetch_add(1);
  req.set_call_id(call);
  if (!link_up_.load()) {
    done(Unavailable(call));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.emplace(
        call, Pending{std::move(done), SystemClock::Instance().MonoMillis() + call_timeout_ms_});
  }
  if (!core::WriteLinkMessage(fd_, write_mu_, req).ok()) {
    Completion d;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(call);
      if (it == pending_.end()) return;
      d = std::move(it->second.done);
      pending_.erase(it);
    }
    d(Unavailable(call));
  }
}

ipb::CoreMessage RemoteCore::Call(ipb::CoreRequest& req) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // start-up only (hello, revocations)
  auto promise = std::make_shared<std::promise<ipb::CoreMessage>>();
  auto future = promise->get_future();
  CallAsync(req, [promise](const ipb::CoreMessage& m) { promise->set_value(m); });
  if (future.wait_for(std::chrono::milliseconds(call_timeout_ms_)) != std::future_status::ready) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.erase(req.call_id());
    return Unavailable(req.call_id());
  }
  return future.get();
}

void RemoteCore::Cast(ipb::CoreRequest& req) {
  req.set_call_id(0);
  if (link_up_.load()) core::WriteLinkMessage(fd_, write_mu_, req).IgnoreError();
}

void RemoteCore::RegisterSession(uint64_t user, core::SessionRef ref) {
  ipb::CoreRequest req;
  req.set_user(user);
  SetRef(req, ref);
  req.set_register_session(true);
  Cast(req);
}

void RemoteCore::UnregisterSession(uint64_t user, core::SessionRef ref) {
  ipb::CoreRequest req;
  req.set_user(user);
  SetRef(req, ref);
  req.set_unregister_session(true);
  Cast(req);
}

namespace {
void RunSendDone(const core::CoreApi::SendDone& done,
                                                 const ipb::CoreMessage& m) {
  Status s = core::FromProto(m.status());
  if (!s.ok()) {
    done(s);
    return;
  }
  done(store::AppendOutcome{m.outcome().message_id(), m.outcome().accepted_at_ms(),
                            m.outcome().duplicate()});
}
// Completes a group create/update from its reply.
std::function<void(const ipb::CoreMessage&)> GroupCompletion(core::CoreApi::GroupDone done) {
  return [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = core::FromProto(m.status());
    if (!s.ok()) {
      done(s);
    } else {
      done(m.group());
    }
  };
}

std::function<void(const ipb::CoreMessage&)> StatusCompletion(core::CoreApi::StatusDone done) {
  return [done = std::move(done)](const ipb::CoreMessage& m) { done(core::FromProto(m.status())); };
}

std::function<void(const ipb::CoreMessage&)> PresenceCompletion(core::CoreApi::PresenceDone done) {
  return [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = core::FromProto(m.status());
    if (!s.ok()) {
      done(s);
    } else {
      done(PresencesFrom(m));
    }
  };
}

std::function<void(const ipb::CoreMessage&)> PageCompletion(core::CoreApi::PageDone done) {
  return [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = core::FromProto(m.status());
    if (!s.ok()) {
      done(s);
    } else {
      done(PageFrom(m.page()));
    }
  };
}

}  // namespace

void RemoteCore::Send(uint64_t sender, const v1::Send& send, const std::string& trace_id,
                      SendDone done, uint64_t parent_span_id) {
  ipb::CoreRequest req;
  req.set_user(sender);
  *req.mutable_send()->mutable_send() = send;
  req.mutable_send()->set_trace_id(trace_id);
  req.mutable_send()->set_parent_span_id(parent_span_id);
  CallAsync(req, [done = std::move(done)](const ipb::CoreMessage& m) { RunSendDone(done, m); });
}

void RemoteCore::Receipt(uint64_t author, const v1::Receipt& receipt, SendDone done) {
  ipb::CoreRequest req;
  req.set_user(author);
  *req.mutable_receipt() = receipt;
  CallAsync(req, [done = std::move(done)](const ipb::CoreMessage& m) { RunSendDone(done, m); });
}

void RemoteCore::UpdateSettings(uint64_t user, const v1::Settings& settings, StatusDone done) {
  ipb::CoreRequest req;
  req.set_user(user);
  *req.mutable_settings() = settings;
  CallAsync(req, StatusCompletion(std::move(done)));
}

bool RemoteCore::Typing(uint64_t from, const v1::Typing& typing) {
  ipb::CoreRequest req;
  req.set_user(from);
  *req.mutable_typing() = typing;
  Cast(req);
  return true;
}

void RemoteCore::Subscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users,
                           PresenceDone done) {
  ipb::CoreRequest req;
  SetRef(req, ref);
  for (uint64_t u : users) req.mutable_subscribe()->add_users(u);
  CallAsync(req, PresenceCompletion(std::move(done)));
}

void RemoteCore::Unsubscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users) {
  ipb::CoreRequest req;
  SetRef(req, ref);
  for (uint64_t u : users) req.mutable_unsubscribe()->add_users(u);
  Cast(req);
}

void RemoteCore::QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) {
  ipb::CoreRequest req;
  for (uint64_t u : users) req.mutable_query_presence()->add_users(u);
  CallAsync(req, PresenceCompletion(std::move(done)));
}

void RemoteCore::UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) {
  ipb::CoreRequest req;
  req.set_user(user);
  *req.mutable_keys_upload() = upload;
  CallAsync(req, StatusCompletion(std::move(done)));
}

void RemoteCore::FetchKeys(uint64_t user, KeysDone done) {
  ipb::CoreRequest req;
  req.set_keys_fetch(user);
  CallAsync(req, [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = core::FromProto(m.status());
    if (!s.ok()) {
      done(s);
    } else {
      done(m.bundle());
    }
  });
}

void RemoteCore::CreateGroup(uint64_t owner, const v1::GroupCreate& g, GroupDone done) {
  ipb::CoreRequest req;
  req.set_user(owner);
  *req.mutable_group_create() = g;
  CallAsync(req, GroupCompletion(std::move(done)));
}

void RemoteCore::UpdateGroup(uint64_t user, const v1::GroupUpdate& g, GroupDone done) {
  ipb::CoreRequest req;
  req.set_user(user);
  *req.mutable_group_update() = g;
  CallAsync(req, GroupCompletion(std::move(done)));
}

void RemoteCore::GetGroup(uint64_t user, uint64_t group_id, GroupDone done) {
  ipb::CoreRequest req;
  req.set_user(user);
  req.set_group_get(group_id);
  CallAsync(req, GroupCompletion(std::move(done)));
}

void RemoteCore::Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes,
                      PageDone done) {
  ipb::CoreRequest req;
  req.set_user(user);
  req.mutable_scan()->set_cursor(after_id);
  req.mutable_scan()->set_limit(limit);
  req.mutable_scan()->set_max_bytes(max_bytes);
  CallAsync(req, PageCompletion(std::move(done)));
}

void RemoteCore::History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
                         PageDone done) {
  ipb::CoreRequest req;
  req.set_user(user);
  req.mutable_history()->set_cursor(before_id);
  req.mutable_history()->set_limit(limit);
  req.mutable_history()->set_max_bytes(max_bytes);
  CallAsync(req, PageCompletion(std::move(done)));
}

void RemoteCore::ExpireOverdue(int64_t now_mono_ms) {
  std::vector<std::pair<uint64_t, Completion>> overdue;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second.deadline_ms <= now_mono_ms) {
        overdue.emplace_back(it->first, std::move(it->second.done));
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& [call, done] : overdue) done(Unavailable(call));
}

int RemoteCore::ReportPressure(double pressure, int64_t, bool* changed) {
  // Called about once a second: also the beat that fails calls the core never answered.
  ExpireOverdue(SystemClock::Instance().MonoMillis());
  // Asynchronous: the core's answer (the level in force) lands in level_ on the reader
  // thread and shows in the next report; the caller (an event loop) never waits for it.
  ipb::CoreRequest req;
  req.set_pressure(pressure);
  CallAsync(req, [this](const ipb::CoreMessage& m) {
    if (core::FromProto(m.status()).ok()) level_.store(m.level());
  });
  const int now = level_.load();
  const int before = reported_level_.exchange(now);
  if (changed != nullptr) *changed = now != before;
  return now;
}

}  // namespace iris::edge
