"""Prompt emphasis composes with rectified sparse attention: the bias reaches the sparse image rows through the
kernel's key_bias, text rows stay without it."""

import numpy as np
import pytest

import dit_attn
from dit_attn.testing import cpu_threads, tiny_call_kwargs, tiny_pipeline

PROMPT = "a (red:3) circle above a [blue] square"


def _run(pipe, family, *controls):
    kwargs = tiny_call_kwargs(family, steps=2)
    kwargs["prompt"] = PROMPT
    with dit_attn.attach(pipe, *controls):
        return np.asarray(pipe(**kwargs).images, dtype=np.float64)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_emphasis_with_full_density_sparse_equals_emphasis_alone(family):
    pipe = tiny_pipeline(family)
    with cpu_threads(1):
        emphasis = _run(pipe, family, dit_attn.Emphasis())
        both = _run(pipe, family, dit_attn.Emphasis(),
                    dit_attn.RectifiedSparse(sparsity=0.0, tau=1.0, block_size=8, neighbors=False))
        plain = _run(pipe, family)
    assert np.abs(both - emphasis).max() <= 1e-5
    assert np.abs(emphasis - plain).max() > 1e-4  # the emphasis really acted


def test_emphasis_acts_inside_sparse_calls():
    pipe = tiny_pipeline("flux")
    recorded = []

    class After(dit_attn.Control):
        def prepare(self, call):
            recorded.append(call)
            return call

    sparse = dit_attn.RectifiedSparse(sparsity=0.75, block_size=8, neighbors=False)
    with cpu_threads(1):
        sparse_only = _run(pipe, "flux", sparse)
        both = _run(pipe, "flux", dit_attn.Emphasis(), sparse, After())
    planned = [c for c in recorded if c.sparse is not None]
    assert planned, "the sparse control planned no call"
    emphasised = [c for c in planned if c.sparse.dense_key_bias is not None]  # the cond pass; uncond has no syntax
    assert emphasised and all(c.key_bias_rows is None for c in planned)
    assert np.abs(both - sparse_only).max() > 1e-4
