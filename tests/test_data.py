"""Tests for data.py: clip framing against a brute-force count, the loaders on fixtures that mirror the real layouts
(Phoenix-2014T with and without <name>/1/, CSL-Daily, a plain folder of GIFs and frame folders), every bad input, and
the synthetic sign language (round trip through the loader, determinism, the split guarantees)."""
import os, pickle, re

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import data
import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_frames(folder, frames, ext=".png"):
    os.makedirs(folder, exist_ok=True)
    for t, f in enumerate(frames, 1):
        Image.fromarray(f).save(os.path.join(folder, f"images{t:04d}{ext}"))


def _video(rng, n, h=21, w=26):
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _normalize64(v):  # float64 reference of the Dataset's normalization: (N, H, W, 3) uint8 -> (N, 3, H, W)
    x = v.astype(np.float64) / 255
    return ((x - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)).transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------------
# clip framing

def test_num_clips_matches_brute_force_cover():
    rng = np.random.default_rng()
    for n in [1, 2, 12, 13, 14, 16, 17, 18, 29, 30] + rng.integers(1, 700, 40).tolist():
        starts = [0]  # windows of 13 at stride 4, added until one covers the last frame
        while starts[-1] + data.CLIP_LEN < n:
            starts.append(starts[-1] + data.CLIP_STRIDE)
        assert data.num_clips(n) == len(starts), n
        assert data.padded_length(len(starts)) == starts[-1] + data.CLIP_LEN >= n
        assert starts[-1] < n  # no clip made of padding only
    with pytest.raises(ValueError):
        data.num_clips(0)


def test_clip_labels_middle_frame():
    segs = [["a", 3, 10], ["b", 10, 25], ["c", 25, 31]]
    labels = synthetic.clip_labels(segs, 33)
    assert len(labels) == data.num_clips(33)
    for t, lab in enumerate(labels):
        m = min(4 * t + 6, 32)
        assert lab == next((s[0] for s in segs if s[1] <= m < s[2]), None)


# ---------------------------------------------------------------------------------------------------------------
# Dataset and collate

def _folder_set(tmp_path, videos, split="train"):
    with open(tmp_path / f"{split}.tsv", "w") as f:
        f.write("name\ttranslation\n")
        for i, v in enumerate(videos):
            _write_frames(str(tmp_path / split / f"v{i}"), v)
            f.write(f"v{i}\tsentence number {i}\n")
    return data.load_split(str(tmp_path), split)


def test_collate_pads_to_the_clip_grid(tmp_path):
    rng = np.random.default_rng()
    lengths = [1, 13, 14, int(rng.integers(15, 40))]
    videos = [_video(rng, n, 21, 21) for n in lengths]  # square frames of the target size: no resize, exact values
    ds = data.SignDataset(_folder_set(tmp_path, videos), data.DataConfig(image_size=21), train=False)
    batch = data.collate([ds[i] for i in range(len(ds))])
    n_pad = [data.padded_length(data.num_clips(n)) for n in lengths]
    assert batch["frames"].shape == (4, max(n_pad), 3, 21, 21) and batch["frames"].dtype == torch.float32
    assert batch["clip_mask"].sum(1).tolist() == [data.num_clips(n) for n in lengths]
    assert batch["frame_mask"].sum(1).tolist() == n_pad
    assert [f.tolist() for f in batch["frame_ids"]] == [list(range(n)) for n in lengths]  # no speed change here
    for b, (v, n) in enumerate(zip(videos, lengths)):
        ref = _normalize64(v)
        got = batch["frames"][b].double().numpy()
        np.testing.assert_allclose(got[:n], ref, atol=1e-5)
        np.testing.assert_allclose(got[n:n_pad[b]], np.broadcast_to(ref[-1:], got[n:n_pad[b]].shape), atol=1e-5)
        assert not got[n_pad[b]:].any()
    assert batch["text"] == [f"sentence number {i}" for i in range(4)] and batch["skipped"] == []


def test_decoded_videos_are_kept_within_the_budget(tmp_path, monkeypatch):
    """SignDataset decodes a video once and keeps it while data.cache_mb allows: the items (augmented, seeded) are
    those of a dataset without the cache, and the kept frames are never written to."""
    rng = np.random.default_rng()
    videos = [_video(rng, int(n), 21, 26) for n in rng.integers(3, 30, 4)]
    samples = _folder_set(tmp_path, videos)
    reads, real = [], data.read_frames
    monkeypatch.setattr(data, "read_frames", lambda s: reads.append(s.name) or real(s))
    kept = data.SignDataset(samples, data.DataConfig(image_size=17, speed_jitter=0.3), train=True)
    plain = data.SignDataset(samples, data.DataConfig(image_size=17, speed_jitter=0.3, cache_mb=0), train=True)
    for epoch in range(3):
        for i in range(len(samples)):
            torch.manual_seed(epoch * 10 + i)
            a = kept[i]
            torch.manual_seed(epoch * 10 + i)
            b = plain[i]
            assert torch.equal(a["frames"], b["frames"]) and a["frame_ids"].tolist() == b["frame_ids"].tolist()
    assert sorted(reads) == sorted([s.name for s in samples] + [s.name for s in samples] * 3)  # kept once, plain 3x
    assert all(np.array_equal(kept.cache[s.path], v) for s, v in zip(samples, videos)) and plain.cache == {}
    assert kept.cached_bytes == sum(v.nbytes for v in videos)


def test_resize_speed_jitter_and_crop(tmp_path):
    rng = np.random.default_rng()
    n = int(rng.integers(25, 45))
    flat = np.empty((n, 21, 26, 3), np.uint8)
    flat[:] = np.arange(n, dtype=np.uint8)[:, None, None, None] * 5  # each frame one flat grey: its index
    cfg = data.DataConfig(image_size=17, crop_min_area=0.5, speed_jitter=0.3)
    x = data.SignDataset(_folder_set(tmp_path, [flat]), cfg, train=False)[0]["frames"]  # resize only
    assert x.shape == (data.padded_length(data.num_clips(n)), 3, 17, 17)
    np.testing.assert_allclose(x[:n].double().numpy(), _normalize64(flat[:, :17, :17]), atol=1e-5)  # flat stays flat
    lengths = set()
    for seed in range(6):
        torch.manual_seed(seed)
        item = data.SignDataset(_folder_set(tmp_path, [flat]), cfg, train=True)[0]
        y = item["frames"]
        grey = (y[:, 0, 0, 0].double() * data.IMAGENET_STD[0] + data.IMAGENET_MEAN[0]) * 255 / 5  # frame indices
        idx = grey.round().long()
        assert idx[:len(item["frame_ids"])].tolist() == item["frame_ids"].tolist()  # the item says which frames
        assert torch.allclose(grey, idx.double(), atol=1e-3) and (y.std(dim=(2, 3)) < 1e-5).all()
        steps = idx.diff()  # speed in [0.7, 1.3]: steps of 0, 1 or 2 frames, in order, from the first to near the last
        assert idx[0] == 0 and idx[-1] >= n - 3 and ((steps >= 0) & (steps <= 2)).all()
        assert n / 1.3 - 1 <= len(idx) <= data.padded_length(data.num_clips(int(n / 0.7) + 2))
        lengths.add(len(idx))
    assert len(lengths) > 1  # the speed changes
    pattern = np.broadcast_to(_video(rng, 1, 21, 26), (9, 21, 26, 3))  # one picture: only a crop changes it
    outs = []
    for seed in range(4):
        torch.manual_seed(seed)
        outs.append(data.SignDataset(_folder_set(tmp_path, [pattern]), cfg, train=True)[0]["frames"][0])
    assert all(o.shape == (3, 17, 17) for o in outs) and not all(torch.equal(outs[0], o) for o in outs[1:])


# ---------------------------------------------------------------------------------------------------------------
# real layouts

PHOENIX_ROWS = [("01April_2010_Thursday_heute-6694", "Signer04", "JETZT WETTER MORGEN DONNERSTAG",
                 "und nun die wettervorhersage für morgen donnerstag"),
                ("11August_2010_Wednesday_tagesschau-2", "Signer08", "REGEN NORD",
                 "im norden regnet es örtlich"),
                ("25October_2010_Monday_tagesschau-22", "Signer01", "SONNE SUED", "im süden scheint die sonne")]


def _phoenix(tmp_path, rng, split="dev", rows=PHOENIX_ROWS, header="name|video|start|end|speaker|orth|translation"):
    root = tmp_path / "PHOENIX-2014-T"
    os.makedirs(root / "annotations" / "manual", exist_ok=True)
    lines = [header] + [f"{n}|{n}/1/*.png|-1|-1|{s}|{o}|{t}" for n, s, o, t in rows]
    (root / "annotations" / "manual" / f"PHOENIX-2014-T.{split}.corpus.csv").write_text("\n".join(lines) + "\n")
    videos = {}
    for i, (n, *_) in enumerate(rows):
        videos[n] = _video(rng, int(rng.integers(3, 20)))
        sub = ["1"] if i == 1 else []  # the <name>/1/ variant
        _write_frames(str(root.joinpath("features", "fullFrame-210x260px", split, n, *sub)), videos[n])
    return str(root), videos


def test_phoenix_layout(tmp_path):
    root, videos = _phoenix(tmp_path, np.random.default_rng())
    samples = data.load_split(root, "dev")
    assert [s.name for s in samples] == [r[0] for r in PHOENIX_ROWS]
    assert [(s.signer, s.gloss, s.text) for s in samples] == [r[1:] for r in PHOENIX_ROWS]
    assert samples[1].path.endswith(os.path.join(PHOENIX_ROWS[1][0], "1"))
    for s in samples:
        np.testing.assert_array_equal(data.read_frames(s), videos[s.name])
    assert data.detect_format(root, "dev") == "phoenix"


@pytest.mark.parametrize("header", ["name|split", "Name|Split"])  # the split file's header in either case
def test_csl_daily_layout(tmp_path, header):
    rng = np.random.default_rng()
    root = tmp_path / "csl-daily"
    os.makedirs(root / "sentence_label")
    info = [{"name": "S000000_P0000_T00", "length": 9, "label_gloss": ["明天", "下雨"], "label_char": list("明天会下雨"),
             "label_word": ["明天", "会", "下雨"], "label_postag": ["t", "v", "v"], "signer": 0, "time": 0},
            {"name": "S000001_P0003_T00", "length": 5, "label_gloss": ["你", "好"], "label_char": list("你好"),
             "label_word": ["你好"], "label_postag": ["l"], "signer": 3, "time": 0},
            {"name": "S000002_P0001_T00", "length": 6, "label_gloss": ["谢谢"], "label_char": list("谢谢"),
             "label_word": ["谢谢"], "label_postag": ["v"], "signer": 1, "time": 0}]
    with open(root / "sentence_label" / "csl2020ct_v2.pkl", "wb") as f:
        pickle.dump({"info": info, "gloss_map": ["明天", "下雨"], "char_map": [], "word_map": []}, f)
    (root / "sentence_label" / "split_1.txt").write_text(
        f"{header}\nS000000_P0000_T00|train\nS000001_P0003_T00|test\nS000002_P0001_T00|train\n")
    for e in info:
        folder = root / "sentence" / "frames_512x512" / e["name"]
        os.makedirs(folder)
        for t in range(e["length"]):
            Image.fromarray(_video(rng, 1, 24, 24)[0]).save(folder / f"{t:06d}.jpg")
    train = data.load_split(str(root), "train")
    assert [(s.name, s.text, s.gloss, s.signer) for s in train] == [
        ("S000000_P0000_T00", "明天会下雨", "明天 下雨", "0"), ("S000002_P0001_T00", "谢谢", "谢谢", "1")]
    v = data.read_frames(train[0])
    ref = np.stack([iio.imread(os.path.join(train[0].path, f"{t:06d}.jpg")) for t in range(9)])  # imageio decodes
    np.testing.assert_array_equal(v, ref)
    assert [s.name for s in data.load_split(str(root), "test")] == ["S000001_P0003_T00"]


def test_folder_of_short_videos(tmp_path):
    rng = np.random.default_rng()
    os.makedirs(tmp_path / "test")
    palette = rng.integers(0, 256, (6, 3), dtype=np.uint8)  # few colours: GIF keeps them exactly
    gifs = {f"clip{i}": palette[rng.integers(0, 6, (int(rng.integers(2, 9)), 18, 23))] for i in range(3)}
    for name, v in gifs.items():
        iio.imwrite(tmp_path / "test" / f"{name}.gif", v, loop=0)
    folder = _video(rng, 5)
    _write_frames(str(tmp_path / "test" / "frames_here"), folder)
    rows = [(n, f"translation of {n}") for n in gifs] + [("frames_here", "from a frame folder")]
    (tmp_path / "test.tsv").write_text("name\ttranslation\n" + "".join(f"{n}\t{t}\n" for n, t in rows))
    samples = data.load_split(str(tmp_path), "test")
    assert [(s.name, s.text, s.gloss) for s in samples] == [(n, t, None) for n, t in rows]
    for s in samples:
        np.testing.assert_array_equal(data.read_frames(s), gifs.get(s.name, folder))
    ds = data.SignDataset(samples, data.DataConfig(image_size=16), train=False)
    batch = data.collate([ds[i] for i in range(len(ds))])
    assert batch["frames"].shape[2:] == (3, 16, 16) and batch["clip_mask"].sum(1).tolist() == [1, 1, 1, 1]


def test_frames_of_every_pillow_mode(tmp_path):
    """RGBA/LA composited over black, grey and palette to RGB, 16-bit grey scaled to 8 bits: PNGs written by Pillow."""
    rng = np.random.default_rng()
    H, W = 19, 23
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    la = rng.integers(0, 256, (H, W, 2), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    idx, palette = rng.integers(0, 7, (H, W), dtype=np.uint8), rng.integers(0, 256, (7, 3), dtype=np.uint8)
    over_black = lambda c, a: np.round(c.astype(np.float64) * a / 255)  # float64 reference of the compositing
    grey = lambda x: np.repeat(x[..., None], 3, -1)
    frames = [(Image.fromarray(rgba[..., :3]), {}, rgba[..., :3]),
              (Image.fromarray(rgba), {}, over_black(rgba[..., :3], rgba[..., 3:])),
              (Image.fromarray(la[..., 0]), {}, grey(la[..., 0])),
              (Image.fromarray(la), {}, grey(over_black(la[..., 0], la[..., 1]))),
              (Image.fromarray(grey16), {}, grey(np.round(grey16 / 257))),
              (Image.fromarray(idx), {}, palette[idx]),
              (Image.fromarray(idx), {"transparency": 0}, palette[idx] * (idx > 0)[..., None])]
    os.makedirs(tmp_path / "v")
    for t, (im, kw, _) in enumerate(frames, 1):
        if im.mode == "L" and t > 5:
            im.putpalette(palette.flatten().tolist())  # L -> P
        im.save(tmp_path / "v" / f"images{t:04d}.png", **kw)
    assert [Image.open(tmp_path / "v" / f"images{t:04d}.png").mode for t in range(1, 8)] == \
        ["RGB", "RGBA", "L", "LA", "I;16", "P", "P"]
    v = data.read_frames(data.Sample("v", "", None, str(tmp_path / "v")))
    assert v.shape == (7, H, W, 3) and v.dtype == np.uint8
    for t, (_, _, ref) in enumerate(frames):
        np.testing.assert_array_equal(v[t], ref.astype(np.uint8), err_msg=f"frame {t + 1}")


@pytest.mark.parametrize("pix_fmt, H, W", [("yuv420p", 46, 62), ("yuv444p", 45, 61)])  # 4:2:0 needs even sizes
def test_h264_mp4_frame_for_frame(tmp_path, pix_fmt, H, W):
    import av  # a requirement: without it an mp4 cannot be read at all
    n = 23
    y, x = np.mgrid[:H, :W]
    video = np.stack([np.stack([128 + 70 * np.sin(x / 25 + t / 4), 128 + 70 * np.cos(y / 20 - t / 5),
                                128 + 60 * np.sin((x + y) / 30 + t / 3)], -1) for t in range(n)])  # smooth, moving
    video = video.round().astype(np.uint8)  # (n, H, W, 3)
    path = str(tmp_path / "clip.mp4")
    with av.open(path, "w") as f:  # H.264 at high quality, B-frames included (x264's default)
        stream = f.add_stream("libx264", rate=25, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        for frame in video:
            f.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        f.mux(stream.encode())  # flush the encoder
    v = data.read_frames(data.Sample("clip", "", None, path))
    assert v.shape == video.shape and v.dtype == np.uint8
    err = np.abs(v.astype(int) - video)  # measured: max 9, mean 1.6 per frame (4:2:0); consecutive frames differ by ~10
    assert err.max() <= 16 and err.mean(axis=(1, 2, 3)).max() < 3
    assert (np.abs(v[1:].astype(int) - video[:-1]).mean(axis=(1, 2, 3)) > 5).all()  # each frame in its place


# ---------------------------------------------------------------------------------------------------------------
# bad input: a clear error naming the file and row; skip_bad skips, counts and reports

def test_missing_frame_folder_and_skip_bad(tmp_path, capsys):
    root, _ = _phoenix(tmp_path, np.random.default_rng())
    gone = os.path.join(root, "features", "fullFrame-210x260px", "dev", PHOENIX_ROWS[2][0])
    os.rename(gone, gone + "_moved")
    with pytest.raises(data.DataError, match=rf"PHOENIX-2014-T.dev.corpus.csv line 4 \({PHOENIX_ROWS[2][0]}\)"):
        data.load_split(root, "dev")
    skipped = []
    samples = data.load_split(root, "dev", skip_bad=True, skipped=skipped)
    assert [s.name for s in samples] == [r[0] for r in PHOENIX_ROWS[:2]]
    assert [n for n, _ in skipped] == [PHOENIX_ROWS[2][0]] and "missing frame folder" in skipped[0][1]
    assert "skipped 1 bad sample" in capsys.readouterr().err


def test_corrupt_image_and_empty_video(tmp_path):
    rng = np.random.default_rng()
    root, videos = _phoenix(tmp_path, rng)
    samples = data.load_split(root, "dev")
    bad = os.path.join(samples[0].path, "images0002.png")
    with open(bad, "r+b") as f:
        f.truncate(30)
    with pytest.raises(data.DataError, match="unreadable image .*images0002.png"):
        data.read_frames(samples[0])
    for f in os.listdir(samples[2].path):
        os.remove(os.path.join(samples[2].path, f))
    with pytest.raises(data.DataError, match="no frames"):
        data.read_frames(samples[2])
    cfg = data.DataConfig(image_size=21, skip_bad=True)
    batch = data.collate([data.SignDataset(samples, cfg, train=False)[i] for i in range(3)])
    assert batch["name"] == [samples[1].name] and [n for n, _ in batch["skipped"]] == [samples[0].name, samples[2].name]
    with pytest.raises(data.DataError):
        data.SignDataset(samples, data.DataConfig(skip_bad=False), train=False)[0]
    assert data.collate([{"skipped": ("x", "why")}]) == {"skipped": [("x", "why")]}


def test_frames_of_different_sizes(tmp_path):
    rng = np.random.default_rng()
    _write_frames(str(tmp_path / "v"), _video(rng, 3))
    Image.fromarray(_video(rng, 1, 20, 26)[0]).save(tmp_path / "v" / "images0004.png")
    with pytest.raises(data.DataError, match="images0004.png is"):
        data.read_frames(data.Sample("v", "", None, str(tmp_path / "v")))


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".gif"])
def test_unreadable_or_empty_video_file(tmp_path, ext):
    for content in (b"", b"not a video at all" * 10):
        p = tmp_path / f"broken{ext}"
        p.write_bytes(content)
        with pytest.raises(data.DataError, match=f"broken{ext}"):
            data.read_frames(data.Sample("broken", "", None, str(p)))


@pytest.mark.parametrize("header, match", [
    ("name|video|start|end|speaker|orth", r"lacks columns \['translation'\]"),
    ("name,video,start,end,speaker,orth,translation", "no '\\|' delimiter .*found ','"),
])
def test_bad_csv_header(tmp_path, header, match):
    root, _ = _phoenix(tmp_path, np.random.default_rng(), header=header)
    with pytest.raises(data.DataError, match=match):
        data.load_split(root, "dev")


def test_bad_rows_bad_utf8(tmp_path):
    root, _ = _phoenix(tmp_path, np.random.default_rng())
    csv = os.path.join(root, data.PHOENIX_CSV.format(split="dev"))
    lines = open(csv, "rb").read().splitlines()
    lines[2] = lines[2].replace("ö".encode(), b"\xf6")  # latin-1, not UTF-8
    lines.append(b"only|three|fields")
    open(csv, "wb").write(b"\n".join(lines) + b"\n")
    with pytest.raises(data.DataError, match=r"corpus.csv line 3: not valid UTF-8"):
        data.load_split(root, "dev")
    skipped = []
    samples = data.load_split(root, "dev", skip_bad=True, skipped=skipped)
    assert [s.name for s in samples] == [PHOENIX_ROWS[0][0], PHOENIX_ROWS[2][0]]
    assert [n for n, _ in skipped] == ["line 3", "line 5"] and "3 fields, header has 7" in skipped[1][1]


def test_names_that_leave_the_data_set(tmp_path, capsys):
    """A row whose name is absolute, climbs out with '..' or names the frame folder itself is a bad row, in all three
    layouts; frames a row could reach that way are written (and readable), so only the check stops it."""
    rng = np.random.default_rng()
    outside = str(tmp_path / "outside")
    bad = ["../../../../outside", outside, "", "a/../../../../../outside"]  # the fixture writes frames where they say
    root, _ = _phoenix(tmp_path, rng, rows=PHOENIX_ROWS[:1] + [(n, "Signer01", "A", "a") for n in bad])
    with pytest.raises(data.DataError, match=rf"corpus.csv line 3 \({re.escape(bad[0])}\): the name leads out"):
        data.load_split(root, "dev")
    skipped = []
    assert [s.name for s in data.load_split(root, "dev", skip_bad=True, skipped=skipped)] == [PHOENIX_ROWS[0][0]]
    assert [n for n, _ in skipped] == bad and "skipped 4 bad sample" in capsys.readouterr().err
    assert all(f"line {k + 3} ({n}): the name leads out" in r for k, (n, r) in enumerate(skipped))

    csl = tmp_path / "csl"  # CSL-Daily: the name comes from the pickle
    os.makedirs(csl / "sentence_label")
    with open(csl / "sentence_label" / "csl2020ct_v2.pkl", "wb") as f:
        pickle.dump({"info": [{"name": "../../../outside", "label_word": ["a"], "label_gloss": ["A"]}]}, f)
    (csl / "sentence_label" / "split_1.txt").write_text("name|split\n../../../outside|train\n")
    with pytest.raises(data.DataError, match=r"csl2020ct_v2.pkl info\[0\] \(../../../outside\): the name leads out"):
        data.load_split(str(csl), "train")

    plain = tmp_path / "plain"  # plain folder: a video anywhere, or frames beside the split folder
    os.makedirs(plain / "test")
    iio.imwrite(tmp_path / "clip.gif", _video(rng, 3), loop=0)
    _write_frames(str(plain / "beside"), _video(rng, 2))
    (plain / "test.tsv").write_text(f"name\ttranslation\n{tmp_path / 'clip'}\ta\n../beside\tb\n")
    with pytest.raises(data.DataError, match=rf"test.tsv line 2 \({re.escape(str(tmp_path / 'clip'))}\): the name"):
        data.load_split(str(plain), "test")
    skipped = []
    with pytest.raises(data.DataError, match="no usable samples"):
        data.load_split(str(plain), "test", skip_bad=True, skipped=skipped)
    assert [n for n, _ in skipped] == [str(tmp_path / "clip"), "../beside"]


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling would create a file
        return (open, (self.path, "w"))


def test_pickle_with_foreign_objects_is_refused(tmp_path):
    for payload in (_Evil(str(tmp_path / "pwned")), np.arange(3)):
        root = tmp_path / "csl"
        os.makedirs(root / "sentence_label", exist_ok=True)
        (root / "sentence_label" / "split_1.txt").write_text("name|split\nS0|train\n")
        with open(root / "sentence_label" / "csl2020ct_v2.pkl", "wb") as f:
            pickle.dump({"info": [{"name": "S0", "label_word": ["a"], "label_gloss": ["A"], "x": payload}]}, f)
        with pytest.raises(data.DataError, match=r"csl2020ct_v2.pkl.*refused global"):
            data.load_split(str(root), "train")
    assert not (tmp_path / "pwned").exists()


def test_csl_bad_entries(tmp_path):
    root = tmp_path / "csl"
    os.makedirs(root / "sentence_label")
    os.makedirs(root / "sentence" / "frames_512x512" / "S1")
    with open(root / "sentence_label" / "csl2020ct_v2.pkl", "wb") as f:
        pickle.dump({"info": [{"name": "S0", "label_gloss": ["A"]}, {"name": "S1", "label_word": ["b"],
                                                                     "label_gloss": ["B"]}]}, f)
    (root / "sentence_label" / "split_1.txt").write_text("name|split\nS0|train\nS1|train\nS2|train\n")
    with pytest.raises(data.DataError, match=r"info\[0\] \(S0\): needs"):
        data.load_split(str(root), "train")
    skipped = []
    assert [s.name for s in data.load_split(str(root), "train", True, skipped)] == ["S1"]
    assert [n for n, _ in skipped] == ["info[0]", "S2"] and "not in" in skipped[1][1]


def test_unknown_layout(tmp_path):
    with pytest.raises(data.DataError, match="Phoenix-2014T.*CSL-Daily.*plain folder"):
        data.load_split(str(tmp_path), "train")
