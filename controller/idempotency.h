/* idempotency: the Idempotency-Key header on POSTs that create something. The same key with the
 * same request gets the reply of the first call again (status and body); the same key with
 * another request gets 409; concurrent duplicates make one object.
 *
 * How: the key's row in idempotency_keys is inserted first thing in the transaction that makes
 * the object, and the reply is stored in it before that transaction commits. A concurrent
 * duplicate's insert waits on the row's unique index until the first commits, then finds the
 * stored reply; if the first rolled back (an error), the duplicate goes ahead as if it were first.
 * Errors are therefore not stored: a retry after a 4xx runs again (and fails the same way). A
 * cheap look-up before any work answers plain retries at once, even when the state changed since
 * (a quota now reached must not turn the replay of a success into a 403). Keys are kept 24 hours.
 *
 * Usage in a handler:
 *   idem_begin(req, &im, scope, …)   -> -1: answered 400 (malformed key)
 *   idem_replay(req, c, &im)         -> 1: answered (stored reply or 409), stop
 *   in the transaction: idem_claim() first, idem_store() last
 *   after it: im.replay ? idem_answer(req, &im) : reply as usual;  idem_free(&im) */
#ifndef ORP_IDEMPOTENCY_H
#define ORP_IDEMPOTENCY_H

#include <jansson.h>

#include "ctl.h"

#define IDEM_KEY_MAX 255

struct idem {
    int present; /* the request carried a key */
    char scope[300];
    char key[IDEM_KEY_MAX + 1];
    char account_id[24]; /* "" when no account exists yet */
    char hash[65];
    /* set when an earlier call already answered under this key */
    int replay;
    int mismatch; /* … for another request: 409 */
    unsigned status;
    char *body; /* malloc'd; idem_free frees it */
};

/* Reads Idempotency-Key. scope separates key spaces (an account's; a sign-up's e-mail); what is
 * hashed is the method, the route and hash_input (the body, or the part of it that may be
 * stored). 0, or -1 after answering 400. */
int idem_begin(struct httpd_req *req, struct idem *im, const char *scope, int64_t account_id,
               const char *hash_input, size_t len);
/* Before doing any work: 1 after answering from a stored reply (or 409), 0 to go on, -1 after
 * answering 503. */
int idem_replay(struct httpd_req *req, PGconn *c, struct idem *im);
/* First statement of the effect's transaction. DB_ROWS: this call owns the key, go on; DB_NONE:
 * another call answered under it (im->replay set): do nothing more; < 0: database error. */
enum db_status idem_claim(PGconn *c, struct idem *im);
/* Last statement of the transaction: stores the reply (body is borrowed). */
enum db_status idem_store(PGconn *c, struct idem *im, unsigned status, const json_t *body);
/* Answers from im (after im->replay): the stored reply, or 409 for another request. */
void idem_answer(struct httpd_req *req, struct idem *im);
void idem_free(struct idem *im);

#endif
