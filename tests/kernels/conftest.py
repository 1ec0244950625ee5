"""Shared fixtures for the dit_attn.kernels tests.

The Triton kernels run on CPU through the Triton interpreter: TRITON_INTERPRET must be set before triton is
first imported, hence at the top of this conftest. Every test draws a fresh seed (printed in assertion
messages; set DIT_ATTN_TEST_SEED=<seed> to replay a failure). Expected values come from an fp64 computation
written from the definition (explicit token masks built with Python loops), independent of the library.
"""

import os
import sys

# If triton was already imported by an earlier test module (diffusers and torch._dynamo import it) before
# TRITON_INTERPRET=1 was set, the interpreter cannot work in this process: Triton-path tests are then skipped
# with a reason (the reference-path tests still run). Fix: set TRITON_INTERPRET=1 in the environment or in a
# root tests/conftest.py, or run tests/kernels on its own.
_TRITON_PREIMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import random  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Max |actual - expected| / max(1, |expected|), element-wise, against fp64 on the same (rounded) inputs.
# Measured worst cases under the interpreter (15 seeds, D=64, random LUT + epilogue): ~7e-7 (fp32), ~7e-4
# (fp16), ~1.2e-2 (bf16): output rounding plus rounding of the probabilities to the input dtype before the PV
# product; the interpreter truncates fp32 -> bf16 (the GPU rounds to nearest), hence the bf16 margin.
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}
LSE_TOL = 1e-4  # LSE comes from fp32 logits of the exact inputs, for every input dtype
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _triton_interpreter_guard(request):
    if _TRITON_PREIMPORTED and "triton" in request.node.name:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; see tests/kernels/conftest.py")


@pytest.fixture
def seed():
    env = os.environ.get("DIT_ATTN_TEST_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**31)


@pytest.fixture
def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, gen, dtype=torch.float32):
    """Standard normal values (never all zeros), rounded to ``dtype``."""
    return torch.randn(*shape, generator=gen).to(dtype)


def qkv(B, H, Nq, Nk, D, gen, dtype=torch.float32, spread=1.5):
    """Random q, k, v; ``spread`` scales q so that softmax rows are neither flat nor one-hot."""
    q = (torch.randn(B, H, Nq, D, generator=gen) * spread).to(dtype)
    k = torch.randn(B, H, Nk, D, generator=gen).to(dtype)
    v = torch.randn(B, H, Nk, D, generator=gen).to(dtype)
    return q, k, v


def cdiv(a, b):
    return -(-a // b)


def full_lut(B, H, nqb, nkb):
    idx = torch.arange(nkb, dtype=torch.int32).expand(B, H, nqb, nkb).contiguous()
    cnt = torch.full((B, H, nqb), nkb, dtype=torch.int32)
    return idx, cnt


def random_lut(B, H, nqb, nkb, gen, min_count=0, extra=2):
    """Random LUT: distinct key blocks per row in random order, random counts in [min_count, nkb], and
    ``extra`` garbage columns; every entry at position >= count is garbage (negative, out of range or a
    duplicate) that the kernel must ignore."""
    perm = torch.argsort(torch.rand(B, H, nqb, nkb, generator=gen), dim=-1).to(torch.int32)
    garbage = torch.randint(-3, nkb + 3, (B, H, nqb, nkb + extra), generator=gen, dtype=torch.int32)
    cnt = torch.randint(min_count, nkb + 1, (B, H, nqb), generator=gen, dtype=torch.int32)
    pos = torch.arange(nkb + extra)
    idx = garbage.clone()
    idx[..., :nkb] = perm
    idx = torch.where(pos < cnt.unsqueeze(-1), idx, garbage)
    return idx, cnt


def token_mask_from_lut(block_index, block_count, Nq, Nk, bsq, bsk, B, H):
    """[B, H, Nq, Nk] bool mask written from the LUT definition with plain loops."""
    nqb = cdiv(Nq, bsq)
    nkb = cdiv(Nk, bsk)
    bi = block_index.expand(B, H, nqb, block_index.shape[-1])
    bc = block_count.expand(B, H, nqb)
    mask = torch.zeros(B, H, Nq, Nk, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(nqb):
                for j in range(int(bc[b, h, i])):
                    kb = int(bi[b, h, i, j])
                    if 0 <= kb < nkb:
                        mask[b, h, i * bsq:(i + 1) * bsq, kb * bsk:(kb + 1) * bsk] = True
    return mask


def oracle_attention(q, k, v, mask=None, bias=None, scale=None, rect_rows=None, add_rows=None):
    """fp64 masked attention from the definition. ``mask`` [B,H,Nq,Nk] bool (True = computed), ``bias``
    broadcastable to [B,H,1,Nk], ``rect_rows`` [B,H,Nq], ``add_rows`` [B,H,Nq,D] (per-row R and C).
    Returns (out, lse) in fp64; empty rows give out 0 (+C) and lse -inf."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    D = q.shape[-1]
    scale = D ** -0.5 if scale is None else scale
    s = q64 @ k64.transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias.double()
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    lse = torch.logsumexp(s, -1)
    shift = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(s - shift.unsqueeze(-1))
    out = p @ v64
    if rect_rows is not None:
        out = out * rect_rows.double().unsqueeze(-1)
    if add_rows is not None:
        out = out + add_rows.double()
    return out, lse


def rows_of_blocks(x, Nq, bsq):
    """Expand a per-query-block tensor [..., nqb(, D)] to per-row [..., Nq(, D)] (test-side only)."""
    idx = torch.arange(Nq) // bsq
    return x[:, :, idx] if x.dim() >= 3 else x


def assert_close(actual, expected, dtype, seed, what="output", tol=None):
    """|actual - expected| <= tol * max(1, |expected|) element-wise; exact match of infinities; no NaN."""
    tol = TOL[dtype] if tol is None else tol
    a = actual.double()
    e = expected.double()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)} (seed={seed})"
    assert not torch.isnan(a).any(), f"{what}: NaN in result (seed={seed})"
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    assert torch.equal(inf_a, inf_e) and torch.equal(a[inf_a], e[inf_e]), f"{what}: infinities differ (seed={seed})"
    fin = ~inf_e
    err = ((a - e).abs() / e.abs().clamp(min=1.0))[fin]
    worst = err.max().item() if err.numel() else 0.0
    assert worst <= tol, f"{what}: max scaled error {worst:.3e} > {tol:.1e} for {dtype} (seed={seed})"


@pytest.fixture
def kt():
    """Namespace of test helpers (fixtures rather than an importable module: no top-level name clashes)."""
    return types.SimpleNamespace(
        TOL=TOL, LSE_TOL=LSE_TOL, DTYPES=DTYPES, randn=randn, qkv=qkv, cdiv=cdiv, full_lut=full_lut,
        random_lut=random_lut, token_mask_from_lut=token_mask_from_lut, oracle_attention=oracle_attention,
        rows_of_blocks=rows_of_blocks, assert_close=assert_close,
    )
