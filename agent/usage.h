/* usage: ships the runtimes' usage journals to the controller without losing or inventing a line.
 *
 * Each replica directory (STATE_DIR/replicas/<replica_id>-<epoch>/) holds usage.jsonl, appended and
 * fsync'd by the runtime, and usage.acked, the byte offset up to which the controller has
 * acknowledged what we sent. This module is the only reader of usage.jsonl and the only writer of
 * usage.acked. Reading never moves the offset: only usage_commit() does, after the controller said
 * it stored everything we sent. A crash between the two resends lines, which is harmless (the
 * controller dedupes on request_id); the reverse order could lose them, which is not.
 *
 * Every directory under replicas/ is read, whether its replica still runs, was stopped, or belongs
 * to a previous run of the agent, so usage survives agent restarts and replica stops alike. */
#ifndef ORP_AGENT_USAGE_H
#define ORP_AGENT_USAGE_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* At most this many usage items per heartbeat: bounds the request body (~200 bytes each, so
 * ~100 KiB) and the controller's transaction, while still draining a backlog of 30 000 lines a
 * minute at a 1 s heartbeat. */
#define USAGE_MAX_ITEMS 500

/* Reads complete lines of dir/usage.jsonl from the acknowledged offset and appends up to max_items
 * items to arr (lines of the agent's own completion probes, request ids "probe-…", are skipped), each with replica_id and epoch added (finish_reason is passed on when present).
 * Malformed lines are skipped with a warning (and count as read); a last line without '\n' is
 * left for later. *start_off gets the acknowledged offset, *end_off the offset just past the last
 * line consumed. Returns the number of items appended (0 when the journal does not exist yet), or
 * -1 on an I/O error. */
int usage_read_dir(const char *dir, const char *replica_id, int64_t epoch, size_t max_items,
                   json_t *arr, int64_t *start_off, int64_t *end_off);

/* The acknowledged offset of dir (0 when usage.acked is absent or unreadable). */
int64_t usage_acked_offset(const char *dir);
/* Atomically records that everything before offset was acknowledged. 0 or -1. */
int usage_ack(const char *dir, int64_t offset);

/* What one heartbeat sent: where each journal's read stopped, to be committed once acked. */
struct usage_pos {
    char dir[PATH_MAX];
    int64_t end_off;
};
struct usage_batch {
    struct usage_pos *pos; /* owned */
    size_t npos;
    size_t items; /* items appended to the array */
};

/* Reads every replica directory under replicas_dir (named <replica_id>-<epoch>) into arr, at most
 * max_items in all. Fills batch (free with usage_batch_free()). Returns the number of items. */
size_t usage_collect(const char *replicas_dir, size_t max_items, json_t *arr,
                     struct usage_batch *batch);
/* Advances every journal in batch to where its read stopped. 0, or -1 if one failed (the others
 * are still advanced; the failed one is simply sent again). */
int usage_commit(const struct usage_batch *batch);
void usage_batch_free(struct usage_batch *batch);

/* Splits a replica directory name "<replica_id>-<epoch>". 0, or -1 if the name is not one. */
int usage_parse_dir_name(const char *name, char *replica_id, size_t id_len, int64_t *epoch);

#endif
