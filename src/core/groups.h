#pragma once
// GroupService: group membership and group fan-out (PROTOCOL.md "Groups", RFC-001 §8).
//
//  - GROUP_CREATE: the creator is the owner and a member. The group id is derived from
//    (owner, idempotency key), so a retried create finds the same group; the GROUP_EVENT
//    fan-out uses the same key, so a retry stores nothing twice.
//  - GROUP_UPDATE: owner only (a member may remove itself, i.e. leave); version increases by
//    one per change; a GROUP_EVENT (body: GroupInfo) goes to old and new members.
//  - SEND with group_id: the sender must be a member (FORBIDDEN otherwise); only the owner
//    sends to a BROADCAST group. One envelope per member except the sender, written in ONE
//    durable batch (so SEND_ACK means the whole fan-out is durable).
//  - Size caps: E2EE 256 members, BROADCAST 10,000 (TOO_LARGE).
//
// Thread-safety: all methods may be called from any thread; read-modify-write of one group
// is serialised by a striped lock.

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>

#include "common/status.h"
#include "iris/v1/client.pb.h"
#include "store/inbox_store.h"

namespace iris::core {

struct GroupLimits {
  uint32_t max_e2ee_members = 256;
  uint32_t max_broadcast_members = 10000;
};

class GroupService {
 public:
  GroupService(store::InboxStore& store, GroupLimits limits) : store_(store), limits_(limits) {}

  using InfoDone = std::function<void(Result<v1::GroupInfo>)>;
  // Completion runs on the store's sync thread (the commit thread when the store refuses
  // the write before writing it; inline on an early error).
  void Create(uint64_t owner, const v1::GroupCreate& m, InfoDone done);
  void Update(uint64_t user, const v1::GroupUpdate& m, InfoDone done);
  Result<v1::GroupInfo> Get(uint64_t user, uint64_t group_id) const;
  // The group a SEND from `sender` goes to, once the sender may send to it: FORBIDDEN (not
  // a member; not the owner of a broadcast group), NOT_FOUND.
  Result<v1::GroupInfo> SendTarget(uint64_t sender, uint64_t group_id) const;
  // The envelopes of a group SEND (one per member except the sender), or FORBIDDEN/NOT_FOUND.
  Result<std::vector<v1::Envelope>> FanOut(uint64_t sender, uint64_t group_id,
                                           const std::string& body,
                                           const std::string& trace_id) const;
  // Members of a group the user belongs to (for group typing).
  Result<std::vector<uint64_t>> MembersFor(uint64_t user, uint64_t group_id) const;

  static uint64_t GroupIdFor(uint64_t owner, std::string_view idempotency_key);

  // Member-list paging (docs/protocol.md, "Groups: paged member lists"). A GROUP_INFO
  // holds at most kMembersPerPage members: 4,096 varints of at most 10 bytes each plus the
  // other fields stay far below one frame's 65,535 bytes, whatever the ids.
  static constexpr uint32_t kMembersPerPage = 4096;
  // A GROUP_EVENT body lists the members only for groups of at most this many (every E2EE
  // group); a larger group's event carries none (members_has_more set, members_cursor 0):
  // the client pages them with GROUP_GET. This also keeps the events of a broadcast group
  // small: one per member and change.
  static constexpr uint32_t kEventInlineMembers = 256;
  // `full` with only the members whose id is greater than `members_after`, ascending, at
  // most `max_members` of them; members_has_more, members_cursor (the last listed id, or
  // `members_after` when none is) and member_count (the whole list's length) set.
  static v1::GroupInfo MembersPage(const v1::GroupInfo& full, uint64_t members_after,
                                   uint32_t max_members = kMembersPerPage);

  // How GROUP_EVENT envelopes are appended (default: one store batch). A cluster node's core
  // sets one that sends the members owned by other nodes to their owners; group updates
  // then carry a key derived from (group id, version), so that a retried share of the same
  // event is deduplicated. Set before the first request.
  using Appender =
      std::function<void(uint64_t actor, std::string key, std::vector<v1::Envelope> envelopes,
                         store::AppendCallback done)>;
  void set_appender(Appender appender) { appender_ = std::move(appender); }

 private:
  void AppendEvent(const v1::GroupInfo& info, const std::vector<uint64_t>& to, uint64_t actor,
                   std::string key, InfoDone done);
  std::mutex& LockFor(uint64_t group_id) const { return locks_[group_id % locks_.size()]; }

  store::InboxStore& store_;
  GroupLimits limits_;
  Appender appender_;
  mutable std::array<std::mutex, 64> locks_;
};

}  // namespace iris::core
