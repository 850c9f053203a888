#pragma once
// StoreHealthWatch: turns successive snapshots of the store's write counters into the
// operator's log events (server.cc logs them once a second from Supervise()):
//   - "storage full" when a write failed for lack of disk space while none had before;
//   - "storage full cleared" at the first successful write after that;
//   - the count of other failed writes since the previous snapshot.
// Counters are the monotonic ones of store::StoreStats; a counter that went backwards (a
// new store) is taken as the new baseline.
//
// Thread-safety: none (one caller, the supervising thread).

#include <cstdint>

namespace iris::server {

class StoreHealthWatch {
 public:
  struct Counters {
    uint64_t batches = 0;              // successful synced writes
    uint64_t write_errors = 0;         // failed writes, disk full included
    uint64_t storage_full_errors = 0;  // failed writes because the disk was full
  };
  struct Events {
    bool entered_full = false;
    bool left_full = false;
    uint64_t full_errors = 0;   // disk-full failures since the previous snapshot
    uint64_t other_errors = 0;  // other failed writes since the previous snapshot
  };

  // The events between the previous snapshot (zeros at first) and `now`.
  Events Observe(const Counters& now);
  // Whether the latest failed write was for lack of space and no write has succeeded since.
  bool full() const { return full_; }

 private:
  Counters last_;
  bool full_ = false;
};

}  // namespace iris::server
