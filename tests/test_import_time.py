"""`import dit_attn` is cheap: public names load on first use, so tools and the CLI's --help do not wait."""

import subprocess
import sys


def _seconds(code: str) -> float:
    timer = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", timer], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_import_costs_at_most_1_3x_diffusers_and_torch():
    # Fresh interpreters, alternated, best of three each (a busy machine slows single runs by seconds).
    ours, base = [], []
    for _ in range(3):
        ours.append(_seconds("import dit_attn"))
        base.append(_seconds("import diffusers, torch"))
    assert min(ours) <= 1.3 * min(base), (ours, base)


def test_public_names_load_on_first_use_and_unknown_names_fail():
    code = ("import sys, dit_attn; assert 'dit_attn.processor' not in sys.modules; "
            "assert dit_attn.attach.__module__ == 'dit_attn.attachment'; assert 'dit_attn.processor' in sys.modules; "
            "assert 'attach' in dir(dit_attn)\n"
            "try:\n    dit_attn.nope\nexcept AttributeError as e:\n    assert 'nope' in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_attach_stays_a_function_whatever_is_imported_first():
    """A submodule named like a public function would replace it on the package once imported: none is."""
    code = ("import dit_attn.attachment, dit_attn.processor, dit_attn.head_search, dit_attn.state; import dit_attn; "
            "assert callable(dit_attn.attach) and dit_attn.attach.__name__ == 'attach'; "
            "import pkgutil; names = {m.name for m in pkgutil.iter_modules(dit_attn.__path__)}; "
            "clash = sorted(names & set(dit_attn.__all__)); assert not clash, clash")
    subprocess.run([sys.executable, "-c", code], check=True)
