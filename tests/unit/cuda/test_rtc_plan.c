/* test_rtc_plan: the CUDA backend's decisions that need no GPU (runtime/cuda/rtc_plan.h), on the
 * CPU: tensor-parallel shards, the TP check against the GPUs given, KV sizing from the memory
 * left, the RoPE frequencies, the roofline's bytes for the Llama-3-8B shape, and how a batch
 * becomes the attention's plan. Expected numbers are worked out by hand in the comments. */
#include "check.h"
#include "rtc_plan.h"

#include <math.h>

/* Llama-3-8B's shape. */
static struct model_config llama8b(void)
{
    struct model_config c = {0};
    c.arch = MODEL_LLAMA;
    c.dim = 4096, c.ffn = 14336, c.layers = 32, c.heads = 32, c.kv_heads = 8, c.head_dim = 128;
    c.vocab = 128256, c.max_pos = 8192, c.eps = 1e-5f, c.rope_theta = 500000;
    c.rope_llama3 = 1, c.rs_factor = 8, c.rs_low_freq = 1, c.rs_high_freq = 4;
    c.rs_orig_max_pos = 8192;
    return c;
}

static void test_shards(void)
{
    struct model_config c = llama8b();
    struct rtc_shard s;
    rtc_plan_shard(&c, 1, 0, &s);
    CHECK(s.heads == 32 && s.q_head0 == 0 && s.kv_heads == 8 && s.kv_first == 0 && s.ffn == 14336);
    rtc_plan_shard(&c, 4, 3, &s); /* heads 24..31, kv heads 6..7, MLP rows 10752.. */
    CHECK(s.heads == 8 && s.q_head0 == 24 && s.kv_heads == 2 && s.kv_first == 6);
    CHECK(s.ffn == 3584 && s.f0 == 10752);
    c.kv_heads = 2; /* fewer KV heads than ranks: replicated, rank 3 (heads 24..31) uses kv 1 */
    rtc_plan_shard(&c, 4, 3, &s);
    CHECK(s.kv_heads == 1 && s.kv_first == 1);
}

static void test_check_tp(void)
{
    struct model_config c = llama8b();
    char err[300];
    CHECK(rtc_plan_check_tp(&c, 1, 1, RTC_COLL_NCCL, err, sizeof err) == 0);
    CHECK(rtc_plan_check_tp(&c, 8, 8, RTC_COLL_NCCL, err, sizeof err) == 0);
    /* A replica given 1 GPU cannot run 2 NCCL ranks, nor leave GPUs idle. */
    CHECK(rtc_plan_check_tp(&c, 2, 1, RTC_COLL_NCCL, err, sizeof err) == -1);
    CHECK(strstr(err, "does not match the 1 GPU") != NULL);
    CHECK(rtc_plan_check_tp(&c, 2, 4, RTC_COLL_NCCL, err, sizeof err) == -1);
    /* The device collective shares one GPU between ranks. */
    CHECK(rtc_plan_check_tp(&c, 4, 1, RTC_COLL_DEVICE, err, sizeof err) == 0);
    CHECK(rtc_plan_check_tp(&c, 4, 0, RTC_COLL_DEVICE, err, sizeof err) == -1);
    CHECK(rtc_plan_check_tp(&c, 3, 3, RTC_COLL_NCCL, err, sizeof err) == -1); /* 32 % 3 */
    CHECK(strstr(err, "must divide") != NULL);
    CHECK(rtc_plan_check_tp(&c, 16, 16, RTC_COLL_NCCL, err, sizeof err) == -1); /* > 8 ranks */
    CHECK_INT_EQ(rtc_plan_device_of(3, 1), 0);
    CHECK_INT_EQ(rtc_plan_device_of(3, 2), 1);
}

static void test_kv_sizing(void)
{
    struct model_config c = llama8b();
    struct rtc_shard s;
    rtc_plan_shard(&c, 1, 0, &s);
    /* k and v, BF16: 2 * 2 bytes * 32 layers * 16 positions * 8 heads * 128 = 2 MiB. */
    CHECK(rtc_plan_block_bytes(&c, &s) == (size_t)2 << 20);
    size_t gib = (size_t)1 << 30, mib = (size_t)1 << 20;
    /* 80 GiB, 60 free after the weights, 0.9: 72 - 20 - 0.5 reserve = 51.5 GiB = 26368 x 2 MiB. */
    CHECK_INT_EQ(rtc_plan_kv_blocks(80 * gib, 60 * gib, 0.9, 512 * mib, 2 * mib, 1), 26368);
    /* Shared by 4 ranks on that GPU: a quarter each. */
    CHECK_INT_EQ(rtc_plan_kv_blocks(80 * gib, 60 * gib, 0.9, 512 * mib, 2 * mib, 4), 6592);
    /* The weights already take more than the fraction allows: nothing. */
    CHECK_INT_EQ(rtc_plan_kv_blocks(80 * gib, 5 * gib, 0.9, 512 * mib, 2 * mib, 1), 0);
    CHECK_INT_EQ(rtc_plan_kv_blocks(80 * gib, 90 * gib, 0.9, 0, 2 * mib, 1), 0); /* bad input */
}

static void test_inv_freq(void)
{
    struct model_config c = llama8b();
    float f[64];
    rtc_plan_inv_freq(&c, f);
    /* i = 0: wavelength 2 pi, far below 8192 / 4: kept. */
    CHECK(f[0] == 1.0f);
    /* i = 63: wavelength 2 pi * 500000^(126/128) ~ 2.5e6 > 8192: divided by 8. */
    CHECK_NEAR(f[63], pow(500000.0, -126.0 / 128) / 8, 1e-12);
    /* i = 20: wavelength 2 pi 500000^(40/128) ~ 383 < 2048: kept. */
    CHECK_NEAR(f[20], pow(500000.0, -40.0 / 128), 1e-9);
    for (int i = 1; i < 64; i++)
        CHECK(f[i] < f[i - 1]);
    /* Without scaling, theta^(-2i/hd) throughout. */
    c.rope_llama3 = 0;
    rtc_plan_inv_freq(&c, f);
    CHECK_NEAR(f[63], pow(500000.0, -126.0 / 128), 1e-12);
}

static void test_weight_bytes(void)
{
    struct model_config c = llama8b();
    struct rtc_shard s;
    rtc_plan_shard(&c, 1, 0, &s);
    /* Per layer: (4096 + 2 * 1024) * 4096 + 4096 * 4096 + 3 * 14336 * 4096 = 218103808 weights,
     * 436207616 bytes, + 2 norms of 4096 F32 = 436240384; x 32 = 13959692288; lm_head
     * 128256 * 4096 * 2 = 1050673152 and the final norm 16384: 15010381824 bytes. */
    CHECK(rtc_plan_weight_bytes(&c, &s, 0) == 15010381824.0);
    CHECK(rtc_plan_weight_bytes(&c, &s, 1) == 13959692288.0); /* no lm_head on rank 1 */
}

static const int32_t *at(const int32_t *buf, size_t off)
{
    return buf + off;
}

static void test_step(void)
{
    int32_t buf[4096];
    struct rtc_step st;
    int ba[] = {7}, bb[] = {3, 9}, bc[] = {2};
    float lg[3];
    char A, B, C; /* the sequences' identities */
    struct model_dev_row rows[7];
    for (int i = 0; i < 5; i++) /* A: a prompt chunk, positions 0..4, logits on the last */
        rows[i] = (struct model_dev_row){100 + i, i, ba, 1, &A, i == 4 ? &lg[0] : NULL, NULL, NULL};
    rows[5] =
        (struct model_dev_row){200, 20, bb, 2, &B, &lg[1], NULL, NULL}; /* decode at 20: page 1 */
    rows[6] = (struct model_dev_row){300, 0, bc, 1, &C, &lg[2], NULL, NULL};
    size_t cap = rtc_plan_step_words(7, 8, 4);
    CHECK(cap <= sizeof buf / sizeof buf[0]);
    CHECK(rtc_plan_step(rows, 7, 4, 2, 264, 2048, buf, cap, &st) == 0);
    CHECK_INT_EQ(st.nseq, 3);
    CHECK_INT_EQ(st.nlogits, 3);
    const int32_t *slot = at(buf, st.off_slot), *lidx = at(buf, st.off_logit_idx);
    CHECK(slot[0] == 112 && slot[4] == 116 && slot[5] == 9 * 16 + 4 && slot[6] == 32);
    CHECK(lidx[0] == 4 && lidx[1] == 5 && lidx[2] == 6);
    const int32_t *soff = at(buf, st.off_seq_off), *bl = at(buf, st.off_blocks);
    CHECK(soff[0] == 0 && soff[1] == 1 && soff[2] == 3);
    CHECK(bl[0] == 7 && bl[1] == 3 && bl[2] == 9 && bl[3] == 2);
    CHECK_INT_EQ(st.max_pages, 2);
    /* A run of 5: 4 query slots per warp, 16 per block, 4 heads a group: 4 rows an item. */
    CHECK_INT_EQ(st.qpw, 4);
    CHECK_INT_EQ(st.nitems, 4);
    const int32_t *it = at(buf, st.off_items);
    CHECK(it[0] == 0 && it[1] == 4 && it[2] == 0 && it[3] == 4);
    CHECK(it[4] == 4 && it[5] == 1);
    CHECK(it[8] == 5 && it[9] == 1 && it[12] == 6 && it[13] == 1);
    CHECK_INT_EQ(st.nsplit, 1); /* 2 pages: too short to split */
    CHECK(st.words <= cap);
    CHECK_INT_EQ(st.nhost, 3);
    CHECK_INT_EQ(st.nsample, 0);

    /* Sampled rows: the host's logit rows first (only they are copied back), then the rows only
     * sampled, each with its parameters (greedy for a host row); B wants both. */
    const struct model_sample sb = {0.7f, 0.9f, 40, 0.25f}, sc = {0.0f, 1.0f, 0, 0.0f};
    int tb, tc;
    rows[4].logits = NULL, rows[4].sample = &sb, rows[4].token_out = &tb; /* A: sampled only */
    rows[5].sample = &sb, rows[5].token_out = &tb;                        /* B: both */
    rows[6].logits = NULL, rows[6].sample = &sc, rows[6].token_out = &tc; /* C: greedy, sampled */
    CHECK(rtc_plan_step(rows, 7, 4, 2, 264, 2048, buf, cap, &st) == 0);
    CHECK(st.words <= cap);
    CHECK_INT_EQ(st.nlogits, 3);
    CHECK_INT_EQ(st.nhost, 1);
    CHECK_INT_EQ(st.nsample, 3);
    lidx = at(buf, st.off_logit_idx);
    CHECK(lidx[0] == 5 && lidx[1] == 4 && lidx[2] == 6);
    struct rtc_sample_param sp[3];
    memcpy(sp, at(buf, st.off_sample), sizeof sp);
    CHECK(sp[0].temperature == 0.7f && sp[0].top_p == 0.9f && sp[0].u == 0.25f &&
          sp[0].top_k == 40);
    CHECK(sp[1].temperature == 0.7f && sp[2].temperature == 0.0f && sp[2].top_p == 1.0f);
    rows[4].sample = rows[5].sample = rows[6].sample = NULL;
    rows[4].logits = &lg[0], rows[6].logits = &lg[2];

    /* One long decode row (position 4000, 251 pages): few blocks, so split, at most 32. */
    static int many[300];
    for (int i = 0; i < 300; i++)
        many[i] = i;
    struct model_dev_row one = {5, 4000, many, 300, &A, &lg[0], NULL, NULL};
    cap = rtc_plan_step_words(1, 300, 4);
    CHECK(rtc_plan_step(&one, 1, 4, 8, 264, 2048, buf, cap, &st) == 0);
    CHECK_INT_EQ(st.qpw, 1);
    CHECK_INT_EQ(st.nitems, 1);
    CHECK_INT_EQ(st.max_pages, 251);
    CHECK_INT_EQ(st.nsplit, 32);
    /* The partials' room bounds the splits: 2048 rows of room for one row... and 40 for 2. */
    CHECK(rtc_plan_step(&one, 1, 4, 8, 264, 10, buf, cap, &st) == 0);
    CHECK_INT_EQ(st.nsplit, 10);

    /* Interleaved rows of one sequence are found again; not consecutive in the batch: no run. */
    struct model_dev_row mix[3] = {{1, 0, ba, 1, &A, NULL, NULL, NULL},
                                   {2, 5, bc, 1, &B, NULL, NULL, NULL},
                                   {3, 1, ba, 1, &A, &lg[0], NULL, NULL}};
    cap = rtc_plan_step_words(3, 8, 8);
    CHECK(rtc_plan_step(mix, 3, 8, 1, 264, 2048, buf, cap, &st) == 0);
    CHECK_INT_EQ(st.nseq, 2);
    CHECK(at(buf, st.off_row_seq)[2] == 0);
    CHECK_INT_EQ(st.qpw, 1);
    /* group 8 > 4 slots: each row's heads in two items. */
    CHECK_INT_EQ(st.nitems, 6);

    /* A position past the context's blocks, or too small a buffer, is refused. */
    struct model_dev_row bad = {1, 16, ba, 1, &A, NULL, NULL, NULL};
    CHECK(rtc_plan_step(&bad, 1, 4, 2, 264, 2048, buf, rtc_plan_step_words(1, 8, 4), &st) == -1);
    CHECK(rtc_plan_step(rows, 7, 4, 2, 264, 2048, buf, 10, &st) == -1);
}

int main(void)
{
    test_shards();
    test_check_tp();
    test_kv_sizing();
    test_inv_freq();
    test_weight_bytes();
    test_step();
    printf("test_rtc_plan: ok\n");
    return 0;
}
