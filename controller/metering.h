/* metering: turns what was used into ledger entries, once. Run by the leader every pass; safe to
 * run concurrently (two controllers, or a pass repeated after a crash): every entry's idempotency
 * key is (kind, endpoint, period) and the rows it bills are locked and marked in the same
 * transaction, so a second run finds nothing left to bill and any entry it would write again is
 * refused by the key.
 *
 *   time   the seconds each replica was ready (ready_intervals, kept by a trigger on replicas) x
 *          its devices x the device price in force at the period's start, for endpoints billed by
 *          time; the owner pays.
 *   value  prompt and completion tokens of usage events x the model's token prices in force at
 *          the period's start, for endpoints billed by value.
 *
 * Only closed periods are billed (a period is --billing-period-s long, aligned to the Unix epoch;
 * 60 s in production). Usage that arrives late is billed in the period it arrived in. Amounts are
 * computed on a period's totals and rounded up to a whole micro-unit, and written as negative
 * entries (debits). The only code that writes usage entries to ledger_entries. */
#ifndef ORP_METERING_H
#define ORP_METERING_H

#include <stdint.h>

#include "db.h"

/* One metering pass. Returns the number of ledger entries written, or -1. */
int metering_pass(PGconn *c, int64_t period_s);

#endif
