"""Nothing outside ``connectorsync/cache/`` reaches a private name of the cache, and nothing
outside ``connectorsync/logger.py`` one of the Logger: tests probe through the public API and
:mod:`connectorsync.testing` (issue 17, point 5; DESIGN.md, "Layout").

The private names are read from the source: every ``_name`` (not ``__dunder__``) that a class
of the cache package or of ``logger.py`` defines (a method, a class attribute) or sets on
``self``, and every private module-level name of those modules. A use is ``obj._name`` with
``obj`` neither ``self``, ``cls`` nor ``super()`` inside a class (an object's own names are
its business; a function outside any class that names its argument ``self`` is not one),
``getattr``/``setattr``/``hasattr``/``delattr``/``monkeypatch.setattr`` with such a name,
or ``from connectorsync.cache... import _name``. A name that another class owns too is
caught as well (the check cannot tell whose object it is): rename, or allow it below
with the reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from .conftest import ROOT

PACKAGE = Path(ROOT) / "connectorsync"
TESTS = Path(ROOT) / "tests"
#: Where the cache's private names are at home, and the Logger's.
CACHE = PACKAGE / "cache"
LOGGER = PACKAGE / "logger.py"
#: The one door from connectorsync.testing into a live Logger (it says why); tests use the
#: hooks built on it, never the door itself.
DOOR = PACKAGE / "testing" / "internals.py"

#: (file relative to the repository, private name): a reach that is not one, and why.
ALLOWED: dict[tuple[str, str], str] = {
    ("connectorsync/testing/internals.py", "_cache"): "the door: a Logger's cache connection",
    ("connectorsync/testing/internals.py", "_syncer"): "the door: a Logger's syncer",
    # The option descriptor's protocol with its holder (Configurable, in the same module):
    # a Logger's attribute reads and writes go through these, by design.
    ("connectorsync/options.py", "_option_value"): "Option.__get__ asks its holder",
    ("connectorsync/options.py", "_set_option"): "Option.__set__ tells its holder",
}

ACCESSORS = {"getattr", "setattr", "hasattr", "delattr"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _defined_names(path: Path) -> set[str]:
    """The private names a module defines: at module level, in its classes, and on self."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for item in cls.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(item.name)
            elif isinstance(item, ast.Assign | ast.AnnAssign):
                targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
        for node in ast.walk(cls):
            target = node.target if isinstance(node, ast.AnnAssign) else None
            targets = node.targets if isinstance(node, ast.Assign) else [target]
            # ``self._a, b = ...`` defines ``_a`` too: look inside tuples and lists.
            flat = [
                e for t in targets for e in (t.elts if isinstance(t, ast.Tuple | ast.List) else [t])
            ]
            for t in flat:
                if (
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                ):
                    names.add(t.attr)
    return {name for name in names if _is_private(name)}


def private_names() -> set[str]:
    """Every private name of the cache package and of the Logger's module."""
    names: set[str] = set()
    for path in [*sorted(CACHE.glob("*.py")), LOGGER]:
        names |= _defined_names(path)
    return names


def _own(node: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: an object reaching its own names."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def reaches(
    source: str, private: set[str], filename: str = "<source>", *, imports_from: str = ""
) -> Iterator[tuple[int, str]]:
    """``(line, name)`` of each reach of one of ``private`` in ``source``; with
    ``imports_from`` (a package), also each private name imported from one of its modules,
    whatever that module defines it as (a private alias of a public function, say)."""
    tree = ast.parse(source, filename)
    # ``self`` is an object's own only in its class: a function outside any class that takes
    # ``self`` (to be patched onto a class, say) reaches into someone else's object.
    in_a_class = {
        id(node)
        for cls in ast.walk(tree)
        if isinstance(cls, ast.ClassDef)
        for node in ast.walk(cls)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in private
            and not (_own(node.value) and id(node) in in_a_class)
        ):
            yield node.lineno, node.attr
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            name = node.args[1]
            if (
                called in ACCESSORS
                and isinstance(name, ast.Constant)
                and isinstance(name.value, str)
                and name.value in private
            ):
                yield node.lineno, name.value
        elif isinstance(node, ast.ImportFrom) and (
            _home(node.module or "")
            or (imports_from and (node.module or "").startswith(imports_from + "."))
        ):
            for alias in node.names:
                if _is_private(alias.name):
                    yield node.lineno, alias.name


def _home(module: str) -> bool:
    """Whether ``module`` is the cache package (or one of its modules) or the Logger's."""
    return module in ("connectorsync.cache", "connectorsync.logger") or module.startswith(
        "connectorsync.cache."
    )


def _imports_the_door(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(
            alias.name == "connectorsync.testing.internals" for alias in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (
            node.module == "connectorsync.testing.internals"
            or (
                node.module == "connectorsync.testing"
                and any(alias.name == "internals" for alias in node.names)
            )
        ):
            return True
    return False


def _checked_files() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if CACHE not in path.parents and path != LOGGER:
            yield path
    yield from sorted(TESTS.rglob("*.py"))


def test_nothing_outside_reaches_a_private_name_of_the_cache_or_the_logger() -> None:
    private = private_names()
    found = []
    for path in _checked_files():
        where = str(path.relative_to(ROOT))
        for line, name in reaches(path.read_text(), private, where):
            if (where, name) not in ALLOWED:
                found.append(f"{where}:{line}: {name}")
    assert not found, (
        "private names of the cache or the Logger reached from outside (use the public API, "
        "connectorsync.testing.probe.CacheProbe or connectorsync.testing.live):\n"
        + "\n".join(found)
    )


#: (test file, private name of connectorsync): reaches left to the helpers who own the
#: object (issue 17 reshapes both), each until a public knob exists.
ALLOWED_IN_TESTS: dict[tuple[str, str], str] = {
    ("tests/test_server.py", "_connection"): "connectordb's own module, not ours",
}


def test_tests_reach_no_private_name_of_connectorsync() -> None:
    """Wider than the cache and the Logger: a test (or a benchmark, ``tests/benchmarks/``)
    reaches no private name that any module of connectorsync defines (a remote's, the
    syncer's, a source's...)."""
    private: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        private |= _defined_names(path)
    checked = sorted(TESTS.rglob("*.py"))
    assert TESTS / "benchmarks" / "bench_fleet.py" in checked  # the benchmarks are tests here
    found = []
    for path in checked:
        where = str(path.relative_to(ROOT))
        for line, name in reaches(path.read_text(), private, where, imports_from="connectorsync"):
            if (where, name) not in ALLOWED_IN_TESTS:
                found.append(f"{where}:{line}: {name}")
    assert not found, "tests reach private names of connectorsync:\n" + "\n".join(found)


def test_tests_do_not_use_the_door_into_the_logger() -> None:
    """Tests use the hooks of connectorsync.testing, not the door they are built on."""
    users = [
        str(path.relative_to(ROOT))
        for path in sorted(TESTS.rglob("*.py"))
        if _imports_the_door(path.read_text())
    ]
    assert not users
    assert _imports_the_door("from connectorsync.testing.internals import cache_of")
    assert _imports_the_door("from connectorsync.testing import internals")


def test_the_check_finds_each_kind_of_reach() -> None:
    """The check has teeth: each way of reaching in is found, an object's own names are not."""
    private = private_names()
    assert {"_cache", "_syncer", "_conn", "_lock", "_newest", "_read", "_group"} <= private
    source = "\n".join(
        [
            "lg._cache._conn.execute('PRAGMA x')",  # line 1: two reaches
            "getattr(lg, '_syncer')",
            "monkeypatch.setattr(cache, '_newest', {})",
            "from connectorsync.cache.limits import _free_pages",
            "lg.status()",  # public: fine
            "class Own:",
            "    def method(self):",
            "        self._cache = cache",  # its own: fine
            "        return super()._read('SELECT 1')",  # its own: fine
            "def patched(self):",  # outside any class: ``self`` is someone else's object
            "    return self._cache",
        ]
    )
    assert sorted(reaches(source, private)) == [
        (1, "_cache"),
        (1, "_conn"),
        (2, "_syncer"),
        (3, "_newest"),
        (4, "_free_pages"),
        (11, "_cache"),
    ]
    # A private alias of a public function, imported from any module of the package (the
    # benchmarks' reach into MQTT's payloads was one): found in the tests-wide check.
    alias = "from connectorsync.remotes.mqtt import _plain_item\nfrom os import _exit"
    assert list(reaches(alias, set(), imports_from="connectorsync")) == [(1, "_plain_item")]
    assert DOOR.exists()
