"""No import cycles anywhere in newsletter/, counted the strict way.

import-linter's `acyclic_siblings` contract (pyproject.toml, run by `lint-imports` in
.ci/run) checks cycles between sibling modules and packages; this test is the
module-level backstop that also sees a package's `__init__` caught in a circle with
one of its own modules. Every import counts: at module level, inside functions and
inside `if TYPE_CHECKING:` blocks, because a circle hidden there is still a circle
in the design (the types live above the code that uses them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import newsletter

PACKAGE_DIR = Path(newsletter.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module Python can import as newsletter.X (each folder on the way has __init__.py)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        folders = path.parent.relative_to(PACKAGE_DIR).parents  # '.', then up
        inside = [PACKAGE_DIR / f for f in folders] + [path.parent]
        if all((folder / "__init__.py").exists() for folder in inside):
            found[_module_name(path)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific module of ours that `name` names (`a.b.C` -> `a.b`), or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that `module` imports anywhere in its source (a package's own
    `__init__` is not counted when one of its submodules is named)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from pkg import name`: a submodule if there is one, else a name in pkg
                submodule = f"{base}.{alias.name}"
                names.append(submodule if submodule in modules else base)
    targets = {_resolve(name, modules) for name in names}
    return {target for target in targets if target is not None and target != module}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in sorted(graph):
        if state.get(root):
            continue
        path: list[str] = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_every_module_and_hidden_imports() -> None:
    """Guard the walker itself: function-level and TYPE_CHECKING imports are edges."""
    graph = import_graph()
    assert "newsletter.web.app" in graph and "newsletter.config" in graph
    assert "newsletter.migrations.env" in graph
    # web.app imports the archive router at module level
    assert "newsletter.web.archive" in graph["newsletter.web.app"]


def test_find_cycle_reports_the_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_newsletter() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
