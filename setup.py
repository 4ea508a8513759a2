"""The demo site ships inside the wheel (issue 13): ``site/`` stays at the repository's top
(the browser tests and the site's own tooling use it there) and is copied into the built
package as ``trio_sfu/site`` — package data that ``trio-sfu serve`` finds from any working
directory. Everything else is declared in ``pyproject.toml``."""

from __future__ import annotations

import shutil
from pathlib import Path

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


setup(cmdclass={"build_py": BuildWithSite})
