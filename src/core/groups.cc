#include "core/groups.h"

#include <xxhash.h>

#include <algorithm>
#include <set>

namespace iris::core {
namespace {

bool IsMember(const v1::GroupInfo& g, uint64_t user) {
  return std::find(g.members().begin(), g.members().end(), user) != g.members().end();
}

uint32_t CapFor(const GroupLimits& l, v1::GroupKind kind) {
  return kind == v1::BROADCAST ? l.max_broadcast_members : l.max_e2ee_members;
}

}  // namespace

uint64_t GroupService::GroupIdFor(uint64_t owner, std::string_view key) {
  std::string buf(8, '\0');
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(owner >> (8 * i));
  buf.append(key);
  const uint64_t h = XXH64(buf.data(), buf.size(), 0x6972697367727570ULL) >> 1;  // 63 bits
  return h == 0 ? 1 : h;
}

v1::GroupInfo GroupService::MembersPage(const v1::GroupInfo& full, uint64_t members_after,
                                        uint32_t max_members) {
  std::vector<uint64_t> sorted(full.members().begin(), full.members().end());
  std::sort(sorted.begin(), sorted.end());
  v1::GroupInfo page = full;
  page.clear_members();
  page.set_member_count(static_cast<uint32_t>(sorted.size()));
  auto it = std::upper_bound(sorted.begin(), sorted.end(), members_after);
  uint64_t cursor = members_after;
  for (uint32_t n = 0; it != sorted.end() && n < max_members; ++it, ++n) {
    page.add_members(*it);
    cursor = *it;
  }
  page.set_members_has_more(it != sorted.end());
  page.set_members_cursor(cursor);
  return page;
}

void GroupService::AppendEvent(const v1::GroupInfo& info, const std::vector<uint64_t>& to,
                               uint64_t actor, std::string key, InfoDone done) {
  std::vector<v1::Envelope> envelopes;
  envelopes.reserve(to.size());
  // The event's body: the whole list for a small group, none (to be paged) for a large one.
  const std::string body =
      MembersPage(info, 0,
                  static_cast<uint32_t>(info.members_size()) <= kEventInlineMembers
                      ? kEventInlineMembers
                      : 0)
          .SerializeAsString();
  for (uint64_t member : to) {
    v1::Envelope e;
    e.set_sender(actor);
    e.set_recipient(member);
    e.set_group_id(info.group_id());
    e.set_kind(v1::GROUP_EVENT);
    e.set_body(body);
    envelopes.push_back(std::move(e));
  }
  store::AppendCallback then = [info, done = std::move(done)](Result<store::AppendOutcome> r) {
    if (!r.ok()) {
      done(r.status());
      return;
    }
    done(info);
  };
  if (appender_) {
    if (key.empty()) {
      key = "iris.group-event/" + std::to_string(info.group_id()) + "/" +
            std::to_string(info.version());
    }
    appender_(actor, std::move(key), std::move(envelopes), std::move(then));
    return;
  }
  store_.AppendAsync(actor, std::move(key), std::move(envelopes), std::move(then));
}

void GroupService::Create(uint64_t owner, const v1::GroupCreate& m, InfoDone done) {
  std::set<uint64_t> members(m.members().begin(), m.members().end());
  members.insert(owner);
  if (members.size() > CapFor(limits_, m.kind())) {
    done(TooLarge("group would have " + std::to_string(members.size()) + " members; at most " +
                  std::to_string(CapFor(limits_, m.kind()))));
    return;
  }
  const uint64_t gid = GroupIdFor(owner, m.idempotency_key());
  v1::GroupInfo info;
  {
    std::lock_guard<std::mutex> lock(LockFor(gid));
    auto existing = store_.GetGroup(gid);
    if (existing.ok()) {
      if (existing->owner() != owner) {
        done(Internal("group id collision"));
        return;
      }
      info = *existing;  // a retried create: same group, fan-out deduplicated by the key
    } else if (existing.status().code() != StatusCode::kNotFound) {
      done(existing.status());
      return;
    } else {
      info.set_group_id(gid);
      info.set_kind(m.kind());
      info.set_owner(owner);
      for (uint64_t u : members) info.add_members(u);
      info.set_version(1);
      Status s = store_.PutGroup(info);
      if (!s.ok()) {
        done(s);
        return;
      }
    }
  }
  std::vector<uint64_t> to(info.members().begin(), info.members().end());
  AppendEvent(info, to, owner, m.idempotency_key(), std::move(done));
}

void GroupService::Update(uint64_t user, const v1::GroupUpdate& m, InfoDone done) {
  v1::GroupInfo info;
  std::vector<uint64_t> notify;
  {
    std::lock_guard<std::mutex> lock(LockFor(m.group_id()));
    auto g = store_.GetGroup(m.group_id());
    if (!g.ok()) {
      done(g.status());
      return;
    }
    info = *g;
    const bool self_leave =
        m.add().empty() && m.remove_size() == 1 && m.remove(0) == user && IsMember(info, user);
    if (info.owner() != user && !self_leave) {
      done(Forbidden("only the group owner changes membership"));
      return;
    }
    std::set<uint64_t> members(info.members().begin(), info.members().end());
    std::set<uint64_t> everyone = members;
    for (uint64_t u : m.add()) {
      members.insert(u);
      everyone.insert(u);
    }
    for (uint64_t u : m.remove()) {
      if (u == info.owner() && !self_leave) {
        done(BadRequest("the owner cannot be removed"));
        return;
      }
      members.erase(u);
    }
    if (members.size() > CapFor(limits_, info.kind())) {
      done(TooLarge("group would exceed " + std::to_string(CapFor(limits_, info.kind())) +
                    " members"));
      return;
    }
    info.clear_members();
    for (uint64_t u : members) info.add_members(u);
    info.set_version(info.version() + 1);
    Status s = store_.PutGroup(info);
    if (!s.ok()) {
      done(s);
      return;
    }
    notify.assign(everyone.begin(), everyone.end());
  }
  AppendEvent(info, notify, user, "", std::move(done));
}

Result<v1::GroupInfo> GroupService::Get(uint64_t user, uint64_t group_id) const {
  auto g = store_.GetGroup(group_id);
  if (!g.ok()) return g.status();
  if (!IsMember(*g, user)) return Forbidden("not a member of this group");
  return g;
}

Result<v1::GroupInfo> GroupService::SendTarget(uint64_t sender, uint64_t group_id) const {
  auto g = store_.GetGroup(group_id);
  if (!g.ok()) return g.status();
  if (!IsMember(*g, sender)) return Forbidden("not a member of this group");
  if (g->kind() == v1::BROADCAST && g->owner() != sender) {
    return Forbidden("only the owner sends to a broadcast group");
  }
  return g;
}

Result<std::vector<v1::Envelope>> GroupService::FanOut(uint64_t sender, uint64_t group_id,
                                                       const std::string& body,
                                                       const std::string& trace_id) const {
  auto g = SendTarget(sender, group_id);
  if (!g.ok()) return g.status();
  std::vector<v1::Envelope> out;
  out.reserve(static_cast<size_t>(g->members_size()));
  for (uint64_t member : g->members()) {
    if (member == sender) continue;
    v1::Envelope e;
    e.set_sender(sender);
    e.set_recipient(member);
    e.set_group_id(group_id);
    e.set_kind(v1::MESSAGE);
    e.set_body(body);
    e.set_trace_id(trace_id);
    out.push_back(std::move(e));
  }
  if (out.empty()) return BadRequest("the group has no other members");
  return out;
}

Result<std::vector<uint64_t>> GroupService::MembersFor(uint64_t user, uint64_t group_id) const {
  auto g = Get(user, group_id);
  if (!g.ok()) return g.status();
  return std::vector<uint64_t>(g->members().begin(), g->members().end());
}

}  // namespace iris::core
