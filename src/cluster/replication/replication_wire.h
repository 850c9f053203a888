#pragma once
// The replication messages (replica.h) on the peer links: conversion to and from the
// internal protobuf (proto/iris/v1/internal.proto, ReplicationMessage), which travels as a
// one-way CoreRequest (rpc::RemoteCore::SendReplication; rpc::CoreServer hands what arrives
// to its replication handler with the link's authenticated node as the sender).

#include <utility>

#include "cluster/replication/replica.h"
#include "common/status.h"
#include "iris/v1/internal.pb.h"

namespace iris::cluster::repl {

void ToProto(ShardNo shard, const Message& message, internal::v1::ReplicationMessage* out);
// BAD_REQUEST for a message without a body (a newer sender's kind this build does not know).
Result<std::pair<ShardNo, Message>> FromProto(const internal::v1::ReplicationMessage& in);

}  // namespace iris::cluster::repl
