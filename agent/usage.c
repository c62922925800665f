/* usage: see usage.h. */
#include "usage.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "jsonx.h"
#include "log.h"
#include "util.h"

/* A read stops after scanning this many bytes even if it found fewer than max_items good lines:
 * otherwise a journal full of garbage would be parsed whole on every heartbeat. The offset still
 * advances past what was scanned, so the next heartbeat continues from there. */
#define USAGE_MAX_SCAN_BYTES ((int64_t)4 * 1024 * 1024)
/* request_id is made by the gateway ("req_…") or the runtime ("rt-<hex>"). The controller refuses
 * a whole heartbeat over one longer id (or a finish_reason over 32 bytes), so such a line must be
 * skipped here, or it would block every line after it. */
#define USAGE_MAX_REQUEST_ID 64
#define USAGE_MAX_FINISH_REASON 32

static void path_join(char *out, size_t n, const char *dir, const char *file)
{
    snprintf(out, n, "%s/%s", dir, file);
}

int64_t usage_acked_offset(const char *dir)
{
    char p[PATH_MAX + 16];
    path_join(p, sizeof p, dir, "usage.acked");
    char *s = util_read_file(p, NULL);
    if (!s) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    int bad = errno || end == s || (*end && *end != '\n') || v < 0;
    free(s);
    if (bad) {
        /* Starting over only resends lines, which the controller dedupes. */
        log_warn("%s is malformed: shipping this journal again from the start", p);
        return 0;
    }
    return (int64_t)v;
}

int usage_ack(const char *dir, int64_t offset)
{
    char p[PATH_MAX + 16], s[32];
    path_join(p, sizeof p, dir, "usage.acked");
    int n = snprintf(s, sizeof s, "%" PRId64 "\n", offset);
    if (util_write_file_atomic(p, s, (size_t)n, 0644) != 0) {
        log_error("cannot write %s: %s", p, strerror(errno));
        return -1;
    }
    return 0;
}

/* Parses one journal line into a new usage item, or NULL (with why) when it is malformed. */
static json_t *parse_line(const char *line, size_t len, const char *replica_id, int64_t epoch,
                          struct jsonx_err *err)
{
    json_t *o = jsonx_parse_object(line, len, err);
    if (!o) return NULL;
    const char *rid, *fr = NULL;
    int64_t pt, ct, at;
    if (jsonx_get_string(o, "request_id", 1, &rid, USAGE_MAX_REQUEST_ID, err) != JSONX_OK ||
        jsonx_get_int(o, "prompt_tokens", 1, 0, INT32_MAX, &pt, err) != JSONX_OK ||
        jsonx_get_int(o, "completion_tokens", 1, 0, INT32_MAX, &ct, err) != JSONX_OK ||
        jsonx_get_int(o, "at_ms", 1, 0, INT64_MAX, &at, err) != JSONX_OK ||
        jsonx_get_string(o, "finish_reason", 0, &fr, USAGE_MAX_FINISH_REASON, err) == JSONX_BAD) {
        json_decref(o);
        return NULL;
    }
    if (!rid[0]) {
        snprintf(err->message, sizeof err->message, "field 'request_id' is empty");
        json_decref(o);
        return NULL;
    }
    json_t *item =
        json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}", "request_id", rid, "replica_id", replica_id,
                  "epoch", (json_int_t)epoch, "prompt_tokens", (json_int_t)pt, "completion_tokens",
                  (json_int_t)ct, "at_ms", (json_int_t)at);
    /* Not in the contract's item, but the controller keeps it when present. */
    if (item && fr) json_object_set_new(item, "finish_reason", json_string(fr));
    json_decref(o);
    if (!item) snprintf(err->message, sizeof err->message, "cannot build the usage item");
    return item;
}

int usage_read_dir(const char *dir, const char *replica_id, int64_t epoch, size_t max_items,
                   json_t *arr, int64_t *start_off, int64_t *end_off)
{
    int64_t off = usage_acked_offset(dir);
    *start_off = *end_off = off;
    char p[PATH_MAX + 16];
    path_join(p, sizeof p, dir, "usage.jsonl");
    FILE *f = fopen(p, "rb");
    if (!f) {
        if (errno == ENOENT) return 0;
        log_error("cannot open %s: %s", p, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        log_error("cannot stat %s: %s", p, strerror(errno));
        fclose(f);
        return -1;
    }
    if (off > (int64_t)st.st_size) {
        /* The runtime never truncates its journal, so this one was replaced: resend it all. */
        log_warn("%s is shorter (%lld bytes) than its acknowledged offset %lld: shipping it again "
                 "from the start",
                 p, (long long)st.st_size, (long long)off);
        off = 0;
        *start_off = *end_off = 0;
    }
    if (off == (int64_t)st.st_size || max_items == 0) {
        fclose(f);
        return 0;
    }
    if (fseeko(f, (off_t)off, SEEK_SET) != 0) {
        log_error("cannot seek %s: %s", p, strerror(errno));
        fclose(f);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0, count = 0;
    int64_t scanned = 0;
    ssize_t n;
    while (count < max_items && scanned < USAGE_MAX_SCAN_BYTES &&
           (n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n') break; /* still being written: left for a later read */
        struct jsonx_err err = {{0}, {0}};
        json_t *item = parse_line(line, (size_t)n - 1, replica_id, epoch, &err);
        if (item && !strncmp(json_string_value(json_object_get(item, "request_id")), "probe-", 6)) {
            /* The agent's own completion probe (supervisor.c): nobody's usage, never billed. */
            json_decref(item);
            item = NULL;
            err.message[0] = '\0';
        }
        if (item) {
            json_array_append_new(arr, item);
            count++;
        } else if (n > 1 && err.message[0]) {
            log_warn("%s: skipping malformed line at byte %lld: %s", p, (long long)off,
                     err.message);
        }
        off += n;
        scanned += n;
    }
    int io_err = ferror(f);
    free(line);
    fclose(f);
    if (io_err) {
        log_error("cannot read %s", p);
        return -1;
    }
    *end_off = off;
    return (int)count;
}

int usage_parse_dir_name(const char *name, char *replica_id, size_t id_len, int64_t *epoch)
{
    const char *dash = strrchr(name, '-');
    if (!dash || dash == name || !dash[1] || (size_t)(dash - name) >= id_len) return -1;
    char *end;
    errno = 0;
    long long e = strtoll(dash + 1, &end, 10);
    if (errno || *end || e < 0) return -1;
    memcpy(replica_id, name, (size_t)(dash - name));
    replica_id[dash - name] = '\0';
    *epoch = (int64_t)e;
    return 0;
}

size_t usage_collect(const char *replicas_dir, size_t max_items, json_t *arr,
                     struct usage_batch *batch)
{
    memset(batch, 0, sizeof *batch);
    struct dirent **names = NULL;
    int n = scandir(replicas_dir, &names, NULL, alphasort);
    if (n < 0) {
        if (errno != ENOENT) log_error("cannot list %s: %s", replicas_dir, strerror(errno));
        return 0;
    }
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        char rid[256];
        int64_t epoch;
        if (name[0] == '.' || batch->items >= max_items ||
            usage_parse_dir_name(name, rid, sizeof rid, &epoch) != 0)
            continue;
        char dir[PATH_MAX];
        if (snprintf(dir, sizeof dir, "%s/%s", replicas_dir, name) >= (int)sizeof dir) continue;
        int64_t start, end;
        int got = usage_read_dir(dir, rid, epoch, max_items - batch->items, arr, &start, &end);
        if (got < 0 || end == start) continue;
        struct usage_pos *np = realloc(batch->pos, (batch->npos + 1) * sizeof *np);
        if (!np) {
            /* Without a position these items must not be acknowledged: drop them from arr. */
            for (int k = 0; k < got; k++)
                json_array_remove(arr, json_array_size(arr) - 1);
            continue;
        }
        batch->pos = np;
        snprintf(batch->pos[batch->npos].dir, sizeof batch->pos[0].dir, "%s", dir);
        batch->pos[batch->npos].end_off = end;
        batch->npos++;
        batch->items += (size_t)got;
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return batch->items;
}

int usage_commit(const struct usage_batch *batch)
{
    int rc = 0;
    for (size_t i = 0; i < batch->npos; i++)
        if (usage_ack(batch->pos[i].dir, batch->pos[i].end_off) != 0) rc = -1;
    return rc;
}

void usage_batch_free(struct usage_batch *batch)
{
    if (!batch) return;
    free(batch->pos);
    batch->pos = NULL;
    batch->npos = 0;
    batch->items = 0;
}
