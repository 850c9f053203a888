#include "server/config.h"

#include <toml++/toml.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <fstream>
#include <regex>
#include <sstream>

#include "iris_build_info.h"
#include "net/tls.h"

namespace iris::server {
namespace {

void Define(CLI::App& app, ServerConfig& c) {
  app.add_option("--config", c.config_file,
                 "TOML configuration file (keys are these flags' names; flags given on the "
                 "command line win over the file)");
  app.add_flag("--check-config", c.check_config,
               "Validate the configuration (--check-config FILE, or --config FILE "
               "--check-config) and exit: 0 when valid, 2 with the reason when not");
  app.add_option("--data-dir", c.data_dir, "Directory for the store, keys and generated secrets")
      ->capture_default_str();
  app.add_option("--listen", c.listen, "Client listener (TLS 1.3), host:port")
      ->capture_default_str();
  app.add_option("--admin-listen", c.admin_listen,
                 "Admin HTTP listener, host:port (keep it private)")
      ->capture_default_str();
  app.add_option("--admin-connections-per-ip", c.admin_connections_per_ip,
                 "Concurrent admin HTTP connections per client address (more are answered 503)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--tls-cert", c.tls_cert,
                 "PEM certificate chain (default: generated self-signed in <data-dir>/tls)");
  app.add_option("--tls-key", c.tls_key,
                 "PEM private key (default: generated with the certificate)");
  app.add_option("--tls-san", c.tls_san,
                 "Extra name or IP address for the subjectAltName of the generated certificate "
                 "(repeatable; localhost, 127.0.0.1 and ::1 are always in it). Used only when "
                 "irisd generates the certificate (no --tls-cert)")
      ->take_all();
  app.add_option("--jwt-secret-file", c.jwt_secret_file,
                 "HS256 key file: its bytes less one trailing newline, at least 32 (default: "
                 "generated <data-dir>/jwt.secret)");
  app.add_option("--jwt-key", c.jwt_keys,
                 "Extra signing key for rotation, as kid=path (repeatable)")
      ->take_all();
  app.add_option("--admin-token-file", c.admin_token_file,
                 "Bearer token of the admin API, file content less one trailing newline (default: "
                 "generated <data-dir>/admin.token)");
  app.add_option("--node-id", c.node_id, "Node id (0..255), the low byte of every message id")
      ->capture_default_str()
      ->check(CLI::Range(0, 255));
  app.add_option("--loops", c.loops, "Event loops (0 = one per core)")->capture_default_str();
  app.add_option("--hello-timeout-ms", c.hello_timeout_ms, "TLS handshake + HELLO deadline")
      ->capture_default_str();
  app.add_option("--idle-timeout-ms", c.idle_timeout_ms, "Close a connection silent this long")
      ->capture_default_str();
  app.add_option("--jwt-leeway-s", c.jwt_leeway_s, "Clock leeway for exp/iat")
      ->capture_default_str();
  app.add_option("--jwt-audience", c.jwt_audience, "Required aud claim (empty: not checked)");
  app.add_option("--jwt-issuer", c.jwt_issuer, "Required iss claim (empty: not checked)");
  app.add_option("--rate-per-sec", c.rate_per_sec, "Sustained sends per user per second")
      ->capture_default_str();
  app.add_option("--fanout-inboxes-per-sec", c.fanout_inboxes_per_sec,
                 "Group fan-out: inbox appends per second of the fan-out worker, for groups "
                 "over 256 recipients (RFC-001 section 8)")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--replication-lease-ttl-s", c.replication_lease_ttl_s,
                 "Replicated cluster: TTL of a shard primary's etcd lease; a killed primary is "
                 "replaced about this long after it died")
      ->check(CLI::Range(int64_t{1}, int64_t{60}))
      ->capture_default_str();
  app.add_option("--replication-timeout-ms", c.replication_timeout_ms,
                 "Replicated cluster: an append not on W replicas within this time is refused "
                 "(UNAVAILABLE, retryable)")
      ->check(CLI::Range(int64_t{100}, int64_t{600000}))
      ->capture_default_str();
  app.add_option("--replication-compact-every", c.replication_compact_every,
                 "Replicated cluster: compact a shard's replication log once this many applied "
                 "batches follow its snapshot; a replica further behind is rebuilt by copying")
      ->check(CLI::Range(int64_t{1}, int64_t{100'000'000}))
      ->capture_default_str();
  app.add_option("--rebalance-bytes-per-sec", c.rebalance_bytes_per_sec,
                 "Replicated cluster: bytes per second a node copies to replicas it rebuilds")
      ->check(CLI::Range(int64_t{4096}, int64_t{int64_t{1} << 40}))
      ->capture_default_str();
  app.add_option("--rate-burst-per-sec", c.rate_burst_per_sec, "Peak sends per user per second")
      ->capture_default_str();
  app.add_option("--rate-burst-seconds", c.rate_burst_seconds, "How long the peak rate may last")
      ->capture_default_str();
  app.add_option("--connections-per-ip-per-minute", c.connections_per_ip_per_minute,
                 "New connections per minute per IP address")
      ->capture_default_str();
  app.add_option("--connection-allowlist", c.connection_allowlist,
                 "Addresses or CIDR ranges exempt from the per-IP limits: connections, failed "
                 "logins (repeatable)")
      ->take_all();
  app.add_option("--proxy-protocol-from", c.proxy_protocol_from,
                 "Address or CIDR range of a load balancer that sends a PROXY protocol v2 header "
                 "before TLS (repeatable). Connections from it must start with one, and the "
                 "client address it carries is what the per-IP limits and logs see; from any "
                 "other source a header is refused")
      ->take_all();
  app.add_option("--exempt-loopback", c.exempt_loopback,
                 "Add loopback (127.0.0.0/8, ::1) to --connection-allowlist, so local tools "
                 "and the quick start are not limited to 5 connections a minute; false "
                 "counts loopback like any address (e.g. behind a local proxy)")
      ->capture_default_str();
  app.add_option("--max-prelogin-per-ip", c.max_prelogin_per_ip,
                 "Connections per IP address accepted but not yet logged in (TLS handshake and "
                 "HELLO pending); more are closed at once. Allow-listed addresses are exempt; "
                 "0 = no cap")
      ->capture_default_str();
  app.add_option("--max-prelogin-connections", c.max_prelogin_connections,
                 "Connections accepted but not yet logged in, in total per process (each edge "
                 "process with --edge-processes); more are closed at once. 0 = half the "
                 "open-file limit")
      ->capture_default_str();
  app.add_option("--failed-logins-per-hour", c.failed_logins_per_hour,
                 "Bad tokens per account per hour before further bad tokens naming it are "
                 "answered RATE_LIMITED (valid tokens are never refused)")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 1e6));
  app.add_option("--failed-logins-per-ip-per-hour", c.failed_logins_per_ip_per_hour,
                 "Bad tokens per IP address (IPv6: per /64) per hour before further bad tokens "
                 "from it are answered RATE_LIMITED (allow-listed addresses are exempt)")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 1e6));
  app.add_option("--max-output-bytes", c.max_output_bytes,
                 "Per-connection output queue bound; a slower reader is disconnected")
      ->capture_default_str();
  app.add_option("--inbox-cap", c.inbox_cap, "Newest messages kept in the inbox (older: archive)")
      ->capture_default_str();
  app.add_option("--verify-on-start", c.verify_on_start,
                 "Read every stored table file at start and refuse to start on a bad checksum "
                 "(a damaged disk); costs one read of the data (docs/operations.md). The "
                 "write-ahead log and the MANIFEST are always checked")
      ->capture_default_str();
  app.add_option("--rebuild-lost-data", c.rebuild_lost_data,
                 "Replicated cluster: when this node's store or replication log lost writes it "
                 "had made durable, or is damaged, move them to <data-dir>/lost-<unix ms>/ and "
                 "start empty, to be rebuilt from the other replicas (false: refuse to start)")
      ->capture_default_str();
  app.add_option("--dedup-bloom-keys-per-day", c.dedup_bloom_keys_per_day,
                 "Keys each daily dedup Bloom filter is sized for (10 bits each, 8 filters); "
                 "new keys past it increasingly cost a read")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1000}, uint64_t{1'000'000'000}));
  app.add_option("--dedup-hot-entries", c.dedup_hot_entries,
                 "Bound of the in-memory dedup tier (keys of the last 5 minutes, ~100 bytes each)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1000}, uint64_t{100'000'000}));
  app.add_option("--archive-retention-days", c.archive_retention_days,
                 "Delete archived messages (older than the newest --inbox-cap of each inbox) "
                 "once they are this many days old; swept hourly. 0 = keep forever")
      ->capture_default_str()
      ->check(CLI::Range(0, 36500));
  app.add_option("--backup-dir", c.backup_dir,
                 "Directory for backups asked for by a relative path (irisctl backup); default: "
                 "<data-dir>/backups")
      ->capture_default_str();
  app.add_option("--shutdown-grace-ms", c.shutdown_grace_ms,
                 "SIGTERM: time allowed to finish in-flight work")
      ->capture_default_str();
  app.add_option("--log-level", c.log_level, "debug, info, warn or error")->capture_default_str();
  app.add_option("--edge-processes", c.edge_processes,
                 "Run N edge processes sharing the client port (SO_REUSEPORT) in front of this "
                 "process's core and store; 0 = everything in one process")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  app.add_option("--role", c.role,
                 "storage (default: holds shards and accepts clients) or edge (cluster only: "
                 "holds client connections and routes, stores nothing)")
      ->check(CLI::IsMember({"all", "storage", "edge", "edge-process"}));
  app.add_option("--etcd", c.etcd,
                 "Cluster mode: etcd endpoints, comma-separated host:port (docs/operations.md, "
                 "\"Running a cluster\"); empty: the single-node embedded default");
  app.add_option("--etcd-ca", c.etcd_ca, "CA file for TLS to etcd (empty: plain HTTP)");
  app.add_option("--etcd-cert", c.etcd_cert, "Client certificate for etcd");
  app.add_option("--etcd-key", c.etcd_key, "Client key for etcd");
  app.add_option("--cluster", c.cluster, "Cluster name (the etcd key prefix /iris/<name>/)")
      ->capture_default_str();
  app.add_option("--peer-listen", c.peer_listen,
                 "Cluster mode: address of the mutually authenticated TLS listener for other "
                 "nodes (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--peer-advertise", c.peer_advertise,
                 "The peer address other nodes dial, when it differs from --peer-listen");
  app.add_option("--peer-ca", c.peer_ca, "Cluster CA certificate (irisctl cluster certs)");
  app.add_option("--peer-cert", c.peer_cert, "This node's certificate (CN iris-node-<id>)");
  app.add_option("--peer-key", c.peer_key, "This node's private key");
  app.add_option("--core-socket", c.core_socket, "Internal: the core process's Unix socket")
      ->group("");
  app.add_option("--edge-index", c.edge_index, "Internal: this edge process's index")->group("");
  app.add_option("--limits-fd", c.limits_fd,
                 "Internal: the descriptor of the node's shared limiter tables (edge process)")
      ->check(CLI::Range(0, 1 << 20))
      ->group("");
  app.add_option("--degradation-level", c.degradation_level,
                 "Force graceful degradation: -1 follows load; 1 sheds typing, 2 also presence "
                 "updates, 3 also read receipts")
      ->capture_default_str()
      ->check(CLI::Range(-1, 3));
  app.add_option("--loop-lag-budget-ms", c.loop_lag_budget_ms,
                 "Event-loop lag that counts as full load (degradation signal)")
      ->capture_default_str();
  app.add_option("--trace-file", c.trace_file,
                 "Write spans as OTLP/JSON lines to this file (\"-\": stderr; empty: tracing off)");
  app.add_option("--trace-sample-ratio", c.trace_sample_ratio,
                 "Fraction of traces written besides every failed operation (1: all)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
}

// Turns the TOML file into "--key=value" arguments placed before the real command line,
// so flags given on the command line win (CLI11 takes the last value). Every key must name
// an option of `app` that a file may set; anything else is an error naming the key and its
// line.
// The key a TOML line sets ("node-id" in `node-id = = 3`), or "" when the line has none.
std::string KeyOnLine(const std::string& path, int64_t line) {
  std::ifstream in(path);
  std::string text;
  for (int64_t i = 0; i < line && std::getline(in, text); ++i) {
  }
  static const std::regex key_re(R"re(^\s*"?([A-Za-z0-9_.-]+)"?\s*=)re");
  std::smatch m;
  return std::regex_search(text, m, key_re) ? m[1].str() : std::string();
}

Status TomlToArgs(const CLI::App& app, const std::string& path, std::vector<std::string>* out,
                  std::vector<std::pair<std::string, int64_t>>* keys) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const int64_t line = e.source().begin.line;
    const std::string key = KeyOnLine(path, line);
    std::ostringstream msg;
    msg << "config " << path << ", line " << line;
    if (!key.empty()) msg << ", key '" << key << "'";
    msg << ": " << e.description() << " (TOML: key = value, strings in double quotes)";
    return BadRequest(msg.str());
  }
  for (auto&& [key, node] : table) {
    const std::string k(key.str());
    const std::string where =
        "config " + path + ", line " + std::to_string(key.source().begin.line) + ": ";
    keys->emplace_back(k, key.source().begin.line);
    const CLI::Option* opt = app.get_option_no_throw("--" + k);
    if (opt == nullptr || k == "config" || k == "check-config" || k == "help" || k == "version") {
      return BadRequest(where + "unknown key '" + k + "' (keys are irisd's flags without " +
                        "the leading --; see irisd --help)");
    }
    if (node.is_table()) {
      return BadRequest(where + "'" + k + "' is a table; irisd's keys are top-level values");
    }
    auto scalar = [&](const toml::node& n) -> Result<std::string> {
      if (auto s = n.value<std::string>()) return *s;
      if (auto i = n.value<int64_t>()) return std::to_string(*i);
      if (auto d = n.value<double>()) {
        std::ostringstream o;
        o << *d;
        return o.str();
      }
      if (auto b = n.value<bool>()) return std::string(*b ? "true" : "false");
      return BadRequest(where + "unsupported value type for '" + k +
                        "' (string, integer, float, boolean or an array of them)");
    };
    if (const toml::array* arr = node.as_array()) {
      for (const auto& el : *arr) {
        auto v = scalar(el);
        if (!v.ok()) return v.status();
        out->push_back("--" + k + "=" + *v);
      }
      continue;
    }
    auto v = scalar(node);
    if (!v.ok()) return v.status();
    out->push_back("--" + k + "=" + *v);
  }
  return Status::Ok();
}

// Where the arguments came from, to say which file line an invalid value is on.
struct ConfigSources {
  std::string path;                                   // the TOML file, or ""
  std::vector<std::pair<std::string, int64_t>> keys;  // its keys and their lines
  std::vector<std::string> command_line;              // argv[1..]
};

// `error` names "--KEY" for a key the file set (and the command line did not): then
// "config FILE, line N, key 'KEY': <error>", else `error` unchanged.
Status NameFileKey(const ConfigSources& src, const Status& error) {
  const std::string& msg = error.message();
  if (src.path.empty() || msg.rfind("config ", 0) == 0) return error;
  for (const auto& [key, line] : src.keys) {
    const std::string flag = "--" + key;
    for (size_t at = msg.find(flag); at != std::string::npos; at = msg.find(flag, at + 1)) {
      const size_t end = at + flag.size();
      if (end < msg.size() && (std::isalnum(static_cast<unsigned char>(msg[end])) != 0 ||
                               msg[end] == '-' || msg[end] == '_')) {
        continue;  // --node-id-x is another flag
      }
      const bool on_command_line = std::any_of(
          src.command_line.begin(), src.command_line.end(),
          [&flag](const std::string& a) { return a == flag || a.rfind(flag + "=", 0) == 0; });
      if (on_command_line) break;
      return BadRequest("config " + src.path + ", line " + std::to_string(line) + ", key '" + key +
                        "': " + msg);
    }
  }
  return error;
}

Result<ServerConfig> ParseConfigFrom(int argc, char** argv, std::string* help_text,
                                     ConfigSources* src) {
  ServerConfig c;
  CLI::App app{"irisd: the Iris messaging server (edge, core and store in one process)", "irisd"};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", iris::build_info::VersionLine("irisd"));
  Define(app, c);

  // The file comes from --config FILE or --check-config FILE (whose FILE is taken out of
  // the arguments, leaving the flag).
  std::vector<std::string> command_line;
  std::string config_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) config_path = argv[i + 1];
    if (a.rfind("--config=", 0) == 0) config_path = a.substr(9);
    if (a == "--check-config" && i + 1 < argc && argv[i + 1][0] != '-') {
      config_path = argv[++i];
    } else if (a.rfind("--check-config=", 0) == 0) {
      config_path = a.substr(15);
      a = "--check-config";
    }
    command_line.push_back(std::move(a));
  }
  src->path = config_path;
  src->command_line = command_line;
  std::vector<std::string> args;
  if (!config_path.empty()) {
    IRIS_RETURN_IF_ERROR(TomlToArgs(app, config_path, &args, &src->keys));
  }
  args.insert(args.end(), command_line.begin(), command_line.end());
  // CLI11 parses a reversed vector of arguments.
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    *help_text = app.help();
    return c;
  } catch (const CLI::CallForVersion& v) {
    *help_text = std::string(v.what()) + "\n";
    return c;
  } catch (const CLI::ParseError& e) {
    return BadRequest(std::string(e.what()) + " (see irisd --help)");
  }
  if (c.check_config && config_path.empty()) {
    return BadRequest("--check-config needs a file: irisd --check-config FILE");
  }
  if (c.role == "storage") c.role = "all";
  if (!c.tls_san.empty() && !c.tls_cert.empty()) {
    return BadRequest(
        "--tls-san names go into the certificate irisd generates; with --tls-cert, put them "
        "in that certificate instead");
  }
  for (const std::string& name : c.tls_san) IRIS_RETURN_IF_ERROR(net::ValidateSubjectAltName(name));
  if (c.exempt_loopback && c.role != "edge-process") {
    c.connection_allowlist.insert(c.connection_allowlist.end(), {"127.0.0.0/8", "::1"});
  }
  if (c.role == "edge" && c.etcd.empty()) {
    return BadRequest("--role edge needs --etcd: an edge-only node routes to a cluster's nodes");
  }
  if (!c.etcd.empty()) {
    if (c.edge_processes > 0) {
      return BadRequest(
          "--edge-processes cannot be combined with --etcd yet: a cluster node runs "
          "its edge in one process");
    }
    if (c.peer_ca.empty() || c.peer_cert.empty() || c.peer_key.empty()) {
      return BadRequest(
          "--etcd needs --peer-ca, --peer-cert and --peer-key (make them with "
          "irisctl cluster certs)");
    }
    if (c.node_id == 0 || c.node_id > 255) {
      return BadRequest("--node-id must be in 1..255 (it is part of every message id)");
    }
  }
  // A sync page is one full frame; the queue must hold at least two.
  if (c.max_output_bytes < 2 * (3 + 65535)) {
    return BadRequest("--max-output-bytes must be at least 131076 (two full frames)");
  }
  if (c.check_config) *help_text = "config " + config_path + ": OK\n";
  return c;
}

}  // namespace

Result<ServerConfig> ParseConfig(int argc, char** argv, std::string* help_text) {
  ConfigSources src;
  Result<ServerConfig> c = ParseConfigFrom(argc, argv, help_text, &src);
  if (!c.ok()) return NameFileKey(src, c.status());
  return c;
}

}  // namespace iris::server
