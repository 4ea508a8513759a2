"""trio-sfu's own protocol on our own stack: publisher and subscriber connections for Python.

Signaling is a callable (offer SDP → answer SDP), so the same client works over HTTP
(:func:`http_signal`) and in-process against :class:`trio_sfu.sfu.service.Sfu` in tests.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import ssl
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_sfu.client.peer import ClientPeerConnection
from trio_sfu.proto.capabilities import URI_MID, URI_RID, URI_TRANSPORT_CC
from trio_sfu.proto.codecs import vp8
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.rtp import RtpPacket
from trio_sfu.rtc import events as ev
from trio_sfu.rtc.events import IncomingStream

log = logging.getLogger(__name__)

Signal = Callable[[str], Awaitable[str]]
#: Sent packets a publisher keeps per SSRC to answer NACKs with.
SENT_HISTORY = 1024


def connection_id(user: str) -> str:
    """The seed's unique-id rule: user + "-" + a fresh random suffix per connection."""
    return f"{user}-{secrets.token_hex(3)}"


#: Answers that mean "not now, maybe on another pod": a draining pod, a pod gone behind a load
#: balancer, a backend outage. Nothing was created, so the same POST may be sent again.
RETRYABLE = frozenset({502, 503, 504})


def retry_delay(retried: int, retry_after: str | None, base: float, cap: float) -> float:
    """Seconds before the next try: the server's Retry-After if it sent one (capped), else a
    back-off doubling from ``base``."""
    if retry_after is not None:
        try:
            return min(cap, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP-date: fall back to our own back-off
    return float(min(cap, base * 2.0**retried))


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every signalling request of the process: httpx builds a
    new one per client otherwise, loading the whole CA bundle — 55-80 ms of CPU per join
    here, more than the server's part of a join (a load tester's hundreds of clients paid it
    each, and bench/pod.py timed it as join latency)."""
    import httpx

    return httpx.create_ssl_context()


def http_signal(
    base_url: str,
    role: str,
    room: str,
    peer_id: str,
    *,
    retries: int = 8,
    retry_base: float = 0.25,
    retry_max: float = 4.0,
    **client_options: Any,
) -> Signal:
    """POST the offer to ``{base_url}/{role}/{room}/{id}``; the 201 body is the answer.

    A 502/503/504 or no answer at all is retried up to ``retries`` times (issue 9: a client
    never gives up on the first 503 of a draining pod), after Retry-After or a back-off.
    """

    async def signal(offer: str) -> str:
        import httpx

        url = f"{base_url.rstrip('/')}/{role}/{room}/{peer_id}"
        retried = 0
        options = client_options
        if "verify" not in options:
            options = {**options, "verify": default_ssl_context()}
        async with httpx.AsyncClient(**options) as http:
            while True:
                try:
                    response = await http.post(
                        url, content=offer.encode(), headers={"Content-Type": "application/sdp"}
                    )
                except httpx.TransportError as exc:
                    if retried >= retries:
                        raise SignalingError(
                            0, f"no answer from {url} in {retried + 1} attempts: {exc!r}"
                        ) from exc
                    delay = retry_delay(retried, None, retry_base, retry_max)
                else:
                    if response.status_code == 201:
                        return response.text
                    if response.status_code not in RETRYABLE or retried >= retries:
                        raise SignalingError(response.status_code, response.text)
                    delay = retry_delay(
                        retried, response.headers.get("Retry-After"), retry_base, retry_max
                    )
                retried += 1
                log.info("signaling retry", extra={"peer": peer_id, "delay": delay})
                await trio.sleep(delay)

    return signal


class SignalingError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body.strip()}")
        self.status = status
        self.body = body


class SfuConnection:
    """One connection with a control channel; commands from the server become :attr:`lines`."""

    def __init__(self, peer_id: str, *, host: str = "127.0.0.1", **pc_options: Any) -> None:
        self.id = peer_id
        self.pc = ClientPeerConnection(host=host, name=peer_id, **pc_options)
        self.control = self.pc.create_data_channel("control")
        self.lines: list[str] = []
        self._line_send, self._line_recv = trio.open_memory_channel[str](math.inf)
        self._open = trio.Event()

    async def connect(
        self, signal: Signal, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Offer, apply the answer, and run until the connection ends."""
        answer = await signal(self.pc.create_offer())
        self.pc.handle_answer(answer)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pc.run)
            self.pc.start_soon(self._events)
            task_status.started()

    async def _events(self) -> None:
        async for event in self.pc.events:
            if isinstance(event, ev.DataChannelOpen) and event.channel is self.control:
                self._open.set()
            elif (
                isinstance(event, ev.DataChannelMessage)
                and event.channel is self.control
                and isinstance(event.data, str)
            ):
                await self.on_line(event.data)

    async def on_line(self, line: str) -> None:
        self.lines.append(line)
        self._line_send.send_nowait(line)

    async def wait_open(self, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            await self._open.wait()

    def send(self, command: str) -> None:
        self.control.send(command)

    async def expect(self, prefix: str, timeout: float = 10) -> str:
        """The next command starting with ``prefix`` (others received meanwhile are kept in
        :attr:`lines` and skipped here)."""
        with trio.fail_after(timeout):
            while True:
                line = await self._line_recv.receive()
                if line.startswith(prefix):
                    return line

    def stop(self) -> None:
        if self.control.ready_state == "open":
            self.send("STOP")
        else:
            self.pc.close("stop")


class SubscriberClient(SfuConnection):
    """Answers every ``SDP_OFFER``; counts RTP per publisher (the msid stream id)."""

    def __init__(
        self,
        peer_id: str,
        *,
        auto_answer: bool = True,
        layer: str | None = None,
        **options: Any,
    ) -> None:
        """``layer`` (``low``/``mid``/``high``): ask for that layer of every video track
        received (``LAYER``), once the answer that adds its section has been sent."""
        super().__init__(peer_id, new_transceiver_direction="recvonly", **options)
        self.layer = layer
        #: video tracks (publisher id, track id) announced whose layer is still to be asked
        self._layer_pending: set[tuple[str, str]] = set()
        self.packets: Counter[str] = Counter()
        #: RTP per received track (the msid track id), to tell a publisher's tracks apart
        self.track_packets: Counter[str] = Counter()
        self.offers: list[str] = []
        #: when False, offers wait in :attr:`offers` until :meth:`answer` is called
        self.auto_answer = auto_answer
        self._answered = 0
        self.pc.on_rtp = self._on_rtp

    async def on_line(self, line: str) -> None:
        if line.startswith("SDP_OFFER "):
            self.offers.append(line[len("SDP_OFFER ") :])
            if self.auto_answer:
                self.answer()
        elif self.layer is not None and line.startswith("TRACK_ADD "):
            parts = line.split()
            if len(parts) >= 4 and parts[3] == "video":
                self._layer_pending.add((parts[1], parts[2]))
        await super().on_line(line)

    def answer(self) -> str:
        """Answer the oldest unanswered offer."""
        offer = self.offers[self._answered]
        self._answered += 1
        answer = self.pc.handle_offer(offer)
        self.send("SDP_ANSWER " + answer)
        if self._layer_pending:
            # The channel is ordered: the server has applied this answer when LAYER arrives.
            for publisher, track in self._layer_pending & self.live_tracks():
                self.send(f"LAYER {publisher} {track} {self.layer}")
                self._layer_pending.discard((publisher, track))
        return answer

    def _on_rtp(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        msid = stream.transceiver.remote_msid
        self.packets[msid[0] if msid else "?"] += 1
        self.track_packets[msid[1] or "?" if msid else "?"] += 1

    def active_publishers(self) -> set[str]:
        """Publishers with a live (negotiated, not stopped) receiving section."""
        return {
            t.remote_msid[0]
            for t in self.pc.transceivers
            if t.remote_msid and t.receiving and not t.stopped and not t.stopping
        }

    def live_tracks(self) -> set[tuple[str, str]]:
        """(publisher id, track id) of every live receiving section."""
        return {
            (t.remote_msid[0], t.remote_msid[1] or "")
            for t in self.pc.transceivers
            if t.remote_msid and t.receiving and not t.stopped and not t.stopping
        }

    def negotiated_for(self, publisher_id: str) -> bool:
        return publisher_id in self.active_publishers()

    def media_sections(self) -> int:
        """How many m-lines the current description has (it must stay bounded)."""
        desc = self.pc.jsep.local_description
        return len(desc.media) if desc is not None else 0


class PublisherClient(SfuConnection):
    """Publishes synthetic audio and/or video RTP (for tests, bots and load)."""

    def __init__(
        self,
        peer_id: str,
        *,
        audio: bool = True,
        video: bool = True,
        simulcast: list[str] | None = None,
        **options: Any,
    ):
        """``simulcast``: the video's rids, lowest quality first (e.g. ``["q", "h", "f"]``);
        each is a stream of its own (:meth:`packet` with ``rid``) once the answer takes it."""
        super().__init__(peer_id, **options)
        self.audio = self.pc.add_transceiver("audio", "sendonly") if audio else None
        self.video = (
            self.pc.add_transceiver("video", "sendonly", send_rids=simulcast) if video else None
        )
        #: every section we send on, in order (tracks added later are appended)
        self.tracks: list[Transceiver] = [t for t in (self.audio, self.video) if t is not None]
        #: the label (APP_ID) of each added track, by transceiver
        self.app_ids: dict[int, str] = {}
        self.renegotiations = 0
        self._renegotiating = trio.Lock()
        self._seq: Counter[int] = Counter()
        self._twcc_seq = 0
        #: what was sent per SSRC, by sequence number (to answer NACKs)
        self.sent: defaultdict[int, dict[int, RtpPacket]] = defaultdict(dict)

    def send_frame(self, *, keyframe: bool = False, size: int = 1000, skip: bool = False) -> None:
        """One packet per track: a VP8-shaped video packet and an Opus-sized audio packet.

        ``skip`` consumes the sequence numbers without sending (a loss the SFU should NACK).
        """
        for t in self.tracks:
            if t.stopped or t.stopping or not t.sending or not t.media_codecs:
                continue
            # each video packet a whole frame: S=1, no picture id (RFC 7741 §4.2)
            payload = vp8.build_payload(size, keyframe=keyframe) if t.kind == "video" else bytes(80)
            packet = self.packet(t, payload)
            history = self.sent[t.sender_ssrc]
            history[packet.sequence_number] = packet
            if len(history) > SENT_HISTORY:
                del history[next(iter(history))]  # oldest first: dicts keep insertion order
            if not skip:
                self.pc.send_rtp(packet.serialize())

    # -- tracks over time (issue 15): we stay the offerer of everything we send ---------------

    async def add_track(self, kind: str, app_id: str, *, timeout: float = 10) -> Transceiver:
        """``ADD_MEDIA <kind> <app_id>``, then an ``SDP_OFFER`` with a new sendonly section
        (a stopped one recycled); returns once the ``SDP_ANSWER`` is applied."""
        t = self.pc.add_transceiver(kind, "sendonly")
        self.tracks.append(t)
        self.app_ids[id(t)] = app_id
        self.send(f"ADD_MEDIA {kind} {app_id}")
        await self.renegotiate(timeout=timeout)
        return t

    async def remove_track(
        self, t: Transceiver, *, announce: bool = True, timeout: float = 10
    ) -> None:
        """``REMOVE_MEDIA`` (forwarding stops at once), then an offer stopping the section."""
        app_id = self.app_ids.pop(id(t), None) or ("mic" if t.kind == "audio" else "camera")
        if announce:
            self.send(f"REMOVE_MEDIA {t.kind} {app_id}")
        self.pc.stop_transceiver(t)
        if t in self.tracks:
            self.tracks.remove(t)
        await self.renegotiate(timeout=timeout)

    def mute(self, t: Transceiver, on: bool) -> None:
        """``MUTE <track> on|off``: the SFU stops/resumes forwarding, no renegotiation."""
        self.send(f"MUTE {t.track_id} {'on' if on else 'off'}")

    async def renegotiate(self, *, timeout: float = 10) -> str:
        """Offer our current sections; apply the SFU's ``SDP_ANSWER`` (one at a time)."""
        async with self._renegotiating:
            offer = self.pc.create_offer()
            self.send("SDP_OFFER " + offer)
            try:
                with trio.fail_after(timeout):
                    while True:
                        line = await self.expect("", timeout=timeout)
                        if line.startswith(("SDP_ANSWER ", "ERROR bad SDP_OFFER")):
                            break
            except BaseException:
                self.pc.rollback()
                raise
            if line.startswith("ERROR"):
                self.pc.rollback()
                raise SignalingError(0, line)
            answer = line[len("SDP_ANSWER ") :]
            self.pc.handle_answer(answer)
            self.renegotiations += 1
            return answer

    def packet(self, t: Transceiver, payload: bytes, rid: str | None = None) -> RtpPacket:
        """The next RTP packet of ``t`` (with transport-cc when negotiated); with ``rid``, of
        that simulcast stream: its own SSRC and numbering, named by the MID and RID header
        extensions (RFC 8852 §3, RFC 9143 §15), as the offer listed no SSRC for it."""
        ssrc = t.send_rids[rid] if rid is not None else t.sender_ssrc
        seq = self._seq[ssrc]
        self._seq[ssrc] += 1
        clock = t.media_codecs[0].clock_rate
        extensions = {}
        twcc_id = t.extension_id(URI_TRANSPORT_CC)
        if twcc_id is not None:
            extensions[twcc_id] = (self._twcc_seq & 0xFFFF).to_bytes(2, "big")
            self._twcc_seq += 1
        if rid is not None:
            for uri, value in ((URI_MID, t.mid), (URI_RID, rid)):
                ext_id = t.extension_id(uri)
                if ext_id is not None and value:
                    extensions[ext_id] = value.encode()
        return RtpPacket(
            payload_type=t.media_codecs[0].payload_type,
            sequence_number=seq & 0xFFFF,
            timestamp=(seq * clock // 50) & 0xFFFFFFFF,
            ssrc=ssrc,
            marker=True,
            extensions=extensions,
            payload=payload,
        )

    def resend_as_rtx(self, t: Transceiver, seq: int) -> bool:
        """Answer a NACK the way a browser does: RFC 4588 RTX with the original's payload."""
        original = self.sent[t.sender_ssrc].get(seq)
        rtx_pt = t.rtx_payload_type(original.payload_type) if original is not None else None
        if original is None or rtx_pt is None or t.sender_rtx_ssrc is None:
            return False
        rtx_seq = self._seq[t.sender_rtx_ssrc]
        self._seq[t.sender_rtx_ssrc] += 1
        packet = RtpPacket(
            payload_type=rtx_pt,
            sequence_number=rtx_seq & 0xFFFF,
            timestamp=original.timestamp,
            ssrc=t.sender_rtx_ssrc,
            marker=original.marker,
            payload=seq.to_bytes(2, "big") + original.payload,
        )
        self.pc.send_rtp(packet.serialize())
        return True
