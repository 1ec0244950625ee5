"""Tiny random-weight ``CogView4Pipeline`` (``CogView4Transformer2DModel``), built offline.

* Transformer: 2 blocks, 2 heads of dim 16 (hidden 32), patch 2, 2-D RoPE over the image tokens only
  (``rope_axes_dim=(32, 32)``: the row/column indices are rescaled into that range).
* Text encoder: a tiny ``GlmModel`` (3 layers, hidden 32, 2 query heads / 1 kv head, partial RoPE); the pipeline
  takes ``hidden_states[-2]``.
* Tokenizer: word-level over :data:`dit_attn.testing.VOCAB` plus GLM-4's ``[gMASK]`` and ``<sop>`` (prepended to
  every prompt, as the real tokenizer does), padding on the left with ``<|endoftext|>``. The pipeline pads the ids
  on the *left* to a multiple of 16 itself and passes no attention mask, neither to GLM nor to the transformer.
* VAE: tiny ``AutoencoderKL`` (4x spatial, 4 latent channels; the pipeline derives ``vae_scale_factor`` = 4 from
  it), so :data:`HEIGHT` x :data:`WIDTH` = 48 x 64 gives a 12 x 16 latent and a 6 x 8 token grid.
* Scheduler: ``FlowMatchEulerDiscreteScheduler`` with CogView4's dynamic, linear time shift.

Attention per transformer forward with :func:`call_kwargs`: joint ``[text, image]`` self-attention over
16 text tokens (prompt: ``[gMASK] <sop>`` + 7 words = 9, left-padded to 16; negative prompt: 2 + 6 = 8, left-padded
to 16) + 48 image tokens = 64 tokens, batch 1. Classifier-free guidance runs two forwards per step (``cond`` then
``uncond``, each inside ``transformer.cache_context``).
"""

from __future__ import annotations

from typing import Any

import torch

from . import _SPECIALS, HEIGHT, LATENT_CHANNELS, NEGATIVE_PROMPT, PROMPT, VOCAB, VOCAB_SIZE, WIDTH, _vae_kl
from .factory import flow_scheduler, seeded, word_level_tokenizer

PIPELINE_CLASS = "CogView4Pipeline"
TRANSFORMER_CLASS = "CogView4Transformer2DModel"

# HEIGHT, WIDTH: the shared 48 x 64 (multiples of 16, as the pipeline checks); 4x VAE + patch 2 -> 6 x 8 tokens
MAX_SEQUENCE_LENGTH = 32  # no prompt here comes near it; the pipeline pads to the longest prompt, then to x16
GUIDANCE_SCALE = 5.0

#: Extra special tokens of the GLM-4 tokenizer, with ids after the shared vocabulary.
GMASK, SOP = "[gMASK]", "<sop>"
GMASK_ID, SOP_ID = VOCAB_SIZE, VOCAB_SIZE + 1
GLM_VOCAB_SIZE = VOCAB_SIZE + 2
GLM_PAD_ID = VOCAB["<|endoftext|>"]

_GLM_HIDDEN = 32


def glm_tokenizer():
    """A word-level stand-in for the GLM-4 tokenizer: ``[gMASK] <sop>`` prefix, left padding with ``<|endoftext|>``."""
    return word_level_tokenizer(
        {**VOCAB, GMASK: GMASK_ID, SOP: SOP_ID}, list(_SPECIALS) + [GMASK, SOP],
        template=(f"{GMASK} {SOP} $A", f"{GMASK} {SOP} $A $B"), padding_side="left", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<unk>", additional_special_tokens=[GMASK, SOP])


def transformer_config() -> dict[str, Any]:
    return dict(
        patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, text_embed_dim=_GLM_HIDDEN, time_embed_dim=32,
        condition_dim=8, pos_embed_max_size=16, sample_size=HEIGHT // 4, rope_axes_dim=(32, 32),
    )


def _glm(seed: int):
    from transformers import GlmConfig, GlmModel

    cfg = GlmConfig(
        vocab_size=GLM_VOCAB_SIZE, hidden_size=_GLM_HIDDEN, intermediate_size=2 * _GLM_HIDDEN, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=_GLM_HIDDEN // 2, max_position_embeddings=256,
        rms_norm_eps=1e-5, attention_dropout=0.0, pad_token_id=GLM_PAD_ID, eos_token_id=GLM_PAD_ID,
        tie_word_embeddings=False,
    )
    return seeded(seed, "text_encoder", lambda: GlmModel(cfg))


def components(seed: int) -> dict[str, Any]:
    return dict(
        tokenizer=glm_tokenizer(),
        text_encoder=_glm(seed),
        vae=_vae_kl(seed, scaling_factor=1.0, shift_factor=0.0),
        scheduler=flow_scheduler(
            shift=1.0, use_dynamic_shifting=True, base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
            max_image_seq_len=4096, time_shift_type="linear",
        ),
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
