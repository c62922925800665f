/* The real NVML dumps (tests/fixtures/nvml-<gpu>-agent.json, what the agent registered on a GPU
 * machine, and nvml-<gpu>-smi.json, nvidia-smi's view of the same machine; both written by
 * ops/gpu/run.sh and imported by ops/gpu/import-fixtures.sh) read the way the controller reads an
 * agent's inventory, then placed on: every GPU nvidia-smi saw is in the agent's inventory with its
 * name and memory; the fields the agent API requires are there and in range; the host built from
 * the dump takes 1, 2, 4 and 8-GPU replicas while it has that many healthy GPUs (NVLink peers when
 * the dump says they are), and refuses more with a reason.
 *
 * Exits 77 (skipped) while no dump has been imported: they come from a GPU session (issue 3).
 * ORP_NVML_FIXTURES=DIR reads another directory (to try a dump before importing it). */
#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "scheduler.h"

#ifndef ORP_NVML_FIXTURES
#define ORP_NVML_FIXTURES "tests/fixtures"
#endif

static const char *str_of(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* nvidia-smi's view (when the smi dump is there): the same GPUs, names and memory. */
static void check_against_smi(json_t *devices, const char *smi_path)
{
    json_error_t e;
    json_t *smi = json_load_file(smi_path, 0, &e);
    if (!smi) {
        printf("  no %s (%s): agent dump only\n", smi_path, e.text);
        return;
    }
    json_t *gpus = json_object_get(smi, "gpus"), *g;
    size_t i, ngpu = 0, j;
    json_t *d;
    json_array_foreach(devices, j, d) ngpu += !strcmp(str_of(d, "kind"), "gpu");
    CHECK_INT_EQ(json_array_size(gpus), ngpu);
    json_array_foreach(gpus, i, g)
    {
        json_t *match = NULL;
        json_array_foreach(devices, j, d) if (!strcmp(str_of(d, "uuid"), str_of(g, "uuid"))) match =
            d;
        CHECK(match != NULL);
        if (!match) continue;
        CHECK_STR_EQ(str_of(match, "model"), str_of(g, "name"));
        long long mib = atoll(str_of(g, "memory_total")); /* "81559 MiB" */
        long long have = json_integer_value(json_object_get(match, "memory_mib"));
        CHECK(llabs(have - mib) <= 1024);
    }
    json_decref(smi);
}

/* The dump as the scheduler's host: GPUs with their index, NUMA node, health and NVLink peers. */
static void host_of(json_t *devices, struct sched_host *h)
{
    memset(h, 0, sizeof *h);
    h->id = 1;
    snprintf(h->pool, sizeof h->pool, "default");
    h->disk_free = -1;
    size_t i;
    json_t *d;
    json_array_foreach(devices, i, d)
    {
        if (strcmp(str_of(d, "kind"), "gpu") || h->ndevices >= SCHED_MAX_DEVICES) continue;
        struct sched_device *sd = &h->devices[h->ndevices++];
        snprintf(sd->uuid, sizeof sd->uuid, "%s", str_of(d, "uuid"));
        snprintf(sd->kind, sizeof sd->kind, "gpu");
        snprintf(sd->model, sizeof sd->model, "%s", str_of(d, "model"));
        sd->idx = (int)json_integer_value(json_object_get(d, "index"));
        sd->free = 1;
        json_t *hl = json_object_get(d, "healthy");
        sd->healthy = !hl || json_is_true(hl);
        json_t *numa = json_object_get(d, "numa_node");
        sd->numa = json_is_integer(numa) ? (int)json_integer_value(numa) : -1;
    }
    /* Peers by UUID, as the controller stores them (gpus.nvlink_peers). */
    json_array_foreach(devices, i, d)
    {
        int a = -1;
        for (int k = 0; k < h->ndevices; k++)
            if (!strcmp(h->devices[k].uuid, str_of(d, "uuid"))) a = k;
        if (a < 0) continue;
        size_t pi;
        json_t *p;
        json_array_foreach(json_object_get(d, "nvlink_peers"), pi, p)
        {
            for (int k = 0; k < h->ndevices; k++)
                if (!strcmp(h->devices[k].uuid, json_string_value(p) ? json_string_value(p) : ""))
                    h->devices[a].peers |= UINT64_C(1) << k;
        }
    }
}

static void check_dump(const char *dir, const char *name)
{
    char path[1024], smi[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(smi, sizeof smi, "%s/%.*s-smi.json", dir, (int)(strlen(name) - strlen("-agent.json")),
             name);
    printf("%s\n", path);
    json_error_t e;
    json_t *top = json_load_file(path, 0, &e);
    CHECK(top != NULL);
    if (!top) return;
    json_t *devices = json_object_get(top, "devices"), *d;
    CHECK(json_is_array(devices) && json_array_size(devices) > 0);
    size_t i;
    /* What the agent API requires of each device (agentapi.c check_device). */
    json_array_foreach(devices, i, d)
    {
        CHECK(json_is_integer(json_object_get(d, "index")));
        CHECK(strlen(str_of(d, "uuid")) > 0 && strlen(str_of(d, "uuid")) <= 90);
        CHECK(strlen(str_of(d, "model")) > 0 && strlen(str_of(d, "model")) <= 200);
        CHECK(json_integer_value(json_object_get(d, "memory_mib")) > 0);
        CHECK(!strcmp(str_of(d, "kind"), "gpu") || !strcmp(str_of(d, "kind"), "cpu"));
        CHECK(!strchr(str_of(d, "uuid"), ','));
    }
    check_against_smi(devices, smi);

    struct sched_host *h = calloc(1, sizeof *h);
    host_of(devices, h);
    int healthy = 0;
    for (int k = 0; k < h->ndevices; k++)
        healthy += h->devices[k].healthy;
    printf("  %d GPUs (%d healthy), %s\n", h->ndevices, healthy, h->devices[0].model);
    for (int width = 1; width <= 8; width *= 2) {
        struct sched_host copy = *h;
        struct sched_req rq = {.kind = "gpu", .n = width, .pool = "default"};
        int chosen[SCHED_MAX_DEVICES];
        char why[200] = "";
        int rc = sched_place(&copy, 1, &rq, chosen, why, sizeof why);
        if (width > healthy) {
            CHECK(rc < 0);
            CHECK(strstr(why, "no capacity") != NULL);
            printf("  %d GPUs: refused: %s\n", width, why);
            continue;
        }
        CHECK(rc == 0);
        if (rc != 0) continue;
        uint64_t set = 0;
        for (int k = 0; k < width; k++) {
            CHECK(chosen[k] >= 0 && chosen[k] < h->ndevices);
            CHECK(h->devices[chosen[k]].healthy);
            set |= UINT64_C(1) << chosen[k];
        }
        CHECK_INT_EQ(__builtin_popcountll(set), width); /* distinct */
        /* When some healthy GPU has width - 1 healthy NVLink peers that are each other's peers
         * too, the chosen set is such a clique. */
        int clique_exists = 0;
        for (int a = 0; a < h->ndevices && !clique_exists; a++) {
            uint64_t group = (h->devices[a].peers | UINT64_C(1) << a);
            int n = 0, ok = 1;
            for (int b = 0; b < h->ndevices; b++)
                if (group >> b & 1) {
                    n += h->devices[b].healthy;
                    ok &= ((h->devices[b].peers | UINT64_C(1) << b) & group) == group;
                }
            clique_exists = ok && n >= width;
        }
        int chosen_clique = 1;
        for (int k = 0; k < width; k++)
            chosen_clique &=
                ((h->devices[chosen[k]].peers | UINT64_C(1) << chosen[k]) & set) == set;
        if (width > 1 && clique_exists) CHECK(chosen_clique);
        printf("  %d GPUs: placed%s\n", width, width > 1 && chosen_clique ? " (NVLink peers)" : "");
    }
    free(h);
    json_decref(top);
}

int main(void)
{
    const char *dir = getenv("ORP_NVML_FIXTURES");
    if (!dir || !*dir) dir = ORP_NVML_FIXTURES;
    DIR *dp = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (dp && (de = readdir(dp))) {
        size_t len = strlen(de->d_name);
        if (len > 16 && !strncmp(de->d_name, "nvml-", 5) &&
            !strcmp(de->d_name + len - 11, "-agent.json")) {
            check_dump(dir, de->d_name);
            n++;
        }
    }
    if (dp) closedir(dp);
    if (n == 0) {
        printf("test_nvml_fixture: no real NVML dump in %s yet (ops/gpu/run.sh on a GPU machine, "
               "then ops/gpu/import-fixtures.sh): skipped\n",
               dir);
        return 77;
    }
    printf("test_nvml_fixture: %d dump(s) ok\n", n);
    return 0;
}
