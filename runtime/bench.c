/* bench: `orp-runtime bench` (see bench.h).
 *
 * Prefill: each of B contexts reads a prompt of --prompt tokens, in chunks of at most
 * --prefill-chunk rows per batch (as the scheduler does); tokens/s = B * prompt / seconds.
 * Decode: then --decode steps of one batch of B rows (one per context); tokens/s = B * decode /
 * seconds. The roofline of a decode step is the time to read every weight once at the measured
 * copy bandwidth (read + written bytes per second of a large memcpy, as STREAM counts it): B
 * tokens per (weight bytes / bandwidth). Weight bytes are those the CPU backend multiplies: f32 (it
 * widens the checkpoint at load), q/k/v/o, gate/up/down of every layer and the lm_head. The tokens
 * are arbitrary ids (throughput does not depend on them). */
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cfg.h"
#include "model.h"
#include "util.h"

/* The copy measured for the bandwidth: large enough to leave every cache behind. */
#define BENCH_COPY_BYTES ((size_t)256 << 20)
#define BENCH_MAX_BATCHES 16

struct bench_cfg {
    const char *model, *batches;
    int64_t threads, tp, prompt, decode, prefill_chunk;
    int json;
};

static const struct cfg_opt bench_opts[] = {
    {"model", CFG_STRING, NULL, "model directory", offsetof(struct bench_cfg, model)},
    {"batches", CFG_STRING, "1,2,4,8,16,32,64", "batch sizes, comma-separated",
     offsetof(struct bench_cfg, batches)},
    {"threads", CFG_INT, "1", "threads for the matrix products (tp 1)",
     offsetof(struct bench_cfg, threads)},
    {"tp", CFG_INT, "1", "tensor parallel ranks", offsetof(struct bench_cfg, tp)},
    {"prompt", CFG_INT, "64", "prompt tokens per sequence", offsetof(struct bench_cfg, prompt)},
    {"decode", CFG_INT, "16", "decode steps per batch size", offsetof(struct bench_cfg, decode)},
    {"prefill-chunk", CFG_INT, "256", "rows per prefill batch",
     offsetof(struct bench_cfg, prefill_chunk)},
    {"json", CFG_BOOL, "false", "one JSON object per line instead of a table",
     offsetof(struct bench_cfg, json)},
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct copy_job {
    char *dst;
    const char *src;
    size_t n;
};

static void *copy_run(void *arg)
{
    struct copy_job *j = arg;
    memcpy(j->dst, j->src, j->n);
    return NULL;
}

/* Memory traffic per second of a copy by nthreads threads, each copying its slice, counted as
 * STREAM's "copy" counts it (bytes read + bytes written); best of 5. 0 when memory is short. */
static double copy_bandwidth(int nthreads)
{
    char *a = malloc(BENCH_COPY_BYTES), *b = malloc(BENCH_COPY_BYTES);
    if (!a || !b) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, BENCH_COPY_BYTES);
    memset(b, 2, BENCH_COPY_BYTES);
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t th[64];
        int made[64] = {0};
        struct copy_job jobs[64];
        size_t slice = BENCH_COPY_BYTES / (size_t)nthreads;
        double t0 = now_s();
        for (int i = 0; i < nthreads; i++)
            jobs[i] = (struct copy_job){b + i * slice, a + i * slice, slice};
        for (int i = 1; i < nthreads; i++) /* a thread that cannot start: its slice runs here */
            made[i] = pthread_create(&th[i], NULL, copy_run, &jobs[i]) == 0;
        for (int i = 0; i < nthreads; i++)
            if (i == 0 || !made[i]) copy_run(&jobs[i]);
        for (int i = 1; i < nthreads; i++)
            if (made[i]) pthread_join(th[i], NULL);
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    free(a);
    free(b);
    return 2.0 * (double)BENCH_COPY_BYTES / best;
}

/* The f32 bytes of every matrix one forward step multiplies by. */
static double weight_bytes(const struct model_config *c)
{
    double hd = c->head_dim, d = c->dim;
    double attn = d * hd * (2.0 * c->heads + 2.0 * c->kv_heads);
    double mlp = 3.0 * d * c->ffn;
    return 4.0 * ((attn + mlp) * c->layers + d * c->vocab);
}

static int parse_batches(const char *s, int *out)
{
    int n = 0;
    while (*s && n < BENCH_MAX_BATCHES) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 1024) return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return *s ? -1 : n;
}

/* One batch size: prefill then decode. 0, or -1 when memory is short. */
static int run_batch(const struct model *m, const struct bench_cfg *bc, int B, double *prefill_tps,
                     double *decode_tps)
{
    int len = (int)(bc->prompt + bc->decode), vocab = model_cfg(m)->vocab;
    struct model_kv *kv = model_kv_new(m, B * model_kv_blocks_for(len));
    struct model_ctx **ctx = calloc((size_t)B, sizeof *ctx);
    int chunk = (int)bc->prefill_chunk;
    struct model_row *rows = calloc((size_t)(chunk > B ? chunk : B), sizeof *rows);
    int rc = kv && ctx && rows ? 0 : -1;
    for (int i = 0; rc == 0 && i < B; i++)
        if (!(ctx[i] = model_ctx_new_in(m, kv, len))) rc = -1;
    double t0 = now_s();
    /* Prefill: contexts one after the other, each in chunks (rows of one context in order). */
    for (int i = 0; rc == 0 && i < B; i++) {
        for (int p = 0; rc == 0 && p < bc->prompt; p += chunk) {
            int n = (int)(bc->prompt - p < chunk ? bc->prompt - p : chunk);
            for (int k = 0; k < n; k++)
                rows[k] = (struct model_row){ctx[i], (i * 131 + (p + k) * 7 + 1) % vocab, NULL,
                                             NULL, NULL};
            rc = model_forward_batch(m, rows, n);
        }
    }
    double t1 = now_s();
    float *logits = rc == 0 ? malloc((size_t)vocab * sizeof *logits) : NULL;
    if (rc == 0 && !logits) rc = -1;
    for (int s = 0; rc == 0 && s < bc->decode; s++) {
        for (int i = 0; i < B; i++)
            rows[i] = (struct model_row){ctx[i], (i * 17 + s * 13 + 5) % vocab,
                                         i == 0 ? logits : NULL, NULL, NULL};
        rc = model_forward_batch(m, rows, B);
    }
    double t2 = now_s();
    *prefill_tps = (double)B * (double)bc->prompt / (t1 - t0);
    *decode_tps = (double)B * (double)bc->decode / (t2 - t1);
    free(logits);
    for (int i = 0; ctx && i < B; i++)
        model_ctx_free(ctx[i]);
    free(ctx);
    free(rows);
    model_kv_free(kv);
    return rc;
}

int rt_bench(int argc, char **argv, int first)
{
    static const char usage[] =
        "usage: orp-runtime bench --model DIR [--batches 1,2,4,...] [--threads N] [--tp N]\n"
        "                         [--prompt N] [--decode N] [--prefill-chunk N] [--json]";
    struct bench_cfg bc;
    char err[1024];
    size_t nopts = sizeof bench_opts / sizeof bench_opts[0];
    int rc = cfg_parse(bench_opts, nopts, &bc, "ORP_BENCH", argc, argv, first, err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, usage, bench_opts, nopts, "ORP_BENCH");
        return 0;
    }
    int batches[BENCH_MAX_BATCHES], nb = rc == 0 ? parse_batches(bc.batches, batches) : 0;
    if (rc == 0 && !bc.model) snprintf(err, sizeof err, "--model is required"), rc = -1;
    if (rc == 0 && nb <= 0)
        snprintf(err, sizeof err, "--batches: up to %d sizes in 1..1024, comma-separated",
                 BENCH_MAX_BATCHES),
            rc = -1;
    if (rc == 0 && (bc.prompt < 1 || bc.decode < 1 || bc.prefill_chunk < 1 || bc.threads < 1 ||
                    bc.threads > 256 || bc.tp < 1 || bc.tp > 64 || bc.prompt > 1000000 ||
                    bc.decode > 1000000 || bc.prefill_chunk > 65536))
        snprintf(err, sizeof err,
                 "--prompt, --decode, --prefill-chunk, --threads and --tp must "
                 "be positive (and sane)"),
            rc = -1;
    if (rc != 0) {
        fprintf(stderr, "orp-runtime bench: %s\n%s\n", err, usage);
        return 2;
    }
    struct model *m = model_load_tp(bc.model, (int)bc.threads, (int)bc.tp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "orp-runtime bench: %s\n", err);
        return 1;
    }
    const struct model_config *c = model_cfg(m);
    if (bc.prompt + bc.decode > c->max_pos) {
        fprintf(stderr, "orp-runtime bench: --prompt + --decode (%lld) exceeds the context (%d)\n",
                (long long)(bc.prompt + bc.decode), c->max_pos);
        model_free(m);
        return 2;
    }
    int workers = bc.tp > 1 ? (int)bc.tp : (int)bc.threads;
    double bw = copy_bandwidth(workers), wb = weight_bytes(c);
    if (bc.json)
        printf("{\"model\":\"%s\",\"layers\":%d,\"dim\":%d,\"vocab\":%d,\"weight_bytes\":%.0f,"
               "\"copy_bytes_per_s\":%.0f,\"threads\":%d,\"tp\":%d}\n",
               bc.model, c->layers, c->dim, c->vocab, wb, bw, (int)bc.threads, (int)bc.tp);
    else
        printf("model %s: %s, %d layers, dim %d, vocab %d; %.1f MB of f32 weights per step\n"
               "threads %d, tp %d; memory copy bandwidth %.2f GB/s (read + written, memcpy of %zu "
               "MiB, %d threads, best of 5)\n"
               "prompt %lld tokens, %lld decode steps\n\n"
               "%6s %14s %14s %18s %9s\n",
               bc.model, model_arch_name(c->arch), c->layers, c->dim, c->vocab, wb / 1e6,
               (int)bc.threads, (int)bc.tp, bw / 1e9, BENCH_COPY_BYTES >> 20, workers,
               (long long)bc.prompt, (long long)bc.decode, "batch", "prefill tok/s", "decode tok/s",
               "decode roofline", "ratio");
    int status = 0;
    for (int i = 0; i < nb; i++) {
        double pf, dc;
        if (run_batch(m, &bc, batches[i], &pf, &dc) != 0) {
            fprintf(stderr, "orp-runtime bench: batch %d: out of memory\n", batches[i]);
            status = 1;
            break;
        }
        double roof = bw > 0 ? batches[i] * bw / wb : 0;
        if (bc.json)
            printf("{\"batch\":%d,\"prefill_tokens_per_s\":%.2f,\"decode_tokens_per_s\":%.2f,"
                   "\"decode_roofline_tokens_per_s\":%.2f,\"ratio\":%.3f}\n",
                   batches[i], pf, dc, roof, roof > 0 ? dc / roof : 0);
        else
            printf("%6d %14.1f %14.2f %18.2f %9.3f\n", batches[i], pf, dc, roof,
                   roof > 0 ? dc / roof : 0);
        fflush(stdout);
    }
    model_free(m);
    return status;
}
