"""block_stats: Triton kernel (interpreter) and reference vs an fp64 per-block loop."""

import pytest
import torch

import dit_attn.kernels as K

IMPLS = ["triton", "reference"]


def oracle_stats(x, bs):
    """fp64 mean and mean absolute deviation of every block of ``bs`` tokens, with an explicit loop."""
    B, H, N, D = x.shape
    means, mads, counts = [], [], []
    for start in range(0, N, bs):
        blk = x[:, :, start:start + bs].double()
        m = blk.mean(2)
        means.append(m)
        mads.append((blk - m.unsqueeze(2)).abs().mean(2))
        counts.append(blk.shape[2])
    return torch.stack(means, 2), torch.stack(mads, 2), torch.tensor(counts, dtype=torch.int32)


def run(impl, q, k, v, bs):
    if impl == "triton":
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        nqb, nkb = -(-Nq // bs), -(-Nk // bs)
        nan = float("nan")
        out = (torch.full((B, H, nqb, D), nan), torch.full((B, H, nkb, D), nan), torch.full((B, H, nkb, D), nan),
               torch.full((B, H, nqb, D), nan), torch.full((B, H, nkb, D), nan))
        st = K.block_stats_triton(q, k, v, bs, out=out)
        assert all(a is b for a, b in zip(st[:5], out))
        return st
    return K.block_stats_reference(q, k, v, bs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "Nq,Nk,bs,D,dtype",
    [
        (1, 1, 16, 16, torch.float32),
        (127, 129, 32, 32, torch.float16),
        (129, 127, 16, 64, torch.bfloat16),
        (1000, 300, 128, 128, torch.bfloat16),
        (130, 70, 48, 32, torch.float32),  # non-power-of-two block
        (300, 520, 256, 16, torch.float16),  # block larger than one tile: two streamed passes
    ],
)
def test_block_stats_matches_fp64(impl, Nq, Nk, bs, D, dtype, gen, seed):
    B, H = 2, 2
    # Offset the data so that the MAD is not just the spread around zero.
    q = (torch.randn(B, H, Nq, D, generator=gen) + torch.randn(D, generator=gen)).to(dtype)
    k = (torch.randn(B, H, Nk, D, generator=gen) * 2 - 1).to(dtype)
    v = torch.randn(B, H, Nk, D, generator=gen).to(dtype)
    st = run(impl, q, k, v, bs)
    qm, qa, qc = oracle_stats(q, bs)
    km, ka, kc = oracle_stats(k, bs)
    vm, _, _ = oracle_stats(v, bs)
    for name, got, exp in (("q_mean", st.q_mean, qm), ("q_mad", st.q_mad, qa), ("k_mean", st.k_mean, km),
                           ("k_mad", st.k_mad, ka), ("v_mean", st.v_mean, vm)):
        assert got.dtype == torch.float32, name
        assert got.shape == exp.shape, f"{name}: {tuple(got.shape)} != {tuple(exp.shape)}"
        assert not torch.isnan(got).any(), f"{name}: NaN (seed={seed})"
        err = (got.double() - exp).abs().max().item()
        assert err <= 2e-5, f"{name}: max error {err:.2e} (seed={seed})"
    assert torch.equal(st.q_count, qc) and torch.equal(st.k_count, kc)
    assert st.q_count.dtype == torch.int32


@pytest.mark.parametrize("impl", IMPLS)
def test_block_stats_noncontiguous(impl, gen, seed):
    B, H, N, D, bs = 2, 3, 70, 32, 32
    x = torch.randn(B, N, H, D, generator=gen).transpose(1, 2)  # [B, H, N, D] view of the diffusers layout
    st = run(impl, x, x, x, bs)
    m, a, _ = oracle_stats(x, bs)
    assert (st.q_mean.double() - m).abs().max() <= 2e-5, f"seed={seed}"
    assert (st.k_mad.double() - a).abs().max() <= 2e-5, f"seed={seed}"


def test_public_block_stats_cpu_reference_and_triton(gen, monkeypatch):
    monkeypatch.delenv("DIT_ATTN_KERNEL_IMPL", raising=False)
    q, k = torch.randn(1, 2, 50, 16, generator=gen), torch.randn(1, 2, 33, 16, generator=gen)
    st = K.block_stats(q, k, k, 16)
    ref = K.block_stats_reference(q, k, k, 16)
    assert type(st).__name__ == "BlockStats"
    for a, b in zip(st, ref):
        assert torch.equal(a, b)
    monkeypatch.setenv("DIT_ATTN_KERNEL_IMPL", "triton")
    st_t = K.block_stats(q, k, k, 16)
    for a, b in zip(st_t, ref):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
