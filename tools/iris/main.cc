// iris: the command-line client (end-to-end encrypted; see README "Quick start with the CLI").
//
//   iris login --server HOST:PORT (--pin pin-sha256:.. | --ca FILE)
//              (--token T | --token-file F)   (--token-file - reads stdin: not in ps/history)
//   iris send USER TEXT...        (TEXT "-" reads one message per line from stdin)
//   iris listen                   (prints messages, receipts, presence, typing until Ctrl-C)
//   iris sync                     (catch up, flush queued sends, print new messages, exit)
//   iris presence USER... [--watch]
//   iris chat USER                (interactive; typing indicators)
//   iris status
//   iris verify USER [--mark]     (safety number; --mark records the key as verified)
//   iris trust USER FINGERPRINT   (accept exactly this new key of a verified contact)
//   iris read USER [MESSAGE_ID...] (READ receipts: default, everything from USER shown so far)
//   iris settings [--read-receipts on|off] [--presence on|off] [--group-invites everyone|contacts]
//                                 (no option: show the server's copy, or this device's record
//                                 when the server cannot be reached)
//   iris block USER | iris unblock USER   (the server refuses USER's messages and group adds)
//   iris blocked                  (the server's list of users you block)
//   iris history USER|--all [--before ID] [--limit N]   (the server's archive, older messages)
//   iris group create NAME [MEMBER...] | add GROUP USER... | remove GROUP USER... |
//              leave GROUP | list | send GROUP TEXT...   (end-to-end encrypted groups;
//              GROUP is a group id or a local NAME)
//   iris chat --group GROUP       (interactive group chat)
//   iris devices code | link CODE | list | remove DEVICE   (this account's devices: a new
//              device shows its code, the primary device (1) links it; messages then reach
//              every device, and what one device sends shows on the others as "you -> USER")
// Global: --home DIR (else $IRIS_HOME, else ~/.iris), --json (one JSON object per line).
//
// Exit codes: 0 done; 1 usage or local error; 2 cannot connect or not allowed (server
// unreachable, certificate mismatch, token refused, a message refused for good, e.g. the
// recipient blocks you); 3 timed out with sends still queued
// (they stay queued and go out with the next iris command that connects).
//
// Threads: the main thread owns the terminal and all printing; the client library's I/O
// thread, a signal thread and (chat) a stdin thread only post items to one queue.

#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <variant>

#include "cli_config.h"
#include "iris/client/client.h"
#include "iris_build_info.h"

namespace iris::cli {
namespace {

using client::Client;
using client::Event;
using client::SessionState;
using json = nlohmann::json;

constexpr int kExitOk = 0;
constexpr int kExitLocal = 1;
constexpr int kExitConnect = 2;
constexpr int kExitQueued = 3;

// ---- the main thread's inbox ----

struct InputLine {
  std::string text;
};
struct InputKey {};  // a keystroke in an interactive chat (typing indicator)
struct InputEof {};
struct Quit {};
using Item = std::variant<Event, InputLine, InputKey, InputEof, Quit>;

class Inbox {
 public:
  void Push(Item item) {
    {
      std::lock_guard<std::mutex> l(mu_);
      items_.push_back(std::move(item));
    }
    cv_.notify_one();
  }
  // The next item, or nullopt when `deadline` passes first.
  std::optional<Item> Pop(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> l(mu_);
    if (!cv_.wait_until(l, deadline, [&] { return !items_.empty(); })) return std::nullopt;
    Item it = std::move(items_.front());
    items_.pop_front();
    return it;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
};

Inbox& TheInbox() {
  static Inbox inbox;
  return inbox;
}

// SIGINT/SIGTERM become a Quit item (blocked in every thread, taken by sigwait).
void StartSignalThread() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    for (;;) {
      if (sigwait(&set, &sig) == 0) TheInbox().Push(Quit{});
    }
  }).detach();
}

// ---- output ----

bool g_json = false;

std::string Clock(uint64_t ms) {
  if (ms == 0) return "never";
  const time_t t = static_cast<time_t>(ms / 1000);
  tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%H:%M:%S", &tm);
  return buf;
}

void Out(const json& j, const std::string& text) {
  if (g_json) {
    std::cout << j.dump() << std::endl;
  } else if (!text.empty()) {
    std::cout << text << std::endl;
  }
}

void Note(const std::string& text) {
  if (!g_json) std::cerr << text << std::endl;
}

// An actionable explanation of a connection-level failure.
std::string Explain(const Status& s, const CliConfig& cfg) {
  const std::string& m = s.message();
  switch (s.code()) {
    case StatusCode::kUnavailable:
      return "cannot reach the server at " + cfg.server + " (" + m +
             "). Is irisd running there? Check the address, or log in again with "
             "iris login --server HOST:PORT.";
    case StatusCode::kUnauthenticated:
      if (m.find("certificate") != std::string::npos ||
          m.find("fingerprint") != std::string::npos) {
        return "the server's TLS certificate does not match what you pinned (" + m +
               "). If the server was re-installed or its key replaced, get its new pin "
               "(pin-sha256:...) from its start-up banner and run iris login again; otherwise "
               "someone may be intercepting the connection.";
      }
      if (auto exp = TokenExpiry(cfg.token); exp && *exp <= std::time(nullptr)) {
        return "your token expired at " + Clock(static_cast<uint64_t>(*exp) * 1000) +
               " (server says: " + m +
               "). Mint a new one (irisctl token --secret-file FILE --user ID --ttl 1h) and run "
               "iris login --token NEW_TOKEN.";
      }
      return "the server refused the token (" + m +
             "). It may be expired, revoked or signed with another key: get a fresh token and "
             "run iris login --token NEW_TOKEN.";
    case StatusCode::kSessionReplaced:
      return "another session of this user connected and replaced this one (another iris "
             "process with the same account?).";
    case StatusCode::kDeviceRemoved:
      return "this device was removed from the account by its primary device (" + m +
             "). Its messages so far stay readable here (iris history, iris sync shows "
             "nothing new). To use this computer again, log in a new state directory with a "
             "token for a new device id, then iris devices code on it and iris devices link "
             "on the primary device.";
    case StatusCode::kRateLimited:
      return "the server is rate-limiting this client (" + m + "); try again shortly.";
    case StatusCode::kBadRequest: return "invalid connection settings: " + m;
    default: return s.ToString();
  }
}

json StatusJson(const Status& s) {
  return {{"code", std::string(StatusCodeName(s.code()))}, {"error", s.message()}};
}

// What to do about an identity key change, when `error` is one.
std::string TrustHint(const std::string& error, uint64_t user) {
  if (error.find("untrusted identity") == std::string::npos) return "";
  const std::string u = std::to_string(user);
  return " (user " + u +
         " presents a new identity key and you had verified the old one; kept until you "
         "decide. Compare the new safety number with them out of band (iris verify " +
         u + "), then: iris trust " + u + " NEW_FINGERPRINT)";
}

// What the sender's conversation counter says about a message (issue 18): the fields of
// the JSON line, and the note after the text line.
json OrderJson(const client::MessageEvent& m) {
  json j = json::object();
  if (m.counter == 0) return j;
  j["sender_clock_ms"] = m.sender_clock_ms;
  j["counter"] = m.counter;
  if (m.missing > 0) j["missing"] = m.missing;
  if (m.reordered) j["reordered"] = true;
  return j;
}
std::string OrderNote(const client::MessageEvent& m) {
  std::string note;
  if (m.missing > 0) {
    note += "  [" + std::to_string(m.missing) + (m.missing == 1 ? " message" : " messages") +
            " missing before this one]";
  }
  if (m.reordered) note += "  [arrived out of order: reordered]";
  return note;
}

// The notice for messages that catch-up skipped because the server moved them to its
// archive first (the inbox keeps only the newest; SyncPage.gap). The protocol does not
// say how many: the ids say when they were sent (an id's top 48 bits are its ms).
std::string GapNotice(const client::ArchiveGapEvent& g) {
  std::string when;
  if (g.after_id != 0) when += " after " + Clock(g.after_id >> 16);
  if (g.before_id != 0)
    when += std::string(when.empty() ? "" : " and") + " before " + Clock(g.before_id >> 16);
  return "*** older messages sent to you" + when +
         " were moved to the server's archive before this device fetched them (the server "
         "keeps only the newest messages of each inbox for sync). They are not lost: read "
         "them with iris history --all (or iris history USER) ***";
}

// Prints one library event. Messages are printed by the caller (shown-cursor logic).
void PrintEvent(const Event& e) {
  using namespace client;
  if (const auto* m = std::get_if<MessageEvent>(&e)) {
    if (m->outgoing || m->sent_to != 0) {
      // A transcript: this account sent it (to user `sent_to`, or to the group) from another
      // of its devices (sender_device 0: a stored one, whose device is not recorded).
      json j = {{"event", "message"},
                {"id", m->id},
                {"from", m->sender},
                {"outgoing", true},
                {"text", m->text},
                {"decrypted", m->decrypted},
                {"sent_at_ms", m->sent_at_ms},
                {"prekey", m->prekey_message}};
      if (m->sent_to != 0) j["to"] = m->sent_to;
      if (m->group_id != 0) j["group_id"] = m->group_id;
      if (m->sender_device != 0) j["sender_device"] = m->sender_device;
      if (!m->decrypted) j["error"] = m->error;
      Out(j, "[" + Clock(m->sent_at_ms) + "] you " +
                 (m->group_id != 0 ? "in group " + std::to_string(m->group_id)
                                   : "-> " + std::to_string(m->sent_to)) +
                 (m->sender_device != 0
                      ? " (from your device " + std::to_string(m->sender_device) + ")"
                      : " (from another of your devices)") +
                 ": " + (m->decrypted ? m->text : "<cannot decrypt: " + m->error + ">"));
      return;
    }
    json j = {{"event", "message"},          {"id", m->id},     {"from", m->sender},
              {"sent_at_ms", m->sent_at_ms}, {"text", m->text}, {"decrypted", m->decrypted},
              {"prekey", m->prekey_message}};
    if (m->sender_device > 1) j["sender_device"] = m->sender_device;
    if (!m->decrypted) j["error"] = m->error;
    if (m->pending) j["pending"] = true;
    if (m->group_id != 0) j["group_id"] = m->group_id;
    j.update(OrderJson(*m));
    Out(j,
        "[" + Clock(m->sent_at_ms) + "] " + std::to_string(m->sender) +
            (m->group_id != 0 ? " in group " + std::to_string(m->group_id) : "") + ": " +
            (m->decrypted ? m->text
                          : "<cannot decrypt: " + m->error + ">" + TrustHint(m->error, m->sender)) +
            OrderNote(*m));
  } else if (const auto* a = std::get_if<SendAckedEvent>(&e)) {
    if (a->receipt) return;
    json j = {{"event", "sent"},
              {"local_id", a->local_id},
              {"to", a->recipient},
              {"message_id", a->message_id},
              {"duplicate", a->duplicate}};
    if (a->group_id != 0) j["group_id"] = a->group_id;
    Out(j, "sent to " +
               (a->group_id != 0 ? "group " + std::to_string(a->group_id)
                                 : std::to_string(a->recipient)) +
               " (message id " + std::to_string(a->message_id) +
               (a->duplicate ? ", was already stored" : "") + ")");
  } else if (const auto* ge = std::get_if<GroupEvent>(&e)) {
    auto ids = [](const std::vector<uint64_t>& v) {
      std::string out;
      for (uint64_t u : v) out += (out.empty() ? "" : ", ") + std::to_string(u);
      return out;
    };
    std::string text = "group " + std::to_string(ge->group_id) + ": " + std::to_string(ge->actor) +
                       (ge->version == 1 ? " created it" : " changed it");
    if (!ge->added.empty()) text += "; added " + ids(ge->added);
    if (!ge->removed.empty()) text += "; removed " + ids(ge->removed);
    if (!ge->member) text += "; you are no longer a member";
    Out({{"event", "group"},
         {"id", ge->id},
         {"group_id", ge->group_id},
         {"actor", ge->actor},
         {"owner", ge->owner},
         {"version", ge->version},
         {"members", ge->members},
         {"added", ge->added},
         {"removed", ge->removed},
         {"member", ge->member}},
        text);
  } else if (const auto* f = std::get_if<SendFailedEvent>(&e)) {
    json j = StatusJson(f->status);
    j.update({{"event", "send_failed"},
              {"local_id", f->local_id},
              {"to", f->recipient},
              {"permanent", f->permanent},
              {"attempts", f->attempts}});
    if (f->group_id != 0) j["group_id"] = f->group_id;
    Out(j, std::string(f->permanent ? "NOT sent" : "not sent yet (will retry)") + " to " +
               (f->group_id != 0 ? "group " + std::to_string(f->group_id)
                                 : std::to_string(f->recipient)) +
               ": " + f->status.message() + TrustHint(f->status.message(), f->recipient));
  } else if (const auto* r = std::get_if<ReceiptEvent>(&e)) {
    const bool read = r->kind == ReceiptKind::kRead;
    std::string ids;
    for (uint64_t id : r->message_ids) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
    if (r->message_ids.size() > 3) ids = std::to_string(r->message_ids.size()) + " messages";
    Out({{"event", "receipt"},
         {"from", r->from},
         {"kind", read ? "read" : "delivered"},
         {"message_ids", r->message_ids}},
        std::to_string(r->from) + (read ? " read " : " received ") +
            (r->message_ids.size() > 3 ? "" : "message ") + ids);
  } else if (const auto* p = std::get_if<PresenceEvent>(&e)) {
    Out({{"event", "presence"},
         {"user", p->user},
         {"online", p->online},
         {"last_seen_ms", p->last_seen_ms}},
        std::to_string(p->user) +
            (p->online ? " is online" : " is offline (last seen " + Clock(p->last_seen_ms) + ")"));
  } else if (const auto* t = std::get_if<TypingEvent>(&e)) {
    Out({{"event", "typing"}, {"user", t->user}, {"typing", t->typing}},
        std::to_string(t->user) + (t->typing ? " is typing..." : " stopped typing"));
  } else if (const auto* s = std::get_if<StateEvent>(&e)) {
    json j = {{"event", "state"}, {"state", SessionStateName(s->state)}, {"user", s->user_id}};
    if (!s->status.ok()) j.update(StatusJson(s->status));
    if (s->retry_in_ms > 0) j["retry_in_ms"] = s->retry_in_ms;
    if (g_json) {
      Out(j, "");
    } else if (!s->status.ok()) {
      Note("(" + std::string(SessionStateName(s->state)) + ": " + s->status.message() +
           (s->retry_in_ms > 0 ? "; retrying in " + std::to_string(s->retry_in_ms) + " ms" : "") +
           ")");
    }
  } else if (const auto* y = std::get_if<SyncedEvent>(&e)) {
    Out({{"event", "synced"}, {"cursor", y->cursor}, {"received", y->received}}, "");
  } else if (const auto* k = std::get_if<KeysUploadedEvent>(&e)) {
    Out({{"event", "keys_uploaded"},
         {"one_time_prekeys", k->one_time_prekeys},
         {"identity", k->identity}},
        "");
  } else if (const auto* c = std::get_if<IdentityChangedEvent>(&e)) {
    const std::string u = std::to_string(c->user);
    Out({{"event", "identity_changed"},
         {"user", c->user},
         {"old_fingerprint", c->old_fingerprint},
         {"new_fingerprint", c->new_fingerprint},
         {"was_verified", c->was_verified},
         {"blocked", c->blocked}},
        "*** WARNING: the identity key of user " + u + " CHANGED (old " + c->old_fingerprint +
            ", new " + c->new_fingerprint +
            "). They may have re-installed - or someone (the "
            "server?) is impersonating them. " +
            (c->blocked
                 ? "You had verified them: messages to and from the new key are BLOCKED. "
                   "Compare the new safety number (iris verify " +
                       u + ") and, if it matches, run: iris trust " + u + " " + c->new_fingerprint
                 : "Verify the new safety number with them: iris verify " + u) +
            " ***");
  } else if (const auto* d = std::get_if<PeerDecryptFailedEvent>(&e)) {
    std::string ids;
    for (uint64_t id : d->message_ids) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
    Out({{"event", "decrypt_failed"},
         {"from", d->peer},
         {"message_ids", d->message_ids},
         {"resent", d->resent}},
        "user " + std::to_string(d->peer) + " FAILED TO DECRYPT message(s) " + ids +
            " (their session was lost, e.g. they re-installed); re-sent " +
            std::to_string(d->resent.size()) + " of them in a new session");
  } else if (const auto* g = std::get_if<ArchiveGapEvent>(&e)) {
    Out({{"event", "archive_gap"},
         {"after_id", g->after_id},
         {"before_id", g->before_id},
         {"hint", "iris history --all"}},
        GapNotice(*g));
  } else if (std::holds_alternative<HistoryEvent>(e) || std::holds_alternative<SettingsEvent>(e) ||
             std::holds_alternative<DevicesEvent>(e)) {
    return;  // iris history / settings / blocked / devices print their own answers
  } else if (const auto* q = std::get_if<RequestFailedEvent>(&e)) {
    json j = StatusJson(q->status);
    j["event"] = "request_failed";
    j["what"] = q->what;
    Out(j, q->what + " failed: " + q->status.message());
  }
}

// ---- an open client ----

// A stored message as the event the CLI prints. A transcript (a message this account sent
// from another of its devices) is from `self` to its peer; the store does not record which
// device sent it (sender_device 0).
client::MessageEvent FromStored(const client::StoredMessage& m, uint64_t self) {
  client::MessageEvent e;
  e.id = m.id;
  e.sender = m.outgoing ? self : m.peer;
  e.sent_at_ms = m.sent_at_ms;
  e.text = m.text;
  e.decrypted = m.decrypted;
  e.error = m.error;
  e.group_id = m.group_id;
  if (m.outgoing) {
    e.outgoing = true;
    if (m.group_id == 0) e.sent_to = m.peer;
    e.sender_device = 0;
  }
  return e;
}

// The local ids of queued copies of this account's sends for its other devices
// (transcripts: queued sends addressed to this account itself; Client::Send queues them).
std::set<std::string> QueuedCopies(const Client& c) {
  std::set<std::string> ids;
  const uint64_t self = c.user_id();
  if (self == 0) return ids;
  for (const auto& p : c.PendingSends()) {
    if (p.recipient == self && p.group_id == 0) ids.insert(p.local_id);
  }
  return ids;
}

// Whether a copy queued after `before` was taken (QueuedCopies) is still queued.
bool NewCopiesQueued(const Client& c, const std::set<std::string>& before) {
  for (const auto& id : QueuedCopies(c)) {
    if (before.count(id) == 0) return true;
  }
  return false;
}

struct Session {
  std::string dir;
  CliConfig cfg;
  std::unique_ptr<Client> client;
  uint64_t shown = 0;  // newest message id printed
  bool ever_live = false;
  Status last_error;

  // Prints a message once (ids at or below `shown` were printed before).
  // `only_from`: only direct messages from (or, sent from another device of this account,
  // to) that user; `only_group`: only that group's.
  void ShowMessage(const client::MessageEvent& m, uint64_t only_from = 0, uint64_t only_group = 0) {
    if (m.id <= shown && !m.retried) return;  // a retried one was shown as undecryptable
    const uint64_t peer = m.sent_to != 0 ? m.sent_to : m.sender;
    const bool show = only_group != 0 ? m.group_id == only_group
                                      : only_from == 0 || (peer == only_from && m.group_id == 0);
    if (show) PrintEvent(Event(m));
    if (m.id > shown) {
      shown = m.id;
      SaveShownCursor(dir, shown);
    }
  }
  // Prints stored messages not printed yet.
  void ShowBacklog(uint64_t only_from = 0, uint64_t only_group = 0) {
    for (;;) {
      auto batch = client->Messages(shown, 256);
      if (batch.empty()) return;
      for (auto& m : batch) ShowMessage(FromStored(m, client->user_id()), only_from, only_group);
    }
  }
};

Result<std::unique_ptr<Session>> OpenSession(const std::string& dir, const CliConfig& cfg) {
  auto s = std::make_unique<Session>();
  s->dir = dir;
  s->cfg = cfg;
  client::ClientOptions o;
  o.state_dir = dir;
  IRIS_RETURN_IF_ERROR(SplitHostPort(cfg.server, &o.server.host, &o.server.port));
  o.server.ca_file = cfg.ca_file;
  // One field takes either pin form (net::ParsePin); a login saved before public-key pins
  // keeps its certificate fingerprint.
  o.server.fingerprint = !cfg.pin.empty() ? cfg.pin : cfg.fingerprint;
  o.token = cfg.token;
  o.client_name = "iris-cli/0.1";
  o.prekey_pool_size = cfg.prekeys;
  o.prekey_low_water = std::min<uint32_t>(25, cfg.prekeys / 4);
  // Key maintenance intervals (ms; tests shorten them): IRIS_PREKEY_CHECK_MS,
  // IRIS_SIGNED_PREKEY_ROTATION_MS, IRIS_SIGNED_PREKEY_GRACE_MS.
  for (const auto& [env, field] :
       {std::pair{"IRIS_PREKEY_CHECK_MS", &o.prekey_check_interval_ms},
        std::pair{"IRIS_SIGNED_PREKEY_ROTATION_MS", &o.signed_prekey_rotation_ms},
        std::pair{"IRIS_SIGNED_PREKEY_GRACE_MS", &o.signed_prekey_grace_ms}}) {
    const char* v = std::getenv(env);
    if (v == nullptr) continue;
    char* end = nullptr;
    const long long ms = std::strtoll(v, &end, 10);
    if (*v == '\0' || *end != '\0' || ms < 0) {
      return BadRequest(std::string(env) + " must be a number of milliseconds, got \"" + v + "\"");
    }
    *field = ms;
  }
  o.on_event = [](const Event& e) { TheInbox().Push(e); };
  IRIS_ASSIGN_OR_RETURN(s->client, Client::Open(std::move(o)));
  s->shown = LoadShownCursor(dir);
  return s;
}

// Explain() for this session, with the device it is where that matters.
std::string ExplainSession(const Session& s, const Status& st) {
  std::string why = Explain(st, s.cfg);
  if (st.code() == StatusCode::kUnauthenticated && s.client->device_id() != 1 &&
      why.find("iris login --token") != std::string::npos) {  // about the token
    why += " This is device " + std::to_string(s.client->device_id()) +
           ": its token names it (irisctl token ... --device " +
           std::to_string(s.client->device_id()) + ").";
  }
  return why;
}

// Handles the connection-level part of an event. Returns an exit code when the command
// must end (fatal failure), else -1.
int TrackState(Session& s, const Event& e, bool fail_fast) {
  const auto* st = std::get_if<client::StateEvent>(&e);
  if (st == nullptr) return -1;
  if (st->state == SessionState::kLive) s.ever_live = true;
  if (!st->status.ok()) s.last_error = st->status;
  if (st->state == SessionState::kFailed) {
    std::cerr << "iris: " << ExplainSession(s, st->status) << std::endl;
    return kExitConnect;
  }
  if (st->state == SessionState::kConnecting && !st->status.ok() && !s.ever_live) {
    if (fail_fast) {
      std::cerr << "iris: " << ExplainSession(s, st->status) << std::endl;
      return kExitConnect;
    }
  }
  return -1;
}

std::chrono::steady_clock::time_point After(double seconds) {
  return std::chrono::steady_clock::now() +
         std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

int TimedOut(Session& s, const std::string& what) {
  if (!s.ever_live) {
    std::cerr << "iris: timed out " << what << ": "
              << (s.last_error.ok() ? "no answer from the server" : ExplainSession(s, s.last_error))
              << std::endl;
    return kExitConnect;
  }
  const size_t n = s.client->PendingSends().size();
  std::cerr << "iris: timed out " << what << "; " << n
            << " send(s) still queued locally (last problem: "
            << (s.last_error.ok() ? "none reported" : s.last_error.message())
            << "). They will be sent by the next iris command that connects." << std::endl;
  return kExitQueued;
}

Result<CliConfig> LoadOrExplain(const std::string& dir) {
  auto cfg = LoadConfig(dir);
  if (!cfg.ok()) return cfg.status();
  if (auto exp = TokenExpiry(cfg->token); exp && *exp <= std::time(nullptr)) {
    return Unauthenticated("your token expired at " + Clock(static_cast<uint64_t>(*exp) * 1000) +
                           ". Mint a new one (irisctl token --secret-file FILE --user ID "
                           "--ttl 1h) and run iris login --token NEW_TOKEN.");
  }
  return cfg;
}

int LocalError(const Status& s) {
  std::cerr << "iris: " << s.message() << std::endl;
  return s.code() == StatusCode::kUnauthenticated ? kExitConnect : kExitLocal;
}

// ---- commands ----

struct LoginArgs {
  std::string server, ca, fingerprint, pin, token, token_file;
  uint32_t prekeys = 100;
  double timeout = 20;
};

int CmdLogin(const std::string& dir, const LoginArgs& a) {
  if (int{!a.ca.empty()} + int{!a.fingerprint.empty()} + int{!a.pin.empty()} != 1) {
    std::cerr << "iris: give exactly one of --pin (from irisd's start-up banner) or --ca FILE "
                 "(a public CA: --ca /etc/ssl/certs/ca-certificates.crt): the server is always "
                 "verified"
              << std::endl;
    return kExitLocal;
  }
  CliConfig cfg;
  cfg.server = a.server;
  cfg.fingerprint = a.fingerprint;
  cfg.pin = a.pin;
  if (!a.ca.empty()) {
    std::error_code ec;
    cfg.ca_file = std::filesystem::absolute(a.ca, ec).string();
  }
  cfg.token = a.token;
  if (cfg.token.empty() && !a.token_file.empty()) {
    if (a.token_file == "-") {
      std::getline(std::cin, cfg.token);
    } else {
      std::ifstream in(a.token_file);
      if (!in) return LocalError(NotFound("cannot read token file " + a.token_file));
      std::getline(in, cfg.token);
    }
    while (!cfg.token.empty() && std::isspace(static_cast<unsigned char>(cfg.token.back()))) {
      cfg.token.pop_back();
    }
  }
  if (cfg.token.empty()) {
    if (const char* env = std::getenv("IRIS_TOKEN")) cfg.token = env;
  }
  if (cfg.token.empty()) {
    return LocalError(BadRequest("no token: give --token, --token-file or $IRIS_TOKEN"));
  }
  if (a.prekeys < 1 || a.prekeys > 1000) return LocalError(BadRequest("--prekeys must be 1..1000"));
  cfg.prekeys = a.prekeys;
  if (auto exp = TokenExpiry(cfg.token); exp && *exp <= std::time(nullptr)) {
    return LocalError(Unauthenticated("this token expired at " +
                                      Clock(static_cast<uint64_t>(*exp) * 1000) +
                                      ". Mint a new one (irisctl token ... --ttl 1h)."));
  }
  std::string host;
  uint16_t port = 0;
  if (Status st = SplitHostPort(cfg.server, &host, &port); !st.ok()) return LocalError(st);

  auto s = OpenSession(dir, cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  ss.client->Start();
  const auto deadline = After(a.timeout);
  bool synced = false;
  while (!(synced && ss.client->KeysPublished())) {
    auto item = TheInbox().Pop(deadline);
    if (!item) return TimedOut(ss, "logging in");
    if (std::holds_alternative<Quit>(*item)) return kExitLocal;
    const auto* e = std::get_if<Event>(&*item);
    if (e == nullptr) continue;
    if (int rc = TrackState(ss, *e, /*fail_fast=*/true); rc >= 0) return rc;
    if (std::holds_alternative<client::SyncedEvent>(*e)) synced = true;
    if (const auto* k = std::get_if<client::KeysUploadedEvent>(e)) PrintEvent(*e), (void)k;
    if (std::holds_alternative<client::ArchiveGapEvent>(*e)) PrintEvent(*e);
    if (const auto* f = std::get_if<client::RequestFailedEvent>(e)) {
      std::cerr << "iris: " << f->what << " failed: " << f->status.ToString() << std::endl;
      return kExitConnect;
    }
  }
  if (Status st = SaveConfig(dir, cfg); !st.ok()) return LocalError(st);
  const auto stored = ss.client->Messages(ss.shown, 100000);
  const size_t unread = static_cast<size_t>(std::count_if(
      stored.begin(), stored.end(), [](const client::StoredMessage& m) { return !m.outgoing; }));
  const uint32_t device = ss.client->device_id();
  Out({{"event", "logged_in"},
       {"user", ss.client->user_id()},
       {"device", device},
       {"server", cfg.server},
       {"identity", ss.client->IdentityFingerprint()},
       {"unread", unread},
       {"home", dir}},
      "logged in as user " + std::to_string(ss.client->user_id()) +
          (device != 1 ? " (device " + std::to_string(device) + ")" : "") + " at " + cfg.server +
          "\nidentity key fingerprint: " + ss.client->IdentityFingerprint() + "\nstate: " + dir +
          (device != 1 ? "\nthis is a linked device: unless it is linked already, run iris "
                         "devices code here and approve the code on your primary device"
                       : "") +
          (unread > 0 ? "\n" + std::to_string(unread) + " unread message(s): iris sync" : ""));
  ss.client->Stop();
  return kExitOk;
}

int CmdSend(const std::string& dir, uint64_t to, const std::vector<std::string>& words,
            double timeout, bool no_wait) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  std::set<std::string> waiting;
  // Copies for this account's other devices queued before this command (not waited for).
  const std::set<std::string> old_copies = QueuedCopies(*ss.client);
  auto queue = [&](const std::string& text) -> int {
    auto id = ss.client->Send(to, text);
    if (!id.ok()) return LocalError(id.status());
    waiting.insert(*id);
    Out({{"event", "queued"}, {"local_id", *id}, {"to", to}, {"text", text}}, "");
    return kExitOk;
  };
  const bool from_stdin = words.size() == 1 && words[0] == "-";
  if (!from_stdin) {
    std::string text;
    for (const auto& w : words) text += (text.empty() ? "" : " ") + w;
    if (int rc = queue(text); rc != kExitOk) return rc;
    if (no_wait) {
      Note("queued; it will be sent by the next iris command that connects");
      return kExitOk;
    }
  } else {
    // Lines are queued as they arrive (and survive a crash from then on).
    std::thread([] {
      std::string line;
      while (std::getline(std::cin, line)) TheInbox().Push(InputLine{line});
      TheInbox().Push(InputEof{});
    }).detach();
  }
  ss.client->Start();
  bool refused = false;  // a send failed for good (e.g. FORBIDDEN: the recipient blocks you)
  bool input_done = !from_stdin;
  auto deadline = After(timeout);
  // Then the copies of these messages for this account's other devices (linked devices:
  // they show them as sent by you), polled: their acknowledgements are not printed.
  const auto copies_left = [&] { return NewCopiesQueued(*ss.client, old_copies); };
  while (!input_done || !waiting.empty() || copies_left()) {
    const bool copies_only = input_done && waiting.empty();
    auto item = TheInbox().Pop(!input_done   ? After(3600)
                               : copies_only ? std::min(deadline, After(0.2))
                                             : deadline);
    if (!item && copies_only) {
      if (std::chrono::steady_clock::now() < deadline) continue;
      Note("iris: sent; the copies for your other devices are still queued (last problem: " +
           (ss.last_error.ok() ? std::string("none reported") : ss.last_error.message()) +
           "): the next iris command that connects sends them");
      break;
    }
    if (!item) return TimedOut(ss, "sending");
    if (std::holds_alternative<Quit>(*item)) return kExitQueued;
    if (const auto* line = std::get_if<InputLine>(&*item)) {
      if (line->text.empty()) continue;
      if (int rc = queue(line->text); rc != kExitOk) return rc;
      continue;
    }
    if (std::holds_alternative<InputEof>(*item)) {
      input_done = true;
      deadline = After(timeout);
      continue;
    }
    const auto* e = std::get_if<Event>(&*item);
    if (e == nullptr) continue;
    if (int rc = TrackState(ss, *e, false); rc >= 0) return rc;
    if (const auto* a = std::get_if<client::SendAckedEvent>(e)) {
      if (waiting.erase(a->local_id) > 0) PrintEvent(*e);
    } else if (const auto* f = std::get_if<client::SendFailedEvent>(e)) {
      ss.last_error = f->status;
      if (waiting.count(f->local_id) > 0) {
        PrintEvent(*e);
        if (f->permanent) {
          waiting.erase(f->local_id);
          refused = true;
        }
      }
    } else if (std::holds_alternative<client::KeysUploadedEvent>(*e) ||
               std::holds_alternative<client::StateEvent>(*e) ||
               std::holds_alternative<client::IdentityChangedEvent>(*e) ||
               std::holds_alternative<client::PeerDecryptFailedEvent>(*e)) {
      PrintEvent(*e);
    }
  }
  ss.client->Stop();
  return refused ? kExitConnect : kExitOk;
}

int CmdSync(const std::string& dir, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  ss.ShowBacklog();
  ss.client->Start();
  const auto deadline = After(timeout);
  bool synced = false;
  // One item from the inbox; an exit code when the command ends with it.
  const auto handle = [&](const auto& item) -> std::optional<int> {
    if (std::holds_alternative<Quit>(item)) return kExitLocal;
    const auto* e = std::get_if<Event>(&item);
    if (e == nullptr) return std::nullopt;
    if (int rc = TrackState(ss, *e, false); rc >= 0) return rc;
    if (const auto* m = std::get_if<client::MessageEvent>(e)) {
      ss.ShowMessage(*m);
    } else if (std::holds_alternative<client::SyncedEvent>(*e)) {
      synced = true;
      PrintEvent(*e);
    } else if (std::holds_alternative<client::StateEvent>(*e)) {
      PrintEvent(*e);
    } else {
      if (const auto* f = std::get_if<client::SendFailedEvent>(e)) ss.last_error = f->status;
      PrintEvent(*e);
    }
    return std::nullopt;
  };
  for (;;) {
    if (synced && ss.client->Settled()) {
      // Settled: the last answers are in, but their events (the last "sent") may still be
      // queued behind; print them before leaving.
      while (auto rest = TheInbox().Pop(After(0))) {
        if (std::optional<int> rc = handle(*rest)) return *rc;
      }
      break;
    }
    auto item = TheInbox().Pop(synced ? std::min(deadline, After(0.2)) : deadline);
    if (!item) {
      if (std::chrono::steady_clock::now() >= deadline) {
        ss.ShowBacklog();
        return TimedOut(ss, "syncing");
      }
      continue;  // re-check the queue
    }
    if (std::optional<int> rc = handle(*item)) return *rc;
  }
  ss.client->Stop();
  ss.ShowBacklog();
  return kExitOk;
}

int CmdListen(const std::string& dir, const std::vector<uint64_t>& presence) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  ss.ShowBacklog();
  if (!presence.empty()) ss.client->SubscribePresence(presence);
  ss.client->Start();
  Note("listening as " + cfg->server + " (Ctrl-C to stop)");
  for (;;) {
    auto item = TheInbox().Pop(After(3600));
    if (!item) continue;
    if (std::holds_alternative<Quit>(*item)) break;
    const auto* e = std::get_if<Event>(&*item);
    if (e == nullptr) continue;
    if (int rc = TrackState(ss, *e, false); rc >= 0) return rc;
    if (const auto* m = std::get_if<client::MessageEvent>(e)) {
      ss.ShowMessage(*m);
    } else {
      PrintEvent(*e);
    }
  }
  ss.client->Stop();
  return kExitOk;
}

int CmdPresence(const std::string& dir, const std::vector<uint64_t>& users, bool watch,
                double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  if (watch) {
    ss.client->SubscribePresence(users);
  } else {
    ss.client->QueryPresence(users);
  }
  ss.client->Start();
  std::set<uint64_t> missing(users.begin(), users.end());
  const auto deadline = After(timeout);
  while (watch || !missing.empty()) {
    auto item = TheInbox().Pop(watch ? After(3600) : deadline);
    if (!item) {
      if (watch) continue;
      return TimedOut(ss, "waiting for presence");
    }
    if (std::holds_alternative<Quit>(*item)) break;
    const auto* e = std::get_if<Event>(&*item);
    if (e == nullptr) continue;
    if (int rc = TrackState(ss, *e, !watch); rc >= 0) return rc;
    if (const auto* p = std::get_if<client::PresenceEvent>(e)) {
      missing.erase(p->user);
      PrintEvent(*e);
    } else if (const auto* f = std::get_if<client::RequestFailedEvent>(e)) {
      std::cerr << "iris: presence: " << Explain(f->status, ss.cfg) << std::endl;
      return kExitLocal;
    }
  }
  ss.client->Stop();
  return kExitOk;
}

// Puts a terminal in character mode for the chat, restoring it on destruction.
class RawTerminal {
 public:
  RawTerminal() {
    if (tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios t = saved_;
    t.c_lflag &= static_cast<tcflag_t>(~(ICANON | ECHO));
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    active_ = tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0;
  }
  ~RawTerminal() {
    if (active_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }

 private:
  termios saved_{};
  bool active_ = false;
};

// A group named on the command line: its id, or the local name of a group this state
// directory knows (Client::Groups).
Result<uint64_t> ResolveGroup(Client& c, const std::string& name) {
  char* end = nullptr;
  const unsigned long long id = std::strtoull(name.c_str(), &end, 10);
  const auto groups = c.Groups();
  if (!name.empty() && *end == '\0' && id != 0) return static_cast<uint64_t>(id);
  std::vector<uint64_t> found;
  for (const auto& g : groups) {
    if (g.name == name) found.push_back(g.id);
  }
  if (found.size() == 1) return found[0];
  if (found.empty()) {
    return NotFound("no group named \"" + name +
                    "\" is known here: give its id (iris group list shows the groups you know)");
  }
  return BadRequest("several groups are named \"" + name + "\": give its id (iris group list)");
}

// `peer` for a chat with one user, or `group_name` (non-empty) for a group chat.
int CmdChat(const std::string& dir, uint64_t peer, const std::string& group_name,
            double drain_timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  uint64_t group = 0;
  if (!group_name.empty()) {
    auto g = ResolveGroup(*ss.client, group_name);
    if (!g.ok()) return LocalError(g.status());
    group = *g;
  } else if (peer == 0) {
    return LocalError(BadRequest("chat: name a user (iris chat USER) or a group (--group GROUP)"));
  }
  const bool tty = isatty(STDIN_FILENO) == 1 && !g_json;
  std::unique_ptr<RawTerminal> raw;
  std::mutex line_mu;
  std::string line;  // what the user is typing (tty mode)
  const std::string prompt = "> ";
  auto redraw = [&] {
    if (!tty) return;
    std::lock_guard<std::mutex> l(line_mu);
    std::cout << "\r\033[K" << prompt << line << std::flush;
  };
  auto clear_line = [&] {
    if (tty) std::cout << "\r\033[K";
  };
  if (tty) {
    raw = std::make_unique<RawTerminal>();
    std::thread([&line_mu, &line, prompt] {
      char c;
      while (read(STDIN_FILENO, &c, 1) == 1) {
        std::lock_guard<std::mutex> l(line_mu);
        if (c == '\n' || c == '\r') {
          TheInbox().Push(InputLine{line});
          line.clear();
          std::cout << "\r\033[K" << prompt << std::flush;
        } else if (c == 4 && line.empty()) {  // Ctrl-D
          break;
        } else if (c == 127 || c == 8) {
          if (!line.empty()) line.pop_back();
          std::cout << "\r\033[K" << prompt << line << std::flush;
          TheInbox().Push(InputKey{});
        } else if (static_cast<unsigned char>(c) >= 32 || c == '\t') {
          line.push_back(c);
          std::cout << c << std::flush;
          TheInbox().Push(InputKey{});
        }
      }
      TheInbox().Push(InputEof{});
    }).detach();
  } else {
    std::thread([] {
      std::string l;
      while (std::getline(std::cin, l)) TheInbox().Push(InputLine{l});
      TheInbox().Push(InputEof{});
    }).detach();
  }
  Note((group != 0 ? "chat in group " + std::to_string(group)
                   : "chat with " + std::to_string(peer)) +
       " (end-to-end encrypted; Ctrl-D or /quit to leave)");
  ss.ShowBacklog(peer, group);
  if (group == 0) ss.client->SubscribePresence({peer});
  ss.client->Start();
  redraw();

  bool typing = false;
  int peer_online = -1;  // unknown
  auto last_key = std::chrono::steady_clock::now();
  bool leaving = false;
  std::set<std::string> unacked;
  // When leaving, the copies of the messages sent here for this account's other devices are
  // waited for too (polled; those queued before the chat are not).
  const std::set<std::string> old_copies = QueuedCopies(*ss.client);
  const auto copies_left = [&] { return NewCopiesQueued(*ss.client, old_copies); };
  auto deadline = After(3600 * 24 * 365);
  while (!(leaving && unacked.empty() && !copies_left())) {
    const bool copies_only = leaving && unacked.empty();
    auto wake = typing ? std::min(deadline, last_key + std::chrono::seconds(5)) : deadline;
    if (copies_only) wake = std::min(wake, After(0.2));
    auto item = TheInbox().Pop(wake);
    if (!item) {
      if (typing && std::chrono::steady_clock::now() >= last_key + std::chrono::seconds(5)) {
        typing = false;
        ss.client->SetTyping(peer, false);
        continue;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        clear_line();
        if (copies_only) {
          Note(
              "iris: the copies for your other devices are still queued: the next iris "
              "command that connects sends them");
          break;
        }
        return TimedOut(ss, "delivering the last messages");
      }
      continue;
    }
    if (std::holds_alternative<Quit>(*item) || std::holds_alternative<InputEof>(*item)) {
      leaving = true;
      deadline = After(drain_timeout);
      if (typing) ss.client->SetTyping(peer, false);
      continue;
    }
    if (std::holds_alternative<InputKey>(*item)) {
      if (group != 0) continue;  // typing indicators: direct chats only
      last_key = std::chrono::steady_clock::now();
      if (!typing) {
        typing = true;
        ss.client->SetTyping(peer, true);
      }
      continue;
    }
    if (const auto* in = std::get_if<InputLine>(&*item)) {
      const std::string& text = in->text;
      if (text.empty()) continue;
      if (text == "/quit") {
        leaving = true;
        deadline = After(drain_timeout);
        continue;
      }
      if (group == 0 && (text == "/typing on" || text == "/typing off")) {  // for scripts
        typing = text == "/typing on";
        last_key = std::chrono::steady_clock::now();
        ss.client->SetTyping(peer, typing);
        continue;
      }
      if (typing) {
        typing = false;
        ss.client->SetTyping(peer, false);
      }
      auto id = group != 0 ? ss.client->SendGroup(group, text) : ss.client->Send(peer, text);
      if (!id.ok()) {
        clear_line();
        std::cerr << "iris: " << id.status().message() << std::endl;
        redraw();
        continue;
      }
      unacked.insert(*id);
      clear_line();
      json queued = {{"event", "queued"}, {"local_id", *id}, {"to", peer}, {"text", text}};
      if (group != 0) queued["group_id"] = group;
      Out(queued, "[" + Clock(static_cast<uint64_t>(std::time(nullptr)) * 1000) + "] me: " + text);
      redraw();
      continue;
    }
    const auto* e = std::get_if<Event>(&*item);
    if (e == nullptr) continue;
    if (int rc = TrackState(ss, *e, false); rc >= 0) {
      clear_line();
      return rc;
    }
    clear_line();
    if (const auto* m = std::get_if<client::MessageEvent>(e)) {
      ss.ShowMessage(*m, peer, group);
    } else if (const auto* ge = std::get_if<client::GroupEvent>(e)) {
      if (ge->group_id == group) PrintEvent(*e);
    } else if (const auto* a = std::get_if<client::SendAckedEvent>(e)) {
      if (unacked.erase(a->local_id) > 0 && g_json) PrintEvent(*e);
    } else if (const auto* t = std::get_if<client::TypingEvent>(e)) {
      if (group == 0 && t->user == peer) PrintEvent(*e);
    } else if (const auto* p = std::get_if<client::PresenceEvent>(e)) {
      if (p->user == peer && peer_online != static_cast<int>(p->online)) PrintEvent(*e);
      if (p->user == peer) peer_online = static_cast<int>(p->online);
    } else if (const auto* r = std::get_if<client::ReceiptEvent>(e)) {
      if (group == 0 && r->from == peer && g_json) PrintEvent(*e);
    } else if (std::holds_alternative<client::SendFailedEvent>(*e) ||
               std::holds_alternative<client::StateEvent>(*e) ||
               std::holds_alternative<client::IdentityChangedEvent>(*e) ||
               std::holds_alternative<client::PeerDecryptFailedEvent>(*e) ||
               std::holds_alternative<client::ArchiveGapEvent>(*e)) {
      PrintEvent(*e);
    }
    redraw();
  }
  clear_line();
  ss.client->Stop();
  return kExitOk;
}

int CmdVerify(const std::string& dir, uint64_t user, bool mark) {
  auto cfg = LoadConfig(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Client& c = *(*s)->client;
  auto v = c.Verification(user);
  if (!v.ok()) return LocalError(v.status());
  const std::string u = std::to_string(user);
  if (!v->known) {
    return LocalError(NotFound("no identity key of user " + u +
                               " is known yet: exchange a message with them first (iris send " + u +
                               " ...), then run iris verify " + u + " again"));
  }
  if (mark) {
    if (Status st = c.MarkVerified(user); !st.ok()) return LocalError(st);
    v->verified = true;
  }
  json j = {{"event", "verify"},
            {"user", user},
            {"verified", v->verified},
            {"fingerprint", v->fingerprint},
            {"safety_number", v->safety_number},
            {"scannable", v->scannable}};
  std::string text = "safety number with user " + u + ":\n  " + v->safety_number +
                     "\nscannable: " + v->scannable + "\ntheir key fingerprint: " + v->fingerprint +
                     "\nstatus: " +
                     (v->verified ? "VERIFIED"
                                  : "unverified (compare the number with them in person or "
                                    "over another channel, then: iris verify " +
                                        u + " --mark)");
  if (!v->refused_fingerprint.empty()) {
    j["refused_fingerprint"] = v->refused_fingerprint;
    j["refused_safety_number"] = v->refused_safety_number;
    text += "\n*** a NEW key was refused (you had verified the old one): fingerprint " +
            v->refused_fingerprint + ", safety number with it:\n  " + v->refused_safety_number +
            "\nif they confirm this number, accept it with: iris trust " + u + " " +
            v->refused_fingerprint;
  }
  Out(j, text);
  return kExitOk;
}

int CmdTrust(const std::string& dir, uint64_t user, const std::vector<std::string>& words) {
  auto cfg = LoadConfig(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  std::string fingerprint;
  for (const auto& w : words) fingerprint += w;
  const std::string u = std::to_string(user);
  if (fingerprint.empty()) {
    auto v = ss.client->Verification(user);
    std::string which = v.ok() && !v->refused_fingerprint.empty()
                            ? " (the refused new key of user " + u + " has fingerprint " +
                                  v->refused_fingerprint + "; compare it first: iris verify " + u +
                                  ")"
                            : "";
    return LocalError(BadRequest("name the fingerprint of the key to trust: iris trust " + u +
                                 " FINGERPRINT" + which));
  }
  auto got = ss.client->TrustIdentity(user, fingerprint);
  if (!got.ok()) return LocalError(got.status());
  Out({{"event", "trusted"}, {"user", user}, {"retried", got->size()}},
      "trusted the new identity key of user " + u + " (now marked verified); " +
          std::to_string(got->size()) + " kept message(s) decrypted");
  for (const auto& m : *got) PrintEvent(Event(FromStored(m, ss.client->user_id())));
  return kExitOk;
}

int CmdStatus(const std::string& dir) {
  auto cfg = LoadConfig(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  const auto pending = ss.client->PendingSends();
  json q = json::array();
  std::string text;
  for (const auto& p : pending) {
    if (p.receipt) continue;
    q.push_back({{"local_id", p.local_id},
                 {"to", p.recipient},
                 {"text", p.text},
                 {"attempts", p.attempts},
                 {"encrypted", p.encrypted}});
    text += "\n  to " + std::to_string(p.recipient) + ": " + p.text;
  }
  const auto exp = TokenExpiry(cfg->token);
  const uint32_t device = ss.client->device_id();
  Out({{"event", "status"},
       {"server", cfg->server},
       {"home", dir},
       {"device", device},
       {"identity", ss.client->IdentityFingerprint()},
       {"keys_published", ss.client->KeysPublished()},
       {"cursor", ss.client->cursor()},
       {"token_expires", exp.value_or(0)},
       {"queued", q}},
      "server: " + cfg->server + "\nstate: " + dir + "\ndevice: " + std::to_string(device) +
          (device == 1 ? " (primary)" : " (linked)") +
          "\nidentity key fingerprint: " + ss.client->IdentityFingerprint() +
          "\ntoken expires: " + (exp ? Clock(static_cast<uint64_t>(*exp) * 1000) : "unknown") +
          "\nqueued messages: " + std::to_string(q.size()) + text);
  return kExitOk;
}

// Runs the session until it is live with nothing queued or in flight (everything this
// command queued reached the server), passing each event to `on_event` (which returns an
// exit code to stop with, or -1) and, when given, until `done` (the command's own answers:
// an answer's event may still be in the inbox when Settled() turns true). Returns -1 when
// settled, else the exit code.
int RunUntilSettled(Session& ss, double timeout, const std::string& what,
                    const std::function<int(const Event&)>& on_event,
                    const std::function<bool()>& done = {}) {
  ss.client->Start();
  const auto deadline = After(timeout);
  bool synced = false;
  for (;;) {
    if (synced && (!done || done()) && ss.client->Settled()) return -1;
    auto item = TheInbox().Pop(synced ? std::min(deadline, After(0.2)) : deadline);
    if (!item) {
      if (std::chrono::steady_clock::now() >= deadline) return TimedOut(ss, what);
      continue;
    }
    if (std::holds_alternative<Quit>(*item)) return kExitLocal;
    const auto* e = std::get_if<Event>(&*item);
    if (e == nullptr) continue;
    if (int rc = TrackState(ss, *e, false); rc >= 0) return rc;
    if (std::holds_alternative<client::SyncedEvent>(*e)) synced = true;
    if (int rc = on_event(*e); rc >= 0) return rc;
  }
}

// Events a command that is not about messages still shows: problems and warnings.
void PrintProblems(Session& ss, const Event& e) {
  if (const auto* f = std::get_if<client::SendFailedEvent>(&e)) {
    ss.last_error = f->status;
    PrintEvent(e);
  } else if (std::holds_alternative<client::StateEvent>(e) ||
             std::holds_alternative<client::IdentityChangedEvent>(e) ||
             std::holds_alternative<client::PeerDecryptFailedEvent>(e) ||
             std::holds_alternative<client::ArchiveGapEvent>(e)) {
    PrintEvent(e);
  }
}

// ---- iris group (docs/protocol.md, "Groups" and "Client-side group encryption") ----

json GroupJson(const client::GroupRecord& g) {
  return {{"group_id", g.id},     {"name", g.name},     {"owner", g.owner},
          {"members", g.members}, {"member", g.member}, {"version", g.version}};
}

std::optional<client::GroupRecord> LocalGroup(Client& c, uint64_t id) {
  for (auto& g : c.Groups()) {
    if (g.id == id) return g;
  }
  return std::nullopt;
}

// Runs one membership request (`ask` sends it and returns its request number) to its
// answer. Prints `event` with the group's new state.
int RunGroupRequest(Session& ss, double timeout, const std::string& what, const std::string& event,
                    const std::function<uint64_t()>& ask) {
  uint64_t request = 0;
  std::optional<client::GroupInfoEvent> answer;
  int rc = RunUntilSettled(
      ss, timeout, what,
      [&](const Event& e) {
        if (const auto* st = std::get_if<client::StateEvent>(&e);
            st != nullptr && st->state == SessionState::kLive && request == 0) {
          request = ask();
        }
        if (const auto* g = std::get_if<client::GroupInfoEvent>(&e);
            g != nullptr && request != 0 && g->request == request) {
          answer = *g;
        } else if (const auto* f = std::get_if<client::RequestFailedEvent>(&e);
                   f != nullptr && request != 0 && f->request == request) {
          std::cerr << "iris: " << what << " failed: " << f->status.message() << std::endl;
          return f->status.code() == StatusCode::kInternal ? kExitLocal : kExitConnect;
        } else {
          PrintProblems(ss, e);
        }
        return -1;
      },
      [&] { return answer.has_value(); });
  if (rc >= 0) return rc;
  ss.client->Stop();
  auto g = LocalGroup(*ss.client, answer->group_id);
  client::GroupRecord r = g.value_or(client::GroupRecord{});
  json j = GroupJson(r);
  j["event"] = event;
  std::string members;
  for (uint64_t u : r.members) members += (members.empty() ? "" : ", ") + std::to_string(u);
  Out(j, event + ": group " + std::to_string(r.id) + (r.name.empty() ? "" : " \"" + r.name + "\"") +
             ", owner " + std::to_string(r.owner) + ", members " + members);
  return kExitOk;
}

int CmdGroupCreate(const std::string& dir, const std::string& name,
                   const std::vector<uint64_t>& members, double timeout) {
  if (name.empty() || name.find_first_not_of("0123456789") == std::string::npos) {
    return LocalError(
        BadRequest("group create: the NAME must not be empty or a number (numbers "
                   "name groups by id)"));
  }
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  for (const auto& g : ss.client->Groups()) {
    if (g.name == name) {
      return LocalError(BadRequest("a group named \"" + name + "\" exists already (id " +
                                   std::to_string(g.id) + ")"));
    }
  }
  return RunGroupRequest(ss, timeout, "creating the group", "group_created",
                         [&] { return ss.client->CreateGroup(members, name); });
}

// add / remove / leave.
int CmdGroupUpdate(const std::string& dir, const std::string& group_name,
                   const std::vector<uint64_t>& add, const std::vector<uint64_t>& remove,
                   bool leave, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  auto group = ResolveGroup(*ss.client, group_name);
  if (!group.ok()) return LocalError(group.status());
  const uint64_t g = *group;
  return RunGroupRequest(
      ss, timeout, leave ? "leaving the group" : "changing the group",
      leave ? "group_left" : "group_updated",
      [&] { return leave ? ss.client->LeaveGroup(g) : ss.client->UpdateGroup(g, add, remove); });
}

int CmdGroupList(const std::string& dir, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  // Catch up first: groups are learnt from their GROUP_EVENTs.
  int rc = RunUntilSettled(ss, timeout, "syncing", [&](const Event& e) {
    PrintProblems(ss, e);
    return -1;
  });
  if (rc >= 0) return rc;
  ss.client->Stop();
  const auto groups = ss.client->Groups();
  if (groups.empty()) Note("no groups (create one: iris group create NAME USER...)");
  for (const auto& g : groups) {
    json j = GroupJson(g);
    j["event"] = "group_entry";
    Out(j, std::to_string(g.id) + "  " + (g.name.empty() ? "-" : g.name) + "  owner " +
               std::to_string(g.owner) + ", " + std::to_string(g.members.size()) + " members" +
               (g.member ? "" : " (you are no longer a member)"));
  }
  return kExitOk;
}

int CmdGroupSend(const std::string& dir, const std::string& group_name,
                 const std::vector<std::string>& words, double timeout) {
  std::string text;
  for (const auto& w : words) text += (text.empty() ? "" : " ") + w;
  if (text.empty()) return LocalError(BadRequest("group send: the message text is empty"));
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  auto group = ResolveGroup(*ss.client, group_name);
  if (!group.ok()) return LocalError(group.status());
  // Queued once caught up: a group created by someone else is known after its GROUP_EVENT.
  std::string local_id;
  bool acked = false;
  int rc = RunUntilSettled(
      ss, timeout, "sending to the group",
      [&](const Event& e) {
        if (std::holds_alternative<client::SyncedEvent>(e) && local_id.empty()) {
          auto id = ss.client->SendGroup(*group, text);
          if (!id.ok()) return LocalError(id.status());
          local_id = *id;
          Out({{"event", "queued"}, {"local_id", local_id}, {"group_id", *group}, {"text", text}},
              "");
        } else if (const auto* a = std::get_if<client::SendAckedEvent>(&e);
                   a != nullptr && a->local_id == local_id) {
          acked = true;
          PrintEvent(e);
        } else if (const auto* f = std::get_if<client::SendFailedEvent>(&e);
                   f != nullptr && f->local_id == local_id) {
          PrintEvent(e);
          if (f->permanent) return kExitConnect;
        } else {
          PrintProblems(ss, e);
        }
        return -1;
      },
      [&] { return acked; });
  if (rc >= 0) return rc;
  ss.client->Stop();
  return kExitOk;
}

// ---- iris devices (docs/protocol.md appendix 20, "Devices in the client") ----
//
// A new device logs in with a token naming its device (irisctl token ... --device N) in its
// own state directory, shows its link code (iris devices code), and the primary device (1)
// adds it to the account's signed device list (iris devices link CODE). From then on every
// message to this account reaches each listed device, and what one device sends is copied
// to the others.

json DevicesJson(const client::DevicesEvent& d, const std::string& event) {
  json list = json::array();
  for (const auto& e : d.devices) {
    list.push_back({{"id", e.id}, {"fingerprint", e.fingerprint}, {"this_device", e.this_device}});
  }
  return {{"event", event}, {"version", d.version}, {"devices", list}};
}

// One line per device ("device N  FINGERPRINT  (this device)"), then the list's version.
std::string DevicesText(const client::DevicesEvent& d) {
  std::string text;
  for (const auto& e : d.devices) {
    text += "device " + std::to_string(e.id) + "  " + e.fingerprint +
            (e.this_device ? "  (this device)" : "") + "\n";
  }
  return text + "device list version " + std::to_string(d.version) +
         (d.version == 0 ? " (no device was ever linked)" : "");
}

// Runs one devices request (`ask` queues it and returns its number, or the local error)
// to its answer, the account's device list, in *answer. -1 when answered, else the exit
// code (the error printed).
int RunDevicesRequest(Session& ss, double timeout, const std::string& what,
                      const std::function<Result<uint64_t>()>& ask,
                      std::optional<client::DevicesEvent>* answer) {
  auto request = ask();
  if (!request.ok()) return LocalError(request.status());
  return RunUntilSettled(
      ss, timeout, what,
      [&](const Event& e) {
        if (const auto* d = std::get_if<client::DevicesEvent>(&e);
            d != nullptr && d->request == *request) {
          *answer = *d;
        } else if (const auto* f = std::get_if<client::RequestFailedEvent>(&e);
                   f != nullptr && f->what == "devices" && f->request == *request) {
          std::cerr << "iris: " << what << " failed: " << f->status.message() << " ("
                    << StatusCodeName(f->status.code()) << ")" << std::endl;
          return f->status.code() == StatusCode::kInternal ? kExitLocal : kExitConnect;
        } else {
          PrintProblems(ss, e);
        }
        return -1;
      },
      [&] { return answer->has_value(); });
}

// iris devices code: on a new (linked) device, after iris login with its token. Connects
// (so that its keys are on the server and its device id is known) and prints the code for
// the primary device.
int CmdDevicesCode(const std::string& dir, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  // The primary device has no code (known without connecting once it connected before).
  if (auto early = ss.client->LinkCode();
      !early.ok() && early.status().code() != StatusCode::kNotFound) {
    return LocalError(early.status());
  }
  int rc = RunUntilSettled(
      ss, timeout, "publishing this device's keys",
      [&](const Event& e) {
        if (const auto* f = std::get_if<client::RequestFailedEvent>(&e);
            f != nullptr && f->what == "keys_upload") {
          std::cerr << "iris: the server refused this device's keys: " << f->status.message()
                    << " (" << StatusCodeName(f->status.code()) << ")" << std::endl;
          return kExitConnect;
        }
        if (std::holds_alternative<client::KeysUploadedEvent>(e)) PrintEvent(e);
        PrintProblems(ss, e);
        return -1;
      },
      [&] { return ss.client->KeysPublished(); });
  if (rc >= 0) return rc;
  ss.client->Stop();
  auto code = ss.client->LinkCode();
  if (!code.ok()) return LocalError(code.status());
  Out({{"event", "link_code"},
       {"code", *code},
       {"user", ss.client->user_id()},
       {"device", ss.client->device_id()},
       {"identity", ss.client->IdentityFingerprint()}},
      *code);
  Note("On your primary device run: iris devices link " + *code);
  return kExitOk;
}

// iris devices link CODE: on the primary device, adds the device that showed CODE.
int CmdDevicesLink(const std::string& dir, const std::string& code, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  std::optional<client::DevicesEvent> answer;
  if (int rc = RunDevicesRequest(
          ss, timeout, "linking the device", [&] { return ss.client->LinkDevice(code); }, &answer);
      rc >= 0) {
    return rc;
  }
  ss.client->Stop();
  json j = DevicesJson(*answer, "device_linked");
  // The device the code names: iris-link:1:USER:DEVICE:KEY.
  uint32_t linked = 0;
  if (const size_t key = code.rfind(':'); key != std::string::npos && key > 0) {
    const size_t dev = code.rfind(':', key - 1);
    if (dev != std::string::npos) {
      linked = static_cast<uint32_t>(
          std::strtoul(code.substr(dev + 1, key - dev - 1).c_str(), nullptr, 10));
    }
  }
  if (linked != 0) j["device"] = linked;
  Out(j,
      (linked != 0 ? "linked device " + std::to_string(linked) : std::string("linked the device")) +
          ": messages to you now reach it too, and what it sends shows here\n" +
          DevicesText(*answer));
  return kExitOk;
}

// iris devices list: the account's device list as the server holds it (verified against
// the primary device's key).
int CmdDevicesList(const std::string& dir, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  std::optional<client::DevicesEvent> answer;
  if (int rc = RunDevicesRequest(
          ss, timeout, "reading the device list",
          [&]() -> Result<uint64_t> { return ss.client->RequestDevices(); }, &answer);
      rc >= 0) {
    return rc;
  }
  ss.client->Stop();
  Out(DevicesJson(*answer, "devices"), DevicesText(*answer));
  return kExitOk;
}

// iris devices remove DEVICE: on the primary device; the server ends the device's sessions
// and drops its keys.
int CmdDevicesRemove(const std::string& dir, uint64_t device, double timeout) {
  if (device < 2 || device > 63) {
    return LocalError(
        BadRequest(device == 1 ? "device 1 is the primary device: it cannot be removed"
                               : "a linked device id is 2..63 (iris devices list shows them)"));
  }
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  std::optional<client::DevicesEvent> answer;
  if (int rc = RunDevicesRequest(
          ss, timeout, "removing the device",
          [&] { return ss.client->RemoveDevice(static_cast<uint32_t>(device)); }, &answer);
      rc >= 0) {
    return rc;
  }
  ss.client->Stop();
  json j = DevicesJson(*answer, "device_removed");
  j["device"] = device;
  Out(j, "removed device " + std::to_string(device) +
             ": the server ended its sessions and dropped its keys; messages no longer reach "
             "it\n" +
             DevicesText(*answer));
  return kExitOk;
}

// iris read: READ receipts for messages from `peer` (docs/protocol.md, Client conventions
// 9: the encrypted copy to the author and the RECEIPT frame for the server). Without ids:
// every decrypted message from `peer` that the CLI has printed and not marked read yet.
int CmdRead(const std::string& dir, uint64_t peer, const std::vector<uint64_t>& explicit_ids,
            double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  const std::string u = std::to_string(peer);
  if (peer == ss.client->user_id()) return LocalError(BadRequest("that is your own user id"));
  std::vector<uint64_t> ids;
  size_t unshown = 0;
  if (!explicit_ids.empty()) {
    for (uint64_t id : explicit_ids) {
      auto m = id == 0 ? std::vector<client::StoredMessage>{} : ss.client->Messages(id - 1, 1);
      if (m.empty() || m[0].id != id || m[0].peer != peer || m[0].outgoing) {
        return LocalError(NotFound("message " + std::to_string(id) +
                                   " is not a message from user " + u +
                                   " on this device (iris sync fetches new ones)"));
      }
      if (!m[0].decrypted) {
        return LocalError(BadRequest("message " + std::to_string(id) +
                                     " could not be decrypted: there is nothing to mark read"));
      }
      ids.push_back(id);
    }
  } else {
    uint64_t from = LoadReadMark(dir, peer);
    for (;;) {
      auto batch = ss.client->Messages(from, 256);
      if (batch.empty()) break;
      for (const auto& m : batch) {
        from = m.id;
        if (m.peer != peer || !m.decrypted || m.outgoing) continue;  // not your own sends
        if (m.id > ss.shown) {
          ++unshown;  // not printed yet: the user has not seen it
        } else {
          ids.push_back(m.id);
        }
      }
    }
  }
  const bool told = ss.client->LocalSettings().read_receipts;
  if (ids.empty()) {
    Out({{"event", "read"}, {"from", peer}, {"message_ids", json::array()}, {"told", told}},
        "nothing from user " + u + " to mark read" +
            (unshown > 0 ? " (" + std::to_string(unshown) + " not shown yet: iris sync)" : ""));
    return kExitOk;
  }
  for (size_t i = 0; i < ids.size(); i += 256) {
    std::vector<uint64_t> chunk(
        ids.begin() + static_cast<std::ptrdiff_t>(i),
        ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + 256)));
    if (Status st = ss.client->MarkRead(peer, chunk); !st.ok()) return LocalError(st);
  }
  // Queued durably: a later command delivers them should this one time out.
  if (explicit_ids.empty()) SaveReadMark(dir, peer, ids.back());
  if (int rc = RunUntilSettled(ss, timeout, "sending read receipts",
                               [&](const Event& e) {
                                 PrintProblems(ss, e);
                                 return -1;
                               });
      rc >= 0) {
    return rc;
  }
  ss.client->Stop();
  Out({{"event", "read"}, {"from", peer}, {"message_ids", ids}, {"told", told}},
      "marked " + std::to_string(ids.size()) + " message(s) from user " + u + " read" +
          (told ? "" : " (your read receipts are off: user " + u + " is not told)") +
          (unshown > 0 ? "; " + std::to_string(unshown) + " more not shown yet: iris sync" : ""));
  return kExitOk;
}

Result<bool> OnOff(const std::string& flag, const std::string& v) {
  if (v == "on" || v == "true" || v == "yes") return true;
  if (v == "off" || v == "false" || v == "no") return false;
  return BadRequest(flag + " takes on or off, not \"" + v + "\"");
}

const char* GroupInvitesName(client::GroupInvites g) {
  return g == client::GroupInvites::kContacts ? "contacts" : "everyone";
}

std::string UserList(const std::vector<uint64_t>& users) {
  std::string out;
  for (uint64_t u : users) out += (out.empty() ? "" : ", ") + std::to_string(u);
  return out;
}

// Waits for the SettingsEvent answering `request` (Client::RequestSettings, sent once
// connected after any pending SETTINGS) and stores it in *answer (returns -1). Without
// `fallback`, a connection failure or refusal ends the command (its exit code). With it,
// they, and the timeout, return -1 with *answer empty and *why saying what happened.
int AwaitServerSettings(Session& ss, uint64_t request, double timeout, bool fallback,
                        std::optional<client::SettingsEvent>* answer, Status* why) {
  ss.client->Start();
  const auto deadline = After(timeout);
  while (!answer->has_value()) {
    auto item = TheInbox().Pop(deadline);
    if (!item) {
      if (!fallback) return TimedOut(ss, "reading the settings");
      *why = ss.last_error.ok() ? Unavailable("no answer from the server") : ss.last_error;
      return -1;
    }
    if (std::holds_alternative<Quit>(*item)) return kExitLocal;
    const auto* e = std::get_if<Event>(&*item);
    if (e == nullptr) continue;
    if (const auto* st = std::get_if<client::StateEvent>(e); st != nullptr && fallback) {
      if (st->state == SessionState::kLive) ss.ever_live = true;
      if (st->state == SessionState::kFailed ||
          (st->state == SessionState::kConnecting && !st->status.ok() && !ss.ever_live)) {
        *why = st->status;
        return -1;
      }
      PrintProblems(ss, *e);
      continue;
    }
    if (int rc = TrackState(ss, *e, /*fail_fast=*/true); rc >= 0) return rc;
    if (const auto* g = std::get_if<client::SettingsEvent>(e); g != nullptr) {
      if (g->request == request) *answer = *g;
    } else if (const auto* f = std::get_if<client::RequestFailedEvent>(e)) {
      if (f->what == "settings_get" && f->request == request) {
        if (fallback) {
          *why = f->status;
          return -1;
        }
        std::cerr << "iris: reading the settings failed: " << Explain(f->status, ss.cfg)
                  << std::endl;
        return kExitConnect;
      }
      if (f->what == "settings") {  // changes made earlier and still pending
        std::cerr << "iris: the server refused this device's pending settings: "
                  << f->status.message() << std::endl;
      }
    } else {
      PrintProblems(ss, *e);
    }
  }
  return -1;
}

// Prints the settings: the server's copy (`server`), else this device's record `rec`.
void PrintSettings(const client::Client::SettingsRecord& rec,
                   const std::optional<client::SettingsEvent>& server, bool change) {
  auto word = [](bool b) { return std::string(b ? "on" : "off"); };
  const bool read_receipts = server ? server->read_receipts : rec.read_receipts;
  const bool presence = server ? server->share_presence : rec.share_presence;
  const client::GroupInvites invites =
      server ? server->group_invites
             : (rec.group_invites == client::GroupInvites::kUnspecified
                    ? client::GroupInvites::kEveryone
                    : rec.group_invites);
  json j = {{"event", "settings"},
            {"read_receipts", read_receipts},
            {"presence", presence},
            {"group_invites", GroupInvitesName(invites)},
            {"source", server ? "server" : "local"},
            {"set", rec.set},
            {"pending", rec.pending},
            {"changed", change}};
  if (server) j["blocked"] = server->blocked;
  if (!rec.pending_block.empty()) j["pending_block"] = rec.pending_block;
  if (!rec.pending_unblock.empty()) j["pending_unblock"] = rec.pending_unblock;
  std::string text = std::string(change ? "saved on the server:\n" : "") +
                     "read receipts: " + word(read_receipts) +
                     (read_receipts ? "" : " (you neither send nor see READ receipts)") +
                     "\npresence: " + word(presence) +
                     (presence ? "" : " (others see you offline, never seen)") +
                     "\ngroup invites: " + GroupInvitesName(invites) +
                     (invites == client::GroupInvites::kContacts
                          ? " (only users you have written to can add you to groups)"
                          : "");
  if (server) {
    text += "\nblocked: " + (server->blocked.empty() ? "nobody" : UserList(server->blocked));
  } else {
    text += "\n(this device's record: the server could not be asked)";
    if (!rec.set) text += "\n(read receipts and presence never changed from this device)";
  }
  if (!rec.pending_block.empty()) text += "\nto block, pending: " + UserList(rec.pending_block);
  if (!rec.pending_unblock.empty()) {
    text += "\nto unblock, pending: " + UserList(rec.pending_unblock);
  }
  if (rec.pending) text += "\n(not confirmed by the server yet: sent again at the next connection)";
  Out(j, text);
}

// iris settings: without options, shows the server's copy (SETTINGS_GET; after sending what
// this device has pending), or what this device last set when the server cannot be reached
// ("pending" until the server confirmed it). With options, sends SETTINGS, waits for the
// server's OK and shows the server's copy.
int CmdSettings(const std::string& dir, const std::string& read_receipts,
                const std::string& presence, const std::string& group_invites, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  client::Client::SettingsRecord rec = ss.client->LocalSettings();
  const bool flags = !read_receipts.empty() || !presence.empty();
  const bool change = flags || !group_invites.empty();
  std::optional<client::GroupInvites> invites;
  if (!group_invites.empty()) {
    if (group_invites == "everyone") {
      invites = client::GroupInvites::kEveryone;
    } else if (group_invites == "contacts") {
      invites = client::GroupInvites::kContacts;
    } else {
      return LocalError(
          BadRequest("--group-invites takes everyone or contacts, not \"" + group_invites + "\""));
    }
  }
  if (!read_receipts.empty()) {
    auto v = OnOff("--read-receipts", read_receipts);
    if (!v.ok()) return LocalError(v.status());
    rec.read_receipts = *v;
  }
  if (!presence.empty()) {
    auto v = OnOff("--presence", presence);
    if (!v.ok()) return LocalError(v.status());
    rec.share_presence = *v;
  }
  std::optional<client::SettingsEvent> answer;
  if (!change) {
    Status why;
    const uint64_t request = ss.client->RequestSettings();
    if (int rc = AwaitServerSettings(ss, request, timeout, /*fallback=*/true, &answer, &why);
        rc >= 0) {
      return rc;
    }
    ss.client->Stop();
    if (!answer) {
      Note("iris: could not ask the server (" + why.message() +
           "); showing what this device last set");
    }
    PrintSettings(ss.client->LocalSettings(), answer, false);
    return kExitOk;
  }
  if (flags) ss.client->UpdateSettings(rec.read_receipts, rec.share_presence);
  if (invites) {
    if (Status st = ss.client->SetGroupInvites(*invites); !st.ok()) return LocalError(st);
  }
  // Read back after the change (the SETTINGS_GET waits for the SETTINGS' answer).
  const uint64_t request = ss.client->RequestSettings();
  if (int rc = RunUntilSettled(
          ss, timeout, "saving the settings",
          [&](const Event& e) {
            if (const auto* f = std::get_if<client::RequestFailedEvent>(&e);
                f != nullptr &&
                (f->what == "settings" || (f->what == "settings_get" && f->request == request))) {
              std::cerr << "iris: the server refused the settings: " << Explain(f->status, ss.cfg)
                        << std::endl;
              return kExitConnect;
            }
            if (const auto* g = std::get_if<client::SettingsEvent>(&e);
                g != nullptr && g->request == request) {
              answer = *g;
            }
            PrintProblems(ss, e);
            return -1;
          },
          [&] { return answer.has_value(); });
      rc >= 0) {
    return rc;
  }
  ss.client->Stop();
  PrintSettings(ss.client->LocalSettings(), answer, true);  // confirmed: no longer pending
  return kExitOk;
}

// iris block / iris unblock: sends the change (SETTINGS block / unblock) and waits for the
// server's OK. Kept pending locally (and sent by the next iris command that connects) when
// it cannot be sent now.
int CmdBlock(const std::string& dir, uint64_t user, bool block, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  const Status st = block ? ss.client->Block(user) : ss.client->Unblock(user);
  if (!st.ok()) return LocalError(st);
  const std::string what = block ? "block" : "unblock";
  auto confirmed = [&] {
    const auto rec = ss.client->LocalSettings();
    const auto& list = block ? rec.pending_block : rec.pending_unblock;
    return std::find(list.begin(), list.end(), user) == list.end();
  };
  if (int rc = RunUntilSettled(
          ss, timeout, what == "block" ? "blocking" : "unblocking",
          [&](const Event& e) {
            if (const auto* f = std::get_if<client::RequestFailedEvent>(&e);
                f != nullptr && f->what == "settings") {
              std::cerr << "iris: the server refused to " << what << " user " << user << ": "
                        << Explain(f->status, ss.cfg) << std::endl;
              return kExitConnect;
            }
            PrintProblems(ss, e);
            return -1;
          },
          confirmed);
      rc >= 0) {
    if (!confirmed()) {
      Note("iris: the " + what +
           " stays pending on this device and is sent by the next iris "
           "command that connects");
    }
    return rc;
  }
  ss.client->Stop();
  const std::string u = std::to_string(user);
  Out({{"event", block ? "blocked" : "unblocked"}, {"user", user}},
      block ? "blocked user " + u +
                  ": the server refuses their messages to you and their group invitations "
                  "(iris unblock " +
                  u + " undoes it)"
            : "unblocked user " + u);
  return kExitOk;
}

// iris blocked: the server's list of users this account blocks (SETTINGS_GET).
int CmdBlocked(const std::string& dir, double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  std::optional<client::SettingsEvent> answer;
  Status why;
  const uint64_t request = ss.client->RequestSettings();
  if (int rc = AwaitServerSettings(ss, request, timeout, /*fallback=*/false, &answer, &why);
      rc >= 0) {
    return rc;
  }
  ss.client->Stop();
  const auto rec = ss.client->LocalSettings();
  json j = {{"event", "blocked_list"}, {"users", answer->blocked}};
  if (!rec.pending_block.empty()) j["pending_block"] = rec.pending_block;
  if (!rec.pending_unblock.empty()) j["pending_unblock"] = rec.pending_unblock;
  std::string text =
      answer->blocked.empty() ? "you block nobody" : "you block: " + UserList(answer->blocked);
  if (!rec.pending_block.empty() || !rec.pending_unblock.empty()) {
    text += "\n(changes not confirmed by the server yet:" +
            (rec.pending_block.empty() ? "" : " block " + UserList(rec.pending_block)) +
            (rec.pending_unblock.empty() ? "" : " unblock " + UserList(rec.pending_unblock)) + ")";
  }
  Out(j, text);
  return kExitOk;
}

// iris history: pages the server's archive (HISTORY, newest first) until `limit` messages
// (from `peer`, 0 = anyone) were found or the archive ends; prints them oldest first.
int CmdHistory(const std::string& dir, uint64_t peer, uint64_t before, uint32_t limit,
               double timeout) {
  auto cfg = LoadOrExplain(dir);
  if (!cfg.ok()) return LocalError(cfg.status());
  auto s = OpenSession(dir, *cfg);
  if (!s.ok()) return LocalError(s.status());
  Session& ss = **s;
  std::vector<client::HistoryMessage> found;
  bool more = true;
  uint64_t next = before;
  // A page the size of what is left to find (for one peer: whole pages, most are others').
  auto ask = [&] {
    const uint32_t want = static_cast<uint32_t>(limit - found.size());
    return ss.client->RequestHistory(next, peer == 0 ? std::min<uint32_t>(want, 1000) : 256);
  };
  uint64_t waiting = ask();
  int rc = RunUntilSettled(
      ss, timeout, "reading the archive",
      [&](const Event& e) {
        if (const auto* f = std::get_if<client::RequestFailedEvent>(&e);
            f != nullptr && f->what == "history" && f->request == waiting) {
          std::cerr << "iris: history: " << Explain(f->status, ss.cfg) << std::endl;
          return kExitConnect;
        }
        if (const auto* h = std::get_if<client::HistoryEvent>(&e); h != nullptr) {
          if (h->request != waiting) return -1;
          for (const auto& m : h->messages) {
            if (peer != 0 && (m.sent_to != 0 ? m.sent_to : m.sender) != peer) continue;
            if (found.size() == limit) {  // more than asked for: the rest is for --before
              more = true;
              next = found.back().id;
              waiting = 0;
              return -1;
            }
            found.push_back(m);
          }
          more = h->has_more;
          if (h->next_before != 0) next = h->next_before;
          // Stop at `limit`, or when the archive is done (an empty page ends it too).
          if (found.size() < limit && more && h->next_before != 0) {
            waiting = ask();
          } else {
            more = more && h->next_before != 0;
            waiting = 0;
          }
          return -1;
        }
        if (std::holds_alternative<client::ArchiveGapEvent>(e)) return -1;  // being read now
        PrintProblems(ss, e);
        return -1;
      },
      [&] { return waiting == 0; });
  // Settled() also waits for the HISTORY answers (in flight) and the receipts they queued.
  if (rc >= 0) return rc;
  ss.client->Stop();
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    const auto& m = *it;
    json j = {{"event", "message"}, {"id", m.id},
              {"from", m.sender},   {"sent_at_ms", m.sent_at_ms},
              {"text", m.text},     {"decrypted", m.decrypted},
              {"archived", true}};
    if (!m.decrypted) j["error"] = m.error;
    if (m.group_id != 0) j["group_id"] = m.group_id;
    if (m.sent_to != 0) {
      j["to"] = m.sent_to;
      j["outgoing"] = true;
      Out(j, "[" + Clock(m.sent_at_ms) + "] you -> " + std::to_string(m.sent_to) +
                 " (from another of your devices): " + m.text);
      continue;
    }
    Out(j, "[" + Clock(m.sent_at_ms) + "] " + std::to_string(m.sender) + ": " +
               (m.decrypted ? m.text
                            : "<cannot decrypt: " + m.error + ">" + TrustHint(m.error, m.sender)));
  }
  const std::string who = peer == 0 ? "--all" : std::to_string(peer);
  Out({{"event", "history"},
       {"count", found.size()},
       {"has_more", more},
       {"next_before", more ? next : 0}},
      std::to_string(found.size()) + " archived message(s)" +
          (more ? "; older ones: iris history " + who + " --before " + std::to_string(next)
                : "; that is the start of the archive"));
  return kExitOk;
}

int Main(int argc, char** argv) {
  CLI::App app{"iris: end-to-end encrypted messaging client for Iris servers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", iris::build_info::VersionLine("iris"));
  std::string home;
  app.add_option("--home", home, "state directory (default: $IRIS_HOME, else ~/.iris)");
  app.add_flag("--json", g_json, "print one JSON object per line (for scripts)");

  LoginArgs login;
  auto* cl = app.add_subcommand("login",
                                "save the server, its certificate pin and your token; "
                                "publish your encryption keys");
  cl->add_option("--server", login.server, "server address HOST:PORT")->required();
  cl->add_option("--pin", login.pin,
                 "the server's public key, pin-sha256:BASE64 (irisd prints it at start-up); "
                 "survives certificate renewals with the same key");
  cl->add_option("--fingerprint", login.fingerprint,
                 "older form: the SHA-256 fingerprint of the whole certificate (SHA256:..), "
                 "which changes at every renewal; --pin also accepts it");
  cl->add_option("--ca", login.ca, "CA certificate file that signed the server's certificate");
  cl->add_option("--token", login.token, "access token (JWT); see irisctl token");
  cl->add_option("--token-file", login.token_file,
                 "read the token from this file ('-': stdin), keeping it out of ps and the "
                 "shell history");
  cl->add_option("--prekeys", login.prekeys, "one-time prekeys to keep on the server")
      ->capture_default_str();
  cl->add_option("--timeout", login.timeout, "seconds")->capture_default_str();

  uint64_t send_to = 0;
  std::vector<std::string> send_words;
  double send_timeout = 20;
  bool no_wait = false;
  auto* cs =
      app.add_subcommand("send", "send an encrypted message (TEXT - reads lines from stdin)");
  cs->add_option("USER", send_to, "recipient user id")->required();
  cs->add_option("TEXT", send_words, "message text")->required();
  cs->add_option("--timeout", send_timeout, "seconds to wait for the server's acknowledgement")
      ->capture_default_str();
  cs->add_flag("--no-wait", no_wait, "queue only; a later iris command delivers it");

  double sync_timeout = 20;
  auto* cy = app.add_subcommand("sync", "catch up, deliver queued sends, print new messages");
  cy->add_option("--timeout", sync_timeout, "seconds")->capture_default_str();

  auto* li = app.add_subcommand("listen",
                                "print messages, receipts, presence and typing as they "
                                "arrive (Ctrl-C stops)");
  std::vector<uint64_t> listen_presence;
  li->add_option("--presence", listen_presence, "also watch these users' presence");

  std::vector<uint64_t> presence_users;
  bool watch = false;
  double presence_timeout = 10;
  auto* cp = app.add_subcommand("presence", "show whether users are online");
  cp->add_option("USER", presence_users, "user ids")->required();
  cp->add_flag("--watch", watch, "keep printing changes");
  cp->add_option("--timeout", presence_timeout, "seconds")->capture_default_str();

  uint64_t chat_peer = 0;
  double chat_drain = 20;
  auto* cc = app.add_subcommand("chat",
                                "interactive end-to-end encrypted chat with typing "
                                "indicators (/quit or Ctrl-D leaves)");
  cc->add_option("USER", chat_peer, "the other user's id");
  cc->add_option("--timeout", chat_drain, "seconds to wait for unsent messages when leaving")
      ->capture_default_str();

  auto* st = app.add_subcommand("status", "show the saved login, identity and queued messages");
  uint64_t trust_user = 0;
  std::vector<std::string> trust_fingerprint;
  auto* ct = app.add_subcommand(
      "trust", "accept exactly this new identity key of a verified user (after they re-installed)");
  ct->add_option("USER", trust_user, "user id")->required();
  ct->add_option("FINGERPRINT", trust_fingerprint,
                 "the new key's fingerprint or safety number (iris verify USER shows both)");

  uint64_t verify_user = 0;
  bool verify_mark = false;
  auto* cv = app.add_subcommand(
      "verify", "show the safety number with a user (compare it out of band); --mark records it");
  cv->add_option("USER", verify_user, "user id")->required();
  cv->add_flag("--mark", verify_mark, "mark the user's current identity key as verified");

  uint64_t read_peer = 0;
  std::vector<uint64_t> read_ids;
  double read_timeout = 20;
  auto* cr = app.add_subcommand(
      "read",
      "mark messages from a user read (READ receipts); default: every message from "
      "USER shown so far");
  cr->add_option("USER", read_peer, "the sender's user id")->required();
  cr->add_option("MESSAGE_ID", read_ids, "only these messages");
  cr->add_option("--timeout", read_timeout, "seconds")->capture_default_str();

  std::string set_read_receipts, set_presence, set_group_invites;
  double settings_timeout = 20;
  auto* cg = app.add_subcommand(
      "settings",
      "show or change read receipts, presence sharing and who may add you to groups (no "
      "option: show the server's copy)");
  cg->add_option("--read-receipts", set_read_receipts,
                 "on|off: off sends no READ receipts and shows none (both ways)");
  cg->add_option("--presence", set_presence, "on|off: off makes you appear offline to others");
  cg->add_option("--group-invites", set_group_invites,
                 "everyone|contacts: contacts lets only users you have sent a message to add "
                 "you to groups");
  cg->add_option("--timeout", settings_timeout, "seconds")->capture_default_str();

  uint64_t block_user = 0;
  double block_timeout = 20;
  auto* cb = app.add_subcommand(
      "block", "block a user: the server refuses their messages and group invitations to you");
  cb->add_option("USER", block_user, "user id")->required();
  cb->add_option("--timeout", block_timeout, "seconds")->capture_default_str();
  auto* cu = app.add_subcommand("unblock", "unblock a user");
  cu->add_option("USER", block_user, "user id")->required();
  cu->add_option("--timeout", block_timeout, "seconds")->capture_default_str();
  auto* cbl = app.add_subcommand("blocked", "list the users you block (the server's list)");
  cbl->add_option("--timeout", block_timeout, "seconds")->capture_default_str();

  uint64_t history_peer = 0;
  bool history_all = false;
  uint64_t history_before = 0;
  uint32_t history_limit = 50;
  double history_timeout = 30;
  auto* ch = app.add_subcommand(
      "history", "read the server's archive (messages older than the newest ones sync serves)");
  ch->add_option("USER", history_peer, "only messages from this user");
  ch->add_flag("--all", history_all, "messages from everyone");
  ch->add_option("--before", history_before, "only messages older than this message id");
  ch->add_option("--limit", history_limit, "at most this many messages")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  ch->add_option("--timeout", history_timeout, "seconds")->capture_default_str();

  auto* gr = app.add_subcommand("group", "end-to-end encrypted groups");
  gr->require_subcommand(1);
  double group_timeout = 20;
  gr->add_option("--timeout", group_timeout, "seconds")->capture_default_str();
  std::string group_name;
  std::vector<uint64_t> group_users;
  std::vector<std::string> group_words;
  auto* gc = gr->add_subcommand("create", "create a group (you own it) with these members");
  gc->add_option("NAME", group_name, "a name for it (kept on this device only)")->required();
  gc->add_option("MEMBER", group_users, "member user ids");
  auto* ga = gr->add_subcommand("add", "add members (owner only)");
  ga->add_option("GROUP", group_name, "group id or name")->required();
  ga->add_option("USER", group_users, "user ids")->required();
  auto* gm = gr->add_subcommand("remove", "remove members (owner only); the others rotate keys");
  gm->add_option("GROUP", group_name, "group id or name")->required();
  gm->add_option("USER", group_users, "user ids")->required();
  auto* gl = gr->add_subcommand("leave", "leave a group");
  gl->add_option("GROUP", group_name, "group id or name")->required();
  auto* gi = gr->add_subcommand("list", "the groups this device knows of (after a sync)");
  auto* gs = gr->add_subcommand("send", "send an encrypted message to a group");
  gs->add_option("GROUP", group_name, "group id or name")->required();
  gs->add_option("TEXT", group_words, "message text")->required();
  std::string chat_group;
  cc->add_option("--group", chat_group, "chat in this group (id or name) instead");

  auto* dv = app.add_subcommand(
      "devices", "this account's devices: a new device shows a code, the primary device links it");
  dv->require_subcommand(1);
  double devices_timeout = 20;
  dv->add_option("--timeout", devices_timeout, "seconds")->capture_default_str();
  auto* dcode = dv->add_subcommand(
      "code",
      "on a new device (logged in with a token for device 2..63): show the code to link it");
  std::string link_code;
  auto* dlink =
      dv->add_subcommand("link", "on the primary device: link the device that showed CODE");
  dlink->add_option("CODE", link_code, "the code iris devices code printed (iris-link:1:...)")
      ->required();
  auto* dlist = dv->add_subcommand("list", "this account's devices (the server's signed list)");
  uint64_t remove_device = 0;
  auto* drm = dv->add_subcommand(
      "remove", "on the primary device: remove a linked device (its sessions end, its keys go)");
  drm->add_option("DEVICE", remove_device, "device id (2..63)")->required();
  for (auto* sub : {dcode, dlink, dlist, drm}) {
    sub->add_option("--timeout", devices_timeout, "seconds")->capture_default_str();
  }

  CLI11_PARSE(app, argc, argv);
  const std::string dir = StateDir(home);
  StartSignalThread();
  if (cl->parsed()) return CmdLogin(dir, login);
  if (cs->parsed()) return CmdSend(dir, send_to, send_words, send_timeout, no_wait);
  if (cy->parsed()) return CmdSync(dir, sync_timeout);
  if (li->parsed()) return CmdListen(dir, listen_presence);
  if (cp->parsed()) return CmdPresence(dir, presence_users, watch, presence_timeout);
  if (cc->parsed()) return CmdChat(dir, chat_peer, chat_group, chat_drain);
  if (gc->parsed()) return CmdGroupCreate(dir, group_name, group_users, group_timeout);
  if (ga->parsed()) return CmdGroupUpdate(dir, group_name, group_users, {}, false, group_timeout);
  if (gm->parsed()) return CmdGroupUpdate(dir, group_name, {}, group_users, false, group_timeout);
  if (gl->parsed()) return CmdGroupUpdate(dir, group_name, {}, {}, true, group_timeout);
  if (gi->parsed()) return CmdGroupList(dir, group_timeout);
  if (gs->parsed()) return CmdGroupSend(dir, group_name, group_words, group_timeout);
  if (dcode->parsed()) return CmdDevicesCode(dir, devices_timeout);
  if (dlink->parsed()) return CmdDevicesLink(dir, link_code, devices_timeout);
  if (dlist->parsed()) return CmdDevicesList(dir, devices_timeout);
  if (drm->parsed()) return CmdDevicesRemove(dir, remove_device, devices_timeout);
  if (st->parsed()) return CmdStatus(dir);
  if (ct->parsed()) return CmdTrust(dir, trust_user, trust_fingerprint);
  if (cv->parsed()) return CmdVerify(dir, verify_user, verify_mark);
  if (cr->parsed()) return CmdRead(dir, read_peer, read_ids, read_timeout);
  if (cg->parsed()) {
    return CmdSettings(dir, set_read_receipts, set_presence, set_group_invites, settings_timeout);
  }
  if (cb->parsed()) return CmdBlock(dir, block_user, true, block_timeout);
  if (cu->parsed()) return CmdBlock(dir, block_user, false, block_timeout);
  if (cbl->parsed()) return CmdBlocked(dir, block_timeout);
  if (ch->parsed()) {
    if ((history_peer != 0) == history_all) {
      std::cerr << "iris: history: name one user (iris history USER) or --all" << std::endl;
      return kExitLocal;
    }
    return CmdHistory(dir, history_peer, history_before, history_limit, history_timeout);
  }
  return kExitLocal;
}

}  // namespace
}  // namespace iris::cli

int main(int argc, char** argv) { return iris::cli::Main(argc, argv); }
