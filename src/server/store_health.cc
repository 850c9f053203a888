#include "server/store_health.h"

namespace iris::server {
namespace {

uint64_t Delta(uint64_t now, uint64_t before) { return now >= before ? now - before : now; }

}  // namespace

StoreHealthWatch::Events StoreHealthWatch::Observe(const Counters& now) {
  Events e;
  const uint64_t batches = Delta(now.batches, last_.batches);
  const uint64_t errors = Delta(now.write_errors, last_.write_errors);
  e.full_errors = Delta(now.storage_full_errors, last_.storage_full_errors);
  e.other_errors = errors >= e.full_errors ? errors - e.full_errors : 0;
  last_ = now;
  if (e.full_errors > 0) {
    // Both in one interval: whether the space came back is unknown until the next
    // snapshot, so stay full (a success then clears it).
    if (!full_) e.entered_full = true;
    full_ = true;
  } else if (full_ && batches > 0) {
    e.left_full = true;
    full_ = false;
  }
  return e;
}

}  // namespace iris::server
