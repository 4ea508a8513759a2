"""Fixtures of the interop matrix, and the matrix table printed at the end of the run.

A test's cell is ``@pytest.mark.interop(peer, scenario)`` or, without the marker, its name
``test_<peer>_<scenario>`` (``scenario`` one of driver.SCENARIOS). See README.md here.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.interop.driver import SCENARIOS, SPECS, require
from tests.peers.browser_client import Browser, open_browser
from tests.peers.harness import require_chromium
from trio_sfu.app import Running, serve
from trio_sfu.config import Config

REPO = Path(__file__).resolve().parents[2]
#: the page the browser peers load (tests/peers/interop_browser.py), served next to the site
PAGE_DIR = Path(__file__).resolve().parent / "page"

_cells: dict[str, tuple[str, str]] = {}  # nodeid -> (peer, scenario)
_results: dict[tuple[str, str], str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interop(peer, scenario): a cell of the interop matrix")


def _cell(item: pytest.Item) -> tuple[str, str] | None:
    marker = item.get_closest_marker("interop")
    if marker is not None:
        return str(marker.args[0]), str(marker.args[1])
    name = getattr(item, "originalname", None) or item.name
    for scenario in SCENARIOS:
        suffix = f"_{scenario}"
        if name.startswith("test_") and name.endswith(suffix):
            return name[len("test_"):-len(suffix)], scenario
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        cell = _cell(item)
        if cell is not None:
            _cells[item.nodeid] = cell


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cell = _cells.get(report.nodeid)
    if cell is None:
        return
    if report.when == "call" or report.skipped or report.failed:
        outcome = "skip" if report.skipped else "FAIL" if report.failed else "pass"
        if report.skipped and hasattr(report, "wasxfail"):
            outcome = "xfail"  # a known failure (strict xfail naming its cause), not a skip
        previous = _results.get(cell)
        if previous != "FAIL":  # a teardown error after a pass still fails the cell
            _results[cell] = outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    peers = sorted({peer for peer, _ in _results})
    width = max(len("interop matrix"), *(len(p) for p in peers)) + 2
    tr = terminalreporter
    tr.section("interop matrix")
    tr.write_line("peer".ljust(width) + "".join(s.ljust(12) for s in SCENARIOS))
    for peer in peers:
        row = "".join(_results.get((peer, s), "-").ljust(12) for s in SCENARIOS)
        tr.write_line(peer.ljust(width) + row)


@pytest.fixture(autouse=True)
def _peer_available(request: pytest.FixtureRequest) -> None:
    """Skip (or fail, under TRIO_SFU_REQUIRE_BROWSER=1) a cell whose peer cannot run here,
    before any server starts. Synchronous on purpose: pytest-trio drops the message of a
    skip raised inside an async test (it re-raises a bare pytest.skip()), and the message
    must name the missing tool."""
    cell = _cells.get(request.node.nodeid)
    if cell is None:
        return
    spec = SPECS.get(cell[0])
    if spec is not None:
        require(spec)
    if cell[1] == "publisher":
        require_chromium()  # the Chromium subscriber on the other side


@dataclass
class InteropApp:
    running: Running
    base_url: str


@pytest.fixture
async def interop_app(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[InteropApp]:
    """A real trio-sfu on loopback, with the browser peers' page next to the site."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "site", site)
    for page in PAGE_DIR.iterdir():
        shutil.copy(page, site / page.name)
    config = Config(http_host="127.0.0.1", http_port=0, udp_port=0, site_dir=site)
    running: Running = await nursery.start(serve, config)
    yield InteropApp(running, f"http://127.0.0.1:{running.http_port}")
    running.shutdown()


@pytest.fixture
async def interop_browser() -> AsyncIterator[Browser]:
    """A Chromium (tests/peers/browser.py) for the other side of the publisher scenario."""
    require_chromium()
    async with open_browser() as browser:
        yield browser
