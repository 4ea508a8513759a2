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

import contextlib
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from tests.browser_helpers import HELPERS
from tests.browser_netns import iptables, running_server
from tests.bwe_netns import cap, uncap
from tests.netns import REPO, inside, run_scenario
from tests.peers.chromium_peer import CHROMIUM, CHROMIUM_ARGS, EXTRA_ARGS_ENV
from tests.peers.firefox import find_firefox, headless_firefox
from tests.test_site import SITE, Collector, HasLog, Page, site_with_page, wait_until
from trio_sfu.app import Running

CAP_KBIT = 400
SCENARIO_TIMEOUT = 300.0
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
#: ``python -m tests.simulcast_netns firefox``: carol is Firefox ESR (its own engine's
#: transport-cc feedback drives her estimate and the server's probes); alice and bob stay
#: Chromium, and the loss phase is skipped
FIREFOX = sys.argv[1:2] == ["firefox"]
#: ``python -m tests.simulcast_netns aiortc``: carol is an aiortc WHEP viewer, which sends
#: receiver reports and no transport-cc feedback: their loss is its only congestion signal
AIORTC = sys.argv[1:2] == ["aiortc"]
#: what the Firefox page is served beside the site
FIREFOX_PAGE = "firefox_subscriber.html"


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


class FirefoxViewer:
    """carol as Firefox: its page (tests/site/firefox_subscriber.html) subscribes through the
    site's module and reports what it decodes over HTTP (:class:`Collector`)."""

    name = "carol"

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def subscriber_id(self, *logs: HasLog) -> str:
        ids = wait_until("Firefox subscribed", lambda: self.collector.last("ids"),
                         lambda e: e is not None, 60, self, *logs)
        assert "Firefox/" in ids["userAgent"], ids
        sub_id: str = ids["subId"]
        return sub_id

    def inbound(self, pid: str) -> dict[str, Any]:
        """As ``window.T.inbound`` reports a Chromium page's (Firefox's own freeze count is not
        in its stats: 0)."""
        status = self.collector.last("status")
        tile = status["sub"]["tiles"].get(pid) if status else None
        if tile is None:
            return {"decoded": 0, "width": 0, "freezes": 0}
        return {"decoded": tile["framesDecoded"], "width": tile["width"], "freezes": 0}

    @property
    def problems(self) -> list[str]:
        status = self.collector.last("status")
        return self.collector.problems() + (status["errors"] if status else [])

    def log(self) -> str:
        return self.collector.log()


@contextlib.contextmanager
def firefox_viewer(base: str, room: str) -> Iterator[FirefoxViewer]:
    firefox = find_firefox()
    assert firefox is not None, "firefox-esr is not installed"
    # Firefox takes a host without a default route for offline, and an offline Firefox
    # closes every RTCPeerConnection at once ("Peer connection is closed"): give it one.
    subprocess.run(["ip", "route", "add", "default", "dev", "v0"], check=True)
    with tempfile.TemporaryDirectory(prefix="simulcast-firefox-") as tmp:
        log = Path(tmp) / "firefox.log"
        collector = Collector(log)
        url = f"{base}/{FIREFOX_PAGE}?room={room}&user=carol&collect={collector.url}"
        try:
            with log.open("wb") as output, headless_firefox(firefox, url, Path(tmp), output):
                yield FirefoxViewer(collector)
        finally:
            collector.server.shutdown()


class AiortcViewer:
    """carol as aiortc (tests/peers/aiortc_whep.py, its own process): a WHEP viewer of
    alice that reports what it decodes once a second (JSON lines, read by a thread)."""

    name = "carol"

    def __init__(self, base: str, room: str, address: str) -> None:
        argv = [sys.executable, str(Path(REPO) / "tests" / "peers" / "aiortc_whep.py"),
                "--url", f"{base}/whep/{room}", "--ice-address", address, "--until-stopped",
                "--timeout", str(SCENARIO_TIMEOUT), "--progress-every", "0.5"]
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, start_new_session=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((line for line in reversed(self.lines) if line["type"] == kind), None)

    def inbound(self) -> dict[str, Any]:
        """As ``window.T.inbound`` reports a Chromium page's (aiortc counts no freezes: 0)."""
        progress = self.last("progress")
        size = progress["frameSize"] if progress else None
        return {"decoded": progress["framesDecoded"] if progress else 0,
                "width": size[0] if size else 0, "freezes": 0}

    @property
    def problems(self) -> list[str]:
        """Its errors (in its result line, once stopped) or its connection lost meanwhile."""
        result, progress = self.last("result"), self.last("progress")
        found = list(result["errors"]) if result else []
        if progress and progress["connectionState"] in ("failed", "closed"):
            found.append(f"aiortc connection {progress['connectionState']}")
        return found

    def log(self) -> str:
        self.stderr.seek(0)
        tail = self.stderr.read()[-3000:].decode(errors="replace")
        return f"--- aiortc viewer ---\n{self.lines[-3:]}\n{tail}"

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(json.dumps({"type": "stop"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        self.stderr.close()


def browser_part(base: str, out: dict[str, Any], server: Running) -> None:
    from playwright.sync_api import sync_playwright

    extra = shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))
    with sync_playwright() as pw, contextlib.ExitStack() as stack:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS + extra, headless=True, timeout=30_000
        )
        stack.callback(browser.close)
        chromium = ("alice", "bob") if FIREFOX or AIORTC else ("alice", "bob", "carol")
        pages = {name: Page(browser, name) for name in chromium}
        for page in pages.values():
            page.page.goto(base + "/")
            assert page.js(HELPERS) is True
        bob, alice = pages["bob"], pages["alice"]
        logs: list[HasLog] = list(pages.values())
        ids = {"bob": bob.js("() => window.T.subscribe('r', 'bob')")}
        fox: FirefoxViewer | None = None
        if FIREFOX:
            fox = stack.enter_context(firefox_viewer(base, "r"))
            logs.append(fox)
            ids["carol"] = fox.subscriber_id(*logs)
        elif not AIORTC:
            ids["carol"] = pages["carol"].js("() => window.T.subscribe('r', 'carol')")
        layering = f"codec: '{SVC_CODEC}', svc: 'L3T3_KEY'" if SVC else "simulcast: true"
        pid = alice.js(
            f"() => window.T.publish('r', 'alice', {{width: 1280, height: 720, {layering}}})"
        )
        room = server.sfu.rooms["r"]  # type: ignore[attr-defined]
        aio: AiortcViewer | None = None
        if AIORTC:  # a WHEP viewer needs a publisher to watch
            addresses = inside()
            assert addresses is not None
            aio = AiortcViewer(base, "r", addresses[1])
            stack.callback(aio.close)
            logs.append(aio)
            ids["carol"] = wait_until(
                "the aiortc viewer joined",
                lambda: [i for i in room.subscribers if i != ids["bob"]],
                bool, 30, *logs,
            )[0]

        def inbound(page: Page) -> dict[str, Any]:
            result: dict[str, Any] = page.js(f"() => window.T.inbound({pid!r})")
            return result

        viewers: dict[str, Callable[[], dict[str, Any]]] = {
            "bob": functools.partial(inbound, bob),
            "carol": (
                functools.partial(fox.inbound, pid)
                if fox is not None
                else aio.inbound
                if aio is not None
                else functools.partial(inbound, pages["carol"])
            ),
        }

        def problems() -> list[str]:
            found = [p for page in pages.values() for p in page.problems]
            for other in (fox, aio):
                if other is not None:
                    found += other.problems
            return found

        for name, viewer in viewers.items():
            wait_until(
                f"{name} decoding the top stream",
                viewer,
                lambda r: r["width"] >= 960 and r["decoded"] >= 30,
                90,
                *logs,
            )
        carol_sub = room.subscribers[ids["carol"]]
        negotiations = getattr(carol_sub, "negotiations", 0)  # a WHEP viewer never renegotiates
        downtrack = next(d for d in carol_sub.live.values() if d.source.kind == "video")
        address = carol_sub.pc.remote_address
        assert address is not None
        out["carolAddress"] = list(address)

        def watch(seconds: float) -> dict[str, Any]:
            """Frames decoded over ``seconds``, and each page's width every 0.5 s of it
            (``widths``): the planner's probes may lift a capped subscriber a layer for a
            second or two, so one instant says less than the share of the window."""
            first = {n: viewers[n]() for n in ("bob", "carol")}
            widths: dict[str, list[int]] = {"bob": [], "carol": []}
            estimates = []  # carol's, beside: a probe through the cap would show here
            layers = []  # the stream the server forwards her (what a lagging decoder hides)
            for _ in range(int(seconds / 0.5)):
                time.sleep(0.5)
                for n in widths:
                    widths[n].append(int(viewers[n]()["width"]))
                estimates.append(int(carol_sub.bwe.estimate))
                layers.append(downtrack.forwarded_layer)
            last = {n: viewers[n]() for n in ("bob", "carol")}
            return {
                n: {
                    "width": last[n]["width"],
                    "widths": widths[n],
                    "fps": round((last[n]["decoded"] - first[n]["decoded"]) / seconds, 1),
                    "freezes": last[n]["freezes"] - first[n]["freezes"],
                }
                for n in ("bob", "carol")
            } | {"carolEstimates": estimates, "carolLayers": layers}

        out["before"] = watch(OBSERVE / 2)
        # A 300 ms queue: the SFU forwards a frame's packets as they come (it has no
        # pacer), so a keyframe of even the low stream arrives as a burst of ~10 kB.
        cap(server.udp_port, CAP_KBIT, dport=address[1], queue_ms=300)
        capped_at = time.monotonic()
        estimates: list[int] = []

        def carol_low() -> dict[str, Any]:
            estimates.append(int(carol_sub.bwe.estimate))
            return viewers["carol"]()

        wait_until(
            "carol on the low stream",
            carol_low,
            lambda r: 0 < r["width"] <= 400 and downtrack.forwarded_layer == 0,
            # receiver reports (aiortc) are slow to tell, and its decoder lags the server's
            # switches between the low and middle streams: 14-30 s measured
            120 if AIORTC else 60,
            *logs,
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
        decoded_at_lift = viewers["carol"]()["decoded"]
        wait_until(
            "carol back on the top stream",
            lambda: viewers["carol"]() | {"layer": downtrack.forwarded_layer},
            # aiortc's decoder may lag (its last frame's width stays): the server's side too
            lambda r: r["width"] >= 960
            and (not AIORTC or (r["layer"] == 2 and r["decoded"] >= decoded_at_lift + 20)),
            90,
            *logs,
        )
        out["recoverSeconds"] = round(time.monotonic() - lifted_at, 2)
        out["after"] = watch(OBSERVE / 2)
        if SVC or FIREFOX or AIORTC:  # the loss phase is Chromium simulcast's (NACK/RTX)
            out["renegotiated"] = getattr(carol_sub, "negotiations", 0) != negotiations
            out["problems"] = problems()
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
        out["renegotiated"] = getattr(carol_sub, "negotiations", 0) != negotiations
        out["layerSwitches"] = downtrack.layer_switches
        out["problems"] = problems()
        out["plans"] = PLANS


async def scenario() -> dict[str, Any]:
    addresses = inside()
    assert addresses is not None, "run through tests.netns"
    out = RESULT
    _record_plans()
    with tempfile.TemporaryDirectory(prefix="simulcast-site-") as tmp:
        site = SITE
        if FIREFOX:  # the Firefox page drives itself: served beside the site
            site = site_with_page(Path(tmp), FIREFOX_PAGE)
        async with running_server(addresses[0], site_dir=site) as running:
            base = f"http://127.0.0.1:{running.http_port}"
            with trio.fail_after(SCENARIO_TIMEOUT):
                part = thin_part if THIN else browser_part
                await trio.to_thread.run_sync(part, base, out, running, abandon_on_cancel=True)
    return out


def main() -> int:
    return run_scenario(scenario, partial=RESULT)


if __name__ == "__main__":
    sys.exit(main())
