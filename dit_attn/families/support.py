"""The support matrix: which control runs on which family, derived from the family data.

``python -m dit_attn.families.support`` prints the Markdown table the README shows; a test checks that the README
holds exactly this table, so the README cannot drift from the data. Every "yes" is a test over the family's tiny
pipeline (``tests/test_families.py``, ``test_attach.py``, ``test_emphasis.py``, ``test_head_guidance.py``,
``test_sparse_control.py``, ``test_entropy.py``); every "no" or "dense" is a clear error or a logged dense fallback,
also tested.
"""

from __future__ import annotations

from . import FAMILIES, Family

CONTROLS = ("Recorder", "EntropyScale", "SoftPAG", "Emphasis", "RectifiedSparse", "MultiCondition")


def support(family: Family) -> dict[str, str]:
    """``{control name: "yes" | "no (...)" | "dense (...)"}`` for one family."""
    from ..prompt import TEXT_LAYOUTS

    known = [p for p in family.pipelines if p in TEXT_LAYOUTS]
    if not known:
        emphasis = "no (text laid out per row)"
    elif len(known) == len(family.pipelines):
        emphasis = "yes"
    else:
        emphasis = "with " + ", ".join(f"`{p}`" for p in known)
    if family.per_query_mask:
        sparse = "dense (per-query mask)"
    elif family.image_padding:
        sparse = "dense (padding tokens)"
    else:
        sparse = "yes"
    return {
        "Recorder": "yes",
        "EntropyScale": "yes",
        "SoftPAG": "no (list inputs)" if family.batch_as_list else "yes",
        "Emphasis": emphasis,
        "RectifiedSparse": sparse,
        "MultiCondition": "yes" if family.flux_architecture else "no",
    }


def markdown_table() -> str:
    """The README's support matrix."""
    header = "| family | transformer | pipelines | " + " | ".join(CONTROLS) + " |"
    rule = "|" + "---|" * (3 + len(CONTROLS))
    rows = []
    for f in FAMILIES.values():
        s = support(f)
        pipes = ", ".join(f"`{p}`" for p in f.pipelines)
        rows.append(f"| `{f.name}` | `{f.transformer_class}` | {pipes} | " + " | ".join(s[c] for c in CONTROLS) + " |")
    return "\n".join([header, rule, *rows])


if __name__ == "__main__":
    print(markdown_table())
