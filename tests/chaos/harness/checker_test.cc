// The chaos checker on hand-made histories (no processes): a clean history is valid, and an
// injected lost, duplicated, reordered or unexpected message, or an INTERNAL error, is
// reported.
#include "harness/checker.h"

#include <gtest/gtest.h>

#include "common/status.h"

namespace iris::chaos {
namespace {

class HistoryBuilder {
 public:
  // A SEND from `from` to `to` with key/body `tag`, acknowledged as `id` (0: no ack).
  HistoryBuilder& Send(uint64_t from, uint64_t to, const std::string& tag, uint64_t id) {
    Add(EventType::kSend, from, to, tag, 0);
    if (id != 0) Add(EventType::kSendAck, from, to, tag, id);
    return *this;
  }
  HistoryBuilder& Ack(uint64_t from, uint64_t to, const std::string& tag, uint64_t id,
                      bool duplicate = true) {
    Add(EventType::kSendAck, from, to, tag, id);
    events_.back().duplicate = duplicate;
    return *this;
  }
  HistoryBuilder& Refuse(uint64_t from, uint64_t to, const std::string& tag,
                         StatusCode code = StatusCode::kUnavailable) {
    Add(EventType::kSend, from, to, tag, 0);
    Add(EventType::kError, from, to, tag, 0);
    events_.back().code = static_cast<uint32_t>(code);
    return *this;
  }
  // One message of session `session` of user `to` (final: the catch-up from cursor 0).
  HistoryBuilder& Got(uint64_t session, uint64_t from, uint64_t to, const std::string& tag,
                      uint64_t id, bool final_catchup = true) {
    Event e;
    e.type = final_catchup ? EventType::kSyncPage : EventType::kDeliver;
    e.t_ns = ++t_;
    e.session = session;
    e.final_catchup = final_catchup;
    e.sender = from;
    e.recipient = to;
    e.message_id = id;
    e.body = "body-" + tag;
    events_.push_back(e);
    return *this;
  }
  const std::vector<Event>& events() const { return events_; }

 private:
  void Add(EventType type, uint64_t from, uint64_t to, const std::string& tag, uint64_t id) {
    Event e;
    e.type = type;
    e.t_ns = ++t_;
    e.key = "key-" + tag;
    e.sender = from;
    e.recipient = to;
    e.message_id = id;
    if (type == EventType::kSend) e.body = "body-" + tag;
    events_.push_back(e);
  }
  std::vector<Event> events_;
  int64_t t_ = 0;
};

// Two senders to user 3, one to user 1; a retry deduplicated; one refusal; live deliveries.
HistoryBuilder Clean() {
  HistoryBuilder h;
  h.Send(1, 3, "a", 10).Send(2, 3, "b", 11).Send(1, 3, "c", 0);  // c: connection lost
  h.Send(1, 3, "c", 0).Ack(1, 3, "c", 12, false);                // retried, same key
  h.Refuse(2, 3, "r");
  h.Send(2, 1, "d", 13);
  h.Got(7, 1, 3, "a", 10, false).Got(7, 2, 3, "b", 11, false);  // live session of user 3
  h.Got(20, 1, 3, "a", 10).Got(20, 2, 3, "b", 11).Got(20, 1, 3, "c", 12);
  h.Got(21, 2, 1, "d", 13);
  return h;
}

TEST(ChaosChecker, CleanHistoryIsValid) {
  const CheckerReport r = Check(Clean().events());
  EXPECT_TRUE(r.ok()) << r.ToText();
  EXPECT_EQ(r.acknowledged, 4u);
  EXPECT_EQ(r.keys, 5u);
  EXPECT_EQ(r.refused, 1u);
  EXPECT_EQ(r.delivered, 4u);
  EXPECT_EQ(r.attempts, 6u);
  EXPECT_EQ(r.duplicate_acks, 0u);  // Ack() in Clean is the first ack of "c"
  EXPECT_NE(r.ToJson().find("\"valid\":true"), std::string::npos);
}

TEST(ChaosChecker, ReportsAnAcknowledgedMessageMissingFromTheCatchUp) {
  HistoryBuilder h = Clean();
  h.Send(2, 1, "lost", 14);  // acknowledged, never in user 1's catch-up
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.lost, 1u) << r.ToText();
  EXPECT_EQ(r.duplicated + r.reordered + r.unexpected, 0u) << r.ToText();
  EXPECT_NE(r.ToJson().find("\"lost\":1"), std::string::npos);
}

// A refusal is fine unless it is INTERNAL (a server bug, e.g. a new primary whose message
// ids would not lie above the shard's high-water mark).
TEST(ChaosChecker, ReportsAnInternalError) {
  HistoryBuilder h = Clean();
  h.Refuse(1, 3, "bug", StatusCode::kInternal);
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.internal, 1u) << r.ToText();
  EXPECT_EQ(r.refused, 2u);
  EXPECT_EQ(r.lost + r.duplicated + r.reordered + r.unexpected, 0u) << r.ToText();
  EXPECT_NE(r.ToJson().find("\"internal\":1"), std::string::npos);
}

TEST(ChaosChecker, AnUnacknowledgedMessageMayBeMissingOrPresent) {
  HistoryBuilder h = Clean();
  h.Send(2, 1, "maybe", 0).Send(2, 1, "recovered", 0).Got(21, 2, 1, "recovered", 15);
  const CheckerReport r = Check(h.events());
  EXPECT_TRUE(r.ok()) << r.ToText();
  EXPECT_EQ(r.recovered, 1u);
}

TEST(ChaosChecker, ReportsAnIdDeliveredTwiceInOneSession) {
  HistoryBuilder h = Clean();
  h.Got(21, 2, 1, "d", 13);  // the same id again in the same catch-up
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.duplicated, 1u) << r.ToText();
}

TEST(ChaosChecker, ReportsOneKeyStoredUnderTwoIds) {
  HistoryBuilder h = Clean();
  h.Send(2, 1, "e", 0).Send(2, 1, "e", 14);         // a retry of "e" acknowledged as 14
  h.Got(21, 2, 1, "e", 14).Got(21, 2, 1, "e", 15);  // ... but stored twice
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.duplicated, 1u) << r.ToText();
}

TEST(ChaosChecker, ReportsOneKeyAcknowledgedUnderTwoIds) {
  HistoryBuilder h = Clean();
  h.Send(2, 1, "e", 14).Send(2, 1, "e", 15).Got(21, 2, 1, "e", 14);
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_GE(r.duplicated, 1u) << r.ToText();
}

TEST(ChaosChecker, ReportsIdsNotIncreasingWithinASession) {
  HistoryBuilder h;
  h.Send(1, 3, "a", 10).Send(2, 3, "b", 11);
  h.Got(20, 2, 3, "b", 11).Got(20, 1, 3, "a", 10);  // 11 then 10
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.reordered, 1u) << r.ToText();
}

TEST(ChaosChecker, ReportsOneSendersMessagesOutOfSendOrder) {
  HistoryBuilder h;
  // "a" was acknowledged before "b" was sent, yet "b" got the smaller id.
  h.Send(1, 3, "a", 12).Send(1, 3, "b", 11);
  h.Got(20, 1, 3, "b", 11).Got(20, 1, 3, "a", 12);
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.reordered, 1u) << r.ToText();
  EXPECT_EQ(r.lost + r.duplicated + r.unexpected, 0u) << r.ToText();
}

TEST(ChaosChecker, ConcurrentSendsMayLandInEitherOrder) {
  HistoryBuilder h;
  // Two SENDs in flight together (neither acknowledged before the other was sent).
  h.Send(1, 3, "a", 0).Send(1, 3, "b", 0).Ack(1, 3, "b", 11, false).Ack(1, 3, "a", 12, false);
  h.Got(20, 1, 3, "b", 11).Got(20, 1, 3, "a", 12);
  const CheckerReport r = Check(h.events());
  EXPECT_TRUE(r.ok()) << r.ToText();
}

TEST(ChaosChecker, ReportsAMessageNeverSent) {
  HistoryBuilder h = Clean();
  h.Got(21, 2, 1, "ghost", 20);
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.unexpected, 1u) << r.ToText();
}

TEST(ChaosChecker, ReportsAMessageDeliveredToTheWrongUser) {
  HistoryBuilder h = Clean();
  h.Send(2, 1, "x", 14).Got(21, 2, 1, "x", 14).Got(22, 2, 4, "x", 14);
  const CheckerReport r = Check(h.events());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.unexpected, 1u) << r.ToText();
}

}  // namespace
}  // namespace iris::chaos
