#pragma once
// Start-up checks of irisd's data directory that turn a bare errno into an instruction:
// who irisd runs as, who owns the directory, and which other irisd holds it.

#include <string>

#include "common/status.h"

namespace iris::server {

// "irisd runs as uid 65534 (nobody); /var/lib/iris is owned by uid 0 (root), mode 0700":
// what an operator needs to fix a permission error on `path`. Never fails (unknown parts
// are left out).
std::string DescribeAccess(const std::string& path);

// OK when this process can create (and remove) a file in the existing directory `dir`;
// otherwise BAD_REQUEST "data directory D is not writable: <errno text> (<DescribeAccess>);
// ...what to do". Leaves nothing behind.
Status CheckDataDirWritable(const std::string& dir);

// Called after the store under `data_dir` failed to open with `open_error`: when its RocksDB
// LOCK file (`lock_file`) is held by another process, UNAVAILABLE "data directory D is in
// use by another irisd (pid N) ..." (the holder is found with F_GETLK; "pid unknown" when
// the kernel does not say); otherwise `open_error` unchanged.
// Precondition: this process does not hold the lock itself (closing our descriptor of the
// file would release it).
Status ExplainStoreOpenError(const std::string& data_dir, const std::string& lock_file,
                             const Status& open_error);

}  // namespace iris::server
