/* logship: see logship.h. */
#include "logship.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "supervisor.h"
#include "usage.h"
#include "util.h"

static const char *const files[] = {
    [LOGSHIP_STDOUT] = "stdout.log", [LOGSHIP_STDERR] = "runtime.log"};
static const char *const cursors[] = {
    [LOGSHIP_STDOUT] = "stdout.shipped", [LOGSHIP_STDERR] = "stderr.shipped"};
static const char *const names[] = {[LOGSHIP_STDOUT] = "stdout", [LOGSHIP_STDERR] = "stderr"};

const char *logship_file(enum logship_stream s)
{
    return files[s];
}

const char *logship_name(enum logship_stream s)
{
    return names[s];
}

static int read_cursor(const char *dir, enum logship_stream s, int64_t *base, int64_t *acked)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/%s", dir, cursors[s]);
    *base = *acked = 0;
    char *txt = util_read_file(p, NULL);
    if (!txt) return 0;
    long long b = 0, a = 0;
    int ok = sscanf(txt, "%lld %lld", &b, &a) == 2 && b >= 0 && a >= 0;
    free(txt);
    if (!ok) {
        /* Starting over resends lines under the same positions: the controller stores them once. */
        log_warn("%s is malformed: shipping this log again from the start", p);
        return 0;
    }
    *base = b;
    *acked = a;
    return 0;
}

static int write_cursor(const char *dir, enum logship_stream s, int64_t base, int64_t acked)
{
    char p[PATH_MAX + 32], txt[64];
    snprintf(p, sizeof p, "%s/%s", dir, cursors[s]);
    int n = snprintf(txt, sizeof txt, "%" PRId64 " %" PRId64 "\n", base, acked);
    if (util_write_file_atomic(p, txt, (size_t)n, 0644) != 0) {
        log_error("cannot write %s: %s", p, strerror(errno));
        return -1;
    }
    return 0;
}

int64_t logship_line_time(const char *line, size_t len)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t k = 0;
    for (; shape[k]; k++) {
        if (k >= len) return -1;
        char c = line[k];
        if (shape[k] == 'd' ? !(c >= '0' && c <= '9') : c != shape[k]) return -1;
    }
    int64_t ms = 0;
    if (k < len && line[k] == '.') {
        int64_t scale = 100;
        for (k++; k < len && line[k] >= '0' && line[k] <= '9'; k++) {
            ms += (line[k] - '0') * scale;
            scale /= 10;
        }
    }
    if (k >= len || line[k] != 'Z') return -1;
    struct tm tm = {0};
    tm.tm_year = atoi(line) - 1900;
    tm.tm_mon = atoi(line + 5) - 1;
    tm.tm_mday = atoi(line + 8);
    tm.tm_hour = atoi(line + 11);
    tm.tm_min = atoi(line + 14);
    tm.tm_sec = atoi(line + 17);
    if (tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
        tm.tm_sec > 60)
        return -1;
    time_t t = timegm(&tm);
    if (t < 0) return -1;
    return (int64_t)t * 1000 + ms;
}

/* Cuts dir's log of stream s back to empty when it outgrew file_max. Updates *base and *acked. */
static void cap_file(const char *dir, enum logship_stream s, int64_t file_max, int64_t *base,
                     int64_t *acked)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/%s", dir, files[s]);
    struct stat st;
    if (stat(p, &st) != 0 || st.st_size <= file_max) return;
    int64_t size = (int64_t)st.st_size;
    if (*acked > size) *acked = size;
    /* The cursor first: a crash between the two resends the lines under new positions (stored
     * twice), the other order would give positions that were already used to other lines. */
    if (write_cursor(dir, s, *base + size, 0) != 0) return;
    if (truncate(p, 0) != 0) {
        log_error("cannot cut %s back: %s", p, strerror(errno));
        write_cursor(dir, s, *base, *acked);
        return;
    }
    if (size > *acked)
        log_warn("%s grew past %lld bytes: cut back, %lld bytes not yet shipped were dropped", p,
                 (long long)file_max, (long long)(size - *acked));
    *base += size;
    *acked = 0;
}

/* Appends the new lines of one stream of one replica. Returns the lines appended; *end_off gets
 * where the read stopped; *bytes grows by what was shipped. */
static size_t read_stream(const char *dir, const char *rid, int64_t epoch, enum logship_stream s,
                          int64_t base, int64_t off, size_t max_items, size_t *bytes, json_t *arr,
                          int64_t *end_off)
{
    *end_off = off;
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/%s", dir, files[s]);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || off >= (int64_t)st.st_size || *bytes >= LOGSHIP_MAX_BYTES) {
        close(fd);
        return 0;
    }
    size_t want = (size_t)((int64_t)st.st_size - off);
    size_t budget = LOGSHIP_MAX_BYTES - *bytes + LOGSHIP_LINE_MAX;
    if (want > budget) want = budget;
    char *raw = malloc(want);
    ssize_t got = raw ? pread(fd, raw, want, (off_t)off) : -1;
    close(fd);
    if (got <= 0) {
        free(raw);
        return 0;
    }
    size_t n = 0, i = 0;
    int64_t now = util_wall_ms();
    char clean[LOGSHIP_LINE_MAX + 8];
    while (i < (size_t)got && n < max_items && *bytes < LOGSHIP_MAX_BYTES) {
        char *nl = memchr(raw + i, '\n', (size_t)got - i);
        size_t len = nl ? (size_t)(nl - (raw + i)) : (size_t)got - i;
        size_t consumed = len + (nl ? 1 : 0);
        if (!nl) {
            /* A line still being written waits, unless it is already too long to ship whole. */
            if (len < LOGSHIP_LINE_MAX) break;
            len = consumed = LOGSHIP_LINE_MAX;
        }
        size_t show = len > LOGSHIP_LINE_MAX ? LOGSHIP_LINE_MAX : len;
        if (show && raw[i + show - 1] == '\r') show--;
        if (show == 0) { /* blank lines say nothing */
            i += consumed;
            continue;
        }
        sup_sanitize(raw + i, show, clean, sizeof clean);
        int64_t at = logship_line_time(raw + i, len);
        json_t *item = json_pack("{s:s, s:I, s:s, s:I, s:I, s:s}", "replica_id", rid, "epoch",
                                 (json_int_t)epoch, "stream", names[s], "pos",
                                 (json_int_t)(base + off + (int64_t)i), "at_ms",
                                 (json_int_t)(at >= 0 ? at : now), "line", clean);
        if (!item) break;
        json_array_append_new(arr, item);
        n++;
        *bytes += show + 64;
        i += consumed;
    }
    free(raw);
    *end_off = off + (int64_t)i;
    return n;
}

size_t logship_collect(const char *replicas_dir, int64_t file_max, size_t max_items, json_t *arr,
                       struct logship_batch *batch)
{
    memset(batch, 0, sizeof *batch);
    struct dirent **ents = NULL;
    int n = scandir(replicas_dir, &ents, NULL, alphasort);
    if (n < 0) return 0;
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        char rid[256], dir[PATH_MAX];
        int64_t epoch;
        if (name[0] == '.' || usage_parse_dir_name(name, rid, sizeof rid, &epoch) != 0 ||
            snprintf(dir, sizeof dir, "%s/%s", replicas_dir, name) >= (int)sizeof dir)
            continue;
        for (int s = LOGSHIP_STDOUT; s <= LOGSHIP_STDERR; s++) {
            int64_t base, acked, end;
            read_cursor(dir, (enum logship_stream)s, &base, &acked);
            if (file_max > 0) cap_file(dir, (enum logship_stream)s, file_max, &base, &acked);
            if (batch->items >= max_items || bytes >= LOGSHIP_MAX_BYTES) continue;
            size_t got = read_stream(dir, rid, epoch, (enum logship_stream)s, base, acked,
                                     max_items - batch->items, &bytes, arr, &end);
            if (end == acked) continue;
            struct logship_pos *np = realloc(batch->pos, (batch->npos + 1) * sizeof *np);
            if (!np) {
                for (size_t k = 0; k < got; k++)
                    json_array_remove(arr, json_array_size(arr) - 1);
                continue;
            }
            batch->pos = np;
            struct logship_pos *lp = &batch->pos[batch->npos++];
            snprintf(lp->dir, sizeof lp->dir, "%s", dir);
            lp->stream = (enum logship_stream)s;
            lp->base = base;
            lp->end_off = end;
            batch->items += got;
        }
    }
    for (int i = 0; i < n; i++)
        free(ents[i]);
    free(ents);
    return batch->items;
}

int logship_commit(const struct logship_batch *batch)
{
    int rc = 0;
    for (size_t i = 0; i < batch->npos; i++) {
        const struct logship_pos *p = &batch->pos[i];
        /* The file may have been cut since the read (a later collect): then base moved on and
         * this position belongs to the old file; keep the newer cursor. */
        int64_t base, acked;
        read_cursor(p->dir, p->stream, &base, &acked);
        if (base != p->base) continue;
        if (write_cursor(p->dir, p->stream, p->base, p->end_off) != 0) rc = -1;
    }
    return rc;
}

void logship_batch_free(struct logship_batch *batch)
{
    if (!batch) return;
    free(batch->pos);
    batch->pos = NULL;
    batch->npos = 0;
    batch->items = 0;
}
