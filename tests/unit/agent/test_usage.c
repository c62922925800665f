/* Usage journal reading: offsets, a partial last line, malformed lines, acknowledgement across a
 * re-open, the per-heartbeat limit, and collection over several replica directories. */
#include "tmpdir.h"

#include <jansson.h>
#include <sys/stat.h>

#include "check.h"
#include "log.h"
#include "usage.h"

static const char *item_str(json_t *arr, size_t i, const char *key)
{
    return json_string_value(json_object_get(json_array_get(arr, i), key));
}

static long long item_int(json_t *arr, size_t i, const char *key)
{
    return (long long)json_integer_value(json_object_get(json_array_get(arr, i), key));
}

#define L1                                                                                         \
    "{\"request_id\":\"r1\",\"prompt_tokens\":3,\"completion_tokens\":5,\"finish_reason\":"        \
    "\"stop\",\"at_ms\":1000}\n"
#define BAD                                                                                        \
    "{\"request_id\":\"rX\",\"prompt_tokens\":\"three\"}\n"                                        \
    "not json at all\n"                                                                            \
    "{\"request_id\":\"0123456789012345678901234567890123456789012345678901234567890123456789\","  \
    "\"prompt_tokens\":1,\"completion_tokens\":1,\"at_ms\":1}\n"
#define L2                                                                                         \
    "{\"request_id\":\"r2\",\"prompt_tokens\":4,\"completion_tokens\":6,\"finish_reason\":"        \
    "\"length\",\"at_ms\":2000}\n"
#define L3_HEAD "{\"request_id\":\"r3\",\"prompt_tokens\":1,"
#define L3_TAIL "\"completion_tokens\":2,\"finish_reason\":\"cancelled\",\"at_ms\":3000}\n"

static void test_read_and_ack(const char *root)
{
    char dir[512], journal[600];
    snprintf(dir, sizeof dir, "%s/replicas/rep-a-7", root);
    CHECK(mkdir(dir, 0755) == 0 || 1);
    snprintf(journal, sizeof journal, "%s/usage.jsonl", dir);

    /* No journal yet: nothing, no error. */
    json_t *arr = json_array();
    int64_t start, end;
    CHECK_INT_EQ(usage_read_dir(dir, "rep-a", 7, 500, arr, &start, &end), 0);
    CHECK_INT_EQ(start, 0);
    CHECK_INT_EQ(end, 0);

    /* Two good lines around a malformed one, then a line still being written. */
    write_text(journal, L1 BAD L2 L3_HEAD, "w");
    CHECK_INT_EQ(usage_read_dir(dir, "rep-a", 7, 500, arr, &start, &end), 2);
    CHECK_INT_EQ(json_array_size(arr), 2);
    CHECK_STR_EQ(item_str(arr, 0, "request_id"), "r1");
    CHECK_STR_EQ(item_str(arr, 0, "replica_id"), "rep-a");
    CHECK_INT_EQ(item_int(arr, 0, "epoch"), 7);
    CHECK_INT_EQ(item_int(arr, 0, "prompt_tokens"), 3);
    CHECK_INT_EQ(item_int(arr, 0, "completion_tokens"), 5);
    CHECK_INT_EQ(item_int(arr, 0, "at_ms"), 1000);
    CHECK_STR_EQ(item_str(arr, 0, "finish_reason"), "stop");
    CHECK_STR_EQ(item_str(arr, 1, "request_id"), "r2");
    CHECK_INT_EQ(start, 0);
    CHECK_INT_EQ(end, strlen(L1 BAD L2)); /* the partial line is not consumed */

    /* Not acknowledged: reading again gives the same items. */
    json_array_clear(arr);
    CHECK_INT_EQ(usage_read_dir(dir, "rep-a", 7, 500, arr, &start, &end), 2);
    CHECK_INT_EQ(end, strlen(L1 BAD L2));

    /* Acknowledge, finish the partial line, and read through a fresh open. */
    CHECK_INT_EQ(usage_ack(dir, end), 0);
    CHECK_INT_EQ(usage_acked_offset(dir), strlen(L1 BAD L2));
    write_text(journal, L3_TAIL, "a");
    json_array_clear(arr);
    CHECK_INT_EQ(usage_read_dir(dir, "rep-a", 7, 500, arr, &start, &end), 1);
    CHECK_STR_EQ(item_str(arr, 0, "request_id"), "r3");
    CHECK_INT_EQ(item_int(arr, 0, "completion_tokens"), 2);
    CHECK_INT_EQ(start, strlen(L1 BAD L2));
    CHECK_INT_EQ(end, strlen(L1 BAD L2 L3_HEAD L3_TAIL));
    CHECK_INT_EQ(usage_ack(dir, end), 0);

    /* Drained. */
    json_array_clear(arr);
    CHECK_INT_EQ(usage_read_dir(dir, "rep-a", 7, 500, arr, &start, &end), 0);
    CHECK_INT_EQ(start, end);

    /* A corrupt usage.acked starts over (duplicates are harmless, losses are not). */
    char acked[600];
    snprintf(acked, sizeof acked, "%s/usage.acked", dir);
    write_text(acked, "garbage", "w");
    CHECK_INT_EQ(usage_acked_offset(dir), 0);
    CHECK_INT_EQ(usage_read_dir(dir, "rep-a", 7, 500, arr, &start, &end), 3);
    /* An offset past the end (a replaced journal) starts over too. */
    write_text(acked, "999999\n", "w");
    json_array_clear(arr);
    CHECK_INT_EQ(usage_read_dir(dir, "rep-a", 7, 500, arr, &start, &end), 3);
    CHECK_INT_EQ(usage_ack(dir, end), 0);
    json_decref(arr);
}

static void test_limit_and_collect(const char *root)
{
    char rdir[512], dir[600], journal[700];
    snprintf(rdir, sizeof rdir, "%s/replicas", root);
    /* rep-b-1: 7 lines, nothing acknowledged. */
    snprintf(dir, sizeof dir, "%s/rep-b-1", rdir);
    CHECK(mkdir(dir, 0755) == 0);
    snprintf(journal, sizeof journal, "%s/usage.jsonl", dir);
    for (int i = 0; i < 7; i++) {
        char line[200];
        snprintf(line, sizeof line,
                 "{\"request_id\":\"b%d\",\"prompt_tokens\":%d,\"completion_tokens\":1,"
                 "\"finish_reason\":\"stop\",\"at_ms\":%d}\n",
                 i, i, 5000 + i);
        write_text(journal, line, "a");
    }
    /* Not replica directories: ignored. */
    snprintf(dir, sizeof dir, "%s/not-a-replica", rdir);
    CHECK(mkdir(dir, 0755) == 0);

    json_t *arr = json_array();
    struct usage_batch b;
    /* rep-a-7 is drained: all 5 come from rep-b-1, in journal order. */
    CHECK_INT_EQ(usage_collect(rdir, 5, arr, &b), 5);
    CHECK_INT_EQ(json_array_size(arr), 5);
    CHECK_STR_EQ(item_str(arr, 0, "request_id"), "b0");
    CHECK_STR_EQ(item_str(arr, 4, "request_id"), "b4");
    CHECK_STR_EQ(item_str(arr, 4, "replica_id"), "rep-b");
    CHECK_INT_EQ(item_int(arr, 4, "epoch"), 1);
    CHECK_INT_EQ(b.npos, 1);
    /* Not committed (the controller did not ack): the same 5 again. */
    usage_batch_free(&b);
    json_array_clear(arr);
    CHECK_INT_EQ(usage_collect(rdir, 5, arr, &b), 5);
    CHECK_STR_EQ(item_str(arr, 0, "request_id"), "b0");
    CHECK_INT_EQ(usage_commit(&b), 0);
    usage_batch_free(&b);
    json_array_clear(arr);
    CHECK_INT_EQ(usage_collect(rdir, 5, arr, &b), 2);
    CHECK_STR_EQ(item_str(arr, 0, "request_id"), "b5");
    CHECK_INT_EQ(usage_commit(&b), 0);
    usage_batch_free(&b);
    json_array_clear(arr);
    CHECK_INT_EQ(usage_collect(rdir, 5, arr, &b), 0);
    CHECK_INT_EQ(b.npos, 0);
    usage_batch_free(&b);
    json_decref(arr);
}

static void test_dir_names(void)
{
    char id[64];
    int64_t epoch;
    CHECK_INT_EQ(usage_parse_dir_name("3f2a-b9-12", id, sizeof id, &epoch), 0);
    CHECK_STR_EQ(id, "3f2a-b9");
    CHECK_INT_EQ(epoch, 12);
    CHECK_INT_EQ(usage_parse_dir_name("noepoch", id, sizeof id, &epoch), -1);
    CHECK_INT_EQ(usage_parse_dir_name("x-", id, sizeof id, &epoch), -1);
    CHECK_INT_EQ(usage_parse_dir_name("-4", id, sizeof id, &epoch), -1);
    CHECK_INT_EQ(usage_parse_dir_name("x-4a", id, sizeof id, &epoch), -1);
}

/* The agent's own completion probes (request ids "probe-…") are read past, never shipped. */
static void test_probes_skipped(const char *root)
{
    char dir[512], journal[600];
    snprintf(dir, sizeof dir, "%s/replicas/rep-p-2", root);
    CHECK(mkdir(dir, 0755) == 0);
    snprintf(journal, sizeof journal, "%s/usage.jsonl", dir);
    write_text(journal,
               "{\"request_id\":\"probe-0123456789abcdef\",\"prompt_tokens\":2,"
               "\"completion_tokens\":1,\"at_ms\":5}\n" L1,
               "w");
    json_t *arr = json_array();
    int64_t start, end;
    CHECK_INT_EQ(usage_read_dir(dir, "rep-p", 2, 500, arr, &start, &end), 1);
    CHECK_STR_EQ(item_str(arr, 0, "request_id"), "r1");
    struct stat st;
    CHECK(stat(journal, &st) == 0);
    CHECK_INT_EQ(end, st.st_size); /* read past, so acknowledged with the rest */
    json_decref(arr);
}

int main(void)
{
    log_init("test_agent_usage", "warn");
    char root[256];
    tmpdir_make_state(root, sizeof root);
    test_dir_names();
    test_read_and_ack(root);
    test_limit_and_collect(root);
    test_probes_skipped(root);
    tmpdir_remove(root);
    printf("ok\n");
    return 0;
}
