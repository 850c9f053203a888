// irisctl cluster init/status/certs/drain as a process, against a real etcd.

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cluster/membership.h"
#include "cluster/placement_controller.h"
#include "cluster/test_util.h"
#include "harness/etcd_process.h"

namespace iris::cluster {
namespace {

using iris::testing::EtcdProcess;

struct CommandResult {
  int code = -1;
  std::string out;  // stdout and stderr
};

CommandResult Shell(const std::string& cmd) {
  CommandResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string Irisctl() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return std::string(d != nullptr ? d : ".") + "/tools/irisctl/irisctl";
}

TEST(IrisctlClusterTest, InitStatusAndDrain) {
  EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start());
  const std::string base = Irisctl() + " cluster ";
  const std::string at = " --etcd " + etcd.endpoint() + " --cluster demo";
  CommandResult r = Shell(base + "init" + at + " --vnodes 512 --replicas 3");
  ASSERT_EQ(r.code, 0) << r.out;
  r = Shell(base + "init" + at + " --vnodes 512 --replicas 3");
  EXPECT_EQ(r.code, 0) << r.out;
  r = Shell(base + "init" + at + " --vnodes 4096 --replicas 3");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("already initialised"), std::string::npos) << r.out;
  r = Shell(base + "init" + at + " --replicas 0");
  EXPECT_EQ(r.code, 2) << r.out;
  r = Shell(base + "init --etcd " + etcd.endpoint() + " --cluster 'bad name'");
  EXPECT_EQ(r.code, 2) << r.out;

  EtcdOptions o;
  o.endpoints = {etcd.endpoint()};
  auto client = EtcdClient::Create(o).value();
  NodeInfo n;
  n.id = 3;
  n.client = "127.0.0.1:7443";
  n.peer = "127.0.0.1:7543";
  n.admin = "127.0.0.1:9093";
  Membership m(*client, ClusterKeys::Create("demo").value(), n, 3);
  ASSERT_TRUE(m.Start().ok());
  ASSERT_TRUE(m.WaitRegistered(10'000));

  r = Shell(base + "status" + at);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("vnodes 512, replicas 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("node 3  up"), std::string::npos) << r.out;
  r = Shell(base + "status" + at + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["vnodes"], 512);
  ASSERT_EQ(j["nodes"].size(), 1u);
  EXPECT_EQ(j["nodes"][0]["id"], 3);
  EXPECT_EQ(j["nodes"][0]["up"], true);
  EXPECT_EQ(j["nodes"][0]["peer"], "127.0.0.1:7543");
  EXPECT_EQ(j["nodes"][0]["role"], "storage");

  r = Shell(base + "status --etcd 127.0.0.1:1 --cluster demo");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("cannot read the cluster"), std::string::npos) << r.out;

  // drain: marks the node (drain/<id>); nothing is placed here, so it holds nothing already;
  // --cancel ends it. An unknown node is refused.
  r = Shell(base + "drain" + at + " --node-id 3");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("node 3 draining: replicas of 0 shard(s) left on it (drained)"),
            std::string::npos)
      << r.out;
  r = Shell(base + "status" + at);
  EXPECT_NE(r.out.find("DRAINING"), std::string::npos) << r.out;
  r = Shell(base + "drain" + at + " --node-id 3 --cancel");
  EXPECT_EQ(r.code, 0) << r.out;
  r = Shell(base + "status" + at);
  EXPECT_EQ(r.out.find("DRAINING"), std::string::npos) << r.out;
  r = Shell(base + "drain" + at + " --node-id 77");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("node 77 is not known"), std::string::npos) << r.out;
  m.Stop();
}

// --initial-nodes: nothing is placed until that many storage nodes are registered; a node
// joining afterwards is shown up with 0 vnodes while a replica moves to it.
TEST(IrisctlClusterTest, InitialNodesDelayTheFirstPlacementAndLaterNodesGetReplicasMoved) {
  EtcdProcess etcd;
  ASSERT_TRUE(etcd.Start());
  const std::string base = Irisctl() + " cluster ";
  const std::string at = " --etcd " + etcd.endpoint() + " --cluster demo";
  CommandResult r = Shell(base + "init" + at + " --vnodes 512 --initial-nodes 0");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("initial_nodes must be in 1..vnodes"), std::string::npos) << r.out;
  r = Shell(base + "init" + at + " --vnodes 512 --replicas 3 --initial-nodes 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("initial nodes 2"), std::string::npos) << r.out;

  EtcdOptions o;
  o.endpoints = {etcd.endpoint()};
  auto client = EtcdClient::Create(o).value();
  const ClusterKeys keys = ClusterKeys::Create("demo").value();
  auto node = [](NodeId id) {
    NodeInfo n;
    n.id = id;
    n.client = "127.0.0.1:" + std::to_string(7440 + id);
    n.peer = "127.0.0.1:" + std::to_string(7540 + id);
    n.admin = "127.0.0.1:" + std::to_string(9090 + id);
    return n;
  };
  PlacementController controller(*client, keys, 3, 3);
  controller.Start();
  Membership m3(*client, keys, node(3), 3);
  ASSERT_TRUE(m3.Start().ok());
  ASSERT_TRUE(iris::testing::WaitFor([&] { return controller.waiting_have() == 1; }));
  r = Shell(base + "status" + at);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("placement version 0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("waiting for 2 storage nodes before the first placement"), std::string::npos)
      << r.out;

  Membership m4(*client, keys, node(4), 3);
  ASSERT_TRUE(m4.Start().ok());
  ASSERT_TRUE(iris::testing::WaitFor([&] { return controller.placements_written() == 1; }));
  Membership m5(*client, keys, node(5), 3);
  ASSERT_TRUE(m5.Start().ok());
  // Replicated (--replicas 3): the controller moves replicas to it. No primary was ever
  // elected here (no irisd runs), so each move changes the shard's replicas at once.
  ASSERT_TRUE(iris::testing::WaitFor([&] { return controller.moves_planned() >= 1; }));
  r = Shell(base + "status" + at);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("placement version 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("node 5  up"), std::string::npos) << r.out;
  // Draining node 3 moves every replica off it (at once here, for the same reason).
  r = Shell(base + "drain" + at + " --node-id 3 --wait-s 30");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("node 3 draining: replicas of 0 shard(s) left on it (drained)"),
            std::string::npos)
      << r.out;
  r = Shell(base + "status" + at);
  EXPECT_NE(r.out.find("DRAINING"), std::string::npos) << r.out;
  r = Shell(base + "status" + at + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["initial_nodes"], 2);
  EXPECT_EQ(j["placement_version"], 1);
  ASSERT_EQ(j["nodes"].size(), 3u);
  int64_t placed = 0;
  for (const auto& n : j["nodes"]) {
    EXPECT_EQ(n["up"], true) << n;
    placed += n["primary_vnodes"].get<int64_t>();
    if (n["id"] == 3) {
      EXPECT_EQ(n["draining"], true) << n;
      EXPECT_EQ(n["primary_vnodes"], 0) << n;
      EXPECT_EQ(n["replica_vnodes"], 0) << n;
    } else {
      EXPECT_EQ(n["replica_vnodes"], 512) << n;  // two replicas per shard: both hold all
    }
  }
  r = Shell(base + "drain" + at + " --node-id 3 --cancel");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(placed, 512);
  m5.Stop();
  m4.Stop();
  m3.Stop();
  controller.Stop();
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(IrisctlClusterTest, CertsMakeOneCaAndNodeCertificatesThatVerify) {
  char tmpl[] = "/tmp/iris-pki-XXXXXX";
  const std::string dir = std::string(mkdtemp(tmpl)) + "/pki";
  CommandResult r = Shell(Irisctl() + " cluster certs --dir " + dir + " --node-id 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("created CA"), std::string::npos) << r.out;
  const std::string ca = Slurp(dir + "/ca.crt");
  r = Shell(Irisctl() + " cluster certs --dir " + dir + " --node-id 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("using CA"), std::string::npos) << r.out;
  EXPECT_EQ(Slurp(dir + "/ca.crt"), ca);  // made once

  for (const char* node : {"1", "2"}) {
    const std::string crt = dir + "/node-" + node + ".crt";
    r = Shell("openssl verify -CAfile " + dir + "/ca.crt " + crt);
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find(": OK"), std::string::npos) << r.out;
    r = Shell("openssl x509 -noout -subject -ext subjectAltName -in " + crt);
    EXPECT_NE(r.out.find(std::string("CN = iris-node-") + node), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(std::string("DNS:iris-node-") + node), std::string::npos) << r.out;
    struct stat st {};
    ASSERT_EQ(stat((dir + "/node-" + node + ".key").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  r = Shell("openssl x509 -noout -subject -text -in " + dir + "/ca.crt");
  EXPECT_NE(r.out.find("CN = iris-cluster-ca"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("prime256v1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("CA:TRUE"), std::string::npos) << r.out;
  struct stat st {};
  ASSERT_EQ(stat((dir + "/ca.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // A CA with its key missing is refused, not silently replaced.
  std::filesystem::remove(dir + "/ca.key");
  r = Shell(Irisctl() + " cluster certs --dir " + dir + " --node-id 3");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("only one of"), std::string::npos) << r.out;
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path());
}

}  // namespace
}  // namespace iris::cluster
