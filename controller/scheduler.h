/* scheduler: replica placement. sched_place() is the pure decision (unit-tested without a
 * database); sched_pass() loads the fleet, places every pending replica it can, and writes the
 * assignments in one transaction. The only code that moves a replica out of 'pending'.
 *
 * Policy: a replica of width N needs N free healthy devices of the endpoint's kind on ONE host.
 * Among hosts that fit, the best fit wins (fewest free devices of that kind left), so that wide
 * replicas still find empty hosts; ties go to the lower host id, so placement is deterministic.
 * NVLink/NUMA-aware choice of which N devices comes with the real GPU inventory. */
#ifndef ORP_SCHEDULER_H
#define ORP_SCHEDULER_H

#include <libpq-fe.h>
#include <stdint.h>

#define SCHED_MAX_DEVICES 64 /* per host; an 8-GPU box plus headroom for CPU slots */

struct sched_device {
    char uuid[96];
    char kind[8]; /* gpu | cpu */
    int idx;
    int free; /* healthy and not held by a live replica */
};

struct sched_host {
    int64_t id;
    int ndevices;
    struct sched_device devices[SCHED_MAX_DEVICES];
};

/* Chooses a host for a replica needing n devices of kind. Returns the index into hosts and
 * fills chosen[0..n) with device indexes into that host's devices, or -1 when none fits.
 * Marks the chosen devices as not free, so consecutive calls see the result. */
int sched_place(struct sched_host *hosts, int nhosts, const char *kind, int n, int *chosen);

/* One scheduling pass over the database; returns the number of replicas placed or -1. */
int sched_pass(PGconn *c);

#endif
