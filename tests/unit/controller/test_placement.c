/* Unit tests of replica placement (sched_place) and path-id checking: best fit, device kind,
 * not enough devices, deterministic choice, and consecutive placements seeing each other. */
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
}

int main(void)
{
    static struct sched_host hosts[3];
    memset(hosts, 0, sizeof hosts);
    hosts[0].id = 10; /* 8 GPUs, all free */
    for (int i = 0; i < 8; i++) {
        char u[16];
        snprintf(u, sizeof u, "GPU-a%d", i);
        add_dev(&hosts[0], u, "gpu", i, 1);
    }
    hosts[1].id = 11; /* 8 GPUs, 6 busy: 2 free (idx 5 and 2, listed out of order) */
    for (int i = 0; i < 8; i++) {
        char u[16];
        snprintf(u, sizeof u, "GPU-b%d", i);
        add_dev(&hosts[1], u, "gpu", i, i == 5 || i == 2);
    }
    hosts[2].id = 12; /* CPU slots only */
    add_dev(&hosts[2], "CPU-c-0", "cpu", 0, 1);
    add_dev(&hosts[2], "CPU-c-1", "cpu", 1, 1);

    int chosen[8];
    /* Best fit: a 2-GPU replica goes to the host with exactly 2 free, leaving host 0 whole. */
    int h = sched_place(hosts, 3, "gpu", 2, chosen);
    CHECK_INT_EQ(h, 1);
    CHECK_STR_EQ(hosts[1].devices[chosen[0]].uuid, "GPU-b2"); /* lowest index first */
    CHECK_STR_EQ(hosts[1].devices[chosen[1]].uuid, "GPU-b5");
    /* Those are now taken: the next 2-GPU replica must use host 0. */
    h = sched_place(hosts, 3, "gpu", 2, chosen);
    CHECK_INT_EQ(h, 0);
    CHECK_STR_EQ(hosts[0].devices[chosen[0]].uuid, "GPU-a0");
    /* An 8-GPU replica no longer fits anywhere (host 0 has 6 free). */
    CHECK_INT_EQ(sched_place(hosts, 3, "gpu", 8, chosen), -1);
    CHECK_INT_EQ(sched_place(hosts, 3, "gpu", 6, chosen), 0);
    /* Device kinds never mix: CPU replicas only land on CPU slots. */
    CHECK_INT_EQ(sched_place(hosts, 3, "cpu", 1, chosen), 2);
    CHECK_STR_EQ(hosts[2].devices[chosen[0]].uuid, "CPU-c-0");
    CHECK_INT_EQ(sched_place(hosts, 3, "cpu", 2, chosen), -1);
    CHECK_INT_EQ(sched_place(hosts, 3, "cpu", 1, chosen), 2);
    CHECK_INT_EQ(sched_place(hosts, 3, "cpu", 1, chosen), -1);
    CHECK_INT_EQ(sched_place(hosts, 0, "gpu", 1, chosen), -1);

    CHECK(api_is_uuid("5f92d1d8-aa16-41bb-93b4-a72c51180ba0"));
    CHECK(!api_is_uuid("5f92d1d8-aa16-41bb-93b4-a72c51180ba"));
    CHECK(!api_is_uuid("5f92d1d8xaa16-41bb-93b4-a72c51180ba0"));
    CHECK(!api_is_uuid("5f92d1d8-aa16-41bb-93b4-a72c51180bag"));
    CHECK(!api_is_uuid("' OR 1=1 --"));
    printf("test_placement: ok\n");
    return 0;
}
