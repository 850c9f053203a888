#pragma once
// The keys of store layout version 1 (before vnode prefixes), kept only to migrate such a
// store on open (layout_migration.cc) and for the tests that write one. Nothing else may
// use them.
//
//   inbox, archive  user(8) id(8)
//   dedup           sender(8) idempotency key(1..255)
//   meta            'H' -> HLC high-water mark(8); 'U'/'A'/'S'/'L' user(8); 'J'/'R' as now
//   keys            user(8) 'B', user(8) 'P' seq(8)
//   groups          group id(8)
//
// Pure functions; thread-safe.

#include <cstdint>
#include <string>
#include <string_view>

#include "common/bytes.h"

namespace iris::store::legacy_v1 {

inline std::string InboxKey(uint64_t user, uint64_t id) {
  std::string k;
  AppendBigEndian64(&k, user);
  AppendBigEndian64(&k, id);
  return k;
}
inline std::string DedupKey(uint64_t sender, std::string_view idempotency_key) {
  std::string k;
  AppendBigEndian64(&k, sender);
  k.append(idempotency_key);
  return k;
}
inline std::string MetaHlcKey() { return std::string(1, 'H'); }
// tag is 'U', 'A', 'S' or 'L'.
inline std::string MetaUserKey(char tag, uint64_t user) {
  std::string k(1, tag);
  AppendBigEndian64(&k, user);
  return k;
}
inline std::string KeysBundleKey(uint64_t user) {
  std::string k;
  AppendBigEndian64(&k, user);
  k.push_back('B');
  return k;
}
inline std::string PreKeyKey(uint64_t user, uint64_t seq) {
  std::string k;
  AppendBigEndian64(&k, user);
  k.push_back('P');
  AppendBigEndian64(&k, seq);
  return k;
}
inline std::string GroupKey(uint64_t group_id) {
  std::string k;
  AppendBigEndian64(&k, group_id);
  return k;
}

}  // namespace iris::store::legacy_v1
