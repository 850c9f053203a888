#include "cluster/placement.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "obs/log.h"

namespace iris::cluster {

using obs::LogWarn;
namespace {

using nlohmann::json;

json ParseObj(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  return j.is_object() ? j : json();
}

bool ParseUint(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

}  // namespace

std::string_view NodeRoleName(NodeRole role) {
  return role == NodeRole::kEdge ? "edge" : "storage";
}

Result<ClusterKeys> ClusterKeys::Create(const std::string& cluster) {
  if (cluster.empty() || cluster.size() > 64) {
    return BadRequest("--cluster must be 1..64 characters");
  }
  for (char c : cluster) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') {
      return BadRequest("--cluster may contain only letters, digits, '_', '-' and '.'");
    }
  }
  return ClusterKeys("/iris/" + cluster + "/");
}

std::string ConfigToJson(const ClusterConfig& c) {
  json j{{"vnodes", c.vnodes}, {"replicas", c.replicas}, {"initial_nodes", c.initial_nodes}};
  if (c.shards_per_node != 1) j["shards_per_node"] = c.shards_per_node;  // absent: 1
  return j.dump();
}

Status ValidateConfig(const ClusterConfig& c) {
  if (c.vnodes < 1 || c.vnodes > (1 << 24)) return BadRequest("vnodes must be in 1..16777216");
  if (c.replicas < 1 || c.replicas > 7) return BadRequest("replicas must be in 1..7");
  if (c.initial_nodes < 1 || c.initial_nodes > c.vnodes) {
    return BadRequest("initial_nodes must be in 1..vnodes (" + std::to_string(c.vnodes) + ")");
  }
  if (c.shards_per_node < 1 || c.shards_per_node > 64) {
    return BadRequest("shards_per_node must be in 1..64");
  }
  if (int64_t{c.initial_nodes} * c.shards_per_node > c.vnodes) {
    return BadRequest("initial_nodes x shards_per_node must not exceed vnodes (" +
                      std::to_string(c.vnodes) + ")");
  }
  return Status::Ok();
}

Result<ClusterConfig> ParseConfig(const std::string& text) {
  const json j = ParseObj(text);
  if (!j.is_object() || !j.contains("vnodes") || !j.contains("replicas") ||
      !j["vnodes"].is_number_integer() || !j["replicas"].is_number_integer()) {
    return BadRequest("malformed cluster config: " + text);
  }
  ClusterConfig c{j["vnodes"].get<int32_t>(), j["replicas"].get<int32_t>()};
  if (j.contains("initial_nodes")) {
    if (!j["initial_nodes"].is_number_integer()) {
      return BadRequest("malformed cluster config: " + text);
    }
    c.initial_nodes = j["initial_nodes"].get<int32_t>();
  }
  if (j.contains("shards_per_node")) {
    if (!j["shards_per_node"].is_number_integer()) {
      return BadRequest("malformed cluster config: " + text);
    }
    c.shards_per_node = j["shards_per_node"].get<int32_t>();
  }
  IRIS_RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

std::string NodeToJson(const NodeInfo& n) {
  return json{{"id", n.id},
              {"peer", n.peer},
              {"client", n.client},
              {"admin", n.admin},
              {"role", std::string(NodeRoleName(n.role))},
              {"incarnation", n.incarnation}}
      .dump();
}

Result<NodeInfo> ParseNode(const std::string& text) {
  const json j = ParseObj(text);
  if (!j.is_object() || !j.contains("id") || !j["id"].is_number_unsigned()) {
    return BadRequest("malformed node record: " + text);
  }
  NodeInfo n;
  n.id = j["id"].get<NodeId>();
  n.peer = j.value("peer", "");
  n.client = j.value("client", "");
  n.admin = j.value("admin", "");
  n.incarnation = j.value("incarnation", "");
  const std::string role = j.value("role", "storage");
  if (role != "storage" && role != "edge") return BadRequest("unknown node role " + role);
  n.role = role == "edge" ? NodeRole::kEdge : NodeRole::kStorage;
  return n;
}

std::string ShardToJson(const ShardInfo& s) {
  json j{{"id", s.id}, {"replicas", s.replicas}, {"primary", s.primary}, {"epoch", s.epoch}};
  if (s.elected) j["elected"] = true;  // absent in records written before it existed
  if (!s.target.empty()) j["target"] = s.target;
  return j.dump();
}

Result<ShardInfo> ParseShard(const std::string& text) {
  const json j = ParseObj(text);
  if (!j.is_object() || !j.contains("id") || !j.contains("replicas") || !j["replicas"].is_array() ||
      !j.contains("primary") || !j.contains("epoch")) {
    return BadRequest("malformed shard record: " + text);
  }
  try {
    ShardInfo s;
    s.id = j["id"].get<ShardId>();
    s.replicas = j["replicas"].get<std::vector<NodeId>>();
    s.primary = j["primary"].get<NodeId>();
    s.epoch = j["epoch"].get<int64_t>();
    s.elected = j.value("elected", false);
    if (j.contains("target")) s.target = j["target"].get<std::vector<NodeId>>();
    return s;
  } catch (const std::exception& e) {
    return BadRequest(std::string("malformed shard record: ") + e.what());
  }
}

std::string PlacementToJson(const PlacementMap& p) {
  return json{{"version", p.version}, {"shards", p.shard_of_vnode}}.dump();
}

Result<PlacementMap> ParsePlacement(const std::string& text) {
  const json j = ParseObj(text);
  if (!j.is_object() || !j.contains("version") || !j.contains("shards") ||
      !j["shards"].is_array()) {
    return BadRequest("malformed placement record");
  }
  try {
    PlacementMap p;
    p.version = j["version"].get<int64_t>();
    p.shard_of_vnode = j["shards"].get<std::vector<ShardId>>();
    return p;
  } catch (const std::exception& e) {
    return BadRequest(std::string("malformed placement record: ") + e.what());
  }
}

Status ApplyKey(const ClusterKeys& keys, const std::string& key, const std::string& value,
                bool deleted, ClusterState* state) {
  if (key.rfind(keys.prefix(), 0) != 0) return Status::Ok();
  Status bad;
  auto malformed = [&](const Status& s) {
    LogWarn("cluster: ignoring a malformed etcd value", {{"key", key}, {"error", s.message()}});
    return s;
  };
  uint64_t num = 0;
  if (key == keys.Config()) {
    if (deleted) {
      state->config.reset();
      return Status::Ok();
    }
    auto c = ParseConfig(value);
    if (!c.ok()) return malformed(c.status());
    state->config = *c;
  } else if (key == keys.Controller()) {
    if (deleted) {
      state->controller.reset();
      return Status::Ok();
    }
    const json j = ParseObj(value);
    if (!j.is_object() || !j.contains("id") || !j["id"].is_number_unsigned()) {
      return malformed(BadRequest("malformed controller record"));
    }
    state->controller = j["id"].get<NodeId>();
  } else if (key == keys.Placement()) {
    if (deleted) {
      state->placement = PlacementMap{};
      return Status::Ok();
    }
    auto p = ParsePlacement(value);
    if (!p.ok()) return malformed(p.status());
    state->placement = std::move(*p);
  } else if (key.rfind(keys.NodesPrefix(), 0) == 0) {
    if (!ParseUint(key.substr(keys.NodesPrefix().size()), &num) || num > UINT32_MAX) {
      return malformed(BadRequest("bad node key"));
    }
    const NodeId id = static_cast<NodeId>(num);
    if (deleted) {
      auto it = state->nodes.find(id);
      if (it != state->nodes.end()) it->second.alive = false;  // remembered, down
      return Status::Ok();
    }
    auto n = ParseNode(value);
    if (!n.ok()) return malformed(n.status());
    n->id = id;
    n->alive = true;
    state->nodes[id] = std::move(*n);
  } else if (key.rfind(keys.DrainPrefix(), 0) == 0) {
    if (!ParseUint(key.substr(keys.DrainPrefix().size()), &num) || num > UINT32_MAX) {
      return malformed(BadRequest("bad drain key"));
    }
    if (deleted) {
      state->draining.erase(static_cast<NodeId>(num));
    } else {
      state->draining.insert(static_cast<NodeId>(num));
    }
  } else if (key.rfind(keys.ShardsPrefix(), 0) == 0) {
    if (!ParseUint(key.substr(keys.ShardsPrefix().size()), &num) || num > UINT32_MAX) {
      return malformed(BadRequest("bad shard key"));
    }
    if (deleted) {
      state->shards.erase(static_cast<ShardId>(num));
      return Status::Ok();
    }
    auto s = ParseShard(value);
    if (!s.ok()) return malformed(s.status());
    state->shards[static_cast<ShardId>(num)] = std::move(*s);
  } else if (key.rfind(keys.RevokedJtiPrefix(), 0) == 0) {
    const std::string jti = key.substr(keys.RevokedJtiPrefix().size());
    if (deleted) {
      state->revoked_jti.erase(jti);
      return Status::Ok();
    }
    const json j = ParseObj(value);
    if (!j.is_object() || !j.contains("until_ms") || !j["until_ms"].is_number_integer()) {
      return malformed(BadRequest("malformed jti revocation"));
    }
    state->revoked_jti[jti] = j["until_ms"].get<int64_t>();
  } else if (key.rfind(keys.RevokedUserPrefix(), 0) == 0) {
    if (!ParseUint(key.substr(keys.RevokedUserPrefix().size()), &num)) {
      return malformed(BadRequest("bad user revocation key"));
    }
    if (deleted) {
      state->revoked_users.erase(num);
      return Status::Ok();
    }
    const json j = ParseObj(value);
    if (!j.is_object() || !j.contains("before_ms") || !j["before_ms"].is_number_integer()) {
      return malformed(BadRequest("malformed user revocation"));
    }
    state->revoked_users[num] = j["before_ms"].get<int64_t>();
  }
  return Status::Ok();
}

Placement::Placement(ClusterState state) : state_(std::move(state)) {}

int32_t Placement::VnodeOf(uint64_t id) const {
  return JumpConsistentHash(UserPartitionKey(id), vnodes());
}

const ShardInfo* Placement::ShardOfVnode(int32_t vnode) const {
  if (vnode < 0 || static_cast<size_t>(vnode) >= state_.placement.shard_of_vnode.size()) {
    return nullptr;
  }
  return Shard(state_.placement.shard_of_vnode[static_cast<size_t>(vnode)]);
}

const ShardInfo* Placement::Shard(ShardId id) const {
  auto it = state_.shards.find(id);
  return it == state_.shards.end() ? nullptr : &it->second;
}

std::optional<NodeId> Placement::PrimaryOf(uint64_t id) const {
  if (!configured()) return std::nullopt;
  const ShardInfo* s = ShardOfVnode(VnodeOf(id));
  if (s == nullptr) return std::nullopt;
  return s->primary;
}

const NodeInfo* Placement::Node(NodeId id) const {
  auto it = state_.nodes.find(id);
  return it == state_.nodes.end() ? nullptr : &it->second;
}

std::map<ShardId, int32_t> Placement::VnodeCounts() const {
  std::map<ShardId, int32_t> counts;
  for (ShardId s : state_.placement.shard_of_vnode) ++counts[s];
  return counts;
}

PlacementPlan AddNodes(const ClusterConfig& config, const PlacementMap& current,
                       const std::map<ShardId, ShardInfo>& current_shards,
                       const std::vector<NodeId>& joining) {
  PlacementPlan plan;
  plan.map.version = current.version + 1;
  plan.shards = current_shards;
  const size_t v = static_cast<size_t>(config.vnodes);
  // vnodes per shard, ascending.
  std::map<ShardId, std::vector<int32_t>> members;
  for (const auto& [id, s] : current_shards) members[id];
  const bool placed = current.shard_of_vnode.size() == v && !current_shards.empty();
  if (placed) {
    for (size_t i = 0; i < v; ++i) members[current.shard_of_vnode[i]].push_back(int32_t(i));
  }
  for (NodeId node : joining) {
    const ShardId sid = members.empty() ? 0 : members.rbegin()->first + 1;
    std::vector<int32_t>& mine = members[sid];
    plan.shards[sid] = ShardInfo{sid, {node}, node, 0};
    if (members.size() == 1 && !placed) {
      for (size_t i = 0; i < v; ++i) mine.push_back(int32_t(i));
      continue;
    }
    const size_t n = members.size();
    const size_t base = v / n, extra = v % n;
    size_t index = 0;
    for (auto& [id, list] : members) {
      const size_t target = base + (index++ < extra ? 1 : 0);
      if (id == sid) continue;
      while (list.size() > target) {
        mine.push_back(list.back());
        list.pop_back();
      }
    }
    std::sort(mine.begin(), mine.end());
  }
  plan.map.shard_of_vnode.assign(v, 0);
  for (const auto& [id, list] : members) {
    for (int32_t vn : list) plan.map.shard_of_vnode[static_cast<size_t>(vn)] = id;
  }
  // Ring copysets: shard k replicated on its primary and the next r-1 primaries in shard
  // (join) order.
  std::vector<ShardId> order;
  for (const auto& [id, s] : plan.shards) order.push_back(id);
  const size_t n = order.size();
  std::set<NodeId> distinct;  // a node may lead several shards (shards_per_node)
  for (const auto& [id, s] : plan.shards) distinct.insert(s.primary);
  const size_t r = std::min<size_t>(static_cast<size_t>(config.replicas), distinct.size());
  for (size_t k = 0; k < n; ++k) {
    ShardInfo& s = plan.shards[order[k]];
    std::vector<NodeId> replicas;
    for (size_t j = 0; j < r; ++j) replicas.push_back(plan.shards[order[(k + j) % n]].primary);
    if (replicas != s.replicas || s.epoch == 0) {
      s.replicas = std::move(replicas);
      ++s.epoch;
    }
  }
  return plan;
}

namespace {

bool Has(const std::vector<NodeId>& v, NodeId n) {
  return std::find(v.begin(), v.end(), n) != v.end();
}

}  // namespace

std::optional<MovePlan> PlanMove(const ClusterState& state, const std::set<ShardId>& stuck) {
  std::map<NodeId, int64_t> load;  // counting nodes -> replicas held
  for (const auto& [id, n] : state.nodes) {
    if (n.alive && n.role == NodeRole::kStorage && state.draining.count(id) == 0) load[id] = 0;
  }
  for (const auto& [sid, s] : state.shards) {
    for (NodeId r : s.replicas) {
      auto it = load.find(r);
      if (it != load.end()) ++it->second;
    }
  }
  const auto alive = [&](NodeId n) {
    auto it = state.nodes.find(n);
    return it != state.nodes.end() && it->second.alive;
  };
  // The counting node outside `replicas` with the fewest replicas (ties: lowest id).
  const auto destination = [&](const std::vector<NodeId>& replicas) -> std::optional<NodeId> {
    std::optional<NodeId> best;
    for (const auto& [n, count] : load) {
      if (Has(replicas, n)) continue;
      if (!best || count < load.at(*best)) best = n;
    }
    return best;
  };
  const auto replace = [](std::vector<NodeId> replicas, NodeId out, NodeId in) {
    for (NodeId& r : replicas) {
      if (r == out) r = in;
    }
    return replicas;
  };
  // 1. A move in progress.
  for (const auto& [sid, s] : state.shards) {
    if (s.target.empty()) continue;
    if (stuck.count(sid) != 0) return MovePlan{sid, {}, "stuck"};
    std::vector<NodeId> added;
    bool members_kept = s.target.size() == s.replicas.size();
    for (NodeId n : s.target) {
      if (!Has(s.replicas, n)) added.push_back(n);
    }
    size_t removed = 0;
    for (NodeId n : s.replicas) {
      if (!Has(s.target, n)) ++removed;
    }
    members_kept = members_kept && added.size() == 1 && removed == 1;
    const bool fine = members_kept && load.count(added[0]) != 0;
    if (fine) return std::nullopt;  // wait for the primary to switch
    // Replan: the node moved out stays the one to move out if it still should.
    MovePlan plan{sid, {}, "replan"};
    for (NodeId n : s.replicas) {
      if (Has(s.target, n)) continue;
      if (state.draining.count(n) != 0 && alive(n)) {
        if (auto d = destination(s.replicas)) plan.target = replace(s.replicas, n, *d);
      }
    }
    return plan;  // a new target, or cancelled (balancing looks again once it is)
  }
  // 2. Drain.
  for (const auto& [sid, s] : state.shards) {
    if (stuck.count(sid) != 0) continue;
    for (NodeId n : s.replicas) {
      if (state.draining.count(n) == 0 || !alive(n)) continue;
      if (auto d = destination(s.replicas))
        return MovePlan{sid, replace(s.replicas, n, *d), "drain"};
    }
  }
  // 3. Balance.
  if (load.size() < 2) return std::nullopt;
  NodeId most = load.begin()->first, least = load.begin()->first;
  for (const auto& [n, count] : load) {
    if (count > load.at(most)) most = n;
    if (count < load.at(least)) least = n;
  }
  if (load.at(most) - load.at(least) <= 1) return std::nullopt;
  for (const auto& [sid, s] : state.shards) {
    if (stuck.count(sid) != 0) continue;
    if (Has(s.replicas, most) && !Has(s.replicas, least)) {
      return MovePlan{sid, replace(s.replicas, most, least), "balance"};
    }
  }
  return std::nullopt;
}

}  // namespace iris::cluster
