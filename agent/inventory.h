/* inventory: what this host can offer the controller. Real GPUs come from NVML, loaded at run
 * time with dlopen() so the agent has no link-time dependency on the driver and runs unchanged on
 * machines without one. CPU slots (--cpu-slots N) are offered besides, each labelled kind "cpu" and
 * model "CPU slot" so nobody can mistake one for a GPU. This module only describes devices; it does
 * not hand them out (the controller places replicas, the supervisor launches them). */
#ifndef ORP_AGENT_INVENTORY_H
#define ORP_AGENT_INVENTORY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* NVML's own buffer sizes (NVML_DEVICE_UUID_V2_BUFFER_SIZE, NVML_DEVICE_NAME_V2_BUFFER_SIZE). */
#define INV_UUID_MAX 96
#define INV_MODEL_MAX 96

struct inv_device {
    int index;               /* NVML index among GPUs; slot number among CPU slots */
    char uuid[INV_UUID_MAX]; /* "GPU-…" from NVML, or "CPU-<name>-<i>" */
    char kind[8];            /* "gpu" or "cpu" */
    char model[INV_MODEL_MAX];
    int64_t memory_mib; /* total memory; 0 for CPU slots */
    /* GPUs only (CPU slots: -1, "", 0, healthy). */
    int numa_node;          /* from NVML, else sysfs; -1 unknown */
    char pci_bus_id[32];    /* NVML's form, "00000000:3B:00.0" */
    uint64_t nvlink_peers;  /* bit j: NVLink P2P with the GPU of NVML index j */
    int64_t ecc_errors;     /* uncorrected ECC errors since the driver loaded */
    int64_t retired_pages;  /* pages retired for double-bit ECC errors */
    int retirement_pending; /* a page awaits retirement: the GPU needs a reset */
    int healthy;            /* no uncorrected ECC error and no pending retirement */
};

struct inv {
    struct inv_device *dev; /* owned; the GPUs first, then the CPU slots */
    size_t n;
    size_t gpus; /* how many of dev are GPUs */
};

/* Fills out with the host's GPUs (from the NVML library nvml_lib, or "libnvidia-ml.so.1" when
 * NULL; absent or failing NVML means no GPUs) followed by cpu_slots CPU slots named after
 * host_name. Returns 0, or -1 when out of memory. Free with inv_free(). */
int inv_collect(struct inv *out, const char *host_name, int64_t cpu_slots, const char *nvml_lib);
void inv_free(struct inv *inv);
/* Logs what inv offers (one line per GPU, a warning per unhealthy one). inv_collect does not: the
 * agent takes the inventory again every minute and logs it only when it changed. */
void inv_log(const struct inv *inv);

/* New reference: the "devices" array of the register request. */
json_t *inv_to_json(const struct inv *inv);

/* Live GPU readings for /metrics. NVML stays loaded and initialised between samples (the agent
 * samples every second; nvmlInit is far too slow for that). Each reading is optional: a driver or
 * board that cannot give one leaves its bit out of `have`. */
enum {
    INV_HAVE_UTIL = 1u << 0,   /* nvmlDeviceGetUtilizationRates */
    INV_HAVE_MEMORY = 1u << 1, /* nvmlDeviceGetMemoryInfo */
    INV_HAVE_TEMP = 1u << 2,   /* nvmlDeviceGetTemperature (the GPU die sensor) */
    INV_HAVE_POWER = 1u << 3,  /* nvmlDeviceGetPowerUsage */
};

struct inv_gpu_sample {
    int index; /* NVML index */
    char uuid[INV_UUID_MAX];
    char model[INV_MODEL_MAX];
    unsigned have; /* INV_HAVE_* */
    unsigned util_pct;
    uint64_t mem_used, mem_total; /* bytes */
    unsigned temp_c;
    unsigned power_mw;
};

struct inv_nvml;
/* Loads and initialises NVML (nvml_lib as for inv_collect). NULL when there is none. */
struct inv_nvml *inv_nvml_open(const char *nvml_lib);
/* Shuts NVML down and unloads it. Accepts NULL. */
void inv_nvml_close(struct inv_nvml *h);
/* One reading per GPU that NVML can name (a GPU without a UUID is left out). *out is a new array
 * (free() it, NULL when *n is 0). 0, or -1 when out of memory. */
int inv_nvml_sample(struct inv_nvml *h, struct inv_gpu_sample **out, size_t *n);
/* New reference: the heartbeat's "gpus" (docs/contracts.md): per GPU its uuid and the readings it
 * has, utilization_percent, memory_used_mib and temperature_c. */
json_t *inv_samples_to_json(const struct inv_gpu_sample *g, size_t n);

#endif
