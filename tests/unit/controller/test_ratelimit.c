/* Unit tests of the GCRA rate limiter on a simulated clock: a burst passes at once, then the
 * rate; a scripted burst over t seconds admits burst + rate x t (within one); keys are
 * independent; Retry-After is when the next request would pass. Tokens per minute: a bucket of
 * the limit, refilled over a minute; more than the whole limit never passes; refunds return. */
#include "check.h"
#include "ratelimit.h"

static int run(struct rl_table *t, int64_t key, int64_t rate, int64_t burst, int64_t seconds,
               int64_t step_us)
{
    int admitted = 0;
    struct rl_result r;
    for (int64_t now = 0; now <= seconds * 1000000; now += step_us)
        admitted += rl_admit(t, key, now + 1000000000, rate, burst, &r);
    return admitted;
}

int main(void)
{
    struct rl_table *t = rl_new();
    struct rl_result r;
    /* 60/min, burst 5: five at once, the sixth refused with Retry-After 1 s. */
    for (int i = 0; i < 5; i++) {
        CHECK(rl_admit(t, 1, 0, 60, 5, &r));
        CHECK_INT_EQ(r.remaining, 4 - i);
        CHECK_INT_EQ(r.limit, 60);
    }
    CHECK(!rl_admit(t, 1, 0, 60, 5, &r));
    CHECK_INT_EQ(r.retry_after, 1);
    CHECK_INT_EQ(r.remaining, 0);
    CHECK(r.reset_s >= 5);
    /* Another key is unaffected. */
    CHECK(rl_admit(t, 2, 0, 60, 5, &r));
    /* One second later exactly one more. */
    CHECK(rl_admit(t, 1, 1000000, 60, 5, &r));
    CHECK(!rl_admit(t, 1, 1000000, 60, 5, &r));

    /* Hammering every 10 ms for t seconds admits burst + rate x t, within one. */
    for (int64_t rate = 30; rate <= 6000; rate *= 10) {
        for (int64_t burst = 1; burst <= 50; burst += 49) {
            for (int64_t secs = 1; secs <= 20; secs += 19) {
                struct rl_table *u = rl_new();
                int got = run(u, 7, rate, burst, secs, 10000);
                int64_t want = burst + rate * secs / 60;
                if (got < want - 1 || got > want + 1) {
                    fprintf(stderr, "rate %lld burst %lld %lld s: admitted %d, want %lld\n",
                            (long long)rate, (long long)burst, (long long)secs, got,
                            (long long)want);
                    return 1;
                }
                rl_free(u);
            }
        }
    }

    /* Tokens: 600/min (10 per second). 250 + 250 pass, 250 more do not until 20 s later. */
    int64_t T0 = 5000000000;
    CHECK(rl_charge(t, -1, T0, 600, 250, &r));
    CHECK_INT_EQ(r.remaining, 350);
    CHECK_INT_EQ(r.limit, 600);
    CHECK(rl_charge(t, -1, T0, 600, 250, &r));
    CHECK_INT_EQ(r.remaining, 100);
    CHECK(!rl_charge(t, -1, T0, 600, 250, &r));
    CHECK_INT_EQ(r.retry_after, 15);
    CHECK_INT_EQ(r.remaining, 100);
    CHECK_INT_EQ(r.reset_s, 50);
    /* The request key of the same account is untouched. */
    CHECK(rl_admit(t, 1, T0, 60, 5, &r));
    /* Refill: 15 s later 150 more tokens, so 250 pass. */
    CHECK(rl_charge(t, -1, T0 + 15000000, 600, 250, &r));
    CHECK_INT_EQ(r.remaining, 0);
    /* Settlement: 200 unused tokens come back at once. */
    rl_refund(t, -1, T0 + 15000000, 600, 200);
    CHECK(rl_charge(t, -1, T0 + 15000000, 600, 200, &r));
    CHECK(!rl_charge(t, -1, T0 + 15000000, 600, 1, &r));
    /* More than the whole limit: refused, and waiting does not help (no Retry-After). */
    CHECK(!rl_charge(t, -2, T0, 600, 601, &r));
    CHECK_INT_EQ(r.retry_after, 0);
    CHECK_INT_EQ(r.remaining, 600);
    CHECK(rl_charge(t, -2, T0, 600, 600, &r));
    /* A refund never makes the bucket larger than the limit. */
    rl_refund(t, -2, T0, 600, 100000);
    CHECK(rl_charge(t, -2, T0, 600, 600, &r));
    CHECK(!rl_charge(t, -2, T0, 600, 1, &r));
    /* A scripted burst of 30-token requests every 10 ms for 20 s at 6000/min admits
     * (6000 + 6000 x 20 / 60) / 30 = 266, within one. */
    int got = 0;
    for (int64_t now = 0; now <= 20000000; now += 10000)
        got += rl_charge(t, -3, T0 + now, 6000, 30, &r);
    if (got < 265 || got > 267) {
        fprintf(stderr, "token burst admitted %d, want 266\n", got);
        return 1;
    }
    rl_free(t);
    rl_free(NULL);
    printf("test_ratelimit: ok\n");
    return 0;
}
