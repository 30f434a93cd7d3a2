"""The package's shape: no import circle between its modules (`__main__` blocks included), eval/ below the
recipes, no module too long to read, and MASF's class on a screen or two."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "masf_lightning"
MAX_LINES = 400
MAX_MASF_CLASS_LINES = 100
# What eval/ (metrics, plots, TensorBoard writing) may import: the rooms below the recipes, never pipeline.py,
# runs.py, reevaluate.py or the sweep machinery above them.
BELOW_THE_RECIPES = ("errors", "io", "choices", "relations", "seeding", "losses", "autodiff", "models", "data", "algorithms", "eval")


def _modules() -> dict[str, Path]:
    """Dotted name → file of every module in the package (a package by its __init__.py)."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imported(tree: ast.AST, name: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that `tree` imports: top-level, inside functions, under TYPE_CHECKING and in a
    `__main__` block alike (a script's imports are arrows too)."""
    found: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:
                    found.add(sub)  # `from package import module`
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: _imported(ast.parse(f.read_text()), name, f.name == "__init__.py", modules)
        for name, f in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return path[path.index(v) :] + [v]
            if v not in state and (cycle := visit(v)):
                return cycle
        path.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (cycle := visit(u)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "masf_lightning.data.decode" in graph["masf_lightning.data.stain"]  # the walk sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_walk_sees_main_blocks() -> None:
    tree = ast.parse('if __name__ == "__main__":\n    from masf_lightning.pipeline import run\n')
    assert _imported(tree, "masf_lightning.eval.report", False, _modules()) == {"masf_lightning.pipeline"}


def test_eval_imports_nothing_above_it() -> None:
    allowed = {f"masf_lightning.{room}" for room in BELOW_THE_RECIPES}
    for name, deps in import_graph().items():
        if name.startswith("masf_lightning.eval"):
            above = {d for d in deps if not any(d == a or d.startswith(a + ".") for a in allowed)}
            assert not above, f"{name} imports {sorted(above)}: eval/ holds metrics, plots and TensorBoard writing only"


def test_no_module_over_400_lines() -> None:
    files = [*_modules().values(), *sorted((ROOT / "experiments").glob("*.py"))]
    long = {str(f.relative_to(ROOT)): n for f in files if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by concern (at most {MAX_LINES} lines each): {long}"


def test_masf_reads_on_a_screen_or_two() -> None:
    tree = ast.parse((PACKAGE / "algorithms" / "masf.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MASF"]
    assert cls.end_lineno - cls.lineno + 1 <= MAX_MASF_CLASS_LINES
