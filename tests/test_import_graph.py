"""The layering contract (issue 16): ``proto → rtc → sfu → cluster/http``, checked on the source.

Every ``import`` and ``from … import`` of every module under ``trio_sfu/`` is read with ``ast``,
including the ones under ``if TYPE_CHECKING:`` and inside functions: a lower layer that names a
higher one, even only for type hints, is a violation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "trio_sfu"

#: Each layer and the layers it must never import (a layer may import everything below it).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "proto": ("rtc", "sfu", "cluster", "http", "client"),
    "rtc": ("sfu", "cluster", "http", "client"),
    "sfu": ("cluster", "http", "client"),
    # cluster/ and http/ are one layer, the top: they may use each other (cluster's HTTP
    # forwarding of restart routes uses http/forwarding.py)
    "cluster": ("client",),
    "http": ("client",),
}


def _imports(source: str, module: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Each import of ``source`` (the module ``module``) as (absolute module, names taken from
    it): ``import a.b`` is ``("a.b", ())``, ``from ..c import d, e`` is ``("<pkg>.c", ("d",
    "e"))``. Every statement counts, under ``if TYPE_CHECKING:`` and inside functions too."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            yield name, tuple(alias.name for alias in node.names)


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of the modules ``source`` (the module ``module``) imports."""
    found: set[str] = set()
    for name, names in _imports(source, module):
        found.add(name)
        # ``from trio_sfu.sfu import room`` imports the module trio_sfu.sfu.room
        found.update(f"{name}.{alias}" for alias in names)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges of ``graph`` (module → imported modules) that break ``FORBIDDEN``."""
    bad = []
    for module, targets in sorted(graph.items()):
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in FORBIDDEN:
            continue
        for target in sorted(targets):
            tparts = target.split(".")
            if tparts[0] == "trio_sfu" and len(tparts) > 1 and tparts[1] in FORBIDDEN[parts[1]]:
                bad.append(f"{module} imports {target}")
    return bad


def _sources() -> Iterator[tuple[str, str, str]]:
    """(module, the name its relative imports resolve against, source) of every module; a
    package is its ``__init__``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
            module = ".".join(parts)
            yield module, module + ".__init__", path.read_text()
        else:
            module = ".".join(parts)
            yield module, module, path.read_text()


def package_graph() -> dict[str, set[str]]:
    return {module: imported_modules(source, anchor) for module, anchor, source in _sources()}


def module_graph(sources: Iterable[tuple[str, str, str]]) -> dict[str, set[str]]:
    """Module → the package's modules it imports, for the cycle check. ``from p import x``
    is an edge to the module ``p.x`` when there is one (a submodule), else to ``p`` (a name
    defined, or re-exported, by ``p/__init__.py``); the implicit import of a module's parent
    packages is not an edge (every module would otherwise be in a cycle with its package)."""
    items = list(sources)
    modules = {module for module, _, _ in items}
    graph: dict[str, set[str]] = {}
    for module, anchor, source in items:
        targets: set[str] = set()
        for name, names in _imports(source, anchor):
            submodules = {f"{name}.{alias}" for alias in names} & modules
            targets |= submodules
            if not names or len(submodules) < len(names):
                targets.add(name)
        graph[module] = (targets & modules) - {module}
    return graph


def test_layers_point_down() -> None:
    assert violations(package_graph()) == []


def test_the_checker_finds_a_violation() -> None:
    graph = {
        "trio_sfu.proto.rtp": {"trio_sfu.sfu.room"},
        "trio_sfu.sfu.room": {"trio_sfu.proto.rtp", "trio_sfu.rtc.peer"},
        "trio_sfu.sfu.member": {"trio_sfu.cluster.relay"},
        "trio_sfu.cluster.relay": {"trio_sfu.sfu.model"},
    }
    assert violations(graph) == [
        "trio_sfu.proto.rtp imports trio_sfu.sfu.room",
        "trio_sfu.sfu.member imports trio_sfu.cluster.relay",
    ]


def test_the_checker_reads_type_checking_and_relative_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from trio_sfu.http import app\n"
        "from ..cluster import relay\n"
    )
    found = imported_modules(source, "trio_sfu.sfu.room")
    assert {"trio_sfu.http.app", "trio_sfu.cluster.relay"} <= found
    graph = {"trio_sfu.sfu.room": found}
    assert violations(graph) == [
        "trio_sfu.sfu.room imports trio_sfu.cluster",
        "trio_sfu.sfu.room imports trio_sfu.cluster.relay",
        "trio_sfu.sfu.room imports trio_sfu.http",
        "trio_sfu.sfu.room imports trio_sfu.http.app",
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` among its own modules: each strongly connected component
    of more than one module (or a module importing itself), sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in graph:
                continue  # outside the package, or a name imported from a module
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1 or module in graph[module]:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


#: Cycles still to remove, listed exactly: a new cycle fails, and so does removing one of
#: these without taking it off the list.
KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycles() -> None:
    """No module of trio_sfu reaches itself through imports, counting the ones made only for
    type hints and inside functions: each part of the SFU can be read, and tested, without the
    parts that use it (issue 16)."""
    assert cycles(module_graph(_sources())) == KNOWN_CYCLES


def test_the_checker_finds_a_cycle() -> None:
    sources = [
        # member → room only for type hints, room → member at run time: a cycle
        (
            "trio_sfu.sfu.member",
            "trio_sfu.sfu.member",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from trio_sfu.sfu.room import Room\n",
        ),
        ("trio_sfu.sfu.room", "trio_sfu.sfu.room", "from trio_sfu.sfu import member\n"),
        # a three-module cycle closed by an import inside a function
        ("trio_sfu.sfu.a", "trio_sfu.sfu.a", "from .b import x\n"),
        ("trio_sfu.sfu.b", "trio_sfu.sfu.b", "import trio_sfu.sfu.c\n"),
        ("trio_sfu.sfu.c", "trio_sfu.sfu.c", "def f():\n    from trio_sfu.sfu.a import y\n"),
        # a package re-exporting its submodule, which imports a sibling by relative import:
        # no cycle (the package itself is not imported by its submodule)
        ("trio_sfu.proto.p", "trio_sfu.proto.p.__init__", "from .q import Q\n"),
        ("trio_sfu.proto.p.q", "trio_sfu.proto.p.q", "from . import r\n"),
        ("trio_sfu.proto.p.r", "trio_sfu.proto.p.r", "import struct\n"),
        # ... but a submodule taking a name from its package's __init__ is one
        ("trio_sfu.proto.s", "trio_sfu.proto.s.__init__", "from .t import T\n"),
        ("trio_sfu.proto.s.t", "trio_sfu.proto.s.t", "from trio_sfu.proto.s import U\n"),
    ]
    assert cycles(module_graph(sources)) == [
        ["trio_sfu.proto.s", "trio_sfu.proto.s.t"],
        ["trio_sfu.sfu.a", "trio_sfu.sfu.b", "trio_sfu.sfu.c"],
        ["trio_sfu.sfu.member", "trio_sfu.sfu.room"],
    ]
