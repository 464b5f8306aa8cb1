"""The layer rule of core/ (core/__init__.py): a module imports its own layer and those below, never above; no
cycles; core/ never imports the app (streamlit, ui, pages). Read from the source with `ast`, so lazy imports inside
functions count too."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEAVES = ("core.errors", "core.progress", "core.jsonable", "core.hosting", "core.cache", "core.frames")
LAYERS = [  # (prefix, layer): the longest matching prefix wins
    *((leaf, 0) for leaf in LEAVES),
    ("core.engine", 1),
    ("core.analyses", 2),
    ("core.corpus", 3),
    ("core.serving", 4),
    ("core.cli", 5),
    ("core.reproduce", 5),
    ("core.story", 5),
    ("core.__main__", 5),
    ("core", 0),  # core/__init__.py itself: imports nothing from core
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    for prefix, layer in sorted(LAYERS, key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} is in no layer: add it to core/__init__.py's map and to LAYERS here")


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every module of the project this file imports (`from core.x import y` counts core.x.y when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known
            )
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / "core").rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) for name, path in files.items()}


def test_every_module_has_a_layer():
    for name in graph():
        layer_of(name)


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_go_down_only(module):
    here = layer_of(module)
    for target in graph()[module]:
        root = target.split(".")[0]
        assert root not in ("streamlit", "ui", "pages", "app"), f"{module} imports the app ({target})"
        if root != "core" or target == "core":
            continue
        assert layer_of(target) <= here, (
            f"{module} (layer {here}) imports {target} (layer {layer_of(target)}): "
            "a lower layer may not import a higher one"
        )


def test_no_cycles():
    edges = {name: {t for t in targets if t in graph()} for name, targets in graph().items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges[node]:
            if nxt == node or nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules (importing core.cli.common runs core/cli/__init__ first)
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join([*stack[stack.index(nxt) :], nxt]))
            if state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check is real: an engine module importing an analysis is refused."""
    fake = tmp_path / "bad.py"
    fake.write_text("from core.analyses import patching\n")
    targets = imports_of(fake, set(graph()))
    assert any(layer_of(t) > layer_of("core.engine.forward") for t in targets if t.startswith("core."))
