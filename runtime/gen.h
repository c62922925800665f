/* gen: one generation from a prompt: prefill, then token by token, with the text handed out in
 * deltas that are always valid UTF-8 and never contain (or start) a stop string. The server drives
 * it for both streaming and non-streaming replies; the tests drive it directly. */
#ifndef ORP_GEN_H
#define ORP_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"
#include "tokenizer.h"
#include "util.h"

/* OpenAI allows up to four stop strings. */
#define GEN_MAX_STOP 4

enum gen_finish { GEN_RUNNING = 0, GEN_STOP, GEN_LENGTH };

/* OpenAI's bound on top_logprobs (chat; the legacy API allows 5, vLLM 20 for both). */
#define GEN_MAX_TOP_LOGPROBS 20

/* The log-probability of one sampled token under the model (log-softmax of the raw logits, before
 * temperature and penalties, as vLLM reports them), and the ntop most likely tokens (ties: the
 * lower id first), most likely first. */
struct gen_logprob {
    int id;
    float logprob;
    int ntop;
    int top_id[GEN_MAX_TOP_LOGPROBS];
    float top_logprob[GEN_MAX_TOP_LOGPROBS];
};

struct gen_params {
    int max_new; /* >= 1; n_prompt + max_new <= the model's context */
    float temperature, top_p;
    int top_k;                                 /* 0: off */
    float presence_penalty, frequency_penalty; /* 0: off */
    int ignore_eos;                            /* vLLM's: generate past an eos */
    uint64_t seed;
    const char *stop[GEN_MAX_STOP]; /* borrowed for gen_init only (copied) */
    int nstop;
    int logprobs;     /* 1: record each sampled token's logprob (gen.lp) */
    int top_logprobs; /* with logprobs: this many alternatives per token (<= 20) */
};

struct gen {
    const struct model *m; /* borrowed */
    const struct tok *t;   /* borrowed */
    struct model_ctx *ctx;
    struct sampler smp;
    int *prompt;
    int n_prompt;
    const float *logits; /* of the last position run; NULL before prefill (gen_step only) */
    int next;            /* the last token sampled: the one to run next */
    int produced;        /* tokens sampled, an eos included: the usage's completion_tokens */
    int max_new;
    int ignore_eos;
    struct tok_utf8 u8;
    struct buf text; /* valid UTF-8 generated so far; cut at a stop string when one matched */
    size_t emitted;  /* bytes of text already handed out */
    char *stop[GEN_MAX_STOP];
    int nstop;
    enum gen_finish finish;
    int ntop;               /* alternatives per token; -1: no logprobs recorded */
    struct gen_logprob *lp; /* [max_new] with logprobs: entry k is the k-th sampled token's */
};

/* Copies the prompt (n >= 1) and the stop strings. 0 or -1 (out of memory). */
int gen_init(struct gen *g, const struct model *m, const struct tok *t, const int *prompt, int n,
             const struct gen_params *p);
void gen_free(struct gen *g);
/* Allocates the KV cache and runs the prompt through the model. 0, or -1 when memory is short. */
int gen_prefill(struct gen *g);
/* Samples one token from g->logits, appends the text that became safe to hand out to delta
 * (possibly nothing), and runs the token. Sets g->finish when the generation ends. 0 or -1 (out
 * of memory). */
int gen_step(struct gen *g, struct buf *delta);
/* gen_step without running the token: samples from logits (of the last position run, which the
 * caller ran, e.g. in a batch), sets g->next, and appends safe text to delta. 0 or -1. */
int gen_accept(struct gen *g, const float *logits, struct buf *delta);
/* gen_accept of a token already sampled (by a device, from the parameters gen_device_sample
 * gave): sets g->next and appends safe text to delta. 0 or -1. */
int gen_accept_token(struct gen *g, int id, struct buf *delta);
/* 1 with *out filled (and the request's uniform for this token drawn) when the next token may be
 * sampled on a device: no penalties (their counts live here) and no logprobs (they need the
 * logits); 0 when it must be sampled on the host from the logits (gen_accept). */
int gen_device_sample(struct gen *g, struct model_sample *out);
const char *gen_finish_name(enum gen_finish f);
/* Fills e from logits[vocab] for token id: its log-softmax and the ntop (<= GEN_MAX_TOP_LOGPROBS)
 * most likely tokens. */
void gen_logprob_of(const float *logits, int vocab, int id, int ntop, struct gen_logprob *e);
/* 1 once the model has run for this generation (it is then metered, even if cut short). */
int gen_ran(const struct gen *g);

#endif
