"""Entropy scaling (Jin et al., NeurIPS 2023, arXiv 2306.08645).

Attention entropy grows with the number of keys, so generating at a resolution other than the training one
blurs attention. Multiplying the logits by ``f = sqrt(ln N / ln N_train)`` (N = keys now, N_train = keys at
training; both clamped to >= 2) keeps it stable. Applied to self- and joint attention with N = all keys (text +
visual); never to cross-attention (Wan ``attn2``), whose key count does not depend on the resolution.
It only changes the ``scale`` argument, which every attention backend takes, so it costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..call import AttentionCall
from ..layout import Layout
from .base import Control

# Keys per attention call at each family's main training setting (visual tokens + text tokens).
# FLUX.1 1024² (4096 + 512 T5); SD3 1024² (4096 + 77 CLIP + 256 T5); Wan 2.1 480p 81 frames (32,760, 1.3B);
# HunyuanVideo 720p 129 frames (118,800 + 256); CogVideoX 480x720 49 frames (17,550 + 226).
# Every model was trained at several resolutions, so these are conventions: set ``train_tokens`` for yours.
TRAIN_TOKENS = {"flux": 4608, "sd3": 4429, "wan": 32760, "hunyuan_video": 119056, "cogvideox": 17776}


def entropy_factor(num_keys: int, train_tokens: int) -> float:
    """``sqrt(ln max(N, 2) / ln max(N_train, 2))``.

    >>> round(entropy_factor(16896, 4608), 3)
    1.074
    """
    return math.sqrt(math.log(max(num_keys, 2)) / math.log(max(train_tokens, 2)))


@dataclass
class EntropyScale(Control):
    """Scale attention logits by ``sqrt(log N / log N_train)`` when generating at another resolution.

    Args:
        train_tokens: keys per attention call at training resolution; ``None`` uses the family default
            (:data:`TRAIN_TOKENS`).

    Example:
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("flux")
        >>> with dit_attn.attach(pipe, dit_attn.EntropyScale(train_tokens=64)):
        ...     image = pipe(**tiny_call_kwargs("flux")).images[0]
    """

    ring_parallel = True  # a logit scale from the key count: exact on gathered keys under ring attention

    train_tokens: int | None = None

    def __post_init__(self):
        if self.train_tokens is not None and (not isinstance(self.train_tokens, int) or self.train_tokens < 1):
            raise ValueError(f"EntropyScale.train_tokens must be a positive int or None, got {self.train_tokens!r}")

    def applies_to(self, layout: Layout) -> bool:
        return layout.kind in ("joint", "single", "self")

    def factor(self, layout: Layout, num_keys: int) -> float:
        train = self.train_tokens if self.train_tokens is not None else TRAIN_TOKENS.get(layout.family)
        if train is None:
            raise ValueError(f"EntropyScale has no default train_tokens for family {layout.family!r}; pass one")
        return entropy_factor(num_keys, train)

    def prepare(self, call: AttentionCall) -> AttentionCall:
        call.logit_scale *= self.factor(call.layout, call.key.shape[1])
        return call
