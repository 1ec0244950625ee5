"""Which LoRA adapters are active, per pass: a condition's own adapter in its write pass, none of the condition
adapters in the denoising passes (conditions are the only tokens they were trained on), except **latent**
adapters: trained with ``latent_lora`` (OminiControl's latent LoRA), they also act on the text and image tokens
of the denoising passes of a pipeline that uses their condition.

We set peft's per-layer ``_active_adapter`` / ``_disable_adapters`` directly instead of calling
``set_adapter``/``enable_adapters``: those also flip ``requires_grad``, which would freeze the adapter being
trained the moment a pass switches it off.
"""

from __future__ import annotations

import contextlib
import json
import os


def _tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft is a dependency: condition adapters are LoRA layers

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _names_of(layers) -> set[str]:
    names: set[str] = set()
    for layer in layers:
        names.update(getattr(layer, "lora_A", {}).keys())
    return names


def adapter_names(model) -> set[str]:
    """Names of the LoRA adapters loaded on ``model`` (active or not).

    Example::

        >>> import torch
        >>> adapter_names(torch.nn.Linear(2, 2))
        set()
    """
    return _names_of(_tuner_layers(model))


_LATENT = "_dit_attn_latent_adapters"  # attribute of the transformer: names of its latent condition adapters


def latent_adapters(model) -> set[str]:
    """The loaded condition adapters of ``model`` that also act on the denoising passes' text and image tokens.

    Example (an adapter marked latent counts once it is loaded)::

        >>> import torch
        >>> from peft import LoraConfig
        >>> from diffusers.models.modeling_utils import ModelMixin
        >>> from diffusers.loaders.peft import PeftAdapterMixin
        >>> class Tiny(ModelMixin, PeftAdapterMixin):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.proj = torch.nn.Linear(4, 4)
        >>> model = Tiny()
        >>> mark_latent_adapter(model, "subject")
        >>> latent_adapters(model)
        set()
        >>> model.add_adapter(LoraConfig(r=2, target_modules=["proj"]), adapter_name="subject")
        >>> latent_adapters(model)
        {'subject'}
        >>> mark_latent_adapter(model, "subject", latent=False)
        >>> latent_adapters(model)
        set()
    """
    marked = set(getattr(model, _LATENT, ()))
    return marked & adapter_names(model) if marked else set()  # no module walk in the common, unmarked case


def mark_latent_adapter(model, name: str, latent: bool = True) -> None:
    """Record whether adapter ``name`` of ``model`` is latent (see the module docstring); an example is under
    :func:`latent_adapters`. :func:`load_condition_adapter` marks adapters whose config says ``latent_lora``."""
    names = set(getattr(model, _LATENT, ()))
    if latent:
        names.add(name)
    else:
        names.discard(name)
    setattr(model, _LATENT, names)


@contextlib.contextmanager
def adapter_scope(model, only: str | set[str] | None = None, exclude: set[str] | frozenset = frozenset(),
                  include: set[str] | frozenset = frozenset()):
    """Within the block, ``only`` (a name or a set of names, if given) is exactly the active set of adapters;
    otherwise the active ones minus ``exclude`` plus ``include`` (enabled). Restores every layer's active set and
    enabled flag afterwards. A no-op without peft layers."""
    layers = _tuner_layers(model)  # one walk over the modules per scope (this runs once per denoising forward)
    wanted = None if only is None else sorted({only} if isinstance(only, str) else set(only))
    requested = list(wanted or ()) + sorted(include)
    loaded = _names_of(layers) if requested else set()
    for name in requested:  # also when no adapter is loaded at all
        if name not in loaded:
            raise ValueError(f"condition adapter {name!r} is not loaded on the transformer; loaded: "
                             f"{sorted(loaded) or 'none'}")
    if not layers or (only is None and not exclude and not include):
        yield
        return
    saved = [(m, m._active_adapter, m._disable_adapters) for m in layers]
    try:
        for m, active, disabled in saved:
            current = [active] if isinstance(active, str) else list(active)
            if wanted is not None:
                m._active_adapter = list(wanted)
                m._disable_adapters = False
            else:
                # adapters the user disabled (pipe.disable_lora()) stay off when `include` enables the layer
                kept = [] if disabled else [a for a in current if a not in exclude]
                m._active_adapter = kept + [a for a in sorted(include) if a not in kept]
                if include:
                    m._disable_adapters = False
        yield
    finally:
        for m, active, disabled in saved:
            m._active_adapter = active
            m._disable_adapters = disabled


def adapter_config_path(weights_path: str) -> str:
    """``edges.safetensors`` -> ``edges.json``: the LoRA settings saved beside a trained adapter."""
    root, _ = os.path.splitext(weights_path)
    return root + ".json"


def load_condition_adapter(transformer, weights_path: str, adapter_name: str | None = None,
                           config: dict | None = None) -> str:
    """Load a condition adapter saved by :func:`dit_attn.pipelines.conditions.train.train` onto ``transformer``.

    ``weights_path``: the adapter's ``.safetensors`` (peft state dict); its LoRA settings (``rank``, ``alpha``,
    ``target_modules``) come from ``config`` or the ``.json`` beside it. ``adapter_name`` defaults to the file
    name (``edges.safetensors`` -> ``"edges"``). Loading an adapter under a name that exists replaces that adapter
    (weights and LoRA settings: a retrained adapter may have another rank or other target modules).
    Condition adapters are **inactive in ordinary forwards** (the transformer stays as it was: stock, or with the
    LoRA adapters that were active before, e.g. a style LoRA);
    :class:`dit_attn.MultiCondition` switches one on for its condition's write pass only
    (``SpatialCondition(image, adapter="edges")``), and an adapter trained with ``latent_lora`` (its config says
    so) for the denoising passes too. Returns the adapter name.

    Example::

        >>> from dit_attn.pipelines import load_shapes
        >>> pipe = load_shapes("flux", adapters=False)
        >>> from dit_attn.pipelines.shapes.bundled import adapter_files
        >>> load_condition_adapter(pipe.transformer, adapter_files()["edges"])
        'edges'
    """
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"no condition adapter at {weights_path}")
    name = adapter_name or os.path.splitext(os.path.basename(weights_path))[0]
    if config is None:
        meta_path = adapter_config_path(weights_path)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{weights_path} has no {os.path.basename(meta_path)} beside it with its LoRA "
                                    "settings (rank, alpha, target_modules); pass config=")
        with open(meta_path) as f:
            config = json.load(f)
    missing = {"rank", "alpha", "target_modules"} - set(config)
    if missing:
        raise ValueError(f"condition adapter config lacks {sorted(missing)}")
    # peft makes a newly added adapter the only active one: remember what was active (e.g. a user's style LoRA).
    before = {layer: (layer._active_adapter, layer._disable_adapters) for layer in _tuner_layers(transformer)}
    if name in adapter_names(transformer):
        # Replace it whole: the new file may have another rank, alpha or target modules (a retrained adapter).
        transformer.delete_adapters(name)
    transformer.add_adapter(LoraConfig(r=int(config["rank"]), lora_alpha=float(config["alpha"]),
                                       target_modules=list(config["target_modules"])), adapter_name=name)
    result = set_peft_model_state_dict(transformer, load_file(weights_path), adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{weights_path} does not fit the transformer: unexpected keys {unexpected[:4]}")
    for layer in _tuner_layers(transformer):  # ordinary forwards: as before, without the condition adapter
        active, disabled = before.get(layer, ([], False))
        active = [active] if isinstance(active, str) else list(active)
        layer._active_adapter = [a for a in active if a != name]
        layer._disable_adapters = disabled
    mark_latent_adapter(transformer, name, bool(config.get("latent_lora", False)))
    return name


def adapters_in(folder: str) -> dict[str, str]:
    """The condition adapters saved in ``folder``: ``{name: path to .safetensors}`` ({} when it does not exist)."""
    if not os.path.isdir(folder):
        return {}
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.endswith(".safetensors")}


def load_condition_adapters(transformer, folder: str) -> list[str]:
    """:func:`load_condition_adapter` for every adapter in ``folder`` (each under its file name); their names."""
    return [load_condition_adapter(transformer, path, name) for name, path in adapters_in(folder).items()]

