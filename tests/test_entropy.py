"""EntropyScale: factor values, exact no-op at the training size, dense reference, cross-attention untouched."""

import math

import numpy as np
import pytest
import torch

import dit_attn
from dit_attn.testing import FAMILIES, tiny_call_kwargs, tiny_pipeline


def _out(result) -> np.ndarray:
    return np.asarray(result.images if hasattr(result, "images") else result.frames)
from dit_attn.controls.entropy import entropy_factor


@pytest.mark.parametrize("n, expected", [(1536, 0.933), (2816, 0.970), (4608, 1.000), (9728, 1.043), (16896, 1.074)])
def test_flux_table(n, expected):
    assert round(entropy_factor(n, 4608), 3) == expected


def test_clamped_for_tiny_counts():
    assert entropy_factor(1, 1) == 1.0
    assert entropy_factor(0, 4608) == pytest.approx(math.sqrt(math.log(2) / math.log(4608)))


def test_bad_train_tokens():
    with pytest.raises(ValueError, match="positive int"):
        dit_attn.EntropyScale(train_tokens=0)


def test_scale_matches_dense_reference_and_skips_cross():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    q, k, v = (torch.randn(2, 10, 2, 8, generator=g) for _ in range(3))
    segs = {"image": (0, 10)}
    layout = dit_attn.Layout(family="flux", site=None, kind="self", heads=2, head_dim=8, query_segments=segs,
                             key_segments=segs, batch_size=2)
    control = dit_attn.EntropyScale(train_tokens=100)
    call = control.prepare(dit_attn.AttentionCall(q, k, v, layout))
    out = dit_attn.execute(call)
    f = entropy_factor(10, 100)
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * f / math.sqrt(8)
    ref = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double())
    assert (out.double() - ref).abs().max() < 1e-5
    cross = dit_attn.Layout(family="wan", site=None, kind="cross", heads=2, head_dim=8, query_segments=segs,
                            key_segments={"text": (0, 10)}, batch_size=2)
    assert not control.applies_to(cross)


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_at_training_size_is_stock_and_elsewhere_differs(family):
    """On every family: trained at the token count of its calls, the output is stock; at 4x, it differs."""
    pipe = tiny_pipeline(family)

    def run(*controls):
        with dit_attn.attach(pipe, *controls):
            return _out(pipe(**tiny_call_kwargs(family, steps=2)))

    stock = _out(pipe(**tiny_call_kwargs(family, steps=2)))
    recorder = dit_attn.Recorder()
    run(recorder)
    control = dit_attn.EntropyScale(train_tokens=1)
    key_lens = {layout.key_len for layout in recorder.layouts if control.applies_to(layout)}
    n_keys = max(key_lens)
    same = run(dit_attn.EntropyScale(train_tokens=n_keys))
    other = run(dit_attn.EntropyScale(train_tokens=4 * n_keys))
    if len(key_lens) == 1:  # (SD3.5's image-only attn2 has fewer keys than its joint blocks: scaled there)
        assert np.abs(same - stock).max() <= 1e-5
    assert np.abs(other - stock).max() > 1e-4
