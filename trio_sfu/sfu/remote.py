"""Tracks whose publisher lives on another pod, received once per pod through the relay.

However many local subscribers watch a remote track, this pod subscribes to its relay subject
once (issue 4) and fans out locally, exactly as for a local track: a :class:`RemoteTrack` is a
:class:`~trio_sfu.sfu.track.TrackSource`. It keeps its own packet cache, so local subscribers'
NACKs are answered here; keyframe requests go to the publisher's pod as a node command,
throttled here first so a room full of subscribers sends one.

Repair (issue 9, item 3). The relay is a copy of the publisher pod's stream, late repairs
included, so a gap here is either the publisher's own loss (repaired on its pod, and the repair
relayed late) or media the relay dropped (NATS down, a queue overflow), which nobody will ever
send. So: a gap of :data:`GAP_KEYFRAME` packets or more, or any gap after :data:`STALL` seconds
of silence, asks the publisher's pod for a keyframe at once (throttled); a subscriber's NACK
this pod's cache cannot answer goes to the publisher's pod as a ``Nack`` command, which sends
the packets again through the relay from its own cache or, if they are gone there too, asks the
publisher for a keyframe. After a NATS outage the first relayed packet opens a large gap, so
every cross-pod subscriber gets a keyframe about one relay round trip after NATS is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from trio_sfu.proto.rtp.packet import seq_delta
from trio_sfu.sfu.bus import Bus
from trio_sfu.sfu.errors import BackendUnavailable
from trio_sfu.sfu.feedback import KeyframeGate, KeyframeThrottle, PacketCache
from trio_sfu.sfu.groups import Fanout, ForwardingGroup
from trio_sfu.sfu.model import KeyframeRequest, Nack, PublisherInfo, TrackInfo
from trio_sfu.sfu.track import KEYFRAME_INTERVAL, DownTrack, TrackSink

log = logging.getLogger(__name__)

#: A relayed video gap this many packets long is not worth NACKing: ask for a keyframe.
GAP_KEYFRAME = 32
#: Any relayed video gap after this much silence (seconds) is an outage: ask for a keyframe.
STALL = 0.5
#: Subscribers' NACKs this pod could not answer are gathered this long (seconds) and sent to
#: the publisher's pod as one command.
NACK_GATHER = 0.01


class Relay(Protocol):
    """The media relay as the SFU uses it (cluster/relay.py implements it over NATS)."""

    def sender(self, publisher_id: str, track_id: str) -> TrackSink: ...

    def subscribe(
        self,
        node_id: str,
        publisher_id: str,
        track_id: str,
        on_packet: Callable[[bytes, float], None],
    ) -> AbstractAsyncContextManager[None]: ...


class RemoteTrack:
    """One relayed track of ``room``. What it needs of the SFU is handed in: ``spawn`` starts a
    task that outlives the down-track asking for it (the relay subscription, requests to the
    publisher's pod), ``relay`` and ``bus`` carry its media and commands, and ``on_idle`` is
    called once the last local down-track left (the SFU forgets it; the next one makes anew).
    """

    def __init__(
        self,
        room: str,
        publisher: PublisherInfo,
        info: TrackInfo,
        *,
        spawn: Callable[..., None],
        relay: Relay,
        bus: Bus,
        on_idle: Callable[[RemoteTrack], None],
    ) -> None:
        self._spawn = spawn
        self._relay = relay
        self._bus = bus
        self._on_idle = on_idle
        self.room = room
        self.node = publisher.node
        self.publisher_id = publisher.publisher_id
        self.track_id = info.track_id
        self.kind = info.kind
        self.info = info
        media = [c for c in info.codecs if c.name.lower() != "rtx"]
        self.clock_rate = media[0].clock_rate if media else 90000
        self.cache = PacketCache() if self.kind == "video" else None
        self.fanout = Fanout()
        self.keyframes = KeyframeThrottle(KEYFRAME_INTERVAL)
        self.gate: KeyframeGate[DownTrack] = KeyframeGate(
            (c.payload_type, c.name) for c in media if self.kind == "video"
        )
        self.packets = 0
        self.gaps = 0  # relayed gaps that asked for a keyframe
        self.nacks_forwarded = 0  # sequence numbers asked of the publisher's pod
        #: per relayed SSRC: the next sequence number expected and when the last one came
        self._expected: dict[int, tuple[int, float]] = {}
        self._nack_pending: set[int] = set()
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<RemoteTrack {self.publisher_id}/{self.track_id}@{self.node} {self.kind}>"

    @property
    def key(self) -> tuple[str, str]:
        return self.publisher_id, self.track_id

    # -- the hot path (called by the relay's receive pump) ---------------------------------

    def on_packet(self, packet: bytes, now: float) -> None:
        self.packets += 1
        if self.cache is not None:
            self.cache.put(packet)
            seq = (packet[2] << 8) | packet[3]
            ssrc = int.from_bytes(packet[8:12], "big")
            last = self._expected.get(ssrc)
            if last is None:
                self._expected[ssrc] = ((seq + 1) & 0xFFFF, now)
            else:
                lost = seq_delta(seq, last[0])
                if lost >= 0:  # in order or a jump forward (RFC 3550 §A.1 arithmetic)
                    self._expected[ssrc] = ((seq + 1) & 0xFFFF, now)
                    if lost and (lost >= GAP_KEYFRAME or now - last[1] >= STALL):
                        self.gaps += 1
                        self.request_keyframe(now)
        if self.gate.waiting or self.keyframes.pending:
            released = self.gate.watch(packet, now, self.keyframes)
            if released:
                for downtrack in released:
                    self.fanout.add(downtrack)
            elif self.gate.waiting:
                self.request_keyframe(now)  # throttled: keeps asking while someone waits
        for group in self.fanout.groups:
            group.forward(packet, now)

    # -- TrackSource ----------------------------------------------------------------------

    def attach(self, downtrack: DownTrack, carry: ForwardingGroup | None = None) -> None:
        # A switched down-track (``carry``: WHEP following a new publisher) continues its
        # numbering in a group at once; switch() asks for the keyframe. A new one waits.
        if self.gate.active and carry is None:
            self.gate.hold(downtrack)  # a new video subscriber starts at a keyframe
        else:
            self.fanout.add(downtrack, carry)
        if self._scope is None:
            self._scope = trio.CancelScope()
            self._spawn(self._receive, self._scope)

    def detach(self, downtrack: DownTrack) -> None:
        self.gate.drop(downtrack)
        self.fanout.remove(downtrack)
        if not self.fanout and not self.gate.waiting:
            self.stop()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self._on_idle(self)

    def cache_for(self, ssrc: int) -> PacketCache | None:
        return self.cache  # one relayed stream

    def layer_bitrates(self, now: float) -> tuple[float, ...]:
        return ()  # the relay carries the top simulcast stream only (docs/layers.md)

    def layer_widths(self) -> tuple[int, ...]:
        return ()

    def request_keyframe(self, now: float, layer: int | None = None) -> bool:
        if self.kind != "video" or not self.keyframes.allow(now):
            return False
        self._spawn(self._send_keyframe_request)
        return True

    def nack_missed(self, sequence_numbers: list[int], now: float) -> None:
        """Relayed packets (input sequence numbers) a subscriber NACKed and this pod's cache
        does not hold: ask the publisher's pod, gathered over a few milliseconds."""
        if self.kind != "video" or not sequence_numbers:
            return
        first = not self._nack_pending
        self._nack_pending.update(sequence_numbers)
        if first:
            self._spawn(self._send_nacks)

    # -- tasks ----------------------------------------------------------------------------

    async def _send_nacks(self) -> None:
        await trio.sleep(NACK_GATHER)
        seqs, self._nack_pending = tuple(sorted(self._nack_pending)), set()
        self.nacks_forwarded += len(seqs)
        try:
            await self._bus.send_to_node(
                self.node, Nack(self.room, self.publisher_id, self.track_id, seqs)
            )
        except BackendUnavailable:
            pass  # NATS is down: the gap after it comes back asks for a keyframe

    async def _receive(self, scope: trio.CancelScope) -> None:
        """Hold the relay subscription while local subscribers need it; retry while NATS is
        away (the relay resumes by itself once connected; a subscribe can fail before)."""
        relay = self._relay
        with scope:
            while True:
                try:
                    async with relay.subscribe(
                        self.node, self.publisher_id, self.track_id, self.on_packet
                    ):
                        await trio.sleep_forever()
                except BackendUnavailable:
                    await trio.sleep(0.5)

    async def _send_keyframe_request(self) -> None:
        try:
            await self._bus.send_to_node(
                self.node, KeyframeRequest(self.room, self.publisher_id, self.track_id)
            )
        except BackendUnavailable:
            pass  # the subscriber's decoder asks again
