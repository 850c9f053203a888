#pragma once
// FanOutWorker: the durable, throttled fan-out of messages to large groups
// (docs/architecture.md, "Group fan-out"; RFC-001 §8: 1,000 inboxes/s per worker).
//
// A SEND to a group of more than CoreOptions::direct_fanout_max_members recipients is
// acknowledged once ONE record is durable in the group's home shard: the group message as
// a fan-out job (store::InboxStore::AppendFanOutJob, deduplicated by the send's (sender,
// idempotency key)). This worker then appends it to every member's inbox:
//  - one job at a time, in the order the jobs were accepted (so one group's messages reach
//    each member in send order), on its own thread: never on a loop, the commit path or a
//    core worker, so other traffic is not held behind a fan-out;
//  - in batches of at most `batch` members, ascending member id (the sender skipped),
//    each batch admitted by a token bucket of `inboxes_per_sec` (capacity: one batch), so
//    that no 1 s window sees more than inboxes_per_sec + batch appends;
//  - members owned by other nodes go through `remote` (ClusterDirectory::AppendRemote),
//    deduplicated there by a key derived from (job, first member of the batch);
//  - each local batch is written together with the job's progress (the last member id
//    done) in one WriteBatch (AppendFanOutBatch), and the last one deletes the job: after
//    a crash the job resumes right after the last batch written (Start reloads every job),
//    so every member gets the message exactly once. A member added after the send and
//    before its batch gets it too; one removed before its batch does not.
//
// Metrics: iris_group_fanout_backlog (gauge: inbox appends still to do, summed over the
// queued jobs), iris_group_fanout_jobs (gauge), iris_group_fanout_appended_total.
//
// Thread-safety: Add, backlog and Stop may be called from any thread (Add is quick: it may
// run on the store's sync thread).

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "store/inbox_store.h"

namespace iris::core {

class FanOutWorker {
 public:
  struct Options {
    uint32_t inboxes_per_sec = 1000;  // >= 1
    uint32_t batch = 0;               // members per batch; 0 = clamp(inboxes_per_sec / 10, 1, 256)
    // Replicated cluster (docs/replication.md): a job whose batch this node's store refuses
    // as UNAVAILABLE (the group's shard is led by another node, or is failing over) is
    // taken off the queue; it stays in the store, and the node that leads the shard runs it
    // (RequestReload on take-over). The queue is also reloaded reload_after_drop_ms after a
    // drop, in case the refusal was passing.
    bool drop_refused = false;
    int64_t reload_after_drop_ms = 5'000;
  };
  // Appends the envelopes that the batch's local write (with the job's progress, in the
  // group's shard) cannot take, and removes them from `envelopes`: those whose recipients
  // other nodes own (on those nodes), and in a cluster those of other shards here; calls
  // `done` once they are durable (any thread). UNAVAILABLE (also when this node does not
  // lead the group's shard: nothing is sent) is a refusal as the store's. Unset on a single
  // node.
  using Remote = std::function<void(const std::string& key, std::vector<v1::Envelope>* envelopes,
                                    std::function<void(Status)> done)>;

  FanOutWorker(store::InboxStore& store, const Clock& clock, Options options);
  ~FanOutWorker();  // Stop()s
  FanOutWorker(const FanOutWorker&) = delete;
  FanOutWorker& operator=(const FanOutWorker&) = delete;

  // Set before Start.
  void set_remote(Remote remote) { remote_ = std::move(remote); }
  // Loads the jobs left in the store (a restart: they resume where they stopped), then
  // starts the thread. Call once. Errors: the store's read errors (the thread still starts,
  // with the jobs added since).
  Status Start();
  // Reads the jobs in the store again (on the worker's thread) and queues those not queued:
  // this node became the primary of a shard (replicated cluster). Any thread.
  void RequestReload();
  // A job just made durable (`recipients`: the members it goes to, for the backlog). A job
  // already queued (e.g. loaded by Start) is not queued twice.
  void Add(store::InboxStore::FanOutJob job, uint32_t recipients);
  // Finishes the batch in progress, then joins the thread; queued jobs stay in the store.
  void Stop();

  int64_t backlog() const;

 private:
  struct Queued {
    store::InboxStore::FanOutJob job;
    int64_t remaining = 0;  // last known count of members still to do (the backlog's share)
  };
  void Run();
  // Queues the jobs in the store that are not queued. Errors: the store's read errors.
  Status Reload();
  // One batch of the front job; false when stopping.
  bool RunBatch(Queued& q);
  // Waits until `n` tokens are there and takes them; false when stopping.
  bool TakeTokens(uint32_t n);
  // Waits `ms` unless stopping; false when stopping.
  bool Pause(int64_t ms);
  void SetRemaining(Queued& q, int64_t remaining);
  // Takes the front job (q) off the queue after a refusal (drop_refused): it stays in the
  // store for the group's shard primary; the queue is reloaded later. Returns true.
  bool DropJob(Queued& q, const store::InboxStore::FanOutJob& job, const Status& why);

  store::InboxStore& store_;
  const Clock& clock_;
  Options options_;
  Remote remote_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> jobs_;
  int64_t backlog_ = 0;
  bool stop_ = false;
  bool reload_requested_ = false;
  int64_t reload_at_ms_ = 0;  // a reload is due at this monotonic time (0: none)
  double tokens_ = 0;
  int64_t tokens_at_ns_ = 0;
  std::thread thread_;
};

}  // namespace iris::core
