"""SignLLM (Sec. 3.1, 3.4): VQ-Sign -> CRA -> projection f -> a frozen LLaMA that writes the translation.

    frames --VQ-Sign--> character tokens (idx) --CRA: repeats + s0, segment--> word ids
           --S^w (words composed through g)--> f --> the sign sentence W, spliced into a text prompt
           --frozen LLaMA--> translation

Training (Sec. 3.4): L_ft = L_VQ + lambda_1 L_MMD + lambda_2 L_sim, with L_sim the cross-entropy of the target text
given the prompt and W (teacher forcing, target tokens only); the LLM's weights never change, gradients go through it
to W. Inference: greedy or beam search with the LLM's KV cache.

    python signllm.py --ckpt out/ft path/to/video_or_frame_folder ...   # translate a user's own videos
"""
import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class SignLLMConfig:
    language: str = "English"
    # the text prompt of Sec. 3.1; {sign} is where the sign sentence W goes. Ours: the paper's is in its supplement
    prompt: str = "Translate this sign language sentence into {language}: {sign}"
    lambda_mmd: float = 0.5      # lambda_1 (Sec. 4.1)
    lambda_sim: float = 1.0      # lambda_2 (Sec. 4.1)
    max_new_tokens: int = 40
    beams: int = 1               # 1 = greedy


class SignLLM(nn.Module):
    def __init__(self, vq, cra, llm, tok, cfg: SignLLMConfig):
        super().__init__()
        self.vq, self.cra, self.cfg = vq, cra, cfg
        # the LLM is frozen and comes from its own checkpoint: kept out of our modules, state dicts and optimizer
        self.__dict__["llm"], self.__dict__["tok"] = llm, tok
        text = tok.chat(cfg.prompt.format(language=cfg.language, sign="\0"))
        before, after = text.split("\0")
        self.prompt_before, self.prompt_after = tok.encode(before, bos=False), tok.encode(after)
        if cfg.lambda_mmd and cra.text_ids.numel() == 0:
            raise ValueError("CRA holds no text token ids for L_MMD: run the cra stage first")

    def sign_sentence(self, idx, S_w=None):
        """Character tokens idx (B, T) (-1 = padding) -> W (B, L, llm dim) and its mask (B, L): Sec. 3.3's word
        tokens, projected by f. S_w: the word codebook, if the caller has computed it already."""
        words = [self.cra.sentence(row[row >= 0].tolist()) for row in idx]
        L = max(len(w) for w in words)
        ids = torch.zeros(len(words), L, dtype=torch.long, device=idx.device)
        mask = torch.zeros(len(words), L, dtype=torch.bool, device=idx.device)
        for b, w in enumerate(words):
            ids[b, :len(w)], mask[b, :len(w)] = torch.tensor(w, device=idx.device), True
        S_w = self.cra.word_table(self.vq.codebook, self.vq.g) if S_w is None else S_w  # (n_words, d)
        return self.cra.f(S_w[ids]), mask  # (B, L, llm dim)

    def prompt_embeds(self, W, W_mask, targets=None):
        """Per sample [prompt before | W | prompt after | target] as LLM input embeddings, padded (right for
        training, left for generation) -> (embeds (B, T, dim), mask (B, T), index of the first target token)."""
        E = self.llm.tok_embeddings
        dev = W.device
        ids = lambda t: torch.tensor(t, dtype=torch.long, device=dev)  # noqa: E731  (may be empty)
        before, after = E(ids(self.prompt_before)), E(ids(self.prompt_after))
        rows, starts = [], []
        for b in range(W.shape[0]):
            parts = [before, W[b][W_mask[b]].to(before.dtype), after]
            starts.append(sum(p.shape[0] for p in parts))
            if targets is not None:
                parts.append(E(ids(targets[b])))
            rows.append(torch.cat(parts))  # (T_b, dim)
        T = max(r.shape[0] for r in rows)
        embeds = W.new_zeros(len(rows), T, before.shape[1], dtype=before.dtype)
        mask = torch.zeros(len(rows), T, dtype=torch.bool, device=dev)
        for b, r in enumerate(rows):
            sl = slice(0, r.shape[0]) if targets is not None else slice(T - r.shape[0], T)  # right / left padding
            embeds[b, sl], mask[b, sl] = r, True
        return embeds, mask, starts

    def L_sim(self, W, W_mask, texts):
        """Cross-entropy of the target tokens (text + eos) given prompt and W: Sec. 3.4's L_sim."""
        targets = [self.tok.encode(t) + [self.tok.eos_id] for t in texts]
        embeds, mask, starts = self.prompt_embeds(W, W_mask, targets)
        h = self.llm(embeds=embeds, attn_mask=mask, hidden=True)  # (B, T, dim): logits only where needed
        pos = torch.cat([torch.arange(s - 1, s - 1 + len(t)) for s, t in zip(starts, targets)]).to(W.device)
        row = torch.cat([torch.full((len(t),), b) for b, t in enumerate(targets)]).to(W.device)
        logits = self.llm.lm_head(h[row, pos])  # (n_target_tokens, V): position p predicts token p + 1
        gold = torch.tensor([i for t in targets for i in t], device=W.device)
        return F.cross_entropy(logits.float(), gold)

    def forward(self, batch):
        """L_ft = L_VQ + lambda_1 L_MMD + lambda_2 L_sim (Sec. 3.4) -> (loss, metrics)."""
        L_vq, metrics, idx = self.vq(batch)  # Eq. 2
        S_w = self.cra.word_table(self.vq.codebook, self.vq.g)  # once per step: used by W and by L_MMD
        W, W_mask = self.sign_sentence(idx, S_w)
        L_sim = self.L_sim(W, W_mask, batch["text"])
        loss = L_vq + self.cfg.lambda_sim * L_sim
        metrics = {"L_VQ": L_vq.item(), "L_sim": L_sim.item(), "words": W_mask.sum(1).float().mean().item(),
                   "cp_acc": metrics["cp_acc"], "usage": metrics["usage"]}
        if self.cfg.lambda_mmd:
            L_mmd = self.cra.mmd_loss(self.vq.codebook, self.vq.g, self.llm.tok_embeddings.weight, S_w)  # Eq. 6
            loss = loss + self.cfg.lambda_mmd * L_mmd
            metrics["L_MMD"] = L_mmd.item()
        metrics["loss"] = loss.item()
        return loss, metrics

    @torch.no_grad()
    def translate(self, frames, clip_mask, beams=None, max_new_tokens=None):
        """A batch of videos (data.collate's frames and clip_mask) -> list of translations."""
        _, _, idx = self.vq.encode(frames, clip_mask)
        W, W_mask = self.sign_sentence(idx)
        embeds, mask, _ = self.prompt_embeds(W, W_mask)
        out = self.llm.generate(embeds=embeds, attn_mask=mask, beams=beams or self.cfg.beams,
                                max_new_tokens=max_new_tokens or self.cfg.max_new_tokens, eos_id=self.tok.eos_id)
        return [self.tok.decode(o).strip() for o in out]


def main(argv=None):
    p = argparse.ArgumentParser(description="Translate sign videos (video files or frame folders) with a checkpoint")
    p.add_argument("--ckpt", required=True, help="a training output folder (e.g. out/ft)")
    p.add_argument("--beams", type=int, default=None)
    p.add_argument("videos", nargs="+")
    args = p.parse_args(argv)
    import data
    import train
    model, cfg = train.load_signllm(args.ckpt)
    model.eval()
    for path in args.videos:
        sample = data.Sample(name=os.path.basename(path.rstrip("/")), text="", gloss=None, path=path)
        try:
            ds = data.SignDataset([sample], dataclasses.replace(cfg.data, skip_bad=False), train=False)  # say why
            batch = data.collate([ds[0]])
        except data.DataError as e:
            sys.exit(f"error: {e}")
        print(f"{path}\t{model.translate(batch['frames'], batch['clip_mask'], beams=args.beams)[0]}")


if __name__ == "__main__":
    main()
