"""The one generic attention processor.

``DitAttnProcessor`` wraps the stock processor of one attention module. It runs the stock processor's own code
(see :mod:`dit_attn.routing`), so Q/K/V, RoPE, masks and the output projections are exactly stock for every model
family and every diffusers release; only the attention call itself comes to us. There, the family's data
(:mod:`dit_attn.families`) says where text and image tokens sit, the active controls edit the call, and
:func:`dit_attn.call.execute` runs it. When no control changed the call, the stock attention function runs with
the stock arguments, so the output is stock bit for bit. There is no processor body per model.

Use it the diffusers way::

    import dit_attn
    from dit_attn.testing import tiny_pipeline, tiny_call_kwargs

    pipe = tiny_pipeline("flux")
    stock = dict(pipe.transformer.attn_processors)
    pipe.transformer.set_attn_processor(dit_attn.make_processors(pipe, dit_attn.PassThrough()))
    image = pipe(**tiny_call_kwargs("flux")).images
    pipe.transformer.set_attn_processor(stock)

or let :func:`dit_attn.attach` do the bookkeeping.

One processor serves one forward at a time (as diffusers' own hooks assume for a transformer): the arguments of
the stock call in progress are kept on the processor while the stock code runs.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import replace

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from . import parallel, routing
from .call import AttentionCall, execute
from .families import Family, attention_sites, family_of, processors_of, resolve_family
from .layout import LayerSite, Layout, StateBox

logger = logging.getLogger("dit_attn")

_DISPATCH_PARAMS = routing.parameter_names(dispatch_attention_fn)
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class DitAttnProcessor:
    """Attention processor that runs a stock diffusers processor with dit_attn controls on its attention call.

    Args:
        family: the :class:`~dit_attn.families.Family` (or its name, e.g. ``"flux"``).
        stock: the stock processor of the module (e.g. ``FluxAttnProcessor()``); its code computes everything
            but the attention itself.
        controls: a list of controls; the processor keeps a reference, so controls added to or removed from that
            list (or their fields changed) take effect on the next call.
        site: static facts about the module (name, block, layer, token layout); ``None`` when unknown.
        state: the :class:`~dit_attn.layout.StateBox` shared with the transformer's forward hook; ``None``
            when unknown.

    ``_attention_backend`` and ``_parallel_config`` (set by diffusers' ``set_attention_backend`` and context
    parallelism) are the stock processor's own attributes, read and written through.

    Example (the processors :func:`make_processors` builds; with no control changing anything the output is stock):
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("flux")
        >>> stock = dict(pipe.transformer.attn_processors)
        >>> expected = pipe(**tiny_call_kwargs("flux")).images
        >>> recorder = dit_attn.Recorder()
        >>> procs = dit_attn.make_processors(pipe, recorder)
        >>> proc = procs["transformer_blocks.0.attn.processor"]
        >>> proc.family.name, proc.stock is stock["transformer_blocks.0.attn.processor"]
        ('flux', True)
        >>> pipe.transformer.set_attn_processor(procs)
        >>> images = pipe(**tiny_call_kwargs("flux")).images
        >>> bool((images == expected).all()), recorder.layouts[0].kind, recorder.layouts[0].query_segments
        (True, 'joint', {'text': (0, 32), 'image': (32, 80)})
        >>> pipe.transformer.set_attn_processor(stock)
    """

    def __new__(cls, family=None, stock=None, *args, **kwargs):
        # diffusers' attention modules pass a processor only the keyword arguments its ``__call__`` names
        # (``inspect.signature(processor.__call__)``): each stock processor class gets a subclass whose
        # ``__call__`` carries the stock signature (a class attribute, so torch.compile traces it as usual).
        if stock is None or isinstance(stock, DitAttnProcessor):
            return super().__new__(cls)
        return super().__new__(_with_signature_of(cls, type(stock)))

    def __init__(self, family: Family | str, stock, controls: list | None = None, site: LayerSite | None = None,
                 state: StateBox | None = None):
        self.family = resolve_family(family)
        if stock is None or isinstance(stock, DitAttnProcessor):
            raise TypeError("DitAttnProcessor wraps the module's stock diffusers processor; got "
                            f"{type(stock).__name__} (build processors with dit_attn.make_processors)")
        points = routing.entry_points(type(stock).__call__)
        if not points:
            raise TypeError(
                f"{type(stock).__name__} does not call dispatch_attention_fn or F.scaled_dot_product_attention in "
                "its __call__, so dit_attn cannot route its attention; supported processors are the stock ones of "
                f"the supported families ({', '.join(_family_names())})")
        self.stock = stock
        self.controls = controls if controls is not None else []
        self.site = site
        self.state_box = state if state is not None else StateBox(self.family.name)
        self._warned_unrouted = False
        # Set by build_processors when the transformer already had context parallelism (the forward hook then
        # runs outside diffusers' input split and sees the whole sequence); see dit_attn.parallel.
        self._cp_text_split: bool | None = None
        call = type(stock).__call__
        self._routed = _routed_call(type(stock))
        self._params = routing.parameter_names(call)[1:]  # after ``self``

    # --- diffusers' per-processor attributes, kept on the stock processor that reads them ------------------------
    @property
    def _attention_backend(self):
        return getattr(self.stock, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value):
        self.stock._attention_backend = value

    @property
    def _parallel_config(self):
        return getattr(self.stock, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value):
        self.stock._parallel_config = value

    # --- the stock call ------------------------------------------------------------------------------------------
    def __call__(self, attn, *args, **kwargs):
        return self._enter(attn, *args, **kwargs)

    def _enter(self, attn, *args, **kwargs):
        inputs = dict(zip(self._params[1:], args))  # _params[0] is ``attn``
        inputs.update(kwargs)
        # The stock call in progress: [processor, module, arguments by name, attention calls made so far]. The
        # routed stock code reaches it through the stack (see _frames).
        frame = [self, attn, inputs, 0]
        stack = _frames()
        stack.append(frame)
        try:
            result = self._routed(self.stock, attn, *args, **kwargs)
        finally:
            stack.pop()
        if frame[3] == 0 and self.controls and not self._warned_unrouted:
            self._warned_unrouted = True
            logger.warning("%s: the stock %s attended outside its __call__ (e.g. a KV-cache path); dit_attn "
                           "controls did not act on this module", self.site.module_name if self.site else "?",
                           type(self.stock).__name__)
        return result

    def _dispatch(self, *args, **kwargs):
        """``dispatch_attention_fn`` as the stock code calls it: q/k/v are ``[B, N, H, D]``."""
        bound = dict(zip(_DISPATCH_PARAMS, args))
        bound.update(kwargs)
        q, k, v = bound["query"], bound["key"], bound["value"]
        call = self._call(q, k, v, bound.get("attn_mask"), bound.get("scale"), bound.get("backend"),
                          bound.get("parallel_config"))
        return self._attend(call, lambda: dispatch_attention_fn(*args, **kwargs), (q, k, v))

    def _sdpa(self, *args, **kwargs):
        """``F.scaled_dot_product_attention`` as older stock code calls it: q/k/v are ``[B, H, N, D]``."""
        bound = dict(zip(_SDPA_PARAMS, args))
        bound.update(kwargs)
        if bound.get("dropout_p", 0.0) or bound.get("is_causal", False):
            raise NotImplementedError("dit_attn routes attention without dropout or a causal mask only")
        q, k, v = (bound[n].transpose(1, 2) for n in ("query", "key", "value"))
        if bound.get("enable_gqa") and k.shape[2] != q.shape[2]:
            k, v = (t.repeat_interleave(q.shape[2] // t.shape[2], dim=2) for t in (k, v))
        call = self._call(q, k, v, bound.get("attn_mask"), bound.get("scale"), None, None)

        def stock():
            return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs).transpose(1, 2)

        return self._attend(call, stock, (q, k, v)).transpose(1, 2)

    def _call(self, q, k, v, mask, scale, backend, parallel_config) -> AttentionCall:
        frame = _frames()[-1]
        ordinal = frame[3]
        frame[3] = ordinal + 1
        kind = self.site.kind if self.site is not None else None
        state = self.state_box.current
        text_len = None
        if parallel.mode(parallel_config) is not None and self._cp_text_split and state.text_len:
            text_len = parallel.shard_of(parallel_config, True).part(state.text_len)  # this process's share
        described = self.family.describe(kind, frame[1], frame[2], ordinal, q.shape[1], k.shape[1], state,
                                         text_len=text_len)
        layout = Layout(
            family=self.family.name, site=self.site, kind=described.kind, heads=q.shape[2], head_dim=q.shape[3],
            query_segments=described.query_segments, key_segments=described.key_segments, batch_size=q.shape[0],
            state=self.state_box.current,
        )
        return AttentionCall(q, k, v, layout, attn_mask=mask, scale=scale, backend=backend,
                             parallel_config=parallel_config)

    def _attend(self, call: AttentionCall, stock, originals) -> torch.Tensor:
        cp_mode = parallel.mode(call.parallel_config)
        if cp_mode is not None:
            return self._attend_parallel(call, stock, cp_mode)
        active = [c for c in self.controls if c.applies_to(call.layout)]
        return self._controlled(call, active, stock, originals)

    def _controlled(self, call: AttentionCall, active: list, stock, originals) -> torch.Tensor:
        """Let the ``active`` controls edit the call, attend (``stock()`` if they left it unchanged), finish."""
        mask = call.attn_mask
        for control in active:
            call = control.prepare(call)
        if _untouched(call, mask, originals) and not self._takes_over(active):
            out = stock()
        else:
            out = self._run(call, active)
        for control in reversed(active):
            out = control.finish(call, out)
        return out

    def _attend_parallel(self, call: AttentionCall, stock, cp_mode: str) -> torch.Tensor:
        """Under diffusers' context parallelism the controls see the whole sequence in single-process token order
        (:mod:`dit_attn.parallel`): Ulysses inside its all-to-all (this process's heads), ring with the keys and
        values of every process gathered (this process's queries)."""
        where = self.site.module_name if self.site else "this module"
        if self._cp_text_split is None:
            if not any(c.applies_to(call.layout) for c in self.controls):
                return stock()
            raise RuntimeError(
                f"{where}: context parallelism was enabled after dit_attn was attached, so dit_attn sees one "
                "process's part of the inputs; call transformer.enable_parallelism(...) first, then attach")
        if cp_mode == "unified":  # only observers may run here (refused otherwise): diffusers' own attention
            active = [c for c in self.controls if c.applies_to(call.layout)]
            parallel.refuse(active, cp_mode, where)
            return self._controlled(call, active, stock, (call.query, call.key, call.value))
        shard = parallel.shard_of(call.parallel_config, self._cp_text_split)
        keys = parallel.shard_plan(call.layout.key_segments, shard, call.query.device)
        if cp_mode == "ulysses":
            queries = parallel.shard_plan(call.layout.query_segments, shard, call.query.device)
            heads = call.query.shape[2] // shard.world
            layout = replace(call.layout, query_segments=queries.global_segments, key_segments=keys.global_segments,
                             heads=heads, head_offset=shard.rank * heads, total_heads=call.query.shape[2],
                             heads_group=parallel.ulysses_group(call.parallel_config))
        else:  # ring: this process's queries against every key
            layout = replace(call.layout, key_segments=keys.global_segments)
        active = [c for c in self.controls if c.applies_to(layout)]
        if not active:
            return stock()
        parallel.refuse(active, cp_mode, where)

        def attend(q, k, v, mask, q_plan):
            """Controls and attention on single-process-order keys (and queries, for Ulysses)."""
            def stock_here():
                out = dispatch_attention_fn(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                            scale=call.scale, backend=call.backend)
                return parallel.to_single_order(out, q_plan)

            single = AttentionCall(
                parallel.to_single_order(q, q_plan), parallel.to_single_order(k, keys),
                parallel.to_single_order(v, keys), layout,
                attn_mask=parallel.mask_to_single_order(mask, q_plan, keys, q.shape[1], k.shape[1]),
                scale=call.scale, backend=call.backend)
            out = self._controlled(single, active, stock_here, (single.query, single.key, single.value))
            return parallel.to_gathered_order(out, q_plan)

        if cp_mode == "ulysses":
            return parallel.ulysses_attention(call.query, call.key, call.value, call.attn_mask, call.scale,
                                              call.parallel_config, lambda q, k, v, m: attend(q, k, v, m, queries))
        mask = call.attn_mask
        if mask is not None and mask.shape[-1] == call.key.shape[1] and mask.shape[-1] > 1:
            mask = parallel.gather_keys(mask, call.parallel_config, dim=-1)
        k, v = (parallel.gather_keys(t, call.parallel_config) for t in (call.key, call.value))
        return attend(call.query, k, v, mask, parallel.IN_ORDER)

    def _takes_over(self, active: list) -> bool:
        """Whether :meth:`_run` must run even for an unchanged call (a subclass that attends differently)."""
        return False

    def _run(self, call: AttentionCall, active: list) -> torch.Tensor:
        """The attention itself when a control changed the call (subclasses swap it, e.g. multi-condition)."""
        return execute(call)

    def __repr__(self) -> str:
        where = self.site.module_name if self.site else "?"
        return f"DitAttnProcessor({self.family.name}, {where}, {type(self.stock).__name__}, controls={self.controls!r})"


def _untouched(call: AttentionCall, mask, originals) -> bool:
    """Whether the controls left the call exactly as the stock code made it (then stock runs it, bit for bit)."""
    q, k, v = originals
    return call.is_plain and call.attn_mask is mask and call.query is q and call.key is k and call.value is v


_SIGNATURE_CLASSES: dict = {}


def _family_names() -> list[str]:
    from .families import FAMILIES

    return list(FAMILIES)

_ROUTED: dict = {}
_LOCAL = threading.local()
_TRACING_FRAMES: list = []


def _frames() -> list:
    """The stack of stock calls in progress in this thread. While torch.compile traces, one module-level list:
    the trace is single-threaded, and reaching it by one name lets the tracer see the frames' updates."""
    if torch.compiler.is_compiling():
        return _TRACING_FRAMES
    stack = getattr(_LOCAL, "frames", None)
    if stack is None:
        stack = _LOCAL.frames = []
    return stack


def _routed_dispatch(*args, **kwargs):
    """``dispatch_attention_fn`` for routed stock code: the processor of the call in progress handles it."""
    return _frames()[-1][0]._dispatch(*args, **kwargs)


def _routed_sdpa(*args, **kwargs):
    """``F.scaled_dot_product_attention`` for routed stock code."""
    return _frames()[-1][0]._sdpa(*args, **kwargs)


def _routed_call(stock_class: type):
    """``stock_class.__call__`` with its attention routed to dit_attn (one copy per stock class, cached)."""
    if stock_class not in _ROUTED:
        _ROUTED[stock_class] = routing.route_attention(stock_class.__call__, dispatch=_routed_dispatch,
                                                       sdpa=_routed_sdpa)
    return _ROUTED[stock_class]


def _with_signature_of(cls: type, stock_class: type) -> type:
    """``cls`` with ``__call__`` showing ``stock_class.__call__``'s signature (one subclass per pair, cached)."""
    key = (cls, stock_class)
    if key not in _SIGNATURE_CLASSES:
        def __call__(self, attn, *args, **kwargs):
            return self._enter(attn, *args, **kwargs)

        __call__.__signature__ = inspect.signature(stock_class.__call__)
        _SIGNATURE_CLASSES[key] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                              "__qualname__": cls.__qualname__})
    return _SIGNATURE_CLASSES[key]


def build_processors(transformer: torch.nn.Module, controls: list, state: StateBox | None = None):
    """``{processor name: processor}`` for every attention module of ``transformer``: ours where we take over
    (each wrapping the module's current processor), the current processor elsewhere (e.g. refiner blocks)."""
    family = family_of(transformer)
    state = state if state is not None else StateBox(family.name)
    sites = list(attention_sites(transformer, family))
    block_lists = list(dict.fromkeys(s.block_list for s in sites))
    offsets, total = {}, 0
    for name in block_lists:  # flat layer index over blocks in model order (FLUX: 0-18 double, 19-56 single)
        offsets[name] = total
        total += len(getattr(transformer, name))
    text_split = _prepare_context_parallel(transformer, controls)
    processors = processors_of(transformer)
    for s in sites:
        current = s.module.processor
        if isinstance(current, DitAttnProcessor):
            raise RuntimeError(f"{s.module_name} already has a dit_attn processor; detach it (or restore the "
                               "stock processors) before building new ones")
        site = LayerSite(s.module_name, s.block_list, s.block_index, offsets[s.block_list] + s.block_index, total,
                         s.tokens)
        processor = DitAttnProcessor(family, current, controls, site, state)
        processor._cp_text_split = text_split
        processors[f"{s.module_name}.processor"] = processor
    return processors


def _prepare_context_parallel(transformer: torch.nn.Module, controls: list) -> bool | None:
    """For a transformer with diffusers' context parallelism enabled: refuse controls the kind of parallelism
    cannot run (at attach time, not mid-generation), and make dit_attn's forward hook the outermost one, so it
    sees the whole inputs before diffusers splits them. Returns whether the model splits its text over processes
    (``None`` without context parallelism)."""
    from .state import HOOK_NAME

    config = getattr(transformer, "_parallel_config", None)
    where = type(transformer).__name__
    if getattr(config, "tensor_parallel_config", None) is not None:
        changing = parallel.changing_names(controls)
        if changing:  # each process would hold some heads, unknown to the layouts (head sets would be wrong)
            raise NotImplementedError(
                f"{', '.join(changing)} cannot run under diffusers' tensor parallelism ({where}) yet; use context "
                "parallelism (ContextParallelConfig(ulysses_degree=N)), where every dit_attn control is exact")
    cp_mode = parallel.mode(config)
    if cp_mode is None:
        return None
    if cp_mode != "ulysses":  # Ulysses refusals wait for the call: the control list may change until then
        parallel.refuse(controls, cp_mode, where)
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None and registry._hook_order[-1] != HOOK_NAME:
        hook = registry.get_hook(HOOK_NAME)
        registry.remove_hook(HOOK_NAME, recurse=False)
        registry.register_hook(hook, HOOK_NAME)
    return parallel.text_is_split(transformer, config, controls)


def make_processors(target, *controls) -> dict:
    """Processors for ``transformer.set_attn_processor(...)``, with ``controls`` active.

    ``target`` is the transformer, or the pipeline (then its ``transformer`` is used and layouts also know the
    scheduler, so SD3, which sets no ``cache_context``, still reports the step). This also registers dit_attn's
    forward hook on the transformer (once), which fills the per-forward layout facts. Prefer
    :func:`dit_attn.attach`, which also restores everything on ``detach()``.

    The processors give exactly what :func:`dit_attn.attach` gives for controls that act inside the transformer
    (Recorder, EntropyScale, RectifiedSparse, your own). Controls that must also act around the pipeline call
    (``Control.pipeline_level``: Emphasis, SoftPAG, MultiCondition) are refused on a pipeline with a
    ``ValueError`` saying what processors alone cannot do; pass the transformer instead to install only their
    transformer-level part (the behaviour of a bare transformer), or use :func:`dit_attn.attach`.

    Example:
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("sd3")
        >>> stock = dict(pipe.transformer.attn_processors)
        >>> pipe.transformer.set_attn_processor(dit_attn.make_processors(pipe, dit_attn.PassThrough()))
        >>> images = pipe(**tiny_call_kwargs("sd3")).images
        >>> pipe.transformer.set_attn_processor(stock)
    """
    from .controls.base import Control
    from .state import ensure_forward_hook

    pipeline = None
    transformer = target
    if not isinstance(target, torch.nn.Module):
        pipeline, transformer = target, getattr(target, "transformer", None)
        if not isinstance(transformer, torch.nn.Module):
            raise ValueError(f"make_processors expects a transformer or a pipeline with one; got {type(target).__name__}")
    for control in controls:
        if not isinstance(control, Control):
            raise TypeError(f"make_processors takes control instances (dit_attn.Control); got {control!r}")
        if pipeline is not None and control.pipeline_level:
            raise ValueError(
                f"{type(control).__name__} cannot be installed with set_attn_processor on a pipeline: it "
                f"{control.pipeline_level}, which processors alone cannot do. Use dit_attn.attach(pipe, ...), or "
                f"make_processors(pipe.transformer, ...) for its transformer-level part only")
        control.validate(transformer)
    hook = ensure_forward_hook(transformer, controls=list(controls), pipeline=pipeline)
    return build_processors(transformer, hook.controls, hook.box)
