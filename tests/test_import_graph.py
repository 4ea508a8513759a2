"""The layering contract (issue 16): ``proto → rtc → sfu → cluster/http``, checked on the source.

Every ``import`` and ``from … import`` of every module under ``trio_sfu/`` is read with ``ast``,
including the ones under ``if TYPE_CHECKING:`` and inside functions: a lower layer that names a
higher one, even only for type hints, is a violation.
"""

from __future__ import annotations

import ast
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


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of the modules ``source`` (the module ``module``) imports."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            # ``from trio_sfu.sfu import room`` imports the module trio_sfu.sfu.room
            found.update(f"{name}.{alias.name}" for alias in node.names)
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


def package_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
            module = ".".join(parts)
            graph[module] = imported_modules(path.read_text(), module + ".__init__")
        else:
            module = ".".join(parts)
            graph[module] = imported_modules(path.read_text(), module)
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
