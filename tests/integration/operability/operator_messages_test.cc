// Operability (issue 20): error messages that say what to do, and the operator's log lines.
// Every test runs the real binaries (irisd, irisctl) and checks what they print and their
// exit codes.

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "integration/harness/run_program.h"
#include "integration/harness/server_process.h"
#include "support/wait_for.h"

namespace iris::testing {
namespace {

std::string BuildDir() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return d != nullptr ? d : ".";
}
std::string Irisd() { return BuildDir() + "/src/server/irisd"; }
std::string Irisctl() { return BuildDir() + "/tools/irisctl/irisctl"; }

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A file under /tmp, removed at the end of the test.
class TempFile {
 public:
  explicit TempFile(const std::string& content = "") {
    char tmpl[] = "/tmp/iris-ops-XXXXXX";
    const int fd = mkstemp(tmpl);
    path_ = tmpl;
    if (fd >= 0) {
      if (!content.empty()) (void)!write(fd, content.data(), content.size());
      close(fd);
    }
  }
  ~TempFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// --- data directory ---------------------------------------------------------------------

TEST(DataDirectory, InUseByAnotherIrisdNamesItsPidAndLogsNoStoppingLines) {
  ServerProcess first;
  first.Start();
  ASSERT_FALSE(HasFatalFailure());
  std::string out;
  const int rc = RunProgram({Irisd(), "--data-dir", first.data_dir(), "--listen", "127.0.0.1:0",
                             "--admin-listen", "127.0.0.1:0"},
                            &out);
  EXPECT_EQ(rc, 1) << out;
  const std::string want = "data directory " + first.data_dir() +
                           " is in use by another irisd (pid " + std::to_string(first.pid()) + ")";
  EXPECT_NE(out.find(want), std::string::npos) << "want: " << want << "\nin:\n" << out;
  EXPECT_NE(out.find("another --data-dir"), std::string::npos) << out;  // what to do
  // The error is the last word: nothing announces a stop of a node that never started.
  EXPECT_EQ(out.find("irisd stopping"), std::string::npos) << out;
  EXPECT_EQ(out.find("irisd stopped"), std::string::npos) << out;
  // The first node is untouched.
  EXPECT_EQ(AdminRequest(first.admin_port(), "GET", "/readyz", "", "", &out), 200);
}

TEST(DataDirectory, NotWritableSaysWhyAndWhoOwnsIt) {
  char tmpl[] = "/tmp/iris-ro-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  int run_as = -1;
  if (geteuid() == 0) {
    // Root writes anywhere: run irisd as nobody on a directory that stays root's (0700).
    run_as = 65534;
  } else {
    ASSERT_EQ(chmod(dir.c_str(), 0500), 0);
  }
  std::string out;
  const int rc = RunProgram(
      {Irisd(), "--data-dir", dir, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"},
      &out, 20'000, run_as);
  chmod(dir.c_str(), 0700);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  ASSERT_NE(rc, 126) << "could not switch to uid " << run_as;
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("data directory " + dir + " is not writable: Permission denied"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("irisd runs as uid " + std::to_string(run_as >= 0 ? run_as : geteuid())),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(dir + " is owned by uid " + std::to_string(geteuid())), std::string::npos)
      << out;
  EXPECT_EQ(out.find("irisd stopping"), std::string::npos) << out;
}

// --- configuration file -----------------------------------------------------------------

TEST(ConfigErrors, SyntaxErrorNamesTheKeyAndLine) {
  TempFile f("listen = \"127.0.0.1:7443\"\n\nnode-id = = 3\n");
  std::string out;
  EXPECT_EQ(RunProgram({Irisd(), "--check-config", f.path()}, &out), 2) << out;
  EXPECT_NE(out.find("line 3, key 'node-id'"), std::string::npos) << out;
}

TEST(ConfigErrors, BadValueNamesTheFileKeyAndLine) {
  TempFile f("listen = \"127.0.0.1:7443\"\nloops = \"many\"\n");
  std::string out;
  EXPECT_EQ(RunProgram({Irisd(), "--check-config", f.path()}, &out), 2) << out;
  EXPECT_NE(out.find("config " + f.path() + ", line 2, key 'loops'"), std::string::npos) << out;
  // The same flag on the command line is the command line's error, not the file's.
  EXPECT_EQ(RunProgram({Irisd(), "--check-config", f.path(), "--node-id", "300"}, &out), 2) << out;
  EXPECT_EQ(out.find("key 'node-id'"), std::string::npos) << out;
}

// --- irisctl ----------------------------------------------------------------------------

TEST(IrisctlAddress, AcceptsAnHttpUrlForTheAdminAddress) {
  ServerProcess server;
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  std::string out;
  const std::string url = "http://127.0.0.1:" + std::to_string(server.admin_port()) + "/";
  EXPECT_EQ(RunProgram({Irisctl(), "health", "--admin", url}, &out), 0) << out;
  EXPECT_NE(out.find("healthz: 200"), std::string::npos) << out;
}

TEST(IrisctlAddress, RefusesOtherUrlsSayingWhatItWants) {
  std::string out;
  EXPECT_EQ(RunProgram({Irisctl(), "health", "--admin", "https://127.0.0.1:1/"}, &out), 2) << out;
  EXPECT_NE(out.find("--admin wants host:port"), std::string::npos) << out;
  EXPECT_NE(out.find("plain HTTP"), std::string::npos) << out;
}

TEST(IrisctlAddress, HealthAtTheClientTlsPortSaysWhereTheAdminApiIs) {
  ServerProcess server;
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  std::string out;
  const std::string tls = "127.0.0.1:" + std::to_string(server.port());
  EXPECT_EQ(RunProgram({Irisctl(), "health", "--admin", tls}, &out), 1) << out;
  EXPECT_NE(out.find("client TLS port"), std::string::npos) << out;
  EXPECT_NE(out.find("--admin-listen"), std::string::npos) << out;
}

// --- metrics for the operator's alerts --------------------------------------------------

TEST(DiskMetrics, FreeAndTotalBytesOfTheDataDirectorysFilesystem) {
  ServerProcess server;
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  const std::optional<double> free_bytes = FreshMetric(server, "iris_disk_free_bytes");
  const std::optional<double> size_bytes = FreshMetric(server, "iris_disk_size_bytes");
  ASSERT_TRUE(free_bytes.has_value());
  ASSERT_TRUE(size_bytes.has_value());
  EXPECT_GT(*free_bytes, 0);
  EXPECT_LE(*free_bytes, *size_bytes);
}

// --- operator log lines -----------------------------------------------------------------

// The log line (a JSON object) of `log` containing every one of `parts`, or "".
std::string FindLine(const std::string& log, const std::vector<std::string>& parts) {
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    bool all = true;
    for (const auto& p : parts) all = all && line.find(p) != std::string::npos;
    if (all) return line;
  }
  return "";
}

TEST(OperatorLog, AdminAuthFailureAndRevocationAreLoggedWithTheirSource) {
  TempFile log;
  ServerProcess server;
  server.set_log_file(log.path());
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  const std::string wrong = "not-the-admin-token-0123456789";
  std::string resp;
  ASSERT_EQ(
      AdminRequest(server.admin_port(), "POST", "/v1/revoke", wrong, R"({"jti":"j-ops-1"})", &resp),
      401)
      << resp;
  ASSERT_EQ(AdminRequest(server.admin_port(), "POST", "/v1/revoke", server.admin_token(),
                         R"({"jti":"j-ops-1"})", &resp),
            200)
      << resp;
  ASSERT_EQ(AdminRequest(server.admin_port(), "POST", "/v1/revoke", server.admin_token(),
                         R"({"user":42})", &resp),
            200)
      << resp;
  std::string refused, revoked, revoked_user;
  EXPECT_TRUE(PollUntil(
      [&] {
        const std::string text = ReadAll(log.path());
        refused = FindLine(text, {R"("level":"warn")", R"("msg":"admin request refused)",
                                  R"("source":"127.0.0.1:)", R"("path":"/v1/revoke")"});
        revoked = FindLine(
            text, {R"("msg":"revoked a token")", R"("jti":"j-ops-1")", R"("source":"127.0.0.1:)"});
        revoked_user = FindLine(text, {R"("msg":"revoked a user's tokens")", R"("user":42)",
                                       R"("source":"127.0.0.1:)"});
        return !refused.empty() && !revoked.empty() && !revoked_user.empty();
      },
      10'000, 20))
      << ReadAll(log.path());
  // No secret in the log: neither the token sent nor the real one.
  const std::string text = ReadAll(log.path());
  EXPECT_EQ(text.find(wrong), std::string::npos) << refused;
  EXPECT_EQ(text.find(server.admin_token()), std::string::npos);
}

TEST(OperatorLog, RepeatedAdminAuthFailuresAreRateLimited) {
  TempFile log;
  ServerProcess server;
  server.set_log_file(log.path());
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  std::string resp;
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(AdminRequest(server.admin_port(), "POST", "/v1/revoke", "", "{}", &resp), 401);
  }
  // One line for the burst (the next comes at most 10 s later, saying how many it held back).
  int lines = 0;
  std::istringstream in(ReadAll(log.path()));
  for (std::string line; std::getline(in, line);) {
    if (line.find("admin request refused") != std::string::npos) ++lines;
  }
  EXPECT_GE(lines, 1);
  EXPECT_LE(lines, 2);  // generous: a 10 s boundary may fall inside the burst
}

}  // namespace
}  // namespace iris::testing
