"""Tests of kernels/ (Sec. 3.2 nearest-code lookup, Sec. 3.3 Eq. 6 MMD): the Triton kernels against float64 torch.

On a CPU the kernels run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on a GPU they run
compiled. Inputs are fresh random draws: a failure prints its seed; rerun it with KERNELS_TEST_SEED=<seed>.
The compile test builds every kernel for Ampere (sm_80) and Hopper (sm_90) in a subprocess without TRITON_INTERPRET, so
it needs no GPU, and fails on a spill, a missing tensor-core instruction or a slow ptxas (python -m tests.test_kernels
prints its table).
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch
import triton

import signllm_kernels.mmd as mmdm
import signllm_kernels.nearest_code as ncm
from signllm_kernels.common import GPU_BLOCKS, GPU_SAFE_BLOCKS, INTERPRETER_BLOCKS, Blocks, dot_precision
from signllm_kernels.mmd import mmd, mmd_ref
from signllm_kernels.nearest_code import nearest_code, nearest_code_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = bool(triton.knobs.runtime.interpret)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture
def rng():
    seed = int(os.environ.get("KERNELS_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    return torch.Generator().manual_seed(seed), f"seed={seed}"


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """fp32 inputs multiply exactly unless torch allows TF32 (common.dot_precision), and the float64 comparisons below
    use fp32 tolerances: the switch is pinned off, as torch ships it; the tf32 tests turn it on themselves."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def test_triton_path_is_taken():
    # without this the tests below could compare the reference with itself
    assert DEVICE == "cuda" or INTERPRETED, "no CUDA and TRITON_INTERPRET unset: tests/conftest.py did not run"


def test_package_names_are_its_submodules():
    import signllm_kernels
    assert signllm_kernels.mmd is mmdm and signllm_kernels.nearest_code is ncm
    assert not hasattr(signllm_kernels, "mmd_ref") and not hasattr(signllm_kernels, "nearest_code_ref"), "re-exports"


# Another installed package named `kernels` (Hugging Face's, which transformers >= 5 imports), stood in for by a
# regular package on PYTHONPATH, behind the repository root as site-packages is when `python train.py` runs.
TWO_KERNELS = r"""
import importlib.util, os, sys
order = sys.argv[1]
if order == "theirs_first":
    from kernels import CUDAProperties  # what transformers' hub_kernels does at its import
import vq, cra  # ours: nearest_code and mmd
if order == "ours_first":
    from kernels import CUDAProperties
import kernels, torch
assert kernels.__file__ == os.path.join(sys.argv[2], "kernels", "__init__.py"), kernels.__file__
assert vq.nearest_code.__module__ == "signllm_kernels.nearest_code", vq.nearest_code.__module__
for mod in (sys.modules["signllm_kernels.nearest_code"], sys.modules["signllm_kernels.mmd"]):
    assert mod.__file__ == os.path.join(os.getcwd(), "kernels", os.path.basename(mod.__file__)), mod.__file__
idx, _ = vq.nearest_code(torch.eye(3), torch.eye(3).flip(0))  # ours runs: the reference on a CPU
assert idx.tolist() == [2, 1, 0], idx
assert float(cra.mmd(torch.randn(5, 4), torch.randn(6, 4), [1.0])) > 0
if importlib.util.find_spec("transformers") and importlib.metadata.packages_distributions().get("kernels"):
    sys.path.remove(sys.argv[2])  # the real one: transformers imports Hugging Face's `kernels` beside ours
    for name in [m for m in sys.modules if m == "kernels" or m.startswith("kernels.")]:
        del sys.modules[name]
    import transformers.integrations.hub_kernels as hk
    assert hk.CUDAProperties.__module__.startswith("kernels"), hk.CUDAProperties.__module__
print("ok")
"""


@pytest.mark.parametrize("order", ["ours_first", "theirs_first"])
def test_another_kernels_package_and_ours_live_side_by_side(tmp_path, order):
    """Our kernels/ never takes the import name `kernels` from another package, nor does our code pick up theirs,
    in either import order. Fails if kernels/ gets an __init__.py again or a module imports `kernels.<file>`."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("CUDAProperties = 'theirs'\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # CPU tensors: the torch references
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", TWO_KERNELS, order, str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# ----------------------------------------------------------------------------- nearest_code

def exact_sq_dists(z, codebook):
    z, c = z.double(), codebook.double()
    return z.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1) - 2.0 * z @ c.t()  # (N, M), float64


@pytest.mark.parametrize("N,M,d,z_dtype,c_dtype,blocks", [
    (1000, 257, 100, "fp32", "fp32", None),
    (1000, 257, 100, "fp16", "fp16", None),
    (1000, 257, 100, "bf16", "bf16", None),
    (1000, 257, 100, "bf16", "fp32", None),  # mixed: bf16 features, fp32 codebook
    (1000, 257, 1024, "fp32", "fp32", None),  # paper scale d
    (200, 77, 70, "fp32", "fp32", GPU_BLOCKS),  # the GPU tiles: several K steps with a tail
    (5, 3, 7, "fp32", "fp32", GPU_BLOCKS),  # d < 16: tl.dot's K is masked
])
def test_nearest_code_matches_float64(rng, N, M, d, z_dtype, c_dtype, blocks):
    gen, seed = rng
    codebook = torch.randn(M, d, generator=gen).to(DTYPES[c_dtype])
    z = torch.randn(N, d, generator=gen)
    near = torch.randint(0, M, (N // 2,), generator=gen)  # half the rows sit next to a code, as in trained VQ
    z[: N // 2] = codebook[near].float() + 0.01 * torch.randn(N // 2, d, generator=gen)
    z = z.to(DTYPES[z_dtype])
    z, codebook = z.to(DEVICE), codebook.to(DEVICE)
    idx = torch.full((N,), -7, dtype=torch.int64, device=DEVICE)  # poisoned: every row must be written
    dist = torch.full((N,), float("nan"), device=DEVICE)
    blocks = blocks or (INTERPRETER_BLOCKS if INTERPRETED else GPU_BLOCKS)
    ncm._nearest_code_triton(z, codebook, idx, dist, blocks)
    idx, dist = idx.cpu(), dist.cpu()
    D = exact_sq_dists(z.cpu(), codebook.cpu())  # (N, M)
    tol = 1e-5 * (z.cpu().double().pow(2).sum(1) + codebook.cpu().double().pow(2).sum(1).max()) + 1e-6  # fp32 rounding
    assert ((idx >= 0) & (idx < M)).all(), f"index out of range, {seed}"
    chosen = D.gather(1, idx[:, None]).squeeze(1)
    assert ((dist.double() - chosen).abs() <= tol).all(), f"dist differs from float64 at the chosen code, {seed}"
    assert (chosen <= D.min(1).values + tol).all(), f"chosen code is not the nearest, {seed}"
    idx_ref, dist_ref = nearest_code_ref(z.cpu(), codebook.cpu())
    assert ((dist.double() - dist_ref.double()).abs() <= tol).all(), f"dist differs from nearest_code_ref, {seed}"
    # the public wrapper agrees with the internal launch
    idx2, dist2 = nearest_code(z, codebook, blocks)
    assert torch.equal(idx2.cpu(), idx) and torch.equal(dist2.cpu(), dist), f"wrapper differs, {seed}"


@pytest.mark.parametrize("blocks", [None, GPU_BLOCKS])
def test_nearest_code_ties_go_to_lowest_index(rng, blocks):
    gen, seed = rng
    # small integers: every product and sum is exact in fp32, so ties are exact ties
    codebook = torch.randint(-1, 2, (300, 20), generator=gen).float()
    codebook[280:] = codebook[:20]  # duplicates across tiles too
    z = torch.randint(-1, 2, (500, 20), generator=gen).float()
    D = exact_sq_dists(z, codebook)
    expected = D.argmin(1)  # torch: the first minimal index
    assert (D == D.min(1, keepdim=True).values).sum(1).gt(1).any(), f"the draw has no ties, {seed}"
    idx, dist = nearest_code(z.to(DEVICE), codebook.to(DEVICE), blocks)
    assert torch.equal(idx.cpu(), expected), f"ties not broken to the lowest index, {seed}"
    assert torch.equal(dist.cpu().double(), D.min(1).values), f"integer distances not exact, {seed}"


def test_nearest_code_nan(rng):
    gen, seed = rng
    z, codebook = torch.randn(300, 50, generator=gen), torch.randn(270, 50, generator=gen)
    idx_clean, dist_clean = nearest_code(z.to(DEVICE), codebook.to(DEVICE))
    bad_rows = torch.tensor([0, 7, 299])
    z[bad_rows, 3] = float("nan")
    nan_code = int(idx_clean[100].item())  # a code some row chose before it was poisoned
    codebook[nan_code, 11] = float("nan")
    idx, dist = (t.cpu() for t in nearest_code(z.to(DEVICE), codebook.to(DEVICE)))
    idx_ref, dist_ref = nearest_code_ref(z, codebook)
    # documented: a NaN row of z gets idx 0 and dist NaN; a NaN code is never chosen
    assert (idx[bad_rows] == 0).all() and dist[bad_rows].isnan().all(), f"NaN rows, {seed}"
    assert (idx != nan_code).all(), f"a NaN code was chosen, {seed}"
    good = torch.ones(300, dtype=torch.bool)
    good[bad_rows] = False
    assert (idx_ref[bad_rows] == 0).all() and dist_ref[bad_rows].isnan().all(), "nearest_code_ref differs"
    assert ((dist - dist_ref)[good].abs() <= 1e-3).all() and (idx_ref != nan_code).all(), f"ref disagrees, {seed}"
    keep = good & (idx_clean.cpu() != nan_code)  # rows whose winner was not poisoned are untouched
    assert torch.equal(idx[keep], idx_clean.cpu()[keep]), f"NaN rows disturbed other rows, {seed}"


def test_nearest_code_bad_inputs():
    z, c = torch.randn(10, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="z must be contiguous"):
        nearest_code(torch.randn(8, 10).t(), c)
    with pytest.raises(ValueError, match="codebook must be 2-D"):
        nearest_code(z, c[None])
    with pytest.raises(ValueError, match="feature sizes differ"):
        nearest_code(z, torch.randn(4, 9))
    with pytest.raises(ValueError, match="z is on cpu but codebook is on meta"):
        nearest_code(z, torch.empty(4, 8, device="meta"))
    with pytest.raises(TypeError, match="z must be float32"):
        nearest_code(z.long(), c)
    with pytest.raises(ValueError, match="codebook has no rows"):
        nearest_code(z, c[:0])
    with pytest.raises(ValueError, match="block size m=48"):
        nearest_code(z.to(DEVICE), c.to(DEVICE), Blocks(n=64, m=48, k=32))


def test_dispatch_follows_environment(monkeypatch):
    z, c = torch.randn(10, 8), torch.randn(4, 8)

    def boom(*args, **kwargs):
        raise AssertionError("wrong path")

    monkeypatch.setattr(ncm, "nearest_code_ref", boom)  # CUDA or interpreter: the kernels must run
    monkeypatch.setattr(mmdm, "mmd_ref", boom)
    nearest_code(z.to(DEVICE), c.to(DEVICE))
    mmd(z.to(DEVICE), c.to(DEVICE), [1.0])
    monkeypatch.undo()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU tensors, interpreter off: the references must run
    monkeypatch.setattr(ncm, "_nearest_code_triton", boom)
    monkeypatch.setattr(mmdm, "MMD", boom)
    assert torch.equal(nearest_code(z, c)[0], nearest_code_ref(z, c)[0])
    assert torch.equal(mmd(z, c, [1.0]), mmd_ref(z, c, [1.0]))


# ----------------------------------------------------------------------------- mmd

@pytest.mark.parametrize("n,m,D,sigmas,x_dtype,y_dtype,grad_y,blocks", [
    (300, 600, 576, [0.25, 0.5, 1.0, 2.0, 4.0], "fp32", "fp32", True, None),  # cra.py scale, SmolLM2 width
    (200, 77, 100, [1.0], "fp32", "fp32", False, None),  # the usual case: only x needs grad
    (1, 150, 33, [0.7, 3.0], "fp32", "fp32", True, None),  # n = 1
    (129, 1, 64, torch.tensor([1.0, 2.0]), "fp32", "fp32", True, None),  # m = 1, sigmas as a tensor
    (150, 90, 100, [0.5, 2.0], "fp16", "fp16", True, None),
    (150, 90, 100, [0.5, 2.0], "bf16", "bf16", True, None),
    (100, 300, 576, [1.0, 2.0, 4.0], "fp32", "bf16", False, None),  # projected fp32 signs vs bf16 text embeddings
    (150, 90, 70, [1.0, 2.0], "fp32", "fp32", True, GPU_BLOCKS),  # GPU tiles: many tiles, K tail
])
def test_mmd_value_and_grads_match_float64(rng, n, m, D, sigmas, x_dtype, y_dtype, grad_y, blocks):
    gen, seed = rng
    x = (torch.randn(n, D, generator=gen) / D**0.5).to(DTYPES[x_dtype])  # rows of norm ~1
    y = (torch.randn(m, D, generator=gen) / D**0.5 + 0.3 / D**0.5).to(DTYPES[y_dtype])  # shifted by 0.3
    x_k = x.to(DEVICE, copy=True).requires_grad_()
    y_k = y.to(DEVICE, copy=True).requires_grad_(grad_y)
    value = mmd(x_k, y_k, sigmas, blocks)
    w = torch.randn((), generator=gen)  # a non-unit upstream gradient
    (w * value).backward()
    x64 = x.double().requires_grad_()
    y64 = y.double().requires_grad_(grad_y)
    ref = mmd_ref(x64, y64, sigmas)
    (w.double() * ref).backward()
    assert type(value.grad_fn).__name__ == "MMDBackward", "the Triton path did not run"
    assert value.dtype == torch.float32 and value.dim() == 0
    num_sigmas = len(sigmas)
    assert abs(value.item() - ref.item()) <= 1e-5 * num_sigmas, f"value {value.item()} vs {ref.item()}, {seed}"
    half = DTYPES[x_dtype] != torch.float32 or DTYPES[y_dtype] != torch.float32
    rel = 2e-3 if half and not INTERPRETED else 1e-4  # compiled half inputs round W to tf32 in the backward
    for got, want, name in ((x_k.grad, x64.grad, "x"), (y_k.grad, y64.grad, "y")):
        if want is None:
            assert got is None, f"{name} got a gradient it did not ask for"
            continue
        dtype = DTYPES[x_dtype if name == "x" else y_dtype]
        assert got.dtype == dtype
        err = (got.cpu().double() - want).abs()
        scale = want.abs().max().item()
        fi = torch.finfo(dtype)  # plus the final rounding to fp16/bf16; fp16 gradients reach its subnormals
        tol = rel * scale + fi.eps * want.abs() + 2 * fi.tiny * fi.eps
        assert (err <= tol).all(), f"grad {name}: max error {err.max():.3g} vs max {scale:.3g}, {seed}"


def test_mmd_pair_sum_writes_every_partial(rng):
    gen, seed = rng
    a, b = torch.randn(150, 40, generator=gen), torch.randn(70, 40, generator=gen)
    blocks = GPU_BLOCKS
    partial = torch.full((3, 2), float("nan"), device=DEVICE)  # (cdiv(150, 64), cdiv(70, 64)), poisoned
    gammas = mmdm.gammas_of([0.5, 3.0], DEVICE)
    got = mmdm._pair_sum(a.to(DEVICE), b.to(DEVICE), gammas, blocks, partial).item()
    D = exact_sq_dists(a, b)
    want = sum(torch.exp(-g * D).sum() for g in (0.5 / 0.25, 0.5 / 9.0)).item()
    assert partial.isfinite().all(), f"a partial was left unwritten, {seed}"
    assert abs(got - want) <= 1e-5 * abs(want), f"S(a, b) {got} vs {want}, {seed}"


def test_mmd_bad_inputs():
    x, y = torch.randn(10, 8), torch.randn(4, 8)
    for sigmas in ([], [1.0, -1.0], [float("inf")], torch.ones(2, 2), torch.ones(2, requires_grad=True)):
        with pytest.raises(ValueError, match="sigmas"):
            mmd(x.to(DEVICE), y.to(DEVICE), sigmas)
    with pytest.raises(ValueError, match="y must be contiguous"):
        mmd(x, torch.randn(8, 4).t(), [1.0])
    with pytest.raises(ValueError, match="feature sizes differ"):
        mmd(x, torch.randn(4, 9), [1.0])
    with pytest.raises(ValueError, match="x has no rows"):
        mmd(x[:0], y, [1.0])


# ----------------------------------------------------------------------------- dot precision: torch's TF32 switch

def test_dot_precision_follows_torch_tf32_switch():
    f32, f16, bf16 = (torch.empty(0, dtype=t) for t in (torch.float32, torch.float16, torch.bfloat16))
    assert dot_precision(f32, f32) == dot_precision(f32, bf16) == "ieee", "torch's default: fp32 matmuls are IEEE"
    assert dot_precision(f16, f16) == dot_precision(bf16, bf16) == "tf32", "16-bit inputs are exact in tf32"
    torch.backends.cuda.matmul.allow_tf32 = True
    assert dot_precision(f32, f32) == dot_precision(bf16, f32) == "tf32"
    torch.set_float32_matmul_precision("highest")
    assert dot_precision(f32, f32) == "ieee"
    torch.set_float32_matmul_precision("high")
    assert dot_precision(f32, f32) == "tf32"


def tf32_changes(a, b, gammas, u=2**-10):
    """How far S(a, b) and dS(a, b)/da can move, to first order, when every tl.dot operand is rounded or truncated to
    tf32 (relative error < u = 2^-10): ||a_i - b_j||^2 = ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j moves by delta_ij <=
    4u ||a_i|| ||b_j||, each exp(-g d2) by g exp(-g d2) delta, w = -2 g exp(-g d2) by 2 g^2 exp(-g d2) delta, and
    W @ b (the backward's second dot) by 2u |w| |b|. Returns (a float, an (n_a, D) float64 tensor)."""
    a, b = a.double(), b.double()
    d2 = exact_sq_dists(a, b)  # (n_a, n_b)
    delta = 4 * u * a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]  # (n_a, n_b)
    e = [torch.exp(-g * d2) for g in gammas]
    k_change = sum(g * e_g for g, e_g in zip(gammas, e)) * delta
    w = sum(2 * g * e_g for g, e_g in zip(gammas, e))  # |w|
    w_change = sum(2 * g * g * e_g for g, e_g in zip(gammas, e)) * delta
    grad_change = (w_change[:, :, None] * (a[:, None, :] - b[None, :, :]).abs()).sum(1) + 2 * u * w @ b.abs()
    return k_change.sum().item(), grad_change


@pytest.mark.parametrize("blocks", [None, GPU_BLOCKS])
def test_tf32_allowed_stays_within_tf32_rounding(rng, blocks):
    """With TF32 allowed, fp32 inputs multiply in tf32 on a GPU: results within the worst-case rounding bounds of
    tf32_changes (doubled: first order), ~2 % of the MMD and of its gradient here. Perturbing the kernels' products by
    2^-7 (nearest_code) or 2^-5 (mmd) fails it; errors a few times tf32's pass. The interpreter's tl.dot is numpy's
    fp32 matmul whatever the precision: on a CPU this test runs the exact path against the same bounds."""
    gen, seed = rng
    torch.backends.cuda.matmul.allow_tf32 = True
    z, codebook = torch.randn(300, 70, generator=gen), torch.randn(100, 70, generator=gen)
    idx, dist = (t.cpu() for t in nearest_code(z.to(DEVICE), codebook.to(DEVICE), blocks))
    D = exact_sq_dists(z, codebook)  # (N, M)
    delta = 4 * 2**-10 * z.double().norm(dim=1) * codebook.double().norm(dim=1).max()  # (N,)
    chosen = D.gather(1, idx[:, None]).squeeze(1)
    assert ((dist.double() - chosen).abs() <= delta).all(), f"dist beyond tf32 rounding, {seed}"
    assert (chosen <= D.min(1).values + 2 * delta).all(), f"chosen code beyond tf32 rounding of the nearest, {seed}"

    sigmas, n, m = [0.5, 2.0], 150, 90
    x = (torch.randn(n, 70, generator=gen) / 70**0.5).requires_grad_()  # rows of norm ~1
    y = torch.randn(m, 70, generator=gen) / 70**0.5 + 1.0 / 70**0.5  # shifted by 1
    x_k = x.detach().to(DEVICE).requires_grad_()
    mmd(x_k, y.to(DEVICE), sigmas, blocks).backward()
    value = mmd(x.detach().to(DEVICE), y.to(DEVICE), sigmas, blocks).item()
    ref = mmd_ref(x.double(), y.double(), sigmas)
    ref.backward()
    gammas = [1 / (2 * s * s) for s in sigmas]
    xd = x.detach()
    (k_xx, g_xx), (k_yy, _), (k_xy, g_xy) = (tf32_changes(a, b, gammas) for a, b in ((xd, xd), (y, y), (xd, y)))
    assert abs(value - ref.item()) <= 2 * (k_xx / n**2 + k_yy / m**2 + 2 * k_xy / (n * m)), f"mmd: {value}, {seed}"
    err = (x_k.grad.cpu().double() - x.grad).abs()
    assert (err <= 2 * (2 / n**2 * g_xx + 2 / (n * m) * g_xy)).all(), f"grad x beyond tf32 rounding, {seed}"


# ----------------------------------------------------------------------------- real compile for Ampere and Hopper

PTXAS_LIMIT_S = 60  # a ptxas run that takes longer is killed, and the test fails: a tile a GPU caller can pick must
#                     compile in seconds (an earlier sweep of tiles met one ptxas run of over 6 minutes and 16 GB)

# Compiles each kernel as a launch on a GPU would: the tiles the launcher may pick (common.GPU_SAFE_BLOCKS), each
# input dtype with the dot precision common.dot_precision picks under either setting of torch's TF32 switch, and both
# specializations a launch makes (D a multiple of 16 or not; pointers 16-byte aligned, as torch allocates them; row
# counts are not specialized), for sm_80 (A100) and sm_90 (H100). ptxas -v reports registers, spills and its time.
COLD_IMPORT = r"""
import contextlib, io, json, os, re, shutil, sys, tempfile, time
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, os.getcwd())
import signllm_kernels.mmd as mmdm
import signllm_kernels.nearest_code as ncm
from signllm_kernels.common import GPU_SAFE_BLOCKS, Blocks, dot_precision, launch

bin_dir, wrappers = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin"), tempfile.mkdtemp()
for name in ("ptxas", "ptxas-blackwell"):  # Triton's ptxas for sm_80 and for sm_90 (the second name misleads)
    path = os.path.join(wrappers, name)
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec timeout {sys.argv[1]} {os.path.join(bin_dir, name)} \"$@\"\n")
    os.chmod(path, 0o755)
    os.environ[f"TRITON_{name.upper().replace('-', '_')}_PATH"] = path
triton.knobs.compilation.always_compile = True  # no cache: ptxas runs, and its log is this compile's
triton.knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v to stdout

def compile_for(kernel, arch, blocks, dtype, d_aligned, types, **constexprs):
    constexprs.update(BLOCK_N=blocks.n, BLOCK_M=blocks.m, BLOCK_K=blocks.k)
    assert set(types) | set(constexprs) == set(kernel.arg_names), kernel.arg_names
    signature = {name: types.get(name, "constexpr") for name in kernel.arg_names}
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name, ty in types.items()
             if ty[0] == "*" or (d_aligned and name in ("d", "D"))}
    row = {"kernel": kernel.__name__, "arch": arch, "blocks": repr(blocks), "dtype": dtype,
           "precision": constexprs["PRECISION"], "d_aligned": d_aligned}
    log, start = io.StringIO(), time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                                      target=GPUTarget("cuda", arch, 32), options={"num_warps": blocks.num_warps})
    except Exception as e:  # e.g. ptxas killed by its time limit (exit 124)
        return {**row, "error": f"{type(e).__name__}: {e}"[:600]}
    seconds, log, ptx = time.perf_counter() - start, log.getvalue(), compiled.asm["ptx"]
    number = lambda pattern: sum(float(x) for x in re.findall(pattern, log))  # one entry function: one match
    return {**row, "registers": int(number(r"Used (\d+) registers")), "spill_stores": int(number(
        r"(\d+) bytes spill stores")), "spill_loads": int(number(r"(\d+) bytes spill loads")), "shared":
        compiled.metadata.shared, "ptxas_s": number(r"Compile time = ([\d.]+) ms") / 1e3, "seconds": seconds,
        "cubin_bytes": len(compiled.asm["cubin"]), "wgmma": "wgmma.mma_async" in ptx, "mma": "mma.sync" in ptx}

cases = set()  # (first input's dtype, second's, precision) that the launcher can pick; the mixed pairs in both orders
names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
for a, b in [(t, t) for t in names] + [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)]:
    for allow_tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        cases.add((names[a], names[b], dot_precision(torch.empty(0, dtype=a), torch.empty(0, dtype=b))))
torch.backends.cuda.matmul.allow_tf32 = False
out = []
for arch in (80, 90):
    for blocks in GPU_SAFE_BLOCKS:
        for t, u, precision in sorted(cases):
            for d_aligned in (False, True):
                dtype = t if t == u else f"{t}x{u}"
                out.append(compile_for(ncm.nearest_code_kernel, arch, blocks, dtype, d_aligned, dict(
                    z_ptr="*" + t, c_ptr="*" + u, idx_ptr="*i64", dist_ptr="*fp32", N="i32", M="i32", d="i32"),
                    PRECISION=precision))
                out.append(compile_for(mmdm.mmd_fwd_kernel, arch, blocks, dtype, d_aligned, dict(
                    a_ptr="*" + t, b_ptr="*" + u, gamma_ptr="*fp32", partial_ptr="*fp32", n_a="i32", n_b="i32",
                    D="i32", num_sigmas="i32"), PRECISION=precision))
                out.append(compile_for(mmdm.mmd_bwd_kernel, arch, blocks, dtype, d_aligned, dict(
                    a_ptr="*" + t, b_ptr="*" + u, gamma_ptr="*fp32", g_ptr="*fp32", ga_ptr="*fp32", scale="fp32",
                    n_a="i32", n_b="i32", D="i32", num_sigmas="i32"), PRECISION=precision))
ptxas = [triton.knobs.nvidia.ptxas.path, triton.knobs.nvidia.ptxas_blackwell.path]  # the wrappers, if they ran
shutil.rmtree(wrappers)

try:  # a tile no compile above has checked: refused before Triton sees it
    launch(ncm.nearest_code_kernel, (1,), Blocks(n=128), torch.randn(4, 8), torch.randn(3, 8))
    unsafe = "no error"
except ValueError as e:
    unsafe = str(e)

os.environ["TRITON_INTERPRET"] = "1"  # turned on after the import: a launch must refuse, not crash inside Triton
try:
    ncm.nearest_code(torch.randn(4, 8), torch.randn(3, 8))
    late = "no error"
except RuntimeError as e:
    late = str(e)
print(json.dumps({"compiled": out, "cases": sorted(cases), "ptxas": ptxas, "unsafe_tile": unsafe,
                  "late_interpret": late}))
"""


def run_cold_import():
    """COLD_IMPORT in a fresh process without TRITON_INTERPRET: its JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, set to silence its warning
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", COLD_IMPORT, str(PTXAS_LIMIT_S)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cold_import():
    return run_cold_import()


def test_kernels_compile_for_ampere_and_hopper_without_spills(cold_import):
    """No spill byte, the tensor cores where the precision asks for them (wgmma on sm_90, mma on sm_80), ptxas under
    its time limit, shared memory within the card's, for every compile a launch on an A100 or H100 can make."""
    assert all(p.startswith(tempfile.gettempdir()) for p in cold_import["ptxas"]), f"unbounded: {cold_import['ptxas']}"
    assert sorted(map(tuple, cold_import["cases"])) == [
        ("bf16", "bf16", "tf32"), ("bf16", "fp32", "ieee"), ("bf16", "fp32", "tf32"), ("fp16", "fp16", "tf32"),
        ("fp32", "bf16", "ieee"), ("fp32", "bf16", "tf32"), ("fp32", "fp32", "ieee"), ("fp32", "fp32", "tf32")], \
        "fp32 never reaches the tensor cores"
    compiled = cold_import["compiled"]
    assert len(compiled) == 2 * len(GPU_SAFE_BLOCKS) * 8 * 2 * 3  # archs x tiles x cases x D % 16 x kernels
    for c in compiled:
        assert "error" not in c, c
        assert c["spill_stores"] == c["spill_loads"] == 0, f"spills registers to local memory: {c}"
        assert c["ptxas_s"] < PTXAS_LIMIT_S and c["cubin_bytes"] > 0, c
        assert c["shared"] <= (232448 if c["arch"] == 90 else 166912), f"more shared memory than a block may use: {c}"
        tensor_cores = c["wgmma"] if c["arch"] == 90 else c["mma"]
        assert tensor_cores == (c["precision"] == "tf32"), f"tensor cores {'used' if tensor_cores else 'missing'}: {c}"


def test_unchecked_tile_is_refused_on_a_gpu(cold_import):
    assert "has not been compiled and checked for sm_80 and sm_90" in cold_import["unsafe_tile"], cold_import


def test_late_interpret_is_refused(cold_import):
    assert "TRITON_INTERPRET changed after" in cold_import["late_interpret"]


if __name__ == "__main__":  # python -m tests.test_kernels: the compile table of BENCHMARKS.md, no GPU needed
    import time
    start = time.perf_counter()
    result = run_cold_import()
    print(f"{'kernel':19} {'arch':5} {'dtype':5} {'precision':9} {'D%16':4} | {'regs':>4} {'spill st/ld':>11} "
          f"{'smem B':>6} {'ptxas s':>7} {'all s':>5} tensor cores")
    for c in result["compiled"]:
        aligned = "yes" if c["d_aligned"] else "no"
        head = f"{c['kernel']:19} sm_{c['arch']} {c['dtype']:9} {c['precision']:9} {aligned:4} |"
        print(head, c["error"] if "error" in c else f"{c['registers']:4d} {c['spill_stores']:5d} /"
              f"{c['spill_loads']:4d} {c['shared']:6d} {c['ptxas_s']:7.2f} {c['seconds']:5.1f} "
              f"{'wgmma' if c['wgmma'] else 'mma' if c['mma'] else 'none (FMA)'}")
    print(f"{len(result['compiled'])} compiles of {GPU_SAFE_BLOCKS} in {time.perf_counter() - start:.0f} s "
          f"(ptxas limited to {PTXAS_LIMIT_S} s); unchecked tile: {result['unsafe_tile'][:60]}...")
