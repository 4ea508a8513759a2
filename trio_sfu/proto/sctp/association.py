"""A sans-IO SCTP association over DTLS (RFC 8261), shaped like aioquic's QuicConnection.

Input and output units are whole SCTP packets, one per DTLS record. The driver calls
``receive_packet`` / ``handle_timer`` / the user verbs, then drains ``packets_to_send`` and
``next_event`` and sleeps until ``get_timer``. Nothing here reads a clock or touches a socket.

Timer defaults follow RFC 9260 §16 (RTO.Initial = RTO.Min = 1 s, RTO.Max = 60 s,
Association.Max.Retrans = 10, Max.Init.Retransmits = 8, HB.interval = 30 s). They are
constructor knobs because WebRTC stacks deviate on purpose: Chromium caps the backoff at 3 s and
never gives up on retransmissions, leaving liveness to ICE consent (pass ``rto_max=3.0,
max_retransmits=None`` for that behaviour).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from typing import TypedDict

from . import chunks as ch
from .chunks import (
    AbortChunk,
    Chunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    ReconfigChunk,
    SackChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
    parse_packet,
    serialize_packet,
)
from .cookie import FLAG_FORWARD_TSN, FLAG_RECONFIG, CookieRejected, StateCookie, open_cookie
from .events import Closed, Established, MessageReceived, SctpEvent, SctpState, StreamsReset
from .handshake import (
    MAX_STREAMS,
    CookieCase,
    classify_cookie,
    local_extension_params,
    make_init_ack,
    scan_params,
)
from .heartbeat import Heartbeat
from .packer import PacketBuilder
from .receiver import ProtocolViolation, Receiver
from .reconfig import StreamResets
from .sender import U32, Sender
from .stats import Counters

_DATA_STATES = frozenset(
    {SctpState.ESTABLISHED, SctpState.SHUTDOWN_PENDING, SctpState.SHUTDOWN_SENT}
)
_SACK_STATES = frozenset(
    {
        SctpState.ESTABLISHED,
        SctpState.SHUTDOWN_PENDING,
        SctpState.SHUTDOWN_SENT,
        SctpState.SHUTDOWN_RECEIVED,
    }
)
_SENDING_STATES = frozenset(
    {SctpState.ESTABLISHED, SctpState.SHUTDOWN_PENDING, SctpState.SHUTDOWN_RECEIVED}
)


# Timers as Chromium's dcsctp runs them under WebRTC: RTO.Min above the peer's 200 ms delayed-ACK
# timer, backoff capped at 3 s, and no giving up on retransmissions (ICE consent and DTLS decide
# liveness). Pass as ``SctpAssociation(**WEBRTC_TIMERS)`` (or to DataChannelEndpoint).
class TimerOptions(TypedDict, total=False):
    rto_initial: float
    rto_min: float
    rto_max: float
    max_retransmits: int | None
    max_init_retransmits: int | None


WEBRTC_TIMERS: TimerOptions = {
    "rto_initial": 0.5,
    "rto_min": 0.22,
    "rto_max": 3.0,
    "max_retransmits": None,
    "max_init_retransmits": None,
}


class SctpAssociation(Counters):
    """One SCTP association, both roles: ``connect()`` makes it the initiator; otherwise it
    listens and answers an INIT statelessly with a signed cookie (both may happen at once).

    ``receive_packet`` raises :class:`~trio_sfu.proto.errors.SctpError` for a malformed packet
    and changes nothing then; anything else the peer does is reported through events (an ABORT
    we send for a protocol violation ends in :class:`Closed`). User errors (sending on a closed
    or resetting stream, a message over the peer's max-message-size) raise ``ValueError``.
    Counters are plain ints for the metrics endpoint.
    """

    # Slotted: past 30 attributes Python gives each instance its own ~1.6 KiB dict (issue 10, memory
    # per idle peer).
    __slots__ = (
        "_can_data", "_can_sack", "_can_send", "_cookie_echo", "_cookie_lifetime", "_ctrl",
        "_delayed_ack", "_errors", "_events", "_hb", "_init", "_local_tag", "_local_tsn",
        "_max_init_retransmits", "_max_retransmits", "_peer_flags", "_peer_rwnd", "_peer_tag",
        "_peer_tsn", "_raw", "_receiver", "_resets", "_rng", "_rto_initial", "_rto_max", "_rto_min",
        "_secret", "_sender", "_state", "_t1", "_t1_count", "_t1_interval", "_t2", "_t2_interval",
        "_window", "bad_cookies", "bytes_received", "bytes_sent", "closed", "inbound_streams",
        "local_port", "max_message_size", "messages_received", "messages_sent", "mtu",
        "outbound_streams", "packets_dropped", "packets_received", "packets_sent",
        "remote_max_message_size", "remote_port", "stale_cookies",
    )

    def __init__(
        self,
        *,
        local_port: int = 5000,
        remote_port: int = 5000,
        max_message_size: int = 262144,
        mtu: int = 1200,
        rng: Callable[[int], bytes] | None = None,
        receive_window: int = 1 << 20,
        rto_initial: float = 1.0,
        rto_min: float = 1.0,
        rto_max: float = 60.0,
        max_retransmits: int | None = 10,
        max_init_retransmits: int | None = 8,
        heartbeat_interval: float = 30.0,
        delayed_ack: float = 0.2,
        cookie_lifetime: float = 60.0,
    ) -> None:
        if mtu < 256 or mtu > 65535:
            raise ValueError("mtu out of range")
        self.local_port = local_port
        self.remote_port = remote_port
        self.max_message_size = max_message_size
        self.remote_max_message_size = 65536  # RFC 8841 §6.1 default until SDP says otherwise
        self.mtu = mtu
        self._rng = rng or os.urandom
        self._window = max(receive_window, 1 << 20)
        self._rto_initial = rto_initial
        self._rto_min = rto_min
        self._rto_max = rto_max
        self._max_retransmits = max_retransmits
        self._max_init_retransmits = max_init_retransmits
        self._delayed_ack = delayed_ack
        self._cookie_lifetime = cookie_lifetime
        self._secret = self._rng(32)

        self._state = SctpState.CLOSED
        self._can_data = self._can_sack = self._can_send = False
        self.closed = False  # True once the association has ended (CLOSED for good)
        # A list, not a deque: usually empty or one event, and an empty deque costs ~600 B
        # per peer (issue 10, memory per idle peer).
        self._events: list[SctpEvent] = []
        self._local_tag = 0
        self._local_tsn = 0
        self._peer_tag = 0
        self._peer_tsn = 0
        self._peer_rwnd = 0
        self.outbound_streams = 0
        self.inbound_streams = 0
        self._peer_flags = 0
        self._sender: Sender | None = None
        self._receiver: Receiver | None = None
        self._resets: StreamResets | None = None
        self._ctrl: list[bytes] = []  # encoded chunks for the next packet to the peer
        self._raw: list[bytes] = []  # finished packets with a special verification tag
        self._errors = 0
        # handshake (T1)
        self._init: InitChunk | None = None
        self._cookie_echo: list[bytes] = []
        self._t1: float | None = None
        self._t1_interval = rto_initial
        self._t1_count = 0
        # shutdown (T2)
        self._t2: float | None = None
        self._t2_interval = rto_initial
        self._hb = Heartbeat(heartbeat_interval, self._rng)
        # counters (plain ints for the metrics endpoint)
        self.packets_sent = 0
        self.packets_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.packets_dropped = 0
        self.bad_cookies = 0
        self.stale_cookies = 0
        self.messages_sent = 0
        self.messages_received = 0

    # --- read-only views -------------------------------------------------------------------

    @property
    def state(self) -> SctpState:
        return self._state

    @state.setter
    def state(self, value: SctpState) -> None:
        # Per-packet code tests these flags instead of hashing the enum.
        self._state = value
        self._can_data = value in _DATA_STATES
        self._can_sack = value in _SACK_STATES
        self._can_send = value in _SENDING_STATES

    @property
    def sender(self) -> Sender | None:
        return self._sender

    @property
    def receiver(self) -> Receiver | None:
        return self._receiver

    @property
    def local_verification_tag(self) -> int:
        return self._local_tag

    @property
    def peer_verification_tag(self) -> int:
        return self._peer_tag

    @property
    def peer_supports_reconfig(self) -> bool:
        return bool(self._peer_flags & FLAG_RECONFIG)

    @property
    def peer_supports_forward_tsn(self) -> bool:
        return bool(self._peer_flags & FLAG_FORWARD_TSN)

    def buffered_amount(self, stream_id: int) -> int:
        return self._sender.buffered_amount(stream_id) if self._sender else 0

    def stream_resetting(self, stream_id: int) -> bool:
        return self._resets is not None and self._resets.resetting(stream_id)

    def next_event(self) -> SctpEvent | None:
        return self._events.pop(0) if self._events else None

    # --- user verbs ------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the handshake as initiator (§5.1 A)."""
        if self.state is not SctpState.CLOSED or self.closed:
            raise ValueError("connect() is only possible on a fresh association")
        self._local_tag = self._rand_tag()
        self._local_tsn = self._rand32()
        self._init = InitChunk(
            self._local_tag, self._window, MAX_STREAMS, MAX_STREAMS, self._local_tsn,
            local_extension_params(),
        )
        self._queue_raw(0, self._init.encode())
        self.state = SctpState.COOKIE_WAIT
        self._t1_interval = self._rto_initial
        self._t1_count = 0
        self._t1 = now + self._t1_interval

    def send(
        self,
        stream_id: int,
        ppid: int,
        data: bytes,
        now: float,
        *,
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_lifetime: float | None = None,
    ) -> None:
        if self.state is not SctpState.ESTABLISHED or self._sender is None:
            raise ValueError(f"cannot send in state {self.state.value}")
        if not 0 <= stream_id < self.outbound_streams:
            raise ValueError(f"stream id {stream_id} out of range")
        if not data:
            raise ValueError("SCTP cannot carry an empty message")
        limit = self.remote_max_message_size
        if limit and len(data) > limit:
            raise ValueError(f"message of {len(data)} bytes exceeds the peer's limit {limit}")
        if self._resets is not None and self._resets.resetting(stream_id):
            raise ValueError(f"stream {stream_id} is being reset")
        if (max_retransmits is not None and max_retransmits < 0) or (
            max_lifetime is not None and max_lifetime < 0
        ):
            raise ValueError("negative partial-reliability limit")
        self._sender.enqueue(
            stream_id, ppid & U32, bytes(data), unordered=not ordered,
            max_retransmits=max_retransmits, lifetime=max_lifetime, now=now,
        )
        self.messages_sent += 1

    def reset_streams(self, stream_ids: Sequence[int], now: float) -> None:
        """Reset our outgoing side of the streams once their queued messages have left."""
        if self.state is not SctpState.ESTABLISHED or self._resets is None:
            raise ValueError(f"cannot reset streams in state {self.state.value}")
        if not self.peer_supports_reconfig:
            raise ValueError("the peer does not support RE-CONFIG")
        for sid in stream_ids:
            if not 0 <= sid < self.outbound_streams:
                raise ValueError(f"stream id {sid} out of range")
        self._resets.request(list(stream_ids))

    def shutdown(self, now: float) -> None:
        """Graceful close (§9.2): deliver what is queued, then SHUTDOWN."""
        if self.closed:
            return
        if self.state is SctpState.ESTABLISHED:
            self.state = SctpState.SHUTDOWN_PENDING
            self._check_shutdown(now)
        elif self.state in (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED):
            self._abort([], "shut down before establishment", aborted=False)

    def abort(self, reason: str = "") -> None:
        if not self.closed:
            cause = (ch.CAUSE_USER_ABORT, reason.encode("utf-8", "replace")[:1000])
            self._abort([cause], reason or "aborted locally")

    def _abort(self, causes: list[tuple[int, bytes]], reason: str, aborted: bool = True) -> None:
        if self._peer_tag:
            self._queue_raw(self._peer_tag, AbortChunk(causes).encode())
        self._terminate(reason, aborted=aborted)

    # --- output ----------------------------------------------------------------------------

    def packets_to_send(self, now: float) -> list[bytes]:
        out = self._raw
        if out:
            self._raw = []
        snd, rcv, resets = self._sender, self._receiver, self._resets
        if not self.closed and self._peer_tag:
            sending = snd is not None and self._can_sack and (
                snd.forward_tsn_due or (self._can_send and snd.can_send())
            )
            # A pending delayed SACK rides along with DATA we are about to send anyway.
            sack = rcv is not None and rcv.sack_due(now, sending)
            reconfig = resets is not None and resets.has_work() and (
                self._state is SctpState.ESTABLISHED
            )
            if self._ctrl or sack or sending or reconfig:
                out = out + self._build(now, sack, reconfig)
        if out:
            self.packets_sent += len(out)
            for p in out:
                self.bytes_sent += len(p)
        return out

    def _build(self, now: float, sack: bool, reconfig: bool) -> list[bytes]:
        pb = PacketBuilder(self.mtu)
        for c in self._ctrl:
            pb.add(c)
        self._ctrl = []
        snd, rcv, resets = self._sender, self._receiver, self._resets
        if sack and rcv is not None:
            pb.add(rcv.build_sack(self.mtu - ch.COMMON_HEADER_SIZE).encode())
        if snd is not None and self._can_sack:
            if snd.forward_tsn_due:
                fwd = snd.build_forward_tsn(now)
                if fwd is not None:
                    pb.add(fwd.encode())
            if self._can_send and snd.fill(pb, now):
                self._hb.schedule(now, snd.rto)
        # After DATA: a reset request names the last TSN given out, so it can go as soon as
        # the stream's queued messages all have TSNs, in the same packet as the last one.
        if reconfig and resets is not None and snd is not None:
            while (rc := resets.poll(now, snd)) is not None:
                pb.add(rc.encode())
        tag, src, dst = self._peer_tag, self.local_port, self.remote_port
        return [serialize_packet(src, dst, tag, chunk_list) for chunk_list in pb.finish()]

    def _queue_raw(self, vtag: int, chunk: bytes) -> None:
        self._raw.append(serialize_packet(self.local_port, self.remote_port, vtag, [chunk]))

    # --- timers ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self.closed:
            return None
        deadlines = [self._t1, self._t2, self._hb.deadline, self._hb.ack_deadline]
        if self._receiver is not None:
            deadlines.append(self._receiver.sack_deadline)
        if self._sender is not None and self._can_sack:
            deadlines.append(self._sender.t3)
        if self._resets is not None:
            deadlines.append(self._resets.deadline)
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._t1 is not None and now >= self._t1:
            self._on_t1(now)
        if self._t2 is not None and now >= self._t2:
            self._on_t2(now)
        snd = self._sender
        if snd is not None and snd.t3 is not None and now >= snd.t3 and self._can_sack:
            if self._count_error():
                return
            snd.on_t3_expired(now)
        hb = self._hb
        if hb.ack_deadline is not None and now >= hb.ack_deadline:
            hb.ack_deadline = None
            if snd is not None:
                snd.rto = min(snd.rto * 2, self._rto_max)  # §8.3
            if self._count_error():
                return
        if hb.deadline is not None and now >= hb.deadline:
            rto = snd.rto if snd else self._rto_initial
            idle = snd is not None and not snd.outstanding_bytes
            idle = idle and self._state is SctpState.ESTABLISHED
            chunk = hb.fire(now, rto, idle)
            if chunk is not None:
                self._ctrl.append(chunk)
        resets = self._resets
        if resets is not None and resets.deadline is not None and now >= resets.deadline:
            if self._count_error():
                return
            resets.on_timeout(now, snd.rto if snd else self._rto_initial)

    def _count_error(self) -> bool:
        """§8.1: one more unanswered retransmission; True if the association just failed."""
        self._errors += 1
        if self._max_retransmits is not None and self._errors > self._max_retransmits:
            reason = "too many retransmissions"
            self._abort([(ch.CAUSE_PROTOCOL_VIOLATION, reason.encode())], reason)
            return True
        return False

    def _on_t1(self, now: float) -> None:
        self._t1_count += 1
        limit = self._max_init_retransmits
        if limit is not None and self._t1_count > limit:
            self._t1 = None
            self._terminate("handshake timed out", aborted=True)
            return
        self._t1_interval = min(self._t1_interval * 2, self._rto_max)
        self._t1 = now + self._t1_interval
        if self.state is SctpState.COOKIE_WAIT and self._init is not None:
            self._queue_raw(0, self._init.encode())
        elif self.state is SctpState.COOKIE_ECHOED:
            self._ctrl.extend(self._cookie_echo)
        else:
            self._t1 = None

    def _on_t2(self, now: float) -> None:
        if self._count_error():
            return
        self._t2_interval = min(self._t2_interval * 2, self._rto_max)
        self._t2 = now + self._t2_interval
        if self.state is SctpState.SHUTDOWN_SENT and self._receiver is not None:
            self._ctrl.append(ShutdownChunk(self._receiver.cum & U32).encode())
        elif self.state is SctpState.SHUTDOWN_ACK_SENT:
            self._ctrl.append(ShutdownAckChunk().encode())
        else:
            self._t2 = None

    # --- input -----------------------------------------------------------------------------

    def receive_packet(self, data: bytes, now: float) -> None:
        """Process one SCTP packet; a malformed one raises SctpError before any state change."""
        pkt = parse_packet(data)
        self.packets_received += 1
        self.bytes_received += len(data)
        if pkt.destination_port != self.local_port or pkt.source_port != self.remote_port:
            self.packets_dropped += 1
            return
        chunks = pkt.chunks
        first = chunks[0]
        vtag = pkt.verification_tag
        if self.closed:
            self._out_of_the_blue(first, vtag)
            return
        if isinstance(first, InitChunk):
            if vtag != 0:
                self.packets_dropped += 1  # §8.5.1 A
            else:
                self._on_init(first, now)
            return
        start = 0
        if isinstance(first, CookieEchoChunk):
            if not self._on_cookie_echo(first, vtag, now):
                return
            start = 1
        elif self.state is SctpState.CLOSED:
            self._out_of_the_blue(first, vtag)
            return
        elif isinstance(first, AbortChunk | ShutdownCompleteChunk) and first.reflected:
            if vtag != self._peer_tag:  # §8.5.1 B, C
                self.packets_dropped += 1
                return
        elif isinstance(first, ShutdownAckChunk) and self.state in (
            SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED,
        ):
            # §8.5.1 E: treat as out of the blue.
            self._queue_raw(vtag, ShutdownCompleteChunk(reflected=True).encode())
            return
        elif vtag != self._local_tag:
            self.packets_dropped += 1
            return
        self._process(chunks, start, now)

    def _process(self, chunks: list[Chunk], start: int, now: float) -> None:
        rcv = self._receiver
        had_gaps = rcv is not None and bool(rcv.above)
        data_seen = False
        immediate = False
        try:
            for i in range(start, len(chunks)):
                c = chunks[i]
                if self.closed:
                    return
                if isinstance(c, DataChunk):
                    rcv = self._receiver
                    if rcv is not None and self._can_data:
                        data_seen = True
                        if not rcv.on_data(c) or c.flags & ch.FLAG_IMMEDIATE:
                            immediate = True
                elif isinstance(c, SackChunk):
                    snd = self._sender
                    if snd is not None and self._can_sack and snd.on_sack(c, now):
                        self._errors = 0
                elif isinstance(c, ForwardTsnChunk):
                    rcv = self._receiver
                    if rcv is not None and self._can_data:
                        data_seen = True
                        before = rcv.cum
                        rcv.on_forward_tsn(c.new_cumulative_tsn, c.streams)
                        if rcv.cum == before:
                            immediate = True  # RFC 3758 §3.6: an old FORWARD TSN gets a SACK
                elif isinstance(c, UnknownChunk):
                    action = c.type >> 6  # §3.2
                    if action & 1:
                        cause = (ch.CAUSE_UNRECOGNIZED_CHUNK, c.encode())
                        self._ctrl.append(ErrorChunk([cause]).encode())
                    if action < 2:
                        break
                else:
                    self._on_control(c, now)
        except ProtocolViolation as exc:
            self._abort([(exc.cause, str(exc).encode())], f"protocol violation: {exc}")
            return
        if self.closed:
            return
        rcv = self._receiver
        if rcv is not None:
            if data_seen:
                rcv.note_packet(now, immediate or had_gaps)
                if self._state is SctpState.SHUTDOWN_SENT:
                    # §9.2: answer every DATA packet with a SHUTDOWN.
                    self._ctrl.append(ShutdownChunk(rcv.cum & U32).encode())
                    self._t2 = now + self._t2_interval
            self._collect(rcv)
        self._check_shutdown(now)

    def _collect(self, rcv: Receiver) -> None:
        if rcv.messages:
            for sid, ppid, data in rcv.messages:
                self._events.append(MessageReceived(sid, ppid, data))
            self.messages_received += len(rcv.messages)
            rcv.messages.clear()
        if rcv.invalid_streams:
            for sid in rcv.invalid_streams[:8]:
                body = struct.pack("!HH", sid, 0)
                self._ctrl.append(ErrorChunk([(ch.CAUSE_INVALID_STREAM, body)]).encode())
            rcv.invalid_streams.clear()
        resets = self._resets
        if resets is not None:
            if rcv.resets_done:
                for streams in rcv.resets_done:
                    resets.incoming_reset(streams)
                rcv.resets_done.clear()
            self._emit_resets()

    def _emit_resets(self) -> None:
        resets = self._resets
        if resets is not None and resets.completed:
            for streams in resets.completed:
                self._events.append(StreamsReset(tuple(streams)))
            resets.completed.clear()

    def _on_control(self, c: Chunk, now: float) -> None:
        state = self.state
        if isinstance(c, HeartbeatChunk):
            self._ctrl.append(HeartbeatAckChunk(c.info).encode())  # §8.3
        elif isinstance(c, HeartbeatAckChunk):
            rtt = self._hb.on_ack(c.info, now)
            if rtt is not None:
                self._errors = 0
                if self._sender is not None:
                    self._sender.update_rtt(rtt)
        elif isinstance(c, InitAckChunk):
            if state is SctpState.COOKIE_WAIT:
                self._on_init_ack(c, now)
            # §5.2.3: an INIT ACK in any other state is discarded.
        elif isinstance(c, CookieAckChunk):
            if state is SctpState.COOKIE_ECHOED:
                self._established(now)
        elif isinstance(c, ReconfigChunk):
            if self._resets is not None and self._sender and self._receiver:
                self._resets.on_chunk(c, self._sender, self._receiver, now)
                self._emit_resets()
        elif isinstance(c, ShutdownChunk):
            self._on_shutdown(c, now)
        elif isinstance(c, ShutdownAckChunk):
            if state in (SctpState.SHUTDOWN_SENT, SctpState.SHUTDOWN_ACK_SENT):
                self._ctrl.append(ShutdownCompleteChunk().encode())
                self._flush_ctrl_raw()
                self._terminate("shutdown", aborted=False)
        elif isinstance(c, ShutdownCompleteChunk):
            if state is SctpState.SHUTDOWN_ACK_SENT:
                self._terminate("shutdown", aborted=False)
        elif isinstance(c, AbortChunk):
            self._terminate("aborted by peer" + ch.describe_causes(c.causes), aborted=True)
        elif isinstance(c, ErrorChunk):
            self._on_error(c, now)
        elif isinstance(c, CookieEchoChunk):
            pass  # §5.1: only valid as the first chunk of a packet

    def _flush_ctrl_raw(self) -> None:
        """Send queued control chunks now: the association is about to end."""
        if self._ctrl and self._peer_tag:
            self._raw.append(
                serialize_packet(self.local_port, self.remote_port, self._peer_tag, self._ctrl)
            )
        self._ctrl = []

    def _on_error(self, c: ErrorChunk, now: float) -> None:
        for code, _ in c.causes:
            if code == ch.CAUSE_STALE_COOKIE and self.state is SctpState.COOKIE_ECHOED:
                # §5.2.6: start over with a fresh INIT (our own stale cookie).
                self._peer_tag = 0
                self._cookie_echo = []
                self._ctrl = []
                self.state = SctpState.CLOSED
                self.connect(now)
                return

    def _out_of_the_blue(self, first: Chunk, vtag: int) -> None:
        """§8.4 for packets that belong to no association we have."""
        self.packets_dropped += 1
        if isinstance(first, ShutdownAckChunk):
            self._queue_raw(vtag, ShutdownCompleteChunk(reflected=True).encode())
        elif not isinstance(
            first, AbortChunk | ShutdownCompleteChunk | CookieAckChunk | ErrorChunk | InitChunk
        ):
            self._queue_raw(vtag, AbortChunk(reflected=True).encode())

    # --- handshake -------------------------------------------------------------------------

    def _on_init(self, init: InitChunk, now: float) -> None:
        state = self.state
        if state is SctpState.SHUTDOWN_ACK_SENT:
            self._ctrl.append(ShutdownAckChunk().encode())  # §9.2
            return
        if state in (SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED):
            # §5.2.1: answer with the parameters of our own INIT.
            tag, tsn = self._local_tag, self._local_tsn
        else:
            tag, tsn = self._rand_tag(), self._rand32()
        # §5.2.2: our current tags go in as tie-tags so that a restart can be told apart.
        ack = make_init_ack(
            init, tag=tag, tsn=tsn, tie_tags=(self._local_tag, self._peer_tag),
            window=self._window, secret=self._secret, now=now, lifetime=self._cookie_lifetime,
        )
        self._queue_raw(init.initiate_tag, ack.encode())

    def _on_init_ack(self, ack: InitAckChunk, now: float) -> None:
        cookie = ack.cookie
        if cookie is None:
            self._peer_tag = ack.initiate_tag
            cause = (ch.CAUSE_MISSING_PARAM, struct.pack("!IH", 1, ch.PARAM_STATE_COOKIE))
            self._abort([cause], "INIT ACK without a state cookie")
            return
        flags, unrecognized = scan_params(ack.params, init_ack=True)
        self._peer_tag = ack.initiate_tag
        self._peer_tsn = ack.initial_tsn
        self._peer_rwnd = ack.a_rwnd
        self._peer_flags = flags
        self.outbound_streams = min(MAX_STREAMS, ack.inbound_streams)
        self.inbound_streams = min(MAX_STREAMS, ack.outbound_streams)
        self._cookie_echo = [CookieEchoChunk(cookie).encode()]
        if unrecognized:
            # §5.1 / §3.2.1: report them in an ERROR bundled after the COOKIE ECHO.
            cause = (ch.CAUSE_UNRECOGNIZED_PARAMS, ch.encode_params(unrecognized))
            self._cookie_echo.append(ErrorChunk([cause]).encode())
        self._ctrl.extend(self._cookie_echo)
        self.state = SctpState.COOKIE_ECHOED
        self._t1_interval = self._rto_initial
        self._t1_count = 0
        self._t1 = now + self._t1_interval

    def _on_cookie_echo(self, c: CookieEchoChunk, vtag: int, now: float) -> bool:
        """§5.1.5 and §5.2.4; returns True when the rest of the packet may be processed."""
        try:
            ck = open_cookie(self._secret, c.cookie, now)
        except CookieRejected as exc:
            if exc.cookie is None:
                self.bad_cookies += 1
                self.packets_dropped += 1
            else:
                # §5.2.6: Stale Cookie error with the staleness in microseconds.
                self.stale_cookies += 1
                us = min(int(exc.staleness * 1e6), U32)
                cause = (ch.CAUSE_STALE_COOKIE, struct.pack("!I", us))
                self._queue_raw(exc.cookie.peer_tag, ErrorChunk([cause]).encode())
            return False
        if vtag != ck.local_tag:
            self.packets_dropped += 1
            return False
        state = self.state
        case = classify_cookie(ck, self._local_tag, self._peer_tag, state is not SctpState.CLOSED)
        if case is CookieCase.DISCARD:
            return False
        handshaking = state in (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED)
        if case is CookieCase.RESTART and state is SctpState.SHUTDOWN_ACK_SENT:
            cause = (ch.CAUSE_COOKIE_WHILE_SHUTTING_DOWN, b"")
            self._ctrl.append(ShutdownAckChunk().encode())
            self._ctrl.append(ErrorChunk([cause]).encode())
            return False
        if handshaking or case is CookieCase.RESTART:
            self._adopt(ck)
            self._established(now, restarted=case is CookieCase.RESTART)
        else:
            # Established already: a duplicate, or the other side of a collision.
            self._peer_tag = ck.peer_tag
            self._ctrl.insert(0, CookieAckChunk().encode())
        return True

    def _adopt(self, ck: StateCookie) -> None:
        self._local_tag = ck.local_tag
        self._local_tsn = ck.local_tsn
        self._peer_tag = ck.peer_tag
        self._peer_tsn = ck.peer_tsn
        self._peer_rwnd = ck.peer_rwnd
        self._peer_flags = ck.peer_flags
        self.outbound_streams = min(MAX_STREAMS, ck.peer_inbound)
        self.inbound_streams = min(MAX_STREAMS, ck.peer_outbound)
        self._ctrl.insert(0, CookieAckChunk().encode())  # §5.1: COOKIE ACK comes first

    def _established(self, now: float, restarted: bool = False) -> None:
        self._t1 = None
        self._cookie_echo = []
        self._init = None
        self._errors = 0
        old = self._sender
        self._sender = Sender(
            initial_tsn=self._local_tsn,
            peer_rwnd=self._peer_rwnd,
            mtu=self.mtu,
            partial_reliability=self.peer_supports_forward_tsn,
            rto_initial=self._rto_initial,
            rto_min=self._rto_min,
            rto_max=self._rto_max,
        )
        if old is not None:
            # §5.2.4 A: a restart loses what was in flight, but messages not started yet
            # still go, on the new association.
            self._sender.adopt_queued(old)
        self._receiver = Receiver(
            initial_tsn=self._peer_tsn,
            max_message_size=self.max_message_size,
            window=self._window,
            inbound_streams=self.inbound_streams,
            delayed_ack=self._delayed_ack,
        )
        self._resets = StreamResets(
            local_initial_tsn=self._local_tsn, peer_initial_tsn=self._peer_tsn
        )
        self.state = SctpState.ESTABLISHED
        self._hb.schedule(now, self._sender.rto)
        self._events.append(Established(restarted=restarted))

    # --- shutdown --------------------------------------------------------------------------

    def _on_shutdown(self, c: ShutdownChunk, now: float) -> None:
        state = self.state
        snd = self._sender
        if snd is None or not self._can_sack:
            return
        # The SHUTDOWN's cumulative TSN ack works like a SACK without gap blocks (§9.2).
        if snd.on_sack(SackChunk(c.cumulative_tsn, snd.peer_rwnd + snd.outstanding_bytes), now):
            self._errors = 0
        if state is SctpState.SHUTDOWN_SENT:
            # Both sides shut down at once: acknowledge right away.
            self._ctrl.append(ShutdownAckChunk().encode())
            self.state = SctpState.SHUTDOWN_ACK_SENT
            self._t2_interval = snd.rto
            self._t2 = now + self._t2_interval
        elif state is not SctpState.SHUTDOWN_RECEIVED:
            self.state = SctpState.SHUTDOWN_RECEIVED

    def _check_shutdown(self, now: float) -> None:
        state = self._state
        if state is not SctpState.SHUTDOWN_PENDING and state is not SctpState.SHUTDOWN_RECEIVED:
            return
        snd, rcv = self._sender, self._receiver
        if snd is None or rcv is None or not snd.idle:
            return
        if self.state is SctpState.SHUTDOWN_PENDING:
            self._ctrl.append(ShutdownChunk(rcv.cum & U32).encode())
            self.state = SctpState.SHUTDOWN_SENT
        elif self.state is SctpState.SHUTDOWN_RECEIVED:
            self._ctrl.append(ShutdownAckChunk().encode())
            self.state = SctpState.SHUTDOWN_ACK_SENT
        else:
            return
        self._t2_interval = snd.rto
        self._t2 = now + self._t2_interval
        self._hb.stop()

    def _terminate(self, reason: str, *, aborted: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = SctpState.CLOSED
        self._t1 = self._t2 = None
        self._hb.stop()
        self._ctrl = []
        if self._sender is not None:
            self._sender.t3 = None
        if self._resets is not None:
            self._resets.deadline = None
        self._events.append(Closed(reason, aborted))

    # --- randomness ------------------------------------------------------------------------

    def _rand32(self) -> int:
        return int.from_bytes(self._rng(4), "big")

    def _rand_tag(self) -> int:
        while not (tag := self._rand32()):
            pass
        return tag
