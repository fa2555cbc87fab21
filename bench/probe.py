"""Are a synthetic language's primitives recognisable from its frames? A supervised probe, as one would check a real
data set before blaming a method: a small CNN sees three frames of each primitive occurrence (at 1/6, 1/2 and 5/6 of
its segment, as data.SignDataset gives them: resized, normalized, no augmentation) and their two differences, and is
trained on the training split's occurrences to name the primitive; its accuracy on dev is the figure. With --frames=1
it sees the middle frame alone: what a primitive's look tells without its movement.

    python bench/probe.py --data.root=data/synthetic                 # the weather language, 32 x 32 as the demo
    python bench/probe.py --data.root=data/travel --frames=1         # the travel language, the middle frame alone
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import synthetic  # noqa: E402


def occurrences(root, split, image_size, n_frames):
    """(x (n, C, S, S), y (n,)) over every primitive occurrence of a split: its frames (3 or 1) and differences."""
    gt = synthetic.read_ground_truth(root)["videos"]
    ds = data.SignDataset(data.load_split(root, split), data.DataConfig(image_size=image_size), train=False)
    xs, ys = [], []
    for i in range(len(ds)):
        item = ds[i]
        v = item["frames"]  # (N_pad, 3, S, S)
        for pid, a, b in gt[item["name"]]["primitives"]:
            at = [a + (b - a) // 2] if n_frames == 1 else [a + (b - a) // 6, a + (b - a) // 2, a + 5 * (b - a) // 6]
            f = v[at]  # (k, 3, S, S)
            x = f if n_frames == 1 else torch.cat([f, f[1:] - f[:-1]])  # 3 frames and 2 differences: (5, 3, S, S)
            xs.append(x.flatten(0, 1))  # (15 or 3, S, S)
            ys.append(pid)
    return torch.stack(xs), torch.tensor(ys)


class Probe(nn.Module):
    """Four 3x3 conv layers (32-64 channels, two poolings), global average pooling, a linear classifier."""

    def __init__(self, cin, n_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.head(self.net(x).mean((2, 3)))  # (n, C, S, S) -> (n, 64) -> (n, classes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data.root", dest="root", default="data/synthetic")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--frames", type=int, choices=(1, 3), default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    (x, y), (xd, yd) = (occurrences(a.root, s, a.image_size, a.frames) for s in ("train", "dev"))
    n_classes = len(synthetic.read_ground_truth(a.root)["primitives"])
    model = Probe(x.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = a.epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(x))
        for j in range(0, len(x) - 63, 64):
            idx = perm[j:j + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xd).argmax(1) == yd).float().mean())
        print(f"epoch {epoch + 1}: train loss {loss.item():.3f}, dev accuracy {acc:.3f}", flush=True)
    print(f"{a.root}: {n_classes} primitives, {len(x)} train / {len(xd)} dev occurrences, {a.frames} frame(s) at "
          f"{a.image_size} px: dev accuracy {acc:.1%} (chance {(yd == yd.mode().values).float().mean():.1%}); "
          f"{time.time() - t0:.0f} s")
    return acc


if __name__ == "__main__":
    main()
