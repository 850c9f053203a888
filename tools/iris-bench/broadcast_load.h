#pragma once
// BroadcastLoad: a large broadcast group fanned out while the latency scenario runs
// (iris-bench --broadcast-members N; docs/performance.md, "Broadcast fan-out under load").
// The server acknowledges a broadcast SEND once one fan-out job is durable and then appends
// the message to every member's inbox at --fanout-inboxes-per-sec (RFC-001 §8); this
// measures what that costs the other users: their send -> deliver latency while it runs.
//
// Prepare builds the group over one ordinary client session (GROUP_CREATE, then
// GROUP_UPDATEs of 256 members, waiting out RATE_LIMITED) and logs in the member the
// fan-out reaches last (members are appended in ascending id order). Start sends the
// broadcast `after_s` seconds later on its own thread and waits for that member's DELIVER:
// from the SEND to it is the fan-out's duration.
//
// Thread-safety: Prepare, Start and Finish from one thread; the work runs on one thread of
// its own between Start and Finish.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "iris/client/connection.h"

namespace iris::bench {

class BroadcastLoad {
 public:
  ~BroadcastLoad();
  // `target` host:port; `members` counts the owner (user `owner`; the others are owner + 1
  // .. owner + members - 1). Blocking (about members / 256 seconds: GROUP_UPDATE's rate).
  Status Prepare(const std::string& target, const std::string& ca_file, const std::string& secret,
                 uint64_t owner, uint32_t members);
  void Start(double after_s);
  // Waits up to `timeout_s` for the fan-out to reach the last member; the report:
  // members, sent_at_s (after Start), ack_ms, fan_out_ms (null when it did not finish),
  // error.
  nlohmann::json Finish(double timeout_s);

 private:
  Result<std::unique_ptr<client::Connection>> Login(uint64_t user);
  void Run(double after_s);

  std::string host_;
  uint16_t port_ = 0;
  std::string ca_file_;
  std::string secret_;
  uint64_t owner_ = 0;
  uint32_t members_ = 0;
  uint64_t group_id_ = 0;
  std::unique_ptr<client::Connection> owner_conn_;
  std::unique_ptr<client::Connection> last_member_;
  std::thread thread_;
  // Written by the thread, read after it is joined.
  double sent_at_s_ = 0;
  double ack_ms_ = -1;
  double fan_out_ms_ = -1;
  std::string error_;
  int64_t start_ns_ = 0;
  std::atomic<int64_t> deadline_ns_{0};  // set by Finish
};

}  // namespace iris::bench
