"""The installed package's import graph, read statically with ``ast``: layers only point down, and no cycles.

Every ``import`` and ``from ... import`` statement counts, at module level and inside functions alike (a
function-level import is still a dependency: it runs the first time the function does); imports under
``if TYPE_CHECKING:`` count too. An edge goes to the module named, or to ``package.name`` when that is a module.
Importing a submodule also runs its parent packages' ``__init__``; those implied edges are left out (they would
tie every module to ``dit_attn/__init__.py``), so a cycle here is one that the code itself writes.

The layers, from the bottom:

0. core: the library a user's pipeline runs: ``dit_attn.*`` modules (attach, processor, call, heads, ...),
   ``dit_attn.controls``, ``dit_attn.sparse``, ``dit_attn.conditions``, ``dit_attn.families`` and
   ``dit_attn.kernels``;
1. ``dit_attn.testing``: the tiny random-weight pipelines of the tests, docs and benchmarks;
2. ``dit_attn.pipelines``: loading models, the batch runner and ShapesWorld (``dit_attn.pipelines.shapes``);
3. the top: ``dit_attn.cli``, ``dit_attn.demo``, ``dit_attn.ui`` and ``dit_attn.bench``, which may import anything.

A module may import its own layer and the layers below it, never one above (``dit_attn.conditions`` importing
ShapesWorld, or the core importing a benchmark, is an upward import).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

# Package name -> its folder, as the installed package maps them (the top-level kernels/, pipelines/ and ui/
# folders install as subpackages of dit_attn).
ROOTS = ("dit_attn", "dit_attn.kernels", "dit_attn.pipelines", "dit_attn.ui")

# Layer of a module: the longest prefix listed here decides; anything else under dit_attn is core (0).
LAYERS = {
    "dit_attn.testing": 1,
    "dit_attn.pipelines": 2,
    "dit_attn.cli": 3,
    "dit_attn.demo": 3,
    "dit_attn.ui": 3,
    "dit_attn.bench": 3,
}
LAYER_NAMES = {0: "core", 1: "testing", 2: "pipelines", 3: "top (cli, demo, ui, bench)"}


def layer(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = LAYERS.get(".".join(parts[:end]))
        if found is not None:
            return found
    return 0


def package_files() -> dict[str, Path]:
    """Module name -> source file for every module of the installed package."""
    modules = {}
    for root in ROOTS:
        folder = Path(importlib.util.find_spec(root).origin).parent
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((root, *parts))] = path
    return modules


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[tuple[str, int]]:
    """The package modules ``module`` imports, with the line of each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()

    def add(name: str, line: int) -> None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):  # the longest prefix that is a module of the package
            candidate = ".".join(parts[:end])
            if candidate in known:
                if candidate != module:
                    found.add((candidate, line))
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in known else base, node.lineno)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[tuple[str, int]]]:
    files = package_files()
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in sorted(files.items())}


def test_the_graph_is_read(graph):
    # A broken reader would find nothing and pass every check below.
    assert "dit_attn.processor" in graph and "dit_attn.kernels.block_sparse" in graph
    assert "dit_attn.pipelines.shapes.world" in graph
    assert any(target == "dit_attn.call" for target, _ in graph["dit_attn.processor"])


def test_layers_only_point_down(graph):
    upward = [f"{module} ({LAYER_NAMES[layer(module)]}) line {line} imports {target} ({LAYER_NAMES[layer(target)]})"
              for module, targets in graph.items() for target, line in sorted(targets)
              if layer(target) > layer(module)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def test_no_import_cycles(graph):
    edges = {module: {target for target, _ in targets} for module, targets in graph.items()}
    cycles = _cycles(edges)
    described = []
    for members in cycles:
        inside = [f"  {m} line {line} -> {t}" for m in members for t, line in sorted(graph[m]) if t in members]
        described.append(" <-> ".join(members) + "\n" + "\n".join(inside))
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_a_broken_control_module_fails_loudly(monkeypatch):
    # Every control is part of every install: a module that does not import is a bug to see, not a control to drop.
    from dit_attn import controls

    monkeypatch.setitem(controls.REGISTRY, "broken", ("dit_attn.controls.no_such_module", "Broken"))
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        controls.available_controls()
