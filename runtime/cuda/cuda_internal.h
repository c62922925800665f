/* cuda_internal: what the .cu files of runtime/cuda share and nobody outside them sees: the check
 * macros (the error funnel: every CUDA, cuBLAS and NCCL call goes through one of them, which logs
 * the call with file:line and returns an rtc_status) and the per-GPU context. */
#ifndef ORP_CUDA_INTERNAL_H
#define ORP_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_backend.h"

extern "C" {
#include "log.h"
}

/* ---- Error funnel ------------------------------------------------------------------------- */

/* Logs the failed call with file:line (log_error records where the macro was expanded) and
 * returns an rtc_status from the enclosing function. For the request path: never exits. */
#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) {                                                                 \
            log_error("CUDA: %s failed: %s (%s)", #call, cudaGetErrorName(err_),                   \
                      cudaGetErrorString(err_));                                                   \
            return err_ == cudaErrorMemoryAllocation ? RTC_ENOMEM : RTC_ECUDA;                     \
        }                                                                                          \
    } while (0)

/* For calls whose failure the caller cannot return (cleanup, void functions): logged with
 * file:line, then carried on. */
#define CUDA_LOG(call)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) log_error("CUDA: %s failed: %s", #call, cudaGetErrorString(e_));    \
    } while (0)

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t st_ = (call);                                                               \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                        \
            log_error("cuBLAS: %s failed: %s (%s)", #call, cublasGetStatusName(st_),               \
                      cublasGetStatusString(st_));                                                 \
            return st_ == CUBLAS_STATUS_ALLOC_FAILED ? RTC_ENOMEM : RTC_ECUBLAS;                   \
        }                                                                                          \
    } while (0)

/* A launch error (bad configuration, no kernel image for this GPU) is reported at once; a fault
 * while the kernel runs comes back from the next synchronizing call. */
#define LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

#define ARG_CHECK(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            log_error("rtc: bad argument: %s", #cond);                                             \
            return RTC_EINVAL;                                                                     \
        }                                                                                          \
    } while (0)

struct rtc_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *scratch; /* BF16 copy of the activations for rtc_gemm_bf16; grows, never shrinks */
    size_t scratch_bytes;
    /* cuBLAS's workspace, given to it at creation: without one it may cudaMalloc on a later call
     * (the forward pass allocates nothing after warm-up). */
    void *cublas_ws;
};

/* The workspace NVIDIA recommends for Hopper (32 MiB). */
#define RTC_CUBLAS_WS_BYTES (32u << 20)

/* rtc_matvec_bf16 with BF16 activations (the forward pass's decode GEMMs at one row). */
int rtc_matvec_bf16_xbf16(struct rtc_ctx *ctx, float *d_y, const uint16_t *d_w, const uint16_t *d_x,
                          int rows, int cols);

/* The stream of a context (for the other .cu files of this directory). */
static inline cudaStream_t rtc_stream(const struct rtc_ctx *ctx)
{
    return ctx->stream;
}

#endif
