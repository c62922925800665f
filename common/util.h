/* util: small helpers every program needs: clocks, secure random ids, SHA-256, growable buffers,
 * file reading. No state. */
#ifndef ORP_UTIL_H
#define ORP_UTIL_H

#include <pthread.h>

#include <stddef.h>
#include <stdint.h>

int64_t util_now_ms(void);  /* CLOCK_MONOTONIC, for timeouts */
int64_t util_wall_ms(void); /* CLOCK_REALTIME, for timestamps */
void util_sleep_ms(int64_t ms);

/* Freed objects of one size kept for reuse, for the per-request structs of a few KiB whose
 * allocation goes past malloc's per-thread cache into its slow path (3 % of the gateway's time):
 * util_spare_take returns a zeroed object (a kept one, or calloc's), util_spare_give keeps it (its
 * first bytes become the list's link) or frees it past max, or always under AddressSanitizer.
 * Each thread keeps its own list (no lock on the request path; an object may be given back on
 * another thread than it was taken on), freed when the thread exits. Initialize with
 * UTIL_SPARES_INIT(max); util_spare_count: how many the calling thread keeps. */
struct util_spares {
    int max;
    int ready; /* key made */
    pthread_key_t key;
};
#define UTIL_SPARES_INIT(max_)                                                                     \
    {                                                                                              \
        (max_), 0, 0                                                                               \
    }
void *util_spare_take(struct util_spares *s, size_t size);
void util_spare_give(struct util_spares *s, void *obj);
int util_spare_count(struct util_spares *s);

/* Copies src into dst[size] (truncated, NUL-terminated when size > 0) and returns the length
 * written: snprintf(dst, size, "%s", src) without the format machinery, for the per-request
 * paths where a dozen such copies showed in the gateway's profile. */
size_t util_strlcpy(char *dst, const char *src, size_t size);
/* Writes v in decimal into out (at least 21 bytes) and returns its length. */
size_t util_i64toa(char *out, int64_t v);

/* Fills out with 2*nbytes lowercase hex characters from a CSPRNG, plus a NUL. 0 or -1. */
int util_random_hex(char *out, size_t nbytes);
/* out gets 64 hex chars + NUL: SHA-256 of data. */
void util_sha256_hex(const void *data, size_t len, char out[65]);
/* Constant-time comparison of two NUL-terminated strings. 1 when equal. */
int util_ct_streq(const char *a, const char *b);

/* A growable byte buffer; data is always NUL-terminated. */
struct buf {
    char *data;
    size_t len, cap;
};
int buf_append(struct buf *b, const void *data, size_t len); /* 0 or -1 (out of memory) */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_free(struct buf *b);

/* Reads a whole file; returns a new NUL-terminated buffer (caller frees) or NULL with errno. */
char *util_read_file(const char *path, size_t *len_out);
/* Writes data to path atomically (temp file, fsync, rename). 0 or -1. */
int util_write_file_atomic(const char *path, const void *data, size_t len, int mode);
/* mkdir -p. 0 or -1. */
int util_mkdirs(const char *path, int mode);

#endif
