"""``trio-sfu load``: a packet-level load tester on our own client stack (issue 10).

Synthetic publishers send RTP at real sizes and rates — VP8-shaped video (30 frames/s, each
frame cut into packets of at most 1100 bytes, 1.5 Mbit/s by default) and Opus-sized audio
(50 packets/s) — over real connections to a running server (HTTP POST, ICE, DTLS-SRTP, SCTP
data channel, renegotiation). Every payload carries a send time, so subscribers measure what
they receive without decoding: sequence continuity (loss = holes in each SSRC's numbering) and
the added latency (arrival − send time; publishers and subscribers run on this machine, so one
monotonic clock serves both).

Clients are spread over ``--processes`` worker processes so the tester is not the bottleneck.
Each worker connects its clients, waits until every worker is ready, then runs for
``--duration`` seconds and reports per-second figures (latency as log-binned histograms, so
percentiles merge exactly across workers). The parent shows a live progress bar, scrapes the
server's ``/metrics`` each second for its CPU time, and prints a summary table; ``--json`` and
``--plot`` write the full result.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import re
import secrets
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from trio_sfu.proto.codecs import vp8
from trio_sfu.proto.receive_stats import ReceiveStatistics
from trio_sfu.proto.rtp.packet import find_extension, seq_delta

#: Marks a load-test payload; followed by the send time (monotonic s), a counter and the
#: simulcast stream the packet belongs to (:data:`NO_LAYER` for audio and single-stream video).
MAGIC = b"TSFL"
_STAMP = struct.Struct("!4sdIB")
#: RFC 3550 §5.1: sequence number, timestamp and SSRC, from the second 16-bit word on
_SEQ_TS_SSRC = struct.Struct("!HII")
NO_LAYER = 255
#: The largest video packet payload (a browser's packetiser stays under the path MTU).
VIDEO_PACKET = 1100
VIDEO_FPS = 30
AUDIO_RATE = 50
AUDIO_PAYLOAD = 80
#: Latency histogram: this many bins per decade from 1 µs (bin 0) upwards.
BINS_PER_DECADE = 100
#: Seconds a worker may take to connect all its clients.
CONNECT_TIMEOUT = 60.0
#: ``--simulcast``: the streams of a publisher's video, lowest first, as a browser sends them
#: for a 720p camera (libwebrtc's default scaling 1/4, 1/2, 1): rid, share of
#: ``--video-bitrate`` (the top stream's rate), keyframe width and height.
SIMULCAST = (("q", 0.1, 320, 180), ("h", 0.3, 640, 360), ("f", 1.0, 1280, 720))
#: What the ``LAYER`` command calls each stream, in the same order.
LAYER_NAMES = ("low", "mid", "high")
#: A keyframe request (PLI/FIR) within this long of the last keyframe is not answered again.
KEYFRAME_THROTTLE = 0.3
#: ``--feedback``: a subscriber's transport-cc feedback period (libwebrtc: 50-250 ms by
#: bitrate) and its receiver-report period (RFC 3550 §6.2's minimum, as browsers send)
FEEDBACK_INTERVAL = 0.1
REPORT_INTERVAL = 1.0


@dataclass
class LoadConfig:
    url: str
    rooms: list[str]
    publishers: int = 1
    subscribers: int = 1
    video_bitrate: int = 1_500_000
    audio: bool = True
    duration: float = 10.0
    processes: int = 1
    token: str | None = None
    identity: str = "load"
    host: str = "127.0.0.1"
    keyframe_interval: float = 2.0
    #: subscribers count media from the clear RTP header without decrypting it
    sink: bool = False
    #: publishers send their video as three simulcast streams (:data:`SIMULCAST`)
    simulcast: bool = False
    #: the layer subscribers ask for: "auto" (the SFU chooses), "low"/"mid"/"high", or
    #: "spread" (subscriber i asks for ``LAYER_NAMES[i % 3]``)
    layer: str = "auto"
    #: subscribers send what a browser's receiver sends back: transport-cc feedback and
    #: receiver reports (:class:`Feedback`)
    feedback: bool = False
    #: how often a client retries its POST on no answer or 502/503/504 (a loaded or
    #: draining server answers 503 with Retry-After) before it counts as failed
    retries: int = 8


@dataclass
class Assignment:
    role: str  # "pub" | "sub"
    room: str
    index: int


def assignments(config: LoadConfig) -> list[Assignment]:
    """Every client to start; subscribers first so they see the publishers arrive."""
    out: list[Assignment] = []
    for room in config.rooms:
        out += [Assignment("sub", room, i) for i in range(config.subscribers)]
    for room in config.rooms:
        out += [Assignment("pub", room, i) for i in range(config.publishers)]
    return out


def latency_bin(seconds: float) -> int:
    return max(0, int(math.log10(max(seconds, 1e-6) * 1e6) * BINS_PER_DECADE))


def bin_seconds(index: int) -> float:
    """The upper edge of a latency bin."""
    return 10 ** ((index + 1) / BINS_PER_DECADE) / 1e6


def percentile(histogram: Counter[int], q: float) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bin_seconds(index)
    return bin_seconds(max(histogram))


# -- the worker process -------------------------------------------------------------------


@dataclass
class _Stream:
    """What a subscriber received on one SSRC."""

    first: int
    highest: int
    received: int = 0


@dataclass
class WorkerTotals:
    sent: int = 0
    received: int = 0
    expected: int = 0
    stamped: int = 0
    connected: int = 0
    failed: int = 0
    join_seconds: list[float] = field(default_factory=list)
    #: per subscriber, the fraction of its expected packets that never arrived: the spread
    #: says whether loss at saturation falls on everyone alike or on a few
    subscriber_loss: list[float] = field(default_factory=list)
    #: simulcast video packets delivered, by the stream (layer name) they were sent on
    layers: dict[str, int] = field(default_factory=dict)
    #: per subscriber, the layer of the last simulcast packet it received
    subscriber_layers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Receiver:
    """A subscriber's per-packet check: continuity per SSRC and the send time in the payload."""

    def __init__(self) -> None:
        self.streams: dict[int, _Stream] = {}
        self.latency: Counter[int] = Counter()
        self.received = 0
        self.stamped = 0
        #: simulcast packets by stream index, and the stream of the last one
        self.layers: Counter[int] = Counter()
        self.last_layer = NO_LAYER

    def on_rtp(self, packet: bytes) -> None:
        now = time.monotonic()
        ssrc = int.from_bytes(packet[8:12])
        seq = (packet[2] << 8) | packet[3]
        stream = self.streams.get(ssrc)
        if stream is None:
            stream = self.streams[ssrc] = _Stream(seq, seq)
        else:
            # RFC 3550 A.1: unwrap against the highest seen.
            diff = seq_delta(seq, stream.highest)
            if diff > 0:
                stream.highest += diff
        stream.received += 1
        self.received += 1
        at = packet.find(MAGIC, 12, 12 + 64 + 8)
        if at >= 0 and at + _STAMP.size <= len(packet):
            _, sent, _, layer = _STAMP.unpack_from(packet, at)
            self.latency[latency_bin(now - sent)] += 1
            self.stamped += 1
            if layer != NO_LAYER:
                self.layers[layer] += 1
                self.last_layer = layer

    @property
    def expected(self) -> int:
        return sum(s.highest - s.first + 1 for s in self.streams.values())


class Feedback:
    """What a browser's receiver sends back, so the server does the work it does for one:
    transport-cc feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01) every
    :data:`FEEDBACK_INTERVAL`, which drives its bandwidth estimator and layer choice, and a
    receiver report (RFC 3550 §6.4.2) every :data:`REPORT_INTERVAL` per received stream with
    its loss, interarrival jitter and LSR/DLSR (the server's round-trip time). The report
    blocks come from :class:`ReceiveStatistics`, the arithmetic the server reports on its
    publishers with (RFC 3550 A.1, A.3, A.8).

    Everything is read from the RTP header, which SRTP leaves in the clear (RFC 3711 §3.1):
    the transport-wide number, sequence number, timestamp and SSRC, so ``--sink`` subscribers
    report too, jitter included."""

    def __init__(self, pc: Any, receiver: Receiver) -> None:
        from trio_sfu.proto.twcc import TwccRecorder

        self.pc = pc
        self.receiver = receiver
        self.ssrc = int.from_bytes(secrets.token_bytes(4)) or 1
        self.twcc = TwccRecorder(interval=FEEDBACK_INTERVAL)
        #: per received SSRC, what its report block says
        self.stats: dict[int, ReceiveStatistics] = {}
        #: the transport-cc extension id (None: not negotiated), and the remote description
        #: it was read from: looked up again only when a negotiation replaced that
        self._ext_id: int | None = None
        self._ext_description: object = None
        #: per source: its last SR's NTP time (most and least significant words) and when it
        #: came, kept for a source whose statistics start after it
        self._last_sr: dict[int, tuple[int, int, float]] = {}

    def on_rtp(self, packet: bytes, now: float) -> None:
        seq, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        stats = self.stats.get(ssrc)
        if stats is None:
            stats = self._new_source(ssrc, packet[1] & 0x7F)
        stats.update(seq, timestamp, now)
        description = self.pc.jsep.current_remote_description
        if description is not self._ext_description:  # (re)negotiated since the last look
            self._ext_description = description
            self._ext_id = self._transport_cc_id()
        ext_id = self._ext_id
        if ext_id is not None:
            value = find_extension(packet, ext_id)
            if value is not None and len(value) >= 2:
                self.twcc.record((value[0] << 8) | value[1], now)

    def _new_source(self, ssrc: int, payload_type: int) -> ReceiveStatistics:
        """Statistics for an SSRC first heard, in its payload format's clock rate (RFC 3550
        A.8 counts jitter in timestamp units); 90 kHz, video's, if the type is unknown."""
        clock_rate = 90000
        for t in self.pc.transceivers:
            codec = t.codec(payload_type)
            if codec is not None:
                clock_rate = codec.clock_rate
                break
        stats = self.stats[ssrc] = ReceiveStatistics(clock_rate)
        sr = self._last_sr.get(ssrc)
        if sr is not None:
            stats.on_sender_report(*sr)
        return stats

    def _transport_cc_id(self) -> int | None:
        from trio_sfu.proto.capabilities import URI_TRANSPORT_CC

        # RFC 8843 §9.1: one id per URI across a BUNDLE group's sections; RFC 8285 §7: each
        # offer/answer sets the mapping, so a renegotiation may add the extension or move it.
        for t in self.pc.transceivers:
            ext_id = t.extension_id(URI_TRANSPORT_CC) if t.receiving else None
            if ext_id is not None:
                return int(ext_id)
        return None

    def on_rtcp(self, packets: list[Any], now: float) -> None:
        from trio_sfu.proto.rtcp import SenderReport

        for p in packets:
            if isinstance(p, SenderReport):
                self._last_sr[p.ssrc] = (p.ntp_msw, p.ntp_lsw, now)
                stats = self.stats.get(p.ssrc)
                if stats is not None:
                    stats.on_sender_report(p.ntp_msw, p.ntp_lsw, now)

    def send_feedback(self, now: float) -> None:
        streams = self.receiver.streams
        media_ssrc = next(iter(streams), 0)
        for fb in self.twcc.build_feedback(now, self.ssrc, media_ssrc):
            self.pc.send_rtcp(fb.serialize())

    def send_report(self, now: float) -> None:
        from trio_sfu.proto.rtcp import ReceiverReport

        # RFC 3550 §6.4: at most 31 report blocks (RC is 5 bits)
        blocks = [stats.report_block(ssrc, now) for ssrc, stats in list(self.stats.items())[:31]]
        if blocks:
            self.pc.send_rtcp(ReceiverReport(self.ssrc, blocks).serialize())


async def _publisher(
    config: LoadConfig,
    job: Assignment,
    totals: WorkerTotals,
    started: Any,
    go: Any,
    reader: Any,
) -> None:
    import trio

    from trio_sfu.client.sfu import PublisherClient, http_signal

    video = config.video_bitrate > 0
    user = f"{config.identity}.{job.room}.p{job.index}"
    peer_id = f"{user}-{secrets.token_hex(3)}"
    client = PublisherClient(
        peer_id,
        audio=config.audio,
        video=video,
        simulcast=[rid for rid, *_ in SIMULCAST] if config.simulcast else None,
        host=config.host,
        shared_reader=reader,
    )
    signal = http_signal(config.url, "pub", job.room, peer_id, **_http_options(config))
    async with trio.open_nursery() as nursery:
        begin = time.monotonic()
        try:
            await nursery.start(client.connect, signal)
            await client.wait_open(CONNECT_TIMEOUT)
        except Exception as exc:  # a failed join is a result, not a crash of the tester
            totals.failed += 1
            totals.errors.append(f"{peer_id}: {exc}")
            nursery.cancel_scope.cancel()
            started()
            return
        totals.join_seconds.append(time.monotonic() - begin)
        totals.connected += 1
        started()
        await go.wait()
        await _send_media(config, client, totals)
        client.stop()
        nursery.cancel_scope.cancel()


@dataclass
class _VideoStream:
    """One stream a publisher sends: its whole video, or one simulcast stream of it."""

    rid: str | None
    layer: int  # index into SIMULCAST, NO_LAYER for single-stream video
    ssrc: int
    per_frame: int
    packet_size: int
    width: int  # what its keyframes announce (RFC 6386 §9.1)
    height: int
    picture_id: int = 0
    keyframe_wanted: bool = True
    last_keyframe: float = -math.inf


def _video_streams(config: LoadConfig, t: Any) -> list[_VideoStream]:
    """The streams of a video transceiver: one per simulcast rid the answer took, else one."""
    plan = {rid: (i, share, w, h) for i, (rid, share, w, h) in enumerate(SIMULCAST)}
    wanted = [(rid, ssrc, *plan[rid]) for rid, ssrc in t.send_rids.items() if rid in plan]
    if not wanted:
        wanted = [(None, t.sender_ssrc, NO_LAYER, 1.0, 1280, 720)]
    streams = []
    for rid, ssrc, layer, share, width, height in wanted:
        frame_bytes = config.video_bitrate * share / 8 / VIDEO_FPS
        per_frame = max(1, math.ceil(frame_bytes / VIDEO_PACKET))
        size = max(64, int(frame_bytes / per_frame))
        streams.append(_VideoStream(rid, layer, ssrc, per_frame, size, width, height))
    return streams


def _answer_keyframe_requests(client: Any, streams: list[_VideoStream]) -> None:
    """PLI (RFC 4585 §6.3.1) or FIR (RFC 5104 §4.3.1) for a stream: its next frame is a
    keyframe, as a browser's encoder answers (at most one per :data:`KEYFRAME_THROTTLE`).
    The SFU asks when a subscriber joins or switches to a simulcast stream."""
    from trio_sfu.proto.rtcp import Fir, Pli

    by_ssrc = {s.ssrc: s for s in streams}

    def on_rtcp(packets: list[Any], now: float) -> None:
        for p in packets:
            if isinstance(p, Pli):
                targets = [p.media_ssrc]
            elif isinstance(p, Fir):
                targets = [e.ssrc for e in p.entries]
            else:
                continue
            for ssrc in targets:
                stream = by_ssrc.get(ssrc)
                if (
                    stream is not None
                    and time.monotonic() - stream.last_keyframe >= KEYFRAME_THROTTLE
                ):
                    stream.keyframe_wanted = True

    client.pc.on_rtcp = on_rtcp


async def _send_media(config: LoadConfig, client: Any, totals: WorkerTotals) -> None:
    """Frames at 30/s (each cut in ≤ 1100-byte packets, every simulcast stream at its own
    rate) and audio at 50/s until the end."""
    import trio

    pc = client.pc
    end = time.monotonic() + config.duration
    next_video = next_audio = time.monotonic()
    next_key = next_video
    counter = 0
    video_t = client.video if client.video is not None and client.video.sending else None
    audio_t = client.audio if client.audio is not None and client.audio.sending else None
    streams = _video_streams(config, video_t) if video_t is not None else []
    _answer_keyframe_requests(client, streams)
    while True:
        now = time.monotonic()
        if now >= end:
            return
        if video_t is not None and now >= next_video:
            periodic = now >= next_key
            if periodic:
                next_key = now + config.keyframe_interval
            timestamp = int(next_video * 90000) & 0xFFFFFFFF
            for stream in streams:
                keyframe = periodic or stream.keyframe_wanted
                if keyframe:
                    stream.keyframe_wanted, stream.last_keyframe = False, now
                for i in range(stream.per_frame):
                    counter += 1
                    stamp = _STAMP.pack(MAGIC, time.monotonic(), counter, stream.layer)
                    # RFC 7741 §4.2: a 15-bit picture id; S=1 on a frame's first packet only
                    payload = vp8.build_payload(
                        stream.packet_size,
                        keyframe=keyframe,
                        start=i == 0,
                        picture_id=stream.picture_id,
                        width=stream.width,
                        height=stream.height,
                        body=stamp,
                    )
                    packet = client.packet(video_t, payload, stream.rid)
                    packet.marker = i == stream.per_frame - 1
                    packet.timestamp = timestamp
                    pc.send_rtp(packet.serialize())
                    totals.sent += 1
                stream.picture_id = (stream.picture_id + 1) & 0x7FFF
            next_video += 1 / VIDEO_FPS
        if audio_t is not None and now >= next_audio:
            counter += 1
            stamp = _STAMP.pack(MAGIC, time.monotonic(), counter, NO_LAYER)
            packet = client.packet(audio_t, stamp + bytes(AUDIO_PAYLOAD - len(stamp)))
            packet.timestamp = int(next_audio * 48000) & 0xFFFFFFFF
            pc.send_rtp(packet.serialize())
            totals.sent += 1
            next_audio += 1 / AUDIO_RATE
        due = min(
            next_video if video_t is not None else end,
            next_audio if audio_t is not None else end,
            end,
        )
        await trio.sleep(max(0.0, due - time.monotonic()))


def subscriber_layer(config: LoadConfig, index: int) -> str | None:
    """The ``LAYER`` subscriber ``index`` asks for (None: the SFU chooses)."""
    if config.layer == "auto":
        return None
    if config.layer == "spread":
        return LAYER_NAMES[index % len(LAYER_NAMES)]
    return config.layer


async def _subscriber(
    config: LoadConfig,
    job: Assignment,
    totals: WorkerTotals,
    receivers: list[Receiver],
    feedbacks: list[Feedback],
    started: Any,
    go: Any,
    reader: Any,
) -> None:
    import trio

    from trio_sfu.client.sfu import SubscriberClient, http_signal

    user = f"{config.identity}.{job.room}.s{job.index}"
    peer_id = f"{user}-{secrets.token_hex(3)}"
    client = SubscriberClient(
        peer_id,
        host=config.host,
        shared_reader=reader,
        layer=subscriber_layer(config, job.index),
    )
    receiver = Receiver()
    feedback = Feedback(client.pc, receiver) if config.feedback else None

    def on_packet(packet: bytes, now: float) -> None:
        receiver.on_rtp(packet)
        if feedback is not None:
            feedback.on_rtp(packet, now)

    if feedback is not None:
        client.pc.on_rtcp = feedback.on_rtcp
    client.pc.on_rtp = lambda _stream, packet, now: on_packet(packet, now)
    if config.sink:
        _sink(client.pc, on_packet, go)
    signal = http_signal(config.url, "sub", job.room, peer_id, **_http_options(config))
    async with trio.open_nursery() as nursery:
        begin = time.monotonic()
        try:
            await nursery.start(client.connect, signal)
            await client.wait_open(CONNECT_TIMEOUT)
        except Exception as exc:
            totals.failed += 1
            totals.errors.append(f"{peer_id}: {exc}")
            nursery.cancel_scope.cancel()
            started()
            return
        totals.join_seconds.append(time.monotonic() - begin)
        totals.connected += 1
        receivers.append(receiver)
        if feedback is not None:
            feedbacks.append(feedback)
        started()
        await go.wait()
        await trio.sleep(config.duration + 1.0)  # the last packets in flight
        client.stop()
        nursery.cancel_scope.cancel()


def _sink(pc: Any, on_packet: Callable[[bytes, float], None], go: Any) -> None:
    """Once media runs, count RTP from its header without decrypting it: the header is in the
    clear (RFC 3711 §3.1), so sequence continuity (loss) is still measured, latency is not
    (the stamp is encrypted). A decrypting subscriber costs this client ≈ 4× what its packets
    cost the server, so without a sink one client core cannot fill a server core by fan-out.
    Set before the peer runs: its reader is handed ``pc._received`` when it starts."""
    through = pc._received

    def received(data: bytes, addr: tuple[str, int], now: float) -> None:
        # RFC 7983: a first byte of 128–191 is RTP or RTCP; RFC 5761 §4: RTCP's second byte
        # (its packet type) is 192–223.
        if (
            go.is_set()
            and len(data) > 12
            and 127 < data[0] < 192
            and not 191 < data[1] < 224
            and addr == pc.remote_address
        ):
            on_packet(data, now)
            return
        through(data, addr, now)

    pc._received = received


async def _feedback_loop(feedbacks: list[Feedback]) -> None:
    """Every subscriber's feedback from one task (one wake-up per period for all of them)."""
    import trio

    next_report = trio.current_time() + REPORT_INTERVAL
    while True:
        await trio.sleep(FEEDBACK_INTERVAL)
        now = trio.current_time()
        report = now >= next_report
        if report:
            next_report += REPORT_INTERVAL
        for feedback in feedbacks:
            feedback.send_feedback(now)
            if report:
                feedback.send_report(now)


def _http_options(config: LoadConfig) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    return {"headers": headers, "timeout": 30.0, "retries": config.retries}


def _worker_main(
    worker: int, config: LoadConfig, jobs: list[Assignment], out: Any, go_flag: Any
) -> None:
    """One worker process: connect ``jobs``, wait for ``go_flag``, report every second."""
    import trio

    from trio_sfu.client.peer import SharedReader

    try:
        import gc

        gc.freeze()
    except Exception:  # pragma: no cover - best effort
        pass

    async def main() -> None:
        totals = WorkerTotals()
        receivers: list[Receiver] = []
        feedbacks: list[Feedback] = []
        go = trio.Event()
        ready = 0

        def started() -> None:
            nonlocal ready
            ready += 1

        # One reader task for every client socket of this worker: one wake-up drains all.
        reader = SharedReader()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            if config.feedback:
                nursery.start_soon(_feedback_loop, feedbacks)
            for job in jobs:
                if job.role == "pub":
                    nursery.start_soon(_publisher, config, job, totals, started, go, reader)
                else:
                    nursery.start_soon(
                        _subscriber,
                        config,
                        job,
                        totals,
                        receivers,
                        feedbacks,
                        started,
                        go,
                        reader,
                    )
                await trio.sleep(0)
            with trio.move_on_after(CONNECT_TIMEOUT + 5):
                while ready < len(jobs):
                    await trio.sleep(0.05)
            out.put(("ready", worker, totals.connected, totals.failed))
            await trio.to_thread.run_sync(go_flag.wait)
            go.set()
            start = time.monotonic()
            last_received = last_expected = last_sent = 0
            last_hist: Counter[int] = Counter()
            second = 0
            while time.monotonic() < start + config.duration + 1.0:
                second += 1
                await trio.sleep_until(_trio_deadline(start + second))
                received = sum(r.received for r in receivers)
                expected = sum(r.expected for r in receivers)
                hist: Counter[int] = Counter()
                for r in receivers:
                    hist.update(r.latency)
                delta = hist.copy()
                delta.subtract(last_hist)
                delta = +delta
                out.put(
                    (
                        "tick",
                        worker,
                        second,
                        received - last_received,
                        expected - last_expected,
                        totals.sent - last_sent,
                        dict(delta),
                    )
                )
                last_received, last_expected, last_sent, last_hist = (
                    received,
                    expected,
                    totals.sent,
                    hist,
                )
            totals.received = sum(r.received for r in receivers)
            totals.expected = sum(r.expected for r in receivers)
            totals.stamped = sum(r.stamped for r in receivers)
            totals.subscriber_loss = [
                max(0, r.expected - r.received) / r.expected for r in receivers if r.expected
            ]
            layers: Counter[int] = Counter()
            for r in receivers:
                layers.update(r.layers)
            totals.layers = {LAYER_NAMES[i]: n for i, n in sorted(layers.items())}
            totals.subscriber_layers = [
                LAYER_NAMES[r.last_layer] for r in receivers if r.last_layer != NO_LAYER
            ]
            final: Counter[int] = Counter()
            for r in receivers:
                final.update(r.latency)
            out.put(("done", worker, asdict(totals), dict(final)))
            nursery.cancel_scope.cancel()

    def _trio_deadline(monotonic: float) -> float:
        return trio.current_time() + (monotonic - time.monotonic())

    try:
        trio.run(main)
    except BaseException as exc:  # report, never hang the parent
        import traceback

        detail = "".join(traceback.format_exception(exc))
        out.put(("failed", worker, f"{type(exc).__name__}: {exc}\n{detail[-3000:]}"))


# -- the parent ---------------------------------------------------------------------------


def _scrape(url: str, token: str | None) -> dict[str, float]:
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/metrics", timeout=2.0)
    except httpx.HTTPError:
        return {}
    if response.status_code != 200:
        return {}
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        # Series whose only label is the node's are keyed by their bare name.
        name = re.sub(r'\{node="[^"]*"\}$', "", name)
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def run(config: LoadConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole test and return the result (what ``--json`` writes)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    jobs = assignments(config)
    processes = max(1, min(config.processes, len(jobs)))
    shares: list[list[Assignment]] = [jobs[i::processes] for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go = ctx.Event()
    workers = [
        ctx.Process(target=_worker_main, args=(i, config, share, out, go), daemon=True)
        for i, share in enumerate(shares)
    ]
    console = Console(stderr=True)
    connected = failed = 0
    errors: list[str] = []
    seconds: dict[int, dict[str, Any]] = {}
    finals: list[dict[str, Any]] = []
    latency_total: Counter[int] = Counter()
    cpu: dict[int, float] = {}
    out_packets: dict[int, float] = {}
    for w in workers:
        w.start()
    try:
        ready = 0
        deadline = time.monotonic() + CONNECT_TIMEOUT + 30
        with console.status(f"connecting {len(jobs)} clients over {processes} process(es)…"):
            while ready < processes and time.monotonic() < deadline:
                try:
                    msg = out.get(timeout=0.5)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers):
                        break
                    continue
                if msg[0] == "ready":
                    ready += 1
                    connected += msg[2]
                    failed += msg[3]
                elif msg[0] == "failed":
                    errors.append(f"worker {msg[1]}: {msg[2]}")
                    ready += 1
        go.set()
        start = time.monotonic()
        base = _scrape(config.url, config.token)
        last_cpu = base.get("process_cpu_seconds_total")
        last_out = base.get("trio_sfu_udp_datagrams_out_total")
        last_scrape = start
        done = 0
        columns = (
            TextColumn("[bold]load"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
            task = bar.add_task("load", total=config.duration, status="")
            live = sum(1 for w in workers if w.is_alive())
            while done < live:
                try:
                    msg = out.get(timeout=0.2)
                except queue.Empty:
                    msg = None
                    if not any(w.is_alive() for w in workers) and out.empty():
                        break
                now = time.monotonic()
                if now - last_scrape >= 1.0:
                    second = round(now - start)
                    metrics = _scrape(config.url, config.token)
                    value = metrics.get("process_cpu_seconds_total")
                    if value is not None and last_cpu is not None:
                        cpu[second] = 100 * (value - last_cpu) / (now - last_scrape)
                    last_cpu = value
                    sent = metrics.get("trio_sfu_udp_datagrams_out_total")
                    if sent is not None and last_out is not None:
                        out_packets[second] = (sent - last_out) / (now - last_scrape)
                    last_out = sent
                    last_scrape = now
                if msg is None:
                    continue
                if msg[0] == "tick":
                    _, _, second, received, expected, sent_pkts, hist = msg
                    row = seconds.setdefault(
                        second, {"delivered": 0, "expected": 0, "sent": 0, "hist": Counter()}
                    )
                    row["delivered"] += received
                    row["expected"] += expected
                    row["sent"] += sent_pkts
                    row["hist"].update({int(k): v for k, v in hist.items()})
                    p50 = percentile(row["hist"], 0.5)
                    status = (
                        f"{connected} clients · {row['delivered']} pkt/s delivered"
                        + (f" · p50 {p50 * 1000:.2f} ms" if p50 is not None else "")
                        + (f" · server CPU {cpu[max(cpu)]:.0f} %" if cpu else "")
                    )
                    bar.update(task, completed=min(second, config.duration), status=status)
                elif msg[0] == "done":
                    done += 1
                    finals.append(msg[2])
                    latency_total.update({int(k): v for k, v in msg[3].items()})
                elif msg[0] == "failed":
                    done += 1
                    errors.append(f"worker {msg[1]}: {msg[2]}")
    finally:
        go.set()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    result = _result(
        config,
        processes,
        connected,
        failed,
        errors,
        seconds,
        finals,
        latency_total,
        cpu,
        out_packets,
    )
    # When media began, on this machine's monotonic clock: a bench running other processes
    # beside this one lines their figures up with it.
    result["media_started_monotonic"] = start
    return result


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _result(
    config: LoadConfig,
    processes: int,
    connected: int,
    failed: int,
    errors: list[str],
    seconds: dict[int, dict[str, Any]],
    finals: list[dict[str, Any]],
    latency: Counter[int],
    cpu: dict[int, float],
    out_packets: dict[int, float],
) -> dict[str, Any]:
    sent = sum(f["sent"] for f in finals)
    received = sum(f["received"] for f in finals)
    expected = sum(f["expected"] for f in finals)
    joins = sorted(j for f in finals for j in f["join_seconds"])
    spread = sorted(x for f in finals for x in f["subscriber_loss"])
    layers: Counter[str] = Counter()
    on_layer: Counter[str] = Counter()
    for f in finals:
        layers.update(f["layers"])
        on_layer.update(f["subscriber_layers"])
    for f in finals:
        errors += f["errors"]
    lost = max(0, expected - received)
    rows = []
    for second in sorted(seconds):
        if second > math.ceil(config.duration):
            continue  # the drain after the publishers stopped (counted in the totals)
        row = seconds[second]
        missing = max(0, row["expected"] - row["delivered"])
        rows.append(
            {
                "t": second,
                "sent": row["sent"],
                "delivered": row["delivered"],
                "lost": missing,
                "loss": missing / row["expected"] if row["expected"] else 0.0,
                "latency_p50_ms": _ms(percentile(row["hist"], 0.5)),
                "latency_p99_ms": _ms(percentile(row["hist"], 0.99)),
                "server_cpu_percent": round(cpu[second], 1) if second in cpu else None,
                "server_out_packets_per_s": (
                    round(out_packets[second]) if second in out_packets else None
                ),
            }
        )
    measured_cpu = [v for k, v in cpu.items() if 1 <= k <= config.duration]

    def at(q: float) -> float | None:
        return joins[min(len(joins) - 1, int(q * len(joins)))] if joins else None

    return {
        "config": asdict(config) | {"token": bool(config.token), "processes": processes},
        "clients": {
            "publishers": config.publishers * len(config.rooms),
            "subscribers": config.subscribers * len(config.rooms),
            "connected": connected,
            "failed": failed,
        },
        "join_ms": {
            "p50": _ms(at(0.5)),
            "p99": _ms(at(0.99)),
            "max": _ms(joins[-1] if joins else None),
        },
        "packets": {
            "sent": sent,
            "delivered": received,
            "expected": expected,
            "lost": lost,
            "loss": lost / expected if expected else 0.0,
        },
        "subscriber_loss": {
            "subscribers": len(spread),
            "min": spread[0] if spread else None,
            "median": spread[len(spread) // 2] if spread else None,
            "max": spread[-1] if spread else None,
        },
        # Simulcast video by the stream it was sent on, and how many subscribers the last
        # packet found on each (decrypting subscribers only: a sink cannot read the stamp).
        "layers": {
            "delivered": {name: layers[name] for name in LAYER_NAMES if name in layers},
            "subscribers": {name: on_layer[name] for name in LAYER_NAMES if name in on_layer},
        },
        "latency_ms": {
            "p50": _ms(percentile(latency, 0.5)),
            "p99": _ms(percentile(latency, 0.99)),
            "max": _ms(bin_seconds(max(latency)) if latency else None),
        },
        "server": {
            "cpu_percent": (
                round(sum(measured_cpu) / len(measured_cpu), 1) if measured_cpu else None
            ),
        },
        "seconds": rows,
        "errors": errors[:50],
    }


def summary_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="trio-sfu load", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    c, p, lat, j = result["clients"], result["packets"], result["latency_ms"], result["join_ms"]
    duration = result["config"]["duration"]
    table.add_row("clients connected / failed", f"{c['connected']} / {c['failed']}")
    table.add_row("join (POST → data channel) p50 / p99", f"{j['p50']} / {j['p99']} ms")
    table.add_row("packets sent by publishers", str(p["sent"]))
    table.add_row("packets delivered to subscribers", str(p["delivered"]))
    table.add_row("delivered per second", f"{p['delivered'] / duration:.0f}")
    table.add_row("lost", f"{p['lost']} ({100 * p['loss']:.3f} %)")
    spread = result["subscriber_loss"]
    if spread["subscribers"]:
        table.add_row(
            "loss per subscriber min / median / max",
            " / ".join(f"{100 * spread[k]:.3f} %" for k in ("min", "median", "max")),
        )
    table.add_row("added latency p50 / p99 / max", f"{lat['p50']} / {lat['p99']} / {lat['max']} ms")
    layers = result["layers"]
    if layers["delivered"]:
        table.add_row(
            "simulcast packets delivered low / mid / high",
            " / ".join(str(layers["delivered"].get(n, 0)) for n in LAYER_NAMES),
        )
        table.add_row(
            "subscribers ending on low / mid / high",
            " / ".join(str(layers["subscribers"].get(n, 0)) for n in LAYER_NAMES),
        )
    cpu = result["server"]["cpu_percent"]
    table.add_row("server CPU (from /metrics)", "n/a" if cpu is None else f"{cpu} %")
    if result["errors"]:
        table.add_row("errors", str(len(result["errors"])))
    return table


def plot(result: dict[str, Any], path: str) -> None:
    """Per-second delivered packets, loss, added latency and server CPU, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["seconds"]
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    axes[0].plot(t, [r["delivered"] for r in rows], marker=".")
    axes[0].set_ylabel("delivered pkt/s")
    axes[1].plot(t, [100 * r["loss"] for r in rows], marker=".", color="tab:red")
    axes[1].set_ylabel("loss %")
    axes[2].plot(t, [r["latency_p50_ms"] for r in rows], marker=".", label="p50")
    axes[2].plot(t, [r["latency_p99_ms"] for r in rows], marker=".", label="p99")
    axes[2].set_ylabel("added latency ms")
    axes[2].legend()
    cpu = [(r["t"], r["server_cpu_percent"]) for r in rows if r["server_cpu_percent"] is not None]
    if cpu:
        axes[3].plot([x for x, _ in cpu], [y for _, y in cpu], marker=".", color="tab:green")
    else:
        axes[3].text(
            0.5,
            0.5,
            "server CPU not readable from /metrics",
            ha="center",
            transform=axes[3].transAxes,
        )
    axes[3].set_ylabel("server CPU %")
    axes[3].set_xlabel("second")
    c = result["clients"]
    fig.suptitle(f"trio-sfu load: {c['publishers']} publishers, {c['subscribers']} subscribers")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- command line -------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _bitrate(text: str) -> int:
    units = {"k": 1_000, "m": 1_000_000}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a bitrate like 1.5M, 800k or 0"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-sfu load",
        description="Load-test a running trio-sfu with synthetic publishers and subscribers on "
        "trio-sfu's own client stack; prints a summary, optionally JSON and a plot.",
    )
    parser.add_argument("--url", required=True, help="the server's HTTP base URL")
    parser.add_argument(
        "--room", action="append", dest="rooms", metavar="NAME", help="a room to load (repeatable)"
    )
    parser.add_argument(
        "--rooms",
        type=_non_negative_int,
        default=None,
        metavar="N",
        dest="room_count",
        help="load N rooms named load-0 … load-N-1",
    )
    parser.add_argument("--publishers", type=_non_negative_int, default=1, help="per room (1)")
    parser.add_argument("--subscribers", type=_non_negative_int, default=1, help="per room (1)")
    parser.add_argument(
        "--video-bitrate",
        type=_bitrate,
        default=1_500_000,
        metavar="BPS",
        help="per publisher, e.g. 1.5M (default), 800k; 0 for no video",
    )
    parser.add_argument(
        "--audio",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Opus-sized audio at 50 packets/s (default on)",
    )
    parser.add_argument("--duration", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument(
        "--processes",
        type=_non_negative_int,
        default=1,
        help="worker processes the clients are spread over (1)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TRIO_SFU_TOKEN"),
        help="Bearer token for servers with --api-secret (env TRIO_SFU_TOKEN)",
    )
    parser.add_argument("--identity", default="load", help="user-name prefix of the clients")
    parser.add_argument("--host", default="127.0.0.1", help="local address the clients bind")
    parser.add_argument(
        "--sink",
        action="store_true",
        help="subscribers count packets from the RTP header without decrypting (loss only, no "
        "latency): a cheap receiver, so one client core can saturate a server by fan-out",
    )
    parser.add_argument(
        "--simulcast",
        action="store_true",
        help="publishers send their video as three simulcast streams q/h/f (RFC 8853) at 10, "
        "30 and 100 %% of --video-bitrate, 320/640/1280 wide",
    )
    parser.add_argument(
        "--layer",
        choices=("auto", *LAYER_NAMES, "spread"),
        default="auto",
        help="with --simulcast, the stream subscribers ask for (LAYER): auto (the SFU "
        "chooses, default), low, mid, high, or spread (subscriber i takes low/mid/high by i %% 3)",
    )
    parser.add_argument(
        "--feedback",
        action="store_true",
        help="subscribers send what a browser's receiver sends: transport-cc feedback every "
        "100 ms and a receiver report a second (the server's estimator and RTT then work)",
    )
    parser.add_argument(
        "--retries",
        type=_non_negative_int,
        default=8,
        metavar="N",
        help="times a client retries its POST when the server does not answer or answers "
        "502/503/504, after Retry-After or a back-off of up to 4 s (8; 0: fail at once)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON ('-': stdout)")
    parser.add_argument("--plot", metavar="PNG", help="write a per-second plot (matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    return parser


def config_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> LoadConfig:
    rooms = list(args.rooms or [])
    if args.room_count:
        rooms += [f"load-{i}" for i in range(args.room_count)]
    if not rooms:
        rooms = ["load"]
    if args.duration <= 0 or args.duration > 86400:
        parser.error("--duration must be between 0 and 86400 seconds")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.publishers + args.subscribers == 0:
        parser.error("nothing to do: --publishers and --subscribers are both 0")
    if args.video_bitrate == 0 and not args.audio:
        parser.error("publishers would send nothing: give --video-bitrate or --audio")
    if args.simulcast and args.video_bitrate == 0:
        parser.error("--simulcast needs video: give --video-bitrate")
    if args.layer != "auto" and not args.simulcast:
        parser.error(f"--layer {args.layer} needs --simulcast (a single stream has one layer)")
    return LoadConfig(
        url=args.url,
        rooms=rooms,
        publishers=args.publishers,
        subscribers=args.subscribers,
        video_bitrate=args.video_bitrate,
        audio=args.audio,
        duration=args.duration,
        processes=args.processes,
        token=args.token,
        identity=args.identity,
        host=args.host,
        sink=args.sink,
        simulcast=args.simulcast,
        layer=args.layer,
        feedback=args.feedback,
        retries=args.retries,
    )


def main(argv: Sequence[str]) -> int:
    from rich.console import Console

    parser = build_parser()
    args = parser.parse_args(list(argv))
    config = config_from(args, parser)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'trio-sfu[load]'")
    # SIGTERM unwinds like Ctrl-C: the worker processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(config, progress=not args.no_progress)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        Console().print(summary_table(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    if args.plot:
        plot(result, args.plot)
    return 0 if result["clients"]["connected"] else 1
