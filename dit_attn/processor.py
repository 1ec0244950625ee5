"""The one generic attention processor.

``DitAttnProcessor`` reads its family's adapter (data about one diffusers attention class) to compute Q/K/V
exactly as stock, hands each attention call through the active controls, runs it with
:func:`dit_attn.call.execute`, and finishes exactly as stock. There is no processor body per model.

Use it the diffusers way::

    import dit_attn
    from dit_attn.testing import tiny_pipeline, tiny_call_kwargs

    pipe = tiny_pipeline("flux")
    stock = dict(pipe.transformer.attn_processors)
    pipe.transformer.set_attn_processor(dit_attn.make_processors(pipe.transformer, dit_attn.PassThrough()))
    image = pipe(**tiny_call_kwargs("flux")).images
    pipe.transformer.set_attn_processor(stock)

or let :func:`dit_attn.attach` do the bookkeeping.
"""

from __future__ import annotations

import torch

from .call import AttentionCall, execute
from .families import Family, attention_sites, family_of
from .layout import LayerSite, Layout, StateBox


class DitAttnProcessor:
    """Attention processor that runs one family's stock attention math with dit_attn controls in the middle.

    Args:
        family: the :class:`~dit_attn.families.Family` (or its name, e.g. ``"flux"``).
        controls: a list of controls; the processor keeps a reference, so controls added to or removed from that
            list (or their fields changed) take effect on the next call.
        site: static facts about the module (name, block, layer); ``None`` when unknown.
        state: the :class:`~dit_attn.layout.StateBox` shared with the transformer's forward hook; ``None``
            when unknown.

    ``_attention_backend`` and ``_parallel_config`` are the attributes diffusers' ``set_attention_backend`` and
    context parallelism set on processors; they are passed to ``dispatch_attention_fn``.

    Example (one processor for every attention module; with no control changing anything the output is stock):
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("flux")
        >>> stock = dict(pipe.transformer.attn_processors)
        >>> expected = pipe(**tiny_call_kwargs("flux")).images
        >>> recorder = dit_attn.Recorder()
        >>> proc = dit_attn.DitAttnProcessor("flux", [recorder])
        >>> proc.family.name, proc.controls[0] is recorder
        ('flux', True)
        >>> pipe.transformer.set_attn_processor(proc)
        >>> images = pipe(**tiny_call_kwargs("flux")).images
        >>> bool((images == expected).all()), recorder.layouts[0].kind, recorder.layouts[0].query_segments
        (True, 'joint', {'text': (0, 32), 'image': (32, 80)})
        >>> pipe.transformer.set_attn_processor(stock)
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, family: Family | str, controls: list | None = None, site: LayerSite | None = None,
                 state: StateBox | None = None):
        from .families import FAMILIES

        if isinstance(family, str):
            if family not in FAMILIES:
                raise ValueError(f"unknown family {family!r}; supported: {', '.join(FAMILIES)}")
            family = FAMILIES[family]
        self.family = family
        self.controls = controls if controls is not None else []
        self.site = site
        self.state_box = state if state is not None else StateBox(family.name)

    # The parameter names matter: diffusers' attention modules drop every keyword the processor does not name.
    # ``image_rotary_emb`` is passed by name (legacy Attention) or fifth positionally (FluxAttention, WanAttention,
    # which calls it ``rotary_emb``).
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        adapter = self.family.adapter
        projected = adapter.project(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                    self.state_box.current.text_len)
        outs = [self._attend(attn, spec) for spec in projected.calls]
        return adapter.finish(attn, outs, projected)

    def _attend(self, attn, spec) -> torch.Tensor:
        layout = Layout(
            family=self.family.name, site=self.site, kind=spec.kind, heads=spec.query.shape[2],
            head_dim=spec.query.shape[3], query_segments=spec.query_segments, key_segments=spec.key_segments,
            batch_size=spec.query.shape[0], state=self.state_box.current,
        )
        call = AttentionCall(
            spec.query, spec.key, spec.value, layout, attn_mask=spec.attn_mask,
            backend=self._attention_backend, parallel_config=self._parallel_config if spec.parallel else None,
        )
        active = [c for c in self.controls if c.applies_to(layout)]
        for control in active:
            call = control.prepare(call)
        out = self._run(call, active)
        for control in reversed(active):
            out = control.finish(call, out)
        return out

    def _run(self, call: AttentionCall, active: list) -> torch.Tensor:
        """The attention itself (subclasses swap it, e.g. multi-condition attention); controls run around it."""
        return execute(call)

    def __repr__(self) -> str:
        where = self.site.module_name if self.site else "?"
        return f"DitAttnProcessor({self.family.name}, {where}, controls={self.controls!r})"


def build_processors(transformer: torch.nn.Module, controls: list, state: StateBox | None = None):
    """``{processor name: processor}`` for every attention module of ``transformer``: ours where we take over,
    the current processor elsewhere (e.g. HunyuanVideo's token refiner), ready for ``set_attn_processor``."""
    family = family_of(transformer)
    state = state if state is not None else StateBox(family.name)
    sites = list(attention_sites(transformer, family))
    block_lists = list(dict.fromkeys(s[1] for s in sites))
    offsets, total = {}, 0
    for name in block_lists:  # flat layer index over blocks in model order (FLUX: 0-18 double, 19-56 single)
        offsets[name] = total
        total += len(getattr(transformer, name))
    processors = dict(transformer.attn_processors)
    for module_name, list_name, index, kind, module in sites:
        site = LayerSite(module_name, list_name, index, offsets[list_name] + index, total, kind)
        proc = DitAttnProcessor(family, controls, site, state)
        # Keep the backend the user chose with set_attention_backend before attaching.
        proc._attention_backend = getattr(module.processor, "_attention_backend", None)
        proc._parallel_config = getattr(module.processor, "_parallel_config", None)
        processors[f"{module_name}.processor"] = proc
    return processors


def make_processors(target, *controls) -> dict:
    """Processors for ``transformer.set_attn_processor(...)``, with ``controls`` active.

    ``target`` is the transformer, or the pipeline (then its ``transformer`` is used and layouts also know the
    scheduler, so SD3, which sets no ``cache_context``, still reports the step). This also registers dit_attn's
    forward hook on the transformer (once), which fills the per-forward layout facts. Prefer
    :func:`dit_attn.attach`, which also restores everything on ``detach()``.

    Example:
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("sd3")
        >>> stock = dict(pipe.transformer.attn_processors)
        >>> pipe.transformer.set_attn_processor(dit_attn.make_processors(pipe, dit_attn.PassThrough()))
        >>> images = pipe(**tiny_call_kwargs("sd3")).images
        >>> pipe.transformer.set_attn_processor(stock)
    """
    from .state import ensure_forward_hook

    pipeline = None
    transformer = target
    if not isinstance(target, torch.nn.Module):
        pipeline, transformer = target, getattr(target, "transformer", None)
        if not isinstance(transformer, torch.nn.Module):
            raise ValueError(f"make_processors expects a transformer or a pipeline with one; got {type(target).__name__}")
    hook = ensure_forward_hook(transformer, controls=list(controls), pipeline=pipeline)
    return build_processors(transformer, hook.controls, hook.box)
