#pragma once
// CoreServer: the serving end of the internal link. It accepts
//  - edge processes of this node on a Unix socket (Listen; --edge-processes), and
//  - other nodes over TCP with mutual TLS 1.3 (ListenPeers; CLUSTER.md section 7),
// and turns their CoreRequests into asynchronous calls on this node's CoreApi. Each
// accepted connection is an rpc::Link with its own I/O thread, which parses requests and
// makes the calls (they never wait); each completion queues its reply (tagged with the
// request's call id) on the link from whichever core thread finished it, so replies may
// leave in another order than the requests came.
//
// Peer authentication: a peer link is accepted only when the TLS handshake verified the
// client's certificate against --peer-ca, its CN is "iris-node-<id>", and the link's first
// message is a peer hello claiming that same id; otherwise the link is refused (logged,
// and the client gets a FORBIDDEN reply or a TLS alert) and closed.
//
// As the core's EdgeSink it routes each push by (SessionRef::node, edge process =
// SessionRef::edge >> 8): node 0 (or this node's id) to the local edge process link, any
// other node to the link that node opened with that edge process index. Session refs that
// arrive on a peer link with node 0 are stamped with the peer's node id, so the core's
// pushes for them go back over that link. Revocation broadcasts reach the local edge
// processes only (other nodes learn revocations through the cluster's coordination).
//
// Thread-safety: EdgeSink methods and Broadcast* from any thread; Listen/ListenPeers/Start/
// Stop from the controlling thread.

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/jump_hash.h"
#include "core/core_api.h"
#include "iris/v1/internal.pb.h"
#include "net/peer_tls.h"
#include "rpc/link.h"

namespace iris::rpc {

class CoreServer final : public core::EdgeSink {
 public:
  explicit CoreServer(LinkOptions link_options = {}) : link_options_(link_options) {}
  ~CoreServer() override;

  // The core this server calls; set before Start().
  void set_core(core::CoreApi* core) { core_ = core; }
  // Fills the reply to an edge process's request for every revocation in force; set before
  // Start().
  void set_revocation_source(std::function<void(internal::v1::Revocations*)> source) {
    revocation_source_ = std::move(source);
  }
  // Runs (on the link's I/O thread) when the last link from peer node `node` ends: the
  // sessions it registered here are stale. Set before Start().
  void set_on_peer_lost(std::function<void(NodeId)> f) { on_peer_lost_ = std::move(f); }
  // Receives the replication messages peers send (RemoteCore::SendReplication), on the link's
  // I/O thread, with the link's authenticated node as the sender; must not block. Without a
  // handler (a node that replicates nothing) they are dropped. Set before Start().
  void set_on_replication(
      std::function<void(NodeId from, const internal::v1::ReplicationMessage&)> f) {
    on_replication_ = std::move(f);
  }
  // Edge processes of this node (no TLS: the socket lives in the data directory).
  Status Listen(const std::string& socket_path);
  // Other nodes: TCP on `address` ("host:port", port 0 = any) with mutual TLS 1.3 from
  // `tls`; this node is `my_node`. BAD_REQUEST when a certificate file cannot be loaded.
  Status ListenPeers(const std::string& address, const net::PeerTlsConfig& tls, NodeId my_node);
  // The port ListenPeers bound (0 before).
  uint16_t peer_port() const { return peer_port_; }
  Status Start();
  // Waits until `n` distinct edge processes said hello.
  bool WaitForEdges(size_t n, int64_t timeout_ms);
  size_t connected_edges() const;
  // Peer links whose hello was accepted and that are still open.
  size_t connected_peers() const;
  void BroadcastRevokeJti(const std::string& jti, int64_t until_ms);
  void BroadcastRevokeUser(uint64_t user, int64_t before_ms);
  void Stop();

  void Deliver(const core::SessionRef& to, const v1::Envelope& envelope) override;
  void Replace(const core::SessionRef& old_session) override;
  void RemoveDevice(const core::SessionRef& session) override;
  void SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& debt) override;
  void SendPresence(const core::SessionRef& to, const v1::Presence& presence) override;
  void SendTyping(const core::SessionRef& to, const v1::Typing& typing) override;

 private:
  // One accepted connection. Owned by conns_ until pruned (after its link ended) or Stop();
  // its link's handlers point at it.
  struct Conn {
    std::shared_ptr<Link> link;
    bool peer = false;     // a TLS peer link (else a local edge process)
    NodeId cert_node = 0;  // peer: the node its certificate names (I/O thread, then mu_)
    // mu_: set by the hello.
    bool ready = false;
    NodeId node = 0;                // 0 = a local edge process
    uint32_t process = UINT32_MAX;  // edge process index
    std::atomic<bool> alive{true};
  };
  void AcceptLoop(int listen_fd, bool peer);
  void Accept(int fd, bool peer);
  void OnMessage(Conn* conn, std::string_view frame);
  // A peer's hello: accepted when it claims the node its certificate names.
  void OnPeerHello(Conn* conn, const internal::v1::CoreRequest& req);
  void Handle(Conn* conn, internal::v1::CoreRequest& req);
  void PushTo(const core::SessionRef& to, internal::v1::Push push);
  void Broadcast(const internal::v1::CoreMessage& m);

  const LinkOptions link_options_;
  core::CoreApi* core_ = nullptr;
  std::function<void(internal::v1::Revocations*)> revocation_source_;
  std::function<void(NodeId)> on_peer_lost_;
  std::function<void(NodeId, const internal::v1::ReplicationMessage&)> on_replication_;
  std::string path_;
  int listen_fd_ = -1;
  int peer_fd_ = -1;
  uint16_t peer_port_ = 0;
  NodeId my_node_ = 0;
  std::unique_ptr<net::PeerTlsContext> peer_tls_;
  std::thread acceptor_;
  std::thread peer_acceptor_;
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Conn>> conns_;  // every connection accepted (ended ones pruned)
};

// Status <-> wire form of the internal link.
void ToProto(const Status& s, internal::v1::Status* out);
Status FromProto(const internal::v1::Status& s);
// core::RateDebt <-> its message (missing slots are 0; extra ones are ignored).
void DebtToProto(const core::RateDebt& debt, internal::v1::RateDebt* out);
core::RateDebt DebtFromProto(const internal::v1::RateDebt& m);

}  // namespace iris::rpc
