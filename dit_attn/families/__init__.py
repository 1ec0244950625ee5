"""Supported model families, as data.

One :class:`Family` per diffusers transformer class says which attention modules we take over (block lists and
attribute names, in model order, with the token layout of each), in which order the joint sequence holds text and
image tokens, where the token grid comes from, how the pipeline passes the timestep, and the row order of batched
classifier-free guidance. The stock processor computes everything else (:mod:`dit_attn.routing`), so a family is
this entry and nothing more. Everything else in dit_attn reads these entries; nothing else knows model classes.

Adding a family: see ``docs/families.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, NamedTuple

import torch

from ..layout import COND, UNCOND, segments
from . import grids

# Token layouts of one attention module (``Site.tokens``):
JOINT = "joint"  # [text, image] (or [image, text]) in one sequence; text from ``encoder_hidden_states`` when given
SINGLE = "single"  # the same joint sequence, arriving already concatenated (single-stream blocks)
SELF = "self"  # image/video tokens only
CROSS = "cross"  # image/video queries, text keys (``encoder_hidden_states``); ``SELF`` when no context is given


class Site(NamedTuple):
    """Attention modules ``<block_list>.<i>.<attr>`` with one token layout."""

    block_list: str
    attr: str
    tokens: str


@dataclass(frozen=True)
class Described:
    """What one attention call holds: its kind and the token segments of its queries and keys."""

    kind: str
    query_segments: Mapping[str, tuple[int, int]]
    key_segments: Mapping[str, tuple[int, int]]


def _context_length(inputs: dict) -> int | None:
    """Text tokens of a forward: the length of its ``encoder_hidden_states``."""
    text = inputs.get("encoder_hidden_states")
    return text.shape[1] if isinstance(text, torch.Tensor) else None


def _z_image_text_length(inputs: dict) -> int | None:
    """Z-Image's main layers hold [image, text], each padded to a multiple of 32, then padded to the longest row:
    the text segment is the longest caption rounded up to 32."""
    captions = inputs.get("cap_feats")
    if not isinstance(captions, (list, tuple)) or not captions:
        return None
    return max(-(-c.shape[0] // 32) * 32 for c in captions)


@dataclass(frozen=True)
class Family:
    """One diffusers transformer class, as data.

    ``grid(transformer, forward_inputs, hidden_states)`` gives (frames, rows, cols) of the visual tokens;
    ``text_length(forward_inputs)`` the text tokens a single-stream block holds; ``image_context`` names the
    call of a cross-attention module that attends to an image context before the text (Wan I2V: ``(0, "has
    add_k_proj")`` as the first call of modules with ``add_k_proj``).
    """

    name: str
    transformer_class: str
    sites: tuple[Site, ...]
    grid: Callable
    order: tuple[str, str] = ("text", "image")  # the joint sequence's order
    text_length: Callable[[dict], int | None] = _context_length
    # Forward arguments under another name than diffusers' usual one (Z-Image: ``{"hidden_states": "x"}``).
    arguments: Mapping[str, str] = field(default_factory=dict)
    timestep_scale: float = 1.0  # the pipeline passes scheduler timestep / timestep_scale to the transformer
    # How the family's pipelines run classifier-free guidance: "separate" forwards (named by diffusers'
    # ``cache_context`` or, where the pipeline names none, in ``cfg_order`` within a step) or "batched" in one
    # forward (row halves in ``cfg_order``).
    cfg: str = "separate"
    cfg_order: tuple[str, str] = (COND, UNCOND)
    image_padding: bool = False  # the image segment is followed by padding tokens (up to a multiple)
    batch_as_list: bool = False  # the forward takes and returns lists of per-item tensors (Z-Image)
    per_query_mask: bool = False  # the stock processor passes an [B, 1, N, N] mask (rectified sparse stays dense)
    image_context_first: bool = False  # cross-attention modules with ``add_k_proj`` attend to an image context first
    video_first_frame: bool = False  # rectified sparse's first-frame rule applies (Wan-style video)
    flux_architecture: bool = False  # FLUX-style double/single stream on [text, image]: MultiCondition applies
    pipelines: tuple[str, ...] = ()  # diffusers pipeline classes tested with it (their tiny pipelines)
    tested_with: str = ""  # the tiny pipeline of dit_attn.testing that tests it
    notes: str = ""

    def describe(self, tokens: str | None, attn, inputs: dict, ordinal: int, n_query: int, n_key: int,
                 state, text_len: int | None = None) -> Described:
        """Segments of one attention call of a module with layout ``tokens`` (the ``ordinal``-th of its call).

        ``text_len`` overrides the forward's text length for modules that get the joint sequence (a process's
        share of it under context parallelism)."""
        context = inputs.get("encoder_hidden_states")
        has_context = isinstance(context, torch.Tensor)
        image_only = {"image": (0, n_query)}
        if tokens == CROSS or (tokens is None and n_query != n_key):
            if not has_context and n_query == n_key:
                return Described(SELF, image_only, image_only)
            if self.image_context_first and ordinal == 0 and getattr(attn, "add_k_proj", None) is not None:
                return Described("cross_image", image_only, {"image_context": (0, n_key)})
            return Described(CROSS, image_only, {"text": (0, n_key)})
        if tokens == SELF:
            return Described(SELF, image_only, image_only)
        if tokens == JOINT and not has_context:  # e.g. SD3.5's image-only ``attn2``
            return Described(SELF, image_only, image_only)
        # Double-stream modules get the text as ``encoder_hidden_states``; single-stream ones either get it too
        # (HunyuanVideo concatenates inside the processor) or get the joint sequence with the forward's text length.
        n_text = context.shape[1] if has_context else (text_len if text_len is not None else state.text_len or 0)
        n_text = min(n_text, n_query)
        lengths = {"text": n_text, "image": n_query - n_text}
        if self.image_padding and state.grid is not None:  # learned padding tokens after the image (Z-Image)
            n_image = state.grid[0] * state.grid[1] * state.grid[2]
            lengths.update(image=n_image, image_padding=n_query - n_text - n_image)
        order = [s for name in self.order for s in ((name, "image_padding") if name == "image" else (name,))]
        segs = segments(tuple(order), lengths)
        return Described(SINGLE if tokens == SINGLE else JOINT, segs, segs)


_FLUX_SITES = (Site("transformer_blocks", "attn", JOINT), Site("single_transformer_blocks", "attn", SINGLE))
_WAN_SITES = (Site("blocks", "attn1", SELF), Site("blocks", "attn2", CROSS))

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd3", "SD3Transformer2DModel",
               (Site("transformer_blocks", "attn", JOINT), Site("transformer_blocks", "attn2", SELF)),
               grids.from_latents(patch_t=1, frame_axis=None, spatial_axes=(2, 3)), order=("image", "text"),
               cfg="batched", cfg_order=(UNCOND, COND), pipelines=("StableDiffusion3Pipeline",), tested_with="sd3"),
        Family("flux", "FluxTransformer2DModel", _FLUX_SITES, grids.from_ids("img_ids"), timestep_scale=1000.0,
               flux_architecture=True, pipelines=("FluxPipeline",),
               tested_with="flux"),
        Family("chroma", "ChromaTransformer2DModel", _FLUX_SITES, grids.from_ids("img_ids"), timestep_scale=1000.0,
               per_query_mask=True, flux_architecture=True, pipelines=("ChromaPipeline",), tested_with="chroma",
               notes="FLUX attention with Chroma's additive 0/1 text mask"),
        Family("wan", "WanTransformer3DModel", _WAN_SITES,
               grids.from_latents(patch_t=1, frame_axis=2, spatial_axes=(3, 4)), image_context_first=True,
               video_first_frame=True, pipelines=("WanPipeline", "WanImageToVideoPipeline"), tested_with="wan"),
        Family("wan_vace", "WanVACETransformer3DModel",
               (Site("vace_blocks", "attn1", SELF), Site("vace_blocks", "attn2", CROSS)) + _WAN_SITES,
               grids.from_latents(patch_t=1, frame_axis=2, spatial_axes=(3, 4)), image_context_first=True,
               video_first_frame=True, pipelines=("WanVACEPipeline",), tested_with="wan_vace"),
        Family("skyreels_v2", "SkyReelsV2Transformer3DModel", _WAN_SITES,
               grids.from_latents(patch_t=1, frame_axis=2, spatial_axes=(3, 4)), image_context_first=True,
               video_first_frame=True, pipelines=("SkyReelsV2Pipeline",),
               tested_with="skyreels_v2"),
        Family("flux2", "Flux2Transformer2DModel", _FLUX_SITES, grids.from_ids("img_ids"), timestep_scale=1000.0,
               flux_architecture=True, pipelines=("Flux2KleinPipeline",), tested_with="flux2",
               notes="4-axis position ids (T, H, W, L); single-stream blocks fuse QKV with the MLP"),
        Family("qwenimage", "QwenImageTransformer2DModel", (Site("transformer_blocks", "attn", JOINT),),
               grids.from_shapes("img_shapes"), pipelines=("QwenImagePipeline",), tested_with="qwenimage",
               notes="text padding mask from encoder_hidden_states_mask"),
        Family("z_image", "ZImageTransformer2DModel", (Site("layers", "attention", SINGLE),),
               grids.from_latent_list("x"), order=("image", "text"), text_length=_z_image_text_length,
               arguments={"hidden_states": "x", "timestep": "t", "encoder_hidden_states": "cap_feats"},
               cfg="batched", image_padding=True, batch_as_list=True, pipelines=("ZImagePipeline",), tested_with="z_image",
               notes="image and text each padded to a multiple of 32 with learned tokens; refiner blocks stay stock"),
        Family("hunyuan_video15", "HunyuanVideo15Transformer3DModel", (Site("transformer_blocks", "attn", JOINT),),
               grids.from_latents(patch_t=1, frame_axis=2, spatial_axes=(3, 4)), order=("image", "text"),
               per_query_mask=True, pipelines=("HunyuanVideo15Pipeline",), tested_with="hunyuan_video15",
               notes="context = image embeds + byT5 + MLLM text, valid tokens first per row; per-query mask"),
        Family("ltx", "LTXVideoTransformer3DModel",
               (Site("transformer_blocks", "attn1", SELF), Site("transformer_blocks", "attn2", CROSS)),
               grids.from_arguments("num_frames", "height", "width"), cfg="batched", cfg_order=(UNCOND, COND),
               pipelines=("LTXPipeline",),
               tested_with="ltx", notes="packed latents; text cross-attention with an additive key mask"),
        Family("hunyuan_video", "HunyuanVideoTransformer3DModel",
               (Site("transformer_blocks", "attn", JOINT), Site("single_transformer_blocks", "attn", SINGLE)),
               grids.from_latents(patch_t=1, frame_axis=2, spatial_axes=(3, 4)), order=("image", "text"),
               pipelines=("HunyuanVideoPipeline",),
               tested_with="hunyuan_video"),
        Family("cogview4", "CogView4Transformer2DModel", (Site("transformer_blocks", "attn1", JOINT),),
               grids.from_latents(patch_t=1, frame_axis=None, spatial_axes=(2, 3)), pipelines=("CogView4Pipeline",),
               tested_with="cogview4", notes="calls SDPA directly; text left-padded, unmasked"),
        Family("cogvideox", "CogVideoXTransformer3DModel", (Site("transformer_blocks", "attn1", JOINT),),
               grids.from_latents(patch_t=1, frame_axis=1, spatial_axes=(3, 4)), cfg="batched",
               cfg_order=(UNCOND, COND), pipelines=("CogVideoXPipeline",), tested_with="cogvideox"),
    )
}


def resolve_family(family: "Family | str") -> Family:
    if isinstance(family, Family):
        return family
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def family_of(transformer: torch.nn.Module) -> Family:
    """The :class:`Family` of a diffusers transformer, or a ``ValueError`` naming the supported ones.

    A subclass of a supported class is that family (the nearest supported class in its MRO wins), so a
    ``torch.compile``'d or wrapped transformer is recognised by what it wraps.
    """
    inner = getattr(transformer, "_orig_mod", None)
    if isinstance(inner, torch.nn.Module):
        raise ValueError(
            f"dit_attn cannot build processors for a torch.compile'd {type(inner).__name__} (OptimizedModule): "
            "attach to the transformer first, then compile it (`dit_attn.attach(pipe, ...)` then "
            "`pipe.transformer.compile(fullgraph=True)`), or pass the module it compiles (`._orig_mod`); "
            "dit_attn.attach itself unwraps a compiled transformer")
    by_class = {f.transformer_class: f for f in FAMILIES.values()}
    for cls in type(transformer).__mro__:
        if cls.__name__ in by_class:
            return by_class[cls.__name__]
    supported = ", ".join(f"{f.name} ({f.transformer_class})" for f in FAMILIES.values())
    raise ValueError(
        f"dit_attn does not support {type(transformer).__name__}; supported model families: {supported}"
    )


class FoundSite(NamedTuple):
    module_name: str
    block_list: str
    block_index: int
    tokens: str
    module: torch.nn.Module


def attention_sites(transformer: torch.nn.Module, family: Family) -> Iterator[FoundSite]:
    """Every attention module we take over, in model order (block lists in the order the family names them)."""
    for list_name in dict.fromkeys(s.block_list for s in family.sites):
        blocks = getattr(transformer, list_name, None)
        if blocks is None:
            continue
        for index, block in enumerate(blocks):
            for site in family.sites:
                if site.block_list != list_name:
                    continue
                module = getattr(block, site.attr, None)
                if module is not None and hasattr(module, "processor"):
                    yield FoundSite(f"{list_name}.{index}.{site.attr}", list_name, index, site.tokens, module)


def attention_modules(transformer: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """``(name, module)`` of every attention module with a processor, as ``attn_processors`` names them; also for
    transformers without diffusers' ``AttentionMixin`` (Z-Image, Lumina2, CogView4)."""
    for name, module in transformer.named_modules():
        if name and hasattr(module, "get_processor") and hasattr(module, "set_processor"):
            yield name, module


def processors_of(transformer: torch.nn.Module) -> dict:
    """``{"<module>.processor": processor}`` for every attention module (what ``attn_processors`` returns)."""
    return {f"{name}.processor": module.get_processor() for name, module in attention_modules(transformer)}


def set_processors(transformer: torch.nn.Module, processors: Mapping) -> None:
    """Install ``{"<module>.processor": processor}`` (as ``set_attn_processor`` does, for any transformer)."""
    modules = dict(attention_modules(transformer))
    for key, processor in processors.items():
        name = key[: -len(".processor")] if key.endswith(".processor") else key
        if name not in modules:
            raise KeyError(f"{type(transformer).__name__} has no attention module {name!r}")
        modules[name].set_processor(processor)
