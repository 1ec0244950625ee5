"""Controls, one module per paper's math, and building them from plain config (CLI flags, job files, the UI).

``controls_from_config({"entropy": {"train_tokens": 4096}, "emphasis": {}})`` returns control objects; unknown
names or fields give a ``ValueError`` naming what is allowed.
"""

from __future__ import annotations

import dataclasses
import importlib

# name in configs -> (module, class). Imported on first use, so that reading a config stays cheap; every control is
# part of every install, so a control that fails to import is a broken module and the error is raised as it is.
REGISTRY = {
    "entropy": ("dit_attn.controls.entropy", "EntropyScale"),
    "emphasis": ("dit_attn.controls.emphasis", "Emphasis"),
    "softpag": ("dit_attn.controls.head_guidance", "SoftPAG"),
    "sparse": ("dit_attn.controls.sparse", "RectifiedSparse"),
}


def available_controls() -> dict[str, type]:
    """The control classes, by config name (the names job files and the UI use).

    Example::

        >>> sorted(available_controls())
        ['emphasis', 'entropy', 'softpag', 'sparse']
    """
    return {name: getattr(importlib.import_module(module), cls) for name, (module, cls) in REGISTRY.items()}


def controls_from_config(config: dict | None) -> list:
    """Control objects from ``{name: {field: value}}`` (a list of such dicts also works, for repeated controls).

    Example::

        >>> controls_from_config({"emphasis": {"queries": "all"}, "entropy": {}})
        [Emphasis(mode='attention', queries='all', layers=None, schedule=None), EntropyScale(train_tokens=None)]
        >>> controls_from_config({"emphasis": {"strength": 2}})
        Traceback (most recent call last):
        ...
        ValueError: control 'emphasis' has no field(s) ['strength']; allowed: ['layers', 'mode', 'queries', 'schedule']
    """
    if not config:
        return []
    entries = config if isinstance(config, list) else [{k: v} for k, v in config.items()]
    classes = available_controls()
    controls = []
    for entry in entries:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"each control entry must be {{name: {{fields}}}}; got {entry!r}")
        (name, fields), = entry.items()
        if name not in classes:
            raise ValueError(f"unknown control {name!r}; available: {', '.join(sorted(classes))}")
        cls = classes[name]
        fields = fields or {}
        if not isinstance(fields, dict):
            raise ValueError(f"fields of control {name!r} must be an object; got {fields!r}")
        if dataclasses.is_dataclass(cls):
            allowed = {f.name for f in dataclasses.fields(cls) if f.init}
            unknown = set(fields) - allowed
            if unknown:
                raise ValueError(f"control {name!r} has no field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        try:
            controls.append(cls(**fields))
        except TypeError as e:
            raise ValueError(f"control {name!r}: {e}") from None
    return controls
