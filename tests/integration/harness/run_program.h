#pragma once
// Runs a program to completion with its output captured, for tests of command-line tools
// (irisd --check-config, irisctl, ...).

#include <string>
#include <vector>

namespace iris::testing {

// Runs `argv` (argv[0] is the path) with stdout and stderr captured into *output, as
// `run_as_uid` when it is not -1 (the caller must be root); returns the exit code, or -1
// when it did not exit within `timeout_ms` (it is then killed) or could not be run.
int RunProgram(std::vector<std::string> argv, std::string* output, int timeout_ms = 60'000,
               int run_as_uid = -1);

}  // namespace iris::testing
