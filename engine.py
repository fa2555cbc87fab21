"""The engineering under train.py, which a reader of the method may skip: configuration from the command line,
checkpoints and exact resume, how data-parallel processes (torchrun) share the work and agree, and the steps of the
training loop that are not the method (the data order, skipping bad data, stopping on NaN).

A checkpoint is <out>/<tag>-<step>.safetensors (weights, Adam moments, the torch RNG) beside <tag>-<step>.json (the
config, the step, Python/numpy RNG states, Adam step counts, the weights' sha256); no pickle. Each file is written to
a temp name, fsynced and renamed, the JSON last: a checkpoint exists once its JSON does. "ckpt" is the newest state
(for --resume), "best" the best dev score so far (what the next stage reads). A resume is exact: each epoch's order
and each item's augmentation are functions of (seed, epoch, index). Under torchrun rank 0 writes checkpoints, logs
and prints; every rank loads the same checkpoint, and results are gathered so that every rank decides alike.
"""
import dataclasses
import difflib
import functools
import glob
import hashlib
import json
import math
import os
import pathlib
import random
import sys

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import data

RESUME_FREE = {"stage", "resume", "overwrite", "num_workers", "threads", "log_every", "device"}  # may change on resume
MODEL_KEYS = ("vq.", "signllm.llm", "signllm.f_hidden")  # settings that shape the weights
BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


# ---- configuration from the command line ----------------------------------------------------------------------------

def flat(d, prefix=""):
    """A nested config dict as {'vq.d': 16, ...}."""
    out = {}
    for k, v in d.items():
        out.update(flat(v, prefix + k + ".") if isinstance(v, dict) else {prefix + k: v})
    return out


def config_diff(saved, now, prefix=""):
    """'vq.M: checkpoint 8, now 16; ...': the settings (from prefix) that differ, those that shape weights first."""
    a, b = flat(saved), flat(now)
    diff = [(k, v, b[k]) for k, v in a.items() if k.startswith(prefix) and k in b and k not in RESUME_FREE
            and b[k] != v]
    diff = [d for d in diff if d[0].startswith(MODEL_KEYS)] or diff
    return "; ".join(f"{k}: checkpoint {x!r}, now {y!r}" for k, x, y in diff)


def key_values(argv):
    """[(key, value)] of --key=value or --key value; a bare --flag is (flag, "true")."""
    pairs, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise SystemExit(f"argument {arg!r}: expected --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            value = args.pop(0) if args and not args[0].startswith("--") else "true"
        pairs.append((key, value))
    return pairs


def set_key(cfg, key, value, source):
    """cfg.<key> = value, value parsed from a string to the field's type; a wrong key or type stops, naming both."""
    leaves = flat(dataclasses.asdict(cfg))
    if key not in leaves:
        close = ", ".join(difflib.get_close_matches(key, leaves, n=3))
        raise SystemExit(f"{source}: unknown config key {key!r}" + (f" (did you mean {close}?)" if close else ""))
    typ = type(leaves[key])
    try:
        if isinstance(value, str) and typ is bool:
            value = BOOLS[value.lower()]
        elif isinstance(value, str) or (typ is float and type(value) is int):
            value = typ(value)  # int('1.5') and float('x') raise
    except (KeyError, ValueError):
        pass  # value stays a string: refused below
    if type(value) is not typ:
        raise SystemExit(f"{source}: {key} takes a {typ.__name__}, got {value!r}")
    *path, name = key.split(".")
    setattr(functools.reduce(getattr, path, cfg), name, value)


# ---- processes (torchrun): one per device, each with its share of the work ------------------------------------------

def join_processes(device):
    """Under torchrun, join its process group (NCCL on GPUs, gloo on a CPU); prints become rank 0's. -> whether."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" is this rank's GPU from here on
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")  # one copy of each print; errors still reach stderr
    return True


def leave_processes():
    dist.destroy_process_group()


class Processes:
    """How the processes of a torchrun agree on a tensor: summed over them, or rank 0's (what vq.OneProcess is for
    one process); VQSign's dead-code re-seeding uses it, so that every process re-seeds the same codes."""

    def __init__(self):
        self.rank = dist.get_rank()

    def sum(self, t):
        dist.all_reduce(t)
        return t

    def rank0(self, t):
        dist.broadcast(t, 0)
        return t


def rank0_buffers(model):
    """Rank 0's buffers (BatchNorm's running statistics: each process has its own) on every process."""
    for b in model.buffers() if dist.is_initialized() else []:
        if b.is_floating_point():
            dist.broadcast(b, 0)


def rank_world():
    """(rank, number of processes) under torchrun, (0, 1) otherwise."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def gather(obj):
    """[rank 0's obj, rank 1's obj, ...] under torchrun, [obj] otherwise."""
    out = [obj] * rank_world()[1]
    if dist.is_initialized():
        dist.all_gather_object(out, obj)
    return out


def device_of(cfg):
    return torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")


def to_device(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---- files and checkpoints ------------------------------------------------------------------------------------------

def atomic_write(path, write):
    """write(tmp), fsync, rename over path (its folder made if missing): a kill leaves the old file or the new one."""
    folder, tmp = os.path.dirname(path) or ".", path + ".tmp"
    os.makedirs(folder, exist_ok=True)
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(folder, os.O_RDONLY)
    os.fsync(fd)  # the rename itself reaches the disk
    os.close(fd)


def write_text(path, text):
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def trainable(model):
    """[(name, parameter)] that the optimizer updates, in a fixed order (the order of Adam's state)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def checkpoints(out, tag):
    """Complete checkpoints (their JSON exists), oldest first."""
    return sorted(glob.glob(os.path.join(glob.escape(out), f"{tag}-[0-9]*.json")))


def step_of(path):
    return int(os.path.basename(path).split("-")[-1].split(".")[0])  # <tag>-<step>.json -> step


def tidy(out, drop_after=None):
    """Delete what a kill can leave (temp files, weights without JSON) and what no resume needs: all but the newest
    ckpt, and all but the newest best and the newest best not after that ckpt (a resume goes back to the best it knew).
    drop_after=s: also the checkpoints after step s (a resume re-runs them); -1: all, and DONE (a fresh start)."""
    ckpt, best, here = checkpoints(out, "ckpt"), checkpoints(out, "best"), os.path.join(glob.escape(out), "")
    orphans = [w for w in glob.glob(here + "*-[0-9]*.safetensors") if w[:-12] + ".json" not in ckpt + best]
    for f in glob.glob(here + "*.tmp") + orphans + (glob.glob(here + "DONE") if drop_after == -1 else []):
        os.remove(f)
    last = step_of(ckpt[-1]) if ckpt else math.inf
    known = [b for b in best if step_of(b) <= last][-1:]
    drop = ckpt[:-1] + [b for b in best[:-1] if b not in known]
    if drop_after is not None:
        drop += [j for j in ckpt + best if step_of(j) > drop_after]
    for j in sorted(set(drop)):
        os.remove(j)  # the JSON first: without it the weights are no checkpoint
        os.remove(j[:-5] + ".safetensors")


def save(out, tag, model, opt, state, cfg):
    """Write <out>/<tag>-<step>.{safetensors,json}, then delete the checkpoints no resume needs any more."""
    base = os.path.join(out, f"{tag}-{state['step']:07d}")
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    adam_steps = {}
    for name, p in trainable(model):
        if s := opt.state.get(p):  # Adam's moments here, its step count in the JSON
            tensors[f"optim.{name}.exp_avg"], tensors[f"optim.{name}.exp_avg_sq"] = s["exp_avg"], s["exp_avg_sq"]
            adam_steps[name] = float(s["step"])
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # one generator state per visible GPU
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(base + ".safetensors", lambda p: save_file(tensors, p))
    py, npy = random.getstate(), np.random.get_state()
    meta = dict(state, tag=tag, config=dataclasses.asdict(cfg), weights=os.path.basename(base) + ".safetensors",
                sha256=sha256(base + ".safetensors"), adam_steps=adam_steps,
                adam_groups=[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
                rng_python=[py[0], list(py[1]), py[2]],
                rng_numpy=[npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])])
    write_text(base + ".json", json.dumps(meta, indent=1))
    tidy(out)
    return base


def claim(out, cfg):
    """A fresh run may write `out` only if it holds no checkpoints, or with --overwrite (they are deleted)."""
    if not (cfg.resume or cfg.overwrite) and (checkpoints(out, "ckpt") or checkpoints(out, "best")):
        raise SystemExit(f"{out} holds checkpoints: pass --resume to continue or --overwrite to start afresh")


def finish(out, cfg, untrained=None):
    """Mark a stage done: DONE holds its config, and `--stage all` skips it. untrained: a model saved as the stage's
    only checkpoint, 'best' at step 0, without training (k-means centroids; f and s0 without L_MMD)."""
    if rank_world()[0] == 0:  # every rank holds the same model; rank 0 writes
        if untrained is not None:
            tidy(out, drop_after=-1)
            opt = torch.optim.Adam([p for _, p in trainable(untrained)])
            save(out, "best", untrained, opt, dict(step=0, best_dev=0.0, dev={}), cfg)
        write_text(os.path.join(out, "DONE"), json.dumps(dataclasses.asdict(cfg), indent=1))
    gather(None)  # a barrier: the last checkpoints are on disk before any rank goes on to read them


def read(out, tag):
    """(JSON dict, tensors) of the newest complete <tag> checkpoint of out; the weights' sha256 is checked first."""
    found = checkpoints(out, tag)
    if not found:
        raise SystemExit(f"no {tag} checkpoint in {out} (looked for {tag}-<step>.json)")
    try:
        meta = json.loads(pathlib.Path(found[-1]).read_text())
        path = os.path.join(out, meta["weights"])
        if sha256(path) != meta["sha256"]:
            raise SystemExit(f"{path}: sha256 differs from {found[-1]}; the checkpoint is corrupt")
        return meta, load_file(path)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise SystemExit(f"{found[-1]}: unreadable checkpoint ({type(e).__name__}: {e})") from e


def restore(model, tensors, meta, now=None, opt=None, where=""):
    """Load the weights into model, every key accounted for (a checkpoint of another configuration is refused, naming
    the settings and tensors that differ); with opt, also Adam's state and every RNG (exact resume)."""
    sd, ours = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, model.state_dict()
    bad = [f"{k} missing from the checkpoint" for k in sorted(set(ours) - set(sd))]
    bad += [f"{k} not in this model" for k in sorted(set(sd) - set(ours))]
    bad += [f"{k}: checkpoint {tuple(sd[k].shape)}, now {tuple(v.shape)}" for k, v in ours.items()
            if k in sd and sd[k].shape != v.shape]
    for k, v in ours.items():  # integer tables are data (a vocabulary, token ids), not weights: they must be equal
        if k in sd and not bad and v.dim() and not v.is_floating_point() and not torch.equal(sd[k], v.cpu()):
            row = next(i for i, (a, b) in enumerate(zip(sd[k], v.cpu())) if not torch.equal(a, b))
            bad.append(f"{k} differs (data, not weights), first at row {row}: checkpoint {sd[k][row].tolist()}, "
                       f"now {v[row].tolist()}")
    if bad:
        diff = config_diff(meta["config"], now) if now is not None else ""
        raise SystemExit(f"{where or meta['weights']}: a checkpoint of another configuration"
                         + (f" ({diff})" if diff else "") + f"; {'; '.join(bad[:6])}")
    model.load_state_dict(sd, strict=True)
    if opt is None:
        return
    params = dict(trainable(model))
    unknown = {k[6:].rsplit(".", 1)[0] for k in tensors if k.startswith("optim.")} - set(params)
    if unknown:
        raise SystemExit(f"{meta['weights']}: optimizer state for unknown parameters {sorted(unknown)[:8]}")
    state = {i: {"step": torch.tensor(meta["adam_steps"][n]), "exp_avg": tensors[f"optim.{n}.exp_avg"].to(p.device),
                 "exp_avg_sq": tensors[f"optim.{n}.exp_avg_sq"].to(p.device)}
             for i, (n, p) in enumerate(params.items()) if n in meta["adam_steps"]}
    groups = [dict(g, params=list(range(len(params)))) for g in meta["adam_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():  # another GPU count: the first ones (the run differs anyway)
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    py, n = meta["rng_python"], meta["rng_numpy"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def load(out, tag, model, opt=None, cfg=None):
    """restore() the newest complete <tag> checkpoint of out (cfg: the config now, a dataclass); returns its JSON."""
    meta, tensors = read(out, tag)
    restore(model, tensors, meta, dataclasses.asdict(cfg) if cfg else None, opt, os.path.join(out, meta["weights"]))
    return meta


def begin(out, model, opt, cfg):
    """A stage's training starts: with --resume from the newest ckpt (weights, Adam, every RNG), its log cut back to
    that step (a torn last line goes too); else afresh (its checkpoints, DONE and log gone). -> (state, the log)"""
    state, log = dict(step=0, best_dev=float("inf"), dev={}, skipped_steps=0, bad_samples=[]), out + "/log.jsonl"
    if cfg.resume:
        meta = load(out, "ckpt", model, opt, cfg)
        state = {k: meta.get(k, v) for k, v in state.items()}
        if changed := config_diff(meta["config"], dataclasses.asdict(cfg)):
            print(f"warning: resuming with changed settings ({changed}): the run will differ from an uninterrupted one")
        print(f"resumed {out} at step {state['step']}")
    if rank_world()[0] == 0:
        tidy(out, drop_after=state["step"] if cfg.resume else -1)
        kept = []
        for i, line in enumerate(open(log) if cfg.resume and os.path.exists(log) else [], 1):
            try:
                if line.endswith("\n") and json.loads(line)["step"] <= state["step"]:  # without "\n": cut by the kill
                    kept.append(line)
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"{log} line {i}: not a log line ({e}); remove it (and what follows) to resume") from e
        write_text(log, "".join(kept))  # a kill now leaves the old log or the new one
    return state, open(log if rank_world()[0] == 0 else os.devnull, "a")  # one JSON line per step


# ---- data order and augmentation as functions of (seed, epoch, index); loading a split in shares --------------------

class SeededItems(torch.utils.data.Dataset):
    """Item (epoch, i) of a dataset, drawn with every RNG seeded from (seed, epoch, i) and restored afterwards: its
    augmentation is the same in any worker and after a resume, and the training RNG streams are left alone."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

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


def steps_per_epoch(n, batch_size, grad_accum, stage):
    """Global batches per epoch of n items; a last, smaller batch counts if each micro-batch gets an item."""
    world = rank_world()[1]
    parts = world * grad_accum  # micro-batches per global batch
    if grad_accum < 1 or batch_size < parts:
        raise SystemExit(f"{stage}: a batch of {batch_size} cannot be cut into {world} processes x grad_accum "
                         f"{grad_accum}")
    per_epoch = n // batch_size + (n % batch_size >= parts)  # too small to share: dropped
    if per_epoch == 0:
        raise SystemExit(f"{stage}: {n} training samples cannot fill {parts} micro-batches")
    return per_epoch


def micro_batches(items, start, total, per_epoch, batch_size, cfg, collate_fn):
    """(step, epoch, a, batch): this process's micro-batch a of each step from `start` to `total`. Process r's micro-
    batch a holds items a * world + r, + world * grad_accum, ... of each global batch (SyncBatchNorm refuses CPU
    tensors: BatchNorm is per micro-batch, so 2 processes compute what 1 does with grad_accum 2)."""
    (rank, world), A, step = rank_world(), cfg.grad_accum, start
    while step < total:
        epoch, first = divmod(step, per_epoch)
        batches = epoch_batches(len(items.dataset), batch_size, cfg.seed, epoch)[first:per_epoch]
        micro = [b[a * world + rank::world * A] for b in batches for a in range(A)]  # in order
        for i, batch in enumerate(loader(items, micro, cfg.num_workers, collate_fn)):
            yield step, epoch, i % A, batch
            if i % A == A - 1:
                step += 1
                if step >= total:
                    return


def loader(items, batches, num_workers, collate_fn=data.collate):
    """A DataLoader with its own generator: by default each takes a draw of the global RNG (a resume opens one more)."""
    return torch.utils.data.DataLoader(items, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(0))


def over_split(dataset, batch_size, cfg, fn, desc=None):
    """[fn(batch)] over a whole split in order, without augmentation. Under torchrun each process takes a contiguous
    share of the batches and every process gets every result, in the split's order."""
    n, (rank, world) = len(dataset), rank_world()
    batches = [[(0, i) for i in range(j, min(j + batch_size, n))] for j in range(0, n, batch_size)]
    k = math.ceil(len(batches) / world)
    mine = batches[rank * k:(rank + 1) * k]
    with torch.no_grad():
        out = [fn(b) for b in tqdm(loader(SeededItems(dataset, cfg.seed), mine, cfg.num_workers), total=len(mine),
                                   desc=desc, leave=False, disable=rank > 0 or desc is None, dynamic_ncols=True)
               if b.keys() != {"skipped"}]
    return [r for part in gather(out) for r in part]


# ---- the training step: DDP around the loss, and whether the step updates -------------------------------------------

class LossOf(torch.nn.Module):
    """loss_fn(model, batch, first) as a module's forward: DDP syncs gradients only of what runs through its forward."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch, first):
        return self.loss_fn(self.model, batch, first)


def ddp(model, loss_fn, device):
    """The loss as a module, under DistributedDataParallel when several processes run: BatchNorm's running statistics
    stay per rank (broadcast_buffers=False); short videos leave some W_k unused, lambda_mmd = 0 leaves s0 unused.
    A module with a `processes` attribute (VQSign) gets the processes' way to agree (Processes)."""
    net = LossOf(model, loss_fn)
    if rank_world()[1] == 1:
        return net
    for m in model.modules():
        if hasattr(m, "processes"):
            m.processes = Processes()
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                     broadcast_buffers=False, find_unused_parameters=True)


def all_bad(batch, cfg):
    """Whether the micro-batch of some process lost every video (data.skip_bad): then each skips its forward."""
    return cfg.data.skip_bad and any(gather(batch.keys() == {"skipped"}))


def gather_step(results, bad, state):
    """Every process's (metrics, loss, videos) of the step's micro-batches, and the names of the bad samples first
    found now, which join state["bad_samples"]. bad: (name, reason) of this process's left-out samples."""
    got = gather((results, bad))
    new = dict.fromkeys((n, r) for p in got for n, r in p[1] if [n, r] not in state["bad_samples"])
    state["bad_samples"] += [[n, r] for n, r in new]
    return [r for p in got for r in p[0]], [n for n, _ in new]


def clip_gradients(model, grad_clip):
    """Clip the gradient to a global norm of grad_clip (0: no clipping) -> its norm before (alike on every rank)."""
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf")))


def nonfinite(stage, step, results, gn, empty, skip, out):
    """What keeps this step from updating, "" if nothing: a NaN/inf loss or gradient stops the run naming the stage,
    step, loss terms and videos, unless skip (--skip_nonfinite); a micro-batch that lost every video skips it."""
    bad_loss = [r for r in results if not math.isfinite(r[1])]
    problem = "; ".join(f"loss {r[1]}, non-finite: " + ", ".join(
        f"{k} {v}" for k, v in r[0].items() if k != "loss" and isinstance(v, float) and not math.isfinite(v))
        for r in bad_loss)
    if not (problem or empty or math.isfinite(gn)):
        problem = f"gradient norm {gn} (loss {sum(r[1] for r in results) / len(results):.4g})"
    if problem and not skip:  # nothing was saved in this step: the last checkpoint is good
        videos = [v for r in bad_loss or results for v in r[2] or []]
        raise FloatingPointError(f"{stage} step {step}: {problem}, videos {videos}; the last good checkpoint in {out} "
                                 "is kept (--skip_nonfinite skips)")
    return problem or ("every video of a micro-batch is bad" if empty else "")


def mean_metrics(results, state, new_bad):
    """The step's log fields: its micro-batches' metrics averaged, the skipped steps so far, bad samples found now."""
    m = {k: sum(float(r[0][k]) for r in results) / len(results) for k in results[0][0]} if results else {}
    if state["skipped_steps"]:
        m["skipped_steps"] = state["skipped_steps"]
    if new_bad:
        m["bad_samples"] = new_bad
    return m
