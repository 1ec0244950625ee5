"""What every benchmark here shares: the one timer, the machine the numbers come from, the docs updater.

* :func:`seconds`: wall time of one call, with the GPU synchronised before and after (whole pipeline calls,
  interleaved by the caller so that machine noise hits every configuration alike);
* :func:`time_ms`: median milliseconds per call of a small function (attention calls, kernels): Triton's
  ``do_bench`` on CUDA (it flushes the L2 cache between calls), else the median of ``repeats`` timed calls after
  ``warmup`` untimed ones;
* :func:`machine_info` / :func:`machine_line`: CPU, threads, GPU (or ``None``), python, torch and diffusers
  versions, date: printed and written beside every number;
* :func:`default_model`: the model an experiment runs by default (a bundled ShapesWorld one when installed);
* :func:`update_doc`: replaces the block between ``<!-- NAME -->`` and ``<!-- /NAME -->`` of a markdown page, for
  the experiments whose ``--write-docs`` flag refreshes the docs' results (:func:`add_docs_arguments`,
  :func:`write_docs`; only those scripts call it).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def _synchronize(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object], device=None) -> float:
    """Wall seconds of one call of ``fn`` (``device`` ``"cuda"``: synchronised before and after)."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def time_ms(fn: Callable[[], object], device=None, *, repeats: int = 5, warmup: int = 1, cuda_warmup_ms: int = 25,
            cuda_rep_ms: int = 100) -> float:
    """Median milliseconds per call of ``fn``.

    CUDA: ``triton.testing.do_bench`` with ``cuda_warmup_ms`` / ``cuda_rep_ms`` of warm-up and measurement.
    Elsewhere: ``warmup`` untimed calls, then the median of ``repeats`` timed ones.

    >>> time_ms(lambda: sum(range(1000)), "cpu", repeats=3) >= 0.0
    True
    """
    if device is not None and torch.device(device).type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=cuda_warmup_ms, rep=cuda_rep_ms, return_mode="median"))
    for _ in range(warmup):
        fn()
    return 1e3 * statistics.median(seconds(fn, device) for _ in range(max(1, repeats)))


def machine_info() -> dict:
    """Where the numbers come from: date (UTC), CPU, cores, torch threads, GPU name (``None`` without CUDA),
    python, torch and diffusers versions."""
    import diffusers

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def machine_line(info: dict | None = None) -> str:
    """:func:`machine_info` in one line, for a benchmark's printed header and its JSON."""
    info = info or machine_info()
    return (f"{info['gpu'] or 'no GPU'}; {info['cpu']}, {info['torch_threads']} torch thread(s); "
            f"torch {info['torch']}, diffusers {info['diffusers']}; {info['date']}")


def add_docs_arguments(parser, page: str) -> None:
    """``--write-docs`` (off by default: refreshing the docs is a maintainer's step) and ``--doc`` (the page, default
    ``page``) for an experiment's command line; :func:`write_docs` acts on them."""
    parser.add_argument("--write-docs", action="store_true", help="rewrite the results block of --doc")
    parser.add_argument("--doc", default=page, help=f"the page --write-docs rewrites (default {page})")


def write_docs(args, text: str) -> None:
    """With ``--write-docs``, put ``text`` in the results block of ``--doc`` (:func:`update_doc`)."""
    if args.write_docs:
        update_doc(args.doc, text)


def update_doc(doc: str | os.PathLike, text: str, marker: str = "results") -> None:
    """Put ``text`` between ``<!-- marker -->`` and ``<!-- /marker -->`` in the markdown file ``doc`` (the block is
    appended when the page has none). Called by the experiments' ``--write-docs``, never on import."""
    doc = Path(doc)
    opening, closing = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    body = doc.read_text() if doc.exists() else ""
    block = f"{opening}\n{text}\n{closing}"
    if opening in body:
        body = re.sub(re.escape(opening) + ".*?" + re.escape(closing), lambda _: block, body, flags=re.S)
    else:
        body += ("\n" if body else "") + block + "\n"
    doc.write_text(body)


def default_model(kinds=("t2i",), fallback: str = "tiny:sd3") -> str:
    """The model an experiment runs when none is named: the first bundled ShapesWorld model of ``kinds`` whose
    weights are installed (``shapes:<kind>``), else ``fallback`` (a tiny random-weight pipeline)."""
    from dit_attn.pipelines import shapes_models

    installed = shapes_models()
    return next((f"shapes:{kind}" for kind in kinds if kind in installed), fallback)
