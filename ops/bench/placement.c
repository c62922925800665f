/* orp-bench-placement: the scheduler's placement through the production SQL, at fleet scale,
 * against random fit replaying the same arrivals in the same run (ops/bench/placement runs it).
 *
 * The fleet: --hosts hosts × --gpus GPUs in PostgreSQL (rows as agents would register them: one
 * NVSwitch box per host, every GPU an NVLink peer of the others, half the GPUs on each of two NUMA
 * nodes). The arrivals: --replicas replicas from a fixed seed, one per tick on average
 * (exponential gaps), tensor-parallel degree 1/2/4/8 with probability 40/30/20/10 %, lifetimes
 * exponential with mean --mean-life ticks; written to --arrivals FILE first, and both policies
 * replay that file.
 *
 * The simulation, per policy: arrivals are taken --batch at a time; before each batch, the replicas
 * whose lifetime ended by the batch's first arrival are stopped; the batch is inserted as pending
 * replicas and one scheduler pass (sched_pass_policy: the production pass, its SQL and its writes)
 * places them; a replica the pass could not place is rejected (stopped), not retried. Reported:
 * placements per second of pass time, the share of GPUs allocated at the moment the first 8-GPU
 * replica could not be placed (counted exactly: the allocation before the pass plus what the pass
 * placed ahead of it, since a pass places in arrival order), and a check that no GPU is held twice.
 */
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "db.h"
#include "log.h"
#include "scheduler.h"
#include "util.h"

struct opts {
    const char *database_url;
    const char *arrivals;
    int64_t hosts, gpus, replicas, seed, batch, mean_life;
};

#define OPT(n, t, d, h, f)                                                                         \
    {                                                                                              \
        n, t, d, h, offsetof(struct opts, f)                                                       \
    }
static const struct cfg_opt options[] = {
    OPT("database-url", CFG_STRING, NULL, "PostgreSQL, migrated", database_url),
    OPT("arrivals", CFG_STRING, "/tmp/orp-placement-arrivals.csv", "the arrival file to write",
        arrivals),
    OPT("hosts", CFG_INT, "1000", "simulated hosts", hosts),
    OPT("gpus", CFG_INT, "8", "GPUs per host", gpus),
    OPT("replicas", CFG_INT, "10000", "arrivals", replicas),
    OPT("seed", CFG_INT, "42", "random seed", seed),
    OPT("batch", CFG_INT, "100", "arrivals per scheduler pass", batch),
    OPT("mean-life", CFG_INT, "4000", "mean lifetime in ticks (one arrival per tick)", mean_life),
};

/* xorshift64*: the same sequence on every machine. */
static uint64_t rng_state;
static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}
static double rng_unit(void) /* (0, 1] */
{
    return ((double)(rng_next() >> 11) + 1.0) / 9007199254740992.0;
}

struct arrival {
    double t, life;
    int tp;
};

static void die(const char *what, PGconn *c)
{
    fprintf(stderr, "orp-bench-placement: %s%s%s\n", what, c ? ": " : "",
            c ? PQerrorMessage(c) : "");
    exit(1);
}

static void sql(PGconn *c, const char *q)
{
    PGresult *r = PQexec(c, q);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "%s\n", q);
        die("query failed", c);
    }
    PQclear(r);
}

static PGresult *sqlp(PGconn *c, const char *q, int n, const char *const *p)
{
    PGresult *r = PQexecParams(c, q, n, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "%s\n", q);
        die("query failed", c);
    }
    return r;
}

/* Writes the arrival file and returns it read back (what both policies replay). */
static struct arrival *make_arrivals(const struct opts *o)
{
    FILE *f = fopen(o->arrivals, "w");
    if (!f) die("cannot write the arrival file", NULL);
    rng_state = (uint64_t)o->seed * UINT64_C(0x9E3779B97F4A7C15) + 1;
    double t = 0;
    fprintf(f, "index,arrival_tick,tp,lifetime_ticks\n");
    for (int64_t i = 0; i < o->replicas; i++) {
        t += -log(rng_unit());
        double u = rng_unit();
        int tp = u <= 0.4 ? 1 : u <= 0.7 ? 2 : u <= 0.9 ? 4 : 8;
        double life = -log(rng_unit()) * (double)o->mean_life;
        fprintf(f, "%" PRId64 ",%.6f,%d,%.6f\n", i, t, tp, life);
    }
    fclose(f);
    struct arrival *a = calloc((size_t)o->replicas, sizeof *a);
    f = fopen(o->arrivals, "r");
    if (!a || !f) die("cannot read the arrival file back", NULL);
    char line[256];
    if (!fgets(line, sizeof line, f)) die("empty arrival file", NULL);
    for (int64_t i = 0; i < o->replicas; i++) {
        long long idx;
        if (!fgets(line, sizeof line, f) ||
            sscanf(line, "%lld,%lf,%d,%lf", &idx, &a[i].t, &a[i].tp, &a[i].life) != 4)
            die("malformed arrival file", NULL);
    }
    fclose(f);
    return a;
}

/* The fleet and one endpoint per TP degree, as agents and customers would have made them. */
static void make_fleet(PGconn *c, const struct opts *o)
{
    char n[24], g[24];
    snprintf(n, sizeof n, "%" PRId64, o->hosts);
    snprintf(g, sizeof g, "%" PRId64, o->gpus);
    const char *p[] = {n, g};
    PQclear(sqlp(c,
                 "INSERT INTO hosts (name, address, key_hash) "
                 "SELECT 'sim-' || i, '10.0.' || (i / 250) || '.' || (i % 250), md5(i::text) "
                 "FROM generate_series(1, $1::int) i",
                 1, p));
    PQclear(sqlp(c,
                 "INSERT INTO gpus (host_id, idx, uuid, kind, model, memory_mib, numa_node, "
                 "  nvlink_peers, healthy) "
                 "SELECT h.id, k, 'GPU-' || h.id || '-' || k, 'gpu', 'NVIDIA H100 80GB HBM3', "
                 "  81559, CASE WHEN k < $1::int / 2 THEN 0 ELSE 1 END, "
                 "  ARRAY(SELECT 'GPU-' || h.id || '-' || j FROM generate_series(0, $1::int - 1) j "
                 "        WHERE j <> k), true "
                 "FROM hosts h, generate_series(0, $1::int - 1) k WHERE h.name LIKE 'sim-%'",
                 1, p + 1));
    sql(c, "INSERT INTO accounts (name) VALUES ('bench')");
    sql(c, "INSERT INTO models (name, family, source, context_length) "
           "VALUES ('bench-model', 'llama', '/nonexistent', 8192)");
    sql(c, "INSERT INTO endpoints (account_id, name, model_id, device_kind, gpus_per_replica, "
           "  replicas) "
           "SELECT a.id, 'tp' || tp, m.id, 'gpu', tp, 16 FROM accounts a, models m, "
           "  unnest(ARRAY[1, 2, 4, 8]) tp WHERE a.name = 'bench' AND m.name = 'bench-model'");
    sql(c, "ANALYZE");
}

/* Random fit: a host chosen uniformly among those with enough free GPUs, and random free GPUs on
 * it (what a scheduler does that takes free GPUs in any order). */
static int random_fit(struct sched_host *hosts, int nhosts, const struct sched_req *req,
                      int *chosen, char *why, size_t whylen)
{
    int pick = -1, seen = 0;
    for (int h = 0; h < nhosts; h++) {
        int nfree = 0;
        for (int d = 0; d < hosts[h].ndevices; d++) {
            const struct sched_device *dv = &hosts[h].devices[d];
            nfree += dv->free && dv->healthy && !strcmp(dv->kind, req->kind);
        }
        if (hosts[h].cordoned || nfree < req->n) continue;
        if (rng_next() % (uint64_t)++seen == 0) pick = h; /* reservoir sampling */
    }
    if (pick < 0) {
        snprintf(why, whylen, "no capacity: needs %d GPUs on one host", req->n);
        return -1;
    }
    int freeidx[SCHED_MAX_DEVICES], nf = 0;
    struct sched_host *hh = &hosts[pick];
    for (int d = 0; d < hh->ndevices; d++)
        if (hh->devices[d].free && hh->devices[d].healthy &&
            !strcmp(hh->devices[d].kind, req->kind))
            freeidx[nf++] = d;
    for (int k = 0; k < req->n; k++) {
        int j = k + (int)(rng_next() % (uint64_t)(nf - k));
        int t = freeidx[k];
        freeidx[k] = freeidx[j];
        freeidx[j] = t;
        chosen[k] = freeidx[k];
        hh->devices[chosen[k]].free = 0;
    }
    return pick;
}

struct result {
    const char *policy;
    int64_t placed, rejected, passes;
    int64_t pass_ms, wall_ms;
    int64_t first_fail_index; /* arrival index of the first 8-GPU replica not placed; -1 none */
    double share_at_fail;     /* GPUs allocated then / all GPUs */
    double mean_share;        /* GPUs allocated after each pass, averaged */
    int64_t double_held;      /* GPUs held by two live replicas at the end (must be 0) */
};

struct live {
    char id[40];
    double end;
    int tp;
};

static int64_t allocated(PGconn *c)
{
    PGresult *r = sqlp(c,
                       "SELECT COALESCE(sum(cardinality(devices)), 0) FROM replicas "
                       "WHERE state NOT IN ('pending', 'stopped')",
                       0, NULL);
    int64_t n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

static void run(PGconn *c, const struct opts *o, const struct arrival *a, const char *policy,
                sched_place_fn place, struct result *res)
{
    memset(res, 0, sizeof *res);
    res->policy = policy;
    res->first_fail_index = -1;
    sql(c, "DELETE FROM replicas");
    sql(c,
        "VACUUM ANALYZE replicas"); /* the second policy must not pay for the first's dead rows */
    rng_state = (uint64_t)o->seed * UINT64_C(0xD1B54A32D192ED03) + 7; /* random fit's own stream */
    struct live *lv = calloc((size_t)o->replicas, sizeof *lv);
    size_t nlive = 0;
    double total = (double)(o->hosts * o->gpus), share_sum = 0;
    int64_t t0 = util_now_ms();
    struct buf ids = {0}, tps = {0}, ords = {0};
    for (int64_t b = 0; b < o->replicas; b += o->batch) {
        int64_t e = b + o->batch < o->replicas ? b + o->batch : o->replicas;
        /* Departures up to this batch's first arrival. */
        ids.len = 0;
        buf_append(&ids, "{", 1);
        int nd = 0;
        for (size_t i = 0; i < nlive;) {
            if (lv[i].end <= a[b].t) {
                buf_printf(&ids, "%s%s", nd++ ? "," : "", lv[i].id);
                lv[i] = lv[--nlive];
            } else {
                i++;
            }
        }
        buf_append(&ids, "}", 1);
        if (nd) {
            const char *p[] = {ids.data};
            PQclear(
                sqlp(c, "UPDATE replicas SET state = 'stopped' WHERE id = ANY ($1::uuid[])", 1, p));
        }
        int64_t before = allocated(c);
        /* The batch, pending, in arrival order (created_at, then ordinal = arrival index). */
        tps.len = ords.len = 0;
        buf_append(&tps, "{", 1);
        buf_append(&ords, "{", 1);
        for (int64_t i = b; i < e; i++) {
            buf_printf(&tps, "%s%d", i > b ? "," : "", a[i].tp);
            buf_printf(&ords, "%s%" PRId64, i > b ? "," : "", i);
        }
        buf_append(&tps, "}", 1);
        buf_append(&ords, "}", 1);
        const char *pi[] = {tps.data, ords.data};
        PQclear(sqlp(c,
                     "INSERT INTO replicas (endpoint_id, account_id, ordinal, created_at) "
                     "SELECT e.id, e.account_id, x.ord, now() + x.ord * interval '1 microsecond' "
                     "FROM unnest($1::int[], $2::int[]) x(tp, ord) "
                     "JOIN endpoints e ON e.name = 'tp' || x.tp",
                     2, pi));
        int64_t p0 = util_now_ms();
        int placed = sched_pass_policy(c, place);
        res->pass_ms += util_now_ms() - p0;
        res->passes++;
        if (placed < 0) die("the scheduler pass failed", c);
        /* What the pass did, in arrival order. */
        char lo[24], hi[24];
        snprintf(lo, sizeof lo, "%" PRId64, b);
        snprintf(hi, sizeof hi, "%" PRId64, e - 1);
        const char *pr[] = {lo, hi};
        PGresult *r = sqlp(c,
                           "SELECT id, ordinal, state = 'assigned', cardinality(devices) "
                           "FROM replicas WHERE ordinal BETWEEN $1::int AND $2::int "
                           "  AND state IN ('pending', 'assigned') ORDER BY ordinal",
                           2, pr);
        int64_t running = before;
        for (int i = 0; i < PQntuples(r); i++) {
            int64_t ord = strtoll(PQgetvalue(r, i, 1), NULL, 10);
            if (PQgetvalue(r, i, 2)[0] == 't') {
                res->placed++;
                running += strtoll(PQgetvalue(r, i, 3), NULL, 10);
                snprintf(lv[nlive].id, sizeof lv[nlive].id, "%s", PQgetvalue(r, i, 0));
                lv[nlive].end = a[ord].t + a[ord].life;
                lv[nlive].tp = a[ord].tp;
                nlive++;
            } else {
                res->rejected++;
                if (a[ord].tp == 8 && res->first_fail_index < 0) {
                    res->first_fail_index = ord;
                    res->share_at_fail = (double)running / total;
                }
            }
        }
        PQclear(r);
        /* Not placed: rejected, so the next pass does not retry it. */
        PQclear(sqlp(c,
                     "UPDATE replicas SET state = 'stopped' WHERE state = 'pending' "
                     "  AND ordinal BETWEEN $1::int AND $2::int",
                     2, pr));
        share_sum += (double)allocated(c) / total;
    }
    res->wall_ms = util_now_ms() - t0;
    res->mean_share = share_sum / (double)res->passes;
    PGresult *r =
        sqlp(c,
             "SELECT count(*) FROM (SELECT d FROM replicas, unnest(devices) d "
             "  WHERE state NOT IN ('pending', 'stopped') GROUP BY d HAVING count(*) > 1) x",
             0, NULL);
    res->double_held = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    buf_free(&ids);
    buf_free(&tps);
    buf_free(&ords);
    free(lv);
}

static void print_row(const struct result *r, double base_rate)
{
    double rate = r->pass_ms ? (double)r->placed * 1000.0 / (double)r->pass_ms : 0;
    char fail[64];
    if (r->first_fail_index >= 0)
        snprintf(fail, sizeof fail, "%.1f %% (arrival %" PRId64 ")", 100.0 * r->share_at_fail,
                 r->first_fail_index);
    else
        snprintf(fail, sizeof fail, "never failed");
    printf("| %s | %" PRId64 " | %" PRId64 " | %.0f | %.2f | %s | %.1f %% | %" PRId64 " | %.1f |\n",
           r->policy, r->placed, r->rejected, rate, base_rate > 0 ? rate / base_rate : 1.0, fail,
           100.0 * r->mean_share, r->double_held, (double)r->wall_ms / 1000.0);
}

int main(int argc, char **argv)
{
    struct opts o;
    char err[256];
    int rc = cfg_parse(options, sizeof options / sizeof options[0], &o, "ORP_BENCH", argc, argv, 1,
                       err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, "usage: orp-bench-placement --database-url URL [options]", options,
                       sizeof options / sizeof options[0], "ORP_BENCH");
        return 0;
    }
    if (rc != 0 || !o.database_url || o.hosts < 1 || o.gpus < 8 || o.gpus > SCHED_MAX_DEVICES ||
        o.replicas < 1 || o.batch < 1 || o.mean_life < 1) {
        fprintf(stderr, "orp-bench-placement: %s\n", rc ? err : "bad options (see --help)");
        return 2;
    }
    log_init("orp-bench-placement", "warn");
    PGconn *c = PQconnectdb(o.database_url);
    if (PQstatus(c) != CONNECTION_OK) die("cannot connect", c);
    db_quiet_notices(c);
    struct arrival *a = make_arrivals(&o);
    make_fleet(c, &o);
    struct result ours, rnd;
    run(c, &o, a, "random fit", random_fit, &rnd);
    run(c, &o, a, "ours (sched_place)", sched_place, &ours);
    printf("%" PRId64 " hosts x %" PRId64 " GPUs, %" PRId64 " arrivals (seed %" PRId64
           ", TP 1/2/4/8 = 40/30/20/10 %%, mean life %" PRId64 " ticks), %" PRId64
           " per pass; arrival file %s\n\n",
           o.hosts, o.gpus, o.replicas, o.seed, o.mean_life, o.batch, o.arrivals);
    printf("| policy | placed | rejected | placements/s (pass time) | vs random fit | GPUs "
           "allocated at the first 8-GPU rejection | mean GPUs allocated | GPUs held twice | "
           "wall s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    double base = rnd.pass_ms ? (double)rnd.placed * 1000.0 / (double)rnd.pass_ms : 0;
    print_row(&rnd, base);
    print_row(&ours, base);
    free(a);
    PQfinish(c);
    return ours.double_held || rnd.double_held ? 1 : 0;
}
