#!/usr/bin/python3
"""Trains the demo model: a small Llama on the King James Bible, shipped in models/demo-kjv/.

Everything it needs is a Debian package: the text comes from bible-kjv (`bible -f` prints every
verse as "Ge1:1 In the beginning ..."), and PyTorch from python3-torch, run with /usr/bin/python3.
It writes a Hugging Face directory that orp-runtime loads like any downloaded checkpoint:
config.json (LlamaForCausalLM), tokenizer.json (a byte-level BPE trained here), tokenizer_config.json
(plain ChatML), generation_config.json and model.safetensors (BF16).

    /usr/bin/python3 runtime/demo/train.py train  --out models/demo-kjv
    /usr/bin/python3 runtime/demo/train.py golden --model models/demo-kjv \
        --out tests/golden/demo_kjv_greedy.json

Needs python3-torch and libopenblas0-pthread (apt-get install both): without OpenBLAS, Debian's
torch multiplies with the reference BLAS, ~40x slower. 500 steps of 8 x 256 tokens took 2117 s
(35 min) on this project's shared 2-core machine while other builds kept its load near 8; a rerun
on the quieter machine went at ~1.3 s/step (~11 min for 500) and printed the same losses at steps
21, 41, 61 and 81, so the run is reproducible. The result: 2.4 M parameters, 4.8 MB in BF16, final training
loss ~3.4 (nats per token).

Why chat-shaped data: a chat reply should read as scripture, and stop. Each chapter becomes one
conversation whose turns alternate user/assistant verse by verse, in ChatML, so the model learns to
answer a verse with the next one and to end its turn with <|im_end|>. Sequences are 257-token
windows drawn from the concatenation of all chapters.

Reproducible: a fixed number of steps, a fixed seed, a fixed thread count (2) and a
deterministic BPE (ties broken by the smallest pair), so the result does not depend on how busy
the machine is, only on how long it takes.

`golden` is the reference for tests/unit/runtime/test_demo.c: this script's own model class, in
float32, with the BF16 weights read back from model.safetensors, decodes each fixed prompt
greedily for 32 tokens (stopping early at <|im_end|>, as the runtime does).
"""
import argparse
import heapq
import json
import math
import os
import re
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- the model's shape (about 3.6 M parameters, 7.3 MB in BF16) ----
VOCAB = 4096
DIM = 192
LAYERS = 4
HEADS = 8
KV_HEADS = 4      # TP 4 splits them, TP 8 would replicate
FFN = 512
CONTEXT = 256
ROPE_THETA = 10000.0
EPS = 1e-5

# ---- training ----
SEED = 1234
STEPS = 500
BATCH = 8
LR = 3e-3
WARMUP = 100
THREADS = 2

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# GPT-2's pre-tokenizer pattern (ByteLevel with use_regex, which orp-runtime's tokenizer applies
# with PCRE2's Unicode classes). The corpus is pure ASCII, where these ASCII classes are the same.
PRETOK = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^ \t\n\r\f\vA-Za-z0-9]+"""
                    r"""|[ \t\n\r\f\v]+(?![^ \t\n\r\f\v])|[ \t\n\r\f\v]+""")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---- the corpus ----

def chapters():
    """The KJV as a list of chapters, each a list of verse texts (reference prefix stripped)."""
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                         text=True).stdout
    chaps, cur = [], None
    for line in out.splitlines():
        m = re.match(r"^([0-9]?[A-Za-z]+)([0-9]+):([0-9]+) (.*)$", line)
        if not m:
            raise SystemExit("unexpected line from bible: %r" % line)
        if m.group(3) == "1":
            cur = []
            chaps.append(cur)
        cur.append(m.group(4).strip())
    text = "".join("".join(c) for c in chaps)
    if not text.isascii():
        raise SystemExit("the corpus is not ASCII: PRETOK's ASCII classes would be wrong")
    return chaps


def conversations(chaps):
    """Each chapter as the ChatML text segments between special tokens: a list of (special, text)."""
    for c in chaps:
        turns = []
        for i, v in enumerate(c):
            role = "user" if i % 2 == 0 else "assistant"
            turns.append(("<|im_start|>", role + "\n" + v))
            turns.append(("<|im_end|>", "\n"))
        yield turns


# ---- byte-level BPE ----

def bytes_to_unicode():
    """GPT-2's printable stand-in for each byte, as tokenizer.json's vocab spells bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train_bpe(word_counts, nmerges):
    """The textbook BPE: merge the most frequent adjacent pair (ties: smallest ids) nmerges times.
    Returns the merges as (a, b) id pairs; token 256 + k is merge k."""
    words = [list(w) for w in word_counts]
    counts = list(word_counts.values())
    pairs, where = {}, {}

    def add(wi, sign):
        w = words[wi]
        for p in zip(w, w[1:]):
            pairs[p] = pairs.get(p, 0) + sign * counts[wi]
            if sign > 0:
                where.setdefault(p, set()).add(wi)

    for wi in range(len(words)):
        add(wi, 1)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < nmerges and heap:
        c, p = heapq.heappop(heap)
        if pairs.get(p, 0) != -c or -c < 2:
            if pairs.get(p, 0) >= 2 and pairs[p] != -c:
                heapq.heappush(heap, (-pairs[p], p))
            continue
        new = 256 + len(merges)
        merges.append(p)
        touched = set()
        for wi in list(where.get(p, ())):
            w = words[wi]
            add(wi, -1)
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == p[0] and w[i + 1] == p[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            add(wi, 1)
            touched.update(zip(out, out[1:]))
        pairs.pop(p, None)
        for q in touched:
            if pairs.get(q, 0) >= 2:
                heapq.heappush(heap, (-pairs[q], q))
    return merges


class Tokenizer:
    def __init__(self, merges):
        self.merges = merges
        self.rank = {p: i for i, p in enumerate(merges)}
        self.special = {s: 256 + len(merges) + i for i, s in enumerate(SPECIALS)}
        self.cache = {}
        self.b2u = bytes_to_unicode()
        self.vocab = [self.b2u[b] for b in range(256)]
        for a, b in merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.bytes = [bytes([b]) for b in range(256)]
        for a, b in merges:
            self.bytes.append(self.bytes[a] + self.bytes[b])

    def encode_word(self, w):
        ids = self.cache.get(w)
        if ids is not None:
            return ids
        ids = list(w.encode())
        while len(ids) > 1:
            best = min(range(len(ids) - 1),
                       key=lambda i: self.rank.get((ids[i], ids[i + 1]), 1 << 30))
            r = self.rank.get((ids[best], ids[best + 1]))
            if r is None:
                break
            ids[best:best + 2] = [256 + r]
        self.cache[w] = ids
        return ids

    def encode(self, text):
        out = []
        for w in PRETOK.findall(text):
            out.extend(self.encode_word(w))
        return out

    def encode_segments(self, segs):
        out = []
        for sp, text in segs:
            if sp:
                out.append(self.special[sp])
            out.extend(self.encode(text))
        return out

    def decode(self, ids):
        specials = {v: k for k, v in self.special.items()}
        return b"".join(specials[i].encode() if i in specials else self.bytes[i]
                        for i in ids).decode("utf-8", "replace")

    def size(self):
        return 256 + len(self.merges) + len(SPECIALS)


def chat_segments(messages):
    """ChatML as the template renders it, split at special tokens, with the generation prompt."""
    segs = []
    for m in messages:
        segs.append(("<|im_start|>", m["role"] + "\n" + m["content"]))
        segs.append(("<|im_end|>", "\n"))
    segs.append(("<|im_start|>", "assistant\n"))
    return segs


# ---- the model (Hugging Face's LlamaForCausalLM, written out) ----

def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        hd = DIM // HEADS
        self.input_layernorm = RMSNorm(DIM)
        self.post_attention_layernorm = RMSNorm(DIM)
        self.q_proj = nn.Linear(DIM, HEADS * hd, bias=False)
        self.k_proj = nn.Linear(DIM, KV_HEADS * hd, bias=False)
        self.v_proj = nn.Linear(DIM, KV_HEADS * hd, bias=False)
        self.o_proj = nn.Linear(HEADS * hd, DIM, bias=False)
        self.gate_proj = nn.Linear(DIM, FFN, bias=False)
        self.up_proj = nn.Linear(DIM, FFN, bias=False)
        self.down_proj = nn.Linear(FFN, DIM, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        hd = DIM // HEADS
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, HEADS, hd).transpose(1, 2)
        k = self.k_proj(h).view(b, t, KV_HEADS, hd).transpose(1, 2)
        v = self.v_proj(h).view(b, t, KV_HEADS, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = HEADS // KV_HEADS
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask
        y = F.softmax(att, dim=-1) @ v
        x = x + self.o_proj(y.transpose(1, 2).reshape(b, t, HEADS * hd))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.norm = RMSNorm(DIM)
        hd = DIM // HEADS
        inv = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.arange(CONTEXT, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.embed_tokens(ids)
        mask = torch.full((t, t), float("-inf")).triu(1)
        cos, sin = self.cos[:t], self.sin[:t]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x) @ self.embed_tokens.weight.t()  # tied lm_head

    def hf_names(self):
        """(Hugging Face name, tensor) for every weight, in the checkpoint's order."""
        out = [("model.embed_tokens.weight", self.embed_tokens.weight)]
        for i, l in enumerate(self.layers):
            p = "model.layers.%d." % i
            out += [(p + "input_layernorm.weight", l.input_layernorm.weight),
                    (p + "self_attn.q_proj.weight", l.q_proj.weight),
                    (p + "self_attn.k_proj.weight", l.k_proj.weight),
                    (p + "self_attn.v_proj.weight", l.v_proj.weight),
                    (p + "self_attn.o_proj.weight", l.o_proj.weight),
                    (p + "post_attention_layernorm.weight", l.post_attention_layernorm.weight),
                    (p + "mlp.gate_proj.weight", l.gate_proj.weight),
                    (p + "mlp.up_proj.weight", l.up_proj.weight),
                    (p + "mlp.down_proj.weight", l.down_proj.weight)]
        out.append(("model.norm.weight", self.norm.weight))
        return out


# ---- the checkpoint ----

def write_safetensors(path, named):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in named:
        b = t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2")
        b = b.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """name -> float32 tensor (BF16 widened exactly)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        assert e["dtype"] == "BF16"
        raw = np.frombuffer(data[8 + n + a:8 + n + b], dtype="<u2").astype(np.uint32) << 16
        out[name] = torch.from_numpy(raw.view(np.float32).reshape(e["shape"]).copy())
    return out


def write_checkpoint(out, model, tok):
    os.makedirs(out, exist_ok=True)
    sp = tok.special
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
           "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "num_key_value_heads": KV_HEADS, "head_dim": DIM // HEADS, "vocab_size": VOCAB,
           "max_position_embeddings": CONTEXT, "rms_norm_eps": EPS, "rope_theta": ROPE_THETA,
           "rope_scaling": None, "tie_word_embeddings": True, "hidden_act": "silu",
           "attention_bias": False, "mlp_bias": False, "bos_token_id": sp["<|endoftext|>"],
           "eos_token_id": sp["<|im_end|>"], "torch_dtype": "bfloat16"}
    gen = {"bos_token_id": sp["<|endoftext|>"], "eos_token_id": [sp["<|im_end|>"], sp["<|endoftext|>"]],
           "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    added = [{"id": sp[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s in SPECIALS]
    vocab = {s: i for i, s in enumerate(tok.vocab)}
    vocab.update({s: sp[s] for s in SPECIALS})
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                            "use_regex": True},
          "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                             "use_regex": False},
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                      "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                    "vocab": vocab,
                    "merges": [[tok.vocab[a], tok.vocab[b]] for a, b in tok.merges]}}
    tc = {"added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"}
                                   for a in added},
          "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
          "model_max_length": CONTEXT, "clean_up_tokenization_spaces": False,
          "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML}
    for name, obj in (("config.json", cfg), ("generation_config.json", gen),
                      ("tokenizer.json", tj), ("tokenizer_config.json", tc)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=1 if name != "tokenizer.json" else None, ensure_ascii=False)
            f.write("\n")
    write_safetensors(os.path.join(out, "model.safetensors"), model.hf_names())


def load_tokenizer(model_dir):
    with open(os.path.join(model_dir, "tokenizer.json")) as f:
        tj = json.load(f)
    v = tj["model"]["vocab"]
    return Tokenizer([(v[a], v[b]) for a, b in tj["model"]["merges"]])


# ---- train ----

def cmd_train(a):
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    chaps = chapters()
    convs = list(conversations(chaps))
    counts = {}
    for segs in convs:
        for _, text in segs:
            for w in PRETOK.findall(text):
                counts[w] = counts.get(w, 0) + 1
    log("corpus: %d chapters, %d distinct words" % (len(chaps), len(counts)))
    tok = Tokenizer(train_bpe({tuple(w.encode()): c for w, c in counts.items()},
                              VOCAB - 256 - len(SPECIALS)))
    assert tok.size() == VOCAB, tok.size()
    stream = []
    for segs in convs:
        stream.extend(tok.encode_segments(segs))
    data = torch.tensor(stream, dtype=torch.long)
    log("tokenizer: %d tokens; corpus: %d tokens" % (tok.size(), len(data)))

    model = Llama()
    for n, p in model.named_parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
            if n.endswith("o_proj.weight") or n.endswith("down_proj.weight"):
                p.data.mul_(1 / math.sqrt(2 * LAYERS))
    log("model: %d parameters" % sum(p.numel() for p in model.parameters()))
    decay = [p for p in model.parameters() if p.dim() == 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": nodecay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    steps = a.steps or STEPS
    t0 = time.time()
    for step in range(steps):
        lr = LR * min(1.0, (step + 1) / WARMUP)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - CONTEXT - 1, (BATCH,), generator=gen)
        x = torch.stack([data[s:s + CONTEXT + 1] for s in starts.tolist()])
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            el = time.time() - t0
            log("step %d/%d loss %.3f lr %.2e %.0fs elapsed, %.0fs to go" %
                (step + 1, steps, loss.item(), lr, el, el / (step + 1) * (steps - step - 1)))
    if a.state:
        torch.save(model.state_dict(), a.state)
    write_checkpoint(a.out, model, tok)
    log("wrote %s" % a.out)


# ---- golden greedy decodes ----

# The fixed prompts of the golden file: chat conversations (rendered with ChatML and the generation
# prompt) and plain completions prompts.
GOLDEN_CHAT = ["In the beginning God created the heaven and the earth.",
               "The LORD is my shepherd; I shall not want.",
               "Blessed are the meek: for they shall inherit the earth.",
               "And the king said unto his servants,",
               "Tell me of the ark of Noah.",
               "Who was Moses?"]
GOLDEN_TEXT = ["And it came to pass", "Hear, O Israel:", "The grace of our Lord"]


@torch.no_grad()
def greedy(model, ids, n, eos):
    out = []
    for _ in range(n):
        nxt = int(model(torch.tensor([ids + out]))[0, -1].argmax())
        out.append(nxt)
        if nxt in eos:
            break
    return out


def cmd_golden(a):
    torch.set_num_threads(THREADS)
    tok = load_tokenizer(a.model)
    model = Llama()
    w = read_safetensors(os.path.join(a.model, "model.safetensors"))
    with torch.no_grad():
        for name, t in model.hf_names():
            t.copy_(w[name])
    model.eval()
    with open(os.path.join(a.model, "generation_config.json")) as f:
        eos = set(json.load(f)["eos_token_id"])
    cases = []
    for content in GOLDEN_CHAT:
        msgs = [{"role": "user", "content": content}]
        ids = tok.encode_segments(chat_segments(msgs))
        cases.append({"messages": msgs, "prompt_ids": ids, "output_ids": greedy(model, ids, 32, eos)})
    for text in GOLDEN_TEXT:
        ids = tok.encode(text)
        cases.append({"prompt": text, "prompt_ids": ids, "output_ids": greedy(model, ids, 32, eos)})
    for c in cases:
        c["output_text"] = tok.decode([i for i in c["output_ids"] if i not in eos])
        log("%r -> %r" % (c.get("prompt") or c["messages"][0]["content"], c["output_text"]))
    with open(a.out, "w") as f:
        json.dump({"made_by": "runtime/demo/train.py golden (PyTorch %s, float32)" % torch.__version__,
                   "max_tokens": 32, "eos_ids": sorted(eos), "cases": cases}, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=0, help="override STEPS (smoke runs only)")
    t.add_argument("--state", help="also save the float32 state_dict here")
    g = sub.add_parser("golden")
    g.add_argument("--model", required=True)
    g.add_argument("--out", required=True)
    a = ap.parse_args()
    {"train": cmd_train, "golden": cmd_golden}[a.cmd](a)


if __name__ == "__main__":
    main()
