"""Tiny random-weight diffusers pipelines, built fully offline, for tests and examples.

``tiny_pipeline(family)`` returns a real diffusers pipeline of the family's class (``StableDiffusion3Pipeline``,
``FluxPipeline``, ``WanPipeline``, ``WanImageToVideoPipeline``, ``HunyuanVideoPipeline``, ``CogVideoXPipeline``)
whose every component is a tiny model constructed here from a config: the transformer (2-3 blocks, 2 heads of
dim 16, hidden size 32), a VAE of the right class (4x spatial / 4x temporal compression, 8 channels), text
encoders of the right classes (2-3 layers, hidden 16-64) and word-level tokenizers (``tokenizers`` WordLevel +
Whitespace over a few hundred common English words, wrapped in ``transformers.PreTrainedTokenizerFast``). Nothing
touches the network or the Hugging Face hub, yet every stock code path runs: prompt encoding and templates,
classifier-free guidance, schedulers, RoPE, joint/dual/cross attention, attention masks, VAE decoding, and
``save_pretrained`` / ``DiffusionPipeline.from_pretrained`` (safetensors) round trips, in well under a second per
call on a CPU. The outputs are noise: only shapes, determinism and equality with stock matter.

Everything is float32 on the CPU; weights are a function of ``seed`` only (each module is built under its own
``torch.manual_seed`` inside ``torch.random.fork_rng``, so the caller's RNG state is left alone). Token grids are
deliberately non-square and video has an odd latent frame count (3 frames x 6 rows x 8 columns), so that axis
mix-ups show in tests.

Attention sizes per transformer forward with :func:`tiny_call_kwargs` (batch 1 unless CFG is batched):

==============  ===================  ==============================================  =============================
family          image/video tokens   text tokens in the attention                    classifier-free guidance
==============  ===================  ==============================================  =============================
sd3             6 x 8 = 48           joint [image, text]: 16 (CLIP, padded) + 32     batched: one forward, batch 2
                                     (T5) = 48, 96 in all; ``attn2`` of block 0:     ([uncond, cond])
                                     48 image tokens only
flux            6 x 8 = 48           joint [text, image]: 32 (T5), 80 in all         true CFG: 2 forwards per step
wan             3 x 6 x 8 = 144      self 144; cross-attention to 32 (UMT5)          2 forwards per step
wan_i2v         3 x 6 x 8 = 144      self 144; cross to 512 (UMT5) and to 17         2 forwards per step
                                     CLIP-vision image tokens
hunyuan_video   3 x 6 x 8 = 144      joint [video, text]: 16 (Llama, masked), 160    true CFG: 2 forwards per step
cogvideox       3 x 6 x 8 = 144      joint [text, video]: 32 (T5), 176 in all        batched: one forward, batch 2
==============  ===================  ==============================================  =============================

On a machine whose CPU cores are shared, PyTorch's intra-op threads can make these tiny calls 10-50x slower
(threads spin waiting for each other); wrap the calls in :func:`cpu_threads` (``with cpu_threads(1): ...``).

Example::

    from dit_attn.testing import tiny_pipeline, tiny_call_kwargs

    pipe = tiny_pipeline("wan", seed=0)
    frames = pipe(**tiny_call_kwargs("wan", steps=2, seed=0)).frames  # (1, 9, 48, 64, 3) float32 in [0, 1]
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from .factory import clip_text_encoder, flow_scheduler, seeded, t5_encoder, vae_kl, word_level_tokenizer

__all__ = [
    "FAMILIES", "ALL_FAMILIES", "PROMPT", "NEGATIVE_PROMPT", "HEIGHT", "WIDTH", "NUM_FRAMES", "VOCAB",
    "tiny_pipeline", "tiny_transformer", "tiny_call_kwargs", "tiny_tokenizer", "transformer_config",
    "hunyuan_prompt_template", "patch_wan_i2v_ftfy", "cpu_threads",
]

#: Families whose tiny pipeline is built in this file.
_CORE_FAMILIES = ("sd3", "flux", "wan", "hunyuan_video", "cogvideox")
#: Families whose tiny pipeline lives in a submodule of this package (family name -> module name). Each module
#: defines ``PIPELINE_CLASS``, ``TRANSFORMER_CLASS``, ``transformer_config()``, ``components(seed)`` (every
#: pipeline component but the transformer) and ``call_kwargs(steps, seed, guidance)``.
_PLUGIN_FAMILIES = {
    "flux2": "flux2", "qwenimage": "qwenimage", "hunyuan_video15": "hunyuan_video15", "ltx": "ltx",
    "chroma": "chroma", "z_image": "z_image", "wan_vace": "wan_vace", "skyreels_v2": "skyreels_v2",
    "cogview4": "cogview4", "lumina2": "lumina2",
}


def _plugin(family: str):
    import importlib

    return importlib.import_module(f"{__name__}.{_PLUGIN_FAMILIES[family]}")


def _supported() -> tuple[str, ...]:
    from dit_attn.families import FAMILIES as SUPPORTED

    return tuple(SUPPORTED)


#: One tiny pipeline per model family dit_attn supports (the names of :data:`dit_attn.families.FAMILIES`).
FAMILIES = _supported()
#: Tiny pipelines of transformers dit_attn does not support (yet): attach must refuse them clearly.
UNSUPPORTED = ("lumina2",)
#: ``FAMILIES`` plus variants that share a transformer class with one of them, plus :data:`UNSUPPORTED`.
ALL_FAMILIES = FAMILIES + ("wan_i2v",) + UNSUPPORTED

PROMPT = "a red circle above a blue square"
NEGATIVE_PROMPT = "blurry, dark, low quality"

# Pixel sizes of tiny_call_kwargs. All tiny VAEs compress 4x spatially (3 resolution levels; 4x in time for video)
# and all transformers patch 2x2, so the token grid is (HEIGHT // 8) x (WIDTH // 8) = 6 x 8 per latent frame.
HEIGHT, WIDTH = 48, 64
NUM_FRAMES = 9  # (9 - 1) // 4 + 1 = 3 latent frames (CogVideoX's VAE needs an odd latent count to give back 9)

CLIP_MAX_LENGTH = 16  # CLIP tokenizers' model_max_length (SD3, FLUX); HunyuanVideo's pipeline asks for 77
T5_MAX_LENGTH = 32  # max_sequence_length passed for T5 / UMT5 text encoders
LLAMA_MAX_LENGTH = 16  # HunyuanVideo's max_sequence_length (tokens kept after the template crop)
WAN_I2V_TEXT_LENGTH = 512  # Wan's I2V attention processor hard-codes a 512-token text context


@contextlib.contextmanager
def cpu_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary and tokenizers
# ----------------------------------------------------------------------------------------------------------------
# Special tokens, with fixed ids shared by every tokenizer (T5 convention for the first three).
_SPECIALS = (
    "<pad>", "</s>", "<unk>",  # 0, 1, 2: T5 / UMT5
    "<|startoftext|>", "<|endoftext|>",  # 3, 4: CLIP
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # 5-9: Llama 3
)
PAD_ID, EOS_ID, UNK_ID, CLIP_BOS_ID, CLIP_EOS_ID, LLAMA_BOS_ID, LLAMA_EOS_ID = 0, 1, 2, 3, 4, 5, 6

_WORDS = """
a an the this that these those some any all each every no one two three four five six seven eight nine ten
many few several both other another more most less least very much
red orange yellow green blue purple violet pink brown black white gray grey gold silver cyan magenta beige teal
navy maroon olive turquoise crimson dark light bright pale colorful colourful transparent shiny glowing
circle square triangle rectangle star heart diamond hexagon pentagon oval cube sphere cone cylinder pyramid
ring line dot point shape shapes circles squares triangles stripe stripes pattern grid
above below under over beside behind near next to on in at of with without from into onto inside outside
between left right top bottom middle center centre front back up down around across along through
and or but not is are was were be been being has have had do does did can will would should could by as for
it its he she they we you i his her their our your my there here then than so if when while where what who
cat cats dog dogs bird birds fish horse cow sheep person people man woman child boy girl face hand hands
car cars bus truck bike bicycle boat ship plane train road street city town house houses building window door
tree trees flower flowers grass forest mountain mountains river lake sea ocean beach sky cloud clouds sun moon
rain snow water fire stone rock sand field garden park table chair cup bottle book ball box lamp clock
big small large tiny huge little tall short long wide narrow thin thick round flat smooth rough soft hard
hot cold warm cool old new young happy sad beautiful ugly clean dirty quiet loud fast slow empty full
walks walking runs running jumps jumping flies flying swims swimming sits sitting stands standing moves moving
rolls rolling spins spinning falls falling rises rising looks looking holds holding plays playing
photo photograph picture image painting drawing render video scene view shot close closeup detailed realistic
high low quality blurry blur sharp noisy noise grainy distorted cartoon anime art style cinematic film
describe detailing following aspects main content theme color colour size texture quantity text spatial
relationships objects actions events behaviors behaviours temporal relationships physical movement changes
background environment lighting atmosphere camera angles movements transitions used system user assistant
morning evening night day time slowly quickly
""".split()
_DIGITS = [str(i) for i in range(10)]
_PUNCT = [".", ",", ":", ";", "!", "?", "-", "'", '"', "(", ")", "/", "&", "{}"]


def _vocab() -> dict[str, int]:
    tokens = list(_SPECIALS)
    for w in _WORDS + _DIGITS + _PUNCT:
        if w not in tokens:
            tokens.append(w)
    return {t: i for i, t in enumerate(tokens)}


#: token -> id, shared by every tiny tokenizer (so one ``vocab_size`` fits every text encoder).
VOCAB: dict[str, int] = _vocab()
VOCAB_SIZE = len(VOCAB)

_TOKENIZER_KINDS = ("t5", "clip", "llama")


def tiny_tokenizer(kind: str, model_max_length: int | None = None):
    """A word-level ``PreTrainedTokenizerFast`` over :data:`VOCAB` (lower-cased, split on whitespace/punctuation).

    ``kind`` picks the special-token conventions of the tokenizer it stands in for:

    * ``"t5"`` (T5 / UMT5): appends ``</s>``; pads with ``<pad>`` (id 0); unknown words are ``<unk>``.
    * ``"clip"``: wraps in ``<|startoftext|>`` ... ``<|endoftext|>`` and pads with ``<|endoftext|>``.
    * ``"llama"`` (Llama 3): prepends ``<|begin_of_text|>``; the chat-header tokens are single tokens; pads with
      ``<|end_of_text|>``.
    """
    if kind not in _TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {_TOKENIZER_KINDS}")
    if kind == "t5":
        template, names = ("$A </s>", "$A </s> $B </s>"), dict(eos_token="</s>", pad_token="<pad>")
    elif kind == "clip":
        template = ("<|startoftext|> $A <|endoftext|>", "<|startoftext|> $A <|endoftext|> $B <|endoftext|>")
        names = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    else:
        template = ("<|begin_of_text|> $A", "<|begin_of_text|> $A $B")
        names = dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|end_of_text|>")
    return word_level_tokenizer(VOCAB, _SPECIALS, template=template, model_max_length=model_max_length,
                                unk_token="<unk>", **names)


# ----------------------------------------------------------------------------------------------------------------
# Text encoders
# ----------------------------------------------------------------------------------------------------------------
def _clip_text(seed, name, hidden, *, with_projection, projection_dim=None, max_positions=CLIP_MAX_LENGTH):
    return clip_text_encoder(seed, name, vocab_size=VOCAB_SIZE, hidden=hidden, with_projection=with_projection,
                             max_positions=max_positions, bos_id=CLIP_BOS_ID, eos_id=CLIP_EOS_ID,
                             projection_dim=projection_dim)


def _t5(seed, name, d_model, *, umt5=False):
    return t5_encoder(seed, name, vocab_size=VOCAB_SIZE, d_model=d_model, pad_id=PAD_ID, eos_id=EOS_ID, umt5=umt5)


def _llama(seed, name, hidden):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2, max_position_embeddings=512,
        rms_norm_eps=1e-5, attention_dropout=0.0, bos_token_id=LLAMA_BOS_ID, eos_token_id=LLAMA_EOS_ID,
        pad_token_id=LLAMA_EOS_ID, tie_word_embeddings=False,
    )
    return seeded(seed, name, lambda: LlamaModel(cfg))


# ----------------------------------------------------------------------------------------------------------------
# VAEs (4x spatial and 4x temporal compression; 4 latent channels; 8 channels everywhere)
# ----------------------------------------------------------------------------------------------------------------
LATENT_CHANNELS = 4


def _vae_kl(seed, scaling_factor, shift_factor):
    return vae_kl(seed, block_channels=(8, 8, 8), norm_groups=4, latent_channels=LATENT_CHANNELS, sample_size=HEIGHT,
                  scaling_factor=scaling_factor, shift_factor=shift_factor)


def _vae_wan(seed):
    from diffusers import AutoencoderKLWan

    return seeded(seed, "vae", lambda: AutoencoderKLWan(
        base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[True, True], latents_mean=[0.1, -0.2, 0.3, -0.1][:LATENT_CHANNELS],
        latents_std=[1.5, 2.0, 1.2, 2.5][:LATENT_CHANNELS], scale_factor_temporal=4, scale_factor_spatial=4,
    ))


def _vae_hunyuan(seed):
    from diffusers import AutoencoderKLHunyuanVideo

    return seeded(seed, "vae", lambda: AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3, up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, scaling_factor=0.476986,
        spatial_compression_ratio=4, temporal_compression_ratio=4, mid_block_add_attention=True,
    ))


def _vae_cogvideox(seed):
    from diffusers import AutoencoderKLCogVideoX

    return seeded(seed, "vae", lambda: AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(8, 8, 8),
        latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4,
        sample_height=HEIGHT, sample_width=WIDTH, scaling_factor=0.7,
    ))


# ----------------------------------------------------------------------------------------------------------------
# Transformers
# ----------------------------------------------------------------------------------------------------------------
# Text-encoder widths each transformer config depends on.
_SD3_CLIP_HIDDEN = (16, 32)  # CLIP-L-like, CLIP-G-like (concatenated: 48 <= T5 width)
_SD3_T5_HIDDEN = 64
_FLUX_CLIP_HIDDEN, _FLUX_T5_HIDDEN = 32, 48
_WAN_T5_HIDDEN = 48
_HUNYUAN_LLAMA_HIDDEN, _HUNYUAN_CLIP_HIDDEN = 48, 32
_COG_T5_HIDDEN = 48
_WAN_I2V_VISION_HIDDEN = 32

_LATENT_H, _LATENT_W = HEIGHT // 4, WIDTH // 4


def transformer_config(family: str) -> dict[str, Any]:
    """The tiny transformer's constructor kwargs for ``family`` (a fresh dict; edit freely)."""
    _check_family(family)
    if family in _PLUGIN_FAMILIES:
        return _plugin(family).transformer_config()
    if family == "sd3":
        return dict(
            sample_size=_LATENT_H, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
            num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=_SD3_T5_HIDDEN,
            caption_projection_dim=32, pooled_projection_dim=sum(_SD3_CLIP_HIDDEN), pos_embed_max_size=16,
            dual_attention_layers=(0,), qk_norm="rms_norm",
        )
    if family == "flux":
        return dict(
            patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=2, num_single_layers=3,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=_FLUX_T5_HIDDEN,
            pooled_projection_dim=_FLUX_CLIP_HIDDEN, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        )
    if family in ("wan", "wan_i2v"):
        cfg = dict(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS, text_dim=_WAN_T5_HIDDEN, freq_dim=32, ffn_dim=64, num_layers=2,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )
        if family == "wan_i2v":
            # Wan 2.1 I2V: noise + (4 mask channels) + encoded condition video; CLIP image tokens in attn2.
            cfg.update(in_channels=2 * LATENT_CHANNELS + 4, image_dim=_WAN_I2V_VISION_HIDDEN, added_kv_proj_dim=32)
        return cfg
    if family == "hunyuan_video":
        return dict(
            in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=2, attention_head_dim=16,
            num_layers=1, num_single_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
            qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=_HUNYUAN_LLAMA_HIDDEN,
            pooled_projection_dim=_HUNYUAN_CLIP_HIDDEN, rope_theta=256.0, rope_axes_dim=(4, 6, 6),
        )
    # cogvideox (CogVideoX-5B style: rotary embeddings, no learned positions)
    return dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        time_embed_dim=32, text_embed_dim=_COG_T5_HIDDEN, num_layers=2, sample_width=_LATENT_W,
        sample_height=_LATENT_H, sample_frames=NUM_FRAMES, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=T5_MAX_LENGTH, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )


_TRANSFORMER_CLASSES = {
    "sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel", "wan": "WanTransformer3DModel",
    "wan_i2v": "WanTransformer3DModel", "hunyuan_video": "HunyuanVideoTransformer3DModel",
    "cogvideox": "CogVideoXTransformer3DModel",
}


def _check_family(family: str) -> None:
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; supported families: {', '.join(ALL_FAMILIES)}")


def tiny_transformer(family: str, seed: int = 0, **config_overrides):
    """The tiny random-weight transformer of ``family`` (the same module ``tiny_pipeline(family, seed)`` holds).

    ``config_overrides`` update :func:`transformer_config` (e.g. ``num_layers=3``).
    """
    import diffusers

    _check_family(family)
    cfg = transformer_config(family)
    cfg.update(config_overrides)
    name = _plugin(family).TRANSFORMER_CLASS if family in _PLUGIN_FAMILIES else _TRANSFORMER_CLASSES[family]
    cls = getattr(diffusers, name)
    return seeded(seed, "transformer", lambda: cls(**cfg))


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------
def _clip_image_processor(**kwargs):
    """``CLIPImageProcessor`` with the PIL backend (the same pixels with or without torchvision installed)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(**kwargs)


def patch_wan_i2v_ftfy() -> bool:
    """Let ``WanImageToVideoPipeline`` encode prompts when ``ftfy`` is not installed; returns whether it patched.

    ``diffusers.pipelines.wan.pipeline_wan_i2v.basic_clean`` calls ``ftfy.fix_text`` unconditionally but imports
    ``ftfy`` only when it is installed (``WanPipeline`` guards the call), so without ``ftfy`` every prompt fails
    with ``NameError``. Where ``ftfy`` is missing we give that module a stand-in whose ``fix_text`` returns the text
    unchanged (what ``ftfy`` does to plain ASCII prompts). Nothing is touched when ``ftfy`` is installed.
    """
    from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_i2v

    # WanPipeline calls ftfy unguarded too before diffusers 0.37
    return patch_ftfy(pipeline_wan, pipeline_wan_i2v)


def patch_ftfy(*modules) -> bool:
    """Give each diffusers pipeline module that calls ``ftfy.fix_text`` without having imported ``ftfy`` (it is
    not installed) a stand-in that returns the text unchanged; returns whether any module was patched."""
    import types

    patched = False
    for module in modules:
        if not hasattr(module, "ftfy"):
            module.ftfy = types.SimpleNamespace(fix_text=lambda text, *args, **kwargs: text)
            patched = True
    return patched


def _components(family: str, seed: int, transformer) -> tuple[type, dict[str, Any]]:
    import diffusers

    if family in _PLUGIN_FAMILIES:
        plugin = _plugin(family)
        return getattr(diffusers, plugin.PIPELINE_CLASS), dict(transformer=transformer, **plugin.components(seed))

    if family == "sd3":
        return diffusers.StableDiffusion3Pipeline, dict(
            transformer=transformer, scheduler=flow_scheduler(shift=3.0),
            vae=_vae_kl(seed, scaling_factor=1.5305, shift_factor=0.0609),
            text_encoder=_clip_text(seed, "text_encoder", _SD3_CLIP_HIDDEN[0], with_projection=True),
            tokenizer=tiny_tokenizer("clip", CLIP_MAX_LENGTH),
            text_encoder_2=_clip_text(seed, "text_encoder_2", _SD3_CLIP_HIDDEN[1], with_projection=True),
            tokenizer_2=tiny_tokenizer("clip", CLIP_MAX_LENGTH),
            text_encoder_3=_t5(seed, "text_encoder_3", _SD3_T5_HIDDEN),
            tokenizer_3=tiny_tokenizer("t5", T5_MAX_LENGTH),
            image_encoder=None, feature_extractor=None,
        )
    if family == "flux":
        return diffusers.FluxPipeline, dict(
            transformer=transformer,
            scheduler=flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                      base_image_seq_len=256, max_image_seq_len=4096),
            vae=_vae_kl(seed, scaling_factor=0.3611, shift_factor=0.1159),
            text_encoder=_clip_text(seed, "text_encoder", _FLUX_CLIP_HIDDEN, with_projection=False),
            tokenizer=tiny_tokenizer("clip", CLIP_MAX_LENGTH),
            text_encoder_2=_t5(seed, "text_encoder_2", _FLUX_T5_HIDDEN),
            tokenizer_2=tiny_tokenizer("t5", T5_MAX_LENGTH),
            image_encoder=None, feature_extractor=None,
        )
    if family == "wan":
        patch_wan_i2v_ftfy()
        return diffusers.WanPipeline, dict(
            transformer=transformer, scheduler=flow_scheduler(shift=3.0), vae=_vae_wan(seed),
            text_encoder=_t5(seed, "text_encoder", _WAN_T5_HIDDEN, umt5=True),
            tokenizer=tiny_tokenizer("t5", T5_MAX_LENGTH),
        )
    if family == "wan_i2v":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        patch_wan_i2v_ftfy()

        vision_cfg = CLIPVisionConfig(
            hidden_size=_WAN_I2V_VISION_HIDDEN, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
            num_attention_heads=2, num_channels=3, image_size=32, patch_size=8, hidden_act="gelu",
            layer_norm_eps=1e-5, attention_dropout=0.0, dropout=0.0,
        )
        return diffusers.WanImageToVideoPipeline, dict(
            transformer=transformer, scheduler=flow_scheduler(shift=3.0), vae=_vae_wan(seed),
            text_encoder=_t5(seed, "text_encoder", _WAN_T5_HIDDEN, umt5=True),
            tokenizer=tiny_tokenizer("t5", WAN_I2V_TEXT_LENGTH),
            image_encoder=seeded(seed, "image_encoder", lambda: CLIPVisionModel(vision_cfg)),
            image_processor=_clip_image_processor(
                do_resize=True, size={"shortest_edge": 32}, do_center_crop=True,
                crop_size={"height": 32, "width": 32}, do_rescale=True, do_normalize=True,
                image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                do_convert_rgb=True,
            ),
        )
    if family == "hunyuan_video":
        return diffusers.HunyuanVideoPipeline, dict(
            transformer=transformer, scheduler=flow_scheduler(shift=7.0), vae=_vae_hunyuan(seed),
            text_encoder=_llama(seed, "text_encoder", _HUNYUAN_LLAMA_HIDDEN),
            tokenizer=tiny_tokenizer("llama"),  # no model_max_length: the template is tokenized unpadded
            text_encoder_2=_clip_text(seed, "text_encoder_2", _HUNYUAN_CLIP_HIDDEN, with_projection=False,
                                      max_positions=77),
            tokenizer_2=tiny_tokenizer("clip", 77),
        )
    from diffusers import CogVideoXDDIMScheduler

    return diffusers.CogVideoXPipeline, dict(
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
            rescale_betas_zero_snr=True, timestep_spacing="trailing", snr_shift_scale=3.0,
        ),
        vae=_vae_cogvideox(seed),
        text_encoder=_t5(seed, "text_encoder", _COG_T5_HIDDEN),
        tokenizer=tiny_tokenizer("t5", T5_MAX_LENGTH),
    )


def tiny_pipeline(family: str, seed: int = 0, **overrides):
    """A tiny random-weight diffusers pipeline of ``family``, built offline (float32, CPU, progress bar off).

    ``family`` is one of :data:`ALL_FAMILIES`: ``"sd3"`` (``StableDiffusion3Pipeline``, SD3.5-style with a dual
    attention block and RMS q/k norms), ``"flux"`` (``FluxPipeline``, guidance-distilled), ``"wan"``
    (``WanPipeline``), ``"wan_i2v"`` (``WanImageToVideoPipeline`` with a tiny CLIP vision encoder),
    ``"hunyuan_video"`` (``HunyuanVideoPipeline``) or ``"cogvideox"`` (``CogVideoXPipeline``). All weights are a
    function of ``seed``; two calls with the same seed give identical pipelines.

    ``overrides``: a keyword naming a pipeline component (``scheduler=...``, ``vae=...``, ``transformer=...``)
    replaces that component; any other keyword updates the transformer config (see :func:`transformer_config`).

    Example::

        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("sd3")
        >>> pipe(**tiny_call_kwargs("sd3")).images.shape  # batch, height, width, channels
        (1, 48, 64, 3)
        >>> video = tiny_pipeline("wan", seed=1)(**tiny_call_kwargs("wan", seed=1, guidance=False)).frames
        >>> video.shape  # batch, frames, height, width, channels
        (1, 9, 48, 64, 3)
    """
    _check_family(family)
    cls_name_components = _component_names(family)
    component_overrides = {k: v for k, v in overrides.items() if k in cls_name_components}
    config_overrides = {k: v for k, v in overrides.items() if k not in cls_name_components}
    if "transformer" in component_overrides:
        if config_overrides:
            raise ValueError("pass either transformer= or transformer config overrides, not both")
        transformer = component_overrides["transformer"]
    else:
        transformer = tiny_transformer(family, seed, **config_overrides)
    cls, components = _components(family, seed, transformer)
    components.update(component_overrides)
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _component_names(family: str) -> set[str]:
    import inspect

    import diffusers

    if family in _PLUGIN_FAMILIES:
        cls = getattr(diffusers, _plugin(family).PIPELINE_CLASS)
        return set(inspect.signature(cls.__init__).parameters) - {"self"}
    cls = getattr(diffusers, {
        "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline", "wan": "WanPipeline",
        "wan_i2v": "WanImageToVideoPipeline", "hunyuan_video": "HunyuanVideoPipeline",
        "cogvideox": "CogVideoXPipeline",
    }[family])
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _condition_image():
    """A small deterministic PIL image (a red disc above a blue square on white) for image-to-video."""
    import numpy as np
    from PIL import Image

    h, w = HEIGHT, WIDTH
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    disc = (yy - h * 0.3) ** 2 + (xx - w * 0.5) ** 2 <= (h * 0.18) ** 2
    img[disc] = (220, 30, 30)
    square = (abs(yy - h * 0.72) <= h * 0.16) & (abs(xx - w * 0.5) <= h * 0.16)
    img[square] = (30, 60, 220)
    return Image.fromarray(img)


def tiny_call_kwargs(family: str, steps: int = 2, seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    """Keyword arguments for a fast call of ``tiny_pipeline(family)``: ``pipe(**tiny_call_kwargs(family))``.

    ``guidance=True`` turns on the family's classifier-free guidance: ``guidance_scale`` > 1 with a negative
    prompt for sd3, wan, wan_i2v and cogvideox; ``true_cfg_scale`` > 1 with a negative prompt for flux and
    hunyuan_video (whose ``guidance_scale`` is the distilled guidance *embedding*, set in both modes and costing no
    extra forward). ``guidance=False`` runs one forward per step (no CFG). Output is ``output_type="np"``: images
    ``(1, HEIGHT, WIDTH, 3)`` or videos ``(1, NUM_FRAMES, HEIGHT, WIDTH, 3)``.
    """
    _check_family(family)
    if family in _PLUGIN_FAMILIES:
        return _plugin(family).call_kwargs(steps=steps, seed=seed, guidance=guidance)
    kw: dict[str, Any] = dict(
        prompt=PROMPT, num_inference_steps=steps, height=HEIGHT, width=WIDTH, output_type="np",
        generator=torch.Generator().manual_seed(seed),
    )
    if family in ("sd3", "wan", "wan_i2v", "cogvideox"):
        kw["guidance_scale"] = 5.0 if guidance else 1.0
        if guidance:
            kw["negative_prompt"] = NEGATIVE_PROMPT
    else:  # flux, hunyuan_video: distilled guidance embedding + optional true CFG
        kw["guidance_scale"] = 3.5 if family == "flux" else 6.0
        kw["true_cfg_scale"] = 2.0 if guidance else 1.0
        if guidance:
            kw["negative_prompt"] = NEGATIVE_PROMPT
    if family in ("sd3", "flux", "wan", "cogvideox"):
        kw["max_sequence_length"] = T5_MAX_LENGTH
    elif family == "wan_i2v":
        kw["max_sequence_length"] = WAN_I2V_TEXT_LENGTH
    elif family == "hunyuan_video":
        kw["max_sequence_length"] = LLAMA_MAX_LENGTH
    if family in ("wan", "wan_i2v", "hunyuan_video", "cogvideox"):
        kw["num_frames"] = NUM_FRAMES
    if family == "wan_i2v":
        kw["image"] = _condition_image()
    if family == "hunyuan_video":
        kw["prompt_template"] = hunyuan_prompt_template()
    return kw


def hunyuan_prompt_template() -> dict[str, Any]:
    """HunyuanVideo's default prompt template *without* its ``crop_start``, so the pipeline computes the crop.

    The stock ``DEFAULT_PROMPT_TEMPLATE`` hard-codes ``crop_start=95``, the template's length in the real Llama-3
    tokenizer; our word-level tokenizer splits the same template into 92 tokens (after the pipeline's ``- 2`` for
    the ``{}`` placeholder and the closing ``<|eot_id|>``), so with the hard-coded value the first 3 prompt tokens
    would be cropped away. Without ``crop_start`` the pipeline tokenizes the template itself (unpadded: the tiny
    Llama tokenizer has no ``model_max_length``) and crops exactly the template.
    """
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return {"template": DEFAULT_PROMPT_TEMPLATE["template"]}
