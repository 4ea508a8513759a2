"""GStreamer's webrtcbin in the interop matrix: the driver's scenarios inside a network namespace.

libnice ignores loopback, so each scenario runs as this module inside a fresh namespace with a
veth pair (``tests/netns.py``): the server in-process on one end (``ADDRESS_A``), webrtcbin
(``tests/peers/gst_sub.py`` and ``gst_whip.py`` under Debian's python3) on the other
(``ADDRESS_B``), and the driver's other sides (aiortc WHIP publishers, Chromium) beside them.
The module prints one JSON result line; ``test_gstreamer.py`` runs it::

    python -m tests.netns -- python -m tests.interop.gst_scenarios subscriber|publisher|whep
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

from tests.interop.driver import (
    SCENARIOS,
    PeerSpec,
    publisher_scenario,
    subscriber_scenario,
    whep_scenario,
)
from tests.netns import inside, open_netns
from tests.peers.harness import PEERS_DIR
from tests.test_third_party_clients import DEBIAN_PYTHON, gst_unavailable, running_server


def gst_sub_argv(args: list[str]) -> list[str]:
    """webrtcbin as seed-API subscriber or WHEP viewer: it speaks the protocol itself."""
    return [DEBIAN_PYTHON, os.path.join(PEERS_DIR, "gst_sub.py"), *args]


def gst_whip_argv(args: list[str]) -> list[str]:
    """webrtcbin as seed-API publisher: ``gst_whip.py`` POSTs an offer to the URL it is given
    (``/pub/{room}/{id}`` is WHIP-shaped) and prints ``connected``; the protocol's arguments
    become its own."""
    given = dict(zip(args[::2], args[1::2], strict=False))
    url = f"{given['--base-url']}/pub/{given['--room']}/{given['--id']}"
    return [DEBIAN_PYTHON, os.path.join(PEERS_DIR, "gst_whip.py"), "--url", url,
            "--timeout", given.get("--timeout", "300")]


GST_SUB = PeerSpec("gstreamer", ("subscriber", "whep"), gst_sub_argv, gst_unavailable)
GST_PUB = PeerSpec("gstreamer", ("publisher",), gst_whip_argv, gst_unavailable)


async def scenario(name: str) -> dict[str, Any]:
    addresses = inside()
    assert addresses is not None, "run through tests.netns"
    server_host, peer_host = addresses
    publishers = ("--ice-address", peer_host)  # the aiortc WHIP publishers' side
    async with running_server(server_host) as running:
        base = f"http://{server_host}:{running.http_port}"
        if name == "subscriber":
            return {"type": "result", "summary": await subscriber_scenario(
                GST_SUB, base, publisher_args=publishers)}
        if name == "whep":
            return {"type": "result", "summary": await whep_scenario(
                GST_SUB, base, publisher_args=publishers)}
        from tests.peers.browser_client import open_browser

        async with open_browser() as browser:  # Chromium in the namespace too
            return {"type": "result",
                    "summary": await publisher_scenario(GST_PUB, base, browser)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="GStreamer interop scenario runner")
    parser.add_argument("scenario", choices=SCENARIOS)
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


async def run_scenario(name: str, timeout: float = 400) -> dict[str, Any]:
    """Run a scenario in a fresh namespace; its result line (AssertionError if it failed)."""
    argv = [sys.executable, "-m", "tests.interop.gst_scenarios", name]
    async with open_netns(argv, name=f"gstreamer-{name}") as runner:
        with trio.fail_after(timeout):
            result = await runner.receive("result")
        tail = runner.stderr_tail()
    assert "error" not in result, f"{result['error']}\n--- scenario stderr ---\n{tail}"
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
