"""Chromium pages against a trio-sfu inside a network namespace that drops UDP (issue 12).

Run by the tests as a *scenario runner* inside a fresh namespace (``tests/netns.py``)::

    python -m tests.netns -- python -m tests.browser_netns SCENARIO

It starts the server in-process (HTTP on every address, media advertised at the namespace's
veth address), applies the scenario's iptables rules, drives headless Chromium through the
site's JS module (``tests/site/browser_harness.js``, as ``tests/test_site.py`` does), and prints
one JSON result line. The namespace is private: the rules and traffic vanish with it.

Scenarios:

* ``tcp``: all UDP dropped from the start; a publisher and a subscriber must connect over
  ICE-TCP, decode, chat, and report a TCP selected pair.
* ``switch``: both connect (over UDP), then UDP is dropped mid-call; media must resume
  over TCP on the same connection ids (no new POST); then UDP comes back and both move back.
* ``turn``: both clients use ``iceTransportPolicy: "relay"`` through Debian's coturn on
  loopback, with credentials from ``GET /ice-servers``.
* ``recover``: the subscriber's connection is lost mid-call; the JS module (``reconnectOnLoss``)
  reconnects under a new id after its back-off and decodes again.
* ``lb``: all UDP dropped, and the pod's TCP port reachable only through a pass-through TCP
  balancer on the namespace's other address (443-style): the pod advertises the balancer's
  address and port (``--public-ip``, ``--tcp-public-port``) and both clients connect through it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio

from tests.netns import inside, run_scenario
from tests.peers.chromium_peer import CHROMIUM, CHROMIUM_ARGS, EXTRA_ARGS_ENV
from tests.test_site import HARNESS_JS, SITE, Page, wait_until
from trio_sfu.app import Running, serve
from trio_sfu.config import Config

TURN_SECRET = "issue12-turn-secret-for-tests-only-0123456789"
TURNSERVER = "/usr/bin/turnserver"
FRAMES = 60
SCENARIO_TIMEOUT = 170.0
CONSENT_TIMEOUT = 5.0
SWITCH_BIND_TIMEOUT = 1.0


def iptables(*rule: str) -> None:
    done = subprocess.run(["iptables", *rule], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(rule)} failed: {done.stderr.strip()}")


def drop_all_udp() -> None:
    """Every UDP datagram delivered in this namespace is dropped (both directions: the server
    and the browser both live here, so INPUT sees everything)."""
    iptables("-I", "INPUT", "-p", "udp", "-j", "DROP")


@asynccontextmanager
async def running_server(address: str, **config: Any) -> AsyncIterator[Running]:
    cfg = Config(
        **{"http_host": "0.0.0.0", "http_port": 0, "udp_port": 0, "public_ips": (address,),
           "site_dir": SITE, **config},
    )
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            functools.partial(serve, cfg, handle_signals=False)
        )
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def coturn(address: str, relay: str) -> Iterator[int]:
    """Debian's coturn listening on ``address`` and relaying from ``relay`` (both inside the
    namespace), TURN REST credentials (``use-auth-secret``) with :data:`TURN_SECRET`; yields
    its listening port."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="coturn-")
    conf = os.path.join(workdir, "turnserver.conf")
    with open(conf, "w") as f:
        f.write("\n".join([
            f"listening-ip={address}", f"relay-ip={relay}", f"listening-port={port}",
            "use-auth-secret", f"static-auth-secret={TURN_SECRET}", "realm=trio-sfu.test",
            "no-tls", "no-dtls", "no-cli", "fingerprint", "no-multicast-peers",
            # The relay talks to the SFU inside this private namespace: allow its addresses.
            f"allowed-peer-ip={relay}", "min-port=49152", "max-port=49300",
            f"pidfile={workdir}/turnserver.pid", "simple-log", f"log-file={workdir}/turn.log",
            # Its own user database: the default one (/var/lib/turn/turndb) is shared by every
            # coturn on the machine, and two at once (two test runs) lost each other's allocations.
            f"userdb={workdir}/turndb",
            "",
        ]))
    proc = subprocess.Popen(
        [TURNSERVER, "-c", conf, "--no-stdout-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as probe:
                probe.settimeout(1)
                if probe.connect_ex((address, port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                detail = proc.stderr.read() if proc.stderr else b""
                raise RuntimeError(f"coturn did not start: {detail!r}")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def pair_is(protocol: str, *, relay: bool = False) -> Callable[[Any], bool]:
    def ok(pair: Any) -> bool:
        if not pair or pair.get("state") != "succeeded":
            return False
        if relay:
            return bool(pair["local"] and pair["local"]["candidateType"] == "relay")
        return bool(pair["remote"] and pair["remote"]["protocol"] == protocol)

    return ok


def browser_part(scenario: str, base: str, out: dict[str, Any], server: Running,
                 turn_port: int | None) -> None:
    """The Playwright side (a worker thread): publish, subscribe, decode, chat, pairs."""
    from playwright.sync_api import sync_playwright

    harness = HARNESS_JS.read_text()
    room = f"tcp-{scenario}"
    with sync_playwright() as pw:
        extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))  # e.g. ICE logging
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS + extra, headless=True, timeout=30_000
        )
        try:
            page = Page(browser, "page")
            page.page.goto(f"{base}/?room={room}")
            page.page.add_script_tag(content=harness, type="module")
            page.page.wait_for_function("() => window.harness !== undefined")
            options: dict[str, Any] = {"room": room}
            if scenario == "turn":
                # What the module will fetch itself (fetchIceServers), kept for the report.
                out["iceServers"] = page.js("async () => (await fetch('/ice-servers')).json()")
                options |= {"fetchIceServers": True,
                            "rtcConfiguration": {"iceTransportPolicy": "relay"}}
            pub_id = page.js("o => harness.publish('alice', o)", options | {"user": "alice"})
            if scenario == "recover":
                options |= {"reconnectOnLoss": True, "reconnectBaseDelayMs": 200}
            sub_id = page.js("o => harness.subscribe('bob', o)", options | {"user": "bob"})
            out["ids"] = [pub_id, sub_id]

            def status() -> dict[str, Any]:
                result: dict[str, Any] = page.js("n => harness.status(n)", "bob")
                return result

            def frames(st: dict[str, Any]) -> int:
                return int(st["tiles"].get(pub_id, {}).get("framesDecoded", 0))

            st = wait_until(f"bob decoding {FRAMES} frames", status,
                            lambda s: frames(s) >= FRAMES, 60, page)
            out["framesDecoded"] = frames(st)
            if scenario == "tcp":
                time.sleep(2 * CONSENT_TIMEOUT + 1)
                later = status()
                out["framesAfterConsent"] = frames(later) - frames(st)
                out["stateAfterConsent"] = later["state"]
            if scenario == "switch":
                before = {n: page.js("n => harness.selectedPair(n)", n) for n in ("alice", "bob")}
                out["pairsBefore"] = before
                # Chromium opened a TCP connection per peer connection and sends nothing on it
                # while UDP works: the call must outlive the bind timeout (shortened to
                # SWITCH_BIND_TIMEOUT) with those backups parked, as a real call would.
                tcp = server.rtc.tcp
                assert tcp is not None
                wait_until("both TCP backups parked", lambda: tcp.stats.parked,
                           lambda n: n >= 4, 30, page)
                out["parkedBeforeDrop"] = [tcp.parked, tcp.stats.parked, tcp.stats.bind_timeouts]
                st = status()
                start = frames(st)
                drop_all_udp()
                blocked_at = time.monotonic()
                logging.getLogger("scenario").info("UDP dropped")
                out["blockedAt"] = start
                # Media must resume within 5 s (the first frames decoded after the block; what
                # was in flight may add a few, hence +5), then keep flowing: +60 frames.
                st = wait_until("bob decoding again after UDP was dropped", status,
                                lambda s: frames(s) >= start + 5, 30, page)
                out["firstFramesSeconds"] = round(time.monotonic() - blocked_at, 2)
                st = wait_until("bob decoding 60 frames over TCP", status,
                                lambda s: frames(s) >= start + FRAMES, 30, page)
                out["framesAfterSwitch"] = frames(st) - start
                out["resumeSeconds"] = round(time.monotonic() - blocked_at, 2)
                out["idsAfter"] = [page.js("() => harness.ids()")]
            if scenario == "recover":
                # bob's connection is lost (its channel closes, as on a dead network): the
                # module DELETEs it and reconnects under a new id after its back-off, and bob
                # decodes alice again; the server forgets the old id.
                lost = page.js("n => harness.breakLeg(n)", "bob")
                lost_at = time.monotonic()
                st = wait_until("bob reconnected", status,
                                lambda s: any(e[0] == "reconnect" for e in s["events"]), 30, page)
                out["reconnect"] = next(e for e in st["events"] if e[0] == "reconnect")
                out["reconnectSeconds"] = round(time.monotonic() - lost_at, 2)
                st = wait_until("bob decoding alice on the new connection", status,
                                lambda s: frames(s) >= 30, 30, page)
                out["framesAfterReconnect"] = frames(st)
                out["lostId"] = lost
                out["closeEvents"] = [e for e in st["events"] if e[0] == "close"]
                out["serverMembers"] = server.sfu.members  # type: ignore[attr-defined]
            # Chat over the data channel (the subscriber's own CHAT comes back to it).
            page.js("([n, t]) => harness.chat(n, t)", ["bob", f"hello over {scenario}"])
            st = wait_until("bob's chat line delivered", status,
                            lambda s: any(t == f"hello over {scenario}" for _, t in s["chat"]),
                            20, page)
            out["chat"] = st["chat"]
            want = pair_is("udp" if scenario == "recover" else "tcp", relay=scenario == "turn")
            if scenario == "lb":
                out["answerCandidates"] = page.js(
                    "n => harness.remoteCandidates(n)", "alice")
            out["pairs"] = {
                n: wait_until(f"{n}'s selected pair", functools.partial(
                    page.js, "n => harness.selectedPair(n)", n), want, 20, page)
                for n in ("alice", "bob")
            }
            if scenario == "switch":
                # The reverse: UDP comes back; Chromium moves back to its better (UDP) pair
                # when its checks on it succeed again, and media keeps flowing on the same ids.
                iptables("-D", "INPUT", "-p", "udp", "-j", "DROP")
                unblocked_at = time.monotonic()
                out["pairsBack"] = {
                    n: wait_until(f"{n} back on a UDP pair", functools.partial(
                        page.js, "n => harness.selectedPair(n)", n), pair_is("udp"), 90, page)
                    for n in ("alice", "bob")
                }
                out["backSeconds"] = round(time.monotonic() - unblocked_at, 1)
                start = frames(status())
                st = wait_until("bob decoding on UDP again", status,
                                lambda s: frames(s) >= start + 30, 30, page)
                out["framesBack"] = frames(st) - start
                out["idsBack"] = [page.js("() => harness.ids()")]
            out["errors"] = page.js("() => harness.errors")
            out["problems"] = page.problems
            page.js("() => harness.stopAll()")
        finally:
            browser.close()


class PassThroughBalancer:
    """A pass-through TCP load balancer in miniature (a 443-style front for ICE-TCP): accepts
    on its own address and port and copies bytes both ways to one pod's TCP port, without
    looking at them. The pod advertises the balancer's address and port (``--public-ip``,
    ``--tcp-public-port``), never its own."""

    def __init__(self, host: str) -> None:
        self.listener = trio.socket.socket()
        self.host = host
        self.target: tuple[str, int] | None = None
        self.connections = 0

    async def bind(self) -> int:
        await self.listener.bind((self.host, 0))
        self.listener.listen(64)
        port: int = self.listener.getsockname()[1]
        return port

    async def serve(self) -> None:
        listeners = [trio.SocketListener(self.listener)]
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        assert self.target is not None
        self.connections += 1
        async with downstream, await trio.open_tcp_stream(*self.target) as upstream:

            async def copy(a: trio.SocketStream, b: trio.SocketStream) -> None:
                try:
                    while data := await a.receive_some(65536):
                        await b.send_all(data)
                except trio.BrokenResourceError:
                    pass
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(copy, downstream, upstream)
                nursery.start_soon(copy, upstream, downstream)


async def unbound_flood(host: str, port: int, out: dict[str, Any]) -> None:
    """200 TCP connections that never send anything, and 20 that send garbage, held open
    while the browsers connect: each must be closed by the server (bounded: its bind
    timeout), and the browsers must not notice."""
    opened = trio.current_time()
    closed_after: list[float] = []

    async def hold(garbage: bytes) -> None:
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            if garbage:
                await stream.send_all(garbage)
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
            closed_after.append(trio.current_time() - opened)

    async with trio.open_nursery() as nursery:
        for i in range(220):
            nursery.start_soon(hold, os.urandom(100 + i) if i >= 200 else b"")
    out["floodClosedAfter"] = [round(min(closed_after), 1), round(max(closed_after), 1),
                               len(closed_after)]


async def scenario(name: str) -> dict[str, Any]:
    addresses = inside()
    assert addresses is not None, "run through tests.netns"
    server_host, other_host = addresses
    out: dict[str, Any] = {"type": "result", "scenario": name}
    extra: dict[str, Any] = {}
    advertised = server_host
    balancer: PassThroughBalancer | None = None
    with contextlib_exit() as stack:
        turn_port = None
        if name == "turn":
            turn_port = stack.enter_context(coturn("127.0.0.1", server_host))
            extra = {
                "turn_secret": TURN_SECRET,
                "turn_urls": (f"turn:127.0.0.1:{turn_port}?transport=tcp",),
            }
        if name in ("tcp", "lb"):
            drop_all_udp()
        if name == "tcp":
            # ICE consent (RFC 7675) must be renewed over TCP too: with a 5 s consent timeout
            # the call below outlives it twice.
            extra["consent_timeout"] = CONSENT_TIMEOUT
        if name == "lb":
            # The pod's own TCP port is reachable only through the balancer's address and
            # port, which are what the pod advertises.
            balancer = PassThroughBalancer(other_host)
            extra = {"tcp_public_port": await balancer.bind()}
            advertised = other_host
        async with running_server(advertised, **extra) as running, \
                trio.open_nursery() as side:
            if balancer is not None:
                assert running.tcp_port is not None
                balancer.target = (server_host, running.tcp_port)
                side.start_soon(balancer.serve)
                out["balancer"] = [other_host, extra["tcp_public_port"]]
            base = f"http://127.0.0.1:{running.http_port}"
            if name == "switch" and running.rtc.tcp is not None:
                running.rtc.tcp.bind_timeout = SWITCH_BIND_TIMEOUT
            out["udpPort"], out["tcpPort"] = running.udp_port, running.tcp_port
            fds_before = len(os.listdir("/proc/self/fd"))
            flood = trio.Event()
            if name == "tcp":
                assert running.tcp_port is not None

                async def flooding() -> None:
                    await unbound_flood(server_host, running.tcp_port or 0, out)
                    flood.set()

                side.start_soon(flooding)
            else:
                flood.set()
            with trio.fail_after(SCENARIO_TIMEOUT):
                await trio.to_thread.run_sync(
                    browser_part, name, base, out, running, turn_port, abandon_on_cancel=True
                )
            with trio.fail_after(30):
                await flood.wait()
            tcp = running.rtc.tcp
            if tcp is not None:
                with trio.move_on_after(10):  # the browsers' connections end with their peers
                    while tcp.connections:
                        await trio.sleep(0.1)
            out["tcpStats"] = None if tcp is None else {
                "accepted": tcp.stats.accepted, "bound": tcp.stats.bound,
                "framesIn": tcp.stats.frames_in, "sendDropped": tcp.stats.send_dropped,
                "closedUnbound": tcp.stats.closed_unbound, "connections": tcp.connections,
                "routes": tcp.routes(), "pending": tcp.pending,
            }
            out["fdsLeaked"] = len(os.listdir("/proc/self/fd")) - fds_before
            out["udpIn"] = running.rtc.endpoint.stats.datagrams_in
            out["balancerConnections"] = balancer.connections if balancer else None
            side.cancel_scope.cancel()
    return out


@contextmanager
def contextlib_exit() -> Iterator[Any]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield stack


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="ICE-TCP/TURN browser scenarios (netns)")
    parser.add_argument("scenario", choices=("tcp", "switch", "turn", "lb", "recover"))
    args = parser.parse_args(argv)
    logging.getLogger("trio_sfu.rtc.tcp").setLevel(logging.DEBUG)
    return run_scenario(scenario, args.scenario)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
