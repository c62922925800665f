/* rtc_model: the CUDA backend of model.h. It loads a checkpoint onto one or more GPUs as BF16
 * (tensor-parallel shards, Megatron's layout), sizes the paged KV cache from the memory left,
 * and runs model_forward_batch's steps: one thread per rank, each with its own device, stream,
 * cuBLAS handle and communicator; one all-reduce after attention and one after the MLP, the same
 * code at TP 1. A watchdog turns a stuck step or an NCCL error into ncclCommAbort and a clean
 * exit. The engine drives it through model.h (model_new_dev); this header is for the server's
 * loader, the tests and the benchmark. */
#ifndef ORP_RTC_MODEL_H
#define ORP_RTC_MODEL_H

#include <stddef.h>

#include "model.h"
#include "rtc_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

struct rtc_model_opts {
    int tp;
    enum rtc_coll_kind coll; /* NCCL: tp must equal the GPUs visible; DEVICE: ranks share GPUs */
    double mem_fraction;     /* of each GPU's memory this replica may use (KV cache included) */
    int max_rows;            /* rows per device step (longer batches run in pieces) */
    int max_logits;          /* rows with logits per device step */
    int kv_blocks_max;       /* 0: every block the memory holds */
    int step_timeout_ms;     /* a step running longer is stuck: the watchdog aborts */
    /* Called by the watchdog after it aborted the communicators; NULL: log and _exit(1) (the
     * agent restarts the replica). Tests set it to watch an abort without dying. */
    void (*on_abort)(void *arg, const char *why);
    void *abort_arg;
};

/* tp 1, NCCL, fraction 0.9, 2112 rows (a 2048-token prompt chunk and a batch of 64), 64 logit
 * rows, 120 s timeout. */
void rtc_model_opts_default(struct rtc_model_opts *o);

struct rtc_model;

/* Loads dir's config.json and weights onto the GPUs, allocates the KV cache and every buffer,
 * and runs a warm-up step, after which nothing is allocated on the device. Logs the load time and
 * the KV cache's size. NULL with err. */
struct rtc_model *rtc_model_open(const char *dir, const struct rtc_model_opts *o, char *err,
                                 size_t errlen);
/* The model.h model run by rm (which it takes: model_free frees it). NULL with err. */
struct model *rtc_model_as_model(struct rtc_model *rm, char *err, size_t errlen);
void rtc_model_free(struct rtc_model *rm); /* accepts NULL; only for one never wrapped */

struct rtc_model_info {
    double load_s;            /* from opening the checkpoint to the end of the warm-up */
    double upload_bytes;      /* weights copied to the GPUs, every rank */
    double step_weight_bytes; /* read by rank 0 per decode step (rtc_plan_weight_bytes) */
    int kv_blocks;
    double kv_bytes; /* every rank */
    int tp, ngpus;
};
void rtc_model_get_info(const struct rtc_model *rm, struct rtc_model_info *out);

/* Device-to-device bandwidth on rank 0's GPU (rtc_measure_d2d). */
int rtc_model_measure_d2d(struct rtc_model *rm, size_t bytes, int reps, double *gbps);

/* Free and total memory of rank 0's GPU now. */
int rtc_model_mem_info(struct rtc_model *rm, size_t *free_bytes, size_t *total_bytes);

/* Changes the watchdog's step timeout (tests shorten it once the warm-up has run). */
void rtc_model_set_step_timeout(struct rtc_model *rm, int ms);

/* Test hook: rank `rank` sleeps ms before its first all-reduce of the next step (a stuck rank,
 * for the watchdog test). */
void rtc_model_debug_stall(struct rtc_model *rm, int rank, int ms);

#ifdef __cplusplus
}
#endif

#endif
