"""GStreamer's webrtcbin in the interop matrix: the scenarios, run inside a network namespace.

libnice ignores loopback, so each scenario runs as this module inside a fresh namespace with a
veth pair (``tests/netns.py``): the server in-process on one end (``ADDRESS_A``), the peers
(webrtcbin under Debian's python3, aiortc/werift publishers, Chromium) on the other
(``ADDRESS_B``). The module prints one JSON result line; ``test_gstreamer.py`` runs it::

    python -m tests.netns -- python -m tests.interop.gst_scenarios sub|whep|whep-live|pub
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Any

import trio

from tests.interop.line_peers import (
    FRAMES,
    LinePeer,
    open_line_peer,
    subscriber_scenario,
    whep_scenario,
)
from tests.netns import inside, open_lines, open_netns
from tests.peers.harness import PEERS_DIR
from tests.test_third_party_clients import DEBIAN_PYTHON, gst_argv, running_server


def gst_sub_argv(role: str, url: str, *extra: str) -> list[str]:
    return [DEBIAN_PYTHON, os.path.join(PEERS_DIR, "gst_sub.py"), "--role", role, "--url", url,
            *extra]


def progress_decoded(peer: LinePeer) -> int:
    """Frames webrtcbin's vp8dec has output, from its latest progress or result line."""
    for line in reversed(peer.lines):
        if line.get("type") in ("progress", "result") and "decoded" in line:
            return int(line["decoded"])
    return 0


async def scenario(name: str) -> dict[str, Any]:
    addresses = inside()
    assert addresses is not None, "run through tests.netns"
    server_host, peer_host = addresses
    async with running_server(server_host) as running:
        base = f"http://{server_host}:{running.http_port}"
        if name == "sub":
            argv = gst_sub_argv("sub", f"{base}/sub/gsub/gst-sub1", "--timeout", "240")
            async with open_line_peer(argv, "gst_sub") as peer:
                log = await subscriber_scenario(
                    peer, None, base, "gsub", peer_host, decoded=lambda: progress_decoded(peer)
                )
                result = await peer.stop()
            return {"type": "result", "scenario": log, "peer": result}
        if name in ("whep", "whep-live"):

            def start(url: str) -> Any:
                return open_line_peer(
                    gst_sub_argv("whep", url, "--wait-post", "--timeout", "120"), "gst_whep"
                )

            log = await whep_scenario(start, base, "gwhep", progress_decoded, host=peer_host,
                                      live_first=name == "whep-live")
            return {"type": "result", "scenario": log}
        if name == "pub":
            return await publisher_to_chromium(base)
    raise ValueError(name)


async def publisher_to_chromium(base: str) -> dict[str, Any]:
    """webrtcbin publishes on the seed API; Chromium (inside the namespace too) decodes it."""
    from tests.browser_helpers import decoding, open_page
    from tests.peers.browser_client import open_browser

    async with open_browser() as browser:
        await open_page(browser, base, "viewer")
        await browser.eval("viewer", "window.T.subscribe('gpub', 'viewer')")
        argv = gst_argv(f"{base}/pub/gpub/gst-pub1", "--timeout", "90")
        async with open_lines(argv, name="gst_whip") as gst:
            await gst.receive("published", 30)
            await gst.receive("connected", 30)
            received = await decoding(browser, "viewer", "gst-pub1", FRAMES)
            await gst.send({"type": "stop"})
            result = await gst.receive("result", 30)
    return {"type": "result", "chromium": received, "gst": result}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="GStreamer interop scenario runner")
    parser.add_argument("scenario", choices=("sub", "whep", "whep-live", "pub"))
    args = parser.parse_args(argv)
    protocol = sys.stdout
    sys.stdout = sys.stderr  # the server prints its URL; only the result goes to stdout
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        result = trio.run(scenario, args.scenario)
    except BaseException as error:  # report, then fail: the parent reads one line either way
        traceback.print_exc()
        leaf: BaseException = error
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        notes = "".join(f"\n{note}" for note in getattr(leaf, "__notes__", ()))
        result = {"type": "result", "error": f"{type(leaf).__name__}: {leaf}{notes}"}
    protocol.write(json.dumps(result) + "\n")
    protocol.flush()
    return 0 if "error" not in result else 1


async def run_scenario(name: str, timeout: float = 300) -> dict[str, Any]:
    """Run a scenario in a fresh namespace; its result line (AssertionError if it failed)."""
    argv = [sys.executable, "-m", "tests.interop.gst_scenarios", name]
    async with open_netns(argv, name=f"gst-{name}") as runner:
        with trio.fail_after(timeout):
            result = await runner.receive("result")
        tail = runner.stderr_tail()
    assert "error" not in result, f"{result['error']}\n--- scenario stderr ---\n{tail}"
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
