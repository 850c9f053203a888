// iris-consumer: two users on one server through the installed client library only
// ("iris/client/client.h"). Bob connects and publishes his keys; Alice sends him one
// end-to-end encrypted message; the program prints "ok" once the server acknowledged it and
// Bob stored it decrypted, and exits 0. Exit 1 with the reason on stderr on any failure or
// after 60 s; exit 2 for bad arguments.
//
// usage: iris-consumer HOST PORT CA_FILE STATE_DIR BOB_ID ALICE_TOKEN BOB_TOKEN

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <variant>

#include "iris/client/client.h"

namespace {

using iris::client::Client;
using iris::client::ClientOptions;
using iris::client::Event;

constexpr char kText[] = "hello from a find_package(iris) consumer";

// Everything the two clients reported, under one mutex; waited on with a deadline.
struct Observed {
  std::mutex mu;
  std::condition_variable cv;
  bool bob_keys = false;
  bool acked = false;
  bool received = false;
  std::string failure;
};

std::unique_ptr<Client> OpenClient(const char* host, uint16_t port, const char* ca,
                                   const std::string& dir, const char* token,
                                   std::function<void(const Event&)> on_event) {
  ClientOptions o;
  o.state_dir = dir;
  o.server.host = host;
  o.server.port = port;
  o.server.ca_file = ca;
  o.token = token;
  o.client_name = "iris-consumer/1";
  o.on_event = std::move(on_event);
  auto c = Client::Open(std::move(o));
  if (!c.ok()) {
    std::fprintf(stderr, "iris-consumer: cannot open %s: %s\n", dir.c_str(),
                 c.status().ToString().c_str());
    return nullptr;
  }
  return std::move(c).value();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr,
                 "usage: iris-consumer HOST PORT CA_FILE STATE_DIR BOB_ID ALICE_TOKEN BOB_TOKEN\n");
    return 2;
  }
  const char* host = argv[1];
  const unsigned long port = std::strtoul(argv[2], nullptr, 10);
  const char* ca = argv[3];
  const std::string state = argv[4];
  const uint64_t bob_id = std::strtoull(argv[5], nullptr, 10);
  if (port == 0 || port > 65535 || bob_id == 0) {
    std::fprintf(stderr, "iris-consumer: PORT must be 1..65535 and BOB_ID a user id > 0\n");
    return 2;
  }

  Observed seen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  // Waits until pred() holds (true) or the deadline passes (false).
  auto wait = [&](const std::function<bool()>& pred) {
    std::unique_lock<std::mutex> lock(seen.mu);
    return seen.cv.wait_until(lock, deadline, [&] { return pred() || !seen.failure.empty(); }) &&
           seen.failure.empty();
  };

  auto bob = OpenClient(host, static_cast<uint16_t>(port), ca, state + "/bob", argv[7],
                        [&](const Event& e) {
                          std::lock_guard<std::mutex> lock(seen.mu);
                          if (std::holds_alternative<iris::client::KeysUploadedEvent>(e)) {
                            seen.bob_keys = true;
                          } else if (const auto* m = std::get_if<iris::client::MessageEvent>(&e)) {
                            if (!m->decrypted) seen.failure = "bob could not decrypt: " + m->error;
                            if (m->text == kText) seen.received = true;
                          }
                          seen.cv.notify_all();
                        });
  auto alice = OpenClient(
      host, static_cast<uint16_t>(port), ca, state + "/alice", argv[6], [&](const Event& e) {
        std::lock_guard<std::mutex> lock(seen.mu);
        if (const auto* a = std::get_if<iris::client::SendAckedEvent>(&e)) {
          if (!a->receipt) seen.acked = true;
        } else if (const auto* f = std::get_if<iris::client::SendFailedEvent>(&e)) {
          if (f->permanent) seen.failure = f->status.ToString();
        } else if (const auto* s = std::get_if<iris::client::StateEvent>(&e)) {
          if (s->state == iris::client::SessionState::kFailed) {
            seen.failure = "alice: " + s->status.ToString();
          }
        }
        seen.cv.notify_all();
      });
  if (bob == nullptr || alice == nullptr) return 1;

  bob->Start();
  // Bob's keys must be on the server before Alice can start a session with him (his state
  // directory is new: the first connection uploads them).
  if (!wait([&] { return seen.bob_keys; })) {
    std::fprintf(stderr, "iris-consumer: bob's keys were not published (%s)\n",
                 seen.failure.c_str());
    return 1;
  }
  alice->Start();
  auto id = alice->Send(bob_id, kText);
  if (!id.ok()) {
    std::fprintf(stderr, "iris-consumer: Send: %s\n", id.status().ToString().c_str());
    return 1;
  }
  if (!wait([&] { return seen.acked && seen.received; })) {
    std::fprintf(stderr, "iris-consumer: no delivery within 60 s (acked %d, received %d) %s\n",
                 seen.acked, seen.received, seen.failure.c_str());
    return 1;
  }
  alice->Stop();
  bob->Stop();
  std::printf("ok\n");
  return 0;
}
