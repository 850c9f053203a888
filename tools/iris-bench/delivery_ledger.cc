#include "delivery_ledger.h"

#include <algorithm>

#include "common/bytes.h"

namespace iris::bench {

uint64_t Violations::total() const {
  return lost + duplicates + out_of_order + id_mismatch + unanswered + reply_out_of_order +
         refused_delivered + unexpected + duplicate_acks + sessions_dropped + wrong_user;
}

void Violations::Note(std::string what) {
  if (examples.size() < 20) examples.push_back(std::move(what));
}

void Violations::Merge(const Violations& o) {
  lost += o.lost;
  duplicates += o.duplicates;
  out_of_order += o.out_of_order;
  id_mismatch += o.id_mismatch;
  unanswered += o.unanswered;
  reply_out_of_order += o.reply_out_of_order;
  refused_delivered += o.refused_delivered;
  unexpected += o.unexpected;
  duplicate_acks += o.duplicate_acks;
  sessions_dropped += o.sessions_dropped;
  wrong_user += o.wrong_user;
  for (const auto& e : o.examples) Note(e);
}

std::map<std::string, uint64_t> Violations::ToMap() const {
  return {{"lost", lost},
          {"duplicates", duplicates},
          {"out_of_order", out_of_order},
          {"id_mismatch", id_mismatch},
          {"unanswered", unanswered},
          {"reply_out_of_order", reply_out_of_order},
          {"refused_delivered", refused_delivered},
          {"unexpected", unexpected},
          {"duplicate_acks", duplicate_acks},
          {"sessions_dropped", sessions_dropped},
          {"wrong_user", wrong_user}};
}

std::string EncodeBody(uint64_t seq, int64_t intended_ns, size_t size) {
  std::string b(std::max<size_t>(size, 16), '\0');
  PutBigEndian64(seq, b.data());
  PutBigEndian64(static_cast<uint64_t>(intended_ns), b.data() + 8);
  // The rest looks like what the server really carries, ciphertext: incompressible bytes
  // (xorshift64* from the sequence number, so every body differs).
  uint64_t x = seq * 0x9E3779B97F4A7C15ULL + 1;
  for (size_t i = 16; i < b.size(); ++i) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b[i] = static_cast<char>((x * 0x2545F4914F6CDD1DULL) >> 56);
  }
  return b;
}

bool DecodeBody(std::string_view body, uint64_t* seq, int64_t* intended_ns) {
  if (body.size() < 16) return false;
  const char* p = body.data();
  *seq = GetBigEndian64(p);
  *intended_ns = static_cast<int64_t>(GetBigEndian64(p + 8));
  return true;
}

uint64_t DeliveryLedger::Begin(int64_t intended_ns) {
  const uint64_t seq = records_.size();
  records_.emplace_back();
  in_flight_.push_back({seq, intended_ns});
  return seq;
}

bool DeliveryLedger::PopReply(uint64_t request_id, Violations& v, InFlight* out) {
  if (in_flight_.empty() || in_flight_.front().seq + 1 != request_id) {
    ++v.reply_out_of_order;
    v.Note("user " + std::to_string(sender_) + ": reply for request " + std::to_string(request_id) +
           " while " +
           (in_flight_.empty() ? std::string("none") : std::to_string(in_flight_.front().seq + 1)) +
           " was the oldest in flight");
    return false;
  }
  *out = in_flight_.front();
  in_flight_.pop_front();
  return true;
}

int64_t DeliveryLedger::OnAck(uint64_t request_id, uint64_t message_id, bool duplicate,
                              Violations& v) {
  InFlight f;
  if (!PopReply(request_id, v, &f)) return -1;
  Record& r = records_[f.seq];
  r.state = State::kAcked;
  r.acked_id = message_id;
  if (duplicate) {
    ++v.duplicate_acks;
    v.Note("user " + std::to_string(sender_) + ": SEND_ACK duplicate=true for a new key");
  }
  if (r.deliveries > 0 && r.delivered_id != message_id) {
    ++v.id_mismatch;
    v.Note("user " + std::to_string(sender_) + " seq " + std::to_string(f.seq) + ": acked id " +
           std::to_string(message_id) + ", delivered id " + std::to_string(r.delivered_id));
  }
  return f.intended_ns;
}

int64_t DeliveryLedger::OnRefused(uint64_t request_id, Violations& v) {
  InFlight f;
  if (!PopReply(request_id, v, &f)) return -1;
  Record& r = records_[f.seq];
  r.state = State::kRefused;
  if (r.deliveries > 0) {
    ++v.refused_delivered;
    v.Note("user " + std::to_string(sender_) + " seq " + std::to_string(f.seq) +
           ": refused with ERROR but delivered");
  }
  return f.intended_ns;
}

bool DeliveryLedger::OnDelivered(uint64_t seq, uint64_t message_id, Violations& v) {
  if (seq >= records_.size()) {
    ++v.unexpected;
    v.Note("user " + std::to_string(recipient_) + ": delivery of seq " + std::to_string(seq) +
           " from " + std::to_string(sender_) + " that was never sent");
    return false;
  }
  Record& r = records_[seq];
  if (r.deliveries > 0) {
    if (r.deliveries < 255) ++r.deliveries;
    ++v.duplicates;
    v.Note("user " + std::to_string(recipient_) + ": seq " + std::to_string(seq) + " from " +
           std::to_string(sender_) + " delivered again (id " + std::to_string(message_id) + ")");
    return false;
  }
  r.deliveries = 1;
  r.delivered_id = message_id;
  if (static_cast<int64_t>(seq) < last_delivered_) {
    ++v.out_of_order;
    v.Note("user " + std::to_string(recipient_) + ": seq " + std::to_string(seq) + " from " +
           std::to_string(sender_) + " after seq " + std::to_string(last_delivered_));
  } else {
    last_delivered_ = static_cast<int64_t>(seq);
  }
  if (r.state == State::kAcked && r.acked_id != message_id) {
    ++v.id_mismatch;
    v.Note("user " + std::to_string(sender_) + " seq " + std::to_string(seq) + ": acked id " +
           std::to_string(r.acked_id) + ", delivered id " + std::to_string(message_id));
  }
  if (r.state == State::kRefused) {
    ++v.refused_delivered;
    v.Note("user " + std::to_string(sender_) + " seq " + std::to_string(seq) +
           ": refused with ERROR but delivered");
  }
  return true;
}

void DeliveryLedger::AbandonInFlight() {
  for (const auto& f : in_flight_) records_[f.seq].state = State::kUnknown;
  in_flight_.clear();
}

void DeliveryLedger::Finish(Violations& v) {
  for (size_t seq = 0; seq < records_.size(); ++seq) {
    const Record& r = records_[seq];
    if (r.state == State::kAcked && r.deliveries == 0) {
      ++v.lost;
      v.Note("user " + std::to_string(sender_) + " seq " + std::to_string(seq) + " (id " +
             std::to_string(r.acked_id) + ") acknowledged, never delivered to " +
             std::to_string(recipient_));
    } else if (r.state == State::kPending) {
      ++v.unanswered;
      v.Note("user " + std::to_string(sender_) + " seq " + std::to_string(seq) +
             ": no SEND_ACK or ERROR");
    }
  }
}

}  // namespace iris::bench
