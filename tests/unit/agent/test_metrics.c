/* The agent's /metrics: the text exposition of a made-up snapshot (metric names, label escaping
 * per the Prometheus text format, values, the enum-as-gauge replica state, +Inf before the first
 * heartbeat); live GPU readings through the fake NVML (a reading a GPU cannot give is left out,
 * not reported as 0); a snapshot of a supervisor's replicas; and the listener itself on a free
 * port, fetched with common/httpc: what it serves is what was published last. */
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "httpc.h"
#include "inventory.h"
#include "log.h"
#include "metrics.h"
#include "supervisor.h"

/* Checks that text holds line as a whole line. */
#define CHECK_LINE(text, line)                                                                     \
    do {                                                                                           \
        char _want[1024];                                                                          \
        snprintf(_want, sizeof _want, "\n%s\n", (line));                                           \
        if (!strstr((text), _want)) {                                                              \
            fprintf(stderr, "%s:%d: line not found: %s\n--- text:\n%s\n", __FILE__, __LINE__,      \
                    (line), (text));                                                               \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define CHECK_NO(text, part)                                                                       \
    do {                                                                                           \
        if (strstr((text), (part))) {                                                              \
            fprintf(stderr, "%s:%d: unexpected: %s\n", __FILE__, __LINE__, (part));                \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static size_t count_lines_starting(const char *text, const char *prefix)
{
    size_t n = 0, pl = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, prefix, pl)) n++;
    return n;
}

static void test_render(void)
{
    struct inv_gpu_sample g = {.index = 3,
                               .uuid = "GPU-1234",
                               .model = "Odd \"quoted\" \\ model\nline 2",
                               .have =
                                   INV_HAVE_UTIL | INV_HAVE_MEMORY | INV_HAVE_TEMP | INV_HAVE_POWER,
                               .util_pct = 87,
                               .mem_used = 123456789012ull,
                               .mem_total = 85520809984ull,
                               .temp_c = 61,
                               .power_mw = 699007};
    struct metrics_snapshot s = {0};
    CHECK_INT_EQ(metrics_snapshot_gpus(&s, &g, 1), 0);
    s.replicas = calloc(1, sizeof *s.replicas);
    s.nreplicas = 1;
    snprintf(s.replicas[0].replica_id, sizeof s.replicas[0].replica_id, "rep-\"x\"");
    s.replicas[0].epoch = 42;
    s.replicas[0].state = SUP_READY;
    s.replicas[0].restarts = 2;
    s.replicas[0].started_ms = 10000;
    s.heartbeat_ok = 17;
    s.heartbeat_failed = 3;
    s.last_heartbeat_ms = 0;

    struct buf b = {0};
    CHECK_INT_EQ(metrics_render(&s, 12345, &b), 0);
    const char *t = b.data;
    const char *labels =
        "{uuid=\"GPU-1234\",index=\"3\",model=\"Odd \\\"quoted\\\" \\\\ model\\nline 2\"}";
    char line[512];
    snprintf(line, sizeof line, "orp_agent_gpu_utilization_percent%s 87", labels);
    CHECK_LINE(t, line);
    snprintf(line, sizeof line, "orp_agent_gpu_memory_used_bytes%s 123456789012", labels);
    CHECK_LINE(t, line);
    snprintf(line, sizeof line, "orp_agent_gpu_memory_total_bytes%s 85520809984", labels);
    CHECK_LINE(t, line);
    snprintf(line, sizeof line, "orp_agent_gpu_temperature_celsius%s 61", labels);
    CHECK_LINE(t, line);
    snprintf(line, sizeof line, "orp_agent_gpu_power_watts%s 699.007", labels);
    CHECK_LINE(t, line);
    CHECK_LINE(t, "# TYPE orp_agent_gpu_power_watts gauge");
    CHECK_LINE(t, "# TYPE orp_agent_replica_restarts_total counter");
    CHECK_LINE(t, "# TYPE orp_agent_heartbeat_successes_total counter");
    CHECK_LINE(t, "# TYPE orp_agent_heartbeat_failures_total counter");
    CHECK_LINE(t, "# TYPE orp_agent_last_heartbeat_age_seconds gauge");
    /* The state gauge: every state, 1 on the current one. */
    CHECK_LINE(
        t, "orp_agent_replica_state{replica_id=\"rep-\\\"x\\\"\",epoch=\"42\",state=\"ready\"} 1");
    CHECK_LINE(
        t,
        "orp_agent_replica_state{replica_id=\"rep-\\\"x\\\"\",epoch=\"42\",state=\"starting\"} 0");
    CHECK_LINE(
        t, "orp_agent_replica_state{replica_id=\"rep-\\\"x\\\"\",epoch=\"42\",state=\"failed\"} 0");
    CHECK_INT_EQ(count_lines_starting(t, "orp_agent_replica_state{"), 7);
    CHECK_LINE(t, "orp_agent_replica_state{replica_id=\"rep-\\\"x\\\"\",epoch=\"42\",state="
                  "\"downloading\"} 0");
    CHECK_LINE(t, "orp_agent_replica_restarts_total{replica_id=\"rep-\\\"x\\\"\",epoch=\"42\"} 2");
    CHECK_LINE(t,
               "orp_agent_replica_uptime_seconds{replica_id=\"rep-\\\"x\\\"\",epoch=\"42\"} 2.345");
    CHECK_LINE(t, "orp_agent_heartbeat_successes_total 17");
    CHECK_LINE(t, "orp_agent_heartbeat_failures_total 3");
    CHECK_LINE(t, "orp_agent_last_heartbeat_age_seconds +Inf");
    /* Every line is a comment or a sample; the text ends with a line feed. */
    CHECK(b.len > 0 && t[b.len - 1] == '\n');
    CHECK_INT_EQ(count_lines_starting(t, "# HELP "), 11);
    CHECK_INT_EQ(count_lines_starting(t, "# TYPE "), 11);
    CHECK_INT_EQ(count_lines_starting(t, "orp_agent_"), 5 + 7 + 1 + 1 + 3);
    buf_free(&b);

    /* A replica without a process has uptime 0; the heartbeat age counts from the last one. */
    s.replicas[0].state = SUP_BACKOFF;
    s.replicas[0].started_ms = 0;
    s.last_heartbeat_ms = 11000;
    CHECK_INT_EQ(metrics_render(&s, 12500, &b), 0);
    CHECK_LINE(b.data,
               "orp_agent_replica_uptime_seconds{replica_id=\"rep-\\\"x\\\"\",epoch=\"42\"} 0.000");
    CHECK_LINE(
        b.data,
        "orp_agent_replica_state{replica_id=\"rep-\\\"x\\\"\",epoch=\"42\",state=\"failed\"} 1");
    CHECK_LINE(b.data, "orp_agent_last_heartbeat_age_seconds 1.500");
    buf_free(&b);
    metrics_snapshot_free(&s);
    metrics_snapshot_free(NULL);
}

static void test_fake_nvml(void)
{
    struct inv_nvml *h = inv_nvml_open("libnvidia-ml-absent.so.1");
    CHECK(h == NULL);
    inv_nvml_close(NULL);
    h = inv_nvml_open(FAKE_NVML_PATH);
    CHECK(h != NULL);
    struct inv_gpu_sample *g;
    size_t n;
    CHECK_INT_EQ(inv_nvml_sample(h, &g, &n), 0);
    CHECK_INT_EQ(n, 3);
    CHECK_STR_EQ(g[0].uuid, "GPU-fake-0");
    CHECK_INT_EQ(g[0].have, INV_HAVE_UTIL | INV_HAVE_MEMORY | INV_HAVE_TEMP | INV_HAVE_POWER);
    CHECK_INT_EQ(g[0].mem_used, 1024ull * 1024 * 1024);
    CHECK_INT_EQ(g[1].have, INV_HAVE_UTIL | INV_HAVE_TEMP); /* memory fails, no power sensor */
    CHECK_INT_EQ(g[2].have, INV_HAVE_UTIL | INV_HAVE_MEMORY | INV_HAVE_POWER);

    struct metrics_snapshot s = {0};
    CHECK_INT_EQ(metrics_snapshot_gpus(&s, g, n), 0);
    free(g);
    struct buf b = {0};
    CHECK_INT_EQ(metrics_render(&s, 0, &b), 0);
    const char *t = b.data;
#define L0 "{uuid=\"GPU-fake-0\",index=\"0\",model=\"NVIDIA H100 80GB HBM3\"}"
#define L1 "{uuid=\"GPU-fake-1\",index=\"1\",model=\"NVIDIA H100 80GB HBM3\"}"
#define L2 "{uuid=\"GPU-fake-2\",index=\"2\",model=\"NVIDIA H100 80GB HBM3\"}"
    CHECK_LINE(t, "orp_agent_gpu_utilization_percent" L0 " 37");
    CHECK_LINE(t, "orp_agent_gpu_utilization_percent" L1 " 5");
    CHECK_LINE(t, "orp_agent_gpu_utilization_percent" L2 " 100");
    CHECK_LINE(t, "orp_agent_gpu_memory_used_bytes" L0 " 1073741824");
    CHECK_LINE(t, "orp_agent_gpu_memory_total_bytes" L0 " 85520809984");
    CHECK_LINE(t, "orp_agent_gpu_memory_used_bytes" L2 " 0");
    CHECK_NO(t, "orp_agent_gpu_memory_used_bytes" L1);
    CHECK_NO(t, "orp_agent_gpu_memory_total_bytes" L1);
    CHECK_LINE(t, "orp_agent_gpu_temperature_celsius" L0 " 45");
    CHECK_LINE(t, "orp_agent_gpu_temperature_celsius" L1 " 51");
    CHECK_NO(t, "orp_agent_gpu_temperature_celsius" L2);
    CHECK_LINE(t, "orp_agent_gpu_power_watts" L0 " 350.500");
    CHECK_LINE(t, "orp_agent_gpu_power_watts" L2 " 70.000");
    CHECK_NO(t, "orp_agent_gpu_power_watts" L1);
    buf_free(&b);
    metrics_snapshot_free(&s);
    inv_nvml_close(h);
}

static void test_replicas_snapshot(void)
{
    struct sup_config cfg;
    sup_config_defaults(&cfg);
    struct sup *sup = sup_new(&cfg);
    CHECK(sup != NULL);
    struct sup_replica *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    snprintf(a->spec.replica_id, sizeof a->spec.replica_id, "r-a");
    a->spec.epoch = 1;
    a->state = SUP_STARTING;
    a->pid = 12345; /* not signalled: sup_free only frees the bookkeeping */
    a->started_ms = 777;
    a->restarts = 4;
    snprintf(b->spec.replica_id, sizeof b->spec.replica_id, "r-b");
    b->spec.epoch = 9;
    b->state = SUP_STOPPED;
    b->started_ms = 555; /* stale: no process, so no uptime */
    a->next = b;
    sup->list = a;
    struct metrics_snapshot s = {0};
    CHECK_INT_EQ(metrics_snapshot_replicas(&s, sup), 0);
    CHECK_INT_EQ(s.nreplicas, 2);
    CHECK_STR_EQ(s.replicas[0].replica_id, "r-a");
    CHECK_INT_EQ(s.replicas[0].state, SUP_STARTING);
    CHECK_INT_EQ(s.replicas[0].started_ms, 777);
    CHECK_INT_EQ(s.replicas[0].restarts, 4);
    CHECK_INT_EQ(s.replicas[1].epoch, 9);
    CHECK_INT_EQ(s.replicas[1].started_ms, 0);
    metrics_snapshot_free(&s);
    sup_free(sup);
}

static void test_server(void)
{
    char err[256];
    struct metrics_server *m = metrics_start("127.0.0.1", 0, err, sizeof err);
    if (!m) {
        fprintf(stderr, "metrics_start: %s\n", err);
        exit(1);
    }
    CHECK(metrics_port(m) > 0);
    struct metrics_snapshot s = {0};
    struct inv_gpu_sample g = {
        .index = 0, .uuid = "GPU-x", .model = "M", .have = INV_HAVE_TEMP, .temp_c = 70};
    CHECK_INT_EQ(metrics_snapshot_gpus(&s, &g, 1), 0);
    s.heartbeat_ok = 5;
    metrics_publish(m, &s);
    CHECK(s.gpus == NULL && s.ngpus == 0);
    CHECK_INT_EQ(s.heartbeat_ok, 5); /* the counters stay with the loop's copy */

    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", metrics_port(m));
    struct httpc_resp r;
    CHECK_INT_EQ(httpc_request("GET", url, NULL, NULL, 0, 5000, 1 << 20, &r, err, sizeof err), 0);
    CHECK_INT_EQ(r.status, 200);
    /* Nothing in this snapshot depends on the time, so the served text is exactly the render. */
    struct metrics_snapshot same = {0};
    CHECK_INT_EQ(metrics_snapshot_gpus(&same, &g, 1), 0);
    same.heartbeat_ok = 5;
    struct buf want = {0};
    CHECK_INT_EQ(metrics_render(&same, 0, &want), 0);
    CHECK_STR_EQ(r.body.data, want.data);
    CHECK_LINE(r.body.data,
               "orp_agent_gpu_temperature_celsius{uuid=\"GPU-x\",index=\"0\",model=\"M\"} 70");
    buf_free(&r.body);
    buf_free(&want);

    /* A later publish replaces the earlier one. */
    s.heartbeat_ok = 6;
    metrics_publish(m, &s);
    CHECK_INT_EQ(httpc_request("GET", url, NULL, NULL, 0, 5000, 1 << 20, &r, err, sizeof err), 0);
    CHECK_LINE(r.body.data, "orp_agent_heartbeat_successes_total 6");
    CHECK_NO(r.body.data, "GPU-x");
    buf_free(&r.body);

    CHECK_INT_EQ(httpc_request("POST", url, NULL, "", 0, 5000, 1 << 20, &r, err, sizeof err), 0);
    CHECK_INT_EQ(r.status, 405);
    buf_free(&r.body);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/other", metrics_port(m));
    CHECK_INT_EQ(httpc_request("GET", url, NULL, NULL, 0, 5000, 1 << 20, &r, err, sizeof err), 0);
    CHECK_INT_EQ(r.status, 404);
    buf_free(&r.body);
    metrics_snapshot_free(&same);
    metrics_stop(m);
    metrics_stop(NULL);
}

int main(void)
{
    log_init("test_agent_metrics", "warn");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    test_render();
    test_fake_nvml();
    test_replicas_snapshot();
    test_server();
    curl_global_cleanup();
    return 0;
}
