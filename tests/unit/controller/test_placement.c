/* Unit tests of replica placement (sched_place) over synthetic hosts, and of path-id checking.
 * The topology cases use the shape of real 8-GPU servers: two NVLink islands of four GPUs, each
 * island on its own NUMA node (PCIe/NVLink-bridge boxes), or all eight GPUs NVLink peers through
 * an NVSwitch with the NUMA split still four and four. Covered: best fit across hosts, device
 * kinds, islands kept whole (fragmentation), NUMA preferred, unhealthy GPUs and cordoned hosts
 * left out, pools, consecutive placements seeing each other, and the customer-readable reason. */
#include <string.h>

#include "api.h"
#include "check.h"
#include "scheduler.h"

static void add_dev(struct sched_host *h, const char *uuid, const char *kind, int idx, int free)
{
    struct sched_device *d = &h->devices[h->ndevices++];
    snprintf(d->uuid, sizeof d->uuid, "%s", uuid);
    snprintf(d->kind, sizeof d->kind, "%s", kind);
    d->idx = idx;
    d->free = free;
    d->healthy = 1;
    d->numa = -1;
    d->peers = 0;
}

enum topo { ISLANDS, NVSWITCH };

/* An 8-GPU host "GPU-<tag><i>": NUMA 0 for GPUs 0-3, 1 for 4-7; NVLink as topo says. busy: bit i
 * set = GPU i held by a replica. */
static void gpu_host(struct sched_host *h, int64_t id, const char *tag, enum topo t, unsigned busy)
{
    memset(h, 0, sizeof *h);
    h->id = id;
    snprintf(h->pool, sizeof h->pool, "default");
    for (int i = 0; i < 8; i++) {
        char u[32];
        snprintf(u, sizeof u, "GPU-%s%d", tag, i);
        add_dev(h, u, "gpu", i, !((busy >> i) & 1u));
        h->devices[i].numa = i / 4;
    }
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++)
            if (i != j && (t == NVSWITCH || i / 4 == j / 4))
                h->devices[i].peers |= UINT64_C(1) << j;
}

static int place(struct sched_host *hosts, int n, const char *kind, int width, const char *pool,
                 int *chosen, char *why)
{
    struct sched_req rq = {.kind = kind, .n = width, .pool = pool};
    why[0] = '\0';
    return sched_place(hosts, n, &rq, chosen, why, 200);
}

/* The chosen devices' indexes as "0,1,2,3". */
static const char *idxs(const struct sched_host *h, const int *chosen, int n)
{
    static char out[128];
    size_t len = 0;
    out[0] = '\0';
    for (int k = 0; k < n; k++)
        len += (size_t)snprintf(out + len, sizeof out - len, "%s%d", k ? "," : "",
                                h->devices[chosen[k]].idx);
    return out;
}

static void test_best_fit_and_kinds(void)
{
    static struct sched_host hosts[3];
    memset(hosts, 0, sizeof hosts);
    hosts[0].id = 10; /* 8 GPUs, all free, no topology known */
    for (int i = 0; i < 8; i++) {
        char u[16];
        snprintf(u, sizeof u, "GPU-a%d", i);
        add_dev(&hosts[0], u, "gpu", i, 1);
    }
    hosts[1].id = 11; /* 8 GPUs, 6 busy: 2 free (idx 5 and 2) */
    for (int i = 0; i < 8; i++) {
        char u[16];
        snprintf(u, sizeof u, "GPU-b%d", i);
        add_dev(&hosts[1], u, "gpu", i, i == 5 || i == 2);
    }
    hosts[2].id = 12; /* CPU slots only */
    add_dev(&hosts[2], "CPU-c-0", "cpu", 0, 1);
    add_dev(&hosts[2], "CPU-c-1", "cpu", 1, 1);

    int chosen[8];
    char why[200];
    /* Best fit: a 2-GPU replica goes to the host with exactly 2 free, leaving host 0 whole. */
    int h = place(hosts, 3, "gpu", 2, NULL, chosen, why);
    CHECK_INT_EQ(h, 1);
    CHECK_STR_EQ(hosts[1].devices[chosen[0]].uuid, "GPU-b2"); /* lowest index first */
    CHECK_STR_EQ(hosts[1].devices[chosen[1]].uuid, "GPU-b5");
    /* Those are now taken: the next 2-GPU replica must use host 0. */
    h = place(hosts, 3, "gpu", 2, NULL, chosen, why);
    CHECK_INT_EQ(h, 0);
    CHECK_STR_EQ(hosts[0].devices[chosen[0]].uuid, "GPU-a0");
    /* An 8-GPU replica no longer fits anywhere (host 0 has 6 free). */
    CHECK_INT_EQ(place(hosts, 3, "gpu", 8, NULL, chosen, why), -1);
    CHECK_STR_EQ(why, "no capacity: needs 8\u00d7GPU on one host; largest free block is 6");
    CHECK_INT_EQ(place(hosts, 3, "gpu", 6, NULL, chosen, why), 0);
    /* Device kinds never mix: CPU replicas only land on CPU slots. */
    CHECK_INT_EQ(place(hosts, 3, "cpu", 1, NULL, chosen, why), 2);
    CHECK_STR_EQ(hosts[2].devices[chosen[0]].uuid, "CPU-c-0");
    CHECK_INT_EQ(place(hosts, 3, "cpu", 2, NULL, chosen, why), -1);
    CHECK_STR_EQ(why, "no capacity: needs 2\u00d7CPU on one host; largest free block is 1");
    CHECK_INT_EQ(place(hosts, 3, "cpu", 1, NULL, chosen, why), 2);
    CHECK_INT_EQ(place(hosts, 3, "cpu", 1, NULL, chosen, why), -1);
    CHECK_STR_EQ(why, "no capacity: needs 1\u00d7CPU on one host; largest free block is 0");
    CHECK_INT_EQ(place(hosts, 0, "gpu", 1, NULL, chosen, why), -1);
    CHECK_INT_EQ(place(hosts, 3, "gpu", 0, NULL, chosen, why), -1);
    CHECK_INT_EQ(place(hosts, 3, "gpu", SCHED_MAX_DEVICES + 1, NULL, chosen, why), -1);
}

static void test_islands(void)
{
    static struct sched_host h[1];
    int chosen[8];
    char why[200];
    gpu_host(&h[0], 1, "i", ISLANDS, 0);
    /* A 4-GPU replica takes one whole island, the next one the other. */
    CHECK_INT_EQ(place(h, 1, "gpu", 4, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 4), "0,1,2,3");
    CHECK_INT_EQ(place(h, 1, "gpu", 4, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 4), "4,5,6,7");

    /* Fragmentation: island A half used (0,1 busy), island B whole. A 2-GPU replica takes the
     * rest of A, so a 4-GPU replica still finds B whole. */
    gpu_host(&h[0], 1, "f", ISLANDS, 0x03);
    CHECK_INT_EQ(place(h, 1, "gpu", 2, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 2), "2,3");
    CHECK_INT_EQ(place(h, 1, "gpu", 4, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 4), "4,5,6,7");

    /* Three free in each island: no NVLink set of 4 exists; still placed (any 4 on the host),
     * lowest indexes, when it is the only host. */
    gpu_host(&h[0], 1, "g", ISLANDS, 0x11);
    CHECK_INT_EQ(place(h, 1, "gpu", 4, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 4), "1,2,3,5");
}

static void test_topology_beats_fit(void)
{
    /* Host 0 is the tighter fit (6 free) but its free GPUs straddle the islands; host 1 is
     * empty. A 4-GPU replica goes where its GPUs are NVLink peers on one NUMA node. */
    static struct sched_host h[2];
    int chosen[8];
    char why[200];
    gpu_host(&h[0], 1, "x", ISLANDS, 0x11);
    gpu_host(&h[1], 2, "y", ISLANDS, 0);
    CHECK_INT_EQ(place(h, 2, "gpu", 4, NULL, chosen, why), 1);
    CHECK_STR_EQ(idxs(&h[1], chosen, 4), "0,1,2,3");
    /* A 2-GPU replica fits an island of host 0 at tier 0, and host 0 is the best fit. */
    CHECK_INT_EQ(place(h, 2, "gpu", 2, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 2), "1,2");
}

static void test_numa(void)
{
    /* NVSwitch: every GPU is every GPU's peer, but NUMA is split 0-3 / 4-7. With 0 and 1 busy, a
     * 4-GPU replica takes 4-7 (one NUMA node), not 2,3,4,5. */
    static struct sched_host h[1];
    int chosen[8];
    char why[200];
    gpu_host(&h[0], 1, "n", NVSWITCH, 0x03);
    CHECK_INT_EQ(place(h, 1, "gpu", 4, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 4), "4,5,6,7");
    /* Two left (2,3), both on NUMA 0: a 2-GPU replica takes them. */
    CHECK_INT_EQ(place(h, 1, "gpu", 2, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 2), "2,3");
    /* NVSwitch with nothing busy: an 8-GPU replica spans both nodes (the only way to fit). */
    gpu_host(&h[0], 1, "m", NVSWITCH, 0);
    CHECK_INT_EQ(place(h, 1, "gpu", 8, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 8), "0,1,2,3,4,5,6,7");
}

static void test_unhealthy(void)
{
    static struct sched_host h[1];
    int chosen[8];
    char why[200];
    gpu_host(&h[0], 1, "u", ISLANDS, 0);
    h[0].devices[1].healthy = 0; /* ECC errors on GPU 1 */
    CHECK_INT_EQ(place(h, 1, "gpu", 4, NULL, chosen, why), 0);
    CHECK_STR_EQ(idxs(&h[0], chosen, 4), "4,5,6,7");
    /* Island A has three healthy GPUs left: another 4-GPU replica does not fit. */
    CHECK_INT_EQ(place(h, 1, "gpu", 4, NULL, chosen, why), -1);
    CHECK_STR_EQ(why, "no capacity: needs 4\u00d7GPU on one host; largest free block is 3");
    /* A 1-GPU replica never lands on the unhealthy GPU. */
    for (int k = 0; k < 3; k++) {
        CHECK_INT_EQ(place(h, 1, "gpu", 1, NULL, chosen, why), 0);
        CHECK(h[0].devices[chosen[0]].idx != 1);
    }
    CHECK_INT_EQ(place(h, 1, "gpu", 1, NULL, chosen, why), -1);
}

static void test_pools_and_cordon(void)
{
    static struct sched_host h[3];
    int chosen[8];
    char why[200];
    gpu_host(&h[0], 1, "p", ISLANDS, 0);
    gpu_host(&h[1], 2, "q", ISLANDS, 0x0f); /* 4 free: the best fit for 4 GPUs */
    snprintf(h[1].pool, sizeof h[1].pool, "h100-eu");
    gpu_host(&h[2], 3, "r", ISLANDS, 0x3f); /* 2 free: the best fit for 2, but cordoned */
    h[2].cordoned = 1;

    /* Pool asked: only that pool's hosts. */
    CHECK_INT_EQ(place(h, 3, "gpu", 4, "h100-eu", chosen, why), 1);
    CHECK_INT_EQ(place(h, 3, "gpu", 4, "h100-eu", chosen, why), -1);
    CHECK_STR_EQ(
        why,
        "no capacity: needs 4\u00d7GPU on one host in pool 'h100-eu'; largest free block is 0");
    CHECK_INT_EQ(place(h, 3, "gpu", 1, "nowhere", chosen, why), -1);
    CHECK_STR_EQ(why, "no capacity: no schedulable host in pool 'nowhere'");
    /* No pool asked: any pool, but never the cordoned host, tight fit or not. */
    CHECK_INT_EQ(place(h, 3, "gpu", 2, "", chosen, why), 0);
    h[0].cordoned = 1;
    CHECK_INT_EQ(place(h, 3, "gpu", 2, NULL, chosen, why), -1);
    CHECK_STR_EQ(why, "no capacity: needs 2\u00d7GPU on one host; largest free block is 0");
    h[2].cordoned = 0; /* uncordoned: its two free GPUs are used again */
    CHECK_INT_EQ(place(h, 3, "gpu", 2, NULL, chosen, why), 2);
    CHECK_STR_EQ(idxs(&h[2], chosen, 2), "6,7");
}

/* An endpoint that names a GPU type gets GPUs of that model only (presets.h picks it). */
static void test_gpu_type(void)
{
    struct sched_host h[2];
    gpu_host(&h[0], 1, "a", NVSWITCH, 0);
    gpu_host(&h[1], 2, "b", NVSWITCH, 0x0f); /* 4 of 8 busy: the best fit without a type */
    for (int i = 0; i < 8; i++) {
        snprintf(h[0].devices[i].model, sizeof h[0].devices[i].model, "NVIDIA H200");
        snprintf(h[1].devices[i].model, sizeof h[1].devices[i].model, "NVIDIA H100 80GB HBM3");
    }
    int chosen[SCHED_MAX_DEVICES];
    char why[200] = "";
    struct sched_req rq = {.kind = "gpu", .n = 2, .gpu_type = "NVIDIA H200"};
    CHECK_INT_EQ(sched_place(h, 2, &rq, chosen, why, sizeof why), 0);
    rq.gpu_type = "";
    CHECK_INT_EQ(sched_place(h, 2, &rq, chosen, why, sizeof why), 1);
    rq.gpu_type = "NVIDIA H100 80GB HBM3";
    rq.n = 4;
    CHECK_INT_EQ(sched_place(h, 2, &rq, chosen, why, sizeof why), -1);
    CHECK_STR_EQ(why, "no capacity: needs 4\u00d7NVIDIA H100 80GB HBM3 on one host; largest free "
                      "block is 2");
}

/* Disk: a replica whose weights must be fetched goes only where the weights cache has room or
 * already holds the model; an agent that reports nothing is not held against; a placement takes
 * its room, so the next replica of another model sees less; the reason says what is missing. */
static void test_disk(void)
{
    static struct sched_host h[3];
    int chosen[8];
    char why[200];
    const int64_t GiB = INT64_C(1) << 30;
    gpu_host(&h[0], 1, "a", NVSWITCH, 0); /* best fit would pick it: 6 busy */
    gpu_host(&h[1], 2, "b", NVSWITCH, 0);
    for (int i = 2; i < 8; i++)
        h[0].devices[i].free = 0;
    h[0].disk_free = 10 * GiB;
    h[1].disk_free = 200 * GiB;
    struct sched_req rq = {.kind = "gpu", .n = 2, .model = "llama-70b", .bytes = 140 * GiB};
    /* Too little room on the tighter host: the other one. */
    CHECK_INT_EQ(sched_place(h, 2, &rq, chosen, why, sizeof why), 1);
    CHECK_INT_EQ((int)(h[1].disk_free / GiB), 60);
    /* The same model again on host 1 needs no more room (it is being fetched there already). */
    CHECK_INT_EQ(sched_place(h, 2, &rq, chosen, why, sizeof why), 1);
    CHECK_INT_EQ((int)(h[1].disk_free / GiB), 60);
    /* Another big model fits nowhere now. */
    struct sched_req other = {.kind = "gpu", .n = 1, .model = "qwen-72b", .bytes = 145 * GiB};
    CHECK_INT_EQ(sched_place(h, 2, &other, chosen, why, sizeof why), -1);
    CHECK_STR_EQ(why, "no capacity: needs 145.0 GiB of free disk for the weights of qwen-72b; the "
                      "hosts have at most 60.0 GiB");
    /* Cached on host 0: it goes there whatever the room. */
    snprintf(h[0].cached, sizeof h[0].cached, "\nmistral\nqwen-72b\n");
    CHECK_INT_EQ(sched_place(h, 2, &other, chosen, why, sizeof why), 0);
    CHECK_INT_EQ((int)(h[0].disk_free / GiB), 10);
    /* A host whose agent does not report its disk (-1), or a local source (0 bytes), is not held
     * back by disk. */
    gpu_host(&h[2], 3, "c", NVSWITCH, 0);
    h[2].disk_free = -1;
    h[0].cached[0] = '\0';
    CHECK_INT_EQ(sched_place(h, 3, &other, chosen, why, sizeof why), 2);
    struct sched_req local = {.kind = "gpu", .n = 1, .model = "demo", .bytes = 0};
    h[2].disk_free = 0;
    CHECK(sched_place(&h[2], 1, &local, chosen, why, sizeof why) == 0);
}

int main(void)
{
    test_gpu_type();
    test_best_fit_and_kinds();
    test_islands();
    test_topology_beats_fit();
    test_numa();
    test_unhealthy();
    test_pools_and_cordon();
    test_disk();

    CHECK(api_is_uuid("5f92d1d8-aa16-41bb-93b4-a72c51180ba0"));
    CHECK(!api_is_uuid("5f92d1d8-aa16-41bb-93b4-a72c51180ba"));
    CHECK(!api_is_uuid("5f92d1d8xaa16-41bb-93b4-a72c51180ba0"));
    CHECK(!api_is_uuid("5f92d1d8-aa16-41bb-93b4-a72c51180bag"));
    CHECK(!api_is_uuid("' OR 1=1 --"));
    printf("test_placement: ok\n");
    return 0;
}
