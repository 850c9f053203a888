#include "cluster_commands.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

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
  const cluster::ClusterConfig config{args.vnodes, args.replicas, args.initial_nodes,
                                      args.shards_per_node};
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
            << args.replicas << ", initial nodes " << args.initial_nodes << ", shards per node "
            << args.shards_per_node << " (" << c->keys->Config() << ")\n";
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
                                       {"initial_nodes", p.state().config->initial_nodes},
                                       {"shards_per_node", p.state().config->shards_per_node}}
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
                            {"draining", p.Draining(id)},
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
                             {"epoch", s.epoch},
                             {"target", s.target}});
    }
    return j.dump(2) + "\n";
  }
  std::ostringstream out;
  out << "cluster " << name << ": ";
  if (p.configured()) {
    out << "vnodes " << p.vnodes() << ", replicas " << p.replicas() << ", initial nodes "
        << p.state().config->initial_nodes;
    if (p.state().config->shards_per_node != 1) {
      out << ", shards per node " << p.state().config->shards_per_node;
    }
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
    if (p.Draining(id)) out << "  DRAINING";
    if (p.version() > 0 && n.role == cluster::NodeRole::kStorage && replica_vnodes[id] == 0 &&
        !p.Draining(id)) {
      out << (p.replicas() > 1 ? "  (no replicas yet: the controller moves some to it)"
                               : "  (joined after the first placement: holds no vnodes)");
    }
    out << "\n";
  }
  out << "shards:\n";
  if (p.shards().empty()) out << "  (none placed yet)\n";
  for (const auto& [sid, s] : p.shards()) {
    auto it = counts.find(sid);
    out << "  shard " << sid << "  vnodes " << (it == counts.end() ? 0 : it->second) << "  primary "
        << s.primary << "  replicas " << JoinIds(s.replicas) << "  epoch " << s.epoch;
    if (!s.target.empty()) out << "  moving to " << JoinIds(s.target);
    out << "\n";
  }
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

namespace {

// Shards that name `node` as a replica or in a move's target.
std::vector<cluster::ShardId> ShardsOn(const cluster::Placement& p, NodeId node) {
  std::vector<cluster::ShardId> out;
  for (const auto& [sid, s] : p.shards()) {
    const bool in = std::find(s.replicas.begin(), s.replicas.end(), node) != s.replicas.end() ||
                    std::find(s.target.begin(), s.target.end(), node) != s.target.end();
    if (in) out.push_back(sid);
  }
  return out;
}

}  // namespace

int ClusterDrain(const ClusterArgs& args) {
  auto c = Connect(args);
  if (!c) return 2;
  auto state = cluster::ClusterView::Load(*c->client, *c->keys);
  if (!state.ok()) {
    std::cerr << "irisctl: cannot read the cluster from etcd at " << args.etcd << ": "
              << state.status().message() << "\n";
    return 1;
  }
  {
    const cluster::Placement p(std::move(*state));
    if (!p.configured() || p.replicas() < 2) {
      std::cerr << "irisctl: cluster " << args.cluster
                << " is not replicated (--replicas 1): its data cannot move off a node\n";
      return 2;
    }
    if (p.Node(args.node_id) == nullptr) {
      std::cerr << "irisctl: node " << args.node_id << " is not known in cluster " << args.cluster
                << "\n";
      return 2;
    }
  }
  const std::string key = c->keys->Drain(args.node_id);
  if (args.cancel) {
    auto r = c->client->Delete(key);
    if (!r.ok()) {
      std::cerr << "irisctl: " << r.status().message() << "\n";
      return 1;
    }
    std::cout << "node " << args.node_id << ": no longer draining\n";
    return 0;
  }
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  auto put = c->client->Put(key, nlohmann::json{{"since_ms", now_ms}}.dump());
  if (!put.ok()) {
    std::cerr << "irisctl: " << put.status().message() << "\n";
    return 1;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args.wait_s);
  size_t last = SIZE_MAX;
  for (;;) {
    auto now = cluster::ClusterView::Load(*c->client, *c->keys);
    if (!now.ok()) {
      std::cerr << "irisctl: " << now.status().message() << "\n";
      return 1;
    }
    const cluster::Placement p(std::move(*now));
    const size_t left = ShardsOn(p, args.node_id).size();
    if (left != last) {
      std::cout << "node " << args.node_id << " draining: replicas of " << left
                << " shard(s) left on it" << (left == 0 ? " (drained)" : "") << "\n"
                << std::flush;
      last = left;
    }
    if (left == 0) return 0;
    if (std::chrono::steady_clock::now() >= deadline) {
      if (args.wait_s > 0) {
        std::cerr << "irisctl: node " << args.node_id << " still holds replicas of " << left
                  << " shard(s) after " << args.wait_s << " s (see irisctl cluster status)\n";
        return 1;
      }
      std::cout << "the placement controller moves them one shard at a time; follow it with "
                   "irisctl cluster status (or drain --wait-s N)\n";
      return 0;
    }
    // A poll of etcd, not synchronisation: the next look at the shard records.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

}  // namespace iris::tools
