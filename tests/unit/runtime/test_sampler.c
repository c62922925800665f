/* test_sampler: greedy picks the argmax; top_k keeps only the k most likely tokens (top_k 1 is
 * greedy at any temperature), and then top_p of what is left; a seed reproduces a sequence of
 * draws; presence and frequency penalties lower the logits of generated tokens by OpenAI's
 * formula, in greedy and sampled modes; the draws follow the softmax (a chi-square-free check:
 * frequencies within a few standard deviations). */
#include <math.h>

#include "rt_test.h"
#include "sampler.h"

#define V 50

static void logits_ramp(float *l)
{
    /* Distinct logits, the largest at id 17, the next at 3, then 40, ... */
    for (int i = 0; i < V; i++)
        l[i] = -0.05f * (float)((i * 7) % V);
    l[17] = 3.0f;
    l[3] = 2.5f;
    l[40] = 2.0f;
}

static struct sampler make(float temp, float top_p, int top_k, float pres, float freq,
                           uint64_t seed)
{
    struct sampler s;
    struct sampler_params p = {.temperature = temp,
                               .top_p = top_p,
                               .top_k = top_k,
                               .presence_penalty = pres,
                               .frequency_penalty = freq,
                               .seed = seed};
    CHECK(sampler_init(&s, V, &p) == 0);
    return s;
}

static void test_top_k(void)
{
    float l[V];
    logits_ramp(l);
    struct sampler s = make(2.0f, 1.0f, 1, 0, 0, 1);
    for (int i = 0; i < 200; i++)
        CHECK_INT_EQ(sampler_sample(&s, l), 17);
    sampler_free(&s);
    int seen[V] = {0};
    s = make(5.0f, 1.0f, 3, 0, 0, 2);
    for (int i = 0; i < 3000; i++)
        seen[sampler_sample(&s, l)]++;
    sampler_free(&s);
    for (int i = 0; i < V; i++)
        CHECK((i == 17 || i == 3 || i == 40) ? seen[i] > 0 : seen[i] == 0);
    /* top_k 3 then top_p 0.5 of their renormalised mass: 17 alone carries more than half at a
     * low temperature, so only 17 is left. */
    s = make(0.5f, 0.5f, 3, 0, 0, 3);
    for (int i = 0; i < 200; i++)
        CHECK_INT_EQ(sampler_sample(&s, l), 17);
    sampler_free(&s);
}

static void test_seed(void)
{
    float l[V];
    logits_ramp(l);
    int a[64], b[64], differs = 0;
    struct sampler s = make(1.0f, 0.9f, 10, 0.3f, 0.2f, 42);
    for (int i = 0; i < 64; i++)
        sampler_accept(&s, a[i] = sampler_sample(&s, l));
    sampler_free(&s);
    s = make(1.0f, 0.9f, 10, 0.3f, 0.2f, 42);
    for (int i = 0; i < 64; i++)
        sampler_accept(&s, b[i] = sampler_sample(&s, l));
    sampler_free(&s);
    CHECK(memcmp(a, b, sizeof a) == 0);
    s = make(1.0f, 0.9f, 10, 0.3f, 0.2f, 43);
    for (int i = 0; i < 64; i++) {
        int id = sampler_sample(&s, l);
        sampler_accept(&s, id);
        differs |= id != a[i];
    }
    sampler_free(&s);
    CHECK(differs);
}

static void test_penalties(void)
{
    float l[V];
    logits_ramp(l);
    /* Presence 0.6: after 17 once, 17 is at 2.4 < 3's 2.5. */
    struct sampler s = make(0, 1, 0, 0.6f, 0, 1);
    CHECK_INT_EQ(sampler_sample(&s, l), 17);
    sampler_accept(&s, 17);
    CHECK_INT_EQ(sampler_sample(&s, l), 3);
    sampler_free(&s);
    /* Frequency 0.3: 17 stays first after one use (2.7 > 2.5), not after two (2.4). */
    s = make(0, 1, 0, 0, 0.3f, 1);
    sampler_accept(&s, 17);
    CHECK_INT_EQ(sampler_sample(&s, l), 17);
    sampler_accept(&s, 17);
    CHECK_INT_EQ(sampler_sample(&s, l), 3);
    sampler_free(&s);
    /* Negative penalties favour repeats: 3 used once with presence -1 beats 17. */
    s = make(0, 1, 0, -1.0f, 0, 1);
    sampler_accept(&s, 3);
    CHECK_INT_EQ(sampler_sample(&s, l), 3);
    sampler_free(&s);
    /* Sampled with a strong presence penalty and top_k 1: each of the three leaders once, in
     * order, then 17 again once all three are penalised the same. */
    s = make(1.0f, 1, 1, 1.5f, 0, 9);
    int seq[4];
    for (int i = 0; i < 4; i++)
        sampler_accept(&s, seq[i] = sampler_sample(&s, l));
    CHECK_INT_EQ(seq[0], 17);
    CHECK_INT_EQ(seq[1], 3);
    CHECK_INT_EQ(seq[2], 40);
    CHECK_INT_EQ(seq[3], 17);
    sampler_free(&s);
    /* The logits passed in are not modified. */
    float copy[V];
    logits_ramp(copy);
    CHECK(memcmp(l, copy, sizeof l) == 0);
}

/* Sampled frequencies follow softmax(l / T) restricted to the top_k. */
static void test_distribution(void)
{
    float l[V];
    logits_ramp(l);
    const int n = 20000;
    int seen[V] = {0};
    struct sampler s = make(1.0f, 1.0f, 3, 0, 0, 77);
    for (int i = 0; i < n; i++)
        seen[sampler_sample(&s, l)]++;
    sampler_free(&s);
    double z = exp(3.0) + exp(2.5) + exp(2.0);
    int ids[3] = {17, 3, 40};
    for (int k = 0; k < 3; k++) {
        double p = exp(l[ids[k]]) / z, sd = sqrt(n * p * (1 - p));
        CHECK(fabs(seen[ids[k]] - n * p) < 5 * sd);
    }
}

int main(void)
{
    float l[V];
    logits_ramp(l);
    CHECK_INT_EQ(sampler_argmax(l, V), 17);
    struct sampler s = make(0, 1, 0, 0, 0, 1);
    CHECK_INT_EQ(sampler_sample(&s, l), 17);
    sampler_free(&s);
    test_top_k();
    test_seed();
    test_penalties();
    test_distribution();
    printf("test_sampler: ok\n");
    return 0;
}
