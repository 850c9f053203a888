// The files irisd generates at first start (TLS key, JWT secret, admin token) are created
// owner-only from their first byte in an owner-only data directory, are never written
// through a link planted in their place, and irisd refuses to start with a secret file that
// group or others can read, naming the file and the chmod that fixes it.

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "security/security_util.h"

namespace iris::testing {
namespace {

namespace fs = std::filesystem;

// The permission bits of `path` (following links); -1 when it cannot be stat'ed.
int ModeOf(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 07777);
}

// Runs the test body with the usual umask 022, so that a file or directory created without
// an explicit mode would come out group/other-readable (0644 / 0755) and be caught.
class SecretFilesTest : public ::testing::Test {
 protected:
  void SetUp() override { old_umask_ = umask(022); }
  void TearDown() override { umask(old_umask_); }

 private:
  mode_t old_umask_ = 0;
};

TEST_F(SecretFilesTest, FirstStartCreatesOwnerOnlyDataDirectoryAndSecrets) {
  ServerProcess server;
  const std::string dir = server.data_dir();
  // irisd is to create the data directory itself (the harness made it with mkdtemp, 0700).
  ASSERT_EQ(rmdir(dir.c_str()), 0);
  server.Start();
  EXPECT_EQ(ModeOf(dir), 0700) << dir;
  EXPECT_EQ(ModeOf(dir + "/tls"), 0700);
  for (const char* name : {"/jwt.secret", "/admin.token", "/tls/server.key"}) {
    EXPECT_EQ(ModeOf(dir + name), 0600) << name;
  }
  // The server works with them.
  ExpectServerServes(server, 7001);
}

// A link planted where a secret is to be generated is not followed: nothing is written
// where it points, and irisd does not start.
TEST_F(SecretFilesTest, GeneratedSecretIsNeverWrittenThroughALink) {
  ServerProcess server;
  const std::string dir = server.data_dir();
  const std::string target = dir + "/elsewhere/stolen.secret";
  fs::create_directories(dir + "/elsewhere");
  fs::create_symlink(target, dir + "/jwt.secret");
  std::string output;
  const int code = server.RunUntilExit(&output);
  EXPECT_NE(code, 0) << output;
  EXPECT_NE(code, -1) << "irisd started with a link in place of its jwt secret:\n" << output;
  EXPECT_FALSE(fs::exists(target)) << "the secret was written through the link";
}

TEST_F(SecretFilesTest, RefusesToStartWithAGroupReadableSecretFile) {
  ServerProcess server;
  server.Start();  // generates every file
  server.Stop();
  const std::string dir = server.data_dir();
  for (const char* name : {"/jwt.secret", "/admin.token", "/tls/server.key"}) {
    SCOPED_TRACE(name);
    const std::string path = dir + name;
    ASSERT_EQ(chmod(path.c_str(), 0644), 0);
    std::string output;
    const int code = server.RunUntilExit(&output);
    EXPECT_NE(code, 0) << output;
    EXPECT_NE(code, -1) << "irisd did not exit with a group-readable " << name << ":\n" << output;
    EXPECT_NE(output.find(path), std::string::npos) << output;
    EXPECT_NE(output.find("chmod 600 " + path), std::string::npos) << output;
    EXPECT_EQ(ModeOf(path), 0644) << "irisd is not to change the operator's file";
    ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  }
  // Owner-only again: it starts.
  server.Start();
  ExpectServerServes(server, 7101);
}

// The same for a configured key file (--jwt-key kid=path).
TEST_F(SecretFilesTest, RefusesToStartWithAWorldReadableConfiguredKeyFile) {
  ServerProcess server;
  const std::string path = server.data_dir() + "/k2.secret";
  std::ofstream(path) << "k2-secret-0123456789abcdef0123456789abcdef\n";
  ASSERT_EQ(chmod(path.c_str(), 0604), 0);
  server.args().push_back("--jwt-key");
  server.args().push_back("k2=" + path);
  std::string output;
  const int code = server.RunUntilExit(&output);
  EXPECT_NE(code, 0) << output;
  EXPECT_NE(code, -1) << output;
  EXPECT_NE(output.find("chmod 600 " + path), std::string::npos) << output;
}

}  // namespace
}  // namespace iris::testing
