"""Where the demo's time goes, quiet and beside another program: each stage of `python train.py` timed per step for
each thread setting, on a quiet machine and with one competing CPU-bound process (a busy loop at `nice 19`, as a
compiler in the background), side by side in one run.

    python bench/bench_demo.py                       # the demo's data and LLM (made if missing); ~15 min
    python bench/bench_demo.py --settings=before,auto,1   # before issue 24, now, one thread; or N-active, N-passive

For each setting and load: the median seconds of a vq step and of an ft step, one vq and one greedy ft evaluation of
dev (100 videos), the cra stage whole, the final beam-4 evaluation (20 + 20 videos, scaled to 100 + 100), and the
demo's stages projected from them (the preset's vq steps and evaluations, cra, its ft steps and dev evaluations,
the final evaluation); data generation and SmolLM2's conversion are timed once, before.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train  # noqa: E402

BUSY = "import os\nos.nice(19)\nwhile True:\n    pass\n"


def run(args, settings, out):
    """`python train.py args` in a subprocess with a thread setting: "auto" (train.py's default), "before" (the
    defaults before issue 24), a count, or "N-active" / "N-passive" (N threads, OpenMP's wait policy) -> (wall
    seconds, stdout, the stage's log lines)."""
    count, _, policy = settings.partition("-")
    extra = [] if count in ("auto", "before") else [f"--threads={count}"]
    env = dict(os.environ, **({"OMP_WAIT_POLICY": policy.upper()} if policy else {}))
    if count == "before":  # the defaults before issue 24: one loader process, no frame cache, OpenMP spinning
        extra, env["OMP_WAIT_POLICY"] = ["--num_workers=1", "--data.cache_mb=0", "--eval_batch_size=8"], "ACTIVE"
    t0 = time.time()
    r = subprocess.run([sys.executable, "train.py", *args, *extra, f"--out_dir={out}", "--log_every=1000"], cwd=REPO,
                       capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if r.returncode:
        sys.exit(f"train.py {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    stage = next(a.split("=")[1] for a in args if a.startswith("--stage="))
    log = os.path.join(out, stage, "log.jsonl")
    return wall, r.stdout, [json.loads(line) for line in open(log)] if os.path.exists(log) else []


def measure(settings, work, vq_steps, ft_steps):
    """One setting's figures on whatever load the machine has now: median step times (the first 3 steps warm caches
    and allocators up), each stage's own evaluation (the log's dt_eval), cra whole, the final evaluation of 20 + 20
    videos (train.py prints each split's seconds)."""
    out = os.path.join(work, f"run-{settings}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(os.path.join(work, "base"), out)  # a short vq and cra: what cra and ft start from
    _, _, vq = run(["--stage=vq", f"--vq_max_steps={vq_steps}", f"--vq_eval_every={vq_steps}", "--overwrite"],
                   settings, os.path.join(out, "vq-timing"))
    cra_wall, _, _ = run(["--stage=cra", "--overwrite"], settings, out)
    _, _, ft = run(["--stage=ft", f"--ft_max_steps={ft_steps}", f"--ft_eval_every={ft_steps}", "--overwrite"],
                   settings, out)
    _, printed, _ = run(["--stage=eval", "--data.root=" + os.path.join(work, "share20")], settings, out)
    final = sum(float(line.split(" translated in ")[1].split()[0]) for line in printed.splitlines()
                if " translated in " in line)
    median = lambda log: statistics.median(m["dt"] for m in log[3:])  # noqa: E731
    return dict(vq_step=median(vq), vq_eval=vq[-1]["dt_eval"], cra=cra_wall, ft_step=median(ft),
                dev_eval=ft[-1]["dt_eval"], final_eval=final * 200 / 40)  # 20 + 20 videos scaled to 100 + 100


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="before,auto,1")
    p.add_argument("--vq_steps", type=int, default=25)
    p.add_argument("--ft_steps", type=int, default=12)
    p.add_argument("--work", default="")
    a = p.parse_args(argv)
    cfg = train.parse_args([])
    work = a.work or tempfile.mkdtemp(prefix="bench-demo-")
    t0 = time.time()
    if not os.path.exists(cfg.data.root):  # the demo's data, timed: the first thing a new user waits for
        run(["--stage=vq", "--vq_max_steps=1"], "auto", os.path.join(work, "warm"))
    data_s = time.time() - t0
    base_s = 0.0  # 0: the work folder's base was reused
    if not os.path.exists(os.path.join(work, "base", "cra", "DONE")):
        t0 = time.time()
        run(["--stage=vq", "--vq_max_steps=20", "--vq_eval_every=100000", "--overwrite"], "auto",
            os.path.join(work, "base"))
        run(["--stage=cra", "--cra_steps=10", "--overwrite"], "auto", os.path.join(work, "base"))  # converts SmolLM2
        base_s = time.time() - t0
    share = os.path.join(work, "share20")  # 20 dev and 20 test videos, linked, for the final evaluation's timing
    if not os.path.exists(share):
        import data
        for split in ("dev", "test"):
            os.makedirs(os.path.join(share, split), exist_ok=True)
            rows = data.load_split(cfg.data.root, split)[:20]
            with open(os.path.join(share, f"{split}.tsv"), "w") as f:
                f.write("name\ttranslation\tgloss\n" + "".join(f"{s.name}\t{s.text}\t{s.gloss}\n" for s in rows))
            for s in rows:
                os.symlink(os.path.abspath(s.path), os.path.join(share, split, s.name))
    results = {}
    for load in ("quiet", "one busy process"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load != "quiet" else None
        try:
            for s in a.settings.split(","):
                results[(load, s)] = f = measure(s, work, a.vq_steps, a.ft_steps)
                print(f"{load:>16s}, threads {s:>4s}: " + ", ".join(f"{k} {v:.2f} s" for k, v in f.items()), flush=True)
        finally:
            if busy:
                busy.kill()
    print(f"\ndata written in {data_s:.0f} s, vq/cra base with SmolLM2's conversion {base_s:.0f} s (0: reused)")
    print("| load | threads | vq step s | vq eval s | cra s | ft step s | dev eval s | final eval s | stages min |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    n_vq, n_ft = cfg.vq_max_steps, cfg.ft_max_steps  # the preset's budget, evaluated every *_eval_every and at the end
    n_vq_eval, n_dev_eval = -(-n_vq // cfg.vq_eval_every), -(-n_ft // cfg.ft_eval_every)
    for (load, s), f in results.items():
        demo = (n_vq * f["vq_step"] + n_vq_eval * f["vq_eval"] + f["cra"] + n_ft * f["ft_step"]
                + n_dev_eval * f["dev_eval"] + f["final_eval"]) / 60
        f["demo_min"] = demo
        print(f"| {load} | {s} | {f['vq_step']:.3f} | {f['vq_eval']:.1f} | {f['cra']:.1f} | {f['ft_step']:.3f} | "
              f"{f['dev_eval']:.1f} | {f['final_eval']:.1f} | {demo:.1f} |")
    for s in a.settings.split(","):
        q, b = results[("quiet", s)], results[("one busy process", s)]
        print(f"threads {s}: busy / quiet: vq step {b['vq_step'] / q['vq_step']:.2f}x, ft step "
              f"{b['ft_step'] / q['ft_step']:.2f}x, demo {b['demo_min'] / q['demo_min']:.2f}x")
    return results


if __name__ == "__main__":
    main()
