"""Tiny ``WanVACEPipeline`` (Wan 2.1 VACE) plug-in for :mod:`dit_attn.testing`.

The transformer is ``WanVACETransformer3DModel``: Wan's blocks (``blocks.{i}``, ``WanTransformerBlock``) plus a
control branch (``vace_blocks.{j}``, ``WanVACETransformerBlock``) whose self- and cross-attention are the same
``WanAttention`` / ``WanAttnProcessor`` classes as Wan's. All ``vace_blocks`` run first, on the patch-embedded
control latents (``vace_patch_embedding``), and their hints are added after the main blocks listed in
``vace_layers``. The token grid is Wan's: 3 latent frames x 6 x 8 = 144 tokens in every self-attention (main and
VACE), cross-attention to 32 UMT5 tokens; classifier-free guidance runs two forwards per step (``cache_context``
``"cond"`` then ``"uncond"``), each running both the VACE and the main blocks.

:func:`call_kwargs` passes a 9-frame conditioning video (a red disc sliding right above a blue square) and a mask
(black = keep: frame 0 entirely and the top rows of every frame; white = generate), so the control latents are
``[inactive (4), reactive (4), mask (4 x 4 = 16)]`` = 24 channels (``vace_in_channels``). No reference images are
passed (each one would prepend a latent frame, giving 4 x 6 x 8 = 192 tokens).
"""

from __future__ import annotations

from typing import Any

import torch

from . import (
    _WAN_T5_HIDDEN, HEIGHT, LATENT_CHANNELS, NEGATIVE_PROMPT, NUM_FRAMES, PROMPT, T5_MAX_LENGTH, WIDTH, _t5,
    _vae_wan, tiny_tokenizer,
)
from .factory import flow_scheduler

PIPELINE_CLASS = "WanVACEPipeline"
TRANSFORMER_CLASS = "WanVACETransformer3DModel"

_VAE_SPATIAL = 4  # the tiny Wan VAE's spatial compression (2 ** len(temperal_downsample))
#: Control channels: VAE latents of the inactive and reactive video, plus the mask folded into 4x4 pixel blocks.
VACE_IN_CHANNELS = 2 * LATENT_CHANNELS + _VAE_SPATIAL * _VAE_SPATIAL


def patch_ftfy() -> bool:
    """Let ``WanVACEPipeline`` encode prompts without ``ftfy`` installed (its ``basic_clean`` calls ``ftfy``
    unconditionally); see :func:`dit_attn.testing.patch_ftfy`. Returns whether it patched."""
    from diffusers.pipelines.wan import pipeline_wan_vace

    from . import patch_ftfy as patch_modules

    return patch_modules(pipeline_wan_vace)


def transformer_config() -> dict[str, Any]:
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, text_dim=_WAN_T5_HIDDEN, freq_dim=32, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        vace_layers=[0, 1], vace_in_channels=VACE_IN_CHANNELS,
    )


def components(seed: int) -> dict[str, Any]:
    patch_ftfy()
    return dict(
        scheduler=flow_scheduler(shift=3.0), vae=_vae_wan(seed),
        text_encoder=_t5(seed, "text_encoder", _WAN_T5_HIDDEN, umt5=True),
        tokenizer=tiny_tokenizer("t5", T5_MAX_LENGTH),
    )


def condition_video_and_mask():
    """``(frames, mask)``: NUM_FRAMES RGB PIL frames and NUM_FRAMES grayscale ("L") PIL masks, deterministic."""
    import numpy as np
    from PIL import Image

    h, w = HEIGHT, WIDTH
    yy, xx = np.mgrid[0:h, 0:w]
    frames, masks = [], []
    for f in range(NUM_FRAMES):
        img = np.full((h, w, 3), 255, dtype=np.uint8)
        cx = w * (0.3 + 0.4 * f / max(NUM_FRAMES - 1, 1))
        img[(yy - h * 0.3) ** 2 + (xx - cx) ** 2 <= (h * 0.18) ** 2] = (220, 30, 30)
        img[(abs(yy - h * 0.72) <= h * 0.16) & (abs(xx - w * 0.5) <= h * 0.16)] = (30, 60, 220)
        frames.append(Image.fromarray(img))
        mask = np.full((h, w), 255, dtype=np.uint8)  # white: generate
        if f == 0:
            mask[:] = 0  # black: keep the whole first frame
        else:
            mask[: h // 4] = 0  # keep the top rows of the others
        masks.append(Image.fromarray(mask))  # 2-D uint8 -> mode "L"
    return frames, masks


def call_kwargs(steps: int, seed: int, guidance: bool) -> dict[str, Any]:
    patch_ftfy()
    video, mask = condition_video_and_mask()
    kw: dict[str, Any] = dict(
        prompt=PROMPT, video=video, mask=mask, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(seed),
        max_sequence_length=T5_MAX_LENGTH, guidance_scale=5.0 if guidance else 1.0,
    )
    if guidance:
        kw["negative_prompt"] = NEGATIVE_PROMPT
    return kw
