"""Which tests run in which pytest process.

trio-asyncio (the bridge the cluster adapters use to reach redis-py and nats-py) patches
asyncio for the whole process the moment it is imported: every asyncio loop then becomes a
Trio-driven one, which breaks the plain asyncio the rest of the suite runs in-process
(Playwright's sync API, aiortc, aioice). So the tests that import the adapters live in
``tests/aio`` and run in a pytest process of their own:

    .venv/bin/python -m pytest                           # everything but tests/aio
    TRIO_SFU_AIO_TESTS=1 .venv/bin/python -m pytest tests/aio

``scripts/test`` runs both. (The cluster's end-to-end tests run pods as separate processes, so
they stay in the main session.)
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
AIO_DIR = ROOT / "tests" / "aio"
AIO_SESSION = os.environ.get("TRIO_SFU_AIO_TESTS") == "1"


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    path = collection_path.resolve()
    inside = path == AIO_DIR or AIO_DIR in path.parents
    if AIO_SESSION:
        # Only tests/aio (and the folders that lead to it).
        return None if inside or path in AIO_DIR.parents else True
    return True if inside else None


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """Fail the main session if anything in it imported trio-asyncio after all: its tests
    would have run against a patched asyncio (see the module docstring)."""
    import sys

    import pytest

    if not AIO_SESSION and "trio_asyncio" in sys.modules:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # type: ignore[attr-defined]
        print(
            "\nconftest.py: trio_asyncio was imported in the main test session; move the test "
            "that imports the cluster adapters to tests/aio",
            file=sys.stderr,
        )
