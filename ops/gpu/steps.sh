# ops/gpu/steps.sh: the step journal that ops/gpu/run.sh and ops/bench/gpu.sh keep (sourced, not
# run). The caller sets TAG (its name, for log lines), LOG (the log file) and STEPS (a TSV of
# name, status, detail: the "steps" of its JSON summary); SRC is the checkout.

NCPU=$(nproc)
[ "$NCPU" -le 16 ] || NCPU=16

log() { echo "$TAG: $*" | tee -a "$LOG"; }
# record NAME STATUS DETAIL: one line of the summary's "steps".
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$STEPS"; log "$1: $2${3:+ ($3)}"; }
# step NAME CMD...: runs CMD with its output in the log, records ok or failed and the seconds.
# Always returns 0 (the callers run under set -e); ok NAME says how it went.
step() {
  local name=$1 t=$SECONDS rc=0
  shift
  log "== $name: $*"
  "$@" >>"$LOG" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then record "$name" ok "$((SECONDS - t)) s"; else record "$name" failed "exit $rc after $((SECONDS - t)) s"; fi
  return 0
}
ok() { grep -q "^$1	ok	" "$STEPS"; }
