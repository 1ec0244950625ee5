"""Tiny ``SkyReelsV2Pipeline`` (SkyReels-V2 text-to-video) plug-in for :mod:`dit_attn.testing`.

``SkyReelsV2Transformer3DModel`` is a copy of Wan's transformer with its own attention classes
(``SkyReelsV2Attention`` / ``SkyReelsV2AttnProcessor``, the same code as ``WanAttention`` / ``WanAttnProcessor``
under other names) plus diffusion-forcing extras: per-frame timesteps (``enable_diffusion_forcing``), an fps
embedding (``inject_sample_info``) and a block-causal boolean mask over frames passed to ``attn1`` as
``attention_mask`` when ``num_frame_per_block > 1``. The plain text-to-video pipeline uses none of them: one
timestep per sample, ``num_frame_per_block=1``, so ``attention_mask`` is ``None``, and the tiny model behaves as
Wan's: 3 latent frames x 6 x 8 = 144 tokens of self-attention, cross-attention to 32 UMT5 tokens, two forwards per
step under CFG (``cache_context`` ``"cond"`` then ``"uncond"``).

The scheduler is what the pipeline declares and the SkyReels-V2 checkpoints ship: ``UniPCMultistepScheduler``
with flow sigmas (``prediction_type="flow_prediction"``, ``flow_shift=8.0``).
"""

from __future__ import annotations

from typing import Any

import torch

from . import (
    _WAN_T5_HIDDEN, HEIGHT, LATENT_CHANNELS, NEGATIVE_PROMPT, NUM_FRAMES, PROMPT, T5_MAX_LENGTH, WIDTH, _t5,
    _vae_wan, tiny_tokenizer,
)

PIPELINE_CLASS = "SkyReelsV2Pipeline"
TRANSFORMER_CLASS = "SkyReelsV2Transformer3DModel"


def patch_ftfy() -> bool:
    """Let ``SkyReelsV2Pipeline`` encode prompts without ``ftfy`` installed (its ``basic_clean`` calls ``ftfy``
    unconditionally); see :func:`dit_attn.testing.patch_ftfy`. Returns whether it patched."""
    from diffusers.pipelines.skyreels_v2 import pipeline_skyreels_v2

    from . import patch_ftfy as patch_modules

    return patch_modules(pipeline_skyreels_v2)


def transformer_config() -> dict[str, Any]:
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, text_dim=_WAN_T5_HIDDEN, freq_dim=32, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        inject_sample_info=False, num_frame_per_block=1,
    )


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0,
        solver_order=2, solver_type="bh2", lower_order_final=True,
    )


def components(seed: int) -> dict[str, Any]:
    patch_ftfy()
    return dict(
        scheduler=_scheduler(), vae=_vae_wan(seed),
        text_encoder=_t5(seed, "text_encoder", _WAN_T5_HIDDEN, umt5=True),
        tokenizer=tiny_tokenizer("t5", T5_MAX_LENGTH),
    )


def call_kwargs(steps: int, seed: int, guidance: bool) -> dict[str, Any]:
    patch_ftfy()
    kw: dict[str, Any] = dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, num_inference_steps=steps,
        output_type="np", generator=torch.Generator().manual_seed(seed), max_sequence_length=T5_MAX_LENGTH,
        guidance_scale=5.0 if guidance else 1.0,
    )
    if guidance:
        kw["negative_prompt"] = NEGATIVE_PROMPT
    return kw
