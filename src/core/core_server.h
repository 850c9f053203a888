#pragma once
// CoreServer: the core process's end of the internal link (--edge-processes). Edge processes
// connect to a Unix socket; each link gets a reader thread that turns CoreRequests into
// asynchronous calls on the CoreApi; each completion writes its reply (tagged with the
// request's call id) back on the link from whichever core thread finished it, so replies
// may leave in another order than the requests came and the reader never waits for the
// store. As the core's EdgeSink it routes pushes
// to the edge process that holds the session (SessionRef::edge >> 8).
//
// Thread-safety: EdgeSink methods and Broadcast* from any thread; Listen/Start/Stop from the
// controlling thread.

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/core_api.h"
#include "iris/v1/internal.pb.h"

namespace iris::core {

class CoreServer final : public EdgeSink {
 public:
  CoreServer() = default;
  ~CoreServer() override;

  // The core this server calls; set before Start().
  void set_core(CoreApi* core) { core_ = core; }
  // Fills the reply to an edge process's request for every revocation in force; set before
  // Start().
  void set_revocation_source(std::function<void(internal::v1::Revocations*)> source) {
    revocation_source_ = std::move(source);
  }
  Status Listen(const std::string& socket_path);
  Status Start();
  // Waits until `n` distinct edge processes said hello.
  bool WaitForEdges(size_t n, int64_t timeout_ms);
  size_t connected_edges() const;
  void BroadcastRevokeJti(const std::string& jti, int64_t until_ms);
  void BroadcastRevokeUser(uint64_t user, int64_t before_ms);
  void Stop();

  void Deliver(const SessionRef& to, const v1::Envelope& envelope) override;
  void Replace(const SessionRef& old_session) override;
  void SendPresence(const SessionRef& to, const v1::Presence& presence) override;
  void SendTyping(const SessionRef& to, const v1::Typing& typing) override;

 private:
  // Shared by the reader thread and by every completion still to answer on it: the fd is
  // closed when the last of them lets go, so a late answer never writes to a reused fd.
  struct Link {
    ~Link() {
      if (fd >= 0) ::close(fd);
    }
    int fd = -1;
    uint32_t index = UINT32_MAX;  // edge process index, from its hello
    std::mutex write_mu;
    std::thread reader;
    std::atomic<bool> alive{true};
  };
  void AcceptLoop();
  void Serve(std::shared_ptr<Link> link);
  void Handle(const std::shared_ptr<Link>& link, internal::v1::CoreRequest& req);
  void PushTo(uint32_t edge, internal::v1::Push push);
  void Broadcast(const internal::v1::CoreMessage& m);

  CoreApi* core_ = nullptr;
  std::function<void(internal::v1::Revocations*)> revocation_source_;
  std::string path_;
  int listen_fd_ = -1;
  std::thread acceptor_;
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Link>> links_;  // every link ever accepted (closed ones pruned)
};

// Status <-> wire form of the internal link.
void ToProto(const Status& s, internal::v1::Status* out);
Status FromProto(const internal::v1::Status& s);

}  // namespace iris::core
