/* util: see util.h. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void util_sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* Lower-case hex of n bytes and a NUL. A table, not sprintf: the gateway makes three of these
 * per request (request ids, the key's hash), and sprintf per byte showed in its profile. */
static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* RAND_bytes costs about a microsecond a call (OpenSSL's locked DRBG), and the gateway draws two
 * ids per request: small draws come from a per-thread buffer filled by one RAND_bytes call,
 * each byte handed out once and wiped. A forked child empties its buffer first (a pthread_atfork
 * handler: the child has only the thread that forked, and only its buffer), so it never repeats
 * its parent's bytes; a getpid() per draw did the same at a system call each. */
#define UTIL_RAND_BUF 512
static _Thread_local unsigned char rand_buf[UTIL_RAND_BUF];
static _Thread_local size_t rand_left;
static pthread_once_t rand_once = PTHREAD_ONCE_INIT;

static void rand_forget(void)
{
    OPENSSL_cleanse(rand_buf, sizeof rand_buf);
    rand_left = 0;
}

static void rand_init(void)
{
    pthread_atfork(NULL, NULL, rand_forget);
}

static int rand_take(unsigned char *out, size_t n)
{
    if (n > UTIL_RAND_BUF / 4) return RAND_bytes(out, (int)n) == 1 ? 0 : -1;
    pthread_once(&rand_once, rand_init);
    if (rand_left < n) {
        if (RAND_bytes(rand_buf, UTIL_RAND_BUF) != 1) return -1;
        rand_left = UTIL_RAND_BUF;
    }
    unsigned char *from = rand_buf + UTIL_RAND_BUF - rand_left;
    memcpy(out, from, n);
    OPENSSL_cleanse(from, n);
    rand_left -= n;
    return 0;
}

/* Under AddressSanitizer nothing is kept, so that it still sees every use after free. */
#if defined(__SANITIZE_ADDRESS__)
#define UTIL_KEEP_FREED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UTIL_KEEP_FREED 0
#endif
#endif
#ifndef UTIL_KEEP_FREED
#define UTIL_KEEP_FREED 1
#endif

/* One thread's list of a util_spares (its thread-specific value). */
struct spare_list {
    void *head;
    int n;
};

static void spare_list_free(void *v)
{
    struct spare_list *l = v;
    while (l->head) {
        void *obj = l->head;
        memcpy(&l->head, obj, sizeof l->head);
        free(obj);
    }
    free(l);
}

static pthread_mutex_t spares_init_mu = PTHREAD_MUTEX_INITIALIZER;

/* The calling thread's list, made when make is set; NULL when there is none. */
static struct spare_list *spare_list(struct util_spares *s, int make)
{
    if (!__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE)) {
        if (!make) return NULL;
        pthread_mutex_lock(&spares_init_mu);
        int ok = s->ready || pthread_key_create(&s->key, spare_list_free) == 0;
        if (ok) __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&spares_init_mu);
        if (!ok) return NULL;
    }
    struct spare_list *l = pthread_getspecific(s->key);
    if (!l && make && (l = calloc(1, sizeof *l)) != NULL && pthread_setspecific(s->key, l) != 0) {
        free(l);
        l = NULL;
    }
    return l;
}

void *util_spare_take(struct util_spares *s, size_t size)
{
    struct spare_list *l = spare_list(s, 0);
    if (!l || !l->head) return calloc(1, size);
    void *obj = l->head;
    memcpy(&l->head, obj, sizeof l->head);
    l->n--;
    memset(obj, 0, size);
    return obj;
}

void util_spare_give(struct util_spares *s, void *obj)
{
    if (!obj) return;
    struct spare_list *l = UTIL_KEEP_FREED ? spare_list(s, 1) : NULL;
    if (!l || l->n >= s->max) {
        free(obj);
        return;
    }
    memcpy(obj, &l->head, sizeof l->head);
    l->head = obj;
    l->n++;
}

int util_spare_count(struct util_spares *s)
{
    struct spare_list *l = spare_list(s, 0);
    return l ? l->n : 0;
}

size_t util_strlcpy(char *dst, const char *src, size_t size)
{
    if (size == 0) return 0;
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

size_t util_i64toa(char *out, int64_t v)
{
    char tmp[24];
    size_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0) out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    out[len] = '\0';
    return len;
}

int util_random_hex(char *out, size_t nbytes)
{
    unsigned char raw[64];
    if (nbytes > sizeof raw || rand_take(raw, nbytes) != 0) return -1;
    hex_encode(raw, nbytes, out);
    OPENSSL_cleanse(raw, nbytes);
    return 0;
}

void util_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    hex_encode(md, SHA256_DIGEST_LENGTH, out);
}

int util_ct_streq(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < la && i < lb; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

int buf_append(struct buf *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) return -1;
        b->data = p;
        b->cap = cap;
    }
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof small) return buf_append(b, small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = buf_append(b, big, (size_t)n);
    free(big);
    return rc;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *util_read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (buf_append(&b, chunk, n) != 0) {
            fclose(f);
            buf_free(&b);
            errno = ENOMEM;
            return NULL;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        buf_free(&b);
        errno = EIO;
        return NULL;
    }
    if (!b.data) buf_append(&b, "", 0);
    if (len_out) *len_out = b.len;
    return b.data;
}

int util_write_file_atomic(const char *path, const void *data, size_t len, int mode)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp) return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return -1;
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            close(fd);
            unlink(tmp);
            return -1;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int util_mkdirs(const char *path, int mode)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    }
    if (mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST) return -1;
    return 0;
}
