#include "edge/edge_metrics.h"

#include <array>
#include <string>

#include "wire/opcode.h"

namespace iris::edge {
namespace {

obs::Counter& C(const char* name, const char* help, obs::Labels labels = {}) {
  return obs::Registry::Default().GetCounter(name, help, labels);
}

struct PerLabel {
  std::array<obs::Counter*, 256> frames{};
  std::array<obs::Counter*, 15> errors{};
  PerLabel() {
    for (int op = 0; op < 256; ++op) {
      std::string name(wire::OpcodeName(static_cast<uint8_t>(op)));
      frames[op] = &C("iris_frames_in_total", "Frames received from clients, by opcode",
                      {{"opcode", name}});
    }
    for (uint32_t code = 0; code < errors.size(); ++code) {
      errors[code] = &C("iris_errors_total", "ERROR frames sent, by protocol error code",
                        {{"code", std::string(StatusCodeName(static_cast<StatusCode>(code)))}});
    }
  }
};

PerLabel& Labels() {
  static PerLabel p;
  return p;
}

}  // namespace

void EdgeMetrics::FrameIn(uint8_t opcode) { Labels().frames[opcode]->Inc(); }

void EdgeMetrics::ErrorOut(StatusCode code) {
  const auto c = static_cast<uint32_t>(code);
  if (c < Labels().errors.size()) Labels().errors[c]->Inc();
}

EdgeMetrics& EdgeMetrics::Get() {
  static EdgeMetrics m{
      C("iris_msg_in_total", "Messages accepted durably (duplicates excluded)"),
      C("iris_msg_out_total", "Messages sent to recipients (sync pages and pushes)"),
      C("iris_ack_sent_total", "SEND_ACK frames sent"),
      C("iris_dedup_hit_total", "Sends answered as duplicates of an earlier send"),
      C("iris_connections_accepted_total", "TCP connections accepted"),
      C("iris_connections_closed_total", "Connections closed"),
      C("iris_tls_handshakes_total", "TLS handshakes completed"),
      C("iris_sessions_opened_total", "Sessions authenticated by HELLO"),
      C("iris_auth_failures_total", "HELLOs refused for a bad token"),
      C("iris_rate_limited_total", "Requests refused by a rate limit", {{"limit", "send"}}),
      C("iris_rate_limited_total", "Requests refused by a rate limit", {{"limit", "connect"}}),
      C("iris_rate_limited_total", "Requests refused by a rate limit", {{"limit", "login"}}),
      C("iris_slow_reader_disconnects_total", "Connections cut because output was not drained"),
      C("iris_timeouts_total", "Connections closed by the hello or idle timeout"),
      C("iris_sync_pages_total", "SYNC_PAGE frames sent"),
      C("iris_presence_frames_total", "PRESENCE frames sent"),
      C("iris_typing_frames_total", "TYPING frames relayed"),
      C("iris_typing_dropped_total", "TYPING frames dropped (rate, shed, recipient offline)"),
      C("iris_session_reregistrations_total",
        "Session registrations asked again because the owner did not answer in time"),
      obs::Registry::Default().GetHistogram("iris_e2e_latency_seconds",
                                            "Accepted to the recipient's DELIVER_ACK"),
      obs::Registry::Default().GetHistogram("iris_send_ack_latency_seconds",
                                            "SEND received to SEND_ACK ready"),
  };
  Labels();  // the per-opcode and per-code series too exist from the first scrape
  return m;
}

}  // namespace iris::edge
