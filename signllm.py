"""SignLLM (Sec. 3.1, 3.4): VQ-Sign -> CRA -> projection f -> a frozen LLaMA that writes the translation.

    frames --VQ-Sign (vq.py)--> character tokens --CRA (cra.py): repeats + s0, longest-match words--> S^w[word ids]
           --f--> the sign sentence W, spliced into a text prompt --frozen LLaMA (llama.py)--> translation

Training (Sec. 3.4): L_ft = L_VQ + lambda_1 L_MMD + lambda_2 L_sim, L_sim the teacher-forced cross-entropy of the
target text, its gradient going through the frozen LLM to W. Inference: greedy or beam search with a KV cache.
This file is the model and nothing else: train.py builds, trains and loads it, translate.py runs it on your videos,
and the paper's ablations (Tables 3-5) are subclasses in bench/ablations.py that override the one step they change."""
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from llama import KVCache


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


class SignLLM(nn.Module):
    """vq: VQ-Sign (vq.VQSign); cra: CRA's learned side (cra.SignTokens: s0, the word vocabulary, f); llm, tok: the
    frozen LLaMA and its tokenizer, kept out of our state dict and optimizer (they have their own checkpoint)."""

    def __init__(self, vq, cra, llm, tok, cfg: SignLLMConfig):
        super().__init__()
        self.vq, self.cra, self.cfg = vq, cra, cfg
        self.__dict__["llm"], self.__dict__["tok"] = llm, tok  # plain attributes: not submodules
        before, after = tok.chat(cfg.prompt.format(language=cfg.language, sign="\0")).split("\0")
        self.prompt_before = tok.encode(before, bos=tok.add_bos)  # BOS where the tokenizer's convention says so
        self.prompt_after = tok.encode(after, bos=False)
        if cfg.lambda_mmd and cra.text_ids.numel() == 0:
            raise ValueError("CRA holds no text token ids for L_MMD: run the cra stage first")

    # ---- from a video to its sign sentence W (Sec. 3.2, 3.3)

    def characters(self, batch):
        """Sec. 3.2: VQ-Sign's character tokens idx (B, T) (-1: padding), L_VQ (Eq. 1-2) and what to log of it."""
        L_vq, m, idx, _ = self.vq(batch)
        return idx, L_vq, {"L_VQ": L_vq.item(), "cp_acc": m["cp_acc"], "usage": m["usage"]}

    def word_table(self):
        """S^w (n_words, d): every word of CRA's vocabulary composed from its characters through g (Sec. 3.3)."""
        return self.cra.word_table(self.vq.codebook, self.vq.g)

    def sign_sentence(self, idx, S_w=None):
        """Character tokens idx (B, T) -> W (B, L, llm dim), mask (B, L): each video's words (repeats -> s0, then the
        longest vocabulary word at each position), their S^w rows through f."""
        words = [torch.tensor(self.cra.sentence(row[row >= 0].tolist()), dtype=torch.long) for row in idx]
        ids = pad_sequence(words, batch_first=True, padding_value=-1).to(idx.device)  # (B, L) word ids, -1: padding
        S_w = self.word_table() if S_w is None else S_w  # (n_words, d)
        return self.cra.f(S_w[ids.clamp(min=0)]), ids >= 0  # (B, L, llm dim)

    # ---- the frozen LLM: the prompt around W, L_sim, generation (Sec. 3.1, 3.4)

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
        cached = self.cfg.prefix_cache and bool(self.prompt_before) and not self.llm.grad_checkpointing  # no gradient
        embeds, mask, starts = self.prompt_embeds(W, W_mask, targets, opening=not cached)
        cache = self.prefix(W.shape[0], embeds.shape[1]) if cached else None
        h = self.llm(embeds=embeds, attn_mask=mask, cache=cache, hidden=True)  # (B, T, dim): logits only where needed
        h = torch.cat([h[b, s - 1:s - 1 + len(t)] for b, (s, t) in enumerate(zip(starts, targets))])  # p predicts p + 1
        gold = torch.tensor([i for t in targets for i in t], device=W.device)
        return F.cross_entropy(self.llm.lm_head(h).float(), gold)  # logits (n_target_tokens, V)

    def L_mmd(self, S_w=None):
        """Eq. 6: MMD between f of the sign tokens (characters and words) and the frozen LLM's text embeddings."""
        return self.cra.mmd_loss(self.vq.codebook, self.vq.g, self.llm.tok_embeddings.weight, S_w)

    def forward(self, batch):
        """L_ft = L_VQ + lambda_1 L_MMD + lambda_2 L_sim (Sec. 3.4) -> (loss, metrics)."""
        idx, L_vq, metrics = self.characters(batch)  # Eq. 1-2
        S_w = self.word_table()  # one composition through g serves W and L_MMD
        W, W_mask = self.sign_sentence(idx, S_w)
        L_sim = self.L_sim(W, W_mask, batch["text"])
        loss = L_vq + self.cfg.lambda_sim * L_sim
        metrics.update(L_sim=L_sim.item(), words=W_mask.sum(1).float().mean().item())
        if self.cfg.lambda_mmd:  # lambda_1 = 0: nothing to align (Table 5's "w/o sign-text alignment")
            L_mmd = self.L_mmd(S_w)  # Eq. 6
            loss = loss + self.cfg.lambda_mmd * L_mmd
            metrics["L_MMD"] = L_mmd.item()
        metrics["loss"] = loss.item()
        return loss, metrics

    @torch.no_grad()
    def generate(self, W, W_mask, beams, max_new_tokens):
        """The frozen LLM continues [prompt | W | prompt] by beam search (beams=1: greedy) -> token lists (no eos)."""
        embeds, mask, _ = self.prompt_embeds(W, W_mask)
        return self.llm.generate(embeds, mask, beams=beams, max_new_tokens=max_new_tokens, eos_id=self.tok.eos_id)

    @torch.no_grad()
    def translate(self, batch, beams=None, max_new_tokens=None):
        """A data.collate batch of videos -> their translations: characters, words, W, the frozen LLM's text."""
        idx = self.vq.encode(batch)[2]  # at inference the characters alone: no L_VQ
        beams, max_new_tokens = beams or self.cfg.beams, max_new_tokens or self.cfg.max_new_tokens
        out = self.generate(*self.sign_sentence(idx), beams, max_new_tokens)
        # one line each: a generated newline or tab would break eval's TSV rows and the CLI's line per video;
        # BLEU and ROUGE split on whitespace alike, so the scores do not change
        return [" ".join(self.tok.decode(o).split()) for o in out]
