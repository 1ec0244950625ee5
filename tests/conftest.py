"""Test-wide set-up.

Triton reads TRITON_INTERPRET when it is first imported (diffusers and torch._dynamo import it too), so the
kernel tests' interpreter mode must be set before anything else is imported.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

_BASE_SEED = pytest.StashKey[int]()


def pytest_addoption(parser):
    parser.addoption("--seed", type=int, default=None,
                     help="base seed of every test's global RNGs (default: a fresh one per run, shown in the header)")


def pytest_configure(config):
    seed = config.getoption("--seed")
    config.stash[_BASE_SEED] = seed if seed is not None else random.SystemRandom().randrange(2**31)


def pytest_report_header(config):
    seed = config.stash[_BASE_SEED]
    return f"global RNG base seed: {seed} (reproduce a run with --seed {seed})"


@pytest.fixture(autouse=True)
def _seed_global_rngs(request):
    """Seed torch's, numpy's and Python's global RNGs before every test from the run's base seed and the test's id,
    and print it: tests that draw from the global RNG (``torch.randn`` without a generator, seeds drawn with
    ``torch.randint``) then vary from run to run yet every failure shows (captured output) how to replay it, and
    a test's draws do not depend on which tests ran before it."""
    import numpy as np
    import torch

    base = request.config.stash[_BASE_SEED]
    seed = zlib.crc32(f"{base}:{request.node.nodeid}".encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    print(f"global RNG seed {seed} (test id + base seed {base}; replay with --seed {base})")


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
