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
    _AttentionBackendRegistry.set_active_backend(before)
