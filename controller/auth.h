/* auth: API keys. The only code that creates or verifies them. A key is "sk-orp-" followed by
 * 48 hex characters (192 random bits); only its SHA-256 is stored (a fast hash is enough for a
 * high-entropy secret; passwords, later, get argon2id). The first 14 characters are kept as the
 * display prefix. */
#ifndef ORP_AUTH_H
#define ORP_AUTH_H

#include "ctl.h"

#define AUTH_KEY_LEN 55 /* "sk-orp-" + 48 hex */

/* Creates a key for account_id (and user_id, may be 0); writes the secret (shown once) into
 * key_out[AUTH_KEY_LEN + 1]. DB_ROWS on success. */
enum db_status auth_create_key(PGconn *c, int64_t account_id, int64_t user_id, const char *name,
                               char key_out[AUTH_KEY_LEN + 1]);

/* Checks the request's Authorization: Bearer key. Returns 0 and fills out, or answers 401/503
 * and returns -1. */
int auth_require(struct httpd_req *req, PGconn *c, struct auth_ctx *out);

/* A pooled connection with the caller authenticated into a, or NULL after answering (401/503).
 * Release it with ctl_db_done(). */
PGconn *auth_db(struct httpd_req *req, struct auth_ctx *a);

/* The bearer token of a request, or NULL. Borrowed. */
const char *auth_bearer(struct httpd_req *req);

#endif
