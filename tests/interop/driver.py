"""The interop scenarios, written once and run against every peer (see README.md here).

A peer is a separate process speaking the JSON-line protocol of README.md; the driver starts it,
starts the other side of the scenario (aiortc WHIP publishers, a Chromium subscriber), and
checks what the peer reports: decoded frames per publisher, every server command, every
``SDP_OFFER`` answered. Every wait is bounded, and a failure names the step and carries the
peer's stderr tail.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from tests.peers.harness import (
    PEERS_DIR,
    REQUIRE_BROWSER_ENV,
    PeerError,
    PeerProcess,
    open_command,
)

SCENARIOS = ("subscriber", "publisher", "whep")
MIN_FRAMES = 60
#: publishers that join and leave between the first and the last (issue 8, "Proof")
CHURN = 5
STEP_TIMEOUT = 45.0  # one step of a scenario (a join decoded, a leave renegotiated)
PEER_TIMEOUT = 300.0  # the peer's own --timeout: the whole scenario


#: every PeerSpec by its matrix row name ("-" as "_"), for conftest.py's availability check
SPECS: dict[str, PeerSpec] = {}


@dataclass(frozen=True)
class PeerSpec:
    """One row of the matrix: how to run a peer and what it supports.

    ``argv`` turns the protocol arguments (``--role ... --base-url ...``) into the full
    command line; ``missing`` says what this machine lacks to run it (None: runnable).
    """

    name: str
    scenarios: tuple[str, ...]
    argv: Callable[[list[str]], list[str]]
    missing: Callable[[], str | None] = lambda: None
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        SPECS[self.name.replace("-", "_")] = self

    def open(self, args: list[str]) -> AbstractAsyncContextManager[PeerProcess]:
        """Run the peer for the block's duration (override to run it elsewhere, e.g. a netns)."""
        return open_command(self.argv(args), name=self.name, env=self.env)


def require(spec: PeerSpec) -> None:
    """Skip a test whose peer cannot run here, naming what is missing (CI, which sets
    TRIO_SFU_REQUIRE_BROWSER=1 and installs every peer, fails instead)."""
    import pytest

    missing = spec.missing()
    if missing is None:
        return
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{spec.name}: {missing} ({REQUIRE_BROWSER_ENV}=1 forbids skipping)")
    pytest.skip(f"{spec.name}: {missing}")


def python_peer(script: str) -> Callable[[list[str]], list[str]]:
    """``argv`` for a Python script in tests/peers run by this interpreter."""
    path = os.path.join(PEERS_DIR, script)
    return lambda args: [sys.executable, path, *args]


def protocol_args(role: str, base_url: str, room: str, peer_id: str,
                  timeout: float = PEER_TIMEOUT) -> list[str]:
    return ["--role", role, "--base-url", base_url, "--room", room, "--id", peer_id,
            "--timeout", str(timeout)]


def fresh(prefix: str) -> str:
    """A room or user name no earlier test used (the server lives for one test anyway)."""
    return f"{prefix}{secrets.token_hex(3)}"


@dataclass
class PeerLog:
    """Everything a peer reported, in order, and the derived state the scenarios wait on."""

    peer: PeerProcess
    lines: list[dict[str, Any]] = field(default_factory=list)
    decoded: dict[str, int] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)
    done: bool = False

    def commands(self, name: str | None = None) -> list[dict[str, Any]]:
        return [x for x in self.lines if x.get("type") == "command"
                and (name is None or x.get("name") == name)]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [x for x in self.lines if x.get("type") == kind]

    async def pump(self) -> None:
        try:
            while True:
                line = await self.peer.receive_any()
                self.lines.append(line)
                if line.get("type") == "frames" and isinstance(line.get("decoded"), dict):
                    self.decoded.update({str(k): int(v) for k, v in line["decoded"].items()})
                self._wake()
                if line.get("type") == "result":
                    break
        except PeerError:
            pass  # stdout closed: the waits below report it with the stderr tail
        finally:
            self.done = True
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def fail(self, what: str) -> AssertionError:
        tail = [x for x in self.lines if x.get("type") != "frames"][-30:]
        return AssertionError(
            f"{self.peer.name}: {what}\n--- last lines ---\n"
            + "\n".join(map(str, tail))
            + f"\n--- decoded --- {self.decoded}\n--- stderr (tail) ---\n"
            + self.peer.stderr_tail()
        )

    async def until(self, what: str, predicate: Callable[[], Any],
                    timeout: float = STEP_TIMEOUT) -> Any:
        """Wait (bounded) until ``predicate()`` is truthy; fail naming ``what`` otherwise."""
        with trio.move_on_after(timeout):
            while True:
                found = predicate()
                if found:
                    return found
                if self.done:
                    raise self.fail(f"peer ended while waiting for {what}")
                self.check_healthy()
                await self.changed.wait()
        raise self.fail(f"no {what} within {timeout:.0f} s")

    def check_healthy(self) -> None:
        """No refused offer, no server ERROR, no unasked close — at any moment."""
        for line in self.lines:
            if line.get("type") == "answered" and not line.get("ok"):
                raise self.fail(f"the peer refused an SDP_OFFER: {line.get('error')}")
            if line.get("type") == "command" and line.get("name") == "ERROR":
                raise self.fail(f"the server sent ERROR {line.get('arg')}")
            if line.get("type") == "closed":
                raise self.fail(f"the connection closed: {line.get('reason')}")

    def offers_settled(self) -> bool:
        """Every SDP_OFFER received so far has its ``answered`` line."""
        return len(self.commands("SDP_OFFER")) == len(self.of_type("answered"))

    def answered_after(self, index: int) -> bool:
        """An SDP_OFFER that came after line ``index`` was answered (and none is pending)."""
        later = [x for x in self.lines[index:] if x.get("type") == "command"
                 and x.get("name") == "SDP_OFFER"]
        return bool(later) and self.offers_settled()


@asynccontextmanager
async def running(spec: PeerSpec, args: list[str]) -> AsyncIterator[PeerLog]:
    """The peer started with ``args``, its lines pumped into a :class:`PeerLog`."""
    async with spec.open(args) as peer, trio.open_nursery() as nursery:
        log = PeerLog(peer)
        nursery.start_soon(log.pump)
        try:
            yield log
        finally:
            if not log.done:
                try:
                    await peer.send({"type": "stop"})
                except PeerError:
                    pass
                with trio.move_on_after(20):
                    while not log.done:
                        await log.changed.wait()
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------ the other side

_marks = itertools.cycle((40, 90, 160, 210))


def whip_publisher_argv(base_url: str, room: str, *extra: str) -> list[str]:
    """An aiortc WHIP publisher (real VP8; see tests/peers/aiortc_whip.py)."""
    return [sys.executable, os.path.join(PEERS_DIR, "aiortc_whip.py"),
            "--url", f"{base_url}/whip/{room}", "--timeout", "240", "--mark", str(next(_marks)),
            *extra]


@asynccontextmanager
async def whip_publisher(base_url: str, room: str, *extra: str) -> AsyncIterator[PeerProcess]:
    async with open_command(whip_publisher_argv(base_url, room, *extra),
                            name="aiortc_whip") as pub:
        yield pub


async def stop_publisher(pub: PeerProcess) -> None:
    await pub.send({"type": "stop"})
    with trio.fail_after(20):
        result = await pub.receive("result")
    if not result.get("ok"):
        raise pub.error(f"the WHIP publisher failed: {result}")


# ---------------------------------------------------------------------------------- scenarios


async def subscriber_scenario(spec: PeerSpec, base_url: str, *, churn: int = CHURN,
                              min_frames: int = MIN_FRAMES,
                              publisher_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """The seed API's core: one subscriber connection through 2 + ``churn`` publishers.

    ``publisher_args`` go to every aiortc WHIP publisher (e.g. ``("--ice-address", ADDR)``
    inside a network namespace). Returns a summary (offers answered, publishers seen).
    """
    room = fresh("ix")
    async with running(spec, protocol_args("subscriber", base_url, room,
                                           fresh(f"{spec.name.replace('_', '')}-"))) as sub:
        await sub.until("connected line", lambda: sub.of_type("connected"))

        async def join_and_leave(decode: bool) -> str:
            joins_before = len(sub.commands("PUB_JOIN"))
            async with whip_publisher(base_url, room, *publisher_args) as pub:
                with trio.fail_after(STEP_TIMEOUT):
                    await pub.receive("published")
                join = await sub.until(
                    "PUB_JOIN", lambda: sub.commands("PUB_JOIN")[joins_before:])
                pid = str(join[0]["arg"])
                mark = next(i for i, x in enumerate(sub.lines) if x is join[0])
                await sub.until(f"an answered SDP_OFFER adding {pid}",
                                lambda: sub.answered_after(mark))
                if decode:
                    await sub.until(f"{min_frames} decoded frames of {pid}",
                                    lambda: sub.decoded.get(pid, 0) >= min_frames)
                left_at = len(sub.lines)
                await stop_publisher(pub)
            await sub.until(f"PUB_LEFT {pid}", lambda: any(
                x.get("arg") == pid for x in sub.commands("PUB_LEFT")))
            await sub.until(f"an answered SDP_OFFER stopping {pid}",
                            lambda: sub.answered_after(left_at))
            return pid

        seen = [await join_and_leave(decode=True)]
        for _ in range(churn):
            seen.append(await join_and_leave(decode=False))
        seen.append(await join_and_leave(decode=True))
        sub.check_healthy()
        offers = len(sub.commands("SDP_OFFER"))
        assert offers >= 2 * len(seen), sub.fail(f"only {offers} SDP_OFFERs")
        assert sub.offers_settled(), sub.fail("an SDP_OFFER was never answered")
        return {"offers": offers, "publishers": seen, "decoded": dict(sub.decoded)}


async def publisher_scenario(spec: PeerSpec, base_url: str, browser: Any,
                             *, min_frames: int = MIN_FRAMES) -> dict[str, Any]:
    """The peer publishes through the seed API; a Chromium subscriber decodes it."""
    from tests.browser_helpers import decoding, open_page

    room = fresh("ix")
    page = await open_page(browser, base_url, fresh("watch"))
    await browser.eval(page, f"window.T.subscribe({room!r}, 'watcher')")
    pid = fresh(f"{spec.name.replace('_', '')}-")
    async with running(spec, protocol_args("publisher", base_url, room, pid)) as pub:
        connected = await pub.until("connected line", lambda: pub.of_type("connected"))
        pid = str(connected[0].get("id") or pid)  # a peer may pick its own suffix
        try:
            received = await decoding(browser, page, pid, min_frames)
        except PeerError as exc:
            # what the publisher peer and the server saw, beside the watcher's progress
            async with httpx.AsyncClient() as http:
                room_state = (await http.get(f"{base_url}/rooms/{room}", timeout=5)).text
            raise pub.fail(f"{exc}\n--- GET /rooms/{room} --- {room_state}") from exc
        pub.check_healthy()
    await browser.close_page(page)
    return received


async def whep_scenario(spec: PeerSpec, base_url: str, *, min_frames: int = MIN_FRAMES,
                        publisher_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """A WHEP viewer POSTed right after the room's WHIP publisher got its 201, while that
    publisher is still connecting: the publisher (``--hold``) applies its answer, and so
    starts ICE/DTLS, only once the viewer's POST was answered — no timing luck involved."""
    room = fresh("ix")
    async with running(spec, protocol_args("whep", base_url, room, fresh("viewer-"))) as viewer:
        await viewer.until("ready line", lambda: viewer.of_type("ready"))
        async with whip_publisher(base_url, room, "--hold", *publisher_args) as pub:
            with trio.fail_after(STEP_TIMEOUT):
                await pub.receive("published")
            await viewer.peer.send({"type": "post"})
            posted = await viewer.until("posted line", lambda: viewer.of_type("posted"))
            assert posted[0].get("status") == 201, viewer.fail(f"WHEP POST got {posted[0]}")
            await pub.send({"type": "go"})
            await viewer.until(f"{min_frames} decoded frames",
                               lambda: viewer.decoded.get("whep", 0) >= min_frames)
            viewer.check_healthy()
            await stop_publisher(pub)
        return {"decoded": dict(viewer.decoded)}


__all__ = [
    "CHURN", "MIN_FRAMES", "SCENARIOS", "PeerLog", "PeerSpec", "protocol_args",
    "publisher_scenario", "python_peer", "require", "running", "subscriber_scenario",
    "whep_scenario", "whip_publisher",
]
