"""``GET /metrics``: the node's state and counters as Prometheus metrics (prometheus-client).

Everything is read at scrape time by one collector from what the SFU already keeps — rooms and
members, the plain-int counters the media path bumps (``PeerStats``, down-tracks, published
tracks, the UDP endpoint, the relay), and :class:`~trio_sfu.sfu.node_stats.NodeStats` for what
outlives a member — so metrics add no work per packet. Counters are node totals: live members'
counters plus those of members that left (folded in once, at leave).

Every family has HELP and TYPE and a ``node`` label (the cluster's node id, ``local`` for the
embedded SFU), process and GC metrics included. Per-room gauges are limited to the
``--metrics-rooms`` largest rooms; the rest are summed under ``room="(other)"`` so that a
client creating rooms cannot inflate the series count. Names are documented in
docs/metrics.md, and deploy/grafana/trio-sfu.json is built on them.

A scrape is one synchronous block on the Trio thread, so it is kept cheap (issue 10: the
benches scrape every 0.5-1 s beside the media they measure): the text is prometheus-client's
``generate_latest`` byte for byte, but each family's lines are kept less their values between
scrapes (:class:`Renderer`), and the live members' counters and receiver-report histograms
are added up column-wise (:func:`_add_up`, :func:`_merged`), not key by key.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from trio_sfu.compiled import compiled_modules
from trio_sfu.sfu.node_stats import Buckets

__all__ = ["CONTENT_TYPE", "OTHER_ROOMS", "SfuCollector", "exposition", "node_registry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The label of the per-room series that sums the rooms past the --metrics-rooms limit.
OTHER_ROOMS = "(other)"
#: A room's bitrate is re-estimated at most this often (seconds), whatever the scrape rate.
BITRATE_WINDOW = 1.0

# Member counter name → (family, help, extra labels). Counters a member type does not have
# are simply absent from its dict.
_MEMBER_COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "rtp_in": ("packets", "", {"direction": "in", "kind": "rtp"}),
    "rtp_out": ("packets", "", {"direction": "out", "kind": "rtp"}),
    "rtcp_in": ("packets", "", {"direction": "in", "kind": "rtcp"}),
    "rtcp_out": ("packets", "", {"direction": "out", "kind": "rtcp"}),
    "rtx_in": ("packets", "", {"direction": "in", "kind": "rtx"}),
    "rtx_out": ("packets", "", {"direction": "out", "kind": "rtx"}),
    "padding_in": ("packets", "", {"direction": "in", "kind": "padding"}),
    "bytes_in": ("rtp_payload_bytes", "", {"direction": "in"}),
    "bytes_out": ("rtp_payload_bytes", "", {"direction": "out"}),
    "nacks_received": ("nack_requests", "", {"event": "received"}),
    "nacks_answered": ("nack_requests", "", {"event": "answered"}),
    "nacks_sent": ("nack_requests", "", {"event": "sent"}),
    "pli_received": ("keyframe_requests", "", {"direction": "in", "type": "pli"}),
    "fir_received": ("keyframe_requests", "", {"direction": "in", "type": "fir"}),
    "pli_sent": ("keyframe_requests", "", {"direction": "out", "type": "pli"}),
    "fir_sent": ("keyframe_requests", "", {"direction": "out", "type": "fir"}),
    "keyframe_requests_throttled": ("keyframe_requests_throttled", "", {}),
    "srtp_failures": ("srtp_failures", "", {}),
    "dropped_sends": ("dropped_sends", "", {"layer": "peer"}),
}
_FAMILY_HELP = {
    "packets": "RTP/RTCP packets to and from peers, by direction and kind (rtx: retransmissions "
    "sent for NACKs, or received from publishers; padding: publishers' RTX probes)",
    "rtp_payload_bytes": "RTP payload octets received from publishers and sent to subscribers",
    "nack_requests": "sequence numbers in NACKs: received from subscribers, answered from the "
    "cache, sent to publishers",
    "keyframe_requests": "PLI/FIR keyframe requests received from subscribers and sent to "
    "publishers",
    "keyframe_requests_throttled": "keyframe requests held back by the per-track throttle",
    "srtp_failures": "SRTP/SRTCP packets that failed authentication or replay checks",
    "dropped_sends": "packets not sent: by a peer without keys or path, or by a full socket",
}


class SfuCollector(Collector):
    """Reads one SFU (duck-typed: an object without some attribute just lacks those series)."""

    def __init__(self, sfu: Any, node: str, *, room_limit: int = 50) -> None:
        self.sfu = sfu
        self.node = node
        self.room_limit = room_limit
        #: which build this process runs (fixed at import: read once, not per scrape)
        self._compiled = len(compiled_modules())
        #: room → (time, payload octets in, bits per second) of the last estimate
        self._bitrates: dict[str, tuple[float, int, float]] = {}

    def collect(self) -> Iterator[Metric]:
        sfu, node = self.sfu, self.node
        rooms: dict[str, Any] = getattr(sfu, "rooms", {})
        outboxes: dict[str, Any] = getattr(sfu, "_outboxes", {})
        gauges = {
            "rooms": ("rooms with a member on this node", len(rooms)),
            "publishers": (
                "publishing connections on this node",
                sum(len(r.publishers) for r in rooms.values()),
            ),
            "subscribers": (
                "subscribing connections on this node (seed API and WHEP)",
                sum(len(r.subscribers) for r in rooms.values()),
            ),
            "tracks": (
                "tracks published on this node",
                sum(len(p.tracks) for r in rooms.values() for p in r.publishers.values()),
            ),
            "remote_tracks": (
                "tracks relayed from other nodes for this node's subscribers",
                len(getattr(sfu, "_remote", ())),
            ),
            "outbox": ("state/bus updates waiting for a backend", sum(map(len, outboxes.values()))),
            "outbox_state": ("state updates waiting for Redis", len(outboxes.get("state", ()))),
            "outbox_bus": ("bus updates waiting for NATS", len(outboxes.get("bus", ()))),
            "draining": ("1 while draining (SIGTERM)", int(getattr(sfu, "draining", False))),
            "compiled_modules": (
                "forwarding-path modules running compiled with mypyc (0: pure Python)",
                self._compiled,
            ),
            "half_open": (
                "sessions admitted and still connecting (ICE/DTLS), held against --max-half-open",
                getattr(sfu, "half_open", 0),
            ),
        }
        endpoint = getattr(getattr(sfu, "rtc", None), "endpoint", None)
        if endpoint is not None:
            gauges["peers"] = (
                "peer connections registered on the media endpoint",
                endpoint.peers(),
            )
            gauges["udp_routes"] = (
                "addresses and ICE usernames routed to a peer (demultiplexing entries)",
                endpoint.demux_entries(),
            )
        # Forwarding groups (issue 10): one rewrite per incoming packet per group.
        sources = [t for r in rooms.values() for p in r.publishers.values() for t in p.tracks]
        sources += list(getattr(sfu, "_remote", {}).values())
        fanouts = [f for f in (getattr(s, "fanout", None) for s in sources) if f is not None]
        gauges["forwarding_groups"] = (
            "forwarding groups (one rewrite per packet each) of local and relayed tracks",
            sum(len(f.groups) for f in fanouts),
        )
        gauges["downtracks"] = ("down-tracks fed by those groups", sum(len(f) for f in fanouts))
        for name, (help_text, value) in gauges.items():
            family = GaugeMetricFamily(f"trio_sfu_{name}", help_text, labels=["node"])
            family.add_metric([node], value)
            yield family
        yield from self._member_totals(rooms)
        yield from self._node_stats(getattr(sfu, "stats", None))
        yield from self._rooms(rooms)
        yield from self._feedback(rooms)
        yield from self._plain_counters(sfu)

    # -- totals of every member, live and gone ----------------------------------------------

    def _member_totals(self, rooms: dict[str, Any]) -> Iterator[Metric]:
        totals: dict[str, int] = {}
        stats = getattr(self.sfu, "stats", None)
        if stats is not None:
            totals.update(stats.retired)
        members = [
            m
            for room in rooms.values()
            for m in (*room.publishers.values(), *room.subscribers.values())
        ]
        _add_up((m.counters() for m in members), totals)
        families: dict[str, CounterMetricFamily] = {}
        for key, (family_name, _, labels) in _MEMBER_COUNTERS.items():
            family = families.get(family_name)
            if family is None:
                family = families[family_name] = CounterMetricFamily(
                    f"trio_sfu_{family_name}",
                    _FAMILY_HELP[family_name],
                    labels=["node", *labels],
                )
            family.add_metric([self.node, *labels.values()], totals.get(key, 0))
        endpoint = getattr(getattr(self.sfu, "rtc", None), "endpoint", None)
        if endpoint is not None:
            families["dropped_sends"].add_metric([self.node, "socket"], endpoint.stats.send_dropped)
        yield from families.values()

    # -- joins and timings --------------------------------------------------------------------

    def _node_stats(self, stats: Any) -> Iterator[Metric]:
        if stats is None:
            return
        joins = CounterMetricFamily(
            "trio_sfu_joins",
            "join requests by role (pub, sub, whep) and outcome (ok, or the refusal's kind)",
            labels=["node", "role", "outcome"],
        )
        for (role, outcome), count in sorted(stats.joins.items()):
            joins.add_metric([self.node, role, outcome], count)
        yield joins
        for name, help_text, by_role in (
            ("join_seconds", "from a join request to its SDP answer", stats.join_seconds),
            (
                "connect_seconds",
                "from an accepted join to DTLS up (ICE + DTLS)",
                stats.connect_seconds,
            ),
            ("session_seconds", "how long connections lasted, at their end", stats.session_seconds),
        ):
            family = HistogramMetricFamily(f"trio_sfu_{name}", help_text, labels=["node", "role"])
            for role, buckets in sorted(by_role.items()):
                family.add_metric([self.node, role], buckets.cumulative(), buckets.sum)
            yield family

    # -- per room, bounded ----------------------------------------------------------------

    def _rooms(self, rooms: dict[str, Any]) -> Iterator[Metric]:
        now = time.monotonic()
        publishers = GaugeMetricFamily(
            "trio_sfu_room_publishers",
            "publishers per room on this node (largest rooms)",
            labels=["node", "room"],
        )
        subscribers = GaugeMetricFamily(
            "trio_sfu_room_subscribers",
            "subscribers per room on this node (largest rooms)",
            labels=["node", "room"],
        )
        bitrate = GaugeMetricFamily(
            "trio_sfu_room_bitrate_bps",
            "RTP payload bits per second received from the room's publishers on this node",
            labels=["node", "room"],
        )
        ranked = sorted(
            rooms.values(), key=lambda r: (-(len(r.publishers) + len(r.subscribers)), r.name)
        )
        shown, rest = ranked[: self.room_limit], ranked[self.room_limit :]
        rates = {room.name: self._bitrate(room, now) for room in ranked}
        for name in [n for n in self._bitrates if n not in rates]:
            del self._bitrates[name]
        for room in shown:
            publishers.add_metric([self.node, room.name], len(room.publishers))
            subscribers.add_metric([self.node, room.name], len(room.subscribers))
            bitrate.add_metric([self.node, room.name], rates[room.name])
        if rest:
            publishers.add_metric([self.node, OTHER_ROOMS], sum(len(r.publishers) for r in rest))
            subscribers.add_metric([self.node, OTHER_ROOMS], sum(len(r.subscribers) for r in rest))
            bitrate.add_metric([self.node, OTHER_ROOMS], sum(rates[r.name] for r in rest))
        yield from (publishers, subscribers, bitrate)

    def _bitrate(self, room: Any, now: float) -> float:
        octets = sum(p.counters().get("bytes_in", 0) for p in room.publishers.values())
        last = self._bitrates.get(room.name)
        if last is None:
            self._bitrates[room.name] = (now, octets, 0.0)
            return 0.0
        then, before, rate = last
        if now - then >= BITRATE_WINDOW:
            rate = max(0, octets - before) * 8 / (now - then)
            self._bitrates[room.name] = (now, octets, rate)
        return rate

    # -- what subscribers report (RTCP receiver reports) -----------------------------------

    def _feedback(self, rooms: dict[str, Any]) -> Iterator[Metric]:
        stats = getattr(self.sfu, "stats", None)
        if stats is None:
            return
        subscribers = [m for room in rooms.values() for m in room.subscribers.values()]
        rtt = _merged(stats.retired_rtt, [m.rtt_reports for m in subscribers])
        loss = _merged(stats.retired_loss, [m.loss_reports for m in subscribers])
        for name, help_text, buckets in (
            (
                "subscriber_rtt_seconds",
                "round-trip times in subscribers' receiver reports (one per report block)",
                rtt,
            ),
            (
                "subscriber_loss_ratio",
                "fraction lost in subscribers' receiver reports (one per report block)",
                loss,
            ),
        ):
            family = HistogramMetricFamily(f"trio_sfu_{name}", help_text, labels=["node"])
            family.add_metric([self.node], buckets.cumulative(), buckets.sum)
            yield family

    # -- the socket and the relay -----------------------------------------------------------

    def _plain_counters(self, sfu: Any) -> Iterator[Metric]:
        endpoint = getattr(getattr(sfu, "rtc", None), "endpoint", None)
        if endpoint is not None:
            for name, value in _ints(endpoint.stats):
                family = CounterMetricFamily(
                    f"trio_sfu_udp_{name}",
                    f"media socket: {name.replace('_', ' ')}",
                    labels=["node"],
                )
                family.add_metric([self.node], value)
                yield family
        tcp = getattr(getattr(sfu, "rtc", None), "tcp", None)
        if tcp is not None:  # ICE-TCP (RFC 6544): its connections and its endpoint's counters
            gauge = GaugeMetricFamily(
                "trio_sfu_tcp_connections", "ICE-TCP connections open now", labels=["node"]
            )
            gauge.add_metric([self.node], tcp.connections)
            yield gauge
            for name, value in _ints(tcp.stats):
                family = CounterMetricFamily(
                    f"trio_sfu_tcp_{name}",
                    f"ICE-TCP: {name.replace('_', ' ')}",
                    labels=["node"],
                )
                family.add_metric([self.node], value)
                yield family
        counters = getattr(getattr(sfu, "relay", None), "counters", None)
        if counters is not None:
            for name, value in _ints(counters):
                metric: GaugeMetricFamily | CounterMetricFamily
                if name == "subscriptions":
                    metric = GaugeMetricFamily(
                        "trio_sfu_relay_subscriptions",
                        "media subscriptions open now (one per remote track)",
                        labels=["node"],
                    )
                else:
                    metric = CounterMetricFamily(
                        f"trio_sfu_relay_{name}",
                        f"cross-node relay: {name.replace('_', ' ')}",
                        labels=["node"],
                    )
                metric.add_metric([self.node], value)
                yield metric


class _WithNode(Collector):
    """Another collector's families with our ``node`` label added (process, GC, platform)."""

    def __init__(self, inner: Collector, node: str) -> None:
        self.inner = inner
        self.node = node

    def collect(self) -> Iterable[Metric]:
        for family in self.inner.collect():
            for sample in family.samples:
                sample.labels["node"] = self.node
            yield family


def node_registry(sfu: Any, node: str, *, room_limit: int = 50) -> CollectorRegistry:
    """A registry of its own (no global state: tests run many servers in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SfuCollector(sfu, node, room_limit=room_limit))
    for inner in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
        registry.register(_WithNode(inner, node))
    return registry


#: A sample's value as ``generate_latest`` writes it (Go's float formatting).
_go_float: Callable[[float], str] = floatToGoString


class _One(Collector):
    """One family as a collector: what ``generate_latest`` renders."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterable[Metric]:
        return (self.family,)


@dataclasses.dataclass(slots=True)
class _Template:
    """A family's text as ``generate_latest`` wrote it, less its sample values."""

    # What the text depends on besides the values: type, HELP, unit, and per sample its name,
    # labels (copies, so that a collector reusing its dicts cannot alias them), timestamp,
    # exemplar and native histogram.
    type: str
    documentation: str
    unit: str
    samples: list[tuple[Any, ...]]
    #: the ``# HELP`` and ``# TYPE`` lines
    head: str
    #: per sample, its line up to the value (``name{labels} ``); None: not templatable
    prefixes: list[str] | None


class Renderer:
    """``generate_latest`` at a fraction of its cost per scrape, byte for byte the same text.

    Its cost is per sample — label names checked against regexes, label values escaped,
    labels sorted, each line formatted — ≈ 10 µs a sample, most of a scrape (issue 10:
    the benches scrape every 0.5–1 s). Yet between scrapes a family's text changes only in
    its values: the names, labels, HELP and TYPE stay (the series count does not grow with
    peers). So each family is rendered by ``generate_latest`` itself, alone, when its shape
    (type, HELP, unit, sample names and labels) is new, and kept as its lines less their
    values; a scrape of an unchanged shape appends the values, formatted by the library's
    own ``floatToGoString``. A family ``generate_latest`` writes other than one line per
    sample in order (timestamps, exemplars, OpenMetrics ``_created`` samples it moves) is
    rendered whole each time.
    """

    def __init__(self) -> None:
        self._templates: dict[str, _Template] = {}

    def render(self, families: Iterable[Metric]) -> bytes:
        out: list[str] = []
        append = out.append
        templates = self._templates
        for family in families:
            samples = family.samples
            template = templates.get(family.name)
            if (
                template is None
                or template.type != family.type
                or template.documentation != family.documentation
                or template.unit != family.unit
                or template.samples
                != [
                    (s.name, s.labels, s.timestamp, s.exemplar, s.native_histogram) for s in samples
                ]
            ):
                template = templates[family.name] = _template(family)
            prefixes = template.prefixes
            if prefixes is None:  # not one line per sample: rendered whole, every time
                append(generate_latest(_One(family)).decode("utf-8"))
                continue
            append(template.head)
            out += [
                f"{prefix}{_go_float(s.value)}\n"
                for prefix, s in zip(prefixes, samples, strict=True)
            ]
        return "".join(out).encode("utf-8")


def _template(family: Metric) -> _Template:
    text = generate_latest(_One(family)).decode("utf-8")
    shape = [
        (s.name, dict(s.labels), s.timestamp, s.exemplar, s.native_histogram)
        for s in family.samples
    ]
    # Label values and HELP have their newlines escaped: "\n" only ends lines.
    lines = text.split("\n")[:-1]
    prefixes: list[str] | None = None
    if len(lines) == 2 + len(family.samples) and not any(
        s.timestamp is not None or s.exemplar is not None or s.native_histogram is not None
        for s in family.samples
    ):
        prefixes = []
        for line, sample in zip(lines[2:], family.samples, strict=True):
            value = " " + _go_float(sample.value)
            if not line.endswith(value):
                prefixes = None
                break
            prefixes.append(line[: len(line) - len(value) + 1])
    head = "".join(line + "\n" for line in lines[:2])
    return _Template(family.type, family.documentation, family.unit, shape, head, prefixes)


_RENDERERS: weakref.WeakKeyDictionary[Collector, Renderer] = weakref.WeakKeyDictionary()


def exposition(registry: Collector) -> bytes:
    """The registry's text exposition (format 0.0.4): what ``generate_latest(registry)`` returns,
    through the registry's :class:`Renderer`."""
    renderer = _RENDERERS.get(registry)
    if renderer is None:
        renderer = _RENDERERS[registry] = Renderer()
    return renderer.render(registry.collect())


def _add_up(counters: Iterable[dict[str, int]], totals: dict[str, int]) -> None:
    """Add each dict's values into ``totals``, key by key.

    A scrape adds up every member's counters (hundreds of dicts), and members of one kind
    return the same keys in the same order: so the dicts are grouped by their keys and each
    group summed column-wise by ``zip``/``sum`` in C, rather than key by key in Python."""
    groups: dict[tuple[str, ...], list[Iterable[int]]] = {}
    for each in counters:
        groups.setdefault(tuple(each), []).append(each.values())
    for keys, rows in groups.items():
        for key, total in zip(keys, map(sum, zip(*rows, strict=True)), strict=True):
            totals[key] = totals.get(key, 0) + total


def _merged(first: Buckets, others: list[Buckets]) -> Buckets:
    """``first`` with ``others`` merged in, into a new :class:`Buckets` (column sums in C, as
    :func:`_add_up`; the float sum added up in the same order as one merge after another)."""
    out = Buckets(first.bounds)
    out.counts = [
        sum(column) for column in zip(first.counts, *(o.counts for o in others), strict=True)
    ]
    out.sum = functools.reduce(operator.add, (o.sum for o in others), first.sum)
    return out


def _ints(counters: object) -> Iterator[tuple[str, int]]:
    """The int fields of a (slots) dataclass of counters, inherited ones included."""
    if dataclasses.is_dataclass(counters):
        names: Iterable[str] = [f.name for f in dataclasses.fields(counters)]
    else:
        names = vars(counters)
    for name in names:
        value = getattr(counters, name)
        if isinstance(value, int) and not isinstance(value, bool):
            yield name, value


def metrics_app(registry: CollectorRegistry) -> Any:
    """The ``--metrics-port`` listener: a bare ASGI app answering ``GET /metrics`` (and 404
    to anything else), so that port exposes nothing but metrics."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # websockets: closing without accepting answers 403
        found = scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD")
        body = exposition(registry) if found else b"404 only /metrics is served here\n"
        await send(
            {
                "type": "http.response.start",
                "status": 200 if found else 404,
                "headers": [
                    (b"content-type", (CONTENT_TYPE if found else "text/plain").encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return app
