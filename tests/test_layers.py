"""The package dependency graph of ``arpo_jax``: data flows one way, with no cycles.

Every ``import`` of every module (function-level ones included) is read with ``ast``; the
graph between the library's packages must stay inside ``ALLOWED``. The lower layers
(algorithms, models, tools, rewards, data) import no other package of the library, and
evaluation does not import training.
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "arpo_jax"

# package -> the library packages it may import (modules at the top level, e.g. arpo_jax.config, are shared)
ALLOWED = {
    "algorithms": set(),
    "models": set(),
    "tools": set(),
    "rewards": set(),
    "data": set(),
    "sampling": {"models"},
    "rollout": {"algorithms", "sampling", "tools", "models"},
    "eval": {"data", "models", "rewards", "rollout", "sampling", "tools"},
    "training": {"algorithms", "data", "models", "rewards", "rollout", "sampling", "tools"},
    "apps": {"data", "eval", "models", "rewards", "rollout", "sampling", "tools", "training"},
}


def _imported_packages(path: Path) -> set[str]:
    """The ``arpo_jax`` subpackages a module imports (absolute and relative imports)."""
    rel = path.relative_to(PKG).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = list(rel[:-1])[: len(rel) - node.level]
                names = [".".join(["arpo_jax", *base, *(node.module.split(".") if node.module else [])])]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "arpo_jax" and len(parts) > 1 and (PKG / parts[1]).is_dir():
                out.add(parts[1])
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG).parts
        if len(parts) < 2:
            continue  # top-level modules (cli, config) may import anything
        graph.setdefault(parts[0], set()).update(_imported_packages(path) - {parts[0]})
    return graph


def test_every_package_is_in_the_table():
    assert set(_graph()) <= set(ALLOWED), f"add the new package to ALLOWED: {set(_graph()) - set(ALLOWED)}"


def test_packages_import_only_what_their_layer_allows():
    bad = {pkg: sorted(deps - ALLOWED[pkg]) for pkg, deps in _graph().items() if deps - ALLOWED[pkg]}
    assert not bad, f"imports against the layering: {bad}"


def test_no_cycles():
    graph = _graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cyclic = [pkg for pkg in graph if pkg in reach(pkg)]
    assert not cyclic, f"import cycle through {cyclic}"
