/* sampler: owns a request's sampling state (its random generator and scratch); see sampler.h.
 * Top-p follows llama2.c: tokens whose probability is below (1 - top_p) / (n - 1) cannot be in
 * the nucleus, so they are dropped before sorting, which keeps a 128k vocab cheap. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

int sampler_init(struct sampler *s, int vocab, float temperature, float top_p, uint64_t seed)
{
    s->vocab = vocab;
    s->temperature = temperature;
    s->top_p = top_p;
    /* splitmix64 of the seed, so seeds 0, 1, 2 give unrelated streams and the state is never
     * 0 (xorshift's fixed point). */
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    s->rng = (z ^ (z >> 31)) | 1;
    s->probs = NULL;
    s->order = NULL;
    if (temperature == 0) return 0;
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->order = malloc((size_t)vocab * sizeof *s->order);
    if (!s->probs || !s->order) {
        sampler_free(s);
        return -1;
    }
    return 0;
}

void sampler_free(struct sampler *s)
{
    free(s->probs);
    free(s->order);
    s->probs = NULL;
    s->order = NULL;
}

static float rand_unit(struct sampler *s) /* [0, 1) */
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

static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *probs = ctx;
    float x = probs[*(const int *)a], y = probs[*(const int *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

int sampler_sample(struct sampler *s, const float *logits)
{
    if (s->temperature == 0) return sampler_argmax(logits, s->vocab);
    int n = s->vocab;
    float mx = logits[sampler_argmax(logits, n)];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        s->probs[i] = expf((logits[i] - mx) / s->temperature);
        sum += s->probs[i];
    }
    for (int i = 0; i < n; i++)
        s->probs[i] = (float)(s->probs[i] / sum);
    float r = rand_unit(s);
    if (s->top_p >= 1.0f) {
        float cdf = 0;
        for (int i = 0; i < n; i++) {
            cdf += s->probs[i];
            if (r < cdf) return i;
        }
        return n - 1;
    }
    float cutoff = n > 1 ? (1.0f - s->top_p) / (float)(n - 1) : 0;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (s->probs[i] >= cutoff) s->order[k++] = i;
    qsort_r(s->order, (size_t)k, sizeof *s->order, cmp_desc, s->probs);
    float cum = 0;
    int last = k - 1;
    for (int i = 0; i < k; i++) {
        cum += s->probs[s->order[i]];
        if (cum >= s->top_p) {
            last = i;
            break;
        }
    }
    float target = r * cum, acc = 0;
    for (int i = 0; i <= last; i++) {
        acc += s->probs[s->order[i]];
        if (target < acc) return s->order[i];
    }
    return s->order[last];
}
