/* accounts_api: the routes of people and their credentials: sign-up, log-in, log-out, password
 * change and "who am I" (/v1/auth/...), and an account's API keys (/v1/api-keys). auth.c makes
 * and checks the secrets; this file owns the rows of accounts (creation by sign-up), users'
 * password hashes, sessions and api_keys as seen through the API.
 *
 * Log-in and sign-up accept only application/json bodies: a cross-site HTML form cannot send
 * that content type, and a cross-site script that does needs a CORS preflight we never grant, so
 * nobody can be logged in (or signed up) by another site. Every other state change made with the
 * session cookie needs the session's CSRF token (auth_require). */
#include "accounts_api.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "audit.h"
#include "auth.h"
#include "idempotency.h"
#include "jsonx.h"
#include "log.h"
#include "util.h"

/* Passwords: at least 8 characters (NIST SP 800-63B); at most 256 bytes so that hashing cannot
 * be made to take long. */
#define PASSWORD_MIN 8
#define PASSWORD_MAX 256
#define EMAIL_MAX 254 /* RFC 5321 path limit */
#define ACCOUNT_NAME_MAX 100
#define KEY_NAME_MAX 100
#define KEYS_PAGE_MAX 200

#define RFC3339(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static int signup_enabled(const char *v)
{
    return v && (!strcasecmp(v, "on") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") ||
                 !strcmp(v, "1"));
}

/* A plausible address: local@domain.tld, no spaces or control characters. The real check is the
 * mail we do not send yet. */
static int valid_email(const char *s)
{
    size_t n = strlen(s);
    const char *at = strchr(s, '@');
    if (n < 3 || n > EMAIL_MAX || !at || at == s || strchr(at + 1, '@') || !strchr(at + 1, '.') ||
        s[n - 1] == '.')
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f) return 0;
    return 1;
}

/* 0 when the body is JSON by its Content-Type, else answers 415 and returns -1. */
static int require_json(struct httpd_req *req)
{
    const char *ct = httpd_header(req, "Content-Type");
    if (ct && !strncasecmp(ct, "application/json", 16)) return 0;
    httpd_error(req, 415, "unsupported_media_type", NULL,
                "send the body as JSON with 'Content-Type: application/json'");
    return -1;
}

static void bad_field(struct httpd_req *req, enum jsonx_rc rc, const struct jsonx_err *je)
{
    httpd_error(req, 400, rc == JSONX_MISSING ? "missing_parameter" : "invalid_parameter",
                je->param, "%s", je->message);
}

static int check_password(struct httpd_req *req, const char *field, const char *pw)
{
    if (strlen(pw) >= PASSWORD_MIN) return 0;
    httpd_error(req, 400, "invalid_parameter", field, "field '%s' must have at least %d characters",
                field, PASSWORD_MIN);
    return -1;
}

/* The user and account as the API shows them: {"id", "object", "email", "role", "account"}. */
static json_t *user_json(const char *id, const char *email, const char *role, const char *acct,
                         const char *acct_name)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s}}", "id", id, "object", "user", "email",
                     email, "role", role, "account", "id", acct, "object", "account", "name",
                     acct_name);
}

/* Starts a session for user on this reply: Set-Cookie, and the CSRF token into o. -1 on a
 * database error (nothing answered). */
static int start_session(struct httpd_req *req, PGconn *c, int64_t user, json_t *o)
{
    char token[AUTH_TOKEN_HEX + 1], csrf[AUTH_CSRF_HEX + 1];
    if (auth_session_new(c, user, token) < 0) return -1;
    auth_set_cookie(req, token);
    auth_csrf_token(token, csrf);
    json_object_set_new(o, "csrf_token", json_string(csrf));
    return 0;
}

/* ---- sign-up ---- */

static const char *const signup_fields[] = {"email", "password", "account_name", NULL};

struct signup {
    const char *email, *name, *hash;
    struct idem im;
    int64_t account, user;
    int email_taken;
    json_t *reply;
};

static enum db_status signup_txn(PGconn *c, void *arg)
{
    struct signup *s = arg;
    json_decref(s->reply);
    s->reply = NULL;
    s->email_taken = 0;
    enum db_status st = idem_claim(c, &s->im);
    if (st != DB_ROWS) return st;
    PGresult *r;
    const char *pa[] = {s->name};
    st = db_exec(c, "INSERT INTO accounts (name) VALUES ($1) RETURNING id", 1, pa, &r, NULL);
    if (st < 0) return st;
    char acct[24], user[24], ss[6];
    snprintf(acct, sizeof acct, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *pu[] = {acct, s->email, s->hash};
    st = db_exec(c,
                 "INSERT INTO users (account_id, email, password_hash, role) "
                 "VALUES ($1::bigint, $2, $3, 'owner') RETURNING id",
                 3, pu, &r, ss);
    if (st < 0) {
        if (!strcmp(ss, "23505")) s->email_taken = 1;
        return DB_HARD;
    }
    snprintf(user, sizeof user, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    s->account = strtoll(acct, NULL, 10);
    s->user = strtoll(user, NULL, 10);
    s->reply = user_json(user, s->email, "owner", acct, s->name);
    return idem_store(c, &s->im, 201, s->reply);
}

static void h_signup(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    if (!signup_enabled(l->ctl->cfg.signup)) {
        httpd_error(req, 403, "signup_disabled", NULL,
                    "sign-up is turned off on this installation: ask the operator for an account");
        return;
    }
    if (require_json(req) != 0) return;
    json_t *body = httpd_body_object(req);
    if (!body) return;
    PGconn *c = NULL;
    struct signup s = {0};
    const char *pw;
    struct jsonx_err je = {0};
    enum jsonx_rc rc;
    if (httpd_reject_unknown(req, body, signup_fields) != 0) goto out;
    if ((rc = jsonx_get_string(body, "email", 1, &s.email, EMAIL_MAX, &je)) != JSONX_OK ||
        (rc = jsonx_get_string(body, "password", 1, &pw, PASSWORD_MAX, &je)) != JSONX_OK ||
        (rc = jsonx_get_string(body, "account_name", 1, &s.name, ACCOUNT_NAME_MAX, &je)) !=
            JSONX_OK) {
        bad_field(req, rc, &je);
        goto out;
    }
    if (!valid_email(s.email)) {
        httpd_error(req, 400, "invalid_parameter", "email",
                    "field 'email' is not an e-mail address");
        goto out;
    }
    if (!*s.name || !jsonx_printable(s.name)) {
        httpd_error(req, 400, "invalid_parameter", "account_name",
                    "field 'account_name' must be 1-%d printable characters", ACCOUNT_NAME_MAX);
        goto out;
    }
    if (check_password(req, "password", pw) != 0) goto out;
    /* The idempotency hash covers the e-mail and the account name, not the password: a fast hash
     * of a password must not be stored. */
    char scope[300], *lower = strdup(s.email);
    for (char *p = lower; p && *p; p++)
        *p = (char)tolower((unsigned char)*p);
    snprintf(scope, sizeof scope, "signup:%s", lower ? lower : s.email);
    free(lower);
    struct buf hin = {0};
    buf_printf(&hin, "%s\n%s", scope, s.name);
    int ib = idem_begin(req, &s.im, scope, 0, hin.data ? hin.data : "", hin.len);
    buf_free(&hin);
    if (ib != 0) goto out;
    if (!(c = ctl_db(req)) || idem_replay(req, c, &s.im) != 0) goto out;
    char hash[AUTH_PASSWORD_HASH_MAX];
    if (auth_password_hash(pw, hash) != 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not hash the password");
        goto out;
    }
    s.hash = hash;
    enum db_status st = db_txn_run(c, signup_txn, &s);
    if (s.im.replay) {
        idem_answer(req, &s.im);
    } else if (st < 0) {
        if (s.email_taken)
            httpd_error(req, 409, "email_taken", "email", "an account with this e-mail exists");
        else
            httpd_error(req, 503, "database_unavailable", NULL, "could not create the account");
    } else {
        log_info("sign-up: account %lld, user %lld", (long long)s.account, (long long)s.user);
        char uid[24];
        snprintf(uid, sizeof uid, "%lld", (long long)s.user);
        audit_record_anonymous(req, c, s.account, s.user, uid);
        json_t *o = json_deep_copy(s.reply);
        if (start_session(req, c, s.user, o) != 0) /* the account exists: log in later */
            log_warn("sign-up of user %lld: no session", (long long)s.user);
        httpd_reply_json(req, 201, o);
    }
out:
    json_decref(s.reply);
    idem_free(&s.im);
    json_decref(body);
    if (c) ctl_db_done(req, c);
}

/* ---- log-in, log-out ---- */

/* A hash to verify against when the e-mail is unknown, so that an unknown address takes as
 * long as a wrong password and the timing tells nobody which addresses have accounts. */
static char dummy_hash[AUTH_PASSWORD_HASH_MAX];
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;
static void make_dummy(void)
{
    char pw[33];
    if (util_random_hex(pw, 16) != 0 || auth_password_hash(pw, dummy_hash) != 0)
        dummy_hash[0] = '\0';
}

static const char *const login_fields[] = {"email", "password", NULL};

static void h_login(struct httpd_req *req)
{
    if (require_json(req) != 0) return;
    json_t *body = httpd_body_object(req);
    if (!body) return;
    PGconn *c = NULL;
    PGresult *r = NULL;
    const char *email, *pw;
    struct jsonx_err je = {0};
    enum jsonx_rc rc;
    if (httpd_reject_unknown(req, body, login_fields) != 0) goto out;
    if ((rc = jsonx_get_string(body, "email", 1, &email, EMAIL_MAX, &je)) != JSONX_OK ||
        (rc = jsonx_get_string(body, "password", 1, &pw, PASSWORD_MAX, &je)) != JSONX_OK) {
        bad_field(req, rc, &je);
        goto out;
    }
    if (!(c = ctl_db(req))) goto out;
    const char *p[] = {email};
    enum db_status st = db_exec(c,
                                "SELECT u.id, u.password_hash, u.email, u.role, a.id, a.name "
                                "FROM users u JOIN accounts a ON a.id = u.account_id "
                                "WHERE lower(u.email) = lower($1)",
                                1, p, &r, NULL);
    if (st < 0) {
        req->retry_after = 1;
        httpd_error(req, 503, "database_unavailable", NULL, "could not check the credentials");
        goto out;
    }
    int ok;
    if (st == DB_ROWS && !PQgetisnull(r, 0, 1)) {
        ok = auth_password_verify(PQgetvalue(r, 0, 1), pw);
    } else {
        pthread_once(&dummy_once, make_dummy);
        auth_password_verify(dummy_hash, pw);
        ok = 0;
    }
    if (!ok) {
        httpd_error(req, 401, "invalid_credentials", NULL, "wrong e-mail or password");
        goto out;
    }
    int64_t user = db_int(r, 0, 0);
    /* Rotation: the session the browser had (if any) ends; log-in always makes a new id, so a
     * session id planted before log-in is worth nothing after it. */
    const char *old = auth_session_cookie(req);
    if (old) {
        char h[65];
        util_sha256_hex(old, strlen(old), h);
        const char *ph[] = {h};
        db_cmd(c, "DELETE FROM sessions WHERE token_hash = $1", 1, ph);
    }
    json_t *o = json_pack("{s:s, s:o}", "object", "session", "user",
                          user_json(PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3),
                                    PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5)));
    if (start_session(req, c, user, o) != 0) {
        json_decref(o);
        httpd_error(req, 503, "database_unavailable", NULL, "could not start the session");
        goto out;
    }
    audit_record_anonymous(req, c, db_int(r, 0, 4), user, PQgetvalue(r, 0, 0));
    log_info("user %lld logged in", (long long)user);
    httpd_reply_json(req, 200, o);
out:
    PQclear(r);
    json_decref(body);
    if (c) ctl_db_done(req, c);
}

static void h_logout(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    if (!a.session_id) {
        ctl_db_done(req, c);
        httpd_error(req, 400, "not_a_session", NULL,
                    "log-out ends a session; this request was made with an API key "
                    "(revoke a key with DELETE /v1/api-keys/{id})");
        return;
    }
    char sid[24];
    snprintf(sid, sizeof sid, "%lld", (long long)a.session_id);
    const char *p[] = {sid};
    enum db_status st = db_cmd(c, "DELETE FROM sessions WHERE id = $1::bigint", 1, p);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not end the session");
        return;
    }
    auth_set_cookie(req, NULL);
    httpd_reply_json(req, 200, json_pack("{s:s, s:b}", "object", "session", "deleted", 1));
}

/* ---- who am I, password ---- */

/* Replies with the caller: user (null for a key of no user), account, how authenticated, the
 * scopes, and the CSRF token of a session. */
static void reply_me(struct httpd_req *req, PGconn *c, const struct auth_ctx *a, unsigned status)
{
    char uid[24];
    snprintf(uid, sizeof uid, "%lld", (long long)a->user_id);
    const char *p[] = {a->account_id_str, uid};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "SELECT a.name, u.id, u.email, u.role, "
                                "  u.password_hash IS NOT NULL "
                                "FROM accounts a LEFT JOIN users u ON u.id = $2::bigint "
                                "WHERE a.id = $1::bigint",
                                2, p, &r, NULL);
    if (st != DB_ROWS) {
        if (st == DB_NONE) PQclear(r);
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the account");
        return;
    }
    json_t *scopes = json_array();
    if (a->scopes & AUTH_SCOPE_INFERENCE) json_array_append_new(scopes, json_string("inference"));
    if (a->scopes & AUTH_SCOPE_MANAGE) json_array_append_new(scopes, json_string("manage"));
    json_t *o = json_pack("{s:s, s:s, s:o, s:{s:s, s:s, s:s}}", "object", "me", "auth",
                          a->session_id ? "session" : "api_key", "scopes", scopes, "account", "id",
                          a->account_id_str, "object", "account", "name", PQgetvalue(r, 0, 0));
    json_object_set_new(o, "user",
                        PQgetisnull(r, 0, 1)
                            ? json_null()
                            : json_pack("{s:s, s:s, s:s, s:s, s:b}", "id", PQgetvalue(r, 0, 1),
                                        "object", "user", "email", PQgetvalue(r, 0, 2), "role",
                                        PQgetvalue(r, 0, 3), "has_password",
                                        PQgetvalue(r, 0, 4)[0] == 't'));
    PQclear(r);
    const char *cookie = a->session_id ? auth_session_cookie(req) : NULL;
    if (cookie) {
        char csrf[AUTH_CSRF_HEX + 1];
        auth_csrf_token(cookie, csrf);
        json_object_set_new(o, "csrf_token", json_string(csrf));
    }
    httpd_reply_json(req, status, o);
}

static void h_me(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    reply_me(req, c, &a, 200);
    ctl_db_done(req, c);
}

static const char *const password_fields[] = {"current_password", "new_password", NULL};

struct pwchange {
    const char *user, *hash;
    int64_t user_id, keep_session;
    char token[AUTH_TOKEN_HEX + 1];
};

/* New hash; every session of the user ends; a session making the change gets a fresh one. */
static enum db_status pwchange_txn(PGconn *c, void *arg)
{
    struct pwchange *pc = arg;
    const char *p[] = {pc->user, pc->hash};
    enum db_status st =
        db_cmd(c, "UPDATE users SET password_hash = $2 WHERE id = $1::bigint", 2, p);
    if (st < 0) return st;
    if ((st = db_cmd(c, "DELETE FROM sessions WHERE user_id = $1::bigint", 1, p)) < 0) return st;
    if (pc->keep_session) return auth_session_new(c, pc->user_id, pc->token);
    return DB_ROWS;
}

static void h_password(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    json_t *body = NULL;
    PGresult *r = NULL;
    if (!a.user_id) {
        httpd_error(req, 400, "no_user", NULL, "this API key belongs to no user");
        goto out;
    }
    const char *cur = NULL, *nw;
    struct jsonx_err je = {0};
    enum jsonx_rc rc;
    if (!(body = httpd_body_object(req)) || httpd_reject_unknown(req, body, password_fields) != 0)
        goto out;
    if ((rc = jsonx_get_string(body, "current_password", 0, &cur, PASSWORD_MAX, &je)) ==
            JSONX_BAD ||
        (rc = jsonx_get_string(body, "new_password", 1, &nw, PASSWORD_MAX, &je)) != JSONX_OK) {
        bad_field(req, rc, &je);
        goto out;
    }
    if (check_password(req, "new_password", nw) != 0) goto out;
    char uid[24];
    snprintf(uid, sizeof uid, "%lld", (long long)a.user_id);
    const char *p[] = {uid};
    if (db_exec(c, "SELECT password_hash FROM users WHERE id = $1::bigint", 1, p, &r, NULL) !=
        DB_ROWS) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the user");
        goto out;
    }
    /* A user without a password yet (made by the CLI) sets one with a key of theirs. */
    if (!PQgetisnull(r, 0, 0)) {
        if (!cur) {
            httpd_error(req, 400, "missing_parameter", "current_password",
                        "field 'current_password' is required");
            goto out;
        }
        if (!auth_password_verify(PQgetvalue(r, 0, 0), cur)) {
            httpd_error(req, 403, "invalid_password", "current_password",
                        "the current password is wrong");
            goto out;
        }
    }
    char hash[AUTH_PASSWORD_HASH_MAX];
    if (auth_password_hash(nw, hash) != 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not hash the password");
        goto out;
    }
    struct pwchange pc = {uid, hash, a.user_id, a.session_id != 0, {0}};
    if (db_txn_run(c, pwchange_txn, &pc) < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not change the password");
        goto out;
    }
    log_info("user %s changed their password; their sessions ended", uid);
    if (pc.keep_session) {
        auth_set_cookie(req, pc.token);
        json_t *o = json_pack("{s:s}", "object", "password_changed");
        char csrf[AUTH_CSRF_HEX + 1];
        auth_csrf_token(pc.token, csrf);
        json_object_set_new(o, "csrf_token", json_string(csrf));
        httpd_reply_json(req, 200, o);
    } else {
        httpd_reply_json(req, 200, json_pack("{s:s}", "object", "password_changed"));
    }
out:
    PQclear(r);
    json_decref(body);
    ctl_db_done(req, c);
}

/* ---- API keys ---- */

#define KEY_COLUMNS                                                                                \
    "k.id, k.name, k.prefix, k.scopes, k.endpoint_ids, " RFC3339("k.created_at") ", " RFC3339(     \
        "k.last_used_at") ", " RFC3339("k.expires_at") ", " RFC3339("k.revoked_at")

/* text[] / uuid[] literal "{a,b}" as a JSON array of strings (NULL column: null). */
static json_t *pg_array(PGresult *r, int i, int col)
{
    if (PQgetisnull(r, i, col)) return json_null();
    json_t *a = json_array();
    char tmp[8192];
    snprintf(tmp, sizeof tmp, "%s", PQgetvalue(r, i, col));
    char *save = NULL;
    for (char *t = strtok_r(tmp, "{},", &save); t; t = strtok_r(NULL, "{},", &save))
        json_array_append_new(a, json_string(t));
    return a;
}

static json_t *opt_str(PGresult *r, int i, int col)
{
    return PQgetisnull(r, i, col) ? json_null() : json_string(PQgetvalue(r, i, col));
}

static json_t *key_json(PGresult *r, int i)
{
    json_t *scopes = pg_array(r, i, 3);
    if (json_array_size(scopes) == 0) { /* a key from before scopes: every scope */
        json_array_append_new(scopes, json_string("inference"));
        json_array_append_new(scopes, json_string("manage"));
    }
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:s}", "id", PQgetvalue(r, i, 0), "object",
                  "api_key", "name", PQgetvalue(r, i, 1), "prefix", PQgetvalue(r, i, 2), "scopes",
                  scopes, "endpoint_ids", pg_array(r, i, 4), "created_at", PQgetvalue(r, i, 5));
    json_object_set_new(o, "last_used_at", opt_str(r, i, 6));
    json_object_set_new(o, "expires_at", opt_str(r, i, 7));
    json_object_set_new(o, "revoked_at", opt_str(r, i, 8));
    return o;
}

/* RFC 3339 with a zone: 2030-01-02T03:04:05Z, optional fraction, Z or ±hh:mm. The database then
 * checks the calendar (day 31 of February is a 400 from its SQLSTATE class 22). */
static int rfc3339(const char *s)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t i = 0;
    for (; shape[i]; i++) {
        char c = s[i];
        if (shape[i] == 'd' ? !isdigit((unsigned char)c)
                            : (shape[i] == 'T' ? (c != 'T' && c != 't') : c != shape[i]))
            return 0;
    }
    const char *p = s + i;
    if (*p == '.') {
        if (!isdigit((unsigned char)*++p)) return 0;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if ((*p == 'Z' || *p == 'z') && !p[1]) return 1;
    return (*p == '+' || *p == '-') && isdigit((unsigned char)p[1]) &&
           isdigit((unsigned char)p[2]) && p[3] == ':' && isdigit((unsigned char)p[4]) &&
           isdigit((unsigned char)p[5]) && !p[6];
}

static const char *const key_fields[] = {"name", "scopes", "endpoint_ids", "expires_at", NULL};

struct newkey {
    const char *acct, *user, *name, *scopes, *endpoints, *expires;
    struct idem im;
    char secret[AUTH_KEY_LEN + 1];
    char id[24];
    int bad_time, bad_endpoint;
    json_t *reply; /* without the secret: that is what the idempotency row keeps */
};

static enum db_status newkey_txn(PGconn *c, void *arg)
{
    struct newkey *k = arg;
    json_decref(k->reply);
    k->reply = NULL;
    enum db_status st = idem_claim(c, &k->im);
    if (st != DB_ROWS) return st;
    if (auth_key_new(k->secret) != 0) return DB_HARD;
    char hash[65], prefix[AUTH_PREFIX_LEN + 1], ss[6];
    util_sha256_hex(k->secret, strlen(k->secret), hash);
    memcpy(prefix, k->secret, AUTH_PREFIX_LEN); /* the display prefix: its first characters */
    prefix[AUTH_PREFIX_LEN] = '\0';
    PGresult *r;
    if (k->endpoints) {
        /* Every id must be one of the account's live endpoints. */
        const char *pe[] = {k->acct, k->endpoints};
        st = db_exec(c,
                     "SELECT count(*) = cardinality($2::uuid[]) FROM endpoints "
                     "WHERE account_id = $1::bigint AND state <> 'deleted' "
                     "  AND id = ANY ($2::uuid[])",
                     2, pe, &r, NULL);
        if (st < 0) return st;
        int all = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!all) {
            k->bad_endpoint = 1;
            return DB_HARD;
        }
    }
    const char *p[] = {k->acct, k->user,   k->name,      prefix,
                       hash,    k->scopes, k->endpoints, k->expires};
    st = db_exec(c,
                 "WITH k AS (INSERT INTO api_keys (account_id, user_id, name, prefix, "
                 "  secret_hash, scopes, endpoint_ids, expires_at) "
                 "VALUES ($1::bigint, $2::bigint, $3, $4, $5, $6::text[], $7::uuid[], "
                 "  $8::timestamptz) RETURNING *) "
                 "SELECT " KEY_COLUMNS " FROM k",
                 8, p, &r, ss);
    if (st < 0) {
        if (!strncmp(ss, "22", 2)) k->bad_time = 1;
        return DB_HARD;
    }
    snprintf(k->id, sizeof k->id, "%s", PQgetvalue(r, 0, 0));
    k->reply = key_json(r, 0);
    PQclear(r);
    return idem_store(c, &k->im, 201, k->reply);
}

/* Reads scopes (default: both; with endpoint_ids: inference only) into a text[] literal. */
static int read_scopes(struct httpd_req *req, json_t *body, int limited, char out[32])
{
    json_t *v = json_object_get(body, "scopes");
    if (!v) {
        snprintf(out, 32, "%s", limited ? "{inference}" : "{inference,manage}");
        return 0;
    }
    unsigned bits = 0;
    size_t i;
    json_t *s;
    int ok = json_is_array(v) && json_array_size(v) > 0;
    json_array_foreach(v, i, s)
    {
        const char *n = json_string_value(s);
        unsigned bit = !n                        ? 0
                       : !strcmp(n, "inference") ? AUTH_SCOPE_INFERENCE
                       : !strcmp(n, "manage")    ? AUTH_SCOPE_MANAGE
                                                 : 0;
        if (!bit || (bits & bit)) ok = 0;
        bits |= bit;
    }
    if (!ok) {
        httpd_error(req, 400, "invalid_parameter", "scopes",
                    "field 'scopes' must be a non-empty list of distinct scopes: \"inference\", "
                    "\"manage\"");
        return -1;
    }
    if (limited && (bits & AUTH_SCOPE_MANAGE)) {
        httpd_error(req, 400, "invalid_parameter", "scopes",
                    "a key limited to some endpoints can only have the \"inference\" scope");
        return -1;
    }
    snprintf(out, 32, "{%s%s%s}", bits & AUTH_SCOPE_INFERENCE ? "inference" : "",
             bits == AUTH_SCOPE_ALL ? "," : "", bits & AUTH_SCOPE_MANAGE ? "manage" : "");
    return 0;
}

/* endpoint_ids into a uuid[] literal (caller frees *out; NULL when absent). 0 or -1. */
static int read_endpoints(struct httpd_req *req, json_t *body, char **out)
{
    *out = NULL;
    json_t *v = json_object_get(body, "endpoint_ids");
    if (!v) return 0;
    size_t i, n = json_is_array(v) ? json_array_size(v) : 0;
    int ok = n >= 1 && n <= AUTH_KEY_ENDPOINTS_MAX;
    struct buf b = {0};
    buf_append(&b, "{", 1);
    json_t *s;
    json_array_foreach(v, i, s)
    {
        const char *id = json_string_value(s);
        if (!id || !api_is_uuid(id)) ok = 0;
        if (ok) buf_printf(&b, "%s%s", i ? "," : "", id);
    }
    buf_append(&b, "}", 1);
    if (!ok) {
        buf_free(&b);
        httpd_error(req, 400, "invalid_parameter", "endpoint_ids",
                    "field 'endpoint_ids' must be a list of 1-%d endpoint ids",
                    AUTH_KEY_ENDPOINTS_MAX);
        return -1;
    }
    *out = b.data;
    return 0;
}

static void h_create_key(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    struct newkey k = {0};
    char scopes[32], uid[24];
    char *endpoints = NULL;
    struct jsonx_err je = {0};
    enum jsonx_rc rc;
    json_t *body = httpd_body_object(req);
    if (!body || httpd_reject_unknown(req, body, key_fields) != 0) goto out;
    k.name = "";
    if ((rc = jsonx_get_string(body, "name", 0, &k.name, KEY_NAME_MAX, &je)) == JSONX_BAD ||
        (rc = jsonx_get_string(body, "expires_at", 0, &k.expires, 64, &je)) == JSONX_BAD) {
        bad_field(req, rc, &je);
        goto out;
    }
    if (!jsonx_printable(k.name)) {
        httpd_error(req, 400, "invalid_parameter", "name",
                    "field 'name' must be printable characters");
        goto out;
    }
    if (k.expires && !rfc3339(k.expires)) {
        httpd_error(req, 400, "invalid_parameter", "expires_at",
                    "field 'expires_at' must be an RFC 3339 time such as 2030-01-31T00:00:00Z");
        goto out;
    }
    if (read_endpoints(req, body, &endpoints) != 0 ||
        read_scopes(req, body, endpoints != NULL, scopes) != 0)
        goto out;
    char scope[40];
    snprintf(scope, sizeof scope, "account:%s", a.account_id_str);
    if (idem_begin(req, &k.im, scope, a.account_id, req->body.data, req->body.len) != 0 ||
        idem_replay(req, c, &k.im) != 0)
        goto out;
    if (k.expires) {
        const char *pt[] = {k.expires};
        PGresult *r;
        char ss[6];
        enum db_status st = db_exec(c, "SELECT $1::timestamptz > now()", 1, pt, &r, ss);
        if (st < 0 && !strncmp(ss, "22", 2)) {
            httpd_error(req, 400, "invalid_parameter", "expires_at",
                        "field 'expires_at' is not a valid time");
            goto out;
        }
        if (st < 0) {
            httpd_error(req, 503, "database_unavailable", NULL, "could not create the key");
            goto out;
        }
        int future = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!future) {
            httpd_error(req, 400, "invalid_parameter", "expires_at",
                        "field 'expires_at' must be in the future");
            goto out;
        }
    }
    snprintf(uid, sizeof uid, "%lld", (long long)a.user_id);
    k.acct = a.account_id_str;
    k.user = a.user_id ? uid : NULL;
    k.scopes = scopes;
    k.endpoints = endpoints;
    enum db_status st = db_txn_run(c, newkey_txn, &k);
    if (k.im.replay) {
        idem_answer(req, &k.im);
    } else if (st < 0) {
        if (k.bad_endpoint)
            httpd_error(req, 404, "endpoint_not_found", "endpoint_ids",
                        "an endpoint in 'endpoint_ids' does not exist");
        else if (k.bad_time)
            httpd_error(req, 400, "invalid_parameter", "expires_at",
                        "field 'expires_at' is not a valid time");
        else
            httpd_error(req, 503, "database_unavailable", NULL, "could not create the key");
    } else {
        audit_set_object(c, a.audit_id, k.id);
        log_info("API key %s created (scopes %s)", k.id, scopes);
        /* The secret is in this reply only: a replay under the same Idempotency-Key gets the
         * key without it, because only its hash is stored anywhere. */
        json_t *o = json_deep_copy(k.reply);
        json_object_set_new(o, "key", json_string(k.secret));
        httpd_reply_json(req, 201, o);
    }
out:
    memset(k.secret, 0, sizeof k.secret);
    json_decref(k.reply);
    idem_free(&k.im);
    free(endpoints);
    json_decref(body);
    ctl_db_done(req, c);
}

static void h_list_keys(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    int64_t limit, after;
    if ((limit = httpd_query_int(req, "limit", 100, KEYS_PAGE_MAX)) < 0 ||
        (after = httpd_query_int(req, "starting_after", INT64_MAX, INT64_MAX)) < 0) {
        ctl_db_done(req, c);
        return;
    }
    char lim[24], aft[24];
    snprintf(lim, sizeof lim, "%lld", (long long)limit + 1);
    snprintf(aft, sizeof aft, "%lld", (long long)after);
    const char *p[] = {a.account_id_str, aft, lim};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "SELECT " KEY_COLUMNS " FROM api_keys k "
                                "WHERE k.account_id = $1::bigint AND k.revoked_at IS NULL "
                                "  AND k.id < $2::bigint ORDER BY k.id DESC LIMIT $3::int",
                                3, p, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not list API keys");
        return;
    }
    int n = PQntuples(r), more = n > limit;
    if (more) n = (int)limit;
    json_t *data = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(data, key_json(r, i));
    json_t *o = json_pack("{s:s, s:o, s:b}", "object", "list", "data", data, "has_more", more);
    if (more) json_object_set_new(o, "next_starting_after", json_string(PQgetvalue(r, n - 1, 0)));
    PQclear(r);
    httpd_reply_json(req, 200, o);
}

static int digits(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 18) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

static void h_revoke_key(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    const char *id = req->params[0];
    PGresult *r = NULL;
    enum db_status st = DB_NONE;
    if (digits(id)) {
        const char *p[] = {id, a.account_id_str};
        /* This process forgets its cached keys below, so the next request with the key is
         * refused (other processes: within auth.c's cache time). */
        st = db_exec(c,
                     "WITH k AS (UPDATE api_keys SET revoked_at = now() WHERE id = $1::bigint "
                     "  AND account_id = $2::bigint AND revoked_at IS NULL RETURNING *) "
                     "SELECT " KEY_COLUMNS " FROM k",
                     2, p, &r, NULL);
    }
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not revoke the key");
    } else if (st == DB_NONE) {
        httpd_error(req, 404, "api_key_not_found", NULL, "API key %s does not exist", id);
    } else {
        auth_cache_forget();
        log_info("API key %s revoked", id);
        httpd_reply_json(req, 200, key_json(r, 0));
    }
    PQclear(r);
}

const struct httpd_route accounts_routes[] = {
    {"POST", "/v1/auth/signup", h_signup}, {"POST", "/v1/auth/login", h_login},
    {"POST", "/v1/auth/logout", h_logout}, {"POST", "/v1/auth/password", h_password},
    {"GET", "/v1/auth/me", h_me},          {"POST", "/v1/api-keys", h_create_key},
    {"GET", "/v1/api-keys", h_list_keys},  {"DELETE", "/v1/api-keys/{}", h_revoke_key},
};
const size_t accounts_nroutes = sizeof accounts_routes / sizeof accounts_routes[0];
