"""The bundled ShapesWorld models: :func:`load_shapes` returns a ready diffusers pipeline, offline.

The trained folders live in ``dit_attn/pipelines/shapes/models/<kind>/`` (``save_pretrained`` layout,
safetensors), so they also load with the standard ``DiffusionPipeline.from_pretrained(model_dir(kind))``.

Example::

    >>> from dit_attn.pipelines import load_shapes, shapes_call_kwargs
    >>> pipe = load_shapes("t2i")
    >>> pipe(prompt="a red square above a blue circle", **shapes_call_kwargs("t2i")).images[0].size
    (64, 64)
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .models import KINDS, PIPELINE_CLASSES
from dit_attn.pipelines.compat import dtype_kwargs

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
_TRAIN_COMMAND = ("python -m dit_attn.pipelines.shapes.train --kind {kind} "
                  "--out {path} --minutes 35")


def model_dir(kind: str) -> str:
    """Folder of the bundled model of ``kind`` (it may not exist yet; see :func:`available_kinds`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown ShapesWorld model {kind!r}; expected one of {', '.join(KINDS)}")
    return os.path.join(MODELS_DIR, kind)


def has_weights(kind: str) -> bool:
    """True iff the bundled folder of ``kind`` holds a complete pipeline (model_index.json + transformer)."""
    d = model_dir(kind)
    return (os.path.isfile(os.path.join(d, "model_index.json"))
            and os.path.isfile(os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors")))


def available_kinds() -> tuple[str, ...]:
    """The kinds whose trained weights are bundled."""
    return tuple(k for k in KINDS if has_weights(k))


def adapter_files(kind: str = "flux") -> dict[str, str]:
    """The condition adapters bundled with the model of ``kind``: ``{name: path to .safetensors}`` (flux:
    ``"edges"``, a spatial adapter for edge maps, and ``"subject"``, a subject adapter for sprite references)."""
    from dit_attn.conditions.adapters import adapters_in

    return adapters_in(os.path.join(model_dir(kind), "adapters"))


def load_shapes(kind: str = "t2i", torch_dtype: Optional[torch.dtype] = None, adapters: bool = True):
    """The bundled ShapesWorld pipeline of ``kind``, loaded offline from safetensors.

    ``kind``: ``"t2i"`` (``StableDiffusion3Pipeline``), ``"flux"`` (``FluxPipeline``) or ``"t2v"``
    (``WanPipeline``). ``torch_dtype`` defaults to float32 (weights are stored partly in float16). The progress bar
    is off; use :func:`dit_attn.pipelines.shapes_call_kwargs` for the default size / steps / guidance.
    ``adapters``: load the bundled condition adapters (flux: ``"edges"``, ``"subject"``; see
    :func:`adapter_files`) onto the transformer, inactive in ordinary forwards, for
    ``dit_attn.SpatialCondition(image, adapter="edges")`` / ``SubjectCondition(image, keyword, adapter="subject")``.

    Example::

        >>> import torch
        >>> from dit_attn.pipelines.shapes.bundled import available_kinds, load_shapes
        >>> "t2i" in available_kinds()
        True
        >>> pipe = load_shapes("t2i", torch_dtype=torch.float16)
        >>> type(pipe).__name__, pipe.transformer.dtype
        ('StableDiffusion3Pipeline', torch.float16)
        >>> hasattr(load_shapes("flux", adapters=False).transformer, "peft_config")  # no condition adapters
        False
    """
    import diffusers

    path = model_dir(kind)
    if not has_weights(kind):
        raise FileNotFoundError(
            f"the ShapesWorld {kind!r} model has no trained weights at {path}; train them with "
            f"`{_TRAIN_COMMAND.format(kind=kind, path=path)}` (about 35-40 minutes on one CPU thread)")
    cls = getattr(diffusers, PIPELINE_CLASSES[kind])
    pipe = cls.from_pretrained(path, **dtype_kwargs(torch_dtype or torch.float32), use_safetensors=True,
                               local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if adapters and adapter_files(kind):
        from dit_attn.conditions.adapters import load_condition_adapters

        load_condition_adapters(pipe.transformer, os.path.join(path, "adapters"))
        pipe.transformer.to(torch_dtype or torch.float32)
    return pipe


__all__ = ["MODELS_DIR", "model_dir", "has_weights", "available_kinds", "adapter_files", "load_shapes"]
