/* test_server: starts the real `orp-runtime serve` on a free loopback port with a replica secret
 * and a usage journal, and checks the wire contract: /health, the secret, /v1/models,
 * non-streaming and streaming chat completions (the same greedy text both ways), the 4xx replies
 * to bad requests (each naming its param), /tokenize and /detokenize, a client that goes away
 * mid-stream (journaled as cancelled), the journal's lines, the deployment fingerprint (the
 * header on every reply, system_fingerprint derived from it, the weights digest recomputed here
 * from the file), logprobs in OpenAI's chat and legacy shapes (streaming and not), a clean exit
 * on SIGTERM, and `orp-runtime bench`'s output. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "httpc.h"
#include "rt_test.h"
#include "tokenizer.h"
#include "util.h"

#define SECRET "s3cret-for-tests"

static char dir[256], mdir[300], logpath[300], usage[300];
static int port;
static pid_t child;

/* A failed CHECK exits: the server must not outlive the test. */
static void kill_child(void)
{
    if (child > 0) kill(child, SIGKILL);
}

static void start_server(void)
{
    child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        FILE *f = freopen(logpath, "w", stderr);
        (void)f;
        setenv("ORP_REPLICA_SECRET", SECRET, 1);
        execl(ORP_RUNTIME_BIN, "orp-runtime", "serve", "--model", mdir, "--port", "0",
              "--usage-log", usage, "--name", "tiny", (char *)NULL);
        _exit(127);
    }
    /* The port is in the "listening on" log line. */
    for (int i = 0; i < 500 && !port; i++) {
        util_sleep_ms(10);
        char *log = util_read_file(logpath, NULL);
        const char *p = log ? strstr(log, "listening on 127.0.0.1:") : NULL;
        if (p) port = atoi(p + strlen("listening on 127.0.0.1:"));
        free(log);
    }
    CHECK(port > 0);
}

/* One request; returns the status, body into out (a new json or NULL when not JSON). */
static long call(const char *method, const char *path, const char *body, const char *extra_header,
                 int auth, struct buf *raw, json_t **out)
{
    char url[256], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    const char *headers[4] = {0};
    int h = 0;
    if (auth) headers[h++] = "Authorization: Bearer " SECRET;
    if (body) headers[h++] = "Content-Type: application/json";
    if (extra_header) headers[h++] = extra_header;
    struct httpc_resp r = {0};
    CHECK(httpc_request(method, url, headers, body, body ? strlen(body) : 0, 10000, 1 << 24, &r,
                        err, sizeof err) == 0);
    if (out) *out = r.body.data ? json_loads(r.body.data, 0, NULL) : NULL;
    if (raw) {
        raw->len = 0;
        buf_append(raw, r.body.data ? r.body.data : "", r.body.len);
    }
    buf_free(&r.body);
    return r.status;
}

static void wait_ready(void)
{
    for (int i = 0; i < 500; i++) {
        if (call("GET", "/health", NULL, NULL, 0, NULL, NULL) == 200) return;
        util_sleep_ms(10);
    }
    CHECK(!"the runtime never became ready");
}

/* The value at path ("choices.0.message.content"), borrowed, or NULL. */
static json_t *jpath(json_t *o, const char *path)
{
    char key[64];
    const char *p = path;
    while (*p && o) {
        size_t n = strcspn(p, ".");
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        o = json_is_array(o) ? json_array_get(o, (size_t)atoi(key)) : json_object_get(o, key);
        p += n + (p[n] == '.');
    }
    return o;
}

static const char *jstr(json_t *o, const char *path)
{
    return json_string_value(jpath(o, path));
}

static void test_basics(void)
{
    json_t *j;
    CHECK_INT_EQ(call("GET", "/health", NULL, NULL, 0, NULL, &j), 200);
    CHECK_STR_EQ(jstr(j, "status"), "ok");
    json_decref(j);
    CHECK_INT_EQ(call("GET", "/v1/models", NULL, NULL, 0, NULL, &j), 401);
    CHECK_STR_EQ(jstr(j, "error.code"), "invalid_api_key");
    json_decref(j);
    CHECK_INT_EQ(call("GET", "/v1/models", NULL, "Authorization: Bearer wrong", 0, NULL, &j), 401);
    json_decref(j);
    CHECK_INT_EQ(call("GET", "/v1/models", NULL, NULL, 1, NULL, &j), 200);
    CHECK_STR_EQ(jstr(j, "data.0.id"), "tiny");
    CHECK_STR_EQ(jstr(j, "object"), "list");
    json_decref(j);
}

#define CHAT                                                                                       \
    "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}],"               \
    "\"max_tokens\":12,\"temperature\":0%s}"

/* Streams a chat completion; returns the concatenated content; checks the SSE framing. */
static char *stream_text(int *completion_tokens)
{
    char body[512];
    snprintf(body, sizeof body, CHAT,
             ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    struct buf raw = {0}, text = {0};
    CHECK_INT_EQ(
        call("POST", "/v1/chat/completions", body, "X-ORP-Request-Id: test-stream", 1, &raw, NULL),
        200);
    int events = 0, role = 0, finish = 0, usage_seen = 0, done = 0;
    for (char *line = strtok(raw.data, "\n"); line; line = strtok(NULL, "\n")) {
        CHECK(strncmp(line, "data: ", 6) == 0);
        CHECK(!done); /* nothing after [DONE] */
        if (strcmp(line + 6, "[DONE]") == 0) {
            done = 1;
            continue;
        }
        json_t *c = json_loads(line + 6, 0, NULL);
        CHECK(c != NULL);
        CHECK_STR_EQ(jstr(c, "object"), "chat.completion.chunk");
        CHECK_STR_EQ(jstr(c, "id"), "chatcmpl-test-stream");
        json_t *choices = json_object_get(c, "choices");
        if (json_array_size(choices) == 0) {
            usage_seen = 1;
            *completion_tokens = (int)json_integer_value(
                json_object_get(json_object_get(c, "usage"), "completion_tokens"));
        } else {
            if (jstr(c, "choices.0.delta.role")) role++;
            const char *t = jstr(c, "choices.0.delta.content");
            if (t) buf_append(&text, t, strlen(t));
            if (jstr(c, "choices.0.finish_reason")) finish++;
        }
        events++;
        json_decref(c);
    }
    CHECK(done && role == 1 && finish == 1 && usage_seen && events >= 4);
    buf_free(&raw);
    if (!text.data) buf_append(&text, "", 0);
    return text.data;
}

static void test_chat(void)
{
    char body[512];
    snprintf(body, sizeof body, CHAT, "");
    json_t *j;
    CHECK_INT_EQ(
        call("POST", "/v1/chat/completions", body, "X-ORP-Request-Id: test-1", 1, NULL, &j), 200);
    CHECK_STR_EQ(jstr(j, "id"), "chatcmpl-test-1");
    CHECK_STR_EQ(jstr(j, "object"), "chat.completion");
    CHECK_STR_EQ(jstr(j, "model"), "tiny");
    CHECK_STR_EQ(jstr(j, "choices.0.message.role"), "assistant");
    const char *fin = jstr(j, "choices.0.finish_reason");
    CHECK(fin && (!strcmp(fin, "length") || !strcmp(fin, "stop")));
    json_t *u = json_object_get(j, "usage");
    int completion = (int)json_integer_value(json_object_get(u, "completion_tokens"));
    CHECK(completion >= 1 && completion <= 12);
    CHECK_INT_EQ(json_integer_value(json_object_get(u, "total_tokens")),
                 json_integer_value(json_object_get(u, "prompt_tokens")) + completion);
    int streamed_tokens = 0;
    char *streamed = stream_text(&streamed_tokens);
    CHECK_STR_EQ(streamed, jstr(j, "choices.0.message.content")); /* greedy: the same text */
    CHECK_INT_EQ(streamed_tokens, completion);
    /* top_k 1 samples the most likely token whatever the temperature and seed: greedy's text. */
    json_t *k1;
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}],\"max_tokens\":12,"
             "\"temperature\":1,\"top_k\":1,\"seed\":5,\"top_p\":0.5}");
    CHECK_INT_EQ(call("POST", "/v1/chat/completions", body, NULL, 1, NULL, &k1), 200);
    CHECK_STR_EQ(jstr(k1, "choices.0.message.content"), jstr(j, "choices.0.message.content"));
    json_decref(k1);
    /* Penalties are accepted (their effect is test_sampler's). */
    snprintf(body, sizeof body, CHAT, ",\"presence_penalty\":1.5,\"frequency_penalty\":-0.5");
    CHECK_INT_EQ(call("POST", "/v1/chat/completions", body, NULL, 1, NULL, NULL), 200);
    free(streamed);
    json_decref(j);
}

struct bad {
    const char *body;
    long status;
    const char *param; /* NULL: JSON null */
    const char *code;
};

static void test_bad_requests(void)
{
    static const struct bad cases[] = {
        {"{\"messages\": [", 400, NULL, "invalid_json"},
        {"[]", 400, NULL, "invalid_json"},
        {"{\"model\":\"tiny\"}", 400, "messages", "invalid_value"},
        {"{\"messages\":[]}", 400, "messages", "invalid_value"},
        {"{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400, "messages[0].role", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", 400, "n", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":3}", 400,
         "temperature", "invalid_value"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":0}", 400, "top_p", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\","
         "\"e\"]}",
         400, "stop", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[]}", 400, "tools",
         "unsupported_parameter"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":"
         "\"json_object\"}}",
         400, "response_format", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{"
         "\"include_usage\":true}}",
         400, "stream_options", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"presence_penalty\":2.5}", 400,
         "presence_penalty", "invalid_value"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"frequency_penalty\":\"a\"}", 400,
         "frequency_penalty", "invalid_value"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":-2}", 400, "top_k",
         "invalid_value"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":1.5}", 400, "top_k",
         "invalid_value"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":5000}", 400,
         "max_tokens", "context_length_exceeded"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", 400,
         "max_tokens", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"foo\":1}", 400, "foo",
         "unknown_parameter"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":\"other\"}", 404, "model",
         "model_not_found"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j;
        long st = call("POST", "/v1/chat/completions", cases[i].body, NULL, 1, NULL, &j);
        if (st != cases[i].status) fprintf(stderr, "case %zu: %s\n", i, cases[i].body);
        CHECK_INT_EQ(st, cases[i].status);
        json_t *e = json_object_get(j, "error");
        CHECK(json_is_string(json_object_get(e, "message")));
        CHECK(json_is_string(json_object_get(e, "type")));
        if (cases[i].param)
            CHECK_STR_EQ(json_string_value(json_object_get(e, "param")), cases[i].param);
        else
            CHECK(json_is_null(json_object_get(e, "param")));
        if (cases[i].code)
            CHECK_STR_EQ(json_string_value(json_object_get(e, "code")), cases[i].code);
        json_decref(j);
    }
    char body[512];
    snprintf(body, sizeof body, CHAT, "");
    CHECK_INT_EQ(
        call("POST", "/v1/chat/completions", body, "X-ORP-Request-Id: bad id!", 1, NULL, NULL),
        400);
    CHECK_INT_EQ(call("GET", "/v1/chat/completions", NULL, NULL, 1, NULL, NULL), 405);
    CHECK_INT_EQ(call("POST", "/v1/chat/completions", body, NULL, 0, NULL, NULL), 401);
}

static void test_tokenize(void)
{
    json_t *j;
    CHECK_INT_EQ(call("POST", "/tokenize", "{\"prompt\":\"Hello there\"}", NULL, 1, NULL, &j), 200);
    json_t *toks = json_object_get(j, "tokens");
    CHECK(json_array_size(toks) >= 2);
    CHECK_INT_EQ(json_integer_value(json_object_get(j, "count")), json_array_size(toks));
    CHECK_INT_EQ(json_integer_value(json_object_get(j, "max_model_len")), 1024);
    CHECK_INT_EQ(json_integer_value(json_array_get(toks, 0)), 556); /* <|begin_of_text|> */
    json_array_remove(toks, 0);
    json_t *req = json_pack("{s:O}", "tokens", toks);
    char *body = json_dumps(req, 0);
    json_t *d;
    CHECK_INT_EQ(call("POST", "/detokenize", body, NULL, 1, NULL, &d), 200);
    CHECK_STR_EQ(jstr(d, "prompt"), "Hello there");
    free(body);
    json_decref(req);
    json_decref(d);
    json_decref(j);
    CHECK_INT_EQ(call("POST", "/detokenize", "{\"tokens\":[99999]}", NULL, 1, NULL, NULL), 400);
    CHECK_INT_EQ(call("POST", "/tokenize", "{\"prompt\":\"x\",\"bogus\":1}", NULL, 1, NULL, NULL),
                 400);
    CHECK_INT_EQ(call("POST", "/tokenize",
                      "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", NULL, 1, NULL, &j),
                 200);
    CHECK(json_integer_value(json_object_get(j, "count")) > 5);
    json_decref(j);
}

/* Sends a streaming request without a token limit over a raw socket, reads the first bytes, and
 * hangs up: the runtime must notice, drop the request from its batch and journal it as
 * cancelled. */
static void test_cancel(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    /* ignore_eos: the generation runs to the end of the context, far longer than it takes to
     * notice the hang-up (the scheduler runs at most ~1 KiB of text ahead of the stream). */
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}],"
                       "\"stream\":true,\"temperature\":1,\"seed\":4,\"ignore_eos\":true}";
    char req[1024], resp[512];
    snprintf(req, sizeof req,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " SECRET
             "\r\nX-ORP-Request-Id: test-cancel\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    CHECK(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    CHECK(read(fd, resp, sizeof resp) > 0);
    close(fd);
}

/* Waits for the journal to hold a line for rid and returns it parsed. */
static json_t *journal_line(const char *rid)
{
    char needle[96];
    snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", rid);
    for (int i = 0; i < 500; i++) {
        char *all = util_read_file(usage, NULL);
        char *p = all ? strstr(all, needle) : NULL;
        if (p) {
            while (p > all && p[-1] != '\n')
                p--;
            json_t *j = json_loadb(p, strcspn(p, "\n"), 0, NULL);
            free(all);
            CHECK(j != NULL);
            return j;
        }
        free(all);
        util_sleep_ms(10);
    }
    fprintf(stderr, "no journal line for %s\n", rid);
    exit(1);
}

/* A request that produced a token has a first-token time, after its start and before its end,
 * and both are numbers of milliseconds (with microsecond digits). */
static void check_times(json_t *j)
{
    json_t *ttft = json_object_get(j, "ttft_ms"), *dur = json_object_get(j, "duration_ms");
    CHECK(json_is_number(ttft) && json_is_number(dur));
    double t = json_number_value(ttft), d = json_number_value(dur);
    if (!(t > 0 && t <= d && d < 600000)) fprintf(stderr, "ttft_ms %g, duration_ms %g\n", t, d);
    CHECK(t > 0 && t <= d && d < 600000);
}

static void test_journal(void)
{
    json_t *j = journal_line("test-1");
    CHECK(json_integer_value(json_object_get(j, "prompt_tokens")) > 5);
    CHECK(json_integer_value(json_object_get(j, "completion_tokens")) >= 1);
    CHECK(json_integer_value(json_object_get(j, "at_ms")) > 1600000000000);
    const char *f = jstr(j, "finish_reason");
    CHECK(f && (!strcmp(f, "length") || !strcmp(f, "stop")));
    check_times(j);
    json_decref(j);
    j = journal_line("test-stream");
    check_times(j);
    json_decref(j);
    j = journal_line("test-cancel");
    CHECK_STR_EQ(jstr(j, "finish_reason"), "cancelled");
    check_times(j); /* it streamed tokens before the hang-up */
    json_decref(j);
    /* Every line is one JSON object; bad requests left no line (test_chat's two sampling
     * requests did). */
    char *all = util_read_file(usage, NULL);
    int lines = 0;
    for (char *p = all; *p; p++)
        lines += *p == '\n';
    CHECK_INT_EQ(lines, 5);
    free(all);
}

/* One chat logprobs entry: a token, its logprob, its bytes (which spell the token when it is valid
 * UTF-8 on its own) and ntop alternatives, most likely first; greedy, the first alternative is the
 * token itself. Appends the token's bytes to text. */
static void check_chat_entry(json_t *e, int ntop, struct buf *text)
{
    const char *tok = json_string_value(json_object_get(e, "token"));
    CHECK(tok != NULL);
    double lp = json_number_value(json_object_get(e, "logprob"));
    CHECK(lp <= 0);
    json_t *bytes = json_object_get(e, "bytes");
    char raw[64];
    size_t n = json_array_size(bytes);
    CHECK(n > 0 && n < sizeof raw);
    for (size_t i = 0; i < n; i++)
        raw[i] = (char)json_integer_value(json_array_get(bytes, i));
    raw[n] = 0;
    if (!strstr(tok, "\xef\xbf\xbd")) CHECK_STR_EQ(tok, raw); /* else part of a character */
    json_t *top = json_object_get(e, "top_logprobs");
    CHECK_INT_EQ((int)json_array_size(top), ntop);
    double prev = 1;
    for (int i = 0; i < ntop; i++) {
        double x = json_number_value(json_object_get(json_array_get(top, i), "logprob"));
        CHECK(x <= prev);
        prev = x;
    }
    CHECK_STR_EQ(json_string_value(json_object_get(json_array_get(top, 0), "token")), tok);
    CHECK(json_number_value(json_object_get(json_array_get(top, 0), "logprob")) == lp);
    buf_append(text, raw, n);
}

#define LP_CHAT                                                                                    \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}],\"max_tokens\":6,"                 \
    "\"temperature\":0,\"ignore_eos\":true,\"logprobs\":true,\"top_logprobs\":3%s}"

/* Checks that the bytes of the entries, made valid UTF-8 as the runtime makes its text, are the
 * reply's text. */
static void check_bytes_spell(const struct buf *bytes, const char *text)
{
    struct tok_utf8 u = {0};
    struct buf out = {0};
    CHECK(buf_append(&out, "", 0) == 0);
    CHECK(tok_utf8_feed(&u, bytes->data, bytes->len, &out) == 0 && tok_utf8_flush(&u, &out) == 0);
    CHECK_STR_EQ(out.data, text);
    buf_free(&out);
}

/* logprobs in OpenAI's shapes: chat (non-streaming and streaming) and the legacy API; the values
 * themselves are checked against a log-softmax in test_rt_model. */
static void test_logprobs(void)
{
    json_t *j;
    struct buf raw = {0}, toks = {0};
    char body[512];
    snprintf(body, sizeof body, LP_CHAT, "");
    CHECK_INT_EQ(call("POST", "/v1/chat/completions", body, NULL, 1, NULL, &j), 200);
    json_t *content = jpath(j, "choices.0.logprobs.content");
    CHECK_INT_EQ((int)json_array_size(content), 6);
    buf_append(&toks, "", 0);
    for (size_t i = 0; i < 6; i++)
        check_chat_entry(json_array_get(content, i), 3, &toks);
    check_bytes_spell(&toks, jstr(j, "choices.0.message.content"));
    char *whole = strdup(jstr(j, "choices.0.message.content"));
    json_decref(j);

    /* Streaming: the chunks' entries, in order, are the same tokens. */
    snprintf(body, sizeof body, LP_CHAT, ",\"stream\":true");
    CHECK_INT_EQ(call("POST", "/v1/chat/completions", body, NULL, 1, &raw, NULL), 200);
    toks.len = 0;
    buf_append(&toks, "", 0);
    int entries = 0;
    for (char *line = strtok(raw.data, "\n"); line; line = strtok(NULL, "\n")) {
        if (strcmp(line, "data: [DONE]") == 0) continue;
        json_t *c = json_loads(line + 6, 0, NULL);
        CHECK(c != NULL);
        json_t *lp = json_object_get(json_array_get(json_object_get(c, "choices"), 0), "logprobs");
        json_t *cc = json_object_get(lp, "content");
        for (size_t i = 0; i < json_array_size(cc); i++, entries++)
            check_chat_entry(json_array_get(cc, i), 3, &toks);
        json_decref(c);
    }
    CHECK_INT_EQ(entries, 6);
    check_bytes_spell(&toks, whole);
    free(whole);

    /* The legacy shape: tokens, token_logprobs, top_logprobs as {token: logprob}, text_offset. */
    CHECK_INT_EQ(call("POST", "/v1/completions",
                      "{\"prompt\":\"Hello\",\"max_tokens\":5,\"temperature\":0,"
                      "\"ignore_eos\":true,\"logprobs\":2}",
                      NULL, 1, NULL, &j),
                 200);
    json_t *lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    json_t *tk = json_object_get(lp, "tokens"), *tl = json_object_get(lp, "token_logprobs"),
           *tt = json_object_get(lp, "top_logprobs"), *to = json_object_get(lp, "text_offset");
    CHECK_INT_EQ((int)json_array_size(tk), 5);
    CHECK_INT_EQ((int)json_array_size(tl), 5);
    CHECK_INT_EQ((int)json_array_size(tt), 5);
    CHECK_INT_EQ((int)json_array_size(to), 5);
    toks.len = 0;
    buf_append(&toks, "", 0);
    for (size_t i = 0; i < 5; i++) {
        const char *t = json_string_value(json_array_get(tk, i));
        CHECK_INT_EQ((int)json_integer_value(json_array_get(to, i)), (int)toks.len);
        buf_append(&toks, t, strlen(t));
        json_t *alts = json_array_get(tt, i);
        CHECK(json_object_size(alts) >= 1 && json_object_size(alts) <= 2);
        /* greedy: the token is its own most likely alternative */
        CHECK(json_number_value(json_object_get(alts, t)) ==
              json_number_value(json_array_get(tl, i)));
    }
    CHECK(toks.len >= strlen(jstr(j, "choices.0.text"))); /* special tokens show, not in text */
    json_decref(j);

    /* Bad values name their parameter. */
    static const struct {
        const char *path, *body, *param;
    } bad[] = {
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}",
         "top_logprobs"},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":"
         "21}",
         "top_logprobs"},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":1}", "logprobs"},
        {"/v1/completions", "{\"prompt\":\"x\",\"logprobs\":-1}", "logprobs"},
        {"/v1/completions", "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_INT_EQ(call("POST", bad[i].path, bad[i].body, NULL, 1, NULL, &j), 400);
        CHECK_STR_EQ(jstr(j, "error.param"), bad[i].param);
        json_decref(j);
    }
    buf_free(&raw);
    buf_free(&toks);
}

/* libcurl's header callback: keeps the OpenRunPod-Fingerprint value (without CRLF). */
static size_t fp_header(char *line, size_t size, size_t n, void *arg)
{
    static const char name[] = "OpenRunPod-Fingerprint: ";
    size_t len = size * n;
    if (len > strlen(name) && strncasecmp(line, name, strlen(name)) == 0) {
        struct buf *b = arg;
        b->len = 0;
        size_t v = len - strlen(name);
        while (v && (line[strlen(name) + v - 1] == '\r' || line[strlen(name) + v - 1] == '\n'))
            v--;
        buf_append(b, line + strlen(name), v);
    }
    return len;
}

static size_t write_body(char *data, size_t size, size_t n, void *arg)
{
    return buf_append(arg, data, size * n) == 0 ? size * n : 0;
}

/* The fingerprint header of one request (a new string), and its body into body. */
static char *fingerprint_of(const char *path, const char *post, struct buf *body)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *c = curl_easy_init();
    CHECK(c != NULL);
    struct curl_slist *h = curl_slist_append(NULL, "Authorization: Bearer " SECRET);
    struct buf fp = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, fp_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &fp);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    if (post) curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
    CHECK(curl_easy_perform(c) == CURLE_OK);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    buf_append(&fp, "", 0);
    return fp.data ? fp.data : strdup("");
}

static void test_fingerprint(void)
{
    /* The weights digest, computed here: sha256 of "model.safetensors <sha256 of the file>\n". */
    char path[400], file_hex[65], weights[65], want[256];
    snprintf(path, sizeof path, "%s/model.safetensors", mdir);
    size_t n;
    char *data = util_read_file(path, &n);
    CHECK(data != NULL);
    util_sha256_hex(data, n, file_hex);
    free(data);
    char line[100];
    snprintf(line, sizeof line, "model.safetensors %s\n", file_hex);
    util_sha256_hex(line, strlen(line), weights);
    snprintf(want, sizeof want,
             "weights=sha256:%.16s; dtype=bf16; tp=1; backend=cpu; version=0.3.0", weights);
    char sys_hex[65], sys[32];
    util_sha256_hex(want, strlen(want), sys_hex);
    snprintf(sys, sizeof sys, "fp_%.12s", sys_hex);

    struct buf body = {0};
    char *fp = fingerprint_of("/v1/chat/completions",
                              "{\"messages\":[{\"role\":\"user\","
                              "\"content\":\"Hi\"}],\"max_tokens\":2}",
                              &body);
    CHECK_STR_EQ(fp, want);
    json_t *j = json_loadb(body.data, body.len, 0, NULL);
    if (!jstr(j, "system_fingerprint")) fprintf(stderr, "reply: %.*s\n", (int)body.len, body.data);
    CHECK_STR_EQ(jstr(j, "system_fingerprint"), sys);
    json_decref(j);
    free(fp);
    /* Streamed chunks carry it too. */
    body.len = 0;
    fp = fingerprint_of("/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":2,\"stream\":true}",
                        &body);
    CHECK_STR_EQ(fp, want);
    buf_append(&body, "", 0);
    char key[64];
    snprintf(key, sizeof key, "\"system_fingerprint\":\"%s\"", sys);
    CHECK_CONTAINS(body.data, key);
    free(fp);
    /* And so do every other reply: /health, /v1/models, an error. */
    const char *paths[] = {"/health", "/v1/models", "/v1/chat/completions"};
    for (int i = 0; i < 3; i++) {
        body.len = 0;
        fp = fingerprint_of(paths[i], i == 2 ? "{\"messages\":[]}" : NULL, &body);
        CHECK_STR_EQ(fp, want);
        free(fp);
    }
    buf_free(&body);
}

/* `orp-runtime bench` on the same checkpoint: a header line and one line per batch size, with
 * positive speeds; a bad option is exit status 2. */
static void test_bench(void)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s bench --model %s --batches 1,3 --prompt 5 --decode 2 --threads 2 --json",
             ORP_RUNTIME_BIN, mdir);
    FILE *f = popen(cmd, "r");
    CHECK(f != NULL);
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        CHECK(j != NULL);
        if (n == 0) {
            CHECK(json_number_value(json_object_get(j, "weight_bytes")) > 0);
            CHECK(json_number_value(json_object_get(j, "copy_bytes_per_s")) > 0);
        } else {
            CHECK_INT_EQ((int)json_integer_value(json_object_get(j, "batch")), n == 1 ? 1 : 3);
            CHECK(json_number_value(json_object_get(j, "prefill_tokens_per_s")) > 0);
            CHECK(json_number_value(json_object_get(j, "decode_tokens_per_s")) > 0);
            CHECK(json_number_value(json_object_get(j, "decode_roofline_tokens_per_s")) > 0);
        }
        json_decref(j);
        n++;
    }
    CHECK_INT_EQ(pclose(f), 0);
    CHECK_INT_EQ(n, 3);
    snprintf(cmd, sizeof cmd, "%s bench --model %s --batches 0 2>/dev/null", ORP_RUNTIME_BIN, mdir);
    int st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    atexit(kill_child);
    rt_tmpdir(dir, sizeof dir);
    snprintf(mdir, sizeof mdir, "%s/model", dir);
    snprintf(logpath, sizeof logpath, "%s/runtime.log", dir);
    snprintf(usage, sizeof usage, "%s/usage.jsonl", dir);
    rt_make_model(mdir, ST_BF16);
    start_server();
    wait_ready();
    test_basics();
    test_chat();
    test_bad_requests();
    test_tokenize();
    test_cancel();
    test_journal();
    test_fingerprint();
    test_logprobs();
    test_bench();
    CHECK(kill(child, SIGTERM) == 0);
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child);
    child = 0;
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    rt_rmtree(dir);
    curl_global_cleanup();
    printf("test_server: ok\n");
    return 0;
}
