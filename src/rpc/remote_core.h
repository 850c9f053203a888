#pragma once
// RemoteCore: a CoreApi whose core is in another process or on another node. Every call
// becomes a CoreRequest on an rpc::Link:
//  - an edge process (--edge-processes) reaches its node's core process over a Unix socket
//    (Connect, Start, SayHello);
//  - a node reaches another node's core over TCP with mutual TLS 1.3 (ConnectPeer; see
//    net/peer_tls.h and rpc::CoreServer for how each side authenticates the other).
// Replies and pushes come back on the same link and are handled on its I/O thread, which
// completes waiting calls and hands pushes to the PushHandler's EdgeSink and revocation
// callbacks (all of which must not block).
//
// Every CoreApi call is asynchronous: the request carries a call id, the I/O thread matches
// the answer to it and runs the completion (which posts to the session's loop). Nothing on
// an event-loop thread waits. Only the start-up calls (hello, FetchRevocations, the peer
// hello inside ConnectPeer) wait, bounded by call_timeout_ms, and they are made before the
// edge's loops run.
//
// Deadlines: each call fails with UNAVAILABLE once call_timeout_ms passes without an answer
// (the link's timer enforces it; an answer arriving later is dropped). If the link ends
// (the other side is gone, a write failed, the write queue passed its bound) every pending
// call fails with UNAVAILABLE, later calls fail at once, and on_link_lost runs once (not for
// a peer link that ConnectPeer reports as refused: it never came up).
//
// Thread-safety: every CoreApi method may be called from any thread.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/jump_hash.h"
#include "core/core_api.h"
#include "iris/v1/internal.pb.h"
#include "net/peer_tls.h"
#include "rpc/link.h"

namespace iris::rpc {

struct RemoteCoreOptions {
  int64_t call_timeout_ms = 10'000;  // each call's deadline
  LinkOptions link;
};

class RemoteCore final : public core::CoreApi {
 public:
  struct PushHandler {
    core::EdgeSink* sink = nullptr;
    std::function<void(const std::string& jti, int64_t until_ms)> revoke_jti;
    std::function<void(uint64_t user, int64_t before_ms)> revoke_user;
    std::function<void()> on_link_lost;
  };
  using Options = RemoteCoreOptions;

  // `process_index`: this edge process's index (pushes are routed back by it).
  explicit RemoteCore(uint32_t process_index, Options options = {});
  ~RemoteCore() override;

  // Unix socket (edge process -> core process): connects, retrying until the deadline.
  Status Connect(const std::string& socket_path, int64_t timeout_ms);
  // Starts the link's I/O thread on the connected socket. Set the handler here.
  void Start(PushHandler handler);
  // Announces this edge process to the core; the core counts it as ready from then on, so
  // call it once the edge is accepting connections.
  Status SayHello();
  // Every token revocation in force in the core process (call after Start(), before the
  // edge accepts connections; later ones arrive as pushes).
  Result<iris::internal::v1::Revocations> FetchRevocations();

  // TCP + mutual TLS 1.3 (node `my_node` -> node `expected_node` at `address`, "host:port"):
  // connects, verifies that the server's certificate names expected_node, starts the link
  // with `handler`, says the peer hello (my_node, this RemoteCore's process index) and
  // waits for the peer to accept it, all within timeout_ms. Instead of Connect + Start +
  // SayHello. Errors: UNAVAILABLE (unreachable, TLS failure, timeout: the reason in the
  // message), FORBIDDEN (the peer refused our hello), BAD_REQUEST (bad address).
  Status ConnectPeer(const std::string& address, const net::PeerTlsContext& tls,
                     NodeId expected_node, NodeId my_node, PushHandler handler, int64_t timeout_ms);

  // Closes the link (pending calls fail with UNAVAILABLE) and joins its I/O thread. Not
  // from a completion or push handler.
  void Stop();
  bool link_up() const { return link_ != nullptr && link_->open(); }
  // The link, for its queue figures (tests).
  const Link* link() const { return link_.get(); }

  void RegisterSession(uint64_t user, core::SessionRef ref) override;
  void ReRegisterSession(uint64_t user, core::SessionRef ref) override;
  void UnregisterSession(uint64_t user, core::SessionRef ref, const core::RateDebt& debt) override;
  void Send(uint64_t sender, const v1::Send& send, const std::string& trace_id, SendDone done,
            uint64_t parent_span_id = 0) override;
  void Receipt(uint64_t author, const v1::Receipt& receipt, SendDone done) override;
  void UpdateSettings(uint64_t user, const v1::Settings& settings, StatusDone done) override;
  bool Typing(uint64_t from, const v1::Typing& typing) override;
  void Subscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users,
                 PresenceDone done) override;
  void Unsubscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users) override;
  void QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) override;
  void UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) override;
  void FetchKeys(uint64_t user, KeysDone done) override;
  void CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) override;
  void UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) override;
  void GetGroup(uint64_t user, uint64_t group_id, GroupDone done) override;
  void Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes,
            PageDone done) override;
  void History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
               PageDone done) override;
  core::PressureReport ReportPressure(double pressure, int64_t now_ms) override;
  // Calls between nodes (a peer link only; the core process refuses them from an edge).
  void AppendEnvelopes(uint64_t sender, const std::string& idempotency_key,
                       std::vector<v1::Envelope> envelopes, SendDone done) override;
  void GetSettings(uint64_t user, SettingsDone done) override;
  void GetOwnSettings(uint64_t user, SettingsDone done) override;
  void CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                    ConsentDone done) override;
  void RelayTyping(uint64_t to, const v1::Typing& typing) override;
  // One-way message between a shard's replicas (the peer's CoreServer replication handler).
  // Dropped when the link is down: the protocol retransmits.
  void SendReplication(const internal::v1::ReplicationMessage& message);

 private:
  using Completion = std::function<void(const ::iris::internal::v1::CoreMessage&)>;
  // Starts the link on `fd` with `transport`.
  void StartLink(int fd, std::unique_ptr<Transport> transport, PushHandler handler);
  // Sends `req` with a fresh call id; `done` runs exactly once: on the I/O thread with the
  // answer, or with an UNAVAILABLE message on the deadline, link loss, or inline when the
  // link is down.
  void CallAsync(::iris::internal::v1::CoreRequest& req, Completion done);
  // GetSettings / GetOwnSettings: `req` asks for settings; `done` gets them.
  void AskSettings(::iris::internal::v1::CoreRequest& req, SettingsDone done);
  // Sends `req` and waits for the reply (UNAVAILABLE on timeout or link loss). Start-up only.
  ::iris::internal::v1::CoreMessage Call(::iris::internal::v1::CoreRequest& req,
                                         int64_t timeout_ms);
  // Sends `req` without waiting for anything.
  void Cast(::iris::internal::v1::CoreRequest& req);
  void OnMessage(std::string_view frame);
  void OnClose(const Status& why);
  // Fails every call whose deadline passed; returns the next deadline (I/O thread).
  int64_t ExpireOverdue(int64_t now_ms);
  // Takes call `call` out of the table (nullptr when it was answered or failed already).
  Completion Take(uint64_t call);

  const uint32_t process_index_;
  const Options options_;
  int fd_ = -1;  // until StartLink hands it to the link
  std::shared_ptr<Link> link_;
  PushHandler handler_;
  std::mutex mu_;
  using Deadlines = std::multimap<int64_t, uint64_t>;  // monotonic deadline -> call
  struct Pending {
    Completion done;
    Deadlines::iterator deadline;
  };
  std::unordered_map<uint64_t, Pending> pending_;  // mu_
  Deadlines deadlines_;                            // mu_: one entry per pending call
  std::string close_reason_;                       // mu_: why the link ended
  std::atomic<bool> report_loss_{true};            // false while a peer hello is unanswered
  std::atomic<uint64_t> next_call_{1};
  std::atomic<int> level_{0};           // the core's last answer to a pressure report
  std::atomic<int> reported_level_{0};  // what the last ReportPressure returned
};

}  // namespace iris::rpc
