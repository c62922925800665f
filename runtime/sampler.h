/* sampler: picks the next token from logits. First the OpenAI penalties on the logits of tokens
 * this request already generated (logit -= frequency_penalty * count + presence_penalty *
 * (count > 0)); then greedy (argmax, lowest id on ties) when the temperature is 0; otherwise
 * softmax(logits / temperature), cut to the top_k most likely tokens (when top_k > 0), then to the
 * smallest set of most likely tokens whose mass reaches top_p of what is left (nucleus sampling),
 * and drawn with the request's own random generator, so a fixed seed reproduces a completion.
 * That is vLLM's order. One sampler per request. */
#ifndef ORP_SAMPLER_H
#define ORP_SAMPLER_H

#include <stdint.h>

struct sampler_params {
    float temperature;                         /* >= 0; 0: greedy */
    float top_p;                               /* (0, 1] */
    int top_k;                                 /* 0: off */
    float presence_penalty, frequency_penalty; /* [-2, 2] */
    uint64_t seed;
};

struct sampler {
    int vocab;
    struct sampler_params p;
    uint64_t rng; /* xorshift64* state, never 0 */
    float *probs; /* [vocab] scratch (penalised logits, then probabilities) */
    int *order;   /* [vocab] scratch */
    int *counts;  /* [vocab] times each token was generated; NULL without penalties */
};

/* 0, or -1 when out of memory. */
int sampler_init(struct sampler *s, int vocab, const struct sampler_params *p);
void sampler_free(struct sampler *s);
/* logits[vocab] (not modified). */
int sampler_sample(struct sampler *s, const float *logits);
/* Records that id was generated (for the penalties). */
void sampler_accept(struct sampler *s, int id);
int sampler_argmax(const float *logits, int n);

#endif
