/* credit: what happens when an account runs out of money. Run by the leader after metering. It
 * keeps accounts.overdrawn_since (when the balance went below zero) and, once an account has been
 * overdrawn longer than the grace period, stops its time-billed endpoints with a reason the owner
 * sees ("out of credit"); and stops at once the time-billed endpoints of an account whose usage
 * charges this month reached its monthly spend cap ("monthly spend cap of … reached"). Requests
 * and deploys are refused earlier, at admission (402). The only writer of
 * accounts.overdrawn_since, and of endpoints stopped for credit or for the cap. */
#ifndef ORP_CREDIT_H
#define ORP_CREDIT_H

#include <stdint.h>

#include "db.h"

/* One pass; returns the number of endpoints stopped, or -1. */
int credit_pass(PGconn *c, int64_t grace_s);

#endif
