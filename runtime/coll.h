/* coll: the collective operations between the ranks of a tensor-parallel model, behind one
 * interface: on the CPU the ranks are threads of one process and the all-reduce goes through
 * shared memory (this file); on CUDA the same calls are NCCL's (runtime/cuda/). */
#ifndef ORP_COLL_H
#define ORP_COLL_H

#include <stddef.h>

struct coll;

/* A communicator of n ranks (threads). NULL when memory is short. */
struct coll *coll_cpu_new(int n);
void coll_free(struct coll *c); /* accepts NULL */
int coll_size(const struct coll *c);

/* Called by every rank with its own buf of len floats (and scratch: len floats of its own); on
 * return every buf holds the element-wise sum over the ranks. The sum is taken in rank order, so
 * all ranks get the same bits. A barrier: it returns on no rank before every rank has called it.
 * It allocates nothing, so it cannot fail halfway with some ranks waiting. */
void coll_allreduce_sum(struct coll *c, int rank, float *buf, float *scratch, size_t len);

#endif
