#pragma once
// irisd under libfaketime (issue 17, clock-skew nemeses). ServerProcess and LocalCluster run
// $IRIS_BUILD_DIR/src/server/irisd; FaketimeIrisd points IRIS_BUILD_DIR at a directory whose
// src/server/irisd is a script that execs the real irisd with LD_PRELOAD = libfaketime, as
// offset_file() says: "0" unfaked, "+30"/"-30" a fixed offset (FAKETIME, the `faketime -f`
// form), "strobe" the offset read from the strobe file (rewritten by SetStrobe while irisd
// runs; re-read every second; CLOCK_MONOTONIC left alone, as a real wall-clock step would).
// The directory's tools/ is the real build's, so irisctl is found as before.
//
// Construct it before any thread exists (setenv is not thread-safe); IRIS_BUILD_DIR is
// restored on destruction.

#include <cstdint>
#include <string>

namespace iris::chaos {

class FaketimeIrisd {
 public:
  // only_node != 0: only the irisd started with `--node-id only_node` is faked (a cluster
  // with one skewed node); every other runs unfaked.
  explicit FaketimeIrisd(uint64_t only_node = 0);
  ~FaketimeIrisd();
  FaketimeIrisd(const FaketimeIrisd&) = delete;
  FaketimeIrisd& operator=(const FaketimeIrisd&) = delete;

  // Empty when set up; else why not (no libfaketime, no irisd).
  const std::string& error() const { return error_; }
  // Writes offset_file() ("0", "+30", "-30", "strobe"): read when irisd next starts.
  void SetMode(const std::string& mode) const;
  // Replaces the strobe file atomically (libfaketime may read it at any moment).
  void SetStrobe(int offset_s) const;

 private:
  std::string error_;
  std::string saved_build_;
  std::string dir_;
  std::string offset_file_;
  std::string strobe_file_;
  bool active_ = false;
};

}  // namespace iris::chaos
