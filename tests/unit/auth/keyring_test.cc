#include "auth/keyring.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace iris::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kSecret32 = "0123456789abcdef0123456789ABCDEF";  // 32 bytes

// A fresh temporary directory, removed with its contents at the end of the test.
class SecretFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "iris-auth-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out << content;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(SecretFileTest, StripsOneTrailingNewline) {
  auto r = ReadSecretFile(Write("s", kSecret32 + "\n"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, kSecret32);
}

TEST_F(SecretFileTest, KeepsContentWithoutNewline) {
  auto r = ReadSecretFile(Write("s", kSecret32));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, kSecret32);
}

TEST_F(SecretFileTest, StripsOnlyOneNewline) {
  auto r = ReadSecretFile(Write("s", kSecret32 + "\n\n"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, kSecret32 + "\n");
}

TEST_F(SecretFileTest, KeepsCarriageReturn) {
  auto r = ReadSecretFile(Write("s", kSecret32 + "\r\n"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, kSecret32 + "\r");
}

TEST_F(SecretFileTest, HexTextIsTheKeyItself) {
  const std::string hex(64, 'a');
  auto r = ReadSecretFile(Write("s", hex + "\n"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 64u);
}

TEST_F(SecretFileTest, RejectsShortSecretWithoutRevealingIt) {
  const std::string short_secret = "tooshort-secret-0123456789abcde";  // 31 bytes
  ASSERT_EQ(short_secret.size(), 31u);
  auto r = ReadSecretFile(Write("s", short_secret + "\n"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kBadRequest);
  EXPECT_THAT(r.status().message(), HasSubstr("31 bytes"));
  EXPECT_THAT(r.status().message(), Not(HasSubstr(short_secret)));
}

TEST_F(SecretFileTest, RejectsEmptyFile) {
  auto r = ReadSecretFile(Write("s", "\n"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kBadRequest);
}

TEST_F(SecretFileTest, MissingFileIsNotFound) {
  auto r = ReadSecretFile((dir_ / "absent").string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
}

TEST_F(SecretFileTest, RejectsHugeFile) {
  auto r = ReadSecretFile(Write("s", std::string(kMaxSecretFileBytes + 1, 'x')));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kBadRequest);
}

TEST(KeyringTest, FindsKeysByKid) {
  Keyring k;
  ASSERT_TRUE(k.AddKey("", kSecret32).ok());
  ASSERT_TRUE(k.AddKey("2024-06", kSecret32 + "x").ok());
  ASSERT_NE(k.Find(""), nullptr);
  EXPECT_EQ(*k.Find(""), kSecret32);
  ASSERT_NE(k.Find("2024-06"), nullptr);
  EXPECT_EQ(*k.Find("2024-06"), kSecret32 + "x");
  EXPECT_EQ(k.Find("2024-07"), nullptr);
  EXPECT_EQ(k.size(), 2u);
}

TEST(KeyringTest, RejectsShortSecret) {
  Keyring k;
  Status s = k.AddKey("a", kSecret32.substr(0, 31));
  EXPECT_EQ(s.code(), StatusCode::kBadRequest);
  EXPECT_THAT(s.message(), Not(HasSubstr(kSecret32.substr(0, 31))));
  EXPECT_EQ(k.Find("a"), nullptr);
}

TEST(KeyringTest, RejectsDuplicateKid) {
  Keyring k;
  ASSERT_TRUE(k.AddKey("a", kSecret32).ok());
  EXPECT_EQ(k.AddKey("a", kSecret32 + "y").code(), StatusCode::kBadRequest);
  EXPECT_EQ(*k.Find("a"), kSecret32);
}

TEST(KeyringTest, RejectsOverlongKid) {
  Keyring k;
  EXPECT_EQ(k.AddKey(std::string(kMaxKidBytes + 1, 'k'), kSecret32).code(),
            StatusCode::kBadRequest);
  EXPECT_TRUE(k.AddKey(std::string(kMaxKidBytes, 'k'), kSecret32).ok());
}

TEST(KeyringTest, MoveAssignmentReplacesKeys) {
  Keyring a;
  ASSERT_TRUE(a.AddKey("old", kSecret32).ok());
  Keyring b;
  ASSERT_TRUE(b.AddKey("new", kSecret32 + "n").ok());
  a = std::move(b);
  EXPECT_EQ(a.Find("old"), nullptr);
  ASSERT_NE(a.Find("new"), nullptr);
  EXPECT_EQ(*a.Find("new"), kSecret32 + "n");
}

}  // namespace
}  // namespace iris::auth
