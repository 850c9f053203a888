#include "cluster_commands.h"

#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cluster/cluster_view.h"
#include "cluster/etcd_client.h"
#include "cluster/pki.h"
#include "cluster/placement_controller.h"

namespace iris::tools {
namespace {

struct Connected {
  std::unique_ptr<cluster::EtcdClient> client;
  std::optional<cluster::ClusterKeys> keys;
};

// The etcd client and key names for `args`, or an error printed and nullopt.
std::optional<Connected> Connect(const ClusterArgs& args) {
  auto keys = cluster::ClusterKeys::Create(args.cluster);
  if (!keys.ok()) {
    std::cerr << "irisctl: " << keys.status().message() << "\n";
    return std::nullopt;
  }
  auto eps = cluster::ParseEndpoints(args.etcd);
  if (!eps.ok()) {
    std::cerr << "irisctl: " << eps.status().message() << "\n";
    return std::nullopt;
  }
  cluster::EtcdOptions opts;
  opts.endpoints = *eps;
  opts.tls = {args.etcd_ca, args.etcd_cert, args.etcd_key};
  auto client = cluster::EtcdClient::Create(opts);
  if (!client.ok()) {
    std::cerr << "irisctl: " << client.status().message() << "\n";
    return std::nullopt;
  }
  Connected c;
  c.client = std::move(*client);
  c.keys = *keys;
  return c;
}

std::string JoinIds(const std::vector<NodeId>& ids) {
  std::string s;
  for (NodeId id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

}  // namespace

int ClusterInit(const ClusterArgs& args) {
  auto c = Connect(args);
  if (!c) return 2;
  const cluster::ClusterConfig config{args.vnodes, args.replicas, args.initial_nodes};
  if (Status v = cluster::ValidateConfig(config); !v.ok()) {
    std::cerr << "irisctl: " << v.message() << "\n";
    return 2;
  }
  const Status s = cluster::InitClusterConfig(*c->client, *c->keys, config);
  if (!s.ok()) {
    std::cerr << "irisctl: cluster init failed: " << s.message() << "\n";
    return 1;
  }
  std::cout << "cluster " << args.cluster << ": vnodes " << args.vnodes << ", replicas "
            << args.replicas << ", initial nodes " << args.initial_nodes << " ("
            << c->keys->Config() << ")\n";
  return 0;
}

std::string FormatClusterStatus(const std::string& name, const cluster::Placement& p, bool json) {
  const auto counts = p.VnodeCounts();
  std::map<NodeId, int64_t> primary_vnodes, replica_vnodes;
  for (const auto& [sid, shard] : p.shards()) {
    auto it = counts.find(sid);
    const int64_t n = it == counts.end() ? 0 : it->second;
    primary_vnodes[shard.primary] += n;
    for (NodeId r : shard.replicas) replica_vnodes[r] += n;
  }
  if (json) {
    nlohmann::json j;
    j["cluster"] = name;
    j["revision"] = p.revision();
    j["config"] = p.configured()
                      ? nlohmann::json{{"vnodes", p.vnodes()},
                                       {"replicas", p.replicas()},
                                       {"initial_nodes", p.state().config->initial_nodes}}
                      : nlohmann::json();
    j["placement_version"] = p.version();
    j["controller"] = p.controller() ? nlohmann::json(*p.controller()) : nlohmann::json();
    j["nodes"] = nlohmann::json::array();
    for (const auto& [id, n] : p.nodes()) {
      j["nodes"].push_back({{"id", id},
                            {"up", n.alive},
                            {"role", std::string(cluster::NodeRoleName(n.role))},
                            {"client", n.client},
                            {"peer", n.peer},
                            {"admin", n.admin},
                            {"primary_vnodes", primary_vnodes[id]},
                            {"replica_vnodes", replica_vnodes[id]}});
    }
    j["shards"] = nlohmann::json::array();
    for (const auto& [sid, s] : p.shards()) {
      auto it = counts.find(sid);
      j["shards"].push_back({{"id", sid},
                             {"vnodes", it == counts.end() ? 0 : it->second},
                             {"replicas", s.replicas},
                             {"primary", s.primary},
                             {"epoch", s.epoch}});
    }
    return j.dump(2) + "\n";
  }
  std::ostringstream out;
  out << "cluster " << name << ": ";
  if (p.configured()) {
    out << "vnodes " << p.vnodes() << ", replicas " << p.replicas() << ", initial nodes "
        << p.state().config->initial_nodes;
  } else {
    out << "not initialised (irisctl cluster init)";
  }
  out << ", placement version " << p.version() << " (etcd revision " << p.revision() << ")\n";
  if (p.configured() && p.version() == 0) {
    out << "waiting for " << p.state().config->initial_nodes
        << " storage nodes before the first placement\n";
  }
  out << "controller: " << (p.controller() ? "node " + std::to_string(*p.controller()) : "none")
      << "\n";
  out << "nodes:\n";
  if (p.nodes().empty()) out << "  (none registered)\n";
  for (const auto& [id, n] : p.nodes()) {
    out << "  node " << id << "  " << (n.alive ? "up  " : "DOWN") << "  "
        << cluster::NodeRoleName(n.role) << "  client " << (n.client.empty() ? "-" : n.client)
        << "  peer " << (n.peer.empty() ? "-" : n.peer) << "  admin "
        << (n.admin.empty() ? "-" : n.admin) << "  primary vnodes " << primary_vnodes[id]
        << "  replica vnodes " << replica_vnodes[id];
    if (p.version() > 0 && n.role == cluster::NodeRole::kStorage && replica_vnodes[id] == 0) {
      out << "  (joined after the first placement: no vnodes until rebalancing, issue 16)";
    }
    out << "\n";
  }
  out << "shards:\n";
  if (p.shards().empty()) out << "  (none placed yet)\n";
  for (const auto& [sid, s] : p.shards()) {
    auto it = counts.find(sid);
    out << "  shard " << sid << "  vnodes " << (it == counts.end() ? 0 : it->second) << "  primary "
        << s.primary << "  replicas " << JoinIds(s.replicas) << "  epoch " << s.epoch << "\n";
  }
  out << "replication lag and rebalancing: not tracked before replication (issue 16)\n";
  return out.str();
}

int ClusterStatus(const ClusterArgs& args) {
  auto c = Connect(args);
  if (!c) return 2;
  auto state = cluster::ClusterView::Load(*c->client, *c->keys);
  if (!state.ok()) {
    std::cerr << "irisctl: cannot read the cluster from etcd at " << args.etcd << ": "
              << state.status().message() << "\n";
    return 1;
  }
  const cluster::Placement p(std::move(*state));
  std::cout << FormatClusterStatus(args.cluster, p, args.json);
  return 0;
}

int ClusterCerts(const ClusterArgs& args) {
  auto r = cluster::IssueNodeCertificate(args.dir, args.node_id);
  if (!r.ok()) {
    std::cerr << "irisctl: " << r.status().message() << "\n";
    return r.status().code() == StatusCode::kBadRequest ? 2 : 1;
  }
  std::cout << (r->ca_created ? "created CA " : "using CA ") << r->ca_cert << " (key " << r->ca_key
            << ")\n"
            << "node " << args.node_id << ": " << r->node_cert << ", " << r->node_key << "\n";
  return 0;
}

int ClusterDrain(const ClusterArgs&) {
  std::cerr << "irisctl: cluster drain is not supported before replication (issue 16)\n";
  return 2;
}

}  // namespace iris::tools
