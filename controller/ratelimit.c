/* ratelimit: see ratelimit.h.
 *
 * GCRA: with emission interval T = 1 min / rate and tolerance tau = T x (burst - 1), a request at
 * time t is admitted when TAT - t <= tau, where TAT (the theoretical arrival time) starts at t and
 * advances by T per admitted request. A burst of `burst` requests passes at once, then one per T.
 * State is one int64 per key in a chained hash table; entries whose TAT is in the past carry no
 * information (a fresh entry behaves the same) and are dropped as chains are walked. */
#include "ratelimit.h"

#include <pthread.h>
#include <stdlib.h>

#define RL_BUCKETS 4096 /* chains; accounts hash by id, so chains stay short */

struct rl_entry {
    int64_t key;
    int64_t tat_us;
    struct rl_entry *next;
};

struct rl_table {
    pthread_mutex_t lock;
    struct rl_entry *buckets[RL_BUCKETS];
};

struct rl_table *rl_new(void)
{
    struct rl_table *t = calloc(1, sizeof *t);
    if (t) pthread_mutex_init(&t->lock, NULL);
    return t;
}

void rl_free(struct rl_table *t)
{
    if (!t) return;
    for (int i = 0; i < RL_BUCKETS; i++) {
        struct rl_entry *e = t->buckets[i];
        while (e) {
            struct rl_entry *n = e->next;
            free(e);
            e = n;
        }
    }
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static int64_t ceil_s(int64_t us)
{
    return us <= 0 ? 0 : (us + 999999) / 1000000;
}

int rl_admit(struct rl_table *t, int64_t key, int64_t now_us, int64_t rate_per_min, int64_t burst,
             struct rl_result *out)
{
    int64_t T = 60000000 / (rate_per_min > 0 ? rate_per_min : 1);
    if (T < 1) T = 1;
    int64_t tau = T * ((burst > 0 ? burst : 1) - 1);
    out->limit = rate_per_min;
    pthread_mutex_lock(&t->lock);
    struct rl_entry **pp = &t->buckets[(uint64_t)key % RL_BUCKETS], *found = NULL;
    while (*pp) {
        struct rl_entry *e = *pp;
        if (e->key == key) {
            found = e;
            pp = &e->next;
        } else if (e->tat_us < now_us) { /* stale: drop it */
            *pp = e->next;
            free(e);
        } else {
            pp = &e->next;
        }
    }
    int64_t tat = found && found->tat_us > now_us ? found->tat_us : now_us;
    int admitted = tat - now_us <= tau;
    if (admitted) {
        tat += T;
        if (!found && (found = malloc(sizeof *found))) {
            found->key = key;
            found->next = t->buckets[(uint64_t)key % RL_BUCKETS];
            t->buckets[(uint64_t)key % RL_BUCKETS] = found;
        }
        /* Out of memory: the request is admitted unlimited rather than refused. */
        if (found) found->tat_us = tat;
        out->retry_after = 0;
    } else {
        out->retry_after = ceil_s(tat - now_us - tau);
    }
    /* Another request now passes while TAT - now <= tau, and each one adds T. */
    int64_t slack = tau - (tat - now_us);
    out->remaining = admitted && slack >= 0 ? slack / T + 1 : 0;
    out->reset_s = ceil_s(tat - now_us);
    pthread_mutex_unlock(&t->lock);
    return admitted;
}
