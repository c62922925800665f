/* rt_test: helpers shared by the runtime's unit tests: a temporary directory per test (mkdtemp,
 * removed at the end), small file writers, and a tiny model made by make-model's code. */
#ifndef ORP_TEST_RT_TEST_H
#define ORP_TEST_RT_TEST_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "makemodel.h"

static inline char *rt_tmpdir(char *buf, size_t n)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, n, "%s/orp-rt-test-XXXXXX", base && base[0] ? base : "/tmp");
    char *d = mkdtemp(buf);
    CHECK(d != NULL);
    return d;
}

static int rt_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static inline void rt_rmtree(const char *dir)
{
    nftw(dir, rt_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void rt_write(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, n, f) == n);
    CHECK(fclose(f) == 0);
}

/* make-model's defaults (or a smaller context) into dir. */
static inline void rt_make_model(const char *dir, enum st_dtype dtype)
{
    struct mm_opts o;
    mm_defaults(&o);
    o.out = dir;
    o.dtype = dtype;
    char err[512];
    if (mm_make(&o, err, sizeof err) != 0) {
        fprintf(stderr, "mm_make: %s\n", err);
        exit(1);
    }
}

#define CHECK_CONTAINS(hay, needle)                                                                \
    do {                                                                                           \
        const char *_h = (hay), *_n = (needle);                                                    \
        if (!_h || !strstr(_h, _n)) {                                                              \
            fprintf(stderr, "%s:%d: CHECK_CONTAINS failed: \"%s\" does not contain \"%s\"\n",      \
                    __FILE__, __LINE__, _h ? _h : "(null)", _n);                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#endif
