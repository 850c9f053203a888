#include "core/core_server.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/clock.h"
#include "core/link_io.h"

namespace iris::core {

namespace ipb = internal::v1;

void ToProto(const Status& s, ipb::Status* out) {
  out->set_code(static_cast<uint32_t>(s.code()));
  out->set_message(s.message());
  out->set_retry_after_ms(s.retry_after_ms());
}

Status FromProto(const ipb::Status& s) {
  if (s.code() == 0) return Status::Ok();
  return Status(static_cast<StatusCode>(s.code()), s.message(), s.retry_after_ms());
}

namespace {

ipb::SessionRef RefToProto(const SessionRef& r) {
  ipb::SessionRef out;
  out.set_edge(r.edge);
  out.set_session(r.session);
  return out;
}

SessionRef RefFromProto(const ipb::SessionRef& r) { return SessionRef{r.edge(), r.session()}; }

std::vector<uint64_t> Users(const ipb::UserList& l) {
  return std::vector<uint64_t>(l.users().begin(), l.users().end());
}

void FillPage(const store::ScanPage& page, ipb::ScanPage* out) {
  for (const auto& e : page.messages) *out->add_messages() = e;
  out->set_has_more(page.has_more);
  out->set_gap(page.gap);
}

}  // namespace

CoreServer::~CoreServer() { Stop(); }

Status CoreServer::Listen(const std::string& socket_path) {
  path_ = socket_path;
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path)) return BadRequest("core socket path too long");
  unlink(socket_path.c_str());
  listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return Internal(std::string("socket: ") + strerror(errno));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size());
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Internal("cannot bind core socket " + socket_path + ": " + strerror(errno));
  }
  if (listen(listen_fd_, 64) != 0) return Internal(std::string("listen: ") + strerror(errno));
  return Status::Ok();
}

Status CoreServer::Start() {
  if (core_ == nullptr || listen_fd_ < 0) return Internal("CoreServer: not configured");
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return Status::Ok();
}

void CoreServer::AcceptLoop() {
  while (!stopping_.load()) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      if (stopping_.load()) return;
      continue;
    }
    auto link = std::make_shared<Link>();
    link->fd = fd;
    std::vector<std::shared_ptr<Link>> dead;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Prune links whose edge process went away (their reader threads have returned).
      for (auto it = links_.begin(); it != links_.end();) {
        if (!(*it)->alive.load()) {
          dead.push_back(*it);
          it = links_.erase(it);
        } else {
          ++it;
        }
      }
      links_.push_back(link);
      link->reader = std::thread([this, link] { Serve(link); });
    }
    for (auto& l : dead) {
      if (l->reader.joinable()) l->reader.join();
    }  // the fd closes with the last reference (a completion may still hold one)
  }
}

void CoreServer::Serve(std::shared_ptr<Link> link) {
  std::string buf;
  ipb::CoreRequest req;
  while (!stopping_.load()) {
    if (!ReadLinkMessage(link->fd, &req, &buf).ok()) break;
    Handle(link, req);
  }
  link->alive.store(false);
  shutdown(link->fd, SHUT_RDWR);
  cv_.notify_all();
}

bool CoreServer::WaitForEdges(size_t n, int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    size_t ready = 0;
    for (const auto& l : links_) ready += (l->alive.load() && l->index != UINT32_MAX) ? 1 : 0;
    return ready >= n;
  });
}

size_t CoreServer::connected_edges() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& l : links_) n += (l->alive.load() && l->index != UINT32_MAX) ? 1 : 0;
  return n;
}

void CoreServer::Handle(const std::shared_ptr<Link>& link, ipb::CoreRequest& req) {
  const uint64_t call = req.call_id();
  const uint64_t user = req.user();
  const SessionRef ref = RefFromProto(req.ref());
  auto reply = [link, call](const Status& s, auto&& fill) {
    if (call == 0) return;
    ipb::CoreMessage m;
    m.set_call_id(call);
    ToProto(s, m.mutable_status());
    if (s.ok()) fill(m);
    WriteLinkMessage(link->fd, link->write_mu, m).IgnoreError();
  };
  auto none = [](ipb::CoreMessage&) {};
  auto append_done = [reply](Result<store::AppendOutcome> r) {
    reply(r.status(), [&](ipb::CoreMessage& m) {
      auto* o = m.mutable_outcome();
      o->set_message_id(r->message_id);
      o->set_accepted_at_ms(r->accepted_at_ms);
      o->set_duplicate(r->duplicate);
    });
  };
  auto group_done = [reply](Result<v1::GroupInfo> r) {
    reply(r.status(), [&](ipb::CoreMessage& m) { *m.mutable_group() = *r; });
  };
  auto status_done = [reply, none](Status s) { reply(s, none); };
  auto presence_done = [reply](Result<std::vector<v1::Presence>> r) {
    reply(r.status(), [&](ipb::CoreMessage& m) {
      for (auto& p : *r) *m.mutable_presences()->add_items() = p;
    });
  };
  switch (req.op_case()) {
    case ipb::CoreRequest::kHello: {
      {
        std::lock_guard<std::mutex> lock(mu_);
        link->index = req.hello();
      }
      cv_.notify_all();
      reply(Status::Ok(), none);
      return;
    }
    case ipb::CoreRequest::kRevocations:
      reply(Status::Ok(), [&](ipb::CoreMessage& m) {
        ipb::Revocations* r = m.mutable_revocations();
        if (revocation_source_) revocation_source_(r);
      });
      return;
    case ipb::CoreRequest::kRegisterSession:
      core_->RegisterSession(user, ref);
      reply(Status::Ok(), none);
      return;
    case ipb::CoreRequest::kUnregisterSession:
      core_->UnregisterSession(user, ref);
      reply(Status::Ok(), none);
      return;
    case ipb::CoreRequest::kSend:
      core_->Send(user, req.send().send(), req.send().trace_id(), append_done,
                  req.send().parent_span_id());
      return;
    case ipb::CoreRequest::kReceipt:
      core_->Receipt(user, req.receipt(), append_done);
      return;
    case ipb::CoreRequest::kSettings:
      core_->UpdateSettings(user, req.settings(), status_done);
      return;
    case ipb::CoreRequest::kTyping:
      core_->Typing(user, req.typing());
      reply(Status::Ok(), none);
      return;
    case ipb::CoreRequest::kSubscribe:
      core_->Subscribe(ref, Users(req.subscribe()), presence_done);
      return;
    case ipb::CoreRequest::kUnsubscribe:
      core_->Unsubscribe(ref, Users(req.unsubscribe()));
      reply(Status::Ok(), none);
      return;
    case ipb::CoreRequest::kQueryPresence:
      core_->QueryPresence(Users(req.query_presence()), presence_done);
      return;
    case ipb::CoreRequest::kKeysUpload:
      core_->UploadKeys(user, req.keys_upload(), status_done);
      return;
    case ipb::CoreRequest::kKeysFetch:
      core_->FetchKeys(req.keys_fetch(), [reply](Result<v1::KeysBundle> b) {
        reply(b.status(), [&](ipb::CoreMessage& m) { *m.mutable_bundle() = *b; });
      });
      return;
    case ipb::CoreRequest::kGroupCreate:
      core_->CreateGroup(user, req.group_create(), group_done);
      return;
    case ipb::CoreRequest::kGroupUpdate:
      core_->UpdateGroup(user, req.group_update(), group_done);
      return;
    case ipb::CoreRequest::kGroupGet: core_->GetGroup(user, req.group_get(), group_done); return;
    case ipb::CoreRequest::kScan:
    case ipb::CoreRequest::kHistory: {
      const ipb::ScanCall& c = req.has_scan() ? req.scan() : req.history();
      auto page_done = [reply](Result<store::ScanPage> page) {
        reply(page.status(), [&](ipb::CoreMessage& m) { FillPage(*page, m.mutable_page()); });
      };
      if (req.has_scan()) {
        core_->Scan(user, c.cursor(), c.limit(), c.max_bytes(), page_done);
      } else {
        core_->History(user, c.cursor(), c.limit(), c.max_bytes(), page_done);
      }
      return;
    }
    case ipb::CoreRequest::kPressure: {
      bool changed = false;
      const int level =
          core_->ReportPressure(req.pressure(), SystemClock::Instance().MonoMillis(), &changed);
      reply(Status::Ok(), [&](ipb::CoreMessage& m) { m.set_level(level); });
      return;
    }
    case ipb::CoreRequest::OP_NOT_SET:
      reply(BadRequest("empty core request"), none);
      return;
  }
}

void CoreServer::PushTo(uint32_t edge, ipb::Push push) {
  const uint32_t process = edge >> 8;
  std::shared_ptr<Link> target;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& l : links_) {
      if (l->alive.load() && l->index == process) target = l;
    }
  }
  if (!target) return;  // that edge process is gone: its sessions are gone too
  ipb::CoreMessage m;
  *m.mutable_push() = std::move(push);
  WriteLinkMessage(target->fd, target->write_mu, m).IgnoreError();
}

void CoreServer::Deliver(const SessionRef& to, const v1::Envelope& envelope) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(to);
  *p.mutable_deliver() = envelope;
  PushTo(to.edge, std::move(p));
}

void CoreServer::Replace(const SessionRef& old_session) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(old_session);
  p.set_replace(true);
  PushTo(old_session.edge, std::move(p));
}

void CoreServer::SendPresence(const SessionRef& to, const v1::Presence& presence) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(to);
  *p.mutable_presence() = presence;
  PushTo(to.edge, std::move(p));
}

void CoreServer::SendTyping(const SessionRef& to, const v1::Typing& typing) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(to);
  *p.mutable_typing() = typing;
  PushTo(to.edge, std::move(p));
}

void CoreServer::Broadcast(const ipb::CoreMessage& m) {
  std::vector<std::shared_ptr<Link>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all = links_;
  }
  for (const auto& l : all) {
    if (l->alive.load()) WriteLinkMessage(l->fd, l->write_mu, m).IgnoreError();
  }
}

void CoreServer::BroadcastRevokeJti(const std::string& jti, int64_t until_ms) {
  ipb::CoreMessage m;
  m.mutable_push()->mutable_revoke_jti()->set_jti(jti);
  m.mutable_push()->mutable_revoke_jti()->set_until_ms(until_ms);
  Broadcast(m);
}

void CoreServer::BroadcastRevokeUser(uint64_t user, int64_t before_ms) {
  ipb::CoreMessage m;
  m.mutable_push()->mutable_revoke_user()->set_user(user);
  m.mutable_push()->mutable_revoke_user()->set_before_ms(before_ms);
  Broadcast(m);
}

void CoreServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) {
    shutdown(listen_fd_, SHUT_RDWR);
    close(listen_fd_);
    listen_fd_ = -1;
  }
  if (acceptor_.joinable()) acceptor_.join();
  std::vector<std::shared_ptr<Link>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all.swap(links_);
  }
  for (const auto& l : all) shutdown(l->fd, SHUT_RDWR);
  for (const auto& l : all) {
    if (l->reader.joinable()) l->reader.join();
  }  // the fds close with the last references
  if (!path_.empty()) unlink(path_.c_str());
}

}  // namespace iris::core
