"""Does a change keep every result bitwise? The tiny pipeline (`train.py --stage=all`) and every bench/report.py row,
run by a reference revision and by the working tree on the same data and the same tiny random LLaMA, compared file by
file: each log line (all but its wall time `dt`), each checkpoint's tensors (weights, Adam moments, RNG states) and
JSON (all but `config`, whose fields a refactor may rename), vocabularies, and eval's TSVs and metrics.

    python bench/same_results.py --ref=main           # a revision: checked out into a temporary git worktree
    python bench/same_results.py --ref=HEAD~3 --keep=/tmp/same   # keep both runs' outputs there

It takes a few minutes on 2 cores (one thread each, the two runs one after the other). Exit 0: every file equal.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run inside a checkout (cwd): the tiny pipeline, then every report row, on the data and LLM made by the reference.
DRIVER = r"""
import os, sys
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests"), os.path.join(os.getcwd(), "bench")]
import torch
import data, report, train
from test_pipeline import TINY, tiny_llm
try:
    from synthetic import make_synthetic
except ImportError:  # revisions before the generator left data.py
    from data import make_synthetic
root, llm, out = sys.argv[1:4]
if not os.path.exists(root):
    make_synthetic(root, seed=0, size="tiny", height=32, width=32)
    tiny_llm(llm, [s.text for s in data.load_split(root, "train")] * 3)
common = TINY + [f"--data.root={root}", f"--llm={llm}"]
train.main(["--stage=all", "--cra_refit=5", f"--out_dir={out}/pipeline"] + common)
torch.set_num_threads(1)
report.main([f"--out={out}/report", "--random_layers=1", *common, "--cra_steps=4", "--ft_max_steps=3",
             "--ft_eval_every=3", "--eval_beams=1", "--vq.M=40"])
"""
SKIP = {"DONE", "COMPLETE", "times.json", "report.md"}  # DONE holds the config; times and the report's minutes are wall clock


def files(top):
    out = set()
    for d, _, names in os.walk(top, followlinks=False):
        out |= {os.path.relpath(os.path.join(d, n), top) for n in names if n not in SKIP}
    return out


def same_file(a, b, rel):
    """None if equal, else a line saying how the two differ."""
    if rel.endswith(".safetensors"):
        from safetensors.torch import load_file
        import torch
        ta, tb = load_file(a), load_file(b)
        if ta.keys() != tb.keys():
            return f"tensors {sorted(ta.keys() ^ tb.keys())[:6]} in one only"
        bad = [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
        return f"{len(bad)} tensors differ, e.g. {bad[:4]}" if bad else None
    if rel.endswith("log.jsonl"):
        la, lb = ([{k: v for k, v in json.loads(x).items() if k not in ("dt", "dt_eval")} for x in open(f)]
                  for f in (a, b))
        diff = [(x.get("step"), sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k)))
                for x, y in zip(la, lb) if x != y]
        return f"{len(la)} vs {len(lb)} lines; steps differ: {diff[:3]}" if diff or len(la) != len(lb) else None
    if rel.endswith(".json") and os.path.basename(rel)[:5] in ("ckpt-", "best-"):
        ja, jb = ({k: v for k, v in json.load(open(f)).items() if k != "config"} for f in (a, b))
        return None if ja == jb else f"fields {sorted(k for k in ja.keys() | jb.keys() if ja.get(k) != jb.get(k))}"
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return None if fa.read() == fb.read() else "bytes differ"


def run(tree, root, llm, out):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # CPU tensors take the torch references, as in training
    r = subprocess.run([sys.executable, "-c", DRIVER, root, llm, out], cwd=tree, env=env, capture_output=True,
                       text=True)
    if r.returncode:
        sys.exit(f"{tree}: the run failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="main", help="the reference revision (default: main)")
    p.add_argument("--keep", default="", help="a folder for both runs' outputs, its finished reference run reused")
    args = p.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="same-results-")
    ref_tree, done = os.path.join(work, "ref-tree"), os.path.join(work, "ref", "COMPLETE")
    root, llm = os.path.join(work, "data"), os.path.join(work, "llm")
    if not os.path.exists(done):  # with --keep, a finished reference run is reused
        subprocess.run(["git", "worktree", "add", "--detach", ref_tree, args.ref], cwd=REPO, check=True)
        try:
            print(f"running the tiny pipeline and every report row at {args.ref} ...", flush=True)
            run(ref_tree, root, llm, os.path.join(work, "ref"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", ref_tree], cwd=REPO)
        open(done, "w").close()
    print("running the tiny pipeline and every report row in the working tree ...", flush=True)
    subprocess.run(["rm", "-rf", os.path.join(work, "new")])
    run(REPO, root, llm, os.path.join(work, "new"))
    a, b = os.path.join(work, "ref"), os.path.join(work, "new")
    fa, fb = files(a), files(b)
    problems = [f"only in {args.ref}: {f}" for f in sorted(fa - fb)] + [f"only in the working tree: {f}"
                                                                        for f in sorted(fb - fa)]
    for rel in sorted(fa & fb):
        if why := same_file(os.path.join(a, rel), os.path.join(b, rel), rel):
            problems.append(f"{rel}: {why}")
    print(f"compared {len(fa & fb)} files of {args.ref} and the working tree (outputs in {work})")
    print("\n".join(problems) if problems else "every file equal")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
