"""Multi-condition control for FLUX-architecture models: position-aligned and keyword-scoped attention (PKA).

Families: FLUX.1 (``flux``), Chroma (``chroma``) and FLUX.2 (``flux2``); what differs between them is the small
table :data:`VARIANTS` (condition encoding and position ids, the tokenizer holding the keywords, a chat template)
plus what the forward's own signature and the stock attention mask say (pooled embedding and guidance are passed
to the write pass where the forward takes them; Chroma's per-query text mask is honoured with condition tokens
counted as image tokens).

``MultiCondition(spatial=[...], subjects=[(image, keyword), ...], mode="pka")`` conditions generation on any
number of spatial maps (edges, depth, masks: aligned with the output) and subject references (each tied to a
keyword of the prompt). Math and our choices where the paper is silent: ``docs/multi_condition_math.md``; usage:
``docs/multi_condition.md``.

How it runs, per pipeline call:

1. the pipeline's ``check_inputs`` is wrapped (restored on detach) to read the prompt, locate each subject's
   keyword tokens (tokenizer offsets) and reset the cache;
2. at the first transformer forward every condition is VAE-encoded and packed like the image, and runs once
   through the stock transformer alone (**write pass**: timestep 0, zero-length text, the prompt's pooled
   embedding, its own LoRA adapter if named); our processors store each layer's keys/values (after QK-norm
   and RoPE) in the :class:`~dit_attn.conditions.cache.ConditionCache`;
3. every denoising forward is the stock forward on ``[text; image]``; our processors add the cached keys:
   ``"pka"``: each image query sees the aligned token of every spatial condition (PAA) and, only inside the
   keyword mask ``M_k`` computed at the previous step (all rows at the first step), subject ``k``'s tokens
   (KSA); ``"cached-full"``: image queries see every condition token; one softmax via exact LSE merges.
   ``"concat"`` instead appends the condition tokens to the image tokens (one full joint attention, at the
   denoising timestep, no cache): the concatenate-and-attend baseline.

``execute()`` has no per-query gathered keys (PAA), so this control installs a subclass of the generic
processor whose attention step calls :func:`dit_attn.conditions.attention.condition_attention` (dense attention
with LSE, then merges); every other control still prepares and finishes the call as usual.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .. import parallel
from ..call import AttentionCall, execute
from ..conditions.adapters import adapter_scope, latent_adapters
from ..conditions.attention import COMBINES, MODES, SpatialKV, SubjectKV, condition_attention, keyword_mask, \
    keyword_scores
from ..conditions.cache import ConditionCache
from ..conditions.tokens import ConditionTokens, aligned_index, check_aspect, encode_image, spatial_ids, subject_ids
from ..layout import COND, ForwardState, Layout
from ..processor import DitAttnProcessor
from .base import Control

_FORWARD_PARAMS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids",
                   "guidance")
# Forward arguments the write pass takes over from the denoising forward, where the transformer has them (FLUX.1:
# the prompt's pooled embedding and the distilled guidance; FLUX.2: guidance; Chroma: neither). Everything else is
# the condition's own (tokens, ids, t = 0, zero-length text) or left at its default (Chroma's attention mask: None,
# the condition alone has no padding).
_WRITE_CARRIED = ("pooled_projections", "guidance")


@dataclass(frozen=True)
class Variant:
    """What differs between the FLUX-architecture families for :class:`MultiCondition`.

    ``layout``: condition encoding and position ids (:mod:`dit_attn.conditions.tokens`: ``"flux"`` or
    ``"flux2"``); ``tokenizer``: the pipeline attribute whose tokens make up the transformer's text sequence;
    ``chat_template``: the prompt is wrapped in that tokenizer's chat template (FLUX.2 [klein]).
    """

    layout: str = "flux"
    tokenizer: str = "tokenizer_2"
    chat_template: bool = False


VARIANTS = {
    "flux": Variant(),
    "chroma": Variant(tokenizer="tokenizer"),
    "flux2": Variant(layout="flux2", tokenizer="tokenizer", chat_template=True),
}


@dataclass
class SpatialCondition:
    """A spatial condition: ``image`` (PIL, or a tensor in [-1, 1] ``[3, H, W]`` / ``[B, 3, H, W]``, or
    pre-encoded :class:`~dit_attn.conditions.tokens.ConditionTokens`) with the output's aspect ratio, encoded at
    ``scale`` x the output resolution (0.5: a quarter of the tokens, aligned by nearest centres), with LoRA
    ``adapter`` (a name loaded on the transformer) active in its write pass.

    Example (an edge map at half resolution, with the bundled edges adapter)::

        >>> import dit_attn
        >>> from PIL import Image
        >>> edges = Image.new("RGB", (64, 64))
        >>> dit_attn.MultiCondition(spatial=[dit_attn.SpatialCondition(edges, scale=0.5, adapter="edges")]).conditions
        1
    """

    image: Any
    scale: float = 1.0
    adapter: str | None = None


@dataclass
class SubjectCondition:
    """A subject reference ``image`` tied to ``keyword`` (one or more words of the prompt). ``size``: pixel
    ``(height, width)`` it is encoded at (default: the output's); ``adapter``: its LoRA, as for spatial.

    Example (a tuple ``(image, keyword)`` in ``subjects`` means the same)::

        >>> import dit_attn
        >>> from PIL import Image
        >>> sprite = Image.new("RGB", (32, 32), "red")
        >>> control = dit_attn.MultiCondition(subjects=[dit_attn.SubjectCondition(sprite, "zorb", size=(32, 32))])
        >>> control.subjects[0].keyword, control.subjects[0].size
        ('zorb', (32, 32))
    """

    image: Any
    keyword: str
    size: tuple[int, int] | None = None
    adapter: str | None = None


@dataclass
class _Prepared:
    kind: str  # "spatial" | "subject"
    index: int  # within its kind
    tokens: ConditionTokens
    adapter: str | None
    align: torch.Tensor | None = None  # spatial: [N] aligned condition token of each image token


@dataclass(eq=False)
class MultiCondition(Control):
    """Spatial and subject conditions for FLUX-architecture pipelines (PKA: arXiv 2602.06850).

    Args:
        spatial: spatial conditions: images (PIL or tensors in [-1, 1]) or :class:`SpatialCondition`.
        subjects: ``(image, keyword)`` pairs or :class:`SubjectCondition`; each keyword must occur in the prompt.
        mode: ``"pka"`` (default), ``"cached-full"`` or ``"concat"`` (baselines, same token layout).
        epsilon: KSA threshold on the min-max-normalised keyword scores.
        combine: ``"joint"`` (one softmax over all keys a query sees; default) or ``"sum"`` (the paper's literal
            "separate branches summed": ``Attn([T, X]) + Σ V_c[a_c(i)] + Σ M_k·Attn(SJ_k)``; pka only).
        text_sees_conditions: text queries also attend to every condition token (off: the table's default).
        cache: keep the write pass's keys/values for the whole call (``False``: redo it every forward, as in
            training, where the adapters change).
        cache_dtype: store the cache in this dtype (e.g. ``torch.bfloat16``); ``None``: the model's.
        ksa_same_forward: take the KSA mask from the same forward's logits instead of the previous step's
            (training: there is no previous step).

    Example:
        >>> import torch, dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("flux")
        >>> kwargs = tiny_call_kwargs("flux")          # prompt "a red circle above a blue square", 48 x 64
        >>> edges = torch.rand(3, 48, 64) * 2 - 1      # any image with the output's aspect ratio
        >>> sprite = torch.rand(3, 32, 32) * 2 - 1
        >>> control = dit_attn.MultiCondition(spatial=[edges], subjects=[(sprite, "circle")], mode="pka")
        >>> with dit_attn.attach(pipe, control):
        ...     image = pipe(**kwargs).images[0]
        >>> control.cache_report()["conditions"]
        2
    """

    spatial: Sequence[Any] = ()
    subjects: Sequence[Any] = ()
    mode: str = "pka"
    epsilon: float = 0.2
    combine: str = "joint"
    text_sees_conditions: bool = False
    cache: bool = True
    cache_dtype: torch.dtype | None = None
    ksa_same_forward: bool = False
    _kv: ConditionCache = field(default=None, init=False, repr=False)
    _state: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"MultiCondition.mode must be one of {MODES}, got {self.mode!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"MultiCondition.combine must be one of {COMBINES}, got {self.combine!r}")
        if self.combine == "sum" and self.mode != "pka":
            raise ValueError("MultiCondition.combine='sum' (separate branches summed) is a reading of pka only")
        if not isinstance(self.epsilon, (int, float)) or self.epsilon < 0:
            raise ValueError(f"MultiCondition.epsilon must be a number >= 0, got {self.epsilon!r}")
        self.spatial = [s if isinstance(s, SpatialCondition) else SpatialCondition(s) for s in self.spatial]
        subjects = []
        for s in self.subjects:
            if isinstance(s, SubjectCondition):
                subjects.append(s)
            elif isinstance(s, (tuple, list)) and len(s) == 2 and isinstance(s[1], str):
                subjects.append(SubjectCondition(s[0], s[1]))
            else:
                raise TypeError("MultiCondition.subjects takes (image, keyword) pairs or SubjectCondition; got "
                                f"{type(s).__name__}")
        self.subjects = subjects
        for s in self.spatial:
            if not (isinstance(s.scale, (int, float)) and s.scale > 0):
                raise ValueError(f"SpatialCondition.scale must be a positive number, got {s.scale!r}")
        self._kv = ConditionCache(self.cache_dtype)
        self._reset()

    # --- bookkeeping ----------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._kv.clear()
        self._state.update(cache_key=None, encoded={}, writing=None, keywords=None, prompts=None, max_len=None,
                           masks_prev={}, masks_cur={}, mask_step=None, forwards=0,
                           keywords_on_device=None)

    def reset(self) -> None:
        """Forget the condition cache, encodings and KSA masks (a pipeline call does this by itself; call it
        between forwards when driving a bare transformer with new inputs)."""
        self._reset()

    @property
    def conditions(self) -> int:
        return len(self.spatial) + len(self.subjects)

    def cache_report(self) -> dict:
        """Size of the condition cache: ``{"layers", "conditions", "tokens", "bytes", "bytes_per_condition"}``
        (the live cache, or the last one written when it has been freed by detach/reset)."""
        return self._kv.report() if self._kv.layers else dict(self._state.get("report") or self._kv.report())

    def set_keyword_weights(self, weights: Sequence[torch.Tensor]) -> None:
        """Give each subject's keyword tokens directly (``[B|1, text_len]``, 1 on keyword tokens), e.g. when
        attached to a bare transformer or when the pipeline got ``prompt_embeds`` only."""
        if len(weights) != len(self.subjects):
            raise ValueError(f"{len(weights)} keyword weight rows for {len(self.subjects)} subjects")
        self._state["keywords_given"] = [torch.as_tensor(w, dtype=torch.float32) for w in weights]

    def keyword_masks(self, layer: int) -> list[torch.Tensor | None]:
        """The KSA masks (``[B, N]`` bool, ``None`` = unmasked) the next denoising forward uses at ``layer``."""
        return [self._state["masks_cur"].get(layer, {}).get(k) for k in range(len(self.subjects))]

    pipeline_level = ("encodes its conditions and runs the condition pass when the pipeline is called (it wraps "
                      "check_inputs) and installs its own processors")

    # --- attach / detach ------------------------------------------------------------------------------------
    def on_attach(self, attachment) -> None:
        from ..families import FAMILIES, family_of, processors_of, set_processors
        from ..state import ensure_forward_hook

        for transformer in attachment.transformers:
            family = family_of(transformer)
            if not family.flux_architecture or family.name not in VARIANTS:
                supported = ", ".join(f.transformer_class for f in FAMILIES.values()
                                      if f.flux_architecture and f.name in VARIANTS)
                raise ValueError(f"MultiCondition supports FLUX-architecture transformers ({supported}); "
                                 f"got the {family.name!r} family ({type(transformer).__name__})")
        transformer = attachment.transformers[0]
        self._state.update(transformer=transformer, hook=ensure_forward_hook(transformer), attachment=attachment,
                           variant=VARIANTS[family_of(transformer).name])
        procs = {name: ConditionProcessor(p, self) if isinstance(p, DitAttnProcessor) else p
                 for name, p in processors_of(transformer).items()}
        set_processors(transformer, procs)  # attach's detach() restores the stock processors
        pipe = attachment.pipeline
        self._state["pipe"] = pipe
        if pipe is not None and hasattr(pipe, "check_inputs"):
            signature = inspect.signature(pipe.check_inputs)

            def wrap(original):
                @functools.wraps(original)
                def check_inputs(*args, **kwargs):
                    result = original(*args, **kwargs)
                    bound = signature.bind_partial(*args, **kwargs)
                    self._begin_call(pipe, bound.arguments)
                    return result

                return check_inputs

            attachment.wrap(pipe, "check_inputs", wrap)  # restored by the attachment on detach

    def on_detach(self, attachment) -> None:
        self._close_scope()
        self._reset()
        for key in ("transformer", "hook", "pipe", "attachment", "variant"):
            self._state.pop(key, None)

    def _begin_call(self, pipe, args: dict) -> None:
        """Start of a pipeline call: reset, check spatial sizes, locate the keywords."""
        from ..conditions.keywords import keyword_weights

        self._reset()
        f = pipe.vae_scale_factor * 2
        height = args.get("height") or pipe.default_sample_size * pipe.vae_scale_factor
        width = args.get("width") or pipe.default_sample_size * pipe.vae_scale_factor
        hw = (height // f * f, width // f * f)
        for c, s in enumerate(self.spatial):
            if not isinstance(s.image, ConditionTokens):
                check_aspect(s.image, hw, f"spatial condition {c}")
        if not self.subjects:
            return
        prompt = args.get("prompt")
        if prompt is None:
            if self._state.get("keywords_given") is None:  # set_keyword_weights() gave them
                raise ValueError("MultiCondition needs the prompt text to locate subject keywords; the pipeline got "
                                 "prompt_embeds only: call control.set_keyword_weights(...) first")
            return
        max_len = args.get("max_sequence_length") or 512
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        attachment = self._state.get("attachment")
        for control in attachment.controls if attachment is not None else ():
            if control is not self and hasattr(control, "prompt_as_encoded"):  # e.g. Emphasis strips its syntax
                prompts = [control.prompt_as_encoded(p) for p in prompts]
        variant = self._state.get("variant") or VARIANTS["flux"]
        tokenizer = getattr(pipe, variant.tokenizer)
        template = None
        if variant.chat_template:  # FLUX.2 [klein]: the text encoder reads the prompt inside Qwen's chat template
            from ..prompt import _chat_template

            template = _chat_template(tokenizer, enable_thinking=False)
        self._state["keywords"] = [keyword_weights(tokenizer, prompts, s.keyword, max_length=max_len,
                                                   template=template) for s in self.subjects]

    # --- encoding -------------------------------------------------------------------------------------------
    def _prepared(self, grid: tuple[int, int], device, dtype) -> list[_Prepared]:
        key = (grid, str(device), dtype)
        cached = self._state["encoded"].get(key)
        if cached is not None:
            return cached
        pipe = self._state.get("pipe")
        layout = (self._state.get("variant") or VARIANTS["flux"]).layout
        out = []
        for c, s in enumerate(self.spatial):
            cgrid = (max(1, round(grid[0] * s.scale)), max(1, round(grid[1] * s.scale)))
            tokens = self._encode(pipe, s.image, cgrid, f"spatial condition {c}", layout)
            if s.scale == 1.0 and tokens.grid != grid:
                raise ValueError(f"spatial condition {c} has a {tokens.grid[0]}x{tokens.grid[1]} token grid but the "
                                 f"image has {grid[0]}x{grid[1]}; give SpatialCondition(scale=...) for another size")
            ids = tokens.ids if tokens.ids is not None else spatial_ids(tokens.grid, grid, layout=layout)
            out.append(_Prepared("spatial", c, ConditionTokens(tokens.tokens.to(device, dtype), tokens.grid,
                                                               ids.to(device, dtype)), s.adapter,
                                 aligned_index(grid, tokens.grid, device)))
        for k, s in enumerate(self.subjects):
            if s.size is not None:
                f = pipe.vae_scale_factor * 2 if pipe is not None else 1
                sgrid = (max(1, s.size[0] // f), max(1, s.size[1] // f))
            else:
                sgrid = grid
            tokens = self._encode(pipe, s.image, sgrid, f"subject {k} ({s.keyword!r})", layout)
            ids = tokens.ids if tokens.ids is not None else subject_ids(tokens.grid, k, layout=layout)
            out.append(_Prepared("subject", k, ConditionTokens(tokens.tokens.to(device, dtype), tokens.grid,
                                                               ids.to(device, dtype)), s.adapter))
        self._state["encoded"][key] = out
        return out

    @staticmethod
    def _encode(pipe, image, grid, what, layout: str = "flux") -> ConditionTokens:
        if isinstance(image, ConditionTokens):
            axes = 4 if layout == "flux2" else 3
            if image.ids is not None and (image.ids.dim() != 2 or image.ids.shape[-1] != axes):
                raise ValueError(f"{what}: ConditionTokens.ids must be [tokens, {axes}] for this model, got "
                                 f"{tuple(image.ids.shape)}")
            return image
        if pipe is None:
            raise ValueError(f"{what}: attached to a bare transformer, conditions must be pre-encoded "
                             "ConditionTokens (there is no VAE to encode images with)")
        return ConditionTokens(encode_image(pipe, image, grid, what, layout=layout), grid)

    # --- per transformer forward ----------------------------------------------------------------------------
    def before_forward(self, state: ForwardState, args, kwargs):
        st = self._state
        if st["writing"] is not None or not self.conditions:
            return args, kwargs
        params = list(inspect.signature(type(st["transformer"]).forward).parameters)[1:]
        bound = dict(zip(params, args))
        bound.update(kwargs)
        x = bound["hidden_states"]
        batch = x.shape[0]
        grid = state.grid[1:] if state.grid is not None else None
        if grid is None:
            raise ValueError("MultiCondition: cannot read the image token grid from img_ids")
        prepared = self._prepared(tuple(grid), x.device, x.dtype)
        if self.mode == "concat":
            tokens = [p.tokens.tokens.expand(batch, -1, -1) for p in prepared]
            img_ids = bound["img_ids"]
            if img_ids.dim() == 3:  # [B, N, A] (FLUX.2): the condition ids for every row, in one float dtype
                ids = [img_ids.to(prepared[0].tokens.ids.dtype)] + \
                    [p.tokens.ids.expand(img_ids.shape[0], -1, -1) for p in prepared]
                bound["img_ids"] = torch.cat(ids, dim=1)
            else:
                ids = [img_ids] + [p.tokens.ids for p in prepared]
                bound["img_ids"] = torch.cat(ids, dim=0)
            bound["hidden_states"] = torch.cat([x] + tokens, dim=1)
            mask = bound.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:  # Chroma's [B, text + image] 0/1 mask:
                extra = sum(t.shape[1] for t in tokens)  # condition tokens count as image tokens (1)
                bound["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], extra)], dim=1)
            state.extra[id(self)] = {"image_len": x.shape[1]}
            self._close_scope()
            names = {p.adapter for p in prepared if p.adapter}
            if names:  # one joint forward: the named adapters act on all its tokens (as concat-mode training does),
                scope = contextlib.ExitStack()  # together with the LoRA adapters that are active anyway
                scope.enter_context(adapter_scope(st["transformer"], include=names))
                st["denoise_scope"] = scope
            return (), bound
        key = (tuple(grid), batch, str(x.device), x.dtype)
        if not self.cache or st["cache_key"] != key or not self._kv.layers:
            self._write(state, bound, prepared)
            st["cache_key"] = key
        self._close_scope()
        names = {p.adapter for p in prepared if p.adapter}
        if names:  # condition adapters act in the write passes only, except latent ones (trained on all tokens)
            latent = latent_adapters(st["transformer"]) & names
            scope = contextlib.ExitStack()
            scope.enter_context(adapter_scope(st["transformer"], exclude=names - latent, include=latent))
            st["denoise_scope"] = scope
        # KSA masks: those computed at the previous step are used now; the cond forward computes new ones.
        roles = state.batch_roles or (COND,) * batch
        is_cond = all(r == COND for r in roles)
        step = state.step_index if state.step_index is not None else st["forwards"]
        if is_cond:
            st["forwards"] += 1
        if step != st["mask_step"] and is_cond:
            st["masks_prev"] = st["masks_cur"] if st["mask_step"] is not None else {}
            st["masks_cur"] = {}
            st["mask_step"] = step
        state.extra[id(self)] = {"prepared": prepared, "cond": is_cond}
        return args, kwargs

    def _close_scope(self) -> None:
        scope = self._state.pop("denoise_scope", None)
        if scope is not None:
            scope.close()

    def after_forward(self, state: ForwardState, output):
        if self._state["writing"] is None:
            self._close_scope()
        info = state.extra.get(id(self))
        if self.mode != "concat" or not info or "image_len" not in info:
            return output
        n = info["image_len"]
        if isinstance(output, tuple):
            return (output[0][:, :n],) + tuple(output[1:])
        output.sample = output.sample[:, :n]
        return output

    def _write(self, state: ForwardState, bound: dict, prepared: list[_Prepared]) -> None:
        """Run every condition alone through the stock transformer at t = 0; processors fill the cache."""
        st = self._state
        transformer, hook = st["transformer"], st["hook"]
        x, text = bound["hidden_states"], bound["encoder_hidden_states"]
        batch = x.shape[0]
        self._kv.clear()
        names = {p.adapter for p in prepared if p.adapter}
        st["condition_adapters"] = names
        params = inspect.signature(type(transformer).forward).parameters
        carried = {name: bound.get(name) for name in _WRITE_CARRIED if name in params}
        txt_ids = bound["txt_ids"]
        # Pipelines that run cond and uncond without naming them (Chroma) are told apart by counting forwards
        # within a step: the nested write forwards must not count.
        counted = getattr(hook, "_forwards_in_step", None)
        try:
            for c, p in enumerate(prepared):
                st["writing"] = c
                timestep = torch.zeros(batch, device=x.device, dtype=bound["timestep"].dtype)
                with adapter_scope(transformer, only=p.adapter) if p.adapter else \
                        adapter_scope(transformer, exclude=names):
                    transformer(
                        hidden_states=p.tokens.tokens.expand(batch, -1, -1), encoder_hidden_states=text[:, :0],
                        timestep=timestep, img_ids=p.tokens.ids, txt_ids=txt_ids[..., :0, :], **carried,
                        return_dict=False)
        finally:
            st["writing"] = None
            hook.box.current = state  # the nested forward replaced the outer forward's state
            if counted is not None:
                hook._forwards_in_step = counted
        st["report"] = self._kv.report()
        st["writes"] = st.get("writes", 0) + 1

    # --- per attention call ---------------------------------------------------------------------------------
    def applies_to(self, layout: Layout) -> bool:
        return self.conditions > 0 and self.mode != "concat"

    def attend(self, call: AttentionCall) -> torch.Tensor:
        """The attention of ``call`` with the conditions (called by :class:`ConditionProcessor`)."""
        st = self._state
        layer = call.layout.layer_index
        if st["writing"] is not None:
            self._kv.store(layer, st["writing"], call.key, call.value)
            return execute(call)  # a condition alone: full attention within itself
        info = call.layout.state.extra.get(id(self))
        if info is None or not self._kv.has(layer, len(info["prepared"])):
            return execute(call)
        if call.extra_keys or call.sparse is not None:
            raise NotImplementedError("MultiCondition cannot yet be combined with controls that add extra key sets "
                                      "or sparse plans (e.g. RectifiedSparse, SoftPAG)")
        text = call.layout.query_segments.get("text", (0, 0))
        t = text[1] - text[0]
        condition_bias = None
        if call.attn_mask is not None:  # a stock mask (Chroma's text mask): condition tokens count as image tokens,
            mask = call.attn_mask  # so each query row gets on every condition key what it gets on the first image key
            while mask.dim() < 4:
                mask = mask.unsqueeze(0)
            condition_bias = mask[..., t]  # [B|1, H|1, Nq|1]
        dtype = call.query.dtype
        spatial, subjects = [], []
        prev = st["masks_prev"].get(layer, {})
        q_img = call.query[:, t:]
        now = {}
        keywords = st["keywords"] if st["keywords"] is not None else st.get("keywords_given")
        if self.mode == "pka" and self.subjects and info["cond"] and keywords is not None:
            # One copy to the device per prompt, not per attention call (a host-to-device copy waits for the GPU).
            on_device = st.get("keywords_on_device")
            if on_device is None or on_device[0] is not keywords or on_device[1] != call.key.device or \
                    on_device[3] != t:
                on_device = (keywords, call.key.device, [_fit_text(w, t, k).to(call.key.device)
                                                         for k, w in enumerate(keywords)], t)
                st["keywords_on_device"] = on_device
            for k, w in enumerate(on_device[2]):
                b = call.key.shape[0]
                if w.shape[0] != b and b % w.shape[0] == 0:  # prompts x num_images_per_prompt
                    w = w.repeat_interleave(b // w.shape[0], dim=0)
                if w.shape != (call.key.shape[0], t):
                    raise ValueError(f"keyword weights of subject {k} are {tuple(w.shape)} but this forward has batch "
                                     f"{call.key.shape[0]} and {t} text tokens")
                with torch.no_grad():
                    # the mean over every head, also when this process holds some of them (Ulysses)
                    scores = parallel.mean_over_heads(keyword_scores(q_img, call.key[:, :t], w), call.layout)
                    now[k] = keyword_mask(scores, self.epsilon)
            st["masks_cur"][layer] = now
        for c, p in enumerate(info["prepared"]):
            key, value = self._kv.get(layer, c, dtype)
            if p.kind == "spatial":
                spatial.append(SpatialKV(key, value, p.align))
            else:
                mask = now.get(p.index) if self.ksa_same_forward else prev.get(p.index)
                subjects.append(SubjectKV(key, value, mask if self.mode == "pka" else None))
        return condition_attention(call.query, call.key, call.value, text_len=t, spatial=spatial, subjects=subjects,
                                   mode=self.mode, combine=self.combine, scale=call.effective_scale,
                                   key_bias=call.key_bias, key_bias_rows=call.key_bias_rows,
                                   text_sees_conditions=self.text_sees_conditions, attn_mask=call.attn_mask,
                                   condition_bias=condition_bias)


def _fit_text(weights: torch.Tensor, length: int, index: int) -> torch.Tensor:
    """Keyword weights ``[B, L]`` cut to the forward's ``length`` text tokens (a pipeline whose ``check_inputs``
    does not get ``max_sequence_length`` is tokenized at the default 512; its text is padded on the right)."""
    if weights.shape[-1] <= length:
        return weights
    if bool(weights[..., length:].any()):
        raise ValueError(f"the keyword of subject {index} lies beyond the {length} text tokens of this forward; "
                         "shorten the prompt or raise max_sequence_length")
    return weights[..., :length]


class ConditionProcessor(DitAttnProcessor):
    """The generic processor, with :meth:`MultiCondition.attend` in place of :func:`dit_attn.call.execute`."""

    def __init__(self, base: DitAttnProcessor, control: MultiCondition):
        super().__init__(base.family, base.stock, base.controls, base.site, base.state_box)
        self._cp_text_split = base._cp_text_split  # what build_processors found about context parallelism
        self.condition_control = control

    def _takes_over(self, active: list) -> bool:
        return any(c is self.condition_control for c in active) or \
            self.condition_control._state["writing"] is not None

    def _run(self, call: AttentionCall, active: list) -> torch.Tensor:
        return self.condition_control.attend(call) if self._takes_over(active) else execute(call)
