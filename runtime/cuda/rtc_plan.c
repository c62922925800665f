/* rtc_plan: see rtc_plan.h. Plain C, no CUDA: everything here is checked on the CPU. */
#include "rtc_plan.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void rtc_plan_shard(const struct model_config *c, int tp, int rank, struct rtc_shard *s)
{
    int group = c->heads / c->kv_heads;
    s->heads = c->heads / tp;
    s->q_head0 = rank * s->heads;
    s->kv_heads = c->kv_heads >= tp ? c->kv_heads / tp : 1;
    s->kv_first = s->q_head0 / group;
    s->ffn = c->ffn / tp;
    s->f0 = rank * s->ffn;
}

int rtc_plan_layer_copies(const struct model_config *c, const struct rtc_shard *s,
                          struct rtc_copy *out)
{
    int64_t hd = c->head_dim, dim = c->dim, qd = (int64_t)c->heads * hd;
    int64_t kvd = (int64_t)c->kv_heads * hd, ql = (int64_t)s->heads * hd;
    int64_t kvl = (int64_t)s->kv_heads * hd, q0 = (int64_t)s->q_head0 * hd;
    int64_t k0 = (int64_t)s->kv_first * hd, f = s->ffn, f0 = s->f0;
    int n = 0;
#define COPY(sfx, a, b, rr0, rnr, cc0, cnc, sl, off)                                               \
    out[n++] = (struct rtc_copy){sfx, a, b, rr0, rnr, cc0, cnc, sl, off}
    COPY("self_attn.q_proj.weight", qd, dim, q0, ql, 0, dim, RTC_W_QKV, 0);
    COPY("self_attn.k_proj.weight", kvd, dim, k0, kvl, 0, dim, RTC_W_QKV, ql * dim);
    COPY("self_attn.v_proj.weight", kvd, dim, k0, kvl, 0, dim, RTC_W_QKV, (ql + kvl) * dim);
    COPY("self_attn.o_proj.weight", dim, qd, 0, dim, q0, ql, RTC_W_O, 0);
    COPY("mlp.gate_proj.weight", c->ffn, dim, f0, f, 0, dim, RTC_W_GU, 0);
    COPY("mlp.up_proj.weight", c->ffn, dim, f0, f, 0, dim, RTC_W_GU, f * dim);
    COPY("mlp.down_proj.weight", dim, c->ffn, 0, dim, f0, f, RTC_W_DOWN, 0);
    COPY("input_layernorm.weight", dim, 0, 0, dim, 0, 1, RTC_W_ATTN_NORM, 0);
    COPY("post_attention_layernorm.weight", dim, 0, 0, dim, 0, 1, RTC_W_FFN_NORM, 0);
    if (c->qkv_bias) {
        COPY("self_attn.q_proj.bias", qd, 0, q0, ql, 0, 1, RTC_W_BQKV, 0);
        COPY("self_attn.k_proj.bias", kvd, 0, k0, kvl, 0, 1, RTC_W_BQKV, ql);
        COPY("self_attn.v_proj.bias", kvd, 0, k0, kvl, 0, 1, RTC_W_BQKV, ql + kvl);
    }
    if (c->qk_norm) {
        COPY("self_attn.q_norm.weight", hd, 0, 0, hd, 0, 1, RTC_W_QNORM, 0);
        COPY("self_attn.k_norm.weight", hd, 0, 0, hd, 0, 1, RTC_W_KNORM, 0);
    }
#undef COPY
    return n;
}

int64_t rtc_plan_slot_elems(const struct model_config *c, const struct rtc_shard *s,
                            enum rtc_wslot slot)
{
    int64_t hd = c->head_dim, dim = c->dim, qkv = (s->heads + 2LL * s->kv_heads) * hd;
    switch (slot) {
    case RTC_W_QKV:
        return qkv * dim;
    case RTC_W_O:
        return dim * s->heads * hd;
    case RTC_W_GU:
        return 2LL * s->ffn * dim;
    case RTC_W_DOWN:
        return dim * s->ffn;
    case RTC_W_BQKV:
        return c->qkv_bias ? qkv : 0;
    case RTC_W_ATTN_NORM:
    case RTC_W_FFN_NORM:
        return dim;
    case RTC_W_QNORM:
    case RTC_W_KNORM:
        return c->qk_norm ? hd : 0;
    case RTC_W_NSLOTS:
        break;
    }
    return 0;
}

int rtc_plan_slot_is_matrix(enum rtc_wslot slot)
{
    return slot <= RTC_W_DOWN;
}

int rtc_plan_check_tp(const struct model_config *c, int tp, int ngpus, enum rtc_coll_kind coll,
                      char *err, size_t errlen)
{
    if (tp < 1 || tp > RTC_MAX_RANKS) {
        snprintf(err, errlen, "--tp %d: the CUDA backend runs 1 to %d ranks", tp, RTC_MAX_RANKS);
        return -1;
    }
    if (c->heads % tp || c->ffn % tp || (c->kv_heads % tp && tp % c->kv_heads)) {
        snprintf(err, errlen,
                 "--tp %d must divide num_attention_heads (%d) and intermediate_size (%d), and "
                 "divide or be a multiple of num_key_value_heads (%d)",
                 tp, c->heads, c->ffn, c->kv_heads);
        return -1;
    }
    if (ngpus < 1) {
        snprintf(err, errlen, "no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver)");
        return -1;
    }
    if (coll == RTC_COLL_NCCL && tp != ngpus) {
        snprintf(err, errlen,
                 "--tp %d does not match the %d GPU%s this replica was given: with NCCL each rank "
                 "needs a GPU of its own, and every GPU given must be used",
                 tp, ngpus, ngpus == 1 ? "" : "s");
        return -1;
    }
    return 0;
}

int rtc_plan_device_of(int rank, int ngpus)
{
    return rank % ngpus;
}

size_t rtc_plan_block_bytes(const struct model_config *c, const struct rtc_shard *s)
{
    return 2 * sizeof(uint16_t) * (size_t)c->layers * RTC_KV_BLOCK * (size_t)s->kv_heads *
           (size_t)c->head_dim;
}

int64_t rtc_plan_kv_blocks(size_t total, size_t free_now, double fraction, size_t reserve,
                           size_t block_bytes, int ranks_here)
{
    if (free_now > total || block_bytes == 0 || ranks_here < 1) return 0;
    double budget = fraction * (double)total - (double)(total - free_now) - (double)reserve;
    if (budget <= 0) return 0;
    return (int64_t)(budget / ((double)block_bytes * ranks_here));
}

void rtc_plan_inv_freq(const struct model_config *c, float *inv_freq)
{
    int hd = c->head_dim;
    for (int i = 0; i < hd / 2; i++) {
        double f = pow((double)c->rope_theta, -(2.0 * i) / hd);
        if (c->rope_llama3) {
            /* Wavelengths longer than orig / low_freq: slowed by factor; shorter than
             * orig / high_freq: kept; between, a linear blend of the two by orig / wavelength. */
            double orig = c->rs_orig_max_pos, wavelen = 2 * M_PI / f;
            if (wavelen > orig / c->rs_low_freq) {
                f = f / c->rs_factor;
            } else if (wavelen >= orig / c->rs_high_freq) {
                double t = (orig / wavelen - c->rs_low_freq) / (c->rs_high_freq - c->rs_low_freq);
                f = (1 - t) * f / c->rs_factor + t * f;
            }
        }
        inv_freq[i] = (float)f;
    }
}

double rtc_plan_weight_bytes(const struct model_config *c, const struct rtc_shard *s, int rank)
{
    double hd = c->head_dim, dim = c->dim;
    double qkv_rows = (s->heads + 2.0 * s->kv_heads) * hd;
    double per_layer = 2.0 * (qkv_rows * dim + dim * s->heads * hd + 3.0 * s->ffn * dim) +
                       4.0 * 2 * dim; /* BF16 matrices; the two F32 norms */
    if (c->qkv_bias) per_layer += 4.0 * qkv_rows;
    if (c->qk_norm) per_layer += 4.0 * 2 * hd;
    double total = per_layer * c->layers;
    if (rank == 0) total += 2.0 * c->vocab * dim + 4.0 * dim; /* lm_head, final norm */
    return total;
}

size_t rtc_plan_step_words(int max_rows, int pool_blocks, int group)
{
    size_t n = (size_t)max_rows, items = n * (size_t)((group + 3) / 4 + 1);
    return 10 * n + 4 * items + (size_t)pool_blocks + 16;
}

int rtc_plan_step(const struct model_dev_row *rows, int n, int group, int kv_heads,
                  int target_blocks, int part_rows, int32_t *buf, size_t cap, struct rtc_step *st)
{
    memset(st, 0, sizeof *st);
    st->n = n;
    size_t un = (size_t)n;
    st->off_tokens = 0, st->off_pos = un, st->off_row_seq = 2 * un, st->off_slot = 3 * un;
    st->off_logit_idx = 4 * un, st->off_seq_off = 5 * un, st->off_items = 6 * un;
    size_t max_items = un * (size_t)((group + 3) / 4 + 1);
    st->off_sample = st->off_items + 4 * max_items;
    st->off_blocks = st->off_sample + 4 * un;
    if (n < 1 || st->off_blocks > cap) return -1;
    int32_t *tok = buf + st->off_tokens, *pos = buf + st->off_pos, *rseq = buf + st->off_row_seq;
    int32_t *slot = buf + st->off_slot, *lidx = buf + st->off_logit_idx;
    int32_t *soff = buf + st->off_seq_off, *items = buf + st->off_items;
    /* Pass 1: the sequences (by their first row) and each one's last position this step. The
     * first rows live in slot's words and the last positions in lidx's until those are written. */
    int32_t *frow = slot, *seq_last = lidx;
    int nseq = 0;
    for (int r = 0; r < n; r++) {
        int si = -1;
        if (r > 0 && rows[r - 1].seq == rows[r].seq) {
            si = rseq[r - 1]; /* rows of one context are usually adjacent */
        } else {
            for (int i = nseq - 1; i >= 0 && si < 0; i--)
                if (rows[frow[i]].seq == rows[r].seq) si = i;
            if (si < 0) {
                si = nseq++;
                frow[si] = r;
                seq_last[si] = rows[r].pos;
            }
        }
        rseq[r] = si;
        if (rows[r].pos > seq_last[si]) seq_last[si] = rows[r].pos;
    }
    /* Page tables up to each sequence's last position. */
    size_t nb = 0;
    for (int s = 0; s < nseq; s++) {
        const struct model_dev_row *fr = &rows[frow[s]];
        int pages = seq_last[s] / RTC_KV_BLOCK + 1;
        if (pages > fr->nblocks || st->off_blocks + nb + (size_t)pages > cap) return -1;
        soff[s] = (int32_t)nb;
        memcpy(buf + st->off_blocks + nb, fr->blocks, (size_t)pages * sizeof *buf);
        nb += (size_t)pages;
        if (pages > st->max_pages) st->max_pages = pages;
    }
    st->nseq = nseq;
    st->words = st->off_blocks + nb;
    /* Per row: token, position, slot; the rows wanting logits. */
    const int32_t *blocks = buf + st->off_blocks;
    for (int r = 0; r < n; r++) {
        tok[r] = rows[r].token;
        pos[r] = rows[r].pos;
    }
    for (int r = 0; r < n; r++) { /* frow and seq_last are no longer needed */
        int p = rows[r].pos;
        slot[r] = blocks[soff[rseq[r]] + p / RTC_KV_BLOCK] * RTC_KV_BLOCK + p % RTC_KV_BLOCK;
    }
    /* The logit rows: those the host wants (copied back), then those only sampled; each with
     * its sampling parameters (greedy for a row not sampled: drawn, never read). */
    struct rtc_sample_param *sp = (struct rtc_sample_param *)(buf + st->off_sample);
    for (int pass = 0; pass < 2; pass++)
        for (int r = 0; r < n; r++) {
            if (pass == 0 ? !rows[r].logits : rows[r].logits || !rows[r].sample) continue;
            const struct model_sample *ms = rows[r].sample;
            struct rtc_sample_param q = {0.0f, 1.0f, 0.0f, 0};
            if (ms) q = (struct rtc_sample_param){ms->temperature, ms->top_p, ms->u, ms->top_k};
            memcpy(&sp[st->nlogits], &q, sizeof q);
            st->nsample += ms != NULL;
            lidx[st->nlogits++] = r;
            if (pass == 0) st->nhost++;
        }
    /* Runs of consecutive positions of one sequence, then items. */
    int maxrun = 1;
    for (int r = 0, run = 1; r < n; r++, run++) {
        if (r + 1 == n || rseq[r + 1] != rseq[r] || pos[r + 1] != pos[r] + 1) {
            if (run > maxrun) maxrun = run;
            run = 0;
        }
    }
    st->qpw = maxrun > 1 ? 4 : 1;
    int slots = 4 * st->qpw;
    int rows_per = group <= slots ? slots / group : 1, heads_per = group <= slots ? group : slots;
    for (int r = 0; r < n;) {
        int end = r + 1;
        while (end < n && rseq[end] == rseq[r] && pos[end] == pos[end - 1] + 1)
            end++;
        for (int t = r; t < end; t += rows_per) {
            int nr = end - t < rows_per ? end - t : rows_per;
            for (int g0 = 0; g0 < group; g0 += heads_per) {
                if ((size_t)st->nitems >= max_items) return -1;
                int32_t *it = items + 4 * (size_t)st->nitems++;
                it[0] = t, it[1] = nr, it[2] = g0,
                it[3] = group - g0 < heads_per ? group - g0 : heads_per;
            }
        }
        r = end;
    }
    /* Splits: more blocks when the items alone leave the GPU idle and sequences are long. */
    int base = st->nitems * kv_heads, ns = 1;
    if (base < target_blocks) ns = (target_blocks + base - 1) / base;
    if (ns > st->max_pages / 4) ns = st->max_pages / 4;
    if (ns > RTC_ATTN_MAX_SPLIT) ns = RTC_ATTN_MAX_SPLIT;
    if (ns > part_rows / n) ns = part_rows / n;
    st->nsplit = ns < 1 ? 1 : ns;
    return 0;
}
