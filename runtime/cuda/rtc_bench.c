/* rtc_bench: `orp-runtime gpu-bench`, the CUDA backend's benchmark (ops/bench/gpu.sh runs it):
 *
 *   orp-runtime gpu-bench --make-8b DIR [--layers N]   a checkpoint with Llama-3-8B's shapes (32
 *        layers, dim 4096, GQA 32/8, MLP 14336, vocab 128256, llama3 RoPE), random BF16 weights
 *        written by 16 threads, make-model's tokenizer
 *   orp-runtime gpu-bench --model DIR [--tp N] [--json FILE]
 *
 * The second measures, through model.h exactly as the engine drives it (logits copied to the host
 * every step): the load time; the device-to-device bandwidth (1 GiB copy, best of 10, bytes read
 * + written: DESIGN.md's roofline bandwidth); time to first token for 128- and 2048-token prompts
 * (one prefill step and the argmax of its logits, median of 3); decode tokens/s at batch 1, 8, 32
 * and 64 (32 timed steps after 3 untimed); and the fraction of the HBM roofline at batch 1:
 * (weight bytes read per step, lm_head in, embedding out) / bandwidth / measured step time. */
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <unistd.h>

#include "log.h"
#include "makemodel.h"
#include "rtc_bench.h"
#include "rtc_model.h"
#include "sampler.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- make-8b ---- */

#define GEN_THREADS 16
#define GEN_CHUNK ((size_t)64 << 20) /* bytes a thread fills and writes at a time */

struct gtensor {
    char name[96];
    int64_t d0, d1; /* d1 0: a vector (a norm: ones) */
    size_t off;     /* in the data section */
};

struct gen_job {
    const struct gtensor *t;
    int nt, fd;
    size_t data0; /* file offset of the data section */
    size_t next;  /* next job (tensor-major, GEN_CHUNK pieces), under mu */
    pthread_mutex_t mu;
    int failed;
};

/* Uniform in [-a, a] with a = sqrt(3 / fan_in): variance 1 / fan_in, so activations keep their
 * scale through the layers as a trained model's roughly do. */
static void fill(uint16_t *out, size_t n, const struct gtensor *t, uint64_t seed)
{
    if (!t->d1) {
        for (size_t i = 0; i < n; i++)
            out[i] = 0x3f80; /* 1.0 */
        return;
    }
    float a = (float)(1.7320508 / sqrt((double)t->d1));
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        uint64_t r = s * 0x2545F4914F6CDD1DULL;
        float f = ((float)(r >> 40) / 16777216.0f * 2.0f - 1.0f) * a;
        uint32_t u;
        memcpy(&u, &f, 4);
        out[i] = (uint16_t)(u >> 16);
    }
}

static void *gen_worker(void *arg)
{
    struct gen_job *j = arg;
    uint16_t *buf = malloc(GEN_CHUNK);
    if (!buf) j->failed = 1;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t job = j->next++;
        pthread_mutex_unlock(&j->mu);
        /* Job k: tensor ti, piece p. */
        size_t k = job;
        int ti = 0;
        size_t pieces = 0;
        for (ti = 0; ti < j->nt; ti++) {
            size_t bytes = (size_t)j->t[ti].d0 * (size_t)(j->t[ti].d1 ? j->t[ti].d1 : 1) * 2;
            pieces = (bytes + GEN_CHUNK - 1) / GEN_CHUNK;
            if (k < pieces) break;
            k -= pieces;
        }
        if (ti == j->nt || !buf) break;
        const struct gtensor *t = &j->t[ti];
        size_t bytes = (size_t)t->d0 * (size_t)(t->d1 ? t->d1 : 1) * 2;
        size_t at = k * GEN_CHUNK, len = bytes - at < GEN_CHUNK ? bytes - at : GEN_CHUNK;
        fill(buf, len / 2, t, job + 1);
        if (pwrite(j->fd, buf, len, (off_t)(j->data0 + t->off + at)) != (ssize_t)len) j->failed = 1;
    }
    free(buf);
    return NULL;
}

static int make_8b(const char *out, int layers)
{
    struct mm_opts o;
    mm_defaults(&o);
    o.out = out;
    char err[512], path[4200];
    if (mm_make(&o, err, sizeof err) != 0) { /* the tokenizer files; weights replaced below */
        fprintf(stderr, "make-8b: %s\n", err);
        return 1;
    }
    const int dim = 4096, ffn = 14336, heads = 32, kv = 8, hd = 128, vocab = 128256;
    json_t *cfg = json_pack(
        "{s:[s],s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:i,s:i,s:b,s:i,s:i,s:s,s:{s:s,s:f,s:f,s:f,"
        "s:i},s:s}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", dim,
        "intermediate_size", ffn, "num_hidden_layers", layers, "num_attention_heads", heads,
        "num_key_value_heads", kv, "head_dim", hd, "rms_norm_eps", 1e-5, "rope_theta", 500000.0,
        "max_position_embeddings", 8192, "vocab_size", vocab, "tie_word_embeddings", 0,
        "bos_token_id", 128000, "eos_token_id", 128001, "hidden_act", "silu", "rope_scaling",
        "rope_type", "llama3", "factor", 8.0, "low_freq_factor", 1.0, "high_freq_factor", 4.0,
        "original_max_position_embeddings", 8192, "torch_dtype", "bfloat16");
    snprintf(path, sizeof path, "%s/config.json", out);
    if (!cfg || json_dump_file(cfg, path, JSON_INDENT(1)) != 0) {
        fprintf(stderr, "make-8b: cannot write %s\n", path);
        return 1;
    }
    json_decref(cfg);
    snprintf(path, sizeof path, "%s/generation_config.json", out);
    unlink(path); /* make-model's eos ids are below its own small vocab: keep config.json's */
    /* The tensors, in HF's order. */
    struct gtensor *t = calloc(3 + 9 * (size_t)layers, sizeof *t);
    if (!t) return 1;
    int nt = 0;
    size_t off = 0;
#define ADD(nm, a, b)                                                                              \
    do {                                                                                           \
        snprintf(t[nt].name, sizeof t[nt].name, "%s", nm);                                         \
        t[nt].d0 = a, t[nt].d1 = b, t[nt].off = off;                                               \
        off += (size_t)(a) * (size_t)((b) ? (b) : 1) * 2;                                          \
        nt++;                                                                                      \
    } while (0)
    ADD("model.embed_tokens.weight", vocab, dim);
    for (int l = 0; l < layers; l++) {
        char nm[96];
        const struct {
            const char *s;
            int64_t a, b;
        } w[] = {{"input_layernorm.weight", dim, 0},
                 {"self_attn.q_proj.weight", heads * hd, dim},
                 {"self_attn.k_proj.weight", kv * hd, dim},
                 {"self_attn.v_proj.weight", kv * hd, dim},
                 {"self_attn.o_proj.weight", dim, heads * hd},
                 {"post_attention_layernorm.weight", dim, 0},
                 {"mlp.gate_proj.weight", ffn, dim},
                 {"mlp.up_proj.weight", ffn, dim},
                 {"mlp.down_proj.weight", dim, ffn}};
        for (size_t k = 0; k < sizeof w / sizeof w[0]; k++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s", l, w[k].s);
            ADD(nm, w[k].a, w[k].b);
        }
    }
    ADD("model.norm.weight", dim, 0);
    ADD("lm_head.weight", vocab, dim);
#undef ADD
    json_t *h = json_pack("{s:{s:s}}", "__metadata__", "format", "pt");
    for (int i = 0; i < nt; i++) {
        size_t bytes = (size_t)t[i].d0 * (size_t)(t[i].d1 ? t[i].d1 : 1) * 2;
        json_t *shape = t[i].d1 ? json_pack("[I,I]", (json_int_t)t[i].d0, (json_int_t)t[i].d1)
                                : json_pack("[I]", (json_int_t)t[i].d0);
        json_object_set_new(h, t[i].name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", "BF16", "shape", shape,
                                      "data_offsets", (json_int_t)t[i].off,
                                      (json_int_t)(t[i].off + bytes)));
    }
    char *hs = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    size_t hl = strlen(hs), padded = (hl + 7) / 8 * 8;
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 1;
    uint64_t le = padded;
    char *hb = malloc(8 + padded);
    memcpy(hb, &le, 8);
    memcpy(hb + 8, hs, hl);
    memset(hb + 8 + hl, ' ', padded - hl);
    int rc = pwrite(fd, hb, 8 + padded, 0) == (ssize_t)(8 + padded) ? 0 : 1;
    free(hb), free(hs);
    struct gen_job j = {.t = t, .nt = nt, .fd = fd, .data0 = 8 + padded};
    pthread_mutex_init(&j.mu, NULL);
    pthread_t th[GEN_THREADS];
    double t0 = now_s();
    for (int i = 0; i < GEN_THREADS; i++)
        pthread_create(&th[i], NULL, gen_worker, &j);
    for (int i = 0; i < GEN_THREADS; i++)
        pthread_join(th[i], NULL);
    if (close(fd) != 0 || j.failed) rc = 1;
    printf("make-8b: %s: %.2f GB of BF16 weights in %.1f s\n", out, off / 1e9, now_s() - t0);
    free(t);
    return rc;
}

/* ---- run ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Seconds of one prefill of len tokens (a fresh context) and the argmax of its logits. */
static double ttft(struct model *m, struct model_kv *kv, int len, float *lg)
{
    int vocab = model_cfg(m)->vocab;
    struct model_ctx *c = model_ctx_new_in(m, kv, len + 1);
    struct model_row *rows = calloc((size_t)len, sizeof *rows);
    if (!c || !rows) return -1;
    for (int i = 0; i < len; i++)
        rows[i] = (struct model_row){c, (i * 7919) % (vocab - 1000) + 10, i == len - 1 ? lg : NULL,
                                     NULL, NULL};
    double t0 = now_s();
    int rc = model_forward_batch(m, rows, len);
    volatile int tok = sampler_argmax(lg, vocab);
    (void)tok;
    double dt = now_s() - t0;
    model_ctx_free(c);
    free(rows);
    return rc == 0 ? dt : -1;
}

/* Seconds per decode step of batch b (32 steps after 3 untimed), each row wanting logits (the
 * host samples), or, sampled, each row sampled on the GPU (temperature 0.8, top-k 50, top-p 0.95:
 * how the engine serves, only token ids copied back). */
static double decode(struct model *m, struct model_kv *kv, int b, float *lg, int sampled)
{
    int vocab = model_cfg(m)->vocab, steps = 32, warm = 3, prompt = 16;
    struct model_ctx **c = calloc((size_t)b, sizeof *c);
    struct model_row *rows = calloc((size_t)b * prompt, sizeof *rows);
    struct model_sample *ms = calloc((size_t)b, sizeof *ms);
    int *tok = calloc((size_t)b, sizeof *tok);
    double dt = -1;
    if (!c || !rows || !ms || !tok) goto out;
    for (int i = 0; i < b; i++)
        if (!(c[i] = model_ctx_new_in(m, kv, prompt + warm + steps + 1))) goto out;
    for (int i = 0; i < b; i++)
        for (int k = 0; k < prompt; k++)
            rows[i * prompt + k] =
                (struct model_row){c[i], (i * 31 + k * 17) % 5000 + 10,
                                   k == prompt - 1 ? lg + (size_t)i * vocab : NULL, NULL, NULL};
    if (model_forward_batch(m, rows, b * prompt) != 0) goto out;
    double t0 = 0;
    for (int s = 0; s < warm + steps; s++) {
        if (s == warm) t0 = now_s();
        for (int i = 0; i < b; i++) {
            int next = sampled && s > 0 ? tok[i] : sampler_argmax(lg + (size_t)i * vocab, vocab);
            rows[i] = (struct model_row){c[i], next, lg + (size_t)i * vocab, NULL, NULL};
            if (sampled) {
                ms[i] =
                    (struct model_sample){0.8f, 0.95f, 50, (float)((i * 37 + s * 11) % 97) / 97};
                rows[i].logits = NULL, rows[i].sample = &ms[i], rows[i].token_out = &tok[i];
            }
        }
        if (model_forward_batch(m, rows, b) != 0) goto out;
    }
    dt = (now_s() - t0) / steps;
out:
    for (int i = 0; c && i < b; i++)
        model_ctx_free(c[i]);
    free(c);
    free(rows);
    free(ms);
    free(tok);
    return dt;
}

static int run(const char *dir, int tp, const char *json_out)
{
    struct rtc_model_opts o;
    rtc_model_opts_default(&o);
    o.tp = tp;
    /* NCCL when there is a GPU per rank; else (and at TP 1, where no collective runs) the device
     * collective, which does not insist on using every visible GPU. */
    o.coll = tp > 1 && rtc_device_count() == tp ? RTC_COLL_NCCL : RTC_COLL_DEVICE;
    char err[4096];
    struct rtc_model *rm = rtc_model_open(dir, &o, err, sizeof err);
    if (!rm) {
        fprintf(stderr, "orp-runtime gpu-bench: %s\n", err);
        return 1;
    }
    struct rtc_model_info info;
    rtc_model_get_info(rm, &info);
    double gbps = 0;
    if (rtc_model_measure_d2d(rm, (size_t)1 << 30, 10, &gbps) != 0) return 1;
    struct model *m = rtc_model_as_model(rm, err, sizeof err);
    if (!m) return 1;
    int vocab = model_cfg(m)->vocab;
    int nb = info.kv_blocks < 4096 ? info.kv_blocks : 4096;
    struct model_kv *kv = model_kv_new(m, nb);
    float *lg = malloc((size_t)64 * vocab * sizeof *lg);
    if (!kv || !lg) return 1;
    double tt[2] = {0};
    const int lens[2] = {128, 2048};
    for (int k = 0; k < 2; k++) {
        double r[3];
        for (int i = 0; i < 3; i++)
            r[i] = ttft(m, kv, lens[k], lg);
        qsort(r, 3, sizeof r[0], cmp_double);
        tt[k] = r[1];
    }
    const int bs[4] = {1, 8, 32, 64};
    double step[4], tps[4];
    for (int k = 0; k < 4; k++) {
        step[k] = decode(m, kv, bs[k], lg, 0);
        tps[k] = step[k] > 0 ? bs[k] / step[k] : 0;
    }
    /* The serving path: sampled on the GPU at batch 1 and 64. */
    double sstep[2], stps[2];
    for (int k = 0; k < 2; k++) {
        sstep[k] = decode(m, kv, k ? 64 : 1, lg, 1);
        stps[k] = sstep[k] > 0 ? (k ? 64 : 1) / sstep[k] : 0;
    }
    double floor_s = info.step_weight_bytes / (gbps * 1e9);
    double frac = step[0] > 0 ? floor_s / step[0] : 0;
    printf("\n| metric | value |\n|---|---|\n");
    printf("| load time (checkpoint -> GPU, warm-up included) | %.2f s (%.2f GB uploaded) |\n",
           info.load_s, info.upload_bytes / 1e9);
    printf("| D2D bandwidth (1 GiB copy, best of 10, read + written) | %.0f GB/s |\n", gbps);
    printf("| TTFT, 128-token prompt | %.1f ms |\n", tt[0] * 1e3);
    printf("| TTFT, 2048-token prompt | %.1f ms |\n", tt[1] * 1e3);
    for (int k = 0; k < 4; k++)
        printf("| decode, batch %d | %.1f tokens/s (%.2f ms/step) |\n", bs[k], tps[k],
               step[k] * 1e3);
    for (int k = 0; k < 2; k++)
        printf("| decode sampled on the GPU, batch %d | %.1f tokens/s (%.2f ms/step) |\n",
               k ? 64 : 1, stps[k], sstep[k] * 1e3);
    printf("| weights read per decode step (lm_head in, embedding out) | %.3f GB |\n",
           info.step_weight_bytes / 1e9);
    printf("| HBM roofline at batch 1: floor %.2f ms / measured %.2f ms | %.1f %% |\n",
           floor_s * 1e3, step[0] * 1e3, frac * 100);
    if (json_out) {
        json_t *j = json_pack(
            "{s:s,s:i,s:f,s:f,s:f,s:f,s:f,s:[f,f,f,f],s:[f,f,f,f],s:[f,f],s:[f,f],s:f,s:f,s:f,s:i}",
            "model", dir, "tp", tp, "load_s", info.load_s, "upload_gb", info.upload_bytes / 1e9,
            "d2d_gbps", gbps, "ttft_128_ms", tt[0] * 1e3, "ttft_2048_ms", tt[1] * 1e3,
            "decode_tokens_per_s", tps[0], tps[1], tps[2], tps[3], "decode_step_ms", step[0] * 1e3,
            step[1] * 1e3, step[2] * 1e3, step[3] * 1e3, "decode_sampled_tokens_per_s_b1_b64",
            stps[0], stps[1], "decode_sampled_step_ms_b1_b64", sstep[0] * 1e3, sstep[1] * 1e3,
            "step_weight_gb", info.step_weight_bytes / 1e9, "roofline_floor_ms", floor_s * 1e3,
            "roofline_fraction", frac, "kv_blocks", info.kv_blocks);
        if (!j || json_dump_file(j, json_out, JSON_INDENT(1)) != 0) return 1;
        json_decref(j);
    }
    free(lg);
    model_kv_free(kv);
    model_free(m);
    return tt[0] > 0 && tt[1] > 0 && step[0] > 0 && step[3] > 0 && sstep[0] > 0 && sstep[1] > 0 ? 0
                                                                                                : 1;
}

int rtc_bench_main(int argc, char **argv, int first)
{
    log_init("orp-runtime", "info");
    const char *mk = NULL, *model = NULL, *json = NULL;
    int tp = 1, layers = 32, bad = 0;
    for (int i = first; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            bad = 1;
        else if (!strcmp(argv[i], "--make-8b"))
            mk = v;
        else if (!strcmp(argv[i], "--model"))
            model = v;
        else if (!strcmp(argv[i], "--json"))
            json = v;
        else if (!strcmp(argv[i], "--tp"))
            tp = atoi(v);
        else if (!strcmp(argv[i], "--layers"))
            layers = atoi(v);
        else
            bad = 1;
    }
    if (!bad && mk && !model && layers >= 1 && layers <= 64) return make_8b(mk, layers);
    if (!bad && model && !mk && tp >= 1 && tp <= RTC_MAX_RANKS) return run(model, tp, json);
    fprintf(stderr, "usage: orp-runtime gpu-bench --model DIR [--tp N] [--json FILE]\n"
                    "       orp-runtime gpu-bench --make-8b DIR [--layers N (32)]\n");
    return 2;
}
