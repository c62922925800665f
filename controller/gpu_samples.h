/* gpu_samples: the latest GPU readings agents send on their heartbeats (docs/contracts.md,
 * "gpus"), kept one narrow row per GPU in gpu_samples (schema 014) for the admin's hosts page. It
 * is the only writer of that table. Readings are telemetry: a malformed one is dropped with a
 * warning and never fails the heartbeat that carried it. */
#ifndef ORP_GPU_SAMPLES_H
#define ORP_GPU_SAMPLES_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdint.h>

/* At most this many readings per heartbeat: a host has at most 16 GPUs today; more is not a host.
 */
#define GPU_SAMPLES_MAX 64

/* Stores the readings in gpus (borrowed; NULL or absent: nothing to do) for host_id's own GPUs
 * (a uuid of another host, or a CPU slot, is ignored). 0, or -1 when the database failed (logged;
 * the heartbeat is answered all the same). */
int gpu_samples_store(PGconn *c, int64_t host_id, json_t *gpus);

#endif
