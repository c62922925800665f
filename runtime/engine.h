/* engine: continuous batching. One scheduler thread owns every admitted generation and runs them
 * together, one step at a time: each step is one batched forward pass over every running request
 * (a decode token each, plus at most prefill_chunk prompt tokens of requests still reading their
 * prompt, so one long prompt does not stall the running streams). A new request joins at the next
 * step. Each request takes its KV blocks from one shared pool (model_kv) when admitted, enough
 * for its prompt and max_new tokens, so a running request never runs out; when the pool is short
 * requests wait in a FIFO queue, and only a full queue refuses one. HTTP threads submit, wait
 * for text, cancel and release; the scheduler never blocks on them. */
#ifndef ORP_ENGINE_H
#define ORP_ENGINE_H

#include <stddef.h>

#include "gen.h"
#include "model.h"
#include "util.h"

struct eng_config {
    int max_batch;     /* requests running at once */
    int queue_limit;   /* requests waiting at once; one more is refused */
    int prefill_chunk; /* prompt tokens per step, over all requests */
    int kv_blocks;     /* blocks of MODEL_KV_BLOCK positions in the pool */
};

struct engine;
struct eng_req;

/* Starts the scheduler over model m (borrowed). NULL with err when memory or a thread is short. */
struct engine *eng_new(const struct model *m, const struct eng_config *c, char *err, size_t errlen);
/* Ends every request (as failed) and joins the scheduler; requests may still be waited on and
 * released. */
void eng_stop(struct engine *e);
/* After eng_stop and once every request is released. Accepts NULL. */
void eng_free(struct engine *e);

enum eng_submit { ENG_OK = 0, ENG_QUEUE_FULL, ENG_NO_MEMORY };
/* Queues generation g (moved into the request: g is zeroed). whole: the consumer wants the text
 * only at the end (a non-streaming reply: no wake-up per token, no bound on unread text).
 * ENG_OK with *out, else g is freed. */
enum eng_submit eng_submit(struct engine *e, struct gen *g, int whole, struct eng_req **out);
/* Waits for text (whole: for the end) and appends it to out. 0: more will come; 1: finished
 * (the text is complete); -1: failed (shutting down, out of memory). */
int eng_wait(struct eng_req *r, struct buf *out);
/* eng_wait, and *tokens = how many sampled tokens have their gen records (g->lp) complete: the
 * consumer may read entries below it. */
int eng_wait_tokens(struct eng_req *r, struct buf *out, int *tokens);
/* The request's generation, for its counts and finish; stable once eng_wait returned 1 or -1, or
 * after eng_cancel. */
const struct gen *eng_gen(const struct eng_req *r);
/* Microseconds from the request's submission (its wait in the queue included) to its first sampled
 * token (-1 when none was sampled) and to its end (to now while it still runs). */
void eng_times(struct eng_req *r, int64_t *first_us, int64_t *total_us);
/* Asks the scheduler to drop the request and waits until it has (at most one step). */
void eng_cancel(struct eng_req *r);
/* Frees the request (cancelling it first if it still runs). */
void eng_release(struct eng_req *r);

/* Appends the engine's metrics in Prometheus text format to out. 0 or -1 (out of memory). */
int eng_metrics(struct engine *e, struct buf *out);

#endif
