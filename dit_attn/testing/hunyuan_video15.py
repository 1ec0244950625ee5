"""Tiny offline ``HunyuanVideo15Pipeline`` (HunyuanVideo 1.5 text-to-video) for :func:`dit_attn.testing.tiny_pipeline`.

Components (all float32, random weights that are a function of ``seed``):

* ``transformer``: ``HunyuanVideo15Transformer3DModel``, 2 double-stream blocks, 2 heads of dim 16 (hidden 32), one
  token-refiner block, RoPE axes (4, 6, 6), patch 2x2 (HunyuanVideo 1.5 itself patches 1x1 on a 16x VAE; here the
  VAE compresses 4x like every tiny VAE of this package, so the token grid is the usual 3 x 6 x 8 = 144).
* ``vae``: ``AutoencoderKLHunyuanVideo15`` (4x spatial, 4x temporal, 4 latent channels, 8 channels wide).
* ``text_encoder``: ``Qwen2_5_VLTextModel`` (3 layers, hidden 32, GQA 2 query / 1 key-value head, M-RoPE sections
  (2, 3, 3)); the pipeline reads its third-to-last hidden state.
* ``tokenizer``: a word-level ``PreTrainedTokenizerFast`` over :data:`dit_attn.testing.VOCAB` plus the Qwen chat
  tokens ``<|im_start|>`` / ``<|im_end|>`` and a filler token (see below), padding with ``<|endoftext|>`` like
  Qwen2, with a Qwen-style chat template.
* ``text_encoder_2``: a tiny ``T5EncoderModel`` standing in for the Glyph-ByT5 encoder (hidden 32).
* ``tokenizer_2``: the real ``transformers.ByT5Tokenizer`` (byte-level: it needs no vocabulary file, so it is exact
  and offline). The pipeline only runs ByT5 on text in double quotes; :data:`PROMPT` and :data:`NEGATIVE_PROMPT`
  quote nothing, so ByT5 contributes 256 all-padding (zeroed, masked) tokens, as in stock runs of such prompts.
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler(shift=5.0)``.
* ``guider``: ``ClassifierFreeGuidance(guidance_scale=6.0)``.

Chat template and crop. The pipeline formats ``[system, user]`` messages with ``apply_chat_template`` (padding to
``1000 + 108`` tokens) and crops a hard-coded ``crop_start = 108`` template tokens: Qwen2.5-VL's BPE length of
``<|im_start|>system\\n{system message}<|im_end|>\\n<|im_start|>user\\n``. The word-level tokenizer splits that
prefix into fewer tokens (95 with the stock system message), so the tiny chat template appends
``<|template_fill|>`` tokens to the system turn, as many as are needed for the prefix to be exactly 108 tokens:
the crop then lands exactly on the first prompt token. What the transformer sees from the MLLM is the prompt
followed by ``<|im_end|> <|im_start|> assistant`` (10 valid tokens for :data:`PROMPT`, 9 for
:data:`NEGATIVE_PROMPT`) and padding up to 1000.

Guidance. This pipeline has no ``guidance_scale`` / ``true_cfg_scale`` call argument: classifier-free guidance is
the ``guider`` component, run as two separate transformer forwards per step (``cache_context("pred_cond")`` then
``"pred_uncond"``). :func:`call_kwargs` with ``guidance=False`` leaves out the negative prompt, but only
``set_guidance(pipe, False)`` (which swaps in a disabled guider) makes the pipeline run one forward per step.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from . import _SPECIALS, HEIGHT, LATENT_CHANNELS, NEGATIVE_PROMPT, NUM_FRAMES, PROMPT, VOCAB, VOCAB_SIZE, WIDTH
from .factory import flow_scheduler, seeded, word_level_tokenizer

PIPELINE_CLASS = "HunyuanVideo15Pipeline"
TRANSFORMER_CLASS = "HunyuanVideo15Transformer3DModel"

#: ``ClassifierFreeGuidance.guidance_scale`` of the tiny pipeline (HunyuanVideo 1.5's t2v default).
GUIDANCE_SCALE = 6.0

_QWEN_HIDDEN = 32  # text_embed_dim
_BYT5_HIDDEN = 32  # text_embed_2_dim
_IMAGE_EMBED_DIM = 16  # image_embed_dim (the pipeline feeds 729 zero "SigLIP" tokens of this width for t2v)

# Qwen2 chat tokens added to VOCAB (ids VOCAB_SIZE, VOCAB_SIZE + 1, VOCAB_SIZE + 2).
_IM_START, _IM_END, _FILL = "<|im_start|>", "<|im_end|>", "<|template_fill|>"
_QWEN_EXTRA = (_IM_START, _IM_END, _FILL)
_QWEN_PAD = "<|endoftext|>"  # Qwen2's pad token; already in VOCAB (CLIP's end token)


def transformer_config() -> dict[str, Any]:
    """Constructor kwargs of the tiny ``HunyuanVideo15Transformer3DModel`` (a fresh dict)."""
    return dict(
        in_channels=2 * LATENT_CHANNELS + 1,  # noisy latents + condition latents (zeros for t2v) + mask channel
        out_channels=LATENT_CHANNELS, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        text_embed_dim=_QWEN_HIDDEN, text_embed_2_dim=_BYT5_HIDDEN, image_embed_dim=_IMAGE_EMBED_DIM,
        rope_theta=256.0, rope_axes_dim=(4, 6, 6), target_size=HEIGHT, task_type="t2v", use_meanflow=False,
    )


def _pipeline_template_defaults() -> tuple[str, int]:
    """(system message, crop_start) the stock pipeline uses for its MLLM prompt."""
    from diffusers import HunyuanVideo15Pipeline

    params = inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters
    return params["system_message"].default, params["crop_start"].default


def _chat_template(fill: int) -> str:
    return (
        "{%- for message in messages -%}"
        "{{ '" + _IM_START + "' + message['role'] + '\\n' + message['content'] }}"
        "{%- if message['role'] == 'system' -%}{{ '" + _FILL * fill + "' }}{%- endif -%}"
        "{{ '" + _IM_END + "\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '" + _IM_START + "assistant\\n' }}{%- endif -%}"
    )


def qwen_tokenizer():
    """Word-level stand-in for ``Qwen2Tokenizer`` with a chat template whose prefix is exactly ``crop_start`` long."""
    vocab = {**VOCAB, **{t: len(VOCAB) + i for i, t in enumerate(_QWEN_EXTRA)}}
    fast = word_level_tokenizer(vocab, _SPECIALS + _QWEN_EXTRA, eos_token=_IM_END, pad_token=_QWEN_PAD,
                                unk_token="<unk>")
    system_message, crop_start = _pipeline_template_defaults()
    # Template prefix without filler: <|im_start|> system {message} <|im_end|> <|im_start|> user
    prefix = len(fast(system_message, add_special_tokens=False).input_ids) + 5
    if prefix > crop_start:
        raise RuntimeError(f"the tiny tokenizer's template prefix ({prefix}) exceeds crop_start={crop_start}")
    fast.chat_template = _chat_template(crop_start - prefix)
    return fast


def set_guidance(pipe, guidance: bool) -> None:
    """Turn the pipeline's classifier-free guidance on or off (a fresh ``guider`` with ``enabled=guidance``)."""
    pipe.register_modules(guider=pipe.guider.new(enabled=bool(guidance)))


def components(seed: int) -> dict[str, Any]:
    """Every component of the tiny ``HunyuanVideo15Pipeline`` except ``transformer``."""
    from diffusers import AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    tokenizer = qwen_tokenizer()
    qwen_cfg = Qwen2_5_VLTextConfig(
        vocab_size=VOCAB_SIZE + len(_QWEN_EXTRA), hidden_size=_QWEN_HIDDEN, intermediate_size=2 * _QWEN_HIDDEN,
        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        rms_norm_eps=1e-6, attention_dropout=0.0, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    tokenizer_2 = ByT5Tokenizer()
    byt5_cfg = T5Config(
        vocab_size=len(tokenizer_2), d_model=_BYT5_HIDDEN, d_kv=8, d_ff=2 * _BYT5_HIDDEN, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id,
        is_encoder_decoder=True, tie_word_embeddings=False,
    )
    return dict(
        text_encoder=seeded(seed, "text_encoder", lambda: Qwen2_5_VLTextModel(qwen_cfg)),
        tokenizer=tokenizer,
        text_encoder_2=seeded(seed, "text_encoder_2", lambda: T5EncoderModel(byt5_cfg)),
        tokenizer_2=tokenizer_2,
        vae=seeded(seed, "vae", lambda: AutoencoderKLHunyuanVideo15(
            in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8),
            layers_per_block=1, spatial_compression_ratio=4, temporal_compression_ratio=4, scaling_factor=1.03682,
        )),
        scheduler=flow_scheduler(shift=5.0),
        guider=ClassifierFreeGuidance(guidance_scale=GUIDANCE_SCALE),
    )


def call_kwargs(steps: int, seed: int, guidance: bool) -> dict[str, Any]:
    """Keyword arguments for ``pipe(**...)``. CFG itself is the ``guider`` component (see :func:`set_guidance`)."""
    kw: dict[str, Any] = dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, num_inference_steps=steps,
        output_type="np", generator=torch.Generator().manual_seed(seed),
    )
    if guidance:
        kw["negative_prompt"] = NEGATIVE_PROMPT
    return kw
