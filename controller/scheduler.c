/* scheduler: see scheduler.h. */
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "jsonx.h"
#include "log.h"
#include "replica.h"
#include "util.h"

/* A device this request may use. */
/* strcmp(a, b) == 0, inlined: this runs for every device of every host for every replica. */
static inline int same_kind(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static int usable(const struct sched_device *d, const struct sched_req *rq)
{
    return d->free && d->healthy && same_kind(d->kind, rq->kind) &&
           (!rq->gpu_type || !rq->gpu_type[0] || !strcmp(d->model, rq->gpu_type));
}

static int numa_match(int a, int b)
{
    return a < 0 || b < 0 || a == b;
}

static int is_peer(const struct sched_host *h, int a, int b)
{
    return (h->devices[a].peers >> b) & 1u;
}

/* One candidate set on one host. */
struct pick {
    int tier;   /* 0 best .. 3 */
    int island; /* free usable peers of the seed, itself included: smaller is a tighter fit */
    int dev[SCHED_MAX_DEVICES];
};

/* Greedy set from seed: the lowest-indexed usable devices that are NVLink peers of all taken so
 * far (when need_peers) and on the seed's NUMA node (when same_numa). 1 when n were found. */
static int grow(const struct sched_host *h, const struct sched_req *rq, int n, int seed,
                int need_peers, int same_numa, int *out)
{
    int got = 0, numa = h->devices[seed].numa;
    out[got++] = seed;
    while (got < n) {
        int best = -1;
        for (int d = 0; d < h->ndevices; d++) {
            const struct sched_device *dv = &h->devices[d];
            if (!usable(dv, rq)) continue;
            int taken = 0, ok = 1;
            for (int k = 0; k < got; k++) {
                taken |= out[k] == d;
                if (need_peers && !is_peer(h, out[k], d)) ok = 0;
            }
            if (taken || !ok) continue;
            if (same_numa && !numa_match(numa, dv->numa)) continue;
            if (best < 0 || dv->idx < h->devices[best].idx) best = d;
        }
        if (best < 0) return 0;
        if (numa < 0) numa = h->devices[best].numa; /* the first known node fixes the set's */
        out[got++] = best;
    }
    return 1;
}

/* The best set of n usable devices on host h, or 0 when fewer than n are usable. */
static int best_on_host(const struct sched_host *h, const struct sched_req *rq, int n,
                        struct pick *best)
{
    static const struct {
        int peers, numa;
    } tiers[] = {{1, 1}, {1, 0}, {0, 1}, {0, 0}};
    for (int t = 0; t < 4; t++) {
        int found = 0;
        for (int seed = 0; seed < h->ndevices; seed++) {
            if (!usable(&h->devices[seed], rq)) continue;
            struct pick p = {.tier = t, .island = 0};
            if (!grow(h, rq, n, seed, tiers[t].peers, tiers[t].numa, p.dev)) continue;
            for (int d = 0; d < h->ndevices; d++)
                if (usable(&h->devices[d], rq) && (d == seed || is_peer(h, seed, d))) p.island++;
            /* Fewer free in the island first, then the lower first device index. */
            if (!found || p.island < best->island ||
                (p.island == best->island &&
                 h->devices[p.dev[0]].idx < h->devices[best->dev[0]].idx))
                *best = p;
            found = 1;
        }
        if (found) return 1;
    }
    return 0;
}

/* 1 when host h lists model among its cached ones. */
static int has_cached(const struct sched_host *h, const char *model)
{
    if (!model || !model[0] || !h->cached[0]) return 0;
    char key[300];
    snprintf(key, sizeof key, "\n%s\n", model);
    return strstr(h->cached, key) != NULL;
}

/* 1 when h can hold req's weights: nothing to fetch, an agent that does not say, the model already
 * cached there, or room for it. */
static int disk_ok(const struct sched_host *h, const struct sched_req *req)
{
    return req->bytes <= 0 || h->disk_free < 0 || h->disk_free >= req->bytes ||
           has_cached(h, req->model);
}

int sched_place(struct sched_host *hosts, int nhosts, const struct sched_req *req, int *chosen,
                char *why, size_t whylen)
{
    int best = -1, best_free = 0, largest = 0, eligible = 0, disk_short = 0;
    int64_t most_disk = 0;
    struct pick bp = {0}, p;
    const char *pool = req->pool && req->pool[0] ? req->pool : NULL;
    for (int h = 0; h < nhosts && req->n > 0 && req->n <= SCHED_MAX_DEVICES; h++) {
        struct sched_host *hh = &hosts[h];
        if (hh->cordoned || (pool && strcmp(pool, hh->pool) != 0)) continue;
        eligible++;
        if (!disk_ok(hh, req)) {
            disk_short++;
            if (hh->disk_free > most_disk) most_disk = hh->disk_free;
            continue;
        }
        int nfree = 0;
        uint64_t mask = 0;
        for (int d = 0; d < hh->ndevices; d++)
            if (usable(&hh->devices[d], req)) {
                nfree++;
                mask |= UINT64_C(1) << d;
            }
        if (nfree > largest) largest = nfree;
        if (nfree < req->n) continue;
        /* The memo: within a pass only the host just placed on changes, so a batch of replicas
         * costs one full search per host and width, then a comparison per host. */
        /* A request for a named GPU type is searched directly (the memo is per kind). */
        struct sched_fit *f = req->n <= SCHED_FIT_WIDTHS && !(req->gpu_type && req->gpu_type[0])
                                  ? &hh->fit[req->n - 1]
                                  : NULL;
        if (f && f->kind == req->kind[0] && f->mask == mask) {
            if (!f->ok) continue;
            p.tier = f->tier;
            p.island = f->island;
            p.dev[0] = -1; /* the set itself is found again if this host wins */
        } else {
            int ok = best_on_host(hh, req, req->n, &p);
            if (f)
                *f =
                    (struct sched_fit){mask, req->kind[0], (char)ok, (char)p.tier, (short)p.island};
            if (!ok) continue;
        }
        if (best < 0 || p.tier < bp.tier || (p.tier == bp.tier && p.island < bp.island) ||
            (p.tier == bp.tier && p.island == bp.island && nfree < best_free)) {
            best = h;
            best_free = nfree;
            bp = p;
            /* Nothing can beat the best tier on an island and a host it fills exactly, and a
             * later host only ties: stop looking (this makes a pass over a big fleet cheap). */
            if (p.tier == 0 && p.island == req->n && nfree == req->n) break;
        }
    }
    if (best < 0) {
        if (why) {
            const char *k = !strcmp(req->kind, "cpu")           ? "CPU"
                            : req->gpu_type && req->gpu_type[0] ? req->gpu_type
                                                                : "GPU";
            if (disk_short && disk_short == eligible)
                snprintf(why, whylen,
                         "no capacity: needs %.1f GiB of free disk for the weights of %s; the "
                         "hosts have at most %.1f GiB",
                         (double)req->bytes / (1 << 30), req->model ? req->model : "the model",
                         (double)most_disk / (1 << 30));
            else if (pool && !eligible)
                snprintf(why, whylen, "no capacity: no schedulable host in pool '%s'", pool);
            else
                snprintf(
                    why, whylen,
                    "no capacity: needs %d\u00d7%s on one host%s%s%s; largest free block is %d",
                    req->n, k, pool ? " in pool '" : "", pool ? pool : "", pool ? "'" : "",
                    largest);
        }
        return -1;
    }
    struct sched_host *bh = &hosts[best];
    if (bp.dev[0] < 0) best_on_host(bh, req, req->n, &bp); /* from the memo: find the set */
    /* In device index order: the order CUDA_VISIBLE_DEVICES lists them in, and predictable. */
    for (int k = 0; k < req->n; k++) {
        int j = k;
        while (j > 0 && bh->devices[chosen[j - 1]].idx > bh->devices[bp.dev[k]].idx) {
            chosen[j] = chosen[j - 1];
            j--;
        }
        chosen[j] = bp.dev[k];
        bh->devices[bp.dev[k]].free = 0;
    }
    /* The download to come takes its room; the next replica of the model finds it cached. */
    if (req->bytes > 0 && bh->disk_free >= 0 && !has_cached(bh, req->model)) {
        bh->disk_free -= req->bytes;
        size_t len = strlen(bh->cached);
        if (req->model && len + strlen(req->model) + 3 < sizeof bh->cached)
            snprintf(bh->cached + len, sizeof bh->cached - len, "%s%s\n", len ? "" : "\n",
                     req->model);
    }
    return best;
}

/* A pass loads the whole fleet: ~8 KiB per host, so 10 000 hosts are 80 MiB. Past this, the pass
 * should page by pool; until a fleet that large exists, hosts beyond it are not placed on (and the
 * pass logs it). */
#define SCHED_MAX_HOSTS 10000

struct pass {
    struct sched_host *hosts; /* grown as hosts appear */
    int nhosts, cap;
    int placed;
    sched_place_fn place;
};

/* The index of host id in p, or -1. Rows come ordered by host, so the last host is checked first.
 */
static int find_host(struct pass *p, int64_t id)
{
    if (p->nhosts && p->hosts[p->nhosts - 1].id == id) return p->nhosts - 1;
    int lo = 0, hi = p->nhosts - 1; /* hosts are appended in increasing id order */
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (p->hosts[mid].id == id) return mid;
        if (p->hosts[mid].id < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* Room for one more host: 0, or -1 when out of memory or at SCHED_MAX_HOSTS. */
static int grow_hosts(struct pass *p)
{
    if (p->nhosts < p->cap) return 0;
    if (p->cap >= SCHED_MAX_HOSTS) return -1;
    int cap = p->cap ? p->cap * 2 : 64;
    if (cap > SCHED_MAX_HOSTS) cap = SCHED_MAX_HOSTS;
    struct sched_host *nh = realloc(p->hosts, (size_t)cap * sizeof *nh);
    if (!nh) return -1;
    p->hosts = nh;
    p->cap = cap;
    return 0;
}

/* A host's device UUIDs by hash, so that reading its NVLink peers costs one comparison per peer
 * rather than one per peer and device. */
struct uuid_index {
    uint64_t hash[SCHED_MAX_DEVICES];
    size_t len[SCHED_MAX_DEVICES];
};

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * UINT64_C(1099511628211);
    return h;
}

static void index_uuids(const struct sched_host *h, struct uuid_index *x)
{
    for (int d = 0; d < h->ndevices; d++) {
        x->len[d] = strlen(h->devices[d].uuid);
        x->hash[d] = fnv1a(h->devices[d].uuid, x->len[d]);
    }
}

/* peers (comma-separated UUIDs of the same host) as a bitmask over h's devices. */
static uint64_t peer_mask(const struct sched_host *h, const struct uuid_index *x, const char *peers)
{
    uint64_t m = 0;
    while (*peers) {
        const char *end = strchr(peers, ',');
        size_t len = end ? (size_t)(end - peers) : strlen(peers);
        uint64_t hv = fnv1a(peers, len);
        for (int d = 0; d < h->ndevices; d++)
            if (x->hash[d] == hv && x->len[d] == len && !memcmp(h->devices[d].uuid, peers, len))
                m |= UINT64_C(1) << d;
        peers += len;
        if (*peers == ',') peers++;
    }
    return m;
}

static enum db_status load_fleet(PGconn *c, struct pass *p)
{
    PGresult *r;
    /* Devices of live hosts, each marked free unless a live replica holds it. The held devices
     * are one hash join, not a subquery per device: on a 1 000-host fleet the correlated form
     * cost enough to make PostgreSQL JIT-compile it on every pass (0.6 s). */
    enum db_status st = db_exec(
        c,
        "SELECT g.host_id, g.uuid, g.kind, g.idx, held.uuid IS NULL, "
        "  g.healthy, g.numa_node, array_to_string(g.nvlink_peers, ','), h.pool, h.cordoned, "
        "  g.model, COALESCE(s.disk_free_bytes, -1), array_to_string(s.cached_models, E'\\n') "
        "FROM gpus g JOIN hosts h ON h.id = g.host_id "
        "LEFT JOIN host_seen s ON s.host_id = g.host_id "
        "LEFT JOIN (SELECT DISTINCT r.host_id, unnest(r.devices) AS uuid FROM replicas r "
        "           WHERE r.state <> 'stopped' AND r.state <> 'pending') held "
        "  ON held.host_id = g.host_id AND held.uuid = g.uuid "
        "WHERE h.state = 'ready' ORDER BY g.host_id, g.idx",
        0, NULL, &r, NULL);
    if (st < 0) return st;
    int rows = PQntuples(r);
    /* Where each row went (host, device), for reading the peers below; -1: not loaded. */
    int *where = malloc((size_t)(rows ? rows : 1) * 2 * sizeof *where);
    if (!where) {
        PQclear(r);
        return DB_HARD;
    }
    for (int i = 0; i < rows; i++) {
        where[2 * i] = -1;
        int64_t hid = db_int(r, i, 0);
        int h = find_host(p, hid);
        if (h < 0) {
            if (grow_hosts(p) != 0) {
                log_error("scheduler: cannot hold host %lld (%d hosts loaded): not placing on it",
                          (long long)hid, p->nhosts);
                continue;
            }
            h = p->nhosts++;
            memset(&p->hosts[h], 0, sizeof p->hosts[h]); /* realloc'd memory; empty memos */
            p->hosts[h].id = hid;
            snprintf(p->hosts[h].pool, sizeof p->hosts[h].pool, "%s", PQgetvalue(r, i, 8));
            p->hosts[h].cordoned = PQgetvalue(r, i, 9)[0] == 't';
            p->hosts[h].disk_free = db_int(r, i, 11);
            const char *cm = PQgetvalue(r, i, 12);
            if (cm[0] && strlen(cm) + 3 < sizeof p->hosts[h].cached)
                snprintf(p->hosts[h].cached, sizeof p->hosts[h].cached, "\n%s\n", cm);
        }
        struct sched_host *hh = &p->hosts[h];
        if (hh->ndevices == SCHED_MAX_DEVICES) continue;
        where[2 * i] = h;
        where[2 * i + 1] = hh->ndevices;
        struct sched_device *d = &hh->devices[hh->ndevices++];
        snprintf(d->uuid, sizeof d->uuid, "%s", PQgetvalue(r, i, 1));
        snprintf(d->kind, sizeof d->kind, "%s", PQgetvalue(r, i, 2));
        snprintf(d->model, sizeof d->model, "%s", PQgetvalue(r, i, 10));
        d->idx = (int)db_int(r, i, 3);
        d->free = PQgetvalue(r, i, 4)[0] == 't';
        d->healthy = PQgetvalue(r, i, 5)[0] == 't';
        d->numa = (int)db_int(r, i, 6);
        d->peers = 0;
    }
    /* Peers name UUIDs, known only once every device of the host is loaded. */
    struct uuid_index x;
    int indexed = -1;
    for (int i = 0; i < rows; i++) {
        int h = where[2 * i];
        if (h < 0) continue;
        struct sched_host *hh = &p->hosts[h];
        if (h != indexed) {
            index_uuids(hh, &x); /* rows come host by host */
            indexed = h;
        }
        hh->devices[where[2 * i + 1]].peers = peer_mask(hh, &x, PQgetvalue(r, i, 7));
    }
    free(where);
    PQclear(r);
    return DB_ROWS;
}

static enum db_status pass_txn(PGconn *c, void *arg)
{
    struct pass *p = arg;
    p->nhosts = 0;
    p->placed = 0;
    PGresult *pend;
    /* SKIP LOCKED: a replica being changed by someone else is placed on the next pass. */
    enum db_status st = db_exec(c,
                                "SELECT r.id, e.device_kind, e.gpus_per_replica, r.reason, "
                                "  COALESCE(e.pool, ''), COALESCE(e.gpu_type, ''), m.name, "
                                "  CASE WHEN m.source ~ '^(file|https?)://' THEN COALESCE(("
                                "    SELECT sum((f->>'size')::bigint) "
                                "    FROM jsonb_array_elements(m.manifest->'files') f), 0) "
                                "  ELSE 0 END "
                                "FROM replicas r JOIN endpoints e ON e.id = r.endpoint_id "
                                "JOIN models m ON m.id = e.model_id "
                                "WHERE r.state = 'pending' ORDER BY r.created_at, r.ordinal "
                                "FOR UPDATE OF r SKIP LOCKED",
                                0, NULL, &pend, NULL);
    if (st < 0) return st;
    if (st == DB_NONE) {
        PQclear(pend);
        return DB_NONE;
    }
    st = load_fleet(c, p);
    if (st < 0) {
        PQclear(pend);
        return st;
    }
    /* The assignments are written together at the end, in one statement: a pass over a big
     * backlog would otherwise pay a round trip per replica. */
    json_t *placements = json_array();
    for (int i = 0; i < PQntuples(pend) && st >= 0; i++) {
        const char *rid = PQgetvalue(pend, i, 0);
        struct sched_req rq = {.kind = PQgetvalue(pend, i, 1),
                               .n = (int)db_int(pend, i, 2),
                               .pool = PQgetvalue(pend, i, 4),
                               .gpu_type = PQgetvalue(pend, i, 5),
                               .model = PQgetvalue(pend, i, 6),
                               .bytes = db_int(pend, i, 7)};
        int chosen[SCHED_MAX_DEVICES];
        char why[200];
        int h = p->place(p->hosts, p->nhosts, &rq, chosen, why, sizeof why);
        if (h < 0) {
            if (strcmp(PQgetvalue(pend, i, 3), why) != 0) st = replica_note_pending(c, rid, why);
            continue;
        }
        struct buf devs = {0};
        for (int k = 0; k < rq.n; k++)
            buf_printf(&devs, "%s%s", k ? "," : "", p->hosts[h].devices[chosen[k]].uuid);
        char secret[49];
        if (util_random_hex(secret, 24) != 0) st = DB_HARD;
        json_array_append_new(placements, json_pack("{s:s, s:I, s:s, s:s}", "id", rid, "host_id",
                                                    (json_int_t)p->hosts[h].id, "devices",
                                                    devs.data, "secret", secret));
        buf_free(&devs);
    }
    PQclear(pend);
    if (st >= 0 && json_array_size(placements)) {
        char *txt = jsonx_dump(placements);
        st = txt ? replica_assign_many(c, txt, &p->placed) : DB_HARD;
        free(txt);
    }
    json_decref(placements);
    return st < 0 ? st : DB_ROWS;
}

int sched_pass(PGconn *c)
{
    return sched_pass_policy(c, sched_place);
}

int sched_pass_policy(PGconn *c, sched_place_fn place)
{
    struct pass p = {0};
    p.place = place;
    enum db_status st = db_txn_run(c, pass_txn, &p);
    free(p.hosts);
    if (st < 0) return -1;
    if (p.placed) log_info("scheduler placed %d replica(s)", p.placed);
    return p.placed;
}
