# ops/gpu/steps.sh: the step journal that ops/gpu/run.sh and ops/bench/gpu.sh keep (sourced, not
# run). The caller sets TAG (its name, for log lines), LOG (the log file) and STEPS (a TSV of
# name, status, detail: the "steps" of its JSON summary); SRC is the checkout.

NCPU=$(nproc)
[ "$NCPU" -le 16 ] || NCPU=16

log() { echo "$TAG: $*" | tee -a "$LOG"; }
# record NAME STATUS DETAIL: one line of the summary's "steps".
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$STEPS"; log "$1: $2${3:+ ($3)}"; }
# Every step is time-boxed: the caller sets DEADLINE (epoch seconds: when everything, its own
# summary included, must be done) and RESERVE (seconds kept for what it writes after the steps,
# default 20). step_left [CAP] prints the seconds a step may take now (at most CAP).
step_left() {
  local left=$((${DEADLINE:-$(($(date +%s) + 86400))} - $(date +%s) - ${RESERVE:-20}))
  if [ -n "${1:-}" ] && [ "$1" -lt "$left" ]; then left=$1; fi
  echo "$left"
}
# step NAME CMD...: runs CMD (an executable, not a shell function) with its output in the log,
# under timeout(1) (its whole process group killed at step_left ${STEP_CAP}), and records ok,
# failed or timed out with the seconds. Always returns 0 (the callers run under set -e); ok NAME
# says how it went. STEP_CAP=N step ...: at most N seconds for this one.
step() {
  local name=$1 t=$SECONDS rc=0 left
  shift
  left=$(step_left "${STEP_CAP:-}")
  if [ "$left" -lt 5 ]; then record "$name" failed "not started: ${left} s left before the deadline"; return 0; fi
  log "== $name (at most $left s): $*"
  timeout -k 10 "$left" "$@" >>"$LOG" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then record "$name" ok "$((SECONDS - t)) s"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then record "$name" failed "timed out after $((SECONDS - t)) s (limit $left s)"
  else record "$name" failed "exit $rc after $((SECONDS - t)) s"; fi
  return 0
}
ok() { grep -q "^$1	ok	" "$STEPS"; }

# NCCL: the toolkit's own copy, else the pip wheel's (nvidia-nccl-cu13 on the device image) as
# NCCL_ROOT, which CMake's find (runtime/cuda/CMakeLists.txt) and NCCL_FLAGS (for a plain nvcc
# link: the wheel has only libnccl.so.2) use. Needs PY (a python3) when the wheel is the source.
NCCL_FLAGS=(-lnccl)
find_nccl() {
  local nr=""
  if ls /usr/local/cuda/lib64/libnccl.so* >/dev/null 2>&1; then return 0; fi
  nr=$("${PY:-python3}" -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
  if [ -n "$nr" ] && [ -d "$nr/lib" ]; then
    export NCCL_ROOT=$nr LD_LIBRARY_PATH=$nr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    NCCL_FLAGS=(-I"$nr/include" -L"$nr/lib")
    if [ -e "$nr/lib/libnccl.so" ]; then NCCL_FLAGS+=(-lnccl); else NCCL_FLAGS+=(-l:libnccl.so.2); fi
    log "NCCL from $nr"
  else
    log "NCCL: none in /usr/local/cuda/lib64 nor as a python wheel (the build has the device collective only)"
  fi
}
