/* metrics: see metrics.h.
 *
 * Names follow Prometheus conventions: a unit suffix (_bytes, _seconds, _celsius, _watts,
 * _percent), _total on counters, one `orp_agent_` prefix. The replica state is the usual
 * enum-as-gauge: one series per state, 1 on the current one and 0 on the others, so that a state
 * change updates series in place instead of making one vanish (a vanished series reads as "no
 * data" for five minutes). Only the state gauge carries the state label; on the restart counter
 * and the uptime it would split one replica's history into a series per state. */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "log.h"

/* A scraper or two, and someone with curl: more connections than this wait in the kernel's
 * backlog instead of each taking a thread. */
#define METRICS_CONN_LIMIT 8
#define METRICS_CONN_TIMEOUT_S 10
/* GET has no body; anything larger is not a scrape. */
#define METRICS_MAX_BODY 1024

enum metric_id {
    M_GPU_UTIL,
    M_GPU_MEM_USED,
    M_GPU_MEM_TOTAL,
    M_GPU_TEMP,
    M_GPU_POWER,
    M_REPLICA_STATE,
    M_REPLICA_RESTARTS,
    M_REPLICA_UPTIME,
    M_HB_OK,
    M_HB_FAILED,
    M_HB_AGE,
};

/* The metric names, types and help, in the order they are served. */
static const struct {
    const char *name, *type, *help;
} metric_defs[] = {
    [M_GPU_UTIL] = {"orp_agent_gpu_utilization_percent", "gauge",
                    "Percent of the last sample period in which a kernel ran on the GPU (NVML)."},
    [M_GPU_MEM_USED] = {"orp_agent_gpu_memory_used_bytes", "gauge", "GPU memory in use (NVML)."},
    [M_GPU_MEM_TOTAL] = {"orp_agent_gpu_memory_total_bytes", "gauge", "GPU memory in all (NVML)."},
    [M_GPU_TEMP] = {"orp_agent_gpu_temperature_celsius", "gauge", "GPU die temperature (NVML)."},
    [M_GPU_POWER] = {"orp_agent_gpu_power_watts", "gauge", "GPU power draw (NVML)."},
    [M_REPLICA_STATE] = {"orp_agent_replica_state", "gauge",
                         "1 for the state the replica is in on this host, 0 for the others."},
    [M_REPLICA_RESTARTS] = {"orp_agent_replica_restarts_total", "counter",
                            "Times the replica's runtime was started again."},
    [M_REPLICA_UPTIME] = {"orp_agent_replica_uptime_seconds", "gauge",
                          "Seconds since the replica's current runtime process started; 0 when it "
                          "has none."},
    [M_HB_OK] = {"orp_agent_heartbeat_successes_total", "counter",
                 "Heartbeats the controller answered."},
    [M_HB_FAILED] = {"orp_agent_heartbeat_failures_total", "counter",
                     "Heartbeats without an answer, or answered with an error."},
    [M_HB_AGE] = {"orp_agent_last_heartbeat_age_seconds", "gauge",
                  "Seconds since the last answered heartbeat; +Inf before the first."},
};

int metrics_snapshot_replicas(struct metrics_snapshot *snap, const struct sup *s)
{
    size_t n = 0;
    for (const struct sup_replica *r = s->list; r; r = r->next)
        n++;
    struct metrics_replica *a = n ? calloc(n, sizeof *a) : NULL;
    if (n && !a) return -1;
    size_t i = 0;
    for (const struct sup_replica *r = s->list; r; r = r->next, i++) {
        snprintf(a[i].replica_id, sizeof a[i].replica_id, "%s", r->spec.replica_id);
        a[i].epoch = r->spec.epoch;
        a[i].state = r->state;
        a[i].restarts = r->restarts;
        a[i].started_ms = r->pid > 0 ? r->started_ms : 0;
    }
    free(snap->replicas);
    snap->replicas = a;
    snap->nreplicas = n;
    return 0;
}

int metrics_snapshot_gpus(struct metrics_snapshot *snap, const struct inv_gpu_sample *g, size_t n)
{
    struct inv_gpu_sample *a = n ? malloc(n * sizeof *a) : NULL;
    if (n && !a) return -1;
    if (n) memcpy(a, g, n * sizeof *a);
    free(snap->gpus);
    snap->gpus = a;
    snap->ngpus = n;
    return 0;
}

void metrics_snapshot_free(struct metrics_snapshot *snap)
{
    if (!snap) return;
    free(snap->gpus);
    free(snap->replicas);
    snap->gpus = NULL;
    snap->replicas = NULL;
    snap->ngpus = snap->nreplicas = 0;
}

/* A label value as the text format wants it: backslash, double quote and line feed escaped. */
static void put_label(struct buf *b, const char *name, const char *value, int first)
{
    buf_printf(b, "%s%s=\"", first ? "" : ",", name);
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            buf_append(b, "\\\\", 2);
        else if (*p == '"')
            buf_append(b, "\\\"", 2);
        else if (*p == '\n')
            buf_append(b, "\\n", 2);
        else
            buf_append(b, p, 1);
    }
    buf_append(b, "\"", 1);
}

static void header(struct buf *b, enum metric_id id)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", metric_defs[id].name, metric_defs[id].help,
               metric_defs[id].name, metric_defs[id].type);
}

static void gpu_labels(struct buf *b, enum metric_id id, const struct inv_gpu_sample *g)
{
    char idx[16];
    snprintf(idx, sizeof idx, "%d", g->index);
    buf_printf(b, "%s{", metric_defs[id].name);
    put_label(b, "uuid", g->uuid, 1);
    put_label(b, "index", idx, 0);
    put_label(b, "model", g->model, 0);
    buf_append(b, "} ", 2);
}

static void replica_labels(struct buf *b, enum metric_id id, const struct metrics_replica *r,
                           const char *state)
{
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%lld", (long long)r->epoch);
    buf_printf(b, "%s{", metric_defs[id].name);
    put_label(b, "replica_id", r->replica_id, 1);
    put_label(b, "epoch", epoch, 0);
    if (state) put_label(b, "state", state, 0);
    buf_append(b, "} ", 2);
}

/* Each GPU family: one line per GPU that has the reading. */
static void gpu_family(struct buf *b, const struct metrics_snapshot *s, enum metric_id id,
                       unsigned need)
{
    header(b, id);
    for (size_t i = 0; i < s->ngpus; i++) {
        const struct inv_gpu_sample *g = &s->gpus[i];
        if (!(g->have & need)) continue;
        gpu_labels(b, id, g);
        switch (id) {
        case M_GPU_UTIL:
            buf_printf(b, "%u\n", g->util_pct);
            break;
        case M_GPU_MEM_USED:
            buf_printf(b, "%llu\n", (unsigned long long)g->mem_used);
            break;
        case M_GPU_MEM_TOTAL:
            buf_printf(b, "%llu\n", (unsigned long long)g->mem_total);
            break;
        case M_GPU_TEMP:
            buf_printf(b, "%u\n", g->temp_c);
            break;
        default: /* M_GPU_POWER: NVML gives milliwatts */
            buf_printf(b, "%u.%03u\n", g->power_mw / 1000u, g->power_mw % 1000u);
            break;
        }
    }
}

static void put_seconds(struct buf *b, int64_t ms)
{
    if (ms < 0) ms = 0; /* clocks are monotonic; a snapshot taken "after" now is rounding */
    buf_printf(b, "%lld.%03lld\n", (long long)(ms / 1000), (long long)(ms % 1000));
}

int metrics_render(const struct metrics_snapshot *s, int64_t now_ms, struct buf *b)
{
    size_t before = b->len;
    gpu_family(b, s, M_GPU_UTIL, INV_HAVE_UTIL);
    gpu_family(b, s, M_GPU_MEM_USED, INV_HAVE_MEMORY);
    gpu_family(b, s, M_GPU_MEM_TOTAL, INV_HAVE_MEMORY);
    gpu_family(b, s, M_GPU_TEMP, INV_HAVE_TEMP);
    gpu_family(b, s, M_GPU_POWER, INV_HAVE_POWER);

    header(b, M_REPLICA_STATE);
    for (size_t i = 0; i < s->nreplicas; i++)
        for (int st = SUP_NEW; st <= SUP_FETCHING; st++) { /* every state, "downloading" too */
            replica_labels(b, M_REPLICA_STATE, &s->replicas[i], sup_state_name(st));
            buf_printf(b, "%d\n", s->replicas[i].state == (enum sup_state)st);
        }
    header(b, M_REPLICA_RESTARTS);
    for (size_t i = 0; i < s->nreplicas; i++) {
        replica_labels(b, M_REPLICA_RESTARTS, &s->replicas[i], NULL);
        buf_printf(b, "%lld\n", (long long)s->replicas[i].restarts);
    }
    header(b, M_REPLICA_UPTIME);
    for (size_t i = 0; i < s->nreplicas; i++) {
        replica_labels(b, M_REPLICA_UPTIME, &s->replicas[i], NULL);
        put_seconds(b, s->replicas[i].started_ms ? now_ms - s->replicas[i].started_ms : 0);
    }

    header(b, M_HB_OK);
    buf_printf(b, "%s %lld\n", metric_defs[M_HB_OK].name, (long long)s->heartbeat_ok);
    header(b, M_HB_FAILED);
    buf_printf(b, "%s %lld\n", metric_defs[M_HB_FAILED].name, (long long)s->heartbeat_failed);
    header(b, M_HB_AGE);
    buf_printf(b, "%s ", metric_defs[M_HB_AGE].name);
    if (s->last_heartbeat_ms)
        put_seconds(b, now_ms - s->last_heartbeat_ms);
    else
        buf_printf(b, "+Inf\n");
    /* buf_* leave the buffer valid when out of memory; a short text must not pass for a whole
     * one, so check that the last line made it. */
    return b->len > before && b->data[b->len - 1] == '\n' ? 0 : -1;
}

/* ---- the listener ---- */

struct metrics_server {
    pthread_mutex_t mu; /* guards cur */
    struct metrics_snapshot cur;
    struct httpd_server *srv;
};

static void on_metrics(struct httpd_req *req)
{
    struct metrics_server *m = req->app;
    struct buf b = {0};
    pthread_mutex_lock(&m->mu);
    int rc = metrics_render(&m->cur, util_now_ms(), &b);
    pthread_mutex_unlock(&m->mu);
    if (rc != 0)
        httpd_error(req, 500, "internal_error", NULL, "out of memory rendering the metrics");
    else
        httpd_reply_raw(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    buf_free(&b);
}

static const struct httpd_route metrics_routes[] = {
    {"GET", "/metrics", on_metrics},
};

struct metrics_server *metrics_start(const char *host, int port, char *err, size_t errlen)
{
    struct metrics_server *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&m->mu, NULL);
    struct httpd_config hc = {
        .name = "metrics",
        .host = host,
        .port = port,
        .thread_per_connection = 1, /* a scrape renders a few KiB; no pool needed */
        .conn_limit = METRICS_CONN_LIMIT,
        .conn_timeout_s = METRICS_CONN_TIMEOUT_S,
        .max_body = METRICS_MAX_BODY,
        .routes = metrics_routes,
        .nroutes = sizeof metrics_routes / sizeof metrics_routes[0],
        .app = m,
    };
    m->srv = httpd_start(&hc, err, errlen);
    if (!m->srv) {
        pthread_mutex_destroy(&m->mu);
        free(m);
        return NULL;
    }
    return m;
}

int metrics_port(const struct metrics_server *m)
{
    return httpd_port(m->srv);
}

void metrics_publish(struct metrics_server *m, struct metrics_snapshot *snap)
{
    pthread_mutex_lock(&m->mu);
    struct metrics_snapshot old = m->cur;
    m->cur = *snap;
    pthread_mutex_unlock(&m->mu);
    metrics_snapshot_free(&old);
    snap->gpus = NULL;
    snap->replicas = NULL;
    snap->ngpus = snap->nreplicas = 0;
}

void metrics_stop(struct metrics_server *m)
{
    if (!m) return;
    httpd_stop(m->srv);
    metrics_snapshot_free(&m->cur);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
