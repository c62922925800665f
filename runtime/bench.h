/* bench: `orp-runtime bench`, the runtime's own throughput measurement: prefill and decode tokens
 * per second of a checkpoint at batch sizes 1…64, through the same model_forward_batch the
 * scheduler calls, next to the machine's memory-copy bandwidth measured in the same run and the
 * decode roofline it implies (every weight byte is read once per step). */
#ifndef ORP_RT_BENCH_H
#define ORP_RT_BENCH_H

/* Parses argv[first..] as bench's options, runs, prints a table (or JSON lines with --json).
 * Returns the process exit status (0; 1 when the model cannot be loaded; 2 on a bad command
 * line). */
int rt_bench(int argc, char **argv, int first);

#endif
