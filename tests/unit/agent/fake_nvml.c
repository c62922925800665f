/* A stand-in for libnvidia-ml.so.1 with the entry points the agent uses, for test_agent_inventory:
 * three GPUs, of which the second cannot report its memory (its NVML call fails, so the agent
 * must skip it and keep the others). GPUs 0 and 2 are NVLink peers; GPU 0 is on NUMA node 0 and
 * GPU 2 on node 1; GPU 2 has two uncorrected ECC errors and a page retirement pending. Not an NVML
 * emulator: just enough to exercise the dlopen path, the return-code checks and the fields we read.
 */
#include <stdio.h>
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
    m->used = 0;
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
    if (h->index == 0) return 3;             /* NVML_ERROR_NOT_SUPPORTED: no ECC on this one */
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
