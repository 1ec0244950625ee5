"""Builders for the ShapesWorld models: tiny diffusers pipelines in the real SD3 / FLUX / Wan architectures.

Every component is a stock diffusers / transformers class built from a small config, so the trained folders load
with ``DiffusionPipeline.from_pretrained(path)`` and every attention-control code path of the real families runs
on them:

=====  ===========================  ==========================================  ===================================
kind   pipeline                     transformer                                 VAE / text encoders
=====  ===========================  ==========================================  ===================================
t2i    ``StableDiffusion3Pipeline``  ``SD3Transformer2DModel``, 4 joint blocks,   ``AutoencoderKL`` (4x, 4 channels);
                                    hidden 128 (4 heads x 32), patch 2           2 x CLIP (hidden 32) + T5 (64)
flux   ``FluxPipeline``             ``FluxTransformer2DModel``, 2 double + 4     ``AutoencoderKL`` (4x, 4 channels);
                                    single blocks, hidden 128, 2x2 packing       CLIP (32) + T5 (64)
t2v    ``WanPipeline``              ``WanTransformer3DModel``, 4 blocks,         ``AutoencoderKLWan`` (4x space,
                                    hidden 128, patch (1, 2, 2)                  4x time, frame-wise); UMT5 (64)
=====  ===========================  ==========================================  ===================================

Images are 64 x 64 (16 x 16 x 4 latents, 8 x 8 = 64 image tokens); videos are 9 frames of 64 x 64 (3 latent
frames coding frames 0, 4 and 8, see :func:`make_framewise`; 192 video tokens). Tokenizers are word-level
(``tokenizers`` WordLevel) over the ShapesWorld vocabulary (:data:`VOCAB`); unknown words map to ``<unk>``.

Example::

    >>> from dit_attn.pipelines.shapes.models import build_pipeline
    >>> pipe = build_pipeline("t2i", seed=0)      # random init, as training starts
    >>> type(pipe).__name__
    'StableDiffusion3Pipeline'
"""

from __future__ import annotations

from typing import Any

import torch

from dit_attn.testing.factory import clip_text_encoder, flow_scheduler, seeded, t5_encoder, word_level_tokenizer
from dit_attn.testing.factory import vae_kl as tiny_vae_kl

from .geometry import SHAPES, SUBJECTS
from .world import BACKGROUNDS, COLOURS, DIRECTIONS, POSITIONS, SIZES

KINDS = ("t2i", "t2v", "flux")
PIPELINE_CLASSES = {"t2i": "StableDiffusion3Pipeline", "flux": "FluxPipeline", "t2v": "WanPipeline"}

RESOLUTION = 64
NUM_FRAMES = 9
LATENT_CHANNELS = 4
CLIP_MAX_LENGTH = 28  # longest ShapesWorld caption: 23 words + 2 specials
T5_MAX_LENGTH = 28

# ------------------------------------------------------------------------------------------------------------
# Vocabulary and tokenizers
# ------------------------------------------------------------------------------------------------------------
_SPECIALS = ("<pad>", "</s>", "<unk>", "<|startoftext|>", "<|endoftext|>")
PAD_ID, EOS_ID, UNK_ID, CLIP_BOS_ID, CLIP_EOS_ID = range(5)
_FUNCTION_WORDS = ("a", "an", "the", "and", "on", "in", "at", "to", "of", "above", "below", "left", "right", "top",
                   "bottom", "center", "middle", "moving", "up", "down", "with", "is", "next", "shape", "shapes",
                   "background", "grey", "light", "dark", "white")
_PUNCT = (",", ".", "-", ":", ";", "!", "?", "'", '"', "(", ")")


def _vocab() -> dict[str, int]:
    words: list[str] = list(_SPECIALS)
    pool = (list(COLOURS) + list(SHAPES) + list(SUBJECTS) + list(SIZES) + list(POSITIONS) + list(DIRECTIONS)
            + [w for b in BACKGROUNDS for w in b.split()] + list(_FUNCTION_WORDS) + list(_PUNCT))
    for w in pool:
        if w not in words:
            words.append(w)
    return {w: i for i, w in enumerate(words)}


#: word -> id of every ShapesWorld tokenizer (one vocabulary for all text encoders).
VOCAB: dict[str, int] = _vocab()
VOCAB_SIZE = len(VOCAB)


def shapes_tokenizer(kind: str, model_max_length: int):
    """A word-level ``PreTrainedTokenizerFast`` over :data:`VOCAB`: ``kind`` is ``"clip"`` or ``"t5"``.

    ``"clip"`` wraps in ``<|startoftext|> ... <|endoftext|>`` and pads with ``<|endoftext|>``; ``"t5"`` appends
    ``</s>`` and pads with ``<pad>``. Text is lower-cased and split on whitespace and punctuation.
    """
    if kind == "clip":
        template = ("<|startoftext|> $A <|endoftext|>", "<|startoftext|> $A <|endoftext|> $B <|endoftext|>")
        names = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    elif kind == "t5":
        template, names = ("$A </s>", "$A </s> $B </s>"), dict(eos_token="</s>", pad_token="<pad>")
    else:
        raise ValueError(f"tokenizer kind must be 'clip' or 't5', got {kind!r}")
    return word_level_tokenizer(VOCAB, _SPECIALS, template=template, model_max_length=model_max_length,
                                unk_token="<unk>", **names)


# ------------------------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------------------------
def _clip(seed: int, name: str, hidden: int, with_projection: bool):
    return clip_text_encoder(seed, name, vocab_size=VOCAB_SIZE, hidden=hidden, with_projection=with_projection,
                             max_positions=CLIP_MAX_LENGTH, bos_id=CLIP_BOS_ID, eos_id=CLIP_EOS_ID)


def _t5(seed: int, name: str, d_model: int, umt5: bool = False):
    return t5_encoder(seed, name, vocab_size=VOCAB_SIZE, d_model=d_model, pad_id=PAD_ID, eos_id=EOS_ID, umt5=umt5,
                      relative_buckets=16)


def vae_kl(seed: int = 0):
    """The image VAE: ``AutoencoderKL``, 3 levels (4x downsampling), 4 latent channels, no mid-block attention."""
    return tiny_vae_kl(seed, block_channels=(32, 64, 64), norm_groups=16, latent_channels=LATENT_CHANNELS,
                       sample_size=RESOLUTION, scaling_factor=1.0, shift_factor=0.0, mid_block_attention=False)


def vae_wan(seed: int = 0):
    """The video VAE: ``AutoencoderKLWan`` (causal 3D), 4x spatial and 4x temporal compression, 4 channels,
    initialised *frame-wise* (:func:`make_framewise`) so that it can be trained on still images first."""
    from diffusers import AutoencoderKLWan

    return seeded(seed, "vae", lambda: make_framewise(AutoencoderKLWan(
        base_dim=16, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[True, True], latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS, scale_factor_temporal=4, scale_factor_spatial=4)))


def _causal_convs(vae):
    """``(time_convs, frame_convs)`` of an ``AutoencoderKLWan``: the temporal down/upsampling convolutions, and
    every other causal 3D convolution with taps on earlier frames."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    time_convs = [m.time_conv for m in vae.modules() if isinstance(m, WanResample) and hasattr(m, "time_conv")]
    frame_convs = [m for m in vae.modules() if isinstance(m, WanCausalConv3d) and m.weight.shape[2] > 1
                   and not any(m is t for t in time_convs)]
    return time_convs, frame_convs


@torch.no_grad()
def make_framewise(vae):
    """Make an ``AutoencoderKLWan`` code video frame by frame: every causal 3D convolution keeps only its tap on
    the current frame (the taps on earlier frames are zeroed), the encoder's temporal downsampling keeps the last
    frame of each pair and the decoder's temporal upsampling repeats each frame. The VAE is then an image
    autoencoder applied to frames 0, 4, 8, ... (a 9-frame clip gives 3 latent frames, decoded as frame 0 and two
    runs of 4 equal frames), so it trains on still images at image-VAE speed: with single-frame inputs the taps on
    earlier frames only ever see the causal zero padding, get zero gradients and stay zero.

    Why: trained from a random init on clips, this VAE did not learn to reconstruct objects at all within an hour
    on a CPU (docs/shapesworld.md); the image path learns in minutes.

    Example::

        >>> from dit_attn.pipelines.shapes.models import is_framewise, make_framewise, vae_wan
        >>> vae = vae_wan(seed=0)          # already frame-wise; make_framewise is idempotent
        >>> is_framewise(make_framewise(vae))
        True
    """
    time_convs, frame_convs = _causal_convs(vae)
    for conv in time_convs:
        channels = conv.in_channels
        eye = torch.eye(channels, dtype=conv.weight.dtype)
        conv.weight.zero_()
        conv.bias.zero_()
        for block in range(conv.out_channels // channels):  # upsampling emits 2 frames: both copy the input
            conv.weight[block * channels:(block + 1) * channels, :, -1, 0, 0] = eye
    for conv in frame_convs:
        conv.weight[:, :, :-1] = 0.0
    return vae


def is_framewise(vae) -> bool:
    """Whether every causal 3D convolution of ``vae`` still has zero taps on earlier frames (see
    :func:`make_framewise`; a VAE trained on clips afterwards is no longer frame-wise)."""
    return all(not bool(conv.weight[:, :, :-1].any()) for conv in _causal_convs(vae)[1])


def with_temporal_patch(transformer, frames: int):
    """A copy of a ``WanTransformer3DModel`` whose patches span ``frames`` latent frames (``patch_size`` becomes
    ``(frames, p_h, p_w)``), keeping every block's weights.

    Why: with one latent frame per token, a Wan transformer sees time only through rotary embeddings, which are
    relative; our frame-wise VAE adds no first-frame signature, so the model cannot tell a clip from the clip played
    backwards and learns the axis of a motion but not its sign (``docs/shapesworld.md``). A patch spanning the clip's
    frames gives each frame its own input and output weights, so "moving right" and "moving left" become different
    per-token patterns, as spatial relations are for the image models.

    The new patch embedding averages the frames through the old one (a still clip embeds exactly as before) and the
    new output projection emits the old per-frame output for every frame, so training starts from the old model
    applied to the clip's mean frame.

    Example::

        >>> import torch
        >>> from diffusers import WanTransformer3DModel
        >>> old = WanTransformer3DModel(**transformer_config("t2v") | {"patch_size": (1, 2, 2)})
        >>> new = with_temporal_patch(old, 3)
        >>> tuple(new.config.patch_size), new.patch_embedding.weight.shape[2]
        ((3, 2, 2), 3)
    """
    import diffusers

    p_t, p_h, p_w = transformer.config.patch_size
    if p_t != 1:
        raise ValueError(f"with_temporal_patch converts a transformer with one frame per patch, got patch_size "
                         f"{tuple(transformer.config.patch_size)}")
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    config["patch_size"] = (frames, p_h, p_w)
    new = diffusers.WanTransformer3DModel(**config)
    state = dict(transformer.state_dict())
    state["patch_embedding.weight"] = transformer.patch_embedding.weight.repeat(1, 1, frames, 1, 1) / frames
    # proj_out rows are laid out (p_t, p_h, p_w, channels): one copy of the old rows per frame
    state["proj_out.weight"] = transformer.proj_out.weight.repeat(frames, 1)
    state["proj_out.bias"] = transformer.proj_out.bias.repeat(frames)
    new.load_state_dict(state, strict=True)
    return new.to(transformer.device)


def transformer_config(kind: str) -> dict[str, Any]:
    """Constructor kwargs of the ShapesWorld transformer of ``kind`` (a fresh dict)."""
    if kind == "t2i":
        return dict(sample_size=RESOLUTION // 4, patch_size=2, in_channels=LATENT_CHANNELS,
                    out_channels=LATENT_CHANNELS, num_layers=4, attention_head_dim=32, num_attention_heads=4,
                    joint_attention_dim=64, caption_projection_dim=128, pooled_projection_dim=64,
                    pos_embed_max_size=RESOLUTION // 8, qk_norm="rms_norm")
    if kind == "flux":
        return dict(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=2, num_single_layers=4,
                    attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64,
                    pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(8, 12, 12))
    if kind == "t2v":
        return dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32,
                    in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, text_dim=64, freq_dim=64,
                    ffn_dim=256, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                    rope_max_seq_len=64)
    raise ValueError(f"unknown ShapesWorld kind {kind!r}; expected one of {KINDS}")


def _scheduler():
    # Shift 1 (no shift): at 64 tokens the image is small; training samples t logit-normally around 0.5.
    return flow_scheduler(shift=1.0)


def build_pipeline(kind: str, seed: int = 0, vae=None):
    """A freshly initialised ShapesWorld pipeline of ``kind`` (``"t2i"``, ``"flux"`` or ``"t2v"``), float32 CPU.

    ``vae`` replaces the freshly initialised VAE (e.g. one trained already).
    """
    import diffusers

    cfg = transformer_config(kind)
    if kind == "t2i":
        transformer = seeded(seed, "transformer", lambda: diffusers.SD3Transformer2DModel(**cfg))
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=_scheduler(), vae=vae if vae is not None else vae_kl(seed),
            text_encoder=_clip(seed, "text_encoder", 32, True), tokenizer=shapes_tokenizer("clip", CLIP_MAX_LENGTH),
            text_encoder_2=_clip(seed, "text_encoder_2", 32, True),
            tokenizer_2=shapes_tokenizer("clip", CLIP_MAX_LENGTH),
            text_encoder_3=_t5(seed, "text_encoder_3", 64), tokenizer_3=shapes_tokenizer("t5", T5_MAX_LENGTH),
            image_encoder=None, feature_extractor=None)
    elif kind == "flux":
        transformer = seeded(seed, "transformer", lambda: diffusers.FluxTransformer2DModel(**cfg))
        pipe = diffusers.FluxPipeline(
            transformer=transformer, scheduler=_scheduler(), vae=vae if vae is not None else vae_kl(seed),
            text_encoder=_clip(seed, "text_encoder", 32, False), tokenizer=shapes_tokenizer("clip", CLIP_MAX_LENGTH),
            text_encoder_2=_t5(seed, "text_encoder_2", 64), tokenizer_2=shapes_tokenizer("t5", T5_MAX_LENGTH),
            image_encoder=None, feature_extractor=None)
    elif kind == "t2v":
        transformer = seeded(seed, "transformer", lambda: diffusers.WanTransformer3DModel(**cfg))
        pipe = diffusers.WanPipeline(
            transformer=transformer, scheduler=_scheduler(), vae=vae if vae is not None else vae_wan(seed),
            text_encoder=_t5(seed, "text_encoder", 64, umt5=True), tokenizer=shapes_tokenizer("t5", T5_MAX_LENGTH))
    else:
        raise ValueError(f"unknown ShapesWorld kind {kind!r}; expected one of {KINDS}")
    for _, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def text_encoder_names(kind: str) -> tuple[str, ...]:
    """Component names of the text encoders of ``kind`` (trained jointly with the transformer)."""
    return {"t2i": ("text_encoder", "text_encoder_2", "text_encoder_3"), "flux": ("text_encoder", "text_encoder_2"),
            "t2v": ("text_encoder",)}[kind]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["KINDS", "VOCAB", "VOCAB_SIZE", "RESOLUTION", "NUM_FRAMES", "CLIP_MAX_LENGTH", "T5_MAX_LENGTH",
           "shapes_tokenizer", "vae_kl", "vae_wan", "make_framewise", "is_framewise", "transformer_config",
           "build_pipeline", "text_encoder_names", "count_parameters"]
