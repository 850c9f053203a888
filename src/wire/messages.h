#pragma once
// Per-opcode payload parsing for frames a client sends: the opcode selects the message
// type, the payload is parsed as proto3 (unknown fields ignored), then validated.
//
// DecodeClientFrame returns:
//   UNKNOWN_OPCODE  for an opcode not in the table (the frame is skipped, PROTOCOL.md §2);
//   BAD_REQUEST     for a server-to-client opcode sent by a client, a payload that does not
//                   parse, or a field that fails validation (or TOO_LARGE, see validate.h).
// A failed decode never throws and never reads past the payload.

#include <cstdint>
#include <string_view>
#include <variant>

#include "common/status.h"
#include "iris/v1/client.pb.h"
#include "wire/validate.h"

namespace iris::wire {

using ClientMessage =
    std::variant<v1::Hello, v1::Ping, v1::Pong, v1::Send, v1::DeliverAck, v1::Sync, v1::SyncAck,
                 v1::History, v1::Receipt, v1::Settings, v1::SettingsGet, v1::PresenceSubscribe,
                 v1::PresenceUnsubscribe, v1::PresenceQuery, v1::Typing, v1::KeysUpload,
                 v1::KeysFetch, v1::GroupCreate, v1::GroupUpdate, v1::GroupGet>;

Result<ClientMessage> DecodeClientFrame(uint8_t opcode, std::string_view payload,
                                        const ValidationLimits& limits = {});

// Reads field 1 (request_id, varint) from a protobuf payload without parsing the rest, so
// an error about an unparseable or invalid frame can still name its request. Follows
// protobuf's rules (the last top-level occurrence wins; fields inside groups and field 1
// with another wire type are skipped), so for every payload that parses it equals the
// parsed request_id. When the payload becomes unreadable, the id read before that point
// (0 when none). Reads at most `payload`; bounded by its length.
// Field 1 is request_id only for opcodes where CarriesRequestId() is true (for PING it is
// the nonce, for SYNC the cursor, ...): prefer the overload that takes the opcode.
uint64_t PeekRequestId(std::string_view payload);
// PeekRequestId(payload) for opcodes whose client message has a request_id; 0 otherwise.
uint64_t PeekRequestId(uint8_t opcode, std::string_view payload);
// Whether the client message of `opcode` has request_id as field 1.
bool CarriesRequestId(uint8_t opcode);

// The request_id of a decoded message (0 for messages that have none).
uint64_t RequestIdOf(const ClientMessage& m);

}  // namespace iris::wire
