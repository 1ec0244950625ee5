"""dit_attn.pipelines: loading pipelines by name and the bundled ShapesWorld models.

Example::

    >>> from dit_attn.pipelines import load_shapes, shapes_call_kwargs
    >>> pipe = load_shapes("t2i")  # StableDiffusion3Pipeline trained on ShapesWorld, offline
    >>> image = pipe(prompt="a red square above a blue circle", **shapes_call_kwargs("t2i")).images[0]
"""


def load_shapes(kind: str = "t2i", torch_dtype=None, adapters: bool = True):
    """The bundled ShapesWorld pipeline of ``kind`` ("t2i", "t2v", "flux"); see :mod:`.shapes.bundled`
    (``adapters``: load flux's bundled condition adapters "edges" and "subject", off until a condition uses them)."""
    from .shapes.bundled import load_shapes as _load

    return _load(kind, torch_dtype=torch_dtype, adapters=adapters)


def shapes_call_kwargs(kind: str = "t2i", steps=None, guidance=None) -> dict:
    """Default generation settings of a ShapesWorld model; see :func:`.shapes.generate.shapes_call_kwargs`."""
    from .shapes.generate import shapes_call_kwargs as _kwargs

    return _kwargs(kind, steps=steps, guidance=guidance)


def shapes_models() -> tuple[str, ...]:
    """The ShapesWorld kinds whose trained weights are installed (e.g. ``("t2i",)``)."""
    from .shapes.bundled import available_kinds

    return available_kinds()


__all__ = ["load_shapes", "shapes_call_kwargs", "shapes_models"]
