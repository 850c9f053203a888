#include "harness/local_cluster.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cluster/cluster_view.h"
#include "cluster/etcd_client.h"
#include "cluster/placement.h"
#include "common/clock.h"
#include "support/wait_for.h"

namespace iris::testing {
namespace {

std::string BuildDir() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return d != nullptr ? d : ".";
}

void WriteSecret(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text << "\n";
  f.close();
  std::filesystem::permissions(
      path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

// The cluster's state as stored in etcd, or an error.
Result<cluster::ClusterState> LoadState(const std::string& endpoint, const std::string& name) {
  cluster::EtcdOptions o;
  o.endpoints = {endpoint};
  IRIS_ASSIGN_OR_RETURN(auto client, cluster::EtcdClient::Create(o));
  IRIS_ASSIGN_OR_RETURN(auto keys, cluster::ClusterKeys::Create(name));
  return cluster::ClusterView::Load(*client, keys);
}

}  // namespace

LocalCluster::LocalCluster(Options options) : options_(std::move(options)) {
  char tmpl[] = "/tmp/iris-cluster-XXXXXX";
  dir_ = mkdtemp(tmpl);
}

LocalCluster::~LocalCluster() {
  for (auto& n : nodes_) {
    if (n->running()) n->Stop(SIGKILL);
  }
  nodes_.clear();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

int LocalCluster::Irisctl(const std::vector<std::string>& args, std::string* output) {
  std::string cmd = BuildDir() + "/tools/irisctl/irisctl";
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  output->clear();
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) output->append(buf, n);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::vector<std::string> LocalCluster::NodeArgs(NodeId id, bool edge_only) const {
  const std::string n = std::to_string(id);
  std::vector<std::string> a = {"--etcd",
                                etcd_.endpoint(),
                                "--cluster",
                                options_.name,
                                "--node-id",
                                n,
                                "--peer-listen",
                                (options_.lab != nullptr ? NetworkLab::Address(static_cast<int>(id))
                                                         : std::string("127.0.0.1")) +
                                    ":0",
                                "--peer-ca",
                                dir_ + "/pki/ca.crt",
                                "--peer-cert",
                                dir_ + "/pki/node-" + n + ".crt",
                                "--peer-key",
                                dir_ + "/pki/node-" + n + ".key",
                                "--jwt-secret-file",
                                dir_ + "/jwt.secret",
                                "--admin-token-file",
                                dir_ + "/admin.token"};
  if (edge_only) a.insert(a.end(), {"--role", "edge"});
  a.insert(a.end(), options_.node_args.begin(), options_.node_args.end());
  return a;
}

void LocalCluster::Start() {
  if (options_.lab != nullptr) etcd_.set_host(NetworkLab::HubAddress());
  ASSERT_TRUE(etcd_.Start());
  WriteSecret(dir_ + "/jwt.secret", "6a7774207365637265742073686172656420627920746865206e6f646573");
  WriteSecret(dir_ + "/admin.token", "61646d696e20746f6b656e206f662074686520636c7573746572");
  const int total = options_.storage_nodes + options_.edge_nodes;
  std::string out;
  for (int i = 1; i <= total; ++i) {
    ASSERT_EQ(
        Irisctl({"cluster", "certs", "--dir", dir_ + "/pki", "--node-id", std::to_string(i)}, &out),
        0)
        << out;
  }
  ASSERT_EQ(Irisctl({"cluster", "init", "--etcd", etcd_.endpoint(), "--cluster", options_.name,
                     "--vnodes", std::to_string(options_.vnodes), "--replicas",
                     std::to_string(options_.replicas), "--initial-nodes",
                     std::to_string(options_.storage_nodes), "--shards-per-node",
                     std::to_string(options_.shards_per_node)},
                    &out),
            0)
      << out;
  for (int i = 1; i <= total; ++i) {
    nodes_.push_back(std::make_unique<ServerProcess>(
        NodeArgs(static_cast<NodeId>(i), i > options_.storage_nodes)));
    if (!options_.log_dir.empty()) {
      nodes_.back()->set_log_file(options_.log_dir + "/node-" + std::to_string(i) + ".log");
    }
    if (options_.lab != nullptr) {
      ASSERT_LE(i, options_.lab->nodes()) << "the network lab has no namespace for node " << i;
      nodes_.back()->set_network(options_.lab->Namespace(i), NetworkLab::Address(i),
                                 NetworkLab::HubAddress() + "/32");
    }
    if (options_.before_start) {
      ASSERT_NO_FATAL_FAILURE(options_.before_start(static_cast<NodeId>(i), *nodes_.back()));
    }
    ASSERT_NO_FATAL_FAILURE(nodes_.back()->Start());
  }
  WaitReady();
}

void LocalCluster::WaitReady(int timeout_ms) {
  const int64_t deadline = NowMs() + timeout_ms;
  std::string why = "not read yet";
  while (NowMs() < deadline) {
    auto state = LoadState(etcd_.endpoint(), options_.name);
    if (!state.ok()) {
      why = state.status().ToString();
      continue;
    }
    bool ready = true;
    for (int i = 1; i <= static_cast<int>(nodes_.size()); ++i) {
      if (!nodes_[i - 1]->running()) continue;
      auto it = state->nodes.find(static_cast<NodeId>(i));
      if (it == state->nodes.end() || !it->second.alive) {
        ready = false;
        why = "node " + std::to_string(i) + " not registered";
        break;
      }
    }
    const cluster::Placement p(*state);
    if (ready && p.version() == 0) {
      ready = false;
      why = "no placement";
    }
    if (ready) {
      for (int32_t v = 0; v < p.vnodes(); ++v) {
        const cluster::ShardInfo* s = p.ShardOfVnode(v);
        if (s == nullptr || s->primary == 0) {
          ready = false;
          why = "vnode " + std::to_string(v) + " not placed";
          break;
        }
      }
    }
    if (ready) {
      // Every storage node that runs is some shard's primary (the controller placed them).
      for (int i = 1; i <= options_.storage_nodes && ready; ++i) {
        if (!nodes_[i - 1]->running()) continue;
        bool primary = false;
        for (const auto& [id, s] : state->shards) primary = primary || s.primary == NodeId(i);
        if (!primary) {
          ready = false;
          why = "node " + std::to_string(i) + " owns no shard yet";
        }
      }
    }
    if (ready) return;
    // Polling etcd: each round trip paces the loop.
    struct timespec ts {
      0, 50'000'000
    };
    nanosleep(&ts, nullptr);
  }
  FAIL() << "cluster not ready within " << timeout_ms << " ms: " << why;
}

NodeId LocalCluster::AddStorageNode() {
  const auto id = static_cast<NodeId>(nodes_.size() + 1);
  std::string out;
  EXPECT_EQ(
      Irisctl({"cluster", "certs", "--dir", dir_ + "/pki", "--node-id", std::to_string(id)}, &out),
      0)
      << out;
  nodes_.push_back(std::make_unique<ServerProcess>(NodeArgs(id, false)));
  if (!options_.log_dir.empty()) {
    nodes_.back()->set_log_file(options_.log_dir + "/node-" + std::to_string(id) + ".log");
  }
  nodes_.back()->Start();
  WaitRegistered(id);
  return id;
}

Result<cluster::ClusterState> LocalCluster::State() {
  return LoadState(etcd_.endpoint(), options_.name);
}

void LocalCluster::WaitRegistered(NodeId id, int timeout_ms) {
  std::string why = "not read yet";
  const bool registered = PollUntil(
      [&] {
        auto state = LoadState(etcd_.endpoint(), options_.name);
        if (!state.ok()) {
          why = state.status().ToString();
          return false;
        }
        auto it = state->nodes.find(id);
        why = it == state->nodes.end() ? "no record" : "record not alive";
        return it != state->nodes.end() && it->second.alive;
      },
      timeout_ms, 50);
  if (!registered) FAIL() << "node " << id << " not registered within " << timeout_ms << " ms: " << why;
}

bool LocalCluster::WaitForState(const StateCheck& holds, int64_t timeout_ms, std::string* why,
                                int64_t poll_ms) {
  *why = "not read yet";
  return PollUntil(
      [&] {
        auto state = State();
        if (!state.ok()) {
          *why = state.status().ToString();
          return false;
        }
        return holds(*state, why);
      },
      timeout_ms, poll_ms);
}

NodeId LocalCluster::OwnerOf(uint64_t id) {
  auto state = LoadState(etcd_.endpoint(), options_.name);
  EXPECT_TRUE(state.ok()) << state.status().ToString();
  if (!state.ok()) return 0;
  const cluster::Placement p(std::move(state).value());
  const cluster::ShardInfo* s = p.ShardOfVnode(p.VnodeOf(id));
  return s == nullptr ? 0 : s->primary;
}

int64_t LocalCluster::ShardOf(uint64_t id) {
  auto state = LoadState(etcd_.endpoint(), options_.name);
  EXPECT_TRUE(state.ok()) << state.status().ToString();
  if (!state.ok()) return -1;
  const cluster::Placement p(std::move(state).value());
  const cluster::ShardInfo* s = p.ShardOfVnode(p.VnodeOf(id));
  return s == nullptr ? -1 : static_cast<int64_t>(s->id);
}

uint64_t LocalCluster::UserOwnedBy(NodeId node, uint64_t from) {
  auto state = LoadState(etcd_.endpoint(), options_.name);
  EXPECT_TRUE(state.ok()) << state.status().ToString();
  if (!state.ok()) return 0;
  const cluster::Placement p(std::move(state).value());
  for (uint64_t u = from; u < from + 100'000; ++u) {
    const cluster::ShardInfo* s = p.ShardOfVnode(p.VnodeOf(u));
    if (s != nullptr && s->primary == node) return u;
  }
  ADD_FAILURE() << "no user owned by node " << node << " from " << from;
  return 0;
}

}  // namespace iris::testing
