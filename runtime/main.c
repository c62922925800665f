/* main: orp-runtime's entry point; it owns only the dispatch to a subcommand and make-model's
 * command line (serve's is in server.c, next to the server it configures). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "cfg.h"
#include "log.h"
#include "makemodel.h"
#include "server.h"
#ifdef ORP_HAVE_CUDA
#include "rtc_bench.h"
#endif

struct mm_cli {
    const char *out, *arch, *dtype;
    int64_t dim, layers, heads, kv_heads, head_dim, ffn, merges, context, seed;
};

static const struct cfg_opt mm_cli_opts[] = {
    {"out", CFG_STRING, NULL, "directory to write the model into", offsetof(struct mm_cli, out)},
    {"arch", CFG_STRING, "llama",
     "architecture, with its family's tokens and chat template: llama, qwen2 (QKV bias, "
     "ChatML), qwen3 (q/k norm, explicit head_dim, ChatML) or mistral",
     offsetof(struct mm_cli, arch)},
    {"dim", CFG_INT, "64", "hidden size", offsetof(struct mm_cli, dim)},
    {"layers", CFG_INT, "2", "number of layers", offsetof(struct mm_cli, layers)},
    {"heads", CFG_INT, "4", "attention heads", offsetof(struct mm_cli, heads)},
    {"kv-heads", CFG_INT, "2", "key/value heads (grouped-query attention)",
     offsetof(struct mm_cli, kv_heads)},
    {"head-dim", CFG_INT, "0", "head size (0: dim / heads; qwen3: 2 * dim / heads)",
     offsetof(struct mm_cli, head_dim)},
    {"ffn", CFG_INT, "176", "MLP intermediate size", offsetof(struct mm_cli, ffn)},
    {"merges", CFG_INT, "300", "BPE merges to learn from the embedded text",
     offsetof(struct mm_cli, merges)},
    {"context", CFG_INT, "1024", "context length (max_position_embeddings)",
     offsetof(struct mm_cli, context)},
    {"seed", CFG_INT, "1", "seed of the random weights", offsetof(struct mm_cli, seed)},
    {"dtype", CFG_STRING, "bf16", "dtype of the weight matrices: bf16, f16 or f32",
     offsetof(struct mm_cli, dtype)},
};

static int make_model(int argc, char **argv)
{
    static const char usage[] =
        "usage: orp-runtime make-model --out DIR [--arch llama|qwen2|qwen3|mistral] [--dim N]\n"
        "                              [--layers N] [--heads N] [--kv-heads N] [--head-dim N]\n"
        "                              [--ffn N] [--merges N]\n"
        "                              [--context N] [--seed N] [--dtype bf16|f16|f32]";
    struct mm_cli c;
    char err[512];
    size_t n = sizeof mm_cli_opts / sizeof mm_cli_opts[0];
    int rc = cfg_parse(mm_cli_opts, n, &c, "ORP_MAKE_MODEL", argc, argv, 2, err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, usage, mm_cli_opts, n, "ORP_MAKE_MODEL");
        return 0;
    }
    struct mm_opts o;
    mm_defaults(&o);
    if (rc == 0) {
        o.out = c.out;
        o.arch = c.arch;
        /* Clamped into int range here; mm_make checks the real bounds. */
#define CLAMP(v) ((v) < -1 ? -1 : (v) > 1000000000 ? 1000000000 : (int)(v))
        o.dim = CLAMP(c.dim), o.layers = CLAMP(c.layers), o.heads = CLAMP(c.heads);
        o.kv_heads = CLAMP(c.kv_heads), o.ffn = CLAMP(c.ffn), o.merges = CLAMP(c.merges);
        o.head_dim = CLAMP(c.head_dim);
        o.context = CLAMP(c.context);
#undef CLAMP
        o.seed = (uint64_t)c.seed;
        if (!strcmp(c.dtype, "bf16"))
            o.dtype = ST_BF16;
        else if (!strcmp(c.dtype, "f16"))
            o.dtype = ST_F16;
        else if (!strcmp(c.dtype, "f32"))
            o.dtype = ST_F32;
        else
            snprintf(err, sizeof err, "--dtype must be bf16, f16 or f32"), rc = -1;
    }
    if (rc == 0) rc = mm_make(&o, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "orp-runtime make-model: %s\n", err);
        return rc == -1 && !o.out ? 2 : 1;
    }
    printf("%s\n", o.out);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "serve")) return rt_serve(argc, argv, 2);
    if (!strcmp(cmd, "make-model")) return make_model(argc, argv);
    if (!strcmp(cmd, "bench")) return rt_bench(argc, argv, 2);
#ifdef ORP_HAVE_CUDA
    if (!strcmp(cmd, "gpu-bench")) return rtc_bench_main(argc, argv, 2); /* the CUDA backend's */
#endif
    FILE *out = !strcmp(cmd, "--help") || !strcmp(cmd, "-h") ? stdout : stderr;
    fprintf(out, "usage: orp-runtime serve --model DIR --port N [options]   (serve --help)\n"
                 "       orp-runtime make-model --out DIR [options]         (make-model --help)\n"
                 "       orp-runtime bench --model DIR [options]            (bench --help)\n"
                 "       orp-runtime gpu-bench --model DIR [options]        (CUDA builds)\n");
    return out == stdout ? 0 : 2;
}
