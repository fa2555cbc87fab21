"""Training of SignLLM (Sec. 3.4), nanoGPT-style: defaults in one dataclass, presets as plain dicts, any field
overridden with --key=value (nested: --vq.d=128). Stages vq, cra, ft, eval each write out/<stage>/, data-parallel
under torchrun; checkpoints, exact resume and the DDP plumbing are engine.py's. The stages take the model class:
SignLLM, or one of the paper's ablations (bench/ablations.py), each a subclass that changes one step.

    python train.py                                 # all stages on the synthetic default: vq -> cra -> ft -> eval
    python train.py --stage vq --resume             # continue out/vq/ from its newest checkpoint, exactly
    python train.py --stage vq --preset=phoenix --data.root=/data/PHOENIX-2014-T --vq.resnet_weights=resnet18.pth
"""
import os
# OpenMP's waiting threads sleep instead of spinning (ours; see main): set before torch starts OpenMP (so above the
# other imports), a value of your own wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from tqdm import tqdm

import cra
import data
import engine
import metrics
import synthetic
from cra import CRAConfig
from data import DataConfig
from llama import LLaMA, Tokenizer
from signllm import SignLLM, SignLLMConfig
from smollm2 import smollm2
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
    threads: int = 0              # torch CPU threads (0: torch's default, one per core)
    make_synthetic: bool = False  # write the synthetic sign language into a missing data.root
    synthetic_size: str = "default"  # tiny | default | large (synthetic.SIZES)
    synthetic_kind: str = "weather"  # the language make_synthetic writes: weather (the default) | travel
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
    eval_batch_size: int = 32     # videos translated at once (dev and test): generation's steps cost little more
    data: DataConfig = field(default_factory=DataConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    cra: CRAConfig = field(default_factory=CRAConfig)
    signllm: SignLLMConfig = field(default_factory=SignLLMConfig)


PRESETS = {
    # the CPU demo: 32 x 32 frames, a width-16 ResNet18, d = 128, M = 64
    "synthetic": {"data.root": "data/synthetic", "make_synthetic": True, "data.image_size": 32, "num_workers": 0,
                  "vq.width": 16, "vq.d": 128, "vq.M": 64, "vq.reseed_every": 10, "vq_lr": 0.003, "vq_min_lr": 0.0003,
                  # Eq. 1's negatives from the same video, its mean z removed: E_v cannot tell signers by colour
                  "vq.negatives": "video", "vq.center": True, "vq_batch_size": 8, "vq_max_steps": 1600,
                  # ours: E_v sees what moves; Eq. 1's targets skip the clips that share frames with the context's last
                  "vq.still": True, "vq.cp_skip": (data.CLIP_LEN - 1) // data.CLIP_STRIDE,
                  "vq_warmup": 50, "vq_eval_every": 200, "vq_ckpt_every": 200, "cra_refit": 50, "signllm.f_hidden": 512,
                  "ft_batch_size": 8, "ft_max_steps": 500, "ft_eval_every": 100, "eval_beams": 4},
    # the paper's configuration (Sec. 4.1): 224 x 224 frames, ResNet18 width 64 (ImageNet weights via
    # --vq.resnet_weights), d = 1024, M = 256, 200 epochs; the prompt asks for the data set's language
    "phoenix": {"data.root": "data/PHOENIX-2014-T", "data.image_size": 224, "signllm.language": "German"},
    "csl": {"data.root": "data/CSL-Daily", "data.image_size": 224, "signllm.language": "Chinese"},
}
MOVED = {"llm": "signllm.llm", "cra_hidden": "signllm.f_hidden", "checkpoint_llm": "signllm.checkpoint_llm"}
# settings of older versions, at the values that chose the paper's model (the ablations are bench/ablations.py's now)
RETIRED = {"signllm.tokens": "words", "signllm.decoder": "llm", "signllm.decoder_layers": 2, "signllm.lora_rank": 0,
           "signllm.straight_through": False, "vq.quantizer": "vq", "data.oracle": "", "kmeans_encoder": ""}


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
    return cfg


def config_of(saved, where):
    """The TrainConfig a checkpoint was trained with (its JSON's "config"); an older version's setting is dropped if
    it chose the paper's model, refused otherwise."""
    cfg = TrainConfig()
    for key, value in engine.flat(saved).items():
        if key in RETIRED and value != RETIRED[key]:
            raise SystemExit(f"{where}: trained with {key}={value!r}, an ablation: load it with bench/ablations.py")
        if key not in RETIRED:
            engine.set_key(cfg, key, value, where)
    return cfg


def prepare_data(cfg):
    """The stage's folder claimed, then (train set, dev set, the (name, reason) of rows data.skip_bad left out)."""
    engine.claim(os.path.join(cfg.out_dir, cfg.stage), cfg)  # the one check: --resume or --overwrite
    root = cfg.data.root
    if not os.path.exists(root) and engine.rank_world()[0] == 0:
        if not cfg.make_synthetic:
            raise SystemExit(f"data.root {root} does not exist")
        print(f"writing the synthetic sign language to {root} (once) ...")
        synthetic.make_synthetic(root, seed=0, size=cfg.synthetic_size, workers=os.cpu_count() or 1,
                                 kind=cfg.synthetic_kind)
    engine.gather(None)  # a barrier: the other ranks read it once rank 0 has written it
    skipped = []  # load_split appends to it
    sets = [data.SignDataset(data.load_split(root, s, cfg.data.skip_bad, skipped), cfg.data, train=s == "train")
            for s in ("train", "dev")]
    return *sets, skipped


# ---- building and loading the model -----------------------------------------------------------------------------

def load_llm(cfg, device):
    """The frozen LLaMA and its tokenizer: cfg.llm (a Hugging Face folder) or the embedded SmolLM2 default."""
    if cfg.llm and not os.path.isdir(cfg.llm):
        raise SystemExit(f"signllm.llm={cfg.llm}: no such folder (a Hugging Face LLaMA folder; '' for SmolLM2)")
    path = cfg.llm or smollm2()
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32  # the paper's LLaMA is 16-bit
    llm = LLaMA.from_pretrained(path, dtype=dtype, device=device)  # read straight into dtype: no fp32 copy on a GPU
    llm.grad_checkpointing = cfg.checkpoint_llm
    return llm, Tokenizer.from_pretrained(path)


def build_model(vq_cfg, cfg, llm, tok, tensors=None, Model=SignLLM):
    """A model from configs and a loaded LLM; CRA's tables from a checkpoint's tensors (none: bare characters)."""
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
    return Model(VQSign(vq_cfg), tokens, llm, tok, cfg)


def load_model(folder, cfg=None, device="cpu", Model=SignLLM):
    """A trained model from a stage's folder (out/cra, out/ft): its newest best checkpoint, every tensor accounted
    for -> (model, cfg); cfg: the TrainConfig to build it with, by default the one it was trained with."""
    meta, tensors = engine.read(folder, "best")
    where = os.path.join(folder, meta["weights"])
    cfg = cfg or config_of(meta["config"], where)
    model = build_model(cfg.vq, cfg.signllm, *load_llm(cfg.signllm, device), tensors, Model).to(device)
    now = {"vq": dataclasses.asdict(cfg.vq), "signllm": dataclasses.asdict(cfg.signllm)}
    engine.restore(model, tensors, meta, now, where=where)
    return model, cfg


# ---- the shared training loop ---------------------------------------------------------------------------------------

@dataclass
class Schedule:
    """How a stage trains: Adam's learning rate (linear warm-up, cosine decay), how long, in what batches (global:
    shared by the processes and grad_accum micro-batches), gradient clipping (0: off), evaluation and checkpoints."""
    lr: float
    min_lr: float
    warmup: int
    epochs: int
    max_steps: int  # > 0: instead of epochs
    batch_size: int
    grad_clip: float
    eval_every: int
    ckpt_every: int

    @classmethod
    def of(cls, cfg, stage, **given):
        """The stage's TrainConfig fields <stage>_lr, <stage>_min_lr, ..., but those given."""
        return cls(**{f.name: given.get(f.name, getattr(cfg, f"{stage}_{f.name}", None)) for f in fields(cls)})


def cosine_lr(step, lr, min_lr, warmup, total):
    """Linear warm-up to lr over `warmup` steps, then cosine decay to min_lr at `total` (as nanoGPT)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    u = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (1 + math.cos(math.pi * u)) * (lr - min_lr)


def fit(cfg, stage, model, train_set, loss_fn, evaluate, sched, collate_fn=data.collate, skipped=()):
    """Adam on every trainable parameter. loss_fn(model, batch, first) -> (loss, metrics), first: the step's first
    micro-batch; evaluate(model) -> dev metrics with a 'loss' ("best" keeps the lowest); skipped: (name, reason) of the
    samples data.skip_bad left out. -> the per-step metrics. Under torchrun each process takes its micro-batches of
    every global batch (engine.micro_batches): 2 processes compute what 1 does with grad_accum 2."""
    out, device = os.path.join(cfg.out_dir, stage), next(model.parameters()).device
    opt = torch.optim.Adam([p for _, p in engine.trainable(model)], lr=sched.lr)
    rank, A = engine.rank_world()[0], cfg.grad_accum
    per_epoch = engine.steps_per_epoch(len(train_set), sched.batch_size, A, stage)
    total = sched.max_steps if sched.max_steps > 0 else sched.epochs * per_epoch
    net = engine.ddp(model, loss_fn, device)  # the loss as a module: what DDP synchronises
    state, log = engine.begin(out, model, opt, cfg)  # a fresh start, or the newest checkpoint restored exactly
    items, history = engine.SeededItems(train_set, cfg.seed), []
    bar = tqdm(total=total, initial=state["step"], desc=stage, dynamic_ncols=True, disable=rank > 0)
    for step, epoch, a, batch in engine.micro_batches(items, state["step"], total, per_epoch, sched.batch_size, cfg,
                                                      collate_fn):
        if a == 0:  # 1. a new step: its learning rate, no gradient yet
            t0, results, bad, empty = time.time(), [], list(skipped), False
            model.train()  # (evaluate left it in eval mode)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, sched.lr, sched.min_lr, sched.warmup, total)
            opt.zero_grad(set_to_none=True)
        # 2. a micro-step: forward and backward; DDP all-reduces the gradients on the step's last one
        bad += batch.get("skipped", [])
        empty = empty or engine.all_bad(batch, cfg)  # alike on every rank, before forward
        if not empty:
            net.require_backward_grad_sync = a == A - 1
            with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):  # bf16 activations on GPUs
                loss, m = net(engine.to_device(batch, device), first=a == 0)
            (loss / A).backward()  # even a NaN loss: a rank left out of DDP's all-reduce would hang the others
            results.append((m, loss.item(), batch.get("name")))
        if a < A - 1:
            continue
        # 3. the gradient clipped, then 4. the update, unless a loss or the gradient is not finite (stop, or skip)
        results, new_bad = engine.gather_step(results, bad, state)
        gn = float("nan") if empty else engine.clip_gradients(model, sched.grad_clip)
        problem = engine.nonfinite(stage, step + 1, results, gn, empty, cfg.skip_nonfinite, out)
        if problem:
            state["skipped_steps"] += 1  # no update; what the forward changed (BatchNorm statistics) stays
            tqdm.write(f"{stage} step {step + 1}: skipped ({problem}), {state['skipped_steps']} skipped so far")
        else:
            opt.step()
        state["step"] = step = step + 1
        # 5. the log line
        m = dict(step=step, epoch=epoch, lr=opt.param_groups[0]["lr"], grad_norm=gn, dt=time.time() - t0,
                 **engine.mean_metrics(results, state, new_bad))
        history.append(m)
        bar.update(1)
        if step % cfg.log_every == 0:
            bar.write(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
        # 6. evaluation on dev, "best" kept when it improves
        if step % sched.eval_every == 0 or step == total:
            engine.rank0_buffers(model)  # BatchNorm's running statistics: rank 0's, on every rank
            t_eval = time.time()
            m["dev"] = state["dev"] = dev = evaluate(model)
            m["dt_eval"] = time.time() - t_eval
            bar.write("dev: " + " | ".join(f"{k} {v:.4g}" for k, v in dev.items()))
            if dev["loss"] < state["best_dev"]:
                state["best_dev"] = dev["loss"]
                if rank == 0:
                    engine.save(out, "best", model, opt, state, cfg)
        print(json.dumps(m), file=log, flush=True)  # before the checkpoint: it never runs ahead of the log
        # 7. the checkpoint, for --resume
        if (step % sched.ckpt_every == 0 or step == total) and rank == 0:
            os.fsync(log.fileno())
            engine.save(out, "ckpt", model, opt, state, cfg)
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
        z, _, idx = vq.encode(engine.to_device(batch, vq.codebook.device))
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
    if os.path.isfile(os.path.join(cfg.data.root, synthetic.GROUND_TRUTH)):
        videos = synthetic.read_ground_truth(cfg.data.root)["videos"]
        labels = [-1 if x is None else x for n in names  # the primitive at each clip's centre (None: at rest)
                  for x in synthetic.clip_labels(videos[n]["primitives"], videos[n]["n_frames"])]
        out["purity"], out["nmi"] = token_alignment(codes, torch.tensor(labels))
    return out


def stage_vq(cfg, Model=SignLLM):
    """Sec. 3.4 (i): VQ-Sign pre-trained with L_VQ (Eq. 1-2), by itself (Model is not used)."""
    train_set, dev_set, skipped = prepare_data(cfg)
    model = VQSign(cfg.vq).to(engine.device_of(cfg))
    print(f"VQ-Sign: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(train_set)} train / "
          f"{len(dev_set)} dev videos, device {engine.device_of(cfg)}")
    return fit(cfg, "vq", model, train_set, lambda m, b, first: m.loss(b, reseed=first),
               lambda m: evaluate_vq(m, dev_set, cfg), Schedule.of(cfg, "vq"), skipped=skipped)


def stage_cra(cfg, Model=SignLLM):
    """Sec. 3.4 (ii): the word codebook by the search of Sec. 3.3, then f and s0 trained with L_MMD (Eq. 6)."""
    train_set, dev_set, skipped = prepare_data(cfg)
    out, device = os.path.join(cfg.out_dir, "cra"), engine.device_of(cfg)
    vq = VQSign(cfg.vq).to(device)
    engine.load(os.path.join(cfg.out_dir, "vq"), "best", vq, cfg=cfg)
    plain = data.SignDataset(train_set.samples, cfg.data, train=False)
    if cfg.cra_refit:  # ours: Lloyd steps lower Eq. 2's codebook term over the training clips
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
    llm, tok = load_llm(cfg.signllm, device)
    text_ids = sorted({i for s in train_set.samples for i in tok.encode(s.text, bos=False)})  # the target's tokens
    tokens = cra.SignTokens(res.vocab, res.freqs, cfg.vq.M, cfg.vq.d, llm.cfg.dim, cfg.signllm.f_hidden, text_ids,
                            cra.median_sigmas(llm.tok_embeddings.weight[text_ids].float()))
    model = Model(vq, tokens, llm, tok, cfg.signllm).to(device)
    model.vq.requires_grad_(False)  # the cra stage trains f and s0 only: VQ-Sign's tokens stay as pre-trained

    def mmd_step(m, batch, first):
        loss = m.L_mmd()  # Eq. 6
        return loss, {"L_MMD": loss.item()}

    history = []
    if not cfg.signllm.lambda_mmd:  # lambda_1 = 0, nothing to align: f and s0 go to ft as initialized
        engine.finish(out, cfg, untrained=model)
    else:
        n, parts = cfg.cra_steps, engine.rank_world()[1] * cfg.grad_accum  # L_MMD needs no data: an empty item each
        sched = Schedule(lr=cfg.cra_lr, min_lr=cfg.cra_lr / 10, warmup=0, epochs=1, max_steps=n, batch_size=parts,
                         grad_clip=0, eval_every=max(n // 4, 1), ckpt_every=n)
        history = fit(cfg, "cra", model, list(range(n * parts)), mmd_step, lambda m: {"loss": m.L_mmd().item()},
                      sched, collate_fn=lambda items: {}, skipped=skipped)
    if engine.rank_world()[0] == 0:  # the stage is complete: its vocabulary replaces the old one only now
        engine.atomic_write(os.path.join(out, "vocab.txt"), lambda p: cra.save_vocab(p, res))
    return history


def translate_split(model, dataset, cfg, beams=None):
    """(hypotheses, references, names) of a whole split, by real generation."""
    model.eval()

    def fn(b):
        b = engine.to_device(b, model.vq.codebook.device)
        return model.translate(b, beams), b["text"], b["name"]
    parts = engine.over_split(dataset, cfg.eval_batch_size, cfg, fn, "translate")
    return tuple([x for p in parts for x in p[i]] for i in range(3))


def score(cfg, hyps, refs):
    """BLEU-1..4 and ROUGE-L (Sec. 4.2); Chinese is scored per character."""
    return metrics.score_all(hyps, refs, "zh" if cfg.signllm.language == "Chinese" else cfg.signllm.language)


def stage_ft(cfg, Model=SignLLM):
    """Sec. 3.4: fine-tuning from the cra stage's model."""
    train_set, dev_set, skipped = prepare_data(cfg)
    model = load_model(os.path.join(cfg.out_dir, "cra"), cfg, engine.device_of(cfg), Model)[0]
    return finetune(cfg, model, train_set, dev_set, skipped)


def finetune(cfg, model, train_set, dev_set, skipped=()):
    """L_ft = L_VQ + 0.5 L_MMD + 1.0 L_sim with the LLM frozen (Sec. 3.4); the best dev BLEU-4 is kept."""
    model.vq.config = dataclasses.replace(cfg.vq, reseed_every=0)  # no re-seeding now: the vocabulary reads the codes

    def evaluate(m):
        hyps, refs, _ = translate_split(m, dev_set, cfg)
        s = score(cfg, hyps, refs)
        print(f"  e.g. {hyps[0]!r}  <-  {refs[0]!r}")
        return {"loss": -s["B4"], **s}  # fit keeps the checkpoint with the lowest dev "loss": here, the best BLEU-4

    return fit(cfg, "ft", model, train_set, lambda m, b, first: m(b), evaluate,
               Schedule.of(cfg, "ft", ckpt_every=cfg.ft_eval_every), skipped=skipped)


def stage_eval(cfg, Model=SignLLM):
    """BLEU-1..4 and ROUGE-L on dev and test from the best ft checkpoint; hypotheses and metrics in out/eval."""
    model = load_model(os.path.join(cfg.out_dir, "ft"), cfg, engine.device_of(cfg), Model)[0]
    out, results = os.path.join(cfg.out_dir, "eval"), {}
    for split in ("dev", "test"):
        ds = data.SignDataset(data.load_split(cfg.data.root, split, cfg.data.skip_bad), cfg.data, train=False)
        t0 = time.time()
        hyps, refs, names = translate_split(model, ds, cfg, beams=cfg.eval_beams)
        results[split] = score(cfg, hyps, refs)
        print(f"{split}: {len(hyps)} videos translated in {time.time() - t0:.1f} s (beam {cfg.eval_beams})")
        if engine.rank_world()[0] == 0:  # every rank holds every translation; rank 0 writes
            engine.write_text(os.path.join(out, f"{split}.tsv"), "name\thypothesis\treference\n" + "".join(
                f"{n}\t{h}\t{r}\n" for n, h, r in zip(names, hyps, refs)))
    if engine.rank_world()[0] == 0:
        engine.write_text(os.path.join(out, "metrics.json"), json.dumps(results, indent=1))
    print(f"{'split':6s} " + " ".join(f"{k:>8s}" for k in results["dev"]))
    for split, s in results.items():
        print(f"{split:6s} " + " ".join(f"{v:8.2f}" for v in s.values()))
    return results


def stage_all(cfg, Model=SignLLM):
    """vq -> cra -> ft -> eval. A stage whose folder holds DONE is not run again (--overwrite: it is); one holding
    checkpoints without DONE is refused as a single stage would be, or continued with --resume."""
    t0 = time.time()
    for name in ("vq", "cra", "ft"):
        done = os.path.join(cfg.out_dir, name, "DONE")
        if os.path.exists(done) and not cfg.overwrite:
            diff = engine.config_diff(json.loads(open(done).read() or "{}"), dataclasses.asdict(cfg), prefix=name)
            print(f"== {name}: done already ({done}" + (f", trained with {diff}" if diff else "") + ")")
            continue
        print(f"== {name} ({(time.time() - t0) / 60:.1f} min so far)")
        resume = cfg.resume and bool(engine.checkpoints(os.path.dirname(done), "ckpt"))
        STAGES[name](dataclasses.replace(cfg, stage=name, resume=resume), Model)
    print(f"== eval ({(time.time() - t0) / 60:.1f} min so far)")
    results = stage_eval(dataclasses.replace(cfg, stage="eval"), Model)
    print(f"all stages in {(time.time() - t0) / 60:.1f} min")
    return results


STAGES = {"vq": stage_vq, "cra": stage_cra, "ft": stage_ft, "eval": stage_eval, "all": stage_all}


def main(argv, Model=SignLLM, stages=None):
    """Run cfg.stage; under torchrun in every process, seeded alike. Model: SignLLM, or a variant of it; stages: stage
    functions (cfg, Model) that replace ours, by name (bench/ablations.py's, where a variant trains otherwise)."""
    cfg = parse_args(argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    print(f"threads: {torch.get_num_threads()} of {os.cpu_count()} cores, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')} (train.py's default PASSIVE: waiting threads sleep, so "
          "a busy machine costs its share of the cores); --threads=N or OMP_WAIT_POLICY=ACTIVE to change")
    ddp = engine.join_processes(engine.device_of(cfg))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    try:
        return {**STAGES, **(stages or {})}[cfg.stage](cfg, Model)
    except data.DataError as e:  # bad input: its message names the file and row; no traceback
        raise SystemExit(f"data error: {e}\n(--data.skip_bad=true leaves bad samples out and reports them)") from e
    finally:
        if ddp:
            engine.leave_processes()


if __name__ == "__main__":
    main(sys.argv[1:])
