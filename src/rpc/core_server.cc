#include "rpc/core_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/clock.h"
#include "net/listener.h"
#include "net/tls.h"
#include "obs/log.h"

namespace iris::rpc {

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

void DebtToProto(const core::RateDebt& debt, ipb::RateDebt* out) {
  for (int64_t v : debt.ns) out->add_ns(v);
}

core::RateDebt DebtFromProto(const ipb::RateDebt& m) {
  core::RateDebt debt;
  for (size_t i = 0; i < debt.ns.size() && i < static_cast<size_t>(m.ns_size()); ++i) {
    debt.ns[i] = std::clamp<int64_t>(m.ns(static_cast<int>(i)), 0, core::RateDebt::kMaxNanos);
  }
  return debt;
}

namespace {

ipb::SessionRef RefToProto(const core::SessionRef& r) {
  ipb::SessionRef out;
  out.set_node(r.node);
  out.set_edge(r.edge);
  out.set_session(r.session);
  out.set_device(r.device);
  return out;
}

std::vector<uint64_t> Users(const ipb::UserList& l) {
  return std::vector<uint64_t>(l.users().begin(), l.users().end());
}

void FillPage(const core::Page& page, ipb::ScanPage* out) {
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

Status CoreServer::ListenPeers(const std::string& address, const net::PeerTlsConfig& tls,
                               NodeId my_node) {
  if (my_node == 0) return BadRequest("peer links need a node id (1 or more)");
  IRIS_ASSIGN_OR_RETURN(peer_tls_, net::PeerTlsContext::Create(tls));
  IRIS_ASSIGN_OR_RETURN(peer_fd_, net::ListenTcp(address, 256));
  // The acceptor blocks in accept(); Stop() wakes it with shutdown().
  const int flags = fcntl(peer_fd_, F_GETFL, 0);
  if (flags >= 0) fcntl(peer_fd_, F_SETFL, flags & ~O_NONBLOCK);
  IRIS_ASSIGN_OR_RETURN(peer_port_, net::LocalPort(peer_fd_));
  my_node_ = my_node;
  return Status::Ok();
}

Status CoreServer::Start() {
  if (core_ == nullptr || (listen_fd_ < 0 && peer_fd_ < 0)) {
    return Internal("CoreServer: not configured");
  }
  if (listen_fd_ >= 0) acceptor_ = std::thread([this] { AcceptLoop(listen_fd_, false); });
  if (peer_fd_ >= 0) peer_acceptor_ = std::thread([this] { AcceptLoop(peer_fd_, true); });
  return Status::Ok();
}

void CoreServer::AcceptLoop(int listen_fd, bool peer) {
  while (!stopping_.load()) {
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_.load()) return;
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
      // Out of descriptors or memory: back off briefly rather than spin.
      obs::LogWarn("core link accept failed", {{"error", strerror(errno)}});
      usleep(50'000);
      continue;
    }
    Accept(fd, peer);
  }
}

void CoreServer::Accept(int fd, bool peer) {
  if (peer) {
    // Replies and pushes go out as bursts of small frames: without this, Nagle holds the
    // second write of a burst until the peer's (delayed, up to 40 ms) ACK.
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  auto conn = std::make_unique<Conn>();
  Conn* c = conn.get();
  c->peer = peer;
  std::unique_ptr<Transport> transport;
  if (peer) {
    SSL* ssl = peer_tls_->NewServer(fd);
    if (ssl == nullptr) {
      obs::LogError("peer link: cannot create a TLS session", {{"error", net::OpenSslError()}});
      ::close(fd);
      return;
    }
    transport = MakeTlsTransport(ssl);
  } else {
    transport = MakePlainTransport(fd);
  }
  Link::Handlers h;
  if (peer) {
    h.on_established = [c](Transport& t) -> Status {
      Result<NodeId> node = net::NodeIdFromCertificate(SSL_get0_peer_certificate(t.ssl()));
      if (!node.ok()) {
        obs::LogError("peer link refused", {{"reason", node.status().message()}});
        return node.status();
      }
      c->cert_node = *node;
      return Status::Ok();
    };
  }
  h.on_message = [this, c](std::string_view frame) { OnMessage(c, frame); };
  h.on_close = [this, c](const Status& why) {
    const bool was_ready = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      return c->ready;
    }();
    c->alive.store(false);
    if (c->peer && was_ready) {
      obs::LogInfo("peer link closed", {{"node", c->node}, {"reason", why.message()}});
      // The sessions that node registered here are gone with it, unless it already came back
      // on another link (a restarted node dials again).
      bool other_link = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& o : conns_) {
          other_link = other_link || (o.get() != c && o->peer && o->alive.load() && o->ready &&
                                      o->node == c->node);
        }
      }
      if (!other_link && on_peer_lost_) on_peer_lost_(c->node);
    } else if (c->peer) {
      obs::LogWarn("peer link refused or failed before its hello", {{"reason", why.message()}});
    }
    cv_.notify_all();
  };
  c->link = std::make_shared<Link>(fd, std::move(transport),
                                   peer ? PeerLinkOptions() : link_options_, std::move(h));
  std::vector<std::unique_ptr<Conn>> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Prune connections whose link ended.
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (!(*it)->alive.load()) {
        dead.push_back(std::move(*it));
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
    conns_.push_back(std::move(conn));
    if (!c->link->Start().ok()) c->alive.store(false);
  }
  for (auto& d : dead) d->link->Stop();  // joins its (finished) I/O thread
}

bool CoreServer::WaitForEdges(size_t n, int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    size_t ready = 0;
    for (const auto& c : conns_) ready += (c->alive.load() && c->ready && !c->peer) ? 1 : 0;
    return ready >= n;
  });
}

size_t CoreServer::connected_edges() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& c : conns_) n += (c->alive.load() && c->ready && !c->peer) ? 1 : 0;
  return n;
}

size_t CoreServer::connected_peers() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& c : conns_) n += (c->alive.load() && c->ready && c->peer) ? 1 : 0;
  return n;
}

void CoreServer::OnMessage(Conn* conn, std::string_view frame) {
  ipb::CoreRequest req;
  if (!req.ParseFromArray(frame.data(), static_cast<int>(frame.size()))) {
    conn->link->Close(BadRequest("link: unparsable request"));
    return;
  }
  if (conn->peer) {
    bool ready;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready = conn->ready;
    }
    if (!ready) {
      OnPeerHello(conn, req);
      return;
    }
  }
  Handle(conn, req);
}

void CoreServer::OnPeerHello(Conn* conn, const ipb::CoreRequest& req) {
  ipb::CoreMessage m;
  m.set_call_id(req.call_id());
  Status refused;
  if (req.op_case() != ipb::CoreRequest::kPeerHello) {
    refused = Forbidden("a peer link must start with a peer hello");
  } else if (req.peer_hello().node() != conn->cert_node) {
    refused = Forbidden("peer certificate names node " + std::to_string(conn->cert_node) +
                        " but the hello claims node " + std::to_string(req.peer_hello().node()));
  } else if (conn->cert_node == my_node_) {
    refused = Forbidden("peer claims this node's own id " + std::to_string(my_node_));
  }
  if (!refused.ok()) {
    obs::LogError("peer link refused",
                  {{"cert_node", conn->cert_node}, {"reason", refused.message()}});
    ToProto(refused, m.mutable_status());
    conn->link->SendAndClose(m, refused);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    conn->node = req.peer_hello().node();
    conn->process = req.peer_hello().edge_process();
    conn->ready = true;
  }
  cv_.notify_all();
  obs::LogInfo("peer link up", {{"node", conn->node}, {"edge_process", conn->process}});
  ToProto(Status::Ok(), m.mutable_status());
  conn->link->Send(m).IgnoreError();  // a closed link has nobody to answer
}

void CoreServer::Handle(Conn* conn, ipb::CoreRequest& req) {
  const uint64_t call = req.call_id();
  const uint64_t user = req.user();
  core::SessionRef ref{req.ref().node(), req.ref().edge(), req.ref().session(),
                       std::max<uint32_t>(req.ref().device(), 1)};
  // A ref from a peer names that peer's session (pushes for it go back over its link).
  if (conn->peer && ref.node == 0) ref.node = conn->node;
  std::shared_ptr<Link> link = conn->link;
  auto reply = [link, call](const Status& s, auto&& fill) {
    if (call == 0) return;
    ipb::CoreMessage m;
    m.set_call_id(call);
    ToProto(s, m.mutable_status());
    if (s.ok()) fill(m);
    link->Send(m).IgnoreError();  // the link ended: its caller already failed the call
  };
  auto none = [](ipb::CoreMessage&) {};
  auto append_done = [reply](Result<core::AppendResult> r) {
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
      if (conn->peer) {
        reply(BadRequest("edge hello on a peer link"), none);
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        conn->process = req.hello();
        conn->ready = true;
      }
      cv_.notify_all();
      reply(Status::Ok(), none);
      return;
    }
    case ipb::CoreRequest::kPeerHello:
      reply(BadRequest("repeated or misplaced peer hello"), none);
      return;
    case ipb::CoreRequest::kReplication:
      if (!conn->peer) {
        reply(BadRequest("replication message on an edge link"), none);
        return;
      }
      if (on_replication_) on_replication_(conn->node, req.replication());
      return;
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
    case ipb::CoreRequest::kReregisterSession:
      core_->ReRegisterSession(user, ref);
      reply(Status::Ok(), none);
      return;
    case ipb::CoreRequest::kUnregisterSession:
      core_->UnregisterSession(user, ref, DebtFromProto(req.rate_debt()));
      reply(Status::Ok(), none);
      return;
    case ipb::CoreRequest::kSend:
      core_->Send(user, req.send().send(), req.send().trace_id(), append_done,
                  req.send().parent_span_id());
      return;
    case ipb::CoreRequest::kReceipt: core_->Receipt(user, req.receipt(), append_done); return;
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
    case ipb::CoreRequest::kAppendEnvelopes: {
      if (!conn->peer) {
        reply(BadRequest("append_envelopes is a call between nodes"), none);
        return;
      }
      std::vector<v1::Envelope> envelopes(req.append_envelopes().envelopes().begin(),
                                          req.append_envelopes().envelopes().end());
      core_->AppendEnvelopes(user, req.append_envelopes().idempotency_key(), std::move(envelopes),
                             append_done);
      return;
    }
    case ipb::CoreRequest::kGetSettings:
    case ipb::CoreRequest::kGetOwnSettings: {
      const bool own = req.op_case() == ipb::CoreRequest::kGetOwnSettings;
      if (!own && !conn->peer) {
        reply(BadRequest("get_settings is a call between nodes"), none);
        return;
      }
      auto settings_done = [reply](Result<core::UserSettings> r) {
        reply(r.status(), [&](ipb::CoreMessage& m) {
          ipb::UserSettings* s = m.mutable_settings();
          s->set_read_receipts(r->read_receipts);
          s->set_share_presence(r->share_presence);
          s->set_group_invites_contacts_only(r->group_invites_contacts_only);
          for (uint64_t u : r->blocked) s->add_blocked(u);
          s->set_device_list(r->device_list);
        });
      };
      if (own) {
        core_->GetOwnSettings(user, settings_done);
      } else {
        core_->GetSettings(req.get_settings(), settings_done);
      }
      return;
    }
    case ipb::CoreRequest::kConsent: {
      if (!conn->peer) {
        reply(BadRequest("consent is a call between nodes"), none);
        return;
      }
      const ipb::ConsentCall& asked = req.consent();
      core_->CheckConsent(asked.inviter(),
                          std::vector<uint64_t>(asked.users().begin(), asked.users().end()),
                          asked.wrote_only(), [reply](Result<core::Consent> r) {
                            reply(r.status(), [&](ipb::CoreMessage& m) {
                              ipb::ConsentReply* c = m.mutable_consent();
                              for (uint64_t u : r->blocked) c->add_blocked(u);
                              for (uint64_t u : r->contacts_only) c->add_contacts_only(u);
                              for (uint64_t u : r->wrote) c->add_wrote(u);
                            });
                          });
      return;
    }
    case ipb::CoreRequest::kRelayTyping:
      if (conn->peer) core_->RelayTyping(user, req.relay_typing());
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
      auto page_done = [reply](Result<core::Page> page) {
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
      const core::PressureReport r =
          core_->ReportPressure(req.pressure(), SystemClock::Instance().MonoMillis());
      reply(Status::Ok(), [&](ipb::CoreMessage& m) { m.set_level(r.level); });
      return;
    }
    case ipb::CoreRequest::OP_NOT_SET: reply(BadRequest("empty core request"), none); return;
  }
}

void CoreServer::PushTo(const core::SessionRef& to, ipb::Push push) {
  const uint32_t process = to.edge >> 8;
  const NodeId node = to.node == my_node_ ? 0 : to.node;
  std::shared_ptr<Link> target;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : conns_) {
      if (c->alive.load() && c->ready && c->node == node && c->process == process) {
        target = c->link;
      }
    }
  }
  if (!target) return;  // that edge process (or node) is gone: its sessions are gone too
  ipb::CoreMessage m;
  *m.mutable_push() = std::move(push);
  target->Send(m).IgnoreError();  // a link that ended took its sessions with it
}

void CoreServer::Deliver(const core::SessionRef& to, const v1::Envelope& envelope) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(to);
  *p.mutable_deliver() = envelope;
  PushTo(to, std::move(p));
}

void CoreServer::Replace(const core::SessionRef& old_session) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(old_session);
  p.set_replace(true);
  PushTo(old_session, std::move(p));
}

void CoreServer::RemoveDevice(const core::SessionRef& session) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(session);
  p.set_remove_device(true);
  PushTo(session, std::move(p));
}

void CoreServer::SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& debt) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(to);
  ipb::SettleRate* settle = p.mutable_settle_rate();
  settle->set_user(user);
  if (!debt.zero()) DebtToProto(debt, settle->mutable_debt());
  PushTo(to, std::move(p));
}

void CoreServer::SendPresence(const core::SessionRef& to, const v1::Presence& presence) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(to);
  *p.mutable_presence() = presence;
  PushTo(to, std::move(p));
}

void CoreServer::SendTyping(const core::SessionRef& to, const v1::Typing& typing) {
  ipb::Push p;
  *p.mutable_to() = RefToProto(to);
  *p.mutable_typing() = typing;
  PushTo(to, std::move(p));
}

void CoreServer::Broadcast(const ipb::CoreMessage& m) {
  std::vector<std::shared_ptr<Link>> local;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : conns_) {
      if (c->alive.load() && !c->peer) local.push_back(c->link);
    }
  }
  for (const auto& l : local) l->Send(m).IgnoreError();
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
  for (int* fd : {&listen_fd_, &peer_fd_}) {
    if (*fd >= 0) shutdown(*fd, SHUT_RDWR);
  }
  if (acceptor_.joinable()) acceptor_.join();
  if (peer_acceptor_.joinable()) peer_acceptor_.join();
  for (int* fd : {&listen_fd_, &peer_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
  std::vector<std::unique_ptr<Conn>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all.swap(conns_);
  }
  for (const auto& c : all) c->link->Stop();
  if (!path_.empty()) unlink(path_.c_str());
}

}  // namespace iris::rpc
