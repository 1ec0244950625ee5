"""Loading pipelines by name and building their call arguments.

``model`` is ``"tiny:<family>"`` (the offline tiny random-weight pipelines of :mod:`dit_attn.testing`),
``"shapes:<kind>"`` (the bundled trained ShapesWorld models ``shapes:t2i``, ``shapes:t2v``, ``shapes:flux``; see
:func:`dit_attn.pipelines.load_shapes`; :func:`call_kwargs` gives them their default size, steps and guidance), a
local folder saved with ``save_pretrained``, or a hub id. Weights load from safetensors only and remote code is
never trusted.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from .compat import dtype_kwargs  # noqa: F401 - loaders import it from here too

TINY_PREFIX = "tiny:"
SHAPES_PREFIX = "shapes:"


def load_pipeline(model: str, torch_dtype: torch.dtype | None = None):
    """A diffusers pipeline for ``model`` (see module docstring)."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be 'tiny:<family>', 'shapes:<kind>', a local folder or a hub id; "
                         f"got {model!r}")
    if model.startswith(TINY_PREFIX):
        from dit_attn.testing import ALL_FAMILIES, tiny_pipeline

        family = model[len(TINY_PREFIX):]
        if family not in ALL_FAMILIES:
            raise ValueError(f"unknown tiny model {model!r}; choose one of "
                             f"{', '.join(TINY_PREFIX + f for f in ALL_FAMILIES)}")
        return tiny_pipeline(family)
    if model.startswith(SHAPES_PREFIX):
        from dit_attn.pipelines.shapes.bundled import load_shapes
        from dit_attn.pipelines.shapes.models import KINDS

        kind = model[len(SHAPES_PREFIX):]
        if kind not in KINDS:
            raise ValueError(f"unknown ShapesWorld model {model!r}; choose one of "
                             f"{', '.join(SHAPES_PREFIX + k for k in KINDS)}")
        return load_shapes(kind, torch_dtype=torch_dtype)
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = {"use_safetensors": True}
    kwargs.update(dtype_kwargs(torch_dtype))
    if not os.path.isdir(model) and os.path.sep in model and not model.count("/") == 1:
        raise ValueError(f"model folder {model!r} does not exist")
    return DiffusionPipeline.from_pretrained(model, **kwargs)


def model_defaults(model: str) -> dict[str, Any]:
    """The settings a model generates with when a job, the CLI or the app leaves them out: ``steps``,
    ``guidance`` (the pipeline's ``guidance_scale``), ``width``, ``height`` (``{}`` for models without known
    defaults: the pipeline's own then apply).

    >>> model_defaults("shapes:t2i")["steps"], model_defaults("tiny:sd3")["steps"], model_defaults("owner/x")
    (20, 2, {})
    """
    if model.startswith(TINY_PREFIX):
        from dit_attn.testing import ALL_FAMILIES, tiny_call_kwargs

        family = model[len(TINY_PREFIX):]
        if family not in ALL_FAMILIES:
            return {}
        kw = tiny_call_kwargs(family)
    elif model.startswith(SHAPES_PREFIX):
        from dit_attn.pipelines.shapes.generate import shapes_call_kwargs
        from dit_attn.pipelines.shapes.models import KINDS

        kind = model[len(SHAPES_PREFIX):]
        if kind not in KINDS:
            return {}
        kw = shapes_call_kwargs(kind)
        if kind == "flux":  # true CFG is this model's guidance
            kw["guidance_scale"] = kw["true_cfg_scale"]
    else:
        return {}
    return {"steps": kw.get("num_inference_steps"), "guidance": kw.get("guidance_scale"), "width": kw.get("width"),
            "height": kw.get("height")}


def call_kwargs(pipe, params: dict, generator: torch.Generator) -> dict:
    """Keyword arguments for ``pipe(...)`` from job parameters, keeping only what the pipeline accepts."""
    accepted = set(inspect.signature(pipe.__call__).parameters)
    model = params.get("model", "")
    kwargs: dict[str, Any] = {}
    if model.startswith(TINY_PREFIX):
        from dit_attn.testing import tiny_call_kwargs

        kwargs.update(tiny_call_kwargs(model[len(TINY_PREFIX):], steps=params.get("steps") or 2))
    elif model.startswith(SHAPES_PREFIX):
        from dit_attn.pipelines.shapes.generate import shapes_call_kwargs

        kwargs.update(shapes_call_kwargs(model[len(SHAPES_PREFIX):]))
    kwargs.update({"prompt": params["prompt"], "generator": generator, "output_type": "pil"})
    if params.get("negative_prompt") is not None:
        kwargs["negative_prompt"] = params["negative_prompt"]
    for src, dst in (("steps", "num_inference_steps"), ("guidance", "guidance_scale"), ("width", "width"),
                     ("height", "height"), ("num_frames", "num_frames")):
        if params.get(src) is not None:
            kwargs[dst] = params[src]
    if model == SHAPES_PREFIX + "flux" and params.get("guidance") is not None:
        # the ShapesWorld FLUX has no distilled guidance embedding: guidance is true classifier-free guidance
        kwargs.update(true_cfg_scale=params["guidance"], guidance_scale=1.0)
    return {k: v for k, v in kwargs.items() if k in accepted}


def quiet_loading() -> None:
    """No per-component loading bars and no third-party deprecation notices we cannot act on (diffusers' and
    transformers' own) in our commands: a command's stderr is then its messages, and an error is one line. Our
    own warnings (``dit_attn``) stay. Only the CLI and the app call this; the library leaves warnings alone."""
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for module in ("diffusers", "transformers", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
