"""Which LoRA adapters are active, per pass: a condition's own adapter in its write pass, none of the condition
adapters in the denoising passes (conditions are the only tokens they were trained on).

We set peft's per-layer ``_active_adapter`` / ``_disable_adapters`` directly instead of calling
``set_adapter``/``enable_adapters``: those also flip ``requires_grad``, which would freeze the adapter being
trained the moment a pass switches it off.
"""

from __future__ import annotations

import contextlib


def _tuner_layers(model):
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def adapter_names(model) -> set[str]:
    names: set[str] = set()
    for layer in _tuner_layers(model):
        names.update(getattr(layer, "lora_A", {}).keys())
    return names


@contextlib.contextmanager
def adapter_scope(model, only: str | None = None, exclude: set[str] | frozenset = frozenset()):
    """Within the block, ``only`` (if given) is the single active adapter; otherwise the active ones minus
    ``exclude``. Restores every layer's active set and enabled flag afterwards. A no-op without peft layers."""
    layers = _tuner_layers(model)
    if not layers or (only is None and not exclude):
        yield
        return
    if only is not None and only not in adapter_names(model):
        raise ValueError(f"condition adapter {only!r} is not loaded on the transformer; loaded: "
                         f"{sorted(adapter_names(model)) or 'none'}")
    saved = [(m, m._active_adapter, m._disable_adapters) for m in layers]
    try:
        for m, active, _ in saved:
            current = [active] if isinstance(active, str) else list(active)
            if only is not None:
                m._active_adapter = [only]
                m._disable_adapters = False
            else:
                m._active_adapter = [a for a in current if a not in exclude]
        yield
    finally:
        for m, active, disabled in saved:
            m._active_adapter = active
            m._disable_adapters = disabled
