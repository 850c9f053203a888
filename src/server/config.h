#pragma once
// irisd configuration: a TOML file (--config) and command-line flags with the same names
// (`data-dir = "./data"` in the file is `--data-dir ./data` on the command line). A flag
// overrides the file. Unknown keys are errors.

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace iris::server {

struct ServerConfig {
  std::string config_file;
  bool check_config = false;  // --check-config: validate, print the verdict, exit
  std::string data_dir = "./data";
  std::string listen = "0.0.0.0:7443";
  std::string admin_listen = "127.0.0.1:7444";
  uint32_t admin_connections_per_ip = 8;  // concurrent admin HTTP connections per address
  std::string tls_cert;  // default: <data-dir>/tls/server.crt (generated if missing)
  std::string tls_key;   // default: <data-dir>/tls/server.key
  // Extra subjectAltName entries (DNS names, IP addresses) of the generated certificate.
  std::vector<std::string> tls_san;
  std::string jwt_secret_file;        // default: <data-dir>/jwt.secret (generated if missing)
  std::vector<std::string> jwt_keys;  // extra "kid=path" keys for rotation
  std::string admin_token_file;       // default: <data-dir>/admin.token (generated if missing)
  uint32_t node_id = 1;
  int loops = 0;  // event loops; 0 = one per core
  uint32_t hello_timeout_ms = 10'000;
  uint32_t idle_timeout_ms = 25'000;
  int64_t jwt_leeway_s = 30;
  std::string jwt_audience;
  std::string jwt_issuer;
  double rate_per_sec = 5;
  // Group fan-out worker: inbox appends per second (docs/architecture.md, "Group fan-out").
  uint32_t fanout_inboxes_per_sec = 1000;
  // Replicated clusters (--replicas > 1 at cluster init; docs/replication.md): the TTL of a
  // shard primary's etcd lease (a dead primary is replaced about this long after it died),
  // and how long an append waits for W durable copies before it is refused (UNAVAILABLE,
  // retryable with the same idempotency key).
  int64_t replication_lease_ttl_s = 2;
  int64_t replication_timeout_ms = 5'000;
  // A shard's replication log is compacted once this many applied batches follow its last
  // snapshot; a replica further behind is rebuilt by copying the shard's records, at most
  // rebalance_bytes_per_sec (all the rebuilds a node sends together).
  int64_t replication_compact_every = 4096;
  int64_t rebalance_bytes_per_sec = 64 << 20;
  double rate_burst_per_sec = 20;
  double rate_burst_seconds = 10;
  double connections_per_ip_per_minute = 5;
  std::vector<std::string> connection_allowlist;
  // Sources (addresses or CIDR ranges: load balancers) whose connections start with a PROXY
  // protocol v2 header carrying the client's address; empty: no header is accepted.
  std::vector<std::string> proxy_protocol_from;
  // Loopback (127.0.0.0/8, ::1) joins connection_allowlist after parsing (not for the
  // internal edge-process role, which receives the core process's final list).
  bool exempt_loopback = true;
  // Connections accepted whose HELLO is not accepted yet: per address (allow-listed
  // addresses exempt; 0 = no cap) and in total per process (0 = half the open-file limit).
  uint32_t max_prelogin_per_ip = 64;
  uint32_t max_prelogin_connections = 0;
  double failed_logins_per_hour = 10;         // bad tokens per account (valid ones never refused)
  double failed_logins_per_ip_per_hour = 30;  // bad tokens per address (IPv6: per /64)
  uint64_t max_output_bytes = 1 << 20;
  uint32_t inbox_cap = 10'000;
  bool verify_on_start = true;  // read every SST block at start; refuse a damaged one
  // A replicated cluster node whose store or replication log lost durable writes or is
  // damaged (DATA_LOSS at open) moves them to <data-dir>/lost-<unix ms>/ and starts empty,
  // to be rebuilt from the other replicas; false: it refuses to start, as a single node.
  bool rebuild_lost_data = true;
  uint64_t dedup_bloom_keys_per_day = 1'000'000;  // each daily filter's size (10 bits/key)
  uint64_t dedup_hot_entries = 1'000'000;         // bound of the in-memory 5-minute tier
  uint32_t archive_retention_days = 0;  // archived messages older than this are deleted; 0 = kept
  std::string backup_dir;  // where relative POST /v1/backup targets go; default <data-dir>/backups
  uint32_t shutdown_grace_ms = 5'000;
  std::string log_level = "info";
  int degradation_level = -1;       // -1: follow load; 0..3 forces a level (tests, drills)
  double loop_lag_budget_ms = 200;  // event-loop lag that counts as full load
  // Process shape. 0: the embedded default (edge, core, store in one process). N > 0: this
  // process runs core + store and N edge processes share the client port (SO_REUSEPORT).
  int edge_processes = 0;
  // "all" (alias "storage"): holds shards and accepts clients. "edge" (cluster only): holds
  // client connections and routes, stores nothing. Internal "edge-process": an edge process
  // started by the core process (--edge-processes).
  std::string role = "all";
  // Cluster mode (docs/operations.md "Running a cluster"): on when etcd is set.
  std::string etcd;
  std::string etcd_ca, etcd_cert, etcd_key;
  std::string cluster = "default";
  std::string peer_listen = "0.0.0.0:7541";
  std::string peer_advertise;
  std::string peer_ca, peer_cert, peer_key;
  std::string core_socket;
  uint32_t edge_index = 0;
  // Internal (edge process): the inherited memfd of the node's limiter tables; -1 = none.
  int limits_fd = -1;
  std::string trace_file;            // spans as OTLP/JSON lines; "-" = stderr; empty = off
  double trace_sample_ratio = 0.01;  // traces kept besides every error span (1 = all)
};

// Parses argv (and the --config file it names). On --help, --version or a valid
// --check-config, *help_text is filled (the text to print) and the returned config is
// unused. Errors are BAD_REQUEST with a message meant for the operator.
Result<ServerConfig> ParseConfig(int argc, char** argv, std::string* help_text);

}  // namespace iris::server
