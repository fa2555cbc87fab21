"""Tests of synthetic.py: the generator's languages round-trip through data.py's loader, are deterministic, keep their
splits' promises (held-out pairs, unseen sentences), and the travel language's primitives differ by movement alone."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import data
import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_hash(root):
    h = hashlib.sha256()
    for d, _, names in sorted(os.walk(root)):
        for n in sorted(names):
            p = os.path.join(d, n)
            h.update(os.path.relpath(p, root).encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# the synthetic sign language

@pytest.fixture(scope="module", params=list(synthetic.KINDS))
def language(request, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / request.param)
    return root, synthetic.make_synthetic(root, seed=3, size="tiny", kind=request.param)


@pytest.fixture(scope="module")
def weather(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "tiny")
    return root, synthetic.make_synthetic(root, seed=3, size="tiny")


def test_synthetic_round_trip(language):
    root, gt = language
    rng = np.random.default_rng(3)  # the generator's own draws, repeated: what the loader must give back
    make_language, sentence, glosses = synthetic.KINDS[gt["kind"]]
    lang = make_language(rng)
    splits = synthetic._splits(rng, synthetic.SIZES["tiny"], lang[3], sentence, glosses)
    for k, split in enumerate(("train", "dev", "test")):
        samples = data.load_split(root, split)
        assert len(samples) == synthetic.SIZES["tiny"][k]
        assert [(s.gloss.split(), s.text) for s in samples] == [(g, t) for g, t, _ in splits[split]]
        for s in samples:
            v, e = data.read_frames(s), gt["videos"][s.name]
            assert v.shape == (e["n_frames"], gt["height"], gt["width"], 3) and e["split"] == split
            assert [g for g, _, _ in e["glosses"]] == s.gloss.split()
            prims = iter(e["primitives"])
            for g, a, b in e["glosses"]:  # each gloss is its lexicon's primitives, back to back
                segs = [next(prims) for _ in gt["lexicon"][g]]
                assert [p for p, _, _ in segs] == gt["lexicon"][g]
                assert segs[0][1] == a and segs[-1][2] == b and all(x[2] == y[1] for x, y in zip(segs, segs[1:]))
            assert 0 < e["glosses"][0][1] and e["glosses"][-1][2] < e["n_frames"]  # rest frames at both ends
    assert synthetic.read_ground_truth(root) == gt


def test_synthetic_poses_holds_and_rest():
    rng = np.random.default_rng()
    prims, lexicon, _, _ = synthetic._weather_language(rng)
    n_holds = 0
    for _ in range(20):
        glosses = synthetic._weather_sentence(rng)[0]
        frames, prim_seg, gloss_seg, holds = synthetic._poses(glosses, lexicon, prims, rng, float(rng.uniform(.7, 1.3)))
        n_holds += len(holds)
        assert frames[0] == frames[gloss_seg[0][1] - 1] == (synthetic.REST[0], "fist", synthetic.REST[1], "fist")
        for a, b in holds:  # a hold repeats the last pose of its gloss
            assert b - a >= 3 and all(f == frames[a - 1] for f in frames[a:b]) and any(g[2] == b for g in gloss_seg)
        for pid, a, b in prim_seg:  # the primitive's handshape is shown throughout its segment
            assert b - a >= 4 and all(f[1] == prims[pid]["shape"] for f in frames[a:b])
    assert n_holds > 0  # about one gloss in four ends in a hold


def test_synthetic_is_deterministic(weather, tmp_path):
    root, _ = weather
    subprocess.run([sys.executable, os.path.join(REPO, "synthetic.py"), str(tmp_path / "again"), "--seed", "3",
                    "--size", "tiny", "--workers", "2"], check=True, capture_output=True)
    assert _tree_hash(str(tmp_path / "again")) == _tree_hash(root)
    synthetic.make_synthetic(str(tmp_path / "other"), seed=4, size="tiny")
    assert _tree_hash(str(tmp_path / "other")) != _tree_hash(root)
    with pytest.raises(FileExistsError):
        synthetic.make_synthetic(str(tmp_path / "other"), seed=4, size="tiny")


def test_synthetic_splits_and_language():
    rng = np.random.default_rng()
    prims, lexicon, signers, heldout = synthetic._weather_language(rng)
    seqs = [tuple(s) for s in lexicon.values()]
    assert len(set(seqs)) == len(synthetic.GLOSSES) and all(2 <= len(s) <= 4 for s in seqs)
    assert all(a != b for s in seqs for a, b in zip(s, s[1:]))
    feats = [(p["shape"], p["motion"], tuple(p["loc"])) for p in prims]  # any two differ in two of three
    assert all(sum(x != y for x, y in zip(f, g)) >= 2 for i, f in enumerate(feats) for g in feats[i + 1:])
    sizes = synthetic.SIZES["default"]
    splits = synthetic._splits(rng, sizes, heldout, synthetic._weather_sentence, synthetic.GLOSSES)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == list(sizes)

    def pairs(g):  # (region, weather) signed next to each other
        return {(a, b) for a, b in zip(g, g[1:]) if a in synthetic.REGIONS and b in synthetic.WEATHER}
    train = {tuple(g) for g, _, _ in splits["train"]}
    assert not any(pairs(g) & set(heldout) for g in train)
    assert set(synthetic.GLOSSES) == {x for g in train for x in g}
    for split in ("dev", "test"):
        novel = [bool(pairs(g) & set(heldout)) for g, _, _ in splits[split]]
        assert novel == [n for _, _, n in splits[split]] and sum(novel) == len(novel) // 2
        assert not {tuple(g) for g, _, _ in splits[split]} & train
        assert len({tuple(g) for g, _, _ in splits[split]}) == len(splits[split])  # no sentence twice
    assert not {tuple(g) for g, _, _ in splits["dev"]} & {tuple(g) for g, _, _ in splits["test"]}
    for g, text, _ in splits["train"][:50]:  # the region comes first in glosses, last in English
        assert text.endswith(synthetic.REGIONS[g[-2] if g[-1] in synthetic.WEATHER and g[-2] in synthetic.REGIONS else g[1]])
        assert text == text.lower() and len(text.split()) > len(g)


def test_travel_primitives_differ_by_their_movement_alone():
    """The travel language's 18 primitives: any two paths (the hand's displacement from its place) are far apart at
    some phase, the place is jittered and the hand shape drawn anew at each occurrence, so neither tells them apart;
    hands are smaller and of lower contrast than the weather language's."""
    rng = np.random.default_rng()
    prims, lexicon, signers, _ = synthetic._travel_language(rng)
    path = lambda p: np.array([np.subtract(synthetic._hand(p, u), p["loc"]) for u in np.linspace(0, 1, 9)])  # noqa
    for i, p in enumerate(prims):
        for q in prims[i + 1:]:
            assert np.abs(path(p) - path(q)).max() > 0.05, (p, q)
    shapes, places = {}, {}
    for _ in range(60):
        glosses = synthetic._travel_sentence(rng)[0]
        frames, prim_seg, _, _ = synthetic._poses(glosses, lexicon, prims, rng, 1.0)
        for pid, a, b in prim_seg:
            shapes.setdefault(pid, set()).add(frames[b - 1][1])
            places.setdefault(pid, set()).add(frames[a + 2][0])
    assert sum(len(v) > 1 for v in shapes.values()) >= len(shapes) - 1 and all(len(v) > 1 for v in places.values())
    for s in signers:
        assert s["hand"] < 0.075 and 30 <= max(abs(g - b) for g, b in zip(s["glove"], s["bg"])) <= 60


def test_travel_content_words_are_said():
    """Each content gloss of a travel sentence has its word (TRAVEL_WORDS) in the English; MINUTE, CLOCK are template."""
    rng = np.random.default_rng()
    assert set(synthetic.TRAVEL_WORDS) == set(synthetic.TRAVEL_GLOSSES) - {"MINUTE", "CLOCK"}
    for _ in range(200):
        glosses, text, _ = synthetic._travel_sentence(rng)
        words = text.split()
        assert all(synthetic.TRAVEL_WORDS[g] in words for g in glosses if g in synthetic.TRAVEL_WORDS), (glosses, text)
