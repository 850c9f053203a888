#pragma once
// Session: the protocol state machine of one client connection (PROTOCOL.md sections 2, 5, 6).
//
//   kAwaitHello --HELLO ok--> kCatchUp --last page sent--> kPush
//        |                       ^    \--SYNC_PAGE(has_more)--> kAwaitSyncAck --SYNC_ACK--/
//        +--any other frame: UNAUTHENTICATED (fatal)        SYNC (any time) restarts catch-up
//
// Catch-up/push hand-over without loss or duplicates. The store calls back (Push) only after
// an append is visible to Scan, and pushes for one inbox arrive in id order. A catch-up page
// is read asynchronously (CoreApi::Scan on a core thread, the page posted back to this
// loop), one scan per session at a time. A push that reaches the session while a scan is
// out may or may not be in that scan's snapshot, so it is held (in order) and replayed
// after the page, through the usual id filter; a push that arrives before a scan starts was
// visible before it, so that scan (or a later page) returns it, and one that arrives after
// the last page is delivered normally. Hence an append is either in some page or delivered
// after the switch to push mode, and pushes with id <= the last id sent are dropped (no
// duplicates). Pushes that arrive between pages (no scan out) are dropped: the next scan
// returns them. If more than a bounded number of pushes pile up during one scan, the page
// is sent with has_more and the catch-up reads once more instead of switching.
//
// Every request the core answers asynchronously (SEND, RECEIPT, SETTINGS, presence
// subscribe/query, KEYS_UPLOAD, KEYS_FETCH, HISTORY, groups) is answered strictly in the
// order received: each gets a slot in replies_, and replies leave from the front as soon
// as they are ready, whatever order the core or a rate limiter decided them in. Slots count
// against max_inflight_requests: reading pauses while that many wait. The loop thread never
// waits for the core (docs/architecture.md, "No loop thread waits").
//
// Thread-safety: loop thread only. Owned by its EdgeLoop; destroyed after OnClosed.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "auth/jwt.h"
#include "core/core_api.h"
#include "edge/rate_limit.h"
#include "net/connection.h"
#include "wire/frame.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace iris::edge {

class EdgeLoop;

class Session final : public net::Connection::Delegate {
 public:
  Session(EdgeLoop& loop, uint64_t id, int fd, std::string peer_ip, uint32_t ip_retry_after_ms);
  ~Session() override;

  Status Start();
  // The connection comes from a load balancer: a PROXY header precedes TLS. Before Start().
  void ExpectProxyHeader() { conn_->ExpectProxyHeader(); }
  uint64_t id() const { return id_; }
  uint64_t user() const { return user_; }
  uint32_t device() const { return device_; }
  // This session's reference for the core (its device included).
  core::SessionRef Ref() const;
  bool authenticated() const { return state_ != State::kAwaitHello; }

  // net::Connection::Delegate
  void OnHandshakeDone() override;
  bool OnProxyHeader(const Result<net::ProxyHeader>& header) override;
  void OnData(std::span<const uint8_t> data) override;
  void OnWritable() override;
  void OnClosed(std::string_view reason) override;

  // From the core, on the loop thread.
  void Push(const v1::Envelope& e);
  void Replaced();
  // Its device was removed from the user's device list: DEVICE_REMOVED, then closes.
  void Removed();
  // The user's rate debt from the owner of the user's shard (EdgeSink::SettleRate): added
  // to the node's limiters; the first one after HELLO releases the requests held until then.
  void SettleRate(const core::RateDebt& debt);
  // Ends the session with the fatal error `why` (its registration is gone with a peer link).
  void Disconnect(const Status& why) { CloseWith(0, why); }
  void DeliverPresence(const v1::Presence& p);
  void DeliverTyping(const v1::Typing& t);
  // Re-runs the per-frame token check now (after a revocation).
  void RecheckAuth(int64_t now_ms);
  // Timeouts: handshake/HELLO deadline and idle timeout. Called about once a second.
  void Tick(int64_t now_mono_ms);
  // Graceful shutdown: close once in-flight replies are written.
  void Shutdown();
  // A completion of an answered-in-order request, posted back from a core thread.
  void CompleteReply(uint64_t seq, std::string frame);

 private:
  enum class State : uint8_t { kAwaitHello, kCatchUp, kAwaitSyncAck, kPush, kClosing };

  bool HandleFrame(uint8_t opcode, std::string_view payload);
  // Whether reading pauses: too many replies outstanding, or too many frames held while the
  // rate budget is not settled.
  bool ReadingHeld() const;
  // Adds the rate debt to the node's limiters; the first call releases the held frames.
  void ApplyRate(const core::RateDebt& debt);
  void HandleHello(const v1::Hello& m);
  void HandleSend(v1::Send& m);
  void HandleSync(const v1::Sync& m);
  void HandleSyncAck(const v1::SyncAck& m);
  void HandleDeliverAck(const v1::DeliverAck& m);
  void HandleHistory(const v1::History& m);
  void HandleReceipt(const v1::Receipt& m);
  void HandleSettings(const v1::Settings& m);
  void HandleSettingsGet(const v1::SettingsGet& m);
  void HandlePresenceSubscribe(const v1::PresenceSubscribe& m);
  void HandlePresenceUnsubscribe(const v1::PresenceUnsubscribe& m);
  void HandlePresenceQuery(const v1::PresenceQuery& m);
  void HandleTyping(const v1::Typing& m);
  // Takes the (requester, target) key-fetch budget and asks the core for target's bundle;
  // answers reply slot `seq`. On the loop thread.
  void FetchKeysOf(uint64_t seq, uint64_t request_id, uint64_t target);
  void HandleKeysUpload(v1::KeysUpload& m);
  void HandleKeysFetch(const v1::KeysFetch& m);
  void HandleGroupCreate(const v1::GroupCreate& m);
  void HandleGroupUpdate(const v1::GroupUpdate& m);
  void HandleGroupGet(const v1::GroupGet& m);
  // Completion of a store append that answers in request order (SEND, RECEIPT).
  using ReplyBuilder = std::function<std::string(Result<core::AppendResult>)>;
  // Starts the scan of the next catch-up page (or marks a restart when one is out).
  void ContinueCatchUp();
  // The page of scan `gen`, back on the loop thread.
  void OnScanPage(uint64_t gen, Result<core::Page> page);
  // Delivers the pushes held during the last scan (ids <= last_sent_ are dropped).
  void ReplayHeld();
  // Where a completion posts its reply: this session's slot `seq`, on its loop.
  struct ReplyTarget {
    net::EventLoop* loop;
    EdgeLoop* owner;
    uint64_t sid;
    uint64_t seq;
  };
  ReplyTarget TargetOf(uint64_t seq);
  static void PostReply(const ReplyTarget& t, std::string frame);
  // Takes one request of `what` from the user's budget in `limiter`; when refused, answers
  // slot `seq` with RATE_LIMITED (or OVERLOADED) and returns false.
  bool AdmitLimited(KeyedSendLimiter& limiter, std::string_view what, uint64_t seq,
                    uint64_t request_id, std::optional<uint64_t> key = std::nullopt);

  void SendMessage(wire::Opcode op, const google::protobuf::MessageLite& m);
  void SendError(uint64_t request_id, const Status& s, bool fatal);
  void CloseWith(uint64_t request_id, const Status& s);  // fatal error, then close
  uint64_t ReserveReply();
  void FlushReplies();

  EdgeLoop& loop_;
  const uint64_t id_;
  std::unique_ptr<net::Connection> conn_;
  wire::FrameDecoder decoder_;
  State state_ = State::kAwaitHello;
  bool registered_ = false;
  // Between HELLO and the owner's first SettleRate the user's rate budget is not known on
  // this node yet (it may have been spent on another): frames after HELLO are held, in
  // order, and handled once it is (or at settle_deadline_ms_ without it).
  bool rate_settled_ = true;
  // The owner has answered a registration of this session. Until it does, the session asks
  // again (ReRegisterSession) every settle timeout: a registration dropped by a node that
  // did not own the user yet (right after a start or a failover) would otherwise leave the
  // session without pushes until its client reconnected.
  bool owner_answered_ = true;
  int64_t settle_deadline_ms_ = 0;
  std::vector<std::pair<uint8_t, std::string>> unsettled_frames_;
  bool shutting_down_ = false;
  uint32_t ip_retry_after_ms_;  // non-zero: this connection exceeded the per-IP rate
  uint32_t page_size_ = 256;
  uint64_t user_ = 0;
  uint32_t device_ = 1;       // the token's device (docs/protocol.md appendix 20)
  uint64_t last_sent_ = 0;    // highest message id sent (catch-up or push)
  uint64_t awaited_ack_ = 0;  // cursor of the page waiting for SYNC_ACK
  uint64_t acked_ = 0;        // highest DELIVER_ACK cursor
  int64_t opened_ms_ = 0;
  int64_t last_frame_ms_ = 0;
  auth::Claims claims_;
  std::vector<uint64_t> watching_;  // presence subscriptions (at most 1,024)
  // Catch-up: the scan out (at most one), pushes held meanwhile.
  bool scan_inflight_ = false;
  bool restart_scan_ = false;   // a SYNC came while the scan was out: rescan when it is back
  bool held_overflow_ = false;  // pushes were dropped from held_ during this scan
  uint64_t scan_gen_ = 0;
  std::vector<v1::Envelope> held_;
  uint32_t history_inflight_ = 0;
  // Presence answers (subscribe/query) not written yet, and the presence pushes held until
  // they are: a push is newer than an answer computed before it, so it must not be
  // overtaken by that answer (at most one held per user: the latest).
  uint32_t presence_answers_pending_ = 0;
  std::vector<v1::Presence> held_presence_;
  // Reserves a slot for a presence answer (see presence_answers_pending_).
  uint64_t ReservePresenceAnswer();
  edge::TokenBucket typing_bucket_{5.0, 10.0};
  // Ordered replies: slot seq = reply_base_ + index.
  struct Reply {
    bool ready = false;
    bool presence_answer = false;  // PRESENCE_SUBSCRIBE / PRESENCE_QUERY states
    std::string frame;
  };
  // A FIFO that holds no memory while empty (std::deque allocates ~600 bytes up front,
  // which matters at 100K+ idle sessions: NFR-19).
  class ReplyQueue {
   public:
    size_t size() const { return slots_.size() - head_; }
    bool empty() const { return head_ == slots_.size(); }
    Reply& front() { return slots_[head_]; }
    Reply& operator[](size_t i) { return slots_[head_ + i]; }
    void emplace_back() { slots_.emplace_back(); }
    void pop_front() {
      if (++head_ == slots_.size()) {
        std::vector<Reply>().swap(slots_);
        head_ = 0;
      } else if (head_ >= 64 && head_ * 2 >= slots_.size()) {
        slots_.erase(slots_.begin(), slots_.begin() + static_cast<std::ptrdiff_t>(head_));
        head_ = 0;
      }
    }

   private:
    std::vector<Reply> slots_;
    size_t head_ = 0;
  };
  ReplyQueue replies_;
  uint64_t reply_base_ = 0;
};

}  // namespace iris::edge
