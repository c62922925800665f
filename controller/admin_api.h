/* admin_api: the operator's REST routes over accounts (list, get, suspend, unsuspend), the model
 * catalog (create, update, retire), GPU types with their versioned prices, and enrollment tokens
 * (list, revoke). Every route here is for admins only: anyone else gets 403 admin_only before an
 * id is even looked at. This file owns accounts.suspended_at / suspend_reason, the writes to
 * models made through the API (the CLI's `model add` is main.c's), gpu_types and gpu_type_prices,
 * and enrollment_tokens.revoked_at. */
#ifndef ORP_ADMIN_API_H
#define ORP_ADMIN_API_H

#include "httpd.h"

extern const struct httpd_route admin_routes[];
extern const size_t admin_nroutes;

#endif
