"""RectifiedSparse as a control: validation, warm-up fractions, every family attached, stock at full density."""

import numpy as np
import pytest
import torch

import dit_attn
from dit_attn.layout import ForwardState, LayerSite, Layout
from dit_attn.testing import FAMILIES, cpu_threads, tiny_call_kwargs, tiny_pipeline


def _output(result):
    return np.asarray(result.frames if hasattr(result, "frames") else result.images)


@pytest.mark.parametrize("field, value, match", [
    ("sparsity", 1.0, r"sparsity must be a number in \[0.0, 1.0\)"), ("sparsity", -0.1, "sparsity"),
    ("tau", 1.5, "tau"), ("block_size", 0, "block_size must be an int >= 1"), ("block_size", 16.0, "block_size"),
    ("dense_layers", 2, "dense_layers"), ("dense_steps", -1, "dense_steps"), ("variant", "fast", "variant must be"),
    ("rectify", 1, "rectify must be True or False"), ("min_tokens", -1, "min_tokens"), ("first_frame", "yes", "first_frame"),
])
def test_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        dit_attn.RectifiedSparse(**{field: value})


def test_variants_resolve_and_registry():
    assert dit_attn.RectifiedSparse().resolved_variant == "full"
    assert dit_attn.RectifiedSparse(gain_aware=False).resolved_variant == "rc"
    assert dit_attn.RectifiedSparse(rectify=False).resolved_variant == "block"
    assert dit_attn.RectifiedSparse(variant="r").resolved_variant == "r"
    (c,) = dit_attn.controls_from_config({"sparse": {"sparsity": 0.5, "block_size": 64}})
    assert isinstance(c, dit_attn.RectifiedSparse) and c.sparsity == 0.5


def _layout(kind, layer, num_layers, step, num_steps, segs=None):
    segs = segs or {"image": (0, 64)}
    site = LayerSite(f"blocks.{layer}.attn1", "blocks", layer, layer, num_layers, kind)
    state = ForwardState(family="wan", step_index=step, num_steps=num_steps)
    return Layout(family="wan", site=site, kind=kind, heads=2, head_dim=8, query_segments=segs,
                  key_segments=segs if kind != "cross" else {"text": (0, 8)}, batch_size=1, state=state)


@pytest.mark.parametrize("num_steps, dense_steps, expected_dense", [
    (3, 0.1, [0]), (3, 0.34, [0, 1]), (10, 0.1, [0]), (10, 0.25, [0, 1, 2]), (50, 0.1, [0, 1, 2, 3, 4]),
    (50, 0.0, []), (10, 1.0, list(range(10))),
])
def test_dense_steps_fraction(num_steps, dense_steps, expected_dense):
    c = dit_attn.RectifiedSparse(dense_steps=dense_steps)
    dense = [s for s in range(num_steps) if not c.applies_to(_layout("self", 3, 10, s, num_steps))]
    assert dense == expected_dense


def test_dense_layers_fraction_and_kinds():
    c = dit_attn.RectifiedSparse(dense_layers=0.05)  # Wan 14B: 2 of 40 layers
    assert [i for i in range(40) if not c.applies_to(_layout("self", i, 40, 5, 50))] == [0, 1]
    assert not dit_attn.RectifiedSparse().applies_to(_layout("cross", 5, 40, 5, 50))
    assert not dit_attn.RectifiedSparse(min_tokens=100).applies_to(_layout("self", 5, 40, 5, 50))
    other = {"image": (0, 64), "condition": (64, 80)}
    assert not dit_attn.RectifiedSparse().applies_to(_layout("self", 5, 40, 5, 50, other))


@pytest.mark.parametrize("steps", [3, 10, 50])
def test_dense_steps_honoured_in_a_pipeline(steps):
    pipe = tiny_pipeline("flux")
    control = dit_attn.RectifiedSparse(sparsity=0.5, block_size=16, dense_steps=0.2, dense_layers=0.4,
                                       track_density=True)
    with cpu_threads(1), dit_attn.attach(pipe, control):
        pipe(**tiny_call_kwargs("flux", steps=steps, guidance=False))
    seen_steps = sorted({s for _, s, _ in control.density_log})
    seen_layers = sorted({layer for layer, _, _ in control.density_log})
    assert seen_steps == [s for s in range(steps) if s / steps >= 0.2]
    assert seen_layers == [2, 3, 4]  # 5 layers (2 double + 3 single): layers 0, 1 are < 0.4


# Families whose attention RectifiedSparse leaves dense (logged): per-query masks (Chroma, HunyuanVideo 1.5) and
# learned padding tokens between image and text (Z-Image).
STAYS_DENSE = {"chroma": "per-query attention mask", "hunyuan_video15": "per-query attention mask",
               "z_image": "image_padding"}


@pytest.mark.parametrize("family", sorted(STAYS_DENSE))
def test_families_it_cannot_plan_stay_dense_exactly_and_say_so(family, caplog):
    pipe = tiny_pipeline(family)
    with cpu_threads(1):
        stock = _output(pipe(**tiny_call_kwargs(family)))
        control = dit_attn.RectifiedSparse(sparsity=0.8, block_size=8, track_density=True)
        from dit_attn.controls import sparse as sparse_module

        sparse_module._DENSE_REASONS_LOGGED.clear()
        with caplog.at_level("INFO", logger="dit_attn"), dit_attn.attach(pipe, control):
            out = _output(pipe(**tiny_call_kwargs(family)))
    assert np.abs(out - stock).max() < 1e-5
    assert not control.density_log
    assert any(STAYS_DENSE[family] in r.getMessage() and "stay dense" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in STAYS_DENSE])
def test_every_family_full_density_is_stock_and_sparse_runs(family):
    pipe = tiny_pipeline(family)
    with cpu_threads(1):
        stock = _output(pipe(**tiny_call_kwargs(family)))
        with dit_attn.attach(pipe, dit_attn.RectifiedSparse(sparsity=0.0, block_size=16)):
            full = _output(pipe(**tiny_call_kwargs(family)))
        control = dit_attn.RectifiedSparse(sparsity=0.8, block_size=8, neighbors=False, track_density=True)
        with dit_attn.attach(pipe, control):
            sparse = _output(pipe(**tiny_call_kwargs(family)))
    assert np.abs(full - stock).max() < 1e-5
    assert np.isfinite(sparse).all()
    densities = [float(d) for _, _, d in control.density_log]
    assert densities and min(densities) < 1.0  # some blocks really skipped
    kinds = {"wan": 2, "sd3": 3}  # Wan: attn1 only (2 layers) per forward; SD3: 2 joint + SD3.5 attn2
    if family in kinds:
        per_forward = len(control.density_log) / (2 if family == "sd3" else 4)  # sd3: 2 forwards (CFG batched)
        assert per_forward == kinds[family]
    assert np.abs(sparse - stock).max() > 1e-6  # sparsity changed something


def test_cfg_batch_rows_are_independent():
    # CogVideoX runs cond and uncond in one batch of 2: each row's selection must depend on its own tokens only.
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    from dit_attn.sparse import make_layout, sparse_attention

    q, k, v = (torch.randn(2, 72, 2, 16, generator=g) for _ in range(3))
    layout2 = make_layout(72, 2, 16, 2, grid=(2, 4, 8), vis=(8, 72), text=(0, 8), family="cogvideox")
    layout1 = make_layout(72, 2, 16, 1, grid=(2, 4, 8), vis=(8, 72), text=(0, 8), family="cogvideox")
    c = dit_attn.RectifiedSparse(sparsity=0.7, block_size=8, neighbors=False)
    both = sparse_attention(c, q, k, v, layout2)
    for r in range(2):
        one = sparse_attention(c, q[r:r + 1], k[r:r + 1], v[r:r + 1], layout1)
        assert (both[r:r + 1] - one).abs().max() < 1e-5
