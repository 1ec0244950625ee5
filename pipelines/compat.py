"""What differs between the diffusers releases we support, for the code that loads models.

Its own module, below :mod:`dit_attn.pipelines.loading` and the ShapesWorld loaders alike, so that both can use it
without importing each other.
"""

from __future__ import annotations

from typing import Any

import torch


def dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    """``from_pretrained`` keyword for a dtype: ``dtype`` where diffusers deprecates ``torch_dtype`` (0.36 on),
    ``torch_dtype`` on older releases; nothing for ``None``.

    >>> import torch
    >>> list(dtype_kwargs(torch.float32).values()), dtype_kwargs(None)
    ([torch.float32], {})
    """
    if dtype is None:
        return {}
    from diffusers.utils import deprecation_utils

    new = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype": dtype} if new else {"torch_dtype": dtype}
