#pragma once
// IrisdProcess: an irisd started by iris-bench (--spawn-irisd) on loopback with ephemeral
// ports and a temporary data directory, with the limits that would throttle a load test
// raised (per-user send rate 1,000,000/s with bursts of 2,000,000/s, per-IP connection rate
// exempted for 127.0.0.0/8). Its banner gives the port; its certificate and token secret are in the
// data directory.
//
// Thread-safety: single-threaded use.

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace iris::bench {

class IrisdProcess {
 public:
  IrisdProcess() = default;
  ~IrisdProcess();
  IrisdProcess(const IrisdProcess&) = delete;
  IrisdProcess& operator=(const IrisdProcess&) = delete;

  // Starts `binary` and waits up to 30 s for its banner. stderr goes to <data-dir>/irisd.log.
  Status Start(const std::string& binary, int loops, const std::vector<std::string>& extra_args);
  // SIGTERM, then waits (SIGKILL after 10 s). Removes the data directory unless `keep`.
  // Returns the exit status as waitpid reports it.
  int Stop(bool keep);

  pid_t pid() const { return pid_; }
  uint16_t port() const { return port_; }
  const std::string& data_dir() const { return data_dir_; }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  uint16_t port_ = 0;
  std::string data_dir_;
};

}  // namespace iris::bench
