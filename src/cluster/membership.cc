#include "cluster/membership.h"

#include "common/clock.h"
#include "obs/log.h"

namespace iris::cluster {

using obs::LogInfo;
using obs::LogWarn;

Membership::Membership(EtcdClient& client, ClusterKeys keys, NodeInfo self, int64_t ttl_s)
    : client_(client), keys_(std::move(keys)), self_(std::move(self)), ttl_s_(ttl_s) {}

Membership::~Membership() { Stop(); }

void Membership::Start() {
  thread_ = std::thread([this] { Run(); });
}

bool Membership::WaitRegistered(int timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [this] {
    return registered() || stop_;
  }) && registered();
}

void Membership::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Status Membership::Register() {
  IRIS_ASSIGN_OR_RETURN(Lease lease, client_.LeaseGrant(ttl_s_));
  auto put = client_.Put(keys_.Node(self_.id), NodeToJson(self_), lease.id);
  if (!put.ok()) {
    client_.LeaseRevoke(lease.id).IgnoreError();
    return put.status();
  }
  keeper_ = std::make_unique<LeaseKeeper>(client_, lease, [this] {
    std::lock_guard<std::mutex> lock(mu_);
    lost_ = true;
    cv_.notify_all();
  });
  keeper_->Start();
  {
    std::lock_guard<std::mutex> lock(mu_);
    lease_id_ = lease.id;
    ++registrations_;
  }
  cv_.notify_all();
  LogInfo("cluster: node registered",
          {{"node", self_.id}, {"lease", lease.id}, {"ttl_s", lease.ttl_s}});
  return Status::Ok();
}

void Membership::Run() {
  int64_t backoff_ms = 100;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (lease_id_ == 0) {
      lock.unlock();
      const Status s = Register();
      lock.lock();
      if (!s.ok()) {
        LogWarn("cluster: cannot register the node; retrying",
                {{"node", self_.id}, {"error", s.message()}});
        cv_.wait_for(lock, std::chrono::milliseconds(backoff_ms), [this] { return stop_; });
        backoff_ms = std::min<int64_t>(backoff_ms * 2, 2000);
        continue;
      }
      backoff_ms = 100;
    }
    cv_.wait(lock, [this] { return stop_ || lost_; });
    if (lost_) {
      lost_ = false;
      lease_id_ = 0;
      lock.unlock();
      keeper_->Stop();
      keeper_.reset();
      LogWarn("cluster: node lease lost; registering again", {{"node", self_.id}});
      lock.lock();
    }
  }
  lock.unlock();
  if (keeper_) {
    keeper_->Stop();
    const int64_t id = lease_id_.exchange(0);
    if (id != 0) client_.LeaseRevoke(id).IgnoreError();
    keeper_.reset();
  }
}

}  // namespace iris::cluster
