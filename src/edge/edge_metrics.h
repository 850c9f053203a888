#pragma once
// The edge's metrics (PROTOCOL.md section 10, issue 7): resolved once, then updated on the
// hot path without locks (obs::Counter is sharded).

#include "common/status.h"
#include "obs/metrics.h"

namespace iris::edge {

struct EdgeMetrics {
  obs::Counter& msg_in;          // iris_msg_in_total: messages accepted (durable, not duplicates)
  obs::Counter& msg_out;         // iris_msg_out_total: messages sent to recipients
  obs::Counter& ack_sent;        // iris_ack_sent_total
  obs::Counter& dedup_hit;       // iris_dedup_hit_total
  obs::Counter& accepted;
  obs::Counter& closed;
  obs::Counter& handshakes;
  obs::Counter& sessions_opened;
  obs::Counter& auth_failures;
  obs::Counter& rate_limited_send;
  obs::Counter& rate_limited_connect;
  obs::Counter& rate_limited_login;
  obs::Counter& slow_readers;
  obs::Counter& timeouts;
  obs::Counter& sync_pages;
  obs::Counter& presence_out;
  obs::Counter& typing_out;
  obs::Counter& typing_dropped;
  obs::Counter& reregistrations;  // iris_session_reregistrations_total
  obs::Histogram& e2e_latency;   // iris_e2e_latency_seconds
  obs::Histogram& send_latency;  // iris_send_ack_latency_seconds

  void FrameIn(uint8_t opcode);
  void ErrorOut(StatusCode code);

  static EdgeMetrics& Get();
};

}  // namespace iris::edge
