"""Issue 13, item 1: trio-sfu as a new user installs it — ``pip install <repo>`` into a fresh
venv outside the repository, then ``trio-sfu serve`` from another directory serves the demo
site shipped inside the wheel, and Chromium publishes and decodes through it.

The venv installs from the same package sources as scripts/venv (pip's configured indexes and
wheel directories) at the tested versions (constraints.txt), so it takes seconds, not a
download of the world.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.harness import require_chromium
from tests.test_site import HARNESS_JS, Page, in_browser, wait_until

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 300


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRIO_SFU_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (outside the repository) with ``pip install <repo>``: its bin directory."""
    where = tmp_path_factory.mktemp("fresh-venv")
    venv.create(where, with_pip=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"), str(ROOT)]
    done = subprocess.run(pip, cwd=where, env=_clean_env(), capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return where / "bin"


def test_wheel_ships_the_site_and_no_test_tools(installed: Path) -> None:
    python = str(installed / "python")
    probe = (
        "import importlib.util, trio_sfu, trio_sfu.config as c; "
        "print(trio_sfu.__file__); print(c.default_site_dir()); "
        "print(importlib.util.find_spec('pytest') is None, "
        "importlib.util.find_spec('playwright') is None, "
        "importlib.util.find_spec('aiortc') is None)"
    )
    out = subprocess.run([python, "-c", probe], cwd="/", env=_clean_env(), capture_output=True,
                         text=True, timeout=60, check=True).stdout.split("\n")
    package = Path(out[0]).parent
    assert not package.is_relative_to(ROOT), out  # the installed copy, not the checkout
    assert Path(out[1]) == package / "site", out
    for name in ("index.html", "app.js", "sfu-client.js", "sfu-protocol.js", "style.css"):
        assert (package / "site" / name).read_bytes() == (ROOT / "site" / name).read_bytes()
    assert out[2] == "True True True", f"test tools leaked into the runtime install: {out[2]}"


@contextmanager
def served(bin_dir: Path, cwd: Path) -> Iterator[str]:
    """``trio-sfu serve`` from ``cwd`` on free ports; yields the demo URL it prints."""
    proc = subprocess.Popen(
        [str(bin_dir / "trio-sfu"), "serve", "--http-host", "127.0.0.1", "--http-port", "0",
         "--udp-port", "0", "--public-ip", "127.0.0.1"],
        cwd=cwd, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the banner; bounded by the process starting or dying
        match = re.search(r"demo at (http://127\.0\.0\.1:\d+/)", line)
        if match is None:
            proc.kill()
            raise AssertionError(f"no demo URL: {line!r} {proc.communicate(timeout=10)}")
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.browser
async def test_installed_server_serves_the_demo_and_chromium_decodes(
    installed: Path, tmp_path: Path
) -> None:
    require_chromium()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    harness = HARNESS_JS.read_text()

    def scenario(browser: Any, base: str) -> None:
        p = Page(browser, "installed")
        p.page.goto(f"{base}?room=pkg")
        p.page.wait_for_function("() => window.sfuDemo !== undefined")
        p.page.add_script_tag(content=harness, type="module")
        p.page.wait_for_function("() => window.harness !== undefined")
        pub = p.js("o => harness.publish('alice', o)", {"room": "pkg", "user": "alice"})
        p.js("o => harness.subscribe('carol', o)", {"room": "pkg", "user": "carol"})
        wait_until(
            "carol decoding 30 frames from alice",
            functools.partial(p.js, "n => harness.status(n)", "carol"),
            lambda st: pub in st["tiles"] and st["tiles"][pub]["framesDecoded"] >= 30,
            60, p,
        )

    with served(installed, elsewhere) as url:
        async with httpx.AsyncClient() as http:
            index = await http.get(url, timeout=10)
        assert index.status_code == 200 and "trio-sfu demo" in index.text, index.text[:200]
        await in_browser(scenario, url.rstrip("/"))
