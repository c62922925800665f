/* audit: the audit log of the public API. Every state-changing call that passes auth_require
 * gets one audit_log row before its handler runs (who: account, user, key; what: method, route
 * pattern, path, object id; when; from which address; the request id of the logs), and the
 * routes that create an object add its id once they know it. Calls made before anyone is
 * authenticated (sign-up, log-in) are recorded by their handlers. Accounts read their own
 * entries at GET /v1/audit-log; admins read everyone's (?account_id= to pick one). This module is
 * the only writer of audit_log. */
#ifndef ORP_AUDIT_H
#define ORP_AUDIT_H

#include "ctl.h"

extern const struct httpd_route audit_routes[];
extern const size_t audit_nroutes;

/* Records the call of req by a (sets a->audit_id). 0, or -1 when the row could not be written. */
int audit_record(struct httpd_req *req, PGconn *c, struct auth_ctx *a);
/* Records a call made by no authenticated caller yet (ids may be 0 when unknown). Returns the
 * row id, or 0 on failure (logged). */
int64_t audit_record_anonymous(struct httpd_req *req, PGconn *c, int64_t account_id,
                               int64_t user_id, const char *object_id);
/* Sets the object id of an audit row (a created object's id). Failure is logged only. */
void audit_set_object(PGconn *c, int64_t audit_id, const char *object_id);

#endif
