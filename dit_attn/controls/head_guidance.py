"""SoftPAG: head-level perturbation guidance (HeadHunter, arXiv 2506.10978), on every supported pipeline.

Perturbation guidance runs the model on the conditional prompt a second time with some attention heads damaged
and pushes the prediction away from that weak result:

* with CFG: ``ε̂ = ε_u + g·(ε_c − ε_u) + Σ_k w_k·(ε_c − ε_{p,k})``; without CFG: ``ε̂ = ε_c + Σ_k w_k·(ε_c − ε_{p,k})``;
* in the perturbed pass, each selected head's attention becomes ``A' = (1 − u)·A + u·A_target`` (SoftPAG, Eq. 7).

The perturbation is computed without any attention map:

* ``scope="all"`` (alias ``"joint"``): ``A_target = I`` over the whole sequence, so ``O' = (1 − u)·O + u·V``:
  a mix of the normal fused attention output with V (any backend: flash, sage, cuDNN...);
* ``scope="image"`` (alias ``"image_self"``, diffusers' SD3 PAG): image queries attend only to themselves and to
  the valid text keys; text query rows are unchanged. The target needs one logit per image query for itself and
  ``N_img × T`` text logits, computed in chunks of image queries (never ``N × N``).

How the extra pass runs (``mode``):

* ``"batched"``: before each active transformer forward the control appends a copy of the cond rows to every
  batched input (latents, text embeddings, pooled projections, timestep, guidance, masks...), with batch role
  ``"perturbed:<name>"`` so that processors perturb only those rows. After the forward it removes them and hands
  ``w·(ε_c − ε_p)`` to the pipeline's ``scheduler.step`` (wrapped while attached), which adds it to the model
  output *after* the pipeline's own CFG. That is exactly the formula above whatever the guidance scale is — FLUX
  and HunyuanVideo keep ``true_cfg_scale`` in a local variable and CogVideoX's dynamic CFG computes its scale
  only after the forward, so the scale cannot be read from the pipeline at forward time. Separate cond/uncond
  calls (FLUX true CFG, Wan, HunyuanVideo) get the rows in the cond call only; the distilled guidance embedding
  of FLUX-dev is copied unchanged. Several SoftPAG controls compose (each adds its own rows).
* ``"uncond"``: no extra rows and no extra forward; the uncond rows are perturbed instead, giving
  ``ε̂ = ε_{u,pert} + g·(ε_c − ε_{u,pert})``. Needs CFG (a clear error otherwise); ``scale`` only switches it on/off.

Attached to a bare transformer (no pipeline), batched mode adds ``Σ_k w_k·(ε_c − ε_{p,k})`` to the cond rows of
the transformer output (the no-CFG formula).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..call import AttentionCall
from ..heads import HeadSet
from ..layout import COND, UNCOND, ForwardState, Layout
from .base import Control

SCOPES = {"all": "all", "joint": "all", "image": "image", "image_self": "image"}
MODES = ("batched", "uncond")
CHUNK = 256  # image queries per chunk for scope="image"

# Transformer arguments that are never batched even when their first dimension happens to equal the batch size.
_UNBATCHED = frozenset({
    "img_ids", "txt_ids", "image_rotary_emb", "rotary_emb", "joint_attention_kwargs", "attention_kwargs",
    "return_dict", "skip_layers", "controlnet_blocks_repeat", "control_hidden_states_scale",
})
_RAW_COND = "dit_attn.softpag.raw_cond"


def _runs(indices: list[int]) -> list[slice]:
    """Contiguous runs of sorted indices as slices (rows and heads are almost always one run)."""
    runs, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            runs.append(slice(start, x + 1))
            start = None
    return runs


def _mask_part(mask: torch.Tensor, rows: slice, heads: slice) -> torch.Tensor:
    """The stock mask as 4-D, restricted to batch ``rows`` and ``heads`` where it is not broadcast."""
    m = mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    m = m[rows] if m.shape[0] > 1 else m
    return m[:, heads] if m.shape[1] > 1 else m


def _additive(m: torch.Tensor, dtype) -> torch.Tensor:
    """A boolean mask (True = attend) as 0 / -inf, or a float mask as it is, in ``dtype``."""
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))
    return m.to(dtype)


def _text_bias(mask: torch.Tensor | None, rows: slice, heads: slice, q_rows: slice, k_text: slice,
               dtype) -> torch.Tensor | None:
    """The stock attention mask restricted to (rows, heads, image queries, text keys), additive, 4-D."""
    if mask is None:
        return None
    m = _mask_part(mask, rows, heads)
    m = m[:, :, q_rows] if m.shape[2] > 1 else m
    return _additive(m[..., k_text], dtype)


def _self_bias(mask: torch.Tensor | None, rows: slice, heads: slice, q_rows: slice, dtype) -> torch.Tensor | None:
    """The stock mask's entry for each image query and its own key, additive, ``[B, H, N_img, 1]`` (a float mask
    such as Chroma's adds to image-image pairs too)."""
    if mask is None:
        return None
    m = _mask_part(mask, rows, heads)
    diag = torch.diagonal(m[:, :, q_rows, q_rows], dim1=-2, dim2=-1) if m.shape[2] > 1 else m[:, :, 0, q_rows]
    return _additive(diag, dtype).unsqueeze(-1)


def image_self_target(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, q_image: slice,
                      k_text: slice | None, scale: float, text_bias: torch.Tensor | None = None,
                      chunk: int = CHUNK, self_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Output of the "image_self" identity attention for the image query rows, ``[B, N_img, H, D]``.

    Each image query i sees only its own key (logit ``scale·q_i·k_i``) and the text keys (``scale·q_i·k_t`` plus
    the stock mask); ``target_i = p_self·v_i + Σ_t p_t·v_t``. Tensors are ``[B, N, H, D]``; image keys sit at the
    same positions as image queries. Computed in chunks of ``chunk`` queries: memory ``O(chunk·T)`` per head.
    """
    work = torch.promote_types(query.dtype, torch.float32)
    qi, ki, vi = (t[:, q_image].to(work) for t in (query, key, value))
    if k_text is None or k_text.stop <= k_text.start:
        return vi.to(value.dtype)
    kt, vt = key[:, k_text].to(work).transpose(1, 2), value[:, k_text].to(work).transpose(1, 2)  # [B, H, T, D]
    self_logit = (qi * ki).sum(-1).transpose(1, 2).unsqueeze(-1) * scale  # [B, H, N_img, 1]
    if self_bias is not None:
        self_logit = self_logit + self_bias.to(work)
    qh, vh = qi.transpose(1, 2), vi.transpose(1, 2)  # [B, H, N_img, D]
    parts = []
    for lo in range(0, qh.shape[2], chunk):
        hi = min(lo + chunk, qh.shape[2])
        logits = torch.matmul(qh[:, :, lo:hi], kt.transpose(-1, -2)) * scale  # [B, H, c, T]
        if text_bias is not None:
            tb = text_bias if text_bias.shape[2] == 1 else text_bias[:, :, lo:hi]
            logits = logits + tb.to(work)
        p = torch.softmax(torch.cat([self_logit[:, :, lo:hi], logits], dim=-1), dim=-1)
        parts.append(p[..., :1] * vh[:, :, lo:hi] + torch.matmul(p[..., 1:], vt))
    return torch.cat(parts, dim=2).transpose(1, 2).to(value.dtype)


def perturb_output(call: AttentionCall, out: torch.Tensor, rows: list[int], heads: list[int], strength: float,
                   scope: str = "all", chunk: int = CHUNK) -> torch.Tensor:
    """SoftPAG on one attention output: for batch ``rows`` and ``heads``, ``O' = (1 − u)·O + u·O_target``.

    ``scope="all"``: ``O_target = V`` (identity attention over the whole sequence). ``scope="image"``: image query
    rows get :func:`image_self_target`, text query rows are left as they are. ``out`` is edited in place and
    returned. Exact map-free form of ``((1 − u)·A + u·A_target)·V``.
    """
    scope = SCOPES[scope]
    layout = call.layout
    q_img = layout.query_slice("image")
    split = scope == "image" and q_img is not None and "text" in layout.key_segments
    if split and layout.key_slice("image") != q_img:
        raise RuntimeError(f"SoftPAG scope='image' needs image queries and keys at the same positions "
                           f"({layout.module_name}: {dict(layout.query_segments)} vs {dict(layout.key_segments)})")
    for r in _runs(rows):
        for h in _runs(heads):
            if split:
                bias = _text_bias(call.attn_mask, r, h, q_img, layout.key_slice("text"),
                                  torch.promote_types(call.query.dtype, torch.float32))
                work = torch.promote_types(call.query.dtype, torch.float32)
                target = image_self_target(call.query[r, :, h], call.key[r, :, h], call.value[r, :, h], q_img,
                                           layout.key_slice("text"), call.effective_scale, bias, chunk,
                                           _self_bias(call.attn_mask, r, h, q_img, work))
                region = out[r, q_img, h]
            else:
                target = call.value[r, :, h]
                region = out[r, :, h]
            target = target.to(out.dtype)
            # lerp is exact at both ends: u = 1 gives the target bit for bit.
            region.copy_(target if strength == 1.0 else torch.lerp(region, target, strength))
    return out


def _sample_of(output):
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "sample", output)


def _with_sample(output, sample):
    if isinstance(output, tuple):
        return (sample,) + output[1:]
    if isinstance(output, list):
        return [sample] + output[1:]
    if hasattr(output, "sample"):
        output.sample = sample
        return output
    return sample


def _append_rows(x, batch: int, src: slice):
    """``x`` with rows ``src`` appended, if ``x`` is batched (a tensor, or a list/tuple of tensors, of ``batch``
    rows); anything else unchanged."""
    if isinstance(x, torch.Tensor):
        if x.dim() >= 1 and x.shape[0] == batch:
            return torch.cat([x, x[src]], dim=0)
        return x
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return type(x)(_append_rows(t, batch, src) for t in x)
    return x


@dataclass
class SoftPAG(Control):
    """Head-level (soft) perturbed-attention guidance.

    Args:
        heads: the heads to perturb: a :class:`~dit_attn.HeadSet`, a spec string
            (``"transformer_blocks.11:15,18; single_transformer_blocks.20:3"``, ``"L38H18"``) or a preset name
            (``"sd3-medium/layer9"``, see :data:`dit_attn.heads.PRESETS`).
        strength: SoftPAG ``u`` in [0, 1]: 0 = no perturbation, 1 = PAG's identity attention.
        scale: guidance weight ``w`` of ``w·(ε_c − ε_p)``. 0 switches the control off.
        scope: ``"all"`` (alias ``"joint"``) or ``"image"`` (alias ``"image_self"``); see the module docstring.
        steps: ``(start, stop)`` fractions; step i of N is active iff ``start·N <= i < stop·N``.
        mode: ``"batched"`` (extra rows in the same forward) or ``"uncond"`` (perturb the uncond pass; needs CFG).
        name: names the batch role of the extra rows, ``"perturbed:<name>"`` (default: unique per control).

    Example:
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("sd3")
        >>> pag = dit_attn.SoftPAG("transformer_blocks.1:*", strength=0.5, scale=3.0)
        >>> with dit_attn.attach(pipe, pag):
        ...     image = pipe(**tiny_call_kwargs("sd3")).images[0]
    """

    heads: Any = None
    strength: float = 1.0
    scale: float = 3.0
    scope: str = "all"
    steps: tuple[float, float] = (0.0, 1.0)
    mode: str = "batched"
    name: str | None = None
    _pending: list = field(default_factory=list, init=False, repr=False)
    _attachment: object = field(default=None, init=False, repr=False, compare=False)
    _pipeline: Any = field(default=None, init=False, repr=False)
    _head_cache: dict = field(default_factory=dict, init=False, repr=False)
    _uncond_flags: list = field(default_factory=lambda: [False, False], init=False, repr=False)

    def __post_init__(self):
        from ..heads import PRESETS

        if self.heads is None:
            raise ValueError("SoftPAG needs heads= (a HeadSet, a spec like 'transformer_blocks.9:*', or a preset)")
        if isinstance(self.heads, str) and self.heads in PRESETS:
            self.heads = HeadSet.preset(self.heads)
        elif isinstance(self.heads, dict):
            self.heads = HeadSet.from_dict(self.heads)
        elif not isinstance(self.heads, HeadSet):
            self.heads = HeadSet.parse(self.heads)
        for what, x in (("strength", self.strength), ("scale", self.scale)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise ValueError(f"SoftPAG.{what} must be a finite number; got {x!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"SoftPAG.strength (u) must be in [0, 1]; got {self.strength}")
        if self.scope not in SCOPES:
            raise ValueError(f"SoftPAG.scope must be one of {sorted(SCOPES)}; got {self.scope!r}")
        if self.mode not in MODES:
            raise ValueError(f"SoftPAG.mode must be one of {MODES}; got {self.mode!r}")
        try:
            start, stop = (float(s) for s in self.steps)
        except (TypeError, ValueError):
            raise ValueError(f"SoftPAG.steps must be (start, stop) fractions; got {self.steps!r}") from None
        if not 0.0 <= start <= stop <= 1.0:
            raise ValueError(f"SoftPAG.steps needs 0 <= start <= stop <= 1; got {self.steps!r}")
        self.steps = (start, stop)
        self.strength, self.scale = float(self.strength), float(self.scale)

    @property
    def role(self) -> str:
        """Batch role of this control's extra rows."""
        return f"perturbed:{self.name or f'softpag-{id(self):x}'}"

    @property
    def enabled(self) -> bool:
        return self.strength != 0.0 and self.scale != 0.0 and bool(self.heads)

    def step_active(self, step_index: int | None, num_steps: int | None) -> bool:
        """Whether step ``step_index`` of ``num_steps`` is in the window (unknown step: only the full window)."""
        start, stop = self.steps
        if step_index is None or not num_steps:
            return (start, stop) == (0.0, 1.0)
        eps = 1e-9  # 0.3 * 10 = 3.0000000000000004 must still mean 3
        return start * num_steps - eps <= step_index < stop * num_steps - eps

    def step_phase(self, step_index: int | None, num_steps: int | None) -> bool:
        """Whether the step is in the window: a bool that flips at most twice per generation."""
        return self.step_active(step_index, num_steps)

    # --- attach / detach ------------------------------------------------------------------------------------
    pipeline_level = ("adds its guidance term after the pipeline's own classifier-free guidance (it wraps "
                      "scheduler.step)")

    def validate(self, transformer) -> None:
        from ..families import FAMILIES, family_of

        family = family_of(transformer)
        if family.batch_as_list:
            supported = ", ".join(name for name, f in FAMILIES.items() if not f.batch_as_list)
            raise ValueError(f"SoftPAG does not support the {family.name!r} family yet: its transformer takes "
                             f"lists of per-item latents, so perturbed rows cannot be appended; supported: "
                             f"{supported}")
        self.heads.validate(transformer)  # ValueError listing what the model has

    def on_attach(self, attachment) -> None:
        for transformer in attachment.transformers:
            self.validate(transformer)
        self._attachment = attachment
        self._pipeline = attachment.pipeline
        self._pending.clear()
        self._head_cache.clear()
        self._fill_head_cache(attachment)
        if self._pipeline is not None:
            # Now, outside any compiled forward (the forward hook only checks that it is still there).
            self._ensure_step_wrapper()

    def on_detach(self, attachment) -> None:
        self._attachment = None  # the attachment restores scheduler.step itself
        self._pending.clear()
        self._pipeline = None

    def _ensure_step_wrapper(self) -> None:
        """Wrap the pipeline's current ``scheduler.step`` (once per scheduler object; the attachment restores it
        on detach)."""
        scheduler = getattr(self._pipeline, "scheduler", None)
        attachment = getattr(self, "_attachment", None)
        if scheduler is None or attachment is None:
            return

        def wrap(original):
            def step_fold(*args, **kwargs):
                args, kwargs = self._fold(args, kwargs)
                return original(*args, **kwargs)

            return functools.update_wrapper(step_fold, original)

        attachment.wrap(scheduler, "step", wrap, key=self)  # once per scheduler and SoftPAG

    def _fold(self, args, kwargs):
        """Add the pending guidance terms to the model output passed to ``scheduler.step``."""
        pending, self._pending = self._pending, []
        active, seen = self._uncond_flags
        self._uncond_flags = [False, False]
        if self.mode == "uncond" and active and not seen:
            raise ValueError(
                "SoftPAG(mode='uncond') perturbs the unconditional pass, but this pipeline ran without classifier-"
                "free guidance (no uncond rows or call). Turn CFG on (guidance_scale > 1, or true_cfg_scale > 1 with a "
                "negative prompt for FLUX/HunyuanVideo) or use mode='batched'.")
        if not pending:
            return args, kwargs
        delta = pending[0]
        for d in pending[1:]:
            delta = delta + d
        if "model_output" in kwargs:
            kwargs = dict(kwargs)
            kwargs["model_output"] = self._add(kwargs["model_output"], delta)
        else:
            args = (self._add(args[0], delta),) + tuple(args[1:])
        return args, kwargs

    @staticmethod
    def _add(model_output: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if model_output.shape != delta.shape:
            raise RuntimeError(f"SoftPAG: guidance term of shape {tuple(delta.shape)} does not match the model output "
                               f"{tuple(model_output.shape)} passed to scheduler.step; please report this pipeline")
        return (model_output.float() + delta.float()).to(model_output.dtype)

    # --- per forward ----------------------------------------------------------------------------------------
    def before_forward(self, state: ForwardState, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        roles = state.batch_roles
        if not self.enabled or roles is None or not state.phase(self):
            return args, kwargs
        if self._pipeline is not None:
            self._ensure_step_wrapper()
        if self.mode == "uncond":
            self._uncond_flags[0] = True
            if UNCOND in roles:
                self._uncond_flags[1] = True
                state.extra[id(self)] = UNCOND
            return args, kwargs
        cond = [i for i, r in enumerate(roles) if r == COND]
        if not cond:
            return args, kwargs  # the uncond call of a pipeline with separate calls
        if self._pending:
            warnings.warn("SoftPAG: a guidance term was never consumed by scheduler.step (was the scheduler called "
                          "directly?); dropping it", RuntimeWarning, stacklevel=2)
            self._pending.clear()
        runs = _runs(cond)
        if len(runs) != 1:
            raise RuntimeError(f"SoftPAG: cond rows {cond} are not contiguous (batch roles {roles})")
        batch, src = len(roles), runs[0]
        args = tuple(_append_rows(a, batch, src) for a in args)
        kwargs = {k: (v if k in _UNBATCHED else _append_rows(v, batch, src)) for k, v in kwargs.items()}
        state.extra[id(self)] = (self.role, batch, src, tuple(roles))
        state.batch_roles = tuple(roles) + (self.role,) * len(cond)
        return args, kwargs

    def after_forward(self, state: ForwardState, output: Any) -> Any:
        info = state.extra.get(id(self))
        if not isinstance(info, tuple):
            return output
        _, batch, src, roles = info
        sample = _sample_of(output)
        n = src.stop - src.start
        if sample.shape[0] != batch + n:
            raise RuntimeError(f"SoftPAG: expected {batch + n} output rows, got {sample.shape[0]} (another control "
                               "added rows after this one and did not remove them?)")
        keep, pert = sample[:batch], sample[batch:]
        cond = state.extra.get(_RAW_COND)
        if cond is None:  # the raw cond prediction, shared by every SoftPAG term of this forward
            cond = state.extra[_RAW_COND] = keep[src].float().clone()
        delta = self.scale * (cond - pert.float())
        if self._pipeline is not None and getattr(self._pipeline, "scheduler", None) is not None:
            self._pending.append(delta)
        else:
            keep = keep.clone()
            keep[src] = (keep[src].float() + delta).to(keep.dtype)
        return _with_sample(output, keep)

    # --- per attention call ---------------------------------------------------------------------------------
    def _heads_of(self, layout: Layout) -> list[int]:
        key = (layout.module_name, layout.heads, layout.head_offset)
        heads = self._head_cache.get(key)
        if heads is None:
            heads = layout.local_heads(self._heads_at(layout.site, layout.family, layout.model_heads))
            self._head_cache[key] = heads
        return heads

    def _heads_at(self, site, family_name: str | None, n_heads: int) -> list[int]:
        """The (global) heads this control perturbs in the attention module at ``site``, which has ``n_heads``
        heads."""
        from ..families import FAMILIES

        if site is None:
            return []
        main = None
        family = FAMILIES.get(family_name)
        if family is not None:
            main = next((a for bl, a, _ in family.sites if bl == site.block_list), None)
        attr = site.module_name.rsplit(".", 1)[1]
        return self.heads.heads_for(site.block_list, site.block_index, site.layer_index, attr, main, n_heads)

    def _fill_head_cache(self, attachment) -> None:
        """The heads of every attached attention module on one process (all heads, offset 0), now: a compiled
        forward then reads the cache and never adds to it (a dict that grows would be a guard that fails). Under
        context parallelism each process fills its own entries at its first forward."""
        from ..families import attention_modules
        from ..processor import DitAttnProcessor

        for transformer in attachment.transformers:
            for _, module in attention_modules(transformer):
                processor = getattr(module, "processor", None)
                n_heads = getattr(module, "heads", None)
                if isinstance(processor, DitAttnProcessor) and processor.site is not None and isinstance(n_heads, int):
                    key = (processor.site.module_name, n_heads, 0)
                    self._head_cache[key] = self._heads_at(processor.site, processor.family.name, n_heads)

    def applies_to(self, layout: Layout) -> bool:
        return (id(self) in layout.state.extra and layout.kind not in ("cross", "cross_image")
                and bool(self._heads_of(layout)))

    def finish(self, call: AttentionCall, out: torch.Tensor) -> torch.Tensor:
        info = call.layout.state.extra[id(self)]
        role = info if isinstance(info, str) else info[0]
        rows = call.layout.rows(role)
        if not rows:
            return out
        return perturb_output(call, out, rows, self._heads_of(call.layout), self.strength, self.scope)
