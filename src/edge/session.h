#pragma once
// Session: the protocol state machine of one client connection (PROTOCOL.md sections 2, 5, 6).
//
//   kAwaitHello --HELLO ok--> kCatchUp --last page sent--> kPush
//        |                       ^    \--SYNC_PAGE(has_more)--> kAwaitSyncAck --SYNC_ACK--/
//        +--any other frame: UNAUTHENTICATED (fatal)        SYNC (any time) restarts catch-up
//
// Catch-up/push hand-over without loss or duplicates: the store calls back (Push) only after
// an append is visible to Scan, and pushes for one inbox arrive in id order. A page scan and
// the switch to push mode happen in one turn of the loop, so an append is either in the last
// scan or pushed after the switch; pushes with id <= the last id sent are dropped, and pushes
// that arrive during catch-up are dropped because a later scan will return them.
//
// SENDs are answered strictly in the order received: each gets a slot in replies_, and
// replies leave from the front as soon as they are ready, whatever order the store or the
// rate limiter decided them in.
//
// Thread-safety: loop thread only. Owned by its EdgeLoop; destroyed after OnClosed.

#include <cstdint>
#include <vector>
#include <memory>
#include <string>

#include "auth/jwt.h"
#include "edge/rate_limit.h"
#include "core/core_api.h"
#include "net/connection.h"
#include "wire/frame.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace iris::edge {

class EdgeLoop;

class Session final : public net::Connection::Delegate {
 public:
  Session(EdgeLoop& loop, uint64_t id, int fd, std::string peer_ip,
          uint32_t ip_retry_after_ms);
  ~Session() override;

  Status Start();
  uint64_t id() const { return id_; }
  uint64_t user() const { return user_; }
  bool authenticated() const { return state_ != State::kAwaitHello; }

  // net::Connection::Delegate
  void OnHandshakeDone() override;
  void OnData(std::span<const uint8_t> data) override;
  void OnWritable() override;
  void OnClosed(std::string_view reason) override;

  // From the core, on the loop thread.
  void Push(const v1::Envelope& e);
  void Replaced();
  void DeliverPresence(const v1::Presence& p);
  void DeliverTyping(const v1::Typing& t);
  // Re-runs the per-frame token check now (after a revocation).
  void RecheckAuth(int64_t now_ms);
  // Timeouts: handshake/HELLO deadline and idle timeout. Called about once a second.
  void Tick(int64_t now_mono_ms);
  // Graceful shutdown: close once in-flight replies are written.
  void Shutdown();
  // A SEND/RECEIPT completion, posted back from the store's commit thread.
  void CompleteReply(uint64_t seq, std::string frame);

 private:
  enum class State : uint8_t { kAwaitHello, kCatchUp, kAwaitSyncAck, kPush, kClosing };

  bool HandleFrame(uint8_t opcode, std::string_view payload);
  void HandleHello(const v1::Hello& m);
  void HandleSend(const v1::Send& m);
  void HandleSync(const v1::Sync& m);
  void HandleSyncAck(const v1::SyncAck& m);
  void HandleDeliverAck(const v1::DeliverAck& m);
  void HandleHistory(const v1::History& m);
  void HandleReceipt(const v1::Receipt& m);
  void HandleSettings(const v1::Settings& m);
  void HandlePresenceSubscribe(const v1::PresenceSubscribe& m);
  void HandlePresenceUnsubscribe(const v1::PresenceUnsubscribe& m);
  void HandlePresenceQuery(const v1::PresenceQuery& m);
  void HandleTyping(const v1::Typing& m);
  void HandleKeysUpload(const v1::KeysUpload& m);
  void HandleKeysFetch(const v1::KeysFetch& m);
  void HandleGroupCreate(const v1::GroupCreate& m);
  void HandleGroupUpdate(const v1::GroupUpdate& m);
  void HandleGroupGet(const v1::GroupGet& m);
  void SendOk(uint64_t request_id);
  // Completion of a store append that answers in request order (SEND, RECEIPT).
  using ReplyBuilder = std::function<std::string(Result<store::AppendOutcome>)>;
  void ContinueCatchUp();

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
  bool shutting_down_ = false;
  uint32_t ip_retry_after_ms_;  // non-zero: this connection exceeded the per-IP rate
  uint32_t page_size_ = 256;
  uint64_t user_ = 0;
  uint64_t last_sent_ = 0;       // highest message id sent (catch-up or push)
  uint64_t awaited_ack_ = 0;     // cursor of the page waiting for SYNC_ACK
  uint64_t acked_ = 0;           // highest DELIVER_ACK cursor
  int64_t opened_ms_ = 0;
  int64_t last_frame_ms_ = 0;
  auth::Claims claims_;
  std::vector<uint64_t> watching_;  // presence subscriptions (at most 1,024)
  edge::TokenBucket typing_bucket_{5.0, 10.0};
  // Ordered replies: slot seq = reply_base_ + index.
  struct Reply {
    bool ready = false;
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
