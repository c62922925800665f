#!/usr/bin/env bash
# ops/gpu/import-fixtures.sh OUTDIR: takes a GPU run's results (ops/gpu/run.sh OUTDIR on an
# H100/H200) into the checkout: the Hugging Face goldens into tests/golden/hf/ (replacing what is
# there), the NVML dumps into tests/fixtures/nvml-<gpu>-{agent,smi}.json, and one row of
# ceilings (GPU, driver, date, commit) appended to docs/benchmarks.md. It refuses anything but a
# complete GPU run whose goldens come from transformers (check_outputs.py --require-gpu): a
# --cpu-dry-run's stand-in goldens never enter tests/golden/. Commit afterwards by hand (it prints
# the commands), after ctest -R hf_golden passes on the imported files.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$(realpath "$1")
SRC=$(realpath "$(dirname "$0")/../..")
PY=python3
command -v "$PY" >/dev/null || PY=/usr/bin/python3
"$PY" "$SRC/ops/gpu/check_outputs.py" "$OUT" --require-gpu

rm -rf "$SRC/tests/golden/hf"
mkdir -p "$SRC/tests/golden/hf" "$SRC/tests/fixtures"
tar -C "$SRC/tests/golden/hf" -xzf "$OUT/hf-golden.tar.gz"
SLUG=$("$PY" -c 'import json,re,sys; g=json.load(open(sys.argv[1]))["gpu"]; print(re.sub(r"[^a-z0-9]+","-",g.lower()).strip("-"))' "$OUT/summary.json")
cp "$OUT/nvml-agent.json" "$SRC/tests/fixtures/nvml-$SLUG-agent.json"
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); d.pop("raw",None); json.dump(d,open(sys.argv[2],"w"),indent=1)' \
  "$OUT/nvml-smi.json" "$SRC/tests/fixtures/nvml-$SLUG-smi.json"

"$PY" - "$OUT" "$SRC/docs/benchmarks.md" <<'PYEOF'
import json, os, sys
out, bench = sys.argv[1:3]
s = json.load(open(os.path.join(out, "summary.json")))
g = json.load(open(os.path.join(out, "gpucheck.json")))
hdr = "## GPU ceilings (issue 3)"
text = open(bench).read()
row = "| %s | %s | CUDA %s | %s | %s | %.0f | %.0f | %s |" % (
    s["date"][:10], g["gpu"], g["cuda_driver"], s.get("driver_version") or "?", s["commit"][:10],
    g["copy_d2d"]["gb_per_s_read_plus_written"], g["gemm_bf16_8192"]["tflops"],
    "cuBLAS GEMM err %.2g of tol %.2f; NCCL %s exact" % (
        g["gemm_check"]["max_abs_err"], g["gemm_check"]["worst_of_tolerance"], g["nccl"]))
if hdr not in text:
    text = text.rstrip("\n") + "\n\n" + hdr + "\n"
if "| date | GPU |" not in text.split(hdr)[1]:
    text = text.rstrip("\n") + "\n\n" + (
        "`ops/gpu/run.sh OUTDIR` on the device machine, then `ops/gpu/import-fixtures.sh OUTDIR`. "
        "Copy: (bytes read + written) / time of a 1 GiB cudaMemcpy D2D, best of 10 (cudaEvent). "
        "GEMM: cublasGemmEx BF16, FP32 compute, 8192^3 on random data, mean of 20 after 5 "
        "warm-ups.\n\n"
        "| date | GPU | CUDA (driver API) | driver | commit | D2D copy GB/s | BF16 GEMM TFLOP/s | checks |\n"
        "|---|---|---|---|---|---:|---:|---|\n")
text = text.rstrip("\n") + "\n" + row + "\n"
open(bench, "w").write(text)
print("import-fixtures: " + row)
PYEOF

echo "import-fixtures: imported $(find "$SRC/tests/golden/hf/models" -mindepth 1 -maxdepth 1 -type d | wc -l) variants into tests/golden/hf, tests/fixtures/nvml-$SLUG-*.json"
echo "next: cmake --build BUILD && ctest --test-dir BUILD -R hf_golden --output-on-failure"
echo "      git add tests/golden/hf tests/fixtures docs/benchmarks.md && git commit"
