#pragma once
// Server: wiring of one irisd node in the embedded default (edge + core + store in one
// process): prepares the data directory (generating a self-signed certificate, a JWT secret
// and an admin token on first start), opens the store, starts the edge loops and the admin
// HTTP listener. main() only parses the configuration and waits for a signal.

#include <sys/types.h>

#include <memory>
#include <string>

#include "core/core.h"
#include "edge/edge.h"
#include "server/config.h"

namespace iris::store {
struct StoreOptions;
}  // namespace iris::store
namespace iris::cluster {
class Placement;
}  // namespace iris::cluster

namespace iris::server {

class Server {
 public:
  // DATA_LOSS only for a node of a replicated cluster with config.rebuild_lost_data whose
  // store or replication log lost durable writes or is damaged (SetAsideLostData, then
  // Create again); a single node gets INTERNAL with the same message.
  static Result<std::unique_ptr<Server>> Create(const ServerConfig& config);
  // Moves <data-dir>/store and <data-dir>/replication into a new <data-dir>/lost-<unix ms>/
  // (one directory rename each) and returns that directory: the node then starts empty and
  // is rebuilt from the other replicas; the old files stay for inspection.
  static Result<std::string> SetAsideLostData(const ServerConfig& config);
  // The mark SetAsideLostData leaves in the data directory (its content: the lost-* path).
  static constexpr std::string_view kLostDataMark = "LOST-DATA";
  ~Server();

  Status Start();
  // Graceful: stop accepting, finish in-flight writes, flush replies, close. Idempotent.
  void Stop();

  // Call about once a second from the controlling thread: restarts edge processes that died
  // (core process with --edge-processes), prunes expired revocations, and logs the store's
  // health changes (disk full entered/left, failed writes).
  void Supervise();

  // SIGHUP: loads the client certificate and key files again (and has every edge process do
  // the same). New handshakes present the new pair; open connections keep theirs; a file
  // that does not load is logged and the current pair kept. Reads files: call it from the
  // controlling thread (main), never from an event loop.
  void ReloadTls();

  uint16_t port() const;
  uint16_t admin_port() const;
  // What an operator needs to connect (address, certificate fingerprint, token command).
  std::string Banner() const;

 private:
  Server() = default;
  Status ReserveClientPort();
  // Takes the node's lock on its client port (see port_lock.h); once.
  Status LockClientPort(uint16_t port);
  // iris_connections_prelogin, read from `e`.
  void AddPreLoginGauge(edge::Edge& e);
  Result<pid_t> SpawnEdge(uint32_t index);
  void StopEdgeProcesses();
  Status StartEdgeProcess(const edge::EdgeOptions& base);
  // Cluster mode (--etcd): peer listener, links, router, core (storage role) and edge.
  Status StartClusterNode(const edge::EdgeOptions& eo, const core::CoreOptions& co);
  // Registers this node in etcd (after every listener is up) and follows the cluster.
  Status JoinCluster();
  // Replicated cluster: opens this node's shard replicas (NodeReplication) and points the
  // store's replicate hook at them (Create, before the store opens).
  Status OpenReplication(store::StoreOptions& so);
  // Replicated cluster: the store's vnode -> shard map and this node's replicas follow the
  // placement (the ClusterView's callback).
  void FollowPlacementWithReplicas(const std::shared_ptr<const cluster::Placement>& p);
  // Stops this node's replica of `shard` (a move took it away) and deletes its log and its
  // records (`p` gives the shard's vnodes). Errors are logged.
  void DropShardCopy(const cluster::Placement& p, uint32_t shard);
  // Supervise(): one log line per store health change (store_health.h); failed writes at
  // most once a minute.
  void LogStoreHealth();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace iris::server
