"""The paper's ablations (Tables 3-5) on the synthetic benchmark, in one command: every row trained and scored over
one or more seeds, beside two rows that see no video and the oracle rows that show the ceiling of the tokenization,
and a markdown table written to out/report/report.md.

    python bench/report.py --threads=1                  # every row, seed 1337, the demo's budget
    python bench/report.py --seeds=1337,1 --rows=signllm,encoder_only      # some rows, two seeds
    python bench/report.py --vq_from=out/vq             # reuse a finished VQ-Sign pre-training (same settings, seed)

Any train.py --key=value applies to every row (the demo's preset and budget unless given; greedy decoding). A row is
its own train.py run in out/report/seed<S>/<row>/ with the flags below and its variant of SignLLM (bench/ablations.py:
a model class, and stage functions where it trains otherwise); a stage it shares is a symlink to the row that ran it (one VQ-Sign pre-training and one vocabulary search per seed). A stage whose folder holds DONE is not run
again, so an interrupted report continues where it stopped. Table cells are the mean (± sample standard deviation)
over the seeds; blind rows and content recall as in bench/seeds.py; wall times are of the stages a row ran itself.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import synthetic  # noqa: E402
import train  # noqa: E402
from ablations import row_variant  # noqa: E402
from bench_tokens import token_figures  # noqa: E402
from smollm2 import smollm2  # noqa: E402
from llama import HF_KEYS, HF_LAYER_KEYS, LLaMA, LLaMAConfig  # noqa: E402
from seeds import figures  # noqa: E402

# key, row, paper's row with its Phoenix-2014T dev / test BLEU-4 (None: not in the paper), flags, shared stages
# {stage: row that runs it, or None: the row has no such stage}; "vocab": the row trains its own f and s0 on that
# row's vocabulary
ROWS = [
    ("signllm", "SignLLM", "Ours", (25.25, 23.40), [], {}),
    ("no_vq", "w/o VQ-Sign (k-means)", "Tab. 5 w/o VQ-Sign", (14.15, 13.13), ["--cra_refit=0"], {}),
    ("no_cr", "w/o codebook reconstruction", "Tab. 5 w/o Codebook Reconstruction", (19.79, 19.47),
     [], {"vq": "signllm", "vocab": "signllm"}),
    ("no_align", "w/o sign-text alignment", "Tab. 5 w/o Sign-text Alignment", (10.40, 10.63),
     ["--signllm.lambda_mmd=0"], {"vq": "signllm", "vocab": "signllm"}),
    ("encoder_only", "encoder only (z -> f -> LLM)", "Tab. 4 Encoder Only", (9.41, 8.42),
     ["--signllm.lambda_mmd=0"], {"vq": None, "cra": None}),
    ("lora", "encoder + LoRA (rank 8)", "Tab. 4 Encoder + FT", (18.18, 18.17),
     ["--signllm.lambda_mmd=0"], {"vq": None, "cra": None}),
    ("no_llm", "w/o LLM (small transformer)", "Tab. 3 w/o LLM", (11.95, 10.36),  # its decoder is greedy only
     ["--eval_beams=1"], {"vq": "signllm", "cra": "signllm"}),
    ("random_llm", "random {layers}-layer LLaMA", "Tab. 3 w/ T5 (a smaller LLM)", (22.90, 22.51),
     ["--llm={out}/random-llm"], {"vq": "signllm", "vocab": "signllm"}),
    ("oracle_prims", "oracle: the generator's primitives as characters", "-", None,
     ["--cra_refit=0"], {"vq": "signllm"}),
    ("oracle_glosses", "oracle: the generator's glosses as characters", "-", None,
     ["--cra_refit=0"], {"vq": "signllm"}),
    ("straight_through", "straight-through words (ours)", "-", None, [], {"vq": "signllm", "vocab": "signllm"}),
]
ORDER = ["signllm", "encoder_only", "lora", "no_vq", "no_cr", "no_align", "no_llm", "random_llm", "oracle_prims",
         "oracle_glosses", "straight_through"]  # dependencies first
DEFAULT_ROWS = ORDER[:-1]  # straight-through words: only when asked for
DEFAULTS = ["--eval_beams=1"]


def random_llm(src, dst, n_layers, seed=0):
    """A LLaMA folder with src's config and tokenizer but n_layers layers and random weights: an LLM without
    knowledge (Table 3 swaps in a smaller pretrained LLM, T5; none is at hand offline, so ours is smaller and
    untrained, two changes at once)."""
    if os.path.exists(os.path.join(dst, "model.safetensors")):
        return
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        c = json.load(f)
    c["num_hidden_layers"] = n_layers
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    for name in ("tokenizer.json", "tokenizer.model"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), dst)
    cfg = LLaMAConfig.from_hf(dst)
    torch.manual_seed(seed)
    m = LLaMA(cfg)
    for name, p in m.named_parameters():  # Hugging Face's LLaMA init: N(0, 0.02), norms at 1. torch's default
        if not name.endswith("norm.weight"):  # N(0, 1) embedding, tied to the head, gives logits of std ~24
            torch.nn.init.normal_(p, std=c.get("initializer_range", 0.02))  # and an L_sim of ~500
    names = {o: h for h, o in HF_KEYS.items()}  # ours -> Hugging Face names, the inverse of the loader's map
    names.update({f"layers.{i}.{o}": f"model.layers.{i}.{h}" for i in range(n_layers)
                  for h, o in HF_LAYER_KEYS.items()})
    tied = cfg.tie_embeddings  # the output layer is the embedding: stored once
    sd = {names[k]: v.contiguous() for k, v in m.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(sd, os.path.join(dst, "model.safetensors.tmp"))
    os.replace(os.path.join(dst, "model.safetensors.tmp"), os.path.join(dst, "model.safetensors"))


def run_row(key, flags, share, common, out, times, root):
    """The stages of one row that it does not share; DONE marks a finished stage."""
    d, (Model, stages) = os.path.join(out, key), row_variant(key, out, root)
    os.makedirs(d, exist_ok=True)
    args = common + [a.format(out=out) for a in flags] + [f"--out_dir={d}"]
    if "vocab" in share:
        args.append(f"--cra_vocab={os.path.join(out, share['vocab'], 'cra', 'vocab.txt')}")
    for stage in ("vq", "cra", "ft", "eval"):
        src = share.get(stage, key)
        if src is None or os.path.islink(os.path.join(d, stage)):  # not in this row, or linked already (--vq_from)
            continue
        if src != key:  # a stage another row ran: link its folder
            os.symlink(os.path.relpath(os.path.join(out, src, stage), d), os.path.join(d, stage))
            continue
        done = os.path.join(d, stage, "DONE")
        if os.path.exists(done):
            print(f"== {key} {stage}: done already ({done})")
            continue
        print(f"== {key} {stage}")
        t0 = time.time()
        train.main([f"--stage={stage}", "--overwrite", *args], Model=Model, stages=stages)
        times.setdefault(key, {})[stage] = time.time() - t0
        if not os.path.exists(done):  # train.py marks vq/cra/ft done itself; eval here
            open(done, "w").close()
        with open(os.path.join(out, "times.json"), "w") as f:
            json.dump(times, f, indent=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/report")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated, from {', '.join(ORDER)}")
    p.add_argument("--seeds", default="1337", help="comma-separated training seeds (the data set is the same)")
    p.add_argument("--vq_from", default="", help="a finished out/vq to share instead of pre-training VQ-Sign")
    p.add_argument("--random_layers", type=int, default=4, help="layers of the random LLaMA (row random_llm)")
    args, common = p.parse_known_args(argv)
    rows = {r[0]: r for r in ROWS}
    keys = [k for k in ORDER if k in args.rows.split(",")]
    if set(args.rows.split(",")) - set(ORDER):
        raise SystemExit(f"unknown rows {sorted(set(args.rows.split(',')) - set(ORDER))}; rows: {', '.join(ORDER)}")
    common = DEFAULTS + common
    cfg = train.parse_args(common)  # the settings every row shares (type-checked here, before hours of training)
    seeds = [int(x) for x in args.seeds.split(",")]
    t_all, times = time.time(), {}
    for seed in seeds:
        out = os.path.join(args.out, f"seed{seed}")
        os.makedirs(out, exist_ok=True)
        times_path = os.path.join(out, "times.json")
        times[seed] = json.load(open(times_path)) if os.path.exists(times_path) else {}
        if args.vq_from and not os.path.islink(os.path.join(out, "signllm", "vq")):
            os.makedirs(os.path.join(out, "signllm"), exist_ok=True)
            os.symlink(os.path.abspath(args.vq_from), os.path.join(out, "signllm", "vq"))
        for key in keys:
            _, _, _, _, flags, share = rows[key]
            if key == "random_llm":
                t0 = time.time()
                random_llm(cfg.signllm.llm or smollm2(), os.path.join(out, "random-llm"), args.random_layers)
                times[seed].setdefault(key, {})["build"] = time.time() - t0
            run_row(key, flags, share, common + [f"--seed={seed}"], out, times[seed], cfg.data.root)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    return write_report(args.out, seeds, [rows[k] for k in keys], times, cfg, args, command, time.time() - t_all)


def write_report(out, seeds, rows, times, cfg, args, command, wall):
    cols = ["B1", "B2", "B3", "B4", "ROUGE-L"]
    lang = "zh" if cfg.signllm.language == "Chinese" else cfg.signllm.language
    lines = ["# Ablations on the synthetic benchmark (paper Tables 3-5)", "",
             f"`python bench/report.py {command}` (defaults added: {' '.join(DEFAULTS)}); this run took "
             f"{wall / 60:.1f} min wall clock; seeds {', '.join(map(str, seeds))}: cells are mean ± sd over them. "
             "content: the share of the references' content glosses said in the translation. min: the stages a "
             "row ran itself (a shared stage counts in the row that ran it).", "",
             "| row | paper's row | " + " | ".join(f"{s} {c}" for s in ("dev", "test") for c in cols)
             + " | test content | min | paper B4 dev / test (Phoenix-2014T) |",
             "|" + " --- |" * (2 * len(cols) + 5)]
    cell = lambda xs: "n/a" if None in xs else f"{statistics.mean(xs):.2f}" + (  # noqa: E731
        f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")
    blind, tokens = {}, []
    for key, name, paper, pb, flags, share in rows:
        per = [figures(os.path.join(out, f"seed{s}", key), cfg.data.root, lang, s) for s in seeds]
        mins = statistics.mean(sum(times[s].get(key, {}).values()) for s in seeds) / 60
        name = name.format(layers=args.random_layers)
        lines.append(f"| {name} | {paper} | " + " | ".join(cell([r["model"][s][c] for r in per])
                                                        for s in ("dev", "test") for c in cols)
                     + f" | {cell([r['model']['test']['content'] for r in per])} | {mins:.1f} | "
                     + (f"{pb[0]:.2f} / {pb[1]:.2f} |" if pb else "- |"))
        if key == "signllm" or not blind:
            blind.update({row if row.startswith("random") else f"{row} ({name})": [r[row] for r in per]
                          for row in ("random train text", "other video's frames")})
        if share.get("cra", key) is not None and os.path.isfile(os.path.join(cfg.data.root, synthetic.GROUND_TRUTH)):
            row_out = os.path.join(out, f"seed{seeds[0]}")
            model, saved = train.load_model(os.path.join(row_out, key, "ft"), Model=row_variant(key, row_out,
                                                                                                cfg.data.root)[0])
            tokens.append((name, token_figures(model, saved.data, "dev")))
    for row, per in blind.items():  # no video: a random training sentence; the model fed another video's frames
        lines.append(f"| blind: {row} | - | " + " | ".join(cell([r[s][c] for r in per]) for s in ("dev", "test")
                                                          for c in cols)
                     + f" | {cell([r['test']['content'] for r in per])} | - | - |")
    lines += ["", "Paper numbers are Phoenix-2014T's (real data, LLaMA-7B), for the ordering only: ours are the "
              "synthetic sign language.", ""]
    if tokens:
        lines += [f"## What the tokens learned (dev split, seed {seeds[0]}, against the generator's ground truth)", "",
                  "`bench/bench_tokens.py`'s figures for each row's fine-tuned tokenizer: purity / NMI of characters "
                  "vs the primitive at each clip's centre and of words vs the gloss at each word's centre, and the "
                  "vocabulary the search chose vs the true lexicon.", "",
                  "| row | chars vs primitives purity | NMI | words vs glosses purity | NMI | word spans inside one "
                  "gloss | words per gloss | vocabulary (words + chars) | true lexicon |", "|" + " --- |" * 9]
        for name, f in tokens:
            lines.append(f"| {name} | {f['char_purity']:.3f} | {f['char_nmi']:.3f} | {f['word_purity']:.3f} | "
                         f"{f['word_nmi']:.3f} | {f['inside']:.2%} | {f['word_tokens'] / f['glosses']:.2f} | "
                         f"{f['vocab_words']} + {f['vocab_chars']} | {f['lexicon']} glosses |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
