"""Tests of kernels/ (Sec. 3.2 nearest-code lookup, Sec. 3.3 Eq. 6 MMD): the Triton kernels against float64 torch.

On a CPU the kernels run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on a GPU they run
compiled. Inputs are fresh random draws: a failure prints its seed; rerun it with KERNELS_TEST_SEED=<seed>.
The compile test builds every kernel for Hopper (sm_90) in a subprocess without TRITON_INTERPRET, so it needs no GPU.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import triton

import signllm_kernels.mmd as mmdm
import signllm_kernels.nearest_code as ncm
from signllm_kernels.common import GPU_BLOCKS, INTERPRETER_BLOCKS, Blocks
from signllm_kernels.mmd import mmd, mmd_ref
from signllm_kernels.nearest_code import nearest_code, nearest_code_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = bool(triton.knobs.runtime.interpret)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture
def rng():
    seed = int(os.environ.get("KERNELS_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    return torch.Generator().manual_seed(seed), f"seed={seed}"


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


# ----------------------------------------------------------------------------- real compile for Hopper

COLD_IMPORT = r"""
import json, os, sys
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, os.getcwd())
import signllm_kernels.mmd as mmdm
import signllm_kernels.nearest_code as ncm
from signllm_kernels.common import GPU_BLOCKS

def compile_for_hopper(kernel, blocks, types, **constexprs):
    constexprs.update(BLOCK_N=blocks.n, BLOCK_M=blocks.m, BLOCK_K=blocks.k)
    assert set(types) | set(constexprs) == set(kernel.arg_names), kernel.arg_names
    signature = {name: types.get(name, "constexpr") for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": blocks.num_warps})
    return {"kernel": kernel.__name__, "precision": constexprs["PRECISION"], "cubin_bytes": len(compiled.asm["cubin"]),
            "shared": compiled.metadata.shared}

out = []
for t, precision in (("fp32", "ieee"), ("bf16", "tf32")):
    out.append(compile_for_hopper(ncm.nearest_code_kernel, GPU_BLOCKS, dict(
        z_ptr="*" + t, c_ptr="*" + t, idx_ptr="*i64", dist_ptr="*fp32", N="i32", M="i32", d="i32"),
        PRECISION=precision))
    out.append(compile_for_hopper(mmdm.mmd_fwd_kernel, GPU_BLOCKS, dict(
        a_ptr="*" + t, b_ptr="*" + t, gamma_ptr="*fp32", partial_ptr="*fp32", n_a="i32", n_b="i32", D="i32",
        num_sigmas="i32"), PRECISION=precision))
    out.append(compile_for_hopper(mmdm.mmd_bwd_kernel, GPU_BLOCKS, dict(
        a_ptr="*" + t, b_ptr="*" + t, gamma_ptr="*fp32", g_ptr="*fp32", ga_ptr="*fp32", gb_ptr="*fp32",
        scale="fp32", n_a="i32", n_b="i32", D="i32", num_sigmas="i32"), PRECISION=precision, GRAD_A=True, GRAD_B=True))

os.environ["TRITON_INTERPRET"] = "1"  # turned on after the import: a launch must refuse, not crash inside Triton
try:
    ncm.nearest_code(torch.randn(4, 8), torch.randn(3, 8))
    late = "no error"
except RuntimeError as e:
    late = str(e)
print(json.dumps({"compiled": out, "late_interpret": late}))
"""


@pytest.fixture(scope="module")
def cold_import():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, set to silence its warning
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", COLD_IMPORT], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernels_compile_for_hopper(cold_import):
    compiled = cold_import["compiled"]
    names = {(c["kernel"], c["precision"]) for c in compiled}
    assert names == {(k, p) for k in ("nearest_code_kernel", "mmd_fwd_kernel", "mmd_bwd_kernel")
                     for p in ("ieee", "tf32")}
    for c in compiled:
        assert c["cubin_bytes"] > 0, c
        assert c["shared"] <= 232448, f"{c}: more shared memory than an H100 block may use (227 KB)"


def test_late_interpret_is_refused(cold_import):
    assert "TRITON_INTERPRET changed after" in cold_import["late_interpret"]
