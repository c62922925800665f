/* sampler: picks the next token from logits. Greedy (argmax, lowest id on ties) when the
 * temperature is 0; otherwise softmax(logits / temperature), cut to the smallest set of most
 * likely tokens whose mass reaches top_p (nucleus sampling), and drawn with the request's own
 * random generator, so a fixed seed reproduces a completion. One sampler per request. */
#ifndef ORP_SAMPLER_H
#define ORP_SAMPLER_H

#include <stdint.h>

struct sampler {
    int vocab;
    float temperature; /* 0: greedy */
    float top_p;       /* (0, 1] */
    uint64_t rng;      /* xorshift64* state, never 0 */
    float *probs;      /* [vocab] scratch */
    int *order;        /* [vocab] scratch */
};

/* 0, or -1 when out of memory. */
int sampler_init(struct sampler *s, int vocab, float temperature, float top_p, uint64_t seed);
void sampler_free(struct sampler *s);
/* logits[vocab] (not modified). */
int sampler_sample(struct sampler *s, const float *logits);
int sampler_argmax(const float *logits, int n);

#endif
