#pragma once
// What iris_store_crash_child appends, shared by the child and the tests that check it: the
// key of every append, its sender, inbox and body are functions of (cycle, thread, seq), so
// a re-send of a key is the same append again and a checker can tell whether a stored
// message has exactly the content it was sent with.

#include <cstdint>
#include <cstdio>
#include <string>

namespace iris::store::testing {

inline std::string CrashKeyOf(int cycle, int thread, long seq) {
  return "c" + std::to_string(cycle) + "-t" + std::to_string(thread) + "-s" + std::to_string(seq);
}

// The thread and sequence number of key "c<n>-t<t>-s<s>"; false when it is not one.
inline bool ParseCrashKey(const std::string& key, int* thread, long* seq) {
  int cycle = 0, consumed = 0;
  long s = 0;
  if (std::sscanf(key.c_str(), "c%d-t%d-s%ld%n", &cycle, thread, &s, &consumed) != 3 ||
      static_cast<size_t>(consumed) != key.size() || cycle < 0 || *thread < 0 || s < 0) {
    return false;
  }
  *seq = s;
  return true;
}

// Thread t sends as user t + 1 to inbox 1 + (t + s) % users.
inline uint64_t CrashSenderOf(int thread) { return static_cast<uint64_t>(thread) + 1; }
inline uint64_t CrashRecipientOf(int users, int thread, long seq) {
  return 1 + static_cast<uint64_t>((thread + seq) % users);
}

// The body of `key`: the key itself, then (when `bytes` exceeds it) '|' and the key repeated
// up to `bytes` bytes.
inline std::string CrashBodyOf(const std::string& key, size_t bytes) {
  std::string body = key;
  if (bytes <= key.size()) return body;
  body.push_back('|');
  while (body.size() < bytes) body += key;
  body.resize(bytes);
  return body;
}

// The key a body was made from (everything before the first '|').
inline std::string CrashKeyOfBody(const std::string& body) {
  return body.substr(0, body.find('|'));
}

}  // namespace iris::store::testing
