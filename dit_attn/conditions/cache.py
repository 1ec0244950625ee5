"""The condition cache: per-layer keys/values of every condition (after QK-norm and RoPE), written once by the
write pass and read by the denoising passes. Exact because condition tokens never attend to text or image tokens
and the write pass runs at timestep 0, so their keys/values are the same at every step
(``docs/multi_condition_math.md``, section 4)."""

from __future__ import annotations

import torch


class ConditionCache:
    """``{layer index: {condition index: (key, value)}}`` with tensors ``[B, n, H, D]``.

    ``dtype`` (e.g. ``torch.bfloat16``) stores the cache in another dtype than the model's (cast back on read).

    Example::

        >>> import torch
        >>> cache = ConditionCache()
        >>> cache.store(0, 0, torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8))
        >>> cache.nbytes
        512
    """

    def __init__(self, dtype: torch.dtype | None = None):
        self.dtype = dtype
        self.layers: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    def store(self, layer: int, condition: int, key: torch.Tensor, value: torch.Tensor) -> None:
        if self.dtype is not None and not (key.requires_grad or value.requires_grad):
            key, value = key.to(self.dtype), value.to(self.dtype)
        self.layers.setdefault(layer, {})[condition] = (key, value)

    def get(self, layer: int, condition: int, dtype: torch.dtype | None = None):
        key, value = self.layers[layer][condition]
        if dtype is not None and key.dtype != dtype:
            key, value = key.to(dtype), value.to(dtype)
        return key, value

    def has(self, layer: int, count: int) -> bool:
        return len(self.layers.get(layer, ())) == count

    def clear(self) -> None:
        self.layers.clear()

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                   for per in self.layers.values() for k, v in per.values())

    def report(self) -> dict:
        """Layers, conditions, tokens per condition and bytes (total and per condition)."""
        per: dict[int, int] = {}
        tokens: dict[int, int] = {}
        for entries in self.layers.values():
            for c, (k, v) in entries.items():
                per[c] = per.get(c, 0) + k.numel() * k.element_size() + v.numel() * v.element_size()
                tokens[c] = k.shape[1]
        return {"layers": len(self.layers), "conditions": len(per), "tokens": tokens, "bytes": self.nbytes,
                "bytes_per_condition": per}
