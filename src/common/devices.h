#pragma once
// Devices of an account (docs/protocol.md appendix 20): ids, sets of ids, and the
// MISMATCHED_DEVICES answer.
//
// A device id is 1..kMaxDeviceId; device 1 is the primary device (a token without a `dev`
// claim names it). A set of device ids is a 64-bit mask, bit d for device d.
//
// Pure functions; thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace iris {

inline constexpr uint32_t kPrimaryDevice = 1;
inline constexpr uint32_t kMaxDeviceId = 63;
// Device 1 and at most 4 linked devices (RFC-001: a primary and up to 4 linked devices).
inline constexpr size_t kMaxDevices = 5;

using DeviceMask = uint64_t;
inline constexpr DeviceMask DeviceBit(uint32_t device) {
  return device >= 1 && device <= kMaxDeviceId ? DeviceMask{1} << device : 0;
}
inline constexpr bool HasDevice(DeviceMask mask, uint32_t device) {
  return (mask & DeviceBit(device)) != 0;
}
// The ids in `mask`, ascending.
std::vector<uint32_t> DeviceIds(DeviceMask mask);

// Whether an envelope addressed to `recipient_device` (0 = every device) is for `device`.
inline constexpr bool ForDevice(uint32_t recipient_device, uint32_t device) {
  return recipient_device == 0 || recipient_device == device;
}

// MISMATCHED_DEVICES: a SEND's copies do not match the recipient's devices. The lists
// travel in the message, in a fixed form ("devices changed; missing: 2 3; extra: 4"), so
// that the status crosses process and node links unchanged; ParseMismatchedDevices reads
// them back for the client's ERROR frame.
Status MismatchedDevices(DeviceMask missing, DeviceMask extra);
// The missing and extra devices of a MISMATCHED_DEVICES status; false for any other status
// or a message not in that form.
bool ParseMismatchedDevices(const Status& s, std::vector<uint32_t>* missing,
                            std::vector<uint32_t>* extra);

}  // namespace iris
