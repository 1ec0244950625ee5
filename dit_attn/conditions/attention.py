"""The attention math of multi-condition control: fast exact paths (dense attention + log-sum-exp merges) and the
dense boolean-masked oracle built from the token-group table (both written out in ``docs/multi_condition_math.md``).

Token groups: ``T`` text, ``X`` image (the call's own ``[T; X]`` tokens), ``SP_c`` spatial conditions, ``SJ_k``
subject conditions (their K/V come from the condition cache). Query rows of a denoising call are ``T`` and ``X``:

==========  ==========  ==================================  ====================================
query       T, X        SP_c                                SJ_k
==========  ==========  ==================================  ====================================
T           full        off (``text_sees_conditions``)      off (``text_sees_conditions``)
X           full        pka: only ``SP_c[a_c(i)]``;         pka: all of ``SJ_k`` iff ``M_k[i]``;
                        cached-full: all                    cached-full: all
==========  ==========  ==================================  ====================================

Condition rows attend only within their own condition (the cache-write pass, a stock forward of the condition
alone). ``combine="joint"`` (ours, recommended) takes **one** softmax per query over every key it sees;
``combine="sum"`` is the paper's literal reading, separate branches summed:
``out_i = Attn(q_i, [T, X]) + Σ_c V_c[a_c(i)] + Σ_k M_k[i]·Attn(q_i, SJ_k)``.

Tensors are in diffusers' dispatch layout ``[B, N, H, D]``; log-sum-exps are ``[B, H, N]`` fp32.

Example::

    >>> import torch
    >>> from dit_attn.conditions.attention import SpatialKV, SubjectKV, condition_attention, dense_oracle
    >>> B, T, N, H, D = 2, 3, 8, 2, 4
    >>> q, k, v = (torch.randn(B, T + N, H, D, dtype=torch.float64) for _ in range(3))
    >>> sp = SpatialKV(torch.randn(B, 8, H, D, dtype=torch.float64), torch.randn(B, 8, H, D, dtype=torch.float64),
    ...                torch.arange(8))
    >>> sj = SubjectKV(torch.randn(B, 5, H, D, dtype=torch.float64), torch.randn(B, 5, H, D, dtype=torch.float64),
    ...                torch.rand(B, N) > 0.5)
    >>> fast = condition_attention(q, k, v, text_len=T, spatial=[sp], subjects=[sj], mode="pka")
    >>> torch.allclose(fast, dense_oracle(q, k, v, text_len=T, spatial=[sp], subjects=[sj], mode="pka"))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dit_attn.kernels import merge_attention

MODES = ("concat", "cached-full", "pka")
COMBINES = ("joint", "sum")


@dataclass
class SpatialKV:
    """Cached keys/values ``[B|1, n, H, D]`` of one spatial condition and its alignment ``index`` ``[N]`` (long):
    image token ``i`` sees condition token ``index[i]`` (PAA)."""

    key: torch.Tensor
    value: torch.Tensor
    index: torch.Tensor


@dataclass
class SubjectKV:
    """Cached keys/values ``[B|1, n, H, D]`` of one subject condition and its KSA row mask ``[B|1, N]`` (bool;
    ``None`` = every image row sees the subject, as at the first step)."""

    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# attention with log-sum-exp
# ---------------------------------------------------------------------------------------------------------------
def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attention_lse(q, k, v, scale: float, key_bias: torch.Tensor | None = None, row_mask: torch.Tensor | None = None,
                  attn_bias: torch.Tensor | None = None):
    """Softmax attention with its log-sum-exp: ``q`` ``[B, Nq, H, D]``, ``k``/``v`` ``[B, Nk, H, D]`` (batch 1
    broadcasts). Returns ``out`` ``[B, H, Nq, D]`` and ``lse`` ``[B, H, Nq]``, both fp32 (fp64 stays fp64).

    ``row_mask`` ``[B|1, Nq]`` (bool) drops whole query rows (``lse = -inf``, ``out = 0``): on CUDA the rows of
    query blocks without any kept row are skipped by the block-sparse kernel's LUT (no host sync).
    ``attn_bias`` ``[B|1, H|1, Nq|1, Nk]``: an additive per-query bias (a stock per-query mask, e.g. Chroma's); it
    takes the plain math path, in chunks of query rows (the stock float-mask SDPA materialises as much).

    Paths: autograd needed → plain math (differentiable, materialises the logits: training of tiny/medium
    models); CUDA → ``dit_attn.kernels.block_sparse_attention`` (Triton, flash-style); CPU → torch's flash CPU op
    (which returns the LSE), or math when there is a key bias.
    """
    bq = max(q.shape[0], k.shape[0])
    qh = q.transpose(1, 2).expand(bq, -1, -1, -1)
    kh = k.transpose(1, 2).expand(bq, -1, -1, -1)
    vh = v.transpose(1, 2).expand(bq, -1, -1, -1)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    if attn_bias is not None:
        bias = attn_bias if key_bias is None else attn_bias + _bias4(key_bias)
        out, lse = _biased_lse(qh, kh, vh, scale, bias, acc)
    elif _needs_grad(q, k, v) or (key_bias is not None and not q.is_cuda):
        logits = torch.matmul(qh.to(acc), kh.to(acc).transpose(-1, -2)) * scale
        if key_bias is not None:
            logits = logits + _bias4(key_bias).to(acc)
        lse = torch.logsumexp(logits, dim=-1)
        safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        out = torch.matmul(torch.exp(logits - safe.unsqueeze(-1)), vh.to(acc))
    elif q.is_cuda:
        out, lse = _kernel(qh, kh, vh, scale, key_bias, row_mask)
        out = out.float()
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qh.contiguous(), kh.contiguous(), vh.contiguous(), 0.0, False, scale=scale)
        out, lse = out.to(acc), lse.to(acc)
    if row_mask is not None:
        keep = row_mask.to(torch.bool)[:, None, :]
        lse = lse.masked_fill(~keep, float("-inf"))
    return out, lse


def _biased_lse(qh, kh, vh, scale, bias, acc, budget: int = 1 << 28):
    """Math attention with an additive ``bias`` ``[B|1, H|1, Nq|1, Nk]``, ``budget`` bytes of logits at a time."""
    b, h, nq, _ = qh.shape
    nk = kh.shape[2]
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    chunk = max(1, min(nq, budget // max(1, b * h * nk * 8)))
    kt, va = kh.to(acc).transpose(-1, -2), vh.to(acc)
    outs, lses = [], []
    for start in range(0, nq, chunk):
        stop = min(nq, start + chunk)
        rows = bias if bias.shape[-2] == 1 else bias[..., start:stop, :]
        logits = torch.matmul(qh[:, :, start:stop].to(acc), kt) * scale + rows.to(acc)
        lse = torch.logsumexp(logits, dim=-1)
        safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        outs.append(torch.matmul(torch.exp(logits - safe.unsqueeze(-1)), va))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def additive_mask(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """A stock SDPA mask (boolean: True = attend, or additive) as an additive ``[B|1, H|1, Nq|1, Nk]`` bias."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    mask = mask.to(dtype)
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def row_bias(bias: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """A per-query-row bias (boolean: True = 0, False = -inf; or additive) as additive ``[B|1, H|1, Nq|1]``."""
    if bias is None:
        return None
    if bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device).masked_fill(~bias, float("-inf"))
    bias = bias.to(dtype)
    while bias.dim() < 3:
        bias = bias.unsqueeze(0)
    return bias


def _bias4(key_bias: torch.Tensor) -> torch.Tensor:
    kb = key_bias
    while kb.dim() < 3:
        kb = kb.unsqueeze(0)
    return kb.unsqueeze(-2)  # [B|1, H|1, 1, Nk]


def _kernel(qh, kh, vh, scale, key_bias, row_mask, block: int = 128):
    from dit_attn.kernels import block_sparse_attention

    b, h, nq, _ = qh.shape
    n_qb, n_kb = -(-nq // block), -(-kh.shape[2] // block)
    index = torch.arange(n_kb, device=qh.device, dtype=torch.int32).expand(b, h, n_qb, n_kb)
    if row_mask is None:
        count = torch.full((b, h, n_qb), n_kb, device=qh.device, dtype=torch.int32)
    else:  # query blocks with no kept row do no work at all
        rows = row_mask.to(torch.bool).expand(b, nq)
        pad = n_qb * block - nq
        rows = torch.nn.functional.pad(rows, (0, pad)).view(b, n_qb, block).any(-1)
        count = (rows.to(torch.int32) * n_kb)[:, None, :].expand(b, h, n_qb).contiguous()
    return block_sparse_attention(qh, kh, vh, index, count, block_size_q=block, block_size_k=block,
                                  key_bias=key_bias, scale=scale, return_lse=True)


def merge_lse(out_a, lse_a, out_b, lse_b):
    """:func:`dit_attn.kernels.merge_attention` (fp32), kept in fp64 for fp64 inputs (the exactness tests)."""
    if out_a.dtype != torch.float64:
        return merge_attention(out_a, lse_a, out_b, lse_b)
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    wa = torch.exp(lse_a - safe).unsqueeze(-1)  # 0 where a side has no key (lse = -inf)
    wb = torch.exp(lse_b - safe).unsqueeze(-1)
    zero = torch.zeros((), dtype=out_a.dtype, device=out_a.device)
    out = torch.where(wa > 0, wa * out_a, zero) + torch.where(wb > 0, wb * out_b, zero)
    return out, lse


# ---------------------------------------------------------------------------------------------------------------
# the fast path
# ---------------------------------------------------------------------------------------------------------------
def _heads(t: torch.Tensor, batch: int) -> torch.Tensor:
    return t.transpose(1, 2).expand(batch, -1, -1, -1)  # [B, H, n, D]


def paa_merge(out, lse, q_img, spatial: list[SpatialKV], scale: float, row_bias: torch.Tensor | None = None):
    """Fold the aligned token of every spatial condition into ``(out, lse)`` of the image rows, exactly, in one
    LSE update for all C conditions: one extra logit ``s_c,i = scale·q_i·K_c[a_c(i)]`` per condition, O(N·C·D);
    ``lse' = logsumexp(lse, s_1..s_C)``, ``out' = e^(lse − lse')·out + Σ_c e^(s_c − lse')·V_c[a_c(i)]``.

    ``out`` ``[B, H, N, D]`` and ``lse`` ``[B, H, N]`` (fp32) over the keys already seen; ``q_img`` ``[B, N, H, D]``;
    ``row_bias`` ``[B|1, H|1, N]``: added to every condition logit of row ``i`` (a stock mask's value for it).
    """
    if not spatial:
        return out, lse
    b = out.shape[0]
    qh = q_img.transpose(1, 2).to(out.dtype)
    logits = [lse]
    for sp in spatial:  # the C extra logits first ([C, B, H, N]: small) ...
        kc = _heads(sp.key, b).index_select(2, sp.index).to(out.dtype)  # [B, H, N, D]
        s_c = (qh * kc).sum(-1) * scale
        logits.append(s_c if row_bias is None else s_c + row_bias.to(s_c.dtype))
    stacked = torch.stack(logits)  # [1 + C, B, H, N]
    lse_new = torch.logsumexp(stacked, dim=0)
    w = torch.exp(stacked - lse_new)
    merged = w[0].unsqueeze(-1) * out
    for c, sp in enumerate(spatial):  # ... then one gathered value tensor at a time (memory O(N·D), not O(C·N·D))
        merged = merged + w[c + 1].unsqueeze(-1) * _heads(sp.value, b).index_select(2, sp.index).to(out.dtype)
    return merged, lse_new


def _cat_conditions(kvs, batch):
    keys = torch.cat([kv.key.expand(batch, -1, -1, -1) for kv in kvs], dim=1)
    values = torch.cat([kv.value.expand(batch, -1, -1, -1) for kv in kvs], dim=1)
    return keys, values


def _own_attention(q, k, v, scale, key_bias, key_bias_rows, attn_bias=None):
    """:func:`attention_lse` of the call's queries over its own keys, the key bias on ``key_bias_rows`` only
    (and the additive per-query ``attn_bias`` on every row)."""
    if attn_bias is not None:
        if key_bias is not None:
            kb = _bias4(key_bias).to(attn_bias.dtype)
            if key_bias_rows is not None:
                on = torch.zeros(q.shape[1], dtype=torch.bool)
                on[key_bias_rows] = True
                kb = torch.where(on.to(q.device)[:, None], kb, torch.zeros((), dtype=kb.dtype, device=kb.device))
            attn_bias = attn_bias + kb
        return attention_lse(q, k, v, scale, attn_bias=attn_bias)
    if key_bias is None or key_bias_rows is None:
        return attention_lse(q, k, v, scale, key_bias)
    n = q.shape[1]
    if isinstance(key_bias_rows, slice) and key_bias_rows.indices(n)[2] == 1:
        # The usual case (the image rows): contiguous slices, no index tensors and no host sync.
        start, stop, _ = key_bias_rows.indices(n)
        out_b, lse_b = attention_lse(q[:, start:stop], k, v, scale, key_bias)
        parts = [attention_lse(q[:, a:b], k, v, scale, None) if a != start else (out_b, lse_b)
                 for a, b in ((0, start), (start, stop), (stop, n)) if b > a]
        return (torch.cat([o.to(out_b.dtype) for o, _ in parts], dim=2),
                torch.cat([lse.to(lse_b.dtype) for _, lse in parts], dim=2))
    biased = torch.zeros(n, dtype=torch.bool)
    biased[key_bias_rows] = True
    rows_b = biased.nonzero().squeeze(1).to(q.device)
    rows_u = (~biased).nonzero().squeeze(1).to(q.device)
    out_b, lse_b = attention_lse(q.index_select(1, rows_b), k, v, scale, key_bias)
    out_u, lse_u = attention_lse(q.index_select(1, rows_u), k, v, scale, None)
    out = out_b.new_empty(out_b.shape[:2] + (n,) + out_b.shape[3:])
    lse = lse_b.new_empty(lse_b.shape[:2] + (n,))
    out = out.index_copy(2, rows_b, out_b).index_copy(2, rows_u, out_u.to(out.dtype))
    lse = lse.index_copy(2, rows_b, lse_b).index_copy(2, rows_u, lse_u.to(lse.dtype))
    return out, lse


def condition_attention(q, k, v, *, text_len: int, spatial=(), subjects=(), mode: str = "pka",
                        combine: str = "joint", scale: float | None = None, key_bias: torch.Tensor | None = None,
                        key_bias_rows: slice | None = None, text_sees_conditions: bool = False,
                        attn_mask: torch.Tensor | None = None, condition_bias: torch.Tensor | None = None,
                        return_lse: bool = False):
    """Attention of a denoising call's ``[T; X]`` queries over their own keys plus the cached condition keys.

    Args:
        q, k, v: ``[B, T + N, H, D]``, text first (FLUX order).
        text_len: ``T``.
        spatial: :class:`SpatialKV` per spatial condition; subjects: :class:`SubjectKV` per subject.
        mode: ``"pka"`` (PAA + KSA) or ``"cached-full"`` (image rows see every condition token).
        combine: ``"joint"`` (one softmax, exact LSE merge) or ``"sum"`` (separate branches summed; pka only).
        scale: logit scale (default ``D**-0.5``); key_bias: optional bias on the call's own keys ``[B|1, H|1, T+N]``,
            added to the logits of the query rows ``key_bias_rows`` only (a slice; ``None``: every row), e.g.
            prompt emphasis on image rows (condition keys are never biased).
        text_sees_conditions: text rows also see every condition token (OminiControl's choice; off by default).
        attn_mask: the stock mask on the call's own keys (boolean or additive, broadcastable to
            ``[B, H, T + N, T + N]``; Chroma's per-query text mask).
        condition_bias: additive ``[B|1, H|1, T + N]``: added to every condition logit of each query row (with a
            stock mask: the value it gives that row against image keys, so conditions count as image tokens).

    Returns ``out`` ``[B, T + N, H, D]`` in ``q``'s dtype (and the merged ``lse`` ``[B, H, T + N]`` if asked; not
    defined for ``combine="sum"``, which returns ``None`` for it). Merges run in fp32 (fp64 inputs in fp64).
    """
    if mode not in ("pka", "cached-full"):
        raise ValueError(f"condition_attention handles mode 'pka' or 'cached-full', got {mode!r} "
                         "('concat' concatenates tokens before the forward)")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    b = q.shape[0]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out, lse = _own_attention(q, k, v, scale, key_bias, key_bias_rows, additive_mask(attn_mask, acc))
    conds = list(spatial) + list(subjects)
    if not conds:
        result = out.transpose(1, 2).to(q.dtype)
        return (result, lse) if return_lse else result
    t = text_len
    q_img = q[:, t:]
    o_txt, l_txt, o_img, l_img = out[:, :, :t], lse[:, :, :t], out[:, :, t:], lse[:, :, t:]
    # A row bias on every condition key of a row shifts only that part's LSE (its softmax is unchanged).
    cb = row_bias(condition_bias, acc)  # [B|1, H|1, T+N|1]
    cb_txt = None if cb is None else (cb if cb.shape[-1] == 1 else cb[..., :t])
    cb_img = None if cb is None else (cb if cb.shape[-1] == 1 else cb[..., t:])

    def shifted(lse_c, rows_bias):
        return lse_c if rows_bias is None else lse_c + rows_bias.to(lse_c.dtype)

    if mode == "cached-full":
        ck, cv = _cat_conditions(conds, b)
        o_c, l_c = attention_lse(q_img, ck, cv, scale)
        o_img, l_img = merge_lse(o_img, l_img, o_c, shifted(l_c, cb_img))
    elif combine == "joint":
        o_img, l_img = paa_merge(o_img, l_img, q_img, list(spatial), scale, row_bias=cb_img)
        for sj in subjects:
            o_s, l_s = attention_lse(q_img, sj.key.expand(b, -1, -1, -1), sj.value.expand(b, -1, -1, -1), scale,
                                     row_mask=sj.mask)
            o_img, l_img = merge_lse(o_img, l_img, o_s, shifted(l_s, cb_img))
    else:  # the paper's literal reading: branches computed apart and summed (a finite row bias cancels in each)
        for sp in spatial:
            v_c = _heads(sp.value, b).index_select(2, sp.index).to(o_img.dtype)
            if cb_img is not None:
                v_c = torch.where(torch.isfinite(cb_img).unsqueeze(-1), v_c, torch.zeros_like(v_c))
            o_img = o_img + v_c
        for sj in subjects:
            o_s, l_s = attention_lse(q_img, sj.key.expand(b, -1, -1, -1), sj.value.expand(b, -1, -1, -1), scale,
                                     row_mask=sj.mask)
            keep = torch.isfinite(shifted(l_s, cb_img)).unsqueeze(-1)
            o_img = o_img + torch.where(keep, o_s, torch.zeros_like(o_s))
        l_img = None
    if text_sees_conditions and t:
        ck, cv = _cat_conditions(conds, b)
        o_c, l_c = attention_lse(q[:, :t], ck, cv, scale)
        o_txt, l_txt = merge_lse(o_txt, l_txt, o_c, shifted(l_c, cb_txt))
    merged = torch.cat([o_txt, o_img], dim=2).transpose(1, 2).to(q.dtype)
    if not return_lse:
        return merged
    return merged, (None if l_img is None else torch.cat([l_txt, l_img], dim=2))


# ---------------------------------------------------------------------------------------------------------------
# the oracle: one dense boolean mask over all token groups, from the table
# ---------------------------------------------------------------------------------------------------------------
def group_mask(batch: int, text_len: int, n_img: int, spatial_lens, spatial_index, subject_lens, subject_masks,
               mode: str, text_sees_conditions: bool = False, device=None) -> torch.Tensor:
    """The token-group table as a dense boolean mask ``[B, L, L]`` (True = attend) over the token order
    ``[T, X, SP_1 .. SP_C, SJ_1 .. SJ_K]``, ``L`` their total length. For the tests (it is O(L²))."""
    n_sp = sum(spatial_lens)
    total = text_len + n_img + n_sp + sum(subject_lens)
    m = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    tx = text_len + n_img
    if mode == "concat":
        return m.fill_(True)
    m[:, :tx, :tx] = True
    start = tx
    groups = []
    for c, n in enumerate(spatial_lens):
        groups.append(("sp", c, start, n))
        start += n
    for k, n in enumerate(subject_lens):
        groups.append(("sj", k, start, n))
        start += n
    img = slice(text_len, tx)
    for kind, idx, s, n in groups:
        m[:, s:s + n, s:s + n] = True  # conditions attend within themselves only
        if text_sees_conditions:
            m[:, :text_len, s:s + n] = True
        if mode == "cached-full":
            m[:, img, s:s + n] = True
        elif kind == "sp":
            sel = torch.zeros(n_img, n, dtype=torch.bool, device=device)
            sel[torch.arange(n_img, device=device), spatial_index[idx].to(device)] = True
            m[:, img, s:s + n] = sel
        else:
            mask = subject_masks[idx]
            rows = torch.ones(batch, n_img, dtype=torch.bool, device=device) if mask is None else \
                mask.to(device=device, dtype=torch.bool).expand(batch, n_img)
            m[:, img, s:s + n] = rows[:, :, None].expand(batch, n_img, n)
    return m


def masked_softmax_attention(q, k, v, mask, scale, bias=None):
    """Dense attention ``[B, N, H, D]`` with a boolean mask ``[B, Nq, Nk]`` (True = attend) and an optional
    additive ``bias`` ``[B|1, H|1, Nq, Nk]``, in q's dtype."""
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, dim=-1), v)


def dense_oracle(q, k, v, *, text_len: int, spatial=(), subjects=(), mode: str = "pka", combine: str = "joint",
                 scale: float | None = None, text_sees_conditions: bool = False, attn_mask=None,
                 condition_bias=None):
    """The reference for :func:`condition_attention`: every group's tokens in one sequence and one dense masked
    softmax from :func:`group_mask` (``combine="sum"``: each branch is its own masked softmax, summed), with
    ``attn_mask`` on the own keys and ``condition_bias`` (per query row) on every condition key.
    Returns the ``[T; X]`` rows ``[B, T + N, H, D]``."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    b, tx = q.shape[0], q.shape[1]
    n_img = tx - text_len
    conds = list(spatial) + list(subjects)
    keys = torch.cat([k] + [c.key.expand(b, -1, -1, -1).to(k.dtype) for c in conds], dim=1)
    values = torch.cat([v] + [c.value.expand(b, -1, -1, -1).to(v.dtype) for c in conds], dim=1)
    sp_lens, sj_lens = [s.key.shape[1] for s in spatial], [s.key.shape[1] for s in subjects]
    args = (b, text_len, n_img, sp_lens, [s.index for s in spatial], sj_lens, [s.mask for s in subjects])
    bias, finite = None, None
    if attn_mask is not None or condition_bias is not None:
        n_c = keys.shape[1] - tx
        own = additive_mask(attn_mask, q.dtype)
        own = torch.zeros(1, 1, tx, tx, dtype=q.dtype, device=q.device) if own is None else own.expand(-1, -1, tx, tx)
        cb = row_bias(condition_bias, q.dtype)
        cb = torch.zeros(1, 1, 1, 1, dtype=q.dtype, device=q.device) if cb is None else cb.unsqueeze(-1)
        lead = torch.broadcast_shapes(own.shape[:2], cb.shape[:2])
        bias = torch.cat([own.expand(*lead, tx, tx), cb.expand(*lead, tx, n_c)], dim=-1)  # [B|1, H|1, tx, L]
        finite = torch.isfinite(cb[..., 0].expand(*lead, tx)).permute(0, 2, 1)  # [B|1, tx, H|1]
    if combine == "joint" or mode != "pka":
        mask = group_mask(*args, mode=mode, text_sees_conditions=text_sees_conditions, device=q.device)
        return masked_softmax_attention(q, keys, values, mask[:, :tx], scale, bias)
    # Sum of branches: image rows take [T, X] alone, then each condition's own masked softmax is added (a spatial
    # branch has one aligned key, so it adds exactly V_c[a_c(i)]); text rows are as in the joint reading.
    full = group_mask(*args, mode="pka", text_sees_conditions=text_sees_conditions, device=q.device)[:, :tx]
    base = full.clone()
    base[:, text_len:, tx:] = False
    out = masked_softmax_attention(q, keys, values, base, scale, bias)
    start = tx
    for n in sp_lens + sj_lens:
        branch = torch.zeros_like(full)
        branch[:, text_len:, start:start + n] = full[:, text_len:, start:start + n]
        has = branch.any(-1)  # rows outside a KSA mask have no key in this branch: they add 0
        part = masked_softmax_attention(q, keys, values, branch | ~has[..., None], scale)  # a row's bias cancels
        keep = has[:, :, None] if finite is None else has[:, :, None] & finite  # a -inf row bias: no key either
        out = out + torch.where(keep[..., None], part, torch.zeros_like(part))
        start += n
    return out


# ---------------------------------------------------------------------------------------------------------------
# KSA mask
# ---------------------------------------------------------------------------------------------------------------
def keyword_scores(q_img: torch.Tensor, k_text: torch.Tensor, keyword_weights: torch.Tensor) -> torch.Tensor:
    """``Σ_{t ∈ keyword} q_i·k_t`` (raw logits, after RoPE/QK-norm) averaged over heads: ``[B, N]`` fp32.

    ``q_img`` ``[B, N, H, D]``, ``k_text`` ``[B, T, H, D]``, ``keyword_weights`` ``[B|1, T]`` (1 on keyword tokens,
    0 elsewhere; per row, so a batch of prompts works).
    """
    w = keyword_weights.to(device=k_text.device, dtype=torch.float32)
    k_kw = torch.einsum("bthd,bt->bhd", k_text.float(), w.expand(k_text.shape[0], -1))
    return torch.einsum("bnhd,bhd->bn", q_img.float(), k_kw) / q_img.shape[2]


def keyword_mask(scores: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``M = minmax(scores) ≥ epsilon`` per sample over the image tokens (min-max is our reading of the paper's
    unspecified ``Norm``). A constant row (max = min) normalises to 1 everywhere, i.e. a full mask; ``epsilon > 1``
    gives an empty mask."""
    lo = scores.amin(dim=-1, keepdim=True)
    hi = scores.amax(dim=-1, keepdim=True)
    span = hi - lo
    norm = torch.where(span > 0, (scores - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.ones_like(scores))
    return norm >= epsilon
