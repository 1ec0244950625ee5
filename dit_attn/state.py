"""The transformer-level forward hook that tells processors where the denoising loop is.

:class:`ForwardStateHook` is a diffusers ``ModelHook`` registered on the transformer through its ``HookRegistry``.
Before every forward it fills the shared :class:`~dit_attn.layout.ForwardState`:

* **step index / count**: from diffusers' ``cache_context`` when the pipeline passes them (Wan), else from the
  scheduler's own step counter, else by matching the timestep against ``scheduler.timesteps`` (CogVideoX's
  DDIM); never from call counters, so it holds for any step count and any number of forwards per step;
* **batch roles**: the ``cache_context`` name (``"cond"``/``"uncond"`` for pipelines that run them as separate
  calls: FLUX true-CFG, Wan, HunyuanVideo), or the family's row order when cond and uncond share a forward
  (SD3, CogVideoX) and the pipeline does classifier-free guidance;
* **text length** and a lazy **token grid** from the forward's arguments.

It is *stateful* in diffusers' sense (it holds a ``StateManager``) so that ``cache_context`` reaches it.
Controls' ``before_forward``/``after_forward`` run here, in attach order (after: reverse order).

Under ``torch.compile`` of the transformer this hook runs inside the compiled graph (diffusers' hooks wrap
``forward``), and every Python value it reads becomes a guard. The step facts (:class:`~dit_attn.layout.StepFacts`:
step index, count, and each control's step phase) are therefore computed when the pipeline enters
``cache_context``, which happens outside the transformer call; the compiled forward reads only the phases, so it
is not recompiled at every step. Pipelines without ``cache_context`` (SD3) get the facts computed in the forward
itself: exact, but a compiled transformer is then specialised on the step index for its first steps (see
``docs/compile.md``).
"""

from __future__ import annotations

import inspect
import weakref
from types import SimpleNamespace
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .families import Family, family_of
from .layout import COND, UNCOND, ForwardState, StateBox, StepFacts

HOOK_NAME = "dit_attn_forward_state"


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class _ContextManager(StateManager):
    """diffusers' ``StateManager`` that also tells the hook when the pipeline enters or leaves a ``cache_context``
    (``set_context`` in newer diffusers, ``_set_context`` before): that happens outside the transformer call, so
    outside the graph of a compiled transformer."""

    def __init__(self, on_change):
        super().__init__(_NoState)
        self._on_change = on_change

    def set_context(self, context) -> None:
        super().set_context(context)
        self._on_change()

    def _set_context(self, name) -> None:  # diffusers releases that keep only the name
        super()._set_context(name)
        self._on_change()

    def reset(self, *args, **kwargs) -> None:
        super().reset(*args, **kwargs)
        self._on_change()


class ForwardStateHook(ModelHook):
    _is_stateful = True

    def __init__(self, family: Family, controls: list, pipeline=None):
        super().__init__()
        self.family = family
        self.controls = controls
        self.box = StateBox(family.name)
        self.context_manager = _ContextManager(self._context_changed)  # receives diffusers' cache_context
        self._pipeline_ref = weakref.ref(pipeline) if pipeline is not None else None
        self._params: list[str] | None = None
        self._forwards_in_step: tuple[int | None, int] = (None, 0)
        # Set when the pipeline enters a cache_context (outside a compiled transformer): its name and step facts.
        self._context_name: str | None = None
        self._context_facts: StepFacts | None = None
        # (argument name, tensor, grid) read outside a compiled transformer (see remember_grid).
        self._known_grids: list[tuple[str, torch.Tensor, tuple]] = []

    @property
    def pipeline(self):
        return self._pipeline_ref() if self._pipeline_ref is not None else None

    def set_pipeline(self, pipeline) -> None:
        self._pipeline_ref = weakref.ref(pipeline) if pipeline is not None else None

    @property
    def state(self) -> ForwardState:
        return self.box.current

    def reset_state(self, module):
        self.box.current = ForwardState(family=self.family.name)
        return module

    def initialize_hook(self, module):
        # Read the forward's parameter names now (when the hook is registered), not in the first forward: a
        # compiled forward that sets them would be recompiled at the next call.
        self._params = list(inspect.signature(type(module).forward).parameters)[1:]
        return module

    # ------------------------------------------------------------------------------------------------------------
    def _bind(self, module, args, kwargs) -> dict[str, Any]:
        if self._params is None:
            # The class's forward: before diffusers 0.40 the HookRegistry's wrapper shows (*args, **kwargs).
            self._params = list(inspect.signature(type(module).forward).parameters)[1:]
        bound = dict(zip(self._params, args))
        bound.update(kwargs)
        return bound

    def installed(self, module) -> bool:
        """Whether this hook's processors are in the transformer (a user who put the stock processors back with
        ``set_attn_processor`` leaves the hook behind: it then does nothing, and ``attach`` replaces it)."""
        from .families import attention_sites

        site = next(attention_sites(module, self.family), None)
        processor = getattr(site.module, "processor", None) if site is not None else None
        # Only dit_attn's processors hold this hook's box (compared by identity: the processor module imports
        # this one, so this one does not import it back).
        return getattr(processor, "state_box", None) is self.box

    def pre_forward(self, module, *args, **kwargs):
        if not self.installed(module):
            self.box.current = ForwardState(family=self.family.name)
            return args, kwargs
        state = ForwardState(family=self.family.name)
        self.box.current = state
        inputs = self._bind(module, args, kwargs)
        for usual, name in self.family.arguments.items():  # e.g. Z-Image's ``x`` is the usual ``hidden_states``
            if name in inputs:
                inputs.setdefault(usual, inputs[name])
        hidden_states = inputs.get("hidden_states")
        state.timestep = inputs.get("timestep")
        # Read only what the cache_context entry left (the name and step facts), not the context itself: its
        # step index would be a guard of a compiled forward.
        state.context, facts = self._context_name, self._context_facts
        if facts is None:  # no cache_context, or a step found only from the timestep (CogVideoX's DDIM)
            facts = self._facts(_cache_context(self.context_manager), state.timestep)
        state.step = facts
        state.text_len = self.family.text_length(inputs)
        if isinstance(hidden_states, torch.Tensor):
            batch = hidden_states.shape[0]
        else:  # a list of per-item latents (Z-Image)
            batch = len(hidden_states) if isinstance(hidden_states, (list, tuple)) else None
        state.batch_roles = self._roles(state.context, batch, facts)
        family, kw, known = self.family, dict(inputs), self._known_grids

        def grid():
            if torch.compiler.is_compiling():  # asked for by compiled code (the whole model or its blocks)
                # Reading a grid from a tensor's contents (FLUX's ``img_ids``) cannot be traced: take the grid
                # read outside the graph for this very tensor, if there is one.
                return _known_grid(known, kw) or family.grid(module, kw, hidden_states)
            return family.grid(module, kw, hidden_states)

        state.grid_fn = grid
        state.in_forward = True
        for control in self.controls:
            args, kwargs = control.before_forward(state, args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        if not self.state.in_forward:  # not installed: pre_forward did nothing either
            return output
        for control in reversed(self.controls):
            output = control.after_forward(self.state, output)
        self.state.in_forward = False
        return output

    def remember_grid(self, module, name: str, tensor: torch.Tensor) -> None:
        """Read the token grid from forward argument ``name`` = ``tensor`` now, outside the transformer call, so that
        a compiled forward given this very tensor finds it (grids read from tensor contents, such as FLUX's
        ``img_ids``, cannot be traced). Called by :func:`dit_attn.attach` when the pipeline prepares its latents."""
        grid = self.family.grid(module, {name: tensor}, None)
        self._known_grids = [(name, tensor, grid)] if grid is not None else []

    # ------------------------------------------------------------------------------------------------------------
    def _context_changed(self) -> None:
        """The pipeline entered or left a ``cache_context``: compute this context's step facts now, outside the
        transformer call (``None`` when the step needs the forward's timestep)."""
        ctx = _cache_context(self.context_manager)
        self._context_name = ctx.name if ctx is not None else None
        self._context_facts = None
        if ctx is not None and self._step_known_without_timestep(ctx):
            self._context_facts = self._facts(ctx, None)

    def _step_known_without_timestep(self, ctx) -> bool:
        scheduler = getattr(self.pipeline, "scheduler", None)
        return ctx.step_index is not None or scheduler is None or hasattr(scheduler, "_step_index")

    def _facts(self, ctx, timestep) -> StepFacts:
        """Step index, count and every control's step phase (controls without one are left out)."""
        from .controls.base import Control

        step, num_steps = self._step(ctx, timestep)
        phases = {id(c): c.step_phase(step, num_steps) for c in self.controls
                  if type(c).step_phase is not Control.step_phase}
        return StepFacts(step, num_steps, phases)

    def _step(self, ctx, timestep) -> tuple[int | None, int | None]:
        pipe = self.pipeline
        scheduler = getattr(pipe, "scheduler", None)
        num_steps = getattr(ctx, "num_inference_steps", None)
        if num_steps is None and pipe is not None and isinstance(getattr(pipe, "_num_timesteps", None), int):
            num_steps = pipe._num_timesteps
        if num_steps is None and scheduler is not None and getattr(scheduler, "timesteps", None) is not None:
            num_steps = len(scheduler.timesteps) // max(int(getattr(scheduler, "order", 1)), 1)
        if ctx is not None and ctx.step_index is not None:
            return ctx.step_index, num_steps
        if scheduler is None:
            return None, num_steps
        if hasattr(scheduler, "_step_index"):
            # Counters of the FlowMatch family: None until the first ``step()`` (step 0), then the index.
            index = scheduler._step_index
            if index is None:
                index = getattr(scheduler, "_begin_index", None) or 0
            return int(index), num_steps
        return self._match_timestep(scheduler, timestep), num_steps

    def _match_timestep(self, scheduler, timestep) -> int | None:
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or not isinstance(timestep, torch.Tensor) or timestep.numel() == 0:
            return None
        # One host read per forward (not per attention call): the scheduler's timesteps live on the host side.
        t = float(timestep.flatten().max()) * self.family.timestep_scale
        ts = timesteps.detach().float().cpu()
        return int((ts - t).abs().argmin())

    def _roles(self, context: str | None, batch: int | None, facts: StepFacts) -> tuple[str, ...] | None:
        if batch is None:
            return None
        if context in ("cond", "pred_cond"):  # HunyuanVideo 1.5's guider names them pred_cond / pred_uncond
            return (COND,) * batch
        if context in ("uncond", "pred_uncond"):
            return (UNCOND,) * batch
        pipe = self.pipeline
        cfg = False
        if pipe is not None:
            # SD3 has a `do_classifier_free_guidance` property; CogVideoX only keeps the guidance scale.
            flag = getattr(pipe, "do_classifier_free_guidance", None)
            scale = getattr(pipe, "_guidance_scale", None)
            cfg = bool(flag) if isinstance(flag, bool) else (isinstance(scale, (int, float)) and scale > 1)
        if not cfg:
            return (COND,) * batch
        if self.family.cfg == "batched" and context in ("cond_uncond", None) and batch % 2 == 0:
            first, second = self.family.cfg_order
            return (first,) * (batch // 2) + (second,) * (batch // 2)
        if self.family.cfg == "separate" and context is None and facts.step_index is not None:
            step = facts.step_index
            # Pipelines that run cond and uncond as separate forwards without naming them (Chroma): the k-th
            # forward of a denoising step has the k-th role of the family's order.
            last_step, count = self._forwards_in_step
            count = count + 1 if last_step == step else 0
            self._forwards_in_step = (step, count)
            return (self.family.cfg_order[count % 2],) * batch
        return (COND,) * batch


def _known_grid(known: list, inputs: dict):
    """The grid remembered for the very tensor this forward got (an identity test, which torch.compile traces)."""
    for name, tensor, grid in known:
        if inputs.get(name) is tensor:
            return grid
    return None


def _cache_context(manager: StateManager):
    """The ``cache_context`` the pipeline set: a ``CacheContext`` (name, step_index, num_inference_steps) in newer
    diffusers; older releases keep only its name (``_current_context``), returned here as a context without step
    facts. ``None`` when no context is set."""
    ctx = getattr(manager, "_context", None)
    if ctx is not None:
        return ctx
    name = getattr(manager, "_current_context", None)
    return None if name is None else SimpleNamespace(name=name, step_index=None, num_inference_steps=None)


def ensure_forward_hook(transformer: torch.nn.Module, controls: list | None = None, pipeline=None) -> ForwardStateHook:
    """The transformer's dit_attn forward hook, registered if it is not there yet.

    When the hook exists, its control list is replaced in place by ``controls`` (if given).
    """
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    hook = registry.get_hook(HOOK_NAME)
    if hook is None:
        hook = ForwardStateHook(family_of(transformer), list(controls or []), pipeline)
        registry.register_hook(hook, HOOK_NAME)
        # Newer diffusers cache child registries; older releases have no such cache (and no method).
        invalidate = getattr(registry, "invalidate_child_registries_cache", None)
        if invalidate is not None:
            invalidate()
    else:
        if controls is not None:
            hook.controls[:] = controls
        if pipeline is not None:
            hook.set_pipeline(pipeline)
    return hook


def remove_forward_hook(transformer: torch.nn.Module) -> None:
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)
