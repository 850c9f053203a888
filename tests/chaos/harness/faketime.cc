#include "harness/faketime.h"

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace iris::chaos {
namespace {

std::string FindLibFaketime() {
  for (const char* p :
       {"/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return "";
}

}  // namespace

FaketimeIrisd::FaketimeIrisd(uint64_t only_node) {
  const std::string lib = FindLibFaketime();
  if (lib.empty()) {
    error_ = "libfaketime not found: install the faketime package";
    return;
  }
  const char* build = std::getenv("IRIS_BUILD_DIR");
  saved_build_ = build != nullptr ? build : ".";
  const std::filesystem::path real_build = std::filesystem::absolute(saved_build_);
  const std::string real_irisd = (real_build / "src/server/irisd").string();
  if (!std::filesystem::exists(real_irisd)) {
    error_ = "irisd not found at " + real_irisd;
    return;
  }
  char tmpl[] = "/tmp/iris-chaos-skew-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    error_ = "mkdtemp failed";
    return;
  }
  dir_ = tmpl;
  offset_file_ = dir_ + "/offset";
  strobe_file_ = dir_ + "/strobe";
  std::filesystem::create_directories(dir_ + "/src/server");
  std::error_code ec;
  std::filesystem::create_directory_symlink(real_build / "tools", dir_ + "/tools", ec);
  if (ec) {
    error_ = "cannot link " + (real_build / "tools").string() + ": " + ec.message();
    return;
  }
  const std::string wrapper = dir_ + "/src/server/irisd";
  {
    std::ofstream(offset_file_) << "0\n";
    std::ofstream(strobe_file_) << "+0\n";
    std::ofstream w(wrapper);
    w << "#!/bin/sh\n"
      << "off=$(cat '" << offset_file_ << "')\n";
    if (only_node != 0) {
      w << "case \" $* \" in\n"
        << "  *\" --node-id " << only_node << " \"*) ;;\n"
        << "  *) off=0 ;;\n"
        << "esac\n";
    }
    w << "if [ \"$off\" = strobe ]; then\n"
      << "  export LD_PRELOAD='" << lib << "' FAKETIME_TIMESTAMP_FILE='" << strobe_file_
      << "' FAKETIME_CACHE_DURATION=1 FAKETIME_DONT_FAKE_MONOTONIC=1\n"
      << "elif [ \"$off\" != 0 ]; then\n"
      << "  export LD_PRELOAD='" << lib << "' FAKETIME=\"$off\"\n"
      << "fi\n"
      << "exec '" << real_irisd << "' \"$@\"\n";
  }
  if (chmod(wrapper.c_str(), 0755) != 0) {
    error_ = "chmod " + wrapper + " failed";
    return;
  }
  setenv("IRIS_BUILD_DIR", dir_.c_str(), 1);
  active_ = true;
}

FaketimeIrisd::~FaketimeIrisd() {
  if (active_) setenv("IRIS_BUILD_DIR", saved_build_.c_str(), 1);
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

void FaketimeIrisd::SetMode(const std::string& mode) const {
  std::ofstream(offset_file_, std::ios::trunc) << mode << "\n";
}

void FaketimeIrisd::SetStrobe(int offset_s) const {
  const std::string tmp = strobe_file_ + ".tmp";
  std::ofstream(tmp, std::ios::trunc) << (offset_s >= 0 ? "+" : "") << offset_s << "\n";
  std::filesystem::rename(tmp, strobe_file_);
}

}  // namespace iris::chaos
