/* scheduler: replica placement. sched_place() is the pure decision (unit-tested without a
 * database); sched_pass() loads the fleet, places every pending replica it can, and writes the
 * assignments in one transaction. The only code that moves a replica out of 'pending'.
 *
 * Policy: a replica of width N needs N free healthy devices of the endpoint's kind on ONE host
 * that is not cordoned and, when the endpoint names a pool, is in that pool, and whose weights
 * cache has the model or room for it (when the agent reports its disk). Which N devices:
 *
 *   tier 0  mutual NVLink peers that share a NUMA node
 *   tier 1  mutual NVLink peers
 *   tier 2  devices that share a NUMA node
 *   tier 3  any N free devices
 *
 * An unknown NUMA node (-1) matches every node, so CPU slots and hosts whose kernel does not say
 * are tier 0 whenever NVLink is not in question: a device with no NVLink peers at all counts as
 * "peers" only for N = 1. Within a tier, the set whose NVLink island has the fewest free devices
 * wins (a 2-GPU replica takes the half-used island and leaves the whole one to a 4-GPU replica).
 * Across hosts the same order: the best tier, then the tightest island, then the best fit (fewest
 * free devices of that kind on the host), then the lower host id, so placement is deterministic.
 * Without NVLink every island is one device and best fit alone decides, as before topology.
 *
 * Sets are found greedily: from each free device as a seed, add the lowest-indexed free devices
 * that are peers of everything taken so far. For NVLink islands (cliques) and fully connected
 * NVSwitch boxes, which is what GPU servers are, this finds every island; for odd partial meshes it
 * may miss a clique and fall back a tier, never place on a non-free device. */
#ifndef ORP_SCHEDULER_H
#define ORP_SCHEDULER_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#define SCHED_MAX_DEVICES 64 /* per host; an 8-GPU box plus headroom for CPU slots */

struct sched_device {
    char uuid[96];
    char kind[8];   /* gpu | cpu */
    char model[96]; /* the GPU type: gpus.model, "NVIDIA H100 80GB HBM3" */
    int idx;
    int free;       /* not held by a live replica */
    int healthy;    /* no uncorrected ECC errors or retired pages reported */
    int numa;       /* NUMA node, -1 unknown */
    uint64_t peers; /* bit j: NVLink peer of devices[j] of the same host */
};

/* sched_place's memo of the best set of one width on one host, valid while the host's usable
 * devices are exactly `mask` (so any change to a device's free or healthy flag, or another kind,
 * misses it). Zeroed memory is an empty memo. */
#define SCHED_FIT_WIDTHS 8
/* Room for the names of the models a host has cached: a few dozen at most on a real host. */
#define SCHED_CACHED_MAX 2048
struct sched_fit {
    uint64_t mask;
    char kind; /* the request kind's first letter; 0: empty */
    char ok;   /* a set exists */
    char tier; /* its tier and island, as best_on_host found them */
    short island;
};

struct sched_host {
    int64_t id;
    char pool[64];
    int cordoned;
    int ndevices;
    struct sched_device devices[SCHED_MAX_DEVICES];
    struct sched_fit fit[SCHED_FIT_WIDTHS]; /* by width - 1; see sched_fit */
    int64_t disk_free; /* room for a new model in the agent's weights cache; -1 unknown */
    char cached[SCHED_CACHED_MAX]; /* models cached there, each as "\n<name>\n" (joined) */
};

/* What one replica needs. pool NULL or "": any pool; gpu_type NULL or "": any model of GPU.
 * model and bytes: the model's name and the size of its weights when they must be fetched into
 * the host's cache (0: a local source, or unknown), so that only a host with that much room, or
 * with the model cached, is chosen. */
struct sched_req {
    const char *kind;
    int n;
    const char *pool;
    const char *gpu_type;
    const char *model;
    int64_t bytes;
};

/* Chooses a host for req. Returns the index into hosts and fills chosen[0..n) with device
 * indexes into that host's devices, or -1 when none fits, with why (when not NULL) set to the
 * customer-readable reason: "no capacity: needs 4×GPU on one host; largest free block is 2".
 * Marks the chosen devices as not free, so consecutive calls see the result. */
int sched_place(struct sched_host *hosts, int nhosts, const struct sched_req *req, int *chosen,
                char *why, size_t whylen);

/* One scheduling pass over the database; returns the number of replicas placed or -1. */
int sched_pass(PGconn *c);

/* A placement policy: sched_place, or another one to compare it with (ops/bench/placement replays
 * the same arrivals with random fit through the same pass). */
typedef int (*sched_place_fn)(struct sched_host *hosts, int nhosts, const struct sched_req *req,
                              int *chosen, char *why, size_t whylen);
/* sched_pass with another policy. */
int sched_pass_policy(PGconn *c, sched_place_fn place);

#endif
