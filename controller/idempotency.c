/* idempotency: see idempotency.h. The only code that reads or writes idempotency_keys. */
#include "idempotency.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonx.h"
#include "log.h"
#include "util.h"

int idem_begin(struct httpd_req *req, struct idem *im, const char *scope, int64_t account_id,
               const char *hash_input, size_t len)
{
    memset(im, 0, sizeof *im);
    const char *k = httpd_header(req, "Idempotency-Key");
    if (!k) return 0;
    size_t n = strlen(k);
    int ok = n >= 1 && n <= IDEM_KEY_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = k[i] > 0x20 && k[i] < 0x7f;
    if (!ok) {
        httpd_error(req, 400, "invalid_idempotency_key", "Idempotency-Key",
                    "the Idempotency-Key header must be 1-%d printable ASCII characters without "
                    "spaces",
                    IDEM_KEY_MAX);
        return -1;
    }
    im->present = 1;
    snprintf(im->key, sizeof im->key, "%s", k);
    snprintf(im->scope, sizeof im->scope, "%s", scope);
    if (account_id) snprintf(im->account_id, sizeof im->account_id, "%lld", (long long)account_id);
    struct buf b = {0};
    buf_printf(&b, "%s %s\n", req->method, req->route ? req->route->pattern : req->url);
    buf_append(&b, hash_input, len);
    util_sha256_hex(b.data ? b.data : "", b.len, im->hash);
    buf_free(&b);
    return 0;
}

/* Reads the stored row into im (replay, mismatch, status, body). DB_ROWS when there is one. */
static enum db_status lookup(PGconn *c, struct idem *im)
{
    const char *p[] = {im->scope, im->key};
    PGresult *r;
    enum db_status st = db_exec(c,
                                "SELECT request_hash, status, body FROM idempotency_keys "
                                "WHERE scope = $1 AND key = $2 "
                                "  AND created_at > now() - interval '24 hours' AND status > 0",
                                2, p, &r, NULL);
    if (st != DB_ROWS) {
        if (st == DB_NONE) PQclear(r);
        return st;
    }
    im->replay = 1;
    im->mismatch = strcmp(PQgetvalue(r, 0, 0), im->hash) != 0;
    im->status = (unsigned)db_int(r, 0, 1);
    free(im->body);
    im->body = strdup(PQgetvalue(r, 0, 2));
    PQclear(r);
    return DB_ROWS;
}

int idem_replay(struct httpd_req *req, PGconn *c, struct idem *im)
{
    if (!im->present) return 0;
    enum db_status st = lookup(c, im);
    if (st < 0) {
        req->retry_after = 1;
        httpd_error(req, 503, "database_unavailable", NULL, "could not check the idempotency key");
        return -1;
    }
    if (st == DB_NONE) return 0;
    idem_answer(req, im);
    return 1;
}

enum db_status idem_claim(PGconn *c, struct idem *im)
{
    if (!im->present) return DB_ROWS;
    const char *p[] = {im->scope, im->key, im->account_id[0] ? im->account_id : NULL, im->hash};
    enum db_status st = db_cmd(c,
                               "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 "
                               "AND created_at <= now() - interval '24 hours'",
                               2, p);
    if (st < 0) return st;
    /* Waits here while a concurrent call holding the same key is in its transaction. */
    st = db_cmd(c,
                "INSERT INTO idempotency_keys (scope, key, account_id, request_hash) "
                "VALUES ($1, $2, $3::bigint, $4) ON CONFLICT (scope, key) DO NOTHING",
                4, p);
    if (st != DB_NONE) return st;
    st = lookup(c, im);
    /* A row without a reply cannot be seen: it is written in the same transaction as the reply. */
    return st == DB_ROWS ? DB_NONE : st < 0 ? st : DB_HARD;
}

enum db_status idem_store(PGconn *c, struct idem *im, unsigned status, const json_t *body)
{
    if (!im->present) return DB_ROWS;
    char *s = jsonx_dump(body);
    if (!s) return DB_HARD;
    char st_s[8];
    snprintf(st_s, sizeof st_s, "%u", status);
    const char *p[] = {im->scope, im->key, st_s, s};
    enum db_status st = db_cmd(c,
                               "UPDATE idempotency_keys SET status = $3::int, body = $4 "
                               "WHERE scope = $1 AND key = $2",
                               4, p);
    free(s);
    return st;
}

void idem_answer(struct httpd_req *req, struct idem *im)
{
    if (im->mismatch) {
        httpd_error(req, 409, "idempotency_key_reused", "Idempotency-Key",
                    "the Idempotency-Key '%s' was used for another request", im->key);
        return;
    }
    log_info("replayed the reply stored under Idempotency-Key '%s'", im->key);
    snprintf(req->extra_headers + strlen(req->extra_headers),
             sizeof req->extra_headers - strlen(req->extra_headers), "%sIdempotent-Replayed: true",
             req->extra_headers[0] ? "\r\n" : "");
    httpd_reply_raw(req, im->status, "application/json", im->body, strlen(im->body));
}

void idem_free(struct idem *im)
{
    free(im->body);
    im->body = NULL;
}
