#include "core/core.h"

#include <utility>

namespace iris::core {

Core::Core(store::InboxStore& store, EdgeSink& sink, const Clock& clock, CoreOptions options)
    : store_(store), sink_(sink), clock_(clock), options_(options) {
  store_.SetCommitListener(
      [this](const std::vector<v1::Envelope>& envelopes) { OnCommitted(envelopes); });
}

std::optional<SessionRef> Core::RegisterSession(uint64_t user, SessionRef ref) {
  std::optional<SessionRef> old;
  {
    RegistryShard& shard = ShardFor(user);
    std::lock_guard<std::mutex> lock(shard.mu);
    auto [it, inserted] = shard.sessions.try_emplace(user, ref);
    if (!inserted) {
      if (!(it->second == ref)) old = it->second;
      it->second = ref;
    }
  }
  if (old) sink_.Replace(*old);
  return old;
}

void Core::UnregisterSession(uint64_t user, SessionRef ref) {
  RegistryShard& shard = ShardFor(user);
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.sessions.find(user);
  if (it != shard.sessions.end() && it->second == ref) shard.sessions.erase(it);
}

std::optional<SessionRef> Core::FindSession(uint64_t user) const {
  const RegistryShard& shard = ShardFor(user);
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.sessions.find(user);
  if (it == shard.sessions.end()) return std::nullopt;
  return it->second;
}

size_t Core::session_count() const {
  size_t n = 0;
  for (const auto& shard : registry_) {
    std::lock_guard<std::mutex> lock(shard.mu);
    n += shard.sessions.size();
  }
  return n;
}

void Core::Send(uint64_t sender, const v1::Send& send, const std::string& trace_id,
                SendDone done) {
  std::vector<v1::Envelope> envelopes(1);
  v1::Envelope& e = envelopes[0];
  e.set_sender(sender);
  e.set_recipient(send.recipient());
  e.set_kind(v1::MESSAGE);
  e.set_body(send.body());
  e.set_trace_id(trace_id);
  store_.AppendAsync(sender, send.idempotency_key(), std::move(envelopes), std::move(done));
}

Result<store::ScanPage> Core::Scan(uint64_t user, uint64_t after_id, uint32_t limit,
                                   size_t max_bytes) const {
  return store_.Scan(user, after_id, std::min(limit, options_.max_page_messages), max_bytes);
}

Result<store::ScanPage> Core::History(uint64_t user, uint64_t before_id, uint32_t limit,
                                      size_t max_bytes) const {
  return store_.History(user, before_id, std::min(limit, options_.max_page_messages), max_bytes);
}

void Core::OnCommitted(const std::vector<v1::Envelope>& envelopes) {
  for (const v1::Envelope& e : envelopes) {
    if (auto ref = FindSession(e.recipient())) sink_.Deliver(*ref, e);
  }
}

}  // namespace iris::core
