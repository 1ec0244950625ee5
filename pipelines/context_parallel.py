"""One generation split over several processes with diffusers' context parallelism (``--cp ulysses:N``).

``torchrun --nproc-per-node N -m dit_attn.cli generate ... --cp ulysses:N`` (or ``accelerate launch`` with N
processes, or the same for ``batch``) starts N processes that each load the model; :func:`enable` turns on
diffusers' context parallelism on the transformer *before* dit_attn attaches (dit_attn's forward hook must see
the whole inputs), every process runs every generation together, and only process 0 writes files.

Ulysses (``ulysses:N``) splits the heads after an all-to-all: every dit_attn control is exact there. Ring
(``ring:N``) never holds the whole key sequence on one process: stock generation works, and dit_attn controls
that change attention are refused when they are attached (see :mod:`dit_attn.parallel`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

KINDS = ("ulysses", "ring")


@dataclass(frozen=True)
class ContextParallel:
    """A parsed ``--cp`` value: ``kind`` (``"ulysses"`` or ``"ring"``) and ``degree`` (processes per generation).

    Example:
        >>> ContextParallel.parse("ulysses:2")
        ContextParallel(kind='ulysses', degree=2)
    """

    kind: str
    degree: int

    @classmethod
    def parse(cls, text: str) -> "ContextParallel":
        kind, sep, degree = str(text).strip().partition(":")
        kind = kind.lower()
        if kind not in KINDS or not sep or not degree.isdigit() or int(degree) < 2:
            raise ValueError(f"--cp takes 'ulysses:N' or 'ring:N' with N >= 2 processes per generation; got {text!r}")
        return cls(kind, int(degree))

    def config(self):
        from diffusers import ContextParallelConfig

        return ContextParallelConfig(**{f"{self.kind}_degree": self.degree})


def start(cp: ContextParallel) -> tuple[int, str | None]:
    """Join the launch's process group (started by torchrun / accelerate launch) and return ``(rank, device)``;
    the launch must have exactly ``cp.degree`` processes."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != cp.degree:
        raise ValueError(f"--cp {cp.kind}:{cp.degree} splits one generation over {cp.degree} processes; this launch "
                         f"has {world} (start it with `torchrun --nproc-per-node {cp.degree} -m dit_attn.cli ...` "
                         f"or `accelerate launch --num_processes {cp.degree} -m dit_attn.cli ...`)")
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        torch.cuda.set_device(local)
        return dist.get_rank(), f"cuda:{local}"
    _one_cpu_device()
    return dist.get_rank(), None


def _one_cpu_device() -> None:
    """diffusers places process r on device ``r % torch.accelerator.device_count()``, which is 0 without an
    accelerator; on a CPU-only machine (tests, trying it out) every process uses the one CPU device."""
    if torch._C._get_accelerator().type == "cpu" and torch.accelerator.device_count() == 0:
        torch.accelerator.device_count = lambda: 1


def enable(pipe, cp: ContextParallel) -> None:
    """Turn on context parallelism on ``pipe.transformer`` (before dit_attn attaches to it)."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or not getattr(transformer, "_cp_plan", None):
        name = type(transformer).__name__ if transformer is not None else type(pipe).__name__
        raise ValueError(f"{name} has no context-parallel plan in this diffusers release, so --cp cannot split it; "
                         "generate on one process")
    if getattr(transformer, "_parallel_config", None) is None:
        transformer.enable_parallelism(config=cp.config())
