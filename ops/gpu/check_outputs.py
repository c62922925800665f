#!/usr/bin/python3
"""check_outputs: that OUTDIR has the shape ops/gpu/run.sh promises, before anything is imported.

    ops/gpu/check_outputs.py OUTDIR [--require-gpu]

Checks the file set (at most 8 files, what the device tool brings back), summary.json's keys and
step statuses, gpucheck.json's fields on a GPU run, the NVML dumps, and hf-golden.tar.gz's layout
(MANIFEST.json, per variant config.json, model.safetensors and logits.safetensors with one
[len(prompt), vocab] F32 tensor per prompt). --require-gpu also demands a real GPU run whose
goldens come from transformers (import-fixtures.sh uses it). Exit 0 when all hold."""
import json
import os
import struct
import sys
import tarfile

FILES = ["summary.json", "run.log", "ctest.log", "gpucheck.json", "nvml-agent.json",
         "nvml-smi.json", "gpu-bench.json", "hf-golden.tar.gz"]
STEPS = ["configure", "build", "ctest_all", "ctest_cuda_runtime", "cuda_kernels_ran",
         "gpucheck_build", "gpucheck", "nvml_build", "nvml_agent", "nvml_smi", "hf_golden",
         "hf_check", "gpu_bench"]
# gpu_bench (the CUDA backend, ops/bench/gpu.sh) is not required here: its failure must not keep
# the goldens and the NVML fixtures out; its row in docs/benchmarks.md needs its numbers anyway.
GPU_STEPS = ["cuda_kernels_ran", "gpucheck", "nvml_agent", "nvml_smi"]


def st_header(data):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    need_gpu = "--require-gpu" in sys.argv
    if len(args) != 1:
        sys.exit(__doc__)
    out = args[0]
    errs = []

    def want(cond, msg):
        if not cond:
            errs.append(msg)

    present = sorted(f for f in os.listdir(out) if f != "work")
    want(present == sorted(FILES), "files: %s, expected %s" % (present, sorted(FILES)))
    s = json.load(open(os.path.join(out, "summary.json")))
    for k in ("mode", "date", "commit", "gpu", "ceilings", "hf", "steps", "ok"):
        want(k in s, "summary.json lacks %s" % k)
    want(sorted(s["steps"]) == sorted(STEPS), "steps: %s" % sorted(s["steps"]))
    gpu = s["mode"] == "gpu"
    for name in GPU_STEPS:
        st = s["steps"].get(name, {}).get("status")
        if gpu:
            want(st == "ok", "%s: %s on a GPU run" % (name, st))
        else:
            want(st == "skipped" and "no GPU" in s["steps"][name]["detail"],
                 "%s: %s without a GPU (expected skipped: no GPU)" % (name, st))
    g = json.load(open(os.path.join(out, "gpucheck.json")))
    if gpu:
        for k in ("gpu", "gemm_check", "nccl_check", "copy_d2d", "gemm_bf16_8192"):
            want(k in g, "gpucheck.json lacks %s" % k)
        want(g.get("gemm_check", {}).get("ok") is True, "cuBLAS BF16 GEMM check failed")
        want(g.get("nccl_check", {}).get("ok") is True, "NCCL all-reduce check failed")
        want(s["ceilings"] and s["ceilings"]["copy_d2d_gb_per_s"] and
             s["ceilings"]["gemm_bf16_8192_tflops"], "no ceilings in summary.json")
        a = json.load(open(os.path.join(out, "nvml-agent.json")))
        want(a.get("gpus", 0) >= 1 and all(d.get("uuid", "").startswith("GPU-")
                                           for d in a["devices"] if d["kind"] == "gpu"),
             "nvml-agent.json: no GPU with a UUID")
        m = json.load(open(os.path.join(out, "nvml-smi.json")))
        want(len(m.get("gpus", [])) >= 1, "nvml-smi.json: no GPU")
    else:
        want(g == {"skipped": "no GPU"}, "gpucheck.json on a dry run: %s" % g)
    with tarfile.open(os.path.join(out, "hf-golden.tar.gz")) as t:
        names = set(n.lstrip("./") for n in t.getnames())
        man = json.load(t.extractfile("./MANIFEST.json"))
        want(man["generator"] in ("transformers", "standin"), "generator %s" % man["generator"])
        if gpu or need_gpu:
            want(man["generator"] == "transformers", "goldens from %s, not transformers"
                 % man["generator"])
            want(man.get("standin_agrees") is True, "transformers and the stand-in disagree")
        want(len(man["variants"]) == 6, "%d variants" % len(man["variants"]))
        for v in man["variants"]:
            d = "models/%s/" % v["name"]
            for f in ("config.json", "model.safetensors", "logits.safetensors", "tokenizer.json",
                      "tokenizer_config.json"):
                want(d + f in names, "archive lacks %s%s" % (d, f))
            hdr = st_header(t.extractfile("./" + d + "logits.safetensors").read())
            for i, p in enumerate(man["prompts"]):
                tt = hdr.get("prompt.%d" % i, {})
                want(tt.get("dtype") == "F32" and tt.get("shape") == [len(p), v["vocab"]],
                     "%s prompt.%d: %s" % (v["name"], i, tt))
        if man.get("tokenizers"):
            for f in ("tokenizers/llama3.json", "tokenizers/qwen2.json", "tokenizers/golden.json"):
                want(f in names, "archive lacks %s" % f)
    if need_gpu:
        want(gpu, "not a GPU run (mode %s)" % s["mode"])
        want(s["ok"], "summary.json says a step failed")
    for e in errs:
        print("check_outputs: " + e, file=sys.stderr)
    print("check_outputs: %s: %s run, goldens from %s: %s" % (
        out, s["mode"], man["generator"], "ok" if not errs else "%d problems" % len(errs)))
    sys.exit(1 if errs else 0)


if __name__ == "__main__":
    main()
