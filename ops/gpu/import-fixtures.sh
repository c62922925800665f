#!/usr/bin/env bash
# ops/gpu/import-fixtures.sh OUTDIR: takes a GPU run's results (ops/gpu/run.sh OUTDIR on an
# H100/H200) into the checkout: the Hugging Face goldens into tests/golden/hf/ (replacing what is
# there), the NVML dumps into tests/fixtures/nvml-<gpu>-{agent,smi}.json, and one row of
# ceilings (GPU, driver, date, commit) and one of the CUDA backend's benchmark appended to
# docs/benchmarks.md. It refuses anything but a
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
text = open(bench).read()

def add_row(text, hdr, table_head, intro, row):
    """Appends row to the table of section hdr (made, with intro and table_head, when missing),
    at the end of that section: other sections may follow it."""
    if hdr not in text:
        text = text.rstrip("\n") + "\n\n" + hdr + "\n"
    start = text.index(hdr) + len(hdr)
    nxt = text.find("\n## ", start)
    body, rest = (text[start:], "") if nxt < 0 else (text[start:nxt], text[nxt:])
    if table_head.split("\n")[0] not in body:
        body = body.rstrip("\n") + "\n\n" + intro + "\n\n" + table_head + "\n"
    body = body.rstrip("\n") + "\n" + row + "\n"
    return text[:start] + body + rest

row = "| %s | %s | CUDA %s | %s | %s | %.0f | %.0f | %s |" % (
    s["date"][:10], g["gpu"], g["cuda_driver"], s.get("driver_version") or "?", s["commit"][:10],
    g["copy_d2d"]["gb_per_s_read_plus_written"], g["gemm_bf16_8192"]["tflops"],
    "cuBLAS GEMM err %.2g of tol %.2f; NCCL %s exact" % (
        g["gemm_check"]["max_abs_err"], g["gemm_check"]["worst_of_tolerance"], g["nccl"]))
text = add_row(text, "## GPU ceilings (issue 3)",
    "| date | GPU | CUDA (driver API) | driver | commit | D2D copy GB/s | BF16 GEMM TFLOP/s | checks |\n"
    "|---|---|---|---|---|---:|---:|---|",
    "`ops/gpu/run.sh OUTDIR` on the device machine, then `ops/gpu/import-fixtures.sh OUTDIR`. "
    "Copy: (bytes read + written) / time of a 1 GiB cudaMemcpy D2D, best of 10 (cudaEvent). "
    "GEMM: cublasGemmEx BF16, FP32 compute, 8192^3 on random data, mean of 20 after 5 "
    "warm-ups.", row)
print("import-fixtures: " + row)

# The CUDA backend's benchmark (ops/bench/gpu.sh, step 5 of run.sh), when it ran.
gb = json.load(open(os.path.join(out, "gpu-bench.json")))
b = gb.get("bench")
if b:
    brow = "| %s | %s | %s | %.1f s | %.1f | %.1f | %.0f / %.0f / %.0f / %.0f | %.0f | %.1f %% |" % (
        gb["date"][:10], gb.get("gpu") or g["gpu"], gb["commit"][:10], b["load_s"],
        b["ttft_128_ms"], b["ttft_2048_ms"], *b["decode_tokens_per_s"], b["d2d_gbps"],
        100 * b["roofline_fraction"])
    text = add_row(text, "## CUDA backend: load, TTFT, decode, HBM roofline (issue 9)",
        "| date | GPU | commit | load | TTFT 128 ms | TTFT 2048 ms | decode tok/s b1 / 8 / 32 / 64 | D2D GB/s | roofline b1 |\n"
        "|---|---|---|---:|---:|---:|---|---:|---:|",
        "`ops/gpu/run.sh OUTDIR` (its step 5 is `ops/bench/gpu.sh`: `orp-runtime gpu-bench` on a "
        "Llama-3-8B-shaped random BF16 checkpoint, TP 1), then `ops/gpu/import-fixtures.sh "
        "OUTDIR`. Roofline: 15.01 GB of weights per decode step (lm_head in, embedding out) / the "
        "D2D bandwidth of the same run / the measured batch-1 step. Target >= 70 %.", brow)
    print("import-fixtures: " + brow)
open(bench, "w").write(text)
PYEOF

echo "import-fixtures: imported $(find "$SRC/tests/golden/hf/models" -mindepth 1 -maxdepth 1 -type d | wc -l) variants into tests/golden/hf, tests/fixtures/nvml-$SLUG-*.json"
echo "next: cmake --build BUILD && ctest --test-dir BUILD -R hf_golden --output-on-failure"
echo "      git add tests/golden/hf tests/fixtures docs/benchmarks.md && git commit"
