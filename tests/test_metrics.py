"""``GET /metrics`` (issue 13, item 2): prometheus-client's own parser reads every family with
its type, every sample carries the node label, and a publish/subscribe/NACK session moves the
counters by exactly what the test made happen. Also: tokens guard it, --metrics-open and
--metrics-port open it, and per-room series stay bounded."""

from __future__ import annotations

import functools
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from tests.test_http import http_server
from tests.test_sfu_media import Media, Rtcp, video_of
from trio_sfu.app import serve
from trio_sfu.auth import TokenVerifier, create_token
from trio_sfu.compiled import compiled_modules
from trio_sfu.config import Config
from trio_sfu.http import create_app
from trio_sfu.metrics import OTHER_ROOMS, Renderer, exposition, node_registry
from trio_sfu.proto.rtcp import Nack, Pli, ReceiverReport, ReportBlock
from trio_sfu.sfu.errors import Conflict

KEY, SECRET = "k1", "s" * 32
Families = dict[str, Any]


@pytest.fixture
async def env(nursery: trio.Nursery) -> SfuEnv:
    return await start_sfu(nursery)


async def scrape(url: str, **headers: str) -> Families:
    async with httpx.AsyncClient() as http:
        response = await http.get(url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(families: Families, name: str, **labels: str) -> float:
    """The one sample of ``name`` (a family or sample name) matching ``labels``."""
    family = families.get(name)
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        family = family or families.get(name.removesuffix(suffix))
    assert family is not None, (name, sorted(families))
    found = [
        s.value
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


@asynccontextmanager
async def metrics_url(env: SfuEnv, **kwargs: Any) -> AsyncIterator[str]:
    registry = node_registry(env.sfu, "node-a", room_limit=kwargs.pop("room_limit", 50))
    async with http_server(create_app(env.sfu, metrics=registry, **kwargs)) as url:
        yield url


async def test_session_moves_counters_by_the_right_amounts(env: SfuEnv) -> None:
    async with metrics_url(env) as url:
        empty = await scrape(url)
        # Every family typed, every sample labelled with the node.
        for family in empty.values():
            assert family.type != "unknown", family.name
            assert family.documentation, family.name
            for sample in family.samples:
                assert sample.labels.get("node") == "node-a", sample
        for name in (
            "trio_sfu_rooms",
            "trio_sfu_publishers",
            "trio_sfu_subscribers",
            "trio_sfu_tracks",
            "trio_sfu_remote_tracks",
            "process_resident_memory_bytes",
            "python_gc_collections",
            "trio_sfu_join_seconds",
            "trio_sfu_connect_seconds",
            "trio_sfu_session_seconds",
            "trio_sfu_subscriber_rtt_seconds",
            "trio_sfu_subscriber_loss_ratio",
            "trio_sfu_srtp_failures",
            "trio_sfu_dropped_sends",
            "trio_sfu_keyframe_requests_throttled",
        ):
            assert name in empty, sorted(empty)
        # which build runs (tests/test_compiled.py proves compiled_modules() for each run)
        assert value(empty, "trio_sfu_compiled_modules") == len(compiled_modules())
        assert empty["trio_sfu_join_seconds"].type == "histogram"
        assert empty["trio_sfu_subscriber_rtt_seconds"].type == "histogram"
        assert empty["trio_sfu_packets"].type == "counter"

        bob = await env.subscriber("r", "bob-1")
        alice = await env.publisher("r", "alice-1", audio=False)
        alice_rtcp, bob_rtcp = Rtcp(), Rtcp()
        alice.pc.on_rtcp, bob.pc.on_rtcp = alice_rtcp, bob_rtcp
        media = Media(bob)
        await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
        with pytest.raises(Conflict):
            await env.sfu.publish("r", "alice-1", "v=0\r\n")
        joined = await scrape(url)
        assert value(joined, "trio_sfu_rooms") == 1
        assert value(joined, "trio_sfu_publishers") == 1
        assert value(joined, "trio_sfu_subscribers") == 1
        assert value(joined, "trio_sfu_tracks") == 1
        assert value(joined, "trio_sfu_room_publishers", room="r") == 1
        assert value(joined, "trio_sfu_room_subscribers", room="r") == 1
        assert value(joined, "trio_sfu_joins_total", role="publisher", outcome="ok") == 1
        assert value(joined, "trio_sfu_joins_total", role="subscriber", outcome="ok") == 1
        assert value(joined, "trio_sfu_joins_total", role="publisher", outcome="conflict") == 1
        assert value(joined, "trio_sfu_join_seconds_count", role="publisher") == 1
        assert value(joined, "trio_sfu_connect_seconds_count", role="subscriber") == 1

        # Publisher loss: the SFU NACKs two packets, the publisher repairs them as RTX.
        assert alice.video is not None
        for i in range(40):
            alice.send_frame(keyframe=i == 0, skip=i in (20, 21))
            await trio.sleep(0.002)
        await wait_for(lambda: alice_rtcp.of(Nack))
        lost = sorted({s for p in alice_rtcp.of(Nack) for s in p.lost})  # type: ignore[attr-defined]
        assert lost == [20, 21]
        for seq in lost:
            assert alice.resend_as_rtx(alice.video, seq)
        await wait_for(lambda: len({p[2] for p in media.packets}) >= 40)
        # Three RTX padding-only probes, as browsers send to probe bandwidth (no OSN).
        video = alice.video
        rtx_ssrc, rtx_pt = (
            video.sender_rtx_ssrc,
            video.rtx_payload_type(video.media_codecs[0].payload_type),
        )
        assert rtx_ssrc is not None and rtx_pt is not None
        for _ in range(3):
            seq = alice._seq[rtx_ssrc] & 0xFFFF
            alice._seq[rtx_ssrc] += 1
            header = struct.pack("!BBHII", 0xA0, rtx_pt, seq, 1234, rtx_ssrc)
            alice.pc.send_rtp(header + bytes(9) + b"\x0a")  # 10 bytes of padding, no payload
        await wait_for(
            lambda: (
                sum(t.padding_received for t in env.sfu.rooms["r"].publishers["alice-1"].tracks)
                == 3
            )
        )
        await trio.sleep(0.3)  # the NACK generator has nothing left to ask

        before = await scrape(url)
        nacks_sent = sum(len(p.lost) for p in alice_rtcp.of(Nack))  # type: ignore[attr-defined]
        assert value(before, "trio_sfu_nack_requests_total", event="sent") == nacks_sent
        assert value(before, "trio_sfu_packets_total", direction="in", kind="rtx") == 2
        assert value(before, "trio_sfu_packets_total", direction="in", kind="padding") == 3
        assert value(before, "trio_sfu_packets_total", direction="in", kind="rtp") >= 40

        # Subscriber feedback: a NACK for 3 packets (answered from the cache) and 2 PLIs.
        t = video_of(bob)
        media_ssrc = t.remote_ssrcs[0]
        wanted = sorted(seq for ssrc, _, seq, _ in media.packets if ssrc == media_ssrc)[10:13]
        rtx_before = sum(1 for p in media.packets if p[0] == t.remote_rtx_ssrcs[media_ssrc])
        pli_out_before = len(alice_rtcp.of(Pli))
        bob.pc.send_rtcp(Nack.from_lost(1, media_ssrc, wanted).serialize())
        for _ in range(2):
            bob.pc.send_rtcp(Pli(sender_ssrc=1, media_ssrc=media_ssrc).serialize())
        await wait_for(
            lambda: (
                sum(1 for p in media.packets if p[0] == t.remote_rtx_ssrcs[media_ssrc])
                >= rtx_before + 3
            )
        )
        await trio.sleep(0.8)  # the throttle's deferred PLI, if any, has gone out
        after = await scrape(url)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("trio_sfu_nack_requests_total", event="received") == 3
        assert moved("trio_sfu_nack_requests_total", event="answered") == 3
        assert moved("trio_sfu_packets_total", direction="out", kind="rtx") == 3
        assert moved("trio_sfu_keyframe_requests_total", direction="in", type="pli") == 2
        pli_out = len(alice_rtcp.of(Pli)) - pli_out_before
        assert moved("trio_sfu_keyframe_requests_total", direction="out", type="pli") == pli_out
        # The per-track throttle passed some of bob's two PLIs and held back the others.
        assert pli_out + moved("trio_sfu_keyframe_requests_throttled_total") >= 2
        assert value(after, "trio_sfu_rtp_payload_bytes_total", direction="out") > 0
        assert value(after, "trio_sfu_udp_datagrams_in_total") > 0
        # A receiver report from bob: one loss observation of 64/256.
        bob.pc.send_rtcp(
            ReceiverReport(
                ssrc=1, reports=[ReportBlock(ssrc=media_ssrc, fraction_lost=64)]
            ).serialize()
        )
        await wait_for(lambda: env.sfu.rooms["r"].subscribers["bob-1"].loss_reports.sum > 0)
        reported = await scrape(url)
        assert (
            value(reported, "trio_sfu_subscriber_loss_ratio_count")
            - value(after, "trio_sfu_subscriber_loss_ratio_count")
            == 1
        )
        assert (
            value(reported, "trio_sfu_subscriber_loss_ratio_sum")
            - value(after, "trio_sfu_subscriber_loss_ratio_sum")
            == 0.25
        )
        assert value(reported, "trio_sfu_subscriber_loss_ratio_bucket", le="0.2") == value(
            after, "trio_sfu_subscriber_loss_ratio_bucket", le="0.2"
        )

        # Leaving keeps the totals (folded into the node's), and records the session.
        await env.sfu.stop("sub", "r", "bob-1")
        await env.sfu.stop("pub", "r", "alice-1")
        gone = await scrape(url)
        assert value(gone, "trio_sfu_rooms") == 0
        assert value(gone, "trio_sfu_subscribers") == 0
        for name, labels in (
            ("trio_sfu_nack_requests_total", {"event": "received"}),
            ("trio_sfu_nack_requests_total", {"event": "sent"}),
            ("trio_sfu_packets_total", {"direction": "in", "kind": "rtx"}),
        ):
            assert value(gone, name, **labels) >= value(after, name, **labels), name
        assert value(gone, "trio_sfu_session_seconds_count", role="subscriber") == 1
        assert value(gone, "trio_sfu_session_seconds_count", role="publisher") == 1
        assert "r" not in {s.labels.get("room") for s in gone["trio_sfu_room_publishers"].samples}


async def test_per_room_series_are_bounded(env: SfuEnv) -> None:
    for i in range(4):
        await env.subscriber(f"room{i}", f"u{i}-1")
    await env.subscriber("room0", "v-1")
    async with metrics_url(env, room_limit=2) as url:
        families = await scrape(url)
    rooms = {s.labels["room"]: s.value for s in families["trio_sfu_room_subscribers"].samples}
    assert rooms == {"room0": 2, "room1": 1, OTHER_ROOMS: 2}, rooms


async def test_tokens_guard_metrics(env: SfuEnv) -> None:
    verifier = TokenVerifier(KEY, SECRET)

    def bearer(**grants: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + create_token(KEY, SECRET, identity="ops", **grants)}

    async with metrics_url(env, tokens=verifier) as url, httpx.AsyncClient() as http:
        assert (await http.get(url + "/metrics")).status_code == 401
        room_admin = bearer(room="r", admin=True)
        assert (await http.get(url + "/metrics", headers=room_admin)).status_code == 403
        user = bearer(room="*", publish=True, subscribe=True)
        assert (await http.get(url + "/metrics", headers=user)).status_code == 403
        await scrape(url, **bearer(room="*", admin=True))
    async with metrics_url(env, tokens=verifier, metrics_open=True) as url:
        await scrape(url)


async def test_metrics_port_is_open_and_serves_only_metrics() -> None:
    config = Config(
        http_host="127.0.0.1",
        http_port=0,
        udp_port=0,
        api_key=KEY,
        api_secret=SECRET,
        metrics_port=0,
    )
    async with trio.open_nursery() as nursery:
        running = await nursery.start(functools.partial(serve, config, handle_signals=False))
        try:
            port = running.metrics_port
            assert port is not None and port != running.http_port
            async with httpx.AsyncClient() as http:
                main = await http.get(f"http://127.0.0.1:{running.http_port}/metrics")
                assert main.status_code == 401
                other = await http.get(f"http://127.0.0.1:{port}/rooms")
                assert other.status_code == 404
            families = await scrape(f"http://127.0.0.1:{port}")
            assert value(families, "trio_sfu_rooms") == 0
        finally:
            running.shutdown()


async def test_grafana_dashboard_uses_only_names_we_export(env: SfuEnv) -> None:
    import json
    import re
    from pathlib import Path

    dashboard = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "trio-sfu.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    async with metrics_url(env) as url:
        families = await scrape(url)
    used = {name for e in exprs for name in re.findall(r"\b(?:trio_sfu|process)_\w+", e)}
    unknown = [n for n in used if re.sub(r"_(total|bucket|count|sum)$", "", n) not in families]
    assert used and not unknown, unknown
    for name in used:  # and with the right type for the suffix the query uses
        family = families[re.sub(r"_(total|bucket|count|sum)$", "", name)]
        if name.endswith("_bucket"):
            assert family.type == "histogram", name
        if name.endswith("_total"):
            assert family.type == "counter", name


class Fixed:
    """A collector of fixed families: the same data for two renderers."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def scraped(registry: CollectorRegistry) -> tuple[list[Metric], bytes]:
    """One collection of ``registry``, and prometheus-client's own text of it."""
    families = list(registry.collect())
    return families, generate_latest(Fixed(families))  # type: ignore[arg-type]


async def test_exposition_is_generate_latest_byte_for_byte_and_does_not_grow_per_peer(
    env: SfuEnv,
) -> None:
    """The renderer keeps each family's text less its values between scrapes (issue 10: the
    benches scrape every 0.5-1 s): what it writes must be what ``generate_latest`` writes for
    the same families, on the first scrape and on later ones whose values or rooms changed;
    and the series are per node and per (bounded) room, never per peer."""
    registry = node_registry(env.sfu, "node-a", room_limit=2)
    renderer = Renderer()
    for i in range(4):  # 4 rooms: 2 shown, the rest under "(other)"
        await env.subscriber(f"room{i}", f"u{i}")
        families, expected = scraped(registry)
        assert renderer.render(families) == expected, i
    lines = len(expected.splitlines())
    for i in range(4, 12):  # more peers in those rooms: new values, and new room ranks
        await env.subscriber(f"room{i % 3}", f"u{i}")
        families, expected = scraped(registry)
        assert renderer.render(families) == expected, i
        assert len(expected.splitlines()) == lines, i
    text = expected.decode()
    assert 'trio_sfu_subscribers{node="node-a"} 12.0' in text
    assert f'trio_sfu_room_subscribers{{node="node-a",room="{OTHER_ROOMS}"}} 4.0' in text
    assert exposition(registry).count(b"\n") == lines


def test_renderer_matches_generate_latest_as_values_labels_and_shapes_change() -> None:
    """Escaped label values and HELP, a histogram, an info metric, a counter with its
    ``_created`` sample (moved to a family of its own by ``generate_latest``), a timestamped
    sample, large and special floats: scrape after scrape with changed values, then labels."""

    def families(step: int, room: str) -> list[Metric]:
        gauge = GaugeMetricFamily("g", "help with \\ and\nnewline", labels=["node", "room"])
        gauge.add_metric(["n", room], step * 1.5)
        gauge.add_metric(["n", "other"], [0.0, 1e22, float("inf"), float("nan")][step % 4])
        counter = CounterMetricFamily("c_total", "a counter", labels=["node"])
        counter.add_metric(["n"], 12_345_678 * step)
        created = CounterMetricFamily("made", "with _created", labels=["node"])
        created.add_metric(["n"], step, created=1000.0 + step)
        stamped = GaugeMetricFamily("stamped", "timestamped", labels=["node"])
        stamped.add_metric(["n"], step, timestamp=1234.5 + step)
        histogram = HistogramMetricFamily("h_seconds", "a histogram", labels=["node"])
        histogram.add_metric(["n"], [("0.1", step), ("1.0", 2 * step), ("+Inf", 3 * step)], 0.7)
        info = InfoMetricFamily("build", "build info", value={"version": f"1.{step}"})
        return [gauge, counter, created, stamped, histogram, info]

    renderer = Renderer()
    rooms = ["a", "a", 'quote " and \\ back', "a", "room\u2028é", "room\u2028é"]
    for step, room in enumerate(rooms):
        data = families(step, room)
        assert renderer.render(data) == generate_latest(Fixed(data)), (step, room)  # type: ignore[arg-type]
