#pragma once
// Runs the `iris` CLI binary as a child process for integration tests: one-shot runs with
// captured output, and long-running children (listen, chat, send -) whose JSON-lines
// output is read with a deadline. Waiting is always on pipes (poll) or waitpid.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace iris::testing {

struct CliResult {
  int exit_code = -1;  // -1 when killed by a signal or timed out
  std::string out;
  std::string err;
  // stdout parsed as JSON lines (lines that do not parse are skipped).
  std::vector<nlohmann::json> Json() const;
};

std::string IrisBinary();

// A private temporary directory (homes for CLI runs), removed with everything in it.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Runs `iris --home home args...` to completion (killed after timeout_ms), feeding `input`.
CliResult RunIris(const std::string& home, const std::vector<std::string>& args,
                  const std::string& input = "", int timeout_ms = 30'000);

class IrisChild {
 public:
  IrisChild(const std::string& home, const std::vector<std::string>& args);
  ~IrisChild();  // SIGKILL if still running

  void WriteLine(const std::string& line);
  void CloseStdin();
  // Reads stdout JSON lines until `pred` holds for one (returned) or the deadline passes
  // (null json). Every line read is kept in lines().
  nlohmann::json WaitFor(const std::function<bool(const nlohmann::json&)>& pred,
                         int timeout_ms = 20'000);
  // Sends `sig` and reaps the process; returns the exit code (-1 for a signal death).
  int Kill(int sig);
  // Waits for exit (SIGKILL after timeout_ms); returns the exit code.
  int Wait(int timeout_ms = 20'000);
  const std::vector<nlohmann::json>& lines() const { return lines_; }
  const std::string& err() const { return err_; }
  pid_t pid() const { return pid_; }

 private:
  void Pump(int timeout_ms);
  pid_t pid_ = -1;
  int in_fd_ = -1, out_fd_ = -1, err_fd_ = -1;
  std::string out_buf_, err_;
  std::vector<nlohmann::json> lines_;
  size_t next_line_ = 0;
};

}  // namespace iris::testing
