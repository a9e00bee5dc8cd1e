"""Imports point one way: no lower layer imports a higher one, no modules import in a circle.

And SQL stays in the store modules (gateway/delivery). Read from the source with `ast`, so
imports inside functions and under TYPE_CHECKING count too: a lazy import is still an arrow,
it only hides it from a start-up check. The layers, bottom to top, are `LAYERS` below; a
module that is in none of them fails the test until it is given one.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gateway"

# Bottom to top. A module may import its own layer and the ones listed before it. An entry
# ending in "." takes in a whole package (its __init__ too); the longest matching entry decides.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "gateway",
            "gateway.models",
            "gateway.errors",
            "gateway.settings",
            "gateway.edgesettings",
            "gateway.deliverysettings",
            "gateway.durations",
            "gateway.sitesettings",
            "gateway.audiencesettings",
            "gateway.insightsettings",
            "gateway.catalogsettings",
            "gateway.config",
            "gateway.metrics",
            "gateway.tally",
            "gateway.html.",
        ),
    ),
    ("pipeline", ("gateway.pipeline.",)),
    ("delivery", ("gateway.delivery.",)),
    ("edge", ("gateway.edge.",)),
    (
        "operator side",
        (
            "gateway.ops.",
            "gateway.admin.",
            "gateway.commands.",
            "gateway.front.",
            "gateway.insights.",
        ),
    ),
    (
        "app",
        (
            "gateway.app",
            "gateway.siteapp",
            "gateway.catalogapp",
            "gateway.storeapp",
            "gateway.cli",
            "gateway.workers",
            "gateway.demo",
            "gateway.demo_shop",
            "gateway.log",
            "gateway.listen",
            "gateway.reference",
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Arrow:
    """One import statement: `source` (file:line) imports `target`."""

    importer: str
    target: str
    where: str


def module_name(path: Path, root: Path) -> str:
    """`gateway/edge/pages.py` -> `gateway.edge.pages`; a package's __init__ is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under `root`, by dotted name."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def arrows(root: Path) -> Iterator[Arrow]:
    """Every import of one module of `root` by another, wherever in the file it stands."""
    known = modules(root)
    top = root.name
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from gateway.edge import identity` imports the module gateway.edge.identity.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                    for alias in node.names
                ]
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            # `from m import a, b` is one arrow, however many names it takes.
            for target in dict.fromkeys(_known(t, known) for t in targets):
                if target.split(".")[0] == top and target != name:
                    yield Arrow(name, target, where)


def _known(target: str, known: dict[str, Path]) -> str:
    """The module itself, or the package that holds the name imported from it."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest entry that takes in `module`, None for none."""
    best: tuple[int, int] | None = None
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            hit = module == entry.rstrip(".") or (entry.endswith(".") and module.startswith(entry))
            if hit and (best is None or len(entry) > best[1]):
                best = (index, len(entry))
    return None if best is None else best[0]


def layer_problems(root: Path) -> list[str]:
    """One sentence per module outside every layer and per import that points upwards."""
    problems = [
        f"{path.relative_to(root.parent)}: module {name} is in no layer; add it to LAYERS "
        "in tests/test_layers.py where it belongs"
        for name, path in modules(root).items()
        if layer_of(name) is None
    ]
    for arrow in arrows(root):
        low, high = layer_of(arrow.importer), layer_of(arrow.target)
        if low is not None and high is not None and high > low:
            problems.append(
                f"{arrow.where}: {arrow.importer} imports {arrow.target}, but the "
                f"{LAYERS[low][0]} layer must not import from the {LAYERS[high][0]} layer "
                "(layers, bottom to top: " + " < ".join(n for n, _ in LAYERS) + ")"
            )
    return problems


def circles(root: Path) -> list[str]:
    """One sentence per group of modules that import each other, naming each import."""
    edges: dict[str, list[Arrow]] = {}
    for arrow in arrows(root):
        edges.setdefault(arrow.importer, []).append(arrow)
    # Tarjan's strongly connected components, iteratively: a deep chain must not recurse.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(modules(root)):
        if start in index:
            continue
        work = [(start, iter(edges.get(start, [])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                target = child.target
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(edges.get(target, []))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    out = []
    for group in groups:
        ties = [
            f"{a.where} imports {a.target}"
            for m in group
            for a in edges.get(m, [])
            if a.target in group
        ]
        out.append(f"circle between {', '.join(group)}: " + "; ".join(ties))
    return out


# Statements, not words: "DELETE" alone is an HTTP method.
_SQL = re.compile(
    r"\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|PRAGMA\s+\w"
    r"|BEGIN(\s+IMMEDIATE)?\s*$|COMMIT\s*$|CREATE\s+(TABLE|INDEX)\s)"
)


def sql_outside_the_store(root: Path) -> list[str]:
    """file:line of each string that starts an SQL statement outside gateway/delivery."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "delivery":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and _SQL.match(text):
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                found.append(f"{where}: SQL outside gateway/delivery: {text[:40]!r}")
    return found


def test_no_sql_outside_the_store_modules() -> None:
    found = sql_outside_the_store(ROOT)
    assert not found, "\n".join(found)


def test_sql_in_another_layer_is_found(tmp_path: Path) -> None:
    root = _package(tmp_path, {"admin/data.py": 'Q = "SELECT 1 FROM events"\n'})
    (found,) = sql_outside_the_store(root)
    assert found.startswith("gateway/admin/data.py:1: SQL outside gateway/delivery")


def test_no_import_points_from_a_lower_layer_to_a_higher_one() -> None:
    problems = layer_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_no_modules_import_each_other_in_a_circle() -> None:
    found = circles(ROOT)
    assert not found, "\n".join(found)


# The checker itself, on a small package written for the purpose -----------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "gateway"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in {p.parent for p in root.rglob("*.py")}:
        (folder / "__init__.py").touch()
    return root


@pytest.mark.parametrize(
    "statement",
    [
        "from gateway.edge.pages import PageViews",
        "from gateway.edge import pages",
        "import gateway.edge.pages",
        "from ..edge import pages",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway.edge import pages",
        "def later() -> None:\n    from gateway.edge.pages import PageViews",
    ],
)
def test_an_upward_import_is_named_with_its_line_and_rule(tmp_path: Path, statement: str) -> None:
    root = _package(
        tmp_path, {"pipeline/rules.py": f'"""Doc."""\n{statement}\n', "edge/pages.py": ""}
    )
    (problem,) = layer_problems(root)
    line = statement.count("\n") + 2
    assert problem.startswith(f"gateway/pipeline/rules.py:{line}: ")
    assert "gateway.pipeline.rules imports gateway.edge.pages" in problem
    assert "the pipeline layer must not import from the edge layer" in problem


def test_downward_imports_pass(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {"edge/pages.py": "from gateway.pipeline import rules\n", "pipeline/rules.py": ""},
    )
    assert layer_problems(root) == []


def test_a_module_in_no_layer_is_named(tmp_path: Path) -> None:
    root = _package(tmp_path, {"stray.py": ""})
    (problem,) = layer_problems(root)
    assert problem.startswith("gateway/stray.py: module gateway.stray is in no layer")


def test_a_circle_is_named_with_each_import(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pipeline/rules.py": "import gateway.pipeline.webhooks\n",
            "pipeline/webhooks.py": '"""Doc."""\nfrom gateway.pipeline.rules import x\n',
            "pipeline/other.py": "from gateway.pipeline import rules\n",
        },
    )
    (found,) = circles(root)
    assert found.startswith("circle between gateway.pipeline.rules, gateway.pipeline.webhooks:")
    assert "gateway/pipeline/rules.py:1 imports gateway.pipeline.webhooks" in found
    assert "gateway/pipeline/webhooks.py:2 imports gateway.pipeline.rules" in found
