#include "common/devices.h"

#include <charconv>
#include <string_view>

namespace iris {

std::vector<uint32_t> DeviceIds(DeviceMask mask) {
  std::vector<uint32_t> out;
  for (uint32_t d = 1; d <= kMaxDeviceId; ++d) {
    if (HasDevice(mask, d)) out.push_back(d);
  }
  return out;
}

namespace {

constexpr std::string_view kPrefix = "devices changed; missing:";
constexpr std::string_view kExtra = "; extra:";

void AppendIds(std::string* out, DeviceMask mask) {
  for (uint32_t d : DeviceIds(mask)) {
    out->push_back(' ');
    out->append(std::to_string(d));
  }
}

// Space-separated ids in [from, to); false on anything else.
bool ReadIds(std::string_view text, std::vector<uint32_t>* out) {
  out->clear();
  size_t at = 0;
  while (at < text.size()) {
    if (text[at] != ' ') return false;
    ++at;
    uint32_t v = 0;
    const auto [end, ec] = std::from_chars(text.data() + at, text.data() + text.size(), v);
    if (ec != std::errc() || v == 0 || v > kMaxDeviceId) return false;
    out->push_back(v);
    at = static_cast<size_t>(end - text.data());
  }
  return true;
}

}  // namespace

Status MismatchedDevices(DeviceMask missing, DeviceMask extra) {
  std::string m(kPrefix);
  AppendIds(&m, missing);
  m.append(kExtra);
  AppendIds(&m, extra);
  return Status(StatusCode::kMismatchedDevices, std::move(m));
}

bool ParseMismatchedDevices(const Status& s, std::vector<uint32_t>* missing,
                            std::vector<uint32_t>* extra) {
  if (s.code() != StatusCode::kMismatchedDevices) return false;
  std::string_view m = s.message();
  if (!m.starts_with(kPrefix)) return false;
  m.remove_prefix(kPrefix.size());
  const size_t split = m.find(kExtra);
  if (split == std::string_view::npos) return false;
  return ReadIds(m.substr(0, split), missing) && ReadIds(m.substr(split + kExtra.size()), extra);
}

}  // namespace iris
