"""The ablation report (bench/report.py) on tiny sizes: every row's code path trained, evaluated and tabulated, the
stages shared as declared, the flags doing what they say (a frozen k-means codebook, a fresh small decoder, no MMD
training); k-means against scipy's; the token picture's layout and font."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import data
import synthetic
import engine
import vq
from test_pipeline import TINY, tiny_llm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import report  # noqa: E402
import token_picture  # noqa: E402

FAST = ["--cra_steps=4", "--ft_max_steps=3", "--ft_eval_every=3", "--eval_beams=1"]


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def best(folder):
    meta = json.load(open(engine.checkpoints(folder, "best")[-1]))
    return meta, load_file(os.path.join(folder, meta["weights"]))


def test_kmeans_equals_scipy():
    scipy_vq = pytest.importorskip("scipy.cluster.vq")
    g = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    x = torch.randn(301, 7, generator=g) + 4 * torch.randint(0, 3, (301, 1), generator=g)  # clumps, odd sizes
    k, seed = 11, 3
    init = x.double()[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]]  # kmeans' own start
    ref, _ = scipy_vq.kmeans2(x.double().numpy(), init.numpy(), iter=50, minit="matrix")
    np.testing.assert_allclose(vq.kmeans(x, k, iters=50, seed=seed).numpy(), ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="3 points"):
        vq.kmeans(x[:3], 4)


def test_every_row_tiny(tmp_path):
    root, out, llm = str(tmp_path / "data"), str(tmp_path / "report"), str(tmp_path / "llm")
    synthetic.make_synthetic(root, seed=0, size="tiny", height=32, width=32)
    tiny_llm(llm, [s.text for s in data.load_split(root, "train")] * 3)
    text = report.main([f"--out={out}", "--random_layers=1", f"--rows={','.join(report.ORDER)}", *TINY, *FAST,
                        "--vq.M=40", f"--data.root={root}", f"--llm={llm}"])  # M: one per oracle gloss, and rest
    out = os.path.join(out, "seed1337")  # one seed: the cells are that seed's numbers
    # the table: one line per row, its numbers those of the row's own eval
    for key, name, *_ in report.ROWS:
        res = json.load(open(os.path.join(out, key, "eval", "metrics.json")))
        cells = next(l for l in text.splitlines() if l.startswith(f"| {name.format(layers=1)} |")).split(" | ")
        assert [float(c) for c in cells[2:12]] == [round(res[s][c], 2) for s in ("dev", "test")
                                                  for c in ("B1", "B2", "B3", "B4", "ROUGE-L")]
    assert sum(l.startswith("| ") and "glosses |" in l for l in text.splitlines()) == 9  # token rows: not encoders
    assert sum(l.startswith("| blind: ") for l in text.splitlines()) == 2
    # shared stages are links to the row that ran them; the encoder-only row has no vq and no cra
    link = lambda k, s: os.path.realpath(os.path.join(out, k, s))  # noqa: E731
    assert not os.path.islink(os.path.join(out, "signllm", "vq"))
    for k in ("no_cr", "no_align", "no_llm", "random_llm", "oracle_prims", "oracle_glosses", "straight_through"):
        assert link(k, "vq") == link("signllm", "vq")
    assert link("no_llm", "cra") == link("signllm", "cra") and not os.path.islink(os.path.join(out, "no_cr", "cra"))
    assert not os.path.exists(os.path.join(out, "encoder_only", "vq"))
    assert open(os.path.join(out, "no_cr", "cra", "vocab.txt")).read() == \
        open(os.path.join(out, "signllm", "cra", "vocab.txt")).read()
    # w/o VQ-Sign: the k-means codebook stays frozen through ft, and ft leaves the L_sim-trained encoder's weights
    _, km = best(os.path.join(out, "no_vq", "vq"))
    meta, ft = best(os.path.join(out, "no_vq", "ft"))
    assert meta["step"] > 0 and torch.equal(ft["model.vq.codebook"], km["model.codebook"])
    _, enc = best(os.path.join(out, "encoder_only", "ft"))
    w = "vq.encoder.resnet.conv1.weight"
    assert torch.equal(km["model." + w[3:]], enc["model." + w]) and torch.equal(ft["model." + w], enc["model." + w])
    assert "optim.vq.codebook.exp_avg" not in ft and "optim.vq.encoder.resnet.conv1.weight.exp_avg" not in ft
    # w/o LLM: the small decoder is trained in ft; w/o alignment: cra wrote f untrained (step 0)
    _, nl = best(os.path.join(out, "no_llm", "ft"))
    assert any(k.startswith("model.decoder.") for k in nl) and "optim.decoder.embed.weight.exp_avg" in nl
    assert best(os.path.join(out, "no_align", "cra"))[0]["step"] == 0
    assert best(os.path.join(out, "signllm", "cra"))[0]["step"] > 0
    # LoRA: its factors (only they, never the LLM's weights) trained and in the checkpoint
    _, lo = best(os.path.join(out, "lora", "ft"))
    assert any(k.startswith("model.lora.") for k in lo) and not any(".wq.weight" in k for k in lo)
    assert any(k.startswith("optim.lora.") for k in lo)
    # the oracle rows read the generator's units: their vocabularies are searched on those, not on VQ-Sign's codes
    assert open(os.path.join(out, "oracle_prims", "cra", "vocab.txt")).read() != \
        open(os.path.join(out, "signllm", "cra", "vocab.txt")).read()
    # random LLM: its own width and tokenizer, one layer
    assert json.load(open(os.path.join(out, "random-llm", "config.json")))["num_hidden_layers"] == 1
    # the picture on a trained row: a PNG of the size its layout gives
    png = str(tmp_path / "tokens.png")
    token_picture.main(["--ckpt", os.path.join(out, "signllm", "ft"), "--split", "test", "--n", "2", "--out", png])
    import imageio.v3 as iio
    img = iio.imread(png)
    assert img.dtype == np.uint8 and img.shape[2] == 3 and img.shape[1] == token_picture.width(token_picture.FRAMES)


def read_back(img, y, x, n):
    """The n characters drawn at (y, x), read by matching each 5x7 cell against the font (an OCR of our own font)."""
    cells = [img[y:y + 7, x + 6 * i:x + 6 * i + 5, 0] == 0 for i in range(n)]
    return "".join(next(c for c, g in token_picture.FONT.items() if np.array_equal(g, cell)) for cell in cells)


def test_picture_layout_and_font():
    rng = np.random.default_rng()
    N, H, W = int(rng.integers(3, 40)), int(rng.integers(20, 90)), int(rng.integers(20, 90))
    frames = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    chars = token_picture.CHARS
    words = ["".join(rng.choice(list(chars.replace(" ", "")), int(rng.integers(1, 12)))) for _ in range(40)]
    line = " ".join(words)
    img = token_picture.panel(frames, ["short", line], n_frames=7)
    per = (token_picture.width(7) - 2 * token_picture.PAD) // 6
    wrapped = token_picture.wrap(line, per)
    assert " ".join(wrapped) == line and all(len(l) <= per for l in wrapped) and len(wrapped) > 1
    P, C, L = token_picture.PAD, token_picture.CELL, token_picture.LINE
    assert img.shape == (3 * P + C + L * (1 + len(wrapped)), token_picture.width(7), 3)
    # every character reads back from the pixels: glyphs are distinct and each sits where the layout puts it
    for i, text in enumerate(["SHORT"] + wrapped):
        assert read_back(img, 2 * P + C + L * i, P, len(text)) == text.upper()
    # the strip: frame k of the 7 evenly spaced ones, nearest-pixel resized, at its cell
    pick = np.linspace(0, N - 1, 7).round().astype(int)
    for k in (0, 6):
        x = P + k * (C + token_picture.GAP)
        cell = img[P:P + C, x:x + C]
        ys, xs = np.arange(C) * H // C, np.arange(C) * W // C
        assert np.array_equal(cell, frames[pick[k]][ys][:, xs])
    assert read_back(token_picture.panel(frames, ["\u00fc~"]), 2 * P + C, P, 2) == "??"  # outside the font


def test_content_recall_and_blind_rows():
    """bench/seeds.py's content measure on the generator's own sentences: a reference scores 100 against itself, a
    sentence of other content less; the derangement moves every video."""
    import seeds
    rng = np.random.default_rng(int(torch.randint(1 << 30, ())))
    sents = [synthetic._weather_sentence(rng) for _ in range(60)]
    glosses, texts = [s[0] for s in sents], [s[1] for s in sents]
    assert seeds.content_recall(texts, glosses) == 100.0
    assert seeds.content_recall([t.upper() + "." for t in texts], glosses) == 100.0  # case and punctuation ignored
    shifted = texts[1:] + texts[:1]
    assert seeds.content_recall(shifted, glosses) < 60.0
    g = ["TODAY", "NORTH", "RAIN", "STRONG"]  # "today there will be heavy rain in the north"
    assert seeds.gloss_words(g) == {"TODAY": {"today"}, "NORTH": {"north"}, "RAIN": {"rain"}, "STRONG": {"heavy"}}
    assert seeds.content_recall(["today there will be rain in the north"], [g]) == 75.0  # 3 of 4: not "heavy"
    assert seeds.content_recall(["x"], [["NOT_A_GLOSS"]]) is None
    p = seeds.derangement(7, __import__("random").Random(0))
    assert sorted(p) == list(range(7)) and all(i != j for i, j in enumerate(p))
