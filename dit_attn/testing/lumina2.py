"""Tiny random-weight ``Lumina2Pipeline`` (``Lumina2Transformer2DModel``, Lumina-Image-2.0), built offline.

* Transformer: hidden 32, 2 query heads / 1 key-value head of dim 16 (grouped-query attention), 1 context-refiner
  block (text only, masked), 1 noise-refiner block (image only), 2 joint blocks; 3-axis RoPE
  ``axes_dim_rope=(4, 6, 6)`` (caption position, row, column) with ``axes_lens=(64, 32, 32)``.
* Text encoder: a tiny ``Gemma2Model`` (3 layers: sliding, full, sliding, window 16; hidden 32, 2 query heads /
  1 kv head); the pipeline takes ``hidden_states[-2]`` (after the first two layers).
* Tokenizer: word-level over :data:`dit_attn.testing.VOCAB` plus Gemma's ``<bos>`` / ``<eos>`` (``<bos>``
  prepended), padding on the right with ``<pad>`` to ``max_sequence_length``.
* VAE: tiny ``AutoencoderKL`` with **8x** spatial compression (4 resolution levels; FLUX-VAE scaling/shift), since
  the pipeline hard-codes ``vae_scale_factor = 8``. At the shared :data:`HEIGHT` x :data:`WIDTH` = 48 x 64 the
  latent is 6 x 8 and the token grid (patch 2) is **3 x 4** = 12 image tokens (still non-square).
* Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=6.0)`` (static shift, as Lumina-Image-2.0 ships).

Attention per transformer forward with :func:`call_kwargs` (batch 1; no prompt is truncated):

* ``context_refiner``: the caption alone, padded to :data:`MAX_SEQUENCE_LENGTH` = 48 tokens, with a boolean key mask
  ``(1, 1, 1, 48)``. The pipeline prefixes the *positive* prompt with its system prompt, so it has 38 real tokens;
  the negative prompt gets no system prompt: 7 real tokens.
* ``noise_refiner``: the 12 image tokens, no mask.
* ``layers``: per-row packed ``[caption[:real_len], image]``: 38 + 12 = 50 tokens (cond) or 7 + 12 = 19 (uncond), no
  mask at batch 1 (a mask appears only when a batch mixes lengths).

Classifier-free guidance runs two forwards per step (cond, then uncond); the transformer has no ``cache_context``.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _SPECIALS, HEIGHT, LATENT_CHANNELS, NEGATIVE_PROMPT, PAD_ID, PROMPT, VOCAB, VOCAB_SIZE, WIDTH
from .factory import seeded, word_level_tokenizer

PIPELINE_CLASS = "Lumina2Pipeline"
TRANSFORMER_CLASS = "Lumina2Transformer2DModel"

VAE_SCALE_FACTOR = 8  # hard-coded in Lumina2Pipeline
# HEIGHT, WIDTH: the shared 48 x 64 (multiples of 16, as the pipeline checks); 8x VAE + patch 2 -> 3 x 4 tokens.
MAX_SEQUENCE_LENGTH = 48  # the pipeline pads every prompt to this length (system prompt + PROMPT = 38 tokens)
GUIDANCE_SCALE = 4.0

#: Gemma's own BOS / EOS tokens, with ids after the shared vocabulary (``<pad>`` = 0 and ``<unk>`` are shared).
BOS, EOS = "<bos>", "<eos>"
BOS_ID, EOS_ID = VOCAB_SIZE, VOCAB_SIZE + 1
GEMMA_VOCAB_SIZE = VOCAB_SIZE + 2

_GEMMA_HIDDEN = 32


def gemma_tokenizer():
    """A word-level stand-in for the Gemma tokenizer: ``<bos>`` prefix, right padding with ``<pad>``."""
    return word_level_tokenizer(
        {**VOCAB, BOS: BOS_ID, EOS: EOS_ID}, list(_SPECIALS) + [BOS, EOS], template=(f"{BOS} $A", f"{BOS} $A $B"),
        bos_token=BOS, eos_token=EOS, pad_token="<pad>", unk_token="<unk>")


def transformer_config() -> dict[str, Any]:
    return dict(
        sample_size=HEIGHT // VAE_SCALE_FACTOR, patch_size=2, in_channels=LATENT_CHANNELS, hidden_size=32,
        num_layers=2, num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
        ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=(4, 6, 6),
        axes_lens=(64, 32, 32), cap_feat_dim=_GEMMA_HIDDEN,
    )


def _gemma2(seed: int):
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(
        vocab_size=GEMMA_VOCAB_SIZE, hidden_size=_GEMMA_HIDDEN, intermediate_size=2 * _GEMMA_HIDDEN,
        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=_GEMMA_HIDDEN // 2,
        max_position_embeddings=256, rms_norm_eps=1e-6, query_pre_attn_scalar=_GEMMA_HIDDEN // 2,
        sliding_window=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, attention_dropout=0.0,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=True,
    )
    return seeded(seed, "text_encoder", lambda: Gemma2Model(cfg))


def _vae(seed: int):
    from diffusers import AutoencoderKL

    return seeded(seed, "vae", lambda: AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=4, sample_size=HEIGHT, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    ))


def components(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0),
        vae=_vae(seed),
        text_encoder=_gemma2(seed),
        tokenizer=gemma_tokenizer(),
    )


def call_kwargs(steps: int = 2, seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=steps,
        guidance_scale=GUIDANCE_SCALE if guidance else 1.0, output_type="np",
        generator=torch.Generator().manual_seed(seed), max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    if guidance:
        kw["negative_prompt"] = NEGATIVE_PROMPT
    return kw
