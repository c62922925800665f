/* test_tp: tensor parallelism on the CPU (ranks as threads, all-reduce through shared memory):
 * for Llama (KV heads split at TP 2, replicated at TP 4), Qwen2 (sliced q/k/v biases) and Qwen3
 * (q/k norms, head_dim 32), TP 2 and 4 give the logits of TP 1 within float32 tolerance (the
 * partial sums are added in another order) over a prompt read token by token and a batch of two
 * contexts from a shared paged KV pool; a degree that does not divide the heads is refused with
 * an error that says so; the all-reduce itself sums exactly and leaves every rank the same bits. */
#include <math.h>
#include <pthread.h>

#include "coll.h"
#include "model.h"
#include "rt_test.h"

#define TP_TOL 1e-4

static char dir[256];

/* The logits of toks read one by one, at the last position, into out. */
static void logits_of(const struct model *m, const int *toks, int n, float *out)
{
    struct model_ctx *c = model_ctx_new(m, 32);
    CHECK(c != NULL);
    const float *l = NULL;
    for (int i = 0; i < n; i++)
        CHECK((l = model_forward(m, c, toks[i])) != NULL);
    memcpy(out, l, (size_t)model_cfg(m)->vocab * sizeof *out);
    model_ctx_free(c);
}

/* Two contexts in one batch from a shared pool: one decodes its 4th token, one reads a chunk. */
static void batch_of(const struct model *m, float *out)
{
    struct model_kv *kv = model_kv_new(m, 4);
    CHECK(kv != NULL);
    struct model_ctx *a = model_ctx_new_in(m, kv, 32), *b = model_ctx_new_in(m, kv, 32);
    CHECK(a && b);
    const int ta[] = {556, 10, 20, 30}, tb[] = {556, 40, 50};
    for (int i = 0; i < 3; i++)
        CHECK(model_forward(m, a, ta[i]) != NULL);
    int v = model_cfg(m)->vocab;
    struct model_row rows[] = {{a, ta[3], out, NULL, NULL},
                               {b, tb[0], NULL, NULL, NULL},
                               {b, tb[1], NULL, NULL, NULL},
                               {b, tb[2], out + v, NULL, NULL}};
    CHECK(model_forward_batch(m, rows, 4) == 0);
    model_ctx_free(a);
    model_ctx_free(b);
    model_kv_free(kv);
}

static void check_arch(const char *arch)
{
    char mdir[320], err[1024];
    snprintf(mdir, sizeof mdir, "%s/%s", dir, arch);
    struct mm_opts o;
    mm_defaults(&o);
    o.out = mdir;
    o.arch = arch;
    CHECK(mm_make(&o, err, sizeof err) == 0);
    const int toks[] = {556, 72, 101, 108, 108, 111, 44, 32, 119};
    int n = (int)(sizeof toks / sizeof toks[0]);
    float *ref = NULL, *refb = NULL;
    int v = 0;
    for (int tp = 1; tp <= 4; tp *= 2) {
        struct model *m = model_load_tp(mdir, 1, tp, err, sizeof err);
        if (!m) fprintf(stderr, "%s tp %d: %s\n", arch, tp, err);
        CHECK(m != NULL);
        CHECK_INT_EQ(model_tp(m), tp);
        v = model_cfg(m)->vocab;
        float *l = malloc((size_t)v * sizeof *l), *lb = malloc(2 * (size_t)v * sizeof *lb);
        logits_of(m, toks, n, l);
        batch_of(m, lb);
        if (tp == 1) {
            ref = l, refb = lb;
        } else {
            double most = 0;
            for (int i = 0; i < v; i++) {
                most = fmax(most, fabs(l[i] - ref[i]));
                most = fmax(most, fabs(lb[i] - refb[i]));
                most = fmax(most, fabs(lb[v + i] - refb[v + i]));
            }
            printf("test_tp: %s tp %d: largest logit difference from tp 1: %.2e\n", arch, tp, most);
            CHECK(most < TP_TOL);
            free(l);
            free(lb);
        }
        model_free(m);
    }
    free(ref);
    free(refb);
}

struct ar_arg {
    struct coll *c;
    int rank;
    float buf[7], scratch[7];
};

static void *ar_rank(void *p)
{
    struct ar_arg *a = p;
    for (int i = 0; i < 7; i++)
        a->buf[i] = (float)((a->rank + 1) * (i + 1));
    coll_allreduce_sum(a->c, a->rank, a->buf, a->scratch, 7);
    return NULL;
}

static void test_allreduce(void)
{
    struct coll *c = coll_cpu_new(3);
    CHECK(c != NULL && coll_size(c) == 3);
    struct ar_arg a[3];
    pthread_t th[3];
    for (int r = 0; r < 3; r++) {
        a[r].c = c, a[r].rank = r;
        CHECK(pthread_create(&th[r], NULL, ar_rank, &a[r]) == 0);
    }
    for (int r = 0; r < 3; r++)
        pthread_join(th[r], NULL);
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 7; i++)
            CHECK(a[r].buf[i] == (float)(6 * (i + 1))); /* 1 + 2 + 3 times (i + 1) */
    coll_free(c);
}

int main(void)
{
    rt_tmpdir(dir, sizeof dir);
    test_allreduce();
    check_arch("llama");
    check_arch("qwen2");
    check_arch("qwen3");
    /* 3 divides neither 4 heads nor 176: refused, saying what must divide what. */
    char mdir[320], err[1024];
    snprintf(mdir, sizeof mdir, "%s/llama", dir);
    CHECK(model_load_tp(mdir, 1, 3, err, sizeof err) == NULL);
    CHECK_CONTAINS(err, "tensor parallel degree 3 must divide num_attention_heads (4)");
    rt_rmtree(dir);
    printf("test_tp: ok\n");
    return 0;
}
