/* rtc_plan: the CUDA backend's decisions that need no GPU, in plain C so the CPU tests check them
 * (tests/unit/cuda/test_rtc_plan.c): how a tensor-parallel rank's shard is cut, whether a TP
 * degree fits the GPUs given, how many KV blocks the memory left after the weights holds, how a
 * batch becomes the attention's work items and splits, the RoPE frequencies (llama3 scaling
 * included), and how many bytes of weights a decode step reads (the roofline's numerator).
 * rtc_model.cu does what these say. */
#ifndef ORP_RTC_PLAN_H
#define ORP_RTC_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_backend.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How ranks talk: NCCL between GPUs (one rank per GPU, as NCCL requires), or the in-process
 * device collective (ranks may share a GPU: how TP > 1 is proven on one GPU). */
enum rtc_coll_kind { RTC_COLL_NCCL = 0, RTC_COLL_DEVICE };

/* One rank's cut of the model (Megatron's layout, as model.c's CPU shards): query heads
 * [q_head0, q_head0 + heads), KV heads [kv_first, kv_first + kv_heads) (replicated when there
 * are fewer KV heads than ranks), MLP rows [f0, f0 + ffn). */
struct rtc_shard {
    int heads, q_head0, kv_heads, kv_first, ffn, f0;
};
void rtc_plan_shard(const struct model_config *c, int tp, int rank, struct rtc_shard *s);

/* A layer's weights on one rank: the device tensors (slots) and the copies that fill them from
 * the checkpoint. Matrices go to the device as BF16, vectors (biases, norms) as F32. Fused
 * layouts: QKV is this rank's q rows, then its k rows, then its v rows ([(heads + 2 kv) * hd,
 * dim]); GU is its gate rows then its up rows ([2 ffn, dim]); O and DOWN are its columns of
 * o_proj ([dim, heads * hd]) and down_proj ([dim, ffn]). rtc_model.cu runs these copies onto
 * the GPU; tests/unit/cuda/test_rtc_pipeline.c runs them into host memory. */
enum rtc_wslot {
    RTC_W_QKV = 0,
    RTC_W_O,
    RTC_W_GU,
    RTC_W_DOWN,
    RTC_W_BQKV, /* Qwen2 */
    RTC_W_ATTN_NORM,
    RTC_W_FFN_NORM,
    RTC_W_QNORM, /* Qwen3 */
    RTC_W_KNORM,
    RTC_W_NSLOTS
};
struct rtc_copy {
    const char *suffix; /* after "model.layers.<l>." */
    int64_t d0, d1;     /* the shape config.json implies (d1 0: a vector) */
    int64_t r0, nr;     /* rows copied (a vector: elements) */
    int64_t c0, nc;     /* columns copied (a vector: 0, 1) */
    enum rtc_wslot slot;
    int64_t dst; /* element offset in the slot */
};
#define RTC_MAX_COPIES 16
/* The copies of one layer into out (RTC_MAX_COPIES); returns how many. */
int rtc_plan_layer_copies(const struct model_config *c, const struct rtc_shard *s,
                          struct rtc_copy *out);
/* Elements of a slot on this rank (0: the architecture has none). */
int64_t rtc_plan_slot_elems(const struct model_config *c, const struct rtc_shard *s,
                            enum rtc_wslot slot);
/* 1 when a slot holds a BF16 matrix, 0 for an F32 vector. */
int rtc_plan_slot_is_matrix(enum rtc_wslot slot);

/* 0 when tp ranks fit: tp divides the heads and the MLP, divides or is a multiple of the KV
 * heads, is at most RTC_MAX_RANKS, and with NCCL equals the GPUs visible (ngpus; NCCL refuses two
 * ranks on one GPU, and a replica given more GPUs than ranks would strand them). The device
 * collective needs one GPU at least. Else -1 with err. */
int rtc_plan_check_tp(const struct model_config *c, int tp, int ngpus, enum rtc_coll_kind coll,
                      char *err, size_t errlen);

/* Device rank of a rank: rank % ngpus. */
int rtc_plan_device_of(int rank, int ngpus);

/* Bytes of one KV block on one rank: k and v, BF16, every layer. */
size_t rtc_plan_block_bytes(const struct model_config *c, const struct rtc_shard *s);

/* KV blocks each of ranks_here ranks on one GPU may take: the budget fraction * total, less what
 * is in use once the weights and buffers are loaded (total - free_now), less reserve (what
 * cuBLAS, NCCL and the driver may still take), shared evenly. 0 when nothing is left. */
int64_t rtc_plan_kv_blocks(size_t total, size_t free_now, double fraction, size_t reserve,
                           size_t block_bytes, int ranks_here);

/* inv_freq[i] = theta^(-2i/hd) for i < hd/2 with Llama 3's scaling when c->rope_llama3 (long
 * wavelengths divided by factor, short ones kept, the band between interpolated), in double,
 * rounded to float: the same numbers the CPU model uses. */
void rtc_plan_inv_freq(const struct model_config *c, float *inv_freq);

/* Bytes of weights a decode step reads on one rank: every layer's matrices (BF16), biases and
 * norms, the final norm and the lm_head (rank 0 computes the logits; pass rank 0 for the
 * roofline at TP 1). The embedding table is not read (one row per token). */
double rtc_plan_weight_bytes(const struct model_config *c, const struct rtc_shard *s, int rank);

/* A step, packed into int32 words that one copy takes to the device. Offsets index buf. */
struct rtc_step {
    int n;       /* rows */
    int nseq;    /* distinct sequences */
    int nitems;  /* attention work items */
    int nlogits; /* rows that want logits or a sampled token (at most 2^31 / vocab) */
    int nhost;   /* of them, the first nhost want their logits on the host */
    int nsample; /* rows sampled on the device */
    int qpw;     /* query slots per warp: 1 (decode) or 4 (a run of positions) */
    int nsplit;  /* attention splits over the sequence */
    int max_pages;
    size_t words; /* words of buf used */
    size_t off_tokens, off_pos, off_row_seq, off_slot, off_logit_idx, off_seq_off, off_items,
        off_sample, off_blocks; /* off_sample: struct rtc_sample_param per logit row */
};

/* Words a step of up to max_rows rows needs over a pool of pool_blocks blocks, with query heads
 * grouped group to a KV head. */
size_t rtc_plan_step_words(int max_rows, int pool_blocks, int group);

/* Builds the step of rows (positions already resolved) into buf (cap words): per row its token,
 * position, sequence and KV slot (block * RTC_KV_BLOCK + offset); the logit rows (those wanting
 * logits on the host first, then those only sampled) with their sampling parameters; per
 * sequence the page table up to its last position this step; the attention items (runs of
 * consecutive positions of one sequence, rows * heads <= 4 * qpw); and nsplit: enough blocks to
 * fill target_blocks, at least 4 pages a split, at most RTC_ATTN_MAX_SPLIT, and at most
 * part_rows / n (the partials' buffer holds part_rows rows of every head). group: query heads
 * per KV head; kv_heads: this rank's. 0, or -1 when cap is too small or a position has no
 * block. */
int rtc_plan_step(const struct model_dev_row *rows, int n, int group, int kv_heads,
                  int target_blocks, int part_rows, int32_t *buf, size_t cap, struct rtc_step *st);

#ifdef __cplusplus
}
#endif

#endif
