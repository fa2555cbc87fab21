"""Why do VQ-Sign's codes miss the generator's primitives? Measured on dev from a checkpoint (issue 25, item 2):

- what the clip features z carry: linear probes (logistic regression on z, trained on the training clips, scored on
  dev) for the primitive at each clip's centre, the signer, and the clip's position in its video (fifths);
- what the codebook does to z: NMI with the primitives of the codes, and of k-means on z with the same M;
- whether E_v sees motion: the probe's accuracy on dev clips whose frames were reversed in time inside each video
  (the same frames, the movement backwards: a primitive told by its path's direction cannot survive it);
- (with --ft) how the codes move in fine-tuning: the share of dev clips whose code changes, NMI before and after;
- (with --whiten) whether the nearest-code rule would find the primitives in another metric: the cra stage's refit
  (cra_refit Lloyd steps from the codebook over the training clips' z) in z, and in PCA-whitened z (training statistics;
  eigenvalues floored at eps times the largest), each scored by NMI on dev.

    python bench/why_tokens.py --ckpt out/vq [--ft out/ft] [--whiten] [--data.root=data/synthetic]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import engine  # noqa: E402
import synthetic  # noqa: E402
import train  # noqa: E402
from vq import VQSign, kmeans, token_alignment  # noqa: E402


@torch.no_grad()
def features(vq, root, split, cfg, reverse=False):
    """Per valid clip of a split: z (n, d), code (n,), primitive at its centre (-1 at rest), signer, fifth of video."""
    gt = synthetic.read_ground_truth(root)["videos"]
    ds = data.SignDataset(data.load_split(root, split), cfg.data, train=False)
    out = {k: [] for k in ("z", "code", "prim", "signer", "pos")}
    vq.eval()
    for i in range(0, len(ds), 8):
        batch = data.collate([ds[j] for j in range(i, min(i + 8, len(ds)))])
        if reverse:  # each video's own frames backwards, padding kept at the end
            for b, m in enumerate(batch["frame_mask"]):
                n = int(m.sum())
                batch["frames"][b, :n] = batch["frames"][b, :n].flip(0)
        z, _, idx = vq.encode(batch)
        for b, name in enumerate(batch["name"]):
            v, T = gt[name], int(batch["clip_mask"][b].sum())
            labels = synthetic.clip_labels(v["primitives"], v["n_frames"])
            out["z"].append(z[b, :T])
            out["code"] += idx[b, :T].tolist()
            out["prim"] += [-1 if x is None else x for x in labels]
            out["signer"] += [v["signer"]] * T
            out["pos"] += [min(5 * t // T, 4) for t in range(T)]
    return {k: torch.cat(v) if k == "z" else torch.tensor(v) for k, v in out.items()}


def probe(x, y, xd, yd, steps=300):
    """Accuracy on (xd, yd) of a logistic regression trained on (x, y) (full batch, Adam, standardized inputs)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, xd = (x - mu) / sd, (xd - mu) / sd
    classes = int(max(y.max(), yd.max())) + 2
    W = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(x @ W + b, y + 1) + 1e-4 * W.pow(2).sum()  # labels shifted: -1 (rest) is a class
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(((xd @ W + b).argmax(1) == yd + 1).float().mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="out/vq", help="a vq stage's folder (or a cra one: its refitted codebook)")
    p.add_argument("--ft", default="", help="an ft stage's folder: how the codes moved in fine-tuning")
    p.add_argument("--whiten", action="store_true", help="the refit in z vs in whitened z")
    p.add_argument("--threads", type=int, default=1)
    args, rest = p.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = train.parse_args(rest)
    vq = VQSign(cfg.vq)
    meta, tensors = engine.read(args.ckpt, "best")
    prefix = "model.vq." if any(k.startswith("model.vq.") for k in tensors) else "model."
    vq.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    root = cfg.data.root
    tr, dev, rev = (features(vq, root, s, cfg, r) for s, r in (("train", False), ("dev", False), ("dev", True)))
    z_probe = lambda key: probe(tr["z"], tr[key], dev["z"], dev[key])  # noqa: E731
    chance = lambda y: float((y == y.mode().values).float().mean())  # noqa: E731
    print(f"{args.ckpt} on {root}: {len(tr['code'])} train / {len(dev['code'])} dev clips, M = {cfg.vq.M}")
    for key in ("prim", "signer", "pos"):
        print(f"linear probe z -> {key}: dev accuracy {z_probe(key):.3f} (chance {chance(dev[key]):.3f})")
    print(f"the same probe on time-reversed dev videos: primitive {probe(tr['z'], tr['prim'], rev['z'], rev['prim']):.3f}")
    purity, nmi = token_alignment(dev["code"], dev["prim"])
    km = kmeans(tr["z"], cfg.vq.M, iters=50, seed=0).float()
    km_codes = torch.cdist(dev["z"], km).argmin(1)
    print(f"codes vs primitives: purity {purity:.3f}, NMI {nmi:.3f}; k-means on z (M = {cfg.vq.M}): purity / NMI "
          f"{token_alignment(km_codes, dev['prim'])[0]:.3f} / {token_alignment(km_codes, dev['prim'])[1]:.3f}; "
          f"codes used on dev: {len(set(dev['code'].tolist()))}")
    if args.whiten:
        x, xd, cb = tr["z"].double(), dev["z"].double(), vq.codebook.detach().double()
        refit = lambda f: torch.cdist(f(xd), kmeans(f(x), cfg.vq.M, iters=cfg.cra_refit, init=f(cb))).argmin(1)  # noqa: E731
        print(f"refit in z: NMI {token_alignment(refit(lambda v: v), dev['prim'])[1]:.3f}")
        mu = x.mean(0)
        e, U = torch.linalg.eigh(torch.cov((x - mu).T))  # z's covariance over the training clips: U diag(e) U^T
        print(f"z's covariance: its 10 largest of {len(e)} eigenvalues hold {float(e[-10:].sum() / e.sum()):.0%} "
              "of the variance")
        for eps in (1e-3, 1e-2, 1e-1):
            white = U / (e + eps * e.max()).sqrt()  # (d, d): (z - mu) @ white has (near) identity covariance
            codes = refit(lambda v: (v - mu) @ white)  # noqa: B023
            print(f"refit in whitened z (eps {eps:g}): NMI {token_alignment(codes, dev['prim'])[1]:.3f}")
    if args.ft:
        _, ft_tensors = engine.read(args.ft, "best")
        vq.load_state_dict({k[9:]: v for k, v in ft_tensors.items() if k.startswith("model.vq.")}, strict=True)
        after = features(vq, root, "dev", cfg)
        moved = float((after["code"] != dev["code"]).float().mean())
        print(f"fine-tuning: {moved:.1%} of dev clips change code; NMI {nmi:.3f} -> "
              f"{token_alignment(after['code'], after['prim'])[1]:.3f}")


if __name__ == "__main__":
    main()
