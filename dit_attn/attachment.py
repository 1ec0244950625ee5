"""``dit_attn.attach``: install processors and hooks on a pipeline or transformer, and restore them exactly.

:class:`Attachment` records every object it replaces (the original processors, the same objects) and everything
it adds (the forward hook), and ``detach()`` restores them in reverse order, also when a generation raised inside
``with dit_attn.attach(...):``.
"""

from __future__ import annotations

import functools

import torch

from .families import family_of, processors_of, set_processors
from .processor import build_processors
from .state import HOOK_NAME, ensure_forward_hook, remove_forward_hook

_TRANSFORMER_ATTRS = ("transformer", "transformer_2")  # Wan 2.2 has a second (low-noise) expert


def _compiled_from(module: torch.nn.Module) -> torch.nn.Module:
    """The module a ``torch.compile(module)`` wrapper (``OptimizedModule``) compiles, else ``module`` itself: the
    processors and the forward hook go on that module, and its compiled code is traced again at the next call
    (Dynamo guards on the module's processors and forward)."""
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else module


def _transformers_of(target) -> tuple[list[torch.nn.Module], object]:
    if isinstance(target, torch.nn.Module):
        return [_compiled_from(target)], None
    found = [_compiled_from(getattr(target, a)) for a in _TRANSFORMER_ATTRS
             if isinstance(getattr(target, a, None), torch.nn.Module)]
    if not found:
        raise ValueError(
            f"dit_attn.attach expects a diffusers pipeline with a `transformer` or a transformer model; "
            f"got {type(target).__name__}"
        )
    return found, target


class _Installed:
    """What was changed on one transformer, to undo it exactly."""

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer
        self.original_processors = processors_of(transformer)
        self.had_registry = hasattr(transformer, "_diffusers_hook")
        self.had_forward_attr = "forward" in transformer.__dict__
        self.forward_attr = transformer.__dict__.get("forward")
        self.hook = None


class Attachment:
    """Controls attached to a pipeline or transformer. Returned by :func:`attach`; also a context manager.

    ``controls`` is the live list the processors read: append or remove controls, or change their fields,
    between pipeline calls.

    Example (tiny FLUX: 5 attention modules x 2 steps x 2 forwards per step for true CFG = 20 calls):
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("flux")
        >>> stock = dict(pipe.transformer.attn_processors)
        >>> recorder = dit_attn.Recorder()
        >>> attachment = dit_attn.attach(pipe, recorder)
        >>> attachment.attached, len(attachment.transformers)
        (True, 1)
        >>> images = pipe(**tiny_call_kwargs("flux")).images
        >>> len(recorder.layouts)
        20
        >>> attachment.controls.remove(recorder)  # the live list: the next call runs without it
        >>> attachment.detach()
        >>> attachment
        Attachment(FluxPipeline, controls=[], detached)
        >>> all(pipe.transformer.attn_processors[name] is proc for name, proc in stock.items())
        True
    """

    def __init__(self, target, controls: list):
        self.target = target
        self.controls: list = list(controls)
        self.pipeline = None
        self._installed: list[_Installed] = []
        # (object, attribute, had an instance attribute, its value, original, key)
        self._wrapped: list[tuple] = []
        self.attached = False

    # ------------------------------------------------------------------------------------------------------------
    def wrap(self, obj, name: str, make_wrapper, key=None):
        """Replace ``obj.<name>`` by ``make_wrapper(original)`` until :meth:`detach`, and return the original.

        The one way controls change pipeline-level objects (``pipe.encode_prompt``, ``pipe.check_inputs``,
        ``scheduler.step``). ``detach`` undoes every wrap in reverse order, exactly: an instance attribute that
        was there before comes back as the same object; otherwise the instance attribute is removed and the
        class attribute shows again. Wraps stack: two controls may each wrap the same attribute. With ``key``
        (e.g. the control itself), a second wrap of the same attribute under the same key does nothing.

        Example:
            >>> import dit_attn, types
            >>> obj = types.SimpleNamespace(greet=lambda: "hi")
            >>> before = obj.greet
            >>> attachment = dit_attn.Attachment(obj, [])
            >>> original = attachment.wrap(obj, "greet", lambda f: (lambda: f().upper()))
            >>> obj.greet(), original is before
            ('HI', True)
            >>> attachment.unwrap_all()
            >>> obj.greet is before
            True
        """
        for o, n, _, _, original, k in self._wrapped:
            if o is obj and n == name and key is not None and k is key:
                return original
        instance = getattr(obj, "__dict__", {})
        had = name in instance
        previous = instance.get(name)
        original = getattr(obj, name)
        wrapper = make_wrapper(original)
        setattr(obj, name, wrapper)
        self._wrapped.append((obj, name, had, previous, original, key))
        return original

    def original(self, obj, name: str):
        """What ``obj.<name>`` was before :meth:`wrap` (the attribute itself when it is not wrapped)."""
        for o, n, _, _, original, _ in self._wrapped:
            if o is obj and n == name:
                return original  # the first wrap's original: what was there before any control
        return getattr(obj, name)

    def unwrap_all(self) -> None:
        """Undo every :meth:`wrap`, newest first (``detach`` calls this)."""
        while self._wrapped:
            obj, name, had, previous, _, _ = self._wrapped.pop()
            if had:
                setattr(obj, name, previous)
            else:
                try:
                    delattr(obj, name)
                except AttributeError:
                    pass

    # ------------------------------------------------------------------------------------------------------------
    def _install(self) -> None:
        transformers, self.pipeline = _transformers_of(self.target)
        for transformer in transformers:
            family_of(transformer)  # ValueError naming the supported families
            registry = getattr(transformer, "_diffusers_hook", None)
            hook = registry.get_hook(HOOK_NAME) if registry is not None else None
            if hook is not None and not hook.installed(transformer):
                remove_forward_hook(transformer)  # left by make_processors after the stock processors came back
            elif hook is not None:
                raise RuntimeError(
                    f"dit_attn is already attached to this {type(transformer).__name__}; call detach() on the "
                    "existing Attachment (or leave its `with` block) before attaching again"
                )
        try:
            for transformer in transformers:
                record = _Installed(transformer)
                self._installed.append(record)
                record.hook = ensure_forward_hook(transformer, pipeline=self.pipeline)
                record.hook.controls = self.controls  # share the live list
                set_processors(transformer, build_processors(transformer, self.controls, record.hook.box))
            self.attached = True
            self._remember_grids()
            for control in self.controls:
                control.on_attach(self)
        except BaseException:
            self.detach()
            raise

    def _remember_grids(self) -> None:
        """FLUX-style pipelines give the token grid only as position ids (``img_ids``), whose contents a compiled
        transformer cannot read: wrap ``prepare_latents`` (which returns those ids, once per generation) so that
        the forward hook reads the grid there, outside the compiled graph."""
        pipe = self.pipeline
        if pipe is None or not hasattr(pipe, "prepare_latents"):
            return
        hooks = [(r.transformer, r.hook) for r in self._installed if family_of(r.transformer).flux_architecture]
        if not hooks:
            return

        def wrap(original):
            @functools.wraps(original)
            def prepare_latents(*args, **kwargs):
                result = original(*args, **kwargs)
                for part in result if isinstance(result, tuple) else (result,):
                    # position ids: [tokens, axes] (3 axes for FLUX and Chroma, 4 for FLUX.2)
                    if isinstance(part, torch.Tensor) and part.dim() == 2 and part.shape[-1] in (3, 4):
                        for transformer, hook in hooks:
                            hook.remember_grid(transformer, "img_ids", part)
                return result

            return prepare_latents

        self.wrap(pipe, "prepare_latents", wrap)

    def detach(self) -> None:
        """Restore the original processors (the very same objects) and remove the hooks. Safe to call twice."""
        if not self._installed:
            return
        if self.attached:
            for control in reversed(self.controls):
                control.on_detach(self)
        self.unwrap_all()
        for record in reversed(self._installed):
            t = record.transformer
            set_processors(t, record.original_processors)
            remove_forward_hook(t)
            if record.had_forward_attr:
                t.__dict__["forward"] = record.forward_attr
            else:
                t.__dict__.pop("forward", None)
            if not record.had_registry and not getattr(t, "_diffusers_hook").hooks:
                del t._diffusers_hook
        self._installed.clear()
        self.attached = False

    # ------------------------------------------------------------------------------------------------------------
    @property
    def transformers(self) -> list[torch.nn.Module]:
        return [r.transformer for r in self._installed]

    @property
    def state(self):
        """The :class:`~dit_attn.layout.ForwardState` of the (first) transformer."""
        return self._installed[0].hook.state if self._installed else None

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def __repr__(self) -> str:
        status = "attached" if self.attached else "detached"
        return f"Attachment({type(self.target).__name__}, controls={self.controls!r}, {status})"


def attach(target, *controls) -> Attachment:
    """Attach dit_attn controls to a diffusers pipeline or transformer.

    Every supported attention module gets a :class:`~dit_attn.processor.DitAttnProcessor`; with no controls the
    output equals stock. Supported families: SD3/SD3.5, FLUX.1, Wan 2.1/2.2, HunyuanVideo, CogVideoX.

    Args:
        target: a diffusers pipeline (its ``transformer``, and ``transformer_2`` for Wan 2.2, are used) or a
            transformer model.
        *controls: control objects (:class:`dit_attn.Control` subclasses).

    Returns:
        An :class:`Attachment`; call ``detach()`` or use it as a context manager.

    Raises:
        TypeError: a control is not a :class:`dit_attn.Control` instance (a class, ``None``, a string...); the
            pipeline is left untouched.
        ValueError: the model is not a supported family.
        RuntimeError: dit_attn is already attached to this model.

    Example:
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("wan")
        >>> with dit_attn.attach(pipe, dit_attn.PassThrough()):
        ...     video = pipe(**tiny_call_kwargs("wan")).frames
    """
    _check_controls(controls)  # before anything on the pipeline changes
    attachment = Attachment(target, list(controls))
    attachment._install()
    return attachment


def _available_control_names() -> str:
    from .controls import available_controls
    from .controls.base import PassThrough, Recorder

    from .controls.conditions import MultiCondition

    names = [cls.__name__ for cls in available_controls().values()] + [MultiCondition.__name__]
    return ", ".join(f"{n}(...)" for n in [*names, PassThrough.__name__, Recorder.__name__])


def _check_controls(controls: tuple) -> None:
    """Every control is a :class:`dit_attn.Control` instance, else a ``TypeError`` saying what to pass."""
    from .controls.base import Control

    for position, control in enumerate(controls, 1):
        if isinstance(control, Control):
            continue
        where = f"dit_attn.attach: control {position}"
        if isinstance(control, type) and issubclass(control, Control):
            raise TypeError(f"{where} is the class {control.__name__}, not a control: pass an instance: "
                            f"{control.__name__}(...)")
        if isinstance(control, (list, tuple)):
            raise TypeError(f"{where} is a {type(control).__name__}; pass controls as separate arguments: "
                            f"dit_attn.attach(pipe, *controls)")
        if isinstance(control, (str, dict)):
            hint = (" (to build controls from names use dit_attn.controls_from_config({'entropy': {...}}))")
        else:
            hint = ""
        raise TypeError(f"{where} is {control!r} ({type(control).__name__}); expected a dit_attn.Control instance, "
                        f"e.g. one of: {_available_control_names()}{hint}")
