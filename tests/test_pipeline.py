"""End to end on a tiny preset: vq -> cra -> ft -> eval -> translate, with a tiny random LLaMA whose sentencepiece
tokenizer is trained here. Checks that the fine-tuning loss falls and that each stage's output loads in the next."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import data
import synthetic
import engine
import llama
import train
import translate
from llama import HF_KEYS, HF_LAYER_KEYS, LLaMA, LLaMAConfig

TINY = ["--synthetic_size=tiny", "--data.image_size=32", "--vq.width=8", "--vq.d=32", "--vq.M=16",
        "--vq_batch_size=4", "--vq_max_steps=8", "--vq_eval_every=4", "--vq_ckpt_every=4", "--cra.m=4", "--cra.R=4",
        "--cra_hidden=32", "--cra_steps=10", "--cra_lr=0.01", "--ft_batch_size=4", "--ft_max_steps=36", "--ft_lr=0.02",
        "--ft_warmup=0", "--ft_eval_every=18", "--signllm.max_new_tokens=8", "--eval_beams=2",
        "--num_workers=0", "--threads=1", "--log_every=100"]


def tiny_llm(folder, texts, dim=24):
    spm = pytest.importorskip("sentencepiece")
    os.makedirs(folder)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=os.path.join(folder, "tokenizer"),
                                   vocab_size=60, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    cfg = LLaMAConfig(dim=dim, n_layers=2, n_heads=3, n_kv_heads=1, hidden_dim=40, vocab_size=60, tie_embeddings=False)
    torch.manual_seed(0)
    m = LLaMA(cfg)
    names = {o: h for h, o in HF_KEYS.items()}  # ours -> Hugging Face names, the inverse of the loader's map
    names.update({f"layers.{i}.{o}": f"model.layers.{i}.{h}" for i in range(2) for h, o in HF_LAYER_KEYS.items()})
    save_file({names[k]: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"hidden_size": dim, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 3,
                   "num_key_value_heads": 1, "vocab_size": 60, "tie_word_embeddings": False, "bos_token_id": 1,
                   "eos_token_id": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}, f)


def test_all_stages_tiny(tmp_path, capsys):
    root, out, llm = str(tmp_path / "data"), str(tmp_path / "out"), str(tmp_path / "llm")
    synthetic.make_synthetic(root, seed=0, size="tiny", height=32, width=32)
    tiny_llm(llm, [s.text for s in data.load_split(root, "train")] * 3)
    args = TINY + [f"--data.root={root}", f"--out_dir={out}", f"--llm={llm}"]
    train.main(["--stage=vq"] + args)
    capsys.readouterr()
    cra_history = train.main(["--stage=cra", "--cra_refit=5"] + args)
    refit_lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("codebook refit: 5 Lloyd steps")]
    assert len(refit_lines) == 1 and " purity " in refit_lines[0] and " nmi " in refit_lines[0], refit_lines
    mmd = [h["L_MMD"] for h in cra_history]
    # the refit (Lloyd steps from the learned codebook) lowered Eq. 2's codebook term over the training clips, and
    # the refitted codebook is what the cra checkpoint holds
    from vq import VQSign
    cfg = train.parse_args(["--stage=cra"] + args)
    vq = VQSign(cfg.vq)
    engine.load(os.path.join(out, "vq"), "best", vq, cfg=cfg)
    z = torch.cat(train.tokenize_videos(vq, data.SignDataset(data.load_split(root, "train"), cfg.data, train=False),
                                        cfg, features=True)).double()  # (clips, d)
    refit = train.load_model(os.path.join(out, "cra"))[0].vq.codebook.detach().double()
    term = lambda c: torch.cdist(z, c).pow(2).min(1).values.sum()  # noqa: E731  sum_z min_m ||z - c_m||^2
    assert term(refit) < term(vq.codebook.detach().double()) - 1e-6
    assert mmd[-1] < 0.95 * mmd[0], f"the sign-text alignment did not lower L_MMD: {mmd}"  # ~1.00 -> ~0.93
    assert os.path.exists(os.path.join(out, "cra", "vocab.txt"))
    history = train.main(["--stage=ft"] + args)
    L = [h["L_sim"] for h in history]
    # a random 2-layer LLM can only be steered a little through its input embeddings: the fall is small but real
    # (deterministic: seeded data order and init), from ~4.29 to ~4.24 nats
    assert sum(L[-6:]) / 6 < sum(L[:6]) / 6 - 0.03, f"L_sim did not fall: {L}"
    written, real = [], engine.atomic_write
    with pytest.MonkeyPatch.context() as mp:  # every output file of eval is written atomically
        mp.setattr(engine, "atomic_write", lambda path, write: written.append(os.path.basename(path))
                   or real(path, write))
        decode = llama.Tokenizer.decode  # an LLM may say a newline or a tab: the TSV keeps one row per video
        mp.setattr(llama.Tokenizer, "decode", lambda self, ids: decode(self, ids) + "\n\nand\tmore ")
        results = train.main(["--stage=eval"] + args)
    assert {"dev.tsv", "test.tsv", "metrics.json"} <= set(written)
    with open(os.path.join(out, "eval", "metrics.json")) as f:
        assert json.load(f) == results
    assert set(results["test"]) == {"B1", "B2", "B3", "B4", "ROUGE-L"}
    lines = open(os.path.join(out, "eval", "test.tsv"), encoding="utf-8").read().splitlines()
    assert len(lines) == 1 + len(data.load_split(root, "test"))
    assert all(len(line.split("\t")) == 3 and line.split("\t")[1].endswith(" and more") for line in lines[1:])
    # the command-line translator reads a frame folder and prints one line per video
    sample = data.load_split(root, "test")[0]
    capsys.readouterr()
    translate.main(["--ckpt", os.path.join(out, "ft"), sample.path])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith(sample.path + "\t")
    with pytest.raises(SystemExit, match="no best"):
        translate.main(["--ckpt", str(tmp_path), sample.path])


def test_prefix_cache_gives_the_same_L_sim_and_gradients(tmp_path):
    """L_sim with the prompt's opening served from a KV cache computed once == L_sim with the whole prompt fed every
    step: the loss and the gradients to the sign sentence W, on random W of uneven lengths."""
    import cra
    from llama import Tokenizer
    from signllm import SignLLM, SignLLMConfig
    from vq import VQConfig, VQSign
    import numpy as np
    rng = np.random.default_rng(0)
    texts = [synthetic._weather_sentence(rng)[1] for _ in range(300)]  # the synthetic language's translations
    folder = str(tmp_path / "llm")
    tiny_llm(folder, texts)
    llm, tok = LLaMA.from_pretrained(folder), Tokenizer.from_pretrained(folder)
    tokens = cra.SignTokens([(c,) for c in range(9)], [1] * 9, 8, 16, llm.cfg.dim, 20, [3, 4], [1.0])
    vq = VQSign(VQConfig(width=4, d=16, M=8))
    W = torch.randn(3, 7, llm.cfg.dim, dtype=torch.float64).float()
    W_mask = torch.arange(7) < torch.tensor([7, 2, 5])[:, None]  # (3, 7): uneven sign sentences
    out = {}
    german = SignLLM(vq, tokens, llm, tok, SignLLMConfig(language="german"))  # the tiny tokenizer knows no capitals
    assert "sentence into german" in tok.decode(german.prompt_before + german.prompt_after)
    for cached in (True, False):
        model = SignLLM(vq, tokens, llm, tok, SignLLMConfig(prefix_cache=cached))
        assert len(model.prompt_before) > 0
        w = W.clone().requires_grad_()
        for _ in range(2):  # the second call reuses the cached opening
            loss = model.L_sim(w, W_mask, texts[:3])
        loss.backward()
        out[cached] = loss.item(), w.grad
    assert abs(out[True][0] - out[False][0]) < 1e-5
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-4, atol=1e-6)
    assert out[True][1][W_mask].abs().sum() > 0 and out[True][1][~W_mask].abs().sum() == 0
