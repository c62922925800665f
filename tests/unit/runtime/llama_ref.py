#!/usr/bin/python3
"""An independent forward pass of the Llama family in NumPy (float64), written from Hugging Face's
modeling_llama.py, modeling_qwen2.py, modeling_qwen3.py and modeling_mistral.py: full-sequence
attention with a causal mask (no KV cache), rotate_half RoPE (with Llama 3's rope_scaling),
repeat_kv for grouped-query attention, RMSNorm, SwiGLU; Qwen2's q/k/v bias, Qwen3's per-head q/k
RMSNorm and explicit head_dim, Mistral's sliding window, tied embeddings. It reads config.json and
model.safetensors with nothing but json and numpy.

It produced tests/golden/rt_golden_logits.h, which test_golden.c checks the C forward pass
against:
    /usr/bin/python3 tests/unit/runtime/llama_ref.py BUILD/runtime/orp-runtime \\
        tests/golden/rt_golden_logits.h
For each variant below it runs `orp-runtime make-model --arch ARCH` (seed 1, BF16: deterministic),
merges the variant's overrides into config.json (the C test does the same), and records logits.
Rerun it only when make-model's weights change on purpose.
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

TOKENS = [556, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
POSITIONS = [0, 6, 12]
NLOGITS = 32  # logits at ids i * vocab // NLOGITS

# (name, make-model --arch, overrides merged into config.json)
VARIANTS = [
    ("llama", "llama", {}),
    # Llama 3.2's shape: llama3 rope scaling (with these numbers and head_dim 16 the three bands
    # of the scaling all occur) and tied embeddings (lm_head.weight, present, must be ignored).
    ("llama3_scaled_tied", "llama", {
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        "tie_word_embeddings": True}),
    ("qwen2", "qwen2", {}),
    ("qwen3", "qwen3", {}),
    ("mistral", "mistral", {}),
    ("mistral_window5", "mistral", {"sliding_window": 5}),
]


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    buf = data[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = buf[b:e]
        if t["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif t["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2")
        else:
            raise ValueError(t["dtype"])
        out[name] = a.astype(np.float64).reshape(t["shape"])
    return out


def rms_norm(x, w, eps):
    var = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def llama3_inv_freq(inv_freq, rs):
    """_compute_llama3_parameters of transformers' modeling_rope_utils.py."""
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / low, old / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wl, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, scaled)


def forward(cfg, w, tokens):
    arch = cfg["architectures"][0]
    dim, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or dim // heads
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    T = len(tokens)
    inv_freq = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    if cfg.get("rope_scaling"):
        inv_freq = llama3_inv_freq(inv_freq, cfg["rope_scaling"])
    freqs = np.outer(np.arange(T, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)  # [T, hd]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = j <= i
    window = cfg.get("sliding_window") if arch == "MistralForCausalLM" else None
    if window:
        allowed &= i - j < window
    mask = np.where(allowed, 0.0, -np.inf)
    x = w["model.embed_tokens.weight"][tokens]  # [T, dim]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l

        def proj(name, h):
            y = h @ w[p + name + ".weight"].T
            return y + w[p + name + ".bias"] if p + name + ".bias" in w else y

        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = proj("self_attn.q_proj", h).reshape(T, heads, hd)
        k = proj("self_attn.k_proj", h).reshape(T, kv, hd)
        v = proj("self_attn.v_proj", h).reshape(T, kv, hd)
        if arch == "Qwen3ForCausalLM":
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, heads // kv, axis=0)  # repeat_kv
        v = np.repeat(v, heads // kv, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(T, heads * hd)
        x = x + a @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T  # [T, vocab]


def c_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main():
    binary, out_path = sys.argv[1], sys.argv[2]
    lines = ["/* generated by tests/unit/runtime/llama_ref.py: do not edit */",
             "#define GOLDEN_NLOGITS %d" % NLOGITS,
             "static const int golden_tokens[%d] = {%s};" % (len(TOKENS), ", ".join(map(str, TOKENS))),
             "static const int golden_pos[%d] = {%s};" % (len(POSITIONS), ", ".join(map(str, POSITIONS))),
             "static const struct golden_variant {",
             "    const char *name, *arch, *overrides; /* overrides: JSON merged into config.json */",
             "    int vocab;",
             "    int argmax[%d];" % len(POSITIONS),
             "    int ids[%d];" % NLOGITS,
             "    float logits[%d][%d];" % (len(POSITIONS), NLOGITS),
             "} golden_variants[] = {"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch, over in VARIANTS:
            d = os.path.join(tmp, name)
            subprocess.run([binary, "make-model", "--out", d, "--arch", arch], check=True,
                           stdout=subprocess.DEVNULL)
            cfg = json.load(open(d + "/config.json"))
            cfg.update(over)
            logits = forward(cfg, load_safetensors(d + "/model.safetensors"), TOKENS)
            vocab = cfg["vocab_size"]
            ids = [i * vocab // NLOGITS for i in range(NLOGITS)]
            lines.append("    {%s, %s, %s, %d," % (c_string(name), c_string(arch),
                                                   c_string(json.dumps(over)), vocab))
            lines.append("     {%s}," % ", ".join(str(int(np.argmax(logits[p]))) for p in POSITIONS))
            lines.append("     {%s}," % ", ".join(map(str, ids)))
            lines.append("     {")
            for p in POSITIONS:
                lines.append("         {%s}," % ", ".join("%.6ff" % logits[p][i] for i in ids))
            lines.append("     }},")
    lines.append("};")
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
