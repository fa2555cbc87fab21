"""Sign language video data (Sec. 3.2, 4.1): the clip grid (13-frame clips, a new one every 4 frames), Phoenix-2014T,
CSL-Daily and plain-folder loaders, a Dataset that pads each video to the clip grid, and a synthetic sign language in
the Phoenix-2014T layout, the embedded default (`python data.py --make-synthetic data/synthetic`)."""
import argparse
import functools
import json
import math
import multiprocessing
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import dataclass

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image  # Pillow comes with imageio

CLIP_LEN, CLIP_STRIDE = 13, 4  # Sec. 4.1: "Each clip consists of 13 frames and the gap between neighboring clips is 4"

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTS, VIDEO_EXTS = (".png", ".jpg", ".jpeg", ".bmp"), (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
PHOENIX_CSV = "annotations/manual/PHOENIX-2014-T.{split}.corpus.csv"
PHOENIX_FRAMES = "features/fullFrame-210x260px/{split}"
PHOENIX_COLUMNS = ("name", "video", "start", "end", "speaker", "orth", "translation")
CSL_PKL, CSL_SPLIT = "sentence_label/csl2020ct_v2.pkl", "sentence_label/split_1.txt"
CSL_FRAMES = "sentence/frames_512x512"
GROUND_TRUTH = "ground_truth.json"




def num_clips(n_frames):
    """T = 1 + ceil(max(N - 13, 0) / 4) clips cover N >= 1 frames; clip t holds frames 4t .. 4t + 12."""
    if n_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {n_frames}")
    return 1 + -(-max(n_frames - CLIP_LEN, 0) // CLIP_STRIDE)


def padded_length(n_clips):
    """Frames spanned by n_clips clips: 13 + 4 (T - 1); a video is padded with its last frame to this length."""
    return CLIP_LEN + CLIP_STRIDE * (n_clips - 1)


class DataError(ValueError):
    """A bad file, row or frame; the message names it."""


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    image_size: int = 64          # frames are resized to image_size x image_size (paper: 224 for ResNet18)
    augment: bool = True          # random crop + temporal speed jitter, training set only
    crop_min_area: float = 0.8    # a random crop keeps at least this fraction of the frame area (aspect kept)
    speed_jitter: float = 0.2     # a training video is resampled at a speed drawn from [1 - j, 1 + j]
    skip_bad: bool = False        # skip (and report) bad samples instead of stopping


@dataclass
class Sample:
    name: str
    text: str                   # the spoken-language translation
    gloss: str | None           # space-separated glosses, where the data set has them
    path: str                   # a frame folder or a video file
    signer: str = ""


def read_frames(sample: Sample) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of a video file, or of a frame folder: its images in natural order, in any mode."""
    p = sample.path
    if not os.path.isdir(p):
        kw = {"mode": "RGB"} if p.lower().endswith(".gif") else {"plugin": "pyav", "format": "rgb24"}
        try:  # GIF through Pillow; other videos through imageio's pyav plugin (FFmpeg, shipped in the `av` wheel)
            v = np.asarray(iio.imread(p, index=None, **kw))
        except Exception as e:
            raise DataError(f"unreadable video {p}: {e}") from e
        if v.ndim != 4 or len(v) == 0 or v.shape[-1] != 3 or v.dtype != np.uint8:
            raise DataError(f"empty or malformed video {p}: array of shape {v.shape}, {v.dtype}")
        return v
    key = lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f)]  # 'images10' after 'images9'
    frames = []
    for name in sorted((f for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTS)), key=key):
        f = os.path.join(p, name)
        try:
            with Image.open(f) as im:
                if im.mode.startswith("I"):  # 16-bit grey (I;16) or 32-bit integer: 0..65535 -> 0..255
                    im = Image.fromarray(np.clip(np.asarray(im, np.float64) / 257, 0, 255).round().astype(np.uint8))
                if im.mode != "RGB" or "transparency" in im.info:  # our choice: alpha composited over black,
                    im = im.convert("RGBA").convert("RGBa")  # as RGBa holds it: colour * alpha / 255, rounded
                frames.append(np.asarray(im)[..., :3])
        except Exception as e:  # Pillow raises several types for truncated or foreign files
            raise DataError(f"unreadable image {f}: {e}") from e
        if frames[-1].shape != frames[0].shape:
            raise DataError(f"frame {f} is {frames[-1].shape}, the first frame of {p} is {frames[0].shape}")
    if not frames:
        raise DataError(f"no frames ({'/'.join(IMAGE_EXTS)}) in {p}")
    return np.stack(frames)


def _rows(path, delim, columns):
    """(tag "line N", dict or DataError) per row of a delimited UTF-8 file whose header holds `columns`, in any case."""
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}")
    with open(path, "rb") as f:
        lines = [(i, b) for i, b in enumerate(f.read().splitlines(), 1) if b.strip()]
    cols = lines[0][1].decode("utf-8-sig", "replace").lower().split(delim) if lines else []
    if missing := [c for c in columns if c not in cols]:  # an empty file, the wrong delimiter, a missing column
        found = [d for d in ",;\t|" if len(cols) == 1 and d in cols[0]]
        raise DataError(f"{path}: header {cols} lacks columns {missing}" +
                        (f", it has no {delim!r} delimiter (found {found[0]!r})" if found else ""))
    for i, b in lines[1:]:
        try:
            fields = b.decode("utf-8").split(delim)
        except UnicodeDecodeError as e:
            yield f"line {i}", DataError(f"{path} line {i}: not valid UTF-8 ({e})")
            continue
        yield f"line {i}", dict(zip(cols, fields)) if len(fields) == len(cols) else \
            DataError(f"{path} line {i}: {len(fields)} fields, header has {len(cols)}")


def _samples(path, rows, folder, suffixes, fields):
    """(name, Sample or DataError) per (tag, row) of annotation file `path`; the video: first folder/<name><suffix>."""
    for tag, row in rows:
        if isinstance(row, DataError):
            yield tag, row
            continue
        name, where = row["name"], f"{path} {tag} ({row['name']})"
        base = os.path.normpath(os.path.join(folder, name))  # annotations are untrusted; symlinks inside are followed
        if not base.startswith(os.path.join(os.path.normpath(folder), "")):
            yield name, DataError(f"{where}: the name leads out of {folder}")
        elif found := [base + x for x in suffixes if os.path.exists(base + x)]:
            yield name, Sample(name=name, path=found[0], **fields(row))
        else:
            yield name, DataError(f"{where}: missing frame folder or video {base}")


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # a pickle can run code: only plain containers, strings and numbers pass
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _csl(root, split):
    pkl = os.path.join(root, CSL_PKL)
    try:
        with open(pkl, "rb") as f:
            info = _PlainUnpickler(f).load()["info"]
        if not isinstance(info, list):
            raise TypeError(f"'info' is a {type(info).__name__}")
    except Exception as e:
        raise DataError(f"{pkl}: not a CSL-Daily annotation dict with an 'info' list ({e})") from e
    split_rows = [r for _, r in _rows(os.path.join(root, CSL_SPLIT), "|", ("name", "split"))]
    if errors := [r for r in split_rows if isinstance(r, DataError)]:
        raise errors[0]  # the split file defines the splits: a bad row there is never skipped
    names, rows = {r["name"] for r in split_rows if r["split"] == split}, []
    for i, e in enumerate(info):
        name = e.get("name") if isinstance(e, dict) else None
        if name is None or name in names:
            names.discard(name)
            tag = f"info[{i}]"
            ok = isinstance(name, str) and all(isinstance(e.get(k), list) for k in ("label_word", "label_gloss"))
            rows.append((tag, e if ok else DataError(f"{pkl} {tag} ({name}): needs name, label_word, label_gloss")))
    rows += [(name, DataError(f"{CSL_SPLIT}: {name} is not in {pkl}")) for name in sorted(names)]
    return _samples(pkl, rows, os.path.join(root, CSL_FRAMES), ("",), lambda e: dict(
        text="".join(map(str, e["label_word"])),  # Chinese: words joined without spaces; metrics use characters
        gloss=" ".join(map(str, e["label_gloss"])), signer=str(e.get("signer", ""))))


def detect_format(root: str, split: str) -> str:
    for fmt, f in (("phoenix", PHOENIX_CSV.format(split=split)), ("csl", CSL_PKL), ("folder", f"{split}.tsv")):
        if os.path.isfile(os.path.join(root, f)):
            return fmt
    raise DataError(f"{root}: no {PHOENIX_CSV.format(split=split)} (Phoenix-2014T), {CSL_PKL} (CSL-Daily) "
                    f"or {split}.tsv (plain folder: name<TAB>translation, videos or frame folders in {split}/)")


def load_split(root: str, split: str, skip_bad: bool = False, skipped: list | None = None) -> list[Sample]:
    """The samples of a split. A bad row raises DataError; skip_bad leaves it out, on stderr and in `skipped`."""
    fmt, samples, bad = detect_format(root, split), [], []
    if fmt == "phoenix":  # frames in <name>/ or, as some copies have it, in <name>/1/
        csv = os.path.join(root, PHOENIX_CSV.format(split=split))
        rows = _samples(csv, _rows(csv, "|", PHOENIX_COLUMNS), os.path.join(root, PHOENIX_FRAMES.format(split=split)),
                        (os.sep + "1", ""), lambda r: dict(text=r["translation"], gloss=r["orth"], signer=r["speaker"]))
    elif fmt == "folder":  # a frame folder <name>/ or a video <name>.mp4 etc.
        tsv = os.path.join(root, f"{split}.tsv")
        rows = _samples(tsv, _rows(tsv, "\t", ("name", "translation")), os.path.join(root, split), ("",) + VIDEO_EXTS,
                        lambda r: dict(text=r["translation"], gloss=r.get("gloss")))
    else:
        rows = _csl(root, split)
    for name, s in rows:
        if isinstance(s, Sample):
            samples.append(s)
        elif skip_bad:
            bad.append((name, str(s)))
        else:
            raise s
    if bad:
        print(f"data: skipped {len(bad)} bad sample(s) of {root} {split}:", *(f"  {n}: {r}" for n, r in bad),
              sep="\n", file=sys.stderr)
        if skipped is not None:
            skipped.extend(bad)
    if not samples:
        raise DataError(f"{root}: split {split!r} has no usable samples")
    return samples


def read_ground_truth(root: str) -> dict:
    with open(os.path.join(root, GROUND_TRUTH), encoding="utf-8") as f:
        return json.load(f)


def clip_labels(segments: list, n_frames: int) -> list:
    """Per clip, the label of the segment [label, start, end) holding the clip's middle frame (None if none)."""
    mid = [min(t * CLIP_STRIDE + CLIP_LEN // 2, n_frames - 1) for t in range(num_clips(n_frames))]
    return [next((lab for lab, a, b in segments if a <= m < b), None) for m in mid]


class SignDataset(torch.utils.data.Dataset):
    """Items: a video's frames, ImageNet-normalized and padded to the clip grid, with its name, text and gloss, and
    frame_ids, the source frame of each (after the speed change; bench/ablations.py's oracle reads it)."""

    def __init__(self, samples: list[Sample], cfg: DataConfig, train: bool):
        self.samples, self.cfg, self.train = samples, cfg, train
        self.mean, self.std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s, cfg = self.samples[i], self.cfg
        try:
            v = read_frames(s)
        except DataError as e:
            if not cfg.skip_bad:
                raise
            print(f"data: skipping {s.name}: {e}", file=sys.stderr)
            return {"skipped": (s.name, str(e))}
        augment, kept = self.train and cfg.augment, np.arange(len(v))
        if augment and cfg.speed_jitter > 0:  # temporal speed jitter: resample at speed r (r > 1: faster, fewer frames)
            r = 1 + cfg.speed_jitter * (2 * torch.rand(()).item() - 1)  # torch RNG: seeded per worker, resumable
            kept = np.minimum(np.round(np.arange(0, len(v), r)).astype(int), len(v) - 1)
            v = v[kept]
        x = torch.from_numpy(v).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8, a view
        if augment and cfg.crop_min_area < 1:  # one random crop for the whole video, aspect ratio kept
            H, W = x.shape[-2:]
            k = math.sqrt(cfg.crop_min_area + (1 - cfg.crop_min_area) * torch.rand(()).item())
            h, w = max(1, round(H * k)), max(1, round(W * k))
            y0, x0 = int(torch.randint(H - h + 1, ())), int(torch.randint(W - w + 1, ()))
            x = x[:, :, y0:y0 + h, x0:x0 + w]
        N, S = len(x), cfg.image_size
        out = torch.empty(padded_length(num_clips(N)), 3, S, S)  # (N_pad, 3, S, S)
        if x.shape[-2:] != (S, S):  # the whole frame to a square: aspect not kept (simpler)
            x = F.interpolate(x.contiguous().float(), size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        out[:N] = x
        out[N:] = out[N - 1]  # pad to the clip grid by repeating the last frame
        out.sub_(self.mean * 255).div_(self.std * 255)  # ImageNet normalization of x / 255
        return {"frames": out, "name": s.name, "text": s.text, "gloss": s.gloss, "frame_ids": kept}


def collate(items: list[dict]) -> dict:
    """SignDataset items -> a batch: frames padded with zeros, the masks of the real frames and clips, the other
    fields as lists; only {"skipped": [(name, reason)]} if every item was skipped."""
    skipped = [it["skipped"] for it in items if "skipped" in it]
    if not (items := [it for it in items if "skipped" not in it]):
        return {"skipped": skipped}
    n_frames = torch.tensor([len(it["frames"]) for it in items])  # each padded to its clip grid: 13 + 4 (T - 1)
    n_clips = torch.tensor([num_clips(int(n)) for n in n_frames])
    frames = torch.nn.utils.rnn.pad_sequence([it["frames"] for it in items], batch_first=True)  # zeros past N_pad
    return {"frames": frames,                                                            # (B, N_max, 3, S, S)
            "frame_mask": torch.arange(frames.shape[1])[None] < n_frames[:, None],        # (B, N_max)
            "clip_mask": torch.arange(int(n_clips.max()))[None] < n_clips[:, None],       # (B, T_max)
            "skipped": skipped, **{k: [it[k] for it in items] for k in items[0] if k != "frames"}}


# The synthetic sign language: primitives ("characters", Sec. 3.2) -> glosses ("words", Sec. 3.3) -> sentences of a
# weather-forecast grammar, rendered as a signer with two gloved hands. Gloss order is time-region-content (like DGS);
# the English puts the region last and adds function words the glosses do not show.

SIZES = {"tiny": (12, 4, 4), "default": (600, 100, 100), "large": (2400, 200, 200)}  # train, dev, test videos
TIMES = {"TODAY": "today", "TOMORROW": "tomorrow", "TONIGHT": "tonight", "MORNING": "in the morning",
         "EVENING": "in the evening", "WEEKEND": "at the weekend"}
REGIONS = {"NORTH": "in the north", "SOUTH": "in the south", "EAST": "in the east", "WEST": "in the west",
           "COAST": "on the coast", "MOUNTAIN": "in the mountains", "ISLAND": "on the islands"}
WEATHER = {  # gloss: (clause, with STRONG, with NOT)
    "RAIN": ("it will rain", "heavy rain", "rain"), "SNOW": ("it will snow", "heavy snow", "snow"),
    "SUN": ("the sun will shine", "bright sunshine", "sunshine"),
    "CLOUD": ("it will be cloudy", "thick clouds", "clouds"), "FOG": ("there will be fog", "dense fog", "fog"),
    "STORM": ("there will be storms", "severe storms", "storms"), "WIND": ("it will be windy", "strong wind", "wind"),
    "SHOWER": ("there will be showers", "heavy showers", "showers"),
    "THUNDER": ("there will be thunderstorms", "severe thunderstorms", "thunderstorms"),
    "FROST": ("there will be frost", "hard frost", "frost")}
TEMPS, NUMBERS = ("WARM", "COLD", "MILD", "HOT"), ("ZERO", "FIVE", "TEN", "FIFTEEN", "TWENTY", "THIRTY")
GLOSSES = (*TIMES, *REGIONS, *WEATHER, *TEMPS, *NUMBERS, "STRONG", "NOT", "TEMPERATURE", "DEGREE", "RISE", "FALL")
SHAPES, MOTIONS = ("fist", "flat", "point", "ring", "pinch"), ("hold", "line", "circle", "shake", "tap")
LOCATIONS = ((.52, .18), (.68, .30), (.50, .44), (.36, .60), (.52, .64), (.68, .60), (.84, .42), (.72, .82))  # x, y
REST = ((.74, .95), (.26, .95))  # dominant, non-dominant hand at rest
BLOBS = {"fist": (1, 1, 0), "flat": (1.7, .6, 0), "point": (.55, 1.7, 0), "pinch": (.55, .55, 0),
         "ring": (1.5, 1.5, .47), "body": (1, 1.45, 0)}  # ellipse half-axes in hand radii; the hole of a ring


def _sentence(rng):
    """(glosses, English, the (region, weather) pairs signed together) of one sentence of the weather grammar."""
    pick = lambda xs: list(xs)[rng.integers(len(xs))]
    t, r, w, k = pick(TIMES), pick(REGIONS), pick(WEATHER), rng.choice(7, p=[.18, .1, .1, .16, .14, .16, .16])
    T, R, (clause, strong, noun) = TIMES[t], REGIONS[r], WEATHER[w]
    if k == 0:
        return [t, r, w], f"{T} {clause} {R}", [(r, w)]
    if k == 1:
        return [t, r, w, "STRONG"], f"{T} there will be {strong} {R}", [(r, w)]
    if k == 2:
        return [t, r, w, "NOT"], f"{T} there will be no {noun} {R}", [(r, w)]
    if k == 3:
        r2, w2 = pick([x for x in REGIONS if x != r]), pick([x for x in WEATHER if x != w])
        return [t, r, w, r2, w2], f"{T} {clause} {R} and {WEATHER[w2][0]} {REGIONS[r2]}", [(r, w), (r2, w2)]
    if k == 4:
        temp = pick(TEMPS)
        return [t, r, temp], f"{T} it will be {temp.lower()} {R}", []
    if k == 5:
        num = pick(NUMBERS)
        return [t, r, "TEMPERATURE", num, "DEGREE"], f"{T} temperatures will reach {num.lower()} degrees {R}", []
    trend = pick(["RISE", "FALL"])
    return [t, r, "TEMPERATURE", trend], f"{T} temperatures will {trend.lower()} {R}", []


def _language(rng):
    """Primitives, lexicon, signers and held-out (region, weather) pairs of one seed."""
    # shape a, motion b, location (a + 3b) mod 8: any two primitives differ in at least two of the three
    combos = [(a, b, (a + 3 * b) % 8) for a in range(5) for b in range(5)]
    prims = [dict(shape=SHAPES[a], motion=MOTIONS[b], loc=LOCATIONS[l], angle=int(rng.integers(4)) * math.pi / 2,
                  nondom=str(rng.choice(["rest", "mirror", "base"])), frames=int(rng.integers(6, 9)))
             for a, b, l in (combos[i] for i in sorted(rng.permutation(25)[:24]))]
    lexicon = {}
    for g in GLOSSES:  # 2-4 primitives, no primitive twice in a row, every gloss a different sequence
        seq = None
        while seq is None or seq in lexicon.values():
            seq = [int(rng.integers(24))]
            for _ in range(rng.choice([1, 2, 3], p=[.6, .3, .1])):
                seq.append(int((seq[-1] + 1 + rng.integers(23)) % 24))
        lexicon[g] = seq
    colour = lambda lo, hi: [int(c) for c in rng.integers(lo, hi, 3)]
    signers = [dict(scale=float(rng.uniform(.85, 1.1)), dx=float(rng.uniform(-.06, .06)),
                    dy=float(rng.uniform(-.04, .04)), bg=colour(60, 170), shirt=colour(0, 110), glove=colour(0, 256),
                    noise=float(rng.uniform(2, 6)), speckle=float(rng.uniform(.01, .04)),
                    skin=[[235, 200, 170], [200, 150, 110], [140, 95, 65], [250, 215, 190]][rng.integers(4)])
               for _ in range(8)]
    for s in signers:  # gloves bright and saturated, so hands stand out from shirt and background
        i, j = rng.permutation(3)[:2]
        s["glove"][i], s["glove"][j] = 255, int(rng.integers(0, 60))
    heldout = list(zip(rng.permutation(list(REGIONS) * 2)[:8].tolist(), rng.permutation(list(WEATHER))[:8].tolist()))
    return prims, lexicon, signers, heldout


def _splits(rng, sizes, heldout):
    """Train: every gloss (room allowing), no held-out pair. Dev/test: unseen, every other signs a held-out pair."""
    def draw(ok):
        for _ in range(100_000):
            g, text, pairs = _sentence(rng)
            if ok(g, novel := any(p in heldout for p in pairs)):
                return g, text, novel
        raise RuntimeError("the grammar cannot satisfy the split constraints")
    train = [draw(lambda g, novel: c in g and not novel) for c in GLOSSES]
    train = (train + [draw(lambda g, novel: not novel) for _ in range(sizes[0] - len(train))])[:sizes[0]]
    out = {"train": [train[i] for i in rng.permutation(len(train))]}
    used = {tuple(g) for g, _, _ in train}
    for split, n in zip(("dev", "test"), sizes[1:]):
        out[split] = []
        for i in range(n):
            out[split].append(draw(lambda g, novel: novel == (i % 2 == 0) and tuple(g) not in used))
            used.add(tuple(out[split][-1][0]))
    return out


def _hand(p, u):
    """Dominant-hand position of primitive p at phase u in [0, 1]: its location plus its motion."""
    s, (x, y) = 2 * math.pi * u, p["loc"]
    dx, dy = {"hold": (0, 0), "line": ((.22 * u - .11) * math.cos(p["angle"]), (.22 * u - .11) * math.sin(p["angle"])),
              "circle": (.08 * math.cos(s), .08 * math.sin(s)), "shake": (.07 * math.sin(2 * s), 0),
              "tap": (0, -.07 * abs(math.sin(s)))}[p["motion"]]
    return x + dx, y + dy


def _poses(glosses, lexicon, prims, rng, speed):
    """Per frame (dominant xy, shape, non-dominant xy, shape), and the primitive / gloss / hold segments."""
    rest = (REST[0], "fist", REST[1], "fist")
    frames, prim_seg, gloss_seg, holds = [rest] * int(rng.integers(2, 5)), [], [], []
    for g in glosses:
        g0 = len(frames)
        for pid in lexicon[g]:
            p, p0, (px, py) = prims[pid], len(frames), frames[-1][0]
            n = max(4, round(p["frames"] * speed * rng.uniform(.85, 1.15)))
            ntr, (x0, y0) = 1 if n < 6 else 2, _hand(p, 0)  # transition frames from the last position (co-articulation)
            for k in range(n):
                a = (k + 1) / (ntr + 1)
                xy = (px + a * (x0 - px), py + a * (y0 - py)) if k < ntr else _hand(p, (k - ntr) / max(n - ntr - 1, 1))
                nd = {"rest": (REST[1], "fist"), "mirror": ((1 - xy[0], xy[1]), p["shape"]), "base": ((.4, .7), "flat")}
                frames.append((xy, p["shape"], *nd[p["nondom"]]))
            prim_seg.append([pid, p0, len(frames)])
        if rng.random() < .25:  # a hold: the last pose repeated (a slow sign)
            h = int(rng.integers(3, 9))
            holds.append([len(frames), len(frames) + h])
            frames += [frames[-1]] * h
            prim_seg[-1][2] = len(frames)
        gloss_seg.append([g, g0, len(frames)])
    (x, y) = frames[-1][0]
    frames += [((x + a * (REST[0][0] - x), y + a * (REST[0][1] - y)), "fist", REST[1], "fist") for a in (.5, 1)]
    return frames + [rest] * int(rng.integers(1, 3)), prim_seg, gloss_seg, holds


def _write_video(root, lang, seed, H, W, job):
    """Write one video's PNG frames (body, head, two gloved hands as anti-aliased blobs, noise); return its truth."""
    (split, i, name, (glosses, _, novel)), (prims, lexicon, signers, _) = job, lang
    rng = np.random.default_rng([seed, ("train", "dev", "test").index(split), i])  # one stream per video
    signer, speed = int(rng.integers(len(signers))), round(float(rng.uniform(.7, 1.3)), 3)  # speed > 1: slower
    poses, prim_seg, gloss_seg, holds = _poses(glosses, lexicon, prims, rng, speed)
    look, m = signers[signer], min(H, W)
    sc = look["scale"]

    def blob(img, x, y, shape, r, colour):  # drawn in a window around the blob
        cx, cy, r = (.5 + sc * (x - .5) + look["dx"]) * W, (.6 + sc * (y - .6) + look["dy"]) * H, r * sc * m
        y0, y1 = max(int(cy - 2 * r - 2), 0), min(int(cy + 2 * r + 3), H)
        x0, x1 = max(int(cx - 2 * r - 2), 0), min(int(cx + 2 * r + 3), W)
        (a, b, hole), dx, dy = BLOBS[shape], np.arange(x0, x1)[None] - cx, np.arange(y0, y1)[:, None] - cy
        h = np.hypot(dx / (a * r), dy / (b * r))  # (h, w): < 1 inside the ellipse
        d = np.maximum(h - 1, hole - h) if hole else h - 1
        alpha = np.clip(.5 - d * r * min(a, b), 0, 1)[..., None]  # (h, w, 1); d * r * min(a, b) ~ distance in pixels
        img[y0:y1, x0:x1] += alpha * (np.asarray(colour, np.float32) - img[y0:y1, x0:x1])

    body = np.broadcast_to(np.asarray(look["bg"], np.float32), (H, W, 3)).copy()
    blob(body, .5, 1.0, "body", .34, look["shirt"])
    blob(body, .5, .25, "fist", .13, look["skin"])
    d = os.path.join(root, PHOENIX_FRAMES.format(split=split), name)
    os.makedirs(d)
    for t, (xy, shape, nxy, nshape) in enumerate(poses, 1):
        img = body.copy()
        blob(img, *nxy, nshape, .075, look["glove"])
        blob(img, *xy, shape, .075, look["glove"])
        low = rng.normal(0, look["noise"], (-(-H // 8), -(-W // 8), 3)).astype(np.float32)  # constant in 8x8 cells
        img += low.repeat(8, 0).repeat(8, 1)[:H, :W]  # lighting noise
        u = rng.random((H, W))  # sensor speckle: +-25 on a fraction `speckle` of the pixels
        img[u < look["speckle"] / 2] -= 25
        img[u > 1 - look["speckle"] / 2] += 25
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(f"{d}/images{t:04d}.png", compress_level=1)
    return {"split": split, "signer": signer, "speed": speed, "n_frames": len(poses), "novel_pair": novel,
            "glosses": gloss_seg, "primitives": prim_seg, "holds": holds}


def make_synthetic(root: str, seed: int = 0, size: str = "default", height: int = 64, width: int = 64,
                   workers: int = 1) -> dict:
    """Write the synthetic sign language to `root` and return its ground truth: the same bytes for any `workers`."""
    tmp = root.rstrip("/") + ".partial"  # written here, then renamed
    if os.path.exists(root) or (os.path.exists(tmp) and not os.path.isfile(os.path.join(tmp, ".partial"))):
        raise FileExistsError(f"{root} or {tmp} exists; remove it or choose another folder")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted run's leftovers (it has the .partial marker)
    os.makedirs(os.path.join(tmp, os.path.dirname(PHOENIX_CSV)))
    open(os.path.join(tmp, ".partial"), "w").close()
    rng = np.random.default_rng(seed)
    lang = _language(rng)
    splits = _splits(rng, SIZES[size], lang[3])
    jobs = [(s, i, f"synth-{s}-{i:05d}", row) for s in ("train", "dev", "test") for i, row in enumerate(splits[s])]
    write = functools.partial(_write_video, tmp, lang, seed, height, width)
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            entries = pool.map(write, jobs, chunksize=4)
    else:
        entries = list(map(write, jobs))
    for split in ("train", "dev", "test"):
        with open(os.path.join(tmp, PHOENIX_CSV.format(split=split)), "w", encoding="utf-8", newline="") as f:
            f.write("|".join(PHOENIX_COLUMNS) + "\n")
            f.writelines(f"{name}|{name}/1/*.png|-1|-1|Signer{e['signer'] + 1:02d}|{' '.join(glosses)}|{text}\n"
                         for (s, _, name, (glosses, text, _)), e in zip(jobs, entries) if s == split)
    gt = dict(zip(("primitives", "lexicon", "signers", "heldout_pairs"), lang), seed=seed, size=size, height=height,
              width=width, fps=25, videos={name: e for (_, _, name, _), e in zip(jobs, entries)},
              note="segments: [label, start, end) frame indices, 0-based, end exclusive; a hold (repeated pose) "
              "extends its primitive and gloss; novel_pair: signs a held-out pair")
    with open(os.path.join(tmp, GROUND_TRUTH), "w") as f:
        json.dump(gt, f, indent=1, sort_keys=True)
    os.remove(os.path.join(tmp, ".partial"))
    os.rename(tmp, root)
    return read_ground_truth(root)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-synthetic", metavar="ROOT", help="write the synthetic sign language to ROOT")
    for k, default in (("seed", 0), ("height", 64), ("width", 64), ("workers", 1)):
        ap.add_argument(f"--{k}", type=int, default=default)
    ap.add_argument("--size", choices=list(SIZES), default="default")
    ap.add_argument("--check", metavar="ROOT", help="load every split of ROOT and decode every video")
    ap.add_argument("--skip-bad", action="store_true")
    a = ap.parse_args()
    if a.make_synthetic:
        t0 = time.time()
        gt = make_synthetic(a.make_synthetic, a.seed, a.size, a.height, a.width, a.workers)
        print(f"wrote {len(gt['videos'])} videos to {a.make_synthetic} in {time.time() - t0:.1f} s")
    for split in ("train", "dev", "test") if a.check else ():  # decodes every video; bad ones reported on stderr
        ds = SignDataset(load_split(a.check, split, a.skip_bad), DataConfig(skip_bad=a.skip_bad), train=False)
        print(f"{split}: {sum('frames' in ds[i] for i in range(len(ds)))} of {len(ds)} videos read")
