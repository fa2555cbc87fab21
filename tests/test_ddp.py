"""DDP through torchrun: 2 CPU processes (gloo) against 1 process with grad_accum=2, the same global batches.

Each global batch is cut into the same two micro-batches either way (train.fit), and BatchNorm's statistics are per
micro-batch, so every training step computes the same losses; only the order of float sums differs (DDP averages
the two gradients, accumulation adds halves), hence a tolerance. The vq run re-seeds dead codes (rank 0's picks,
broadcast): it must match too. The sharded evaluation must give what one process gives on the same checkpoint."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import data
import synthetic
import train
from test_pipeline import TINY, tiny_llm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(*argv):
    """train.py under `torchrun --standalone --nproc_per_node=2` (a free port; gloo, as there is no GPU here)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *argv]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def log_of(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def assert_same_steps(one, two, rel=1e-6):
    """Every per-step number of the two logs (losses, their terms, grad norm, lr) alike, but time and dev metrics
    (BatchNorm's running statistics are rank 0's under DDP, every micro-batch's in one process)."""
    assert [m["step"] for m in one] == [m["step"] for m in two] and one
    for a, b in zip(one, two):
        assert set(a) == set(b), (a, b)
        for k in set(a) - {"dt", "dt_eval", "dev"}:
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-6), (a["step"], k, a[k], b[k])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("d") / "synthetic")
    synthetic.make_synthetic(root, seed=5, size="tiny", height=32, width=32)  # 12 train, 4 dev videos
    return root


def test_vq_two_processes_match_grad_accum(tiny, tmp_path):
    args = ["--stage=vq", f"--data.root={tiny}", "--vq.width=4", "--vq.d=16", "--vq.M=32", "--vq_batch_size=4",
            "--vq_max_steps=6", "--vq_ckpt_every=3", "--vq_eval_every=3", "--vq_warmup=2", "--vq.reseed_every=2",
            "--num_workers=0", "--threads=1"]
    one = train.main(args + [f"--out_dir={tmp_path / 'one'}", "--grad_accum=2"])
    printed = torchrun(*args, f"--out_dir={tmp_path / 'two'}")
    two = log_of(tmp_path / "two" / "vq")
    assert sum(m["reseeded"] for m in one) > 0, "the run should re-seed a dead code at least once"
    assert_same_steps(one, two)
    assert printed.count("step 6 |") == 1  # rank 0 prints, the other rank does not
    left = sorted(os.listdir(tmp_path / "two" / "vq"))
    assert left[-3:] == ["ckpt-0000006.json", "ckpt-0000006.safetensors", "log.jsonl"]
    # --resume under torchrun: both ranks load step 6's checkpoint and train on to 9, as one process does
    more = ["--vq_max_steps=9", "--resume"]
    one = train.main(args + [f"--out_dir={tmp_path / 'one'}", "--grad_accum=2"] + more)
    torchrun(*args, f"--out_dir={tmp_path / 'two'}", *more)
    assert [m["step"] for m in one] == [7, 8, 9]
    assert_same_steps(log_of(tmp_path / "one" / "vq"), log_of(tmp_path / "two" / "vq"))


def test_cra_ft_eval_two_processes(tmp_path):
    """vq in one process; then cra, ft (L_ft through a tiny random LLaMA) and eval under torchrun (--stage=all skips
    the finished vq) against the same stages in one process with grad_accum=2."""
    root, llm = str(tmp_path / "data"), str(tmp_path / "llm")
    synthetic.make_synthetic(root, seed=0, size="tiny", height=32, width=32)
    tiny_llm(llm, [s.text for s in data.load_split(root, "train")] * 3)
    args = TINY + [f"--data.root={root}", f"--llm={llm}", "--cra_steps=4", "--ft_max_steps=4", "--ft_eval_every=4"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train.main(["--stage=vq", f"--out_dir={one}"] + args)
    shutil.copytree(os.path.join(one, "vq"), os.path.join(two, "vq"))
    open(os.path.join(two, "vq", "DONE"), "w").close()
    for stage in ("cra", "ft"):
        train.main([f"--stage={stage}", f"--out_dir={one}", "--grad_accum=2"] + args)
    torchrun("--stage=all", f"--out_dir={two}", *args)
    assert open(os.path.join(one, "cra", "vocab.txt")).read() == open(os.path.join(two, "cra", "vocab.txt")).read()
    assert_same_steps(log_of(os.path.join(one, "cra")), log_of(os.path.join(two, "cra")))
    assert_same_steps(log_of(os.path.join(one, "ft")), log_of(os.path.join(two, "ft")))
    # the sharded translation of dev and test by 2 ranks == one process's, on the checkpoint the 2 ranks trained
    files = {f: open(os.path.join(two, "eval", f)).read() for f in ("metrics.json", "dev.tsv", "test.tsv")}
    train.main(["--stage=eval", f"--out_dir={two}"] + args)
    assert files == {f: open(os.path.join(two, "eval", f)).read() for f in files}
