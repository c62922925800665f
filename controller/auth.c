/* auth: see auth.h. */
#include "auth.h"

#include <argon2.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "audit.h"
#include "gateway.h"
#include "log.h"
#include "util.h"

/* A session lasts at most a week, and ends after a day without a request: long enough not to
 * annoy, short enough that a forgotten browser does not stay signed in for good. */
#define SESSION_TTL "7 days"
#define SESSION_TTL_S 604800
#define SESSION_IDLE "24 hours"

#define KEY_RANDOM_HEX 48
#define KEY_CHECK_HEX 8

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static void key_checksum(const char *random_hex, char out[KEY_CHECK_HEX + 1])
{
    char h[65];
    util_sha256_hex(random_hex, KEY_RANDOM_HEX, h);
    memcpy(out, h, KEY_CHECK_HEX);
    out[KEY_CHECK_HEX] = '\0';
}

int auth_key_new(char key_out[AUTH_KEY_LEN + 1])
{
    char hex[KEY_RANDOM_HEX + 1], check[KEY_CHECK_HEX + 1];
    if (util_random_hex(hex, KEY_RANDOM_HEX / 2) != 0) return -1;
    key_checksum(hex, check);
    snprintf(key_out, AUTH_KEY_LEN + 1, "orp_sk_%s%s", hex, check);
    return 0;
}

int auth_key_well_formed(const char *key)
{
    size_t n = strlen(key);
    if (n == AUTH_LEGACY_KEY_LEN && !strncmp(key, "sk-orp-", 7)) return is_hex(key + 7, 48);
    if (n != AUTH_KEY_LEN || strncmp(key, "orp_sk_", 7) != 0 || !is_hex(key + 7, n - 7)) return 0;
    char check[KEY_CHECK_HEX + 1];
    key_checksum(key + 7, check);
    return memcmp(check, key + 7 + KEY_RANDOM_HEX, KEY_CHECK_HEX) == 0;
}

enum db_status auth_create_key(PGconn *c, int64_t account_id, int64_t user_id, const char *name,
                               char key_out[AUTH_KEY_LEN + 1])
{
    if (auth_key_new(key_out) != 0) return DB_HARD;
    char hash[65], prefix[AUTH_PREFIX_LEN + 1], acct[24], user[24];
    util_sha256_hex(key_out, strlen(key_out), hash);
    snprintf(prefix, sizeof prefix, "%s", key_out);
    snprintf(acct, sizeof acct, "%lld", (long long)account_id);
    snprintf(user, sizeof user, "%lld", (long long)user_id);
    const char *p[] = {acct, user_id ? user : NULL, name, prefix, hash};
    return db_cmd(c,
                  "INSERT INTO api_keys (account_id, user_id, name, prefix, secret_hash, scopes) "
                  "VALUES ($1, $2, $3, $4, $5, '{inference,manage}')",
                  5, p);
}

/* ---- passwords ---- */

int auth_password_hash(const char *password, char out[AUTH_PASSWORD_HASH_MAX])
{
    unsigned char salt[16];
    if (getrandom(salt, sizeof salt, 0) != (ssize_t)sizeof salt) return -1;
    return argon2id_hash_encoded(AUTH_ARGON2_T, AUTH_ARGON2_M_KIB, 1, password, strlen(password),
                                 salt, sizeof salt, 32, out, AUTH_PASSWORD_HASH_MAX) == ARGON2_OK
               ? 0
               : -1;
}

int auth_password_verify(const char *encoded, const char *password)
{
    if (!encoded || strncmp(encoded, "$argon2id$", 10) != 0) return 0;
    return argon2id_verify(encoded, password, strlen(password)) == ARGON2_OK;
}

/* ---- sessions ---- */

void auth_csrf_token(const char *session_token, char out[AUTH_CSRF_HEX + 1])
{
    /* A one-way function of the secret: knowing the token (it is in page scripts) tells nothing
     * about the cookie, and a cross-site page can read neither. */
    struct buf b = {0};
    buf_printf(&b, "orp-csrf:%s", session_token);
    char h[65];
    util_sha256_hex(b.data ? b.data : "", b.len, h);
    buf_free(&b);
    memcpy(out, h, AUTH_CSRF_HEX);
    out[AUTH_CSRF_HEX] = '\0';
}

enum db_status auth_session_new(PGconn *c, int64_t user_id, char token_out[AUTH_TOKEN_HEX + 1])
{
    if (util_random_hex(token_out, AUTH_TOKEN_HEX / 2) != 0) return DB_HARD;
    char hash[65], user[24];
    util_sha256_hex(token_out, AUTH_TOKEN_HEX, hash);
    snprintf(user, sizeof user, "%lld", (long long)user_id);
    const char *p[] = {user, hash};
    return db_cmd(c,
                  "INSERT INTO sessions (user_id, token_hash, expires_at) "
                  "VALUES ($1::bigint, $2, now() + interval '" SESSION_TTL "')",
                  2, p);
}

void auth_set_cookie(struct httpd_req *req, const char *token)
{
    struct ctl_listener *l = req->app;
    int secure = l && l->ctl && l->ctl->cfg.cookie_secure;
    size_t used = strlen(req->extra_headers);
    snprintf(req->extra_headers + used, sizeof req->extra_headers - used,
             "%sSet-Cookie: " AUTH_SESSION_COOKIE "=%s; Path=/; HttpOnly; SameSite=Lax; "
             "Max-Age=%d%s",
             used ? "\r\n" : "", token ? token : "", token ? SESSION_TTL_S : 0,
             secure ? "; Secure" : "");
}

const char *auth_session_cookie(struct httpd_req *req)
{
    const char *v = MHD_lookup_connection_value(req->conn, MHD_COOKIE_KIND, AUTH_SESSION_COOKIE);
    return v && strlen(v) == AUTH_TOKEN_HEX && is_hex(v, AUTH_TOKEN_HEX) ? v : NULL;
}

/* ---- the request's credential ---- */

const char *auth_bearer(struct httpd_req *req)
{
    const char *h = httpd_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

void auth_client_address(struct httpd_req *req, char *out, size_t n)
{
    out[0] = '\0';
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)n);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)n);
}

int auth_is_inference_route(const struct httpd_req *req)
{
    if (!req->route) return 0;
    for (size_t i = 0; i < gateway_nroutes; i++)
        if (req->route->fn == gateway_routes[i].fn) return 1;
    return 0;
}

static int state_changing(const struct httpd_req *req)
{
    return strcmp(req->method, "GET") && strcmp(req->method, "HEAD") &&
           strcmp(req->method, "OPTIONS");
}

/* The rate-limit columns every credential query ends with (after its own). */
#define QUOTA_JOIN                                                                                 \
    "LEFT JOIN LATERAL (SELECT requests_per_min, requests_burst, tokens_per_min FROM quotas "      \
    "  WHERE account_id = x.account_id OR account_id IS NULL "                                     \
    "  ORDER BY account_id NULLS LAST LIMIT 1) q ON true"

/* Columns of both credential queries: id, account, role, rate, burst, user, inference, manage,
 * limited, ..., and last the tokens per minute. */
static void fill(struct auth_ctx *out, PGresult *r)
{
    out->account_id = db_int(r, 0, 1);
    snprintf(out->role, sizeof out->role, "%s", PQgetvalue(r, 0, 2));
    out->requests_per_min = db_int(r, 0, 3);
    out->requests_burst = db_int(r, 0, 4);
    out->tokens_per_min = db_int(r, 0, PQnfields(r) - 1);
    out->user_id = db_int(r, 0, 5);
    out->scopes = (PQgetvalue(r, 0, 6)[0] == 't' ? AUTH_SCOPE_INFERENCE : 0u) |
                  (PQgetvalue(r, 0, 7)[0] == 't' ? AUTH_SCOPE_MANAGE : 0u);
    out->endpoint_limited = PQgetvalue(r, 0, 8)[0] == 't';
    snprintf(out->account_id_str, sizeof out->account_id_str, "%lld", (long long)out->account_id);
}

static int db_down(struct httpd_req *req, const char *what)
{
    req->retry_after = 1;
    httpd_error(req, 503, "database_unavailable", NULL, "could not check the %s", what);
    return -1;
}

/* ---- the key cache: no database round trip to authenticate a busy key ----
 *
 * A key's successful look-up is kept for AUTH_CACHE_MS (never past the key's own expiry), so that
 * a key making many requests costs its handler's query alone. Revoking a key and suspending or
 * unsuspending an account empty the cache of this process at once (auth_cache_forget); another
 * controller process behind the same balancer notices within AUTH_CACHE_MS. Slots are overwritten
 * by hash: memory stays bounded whatever the number of keys. Sessions are not cached: log-out and
 * password changes must end them on the next request. */
#define AUTH_CACHE_MS 1000
#define AUTH_CACHE_SLOTS 1024

struct key_slot {
    char key_hash[65];
    struct auth_ctx a;
    int64_t until_ms; /* monotonic */
    uint64_t gen;
};

static struct key_slot key_cache[AUTH_CACHE_SLOTS];
static uint64_t key_cache_gen = 1; /* slots of an older generation are stale */
static pthread_mutex_t key_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static struct key_slot *key_slot_of(const char *hash)
{
    uint32_t h = 2166136261u;
    for (const char *s = hash; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return &key_cache[h % AUTH_CACHE_SLOTS];
}

void auth_cache_forget(void)
{
    pthread_mutex_lock(&key_cache_lock);
    key_cache_gen++;
    pthread_mutex_unlock(&key_cache_lock);
}

static int key_cached(const char *hash, struct auth_ctx *out)
{
    struct key_slot *sl = key_slot_of(hash);
    pthread_mutex_lock(&key_cache_lock);
    int hit =
        sl->gen == key_cache_gen && !strcmp(sl->key_hash, hash) && sl->until_ms > util_now_ms();
    if (hit) *out = sl->a;
    pthread_mutex_unlock(&key_cache_lock);
    return hit;
}

/* expires_ms: the key's expiry (wall clock, ms), 0 when it has none. */
static void key_remember(const char *hash, const struct auth_ctx *a, int64_t expires_ms)
{
    int64_t ttl = AUTH_CACHE_MS;
    if (expires_ms > 0 && expires_ms - util_wall_ms() < ttl) ttl = expires_ms - util_wall_ms();
    if (ttl <= 0) return;
    struct key_slot *sl = key_slot_of(hash);
    pthread_mutex_lock(&key_cache_lock);
    snprintf(sl->key_hash, sizeof sl->key_hash, "%s", hash);
    sl->a = *a;
    sl->until_ms = util_now_ms() + ttl;
    sl->gen = key_cache_gen;
    pthread_mutex_unlock(&key_cache_lock);
}

/* -1 after answering 403 account_suspended when column col of r says the account is suspended
 * (col + 1 holds the reason). */
static int refuse_suspended(struct httpd_req *req, PGresult *r, int col)
{
    if (PQgetvalue(r, 0, col)[0] != 't') return 0;
    const char *why = PQgetvalue(r, 0, col + 1);
    httpd_error(req, 403, "account_suspended", NULL,
                "this account is suspended%s%s: contact the operator", *why ? ": " : "", why);
    return -1;
}

static int by_key(struct httpd_req *req, PGconn *c, const char *key, struct auth_ctx *out)
{
    if (!auth_key_well_formed(key)) {
        httpd_error(req, 401, "invalid_api_key", NULL, "invalid API key");
        return -1;
    }
    char hash[65];
    util_sha256_hex(key, strlen(key), hash);
    if (key_cached(hash, out)) return 0;
    const char *p[] = {hash};
    PGresult *r;
    /* last_used_at is refreshed at most once a minute so that a busy key does not turn every
     * request into a row write. A key made before scopes existed ('{}') has every scope. */
    enum db_status st = db_exec_prepared(
        c, "auth_by_key",
        "WITH x AS (SELECT k.id, k.account_id, k.user_id, k.scopes, k.endpoint_ids, k.expires_at, "
        "  COALESCE((SELECT u.role FROM users u WHERE u.id = k.user_id), 'member') AS role "
        "  FROM api_keys k WHERE k.secret_hash = $1 AND k.revoked_at IS NULL "
        "  AND (k.expires_at IS NULL OR k.expires_at > now())), "
        "upd AS (UPDATE api_keys SET last_used_at = now() WHERE id = (SELECT id FROM x) "
        "  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')) "
        "SELECT x.id, x.account_id, x.role, q.requests_per_min, q.requests_burst, x.user_id, "
        "  x.scopes = '{}' OR 'inference' = ANY (x.scopes), "
        "  x.scopes = '{}' OR 'manage' = ANY (x.scopes), x.endpoint_ids IS NOT NULL, "
        "  array_to_string(x.endpoint_ids, ','), "
        "  COALESCE((extract(epoch FROM x.expires_at) * 1000)::bigint, 0), "
        "  ac.suspended_at IS NOT NULL, ac.suspend_reason, q.tokens_per_min "
        "FROM x JOIN accounts ac ON ac.id = x.account_id " QUOTA_JOIN,
        1, p, &r, NULL);
    if (st < 0) return db_down(req, "API key");
    if (st == DB_NONE) {
        PQclear(r);
        httpd_error(req, 401, "invalid_api_key", NULL, "invalid API key");
        return -1;
    }
    if (refuse_suspended(req, r, 11) != 0) {
        PQclear(r);
        return -1;
    }
    out->key_id = db_int(r, 0, 0);
    fill(out, r);
    char ids[AUTH_KEY_ENDPOINTS_MAX * 37 + 1];
    snprintf(ids, sizeof ids, "%s", PQgetvalue(r, 0, 9));
    char *save = NULL;
    for (char *t = strtok_r(ids, ",", &save); t && out->n_endpoint_ids < AUTH_KEY_ENDPOINTS_MAX;
         t = strtok_r(NULL, ",", &save))
        snprintf(out->endpoint_ids[out->n_endpoint_ids++], sizeof out->endpoint_ids[0], "%s", t);
    key_remember(hash, out, db_int(r, 0, 10));
    PQclear(r);
    return 0;
}

static int by_session(struct httpd_req *req, PGconn *c, const char *token, struct auth_ctx *out)
{
    char hash[65];
    util_sha256_hex(token, strlen(token), hash);
    const char *p[] = {hash};
    PGresult *r;
    enum db_status st =
        db_exec(c,
                "WITH x AS (SELECT s.id, u.account_id, u.role, u.id AS user_id, "
                "  ac.suspended_at IS NOT NULL AS suspended, ac.suspend_reason "
                "  FROM sessions s JOIN users u ON u.id = s.user_id "
                "  JOIN accounts ac ON ac.id = u.account_id WHERE s.token_hash = $1 "
                "  AND s.expires_at > now() "
                "  AND s.last_seen_at > now() - interval '" SESSION_IDLE "'), "
                "upd AS (UPDATE sessions SET last_seen_at = now() WHERE id = (SELECT id FROM x) "
                "  AND last_seen_at < now() - interval '1 minute') "
                "SELECT x.id, x.account_id, x.role, q.requests_per_min, q.requests_burst, "
                "  x.user_id, true, true, false, x.suspended, x.suspend_reason, "
                "  q.tokens_per_min "
                "FROM x " QUOTA_JOIN,
                1, p, &r, NULL);
    if (st < 0) return db_down(req, "session");
    if (st == DB_NONE) {
        PQclear(r);
        httpd_error(req, 401, "invalid_session", NULL,
                    "your session has ended: log in again (POST /v1/auth/login)");
        return -1;
    }
    if (refuse_suspended(req, r, 9) != 0) {
        PQclear(r);
        return -1;
    }
    out->session_id = db_int(r, 0, 0);
    fill(out, r);
    PQclear(r);
    if (state_changing(req)) {
        char want[AUTH_CSRF_HEX + 1];
        auth_csrf_token(token, want);
        const char *got = httpd_header(req, "X-CSRF-Token");
        if (!got || !util_ct_streq(got, want)) {
            httpd_error(req, 403, "csrf_token_invalid", NULL,
                        "a request authenticated by the session cookie must send its CSRF token "
                        "in the X-CSRF-Token header (see GET /v1/auth/me)");
            return -1;
        }
    }
    return 0;
}

int auth_endpoint_allowed(struct httpd_req *req, const struct auth_ctx *a, const char *endpoint_id,
                          const char *model)
{
    if (!a->endpoint_limited) return 0;
    for (int i = 0; i < a->n_endpoint_ids; i++)
        if (!strcmp(a->endpoint_ids[i], endpoint_id)) return 0;
    /* Answered like a missing model, so the key learns nothing about the other endpoints. */
    httpd_error(req, 404, "model_not_found", "model",
                "the model '%s' does not exist: it must be the name of one of your endpoints",
                model);
    return -1;
}

int auth_require(struct httpd_req *req, PGconn *c, struct auth_ctx *out)
{
    memset(out, 0, sizeof *out);
    const char *key = auth_bearer(req);
    const char *cookie = key ? NULL : auth_session_cookie(req);
    int rc;
    if (key)
        rc = by_key(req, c, key, out);
    else if (cookie)
        rc = by_session(req, c, cookie, out);
    else {
        httpd_error(req, 401, "missing_api_key", NULL,
                    "missing API key: send it as 'Authorization: Bearer orp_sk_...'");
        return -1;
    }
    if (rc != 0) return -1;
    char ctx[128];
    snprintf(ctx, sizeof ctx, "req=%s acct=%lld", req->id, (long long)out->account_id);
    log_set_context(ctx);
    if (auth_is_inference_route(req)) {
        if (!(out->scopes & AUTH_SCOPE_INFERENCE)) {
            httpd_error(req, 403, "insufficient_scope", NULL,
                        "this API key does not have the 'inference' scope");
            return -1;
        }
        return 0; /* inference is not audited: the usage tables record it. The gateway checks a
                     key's endpoint limit with auth_endpoint_allowed() once it knows the endpoint.
                   */
    }
    if (!(out->scopes & AUTH_SCOPE_MANAGE)) {
        httpd_error(req, 403, "insufficient_scope", NULL,
                    "this API key has only the 'inference' scope: it can call endpoints through "
                    "the gateway but not manage anything");
        return -1;
    }
    if (state_changing(req) && audit_record(req, c, out) != 0) return db_down(req, "audit log");
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
