"""The CI skip rule of tests/conftest.py: under ``CI=true`` an unlisted skip fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = '''
import pytest

def test_unlisted():
    pytest.skip("the feature is not there yet")

def test_listed():
    pytest.skip("no non-loopback IPv4 address for aioice to gather")

@pytest.mark.skip(reason="decorated")
def test_decorated():
    pass

def test_passes():
    pass
'''


def run_sample(tmp_path: Path, env: dict[str, str]) -> str:
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "TRIO_SFU_REQUIRE_BROWSER")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.conftest",
         "-c", os.devnull, "--rootdir", str(tmp_path), str(sample)],
        cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, timeout=120,
    )
    return done.stdout


@pytest.mark.parametrize("env", [{"CI": "true"}, {"TRIO_SFU_REQUIRE_BROWSER": "1"}])
def test_unlisted_skips_fail_under_ci(tmp_path: Path, env: dict[str, str]) -> None:
    out = run_sample(tmp_path, env)
    # A skip in the call fails the test; a skip mark (the setup phase) makes it an error.
    assert "1 failed, 1 passed, 1 skipped, 1 error" in out, out
    assert "ALLOWED_SKIPS" in out


def test_skips_stay_skips_outside_ci(tmp_path: Path) -> None:
    out = run_sample(tmp_path, {})
    assert "1 passed, 3 skipped" in out, out
