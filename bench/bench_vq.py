"""VQ-Sign training throughput (Sec. 3.2 / 4.1): clips/s of one Adam step on L_VQ (forward, backward, update) and the
process's peak memory, for the synthetic preset and for the paper's configuration at a small batch.

Ours vs reference, side by side: ours runs the ResNet18 once per frame and the two Conv3Ds over the whole frame
sequence (one output per clip); the reference cuts the video into its 13-frame clips (data.cut_clips) and encodes each
clip by itself, the literal reading of Sec. 3.2. Neighbouring clips share 9 of their 13 frames, so the reference runs
the ResNet on 13 / 4 = 3.25x as many frames; the expected speed-up is close to that where the ResNet dominates.
The two give the same z (tests/test_vq.py::test_sequence_conv3d_equals_per_clip).

    python bench/bench_vq.py                       # synthetic preset, 1 and 2 threads; paper config at batch 1
    python bench/bench_vq.py --skip-paper

Each configuration runs in its own subprocess so that ru_maxrss (peak resident memory) is its own. Medians of --reps
timed steps after one warm-up step. Frames are random: the cost of a step does not depend on pixel values.
GPU: this script runs on a CPU only; no GPU figures were measured.
"""
import argparse, json, os, resource, statistics, subprocess, sys, time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import train  # noqa: E402
from vq import VQConfig, VQSign  # noqa: E402


class PerClipVQSign(VQSign):
    """The reference: every clip encoded on its own, (B, T, 13, 3, H, W) -> (B*T, 13, ...) -> z (B, T, d)."""

    def loss(self, batch):
        clips = data.cut_clips(batch["frames"], batch["clip_mask"].sum(1))  # (B, T, 13, 3, H, W), a view
        B, T = clips.shape[:2]
        m = batch["clip_mask"]
        one = torch.ones(int(m.sum()), 1, dtype=torch.bool)
        z_valid = self.encoder(clips[m], one)[:, 0]  # (V, 13, 3, H, W) -> (V, 1, d) -> (V, d)
        z = z_valid.new_zeros(B, T, z_valid.shape[1])
        z[m] = z_valid

        class Frozen(torch.nn.Module):  # hand the precomputed z to VQSign.forward in place of the encoder
            def forward(self_, frames, clip_mask):
                return z
        enc, self.encoder = self.encoder, Frozen()
        try:
            return super().loss(batch)
        finally:
            self.encoder = enc


def one_config(a):
    """Runs in a subprocess: time `reps` training steps, print a JSON line."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = VQConfig(width=a.width, d=a.d, M=a.M, reseed_every=0)
    model = (PerClipVQSign if a.impl == "per-clip" else VQSign)(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n_frames = [a.frames] * a.batch
    n_clips = torch.tensor([data.num_clips(n) for n in n_frames])
    N = data.padded_length(int(n_clips.max()))
    batch = {"frames": torch.randn(a.batch, N, 3, a.size, a.size),
             "clip_mask": torch.arange(int(n_clips.max()))[None] < n_clips[:, None]}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(a.reps + 1):
        t0 = time.perf_counter()
        loss, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps(dict(impl=a.impl, threads=a.threads, step_s=t, clips_per_s=int(n_clips.sum()) / t,
                          frames_per_s=sum(n_frames) / t, peak_rss_mb=peak / 1024, rss_before_steps_mb=rss0 / 1024,
                          params_m=sum(p.numel() for p in model.parameters()) / 1e6)))


def run(args):
    out = subprocess.run([sys.executable, __file__, "--one", *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--paper-reps", type=int, default=2, help="timed steps of the paper configuration (slow on a CPU)")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--one", nargs=9, metavar="X", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        k = ("impl", "threads", "width", "d", "M", "size", "batch", "frames", "reps")
        v = dict(zip(k, a.one))
        one_config(argparse.Namespace(**{n: (x if n == "impl" else int(x)) for n, x in v.items()}))
        return
    p = train.PRESETS["synthetic"]
    frames = 84  # the mean video length of the synthetic default set (synthetic.make_synthetic, size "default")
    rows = []
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores; medians of {a.reps} steps ({a.paper_reps} for the "
          f"paper configuration) after one warm-up step")
    configs = [("synthetic", p["vq.width"], p["vq.d"], p["vq.M"], p["data.image_size"], p["vq_batch_size"], frames,
                a.reps)]
    if not a.skip_paper:
        c = VQConfig()
        configs.append(("paper, batch 1", c.width, c.d, c.M, 224, 1, 37, a.paper_reps))  # 37 frames = 7 clips
    for name, width, d, M, size, batch, n, reps in configs:
        for threads in (1, 2):
            res = {impl: run([impl, threads, width, d, M, size, batch, n, reps]) for impl in ("ours", "per-clip")}
            o, r = res["ours"], res["per-clip"]
            rows.append((name, threads, o, r))
            print(f"{name:15s} {size}px width {width} d {d} M {M}, {batch} x {n} frames, {threads} thread(s): "
                  f"ours {o['clips_per_s']:8.1f} clips/s ({o['step_s']:.3f} s/step, "
                  f"peak RSS {o['peak_rss_mb']:.0f} MB) | "
                  f"per-clip reference {r['clips_per_s']:8.1f} clips/s ({r['step_s']:.3f} s/step, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB) | speed-up {o['clips_per_s'] / r['clips_per_s']:.2f}x", flush=True)
    print("GPU: not run (no GPU on this machine)")


if __name__ == "__main__":
    main()
