// libFuzzer target: the internal link protocol of src/rpc/ (edge process <-> core process,
// node <-> node), fed a peer's bytes as they would arrive on the socket (no TLS).
//
// Input: byte 0 chooses the side and the read chunking; the rest is the byte stream.
//  1. Always, in-process: TakeLinkFrames (the link's frame decoder) over the whole stream
//     and over the stream delivered in input-chosen chunks the way Link::ReadFrames
//     accumulates them. Oracles: chunking never changes the frames or the error; the bytes
//     taken are exactly the frames handed out; an error exactly when a frame header
//     announces more than kMaxLinkMessageBytes; what stays buffered is below one frame.
//  2. Byte 0 even: the serving side. A real CoreServer (Listen on a Unix socket in a temp
//     directory) with a core that records its calls gets the stream from an edge process's
//     connection. Expected (computed from the pure decode): every frame before the first
//     oversized or unparsable one is applied, in order, and nothing after it. A clean
//     stream is followed by a sentinel request, and then every request with a call id has
//     exactly one reply, in order; a broken one must end the link (we read EOF), with the
//     replies received a prefix of the expected ones and no core call past the break.
//  3. Byte 0 odd: the calling side. A real RemoteCore connected to us (we play the core
//     process) has one SEND out (call id 1); the stream is the core's replies and pushes,
//     then end of stream. Oracles: the SEND completes exactly once (with the reply's status
//     when a well-formed reply to call 1 came before any break, else UNAVAILABLE); the
//     pushes handed to the sink and the revocation callbacks are exactly those before the
//     break; the link loss is reported once.
// A hang (no answer or EOF within 10 s) aborts with a message.

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "obs/log.h"
#include "rpc/core_server.h"
#include "rpc/link.h"
#include "rpc/remote_core.h"

namespace {

using namespace iris;
namespace ipb = iris::internal::v1;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "link_fuzz: %s\n", what);
  std::abort();
}
void Check(bool ok, const char* what) {
  if (!ok) Fail(what);
}

constexpr int64_t kHangMs = 10'000;
int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

// The pure decode of a whole stream.
struct Decoded {
  std::vector<std::string_view> frames;
  bool oversized = false;
  size_t taken = 0;
};

Decoded DecodeWhole(std::string_view in) {
  Decoded d;
  Result<size_t> r = rpc::TakeLinkFrames(in, [&d](std::string_view f) {
    d.frames.push_back(f);
    return true;
  });
  if (r.ok()) {
    d.taken = *r;
  } else {
    Check(r.status().code() == StatusCode::kBadRequest, "oversized frame: not BAD_REQUEST");
    d.oversized = true;
  }
  return d;
}

void CheckDecoder(std::string_view in, uint8_t chunk_seed, const Decoded& whole) {
  // Oracle of the whole decode: re-walk the headers.
  size_t off = 0;
  size_t i = 0;
  bool oversized = false;
  while (in.size() - off >= 4) {
    uint32_t n = 0;
    for (int k = 0; k < 4; ++k) n = (n << 8) | static_cast<uint8_t>(in[off + k]);
    if (n > rpc::kMaxLinkMessageBytes) {
      oversized = true;
      break;
    }
    if (in.size() - off - 4 < n) break;
    Check(i < whole.frames.size() && whole.frames[i].data() == in.data() + off + 4 &&
              whole.frames[i].size() == n,
          "a frame differs from its header");
    off += 4 + n;
    ++i;
  }
  Check(i == whole.frames.size(), "frame count differs from the headers");
  Check(oversized == whole.oversized, "oversized verdict differs from the headers");
  if (!oversized) Check(whole.taken == off, "bytes taken differ from the frames handed out");

  // An early stop takes exactly the frames handed out.
  if (!whole.frames.empty()) {
    size_t seen = 0;
    Result<size_t> r = rpc::TakeLinkFrames(in, [&seen](std::string_view) { return ++seen < 1; });
    Check(r.ok() && seen == 1 && *r == 4 + whole.frames[0].size(), "early stop takes one frame");
  }

  // Chunked delivery, accumulated as Link::ReadFrames does.
  std::string buf;
  std::vector<std::string> frames;
  bool error = false;
  uint32_t rng = 0x9e3779b9u ^ chunk_seed;
  size_t pos = 0;
  while (pos < in.size() && !error) {
    rng = rng * 1664525u + 1013904223u;
    size_t chunk = 1 + (rng >> 16) % (chunk_seed & 1 ? 7 : 257);
    chunk = std::min(chunk, in.size() - pos);
    buf.append(in.substr(pos, chunk));
    pos += chunk;
    Result<size_t> r = rpc::TakeLinkFrames(buf, [&frames](std::string_view f) {
      frames.emplace_back(f);
      return true;
    });
    if (!r.ok()) {
      error = true;
      break;
    }
    Check(*r <= buf.size(), "took more than the buffer");
    buf.erase(0, *r);
    // What stays is one incomplete frame at most.
    if (buf.size() >= 4) {
      uint32_t n = 0;
      for (int k = 0; k < 4; ++k) n = (n << 8) | static_cast<uint8_t>(buf[k]);
      Check(buf.size() < 4 + static_cast<size_t>(n), "a complete frame was left buffered");
    }
  }
  Check(error == whole.oversized, "chunking changed the error");
  Check(frames.size() == whole.frames.size(), "chunking changed the frame count");
  for (size_t k = 0; k < frames.size(); ++k) {
    Check(frames[k] == whole.frames[k], "chunking changed a frame");
  }
}

// --- sockets ---------------------------------------------------------------------------

bool WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t w = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;  // the other side ended the link: fine, it may have
    bytes.remove_prefix(static_cast<size_t>(w));
  }
  return true;
}

// Reads what arrives until `enough(buffer)` or EOF; false on EOF. Aborts after kHangMs.
template <typename F>
bool ReadUntil(int fd, std::string* buf, F&& enough) {
  const int64_t deadline = NowMs() + kHangMs;
  while (!enough(*buf)) {
    const int64_t left = deadline - NowMs();
    if (left <= 0) Fail("hang: no answer and no end of stream within 10 s");
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n <= 0) continue;
    char tmp[65536];
    const ssize_t r = ::read(fd, tmp, sizeof(tmp));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    buf->append(tmp, static_cast<size_t>(r));
  }
  return true;
}

// Whether `b` starts with a complete frame.
bool HasFrame(const std::string& b) {
  if (b.size() < 4) return false;
  uint32_t n = 0;
  for (int k = 0; k < 4; ++k) n = (n << 8) | static_cast<uint8_t>(b[k]);
  return b.size() >= 4 + static_cast<size_t>(n);
}

std::string Frame(const google::protobuf::MessageLite& m) {
  const std::string body = m.SerializeAsString();
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(body.size() >> (8 * (3 - i)));
  return out + body;
}

int ConnectUnix(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size());
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    Fail("cannot connect to the core server's socket");
  }
  return fd;
}

std::string TempDir() {
  char tmpl[] = "/tmp/iris-link-fuzz-XXXXXX";
  const char* d = mkdtemp(tmpl);
  if (d == nullptr) Fail("mkdtemp");
  return d;
}

// --- the serving side ------------------------------------------------------------------

// Completes every call at once and counts them.
class CountingCore final : public core::CoreApi {
 public:
  std::atomic<uint64_t> calls{0};
  void RegisterSession(uint64_t, core::SessionRef) override { ++calls; }
  void ReRegisterSession(uint64_t, core::SessionRef) override { ++calls; }
  void UnregisterSession(uint64_t, core::SessionRef, const core::RateDebt&) override { ++calls; }
  bool Typing(uint64_t, const v1::Typing&) override { return ++calls, true; }
  void Unsubscribe(const core::SessionRef&, const std::vector<uint64_t>&) override { ++calls; }
  core::PressureReport ReportPressure(double, int64_t) override {
    return ++calls, core::PressureReport{};
  }
  void Send(uint64_t, const v1::Send&, const std::string&, SendDone done, uint64_t) override {
    ++calls;
    done(core::AppendResult{42, 1000, false});
  }
  void Receipt(uint64_t, const v1::Receipt&, SendDone done) override {
    ++calls;
    done(NotFound("no such message"));
  }
  void UpdateSettings(uint64_t, const v1::Settings&, StatusDone done) override {
    ++calls;
    done(Status::Ok());
  }
  void Subscribe(const core::SessionRef&, const std::vector<uint64_t>&,
                 PresenceDone done) override {
    ++calls;
    done(std::vector<v1::Presence>(1));
  }
  void QueryPresence(const std::vector<uint64_t>&, PresenceDone done) override {
    ++calls;
    done(std::vector<v1::Presence>{});
  }
  void UploadKeys(uint64_t, const v1::KeysUpload&, StatusDone done) override {
    ++calls;
    done(Status::Ok());
  }
  void FetchKeys(uint64_t, KeysDone done) override {
    ++calls;
    done(v1::KeysBundle{});
  }
  void CreateGroup(uint64_t, const v1::GroupCreate&, GroupDone done) override {
    ++calls;
    done(v1::GroupInfo{});
  }
  void UpdateGroup(uint64_t, const v1::GroupUpdate&, GroupDone done) override {
    ++calls;
    done(Forbidden("not a member"));
  }
  void GetGroup(uint64_t, uint64_t, GroupDone done) override {
    ++calls;
    done(v1::GroupInfo{});
  }
  void Scan(uint64_t, uint64_t, uint32_t, size_t, PageDone done) override {
    ++calls;
    done(core::Page{});
  }
  void History(uint64_t, uint64_t, uint32_t, size_t, PageDone done) override {
    ++calls;
    done(core::Page{});
  }
};

// Whether CoreServer calls the core for `op` on an edge process's link.
bool CallsCore(ipb::CoreRequest::OpCase op) {
  switch (op) {
    case ipb::CoreRequest::kHello:
    case ipb::CoreRequest::kPeerHello:
    case ipb::CoreRequest::kRevocations:
    case ipb::CoreRequest::kAppendEnvelopes:  // refused: a call between nodes
    case ipb::CoreRequest::kGetSettings:      // refused: a call between nodes
    case ipb::CoreRequest::kRelayTyping:      // ignored from an edge process
    case ipb::CoreRequest::OP_NOT_SET: return false;
    default: return true;
  }
}

struct ServingSide {
  std::string dir = TempDir();
  std::string path = dir + "/core.sock";
  CountingCore core;
  rpc::CoreServer server;
  ServingSide() {
    server.set_core(&core);
    server.set_revocation_source([](ipb::Revocations* r) { r->add_jtis()->set_jti("j"); });
    if (!server.Listen(path).ok() || !server.Start().ok()) Fail("cannot start the core server");
  }
};

constexpr uint64_t kSentinel = ~uint64_t{0};

// The replies (call ids) in `buf`, complete frames only; aborts on an unparsable reply.
std::vector<uint64_t> Replies(const std::string& buf) {
  std::vector<uint64_t> ids;
  Result<size_t> r = rpc::TakeLinkFrames(buf, [&ids](std::string_view f) {
    ipb::CoreMessage m;
    Check(m.ParseFromArray(f.data(), static_cast<int>(f.size())), "unparsable reply");
    Check(!m.has_push(), "a push on an edge process's link with no session");
    ids.push_back(m.call_id());
    return true;
  });
  Check(r.ok(), "oversized reply");
  return ids;
}

void RunServingSide(std::string_view stream, const Decoded& d) {
  static ServingSide* side = new ServingSide();  // one server for the whole run
  // Expected from the pure decode: requests up to the first unparsable frame.
  uint64_t expect_calls = 0;
  std::vector<uint64_t> expect_replies;
  bool broken = d.oversized;
  for (std::string_view f : d.frames) {
    ipb::CoreRequest req;
    if (!req.ParseFromArray(f.data(), static_cast<int>(f.size()))) {
      broken = true;
      break;
    }
    if (CallsCore(req.op_case())) ++expect_calls;
    if (req.call_id() != 0 && req.op_case() != ipb::CoreRequest::kRelayTyping) {
      expect_replies.push_back(req.call_id());
    }
  }
  const bool clean = !broken && d.taken == stream.size();

  side->core.calls.store(0);
  const int fd = ConnectUnix(side->path);
  std::string out(stream);
  if (clean) {
    ipb::CoreRequest sentinel;
    sentinel.set_call_id(kSentinel);
    sentinel.set_revocations(true);
    out += Frame(sentinel);
  }
  std::string in;
  if (clean) {
    Check(WriteAll(fd, out), "the server ended a clean link");
    const size_t want = expect_replies.size() + 1;
    const bool open =
        ReadUntil(fd, &in, [want](const std::string& b) { return Replies(b).size() >= want; });
    Check(open, "the server ended a clean link before answering");
    std::vector<uint64_t> got = Replies(in);
    Check(got.back() == kSentinel, "the sentinel is not the last reply");
    got.pop_back();
    Check(got == expect_replies, "replies differ from the requests (missing, extra or reordered)");
    Check(side->core.calls.load() == expect_calls, "core calls differ from the requests");
  } else {
    WriteAll(fd, out);  // the server may end the link before taking everything
    ::shutdown(fd, SHUT_WR);
    ReadUntil(fd, &in, [](const std::string&) { return false; });  // until EOF
    const std::vector<uint64_t> got = Replies(in);
    Check(got.size() <= expect_replies.size() &&
              std::equal(got.begin(), got.end(), expect_replies.begin()),
          "replies of a broken stream are not a prefix of the expected ones");
    // on_message runs on the link's thread before it closes the socket: EOF means done.
    Check(side->core.calls.load() == expect_calls,
          "core calls differ from the requests before the break (a partial apply?)");
  }
  ::close(fd);
}

// --- the calling side ------------------------------------------------------------------

struct Counts {
  std::atomic<int> delivers{0}, replaces{0}, settles{0}, presences{0}, typings{0};
  std::atomic<int> revoke_jtis{0}, revoke_users{0}, lost{0}, send_done{0};
  std::atomic<int64_t> send_code{-1};
};

class CountingSink final : public core::EdgeSink {
 public:
  explicit CountingSink(Counts& c) : c_(c) {}
  void Deliver(const core::SessionRef&, const v1::Envelope&) override { ++c_.delivers; }
  void Replace(const core::SessionRef&) override { ++c_.replaces; }
  void SettleRate(const core::SessionRef&, uint64_t, const core::RateDebt& debt) override {
    for (int64_t v : debt.ns) Check(v >= 0 && v <= core::RateDebt::kMaxNanos, "debt not clamped");
    ++c_.settles;
  }
  void SendPresence(const core::SessionRef&, const v1::Presence&) override { ++c_.presences; }
  void SendTyping(const core::SessionRef&, const v1::Typing&) override { ++c_.typings; }

 private:
  Counts& c_;
};

void RunCallingSide(std::string_view stream, const Decoded& d) {
  static const std::string dir = TempDir();
  static const std::string path = dir + "/core.sock";
  static int listen_fd = [] {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size());
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 4) != 0) {
      Fail("cannot listen as the core process");
    }
    return fd;
  }();

  // Expected from the pure decode: messages up to the first unparsable frame.
  Counts want;
  int64_t reply_code = -1;  // the status code of the first reply to call 1 before the break
  for (std::string_view f : d.frames) {
    ipb::CoreMessage m;
    if (!m.ParseFromArray(f.data(), static_cast<int>(f.size()))) break;
    if (m.has_push()) {
      switch (m.push().what_case()) {
        case ipb::Push::kDeliver: ++want.delivers; break;
        case ipb::Push::kReplace: ++want.replaces; break;
        case ipb::Push::kRemoveDevice: ++want.replaces; break;  // the sink's default: Replace
        case ipb::Push::kSettleRate: ++want.settles; break;
        case ipb::Push::kPresence: ++want.presences; break;
        case ipb::Push::kTyping: ++want.typings; break;
        case ipb::Push::kRevokeJti: ++want.revoke_jtis; break;
        case ipb::Push::kRevokeUser: ++want.revoke_users; break;
        case ipb::Push::WHAT_NOT_SET: break;
      }
    } else if (m.call_id() == 1 && reply_code < 0) {
      reply_code = m.status().code();
    }
  }

  Counts got;
  CountingSink sink(got);
  rpc::RemoteCore rc(0);
  if (!rc.Connect(path, kHangMs).ok()) Fail("RemoteCore cannot connect");
  const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) Fail("accept");
  rpc::RemoteCore::PushHandler h;
  h.sink = &sink;
  h.revoke_jti = [&got](const std::string&, int64_t) { ++got.revoke_jtis; };
  h.revoke_user = [&got](uint64_t, int64_t) { ++got.revoke_users; };
  h.on_link_lost = [&got] { ++got.lost; };
  rc.Start(std::move(h));
  v1::Send send;
  send.set_recipient(2);
  rc.Send(1, send, "", [&got](Result<core::AppendResult> r) {
    got.send_code.store(static_cast<int64_t>(r.status().code()));
    ++got.send_done;
  });
  std::string req;
  if (!ReadUntil(fd, &req, HasFrame)) Fail("RemoteCore ended the link before its SEND");
  WriteAll(fd, stream);  // RemoteCore may end the link before taking everything
  ::shutdown(fd, SHUT_WR);
  const int64_t deadline = NowMs() + kHangMs;
  while (got.lost.load() == 0) {
    if (NowMs() > deadline) Fail("hang: the link loss was not reported within 10 s");
    std::string sink_bytes;
    ReadUntil(fd, &sink_bytes, [](const std::string&) { return false; });  // drain until EOF
  }
  rc.Stop();
  ::close(fd);
  Check(got.lost.load() == 1, "link loss reported more than once");
  Check(got.send_done.load() == 1, "the SEND completed other than exactly once");
  if (reply_code >= 0) {
    Check(got.send_code.load() == reply_code, "the SEND did not complete with its reply");
  } else {
    Check(got.send_code.load() == static_cast<int64_t>(StatusCode::kUnavailable),
          "an unanswered SEND did not fail with UNAVAILABLE");
  }
  Check(got.delivers == want.delivers && got.replaces == want.replaces &&
            got.settles == want.settles && got.presences == want.presences &&
            got.typings == want.typings && got.revoke_jtis == want.revoke_jtis &&
            got.revoke_users == want.revoke_users,
        "pushes handed out differ from those before the break (a partial apply?)");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  signal(SIGPIPE, SIG_IGN);
  obs::Logger::Default().set_level(obs::LogLevel::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  const Decoded d = DecodeWhole(stream);
  CheckDecoder(stream, mode, d);
  if ((mode & 1) == 0) {
    RunServingSide(stream, d);
  } else {
    RunCallingSide(stream, d);
  }
  return 0;
}
