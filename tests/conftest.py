"""Test-wide set-up.

Triton reads TRITON_INTERPRET when it is first imported (diffusers and torch._dynamo import it too), so the
kernel tests' interpreter mode must be set before anything else is imported.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_global_attention_backend():
    """diffusers' ``set_attention_backend`` also sets a process-wide default that ``reset_attention_backend`` does
    not undo; restore it after every test so one test's backend never leaks into the next."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry._active_backend = before


def _families_missing_from_diffusers() -> dict[str, list[str]]:
    """``{family: [diffusers classes it needs that the installed release lacks]}`` (transformer and tiny pipeline)."""
    import diffusers

    from dit_attn import families, testing

    missing = {}
    for name, family in families.FAMILIES.items():
        needed = [family.transformer_class]
        if name in testing._PLUGIN_FAMILIES:
            needed.append(testing._plugin(name).PIPELINE_CLASS)
        lacking = [cls for cls in needed if not hasattr(diffusers, cls)]
        if lacking:
            missing[name] = lacking
    return missing


def pytest_collection_modifyitems(config, items):
    """Older diffusers releases lack some families' classes (Flux2, Z-Image, HunyuanVideo 1.5 before 0.36/0.37):
    their parametrised tests are skipped, naming the class, instead of failing at construction."""
    missing = _families_missing_from_diffusers()
    if not missing:
        return
    import diffusers

    for item in items:
        callspec = getattr(item, "callspec", None)
        for value in (callspec.params.values() if callspec else ()):
            if isinstance(value, str) and value in missing:
                item.add_marker(pytest.mark.skip(
                    reason=f"diffusers {diffusers.__version__} has no {', '.join(missing[value])}"))
                break
