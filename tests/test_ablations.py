"""The variants of bench/ablations.py (the paper's Tables 3-5 and ours) piece by piece; tests/test_report.py runs
each as a report row end to end. LoRA against merged float64 weights, straight-through words against the word table."""
import os
import random
import sys

import torch

import cra
from llama import LLaMA
from test_llama import generate_tokens, hf_tiny
from vq import ContextGRU

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import ablations  # noqa: E402


def test_lora_equals_merged_weights_and_trains_only_its_factors(tmp_path):
    """LoRA on wq, wk, wv, wo: with B = 0 the logits are the base model's; with B random the output equals a float64
    model whose weights are merged, W + scale B A, and so do the gradients, which reach A and B only."""
    seed = random.randrange(1 << 30)
    _, path = hf_tiny(tmp_path, seed, 6, 2, True)
    m = LLaMA.from_pretrained(path, dtype=torch.float64)
    tokens = torch.randint(0, 97, (2, 13))
    base = m(tokens)
    lora = ablations.add_lora(m, rank=8, alpha=16)
    assert len(lora.state_dict()) == 3 * 4 * 2 and all(p.requires_grad for p in lora.parameters())
    assert not {id(p) for p in lora.parameters()} & {id(p) for p in m.parameters()}  # the model's own: base only
    assert torch.equal(m(tokens), base), "B = 0: LoRA must leave the model unchanged"
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    lora.double()
    weights, factors = {}, {k: p.detach().clone().requires_grad_() for k, p in lora.named_parameters()}
    for i, layer in enumerate(m.layers):
        for name in ("wq", "wk", "wv", "wo"):
            A, B, W = factors[f"{i}.{name}.A"], factors[f"{i}.{name}.B"], getattr(layer.attn, name).base.weight
            weights[f"layers.{i}.attn.{name}.weight"] = W + 16 / 8 * B @ A  # (out, r) @ (r, in): W + scale B A
    w = torch.randn(2, 13, 97, dtype=torch.float64)
    ref = torch.func.functional_call(LLaMA.from_pretrained(path, dtype=torch.float64), weights, (tokens,))  # no LoRA
    (ref * w).sum().backward()
    for ckpt in (False, True):
        m.grad_checkpointing = ckpt
        lora.zero_grad()
        got = m(tokens)
        torch.testing.assert_close(got, ref.detach(), rtol=1e-10, atol=1e-10)
        (got * w).sum().backward()
        for k, p in lora.named_parameters():
            torch.testing.assert_close(p.grad, factors[k].grad, rtol=1e-8, atol=1e-10, msg=f"{k}, seed {seed}")
        assert all(p.grad is None for p in m.parameters())
    assert (got - base).abs().max() > 1e-3
    # the KV cache holds the adapted keys and values: cached greedy decoding == argmax of the full forward
    m.grad_checkpointing = True
    prompt = torch.randint(3, 97, (7,)).tolist()
    out, seq = generate_tokens(m, [prompt], max_new_tokens=6, eos_id=-1)[0], list(prompt)
    for _ in range(6):
        seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[len(prompt):], f"seed {seed}"


def test_straight_through_words_equal_the_word_table_and_reach_the_features():
    """ablations.occurrences: each word composed through g from its clips' z_q has the value of S^w[word] (the
    word table of the codebook), and its gradient reaches the clip features z, the first clip of each run only."""
    torch.manual_seed(int(torch.randint(1 << 30, ())))
    M, d, B, T = 7, 5, 3, 11
    vocab = [(c,) for c in range(M + 1)] + [(1, 2), (2, 3, M), (4, 1, 2)]
    tok = cra.SignTokens(vocab, [1] * len(vocab), M, d, 6, 4).double()
    g = ContextGRU(d).double()
    codebook = torch.randn(M, d, dtype=torch.float64)
    idx = torch.randint(0, M, (B, T))
    idx[0, :6] = torch.tensor([1, 2, 2, 2, 3, 3])  # runs and an s0
    idx[2, 7:] = -1  # a shorter video
    z = torch.randn(B, T, d, dtype=torch.float64, requires_grad=True)
    z_hat = codebook[idx.clamp(min=0)]
    z_q = z + (z_hat - z).detach()
    W, mask = ablations.occurrences(tok, idx, z_q, g)
    S_w = tok.word_table(codebook, g)
    for b in range(B):
        ids = tok.sentence(idx[b][idx[b] >= 0].tolist())
        assert mask[b].sum() == len(ids)
        torch.testing.assert_close(W[b, :len(ids)], S_w[ids], rtol=1e-12, atol=1e-12)
    W[mask].sum().backward()
    grad = z.grad.abs().sum(-1)  # (B, T)
    assert grad[0, 0] > 0 and grad[0, 1] > 0 and grad[0, 2] == 0 and grad[0, 3] == 0  # a run's first clip only
    assert (grad[2, 7:] == 0).all()
