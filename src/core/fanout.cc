#include "core/fanout.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <memory>

#include "obs/log.h"
#include "obs/metrics.h"

namespace iris::core {
namespace {

obs::Gauge& BacklogGauge() {
  static obs::Gauge& g = obs::Registry::Default().GetGauge(
      "iris_group_fanout_backlog",
      "Group fan-out: inbox appends still to do for the accepted large-group messages");
  return g;
}
obs::Gauge& JobsGauge() {
  static obs::Gauge& g = obs::Registry::Default().GetGauge(
      "iris_group_fanout_jobs", "Group fan-out: accepted large-group messages not fanned out yet");
  return g;
}
obs::Counter& AppendedCounter() {
  static obs::Counter& c = obs::Registry::Default().GetCounter(
      "iris_group_fanout_appended_total",
      "Group fan-out: envelopes appended to members' inboxes by the fan-out worker");
  return c;
}

constexpr int64_t kRetryMs = 200;  // after a failed batch (store or remote error)

}  // namespace

FanOutWorker::FanOutWorker(store::InboxStore& store, const Clock& clock, Options options)
    : store_(store), clock_(clock), options_(options) {
  options_.inboxes_per_sec = std::max<uint32_t>(options_.inboxes_per_sec, 1);
  if (options_.batch == 0) {
    options_.batch = std::clamp<uint32_t>(options_.inboxes_per_sec / 10, 1, 256);
  }
  tokens_ = options_.batch;
  tokens_at_ns_ = clock_.MonoNanos();
}

FanOutWorker::~FanOutWorker() { Stop(); }

Status FanOutWorker::Start() {
  const Status st = Reload();
  thread_ = std::thread([this] { Run(); });
  return st;
}

void FanOutWorker::RequestReload() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    reload_requested_ = true;
  }
  cv_.notify_all();
}

Status FanOutWorker::Reload() {
  Status st;
  auto jobs = store_.LoadFanOutJobs();
  if (jobs.ok()) {
    for (store::InboxStore::FanOutJob& job : *jobs) {
      // The backlog share is an estimate until the first batch reads the members.
      auto g = store_.GetGroup(job.group_id);
      int64_t remaining = 0;
      if (g.ok()) {
        for (uint64_t m : g->members()) {
          if (m > job.done_through && m != job.message.sender()) ++remaining;
        }
      }
      Add(std::move(job), static_cast<uint32_t>(remaining));
    }
    if (!jobs->empty()) {
      obs::LogInfo("group fan-out resumed", {{"jobs", jobs->size()}});
    }
  } else {
    st = jobs.status();
  }
  return st;
}

void FanOutWorker::Add(store::InboxStore::FanOutJob job, uint32_t recipients) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Queued& q : jobs_) {
      if (q.job.job_id == job.job_id && q.job.group_id == job.group_id) return;  // queued
    }
    jobs_.push_back(Queued{std::move(job), recipients});
    backlog_ += recipients;
  }
  BacklogGauge().Add(recipients);
  JobsGauge().Add(1);
  cv_.notify_all();
}

void FanOutWorker::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  // What stays queued is in the store; this process's gauges forget it.
  BacklogGauge().Add(-backlog_);
  JobsGauge().Add(-static_cast<int64_t>(jobs_.size()));
  backlog_ = 0;
  jobs_.clear();
}

int64_t FanOutWorker::backlog() const {
  std::lock_guard<std::mutex> lock(mu_);
  return backlog_;
}

void FanOutWorker::SetRemaining(Queued& q, int64_t remaining) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t delta = remaining - q.remaining;
  q.remaining = remaining;
  backlog_ += delta;
  BacklogGauge().Add(delta);
}

bool FanOutWorker::Pause(int64_t ms) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return stop_; });
  return !stop_;
}

bool FanOutWorker::TakeTokens(uint32_t n) {
  const double rate = options_.inboxes_per_sec;
  const double cap = std::max<double>(options_.batch, n);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (stop_) return false;
    const int64_t now = clock_.MonoNanos();
    tokens_ = std::min(cap, tokens_ + rate * static_cast<double>(now - tokens_at_ns_) / 1e9);
    tokens_at_ns_ = now;
    if (tokens_ >= n) {
      tokens_ -= n;
      return true;
    }
    const auto wait_ns = static_cast<int64_t>((n - tokens_) / rate * 1e9) + 1;
    cv_.wait_for(lock, std::chrono::nanoseconds(wait_ns), [this] { return stop_; });
  }
}

void FanOutWorker::Run() {
  for (;;) {
    Queued* q = nullptr;
    bool reload = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      const auto due = [this] {
        return reload_requested_ || (reload_at_ms_ != 0 && clock_.MonoMillis() >= reload_at_ms_);
      };
      for (;;) {
        if (stop_ || !jobs_.empty() || due()) break;
        if (reload_at_ms_ != 0) {
          cv_.wait_for(lock, std::chrono::milliseconds(reload_at_ms_ - clock_.MonoMillis()));
        } else {
          cv_.wait(lock);
        }
      }
      if (stop_) return;
      if (due()) {
        reload = true;
        reload_requested_ = false;
        reload_at_ms_ = 0;
      } else {
        q = &jobs_.front();  // only this thread pops; push_back keeps references valid
      }
    }
    if (reload) {
      const Status s = Reload();
      if (!s.ok()) obs::LogWarn("group fan-out: reload failed", {{"error", s.ToString()}});
      continue;
    }
    if (!RunBatch(*q)) return;
  }
}

bool FanOutWorker::DropJob(Queued& q, const store::InboxStore::FanOutJob& job, const Status& why) {
  // Another node leads the group's shard (or it is failing over): the job stays in the
  // store for the shard's primary; this node looks again later.
  obs::LogInfo("group fan-out: job left to the group's shard primary",
               {{"group", job.group_id}, {"job", job.job_id}, {"error", why.ToString()}});
  std::lock_guard<std::mutex> lock(mu_);
  backlog_ -= q.remaining;
  BacklogGauge().Add(-q.remaining);
  JobsGauge().Add(-1);
  jobs_.pop_front();
  reload_at_ms_ = clock_.MonoMillis() + options_.reload_after_drop_ms;
  return true;
}

bool FanOutWorker::RunBatch(Queued& q) {
  store::InboxStore::FanOutJob& job = q.job;
  auto g = store_.GetGroup(job.group_id);
  std::vector<uint64_t> members;
  if (g.ok()) {
    members.assign(g->members().begin(), g->members().end());
    std::sort(members.begin(), members.end());
  } else if (g.status().code() != StatusCode::kNotFound) {
    obs::LogWarn("group fan-out: group read failed",
                 {{"group", job.group_id}, {"error", g.status().ToString()}});
    return Pause(kRetryMs);
  }  // a deleted group: nothing left to do, the job is dropped below
  const uint64_t sender = job.message.sender();
  auto it = std::upper_bound(members.begin(), members.end(), job.done_through);
  std::vector<uint64_t> batch;
  int64_t remaining = 0;
  for (; it != members.end(); ++it) {
    if (*it == sender) continue;
    if (batch.size() < options_.batch) {
      batch.push_back(*it);
    } else {
      ++remaining;
    }
  }
  SetRemaining(q, remaining + static_cast<int64_t>(batch.size()));
  const bool finished = remaining == 0;
  if (!batch.empty() && !TakeTokens(static_cast<uint32_t>(batch.size()))) return false;

  std::vector<v1::Envelope> envelopes;
  envelopes.reserve(batch.size());
  for (uint64_t member : batch) {
    v1::Envelope e;
    e.set_sender(sender);
    e.set_sender_device(job.message.sender_device());
    e.set_recipient(member);
    e.set_group_id(job.group_id);
    e.set_kind(v1::MESSAGE);
    e.set_body(job.message.body());
    e.set_trace_id(job.message.trace_id());
    envelopes.push_back(std::move(e));
  }
  if (remote_ && !envelopes.empty()) {
    auto p = std::make_shared<std::promise<Status>>();
    std::future<Status> f = p->get_future();
    const std::string key =
        "iris.fanout/" + std::to_string(job.job_id) + "/" + std::to_string(batch.front());
    remote_(key, &envelopes, [p](Status s) { p->set_value(std::move(s)); });
    const Status s = f.get();
    if (!s.ok() && options_.drop_refused && s.code() == StatusCode::kUnavailable) {
      return DropJob(q, job, s);  // e.g. this node does not lead the group's shard
    }
    if (!s.ok()) {
      obs::LogWarn("group fan-out: remote share failed",
                   {{"group", job.group_id}, {"error", s.ToString()}});
      return Pause(kRetryMs);  // the batch again: the remote share is deduplicated
    }
  }
  const size_t local = envelopes.size();
  auto p = std::make_shared<std::promise<Status>>();
  std::future<Status> f = p->get_future();
  store_.AppendFanOutBatch(job, batch.empty() ? job.done_through : batch.back(), finished,
                           std::move(envelopes),
                           [p](Result<store::AppendOutcome> r) { p->set_value(r.status()); });
  const Status s = f.get();
  if (!s.ok() && options_.drop_refused && s.code() == StatusCode::kUnavailable) {
    return DropJob(q, job, s);
  }
  if (!s.ok()) {
    obs::LogWarn("group fan-out: batch write failed",
                 {{"group", job.group_id}, {"error", s.ToString()}});
    return Pause(kRetryMs);
  }
  AppendedCounter().Inc(batch.size());
  (void)local;
  if (!batch.empty()) job.done_through = batch.back();
  SetRemaining(q, remaining);
  if (finished) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.pop_front();
    JobsGauge().Add(-1);
  }
  return true;
}

}  // namespace iris::core
