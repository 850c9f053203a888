#include "cli_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "auth/base64url.h"

namespace iris::cli {
namespace {

std::string ReadAll(const std::string& path, bool* found) {
  std::ifstream in(path);
  *found = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes via a temporary file and rename, mode 0600 (the file may hold a bearer token);
// `durable` adds an fsync before the rename.
Status WriteFileAtomic(const std::string& path, const std::string& data, bool durable = true) {
  const std::string tmp = path + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Internal("cannot write " + tmp);
  const bool ok = write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) &&
                  (!durable || fsync(fd) == 0);
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) return Internal("cannot write " + path);
  return Status::Ok();
}

}  // namespace

std::string StateDir(const std::string& home_flag) {
  if (!home_flag.empty()) return home_flag;
  if (const char* env = std::getenv("IRIS_HOME"); env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : ".") + "/.iris";
}

Result<CliConfig> LoadConfig(const std::string& dir) {
  bool found = false;
  const std::string text = ReadAll(dir + "/config.json", &found);
  if (!found) {
    return NotFound("not logged in (no " + dir +
                    "/config.json). Run: iris login --server HOST:PORT "
                    "(--pin pin-sha256:... | --ca FILE) --token TOKEN");
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return BadRequest(dir + "/config.json is not valid JSON");
  CliConfig c;
  c.server = j.value("server", "");
  c.ca_file = j.value("ca_file", "");
  c.fingerprint = j.value("fingerprint", "");
  c.pin = j.value("pin", "");
  c.token = j.value("token", "");
  c.prekeys = j.value("prekeys", 100u);
  return c;
}

Status SaveConfig(const std::string& dir, const CliConfig& c) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Internal("cannot create " + dir + ": " + ec.message());
  chmod(dir.c_str(), 0700);
  nlohmann::json j = {{"server", c.server}, {"ca_file", c.ca_file}, {"fingerprint", c.fingerprint},
                      {"pin", c.pin},       {"token", c.token},     {"prekeys", c.prekeys}};
  return WriteFileAtomic(dir + "/config.json", j.dump(2) + "\n");
}

Status SplitHostPort(const std::string& text, std::string* host, uint16_t* port) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    return BadRequest("server address must be HOST:PORT, got '" + text + "'");
  }
  std::string h = text.substr(0, colon);
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  char* end = nullptr;
  const long p = std::strtol(text.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || p <= 0 || p > 65535) return BadRequest("bad port in '" + text + "'");
  *host = h;
  *port = static_cast<uint16_t>(p);
  return Status::Ok();
}

std::optional<int64_t> TokenExpiry(const std::string& token) {
  const size_t a = token.find('.');
  const size_t b = a == std::string::npos ? a : token.find('.', a + 1);
  if (b == std::string::npos) return std::nullopt;
  auto payload = auth::Base64UrlDecode(std::string_view(token).substr(a + 1, b - a - 1));
  if (!payload) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(*payload, nullptr, false);
  if (!j.is_object() || !j.contains("exp") || !j["exp"].is_number()) return std::nullopt;
  return j["exp"].get<int64_t>();
}

uint64_t LoadShownCursor(const std::string& dir) {
  bool found = false;
  const std::string text = ReadAll(dir + "/shown_cursor", &found);
  return found ? std::strtoull(text.c_str(), nullptr, 10) : 0;
}

void SaveShownCursor(const std::string& dir, uint64_t id) {
  // Display state only (a crash re-prints a few messages): no fsync per message.
  WriteFileAtomic(dir + "/shown_cursor", std::to_string(id) + "\n", false).IgnoreError();
}

namespace {

std::map<uint64_t, uint64_t> LoadReadMarks(const std::string& dir) {
  bool found = false;
  std::istringstream in(ReadAll(dir + "/read_marks", &found));
  std::map<uint64_t, uint64_t> marks;
  uint64_t peer = 0, id = 0;
  while (in >> peer >> id) marks[peer] = id;
  return marks;
}

}  // namespace

uint64_t LoadReadMark(const std::string& dir, uint64_t peer) {
  const auto marks = LoadReadMarks(dir);
  auto it = marks.find(peer);
  return it == marks.end() ? 0 : it->second;
}

void SaveReadMark(const std::string& dir, uint64_t peer, uint64_t id) {
  auto marks = LoadReadMarks(dir);
  marks[peer] = std::max(marks[peer], id);
  std::string text;
  for (const auto& [p, i] : marks) text += std::to_string(p) + " " + std::to_string(i) + "\n";
  // Losing it re-sends READ receipts the peer already has: harmless, so no fsync.
  WriteFileAtomic(dir + "/read_marks", text, false).IgnoreError();
}

}  // namespace iris::cli
