#pragma once
// rapidcheck generators of client messages for the wire property tests.
//
//   GenValidMessage()     a random message of a random client opcode that satisfies every
//                         rule of PROTOCOL.md section 8 (DecodeClientFrame must accept it);
//   GenArbitraryMessage() the same shapes with values drawn across and beyond the limits
//                         (zero ids, empty or oversized lists, bad keys): DecodeClientFrame
//                         may accept or refuse it, but only with BAD_REQUEST or TOO_LARGE.
//
// `small` keeps bodies and lists short so that stream-level properties stay fast.
//
// Thread-safety: generators are used from the test thread only.

#include <rapidcheck.h>

#include <algorithm>
#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "iris/v1/client.pb.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace iris::wire::gen {

struct Encoded {
  uint8_t opcode;
  ClientMessage message;
};

// How rapidcheck prints a counterexample.
inline void showValue(const Encoded& e, std::ostream& os) {
  os << OpcodeName(e.opcode) << " { ";
  std::visit([&os](const auto& m) { os << m.ShortDebugString(); }, e.message);
  os << " }";
}

// n pseudo-random bytes from a seed (splitmix64): cheap even for 64 KB bodies, and
// shrinkable through the size and the seed.
inline std::string FillBytes(size_t n, uint64_t seed) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    if (i % 8 == 0) {
      seed += 0x9e3779b97f4a7c15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      seed ^= z ^ (z >> 31);
    }
    out[i] = static_cast<char>(seed >> (8 * (i % 8)));
  }
  return out;
}

// Bytes of any value, length in [min, max].
inline rc::Gen<std::string> Bytes(size_t min, size_t max) {
  return rc::gen::map(rc::gen::pair(rc::gen::inRange(min, max + 1), rc::gen::arbitrary<uint64_t>()),
                      [](std::pair<size_t, uint64_t> p) { return FillBytes(p.first, p.second); });
}

// Printable ASCII (valid UTF-8 for proto3 `string` fields), length in [min, max].
inline rc::Gen<std::string> Text(size_t min, size_t max) {
  return rc::gen::map(Bytes(min, max), [](std::string s) {
    for (char& c : s) c = static_cast<char>(32 + static_cast<uint8_t>(c) % 95);
    return s;
  });
}

inline rc::Gen<uint64_t> NonZero() {
  return rc::gen::weightedOneOf<uint64_t>(
      {{3, rc::gen::inRange<uint64_t>(1, 1000)}, {1, rc::gen::inRange<uint64_t>(1, ~0ULL)}});
}

inline rc::Gen<uint64_t> AnyId() {
  return rc::gen::weightedOneOf<uint64_t>({{1, rc::gen::just<uint64_t>(0)},
                                           {3, rc::gen::inRange<uint64_t>(1, 1000)},
                                           {1, rc::gen::arbitrary<uint64_t>()}});
}

inline rc::Gen<std::string> UuidV7() {
  return rc::gen::map(Bytes(16, 16), [](std::string k) {
    k[6] = static_cast<char>(0x70 | (k[6] & 0x0f));
    k[8] = static_cast<char>(0x80 | (k[8] & 0x3f));
    return k;
  });
}

inline rc::Gen<std::string> AnyKey() {
  return rc::gen::weightedOneOf<std::string>({{4, UuidV7()}, {1, Bytes(0, 20)}});
}

inline rc::Gen<std::string> TraceId() {
  return rc::gen::oneOf(rc::gen::just(std::string()),
                        rc::gen::map(Bytes(16, 16), [](std::string t) {
                          t[0] = static_cast<char>(t[0] | 1);  // not all zero
                          return t;
                        }));
}

inline rc::Gen<uint32_t> PageSize(bool valid) {
  return valid ? rc::gen::inRange<uint32_t>(0, 1001)
               : rc::gen::weightedOneOf<uint32_t>({{3, rc::gen::inRange<uint32_t>(0, 1001)},
                                                   {1, rc::gen::arbitrary<uint32_t>()}});
}

// Exactly one of the two ids non-zero (valid), or anything (arbitrary).
inline rc::Gen<std::pair<uint64_t, uint64_t>> OneOfTwo(bool valid) {
  if (!valid) return rc::gen::pair(AnyId(), AnyId());
  return rc::gen::mapcat(rc::gen::arbitrary<bool>(), [](bool first) {
    return rc::gen::map(NonZero(), [first](uint64_t id) {
      return first ? std::make_pair(id, uint64_t{0}) : std::make_pair(uint64_t{0}, id);
    });
  });
}

template <typename M>
rc::Gen<Encoded> Tag(uint8_t opcode, rc::Gen<M> g) {
  return rc::gen::map(std::move(g), [opcode](M m) {
    return Encoded{opcode, ClientMessage(std::move(m))};
  });
}

// A count (list length, string length) for a field whose protocol limit is `limit` and
// that needs at least `min` when valid. Boundaries come up often: min, limit, and for
// arbitrary messages 0 and limit + 1. `small` caps the count for fast stream properties.
inline rc::Gen<size_t> Count(size_t min, size_t limit, bool valid, bool small,
                             size_t small_cap = 8) {
  if (small) {
    limit = std::min(limit, small_cap);
    min = std::min(min, limit);
    return valid ? rc::gen::inRange(min, limit + 1) : rc::gen::inRange<size_t>(0, limit + 1);
  }
  if (valid) {
    return rc::gen::weightedOneOf<size_t>({{6, rc::gen::inRange(min, limit + 1)},
                                           {1, rc::gen::just(size_t{limit})},
                                           {1, rc::gen::just(size_t{min})}});
  }
  return rc::gen::weightedOneOf<size_t>({{5, rc::gen::inRange<size_t>(0, limit + 2)},
                                         {1, rc::gen::just(size_t{limit})},
                                         {1, rc::gen::just(size_t{limit + 1})},
                                         {1, rc::gen::just<size_t>(0)}});
}

inline rc::Gen<std::string> BytesOf(rc::Gen<size_t> n) {
  return rc::gen::map(rc::gen::pair(std::move(n), rc::gen::arbitrary<uint64_t>()),
                      [](std::pair<size_t, uint64_t> p) { return FillBytes(p.first, p.second); });
}

inline rc::Gen<std::string> TextOf(rc::Gen<size_t> n) {
  return rc::gen::map(BytesOf(std::move(n)), [](std::string s) {
    for (char& c : s) c = static_cast<char>(32 + static_cast<uint8_t>(c) % 95);
    return s;
  });
}

inline rc::Gen<std::vector<uint64_t>> IdsOf(rc::Gen<uint64_t> id, rc::Gen<size_t> n) {
  return rc::gen::mapcat(
      std::move(n), [id](size_t k) { return rc::gen::container<std::vector<uint64_t>>(k, id); });
}

inline rc::Gen<Encoded> GenMessage(bool valid, bool small) {
  const rc::Gen<uint64_t> id = valid ? NonZero() : AnyId();
  const size_t min_list = valid ? 1 : 0;
  // Limits of PROTOCOL.md section 8 and wire/validate.h's defaults.
  auto count = [valid, small](size_t min, size_t limit, size_t small_cap = 8) {
    return Count(min, limit, valid, small, small_cap);
  };

  auto hello = rc::gen::exec([=] {
    v1::Hello m;
    for (uint32_t v : *rc::gen::container<std::vector<uint32_t>>(*count(min_list, 16, 3),
                                                                 rc::gen::arbitrary<uint32_t>())) {
      m.add_versions(v);
    }
    const size_t caps = *count(0, 32, 3);
    for (size_t i = 0; i < caps; ++i) m.add_capabilities(*TextOf(count(0, 32)));
    m.set_token(*TextOf(count(0, 4096, 100)));
    m.set_cursor(*rc::gen::arbitrary<uint64_t>());
    m.set_page_size(*PageSize(valid));
    m.set_client(*TextOf(count(0, 64, 20)));
    return m;
  });
  auto ping = rc::gen::exec([] {
    v1::Ping m;
    m.set_nonce(*rc::gen::arbitrary<uint64_t>());
    return m;
  });
  auto pong = rc::gen::exec([] {
    v1::Pong m;
    m.set_nonce(*rc::gen::arbitrary<uint64_t>());
    return m;
  });
  auto send = rc::gen::exec([=] {
    v1::Send m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    m.set_idempotency_key(valid ? *UuidV7() : *AnyKey());
    const auto [recipient, group] = *OneOfTwo(valid);
    m.set_recipient(recipient);
    m.set_group_id(group);
    // Mostly short bodies (fast), sometimes near the 64,000-byte limit.
    const size_t body = *rc::gen::weightedOneOf<size_t>(
        {{8, count(valid ? 1 : 0, 200, 64)}, {1, count(valid ? 1 : 0, 64'000, 64)}});
    m.set_body(*BytesOf(rc::gen::just(size_t{body})));
    m.set_trace_id(valid ? *TraceId() : *Bytes(0, 17));
    return m;
  });
  auto deliver_ack = rc::gen::exec([] {
    v1::DeliverAck m;
    m.set_cursor(*rc::gen::arbitrary<uint64_t>());
    return m;
  });
  auto sync = rc::gen::exec([=] {
    v1::Sync m;
    m.set_cursor(*rc::gen::arbitrary<uint64_t>());
    m.set_page_size(*PageSize(valid));
    return m;
  });
  auto sync_ack = rc::gen::exec([] {
    v1::SyncAck m;
    m.set_cursor(*rc::gen::arbitrary<uint64_t>());
    return m;
  });
  auto history = rc::gen::exec([=] {
    v1::History m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    m.set_before(*rc::gen::arbitrary<uint64_t>());
    m.set_limit(*PageSize(valid));
    return m;
  });
  auto receipt = rc::gen::exec([=] {
    v1::Receipt m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    m.set_to_user(*id);
    m.set_type(valid ? *rc::gen::element(v1::DELIVERED, v1::READ)
                     : static_cast<v1::ReceiptType>(*rc::gen::inRange(0, 5)));
    for (uint64_t x : *IdsOf(id, count(min_list, 256))) m.add_message_ids(x);
    m.set_idempotency_key(valid ? *UuidV7() : *AnyKey());
    return m;
  });
  auto settings = rc::gen::exec([] {
    v1::Settings m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    if (*rc::gen::arbitrary<bool>()) m.set_read_receipts(*rc::gen::arbitrary<bool>());
    if (*rc::gen::arbitrary<bool>()) m.set_share_presence(*rc::gen::arbitrary<bool>());
    return m;
  });
  auto presence_sub = rc::gen::exec([=] {
    v1::PresenceSubscribe m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    for (uint64_t u : *IdsOf(id, count(min_list, 256))) m.add_users(u);
    return m;
  });
  auto presence_unsub = rc::gen::exec([=] {
    v1::PresenceUnsubscribe m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    for (uint64_t u : *IdsOf(id, count(min_list, 256))) m.add_users(u);
    return m;
  });
  auto presence_query = rc::gen::exec([=] {
    v1::PresenceQuery m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    for (uint64_t u : *IdsOf(id, count(min_list, 256))) m.add_users(u);
    return m;
  });
  auto typing = rc::gen::exec([=] {
    v1::Typing m;
    const auto [user, group] = *OneOfTwo(valid);
    m.set_user(user);
    m.set_group_id(group);
    m.set_typing(*rc::gen::arbitrary<bool>());
    return m;
  });
  auto keys_upload = rc::gen::exec([=] {
    v1::KeysUpload m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    m.set_registration_id(*rc::gen::arbitrary<uint32_t>());
    m.set_identity_key(*BytesOf(count(min_list, 256, 40)));
    if (valid || *rc::gen::arbitrary<bool>()) {
      m.mutable_signed_prekey()->set_id(*rc::gen::arbitrary<uint32_t>());
      m.mutable_signed_prekey()->set_public_key(*BytesOf(count(min_list, 256, 40)));
      m.mutable_signed_prekey()->set_signature(*BytesOf(count(min_list, 256, 40)));
    }
    const size_t prekeys = *count(0, 100, 4);
    for (size_t i = 0; i < prekeys; ++i) {
      v1::PreKey* pk = m.add_one_time_prekeys();
      pk->set_id(*rc::gen::arbitrary<uint32_t>());
      // Kept under 200 bytes so 100 prekeys plus the rest always fit one frame.
      pk->set_public_key(*BytesOf(rc::gen::inRange<size_t>(min_list, small ? 41 : 200)));
    }
    return m;
  });
  auto keys_fetch = rc::gen::exec([=] {
    v1::KeysFetch m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    m.set_user(*id);
    return m;
  });
  auto group_create = rc::gen::exec([=] {
    v1::GroupCreate m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    m.set_kind(valid ? *rc::gen::element(v1::E2EE, v1::BROADCAST)
                     : static_cast<v1::GroupKind>(*rc::gen::inRange(0, 5)));
    // 255 members + the owner: the E2EE cap (BROADCAST is capped per request at 256).
    for (uint64_t u : *IdsOf(id, count(0, 255))) m.add_members(u);
    m.set_idempotency_key(valid ? *UuidV7() : *AnyKey());
    return m;
  });
  auto group_update = rc::gen::exec([=] {
    v1::GroupUpdate m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    m.set_group_id(*id);
    const size_t total = *count(min_list, 256);
    const size_t adds = *rc::gen::inRange<size_t>(0, total + 1);
    for (uint64_t u : *IdsOf(id, rc::gen::just(size_t{adds}))) m.add_add(u);
    for (uint64_t u : *IdsOf(id, rc::gen::just(size_t{total - adds}))) m.add_remove(u);
    return m;
  });
  auto group_get = rc::gen::exec([=] {
    v1::GroupGet m;
    m.set_request_id(*rc::gen::arbitrary<uint64_t>());
    m.set_group_id(*id);
    return m;
  });

  return rc::gen::oneOf(
      Tag(0x01, hello), Tag(0x04, ping), Tag(0x05, pong), Tag(0x10, send), Tag(0x13, deliver_ack),
      Tag(0x20, sync), Tag(0x22, sync_ack), Tag(0x24, history), Tag(0x30, receipt),
      Tag(0x31, settings), Tag(0x40, presence_sub), Tag(0x41, presence_unsub),
      Tag(0x42, presence_query), Tag(0x44, typing), Tag(0x50, keys_upload), Tag(0x51, keys_fetch),
      Tag(0x60, group_create), Tag(0x61, group_update), Tag(0x62, group_get));
}

inline rc::Gen<Encoded> GenValidMessage(bool small = false) { return GenMessage(true, small); }
inline rc::Gen<Encoded> GenArbitraryMessage(bool small = false) { return GenMessage(false, small); }

// The protobuf message held by a ClientMessage.
inline const google::protobuf::MessageLite& AsProto(const ClientMessage& m) {
  return std::visit([](const auto& msg) -> const google::protobuf::MessageLite& { return msg; }, m);
}

}  // namespace iris::wire::gen
