"""The control interface.

A control is a small object with plain fields (change them between pipeline calls as you like). Per attention
call it may

* ``prepare(call) -> call``: edit the :class:`~dit_attn.call.AttentionCall` before it runs (add a key bias, scale
  the logits, add extra key sets, set a sparse plan) and return it (the same object or a copy);
* ``finish(call, out) -> out``: edit the attention output ``[B, Nq, H, D]`` (e.g. mix values into some heads).

``applies_to(layout)`` decides whether the control takes part in a call at all (layer filters, step windows).

A control whose behaviour depends on the denoising step overrides ``step_phase(step_index, num_steps)`` and reads
the result with ``layout.state.phase(self)`` (or ``state.phase(self)`` in ``before_forward``): the forward hook
computes it once per forward, outside a compiled transformer's graph where the pipeline allows it (see
``docs/compile.md``). Return values that change rarely (a bool for a step window) or tensors (a per-step
multiplier): a compiled transformer is specialised on every Python value its code reads.

Some controls also need behaviour around the transformer forward or around the pipeline call (extra batch rows for
perturbed passes, a condition-cache pass, token reordering, prompt parsing). They override the optional hooks
``on_attach``/``on_detach`` (called by :func:`dit_attn.attach`), and ``before_forward``/``after_forward`` (called
by the transformer's forward hook with the :class:`~dit_attn.layout.ForwardState` of that forward).

Example — a control that records what it sees and changes nothing::

    class Recorder(dit_attn.Control):
        def __init__(self):
            self.seen = []

        def prepare(self, call):
            self.seen.append(call.layout)
            return call
"""

from __future__ import annotations

from typing import Any

import torch

from ..call import AttentionCall
from ..layout import ForwardState, Layout


class Control:
    """Base class of all controls. Every method is optional; the defaults change nothing.

    ``pipeline_level`` says, for controls that must act around the pipeline call (not only inside the
    transformer), what they do there: :func:`dit_attn.make_processors` refuses them on a pipeline with that
    reason, since processors alone cannot do it, and points to :func:`dit_attn.attach`.
    """

    pipeline_level: str = ""
    #: Whether the control is exact under diffusers' Ulysses context parallelism, where it runs on the whole
    #: sequence for a process's heads (:mod:`dit_attn.parallel`); others are refused there, never silently wrong.
    context_parallel: bool = True
    #: Whether it is exact under ring attention, where no process holds the whole key sequence (only controls
    #: that change nothing); the others are refused there with an error that points to Ulysses.
    ring_parallel: bool = False

    def validate(self, transformer: torch.nn.Module) -> None:
        """Raise ``ValueError`` if this control cannot run on ``transformer`` (e.g. heads it does not have)."""

    def applies_to(self, layout: Layout) -> bool:
        return True

    def step_phase(self, step_index: int | None, num_steps: int | None) -> Any:
        """What this control does differently at step ``step_index`` of ``num_steps`` (``None`` when unknown);
        read it with ``state.phase(self)``. Controls that do not depend on the step leave this alone."""
        return None

    def prepare(self, call: AttentionCall) -> AttentionCall:
        return call

    def finish(self, call: AttentionCall, out: torch.Tensor) -> torch.Tensor:
        return out

    # --- model- and pipeline-level hooks --------------------------------------------------------------------
    def on_attach(self, attachment) -> None:
        """Called once by :func:`dit_attn.attach` after the processors are installed."""

    def on_detach(self, attachment) -> None:
        """Called by :meth:`dit_attn.Attachment.detach` before anything is restored."""

    def before_forward(self, state: ForwardState, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Called before each transformer forward; may change its arguments (e.g. add batch rows)."""
        return args, kwargs

    def after_forward(self, state: ForwardState, output: Any) -> Any:
        """Called after each transformer forward; may change its output (e.g. combine batch rows)."""
        return output


class PassThrough(Control):
    """A control that receives and returns every attention call unchanged (handy to test the plumbing).

    Example:
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("sd3")
        >>> with dit_attn.attach(pipe, dit_attn.PassThrough()):
        ...     image = pipe(**tiny_call_kwargs("sd3")).images
    """

    ring_parallel = True  # changes nothing, so it is exact on a shard too


class Recorder(Control):
    """A control that records the :class:`~dit_attn.layout.Layout` of every call it sees and changes nothing.

    ``keep_tensors=True`` also keeps detached copies of q, k, v (for quality tools and tests).
    """

    ring_parallel = True  # changes nothing (under ring it records this process's queries against all keys)

    def __init__(self, keep_tensors: bool = False):
        self.keep_tensors = keep_tensors
        self.layouts: list[Layout] = []
        self.tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def prepare(self, call: AttentionCall) -> AttentionCall:
        self.layouts.append(call.layout)
        if self.keep_tensors:
            self.tensors.append((call.query.detach().clone(), call.key.detach().clone(), call.value.detach().clone()))
        return call

    def clear(self) -> None:
        self.layouts.clear()
        self.tensors.clear()
