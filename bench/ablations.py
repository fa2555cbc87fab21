"""The paper's ablations (Tables 3-5) and our oracle rows, as variants of SignLLM: each a subclass that overrides the
one step it changes, plus a stage function where a row trains otherwise than train.py's recipe. bench/report.py runs
them as rows (`train.main(argv, Model=..., stages=...)`); none of this is in the model files.

    EncoderOnly        Tab. 4 "Encoder only": clip features z -> f -> LLM; no tokens, no vq or cra stage
    EncoderLoRA        Tab. 4 "Encoder + FT": the same with LoRA (rank 8) on the LLM's attention projections
    KMeans             Tab. 5 "w/o VQ-Sign": characters from frozen k-means centroids of an encoder-only run's z
    Characters         Tab. 5 "w/o codebook reconstruction": VQ-Sign's characters through f, no words
    SmallDecoder       Tab. 3 "w/o LLM": a small encoder-decoder transformer trained in place of the frozen LLM
    oracle(kind)       ours: the generator's primitives or glosses as the characters (the tokenization's ceiling)
    StraightThrough    ours, off in SignLLM: word tokens from their own clips' z_q, so L_sim reaches E_v
"Tab. 5 w/o sign-text alignment" is SignLLM with lambda_mmd = 0, and Table 3's smaller LLM is --llm=FOLDER: settings.
"""
import dataclasses
import functools
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cra  # noqa: E402
import data  # noqa: E402
import synthetic  # noqa: E402
import engine  # noqa: E402
import train  # noqa: E402
from signllm import SignLLM  # noqa: E402
from signllm_kernels.mmd import mmd  # noqa: E402
from vq import VQSign  # noqa: E402


def zero(model):
    return model.vq.codebook.new_zeros(())


def text_of(model, W, W_mask, beams, max_new_tokens):
    """SignLLM.translate's last steps for a variant's own sign sentence W: the frozen LLM's text, one line each."""
    out = model.generate(W, W_mask, beams or model.cfg.beams, max_new_tokens or model.cfg.max_new_tokens)
    return [" ".join(model.tok.decode(o).split()) for o in out]


# ---- Table 4: the encoder's features, no tokens -------------------------------------------------------------------

class EncoderOnly(SignLLM):
    """Table 4 "Encoder only": z -> f -> the frozen LLM; no tokens, so no L_VQ and no L_MMD (run with lambda_mmd=0).
    E_v learns from L_sim alone. It has no vq or cra stage: ft starts from scratch (stage_ft_from_scratch)."""

    def __init__(self, vq, cra, llm, tok, cfg):
        if cfg.lambda_mmd:
            raise ValueError("encoder only has no token codebook for L_MMD: set lambda_mmd=0")
        super().__init__(vq, cra, llm, tok, cfg)

    def forward(self, batch):
        z, _, idx = self.vq.encode(batch)  # (B, T, d), no quantization loss
        W, W_mask = self.cra.f(z), idx >= 0  # (B, T, llm dim)
        L_sim = self.L_sim(W, W_mask, batch["text"])
        loss = zero(self) + self.cfg.lambda_sim * L_sim
        return loss, {"L_sim": L_sim.item(), "words": W_mask.sum(1).float().mean().item(), "loss": loss.item()}

    @torch.no_grad()
    def translate(self, batch, beams=None, max_new_tokens=None):
        z, _, idx = self.vq.encode(batch)
        return text_of(self, self.cra.f(z), idx >= 0, beams, max_new_tokens)


class LoRA(nn.Module):
    """A low-rank adapter (LoRA [32]) beside a frozen weight W: x W^T becomes x W^T + scale (x A^T) B^T."""
    def __init__(self, d_in, d_out, rank, alpha):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in).uniform_(-1, 1) / d_in ** 0.5)  # (r, in): nn.Linear's init
        self.B = nn.Parameter(torch.zeros(d_out, rank))  # (out, r): zero, so the model starts unchanged
        self.scale = alpha / rank

    def forward(self, x):
        return self.scale * F.linear(F.linear(x.to(self.A.dtype), self.A), self.B)  # (.., in) -> (.., r) -> (.., out)



class Adapted(nn.Module):
    """A frozen linear layer with a LoRA beside it: x W^T + lora(x)."""

    def __init__(self, base, lora):
        super().__init__()
        self.base, self.__dict__["lora"] = base, lora  # the adapter is registered, saved and trained by its model

    def forward(self, x):
        y = self.base(x)
        return y + self.lora(x).to(y.dtype)


def add_lora(llm, rank, alpha):
    """LoRA on each attention projection (wq, wk, wv, wo) of a frozen LLaMA -> the adapters, for a model to register,
    save and train (keys <layer>.<projection>.A / .B)."""
    lora = nn.ModuleList()
    for block in llm.layers:
        lins = {name: getattr(block.attn, name) for name in ("wq", "wk", "wv", "wo")}
        lora.append(nn.ModuleDict({n: LoRA(m.in_features, m.out_features, rank, alpha) for n, m in lins.items()}))
        for name, lin in lins.items():
            setattr(block.attn, name, Adapted(lin, lora[-1][name]))
    return lora.to(llm.lm_head.weight.device)


class EncoderLoRA(EncoderOnly):
    """Table 4 "Encoder + FT": encoder only, with LoRA on each attention projection of the LLM (rank 8, alpha 16: the
    paper gives no rank or targets). Its factors are trained and checkpointed with the model (keys lora.*)."""
    rank, alpha = 8, 16

    def __init__(self, vq, cra, llm, tok, cfg):
        # the prompt opening's KV cache holds no gradient: with LoRA it would need the factors', so it is off
        super().__init__(vq, cra, llm, tok, dataclasses.replace(cfg, prefix_cache=False))
        self.lora = add_lora(llm, self.rank, self.alpha)


def stage_ft_from_scratch(cfg, Model):
    """ft of a model with no vq or cra stage (the encoder rows): built from scratch, then train.finetune."""
    train_set, dev_set, skipped = train.prepare_data(cfg)
    device = engine.device_of(cfg)
    model = train.build_model(cfg.vq, cfg.signllm, *train.load_llm(cfg.signllm, device), Model=Model).to(device)
    return train.finetune(cfg, model, train_set, dev_set, skipped)


# ---- Table 5: w/o VQ-Sign, w/o codebook reconstruction ------------------------------------------------------------

class KMeans(SignLLM):
    """Table 5 "w/o VQ-Sign": the characters are the nearest of M frozen k-means centroids of an encoder-only run's
    clip features (stage_kmeans); no L_VQ, and no gradient reaches E_v in ft (the word ids are discrete)."""

    def __init__(self, vq, cra, llm, tok, cfg):
        super().__init__(vq, cra, llm, tok, cfg)
        self.vq.codebook.requires_grad_(False)

    def characters(self, batch):
        return self.vq.encode(batch)[2], zero(self), {}


def stage_kmeans(cfg, Model, encoder):
    """The vq stage of "w/o VQ-Sign": the E_v of an encoder-only run's ft (folder `encoder`), its training clips'
    features quantized by k-means, k = M, written as out/vq's checkpoint without training."""
    train_set, _, _ = train.prepare_data(cfg)
    source, _ = train.load_model(encoder, Model=EncoderOnly)
    vq = VQSign(cfg.vq).to(engine.device_of(cfg))
    vq.encoder.load_state_dict(source.vq.encoder.state_dict(), strict=True)
    n = train.fit_codebook(vq, data.SignDataset(train_set.samples, cfg.data, train=False), cfg, seed=cfg.seed)
    print(f"k-means: {cfg.vq.M} centroids of {n} clip features of {encoder}'s encoder")
    engine.finish(os.path.join(cfg.out_dir, "vq"), cfg, untrained=vq)


class Characters(SignLLM):
    """Table 5 "w/o codebook reconstruction": VQ-Sign's characters straight through f, no repeat pre-processing and
    no words; L_MMD aligns the M characters alone (no s0)."""

    def word_table(self):
        return None

    def sign_sentence(self, idx, S_w=None):
        return self.cra.f(self.vq.codebook[idx.clamp(min=0)]), idx >= 0  # (B, T, llm dim)

    def L_mmd(self, S_w=None):
        q = self.cra.text_tokens(self.llm.tok_embeddings.weight)
        with torch.autocast(q.device.type, enabled=False):
            return mmd(self.cra.f(self.vq.codebook.float()), q, self.cra.sigmas.tolist())


# ---- Table 3: w/o LLM ---------------------------------------------------------------------------------------------

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



class SmallDecoder(SignLLM):
    """Table 3 "w/o LLM": SmallTranslator (2 + 2 layers, greedy) trained on W in place of the frozen LLM, L_sim its
    cross-entropy. It shares SignLLM's vq and cra; ft adds the decoder (stage_ft_new_decoder)."""
    layers = 2

    def __init__(self, vq, cra, llm, tok, cfg):
        super().__init__(vq, cra, llm, tok, cfg)
        self.decoder = SmallTranslator(llm.cfg.dim, cra.text_ids.tolist(), tok.eos_id, self.layers)

    def L_sim(self, W, W_mask, texts):
        return self.decoder.loss(W, W_mask, [self.tok.encode(t, bos=False) + [self.tok.eos_id] for t in texts])

    def generate(self, W, W_mask, beams, max_new_tokens):
        if beams > 1:
            raise ValueError(f"the small decoder decodes greedily only; got beams={beams} (set eval_beams=1)")
        return self.decoder.generate(W, W_mask, max_new_tokens)


def stage_ft_new_decoder(cfg, Model):
    """ft from the cra stage's checkpoint, which has no decoder: the decoder starts as initialized."""
    train_set, dev_set, skipped = train.prepare_data(cfg)
    device, folder = engine.device_of(cfg), os.path.join(cfg.out_dir, "cra")
    meta, tensors = engine.read(folder, "best")
    model = train.build_model(cfg.vq, cfg.signllm, *train.load_llm(cfg.signllm, device), tensors, Model).to(device)
    fresh = {f"model.{k}": v for k, v in model.state_dict().items() if k.startswith("decoder.")}
    engine.restore(model, {**tensors, **fresh}, meta, where=os.path.join(folder, meta["weights"]))
    return train.finetune(cfg, model, train_set, dev_set, skipped)


# ---- ours: the generator's units as characters; straight-through words --------------------------------------------

class Oracle(SignLLM):
    """The synthetic generator's own units (kind: its primitives, or its glosses) at each clip's centre as the
    characters, in place of VQ-Sign's codes (at rest: one more id); CRA, f and the LLM as SignLLM's. No L_VQ."""
    kind, root = "primitives", ""

    def units(self, batch):
        """(B, T) unit ids of a batch (-1: padding), from the ground truth and the frames each item holds."""
        gt = self.__dict__.setdefault("gt", synthetic.read_ground_truth(self.root))
        ids = list(gt["lexicon" if self.kind == "glosses" else "primitives"])
        out = []
        for name, kept in zip(batch["name"], batch["frame_ids"]):
            v = gt["videos"][name]
            per_frame = np.full(v["n_frames"], len(ids))
            for label, a, b in v[self.kind]:
                per_frame[a:b] = ids.index(label) if self.kind == "glosses" else label
            centre = np.minimum(np.arange(data.num_clips(len(kept))) * data.CLIP_STRIDE + data.CLIP_LEN // 2,
                                len(kept) - 1)
            out.append(torch.from_numpy(per_frame[kept][centre]))
        return pad_sequence(out, True, -1).to(batch["frames"].device)  # (B, T)

    def characters(self, batch):
        return self.units(batch), zero(self), {}

    @torch.no_grad()
    def translate(self, batch, beams=None, max_new_tokens=None):
        return text_of(self, *self.sign_sentence(self.units(batch)), beams, max_new_tokens)


def oracle(kind, root):
    """The Oracle of a data set: kind "primitives" or "glosses", root its folder (with ground_truth.json)."""
    return type(f"Oracle_{kind}", (Oracle,), {"kind": kind, "root": root})


def stage_cra_oracle(cfg, Model):
    """The cra stage on the units: the vocabulary searched on the training videos' unit sequences, then train.py's
    cra stage with it (f and s0 by L_MMD)."""
    train_set, _, _ = train.prepare_data(cfg)
    plain = data.SignDataset(train_set.samples, cfg.data, train=False)
    model = Model.__new__(Model)  # units() reads the ground truth only

    def fn(batch):
        units = Model.units(model, batch)
        if (top := int(units.max())) >= cfg.vq.M:
            raise SystemExit(f"the {Model.kind} oracle has unit {top}, beyond the vq.M={cfg.vq.M} characters: pass a "
                             "larger --vq.M")
        return [u[u >= 0].tolist() for u in units]
    seqs = [cra.preprocess(s, cfg.vq.M) for p in engine.over_split(plain, cfg.vq_batch_size, cfg, fn) for s in p]
    res = cra.search(seqs, dataclasses.replace(cfg.cra, n_chars=cfg.vq.M))  # Eq. 3-5 on the units
    with tempfile.TemporaryDirectory() as tmp:
        cra.save_vocab(os.path.join(tmp, "vocab.txt"), res)
        return train.stage_cra(dataclasses.replace(cfg, cra_vocab=os.path.join(tmp, "vocab.txt")), Model)


def occurrences(tokens, idx, z_q, g):
    """Each video's words composed through g from the straight-through features z_q (B, T, d) of their clips (a
    run's first; s0 its own vector): the values of S^w[word], with L_sim's gradient reaching E_v. -> (B, L, d), mask."""
    B, T, d = z_q.shape
    table = torch.cat([z_q.reshape(B * T, d), tokens.s0[None].to(z_q.dtype)])  # (B T + 1, d): s0 is the last row
    rows, per_video = [], []
    for b, row in enumerate(idx):
        chars = row[row >= 0].tolist()
        seq, alpha, pos, start = [], cra.repeat_alpha(chars), [], 0  # cra.preprocess, keeping each token's clip
        for t, n in cra.runs(chars):
            seq, pos = seq + [t], pos + [b * T + start]
            if alpha is not None and n > alpha:
                seq, pos = seq + [tokens.n_chars], pos + [B * T]  # s0
            start += n
        k, words = 0, cra.longest_match(seq, tokens.trie)
        for w in words:
            rows.append(pos[k:k + len(tokens.vocab[w])])
            k += len(tokens.vocab[w])
        per_video.append(len(words))
    n = torch.tensor([len(r) for r in rows], device=z_q.device)
    at = torch.tensor([r + [B * T] * (int(n.max()) - len(r)) for r in rows], device=z_q.device)  # (words, L_w)
    x = cra.compose(g, table[at], n)  # (words, d)
    mask = torch.arange(max(per_video), device=z_q.device) < torch.tensor(per_video, device=z_q.device)[:, None]
    return x.new_zeros(B, mask.shape[1], d).index_put_((mask,), x), mask  # (B, L, d)


class StraightThrough(SignLLM):
    """Ours, off in SignLLM: in ft each word token is composed through g from its own clips' straight-through
    features z_q (cra's S^w[word] is their value), so L_sim's gradient reaches E_v; translation reads S^w."""

    def characters(self, batch):
        L_vq, m, idx, self.__dict__["z_q"] = self.vq(batch)
        return idx, L_vq, {"L_VQ": L_vq.item(), "cp_acc": m["cp_acc"], "usage": m["usage"]}

    def sign_sentence(self, idx, S_w=None):
        if not self.training:
            return super().sign_sentence(idx, S_w)
        W, mask = occurrences(self.cra, idx, self.z_q, self.vq.g)
        return self.cra.f(W), mask


def row_variant(key, out, root):
    """(Model, stages) of a bench/report.py row: out, the seed's folder of rows; root, the data set."""
    return {"encoder_only": (EncoderOnly, {"ft": stage_ft_from_scratch}),
            "lora": (EncoderLoRA, {"ft": stage_ft_from_scratch}),
            "no_vq": (KMeans, {"vq": functools.partial(stage_kmeans, encoder=os.path.join(out, "encoder_only", "ft"))}),
            "no_cr": (Characters, {}),
            "no_llm": (SmallDecoder, {"ft": stage_ft_new_decoder}),
            "oracle_prims": (oracle("primitives", root), {"cra": stage_cra_oracle}),
            "oracle_glosses": (oracle("glosses", root), {"cra": stage_cra_oracle}),
            "straight_through": (StraightThrough, {})}.get(key, (SignLLM, {}))
