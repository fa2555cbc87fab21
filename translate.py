"""Translate your own sign videos with a trained model (nanoGPT's sample.py): one line per video, path<TAB>text.

    python translate.py --ckpt out/ft my_video.mp4 frames_folder/ [--beams 4]

A video is a file (mp4, avi, mov, mkv, webm, gif) or a folder of frames; each is read, resized and padded to the clip
grid as in training (data.SignDataset, no augmentation), and the model is the newest best checkpoint of the folder,
built with the settings it was trained with (train.load_model)."""
import argparse
import os

import data
import train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a training output folder (e.g. out/ft)")
    p.add_argument("--beams", type=int, default=None, help="beam size (default: the checkpoint's, 1 = greedy)")
    p.add_argument("videos", nargs="+")
    args = p.parse_args(argv)
    model, cfg = train.load_model(args.ckpt)
    model.eval()
    data_cfg = data.DataConfig(**dict(vars(cfg.data), skip_bad=False))  # a bad video: say why
    for path in args.videos:
        sample = data.Sample(name=os.path.basename(path.rstrip("/")), text="", gloss=None, path=path)
        try:
            batch = data.collate([data.SignDataset([sample], data_cfg, train=False)[0]])
        except data.DataError as e:
            raise SystemExit(f"error: {e}")
        print(f"{path}\t{model.translate(batch, beams=args.beams)[0]}")


if __name__ == "__main__":
    main()
