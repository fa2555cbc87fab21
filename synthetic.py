"""Synthetic sign languages, the embedded default (the paper's data sets stand-ins): primitives ("characters", Sec.
3.2) -> glosses ("words", Sec. 3.3) -> sentences of a small grammar, rendered as a signer with two gloved hands, in the
Phoenix-2014T layout (data.py reads it), with the generator's truth in ground_truth.json (ours: for diagnostics).

    python synthetic.py data/synthetic                          # the weather language, the default
    python synthetic.py data/travel --kind travel --size tiny   # the travel language, a benchmark

"weather": forecasts; primitives told apart by hand shape, motion and location (any two differ in two of the three).
"travel": announcements at a station; primitives told apart by the path and direction of the movement alone.
"""
import argparse
import functools
import json
import math
import multiprocessing
import os
import shutil
import time

import numpy as np
from PIL import Image

from data import CLIP_LEN, CLIP_STRIDE, PHOENIX_COLUMNS, PHOENIX_CSV, PHOENIX_FRAMES, num_clips

GROUND_TRUTH = "ground_truth.json"

# The weather language: sentences of a weather-forecast grammar. Gloss order is time-region-content (like DGS); the
# English puts the region last and adds function words the glosses do not show.

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


def _weather_sentence(rng):
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


def _weather_language(rng):
    """Primitives (hand shape, motion, location), lexicon, signers and held-out (region, weather) pairs."""
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



# The travel language, a benchmark of ours (`--synthetic_kind=travel`): announcements at a station, signed by another
# population (darker rooms, gloves of low contrast, smaller hands). Its primitives differ by the path and direction of
# the movement only: the hand shape is drawn anew at each occurrence and the place moves a little.

TRAVEL_TIMES = {"TODAY": "today", "TOMORROW": "tomorrow", "MORNING": "this morning", "EVENING": "this evening",
                "NIGHT": "tonight", "SUNDAY": "on sunday"}
TRANSPORT = {"TRAIN": "train", "BUS": "bus", "FERRY": "ferry", "PLANE": "plane", "TRAM": "tram", "COACH": "coach"}
PLACES = {"AIRPORT": "the airport", "STATION": "the station", "HARBOUR": "the harbour", "CENTRE": "the city centre",
          "MARKET": "the market", "BEACH": "the beach", "HOSPITAL": "the hospital"}
COUNTS = {"TWO": "two", "THREE": "three", "FOUR": "four", "SIX": "six", "SEVEN": "seven", "EIGHT": "eight",
          "NINE": "nine", "TEN": "ten"}
TRAVEL_GLOSSES = (*TRAVEL_TIMES, *TRANSPORT, *PLACES, *COUNTS, "LEAVE", "LATE", "MINUTE", "CANCEL", "PLATFORM", "FULL",
                  "ARRIVE", "CLOCK", "NOT")
TRAVEL_WORDS = {**{g: w.split()[-1] for g, w in {**TRAVEL_TIMES, **TRANSPORT, **PLACES, **COUNTS}.items()},
                "LEAVE": "leaves", "LATE": "late", "CANCEL": "cancelled", "PLATFORM": "platform", "FULL": "full",
                "ARRIVE": "arrives", "NOT": "no"}  # the word that says each content gloss (MINUTE, CLOCK: template)
PATHS = ([("line", k * math.pi / 4, 1) for k in range(8)] + [("arc", k * math.pi / 2, 1) for k in range(4)]
         + [("circle", 0, 1), ("circle", 0, -1), ("zigzag", 0, 1), ("zigzag", math.pi / 2, 1), ("tap", 0, 1),
            ("shake", 0, 1)])  # 18 primitives: (motion, angle, turn)


def _travel_sentence(rng):
    """(glosses, English, the (transport, place) pairs signed together) of one travel announcement."""
    pick = lambda xs: list(xs)[rng.integers(len(xs))]
    t, v, p, n, k = pick(TRAVEL_TIMES), pick(TRANSPORT), pick(PLACES), pick(COUNTS), rng.choice(
        7, p=[.16, .16, .14, .14, .12, .14, .14])
    T, V, P, N = TRAVEL_TIMES[t], TRANSPORT[v], PLACES[p], COUNTS[n]
    forms = [([t, v, p, "LEAVE"], f"{T} the {V} to {P} leaves"),
             ([v, p, "LATE", n, "MINUTE"], f"the {V} to {P} is {N} minutes late"),
             ([t, v, p, "CANCEL"], f"{T} the {V} to {P} is cancelled"),
             ([v, p, "PLATFORM", n], f"the {V} to {P} leaves from platform {N}"),
             ([t, v, "FULL"], f"{T} the {V} is full"),
             ([v, p, "ARRIVE", n, "CLOCK"], f"the {V} from {P} arrives at {N} o'clock"),
             ([t, p, v, "NOT"], f"{T} there is no {V} to {P}")]
    return (*forms[k], [] if k == 4 else [(v, p)])


def _travel_language(rng):
    """Primitives (a path and its direction), lexicon, signers and held-out (transport, place) pairs."""
    prims = [dict(shape=None, motion=m, loc=(float(rng.uniform(.38, .66)), float(rng.uniform(.35, .65))), angle=a,
                  turn=t, nondom=str(rng.choice(["rest", "mirror"])), frames=int(rng.integers(6, 9)))
             for m, a, t in PATHS]
    lexicon, n = {}, len(prims)
    for g in TRAVEL_GLOSSES:  # 2-4 primitives, no primitive twice in a row, every gloss a different sequence
        seq = None
        while seq is None or seq in lexicon.values():
            seq = [int(rng.integers(n))]
            for _ in range(rng.choice([1, 2, 3], p=[.5, .35, .15])):
                seq.append(int((seq[-1] + 1 + rng.integers(n - 1)) % n))
        lexicon[g] = seq
    signers = []
    for _ in range(8):  # dim rooms; gloves 35-60 grey levels off the background, hands 3/4 the default's size
        bg = [int(c) for c in rng.integers(25, 110, 3)]
        glove = [int(np.clip(c + rng.choice([-1, 1]) * rng.integers(35, 60), 0, 255)) for c in bg]
        signers.append(dict(scale=float(rng.uniform(.8, 1.05)), dx=float(rng.uniform(-.08, .08)),
                            dy=float(rng.uniform(-.05, .05)), bg=bg, shirt=[int(c) for c in rng.integers(0, 255, 3)],
                            glove=glove, hand=.056, noise=float(rng.uniform(3, 7)),
                            speckle=float(rng.uniform(.02, .05)),
                            skin=[[225, 190, 160], [160, 110, 80], [110, 75, 50]][rng.integers(3)]))
    heldout = list(zip(rng.permutation(list(TRANSPORT) * 2)[:8].tolist(), rng.permutation(list(PLACES))[:8].tolist()))
    return prims, lexicon, signers, heldout


KINDS = {"weather": (_weather_language, _weather_sentence, GLOSSES),  # the embedded default
         "travel": (_travel_language, _travel_sentence, TRAVEL_GLOSSES)}


def _splits(rng, sizes, heldout, sentence, glosses):
    """Train: every gloss (room allowing), no held-out pair. Dev/test: unseen, every other signs a held-out pair."""
    def draw(ok):
        for _ in range(100_000):
            g, text, pairs = sentence(rng)
            if ok(g, novel := any(p in heldout for p in pairs)):
                return g, text, novel
        raise RuntimeError("the grammar cannot satisfy the split constraints")
    train = [draw(lambda g, novel: c in g and not novel) for c in glosses]
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
    """Dominant-hand position of primitive p at phase u in [0, 1]: its location plus its motion (angle: the direction
    of a line, an arc's start or a zigzag's axis; turn: a circle's sense)."""
    s, (x, y), a = 2 * math.pi * u, p["loc"], p["angle"]
    dx, dy = {"hold": (0, 0), "line": ((.22 * u - .11) * math.cos(a), (.22 * u - .11) * math.sin(a)),
              "circle": (.08 * math.cos(s), .08 * p.get("turn", 1) * math.sin(s)), "shake": (.07 * math.sin(2 * s), 0),
              "tap": (0, -.07 * abs(math.sin(s))),
              "arc": (.1 * math.cos(a + s / 2) - .1 * math.cos(a), .1 * math.sin(a + s / 2) - .1 * math.sin(a)),
              "zigzag": ((.12 * u - .06) * math.cos(a) - .08 * math.sin(2 * s) * math.sin(a),
                         (.12 * u - .06) * math.sin(a) + .08 * math.sin(2 * s) * math.cos(a))}[p["motion"]]
    return x + dx, y + dy


def _poses(glosses, lexicon, prims, rng, speed):
    """Per frame (dominant xy, shape, non-dominant xy, shape), and the primitive / gloss / hold segments."""
    rest = (REST[0], "fist", REST[1], "fist")
    frames, prim_seg, gloss_seg, holds = [rest] * int(rng.integers(2, 5)), [], [], []
    for g in glosses:
        g0 = len(frames)
        for pid in lexicon[g]:
            p, p0, (px, py) = prims[pid], len(frames), frames[-1][0]
            if p["shape"] is None:  # travel: the shape says nothing, the place a little: both drawn each time
                loc = (p["loc"][0] + rng.uniform(-.06, .06), p["loc"][1] + rng.uniform(-.06, .06))
                p = dict(p, shape=str(rng.choice(SHAPES)), loc=loc)
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
        blob(img, *nxy, nshape, look.get("hand", .075), look["glove"])
        blob(img, *xy, shape, look.get("hand", .075), look["glove"])
        low = rng.normal(0, look["noise"], (-(-H // 8), -(-W // 8), 3)).astype(np.float32)  # constant in 8x8 cells
        img += low.repeat(8, 0).repeat(8, 1)[:H, :W]  # lighting noise
        u = rng.random((H, W))  # sensor speckle: +-25 on a fraction `speckle` of the pixels
        img[u < look["speckle"] / 2] -= 25
        img[u > 1 - look["speckle"] / 2] += 25
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(f"{d}/images{t:04d}.png", compress_level=1)
    return {"split": split, "signer": signer, "speed": speed, "n_frames": len(poses), "novel_pair": novel,
            "glosses": gloss_seg, "primitives": prim_seg, "holds": holds}


def make_synthetic(root: str, seed: int = 0, size: str = "default", height: int = 64, width: int = 64,
                   workers: int = 1, kind: str = "weather") -> dict:
    """Write a synthetic sign language (kind: one of KINDS) to `root`; return its ground truth. The same bytes for any
    `workers`."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic language {kind!r}; languages: {', '.join(KINDS)}")
    tmp = root.rstrip("/") + ".partial"  # written here, then renamed
    if os.path.exists(root) or (os.path.exists(tmp) and not os.path.isfile(os.path.join(tmp, ".partial"))):
        raise FileExistsError(f"{root} or {tmp} exists; remove it or choose another folder")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted run's leftovers (it has the .partial marker)
    os.makedirs(os.path.join(tmp, os.path.dirname(PHOENIX_CSV)))
    open(os.path.join(tmp, ".partial"), "w").close()
    rng, (language, sentence, glosses) = np.random.default_rng(seed), KINDS[kind]
    lang = language(rng)
    splits = _splits(rng, SIZES[size], lang[3], sentence, glosses)
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
    gt = dict(zip(("primitives", "lexicon", "signers", "heldout_pairs"), lang), kind=kind, seed=seed, size=size,
              height=height, content_words=TRAVEL_WORDS if kind == "travel" else None,
              width=width, fps=25, videos={name: e for (_, _, name, _), e in zip(jobs, entries)},
              note="segments: [label, start, end) frame indices, 0-based, end exclusive; a hold (repeated pose) "
              "extends its primitive and gloss; novel_pair: signs a held-out pair")
    with open(os.path.join(tmp, GROUND_TRUTH), "w") as f:
        json.dump(gt, f, indent=1, sort_keys=True)
    os.remove(os.path.join(tmp, ".partial"))
    os.rename(tmp, root)
    return read_ground_truth(root)


def read_ground_truth(root: str) -> dict:
    with open(os.path.join(root, GROUND_TRUTH), encoding="utf-8") as f:
        return json.load(f)


def clip_labels(segments: list, n_frames: int) -> list:
    """Per clip, the label of the segment [label, start, end) holding the clip's middle frame (None if none)."""
    mid = [min(t * CLIP_STRIDE + CLIP_LEN // 2, n_frames - 1) for t in range(num_clips(n_frames))]
    return [next((lab for lab, a, b in segments if a <= m < b), None) for m in mid]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="the folder to write (it must not exist)")
    ap.add_argument("--kind", choices=list(KINDS), default="weather")
    ap.add_argument("--size", choices=list(SIZES), default="default")
    for k, default in (("seed", 0), ("height", 64), ("width", 64), ("workers", os.cpu_count() or 1)):
        ap.add_argument(f"--{k}", type=int, default=default)
    a = ap.parse_args()
    t0 = time.time()
    gt = make_synthetic(a.root, a.seed, a.size, a.height, a.width, a.workers, a.kind)
    print(f"wrote {len(gt['videos'])} videos of the {a.kind} language to {a.root} in {time.time() - t0:.1f} s")
