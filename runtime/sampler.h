/* sampler: picks the next token from logits. First the OpenAI penalties on the logits of tokens
 * this request already generated (logit -= frequency_penalty * count + presence_penalty *
 * (count > 0)); then greedy (argmax, lowest id on ties) when the temperature is 0; otherwise
 * softmax(logits / temperature), cut to the top_k most likely tokens (when top_k > 0), then to the
 * smallest set of most likely tokens whose mass reaches top_p of what is left (nucleus sampling),
 * and drawn with the request's own random generator, so a fixed seed reproduces a completion.
 * That is vLLM's order. One sampler per request.
 *
 * The draw (the RNG contract the CUDA backend shares): a token sampled at temperature > 0 takes
 * exactly one uniform u = sampler_next_u() from the request's generator (greedy takes none), and
 * picks, among the kept tokens in id order, the first whose running probability exceeds u times
 * the kept mass. A device that samples (model_samples_on_device) is handed the same u and follows
 * the same rule (runtime/cuda/cuda_backend.h, rtc_sample), so host and device pick the same token
 * for the same logits and seed, but for exact ties at the top_k / top_p edge (the device keeps
 * every tie, the host the lower ids) and u within float rounding of a boundary. */
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
/* logits[vocab] (not modified): sampler_pick with the next u when temperature > 0. */
int sampler_sample(struct sampler *s, const float *logits);
/* The next uniform in [0, 1) of the request's generator (advances it). */
float sampler_next_u(struct sampler *s);
/* The token for logits[vocab] and the uniform u (unused when greedy); the generator is not
 * touched. */
int sampler_pick(struct sampler *s, const float *logits, float u);
/* 1 when a device may sample for this request: no penalties (they need the host's counts). */
int sampler_device_ok(const struct sampler *s);
/* Records that id was generated (for the penalties). */
void sampler_accept(struct sampler *s, int id);
int sampler_argmax(const float *logits, int n);

#endif
