"""A picture of what the tokens learned: for a few videos, a strip of frames and under it the character tokens (one
VQ-Sign code per clip), the word tokens (each word spelt by its characters, s0 = S0), the true glosses, the
reference and the model's translation. PNG through imageio and numpy only; text in a 5x7 bitmap font (upper case).

    python bench/token_picture.py --ckpt out/ft --split test --n 3 --out docs/tokens.png
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FRAMES, CELL, PAD, GAP = 10, 64, 8, 2  # frames per strip, their size in pixels, margin, space between frames
# 5x7 glyphs, one hex byte per row (top first), bit 4 = leftmost column; the HD44780-style shapes
CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-'?!()/_+=<>%#\"[]"
GLYPHS = """
0E1111111F1111 1E11111E11111E 0E11101010110E 1C12111111121C 1F10101E10101F 1F10101E101010 0E11101711110F
1111111F111111 0E04040404040E 0702020202120C 11121418141211 1010101010101F 111B1515111111 11111915131111
0E11111111110E 1E11111E101010 0E11111115120D 1E11111E141211 0F10100E01011E 1F040404040404 1111111111110E
11111111110A04 1111111515150A 11110A040A1111 1111110A040404 1F01020408101F 0E11131519110E 040C040404040E
0E11010204081F 1F02040201110E 02060A121F0202 1F101E0101110E 0608101E11110E 1F010204080808 0E11110E11110E
0E11110F01020C 00000000000000 00000000000C0C 000000000C0408 000C0C000C0C00 000C0C000C0408 0000001F000000
0C040800000000 0E110102040004 04040404040004 02040808080402 08040202020408 00010204081000 0000000000001F
0004041F040400 00001F001F0000 02040810080402 08040201020408 18190204081303 0A0A1F0A1F0A0A 0A0A0A00000000
0E08080808080E 0E02020202020E""".split()
FONT = {c: np.array([[(int(h[2 * r:2 * r + 2], 16) >> (4 - k)) & 1 for k in range(5)] for r in range(7)], bool)
        for c, h in zip(CHARS, GLYPHS, strict=True)}  # char -> (7, 5) bool
LINE = 10  # pixels per text line (7 rows of glyph, 3 of space)


def width(n_frames):
    return 2 * PAD + n_frames * CELL + (n_frames - 1) * GAP


def wrap(text, n):
    """Lines of at most n characters, broken at spaces where possible."""
    out, line = [], ""
    for word in text.split(" "):
        while len(word) > n:  # a word longer than a line is cut
            if line:
                out.append(line)
                line = ""
            out.append(word[:n])
            word = word[n:]
        if line and len(line) + 1 + len(word) > n:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return out + [line] if line or not out else out


def draw_text(img, y, x, text):
    """Write text into img (H, W, 3) uint8 at (y, x), 6 px per character, upper-cased; '?' for one not in the font."""
    for i, ch in enumerate(text.upper()):
        g = FONT.get(ch, FONT["?"])
        img[y:y + 7, x + 6 * i:x + 6 * i + 5][g] = 0


def panel(frames, lines, n_frames=FRAMES):
    """frames uint8 (N, H, W, 3) -> (rows, width(n_frames), 3): n_frames of them, evenly spaced, resized to CELL x CELL
    (nearest pixel), and the text lines under the strip, wrapped to the width."""
    W = width(n_frames)
    per_line = (W - 2 * PAD) // 6
    text = [l for line in lines for l in wrap(line, per_line)]
    img = np.full((PAD + CELL + PAD + LINE * len(text) + PAD, W, 3), 255, np.uint8)
    pick = np.linspace(0, len(frames) - 1, n_frames).round().astype(int)
    for k, f in enumerate(frames[pick]):
        H, Wf = f.shape[:2]
        cell = f[np.arange(CELL) * H // CELL][:, np.arange(CELL) * Wf // CELL]  # (CELL, CELL, 3), nearest pixel
        x = PAD + k * (CELL + GAP)
        img[PAD:PAD + CELL, x:x + CELL] = cell
    for i, t in enumerate(text):
        draw_text(img, 2 * PAD + CELL + LINE * i, PAD, t)
    return img


def picture(panels):
    """Panels stacked, one grey line between two."""
    sep = np.full((1, panels[0].shape[1], 3), 160, np.uint8)
    return np.concatenate([x for p in panels for x in (p, sep)][:-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="out/ft")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--out", default="docs/tokens.png")
    args = p.parse_args(argv)
    import imageio.v3 as iio
    import data
    import torch
    import train
    model, cfg = train.load_model(args.ckpt)
    model.eval()
    data_cfg = cfg.data
    samples = data.load_split(data_cfg.root, args.split)[:args.n]
    ds = data.SignDataset(samples, data_cfg, train=False)
    spell = lambda c: "S0" if c == model.cra.n_chars else str(c)  # noqa: E731
    panels = []
    for s, item in zip(samples, ds):
        batch = data.collate([item])
        with torch.no_grad():
            codes = model.vq.encode(batch)[2][0].tolist()  # one video: no padding
        words = model.cra.sentence(codes)
        hyp = model.translate(batch)[0]
        panels.append(panel(data.read_frames(s), [
            f"{s.name}: {len(codes)} clips, {len(words)} words",
            "CHARACTERS: " + " ".join(map(str, codes)),
            "WORDS: " + " ".join(".".join(spell(c) for c in model.cra.vocab[w]) for w in words),
            f"GLOSSES: {s.gloss or '-'}", f"REFERENCE: {s.text}", f"TRANSLATION: {hyp}"]))
    img = picture(panels)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    iio.imwrite(args.out, img)
    print(f"{args.out}: {img.shape[1]} x {img.shape[0]} px, {len(panels)} videos")
    return img


if __name__ == "__main__":
    main()
