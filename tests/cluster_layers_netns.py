"""Scenario for tests/test_cluster_layers_netns.py: simulcast across pods on a capped link
(issue 11's cluster proof).

Run inside a private network namespace (``python -m tests.netns -- python -m
tests.cluster_layers_netns``): Redis, NATS and two pods (processes) of their own; a Chromium
q/h/f publisher (alice) and an uncapped Chromium subscriber (bob) on pod a, a Chromium
subscriber (carol) on pod b. Once both decode the top stream, everything pod b's UDP port sends
goes through a 400 kbit/s kernel ``tc htb`` class: carol's estimator on pod b sees it, pod b's
planner moves her to the low stream (pod b subscribes to the relayed q and lets f go), and
bob on pod a keeps the top stream; when the cap is lifted, carol climbs back. Prints one JSON
result line.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from tests.browser_helpers import open_page
from tests.browser_netns import free_port
from tests.bwe_netns import cap, uncap
from tests.cluster_helpers import run_pods
from tests.netns import inside, run_scenario
from tests.peers.browser_client import open_browser
from tests.services import nats_server, redis_server

CAP_KBIT = 400
OBSERVE = 10.0
RESULT: dict[str, Any] = {"type": "result"}


async def scenario() -> dict[str, Any]:
    assert inside() is not None, "run through tests.netns"
    out = RESULT
    port_b = free_port()
    with redis_server() as redis, nats_server() as nats:
        async with (
            run_pods(["a"], redis_url=redis.url, nats_url=nats.url) as a,
            run_pods(
                ["b"],
                redis_url=redis.url,
                nats_url=nats.url,
                extra_env={"TRIO_SFU_UDP_PORT": str(port_b)},
            ) as b,
            open_browser() as browser,
        ):
            alice = await open_page(browser, a["a"].url, "alice")
            bob = await open_page(browser, a["a"].url, "bob")
            carol = await open_page(browser, b["b"].url, "carol")
            for page in (bob, carol):
                await browser.eval(page, f"window.T.subscribe('r', {page!r})")
            pid = await browser.eval(
                alice,
                "window.T.publish('r', 'alice', {width: 1280, height: 720, simulcast: true})",
            )
            inbound = f"window.T.inbound({pid!r})"
            for page in (bob, carol):
                await browser.wait_for(
                    page, inbound, lambda r: r["width"] >= 960 and r["decoded"] >= 30,
                    timeout=90,
                )

            async def watch(seconds: float) -> dict[str, Any]:
                first = {p: await browser.eval(p, inbound) for p in (bob, carol)}
                await trio.sleep(seconds)
                last = {p: await browser.eval(p, inbound) for p in (bob, carol)}
                return {
                    p: {
                        "width": last[p]["width"],
                        "fps": round((last[p]["decoded"] - first[p]["decoded"]) / seconds, 1),
                        "freezes": last[p]["freezes"] - first[p]["freezes"],
                    }
                    for p in (bob, carol)
                }

            out["before"] = await watch(OBSERVE / 2)
            cap(port_b, CAP_KBIT, queue_ms=300)
            capped_at = trio.current_time()
            await browser.wait_for(carol, inbound, lambda r: 0 < r["width"] <= 400, timeout=60)
            out["settleSeconds"] = round(trio.current_time() - capped_at, 2)
            await trio.sleep(2)  # what was queued before the switch drains
            out["capped"] = await watch(OBSERVE)
            uncap()
            lifted_at = trio.current_time()
            await browser.wait_for(carol, inbound, lambda r: r["width"] >= 960, timeout=90)
            out["recoverSeconds"] = round(trio.current_time() - lifted_at, 2)
            out["after"] = await watch(OBSERVE / 2)
    return out


def main() -> int:
    return run_scenario(scenario, partial=RESULT)


if __name__ == "__main__":
    sys.exit(main())
