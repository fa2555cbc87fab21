"""The paper's ablations (Tables 3-5) on the synthetic benchmark, in one command: every row trained and scored,
sharing the stages that rows share, and a markdown table written to out/report/report.md.

    python bench/report.py --threads=1                  # every row, ~1 h on a 2-core CPU (our estimate)
    python bench/report.py --threads=1 --vq_from=out/vq # reuse a finished VQ-Sign pre-training (same settings)
    python bench/report.py --rows=signllm,no_llm        # some rows only (a row needs the rows it shares with)

Any train.py --key=value applies to every row. Each row gets ft_max_steps=150 and ft_eval_every=75 unless given:
the demo's 400 steps for seven rows would take ~2 h. A row is its own train.py run in out/report/<row>/ with the
flags below; a stage it shares is a symlink to the row that ran it (one VQ-Sign pre-training, one vocabulary search
for the rows on VQ-Sign's characters). A stage whose folder holds DONE is not run again, so an interrupted report
continues where it stopped. Wall times are of the stages a row ran itself. Greedy decoding for every row.
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import signllm  # noqa: E402
import train  # noqa: E402
from bench_tokens import token_figures  # noqa: E402
from llama import HF_KEYS, HF_LAYER_KEYS, LLaMA, LLaMAConfig, smollm2  # noqa: E402

# key, row, paper's row with its Phoenix-2014T dev / test BLEU-4, flags, shared stages {stage: row that runs it, or
# None: the row has no such stage}; "vocab": the row trains its own f and s0 on that row's vocabulary
ROWS = [
    ("signllm", "SignLLM", "Ours", (25.25, 23.40), [], {}),
    ("no_vq", "w/o VQ-Sign (k-means)", "Tab. 5 w/o VQ-Sign", (14.15, 13.13),
     ["--vq.quantizer=kmeans", "--kmeans_encoder={out}/encoder_only/ft"], {}),
    ("no_cr", "w/o codebook reconstruction", "Tab. 5 w/o Codebook Reconstruction", (19.79, 19.47),
     ["--signllm.tokens=chars"], {"vq": "signllm", "vocab": "signllm"}),
    ("no_align", "w/o sign-text alignment", "Tab. 5 w/o Sign-text Alignment", (10.40, 10.63),
     ["--signllm.lambda_mmd=0"], {"vq": "signllm", "vocab": "signllm"}),
    ("encoder_only", "encoder only (z -> f -> LLM)", "Tab. 4 Encoder Only", (9.41, 8.42),
     ["--signllm.tokens=features", "--signllm.lambda_mmd=0"], {"vq": None, "cra": None}),
    ("no_llm", "w/o LLM (small transformer)", "Tab. 3 w/o LLM", (11.95, 10.36),
     ["--signllm.decoder=transformer"], {"vq": "signllm", "cra": "signllm"}),
    ("random_llm", "random {layers}-layer LLaMA", "Tab. 3 w/ T5 (a smaller LLM)", (22.90, 22.51),
     ["--llm={out}/random-llm"], {"vq": "signllm", "vocab": "signllm"}),
]
ORDER = ["signllm", "encoder_only", "no_vq", "no_cr", "no_align", "no_llm", "random_llm"]  # dependencies first
DEFAULTS = ["--ft_max_steps=150", "--ft_eval_every=75", "--eval_beams=1"]


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


def run_row(key, flags, share, common, out, times):
    """The stages of one row that it does not share; DONE marks a finished stage."""
    d = os.path.join(out, key)
    os.makedirs(d, exist_ok=True)
    args = common + [a.format(out=out) for a in flags] + [f"--out_dir={d}"]
    if "vocab" in share:
        args.append(f"--cra_vocab={os.path.join(out, share['vocab'], 'cra', 'vocab.txt')}")
    for stage in ("vq", "cra", "ft", "eval"):
        src = share.get(stage, key)
        if src is None or os.path.islink(os.path.join(d, stage)):  # not in this row, or linked already (--vq_from)
            continue
        if src != key:  # a stage another row ran: link its folder
            link = os.path.join(d, stage)
            if not os.path.islink(link):
                os.symlink(os.path.relpath(os.path.join(out, src, stage), d), link)
            continue
        done = os.path.join(d, stage, "DONE")
        if os.path.exists(done):
            print(f"== {key} {stage}: done already ({done})")
            continue
        print(f"== {key} {stage}")
        t0 = time.time()
        train.main([f"--stage={stage}", "--overwrite", *args])
        times.setdefault(key, {})[stage] = time.time() - t0
        if not os.path.exists(done):  # train.py marks vq/cra/ft done itself; eval here
            open(done, "w").close()
        with open(os.path.join(out, "times.json"), "w") as f:
            json.dump(times, f, indent=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/report")
    p.add_argument("--rows", default=",".join(ORDER), help=f"comma-separated, from {', '.join(ORDER)}")
    p.add_argument("--vq_from", default="", help="a finished out/vq to share instead of pre-training VQ-Sign")
    p.add_argument("--random_layers", type=int, default=4, help="layers of the random LLaMA (row random_llm)")
    args, common = p.parse_known_args(argv)
    out, rows = args.out, {r[0]: r for r in ROWS}
    keys = [k for k in ORDER if k in args.rows.split(",")]
    if set(args.rows.split(",")) - set(ORDER):
        raise SystemExit(f"unknown rows {sorted(set(args.rows.split(',')) - set(ORDER))}; rows: {', '.join(ORDER)}")
    common = DEFAULTS + common
    cfg = train.parse_args(common)  # the settings every row shares (type-checked here, before hours of training)
    os.makedirs(out, exist_ok=True)
    times_path = os.path.join(out, "times.json")
    times = json.load(open(times_path)) if os.path.exists(times_path) else {}
    if args.vq_from and not os.path.islink(os.path.join(out, "signllm", "vq")):
        os.makedirs(os.path.join(out, "signllm"), exist_ok=True)
        os.symlink(os.path.abspath(args.vq_from), os.path.join(out, "signllm", "vq"))
    t_all = time.time()
    for key in keys:
        _, _, _, _, flags, share = rows[key]
        if key == "random_llm":
            t0 = time.time()
            random_llm(cfg.signllm.llm or smollm2(), os.path.join(out, "random-llm"), args.random_layers)
            times.setdefault(key, {})["build"] = time.time() - t0
        run_row(key, flags, share, common, out, times)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    return write_report(out, [rows[k] for k in keys], times, cfg, args, command, time.time() - t_all)


def write_report(out, rows, times, cfg, args, command, wall):
    cols = ["B1", "B2", "B3", "B4", "ROUGE-L"]
    lines = ["# Ablations on the synthetic benchmark (paper Tables 3-5)", "",
             f"`python bench/report.py {command}` (defaults added: {' '.join(DEFAULTS)}); this run took "
             f"{wall / 60:.1f} min wall clock. min: the stages a row ran itself (a shared stage counts in the row "
             "that ran it).", "",
             "| row | paper's row | " + " | ".join(f"{s} {c}" for s in ("dev", "test") for c in cols)
             + " | min | paper B4 dev / test (Phoenix-2014T) |",
             "|" + " --- |" * (2 * len(cols) + 4)]
    figures = []
    for key, name, paper, (pd, pt), flags, share in rows:
        d = os.path.join(out, key)
        with open(os.path.join(d, "eval", "metrics.json")) as f:
            res = json.load(f)
        mins = sum(times.get(key, {}).values()) / 60
        lines.append(f"| {name.format(layers=args.random_layers)} | {paper} | "
                     + " | ".join(f"{res[s][c]:.2f}" for s in ("dev", "test") for c in cols)
                     + f" | {mins:.1f} | {pd:.2f} / {pt:.2f} |")
        if share.get("cra", key) is not None and os.path.isfile(os.path.join(cfg.data.root, data.GROUND_TRUTH)):
            model, saved = signllm.from_checkpoint(os.path.join(d, "ft"))
            figures.append((name.format(layers=args.random_layers), token_figures(
                model, data.DataConfig(**saved["data"]), "dev")))
    lines += ["", "Paper numbers are Phoenix-2014T's (real data, LLaMA-7B), for the ordering only: ours are the "
              "synthetic sign language with the rows' short budget.", ""]
    if figures:
        lines += ["## What the tokens learned (dev split, against the generator's ground truth)", "",
                  "`bench/bench_tokens.py`'s figures for each row's fine-tuned tokenizer: purity / NMI of characters "
                  "vs the primitive at each clip's centre and of words vs the gloss at each word's centre, and the "
                  "vocabulary the search chose vs the true lexicon (words: the segmentation by the row's vocabulary, "
                  "also for the rows that do not read words).", "",
                  "| row | chars vs primitives purity | NMI | words vs glosses purity | NMI | word spans inside one "
                  "gloss | words per gloss | vocabulary (words + chars) | true lexicon |", "|" + " --- |" * 9]
        for name, f in figures:
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
