"""Tiny random-weight ``QwenImagePipeline`` (``QwenImageTransformer2DModel``), built fully offline.

A plug-in of :mod:`dit_attn.testing` (family ``"qwenimage"``): ``tiny_pipeline("qwenimage")`` builds the pipeline
from the components here and the transformer from :func:`transformer_config`.

Components: a tiny ``Qwen2_5_VLForConditionalGeneration`` text encoder (2 text layers, hidden 32, M-RoPE; a 2-block
vision tower that text-only prompts never run; the pipeline takes ``hidden_states[-1]``), a word-level tokenizer over
:data:`dit_attn.testing.VOCAB` plus Qwen's chat / vision tokens and ``"\\n"`` as a token of its own, a tiny
``AutoencoderKLQwenImage`` (4x spatial compression, 4 latent channels) and a ``FlowMatchEulerDiscreteScheduler``
with Qwen-Image's settings (dynamic exponential shift) but no ``shift_terminal`` (with one step its stretch divides by zero).

Prompt template. ``QwenImagePipeline.__init__`` hard-codes ``prompt_template_encode`` (below, :data:`PROMPT_TEMPLATE`)
and ``prompt_template_encode_start_idx = 34``: the number of tokens of the template prefix (everything before
``{}``) in the real Qwen2 tokenizer, which the pipeline drops from the encoder output. Nothing is overridden on the
pipeline: the tiny tokenizer tokenizes that prefix into exactly 34 tokens as well (Qwen's BPE and our word-level
tokenizer agree here: one token per word, per punctuation mark, per ``<|im_start|>`` / ``<|im_end|>`` and per
``"\\n"``, which is why ``"\\n"`` is an added token: the ``Whitespace`` pre-tokenizer would otherwise drop it; no
BOS/EOS is added). So the kept text starts exactly at the prompt's first word; as with the real model, the
template's 5-token suffix ``<|im_end|> \\n <|im_start|> assistant \\n`` is kept after the prompt.

Attention sizes per transformer forward with :func:`call_kwargs` (``HEIGHT`` x ``WIDTH`` = 48 x 64 pixels):

* image: 6 x 8 = 48 patch tokens (``img_shapes=[[(1, 6, 8)]]``); text: 7 + 5 = 12 tokens for
  :data:`~dit_attn.testing.PROMPT`, 6 + 5 = 11 for :data:`~dit_attn.testing.NEGATIVE_PROMPT`.
* every block's ``attn`` is joint attention over ``[text, image]``: 60 tokens (cond) / 59 tokens (uncond).
* classifier-free guidance (``true_cfg_scale > 1`` with a negative prompt) runs two batch-1 forwards per step, in
  ``transformer.cache_context("cond")`` then ``("uncond")``. Each prompt is encoded on its own, so a batch-1 call
  never has padded text: the pipeline turns an all-ones mask into ``encoder_hidden_states_mask=None``.
  :func:`padded_call_kwargs` gives a batch-2 call whose text *is* padded (a mask with zeros in both forwards).
"""

from __future__ import annotations

from typing import Any

import torch

from . import HEIGHT, NEGATIVE_PROMPT, PROMPT, VOCAB, WIDTH, _SPECIALS
from .factory import flow_scheduler, seeded, word_level_tokenizer

PIPELINE_CLASS = "QwenImagePipeline"
TRANSFORMER_CLASS = "QwenImageTransformer2DModel"

#: ``QwenImagePipeline``'s (hard-coded) prompt template and the number of template tokens it drops.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATE_DROP_TOKENS = 34
TEMPLATE_SUFFIX_TOKENS = 5  # <|im_end|> \n <|im_start|> assistant \n, kept after the prompt

#: ``max_sequence_length`` of :func:`call_kwargs` (text tokens kept after the template crop; no prompt here is
#: longer, so nothing is truncated). The stock default is 512.
MAX_SEQUENCE_LENGTH = 16

#: Qwen2.5-VL's chat / vision tokens and the newline, appended after :data:`dit_attn.testing.VOCAB`.
QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>")
NEWLINE = "\n"
_VOCAB = {**VOCAB, **{t: len(VOCAB) + i for i, t in enumerate(QWEN_SPECIALS + (NEWLINE,))}}
TEXT_VOCAB_SIZE = len(_VOCAB)
PAD_TOKEN = "<|endoftext|>"  # Qwen2's pad token (also in VOCAB, as CLIP's end-of-text)

_TEXT_HIDDEN = 32  # Qwen2.5-VL text hidden size = the transformer's joint_attention_dim
_LATENT_CHANNELS = 4


def transformer_config() -> dict[str, Any]:
    """Tiny ``QwenImageTransformer2DModel`` kwargs: hidden 32, 2 heads of dim 16 (RoPE axes 4 + 6 + 6: frame,
    height, width), 2 double-stream blocks, 4 latent channels packed 2x2 (``in_channels=16``)."""
    return dict(
        patch_size=2, in_channels=4 * _LATENT_CHANNELS, out_channels=_LATENT_CHANNELS, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=_TEXT_HIDDEN, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )


def tokenizer():
    """Word-level stand-in for Qwen2's tokenizer: no BOS/EOS added, ``"\\n"`` is a token, right padding with
    ``<|endoftext|>``."""
    return word_level_tokenizer(_VOCAB, list(_SPECIALS) + list(QWEN_SPECIALS), plain_tokens=[NEWLINE],
                                eos_token="<|im_end|>", pad_token=PAD_TOKEN, unk_token="<unk>")


def _rope_config() -> dict:
    """Multimodal RoPE of the text model: ``rope_parameters`` in transformers 5, ``rope_scaling`` + ``rope_theta``
    in 4.x (diffusers 0.35.0/0.35.1 need transformers < 4.57)."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
    return dict(rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})


def _text_encoder(seed: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=TEXT_VOCAB_SIZE, hidden_size=_TEXT_HIDDEN, intermediate_size=2 * _TEXT_HIDDEN,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
            rms_norm_eps=1e-6, attention_dropout=0.0, use_sliding_window=False,
            **_rope_config(),
            bos_token_id=None, eos_token_id=_VOCAB["<|im_end|>"], pad_token_id=_VOCAB[PAD_TOKEN],
        ),
        vision_config=dict(
            depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=56, out_hidden_size=_TEXT_HIDDEN, fullatt_block_indexes=[1],
        ),
        image_token_id=_VOCAB["<|image_pad|>"], video_token_id=_VOCAB["<|video_pad|>"],
        vision_start_token_id=_VOCAB["<|vision_start|>"], vision_end_token_id=_VOCAB["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return seeded(seed, "text_encoder", lambda: Qwen2_5_VLForConditionalGeneration(cfg))


def _vae(seed: int):
    from diffusers import AutoencoderKLQwenImage

    # 2 ** len(temperal_downsample) = 4x spatial compression (the pipeline's vae_scale_factor); images are 1 frame.
    return seeded(seed, "vae", lambda: AutoencoderKLQwenImage(
        base_dim=8, z_dim=_LATENT_CHANNELS, dim_mult=[1, 1, 1], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.3, -0.1], latents_std=[1.5, 2.0, 1.2, 2.5],
    ))


def components(seed: int) -> dict[str, Any]:
    """Every ``QwenImagePipeline`` component but the transformer."""
    return dict(
        # Qwen/Qwen-Image's scheduler_config.json (the pipeline passes mu from the image token count).
        scheduler=flow_scheduler(
            shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
            max_image_seq_len=8192, time_shift_type="exponential",
        ),
        vae=_vae(seed),
        text_encoder=_text_encoder(seed),
        tokenizer=tokenizer(),
    )


def call_kwargs(steps: int = 2, seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    """``pipe(**call_kwargs())`` kwargs. ``guidance=True``: ``true_cfg_scale=4`` with
    :data:`~dit_attn.testing.NEGATIVE_PROMPT` (two batch-1 forwards per step, cond then uncond); ``guidance=False``:
    ``true_cfg_scale=1``, one forward per step. Images ``(1, HEIGHT, WIDTH, 3)``."""
    kw: dict[str, Any] = dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=steps, output_type="np",
        generator=torch.Generator().manual_seed(seed), max_sequence_length=MAX_SEQUENCE_LENGTH,
        true_cfg_scale=4.0 if guidance else 1.0,
    )
    if guidance:
        kw["negative_prompt"] = NEGATIVE_PROMPT
    return kw


#: Second prompt of :func:`padded_call_kwargs` (shorter than :data:`~dit_attn.testing.PROMPT`: 4 vs 7 words).
SHORT_PROMPT = "a small green triangle"


def padded_call_kwargs(steps: int = 2, seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    """Like :func:`call_kwargs` but a batch of 2 prompts of different token counts, so the text is right-padded and
    ``encoder_hidden_states_mask`` (bool after the transformer normalises it, ``(2, 12)``) has zeros: prompts
    ``[PROMPT, SHORT_PROMPT]`` (12 and 9 kept tokens) and, with guidance, negative prompts
    ``[NEGATIVE_PROMPT, "blurry"]`` (11 and 6). Images ``(2, HEIGHT, WIDTH, 3)``."""
    kw = call_kwargs(steps=steps, seed=seed, guidance=guidance)
    kw["prompt"] = [PROMPT, SHORT_PROMPT]
    if guidance:
        kw["negative_prompt"] = [NEGATIVE_PROMPT, "blurry"]
    return kw
