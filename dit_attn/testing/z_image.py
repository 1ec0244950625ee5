"""Tiny random-weight ``ZImagePipeline`` (``ZImageTransformer2DModel``), built fully offline.

A plug-in of :mod:`dit_attn.testing` (family ``"z_image"``): ``tiny_pipeline("z_image")`` builds the pipeline from
the components here and the transformer from :func:`transformer_config`.

Components: a tiny ``Qwen3Model`` text encoder (2 layers, hidden 32; the pipeline takes ``hidden_states[-2]`` of
the unpadded tokens), a word-level tokenizer over :data:`dit_attn.testing.VOCAB` plus Qwen's chat tokens
(``<|im_start|>``, ``<|im_end|>``, ``<think>``, ``</think>``) with a minimal Qwen3-style ``chat_template``, the
tiny ``AutoencoderKL`` (FLUX-style scaling/shift) and a ``FlowMatchEulerDiscreteScheduler`` (shift 3, no dynamic
shifting: Z-Image-Turbo's scheduler config).

Attention sizes per transformer forward with :func:`call_kwargs` (``HEIGHT`` x ``WIDTH`` = 48 x 64 pixels):

* image: 6 x 8 = 48 patch tokens, padded per row to a multiple of 32 with the learned ``x_pad_token`` -> 64;
  ``noise_refiner`` attends over these 64 tokens.
* text: the chat-templated prompt, unpadded (12 tokens for :data:`~dit_attn.testing.PROMPT`, 11 for
  :data:`~dit_attn.testing.NEGATIVE_PROMPT`), padded per row to a multiple of 32 with the learned
  ``cap_pad_token`` -> 32; ``context_refiner`` attends over these 32 tokens.
* main ``layers``: one joint sequence ``[image (64), text (32)]`` = 96 tokens per row.
* classifier-free guidance (``guidance_scale > 0``) is batched: one forward with a batch of 2, rows
  ``[cond, uncond]``. With equal padded lengths there is no attention mask (``attention_mask=None``).
"""

from __future__ import annotations

from typing import Any

import torch

from . import HEIGHT, NEGATIVE_PROMPT, PROMPT, VOCAB, WIDTH, _SPECIALS, _vae_kl
from .factory import flow_scheduler, seeded, word_level_tokenizer
from .flux2 import QWEN3_CHAT_TEMPLATE

PIPELINE_CLASS = "ZImagePipeline"
TRANSFORMER_CLASS = "ZImageTransformer2DModel"

# call_kwargs uses the package's HEIGHT x WIDTH = 48 x 64: the pipeline needs multiples of 2 * vae_scale_factor = 8
# (the tiny VAE compresses 4x, the transformer patches 2x2), giving a 6 x 8 token grid.

#: Text tokens the tokenizer pads/truncates to (the pipeline keeps only the unmasked ones); the stock default, 512,
#: works too but runs the text encoder over 512 tokens.
MAX_SEQUENCE_LENGTH = 64

#: Qwen chat tokens, appended after :data:`dit_attn.testing.VOCAB` (ids VOCAB_SIZE, VOCAB_SIZE + 1, ...).
CHAT_SPECIALS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
_VOCAB = {**VOCAB, **{t: len(VOCAB) + i for i, t in enumerate(CHAT_SPECIALS)}}
TEXT_VOCAB_SIZE = len(_VOCAB)
IM_START_ID, IM_END_ID = _VOCAB["<|im_start|>"], _VOCAB["<|im_end|>"]
PAD_TOKEN = "<|endoftext|>"  # Qwen3's pad token (also in VOCAB, as CLIP's end-of-text)

#: Qwen3's chat template, reduced to what the pipelines use (role-tagged messages, the generation prompt and the
#: empty think block that ``enable_thinking=False`` adds; ZImagePipeline passes ``enable_thinking=True``: none).
CHAT_TEMPLATE = QWEN3_CHAT_TEMPLATE

_TEXT_HIDDEN = 32  # Qwen3 hidden size = the transformer's cap_feat_dim
_VAE_SCALING, _VAE_SHIFT = 0.3611, 0.1159  # FLUX VAE's (Z-Image uses it)


def transformer_config() -> dict[str, Any]:
    """Tiny ``ZImageTransformer2DModel`` kwargs: hidden 32, 2 heads of dim 16 (RoPE axes 4 + 6 + 6), 2 main layers,
    1 noise-refiner and 1 context-refiner layer."""
    return dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=_TEXT_HIDDEN, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[4, 6, 6], axes_lens=[1024, 64, 64],
    )


def tokenizer():
    """Word-level stand-in for Qwen3's tokenizer: no BOS/EOS added, right padding with ``<|endoftext|>``."""
    return word_level_tokenizer(_VOCAB, list(_SPECIALS) + list(CHAT_SPECIALS), eos_token="<|im_end|>",
                                pad_token=PAD_TOKEN, unk_token="<unk>", chat_template=CHAT_TEMPLATE)


def _qwen3(seed: int):
    from transformers import Qwen3Config, Qwen3Model

    cfg = Qwen3Config(
        vocab_size=TEXT_VOCAB_SIZE, hidden_size=_TEXT_HIDDEN, intermediate_size=2 * _TEXT_HIDDEN,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0, attention_dropout=0.0,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=IM_END_ID, pad_token_id=_VOCAB[PAD_TOKEN],
    )
    return seeded(seed, "text_encoder", lambda: Qwen3Model(cfg))


def components(seed: int) -> dict[str, Any]:
    """Every ``ZImagePipeline`` component but the transformer."""
    return dict(
        scheduler=flow_scheduler(shift=3.0),
        vae=_vae_kl(seed, scaling_factor=_VAE_SCALING, shift_factor=_VAE_SHIFT),
        text_encoder=_qwen3(seed),
        tokenizer=tokenizer(),
    )


def call_kwargs(steps: int = 2, seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    """``pipe(**call_kwargs())`` kwargs. Z-Image turns CFG on with ``guidance_scale > 0`` (not > 1): ``guidance=False``
    passes ``guidance_scale=0.0`` (one batch-1 forward per step), ``guidance=True`` a scale of 4 with
    :data:`~dit_attn.testing.NEGATIVE_PROMPT` (one batch-2 forward per step, rows ``[cond, uncond]``)."""
    kw: dict[str, Any] = dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=steps, output_type="np",
        generator=torch.Generator().manual_seed(seed), max_sequence_length=MAX_SEQUENCE_LENGTH,
        guidance_scale=4.0 if guidance else 0.0,
    )
    if guidance:
        kw["negative_prompt"] = NEGATIVE_PROMPT
    return kw
