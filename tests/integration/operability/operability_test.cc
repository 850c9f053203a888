// Operability (issue 20): every binary reports its version, and irisd exports it as the
// iris_build_info metric; the shipped configuration file (deploy/iris.toml) runs a node and
// irisd --check-config validates files.

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "integration/harness/run_program.h"
#include "integration/harness/server_process.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

std::string BuildDir() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return d != nullptr ? d : ".";
}

// "<program> <major.minor.patch> (commit <hex or unknown>)" and nothing else.
const std::regex kVersionLine(R"(^(\S+) (\d+\.\d+\.\d+) \(commit ([0-9a-f]{7,40}|unknown)\)\n$)");

TEST(Version, EveryBinaryPrintsItsVersionAndExitsZero) {
  const std::vector<std::pair<std::string, std::string>> binaries = {
      {"irisd", BuildDir() + "/src/server/irisd"},
      {"irisctl", BuildDir() + "/tools/irisctl/irisctl"},
      {"iris", BuildDir() + "/tools/iris/iris"},
  };
  std::string version;
  for (const auto& b : binaries) {
    std::string out;
    EXPECT_EQ(RunProgram({b.second, "--version"}, &out), 0) << b.first << ": " << out;
    std::smatch m;
    ASSERT_TRUE(std::regex_match(out, m, kVersionLine)) << b.first << " printed: " << out;
    EXPECT_EQ(m[1].str(), b.first);
    // All three come from the same build: the same version.
    if (version.empty()) version = m[2].str();
    EXPECT_EQ(m[2].str(), version) << b.first;
  }
}

TEST(Version, MetricsExportBuildInfoMatchingVersionFlag) {
  std::string out;
  ASSERT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--version"}, &out), 0) << out;
  std::smatch m;
  ASSERT_TRUE(std::regex_match(out, m, kVersionLine)) << out;
  const std::string series =
      "iris_build_info{commit=\"" + m[3].str() + "\",version=\"" + m[2].str() + "\"}";

  ServerProcess server;
  server.Start();
  std::string text;
  ASSERT_EQ(AdminRequest(server.admin_port(), "GET", "/metrics", "", "", &text), 200);
  EXPECT_NE(text.find("# TYPE iris_build_info gauge"), std::string::npos) << text;
  EXPECT_NE(text.find(series + " 1\n"), std::string::npos) << "want " << series << " 1 in\n"
                                                           << text;
}

std::string SourceDir() {
  const char* d = std::getenv("IRIS_SOURCE_DIR");
  return d != nullptr ? d : "..";
}

// A file in a fresh temporary directory holding `content`; the directory goes with it.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    char tmpl[] = "/tmp/iris-config-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/iris.toml";
    std::ofstream(path_) << content;
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
};

std::string ShippedConfig() { return SourceDir() + "/deploy/iris.toml"; }

// deploy/iris.toml as shipped (data-dir /var/lib/iris, the production ports) runs a node
// serving clients once the command line overrides the data directory and the ports: flags
// given on the command line win over the file.
TEST(ConfigFile, ShippedConfigStartsANodeThatServes) {
  ServerProcess server({"--config", ShippedConfig()});
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  auto alice = TestClient::Connect(server);
  ASSERT_NE(alice, nullptr);
  alice->Login(server, 1);
  auto ack = alice->Send(1, 2, "hello", NewKey());
  EXPECT_EQ(ack.opcode, static_cast<uint8_t>(wire::Opcode::kSendAck));
}

// Every option irisd --help lists is in deploy/iris.toml, as a key or commented out.
TEST(ConfigFile, ShippedConfigNamesEveryOption) {
  std::string help;
  ASSERT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--help"}, &help), 0) << help;
  std::ifstream in(ShippedConfig());
  ASSERT_TRUE(in) << ShippedConfig();
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string file = ss.str();
  const std::regex flag_re(R"(\s--([a-z][a-z0-9-]*))");
  int options = 0;
  for (std::sregex_iterator it(help.begin(), help.end(), flag_re), end; it != end; ++it) {
    const std::string key = (*it)[1].str();
    if (key == "help" || key == "version" || key == "config" || key == "check-config") continue;
    ++options;
    const std::regex line_re("(^|\n)(# )?" + key + " = ");
    EXPECT_TRUE(std::regex_search(file, line_re)) << "deploy/iris.toml lacks '" << key << "'";
  }
  EXPECT_GT(options, 30) << help;
}

TEST(CheckConfig, AcceptsTheShippedFile) {
  std::string out;
  EXPECT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--check-config", ShippedConfig()}, &out),
            0)
      << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
  // The other spelling, and no server was started (it exited).
  EXPECT_EQ(
      RunProgram({BuildDir() + "/src/server/irisd", "--config", ShippedConfig(), "--check-config"},
                 &out),
      0)
      << out;
}

TEST(CheckConfig, UnknownKeyIsAnErrorNamingTheKey) {
  TempFile f("listen = \"127.0.0.1:7443\"\nconnections-per-ip = 5\n");
  std::string out;
  EXPECT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--check-config", f.path()}, &out), 2)
      << out;
  EXPECT_NE(out.find("unknown key 'connections-per-ip'"), std::string::npos) << out;
  EXPECT_NE(out.find("line 2"), std::string::npos) << out;
  // Starting with it fails the same way.
  EXPECT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--config", f.path()}, &out), 2) << out;
  EXPECT_NE(out.find("connections-per-ip"), std::string::npos) << out;
}

TEST(CheckConfig, SyntaxErrorNamesTheLine) {
  TempFile f("listen = \"127.0.0.1:7443\"\n\nnode-id = = 3\n");
  std::string out;
  EXPECT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--check-config", f.path()}, &out), 2)
      << out;
  EXPECT_NE(out.find("line 3"), std::string::npos) << out;
}

TEST(CheckConfig, BadValueIsAnError) {
  TempFile f("node-id = 300\n");
  std::string out;
  EXPECT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--check-config", f.path()}, &out), 2)
      << out;
  EXPECT_NE(out.find("node-id"), std::string::npos) << out;
}

TEST(CheckConfig, NeedsAFile) {
  std::string out;
  EXPECT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--check-config"}, &out), 2) << out;
  EXPECT_NE(out.find("--check-config needs a file"), std::string::npos) << out;
}

// The first reply to a HELLO with a valid token for `user` on a fresh connection from
// 127.0.0.1 (WELCOME, or the ERROR that refused it); opcode 0 when it could not connect.
client::ReceivedFrame HelloFrameFromLoopback(const ServerProcess& server, uint64_t user,
                                             std::vector<std::unique_ptr<TestClient>>* keep) {
  auto c = TestClient::Connect(server, "127.0.0.1");
  if (c == nullptr) return client::ReceivedFrame{};
  client::ReceivedFrame f = c->Hello(server.Token(user));
  keep->push_back(std::move(c));
  return f;
}

uint8_t HelloFromLoopback(const ServerProcess& server, uint64_t user,
                          std::vector<std::unique_ptr<TestClient>>* keep) {
  return HelloFrameFromLoopback(server, user, keep).opcode;
}

// The README's quick start runs one CLI command per connection against a default irisd:
// loopback is exempt from the 5-per-minute per-IP connection limit, so the sixth and
// seventh connections in a minute are served.
TEST(LoopbackExemption, DefaultIrisdServesSevenQuickConnectionsFromLoopback) {
  ServerProcess server({}, ServerProcess::Defaults::kIrisdDefaults);
  server.Start();
  std::vector<std::unique_ptr<TestClient>> clients;
  for (uint64_t user = 1; user <= 7; ++user) {
    EXPECT_EQ(HelloFromLoopback(server, user, &clients),
              static_cast<uint8_t>(wire::Opcode::kWelcome))
        << "connection " << user << " was refused";
  }
}

// The exemption off: loopback counts like any address, and the sixth connection in a
// minute is refused.
TEST(LoopbackExemption, TurnedOffTheSixthConnectionFromLoopbackIsRefused) {
  ServerProcess server({"--exempt-loopback", "false"}, ServerProcess::Defaults::kIrisdDefaults);
  server.Start();
  std::vector<std::unique_ptr<TestClient>> clients;
  for (uint64_t user = 1; user <= 5; ++user) {
    ASSERT_EQ(HelloFromLoopback(server, user, &clients),
              static_cast<uint8_t>(wire::Opcode::kWelcome))
        << "connection " << user << " was refused";
  }
  client::ReceivedFrame refused = HelloFrameFromLoopback(server, 6, &clients);
  ASSERT_EQ(refused.opcode, static_cast<uint8_t>(wire::Opcode::kError));
  v1::Error e;
  ASSERT_TRUE(e.ParseFromString(refused.payload));
  EXPECT_GT(e.retry_after_ms(), 0u) << e.message();  // the connection rate limit's answer
}

}  // namespace
}  // namespace iris::testing
