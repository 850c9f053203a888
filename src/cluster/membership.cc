#include "cluster/membership.h"

#include <cstdio>
#include <random>

#include "common/clock.h"
#include "obs/log.h"

namespace iris::cluster {

using obs::LogInfo;
using obs::LogWarn;

std::string NewNodeIncarnation() {
  std::random_device rd;
  const uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

namespace {

NodeInfo WithIncarnation(NodeInfo n) {
  if (n.incarnation.empty()) n.incarnation = NewNodeIncarnation();
  return n;
}

}  // namespace

Membership::Membership(EtcdClient& client, ClusterKeys keys, NodeInfo self, int64_t ttl_s,
                       std::string previous_incarnation)
    : client_(client),
      keys_(std::move(keys)),
      self_(WithIncarnation(std::move(self))),
      ttl_s_(ttl_s),
      previous_incarnation_(std::move(previous_incarnation)) {}

Membership::~Membership() { Stop(); }

Status Membership::Start() {
  // A holder that is alive renews its lease; one that is gone lets it lapse within a TTL.
  const int64_t deadline = SystemClock::Instance().MonoMillis() + ttl_s_ * 1000 + 1000;
  Status s = Register();
  while (s.code() == StatusCode::kBadRequest) {
    if (SystemClock::Instance().MonoMillis() >= deadline) {
      LogWarn("cluster: node id held by another live node; not starting",
              {{"node", self_.id}, {"error", s.message()}});
      return s;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, std::chrono::milliseconds(200), [this] { return stop_; })) return s;
    lock.unlock();
    s = Register();
  }
  if (!s.ok()) {
    LogWarn("cluster: cannot register the node yet; retrying",
            {{"node", self_.id}, {"error", s.message()}});
  }
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
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
  const std::string key = keys_.Node(self_.id);
  IRIS_ASSIGN_OR_RETURN(RangeResult current, client_.Range(key));
  Compare claimable = Compare::Absent(key);
  if (!current.kvs.empty()) {
    const KeyValue& kv = current.kvs.front();
    Result<NodeInfo> holder = ParseNode(kv.value);
    const std::string held_by = holder.ok() ? holder->incarnation : "";
    if (!held_by.empty() && held_by != self_.incarnation && held_by != previous_incarnation_) {
      return BadRequest("node id " + std::to_string(self_.id) +
                        " is already held by another live node (incarnation " + held_by +
                        ", peer " + (holder.ok() ? holder->peer : "?") + ", lease " +
                        std::to_string(kv.lease) +
                        "); every process of a cluster needs its own --node-id");
    }
    claimable = Compare::ModRevisionEquals(key, kv.mod_revision);
  }
  IRIS_ASSIGN_OR_RETURN(Lease lease, client_.LeaseGrant(ttl_s_));
  auto put = client_.Txn({claimable}, {TxnOp::Put(key, NodeToJson(self_), lease.id)});
  if (!put.ok() || !put->succeeded) {
    client_.LeaseRevoke(lease.id).IgnoreError();
    if (!put.ok()) return put.status();
    return Unavailable("node key " + key + " changed while registering; retrying");
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
  LogInfo("cluster: node registered", {{"node", self_.id},
                                       {"lease", lease.id},
                                       {"ttl_s", lease.ttl_s},
                                       {"incarnation", self_.incarnation}});
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
