"""llama.py against an independent implementation (Hugging Face transformers), the real SmolLM2, and bad files."""
import json
import os
import random
import struct

import pytest
import torch

from llama import LLaMA, LLaMAConfig, Tokenizer, read_safetensors_header, smollm2

transformers = pytest.importorskip("transformers")


def hf_tiny(tmp_path, seed, n_heads, n_kv_heads, tie, dim_per_head=6, shard="30KB"):
    """A random tiny LLaMA saved by transformers itself, sharded so that the index path runs."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=n_heads * dim_per_head, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, rms_norm_eps=1e-5, rope_theta=5000.0,
        max_position_embeddings=128, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # RMSNorm weights start at 1: make them random so a wrong norm key would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    path = str(tmp_path / f"tiny{seed}")
    hf.save_pretrained(path, max_shard_size=shard, safe_serialization=True)
    return hf, path


@pytest.mark.parametrize("n_heads,n_kv_heads,tie", [(5, 5, False), (6, 2, True), (3, 1, False)])
def test_logits_match_transformers(tmp_path, n_heads, n_kv_heads, tie):
    seed = random.randrange(1 << 30)
    hf, path = hf_tiny(tmp_path, seed, n_heads, n_kv_heads, tie)
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json")), "expected a sharded checkpoint"
    ours = LLaMA.from_pretrained(path)
    tokens = torch.randint(0, 97, (3, 23))
    with torch.no_grad():
        ref = hf(input_ids=tokens).logits
    got = ours(tokens)
    assert (got - ref).abs().max() < 1e-4, f"seed {seed}"
    # embeddings in place of tokens, with gradients reaching the input while the weights stay frozen
    embeds = torch.randn(3, 19, ours.cfg.dim, dtype=torch.float32)
    e1, e2 = embeds.clone().requires_grad_(), embeds.clone().requires_grad_()
    w = torch.randn(3, 19, 97)
    (hf(inputs_embeds=e1).logits * w).sum().backward()
    (ours(embeds=e2) * w).sum().backward()
    assert (e1.grad - e2.grad).abs().max() < 1e-4, f"seed {seed}"
    assert all(p.grad is None and not p.requires_grad for p in ours.parameters())


def test_padding_and_cache_agree_with_plain_forward(tmp_path):
    seed = random.randrange(1 << 30)
    _, path = hf_tiny(tmp_path, seed, 6, 2, True)
    m = LLaMA.from_pretrained(path)
    a, b = torch.randint(0, 97, (11,)), torch.randint(0, 97, (7,))
    # left padding with a mask gives each row the logits it has alone
    toks = torch.stack([a, torch.cat([torch.zeros(4, dtype=torch.long), b])])
    mask = torch.tensor([[True] * 11, [False] * 4 + [True] * 7])
    got = m(toks, attn_mask=mask)
    assert (got[0] - m(a[None])[0]).abs().max() < 1e-5, f"seed {seed}"
    assert (got[1, 4:] - m(b[None])[0]).abs().max() < 1e-5, f"seed {seed}"


def test_activation_checkpointing_gives_the_same_input_gradients(tmp_path):
    """grad_checkpointing recomputes each block in backward (it must engage on the frozen, eval-mode LLM, as in ft):
    the gradients reaching the input embeddings are those of the plain backward, with right padding as in L_sim."""
    seed = random.randrange(1 << 30)
    _, path = hf_tiny(tmp_path, seed, 6, 2, False)
    m = LLaMA.from_pretrained(path, dtype=torch.bfloat16)  # as load_llm on a GPU: read straight into bf16, frozen
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in m.parameters()) and not m.training
    m = m.float()  # fp32 on a CPU (load_llm); the comparison below is exact either way
    embeds = torch.randn(2, 13, m.cfg.dim)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, 9:] = False
    calls = []
    m.layers[0].attn_norm.register_forward_hook(lambda *_: calls.append(1))  # the recompute stops early, past it
    grads = []
    for ckpt in (False, True):
        m.grad_checkpointing = ckpt
        e = embeds.clone().requires_grad_()
        logits = m(embeds=e, attn_mask=mask)
        (logits[mask].log_softmax(-1)[:, 5]).sum().backward()
        grads.append(e.grad)
    assert len(calls) == 3, f"block 0 ran {len(calls)} times: 1 plain + 2 with checkpointing (forward, recompute)"
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-7), f"seed {seed}"
    with torch.no_grad():  # generation (no grad): no recomputation, no checkpoint overhead
        m(embeds=embeds, attn_mask=mask)
    assert len(calls) == 4


def beam_reference(m, prompt, K, max_new_tokens, eos_id):
    """Beam search without a cache, one prompt, in plain Python: every step reruns the whole sequence."""
    beams = [(0.0, [], False)]  # (sum log p, tokens, finished)
    for _ in range(max_new_tokens):
        cands = []
        for score, seq, done in beams:
            if done:  # a finished hypothesis only extends with eos, at no cost
                cands.append((score, seq + [eos_id], True))
                continue
            logp = torch.log_softmax(m(torch.tensor([prompt + seq]))[0, -1].float(), -1).tolist()
            cands += [(score + lp, seq + [t], t == eos_id) for t, lp in enumerate(logp)]
        beams = sorted(cands, key=lambda c: -c[0])[:K]
        if all(done for _, _, done in beams):
            break
    length = lambda seq: seq.index(eos_id) + 1 if eos_id in seq else len(seq)  # noqa: E731
    best = max(beams, key=lambda c: c[0] / length(c[1]))[1]
    return best[:best.index(eos_id)] if eos_id in best else best


def test_cached_generation_equals_uncached_beam_search_and_greedy(tmp_path):
    seed = random.randrange(1 << 30)
    _, path = hf_tiny(tmp_path, seed, 6, 2, False)
    m = LLaMA.from_pretrained(path)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (5, 9, 2)]
    kw = dict(max_new_tokens=12, eos_id=2)
    cached = m.generate(prompts, **kw)
    assert cached == [beam_reference(m, p, 1, 12, 2) for p in prompts], f"seed {seed}"
    assert cached == m.generate(prompts, beams=1, **kw)
    assert [m.generate([p], **kw)[0] for p in prompts] == cached, f"batched != one by one, seed {seed}"
    # greedy by hand: argmax of the full forward, token after token
    for p, out in zip(prompts, cached):
        seq = list(p)
        for _ in range(len(out)):
            seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
        assert seq[len(p):] == out[:len(seq) - len(p)], f"seed {seed}"
    beam = m.generate(prompts, beams=4, **kw)
    assert beam == [beam_reference(m, p, 4, 12, 2) for p in prompts], f"seed {seed}"


def test_beam_search_finds_a_better_sequence_than_greedy_when_it_exists(tmp_path):
    # beams must score at least as well as greedy under the same length-normalised log-probability
    seed = random.randrange(1 << 30)
    _, path = hf_tiny(tmp_path, seed, 5, 5, True)
    m = LLaMA.from_pretrained(path)
    prompt = torch.randint(3, 97, (6,)).tolist()

    def score(out):
        seq, lp = list(prompt), 0.0
        for t in out + [2]:
            lp += float(torch.log_softmax(m(torch.tensor([seq]))[0, -1], -1)[t])
            seq.append(t)
        return lp / (len(out) + 1)

    greedy, beam = m.generate([prompt], max_new_tokens=8, eos_id=2)[0], \
        m.generate([prompt], max_new_tokens=8, eos_id=2, beams=5)[0]
    if len(greedy) < 8 and len(beam) < 8:  # both finished with eos: comparable scores
        assert score(beam) >= score(greedy) - 1e-5, f"seed {seed}"


# ------------------------------------------------------------------------------------------------------------------
# Bad checkpoints


def write_safetensors(file, tensors, lie=None):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    if lie:
        header[lie]["shape"] = [s + 1 for s in header[lie]["shape"]]
    h = json.dumps(header).encode()
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def single_file_tiny(tmp_path):
    _, path = hf_tiny(tmp_path, 0, 3, 1, True, shard="10GB")
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    from safetensors.torch import load_file
    # clone: safetensors maps the file, and the test rewrites it below
    return path, {k: v.clone() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}


def test_bad_checkpoints_name_the_problem(tmp_path):
    path, sd = single_file_tiny(tmp_path)
    file = os.path.join(path, "model.safetensors")
    data = open(file, "rb").read()
    with open(file, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        LLaMA.from_pretrained(path)
    write_safetensors(file, sd, lie="model.norm.weight")
    with pytest.raises(ValueError, match="model.norm.weight.*do not hold"):
        LLaMA.from_pretrained(path)
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", 10 ** 9) + b"{}")
    with pytest.raises(ValueError, match="header length"):
        read_safetensors_header(file)
    write_safetensors(file, {k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError, match="missing keys.*layers.1.mlp.w_up"):
        LLaMA.from_pretrained(path)
    bad = dict(sd)
    bad["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(5, 18)
    write_safetensors(file, bad)
    with pytest.raises(ValueError, match="k_proj.weight' has shape"):
        LLaMA.from_pretrained(path)
    write_safetensors(file, {**sd, "model.layers.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="unexpected key 'model.layers.0.extra.weight'"):
        LLaMA.from_pretrained(path)


def test_tokenizer_vocab_mismatch_and_sentencepiece_roundtrip(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    text = ["the weather tomorrow will be sunny in the north", "rain and snow in the south on monday",
            "strong wind on the coast tonight", "temperatures between five and twelve degrees"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=40, bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    cfg = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "vocab_size": 40, "bos_token_id": 1, "eos_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_pretrained(str(tmp_path))
    s = "rain in the north tomorrow"
    ids = tok.encode(s, bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids[1:]) == s
    cfg["vocab_size"] = 30
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="tokenizer has 40 tokens but config.json vocab_size is 30"):
        Tokenizer.from_pretrained(str(tmp_path))


def test_config_refuses_what_it_does_not_implement(tmp_path):
    cfg = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "vocab_size": 60, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_scaling = .*llama3"):
        LLaMAConfig.from_hf(str(tmp_path))


# ------------------------------------------------------------------------------------------------------------------
# The embedded default, for real


@pytest.fixture(scope="module")
def smol():
    path = smollm2()
    return path, LLaMA.from_pretrained(path), Tokenizer.from_pretrained(path)


def test_smollm2_knows_the_capital_of_france(smol):
    _, model, tok = smol
    out = model.generate([tok.encode(tok.chat("What is the capital of France?"))], max_new_tokens=16)[0]
    assert "Paris" in tok.decode(out)


def test_smollm2_matches_transformers_gguf_loader(smol):
    pytest.importorskip("gguf")
    from llama import find_smollm2_gguf
    path, model, tok = smol
    gguf = find_smollm2_gguf()
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                           torch_dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    s = "Tomorrow it will rain in the north, with 12 degrees and strong wind on the coast."
    ids = tok.encode(s)
    assert ids == hf_tok(s, add_special_tokens=False).input_ids
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids])).logits
        got = model(torch.tensor([ids]))
    assert (got - ref).abs().max() < 1e-3
