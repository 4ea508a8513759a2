"""Firefox ESR against a server bound to ``0.0.0.0`` on a host with several addresses (issue 8,
item 4): the answers to its checks, and the media, must come from the address it sent to.

Inside a fresh network namespace (``tests/netns.py``: 198.18.0.1 on ``v0``, 198.18.0.2 on
``v1``) the server binds the wildcard address and advertises 198.18.0.1. Firefox runs in a
namespace of its own behind a second veth pair (198.19.0.2 ⇄ 198.19.0.1, the server's side),
as a browser on another machine would: its checks go to 198.18.0.1, and the kernel, left to
itself, answers from 198.19.0.1 — the address of the route back — which Firefox drops
(``Peer address mismatch``). Firefox publishes and subscribes to itself through the server
(``tests/site/firefox_check.html``), and the test requires 60 decoded frames of its own video.

This module is also the scenario runner the namespace executes
(``python -m tests.test_firefox_two_addresses run``); it prints one JSON line.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.browser_netns import TURN_SECRET, TURNSERVER, coturn
from tests.netns import ADDRESS_A, REPO, inside, netns_argv, require_netns
from tests.peers.firefox import FIREFOX_PREFS, find_firefox, require_firefox
from tests.test_site import Collector, site_with_page

FRAMES = 60
SCENARIO_TIMEOUT = 150
HOST_SIDE = "198.19.0.1"  # the server's namespace, facing Firefox's
FIREFOX_SIDE = "198.19.0.2"


def run_scenario(*mode: str) -> dict[str, Any]:
    argv = netns_argv([sys.executable, "-m", "tests.test_firefox_two_addresses", "run", *mode])
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT + 30
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result (exit {done.returncode})\n{done.stderr[-4000:]}"
    result = json.loads(lines[-1])
    assert "error" not in result, (
        f"{result['error']}; page problems {result.get('problems')}; server UDP "
        f"{result.get('udp')}\n{result.get('log', '')}\n{done.stderr[-3000:]}"
    )
    return result


@pytest.mark.browser
def test_firefox_connects_to_a_wildcard_server_on_a_two_address_host() -> None:
    require_netns()
    require_firefox()
    result = run_scenario()
    assert result["decoded"] >= FRAMES, result
    # The pair Firefox chose: its only address to the advertised one.
    assert result["pair"].startswith(f"udp host {FIREFOX_SIDE}:"), result
    assert result["pair"].endswith(f"{ADDRESS_A}:{result['udp_port']}"), result


@pytest.mark.browser
def test_firefox_over_ice_tcp_when_udp_is_dropped() -> None:
    """Issue 12 with a second engine: the server's host drops every UDP datagram, so Firefox
    (its own namespace, its own stack) reaches the server only over ICE-TCP (RFC 6544: its
    active candidate to our passive one). It publishes and subscribes to itself through the
    server, decodes 60 frames of its own video, and its selected pair is TCP."""
    require_netns()
    require_firefox()
    result = run_scenario("tcp")
    assert result["decoded"] >= FRAMES, result
    assert result["pair"].startswith(f"tcp host {FIREFOX_SIDE}:"), result
    assert result["tcp"]["bound"] >= 2 and result["udpIn"] == 0, result
    print(f"Firefox over ICE-TCP: {result['decoded']} frames decoded, pair {result['pair']}, "
          f"{result['tcp']['framesIn']} frames in over TCP")


@pytest.mark.browser
def test_firefox_through_turn_only() -> None:
    """Issue 12's TURN proof with a second engine: Debian's coturn beside the server, its
    credentials from GET /ice-servers (TURN REST, --turn-secret), and Firefox's publisher and
    subscriber with iceTransportPolicy "relay": both selected pairs are relayed, and the
    subscriber decodes 60 frames of the publisher's video."""
    require_netns()
    require_firefox()
    if not os.path.exists(TURNSERVER):
        pytest.skip(f"coturn is not installed ({TURNSERVER}; Debian package coturn)")
    result = run_scenario("turn")
    assert result["decoded"] >= FRAMES, result
    for name in ("fox", "foxsub"):
        pair = result["pairs"][name]
        assert pair["state"] == "succeeded" and pair["local"]["candidateType"] == "relay", result
    print(f"Firefox through TURN: {result['decoded']} frames decoded, relayed pairs "
          f"{[result['pairs'][n]['local']['relayProtocol'] for n in ('fox', 'foxsub')]}")


async def scenario(mode: str = "udp") -> dict[str, Any]:
    from trio_sfu.app import serve
    from trio_sfu.config import Config

    addresses = inside()
    assert addresses is not None, "run through tests.netns"
    firefox = find_firefox()
    assert firefox is not None
    # Firefox's own namespace behind a second veth pair: the server's host then has three
    # addresses (198.18.0.1 advertised, 198.18.0.2, and HOST_SIDE facing Firefox), and the
    # route back to Firefox leaves from HOST_SIDE, not from the address Firefox sent to.
    for argv in (
        ("ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1"),
        ("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", "w0"),
        ("ip", "link", "set", "w0", "up"),
    ):
        subprocess.run(argv, check=True)
    if mode == "tcp":  # the server's host drops every UDP datagram: only ICE-TCP gets in
        subprocess.run(["iptables", "-I", "INPUT", "-p", "udp", "-j", "DROP"], check=True)
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        site = site_with_page(tmp, "firefox_check.html")
        profile = tmp / "profile"
        profile.mkdir()
        (profile / "user.js").write_text(
            FIREFOX_PREFS
            # Served from HOST_SIDE, not localhost: allow getUserMedia there; and never let
            # Firefox go "offline" for want of a link it likes.
            + 'user_pref("media.devices.insecure.enabled", true);\n'
            + 'user_pref("media.getusermedia.insecure.enabled", true);\n'
            + 'user_pref("network.manage-offline-status", false);\n'
        )
        log = tmp / "firefox.log"
        collector = Collector(log)
        reachable = http.server.ThreadingHTTPServer(
            (HOST_SIDE, 0), collector.server.RequestHandlerClass
        )
        reachable.daemon_threads = True
        threading.Thread(target=reachable.serve_forever, daemon=True).start()
        collector.url = f"http://{HOST_SIDE}:{reachable.server_address[1]}/"
        extra: dict[str, Any] = {}
        if mode == "turn":
            turn_port = stack.enter_context(coturn(HOST_SIDE, ADDRESS_A))
            extra = {"turn_secret": TURN_SECRET,
                     "turn_urls": (f"turn:{HOST_SIDE}:{turn_port}?transport=udp",)}
        config = Config(
            http_host=HOST_SIDE, http_port=0, udp_host="0.0.0.0", udp_port=0,
            public_ips=(ADDRESS_A,), site_dir=site, **extra,
        )
        async with trio.open_nursery() as nursery:
            running = await nursery.start(functools.partial(serve, config, handle_signals=False))
            url = (f"http://{HOST_SIDE}:{running.http_port}/firefox_check.html"
                   f"?room=two-addr&collect={collector.url}&relay={int(mode == 'turn')}")
            env = {**os.environ, "HOME": str(tmp), "MOZ_CRASHREPORTER_DISABLE": "1"}
            setup = (
                "while ! ip link show w1 >/dev/null 2>&1; do sleep 0.05; done; "
                f"ip link set lo up && ip addr add {FIREFOX_SIDE}/24 dev w1 && "
                f"ip link set w1 up && ip route add default via {HOST_SIDE} && exec \"$@\""
            )
            with log.open("wb") as out:
                fox = subprocess.Popen(
                    ["unshare", "--net", "--", "sh", "-c", setup, "sh",
                     firefox, "--headless", "--no-remote", "--profile", str(profile), url],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,
                )
            try:
                # Move w1 only once unshare has made Firefox's namespace: before that the pid
                # is still in ours, "ip link set w1 netns <pid>" succeeds as a no-op, and
                # Firefox's shell then waits for w1 forever (the old 1-in-10 failure: Firefox
                # never loaded the page, on a busy machine).
                ours = os.readlink("/proc/self/ns/net")
                moved = None
                with trio.fail_after(30):
                    while True:
                        try:
                            theirs = os.readlink(f"/proc/{fox.pid}/ns/net")
                        except OSError:
                            theirs = ours
                        if theirs != ours:
                            moved = subprocess.run(
                                ["ip", "link", "set", "w1", "netns", str(fox.pid)],
                                capture_output=True,
                            )
                            if moved.returncode == 0:
                                break
                        await trio.sleep(0.05)
                result = await watch(collector, running.udp_port, mode)
                result["udp"] = repr(running.rtc.endpoint.stats)
                result["udpIn"] = running.rtc.endpoint.stats.datagrams_in
                tcp = running.rtc.tcp
                result["tcp"] = None if tcp is None else {
                    "bound": tcp.stats.bound, "framesIn": tcp.stats.frames_in}
                result["movedToFirefox"] = moved is not None and moved.returncode == 0
            finally:
                os.killpg(fox.pid, signal.SIGKILL)
                fox.wait(timeout=10)
                reachable.shutdown()
                nursery.cancel_scope.cancel()
        if result.get("decoded", 0) < FRAMES:
            result["log"] = collector.log()
        return result


async def watch(collector: Collector, udp_port: int, mode: str) -> dict[str, Any]:
    """Until Firefox's subscriber decoded FRAMES of its own publisher (bounded)."""
    best = 0
    with trio.move_on_after(SCENARIO_TIMEOUT - 30):
        while True:
            await trio.sleep(0.5)
            ids, status = collector.last("ids"), collector.last("status")
            if ids is None or status is None:
                continue
            tile = status["sub"]["tiles"].get(ids["pubId"])
            if tile is None:
                continue
            best = max(best, tile["framesDecoded"])
            if mode == "turn":  # the harness's own connections, relayed
                pairs = status.get("pairs") or {}
                if best >= FRAMES and all(
                    (pairs.get(n) or {}).get("local", {}).get("candidateType") == "relay"
                    for n in ("fox", "foxsub")
                ):
                    return {"decoded": best, "pairs": pairs, "udp_port": udp_port,
                            "problems": collector.problems()}
                continue
            # The demo (in the page's iframe) shows the candidate pair once its stats have it.
            demo = status["demo"]["tiles"]
            pair = next((t["shown"]["pair"] for t in demo
                         if t["shown"].get("pair", "").startswith(f"{mode} ")), "")
            if best >= FRAMES and pair:
                return {"decoded": best, "pair": pair, "udp_port": udp_port,
                        "problems": collector.problems()}
    return {"decoded": best, "udp_port": udp_port, "pair": "",
            "error": f"Firefox decoded {best} frames of its own video (want {FRAMES})",
            "problems": collector.problems()}


if __name__ == "__main__" and sys.argv[1:2] == ["run"]:
    from trio_sfu.logs import setup_logging

    setup_logging("info", stream=sys.stderr)
    try:
        out = trio.run(scenario, *sys.argv[2:])
    except BaseException as error:  # report, then fail: the parent reads one line either way
        import traceback

        traceback.print_exc()
        out = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(out), flush=True)
    sys.exit(0 if "error" not in out else 1)
