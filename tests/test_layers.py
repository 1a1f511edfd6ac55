"""The package layout holds: no import cycles, no upward imports (docs/architecture.md, "Layout").

Read from the source with ``ast`` rather than by importing: imports inside functions and under
``TYPE_CHECKING`` count too, since a cycle hidden in a function is still a cycle to whoever reads the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sn"

# Lowest first: a module may import from its own rank or a lower one. Matched by the longest prefix.
RANKS: dict[str, int] = {
    "sn.protocol": 0,
    # The base: settings, errors, ids, metrics and the other modules every stage may use.
    "sn": 1,
    "sn.pipeline": 2,
    "sn.storage": 3,
    "sn.realtime": 4,
    "sn.feed": 5,
    "sn.citus": 5,
    "sn.fanout": 6,
    "sn.context": 7,
    "sn.api": 8,
    "sn.app": 9,
    "sn.cli": 10,
    "sn.__main__": 11,
    "sn.dev": 10,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The sn modules ``name`` imports, anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def rank(name: str) -> int:
    best = max((prefix for prefix in RANKS if name == prefix or name.startswith(prefix + ".")), key=len)
    return RANKS[best]


def test_every_package_is_placed() -> None:
    # A new package must be given its rank here (and its place in docs/architecture.md) on purpose.
    packages = {f"sn.{path.name}" for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert packages - RANKS.keys() == set()


def test_no_upward_imports() -> None:
    upward = sorted(
        f"{name} (rank {rank(name)}) imports {target} (rank {rank(target)})"
        for name, targets in GRAPH.items()
        for target in targets
        if rank(target) > rank(name)
    )
    assert upward == []


def test_the_protocol_imports_nothing_from_the_rest_of_sn() -> None:
    leaks = {name: sorted(t for t in GRAPH[name] if not t.startswith("sn.protocol")) for name in MODULES}
    assert {name: targets for name, targets in leaks.items() if name.startswith("sn.protocol") and targets} == {}


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        # Development helpers (embedded servers, seeding, the test client) never load in a server.
        ("sn.dev", {"sn.cli"}),
        # Handlers are registered by the app, and nothing else reaches into them.
        ("sn.api", {"sn.app"}),
    ],
)
def test_who_may_import_a_package(package: str, allowed: set[str]) -> None:
    importers = {
        name
        for name, targets in GRAPH.items()
        if not name.startswith(package) and any(t == package or t.startswith(package + ".") for t in targets)
    }
    assert importers <= allowed, sorted(importers - allowed)


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert cycles == []


def test_the_check_sees_imports() -> None:
    # The graph is not vacuous: known edges are found, including one inside a function.
    assert "sn.protocol.connection" in GRAPH["sn.realtime.socket"]
    assert "sn.dev.embedded" in GRAPH["sn.cli"]
