/* check: the assertions every unit test uses. Each prints both sides and where, then exits 1:
 * every test is its own process (ctest runs each with a timeout), so the first failure ends it. */
#ifndef ORP_CHECK_H
#define ORP_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);              \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_INT_EQ(a, b)                                                                         \
    do {                                                                                           \
        long long _a = (long long)(a), _b = (long long)(b);                                        \
        if (_a != _b) {                                                                            \
            fprintf(stderr, "%s:%d: CHECK_INT_EQ failed: %s == %s (%lld vs %lld)\n", __FILE__,     \
                    __LINE__, #a, #b, _a, _b);                                                     \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                                         \
    do {                                                                                           \
        const char *_a = (a), *_b = (b);                                                           \
        if (!_a || !_b || strcmp(_a, _b) != 0) {                                                   \
            fprintf(stderr, "%s:%d: CHECK_STR_EQ failed: %s == %s (\"%s\" vs \"%s\")\n", __FILE__, \
                    __LINE__, #a, #b, _a ? _a : "(null)", _b ? _b : "(null)");                     \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double _a = (double)(a), _b = (double)(b);                                                 \
        if (!(_a - _b <= (tol) && _b - _a <= (tol))) {                                             \
            fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s ~ %s (%g vs %g, tol %g)\n", __FILE__,    \
                    __LINE__, #a, #b, _a, _b, (double)(tol));                                      \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#endif
