"""data.py throughput: frames/s decoded (ours, Pillow, vs imageio.v3.imread per frame) and clips/s delivered by a
DataLoader (SignDataset + collate, training augmentation on) with 0 and 2 workers, for the synthetic set (64x64) and
for 210x260 PNG frames (the Phoenix-2014T frame size, resized to 224 as in the paper).

    python bench/bench_data.py                 # tiny synthetic sets, made in a temporary folder
    python bench/bench_data.py --generate      # also times make_synthetic(size="default") and its size on disk

Medians of --reps repetitions. The 210x260 frames are synthetic renders with extra per-pixel noise so that they
compress about as poorly as camera frames do; the PNG size per frame is printed so the comparison can be judged.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import synthetic  # noqa: E402


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def add_noise(root, sigma, seed=0):
    """Rewrite every PNG under root with Gaussian pixel noise (camera-like frames compress poorly)."""
    rng = np.random.default_rng(seed)
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".png"):
                p = os.path.join(d, f)
                x = np.asarray(Image.open(p)).astype(np.float32) + rng.normal(0, sigma, (260, 210, 3))
                Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(p)


def decode_rates(samples, reps):
    files = [[os.path.join(s.path, f) for f in sorted(os.listdir(s.path))] for s in samples]
    n = sum(map(len, files))
    ours = median_time(lambda: [data.read_frames(s) for s in samples], reps)
    ref = median_time(lambda: [np.stack([iio.imread(f) for f in fs]) for fs in files], reps)
    size = sum(os.path.getsize(f) for fs in files for f in fs) / n
    return n / ours, n / ref, size


def loader_rate(samples, image_size, workers, reps):
    ds = data.SignDataset(samples, data.DataConfig(image_size=image_size), train=True)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers, collate_fn=data.collate)
    clips = sum(data.num_clips(len(data.read_frames(s))) for s in samples)  # before speed jitter; jitter averages out

    def epoch():
        for batch in dl:
            pass
    return clips / median_time(epoch, reps), clips


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--generate", action="store_true", help="also time make_synthetic(size='default')")
    args = ap.parse_args()
    threads_all = max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads_all)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        syn, big = os.path.join(tmp, "syn64"), os.path.join(tmp, "syn210x260")
        synthetic.make_synthetic(syn, seed=0, size="tiny")
        synthetic.make_synthetic(big, seed=0, size="tiny", height=260, width=210)
        add_noise(big, sigma=6)
        sets = [("synthetic 64x64", syn, 64), ("210x260 PNG -> 224", big, 224)]
        print("\n| frames | frames/s ours (Pillow) | frames/s imageio.v3.imread | ours / imageio | bytes per PNG |")
        print("|---|---|---|---|---|")
        for label, root, _ in sets:
            samples = data.load_split(root, "train")
            ours, ref, size = decode_rates(samples, args.reps)
            print(f"| {label.split(' ->')[0]} | {ours:.0f} | {ref:.0f} | {ours / ref:.2f} | {size:.0f} |")
        # each DataLoader worker runs torch with 1 thread; workers=0 runs in this process, measured with both
        print("\n| frames | DataLoader workers | torch threads in the main process | clips/s | clips per epoch |")
        print("|---|---|---|---|---|")
        for label, root, size in sets:
            samples = data.load_split(root, "train")
            for workers, threads in ((0, threads_all), (0, 1), (2, threads_all)):
                torch.set_num_threads(threads)
                rate, clips = loader_rate(samples, size, workers, args.reps)
                print(f"| {label} | {workers} | {threads} | {rate:.1f} | {clips} |")
            torch.set_num_threads(threads_all)
        if args.generate:
            root = os.path.join(tmp, "default")
            t0 = time.perf_counter()
            gt = synthetic.make_synthetic(root, seed=0, size="default")
            dt = time.perf_counter() - t0
            frames = sum(v["n_frames"] for v in gt["videos"].values())
            du = [subprocess.run(["du", "-sh", *flag, root], capture_output=True, text=True).stdout.split()[0]
                  for flag in ([], ["--apparent-size"])]
            print(f"\nmake_synthetic(size='default'): {len(gt['videos'])} videos, {frames} frames in {dt:.1f} s; "
                  f"on disk {du[0]} ({du[1]} of file contents)")


if __name__ == "__main__":
    main()
