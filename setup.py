"""The demo site ships inside the wheel (issue 13): ``site/`` stays at the repository's top
(the browser tests and the site's own tooling use it there) and is copied into the built
package as ``trio_sfu/site`` — package data that ``trio-sfu serve`` finds from any working
directory. Everything else is declared in ``pyproject.toml``.

``TRIO_SFU_COMPILE=1`` also compiles the forwarding path's modules with mypyc (issue 10; they
are listed in ``trio_sfu/compiled.py``): ``pip install --no-build-isolation --no-deps .`` once
the dependencies, mypy and wheel are installed (mypyc type-checks against them) and with a C
compiler, or ``scripts/compile`` for a checkout. Without it the package is pure
Python and needs no compiler."""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

SITE = Path(__file__).resolve().parent / "site"
# What the site is made of; the site's README and package.json are for developers.
SHIPPED = (".html", ".js", ".css", ".svg", ".png", ".ico", ".webmanifest")


class BuildWithSite(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode or not SITE.is_dir():
            return  # an editable install serves the repository's site/ directly
        target = Path(self.build_lib) / "trio_sfu" / "site"
        shutil.rmtree(target, ignore_errors=True)
        for path in sorted(SITE.rglob("*")):
            if path.is_file() and path.suffix in SHIPPED and not path.name.startswith("."):
                dest = target / path.relative_to(SITE)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)


def compiled_extensions() -> list[Any]:
    """mypyc's extension modules for ``COMPILED_MODULES``, read from ``trio_sfu/compiled.py``
    without importing the package (the build may run before its dependencies are installed).
    Their shared library goes inside the package (``trio_sfu._native``), so an editable
    install finds it from any working directory."""
    if os.environ.get("TRIO_SFU_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    tree = ast.parse((Path(__file__).resolve().parent / "trio_sfu" / "compiled.py").read_text())
    names: tuple[str, ...] = ()
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "COMPILED_MODULES":
            assert node.value is not None
            names = ast.literal_eval(node.value)
    if not names:
        raise SystemExit("trio_sfu/compiled.py: COMPILED_MODULES not found")
    paths = [name.replace(".", "/") + ".py" for name in names]
    return list(mypycify(paths, opt_level="3", group_name="trio_sfu._native"))


setup(cmdclass={"build_py": BuildWithSite}, ext_modules=compiled_extensions())
