"""The load side of ``bench.janus``: one publisher and N subscribers, on our own client stack,
against trio-sfu (its HTTP + data-channel protocol) or Janus (its HTTP API, VideoRoom plugin).

The media and the receivers are the same for both servers: the publisher sends with
``trio_sfu.client.load``'s pacing (VP8-shaped frames at 30/s cut into ≤ 1100-byte packets,
Opus-sized audio at 50/s, a send stamp in every payload), and each subscriber counts what it
decrypts with ``load.Receiver`` (continuity per SSRC, added latency) and decodes nothing.

Only the signalling differs. Janus's VideoRoom (https://janus.conf.meetecho.com/docs/videoroom)
over its REST transport: ``create`` a session, ``attach`` ``janus.plugin.videoroom`` per peer,
the publisher sends ``joinandconfigure`` with our offer and gets Janus's answer in an event; a
subscriber sends ``join`` (``ptype: subscriber``, the publisher's feed), gets Janus's offer in
the ``attached`` event and sends ``start`` with our answer. Events arrive on the session's long
poll (``GET /janus/<session>``), which also keeps the session alive.

Our client is always the controlling ICE agent; Janus runs with ``ice_lite`` (as trio-sfu is a
lite server), so no role conflict arises even when Janus is the offerer (RFC 8445 §6.1.1).
"""

from __future__ import annotations

import math
import os
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from trio_sfu.client import load
from trio_sfu.client.peer import ClientPeerConnection, SharedReader
from trio_sfu.client.sfu import PublisherClient, SubscriberClient, http_signal

TICK = os.sysconf("SC_CLK_TCK")
#: The VideoRoom room the bench configures (janus.plugin.videoroom.jcfg, ``room-1234``).
ROOM = 1234


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, to the nanosecond: the sum of each task's
    ``/proc/<pid>/task/<tid>/schedstat`` (its first field, ns on a CPU). ``/proc/<pid>/stat``
    counts in clock ticks (10 ms), too coarse for a few seconds of a few % CPU; a thread that
    ends inside the window would drop out of this sum, which ``stat_seconds`` would show."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return total / 1e9


def stat_seconds(pid: int) -> float:
    """utime + stime of the whole process, exited threads included (proc(5) fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def udp_drops() -> tuple[int, int]:
    """(RcvbufErrors, SndbufErrors) of this network namespace's UDP (``/proc/net/snmp``):
    datagrams dropped at a full receive buffer (clients falling behind) and sends refused at
    a full send buffer (a server sending faster than the kernel drains, a dropped packet)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")]), int(rows[1][rows[0].index("SndbufErrors")])


@dataclass
class Result:
    server: str
    subscribers: int
    connected: int
    window: float
    cpu: float  # server CPU seconds over the window (schedstat, ns resolution)
    cpu_ticks: float  # the same from /proc/<pid>/stat (10 ms ticks), as a cross-check
    delivered: int  # RTP packets decrypted by all subscribers over the window
    sent: int  # RTP packets the publisher sent over the window
    loss: float  # holes in the sequence numbers over the whole run, all subscribers
    p50_ms: float | None
    p99_ms: float | None
    client_drops: int  # datagrams dropped at full receive buffers over the run (clients)
    send_drops: int  # sends refused at full send buffers over the run (mostly the server)

    @property
    def us_per_packet(self) -> float:
        return self.cpu / self.delivered * 1e6 if self.delivered else math.nan

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.window


# -- Janus's HTTP API ---------------------------------------------------------------------


class JanusError(Exception):
    pass


class JanusSession:
    """One Janus session holding every handle of the run; one long poll feeds them all."""

    def __init__(self, http: httpx.AsyncClient, base: str) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.session: int | None = None
        self._queues: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._receivers: dict[int, trio.MemoryReceiveChannel[dict[str, Any]]] = {}

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"transaction": secrets.token_hex(6), **body}
        response = await self.http.post(self.base + path, json=body)
        data: dict[str, Any] = response.json()
        if data.get("janus") == "error":
            raise JanusError(str(data.get("error")))
        return data

    async def create(self) -> None:
        self.session = (await self._post("", {"janus": "create"}))["data"]["id"]

    async def attach(self) -> int:
        data = await self._post(
            f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}
        )
        handle: int = data["data"]["id"]
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._queues[handle], self._receivers[handle] = send, receive
        return handle

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> None:
        payload: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            payload["jsep"] = jsep
        data = await self._post(f"/{self.session}/{handle}", payload)
        if data.get("janus") not in ("ack", "success", "event"):
            raise JanusError(f"unexpected reply {data}")
        if data.get("janus") == "event":  # a synchronous answer: queue it like the rest
            self._queues[handle].send_nowait(data)

    async def event(self, handle: int, key: str, timeout: float = 20) -> dict[str, Any]:
        """The next plugin event of ``handle`` whose data has ``key`` (others are skipped)."""
        with trio.fail_after(timeout):
            while True:
                event = await self._receivers[handle].receive()
                data = event.get("plugindata", {}).get("data", {})
                if "error" in data:
                    raise JanusError(f"{data.get('error_code')}: {data['error']}")
                if key in data:
                    return event

    async def poll(self) -> None:
        """The long poll: every event of the session to its handle's queue."""
        while True:
            try:
                response = await self.http.get(
                    f"{self.base}/{self.session}", params={"maxev": "20"}, timeout=40
                )
            except httpx.TimeoutException:
                continue
            data = response.json()
            for event in data if isinstance(data, list) else [data]:
                sender = event.get("sender")
                if sender in self._queues:
                    self._queues[sender].send_nowait(event)


class JanusPublisher:
    """The publisher's media sections without trio-sfu's control channel; ``packet`` is
    ``PublisherClient.packet`` (transport-cc when negotiated), so the RTP is the same."""

    packet = PublisherClient.packet

    def __init__(self, host: str, reader: SharedReader) -> None:
        self.pc = ClientPeerConnection(host=host, name="janus-pub", shared_reader=reader)
        self.audio = self.pc.add_transceiver("audio", "sendonly")
        self.video = self.pc.add_transceiver("video", "sendonly")
        self._seq: Counter[int] = Counter()
        self._twcc_seq = 0


# -- one scenario -------------------------------------------------------------------------


async def _run(
    kind: str, url: str, server_pid: int, n: int, host: str, bitrate: int,
    warmup: float, window: float,
) -> Result:
    config = load.LoadConfig(
        url=url, rooms=["bench"], video_bitrate=bitrate, duration=warmup + window + 0.5,
        host=host,
    )
    totals = load.WorkerTotals()
    receivers: list[load.Receiver] = []
    reader = SharedReader()
    rcv0, snd0 = udp_drops()
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http, trio.open_nursery() as nursery:
        nursery.start_soon(reader.run)
        stops: list[Any] = []
        if kind == "janus":
            janus = JanusSession(http, url)
            await janus.create()
            nursery.start_soon(janus.poll)
            pub = JanusPublisher(host, reader)
            handle = await janus.attach()
            offer = pub.pc.create_offer()
            await janus.message(
                handle,
                {"request": "joinandconfigure", "ptype": "publisher", "room": ROOM,
                 "display": "bench", "audio": True, "video": True},
                {"type": "offer", "sdp": offer, "trickle": False},
            )
            joined = await janus.event(handle, "videoroom")
            feed = joined["plugindata"]["data"]["id"]
            pub.pc.handle_answer(joined["jsep"]["sdp"])
            await nursery.start(pub.pc.run)
            await pub.pc.wait_connected()
            stops.append(lambda: pub.pc.close("end"))

            async def subscriber(task_status: trio.TaskStatus[None]) -> None:
                h = await janus.attach()
                await janus.message(
                    h, {"request": "join", "ptype": "subscriber", "room": ROOM,
                        "streams": [{"feed": feed}]},
                )
                attached = await janus.event(h, "videoroom")
                pc = ClientPeerConnection(host=host, name=f"janus-sub-{h}", shared_reader=reader,
                                          new_transceiver_direction="recvonly")
                receiver = load.Receiver()
                pc.on_rtp = lambda _s, packet, _now: receiver.on_rtp(packet)
                answer = pc.handle_offer(attached["jsep"]["sdp"])
                await janus.message(h, {"request": "start"},
                                    {"type": "answer", "sdp": answer, "trickle": False})
                async with trio.open_nursery() as inner:
                    await inner.start(pc.run)
                    await pc.wait_connected()
                    receivers.append(receiver)
                    stops.append(lambda: pc.close("end"))
                    task_status.started()

            for _ in range(n):
                await nursery.start(subscriber)
            publisher: Any = pub
        else:
            for i in range(n):
                sub = SubscriberClient(f"sub{i}-{secrets.token_hex(3)}", host=host,
                                       shared_reader=reader)
                receiver = load.Receiver()
                sub.pc.on_rtp = lambda _s, packet, _now, r=receiver: r.on_rtp(packet)
                await nursery.start(sub.connect, http_signal(url, "sub", "bench", sub.id))
                await sub.wait_open(30)
                receivers.append(receiver)
                stops.append(sub.stop)
            publisher = PublisherClient(f"pub-{secrets.token_hex(3)}", host=host,
                                        shared_reader=reader)
            await nursery.start(publisher.connect, http_signal(url, "pub", "bench", publisher.id))
            await publisher.wait_open(30)
            stops.append(publisher.stop)
        nursery.start_soon(load._send_media, config, publisher, totals)
        await trio.sleep(warmup)
        tick0, cpu0 = stat_seconds(server_pid), cpu_seconds(server_pid)
        got0, sent0 = sum(r.received for r in receivers), totals.sent
        await trio.sleep(window)
        tick1, cpu1 = stat_seconds(server_pid), cpu_seconds(server_pid)
        got1, sent1 = sum(r.received for r in receivers), totals.sent
        await trio.sleep(1.0)  # the rest in flight, for the loss count
        expected = sum(r.expected for r in receivers)
        received = sum(r.received for r in receivers)
        latency: Counter[int] = Counter()
        for r in receivers:
            latency.update(r.latency)
        rcv1, snd1 = udp_drops()
        for stop in stops:
            stop()
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    p50, p99 = load.percentile(latency, 0.5), load.percentile(latency, 0.99)
    return Result(
        server=kind, subscribers=n, connected=len(receivers), window=window,
        cpu=cpu1 - cpu0, cpu_ticks=tick1 - tick0, delivered=got1 - got0, sent=sent1 - sent0,
        loss=max(0, expected - received) / expected if expected else math.nan,
        p50_ms=None if p50 is None else round(p50 * 1e3, 2),
        p99_ms=None if p99 is None else round(p99 * 1e3, 2),
        client_drops=rcv1 - rcv0,
        send_drops=snd1 - snd0,
    )


def run(kind: str, url: str, server_pid: int, n: int, *, host: str, bitrate: int = 1_200_000,
        warmup: float = 3.0, window: float = 8.0) -> Result:
    """One scenario against one running server; ``kind`` is ``"janus"`` or ``"trio-sfu"``."""
    return trio.run(_run, kind, url, server_pid, n, host, bitrate, warmup, window)
