/* presets: deploy defaults. When a deploy names no GPU type or no GPUs per replica, the API picks
 * them from the model's size (the bytes of its *.safetensors files, from the catalog's manifest)
 * and the memory of the GPU types the fleet offers (distinct gpus.model of live hosts).
 * presets_gpus_needed() and presets_choose() are the pure decision (unit-tested without a
 * database); presets_apply() is the few lines POST /v1/endpoints calls; GET /v1/catalog/presets
 * lists, for every model, each GPU type it fits on, with the price of a replica per minute.
 *
 * The rule (why these numbers):
 *   need  = weights × 5/4        KV cache and activations need room beyond the weights: a quarter
 *                                of the weights holds e.g. 32 sequences of 4k tokens of a 70B
 *                                Llama (320 KiB of BF16 K+V per token), the common serving case
 *   usable = memory × 9/10       per GPU; the CUDA context, NCCL buffers and fragmentation take
 *                                the rest (vLLM's default gpu_memory_utilization is 0.9 too)
 *   n     = the smallest of 1, 2, 4, 8 (at least the model's min_devices) with n × usable ≥ need:
 *           tensor parallelism splits attention heads, whose counts are powers of two times a
 *           small factor, so 3, 5, 6 or 7 GPUs rarely divide them
 * So an 8B BF16 model (16 GB) takes 1 GPU of 80 or 141 GB; a 70B or 72B (141-146 GB) takes 4×80 GB
 * or 2×141 GB. Among GPU types: one that can take the replica now (a live host has n free GPUs of
 * it) first, then the cheapest replica per hour, then fewer GPUs, then less memory per GPU (the
 * big ones stay free for big models), then the name. */
#ifndef ORP_PRESETS_H
#define ORP_PRESETS_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "httpd.h"

#define PRESETS_MAX_TP 8     /* GPUs per replica: one host, the endpoints table's own limit */
#define PRESETS_MAX_TYPES 32 /* distinct GPU models in one fleet; more are left out */

/* One GPU type of the fleet. */
struct presets_gpu {
    char name[96];               /* gpus.model as NVML names it: "NVIDIA H100 80GB HBM3" */
    int64_t memory_mib;          /* per GPU (the smallest seen for this name) */
    int64_t micros_per_gpu_hour; /* the price in force */
    int max_per_host;            /* most healthy GPUs of this type on one live host */
    int free_block;              /* most free ones on one live, uncordoned host */
};

/* GPUs of memory_mib each that a model of weights_bytes needs per replica (see the rule above),
 * at least min_devices; 0 when even PRESETS_MAX_TP are not enough. weights_bytes 0 (unknown):
 * min_devices. */
int presets_gpus_needed(int64_t weights_bytes, int64_t memory_mib, int min_devices);

/* The default GPU type for a model: an index into gpus, with its GPUs per replica in *n; -1 when
 * no type fits (too small, or fewer GPUs per host than needed). only_type (NULL: any) limits the
 * choice to that name. fixed_n > 0: the caller chose the width; a type fits when fixed_n of its
 * GPUs are on one host and hold the weights (without the headroom: the caller's choice). */
int presets_choose(const struct presets_gpu *gpus, int ngpus, int64_t weights_bytes,
                   int min_devices, const char *only_type, int fixed_n, int *n);

/* For POST /v1/endpoints on GPUs: fills in the GPU type (*gpu_type, into buf; NULL stays NULL
 * when the fleet has no GPUs yet: any GPU, as before types) and GPUs per replica (*gpus, when 0)
 * of model in pool. 0, or -1 after answering (400 for an unknown type or one the model does not
 * fit on, 503). */
int presets_apply(struct httpd_req *req, PGconn *c, const char *model, const char *pool,
                  const char **gpu_type, char *buf, size_t buflen, int64_t *gpus);

extern const struct httpd_route presets_routes[];
extern const size_t presets_nroutes;

#endif
