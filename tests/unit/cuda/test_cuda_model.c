/* test_cuda_model: the CUDA backend's logits against the CPU backend's (the reference, itself
 * checked against NumPy and transformers), through model.h as the engine drives them: for each
 * architecture a small random checkpoint from make-model (Llama with llama3 rope scaling, Qwen2's
 * QKV bias, Qwen3's QK norm, Mistral's sliding window), two contexts from one paged pool, a
 * prompt chunk and a prompt in one batch, then decode steps of both, teacher-forced with the
 * CPU's argmax; sampling on the GPU (greedy, temperature, top-k, top-p) against the host's
 * sampler with the same uniforms (model_check.h check_device_sampling). Then TP 2 and 4 over the
 * in-process device collective against TP 1, the watchdog on a stuck rank, that no step allocates
 * device memory, and, when present, the Hugging Face goldens (tests/golden/hf or
 * ORP_HF_GOLDEN_DIR).
 *
 * Tolerances: model_check.h.
 *
 * Exits 77 without a GPU. */
#include "model_check.h"
#include "rtc_model.h"

static struct model *open_cuda(const char *dir, int tp, int blocks)
{
    struct rtc_model_opts o;
    rtc_model_opts_default(&o);
    o.tp = tp;
    o.coll = RTC_COLL_DEVICE; /* any GPU count: ranks go round-robin (all on one GPU here) */
    o.mem_fraction = 0.5;
    o.max_rows = 48; /* < the 60 rows of the first step: it runs in two pieces */
    o.max_logits = 4;
    o.kv_blocks_max = blocks;
    char err[1024];
    struct rtc_model *rm = rtc_model_open(dir, &o, err, sizeof err);
    if (!rm) fprintf(stderr, "rtc_model_open: %s\n", err);
    CHECK(rm != NULL);
    struct model *m = rtc_model_as_model(rm, err, sizeof err);
    CHECK(m != NULL);
    return m;
}

static void test_arch(const char *tmp, const char *arch)
{
    char dir[600], what[100];
    snprintf(dir, sizeof dir, "%s/%s", tmp, arch);
    make(dir, arch);
    char err[1024];
    struct model *cpu = model_load(dir, 1, err, sizeof err);
    CHECK(cpu != NULL);
    struct model *g1 = open_cuda(dir, 1, 40);
    snprintf(what, sizeof what, "%s: cuda tp 1 vs cpu", arch);
    run_pair(what, g1, cpu, TOL_ABS, TOL_REL);
    snprintf(what, sizeof what, "%s: cuda tp 1 sampling on the GPU vs the host", arch);
    check_device_sampling(what, g1);
    for (int tp = 2; tp <= 4; tp *= 2) {
        struct model *gt = open_cuda(dir, tp, 40);
        snprintf(what, sizeof what, "%s: cuda tp %d (device coll.) vs tp 1", arch, tp);
        run_pair(what, gt, g1, 0.02, 0.01);
        if (tp == 2) {
            snprintf(what, sizeof what, "%s: cuda tp 2 sampling on the GPU vs the host", arch);
            check_device_sampling(what, gt);
        }
        model_free(gt);
    }
    model_free(g1);
    model_free(cpu);
}

/* No step allocates device memory: free memory after the warm-up stays put through steps of
 * every shape (a few MiB of slack for modules the driver loads lazily on a first launch). */
static void test_no_alloc(const char *tmp)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/llama", tmp);
    char err[1024];
    struct rtc_model_opts o;
    rtc_model_opts_default(&o);
    o.coll = RTC_COLL_DEVICE, o.mem_fraction = 0.5, o.max_rows = 48, o.max_logits = 4;
    o.kv_blocks_max = 40;
    struct rtc_model *rm = rtc_model_open(dir, &o, err, sizeof err);
    CHECK(rm != NULL);
    size_t f0, f1, total;
    CHECK(rtc_model_mem_info(rm, &f0, &total) == 0);
    struct model *m = rtc_model_as_model(rm, err, sizeof err);
    CHECK(m != NULL);
    struct model *cpu = model_load(dir, 1, err, sizeof err);
    CHECK(cpu != NULL);
    run_pair("llama: steps after the warm-up", m, cpu, TOL_ABS, TOL_REL);
    CHECK(rtc_model_mem_info(rm, &f1, &total) == 0);
    printf("  device memory free: %zu before the steps, %zu after\n", f0, f1);
    CHECK(f1 + ((size_t)8 << 20) >= f0);
    model_free(cpu);
    model_free(m);
}

static int aborted;
static char abort_why[200];

static void on_abort(void *arg, const char *why)
{
    (void)arg;
    aborted = 1;
    snprintf(abort_why, sizeof abort_why, "%s", why);
}

/* A rank stuck before its all-reduce: the watchdog aborts, the step fails instead of hanging. */
static void test_watchdog(const char *tmp)
{
    char dir[600], err[1024];
    snprintf(dir, sizeof dir, "%s/llama", tmp);
    struct rtc_model_opts o;
    rtc_model_opts_default(&o);
    o.tp = 2, o.coll = RTC_COLL_DEVICE, o.mem_fraction = 0.5, o.max_rows = 48;
    o.max_logits = 4, o.kv_blocks_max = 8;
    o.on_abort = on_abort;
    struct rtc_model *rm = rtc_model_open(dir, &o, err, sizeof err);
    CHECK(rm != NULL);
    struct model *m = rtc_model_as_model(rm, err, sizeof err);
    CHECK(m != NULL);
    struct model_kv *kv = model_kv_new(m, 8);
    struct model_ctx *c = model_ctx_new_in(m, kv, 16);
    CHECK(kv && c);
    rtc_model_set_step_timeout(rm, 400); /* after the warm-up, which may load modules */
    rtc_model_debug_stall(rm, 1, 1500);
    CHECK(model_forward(m, c, 5) == NULL);
    CHECK(aborted);
    CHECK(strstr(abort_why, "more than 400 ms") != NULL);
    printf("  %-40s ok  (%s)\n", "watchdog on a stuck rank", abort_why);
    model_ctx_free(c);
    model_kv_free(kv);
    model_free(m);
}

static struct model *open_hf(const char *dir)
{
    return open_cuda(dir, 1, 16);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (rtc_device_count() == 0) {
        printf("test_cuda_model: no CUDA device: skipped\n");
        return 77;
    }
    char tmp[512];
    rt_tmpdir(tmp, sizeof tmp);
    const char *archs[] = {"llama", "qwen2", "qwen3", "mistral"};
    for (int i = 0; i < 4; i++)
        test_arch(tmp, archs[i]);
    test_no_alloc(tmp);
    test_hf(open_hf);
    test_watchdog(tmp); /* last: an aborted model leaves its device memory to the process end */
    check_top1("test_cuda_model");
    rt_rmtree(tmp);
    printf("test_cuda_model: ok\n");
    return 0;
}
