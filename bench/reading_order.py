"""The paper's path through the code in reading order, with line counts: the table README.md's "How to read it" shows.

    python bench/reading_order.py          # the markdown table, the path's total and the whole core's

Each entry is file:name (a function, class or method, from the source's own line numbers) or a file whole. What is
not listed is engineering, data formats or diagnostics: a reader of the method may skip it.
"""
import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (file, names in the order to read them, what the paper says there)
PATH = [
    ("data.py", ["CLIP_LEN", "num_clips", "padded_length"], "Sec. 4.1: 13-frame clips, stride 4"),
    ("vq.py", ["ResNet18", "VisualEncoder"], "Sec. 4.1: E_v, ResNet18 + two Conv3Ds"),
    ("kernels/nearest_code.py", ["*"], "Sec. 3.2: the nearest code, reference and kernel"),
    ("kernels/common.py", ["tile_dot"], "the tile loop both kernels share"),
    ("vq.py", ["ContextGRU", "context_prediction", "VQConfig", "VQSign"], "Sec. 3.2: g, Eq. 1, Eq. 2"),
    ("cra.py", ["CRAConfig", "runs", "repeat_alpha", "preprocess"], "Sec. 3.3: repeats and s0"),
    ("cra.py", ["_merge_pair", "bpe_candidates"], "Sec. 3.3: candidate words (VOLT's BPE)"),
    ("cra.py", ["_lse", "sinkhorn", "transport", "CRAResult", "search"], "Sec. 3.3: Eq. 3-5, the vocabulary search"),
    ("cra.py", ["build_trie", "longest_match", "median_sigmas", "compose", "SignTokens"],
     "Sec. 3.3: words, S^w through g, f, Eq. 6"),
    ("kernels/mmd.py", ["*"], "Eq. 6: the RBF-kernel MMD, reference and kernels"),
    ("llama.py", ["RMSNorm", "apply_rope", "KVCache", "Attention", "MLP", "Block", "LLaMA.forward",
                  "LLaMA.generate"], "Sec. 3.1: the frozen LLaMA"),
    ("signllm.py", ["*"], "Sec. 3.1, 3.4: the model, L_ft, translation"),
    ("train.py", ["TrainConfig", "PRESETS", "Schedule", "cosine_lr", "fit"], "Sec. 4.1: settings, the loop"),
    ("train.py", ["stage_vq", "stage_cra", "stage_ft", "finetune", "stage_eval", "stage_all"],
     "Sec. 3.4: the recipe"),
    ("metrics.py", ["bleu", "rouge_l"], "Sec. 4.2: BLEU, ROUGE-L"),
]


def spans(path):
    """{name: (first line, last line)} of a file's top-level definitions, its classes' methods (Class.method) and
    its top-level assignments (NAME); "*": the whole file."""
    src = open(os.path.join(REPO, path)).read()
    out = {"*": (1, len(src.splitlines()))}
    for node in ast.parse(src).body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = (first, node.end_lineno)
            for sub in node.body if isinstance(node, ast.ClassDef) else []:
                if isinstance(sub, ast.FunctionDef):
                    out[f"{node.name}.{sub.name}"] = (sub.lineno, sub.end_lineno)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for name in [t] + list(getattr(t, "elts", [])):
                    if isinstance(name, ast.Name):
                        out[name.id] = (node.lineno, node.end_lineno)
    return out


def core_files():
    skip = {"bench", "tests", ".git", ".cache", "data", "out"}
    for d, dirs, names in os.walk(REPO):
        dirs[:] = [x for x in dirs if x not in skip and not x.startswith(".")]
        yield from (os.path.relpath(os.path.join(d, n), REPO) for n in names if n.endswith(".py"))


def main():
    rows, total = [], 0
    for path, names, what in PATH:
        s = spans(path)
        missing = [n for n in names if n not in s]
        if missing:
            sys.exit(f"{path}: no {missing} (bench/reading_order.py's PATH is out of date)")
        n = sum(s[x][1] - s[x][0] + 1 for x in names)
        total += n
        where = ", ".join(f"{x} {s[x][0]}-{s[x][1]}" if x != "*" else "all" for x in names)
        rows.append(f"| `{path}` | {where} | {n} | {what} |")
    core = sum(len(open(os.path.join(REPO, f)).read().splitlines()) for f in core_files())
    print("| file | read (lines) | lines | the paper |\n| --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\nThe paper's path: {total} lines of the core's {core} (non-test, non-bench .py).")
    return total, core


if __name__ == "__main__":
    main()
