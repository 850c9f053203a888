#pragma once
// The replication messages (replica.h) on the peer links: conversion to and from the
// internal protobuf (proto/iris/v1/internal.proto, ReplicationMessage), which travels as a
// one-way CoreRequest (rpc::RemoteCore::SendReplication; rpc::CoreServer hands what arrives
// to its replication handler with the link's authenticated node as the sender).

#include <utility>

#include "cluster/replication/rebuild.h"
#include "cluster/replication/replica.h"
#include "common/status.h"
#include "iris/v1/internal.pb.h"

namespace iris::cluster::repl {

void ToProto(ShardNo shard, const Message& message, internal::v1::ReplicationMessage* out);
// BAD_REQUEST for a message without a body (a newer sender's kind this build does not know).
// A rebuild transfer (rebuild.h) is not a protocol message: BAD_REQUEST too (see IsTransfer).
Result<std::pair<ShardNo, Message>> FromProto(const internal::v1::ReplicationMessage& in);

// Rebuild transfers travel in the same envelope.
void ToProto(ShardNo shard, const Transfer& transfer, internal::v1::ReplicationMessage* out);
bool IsTransfer(const internal::v1::ReplicationMessage& in);
Transfer TransferFromProto(const internal::v1::ReplicationMessage& in);  // if IsTransfer(in)

}  // namespace iris::cluster::repl
