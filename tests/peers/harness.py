"""Trio side of the external-peer tests: spawn a peer script and speak its line protocol.

The peers (headless Chromium, aiortc) run as subprocesses so that they are truly independent of
trio-sfu: their own interpreter, their own event loop, no shared imports. Each prints one JSON
object per line on stdout and logs on stderr; this module relays offer and answer, enforces
timeouts, and attaches the tail of the peer's stderr to every failure, because a failing
browser test is undebuggable without the browser's console. See DEVELOPERS.md.
"""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

PEERS_DIR = os.path.dirname(os.path.abspath(__file__))
CHROMIUM = "/usr/bin/chromium"

# Set to 1 to copy every peer's stderr live to this process's stderr (pytest shows it with -s
# or on failure); otherwise only the tail is kept and attached to failures.
LOG_ENV = "TRIO_SFU_PEER_LOG"
# Set to 1 (CI does) to turn "Chromium missing" into a failure instead of a skip.
REQUIRE_BROWSER_ENV = "TRIO_SFU_REQUIRE_BROWSER"

STDERR_TAIL_LINES = 200
CLOSE_TIMEOUT = 15.0  # seconds a peer gets to exit after its stdin closes


class PeerError(Exception):
    """A peer process failed outside the protocol (crash, timeout, garbage on stdout)."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(f"{message}\n--- peer stderr (tail) ---\n{stderr_tail}")
        self.stderr_tail = stderr_tail


class PeerProcess:
    """One running peer script: JSON lines out and in, stderr kept as a bounded tail."""

    def __init__(self, name: str, proc: trio.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[dict[str, Any]] = []  # every protocol line received, for debugging
        self.last_progress: dict[str, Any] | None = None
        self.on_progress: Callable[[dict[str, Any]], None] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._send_lines, self._recv_lines = trio.open_memory_channel[dict[str, Any] | str](
            math.inf
        )
        self._mirror = os.environ.get(LOG_ENV) == "1"
        self._stdout_done = trio.Event()

    # ---------------------------------------------------------------- readers

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            async with self._send_lines:
                async for line in _lines(self.proc.stdout):
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        await self._send_lines.send(line)  # reported by receive()
                        continue
                    if isinstance(obj, dict):
                        self.lines.append(obj)
                        await self._send_lines.send(obj)
                    else:
                        await self._send_lines.send(line)
        finally:
            self._stdout_done.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in _lines(self.proc.stderr):
            self._stderr.append(line)
            if self._mirror:
                print(f"[{self.name}] {line}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- protocol

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def error(self, message: str) -> PeerError:
        return PeerError(f"{self.name}: {message}", self.stderr_tail())

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        try:
            await self.proc.stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            msg = f"cannot write to stdin ({exc!r}); exit code {self.proc.poll()}"
            raise self.error(msg) from exc

    async def receive(self, kind: str, timeout: float = math.inf) -> dict[str, Any]:
        """Next line of ``type == kind``; progress lines are recorded, others skipped."""
        with trio.move_on_after(timeout):
            while True:
                try:
                    item = await self._recv_lines.receive()
                except trio.EndOfChannel:
                    with trio.move_on_after(5):
                        await self.proc.wait()
                    raise self.error(
                        f"stdout closed while waiting for {kind!r} "
                        f"(exit code {self.proc.poll()})"
                    ) from None
                if isinstance(item, str):
                    raise self.error(f"non-JSON line on stdout: {item[:300]!r}")
                if item.get("type") == kind:
                    return item
                if item.get("type") == "result":
                    raise self.error(f"finished before sending {kind!r}: {item}")
                if item.get("type") == "progress":
                    self.last_progress = item
                    if self.on_progress is not None:
                        self.on_progress(item)
        raise self.error(
            f"no {kind!r} line within {timeout:.0f} s; last progress: {self.last_progress}"
        )

    async def receive_any(self) -> dict[str, Any]:
        """The next JSON line, whatever its shape (for request/response peers)."""
        try:
            item = await self._recv_lines.receive()
        except trio.EndOfChannel:
            with trio.move_on_after(5):
                await self.proc.wait()
            raise self.error(f"stdout closed (exit code {self.proc.poll()})") from None
        if isinstance(item, str):
            raise self.error(f"non-JSON line on stdout: {item[:300]!r}")
        return item

    async def answer(self, offer_sdp: str, timeout: float = 30.0) -> str:
        """Use this peer as the answering side: send it the offer, return its answer SDP.

        Its signature fits ``run_peer(on_offer=...)``, which is how the self-check relays
        between two peer processes.
        """
        await self.send({"type": "offer", "sdp": offer_sdp})
        msg = await self.receive("answer", timeout)
        sdp = msg.get("sdp")
        if not isinstance(sdp, str):
            raise self.error(f"answer line without an 'sdp' string: {msg}")
        return sdp

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> int:
        """Close stdin (the peer's signal to stop), wait, and kill the group if it lingers."""
        if self.proc.stdin is not None:
            with trio.move_on_after(1):
                await self.proc.stdin.aclose()
        with trio.move_on_after(timeout):
            return await self.proc.wait()
        self._kill_group()
        with trio.move_on_after(5):
            await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -signal.SIGKILL

    def _kill_group(self) -> None:
        # The peer leads its own session (start_new_session), so its group holds the Playwright
        # driver and Chromium too; nothing outside it is touched.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.proc.kill()


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buf = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(1 << 16)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            chunk = b""
        if not chunk:
            if buf:
                yield buf.decode("utf-8", "replace")
            return
        buf += chunk
        while (nl := buf.find(b"\n")) >= 0:
            line = buf[:nl].decode("utf-8", "replace").rstrip("\r")
            del buf[: nl + 1]
            yield line


@asynccontextmanager
async def open_peer(script: str, *args: str) -> AsyncIterator[PeerProcess]:
    """Run ``sys.executable tests/peers/<script> args...`` for the duration of the block.

    Leaving the block closes the peer's stdin, waits up to CLOSE_TIMEOUT and then kills its
    whole process group, so no browser outlives a test.
    """
    path = os.path.join(PEERS_DIR, script)
    async with open_command([sys.executable, path, *args], name=script) as peer:
        yield peer


@asynccontextmanager
async def open_command(
    argv: Sequence[str],
    *,
    name: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> AsyncIterator[PeerProcess]:
    """Run any command that speaks the peers' JSON-line protocol, for the block's duration
    (a peer under another interpreter, e.g. GStreamer's under Debian's python3)."""
    proc = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    )
    peer = PeerProcess(name, proc)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer._read_stdout)
            nursery.start_soon(peer._read_stderr)
            try:
                yield peer
            finally:
                with trio.CancelScope(shield=True):
                    await peer.close()
                    # A grandchild may still hold the pipes open; do not wait for it forever.
                    with trio.move_on_after(2):
                        await peer._stdout_done.wait()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery only runs readers, which do not fail; an error from the caller's block
        # comes back wrapped in a group. Hand it back unwrapped, as the caller raised it.
        leaf = _single_leaf(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


async def run_peer(
    script: str,
    *args: str,
    on_offer: Callable[[str], Awaitable[str]],
    timeout: float,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one peer to completion: relay its offer through ``on_offer``, return its result.

    The returned dict is the peer's result line plus ``returncode`` and, when ``ok`` is false,
    ``stderrTail``. A peer that crashes, prints garbage or produces no result within
    ``timeout`` raises :class:`PeerError`; an exception from ``on_offer`` propagates with the
    peer's stderr tail attached as a note.
    """
    async with open_peer(script, *args) as peer:
        peer.on_progress = on_progress
        try:
            with trio.fail_after(timeout):
                offer = await peer.receive("offer")
                sdp = offer.get("sdp")
                if not isinstance(sdp, str):
                    raise peer.error(f"offer line without an 'sdp' string: {offer}")
                answer = await on_offer(sdp)
                await peer.send({"type": "answer", "sdp": answer})
                result = await peer.receive("result")
        except trio.TooSlowError:
            raise peer.error(
                f"no result within {timeout:.0f} s; last progress: {peer.last_progress}"
            ) from None
        except PeerError:
            raise
        except Exception as exc:
            exc.add_note(f"--- {script} stderr (tail) ---\n{peer.stderr_tail()}")
            raise
        result["returncode"] = await peer.close()
        if not result.get("ok"):
            result["stderrTail"] = peer.stderr_tail()
        return result


def chromium_available() -> str | None:
    """None if the Chromium peer can run here, else a message naming what is missing."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not installed (Debian package chromium)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not executable"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python package playwright not installed (the test extra; no 'playwright install')"
    try:
        from playwright._impl._driver import compute_driver_executable

        driver = compute_driver_executable()
        node = driver[0] if isinstance(driver, tuple) else driver
        if not os.path.exists(node):
            return f"Playwright driver missing at {node} (reinstall the playwright package)"
    except ImportError:
        pass  # private API moved; the launch itself will report a broken driver
    return None


def require_chromium() -> None:
    """Skip the calling test if Chromium is unusable (fail instead under CI's env flag)."""
    import pytest

    missing = chromium_available()
    if missing is None:
        return
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{missing} ({REQUIRE_BROWSER_ENV}=1 forbids skipping)")
    pytest.skip(missing)
