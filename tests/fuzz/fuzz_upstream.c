/* fuzz_upstream: a libFuzzer target for the gateway's upstream client (controller/upstream.c) on
 * what a runtime sends back: a misbehaving or hostile runtime must cost an error, never a crash,
 * a leak or a hang.
 *
 * Each input is a runtime's whole reply. A real loopback socket carries it: the client opens a
 * connection to a listening socket made once, the target accepts it, reads the request, writes
 * the input in pieces, then closes its side; the client is driven like the gateway drives it
 * (epoll, up_event, up_reap, up_sweep) until the exchange ends. The first byte of the input is
 * not part of the reply but its options: bits 0-1 the write pieces' size (1, 7, 64 bytes or all
 * at once), bit 2 pause in on_headers, bit 3 pause at the first on_body, bit 4 answer a second
 * exchange on the same connection when the first was kept alive.
 *
 * Besides "no crash, no leak, no UB, no hang" it checks, and aborts when one fails:
 *   - on_done is called exactly once, only from up_reap, and only after the reply ended;
 *   - no on_body before on_headers, none while paused, none after on_done;
 *   - UP_OK means on_headers was called with a status of 200-599. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "upstream.h"
#include "util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_upstream: %s:%d: %s\n", __FILE__, __LINE__, #cond);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static int lfd = -1;
static char base[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 16) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &al) != 0) {
        perror("fuzz_upstream: listen");
        exit(1);
    }
    snprintf(base, sizeof base, "http://127.0.0.1:%d", ntohs(a.sin_port));
    return 0;
}

struct ex {
    struct up_loop *ul;
    struct up_xfer *x;
    int in_event, in_reap;
    int pause_headers, pause_body, paused;
    int headers, status, bodies, done;
    enum up_rc rc;
};

static int on_headers(void *ud, int status)
{
    struct ex *e = ud;
    CHECK(e->in_event && !e->done && !e->headers);
    e->headers = 1;
    e->status = status;
    if (e->pause_headers) {
        up_pause(e->ul, e->x, 1);
        e->paused = 1;
    }
    return 0;
}

static int on_body(void *ud, const char *d, size_t n)
{
    struct ex *e = ud;
    (void)d;
    CHECK(e->in_event && !e->done && e->headers && !e->paused && n > 0);
    if (e->pause_body && e->bodies++ == 0) {
        up_pause(e->ul, e->x, 1);
        e->paused = 1;
    }
    return 0;
}

static void on_done(void *ud, enum up_rc rc, const char *why)
{
    struct ex *e = ud;
    CHECK(e->in_reap && !e->done && why != NULL);
    e->done = 1;
    e->rc = rc;
    if (rc == UP_OK) CHECK(e->headers && e->status >= 200 && e->status <= 599);
}

static const struct up_handler handler = {NULL, on_headers, on_body, on_done};

/* Reads one request (head and its 2-byte body) from fd; 0, or -1 when the client closed. */
static int read_request(int fd)
{
    char buf[4096];
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + got, sizeof buf - got, 0);
        if (n <= 0) return -1;
        got += (size_t)n;
        char *end = memmem(buf, got, "\r\n\r\n", 4);
        if (end && got >= (size_t)(end + 4 - buf) + 2) return 0;
        if (got == sizeof buf) return -1;
    }
}

/* One turn of the gateway-like loop. Everything the runtime will send is already in the socket
 * (loopback delivers within send), so a turn without an event while not paused means nothing
 * more will come: when `stall_ends` the exchange's deadline is then made to pass (up_sweep with a
 * clock an hour ahead) instead of waiting for it. A paused exchange is resumed after one turn. */
static void turn(int epfd, struct up_loop *ul, struct ex *e, int stall_ends)
{
    struct epoll_event evs[8];
    int n = epoll_wait(epfd, evs, 8, 0);
    for (int i = 0; i < n; i++) {
        e->in_event = 1;
        CHECK(up_event(ul, evs[i].data.fd, evs[i].events) == 1);
        e->in_event = 0;
    }
    int stalled = n == 0 && !e->paused;
    if (e->paused && !e->done) {
        e->paused = 0;
        e->pause_headers = e->pause_body = 0;
        e->in_event = 1; /* a resume may pass on what was held back */
        up_pause(ul, e->x, 0);
        e->in_event = 0;
    }
    e->in_reap = 1;
    up_reap(ul);
    e->in_reap = 0;
    up_sweep(ul, util_now_ms() + (stalled && stall_ends ? 3600 * 1000 : 0));
    e->in_reap = 1; /* the sweep only ends exchanges; on_done still waits for up_reap */
    up_reap(ul);
    e->in_reap = 0;
}

/* Drives the client until e is done. */
static void drive(int epfd, struct up_loop *ul, struct ex *e)
{
    for (int turns = 0; !e->done; turns++) {
        CHECK(turns < 10000); /* a hang is a failure too */
        turn(epfd, ul, e, 1);
    }
}

static void send_pieces(int fd, const uint8_t *d, size_t n, size_t piece)
{
    for (size_t off = 0; off < n;) {
        size_t k = n - off < piece ? n - off : piece;
        ssize_t w = send(fd, d + off, k, MSG_NOSIGNAL);
        if (w <= 0) return; /* the client closed (it may refuse the reply early) */
        off += (size_t)w;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t opt = data[0];
    data++;
    size--;
    static const size_t pieces[4] = {1, 7, 64, (size_t)-1};
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    struct up_loop *ul = up_loop_new(epfd, 1, 1000);
    CHECK(epfd >= 0 && ul);
    struct up_request rq = {
        .base_url = base, .path = "/v1/x", .body = "{}", .body_len = 2, .timeout_ms = 5000};
    int rounds = opt & 16 ? 2 : 1;
    int sfd = -1;
    for (int r = 0; r < rounds; r++) {
        struct ex e = {.ul = ul, .pause_headers = (opt & 4) != 0, .pause_body = (opt & 8) != 0};
        e.x = up_start(ul, &rq, &handler, &e);
        CHECK(e.x != NULL);
        if (sfd < 0) sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC); /* the connect is done at once */
        CHECK(sfd >= 0);
        /* The request goes out at once, or when the connect's EPOLLOUT is seen. */
        for (int turns = 0; !e.done && !up_sent(e.x); turns++) {
            CHECK(turns < 1000);
            turn(epfd, ul, &e, 0);
        }
        if (!e.done && read_request(sfd) == 0) {
            send_pieces(sfd, data, size, pieces[opt & 3]);
            if (r == rounds - 1) shutdown(sfd, SHUT_WR); /* the end of the reply, if unframed */
        }
        drive(epfd, ul, &e);
        if (!(e.rc == UP_OK && up_open_connections(ul) == 1)) break; /* not kept alive */
    }
    if (sfd >= 0) close(sfd);
    up_loop_free(ul);
    close(epfd);
    return 0;
}
