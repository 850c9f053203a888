#include "server/server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <shared_mutex>
#include <sstream>
#include <variant>

#include "auth/jwt.h"
#include "auth/keyring.h"
#include "auth/revocation.h"
#include "cluster/cluster_node.h"
#include "cluster/peer_links.h"
#include "cluster/replication/node_replication.h"
#include "cluster/replication/replication_wire.h"
#include "cluster/router.h"
#include "common/bytes.h"
#include "core/core.h"
#include "edge/edge.h"
#include "net/http/http_server.h"
#include "net/listener.h"
#include "net/peer_tls.h"
#include "net/tls.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/process_metrics.h"
#include "obs/scrape_collector.h"
#include "obs/trace.h"
#include "rpc/core_server.h"
#include "rpc/remote_core.h"
#include "server/admin_worker.h"
#include "server/data_dir.h"
#include "server/lifecycle_routes.h"
#include "server/port_lock.h"
#include "server/store_health.h"
#include "store/inbox_store.h"

namespace iris::server {
namespace fs = std::filesystem;

// Forwards core pushes to a sink made later (see Start()): the edge, or in a cluster the
// router's face for pushes arriving from other nodes.
struct ForwardingSink final : core::EdgeSink {
  std::atomic<core::EdgeSink*> to{nullptr};
  void Deliver(const core::SessionRef& r, const v1::Envelope& e) override {
    if (core::EdgeSink* t = to.load()) t->Deliver(r, e);
  }
  void Replace(const core::SessionRef& r) override {
    if (core::EdgeSink* t = to.load()) t->Replace(r);
  }
  void RemoveDevice(const core::SessionRef& r) override {
    if (core::EdgeSink* t = to.load()) t->RemoveDevice(r);
  }
  void SettleRate(const core::SessionRef& r, uint64_t user, const core::RateDebt& d) override {
    if (core::EdgeSink* t = to.load()) t->SettleRate(r, user, d);
  }
  void SendPresence(const core::SessionRef& r, const v1::Presence& p) override {
    if (core::EdgeSink* t = to.load()) t->SendPresence(r, p);
  }
  void SendTyping(const core::SessionRef& r, const v1::Typing& t) override {
    if (core::EdgeSink* s = to.load()) s->SendTyping(r, t);
  }
};

// The Router's view of ownership: the primary of the id's shard in the cluster's current
// placement (nullopt before the cluster view exists or while the id has no placed shard).
// In a replicated cluster this node names itself only while it serves the shard
// (NodeReplication::Serving: primary, taken over, lease certainly alive): a node deposed
// while cut off, whose view of the shard map has not caught up yet, must not answer reads
// from its own store (the Router retries until the map names the new primary).
struct PlacementRoutes final : cluster::RouteTable {
  std::atomic<cluster::ClusterNode*> node{nullptr};
  NodeId self = 0;
  std::function<bool(uint32_t shard)> serving;  // set before the cluster view exists
  std::optional<NodeId> OwnerOf(uint64_t id) const override {
    uint32_t shard = 0;
    const std::optional<NodeId> owner = Named(id, &shard);
    if (owner && *owner != 0 && *owner == self && serving && !serving(shard)) return std::nullopt;
    return owner;
  }
  std::optional<NodeId> NamedOwnerOf(uint64_t id) const override {
    uint32_t shard = 0;
    return Named(id, &shard);
  }

 private:
  std::optional<NodeId> Named(uint64_t id, uint32_t* shard) const {
    cluster::ClusterNode* n = node.load();
    if (n == nullptr) return std::nullopt;
    const std::shared_ptr<const cluster::Placement> p = n->snapshot();
    if (!p || !p->configured()) return std::nullopt;
    const cluster::ShardInfo* s = p->ShardOfVnode(p->VnodeOf(id));
    if (s == nullptr) return std::nullopt;
    *shard = s->id;
    return s->primary;
  }
};

struct Server::Impl {
  ForwardingSink forward;
  ServerConfig config;
  std::string admin_token;
  std::string cert_fingerprint;
  std::string cert_pin;  // pin-sha256:... of the certificate's public key
  auth::Keyring keyring;
  auth::RevocationList revocations;
  int64_t last_revocation_prune_ms = 0;
  // Operator log lines (Supervise): disk full entered/left, failed store writes.
  StoreHealthWatch store_health;
  uint64_t store_errors_unlogged = 0;  // failed writes not yet in a log line
  obs::LogRateLimiter store_error_log{60'000};
  // Admin requests refused for a bad or missing token: one line per 10 s at most.
  obs::LogRateLimiter admin_auth_log{10'000};
  std::unique_ptr<auth::TokenVerifier> verifier;
  std::unique_ptr<net::TlsContext> tls;
  // Before the components whose spans it takes: destroyed after them.
  std::unique_ptr<obs::Tracer> tracer;
  std::unique_ptr<store::InboxStore> store;
  // Replicated cluster (--replicas > 1): this node's shard replicas (docs/replication.md).
  // After `store`, so it is destroyed first: its threads write into the store. Reset in
  // Stop() once the store has stopped (nothing replicates any more) and before the peer
  // links it sends on stop.
  std::unique_ptr<cluster::EtcdClient> replication_etcd;
  std::unique_ptr<cluster::NodeReplication> replication;
  // What the store's hook, the peer listener and the placement callback use: null once
  // Stop() began to take the replicas down (they hold the lock shared while they use it).
  std::shared_mutex replication_mu;
  cluster::NodeReplication* replication_ptr = nullptr;  // guarded by replication_mu
  // Shards with per-shard gauges registered; closed once Stop() removed them. The gauges'
  // functions take replication_mu, so these are added and removed without holding it.
  std::mutex replication_metrics_mu;
  std::set<uint32_t> replicated_shards;     // guarded by replication_metrics_mu
  bool replication_metrics_closed = false;  // guarded by replication_metrics_mu
  int32_t cluster_replicas = 1;
  std::unique_ptr<core::Core> core;
  // Cluster mode (--etcd): the peer listener (core_server), links to the other nodes, the
  // router every request goes through, and this node's membership in etcd.
  ForwardingSink incoming;  // pushes from other nodes -> router.Incoming()
  PlacementRoutes routes;
  std::unique_ptr<net::PeerTlsContext> peer_tls;
  std::unique_ptr<cluster::PeerLinks> peers;
  std::unique_ptr<cluster::Router> router;
  std::unique_ptr<cluster::ClusterNode> cluster_node;
  int32_t cluster_vnodes = 0;
  std::unique_ptr<edge::Edge> edge;
  // --edge-processes (core process): the link server, the reserved client port, children.
  std::unique_ptr<rpc::CoreServer> core_server;
  // The node's claim on its client port (embedded or core process; see port_lock.h).
  std::unique_ptr<PortLock> port_lock;
  int reserved_port_fd = -1;
  uint16_t client_port = 0;
  std::vector<pid_t> edge_pids;
  // The node's limiter tables, shared with the edge processes (memfd, --limits-fd).
  std::shared_ptr<edge::internal::SharedRegion> limits;
  // --role edge-process: the link to the core process.
  std::unique_ptr<rpc::RemoteCore> remote;
  bool edge_role() const { return config.role == "edge-process"; }
  bool core_role() const { return config.role == "all" && config.edge_processes > 0; }
  bool clustered() const { return !config.etcd.empty(); }
  // A cluster node with no store (--role edge).
  bool cluster_edge() const { return clustered() && config.role == "edge"; }
  bool replicated() const { return clustered() && !cluster_edge() && cluster_replicas > 1; }
  // Core process: the edge processes' metrics, merged into this process's /metrics. Declared
  // before `admin`, whose /metrics handler uses it, so it is destroyed after it.
  std::unique_ptr<obs::ScrapeCollector> edge_metrics;
  std::unique_ptr<net::http::HttpServer> admin;
  // Runs the admin routes' blocking work (revocation writes); stopped first.
  std::unique_ptr<AdminWorker> admin_jobs;
  // Runs the long admin jobs (backups, account deletions), so revocations never queue
  // behind them; stopped with admin_jobs (a running backup finishes first).
  std::unique_ptr<AdminWorker> admin_maintenance;
  bool started = false;
  bool stopped = false;
};

namespace {

// Writes `bytes` random bytes as hex to `path` (created 0600, see auth::CreateSecretFile)
// unless something already exists there.
Status EnsureSecretFile(const std::string& path, size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1) {
    return Internal("no randomness for " + path);
  }
  std::string hex = HexEncode(raw) + "\n";
  OPENSSL_cleanse(raw.data(), raw.size());
  auto created = auth::CreateSecretFile(path, hex);
  OPENSSL_cleanse(hex.data(), hex.size());
  if (!created.ok()) return created.status();
  if (*created) obs::LogInfo("generated a secret file", {{"path", path}});
  return Status::Ok();
}

// Creates the directory `path` (and missing parents) with mode 0700 for its last component,
// never wider from its creation: it holds keys and every user's messages. An existing
// directory is left as the operator made it (narrowing, say, a shared parent could break
// other software), with a warning when group or others may enter it.
Status EnsurePrivateDirectory(const std::string& path) {
  const fs::path p(path);
  if (p.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    if (ec) {
      return BadRequest("cannot create directory " + p.parent_path().string() + ": " +
                        ec.message() + " (" + DescribeAccess(p.parent_path().string()) + ")");
    }
  }
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    const int err = errno;
    return BadRequest("cannot create directory " + path + ": " + std::strerror(err) + " (" +
                      DescribeAccess(p.has_parent_path() ? p.parent_path().string() : ".") + ")");
  }
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return BadRequest(path + " is not a directory");
  }
  if ((st.st_mode & 077) != 0) {
    obs::LogWarn("directory is open to group or others; run: chmod 700 " + path, {{"path", path}});
  }
  return Status::Ok();
}

// A certificate generated on an earlier start keeps its names: warns about each --tls-san
// it lacks (it is not regenerated behind the operator's back: a new key would break every
// client's pin).
void WarnOfMissingNames(const std::string& cert_file, const std::string& key_file,
                        const std::vector<std::string>& names) {
  if (names.empty()) return;
  FILE* f = fopen(cert_file.c_str(), "r");
  if (f == nullptr) return;
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  if (x == nullptr) return;
  for (const std::string& n : names) {
    const bool has = X509_check_ip_asc(x, n.c_str(), 0) == 1 ||
                     X509_check_host(x, n.c_str(), n.size(), 0, nullptr) == 1;
    if (!has) {
      obs::LogWarn(
          "the generated certificate (made on an earlier start) lacks a --tls-san "
          "name; to regenerate it, remove the certificate and its key and restart "
          "(clients pinning the old key must log in again)",
          {{"name", n}, {"certificate", cert_file}, {"key", key_file}});
    }
  }
  X509_free(x);
}

// The admin listener's limits: idle clients of one address cannot hold every slot.
net::http::HttpServerOptions AdminHttpOptions(const ServerConfig& c) {
  net::http::HttpServerOptions o;
  o.max_connections_per_ip = c.admin_connections_per_ip;
  return o;
}

// Raises the soft open-file limit to the hard one: every client connection is a descriptor,
// and a service manager's default soft limit (1,024) is far below what one node serves.
void RaiseOpenFileLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    obs::LogWarn("cannot read the open-file limit", {{"error", strerror(errno)}});
    return;
  }
  const uint64_t before = rl.rlim_cur;
  rlim_t target = rl.rlim_max;
  if (target == RLIM_INFINITY) {
    // The kernel refuses an infinite soft limit; its ceiling is fs.nr_open.
    target = 1 << 20;
    std::ifstream in("/proc/sys/fs/nr_open");
    uint64_t nr_open = 0;
    if (in >> nr_open && nr_open > 0) target = static_cast<rlim_t>(nr_open);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < target) {
    rl.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      obs::LogWarn("cannot raise the open-file limit",
                   {{"soft", before},
                    {"hard", static_cast<uint64_t>(rl.rlim_max)},
                    {"error", strerror(errno)}});
      return;
    }
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  obs::LogInfo("open-file limit", {{"soft", static_cast<uint64_t>(rl.rlim_cur)},
                                   {"hard", static_cast<uint64_t>(rl.rlim_max)},
                                   {"soft_at_start", before}});
}

std::string TrimOneNewline(std::string s) {
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// Edge process `index` writes "<admin port> <pid>\n" here once its admin server listens; the
// core process reads it to scrape the edge's /metrics (the port is ephemeral when the admin
// port is 0). The core removes it before (re)starting that edge.
std::string EdgeAdminFile(const std::string& data_dir, uint32_t index) {
  return data_dir + "/edge-" + std::to_string(index) + ".admin";
}

Status WriteEdgeAdminFile(const std::string& path, uint16_t port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << " " << getpid() << "\n";
    out.close();
    if (!out) return Internal("cannot write " + tmp);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) return Internal("cannot rename " + tmp);
  return Status::Ok();
}

// How long a POST /v1/revoke may take before the admin server answers 503 itself: more than
// a cluster write's request timeout on each of a few etcd endpoints.
constexpr std::chrono::milliseconds kRevokeDeadline{10'000};

// What a POST /v1/revoke asks for: a token id (`jti`, kept until `until_ms`) or every token
// of `user_id` issued before `before_ms`.
struct Revocation {
  std::string jti;
  int64_t until_ms = 0;
  uint64_t user_id = 0;  // 0: a jti revocation
  int64_t before_ms = 0;
  std::string source;  // the caller's address:port (for the operator's log)
};

// The operator's line for an admin request refused for its bearer token: the source and the
// route, never the token sent. Rate-limited (a scanner would otherwise fill the log).
void LogAdminAuthFailure(obs::LogRateLimiter& limiter, const net::http::HttpRequest& req) {
  uint64_t suppressed = 0;
  if (!limiter.Allow(&suppressed)) return;
  obs::LogWarn("admin request refused: bad or missing admin token",
               {{"source", req.peer},
                {"method", req.method},
                {"path", req.path},
                {"token_sent", req.Header("authorization") != nullptr},
                {"suppressed", suppressed}});
}

// The revocation a POST /v1/revoke asks for, or the error response (401, 400) to give.
std::variant<Revocation, net::http::HttpResponse> ParseRevocation(const net::http::HttpRequest& req,
                                                                  const std::string& admin_token,
                                                                  int64_t jwt_leeway_s) {
  using net::http::HttpResponse;
  if (!net::http::CheckBearer(req, admin_token)) {
    return HttpResponse{401, "application/json", R"({"error":"bad or missing admin token"})"};
  }
  auto body = nlohmann::json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    return HttpResponse{400, "application/json", R"({"error":"body must be a JSON object"})"};
  }
  const int64_t now_ms = SystemClock::Instance().WallMillis();
  Revocation r;
  r.source = req.peer;
  if (body.contains("jti")) {
    if (!body["jti"].is_string() || body["jti"].get<std::string>().empty() ||
        body["jti"].get<std::string>().size() > 64) {
      return HttpResponse{400, "application/json",
                          R"({"error":"jti must be a string of 1..64 bytes"})"};
    }
    r.jti = body["jti"].get<std::string>();
    // Kept for the longest token lifetime plus leeway: after that the token is expired anyway.
    r.until_ms = now_ms + (86400 + jwt_leeway_s) * 1000;
    return r;
  }
  if (body.contains("user")) {
    if (!body["user"].is_number_unsigned() || body["user"].get<uint64_t>() == 0) {
      return HttpResponse{400, "application/json",
                          R"({"error":"user must be a non-zero integer"})"};
    }
    r.user_id = body["user"].get<uint64_t>();
    r.before_ms = now_ms;
    if (body.contains("before_ms")) {
      if (!body["before_ms"].is_number_integer()) {
        return HttpResponse{400, "application/json", R"({"error":"before_ms must be an integer"})"};
      }
      r.before_ms = body["before_ms"].get<int64_t>();
    }
    return r;
  }
  return HttpResponse{400, "application/json",
                      R"j({"error":"give jti, or user (and before_ms)"})j"};
}

// The incarnation of the node's last process that claimed its cluster registration
// (Membership's claim rule: a restarted node may take over a key its previous process still
// holds). Written before each claim; "" when absent.
std::string NodeIncarnationFile(const std::string& data_dir) {
  return data_dir + "/cluster-incarnation";
}

std::string ReadNodeIncarnation(const std::string& path) {
  std::ifstream in(path);
  std::string v;
  if (!(in >> v)) return "";
  return v;
}

Status WriteNodeIncarnation(const std::string& path, const std::string& incarnation) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << incarnation << "\n";
    out.close();
    if (!out) return Internal("cannot write " + tmp);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) return Internal("cannot rename " + tmp);
  return Status::Ok();
}

// Where the core process reaches an edge process's admin server: the admin host, a wildcard
// replaced by loopback.
std::optional<obs::ScrapeTarget> ReadEdgeAdminFile(const std::string& path,
                                                   const std::string& admin_host) {
  std::ifstream in(path);
  unsigned port = 0;
  int64_t pid = 0;
  if (!(in >> port >> pid) || port == 0 || port > 65535) return std::nullopt;
  obs::ScrapeTarget t;
  t.host = admin_host;
  if (t.host.empty() || t.host == "0.0.0.0" || t.host == "localhost") t.host = "127.0.0.1";
  if (t.host == "::") t.host = "::1";
  t.port = static_cast<uint16_t>(port);
  t.instance = pid;
  return t;
}

cluster::EtcdOptions EtcdOptionsOf(const ServerConfig& c) {
  cluster::EtcdOptions o;
  auto eps = cluster::ParseEndpoints(c.etcd);
  if (eps.ok()) o.endpoints = *eps;
  o.tls.ca_file = c.etcd_ca;
  o.tls.cert_file = c.etcd_cert;
  o.tls.key_file = c.etcd_key;
  return o;
}

// The cluster's config key (irisctl cluster init), read once at start.
Result<cluster::ClusterConfig> ReadClusterConfig(const ServerConfig& c) {
  IRIS_RETURN_IF_ERROR(cluster::ParseEndpoints(c.etcd).status());
  IRIS_ASSIGN_OR_RETURN(auto client, cluster::EtcdClient::Create(EtcdOptionsOf(c)));
  IRIS_ASSIGN_OR_RETURN(const cluster::ClusterKeys keys, cluster::ClusterKeys::Create(c.cluster));
  Result<cluster::RangeResult> r = client->Range(keys.Config());
  if (!r.ok()) {
    return Unavailable("cannot read the cluster config from etcd " + c.etcd + ": " +
                       r.status().message());
  }
  if (r->kvs.empty()) {
    return BadRequest("cluster '" + c.cluster + "' is not initialised in etcd " + c.etcd +
                      ": run irisctl cluster init --etcd " + c.etcd + " --cluster " + c.cluster);
  }
  return cluster::ParseConfig(r->kvs.front().value);
}

}  // namespace

Result<std::unique_ptr<Server>> Server::Create(const ServerConfig& config) {
  std::unique_ptr<Server> server(new Server());
  server->impl_ = std::make_unique<Impl>();
  Impl& m = *server->impl_;
  m.config = config;
  ServerConfig& c = m.config;
  auto level = obs::ParseLogLevel(c.log_level);
  if (!level.ok()) return level.status();
  obs::Logger::Default().set_level(*level);
  RaiseOpenFileLimit();
  if (!m.edge_role()) {
    // The client port's lock first (see port_lock.h), before anything is created on disk:
    // a second node on the port fails without side effects. Port 0 (ephemeral) is locked
    // once the port is known (Start).
    std::string host;
    uint16_t port = 0;
    IRIS_RETURN_IF_ERROR(net::SplitHostPort(c.listen, &host, &port));
    if (port != 0) IRIS_RETURN_IF_ERROR(server->LockClientPort(port));
  }
  IRIS_RETURN_IF_ERROR(EnsurePrivateDirectory(c.data_dir));
  // Before anything is written there: a directory irisd cannot write fails here with who
  // owns it, not later with a bare errno from whichever file came first.
  IRIS_RETURN_IF_ERROR(CheckDataDirWritable(c.data_dir));

  // TLS: generated self-signed certificate unless one is configured.
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return BadRequest("--tls-cert and --tls-key go together");
  }
  if (c.tls_cert.empty()) {
    IRIS_RETURN_IF_ERROR(EnsurePrivateDirectory(c.data_dir + "/tls"));
    c.tls_cert = c.data_dir + "/tls/server.crt";
    c.tls_key = c.data_dir + "/tls/server.key";
    std::error_code ec;
    const bool have_cert = fs::exists(fs::symlink_status(c.tls_cert, ec));
    const bool have_key = fs::exists(fs::symlink_status(c.tls_key, ec));
    if (!have_cert || !have_key) {
      // Half a generated pair (a crash between the two writes) is useless: start afresh.
      // The generator creates both files exclusively and never writes through a link.
      fs::remove(c.tls_cert, ec);
      fs::remove(c.tls_key, ec);
      IRIS_RETURN_IF_ERROR(
          net::GenerateSelfSignedCertificate(c.tls_cert, c.tls_key, "iris", c.tls_san));
    } else {
      WarnOfMissingNames(c.tls_cert, c.tls_key, c.tls_san);
    }
  }
  IRIS_RETURN_IF_ERROR(auth::CheckSecretFileMode(c.tls_key, "TLS key file"));
  auto tls = net::TlsContext::Server(c.tls_cert, c.tls_key);
  if (!tls.ok()) return tls.status();
  m.tls = std::move(tls).value();
  auto fp = net::CertificateFingerprint(c.tls_cert);
  if (!fp.ok()) return fp.status();
  m.cert_fingerprint = *fp;
  IRIS_ASSIGN_OR_RETURN(m.cert_pin, net::SpkiPin(c.tls_cert));

  // JWT keys.
  if (c.jwt_secret_file.empty()) {
    c.jwt_secret_file = c.data_dir + "/jwt.secret";
    IRIS_RETURN_IF_ERROR(EnsureSecretFile(c.jwt_secret_file, 32));
  }
  IRIS_RETURN_IF_ERROR(auth::CheckSecretFileMode(c.jwt_secret_file, "jwt secret file"));
  auto secret = auth::ReadSecretFile(c.jwt_secret_file);
  if (!secret.ok()) return secret.status();
  IRIS_RETURN_IF_ERROR(m.keyring.AddKey("", std::move(secret).value()));
  for (const std::string& kv : c.jwt_keys) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return BadRequest("--jwt-key wants kid=path, got " + kv);
    IRIS_RETURN_IF_ERROR(auth::CheckSecretFileMode(kv.substr(eq + 1), "jwt key file"));
    auto s = auth::ReadSecretFile(kv.substr(eq + 1));
    if (!s.ok()) return s.status();
    IRIS_RETURN_IF_ERROR(m.keyring.AddKey(kv.substr(0, eq), std::move(s).value()));
  }
  auth::VerifyOptions vo;
  vo.leeway_s = c.jwt_leeway_s;
  vo.audience = c.jwt_audience;
  vo.issuer = c.jwt_issuer;
  m.verifier = std::make_unique<auth::TokenVerifier>(m.keyring, m.revocations, vo);

  // Admin token.
  if (c.admin_token_file.empty()) {
    c.admin_token_file = c.data_dir + "/admin.token";
    IRIS_RETURN_IF_ERROR(EnsureSecretFile(c.admin_token_file, 24));
  }
  IRIS_RETURN_IF_ERROR(auth::CheckSecretFileMode(c.admin_token_file, "admin token file"));
  {
    std::ifstream in(c.admin_token_file);
    if (!in) return NotFound("cannot read admin token file " + c.admin_token_file);
    std::stringstream ss;
    ss << in.rdbuf();
    m.admin_token = TrimOneNewline(ss.str());
    if (m.admin_token.size() < 16) return BadRequest("admin token must be at least 16 bytes");
  }

  if (m.edge_role()) return server;  // an edge process has no store: the core process owns it
  if (m.clustered()) {
    // The cluster's fixed parameters come from etcd before anything is stored.
    IRIS_ASSIGN_OR_RETURN(const cluster::ClusterConfig cc, ReadClusterConfig(c));
    m.cluster_vnodes = cc.vnodes;
    m.cluster_replicas = cc.replicas;
    obs::LogInfo(
        "cluster mode",
        {{"cluster", c.cluster}, {"etcd", c.etcd}, {"vnodes", cc.vnodes}, {"role", c.role}});
  }

  // Store (none on an edge-only cluster node).
  if (!m.cluster_edge()) {
    // Store and core.
    store::StoreOptions so;
    so.path = c.data_dir + "/store";
    so.node_id = static_cast<uint8_t>(c.node_id);
    so.inbox_cap = c.inbox_cap;
    so.verify_checksums_on_open = c.verify_on_start;
    so.dedup_bloom_keys_per_day = c.dedup_bloom_keys_per_day;
    so.dedup_hot_max_entries = static_cast<size_t>(c.dedup_hot_entries);
    so.archive_retention_ms = static_cast<int64_t>(c.archive_retention_days) * 86'400'000;
    if (m.cluster_vnodes > 0) so.vnodes = m.cluster_vnodes;
    // DATA_LOSS (lost durable writes, damaged files) is the caller's cue to rebuild this
    // node from the other replicas (Create's contract); anything else cannot be.
    const bool may_rebuild = m.replicated() && c.rebuild_lost_data;
    const auto lost = [may_rebuild](Status s) {
      if (s.code() == StatusCode::kDataLoss && !may_rebuild) {
        return Status(StatusCode::kInternal, s.message());
      }
      return s;
    };
    if (m.replicated()) {
      if (Status s = server->OpenReplication(so); !s.ok()) return lost(std::move(s));
    }
    obs::Histogram* db_write = &obs::Registry::Default().GetHistogram(
        "iris_db_write_latency_seconds", "Durable append: one group-committed WAL write with sync");
    so.write_latency_observer = [db_write](int64_t nanos) {
      db_write->Observe(static_cast<double>(nanos) / 1e9);
    };
    auto st = store::InboxStore::Open(so);
    // Another irisd on this directory: say which, instead of RocksDB's "lock file" error.
    if (!st.ok()) return lost(ExplainStoreOpenError(c.data_dir, so.path + "/LOCK", st.status()));
    m.store = std::move(st).value();
    if (!m.clustered()) {
      // Revocations survive restarts: a revoked token stays refused until it expires. (In a
      // cluster they live in etcd, which every node watches.)
      IRIS_ASSIGN_OR_RETURN(const store::StoredRevocations revoked,
                            m.store->LoadRevocations(SystemClock::Instance().WallMillis()));
      for (const auto& [jti, until] : revoked.jtis) m.revocations.RevokeJti(jti, until);
      for (const auto& [user, before] : revoked.users) m.revocations.RevokeUserBefore(user, before);
    }
  }

  if (!c.trace_file.empty()) {
    obs::TracerOptions to;
    to.path = c.trace_file;
    to.sample_ratio = c.trace_sample_ratio;
    auto tracer = obs::Tracer::Open(to);
    if (!tracer.ok()) return tracer.status();
    m.tracer = std::move(tracer).value();
  }
  return server;
}

namespace {

// fsync of a directory: the renames and creations in it are durable once it returns.
Status SyncDirectory(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Internal("cannot open " + dir + ": " + std::strerror(errno));
  const int rc = fsync(fd);
  const int err = errno;
  close(fd);
  if (rc != 0) return Internal("cannot sync " + dir + ": " + std::strerror(err));
  return Status::Ok();
}

Status WriteFileDurably(const std::string& path, const std::string& content) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Internal("cannot create " + path + ": " + std::strerror(errno));
  const bool written = write(fd, content.data(), content.size()) ==
                           static_cast<ssize_t>(content.size()) &&
                       fdatasync(fd) == 0;
  const int err = errno;
  close(fd);
  if (!written) return Internal("cannot write " + path + ": " + std::strerror(err));
  return SyncDirectory(std::filesystem::path(path).parent_path().string());
}

}  // namespace

Result<std::string> Server::SetAsideLostData(const ServerConfig& config) {
  const std::string dir =
      config.data_dir + "/lost-" + std::to_string(SystemClock::Instance().WallMillis());
  std::error_code ec;
  std::filesystem::create_directory(dir, ec);
  if (ec) return Internal("cannot create " + dir + ": " + ec.message());
  // The mark first (every replica this node starts without a log is then amnesiac, even in
  // a shard whose etcd record predates `elected`), then the log before the store: a store
  // moved away under a log left in place would make the log's snapshot claim data the
  // store no longer has.
  IRIS_RETURN_IF_ERROR(WriteFileDurably(config.data_dir + "/" + std::string(kLostDataMark), dir));
  for (const char* part : {"replication", "store"}) {
    const std::string from = config.data_dir + "/" + part;
    if (!std::filesystem::exists(from, ec)) continue;
    std::filesystem::rename(from, dir + "/" + part, ec);
    if (ec) return Internal("cannot move " + from + " to " + dir + ": " + ec.message());
    IRIS_RETURN_IF_ERROR(SyncDirectory(config.data_dir));
  }
  return dir;
}

Server::~Server() { Stop(); }

Status Server::Start() {
  Impl& m = *impl_;
  const ServerConfig& c = m.config;
  if (m.tracer) {
    m.tracer->Start();
    obs::Tracer::SetGlobal(m.tracer.get());
    obs::Tracer* t = m.tracer.get();
    obs::Registry::Default().AddCallbackCounter("iris_trace_spans_written_total",
                                                "Spans written to the trace file",
                                                [t] { return static_cast<double>(t->written()); });
    obs::Registry::Default().AddCallbackCounter(
        "iris_trace_spans_dropped_total", "Spans lost: writer queue full, or the write failed",
        [t] { return static_cast<double>(t->dropped()); });
  }
  edge::EdgeOptions eo;
  eo.listen = c.listen;
  eo.loops = c.loops;
  eo.hello_timeout_ms = c.hello_timeout_ms;
  eo.idle_timeout_ms = c.idle_timeout_ms;
  eo.max_output_bytes = c.max_output_bytes;
  eo.send_rate.sustained_per_sec = c.rate_per_sec;
  eo.send_rate.burst_per_sec = c.rate_burst_per_sec;
  eo.send_rate.burst_seconds = c.rate_burst_seconds;
  eo.connection_rate.per_minute = c.connections_per_ip_per_minute;
  eo.connection_rate.burst = std::max(1.0, c.connections_per_ip_per_minute);
  eo.connection_allowlist = c.connection_allowlist;
  eo.proxy_protocol_from = c.proxy_protocol_from;
  eo.max_prelogin_per_ip = c.max_prelogin_per_ip;
  eo.max_prelogin_total = c.max_prelogin_connections;
  eo.failed_logins.per_hour = c.failed_logins_per_hour;
  eo.failed_logins.per_ip_per_hour = c.failed_logins_per_ip_per_hour;

  eo.loop_lag_budget_ms = c.loop_lag_budget_ms;
  // Per-user budgets move with the user between nodes (docs/architecture.md, "Send rate
  // across nodes"); one node's tables are already shared by all its edge processes.
  eo.carry_rate_debt = m.clustered();
  if (m.edge_role()) return StartEdgeProcess(eo);

  core::CoreOptions co;
  co.degradation.forced_level = c.degradation_level;
  co.fanout_inboxes_per_sec = c.fanout_inboxes_per_sec;
  co.fanout_drop_refused = m.replicated();
  if (m.core_role()) {
    // Core process: edges live in other processes and reach the core over a Unix socket.
    m.core_server = std::make_unique<rpc::CoreServer>();
    m.core = std::make_unique<core::Core>(*m.store, *m.core_server, SystemClock::Instance(), co);
    IRIS_RETURN_IF_ERROR(m.core->StartFanOut());
    m.core_server->set_core(m.core.get());
    m.core_server->set_revocation_source([&m](iris::internal::v1::Revocations* out) {
      const auth::RevocationList::Entries e = m.revocations.Export();
      for (const auto& [jti, until] : e.jtis) {
        auto* j = out->add_jtis();
        j->set_jti(jti);
        j->set_until_ms(until);
      }
      for (const auto& [user, before] : e.users) {
        auto* u = out->add_users();
        u->set_user(user);
        u->set_before_ms(before);
      }
    });
    IRIS_RETURN_IF_ERROR(m.core_server->Listen(c.data_dir + "/core.sock"));
    IRIS_RETURN_IF_ERROR(m.core_server->Start());
    IRIS_RETURN_IF_ERROR(ReserveClientPort());
    // Every edge process counts against the same limits: one table for the node.
    auto limits = edge::LimiterTables::Create(eo.connection_rate, eo.failed_logins,
                                              edge::internal::SharedRegion::Mode::kShared);
    if (!limits.ok()) return limits.status();
    m.limits = *limits;
    for (int i = 0; i < c.edge_processes; ++i) {
      auto pid = SpawnEdge(static_cast<uint32_t>(i));
      if (!pid.ok()) return pid.status();
      m.edge_pids.push_back(*pid);
    }
    if (!m.core_server->WaitForEdges(static_cast<size_t>(c.edge_processes), 30'000)) {
      return Unavailable("edge processes did not connect within 30 s", 0);
    }
  } else if (m.clustered()) {
    IRIS_RETURN_IF_ERROR(StartClusterNode(eo, co));
  } else {
    // The embedded default. The core needs the edge as its sink and the edge needs the core:
    // the core gets a forwarding sink that is pointed at the edge once it exists.
    m.core = std::make_unique<core::Core>(*m.store, m.forward, SystemClock::Instance(), co);
    IRIS_RETURN_IF_ERROR(m.core->StartFanOut());
    m.edge =
        std::make_unique<edge::Edge>(eo, *m.core, *m.verifier, *m.tls, SystemClock::Instance());
    m.forward.to = m.edge.get();
    IRIS_RETURN_IF_ERROR(m.edge->Start());
    // Port 0: the port the kernel chose (a fixed port was locked in Create()).
    IRIS_RETURN_IF_ERROR(LockClientPort(m.edge->port()));
  }
  if (m.core) {
    obs::Registry::Default().AddCallbackGauge(
        "iris_degradation_level", "Graceful degradation level (0 normal .. 3 receipts shed)",
        [core = m.core.get()] { return static_cast<double>(core->degradation().level()); });
  }

  // Admin HTTP.
  obs::AddProcessMetrics(obs::Registry::Default());
  if (m.store) {
    obs::Registry::Default().AddCallbackCounter(
        "iris_storage_write_errors_total", "Store batches whose durable write failed",
        [s = m.store.get()] { return static_cast<double>(s->Stats().write_errors); });
    obs::Registry::Default().AddCallbackCounter(
        "iris_storage_full_errors_total", "Failed store writes because the disk was full",
        [s = m.store.get()] { return static_cast<double>(s->Stats().storage_full_errors); });
    obs::Registry::Default().AddCallbackCounter(
        "iris_removed_device_envelopes_purged_total",
        "Envelopes of removed devices deleted from inboxes (appendix 20)",
        [s = m.store.get()] { return static_cast<double>(s->Stats().purged); });
    obs::Registry::Default().AddCallbackCounter(
        "iris_dedup_bloom_negatives_total",
        "New idempotency keys the dedup Bloom filters cleared without a read",
        [s = m.store.get()] { return static_cast<double>(s->Stats().dedup_bloom_negatives); });
    obs::Registry::Default().AddCallbackCounter(
        "iris_dedup_db_lookups_total",
        "Idempotency keys looked up in the dedup column family (Bloom filter said maybe)",
        [s = m.store.get()] { return static_cast<double>(s->Stats().dedup_db_lookups); });
    obs::Registry::Default().AddCallbackGauge(
        "iris_dedup_bloom_fill_ratio",
        "Keys in today's dedup Bloom filter / --dedup-bloom-keys-per-day (over 1: raise it)",
        [s = m.store.get()] {
          const store::StoreStats st = s->Stats();
          return st.dedup_bloom_keys_per_day == 0
                     ? 0.0
                     : static_cast<double>(st.dedup_bloom_keys_today) /
                           static_cast<double>(st.dedup_bloom_keys_per_day);
        });
    // The filesystem holding the data directory: alert well before it fills (a full disk
    // refuses every SEND with STORAGE_FULL).
    obs::Registry::Default().AddCallbackGauge(
        "iris_disk_free_bytes", "Bytes available to irisd on the filesystem holding --data-dir",
        [dir = c.data_dir] {
          struct statvfs v {};
          if (statvfs(dir.c_str(), &v) != 0) return std::nan("");
          return static_cast<double>(v.f_bavail) * static_cast<double>(v.f_frsize);
        });
    obs::Registry::Default().AddCallbackGauge(
        "iris_disk_size_bytes", "Size of the filesystem holding --data-dir", [dir = c.data_dir] {
          struct statvfs v {};
          if (statvfs(dir.c_str(), &v) != 0) return std::nan("");
          return static_cast<double>(v.f_blocks) * static_cast<double>(v.f_frsize);
        });
  }
  if (m.edge) {
    obs::Registry::Default().AddCallbackGauge(
        "iris_connections_open", "Client connections open",
        [e = m.edge.get()] { return static_cast<double>(e->session_count()); });
    AddPreLoginGauge(*m.edge);
  }
  m.admin = std::make_unique<net::http::HttpServer>(AdminHttpOptions(c));
  m.admin->Route("GET", "/healthz", [](const net::http::HttpRequest&) {
    return net::http::HttpResponse{200, "text/plain", "ok\n"};
  });
  m.admin->Route("GET", "/readyz", [&m](const net::http::HttpRequest&) {
    if (!m.started || m.stopped) return net::http::HttpResponse{503, "text/plain", "not ready\n"};
    return net::http::HttpResponse{200, "text/plain", "ready\n"};
  });
  if (m.core_role()) {
    // The node's /metrics includes the edge processes': scraped in the background, merged
    // with this process's registry when asked (prometheus_merge.h has the rules).
    std::string admin_host;
    uint16_t admin_port_base = 0;
    IRIS_RETURN_IF_ERROR(net::SplitHostPort(c.admin_listen, &admin_host, &admin_port_base));
    obs::ScrapeCollectorOptions so;
    so.slots = static_cast<size_t>(c.edge_processes);
    so.target = [data_dir = c.data_dir, admin_host](size_t i) {
      return ReadEdgeAdminFile(EdgeAdminFile(data_dir, static_cast<uint32_t>(i)), admin_host);
    };
    so.failures = &obs::Registry::Default().GetCounter(
        "iris_edge_scrape_failures_total",
        "Scrapes of an edge process's /metrics that failed (core process, --edge-processes)");
    m.edge_metrics = std::make_unique<obs::ScrapeCollector>(std::move(so));
    m.edge_metrics->Start();
    // Completed scrape rounds: a reader that sees this rise by two after an event knows the
    // node's /metrics now includes the event's edge counters (tests wait on it).
    obs::Registry::Default().AddCallbackCounter(
        "iris_edge_scrape_cycles_total",
        "Completed rounds of scraping the edge processes' /metrics (core process)",
        [c = m.edge_metrics.get()] { return static_cast<double>(c->cycles()); });
  }
  m.admin->Route("GET", "/metrics", [&m](const net::http::HttpRequest&) {
    std::string text = obs::Registry::Default().ExposePrometheus();
    if (m.edge_metrics) text = m.edge_metrics->ExposeMerged(text);
    return net::http::HttpResponse{200, std::string(obs::kPrometheusContentType), std::move(text)};
  });
  // POST /v1/revoke: validated on the admin thread; the write (to etcd in a cluster, which
  // may take a request timeout per endpoint; to the store otherwise) runs on admin_jobs and
  // answers through the responder, so the admin server keeps serving meanwhile. Unanswered
  // after kRevokeDeadline: 503 from the server (the revocation may still land; it is
  // idempotent, so the caller retries).
  m.admin_jobs = std::make_unique<AdminWorker>();
  m.admin_jobs->Start();
  m.admin->RouteDeferred(
      "POST", "/v1/revoke",
      [&m](const net::http::HttpRequest& req, std::shared_ptr<net::http::HttpResponder> responder) {
        std::variant<Revocation, net::http::HttpResponse> parsed =
            ParseRevocation(req, m.admin_token, m.config.jwt_leeway_s);
        if (auto* bad = std::get_if<net::http::HttpResponse>(&parsed)) {
          if (bad->status == 401) LogAdminAuthFailure(m.admin_auth_log, req);
          responder->Complete(std::move(*bad));
          return;
        }
        const bool queued = m.admin_jobs->Post([&m, rev = std::get<Revocation>(parsed), responder] {
          using net::http::HttpResponse;
          const Status s =
              rev.user_id != 0
                  ? (m.cluster_node ? m.cluster_node->RevokeUser(rev.user_id, rev.before_ms)
                                    : m.store->PutRevokedUser(rev.user_id, rev.before_ms))
                  : (m.cluster_node ? m.cluster_node->RevokeJti(rev.jti, rev.until_ms)
                                    : m.store->PutRevokedJti(rev.jti, rev.until_ms));
          if (!s.ok()) {
            obs::LogError("revocation not stored", {{"source", rev.source},
                                                    {"jti", rev.jti},
                                                    {"user", rev.user_id},
                                                    {"error", s.ToString()}});
            responder->Complete(HttpResponse{
                503, "application/json",
                nlohmann::json{{"error", "revocation not stored: " + s.message()}}.dump()});
            return;
          }
          // Who asked: the admin token is one shared secret with no subject, so the source
          // address is what identifies the caller.
          if (rev.user_id != 0) {
            obs::LogWarn("revoked a user's tokens", {{"user", rev.user_id},
                                                     {"before_ms", rev.before_ms},
                                                     {"source", rev.source},
                                                     {"auth", "admin token"}});
          } else {
            obs::LogWarn("revoked a token", {{"jti", rev.jti},
                                             {"until_ms", rev.until_ms},
                                             {"source", rev.source},
                                             {"auth", "admin token"}});
          }
          if (rev.user_id != 0) {
            m.revocations.RevokeUserBefore(rev.user_id, rev.before_ms);
            if (m.core_server) m.core_server->BroadcastRevokeUser(rev.user_id, rev.before_ms);
          } else {
            m.revocations.RevokeJti(rev.jti, rev.until_ms);
            if (m.core_server) m.core_server->BroadcastRevokeJti(rev.jti, rev.until_ms);
          }
          if (m.edge) m.edge->RecheckAllSessions();
          responder->Complete(HttpResponse{200, "application/json", R"({"revoked":true})"});
        });
        if (!queued) {
          responder->Complete(net::http::HttpResponse{
              503, "application/json", R"({"error":"too many revocations in progress"})"});
        }
      },
      kRevokeDeadline);
  {
    // POST /v1/backup and /v1/delete-user (lifecycle_routes.h).
    LifecycleRoutesOptions lo;
    lo.admin_token = m.admin_token;
    lo.store = m.store.get();
    lo.node_id = c.node_id;
    std::error_code ec;
    lo.backup_dir =
        fs::absolute(c.backup_dir.empty() ? c.data_dir + "/backups" : c.backup_dir, ec).string();
    // The secrets generated in the data directory go with the store, so a restored node
    // keeps its certificate (pinned by clients) and its tokens.
    const std::string data_prefix = c.data_dir + "/";
    for (const std::string& f : {c.tls_cert, c.tls_key, c.jwt_secret_file, c.admin_token_file}) {
      if (f.rfind(data_prefix, 0) == 0 && f.size() > data_prefix.size()) {
        lo.backup_extra_files.emplace_back(f, f.substr(data_prefix.size()));
      }
    }
    lo.revoke_user = [&m](uint64_t user, int64_t before_ms) -> Status {
      IRIS_RETURN_IF_ERROR(m.cluster_node ? m.cluster_node->RevokeUser(user, before_ms)
                                          : m.store->PutRevokedUser(user, before_ms));
      m.revocations.RevokeUserBefore(user, before_ms);
      if (m.core_server) m.core_server->BroadcastRevokeUser(user, before_ms);
      if (m.edge) m.edge->RecheckAllSessions();
      return Status::Ok();
    };
    m.admin_maintenance = std::make_unique<AdminWorker>(8);
    m.admin_maintenance->Start();
    lo.worker = m.admin_maintenance.get();
    AddLifecycleRoutes(*m.admin, std::move(lo));
  }
  std::string host;
  uint16_t port = 0;
  IRIS_RETURN_IF_ERROR(net::SplitHostPort(c.admin_listen, &host, &port));
  IRIS_RETURN_IF_ERROR(m.admin->Start(host, port));
  if (m.clustered()) IRIS_RETURN_IF_ERROR(JoinCluster());
  m.started = true;
  obs::LogInfo("irisd started", {{"port", this->port()},
                                 {"admin_port", admin_port()},
                                 {"data_dir", c.data_dir},
                                 {"node_id", c.node_id},
                                 {"trace_file", c.trace_file},
                                 {"trace_sample_ratio", c.trace_sample_ratio}});
  return Status::Ok();
}

void Server::Stop() {
  if (!impl_ || impl_->stopped) return;
  Impl& m = *impl_;
  m.stopped = true;
  // A node that never finished starting says nothing here: the error that stopped it is
  // logged by the caller (main), and "stopping" must not read as its cause.
  const bool announce = m.started;
  if (announce) obs::LogInfo("irisd stopping", {{"grace_ms", m.config.shutdown_grace_ms}});
  // No revocation write runs against the components stopped below (one in flight finishes;
  // queued ones are dropped and their clients get 503 from the admin server).
  if (m.admin_jobs) m.admin_jobs->Stop();
  if (m.admin_maintenance) m.admin_maintenance->Stop();
  if (m.edge_role()) {
    // Edge process: the core is still up, so in-flight requests complete before we close.
    if (m.edge) {
      m.edge->StopAccepting();
      m.edge->Shutdown(m.config.shutdown_grace_ms);
    }
    if (m.admin) m.admin->Stop();
    if (m.remote) m.remote->Stop();
    obs::Registry::Default().RemoveCallback("iris_connections_open");
    obs::Registry::Default().RemoveCallback("iris_connections_prelogin");
    if (announce) obs::LogInfo("edge process stopped", {{"edge_index", m.config.edge_index}});
    return;
  }
  if (m.edge) m.edge->StopAccepting();
  // Edge processes first: they finish their sessions while the core still answers.
  StopEdgeProcesses();
  // Finish queued appends: their completions post SEND_ACKs to the loops.
  if (m.store) m.store->Stop();
  // Nothing replicates once the store has stopped; the replicas stop before the peer links
  // they send on (a lease this node holds lapses on etcd's side).
  {
    std::unique_lock<std::shared_mutex> lock(m.replication_mu);
    m.replication_ptr = nullptr;
  }
  {
    std::lock_guard<std::mutex> lock(m.replication_metrics_mu);
    m.replication_metrics_closed = true;
    for (const uint32_t shard : m.replicated_shards) {
      const obs::Labels labels = {{"shard", std::to_string(shard)}};
      for (const char* name :
           {"iris_replication_applied_lsn", "iris_replication_commit_lsn",
            "iris_replication_primary", "iris_replication_snapshot_lsn",
            "iris_replication_rebuilds_installed", "iris_replication_amnesiac"}) {
        obs::Registry::Default().RemoveCallback(name, labels);
      }
    }
    m.replicated_shards.clear();
  }
  m.replication.reset();
  if (m.edge) m.edge->Shutdown(m.config.shutdown_grace_ms);
  // The core's queued store work: its completions post to the (stopped) loops, which must
  // still exist.
  if (m.core) m.core->StopWorkers();
  // Presence transitions of the sessions just closed, then no more pushes to the edge.
  if (m.core) m.core->presence().Drain();
  m.forward.to = nullptr;
  // Cluster: no more calls to or from other nodes, then leave the cluster (the node's key
  // goes with its lease).
  if (m.peers) m.peers->Stop();
  m.incoming.to = nullptr;
  if (m.core_server) m.core_server->Stop();
  if (m.cluster_node) m.cluster_node->Stop();
  if (m.reserved_port_fd >= 0) close(m.reserved_port_fd);
  // The client sockets are closed (edge processes gone, loops stopped): the port is free
  // for another node.
  m.port_lock.reset();
  if (m.admin) m.admin->Stop();
  if (m.edge_metrics) {
    obs::Registry::Default().RemoveCallback("iris_edge_scrape_cycles_total");
    m.edge_metrics->Stop();
  }
  // The gauge reads the edge: remove it before the edge goes away.
  obs::Registry::Default().RemoveCallback("iris_connections_open");
  obs::Registry::Default().RemoveCallback("iris_connections_prelogin");
  obs::Registry::Default().RemoveCallback("iris_degradation_level");
  obs::Registry::Default().RemoveCallback("iris_storage_write_errors_total");
  obs::Registry::Default().RemoveCallback("iris_storage_full_errors_total");
  obs::Registry::Default().RemoveCallback("iris_disk_free_bytes");
  obs::Registry::Default().RemoveCallback("iris_disk_size_bytes");
  if (m.tracer) {
    // Spans still ending (closures of the stopped loops) are dropped, not written late.
    obs::Tracer::SetGlobal(nullptr);
    obs::Registry::Default().RemoveCallback("iris_trace_spans_written_total");
    obs::Registry::Default().RemoveCallback("iris_trace_spans_dropped_total");
    m.tracer->Stop();
  }
  if (announce) obs::LogInfo("irisd stopped");
}

uint16_t Server::port() const {
  if (impl_->core_role()) return impl_->client_port;
  return impl_->edge ? impl_->edge->port() : 0;
}

Status Server::ReserveClientPort() {
  Impl& m = *impl_;
  // Bind (without listening) a SO_REUSEPORT socket on the client address: it fixes the port
  // when --listen asks for port 0, and holds it while edge processes come and go. A socket
  // that does not listen receives no connections.
  std::string host;
  uint16_t port = 0;
  IRIS_RETURN_IF_ERROR(net::SplitHostPort(m.config.listen, &host, &port));
  auto fd = net::ListenTcp(m.config.listen, 1);
  if (!fd.ok()) return fd.status();
  auto bound = net::LocalPort(*fd);
  if (!bound.ok()) return bound.status();
  close(*fd);
  // Port 0: the port the kernel chose (a fixed port was locked in Create()).
  IRIS_RETURN_IF_ERROR(LockClientPort(*bound));
  // Re-bind without listen() on the port just learnt.
  const std::string addr = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
                           std::to_string(*bound);
  auto reserved = net::BindTcp(addr);
  if (!reserved.ok()) return reserved.status();
  m.reserved_port_fd = *reserved;
  m.client_port = *bound;
  m.config.listen = addr;
  return Status::Ok();
}

Status Server::LockClientPort(uint16_t port) {
  Impl& m = *impl_;
  if (m.port_lock) return Status::Ok();
  auto lock = PortLock::Acquire(port, m.config.listen);
  if (!lock.ok()) return lock.status();
  m.port_lock = std::move(lock).value();
  return Status::Ok();
}

void Server::AddPreLoginGauge(edge::Edge& e) {
  obs::Registry::Default().AddCallbackGauge(
      "iris_connections_prelogin",
      "Client connections accepted whose HELLO is not accepted yet (capped by "
      "--max-prelogin-per-ip and --max-prelogin-connections)",
      [&e] { return static_cast<double>(e.prelogin_count()); });
  obs::LogInfo("pre-login connection caps",
               {{"per_ip", impl_->config.max_prelogin_per_ip}, {"total", e.prelogin_total_cap()}});
}

Result<pid_t> Server::SpawnEdge(uint32_t index) {
  const ServerConfig& c = impl_->config;
  std::vector<std::string> args = {"/proc/self/exe",
                                   "--role",
                                   "edge-process",
                                   "--edge-index",
                                   std::to_string(index),
                                   "--core-socket",
                                   c.data_dir + "/core.sock",
                                   "--data-dir",
                                   c.data_dir,
                                   "--listen",
                                   c.listen,
                                   "--loops",
                                   std::to_string(c.loops > 0 ? c.loops : 1),
                                   "--tls-cert",
                                   c.tls_cert,
                                   "--tls-key",
                                   c.tls_key,
                                   "--jwt-secret-file",
                                   c.jwt_secret_file,
                                   "--admin-token-file",
                                   c.admin_token_file,
                                   "--node-id",
                                   std::to_string(c.node_id),
                                   "--hello-timeout-ms",
                                   std::to_string(c.hello_timeout_ms),
                                   "--idle-timeout-ms",
                                   std::to_string(c.idle_timeout_ms),
                                   "--jwt-leeway-s",
                                   std::to_string(c.jwt_leeway_s),
                                   "--rate-per-sec",
                                   std::to_string(c.rate_per_sec),
                                   "--rate-burst-per-sec",
                                   std::to_string(c.rate_burst_per_sec),
                                   "--rate-burst-seconds",
                                   std::to_string(c.rate_burst_seconds),
                                   "--connections-per-ip-per-minute",
                                   std::to_string(c.connections_per_ip_per_minute),
                                   "--failed-logins-per-hour",
                                   std::to_string(c.failed_logins_per_hour),
                                   "--failed-logins-per-ip-per-hour",
                                   std::to_string(c.failed_logins_per_ip_per_hour),
                                   "--admin-connections-per-ip",
                                   std::to_string(c.admin_connections_per_ip),
                                   "--max-output-bytes",
                                   std::to_string(c.max_output_bytes),
                                   "--loop-lag-budget-ms",
                                   std::to_string(c.loop_lag_budget_ms),
                                   "--shutdown-grace-ms",
                                   std::to_string(c.shutdown_grace_ms),
                                   "--log-level",
                                   c.log_level};
  args.insert(args.end(), {"--limits-fd", std::to_string(impl_->limits->fd())});
  args.insert(args.end(),
              {"--max-prelogin-per-ip", std::to_string(c.max_prelogin_per_ip),
               "--max-prelogin-connections", std::to_string(c.max_prelogin_connections)});
  if (!c.jwt_audience.empty()) args.insert(args.end(), {"--jwt-audience", c.jwt_audience});
  if (!c.jwt_issuer.empty()) args.insert(args.end(), {"--jwt-issuer", c.jwt_issuer});
  for (const auto& k : c.jwt_keys) args.insert(args.end(), {"--jwt-key", k});
  for (const auto& a : c.connection_allowlist)
    args.insert(args.end(), {"--connection-allowlist", a});
  for (const auto& a : c.proxy_protocol_from) args.insert(args.end(), {"--proxy-protocol-from", a});
  if (!c.trace_file.empty() && c.trace_file != "-") {
    args.insert(args.end(), {"--trace-file", c.trace_file + ".edge-" + std::to_string(index),
                             "--trace-sample-ratio", std::to_string(c.trace_sample_ratio)});
  }
  // Each edge process serves its own metrics on the admin port + 1 + index, or an ephemeral
  // port when the admin port is 0; either way it writes the port to EdgeAdminFile(), where
  // the core process's collector finds it.
  std::string admin_host;
  uint16_t admin_port_base = 0;
  IRIS_RETURN_IF_ERROR(net::SplitHostPort(c.admin_listen, &admin_host, &admin_port_base));
  if (admin_port_base != 0 && admin_port_base + static_cast<uint32_t>(c.edge_processes) > 65535) {
    return BadRequest("--admin-listen port " + std::to_string(admin_port_base) + " + " +
                      std::to_string(c.edge_processes) +
                      " edge processes goes past port 65535 (edge i uses the admin port + 1 + i)");
  }
  const uint16_t edge_admin =
      admin_port_base == 0 ? 0 : static_cast<uint16_t>(admin_port_base + 1 + index);
  args.insert(args.end(),
              {"--admin-listen",
               (admin_host.find(':') != std::string::npos ? "[" + admin_host + "]" : admin_host) +
                   ":" + std::to_string(edge_admin)});
  // No stale port file from an earlier instance of this edge.
  std::remove(EdgeAdminFile(c.data_dir, index).c_str());
  const pid_t pid = fork();
  if (pid < 0) return Internal("fork failed");
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // An edge process without its core serves nobody: it goes when the core goes.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    // The limiter tables are inherited across exec (only by this child).
    if (fcntl(impl_->limits->fd(), F_SETFD, 0) != 0) _exit(127);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  obs::LogInfo("edge process started", {{"edge_index", index}, {"pid", pid}});
  return pid;
}

void Server::ReloadTls() {
  Impl& m = *impl_;
  if (m.stopped || !m.tls) return;
  // Edge processes serve the clients with --edge-processes: each reloads its own context.
  for (pid_t pid : m.edge_pids) {
    if (pid > 0) kill(pid, SIGHUP);
  }
  static obs::Counter& ok = obs::Registry::Default().GetCounter(
      "iris_tls_reloads_total", "SIGHUP reloads of the TLS certificate and key",
      {{"result", "ok"}});
  static obs::Counter& failed = obs::Registry::Default().GetCounter(
      "iris_tls_reloads_total", "SIGHUP reloads of the TLS certificate and key",
      {{"result", "error"}});
  const ServerConfig& c = m.config;
  // The pin and fingerprint are read from the file before the swap, so what is logged
  // is what is served (a file replaced in between fails the reload's own key check).
  Result<std::string> fp = NotFound("");
  Result<std::string> pin = NotFound("");
  Status s = auth::CheckSecretFileMode(c.tls_key, "TLS key file");
  if (s.ok()) {
    fp = net::CertificateFingerprint(c.tls_cert);
    s = fp.status();
  }
  if (s.ok()) {
    pin = net::SpkiPin(c.tls_cert);
    s = pin.status();
  }
  if (s.ok()) s = m.tls->Reload(c.tls_cert, c.tls_key);
  if (!s.ok()) {
    failed.Inc();
    obs::LogError("TLS certificate reload failed; still serving the previous certificate",
                  {{"certificate", c.tls_cert}, {"key", c.tls_key}, {"error", s.message()}});
    return;
  }
  ok.Inc();
  const bool same_key = *pin == m.cert_pin;
  m.cert_fingerprint = *fp;
  m.cert_pin = *pin;
  obs::LogInfo("TLS certificate reloaded: new connections use it",
               {{"certificate", c.tls_cert},
                {"fingerprint", "SHA256:" + *fp},
                {"pin", *pin},
                {"same_key", same_key}});
}

void Server::Supervise() {
  Impl& m = *impl_;
  if (m.stopped) return;
  // Once a minute: forget jti revocations whose tokens have expired anyway (in memory and
  // in the store).
  const int64_t now_ms = SystemClock::Instance().WallMillis();
  if (now_ms - m.last_revocation_prune_ms >= 60'000) {
    m.last_revocation_prune_ms = now_ms;
    m.revocations.Prune(now_ms);
    if (m.store) {
      const Result<store::StoredRevocations> r = m.store->LoadRevocations(now_ms);
      if (!r.ok())
        obs::LogWarn("pruning stored revocations failed", {{"error", r.status().ToString()}});
    }
  }
  if (m.store) LogStoreHealth();
  if (m.edge_pids.empty()) return;
  for (size_t i = 0; i < m.edge_pids.size(); ++i) {
    int status = 0;
    if (m.edge_pids[i] > 0 && waitpid(m.edge_pids[i], &status, WNOHANG) == m.edge_pids[i]) {
      obs::LogWarn("edge process exited; restarting",
                   {{"edge_index", static_cast<uint64_t>(i)}, {"status", status}});
      auto pid = SpawnEdge(static_cast<uint32_t>(i));
      m.edge_pids[i] = pid.ok() ? *pid : -1;
    }
  }
}

void Server::LogStoreHealth() {
  Impl& m = *impl_;
  const store::StoreStats st = m.store->Stats();
  const StoreHealthWatch::Events e =
      m.store_health.Observe({st.batches, st.write_errors, st.storage_full_errors});
  if (e.entered_full) {
    obs::LogError(
        "storage full: durable writes are failing (clients get STORAGE_FULL); free "
        "disk space under the data directory",
        {{"data_dir", m.config.data_dir}, {"failed_writes", e.full_errors}});
  }
  if (e.left_full) {
    obs::LogWarn(
        "storage full cleared: durable writes succeed again",
        {{"data_dir", m.config.data_dir}, {"failed_writes_total", st.storage_full_errors}});
  }
  m.store_errors_unlogged += e.other_errors;
  uint64_t suppressed = 0;
  if (m.store_errors_unlogged > 0 && m.store_error_log.Allow(&suppressed)) {
    obs::LogError("store writes failed (see iris_storage_write_errors_total)",
                  {{"data_dir", m.config.data_dir},
                   {"failed_writes", m.store_errors_unlogged},
                   {"failed_writes_total", st.write_errors}});
    m.store_errors_unlogged = 0;
  }
}

Status Server::StartClusterNode(const edge::EdgeOptions& eo, const core::CoreOptions& co) {
  Impl& m = *impl_;
  const ServerConfig& c = m.config;
  const NodeId self = c.node_id;
  net::PeerTlsConfig pc{c.peer_ca, c.peer_cert, c.peer_key};
  IRIS_ASSIGN_OR_RETURN(m.peer_tls, net::PeerTlsContext::Create(pc));
  // Other nodes call this node's core (behind the router's ownership check) on the peer
  // listener; the same server carries this node's pushes to sessions held elsewhere.
  m.core_server = std::make_unique<rpc::CoreServer>();
  IRIS_RETURN_IF_ERROR(m.core_server->ListenPeers(c.peer_listen, pc, self));
  cluster::PeerLinksOptions po;
  po.self = self;
  m.peers = std::make_unique<cluster::PeerLinks>(
      po, *m.peer_tls,
      [&m]() -> std::shared_ptr<const cluster::Placement> {
        return m.cluster_node ? m.cluster_node->snapshot() : nullptr;
      },
      *m.core_server, m.incoming,
      [&m](NodeId node) {
        // Sessions registered through the lost link may have missed pushes: their clients
        // reconnect (to any node) and resume from their cursors.
        if (!m.router || !m.edge) return;
        for (const core::SessionRef& ref : m.router->SessionsRegisteredAt(node)) {
          m.edge->Disconnect(ref, Unavailable("the node holding this user's inbox went away; "
                                              "reconnect"));
        }
      });
  m.router = std::make_unique<cluster::Router>(self, m.routes, *m.peers);
  if (!m.cluster_edge()) {
    m.core = std::make_unique<core::Core>(*m.store, *m.router, SystemClock::Instance(), co);
    m.router->SetLocalCore(m.core.get());
    IRIS_RETURN_IF_ERROR(m.core->StartFanOut());
  }
  m.core_server->set_core(&m.router->Served());
  if (m.replication) {
    m.core_server->set_on_replication(
        [&m](NodeId from, const internal::v1::ReplicationMessage& wire) {
          std::shared_lock<std::shared_mutex> lock(m.replication_mu);
          if (cluster::repl::IsTransfer(wire)) {
            if (m.replication_ptr != nullptr) {
              m.replication_ptr->ReceiveTransfer(from, wire.shard(),
                                                 cluster::repl::TransferFromProto(wire));
            }
            return;
          }
          Result<std::pair<cluster::repl::ShardNo, cluster::repl::Message>> msg =
              cluster::repl::FromProto(wire);
          if (msg.ok() && m.replication_ptr != nullptr) {
            m.replication_ptr->Receive(from, msg->first, std::move(msg->second));
          }
        });
  }
  if (m.core)
    m.core_server->set_on_peer_lost([core = m.core.get()](NodeId n) { core->ForgetNode(n); });
  IRIS_RETURN_IF_ERROR(m.core_server->Start());
  m.edge =
      std::make_unique<edge::Edge>(eo, *m.router, *m.verifier, *m.tls, SystemClock::Instance());
  m.router->SetLocalEdge(m.edge.get());
  m.incoming.to = &m.router->Incoming();
  IRIS_RETURN_IF_ERROR(m.edge->Start());
  IRIS_RETURN_IF_ERROR(LockClientPort(m.edge->port()));
  m.peers->Start();
  return Status::Ok();
}

Status Server::OpenReplication(store::StoreOptions& so) {
  Impl& m = *impl_;
  const ServerConfig& c = m.config;
  IRIS_ASSIGN_OR_RETURN(m.replication_etcd, cluster::EtcdClient::Create(EtcdOptionsOf(c)));
  IRIS_ASSIGN_OR_RETURN(cluster::ClusterKeys keys, cluster::ClusterKeys::Create(c.cluster));
  cluster::NodeReplicationOptions ro;
  ro.self = c.node_id;
  ro.log_path = c.data_dir + "/replication";
  ro.lost_data = std::filesystem::exists(c.data_dir + "/" + std::string(kLostDataMark));
  ro.lease_ttl_s = c.replication_lease_ttl_s;
  ro.compact_every = static_cast<cluster::repl::Lsn>(c.replication_compact_every);
  ro.rebuild_bytes_per_sec = c.rebalance_bytes_per_sec;
  ro.replica.write_quorum = static_cast<size_t>(m.cluster_replicas / 2 + 1);
  Impl* mp = &m;
  cluster::NodeReplicationEnv env;
  env.send = [mp](NodeId to, cluster::repl::ShardNo shard, cluster::repl::Message message) {
    if (!mp->peers) return;  // before the links exist: the protocol retransmits
    internal::v1::ReplicationMessage wire;
    cluster::repl::ToProto(shard, message, &wire);
    mp->peers->SendReplication(to, wire);
  };
  env.apply = [mp](cluster::repl::ShardNo shard, const std::vector<cluster::repl::Batch>& batches) {
    std::vector<std::string_view> payloads;
    payloads.reserve(batches.size());
    for (const cluster::repl::Batch& b : batches) payloads.push_back(b.payload);
    return mp->store->ApplyReplicated(shard, batches.back().lsn, payloads, batches.back().hlc);
  };
  env.applied_lsn = [mp](cluster::repl::ShardNo shard) { return mp->store->ReplicatedLsn(shard); };
  env.copy_chunk = [mp](cluster::repl::ShardNo shard, std::string* cursor, size_t max_bytes,
                        bool* done, cluster::repl::Lsn* read_lsn) {
    return mp->store->CopyShardChunk(shard, cursor, max_bytes, done, read_lsn);
  };
  env.install_chunk = [mp](cluster::repl::ShardNo, const std::string& payload) {
    return mp->store->InstallShardChunk(payload);
  };
  env.send_transfer = [mp](NodeId to, cluster::repl::ShardNo shard,
                           cluster::repl::Transfer transfer) {
    if (!mp->peers) return false;
    internal::v1::ReplicationMessage wire;
    cluster::repl::ToProto(shard, transfer, &wire);
    return mp->peers->SendReplication(to, wire);
  };
  env.take_over = [mp](cluster::repl::ShardNo shard, uint64_t hlc,
                       std::function<void(Status)> done) {
    obs::LogInfo("replication: this node is the shard's primary", {{"shard", shard}});
    mp->store->TakeOverShard(shard, hlc, [mp, done = std::move(done)](Status s) {
      // The shard's unfinished group fan-outs are this node's to run now.
      if (s.ok() && mp->core) mp->core->fanout().RequestReload();
      done(s);
    });
  };
  env.failed = [](cluster::repl::ShardNo shard, const Status& s) {
    obs::LogError("replication: shard replica stopped (restart the node to recover it)",
                  {{"shard", shard}, {"error", s.message()}});
  };
  IRIS_ASSIGN_OR_RETURN(m.replication,
                        cluster::NodeReplication::Open(ro, *m.replication_etcd, keys, env));
  m.replication_ptr = m.replication.get();  // before any thread that reads it exists
  m.routes.self = c.node_id;
  m.routes.serving = [mp](uint32_t shard) {
    std::shared_lock<std::shared_mutex> lock(mp->replication_mu);
    return mp->replication_ptr != nullptr && mp->replication_ptr->Serving(shard);
  };
  // Until the placement names the shards, no vnode has one: appends are refused.
  so.shard_of_vnode = [](int32_t) { return UINT32_MAX; };
  so.replicate_timeout_ms = c.replication_timeout_ms;
  so.replicate = [mp](uint32_t shard, std::string payload, uint64_t hlc,
                      std::function<void(Status)> done) {
    std::shared_lock<std::shared_mutex> lock(mp->replication_mu);
    if (mp->replication_ptr == nullptr) {
      lock.unlock();
      done(Unavailable("node stopping"));
      return;
    }
    mp->replication_ptr->Replicate(shard, std::move(payload), hlc, std::move(done));
  };
  return Status::Ok();
}

void Server::DropShardCopy(const cluster::Placement& p, uint32_t shard) {
  Impl& m = *impl_;
  Status st = m.replication_ptr->RemoveShard(shard);
  if (st.ok()) {
    std::vector<int32_t> vnodes;
    for (int32_t v = 0; v < p.vnodes(); ++v) {
      const cluster::ShardInfo* s = p.ShardOfVnode(v);
      if (s != nullptr && s->id == shard) vnodes.push_back(v);
    }
    st = m.store->DropShardCopy(shard, vnodes);
    if (st.ok()) {
      obs::LogInfo("replication: this node's copy of a shard deleted (its replica moved away)",
                   {{"shard", shard}, {"vnodes", vnodes.size()}});
      return;
    }
  }
  obs::LogError("replication: cannot delete this node's copy of a shard that moved away",
                {{"shard", shard}, {"error", st.message()}});
}

void Server::FollowPlacementWithReplicas(const std::shared_ptr<const cluster::Placement>& p) {
  Impl& m = *impl_;
  std::shared_lock<std::shared_mutex> lock(m.replication_mu);
  if (m.replication_ptr == nullptr || !m.store || !p || p->version() == 0) return;
  std::vector<uint32_t> new_shards;
  m.store->SetShardOfVnode([p](int32_t vnode) {
    const cluster::ShardInfo* s = p->ShardOfVnode(vnode);
    return s != nullptr ? s->id : UINT32_MAX;
  });
  const std::vector<uint32_t> running = m.replication_ptr->Shards();
  for (const auto& entry : p->shards()) {
    const cluster::ShardInfo& s = entry.second;
    const auto names_self = [&](const std::vector<uint32_t>& v) {
      return std::find(v.begin(), v.end(), m.config.node_id) != v.end();
    };
    if (!names_self(s.replicas) && !names_self(s.target)) {
      // A move took this node's replica away (or it never had one): its copy goes, once.
      const bool runs = std::find(running.begin(), running.end(), s.id) != running.end();
      const Result<uint64_t> applied = m.store->ReplicatedLsn(s.id);
      if (runs || !applied.ok() || *applied > 0) DropShardCopy(*p, s.id);
      continue;
    }
    const Status st = m.replication_ptr->AddShard(s.id, s.replicas, s.elected, s.target);
    if (!st.ok()) {
      obs::LogError("replication: cannot start a shard replica",
                    {{"shard", s.id}, {"error", st.message()}});
      continue;
    }
    new_shards.push_back(s.id);
  }
  lock.unlock();
  // Per-shard gauges (docs/operations.md, "Metrics"): what this replica applied, the commit
  // point it knows, and whether it is the primary taking writes.
  std::lock_guard<std::mutex> metrics_lock(m.replication_metrics_mu);
  if (m.replication_metrics_closed) return;
  for (const uint32_t shard : new_shards) {
    if (!m.replicated_shards.insert(shard).second) continue;
    const obs::Labels labels = {{"shard", std::to_string(shard)}};
    Impl* mp = &m;
    const auto view_of = [mp, shard](auto field) {
      return [mp, shard, field]() -> double {
        std::shared_lock<std::shared_mutex> l(mp->replication_mu);
        if (mp->replication_ptr == nullptr) return 0;
        const auto v = mp->replication_ptr->view(shard);
        return v ? field(*v) : 0;
      };
    };
    obs::Registry::Default().AddCallbackGauge(
        "iris_replication_applied_lsn",
        "Replicated cluster: the last lsn of the shard's log this node's store applied",
        view_of([](const cluster::repl::ReplicaHost::View& v) {
          return static_cast<double>(v.applied_lsn);
        }),
        labels);
    obs::Registry::Default().AddCallbackGauge(
        "iris_replication_commit_lsn",
        "Replicated cluster: the shard's commit point as this replica knows it",
        view_of([](const cluster::repl::ReplicaHost::View& v) {
          return static_cast<double>(v.commit_lsn);
        }),
        labels);
    obs::Registry::Default().AddCallbackGauge(
        "iris_replication_primary", "Replicated cluster: 1 while this node is the shard's primary",
        view_of([](const cluster::repl::ReplicaHost::View& v) {
          return v.role == cluster::repl::Role::kPrimary ? 1.0 : 0.0;
        }),
        labels);
    obs::Registry::Default().AddCallbackGauge(
        "iris_replication_snapshot_lsn",
        "Replicated cluster: the shard's log on this node starts after this lsn (compacted or "
        "installed by a rebuild)",
        view_of([](const cluster::repl::ReplicaHost::View& v) {
          return static_cast<double>(v.snapshot_lsn);
        }),
        labels);
    obs::Registry::Default().AddCallbackGauge(
        "iris_replication_rebuilds_installed",
        "Replicated cluster: rebuilds of this replica completed since the node started",
        view_of([](const cluster::repl::ReplicaHost::View& v) {
          return static_cast<double>(v.rebuilds_installed);
        }),
        labels);
    obs::Registry::Default().AddCallbackGauge(
        "iris_replication_amnesiac",
        "Replicated cluster: 1 while this replica lost its log (or is new to the shard) and "
        "neither votes nor counts for W until the primary has levelled it",
        view_of([](const cluster::repl::ReplicaHost::View& v) { return v.amnesiac ? 1.0 : 0.0; }),
        labels);
  }
}

Status Server::JoinCluster() {
  Impl& m = *impl_;
  const ServerConfig& c = m.config;
  // The addresses other nodes and clients use: the configured host with the bound port.
  auto with_port = [](const std::string& address, uint16_t port) -> Result<std::string> {
    std::string host;
    uint16_t ignored = 0;
    IRIS_RETURN_IF_ERROR(net::SplitHostPort(address, &host, &ignored));
    if (host.find(':') != std::string::npos) host = "[" + host + "]";
    return host + ":" + std::to_string(port);
  };
  cluster::ClusterNodeOptions o;
  o.etcd = EtcdOptionsOf(c);
  o.cluster = c.cluster;
  o.self.id = c.node_id;
  o.self.role = m.cluster_edge() ? cluster::NodeRole::kEdge : cluster::NodeRole::kStorage;
  if (!c.peer_advertise.empty()) {
    o.self.peer = c.peer_advertise;
  } else {
    IRIS_ASSIGN_OR_RETURN(o.self.peer, with_port(c.peer_listen, m.core_server->peer_port()));
  }
  IRIS_ASSIGN_OR_RETURN(o.self.client, with_port(c.listen, port()));
  IRIS_ASSIGN_OR_RETURN(o.self.admin, with_port(c.admin_listen, admin_port()));
  // Tokens live at most 24 h (plus leeway): a revocation is kept that long in etcd.
  o.revocation_ttl_s = 86'400 + c.jwt_leeway_s;
  // Recorded before the claim, so that a crash right after it still lets the next process
  // of this node take the key over.
  const std::string incarnation_file = NodeIncarnationFile(c.data_dir);
  o.previous_incarnation = ReadNodeIncarnation(incarnation_file);
  o.self.incarnation = cluster::NewNodeIncarnation();
  IRIS_RETURN_IF_ERROR(WriteNodeIncarnation(incarnation_file, o.self.incarnation));
  cluster::ClusterView::Callbacks cb;
  cb.on_node_up = [&m](const cluster::NodeInfo& n) {
    if (m.peers && n.role == cluster::NodeRole::kStorage) m.peers->Want(n.id);
  };
  cb.on_revoked_jti = [&m](const std::string& jti, int64_t until_ms) {
    m.revocations.RevokeJti(jti, until_ms);
    if (m.edge) m.edge->RecheckAllSessions();
  };
  cb.on_revoked_user = [&m](uint64_t user, int64_t before_ms) {
    m.revocations.RevokeUserBefore(user, before_ms);
    if (m.edge) m.edge->RecheckAllSessions();
  };
  cb.on_placement = [this](const std::shared_ptr<const cluster::Placement>& p) {
    FollowPlacementWithReplicas(p);
  };
  cb.on_stale = [](bool stale) {
    if (stale) {
      obs::LogWarn("etcd unreachable: serving from the last known placement");
    } else {
      obs::LogInfo("etcd reachable again");
    }
  };
  IRIS_ASSIGN_OR_RETURN(m.cluster_node, cluster::ClusterNode::Create(o, cb));
  IRIS_RETURN_IF_ERROR(m.cluster_node->Start());
  m.routes.node = m.cluster_node.get();
  return Status::Ok();
}

void Server::StopEdgeProcesses() {
  Impl& m = *impl_;
  for (pid_t pid : m.edge_pids) {
    if (pid > 0) kill(pid, SIGTERM);
  }
  const int64_t deadline =
      SystemClock::Instance().MonoMillis() + m.config.shutdown_grace_ms + 2'000;
  for (pid_t& pid : m.edge_pids) {
    while (pid > 0) {
      int status = 0;
      const pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid || r < 0) {
        pid = -1;
        break;
      }
      if (SystemClock::Instance().MonoMillis() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        pid = -1;
        break;
      }
      usleep(10'000);  // shutdown path: polls the child's exit
    }
  }
  m.edge_pids.clear();
}

Status Server::StartEdgeProcess(const edge::EdgeOptions& base) {
  Impl& m = *impl_;
  const ServerConfig& c = m.config;
  edge::EdgeOptions eo = base;
  eo.process_index = c.edge_index;
  if (c.limits_fd < 0) {
    return BadRequest(
        "--role edge-process needs --limits-fd (edge processes are started by the core)");
  }
  auto limits = edge::internal::SharedRegion::Attach(
      c.limits_fd, edge::LimiterTables::Specs(eo.connection_rate, eo.failed_logins));
  if (!limits.ok()) return limits.status();
  eo.shared_limits = *limits;
  m.remote = std::make_unique<rpc::RemoteCore>(c.edge_index);
  IRIS_RETURN_IF_ERROR(m.remote->Connect(c.core_socket, 10'000));
  m.edge =
      std::make_unique<edge::Edge>(eo, *m.remote, *m.verifier, *m.tls, SystemClock::Instance());
  rpc::RemoteCore::PushHandler h;
  h.sink = m.edge.get();
  h.revoke_jti = [&m](const std::string& jti, int64_t until) {
    m.revocations.RevokeJti(jti, until);
    m.edge->RecheckAllSessions();
  };
  h.revoke_user = [&m](uint64_t user, int64_t before) {
    m.revocations.RevokeUserBefore(user, before);
    m.edge->RecheckAllSessions();
  };
  h.on_link_lost = [&m] {
    if (m.stopped) return;
    // Without its core an edge serves nobody: exit so clients reconnect to a healthy edge
    // (the core process restarts edges it loses; a core that is gone takes the node down).
    obs::LogError("lost the core process; edge exiting", {{"edge_index", m.config.edge_index}});
    std::_Exit(3);
  };
  m.remote->Start(std::move(h));
  // Revocations made before this process started (or restarted) apply before it accepts.
  IRIS_ASSIGN_OR_RETURN(const iris::internal::v1::Revocations revoked,
                        m.remote->FetchRevocations());
  for (const auto& j : revoked.jtis()) m.revocations.RevokeJti(j.jti(), j.until_ms());
  for (const auto& u : revoked.users()) m.revocations.RevokeUserBefore(u.user(), u.before_ms());
  IRIS_RETURN_IF_ERROR(m.edge->Start());
  // Only now, with the listener accepting, does the core count this edge as ready.
  IRIS_RETURN_IF_ERROR(m.remote->SayHello());
  obs::AddProcessMetrics(obs::Registry::Default());
  obs::Registry::Default().AddCallbackGauge(
      "iris_connections_open", "Client connections open",
      [e = m.edge.get()] { return static_cast<double>(e->session_count()); });
  AddPreLoginGauge(*m.edge);
  m.admin = std::make_unique<net::http::HttpServer>(AdminHttpOptions(c));
  m.admin->Route("GET", "/healthz", [](const net::http::HttpRequest&) {
    return net::http::HttpResponse{200, "text/plain", "ok\n"};
  });
  m.admin->Route("GET", "/metrics", [](const net::http::HttpRequest&) {
    return net::http::HttpResponse{200, std::string(obs::kPrometheusContentType),
                                   obs::Registry::Default().ExposePrometheus()};
  });
  std::string host;
  uint16_t port = 0;
  IRIS_RETURN_IF_ERROR(net::SplitHostPort(c.admin_listen, &host, &port));
  IRIS_RETURN_IF_ERROR(m.admin->Start(host, port));
  IRIS_RETURN_IF_ERROR(
      WriteEdgeAdminFile(EdgeAdminFile(c.data_dir, c.edge_index), m.admin->port()));
  m.started = true;
  obs::LogInfo(
      "edge process serving",
      {{"edge_index", c.edge_index}, {"port", m.edge->port()}, {"admin_port", m.admin->port()}});
  return Status::Ok();
}
uint16_t Server::admin_port() const { return impl_->admin ? impl_->admin->port() : 0; }

std::string Server::Banner() const {
  const Impl& m = *impl_;
  std::ostringstream o;
  o << "irisd is running\n"
    << "  clients (TLS 1.3): " << m.config.listen << " (port " << port() << ")\n"
    << "  admin HTTP:        " << m.config.admin_listen << " (port " << admin_port() << ")\n"
    << "  certificate:       " << m.config.tls_cert << "\n"
    << "  public key pin:    " << m.cert_pin << "\n"
    << "  fingerprint:       SHA256:" << m.cert_fingerprint << " (changes at every renewal)\n"
    << "  data:              " << m.config.data_dir << "\n";
  if (m.clustered()) {
    o << "  cluster:           " << m.config.cluster << " (etcd " << m.config.etcd << "), node "
      << m.config.node_id << ", role " << (m.cluster_edge() ? "edge" : "storage")
      << ", peers on port " << (m.core_server ? m.core_server->peer_port() : 0) << "\n";
  }
  o << "Mint a token for user 42:\n"
    << "  irisctl token --secret-file " << m.config.jwt_secret_file << " --user 42 --ttl 1h\n"
    << "Connect with the CLI:\n"
    << "  iris login --server 127.0.0.1:" << port() << " --pin " << m.cert_pin
    << " --token <token>\n";
  return o.str();
}

}  // namespace iris::server
