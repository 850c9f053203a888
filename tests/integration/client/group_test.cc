// End-to-end encrypted groups (Sender Keys) with the client library against a real irisd
// (docs/protocol.md, "Client-side group encryption"): a 256-member group in which every
// member decrypts every message of several senders, and sender-key rotation: after a
// member is removed, the members who stay make new sender keys, so the removed member's
// copy of the old keys does not decrypt what they send next.
//
// The 256 members are 256 real Clients (each its own TLS connection, I/O thread and SQLite
// state, kept on /dev/shm when it exists so that fsync is cheap) in this one process.

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "client/e2ee/message_cipher.h"
#include "client/local_store.h"
#include "harness/server_process.h"
#include "iris/client/client.h"
#include "support/wait_for.h"

namespace iris::testing {
namespace {

using namespace iris::client;

constexpr uint64_t kFirstUser = 70'001;

// What one member saw (only what the test checks), filled on the member's I/O thread.
struct Member {
  std::mutex mu;
  bool live = false;
  uint64_t group_from_create = 0;  // GroupInfoEvent of request `create_request`
  uint64_t create_request = 0;
  std::set<std::pair<uint64_t, std::string>> group_texts;  // (sender, text) decrypted
  std::vector<std::string> group_failures;                 // undecryptable group messages
  std::vector<std::string> direct_texts;
  std::map<std::string, uint64_t> acked;  // local id -> message id
  std::vector<std::string> send_failures;
  uint64_t events_removed_self = 0;

  void On(const Event& e) {
    std::lock_guard<std::mutex> l(mu);
    if (const auto* s = std::get_if<StateEvent>(&e)) {
      if (s->state == SessionState::kLive) live = true;
    } else if (const auto* m = std::get_if<MessageEvent>(&e)) {
      if (m->group_id == 0) {
        direct_texts.push_back(m->text);
      } else if (m->decrypted) {
        group_texts.insert({m->sender, m->text});
      } else {
        group_failures.push_back(m->error);
      }
    } else if (const auto* g = std::get_if<GroupInfoEvent>(&e)) {
      if (g->request != 0 && g->request == create_request) group_from_create = g->group_id;
    } else if (const auto* a = std::get_if<SendAckedEvent>(&e)) {
      if (!a->receipt) acked[a->local_id] = a->message_id;
    } else if (const auto* f = std::get_if<SendFailedEvent>(&e)) {
      send_failures.push_back(f->status.message());
    } else if (const auto* ge = std::get_if<GroupEvent>(&e)) {
      if (!ge->member) ++events_removed_self;
    }
  }
};

class GroupE2eeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // 256 members hold about 1,500 descriptors (socket, database files, lock, eventfd):
    // raise the soft limit to the hard one when it is lower.
    rlimit nofile{};
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < 4096 &&
        nofile.rlim_cur < nofile.rlim_max) {
      nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 4096);
      setrlimit(RLIMIT_NOFILE, &nofile);
    }
    server_.Start();
    const std::string base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/iris-group-test-XXXXXX";
    dir_ = mkdtemp(tmpl.data());
  }
  void TearDown() override {
    clients_.clear();
    std::filesystem::remove_all(dir_);
  }

  std::string StateDir(size_t i) const { return dir_ + "/" + std::to_string(i); }

  // Opens and starts `n` members (users kFirstUser..), waiting until all are live with
  // their keys published.
  void StartMembers(size_t n) {
    members_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      members_[i] = std::make_unique<Member>();
      ClientOptions o;
      o.state_dir = StateDir(i);
      o.server.host = "127.0.0.1";
      o.server.port = server_.port();
      o.server.ca_file = server_.cert_file();
      o.token = server_.Token(kFirstUser + i);
      o.prekey_pool_size = 8;  // each member receives a first message from a few senders only
      o.prekey_low_water = 2;
      o.delivery_receipts = false;
      o.seed = 0x5eed + i;
      Member* m = members_[i].get();
      o.on_event = [m](const Event& e) { m->On(e); };
      auto c = Client::Open(std::move(o));
      ASSERT_TRUE(c.ok()) << c.status().message();
      clients_.push_back(std::move(*c));
      clients_.back()->Start();
    }
    ASSERT_TRUE(PollUntil(
        [&] {
          for (size_t i = 0; i < n; ++i) {
            if (!clients_[i]->KeysPublished() || !clients_[i]->Settled()) return false;
          }
          return true;
        },
        60'000, 20))
        << "members did not all come up";
  }

  // The owner (member 0) creates an E2EE group of members 1..n-1; waits until every member
  // in `must_know` has recorded it (its GROUP_EVENT arrived).
  uint64_t CreateGroup(size_t n, const std::vector<size_t>& must_know) {
    std::vector<uint64_t> others;
    for (size_t i = 1; i < n; ++i) others.push_back(kFirstUser + i);
    uint64_t request = 0;
    {
      // Held across the call: the answer may come before CreateGroup returns.
      std::lock_guard<std::mutex> l(members_[0]->mu);
      request = clients_[0]->CreateGroup(others, "test group");
      members_[0]->create_request = request;
    }
    uint64_t group = 0;
    EXPECT_TRUE(PollUntil([&] {
      std::lock_guard<std::mutex> l(members_[0]->mu);
      group = members_[0]->group_from_create;
      return group != 0;
    }));
    for (size_t i : must_know) {
      EXPECT_TRUE(PollUntil([&] { return Knows(i, group, kFirstUser + n - 1); }))
          << "member " << i << " never learnt the group";
    }
    return group;
  }

  // Whether member i's local record of `group` lists (or, with present=false, no longer
  // lists) `user`.
  bool Knows(size_t i, uint64_t group, uint64_t user, bool present = true) {
    for (const GroupRecord& g : clients_[i]->Groups()) {
      if (g.id != group) continue;
      const bool has = std::find(g.members.begin(), g.members.end(), user) != g.members.end();
      return has == present;
    }
    return false;
  }

  // For failure messages: how far the members got, and the first problems reported.
  std::string Summary(const std::vector<size_t>& senders) {
    size_t texts = 0, failures = 0;
    std::string first_failure, sender_problems;
    for (size_t i = 0; i < members_.size(); ++i) {
      std::lock_guard<std::mutex> l(members_[i]->mu);
      texts += members_[i]->group_texts.size();
      failures += members_[i]->group_failures.size();
      if (first_failure.empty() && !members_[i]->group_failures.empty()) {
        first_failure = members_[i]->group_failures[0];
      }
    }
    for (size_t s : senders) {
      std::lock_guard<std::mutex> l(members_[s]->mu);
      sender_problems +=
          " sender " + std::to_string(s) + ": " +
          std::to_string(members_[s]->send_failures.size()) + " send failures" +
          (members_[s]->send_failures.empty() ? "" : " (" + members_[s]->send_failures[0] + ")") +
          ", " + std::to_string(clients_[s]->PendingSends().size()) + " queued;";
    }
    return std::to_string(texts) + " decrypted, " + std::to_string(failures) + " undecryptable (" +
           first_failure + ");" + sender_problems;
  }

  size_t Received(size_t i, uint64_t sender, const std::string& text) {
    std::lock_guard<std::mutex> l(members_[i]->mu);
    return members_[i]->group_texts.count({sender, text});
  }

  ServerProcess server_;
  std::string dir_;
  std::vector<std::unique_ptr<Member>> members_;
  std::vector<std::unique_ptr<Client>> clients_;
};

// RFC-001 §8: an E2EE group of 256 members who never talked before; 4 senders (the owner
// and three members) send 3 messages each; every other member decrypts all 12 (each
// sender's key reaches 255 members over pairwise sessions it first has to start, each
// message is one group SEND).
TEST_F(GroupE2eeTest, EveryOneOf256MembersDecryptsEveryMessage) {
  const auto start = std::chrono::steady_clock::now();
  constexpr size_t kMembers = 256;
  const std::vector<size_t> senders = {0, 1, 128, 255};
  constexpr int kPerSender = 3;
  StartMembers(kMembers);
  if (HasFatalFailure()) return;
  const auto up = std::chrono::steady_clock::now();
  std::cerr << "256 members up in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(up - start).count() << " ms\n";
  // No member has talked to another: each sender's first group message needs a pairwise
  // session with all 255 others, so it fetches 255 bundles, naming the group
  // (KeysFetch.group_id: 50 at once and 294 in a burst; an ordinary fetch gets 30 a minute,
  // about 8 minutes for 255).
  const uint64_t group = CreateGroup(kMembers, senders);
  ASSERT_NE(group, 0u);
  auto groups = clients_[0]->Groups();
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].name, "test group");
  EXPECT_EQ(groups[0].members.size(), kMembers);
  EXPECT_EQ(groups[0].owner, kFirstUser);

  for (int k = 0; k < kPerSender; ++k) {
    for (size_t s : senders) {
      auto id = clients_[s]->SendGroup(
          group, "m" + std::to_string(k) + " from " + std::to_string(kFirstUser + s));
      ASSERT_TRUE(id.ok()) << id.status().message();
    }
  }
  ASSERT_TRUE(PollUntil(
      [&] {
        for (size_t i = 0; i < kMembers; ++i) {
          std::lock_guard<std::mutex> l(members_[i]->mu);
          const size_t own = std::count(senders.begin(), senders.end(), i) * kPerSender;
          if (members_[i]->group_texts.size() + own < senders.size() * kPerSender) return false;
        }
        return true;
      },
      45'000, 20))
      << "not every member decrypted every message: " << Summary(senders);
  for (size_t i = 0; i < kMembers; ++i) {
    for (size_t s : senders) {
      if (s == i) continue;
      for (int k = 0; k < kPerSender; ++k) {
        EXPECT_EQ(Received(i, kFirstUser + s,
                           "m" + std::to_string(k) + " from " + std::to_string(kFirstUser + s)),
                  1u)
            << "member " << i << " sender " << s << " message " << k;
      }
    }
    std::lock_guard<std::mutex> l(members_[i]->mu);
    EXPECT_TRUE(members_[i]->group_failures.empty())
        << "member " << i << ": " << members_[i]->group_failures[0];
  }
  const auto done = std::chrono::steady_clock::now();
  std::cerr << "256-member group: members up in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(up - start).count()
            << " ms; create, 4 x 255 key fetches and sessions, and 12 messages decrypted by all in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(done - up).count()
            << " ms\n";
}

// After the owner removes a member, the members who send next rotate: their new sender
// key goes to the remaining members only. The remaining members decrypt; the removed
// member receives nothing, and its copy of the old sender keys (its state directory, opened
// directly) cannot decrypt the new ciphertext as the server stored it.
TEST_F(GroupE2eeTest, RemovedMemberCannotDecryptAfterRotation) {
  constexpr size_t kMembers = 6;
  constexpr size_t kRemoved = 5;
  constexpr size_t kTap = 4;  // a remaining member whose stored ciphertext the test reads
  StartMembers(kMembers);
  if (HasFatalFailure()) return;
  const uint64_t group = CreateGroup(kMembers, {0, 1, 2, 3, 4, 5});
  ASSERT_NE(group, 0u);
  // Before the removal everybody, the member to be removed included, decrypts.
  for (size_t s : {size_t{0}, size_t{1}}) {
    ASSERT_TRUE(clients_[s]->SendGroup(group, "before " + std::to_string(s)).ok());
  }
  for (size_t i = 0; i < kMembers; ++i) {
    for (size_t s : {size_t{0}, size_t{1}}) {
      if (s == i) continue;
      ASSERT_TRUE(PollUntil([&] {
        return Received(i, kFirstUser + s, "before " + std::to_string(s)) == 1;
      })) << "member "
          << i << " did not decrypt the first message of " << s;
    }
  }

  const uint64_t removed = kFirstUser + kRemoved;
  clients_[0]->UpdateGroup(group, {}, {removed});
  for (size_t i = 0; i < kMembers; ++i) {
    ASSERT_TRUE(PollUntil([&] { return Knows(i, group, removed, /*present=*/false); }))
        << "member " << i << " did not see the removal";
  }
  {
    std::lock_guard<std::mutex> l(members_[kRemoved]->mu);
    EXPECT_EQ(members_[kRemoved]->events_removed_self, 1u);
  }
  auto refused = clients_[kRemoved]->SendGroup(group, "still here?");
  EXPECT_EQ(refused.status().code(), StatusCode::kBadRequest);

  for (size_t s : {size_t{0}, size_t{1}}) {
    ASSERT_TRUE(clients_[s]->SendGroup(group, "after " + std::to_string(s)).ok());
  }
  for (size_t i = 0; i < kMembers; ++i) {
    if (i == kRemoved) continue;
    for (size_t s : {size_t{0}, size_t{1}}) {
      if (s == i) continue;
      ASSERT_TRUE(PollUntil([&] {
        return Received(i, kFirstUser + s, "after " + std::to_string(s)) == 1;
      })) << "remaining member "
          << i << " did not decrypt the message of " << s << " sent after the removal";
    }
  }
  // The removed member's inbox gets no group message any more: a direct message sent after
  // the group messages arrives alone.
  ASSERT_TRUE(clients_[1]->Send(removed, "direct after").ok());
  ASSERT_TRUE(PollUntil([&] {
    std::lock_guard<std::mutex> l(members_[kRemoved]->mu);
    return !members_[kRemoved]->direct_texts.empty();
  }));
  {
    std::lock_guard<std::mutex> l(members_[kRemoved]->mu);
    EXPECT_EQ(members_[kRemoved]->group_texts.size(), 2u);  // the two "before" messages
    EXPECT_TRUE(members_[kRemoved]->group_failures.empty());
  }

  // The ciphertexts as the server stored them: the tap member's inbox, read by the test as
  // that user after its client stopped (catch-up from cursor 0 returns the whole inbox).
  // Each inbox numbers its messages itself: the group messages after the removal's
  // GROUP_EVENT are the "after" ones, one per sender.
  clients_[kTap].reset();
  auto tap = TestClient::Connect(server_);
  tap->Login(server_, kFirstUser + kTap);
  std::vector<v1::Envelope> inbox;
  tap->CatchUp(&inbox);
  std::map<uint64_t, std::string> after_bodies;  // sender user -> body
  bool after_removal = false;
  for (const v1::Envelope& e : inbox) {
    if (e.group_id() != group) continue;
    if (e.kind() == v1::GROUP_EVENT) {
      v1::GroupInfo info;
      ASSERT_TRUE(info.ParseFromString(e.body()));
      after_removal = info.version() >= 2;
    } else if (e.kind() == v1::MESSAGE && after_removal) {
      after_bodies[e.sender()] = e.body();
    }
  }
  ASSERT_EQ(after_bodies.size(), 2u) << "the tap member's inbox lacks the group messages";

  // The removed member's own state, as it is after the removal.
  clients_[kRemoved].reset();
  auto store = LocalStore::Open(StateDir(kRemoved) + "/state.db");
  ASSERT_TRUE(store.ok()) << store.status().message();
  auto cipher = e2ee::MessageCipher::Open(**store);
  ASSERT_TRUE(cipher.ok()) << cipher.status().message();
  for (const auto& [s, body] : after_bodies) {
    auto d = (*cipher)->DecryptGroup(group, s, body);
    EXPECT_FALSE(d.ok()) << "the removed member decrypted \"" << d->text << "\" of member " << s
                         << ": its sender key was not rotated";
    if (!d.ok()) {
      EXPECT_NE(d.status().message().find("no sender key"), std::string::npos)
          << d.status().message();
    }
  }
}

}  // namespace
}  // namespace iris::testing
