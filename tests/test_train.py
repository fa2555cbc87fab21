"""Tests of train.py: --key=value parsing with type checks, checkpoints (atomic files, every tensor accounted for, a
corrupt file refused) and --resume, which must give the losses of an uninterrupted run exactly (CPU)."""
import dataclasses
import glob
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
import synthetic
import metrics
import train
from vq import VQConfig, VQSign


def test_parse_args_types_presets_and_errors():
    cfg = train.parse_args(["--stage", "vq", "--vq.d=48", "--vq_lr=1", "--resume", "--data.image_size", "40"])
    assert cfg.vq.d == 48 and cfg.vq_lr == 1.0 and isinstance(cfg.vq_lr, float) and cfg.resume is True
    assert cfg.data.image_size == 40  # the command line beats the preset (synthetic: 32)
    assert train.parse_args([]).data.image_size == train.PRESETS["synthetic"]["data.image_size"]
    p = train.parse_args(["--preset=phoenix"])
    assert p.data.image_size == 224 and p.vq.d == 1024 and p.vq.M == 256 and p.vq.width == 64  # the paper's
    for argv, msg in ((["--vq.d=abc"], "vq.d takes a int"), (["--vq.dd=3"], "did you mean vq.d"),
                      (["--resume=maybe"], "resume takes a bool"), (["--preset=nope"], "unknown preset"),
                      (["--stage=nope"], "unknown stage"), (["vq"], "expected --key=value"),
                      (["--vq.gamma=x"], "vq.gamma takes a float")):
        with pytest.raises(SystemExit, match=msg):
            train.parse_args(argv)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("d") / "synthetic")
    synthetic.make_synthetic(root, seed=5, size="tiny", height=32, width=32)  # 12 train, 4 dev videos
    return root


def args(root, out, *more):
    return ["--stage", "vq", f"--data.root={root}", f"--out_dir={out}", "--vq.width=4", "--vq.d=16", "--vq.M=8",
            "--vq_batch_size=5", "--vq_max_steps=6", "--vq_ckpt_every=2", "--vq_eval_every=3", "--vq_warmup=2",
            "--vq.reseed_every=2", "--num_workers=0", "--threads=1", "--log_every=100", *more]


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_losses(tiny, tmp_path, monkeypatch):
    full = train.main(args(tiny, tmp_path / "a"))  # 12 videos / 5 = 3 steps per epoch: the resume crosses epochs
    assert [m["step"] for m in full] == list(range(1, 7))
    real = engine.save

    def save_then_die(out, tag, model, opt, state, cfg):
        path = real(out, tag, model, opt, state, cfg)
        if tag == "ckpt" and state["step"] == 2:
            raise Interrupt
        return path
    monkeypatch.setattr(engine, "save", save_then_die)
    with pytest.raises(Interrupt):
        train.main(args(tiny, tmp_path / "b"))
    monkeypatch.undo()
    rest = train.main(args(tiny, tmp_path / "b", "--resume"))
    assert [m["step"] for m in rest] == list(range(3, 7))
    for a, b in zip(full[2:], rest):
        timeless = lambda m: {k: v for k, v in m.items() if k not in ("dt", "dt_eval")}  # noqa: E731
        assert timeless(a) == timeless(b), (a, b)
    # the log of the resumed run holds each step once; only complete, current checkpoints remain
    steps = [json.loads(l)["step"] for l in open(tmp_path / "b" / "vq" / "log.jsonl")]
    assert steps == list(range(1, 7))
    left = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "b" / "vq" / "*")))
    assert left[0] == "DONE"  # the stage completed
    assert left[-3:] == ["ckpt-0000006.json", "ckpt-0000006.safetensors", "log.jsonl"]
    assert not any(".tmp" in f for f in left)
    assert all(f.startswith("best-") for f in left[1:-3]) and len(left) == 6


def test_checkpoint_contents_and_refusals(tiny, tmp_path):
    train.main(args(tiny, tmp_path, "--vq_max_steps=2"))
    out = tmp_path / "vq"
    meta = json.load(open(out / "ckpt-0000002.json"))
    t = load_file(str(out / meta["weights"]))
    model = VQSign(VQConfig(width=4, d=16, M=8))
    assert {k[6:] for k in t if k.startswith("model.")} == set(model.state_dict())
    trainable = {n for n, p in model.named_parameters()}
    assert {k[6:].rsplit(".", 1)[0] for k in t if k.startswith("optim.")} == trainable == set(meta["adam_steps"])
    assert t["rng.torch"].dtype == torch.uint8 and meta["step"] == 2 and meta["config"]["vq"]["d"] == 16
    assert all(v == 2.0 for v in meta["adam_steps"].values())
    with pytest.raises(SystemExit, match="holds checkpoints"):  # no silent overwrite
        train.main(args(tiny, tmp_path, "--vq_max_steps=2"))
    t["model.codebook"] = t["model.codebook"] + 1  # a changed weight file: the sha256 in the JSON catches it
    save_file(t, str(out / meta["weights"]))
    with pytest.raises(SystemExit, match="sha256"):
        train.main(args(tiny, tmp_path, "--resume"))
    with pytest.raises(SystemExit, match="no ckpt checkpoint"):
        train.main(args(tiny, tmp_path / "empty", "--resume"))


def test_a_fresh_run_clears_done(tiny, tmp_path, monkeypatch):
    """`--stage all` skips a stage whose folder holds DONE: a fresh (not resumed) run of that stage must remove it at
    its start, or a run killed after restarting a finished stage would later be taken as finished. A run that
    completes writes DONE again, holding the config it was trained with."""
    done = tmp_path / "o" / "vq" / "DONE"
    done.parent.mkdir(parents=True)
    done.touch()
    real = engine.save

    def save_then_die(out, tag, model, opt, state, cfg):
        real(out, tag, model, opt, state, cfg)
        raise Interrupt
    monkeypatch.setattr(engine, "save", save_then_die)
    with pytest.raises(Interrupt):
        train.main(args(tiny, tmp_path / "o", "--vq_max_steps=2"))
    assert not done.exists()
    monkeypatch.undo()
    train.main(args(tiny, tmp_path / "o", "--vq_max_steps=1", "--overwrite"))
    assert json.load(open(done))["vq_max_steps"] == 1


def test_presets_prompt_and_score_in_the_data_sets_language():
    assert train.parse_args(["--preset=phoenix"]).signllm.language == "German"
    assert train.parse_args(["--preset=csl"]).signllm.language == "Chinese"
    assert train.parse_args(["--preset=csl", "--signllm.language=English"]).signllm.language == "English"
    assert train.parse_args([]).signllm.language == "English"
    hyps, refs = ["今天北方有雨", "明天晴"], ["今天北方下雨", "明天是晴天"]  # no spaces: words would score ~0
    csl = train.parse_args(["--preset=csl"])
    per_char = metrics.score_all(hyps, refs, "zh")
    assert train.score(csl, hyps, refs) == per_char != metrics.score_all(hyps, refs, "de")


def test_older_checkpoints_load_unless_they_are_an_ablation():
    """A checkpoint's config from before the ablations moved to bench/ablations.py: settings that chose the paper's
    model are dropped, any other is refused naming it; an unknown key is refused too."""
    saved = dataclasses.asdict(train.TrainConfig())
    saved["signllm"].update(tokens="words", decoder="llm", lora_rank=0, straight_through=False)
    saved["vq"]["quantizer"], saved["data"]["oracle"], saved["kmeans_encoder"] = "vq", "", ""
    saved["vq"]["M"] = 77
    assert train.config_of(saved, "ckpt").vq.M == 77
    for key, value in (("tokens", "chars"), ("lora_rank", 8)):
        with pytest.raises(SystemExit, match=f"ckpt: trained with signllm.{key}={value!r}, an ablation"):
            train.config_of(dict(saved, signllm=dict(saved["signllm"], **{key: value})), "ckpt")
    with pytest.raises(SystemExit, match="unknown config key 'vq.nope'"):
        train.config_of(dict(saved, vq=dict(saved["vq"], nope=1)), "ckpt")
