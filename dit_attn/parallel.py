"""Controls under diffusers' context parallelism (Ulysses and ring), exact or refused by name.

With ``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`` diffusers splits the
token sequence of the transformer's inputs over N processes, and every attention call does an all-to-all that
gives each process the *whole* sequence for ``H/N`` of the heads, attends, and sends the result back. A control
that acted on one process's shard of the sequence would see the wrong key counts, positions and blocks, so
dit_attn acts where the process holds the whole sequence: inside that all-to-all, through diffusers' own
context-parallel template (``forward_op``).

After the all-to-all the sequence is the concatenation of every process's local sequence, e.g. for FLUX's joint
attention ``[text₀, image₀, text₁, image₁]``, while controls expect one process's order ``[text, image]``. A
:class:`ShardPlan` holds the gather index from the first order to the second (and back), built from the local
segment lengths and diffusers' split rule (``tensor.chunk`` along the sequence; inputs a model's ``_cp_plan``
does not split, like Wan's text, arrive whole on every process and are taken once). The controls then run on the
single-process order, with the global index of each local head (:attr:`~dit_attn.layout.Layout.head_offset`),
so every control computes exactly what it computes on one process.

Ring attention keeps each process's queries and brings the keys and values to it; diffusers' ring gathers every
process's keys and values up front and merges per-chunk results through their log-sum-exps. For controls that
act per key (a key bias, a logit scale: Emphasis, EntropyScale), dit_attn gathers the keys and values the same way
(the same memory), puts them in single-process order and attends once with the controls: exact. Controls that
need the queries and keys in one order (SoftPAG's per-query targets, rectified sparse blocks, condition caches)
are refused there by name, with a pointer to Ulysses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .controls.base import PassThrough, Recorder
from .layout import segments

#: Segments that come from the encoder side of a model (``encoder_hidden_states``); the others come from the
#: latent tokens (``hidden_states``), which every ``_cp_plan`` splits.
ENCODER_SEGMENTS = ("text", "image_context")


@dataclass(frozen=True)
class Shard:
    """This process's place in a context-parallel group: ``rank`` of ``world``, and which inputs diffusers
    splits."""

    rank: int
    world: int
    text_split: bool  # whether the model's _cp_plan splits encoder_hidden_states (FLUX: yes; Wan: no)

    def part(self, length: int) -> int:
        """This rank's share of a sequence of ``length`` tokens (diffusers' even split)."""
        return length // self.world

    def is_split(self, segment: str) -> bool:
        return self.text_split or segment not in ENCODER_SEGMENTS


def mode(parallel_config) -> str | None:
    """``"ulysses"``, ``"ring"``, ``"unified"`` (both) or ``None`` for no context parallelism."""
    cp = getattr(parallel_config, "context_parallel_config", None)
    if cp is None:
        return None
    if (cp.ring_degree or 1) > 1:
        return "unified" if (cp.ulysses_degree or 1) > 1 else "ring"
    if (cp.ulysses_degree or 1) > 1:
        return "ulysses"
    return None


def text_is_split(transformer: torch.nn.Module, parallel_config, controls: list = ()) -> bool:
    """Whether ``transformer``'s ``_cp_plan`` splits its text over processes; refuses ``controls`` that change
    attention under uneven splits (``ulysses_anything`` / ``ring_anything``)."""
    cp = parallel_config.context_parallel_config
    changing = changing_names(controls)
    uneven = [name for name in ("ulysses_anything", "ring_anything") if getattr(cp, name, False)]
    if uneven and changing:
        raise NotImplementedError(
            f"{', '.join(changing)}: dit_attn controls support diffusers' context parallelism with even splits; "
            f"ContextParallelConfig({uneven[0]}=True) (uneven heads or tokens) is not supported yet: use a "
            "sequence length and head count divisible by the degree")
    plan = getattr(transformer, "_cp_plan", None) or {}
    return any(isinstance(inputs, dict) and "encoder_hidden_states" in inputs for inputs in plan.values())


def shard_of(parallel_config, text_split: bool) -> Shard:
    """This process's :class:`Shard` in the Ulysses or the ring group of ``parallel_config``."""
    cp = parallel_config.context_parallel_config
    if mode(parallel_config) == "ring":
        return Shard(rank=int(cp._ring_local_rank), world=int(cp.ring_degree), text_split=text_split)
    return Shard(rank=int(cp._ulysses_local_rank), world=int(cp.ulysses_degree), text_split=text_split)


@dataclass(frozen=True)
class ShardPlan:
    """How the sequence after the all-to-all maps to one process's order.

    ``gather`` (int64 ``[N]``) picks, from the gathered sequence, the tokens in single-process order (an input
    that arrives whole on every process is taken from process 0's part); ``scatter`` (int64 ``[N_gathered]``) is
    the single-process position of every gathered token, so ``out[:, scatter]`` puts the result back. ``None``
    means the orders are already the same (e.g. Wan's self-attention: one segment, split in order).
    """

    global_segments: dict
    gather: torch.Tensor | None
    scatter: torch.Tensor | None


def shard_plan(local_segments: dict, shard: Shard, device) -> ShardPlan:
    """The :class:`ShardPlan` for one side (queries or keys) whose local segments are ``local_segments`` (built
    once per layout and device: every layer of a forward shares it).

    Example (FLUX joint attention on 2 processes, each holding 2 text and 3 image tokens):
        >>> from dit_attn.parallel import Shard, shard_plan
        >>> plan = shard_plan({"text": (0, 2), "image": (2, 5)}, Shard(rank=0, world=2, text_split=True), "cpu")
        >>> plan.global_segments
        {'text': (0, 4), 'image': (4, 10)}
        >>> plan.scatter.tolist()  # one-process position of each gathered token [t0 t0 i0 i0 i0 t1 t1 i1 i1 i1]
        [0, 1, 4, 5, 6, 2, 3, 7, 8, 9]
    """
    ordered = tuple(sorted(local_segments.items(), key=lambda item: item[1][0]))
    return _shard_plan(ordered, shard, str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _shard_plan(ordered: tuple, shard: Shard, device: str) -> ShardPlan:
    order = [name for name, _ in ordered]
    local = {name: stop - start for name, (start, stop) in ordered}
    split = {name: shard.is_split(name) for name in order}
    lengths = {name: n * shard.world if split[name] else n for name, n in local.items()}
    global_segments = segments(tuple(order), lengths)
    starts = [global_segments[name][0] + (rank * local[name] if split[name] else 0)
              for rank in range(shard.world) for name in order]
    sizes = [local[name] for _ in range(shard.world) for name in order]
    if all(start == sum(sizes[:i]) for i, start in enumerate(starts)):
        return ShardPlan(global_segments, None, None)  # already in order
    scatter = torch.cat([torch.arange(start, start + size) for start, size in zip(starts, sizes)])
    # A token every process sends (an unsplit input) is taken from process 0: scatter_reduce keeps the smallest
    # gathered position of each single-process position.
    gather = torch.full((sum(lengths.values()),), len(scatter), dtype=torch.long)
    gather = gather.scatter_reduce(0, scatter, torch.arange(len(scatter)), reduce="amin")
    return ShardPlan(global_segments, gather.to(device), scatter.to(device))


#: The plan of a sequence that is already in single-process order (a ring process's own queries).
IN_ORDER = ShardPlan({}, None, None)


def to_single_order(x: torch.Tensor, plan: ShardPlan, dim: int = 1) -> torch.Tensor:
    return x if plan.gather is None else x.index_select(dim, plan.gather)


def to_gathered_order(x: torch.Tensor, plan: ShardPlan, dim: int = 1) -> torch.Tensor:
    return x if plan.scatter is None else x.index_select(dim, plan.scatter)


def mask_to_single_order(mask: torch.Tensor | None, queries: ShardPlan, keys: ShardPlan, n_query: int,
                         n_key: int) -> torch.Tensor | None:
    """An SDPA mask of the gathered sequence (diffusers gathers a per-key mask along its last axis) in
    single-process order."""
    if mask is None:
        return None
    if mask.shape[-1] == n_key:
        mask = to_single_order(mask, keys, dim=-1)
    elif mask.shape[-1] != 1:
        raise NotImplementedError(f"dit_attn cannot reorder an attention mask of shape {tuple(mask.shape)} under "
                                  f"context parallelism ({n_key} keys)")
    if mask.dim() >= 2 and mask.shape[-2] == n_query and n_query > 1:
        mask = to_single_order(mask, queries, dim=-2)
    return mask


def ulysses_attention(query, key, value, attn_mask, scale, parallel_config, attend):
    """Run ``attend(q, k, v, mask)`` (all four in gathered order, ``H/N`` heads) inside diffusers' Ulysses
    all-to-all and return its output in this process's local layout ``[B, N_local, H, D]``."""
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    def forward_op(ctx, q, k, v, mask, dropout_p, is_causal, op_scale, enable_gqa, return_lse, _save_ctx=True,
                   _parallel_config=None):
        if return_lse:
            raise NotImplementedError("dit_attn's context-parallel attention returns no log-sum-exp")
        return attend(q, k, v, mask)

    def backward_op(ctx, *args, **kwargs):
        raise NotImplementedError("dit_attn controls under context parallelism are for inference (no backward)")

    return _templated_context_parallel_attention(
        query, key, value, attn_mask, 0.0, False, scale, False, False,
        forward_op=forward_op, backward_op=backward_op, _parallel_config=parallel_config)


def ulysses_group(parallel_config):
    """The process group of a Ulysses all-to-all (the processes that hold the other heads)."""
    mesh = getattr(parallel_config.context_parallel_config, "_ulysses_mesh", None)
    return mesh.get_group() if mesh is not None else None


def mean_over_heads(local_mean: torch.Tensor, layout) -> torch.Tensor:
    """A mean over heads that this process computed over its own heads (``layout.heads``), as the mean over all
    the module's heads (a sum over the processes of a Ulysses group); unchanged on one process."""
    if layout.heads_group is None:
        return local_mean
    import torch.distributed._functional_collectives as funcol

    total = funcol.all_reduce(local_mean * layout.heads, "sum", layout.heads_group)
    return funcol.wait_tensor(total) / layout.model_heads


def gather_keys(x: torch.Tensor, parallel_config, dim: int = 1) -> torch.Tensor:
    """Every process's ``x`` of the ring group, concatenated along ``dim`` in rank order (as diffusers' ring
    gathers its key/value buffer)."""
    import torch.distributed._functional_collectives as funcol

    group = parallel_config.context_parallel_config._ring_mesh.get_group()
    gathered = funcol.all_gather_tensor(x.movedim(dim, 0).contiguous(), gather_dim=0, group=group)
    return funcol.wait_tensor(gathered).movedim(0, dim)


def changing_names(controls) -> list[str]:
    """Names of the controls that change attention (all but the observers PassThrough and Recorder)."""
    return sorted({type(c).__name__ for c in controls if not isinstance(c, (PassThrough, Recorder))})


def refuse(controls, cp_mode: str, where: str) -> None:
    """Raise, naming them, if some of ``controls`` cannot run exactly under ``cp_mode`` (see :func:`mode`)."""
    if cp_mode == "ulysses":
        refused = sorted({type(c).__name__ for c in controls if not c.context_parallel})
        if refused:
            raise NotImplementedError(
                f"{', '.join(refused)} cannot run under diffusers' context parallelism yet ({where}); generate on "
                "one process, or leave it out")
    elif cp_mode == "ring":
        refused = sorted({type(c).__name__ for c in controls if not c.ring_parallel})
        if refused:
            _refuse_ring(refused, where)
    elif cp_mode == "unified" and changing_names(controls):
        _refuse_unified(changing_names(controls), where)


def _refuse_ring(names: list[str], where: str) -> None:
    raise NotImplementedError(
        f"{', '.join(names)} cannot run under diffusers' ring attention ({where}): no process holds the queries "
        "and keys of the whole sequence in one order there (dit_attn runs per-key controls such as Emphasis and "
        "EntropyScale under ring). Use Ulysses context parallelism (ContextParallelConfig(ulysses_degree=N)), "
        "where every dit_attn control is exact")


def _refuse_unified(names: list[str], where: str) -> None:
    raise NotImplementedError(
        f"{', '.join(names)} cannot run under diffusers' unified (ring + Ulysses) attention ({where}) yet; use "
        "ContextParallelConfig(ulysses_degree=N) alone")
