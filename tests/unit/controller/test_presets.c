/* Unit tests of the deploy defaults (presets.h): GPUs per replica and the GPU type chosen for
 * 8B, 70B and 72B models on 80 GB (H100) and 141 GB (H200) GPUs, with the memory NVML reports
 * for them and the BF16 checkpoint sizes the Hugging Face repositories publish. */
#include <string.h>

#include "check.h"
#include "presets.h"

/* Bytes of the BF16 weights: parameter count × 2 (8.03 B, 70.55 B and 72.71 B parameters). */
#define LLAMA_8B INT64_C(16060522496)   /* Llama-3.1-8B-Instruct */
#define LLAMA_70B INT64_C(141107412992) /* Llama-3.1-70B-Instruct */
#define QWEN_72B INT64_C(145412407296)  /* Qwen2.5-72B-Instruct */

#define H100_MIB 81559  /* "NVIDIA H100 80GB HBM3" */
#define H200_MIB 143771 /* "NVIDIA H200" (141 GB) */

static struct presets_gpu gpu(const char *name, int64_t mib, int64_t micros_hour, int per_host,
                              int free_block)
{
    struct presets_gpu g = {.memory_mib = mib,
                            .micros_per_gpu_hour = micros_hour,
                            .max_per_host = per_host,
                            .free_block = free_block};
    snprintf(g.name, sizeof g.name, "%s", name);
    return g;
}

static void per_type(void)
{
    CHECK_INT_EQ(presets_gpus_needed(LLAMA_8B, H100_MIB, 1), 1);
    CHECK_INT_EQ(presets_gpus_needed(LLAMA_8B, H200_MIB, 1), 1);
    CHECK_INT_EQ(presets_gpus_needed(LLAMA_70B, H100_MIB, 1), 4);
    CHECK_INT_EQ(presets_gpus_needed(LLAMA_70B, H200_MIB, 1), 2);
    CHECK_INT_EQ(presets_gpus_needed(QWEN_72B, H100_MIB, 1), 4);
    CHECK_INT_EQ(presets_gpus_needed(QWEN_72B, H200_MIB, 1), 2);
    /* The catalog's minimum wins over a smaller size; a power of two above it. */
    CHECK_INT_EQ(presets_gpus_needed(LLAMA_8B, H100_MIB, 2), 2);
    CHECK_INT_EQ(presets_gpus_needed(LLAMA_8B, H100_MIB, 3), 4);
    /* Unknown size (no manifest): the minimum. Too big for 8: 0. */
    CHECK_INT_EQ(presets_gpus_needed(0, H100_MIB, 1), 1);
    CHECK_INT_EQ(presets_gpus_needed(INT64_C(810000000000), H100_MIB, 1), 0); /* 405B BF16 */
    CHECK_INT_EQ(presets_gpus_needed(LLAMA_8B, H100_MIB, 9), 0);
}

static void choose(void)
{
    int n = 0;
    /* Only H100s: the width above. */
    struct presets_gpu h100[] = {gpu("NVIDIA H100 80GB HBM3", H100_MIB, 2000000, 8, 8)};
    CHECK_INT_EQ(presets_choose(h100, 1, LLAMA_70B, 1, NULL, 0, &n), 0);
    CHECK_INT_EQ(n, 4);
    CHECK_INT_EQ(presets_choose(h100, 1, LLAMA_8B, 1, NULL, 0, &n), 0);
    CHECK_INT_EQ(n, 1);
    /* Only H200s. */
    struct presets_gpu h200[] = {gpu("NVIDIA H200", H200_MIB, 2000000, 8, 8)};
    CHECK_INT_EQ(presets_choose(h200, 1, QWEN_72B, 1, NULL, 0, &n), 0);
    CHECK_INT_EQ(n, 2);

    /* Both at the same price per GPU: a 70B costs less on 2 H200 than on 4 H100; an 8B takes
     * one GPU either way and gets the smaller one (the big ones stay free for big models). */
    struct presets_gpu both[] = {gpu("NVIDIA H100 80GB HBM3", H100_MIB, 2000000, 8, 8),
                                 gpu("NVIDIA H200", H200_MIB, 2000000, 8, 8)};
    CHECK_INT_EQ(presets_choose(both, 2, LLAMA_70B, 1, NULL, 0, &n), 1);
    CHECK_INT_EQ(n, 2);
    CHECK_INT_EQ(presets_choose(both, 2, QWEN_72B, 1, NULL, 0, &n), 1);
    CHECK_INT_EQ(n, 2);
    CHECK_INT_EQ(presets_choose(both, 2, LLAMA_8B, 1, NULL, 0, &n), 0);
    CHECK_INT_EQ(n, 1);

    /* H200 at 2.5 × the H100 price: 2 × 5.00 > 4 × 2.00, so the 70B goes to H100s. */
    both[1].micros_per_gpu_hour = 5000000;
    CHECK_INT_EQ(presets_choose(both, 2, LLAMA_70B, 1, NULL, 0, &n), 0);
    CHECK_INT_EQ(n, 4);
    /* ... unless no host has 4 H100s free now: what can start now comes first. */
    both[0].free_block = 3;
    CHECK_INT_EQ(presets_choose(both, 2, LLAMA_70B, 1, NULL, 0, &n), 1);
    CHECK_INT_EQ(n, 2);
    /* A type whose hosts hold fewer GPUs than needed is never chosen. */
    both[0].free_block = 8;
    both[1].max_per_host = 1;
    CHECK_INT_EQ(presets_choose(both, 2, LLAMA_70B, 1, NULL, 0, &n), 0);
    CHECK_INT_EQ(n, 4);
    /* A named type only. */
    CHECK_INT_EQ(presets_choose(both, 2, LLAMA_8B, 1, "NVIDIA H200", 0, &n), 1);
    CHECK_INT_EQ(n, 1);
    CHECK_INT_EQ(presets_choose(both, 2, LLAMA_8B, 1, "NVIDIA A100", 0, &n), -1);
    /* Nothing fits: -1, n untouched. */
    n = 7;
    CHECK_INT_EQ(presets_choose(h100, 1, INT64_C(810000000000), 1, NULL, 0, &n), -1);
    CHECK_INT_EQ(n, 7);
    CHECK_INT_EQ(presets_choose(NULL, 0, LLAMA_8B, 1, NULL, 0, &n), -1);

    /* A width the caller chose: the types whose that many GPUs hold the weights. 2 × 80 GB hold
     * a 70B's 141 GB (no headroom: the caller's choice), 1 × 80 GB does not; 1 × 141 GB does. */
    struct presets_gpu two[] = {gpu("NVIDIA H100 80GB HBM3", H100_MIB, 2000000, 8, 8),
                                gpu("NVIDIA H200", H200_MIB, 2000000, 8, 8)};
    CHECK_INT_EQ(presets_choose(two, 2, LLAMA_70B, 1, NULL, 2, &n), 0);
    CHECK_INT_EQ(n, 2);
    CHECK_INT_EQ(presets_choose(two, 2, LLAMA_70B, 1, NULL, 1, &n), 1);
    CHECK_INT_EQ(n, 1);
    CHECK_INT_EQ(presets_choose(two, 2, QWEN_72B, 1, NULL, 1, &n), 1);
    CHECK_INT_EQ(presets_choose(two, 1, LLAMA_70B, 1, NULL, 1, &n), -1);
}

int main(void)
{
    per_type();
    choose();
    printf("presets: ok\n");
    return 0;
}
