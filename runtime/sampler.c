/* sampler: owns a request's sampling state (its random generator, token counts and scratch); see
 * sampler.h.
 * Top-p follows llama2.c: tokens whose probability is below (1 - top_p) / (n - 1) cannot be in
 * the nucleus, so they are dropped before sorting, which keeps a 128k vocab cheap.
 * The draw walks the kept tokens in id order (not most likely first): the rule of the CUDA
 * backend's rtc_sample, so that the same u picks the same token on either side. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

int sampler_init(struct sampler *s, int vocab, const struct sampler_params *p)
{
    s->vocab = vocab;
    s->p = *p;
    if (s->p.top_k >= vocab) s->p.top_k = 0; /* all of them: the same as off */
    /* splitmix64 of the seed, so seeds 0, 1, 2 give unrelated streams and the state is never
     * 0 (xorshift's fixed point). */
    uint64_t z = p->seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    s->rng = (z ^ (z >> 31)) | 1;
    s->probs = NULL;
    s->order = NULL;
    s->counts = NULL;
    int penalties = p->presence_penalty != 0 || p->frequency_penalty != 0;
    if (p->temperature == 0 && !penalties) return 0;
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->order = malloc((size_t)vocab * sizeof *s->order);
    if (penalties) s->counts = calloc((size_t)vocab, sizeof *s->counts);
    if (!s->probs || !s->order || (penalties && !s->counts)) {
        sampler_free(s);
        return -1;
    }
    return 0;
}

void sampler_free(struct sampler *s)
{
    free(s->probs);
    free(s->order);
    free(s->counts);
    s->probs = NULL;
    s->order = NULL;
    s->counts = NULL;
}

void sampler_accept(struct sampler *s, int id)
{
    if (s->counts && id >= 0 && id < s->vocab) s->counts[id]++;
}

float sampler_next_u(struct sampler *s) /* [0, 1) */
{
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (float)((s->rng * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

int sampler_argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *probs = ctx;
    float x = probs[*(const int *)a], y = probs[*(const int *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

/* Moves the k most probable of order[0..n) to its front, sorted (quickselect, then a sort of
 * the k): O(n + k log k) instead of sorting a 128k vocab every token. */
static void top_k_select(int *order, int n, int k, const float *probs)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int pivot = order[lo + (hi - lo) / 2], i = lo, j = hi;
        while (i <= j) {
            while (cmp_desc(&order[i], &pivot, (void *)probs) < 0)
                i++;
            while (cmp_desc(&order[j], &pivot, (void *)probs) > 0)
                j--;
            if (i <= j) {
                int t = order[i];
                order[i++] = order[j];
                order[j--] = t;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
    qsort_r(order, (size_t)k, sizeof *order, cmp_desc, (void *)probs);
}

/* The draw over the kept ids order[0..last] (sorted by id here): the first whose running mass
 * exceeds u times the kept mass cum; the last kept one when rounding leaves none. */
static int draw_by_id(struct sampler *s, int last, float cum, float u)
{
    qsort(s->order, (size_t)last + 1, sizeof *s->order, cmp_int);
    float target = u * cum, acc = 0;
    for (int i = 0; i <= last; i++) {
        acc += s->probs[s->order[i]];
        if (target < acc) return s->order[i];
    }
    return s->order[last];
}

int sampler_sample(struct sampler *s, const float *logits)
{
    return sampler_pick(s, logits, s->p.temperature > 0 ? sampler_next_u(s) : 0.0f);
}

int sampler_device_ok(const struct sampler *s)
{
    return s->counts == NULL;
}

int sampler_pick(struct sampler *s, const float *logits, float r)
{
    int n = s->vocab;
    if (s->counts) {
        float pres = s->p.presence_penalty, freq = s->p.frequency_penalty;
        for (int i = 0; i < n; i++)
            s->probs[i] = logits[i] - (s->counts[i] ? pres + freq * (float)s->counts[i] : 0.0f);
        logits = s->probs; /* the softmax below reads each one before writing it */
    }
    if (s->p.temperature == 0) return sampler_argmax(logits, n);
    float mx = logits[sampler_argmax(logits, n)];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        s->probs[i] = expf((logits[i] - mx) / s->p.temperature);
        sum += s->probs[i];
    }
    for (int i = 0; i < n; i++)
        s->probs[i] = (float)(s->probs[i] / sum);
    if (s->p.top_k > 0) {
        int k = s->p.top_k;
        for (int i = 0; i < n; i++)
            s->order[i] = i;
        top_k_select(s->order, n, k, s->probs);
        float mass = 0;
        for (int i = 0; i < k; i++)
            mass += s->probs[s->order[i]];
        /* top_p of what top_k left (renormalised), as vLLM does. */
        float cum = 0;
        int last = k - 1;
        for (int i = 0; i < k; i++) {
            cum += s->probs[s->order[i]];
            if (cum >= s->p.top_p * mass) {
                last = i;
                break;
            }
        }
        return draw_by_id(s, last, cum, r);
    }
    if (s->p.top_p >= 1.0f) {
        float cdf = 0;
        for (int i = 0; i < n; i++) {
            cdf += s->probs[i];
            if (r < cdf) return i;
        }
        return n - 1;
    }
    float cutoff = n > 1 ? (1.0f - s->p.top_p) / (float)(n - 1) : 0;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (s->probs[i] >= cutoff) s->order[k++] = i;
    qsort_r(s->order, (size_t)k, sizeof *s->order, cmp_desc, s->probs);
    float cum = 0;
    int last = k - 1;
    for (int i = 0; i < k; i++) {
        cum += s->probs[s->order[i]];
        if (cum >= s->p.top_p) {
            last = i;
            break;
        }
    }
    return draw_by_id(s, last, cum, r);
}
