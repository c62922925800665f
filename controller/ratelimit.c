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

/* The key's entry, or NULL; stale entries met on the way are dropped. Lock held. */
static struct rl_entry *find(struct rl_table *t, int64_t key, int64_t now_us)
{
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
    return found;
}

/* Stores tat for key (found: its entry or NULL). Lock held. Out of memory: nothing is stored,
 * and the request is admitted unlimited rather than refused. */
static void store(struct rl_table *t, struct rl_entry *found, int64_t key, int64_t tat)
{
    if (!found && (found = malloc(sizeof *found))) {
        found->key = key;
        found->next = t->buckets[(uint64_t)key % RL_BUCKETS];
        t->buckets[(uint64_t)key % RL_BUCKETS] = found;
    }
    if (found) found->tat_us = tat;
}

int rl_admit(struct rl_table *t, int64_t key, int64_t now_us, int64_t rate_per_min, int64_t burst,
             struct rl_result *out)
{
    int64_t T = 60000000 / (rate_per_min > 0 ? rate_per_min : 1);
    if (T < 1) T = 1;
    int64_t tau = T * ((burst > 0 ? burst : 1) - 1);
    out->limit = rate_per_min;
    pthread_mutex_lock(&t->lock);
    struct rl_entry *found = find(t, key, now_us);
    int64_t tat = found && found->tat_us > now_us ? found->tat_us : now_us;
    int admitted = tat - now_us <= tau;
    if (admitted) {
        tat += T;
        store(t, found, key, tat);
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

/* Tokens: n tokens take n x 1 min / rate of the window, rounded up when charged and down when
 * given back, so rounding never gives away a token; n <= rate <= 10^9 keeps n x 6e7 in range. */
#define RL_WINDOW_US INT64_C(60000000)

static int64_t tokens_us(int64_t n, int64_t rate, int up)
{
    return (n * RL_WINDOW_US + (up ? rate - 1 : 0)) / rate;
}

int rl_charge(struct rl_table *t, int64_t key, int64_t now_us, int64_t tokens_per_min,
              int64_t tokens, struct rl_result *out)
{
    int64_t rate = tokens_per_min > 0 ? tokens_per_min : 1;
    out->limit = rate;
    pthread_mutex_lock(&t->lock);
    struct rl_entry *found = find(t, key, now_us);
    int64_t tat = found && found->tat_us > now_us ? found->tat_us : now_us;
    int admitted =
        tokens >= 0 && tokens <= rate && tat + tokens_us(tokens, rate, 1) - now_us <= RL_WINDOW_US;
    if (admitted) {
        tat += tokens_us(tokens, rate, 1);
        store(t, found, key, tat);
        out->retry_after = 0;
    } else {
        /* When the bucket will hold the tokens again (never, for more than the whole limit). */
        int64_t need =
            tokens <= rate ? tat + tokens_us(tokens, rate, 1) - now_us - RL_WINDOW_US : 0;
        out->retry_after = ceil_s(need);
    }
    /* The tokens left: the part of the window TAT has not reached yet. */
    int64_t left = RL_WINDOW_US - (tat - now_us);
    out->remaining = left > 0 ? left * rate / RL_WINDOW_US : 0;
    out->reset_s = ceil_s(tat - now_us);
    pthread_mutex_unlock(&t->lock);
    return admitted;
}

void rl_refund(struct rl_table *t, int64_t key, int64_t now_us, int64_t tokens_per_min,
               int64_t tokens)
{
    if (tokens <= 0 || tokens_per_min <= 0) return;
    if (tokens > tokens_per_min) tokens = tokens_per_min;
    pthread_mutex_lock(&t->lock);
    struct rl_entry *found = find(t, key, now_us);
    /* A TAT moved into the past is a full bucket: the entry is dropped as stale later. */
    if (found) found->tat_us -= tokens_us(tokens, tokens_per_min, 0);
    pthread_mutex_unlock(&t->lock);
}
