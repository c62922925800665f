/* billing_api: what an account can read about its money (balance, ledger, usage by period) and
 * the operator's credit route. Credits go through billing_credit(), the one place a payment
 * provider would call after a successful charge. Amounts are integer micro-units with a display
 * string beside them. */
#ifndef ORP_BILLING_API_H
#define ORP_BILLING_API_H

#include <stdint.h>

#include "db.h"
#include "httpd.h"

extern const struct httpd_route billing_routes[];
extern const size_t billing_nroutes;

/* Credits amount_micros to account_id under idempotency_key (a retried call with the same key
 * credits once). DB_ROWS when written now, DB_NONE when the key existed already. */
enum db_status billing_credit(PGconn *c, int64_t account_id, int64_t amount_micros,
                              const char *idempotency_key, const char *memo);

/* The account's balance (sum of its ledger entries) into *out. */
enum db_status billing_balance(PGconn *c, const char *account_id, int64_t *out);

/* The monthly spend cap at deploy and start time: 0 when the account's usage charges this month
 * are below its cap (or it has none); -1 after answering 402 spend_cap_reached (or 503). */
int billing_spend_cap_check(struct httpd_req *req, PGconn *c, const char *account_id);

/* "12.345678 USD" style display of micro-units (out: at least 40 bytes). */
void billing_display(int64_t micros, char *out, size_t n);

#endif
