"""SignLLM (Sec. 3.1, 3.4): VQ-Sign -> CRA -> projection f -> a frozen LLaMA that writes the translation.

    frames --VQ-Sign--> character tokens (idx) --CRA: repeats + s0, segment--> word ids
           --S^w (words composed through g)--> f --> the sign sentence W, spliced into a text prompt
           --frozen LLaMA--> translation

Training (Sec. 3.4): L_ft = L_VQ + lambda_1 L_MMD + lambda_2 L_sim, L_sim the teacher-forced cross-entropy of the
target text, its gradient going through the frozen LLM to W. Inference: greedy or beam search with a KV cache.
`from_checkpoint` is nanoGPT's `from_pretrained`; `python signllm.py --ckpt out/ft VIDEO_OR_FRAMES ...` translates."""
import argparse
import dataclasses
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

import engine
import cra
from llama import KVCache, LLaMA, Tokenizer
from vq import VQConfig, VQSign


@dataclasses.dataclass
class SignLLMConfig:
    llm: str = ""                # a Hugging Face LLaMA folder; "" = the embedded SmolLM2-135M-Instruct
    language: str = "English"    # the target language the prompt asks for
    # the text prompt of Sec. 3.1; {sign} is where the sign sentence W goes. Ours: the paper's is in its supplement
    prompt: str = "Translate this sign language sentence into {language}: {sign}"
    f_hidden: int = 1024         # width of f's hidden layer (the paper: "two fc-layers with ReLU", no width given)
    lambda_mmd: float = 0.5      # lambda_1 (Sec. 4.1)
    lambda_sim: float = 1.0      # lambda_2 (Sec. 4.1)
    max_new_tokens: int = 40
    beams: int = 1               # 1 = greedy
    prefix_cache: bool = True    # training: the prompt's fixed opening goes through the LLM once (same L_sim)
    checkpoint_llm: bool = False  # recompute the LLM blocks' activations in backward: less memory, ~1/3 more compute
    # ablations (Tables 3-5 of the paper); the defaults are SignLLM itself
    tokens: str = "words"        # CRA's (Sec. 3.3); chars (Table 5 "w/o codebook reconstruction"); features (Table 4)
    decoder: str = "llm"         # llm: the frozen LLM; transformer: a small trainable one (Table 3 "w/o LLM")
    decoder_layers: int = 2      # encoder and decoder layers of that transformer
    lora_rank: int = 0           # > 0: LoRA of this rank on the LLM's attention projections (Table 4 "Encoder + FT")
    straight_through: bool = False  # ft: L_sim reaches E_v through straight-through word tokens (cra.occurrences)


class SmallTranslator(nn.Module):
    """Table 3 "w/o LLM": a small pre-norm encoder-decoder transformer (the paper's: mBART), trained from scratch on W
    without the prompt. Vocabulary: CRA's text_ids and eos as local ids 1.. (0: start); output layer tied to input."""

    def __init__(self, d, text_ids, eos_id, layers, max_len=1024):
        super().__init__()
        if not len(text_ids):
            raise ValueError("decoder=transformer needs CRA's text_ids (the training translations' tokens): run cra")
        ids = [eos_id] + [i for i in text_ids if i != eos_id]
        self.register_buffer("vocab", torch.tensor([-1] + ids))  # local id -> tokenizer id (0: start, no token)
        self.local = {t: i for i, t in enumerate(ids, 1)}
        self.embed, self.pos = nn.Embedding(len(ids) + 1, d), nn.Embedding(max_len, d)
        for e in (self.embed, self.pos):  # N(0, 1/d): torch's N(0, 1) gives tied output logits of std ~sqrt(d)
            nn.init.normal_(e.weight, std=d ** -0.5)
        layer = dict(d_model=d, nhead=4, dim_feedforward=2 * d, batch_first=True, norm_first=True)  # pre-norm
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), layers, norm=nn.LayerNorm(d),
                                         enable_nested_tensor=False)
        self.dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), layers, norm=nn.LayerNorm(d))

    def decode(self, memory, W_mask, y):
        """Logits (B, T, V) of the token after each of y (B, T) local ids, given the encoded sign sentence."""
        T = y.shape[1]
        causal = torch.triu(torch.full((T, T), float("-inf"), device=y.device), 1)  # (T, T)
        h = self.dec(self.embed(y) + self.pos.weight[:T], memory, tgt_mask=causal, memory_key_padding_mask=~W_mask)
        return h @ self.embed.weight.t()  # (B, T, d) @ (d, V) -> (B, T, V)

    def encode(self, W, W_mask):
        return self.enc(W.float() + self.pos.weight[:W.shape[1]], src_key_padding_mask=~W_mask)  # (B, L, d)

    def loss(self, W, W_mask, targets):
        """Cross-entropy of the targets (tokenizer ids, eos last), teacher-forced: L_sim with this decoder."""
        unknown = {t for tg in targets for t in tg} - set(self.local)
        if unknown:
            raise ValueError(f"target tokens {sorted(unknown)[:8]} are not in the small decoder's vocabulary")
        gold = [torch.tensor([self.local[i] for i in t], device=W.device) for t in targets]
        gold = pad_sequence(gold, batch_first=True)  # (B, T) local ids, 0 = padding
        y = F.pad(gold[:, :-1], (1, 0))  # (B, T): the start token, then the targets shifted right
        logits = self.decode(self.encode(W, W_mask), W_mask, y)
        return F.cross_entropy(logits[gold > 0].float(), gold[gold > 0])

    def generate(self, W, W_mask, max_new_tokens):
        """Greedy decoding (under translate's no_grad) -> one list of tokenizer ids per video (eos excluded)."""
        memory = self.encode(W, W_mask)
        y = torch.zeros(W.shape[0], 1, dtype=torch.long, device=W.device)
        for _ in range(max_new_tokens):  # no cache: the whole prefix again at each step (a few layers, short text)
            logits = self.decode(memory, W_mask, y)[:, -1]  # (B, V)
            logits[:, 0] = float("-inf")  # the start token is never written
            y = torch.cat([y, logits.argmax(-1, keepdim=True)], 1)  # (B, t + 1)
        rows = [row[:row.index(1)] if 1 in row else row for row in y[:, 1:].tolist()]  # local id 1 is eos
        return [self.vocab[row].tolist() for row in rows]


class SignLLM(nn.Module):
    def __init__(self, vq, cra, llm, tok, cfg: SignLLMConfig):
        super().__init__()
        if cfg.tokens not in ("words", "chars", "features") or cfg.decoder not in ("llm", "transformer"):
            raise ValueError(f"SignLLMConfig: tokens must be words/chars/features (got {cfg.tokens!r}), decoder "
                             f"llm/transformer (got {cfg.decoder!r})")
        self.vq, self.cra, self.cfg = vq, cra, cfg
        self.decoder = (SmallTranslator(llm.cfg.dim, cra.text_ids.tolist(), tok.eos_id, cfg.decoder_layers)
                        if cfg.decoder == "transformer" else None)
        self.__dict__["llm"], self.__dict__["tok"] = llm, tok  # frozen, own checkpoint: not in our state or optimizer
        self.lora = llm.add_lora(cfg.lora_rank) if cfg.lora_rank else None  # ours (Table 4): trained, checkpointed
        before, after = tok.chat(cfg.prompt.format(language=cfg.language, sign="\0")).split("\0")
        self.prompt_before = tok.encode(before, bos=tok.add_bos)  # BOS where the tokenizer's convention says so
        self.prompt_after = tok.encode(after, bos=False)
        if cfg.lambda_mmd and cfg.tokens == "features":
            raise ValueError("tokens=features (encoder only) has no token codebook for L_MMD: set lambda_mmd=0")
        if cfg.lambda_mmd and cra.text_ids.numel() == 0:
            raise ValueError("CRA holds no text token ids for L_MMD: run the cra stage first")

    def sign_sentence(self, idx, S_w=None, z=None, z_q=None):
        """Character tokens idx (B, T) (-1 = padding) -> W (B, L, llm dim), mask (B, L): f of Sec. 3.3's words S_w[ids]
        (given z_q, their straight-through values), or of the characters (chars) or clip features z (features)."""
        if z_q is not None and self.cfg.tokens == "words":  # cra.occurrences: gradient to E_v too
            W, mask = self.cra.occurrences(idx, z_q, self.vq.g)
            return self.cra.f(W), mask  # (B, L, llm dim)
        if self.cfg.tokens == "features":
            return self.cra.f(z), idx >= 0  # (B, T, llm dim)
        if self.cfg.tokens == "chars":  # no repeat pre-processing either: that is CRA's first step
            return self.cra.f(self.vq.codebook[idx.clamp(min=0)]), idx >= 0  # (B, T, llm dim)
        words = [torch.tensor(self.cra.sentence(row[row >= 0].tolist()), dtype=torch.long) for row in idx]
        ids = pad_sequence(words, batch_first=True, padding_value=-1).to(idx.device)  # (B, L) word ids, -1: padding
        S_w = self.cra.word_table(self.vq.codebook, self.vq.g) if S_w is None else S_w  # (n_words, d)
        return self.cra.f(S_w[ids.clamp(min=0)]), ids >= 0  # (B, L, llm dim)

    def prompt_embeds(self, W, W_mask, targets=None, opening=True):
        """[prompt before (unless opening=False: see prefix) | W | prompt after | target] embedded per video, padded
        right for training, left for generation -> (embeds (B, T, dim), mask (B, T), index of each first target)."""
        embed = lambda ids: self.llm.tok_embeddings(torch.tensor(ids, dtype=torch.long, device=W.device))  # noqa: E731
        before, after = embed(self.prompt_before if opening else []), embed(self.prompt_after)
        rows = [torch.cat([before, W[b][W_mask[b]].to(before.dtype), after]) for b in range(len(W))]  # (T_b, dim)
        starts = [len(r) for r in rows]
        if targets is not None:
            rows = [torch.cat([r, embed(t)]) for r, t in zip(rows, targets)]
        side = "left" if targets is None else "right"
        mask = [torch.ones(len(r), dtype=torch.bool, device=W.device) for r in rows]
        return pad_sequence(rows, True, padding_side=side), pad_sequence(mask, True, padding_side=side), starts

    def prefix(self, B, T):
        """A KV cache for B rows of T more positions holding the prompt opening's keys and values (computed once)."""
        cfg, n, w = self.llm.cfg, len(self.prompt_before), self.llm.lm_head.weight
        if getattr(self, "_prefix_kv", None) is None or self._prefix_kv[0][0].device != w.device:
            c = KVCache(cfg, 1, n, w.device, w.dtype)
            with torch.no_grad():
                self.llm(tokens=torch.tensor([self.prompt_before], device=w.device), cache=c)
            self.__dict__["_prefix_kv"] = (c.k, c.v)  # (1, n_kv_heads, n, head_dim) per layer; not a module state
        cache = KVCache(cfg, B, n + T, w.device, w.dtype)
        for layer, (k, v) in enumerate(zip(*self._prefix_kv)):
            cache.k[layer][:, :, :n], cache.v[layer][:, :, :n] = k, v
        cache.valid[:, :n], cache.n_real[:], cache.len = True, n, n
        return cache

    def L_sim(self, W, W_mask, texts):
        """Cross-entropy of the target tokens (text + eos) given prompt and W: Sec. 3.4's L_sim."""
        targets = [self.tok.encode(t, bos=False) + [self.tok.eos_id] for t in texts]
        if self.decoder is not None:
            return self.decoder.loss(W, W_mask, targets)
        # the cached opening holds no gradient: not with activation checkpointing or LoRA (whose factors it would need)
        cached = self.cfg.prefix_cache and bool(self.prompt_before) and not (self.llm.grad_checkpointing or self.lora)
        embeds, mask, starts = self.prompt_embeds(W, W_mask, targets, opening=not cached)
        cache = self.prefix(W.shape[0], embeds.shape[1]) if cached else None
        h = self.llm(embeds=embeds, attn_mask=mask, cache=cache, hidden=True)  # (B, T, dim): logits only where needed
        h = torch.cat([h[b, s - 1:s - 1 + len(t)] for b, (s, t) in enumerate(zip(starts, targets))])  # p predicts p + 1
        gold = torch.tensor([i for t in targets for i in t], device=W.device)
        return F.cross_entropy(self.llm.lm_head(h).float(), gold)  # logits (n_target_tokens, V)

    def L_mmd(self, S_w=None):
        """Eq. 6 against the frozen LLM's input embeddings: characters and words (characters alone for tokens=chars)."""
        E = self.llm.tok_embeddings.weight
        return self.cra.mmd_loss(self.vq.codebook, self.vq.g, E, S_w, words=self.cfg.tokens == "words")

    def forward(self, batch):
        """L_ft = L_VQ + lambda_1 L_MMD + lambda_2 L_sim (Sec. 3.4) -> (loss, metrics). No L_VQ with k-means codes or
        continuous features (Table 5 row 1, Table 4 row 1), nor with the generator's units (DataConfig.oracle)."""
        z, z_q, metrics, L_vq = None, None, {}, self.vq.codebook.new_zeros(())
        if "units" in batch:
            idx = batch["units"]
        elif self.vq.config.quantizer == "vq" and self.cfg.tokens != "features":
            L_vq, m, idx, z_q = self.vq(batch)  # Eq. 2
            metrics = {"L_VQ": L_vq.item(), "cp_acc": m["cp_acc"], "usage": m["usage"]}
        else:
            z, _, idx = self.vq.encode(batch["frames"], batch["clip_mask"])
        S_w = self.cra.word_table(self.vq.codebook, self.vq.g) if self.cfg.tokens == "words" else None  # W, L_MMD
        W, W_mask = self.sign_sentence(idx, S_w, z, z_q if self.cfg.straight_through else None)
        L_sim = self.L_sim(W, W_mask, batch["text"])
        loss = L_vq + self.cfg.lambda_sim * L_sim
        metrics.update(L_sim=L_sim.item(), words=W_mask.sum(1).float().mean().item())
        if self.cfg.lambda_mmd:
            L_mmd = self.L_mmd(S_w)  # Eq. 6
            loss = loss + self.cfg.lambda_mmd * L_mmd
            metrics["L_MMD"] = L_mmd.item()
        metrics["loss"] = loss.item()
        return loss, metrics

    @torch.no_grad()
    def translate(self, frames, clip_mask, beams=None, max_new_tokens=None, units=None):
        """A batch of videos (data.collate's frames and clip_mask; units: the oracle's) -> list of translations."""
        z, _, idx = self.vq.encode(frames, clip_mask) if units is None else (None, None, units)
        W, W_mask = self.sign_sentence(idx, z=z)
        beams, max_new_tokens = beams or self.cfg.beams, max_new_tokens or self.cfg.max_new_tokens
        if self.decoder is not None:
            if beams > 1:
                raise ValueError(f"decoder=transformer decodes greedily only; got beams={beams} (set eval_beams=1)")
            out = self.decoder.generate(W, W_mask, max_new_tokens)
        else:
            embeds, mask, _ = self.prompt_embeds(W, W_mask)
            out = self.llm.generate(embeds=embeds, attn_mask=mask, beams=beams, max_new_tokens=max_new_tokens,
                                    eos_id=self.tok.eos_id)
        # one line each: a generated newline or tab would break eval's TSV rows and the CLI's line per video
        return [" ".join(self.tok.decode(o).split()) for o in out]  # (BLEU and ROUGE split on whitespace alike)


def load_llm(cfg, device):
    """The frozen LLaMA and its tokenizer: cfg.llm (a Hugging Face folder) or the embedded SmolLM2 default."""
    if cfg.llm and not os.path.isdir(cfg.llm):
        raise SystemExit(f"signllm.llm={cfg.llm}: no such folder (a Hugging Face LLaMA folder; '' for SmolLM2)")
    path = cfg.llm or engine.smollm2()
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32  # the paper's LLaMA is 16-bit
    llm = LLaMA.from_pretrained(path, dtype=dtype, device=device)  # read straight into dtype: no fp32 copy on a GPU
    llm.grad_checkpointing = cfg.checkpoint_llm
    return llm, Tokenizer.from_pretrained(path)


def build(vq_cfg, cfg, llm, tok, tensors=None):
    """A SignLLM from configs and a loaded LLM; CRA's tables from a checkpoint's tensors (none: bare characters)."""
    M, t = vq_cfg.M, {k[10:]: v for k, v in (tensors or {}).items() if k.startswith("model.cra.")}
    vocab, freqs, text_ids, sigmas = [(c,) for c in range(M + 1)], [0] * (M + 1), [], []
    if "word_chars" in t:
        vocab = [tuple(w[:n].tolist()) for w, n in zip(t["word_chars"], t["word_len"])]
        freqs, text_ids, sigmas = t["used"].int().tolist(), t["text_ids"].tolist(), t["sigmas"].tolist()
        if vocab[:M + 1] != [(c,) for c in range(M + 1)] or (M + 1,) in vocab:  # characters 0..M, s0 = M
            raise SystemExit(f"vq.M: checkpoint {tensors['model.vq.codebook'].shape[0]}, now {M} (the vocabulary's "
                             "characters are the checkpoint's codebook)")
        if t["f.fc2.weight"].shape[0] != llm.cfg.dim:  # f: d -> the LLM's width
            raise SystemExit(f"f projects to width {t['f.fc2.weight'].shape[0]} in the checkpoint, the LLM now "
                             f"(llm={cfg.llm!r}) has width {llm.cfg.dim}: pass the LLM it was trained with")
    tokens = cra.SignTokens(vocab, freqs, M, vq_cfg.d, llm.cfg.dim, cfg.f_hidden, text_ids, sigmas)
    return SignLLM(VQSign(vq_cfg), tokens, llm, tok, cfg)


def from_checkpoint(folder, vq_cfg=None, cfg=None, device="cpu"):
    """A trained SignLLM from a training output folder (out/ft, or out/cra) -> (model, the checkpoint's config dict);
    configs default to the checkpoint's. Parts that ft creates (Table 3's decoder, LoRA) start fresh in a cra one."""
    meta, tensors = engine.read(folder, "best")
    saved = meta["config"]  # the configs it was trained with
    vq_cfg = vq_cfg or VQConfig(**saved["vq"])
    cfg = cfg or SignLLMConfig(**saved["signllm"])
    model = build(vq_cfg, cfg, *load_llm(cfg, device), tensors).to(device)
    new = tuple(p for p in ("decoder.", "lora.") if not any(k.startswith("model." + p) for k in tensors))
    fresh = {f"model.{k}": v for k, v in model.state_dict().items() if k.startswith(new)} if new else {}
    now = {"vq": dataclasses.asdict(vq_cfg), "signllm": dataclasses.asdict(cfg)}
    engine.restore(model, {**tensors, **fresh}, meta, now, where=os.path.join(folder, meta["weights"]))
    return model, saved


def main(argv=None):
    p = argparse.ArgumentParser(description="Translate sign videos (video files or frame folders) with a checkpoint")
    p.add_argument("--ckpt", required=True, help="a training output folder (e.g. out/ft)")
    p.add_argument("--beams", type=int, default=None)
    p.add_argument("videos", nargs="+")
    args = p.parse_args(argv)
    import data
    model, saved = from_checkpoint(args.ckpt)
    model.eval()
    data_cfg = data.DataConfig(**dict(saved["data"], skip_bad=False))  # a bad video: say why
    for path in args.videos:
        sample = data.Sample(name=os.path.basename(path.rstrip("/")), text="", gloss=None, path=path)
        try:
            batch = data.collate([data.SignDataset([sample], data_cfg, train=False)[0]])
        except data.DataError as e:
            raise SystemExit(f"error: {e}")
        print(f"{path}\t{model.translate(batch['frames'], batch['clip_mask'], beams=args.beams)[0]}")


if __name__ == "__main__":
    main()
