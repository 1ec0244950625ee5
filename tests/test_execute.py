"""execute(): the kernel-backed paths (extra key sets merged by LSE, sparse plans, masks folded into key bias)."""

import torch

import dit_attn
from dit_attn.call import KeySet, SparsePlan, _kernel_attention


def _layout(n, b=2, h=2, d=16):
    segs = {"image": (0, n)}
    return dit_attn.Layout(family="flux", site=None, kind="self", heads=h, head_dim=d, query_segments=segs,
                           key_segments=segs, batch_size=b)


def _dense(q, k, v, bias=None):
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    if bias is not None:
        logits = logits + bias.double()
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double())


def _rand(g, *shape):
    return torch.randn(*shape, generator=g)


def test_extra_key_sets_merge_exactly():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    b, n, m, h, d = 2, 37, 21, 2, 16
    q, k, v = (_rand(g, b, n, h, d) for _ in range(3))
    k2, v2 = _rand(g, b, m, h, d), _rand(g, b, m, h, d)
    call = dit_attn.AttentionCall(q, k, v, _layout(n), extra_keys=[KeySet(k2, v2)])
    out = dit_attn.execute(call)
    ref = _dense(q, torch.cat([k, k2], 1), torch.cat([v, v2], 1))
    assert (out.double() - ref).abs().max() < 1e-5


def test_extra_key_set_seen_by_some_queries_only():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    b, n, m, h, d = 2, 30, 9, 2, 16
    q, k, v = (_rand(g, b, n, h, d) for _ in range(3))
    k2, v2 = _rand(g, b, m, h, d), _rand(g, b, m, h, d)
    query_mask = torch.zeros(b, n, dtype=torch.bool)
    query_mask[0, :10] = True
    query_mask[1, 20:] = True
    out = dit_attn.execute(dit_attn.AttentionCall(q, k, v, _layout(n), extra_keys=[KeySet(k2, v2, query_mask=query_mask)]))
    bias = torch.zeros(b, 1, n, n + m)
    bias[:, 0, :, n:] = torch.where(query_mask[:, :, None], 0.0, float("-inf")).expand(b, n, m)
    ref = _dense(q, torch.cat([k, k2], 1), torch.cat([v, v2], 1), bias)
    assert (out.double() - ref).abs().max() < 1e-5


def test_full_sparse_plan_equals_dense():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    b, n, h, d = 2, 70, 2, 16
    q, k, v = (_rand(g, b, n, h, d) for _ in range(3))
    nb = -(-n // 32)
    index = torch.arange(nb, dtype=torch.int32).expand(b, h, nb, nb).contiguous()
    count = torch.full((b, h, nb), nb, dtype=torch.int32)
    plan = SparsePlan(index, count, block_size_q=32, block_size_k=32)
    out = dit_attn.execute(dit_attn.AttentionCall(q, k, v, _layout(n), sparse=plan))
    assert (out.double() - _dense(q, k, v)).abs().max() < 1e-5


def test_kernel_path_folds_padding_mask_and_bias():
    # What CUDA runs for a key bias on HunyuanVideo (boolean key-padding mask [B, 1, 1, N]); reference on CPU.
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    b, n, h, d = 2, 40, 2, 16
    q, k, v = (_rand(g, b, n, h, d) for _ in range(3))
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    mask[0, ..., 35:] = False
    bias = torch.zeros(b, 1, n)
    bias[:, :, 30:] = 0.5
    call = dit_attn.AttentionCall(q, k, v, _layout(n), attn_mask=mask, key_bias=bias)
    out, _ = _kernel_attention(call, k, v, bias, None, False)
    full = bias[:, :, None, :].clone().expand(b, 1, n, n).clone()
    full = full.masked_fill(~mask, float("-inf"))
    assert (out.double() - _dense(q, k, v, full)).abs().max() < 1e-5
    assert (dit_attn.execute(call).double() - _dense(q, k, v, full)).abs().max() < 1e-5
