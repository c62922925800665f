/* logship: the runtimes' stdout and stderr, kept bounded on the host and shipped to the
 * controller (which keeps the last lines per replica and streams them to the customer:
 * GET /v1/endpoints/{id}/logs).
 *
 * Each replica directory holds stdout.log and runtime.log (the runtime's stderr, where its log
 * lines go), appended by the runtime (O_APPEND), and for each a cursor file stdout.shipped /
 * stderr.shipped: "<base> <acked>\n", where base counts the bytes the file held before each time
 * it was cut back to empty, and acked is the offset in the current file up to which the controller
 * acknowledged what we sent. A line's position (base + its offset) never repeats for a stream,
 * so the controller stores each line once however often it is resent (after a crash between the
 * send and the acknowledgement, or after an agent restart).
 *
 * Bounds, and what gives when they are hit:
 *   - on the host: a log file past file_max bytes is cut back to empty at the next heartbeat
 *     (the runtime appends, so it carries on at offset 0); lines not yet acknowledged (the
 *     controller unreachable for that long) are dropped with a warning. A line written in the
 *     instant between the size check and the cut may be lost too.
 *   - per heartbeat: LOGSHIP_MAX_ITEMS lines and LOGSHIP_MAX_BYTES bytes in all; the rest waits
 *     for the next one. Reading never blocks on the runtime (plain reads of regular files).
 *   - per line: LOGSHIP_LINE_MAX bytes; a longer line is cut (the remainder is skipped).
 * This module is the only reader of those files for shipping and the only writer of *.shipped. */
#ifndef ORP_AGENT_LOGSHIP_H
#define ORP_AGENT_LOGSHIP_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* Lines per heartbeat: at a 1-2 s heartbeat this drains a chatty runtime (hundreds of lines a
 * second) while keeping the heartbeat body near ~300 KiB at worst. */
#define LOGSHIP_MAX_ITEMS 1000
#define LOGSHIP_MAX_BYTES (256 * 1024)
/* One shipped line: a runtime's log lines are ~100-300 bytes; a stack dump line is not a story. */
#define LOGSHIP_LINE_MAX 2048
/* Default cap of each log file: the controller keeps 2 000 lines per replica anyway. */
#define LOGSHIP_FILE_MAX_DEFAULT (8 * 1024 * 1024)

enum logship_stream { LOGSHIP_STDOUT, LOGSHIP_STDERR };

/* The file name of a stream in a replica directory, and of its cursor. Static strings. */
const char *logship_file(enum logship_stream s);
const char *logship_name(enum logship_stream s); /* "stdout" | "stderr" */

struct logship_pos {
    char dir[PATH_MAX];
    enum logship_stream stream;
    int64_t base;
    int64_t end_off; /* where the read stopped: acknowledged once the controller stored it */
};

struct logship_batch {
    struct logship_pos *pos; /* owned */
    size_t npos;
    size_t items;
};

/* Reads new complete lines of every replica directory under replicas_dir (named
 * <replica_id>-<epoch>) into arr, at most max_items lines and LOGSHIP_MAX_BYTES in all, each as
 * {"replica_id","epoch","stream","pos","at_ms","line"}; cuts files past file_max bytes first.
 * at_ms is the time at the start of the line when it has our logs' shape
 * ("2025-01-31T12:00:00.123Z ..."), else now. Fills batch (free with logship_batch_free()).
 * Returns the number of lines appended. */
size_t logship_collect(const char *replicas_dir, int64_t file_max, size_t max_items, json_t *arr,
                       struct logship_batch *batch);
/* After the controller acknowledged every line of batch: advances the cursors. 0, or -1 when one
 * could not be written (its lines are sent again, which is harmless). */
int logship_commit(const struct logship_batch *batch);
void logship_batch_free(struct logship_batch *batch);

/* Milliseconds since the epoch of an RFC 3339 UTC time at the start of line
 * ("YYYY-MM-DDTHH:MM:SS[.fff]Z"), or -1 when the line does not start with one. Exposed for tests.
 */
int64_t logship_line_time(const char *line, size_t len);

#endif
