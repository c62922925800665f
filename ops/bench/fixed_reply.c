/* fixed_reply: a stand-in runtime for benchmarks only. It answers POST /v1/chat/completions
 * with the same small OpenAI-shaped completion every time, so that a benchmark through the
 * gateway measures the gateway (auth, rate limit, routing, proxying) and nothing of the model.
 * Never used by tests or deployments: correctness tests use the real runtime.
 *
 *   orp-bench-upstream PORT [THREADS] */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "httpd.h"
#include "log.h"

static const char REPLY[] =
    "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1700000000,"
    "\"model\":\"bench\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
    "\"content\":\"Hello from the fixed-reply upstream.\"},\"finish_reason\":\"stop\","
    "\"logprobs\":null}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":8,"
    "\"total_tokens\":20}}";

static void h_chat(struct httpd_req *req)
{
    httpd_reply_raw(req, 200, "application/json", REPLY, sizeof REPLY - 1);
}

static volatile sig_atomic_t quit;
static void on_signal(int s)
{
    (void)s;
    quit = 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: orp-bench-upstream PORT [THREADS]\n");
        return 2;
    }
    log_init("bench-upstream", "warn");
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    static const struct httpd_route routes[] = {{"POST", "/v1/chat/completions", h_chat}};
    struct httpd_config hc = {.name = "bench-upstream",
                              .host = "127.0.0.1",
                              .port = atoi(argv[1]),
                              .threads = argc > 2 ? atoi(argv[2]) : 1,
                              .conn_limit = 10000,
                              .conn_timeout_s = 60,
                              .max_body = 1 << 20,
                              .routes = routes,
                              .nroutes = 1};
    char err[256];
    struct httpd_server *s = httpd_start(&hc, err, sizeof err);
    if (!s) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    while (!quit) pause();
    httpd_stop(s);
    return 0;
}
