#!/usr/bin/env bash
# ops/gpu/run.sh: everything OpenRunPod needs from a real GPU machine (H100/H200), in one command
# of at most 10 minutes, with every result under OUTDIR:
#   1 build   configure with -DORP_CUDA=ON (sm_90a), build, ctest; test_cuda_kernels must RUN
#             (a skip, 77, on a GPU machine is a failure)
#   2 gpucheck ops/gpu/gpucheck.cu (nvcc -arch=sm_90a): cuBLAS BF16 GEMM and NCCL all-reduce (one
#             rank) against the CPU; device-to-device copy and BF16 8192^3 GEMM ceilings
#   3 nvml    the agent's own NVML inventory (ops/gpu/nvml_inventory.c over agent/inventory.c) and
#             `nvidia-smi -q -x` as JSON, cross-checked by UUID
#   4 hf      ops/gpu/hf_golden.py: checkpoints and float32 logits from transformers' own classes,
#             token ids from the `tokenizers` package; then test_rt_hf_golden against them
#   5 gpu_bench ops/bench/gpu.sh on the same build: the CUDA backend's correctness (kernels, logits
#             vs the CPU and these HF goldens, TP 1/2/4), memcheck, and the Llama-3-8B benchmark
# OUTDIR ends with at most 8 files (what the device tool brings back): summary.json, run.log,
# ctest.log, gpucheck.json, nvml-agent.json, nvml-smi.json, gpu-bench.json, hf-golden.tar.gz
# (nvidia-smi -q -x itself stays in work: nvml-smi.json carries it whole, as "raw").
# The build and scratch files live in OUTDIR/work, removed at the end (--keep-work keeps them).
# Then, in a checkout: ops/gpu/import-fixtures.sh OUTDIR.
#
#   ops/gpu/run.sh [--cpu-dry-run] [--build-dir DIR] [--keep-work] OUTDIR
#
# --cpu-dry-run (implied when nvidia-smi finds no GPU) runs every part that needs no GPU (build,
# ctest, nvcc compile, the NVML tool's build, hf_golden.py with its torch STAND-IN when transformers
# is missing) and writes "skipped: no GPU" for the rest; its archive is marked "standin" and
# import-fixtures.sh refuses it. --build-dir DIR builds in DIR (configured there with
# -DORP_CUDA=ON when it has no CMakeCache.txt) instead of a fresh one in OUTDIR/work, so a second
# device call on the same warm machine builds only what changed (e.g. `--build-dir build-gpu`,
# which git ignores). Exit 0 when every step that ran passed.
#
# Time: every step runs under timeout(1) (steps.sh), capped and bounded by one deadline 585 s
# after the start, so the summary is written inside the device tool's 10 minutes even when a step
# hangs; a step that times out is "failed" with its limit. Nothing here uses the network
# (Hugging Face's libraries are told to stay offline).
set -euo pipefail

usage() { echo "usage: $0 [--cpu-dry-run] [--build-dir DIR] [--keep-work] OUTDIR" >&2; exit 2; }
DRY=0 KEEP=0 BUILD="" OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --keep-work) KEEP=1 ;;
    --build-dir) [ $# -ge 2 ] || usage; BUILD=$(realpath "$2"); shift ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) [ -z "$OUTDIR" ] || usage; OUTDIR=$1 ;;
  esac
  shift
done
[ -n "$OUTDIR" ] || usage
mkdir -p "$OUTDIR"
OUTDIR=$(realpath "$OUTDIR")
SRC=$(realpath "$(dirname "$0")/../..")
WORK=$OUTDIR/work
rm -rf "$WORK"
mkdir -p "$WORK"
[ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT
LOG=$OUTDIR/run.log
: >"$LOG"
STEPS=$WORK/steps.tsv
: >"$STEPS"
T0=$(date +%s)
TAG=run.sh
# shellcheck source=ops/gpu/steps.sh
. "$SRC/ops/gpu/steps.sh"
DEADLINE=$((T0 + 585)) RESERVE=15
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

# ---- the machine ----
GPU=1
if [ "$DRY" = 1 ]; then
  GPU=0
elif ! nvidia-smi -L >>"$LOG" 2>&1; then
  GPU=0
  log "no GPU found (nvidia-smi -L failed): running as --cpu-dry-run"
fi
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
# A python with torch: the device image's python3 (transformers too), else Debian's.
PY=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import torch' 2>/dev/null; then PY=$(command -v "$p"); break; fi
done
log "source $SRC, commit $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo unknown), gpu=$GPU, nvcc=$NVCC, python=${PY:-none}"
find_nccl # before the configure, so the build links NCCL where the machine has it as a wheel

# The build's libraries. A bare CUDA image may lack them: ops/gpu/fetch-deps.sh saves Debian
# bookworm's packages in .deps/ (carry it), unpacked here into a private prefix, never into /.
if ! pkg-config --exists jansson libmicrohttpd libpcre2-8 libargon2 libcurl 2>/dev/null && [ -d "$SRC/.deps" ]; then
  P=$WORK/deps
  for f in "$SRC"/.deps/*.deb; do dpkg -x "$f" "$P"; done
  export PKG_CONFIG_PATH=$P/usr/lib/x86_64-linux-gnu/pkgconfig:$P/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export CMAKE_PREFIX_PATH=$P/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export LD_LIBRARY_PATH=$P/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LIBRARY_PATH=$LD_LIBRARY_PATH CPATH=$P/usr/include:$P/usr/include/postgresql
  # Debian's .pc files name prefix=/usr: point them at the private prefix, and drop
  # Requires.private (for static links only; those packages are not carried).
  sed -i -e "s|^prefix=/usr|prefix=$P/usr|" -e "/^Requires.private:/d" "$P"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
  log "libraries from .deps/ unpacked into $P"
fi

# ---- 1 build and ctest ----
[ -n "$BUILD" ] || BUILD=$WORK/build
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  STEP_CAP=120 step configure cmake -S "$SRC" -B "$BUILD" -DORP_CUDA=ON -DORP_WERROR=ON -DCMAKE_BUILD_TYPE=Release
else
  record configure ok "reused $BUILD"
fi
if ok configure; then STEP_CAP=300 step build cmake --build "$BUILD" -j"$NCPU"; else record build skipped "configure failed"; fi
if ok build; then
  # Everything ctest has (the controller's tests need PostgreSQL's initdb: informational), then
  # the CUDA and runtime tests, which must pass.
  rc=0
  # (-LE gpu: the CUDA backend's GPU tests run once, in step 5.)
  # Informational and the least needed: at most 120 s (a hung test is killed with it).
  timeout -k 10 "$(step_left 120)" ctest --test-dir "$BUILD" -j"$NCPU" -LE gpu --output-on-failure --timeout 100 \
    >"$OUTDIR/ctest.log" 2>&1 || rc=$?
  record ctest_all "$([ $rc -eq 0 ] && echo ok || echo failed)" "$(grep -E 'tests passed|tests failed' "$OUTDIR/ctest.log" | tail -1) (exit $rc)"
  STEP_CAP=150 step ctest_cuda_runtime ctest --test-dir "$BUILD" -j"$NCPU" --output-on-failure --timeout 120 \
    -R '^(test_cpu_ref|test_cuda_kernels|test_rt_|test_rtc_)'
  if [ "$GPU" = 1 ]; then
    rc=0
    timeout -k 10 "$(step_left 120)" "$BUILD/tests/unit/cuda/test_cuda_kernels" >>"$LOG" 2>&1 || rc=$?
    case $rc in
      0) record cuda_kernels_ran ok "test_cuda_kernels ran on the GPU" ;;
      77) record cuda_kernels_ran failed "test_cuda_kernels skipped (77) on a GPU machine" ;;
      124|137) record cuda_kernels_ran failed "test_cuda_kernels timed out" ;;
      *) record cuda_kernels_ran failed "test_cuda_kernels exit $rc" ;;
    esac
  else
    record cuda_kernels_ran skipped "skipped: no GPU"
  fi
else
  record ctest_all skipped "build failed"
  : >"$OUTDIR/ctest.log"
fi

# ---- 2 gpucheck ----
STEP_CAP=120 step gpucheck_build "$NVCC" -O2 -arch=sm_90a -lineinfo -Xcompiler=-Wall,-Wextra --Werror=all-warnings \
  -o "$WORK/gpucheck" "$SRC/ops/gpu/gpucheck.cu" -lcublas "${NCCL_FLAGS[@]}"
if [ "$GPU" = 1 ] && ok gpucheck_build; then
  rc=0
  timeout -k 10 "$(step_left 90)" "$WORK/gpucheck" >"$OUTDIR/gpucheck.json" 2>>"$LOG" || rc=$?
  cat "$OUTDIR/gpucheck.json" >>"$LOG"
  record gpucheck "$([ $rc -eq 0 ] && echo ok || echo failed)" "exit $rc"
else
  echo '{"skipped": "no GPU"}' >"$OUTDIR/gpucheck.json"
  record gpucheck skipped "skipped: no GPU"
fi

# ---- 3 NVML inventory ----
if ok build; then
  # shellcheck disable=SC2046 # pkg-config's flags are meant to split into words
  STEP_CAP=60 step nvml_build cc -std=gnu17 -O2 -Wall -Wextra -Wshadow -Werror -D_GNU_SOURCE \
    -I"$SRC/agent" -I"$SRC/common" $(pkg-config --cflags jansson) -o "$WORK/nvml_inventory" \
    "$SRC/ops/gpu/nvml_inventory.c" "$BUILD/agent/liborp_agent_core.a" "$BUILD/common/liborp_common.a" \
    $(pkg-config --libs jansson libmicrohttpd libcurl) -lcrypto -lpthread -lm -ldl
else
  record nvml_build skipped "build failed"
fi
if ok nvml_build; then
  rc=0
  timeout -k 5 "$(step_left 30)" "$WORK/nvml_inventory" >"$OUTDIR/nvml-agent.json" 2>>"$LOG" || rc=$?
  if [ "$GPU" = 1 ]; then
    record nvml_agent "$([ $rc -eq 0 ] && echo ok || echo failed)" "exit $rc"
  else
    record nvml_agent skipped "skipped: no GPU (the tool ran: exit $rc, no devices)"
  fi
else
  echo '{"skipped": "not built"}' >"$OUTDIR/nvml-agent.json"
fi
if [ "$GPU" = 1 ]; then
  rc=0
  { timeout 30 nvidia-smi -q -x >"$WORK/nvidia-smi-q.xml" && "${PY:-python3}" "$SRC/ops/gpu/smi_to_json.py" \
      <"$WORK/nvidia-smi-q.xml" >"$OUTDIR/nvml-smi.json"; } 2>>"$LOG" || rc=$?
  # XIDs are in the kernel log, where it can be read.
  { echo "== nvidia-smi topo -m"; timeout 20 nvidia-smi topo -m; echo "== nvidia-smi nvlink -s"; timeout 20 nvidia-smi nvlink -s;
    echo "== Xid lines in dmesg"; timeout 10 dmesg 2>&1 | grep -i xid || echo "(none readable)"; } >>"$LOG" 2>&1 || true
  record nvml_smi "$([ $rc -eq 0 ] && echo ok || echo failed)" "exit $rc"
  if [ $rc -eq 0 ] && ok nvml_agent; then
    STEP_CAP=30 step nvml_crosscheck "${PY:-python3}" -c '
import json, sys
a = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))
ua = sorted(d["uuid"] for d in a["devices"] if d["kind"] == "gpu")
us = sorted(g["uuid"] for g in s["gpus"])
print("agent", ua, "nvidia-smi", us)
assert ua == us, "the agent and nvidia-smi see different GPUs"
for d in a["devices"]:
    g = next(g for g in s["gpus"] if g["uuid"] == d["uuid"])
    assert d["model"] == g["name"], (d["model"], g["name"])
    mib = int(g["memory_total"].split()[0])
    assert abs(d["memory_mib"] - mib) <= 1024, (d["memory_mib"], mib)
' "$OUTDIR/nvml-agent.json" "$OUTDIR/nvml-smi.json"
  fi
else
  echo '{"skipped": "no GPU"}' >"$OUTDIR/nvml-smi.json"
  record nvml_smi skipped "skipped: no GPU"
fi

# ---- 4 Hugging Face goldens ----
HF=$WORK/hf
if [ -z "$PY" ]; then
  record hf_golden failed "no python with torch"
elif ! ok build; then
  record hf_golden skipped "build failed (make-model is needed)"
else
  if "$PY" -c 'import transformers' 2>/dev/null; then
    STEP_CAP=150 step hf_golden env PYTHONUNBUFFERED=1 "$PY" "$SRC/ops/gpu/hf_golden.py" --orp-runtime "$BUILD/runtime/orp-runtime" --out "$HF"
  elif [ "$GPU" = 1 ]; then
    record hf_golden failed "transformers is missing on the GPU machine"
  else
    STEP_CAP=150 step hf_golden env PYTHONUNBUFFERED=1 "$PY" "$SRC/ops/gpu/hf_golden.py" --orp-runtime "$BUILD/runtime/orp-runtime" --out "$HF" --standin
  fi
  if ok hf_golden; then
    tar -C "$HF" -czf "$OUTDIR/hf-golden.tar.gz" .
    STEP_CAP=60 step hf_check env ORP_HF_GOLDEN_DIR="$HF" "$BUILD/tests/unit/runtime/test_rt_hf_golden"
  fi
fi

# ---- 5 the CUDA backend: correctness, memcheck, benchmark (ops/bench/gpu.sh) ----
if ok build && [ "$GPU" = 1 ]; then
  HFARG=()
  if ok hf_golden; then HFARG=(--hf "$HF"); fi
  # Its steps fit in what is left of the device tool's 10 minutes: its own deadline 5 s before
  # this step's box (DEADLINE - RESERVE), so it writes gpu-bench.json before it could be killed.
  step gpu_bench env ORP_GPU_DEADLINE=$((DEADLINE - RESERVE - 5)) "$SRC/ops/bench/gpu.sh" --build-dir "$BUILD" \
    "${HFARG[@]}" --log "$LOG" "$OUTDIR"
elif ok build; then
  echo '{"skipped": "no GPU"}' >"$OUTDIR/gpu-bench.json"
  record gpu_bench skipped "skipped: no GPU"
else
  echo '{"skipped": "build failed"}' >"$OUTDIR/gpu-bench.json"
  record gpu_bench skipped "build failed"
fi

# ---- summary ----
log "done in $(($(date +%s) - T0)) s"
"${PY:-python3}" - "$STEPS" "$OUTDIR" "$GPU" "$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)" \
  "$(git -C "$SRC" status --porcelain 2>/dev/null | grep -qv '^??' && echo dirty || echo clean)" "$(($(date +%s) - T0))" <<'EOF'
import datetime, json, os, socket, sys
steps_path, out, gpu, commit, tree, secs = sys.argv[1:7]
steps = {}
for line in open(steps_path):
    name, status, detail = line.rstrip("\n").split("\t")
    steps[name] = {"status": status, "detail": detail}
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception as e:
        return {"unreadable": str(e)}
g = load("gpucheck.json")
hf = None
if os.path.exists(os.path.join(out, "hf-golden.tar.gz")):
    import tarfile
    with tarfile.open(os.path.join(out, "hf-golden.tar.gz")) as t:
        m = json.load(t.extractfile("./MANIFEST.json"))
    hf = {k: m.get(k) for k in ("generator", "transformers_version", "torch_version", "tokenizers")}
    hf["variants"] = [v["name"] for v in m["variants"]]
s = {
    "mode": "gpu" if gpu == "1" else "cpu-dry-run",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "commit": commit, "tree": tree, "host": socket.gethostname(), "seconds": int(secs),
    "gpu": g.get("gpu"), "cuda_driver": g.get("cuda_driver"),
    "driver_version": load("nvml-smi.json").get("driver_version"),
    "ceilings": None if "skipped" in g else {
        "copy_d2d_gb_per_s": g.get("copy_d2d", {}).get("gb_per_s_read_plus_written"),
        "gemm_bf16_8192_tflops": g.get("gemm_bf16_8192", {}).get("tflops")},
    "hf": hf, "steps": steps,
    "ok": all(v["status"] != "failed" for k, v in steps.items() if k != "ctest_all"),
}
json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps({k: s[k] for k in ("mode", "ok", "ceilings")}))
for k, v in steps.items():
    print("  %-20s %-8s %s" % (k, v["status"], v["detail"]))
sys.exit(0 if s["ok"] else 1)
EOF
