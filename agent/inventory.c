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
        if (push(inv, &d) != 0) {
            rc = -1;
            break;
        }
        log_info("GPU %u: %s %s, %lld MiB", i, d.uuid, d.model, (long long)d.memory_mib);
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
        struct inv_device d = {.index = (int)i, .kind = "cpu", .model = "CPU slot"};
        snprintf(d.uuid, sizeof d.uuid, "CPU-%.60s-%lld", host_name, (long long)i);
        if (push(out, &d) != 0) goto oom;
    }
    if (out->n == 0)
        log_warn("no GPUs found and --cpu-slots is 0: registering with zero devices");
    else
        log_info("inventory: %zu GPU(s), %lld CPU slot(s)", gpus,
                 (long long)(cpu_slots > 0 ? cpu_slots : 0));
    return 0;
oom:
    inv_free(out);
    return -1;
}

void inv_free(struct inv *inv)
{
    if (!inv) return;
    free(inv->dev);
    inv->dev = NULL;
    inv->n = 0;
}

json_t *inv_to_json(const struct inv *inv)
{
    json_t *a = json_array();
    for (size_t i = 0; i < inv->n; i++) {
        const struct inv_device *d = &inv->dev[i];
        json_array_append_new(a, json_pack("{s:i, s:s, s:s, s:s, s:I}", "index", d->index, "uuid",
                                           d->uuid, "kind", d->kind, "model", d->model,
                                           "memory_mib", (json_int_t)d->memory_mib));
    }
    return a;
}
