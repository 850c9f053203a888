#pragma once
// The admin API's lifecycle routes (docs/operations.md, "Backup and restore", "Account
// deletion and archive retention"):
//   POST /v1/backup       {"to": DIR}   an online backup of the node's store (store/backup.h)
//   POST /v1/delete-user  {"user": N}   revokes the user's tokens, then deletes their data
// Both need the admin bearer token, are validated on the admin server's thread and run on
// `worker` (never on the admin poll loop: they wait for the disk), answering through the
// request's HttpResponder when done. One backup runs at a time (another is answered 409).
//
// Thread-safety: AddLifecycleRoutes() before the admin server starts; the routes' state is
// shared with the jobs they post and lives as long as either.

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "net/http/http_server.h"
#include "server/admin_worker.h"
#include "store/inbox_store.h"

namespace iris::server {

struct LifecycleRoutesOptions {
  std::string admin_token;
  store::InboxStore* store = nullptr;  // nullptr: a node that stores nothing (both refused)
  uint32_t node_id = 0;
  std::string backup_dir;  // relative backup targets go here
  // Copied into each backup besides the store (the generated secrets): path -> name.
  std::vector<std::pair<std::string, std::string>> backup_extra_files;
  // Stores and applies a revocation of every token of `user` issued before `before_ms`
  // (the /v1/revoke path). Blocking; called on `worker`.
  std::function<Status(uint64_t user, int64_t before_ms)> revoke_user;
  AdminWorker* worker = nullptr;  // must outlive the admin server's routes' use
};

void AddLifecycleRoutes(net::http::HttpServer& admin, LifecycleRoutesOptions options);

// The HTTP status for a failed lifecycle operation: 400 for BAD_REQUEST and
// UNSUPPORTED_VERSION, 503 for UNAVAILABLE, 507 for STORAGE_FULL, 500 otherwise.
int HttpStatusOf(const Status& s);

}  // namespace iris::server
