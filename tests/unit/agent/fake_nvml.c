/* A stand-in for libnvidia-ml.so.1 with the entry points the agent uses, for test_agent_inventory:
 * three GPUs, of which the second cannot report its memory (its NVML call fails, so the agent
 * must skip it and keep the others). Not an NVML emulator: just enough to exercise the dlopen
 * path, the return-code checks and the fields we read. */
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
