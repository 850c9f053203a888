#include "harness/checker.h"

#include <time.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "common/status.h"

namespace iris::chaos {

int64_t MonoNanos() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void History::Add(Event e) {
  if (e.t_ns == 0) e.t_ns = MonoNanos();
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(std::move(e));
}

std::vector<Event> History::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_;
}

size_t History::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

namespace {

constexpr size_t kMaxProblems = 50;

std::string Hex(const std::string& bytes) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(d[c >> 4]);
    out.push_back(d[c & 15]);
  }
  return out;
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out.push_back(c);
    }
  }
  return out;
}

struct KeyInfo {
  uint64_t sender = 0;
  uint64_t recipient = 0;
  std::string body;
  int64_t first_send_ns = 0;
  int64_t ack_ns = 0;  // first SEND_ACK; 0 = never acknowledged
  uint64_t ack_id = 0;
};

}  // namespace

CheckerReport Check(const std::vector<Event>& history) {
  CheckerReport r;
  auto problem = [&r](const std::string& p) {
    if (r.problems.size() < kMaxProblems) r.problems.push_back(p);
  };

  // 1. Sends and their answers, by idempotency key.
  std::unordered_map<std::string, KeyInfo> keys;
  std::unordered_map<std::string, std::string> key_of_body;
  for (const Event& e : history) {
    if (e.type == EventType::kSend) {
      ++r.attempts;
      auto [it, fresh] = keys.try_emplace(e.key);
      if (fresh) {
        it->second.sender = e.sender;
        it->second.recipient = e.recipient;
        it->second.body = e.body;
        it->second.first_send_ns = e.t_ns;
        key_of_body[e.body] = e.key;
      }
    } else if (e.type == EventType::kSendAck) {
      if (e.duplicate) ++r.duplicate_acks;
      auto it = keys.find(e.key);
      if (it == keys.end()) {
        ++r.unexpected;
        problem("unexpected: SEND_ACK " + std::to_string(e.message_id) + " for a key never sent (" +
                Hex(e.key) + ")");
        continue;
      }
      KeyInfo& k = it->second;
      if (k.ack_ns == 0) {
        k.ack_ns = e.t_ns;
        k.ack_id = e.message_id;
      } else if (k.ack_id != e.message_id) {
        ++r.duplicated;
        problem("duplicated: key " + Hex(e.key) + " acknowledged as " + std::to_string(k.ack_id) +
                " and as " + std::to_string(e.message_id));
      }
    } else if (e.type == EventType::kError) {
      ++r.refused;
      if (e.code == static_cast<uint32_t>(StatusCode::kInternal)) {
        ++r.internal;
        problem("internal: SEND " + std::to_string(e.request_id) + " (key " + Hex(e.key) +
                ") answered INTERNAL");
      }
    }
  }
  r.keys = keys.size();
  for (const auto& kv : keys) {
    if (kv.second.ack_ns != 0) ++r.acknowledged;
  }

  // 2. Every session's deliveries: ids unique and increasing, bodies known, one id per key.
  struct SessionState {
    uint64_t last_id = 0;
    std::set<uint64_t> ids;
  };
  std::map<uint64_t, SessionState> sessions;
  std::unordered_map<std::string, uint64_t> id_of_key;  // as delivered
  // recipient -> key -> position in the final catch-up
  std::map<uint64_t, std::unordered_map<std::string, size_t>> final_pos;
  for (const Event& e : history) {
    if (e.type != EventType::kDeliver && e.type != EventType::kSyncPage) continue;
    SessionState& s = sessions[e.session];
    const std::string where =
        " (session " + std::to_string(e.session) + " of user " + std::to_string(e.recipient) + ")";
    if (!s.ids.insert(e.message_id).second) {
      ++r.duplicated;
      problem("duplicated: id " + std::to_string(e.message_id) + " delivered twice" + where);
      continue;
    }
    if (e.message_id <= s.last_id) {
      ++r.reordered;
      problem("reordered: id " + std::to_string(e.message_id) + " after " +
              std::to_string(s.last_id) + where);
    }
    s.last_id = std::max(s.last_id, e.message_id);
    auto b = key_of_body.find(e.body);
    if (b == key_of_body.end()) {
      ++r.unexpected;
      problem("unexpected: id " + std::to_string(e.message_id) + " was never sent" + where);
      continue;
    }
    const KeyInfo& k = keys[b->second];
    if (k.sender != e.sender || k.recipient != e.recipient) {
      ++r.unexpected;
      problem("unexpected: id " + std::to_string(e.message_id) + " sent by " +
              std::to_string(k.sender) + " to " + std::to_string(k.recipient) +
              " arrived as from " + std::to_string(e.sender) + where);
      continue;
    }
    auto [known, fresh] = id_of_key.try_emplace(b->second, e.message_id);
    if (!fresh && known->second != e.message_id) {
      ++r.duplicated;
      problem("duplicated: key " + Hex(b->second) + " stored as ids " +
              std::to_string(known->second) + " and " + std::to_string(e.message_id) + where);
    } else if (fresh && k.ack_ns != 0 && k.ack_id != e.message_id) {
      ++r.duplicated;
      problem("duplicated: key " + Hex(b->second) + " acknowledged as " + std::to_string(k.ack_id) +
              " but stored as " + std::to_string(e.message_id) + where);
    }
    if (e.final_catchup) {
      auto& pos = final_pos[e.recipient];
      pos.emplace(b->second, pos.size());
      ++r.delivered;
      if (k.ack_ns == 0) ++r.recovered;
    }
  }

  // 3. Lost: acknowledged, absent from the recipient's final catch-up.
  // 4. Send order: per (sender, recipient), a message acknowledged before another was first
  //    sent must come before it in the final catch-up.
  std::map<std::pair<uint64_t, uint64_t>, std::vector<const std::pair<const std::string, KeyInfo>*>>
      by_pair;
  for (const auto& kv : keys) {
    const KeyInfo& k = kv.second;
    if (k.ack_ns == 0) continue;
    auto rp = final_pos.find(k.recipient);
    if (rp == final_pos.end() || rp->second.count(kv.first) == 0) {
      ++r.lost;
      problem("lost: id " + std::to_string(k.ack_id) + " from " + std::to_string(k.sender) +
              " to " + std::to_string(k.recipient) + " was acknowledged, is not in the inbox");
      continue;
    }
    by_pair[{k.sender, k.recipient}].push_back(&kv);
  }
  for (auto& [pair, list] : by_pair) {
    const auto& pos = final_pos[pair.second];
    std::vector<const std::pair<const std::string, KeyInfo>*> by_ack = list;
    std::sort(list.begin(), list.end(),
              [](auto* a, auto* b) { return a->second.first_send_ns < b->second.first_send_ns; });
    std::sort(by_ack.begin(), by_ack.end(),
              [](auto* a, auto* b) { return a->second.ack_ns < b->second.ack_ns; });
    size_t next = 0;
    bool have = false;
    size_t max_pos = 0;
    const std::string* max_key = nullptr;
    for (auto* b : list) {
      while (next < by_ack.size() && by_ack[next]->second.ack_ns < b->second.first_send_ns) {
        const size_t p = pos.at(by_ack[next]->first);
        if (!have || p > max_pos) {
          max_pos = p;
          max_key = &by_ack[next]->first;
        }
        have = true;
        ++next;
      }
      const size_t p = pos.at(b->first);
      if (have && max_pos > p) {
        ++r.reordered;
        problem("reordered: from " + std::to_string(pair.first) + " to " +
                std::to_string(pair.second) + ", id " + std::to_string(b->second.ack_id) +
                " sent after id " + std::to_string(keys.at(*max_key).ack_id) +
                " was acknowledged, but stored before it");
      }
    }
  }
  return r;
}

std::string CheckerReport::ToText() const {
  std::ostringstream o;
  o << "chaos checker: " << (ok() ? "VALID" : "INVALID") << "\n"
    << "  sends (attempts)     " << attempts << "\n"
    << "  keys                 " << keys << "\n"
    << "  acknowledged         " << acknowledged << "\n"
    << "  duplicate acks       " << duplicate_acks << " (retries deduplicated)\n"
    << "  refused (ERROR)      " << refused << "\n"
    << "  internal errors      " << internal << "\n"
    << "  delivered (final)    " << delivered << "\n"
    << "  recovered (unacked)  " << recovered << "\n"
    << "  lost                 " << lost << "\n"
    << "  duplicated           " << duplicated << "\n"
    << "  reordered            " << reordered << "\n"
    << "  unexpected           " << unexpected << "\n";
  for (const auto& p : problems) o << "  ! " << p << "\n";
  return o.str();
}

std::string CheckerReport::ToJson(const std::string& extra) const {
  std::ostringstream o;
  o << "{" << extra << "\"valid\":" << (ok() ? "true" : "false") << ",\"attempts\":" << attempts
    << ",\"keys\":" << keys << ",\"acknowledged\":" << acknowledged
    << ",\"duplicate_acks\":" << duplicate_acks << ",\"refused\":" << refused << ",\"internal\":" << internal
    << ",\"delivered\":" << delivered << ",\"recovered\":" << recovered << ",\"lost\":" << lost
    << ",\"duplicated\":" << duplicated << ",\"reordered\":" << reordered
    << ",\"unexpected\":" << unexpected << ",\"problems\":[";
  for (size_t i = 0; i < problems.size(); ++i) {
    o << (i ? "," : "") << "\"" << JsonEscape(problems[i]) << "\"";
  }
  o << "]}";
  return o.str();
}

}  // namespace iris::chaos
