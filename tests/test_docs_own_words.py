"""The repository explains itself: no file points at documents outside it or at issue numbers.

Every tracked text file (``git ls-files``; ``tests/data`` and binary files excluded) is searched for references
that a reader of the repository alone cannot follow: paths into a shared folder of specification notes, section
marks of such notes, and issue numbers. State the fact or the math instead, or point to a page in ``docs/``.

The patterns are assembled from pieces so that this file does not match them itself.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXCLUDED_PREFIXES = ("tests/data/",)

_SHARED = "sha" + "red"
_SPEC = "sp" + "ec"
_ISSUE = "is" + "sue"
_SECTION = "\u00a7"  # the section sign

FORBIDDEN = [  # (what it catches, in neutral words; regular expression, matched ignoring case)
    ("a path into the shared notes folder", _SHARED + r"/" + _SPEC + "s"),
    ("a relative path out of the repository", r"\.\./" + _SHARED),
    ("an absolute path to the shared folder", r"/work/" + _SHARED),
    ("a section sign with a number", _SECTION + r"\s*\d"),
    ("a section of the notes", r"\b" + _SPEC + r"s?\s*" + _SECTION),
    ("numbered steps of the notes", r"\b" + _SPEC + r"\s+steps?\b"),
    ("the notes as a source", r"\bthe\s+" + _SPEC + r"\b(?!\s+string)"),
    ("the notes' content", r"\b" + _SPEC + r"'s\b"),
    ("the notes as a parenthesised source", r"(?<![\w.])\(" + _SPEC + r"\)"),  # a call like f(x) is fine
    ("an issue number", r"\b" + _ISSUE + r"s?\s*#?\d+"),
    ("a tracker thread as a source", r"\bthe\s+" + _ISSUE + r"(?:'s)?\b"),
]
PATTERN = re.compile("|".join(f"(?:{p})" for _, p in FORBIDDEN), re.IGNORECASE)


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (or git is missing)")
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def _text(full: str) -> str | None:
    """The file's text, or None for a binary (a NUL byte in the first 8 KiB), undecodable or missing file."""
    if not os.path.isfile(full):
        return None  # tracked but deleted in the working tree
    with open(full, "rb") as f:
        head = f.read(8192)
        if b"\0" in head:
            return None
        data = head + f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def find_references(files: list[str], root: str = ROOT) -> list[str]:
    """``"path:line: text"`` for every line of ``files`` (relative to ``root``) that matches a pattern."""
    hits = []
    for path in files:
        if path.startswith(EXCLUDED_PREFIXES):
            continue
        text = _text(os.path.join(root, path))
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if PATTERN.search(line):
                hits.append(f"{path}:{number}: {line.strip()[:160]}")
    return hits


def test_patterns_catch_what_they_should(tmp_path):
    """The patterns find each kind of outside reference and leave ordinary wording alone."""
    bad = [
        "see " + _SHARED + "/" + _SPEC + "s/pka.md",
        "exact math: ../" + _SHARED + "/" + _SPEC + "s/x.md",
        "(" + _SPEC + " " + _SECTION + "4.2)",
        "as in " + _SECTION + "7 of the notes",
        "(" + _SPEC + " steps 1-7)",
        "written from the " + _SPEC + ", independently",
        "the " + _SPEC + "'s speed model",
        "Exact math: notes (" + _SPEC + ")",
        "Targets (" + _ISSUE + " 7): attention",
        "fixed in " + _ISSUE.capitalize() + " #12",
        _ISSUE.capitalize() + " 4's budget",
        "Targets from the " + _ISSUE + ": 4x",
        "over the " + _ISSUE + "'s 60 minutes",
    ]
    good = [
        "a head " + _SPEC + " string such as 'transformer_blocks.1:0'",
        "HeadSet.parse(" + _SPEC + ")",
        "the canonical " + _SPEC + " string",
        "the " + _SPEC + " string (syntax in the module docstring)",
        "tensors are " + _SHARED + ", not copied",
        "see docs/multi_condition_math.md, section 4",
    ]
    assert [s for s in bad if not PATTERN.search(s)] == []
    assert [s for s in good if PATTERN.search(s)] == []
    (tmp_path / "a.md").write_text("fine\n" + bad[0] + "\n", encoding="utf-8")
    (tmp_path / "b.bin").write_bytes(b"\0" + bad[0].encode())
    (tmp_path / "tests" / "data").mkdir(parents=True)
    (tmp_path / "tests" / "data" / "c.md").write_text(bad[0], encoding="utf-8")
    found = find_references(["a.md", "b.bin", "missing.md", "tests/data/c.md"], root=str(tmp_path))
    assert found == [f"a.md:2: {bad[0]}"]


def test_no_references_outside_the_repository():
    """Every tracked text file states facts in its own words: no outside spec paths or sections, no issue
    numbers. Each hit is listed as ``path:line: text``."""
    hits = find_references(_tracked_files())
    assert not hits, ("references a reader of the repository cannot follow (say it in our own words, or point "
                      "to a page in docs/):\n" + "\n".join(hits))
