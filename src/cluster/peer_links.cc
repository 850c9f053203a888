#include "cluster/peer_links.h"

#include <chrono>

#include "common/clock.h"
#include "obs/log.h"

namespace iris::cluster {

PeerLinks::PeerLinks(PeerLinksOptions options, const net::PeerTlsContext& tls,
                     std::function<std::shared_ptr<const Placement>()> placement,
                     core::EdgeSink& outgoing, core::EdgeSink& incoming,
                     std::function<void(NodeId)> on_lost)
    : options_(options),
      tls_(tls),
      placement_(std::move(placement)),
      outgoing_(outgoing),
      incoming_(incoming),
      on_lost_(std::move(on_lost)) {}

PeerLinks::~PeerLinks() { Stop(); }

void PeerLinks::Start() {
  thread_ = std::thread([this] { Run(); });
}

void PeerLinks::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::vector<std::unique_ptr<rpc::RemoteCore>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    up_.clear();
    all.swap(all_);
  }
  for (auto& r : all) r->Stop();
}

core::CoreApi* PeerLinks::PeerCore(NodeId node) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = up_.find(node);
  if (it != up_.end() && it->second->link_up()) return it->second;
  if (!stop_ && node != options_.self) {
    wanted_.insert(node);
    cv_.notify_all();
  }
  return nullptr;
}

bool PeerLinks::SendReplication(NodeId node, const internal::v1::ReplicationMessage& message) {
  // A RemoteCore handed out stays valid until Stop(), so it is used outside the lock.
  auto* core = static_cast<rpc::RemoteCore*>(PeerCore(node));
  if (core == nullptr) return false;
  core->SendReplication(message);
  return true;
}

core::EdgeSink* PeerLinks::PeerSink(NodeId node) {
  (void)node;  // the server routes each push by SessionRef::node to that node's link
  return &outgoing_;
}

void PeerLinks::Want(NodeId node) {
  if (node == options_.self) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = up_.find(node);
  if (it != up_.end() && it->second->link_up()) return;
  wanted_.insert(node);
  cv_.notify_all();
}

size_t PeerLinks::links_up() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [node, r] : up_) n += r->link_up() ? 1 : 0;
  return n;
}

void PeerLinks::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const int64_t now = SystemClock::Instance().MonoMillis();
    // The node whose turn came first: a node that cannot be reached (each attempt may take
    // the connect timeout) must not starve the others, as the lowest id always did.
    NodeId next = 0;
    int64_t next_at = 0;
    int64_t wait_ms = 1'000;
    for (NodeId n : wanted_) {
      const int64_t at = next_try_ms_.count(n) ? next_try_ms_[n] : 0;
      if (at <= now) {
        if (next == 0 || at < next_at) {
          next = n;
          next_at = at;
        }
        continue;
      }
      wait_ms = std::min(wait_ms, at - now);
    }
    if (next == 0) {
      cv_.wait_for(lock, std::chrono::milliseconds(wait_ms));
      continue;
    }
    wanted_.erase(next);
    lock.unlock();
    Dial(next);
    lock.lock();
    // The backoff counts from the end of the attempt, which puts the node behind the others
    // that are due.
    next_try_ms_[next] = SystemClock::Instance().MonoMillis() + options_.redial_backoff_ms;
  }
}

void PeerLinks::Dial(NodeId node) {
  const std::shared_ptr<const Placement> p = placement_();
  const NodeInfo* info = p ? p->Node(node) : nullptr;
  if (info == nullptr || !info->alive || info->peer.empty()) return;  // asked again later
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = up_.find(node);
    if (it != up_.end() && it->second->link_up()) return;
  }
  rpc::RemoteCoreOptions ro;
  ro.call_timeout_ms = options_.call_timeout_ms;
  ro.link = rpc::PeerLinkOptions();
  auto remote = std::make_unique<rpc::RemoteCore>(0, ro);
  rpc::RemoteCore::PushHandler h;
  h.sink = &incoming_;
  h.on_link_lost = [this, node] {
    obs::LogWarn("peer link lost", {{"node", node}});
    if (on_lost_) on_lost_(node);
    Want(node);
  };
  const Status s =
      remote->ConnectPeer(info->peer, tls_, node, options_.self, h, options_.connect_timeout_ms);
  if (!s.ok()) {
    obs::LogWarn("cannot reach peer",
                 {{"node", node}, {"address", info->peer}, {"error", s.ToString()}});
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_) wanted_.insert(node);  // tried again after the backoff
    return;
  }
  obs::LogInfo("peer link up", {{"node", node}, {"address", info->peer}});
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) {
    remote->Stop();
    return;
  }
  up_[node] = remote.get();
  all_.push_back(std::move(remote));
}

}  // namespace iris::cluster
