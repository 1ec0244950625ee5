"""Run a stock diffusers attention processor with its attention call routed to dit_attn.

Every diffusers attention processor does the same three things: compute Q/K/V (projections, norms, RoPE, the
concatenation of text and image tokens), attend, and finish (split, output projections). The attend step is one
call by name to a module-level function: ``dispatch_attention_fn(q, k, v, ...)`` in current processors, or
``F.scaled_dot_product_attention(q, k, v, ...)`` in the older ones (SD3, CogVideoX, CogView4, Lumina2).

:func:`route_attention` copies a processor's ``__call__`` function with one difference: in the copy those global
names resolve to functions we pass in. Everything else (every projection, norm, RoPE variant, mask construction
and dtype cast of the installed diffusers release) is the stock code itself, so with no control active the output
is stock by construction, on every diffusers release, and a new model family costs data, not code. Nothing in
diffusers is modified: the copy has its own globals dictionary (a shallow copy of the processor module's), so
other processors, other threads and other pipelines see the stock functions.

Attention performed inside a helper function the processor calls (rather than in ``__call__`` itself) is not
routed; :class:`dit_attn.processor.DitAttnProcessor` notices when a call saw no attention and logs it.
"""

from __future__ import annotations

import inspect
import types
from typing import Callable

import torch

#: The global names through which stock processors attend, and the tensor layout each one takes.
DISPATCH = "dispatch_attention_fn"  # diffusers' dispatcher: [batch, tokens, heads, head_dim]
FUNCTIONAL = "F"  # ``torch.nn.functional`` as ``F``, for ``F.scaled_dot_product_attention``: [batch, heads, tokens, head_dim]


def entry_points(fn: Callable) -> set[str]:
    """The attention entry points (``DISPATCH``, ``FUNCTIONAL``) that ``fn``'s own body uses."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return set()
    found = set()
    if DISPATCH in code.co_names:
        found.add(DISPATCH)
    if FUNCTIONAL in code.co_names and "scaled_dot_product_attention" in code.co_names:
        found.add(FUNCTIONAL)
    return found


def _functional_with(sdpa: Callable) -> types.ModuleType:
    """A module object that is ``torch.nn.functional`` except for ``scaled_dot_product_attention``."""
    functional = torch.nn.functional
    module = types.ModuleType(functional.__name__, functional.__doc__)
    module.__dict__.update(functional.__dict__)
    module.scaled_dot_product_attention = sdpa
    return module


def route_attention(fn: Callable, dispatch: Callable | None = None, sdpa: Callable | None = None) -> types.FunctionType:
    """A copy of the function ``fn`` whose attention calls go to ``dispatch`` / ``sdpa``.

    ``dispatch`` replaces the global ``dispatch_attention_fn``, ``sdpa`` replaces ``F.scaled_dot_product_attention``
    (through a copy of ``torch.nn.functional``). ``fn`` itself is left untouched.

    Example:
        >>> import torch
        >>> from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
        >>> seen = []
        >>> def spy(query, key, value, *args, **kwargs):
        ...     seen.append(tuple(query.shape))
        ...     return torch.zeros_like(query)
        >>> routed = route_attention(FluxAttnProcessor.__call__, dispatch=spy)
        >>> routed is FluxAttnProcessor.__call__, routed.__code__ is FluxAttnProcessor.__call__.__code__
        (False, True)
        >>> inspect.signature(routed) == inspect.signature(FluxAttnProcessor.__call__)
        True
    """
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"route_attention expects a plain function; got {type(fn).__name__}")
    names = dict(fn.__globals__)
    if dispatch is not None:
        names[DISPATCH] = dispatch
    if sdpa is not None:
        names[FUNCTIONAL] = _functional_with(sdpa)
    routed = types.FunctionType(fn.__code__, names, fn.__name__, fn.__defaults__, fn.__closure__)
    routed.__kwdefaults__ = fn.__kwdefaults__
    routed.__qualname__ = fn.__qualname__
    routed.__module__ = fn.__module__
    routed.__doc__ = fn.__doc__
    routed.__annotations__ = dict(fn.__annotations__)
    return routed


def parameter_names(fn: Callable) -> list[str]:
    """Names of ``fn``'s parameters that can be passed positionally, in order."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]
