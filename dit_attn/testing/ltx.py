"""Tiny ``LTXPipeline`` (LTX-Video text-to-video) for :mod:`dit_attn.testing`.

Components: a 2-block ``LTXVideoTransformer3DModel`` (2 heads of dim 16, patch 1x1x1), a tiny T5 encoder with the
word-level T5 tokenizer, a tiny ``AutoencoderKLLTXVideo`` and LTX-Video's ``FlowMatchEulerDiscreteScheduler``
(dynamic shifting; without its terminal shift, which breaks ``num_inference_steps=1``).

``LTXPipeline.check_inputs`` requires pixel sizes divisible by 32, so this family uses :data:`HEIGHT` x
:data:`WIDTH` = 32 x 64 instead of the package-wide 48 x 64. The VAE patchifies 2x2 and has two spatio-temporal
downsampling levels, i.e. 8x spatial and 4x temporal compression, so :data:`NUM_FRAMES` = 9 frames give a latent
(and, with transformer patch size 1, token) grid of 3 frames x 4 rows x 8 columns = 96 video tokens: non-square,
with an odd number of latent frames. Text: 32 T5 tokens (the prompt plus ``</s>`` is 8 of them; the rest is padding,
masked in cross-attention).
"""

from __future__ import annotations

from typing import Any

import torch

from . import NEGATIVE_PROMPT, NUM_FRAMES, PROMPT, T5_MAX_LENGTH, _t5, tiny_tokenizer
from .factory import seeded

PIPELINE_CLASS = "LTXPipeline"
TRANSFORMER_CLASS = "LTXVideoTransformer3DModel"

#: Pixel sizes of :func:`call_kwargs` (``LTXPipeline`` needs multiples of 32).
HEIGHT, WIDTH = 32, 64
SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION = 8, 4
#: Latent / token grid: (frames, rows, columns) = (3, 4, 8).
LATENT_FRAMES = (NUM_FRAMES - 1) // TEMPORAL_COMPRESSION + 1
LATENT_HEIGHT, LATENT_WIDTH = HEIGHT // SPATIAL_COMPRESSION, WIDTH // SPATIAL_COMPRESSION

LATENT_CHANNELS = 8
_T5_HIDDEN = 48


def transformer_config() -> dict[str, Any]:
    """Constructor kwargs of the tiny ``LTXVideoTransformer3DModel`` (a fresh dict).

    Inner dim 2 x 16 = 32; LTX's 3-axis RoPE spans the whole inner dim (``32 // 6 = 5`` frequencies per axis, the
    remaining ``32 % 6 = 2`` channels padded with the identity rotation, as in the real 2048-wide model).
    """
    return dict(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32, num_layers=2,
        activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads", norm_elementwise_affine=False,
        norm_eps=1e-6, caption_channels=_T5_HIDDEN, attention_bias=True, attention_out_bias=True,
    )


def _vae(seed: int):
    from diffusers import AutoencoderKLLTXVideo

    return seeded(seed, "vae", lambda: AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        down_block_types=("LTXVideoDownBlock3D",) * 3,
        layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False), decoder_spatio_temporal_scaling=(True, True, False),
        decoder_inject_noise=(False, False, False, False), upsample_residual=(False, False, False),
        upsample_factor=(1, 1, 1), timestep_conditioning=False, patch_size=2, patch_size_t=1,
        scaling_factor=1.0, encoder_causal=True, decoder_causal=False,
    ))


def components(seed: int) -> dict[str, Any]:
    """Every ``LTXPipeline`` component but the transformer, with weights a function of ``seed``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    vae = _vae(seed)
    assert (vae.spatial_compression_ratio, vae.temporal_compression_ratio) == (
        SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION)
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
            base_image_seq_len=1024, max_image_seq_len=4096,
        ),  # LTX-Video's also has shift_terminal=0.1, left out: with it, num_inference_steps=1 divides by zero
        vae=vae,
        text_encoder=_t5(seed, "text_encoder", _T5_HIDDEN),
        tokenizer=tiny_tokenizer("t5", T5_MAX_LENGTH),
    )


def call_kwargs(steps: int = 2, seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    """Kwargs for ``pipe(**call_kwargs(...))``: frames ``(1, NUM_FRAMES, HEIGHT, WIDTH, 3)``.

    ``guidance=True``: ``guidance_scale=3.0`` with a negative prompt (batched CFG: one forward of batch 2,
    ``[uncond, cond]``); ``guidance=False``: ``guidance_scale=1.0`` (one forward of batch 1 per step).
    """
    kw: dict[str, Any] = dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, num_inference_steps=steps,
        guidance_scale=3.0 if guidance else 1.0, output_type="np", generator=torch.Generator().manual_seed(seed),
        max_sequence_length=T5_MAX_LENGTH,
    )
    if guidance:
        kw["negative_prompt"] = NEGATIVE_PROMPT
    return kw
