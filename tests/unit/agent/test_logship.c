/* Log shipping: positions, a line still being written, acknowledgement across a re-read, the
 * per-heartbeat limit, long and binary lines, the file cap (cut back, positions go on), and times
 * taken from the lines. */
#include "tmpdir.h"

#include <jansson.h>
#include <sys/stat.h>

#include "check.h"
#include "log.h"
#include "logship.h"

static const char *s_at(json_t *arr, size_t i, const char *key)
{
    return json_string_value(json_object_get(json_array_get(arr, i), key));
}

static long long i_at(json_t *arr, size_t i, const char *key)
{
    return (long long)json_integer_value(json_object_get(json_array_get(arr, i), key));
}

static size_t collect(const char *rdir, int64_t cap, size_t max, json_t **arr,
                      struct logship_batch *b)
{
    *arr = json_array();
    return logship_collect(rdir, cap, max, *arr, b);
}

static void test_times(void)
{
    const char *l = "2026-11-21T12:00:01.250Z info  orp-runtime loading";
    CHECK_INT_EQ(logship_line_time(l, strlen(l)), 1795262401250LL);
    const char *l2 = "2026-11-21T12:00:01Z x";
    CHECK_INT_EQ(logship_line_time(l2, strlen(l2)), 1795262401000LL);
    CHECK_INT_EQ(logship_line_time("hello", 5), -1);
    CHECK_INT_EQ(logship_line_time("2026-11-21T12:00:01", 19), -1); /* no Z */
    CHECK_INT_EQ(logship_line_time("2026-13-21T12:00:01Z", 20), -1);
}

static void test_ship_ack_cap(const char *root)
{
    char rdir[400], dir[500], err[600], out[600];
    snprintf(rdir, sizeof rdir, "%s/replicas", root);
    snprintf(dir, sizeof dir, "%s/rep-a-3", rdir);
    CHECK(mkdir(dir, 0755) == 0);
    snprintf(err, sizeof err, "%s/runtime.log", dir);
    snprintf(out, sizeof out, "%s/stdout.log", dir);

    /* Nothing yet. */
    json_t *arr;
    struct logship_batch b;
    CHECK_INT_EQ(collect(rdir, 0, 100, &arr, &b), 0);
    logship_batch_free(&b);
    json_decref(arr);

    write_text(err, "2026-11-21T12:00:01.250Z info  loading\n\nbad \x01\xff byte\nhalf", "w");
    write_text(out, "hello stdout\n", "w");
    CHECK_INT_EQ(collect(rdir, 0, 100, &arr, &b), 3);
    CHECK_STR_EQ(s_at(arr, 0, "stream"), "stdout");
    CHECK_STR_EQ(s_at(arr, 0, "line"), "hello stdout");
    CHECK_INT_EQ(i_at(arr, 0, "pos"), 0);
    CHECK_STR_EQ(s_at(arr, 0, "replica_id"), "rep-a");
    CHECK_INT_EQ(i_at(arr, 0, "epoch"), 3);
    CHECK_STR_EQ(s_at(arr, 1, "stream"), "stderr");
    CHECK_INT_EQ(i_at(arr, 1, "at_ms"), 1795262401250LL);
    CHECK_INT_EQ(i_at(arr, 1, "pos"), 0);
    CHECK_STR_EQ(s_at(arr, 2, "line"), "bad ?? byte"); /* the blank line is skipped */
    CHECK_INT_EQ(i_at(arr, 2, "pos"), 40);
    /* Not acknowledged: the same lines again. */
    json_decref(arr);
    logship_batch_free(&b);
    CHECK_INT_EQ(collect(rdir, 0, 100, &arr, &b), 3);
    CHECK_INT_EQ(logship_commit(&b), 0);
    logship_batch_free(&b);
    json_decref(arr);
    /* Acknowledged: only what follows, once the half line is whole. */
    CHECK_INT_EQ(collect(rdir, 0, 100, &arr, &b), 0);
    logship_batch_free(&b);
    json_decref(arr);
    write_text(err, " done\nnext\n", "a");
    CHECK_INT_EQ(collect(rdir, 0, 1, &arr, &b), 1); /* the limit: one line per call */
    CHECK_STR_EQ(s_at(arr, 0, "line"), "half done");
    CHECK_INT_EQ(i_at(arr, 0, "pos"), 52);
    CHECK_INT_EQ(logship_commit(&b), 0);
    logship_batch_free(&b);
    json_decref(arr);

    /* A line longer than LOGSHIP_LINE_MAX is cut; the next line keeps its own position. */
    char *big = malloc(LOGSHIP_LINE_MAX * 2 + 2);
    memset(big, 'x', LOGSHIP_LINE_MAX * 2);
    big[LOGSHIP_LINE_MAX * 2] = '\n';
    big[LOGSHIP_LINE_MAX * 2 + 1] = '\0';
    write_text(err, big, "a");
    write_text(err, "after\n", "a");
    free(big);
    CHECK_INT_EQ(collect(rdir, 0, 100, &arr, &b), 3);
    CHECK_STR_EQ(s_at(arr, 0, "line"), "next");
    CHECK_INT_EQ(strlen(s_at(arr, 1, "line")), LOGSHIP_LINE_MAX);
    CHECK_STR_EQ(s_at(arr, 2, "line"), "after");
    long long after_pos = i_at(arr, 2, "pos");
    CHECK_INT_EQ(after_pos, 67 + LOGSHIP_LINE_MAX * 2 + 1);
    CHECK_INT_EQ(logship_commit(&b), 0);
    logship_batch_free(&b);
    json_decref(arr);

    /* Past the cap the file is cut back to empty; positions go on from where they were. */
    struct stat st;
    CHECK(stat(err, &st) == 0);
    write_text(err, "unshipped\n", "a");
    CHECK_INT_EQ(collect(rdir, 1024, 100, &arr, &b), 0); /* cut: the unshipped line is dropped */
    CHECK(stat(err, &st) == 0);
    CHECK_INT_EQ(st.st_size, 0);
    logship_batch_free(&b);
    json_decref(arr);
    write_text(err, "fresh\n", "a");
    CHECK_INT_EQ(collect(rdir, 1024, 100, &arr, &b), 1);
    CHECK_STR_EQ(s_at(arr, 0, "line"), "fresh");
    CHECK_INT_EQ(i_at(arr, 0, "pos"), after_pos + 6 + 10);
    CHECK_INT_EQ(logship_commit(&b), 0);
    logship_batch_free(&b);
    json_decref(arr);
}

int main(void)
{
    log_init("test_agent_logship", "error");
    char root[256];
    tmpdir_make_state(root, sizeof root);
    test_times();
    test_ship_ack_cap(root);
    tmpdir_remove(root);
    printf("ok\n");
    return 0;
}
