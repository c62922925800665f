/* Unit tests of common/: hashing and randomness, the JSON input getters and error shape, the
 * configuration table, and httpd + httpc talking to each other over loopback (routing, 404, 405,
 * 413, the error funnel, the JSON depth cap, the per-address connection limit, with the
 * listener's own threads and with external loops). */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cfg.h"
#include "check.h"
#include "httpc.h"
#include "httpd.h"
#include "jsonx.h"
#include "labels.h"
#include "log.h"
#include "util.h"

static void test_util(void)
{
    char h[65];
    util_sha256_hex("abc", 3, h);
    CHECK_STR_EQ(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    char a[33], b[33];
    CHECK(util_random_hex(a, 16) == 0 && util_random_hex(b, 16) == 0);
    CHECK_INT_EQ(strlen(a), 32);
    CHECK(strcmp(a, b) != 0);
    char small[6];
    CHECK_INT_EQ(util_strlcpy(small, "abc", sizeof small), 3);
    CHECK_STR_EQ(small, "abc");
    CHECK_INT_EQ(util_strlcpy(small, "abcdefgh", sizeof small), 5); /* truncated */
    CHECK_STR_EQ(small, "abcde");
    CHECK_INT_EQ(util_strlcpy(small, "", sizeof small), 0);
    CHECK_STR_EQ(small, "");
    /* Spares: what comes back is zeroed, kept or new; past max they are freed. */
    static struct util_spares sp = UTIL_SPARES_INIT(2);
    unsigned char *o[3];
    for (int i = 0; i < 3; i++) {
        o[i] = util_spare_take(&sp, 4096);
        CHECK(o[i] != NULL);
        memset(o[i], 0xab, 4096);
    }
    for (int i = 0; i < 3; i++)
        util_spare_give(&sp, o[i]);
    CHECK(util_spare_count(&sp) <= 2);
    for (int i = 0; i < 3; i++) {
        o[i] = util_spare_take(&sp, 4096);
        for (int k = 0; k < 4096; k++)
            CHECK(o[i][k] == 0);
    }
    CHECK_INT_EQ(util_spare_count(&sp), 0);
    for (int i = 0; i < 3; i++)
        free(o[i]);
    char num[24];
    const int64_t nums[] = {0, 7, -1, 1234567890123LL, INT64_MAX, INT64_MIN};
    const char *texts[] = {
        "0", "7", "-1", "1234567890123", "9223372036854775807", "-9223372036854775808"};
    for (int i = 0; i < 6; i++) {
        CHECK_INT_EQ(util_i64toa(num, nums[i]), strlen(texts[i]));
        CHECK_STR_EQ(num, texts[i]);
    }
    /* A forked child never hands out the bytes its parent hands out next (util.c keeps a
     * per-thread buffer of random bytes, which the child must not reuse). */
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char c[33] = "";
        ssize_t w = util_random_hex(c, 16) == 0 ? write(pfd[1], c, 32) : -1;
        _exit(w == 32 ? 0 : 1);
    }
    char from_child[33] = "";
    CHECK(util_random_hex(b, 16) == 0);
    CHECK_INT_EQ(read(pfd[0], from_child, 32), 32);
    CHECK(strcmp(from_child, b) != 0);
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(pfd[0]);
    close(pfd[1]);
    CHECK(util_ct_streq("secret", "secret"));
    CHECK(!util_ct_streq("secret", "secreT"));
    CHECK(!util_ct_streq("secret", "secret2"));
    struct buf bb = {0};
    for (int i = 0; i < 1000; i++)
        buf_printf(&bb, "%04d", i);
    CHECK_INT_EQ(bb.len, 4000);
    CHECK(!strncmp(bb.data + 3996, "0999", 4));
    buf_free(&bb);
}

static void test_jsonx(void)
{
    struct jsonx_err e = {0};
    CHECK(jsonx_parse_object("[1]", 3, &e) == NULL);
    CHECK(strstr(e.message, "JSON object"));
    CHECK(jsonx_parse_object("{\"a\":", 5, &e) == NULL);
    CHECK(strstr(e.message, "not valid JSON"));
    CHECK(jsonx_parse_object("{\"a\":1,\"a\":2}", 13, &e) == NULL); /* duplicate keys */
    const char *doc = "{\"s\":\"x\",\"i\":5,\"f\":1.5,\"b\":true,\"n\":null}";
    json_t *o = jsonx_parse_object(doc, strlen(doc), &e);
    CHECK(o);
    const char *s;
    int64_t i;
    double d;
    int bo;
    CHECK_INT_EQ(jsonx_get_string(o, "s", 1, &s, 10, &e), JSONX_OK);
    CHECK_STR_EQ(s, "x");
    CHECK_INT_EQ(jsonx_get_string(o, "i", 1, &s, 10, &e), JSONX_BAD);
    CHECK_STR_EQ(e.param, "i");
    CHECK_INT_EQ(jsonx_get_string(o, "zz", 1, &s, 10, &e), JSONX_MISSING);
    CHECK(strstr(e.message, "missing required field 'zz'"));
    CHECK_INT_EQ(jsonx_get_string(o, "n", 0, &s, 10, &e), JSONX_MISSING);
    CHECK_INT_EQ(jsonx_get_int(o, "i", 1, 0, 10, &i, &e), JSONX_OK);
    CHECK_INT_EQ(i, 5);
    CHECK_INT_EQ(jsonx_get_int(o, "i", 1, 6, 10, &i, &e), JSONX_BAD);
    CHECK(strstr(e.message, "out of range"));
    CHECK_INT_EQ(jsonx_get_int(o, "f", 1, 0, 10, &i, &e), JSONX_BAD);
    CHECK_INT_EQ(jsonx_get_number(o, "f", 1, 0, 2, &d, &e), JSONX_OK);
    CHECK_NEAR(d, 1.5, 0);
    CHECK_INT_EQ(jsonx_get_number(o, "i", 1, 0, 2, &d, &e), JSONX_BAD);
    CHECK_INT_EQ(jsonx_get_bool(o, "b", 1, &bo, &e), JSONX_OK);
    CHECK(bo);
    CHECK_INT_EQ(jsonx_get_bool(o, "s", 1, &bo, &e), JSONX_BAD);
    json_decref(o);

    json_t *err = jsonx_error_body("bad", "invalid_request_error", "p", NULL);
    char *txt = jsonx_dump(err);
    CHECK_STR_EQ(txt, "{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\","
                      "\"param\":\"p\",\"code\":null}}");
    free(txt);
    json_decref(err);
}

struct tcfg {
    const char *name;
    int64_t n;
    int flag;
};

static void test_cfg(void)
{
    static const struct cfg_opt opts[] = {
        {"name", CFG_STRING, "dflt", "a name", offsetof(struct tcfg, name)},
        {"count-max", CFG_INT, "3", "a number", offsetof(struct tcfg, n)},
        {"flag", CFG_BOOL, "false", "a flag", offsetof(struct tcfg, flag)},
    };
    struct tcfg c;
    char err[256];
    char *argv0[] = {"prog"};
    CHECK_INT_EQ(cfg_parse(opts, 3, &c, "ORPTEST", 1, argv0, 1, err, sizeof err), 0);
    CHECK_STR_EQ(c.name, "dflt");
    CHECK_INT_EQ(c.n, 3);
    CHECK_INT_EQ(c.flag, 0);
    setenv("ORPTEST_COUNT_MAX", "7", 1);
    char *argv1[] = {"prog", "--name", "cli", "--flag"};
    CHECK_INT_EQ(cfg_parse(opts, 3, &c, "ORPTEST", 4, argv1, 1, err, sizeof err), 0);
    CHECK_STR_EQ(c.name, "cli");
    CHECK_INT_EQ(c.n, 7); /* from the environment */
    CHECK_INT_EQ(c.flag, 1);
    char *argv2[] = {"prog", "--count-max=9"};
    CHECK_INT_EQ(cfg_parse(opts, 3, &c, "ORPTEST", 2, argv2, 1, err, sizeof err), 0);
    CHECK_INT_EQ(c.n, 9); /* command line beats environment */
    char *argv3[] = {"prog", "--count-max", "x"};
    CHECK_INT_EQ(cfg_parse(opts, 3, &c, "ORPTEST", 3, argv3, 1, err, sizeof err), -1);
    CHECK(strstr(err, "not an integer"));
    char *argv4[] = {"prog", "--nope"};
    CHECK_INT_EQ(cfg_parse(opts, 3, &c, "ORPTEST", 2, argv4, 1, err, sizeof err), -1);
    CHECK(strstr(err, "unknown option"));
    char *argv5[] = {"prog", "--name"};
    CHECK_INT_EQ(cfg_parse(opts, 3, &c, "ORPTEST", 2, argv5, 1, err, sizeof err), -1);
    char *argv6[] = {"prog", "--help"};
    CHECK_INT_EQ(cfg_parse(opts, 3, &c, "ORPTEST", 2, argv6, 1, err, sizeof err), 1);
    unsetenv("ORPTEST_COUNT_MAX");
}

static void h_echo(struct httpd_req *req)
{
    httpd_reply_json(req, 200,
                     json_pack("{s:s, s:s, s:i}", "id", req->params[0], "method", req->method,
                               "len", (int)req->body.len));
}

static void h_fail(struct httpd_req *req)
{
    httpd_error(req, 409, "name_taken", "name", "name %s is taken", "x");
}

static void h_parse(struct httpd_req *req)
{
    json_t *body = httpd_body_object(req);
    if (!body) return;
    json_decref(body);
    httpd_reply_json(req, 200, json_pack("{s:b}", "ok", 1));
}

static void test_json_depth(void)
{
    /* Brackets inside strings, escaped quotes and backslashes do not count. */
    const char *flat = "{\"a\":\"[[[[\\\"{{{{\",\"b\":\"\\\\\",\"c\":[1]}";
    CHECK(!httpd_json_too_deep(flat, strlen(flat), 2));
    CHECK(httpd_json_too_deep("[[[1]]]", 7, 2));
    {
        const char *wide = "[[1],[2],{\"x\":[3]}]";
        CHECK(!httpd_json_too_deep(wide, strlen(wide), 3)); /* siblings do not add up */
        CHECK(httpd_json_too_deep(wide, strlen(wide), 2));
    }
    CHECK(!httpd_json_too_deep("]]]][[", 6, 2));

    static const struct httpd_route routes[] = {{"POST", "/parse", h_parse}};
    struct httpd_config hc = {.name = "test",
                              .host = "127.0.0.1",
                              .threads = 1,
                              .max_body = 1 << 16,
                              .routes = routes,
                              .nroutes = 1};
    char err[256], url[128];
    struct httpd_server *s = httpd_start(&hc, err, sizeof err);
    CHECK(s);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/parse", httpd_port(s));
    struct buf b = {0};
    struct httpc_resp r;
    /* {"a":[[...]]} with HTTPD_JSON_MAX_DEPTH levels in all: accepted; one more: refused. */
    for (int extra = 0; extra <= 1; extra++) {
        b.len = 0;
        buf_printf(&b, "{\"a\":");
        for (int i = 0; i < HTTPD_JSON_MAX_DEPTH - 1 + extra; i++)
            buf_printf(&b, "[");
        for (int i = 0; i < HTTPD_JSON_MAX_DEPTH - 1 + extra; i++)
            buf_printf(&b, "]");
        buf_printf(&b, "}");
        CHECK(httpc_request("POST", url, NULL, b.data, b.len, 5000, 1 << 20, &r, err, sizeof err) ==
              0);
        CHECK_INT_EQ(r.status, extra ? 400 : 200);
        if (extra) {
            CHECK(strstr(r.body.data, "\"code\":\"invalid_json\""));
            CHECK(strstr(r.body.data, "deeper than 32 levels"));
        }
        buf_free(&r.body);
    }
    /* A deep string is just a string. */
    b.len = 0;
    buf_printf(&b, "{\"a\":\"");
    for (int i = 0; i < 1000; i++)
        buf_printf(&b, "[{");
    buf_printf(&b, "\"}");
    CHECK(httpc_request("POST", url, NULL, b.data, b.len, 5000, 1 << 20, &r, err, sizeof err) == 0);
    CHECK_INT_EQ(r.status, 200);
    buf_free(&r.body);
    buf_free(&b);
    httpd_stop(s);
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    return fd;
}

/* Sends one request on fd; the status of the reply, or 0 when the server closed the connection
 * without answering. */
static int request_on(int fd)
{
    static const char get[] = "GET /things/x/fail HTTP/1.1\r\nHost: t\r\n\r\n";
    if (send(fd, get, sizeof get - 1, MSG_NOSIGNAL) < 0) return 0;
    struct pollfd pfd = {fd, POLLIN, 0};
    char buf[512];
    if (poll(&pfd, 1, 5000) != 1) return -1;
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    buf[n] = '\0';
    int status = 0;
    return sscanf(buf, "HTTP/1.1 %d", &status) == 1 ? status : -1;
}

/* A loop of the application's driving one daemon of an external-loops listener (httpd.h): its
 * fd, or at the latest the time httpd_loop_run asked for (20 ms at most: this loop has nothing
 * else to wake it). */
struct test_loop {
    struct httpd_server *s;
    int i;
    volatile int quit;
    int runs;
    pthread_t th;
};

static void *test_loop_main(void *arg)
{
    struct test_loop *t = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    CHECK(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, httpd_loop_fd(t->s, t->i), &ev) == 0);
    int64_t next = 0;
    while (!t->quit) {
        struct epoll_event got;
        epoll_wait(ep, &got, 1, next < 0 || next > 20 ? 20 : (int)next);
        next = httpd_loop_run(t->s, t->i);
        t->runs++;
    }
    close(ep);
    return NULL;
}

/* The per-address limit, on a listener with threads of its own (MHD counts) and on one driven by
 * two external loops (the listener counts, over both daemons). */
static void test_per_ip_limit(int external)
{
    enum { LIMIT = 3 };
    static const struct httpd_route routes[] = {{"GET", "/things/{}/fail", h_fail}};
    struct httpd_config hc = {.name = "test",
                              .host = "127.0.0.1",
                              .threads = 2,
                              .per_ip_limit = LIMIT,
                              .max_body = 64,
                              .routes = routes,
                              .nroutes = 1,
                              .external_loops = external};
    char err[256];
    struct httpd_server *s = httpd_start(&hc, err, sizeof err);
    CHECK(s);
    struct test_loop loops[2] = {{s, 0, 0, 0, 0}, {s, 1, 0, 0, 0}};
    CHECK_INT_EQ(httpd_loops(s), external ? 2 : 0);
    for (int i = 0; external && i < 2; i++)
        CHECK(pthread_create(&loops[i].th, NULL, test_loop_main, &loops[i]) == 0);
    int port = httpd_port(s), fds[LIMIT + 1];
    for (int i = 0; i < LIMIT; i++) {
        fds[i] = connect_to(port);
        CHECK_INT_EQ(request_on(fds[i]), 409); /* held open: keep-alive */
    }
    /* The kernel completes the handshake; MHD closes the extra connection unanswered. */
    fds[LIMIT] = connect_to(port);
    CHECK_INT_EQ(request_on(fds[LIMIT]), 0);
    close(fds[LIMIT]);
    /* The ones within the limit still work, and a freed slot can be taken again. */
    CHECK_INT_EQ(request_on(fds[0]), 409);
    close(fds[0]);
    int again = -1;
    for (int tries = 0; tries < 50 && again != 409; tries++) {
        util_sleep_ms(20); /* MHD notices the close on its own thread */
        int fd = connect_to(port);
        again = request_on(fd);
        close(fd);
    }
    CHECK_INT_EQ(again, 409);
    for (int i = 1; i < LIMIT; i++)
        close(fds[i]);
    /* Many connections at once, each answered, whichever loop accepted it. */
    if (external) {
        util_sleep_ms(200); /* the loops notice the closes above and count them out */
        for (int round = 0; round < 10; round++) {
            int fd = connect_to(httpd_port(s));
            CHECK_INT_EQ(request_on(fd), 409);
            CHECK_INT_EQ(request_on(fd), 409); /* kept alive on its loop */
            close(fd);
        }
        for (int i = 0; i < 2; i++) {
            loops[i].quit = 1;
            pthread_join(loops[i].th, NULL);
            CHECK(loops[i].runs > 0);
        }
    }
    httpd_stop(s);
}

static void test_httpd(void)
{
    static const struct httpd_route routes[] = {
        {"POST", "/things/{}", h_echo},
        {"GET", "/things/{}/fail", h_fail},
    };
    struct httpd_config hc = {.name = "test",
                              .host = "127.0.0.1",
                              .port = 0,
                              .threads = 2,
                              .max_body = 64,
                              .routes = routes,
                              .nroutes = 2};
    char err[256];
    struct httpd_server *s = httpd_start(&hc, err, sizeof err);
    CHECK(s);
    char url[128];
    struct httpc_resp r;
    int port = httpd_port(s);
    CHECK(port > 0);

    snprintf(url, sizeof url, "http://127.0.0.1:%d/things/abc", port);
    CHECK(httpc_request("POST", url, NULL, "{\"x\":1}", 7, 5000, 1 << 20, &r, err, sizeof err) ==
          0);
    CHECK_INT_EQ(r.status, 200);
    CHECK_STR_EQ(r.body.data, "{\"id\":\"abc\",\"method\":\"POST\",\"len\":7}");
    buf_free(&r.body);

    char big[100];
    memset(big, 'a', sizeof big);
    CHECK(httpc_request("POST", url, NULL, big, sizeof big, 5000, 1 << 20, &r, err, sizeof err) ==
          0);
    CHECK_INT_EQ(r.status, 413);
    CHECK(strstr(r.body.data, "\"type\":\"invalid_request_error\""));
    buf_free(&r.body);

    CHECK(httpc_request("GET", url, NULL, NULL, 0, 5000, 1 << 20, &r, err, sizeof err) == 0);
    CHECK_INT_EQ(r.status, 405);
    buf_free(&r.body);

    snprintf(url, sizeof url, "http://127.0.0.1:%d/things/abc/fail", port);
    CHECK(httpc_request("GET", url, NULL, NULL, 0, 5000, 1 << 20, &r, err, sizeof err) == 0);
    CHECK_INT_EQ(r.status, 409);
    CHECK_STR_EQ(r.body.data, "{\"error\":{\"message\":\"name x is taken\",\"type\":"
                              "\"conflict_error\",\"param\":\"name\",\"code\":\"name_taken\"}}");
    buf_free(&r.body);

    snprintf(url, sizeof url, "http://127.0.0.1:%d/nothing/here", port);
    CHECK(httpc_request("GET", url, NULL, NULL, 0, 5000, 1 << 20, &r, err, sizeof err) == 0);
    CHECK_INT_EQ(r.status, 404);
    buf_free(&r.body);
    httpd_stop(s);

    /* A closed port is a transport error with a message, not a crash. */
    CHECK(httpc_request("GET", url, NULL, NULL, 0, 2000, 1 << 20, &r, err, sizeof err) == -1);
    CHECK(strlen(err) > 0);
}

/* Paths and query strings must be UTF-8 (httpd answers 400 otherwise); stored text must have no
 * control characters (jsonx_printable). */
static void test_text_checks(void)
{
    CHECK(httpd_utf8_valid(""));
    CHECK(httpd_utf8_valid("/v1/endpoints?name=caf\xc3\xa9 \xf0\x9f\x98\x80"));
    CHECK(httpd_utf8_valid("\xe2\x82\xac\xf4\x8f\xbf\xbf")); /* U+20AC, U+10FFFF */
    CHECK(!httpd_utf8_valid("\xff"));
    CHECK(!httpd_utf8_valid("\xc3"));             /* cut short */
    CHECK(!httpd_utf8_valid("\xc0\xaf"));         /* overlong '/' */
    CHECK(!httpd_utf8_valid("\xe0\x80\xaf"));     /* overlong, 3 bytes */
    CHECK(!httpd_utf8_valid("\xed\xa0\x80"));     /* a surrogate (U+D800) */
    CHECK(!httpd_utf8_valid("\xf4\x90\x80\x80")); /* past U+10FFFF */
    CHECK(!httpd_utf8_valid("a\x80"
                            "b")); /* a lone continuation byte */
    CHECK(jsonx_printable("plain ' \" ; -- text \xc3\xa9"));
    CHECK(jsonx_printable(""));
    CHECK(!jsonx_printable("a\nb"));
    CHECK(!jsonx_printable("\x1b[31m"));
    CHECK(!jsonx_printable("del\x7f"));
}

/* Label sets (labels.h): what a host may carry and an endpoint may select by. */
static int label_ok(const char *json)
{
    json_error_t e;
    json_t *v = json_loads(json, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    struct jsonx_err je = {0};
    CHECK(v != NULL);
    int ok = labels_check(v, "host_selector", &je) == 0;
    if (!ok) CHECK_STR_EQ(je.param, "host_selector");
    json_decref(v);
    return ok;
}

static void test_labels(void)
{
    CHECK(label_ok("{}"));
    CHECK(label_ok("{\"zone\":\"eu\",\"gpu-class\":\"premium\",\"example.com/rack\":\"r1_a\"}"));
    CHECK(label_ok("{\"empty\":\"\"}"));
    CHECK(!label_ok("[]"));
    CHECK(!label_ok("\"zone=eu\""));
    CHECK(!label_ok("{\"zone\":1}"));
    CHECK(!label_ok("{\"\":\"eu\"}"));
    CHECK(!label_ok("{\"-zone\":\"eu\"}"));
    CHECK(!label_ok("{\"zo=ne\":\"eu\"}"));
    CHECK(!label_ok("{\"zone\":\"e,u\"}"));
    CHECK(!label_ok("{\"zone\":\"e\\nu\"}"));
    CHECK(!label_ok("{\"zone\":\"e\\u0000u\"}"));
    CHECK(!label_ok("{\"zone\":\"-eu\"}"));
    char big[512];
    snprintf(big, sizeof big, "{\"%063d\":\"%063d\"}", 1, 2); /* 63 and 63: the limits */
    CHECK(label_ok(big));
    snprintf(big, sizeof big, "{\"%064d\":\"v\"}", 1);
    CHECK(!label_ok(big));
    snprintf(big, sizeof big, "{\"k\":\"%064d\"}", 2);
    CHECK(!label_ok(big));
    size_t n = (size_t)snprintf(big, sizeof big, "{");
    for (int i = 0; i < 17; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "%s\"k%d\":\"v\"", i ? "," : "", i);
    snprintf(big + n, sizeof big - n, "}");
    CHECK(!label_ok(big)); /* 17 pairs */

    struct jsonx_err je = {0};
    json_t *o = labels_parse("zone=eu,gpu-class=premium", &je);
    CHECK(o != NULL);
    CHECK_STR_EQ(json_string_value(json_object_get(o, "gpu-class")), "premium");
    CHECK_INT_EQ((int)json_object_size(o), 2);
    json_decref(o);
    o = labels_parse("", &je);
    CHECK(o != NULL && json_object_size(o) == 0);
    json_decref(o);
    CHECK(labels_parse("zone", &je) == NULL);
    CHECK_STR_EQ(je.param, "labels");
    CHECK(labels_parse("zone=eu,=x", &je) == NULL);
    CHECK(labels_parse("zone=e u", &je) == NULL);
}

int main(void)
{
    log_init("test", "error");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    test_util();
    test_jsonx();
    test_cfg();
    test_httpd();
    test_json_depth();
    test_per_ip_limit(0);
    test_per_ip_limit(1);
    test_text_checks();
    test_labels();
    curl_global_cleanup();
    printf("test_common: ok\n");
    return 0;
}
