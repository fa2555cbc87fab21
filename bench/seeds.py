"""The demo's recipe over seeds, beside two rows that see no video (issue 16): is a result reproducible, and does it
come from the frames?

    python bench/seeds.py                                   # seeds 1337,1,2 of `python train.py`, 2 at a time
    python bench/seeds.py --seeds=1337,1,2 --jobs=1 --out=out/seeds -- --ft_max_steps=300   # train.py settings after --

Each seed is `python train.py --seed=S --out_dir=OUT/S [settings]` on the same data set, in its own process (--jobs
at a time; each with --threads=1 when several run). A seed whose OUT/S/eval/metrics.json exists is not trained again.
Then, per seed and split: B1-B4 and ROUGE-L (train.py's eval, beam search as the preset says), the 95 % bootstrap
interval of BLEU-4 (bootstrap_bleu), content recall (below), and two blind rows:
  - "random train text": a random training translation for each video (seeded), scored as the translations;
  - "other video's frames": the model's own translation of another video of the split (a derangement of the split,
    seeded), i.e. the model fed someone else's frames.
Content recall: over the split's references, the share of each reference's content glosses (every gloss but the
template's TEMPERATURE and DEGREE) whose English word appears in the translation; the synthetic language's glosses
only (n/a for another data set). Token figures on dev (bench_tokens.token_figures): VQ-Sign's fine-tuned characters
against the generator's primitives (purity / NMI) and CRA's words against its glosses.
The table, with mean and spread (sample standard deviation) over the seeds, is printed and written to OUT/seeds.md.
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import synthetic  # noqa: E402
import metrics  # noqa: E402
import train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = {"TEMPERATURE", "DEGREE"}  # glosses every temperature sentence has: not content


def bootstrap_bleu(hyps, refs, lang, n=1000, seed=0, order=4):
    """95 % interval (lo, hi) of corpus BLEU-`order`, tokenized as score_all does: the 2.5 and 97.5 percentiles of
    its value on n resamples of the sentences, drawn with replacement (Koehn 2004; the paper reports no intervals).
    Resample i takes the sentences np.random.default_rng(seed).integers(0, S, (n, S))[i] of the S given."""
    tok = metrics._tokenizers(lang)[0]
    metrics._check(hyps, refs, order=order, n=n)
    stats = np.array([metrics._bleu_stats(h, r, order, tok) for h, r in zip(hyps, refs)])  # (S, 2 + 2 order), counted once
    idx = np.random.default_rng(seed).integers(0, len(hyps), (n, len(hyps)))  # (n, S) sentence indices
    scores = [metrics._bleu_from_stats(row.tolist()) for row in stats[idx].sum(1)]  # (n, S, 2 + 2 order) -> (n, 2 + 2 order)
    return tuple(float(v) for v in np.percentile(scores, [2.5, 97.5]))


def gloss_words(glosses):
    """{gloss: set of English words that say it} for one reference's glosses (STRONG's word depends on its weather)."""
    weather = next((g for g in glosses if g in synthetic.WEATHER), None)
    out = {}
    for g in glosses:
        if g in synthetic.TIMES or g in synthetic.REGIONS:
            out[g] = {({**synthetic.TIMES, **synthetic.REGIONS}[g]).split()[-1]}  # "in the north" -> north
        elif g in synthetic.WEATHER:  # every form of it: "it will be cloudy", "thick clouds", "clouds"
            out[g] = {w for form in synthetic.WEATHER[g] for w in form.split()} - {"it", "will", "be", "there", "the"} - {
                synthetic.WEATHER[g][1].split()[0]}
        elif g == "STRONG":
            out[g] = {synthetic.WEATHER[weather][1].split()[0]} if weather else set()
        elif g == "NOT":
            out[g] = {"no"}
        elif g not in TEMPLATE:
            out[g] = {g.lower()}  # WARM, TEN, RISE, ...: the word itself
    return out


def content_recall(hyps, glosses, content_words=None):
    """Mean over sentences of the share of content glosses whose word appears in the hypothesis. content_words: the
    language's {gloss: word} (its ground truth's), else the weather language's gloss_words; None if a gloss is not
    the language's."""
    known = content_words.keys() | {"MINUTE", "CLOCK"} if content_words else set(synthetic.GLOSSES)
    if any(g not in known for gl in glosses for g in gl):
        return None
    shares = []
    for h, gl in zip(hyps, glosses):
        words = set(re.findall(r"[a-z]+", h.lower()))
        want = {g: {content_words[g]} for g in gl if g in content_words} if content_words else gloss_words(gl)
        shares.append(sum(bool(w & words) for w in want.values()) / max(len(want), 1))
    return 100 * sum(shares) / len(shares)


def derangement(n, rng):
    """A permutation of range(n) with no fixed point (n >= 2)."""
    while True:
        p = list(range(n))
        rng.shuffle(p)
        if all(i != j for i, j in enumerate(p)):
            return p


def figures(run, root, lang, seed):
    """The table's rows for one finished run (OUT/S): {row: {split: {metric: value}}}."""
    gloss = {s: {x.name: x.gloss.split() for x in data.load_split(root, s)} for s in ("train", "dev", "test")}
    truth = os.path.join(root, synthetic.GROUND_TRUTH)
    words = synthetic.read_ground_truth(root).get("content_words") if os.path.isfile(truth) else None
    train_texts = [x.text for x in data.load_split(root, "train")]
    rows, rng = {"model": {}, "random train text": {}, "other video's frames": {}}, random.Random(seed)
    for split in ("dev", "test"):
        lines = open(os.path.join(run, "eval", f"{split}.tsv"), encoding="utf-8").read().splitlines()[1:]
        names, hyps, refs = zip(*(line.split("\t") for line in lines))
        gl = [gloss[split][n] for n in names]
        blind = {"model": list(hyps), "random train text": [rng.choice(train_texts) for _ in refs],
                 "other video's frames": [hyps[j] for j in derangement(len(hyps), rng)]}
        for row, h in blind.items():
            s = metrics.score_all(h, list(refs), lang)
            s["B4 95% CI"] = bootstrap_bleu(h, list(refs), lang, seed=seed)
            s["content"] = content_recall(h, gl, words)
            rows[row][split] = s
    return rows


def mean_spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1337,1,2")
    p.add_argument("--out", default="out/seeds")
    p.add_argument("--jobs", type=int, default=2)
    args, settings = p.parse_known_args(argv)
    settings = [s for s in settings if s != "--"]
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = train.parse_args(settings)  # type-checked here, before hours of training
    os.makedirs(args.out, exist_ok=True)
    if cfg.make_synthetic and not os.path.exists(cfg.data.root):  # once, here: the seeds' processes would race
        synthetic.make_synthetic(cfg.data.root, seed=0, size=cfg.synthetic_size, workers=os.cpu_count() or 1,
                                 kind=cfg.synthetic_kind)
    todo = [s for s in seeds if not os.path.exists(os.path.join(args.out, str(s), "eval", "metrics.json"))]
    running, t0 = [], time.time()
    while todo or running:
        while todo and len(running) < args.jobs:
            s = todo.pop(0)
            threads = ["--threads=1"] if args.jobs > 1 else []
            cmd = [sys.executable, os.path.join(REPO, "train.py"), f"--seed={s}", f"--out_dir={args.out}/{s}",
                   "--resume", *threads, *settings]
            print(f"seed {s}: {' '.join(cmd[1:])}  (log: {args.out}/{s}.log)", flush=True)
            running.append((s, subprocess.Popen(cmd, stdout=open(f"{args.out}/{s}.log", "a"),
                                                stderr=subprocess.STDOUT)))
        time.sleep(5)
        for s, proc in list(running):
            if proc.poll() is not None:
                running.remove((s, proc))
                print(f"seed {s}: exit {proc.returncode} after {(time.time() - t0) / 60:.1f} min", flush=True)
                if proc.returncode:
                    raise SystemExit(f"seed {s} failed: see {args.out}/{s}.log")
    return report(args, seeds, cfg, settings)


def report(args, seeds, cfg, settings):
    from bench_tokens import token_figures
    lang = "zh" if cfg.signllm.language == "Chinese" else cfg.signllm.language
    per = {s: figures(os.path.join(args.out, str(s)), cfg.data.root, lang, s) for s in seeds}
    toks = {}
    if os.path.isfile(os.path.join(cfg.data.root, synthetic.GROUND_TRUTH)):
        for s in seeds:
            model, saved = train.load_model(os.path.join(args.out, str(s), "ft"))
            toks[s] = token_figures(model, saved.data, "dev")
    cols = ["B1", "B2", "B3", "B4", "ROUGE-L", "content"]
    lines = [f"`python bench/seeds.py --seeds={args.seeds} -- {' '.join(settings)}`", "",
             "| row | seed | " + " | ".join(f"{s} {c}" for s in ("dev", "test") for c in cols) + " | test B4 95% CI |",
             "|" + " --- |" * (2 * len(cols) + 3)]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for row in ("model", "random train text", "other video's frames"):
        for s in seeds:
            r = per[s][row]
            lo, hi = r["test"]["B4 95% CI"]
            lines.append(f"| {row} | {s} | " + " | ".join(fmt(r[sp][c]) for sp in ("dev", "test") for c in cols)
                         + f" | [{lo:.1f}, {hi:.1f}] |")
        lines.append(f"| **{row}** | mean ± sd | " + " | ".join(
            mean_spread([per[s][row][sp][c] for s in seeds]) for sp in ("dev", "test") for c in cols) + " | |")
    if toks:
        lines += ["", "| seed | chars vs primitives purity / NMI | words vs glosses purity / NMI | words per gloss | "
                  "vocabulary (words + chars) |", "|" + " --- |" * 5]
        for s, f in toks.items():
            lines.append(f"| {s} | {f['char_purity']:.3f} / {f['char_nmi']:.3f} | {f['word_purity']:.3f} / "
                         f"{f['word_nmi']:.3f} | {f['word_tokens'] / f['glosses']:.2f} | {f['vocab_words']} + "
                         f"{f['vocab_chars']} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "seeds.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    json.dump({str(s): per[s] for s in seeds}, open(os.path.join(args.out, "seeds.json"), "w"), indent=1)
    return per


if __name__ == "__main__":
    main()
