"""Tests of vq.py (VQ-Sign, Sec. 3.2 / 4.1): encoder shapes and masks, the whole-sequence Conv3D against per-clip
processing, Eq. 1 against a double loop, the straight-through estimator and the two terms of Eq. 2, ResNet18 loading in
torchvision's layout, dead-code re-seeding, token diagnostics against independent formulas, and a short overfit run on
synthetic videos. nearest_code runs through the real kernel (the Triton interpreter on a CPU, see conftest.py)."""
import math
import os
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import data
import synthetic
from vq import (ContextGRU, ResNet18, VQConfig, VQSign, VisualEncoder, codebook_usage, context_prediction, kmeans,
                load_resnet18_weights, token_alignment)

SEED = int(os.environ.get("VQ_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


@pytest.fixture
def gen():
    torch.manual_seed(SEED)  # rerun a failure with VQ_TEST_SEED=<the seed pytest shows for `gen`>
    return SEED


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions run many times faster on one thread when the CPU is shared (OpenMP spin-waits); restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_model(**kw):
    return VQSign(VQConfig(**{**dict(width=4, d=24, M=13, K=3, reseed_every=0), **kw}))


def random_batch(n_clips, size=(37, 29)):
    """frames (B, N_max, 3, H, W) with garbage past each video's clip grid, as a loader might pad, and the masks."""
    n_clips = torch.tensor(n_clips)
    N = data.padded_length(int(n_clips.max())) + 3
    mask = torch.arange(int(n_clips.max()))[None] < n_clips[:, None]  # (B, T)
    frame_mask = torch.arange(N)[None] < torch.tensor([data.padded_length(int(n)) for n in n_clips])[:, None]
    return {"frames": torch.randn(len(n_clips), N, 3, *size), "frame_mask": frame_mask, "clip_mask": mask}


def clips_of(frames, T):
    """(B, N, 3, H, W) -> (B, T, 13, 3, H, W): each 13-frame clip, stride 4 (a view)."""
    return frames.unfold(1, data.CLIP_LEN, data.CLIP_STRIDE)[:, :T].permute(0, 1, 5, 2, 3, 4)


# ---------------------------------------------------------------------------------------------------------------------
# encoder

def test_shapes_and_padding_never_leaks(gen):
    model = small_model()
    for n_clips in ([1], [3, 1, 6], [2, 5]):
        b = random_batch(n_clips)
        z, z_hat, idx = model.encode(b)
        T = max(n_clips)
        assert z.shape == z_hat.shape == (len(n_clips), T, 24) and idx.shape == (len(n_clips), T)
        m = b["clip_mask"]
        assert (idx[~m] == -1).all() and (idx[m] >= 0).all() and (idx[m] < 13).all() and (z_hat[~m] == 0).all()
        assert torch.equal(z_hat[m], model.codebook[idx[m]])
        # train mode (BatchNorm on batch statistics): frames past each video's clips change nothing
        frames = b["frames"].clone()
        for i, n in enumerate(n_clips):
            frames[i, data.padded_length(n):] = 1e3 * torch.randn_like(frames[i, data.padded_length(n):])
        z2, _, idx2 = model.encode(dict(b, frames=frames))
        assert torch.equal(z2[m], z[m]) and torch.equal(idx2, idx)


def test_sequence_conv3d_equals_per_clip(gen):
    """Two Conv3Ds over the whole sequence == the encoder run on each 13-frame clip by itself."""
    enc = VisualEncoder(width=4, d=10).double().eval()
    n_clips = torch.tensor([4, 2])
    frames = torch.randn(2, data.padded_length(4), 3, 37, 29, dtype=torch.float64)
    frame_mask = torch.arange(data.padded_length(4))[None] < torch.tensor([data.padded_length(4), 17])[:, None]
    z = enc(frames, frame_mask, torch.arange(4)[None] < n_clips[:, None])  # (2, 4, 10)
    clips = clips_of(frames, 4)  # (2, 4, 13, 3, H, W)
    one = torch.ones(1, 1, dtype=torch.bool)
    for b in range(2):
        for t in range(int(n_clips[b])):
            z_clip = enc(clips[b, t][None], torch.ones(1, 13, dtype=torch.bool), one)  # one clip: 13 frames -> 1 z
            torch.testing.assert_close(z[b, t], z_clip[0, 0], rtol=1e-12, atol=1e-12)


def test_center_subtracts_each_videos_mean(gen):
    model = small_model(center=True).eval()
    b = random_batch([4, 2, 5])
    seen = {}
    model.encoder.norm.register_forward_pre_hook(lambda mod, inp: seen.update(x=inp[0]))
    z, _, _ = model.encode(b)
    for rows in torch.split(seen["x"], [4, 2, 5]):  # BatchNorm's input: the valid clips, video by video
        torch.testing.assert_close(rows.mean(0), torch.zeros(rows.shape[1]), rtol=0, atol=1e-5)
    alone = {"frames": b["frames"][1:2, :data.padded_length(2)], "frame_mask": torch.ones(1, data.padded_length(2),
             dtype=torch.bool), "clip_mask": torch.ones(1, 2, dtype=torch.bool)}
    z1, _, _ = model.encode(alone)  # alone: the same z
    torch.testing.assert_close(z1[0], z[1, :2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="negatives"):
        small_model(negatives="others")


def test_mask_validation():
    model = small_model()
    b = random_batch([2, 3])
    with pytest.raises(ValueError, match="leading True"):
        model.encode(dict(b, clip_mask=torch.tensor([[True, False, True], [True, True, True]])))
    with pytest.raises(ValueError, match="time steps"):  # frames for 1 clip, a clip mask of 3
        model.encode(dict(b, frames=b["frames"][:, :14], frame_mask=b["frame_mask"][:, :14]))
    b["frames"][1, 3, 0, 5, 5] = float("nan")
    with pytest.raises(FloatingPointError, match="clip features z are NaN"):
        model.eval().encode(b)
    codebook = model.codebook.detach().clone()
    model.train().config.reseed_every = 1  # training: the NaN reaches the loss (train.fit decides), seeds no code
    loss, *_ = model(b)
    assert not torch.isfinite(loss) and torch.equal(model.codebook.detach(), codebook)


# ---------------------------------------------------------------------------------------------------------------------
# Eq. 1 against a double loop

def cp_loop(z, c, n_clips, W, lam, same_video, skip=0):
    """Eq. 1, written plainly: every (video, tau, k), k = skip + 1 .. skip + K; negatives = every other valid clip of
    the batch (or of the video) but those of the target's video within `skip` clips of it; no negative: no term."""
    pool = [(b, t) for b in range(len(n_clips)) for t in range(n_clips[b])]
    total, hits, beaten, chance, count = 0.0, 0, 0.0, 0.0, 0
    for k, W_k in enumerate(W, skip + 1):
        terms = []
        for b in range(len(n_clips)):
            for tau in range(n_clips[b] - k):
                h = W_k(c[b, tau])
                s_pos = torch.dot(z[b, tau + k], h)
                negs = [torch.dot(z[b2, t2], h) for (b2, t2) in pool
                        if not (b2 == b and abs(t2 - (tau + k)) <= skip) and (b2 == b or not same_video)]
                if not negs:
                    continue
                e_neg = sum(F.logsigmoid(-s) for s in negs) / len(negs)
                terms.append(-(F.logsigmoid(s_pos) + lam * e_neg))
                hits += int(all(s_pos > s for s in negs))
                beaten += sum(float(s_pos > s) for s in negs) / len(negs)
                chance += 1 / (1 + len(negs))
                count += 1
        if terms:
            total = total + sum(terms) / len(terms)
    return total, hits / count, beaten / count, chance / count


@pytest.mark.parametrize("same_video,skip", [(False, 0), (True, 0), (False, 2), (True, 3)])
def test_context_prediction_matches_double_loop(gen, same_video, skip):
    B, T, d, K = 3, 11, 11, 3
    n_clips = [11, 2, 8]
    mask = torch.arange(T)[None] < torch.tensor(n_clips)[:, None]
    z = torch.randn(B, T, d, dtype=torch.float64, requires_grad=True)
    c = torch.randn(B, T, d, dtype=torch.float64, requires_grad=True)
    W = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(K)).double()
    with torch.no_grad():  # padding holds garbage: it must not matter
        z[~mask] = 1e4
        c[~mask] = -1e4
    lam = 0.7 + torch.rand(()).item()
    L, cp = context_prediction(z, c, mask, W, lam, same_video, skip)
    L_ref, acc_ref, beaten_ref, chance_ref = cp_loop(z, c, n_clips, W, lam, same_video, skip)
    torch.testing.assert_close(L, L_ref, rtol=1e-12, atol=1e-12)
    assert cp["cp_acc"] == acc_ref
    assert math.isclose(cp["cp_beaten"], beaten_ref, rel_tol=1e-12) and math.isclose(cp["cp_chance"], chance_ref)
    g = torch.autograd.grad(L, [z, c, W[1].weight])
    g_ref = torch.autograd.grad(L_ref, [z, c, W[1].weight])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert (g[0][~mask] == 0).all() and (g[1][~mask] == 0).all()


def test_g_is_causal_and_masked(gen):
    g = ContextGRU(9)
    x = torch.randn(2, 6, 9)
    c = g(x, torch.tensor([6, 3]))
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 9)  # the future changes: the past context does not
    x2[1, 3:] = 5.0
    c2 = g(x2, torch.tensor([6, 3]))
    assert torch.equal(c[:, :4], c2[:, :4]) and (c[1, 3:] == 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# straight-through and the two terms of Eq. 2

def test_straight_through_and_eq2_terms(gen):
    model = small_model().double()
    b = random_batch([4, 2, 3])
    b["frames"] = b["frames"].double()
    m = b["clip_mask"]
    seen = {}
    model.g.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], c=out))
    enc_params = [p for p in model.encoder.parameters()]
    loss, _ = model.loss(b)
    grads = torch.autograd.grad(loss, enc_params + [model.codebook], retain_graph=True)
    z, z_hat, idx = model.encode(b)  # the same forward again (same batch, BN statistics)
    # g reads the quantized tokens (forward) and its gradient reaches E_v (backward): the straight-through estimator
    torch.testing.assert_close(seen["x"][m], z_hat[m], rtol=0, atol=1e-12)  # z + (z_hat - z): rounding only
    g_c = torch.autograd.grad(seen["c"].sum(), model.encoder.conv3d[2].weight, retain_graph=True)[0]
    assert g_c.abs().sum() > 0 and all(g.abs().sum() > 0 for g in grads[:-1])
    # the codebook gets the codebook term only:
    # d/ds_j mean_t ||sg(z_t) - s_j||^2 / d = 2 sum_{t -> j} (s_j - z_t) / (V d)
    V, d = int(m.sum()), z.shape[-1]
    ref = torch.zeros_like(model.codebook).index_add_(0, idx[m], 2 * (model.codebook[idx[m]] - z[m]).detach()) / (V * d)
    torch.testing.assert_close(grads[-1], ref, rtol=1e-10, atol=1e-12)
    # the commitment term moves the encoder: gamma changes the encoder's gradient by exactly gamma * its gradient
    model.config.gamma = 0.0
    loss0, _ = model.loss(b)
    grads0 = torch.autograd.grad(loss0, enc_params + [model.codebook])
    commit = torch.autograd.grad(((z - z_hat.detach()) ** 2)[m].mean(), enc_params)  # ||z_t - sg(z_hat_t)||^2 / d
    for g1, g0, gc in zip(grads, grads0, commit):
        torch.testing.assert_close(g1 - g0, 0.25 * gc, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(grads0[-1], grads[-1], rtol=0, atol=0)  # ...and not the codebook


def test_dead_codes_are_reseeded_from_batch_features(gen):
    model = small_model(reseed_every=2)
    with torch.no_grad():
        model.codebook[1:] = 1e3  # every clip picks code 0: codes 1.. are dead
        model.codebook[0] = 0
    b = random_batch([3, 4])
    zs = []
    model.encoder.register_forward_hook(lambda mod, inp, out: zs.append(out.detach()))
    _, m1 = model.loss(b)
    assert m1["usage"] == 1 / 13 and m1["reseeded"] == 0
    _, m2 = model.loss(b)  # the second step re-seeds before quantizing
    assert m2["reseeded"] == 12
    feats = zs[-1][b["clip_mask"]]  # (V, d) this step's clip features
    for j in range(1, 13):
        assert (model.codebook[j] == feats).all(1).any(), f"code {j} is not a batch feature"
    assert m2["usage"] > m1["usage"]


# ---------------------------------------------------------------------------------------------------------------------
# ResNet18 in torchvision's layout

def torchvision_resnet18_state(width=64, classes=1000):
    """A resnet18 state dict in torchvision's layout, written out from its naming rules (no torchvision here)."""
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k) * (2 / (cin * k * k)) ** 0.5

    def bn(name, c):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + 0.1 * torch.randn(c), 0.1 * torch.randn(c)
        sd[f"{name}.running_mean"], sd[f"{name}.running_var"] = 0.1 * torch.randn(c), 0.5 + torch.rand(c)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)
    conv("conv1", width, 3, 7)
    bn("bn1", width)
    cin = width
    for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width], 1):
        for j in range(2):
            p = f"layer{i}.{j}"
            conv(f"{p}.conv1", cout, cin if j == 0 else cout, 3)
            bn(f"{p}.bn1", cout)
            conv(f"{p}.conv2", cout, cout, 3)
            bn(f"{p}.bn2", cout)
            if j == 0 and i > 1:
                conv(f"{p}.downsample.0", cout, cin, 1)
                bn(f"{p}.downsample.1", cout)
        cin = cout
    sd["fc.weight"], sd["fc.bias"] = torch.randn(classes, 8 * width), torch.randn(classes)
    return sd


def resnet18_functional(sd, x):
    """Independent forward of torchvision's resnet18 (eval mode) from a state dict, up to layer4."""
    bn = lambda x, p: F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                                   sd[p + ".bias"], False, 0.0, 1e-5)
    x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for i in range(1, 5):
        for j in range(2):
            p, s = f"layer{i}.{j}", 2 if (i > 1 and j == 0) else 1
            out = F.relu(bn(F.conv2d(x, sd[p + ".conv1.weight"], stride=s, padding=1), p + ".bn1"))
            out = bn(F.conv2d(out, sd[p + ".conv2.weight"], padding=1), p + ".bn2")
            if p + ".downsample.0.weight" in sd:
                x = bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
            x = F.relu(out + x)
    return x


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_resnet18_loads_torchvision_layout(gen, tmp_path, fmt):
    width = 8  # the layout at a small width; the key names are width-independent
    sd = torchvision_resnet18_state(width)
    path = str(tmp_path / f"resnet18.{fmt}")
    if fmt == "pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file(sd, path)
    net = ResNet18(width)
    assert load_resnet18_weights(net, path) == ["fc.bias", "fc.weight"]  # the classifier, skipped on purpose
    ours = net.state_dict()
    assert set(ours) == set(sd) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(ours[k], sd[k]) for k in ours)
    x = torch.randn(3, 3, 67, 45, dtype=torch.float64)
    torch.testing.assert_close(net.double().eval()(x), resnet18_functional({k: v.double() for k, v in sd.items()}, x),
                               rtol=1e-10, atol=1e-10)


def test_resnet18_rejects_wrong_state_dicts(gen):
    net = ResNet18(8)
    no_counters = {k: v for k, v in torchvision_resnet18_state(8).items() if not k.endswith("num_batches_tracked")}
    net.load_torchvision(no_counters)  # torchvision's own ImageNet file has no num_batches_tracked: fine
    assert int(net.bn1.num_batches_tracked) == 0
    missing = torchvision_resnet18_state(8)
    del missing["layer3.1.bn2.running_var"]
    with pytest.raises(KeyError, match=r"missing \['layer3.1.bn2.running_var'\]"):
        net.load_torchvision(missing, "r.pth")
    extra = torchvision_resnet18_state(8)
    extra["layer1.2.conv1.weight"] = torch.randn(8, 8, 3, 3)  # a resnet34 has a third block
    with pytest.raises(KeyError, match=r"unexpected \['layer1.2.conv1.weight'\]"):
        net.load_torchvision(extra)
    with pytest.raises(ValueError, match="conv1.weight has shape .* ImageNet weights need width=64"):
        net.load_torchvision(torchvision_resnet18_state(16))


# ---------------------------------------------------------------------------------------------------------------------
# diagnostics

def entropy(counter):
    n = sum(counter.values())
    return -sum(v / n * math.log(v / n) for v in counter.values())


def test_usage_perplexity_purity_nmi_against_counters(gen):
    codes = torch.randint(0, 9, (301,))
    labels = (codes * 3 + torch.randint(0, 4, (301,))) % 7  # partly dependent
    usage, ppl = codebook_usage(codes, 17)
    assert usage == len(set(codes.tolist())) / 17
    assert math.isclose(ppl, math.exp(entropy(Counter(codes.tolist()))), rel_tol=1e-12)
    purity, nmi = token_alignment(codes, labels)
    by_code = {}
    for c_, l_ in zip(codes.tolist(), labels.tolist()):
        by_code.setdefault(c_, Counter())[l_] += 1
    assert math.isclose(purity, sum(max(v.values()) for v in by_code.values()) / 301, rel_tol=1e-12)
    hc, hl = entropy(Counter(codes.tolist())), entropy(Counter(labels.tolist()))
    mi = hc + hl - entropy(Counter(zip(codes.tolist(), labels.tolist())))  # I = H(C) + H(L) - H(C, L)
    assert math.isclose(nmi, mi / ((hc + hl) / 2), rel_tol=1e-9)
    assert token_alignment(codes, codes * 2 + 1) == pytest.approx((1.0, 1.0))  # a relabelling: perfect


# ---------------------------------------------------------------------------------------------------------------------
# a short overfit run on a handful of synthetic videos

@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "synthetic")
    synthetic.make_synthetic(root, seed=3, size="tiny", height=32, width=32)
    return root


def test_overfit_a_handful_of_synthetic_videos(tiny_synthetic):
    torch.manual_seed(0)
    ds = data.SignDataset(data.load_split(tiny_synthetic, "train")[:4], data.DataConfig(image_size=32), train=False)
    batch = data.collate([ds[i] for i in range(4)])
    model = small_model(width=8, d=32, M=16, reseed_every=5, negatives="video", center=True)  # the synthetic preset's
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    hist = []
    for _ in range(50):
        loss, m = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(m)
    first, last = hist[0], hist[-1]
    assert last["loss"] < 0.6 * first["loss"] and last["L_cp"] < 0.7 * first["L_cp"], (first, last)
    assert last["cp_beaten"] > 0.85 and last["cp_acc"] > 5 * last["cp_chance"], last  # chance: 0.5 and cp_chance


def test_kmeans_from_a_given_codebook_lowers_the_codebook_term_to_a_fixed_point():
    """cra_refit: Lloyd steps started from the learned codebook (float32, as VQ-Sign keeps it). Each step lowers
    sum_z min_m ||z - c_m||^2 (Eq. 2's codebook term), and at convergence every centroid is the mean of the points
    nearest to it (brute force)."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = torch.randn(523, 7, generator=g, dtype=torch.float64)
    init = (x[:13] + 0.5 * torch.randn(13, 7, generator=g, dtype=torch.float64)).float()
    term = lambda c: ((x[:, None] - c[None].double()) ** 2).sum(-1).min(1).values.sum()  # noqa: E731
    c1, c_end = kmeans(x.float(), 13, iters=1, init=init), kmeans(x, 13, iters=500, init=init)
    assert c1.dtype == torch.float64 and c1.shape == (13, 7)
    assert term(c_end) <= term(c1) + 1e-9 and term(c1) < term(init)
    nearest = ((x[:, None] - c_end[None]) ** 2).sum(-1).argmin(1)
    for m in range(13):
        if (nearest == m).any():
            torch.testing.assert_close(c_end[m], x[nearest == m].mean(0))


def test_still_frames_leave_what_does_not_move(gen):
    """VQConfig.still: E_v sees each frame minus its video's mean frame (over the video's own frames): a video with a
    constant image added (another signer's background) gives the same z, and the padding never counts."""
    model = small_model(still=True).eval()
    b = random_batch([4, 2, 5])
    z, _, _ = model.encode(b)
    shifted = b["frames"].clone()
    for i, n in enumerate([4, 2, 5]):
        shifted[i, :data.padded_length(n)] += torch.randn(3, 37, 29)  # a still image, under every frame of the video
    z2, _, _ = model.encode(dict(b, frames=shifted))
    torch.testing.assert_close(z2, z, rtol=1e-4, atol=1e-4)
    model.encoder.still = False  # the control: the same weights, seeing the frames themselves
    assert not torch.allclose(model.encode(dict(b, frames=shifted))[0], model.encode(b)[0], atol=1e-3)
