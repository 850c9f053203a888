// irisd: parses the configuration, starts the node, waits for SIGTERM/SIGINT, stops
// gracefully (no acknowledged write is lost). SIGHUP reloads the TLS certificate and key.
//
// No signal handler runs: the signals are blocked in every thread and this thread takes
// them with sigtimedwait, so a reload's file reads happen here, never on an event loop.

#include <google/protobuf/stubs/logging.h>
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <string_view>

#include "iris_build_info.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "server/config.h"
#include "server/server.h"

int main(int argc, char** argv) {
  // Protobuf logs every unparsable string field it meets; clients control that input, so the
  // log must not be theirs to flood (parse failures are answered BAD_REQUEST and counted).
  google::protobuf::SetLogHandler(nullptr);
  std::string help;
  auto config = iris::server::ParseConfig(argc, argv, &help);
  if (!help.empty()) {
    std::cout << help;
    return 0;
  }
  if (!config.ok()) {
    // --check-config answers a person (or a script's exit code): plain text on stderr.
    for (int i = 1; i < argc; ++i) {
      if (std::string_view(argv[i]).starts_with("--check-config")) {
        std::cerr << "irisd: invalid configuration: " << config.status().message() << "\n";
        return 2;
      }
    }
    iris::obs::LogError("invalid configuration", {{"error", config.status().message()}});
    return 2;
  }
  // Once per node: edge processes leave it to the process that merges their scrapes (a
  // gauge summed over N+1 processes would not read 1).
  if (config->role != "edge-process") {
    iris::obs::Registry::Default()
        .GetGauge("iris_build_info", "The running build: version and git commit (always 1)",
                  {{"version", iris::build_info::kVersion}, {"commit", iris::build_info::kCommit}})
        .Set(1);
  }
  // Block the shutdown signals in every thread; main waits for them with sigwait.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = iris::server::Server::Create(*config);
  if (!server.ok() && server.status().code() == iris::StatusCode::kDataLoss) {
    // A replicated cluster node whose data lost durable writes or is damaged (Create says so
    // only when --rebuild-lost-data allows it): set it aside and start empty; the other
    // replicas rebuild this one, and it does not vote until they have (docs/replication.md).
    auto moved = iris::server::Server::SetAsideLostData(*config);
    if (!moved.ok()) {
      iris::obs::LogError(
          "cannot set the damaged data aside",
          {{"error", server.status().ToString()}, {"move", moved.status().ToString()}});
      return 1;
    }
    iris::obs::LogError(
        "this node's data lost writes it had made durable, or is damaged: moved "
        "it aside and starting empty, to be rebuilt from the other replicas",
        {{"error", server.status().ToString()}, {"moved_to", *moved}});
    server = iris::server::Server::Create(*config);
  }
  if (!server.ok()) {
    iris::obs::LogError("cannot create the server", {{"error", server.status().ToString()}});
    return 1;
  }
  iris::Status s = (*server)->Start();
  if (!s.ok()) {
    iris::obs::LogError("cannot start the server", {{"error", s.ToString()}});
    return 1;
  }
  if (config->role != "edge-process") std::cout << (*server)->Banner() << std::flush;
  int sig = 0;
  for (;;) {
    timespec tick{1, 0};
    sig = sigtimedwait(&set, nullptr, &tick);
    if (sig == SIGHUP) {
      (*server)->ReloadTls();
      continue;
    }
    if (sig > 0) break;
    (*server)->Supervise();  // restarts edge processes that died (--edge-processes)
  }
  iris::obs::LogInfo("shutting down", {{"signal", sig}});
  (*server)->Stop();
  return 0;
}
