/* metrics: the agent's GET /metrics, in the Prometheus text format (0.0.4): live readings of each
 * GPU, the state, restarts and uptime of each replica, and how heartbeats go.
 *
 * The agent's loop is single-threaded and the supervisor is not thread-safe, so the HTTP thread
 * never looks at the supervisor: the loop builds a snapshot (plain copies) every tick and publishes
 * it under the server's mutex; a scrape renders the latest snapshot under the same mutex. This
 * module owns that snapshot and the listener; it changes nothing else. */
#ifndef ORP_AGENT_METRICS_H
#define ORP_AGENT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "inventory.h"
#include "supervisor.h"
#include "util.h"

struct metrics_replica {
    char replica_id[SUP_ID_MAX];
    int64_t epoch;
    enum sup_state state;
    int64_t restarts;
    int64_t started_ms; /* monotonic start of the current process; 0 when there is none */
};

struct metrics_snapshot {
    struct inv_gpu_sample *gpus; /* owned */
    size_t ngpus;
    struct metrics_replica *replicas; /* owned */
    size_t nreplicas;
    int64_t heartbeat_ok;      /* heartbeats the controller answered 200, since start */
    int64_t heartbeat_failed;  /* heartbeats that got no answer or another status */
    int64_t last_heartbeat_ms; /* monotonic time of the last good one; 0 when none yet */
};

/* Copies the supervisor's replicas into snap->replicas (replacing what was there). Call from the
 * loop's thread only. 0, or -1 when out of memory. */
int metrics_snapshot_replicas(struct metrics_snapshot *snap, const struct sup *s);
/* Copies n GPU readings into snap->gpus (replacing what was there). 0, or -1 when out of memory. */
int metrics_snapshot_gpus(struct metrics_snapshot *snap, const struct inv_gpu_sample *g, size_t n);
/* Frees the arrays; the counters stay. Accepts NULL. */
void metrics_snapshot_free(struct metrics_snapshot *snap);

/* Appends the text exposition of snap to out; ages and uptimes are taken at now_ms (monotonic).
 * Label values are escaped as the format requires (\\, \", \n). 0, or -1 when out of memory. */
int metrics_render(const struct metrics_snapshot *snap, int64_t now_ms, struct buf *out);

struct metrics_server;
/* Listens on host:port (port 0: any free port, see metrics_port). NULL with a message in err. */
struct metrics_server *metrics_start(const char *host, int port, char *err, size_t errlen);
int metrics_port(const struct metrics_server *m);
/* Makes snap the one scrapes see: steals its arrays (snap's pointers are cleared, its counters
 * kept) and frees the previous ones. */
void metrics_publish(struct metrics_server *m, struct metrics_snapshot *snap);
/* Stops the listener and frees everything. Accepts NULL. */
void metrics_stop(struct metrics_server *m);

#endif
