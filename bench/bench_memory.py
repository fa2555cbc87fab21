"""Peak memory of one fine-tuning step (Sec. 3.4: L_ft = L_VQ + 0.5 L_MMD + 1.0 L_sim, the LLM frozen, gradients
through it to the sign sentence W), at batch 1, 4 and 8, with and without activation checkpointing of the LLM blocks
(--checkpoint_llm in train.py). Random weights throughout: memory does not depend on their values.

    python bench/bench_memory.py          # a GPU: the 7B-shaped LLaMA; no GPU: 7B-width layers on the CPU + estimate

On a GPU (did not run here: no GPU): a LLaMA-7B-shaped model (dim 4096, 32 layers, 32 heads, SwiGLU 11008, vocab
32000) in bf16, built on the meta device and materialized on the GPU, VQ-Sign at the paper's size (224 x 224 frames,
ResNet18 width 64, d = 1024, M = 256), bf16 autocast as train.py, peak by torch.cuda.max_memory_allocated.

On a CPU: the same step with 2 and 4 layers of 7B width (everything else 7B-shaped, bf16 weights, bf16 autocast), each
configuration in a fresh process, peak resident memory by /proc/self/status VmHWM (reset through
/proc/self/clear_refs after the model is built). The difference between 2 and 4 layers is two layers' activations;
VQ-Sign at the paper's size is measured alone at batch 1 (it is linear in the videos). Then an ESTIMATE for 7B on a
GPU: 7B weights + the 2-layer step + 30 more layers x tokens x a layer's bytes per token (measured at batch 8; with
checkpointing, its bf16 input) + B x (VQ-Sign per video). An estimate, not a measurement: CPU RSS counts pages the
allocator touched, not the tensors a CUDA allocator would hold, and the peaks of the parts are assumed to add.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cra  # noqa: E402
from llama import LLaMA, LLaMAConfig  # noqa: E402
from signllm import SignLLM, SignLLMConfig  # noqa: E402
from vq import VQConfig, VQSign  # noqa: E402

LLAMA_7B = dict(dim=4096, n_heads=32, n_kv_heads=32, hidden_dim=11008, vocab_size=32000, tie_embeddings=False)
VQ_PAPER = dict(width=64, d=1024, M=256)  # Sec. 4.1, with 224 x 224 frames
VQ_SMALL = dict(width=16, d=128, M=64)  # the synthetic preset's, with 32 x 32 frames
CLIPS = 28  # clips per video (our choice): 13 + 4 * 27 = 121 frames, ~5 s at 25 fps
TEXT_WORDS = 20  # words of each target translation (our choice)


class WordIds:
    """A stand-in for the tokenizer of a random-weight LLM: one id per whitespace word. Only the token counts
    matter for memory; the prompt is train.py's default (SignLLMConfig.prompt) without a chat template."""
    eos_id = 2

    def __init__(self, vocab):
        self.vocab = vocab

    def chat(self, user):
        return user

    def encode(self, text, bos=False):
        return [3 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in text.split()]


def random_llm(n_layers, device):
    """A 7B-shaped LLaMA with n_layers blocks: built on the meta device (no memory), cast to bf16 there, then
    materialized on `device` and filled in place, so no fp32 copy ever exists."""
    cfg = LLaMAConfig(n_layers=n_layers, **LLAMA_7B)
    with torch.device("meta"):
        llm = LLaMA(cfg).to(torch.bfloat16)
    llm = llm.to_empty(device=device)
    with torch.no_grad():
        for name, p in llm.named_parameters():
            p.fill_(1.0) if "norm" in name else p.normal_(0, 0.02)
    return llm.eval().requires_grad_(False)


def ft_step(args):
    """One process, one configuration: build, reset the peak, one step (forward, backward, Adam), report."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    shape = [(0, 0, 0)]
    size = 224 if args.vq == "paper" else 32
    vq = VQSign(VQConfig(**(VQ_PAPER if args.vq == "paper" else VQ_SMALL))).to(device)
    B, N = args.batch, 13 + 4 * (CLIPS - 1)
    batch = {"frames": torch.randn(B, N, 3, size, size, device=device),
             "clip_mask": torch.ones(B, CLIPS, dtype=torch.bool, device=device),
             "text": [" ".join(f"w{(b * 7 + i) % 97}" for i in range(TEXT_WORDS)) for b in range(B)]}
    if args.layers == 0:  # VQ-Sign alone: L_VQ (Eq. 2)
        model, loss_of = vq, lambda: vq.loss(batch)[0]
    else:
        llm = random_llm(args.layers, device)
        llm.grad_checkpointing = args.ckpt
        M = vq.config.M
        vocab = [(c,) for c in range(M + 1)] + [(c, c + 1) for c in range(M - 1)]  # characters + 2-character words
        text_ids = list(range(3, 3 + 1000))
        sigmas = cra.median_sigmas(llm.tok_embeddings.weight[text_ids].float())
        tokens = cra.SignTokens(vocab, [1] * len(vocab), M, vq.config.d, llm.cfg.dim, 1024, text_ids, sigmas)
        model = SignLLM(vq, tokens.to(device), llm, WordIds(llm.cfg.vocab_size), SignLLMConfig()).to(device)
        loss_of = lambda: model(batch)[0]  # noqa: E731
        llm.layers[0].register_forward_pre_hook(lambda mod, a: shape.append(tuple(a[0].shape)))  # (B, T, dim)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        before = status("VmRSS")
    t0 = time.time()
    with torch.autocast(device.type, torch.bfloat16):  # as train.fit on a GPU; on a CPU too, to mirror it
        loss = loss_of()
    loss.backward()
    opt.step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else status("VmHWM")
    out = dict(before=before / 2**20, peak=peak / 2**20, seconds=time.time() - t0, T=shape[-1][1])
    print(json.dumps(out))


def status(key):
    """Bytes of a /proc/self/status field (VmRSS: resident now; VmHWM: the peak since the last reset)."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def run(layers, batch, ckpt, vq):
    """ft_step in a fresh process (a peak is per process); returns its report."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", f"--layers={layers}", f"--batch={batch}",
           f"--vq={vq}"] + (["--ckpt"] if ckpt else [])
    # a fixed mmap threshold: glibc then maps every block >= 64 KiB on its own and unmaps it when freed, so resident
    # memory follows the live tensors (its default threshold grows as blocks are freed, and the heap keeps them)
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--one", action="store_true", help="(internal) run one configuration in this process")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--ckpt", action="store_true")
    p.add_argument("--vq", default="paper", choices=["paper", "small"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        return ft_step(args)
    gib = 2**30 / 2**20
    print(f"one ft step (L_ft forward + backward + Adam), {CLIPS} clips = {13 + 4 * (CLIPS - 1)} frames per video, "
          f"{TEXT_WORDS}-word targets, LLaMA 7B width (dim 4096, SwiGLU 11008, 32 heads, vocab 32000), bf16")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}; 32 layers (7B), VQ-Sign at the paper's size; "
              "torch.cuda.max_memory_allocated, GiB")
        print(f"{'batch':>5s} {'T':>4s} {'weights+':>9s} {'peak':>8s} {'peak ckpt':>10s} {'fits 24 GB?':>12s}")
        for B in (1, 4, 8):
            a, c = run(32, B, False, "paper"), run(32, B, True, "paper")
            print(f"{B:5d} {a['T']:4d} {a['before'] / gib:9.2f} {a['peak'] / gib:8.2f} {c['peak'] / gib:10.2f} "
                  f"{'yes' if min(a['peak'], c['peak']) * 2**20 < 24e9 else 'no':>12s}")
        return
    print("CPU (no GPU): LLaMA of 2 and 4 layers of 7B width with the synthetic preset's VQ-Sign (32 x 32 frames); "
          "step memory = VmHWM during the step - VmRSS before it, MiB")
    print(f"{'batch':>5s} {'T':>4s} {'ckpt':>5s} {'weights 2L':>10s} {'step 2L':>8s} {'step 4L':>8s} "
          f"{'per layer':>9s} {'s (2L)':>7s}")
    per_layer, step2, T = {}, {}, {}
    for B in (1, 4, 8):
        for ckpt in (False, True):
            two, four = run(2, B, ckpt, "small"), run(4, B, ckpt, "small")
            s2, s4 = two["peak"] - two["before"], four["peak"] - four["before"]
            per_layer[B, ckpt], step2[B, ckpt], T[B] = (s4 - s2) / 2, s2, two["T"]
            print(f"{B:5d} {two['T']:4d} {'on' if ckpt else 'off':>5s} {two['before']:10.0f} {s2:8.0f} {s4:8.0f} "
                  f"{per_layer[B, ckpt]:9.1f} {two['seconds']:7.1f}")
    v = run(0, 1, False, "paper")
    vq_video = v["peak"] - v["before"]
    print(f"VQ-Sign alone at the paper's size (224 x 224, width 64, d 1024, M 256), one video: step {vq_video:.0f} MiB "
          f"({v['seconds']:.1f} s)")
    with torch.device("meta"):
        n_params = sum(t.numel() for t in LLaMA(LLaMAConfig(n_layers=32, **LLAMA_7B)).parameters())
    w = n_params * 2 / 2**20
    # a layer's activations per token, from the largest batch (at small batches the peak falls in another phase
    # of the step and more layers do not raise it); with checkpointing a layer keeps only its input, bf16
    a_tok = per_layer[8, False] / (8 * T[8])
    a_ckpt = 4096 * 2 / 2**20
    print(f"a 7B-width layer keeps {a_tok * 2**10:.0f} KiB per token without checkpointing (batch 8: "
          f"{per_layer[8, False]:.1f} MiB / {8 * T[8]} tokens), its input ({a_ckpt * 2**10:.0f} KiB per token) with it")
    print(f"\nESTIMATE (not measured) for LLaMA-7B on a GPU, GiB: weights {n_params / 1e9:.2f}B params x 2 bytes = "
          f"{w / gib:.1f} GiB + the 2-layer step + 30 more layers x tokens x the per-token figure above + batch x "
          "VQ-Sign per video (the peaks assumed to add)")
    print(f"{'batch':>5s} {'no ckpt':>8s} {'ckpt':>8s}")
    for B in (1, 4, 8):
        e = [(w + step2[B, c] + 30 * B * T[B] * (a_ckpt if c else a_tok) + B * vq_video) / gib for c in (False, True)]
        print(f"{B:5d} {e[0]:8.1f} {e[1]:8.1f}")


if __name__ == "__main__":
    main()
