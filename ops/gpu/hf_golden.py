#!/usr/bin/python3
"""hf_golden: golden references from Hugging Face's own code, for tests/unit/runtime/test_hf_golden.c.

For each variant below it takes `orp-runtime make-model --arch ARCH`'s config.json (with the
variant's overrides merged in) and tokenizer files, builds the model with transformers' own class
(LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM), fills every parameter
with seeded random numbers of a useful scale (HF's 0.02 init gives logits near 0 that prove
little), saves it with save_pretrained (so model.safetensors is written by HF), and records the
float32 logits of every position of fixed prompts (token id lists) in logits.safetensors.
Where the `tokenizers` package exists it also records the token ids of a fixed multilingual corpus
under a Llama-3-style and a Qwen2-style tokenizer.json (both built from make-model's vocabulary).

Without transformers (Debian's python3-torch has none), --standin runs the same checkpoint writer
and logit recorder with STAND-IN, a small torch transcription of the Llama family written here.
Its output is labelled "generator": "standin" in MANIFEST.json; ops/gpu/import-fixtures.sh refuses
it and test_hf_golden.c fails on it in tests/golden/hf/, so a stand-in run can test this script
and the C test but can never become a committed golden. With transformers present the stand-in
is run too, on the same weights, and its largest difference from transformers is recorded: a
cross-check of both (a config field that one side ignores shows up there).

    ops/gpu/hf_golden.py --orp-runtime BUILD/runtime/orp-runtime --out DIR [--standin]

Layout of DIR (what tests/golden/hf/ holds once imported):
    MANIFEST.json                      generator, versions, date, variants, prompts, tolerances
    models/NAME/config.json            make-model's config + overrides (what the runtime reads)
    models/NAME/hf_config.json         the config transformers itself saved (absent for standin)
    models/NAME/model.safetensors      F32, written by save_pretrained (standin: by this script)
    models/NAME/tokenizer.json, tokenizer_config.json, generation_config.json   from make-model
    models/NAME/logits.safetensors     "prompt.I": F32 [len(prompt I), vocab]
    tokenizers/llama3.json, tokenizers/qwen2.json, tokenizers/golden.json   (with `tokenizers`)
"""
import argparse
import datetime
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile

import torch

# Prompts as token ids (all below the smallest vocab, ~559). The second is longer than
# mistral_window5's window; the third is a single token (position 0 alone).
PROMPTS = [
    [556, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100],
    [3 + 23 * i for i in range(20)],
    [1],
]

# (name, make-model --arch, transformers class, overrides merged into config.json). Each covers a
# feature: GQA (heads 4, kv heads 2, everywhere), llama3 rope scaling with all three bands
# (head_dim 16, original_max_position_embeddings 64), tied embeddings (qwen2's default and
# llama3_scaled_tied), QKV bias (qwen2), per-head QK RMSNorm and explicit head_dim (qwen3),
# Mistral's sliding window (5 < the second prompt's 20 tokens).
VARIANTS = [
    ("llama", "llama", "LlamaForCausalLM", {}),
    ("llama3_scaled_tied", "llama", "LlamaForCausalLM", {
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        "tie_word_embeddings": True}),
    ("qwen2", "qwen2", "Qwen2ForCausalLM", {}),
    ("qwen3", "qwen3", "Qwen3ForCausalLM", {}),
    ("mistral", "mistral", "MistralForCausalLM", {}),
    ("mistral_window5", "mistral", "MistralForCausalLM", {"sliding_window": 5}),
]

# The multilingual corpus for the tokenizer goldens: scripts, digits (Llama 3 groups up to 3,
# Qwen2 splits each), contractions, whitespace runs, a decomposed é (Qwen2's NFC composes it).
CORPUS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "I'VE been there; don't you'll they're we'd",
    "1234567890 3.14159 2026-11-21 $1,000,000",
    "Grüße aus München: Straße, Käse, Öl.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Съешь же ещё этих мягких французских булок.",
    "我能吞下玻璃而不伤身体。",
    "私はガラスを食べられます。それは私を傷つけません。",
    "나는 유리를 먹을 수 있어요.",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني.",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती.",
    "emoji 🦙🚀 👩‍💻 and ZWJ",
    "  leading spaces\n\n\ttabs\r\nand   trailing   ",
    "cafe\u0301 vs caf\u00e9",
    "def f(x):\n    return x ** 2  # comment\n",
]

# Qwen2's pre-tokenizer regex (tokenizer.json of Qwen2/Qwen2.5): Llama 3's with \p{N} alone.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SEED = 20261121


# ---- weights -------------------------------------------------------------------------------

def fill_weights(named_params, seed):
    """Fills parameters (name -> tensor) in sorted name order from one seeded generator: norms
    1 + 0.2 N(0,1) (a missing or misapplied norm shows), biases 0.1 N(0,1), matrices (the
    embedding too, which a tied lm_head reuses) N(0,1)/sqrt(fan_in): logits of order 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(named_params):
            p = named_params[name]
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("norm.weight"):
                r = 1 + 0.2 * r
            elif name.endswith(".bias"):
                r = 0.1 * r
            else:
                r = r / math.sqrt(p.shape[-1])
            p.copy_(r.to(p.dtype))


def param_shapes(cfg):
    """The parameters of a checkpoint of cfg (HF names), as in modeling_*.py."""
    arch = cfg["architectures"][0]
    dim, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or dim // heads
    ffn, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    s = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,)}
    if not cfg.get("tie_word_embeddings"):
        s["lm_head.weight"] = (vocab, dim)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        s.update({p + "input_layernorm.weight": (dim,), p + "post_attention_layernorm.weight": (dim,),
                  p + "self_attn.q_proj.weight": (heads * hd, dim),
                  p + "self_attn.k_proj.weight": (kv * hd, dim),
                  p + "self_attn.v_proj.weight": (kv * hd, dim),
                  p + "self_attn.o_proj.weight": (dim, heads * hd),
                  p + "mlp.gate_proj.weight": (ffn, dim), p + "mlp.up_proj.weight": (ffn, dim),
                  p + "mlp.down_proj.weight": (dim, ffn)})
        if arch == "Qwen2ForCausalLM":
            for n, d in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd)):
                s[p + "self_attn.%s_proj.bias" % n] = (d,)
        if arch == "Qwen3ForCausalLM":
            s[p + "self_attn.q_norm.weight"] = (hd,)
            s[p + "self_attn.k_norm.weight"] = (hd,)
    return s


def write_safetensors(path, tensors, metadata=None):
    """A safetensors file of F32 tensors (name -> torch tensor), sorted by name."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        b = tensors[name].detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ---- STAND-IN: a torch transcription of modeling_{llama,qwen2,qwen3,mistral}.py --------------
# Not transformers. It exists so the checkpoint writer and the logit recorder can run where
# transformers cannot be installed, and as a cross-check where it can.

def _rms(x, w, eps):
    return w * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def _inv_freq(cfg, hd):
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.get("rope_scaling")
    if rs:  # _compute_llama3_parameters in modeling_rope_utils.py
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def standin_logits(cfg, w, tokens):
    """Float32 logits [T, vocab] of tokens; w: name -> float32 tensor."""
    arch = cfg["architectures"][0]
    dim, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or dim // heads
    eps, T = cfg["rms_norm_eps"], len(tokens)
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), _inv_freq(cfg, hd))
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().float(), emb.sin().float()
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = j <= i
    window = cfg.get("sliding_window") if arch == "MistralForCausalLM" else None
    if window:
        allowed &= (i - j) < window
    mask = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))
    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l

        def proj(n, h):
            y = h @ w[p + n + ".weight"].T
            return y + w[p + n + ".bias"] if p + n + ".bias" in w else y

        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = proj("self_attn.q_proj", h).view(T, heads, hd)
        k = proj("self_attn.k_proj", h).view(T, kv, hd)
        v = proj("self_attn.v_proj", h).view(T, kv, hd)
        if arch == "Qwen3ForCausalLM":
            q = _rms(q, w[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(heads // kv, dim=0)
        v = v.repeat_interleave(heads // kv, dim=0)
        s = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, dim=-1)
        x = x + (s @ v).transpose(0, 1).reshape(T, heads * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g, u = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T
    x = _rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


# ---- transformers ----------------------------------------------------------------------------

def hf_build(cls_name, cfg, mdir, seed):
    """Builds, fills and saves the model with transformers; returns (logits per prompt, weights)."""
    import transformers
    cls = getattr(transformers, cls_name)
    conf = cls.config_class(**cfg)
    conf._attn_implementation = "eager"  # plain masked softmax: the sliding window as written
    model = cls(conf).to(torch.float32).eval()
    params = dict(model.named_parameters())  # a tied lm_head is listed once, as embed_tokens
    fill_weights(params, seed)
    model.save_pretrained(mdir, safe_serialization=True)
    os.replace(os.path.join(mdir, "config.json"), os.path.join(mdir, "hf_config.json"))
    with torch.no_grad():
        logits = [model(torch.tensor([p])).logits[0].float() for p in PROMPTS]
    return logits, {n: t.detach().float() for n, t in params.items()}


def standin_build(cfg, mdir, seed):
    params = {n: torch.zeros(s, dtype=torch.float32) for n, s in param_shapes(cfg).items()}
    fill_weights(params, seed)
    write_safetensors(os.path.join(mdir, "model.safetensors"), params, {"format": "pt"})
    with torch.no_grad():
        return [standin_logits(cfg, params, p) for p in PROMPTS], params


# ---- tokenizers ------------------------------------------------------------------------------

def tokenizer_goldens(mm_dirs, out):
    """Golden ids for CORPUS under Llama-3-style and Qwen2-style tokenizer.json; None without the
    tokenizers package."""
    try:
        import tokenizers
    except ImportError:
        return None
    os.makedirs(out, exist_ok=True)
    llama3 = json.load(open(os.path.join(mm_dirs["llama"], "tokenizer.json")))
    # Qwen2's shape: NFC normalizer, its own split regex, no BOS post-processor (make-model's
    # qwen2 tokenizer has the latter already).
    qwen2 = json.load(open(os.path.join(mm_dirs["qwen2"], "tokenizer.json")))
    qwen2["normalizer"] = {"type": "NFC"}
    qwen2["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": QWEN2_PATTERN}
    golden = {"tokenizers_version": tokenizers.__version__, "corpus": CORPUS, "ids": {}}
    for name, tj in (("llama3", llama3), ("qwen2", qwen2)):
        path = os.path.join(out, name + ".json")
        with open(path, "w") as f:
            json.dump(tj, f, ensure_ascii=False)
        t = tokenizers.Tokenizer.from_file(path)
        golden["ids"][name] = [t.encode(s, add_special_tokens=False).ids for s in CORPUS]
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
    return {"version": tokenizers.__version__, "tokenizers": ["llama3", "qwen2"],
            "strings": len(CORPUS)}


# ---- main ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orp-runtime", required=True, help="the orp-runtime binary (make-model)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--standin", action="store_true",
                    help="use the torch stand-in when transformers is missing (never committed)")
    a = ap.parse_args()
    try:
        import transformers
        have_hf = True
    except ImportError:
        have_hf = False
        if not a.standin:
            sys.exit("hf_golden: transformers is not installed (--standin runs the stand-in)")
    torch.manual_seed(0)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    os.makedirs(os.path.join(a.out, "models"), exist_ok=True)
    manifest = {
        "generator": "transformers" if have_hf else "standin",
        "note": ("logits from transformers' own model classes" if have_hf else
                 "STAND-IN: logits from hf_golden.py's torch transcription, NOT transformers; "
                 "never commit these"),
        "transformers_version": transformers.__version__ if have_hf else None,
        "torch_version": torch.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": SEED, "dtype": "float32", "device": "cpu", "prompts": PROMPTS, "variants": [],
    }
    mm_dirs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, arch, cls_name, over) in enumerate(VARIANTS):
            mm = os.path.join(tmp, arch)
            if arch not in mm_dirs:
                subprocess.run([a.orp_runtime, "make-model", "--out", mm, "--arch", arch,
                                "--dtype", "f32"], check=True, stdout=subprocess.DEVNULL)
                mm_dirs[arch] = mm
            cfg = json.load(open(os.path.join(mm, "config.json")))
            cfg.update(over)
            cfg["torch_dtype"] = "float32"
            assert cfg["architectures"] == [cls_name], (name, cfg["architectures"])
            mdir = os.path.join(a.out, "models", name)
            os.makedirs(mdir, exist_ok=True)
            for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
                shutil.copy(os.path.join(mm, f), mdir)
            seed = SEED + k
            entry = {"name": name, "arch": arch, "class": cls_name, "overrides": over,
                     "vocab": cfg["vocab_size"]}
            if have_hf:
                logits, params = hf_build(cls_name, cfg, mdir, seed)
                with torch.no_grad():
                    ref = [standin_logits(cfg, params, p) for p in PROMPTS]
                entry["standin_max_abs_diff"] = max(float((x - y).abs().max())
                                                    for x, y in zip(logits, ref))
            else:
                logits, _ = standin_build(cfg, mdir, seed)
            with open(os.path.join(mdir, "config.json"), "w") as f:
                json.dump(cfg, f, indent=1)
            write_safetensors(os.path.join(mdir, "logits.safetensors"),
                              {"prompt.%d" % i: l for i, l in enumerate(logits)},
                              {"generator": manifest["generator"]})
            entry["max_abs_logit"] = max(float(l.abs().max()) for l in logits)
            manifest["variants"].append(entry)
            print("hf_golden: %s (%s) vocab %d, max |logit| %.3f%s" % (
                name, manifest["generator"], cfg["vocab_size"], entry["max_abs_logit"],
                ", stand-in differs by %.2e" % entry["standin_max_abs_diff"] if have_hf else ""))
        manifest["tokenizers"] = tokenizer_goldens(mm_dirs, os.path.join(a.out, "tokenizers"))
    if manifest["tokenizers"] is None:
        print("hf_golden: skipped: tokenizer goldens (no `tokenizers` package)")
    bad = [v["name"] for v in manifest["variants"] if v.get("standin_max_abs_diff", 0) > 1e-3]
    manifest["standin_agrees"] = not bad if have_hf else None
    with open(os.path.join(a.out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    if bad:
        sys.exit("hf_golden: transformers and the stand-in disagree on %s: a config field is read "
                 "differently; see MANIFEST.json" % ", ".join(bad))


if __name__ == "__main__":
    main()
