"""Scenario for tests/test_simulcast_netns.py: a Chromium simulcast publisher and two Chromium
subscribers, one of them behind a real 400 kbit/s link (issue 11's capped-link proof).

Run inside a private network namespace (``python -m tests.netns -- python -m
tests.simulcast_netns``): the server in-process, headless Chromium pages driven through the
site's module (``tests/browser_helpers.py``'s ``window.T``). Everything the SFU's UDP port
sends to carol's port goes through a kernel ``tc htb`` class (``tests/bwe_netns.py``; netem is
not available here). carol's estimator (``Downstream.bwe``) sees the queue and the drops in her
transport-cc feedback, the layer planner moves her to the low stream, and when the cap is
lifted probes bring her back to the top; last, 5 % of her packets are dropped at random
(iptables ``statistic``) and NACK/RTX must keep her decoding like bob. bob is never capped.
Prints one JSON result line: widths, frames, freezes and timings per phase.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any

import trio

from tests.browser_helpers import HELPERS
from tests.browser_netns import iptables, running_server
from tests.bwe_netns import cap, uncap
from tests.netns import inside, run_scenario
from tests.peers.chromium_peer import CHROMIUM, CHROMIUM_ARGS, EXTRA_ARGS_ENV
from tests.test_site import Page, wait_until
from trio_sfu.app import Running

CAP_KBIT = 400
SCENARIO_TIMEOUT = 240.0
OBSERVE = 10.0  # seconds watched on each side of the cap once settled
LOSS = 0.05  # random loss on carol's link in the last phase
#: ``python -m tests.simulcast_netns svc vp9|av1``: the publisher sends VP9 or AV1 SVC
#: (L3T3_KEY, one stream with three spatial layers) instead of simulcast, and the loss phase
#: is skipped
SVC = sys.argv[1:2] == ["svc"]
SVC_CODEC = {"vp9": "video/VP9", "av1": "video/AV1"}[sys.argv[2]] if SVC else ""
#: ``python -m tests.simulcast_netns thin``: alice's uplink starts thin (THIN_KBIT) for
#: THIN_SECONDS, so her Chromium sends only its low stream(s) at first; then the cap is
#: lifted and bob must reach the top stream (``thin_part``)
THIN = sys.argv[1:2] == ["thin"]
THIN_KBIT = 200
#: longer than STREAM_TIMEOUT + PAUSE_AFTER (2 + 5 s): the streams not sent yet are taken
#: for missing and stay unneeded long enough for dynacast to act on them
THIN_SECONDS = 12.0
#: Once lifted, libwebrtc's estimate grows from about the cap by ~8 %/s (no probing), so it
#: reaches the top stream's ~1.5 Mbit/s in 25-30 s (27.6 s measured): bob has 90 s.


PLANS: list[tuple[float, int, int, str]] = []
#: filled as the scenario goes, so a failure still reports what was measured before it
RESULT: dict[str, Any] = {"type": "result"}


def _record_plans() -> None:
    """Keep every layer plan (time, estimate, decreases, layers) for the result line."""
    from trio_sfu.sfu.allocator import LayerPlanner

    plan = LayerPlanner.plan

    def recording(
        self: LayerPlanner, estimate: float, decreases: int, *args: Any, **kwargs: Any
    ) -> dict[str, int]:
        out = plan(self, estimate, decreases, *args, **kwargs)
        PLANS.append(
            (
                round(trio.current_time(), 2),
                int(estimate),
                decreases,
                f"{out} probe {self.probe_target and int(self.probe_target)}",
            )
        )
        return out

    LayerPlanner.plan = recording  # type: ignore[method-assign]


def capped_drops() -> int:
    """Packets the capped class's queue dropped so far (``tc -s``)."""
    shown = subprocess.run(
        ["tc", "-s", "class", "show", "dev", "lo", "classid", "1:20"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"dropped (\d+)", shown)
    return int(found.group(1)) if found else 0


def cap_uplinks(port: int, kbit: int) -> None:
    """Packets *to* the SFU's UDP port (the publisher's media, the subscribers' feedback)
    go through a ``kbit`` class with a 300 ms queue: every uplink is thin."""
    sh = functools.partial(subprocess.run, check=True, capture_output=True)
    sh(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10"])
    sh(["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
        "rate", "10gbit"])
    sh(["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
        "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit"])
    sh(["tc", "qdisc", "add", "dev", "lo", "parent", "1:20", "bfifo",
        "limit", str(max(kbit * 300 // 8, 3000))])
    sh(["tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "u32",
        "match", "ip", "dport", str(port), "0xffff", "flowid", "1:20"])


def thin_part(base: str, out: dict[str, Any], server: Running) -> None:
    """alice publishes q/h/f over a thin uplink: her Chromium (its estimate held at the cap)
    sends the low stream(s) only, so the server takes h/f for streams she leaves out and
    bob, following the default, gets the highest that arrives. After THIN_SECONDS the cap
    is lifted: her estimate grows, she adds the top stream, and bob must decode it — which
    needs the server to have kept announcing the streams she had not sent yet (dynacast
    must not pause them: an encoding set inactive never comes back on its own)."""
    from playwright.sync_api import sync_playwright

    extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS + extra, headless=True, timeout=30_000
        )
        try:
            pages = {name: Page(browser, name) for name in ("alice", "bob")}
            for page in pages.values():
                page.page.goto(base + "/")
                assert page.js(HELPERS) is True
            alice, bob = pages["alice"], pages["bob"]
            bob.js("() => window.T.subscribe('r', 'bob')")
            cap_uplinks(server.udp_port, THIN_KBIT)
            pid = alice.js(
                "() => window.T.publish('r', 'alice', {width: 1280, height: 720,"
                " simulcast: true})"
            )
            room = server.sfu.rooms["r"]  # type: ignore[attr-defined]
            track = wait_until(
                "alice's camera on the server",
                lambda: [t for t in room.publishers[pid].tracks if t.kind == "video"],
                bool, 20, *pages.values(),
            )[0]

            def inbound() -> dict[str, Any]:
                result: dict[str, Any] = bob.js(f"() => window.T.inbound({pid!r})")
                return result

            wait_until("bob decoding alice", inbound, lambda r: r["decoded"] >= 30, 60,
                       *pages.values())
            time.sleep(THIN_SECONDS)
            sent = alice.js(f"() => window.T.outbound({pid!r})")
            out["thin"] = {
                "bob": inbound(),
                "missing": sorted(track._missing),  # the server's view
                "default": track.fanout.default,
                "aliceSent": sent["bytes"],
                "told": sent["told"],
            }
            uncap()
            lifted = time.monotonic()
            out["top"] = wait_until(
                "bob decoding alice's top stream", inbound,
                lambda r: r["width"] >= 960 and r["decoded"] >= 30, 90, *pages.values()
            )
            out["topSeconds"] = round(time.monotonic() - lifted, 2)
            out["problems"] = [p for page in pages.values() for p in page.problems]
        finally:
            browser.close()


def browser_part(base: str, out: dict[str, Any], server: Running) -> None:
    from playwright.sync_api import sync_playwright

    extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS + extra, headless=True, timeout=30_000
        )
        try:
            pages = {name: Page(browser, name) for name in ("alice", "bob", "carol")}
            for page in pages.values():
                page.page.goto(base + "/")
                assert page.js(HELPERS) is True
            bob, carol, alice = pages["bob"], pages["carol"], pages["alice"]
            ids = {
                n: pages[n].js(f"() => window.T.subscribe('r', '{n}')") for n in ("bob", "carol")
            }
            layering = (
                f"codec: '{SVC_CODEC}', svc: 'L3T3_KEY'" if SVC else "simulcast: true"
            )
            pid = alice.js(
                f"() => window.T.publish('r', 'alice', {{width: 1280, height: 720, {layering}}})"
            )

            def inbound(page: Page) -> dict[str, Any]:
                result: dict[str, Any] = page.js(f"() => window.T.inbound({pid!r})")
                return result

            for page in (bob, carol):
                wait_until(
                    f"{page.name} decoding the top stream",
                    functools.partial(inbound, page),
                    lambda r: r["width"] >= 960 and r["decoded"] >= 30,
                    90,
                    *pages.values(),
                )
            room = server.sfu.rooms["r"]  # type: ignore[attr-defined]
            carol_sub = room.subscribers[ids["carol"]]
            negotiations = carol_sub.negotiations
            downtrack = next(d for d in carol_sub.live.values() if d.source.kind == "video")
            address = carol_sub.pc.remote_address
            assert address is not None
            out["carolAddress"] = list(address)

            def watch(seconds: float) -> dict[str, Any]:
                """Frames decoded over ``seconds``, and each page's width every 0.5 s of it
                (``widths``): the planner's probes may lift a capped subscriber a layer for a
                second or two, so one instant says less than the share of the window."""
                first = {n: inbound(pages[n]) for n in ("bob", "carol")}
                widths: dict[str, list[int]] = {"bob": [], "carol": []}
                for _ in range(int(seconds / 0.5)):
                    time.sleep(0.5)
                    for n in widths:
                        widths[n].append(int(inbound(pages[n])["width"]))
                last = {n: inbound(pages[n]) for n in ("bob", "carol")}
                return {
                    n: {
                        "width": last[n]["width"],
                        "widths": widths[n],
                        "fps": round((last[n]["decoded"] - first[n]["decoded"]) / seconds, 1),
                        "freezes": last[n]["freezes"] - first[n]["freezes"],
                    }
                    for n in ("bob", "carol")
                }

            out["before"] = watch(OBSERVE / 2)
            # A 300 ms queue: the SFU forwards a frame's packets as they come (it has no
            # pacer), so a keyframe of even the low stream arrives as a burst of ~10 kB.
            cap(server.udp_port, CAP_KBIT, dport=address[1], queue_ms=300)
            capped_at = time.monotonic()
            estimates: list[int] = []

            def carol_low() -> dict[str, Any]:
                estimates.append(int(carol_sub.bwe.estimate))
                return inbound(carol)

            wait_until(
                "carol on the low stream",
                carol_low,
                lambda r: 0 < r["width"] <= 400 and downtrack.forwarded_layer == 0,
                60,
                *pages.values(),
            )
            out["settleSeconds"] = round(time.monotonic() - capped_at, 2)
            out["estimatesCapped"] = estimates[:: max(1, len(estimates) // 20)]
            time.sleep(2)  # what was queued before the switch drains

            def counters() -> dict[str, int]:
                return {
                    "pli": carol_sub.pli_received,
                    "nacks": carol_sub.nacks_received,
                    "probes": carol_sub.probes_sent,
                    "decreases": carol_sub.bwe.decreases,
                    "keyframes": downtrack.source.keyframes.sent,
                }

            first = counters()
            dropped = capped_drops()
            out["capped"] = watch(OBSERVE)
            out["cappedDrops"] = capped_drops() - dropped
            out["cappedCounters"] = {k: v - first[k] for k, v in counters().items()}
            out["layerBitrates"] = [  # read in the server's thread: it updates samples
                int(r)
                for r in trio.from_thread.run_sync(
                    lambda: downtrack.source.layer_bitrates(trio.current_time())
                )
            ]
            out["cappedLayerSwitches"] = downtrack.layer_switches
            out["svcLayers"] = downtrack.source.fanout.svc_layers
            uncap()
            lifted_at = time.monotonic()
            wait_until(
                "carol back on the top stream",
                lambda: inbound(carol),
                lambda r: r["width"] >= 960,
                90,
                *pages.values(),
            )
            out["recoverSeconds"] = round(time.monotonic() - lifted_at, 2)
            out["after"] = watch(OBSERVE / 2)
            if SVC:  # the loss phase is simulcast's (the same NACK/RTX path)
                out["renegotiated"] = carol_sub.negotiations != negotiations
                out["problems"] = [p for page in pages.values() for p in page.problems]
                out["plans"] = PLANS
                return
            # 5 % random loss on carol's link (no cap): NACK/RTX repairs it, the estimate
            # holds (loss under 10 % is not congestion, draft-ietf-rmcat-gcc §6).
            rule = [
                "OUTPUT",
                "-p",
                "udp",
                "--sport",
                str(server.udp_port),
                "--dport",
                str(address[1]),
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                str(LOSS),
                "-j",
                "DROP",
            ]
            iptables("-I", *rule)
            first = counters()
            resent = downtrack.retransmitted
            out["lossy"] = watch(OBSERVE)
            iptables("-D", *rule)
            out["lossyCounters"] = {k: v - first[k] for k, v in counters().items()}
            out["lossyRetransmitted"] = downtrack.retransmitted - resent
            out["lossyNack"] = {
                "misses": downtrack.nack_misses,
                "repeats": downtrack.nack_repeats,
                "answered": carol_sub.nacks_answered,
                "layer": downtrack.forwarded_layer,
            }
            out["lossyEstimate"] = int(carol_sub.bwe.estimate)
            out["lossyLoss"] = round(carol_sub.bwe.loss, 3)
            out["renegotiated"] = carol_sub.negotiations != negotiations
            out["layerSwitches"] = downtrack.layer_switches
            out["problems"] = [p for page in pages.values() for p in page.problems]
            out["plans"] = PLANS
        finally:
            browser.close()


async def scenario() -> dict[str, Any]:
    addresses = inside()
    assert addresses is not None, "run through tests.netns"
    out = RESULT
    _record_plans()
    async with running_server(addresses[0]) as running:
        base = f"http://127.0.0.1:{running.http_port}"
        with trio.fail_after(SCENARIO_TIMEOUT):
            part = thin_part if THIN else browser_part
            await trio.to_thread.run_sync(part, base, out, running, abandon_on_cancel=True)
    return out


def main() -> int:
    return run_scenario(scenario, partial=RESULT)


if __name__ == "__main__":
    sys.exit(main())
