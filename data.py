"""Sign language video data (Sec. 3.2, 4.1): the clip grid (13-frame clips, a new one every 4 frames), Phoenix-2014T,
CSL-Daily and plain-folder loaders, and a Dataset that pads each video to the clip grid. `python data.py ROOT` reads
every video of a data set; synthetic.py writes the embedded default, in the Phoenix-2014T layout."""
import argparse
import math
import os
import pickle
import re
import sys
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
    cache_mb: int = 1024          # decoded videos a dataset keeps in memory (MB): a video is decoded once


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


class SignDataset(torch.utils.data.Dataset):
    """Items: a video's frames, ImageNet-normalized and padded to the clip grid, with its name, text and gloss, and
    frame_ids, the source frame of each (after the speed change; bench/ablations.py's oracle reads it)."""

    def __init__(self, samples: list[Sample], cfg: DataConfig, train: bool):
        self.samples, self.cfg, self.train = samples, cfg, train
        self.mean, self.std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.cache, self.cached_bytes = {}, 0  # path -> uint8 frames, never written to (augmentation copies)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s, cfg = self.samples[i], self.cfg
        try:
            v = self.cache.get(s.path)
            if v is None:
                v = read_frames(s)
                if self.cached_bytes + v.nbytes <= cfg.cache_mb << 20:
                    self.cache[s.path], self.cached_bytes = v, self.cached_bytes + v.nbytes
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Read every video of every split of a data set (synthetic.py writes one)")
    ap.add_argument("root")
    ap.add_argument("--skip-bad", action="store_true")
    a = ap.parse_args()
    for split in ("train", "dev", "test"):  # decodes every video; bad ones reported on stderr
        ds = SignDataset(load_split(a.root, split, a.skip_bad), DataConfig(skip_bad=a.skip_bad), train=False)
        print(f"{split}: {sum('frames' in ds[i] for i in range(len(ds)))} of {len(ds)} videos read")
