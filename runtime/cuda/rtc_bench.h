/* rtc_bench: `orp-runtime gpu-bench` (see rtc_bench.c): the CUDA backend's benchmark on a Llama-3-8B-
 * shaped checkpoint it can also make. */
#ifndef ORP_RTC_BENCH_H
#define ORP_RTC_BENCH_H

/* argv[first..] are the options; returns the exit status. */
int rtc_bench_main(int argc, char **argv, int first);

#endif
