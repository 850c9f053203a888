// irisctl: operator tool for an Iris node.
//   irisctl token  --secret-file F --user 42 [--ttl 1h] [--kid K] [--device N]
//                  mint a development token (--device: 1 = primary, 2..63 = a linked device)
//   irisctl revoke --admin 127.0.0.1:7444 --token-file F (--jti J | --user U [--before-ms T])
//   irisctl health --admin 127.0.0.1:7444
//   irisctl stats  --admin 127.0.0.1:7444    P50/P90/P99 of each histogram, the main counters
//   irisctl cluster init|status|certs|drain  cluster metadata in etcd, peer certificates
//   irisctl backup  --admin H:P --token-file F --to DIR   online backup of a node
//   irisctl restore --from DIR --data-dir D               offline, into an empty directory
//   irisctl verify-backup --from DIR                      check a backup's checksums
//   irisctl delete-user --admin H:P --token-file F --user U   account deletion

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "auth/jwt.h"
#include "capacity.h"
#include "cluster_commands.h"
#include "auth/keyring.h"
#include "common/bytes.h"
#include "net/listener.h"
#include "iris_build_info.h"
#include "stats.h"
#include "store/backup.h"

namespace {

// "90s", "15m", "1h", "1d" or plain seconds.
bool ParseDuration(const std::string& text, int64_t* seconds) {
  if (text.empty()) return false;
  size_t pos = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &pos);
  } catch (...) {
    return false;
  }
  const std::string unit = text.substr(pos);
  int64_t mult = 1;
  if (unit.empty() || unit == "s") mult = 1;
  else if (unit == "m") mult = 60;
  else if (unit == "h") mult = 3600;
  else if (unit == "d") mult = 86400;
  else return false;
  if (v <= 0) return false;
  *seconds = v * mult;
  return true;
}

std::string ReadFileTrim(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// --admin wants host:port; "http://host:port/" (what a browser or Prometheus config shows)
// is taken as host:port. False, with the reason in *error, for any other scheme or a path.
bool AdminHostPort(const std::string& given, std::string* host_port, std::string* error) {
  std::string a = given;
  const size_t scheme_end = a.find("://");
  if (scheme_end != std::string::npos) {
    const std::string scheme = a.substr(0, scheme_end);
    if (scheme != "http") {
      *error = "--admin wants host:port, not a " + scheme + ":// URL (" + given +
               "): the admin API is plain HTTP on irisd's --admin-listen address";
      return false;
    }
    a = a.substr(scheme_end + 3);
    while (!a.empty() && a.back() == '/') a.pop_back();
    if (a.find('/') != std::string::npos) {
      *error = "--admin wants host:port, not a URL with a path (" + given + ")";
      return false;
    }
  }
  *host_port = a;
  return true;
}

// A reply that is not HTTP: what it most likely was. A TLS server answers a plaintext
// request with an alert record (content type 21, version 3.x) or closes without a word.
std::string NotHttpHint(const std::string& host_port, const std::string& reply) {
  const std::string tls_port =
      "this looks like irisd's client TLS port; the admin API is on irisd's --admin-listen "
      "address (printed as \"admin HTTP\" when irisd starts)";
  const bool tls_record =
      reply.size() >= 3 && (reply[0] == '\x15' || reply[0] == '\x16') && reply[1] == '\x03';
  if (tls_record) return "irisctl: " + host_port + " answered in TLS, not HTTP: " + tls_port;
  if (reply.empty()) {
    // irisd's client listener closes a connection that does not start a TLS handshake.
    return "irisctl: " + host_port + " closed the connection without an HTTP answer: " + tls_port;
  }
  return "irisctl: " + host_port +
         " did not answer in HTTP: is it irisd's admin API "
         "(--admin-listen)?";
}

// A minimal HTTP/1.1 request over loopback TCP (the admin listener is plain HTTP, private).
// Returns the HTTP status, or -1 after printing why there is none.
int HttpRequest(const std::string& admin, const std::string& method, const std::string& path,
                const std::string& bearer, const std::string& body, std::string* response) {
  std::string host_port, error;
  if (!AdminHostPort(admin, &host_port, &error)) {
    std::cerr << "irisctl: " << error << "\n";
    return -1;
  }
  std::string host;
  uint16_t port = 0;
  if (!iris::net::SplitHostPort(host_port, &host, &port).ok()) {
    std::cerr << "irisctl: bad admin address " << admin << " (want host:port, e.g. 127.0.0.1:"
              << "PORT)\n";
    return -1;
  }
  int fd = socket(host.find(':') != std::string::npos ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
  sockaddr_storage ss{};
  socklen_t len;
  if (host.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, host.c_str(), &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &a->sin_addr) != 1) {
      std::cerr << "irisctl: admin address must be numeric: " << host << "\n";
      return -1;
    }
    len = sizeof(*a);
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    std::cerr << "irisctl: cannot reach the admin API at " << host_port << ": " << strerror(errno)
              << "\n";
    close(fd);
    return -1;
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n";
  if (!bearer.empty()) req += "Authorization: Bearer " + bearer + "\r\n";
  if (!body.empty() || method == "POST") {
    req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return -1;
  }
  // A server that never answers (a TLS port waiting for its handshake) fails the command
  // instead of hanging it.
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) response->append(buf, static_cast<size_t>(n));
  close(fd);
  int status = -1;
  if (response->rfind("HTTP/1.", 0) == 0 && response->size() > 12) status = std::stoi(response->substr(9, 3));
  if (status < 0) {
    std::cerr << NotHttpHint(host_port, *response) << "\n";
    response->clear();
    return -1;
  }
  const size_t body_at = response->find("\r\n\r\n");
  if (body_at != std::string::npos) response->erase(0, body_at + 4);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"irisctl: operate an Iris node"};
  app.require_subcommand(1);
  app.set_version_flag("--version", iris::build_info::VersionLine("irisctl"));

  std::string secret_file, kid, ttl = "1h", jti;
  uint64_t user = 0;
  int64_t device = 1;
  auto* token = app.add_subcommand("token", "Mint a development token (HS256 JWT)");
  token->add_option("--secret-file", secret_file, "The server's JWT secret file")->required();
  token->add_option("--user", user, "User id (non-zero)")->required();
  token->add_option("--ttl", ttl, "Lifetime: 90s, 15m, 1h, 1d (at most 24h)")->capture_default_str();
  token->add_option("--kid", kid, "Key id for rotation (optional)");
  token->add_option("--jti", jti, "Token id (default: random)");
  token
      ->add_option("--device", device,
                   "Device id (the dev claim): 1 = the primary device, 2..63 = a linked "
                   "device (iris devices)")
      ->capture_default_str();

  std::string admin = "127.0.0.1:7444", admin_token_file, revoke_jti;
  uint64_t revoke_user = 0;
  int64_t before_ms = 0;
  auto* revoke = app.add_subcommand("revoke", "Revoke a token (by jti) or a user's tokens");
  revoke->add_option("--admin", admin, "Admin listener host:port")->capture_default_str();
  revoke->add_option("--token-file", admin_token_file, "Admin bearer token file")->required();
  revoke->add_option("--jti", revoke_jti, "Token id to revoke");
  revoke->add_option("--user", revoke_user, "Revoke every token of this user issued before --before-ms");
  revoke->add_option("--before-ms", before_ms, "Cut-off in Unix milliseconds (default: now)");

  auto* health = app.add_subcommand("health", "Query /healthz and /readyz");
  health->add_option("--admin", admin, "Admin listener host:port")->capture_default_str();

  auto* stats = app.add_subcommand("stats", "Scrape /metrics: P50/P90/P99 of each histogram "
                                   "(since start) and the message counters");
  stats->add_option("--admin", admin, "Admin listener host:port")->capture_default_str();

  std::string backup_to, backup_from, restore_data_dir;
  auto* backup = app.add_subcommand(
      "backup", "Back up a running node (consistent, writes continue): store, generated "
                "secrets, manifest, SHA256SUMS");
  backup->add_option("--admin", admin, "Admin listener host:port")->capture_default_str();
  backup->add_option("--token-file", admin_token_file, "Admin bearer token file")->required();
  backup->add_option("--to", backup_to,
                     "Directory for the backup, on the node's host: absolute, or relative to "
                     "irisd's --backup-dir; must not exist or be empty")
      ->required();
  auto* restore = app.add_subcommand(
      "restore", "Restore a backup into an EMPTY data directory (offline: no irisd on it)");
  restore->add_option("--from", backup_from, "The backup directory")->required();
  restore->add_option("--data-dir", restore_data_dir, "The new node's data directory")
      ->required();
  auto* verify_backup =
      app.add_subcommand("verify-backup", "Check a backup's manifest and every file's checksum");
  verify_backup->add_option("--from", backup_from, "The backup directory")->required();
  uint64_t delete_user_id = 0;
  auto* delete_user = app.add_subcommand(
      "delete-user", "Delete a user's data on the node (inbox, archive, keys, settings, dedup "
                     "entries) after revoking their tokens");
  delete_user->add_option("--admin", admin, "Admin listener host:port")->capture_default_str();
  delete_user->add_option("--token-file", admin_token_file, "Admin bearer token file")
      ->required();
  delete_user->add_option("--user", delete_user_id, "User id (non-zero)")->required();

  iris::tools::CapacityInputs cap;
  auto* capacity = app.add_subcommand(
      "capacity", "RFC-001 §12 capacity model: edge nodes, core shards and core nodes for a DAU");
  capacity->add_option("--dau", cap.dau, "Daily active users")->capture_default_str();
  capacity->add_option("--concurrent-ratio", cap.concurrent_ratio, "Share of DAU connected at peak (0.05..0.15)")
      ->capture_default_str();
  capacity->add_option("--conn-per-edge", cap.conn_per_edge, "Connections per edge node (50K..200K)")
      ->capture_default_str();
  capacity->add_option("--users-per-shard", cap.users_per_shard, "Users per core shard (50K..200K)")
      ->capture_default_str();
  capacity->add_option("--safety", cap.safety, "Safety multiplier (1.2..2.0)")->capture_default_str();
  capacity->add_option("--messages-per-user-per-day", cap.messages_per_user_per_day,
                       "Average messages a user sends per day")->capture_default_str();
  capacity->add_option("--peak-to-average", cap.peak_to_average, "Peak over average traffic")
      ->capture_default_str();
  capacity->add_option("--measured-msgs-per-sec", cap.measured_msgs_per_sec_per_node,
                       "Durable messages/s one node sustained (iris-bench throughput)");
  capacity->add_option("--measured-conns-per-node", cap.measured_conns_per_node,
                       "Idle connections one node held (iris-bench connections)");

  iris::tools::ClusterArgs cl;
  auto* cluster = app.add_subcommand("cluster", "Cluster mode: etcd metadata, peer certificates");
  cluster->require_subcommand(1);
  auto add_etcd = [&cl](CLI::App* sub) {
    sub->add_option("--etcd", cl.etcd, "etcd endpoints, comma-separated host:port")
        ->capture_default_str();
    sub->add_option("--cluster", cl.cluster, "Cluster name (keys under /iris/<name>/)")->required();
    sub->add_option("--etcd-ca", cl.etcd_ca, "CA file for TLS to etcd");
    sub->add_option("--etcd-cert", cl.etcd_cert, "Client certificate for TLS to etcd");
    sub->add_option("--etcd-key", cl.etcd_key, "Client key for TLS to etcd");
  };
  auto* cluster_init = cluster->add_subcommand(
      "init", "Write the cluster config (vnodes, replicas, initial nodes) once; fails if it differs");
  add_etcd(cluster_init);
  cluster_init->add_option("--vnodes", cl.vnodes, "Virtual nodes (fixed for the cluster's life)")
      ->capture_default_str();
  cluster_init->add_option("--replicas", cl.replicas, "Replicas per shard")->capture_default_str();
  cluster_init
      ->add_option("--initial-nodes", cl.initial_nodes,
                   "Storage nodes placed together by the first placement (one shard each); "
                   "with --replicas > 1 nodes joining later get replicas moved to them")
      ->capture_default_str();
  cluster_init
      ->add_option("--shards-per-node", cl.shards_per_node,
                   "Shards of the first placement per initial node (1..64): with --replicas > 1 "
                   "the cluster can later grow to replicas x initial nodes x this many nodes, "
                   "each move carrying 1/shards of the data")
      ->capture_default_str();
  auto* cluster_status = cluster->add_subcommand(
      "status", "Nodes (up/down, addresses, role), shards (replicas, primary, epoch, vnodes)");
  add_etcd(cluster_status);
  cluster_status->add_flag("--json", cl.json, "Machine-readable output");
  auto* cluster_certs = cluster->add_subcommand(
      "certs", "Make DIR/ca.{crt,key} once and DIR/node-N.{crt,key} signed by it");
  cluster_certs->add_option("--dir", cl.dir, "Directory for the certificates")->required();
  cluster_certs->add_option("--node-id", cl.node_id, "Node id (non-zero)")->required();
  auto* cluster_drain = cluster->add_subcommand(
      "drain", "Move every replica off a node, one shard at a time (replicated clusters)");
  add_etcd(cluster_drain);
  cluster_drain->add_option("--node-id", cl.node_id, "Node to drain")->required();
  cluster_drain->add_flag("--cancel", cl.cancel,
                          "Stop draining the node (replicas moved off it stay where they are)");
  cluster_drain->add_option("--wait-s", cl.wait_s,
                            "Wait up to this many seconds for the node to hold no replica "
                            "(exit 1 if it still does)");

  CLI11_PARSE(app, argc, argv);

  if (cluster_init->parsed()) return iris::tools::ClusterInit(cl);
  if (cluster_status->parsed()) return iris::tools::ClusterStatus(cl);
  if (cluster_certs->parsed()) return iris::tools::ClusterCerts(cl);
  if (cluster_drain->parsed()) return iris::tools::ClusterDrain(cl);

  if (capacity->parsed()) {
    auto plan = iris::tools::PlanCapacity(cap);
    if (!plan.ok()) {
      std::cerr << "irisctl: " << plan.status().message() << "\n";
      return 2;
    }
    std::cout << iris::tools::FormatCapacityPlan(cap, *plan);
    return 0;
  }
  if (token->parsed()) {
    if (user == 0) {
      std::cerr << "irisctl: --user must be non-zero\n";
      return 2;
    }
    if (device < 1 || device > static_cast<int64_t>(iris::auth::kMaxDeviceClaim)) {
      std::cerr << "irisctl: --device must be 1 (the primary device) .. "
                << iris::auth::kMaxDeviceClaim << " (a linked device), got " << device << "\n";
      return 2;
    }
    int64_t seconds = 0;
    if (!ParseDuration(ttl, &seconds) || seconds > 86400) {
      std::cerr << "irisctl: --ttl must be a positive duration of at most 24h (e.g. 1h)\n";
      return 2;
    }
    auto secret = iris::auth::ReadSecretFile(secret_file);
    if (!secret.ok()) {
      std::cerr << "irisctl: " << secret.status().message() << "\n";
      return 1;
    }
    iris::auth::Claims c;
    c.user_id = user;
    c.device = static_cast<uint32_t>(device);
    c.iat = std::chrono::duration_cast<std::chrono::seconds>(
                std::chrono::system_clock::now().time_since_epoch()).count();
    c.exp = c.iat + seconds;
    c.kid = kid;
    if (jti.empty()) {
      unsigned char r[12];
      RAND_bytes(r, sizeof(r));
      jti = iris::HexEncode(std::string_view(reinterpret_cast<char*>(r), sizeof(r)));
    }
    c.jti = jti;
    std::cout << iris::auth::MintToken(*secret, c) << "\n";
    return 0;
  }
  if (revoke->parsed() || health->parsed() || stats->parsed()) {
    std::string host_port, error;
    if (!AdminHostPort(admin, &host_port, &error)) {
      std::cerr << "irisctl: " << error << "\n";
      return 2;
    }
    admin = host_port;
  }
  if (revoke->parsed()) {
    const std::string bearer = ReadFileTrim(admin_token_file);
    if (bearer.empty()) {
      std::cerr << "irisctl: cannot read the admin token from " << admin_token_file << "\n";
      return 1;
    }
    nlohmann::json body;
    if (!revoke_jti.empty()) {
      body["jti"] = revoke_jti;
    } else if (revoke_user != 0) {
      body["user"] = revoke_user;
      if (before_ms != 0) body["before_ms"] = before_ms;
    } else {
      std::cerr << "irisctl: give --jti or --user\n";
      return 2;
    }
    std::string resp;
    const int status = HttpRequest(admin, "POST", "/v1/revoke", bearer, body.dump(), &resp);
    if (status != 200) {
      std::cerr << "irisctl: revoke failed (HTTP " << status << "): " << resp << "\n";
      return 1;
    }
    std::cout << "revoked\n";
    return 0;
  }
  if (backup->parsed() || delete_user->parsed()) {
    const std::string bearer = ReadFileTrim(admin_token_file);
    if (bearer.empty()) {
      std::cerr << "irisctl: cannot read the admin token from " << admin_token_file << "\n";
      return 1;
    }
    if (delete_user->parsed() && delete_user_id == 0) {
      std::cerr << "irisctl: --user must be non-zero\n";
      return 2;
    }
    const bool is_backup = backup->parsed();
    nlohmann::json body;
    if (is_backup) {
      body["to"] = backup_to;
    } else {
      body["user"] = delete_user_id;
    }
    std::string resp;
    const int status = HttpRequest(admin, "POST", is_backup ? "/v1/backup" : "/v1/delete-user",
                                   bearer, body.dump(), &resp);
    const nlohmann::json j = nlohmann::json::parse(resp, nullptr, false);
    if (status != 200) {
      const std::string why = j.is_object() && j.contains("error") && j["error"].is_string()
                                  ? j["error"].get<std::string>()
                                  : resp;
      std::cerr << "irisctl: " << (is_backup ? "backup" : "delete-user") << " failed (HTTP "
                << status << "): " << why << "\n";
      return 1;
    }
    if (is_backup && j.is_object()) {
      std::cout << "backup written to " << j.value("path", std::string()) << "\n"
                << "  node " << j.value("node_id", 0) << ", store layout "
                << j.value("layout_version", 0) << ", last message id "
                << j.value("last_id", uint64_t{0}) << "\n"
                << "  " << j.value("files", uint64_t{0}) << " files, "
                << j.value("bytes", uint64_t{0}) << " bytes, in " << j.value("duration_ms", 0)
                << " ms\n";
    } else if (j.is_object()) {
      std::cout << "deleted user " << delete_user_id << ": " << j.value("messages", uint64_t{0})
                << " messages, " << j.value("dedup_entries", uint64_t{0})
                << " dedup entries, " << j.value("prekeys", uint64_t{0})
                << " prekeys; tokens revoked\n";
    } else {
      std::cout << resp;
    }
    return 0;
  }
  if (restore->parsed() || verify_backup->parsed()) {
    const bool is_restore = restore->parsed();
    auto m = is_restore ? iris::store::RestoreBackup(backup_from, restore_data_dir)
                        : iris::store::VerifyBackup(backup_from);
    if (!m.ok()) {
      std::cerr << "irisctl: " << (is_restore ? "restore" : "verify-backup")
                << " failed: " << m.status().message() << "\n";
      return 1;
    }
    std::cout << (is_restore ? "restored " : "backup OK: ") << backup_from
              << (is_restore ? " into " + restore_data_dir : std::string()) << "\n"
              << "  node " << m->node_id << ", store layout " << m->layout_version << ", "
              << m->vnodes << " vnodes, made " << m->created_at_ms << " (unix ms) by irisd "
              << m->irisd_version << "\n";
    if (is_restore) {
      std::cout << "Start the node on it with the same --node-id (" << m->node_id
                << ") and --data-dir " << restore_data_dir << "\n";
    }
    return 0;
  }
  if (health->parsed()) {
    std::string a, b;
    const int h = HttpRequest(admin, "GET", "/healthz", "", "", &a);
    if (h < 0) return 1;  // not reachable or not the admin API: HttpRequest said why
    const int r = HttpRequest(admin, "GET", "/readyz", "", "", &b);
    std::cout << "healthz: " << h << "\nreadyz: " << r << "\n";
    return h == 200 && r == 200 ? 0 : 1;
  }
  if (stats->parsed()) {
    std::string text;
    const int status = HttpRequest(admin, "GET", "/metrics", "", "", &text);
    if (status != 200) {
      std::cerr << "irisctl: GET /metrics failed (HTTP " << status << ")\n";
      return 1;
    }
    auto report = iris::tools::FormatStats(text);
    if (!report.ok()) {
      std::cerr << "irisctl: " << report.status().message() << "\n";
      return 1;
    }
    std::cout << *report;
    return 0;
  }
  return 0;
}
