"""llama.py vs transformers on the same SmolLM2 weights, in one run: prefill, decode, forward+backward, load memory.

    python bench/bench_llama.py            # CPU: SmolLM2-135M fp32
    python bench/bench_llama.py --gpu7b    # adds a 7B-shaped bf16 decode on a GPU (random weights), if one is present

Medians of --reps repetitions, ours and theirs in turn; ratios are ours / theirs in speed (higher is better for us).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm2 import smollm2  # noqa: E402
from llama import LLaMA, LLaMAConfig  # noqa: E402


def generate_ids(m, prompts, **kw):
    """LLaMA.generate on token lists (left-padded, embedded): what tests/test_llama.py's generate_tokens does."""
    dev, L = m.lm_head.weight.device, max(len(p) for p in prompts)
    tokens = torch.tensor([[0] * (L - len(p)) + list(p) for p in prompts], device=dev)  # (B, L)
    mask = torch.tensor([[False] * (L - len(p)) + [True] * len(p) for p in prompts], device=dev)
    return m.generate(m.tok_embeddings(tokens), mask, **kw)


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_pair(fa, fb, reps):
    """Medians of fa's and fb's times, the two run in turn (a, b, a, b, ...) so that load changes hit both."""
    ta, tb = [], []
    for _ in range(reps):
        ta.append(median_time(fa, 1))
        tb.append(median_time(fb, 1))
    return statistics.median(ta), statistics.median(tb)


def load_rss(path, which, tiny):
    """Peak resident memory a fresh process gains while loading the model (our loader or HF's).

    The same loader first loads a tiny LLaMA (`tiny`), so that one-time costs (libraries mapped, code paths
    initialised: ~145 MiB here) are not counted as loading. Then the kernel's peak-RSS mark is reset (writing 5 to
    /proc/self/clear_refs resets VmHWM), so VmHWM after the load counts the loading alone. (ru_maxrss cannot be
    reset, and under transformers 5.x the imports alone peak above the loaded model: it showed a growth of 0.)"""
    code = f"""
import sys, torch
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from llama import LLaMA
from transformers import AutoModelForCausalLM
def status(key):
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key + ":")))
def load(p):
    if {which!r} == "ours":
        m = LLaMA.from_pretrained(p)
    else:
        m = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    touched = sum(float(q.sum()) for q in m.parameters())  # fault in every page (a lazily mapped file is not loaded)
    return m
warm = load({tiny!r})
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
m = load({path!r})
print(base, status("VmHWM"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return (int(out[-1]) - int(out[-2])) * 1024  # /proc/self/status counts KiB


def weight_pass(model):
    """Read every weight once (a sum per matrix): the memory traffic a decoding step cannot avoid (tied embeddings
    read once). 1 / its time estimates the decode ceiling of an fp32 implementation on this machine (an estimate: a
    sum is one way to read memory, not necessarily the fastest)."""
    mats = [p for p in model.parameters() if p.dim() == 2]

    def run():
        for w in mats:
            w.sum()
    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gpu7b", action="store_true")
    args = p.parse_args()
    import transformers
    path = smollm2()
    torch.manual_seed(0)
    ours = LLaMA.from_pretrained(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    V = ours.cfg.vocab_size
    print(f"SmolLM2-135M fp32, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.reps}")
    rows = []

    prompt = torch.randint(100, V, (1, args.prompt_len))
    with torch.no_grad():
        t_o, t_h = median_pair(lambda: ours(prompt, last_only=True), lambda: hf(input_ids=prompt, logits_to_keep=1),
                               args.reps)
    rows.append(("prefill tok/s (B=1, T=%d)" % args.prompt_len, args.prompt_len / t_o, args.prompt_len / t_h))

    n = args.new_tokens
    short = prompt[:, :16]
    a = generate_ids(ours, [short[0].tolist()], max_new_tokens=n, eos_id=-1)[0]
    b = hf.generate(short, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, 16:].tolist()
    same = sum(x == y for x, y in zip(a, b))
    t_o, t_h = median_pair(lambda: generate_ids(ours, [short[0].tolist()], max_new_tokens=n, eos_id=-1),
                           lambda: hf.generate(short, max_new_tokens=n, min_new_tokens=n, do_sample=False), args.reps)
    rows.append((f"decode tok/s (B=1, {n} new, incl. 16-token prefill)", n / t_o, n / t_h))
    with torch.no_grad():
        t_floor = median_time(weight_pass(ours), max(5, args.reps))
    floor_rate = 1 / t_floor

    embeds = torch.randn(16, 48, ours.cfg.dim) * 0.05
    w = torch.randn(16, 48, V) / V

    def fb(model, is_hf):
        e = embeds.clone().requires_grad_()
        logits = model(inputs_embeds=e).logits if is_hf else model(embeds=e)
        (logits * w).sum().backward()
        return e.grad

    with torch.no_grad():
        t_o, t_h = median_pair(lambda: ours(embeds=embeds), lambda: hf(inputs_embeds=embeds), args.reps)
    rows.append(("forward s (B=16, T=48, embeds in) [time: lower is better]", t_o, t_h))
    t_o, t_h = median_pair(lambda: fb(ours, False), lambda: fb(hf, True), args.reps)
    rows.append(("forward+backward s (B=16, T=48, grads to inputs) [time]", t_o, t_h))

    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    with tempfile.TemporaryDirectory() as tiny:
        cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
        transformers.LlamaForCausalLM(cfg).save_pretrained(tiny)
        rss_o, rss_h = load_rss(path, "ours", tiny), load_rss(path, "hf", tiny)
    print(f"load: peak RSS growth ours {rss_o / 2**20:.0f} MiB, transformers {rss_h / 2**20:.0f} MiB, "
          f"weights {weight_bytes / 2**20:.0f} MiB")
    if rss_o > 0 and rss_h > 0:
        rows.append(("load: peak RSS / weight bytes [lower is better]", rss_o / weight_bytes, rss_h / weight_bytes))

    print(f"{'measure':60s} {'ours':>10s} {'transformers':>13s} {'ours vs theirs':>15s}")
    for name, o, h in rows:
        speedup = (h / o) if ("[" in name) else (o / h)  # both > 0: each is a measured time, rate or ratio
        print(f"{name:60s} {o:10.3f} {h:13.3f} {speedup:14.2f}x")
    print(f"greedy decode: {same}/{n} tokens identical between ours and transformers")
    print(f"decode ceiling (estimate): reading every weight once takes {t_floor * 1e3:.1f} ms = {floor_rate:.1f} "
          "tok/s; "
          f"decode reaches {rows[1][1] / floor_rate:.0%} of it (ours) and {rows[1][2] / floor_rate:.0%} (transformers)")
    print(f"weights: {weight_bytes / 2**20:.0f} MiB")


    if args.gpu7b:
        if not torch.cuda.is_available():
            print("GPU part did not run: no CUDA device on this machine")
            return
        cfg = LLaMAConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden_dim=11008, vocab_size=32000,
                          tie_embeddings=False)
        with torch.device("cuda"):
            m = LLaMA(cfg).to(torch.bfloat16).eval().requires_grad_(False)
        nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
        generate_ids(m, [[1] * 16], max_new_tokens=8, eos_id=-1)
        torch.cuda.synchronize()
        t = median_time(lambda: (generate_ids(m, [[1] * 16], max_new_tokens=n, eos_id=-1), torch.cuda.synchronize()),
                        args.reps)
        bw = 3.35e12 if "H100" in torch.cuda.get_device_name() else float("nan")
        print(f"7B-shaped bf16 decode on {torch.cuda.get_device_name()}: {n / t:.1f} tok/s; the bandwidth floor "
              f"({nbytes / 1e9:.1f} GB of weights per token at {bw / 1e12:.2f} TB/s) allows {bw / nbytes:.1f} tok/s")
    else:
        print("GPU part did not run (pass --gpu7b on a machine with a GPU)")


if __name__ == "__main__":
    main()
