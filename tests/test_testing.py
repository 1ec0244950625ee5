"""Tests for dit_attn.testing: tiny offline diffusers pipelines."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from dit_attn import testing as tt
from dit_attn.testing import (
    ALL_FAMILIES, FAMILIES, HEIGHT, NUM_FRAMES, PROMPT, WIDTH, cpu_threads, tiny_call_kwargs, tiny_pipeline,
    tiny_transformer, tiny_tokenizer,
)

VIDEO = {"wan", "wan_i2v", "hunyuan_video", "cogvideox", "wan_vace", "skyreels_v2", "hunyuan_video15", "ltx"}
PIPELINE_CLASSES = {
    "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline", "wan": "WanPipeline",
    "wan_i2v": "WanImageToVideoPipeline", "hunyuan_video": "HunyuanVideoPipeline", "cogvideox": "CogVideoXPipeline",
}
PIPELINE_CLASSES.update({f: tt._plugin(f).PIPELINE_CLASS for f in tt._PLUGIN_FAMILIES})
# Families whose CFG cannot be switched off per call (HunyuanVideo 1.5's guider component runs it).
CFG_FROM_COMPONENT = {"hunyuan_video15"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny ops on shared CPU cores: more intra-op threads only add spin-waiting.
    with cpu_threads(1):
        yield


def _output(pipe, family, **kwargs):
    out = pipe(**tiny_call_kwargs(family, **kwargs))
    return np.asarray(out.frames if family in VIDEO else out.images)


def _expected_shape(family):
    module = tt._plugin(family) if family in tt._PLUGIN_FAMILIES else tt
    height, width = getattr(module, "HEIGHT", HEIGHT), getattr(module, "WIDTH", WIDTH)
    return (1, NUM_FRAMES, height, width, 3) if family in VIDEO else (1, height, width, 3)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_supported_family_has_a_tiny_pipeline_builder():
    """``FAMILIES`` is read from dit_attn.families, so comparing the two proves nothing; what must hold is that this
    package has a builder (core or plugin module) for each supported family and builds nothing else besides the
    Wan I2V variant and the transformers attach must refuse."""
    from dit_attn.families import FAMILIES as SUPPORTED

    buildable = set(tt._CORE_FAMILIES) | set(tt._PLUGIN_FAMILIES)
    assert buildable - set(tt.UNSUPPORTED) == set(SUPPORTED)
    assert not set(tt.UNSUPPORTED) & set(SUPPORTED)
    assert set(ALL_FAMILIES) == buildable | {"wan_i2v"}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_runs_deterministic_and_seeded(family):
    pipe = tiny_pipeline(family, seed=0)
    assert type(pipe).__name__ == PIPELINE_CLASSES[family]
    assert all(p.dtype == torch.float32 and p.device.type == "cpu"
               for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())
    assert not any(m.training for m in pipe.components.values() if isinstance(m, torch.nn.Module))

    cfg = _output(pipe, family)
    assert cfg.shape == _expected_shape(family)
    assert np.isfinite(cfg).all()
    no_cfg = _output(pipe, family, guidance=False)
    assert no_cfg.shape == _expected_shape(family) and np.isfinite(no_cfg).all()
    assert not np.array_equal(cfg, no_cfg)  # (HunyuanVideo 1.5: an empty negative prompt instead of ours)

    # Same seed: identical weights and output; the call's seed drives the noise.
    again = tiny_pipeline(family, seed=0)
    np.testing.assert_array_equal(_output(again, family), cfg)
    assert not np.array_equal(_output(pipe, family, seed=1), cfg)

    # Different seed: different weights in every module.
    other = tiny_pipeline(family, seed=1)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert not _same_state(_state(module), _state(other.components[name])), name

    # tiny_transformer is the pipeline's transformer.
    assert _same_state(_state(tiny_transformer(family, seed=0)), _state(pipe.transformer))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_save_load_round_trip(family, tmp_path):
    from diffusers import DiffusionPipeline

    pipe = tiny_pipeline(family, seed=3)
    expected = _output(pipe, family)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert list(tmp_path.glob("transformer/*.safetensors"))
    assert not list(tmp_path.rglob("*.bin"))
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    # The weights come back bit for bit; the outputs agree to rounding only (memory-mapped safetensors are
    # aligned differently, and some CPUs pick other SIMD paths for them).
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert _same_state(_state(module), _state(loaded.components[name])), name
    np.testing.assert_allclose(_output(loaded, family), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", ["sdxl", "", "SD3", "wan2"])
def test_unknown_family(bad):
    for fn in (tiny_pipeline, tiny_transformer, tiny_call_kwargs):
        with pytest.raises(ValueError, match="supported families: sd3, flux, chroma, wan, wan_vace"):
            fn(bad)


def test_call_kwargs():
    for family in ("sd3", "flux", "wan", "wan_i2v", "hunyuan_video", "cogvideox"):
        on, off = tiny_call_kwargs(family, steps=3, seed=5), tiny_call_kwargs(family, guidance=False)
        assert on["num_inference_steps"] == 3 and on["prompt"] == PROMPT and on["output_type"] == "np"
        assert on["generator"].initial_seed() == 5
        assert "negative_prompt" in on and "negative_prompt" not in off
        if family in ("flux", "hunyuan_video"):
            assert on["true_cfg_scale"] > 1 and off["true_cfg_scale"] == 1
        else:
            assert on["guidance_scale"] > 1 and off["guidance_scale"] == 1
        assert ("num_frames" in on) == (family in VIDEO)
    assert "image" in tiny_call_kwargs("wan_i2v")


def _count_forwards(pipe, family, **kwargs):
    batches = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kw: batches.append(kw.get("hidden_states", args[0] if args else None).shape[0]),
        with_kwargs=True)
    try:
        _output(pipe, family, **kwargs)
    finally:
        handle.remove()
    return batches


@pytest.mark.parametrize("family,batched", [("sd3", True), ("cogvideox", True), ("flux", False), ("wan", False),
                                            ("hunyuan_video", False)])
def test_cfg_forward_pattern(family, batched):
    pipe = tiny_pipeline(family)
    assert _count_forwards(pipe, family, guidance=False) == [1, 1]
    assert _count_forwards(pipe, family) == ([2, 2] if batched else [1, 1, 1, 1])


def test_model_structure():
    sd3 = tiny_transformer("sd3")
    assert [b.attn2 is not None for b in sd3.transformer_blocks] == [True, False]
    assert sd3.transformer_blocks[0].attn.norm_q is not None
    flux = tiny_transformer("flux")
    assert len(flux.transformer_blocks) >= 2 and len(flux.single_transformer_blocks) >= 2
    assert flux.config.guidance_embeds
    hy = tiny_transformer("hunyuan_video")
    assert len(hy.transformer_blocks) >= 1 and len(hy.single_transformer_blocks) >= 1
    assert len(hy.context_embedder.token_refiner.refiner_blocks) >= 1
    i2v = tiny_transformer("wan_i2v")
    assert i2v.blocks[0].attn2.add_k_proj is not None and i2v.config.image_dim
    from dit_attn.families import attention_sites, family_of

    for family in FAMILIES:  # every attention module we take over: 2+ heads (config names differ per family)
        transformer = tiny_transformer(family)
        sites = list(attention_sites(transformer, family_of(transformer)))
        assert sites and all(site.module.heads >= 2 for site in sites), family
    assert len(tiny_transformer("sd3", num_layers=3).transformer_blocks) == 3


def test_overrides():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    pipe = tiny_pipeline("sd3", scheduler=scheduler, num_layers=3)
    assert pipe.scheduler is scheduler and len(pipe.transformer.transformer_blocks) == 3
    with pytest.raises(ValueError):
        tiny_pipeline("sd3", transformer=tiny_transformer("sd3"), num_layers=3)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_pipeline("flux")
    assert torch.equal(torch.rand(3), expected)


def test_tokenizers():
    t5 = tiny_tokenizer("t5", 32)
    out = t5([PROMPT, "a zebra"], padding="max_length", max_length=12, truncation=True, return_tensors="pt",
             return_offsets_mapping=True, return_attention_mask=True)
    assert out.input_ids.shape == (2, 12) and out.offset_mapping.shape == (2, 12, 2)
    ids = out.input_ids[0].tolist()
    assert ids[7] == tt.EOS_ID and ids[8:] == [tt.PAD_ID] * 4 and tt.UNK_ID not in ids[:7]
    assert out.input_ids[1].tolist()[:3] == [tt.VOCAB["a"], tt.UNK_ID, tt.EOS_ID]
    assert t5.convert_ids_to_tokens(ids[:7]) == PROMPT.split()
    assert tuple(out.offset_mapping[0, 2].tolist()) == (6, 12)  # "circle"
    clip = tiny_tokenizer("clip", 16)
    ids = clip(PROMPT.upper(), padding="max_length", max_length=clip.model_max_length, truncation=True).input_ids
    assert len(ids) == 16 and ids[0] == tt.CLIP_BOS_ID and ids[8] == tt.CLIP_EOS_ID
    long = clip(" ".join(["red"] * 40), padding="max_length", max_length=16, truncation=True).input_ids
    assert len(long) == 16 and long[-1] == tt.CLIP_EOS_ID


def test_hunyuan_template_crop():
    # The pipeline computes crop_start = len(tokens(template)) - 2; check that it lands exactly on the prompt.
    tok = tiny_tokenizer("llama")
    template = tiny_call_kwargs("hunyuan_video")["prompt_template"]["template"]
    crop = len(tok(template).input_ids) - 2
    ids = tok(template.format(PROMPT)).input_ids
    prompt_ids = tok(PROMPT, add_special_tokens=False).input_ids
    assert ids[crop:crop + len(prompt_ids)] == prompt_ids
    assert tok.convert_ids_to_tokens(ids[crop + len(prompt_ids)]) == "<|eot_id|>"


@pytest.mark.parametrize("family", ["sd3", "hunyuan_video"])
def test_prompt_matters(family):
    pipe = tiny_pipeline(family)
    kwargs = tiny_call_kwargs(family, guidance=False)
    a = _output(pipe, family, guidance=False)
    kwargs["prompt"] = "a green triangle below a yellow star"
    out = pipe(**kwargs)
    b = np.asarray(out.frames if family in VIDEO else out.images)
    assert not np.array_equal(a, b)


def test_docstring_examples():
    from dit_attn.testing import factory

    for module, minimum in ((tt, 3), (factory, 3)):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted >= minimum and result.failed == 0, (module.__name__, result)
