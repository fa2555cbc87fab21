"""VQ-Sign, the vector-quantized visual sign module of SignLLM (Sec. 3.2, implementation details in Sec. 4.1).

frames --E_v--> z_t (one per 13-frame clip, stride 4) --nearest code of S^c--> z_hat_t --g--> c_tau --W_k--> h_tau,
which picks z_{tau+k} out of the minibatch (Eq. 1); Eq. 2 adds the codebook terms. Layout: ResNet18 -> VisualEncoder
(E_v) -> ContextGRU (g) -> context_prediction -> VQConfig -> VQSign -> diagnostics and k-means. A batch is data.py's:
frames padded to each video's clip grid (data.padded_length), with masks of the real frames and clips.
Not in the paper, each for a failure we saw on the synthetic set (the reason is at the line): Eq. 2's norms averaged
over d; z standardized by a BatchNorm; dead codes re-seeded; options, off by default: negatives="video", center=True."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from signllm_kernels.nearest_code import nearest_code

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())  # torchvision's name

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.downsample(x))


class ResNet18(nn.Module):
    """ResNet18 (He et al. 2016) in torchvision's key layout, no head: (F, 3, H, W) -> (F, 8 width, H/32, W/32)."""

    def __init__(self, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width, 1))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 4 * width, 2), BasicBlock(4 * width, 4 * width, 1))
        self.layer4 = nn.Sequential(BasicBlock(4 * width, 8 * width, 2), BasicBlock(8 * width, 8 * width, 1))

    def forward(self, x):
        if self.conv1.out_channels >= 8:  # oneDNN corrupts the heap on 2-6 channels, 1 thread (torch 2.13, AMD EPYC)
            x = x.contiguous(memory_format=torch.channels_last)  # same values; ~1.3-1.5x faster convs and BN on CPU
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)  # (F, width, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (F, 8 width, H/32, W/32)

    def load_torchvision(self, sd, source="state dict"):
        """A torchvision resnet18 state dict: fc.* is skipped and returned, an absent num_batches_tracked is 0."""
        ours = self.state_dict()
        skipped = sorted(k for k in sd if k in ("fc.weight", "fc.bias"))
        unexpected = sorted(set(sd) - set(ours) - set(skipped))
        missing = sorted(k for k in set(ours) - set(sd) if not k.endswith("num_batches_tracked"))
        if unexpected or missing:
            raise KeyError(f"{source}: not a torchvision resnet18 state dict: {len(missing)} missing {missing[:8]}, "
                           f"{len(unexpected)} unexpected {unexpected[:8]}")
        for k, v in ours.items():
            if k in sd and tuple(sd[k].shape) != tuple(v.shape):
                raise ValueError(f"{source}: {k} has shape {tuple(sd[k].shape)}, this ResNet18 needs {tuple(v.shape)}; "
                                 "ImageNet weights need width=64")
        self.load_state_dict({k: sd[k] if k in sd else torch.zeros_like(v) for k, v in ours.items()}, strict=True)
        return skipped


def load_resnet18_weights(resnet, path):
    """ImageNet weights from a torchvision `.pth` (read with weights_only=True: no pickled code) or a `.safetensors`."""
    sd = load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise TypeError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return resnet.load_torchvision(sd, source=path)


def clip_mask_of(m, T=None):
    """A clip mask (B, T) bool from itself or from clip counts (B,); it must be a prefix with >= 1 clip per row."""
    if m.dtype != torch.bool:
        m = torch.arange(int(m.max()) if T is None else T, device=m.device)[None] < m.long()[:, None]  # (B, T)
    n = m.sum(1)
    if m.dim() != 2 or (n < 1).any() or (m != (torch.arange(m.shape[1], device=m.device)[None] < n[:, None])).any():
        raise ValueError(f"clip_mask must be (B, T) bool with 1..T leading True per row, got {tuple(m.shape)} "
                         f"with clip counts {n.tolist()}")
    return m


class VisualEncoder(nn.Module):
    """E_v (Sec. 4.1): frames (B, N, 3, H, W) -> z (B, T, d), ResNet18 once per frame, then two Conv3Ds.
    frame_mask (B, N): each video's frames (its clip grid); clip_mask (B, T): its clips."""

    def __init__(self, width, d, center=False, still=False):
        super().__init__()
        self.center, self.still = center, still
        self.resnet = ResNet18(width)
        # Sec. 4.1's clips of 13 frames, stride 4, in one pass over the sequence: kernel 5, stride 2, twice, maps
        # 4T + 9 frames -> 2T + 3 -> T, and z_t sees frames 4t .. 4t + 12, clip t alone. The layout is our guess
        self.conv3d = nn.Sequential(nn.Conv3d(8 * width, d, (5, 3, 3), (2, 1, 1), (0, 1, 1)), nn.ReLU(),
                                    nn.Conv3d(d, d, (5, 3, 3), (2, 1, 1), (0, 1, 1)))
        self.norm = nn.BatchNorm1d(d, affine=False)  # not in the paper: standardized z rules out all z_t equal

    def forward(self, frames, frame_mask, clip_mask):
        N, T = int(frame_mask.sum(1).max()), clip_mask.shape[1]  # the longest video's frames and clips
        frames, frame_mask = frames[:, :N], frame_mask[:, :N]
        if self.still:  # ours: each video's mean frame goes, and with it what stays still (background, body, signer)
            m = frame_mask[:, :, None, None, None].to(frames.dtype)  # (B, N, 1, 1, 1)
            frames = frames - (frames * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        # the ResNet sees each video's own frames only: padding costs no compute and stays out of BatchNorm
        x = self.resnet(frames[frame_mask])  # (F, 3, H, W) -> (F, 8 width, h, w)
        maps = x.new_zeros(*frame_mask.shape, *x.shape[1:]).index_put_((frame_mask,), x)  # (B, N, 8 width, h, w)
        z = self.conv3d(maps.transpose(1, 2)).mean((3, 4)).transpose(1, 2)  # (B, d, T, h, w) -> pooled (B, T, d)
        if z.shape[1] != T:
            raise ValueError(f"frames: {N} time steps give {z.shape[1]} clips, clip_mask has {T}; T clips of 13 "
                             "frames, stride 4, span 13 + 4 (T - 1) frames (data.padded_length)")
        if self.center:  # not in the paper: each video's mean z goes, and with it what is constant (the signer)
            m = clip_mask[..., None].to(z.dtype)  # (B, T, 1)
            z = z - (z * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        zv, bn = z[clip_mask], self.norm  # (V, d): statistics of the valid clips; a lone clip takes the running ones
        zv = F.batch_norm(zv, bn.running_mean, bn.running_var, eps=bn.eps) if self.training and len(zv) < 2 else bn(zv)
        return z.new_zeros(z.shape).index_put_((clip_mask,), zv)  # z (B, T, d), zero at padded clips


class ContextGRU(nn.Module):
    """g, a ConvGRU with a (1, 1) kernel (Sec. 4.1), on our pooled 1 x 1 maps a GRU (torch's: reset gate after W_hn h).
    x (B, L, d), mask (B, L) bool or lengths (B,) -> c (B, L, d), 0 where padded. CRA runs it over words' characters."""

    def __init__(self, d):
        super().__init__()
        self.gru = nn.GRU(d, d, batch_first=True)

    def forward(self, x, mask):
        c, _ = self.gru(x)  # (B, L, d); causal: padding never reaches a valid step
        return c * clip_mask_of(mask, x.shape[1])[..., None].to(c.dtype)


def context_prediction(z, c, clip_mask, W, lam, same_video=False, skip=0):
    """L_cp = sum_k L_k^cp (Eq. 1), h_tau = W_k c_tau: z_{tau+k} against the mean over other valid clips (same_video:
    its video's, wav2vec's p_n). cp_acc: positive above all negatives (chance: cp_chance); cp_beaten: chance 0.5.
    skip > 0 (ours): k = skip + 1 .. skip + K, and clips within `skip` of the target are no negatives. Clips overlap
    (13 frames, stride 4): with skip = 3 no target shares a frame with the context's clips or with a negative, so
    matching the frames themselves (their noise, their exact pose) no longer tells the target apart."""
    pool = z[clip_mask]  # (V, d) every valid clip of the minibatch
    video, when = clip_mask.nonzero().unbind(1)  # (V,) video and time of each pool row
    row = (torch.cumsum(clip_mask.flatten(), 0) - 1).view(clip_mask.shape)  # (B, T) row of z[b, t] in pool
    L_cp, hits, beaten, chance, n = z.new_zeros(()), 0, 0.0, 0.0, 0
    for k, W_k in enumerate(W, skip + 1):
        valid = clip_mask[:, k:]  # (B, T - k): tau whose tau + k is inside the video
        pos = row[:, k:][valid]  # (P,) row of z_{tau+k}
        mine = video[None, :] == video[pos][:, None]  # (P, V): the clips of the target's video
        near = mine & ((when[None, :] - when[pos][:, None]).abs() <= skip)  # the target and the clips it overlaps
        is_neg = (mine if same_video else torch.ones_like(mine)) & ~near  # (P, V)
        keep = is_neg.any(1)  # a target needs a negative
        if not keep.any():
            continue
        h = W_k(c[:, :-k][valid][keep])  # (P, d) h_tau
        pos, is_neg = pos[keep], is_neg[keep]
        s = h @ pool.t()  # (P, d) @ (d, V) -> (P, V): z~^T h_tau for every clip
        s_pos = s.gather(1, pos[:, None]).squeeze(1)  # (P,) z_{tau+k}^T h_tau
        n_neg = is_neg.sum(1)  # (P,) >= 1
        neg = (F.logsigmoid(-s) * is_neg).sum(1) / n_neg  # E_{z~ ~ p_n} log sigma(-z~^T h_tau)
        L_cp = L_cp - (F.logsigmoid(s_pos) + lam * neg).mean()  # Eq. 1, mean over tau (the paper sums), sum over k
        hits += int((s_pos > s.masked_fill(~is_neg, float("-inf")).amax(1)).sum())
        beaten += float((((s_pos[:, None] > s) & is_neg).sum(1).double() / n_neg).sum())
        chance += float((1 / (1 + n_neg.double())).sum())
        n += len(pos)
    n = max(n, 1)
    return L_cp, dict(cp_acc=hits / n, cp_beaten=beaten / n, cp_chance=chance / n)


class OneProcess:
    """How the processes of a run agree on a tensor: in one process, trivially. Under torchrun the trainer sets
    VQSign.processes to engine.Processes (a sum over the processes, rank 0's tensor), so that they re-seed alike."""
    rank = 0

    def sum(self, t):
        return t

    def rank0(self, t):
        return t


def codebook_usage(idx, M):
    """idx (V,) codes of valid clips -> (fraction of the M codes used, perplexity exp(H(p)) of the code histogram)."""
    p = torch.bincount(idx, minlength=M).double() / max(len(idx), 1)
    H = -(p[p > 0] * p[p > 0].log()).sum()
    return float((p > 0).double().mean()), float(H.exp())


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
    cp_skip: int = 0           # ours: Eq. 1 predicts z_{tau+k}, k = cp_skip + 1 .. cp_skip + K (context_prediction)
    still: bool = False        # ours: E_v sees each frame minus its video's mean frame (what moves)
    reseed_every: int = 20     # steps; codes unused that long are re-seeded from batch features (0: off). Not in paper
    resnet_weights: str = ""   # torchvision resnet18 ImageNet weights (.pth or .safetensors); "" = random init


class VQSign(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.negatives not in ("batch", "video"):
            raise ValueError(f"VQConfig: negatives must be 'batch' or 'video', got {cfg.negatives!r}")
        self.encoder = VisualEncoder(cfg.width, cfg.d, cfg.center, cfg.still)  # E_v
        if cfg.resnet_weights:
            load_resnet18_weights(self.encoder.resnet, cfg.resnet_weights)
        self.codebook = nn.Parameter(torch.randn(cfg.M, cfg.d))  # S^c, the character-level codebook (Sec. 3.2)
        self.g = ContextGRU(cfg.d)
        self.W = nn.ModuleList(nn.Linear(cfg.d, cfg.d) for _ in range(cfg.K))  # W_k, one per future step k
        self.register_buffer("code_hits", torch.zeros(cfg.M))  # clips per code since the last re-seed check
        self.register_buffer("steps_since_reseed", torch.zeros((), dtype=torch.long))
        self.processes = OneProcess()  # under torchrun the trainer's (engine.ddp): re-seeding agrees across processes

    def quantize(self, z, clip_mask):
        """z (B, T, d) -> z_hat (B, T, d) = s_j with j = argmin_i ||z_t - s_i||^2, idx (B, T); padding: 0 and -1."""
        zv = z[clip_mask]  # (V, d) valid clips only
        if not self.training and not torch.isfinite(zv).all():  # in training the NaN reaches the loss: train.fit
            raise FloatingPointError(f"VQ-Sign: {int((~torch.isfinite(zv)).any(1).sum())} clip features z are NaN/inf "
                                     "(NaN in the frames, or a diverged encoder)")
        idx_v, _ = nearest_code(zv.detach().float().contiguous(), self.codebook.detach().float().contiguous())
        z_hat = z.new_zeros(z.shape).index_put_((clip_mask,), self.codebook[idx_v].to(z.dtype))  # grad: chosen codes
        idx = torch.full(clip_mask.shape, -1, device=z.device).index_put_((clip_mask,), idx_v)  # (B, T), -1 at padding
        if self.training:  # clips per code, summed over the processes of a torchrun
            self.code_hits += self.processes.sum(torch.bincount(idx_v, minlength=self.config.M).to(torch.float32))
        return z_hat, idx

    def encode(self, batch):
        """A data.collate batch (frames, frame_mask, clip_mask) -> z, z_hat (B, T, d), idx (B, T) (-1: padding)."""
        clip_mask = clip_mask_of(batch["clip_mask"])
        z = self.encoder(batch["frames"], batch["frame_mask"], clip_mask)
        return (z, *self.quantize(z, clip_mask))

    @torch.no_grad()
    def reseed_dead_codes(self, z_valid):
        """Not in the paper (cf. Jukebox's restarts): every reseed_every steps unused codes become clip features."""
        self.steps_since_reseed += 1
        if self.config.reseed_every <= 0 or int(self.steps_since_reseed) < self.config.reseed_every:
            return 0
        dead = (self.code_hits == 0).nonzero().squeeze(1)
        z_valid = z_valid[torch.isfinite(z_valid).all(1)]  # a NaN batch (a step fit will skip) seeds nothing
        if len(dead) and len(z_valid):
            pick = torch.randint(len(z_valid), (len(dead),), device=z_valid.device)
            self.codebook[dead] = self.processes.rank0(z_valid[pick].to(self.codebook.dtype))  # rank 0's picks
        self.code_hits.zero_()
        self.steps_since_reseed.zero_()
        return len(dead) if self.processes.rank == 0 else 0  # counted once: the log averages over processes

    def forward(self, batch, reseed=True):
        """A data.collate batch -> (L_VQ of Eq. 2, metrics, idx (B, T), z_q (B, T, d), the straight-through z_hat)."""
        cfg, clip_mask = self.config, clip_mask_of(batch["clip_mask"])
        z = self.encoder(batch["frames"], batch["frame_mask"], clip_mask)  # (B, T, d)
        reseeded = self.reseed_dead_codes(z.detach()[clip_mask]) if self.training and reseed else 0
        z_hat, idx = self.quantize(z, clip_mask)
        z_q = z + (z_hat - z).detach()  # noop in forward pass, straight-through gradient in backward pass
        c = self.g(z_q, clip_mask)  # c_tau = g({z_hat_t}_{t <= tau}), (B, T, d)
        L_cp, cp = context_prediction(z, c, clip_mask, self.W, cfg.lam, cfg.negatives == "video", cfg.cp_skip)  # Eq. 1
        zv, zv_hat = z[clip_mask], z_hat[clip_mask]  # (V, d)
        # Not in the paper: means over d; summed, the commitment term swamped L_cp (one code per video)
        L_code = F.mse_loss(zv_hat, zv.detach())  # Eq. 2: ||sg(z_t) - z_hat_t||^2 / d, moves the codebook
        L_commit = F.mse_loss(zv, zv_hat.detach())  # Eq. 2: ||z_t - sg(z_hat_t)||^2 / d, moves the encoder
        loss = L_cp + L_code + cfg.gamma * L_commit  # Eq. 2
        usage, ppl = codebook_usage(idx[clip_mask], cfg.M)
        return loss, dict(loss=loss.item(), L_cp=L_cp.item(), L_code=L_code.item(), L_commit=L_commit.item(), **cp,
                          usage=usage, perplexity=ppl, reseeded=reseeded), idx, z_q

    def loss(self, batch, reseed=True):  # (L_VQ, metrics)
        return self(batch, reseed)[:2]


def kmeans(x, k, iters=50, seed=0, init=None):
    """Lloyd's k-means (Table 5 "w/o VQ-Sign"): x (n, d) -> centroids (k, d), from `init` or k rows drawn with seed."""
    if len(x) < k:
        raise ValueError(f"kmeans: {len(x)} points for k = {k} clusters")
    x = x.double()
    c = (x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]] if init is None
         else init.double()).clone()  # (k, d)
    for _ in range(iters):
        a = (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.t() + c.pow(2).sum(1)).argmin(1)  # (n, d) @ (d, k): nearest
        n = torch.bincount(a, minlength=k)
        s = torch.zeros_like(c).index_add_(0, a, x)  # (k, d) per-cluster sums
        new = torch.where(n[:, None] > 0, s / n.clamp(min=1)[:, None], c)  # an emptied cluster stays: our choice
        if torch.equal(new, c):
            break
        c = new
    return c


def token_alignment(codes, labels):
    """(purity, NMI) of codes against labels (e.g. each clip's synthetic primitive); NMI as scikit-learn's default."""
    if len(codes) != len(labels) or not len(codes):
        raise ValueError(f"token_alignment: {len(codes)} codes vs {len(labels)} labels")
    cu, ci = torch.unique(torch.as_tensor(codes), return_inverse=True)
    lu, li = torch.unique(torch.as_tensor(labels), return_inverse=True)
    joint = torch.bincount(ci * len(lu) + li, minlength=len(cu) * len(lu)).double().view(len(cu), len(lu))  # (C, L)
    purity = float(joint.max(1).values.sum() / len(codes))
    p = joint / len(codes)
    pc, pl = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    mi = float((p[nz] * (p[nz] / (pc @ pl)[nz]).log()).sum())  # (C, 1) @ (1, L) -> (C, L) product of marginals
    H = lambda q: float(-(q[q > 0] * q[q > 0].log()).sum())
    denom = (H(pc) + H(pl)) / 2  # NMI = I(code; label) / mean(H(code), H(label))
    return purity, (mi / denom if denom > 0 else 1.0)
