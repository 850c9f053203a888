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
  m.Start();
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

  r = Shell(base + "drain" + at + " --node-id 3");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("not supported before replication (issue 16)"), std::string::npos);
  m.Stop();
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
