#include "rpc/remote_core.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>

#include "common/assert.h"
#include "common/clock.h"
#include "net/listener.h"
#include "net/tls.h"
#include "rpc/core_server.h"

namespace iris::rpc {

namespace ipb = ::iris::internal::v1;

namespace {

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

void SetRef(ipb::CoreRequest& req, const core::SessionRef& ref) {
  req.mutable_ref()->set_node(ref.node);
  req.mutable_ref()->set_edge(ref.edge);
  req.mutable_ref()->set_session(ref.session);
  req.mutable_ref()->set_device(ref.device);
}

ipb::CoreMessage UnavailableReply(uint64_t call, const std::string& why) {
  ipb::CoreMessage m;
  m.set_call_id(call);
  ToProto(iris::Unavailable("the core is unreachable: " + why, 1000), m.mutable_status());
  return m;
}

core::Page PageFrom(const ipb::ScanPage& p) {
  core::Page out;
  out.messages.assign(p.messages().begin(), p.messages().end());
  out.has_more = p.has_more();
  out.gap = p.gap();
  return out;
}

std::vector<v1::Presence> PresencesFrom(const ipb::CoreMessage& m) {
  return std::vector<v1::Presence>(m.presences().items().begin(), m.presences().items().end());
}

// A TCP connection to host:port within the deadline (blocking for the caller, start-up).
Result<int> DialTcp(const std::string& address, int64_t deadline_ms) {
  std::string host;
  uint16_t port = 0;
  IRIS_RETURN_IF_ERROR(net::SplitHostPort(address, &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  const int gai = getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res);
  if (gai != 0 || res == nullptr) {
    return iris::Unavailable("cannot resolve peer " + address + ": " + gai_strerror(gai), 1000);
  }
  std::string err = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      err = strerror(errno);
      continue;
    }
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      const int wait = static_cast<int>(std::max<int64_t>(0, deadline_ms - NowMs()));
      rc = poll(&p, 1, wait);
      if (rc == 1) {
        int so_error = 0;
        socklen_t len = sizeof(so_error);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
        rc = so_error == 0 ? 0 : -1;
        errno = so_error;
      } else {
        if (rc == 0) errno = ETIMEDOUT;
        rc = -1;
      }
    }
    if (rc == 0) {
      freeaddrinfo(res);
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return fd;
    }
    err = strerror(errno);
    close(fd);
  }
  freeaddrinfo(res);
  return iris::Unavailable("cannot reach peer " + address + ": " + err, 1000);
}

}  // namespace

RemoteCore::RemoteCore(uint32_t process_index, Options options)
    : process_index_(process_index), options_(options) {}

RemoteCore::~RemoteCore() {
  Stop();
  if (fd_ >= 0) close(fd_);
}

Status RemoteCore::Connect(const std::string& path, int64_t timeout_ms) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return BadRequest("core socket path too long");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return Internal(std::string("socket: ") + strerror(errno));
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) break;
    const std::string err = strerror(errno);
    close(fd_);
    fd_ = -1;
    if (NowMs() >= deadline) {
      return iris::Unavailable("cannot reach the core process at " + path + ": " + err, 0);
    }
    // Start-up only: the core process creates the socket before it starts edge processes,
    // so this retry loop runs at most briefly.
    usleep(20'000);
  }
  return Status::Ok();
}

void RemoteCore::Start(PushHandler handler) {
  const int fd = fd_;
  fd_ = -1;
  StartLink(fd, MakePlainTransport(fd), std::move(handler));
}

void RemoteCore::StartLink(int fd, std::unique_ptr<Transport> transport, PushHandler handler) {
  handler_ = std::move(handler);
  Link::Handlers h;
  h.on_message = [this](std::string_view frame) { OnMessage(frame); };
  h.on_timer = [this](int64_t now) { return ExpireOverdue(now); };
  h.on_close = [this](const Status& why) { OnClose(why); };
  link_ = std::make_shared<Link>(fd, std::move(transport), options_.link, std::move(h));
  if (Status s = link_->Start(); !s.ok()) OnClose(s);
}

Status RemoteCore::ConnectPeer(const std::string& address, const net::PeerTlsContext& tls,
                               NodeId expected_node, NodeId my_node, PushHandler handler,
                               int64_t timeout_ms) {
  if (expected_node == 0 || my_node == 0) return BadRequest("peer node ids start at 1");
  const int64_t deadline = NowMs() + timeout_ms;
  IRIS_ASSIGN_OR_RETURN(const int fd, DialTcp(address, deadline));
  SSL* ssl = tls.NewClient(fd, expected_node);
  if (ssl == nullptr) {
    close(fd);
    return Internal("peer TLS: cannot create a session: " + net::OpenSslError());
  }
  // A link the peer refuses was never up: its end is no loss to report.
  report_loss_.store(false);
  StartLink(fd, MakeTlsTransport(ssl), std::move(handler));
  ipb::CoreRequest hello;
  hello.mutable_peer_hello()->set_node(my_node);
  hello.mutable_peer_hello()->set_edge_process(process_index_);
  const ipb::CoreMessage reply = Call(hello, std::max<int64_t>(1, deadline - NowMs()));
  Status s = FromProto(reply.status());
  if (!s.ok()) {
    Stop();
    return Status(s.code(),
                  "peer link to node " + std::to_string(expected_node) + " at " + address +
                      " refused: " + s.message(),
                  s.retry_after_ms());
  }
  report_loss_.store(true);
  if (!link_up()) {  // ended between the answer and now, unreported
    return iris::Unavailable(
        "peer link to node " + std::to_string(expected_node) + " ended right after its hello",
        1000);
  }
  return Status::Ok();
}

Status RemoteCore::SayHello() {
  ipb::CoreRequest hello;
  hello.set_hello(process_index_);
  return FromProto(Call(hello, options_.call_timeout_ms).status());
}

Result<ipb::Revocations> RemoteCore::FetchRevocations() {
  ipb::CoreRequest req;
  req.set_revocations(true);
  ipb::CoreMessage reply = Call(req, options_.call_timeout_ms);
  IRIS_RETURN_IF_ERROR(FromProto(reply.status()));
  return reply.revocations();
}

void RemoteCore::Stop() {
  if (link_) link_->Stop();  // on_close fails every pending call
}

void RemoteCore::OnMessage(std::string_view frame) {
  ipb::CoreMessage m;
  if (!m.ParseFromArray(frame.data(), static_cast<int>(frame.size()))) {
    link_->Close(BadRequest("link: unparsable message from the core"));
    return;
  }
  if (m.has_push()) {
    const ipb::Push& p = m.push();
    const core::SessionRef to{p.to().node(), p.to().edge(), p.to().session(),
                              std::max<uint32_t>(p.to().device(), 1)};
    switch (p.what_case()) {
      case ipb::Push::kDeliver:
        if (handler_.sink) handler_.sink->Deliver(to, p.deliver());
        break;
      case ipb::Push::kReplace:
        if (handler_.sink) handler_.sink->Replace(to);
        break;
      case ipb::Push::kRemoveDevice:
        if (handler_.sink) handler_.sink->RemoveDevice(to);
        break;
      case ipb::Push::kSettleRate:
        if (handler_.sink) {
          handler_.sink->SettleRate(to, p.settle_rate().user(),
                                    DebtFromProto(p.settle_rate().debt()));
        }
        break;
      case ipb::Push::kPresence:
        if (handler_.sink) handler_.sink->SendPresence(to, p.presence());
        break;
      case ipb::Push::kTyping:
        if (handler_.sink) handler_.sink->SendTyping(to, p.typing());
        break;
      case ipb::Push::kRevokeJti:
        if (handler_.revoke_jti) {
          handler_.revoke_jti(p.revoke_jti().jti(), p.revoke_jti().until_ms());
        }
        break;
      case ipb::Push::kRevokeUser:
        if (handler_.revoke_user) {
          handler_.revoke_user(p.revoke_user().user(), p.revoke_user().before_ms());
        }
        break;
      case ipb::Push::WHAT_NOT_SET: break;
    }
    return;
  }
  if (Completion done = Take(m.call_id())) done(m);  // else: a call that already timed out
}

RemoteCore::Completion RemoteCore::Take(uint64_t call) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(call);
  if (it == pending_.end()) return nullptr;
  Completion done = std::move(it->second.done);
  deadlines_.erase(it->second.deadline);
  pending_.erase(it);
  return done;
}

void RemoteCore::OnClose(const Status& why) {
  std::unordered_map<uint64_t, Pending> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    close_reason_ = why.message();
    all.swap(pending_);
    deadlines_.clear();
  }
  for (auto& [call, p] : all) p.done(UnavailableReply(call, why.message()));
  if (report_loss_.load() && handler_.on_link_lost) handler_.on_link_lost();
}

int64_t RemoteCore::ExpireOverdue(int64_t now_ms) {
  std::vector<std::pair<uint64_t, Completion>> overdue;
  int64_t next = kNoTimer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!deadlines_.empty()) {
      auto it = deadlines_.begin();
      if (it->first > now_ms) {
        next = it->first;
        break;
      }
      auto p = pending_.find(it->second);
      overdue.emplace_back(it->second, std::move(p->second.done));
      pending_.erase(p);
      deadlines_.erase(it);
    }
  }
  for (auto& [call, done] : overdue) {
    done(UnavailableReply(call,
                          "no answer within " + std::to_string(options_.call_timeout_ms) + " ms"));
  }
  return next;
}

void RemoteCore::CallAsync(ipb::CoreRequest& req, Completion done) {
  const uint64_t call = next_call_.fetch_add(1);
  req.set_call_id(call);
  if (!link_up()) {
    std::string why;
    {
      std::lock_guard<std::mutex> lock(mu_);
      why = close_reason_.empty() ? "the link is down" : close_reason_;
    }
    done(UnavailableReply(call, why));
    return;
  }
  const int64_t deadline = NowMs() + options_.call_timeout_ms;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.emplace(call, Pending{std::move(done), deadlines_.emplace(deadline, call)});
  }
  link_->ArmTimer(deadline);
  if (Status s = link_->Send(req); !s.ok()) {
    if (Completion d = Take(call)) d(UnavailableReply(call, s.message()));
  }
}

ipb::CoreMessage RemoteCore::Call(ipb::CoreRequest& req, int64_t timeout_ms) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // start-up only (hello, revocations)
  auto promise = std::make_shared<std::promise<ipb::CoreMessage>>();
  auto future = promise->get_future();
  CallAsync(req, [promise](const ipb::CoreMessage& m) { promise->set_value(m); });
  if (future.wait_for(std::chrono::milliseconds(timeout_ms)) != std::future_status::ready) {
    if (Take(req.call_id())) return UnavailableReply(req.call_id(), "no answer in time");
  }
  return future.get();
}

void RemoteCore::Cast(ipb::CoreRequest& req) {
  req.set_call_id(0);
  if (link_up()) link_->Send(req).IgnoreError();  // a lost link is reported by on_link_lost
}

void RemoteCore::RegisterSession(uint64_t user, core::SessionRef ref) {
  ipb::CoreRequest req;
  req.set_user(user);
  SetRef(req, ref);
  req.set_register_session(true);
  Cast(req);
}

void RemoteCore::ReRegisterSession(uint64_t user, core::SessionRef ref) {
  ipb::CoreRequest req;
  req.set_user(user);
  SetRef(req, ref);
  req.set_reregister_session(true);
  Cast(req);
}

void RemoteCore::UnregisterSession(uint64_t user, core::SessionRef ref,
                                   const core::RateDebt& debt) {
  ipb::CoreRequest req;
  req.set_user(user);
  SetRef(req, ref);
  req.set_unregister_session(true);
  if (!debt.zero()) DebtToProto(debt, req.mutable_rate_debt());
  Cast(req);
}

namespace {

void RunSendDone(const core::CoreApi::SendDone& done, const ipb::CoreMessage& m) {
  Status s = FromProto(m.status());
  if (!s.ok()) {
    done(s);
    return;
  }
  done(core::AppendResult{m.outcome().message_id(), m.outcome().accepted_at_ms(),
                          m.outcome().duplicate()});
}

std::function<void(const ipb::CoreMessage&)> GroupCompletion(core::CoreApi::GroupDone done) {
  return [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = FromProto(m.status());
    if (!s.ok()) {
      done(s);
    } else {
      done(m.group());
    }
  };
}

std::function<void(const ipb::CoreMessage&)> StatusCompletion(core::CoreApi::StatusDone done) {
  return [done = std::move(done)](const ipb::CoreMessage& m) { done(FromProto(m.status())); };
}

std::function<void(const ipb::CoreMessage&)> PresenceCompletion(core::CoreApi::PresenceDone done) {
  return [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = FromProto(m.status());
    if (!s.ok()) {
      done(s);
    } else {
      done(PresencesFrom(m));
    }
  };
}

std::function<void(const ipb::CoreMessage&)> PageCompletion(core::CoreApi::PageDone done) {
  return [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = FromProto(m.status());
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
    Status s = FromProto(m.status());
    if (!s.ok()) {
      done(s);
    } else {
      done(m.bundle());
    }
  });
}

void RemoteCore::AppendEnvelopes(uint64_t sender, const std::string& idempotency_key,
                                 std::vector<v1::Envelope> envelopes, SendDone done) {
  ipb::CoreRequest req;
  req.set_user(sender);
  ipb::AppendCall* call = req.mutable_append_envelopes();
  call->set_idempotency_key(idempotency_key);
  for (auto& e : envelopes) *call->add_envelopes() = std::move(e);
  CallAsync(req, [done = std::move(done)](const ipb::CoreMessage& m) { RunSendDone(done, m); });
}

void RemoteCore::GetSettings(uint64_t user, SettingsDone done) {
  ipb::CoreRequest req;
  req.set_get_settings(user);
  AskSettings(req, std::move(done));
}

void RemoteCore::GetOwnSettings(uint64_t user, SettingsDone done) {
  ipb::CoreRequest req;
  req.set_user(user);
  req.set_get_own_settings(true);
  AskSettings(req, std::move(done));
}

void RemoteCore::AskSettings(ipb::CoreRequest& req, SettingsDone done) {
  CallAsync(req, [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = FromProto(m.status());
    if (!s.ok()) {
      done(s);
      return;
    }
    const ipb::UserSettings& us = m.settings();
    done(core::UserSettings{
        us.read_receipts(), us.share_presence(), us.group_invites_contacts_only(),
        std::vector<uint64_t>(us.blocked().begin(), us.blocked().end()), us.device_list()});
  });
}

void RemoteCore::CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users,
                              bool wrote_only, ConsentDone done) {
  ipb::CoreRequest req;
  ipb::ConsentCall* call = req.mutable_consent();
  call->set_inviter(inviter);
  for (uint64_t u : users) call->add_users(u);
  call->set_wrote_only(wrote_only);
  CallAsync(req, [done = std::move(done)](const ipb::CoreMessage& m) {
    Status s = FromProto(m.status());
    if (!s.ok()) {
      done(s);
      return;
    }
    const ipb::ConsentReply& r = m.consent();
    core::Consent c;
    c.blocked.assign(r.blocked().begin(), r.blocked().end());
    c.contacts_only.assign(r.contacts_only().begin(), r.contacts_only().end());
    c.wrote.assign(r.wrote().begin(), r.wrote().end());
    done(std::move(c));
  });
}

void RemoteCore::RelayTyping(uint64_t to, const v1::Typing& typing) {
  ipb::CoreRequest req;
  req.set_user(to);
  *req.mutable_relay_typing() = typing;
  Cast(req);
}

void RemoteCore::SendReplication(const ipb::ReplicationMessage& message) {
  ipb::CoreRequest req;
  *req.mutable_replication() = message;
  Cast(req);
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

core::PressureReport RemoteCore::ReportPressure(double pressure, int64_t) {
  // Asynchronous: the core's answer (the level in force) lands in level_ on the I/O thread
  // and shows in the next report; the caller (an event loop) never waits for it.
  ipb::CoreRequest req;
  req.set_pressure(pressure);
  CallAsync(req, [this](const ipb::CoreMessage& m) {
    if (FromProto(m.status()).ok()) level_.store(m.level());
  });
  const int now = level_.load();
  const int before = reported_level_.exchange(now);
  return core::PressureReport{now, now != before};
}

}  // namespace iris::rpc
