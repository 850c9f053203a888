#pragma once
// DeliveryLedger: the correctness model of the messages one sender sends to one recipient
// (RFC-001 FR-1/FR-3: every acknowledged message is delivered exactly once, in order per
// sender). The sender side records each SEND and its reply; the recipient side records each
// delivery (catch-up or push) by the sequence number carried in the body. Violations are
// counted into a shared Violations record as they are seen, and Finish() adds the ones that
// only the end of a run can show (acknowledged but never delivered).
//
// Message body layout: sequence number (8 bytes, big-endian), intended send time (8 bytes,
// CLOCK_MONOTONIC ns, big-endian), then filler up to the body size.
//
// Thread-safety: none; the sender and the recipient of a ledger live on the same loop.

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "histogram.h"

namespace iris::bench {

struct Violations {
  uint64_t lost = 0;                  // acknowledged, never delivered
  uint64_t duplicates = 0;            // delivered more than once
  uint64_t out_of_order = 0;          // delivered after a later message of the same sender
  uint64_t id_mismatch = 0;           // SEND_ACK id differs from the delivered envelope's id
  uint64_t unanswered = 0;            // a SEND never got SEND_ACK or ERROR
  uint64_t reply_out_of_order = 0;    // replies not in request order
  uint64_t refused_delivered = 0;     // answered with ERROR, delivered anyway
  uint64_t unexpected = 0;            // a delivery no ledger expects, or a malformed one
  uint64_t duplicate_acks = 0;        // SEND_ACK duplicate=true for a key never retried
  uint64_t sessions_dropped = 0;      // an established session closed while it should be open
  uint64_t wrong_user = 0;            // WELCOME for another user than the token's
  std::vector<std::string> examples;  // the first few, for the report

  uint64_t total() const;
  void Note(std::string what);  // keeps at most 20 examples
  void Merge(const Violations& o);
  std::map<std::string, uint64_t> ToMap() const;
};

std::string EncodeBody(uint64_t seq, int64_t intended_ns, size_t size);
// False when the body is shorter than 16 bytes.
bool DecodeBody(std::string_view body, uint64_t* seq, int64_t* intended_ns);

class DeliveryLedger {
 public:
  DeliveryLedger(uint64_t sender, uint64_t recipient) : sender_(sender), recipient_(recipient) {}

  uint64_t sender() const { return sender_; }
  uint64_t recipient() const { return recipient_; }

  // A new message to send at `intended_ns`; returns its sequence number. The SEND must use
  // request_id = seq + 1.
  uint64_t Begin(int64_t intended_ns);
  // SEND_ACK for `request_id`; returns the intended send time of that message (for the
  // latency histogram), or -1 when the reply does not match the oldest request in flight.
  int64_t OnAck(uint64_t request_id, uint64_t message_id, bool duplicate, Violations& v);
  // ERROR for `request_id` (the message was refused).
  int64_t OnRefused(uint64_t request_id, Violations& v);
  // A delivery of message `seq` with envelope id `message_id`. Returns true when it is the
  // first delivery of that message.
  bool OnDelivered(uint64_t seq, uint64_t message_id, Violations& v);
  // The sender's connection dropped: requests in flight may or may not have been stored;
  // each may be delivered at most once, and need not be.
  void AbandonInFlight();
  // End of the run: acknowledged messages never delivered are lost; requests never
  // answered (and not abandoned) are unanswered.
  void Finish(Violations& v);

  size_t in_flight() const { return in_flight_.size(); }
  uint64_t sent() const { return records_.size(); }

 private:
  enum class State : uint8_t { kPending, kAcked, kRefused, kUnknown };
  struct Record {
    uint64_t acked_id = 0;
    uint64_t delivered_id = 0;
    State state = State::kPending;
    uint8_t deliveries = 0;
  };
  struct InFlight {
    uint64_t seq;
    int64_t intended_ns;
  };
  // Pops the oldest request in flight if it is `request_id`; else notes a violation.
  bool PopReply(uint64_t request_id, Violations& v, InFlight* out);

  uint64_t sender_;
  uint64_t recipient_;
  std::vector<Record> records_;
  std::deque<InFlight> in_flight_;
  int64_t last_delivered_ = -1;
};

}  // namespace iris::bench
