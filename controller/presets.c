/* presets: see presets.h. Reads models, gpus, hosts, replicas and device (GPU type) prices; writes
 * nothing. */
#include "presets.h"

#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "ctl.h"
#include "db.h"
#include "log.h"

int presets_gpus_needed(int64_t weights_bytes, int64_t memory_mib, int min_devices)
{
    if (min_devices < 1) min_devices = 1;
    if (min_devices > PRESETS_MAX_TP) return 0;
    if (weights_bytes <= 0) return min_devices;
    if (memory_mib <= 0) return 0;
    /* In bytes; fits easily in 64 bits (8 × 16 TiB). */
    int64_t need = weights_bytes / 4 * 5;
    int64_t usable = memory_mib * 1024 * 1024 / 10 * 9;
    for (int n = 1; n <= PRESETS_MAX_TP; n *= 2)
        if (n >= min_devices && (int64_t)n * usable >= need) return n;
    return 0;
}

/* 1 when choice a (type ia, n GPUs) is better than choice b. */
static int better(const struct presets_gpu *a, int na, const struct presets_gpu *b, int nb)
{
    int now_a = a->free_block >= na, now_b = b->free_block >= nb;
    if (now_a != now_b) return now_a;
    int64_t pa = na * a->micros_per_gpu_hour, pb = nb * b->micros_per_gpu_hour;
    if (pa != pb) return pa < pb;
    if (na != nb) return na < nb;
    if (a->memory_mib != b->memory_mib) return a->memory_mib < b->memory_mib;
    return strcmp(a->name, b->name) < 0;
}

int presets_choose(const struct presets_gpu *gpus, int ngpus, int64_t weights_bytes,
                   int min_devices, const char *only_type, int fixed_n, int *n)
{
    int best = -1, best_n = 0;
    for (int i = 0; i < ngpus; i++) {
        if (only_type && strcmp(only_type, gpus[i].name) != 0) continue;
        int k = fixed_n > 0 ? fixed_n
                            : presets_gpus_needed(weights_bytes, gpus[i].memory_mib, min_devices);
        if (k == 0 || k > gpus[i].max_per_host) continue;
        if (fixed_n > 0 && (int64_t)k * gpus[i].memory_mib * 1024 * 1024 < weights_bytes) continue;
        if (best < 0 || better(&gpus[i], k, &gpus[best], best_n)) {
            best = i;
            best_n = k;
        }
    }
    if (best >= 0) *n = best_n;
    return best;
}

/* ---- the database side ---- */

/* The fleet's device types of kind ("gpu", or "cpu" for CPU slots) into out (at most max); pool
 * NULL: every pool. -1 on error. */
static int load_types(PGconn *c, const char *kind, const char *pool, struct presets_gpu *out,
                      int max)
{
    PGresult *r;
    char lim[16];
    snprintf(lim, sizeof lim, "%d", max);
    const char *p[] = {pool, lim, kind};
    /* Per (type, host): healthy GPUs, and those no live replica holds on an uncordoned host. */
    enum db_status st = db_exec(
        c,
        "WITH d AS (SELECT g.host_id, g.model, g.memory_mib, g.healthy, h.cordoned, "
        "    NOT EXISTS (SELECT 1 FROM replicas r WHERE r.host_id = g.host_id "
        "      AND r.state NOT IN ('stopped', 'pending') AND g.uuid = ANY (r.devices)) AS free "
        "  FROM gpus g JOIN hosts h ON h.id = g.host_id "
        "  WHERE g.kind = $3 AND h.state = 'ready' AND ($1::text IS NULL OR h.pool = $1)), "
        "per_host AS (SELECT model, min(memory_mib) AS mem, "
        "    count(*) FILTER (WHERE healthy) AS total, "
        "    count(*) FILTER (WHERE healthy AND free AND NOT cordoned) AS nfree "
        "  FROM d GROUP BY model, host_id) "
        "SELECT model, min(mem), max(total), max(nfree), "
        "  COALESCE(device_price_at($3, gpu_type_of($3, model), now()), 0) " /* schema/016 */
        "FROM per_host GROUP BY model ORDER BY model LIMIT $2::int",
        3, p, &r, NULL);
    if (st < 0) return -1;
    int n = PQntuples(r);
    for (int i = 0; i < n && i < max; i++) {
        snprintf(out[i].name, sizeof out[i].name, "%s", PQgetvalue(r, i, 0));
        out[i].memory_mib = db_int(r, i, 1);
        out[i].max_per_host = (int)db_int(r, i, 2);
        out[i].free_block = (int)db_int(r, i, 3);
        out[i].micros_per_gpu_hour = db_int(r, i, 4);
    }
    PQclear(r);
    return n < max ? n : max;
}

/* The bytes of a model's weights: its manifest's *.safetensors files; without a manifest, the
 * parameter count the operator gave × 2 (BF16, what the runtime serves); else 0: the size is
 * unknown, and min_devices decides. */
#define WEIGHTS_SQL                                                                                \
    "COALESCE((SELECT sum((f->>'size')::bigint) FROM jsonb_array_elements("                        \
    "  CASE WHEN jsonb_typeof(m.manifest->'files') = 'array' THEN m.manifest->'files' "            \
    "  ELSE '[]'::jsonb END) f WHERE f->>'path' LIKE '%.safetensors'), m.parameter_count * 2, 0)"

int presets_apply(struct httpd_req *req, PGconn *c, const char *model, const char *pool,
                  const char **gpu_type, char *buf, size_t buflen, int64_t *gpus)
{
    struct presets_gpu types[PRESETS_MAX_TYPES];
    int ntypes = load_types(c, "gpu", pool && *pool ? pool : NULL, types, PRESETS_MAX_TYPES);
    PGresult *r;
    if (ntypes < 0 || db_exec(c,
                              "SELECT " WEIGHTS_SQL ", m.min_devices FROM models m "
                              "WHERE m.name = $1",
                              1, (const char *[]){model}, &r, NULL) != DB_ROWS) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the GPU types");
        return -1;
    }
    int64_t weights = db_int(r, 0, 0);
    int min_dev = (int)db_int(r, 0, 1);
    PQclear(r);
    if (*gpu_type) {
        int i = 0;
        while (i < ntypes && strcmp(types[i].name, *gpu_type) != 0)
            i++;
        if (i == ntypes) {
            httpd_error(req, 400, "invalid_parameter", "gpu_type",
                        "no live host%s%s offers GPU type '%s' (see GET /v1/catalog/presets)",
                        pool && *pool ? " in pool " : "", pool && *pool ? pool : "", *gpu_type);
            return -1;
        }
        int need = presets_gpus_needed(weights, types[i].memory_mib, min_dev);
        int64_t want = *gpus ? *gpus : need ? need : PRESETS_MAX_TP;
        /* The weights alone must fit in what is asked for; the headroom is only advice. */
        if (want * types[i].memory_mib * 1024 * 1024 < weights) {
            httpd_error(req, 400, "invalid_parameter", *gpus ? "gpus_per_replica" : "gpu_type",
                        "model '%s' (%.1f GB of weights) does not fit on %lld × %s", model,
                        (double)weights / 1e9, (long long)want, *gpu_type);
            return -1;
        }
        if (!*gpus) *gpus = want;
        return 0;
    }
    if (ntypes == 0) return 0; /* no GPUs yet: any GPU, width min_devices (scheduler says why) */
    int n = 0;
    int pick = presets_choose(types, ntypes, weights, min_dev, NULL, (int)*gpus, &n);
    if (pick < 0 && *gpus) {
        httpd_error(req, 400, "invalid_parameter", "gpus_per_replica",
                    "model '%s' (%.1f GB of weights) fits on %lld GPUs of no type the fleet "
                    "offers on one host (see GET /v1/catalog/presets)",
                    model, (double)weights / 1e9, (long long)*gpus);
        return -1;
    }
    if (pick < 0) {
        httpd_error(req, 400, "invalid_parameter", "gpu_type",
                    "model '%s' (%.1f GB of weights) fits on no GPU type of the fleet: it needs "
                    "more than %d GPUs of the largest on one host",
                    model, (double)weights / 1e9, PRESETS_MAX_TP);
        return -1;
    }
    snprintf(buf, buflen, "%s", types[pick].name);
    *gpu_type = buf;
    if (!*gpus) *gpus = n;
    return 0;
}

/* GET /v1/catalog/presets[?pool=P]: for every model of the catalog (not retired), the GPU types it
 * fits on with GPUs per replica and the price of one replica per minute; the one a deploy without
 * gpu_type gets is marked default. CPU-only models list their CPU slots. */
static void h_presets(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    const char *pool = httpd_query(req, "pool");
    struct presets_gpu types[PRESETS_MAX_TYPES], cpus[PRESETS_MAX_TYPES];
    int ntypes = load_types(c, "gpu", pool && *pool ? pool : NULL, types, PRESETS_MAX_TYPES);
    int ncpus = ntypes < 0
                    ? -1
                    : load_types(c, "cpu", pool && *pool ? pool : NULL, cpus, PRESETS_MAX_TYPES);
    int cpu_block = 0;
    for (int k = 0; k < ncpus; k++)
        if (cpus[k].free_block > cpu_block) cpu_block = cpus[k].free_block;
    PGresult *r = NULL;
    enum db_status st =
        ncpus < 0 ? DB_HARD
                  : db_exec(c,
                            "SELECT m.name, " WEIGHTS_SQL ", m.min_devices, "
                            "  'gpu' = ANY (m.device_kinds), 'cpu' = ANY (m.device_kinds), "
                            "  COALESCE((SELECT micros_per_device_hour FROM device_prices "
                            "    WHERE device_kind = 'cpu' AND effective_at <= now() "
                            "    ORDER BY effective_at DESC LIMIT 1), 0), m.device_kinds[1] "
                            "FROM models m WHERE m.retired_at IS NULL ORDER BY m.name",
                            0, NULL, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 503, "database_unavailable", NULL, "could not read the presets");
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t weights = db_int(r, i, 1);
        int min_dev = (int)db_int(r, i, 2);
        int on_gpu = PQgetvalue(r, i, 3)[0] == 't', on_cpu = PQgetvalue(r, i, 4)[0] == 't';
        int def_n = 0;
        int def = on_gpu ? presets_choose(types, ntypes, weights, min_dev, NULL, 0, &def_n) : -1;
        int gpu_first = !strcmp(PQgetvalue(r, i, 6), "gpu");
        json_t *list = json_array();
        for (int t = 0; on_gpu && t < ntypes; t++) {
            int n = presets_gpus_needed(weights, types[t].memory_mib, min_dev);
            if (n == 0 || n > types[t].max_per_host) continue;
            json_array_append_new(
                list,
                json_pack("{s:s, s:s, s:I, s:i, s:I, s:I, s:b, s:b}", "device_kind", "gpu",
                          "gpu_type", types[t].name, "memory_mib", (json_int_t)types[t].memory_mib,
                          "gpus_per_replica", n, "micros_per_device_hour",
                          (json_int_t)types[t].micros_per_gpu_hour, "price_micros_per_minute",
                          (json_int_t)((n * types[t].micros_per_gpu_hour + 59) / 60),
                          "available_now", types[t].free_block >= n, "default",
                          t == def && gpu_first));
        }
        if (on_cpu) {
            int64_t cpu_price = db_int(r, i, 5);
            json_t *p =
                json_pack("{s:s, s:n, s:I, s:i, s:I, s:I, s:b, s:b}", "device_kind", "cpu",
                          "gpu_type", "memory_mib", (json_int_t)0, "gpus_per_replica", min_dev,
                          "micros_per_device_hour", (json_int_t)cpu_price,
                          "price_micros_per_minute", (json_int_t)((min_dev * cpu_price + 59) / 60),
                          "available_now", cpu_block >= min_dev, "default", !gpu_first);
            json_array_append_new(list, p);
        }
        json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:o}", "object", "model_presets",
                                              "model", PQgetvalue(r, i, 0), "weights_bytes",
                                              (json_int_t)weights, "presets", list));
    }
    PQclear(r);
    httpd_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

const struct httpd_route presets_routes[] = {
    {"GET", "/v1/catalog/presets", h_presets},
};
const size_t presets_nroutes = sizeof presets_routes / sizeof presets_routes[0];
