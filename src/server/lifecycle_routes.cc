#include "server/lifecycle_routes.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <variant>

#include "common/clock.h"
#include "iris_build_info.h"
#include "obs/log.h"
#include "store/backup.h"

namespace iris::server {
namespace {

using net::http::HttpRequest;
using net::http::HttpResponder;
using net::http::HttpResponse;

// A backup copies and hashes the whole store: allow it long; the admin server answers 503
// past this while the backup carries on (its outcome is then only in the log).
constexpr std::chrono::milliseconds kBackupDeadline{6LL * 3600 * 1000};
constexpr std::chrono::milliseconds kDeleteUserDeadline{10LL * 60 * 1000};

HttpResponse Json(int status, const nlohmann::json& body) {
  return HttpResponse{status, "application/json", body.dump() + "\n"};
}

HttpResponse Error(int status, const std::string& message) {
  return Json(status, nlohmann::json{{"error", message}});
}

// The request's JSON object body, or the response to give (401, 400).
std::variant<nlohmann::json, HttpResponse> ParseAdminJson(const HttpRequest& req,
                                                          const std::string& admin_token) {
  if (!net::http::CheckBearer(req, admin_token)) return Error(401, "bad or missing admin token");
  nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) return Error(400, "body must be a JSON object");
  return body;
}

struct Shared {
  LifecycleRoutesOptions o;
  std::atomic<bool> backup_running{false};
};

}  // namespace

int HttpStatusOf(const Status& s) {
  switch (s.code()) {
    case StatusCode::kBadRequest:
    case StatusCode::kUnsupportedVersion: return 400;
    case StatusCode::kUnavailable: return 503;
    case StatusCode::kStorageFull: return 507;
    default: return 500;
  }
}

void AddLifecycleRoutes(net::http::HttpServer& admin, LifecycleRoutesOptions options) {
  auto shared = std::make_shared<Shared>();
  shared->o = std::move(options);

  admin.RouteDeferred(
      "POST", "/v1/backup",
      [shared](const HttpRequest& req, std::shared_ptr<HttpResponder> responder) {
        auto parsed = ParseAdminJson(req, shared->o.admin_token);
        if (auto* bad = std::get_if<HttpResponse>(&parsed)) {
          responder->Complete(std::move(*bad));
          return;
        }
        const nlohmann::json& body = std::get<nlohmann::json>(parsed);
        if (shared->o.store == nullptr) {
          responder->Complete(Error(400,
                                    "this node stores nothing (role edge): back up the "
                                    "storage nodes"));
          return;
        }
        if (!body.contains("to") || !body["to"].is_string()) {
          responder->Complete(Error(400, "give \"to\": the backup's directory"));
          return;
        }
        // Pure string work here; the disk is touched only on the worker.
        Result<std::string> target =
            store::ResolveBackupTarget(shared->o.backup_dir, body["to"].get<std::string>());
        if (!target.ok()) {
          responder->Complete(Error(400, target.status().message()));
          return;
        }
        if (shared->backup_running.exchange(true)) {
          responder->Complete(Error(409, "a backup is already running; retry when it is done"));
          return;
        }
        const std::string peer = req.peer;
        const bool queued = shared->o.worker->Post([shared, responder, to = *target, peer] {
          obs::LogInfo("backup started", {{"to", to}, {"requested_by", peer}});
          store::BackupRequest br;
          br.target = to;
          br.node_id = shared->o.node_id;
          br.irisd_version = build_info::kVersion;
          br.extra_files = shared->o.backup_extra_files;
          const auto start = std::chrono::steady_clock::now();
          Result<store::BackupManifest> m =
              store::CreateBackup(*shared->o.store, br, SystemClock::Instance());
          shared->backup_running = false;
          const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::steady_clock::now() - start)
                                 .count();
          if (!m.ok()) {
            obs::LogError("backup failed", {{"to", to}, {"error", m.status().ToString()}});
            responder->Complete(
                Error(HttpStatusOf(m.status()), "backup failed: " + m.status().message()));
            return;
          }
          obs::LogInfo("backup done", {{"to", to},
                                       {"files", m->files},
                                       {"bytes", m->bytes},
                                       {"last_id", m->last_id},
                                       {"duration_ms", ms}});
          nlohmann::json out = nlohmann::json::parse(m->ToJson());
          out["path"] = to;
          out["duration_ms"] = ms;
          responder->Complete(Json(200, out));
        });
        if (!queued) {
          shared->backup_running = false;
          responder->Complete(Error(503, "the admin worker is busy or stopping; retry"));
        }
      },
      kBackupDeadline);

  admin.RouteDeferred(
      "POST", "/v1/delete-user",
      [shared](const HttpRequest& req, std::shared_ptr<HttpResponder> responder) {
        auto parsed = ParseAdminJson(req, shared->o.admin_token);
        if (auto* bad = std::get_if<HttpResponse>(&parsed)) {
          responder->Complete(std::move(*bad));
          return;
        }
        const nlohmann::json& body = std::get<nlohmann::json>(parsed);
        if (!body.contains("user") || !body["user"].is_number_unsigned() ||
            body["user"].get<uint64_t>() == 0) {
          responder->Complete(Error(400, "user must be a non-zero integer"));
          return;
        }
        if (shared->o.store == nullptr) {
          responder->Complete(Error(400,
                                    "this node stores nothing (role edge): delete the "
                                    "user on the storage nodes"));
          return;
        }
        const uint64_t user = body["user"].get<uint64_t>();
        const std::string peer = req.peer;
        const bool queued = shared->o.worker->Post([shared, responder, user, peer] {
          // Tokens first: the user's sessions close and no new data arrives from them while
          // (and after) the data goes.
          const int64_t now_ms = SystemClock::Instance().WallMillis();
          if (const Status s = shared->o.revoke_user(user, now_ms); !s.ok()) {
            obs::LogError("account deletion failed: revocation not stored",
                          {{"user", user}, {"error", s.ToString()}});
            responder->Complete(Error(HttpStatusOf(s),
                                      "revocation not stored (nothing was "
                                      "deleted): " +
                                          s.message()));
            return;
          }
          Result<store::UserDeletion> d = shared->o.store->DeleteUser(user);
          if (!d.ok()) {
            obs::LogError("account deletion failed",
                          {{"user", user}, {"error", d.status().ToString()}});
            responder->Complete(
                Error(HttpStatusOf(d.status()),
                      "tokens revoked, data not deleted (retry): " + d.status().message()));
            return;
          }
          obs::LogInfo("account deleted", {{"user", user},
                                           {"messages", d->messages},
                                           {"dedup_entries", d->dedup_entries},
                                           {"prekeys", d->prekeys},
                                           {"requested_by", peer}});
          responder->Complete(Json(200, nlohmann::json{{"deleted", true},
                                                       {"user", user},
                                                       {"messages", d->messages},
                                                       {"dedup_entries", d->dedup_entries},
                                                       {"prekeys", d->prekeys},
                                                       {"tokens_revoked_before_ms", now_ms}}));
        });
        if (!queued) responder->Complete(Error(503, "the admin worker is busy or stopping; retry"));
      },
      kDeleteUserDeadline);
}

}  // namespace iris::server
