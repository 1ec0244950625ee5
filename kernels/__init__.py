"""dit_attn.kernels: block-sparse attention with key bias, LSE and a rectification epilogue (Triton), block
statistics for sparse-attention prediction, and an exact merge of partial attention results.

Public functions dispatch on the device: CUDA tensors run the Triton kernels, CPU tensors the plain-PyTorch
references (``DIT_ATTN_KERNEL_IMPL=triton`` with ``TRITON_INTERPRET=1`` runs the Triton kernels on CPU through
the interpreter; ``DIT_ATTN_KERNEL_IMPL=reference`` forces the references). ``DIT_ATTN_AUTOTUNE=0`` disables
GPU autotuning in favour of a fixed per-(head dim, dtype) config table.

* :func:`block_sparse_attention`, :func:`block_stats` (``torch.library`` custom ops, compile-safe)
* :func:`merge_attention` (plain torch)
* references: :func:`block_sparse_attention_reference`, :func:`block_stats_reference`,
  :func:`merge_attention_reference`
* direct Triton launchers: :func:`block_sparse_attention_triton`, :func:`block_stats_triton` (triton is imported
  on first call, so importing this package never needs triton)
"""

if __name__ == "kernels":
    # Python started in a source checkout's root puts the root on sys.path, and this folder then shadows Hugging
    # Face's `kernels` package, which transformers imports. Load that package in our place (the import statement
    # returns whatever sys.modules holds when this file finishes). Installed, this folder is only `dit_attn.kernels`.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout])
    if _spec is None:
        raise ImportError("`import kernels` found dit_attn's kernels/ folder because the repository root is on "
                          "sys.path, and no Hugging Face `kernels` package is installed; dit_attn's kernels are "
                          "`dit_attn.kernels`")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)
else:
    from .merge import merge_attention
    from .ops import block_sparse_attention, block_stats
    from .reference import (
        BlockStats,
        block_counts,
        block_sparse_attention_reference,
        block_stats_reference,
        lut_to_block_mask,
        merge_attention_reference,
    )


def block_sparse_attention_triton(*args, **kwargs):
    """Run the Triton block-sparse attention kernel directly; see
    :func:`dit_attn.kernels.block_sparse.block_sparse_attention_triton` (accepts ``out=``/``lse=`` buffers).

    Example (CPU, run under ``TRITON_INTERPRET=1``; on CUDA tensors it needs no interpreter)::

        >>> import torch
        >>> from dit_attn.kernels import block_sparse_attention_reference, block_sparse_attention_triton
        >>> q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
        >>> idx = torch.tensor([[0], [1], [2]], dtype=torch.int32).expand(1, 2, 3, 1)  # query block i sees key block i
        >>> cnt = torch.ones(1, 2, 3, dtype=torch.int32)
        >>> out = block_sparse_attention_triton(q, k, v, idx, cnt, block_size_q=16, block_size_k=16)
        >>> ref = block_sparse_attention_reference(q, k, v, idx, cnt, block_size_q=16, block_size_k=16)
        >>> out.shape, torch.allclose(out, ref, atol=1e-5)
        (torch.Size([1, 2, 40, 16]), True)
    """
    from .block_sparse import block_sparse_attention_triton as _impl

    return _impl(*args, **kwargs)


def block_stats_triton(*args, **kwargs):
    """Run the Triton block-statistics kernel directly; see :func:`dit_attn.kernels.block_stats_kernel.block_stats_triton`.

    Example (CPU, run under ``TRITON_INTERPRET=1``; on CUDA tensors it needs no interpreter)::

        >>> import torch
        >>> from dit_attn.kernels import block_stats_triton
        >>> from dit_attn.kernels import block_stats_reference
        >>> q, k, v = torch.randn(1, 2, 100, 32), torch.randn(1, 2, 70, 32), torch.randn(1, 2, 70, 32)
        >>> st, ref = block_stats_triton(q, k, v, block_size=64), block_stats_reference(q, k, v, 64)
        >>> st.k_count.tolist(), all(torch.allclose(a, b, atol=1e-5) for a, b in zip(st[:5], ref[:5]))
        ([64, 6], True)
    """
    from .block_stats_kernel import block_stats_triton as _impl

    return _impl(*args, **kwargs)


__all__ = [
    "BlockStats",
    "block_counts",
    "block_sparse_attention",
    "block_sparse_attention_reference",
    "block_sparse_attention_triton",
    "block_stats",
    "block_stats_reference",
    "block_stats_triton",
    "lut_to_block_mask",
    "merge_attention",
    "merge_attention_reference",
]
