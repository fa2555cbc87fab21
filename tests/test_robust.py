"""Training that survives (issue 8): SIGKILL mid-run and mid-checkpoint, then --resume, gives the per-step losses of
an uninterrupted run bitwise (CPU); a NaN/inf loss or gradient stops the run naming stage, step and term (or is
skipped with --skip_nonfinite); bad data is skipped and reported end to end with --data.skip_bad, and stops the run
naming the file/row without; a checkpoint of another configuration is refused naming the setting that differs."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import data
import synthetic
import engine
import train
import translate
import vq
from safetensors.torch import load_file
from test_pipeline import tiny_llm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("d") / "synthetic")
    synthetic.make_synthetic(root, seed=7, size="tiny", height=32, width=32)  # 12 train, 4 dev videos
    return root


def args(root, out, *more):  # 12 videos / 5 = 3 steps per epoch; checkpoints at 2, 4, ..; dev at 3, 6, 8
    return ["--stage", "vq", f"--data.root={root}", f"--out_dir={out}", "--vq.width=4", "--vq.d=16", "--vq.M=8",
            "--vq_batch_size=5", "--vq_max_steps=8", "--vq_ckpt_every=2", "--vq_eval_every=3", "--vq_warmup=2",
            "--vq.reseed_every=2", "--num_workers=0", "--threads=1", "--log_every=100", *more]


def log_of(out):
    """Per-step log lines without the wall-clock time."""
    return [{k: v for k, v in json.loads(l).items() if k not in ("dt", "dt_eval")} for l in open(os.path.join(out, "vq", "log.jsonl"))]


def newest(out, tag):
    return json.load(open(engine.checkpoints(os.path.join(out, "vq"), tag)[-1]))


@pytest.fixture(scope="module")
def baseline(tiny, tmp_path_factory):
    """An uninterrupted run: its log and its final checkpoints."""
    out = str(tmp_path_factory.mktemp("full"))
    train.main(args(tiny, out))
    return log_of(out), newest(out, "ckpt"), newest(out, "best")


# ---------------------------------------------------------------------------------------------------------------------
# SIGKILL and --resume

# train.main in a child process that SIGKILLs itself once the temp file of checkpoint file `target` is written, before
# its fsync and rename (target "": no self-kill; the test kills it from outside)
DRIVER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import engine, train
target, real = sys.argv[2], engine.atomic_write

def write_then_die(path, write):
    if os.path.basename(path) == target:
        write(path + ".tmp")
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, write)

engine.atomic_write = write_then_die
train.main(sys.argv[3:])
"""


@pytest.mark.parametrize("target, resumed_at", [
    ("", None),                           # killed from outside once the log holds step 3
    ("ckpt-0000004.safetensors", 2),      # mid-checkpoint: the weights' temp file written, not renamed
    ("best-0000003.json", 2),             # the weights of best-3 renamed, its JSON not: best-3 is incomplete
    ("ckpt-0000006.safetensors", 4),      # best-6 complete, ckpt-6 not: the resume must go back to best-3
])
def test_sigkill_then_resume_gives_the_same_losses(tiny, baseline, tmp_path, target, resumed_at):
    full, full_ckpt, full_best = baseline
    out, driver = str(tmp_path / "run"), tmp_path / "driver.py"
    driver.write_text(DRIVER)
    p = subprocess.Popen([sys.executable, str(driver), REPO, target, *args(tiny, out)], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, t0 = os.path.join(out, "vq", "log.jsonl"), time.time()
    while not target and p.poll() is None and time.time() - t0 < 120:
        if os.path.exists(log) and open(log).read().count("\n") >= 3:
            p.send_signal(signal.SIGKILL)
        time.sleep(0.002)
    assert p.wait(120) == -signal.SIGKILL
    vq_out = os.path.join(out, "vq")
    ckpts = [engine.step_of(j) for j in engine.checkpoints(vq_out, "ckpt")]
    assert ckpts and ckpts[-1] < 8
    if resumed_at:
        assert ckpts[-1] == resumed_at and os.path.exists(os.path.join(vq_out, target + ".tmp"))
    if target == "ckpt-0000006.safetensors":  # dev improved at 6: best-6 is complete, yet best-3 is kept until a
        # ckpt as new as best-6 is complete, for a resume from ckpt-4 goes back to the best it knew
        assert [e["step"] for e in full if "dev" in e] == [3, 6, 8] and full[5]["dev"]["loss"] < full[2]["dev"]["loss"]
        assert [engine.step_of(j) for j in engine.checkpoints(vq_out, "best")] == [3, 6]
    rest = train.main(args(tiny, out, "--resume"))
    assert [m["step"] for m in rest] == list(range(ckpts[-1] + 1, 9))
    assert log_of(out) == full  # every step once, bitwise equal (losses, grad norms, dev metrics)
    assert newest(out, "ckpt")["sha256"] == full_ckpt["sha256"] and newest(out, "best")["sha256"] == full_best["sha256"]
    left = sorted(os.path.basename(f) for f in glob.glob(os.path.join(vq_out, "*")))
    assert left == sorted([full_ckpt["weights"], full_ckpt["weights"][:-12] + ".json", full_best["weights"],
                           full_best["weights"][:-12] + ".json", "log.jsonl", "DONE"])  # no .tmp, orphan, stale best


# ---------------------------------------------------------------------------------------------------------------------
# NaN / inf

def inject(monkeypatch, at):
    """Make training step k's L_cp (Eq. 1) NaN (at[k] == 'loss') or its gradient inf (at[k] == 'grad')."""
    real, steps = vq.context_prediction, []

    def context_prediction(*a, **k):
        L_cp, m = real(*a, **k)
        if torch.is_grad_enabled():  # a training step, not the dev evaluation
            steps.append(len(steps) + 1)
            if at.get(steps[-1]) == "loss":
                L_cp = L_cp * float("nan")
            elif at.get(steps[-1]) == "grad":
                L_cp.register_hook(lambda g: g * float("inf"))
        return L_cp, m
    monkeypatch.setattr(vq, "context_prediction", context_prediction)


def test_nonfinite_loss_stops_naming_stage_step_term_and_keeps_the_last_good_checkpoint(tiny, baseline, tmp_path,
                                                                                        monkeypatch):
    out = str(tmp_path)
    inject(monkeypatch, {5: "loss"})
    with pytest.raises(FloatingPointError, match=r"vq step 5: loss nan, non-finite: L_cp nan, videos \[") as e:
        train.main(args(tiny, out))
    assert "L_code" not in str(e.value) and "L_commit" not in str(e.value)  # only the term that is NaN
    assert [engine.step_of(j) for j in engine.checkpoints(os.path.join(out, "vq"), "ckpt")] == [4]
    monkeypatch.undo()
    train.main(args(tiny, out, "--resume"))  # from that checkpoint: the uninterrupted run, so it was intact and good
    assert log_of(out) == baseline[0]
    inject(monkeypatch, {2: "grad"})
    with pytest.raises(FloatingPointError, match=r"vq step 2: gradient norm (nan|inf) \(loss [0-9.]+\)"):
        train.main(args(tiny, str(tmp_path / "g")))


def test_nonfinite_steps_are_skipped_and_counted_with_the_flag(tiny, baseline, tmp_path, monkeypatch):
    out = str(tmp_path)
    inject(monkeypatch, {3: "grad", 5: "loss"})
    history = train.main(args(tiny, out, "--skip_nonfinite=true"))
    assert [m.get("skipped_steps", 0) for m in history] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert log_of(out)[:2] == baseline[0][:2]
    meta = newest(out, "ckpt")
    assert meta["step"] == 8 and meta["skipped_steps"] == 2
    assert set(meta["adam_steps"].values()) == {6.0}  # 8 steps, 2 without an optimizer step
    assert all(torch.isfinite(v).all() for v in load_file(os.path.join(out, "vq", meta["weights"])).values())


# ---------------------------------------------------------------------------------------------------------------------
# bad data end to end

def test_bad_data_skipped_and_reported_or_stopping_at_the_first(tiny, tmp_path, capsys):
    root = str(tmp_path / "data")
    shutil.copytree(tiny, root)
    samples = data.load_split(root, "train")
    corrupt, empty, row = samples[1], samples[6], samples[9]
    png = sorted(glob.glob(os.path.join(corrupt.path, "*.png")))[2]
    blob = open(png, "rb").read()
    open(png, "wb").write(blob[: len(blob) // 2])  # a truncated frame
    for f in glob.glob(os.path.join(empty.path, "*.png")):
        os.remove(f)  # a video without frames
    csv = os.path.join(root, data.PHOENIX_CSV.format(split="train"))
    lines = open(csv).read().splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith(row.name + "|"))
    good = lines[i]
    lines[i] = good.rsplit("|", 1)[0]  # a row that lost its last field
    open(csv, "w").write("\n".join(lines) + "\n")

    with pytest.raises(SystemExit, match=rf"line {i + 1}: 6 fields, header has 7"):
        train.main(args(root, str(tmp_path / "a")))
    capsys.readouterr()
    train.main(args(root, str(tmp_path / "b"), "--data.skip_bad=true"))
    printed = capsys.readouterr()
    report = printed.out.split("bad sample(s) skipped:")[1]
    for name in (f"line {i + 1}", corrupt.name, empty.name):
        assert name in report and name in printed.err
    assert "unreadable image" in report and "no frames" in report
    logged = [n for m in log_of(str(tmp_path / "b")) for n in m.get("bad_samples", [])]
    assert sorted(logged) == sorted([f"line {i + 1}", corrupt.name, empty.name])  # each once, over 8 steps
    assert log_of(str(tmp_path / "b"))[-1]["step"] == 8

    lines[i] = good
    open(csv, "w").write("\n".join(lines) + "\n")
    names = [s.name for s in data.load_split(root, "train")]
    order = [names[k] for b in engine.epoch_batches(len(names), 5, 1337, 0) for _, k in b]
    first = next(n for n in order if n in (corrupt.name, empty.name))
    with pytest.raises(SystemExit, match=re.escape(png if first == corrupt.name else empty.path)):
        train.main(args(root, str(tmp_path / "c")))


# ---------------------------------------------------------------------------------------------------------------------
# a checkpoint of another configuration

TINY = ["--vq.width=4", "--vq.d=16", "--vq.M=8", "--vq_batch_size=6", "--vq_max_steps=2", "--vq_eval_every=2",
        "--vq_ckpt_every=2", "--cra.m=4", "--cra.R=2", "--cra_hidden=16", "--cra_steps=2", "--ft_batch_size=4",
        "--ft_max_steps=1", "--num_workers=0", "--threads=1", "--log_every=100"]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """vq and cra stages trained with a width-24 LLM; a width-36 LLM beside it. Two steps of VQ-Sign give one code
    for every clip, so no word: the vocabulary search is replaced by one with two words (not what is tested here)."""
    base = tmp_path_factory.mktemp("trained")
    texts = [s.text for s in data.load_split(tiny, "train")] * 3
    tiny_llm(str(base / "llm24"), texts)
    tiny_llm(str(base / "llm36"), texts, dim=36)
    argv = TINY + [f"--data.root={tiny}", f"--out_dir={base / 'out'}", f"--llm={base / 'llm24'}"]
    train.main(["--stage=vq"] + argv)
    words = [(c,) for c in range(9)] + [(0, 1), (1, 2, 3)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.cra, "search", lambda seqs, c: train.cra.CRAResult(8, [0.0], 0, words, [1] * len(words)))
        train.main(["--stage=cra"] + argv)
    return base, argv


def test_mismatched_checkpoint_names_the_setting(trained):
    base, argv = trained
    for stage, more, msg in [
        ("vq", ["--resume", "--vq.M=16"], "vq.M: checkpoint 8, now 16"),        # --resume
        ("vq", ["--resume", "--vq.d=24"], "vq.d: checkpoint 16, now 24"),
        ("cra", ["--vq.M=16", "--overwrite"], "vq.M: checkpoint 8, now 16"),   # the next stage loads vq's best
        ("ft", ["--cra_hidden=32"], "signllm.f_hidden: checkpoint 16, now 32"),  # ft loads cra's best
        ("ft", ["--vq.M=16"], "vq.M: checkpoint 8, now 16"),
        ("ft", [f"--llm={base / 'llm36'}"], "f projects to width 24 .* has width 36"),
    ]:
        with pytest.raises(SystemExit, match=msg):
            train.main([f"--stage={stage}"] + argv + more)


def test_changed_vocabulary_or_llm_width_refused(trained, tmp_path):
    """A cra stage re-run whose search gives another vocabulary is refused before it replaces vocab.txt; a finished ft
    keeps working from its own checkpoint; resuming ft on the new vocabulary is refused, naming the first word that
    differs; a checkpoint whose LLM folder now holds another width is refused."""
    base, argv = trained
    out, llm = tmp_path / "out", tmp_path / "llm"
    shutil.copytree(base / "out", out)
    shutil.copytree(base / "llm24", llm)
    argv = [a for a in argv if not a.startswith("--out_dir=")] + [f"--out_dir={out}"]
    root = next(a for a in argv if a.startswith("--data.root=")).split("=", 1)[1]
    video = data.load_split(root, "test")[0].path
    model, saved = train.load_model(str(out / "cra"))  # the copy loads as it is
    assert saved.vq.M == 8 and model.vq.codebook.shape[0] == 8
    train.main(["--stage=ft"] + argv)
    old = (out / "cra" / "vocab.txt").read_text()
    words = [(c,) for c in range(9)] + [(0, 1), (2, 1, 3)]  # as many words as before, the last one another
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.cra, "search", lambda seqs, c: train.cra.CRAResult(8, [0.0], 0, words, [1] * len(words)))
        with pytest.raises(SystemExit, match=r"cra.word_chars differs .* first at row 10: checkpoint \[1, 2, 3\], "
                                             r"now \[2, 1, 3\]"):
            train.main(["--stage=cra", "--resume"] + argv)
        assert (out / "cra" / "vocab.txt").read_text() == old  # compared first: the old vocabulary is kept
        train.main(["--stage=cra", "--overwrite"] + argv)
    assert (out / "cra" / "vocab.txt").read_text() != old  # replaced once the stage completed
    translate.main(["--ckpt", str(out / "ft"), video])  # the finished ft carries its own vocabulary
    with pytest.raises(SystemExit, match=r"cra.word_chars differs .* first at row 10: checkpoint \[1, 2, 3\], "
                                         r"now \[2, 1, 3\]"):
        train.main(["--stage=ft", "--resume"] + argv)
    # the LLM folder the checkpoint names now holds a model of another width
    for j in engine.checkpoints(str(out / "ft"), "best"):
        meta = json.load(open(j))
        meta["config"]["signllm"]["llm"] = str(llm)  # as if the folder had been moved here
        json.dump(meta, open(j, "w"))
    train.load_model(str(out / "ft"))
    shutil.rmtree(llm)
    shutil.copytree(base / "llm36", llm)
    with pytest.raises(SystemExit, match=r"f projects to width 24 .* has width 36"):
        translate.main(["--ckpt", str(out / "ft"), video])


# ---------------------------------------------------------------------------------------------------------------------
# nothing lost: --stage all, a corrupt log, a truncated checkpoint

def test_stage_all_never_deletes_a_stage_it_did_not_write(tiny, tmp_path, capsys):
    """A stage trained on its own is done: `--stage all` skips it (and says with which settings it differs) instead of
    training it again; a stage folder with checkpoints but no DONE (a killed run) is refused as a single stage would
    be, and continued with --resume."""
    out = str(tmp_path)
    train.main(args(tiny, out, "--vq_max_steps=2"))
    before = {f: engine.sha256(f) for f in glob.glob(os.path.join(out, "vq", "*-*"))}
    capsys.readouterr()
    with pytest.raises(SystemExit):  # stops at the cra stage (no LLM here): what matters is what it did to vq
        train.main(args(tiny, out, "--stage=all", "--llm=/nonexistent"))
    printed = capsys.readouterr().out
    assert "== vq: done already" in printed and "vq_max_steps: checkpoint 2, now 8" in printed
    assert {f: engine.sha256(f) for f in glob.glob(os.path.join(out, "vq", "*-*"))} == before
    os.remove(os.path.join(out, "vq", "DONE"))  # as if the vq run had been killed after its last checkpoint
    with pytest.raises(SystemExit, match="holds checkpoints: pass --resume to continue or --overwrite"):
        train.main(args(tiny, out, "--stage=all", "--llm=/nonexistent"))
    assert {f: engine.sha256(f) for f in glob.glob(os.path.join(out, "vq", "*-*"))} == before
    with pytest.raises(SystemExit, match="/nonexistent"):  # resumed vq to the end, then cra asks for the LLM
        train.main(args(tiny, out, "--stage=all", "--resume", "--llm=/nonexistent"))
    assert json.load(open(os.path.join(out, "vq", "DONE")))["vq_max_steps"] == 8
    assert [m["step"] for m in log_of(out)] == list(range(1, 9))


def test_corrupt_log_line_or_truncated_checkpoint_named(tiny, tmp_path):
    out = str(tmp_path)
    train.main(args(tiny, out, "--vq_max_steps=2"))
    log = os.path.join(out, "vq", "log.jsonl")
    lines = open(log).read().splitlines()
    open(log, "w").write(lines[0] + "\n" + lines[1].replace(":", ";", 1) + "\n")  # a line that ends but is not JSON
    with pytest.raises(SystemExit, match=r"log.jsonl line 2: not a log line"):
        train.main(args(tiny, out, "--resume", "--vq_max_steps=4"))
    best = newest(out, "best")
    path = os.path.join(out, "vq", best["weights"])
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])  # a truncated weights file
    with pytest.raises(SystemExit, match=rf"{re.escape(path)}: sha256 differs"):
        engine.read(os.path.join(out, "vq"), "best")
    open(path, "wb").write(blob[:4])  # too short for even a safetensors header, and its JSON unreadable too
    open(path[:-12] + ".json", "w").write("{")
    with pytest.raises(SystemExit, match=r"best-0000002.json: unreadable checkpoint"):
        engine.read(os.path.join(out, "vq"), "best")
