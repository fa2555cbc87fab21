"""VQ-Sign, the vector-quantized visual sign module of SignLLM (Sec. 3.2, implementation details in Sec. 4.1).

A sign video becomes a sequence of discrete "character" tokens:
  frames --E_v--> z_t (one d-dim feature per 13-frame clip, a new clip every n = 4 frames)
         --nearest code of S^c--> z_hat_t = s_j (kernels.nearest_code; straight-through gradient)
         --g (ConvGRU 1x1 == GRU)--> c_tau --W_k--> h_tau, trained to pick z_{tau+k} out of the minibatch (Eq. 1),
plus the codebook and commitment terms of Eq. 2. Layout, bottom-up: ResNet18 -> VisualEncoder -> ContextGRU ->
context_prediction (Eq. 1) -> VQConfig -> VQSign -> codebook diagnostics.

Not in the paper, each for a failure we saw on the synthetic set (details where each is computed):
- the squared norms of Eq. 2 are averaged over d, not summed (summed, the commitment term swamped L_cp);
- z is standardized by a BatchNorm without affine (rules out the trivial minimum z_t = constant);
- codes no clip chose for `reseed_every` training steps are re-seeded from the batch's clip features (the standard
  remedy for codebook collapse, e.g. Jukebox's random restarts);
- options, off by default (the paper's configuration), on in the synthetic preset: Eq. 1's negatives from the
  positive's own video only (negatives="video", wav2vec's p_n) and each video's mean z subtracted (center=True).
  With negatives from other videos E_v learned to tell signers apart by their colours, and tokens tracked signers.
"""
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from kernels.nearest_code import nearest_code


# ---------------------------------------------------------------------------------------------------------------------
# clip framing (Sec. 3.2, 4.1): a video of N >= 1 frames is cut into T = 1 + ceil(max(N - 13, 0) / 4) clips; clip t
# holds frames 4t .. 4t + 12, and the video is padded with its last frame to 13 + 4 (T - 1) frames

CLIP_LEN, CLIP_STRIDE = 13, 4  # Sec. 4.1: "Each clip consists of 13 frames and the gap between neighboring clips is 4"


def num_clips(n_frames):
    """T = 1 + ceil(max(N - 13, 0) / 4): the number of 13-frame clips, stride 4, covering N >= 1 frames."""
    if n_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {n_frames}")
    return 1 + -(-max(n_frames - CLIP_LEN, 0) // CLIP_STRIDE)


def padded_length(n_clips):
    """Frames spanned by n_clips clips: 13 + 4 (T - 1)."""
    return CLIP_LEN + CLIP_STRIDE * (n_clips - 1)


def cut_clips(frames, n_clips):
    """(B, N, 3, H, W) frames -> (B, T, 13, 3, H, W) clips, T = max(n_clips); a view, nothing is copied."""
    T = int(n_clips.max())
    if frames.shape[1] < padded_length(T):
        raise ValueError(f"frames has {frames.shape[1]} time steps, {T} clips need {padded_length(T)}")
    clips = frames.unfold(1, CLIP_LEN, CLIP_STRIDE)  # (B, T', 3, H, W, 13)
    return clips[:, :T].permute(0, 1, 5, 2, 3, 4)    # (B, T, 13, 3, H, W)


# ---------------------------------------------------------------------------------------------------------------------
# ResNet18 (He et al. 2016), hand-written in torchvision's key layout so that ImageNet weights load as they are

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None  # torchvision's name: a strided 1x1 conv + BN where the shape changes
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet18 up to its last feature map: (F, 3, H, W) -> (F, 8 * width, H / 32, W / 32). width = 64 is
    torchvision's (and the only width ImageNet weights fit); the classifier head (avgpool, fc) is left out."""

    def __init__(self, width=64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, w, 1))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w, 1))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w, 1))
        self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w, 1))
        self.out_channels = 8 * w

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)  # same values; ~1.3-1.5x faster convs and BN on CPU
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)  # (F, w, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (F, 8w, H/32, W/32)

    def load_torchvision(self, sd, source="state dict"):
        """Load a torchvision resnet18 state dict, accounting for every key: fc.weight / fc.bias (the ImageNet
        classifier) are skipped on purpose; num_batches_tracked may be absent (torchvision's own ImageNet file predates
        it) and then starts at 0; any other missing, unexpected or mis-shaped key raises, naming it."""
        ours = self.state_dict()
        skipped = sorted(k for k in sd if k in ("fc.weight", "fc.bias"))
        unexpected = sorted(set(sd) - set(ours) - set(skipped))
        missing = sorted(k for k in set(ours) - set(sd) if not k.endswith("num_batches_tracked"))
        if unexpected or missing:
            more = lambda keys: "..." if len(keys) > 8 else ""
            raise KeyError(f"{source}: not a torchvision resnet18 state dict: missing {missing[:8]}{more(missing)}, "
                           f"unexpected {unexpected[:8]}{more(unexpected)} ({len(missing)} missing, "
                           f"{len(unexpected)} unexpected)")
        for k, v in ours.items():
            if k in sd and tuple(sd[k].shape) != tuple(v.shape):
                raise ValueError(f"{source}: {k} has shape {tuple(sd[k].shape)}, this ResNet18 (width "
                                 f"{self.conv1.out_channels}) needs {tuple(v.shape)}; ImageNet weights need width=64")
        full = {k: sd[k] if k in sd else torch.zeros_like(v) for k, v in ours.items()}  # absent counters start at 0
        self.load_state_dict(full, strict=True)
        return skipped


def load_resnet18_weights(resnet, path):
    """ImageNet weights from a torchvision `.pth` (read with weights_only=True: no pickled code) or a `.safetensors`."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise TypeError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return resnet.load_torchvision(sd, source=path)


# ---------------------------------------------------------------------------------------------------------------------
# E_v: ResNet18 per frame, two Conv3Ds over time, spatial pooling (Sec. 4.1)

def clip_mask_of(mask_or_n_clips, T=None):
    """A clip mask (B, T) bool from either itself or clip counts (B,); it must be a prefix with >= 1 clip per row."""
    m = mask_or_n_clips
    if m.dtype != torch.bool:
        n = m.long()
        m = torch.arange(int(n.max()) if T is None else T, device=n.device)[None] < n[:, None]  # (B, T)
    n = m.sum(1)
    if m.dim() != 2 or (n < 1).any() or (m != (torch.arange(m.shape[1], device=m.device)[None] < n[:, None])).any():
        raise ValueError(f"clip_mask must be (B, T) bool with 1..T leading True per row, got {tuple(m.shape)} "
                         f"with clip counts {n.tolist()}")
    return m


class VisualEncoder(nn.Module):
    """frames (B, N, 3, H, W) -> z (B, T, d). Two Conv3Ds, kernel (5, 3, 3), stride (2, 1, 1), no temporal padding,
    run over the whole frame sequence: frame count 4T + 9 -> 2T + 3 -> T, and output t sees exactly frames
    4t .. 4t + 12, i.e. clip t (13 frames, stride 4), so this equals running them on each clip, without recomputing
    the ResNet on the 9 frames that neighbouring clips share."""

    def __init__(self, width, d, center=False):
        super().__init__()
        self.center = center
        self.resnet = ResNet18(width)
        C = self.resnet.out_channels
        self.conv3d = nn.Sequential(nn.Conv3d(C, d, (5, 3, 3), (2, 1, 1), (0, 1, 1)), nn.ReLU(),  # ReLU: our guess
                                    nn.Conv3d(d, d, (5, 3, 3), (2, 1, 1), (0, 1, 1)))
        # Not in the paper: z is standardized per dimension (BatchNorm without affine), which rules out the trivial
        # minimum of Eq. 1-2 where every z_t is the same vector (we saw it at lr 0.01: L_commit = 0, L_cp at chance)
        self.norm = nn.BatchNorm1d(d, affine=False)

    def forward(self, frames, clip_mask):
        B, N = frames.shape[:2]
        T, n_clips = clip_mask.shape[1], clip_mask.sum(1)
        need = padded_length(T)
        if N < need:
            raise ValueError(f"frames has {N} time steps, {T} clips need {padded_length(T)} (13 + 4 (T - 1))")
        frames = frames[:, :need]  # (B, 4T + 9, 3, H, W): later frames belong to no clip
        frame_ok = torch.arange(need, device=frames.device)[None] < (CLIP_LEN + CLIP_STRIDE * (n_clips - 1))[:, None]
        # the ResNet sees only frames that a valid clip holds: padding costs no compute and stays out of BatchNorm
        x = self.resnet(frames[frame_ok])  # (F, 3, H, W) -> (F, C, h, w)
        maps = x.new_zeros(B, need, *x.shape[1:])  # (B, N, C, h, w); zeros only reach clips past n_clips
        maps[frame_ok] = x
        y = self.conv3d(maps.transpose(1, 2))  # (B, C, N, h, w) -> (B, d, T, h, w)
        assert y.shape[2] == T, (y.shape, T)
        z = y.mean((3, 4)).transpose(1, 2)  # spatial average pooling -> (B, T, d)
        if self.center:  # subtract each video's mean clip feature: what is constant in a video (the signer) goes
            m = clip_mask[..., None].to(z.dtype)  # (B, T, 1)
            z = z - (z * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        out = z.new_zeros(z.shape)
        zv, bn = z[clip_mask], self.norm  # (V, d): statistics over valid clips only
        if self.training and len(zv) < 2:  # one clip has no batch statistics: normalize with the running ones
            out[clip_mask] = F.batch_norm(zv, bn.running_mean, bn.running_var, training=False, eps=bn.eps)
        else:
            out[clip_mask] = bn(zv)
        return out  # z (B, T, d), zero at padded clips


# ---------------------------------------------------------------------------------------------------------------------
# g: the auto-regressive context model (Sec. 3.2, 4.1)

class ContextGRU(nn.Module):
    """g, a convolutional GRU with a (1, 1) kernel (Sec. 4.1). Our clip features are pooled to 1 x 1 maps, and a 1x1
    convolution of a 1 x 1 map is a linear map of its channel vector, so every ConvGRU gate is a GRU gate: g is a GRU
    over the clip sequence, hidden size d. (torch's GRU applies the reset gate after W_hn h rather than before; a
    standard GRU variant.) Causal: c_tau sees x_{t <= tau} only, so trailing padding never reaches a valid step.
    CRA runs the same g over a word's character embeddings."""

    def __init__(self, d):
        super().__init__()
        self.gru = nn.GRU(d, d, batch_first=True)

    def forward(self, x, mask=None):
        """x (B, L, d), mask (B, L) bool or lengths (B,) -> c (B, L, d), zero at padded steps."""
        c, _ = self.gru(x)  # (B, L, d)
        if mask is not None:
            c = c * clip_mask_of(mask, x.shape[1])[..., None].to(c.dtype)
        return c


# ---------------------------------------------------------------------------------------------------------------------
# context prediction (Eq. 1)

def context_prediction(z, c, clip_mask, W, lam, same_video=False):
    """L_cp = sum_k L_k^cp (Eq. 1), with h_tau = W_k c_tau. The positive is z_{tau+k} of the same video; the
    negatives are every other valid clip of the minibatch (other times and other videos), or with same_video only the
    other clips of the positive's video (wav2vec's p_n, uniform over the sequence). p_n is uniform over them, so
    E_{z~p_n} is their mean, exactly, with no sampling. L_k^cp is averaged over the valid (video, tau) pairs of the
    batch (the paper sums over tau). Returns L_cp and metrics: cp_acc, the fraction of (tau, k) whose positive scores
    above every negative (chance: cp_chance, the mean of 1 / (1 + negatives)); cp_beaten, the mean fraction of
    negatives scored below the positive (chance 0.5; unlike cp_acc it is not capped by near-duplicate clips)."""
    B, T, d = z.shape
    pool = z[clip_mask]  # (V, d) every valid clip of the minibatch
    video = torch.arange(B, device=z.device)[:, None].expand(B, T)[clip_mask]  # (V,) video of each pool row
    row = (torch.cumsum(clip_mask.flatten(), 0) - 1).view(B, T)  # (B, T) row of z[b, t] in pool
    L_cp, hits, beaten, chance, n = z.new_zeros(()), 0, 0.0, 0.0, 0
    for k, W_k in enumerate(W, 1):
        if T <= k:
            break
        valid = clip_mask[:, k:]  # (B, T - k): tau whose tau + k is inside the video
        if not valid.any():
            continue
        h = W_k(c[:, :-k][valid])  # (P, d) h_tau
        pos = row[:, k:][valid]  # (P,) row of z_{tau+k}
        s = h @ pool.t()  # (P, d) @ (d, V) -> (P, V): z~^T h_tau for every clip
        s_pos = s.gather(1, pos[:, None]).squeeze(1)  # (P,) z_{tau+k}^T h_tau
        is_neg = torch.ones_like(s, dtype=torch.bool).scatter_(1, pos[:, None], False)  # (P, V)
        if same_video:
            is_neg &= video[None, :] == video[pos][:, None]
        n_neg = is_neg.sum(1)  # (P,) >= 1: a video with a positive has another clip
        neg = (F.logsigmoid(-s) * is_neg).sum(1) / n_neg  # E_{z~ ~ p_n} log sigma(-z~^T h_tau)
        L_cp = L_cp - (F.logsigmoid(s_pos) + lam * neg).mean()  # Eq. 1 (mean over tau), summed over k
        hits += int((s_pos > s.masked_fill(~is_neg, float("-inf")).amax(1)).sum())
        beaten += float((((s_pos[:, None] > s) & is_neg).sum(1).double() / n_neg).sum())
        chance += float((1 / (1 + n_neg.double())).sum())
        n += len(pos)
    n = max(n, 1)
    return L_cp, dict(cp_acc=hits / n, cp_beaten=beaten / n, cp_chance=chance / n)


# ---------------------------------------------------------------------------------------------------------------------
# VQ-Sign

def ddp_agree(t, from_rank0=False):
    """Under torchrun every process must re-seed the same dead codes: code counts are summed over the processes,
    the new codes are rank 0's. In one process, t as it is."""
    if dist.is_initialized():
        dist.broadcast(t, 0) if from_rank0 else dist.all_reduce(t)
    return t


@dataclass
class VQConfig:
    width: int = 64            # ResNet18 base width: 64 is torchvision's (ImageNet weights); 16 for the CPU demo
    d: int = 1024              # clip feature and codebook entry size (Sec. 4.1)
    M: int = 256               # codebook entries (Sec. 4.1)
    K: int = 3                 # future clips predicted (Sec. 4.1)
    gamma: float = 0.25        # commitment weight (Eq. 2, Sec. 4.1)
    lam: float = 1.0           # lambda of Eq. 1 (weight of the negatives); the paper gives no value
    negatives: str = "batch"   # Eq. 1's p_n: "batch" (other times and other videos) or "video" (same video only)
    center: bool = False       # subtract each video's mean z before the BatchNorm (not in the paper)
    reseed_every: int = 20     # steps; codes unused that long are re-seeded from batch features (0: off). Not in paper
    resnet_weights: str = ""   # torchvision resnet18 ImageNet weights (.pth or .safetensors); "" = random init
    quantizer: str = "vq"      # vq: the codebook learned with Eq. 2; kmeans: k-means centroids of the clip features,
                               # frozen, no L_VQ (Table 5 "w/o VQ-Sign"; train.py's stage vq computes them)


class VQSign(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.negatives not in ("batch", "video"):
            raise ValueError(f"VQConfig.negatives must be 'batch' or 'video', got {cfg.negatives!r}")
        if cfg.quantizer not in ("vq", "kmeans"):
            raise ValueError(f"VQConfig.quantizer must be 'vq' or 'kmeans', got {cfg.quantizer!r}")
        self.encoder = VisualEncoder(cfg.width, cfg.d, cfg.center)  # E_v
        if cfg.resnet_weights:
            load_resnet18_weights(self.encoder.resnet, cfg.resnet_weights)
        self.codebook = nn.Parameter(torch.randn(cfg.M, cfg.d))  # S^c = {s_i}, random init (Sec. 3.2)
        self.codebook.requires_grad_(cfg.quantizer == "vq")  # k-means centroids stay where k-means put them
        self.g = ContextGRU(cfg.d)
        self.W = nn.ModuleList(nn.Linear(cfg.d, cfg.d) for _ in range(cfg.K))  # W_k, one per future step k
        self.register_buffer("code_hits", torch.zeros(cfg.M))  # clips per code since the last re-seed check
        self.register_buffer("steps_since_reseed", torch.zeros((), dtype=torch.long))

    def quantize(self, z, clip_mask):
        """z (B, T, d) -> z_hat (B, T, d) = s_j with j = argmin_i ||z_t - s_i||^2, idx (B, T); padding: 0 and -1."""
        zv = z[clip_mask]  # (V, d) valid clips only
        if not self.training and not torch.isfinite(zv).all():  # in training the NaN reaches the loss: train.fit
            raise FloatingPointError(f"VQ-Sign: {int((~torch.isfinite(zv)).any(1).sum())} clip features z are NaN/inf "
                                     "(NaN in the frames, or a diverged encoder)")
        idx_v, _ = nearest_code(zv.detach().float().contiguous(), self.codebook.detach().float().contiguous())
        z_hat = z.new_zeros(z.shape)
        z_hat[clip_mask] = self.codebook[idx_v].to(z.dtype)  # a gather: gradient reaches the chosen codes only
        idx = torch.full(clip_mask.shape, -1, dtype=torch.long, device=z.device)
        idx[clip_mask] = idx_v
        if self.training:
            self.code_hits += ddp_agree(torch.bincount(idx_v, minlength=self.config.M).to(self.code_hits.dtype))
        return z_hat, idx

    def encode(self, frames, clip_mask):
        """frames (B, N, 3, H, W), clip_mask (B, T) bool or n_clips (B,) -> z, z_hat (B, T, d), idx (B, T) (-1: pad)."""
        clip_mask = clip_mask_of(clip_mask)
        z = self.encoder(frames, clip_mask)
        z_hat, idx = self.quantize(z, clip_mask)
        return z, z_hat, idx

    @torch.no_grad()
    def reseed_dead_codes(self, z_valid):
        """Every `reseed_every` training steps, codes no clip chose since the last check become random clip features
        of this batch (deviation from the paper, see the module docstring). Their Adam moments are left as they are.
        Under DDP the new codes are rank 0's picks, broadcast, so every rank holds the same codebook; returns the
        number of codes filled from this process's clips (0 on the other ranks)."""
        self.steps_since_reseed += 1
        if self.config.reseed_every <= 0 or int(self.steps_since_reseed) < self.config.reseed_every:
            return 0
        dead = (self.code_hits == 0).nonzero().squeeze(1)
        z_valid = z_valid[torch.isfinite(z_valid).all(1)]  # a NaN batch (a step fit will skip) seeds nothing
        if len(dead) and len(z_valid):
            pick = torch.randint(len(z_valid), (len(dead),), device=z_valid.device)
            self.codebook[dead] = ddp_agree(z_valid[pick].to(self.codebook.dtype), from_rank0=True)
        self.code_hits.zero_()
        self.steps_since_reseed.zero_()
        return len(dead) if not dist.is_initialized() or dist.get_rank() == 0 else 0

    def forward(self, batch, reseed=True):
        """L_VQ of Eq. 2 on a batch (data.collate's dict) -> (loss, metrics, idx (B, T)); reseed=False skips the
        re-seeding check (train.py: on all but the first micro-batch of an optimizer step). The squared norms of Eq. 2
        are averaged over d (F.mse_loss, as VQ-VAE implementations do) and over the valid clips; L_cp is averaged
        over valid tau (see context_prediction). Our choice: summed over d, as written, the commitment term outweighs
        L_cp ~d times, and in our runs it pulled every clip of a video onto one code (L_cp stuck at chance)."""
        cfg, clip_mask = self.config, clip_mask_of(batch["clip_mask"])
        z = self.encoder(batch["frames"], clip_mask)  # (B, T, d)
        reseeded = self.reseed_dead_codes(z.detach()[clip_mask]) if self.training and reseed else 0
        z_hat, idx = self.quantize(z, clip_mask)
        z_q = z + (z_hat - z).detach()  # noop in forward pass, straight-through gradient in backward pass
        c = self.g(z_q, clip_mask)  # c_tau = g({z_hat_t}_{t <= tau}), (B, T, d)
        L_cp, cp = context_prediction(z, c, clip_mask, self.W, cfg.lam, cfg.negatives == "video")  # Eq. 1
        zv, zv_hat = z[clip_mask], z_hat[clip_mask]  # (V, d)
        L_code = F.mse_loss(zv_hat, zv.detach())  # Eq. 2: ||sg(z_t) - z_hat_t||^2 / d, moves the codebook
        L_commit = F.mse_loss(zv, zv_hat.detach())  # Eq. 2: ||z_t - sg(z_hat_t)||^2 / d, moves the encoder
        loss = L_cp + L_code + cfg.gamma * L_commit  # Eq. 2
        usage, ppl = codebook_usage(idx[clip_mask], cfg.M)
        metrics = dict(loss=loss.item(), L_cp=L_cp.item(), L_code=L_code.item(), L_commit=L_commit.item(),
                       **cp, usage=usage, perplexity=ppl, reseeded=reseeded)
        return loss, metrics, idx

    def loss(self, batch, reseed=True):
        """(L_VQ, metrics dict) of a batch."""
        loss, metrics, _ = self(batch, reseed)
        return loss, metrics

    @torch.no_grad()
    def tokenize_batch(self, frames, clip_mask):
        """Character tokens of a batch: one list of T_b codebook indices per video (eval mode, no gradient)."""
        was_training = self.training
        self.eval()
        try:
            _, _, idx = self.encode(frames, clip_mask)
        finally:
            self.train(was_training)
        return [row[row >= 0].tolist() for row in idx]

    def tokenize(self, frames):
        """One video's normalized frames (N, 3, H, W), N >= 1 -> its num_clips(N) character tokens."""
        if frames.dim() != 4 or frames.shape[0] < 1:
            raise ValueError(f"tokenize: frames must be (N >= 1, 3, H, W), got {tuple(frames.shape)}")
        T = num_clips(frames.shape[0])
        pad = frames[-1:].expand(padded_length(T) - frames.shape[0], -1, -1, -1)  # repeat the last frame, as data.py
        return self.tokenize_batch(torch.cat([frames, pad])[None], torch.tensor([T], device=frames.device))[0]


# ---------------------------------------------------------------------------------------------------------------------
# codebook diagnostics

def codebook_usage(idx, M):
    """idx (V,) codes of valid clips -> (fraction of the M codes used, perplexity exp(H(p)) of the code histogram)."""
    p = torch.bincount(idx, minlength=M).double() / max(len(idx), 1)
    H = -(p[p > 0] * p[p > 0].log()).sum()
    return float((p > 0).double().mean()), float(H.exp())


def kmeans(x, k, iters=50, seed=0, init=None):
    """Lloyd's k-means (Table 5 "w/o VQ-Sign" quantizes E_v's features with it): x (n, d) -> centroids (k, d),
    started from `init` (k, d) or else from k distinct rows of x drawn with `seed`; a cluster that empties keeps its
    centroid (our choice)."""
    if len(x) < k:
        raise ValueError(f"kmeans: {len(x)} points for k = {k} clusters")
    x = x.double()
    c = (x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]] if init is None
         else init.double()).clone()  # (k, d)
    for _ in range(iters):
        a = (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.t() + c.pow(2).sum(1)).argmin(1)  # (n, d) @ (d, k): nearest
        n = torch.bincount(a, minlength=k)
        s = torch.zeros_like(c).index_add_(0, a, x)  # (k, d) per-cluster sums
        new = torch.where(n[:, None] > 0, s / n.clamp(min=1)[:, None], c)
        if torch.equal(new, c):
            break
        c = new
    return c


def token_alignment(codes, labels):
    """How well codes track ground-truth labels (e.g. the synthetic generator's primitive at each clip's centre
    frame): purity = sum over codes of its most frequent label's count / total; NMI = I(code; label) /
    ((H(code) + H(label)) / 2) (arithmetic normalisation, as scikit-learn's default)."""
    if len(codes) != len(labels) or not len(codes):
        raise ValueError(f"token_alignment: {len(codes)} codes vs {len(labels)} labels")
    cu, ci = torch.unique(torch.as_tensor(codes), return_inverse=True)
    lu, li = torch.unique(torch.as_tensor(labels), return_inverse=True)
    joint = torch.zeros(len(cu), len(lu), dtype=torch.float64)
    joint.index_put_((ci, li), torch.ones(len(ci), dtype=torch.float64), accumulate=True)  # contingency table
    purity = float(joint.max(1).values.sum() / len(codes))
    p = joint / len(codes)
    pc, pl = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    mi = float((p[nz] * (p[nz] / (pc @ pl)[nz]).log()).sum())  # (C, 1) @ (1, L) -> (C, L) product of marginals
    H = lambda q: float(-(q[q > 0] * q[q > 0].log()).sum())
    denom = (H(pc) + H(pl)) / 2
    return purity, (mi / denom if denom > 0 else 1.0)
