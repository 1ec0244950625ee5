"""torch.compile of an attached transformer: one graph per forward, the eager output, no recompile per step.

Graph capture and guards are checked with the ``"eager"`` backend (Dynamo traces and guards exactly as with
inductor, but runs the captured graph with PyTorch's own kernels, so a test costs tracing time only; inductor's
C++ compilation would take minutes on a CPU). Steps are counted with the pipeline's ``callback_on_step_end``,
graphs with ``torch._dynamo.utils.counters["stats"]["unique_graphs"]``; from the second step on, Dynamo is also
told to raise on any recompile (``error_on_recompile``). The measured compiled/eager step times are in
``docs/compile.md`` (``python -m dit_attn.bench.compile``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import dit_attn
from dit_attn.testing import cpu_threads, tiny_call_kwargs, tiny_pipeline

PROMPT = "a (red:1.5) circle above a [blue] square"
# One block of each kind: tracing time grows with the number of attention modules, what is checked does not.
SMALLEST = {"flux": dict(num_layers=1, num_single_layers=1), "wan": dict(num_layers=1), "sd3": {}}
HEADS = {"flux": "transformer_blocks.0:*", "wan": "blocks.0:*", "sd3": "transformer_blocks.0:*"}
CONTROLS = {
    "emphasis": lambda family: dit_attn.Emphasis(),
    "softpag": lambda family: dit_attn.SoftPAG(HEADS[family], strength=0.5, scale=2.0),
    "sparse": lambda family: dit_attn.RectifiedSparse(sparsity=0.5, block_size=16),
    "entropy": lambda family: dit_attn.EntropyScale(train_tokens=64),
}


def _every_control(family: str) -> list:
    return [make(family) for make in CONTROLS.values()]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    with cpu_threads(1):
        yield
    torch._dynamo.reset()


def _output(result) -> np.ndarray:
    return np.asarray(result.images if hasattr(result, "images") else result.frames)


def _generate(pipe, family: str, steps: int, guidance: bool, graphs: list | None = None, strict_from: int = 1,
              prompt: str = PROMPT):
    """One generation; with ``graphs``, the number of compiled graphs after each step, and Dynamo raising on any
    recompile from step ``strict_from`` (0-based) on."""
    kwargs = tiny_call_kwargs(family, steps=steps, guidance=guidance)
    kwargs["prompt"] = prompt
    if graphs is not None:
        def on_step_end(pipe, i, t, callback_kwargs):
            graphs.append(counters["stats"]["unique_graphs"])
            if i + 1 == strict_from:
                torch._dynamo.config.error_on_recompile = True
            return {}

        torch._dynamo.config.error_on_recompile = strict_from == 0
        kwargs["callback_on_step_end"] = on_step_end
    try:
        return _output(pipe(**kwargs))
    finally:
        torch._dynamo.config.error_on_recompile = False


def _compiled_matches_eager(family: str, make_controls, steps: int = 3, guidance: bool = False,
                            strict_from: int = 1, keep: bool = False, regional: bool = False):
    """A generation with ``make_controls()`` attached, eager, against one on another pipeline compiled (fullgraph,
    in place: the diffusers habit) before its first generation; asserts equal outputs and returns the graphs
    compiled after each step (and the compiled pipeline, with ``keep``)."""
    reference = tiny_pipeline(family, **SMALLEST[family])
    dit_attn.attach(reference, *make_controls())
    eager = _generate(reference, family, steps, guidance)
    pipe = tiny_pipeline(family, **SMALLEST[family])
    dit_attn.attach(pipe, *make_controls())
    if regional:  # diffusers' regional compilation: each repeated block class, the forward hook stays eager
        pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    else:
        pipe.transformer.compile(fullgraph=True, backend="eager")
    graphs: list[int] = []
    compiled = _generate(pipe, family, steps, guidance, graphs, strict_from)
    np.testing.assert_allclose(compiled, eager, atol=1e-5, rtol=0)
    return (pipe, graphs) if keep else graphs


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_all_controls_compile_fullgraph_without_recompiles(family):
    """Emphasis + SoftPAG + RectifiedSparse + EntropyScale, classifier-free guidance on (cond and uncond forwards:
    two graphs, both made at the first step); Wan passes its step index in ``cache_context``, FLUX does not."""
    pipe, graphs = _compiled_matches_eager(family, lambda: _every_control(family), steps=3, guidance=True, keep=True)
    assert graphs[0] == 2, graphs  # cond and uncond forwards
    assert graphs[-1] == graphs[0], f"recompiled after the first step: graphs per step {graphs}"
    # Another generation with another emphasised prompt: new text tensors, the same graphs.
    more: list[int] = []
    _generate(pipe, family, 2, True, more, strict_from=0, prompt="a (green:2) square below a [red] circle")
    assert more == [graphs[-1]] * 2, more


# slow tier: the SD3 special case (no cache_context); the FLUX and Wan compile tests above stay fast
@pytest.mark.slow
def test_pipeline_without_cache_context_compiles_fullgraph():
    """SD3 enters no ``cache_context``: the hook reads the step inside the compiled forward, which is specialised
    on it for the first two steps before torch.compile treats it as dynamic (documented). Its joint and
    image-only attention give two sparse plans in one graph."""
    graphs = _compiled_matches_eager("sd3", lambda: _every_control("sd3"), steps=4, guidance=True, strict_from=3)
    assert graphs == [1, 2, 3, 3], graphs


def test_regional_compile_of_blocks():
    """``compile_repeated_blocks``: the blocks (and our processors in them) are compiled, the forward hook is not;
    FLUX's double and single blocks, each at batch 2 (cond + SoftPAG's rows) and 1 (uncond): four graphs."""
    graphs = _compiled_matches_eager("flux", lambda: _every_control("flux"), guidance=True, regional=True)
    assert graphs == [4, 4, 4], graphs


@pytest.mark.parametrize("name", ["emphasis", "emphasis with a schedule", "softpag", "entropy"])
def test_each_control_compiles_fullgraph_without_recompiles(name):
    """RectifiedSparse alone: test_sparse_warmup_end_costs_one_graph. An emphasis schedule changes its multiplier
    at every step: a tensor input, not a constant of the graph."""
    if name == "emphasis with a schedule":
        def controls():
            return [dit_attn.Emphasis(schedule=lambda progress: 1.0 - progress)]
    else:
        def controls():
            return [CONTROLS[name]("flux")]
    graphs = _compiled_matches_eager("flux", controls)
    assert graphs == [1, 1, 1], graphs


def test_softpag_window_start_costs_one_graph():
    """SoftPAG's step window is read as a step phase (a bool): one graph outside the window, one inside."""
    def pag():
        return [dit_attn.SoftPAG(HEADS["flux"], strength=0.5, scale=2.0, steps=(0.3, 1.0))]

    assert _compiled_matches_eager("flux", pag, strict_from=2) == [1, 2, 2]


def test_sparse_warmup_end_costs_one_graph():
    """RectifiedSparse's dense warm-up is read as a step phase (a bool): the graph of the warm-up and the sparse
    one, and nothing else, whatever the step count (Dynamo raises on a recompile from the third step on)."""
    def sparse():
        return [dit_attn.RectifiedSparse(sparsity=0.5, block_size=16, dense_steps=0.25)]

    assert _compiled_matches_eager("wan", sparse, steps=4, strict_from=2) == [1, 2, 2, 2]


def test_attach_to_compiled_module_works_or_says_why():
    """``torch.compile(transformer)`` returns an OptimizedModule: ``attach`` acts on the module it compiles (its
    compiled code is re-traced at the next call); ``make_processors`` refuses it with a message saying to attach
    first."""
    pipe = tiny_pipeline("flux", **SMALLEST["flux"])
    expected_pipe = tiny_pipeline("flux", **SMALLEST["flux"])
    controls = [CONTROLS["emphasis"]("flux"), CONTROLS["softpag"]("flux")]
    with dit_attn.attach(expected_pipe, CONTROLS["emphasis"]("flux"), CONTROLS["softpag"]("flux")):
        expected = _generate(expected_pipe, "flux", 3, False)
    inner = pipe.transformer
    pipe.transformer = torch.compile(inner, fullgraph=True, backend="eager")
    with dit_attn.attach(pipe, *controls) as attachment:
        assert attachment.transformers == [inner]
        graphs: list[int] = []  # compiled first, with no eager generation before: still no recompile
        np.testing.assert_allclose(_generate(pipe, "flux", 3, False, graphs), expected, atol=1e-5, rtol=0)
        assert graphs == [1, 1, 1], graphs
    with pytest.raises(ValueError, match="attach to the transformer first, then compile"):
        dit_attn.make_processors(pipe.transformer, dit_attn.PassThrough())
