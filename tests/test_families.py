"""Every family against the stock processors, at transformer level, with fresh random inputs.

Covers what the tiny pipelines do not reach: the Wan I2V image context, HunyuanVideo's padded text mask,
CogVideoX RoPE, SD3.5 dual attention, batch > 1.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import (
    CogVideoXTransformer3DModel,
    FluxTransformer2DModel,
    HunyuanVideoTransformer3DModel,
    SD3Transformer2DModel,
    WanTransformer3DModel,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed

import dit_attn
from dit_attn.families import FAMILIES, family_of, processors_of
from dit_attn.testing import NEGATIVE_PROMPT, PROMPT, tiny_call_kwargs, tiny_pipeline


def _sd3(g):
    m = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                              num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                              pooled_projection_dim=8, out_channels=4, qk_norm="rms_norm", dual_attention_layers=(0,))
    kw = dict(hidden_states=torch.randn(3, 4, 8, 6, generator=g), encoder_hidden_states=torch.randn(3, 5, 16, generator=g),
              pooled_projections=torch.randn(3, 8, generator=g), timestep=torch.tensor([500.0] * 3))
    return m, kw, (1, 4, 3)


def _flux(g):
    m = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                               axes_dims_rope=(2, 2, 4))
    img_ids = torch.zeros(12, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(12) // 4, torch.arange(12) % 4
    kw = dict(hidden_states=torch.randn(2, 12, 16, generator=g), encoder_hidden_states=torch.randn(2, 5, 16, generator=g),
              pooled_projections=torch.randn(2, 8, generator=g), timestep=torch.tensor([0.5, 0.5]), img_ids=img_ids,
              txt_ids=torch.zeros(5, 3))
    return m, kw, (1, 3, 4)


def _wan(g, i2v=False):
    extra = dict(image_dim=12, added_kv_proj_dim=16) if i2v else {}
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                              out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
                              **extra)
    # With an image context the stock processor assumes 512 text tokens.
    kw = dict(hidden_states=torch.randn(2, 4, 3, 8, 6, generator=g),
              encoder_hidden_states=torch.randn(2, 512 if i2v else 7, 16, generator=g), timestep=torch.tensor([500, 500]))
    if i2v:
        kw["encoder_hidden_states_image"] = torch.randn(2, 5, 12, generator=g)
    return m, kw, (3, 4, 3)


def _hunyuan(g):
    m = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                       num_layers=1, num_single_layers=2, num_refiner_layers=1, patch_size=2,
                                       patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))
    kw = dict(hidden_states=torch.randn(2, 4, 3, 8, 8, generator=g), encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
              encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]),
              pooled_projections=torch.randn(2, 8, generator=g), timestep=torch.tensor([500, 500]),
              guidance=torch.tensor([3000.0, 3000.0]))
    return m, kw, (3, 4, 4)


def _cogvideox(g):
    m = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                    time_embed_dim=8, text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8,
                                    sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=6,
                                    use_rotary_positional_embeddings=True)
    cos, sin = get_3d_rotary_pos_embed(embed_dim=16, crops_coords=((0, 0), (4, 4)), grid_size=(4, 4), temporal_size=3)
    kw = dict(hidden_states=torch.randn(2, 3, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
              timestep=torch.tensor([500, 500]), image_rotary_emb=(cos, sin))
    return m, kw, (3, 4, 4)


CASES = {"sd3": _sd3, "flux": _flux, "wan": _wan, "wan_i2v": lambda g: _wan(g, True), "hunyuan_video": _hunyuan,
         "cogvideox": _cogvideox}


def _run(model, kwargs):
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0]


@pytest.mark.parametrize("case", list(CASES))
def test_transformer_matches_stock(case):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model, kwargs, grid = CASES[case](g)
    stock = _run(model, kwargs)
    recorder = dit_attn.Recorder()
    with dit_attn.attach(model, recorder, dit_attn.PassThrough()):
        ours = _run(model, kwargs)
    assert (ours - stock).abs().max() <= 1e-6, f"seed {seed}"
    assert recorder.layouts and all(layout.grid == grid for layout in recorder.layouts)
    assert all(layout.batch_size == kwargs["hidden_states"].shape[0] for layout in recorder.layouts)
    if case == "wan_i2v":
        kinds = [layout.kind for layout in recorder.layouts]
        assert kinds.count("cross_image") == kinds.count("cross") == 2
        image_ctx = [layout for layout in recorder.layouts if layout.kind == "cross_image"]
        assert image_ctx[0].key_segments == {"image_context": (0, 5)}
    if case == "hunyuan_video":
        # the refiner keeps its stock processor
        procs = model.attn_processors
        assert not any(isinstance(p, dit_attn.DitAttnProcessor) for n, p in procs.items() if "token_refiner" in n)


def _captured_batch2_forward(family):
    """The tiny pipeline of ``family``, and the inputs of its first transformer forward for two prompts of
    different lengths (so text is padded where the family pads) with their negative prompts."""
    pipe = tiny_pipeline(family)
    kwargs = tiny_call_kwargs(family, steps=2)  # (one step: some schedulers' terminal shift divides by zero)
    kwargs.update(prompt=[PROMPT, "a green triangle"], output_type="latent")
    if "negative_prompt" in kwargs:
        kwargs["negative_prompt"] = [NEGATIVE_PROMPT, "dark"]
    if family == "wan_vace":  # its pipeline takes one prompt and makes one video: the batch is doubled below
        kwargs.update(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT)
    captured = []

    def capture(module, args, kw):
        if not captured:
            captured.append((args, dict(kw)))

    handle = pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(**kwargs)
    finally:
        handle.remove()
    return pipe, captured[0]


def _fresh(value, g):
    """Fresh random values of the same shape for latent inputs (tensors or lists of tensors)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return torch.randn(value.shape, generator=g, dtype=value.dtype)
    if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
        return [_fresh(v, g) for v in value]
    return value


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_matches_stock_at_batch_2_with_padded_text(family):
    """Every supported family, at transformer level, on the inputs its own pipeline builds for two prompts of
    different lengths (batch 2 or more, non-square grid, padded text where the family pads), latents replaced by
    fresh random values: attached with Recorder + PassThrough equals stock, and detach restores the processors."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    pipe, (args, kwargs) = _captured_batch2_forward(family)
    data = FAMILIES[family]
    latent_name = data.arguments.get("hidden_states", "hidden_states")
    signature = inspect.signature(pipe.transformer.forward)
    bound = signature.bind_partial(*args, **kwargs)
    for name, value in bound.arguments.items():  # a pipeline that only runs batch 1: two rows of it
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == 1:
            bound.arguments[name] = torch.cat([value, value])
    bound.arguments[latent_name] = _fresh(bound.arguments[latent_name], g)
    model = pipe.transformer
    before = processors_of(model)

    def run():
        with torch.no_grad():
            out = model(*bound.args, **bound.kwargs)
        out = out[0] if isinstance(out, tuple) else out.sample
        return torch.stack(out) if isinstance(out, list) else out

    stock = run()
    recorder = dit_attn.Recorder()
    with dit_attn.attach(model, recorder, dit_attn.PassThrough()):
        ours = run()
    assert (ours - stock).abs().max() <= 1e-6, f"seed {seed}"
    assert recorder.layouts and all(layout.batch_size >= 2 for layout in recorder.layouts)
    grid = recorder.layouts[0].grid
    assert grid is not None and grid[1] != grid[2], grid  # non-square token grid
    assert all(processors_of(model)[name] is proc for name, proc in before.items())


def test_unsupported_transformers_are_refused_by_name():
    pipe = tiny_pipeline("lumina2")
    with pytest.raises(ValueError, match="does not support Lumina2Transformer2DModel; supported model families: sd3"):
        dit_attn.attach(pipe)
    assert not any(isinstance(p, dit_attn.DitAttnProcessor) for p in processors_of(pipe.transformer).values())


def test_family_of_rejects_other_models():
    with pytest.raises(ValueError, match="supported model families: sd3"):
        family_of(torch.nn.Linear(1, 1))


def test_flux_grid_is_read_once_per_img_ids_tensor():
    """The grid read from ``img_ids`` (a host read) is cached by tensor identity and version: the pipelines pass
    the same ids at every step; new or modified ids are read again."""
    from dit_attn.families.grids import from_ids

    _flux_grid = from_ids("img_ids")
    owner = torch.nn.Module()
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    ids = torch.stack([torch.zeros(15), rows.flatten().float(), cols.flatten().float()], dim=1)
    assert _flux_grid(owner, {"img_ids": ids}, None) == (1, 3, 5)
    assert owner._dit_attn_grid_memo.holds(ids)
    ids[-1, 1] = 6.0  # in place: a new version
    assert _flux_grid(owner, {"img_ids": ids}, None) == (1, 7, 5)
    other = ids[:10].clone()  # new tensor
    assert _flux_grid(owner, {"img_ids": other}, None) == (1, 2, 5)
    assert _flux_grid(owner, {"img_ids": ids[None]}, None) == (1, 7, 5)  # 3-D ids (deprecated diffusers form)


def test_readme_support_matrix_is_generated_from_the_family_data():
    from pathlib import Path

    from dit_attn.families.support import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the table with `python -m dit_attn.families.support`"


def test_testing_families_are_the_supported_families():
    from dit_attn import testing

    assert testing.FAMILIES == tuple(FAMILIES)
    assert all(FAMILIES[name].tested_with == name for name in testing.FAMILIES)
