/* auth: see auth.h. */
#include "auth.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "util.h"

enum db_status auth_create_key(PGconn *c, int64_t account_id, int64_t user_id, const char *name,
                               char key_out[AUTH_KEY_LEN + 1])
{
    char hex[49];
    if (util_random_hex(hex, 24) != 0) return DB_HARD;
    snprintf(key_out, AUTH_KEY_LEN + 1, "sk-orp-%s", hex);
    char hash[65], prefix[15], acct[24], user[24];
    util_sha256_hex(key_out, strlen(key_out), hash);
    snprintf(prefix, sizeof prefix, "%.14s", key_out);
    snprintf(acct, sizeof acct, "%lld", (long long)account_id);
    snprintf(user, sizeof user, "%lld", (long long)user_id);
    const char *p[] = {acct, user_id ? user : NULL, name, prefix, hash};
    return db_cmd(c,
                  "INSERT INTO api_keys (account_id, user_id, name, prefix, secret_hash) "
                  "VALUES ($1, $2, $3, $4, $5)",
                  5, p);
}

const char *auth_bearer(struct httpd_req *req)
{
    const char *h = httpd_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

int auth_require(struct httpd_req *req, PGconn *c, struct auth_ctx *out)
{
    const char *key = auth_bearer(req);
    if (!key) {
        httpd_error(req, 401, "missing_api_key", NULL,
                    "missing API key: send it as 'Authorization: Bearer sk-orp-...'");
        return -1;
    }
    if (strlen(key) != AUTH_KEY_LEN || strncmp(key, "sk-orp-", 7) != 0) {
        httpd_error(req, 401, "invalid_api_key", NULL, "invalid API key");
        return -1;
    }
    char hash[65];
    util_sha256_hex(key, strlen(key), hash);
    const char *p[] = {hash};
    PGresult *r;
    /* last_used_at is refreshed at most once a minute so that a busy key does not turn every
     * request into a row write. */
    enum db_status st =
        db_exec(c,
                "WITH k AS (SELECT k.id, k.account_id, k.last_used_at, "
                "  COALESCE((SELECT u.role FROM users u WHERE u.id = k.user_id), 'member') AS role "
                "  FROM api_keys k WHERE k.secret_hash = $1 AND k.revoked_at IS NULL "
                "  AND (k.expires_at IS NULL OR k.expires_at > now())), "
                "upd AS (UPDATE api_keys SET last_used_at = now() WHERE id = (SELECT id FROM k) "
                "  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')) "
                "SELECT k.id, k.account_id, k.role, q.requests_per_min, q.requests_burst FROM k "
                "LEFT JOIN LATERAL (SELECT requests_per_min, requests_burst FROM quotas "
                "  WHERE account_id = k.account_id OR account_id IS NULL "
                "  ORDER BY account_id NULLS LAST LIMIT 1) q ON true",
                1, p, &r, NULL);
    if (st < 0) {
        req->retry_after = 1;
        httpd_error(req, 503, "database_unavailable", NULL, "could not check the API key");
        return -1;
    }
    if (st == DB_NONE) {
        PQclear(r);
        httpd_error(req, 401, "invalid_api_key", NULL, "invalid API key");
        return -1;
    }
    out->key_id = db_int(r, 0, 0);
    out->account_id = db_int(r, 0, 1);
    snprintf(out->role, sizeof out->role, "%s", PQgetvalue(r, 0, 2));
    out->requests_per_min = db_int(r, 0, 3);
    out->requests_burst = db_int(r, 0, 4);
    snprintf(out->account_id_str, sizeof out->account_id_str, "%lld", (long long)out->account_id);
    PQclear(r);
    char ctx[128];
    snprintf(ctx, sizeof ctx, "req=%s acct=%lld", req->id, (long long)out->account_id);
    log_set_context(ctx);
    return 0;
}

PGconn *auth_db(struct httpd_req *req, struct auth_ctx *a)
{
    PGconn *c = ctl_db(req);
    if (c && auth_require(req, c, a) != 0) {
        ctl_db_done(req, c);
        return NULL;
    }
    return c;
}
