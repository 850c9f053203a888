#pragma once
// The chaos checker (issue 17), in the taxonomy of Jepsen's queue checkers, over a History:
//   lost        a SEND_ACK'ed message absent from its recipient's final catch-up (cursor 0);
//   duplicated  one message id twice in one session, or one idempotency key stored (acknowledged
//               or delivered) under two ids;
//   reordered   ids not increasing within a session; or, in the final catch-up, a message
//               acknowledged before another of the same sender to the same recipient was first
//               sent placed after it (send order, PROTOCOL.md "Sending");
//   unexpected  a delivered message whose body no SEND carried, or carried with another
//               sender or recipient;
//   refused     ERROR answers to SENDs (fine: counted), except
//   internal    ERROR answers with code INTERNAL: a server bug, never fine (e.g. a new
//               primary whose ids would not lie above the shard's: the replica refuses the
//               batch, so a missing high-water mark shows up here rather than as a reorder);
//   recovered   messages never acknowledged that are present anyway (fine: counted).
// Any lost, duplicated, reordered or unexpected message, or an INTERNAL error, makes the
// report fail.

#include <cstdint>
#include <string>
#include <vector>

#include "harness/history.h"

namespace iris::chaos {

struct CheckerReport {
  uint64_t attempts = 0;        // SEND frames written (retries included)
  uint64_t keys = 0;            // distinct idempotency keys sent
  uint64_t acknowledged = 0;    // distinct keys with a SEND_ACK
  uint64_t duplicate_acks = 0;  // SEND_ACKs with duplicate = true (dedup at work: fine)
  uint64_t refused = 0;         // ERROR answers to SENDs
  uint64_t internal = 0;        // of which with code INTERNAL
  uint64_t delivered = 0;       // messages in the final catch-ups
  uint64_t recovered = 0;       // unacknowledged keys present in the final catch-up
  uint64_t lost = 0;
  uint64_t duplicated = 0;
  uint64_t reordered = 0;
  uint64_t unexpected = 0;
  std::vector<std::string> problems;  // the first problems found, described

  bool ok() const {
    return lost == 0 && duplicated == 0 && reordered == 0 && unexpected == 0 && internal == 0;
  }
  // A human-readable summary (one block).
  std::string ToText() const;
  // The same as a JSON object; `extra` is inserted verbatim as leading members
  // (e.g. "\"test\":\"x\",\"seed\":1,") and must end with a comma when not empty.
  std::string ToJson(const std::string& extra = "") const;
};

CheckerReport Check(const std::vector<Event>& history);

}  // namespace iris::chaos
