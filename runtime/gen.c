/* gen: owns the state of one generation: its KV cache, sampler, the text produced and how much of
 * it has been handed out (see gen.h). Text is held back only while its tail could be the start of
 * a stop string; a stop string that completes truncates the text where it starts, so it is never
 * emitted. Because emitted text never ends inside a possible stop string, a match can only begin
 * at or after `emitted`, which is where each search starts. */
#include "gen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int gen_init(struct gen *g, const struct model *m, const struct tok *t, const int *prompt, int n,
             const struct gen_params *p)
{
    memset(g, 0, sizeof *g);
    g->m = m;
    g->t = t;
    g->max_new = p->max_new;
    g->ignore_eos = p->ignore_eos;
    g->n_prompt = n;
    g->prompt = malloc((size_t)n * sizeof *g->prompt);
    int rc = g->prompt ? 0 : -1;
    if (rc == 0) memcpy(g->prompt, prompt, (size_t)n * sizeof *g->prompt);
    struct sampler_params sp = {.temperature = p->temperature,
                                .top_p = p->top_p,
                                .top_k = p->top_k,
                                .presence_penalty = p->presence_penalty,
                                .frequency_penalty = p->frequency_penalty,
                                .seed = p->seed};
    if (rc == 0) rc = sampler_init(&g->smp, model_cfg(m)->vocab, &sp);
    for (int i = 0; i < p->nstop && rc == 0; i++) {
        g->stop[i] = strdup(p->stop[i]);
        if (!g->stop[i]) rc = -1;
        g->nstop = i + 1;
    }
    if (rc == 0) rc = buf_append(&g->text, "", 0);
    g->ntop = !p->logprobs                             ? -1
              : p->top_logprobs > GEN_MAX_TOP_LOGPROBS ? GEN_MAX_TOP_LOGPROBS
              : p->top_logprobs < 0                    ? 0
                                                       : p->top_logprobs;
    if (rc == 0 && g->ntop >= 0 && !(g->lp = calloc((size_t)g->max_new, sizeof *g->lp))) rc = -1;
    if (rc != 0) gen_free(g);
    return rc;
}

void gen_free(struct gen *g)
{
    model_ctx_free(g->ctx);
    sampler_free(&g->smp);
    free(g->prompt);
    for (int i = 0; i < g->nstop; i++)
        free(g->stop[i]);
    buf_free(&g->text);
    free(g->lp);
    memset(g, 0, sizeof *g);
}

int gen_prefill(struct gen *g)
{
    /* The KV cache is allocated here, not in gen_init: requests waiting for the generation slot
     * then hold no cache, so memory is bounded by the running generation, not the queue. */
    g->ctx = model_ctx_new(g->m, g->n_prompt + g->max_new);
    if (!g->ctx) return -1;
    for (int i = 0; i < g->n_prompt; i++) {
        g->logits = model_forward(g->m, g->ctx, g->prompt[i]);
        if (!g->logits) return -1;
    }
    return 0;
}

/* The length of the longest tail of text[from..] that is a proper prefix of a stop string. */
static size_t stop_holdback(const struct gen *g, size_t from)
{
    size_t avail = g->text.len - from, hold = 0;
    for (int s = 0; s < g->nstop; s++) {
        size_t sl = strlen(g->stop[s]);
        for (size_t k = sl - 1 < avail ? sl - 1 : avail; k > hold; k--)
            if (memcmp(g->text.data + g->text.len - k, g->stop[s], k) == 0) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* Truncates text at the earliest stop string found at or after from; 1 when one was. */
static int cut_at_stop(struct gen *g, size_t from)
{
    const char *best = NULL;
    for (int s = 0; s < g->nstop; s++) {
        const char *p =
            memmem(g->text.data + from, g->text.len - from, g->stop[s], strlen(g->stop[s]));
        if (p && (!best || p < best)) best = p;
    }
    if (!best) return 0;
    g->text.len = (size_t)(best - g->text.data);
    g->text.data[g->text.len] = '\0';
    return 1;
}

int gen_step(struct gen *g, struct buf *delta)
{
    if (g->finish != GEN_RUNNING || !g->logits) return 0;
    if (gen_accept(g, g->logits, delta) != 0) return -1;
    if (g->finish == GEN_RUNNING) {
        g->logits = model_forward(g->m, g->ctx, g->next);
        if (!g->logits) g->finish = GEN_LENGTH; /* cannot happen: the context holds them all */
    }
    return 0;
}

int gen_accept(struct gen *g, const float *logits, struct buf *delta)
{
    if (g->finish != GEN_RUNNING) return 0;
    int id = sampler_sample(&g->smp, logits);
    if (g->lp && g->produced < g->max_new)
        gen_logprob_of(logits, model_cfg(g->m)->vocab, id, g->ntop, &g->lp[g->produced]);
    return gen_accept_token(g, id, delta);
}

int gen_device_sample(struct gen *g, struct model_sample *out)
{
    if (!sampler_device_ok(&g->smp) || g->lp) return 0;
    const struct sampler_params *p = &g->smp.p;
    *out = (struct model_sample){p->temperature, p->top_p, p->top_k,
                                 p->temperature > 0 ? sampler_next_u(&g->smp) : 0.0f};
    return 1;
}

int gen_accept_token(struct gen *g, int id, struct buf *delta)
{
    if (g->finish != GEN_RUNNING) return 0;
    g->next = id;
    sampler_accept(&g->smp, id);
    g->produced++;
    int eos = !g->ignore_eos && model_is_eos(g->m, id);
    if (!eos && !tok_is_special(g->t, id)) {
        size_t n;
        const char *b = tok_bytes(g->t, id, &n);
        if (b && tok_utf8_feed(&g->u8, b, n, &g->text) != 0) return -1;
    }
    int last = eos || g->produced >= g->max_new;
    if (last && tok_utf8_flush(&g->u8, &g->text) != 0) return -1;
    if (cut_at_stop(g, g->emitted))
        g->finish = GEN_STOP;
    else if (eos)
        g->finish = GEN_STOP;
    else if (last)
        g->finish = GEN_LENGTH;
    size_t upto = g->text.len;
    if (g->finish == GEN_RUNNING) upto -= stop_holdback(g, g->emitted);
    if (upto > g->emitted) {
        if (buf_append(delta, g->text.data + g->emitted, upto - g->emitted) != 0) return -1;
        g->emitted = upto;
    }
    return 0;
}

void gen_logprob_of(const float *logits, int vocab, int id, int ntop, struct gen_logprob *e)
{
    /* log-softmax in double: max-shifted, so exp never overflows. */
    float mx = logits[0];
    for (int i = 1; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    e->id = id;
    e->logprob = (float)(logits[id] - lse);
    /* The top ntop by insertion into a short sorted list: O(vocab * ntop) at worst, cheap for
     * ntop <= 20 next to the forward pass that made the logits. */
    if (ntop > GEN_MAX_TOP_LOGPROBS) ntop = GEN_MAX_TOP_LOGPROBS;
    if (ntop > vocab) ntop = vocab;
    e->ntop = 0;
    for (int i = 0; i < vocab && ntop > 0; i++) {
        float v = logits[i];
        if (e->ntop == ntop && v <= logits[e->top_id[ntop - 1]]) continue;
        int k = e->ntop < ntop ? e->ntop++ : ntop - 1;
        while (k > 0 && logits[e->top_id[k - 1]] < v) {
            e->top_id[k] = e->top_id[k - 1];
            k--;
        }
        e->top_id[k] = i;
    }
    for (int k = 0; k < e->ntop; k++)
        e->top_logprob[k] = (float)(logits[e->top_id[k]] - lse);
}

const char *gen_finish_name(enum gen_finish f)
{
    switch (f) {
    case GEN_STOP:
        return "stop";
    case GEN_LENGTH:
        return "length";
    case GEN_RUNNING:
        break;
    }
    return "running";
}

int gen_ran(const struct gen *g)
{
    return g->ctx && model_ctx_pos(g->ctx) > 0;
}
