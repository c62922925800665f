/* coll: owns the CPU communicator: a barrier and the table of the ranks' buffers (see coll.h).
 * Reduce-scatter then all-gather through shared memory: each rank sums its slice of the elements
 * over every rank's buffer (in rank order), then writes that slice into every rank's buffer. Each
 * element is read n times and written n times, as in a ring all-reduce, without its 2(n-1)
 * rounds of latency. */
#include "coll.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct coll {
    int n;
    pthread_barrier_t bar;
    float **ptr; /* [n] each rank's buffer during a call */
};

struct coll *coll_cpu_new(int n)
{
    if (n < 1) return NULL;
    struct coll *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->n = n;
    c->ptr = calloc((size_t)n, sizeof *c->ptr);
    if (!c->ptr || pthread_barrier_init(&c->bar, NULL, (unsigned)n) != 0) {
        free(c->ptr);
        free(c);
        return NULL;
    }
    return c;
}

void coll_free(struct coll *c)
{
    if (!c) return;
    pthread_barrier_destroy(&c->bar);
    free(c->ptr);
    free(c);
}

int coll_size(const struct coll *c)
{
    return c->n;
}

void coll_allreduce_sum(struct coll *c, int rank, float *buf, float *scratch, size_t len)
{
    if (c->n == 1) return;
    size_t lo = len * (size_t)rank / (size_t)c->n, hi = len * (size_t)(rank + 1) / (size_t)c->n;
    c->ptr[rank] = buf;
    pthread_barrier_wait(&c->bar); /* every buffer is in the table */
    for (size_t i = lo; i < hi; i++) {
        float s = c->ptr[0][i];
        for (int k = 1; k < c->n; k++)
            s += c->ptr[k][i];
        scratch[i] = s;
    }
    pthread_barrier_wait(&c->bar); /* nobody reads the inputs any more */
    for (int k = 0; k < c->n; k++)
        memcpy(c->ptr[k] + lo, scratch + lo, (hi - lo) * sizeof *buf);
    pthread_barrier_wait(&c->bar); /* every buffer holds the sum */
}
