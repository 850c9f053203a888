// irisd: parses the configuration, starts the node, waits for SIGTERM/SIGINT, stops
// gracefully (no acknowledged write is lost).

#include <signal.h>

#include <cstdio>
#include <iostream>

#include "server/config.h"
#include "server/server.h"

int main(int argc, char** argv) {
  std::string help;
  auto config = iris::server::ParseConfig(argc, argv, &help);
  if (!help.empty()) {
    std::cout << help;
    return 0;
  }
  if (!config.ok()) {
    std::cerr << "irisd: " << config.status().message() << "\n";
    return 2;
  }
  // Block the shutdown signals in every thread; main waits for them with sigwait.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = iris::server::Server::Create(*config);
  if (!server.ok()) {
    std::cerr << "irisd: " << server.status().ToString() << "\n";
    return 1;
  }
  iris::Status s = (*server)->Start();
  if (!s.ok()) {
    std::cerr << "irisd: " << s.ToString() << "\n";
    return 1;
  }
  std::cout << (*server)->Banner() << std::flush;
  int sig = 0;
  sigwait(&set, &sig);
  std::cerr << "irisd: signal " << sig << ", shutting down\n";
  (*server)->Stop();
  std::cerr << "irisd: stopped\n";
  return 0;
}
