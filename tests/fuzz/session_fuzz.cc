// Stateful libFuzzer target: one client session of the edge, fed a program of client frames.
//
// The stack is the embedded irisd in-process (as server.cc builds it): a real
// store::InboxStore on a temporary RocksDB directory (on /dev/shm when it exists: the
// durable appends' fsyncs would otherwise dominate), a real core::Core, and an edge::Edge
// with one loop listening on 127.0.0.1:0 with a self-signed certificate. Each input opens
// one TLS 1.3 connection (OpenSSL client) and writes the program the input decodes to:
// HELLO with a valid token (users 1..3) or a bad one, SEND (valid or broken: empty or
// oversized body, bad idempotency key), SYNC, SYNC_ACK, DELIVER_ACK, RECEIPT, SETTINGS,
// HISTORY, TYPING, PING, a raw frame of any opcode and payload, raw unframed bytes, a
// frame of the largest size. Requests the program makes carry fresh request ids
// (kIdBase + n); raw frames that would carry one of them are left out. An unfinished frame
// at the end is completed with zero bytes, then a sentinel PING follows.
//
// Invariants, after the server's answers are read (until the sentinel's PONG and every
// answer due, or end of stream; 10 s without progress aborts as a hang):
//  - every server frame has a server opcode and parses;
//  - at most one WELCOME, and no answer to a request before it (but the fatal ERROR);
//  - no request id is answered twice (SEND_ACK, OK, HISTORY_PAGE, ERROR);
//  - a session still open at the end (the sentinel answered) whose HELLO was accepted has
//    answered every request it was sent after the HELLO;
//  - a session that ended closed with a fatal ERROR as its last frame (nothing after it);
//    when the first complete frame was neither HELLO nor PING that error is
//    UNAUTHENTICATED ("HELLO must come first"), as when it was a HELLO with a bad token.
// State persists across inputs in the store (inboxes of users 1..3, capped at 64 messages
// in the inbox): a finding may need the inputs before it; `-runs` over the crash input
// alone usually reproduces, as the session's own checks do not depend on history.

#include <arpa/inet.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "auth/jwt.h"
#include "auth/keyring.h"
#include "auth/revocation.h"
#include "common/clock.h"
#include "core/core.h"
#include "edge/edge.h"
#include "net/tls.h"
#include "obs/log.h"
#include "store/inbox_store.h"
#include "support/forwarding_sink.h"
#include "unit/wire/sample_messages.h"
#include "wire/frame.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace {

using namespace iris;
namespace fs = std::filesystem;
using wire::Opcode;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "session_fuzz: %s\n", what.c_str());
  std::abort();
}
void Check(bool ok, const std::string& what) {
  if (!ok) Fail(what);
}

constexpr uint64_t kIdBase = 0x5eed000000000000ULL;
constexpr uint64_t kSentinelNonce = 0xfeedfacecafef00dULL;
constexpr int64_t kHangMs = 10'000;
const std::string kSecret = "session-fuzz-secret-0123456789abcdef";

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

using Forward = testing::ForwardingSink;

struct Stack {
  std::string dir;
  auth::Keyring keyring;
  auth::RevocationList revocations;
  std::unique_ptr<auth::TokenVerifier> verifier;
  std::unique_ptr<net::TlsContext> tls;
  std::unique_ptr<store::InboxStore> store;
  Forward forward;
  std::unique_ptr<core::Core> core;
  std::unique_ptr<edge::Edge> edge;
  SSL_CTX* client_ctx = nullptr;
  uint16_t port = 0;

  Stack() {
    const char* base = fs::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string tmpl = std::string(base) + "/iris-session-fuzz-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) Fail("mkdtemp");
    dir = tmpl;
    Must(net::GenerateSelfSignedCertificate(dir + "/server.crt", dir + "/server.key", "iris"));
    auto t = net::TlsContext::Server(dir + "/server.crt", dir + "/server.key");
    Must(t.status());
    tls = std::move(t).value();
    Must(keyring.AddKey("", kSecret));
    verifier = std::make_unique<auth::TokenVerifier>(keyring, revocations, auth::VerifyOptions{});
    store::StoreOptions so;
    so.path = dir + "/store";
    so.inbox_cap = 64;
    auto st = store::InboxStore::Open(so);
    Must(st.status());
    store = std::move(st).value();
    core = std::make_unique<core::Core>(*store, forward, SystemClock::Instance());
    edge::EdgeOptions eo;
    eo.listen = "127.0.0.1:0";
    eo.loops = 1;
    eo.connection_allowlist = {"127.0.0.1"};  // one connection per input
    eo.failed_logins.per_hour = 1e9;          // bad tokens are part of the program
    eo.failed_logins.per_ip_per_hour = 1e9;
    eo.send_rate.sustained_per_sec = 1e6;  // let SENDs reach the store
    eo.send_rate.burst_per_sec = 1e6;
    edge = std::make_unique<edge::Edge>(eo, *core, *verifier, *tls, SystemClock::Instance());
    forward.to = edge.get();
    Must(edge->Start());
    port = edge->port();
    client_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(client_ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, nullptr);
  }
  static void Must(const Status& s) {
    if (!s.ok()) Fail("setup: " + s.ToString());
  }
};

std::string Token(uint64_t user) {
  auth::Claims c;
  c.user_id = user;
  c.iat = SystemClock::Instance().WallMillis() / 1000 - 10;
  c.exp = c.iat + 3600;
  c.jti = "fuzz-" + std::to_string(user);
  return auth::MintToken(kSecret, c);
}

// The program: the bytes to write, and what the oracle needs to know about them.
struct Program {
  std::string bytes;
  std::vector<uint64_t> requests;  // our request ids, in order
  std::vector<size_t> request_at;  // the byte offset each one starts at
  std::vector<size_t> hellos;      // where the valid-token HELLOs start
  std::vector<size_t> bad_hellos;  // where the bad-token HELLOs start
  // After Finish(): the requests the server gets as written (raw bytes before a frame can
  // swallow it into another one), and where the first intact valid HELLO ends (npos: none).
  std::vector<uint64_t> intact;
  size_t hello_at = std::string::npos;
  std::string log;  // the ops, for failure messages
};

void AddFrame(Program* p, Opcode op, const google::protobuf::MessageLite& m) {
  p->log += " " + std::string(wire::OpcodeName(static_cast<uint8_t>(op)));
  if (!wire::AppendMessageFrame(&p->bytes, static_cast<uint8_t>(op), m).ok()) {
    Fail("cannot encode a generated frame");
  }
}

void AddRequest(Program* p, Opcode op, const google::protobuf::MessageLite& m, uint64_t id) {
  p->requests.push_back(id);
  p->request_at.push_back(p->bytes.size());
  AddFrame(p, op, m);
  p->log += "#" + std::to_string(id - kIdBase);
}

// Which generated frames the server's decoder sees whole, where it sees them.
void Finish(Program* p) {
  std::set<size_t> starts;  // where the server's frames start
  size_t at = 0;
  wire::FrameDecoder d;
  d.Consume(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(p->bytes.data()), p->bytes.size()),
      [&starts, &at](const wire::Frame& f) {
        starts.insert(at);
        at += wire::kFrameHeaderBytes + f.payload.size();
        return true;
      });
  for (size_t h : p->hellos) {
    if (starts.count(h) > 0) {
      const size_t len = (static_cast<size_t>(static_cast<uint8_t>(p->bytes[h + 1])) << 8) |
                         static_cast<uint8_t>(p->bytes[h + 2]);
      p->hello_at = h + wire::kFrameHeaderBytes + len;
      break;
    }
  }
  for (size_t i = 0; i < p->requests.size(); ++i) {
    if (starts.count(p->request_at[i]) > 0) p->intact.push_back(p->requests[i]);
  }
}

bool OurId(uint64_t id) { return (id & 0xffff000000000000ULL) == kIdBase; }

Program Decode(FuzzedDataProvider& in) {
  Program p;
  uint64_t next_id = kIdBase + 1;
  for (int ops = 0; ops < 48 && in.remaining_bytes() > 0; ++ops) {
    switch (in.ConsumeIntegralInRange<int>(0, 15)) {
      case 0:
      case 1: {  // HELLO, valid token
        v1::Hello h;
        h.add_versions(1);
        h.add_capabilities("receipts");
        h.add_capabilities("typing");
        h.set_token(Token(1 + in.ConsumeIntegralInRange<uint64_t>(0, 2)));
        h.set_cursor(in.ConsumeBool() ? 0 : in.ConsumeIntegral<uint64_t>());
        h.set_page_size(in.ConsumeIntegralInRange<uint32_t>(0, 300));
        p.hellos.push_back(p.bytes.size());
        AddFrame(&p, Opcode::kHello, h);
        break;
      }
      case 2: {  // HELLO, bad token
        v1::Hello h;
        h.add_versions(1);
        std::string junk = in.ConsumeRandomLengthString(64);
        for (char& ch : junk)
          ch = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
              [static_cast<uint8_t>(ch) % 65];
        h.set_token(in.ConsumeBool() ? Token(2) + "x" : junk);  // a string field: UTF-8
        p.bad_hellos.push_back(p.bytes.size());
        AddFrame(&p, Opcode::kHello, h);
        break;
      }
      case 3:
      case 4: {  // SEND
        v1::Send s;
        const uint64_t id = next_id++;
        s.set_request_id(id);
        s.set_idempotency_key(in.ConsumeBool()
                                  ? wire::samples::ValidUuidV7(in.ConsumeIntegral<uint16_t>())
                                  : in.ConsumeRandomLengthString(20));
        if (in.ConsumeBool()) {
          s.set_recipient(in.ConsumeIntegralInRange<uint64_t>(0, 4));
        } else {
          s.set_group_id(in.ConsumeIntegral<uint64_t>());
        }
        const int body = in.ConsumeIntegralInRange<int>(0, 3);
        s.set_body(body == 0   ? std::string()
                   : body == 3 ? std::string(64001, 'b')  // over the limit
                               : in.ConsumeRandomLengthString(100));
        AddRequest(&p, Opcode::kSend, s, id);
        break;
      }
      case 5: {
        v1::Sync s;
        s.set_cursor(in.ConsumeIntegralInRange<uint64_t>(0, 3) == 0 ? in.ConsumeIntegral<uint64_t>()
                                                                    : 0);
        s.set_page_size(in.ConsumeIntegralInRange<uint32_t>(0, 300));
        AddFrame(&p, Opcode::kSync, s);
        break;
      }
      case 6: {
        v1::SyncAck a;
        a.set_cursor(in.ConsumeIntegral<uint64_t>());
        AddFrame(&p, Opcode::kSyncAck, a);
        break;
      }
      case 7: {
        v1::DeliverAck a;
        a.set_cursor(in.ConsumeIntegral<uint64_t>());
        AddFrame(&p, Opcode::kDeliverAck, a);
        break;
      }
      case 8: {  // RECEIPT
        v1::Receipt r;
        const uint64_t id = next_id++;
        r.set_request_id(id);
        r.set_to_user(in.ConsumeIntegralInRange<uint64_t>(0, 4));
        r.set_type(static_cast<v1::ReceiptType>(in.ConsumeIntegralInRange<int>(0, 2)));
        const int n = in.ConsumeIntegralInRange<int>(0, 4);
        for (int i = 0; i < n; ++i) r.add_message_ids(in.ConsumeIntegral<uint64_t>());
        r.set_idempotency_key(wire::samples::ValidUuidV7(in.ConsumeIntegral<uint16_t>()));
        AddRequest(&p, Opcode::kReceipt, r, id);
        break;
      }
      case 9: {  // SETTINGS
        v1::Settings s;
        const uint64_t id = next_id++;
        s.set_request_id(id);
        if (in.ConsumeBool()) s.set_read_receipts(in.ConsumeBool());
        AddRequest(&p, Opcode::kSettings, s, id);
        break;
      }
      case 10: {  // HISTORY
        v1::History h;
        const uint64_t id = next_id++;
        h.set_request_id(id);
        h.set_before(in.ConsumeBool() ? 0 : in.ConsumeIntegral<uint64_t>());
        h.set_limit(in.ConsumeIntegralInRange<uint32_t>(0, 300));
        AddRequest(&p, Opcode::kHistory, h, id);
        break;
      }
      case 11: {
        v1::Typing t;
        t.set_user(in.ConsumeIntegralInRange<uint64_t>(0, 4));
        t.set_typing(in.ConsumeBool());
        AddFrame(&p, Opcode::kTyping, t);
        break;
      }
      case 12: {
        v1::Ping ping;
        ping.set_nonce(in.ConsumeIntegral<uint32_t>());
        AddFrame(&p, Opcode::kPing, ping);
        break;
      }
      case 13: {  // a raw frame of any opcode
        const uint8_t op = in.ConsumeIntegral<uint8_t>();
        const std::string payload = in.ConsumeRandomLengthString(512);
        const uint64_t peeked = wire::PeekRequestId(op, payload);
        if (OurId(peeked)) break;  // would answer one of our ids
        if (!wire::AppendFrame(&p.bytes, op, payload).ok()) Fail("AppendFrame");
        p.log += " raw(" + std::to_string(op) + ")";
        break;
      }
      case 14: {  // raw bytes, not necessarily a frame
        const std::string raw = in.ConsumeRandomLengthString(16);
        if (raw.find("\x5e\xed") != std::string::npos) break;  // could assemble one of our ids
        p.bytes += raw;
        p.log += " bytes(" + std::to_string(raw.size()) + ")";
        break;
      }
      case 15: {  // the largest frame
        const uint8_t op =
            in.ConsumeBool() ? static_cast<uint8_t>(Opcode::kSend) : in.ConsumeIntegral<uint8_t>();
        if (!wire::AppendFrame(&p.bytes, op, std::string(wire::kMaxPayloadBytes, '\x01')).ok()) {
          Fail("AppendFrame");
        }
        p.log += " max(" + std::to_string(op) + ")";
        break;
      }
    }
  }
  return p;
}

// The requests due an answer once the HELLO is accepted: those the server gets whole after
// the first whole valid HELLO.
std::vector<uint64_t> Due(const Program& p) {
  std::vector<uint64_t> out;
  if (p.hello_at == std::string::npos) return out;
  size_t k = 0;
  for (size_t i = 0; i < p.requests.size(); ++i) {
    const bool whole = k < p.intact.size() && p.intact[k] == p.requests[i];
    if (whole) ++k;
    if (whole && p.request_at[i] >= p.hello_at) out.push_back(p.requests[i]);
  }
  return out;
}

// --- the client ------------------------------------------------------------------------

struct Conn {
  int fd = -1;
  SSL* ssl = nullptr;
  ~Conn() {
    if (ssl != nullptr) SSL_free(ssl);
    if (fd >= 0) ::close(fd);
  }
};

void Connect(Stack& s, Conn* c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(s.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (c->fd < 0 || connect(c->fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    Fail("cannot connect to the edge");
  }
  const int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  timeval tv{0, 200'000};  // reads wake up to look at the deadline
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  timeval wtv{kHangMs / 1000, 0};  // a write that cannot finish is a hang
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &wtv, sizeof(wtv));
  c->ssl = SSL_new(s.client_ctx);
  SSL_set_fd(c->ssl, c->fd);
  const int64_t deadline = NowMs() + kHangMs;
  for (;;) {
    ERR_clear_error();
    const int r = SSL_connect(c->ssl);
    if (r == 1) return;
    const int e = SSL_get_error(c->ssl, r);
    if (e != SSL_ERROR_WANT_READ || NowMs() > deadline) Fail("TLS handshake with the edge failed");
  }
}

// What the server said.
struct Seen {
  bool eof = false;
  int welcomes = 0;
  bool answered_before_welcome = false;
  bool sentinel = false;
  bool fatal_last = false;   // the last frame so far is a fatal ERROR
  bool after_fatal = false;  // something came after a fatal ERROR
  uint32_t fatal_code = 0;
  std::map<uint64_t, int> answers;  // our request id -> answers
  std::string log;                  // what came, for the failure message
};

uint64_t AnsweredId(uint8_t op, std::string_view payload) {
  switch (static_cast<Opcode>(op)) {
    case Opcode::kSendAck:
    case Opcode::kOk:
    case Opcode::kHistoryPage:
    case Opcode::kError: return wire::PeekRequestId(payload);
    default: return 0;
  }
}

void OnServerFrame(uint8_t op, std::string_view payload, Seen* seen) {
  Check(wire::ServerMaySend(op),
        "the server sent a client-only or unknown opcode " + std::to_string(op));
  seen->log += " " + std::string(wire::OpcodeName(op));
  if (seen->fatal_last) seen->after_fatal = true;
  seen->fatal_last = false;
  switch (static_cast<Opcode>(op)) {
    case Opcode::kWelcome: ++seen->welcomes; break;
    case Opcode::kPong: {
      v1::Pong pong;
      Check(pong.ParseFromArray(payload.data(), static_cast<int>(payload.size())),
            "unparsable PONG");
      if (pong.nonce() == kSentinelNonce) seen->sentinel = true;
      break;
    }
    case Opcode::kError: {
      v1::Error e;
      Check(e.ParseFromArray(payload.data(), static_cast<int>(payload.size())), "unparsable ERROR");
      Check(e.code() != 0, "an ERROR with code OK");
      seen->log += "(" + std::to_string(e.request_id() & 0xffff) + ":" + e.message() + ")";
      if (e.fatal()) {
        seen->fatal_last = true;
        seen->fatal_code = e.code();
      }
      break;
    }
    default: break;
  }
  const uint64_t id = AnsweredId(op, payload);
  if (id != 0 && op != static_cast<uint8_t>(Opcode::kError))
    seen->log += "#" + std::to_string(id & 0xffff);
  if (OurId(id)) {
    // Before WELCOME only the fatal "HELLO must come first" may name a request.
    if (seen->welcomes == 0 && op != static_cast<uint8_t>(Opcode::kError)) {
      seen->answered_before_welcome = true;
    }
    Check(++seen->answers[id] == 1, "request " + std::to_string(id - kIdBase) + " answered twice");
  }
}

// The opcode (-1: none) and offset of the first complete frame of `bytes` that is not a PING.
std::pair<int, size_t> FirstNonPing(const std::string& bytes) {
  int first = -1;
  size_t at = 0;
  wire::FrameDecoder d;
  d.Consume(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
            [&first, &at](const wire::Frame& f) {
              if (f.opcode == static_cast<uint8_t>(Opcode::kPing)) {
                at += wire::kFrameHeaderBytes + f.payload.size();
                return true;
              }
              first = f.opcode;
              return false;
            });
  return {first, at};
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  signal(SIGPIPE, SIG_IGN);  // the session may close before taking the whole program
  obs::Logger::Default().set_level(obs::LogLevel::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Stack* stack = new Stack();  // for the whole run
  FuzzedDataProvider in(data, size);
  Program p = Decode(in);
  // Complete an unfinished frame, then the sentinel.
  {
    wire::FrameDecoder d;
    d.Consume(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(p.bytes.data()), p.bytes.size()),
        [](const wire::Frame&) { return true; });
    if (const size_t tail = d.pending_bytes(); tail > 0) {
      // The missing header bytes are zeros: the length is what the tail has of it.
      const size_t at = p.bytes.size() - tail;
      const size_t hi = tail >= 2 ? static_cast<uint8_t>(p.bytes[at + 1]) : 0;
      const size_t lo = tail >= 3 ? static_cast<uint8_t>(p.bytes[at + 2]) : 0;
      p.bytes.append(wire::kFrameHeaderBytes + ((hi << 8) | lo) - tail, '\0');
    }
    v1::Ping ping;
    ping.set_nonce(kSentinelNonce);
    AddFrame(&p, Opcode::kPing, ping);
    Finish(&p);
  }

  Conn c;
  Connect(*stack, &c);
  Seen seen;
  wire::FrameDecoder decoder;
  auto pump = [&](int64_t deadline) -> bool {  // false at end of stream
    char buf[16384];
    ERR_clear_error();
    const int r = SSL_read(c.ssl, buf, sizeof(buf));
    if (r > 0) {
      decoder.Consume(
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(buf), static_cast<size_t>(r)),
          [&seen](const wire::Frame& f) {
            OnServerFrame(f.opcode, f.payload, &seen);
            return true;
          });
      return true;
    }
    const int e = SSL_get_error(c.ssl, r);
    if (e == SSL_ERROR_WANT_READ ||
        (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EINTR))) {
      if (NowMs() > deadline) {
        std::string due;
        for (uint64_t id : Due(p)) {
          if (seen.answers.count(id) == 0) due += " " + std::to_string(id - kIdBase);
        }
        Fail("hang: the session neither answered nor closed within 10 s; unanswered:" + due +
             "; sentinel " + (seen.sentinel ? "answered" : "not answered") +
             "; server sent:" + seen.log + "; program:" + p.log);
      }
      return true;
    }
    return false;  // end of stream, reset or close_notify
  };

  // Write the program (the session may close before taking all of it).
  size_t off = 0;
  while (off < p.bytes.size()) {
    ERR_clear_error();
    const int w = SSL_write(c.ssl, p.bytes.data() + off,
                            static_cast<int>(std::min<size_t>(p.bytes.size() - off, 16384)));
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  const bool written = off == p.bytes.size();
  // Read until the sentinel and every answer due, or the end.
  const std::vector<uint64_t> due = Due(p);
  auto all_answered = [&] {
    if (seen.welcomes == 0) return true;
    for (uint64_t id : due) {
      if (seen.answers.count(id) == 0) return false;
    }
    return true;
  };
  int64_t deadline = NowMs() + kHangMs;
  size_t progress = 0;
  while (!(seen.sentinel && all_answered())) {
    if (!pump(deadline)) {
      seen.eof = true;
      break;
    }
    const size_t now =
        seen.answers.size() + (seen.sentinel ? 1 : 0) + static_cast<size_t>(seen.welcomes);
    if (now != progress) {
      progress = now;
      deadline = NowMs() + kHangMs;
    }
  }

  Check(seen.welcomes <= 1, "more than one WELCOME" + std::string("; server sent:") + seen.log);
  Check(!seen.answered_before_welcome,
        "a request was answered before WELCOME" + std::string("; server sent:") + seen.log);
  Check(!seen.after_fatal, "frames after a fatal ERROR" + std::string("; server sent:") + seen.log);
  if (seen.eof) {
    Check(seen.fatal_last, "the session ended without a fatal ERROR as its last frame" +
                               std::string("; server sent:") + seen.log);
    const std::pair<int, size_t> first_frame = FirstNonPing(p.bytes);
    if (first_frame.first >= 0 && first_frame.first != static_cast<int>(Opcode::kHello)) {
      Check(seen.fatal_code == static_cast<uint32_t>(StatusCode::kUnauthenticated),
            "a first frame other than HELLO did not end with UNAUTHENTICATED" +
                std::string("; server sent:") + seen.log);
    }
  }
  const std::pair<int, size_t> first = FirstNonPing(p.bytes);
  if (first.first >= 0 &&
      std::find(p.bad_hellos.begin(), p.bad_hellos.end(), first.second) != p.bad_hellos.end()) {
    Check(seen.eof && seen.welcomes == 0 &&
              seen.fatal_code == static_cast<uint32_t>(StatusCode::kUnauthenticated),
          "a first HELLO with a bad token did not end the session with UNAUTHENTICATED" +
              std::string("; server sent:") + seen.log);
  }
  if (!seen.eof) {
    Check(written, "the session answered the sentinel but did not take the program" +
                       std::string("; server sent:") + seen.log);
  }
  return 0;
}
