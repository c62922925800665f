/* server: owns the runtime's HTTP surface (docs/contracts.md): the route table, the replica
 * secret check, request ids, the validation of OpenAI chat-completion requests, the reply and
 * SSE wire formats, the one-generation-at-a-time slot and the usage journal. It is the only
 * writer of the usage journal. The model is loaded by a background thread so /health can say
 * "loading" meanwhile; every other route answers 503 until it is ready.
 *
 * Streaming: the handler validates everything and builds a struct sse that owns the whole
 * generation (it must not point into the httpd_req, which MHD frees on its own schedule), then
 * queues a response whose content reader produces SSE events as MHD asks for them. With one
 * thread per connection the reader may block (waiting for the generation slot, running the
 * model); it never returns 0, which would make MHD poll it in a busy loop. When MHD frees the
 * response before the stream ended, the client went away: the request is journaled as
 * "cancelled". */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfg.h"
#include "chat.h"
#include "engine.h"
#include "fingerprint.h"
#include "gen.h"
#include "httpd.h"
#include "jsonx.h"
#include "log.h"
#ifdef ORP_HAVE_CUDA
#include "rtc_model.h"
#endif
#include "model.h"
#include "tokenizer.h"
#include "util.h"

/* A stop string longer than this is refused: the held-back tail of the text is at most this
 * long, and real stop strings are a few characters. */
#define RT_MAX_STOP_LEN 256
/* X-ORP-Request-Id: at most this many characters of [A-Za-z0-9_-] (the gateway's ids are
 * shorter); it goes into logs and the journal, so it is checked, never trusted. */
#define RT_MAX_REQUEST_ID 64
/* /detokenize takes at most this many ids: more than any context we serve. */
#define RT_MAX_DETOKENIZE (1 << 20)
/* SSE bytes MHD asks for at a time; an event is usually much smaller. */
#define RT_SSE_BLOCK 16384

enum rt_state { RT_LOADING = 0, RT_READY, RT_FAILED };

struct rt_config {
    const char *model, *host, *name, *usage_log, *device, *log_level;
    const char *gpu_memory_fraction, *tp_collective; /* --device cuda */
    int64_t port, threads, max_body;
    int64_t kv_blocks, kv_memory_mib, max_batch, queue_limit, prefill_chunk, tp;
};

static const struct cfg_opt rt_opts[] = {
    {"model", CFG_STRING, NULL, "model directory (config.json, model.safetensors, tokenizer.json)",
     offsetof(struct rt_config, model)},
    {"port", CFG_INT, "0", "TCP port to listen on (0: any free port, logged)",
     offsetof(struct rt_config, port)},
    {"host", CFG_STRING, "127.0.0.1", "IPv4 address to bind", offsetof(struct rt_config, host)},
    {"name", CFG_STRING, NULL, "model id to serve (default: the model directory's base name)",
     offsetof(struct rt_config, name)},
    {"usage-log", CFG_STRING, NULL, "append one JSON line per generation to this file",
     offsetof(struct rt_config, usage_log)},
    {"threads", CFG_INT, "1", "threads for the matrix products of one forward pass",
     offsetof(struct rt_config, threads)},
    {"tp", CFG_INT, "1",
     "tensor parallel ranks (threads here, one per GPU on CUDA); must divide the attention heads",
     offsetof(struct rt_config, tp)},
    {"device", CFG_STRING, "cpu", "compute device: cpu, or cuda (builds with the CUDA backend)",
     offsetof(struct rt_config, device)},
    {"gpu-memory-fraction", CFG_STRING, "0.9",
     "cuda: fraction of each GPU's memory for this replica; the KV cache takes what the weights "
     "leave of it",
     offsetof(struct rt_config, gpu_memory_fraction)},
    {"tp-collective", CFG_STRING, "nccl",
     "cuda: nccl (one GPU per rank; --tp must equal the GPUs given) or device (an in-process "
     "collective; ranks may share a GPU, for tests)",
     offsetof(struct rt_config, tp_collective)},
    /* 8 MiB: a full 128k-token context of text with JSON escaping fits, and nothing larger can
     * be a valid request. */
    {"max-body", CFG_INT, "8388608", "largest request body in bytes",
     offsetof(struct rt_config, max_body)},
    {"log-level", CFG_STRING, "info", "debug, info, warn or error",
     offsetof(struct rt_config, log_level)},
    {"kv-blocks", CFG_INT, "0",
     "KV cache blocks of 16 positions (0: as many as --kv-memory-mib holds, at most what "
     "--max-batch full contexts need)",
     offsetof(struct rt_config, kv_blocks)},
    {"kv-memory-mib", CFG_INT, "1024", "memory budget of the KV cache when --kv-blocks is 0",
     offsetof(struct rt_config, kv_memory_mib)},
    {"max-batch", CFG_INT, "16", "requests generating at once (continuous batching)",
     offsetof(struct rt_config, max_batch)},
    /* Beyond this many waiting requests a new one gets 503: a queue longer than a few batches
     * only adds latency the client would rather see as a retry elsewhere. */
    {"queue-limit", CFG_INT, "64", "requests waiting for the batch or the KV cache; more get 503",
     offsetof(struct rt_config, queue_limit)},
    {"prefill-chunk", CFG_INT, "256",
     "prompt tokens per step, so a long prompt does not stall running streams",
     offsetof(struct rt_config, prefill_chunk)},
};

struct rt {
    struct rt_config cfg;
    char name[256];
    const char *secret; /* ORP_REPLICA_SECRET; NULL when unset or empty */
    atomic_int state;
    atomic_int stopping;
    struct model *model;
    struct tok *tok;
    struct chat_tpl tpl;
    int ctx_len; /* max_position_embeddings */
    int64_t started_s;
    struct engine *eng;       /* the scheduler: every generation runs there */
    struct rt_fingerprint fp; /* set before state becomes RT_READY, constant after */
    pthread_mutex_t usage_mu;
    int usage_fd; /* -1: no journal */
};

/* ---- shared pieces ---- */

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Appends one usage line for r and fsyncs it (docs/contracts.md, "Usage journal"). Times are in
 * milliseconds with microsecond digits: a small model's first token comes in well under one. */
static void journal(struct rt *rt, const char *rid, struct eng_req *r, const char *finish)
{
    if (rt->usage_fd < 0) return;
    const struct gen *g = eng_gen(r);
    int64_t first_us, total_us;
    eng_times(r, &first_us, &total_us);
    json_t *o = json_pack("{s:s,s:i,s:i,s:s,s:I,s:f}", "request_id", rid, "prompt_tokens",
                          g->n_prompt, "completion_tokens", g->produced, "finish_reason", finish,
                          "at_ms", (json_int_t)util_wall_ms(), "duration_ms", total_us / 1000.0);
    if (o && first_us >= 0) json_object_set_new(o, "ttft_ms", json_real(first_us / 1000.0));
    /* 10 significant digits: microseconds for a request of up to a day, and no binary noise. */
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(o);
    struct buf b = {0};
    int rc = !line || buf_printf(&b, "%s\n", line);
    free(line);
    if (rc == 0) {
        pthread_mutex_lock(&rt->usage_mu);
        rc = write_all(rt->usage_fd, b.data, b.len) || fsync(rt->usage_fd);
        pthread_mutex_unlock(&rt->usage_mu);
    }
    if (rc) log_error("usage journal %s: cannot append: %s", rt->cfg.usage_log, strerror(errno));
    buf_free(&b);
}

/* Every reply of a loaded runtime names the deployment that made it (fingerprint.h). */
static void add_fingerprint(struct httpd_req *req)
{
    struct rt *rt = req->app;
    if (atomic_load(&rt->state) != RT_READY) return;
    size_t n = strlen(req->extra_headers);
    snprintf(req->extra_headers + n, sizeof req->extra_headers - n, "%sOpenRunPod-Fingerprint: %s",
             n ? "\r\n" : "", rt->fp.header);
}

/* Auth and readiness, before any handler but /health. 0: go on; else a reply is queued. */
static int admit(struct httpd_req *req)
{
    struct rt *rt = req->app;
    add_fingerprint(req);
    if (rt->secret) {
        const char *h = httpd_header(req, "Authorization");
        if (!h || strncmp(h, "Bearer ", 7) != 0 || !util_ct_streq(h + 7, rt->secret)) {
            httpd_error(req, 401, "invalid_api_key", NULL,
                        "missing or wrong bearer token for this replica");
            return -1;
        }
    }
    if (atomic_load(&rt->state) != RT_READY) {
        req->retry_after = 1;
        httpd_error(req, 503, "model_loading", NULL, "the model is still loading");
        return -1;
    }
    return 0;
}

static int valid_request_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RT_MAX_REQUEST_ID) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* The request id: the gateway's header, else rt-<hex>. -1 (400 queued) when the header is bad. */
static int request_id(struct httpd_req *req, char out[RT_MAX_REQUEST_ID + 8])
{
    const char *h = httpd_header(req, "X-ORP-Request-Id");
    if (h) {
        if (!valid_request_id(h)) {
            httpd_error(req, 400, "invalid_request_id", NULL,
                        "X-ORP-Request-Id must be 1 to %d characters of [A-Za-z0-9_-]",
                        RT_MAX_REQUEST_ID);
            return -1;
        }
        snprintf(out, RT_MAX_REQUEST_ID + 8, "%s", h);
    } else {
        char hex[33];
        if (util_random_hex(hex, 16) != 0)
            snprintf(hex, sizeof hex, "%016" PRIx64, (uint64_t)util_wall_ms());
        snprintf(out, RT_MAX_REQUEST_ID + 8, "rt-%s", hex);
    }
    snprintf(req->id, sizeof req->id, "%s", out);
    char ctx[RT_MAX_REQUEST_ID + 16];
    snprintf(ctx, sizeof ctx, "req=%s", out);
    log_set_context(ctx);
    return 0;
}

/* Appends decoded text to out as valid UTF-8 (for JSON). */
static int utf8_text(const char *p, size_t n, struct buf *out)
{
    struct tok_utf8 u = {0};
    return tok_utf8_feed(&u, p, n, out) || tok_utf8_flush(&u, out);
}

/* ---- chat completions: parameters ---- */

/* The two OpenAI generation routes share everything but the prompt's form and the reply's shape. */
enum gen_kind { KIND_CHAT = 0, KIND_TEXT };

struct chat_req {
    enum gen_kind kind;
    json_t *body; /* new reference */
    char rid[RT_MAX_REQUEST_ID + 8];
    int stream, include_usage, has_stream_options;
    int64_t max_tokens, max_completion_tokens; /* -1: absent */
    double temperature, top_p;
    int64_t top_k;
    double presence_penalty, frequency_penalty;
    int ignore_eos;
    int has_seed;
    int64_t seed;
    const char *stop[GEN_MAX_STOP]; /* borrowed from body */
    int nstop;
    int logprobs;         /* chat: logprobs true; text: logprobs given (an int) */
    int64_t top_logprobs; /* chat: top_logprobs; text: the value of logprobs; -1: absent */
};

/* A parameter error: the status and code of the reply, and the message naming the param. */
struct perr {
    unsigned status;
    const char *code;
    struct jsonx_err e;
};

__attribute__((format(printf, 5, 6))) static int
fail(struct perr *pe, unsigned status, const char *code, const char *param, const char *fmt, ...)
{
    pe->status = status;
    pe->code = code;
    snprintf(pe->e.param, sizeof pe->e.param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pe->e.message, sizeof pe->e.message, fmt, ap);
    va_end(ap);
    return -1;
}

/* A jsonx getter's failure becomes a 400 invalid_value. */
static int jx(enum jsonx_rc rc, struct perr *pe)
{
    if (rc != JSONX_BAD) return 0;
    pe->status = 400;
    pe->code = "invalid_value";
    return -1;
}

typedef int (*param_fn)(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                        struct perr *pe);

static int p_model(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)cr;
    if (!json_is_string(v))
        return fail(pe, 400, "invalid_value", key, "'%s' must be a string", key);
    if (strcmp(json_string_value(v), rt->name) != 0)
        return fail(pe, 404, "model_not_found", key,
                    "the model '%.100s' does not exist here (this replica serves '%.100s')",
                    json_string_value(v), rt->name);
    return 0;
}

static int p_accept(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)key, (void)v, (void)cr, (void)pe; /* validated elsewhere (messages) */
    return 0;
}

static int p_max_tokens(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                        struct perr *pe)
{
    (void)rt, (void)v;
    int64_t n;
    /* No upper bound here: plan() says context_length_exceeded, with the numbers. */
    if (jx(jsonx_get_int(cr->body, key, 0, 1, INT32_MAX, &n, &pe->e), pe)) return -1;
    if (strcmp(key, "max_tokens") == 0)
        cr->max_tokens = n;
    else
        cr->max_completion_tokens = n;
    return 0;
}

static int p_temperature(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                         struct perr *pe)
{
    (void)rt, (void)v;
    return jx(jsonx_get_number(cr->body, key, 0, 0, 2, &cr->temperature, &pe->e), pe);
}

static int p_top_p(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)v;
    if (jx(jsonx_get_number(cr->body, key, 0, 0, 1, &cr->top_p, &pe->e), pe)) return -1;
    if (cr->top_p <= 0) return fail(pe, 400, "invalid_value", key, "'top_p' must be in (0, 1]");
    return 0;
}

/* top_k, as vLLM takes it: -1 or 0 turn it off. */
static int p_top_k(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)v;
    if (jx(jsonx_get_int(cr->body, key, 0, -1, INT32_MAX, &cr->top_k, &pe->e), pe)) return -1;
    if (cr->top_k < 0) cr->top_k = 0;
    return 0;
}

/* presence_penalty, frequency_penalty: OpenAI's range. */
static int p_penalty(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                     struct perr *pe)
{
    (void)rt, (void)v;
    double *dst =
        strcmp(key, "presence_penalty") == 0 ? &cr->presence_penalty : &cr->frequency_penalty;
    return jx(jsonx_get_number(cr->body, key, 0, -2, 2, dst, &pe->e), pe);
}

static int p_ignore_eos(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                        struct perr *pe)
{
    (void)rt, (void)v;
    return jx(jsonx_get_bool(cr->body, key, 0, &cr->ignore_eos, &pe->e), pe);
}

static int p_seed(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)v;
    cr->has_seed = 1;
    return jx(jsonx_get_int(cr->body, key, 0, INT64_MIN, INT64_MAX, &cr->seed, &pe->e), pe);
}

static int p_stop(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if ((!json_is_string(v) && !json_is_array(v)) || n > GEN_MAX_STOP)
        return fail(pe, 400, "invalid_value", key,
                    "'stop' must be a string or an array of at most %d strings", GEN_MAX_STOP);
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(s) || json_string_length(s) == 0 ||
            json_string_length(s) > RT_MAX_STOP_LEN ||
            strlen(json_string_value(s)) != json_string_length(s))
            return fail(pe, 400, "invalid_value", key,
                        "each stop string must be 1 to %d bytes, without NUL", RT_MAX_STOP_LEN);
        cr->stop[cr->nstop++] = json_string_value(s);
    }
    return 0;
}

static int p_stream(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)v;
    return jx(jsonx_get_bool(cr->body, key, 0, &cr->stream, &pe->e), pe);
}

static int p_stream_options(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                            struct perr *pe)
{
    (void)rt;
    if (!json_is_object(v))
        return fail(pe, 400, "invalid_value", key, "'%s' must be an object", key);
    cr->has_stream_options = 1;
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        if (strcmp(k, "include_usage") == 0) {
            if (jx(jsonx_get_bool(v, k, 0, &cr->include_usage, &pe->e), pe)) {
                snprintf(pe->e.param, sizeof pe->e.param, "stream_options.include_usage");
                return -1;
            }
        } else if (!json_is_null(x)) {
            return fail(pe, 400, "unknown_parameter", "stream_options",
                        "unknown parameter 'stream_options.%.60s'", k);
        }
    }
    return 0;
}

static int p_n(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)v;
    int64_t n;
    if (jx(jsonx_get_int(cr->body, key, 0, 1, 128, &n, &pe->e), pe)) return -1;
    if (n != 1) return fail(pe, 400, "unsupported_value", key, "only n=1 is supported");
    return 0;
}

static int p_string(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)cr;
    if (!json_is_string(v))
        return fail(pe, 400, "invalid_value", key, "'%s' must be a string", key);
    return 0;
}

static int p_false(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)cr;
    if (!json_is_boolean(v))
        return fail(pe, 400, "invalid_value", key, "'%s' must be a boolean", key);
    if (json_is_true(v))
        return fail(pe, 400, "unsupported_value", key, "'%s' is not supported", key);
    return 0;
}

static int p_bool(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)cr;
    if (!json_is_boolean(v))
        return fail(pe, 400, "invalid_value", key, "'%s' must be a boolean", key);
    return 0;
}

static int p_response_format(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                             struct perr *pe)
{
    (void)rt, (void)cr;
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!json_is_object(v) || !type)
        return fail(pe, 400, "invalid_value", key, "'response_format' must be {\"type\": ...}");
    if (strcmp(type, "text") != 0 || json_object_size(v) != 1)
        return fail(pe, 400, "unsupported_value", key,
                    "response_format type '%.40s' is not supported (only text)", type);
    return 0;
}

static int p_empty_object(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                          struct perr *pe)
{
    (void)rt, (void)cr;
    if (!json_is_object(v))
        return fail(pe, 400, "invalid_value", key, "'%s' must be an object", key);
    if (json_object_size(v))
        return fail(pe, 400, "unsupported_value", key, "'%s' is not supported", key);
    return 0;
}

static int p_tool_choice(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                         struct perr *pe)
{
    (void)rt, (void)cr;
    if (json_is_string(v) && strcmp(json_string_value(v), "none") == 0) return 0;
    return fail(pe, 400, "unsupported_parameter", key, "'%s' is not supported (no tool calling)",
                key);
}

/* chat: logprobs (a boolean) and top_logprobs (0..20, only with logprobs: checked after all
 * params); text: logprobs N (0..20) means both. */
static int p_logprobs(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                      struct perr *pe)
{
    (void)rt, (void)v;
    if (cr->kind == KIND_CHAT)
        return jx(jsonx_get_bool(cr->body, key, 0, &cr->logprobs, &pe->e), pe);
    if (jx(jsonx_get_int(cr->body, key, 0, 0, GEN_MAX_TOP_LOGPROBS, &cr->top_logprobs, &pe->e), pe))
        return -1;
    cr->logprobs = 1;
    return 0;
}

static int p_top_logprobs(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                          struct perr *pe)
{
    (void)rt, (void)v;
    return jx(jsonx_get_int(cr->body, key, 0, 0, GEN_MAX_TOP_LOGPROBS, &cr->top_logprobs, &pe->e),
              pe);
}

static int p_unsupported(struct rt *rt, const char *key, json_t *v, struct chat_req *cr,
                         struct perr *pe)
{
    (void)rt, (void)v, (void)cr;
    return fail(pe, 400, "unsupported_parameter", key, "'%s' is not supported", key);
}

/* Every parameter we know. A null value counts as absent; a key not listed is a 400. */
static const struct {
    const char *name;
    param_fn fn;
} chat_params[] = {
    {"model", p_model},
    {"messages", p_accept},
    {"max_tokens", p_max_tokens},
    {"max_completion_tokens", p_max_tokens},
    {"temperature", p_temperature},
    {"top_p", p_top_p},
    {"seed", p_seed},
    {"stop", p_stop},
    {"stream", p_stream},
    {"stream_options", p_stream_options},
    {"n", p_n},
    {"user", p_string},
    {"top_k", p_top_k},
    {"ignore_eos", p_ignore_eos}, /* vLLM's extension */
    {"frequency_penalty", p_penalty},
    {"presence_penalty", p_penalty},
    {"logprobs", p_logprobs},
    {"top_logprobs", p_top_logprobs},
    {"response_format", p_response_format},
    {"logit_bias", p_empty_object},
    {"tools", p_unsupported},
    {"tool_choice", p_tool_choice},
    {"functions", p_unsupported},
    {"function_call", p_tool_choice},
    {"parallel_tool_calls", p_bool}, /* meaningless without tools, so harmless */
    {"store", p_false},
    {"metadata", p_unsupported},
    {"modalities", p_unsupported},
    {"audio", p_unsupported},
    {"prediction", p_unsupported},
    {"reasoning_effort", p_unsupported},
    {"service_tier", p_unsupported},
    {"web_search_options", p_unsupported},
};

static int p_prompt(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)cr;
    /* A list holding one string is the same prompt; batches of prompts are n > 1 in disguise. */
    if (json_is_array(v) && json_array_size(v) == 1) v = json_array_get(v, 0);
    if (!json_is_string(v))
        return fail(pe, 400, "invalid_value", key,
                    "'%s' must be a string (several prompts in one request are not supported)",
                    key);
    return 0;
}

static int p_one(struct rt *rt, const char *key, json_t *v, struct chat_req *cr, struct perr *pe)
{
    (void)rt, (void)cr;
    if (!json_is_integer(v) || json_integer_value(v) != 1)
        return fail(pe, 400, "unsupported_value", key, "only %s=1 is supported", key);
    return 0;
}

/* POST /v1/completions (the legacy text API): the chat parameters that make sense for a raw
 * prompt, and the text-only ones. */
static const struct {
    const char *name;
    param_fn fn;
} text_params[] = {
    {"model", p_model},
    {"prompt", p_prompt},
    {"max_tokens", p_max_tokens},
    {"temperature", p_temperature},
    {"top_p", p_top_p},
    {"seed", p_seed},
    {"stop", p_stop},
    {"stream", p_stream},
    {"stream_options", p_stream_options},
    {"n", p_n},
    {"best_of", p_one},
    {"user", p_string},
    {"top_k", p_top_k},
    {"ignore_eos", p_ignore_eos},
    {"frequency_penalty", p_penalty},
    {"presence_penalty", p_penalty},
    {"echo", p_false},
    {"logprobs", p_logprobs},
    {"logit_bias", p_empty_object},
    {"suffix", p_unsupported},
};

static int check_params(struct rt *rt, struct chat_req *cr, struct perr *pe)
{
    const char *key;
    json_t *v;
    json_object_foreach(cr->body, key, v)
    {
        size_t i = 0, n;
        param_fn fn = NULL;
        if (cr->kind == KIND_CHAT) {
            n = sizeof chat_params / sizeof chat_params[0];
            while (i < n && strcmp(chat_params[i].name, key) != 0)
                i++;
            if (i < n) fn = chat_params[i].fn;
        } else {
            n = sizeof text_params / sizeof text_params[0];
            while (i < n && strcmp(text_params[i].name, key) != 0)
                i++;
            if (i < n) fn = text_params[i].fn;
        }
        if (!fn) {
            char k[64];
            snprintf(k, sizeof k, "%s", key);
            return fail(pe, 400, "unknown_parameter", k, "unknown parameter '%.60s'", key);
        }
        if (json_is_null(v)) continue;
        if (fn(rt, key, v, cr, pe) != 0) return -1;
    }
    if (cr->kind == KIND_TEXT && !json_is_string(json_object_get(cr->body, "prompt")) &&
        !json_is_array(json_object_get(cr->body, "prompt")))
        return fail(pe, 400, "missing_parameter", "prompt", "missing required field 'prompt'");
    if (cr->has_stream_options && !cr->stream)
        return fail(pe, 400, "invalid_value", "stream_options",
                    "'stream_options' is only allowed when 'stream' is true");
    return 0;
}

/* ---- chat completions: replies ---- */

static json_t *usage_json(int prompt, int completion)
{
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", prompt, "completion_tokens", completion,
                     "total_tokens", prompt + completion);
}

/* ---- logprobs, in OpenAI's two shapes ---- */

/* A token's text as a JSON string (new reference): its bytes, or, when they are not valid UTF-8
 * on their own (a token may hold part of a character), each byte above 0x7f as U+FFFD, as
 * OpenAI shows them; `bytes` carries the exact bytes. */
static json_t *token_string(const struct tok *t, int id)
{
    size_t n = 0;
    const char *b = tok_bytes(t, id, &n);
    if (!b) b = "", n = 0;
    json_t *j = json_stringn(b, n);
    if (j) return j;
    struct buf o = {0};
    int rc = buf_append(&o, "", 0);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = (unsigned char)b[i] < 0x80 ? buf_append(&o, b + i, 1)
                                        : buf_append(&o, "\xef\xbf\xbd", 3);
    j = rc == 0 ? json_stringn(o.data, o.len) : NULL;
    buf_free(&o);
    return j;
}

static json_t *token_bytes(const struct tok *t, int id)
{
    size_t n = 0;
    const char *b = tok_bytes(t, id, &n);
    json_t *a = json_array();
    for (size_t i = 0; a && b && i < n; i++)
        json_array_append_new(a, json_integer((unsigned char)b[i]));
    return a;
}

/* Entry k is reported unless it is the eos that ended the generation (it has no text). */
static int lp_reported(const struct gen *g, int k)
{
    return g->ignore_eos || !model_is_eos(g->m, g->lp[k].id);
}

/* Chat's {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...], "refusal": null} for
 * sampled tokens from..to-1. New reference, NULL when out of memory. */
static json_t *chat_logprobs(const struct rt *rt, const struct gen *g, int from, int to)
{
    json_t *content = json_array();
    for (int k = from; content && k < to; k++) {
        const struct gen_logprob *e = &g->lp[k];
        if (!lp_reported(g, k)) continue;
        json_t *top = json_array();
        for (int i = 0; top && i < e->ntop; i++)
            json_array_append_new(top, json_pack("{s:o,s:f,s:o}", "token",
                                                 token_string(rt->tok, e->top_id[i]), "logprob",
                                                 (double)e->top_logprob[i], "bytes",
                                                 token_bytes(rt->tok, e->top_id[i])));
        json_array_append_new(content,
                              json_pack("{s:o,s:f,s:o,s:o}", "token", token_string(rt->tok, e->id),
                                        "logprob", (double)e->logprob, "bytes",
                                        token_bytes(rt->tok, e->id), "top_logprobs", top));
    }
    return json_pack("{s:o,s:n}", "content", content, "refusal");
}

/* The legacy API's {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}
 * for sampled tokens from..to-1; *offset is the completion text's length before them (advanced).
 * New reference, NULL when out of memory. */
static json_t *text_logprobs(const struct rt *rt, const struct gen *g, int from, int to,
                             size_t *offset)
{
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (int k = from; tokens && lps && tops && offs && k < to; k++) {
        const struct gen_logprob *e = &g->lp[k];
        if (!lp_reported(g, k)) continue;
        json_t *ts = token_string(rt->tok, e->id), *top = json_object();
        if (!ts || !top) {
            json_decref(ts);
            json_decref(top);
            break;
        }
        json_array_append_new(offs, json_integer((json_int_t)*offset));
        *offset += json_string_length(ts);
        json_array_append_new(tokens, ts);
        json_array_append_new(lps, json_real(e->logprob));
        for (int i = 0; i < e->ntop; i++) {
            json_t *alt = token_string(rt->tok, e->top_id[i]);
            if (alt) json_object_set_new(top, json_string_value(alt), json_real(e->top_logprob[i]));
            json_decref(alt);
        }
        json_array_append_new(tops, top);
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs",
                     tops, "text_offset", offs);
}

/* The logprobs of a choice for sampled tokens from..to-1: null when not asked for. */
static json_t *choice_logprobs(const struct rt *rt, enum gen_kind kind, int asked,
                               const struct gen *g, int from, int to, size_t *offset)
{
    if (!asked || !g->lp) return json_null();
    json_t *j =
        kind == KIND_TEXT ? text_logprobs(rt, g, from, to, offset) : chat_logprobs(rt, g, from, to);
    return j ? j : json_null();
}

/* content: content_len bytes of valid UTF-8 (a token may decode to a NUL byte, hence the length).
 */
static void reply_completion(struct httpd_req *req, struct rt *rt, const struct chat_req *cr,
                             const struct gen *g, const char *content, size_t content_len)
{
    const char *rid = cr->rid;
    char id[RT_MAX_REQUEST_ID + 24];
    if (cr->kind == KIND_TEXT) {
        snprintf(id, sizeof id, "cmpl-%s", rid);
        size_t off = 0;
        json_t *choice =
            json_pack("{s:s%,s:i,s:o,s:s}", "text", content, content_len, "index", 0, "logprobs",
                      choice_logprobs(rt, cr->kind, cr->logprobs, g, 0, g->produced, &off),
                      "finish_reason", gen_finish_name(g->finish));
        json_t *body = json_pack(
            "{s:s,s:s,s:I,s:s,s:[o],s:o,s:s}", "id", id, "object", "text_completion", "created",
            (json_int_t)(util_wall_ms() / 1000), "model", rt->name, "choices", choice, "usage",
            usage_json(g->n_prompt, g->produced), "system_fingerprint", rt->fp.system);
        if (!body)
            httpd_error(req, 500, "internal_error", NULL, "could not build the reply");
        else
            httpd_reply_json(req, 200, body);
        return;
    }
    snprintf(id, sizeof id, "chatcmpl-%s", rid);
    json_t *msg = json_pack("{s:s,s:s%,s:n}", "role", "assistant", "content", content, content_len,
                            "refusal");
    json_t *choice = json_pack("{s:i,s:o,s:o,s:s}", "index", 0, "message", msg, "logprobs",
                               choice_logprobs(rt, cr->kind, cr->logprobs, g, 0, g->produced, NULL),
                               "finish_reason", gen_finish_name(g->finish));
    json_t *body = json_pack(
        "{s:s,s:s,s:I,s:s,s:[o],s:o,s:s}", "id", id, "object", "chat.completion", "created",
        (json_int_t)(util_wall_ms() / 1000), "model", rt->name, "choices", choice, "usage",
        usage_json(g->n_prompt, g->produced), "system_fingerprint", rt->fp.system);
    if (!body) {
        httpd_error(req, 500, "internal_error", NULL, "could not build the reply");
        return;
    }
    httpd_reply_json(req, 200, body);
}

/* Waits for the whole completion of r (released here) and replies. */
static void run_blocking(struct httpd_req *req, struct rt *rt, struct chat_req *cr,
                         struct eng_req *r)
{
    struct buf content = {0};
    int rc = buf_append(&content, "", 0) ? -1 : 0;
    while (rc == 0)
        rc = eng_wait(r, &content);
    const struct gen *g = eng_gen(r);
    if (rc < 0) {
        if (gen_ran(g) || g->produced) journal(rt, cr->rid, r, "cancelled");
        if (atomic_load(&rt->stopping))
            httpd_error(req, 503, "shutting_down", NULL, "the runtime is shutting down");
        else
            httpd_error(req, 503, "out_of_memory", NULL, "not enough memory for this request");
    } else {
        journal(rt, cr->rid, r, gen_finish_name(g->finish));
        log_info("chat completion: %d prompt + %d completion tokens, %s", g->n_prompt, g->produced,
                 gen_finish_name(g->finish));
        reply_completion(req, rt, cr, g, content.data, content.len);
    }
    eng_release(r);
    buf_free(&content);
}

/* ---- chat completions: streaming ---- */

enum sse_phase { SSE_ROLE = 0, SSE_GEN, SSE_DONE };

struct sse {
    struct rt *rt;
    enum gen_kind kind;
    char rid[RT_MAX_REQUEST_ID + 8];
    char id[RT_MAX_REQUEST_ID + 24];
    json_int_t created;
    int include_usage;
    struct eng_req *r; /* owned */
    enum sse_phase phase;
    struct buf out; /* SSE bytes not yet handed to MHD */
    size_t out_off;
    int logprobs;       /* asked for */
    int lp_sent;        /* sampled tokens whose logprobs went out in a chunk */
    size_t text_offset; /* the legacy API's text_offset of the next token */
};

static int sse_event(struct sse *s, json_t *v)
{
    char *j = v ? jsonx_dump(v) : NULL;
    json_decref(v);
    if (!j) return -1;
    int rc = buf_printf(&s->out, "data: %s\n\n", j);
    free(j);
    return rc;
}

/* The logprobs of the tokens not yet sent, up to ready (null when not asked for). */
static json_t *sse_logprobs(struct sse *s, int ready)
{
    const struct gen *g = eng_gen(s->r);
    json_t *j = choice_logprobs(s->rt, s->kind, s->logprobs, g, s->lp_sent, ready, &s->text_offset);
    if (s->logprobs) s->lp_sent = ready;
    return j;
}

/* A chunk with one choice carrying delta, logprobs lp (both stolen; lp NULL: null) and
 * finish_reason (NULL: null). A text completion's choice carries the delta's "content" as
 * "text". */
static int sse_chunk(struct sse *s, json_t *delta, const char *finish, json_t *lp)
{
    json_t *choice;
    if (!lp) lp = json_null();
    if (s->kind == KIND_TEXT) {
        json_t *t = json_object_get(delta, "content");
        choice =
            json_pack("{s:o,s:i,s:o,s:o}", "text", t ? json_incref(t) : json_string(""), "index", 0,
                      "logprobs", lp, "finish_reason", finish ? json_string(finish) : json_null());
        json_decref(delta);
    } else {
        choice = json_pack("{s:i,s:o,s:o,s:o}", "index", 0, "delta", delta, "logprobs", lp,
                           "finish_reason", finish ? json_string(finish) : json_null());
    }
    json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:s,s:[o]}", "id", s->id, "object",
                          s->kind == KIND_TEXT ? "text_completion" : "chat.completion.chunk",
                          "created", s->created, "model", s->rt->name, "system_fingerprint",
                          s->rt->fp.system, "choices", choice);
    if (c && s->include_usage) json_object_set_new(c, "usage", json_null());
    return sse_event(s, c);
}

static int sse_finish(struct sse *s)
{
    const struct gen *g = eng_gen(s->r);
    s->phase = SSE_DONE;
    journal(s->rt, s->rid, s->r, gen_finish_name(g->finish));
    log_info("chat completion (stream): %d prompt + %d completion tokens, %s", g->n_prompt,
             g->produced, gen_finish_name(g->finish));
    json_t *lp = s->logprobs && s->lp_sent < g->produced ? sse_logprobs(s, g->produced) : NULL;
    if (sse_chunk(s, json_object(), gen_finish_name(g->finish), lp) != 0) return -1;
    if (s->include_usage) {
        json_t *u =
            json_pack("{s:s,s:s,s:I,s:s,s:s,s:[],s:o}", "id", s->id, "object",
                      s->kind == KIND_TEXT ? "text_completion" : "chat.completion.chunk", "created",
                      s->created, "model", s->rt->name, "system_fingerprint", s->rt->fp.system,
                      "choices", "usage", usage_json(g->n_prompt, g->produced));
        if (sse_event(s, u) != 0) return -1;
    }
    return buf_append(&s->out, "data: [DONE]\n\n", 14);
}

/* Produces the next event(s) into s->out. 0, or -1 to end the stream with an error. */
static int sse_advance(struct sse *s)
{
    switch (s->phase) {
    case SSE_ROLE:
        s->phase = SSE_GEN;
        if (s->kind == KIND_TEXT) return 0; /* text completions have no role chunk */
        return sse_chunk(s, json_pack("{s:s,s:s}", "role", "assistant", "content", ""), NULL, NULL);
    case SSE_GEN: {
        struct buf delta = {0};
        int rc = buf_append(&delta, "", 0) ? -1 : 0;
        int ready = 0;
        while (rc == 0 && delta.len == 0)
            rc = eng_wait_tokens(s->r, &delta, &ready);
        int done = rc == 1;
        if (rc >= 0 && delta.len)
            rc = sse_chunk(s, json_pack("{s:s%}", "content", delta.data, delta.len), NULL,
                           s->logprobs ? sse_logprobs(s, ready) : NULL);
        buf_free(&delta);
        if (rc >= 0 && done) rc = sse_finish(s);
        return rc < 0 ? -1 : 0;
    }
    case SSE_DONE:
        break;
    }
    return 0;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct sse *s = cls;
    char ctx[RT_MAX_REQUEST_ID + 16];
    snprintf(ctx, sizeof ctx, "req=%s", s->rid);
    log_set_context(ctx);
    while (s->out_off == s->out.len) {
        s->out.len = s->out_off = 0;
        if (s->phase == SSE_DONE) return MHD_CONTENT_READER_END_OF_STREAM;
        if (sse_advance(s) != 0) {
            log_warn("stream ended early (shutting down, or out of memory)");
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    size_t n = s->out.len - s->out_off;
    if (n > max) n = max;
    memcpy(buf, s->out.data + s->out_off, n);
    s->out_off += n;
    return (ssize_t)n;
}

/* MHD's free callback: runs once the response is done with, finished or not. */
static void sse_free(void *cls)
{
    struct sse *s = cls;
    if (s->phase != SSE_DONE) {
        /* The client went away (or the stream failed): the scheduler drops the request at its
         * next step, and what it ran is metered. */
        eng_cancel(s->r);
        const struct gen *g = eng_gen(s->r);
        if (gen_ran(g) || g->produced) {
            char ctx[RT_MAX_REQUEST_ID + 16];
            snprintf(ctx, sizeof ctx, "req=%s", s->rid);
            log_set_context(ctx);
            log_info("client went away after %d completion tokens: cancelled", g->produced);
            journal(s->rt, s->rid, s->r, "cancelled");
            log_set_context(NULL);
        }
    }
    eng_release(s->r);
    buf_free(&s->out);
    free(s);
}

/* Takes r over (into the stream state) and queues the streaming response. */
static void start_stream(struct httpd_req *req, struct rt *rt, struct chat_req *cr,
                         struct eng_req *r)
{
    struct sse *s = calloc(1, sizeof *s);
    if (!s) {
        eng_release(r);
        httpd_error(req, 503, "out_of_memory", NULL, "out of memory");
        return;
    }
    s->rt = rt;
    s->kind = cr->kind;
    snprintf(s->rid, sizeof s->rid, "%s", cr->rid);
    snprintf(s->id, sizeof s->id, "%s-%s", cr->kind == KIND_TEXT ? "cmpl" : "chatcmpl", cr->rid);
    s->created = (json_int_t)(util_wall_ms() / 1000);
    s->include_usage = cr->include_usage;
    s->logprobs = cr->logprobs;
    s->r = r;
    /* From here MHD owns s: it calls sse_free exactly once, even if queueing fails. */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, RT_SSE_BLOCK, sse_read, s, sse_free);
    if (!resp) {
        sse_free(s);
        httpd_error(req, 503, "out_of_memory", NULL, "out of memory");
        return;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    httpd_reply_response(req, 200, resp);
}

/* ---- chat completions: the handler ---- */

static uint64_t random_seed(void)
{
    char hex[17];
    if (util_random_hex(hex, 8) != 0) return (uint64_t)util_now_ms();
    return strtoull(hex, NULL, 16);
}

/* Fills the generation parameters; -1 (reply queued) when the request cannot fit the context. */
static int plan(struct httpd_req *req, struct rt *rt, struct chat_req *cr, int n_prompt,
                struct gen_params *gp)
{
    int64_t want = cr->max_completion_tokens >= 0 ? cr->max_completion_tokens : cr->max_tokens;
    const char *param = cr->max_completion_tokens >= 0 ? "max_completion_tokens" : "max_tokens";
    if (n_prompt >= rt->ctx_len) {
        httpd_error(req, 400, "context_length_exceeded",
                    cr->kind == KIND_TEXT ? "prompt" : "messages",
                    "This model's maximum context length is %d tokens. However, your messages "
                    "resulted in %d tokens.",
                    rt->ctx_len, n_prompt);
        return -1;
    }
    if (want >= 0 && n_prompt + want > rt->ctx_len) {
        httpd_error(req, 400, "context_length_exceeded", param,
                    "This model's maximum context length is %d tokens. However, you requested "
                    "%" PRId64 " tokens (%d in the messages, %" PRId64 " in the completion).",
                    rt->ctx_len, n_prompt + want, n_prompt, want);
        return -1;
    }
    memset(gp, 0, sizeof *gp);
    gp->max_new = want >= 0 ? (int)want : rt->ctx_len - n_prompt;
    gp->temperature = (float)cr->temperature;
    gp->top_p = (float)cr->top_p;
    gp->top_k = (int)cr->top_k;
    gp->ignore_eos = cr->ignore_eos;
    gp->presence_penalty = (float)cr->presence_penalty;
    gp->frequency_penalty = (float)cr->frequency_penalty;
    gp->seed = cr->has_seed ? (uint64_t)cr->seed : random_seed();
    gp->nstop = cr->nstop;
    for (int i = 0; i < cr->nstop; i++)
        gp->stop[i] = cr->stop[i];
    gp->logprobs = cr->logprobs;
    gp->top_logprobs = cr->top_logprobs > 0 ? (int)cr->top_logprobs : 0;
    return 0;
}

static void serve_generation(struct httpd_req *req, enum gen_kind kind)
{
    struct rt *rt = req->app;
    if (admit(req) != 0) return;
    struct chat_req cr = {.kind = kind,
                          .max_tokens = -1,
                          .max_completion_tokens = -1,
                          .top_logprobs = -1,
                          .temperature = 1.0,
                          .top_p = 1.0};
    if (request_id(req, cr.rid) != 0) return;
    struct perr pe = {0};
    cr.body = jsonx_parse_object(req->body.data, req->body.len, &pe.e);
    if (!cr.body) {
        httpd_error(req, 400, "invalid_json", NULL, "%s", pe.e.message);
        return;
    }
    struct tok_ids prompt = {0};
    struct gen_params gp;
    if (check_params(rt, &cr, &pe) != 0) {
        httpd_error(req, pe.status, pe.code, pe.e.param, "%s", pe.e.message);
        goto out;
    }
    if (kind == KIND_CHAT && cr.top_logprobs >= 0 && !cr.logprobs) {
        httpd_error(req, 400, "invalid_value", "top_logprobs",
                    "'top_logprobs' needs 'logprobs' to be true");
        goto out;
    }
    int rc;
    if (kind == KIND_TEXT) {
        /* The raw prompt, after the tokenizer's bos_token as Hugging Face adds it. */
        json_t *pv = json_object_get(cr.body, "prompt");
        if (json_is_array(pv)) pv = json_array_get(pv, 0);
        char err[256];
        rc = rt->tpl.bos_id >= 0 ? tok_ids_push(&prompt, rt->tpl.bos_id) : 0;
        if (rc == 0)
            rc = tok_encode(rt->tok, json_string_value(pv), json_string_length(pv), 1, &prompt, err,
                            sizeof err);
        if (rc != 0) rc = -2;
    } else {
        rc =
            chat_encode(&rt->tpl, rt->tok, json_object_get(cr.body, "messages"), 1, &prompt, &pe.e);
    }
    if (rc == -1) {
        httpd_error(req, 400, "invalid_value", pe.e.param, "%s", pe.e.message);
        goto out;
    }
    if (rc != 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not tokenize the messages");
        goto out;
    }
    if (plan(req, rt, &cr, (int)prompt.n, &gp) != 0) goto out;
    struct gen g;
    if (gen_init(&g, rt->model, rt->tok, prompt.v, (int)prompt.n, &gp) != 0) {
        httpd_error(req, 503, "out_of_memory", NULL, "not enough memory for this request");
        goto out;
    }
    struct eng_req *r = NULL;
    enum eng_submit sub = eng_submit(rt->eng, &g, !cr.stream, &r);
    if (sub == ENG_QUEUE_FULL) {
        req->retry_after = 1;
        httpd_error(req, 503, "queue_full", NULL,
                    "the runtime is busy: %d requests are already waiting; retry later",
                    (int)rt->cfg.queue_limit);
    } else if (sub != ENG_OK) {
        httpd_error(req, 503, "out_of_memory", NULL, "not enough memory for this request");
    } else if (cr.stream) {
        start_stream(req, rt, &cr, r);
    } else {
        run_blocking(req, rt, &cr, r);
    }
out:
    tok_ids_free(&prompt);
    json_decref(cr.body);
}

static void h_chat(struct httpd_req *req)
{
    serve_generation(req, KIND_CHAT);
}

static void h_completions(struct httpd_req *req)
{
    serve_generation(req, KIND_TEXT);
}

/* ---- other routes ---- */

static void h_health(struct httpd_req *req)
{
    struct rt *rt = req->app;
    add_fingerprint(req);
    if (atomic_load(&rt->state) == RT_READY)
        httpd_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
    else
        httpd_reply_json(req, 503, json_pack("{s:s}", "status", "loading"));
}

static void h_models(struct httpd_req *req)
{
    struct rt *rt = req->app;
    if (admit(req) != 0) return;
    json_t *m = json_pack("{s:s,s:s,s:I,s:s,s:i}", "id", rt->name, "object", "model", "created",
                          (json_int_t)rt->started_s, "owned_by", "openrunpod", "max_model_len",
                          rt->ctx_len);
    httpd_reply_json(req, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m));
}

/* Only these keys are known to /tokenize and /detokenize. */
static int check_keys(struct httpd_req *req, json_t *body, const char *const *keys)
{
    if (httpd_reject_unknown(req, body, keys) != 0) return -1;
    const char *name = ((struct rt *)req->app)->name;
    json_t *model = json_object_get(body, "model");
    if (model && !json_is_null(model) &&
        (!json_is_string(model) || strcmp(json_string_value(model), name) != 0)) {
        httpd_error(req, 404, "model_not_found", "model", "this replica serves '%.100s'", name);
        return -1;
    }
    return 0;
}

/* Appends the token strings of ids (each made valid UTF-8 on its own) to arr. */
static int token_strs(struct rt *rt, const struct tok_ids *ids, json_t *arr)
{
    for (size_t i = 0; i < ids->n; i++) {
        size_t n = 0;
        const char *b = tok_bytes(rt->tok, ids->v[i], &n);
        struct buf s = {0};
        if (utf8_text(b ? b : "", b ? n : 0, &s) != 0) return -1;
        json_array_append_new(arr, json_stringn(s.data, s.len));
        buf_free(&s);
    }
    return 0;
}

/* vLLM's /tokenize: {"prompt"} or {"messages"}, add_special_tokens, add_generation_prompt,
 * return_token_strs -> {"count", "max_model_len", "tokens", "token_strs"}. */
static void h_tokenize(struct httpd_req *req)
{
    static const char *const keys[] = {"model",
                                       "prompt",
                                       "messages",
                                       "add_special_tokens",
                                       "add_generation_prompt",
                                       "return_token_strs",
                                       NULL};
    struct rt *rt = req->app;
    if (admit(req) != 0) return;
    struct jsonx_err e = {0};
    json_t *body = httpd_body_object(req);
    if (!body) return;
    struct tok_ids ids = {0};
    const char *prompt = NULL;
    json_t *messages = json_object_get(body, "messages");
    int has_messages = messages && !json_is_null(messages);
    int add_special = !has_messages, add_gen = 1, strs = 0, rc = 0;
    if (check_keys(req, body, keys) != 0) goto out;
    if (jsonx_get_string(body, "prompt", 0, &prompt, 0, &e) == JSONX_BAD ||
        jsonx_get_bool(body, "add_special_tokens", 0, &add_special, &e) == JSONX_BAD ||
        jsonx_get_bool(body, "add_generation_prompt", 0, &add_gen, &e) == JSONX_BAD ||
        jsonx_get_bool(body, "return_token_strs", 0, &strs, &e) == JSONX_BAD) {
        httpd_error(req, 400, "invalid_value", e.param, "%s", e.message);
        goto out;
    }
    if (!prompt == !has_messages) {
        httpd_error(req, 400, "invalid_value", "prompt",
                    "give exactly one of 'prompt' and 'messages'");
        goto out;
    }
    if (prompt) {
        char err[256];
        /* The tokenizer's bos_token, as Hugging Face adds it (none for Qwen). */
        if (add_special && rt->tpl.bos_id >= 0) rc = tok_ids_push(&ids, rt->tpl.bos_id);
        if (rc == 0) rc = tok_encode(rt->tok, prompt, strlen(prompt), 1, &ids, err, sizeof err);
    } else {
        rc = chat_encode(&rt->tpl, rt->tok, messages, add_gen, &ids, &e);
        if (rc == -1) {
            httpd_error(req, 400, "invalid_value", e.param, "%s", e.message);
            goto out;
        }
    }
    json_t *arr = json_array(), *sarr = strs ? json_array() : json_null();
    for (size_t i = 0; i < ids.n; i++)
        json_array_append_new(arr, json_integer(ids.v[i]));
    if (rc == 0 && strs) rc = token_strs(rt, &ids, sarr);
    json_t *reply = json_pack("{s:i,s:i,s:o,s:o}", "count", (int)ids.n, "max_model_len",
                              rt->ctx_len, "tokens", arr, "token_strs", sarr);
    if (rc != 0 || !reply) {
        json_decref(reply);
        httpd_error(req, 500, "internal_error", NULL, "tokenization failed");
        goto out;
    }
    httpd_reply_json(req, 200, reply);
out:
    tok_ids_free(&ids);
    json_decref(body);
}

/* vLLM's /detokenize: {"tokens": [ids]} -> {"prompt": text}. Special tokens are kept; bytes that
 * are not valid UTF-8 become U+FFFD. */
static void h_detokenize(struct httpd_req *req)
{
    static const char *const keys[] = {"model", "tokens", NULL};
    struct rt *rt = req->app;
    if (admit(req) != 0) return;
    json_t *body = httpd_body_object(req);
    if (!body) return;
    struct tok_ids ids = {0};
    struct buf raw = {0}, text = {0};
    if (check_keys(req, body, keys) != 0) goto out;
    json_t *arr = json_object_get(body, "tokens");
    if (!json_is_array(arr) || json_array_size(arr) > RT_MAX_DETOKENIZE) {
        httpd_error(req, 400, "invalid_value", "tokens",
                    "'tokens' must be an array of at most %d token ids", RT_MAX_DETOKENIZE);
        goto out;
    }
    size_t i;
    json_t *v;
    size_t dummy;
    json_array_foreach(arr, i, v)
    {
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (id < 0 || id >= tok_vocab_size(rt->tok) || !tok_bytes(rt->tok, (int)id, &dummy)) {
            httpd_error(req, 400, "invalid_value", "tokens",
                        "tokens[%zu] is not a token id of this model", i);
            goto out;
        }
        if (tok_ids_push(&ids, (int)id) != 0) break;
    }
    if (ids.n != json_array_size(arr) || tok_decode(rt->tok, ids.v, ids.n, 0, &raw) != 0 ||
        utf8_text(raw.data, raw.len, &text) != 0) {
        httpd_error(req, 500, "internal_error", NULL, "out of memory");
        goto out;
    }
    httpd_reply_json(req, 200, json_pack("{s:s%}", "prompt", text.data, text.len));
out:
    buf_free(&raw);
    buf_free(&text);
    tok_ids_free(&ids);
    json_decref(body);
}

/* Prometheus text format; behind the replica secret like every route but /health. */
static void h_metrics(struct httpd_req *req)
{
    struct rt *rt = req->app;
    if (admit(req) != 0) return;
    struct buf b = {0};
    if (eng_metrics(rt->eng, &b) != 0) {
        buf_free(&b);
        httpd_error(req, 500, "internal_error", NULL, "out of memory");
        return;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(b.len, b.data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        buf_free(&b);
        httpd_error(req, 500, "internal_error", NULL, "out of memory");
        return;
    }
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4");
    httpd_reply_response(req, 200, r);
}

static const struct httpd_route routes[] = {
    {"GET", "/health", h_health},
    {"GET", "/metrics", h_metrics},
    {"GET", "/v1/models", h_models},
    {"POST", "/v1/chat/completions", h_chat},
    {"POST", "/v1/completions", h_completions},
    {"POST", "/tokenize", h_tokenize},
    {"POST", "/detokenize", h_detokenize},
};

/* ---- start-up ---- */

/* The scheduler and its KV pool: --kv-blocks, else what --kv-memory-mib holds, at most what
 * --max-batch full contexts can use and at least one full context (so every request that fits
 * the context can run). */
static struct engine *start_engine(struct rt *rt, char *err, size_t errlen)
{
    const struct rt_config *c = &rt->cfg;
    size_t bb = model_kv_block_bytes(rt->model);
    int64_t per_ctx = model_kv_blocks_for(rt->ctx_len), blocks = c->kv_blocks;
    if (blocks == 0) {
        blocks = (int64_t)((uint64_t)c->kv_memory_mib * 1024 * 1024 / bb);
        if (blocks > per_ctx * c->max_batch) blocks = per_ctx * c->max_batch;
    }
    if (model_kv_blocks_max(rt->model) > 0) blocks = model_kv_blocks_max(rt->model); /* GPU */
    if (blocks < per_ctx) {
        log_warn("KV cache: %lld blocks cannot hold one full context of %d positions; using %lld",
                 (long long)blocks, rt->ctx_len, (long long)per_ctx);
        blocks = per_ctx;
    }
    if (blocks > INT32_MAX / 2) blocks = INT32_MAX / 2;
    struct eng_config ec = {.max_batch = (int)c->max_batch,
                            .queue_limit = (int)c->queue_limit,
                            .prefill_chunk = (int)c->prefill_chunk,
                            .kv_blocks = (int)blocks};
    struct engine *e = eng_new(rt->model, &ec, err, errlen);
    if (e)
        log_info("KV cache: %d blocks of %d positions (%.1f MiB); batch %d, queue %d, prefill "
                 "chunk %d",
                 ec.kv_blocks, MODEL_KV_BLOCK, (double)ec.kv_blocks * (double)bb / 1048576.0,
                 ec.max_batch, ec.queue_limit, ec.prefill_chunk);
    return e;
}

/* The CUDA backend's model (runtime/cuda/rtc_model.h), sized for this server's batches. */
static struct model *load_cuda(struct rt *rt, char *err, size_t errlen)
{
#ifdef ORP_HAVE_CUDA
    struct rtc_model_opts o;
    rtc_model_opts_default(&o);
    o.tp = (int)rt->cfg.tp;
    o.coll = strcmp(rt->cfg.tp_collective, "device") == 0 ? RTC_COLL_DEVICE : RTC_COLL_NCCL;
    o.mem_fraction = strtod(rt->cfg.gpu_memory_fraction, NULL);
    o.max_rows = (int)(rt->cfg.prefill_chunk + rt->cfg.max_batch);
    o.max_logits = (int)rt->cfg.max_batch;
    struct rtc_model *rm = rtc_model_open(rt->cfg.model, &o, err, errlen);
    return rm ? rtc_model_as_model(rm, err, errlen) : NULL;
#else
    (void)rt;
    snprintf(err, errlen, "this build has no CUDA backend");
    return NULL;
#endif
}

/* The background loader: tokenizer, model, template. On failure it logs why and signals the
 * main thread, which exits 1 (the agent reports the replica failed and restarts it). */
static void *loader(void *arg)
{
    struct rt *rt = arg;
    char err[5200], path[4096];
    int64_t t0 = util_now_ms();
    log_info("loading the model from %s", rt->cfg.model);
    snprintf(path, sizeof path, "%s/tokenizer.json", rt->cfg.model);
    rt->tok = tok_load(path, err, sizeof err);
    if (rt->tok && strcmp(rt->cfg.device, "cuda") == 0)
        rt->model = load_cuda(rt, err, sizeof err);
    else if (rt->tok)
        rt->model =
            model_load_tp(rt->cfg.model, (int)rt->cfg.threads, (int)rt->cfg.tp, err, sizeof err);
    if (rt->model && chat_tpl_load(&rt->tpl, rt->cfg.model, model_cfg(rt->model)->arch, rt->tok,
                                   err, sizeof err) == 0) {
        if (tok_vocab_size(rt->tok) > model_cfg(rt->model)->vocab) {
            snprintf(err, sizeof err,
                     "%s: the tokenizer has %d ids but config.json's vocab_size "
                     "is %d",
                     path, tok_vocab_size(rt->tok), model_cfg(rt->model)->vocab);
        } else if (rt_fingerprint_compute(rt->cfg.model, model_tp(rt->model), rt->cfg.device,
                                          &rt->fp, err, sizeof err) == 0) {
            rt->ctx_len = model_cfg(rt->model)->max_pos;
            rt->eng = start_engine(rt, err, sizeof err);
        }
        if (rt->eng) {
            atomic_store(&rt->state, RT_READY);
            const struct model_config *c = model_cfg(rt->model);
            log_info("model '%s' ready in %lld ms: %s, %d layers, dim %d, vocab %d, context %d, "
                     "%s chat format, tp %d; fingerprint %s",
                     rt->name, (long long)(util_now_ms() - t0), model_arch_name(c->arch), c->layers,
                     c->dim, c->vocab, c->max_pos, chat_family_name(rt->tpl.family),
                     model_tp(rt->model), rt->fp.header);
            return NULL;
        }
    }
    log_error("cannot load the model: %s", err);
    atomic_store(&rt->state, RT_FAILED);
    kill(getpid(), SIGUSR1);
    return NULL;
}

static int parse_config(struct rt *rt, int argc, char **argv, int first)
{
    static const char usage[] =
        "usage: orp-runtime serve --model DIR --port N [--host ADDR] [--name NAME]\n"
        "                         [--usage-log FILE] [--threads N] [--device cpu|cuda]\n"
        "                         [--max-body BYTES] [--log-level L] [--kv-blocks N]\n"
        "                         [--kv-memory-mib N] [--max-batch N] [--queue-limit N]\n"
        "                         [--prefill-chunk N] [--tp N]\n"
        "Environment: ORP_REPLICA_SECRET, when set, is the bearer token every route but\n"
        "GET /health requires.";
    char err[256];
    size_t n = sizeof rt_opts / sizeof rt_opts[0];
    int rc = cfg_parse(rt_opts, n, &rt->cfg, "ORP_RUNTIME", argc, argv, first, err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, usage, rt_opts, n, "ORP_RUNTIME");
        return 1;
    }
    const struct rt_config *c = &rt->cfg;
    if (rc == 0 && !c->model) snprintf(err, sizeof err, "--model DIR is required"), rc = -1;
    if (rc == 0 && (c->port < 0 || c->port > 65535))
        snprintf(err, sizeof err, "--port must be in [0, 65535]"), rc = -1;
    if (rc == 0 && (c->threads < 1 || c->threads > 256))
        snprintf(err, sizeof err, "--threads must be in [1, 256]"), rc = -1;
    if (rc == 0 && (c->tp < 1 || c->tp > 64))
        snprintf(err, sizeof err, "--tp must be in [1, 64]"), rc = -1;
    if (rc == 0 && (c->kv_blocks < 0 || c->kv_blocks > (1 << 30) || c->kv_memory_mib < 1 ||
                    c->kv_memory_mib > (1 << 30)))
        snprintf(err, sizeof err, "--kv-blocks must be >= 0 and --kv-memory-mib >= 1"), rc = -1;
    if (rc == 0 && (c->max_batch < 1 || c->max_batch > 1024 || c->queue_limit < 0 ||
                    c->queue_limit > 65536 || c->prefill_chunk < 1 || c->prefill_chunk > 65536))
        snprintf(err, sizeof err,
                 "--max-batch must be in [1, 1024], --queue-limit in [0, 65536] and "
                 "--prefill-chunk in [1, 65536]"),
            rc = -1;
    if (rc == 0 && (c->max_body < 1024 || c->max_body > (1 << 30)))
        snprintf(err, sizeof err, "--max-body must be in [1024, 2^30]"), rc = -1;
#ifdef ORP_HAVE_CUDA
    char *fend = NULL;
    double frac = strtod(c->gpu_memory_fraction, &fend);
    if (rc == 0 && strcmp(c->device, "cpu") != 0 && strcmp(c->device, "cuda") != 0)
        snprintf(err, sizeof err, "--device must be cpu or cuda"), rc = -1;
    if (rc == 0 && (!fend || *fend || !(frac > 0 && frac <= 1)))
        snprintf(err, sizeof err, "--gpu-memory-fraction must be a number in (0, 1]"), rc = -1;
    if (rc == 0 && strcmp(c->tp_collective, "nccl") != 0 && strcmp(c->tp_collective, "device"))
        snprintf(err, sizeof err, "--tp-collective must be nccl or device"), rc = -1;
#else
    if (rc == 0 && strcmp(c->device, "cpu") != 0)
        snprintf(err, sizeof err, "--device %s: this build serves on the cpu only", c->device),
            rc = -1;
#endif
    if (rc != 0) {
        fprintf(stderr, "orp-runtime serve: %s\n", err);
        return -1;
    }
    return 0;
}

static void set_name(struct rt *rt)
{
    if (rt->cfg.name && *rt->cfg.name) {
        snprintf(rt->name, sizeof rt->name, "%s", rt->cfg.name);
        return;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", rt->cfg.model);
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        dir[--n] = '\0';
    const char *base = strrchr(dir, '/');
    base = base ? base + 1 : dir;
    /* Model ids longer than the field are cut; the name only labels replies. */
    size_t len = strnlen(base, sizeof rt->name - 1);
    memcpy(rt->name, base, len);
    rt->name[len] = '\0';
}

static int open_journal(struct rt *rt)
{
    rt->usage_fd = -1;
    if (!rt->cfg.usage_log) return 0;
    rt->usage_fd = open(rt->cfg.usage_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (rt->usage_fd < 0) {
        log_error("usage journal %s: cannot open: %s", rt->cfg.usage_log, strerror(errno));
        return -1;
    }
    return 0;
}

int rt_serve(int argc, char **argv, int first)
{
    static struct rt rt; /* lives as long as the process: MHD threads may outlast main's frame */
    int rc = parse_config(&rt, argc, argv, first);
    if (rc != 0) return rc == 1 ? 0 : 2;
    log_init("orp-runtime", rt.cfg.log_level);
    set_name(&rt);
    const char *secret = getenv("ORP_REPLICA_SECRET");
    rt.secret = secret && *secret ? secret : NULL;
    rt.started_s = util_wall_ms() / 1000;
    pthread_mutex_init(&rt.usage_mu, NULL);
    if (open_journal(&rt) != 0) return 1;

    /* Block the signals we wait for before any thread starts, so every thread inherits it and
     * sigwait below is the only place they are taken. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct httpd_config hc = {
        .name = "runtime",
        .host = rt.cfg.host,
        .port = (int)rt.cfg.port,
        .thread_per_connection = 1,
        .conn_limit = 256,
        .conn_timeout_s = 120,
        .max_body = (size_t)rt.cfg.max_body,
        .routes = routes,
        .nroutes = sizeof routes / sizeof routes[0],
        .app = &rt,
    };
    char err[256];
    struct httpd_server *srv = httpd_start(&hc, err, sizeof err);
    if (!srv) {
        log_error("%s", err);
        return 1;
    }
    log_info("listening on %s:%d, serving '%s'%s", rt.cfg.host, httpd_port(srv), rt.name,
             rt.secret ? " (secret required)" : "");
    pthread_t th;
    if (pthread_create(&th, NULL, loader, &rt) != 0) {
        log_error("cannot start the loader thread");
        httpd_stop(srv);
        return 1;
    }
    pthread_detach(th);
    int sig = 0;
    sigwait(&set, &sig);
    int failed = sig == SIGUSR1;
    if (!failed) log_info("signal %d: stopping", sig);
    atomic_store(&rt.stopping, 1);
    /* Ending the engine's requests first lets the connections waiting on them finish, so
     * httpd_stop does not wait for whole generations. */
    if (atomic_load(&rt.state) == RT_READY) eng_stop(rt.eng);
    httpd_stop(srv);
    if (!failed && atomic_load(&rt.state) == RT_LOADING) return 0; /* the loader still runs */
    eng_free(rt.eng);
    model_free(rt.model);
    chat_tpl_free(&rt.tpl);
    tok_free(rt.tok);
    if (rt.usage_fd >= 0) close(rt.usage_fd);
    return failed ? 1 : 0;
}
