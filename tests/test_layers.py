"""The import graph of ``connectorsync/``: no cycle, and the lower layers never reach up.

The graph is read from the source with :mod:`ast`, not from ``sys.modules``: every import
statement counts wherever it is, at the top, under ``if TYPE_CHECKING:`` or inside a function
(an import put in a function to dodge a cycle is still that cycle). ``from . import name``
is an edge to the submodule ``name`` when there is one, else to the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import connectorsync

PACKAGE = Path(connectorsync.__file__).parent

#: What each lower layer may import of connectorsync (a prefix allows a module and all
#: below it). The cache speaks SQL and the remotes speak their protocols: both are handed
#: what they need from above and return values, and share only the errors and the batch
#: types, which import nothing of connectorsync themselves.
LOWER_LAYERS = {
    "connectorsync.batch": (),
    "connectorsync.errors": (),
    "connectorsync.cache": ("connectorsync.cache", "connectorsync.errors", "connectorsync.batch"),
    "connectorsync.remotes": (
        "connectorsync.remotes",
        "connectorsync.errors",
        "connectorsync.batch",
    ),
}

#: Modules below the facade: the Logger hands them what they need; they never import it,
#: nor the command line built on it (DESIGN.md, "Layout").
BELOW_THE_FACADE = (
    "connectorsync.cache",
    "connectorsync.remotes",
    "connectorsync.delivery",
    "connectorsync.lanes",
    "connectorsync.resend",
    "connectorsync.syncer",
    "connectorsync.courier",
    "connectorsync.shared",
    "connectorsync.schedule",
    "connectorsync.synclock",
    "connectorsync.devicetime",
)
FACADE = ("connectorsync.logger", "connectorsync.cli")


def module_name(path: Path, root: Path) -> str:
    """``root/pkg/sub/mod.py`` -> ``pkg.sub.mod``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the file ``path`` (module ``name``) imports, by any
    import statement anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {module for module in found if module in modules and module != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package at ``root`` -> the modules of it that it imports."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    names = set(files)
    return {name: imported(path, name, names) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles a depth-first walk meets (each ``[a, b, ..., a]``): at least one
    through every group of modules that import each other; empty when the graph is acyclic."""
    found: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the path, "done" once every edge is seen
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def imports_of(graph: dict[str, set[str]], layer: str) -> Iterator[tuple[str, str]]:
    """``(module, imported)`` for every edge out of the modules of ``layer``."""
    for module, targets in sorted(graph.items()):
        if within(module, (layer,)):
            for target in sorted(targets):
                yield module, target


def test_the_import_graph_has_no_cycle() -> None:
    """No module of connectorsync imports itself through others, not even for type hints:
    a type a lower module needs of an upper one is a Protocol of its own, or a plain value."""
    graph = import_graph()
    assert "connectorsync.delivery" in graph["connectorsync.syncer"]  # the graph is read
    assert cycles(graph) == []


def test_lower_layers_never_import_upper_ones() -> None:
    graph = import_graph()
    wrong = [
        f"{module} imports {target}"
        for layer, allowed in LOWER_LAYERS.items()
        for module, target in imports_of(graph, layer)
        if not within(target, allowed)
    ]
    assert wrong == []


def test_nothing_below_the_facade_imports_it() -> None:
    graph = import_graph()
    wrong = [
        f"{module} imports {target}"
        for layer in BELOW_THE_FACADE
        for module, target in imports_of(graph, layer)
        if within(target, FACADE)
    ]
    assert wrong == []


def test_a_cycle_only_for_type_hints_or_inside_a_function_is_found(tmp_path: Path) -> None:
    """The checker itself: it sees the imports a runtime check would miss."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from .low import Low\n")
    (root / "sub" / "low.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high import High\n"
    )
    (root / "high.py").write_text("from .sub.low import Low\n")
    (root / "lazy.py").write_text("def f():\n    from . import eager\n")
    (root / "eager.py").write_text("import pkg.lazy\n")
    (root / "alone.py").write_text("from .sub import Low\nfrom . import high\n")
    graph = import_graph(root)
    assert graph["pkg.sub.low"] == {"pkg.high"}
    assert graph["pkg.alone"] == {"pkg.sub", "pkg.high"}
    assert sorted(map(tuple, cycles(graph))) == [
        ("pkg.eager", "pkg.lazy", "pkg.eager"),
        ("pkg.high", "pkg.sub.low", "pkg.high"),
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


#: The longest a module of the package may be: one job each, readable in one sitting.
MAX_MODULE_LINES = 600


def test_every_module_is_short_enough_to_read_in_one_sitting() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"
