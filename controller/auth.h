/* auth: who is calling. The only code that makes or checks API keys, passwords, sessions and
 * CSRF tokens, and the one place every authenticated request passes through (auth_require), so
 * that what every route must check — scopes, endpoint limits, CSRF, the audit row — is checked
 * once here and cannot be forgotten by a handler.
 *
 * API keys are "orp_sk_" + 48 hex characters (192 random bits) + 8 hex characters of checksum
 * (the first 32 bits of the SHA-256 of the random part), so a mistyped key is refused before any
 * database round trip. Keys of the older form "sk-orp-" + 48 hex are still accepted. Only the
 * SHA-256 of a key is stored (a slow hash adds nothing for a random 192-bit secret); its first 14
 * characters are kept as the display prefix.
 *
 * Passwords are hashed with argon2id at OWASP's parameters (19 MiB, 2 passes, 1 lane). Sessions
 * are a cookie holding 256 random bits, of which only the SHA-256 is stored; the CSRF token of a
 * session is derived from its secret (so it is not stored either) and must come back in the
 * X-CSRF-Token header of every state-changing request authenticated by the cookie.
 *
 * A suspended account's keys and sessions get 403 account_suspended, on every listener. */
#ifndef ORP_AUTH_H
#define ORP_AUTH_H

#include "ctl.h"

#define AUTH_KEY_LEN 63        /* "orp_sk_" + 48 hex + 8 hex checksum */
#define AUTH_LEGACY_KEY_LEN 55 /* "sk-orp-" + 48 hex */
#define AUTH_PREFIX_LEN 14     /* characters of a key shown to tell keys apart */

#define AUTH_SCOPE_INFERENCE 1u /* call endpoints through the gateway */
#define AUTH_SCOPE_MANAGE 2u    /* everything on the public API */
#define AUTH_SCOPE_ALL 3u

#define AUTH_SESSION_COOKIE "orp_session"
#define AUTH_TOKEN_HEX 64 /* a session secret: 256 random bits as hex */
#define AUTH_CSRF_HEX 32
/* OWASP (2023) minimum for argon2id: m = 19 MiB, t = 2, p = 1. */
#define AUTH_ARGON2_M_KIB 19456u
#define AUTH_ARGON2_T 2u
#define AUTH_PASSWORD_HASH_MAX 128 /* bytes of an encoded argon2id hash, with room */

/* Creates a key with every scope for account_id (and user_id, may be 0); writes the secret
 * (shown once) into key_out[AUTH_KEY_LEN + 1]. DB_ROWS on success. */
enum db_status auth_create_key(PGconn *c, int64_t account_id, int64_t user_id, const char *name,
                               char key_out[AUTH_KEY_LEN + 1]);

/* Makes a new random key with its checksum (no database). 0 or -1. */
int auth_key_new(char key_out[AUTH_KEY_LEN + 1]);
/* 1 when key has the shape of a key of either form and, for the new form, its checksum holds. */
int auth_key_well_formed(const char *key);

/* argon2id hash of password into out (an encoded "$argon2id$v=19$m=19456,t=2,p=1$…" string).
 * 0 or -1. */
int auth_password_hash(const char *password, char out[AUTH_PASSWORD_HASH_MAX]);
/* 1 when password matches encoded (constant time), else 0 (also for a malformed hash). */
int auth_password_verify(const char *encoded, const char *password);

/* The CSRF token of a session secret (hex, derived: never stored). */
void auth_csrf_token(const char *session_token, char out[AUTH_CSRF_HEX + 1]);

/* Starts a session for user_id; its secret goes to token_out (for the cookie only). */
enum db_status auth_session_new(PGconn *c, int64_t user_id, char token_out[AUTH_TOKEN_HEX + 1]);
/* Adds the Set-Cookie header for token to the reply (NULL: a cookie that clears the session). */
void auth_set_cookie(struct httpd_req *req, const char *token);
/* The session cookie of the request (borrowed) or NULL. */
const char *auth_session_cookie(struct httpd_req *req);

/* Checks who is calling: the Authorization: Bearer key, else the session cookie (plus its CSRF
 * token on state-changing methods). Then what the credential allows: a route of the gateway needs
 * the inference scope; every other route needs the manage scope. A state-changing call on the
 * public API gets its audit_log row here. Returns 0 and fills out, or answers 401/403/404/503
 * and returns -1. */
int auth_require(struct httpd_req *req, PGconn *c, struct auth_ctx *out);

/* For the gateway, once the model named an endpoint of the caller's account: 0 when the
 * credential may call it; else answers 404 model_not_found (exactly like a missing model) and
 * returns -1. No query: the limit is in a. */
int auth_endpoint_allowed(struct httpd_req *req, const struct auth_ctx *a, const char *endpoint_id,
                          const char *model);

/* A pooled connection with the caller authenticated into a, or NULL after answering (401/503).
 * Release it with ctl_db_done(). */
PGconn *auth_db(struct httpd_req *req, struct auth_ctx *a);

/* Empties this process's cache of authenticated keys (auth.c keeps each for a second): called
 * when a key is revoked or an account suspended, so that it takes effect on the next request. */
void auth_cache_forget(void);

/* The bearer token of a request, or NULL. Borrowed. */
const char *auth_bearer(struct httpd_req *req);

/* The client's address as text ("" when unknown). */
void auth_client_address(struct httpd_req *req, char *out, size_t n);

/* 1 when the request is one of the gateway's (inference) routes. */
int auth_is_inference_route(const struct httpd_req *req);

#endif
