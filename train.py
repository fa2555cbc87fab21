"""Training of SignLLM (Sec. 3.4), nanoGPT-style: defaults in one dataclass, presets as plain dicts, any field
overridden with --key=value (nested: --vq.d=128). Stages vq, cra, ft, eval each write out/<stage>/, data-parallel
under torchrun; checkpoints, exact resume and the DDP plumbing are engine.py's.

    python train.py                                 # all stages on the synthetic default: vq -> cra -> ft -> eval
    python train.py --stage vq --resume             # continue out/vq/ from its newest checkpoint, exactly
    python train.py --stage vq --preset=phoenix --data.root=/data/PHOENIX-2014-T --vq.resnet_weights=resnet18.pth
"""
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import cra
import data
import engine
import metrics
import signllm
from cra import CRAConfig
from data import DataConfig
from engine import rank_world
from signllm import SignLLM, SignLLMConfig
from vq import VQConfig, VQSign, codebook_usage, kmeans, token_alignment


@dataclass
class TrainConfig:
    stage: str = "all"            # vq | cra | ft | eval | all (vq -> cra -> ft -> eval)
    preset: str = "synthetic"
    out_dir: str = "out"          # stage s writes out_dir/s/
    resume: bool = False          # continue from out_dir/<stage>/ckpt-*.json
    overwrite: bool = False       # start afresh, deleting the stage's checkpoints
    seed: int = 1337
    device: str = "auto"          # auto: cuda if available, else cpu
    num_workers: int = 1          # DataLoader processes (0: the main process)
    threads: int = 0              # torch CPU threads (0: torch's default)
    make_synthetic: bool = False  # write the synthetic sign language into a missing data.root
    synthetic_size: str = "default"  # tiny | default | large (data.SIZES)
    log_every: int = 1            # steps per log line
    skip_nonfinite: bool = False  # a NaN/inf loss or gradient skips the step instead of stopping
    grad_accum: int = 1           # micro-batches per process per step (batch sizes are global)
    # stage vq: pre-train VQ-Sign (Sec. 3.4 (i), Sec. 4.1)
    vq_lr: float = 0.01           # Adam (Sec. 4.1)
    vq_min_lr: float = 0.0005     # cosine decay after warm-up (ours: the paper gives the initial lr only)
    vq_warmup: int = 50           # (ours)
    vq_epochs: int = 200          # Sec. 4.1
    vq_max_steps: int = 0         # > 0: instead of vq_epochs
    vq_batch_size: int = 2        # (the paper does not say)
    vq_grad_clip: float = 1.0     # global gradient norm (0: off)
    vq_eval_every: int = 1000     # (and at the end)
    vq_ckpt_every: int = 1000
    # stage cra: the word codebook search (Sec. 3.3), then f and s0 trained with L_MMD (Eq. 6)
    cra_lr: float = 0.001
    cra_steps: int = 200          # on L_MMD (ours: the paper gives no schedule)
    cra_vocab: str = ""           # a vocab.txt to use instead of searching
    cra_refit: int = 0            # Lloyd steps on the codebook before the search (ours)
    kmeans_encoder: str = ""      # vq.quantizer=kmeans: an encoder-only run's out/ft
    # stage ft: L_ft = L_VQ + 0.5 L_MMD + 1.0 L_sim with the LLM frozen (Sec. 3.4, 4.1)
    ft_lr: float = 0.001          # Sec. 4.1
    ft_min_lr: float = 0.0001     # (ours)
    ft_warmup: int = 20
    ft_epochs: int = 20           # Sec. 4.1
    ft_max_steps: int = 0
    ft_batch_size: int = 8
    ft_grad_clip: float = 1.0
    ft_eval_every: int = 1000     # dev BLEU (greedy generation) and a checkpoint
    eval_beams: int = 4           # the final evaluation's beam size
    data: DataConfig = field(default_factory=DataConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    cra: CRAConfig = field(default_factory=CRAConfig)
    signllm: SignLLMConfig = field(default_factory=SignLLMConfig)


PRESETS = {
    # the CPU demo: 32 x 32 frames, a width-16 ResNet18, d = 128, M = 64
    "synthetic": {"data.root": "data/synthetic", "make_synthetic": True, "data.image_size": 32,
                  "vq.width": 16, "vq.d": 128, "vq.M": 64, "vq.reseed_every": 10, "vq_lr": 0.003, "vq_min_lr": 0.0003,
                  # Eq. 1's negatives from the same video, its mean z removed: E_v cannot tell signers by colour
                  "vq.negatives": "video", "vq.center": True,
                  "vq_batch_size": 8, "vq_max_steps": 800, "vq_warmup": 50, "vq_eval_every": 200, "vq_ckpt_every": 200,
                  "cra_refit": 50, "signllm.f_hidden": 512,
                  "ft_batch_size": 8, "ft_max_steps": 500, "ft_eval_every": 100, "eval_beams": 4},
    # the paper's configuration (Sec. 4.1): 224 x 224 frames, ResNet18 width 64 (ImageNet weights via
    # --vq.resnet_weights), d = 1024, M = 256, 200 epochs; the prompt asks for the data set's language
    "phoenix": {"data.root": "data/PHOENIX-2014-T", "data.image_size": 224, "signllm.language": "German"},
    "csl": {"data.root": "data/CSL-Daily", "data.image_size": 224, "signllm.language": "Chinese"},
}
MOVED = {"llm": "signllm.llm", "cra_hidden": "signllm.f_hidden", "checkpoint_llm": "signllm.checkpoint_llm"}


def parse_args(argv):
    """TrainConfig from the command line: defaults <- preset <- --key=value (engine.key_values says the syntax)."""
    pairs, cfg = engine.key_values(argv), TrainConfig()
    preset = dict(pairs).get("preset", cfg.preset)
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    for k, v in PRESETS[preset].items():
        engine.set_key(cfg, k, v, f"preset {preset}")
    for k, v in pairs:
        engine.set_key(cfg, MOVED.get(k, k), v, "command line")
    if cfg.stage not in ("vq", "cra", "ft", "eval", "all"):
        raise SystemExit(f"unknown stage {cfg.stage!r}; stages: vq, cra, ft, eval, all")
    if cfg.signllm.decoder == "transformer" and max(cfg.eval_beams, cfg.signllm.beams) > 1:
        raise SystemExit("signllm.decoder=transformer decodes greedily only: pass --eval_beams=1")
    return cfg


def prepare_data(cfg):
    """The stage's folder claimed, then (train set, dev set, the (name, reason) of rows data.skip_bad left out)."""
    engine.claim(os.path.join(cfg.out_dir, cfg.stage), cfg)  # the one check: --resume or --overwrite
    root = cfg.data.root
    if not os.path.exists(root) and rank_world()[0] == 0:
        if not cfg.make_synthetic:
            raise SystemExit(f"data.root {root} does not exist")
        print(f"writing the synthetic sign language to {root} (once) ...")
        data.make_synthetic(root, seed=0, size=cfg.synthetic_size, workers=os.cpu_count() or 1)
    engine.gather(None)  # a barrier: the other ranks read it once rank 0 has written it
    skipped = []  # load_split appends to it
    sets = [data.SignDataset(data.load_split(root, s, cfg.data.skip_bad, skipped), cfg.data, train=s == "train")
            for s in ("train", "dev")]
    return *sets, skipped


# ---- the shared training loop ---------------------------------------------------------------------------------------

def cosine_lr(step, lr, min_lr, warmup, total):
    """Linear warm-up to lr over `warmup` steps, then cosine decay to min_lr at `total` (as nanoGPT)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    u = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (1 + math.cos(math.pi * u)) * (lr - min_lr)


def fit(cfg, stage, model, train_set, loss_fn, evaluate, *, lr, min_lr, warmup, epochs, max_steps, batch_size,
        grad_clip, eval_every, ckpt_every, collate_fn=data.collate, skipped=()):
    """Adam on every trainable parameter; loss_fn(model, batch, first) -> (loss, metrics), first: the step's first
    micro-batch; evaluate(model) -> dev metrics with a 'loss' ("best" keeps the lowest); skipped: (name, reason) of
    the samples data.skip_bad left out. -> the per-step metrics. Process r's micro-batch a holds items a * world + r,
    + world * grad_accum, ... of each global batch: 2 processes compute what 1 does with grad_accum 2 (BatchNorm is
    per micro-batch: SyncBatchNorm refuses CPU tensors)."""
    out, device = os.path.join(cfg.out_dir, stage), next(model.parameters()).device
    opt = torch.optim.Adam([p for _, p in engine.trainable(model)], lr=lr)
    (rank, world), A = rank_world(), cfg.grad_accum
    parts = world * A  # micro-batches per global batch
    if A < 1 or batch_size < parts:
        raise SystemExit(f"{stage}: a batch of {batch_size} cannot be cut into {world} processes x grad_accum {A}")
    per_epoch = len(train_set) // batch_size + (len(train_set) % batch_size >= parts)  # too small to share: dropped
    if per_epoch == 0:
        raise SystemExit(f"{stage}: {len(train_set)} training samples cannot fill {parts} micro-batches")
    total = max_steps if max_steps > 0 else epochs * per_epoch
    net = engine.ddp(model, loss_fn, device)  # the loss as a module: what DDP synchronises
    state, log = engine.begin(out, model, opt, cfg)  # a fresh start, or the newest checkpoint restored exactly
    items, history = engine.SeededItems(train_set, cfg.seed), []
    bar = tqdm(total=total, initial=state["step"], desc=stage, dynamic_ncols=True, disable=rank > 0)
    while state["step"] < total:
        epoch, first = divmod(state["step"], per_epoch)
        batches = engine.epoch_batches(len(train_set), batch_size, cfg.seed, epoch)[first:per_epoch]
        micro = [b[a * world + rank::parts] for b in batches for a in range(A)]  # this rank's micro-batches, in order
        for i, batch in enumerate(engine.loader(items, micro, cfg.num_workers, collate_fn)):
            a = i % A
            if a == 0:  # the step's bad samples: those left out while loading, then those its items find
                t0, step, results, bad, empty = time.time(), state["step"], [], list(skipped), False
                model.train()  # (evaluate left it in eval mode)
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(step, lr, min_lr, warmup, total)
                opt.zero_grad(set_to_none=True)
            bad += batch.get("skipped", [])
            empty = empty or any(engine.gather(batch.keys() == {"skipped"}))  # alike on every rank, before forward
            if not empty:
                net.require_backward_grad_sync = a == A - 1  # DDP all-reduces the gradients on the last micro-step
                with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):  # bf16 activations on GPUs
                    loss, m = net(engine.to_device(batch, device), first=a == 0)
                (loss / A).backward()  # even a NaN loss: a rank left out of DDP's all-reduce would hang the others
                results.append((m, loss.item(), batch.get("name")))
            if a < A - 1:
                continue
            update, gn, m = engine.verdict(stage, step + 1, model, grad_clip, results, bad, empty, state, cfg, out)
            if update:  # the gradient is clipped; NaN/inf or bad data: no update (alike on every rank)
                opt.step()
            state["step"] = step = step + 1
            m = dict(step=step, epoch=epoch, lr=opt.param_groups[0]["lr"], grad_norm=gn, dt=time.time() - t0, **m)
            history.append(m)
            bar.update(1)
            if step % cfg.log_every == 0:
                bar.write(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
            if step % eval_every == 0 or step == total:
                for b in model.buffers() if world > 1 else []:
                    if b.is_floating_point():
                        dist.broadcast(b, 0)  # BatchNorm's running statistics: rank 0's, on every rank
                m["dev"] = state["dev"] = dev = evaluate(model)
                bar.write("dev: " + " | ".join(f"{k} {v:.4g}" for k, v in dev.items()))
                if dev["loss"] < state["best_dev"]:  # "best" moves only when dev improves
                    state["best_dev"] = dev["loss"]
                    if rank == 0:
                        engine.save(out, "best", model, opt, state, cfg)
            print(json.dumps(m), file=log, flush=True)  # before the checkpoint: it never runs ahead of the log
            if (step % ckpt_every == 0 or step == total) and rank == 0:
                os.fsync(log.fileno())
                engine.save(out, "ckpt", model, opt, state, cfg)
            if step >= total:
                break
    bar.close()
    log.close()
    engine.finish(out, cfg)
    if state["bad_samples"]:
        print(f"{stage}: {len(state['bad_samples'])} bad sample(s) skipped:",
              *(f"  {n}: {r}" for n, r in state["bad_samples"]), sep="\n")
    return history


# ---- the stages -----------------------------------------------------------------------------------------------------

def tokenize_videos(vq, dataset, cfg, features=False):
    """Each video's character tokens (eval mode, no augmentation); features=True: its clip features z (clips, d)."""
    vq.eval()

    def fn(batch):
        if "units" in batch and not features:  # DataConfig.oracle: the generator's units are the characters
            if (top := int(batch["units"].max())) >= cfg.vq.M:
                raise SystemExit(f"data.oracle={cfg.data.oracle} has unit {top}, beyond the "
                                 f"vq.M={cfg.vq.M} characters: pass a larger --vq.M")
            return [u[u >= 0].tolist() for u in batch["units"]]
        z, _, idx = vq.encode(batch["frames"].to(vq.codebook.device), batch["clip_mask"].to(vq.codebook.device))
        return [zb[ib >= 0].cpu() if features else ib[ib >= 0].tolist() for zb, ib in zip(z, idx)]
    return [s for part in engine.over_split(dataset, cfg.vq_batch_size, cfg, fn, "tokenize") for s in part]


def fit_codebook(vq, dataset, cfg, **kmeans_args):
    """The codebook <- kmeans(**kmeans_args) of the clip features z of every video of a split; -> the clip count."""
    z = torch.cat(tokenize_videos(vq, dataset, cfg, features=True))  # (clips, d), on the CPU
    with torch.no_grad():
        vq.codebook.copy_(kmeans(z, cfg.vq.M, **kmeans_args))
    return len(z)


def evaluate_vq(model, dev_set, cfg):
    """Dev L_VQ terms, CP accuracy, codebook usage and perplexity; with the generator's ground truth, purity / NMI."""
    model.eval()
    keys = ("loss", "L_cp", "L_code", "L_commit", "cp_acc", "cp_beaten", "cp_chance")

    def fn(batch):
        _, m, idx, _ = model(engine.to_device(batch, model.codebook.device))
        return [m[k] for k in keys], [row[row >= 0].cpu() for row in idx], batch["name"]
    parts = engine.over_split(dev_set, cfg.vq_batch_size, cfg, fn)
    out = {k: sum(p[0][i] for p in parts) / len(parts) for i, k in enumerate(keys)}
    codes, names = torch.cat([c for p in parts for c in p[1]]), [x for p in parts for x in p[2]]
    out["usage"], out["perplexity"] = codebook_usage(codes, model.config.M)
    if os.path.isfile(os.path.join(cfg.data.root, data.GROUND_TRUTH)):
        videos = data.read_ground_truth(cfg.data.root)["videos"]
        labels = [-1 if x is None else x for n in names  # the primitive at each clip's centre (None: at rest)
                  for x in data.clip_labels(videos[n]["primitives"], videos[n]["n_frames"])]
        out["purity"], out["nmi"] = token_alignment(codes, torch.tensor(labels))
    return out


def stage_kmeans(cfg):
    """Table 5 "w/o VQ-Sign": the clip features of an encoder-only run's E_v (Table 4 row 1) quantized by k-means,
    k = M, written as out/vq's checkpoint for cra and ft. In ft nothing reaches E_v: no L_VQ, discrete word ids."""
    if not cfg.kmeans_encoder:
        raise SystemExit("vq.quantizer=kmeans needs --kmeans_encoder=FOLDER, an encoder-only run's out/ft")
    train_set, _, _ = prepare_data(cfg)
    source, _ = signllm.from_checkpoint(cfg.kmeans_encoder)
    vq = VQSign(cfg.vq).to(engine.device_of(cfg))
    vq.encoder.load_state_dict(source.vq.encoder.state_dict(), strict=True)
    n = fit_codebook(vq, data.SignDataset(train_set.samples, cfg.data, train=False), cfg, seed=cfg.seed)
    print(f"k-means: {cfg.vq.M} centroids of {n} clip features of {cfg.kmeans_encoder}'s encoder")
    engine.finish(os.path.join(cfg.out_dir, "vq"), cfg, untrained=vq)


def stage_vq(cfg):
    """Sec. 3.4 (i): VQ-Sign pre-trained with L_VQ (Eq. 1-2)."""
    if cfg.vq.quantizer == "kmeans":
        return stage_kmeans(cfg)
    train_set, dev_set, skipped = prepare_data(cfg)
    model = VQSign(cfg.vq).to(engine.device_of(cfg))
    print(f"VQ-Sign: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(train_set)} train / "
          f"{len(dev_set)} dev videos, device {engine.device_of(cfg)}")
    return fit(cfg, "vq", model, train_set, lambda m, b, first: m.loss(b, reseed=first),
               lambda m: evaluate_vq(m, dev_set, cfg), lr=cfg.vq_lr, min_lr=cfg.vq_min_lr, warmup=cfg.vq_warmup,
               epochs=cfg.vq_epochs, max_steps=cfg.vq_max_steps, batch_size=cfg.vq_batch_size,
               grad_clip=cfg.vq_grad_clip, eval_every=cfg.vq_eval_every, ckpt_every=cfg.vq_ckpt_every, skipped=skipped)


def stage_cra(cfg):
    """Sec. 3.4 (ii): the word codebook by the search of Sec. 3.3, then f and s0 trained with L_MMD (Eq. 6)."""
    if cfg.signllm.tokens == "features":
        raise SystemExit("signllm.tokens=features (encoder only) has no tokens and no cra stage: run ft directly")
    train_set, dev_set, skipped = prepare_data(cfg)
    out, device = os.path.join(cfg.out_dir, "cra"), engine.device_of(cfg)
    vq = VQSign(cfg.vq).to(device)
    engine.load(os.path.join(cfg.out_dir, "vq"), "best", vq, cfg=cfg)
    plain = data.SignDataset(train_set.samples, cfg.data, train=False)
    if cfg.cra_refit and cfg.vq.quantizer == "vq":  # Lloyd steps lower Eq. 2's codebook term (k-means: done already)
        before = evaluate_vq(vq, dev_set, cfg)
        n = fit_codebook(vq, plain, cfg, iters=cfg.cra_refit, init=vq.codebook.detach().cpu())
        after = evaluate_vq(vq, dev_set, cfg)
        print(f"codebook refit: {cfg.cra_refit} Lloyd steps over {n} training clips; dev", ", ".join(
            f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in ("L_code", "perplexity", "purity", "nmi") if k in after))
    if cfg.cra_vocab:  # a search done already, for the same characters
        res = cra.load_vocab(cfg.cra_vocab)
        if res.n_chars != cfg.vq.M:
            raise SystemExit(f"{cfg.cra_vocab}: vocabulary of {res.n_chars} characters, vq.M is {cfg.vq.M}")
    else:
        seqs = [cra.preprocess(s, cfg.vq.M) for s in tokenize_videos(vq, plain, cfg)]  # repeats -> s0
        res = cra.search(seqs, dataclasses.replace(cfg.cra, n_chars=cfg.vq.M))  # Eq. 3-5
    print("\n".join(res.describe()))  # each size's entropy (Eq. 4), readout and score; the choice and why
    llm, tok = signllm.load_llm(cfg.signllm, device)
    text_ids = sorted({i for s in train_set.samples for i in tok.encode(s.text, bos=False)})  # the target's tokens
    tokens = cra.SignTokens(res.vocab, res.freqs, cfg.vq.M, cfg.vq.d, llm.cfg.dim, cfg.signllm.f_hidden, text_ids,
                            cra.median_sigmas(llm.tok_embeddings.weight[text_ids].float()))
    # whatever decodes later (decoder=transformer, LoRA too), this stage aligns f with the LLM's embeddings (Eq. 6)
    model = SignLLM(vq, tokens, llm, tok, dataclasses.replace(cfg.signllm, decoder="llm", lora_rank=0)).to(device)
    model.vq.requires_grad_(False)  # the cra stage trains f and s0 only: VQ-Sign's tokens stay as pre-trained

    def mmd_step(m, batch, first):
        loss = m.L_mmd()  # Eq. 6
        return loss, {"L_MMD": loss.item()}

    history = []
    if not cfg.signllm.lambda_mmd:  # Table 5 "w/o sign-text alignment": f and s0 go to ft as initialized
        engine.finish(out, cfg, untrained=model)
    else:
        n, parts = cfg.cra_steps, rank_world()[1] * cfg.grad_accum  # L_MMD needs no data: one empty item per micro
        history = fit(cfg, "cra", model, list(range(n * parts)), mmd_step, lambda m: {"loss": m.L_mmd().item()},
            lr=cfg.cra_lr, min_lr=cfg.cra_lr / 10, warmup=0, epochs=1, max_steps=n, batch_size=parts, grad_clip=0,
            eval_every=max(n // 4, 1), ckpt_every=n, collate_fn=lambda items: {}, skipped=skipped)
    if rank_world()[0] == 0:  # the stage is complete: its vocabulary replaces the old one only now
        engine.atomic_write(os.path.join(out, "vocab.txt"), lambda p: cra.save_vocab(p, res))
    return history


def translate_split(model, dataset, cfg, beams=None):
    """(hypotheses, references, names) of a whole split, by real generation."""
    model.eval()

    def fn(b):
        b = engine.to_device(b, model.vq.codebook.device)
        return model.translate(b["frames"], b["clip_mask"], beams, units=b.get("units")), b["text"], b["name"]
    parts = engine.over_split(dataset, cfg.ft_batch_size, cfg, fn, "translate")
    return tuple([x for p in parts for x in p[i]] for i in range(3))


def score(cfg, hyps, refs):
    """BLEU-1..4 and ROUGE-L (Sec. 4.2); Chinese is scored per character."""
    return metrics.score_all(hyps, refs, "zh" if cfg.signllm.language == "Chinese" else cfg.signllm.language)


def stage_ft(cfg):
    """Sec. 3.4, fine-tuning: L_ft = L_VQ + 0.5 L_MMD + 1.0 L_sim with the LLM frozen; the best dev BLEU-4 is kept.
    The encoder-only ablation (tokens=features) has no cra stage and starts from scratch."""
    train_set, dev_set, skipped = prepare_data(cfg)
    device, cra_out = engine.device_of(cfg), os.path.join(cfg.out_dir, "cra")
    if cfg.signllm.tokens == "features" and not engine.checkpoints(cra_out, "best"):
        model = signllm.build(cfg.vq, cfg.signllm, *signllm.load_llm(cfg.signllm, device)).to(device)
    else:
        model = signllm.from_checkpoint(cra_out, cfg.vq, cfg.signllm, device)[0]
    model.vq.config = dataclasses.replace(cfg.vq, reseed_every=0)  # no re-seeding now: the vocabulary reads the codes

    def evaluate(m):
        hyps, refs, _ = translate_split(m, dev_set, cfg)
        s = score(cfg, hyps, refs)
        print(f"  e.g. {hyps[0]!r}  <-  {refs[0]!r}")
        return {"loss": -s["B4"], **s}  # fit keeps the checkpoint with the lowest dev "loss": here, the best BLEU-4

    return fit(cfg, "ft", model, train_set, lambda m, b, first: m(b), evaluate, lr=cfg.ft_lr, min_lr=cfg.ft_min_lr,
               warmup=cfg.ft_warmup, epochs=cfg.ft_epochs, max_steps=cfg.ft_max_steps, batch_size=cfg.ft_batch_size,
               grad_clip=cfg.ft_grad_clip, eval_every=cfg.ft_eval_every, ckpt_every=cfg.ft_eval_every,
               skipped=skipped)


def stage_eval(cfg):
    """BLEU-1..4 and ROUGE-L on dev and test from the best ft checkpoint; hypotheses and metrics in out/eval."""
    model = signllm.from_checkpoint(os.path.join(cfg.out_dir, "ft"), cfg.vq, cfg.signllm, engine.device_of(cfg))[0]
    out, results = os.path.join(cfg.out_dir, "eval"), {}
    for split in ("dev", "test"):
        ds = data.SignDataset(data.load_split(cfg.data.root, split, cfg.data.skip_bad), cfg.data, train=False)
        hyps, refs, names = translate_split(model, ds, cfg, beams=cfg.eval_beams)
        results[split] = score(cfg, hyps, refs)
        if rank_world()[0] == 0:  # every rank holds every translation; rank 0 writes
            engine.write_text(os.path.join(out, f"{split}.tsv"), "name\thypothesis\treference\n" + "".join(
                f"{n}\t{h}\t{r}\n" for n, h, r in zip(names, hyps, refs)))
    if rank_world()[0] == 0:
        engine.write_text(os.path.join(out, "metrics.json"), json.dumps(results, indent=1))
    print(f"{'split':6s} " + " ".join(f"{k:>8s}" for k in results["dev"]))
    for split, s in results.items():
        print(f"{split:6s} " + " ".join(f"{v:8.2f}" for v in s.values()))
    return results


def stage_all(cfg):
    """vq -> cra -> ft -> eval. A stage whose folder holds DONE is not run again (--overwrite: it is); one holding
    checkpoints without DONE is refused as a single stage would be, or continued with --resume."""
    t0 = time.time()
    for name in ("ft",) if cfg.signllm.tokens == "features" else ("vq", "cra", "ft"):  # encoder only: no tokens
        done = os.path.join(cfg.out_dir, name, "DONE")
        if os.path.exists(done) and not cfg.overwrite:
            diff = engine.config_diff(json.loads(open(done).read() or "{}"), dataclasses.asdict(cfg), prefix=name)
            print(f"== {name}: done already ({done}" + (f", trained with {diff}" if diff else "") + ")")
            continue
        print(f"== {name} ({(time.time() - t0) / 60:.1f} min so far)")
        resume = cfg.resume and bool(engine.checkpoints(os.path.dirname(done), "ckpt"))
        STAGES[name](dataclasses.replace(cfg, stage=name, resume=resume))
    print(f"== eval ({(time.time() - t0) / 60:.1f} min so far)")
    results = stage_eval(dataclasses.replace(cfg, stage="eval"))
    print(f"all stages in {(time.time() - t0) / 60:.1f} min")
    return results


STAGES = {"vq": stage_vq, "cra": stage_cra, "ft": stage_ft, "eval": stage_eval, "all": stage_all}


def main(argv):
    """Run cfg.stage; under torchrun in every process, seeded alike."""
    cfg = parse_args(argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ddp = engine.join_processes(engine.device_of(cfg))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    try:
        return STAGES[cfg.stage](cfg)
    except data.DataError as e:  # bad input: its message names the file and row; no traceback
        raise SystemExit(f"data error: {e}\n(--data.skip_bad=true leaves bad samples out and reports them)") from e
    finally:
        if ddp:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
