"""Where everything sits in one attention call.

A :class:`Layout` is what every control reads: which token ranges of the query and key sequences are text,
image/video or condition tokens, the token grid after patching, which layer this is, which denoising step, and
which batch rows are cond / uncond / perturbed. It is built by the processor for every call from three sources:

* the :class:`LayerSite` fixed at attach time (module name, block list, index, kind of attention),
* the :class:`ForwardState` filled once per transformer forward by a diffusers ``ModelHook``
  (step index and count, timestep, batch roles, grid, text length), and
* the shapes of the tensors of the call itself (sequence lengths, heads).

Layouts are immutable; controls never change them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

# Batch roles. Controls that add rows (perturbed passes) use "perturbed:<name>".
COND = "cond"
UNCOND = "uncond"


@dataclass(frozen=True)
class LayerSite:
    """Static facts about one attention module of a transformer, fixed when processors are built."""

    module_name: str  # e.g. "transformer_blocks.3.attn"
    block_list: str  # e.g. "transformer_blocks"
    block_index: int
    layer_index: int  # flat index over the block lists in model order (FLUX: 0-18 double, 19-56 single)
    num_layers: int
    kind: str  # "joint", "single", "self", "cross"


class StepFacts:
    """Where the denoising loop is for one transformer forward: the step index and count, and each control's
    *step phase* (:meth:`dit_attn.Control.step_phase`, keyed by ``id(control)``), the only step-dependent values
    a control's per-forward and per-call code reads.

    Under ``torch.compile`` the forward hook runs inside the compiled graph, and every Python value it reads is
    guarded: reading the step index would recompile the transformer at every step. The hook therefore computes a
    ``StepFacts`` outside the graph where it can (when the pipeline enters diffusers' ``cache_context``) and the
    compiled code reads only the phases: values that change rarely (SoftPAG's window, the sparse warm-up) or
    tensors (emphasis schedules), which are graph inputs. ``step_index`` and ``num_steps`` stay readable (e.g.
    ``layout.step_index``); compiled code that reads them is specialised per step.
    """

    __slots__ = ("step_index", "num_steps", "phases")

    def __init__(self, step_index: int | None = None, num_steps: int | None = None, phases: dict | None = None):
        self.step_index = step_index
        self.num_steps = num_steps
        self.phases = phases if phases is not None else {}

    def __repr__(self) -> str:
        return f"StepFacts(step_index={self.step_index}, num_steps={self.num_steps})"


class ForwardState:
    """Per-transformer-forward facts, written by :class:`dit_attn.state.ForwardStateHook` before each forward
    (a fresh object per forward, never changed afterwards except for ``extra`` and the lazily computed grid).

    ``grid`` is computed lazily (FLUX needs a look at ``img_ids``) and cached for the forward. ``step`` holds the
    step facts (:class:`StepFacts`); ``step_index`` and ``num_steps`` read them.
    """

    def __init__(self, family: str | None = None, context: str | None = None, step_index: int | None = None,
                 num_steps: int | None = None, timestep: torch.Tensor | float | None = None,
                 batch_roles: tuple[str, ...] | None = None, text_len: int | None = None,
                 grid_fn: Callable[[], tuple[int, int, int] | None] | None = None, extra: dict | None = None,
                 step: StepFacts | None = None):
        self.family = family
        self.context = context  # diffusers cache_context name ("cond", "uncond", "cond_uncond") or None
        self.step = step if step is not None else StepFacts(step_index, num_steps)
        self.timestep = timestep
        self.batch_roles = batch_roles
        self.text_len = text_len
        self.grid_fn = grid_fn
        self._grid: tuple[int, int, int] | None = None
        self._grid_known = False
        self.in_forward = False
        self.extra = extra if extra is not None else {}  # scratch space for model-level control hooks, per forward

    def __repr__(self) -> str:
        return (f"ForwardState(family={self.family!r}, context={self.context!r}, step={self.step!r}, "
                f"batch_roles={self.batch_roles!r}, text_len={self.text_len!r})")

    @property
    def step_index(self) -> int | None:
        return self.step.step_index

    @step_index.setter
    def step_index(self, value: int | None) -> None:
        self.step = StepFacts(value, self.step.num_steps)  # a new object: step facts may be shared

    @property
    def num_steps(self) -> int | None:
        return self.step.num_steps

    @num_steps.setter
    def num_steps(self, value: int | None) -> None:
        self.step = StepFacts(self.step.step_index, value)

    def phase(self, control):
        """``control.step_phase(step_index, num_steps)`` for this forward: precomputed by the forward hook (so
        compiled code reads the phase, not the step), computed here for a state built by hand."""
        phases = self.step.phases
        if id(control) in phases:
            return phases[id(control)]
        return control.step_phase(self.step.step_index, self.step.num_steps)

    @property
    def grid(self) -> tuple[int, int, int] | None:
        if not self._grid_known:
            self._grid = self.grid_fn() if self.grid_fn is not None else None
            self._grid_known = True
        return self._grid


class StateBox:
    """Holds the :class:`ForwardState` of the current forward; the hook puts a fresh one in before each forward,
    so a :class:`Layout` keeps the facts of its own forward (layouts are snapshots)."""

    def __init__(self, family: str | None = None):
        self.current = ForwardState(family=family)


@dataclass(frozen=True)
class Layout:
    """Everything a control may need to know about one attention call.

    Segments are half-open ``(start, stop)`` token ranges along the sequence axis. Queries and keys have their own
    segments because cross-attention (Wan ``attn2``) has image queries and text keys.

    Example:
        >>> layout = Layout(family="sd3", site=None, kind="joint", heads=2, head_dim=8,
        ...                 query_segments={"image": (0, 16), "text": (16, 20)},
        ...                 key_segments={"image": (0, 16), "text": (16, 20)}, batch_size=2)
        >>> layout.key_slice("text")
        slice(16, 20, None)
    """

    family: str | None
    site: LayerSite | None
    kind: str
    heads: int
    head_dim: int
    query_segments: Mapping[str, tuple[int, int]]
    key_segments: Mapping[str, tuple[int, int]]
    batch_size: int
    state: ForwardState = field(default_factory=ForwardState, compare=False, repr=False)
    # Under Ulysses context parallelism a process holds ``heads`` of the ``total_heads`` heads, starting at
    # ``head_offset`` (global head h is local head h - head_offset); on one process: 0 and ``heads``.
    head_offset: int = 0
    total_heads: int | None = None
    heads_group: object = field(default=None, compare=False, repr=False)  # the process group holding the others

    # --- heads -------------------------------------------------------------------------------------------------
    @property
    def model_heads(self) -> int:
        """The module's number of heads (all processes together)."""
        return self.total_heads if self.total_heads is not None else self.heads

    def local_heads(self, heads) -> list[int]:
        """The local indices of those of the global ``heads`` this process holds.

        Example (process 1 of 2 under Ulysses holds heads 4-7 of 8):
            >>> layout = Layout(family="flux", site=None, kind="joint", heads=4, head_dim=8, query_segments={},
            ...                 key_segments={}, batch_size=1, head_offset=4, total_heads=8)
            >>> layout.local_heads([0, 5, 7]), layout.model_heads
            ([1, 3], 8)
        """
        lo, hi = self.head_offset, self.head_offset + self.heads
        return [h - lo for h in heads if lo <= h < hi]

    # --- layer -------------------------------------------------------------------------------------------------
    @property
    def module_name(self) -> str | None:
        return self.site.module_name if self.site else None

    @property
    def block_list(self) -> str | None:
        return self.site.block_list if self.site else None

    @property
    def block_index(self) -> int | None:
        return self.site.block_index if self.site else None

    @property
    def layer_index(self) -> int | None:
        return self.site.layer_index if self.site else None

    @property
    def num_layers(self) -> int | None:
        return self.site.num_layers if self.site else None

    # --- denoising loop ----------------------------------------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        return self.state.step_index

    @property
    def num_steps(self) -> int | None:
        return self.state.num_steps

    @property
    def timestep(self):
        return self.state.timestep

    @property
    def progress(self) -> float | None:
        """Fraction of the denoising loop done before this step: 0 at the first step, (n-1)/n at the last."""
        if self.state.step_index is None or not self.state.num_steps:
            return None
        return self.state.step_index / self.state.num_steps

    @property
    def grid(self) -> tuple[int, int, int] | None:
        """(frames, height, width) of the visual tokens after patching (frames = 1 for images)."""
        return self.state.grid

    @property
    def batch_roles(self) -> tuple[str, ...]:
        roles = self.state.batch_roles
        if roles is None or len(roles) != self.batch_size:
            return (COND,) * self.batch_size
        return roles

    def rows(self, role: str) -> list[int]:
        """Batch rows that have ``role`` (e.g. ``"cond"``)."""
        return [i for i, r in enumerate(self.batch_roles) if r == role]

    # --- tokens ------------------------------------------------------------------------------------------------
    def query_slice(self, segment: str) -> slice | None:
        r = self.query_segments.get(segment)
        return slice(*r) if r else None

    def key_slice(self, segment: str) -> slice | None:
        r = self.key_segments.get(segment)
        return slice(*r) if r else None

    @property
    def query_len(self) -> int:
        return _end(self.query_segments)

    @property
    def key_len(self) -> int:
        return _end(self.key_segments)


def _end(segs: Mapping[str, tuple[int, int]]) -> int:
    """The last ``stop`` of some segments (0 for none); a plain loop, which torch.compile traces (it does not
    take ``max`` over a generator)."""
    end = 0
    for _, stop in segs.values():
        end = stop if stop > end else end
    return end


def segments(order: tuple[str, ...], lengths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Consecutive segments in ``order`` with the given lengths (zero-length ones are left out)."""
    out, pos = {}, 0
    for name in order:
        n = lengths.get(name, 0)
        if n:
            out[name] = (pos, pos + n)
            pos += n
    return out
