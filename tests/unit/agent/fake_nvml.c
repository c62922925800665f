/* A stand-in for libnvidia-ml.so.1 with the entry points the agent uses, for test_agent_inventory:
 * three GPUs, of which the second cannot report its memory (its NVML call fails, so the agent
 * must skip it and keep the others). GPUs 0 and 2 are NVLink peers; GPU 0 is on NUMA node 0 and
 * GPU 2 on node 1; GPU 2 has two uncorrected ECC errors and a page retirement pending. Not an NVML
 * emulator: just enough to exercise the dlopen path, the return-code checks and the fields we read.
 *
 * Live readings (for /metrics): GPU 0 reads 37 % busy, 1 GiB of its memory used, 45 °C, 350.5 W;
 * GPU 1 reads 5 % and 51 °C (its memory call fails, its power is not supported); GPU 2 reads
 * 100 %, no memory used, no temperature (not supported), 70 W.
 *
 * State a test changes while the agent runs: when FAKE_NVML_STATE names a file holding a line
 * "ecc0=N", GPU 0 reports N uncorrected ECC errors (read at every call), which makes it unhealthy.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvml_return_t;
struct nvml_device_st {
    int index;
};
struct nvml_memory {
    unsigned long long total, free, used;
};

static struct nvml_device_st devs[3] = {{0}, {1}, {2}};
static int initialized;

nvml_return_t nvmlInit_v2(void);
nvml_return_t nvmlShutdown(void);
nvml_return_t nvmlDeviceGetCount_v2(unsigned int *n);
nvml_return_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, struct nvml_device_st **h);
nvml_return_t nvmlDeviceGetUUID(struct nvml_device_st *h, char *out, unsigned int len);
nvml_return_t nvmlDeviceGetName(struct nvml_device_st *h, char *out, unsigned int len);
nvml_return_t nvmlDeviceGetMemoryInfo(struct nvml_device_st *h, struct nvml_memory *m);
const char *nvmlErrorString(nvml_return_t rc);
struct nvml_pci_info {
    char bus_id_legacy[16];
    unsigned int domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
};
nvml_return_t nvmlDeviceGetPciInfo_v3(struct nvml_device_st *h, struct nvml_pci_info *p);
nvml_return_t nvmlDeviceGetNumaNodeId(struct nvml_device_st *h, unsigned int *node);
nvml_return_t nvmlDeviceGetP2PStatus(struct nvml_device_st *a, struct nvml_device_st *b, int index,
                                     int *status);
nvml_return_t nvmlDeviceGetTotalEccErrors(struct nvml_device_st *h, int type, int counter,
                                          unsigned long long *n);
nvml_return_t nvmlDeviceGetRetiredPages(struct nvml_device_st *h, int cause, unsigned int *count,
                                        unsigned long long *addresses);
nvml_return_t nvmlDeviceGetRetiredPagesPendingStatus(struct nvml_device_st *h, int *pending);
struct nvml_utilization {
    unsigned int gpu, memory;
};
nvml_return_t nvmlDeviceGetUtilizationRates(struct nvml_device_st *h, struct nvml_utilization *u);
nvml_return_t nvmlDeviceGetTemperature(struct nvml_device_st *h, int sensor, unsigned int *t);
nvml_return_t nvmlDeviceGetPowerUsage(struct nvml_device_st *h, unsigned int *mw);

/* GPU 0's ECC error count from the FAKE_NVML_STATE file; -1 when none is set. */
static long long state_ecc0(void)
{
    const char *path = getenv("FAKE_NVML_STATE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) return -1;
    long long n = -1;
    char line[128];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "ecc0=%lld", &n) == 1) break;
    fclose(f);
    return n;
}

nvml_return_t nvmlInit_v2(void)
{
    initialized = 1;
    return 0;
}

nvml_return_t nvmlShutdown(void)
{
    initialized = 0;
    return 0;
}

nvml_return_t nvmlDeviceGetCount_v2(unsigned int *n)
{
    if (!initialized) return 1; /* NVML_ERROR_UNINITIALIZED */
    *n = 3;
    return 0;
}

nvml_return_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, struct nvml_device_st **h)
{
    if (i >= 3) return 2; /* NVML_ERROR_INVALID_ARGUMENT */
    *h = &devs[i];
    return 0;
}

nvml_return_t nvmlDeviceGetUUID(struct nvml_device_st *h, char *out, unsigned int len)
{
    snprintf(out, len, "GPU-fake-%d", h->index);
    return 0;
}

nvml_return_t nvmlDeviceGetName(struct nvml_device_st *h, char *out, unsigned int len)
{
    (void)h;
    snprintf(out, len, "NVIDIA H100 80GB HBM3");
    return 0;
}

nvml_return_t nvmlDeviceGetMemoryInfo(struct nvml_device_st *h, struct nvml_memory *m)
{
    if (h->index == 1) return 15; /* NVML_ERROR_GPU_IS_LOST */
    m->total = 81559ull * 1024 * 1024;
    m->used = h->index == 0 ? 1024ull * 1024 * 1024 : 0;
    m->free = m->total;
    return 0;
}

const char *nvmlErrorString(nvml_return_t rc)
{
    return rc == 15 ? "GPU is lost" : "fake error";
}

nvml_return_t nvmlDeviceGetPciInfo_v3(struct nvml_device_st *h, struct nvml_pci_info *p)
{
    memset(p, 0, sizeof *p);
    p->bus = 0x10u + (unsigned)h->index;
    snprintf(p->bus_id, sizeof p->bus_id, "00000000:%02X:00.0", p->bus);
    return 0;
}

nvml_return_t nvmlDeviceGetNumaNodeId(struct nvml_device_st *h, unsigned int *node)
{
    *node = h->index == 0 ? 0u : 1u;
    return 0;
}

nvml_return_t nvmlDeviceGetP2PStatus(struct nvml_device_st *a, struct nvml_device_st *b, int index,
                                     int *status)
{
    if (index != 2) return 2; /* only the NVLink capability is asked for */
    *status = (a->index == 0 && b->index == 2) || (a->index == 2 && b->index == 0) ? 0 : 5;
    return 0;
}

nvml_return_t nvmlDeviceGetTotalEccErrors(struct nvml_device_st *h, int type, int counter,
                                          unsigned long long *n)
{
    if (type != 1 || counter != 0) return 2; /* uncorrected, volatile */
    if (h->index == 0) {
        long long set = state_ecc0();
        if (set < 0) return 3; /* NVML_ERROR_NOT_SUPPORTED: no ECC on this one */
        *n = (unsigned long long)set;
        return 0;
    }
    *n = 2;
    return 0;
}

nvml_return_t nvmlDeviceGetRetiredPages(struct nvml_device_st *h, int cause, unsigned int *count,
                                        unsigned long long *addresses)
{
    (void)cause;
    (void)addresses;
    *count = h->index == 2 ? 1u : 0u;
    return *count ? 7 : 0; /* NVML_ERROR_INSUFFICIENT_SIZE: the count is in *count */
}

nvml_return_t nvmlDeviceGetRetiredPagesPendingStatus(struct nvml_device_st *h, int *pending)
{
    *pending = h->index == 2;
    return 0;
}

nvml_return_t nvmlDeviceGetUtilizationRates(struct nvml_device_st *h, struct nvml_utilization *u)
{
    static const unsigned pct[3] = {37, 5, 100};
    u->gpu = pct[h->index];
    u->memory = 0;
    return 0;
}

nvml_return_t nvmlDeviceGetTemperature(struct nvml_device_st *h, int sensor, unsigned int *t)
{
    if (sensor != 0) return 2; /* only NVML_TEMPERATURE_GPU is asked for */
    if (h->index == 2) return 3;
    *t = h->index == 0 ? 45u : 51u;
    return 0;
}

nvml_return_t nvmlDeviceGetPowerUsage(struct nvml_device_st *h, unsigned int *mw)
{
    if (h->index == 1) return 3;
    *mw = h->index == 0 ? 350500u : 70000u;
    return 0;
}
