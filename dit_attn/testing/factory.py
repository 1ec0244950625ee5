"""Building blocks of small offline models: seeded construction, word-level tokenizers, the common text encoders,
image VAE and flow-matching scheduler.

Two kinds of small model are built from these: the random-weight test pipelines of :mod:`dit_attn.testing` and
the trainable ShapesWorld models (``dit_attn.pipelines.shapes.models``). They differ in sizes and vocabularies,
never in how a component is seeded or how a tokenizer or encoder config is laid out, so those live here once.
This module imports nothing from the rest of dit_attn (ShapesWorld depends on it, not the other way round).

Example::

    >>> from dit_attn.testing.factory import component_seed, seeded, word_level_tokenizer
    >>> component_seed(0, "vae") == component_seed(0, "vae") != component_seed(0, "transformer")
    True
    >>> vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "red": 3, "circle": 4}
    >>> tok = word_level_tokenizer(vocab, ("<pad>", "</s>", "<unk>"), template=("$A </s>", "$A </s> $B </s>"),
    ...                            eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    >>> tok("A red square").input_ids  # lower-cased; unknown words are <unk>; </s> appended
    [2, 3, 2, 1]
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch

T = TypeVar("T")


def component_seed(seed: int, name: str) -> int:
    """The ``torch.manual_seed`` value of component ``name`` of a model built with ``seed``: each component gets
    its own stream, so adding or resizing one component leaves the others' weights unchanged."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def seeded(seed: int, name: str, build: Callable[[], T]) -> T:
    """``build()`` under :func:`component_seed` ``(seed, name)``, leaving the caller's global RNG untouched; a
    module comes back in eval mode (constructors leave training mode on; ``from_pretrained`` returns eval mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(component_seed(seed, name))
        module = build()
    if isinstance(module, torch.nn.Module):
        module.eval()
    return module


def word_level_tokenizer(vocab: dict[str, int], special_tokens: Sequence[str], *,
                         template: Optional[tuple[str, str]] = None, plain_tokens: Sequence[str] = (),
                         padding_side: str = "right", model_max_length: Optional[int] = None, **token_names: Any):
    """A word-level ``PreTrainedTokenizerFast`` over ``vocab``: text is lower-cased and split on whitespace and
    punctuation, unknown words map to ``<unk>``.

    ``special_tokens`` are matched whole before splitting; ``template`` is the ``(single, pair)`` post-processing
    of ``tokenizers.processors.TemplateProcessing`` (e.g. ``("<|startoftext|> $A <|endoftext|>", ...)``), its
    special tokens' ids taken from ``vocab``; ``plain_tokens`` are added tokens that are not special (kept when
    decoding: a newline, which the whitespace splitter would drop). ``token_names`` go to the fast tokenizer
    (``eos_token=``, ``pad_token=``, ``chat_template=``, ...).
    """
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(dict(vocab), unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(special_tokens))
    if plain_tokens:  # added tokens are split off before pre-tokenization, so they survive the Whitespace splitter
        tok.add_tokens([AddedToken(t, normalized=False) for t in plain_tokens])
    if template is not None:
        single, pair = template
        names = dict.fromkeys(t for t in f"{single} {pair}".split() if not t.startswith("$"))
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in names])
    kwargs: dict[str, Any] = dict(tokenizer_object=tok, padding_side=padding_side, truncation_side="right",
                                  **token_names)
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    return PreTrainedTokenizerFast(**kwargs)


def clip_text_encoder(seed: int, name: str, *, vocab_size: int, hidden: int, with_projection: bool,
                      max_positions: int, bos_id: int, eos_id: int, projection_dim: Optional[int] = None):
    """A 2-layer, 2-head CLIP text encoder (``CLIPTextModelWithProjection`` when ``with_projection``); it pads
    with its end-of-text token, as CLIP does."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=max_positions, projection_dim=projection_dim or hidden,
        hidden_act="gelu", layer_norm_eps=1e-5, attention_dropout=0.0, dropout=0.0,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return seeded(seed, name, lambda: cls(cfg))


def t5_encoder(seed: int, name: str, *, vocab_size: int, d_model: int, pad_id: int, eos_id: int,
               umt5: bool = False, relative_buckets: int = 8):
    """A 2-layer, 4-head T5 (or UMT5) encoder with gated-GELU feed-forward of width ``2 * d_model``."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    common = dict(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=relative_buckets, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id,
        is_encoder_decoder=True, tie_word_embeddings=False,
    )
    if umt5:
        return seeded(seed, name, lambda: UMT5EncoderModel(UMT5Config(**common)))
    return seeded(seed, name, lambda: T5EncoderModel(T5Config(**common)))


def vae_kl(seed: int, *, block_channels: Sequence[int], norm_groups: int, latent_channels: int, sample_size: int,
           scaling_factor: float, shift_factor: float, mid_block_attention: bool = True):
    """An ``AutoencoderKL`` with one resnet per level and ``len(block_channels)`` levels (4x downsampling for
    three), no quant convolutions."""
    from diffusers import AutoencoderKL

    levels = len(block_channels)
    return seeded(seed, "vae", lambda: AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(block_channels), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=norm_groups, sample_size=sample_size,
        scaling_factor=scaling_factor, shift_factor=shift_factor, mid_block_add_attention=mid_block_attention,
        use_quant_conv=False, use_post_quant_conv=False,
    ))


def flow_scheduler(**config: Any):
    """``FlowMatchEulerDiscreteScheduler`` over 1000 training timesteps; ``config`` sets the shift and the rest."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)


__all__ = ["component_seed", "seeded", "word_level_tokenizer", "clip_text_encoder", "t5_encoder", "vae_kl",
           "flow_scheduler"]
