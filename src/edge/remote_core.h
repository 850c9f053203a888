#pragma once
// RemoteCore: the CoreApi of an edge process (--edge-processes). Every call becomes a
// CoreRequest on the Unix-socket link to the core process (core::CoreServer); replies and
// pushes come back on the same link and are read by one reader thread, which completes
// waiting calls and hands pushes to the local Edge (EdgeSink) and revocations to the
// PushHandler.
//
// Every CoreApi call is asynchronous: the request carries a call id, the reader thread
// matches the answer to it and runs the completion (which posts to the session's loop).
// Nothing on an event-loop thread waits for the core process. Only the start-up calls
// SayHello and FetchRevocations wait (bounded by call_timeout_ms, then UNAVAILABLE), and
// they are made before the edge's loops run. The catch-up/push hand-over stays lossless
// with an asynchronous Scan: see edge::Session (pushes that arrive while a scan is out
// are held and replayed after its page).
//
// A call unanswered after call_timeout_ms fails with UNAVAILABLE (checked about once a
// second, on ReportPressure). If the link breaks (the core process is gone) every pending
// call fails with UNAVAILABLE and on_link_lost runs once: an edge without its core cannot serve
// anybody.
//
// Thread-safety: every CoreApi method may be called from any thread.

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "core/core_api.h"
#include "iris/v1/internal.pb.h"

namespace iris::edge {

class RemoteCore final : public core::CoreApi {
 public:
  struct PushHandler {
    core::EdgeSink* sink = nullptr;
    std::function<void(const std::string& jti, int64_t until_ms)> revoke_jti;
    std::function<void(uint64_t user, int64_t before_ms)> revoke_user;
    std::function<void()> on_link_lost;
  };

  explicit RemoteCore(uint32_t process_index, int64_t call_timeout_ms = 10'000);
  ~RemoteCore() override;

  // Connects (retrying until the deadline) and says hello.
  Status Connect(const std::string& socket_path, int64_t timeout_ms);
  // Starts the reader thread. Set the handler before.
  void Start(PushHandler handler);
  // Announces this edge process to the core; the core counts it as ready from then on, so
  // call it once the edge is accepting connections.
  Status SayHello();
  // Every token revocation in force in the core process (call after Start(), before the
  // edge accepts connections; later ones arrive as pushes).
  Result<iris::internal::v1::Revocations> FetchRevocations();
  void Stop();

  void RegisterSession(uint64_t user, core::SessionRef ref) override;
  void UnregisterSession(uint64_t user, core::SessionRef ref) override;
  void Send(uint64_t sender, const v1::Send& send, const std::string& trace_id, SendDone done,
            uint64_t parent_span_id = 0) override;
  void Receipt(uint64_t author, const v1::Receipt& receipt, SendDone done) override;
  void UpdateSettings(uint64_t user, const v1::Settings& settings, StatusDone done) override;
  bool Typing(uint64_t from, const v1::Typing& typing) override;
  void Subscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users,
                 PresenceDone done) override;
  void Unsubscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users) override;
  void QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) override;
  void UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) override;
  void FetchKeys(uint64_t user, KeysDone done) override;
  void CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) override;
  void UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) override;
  void GetGroup(uint64_t user, uint64_t group_id, GroupDone done) override;
  void Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes,
            PageDone done) override;
  void History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
               PageDone done) override;
  int ReportPressure(double pressure, int64_t now_ms, bool* changed) override;

 private:
  using Completion = std::function<void(const ::iris::internal::v1::CoreMessage&)>;
  // Sends `req` with a fresh call id; `done` runs on the reader thread (or inline with an
  // UNAVAILABLE message when the link is down).
  void CallAsync(::iris::internal::v1::CoreRequest& req, Completion done);
  // Sends `req` and waits for the reply (UNAVAILABLE status on timeout or link loss).
  ::iris::internal::v1::CoreMessage Call(::iris::internal::v1::CoreRequest& req);
  // Sends `req` without waiting for anything.
  void Cast(::iris::internal::v1::CoreRequest& req);
  void ReadLoop();
  void FailAll();
  // Fails (UNAVAILABLE) every call still unanswered call_timeout_ms after it was sent: a
  // core process that is alive but stuck must not hold a session's reply slots forever.
  void ExpireOverdue(int64_t now_mono_ms);

  const uint32_t process_index_;
  const int64_t call_timeout_ms_;
  int fd_ = -1;
  std::mutex write_mu_;
  std::mutex mu_;
  struct Pending {
    Completion done;
    int64_t deadline_ms;  // monotonic
  };
  std::unordered_map<uint64_t, Pending> pending_;
  std::atomic<uint64_t> next_call_{1};
  std::atomic<bool> link_up_{false};
  std::atomic<int> level_{0};           // the core's last answer to a pressure report
  std::atomic<int> reported_level_{0};  // what the last ReportPressure returned
  PushHandler handler_;
  std::thread reader_;
};

}  // namespace iris::edge
