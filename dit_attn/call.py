"""The attention call that flows through the controls, and :func:`execute`, the one place that knows kernels.

Every processor does the same three things: compute Q/K/V exactly as the stock diffusers processor does, attend,
and finish exactly as stock does. Only the middle differs between features, so the middle is an
:class:`AttentionCall` that each active control may edit in ``prepare`` (add a key bias, scale logits, add extra
key sets, choose a sparse plan) and whose output each control may edit in ``finish``.

:func:`execute` picks the cheapest exact path for what the controls asked for:

* nothing asked → ``diffusers``' ``dispatch_attention_fn`` with the stock arguments, so ``set_attention_backend``
  keeps working and the output equals stock bit for bit;
* a logit scale only → ``dispatch_attention_fn`` with that ``scale`` (every backend takes it);
* a key bias → on CPU ``dispatch_attention_fn`` with an additive float mask; on CUDA our
  Triton kernel's ``key_bias`` with a full block table (no float-mask SDPA);
* extra key sets (condition caches) or a sparse plan → ``dit_attn.kernels.block_sparse_attention`` with the
  log-sum-exp, merged exactly with :func:`dit_attn.kernels.merge_attention`.

Tensors in a call use diffusers' dispatch layout ``[batch, tokens, heads, head_dim]``.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field, replace

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from .layout import Layout

# ``parallel_config`` (context parallelism) is a parameter of dispatch_attention_fn since diffusers 0.36.
_DISPATCH_TAKES_PARALLEL = "parallel_config" in inspect.signature(dispatch_attention_fn).parameters


def _parallel(call) -> dict:
    """``parallel_config=`` for :func:`dispatch_attention_fn` where the installed diffusers takes it."""
    return {"parallel_config": call.parallel_config} if _DISPATCH_TAKES_PARALLEL else {}


@dataclass
class KeySet:
    """An extra set of keys/values, disjoint from the call's own, attended in the same softmax (exact LSE merge).

    ``query_mask`` (bool, broadcastable to ``[B, Nq]``) restricts which queries see this set; the others are
    unchanged (their weight on this set is zero).
    """

    key: torch.Tensor  # [B, Nk2, H, D]
    value: torch.Tensor  # [B, Nk2, H, D]
    key_bias: torch.Tensor | None = None  # broadcastable to [B, H, Nk2]
    query_mask: torch.Tensor | None = None


@dataclass
class SparsePlan:
    """A block-sparse plan for :func:`dit_attn.kernels.block_sparse_attention` (see its docstring for shapes).

    ``query_rows`` (a slice of the call's query rows, or None for all) restricts the plan to those rows: the LUT
    and rectification describe the query blocks of ``query[:, query_rows]``, and the other rows run dense over
    all keys (with the call's mask and ``dense_key_bias`` if given, else the call's key bias: a bias that only
    the planned rows get, like prompt emphasis on image rows, leaves the other rows stock). ``output_order`` (int64 ``[Nq]``, or None) is applied last:
    :func:`execute` returns ``out[:, output_order]``, so a control that permuted the call's tokens (e.g. into
    Gilbert order) gets its output back in the original order without a ``finish`` step.
    """

    block_index: torch.Tensor
    block_count: torch.Tensor
    block_size_q: int = 128
    block_size_k: int = 128
    rect_scale: torch.Tensor | None = None
    rect_add: torch.Tensor | None = None
    query_rows: slice | None = None
    output_order: torch.Tensor | None = None
    dense_key_bias: torch.Tensor | None = None  # key bias of the rows outside query_rows (None: the call's)


@dataclass
class AttentionCall:
    """One attention computation, as the controls see it.

    ``query``/``key``/``value`` are ``[B, N, H, D]``. ``attn_mask`` is the stock mask the model passed (boolean or
    additive, SDPA-broadcastable). ``key_bias`` (broadcastable to ``[B, H, Nk]``) is added to the logits of every
    query for that key, or only of the query rows in ``key_bias_rows`` (e.g. image rows, leaving text rows
    exactly stock: the call is then split along the queries). ``logit_scale`` multiplies the logits (on top of ``scale``, default ``D**-0.5``).

    Example (what a control's ``prepare`` typically does to a call):
        >>> import torch
        >>> from dit_attn.call import AttentionCall
        >>> from dit_attn.layout import Layout
        >>> layout = Layout(family="sd3", site=None, kind="joint", heads=2, head_dim=8,
        ...                 query_segments={"image": (0, 16), "text": (16, 20)},
        ...                 key_segments={"image": (0, 16), "text": (16, 20)}, batch_size=1)
        >>> q, k, v = (torch.randn(1, 20, 2, 8) for _ in range(3))  # [B, N, H, D]
        >>> call = AttentionCall(q, k, v, layout)
        >>> call.is_plain, round(call.effective_scale, 4)
        (True, 0.3536)
        >>> edited = call.replace(logit_scale=2.0)  # a copy: ``call`` itself is unchanged
        >>> edited.add_key_bias(torch.zeros(20))
        >>> edited.is_plain, call.is_plain, round(edited.effective_scale, 4)
        (False, True, 0.7071)
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    layout: Layout
    attn_mask: torch.Tensor | None = None
    scale: float | None = None
    logit_scale: float = 1.0
    key_bias: torch.Tensor | None = None
    key_bias_rows: slice | None = None  # query rows the key bias applies to (None: all rows)
    extra_keys: list[KeySet] = field(default_factory=list)
    sparse: SparsePlan | None = None
    backend: object = None
    parallel_config: object = None

    def replace(self, **changes) -> "AttentionCall":
        """A copy with some fields changed (tensors are shared, not copied)."""
        return replace(self, **changes)

    def add_key_bias(self, bias: torch.Tensor) -> None:
        """Add ``bias`` (broadcastable to ``[B, H, Nk]``) to the key bias."""
        self.key_bias = bias if self.key_bias is None else self.key_bias + bias

    @property
    def is_plain(self) -> bool:
        return (
            self.key_bias is None
            and self.logit_scale == 1.0
            and not self.extra_keys
            and self.sparse is None
        )

    @property
    def effective_scale(self) -> float:
        base = self.scale if self.scale is not None else 1.0 / math.sqrt(self.query.shape[-1])
        return base * self.logit_scale


def _mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A stock SDPA mask (bool: True = attend, or additive float) as an additive float tensor."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def _key_bias_as_mask(call: AttentionCall, dtype: torch.dtype) -> torch.Tensor | None:
    """Key bias ``[B|1, H|1, Nk]`` plus the stock mask as one additive SDPA mask ``[B|1, H|1, Nq|1, Nk]``."""
    bias = None
    if call.key_bias is not None:
        kb = call.key_bias
        while kb.dim() < 3:
            kb = kb.unsqueeze(0)
        bias = kb.to(dtype).unsqueeze(-2)
    stock = _mask_to_bias(call.attn_mask, dtype)
    if stock is None:
        return bias
    return stock if bias is None else stock + bias


#: ``DIT_ATTN_EXECUTE=kernels`` sends CPU tensors down the branch CUDA tensors take (our kernels instead of SDPA
#: with an additive mask; with ``DIT_ATTN_KERNEL_IMPL=triton TRITON_INTERPRET=1`` the Triton kernels themselves),
#: so that branch is tested end to end without a GPU. Read once per call: no effect on the stock path.
EXECUTE_ENV = "DIT_ATTN_EXECUTE"


def _per_query_mask(mask) -> bool:
    return mask is not None and mask.dim() == 4 and mask.shape[-2] != 1


def _use_kernels(call: AttentionCall) -> bool:
    if _per_query_mask(call.attn_mask):
        return False  # our kernels take per-key biases: a [B, 1, Nq, Nk] mask (Chroma) goes through SDPA
    return call.query.is_cuda or os.environ.get(EXECUTE_ENV) == "kernels"


def _full_block_table(b: int, h: int, nq: int, nk: int, bq: int, bk: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    n_qb, n_kb = -(-nq // bq), -(-nk // bk)
    index = torch.arange(n_kb, device=device, dtype=torch.int32).expand(b, h, n_qb, n_kb)
    count = torch.full((b, h, n_qb), n_kb, device=device, dtype=torch.int32)
    return index, count


def _kernel_attention(call: AttentionCall, key, value, key_bias, sparse: SparsePlan | None, return_lse: bool):
    """Our kernel (Triton on CUDA, reference on CPU) in [B, N, H, D] layout."""
    from dit_attn.kernels import block_sparse_attention

    q = call.query.transpose(1, 2)
    k, v = key.transpose(1, 2), value.transpose(1, 2)
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    if sparse is None:
        index, count = _full_block_table(b, h, nq, nk, 128, 128, q.device)
        sparse = SparsePlan(index, count)
    bias = _mask_to_key_bias(call.attn_mask, key_bias, q.dtype, nk)
    result = block_sparse_attention(
        q, k, v, sparse.block_index, sparse.block_count,
        block_size_q=sparse.block_size_q, block_size_k=sparse.block_size_k,
        key_bias=bias, scale=call.effective_scale,
        rect_scale=sparse.rect_scale, rect_add=sparse.rect_add, return_lse=return_lse,
    )
    if return_lse:
        out, lse = result
        return out.transpose(1, 2), lse  # lse: [B, H, Nq]
    return result.transpose(1, 2), None


def _mask_to_key_bias(mask, key_bias, dtype, nk):
    """Fold a stock key-padding mask ([B, 1, 1, Nk] bool, as HunyuanVideo passes) into a key bias [B, H|1, Nk]."""
    if mask is None:
        return key_bias
    if mask.dim() == 4 and mask.shape[-2] == 1:
        m = _mask_to_bias(mask, torch.float32)[:, :, 0, :]  # [B, 1|H, Nk]
        return m if key_bias is None else key_bias.float() + m
    raise NotImplementedError(
        "dit_attn kernels take per-key masks only; this model passed a per-query attention mask of shape "
        f"{tuple(mask.shape)}"
    )


def _split_rows(call: AttentionCall) -> torch.Tensor:
    """Key bias for some query rows only: the biased rows and the others are two calls on the same keys."""
    rows, n = call.key_bias_rows, call.query.shape[1]
    start, stop, _ = rows.indices(n)
    mask = call.attn_mask
    parts = []
    for lo, hi, biased in ((0, start, False), (start, stop, True), (stop, n, False)):
        if hi <= lo:
            continue
        part_mask = mask[..., lo:hi, :] if mask is not None and mask.dim() == 4 and mask.shape[-2] == n else mask
        part = call.replace(query=call.query[:, lo:hi], attn_mask=part_mask, key_bias_rows=None,
                            key_bias=call.key_bias if biased else None)
        parts.append(execute(part))
    return torch.cat(parts, dim=1)


def _split_sparse_rows(call: AttentionCall) -> torch.Tensor:
    """A sparse plan for some query rows only: those rows run the plan, the others run dense on the same keys."""
    plan, n = call.sparse, call.query.shape[1]
    start, stop, _ = plan.query_rows.indices(n)
    mask = call.attn_mask
    parts = []
    for lo, hi, sparse in ((0, start, False), (start, stop, True), (stop, n, False)):
        if hi <= lo:
            continue
        part_mask = mask[..., lo:hi, :] if mask is not None and mask.dim() == 4 and mask.shape[-2] == n else mask
        extra = [replace(e, query_mask=e.query_mask[..., lo:hi])
                 if e.query_mask is not None and e.query_mask.dim() and e.query_mask.shape[-1] == n else e
                 for e in call.extra_keys]
        bias = call.key_bias if sparse or plan.dense_key_bias is None else plan.dense_key_bias
        part = call.replace(query=call.query[:, lo:hi], attn_mask=part_mask, extra_keys=extra, key_bias=bias,
                            sparse=replace(plan, query_rows=None, dense_key_bias=None) if sparse else None)
        parts.append(execute(part))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def execute(call: AttentionCall) -> torch.Tensor:
    """Run the attention described by ``call`` and return ``[B, Nq, H, D]`` in the query's dtype.

    Example (a plain call equals SDPA; a ``-inf`` key bias masks keys; extra key sets merge exactly):
        >>> import torch
        >>> from dit_attn.call import AttentionCall, KeySet, execute
        >>> from dit_attn.layout import Layout
        >>> sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        ...     q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        >>> layout = Layout(family="sd3", site=None, kind="joint", heads=2, head_dim=8,
        ...                 query_segments={"image": (0, 16), "text": (16, 20)},
        ...                 key_segments={"image": (0, 16), "text": (16, 20)}, batch_size=1)
        >>> q, k, v = (torch.randn(1, 20, 2, 8) for _ in range(3))  # [B, N, H, D]
        >>> out = execute(AttentionCall(q, k, v, layout))
        >>> out.shape, torch.allclose(out, sdpa(q, k, v), atol=1e-6)
        (torch.Size([1, 20, 2, 8]), True)
        >>> bias = torch.zeros(20)
        >>> bias[layout.key_slice("text")] = float("-inf")  # image keys only
        >>> out = execute(AttentionCall(q, k, v, layout, key_bias=bias))
        >>> torch.allclose(out, sdpa(q, k[:, :16], v[:, :16]), atol=1e-6)
        True
        >>> split = AttentionCall(q, k[:, :10], v[:, :10], layout, extra_keys=[KeySet(k[:, 10:], v[:, 10:])])
        >>> torch.allclose(execute(split), sdpa(q, k, v), atol=1e-5)
        True
    """
    if call.sparse is not None and call.sparse.output_order is not None:
        out = execute(call.replace(sparse=replace(call.sparse, output_order=None)))
        return out.index_select(1, call.sparse.output_order)
    if call.sparse is not None and call.sparse.query_rows is not None:
        if call.key_bias_rows is not None:
            raise NotImplementedError("a row-restricted sparse plan cannot be combined with key_bias_rows yet")
        return _split_sparse_rows(call)
    if call.key_bias is not None and call.key_bias_rows is not None:
        if call.sparse is not None:
            raise NotImplementedError("row-restricted key bias with a sparse plan is not supported yet")
        return _split_rows(call)
    if call.key_bias is None and not call.extra_keys and call.sparse is None:
        # Stock arguments (a logit scale only changes ``scale``, which every backend takes).
        scale = call.scale if call.logit_scale == 1.0 else call.effective_scale
        return dispatch_attention_fn(
            call.query, call.key, call.value,
            attn_mask=call.attn_mask, dropout_p=0.0, is_causal=False, scale=scale,
            backend=call.backend, **_parallel(call),
        )
    if not call.extra_keys and call.sparse is None:
        if _use_kernels(call):
            out, _ = _kernel_attention(call, call.key, call.value, call.key_bias, None, False)
            return out
        return dispatch_attention_fn(
            call.query, call.key, call.value,
            attn_mask=_key_bias_as_mask(call, call.query.dtype), dropout_p=0.0, is_causal=False,
            scale=call.effective_scale, backend=call.backend, **_parallel(call),
        )
    return _execute_merged(call)


def _execute_merged(call: AttentionCall) -> torch.Tensor:
    """Own keys (optionally sparse) plus extra key sets, merged through their log-sum-exps."""
    from dit_attn.kernels import merge_attention

    rect = call.sparse is not None and (call.sparse.rect_scale is not None or call.sparse.rect_add is not None)
    if rect and call.extra_keys:
        # The rectification epilogue must act on the merged softmax, not on a part of it.
        raise NotImplementedError("a rectified sparse plan cannot be combined with extra key sets yet")
    out, lse = _kernel_attention(call, call.key, call.value, call.key_bias, call.sparse, True)
    out = out.transpose(1, 2).float()  # [B, H, Nq, D]
    for extra in call.extra_keys:
        e_out, e_lse = _kernel_attention(call.replace(attn_mask=None), extra.key, extra.value, extra.key_bias, None, True)
        e_out = e_out.transpose(1, 2).float()
        if extra.query_mask is not None:
            qm = extra.query_mask.to(torch.bool)
            while qm.dim() < 2:
                qm = qm.unsqueeze(0)
            qm = qm[:, None, :]  # [B, 1, Nq]
            e_lse = e_lse.masked_fill(~qm, float("-inf"))
        out, lse = merge_attention(out, lse, e_out, e_lse)
    return out.transpose(1, 2).to(call.query.dtype)
