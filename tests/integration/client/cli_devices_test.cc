// The `iris` CLI with linked devices (docs/protocol.md appendix 20) against a real irisd:
// a second device of a user logs in with a token for device 2 in its own state directory,
// shows its link code (iris devices code), the primary device links it (iris devices link)
// and lists both (iris devices list); a message to the user reaches both devices; what the
// second device sends reaches its recipient and shows on the primary device as sent by
// the user ("you -> USER (from your device 2)"), and the other way round.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "auth/jwt.h"
#include "cli_process.h"
#include "harness/server_process.h"

namespace iris::testing {
namespace {

using nlohmann::json;

std::vector<json> Events(const std::vector<json>& lines, const std::string& kind) {
  std::vector<json> out;
  for (const auto& j : lines) {
    if (j.value("event", "") == kind) out.push_back(j);
  }
  return out;
}

class CliDevicesTest : public ::testing::Test {
 protected:
  void SetUp() override { server_.Start(); }

  std::string Server() const { return "127.0.0.1:" + std::to_string(server_.port()); }

  // `iris login` for one device of `user` into a fresh home (one per device).
  std::string Login(uint64_t user, uint32_t device) {
    const std::string home = dirs_.Sub("u" + std::to_string(user) + "-d" + std::to_string(device));
    CliResult r = RunIris(home, {"--json", "login", "--server", Server(), "--ca",
                                 server_.cert_file(), "--token", server_.Token(user, device)});
    EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
    auto in = Events(r.Json(), "logged_in");
    EXPECT_EQ(in.size(), 1u) << r.out;
    if (!in.empty()) {
      EXPECT_EQ(in[0]["user"].get<uint64_t>(), user);
      EXPECT_EQ(in[0]["device"].get<uint32_t>(), device);
    }
    return home;
  }

  // `iris send` of one message that must be acknowledged; returns its message id.
  uint64_t SendOne(const std::string& home, uint64_t to, const std::string& text) {
    CliResult r = RunIris(home, {"--json", "send", std::to_string(to), text});
    EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
    auto sent = Events(r.Json(), "sent");
    EXPECT_EQ(sent.size(), 1u) << r.out;
    return sent.empty() ? 0 : sent[0]["message_id"].get<uint64_t>();
  }

  // `iris sync`; returns the message events.
  std::vector<json> Sync(const std::string& home) {
    CliResult r = RunIris(home, {"--json", "sync"});
    EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
    return Events(r.Json(), "message");
  }

  // This device's identity key fingerprint (iris status).
  std::string Identity(const std::string& home) {
    CliResult r = RunIris(home, {"--json", "status"});
    EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
    auto st = Events(r.Json(), "status");
    EXPECT_EQ(st.size(), 1u) << r.out;
    return st.empty() ? "" : st[0]["identity"].get<std::string>();
  }

  ServerProcess server_;
  TempDir dirs_;
};

TEST_F(CliDevicesTest, LinkedDeviceReceivesSendsAndShowsOnThePrimaryDevice) {
  constexpr uint64_t kAlice = 3101, kBob = 3102;
  const std::string alice = Login(kAlice, 1);
  const std::string laptop = Login(kAlice, 2);
  const std::string bob = Login(kBob, 1);

  // The second device shows its code...
  CliResult r = RunIris(laptop, {"--json", "devices", "code"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  auto code = Events(r.Json(), "link_code");
  ASSERT_EQ(code.size(), 1u) << r.out;
  const std::string link = code[0]["code"].get<std::string>();
  EXPECT_EQ(link.rfind("iris-link:1:" + std::to_string(kAlice) + ":2:", 0), 0u) << link;
  EXPECT_EQ(code[0]["device"].get<uint32_t>(), 2u);

  // ... which the primary device cannot show, and a linked device cannot link.
  r = RunIris(alice, {"--json", "devices", "code"});
  EXPECT_EQ(r.exit_code, 1) << r.err << r.out;
  EXPECT_NE(r.err.find("primary"), std::string::npos) << r.err;
  r = RunIris(laptop, {"--json", "devices", "link", link});
  EXPECT_EQ(r.exit_code, 1) << r.err << r.out;
  EXPECT_NE(r.err.find("primary"), std::string::npos) << r.err;

  // The primary device links it.
  r = RunIris(alice, {"--json", "devices", "link", link});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  auto linked = Events(r.Json(), "device_linked");
  ASSERT_EQ(linked.size(), 1u) << r.out;
  EXPECT_EQ(linked[0]["device"].get<uint32_t>(), 2u);
  ASSERT_EQ(linked[0]["devices"].size(), 2u) << r.out;
  EXPECT_GE(linked[0]["version"].get<uint64_t>(), 1u);

  // Both devices list both, the laptop with the key it showed.
  const std::string laptop_key = Identity(laptop);
  ASSERT_FALSE(laptop_key.empty());
  for (const std::string& home : {alice, laptop}) {
    r = RunIris(home, {"--json", "devices", "list"});
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
    auto list = Events(r.Json(), "devices");
    ASSERT_EQ(list.size(), 1u) << r.out;
    const json& devices = list[0]["devices"];
    ASSERT_EQ(devices.size(), 2u) << r.out;
    EXPECT_EQ(devices[0]["id"].get<uint32_t>(), 1u);
    EXPECT_EQ(devices[1]["id"].get<uint32_t>(), 2u);
    EXPECT_EQ(devices[0]["fingerprint"].get<std::string>(), Identity(alice));
    EXPECT_EQ(devices[1]["fingerprint"].get<std::string>(), laptop_key);
    EXPECT_EQ(devices[0]["this_device"].get<bool>(), home == alice) << r.out;
    EXPECT_EQ(devices[1]["this_device"].get<bool>(), home == laptop) << r.out;
    EXPECT_EQ(list[0]["version"], linked[0]["version"]);
  }

  // Bob's message reaches both of Alice's devices (one copy each, each with its own id).
  ASSERT_NE(SendOne(bob, kAlice, "to both of your devices"), 0u);
  uint64_t on_laptop = 0;  // the laptop's copy
  for (const std::string& home : {alice, laptop}) {
    auto got = Sync(home);
    ASSERT_EQ(got.size(), 1u) << home;
    if (home == laptop) on_laptop = got[0]["id"].get<uint64_t>();
    EXPECT_EQ(got[0]["from"].get<uint64_t>(), kBob);
    EXPECT_EQ(got[0]["text"], "to both of your devices");
    EXPECT_TRUE(got[0]["decrypted"].get<bool>());
    EXPECT_FALSE(got[0].contains("outgoing")) << got[0].dump();
  }

  // The laptop answers: Bob gets it from Alice's device 2...
  ASSERT_NE(SendOne(laptop, kBob, "from the laptop"), 0u);
  auto got = Sync(bob);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0]["from"].get<uint64_t>(), kAlice);
  EXPECT_EQ(got[0]["text"], "from the laptop");
  EXPECT_TRUE(got[0]["decrypted"].get<bool>());
  EXPECT_EQ(got[0].value("sender_device", 1u), 2u) << got[0].dump();
  EXPECT_FALSE(got[0].contains("outgoing")) << got[0].dump();

  // ... and the primary device shows it as sent by Alice (a transcript).
  got = Sync(alice);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0].value("outgoing", false)) << got[0].dump();
  EXPECT_EQ(got[0]["from"].get<uint64_t>(), kAlice);
  EXPECT_EQ(got[0]["to"].get<uint64_t>(), kBob);
  EXPECT_EQ(got[0]["sender_device"].get<uint32_t>(), 2u);
  EXPECT_EQ(got[0]["text"], "from the laptop");

  // The other way round, in the text output: the primary device's message shows on the
  // laptop as "you -> BOB (from your device 1)", and is not Bob's to mark read there.
  ASSERT_NE(SendOne(alice, kBob, "from the primary"), 0u);
  r = RunIris(laptop, {"sync"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(
      r.out.find("you -> " + std::to_string(kBob) + " (from your device 1): from the primary"),
      std::string::npos)
      << r.out;
  got = Sync(bob);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0]["text"], "from the primary");
  r = RunIris(laptop, {"--json", "read", std::to_string(kBob)});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  auto read = Events(r.Json(), "read");
  ASSERT_EQ(read.size(), 1u) << r.out;
  EXPECT_EQ(read[0]["message_ids"].get<std::vector<uint64_t>>(), std::vector<uint64_t>{on_laptop})
      << "only Bob's message is read: the transcripts are Alice's own";

  // The primary device removes the laptop: the laptop's next connection is refused with
  // DEVICE_REMOVED, explained, and the list shows the primary alone.
  r = RunIris(alice, {"--json", "devices", "remove", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  r = RunIris(laptop, {"sync"});
  EXPECT_EQ(r.exit_code, 2) << r.err << r.out;  // could not connect
  EXPECT_NE((r.out + r.err).find("removed from the account"), std::string::npos)
      << r.err << r.out;
  r = RunIris(alice, {"--json", "devices", "list"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  auto left = Events(r.Json(), "devices");
  ASSERT_EQ(left.size(), 1u) << r.out;
  EXPECT_EQ(left[0]["devices"].size(), 1u) << r.out;
}

}  // namespace
}  // namespace iris::testing
