"""Docstring examples of the public API run (``doctest.testmod``, ELLIPSIS) and every listed public item has one.

Modules already doctested elsewhere: ``dit_attn.kernels.{ops, reference, merge}`` (tests/kernels/test_ops.py),
``dit_attn.conditions.adapters`` and ``dit_attn.checkpoint`` (tests/test_conditions_train.py),
``dit_attn.testing`` (tests/test_testing.py), ``dit_attn.pipelines.shapes.scoring`` (tests/shapes).

The Triton examples (``dit_attn.kernels`` and its launcher modules) run on CPU tensors through the Triton
interpreter: TRITON_INTERPRET=1 must be set before triton is first imported (tests/conftest.py does it).
"""

import doctest
import importlib

import pytest

from dit_attn.testing import cpu_threads

# module -> minimum number of example statements (the ones its docstrings hold at least)
MODULES = {
    "dit_attn.heads": 8,
    "dit_attn.head_search": 9,
    "dit_attn.call": 24,
    "dit_attn.attachment": 13,
    "dit_attn.processor": 12,
    "dit_attn.pipelines": 13,
    "dit_attn.pipelines.shapes.bundled": 6,
    "dit_attn.pipelines.shapes.generate": 4,
    "dit_attn.pipelines.shapes.models": 10,
    "dit_attn.pipelines.shapes.diagnose": 4,
    "dit_attn.pipelines.shapes.train": 3,
    "dit_attn.controls": 3,
    "dit_attn.controls.conditions": 10,
    "dit_attn.pipelines.conditions.train": 23,
    "dit_attn.tensor_memo": 7,
    "dit_attn.parallel": 3,
    "dit_attn.layout": 4,
    "dit_attn.pipelines.context_parallel": 1,
    "dit_attn.bench.sparse_quality": 5,
    "dit_attn.bench.timing": 1,
}
TRITON_MODULES = {
    "dit_attn.kernels": 14,
    "dit_attn.kernels.block_sparse": 6,
    "dit_attn.kernels.block_stats_kernel": 6,
}

# public items that must carry a runnable (not skipped) example in their own docstring
ITEMS = [
    "dit_attn.HeadSet", "dit_attn.search_heads", "dit_attn.execute", "dit_attn.AttentionCall", "dit_attn.Attachment",
    "dit_attn.DitAttnProcessor", "dit_attn.available_controls", "dit_attn.controls_from_config",
    "dit_attn.SpatialCondition", "dit_attn.SubjectCondition",
    "dit_attn.pipelines.conditions.train.save_checkpoint",
    "dit_attn.kernels.block_stats_triton", "dit_attn.kernels.block_sparse_attention_triton",
    "dit_attn.kernels.lut_to_block_mask", "dit_attn.kernels.block_counts", "dit_attn.kernels.merge_attention_reference",
    "dit_attn.kernels.block_sparse.block_sparse_attention_triton",
    "dit_attn.kernels.block_stats_kernel.block_stats_triton",
    "dit_attn.pipelines.load_shapes", "dit_attn.pipelines.shapes_call_kwargs",
    "dit_attn.pipelines.shapes.bundled.load_shapes", "dit_attn.pipelines.shapes.generate.shapes_call_kwargs",
]


def _resolve(dotted: str):
    module_name, _, attr = dotted.rpartition(".")
    if module_name in TRITON_MODULES and module_name != "dit_attn.kernels":
        pytest.importorskip("triton")  # the launcher modules import triton (dit_attn.kernels itself never does)
    return getattr(importlib.import_module(module_name), attr)


@pytest.mark.parametrize("name", ITEMS)
def test_public_item_has_runnable_example(name):
    examples = doctest.DocTestParser().get_examples(_resolve(name).__doc__ or "")
    assert examples, f"{name} has no '>>>' example in its docstring"
    skipped = [e.source.strip() for e in examples if e.options.get(doctest.SKIP)]
    assert not skipped, f"{name} skips {skipped}"


def _testmod(name: str, minimum: int) -> None:
    module = importlib.import_module(name)
    with cpu_threads(1):  # tiny pipelines on shared cores: intra-op threads only spin
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= minimum, (name, result)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.delenv("DIT_ATTN_KERNEL_IMPL", raising=False)
    _testmod(name, MODULES[name])


@pytest.mark.parametrize("name", sorted(TRITON_MODULES))
def test_triton_docstring_examples_run(name, monkeypatch):
    pytest.importorskip("triton")
    from dit_attn.kernels import block_sparse, block_stats_kernel

    if not (block_sparse.INTERPRET and block_stats_kernel.INTERPRET):
        pytest.skip("the Triton examples use CPU tensors: set TRITON_INTERPRET=1 before triton is imported")
    monkeypatch.delenv("DIT_ATTN_KERNEL_IMPL", raising=False)
    _testmod(name, TRITON_MODULES[name])
