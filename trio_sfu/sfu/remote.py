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

Simulcast across pods (issue 11). The publisher's pod relays each simulcast stream under its
own name (:func:`~trio_sfu.sfu.model.relay_stream`: the top one under the track's) and only
while some pod wants it. A relayed simulcast track here is a layered source like the local
one: its forwarding groups choose a stream per subscriber (the layer planner, ``LAYER``),
and this pod subscribes to exactly the streams its groups forward or switch to, dropping a
stream :data:`RELEASE_AFTER` seconds after the last group left it — so the publisher's pod
relays, and its publisher encodes (dynacast), only what some pod's subscribers watch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from trio_sfu.proto.codecs.vp8 import keyframe_width
from trio_sfu.proto.rtp import payload_offset
from trio_sfu.proto.rtp.packet import seq_delta
from trio_sfu.sfu.bus import Bus
from trio_sfu.sfu.errors import BackendUnavailable
from trio_sfu.sfu.feedback import KeyframeGate, KeyframeThrottle, PacketCache
from trio_sfu.sfu.groups import Fanout, ForwardingGroup
from trio_sfu.sfu.model import KeyframeRequest, Nack, PublisherInfo, TrackInfo, relay_stream
from trio_sfu.sfu.track import KEYFRAME_INTERVAL, WIRE_OVERHEAD, DownTrack, Ingress, TrackSink

log = logging.getLogger(__name__)

#: A relayed video gap this many packets long is not worth NACKing: ask for a keyframe.
GAP_KEYFRAME = 32
#: Any relayed video gap after this much silence (seconds) is an outage: ask for a keyframe.
STALL = 0.5
#: Subscribers' NACKs this pod could not answer are gathered this long (seconds) and sent to
#: the publisher's pod as one command.
NACK_GATHER = 0.01
#: A relayed simulcast stream no group here needs is unsubscribed after this many seconds.
RELEASE_AFTER = 5.0
#: How often (seconds) a layered remote track reviews its subscriptions and re-asks for the
#: keyframes its switching groups wait for.
REVIEW_INTERVAL = 0.5


class _Stream:
    """One relayed simulcast stream of a remote track, as this pod receives it: what a local
    stream keeps (:class:`~trio_sfu.sfu.track.Ingress`: its cache, frame and rate tracking,
    VP8 width), its keyframe throttle, and the relay subscription while subscribed."""

    __slots__ = ("ingress", "keyframes", "last_seq", "scope", "unneeded_since")

    def __init__(self, ingress: Ingress, keyframes: KeyframeThrottle) -> None:
        self.ingress = ingress
        self.keyframes = keyframes
        self.last_seq = -1
        self.scope: trio.CancelScope | None = None
        self.unneeded_since: float | None = None


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
        #: simulcast: the publisher's streams, lowest first (empty: one stream)
        self.rids: tuple[str, ...] = info.rids if self.kind == "video" else ()
        self.fanout = Fanout(
            len(self.rids),
            clock_rate=self.clock_rate,
            vp8=bool(media) and media[0].name.upper() == "VP8",
        )
        self.keyframes = KeyframeThrottle(KEYFRAME_INTERVAL)
        top = len(self.rids) - 1
        self._streams = [
            _Stream(
                Ingress(
                    -1,
                    rid,
                    self.clock_rate,
                    False,
                    layer=i,
                    cache=self.cache if i == top else PacketCache(),
                ),
                self.keyframes if i == top else KeyframeThrottle(KEYFRAME_INTERVAL),
            )
            for i, rid in enumerate(self.rids)
        ]
        self.gate: KeyframeGate[DownTrack] = KeyframeGate(
            (c.payload_type, c.name) for c in media if self.kind == "video"
        )
        self.packets = 0
        self.gaps = 0  # relayed gaps that asked for a keyframe
        self.nacks_forwarded = 0  # sequence numbers asked of the publisher's pod
        #: per relayed SSRC: the next sequence number expected and when the last one came
        self._expected: dict[int, tuple[int, float]] = {}
        self._nack_pending: dict[str, set[int]] = {}  # per relayed stream name
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<RemoteTrack {self.publisher_id}/{self.track_id}@{self.node} {self.kind}>"

    @property
    def key(self) -> tuple[str, str]:
        return self.publisher_id, self.track_id

    # -- the hot path (called from nats-py's subscription callback, cluster/relay.py) --------

    def on_packet(self, packet: bytes, now: float) -> None:
        self.packets += 1
        if self.cache is not None:
            self.cache.put(packet)
            self._check_gap(int.from_bytes(packet[8:12], "big"), (packet[2] << 8) | packet[3], now)
        if self.gate.waiting or self.keyframes.pending:
            released = self.gate.watch(packet, now, self.keyframes)
            if released:
                for downtrack in released:
                    self.fanout.add(downtrack)
            elif self.gate.waiting:
                self.request_keyframe(now)  # throttled: keeps asking while someone waits
        for group in self.fanout.groups:
            group.forward(packet, now)

    def _on_stream_packet(self, layer: int, packet: bytes, now: float) -> None:
        """A packet of relayed simulcast stream ``layer``: cached, then every group's selector
        decides (a switch only at the first packet of a keyframe of its target)."""
        self.packets += 1
        stream = self._streams[layer]
        ingress = stream.ingress
        assert ingress.cache is not None
        ingress.cache.put(packet)
        seq = (packet[2] << 8) | packet[3]
        ts = int.from_bytes(packet[4:8], "big")
        ssrc = int.from_bytes(packet[8:12], "big")
        ingress.ssrc = ssrc
        ingress.octets += len(packet) + WIRE_OVERHEAD
        frame_start = keyframe = False
        self._check_gap(ssrc, seq, now)
        if stream.last_seq < 0 or seq_delta(seq, stream.last_seq) > 0:
            stream.last_seq = seq
            if ts != ingress.last_ts:  # the first packet of a frame (not a late repair)
                ingress.last_ts = ts
                frame_start = True
                keyframe = self.gate.is_keyframe(packet)
                if keyframe:
                    stream.keyframes.on_keyframe()
                    if self.fanout.vp8:
                        ingress.width = keyframe_width(packet[payload_offset(packet) :])
        fanout = self.fanout
        if layer == fanout.default and (self.gate.waiting or stream.keyframes.pending):
            released = self.gate.watch(packet, now, stream.keyframes)
            if released:
                for downtrack in released:
                    fanout.add(downtrack)
                self._sync_streams(now)  # one with a layer of its own needs that stream
            elif self.gate.waiting:
                self.request_keyframe(now, layer)
        for group in fanout.groups:
            group.forward_layer(packet, layer, ssrc, seq, ts, keyframe, frame_start, now)

    def _check_gap(self, ssrc: int, seq: int, now: float) -> None:
        """A relayed gap worth a keyframe rather than NACKs (see the module docstring)."""
        last = self._expected.get(ssrc)
        if last is None:
            self._expected[ssrc] = ((seq + 1) & 0xFFFF, now)
            return
        lost = seq_delta(seq, last[0])
        if lost < 0:
            return  # late: a repair relayed after the packets that followed it
        self._expected[ssrc] = ((seq + 1) & 0xFFFF, now)
        if lost and (lost >= GAP_KEYFRAME or now - last[1] >= STALL):
            self.gaps += 1
            layer = next((i for i, s in enumerate(self._streams) if s.ingress.ssrc == ssrc), None)
            self.request_keyframe(now, layer)

    def needed_streams(self) -> set[int]:
        """The simulcast streams this pod's groups forward or switch to, and the default one
        while subscribers wait at the keyframe gate."""
        needed: set[int] = set()
        for group in self.fanout.groups:
            selector = group.selector
            if selector is not None:
                if selector.target_stream is not None:
                    needed.add(selector.target_stream)
                if selector.current is not None:
                    needed.add(selector.current)
        if self.gate.waiting:
            needed.add(self.fanout.default)
        return needed

    def _sync_streams(self, now: float) -> None:
        """Subscribe to the streams needed now, at once; unsubscribe from one no group has
        needed for RELEASE_AFTER seconds (the publisher's pod then stops relaying it)."""
        needed = self.needed_streams()
        for layer, stream in enumerate(self._streams):
            if layer in needed:
                stream.unneeded_since = None
                if stream.scope is None:
                    stream.scope = trio.CancelScope()
                    self._spawn(self._receive, stream.scope, layer)
            elif stream.scope is not None:
                if stream.unneeded_since is None:
                    stream.unneeded_since = now
                elif now - stream.unneeded_since >= RELEASE_AFTER:
                    stream.scope.cancel()
                    stream.scope = None
                    stream.unneeded_since = None
                    stream.last_seq = stream.ingress.last_ts = -1

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
            if self.rids:
                self._spawn(self._review, self._scope)
            else:
                self._spawn(self._receive, self._scope)
        if self.rids:
            self._sync_streams(trio.current_time())

    def detach(self, downtrack: DownTrack) -> None:
        self.gate.drop(downtrack)
        self.fanout.remove(downtrack)
        if not self.fanout and not self.gate.waiting:
            self.stop()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        for stream in self._streams:
            if stream.scope is not None:
                stream.scope.cancel()
                stream.scope = None
        self._on_idle(self)

    def cache_for(self, ssrc: int) -> PacketCache | None:
        for stream in self._streams:
            if stream.ingress.ssrc == ssrc:
                return stream.ingress.cache
        return self.cache  # one relayed stream, or the top one

    def layer_bitrates(self, now: float) -> tuple[float, ...]:
        """Bits/s of each relayed simulcast stream (the last measured while subscribed; 0
        for one never received here: the planner assumes a typical rate)."""
        return tuple(stream.ingress.sample_bitrate(now) for stream in self._streams)

    def layer_widths(self) -> tuple[int, ...]:
        return tuple(stream.ingress.width for stream in self._streams)

    def _stream_name(self, layer: int | None) -> str:
        if layer is None or not self.rids or layer == len(self.rids) - 1:
            return self.track_id
        return relay_stream(self.track_id, self.rids[layer])

    def request_keyframe(self, now: float, layer: int | None = None) -> bool:
        if self.kind != "video":
            return False
        throttle = self.keyframes
        if self.rids:
            if layer is None or not 0 <= layer < len(self.rids):
                layer = self.fanout.default
            self._sync_streams(now)  # a group switching to a stream: receive it
            throttle = self._streams[layer].keyframes
        if not throttle.allow(now):
            return False
        self._spawn(self._send_keyframe_request, self._stream_name(layer))
        return True

    def nack_missed(self, sequence_numbers: list[int], now: float, ssrc: int = -1) -> None:
        """Relayed packets (input sequence numbers of stream ``ssrc``) a subscriber NACKed and
        this pod's cache does not hold: ask the publisher's pod, gathered over a few
        milliseconds."""
        if self.kind != "video" or not sequence_numbers:
            return
        layer = next((i for i, s in enumerate(self._streams) if s.ingress.ssrc == ssrc), None)
        name = self._stream_name(layer)
        pending = self._nack_pending.setdefault(name, set())
        first = not pending
        pending.update(sequence_numbers)
        if first:
            self._spawn(self._send_nacks, name)

    # -- tasks ----------------------------------------------------------------------------

    async def _send_nacks(self, name: str) -> None:
        await trio.sleep(NACK_GATHER)
        seqs = tuple(sorted(self._nack_pending.pop(name, ())))
        self.nacks_forwarded += len(seqs)
        try:
            await self._bus.send_to_node(
                self.node, Nack(self.room, self.publisher_id, name, seqs)
            )
        except BackendUnavailable:
            pass  # NATS is down: the gap after it comes back asks for a keyframe

    async def _receive(self, scope: trio.CancelScope, layer: int | None = None) -> None:
        """Hold the relay subscription (of one simulcast stream: ``layer``) while local
        subscribers need it; retry while NATS is away (the relay resumes by itself once
        connected; a subscribe can fail before)."""
        relay = self._relay
        if layer is None:
            on_packet = self.on_packet
        else:
            on_packet = functools.partial(self._on_stream_packet, layer)
        with scope:
            while True:
                try:
                    async with relay.subscribe(
                        self.node, self.publisher_id, self._stream_name(layer), on_packet
                    ):
                        await trio.sleep_forever()
                except BackendUnavailable:
                    await trio.sleep(0.5)
                except ValueError:
                    # the previous subscription to this stream (released, now needed again)
                    # has not finished unwinding yet: it does at its next checkpoint
                    await trio.sleep(0.05)

    async def _review(self, scope: trio.CancelScope) -> None:
        """A layered remote track's timer: subscriptions follow what the groups need, and
        groups waiting to switch keep asking for their target's keyframe (throttled)."""
        with scope:
            while True:
                await trio.sleep(REVIEW_INTERVAL)
                now = trio.current_time()
                self._sync_streams(now)
                for group in self.fanout.groups:
                    selector = group.selector
                    if selector is not None:
                        stream = selector.keyframe_request(now)
                        if stream is not None:
                            self.request_keyframe(now, stream)

    async def _send_keyframe_request(self, name: str) -> None:
        try:
            await self._bus.send_to_node(
                self.node, KeyframeRequest(self.room, self.publisher_id, name)
            )
        except BackendUnavailable:
            pass  # the subscriber's decoder asks again
