"""The frozen LLM of SignLLM (Sec. 3.1, 3.4): a hand-written LLaMA, its loader, tokenizers and generation.

Bottom-up: safetensors reader -> config -> RMSNorm, RoPE -> Attention (grouped-query, KV cache) -> SwiGLU MLP
-> Block -> LLaMA (forward, greedy / beam search, loading) -> Tokenizer. The default LLM's GGUF: smollm2.py.
The forward pass takes token ids or embeddings (`embeds=`): gradients reach the inputs, the weights stay frozen.
"""
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_json(file, text=None):
    """The JSON object in file (or in text read from it); anything else is an error naming the file."""
    try:
        with open(file, "rb") as f:
            obj = json.loads(f.read() if text is None else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{file}: not a JSON object")
    return obj


# A safetensors file: u64 little-endian header length N | N bytes of JSON | the tensors' bytes
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def naturals(v, n=None):
    return isinstance(v, list) and all(type(i) is int and i >= 0 for i in v) and n in (None, len(v))


def read_safetensors_header(file):
    """{name: (dtype, shape, begin, end)}: absolute byte offsets, checked against the file size."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            raise ValueError(f"{file}: truncated, or header length {n} exceeds the file size {size}")
        header = load_json(file, f.read(n))
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        if not (isinstance(t, dict) and t.get("dtype") in DTYPES and naturals(t.get("shape"))
                and naturals(t.get("data_offsets"), 2)):
            raise ValueError(f"{file}: '{name}' needs a dtype in {sorted(DTYPES)}, a shape and data_offsets; has {t}")
        begin, end = t["data_offsets"]
        if end - begin != math.prod(t["shape"]) * DTYPES[t["dtype"]].itemsize:
            raise ValueError(f"{file}: '{name}' offsets {begin}..{end} do not hold shape {t['shape']} {t['dtype']}")
        if 8 + n + end > size:
            raise ValueError(f"{file}: '{name}' ends past the end of the file ({size} bytes): truncated")
        out[name] = (t["dtype"], t["shape"], 8 + n + begin, 8 + n + end)
    return out


def safetensors_files(path):
    """The shards model.safetensors.index.json lists, else model.safetensors."""
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(index):
        return [os.path.join(path, "model.safetensors")]
    weight_map = load_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no 'weight_map' object")
    files = [os.path.join(path, name) for name in sorted(set(map(str, weight_map.values())))]
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: listed in {index}, not found")
    return files


# Hugging Face key -> ours, written out so that a reader can check each one
HF_KEYS = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "lm_head.weight"}
HF_LAYER_KEYS = {  # model.layers.{i}.key
    "self_attn.q_proj.weight": "attn.wq.weight", "self_attn.k_proj.weight": "attn.wk.weight",
    "self_attn.v_proj.weight": "attn.wv.weight", "self_attn.o_proj.weight": "attn.wo.weight",
    "mlp.gate_proj.weight": "mlp.w_gate.weight", "mlp.up_proj.weight": "mlp.w_up.weight",
    "mlp.down_proj.weight": "mlp.w_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight"}


@dataclass
class LLaMAConfig:
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    hidden_dim: int = 1536  # the SwiGLU width ("intermediate_size")
    vocab_size: int = 49152
    norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    tie_embeddings: bool = True
    bos_id: int = 1
    eos_id: int = 2

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, path):
        """Read a Hugging Face config.json (or its folder); refuse a field whose value this file does not compute."""
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        c = load_json(file)
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if key not in c:
                raise ValueError(f"{file}: config has no '{key}'")
        rope = dict(c.get("rope_parameters") or {})  # transformers >= 5; older files: rope_theta, rope_scaling
        rope_theta = rope.pop("rope_theta", c.get("rope_theta", 10000.0))
        allowed = {"model_type": ["llama"], "architectures": [["LlamaForCausalLM"]], "hidden_act": ["silu"],
                   "attention_bias": [False], "mlp_bias": [False], "sliding_window": [None], "rope_scaling": [None],
                   "rope_parameters": [{}, {"rope_type": "default"}],  # rope_theta aside: no RoPE scaling
                   "head_dim": [c["hidden_size"] // c["num_attention_heads"]]}
        for key, ok in allowed.items():  # an absent field has LLaMA's value
            value = rope if key == "rope_parameters" else c.get(key, ok[0])
            if value not in ok:
                raise ValueError(f"{file}: {key} = {value!r} is not implemented (LLaMA: {ok[-1]!r})")
        eos = c.get("eos_token_id", 2)
        return cls(dim=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=c["num_attention_heads"],
                   n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
                   hidden_dim=c["intermediate_size"], vocab_size=c["vocab_size"],
                   norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=rope_theta,
                   tie_embeddings=c.get("tie_word_embeddings", False), bos_id=c.get("bos_token_id", 1),
                   eos_id=eos[0] if isinstance(eos, list) else eos)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()  # normalise in fp32 whatever the model dtype, as the reference implementation does
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


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
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache, layer):
        B, T, _ = x.shape
        nh, nkv, hd = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = apply_rope(self.wq(x).view(B, T, nh, hd).transpose(1, 2), cos, sin)  # (B, nh, T, hd)
        k = apply_rope(self.wk(x).view(B, T, nkv, hd).transpose(1, 2), cos, sin)  # (B, nkv, T, hd)
        v = self.wv(x).view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if cache is not None:
            S = cache.len + T
            cache.k[layer][:, :, cache.len:S], cache.v[layer][:, :, cache.len:S] = k, v
            k, v = cache.k[layer][:, :, :S], cache.v[layer][:, :, :S]  # (B, nkv, S, hd)
        # grouped-query attention: kv head j serves query heads j*rep .. (j+1)*rep-1
        k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hd)
        v = v.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hd)
        # mask (B, 1, T, S): 0 or -inf; None: no padding and no cached prefix, plain causal attention
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)  # (B, nh, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, nh * hd))  # (B, T, dim)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w_gate = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w_up = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w_down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

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
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        self.grad_checkpointing = False  # recompute blocks in backward; frozen and in eval: follows is_grad_enabled

    def forward(self, tokens=None, embeds=None, attn_mask=None, cache=None, last_only=False, hidden=False):
        """Logits (B, T, V) of token ids (B, T) or embeddings (B, T, dim); hidden=True: the normed states (B, T, dim).
        attn_mask (B, T): False at padding (left when generating). With a cache, new positions follow cache.len."""
        if (tokens is None) == (embeds is None):
            raise ValueError("give exactly one of tokens or embeds")
        x = self.tok_embeddings(tokens) if tokens is not None else embeds.to(self.lm_head.weight.dtype)
        B, T, _ = x.shape
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if attn_mask is None else attn_mask.bool()
        start, keys_real, first = 0, real, 0
        if cache is not None:
            start, first = cache.len, cache.n_real[:, None]  # (B, 1) real tokens cached so far
            cache.valid[:, start:start + T] = real
            cache.n_real = cache.n_real + real.long().sum(1)
            keys_real = cache.valid[:, :start + T]  # (B, S)
        mask = None
        if start > 0 or attn_mask is not None and not bool(keys_real.all()):
            q_at = start + torch.arange(T, device=x.device)[:, None]  # (T, 1) each query's place in the sequence
            k_at = torch.arange(start + T, device=x.device)  # (S,)
            allowed = ((k_at <= q_at) & keys_real[:, None, :]) | (k_at == q_at)  # (B, T, S); padding sees itself
            # an additive float mask: on CPU, SDPA with a boolean mask takes a path ~20x slower for one query
            mask = torch.where(allowed[:, None], 0.0, -math.inf).to(x.dtype)  # (B, 1, T, S)
        # RoPE, Hugging Face layout: the two halves of head_dim share frequencies
        hd = self.cfg.head_dim
        pos = (first + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T) position ids of real tokens
        inv_freq = 1.0 / self.cfg.rope_theta ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
        freqs = pos.float()[..., None] * inv_freq  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, hd)
        cos, sin = emb.cos(), emb.sin()
        for i, layer in enumerate(self.layers):
            if self.grad_checkpointing and torch.is_grad_enabled() and cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.len += T
        x = self.norm(x[:, -1:] if last_only else x)
        return x if hidden else self.lm_head(x)  # (B, T, dim) or (B, T, V)

    @torch.no_grad()
    def generate(self, embeds, attn_mask=None, max_new_tokens=64, beams=1, eos_id=None):
        """Continue embeds (B, T, dim), left-padded where attn_mask (B, T) is False. Beam search (beams=1: greedy)
        scored by sum log p / length; returns the new tokens of each, eos dropped."""
        eos_id = self.cfg.eos_id if eos_id is None else eos_id
        dev, K = self.lm_head.weight.device, beams
        B, L, _ = embeds.shape
        attn_mask = torch.ones(B, L, dtype=torch.bool, device=dev) if attn_mask is None else attn_mask.to(dev)
        cache = KVCache(self.cfg, B * K, L + max_new_tokens, dev, embeds.dtype)
        logits = self(embeds=embeds.repeat_interleave(K, 0), attn_mask=attn_mask.repeat_interleave(K, 0),
                      cache=cache, last_only=True)[:, -1]  # (B*K, V)
        scores = torch.tensor([0.0] + [-math.inf] * (K - 1), device=dev).repeat(B)  # (B*K,) K equal beams: expand one
        seqs = torch.zeros(B * K, 0, dtype=torch.long, device=dev)
        done, lengths = torch.zeros(B * K, dtype=torch.bool, device=dev), torch.zeros(B * K, device=dev)
        for _ in range(max_new_tokens):
            logp = F.log_softmax(logits.float(), dim=-1)  # (B*K, V)
            logp[done] = -math.inf
            logp[done, eos_id] = 0.0  # a finished hypothesis only extends with eos, at no cost
            V = logp.shape[-1]
            top, flat = (scores[:, None] + logp).view(B, K * V).topk(K, dim=-1)  # (B, K) best of K*V candidates
            src = (flat // V + torch.arange(B, device=dev)[:, None] * K).view(-1)  # (B*K,) beam each came from
            scores, seqs, done, lengths = top.view(-1), seqs[src], done[src], lengths[src]
            tok = (flat % V).view(-1)
            seqs = torch.cat([seqs, tok[:, None]], dim=1)  # (B*K, step+1)
            lengths = lengths + (~done).float()
            done = done | (tok == eos_id)
            if bool(done.all()):
                break
            if K > 1:  # with one beam, row i continues row i: nothing to move
                cache.reorder(src)
            logits = self(tokens=tok[:, None], cache=cache)[:, -1]
        best = (scores / lengths.clamp(min=1)).view(B, K).argmax(-1)  # (B,)
        rows = seqs[best + torch.arange(B, device=dev) * K].tolist()
        return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu"):
        """Load config.json and model.safetensors (or its shards) from a Hugging Face folder, each tensor read once.
        A missing, unexpected, duplicate or mis-shaped key is an error naming key and file."""
        cfg = LLaMAConfig.from_hf(path)
        with torch.device("meta"):
            model = cls(cfg)
        params = dict(model.named_parameters())  # tied: the output layer's weight is listed once, as the embedding
        ours = {**HF_KEYS, **{f"model.layers.{i}.{hf}": f"layers.{i}.{o}"  # Hugging Face key -> ours
                              for i in range(cfg.n_layers) for hf, o in HF_LAYER_KEYS.items()}}
        files, state = safetensors_files(path), {}
        for file in files:
            with open(file, "rb") as f:
                for hf_key, (dt, shape, begin, end) in read_safetensors_header(file).items():
                    key = ours.get(hf_key)
                    if hf_key.endswith(".rotary_emb.inv_freq") or key == "lm_head.weight" and cfg.tie_embeddings:
                        continue  # a buffer we recompute, or the copy of the tied embedding some checkpoints store
                    if key not in params or key in state:
                        raise ValueError(f"{file}: {'duplicate' if key in state else 'unexpected'} key '{hf_key}'")
                    if tuple(shape) != params[key].shape:
                        raise ValueError(f"{file}: '{hf_key}' has shape {tuple(shape)}, config.json implies "
                                         f"{tuple(params[key].shape)}")
                    data = bytearray(end - begin)  # this tensor's bytes only: the model is never held twice
                    f.seek(begin)
                    f.readinto(data)
                    state[key] = torch.frombuffer(data, dtype=DTYPES[dt]).view(shape).to(device, dtype)
        missing = sorted(set(params) - set(state))
        if missing:
            raise ValueError(f"{path}: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                             f"(looked in {', '.join(os.path.basename(f) for f in files)})")
        if cfg.tie_embeddings:
            state["lm_head.weight"] = state["tok_embeddings.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.tok_embeddings.weight  # assign=True replaced both: tie them again
        return model.eval().requires_grad_(False)  # frozen


class Tokenizer:
    """tokenizer.json (Hugging Face `tokenizers`) or tokenizer.model (sentencepiece, LLaMA-1/2)."""
    def __init__(self, path, bos_id, eos_id, add_bos=None):
        self.path, self.bos_id, self.eos_id, self.spm = path, bos_id, eos_id, not path.endswith(".json")
        if self.spm:
            import sentencepiece
            self.tok = sentencepiece.SentencePieceProcessor(model_file=path)
            self.vocab_size, self.token_id = self.tok.get_piece_size(), self.tok.piece_to_id
            self.own = {"bos": self.tok.bos_id(), "eos": self.tok.eos_id()}  # -1: none; LLaMA-1/2 start with BOS
        else:
            from tokenizers import Tokenizer as HFTokenizer
            self.tok = HFTokenizer.from_file(path)
            self.vocab_size, self.token_id = self.tok.get_vocab_size(with_added_tokens=True), self.tok.token_to_id
            own_bos = self.tok.encode("").ids[:1] == [bos_id]  # a post-processor adds BOS (LLaMA-3; not SmolLM2)
            self.own = {"bos": bos_id if own_bos else -1, "eos": -1}
        self.add_bos = self.own["bos"] >= 0 if add_bos is None else bool(add_bos)  # encode()'s default

    @classmethod
    def from_pretrained(cls, path):
        """The folder's tokenizer; refused when its vocabulary or bos/eos tokens disagree with config.json."""
        cfg = LLaMAConfig.from_hf(path)
        names = [n for n in ("tokenizer.json", "tokenizer.model") if os.path.exists(os.path.join(path, n))]
        if not names:
            raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model")
        tc_file = os.path.join(path, "tokenizer_config.json")
        tc = load_json(tc_file) if os.path.exists(tc_file) else {}
        tok = cls(os.path.join(path, names[0]), cfg.bos_id, cfg.eos_id, tc.get("add_bos_token"))
        if tok.vocab_size > cfg.vocab_size:
            raise ValueError(f"{tok.path}: tokenizer has {tok.vocab_size} tokens but config.json vocab_size is "
                             f"{cfg.vocab_size}")
        for what, i in (("bos", cfg.bos_id), ("eos", cfg.eos_id)):
            piece = tc.get(f"{what}_token")  # a string, or {"content": string, ...}
            piece = piece["content"] if isinstance(piece, dict) else piece
            src, j = (tc_file, tok.token_id(piece)) if piece is not None else (tok.path, tok.own[what])
            if i not in range(tok.vocab_size) or j not in (i, -1):
                raise ValueError(f"{src}: the {what} token is {piece or what} (id {j}), but config.json's "
                                 f"{what}_token_id is {i} (tokenizer size {tok.vocab_size})")
        return tok

    def encode(self, text, bos=None, eos=False):
        """Token ids of text; bos=None: start with BOS if this tokenizer does (self.add_bos)."""
        ids = self.tok.encode(text) if self.spm else self.tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] * (self.add_bos if bos is None else bos) + list(ids) + [self.eos_id] * eos

    def decode(self, ids):
        ids = [i for i in ids if i != self.eos_id]
        return self.tok.decode(ids) if self.spm else self.tok.decode(ids, skip_special_tokens=False)

    def chat(self, user):
        """The prompt for one user turn: ChatML where the vocabulary has its tokens (SmolLM2), else the text."""
        if not self.spm and self.token_id("<|im_start|>") is not None:
            return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        return f"{user}\n"
