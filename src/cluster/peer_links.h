#pragma once
// PeerLinks: this node's links to the other nodes' cores (cluster::Peers for the Router;
// CLUSTER.md section 7). One rpc::RemoteCore per node, over TCP with mutual TLS 1.3, dialled
// at the node's peer address as the current Placement lists it.
//
// Connecting blocks (TCP + TLS handshake + peer hello), so it never happens on the caller's
// thread: PeerCore() returns the node's core when its link is up and otherwise returns
// nullptr and asks the connector thread to dial (the Router retries with backoff until its
// deadline). Pushes for this node's sessions arrive on the links this node opened (the
// owner's rpc::CoreServer sends them back over the caller's link) and go to `incoming`.
//
// A link that ends (the node died, restarted, or the write queue passed its bound) fails its
// pending calls UNAVAILABLE (the Router retries them) and calls on_lost(node): the sessions
// this node registered there may have missed pushes, so the caller ends them and their
// clients resume from their cursors (lossless; docs/architecture.md "Routing between nodes").
//
// Lifetime: a RemoteCore handed out is kept until Stop(), even after its link ended and a
// new one replaced it, so a pointer the Router holds during a call stays valid.
//
// Thread-safety: PeerCore/PeerSink/Want from any thread; Start/Stop from one thread.

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "cluster/placement.h"
#include "cluster/router.h"
#include "net/peer_tls.h"
#include "rpc/remote_core.h"

namespace iris::cluster {

struct PeerLinksOptions {
  NodeId self = 0;
  int64_t connect_timeout_ms = 3'000;
  int64_t call_timeout_ms = 10'000;
  int64_t redial_backoff_ms = 200;  // between two attempts to reach one node
};

class PeerLinks final : public Peers {
 public:
  // Every reference must outlive the PeerLinks. `placement` gives the current snapshot.
  // `outgoing`: this node's pushes to sessions on other nodes (the rpc::CoreServer their
  // links reach). `incoming`: pushes for this node's sessions.
  PeerLinks(PeerLinksOptions options, const net::PeerTlsContext& tls,
            std::function<std::shared_ptr<const Placement>()> placement, core::EdgeSink& outgoing,
            core::EdgeSink& incoming, std::function<void(NodeId)> on_lost);
  ~PeerLinks() override;

  void Start();
  void Stop();

  core::CoreApi* PeerCore(NodeId node) override;
  core::EdgeSink* PeerSink(NodeId node) override;
  // Dials `node` in the background unless its link is up (e.g. when it registers).
  void Want(NodeId node);
  // Sends a replication message to `node` over its link (one-way). Returns false, dialling
  // in the background, when the link is down: the message is dropped (the replication
  // protocol retransmits).
  bool SendReplication(NodeId node, const internal::v1::ReplicationMessage& message);
  size_t links_up() const;

 private:
  void Run();
  void Dial(NodeId node);

  const PeerLinksOptions options_;
  const net::PeerTlsContext& tls_;
  const std::function<std::shared_ptr<const Placement>()> placement_;
  core::EdgeSink& outgoing_;
  core::EdgeSink& incoming_;
  const std::function<void(NodeId)> on_lost_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<NodeId, rpc::RemoteCore*> up_;              // links up now
  std::vector<std::unique_ptr<rpc::RemoteCore>> all_;  // every link made (see Lifetime)
  std::set<NodeId> wanted_;                            // to dial
  std::map<NodeId, int64_t> next_try_ms_;              // monotonic; redial backoff
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace iris::cluster
