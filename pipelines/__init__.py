"""dit_attn.pipelines: loading pipelines by name and the bundled ShapesWorld models.

Example::

    >>> from dit_attn.pipelines import load_shapes, shapes_call_kwargs
    >>> pipe = load_shapes("t2i")  # StableDiffusion3Pipeline trained on ShapesWorld, offline
    >>> image = pipe(prompt="a red square above a blue circle", **shapes_call_kwargs("t2i")).images[0]
    >>> image.size
    (64, 64)
"""


def load_shapes(kind: str = "t2i", torch_dtype=None, adapters: bool = True):
    """The bundled ShapesWorld pipeline of ``kind`` ("t2i", "t2v", "flux"); see :mod:`.shapes.bundled`
    (``adapters``: load flux's bundled condition adapters "edges" and "subject", off until a condition uses them).

    Example::

        >>> import torch
        >>> from dit_attn.pipelines import load_shapes, shapes_call_kwargs
        >>> pipe = load_shapes("flux")
        >>> type(pipe).__name__, sorted(pipe.transformer.peft_config)  # the bundled condition adapters
        ('FluxPipeline', ['edges', 'subject'])
        >>> kwargs = shapes_call_kwargs("flux", steps=4)
        >>> image = pipe(prompt="a red square above a blue circle", generator=torch.Generator().manual_seed(0),
        ...              **kwargs).images[0]
        >>> image.size, image.mode
        ((64, 64), 'RGB')
    """
    from .shapes.bundled import load_shapes as _load

    return _load(kind, torch_dtype=torch_dtype, adapters=adapters)


def shapes_call_kwargs(kind: str = "t2i", steps=None, guidance=None) -> dict:
    """Default generation settings of a ShapesWorld model; see :func:`.shapes.generate.shapes_call_kwargs`.

    Example (pass them to the pipeline with a prompt; ``steps``/``guidance`` override the defaults)::

        >>> from dit_attn.pipelines import shapes_call_kwargs
        >>> kw = shapes_call_kwargs("t2i")
        >>> kw["height"], kw["width"], kw["num_inference_steps"], kw["guidance_scale"], kw["negative_prompt"]
        (64, 64, 20, 4.0, '')
        >>> kw = shapes_call_kwargs("t2v", steps=4, guidance=1.0)
        >>> kw["num_inference_steps"], kw["guidance_scale"], kw["num_frames"]
        (4, 1.0, 9)
    """
    from .shapes.generate import shapes_call_kwargs as _kwargs

    return _kwargs(kind, steps=steps, guidance=guidance)


def shapes_models() -> tuple[str, ...]:
    """The ShapesWorld kinds whose trained weights are installed (e.g. ``("t2i",)``)."""
    from .shapes.bundled import available_kinds

    return available_kinds()


__all__ = ["load_shapes", "shapes_call_kwargs", "shapes_models"]
