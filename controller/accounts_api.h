/* accounts_api: people and their credentials on the public API: sign-up (the operator may turn
 * it off with --signup off), log-in with e-mail and password (a session cookie), log-out,
 * password change, GET /v1/auth/me (with the session's CSRF token), and an account's API keys
 * (create with optional scopes, endpoint limits and expiry; list; revoke). */
#ifndef ORP_ACCOUNTS_API_H
#define ORP_ACCOUNTS_API_H

#include "httpd.h"

extern const struct httpd_route accounts_routes[];
extern const size_t accounts_nroutes;

#endif
