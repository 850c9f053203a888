#include "obs/scrape_collector.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "obs/prometheus_merge.h"

namespace iris::obs {
namespace {

using Clock = std::chrono::steady_clock;

int MillisLeft(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

// Waits for `events` on `fd` until `deadline`; false on timeout or error.
bool WaitFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int left = MillisLeft(deadline);
    if (left == 0) return false;
    const int r = poll(&p, 1, left);
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

Result<std::string> HttpGet(const std::string& host, uint16_t port, std::string_view path,
                            std::chrono::milliseconds timeout, size_t max_bytes) {
  const Clock::time_point deadline = Clock::now() + timeout;
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  const bool v6 = host.find(':') != std::string::npos;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    if (inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) != 1) {
      return BadRequest("not a numeric IPv6 address: " + host);
    }
    addr_len = sizeof(sockaddr_in6);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (inet_pton(AF_INET, host.c_str(), &a->sin_addr) != 1) {
      return BadRequest("not a numeric IPv4 address: " + host);
    }
    addr_len = sizeof(sockaddr_in);
  }
  const std::string where = host + ":" + std::to_string(port);
  Fd s;
  s.fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s.fd < 0) return Unavailable(std::string("socket: ") + std::strerror(errno));
  if (connect(s.fd, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) {
    if (errno != EINPROGRESS) {
      return Unavailable("connect " + where + ": " + std::strerror(errno));
    }
    if (!WaitFor(s.fd, POLLOUT, deadline)) return Unavailable("connect " + where + ": timed out");
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return Unavailable("connect " + where + ": " + std::strerror(err));
  }
  const std::string request =
      "GET " + std::string(path) + " HTTP/1.1\r\nHost: " + where + "\r\nConnection: close\r\n\r\n";
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(s.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && WaitFor(s.fd, POLLOUT, deadline)) {
      continue;
    }
    return Unavailable("send to " + where + " failed or timed out");
  }
  std::string response;
  char buf[16384];
  for (;;) {
    const ssize_t n = recv(s.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      response.append(buf, static_cast<size_t>(n));
      if (response.size() > max_bytes) {
        return BadRequest("answer from " + where + " over " + std::to_string(max_bytes) + " bytes");
      }
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    if ((errno == EAGAIN || errno == EWOULDBLOCK) && WaitFor(s.fd, POLLIN, deadline)) continue;
    return Unavailable("reading from " + where + " failed or timed out");
  }
  // "HTTP/1.x 200 ...\r\n" headers "\r\n\r\n" body.
  if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12) {
    return BadRequest("not an HTTP answer from " + where);
  }
  const size_t head_end = response.find("\r\n\r\n");
  if (head_end == std::string::npos) return BadRequest("no end of headers from " + where);
  const int status = std::atoi(response.c_str() + 9);
  if (status != 200) return Unavailable("HTTP " + std::to_string(status) + " from " + where);
  return response.substr(head_end + 4);
}

ScrapeCollector::ScrapeCollector(ScrapeCollectorOptions options)
    : options_(std::move(options)), slots_(options_.slots) {}

ScrapeCollector::~ScrapeCollector() { Stop(); }

void ScrapeCollector::Start() {
  thread_ = std::thread([this] { Run(); });
}

void ScrapeCollector::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<const std::vector<PromFamily>> ScrapeCollector::Latest() const {
  std::lock_guard<std::mutex> lock(mu_);
  return latest_;
}

void ScrapeCollector::Poke() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    poked_ = true;
  }
  wake_.notify_all();
}

std::string ScrapeCollector::ExposeMerged(std::string_view own) {
  Poke();
  const std::shared_ptr<const std::vector<PromFamily>> others = Latest();
  Result<std::vector<PromFamily>> mine = ParsePrometheusText(own);
  if (!mine.ok()) return std::string(own);
  return RenderPrometheusText(MergeFamilies({&*mine, others.get()}));
}

bool ScrapeCollector::WaitForCycle(uint64_t after, std::chrono::milliseconds timeout) {
  Poke();
  std::unique_lock<std::mutex> lock(mu_);
  return cycle_done_.wait_for(lock, timeout, [&] { return cycles() > after; });
}

void ScrapeCollector::Run() {
  Clock::time_point last = Clock::now() - options_.interval;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Next cycle: one interval after the last, or min_interval after it when poked.
      for (;;) {
        if (stopping_) return;
        const Clock::time_point due = last + (poked_ ? options_.min_interval : options_.interval);
        if (Clock::now() >= due) break;
        wake_.wait_until(lock, due);
      }
      poked_ = false;
    }
    last = Clock::now();
    Cycle();
  }
}

void ScrapeCollector::Cycle() {
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = slots_[i];
    const std::optional<ScrapeTarget> target = options_.target(i);
    Result<std::vector<PromFamily>> families = BadRequest("no target");
    if (target) {
      Result<std::string> text = HttpGet(target->host, target->port, options_.path,
                                         options_.timeout, options_.max_response_bytes);
      families =
          text.ok() ? ParsePrometheusText(*text) : Result<std::vector<PromFamily>>(text.status());
      if (!families.ok() && options_.failures != nullptr) options_.failures->Inc();
      // The answer is the instance's only if the slot still names it: a replacement may
      // reuse the port (a fixed admin port), and its target appears only once it serves.
      const std::optional<ScrapeTarget> after = options_.target(i);
      if (families.ok() && (!after || after->instance != target->instance)) {
        families = Unavailable("slot " + std::to_string(i) + " changed during the scrape");
      }
    }
    if (!families.ok()) {
      slot.live = false;
      continue;
    }
    if (slot.seen && slot.instance != target->instance) {
      // A new process in this slot: what the old one counted stays in the node's totals.
      const std::vector<PromFamily> gone = CumulativeFamilies(slot.last);
      slot.carried = MergeFamilies({&slot.carried, &gone});
    }
    slot.seen = true;
    slot.live = true;
    slot.instance = target->instance;
    slot.last = std::move(families).value();
  }
  std::vector<std::vector<PromFamily>> stale;  // cumulative part of slots not answering
  stale.reserve(slots_.size());
  std::vector<const std::vector<PromFamily>*> sources;
  for (const Slot& slot : slots_) {
    sources.push_back(&slot.carried);
    if (slot.live) {
      sources.push_back(&slot.last);
    } else if (slot.seen) {
      stale.push_back(CumulativeFamilies(slot.last));
      sources.push_back(&stale.back());
    }
  }
  auto merged = std::make_shared<const std::vector<PromFamily>>(MergeFamilies(sources));
  {
    std::lock_guard<std::mutex> lock(mu_);
    latest_ = std::move(merged);
    cycles_.fetch_add(1, std::memory_order_release);
  }
  cycle_done_.notify_all();
}

}  // namespace iris::obs
