"""Firefox ESR for the tests: where it is, and the profile preferences every test uses.

Firefox runs without an automation protocol here (Playwright drives only its own patched
builds), so its pages drive themselves and report over plain HTTP (tests/test_site.py's
Collector, tests/peers/interop_browser.py). Imports nothing from trio_sfu.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

FIREFOX_PREFS = """\
user_pref("media.navigator.streams.fake", true);
user_pref("media.navigator.permission.disabled", true);
user_pref("media.autoplay.default", 0);
user_pref("media.autoplay.blocking_policy", 0);
user_pref("media.peerconnection.ice.loopback", true);
user_pref("media.peerconnection.ice.obfuscate_host_addresses", false);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.disabledForTesting", true);
user_pref("extensions.update.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("browser.safebrowsing.malware.enabled", false);
user_pref("browser.safebrowsing.phishing.enabled", false);
"""


# Set to 1 (e.g. in CI once scripts/setup-system installs firefox-esr) to fail, not skip,
# when Firefox is missing.
REQUIRE_FIREFOX_ENV = "TRIO_SFU_REQUIRE_FIREFOX"


def find_firefox() -> str | None:
    for name in ("firefox-esr", "firefox"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_firefox() -> str:
    """Firefox's path; else skip the calling test naming the package (fail instead under
    CI's ``TRIO_SFU_REQUIRE_FIREFOX=1``)."""
    import os

    import pytest

    found = find_firefox()
    if found is not None:
        return found
    missing = "firefox-esr not installed (Debian package firefox-esr)"
    if os.environ.get(REQUIRE_FIREFOX_ENV) == "1":
        pytest.fail(f"{missing} ({REQUIRE_FIREFOX_ENV}=1 forbids skipping)")
    pytest.skip(missing)


@contextmanager
def headless_firefox(
    firefox: str, url: str, home: Path, output: IO[Any] | int | None, prefs: str = ""
) -> Iterator[subprocess.Popen[bytes]]:
    """Firefox headless on ``url`` with a fresh profile under ``home`` (FIREFOX_PREFS plus
    ``prefs``), its output to ``output``; killed with its content processes on exit (it runs
    in a session of its own)."""
    profile = home / "profile"
    profile.mkdir(exist_ok=True)
    (profile / "user.js").write_text(FIREFOX_PREFS + prefs)
    env = {**os.environ, "HOME": str(home), "MOZ_CRASHREPORTER_DISABLE": "1"}
    fox = subprocess.Popen(
        [firefox, "--headless", "--no-remote", "--profile", str(profile), url],
        stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )
    try:
        yield fox
    finally:
        try:
            os.killpg(fox.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        fox.wait(timeout=10)
