"""Tiny offline FLUX.2 [klein] pipeline (``Flux2KleinPipeline`` + ``Flux2Transformer2DModel``) for tests.

FLUX.2 [klein] encodes prompts with a Qwen3 causal LM (``Flux2Pipeline`` needs a Mistral3 vision-language model and
a processor, much harder to build offline), so this plug-in builds a 3-layer ``Qwen3ForCausalLM`` (hidden 16) and a
word-level tokenizer that knows Qwen's chat tokens and carries a minimal Qwen3 chat template. The pipeline stacks
the hidden states of layers ``TEXT_ENCODER_OUT_LAYERS`` (all three here; stock uses (9, 18, 27) of Qwen3-4B/8B) into
``joint_attention_dim = 3 * 16 = 48`` features per token.

Text the encoder sees for a prompt (``apply_chat_template(..., add_generation_prompt=True, enable_thinking=False)``,
then padded with ``<|endoftext|>`` to ``max_sequence_length``; the transformer attends to all of it, padding included,
without a mask)::

    <|im_start|> user <prompt words...> <|im_end|> <|im_start|> assistant <think> </think> <|endoftext|>...

so prompt word ``i`` (0-based, one token per word/punctuation mark) is text token ``2 + i``. With
``dit_attn.testing.PROMPT`` (7 words) the 32 text tokens are 14 template/prompt tokens + 18 padding tokens.

Attention per transformer forward: double-stream blocks attend jointly over [text (32), image (6 x 8 = 48)] = 80
tokens; single-stream blocks get the same 80 tokens already concatenated. Classifier-free guidance
(``guidance_scale > 1``, model not distilled) runs a second forward per step on the empty prompt ``""`` (Klein has no
``negative_prompt`` argument) under ``transformer.cache_context("uncond")``; the conditional forward runs under
``cache_context("cond")``.
"""

from __future__ import annotations

from typing import Any

import torch

from dit_attn.testing import _SPECIALS, HEIGHT, LATENT_CHANNELS, PROMPT, VOCAB, VOCAB_SIZE, WIDTH
from dit_attn.testing.factory import flow_scheduler, seeded, word_level_tokenizer

PIPELINE_CLASS = "Flux2KleinPipeline"
TRANSFORMER_CLASS = "Flux2Transformer2DModel"

#: Qwen's chat tokens, appended after the shared vocabulary (the Qwen pad token ``<|endoftext|>`` is already there).
QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
QWEN_VOCAB_SIZE = VOCAB_SIZE + len(QWEN_SPECIALS)
QWEN_HIDDEN = 16
TEXT_ENCODER_OUT_LAYERS = (1, 2, 3)  # indices into output.hidden_states (0 = embeddings) of the 3-layer Qwen3
MAX_SEQUENCE_LENGTH = 32

#: Minimal Qwen3 chat template: the same text as Qwen3's for user messages with ``add_generation_prompt=True``.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def qwen_tokenizer(model_max_length: int | None = None):
    """Word-level stand-in for ``Qwen2TokenizerFast``: no BOS/EOS added, pads with ``<|endoftext|>`` on the right."""
    vocab = {**VOCAB, **{t: VOCAB_SIZE + i for i, t in enumerate(QWEN_SPECIALS)}}
    return word_level_tokenizer(vocab, list(_SPECIALS) + list(QWEN_SPECIALS), model_max_length=model_max_length,
                                eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
                                chat_template=QWEN3_CHAT_TEMPLATE)


def _qwen3(seed: int, name: str = "text_encoder"):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=QWEN_VOCAB_SIZE, hidden_size=QWEN_HIDDEN, intermediate_size=2 * QWEN_HIDDEN,
        num_hidden_layers=len(TEXT_ENCODER_OUT_LAYERS), num_attention_heads=2, num_key_value_heads=1,
        head_dim=QWEN_HIDDEN // 2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
        pad_token_id=VOCAB["<|endoftext|>"], eos_token_id=VOCAB_SIZE + QWEN_SPECIALS.index("<|im_end|>"),
        bos_token_id=None,
    )
    return seeded(seed, name, lambda: Qwen3ForCausalLM(cfg))


def _vae_flux2(seed: int):
    from diffusers import AutoencoderKLFlux2

    def make():
        vae = AutoencoderKLFlux2(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
            latent_channels=LATENT_CHANNELS, norm_num_groups=4, sample_size=HEIGHT, use_quant_conv=False,
            use_post_quant_conv=False, patch_size=(2, 2),
        )
        # Non-trivial latent batch-norm statistics, so the pipeline's (de)normalisation is exercised.
        n = vae.bn.running_mean.numel()
        with torch.no_grad():
            vae.bn.running_mean.copy_(torch.linspace(-0.2, 0.2, n))
            vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, n))
        return vae

    return seeded(seed, "vae", make)


def transformer_config() -> dict[str, Any]:
    return dict(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, out_channels=None, num_layers=2, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=len(TEXT_ENCODER_OUT_LAYERS) * QWEN_HIDDEN,
        timestep_guidance_channels=32, mlp_ratio=2.0, axes_dims_rope=(4, 4, 4, 4), rope_theta=2000, eps=1e-6,
        guidance_embeds=False,  # Klein base: no distilled guidance embedding (the pipeline passes guidance=None)
    )


def components(seed: int) -> dict[str, Any]:
    return dict(
        scheduler=flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                  base_image_seq_len=256, max_image_seq_len=4096),
        vae=_vae_flux2(seed),
        text_encoder=_qwen3(seed),
        tokenizer=qwen_tokenizer(),
        is_distilled=False,
    )


def call_kwargs(steps: int = 2, seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    """``guidance=True``: ``guidance_scale=4.0`` (true CFG against the empty prompt, 2 forwards per step)."""
    return dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=steps, output_type="np",
        generator=torch.Generator().manual_seed(seed), guidance_scale=4.0 if guidance else 1.0,
        max_sequence_length=MAX_SEQUENCE_LENGTH, text_encoder_out_layers=TEXT_ENCODER_OUT_LAYERS,
    )
