/* credit: see credit.h. */
#include "credit.h"

#include <stdio.h>

#include "replica.h"

struct pass {
    const char *grace;
    int stopped;
};

static enum db_status pass_txn(PGconn *c, void *arg)
{
    struct pass *p = arg;
    /* Balances of accounts whose state may change: sum once, use twice. */
    enum db_status st =
        db_cmd(c,
               "WITH b AS (SELECT a.id, a.overdrawn_since, "
               "    (SELECT COALESCE(sum(l.amount_micros), 0) FROM ledger_entries l "
               "     WHERE l.account_id = a.id) AS balance FROM accounts a) "
               "UPDATE accounts a SET overdrawn_since = CASE WHEN b.balance < 0 THEN now() END "
               "FROM b WHERE a.id = b.id AND ((b.balance < 0) <> (b.overdrawn_since IS NOT NULL))",
               0, NULL);
    if (st < 0) return st;
    const char *prm[] = {p->grace};
    PGresult *r;
    st = db_exec(c,
                 "UPDATE endpoints e SET state = 'stopped', "
                 "  state_reason = 'out of credit since ' || "
                 "    to_char(a.overdrawn_since AT TIME ZONE 'UTC', "
                 "            'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || '; add credit, then start it' "
                 "FROM accounts a WHERE a.id = e.account_id AND e.state = 'active' "
                 "  AND e.billing_mode = 'time' "
                 "  AND a.overdrawn_since < now() - $1::bigint * interval '1 second' "
                 "RETURNING e.id, e.name, a.id",
                 1, prm, &r, NULL);
    if (st < 0) return st;
    st = replica_stop_endpoints(c, r, "out of credit", &p->stopped);
    if (st < 0) return st;
    /* The monthly spend cap: time-billed endpoints of an account whose usage charges this month
     * reached its cap stop at once (charges come per billing period, so they may pass the cap by
     * up to one period's worth). Value-billed requests are held to the cap by the leases. */
    st = db_exec(c,
                 "WITH capped AS (SELECT a.id, account_spend_cap(a.id) AS cap, "
                 "    account_month_spend(a.id) AS spent FROM accounts a "
                 "  WHERE EXISTS (SELECT 1 FROM endpoints e WHERE e.account_id = a.id "
                 "    AND e.state = 'active' AND e.billing_mode = 'time')) "
                 "UPDATE endpoints e SET state = 'stopped', "
                 "  state_reason = 'monthly spend cap of ' || to_char(k.cap / 1000000.0, "
                 "    'FM999999999990.000000') || ' USD reached; the operator can raise it, or "
                 "start it again next month' "
                 "FROM capped k WHERE k.id = e.account_id AND k.cap IS NOT NULL "
                 "  AND k.spent >= k.cap AND e.state = 'active' AND e.billing_mode = 'time' "
                 "RETURNING e.id, e.name, k.id",
                 0, NULL, &r, NULL);
    if (st < 0) return st;
    int capped = 0;
    st = replica_stop_endpoints(c, r, "monthly spend cap reached", &capped);
    p->stopped += capped;
    return st < 0 ? st : DB_ROWS;
}

int credit_pass(PGconn *c, int64_t grace_s)
{
    char g[24];
    snprintf(g, sizeof g, "%lld", (long long)grace_s);
    struct pass p = {g, 0};
    return db_txn_run(c, pass_txn, &p) < 0 ? -1 : p.stopped;
}
