/* inventory: see inventory.h.
 *
 * NVML is declared here by hand, with only the handful of entry points we call: including nvml.h
 * would tie the build to a CUDA toolkit, and linking libnvidia-ml would stop the agent from even
 * starting on a host without the driver. Every return code is checked; a failure on one device
 * skips that device (with a warning) instead of hiding the whole host. */
#include "inventory.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

typedef int nvml_return_t; /* nvmlReturn_t: 0 is NVML_SUCCESS */
typedef struct nvml_device_st *nvml_device_t;
struct nvml_memory { /* nvmlMemory_t (v1) */
    unsigned long long total, free, used;
};

typedef nvml_return_t (*nvml_init_fn)(void);
typedef nvml_return_t (*nvml_shutdown_fn)(void);
typedef nvml_return_t (*nvml_count_fn)(unsigned int *);
typedef nvml_return_t (*nvml_handle_fn)(unsigned int, nvml_device_t *);
typedef nvml_return_t (*nvml_string_fn)(nvml_device_t, char *, unsigned int);
typedef nvml_return_t (*nvml_memory_fn)(nvml_device_t, struct nvml_memory *);
typedef const char *(*nvml_error_string_fn)(nvml_return_t);
struct nvml_pci_info { /* nvmlPciInfo_t (v3) */
    char bus_id_legacy[16];
    unsigned int domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
};
typedef nvml_return_t (*nvml_pci_fn)(nvml_device_t, struct nvml_pci_info *);
typedef nvml_return_t (*nvml_numa_fn)(nvml_device_t, unsigned int *);
typedef nvml_return_t (*nvml_p2p_fn)(nvml_device_t, nvml_device_t, int, int *);
typedef nvml_return_t (*nvml_ecc_fn)(nvml_device_t, int, int, unsigned long long *);
typedef nvml_return_t (*nvml_retired_fn)(nvml_device_t, int, unsigned int *, unsigned long long *);
typedef nvml_return_t (*nvml_pending_fn)(nvml_device_t, int *);
struct nvml_utilization { /* nvmlUtilization_t */
    unsigned int gpu, memory;
};
typedef nvml_return_t (*nvml_util_fn)(nvml_device_t, struct nvml_utilization *);
typedef nvml_return_t (*nvml_temp_fn)(nvml_device_t, int, unsigned int *);
typedef nvml_return_t (*nvml_power_fn)(nvml_device_t, unsigned int *);

/* NVML constants we pass or compare (nvml.h). */
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_P2P_CAPS_INDEX_NVLINK 2
#define NVML_P2P_STATUS_OK 0
#define NVML_MEMORY_ERROR_TYPE_UNCORRECTED 1
#define NVML_VOLATILE_ECC 0
#define NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR 1
#define NVML_TEMPERATURE_GPU 0
#define INV_MAX_GPUS 64 /* the width of inv_device.nvlink_peers */

struct nvml {
    void *lib;
    nvml_init_fn init;
    nvml_shutdown_fn shutdown;
    nvml_count_fn count;
    nvml_handle_fn handle;
    nvml_string_fn uuid;
    nvml_string_fn name;
    nvml_memory_fn memory;
    nvml_error_string_fn error_string; /* optional */
    /* Optional: topology and health. Drivers that lack one report less, never fail. */
    nvml_pci_fn pci;
    nvml_numa_fn numa;
    nvml_p2p_fn p2p;
    nvml_ecc_fn ecc;
    nvml_retired_fn retired;
    nvml_pending_fn pending;
    /* Optional: the live readings /metrics serves. */
    nvml_util_fn utilization;
    nvml_temp_fn temperature;
    nvml_power_fn power;
};

/* Checks an NVML call; logs the call text and code where it failed. */
#define NVML_OK(n, call) nvml_ok((n), (call), #call, __FILE__, __LINE__)

static int nvml_ok(const struct nvml *n, nvml_return_t rc, const char *what, const char *file,
                   int line)
{
    if (rc == 0) return 1;
    const char *msg = n->error_string ? n->error_string(rc) : "unknown";
    log_warn("NVML: %s failed: %s (code %d, %s:%d)", what, msg ? msg : "?", rc, file, line);
    return 0;
}

static void *sym(void *lib, const char *name, int *missing)
{
    void *p = dlsym(lib, name);
    if (!p) {
        log_warn("NVML: symbol %s not found", name);
        *missing = 1;
    }
    return p;
}

static int nvml_open(struct nvml *n, const char *path)
{
    memset(n, 0, sizeof *n);
    n->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!n->lib) {
        log_info("NVML not available (%s): no GPUs offered", dlerror());
        return -1;
    }
    int missing = 0;
    /* POSIX guarantees that a void * from dlsym converts to a function pointer. */
    *(void **)&n->init = sym(n->lib, "nvmlInit_v2", &missing);
    *(void **)&n->shutdown = sym(n->lib, "nvmlShutdown", &missing);
    *(void **)&n->count = sym(n->lib, "nvmlDeviceGetCount_v2", &missing);
    *(void **)&n->handle = sym(n->lib, "nvmlDeviceGetHandleByIndex_v2", &missing);
    *(void **)&n->uuid = sym(n->lib, "nvmlDeviceGetUUID", &missing);
    *(void **)&n->name = sym(n->lib, "nvmlDeviceGetName", &missing);
    *(void **)&n->memory = sym(n->lib, "nvmlDeviceGetMemoryInfo", &missing);
    *(void **)&n->error_string = dlsym(n->lib, "nvmlErrorString");
    *(void **)&n->pci = dlsym(n->lib, "nvmlDeviceGetPciInfo_v3");
    *(void **)&n->numa = dlsym(n->lib, "nvmlDeviceGetNumaNodeId");
    *(void **)&n->p2p = dlsym(n->lib, "nvmlDeviceGetP2PStatus");
    *(void **)&n->ecc = dlsym(n->lib, "nvmlDeviceGetTotalEccErrors");
    *(void **)&n->retired = dlsym(n->lib, "nvmlDeviceGetRetiredPages");
    *(void **)&n->pending = dlsym(n->lib, "nvmlDeviceGetRetiredPagesPendingStatus");
    *(void **)&n->utilization = dlsym(n->lib, "nvmlDeviceGetUtilizationRates");
    *(void **)&n->temperature = dlsym(n->lib, "nvmlDeviceGetTemperature");
    *(void **)&n->power = dlsym(n->lib, "nvmlDeviceGetPowerUsage");
    if (missing) {
        dlclose(n->lib);
        n->lib = NULL;
        return -1;
    }
    return 0;
}

static int push(struct inv *inv, const struct inv_device *d)
{
    struct inv_device *p = realloc(inv->dev, (inv->n + 1) * sizeof *p);
    if (!p) return -1;
    inv->dev = p;
    inv->dev[inv->n++] = *d;
    return 0;
}

/* NUMA node of a PCI device from sysfs (for drivers without nvmlDeviceGetNumaNodeId); -1 when
 * the kernel does not say (one-node machines report -1 too). */
static int sysfs_numa(const struct nvml_pci_info *pci)
{
    char path[96];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%04x:%02x:%02x.0/numa_node",
             pci->domain & 0xffffu, pci->bus & 0xffu, pci->device & 0xffu);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int node = -1;
    if (fscanf(f, "%d", &node) != 1 || node < -1 || node > 1023) node = -1;
    fclose(f);
    return node;
}

/* Where the GPU sits and how healthy it is. Every call is optional and checked: NOT_SUPPORTED
 * (no ECC on this board, no NUMA query in this driver) is a fact, not an error. */
static void describe_gpu(const struct nvml *n, nvml_device_t h, struct inv_device *d)
{
    d->numa_node = -1;
    d->healthy = 1;
    struct nvml_pci_info pci;
    memset(&pci, 0, sizeof pci);
    int have_pci = n->pci && NVML_OK(n, n->pci(h, &pci));
    if (have_pci) {
        pci.bus_id[sizeof pci.bus_id - 1] = '\0';
        snprintf(d->pci_bus_id, sizeof d->pci_bus_id, "%s", pci.bus_id);
    }
    unsigned int node;
    nvml_return_t rc = n->numa ? n->numa(h, &node) : NVML_ERROR_NOT_SUPPORTED;
    if (rc == 0 && node < 1024)
        d->numa_node = (int)node;
    else if (have_pci)
        d->numa_node = sysfs_numa(&pci);
    unsigned long long ecc = 0;
    rc = n->ecc ? n->ecc(h, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, &ecc)
                : NVML_ERROR_NOT_SUPPORTED;
    if (rc == 0)
        d->ecc_errors = (int64_t)(ecc > INT64_MAX ? INT64_MAX : ecc);
    else if (rc != NVML_ERROR_NOT_SUPPORTED)
        NVML_OK(n, rc);
    unsigned int pages = 0; /* 0 asks for the count only */
    rc = n->retired ? n->retired(h, NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR, &pages, NULL)
                    : NVML_ERROR_NOT_SUPPORTED;
    if (rc == 0 || rc == NVML_ERROR_INSUFFICIENT_SIZE) d->retired_pages = pages;
    int pending = 0;
    rc = n->pending ? n->pending(h, &pending) : NVML_ERROR_NOT_SUPPORTED;
    if (rc == 0) d->retirement_pending = pending != 0;
    d->healthy = d->ecc_errors == 0 && !d->retirement_pending;
}

static int collect_gpus(struct inv *inv, const char *path)
{
    struct nvml n;
    if (nvml_open(&n, path) != 0) return 0;
    int rc = 0;
    if (!NVML_OK(&n, n.init())) goto out_close;
    unsigned int count = 0;
    if (!NVML_OK(&n, n.count(&count))) goto out_shutdown;
    for (unsigned int i = 0; i < count; i++) {
        nvml_device_t h;
        struct inv_device d = {.index = (int)i, .kind = "gpu"};
        struct nvml_memory mem;
        if (!NVML_OK(&n, n.handle(i, &h)) || !NVML_OK(&n, n.uuid(h, d.uuid, sizeof d.uuid)) ||
            !NVML_OK(&n, n.name(h, d.model, sizeof d.model)) || !NVML_OK(&n, n.memory(h, &mem))) {
            log_warn("NVML: GPU %u skipped: it cannot be described", i);
            continue;
        }
        d.uuid[sizeof d.uuid - 1] = '\0';
        d.model[sizeof d.model - 1] = '\0';
        d.memory_mib = (int64_t)(mem.total / (1024ull * 1024ull));
        describe_gpu(&n, h, &d);
        /* NVLink peers among the GPUs before this one; the pairs are filled in both ways. */
        for (size_t j = 0; n.p2p && i < INV_MAX_GPUS && j < inv->n; j++) {
            nvml_device_t hj;
            int status = -1;
            unsigned int jn = (unsigned int)inv->dev[j].index;
            if (jn >= INV_MAX_GPUS || n.handle(jn, &hj) != 0) continue;
            nvml_return_t prc = n.p2p(h, hj, NVML_P2P_CAPS_INDEX_NVLINK, &status);
            if (prc != 0 && prc != NVML_ERROR_NOT_SUPPORTED) NVML_OK(&n, prc);
            if (prc == 0 && status == NVML_P2P_STATUS_OK) {
                d.nvlink_peers |= UINT64_C(1) << jn;
                inv->dev[j].nvlink_peers |= UINT64_C(1) << i;
            }
        }
        if (push(inv, &d) != 0) {
            rc = -1;
            break;
        }
    }
out_shutdown:
    NVML_OK(&n, n.shutdown());
out_close:
    dlclose(n.lib);
    return rc;
}

int inv_collect(struct inv *out, const char *host_name, int64_t cpu_slots, const char *nvml_lib)
{
    memset(out, 0, sizeof *out);
    if (collect_gpus(out, nvml_lib ? nvml_lib : "libnvidia-ml.so.1") != 0) goto oom;
    size_t gpus = out->n;
    for (int64_t i = 0; i < cpu_slots; i++) {
        struct inv_device d = {
            .index = (int)i, .kind = "cpu", .model = "CPU slot", .numa_node = -1, .healthy = 1};
        snprintf(d.uuid, sizeof d.uuid, "CPU-%.60s-%lld", host_name, (long long)i);
        if (push(out, &d) != 0) goto oom;
    }
    out->gpus = gpus;
    return 0;
oom:
    inv_free(out);
    return -1;
}

void inv_log(const struct inv *inv)
{
    if (inv->n == 0) {
        log_warn("no GPUs found and --cpu-slots is 0: registering with zero devices");
        return;
    }
    for (size_t i = 0; i < inv->gpus; i++) {
        const struct inv_device *d = &inv->dev[i];
        log_info("GPU %d: %s %s, %lld MiB", d->index, d->uuid, d->model, (long long)d->memory_mib);
        if (!d->healthy)
            log_warn("GPU %d (%s) is unhealthy: %lld uncorrected ECC error(s)%s; it is offered as "
                     "unhealthy and nothing will be placed on it",
                     d->index, d->uuid, (long long)d->ecc_errors,
                     d->retirement_pending ? ", a page retirement pending" : "");
    }
    log_info("inventory: %zu GPU(s), %zu CPU slot(s)", inv->gpus, inv->n - inv->gpus);
}

void inv_free(struct inv *inv)
{
    if (!inv) return;
    free(inv->dev);
    inv->dev = NULL;
    inv->n = 0;
    inv->gpus = 0;
}

json_t *inv_to_json(const struct inv *inv)
{
    json_t *a = json_array();
    for (size_t i = 0; i < inv->n; i++) {
        const struct inv_device *d = &inv->dev[i];
        json_t *o =
            json_pack("{s:i, s:s, s:s, s:s, s:I}", "index", d->index, "uuid", d->uuid, "kind",
                      d->kind, "model", d->model, "memory_mib", (json_int_t)d->memory_mib);
        if (o && !strcmp(d->kind, "gpu")) {
            json_t *peers = json_array();
            for (size_t j = 0; j < inv->n; j++)
                if (j != i && !strcmp(inv->dev[j].kind, "gpu") &&
                    inv->dev[j].index < INV_MAX_GPUS &&
                    ((d->nvlink_peers >> inv->dev[j].index) & 1u))
                    json_array_append_new(peers, json_string(inv->dev[j].uuid));
            json_object_set_new(o, "numa_node", json_integer(d->numa_node));
            json_object_set_new(o, "pci_bus_id", json_string(d->pci_bus_id));
            json_object_set_new(o, "nvlink_peers", peers);
            json_object_set_new(o, "ecc_errors", json_integer(d->ecc_errors));
            json_object_set_new(o, "retired_pages", json_integer(d->retired_pages));
            json_object_set_new(o, "healthy", json_boolean(d->healthy));
        }
        json_array_append_new(a, o);
    }
    return a;
}

/* ---- live readings ---- */

struct inv_nvml {
    struct nvml n;
};

struct inv_nvml *inv_nvml_open(const char *nvml_lib)
{
    struct inv_nvml *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    if (nvml_open(&h->n, nvml_lib ? nvml_lib : "libnvidia-ml.so.1") != 0) {
        free(h);
        return NULL;
    }
    if (!NVML_OK(&h->n, h->n.init())) {
        dlclose(h->n.lib);
        free(h);
        return NULL;
    }
    return h;
}

void inv_nvml_close(struct inv_nvml *h)
{
    if (!h) return;
    NVML_OK(&h->n, h->n.shutdown());
    dlclose(h->n.lib);
    free(h);
}

/* A reading that fails is left out, without a warning: NOT_SUPPORTED is common (no power sensor
 * on some boards) and a warning every sample would drown the log. */
int inv_nvml_sample(struct inv_nvml *h, struct inv_gpu_sample **out, size_t *nout)
{
    *out = NULL;
    *nout = 0;
    const struct nvml *n = &h->n;
    unsigned int count = 0;
    if (n->count(&count) != 0) return 0;
    if (count > INV_MAX_GPUS) count = INV_MAX_GPUS;
    if (count == 0) return 0;
    struct inv_gpu_sample *s = calloc(count, sizeof *s);
    if (!s) return -1;
    size_t k = 0;
    for (unsigned int i = 0; i < count; i++) {
        nvml_device_t dev;
        struct inv_gpu_sample *g = &s[k];
        memset(g, 0, sizeof *g);
        g->index = (int)i;
        if (n->handle(i, &dev) != 0 || n->uuid(dev, g->uuid, sizeof g->uuid) != 0) continue;
        g->uuid[sizeof g->uuid - 1] = '\0';
        if (n->name(dev, g->model, sizeof g->model) != 0) g->model[0] = '\0';
        g->model[sizeof g->model - 1] = '\0';
        struct nvml_utilization u;
        if (n->utilization && n->utilization(dev, &u) == 0) {
            g->have |= INV_HAVE_UTIL;
            g->util_pct = u.gpu;
        }
        struct nvml_memory mem;
        if (n->memory(dev, &mem) == 0) {
            g->have |= INV_HAVE_MEMORY;
            g->mem_used = mem.used;
            g->mem_total = mem.total;
        }
        unsigned int v;
        if (n->temperature && n->temperature(dev, NVML_TEMPERATURE_GPU, &v) == 0) {
            g->have |= INV_HAVE_TEMP;
            g->temp_c = v;
        }
        if (n->power && n->power(dev, &v) == 0) {
            g->have |= INV_HAVE_POWER;
            g->power_mw = v;
        }
        k++;
    }
    *out = s;
    *nout = k;
    if (k == 0) {
        free(s);
        *out = NULL;
    }
    return 0;
}

json_t *inv_samples_to_json(const struct inv_gpu_sample *g, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        json_t *o = json_pack("{s:s}", "uuid", g[i].uuid);
        if (!o) continue;
        if (g[i].have & INV_HAVE_UTIL)
            json_object_set_new(o, "utilization_percent", json_integer(g[i].util_pct));
        if (g[i].have & INV_HAVE_MEMORY)
            json_object_set_new(o, "memory_used_mib",
                                json_integer((json_int_t)(g[i].mem_used / (1024 * 1024))));
        if (g[i].have & INV_HAVE_TEMP)
            json_object_set_new(o, "temperature_c", json_integer(g[i].temp_c));
        json_array_append_new(a, o);
    }
    return a;
}
