"""Prompt emphasis: ``(word:1.5)`` applied in the attention logits.

In ``mode="attention"`` (default) the weight ``w`` of a text token becomes ``log w`` added to the logits of that
text key, which is exactly "multiply the attention probabilities of that key by ``w`` and renormalise"
(``w = 0`` removes the key). By default only image/video query rows get the bias, so text rows stay stock. The
embedding modes scale the text-encoder output instead, as mainstream tools do, for comparison:

* ``"embedding-a1111"``: ``z ← z·w``, then rescale so the mean of ``z`` is unchanged;
* ``"embedding-comfy"``: ``z ← z_empty + w·(z − z_empty)``, ``z_empty`` = the encoding of the empty prompt.

How prompts reach the processors: on attach the control wraps the pipeline's ``encode_prompt`` (restored on
detach) so that the text encoders only ever see the clean prompt; it keeps the per-token weights of each encoded
prompt, keyed by the embeddings tensor the pipeline got back. The transformer's forward hook then finds the
weights of the ``encoder_hidden_states`` it receives (separate cond/uncond calls: FLUX true-CFG, Wan,
HunyuanVideo) or, for batched CFG (SD3, CogVideoX), gives cond rows the prompt's weights and uncond rows the
negative prompt's.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..call import AttentionCall
from ..layout import COND, UNCOND, ForwardState, Layout
from ..tensor_memo import TensorMemo
from .base import Control

_POSITIVE_ARGS = ("prompt", "prompt_2", "prompt_3")
_NEGATIVE_ARGS = ("negative_prompt", "negative_prompt_2", "negative_prompt_3")
MODES = ("attention", "embedding-a1111", "embedding-comfy")
_MAX_RECORDED = 8  # encoded prompts remembered (a pipeline call encodes one or two)
QUERIES = ("image", "all")


def _as_list(p):
    return [p] if isinstance(p, str) else list(p)


@dataclass
class Emphasis(Control):
    """Prompt emphasis syntax (``(word:1.5)``, ``(word)``, ``[word]``) for every supported pipeline.

    Args:
        mode: ``"attention"`` (logit bias, default), ``"embedding-a1111"`` or ``"embedding-comfy"``.
        queries: ``"image"`` (only image/video query rows get the bias) or ``"all"``.
        layers: restrict to these layers: flat layer indices (ints) or block-list names (e.g.
            ``"single_transformer_blocks"``); ``None`` = all layers.
        schedule: maps denoising progress in [0, 1) to a multiplier of ``log w`` (e.g. ``lambda p: 1 - p``).

    Example:
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("flux")
        >>> kwargs = tiny_call_kwargs("flux")
        >>> kwargs["prompt"] = "a (red:1.5) circle above a [blue] square"
        >>> with dit_attn.attach(pipe, dit_attn.Emphasis()):
        ...     image = pipe(**kwargs).images[0]
    """

    mode: str = "attention"
    queries: str = "image"
    layers: Sequence[int | str] | None = None
    schedule: Callable[[float], float] | None = None
    _by_embeds: dict = field(default_factory=dict, init=False, repr=False)
    _last: dict = field(default_factory=dict, init=False, repr=False)
    _last_active: dict = field(default_factory=dict, init=False, repr=False)  # role -> per row: any weight != 1
    # The last two encodings recorded, (embeds, weights, per-row activity): one pipeline call's prompt and negative
    # prompt. A compiled forward matches its text against these by content (see _weights_traced).
    _recent: list = field(default_factory=list, init=False, repr=False, compare=False)
    _matched: TensorMemo = field(default_factory=TensorMemo, init=False, repr=False, compare=False)  # by text
    _encode_prompt: object = field(default=None, init=False, repr=False, compare=False)  # the unwrapped one

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Emphasis.mode must be one of {MODES}, got {self.mode!r}")
        if self.queries not in QUERIES:
            raise ValueError(f"Emphasis.queries must be one of {QUERIES}, got {self.queries!r}")
        if self.layers is not None:
            bad = [x for x in self.layers if not isinstance(x, (int, str)) or isinstance(x, bool)]
            if bad:
                raise ValueError(f"Emphasis.layers takes layer indices (int) or block-list names (str); got {bad}")

    ring_parallel = True  # a per-key bias: exact on gathered keys under ring attention
    pipeline_level = ("strips the emphasis syntax before the text encoders and keeps each token's weight (it wraps "
                      "the pipeline's encode_prompt)")

    # --- pipeline level: strip the syntax before the text encoders, keep the weights ------------------------
    def on_attach(self, attachment) -> None:
        from ..prompt import TEXT_LAYOUTS, text_layout_of

        pipe = attachment.pipeline
        if pipe is None or not hasattr(pipe, "encode_prompt"):
            return  # attached to a bare transformer: nothing to parse (weights can be set with set_weights)
        if text_layout_of(pipe) is None:
            raise ValueError(
                f"Emphasis does not support {type(pipe).__name__} yet (its text sequence is laid out per row or "
                f"through a processor it does not know); supported pipelines: {', '.join(TEXT_LAYOUTS)}")
        signature = inspect.signature(pipe.encode_prompt)

        def wrap(original):
            @functools.wraps(original)
            def encode_prompt(*args, **kwargs):
                bound = signature.bind_partial(*args, **kwargs)
                weights = {}
                for names, role in ((_POSITIVE_ARGS, COND), (_NEGATIVE_ARGS, UNCOND)):
                    for name in names:
                        value = bound.arguments.get(name)
                        if value is None:
                            continue
                        parsed = [self._parse(p) for p in _as_list(value)]
                        clean = [p.text for p in parsed]
                        bound.arguments[name] = clean[0] if isinstance(value, str) else clean
                        if name == names[0]:
                            weights[role] = parsed
                result = original(*bound.args, **bound.kwargs)
                full = signature.bind_partial(*bound.args, **bound.kwargs)
                full.apply_defaults()  # the pipeline's own defaults (max_sequence_length, prompt_template...)
                self._record(pipe, result, weights, full)
                return result

            return encode_prompt

        self._encode_prompt = attachment.wrap(pipe, "encode_prompt", wrap)

    def on_detach(self, attachment) -> None:
        self._encode_prompt = None  # the attachment restores pipe.encode_prompt
        self._by_embeds.clear()
        self._last.clear()
        self._last_active.clear()
        self._recent = []
        self._matched.clear()

    def prompt_as_encoded(self, text: str) -> str:
        """The text the text encoders see for ``text`` while attached (the syntax stripped): controls that locate
        words in the prompt (``MultiCondition`` keywords) read positions from this text."""
        return self._parse(text).text

    @staticmethod
    def _parse(text):
        from ..prompt import parse_emphasis

        return parse_emphasis(text)

    def _token_weights(self, pipe, parsed, args: dict, repeat: int, length: int) -> torch.Tensor:
        from ..prompt import pipeline_text_weights

        rows = [pipeline_text_weights(pipe, p, max_sequence_length=args.get("max_sequence_length"),
                                      prompt_template=args.get("prompt_template"), length=length) for p in parsed]
        w = torch.stack(rows)  # [n_prompts, T]
        return w.repeat_interleave(repeat, dim=0)

    def _record(self, pipe, result, weights, bound) -> None:
        repeat = bound.arguments.get("num_images_per_prompt") or bound.arguments.get("num_videos_per_prompt") or 1
        tensors = [r for r in (result if isinstance(result, tuple) else (result,)) if isinstance(r, torch.Tensor)]
        # encode_prompt returns sequence embeddings first; with a negative prompt argument, the negative ones are
        # the next 3-D tensor of the same sequence length.
        seq = [t for t in tensors if t.dim() == 3]
        for role, embeds in zip((COND, UNCOND), seq[:2] if UNCOND in weights else seq[:1]):
            parsed = weights.get(role)
            if parsed is None:
                continue
            w = self._token_weights(pipe, parsed, bound.arguments, repeat, embeds.shape[1])
            if w.shape[1] != embeds.shape[1]:
                raise RuntimeError(
                    f"Emphasis: {w.shape[1]} token weights for a text sequence of {embeds.shape[1]} tokens "
                    f"({type(pipe).__name__}); please report this")
            if self.mode != "attention":
                self._reweight_embeddings(pipe, embeds, w, bound)
            # Weights live on the text's device and their activity is read here, on the CPU: the per-forward and
            # per-attention-call code then never copies to the GPU or reads from it (both wait for the GPU).
            active = tuple((w != 1).any(dim=1).tolist())  # per row
            w = w.to(embeds.device)
            self._by_embeds[embeds.data_ptr()] = (embeds, w, active)
            while len(self._by_embeds) > _MAX_RECORDED:  # oldest first (dicts keep insertion order)
                self._by_embeds.pop(next(iter(self._by_embeds)))
            self._last[role] = w
            self._last_active[role] = active
            self._recent = (self._recent + [(embeds, w, active)])[-2:]  # a new list: compiled code guards on it
            self._matched.clear()

    def _reweight_embeddings(self, pipe, embeds: torch.Tensor, w: torch.Tensor, bound) -> None:
        w = w.to(embeds.device, embeds.dtype)[..., None]
        if self.mode == "embedding-a1111":
            mean = embeds.mean(dim=(1, 2), keepdim=True)
            scaled = embeds * w
            embeds.copy_(scaled * (mean / scaled.mean(dim=(1, 2), keepdim=True)))
        else:  # embedding-comfy: lerp from the empty-prompt encoding
            empty = self._empty_embeds(pipe, embeds, bound)
            embeds.copy_(empty + w * (embeds - empty))

    def _empty_embeds(self, pipe, like: torch.Tensor, bound) -> torch.Tensor:
        args = dict(bound.arguments)
        for name in _POSITIVE_ARGS + _NEGATIVE_ARGS:
            if name in args and args[name] is not None:
                args[name] = ""
        for name in ("num_images_per_prompt", "num_videos_per_prompt"):
            if name in args:
                args[name] = 1
        original = self._encode_prompt or pipe.encode_prompt
        with torch.no_grad():
            result = original(**args)
        tensors = result if isinstance(result, tuple) else (result,)
        empty = next(t for t in tensors if isinstance(t, torch.Tensor) and t.dim() == 3)
        return empty[:1].to(like.dtype)

    def set_weights(self, cond: torch.Tensor, uncond: torch.Tensor | None = None) -> None:
        """Give token weights directly (``[batch or 1, text_len]``), e.g. when attached to a bare transformer."""
        self._last = {COND: cond} if uncond is None else {COND: cond, UNCOND: uncond}
        self._last_active = {role: tuple((torch.as_tensor(w) != 1).reshape(w.shape[0], -1).any(dim=1).tolist())
                             for role, w in self._last.items()}
        self._recent = []

    def step_phase(self, step_index: int | None, num_steps: int | None) -> torch.Tensor | None:
        """The schedule's multiplier of ``log w`` at this step, as a 0-d float32 tensor (a compiled transformer
        takes it as an input instead of recompiling for each step's number); ``None`` without a schedule."""
        if self.schedule is None or step_index is None or not num_steps:
            return None
        return torch.tensor(float(self.schedule(step_index / num_steps)), dtype=torch.float32)

    # --- per forward: pick the weights of this forward's text ------------------------------------------------
    def before_forward(self, state: ForwardState, args, kwargs):
        state.extra.pop(id(self), None)
        if self.mode != "attention":
            return args, kwargs
        text = kwargs.get("encoder_hidden_states")
        roles = state.batch_roles or ()
        if torch.compiler.is_compiling():
            weights, active = self._weights_traced(text, roles)
        else:
            weights, active = self._weights_eager(text, roles)
        if weights is not None and active:
            state.extra[id(self)] = weights
        return args, kwargs

    def _weights_eager(self, text, roles) -> tuple[torch.Tensor | None, bool]:
        """This forward's weights: those recorded for this very text tensor, else matched by content, else by
        batch role."""
        if isinstance(text, torch.Tensor) and text.data_ptr() in self._by_embeds:
            _, weights, flags = self._by_embeds[text.data_ptr()]
            return weights, any(flags)
        # matched once per text tensor: pipelines pass the same cat([neg, pos]) at every step, and matching by
        # content reads from the GPU
        if isinstance(text, torch.Tensor) and (matched := self._matched.get(text, self._match_rows)):
            return matched
        return self._weights_by_role(roles)

    def _weights_by_role(self, roles) -> tuple[torch.Tensor | None, bool]:
        """Weights from the last prompt recorded for each batch role (cond rows: the prompt's, uncond rows: the
        negative prompt's)."""
        if not self._last:
            return None, False
        rows, seen, active = [], {}, False
        for role in roles:
            key = role if role in self._last else COND
            source = self._last.get(key)
            i = seen.get(role, 0)
            seen[role] = i + 1
            rows.append(source[i % source.shape[0]] if source is not None else None)
            flags = self._last_active.get(key)
            active = active or (flags[i % len(flags)] if flags else True)
        if rows and all(r is not None for r in rows):
            return torch.stack(rows), active
        return None, active

    def _weights_traced(self, text, roles) -> tuple[torch.Tensor | None, bool]:
        """This forward's weights in tensor operations only, for a compiled transformer (a tensor's address and
        ``torch.equal`` cannot be traced): each text row takes the weights of the recently recorded row equal to
        it (``torch.where`` on an element-wise comparison), else its batch role's. Whether emphasis acts at all
        is read from the recorded activity (Python values that change only with the prompts), so a forward whose
        own text has no emphasis gets a zero bias instead of the stock call (equal up to rounding)."""
        weights, active = self._weights_by_role(roles)
        recent = self._recent
        for _, _, flags in recent:
            active = active or any(flags)
        if not active or not isinstance(text, torch.Tensor):
            return weights, active
        for embeds, w, _ in recent:
            if embeds.shape[1:] != text.shape[1:] or embeds.device != text.device:
                continue
            if weights is None:
                weights = torch.ones(text.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
            for j in range(embeds.shape[0]):
                same = (embeds[j] == text).flatten(1).all(dim=1)  # [B]: text row r is recorded row j
                weights = torch.where(same[:, None], w[j], weights)
        return weights, active

    def _match_rows(self, text: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
        """Weights for a text batch assembled from recorded encodings (SD3/CogVideoX's ``cat([neg, pos])``,
        rows copied by other controls such as SoftPAG): each row is matched by content to a recorded row. One
        comparison per row and recorded prompt, once per forward (not per attention call)."""
        rows, active = [], False
        for r in range(text.shape[0]):
            found = [(w[j], flags[j]) for embeds, w, flags in self._by_embeds.values()
                     if embeds.shape[1:] == text.shape[1:] and embeds.device == text.device
                     for j in range(embeds.shape[0]) if torch.equal(embeds[j], text[r])]
            if not found or any(not torch.equal(f, found[0][0]) for f, _ in found[1:]):
                return None  # unknown, or the same text with different weights (e.g. prompt = negative prompt)
            rows.append(found[0][0])
            active = active or found[0][1]
        return torch.stack(rows), active

    # --- per attention call ------------------------------------------------------------------------------
    def applies_to(self, layout: Layout) -> bool:
        if self.mode != "attention" or "text" not in layout.key_segments or id(self) not in layout.state.extra:
            return False
        if self.layers is None:
            return True
        return layout.layer_index in self.layers or layout.block_list in self.layers

    def bias(self, layout: Layout, num_keys: int, device) -> torch.Tensor:
        """The key bias ``[B, 1, Nk]``: ``log w`` (times the schedule) on the text keys, 0 elsewhere."""
        weights = layout.state.extra[id(self)].to(device=device, dtype=torch.float32)
        start, stop = layout.key_segments["text"]
        if weights.shape[1] != stop - start:
            raise RuntimeError(f"Emphasis: {weights.shape[1]} token weights for {stop - start} text keys in "
                               f"{layout.module_name}")
        log_w = torch.log(weights)  # w = 0 → -inf: the key is removed
        multiplier = layout.state.phase(self) if self.schedule is not None else None
        if multiplier is not None:
            log_w = log_w * multiplier  # a 0-d CPU tensor: a scalar argument, no copy
        if weights.shape[0] != layout.batch_size:
            log_w = self._rows_for_roles(log_w, layout.batch_roles)
        bias = torch.zeros(layout.batch_size, 1, num_keys, device=device)
        bias[:, 0, start:stop] = log_w
        return bias

    @staticmethod
    def _rows_for_roles(log_w: torch.Tensor, roles: tuple[str, ...]) -> torch.Tensor:
        """Weights of a forward's original rows, extended to rows other controls added after them.

        Perturbed-guidance rows (role ``"perturbed:..."``, appended by SoftPAG as copies of the cond rows, in order)
        get the weights of the cond row they copy, whichever control was attached first.
        """
        base = [i for i, r in enumerate(roles) if not r.startswith("perturbed")]
        if log_w.shape[0] == len(base) and len(base) < len(roles):
            cond = [j for j, i in enumerate(base) if roles[i] == COND] or list(range(len(base)))
            rows, seen, position = [], {}, {i: j for j, i in enumerate(base)}
            for i, role in enumerate(roles):
                if role.startswith("perturbed"):
                    k = seen.get(role, 0)
                    seen[role] = k + 1
                    rows.append(cond[k % len(cond)])
                else:
                    rows.append(position[i])
            return torch.stack([log_w[i] for i in rows])  # integer views: no index tensor to copy to the GPU
        if log_w.shape[0] == 1:
            return log_w.expand(len(roles), -1)
        return log_w.repeat(math.ceil(len(roles) / log_w.shape[0]), 1)[: len(roles)]

    def prepare(self, call: AttentionCall) -> AttentionCall:
        layout = call.layout
        call.add_key_bias(self.bias(layout, call.key.shape[1], call.key.device))
        if self.queries == "image" and "text" in layout.query_segments:
            call.key_bias_rows = layout.query_slice("image")
        return call
