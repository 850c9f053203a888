#pragma once
// The history of a chaos run (issue 17): every protocol event the clients saw, with a
// monotonic timestamp, in the order it was recorded. The checker (checker.h) judges it.
//
// Thread-safety: History::Add may be called from any thread; Snapshot copies under the lock.

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace iris::chaos {

enum class EventType {
  kSend,      // a SEND written to a connection (every attempt, retries included)
  kSendAck,   // its SEND_ACK
  kError,     // an ERROR answering a SEND
  kDeliver,   // a DELIVER (push) to a session
  kSyncPage,  // one message of a SYNC_PAGE (catch-up) to a session
};

struct Event {
  EventType type = EventType::kSend;
  int64_t t_ns = 0;            // CLOCK_MONOTONIC of the test process
  uint64_t session = 0;        // the connection (unique in the run) the event happened on
  bool final_catchup = false;  // a message of the catch-up from cursor 0 after healing
  uint64_t request_id = 0;     // SEND, SEND_ACK, ERROR
  std::string key;             // the idempotency key (SEND, SEND_ACK, ERROR)
  uint64_t sender = 0;         // SEND: the sending user; DELIVER/SYNC_PAGE: Envelope.sender
  uint64_t recipient = 0;      // SEND: Send.recipient; DELIVER/SYNC_PAGE: the session's user
  uint64_t message_id = 0;     // SEND_ACK: the id given; DELIVER/SYNC_PAGE: Envelope.id
  std::string body;            // SEND and DELIVER/SYNC_PAGE
  uint32_t code = 0;           // ERROR: the status code
  bool duplicate = false;      // SEND_ACK.duplicate
};

// Monotonic nanoseconds (the clock events are stamped with).
int64_t MonoNanos();

class History {
 public:
  // Appends `e`, stamping it with MonoNanos() when e.t_ns is 0.
  void Add(Event e);
  std::vector<Event> Snapshot() const;
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::vector<Event> events_;
};

}  // namespace iris::chaos
