"""Tiny ``ChromaPipeline`` (Chroma1-HD style text-to-image) for :mod:`dit_attn.testing`.

Components: a ``ChromaTransformer2DModel`` with 2 double-stream and 3 single-stream blocks (2 heads of dim 16, Flux
RoPE axes (4, 6, 6)) and a tiny 2-layer distilled-guidance approximator, a tiny T5 encoder with the word-level T5
tokenizer, the package's tiny ``AutoencoderKL`` (4x spatial compression, 4 latent channels, Flux scaling/shift) and
a Flux-style ``FlowMatchEulerDiscreteScheduler`` (dynamic shifting).

Sizes: :data:`~dit_attn.testing.HEIGHT` x :data:`~dit_attn.testing.WIDTH` = 48 x 64 pixels -> 12 x 16 latents ->
2x2-packed token grid of 6 rows x 8 columns = 48 image tokens; 32 T5 text tokens in front of them in the joint
attention (80 in all). The prompt plus ``</s>`` is 8 tokens; Chroma keeps those and the first padding token
unmasked and masks the other 23 padding tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from . import HEIGHT, LATENT_CHANNELS, NEGATIVE_PROMPT, PROMPT, T5_MAX_LENGTH, WIDTH, _t5, _vae_kl, tiny_tokenizer

PIPELINE_CLASS = "ChromaPipeline"
TRANSFORMER_CLASS = "ChromaTransformer2DModel"

_T5_HIDDEN = 48


def transformer_config() -> dict[str, Any]:
    """Constructor kwargs of the tiny ``ChromaTransformer2DModel`` (a fresh dict).

    ``axes_dims_rope`` sums to ``attention_head_dim`` (4 + 6 + 6 = 16); ``approximator_num_channels`` is a multiple
    of 4 (the approximator input is 4 sinusoidal embeddings of ``approximator_num_channels // 4`` channels).
    """
    return dict(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, out_channels=None, num_layers=2, num_single_layers=3,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=_T5_HIDDEN, axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2,
    )


def components(seed: int) -> dict[str, Any]:
    """Every ``ChromaPipeline`` component but the transformer, with weights a function of ``seed``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        ),
        vae=_vae_kl(seed, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_t5(seed, "text_encoder", _T5_HIDDEN),
        tokenizer=tiny_tokenizer("t5", T5_MAX_LENGTH),
        image_encoder=None, feature_extractor=None,
    )


def call_kwargs(steps: int = 2, seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    """Kwargs for ``pipe(**call_kwargs(...))``: images ``(1, HEIGHT, WIDTH, 3)``.

    ``guidance=True``: ``guidance_scale=4.0`` with a negative prompt (true CFG as two forwards of batch 1 per step,
    cond first, then uncond); ``guidance=False``: ``guidance_scale=1.0`` (one forward per step).
    """
    kw: dict[str, Any] = dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=steps,
        guidance_scale=4.0 if guidance else 1.0, output_type="np", generator=torch.Generator().manual_seed(seed),
        max_sequence_length=T5_MAX_LENGTH,
    )
    if guidance:
        kw["negative_prompt"] = NEGATIVE_PROMPT
    return kw
