"""The numbers README.md and docs/ publish about the bundled ShapesWorld models, and the band check that guards them.

Each published number comes from the JSON the docs cite (``docs/shapesworld/<kind>_scores.json``,
``docs/multi_condition/fidelity_hand_drawn.json``), and the tests also check that the docs quote it, so the JSON,
the prose and the bundled weights cannot drift apart silently.

The band: a published rate ``p`` re-measured on ``n`` trials (objects, prompts, movers or scenes) is accepted
within ``p +- z * sqrt(p (1 - p) / n) + 1 / n``. For a pass/fail criterion that is ``z`` binomial standard errors;
for a mean of scores in [0, 1] (edge F1, a per-prompt colour fraction) ``p (1 - p)`` bounds the variance, so the
band is conservative. The ``1 / n`` term lets one trial flip (float differences between machines on the
documented sample itself). ``z = 3``: a model as good as the published one fails about 3 times in 1 000.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
Z = 3.0


@dataclass(frozen=True)
class BandCheck:
    """One published number against its re-measurement."""

    name: str
    published: float
    measured: float
    n: int
    z: float = Z

    @property
    def half_width(self) -> float:
        p = self.published
        return self.z * math.sqrt(p * (1.0 - p) / self.n) + 1.0 / self.n

    @property
    def low(self) -> float:
        return self.published - self.half_width

    @property
    def high(self) -> float:
        return self.published + self.half_width

    @property
    def ok(self) -> bool:
        return self.low <= self.measured <= self.high

    def __str__(self) -> str:
        verdict = "inside" if self.ok else "OUTSIDE"
        return (f"{self.name}: measured {self.measured:.4f} on n={self.n}, {verdict} the band "
                f"[{self.low:.4f}, {self.high:.4f}] around the published {self.published:.4f}")


def check_bands(measured: dict[str, tuple[float, int]], published: dict[str, float], z: float = Z,
                prefix: str = "") -> list[BandCheck]:
    """``measured``: ``{name: (value, n)}``; one :class:`BandCheck` per published name (all of them measured)."""
    missing = sorted(set(published) - set(measured))
    if missing:
        raise KeyError(f"not measured: {missing}")
    return [BandCheck(prefix + name, published[name], measured[name][0], measured[name][1], z)
            for name in published]


def measured_rates(results) -> dict[str, tuple[float, int]]:
    """``{criterion: (rate, trials)}`` of scored results: pooled objects for ``object_accuracy``, results for the
    per-prompt criteria (what :func:`~dit_attn.pipelines.shapes.scoring.aggregate` averages)."""
    from dit_attn.pipelines.shapes.scoring import _tally

    return {k: (ok / n, n) for k, (ok, n) in _tally(results).items() if n}


def failures(checks: list[BandCheck]) -> list[str]:
    return [str(c) for c in checks if not c.ok]


# ------------------------------------------------------------------------------------------------------------------
# Published numbers
# ------------------------------------------------------------------------------------------------------------------
#: kind -> (held-out prompts of the documented run, the criteria the docs quote)
EVALUATED = {
    "t2i": (200, ("object_accuracy", "colour", "shape")),
    "flux": (100, ("object_accuracy", "colour", "shape")),
    "t2v": (100, ("direction", "colour", "shape", "object_accuracy")),
}


def evaluator_scores(kind: str) -> dict:
    """The documented evaluator run of ``kind`` (``python -m dit_attn.pipelines.shapes.evaluate``)."""
    return json.loads((ROOT / "docs" / "shapesworld" / f"{kind}_scores.json").read_text())


def published_heldout(kind: str) -> dict[str, float]:
    """The held-out scores the docs quote for ``kind`` (from the JSON they cite)."""
    scores = evaluator_scores(kind)["scores"]["heldout"]
    return {name: scores[name] for name in EVALUATED[kind][1]}


#: (JSON path in docs/multi_condition/fidelity_hand_drawn.json, edge style, tolerance in pixels) of the bundled
#: edges adapter's pka edge F1 on the 32 held-out scenes.
EDGE_F1 = {
    "rendered_tol1": (("n32_cli", "after", "tol1", "edge", "pka", "edge_f1"), "rendered", 1),
    "rendered_tol2": (("n32_cli", "after", "tol2", "edge", "pka", "edge_f1"), "rendered", 2),
    "hand_tol2": (("n32_cli", "after", "tol2", "edge-hand", "pka", "edge_f1"), "hand", 2),
}
EDGE_SCENES = 32


def published_edge_f1() -> dict[str, float]:
    data = json.loads((ROOT / "docs" / "multi_condition" / "fidelity_hand_drawn.json").read_text())
    out = {}
    for name, (path, _, _) in EDGE_F1.items():
        value = data
        for key in path:
            value = value[key]
        out[name] = float(value)
    return out


def doc_text(*names: str) -> str:
    return "\n".join((ROOT / name).read_text() for name in names)
