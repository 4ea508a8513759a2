"""Two SctpAssociations back to back over a seeded lossy link with a fake clock."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.test_sctp_link import Link, check_invariants
from trio_sfu.proto.errors import SctpError
from trio_sfu.proto.sctp import (
    Closed,
    Established,
    MessageReceived,
    SctpAssociation,
    SctpState,
    StreamsReset,
)
from trio_sfu.proto.sctp import chunks as ch
from trio_sfu.proto.sctp.chunks import parse_packet, serialize_packet

MiB = 1 << 20


def make(seed: int, **kw: object) -> SctpAssociation:
    assoc = SctpAssociation(rng=random.Random(seed).randbytes, **kw)  # type: ignore[arg-type]
    assoc.remote_max_message_size = 262144
    return assoc


Trio = tuple[SctpAssociation, SctpAssociation, Link]


def pair(
    seed: int = 0,
    a_kw: dict[str, Any] | None = None,
    b_kw: dict[str, Any] | None = None,
    **link_kw: Any,
) -> Trio:
    a = make(2 * seed + 1, **(a_kw or {}))
    b = make(2 * seed + 2, **(b_kw or {}))
    return a, b, Link(a, b, seed=seed, **link_kw)


def up(a: SctpAssociation, b: SctpAssociation) -> bool:
    return a.state is SctpState.ESTABLISHED and b.state is SctpState.ESTABLISHED


def connected(seed: int = 0, initiator: int = 0, **link_kw: Any) -> Trio:
    a, b, link = pair(seed, **link_kw)
    (a, b)[initiator].connect(link.now)
    link.run(lambda: up(a, b))
    return a, b, link


def received(link: Link, side: int, stream: int | None = None) -> list[bytes]:
    return [
        e.data for e in link.of_type(side, MessageReceived)
        if stream is None or e.stream_id == stream
    ]


def first_packet_with(link: Link, side: int, cls: type) -> bytes:
    return next(p for p in link.sent[side] if isinstance(parse_packet(p).chunks[0], cls))


def chunks_sent(link: Link, side: int, cls: type) -> list[Any]:
    return [c for p in link.sent[side] for c in parse_packet(p).chunks if isinstance(c, cls)]


# --- handshake ---------------------------------------------------------------------------------


@pytest.mark.parametrize("initiator", [0, 1])
def test_handshake_from_either_side(initiator: int) -> None:
    a, b, link = pair(3)
    link.record = True
    (a, b)[initiator].connect(link.now)
    link.run(lambda: up(a, b))
    assert link.of_type(0, Established) == [Established()]
    assert link.of_type(1, Established) == [Established()]
    assert a.peer_verification_tag == b.local_verification_tag != 0
    assert b.peer_verification_tag == a.local_verification_tag != 0
    assert a.outbound_streams == b.inbound_streams == 65535
    for assoc in (a, b):
        assert assoc.peer_supports_forward_tsn and assoc.peer_supports_reconfig
    init = chunks_sent(link, initiator, ch.InitChunk)[0]
    assert init.a_rwnd >= MiB
    assert (0xC000, b"") in init.params and (0x8008, bytes([0xC0, 0x82])) in init.params
    # the listener kept no state before the COOKIE ECHO (§5.1.3)
    assert len(chunks_sent(link, 1 - initiator, ch.InitAckChunk)) == 1


@pytest.mark.parametrize("seed", range(6))
def test_handshake_survives_loss(seed: int) -> None:
    a, b, link = pair(seed, loss=0.4, duplicate=0.2, reorder=0.3)
    a.connect(link.now)
    link.run(lambda: up(a, b), timeout=300)
    assert len(link.of_type(0, Established)) == 1 and len(link.of_type(1, Established)) == 1
    a.send(1, 51, b"after", link.now)
    link.run(lambda: received(link, 1) == [b"after"])


@pytest.mark.parametrize("seed", range(8))
def test_simultaneous_init(seed: int) -> None:
    a, b, link = pair(seed, loss=0.2 if seed >= 4 else 0.0, reorder=0.3)
    link.record = True
    a.connect(link.now)
    b.connect(link.now)
    link.run(lambda: up(a, b), timeout=300)
    assert a.peer_verification_tag == b.local_verification_tag
    assert b.peer_verification_tag == a.local_verification_tag
    assert len(link.of_type(0, Established)) == 1 and len(link.of_type(1, Established)) == 1
    # §5.2.1: each side answered the other's INIT with its own original tag
    for side in (0, 1):
        tags = {c.initiate_tag for c in chunks_sent(link, side, ch.InitAckChunk)}
        assert tags == {(a, b)[side].local_verification_tag}
    a.send(0, 51, b"from a", link.now)
    b.send(0, 51, b"from b", link.now)
    link.run(lambda: received(link, 1) == [b"from a"] and received(link, 0) == [b"from b"])


def test_duplicate_cookie_echo_is_acked_without_a_second_establishment() -> None:
    a, b, link = pair(4)
    link.record = True
    a.connect(link.now)
    link.run(lambda: up(a, b))
    echo = first_packet_with(link, 0, ch.CookieEchoChunk)
    link.sent[1].clear()
    b.receive_packet(echo, link.now)
    assert [type(c) for p in b.packets_to_send(link.now) for c in parse_packet(p).chunks] == [
        ch.CookieAckChunk
    ]
    assert link.of_type(1, Established) == [Established()]
    assert b.state is SctpState.ESTABLISHED


def test_peer_restart_is_detected_and_data_flows_again() -> None:
    a, b, link = pair(5)
    a.connect(link.now)
    link.run(lambda: up(a, b))
    a.send(2, 51, b"old", link.now)
    link.run(lambda: received(link, 1) == [b"old"])
    # The peer comes back with a brand-new association over the same DTLS session.
    a2 = make(99)
    link.ends = (a2, b)
    a2.connect(link.now)
    link.run(lambda: a2.state is SctpState.ESTABLISHED)
    assert link.of_type(1, Established)[-1] == Established(restarted=True)
    assert b.peer_verification_tag == a2.local_verification_tag
    a2.send(2, 51, b"new", link.now)
    b.send(2, 51, b"back", link.now)
    link.run(lambda: received(link, 1)[-1:] == [b"new"] and received(link, 0)[-1:] == [b"back"])


def test_forged_cookie_is_rejected() -> None:
    a, b, link = pair(6)
    link.tap = lambda side, pkt: None if isinstance(
        parse_packet(pkt).chunks[0], ch.CookieEchoChunk) else pkt
    link.record = True
    a.connect(link.now)
    link.run_for(0.5)
    echo = first_packet_with(link, 0, ch.CookieEchoChunk)
    pkt = parse_packet(echo)
    first = pkt.chunks[0]
    assert isinstance(first, ch.CookieEchoChunk)
    cookie = bytearray(first.cookie)
    for i in (0, 5, len(cookie) // 2, len(cookie) - 1):
        forged = bytearray(cookie)
        forged[i] ^= 0x40
        b.receive_packet(
            serialize_packet(5000, 5000, pkt.verification_tag,
                             [ch.CookieEchoChunk(bytes(forged)).encode()]), link.now)
    # a cookie made by another association's secret is just as foreign
    other = make(77)
    other.receive_packet(echo, link.now)
    assert b.packets_to_send(link.now) == [] and other.packets_to_send(link.now) == []
    assert b.state is SctpState.CLOSED and not b.closed and b.bad_cookies == 4
    assert other.bad_cookies == 1 and other.state is SctpState.CLOSED
    # the genuine one still works
    b.receive_packet(echo, link.now)
    assert b.state.value == "established"


def test_stale_cookie_gets_an_error_and_the_initiator_starts_over() -> None:
    a, b, link = pair(7)
    held: list[bytes] = []

    def hold_first_echo(side: int, pkt: bytes) -> bytes | None:
        if not held and isinstance(parse_packet(pkt).chunks[0], ch.CookieEchoChunk):
            held.append(pkt)
            return None
        return pkt

    link.tap = hold_first_echo
    link.record = True
    a.connect(link.now)
    link.run(lambda: bool(held))
    link.tap = None
    b.receive_packet(held[0], link.now + 61)  # older than the 60 s cookie lifetime
    assert b.stale_cookies == 1 and b.state is SctpState.CLOSED
    errors = [c for p in b.packets_to_send(link.now + 61) for c in parse_packet(p).chunks]
    assert len(errors) == 1 and isinstance(errors[0], ch.ErrorChunk)
    code, body = errors[0].causes[0]
    assert code == ch.CAUSE_STALE_COOKIE and int.from_bytes(body, "big") > 500_000
    a.receive_packet(serialize_packet(5000, 5000, a.local_verification_tag,
                                      [errors[0].encode()]), link.now)
    assert a.state is SctpState.COOKIE_WAIT  # §5.2.6: a new INIT
    link.run(lambda: up(a, b))


def test_handshake_gives_up_after_max_init_retransmits() -> None:
    a, _b, link = pair(8)
    link.up = False
    link.record = True
    start = link.now
    a.connect(link.now)
    link.run(lambda: bool(link.of_type(0, Closed)))
    assert link.of_type(0, Closed) == [Closed("handshake timed out", aborted=True)]
    inits = [p for p in link.sent[0] if isinstance(parse_packet(p).chunks[0], ch.InitChunk)]
    assert len(inits) == 9  # the first INIT and Max.Init.Retransmits = 8 more
    # T1 doubles from RTO.Initial = 1 s and is capped at RTO.Max = 60 s
    assert math.isclose(link.now - start, sum(min(2**i, 60) for i in range(9)), abs_tol=1e-6)


# --- data transfer -----------------------------------------------------------------------------


def log_uniform_sizes(rng: random.Random, n: int) -> list[int]:
    sizes = [1, 262144, 1172, 1173, 2 * 1172]
    while len(sizes) < n:
        sizes.append(int(math.exp(rng.uniform(0, math.log(262144)))))
    rng.shuffle(sizes)
    return sizes


def test_thousand_messages_under_loss_reordering_and_duplication() -> None:
    a, b, link = connected(11, loss=0.1, duplicate=0.05, reorder=0.1)
    rng = random.Random(11)
    sent: dict[int, list[bytes]] = {s: [] for s in range(4)}
    for i, size in enumerate(log_uniform_sizes(rng, 1000)):
        stream = i % 4
        payload = rng.randbytes(size)
        sent[stream].append(payload)
        a.send(stream, 53, payload, link.now, ordered=stream < 2)
    # a little traffic the other way at the same time
    for i in range(50):
        b.send(9, 51, str(i).encode(), link.now)
    link.run(lambda: len(received(link, 1)) == 1000 and len(received(link, 0)) == 50,
             timeout=3000)
    for stream in (0, 1):
        assert received(link, 1, stream) == sent[stream]  # byte-exact and in order
    for stream in (2, 3):
        got = received(link, 1, stream)
        assert sorted(got) == sorted(sent[stream])  # complete
    assert received(link, 0) == [str(i).encode() for i in range(50)]
    assert a.retransmissions > 0 and a.fast_retransmits > 0
    link.run(lambda: a.sender is not None and a.sender.idle)
    assert b.receiver is not None and b.receiver.buffered == 0
    check_invariants(a)
    check_invariants(b)


def test_unordered_messages_overtake_a_blocked_one() -> None:
    a, _b, link = connected(12)
    dropped: list[int] = []

    def drop_first_data(side: int, pkt: bytes) -> bytes | None:
        if side == 0 and not dropped and any(
            isinstance(c, ch.DataChunk) for c in parse_packet(pkt).chunks
        ):
            dropped.append(1)
            return None
        return pkt

    link.tap = drop_first_data
    a.send(1, 53, b"ordered-1", link.now)
    a.send(1, 53, b"ordered-2", link.now)
    link.run_for(0.001)  # that packet is on its way (and will be lost)
    a.send(2, 53, b"unordered", link.now, ordered=False)
    link.run_for(0.1)
    # the first packet (both ordered messages) was lost; the unordered one got through
    assert received(link, 1) == [b"unordered"]
    link.run(lambda: len(received(link, 1)) == 3)
    assert received(link, 1, 1) == [b"ordered-1", b"ordered-2"]


def test_delayed_sack_every_second_packet_or_200ms() -> None:
    a, _b, link = connected(13)
    link.record = True
    link.sent[1].clear()
    a.send(1, 51, b"one", link.now)
    link.run(lambda: received(link, 1) == [b"one"])
    t_rx = link.now
    link.run(lambda: bool(chunks_sent(link, 1, ch.SackChunk)))
    assert math.isclose(link.now - t_rx, 0.2, abs_tol=1e-6)  # one packet: the 200 ms timer
    link.sent[1].clear()
    a.send(1, 51, b"x" * 3000, link.now)  # three packets in one burst
    link.run(lambda: len(received(link, 1)) == 2)
    link.run_for(0.05)
    sacks = chunks_sent(link, 1, ch.SackChunk)
    assert len(sacks) == 1  # after the second packet, not the first and not a timer


def test_duplicates_are_reported_and_acked_at_once() -> None:
    a, b, link = connected(14)
    link.record = True
    a.send(1, 51, b"dup me", link.now)
    data_pkt = a.packets_to_send(link.now)
    b.receive_packet(data_pkt[0], link.now)
    b.receive_packet(data_pkt[0], link.now)
    sacks = [c for p in b.packets_to_send(link.now) for c in parse_packet(p).chunks
             if isinstance(c, ch.SackChunk)]
    tsn = parse_packet(data_pkt[0]).chunks[0].tsn  # type: ignore[union-attr]
    assert sacks and sacks[-1].duplicates == [tsn] and sacks[-1].cumulative_tsn == tsn
    assert received(link, 1) == [] and b.next_event() == MessageReceived(1, 51, b"dup me")
    assert b.next_event() is None


def test_receiver_window_is_honoured() -> None:
    a, b, link = connected(15)
    b.receiver.window = 20000  # type: ignore[union-attr]
    link.tap = lambda side, pkt: pkt
    for i in range(50):
        a.send(1, 53, bytes([i]) * 5000, link.now)
    max_outstanding = 0

    def watch() -> bool:
        nonlocal max_outstanding
        assert a.sender is not None
        max_outstanding = max(max_outstanding, a.sender.outstanding_bytes)
        return len(received(link, 1)) == 50

    link.run(watch)
    assert max_outstanding <= 20000 + 1172
    assert received(link, 1) == [bytes([i]) * 5000 for i in range(50)]


# --- partial reliability ----------------------------------------------------------------------


def is_subsequence(sub: list[bytes], seq: list[bytes]) -> bool:
    it = iter(seq)
    return all(any(x == y for y in it) for x in sub)


@pytest.mark.parametrize("mode", ["rexmit", "lifetime"])
def test_partial_reliability_under_loss_delivers_a_subset_and_never_stalls(mode: str) -> None:
    a, b, link = connected(21, loss=0.2, reorder=0.1)
    rng = random.Random(21)
    kw: dict[str, Any] = {"max_retransmits": 0} if mode == "rexmit" else {"max_lifetime": 0.3}
    sent: dict[int, list[bytes]] = {1: [], 2: []}
    for i in range(300):
        stream = 1 + i % 2
        payload = i.to_bytes(2, "big") + rng.randbytes(rng.choice([10, 3000, 9000]))
        sent[stream].append(payload)
        a.send(stream, 53, payload, link.now, ordered=stream == 1, **kw)
    for stream in (1, 2):
        a.send(stream, 51, b"END", link.now)  # reliable, after the unreliable ones
    link.run(lambda: received(link, 1, 1)[-1:] == [b"END"]
             and b"END" in received(link, 1, 2), timeout=600)
    ordered = received(link, 1, 1)[:-1]
    assert is_subsequence(ordered, sent[1])  # in order, nothing invented
    assert 0 < len(ordered) < len(sent[1])
    unordered = [m for m in received(link, 1, 2) if m != b"END"]
    assert set(unordered) <= set(sent[2]) and 0 < len(unordered) < len(sent[2])
    assert len(unordered) == len(set(unordered))
    assert a.messages_abandoned > 0
    link.run(lambda: a.sender is not None and a.sender.idle, timeout=120)
    assert b.receiver is not None and b.receiver.buffered == 0
    check_invariants(a)
    check_invariants(b)
    assert chunks_sent_any(a)


def chunks_sent_any(a: SctpAssociation) -> bool:
    return a.sender is not None and a.sender.adv_ack == a.sender.cum_ack


def test_forward_tsn_skips_an_abandoned_ordered_message() -> None:
    a, _b, link = connected(22)
    link.record = True
    lost: list[int] = []

    def drop_message_one(side: int, pkt: bytes) -> bytes | None:
        chunks = parse_packet(pkt).chunks
        if side == 0 and any(isinstance(c, ch.DataChunk) and c.ppid == 99 for c in chunks):
            lost.append(1)
            return None
        return pkt

    link.tap = drop_message_one
    a.send(4, 99, b"one" * 1000, link.now, max_retransmits=0)
    a.send(4, 53, b"two", link.now)
    link.run(lambda: received(link, 1, 4) == [b"two"])
    fwd = chunks_sent(link, 0, ch.ForwardTsnChunk)
    assert fwd and fwd[0].streams == [(4, 0)]  # stream 4, SSN 0 skipped
    assert len(lost) == 3  # each fragment of "one" was lost once and never retransmitted


# --- stream reset ------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [0.0, 0.15])
def test_stream_reset_and_reuse(loss: float) -> None:
    a, b, link = connected(31, loss=loss)
    for i in range(30):
        a.send(3, 53, b"before %d" % i, link.now)
    a.reset_streams([3], link.now)
    with pytest.raises(ValueError):
        a.send(3, 53, b"too late", link.now)
    assert a.stream_resetting(3)
    link.run(lambda: link.of_type(0, StreamsReset) and link.of_type(1, StreamsReset))
    assert link.of_type(0, StreamsReset) == [StreamsReset((3,))]
    assert link.of_type(1, StreamsReset) == [StreamsReset((3,))]
    # everything queued before the reset arrived, in order, before the reset was reported
    events = link.events[1]
    reset_at = next(i for i, e in enumerate(events) if isinstance(e, StreamsReset))
    assert [e.data for e in events[:reset_at] if isinstance(e, MessageReceived)] == [
        b"before %d" % i for i in range(30)
    ]
    assert not a.stream_resetting(3) and not b.stream_resetting(3)
    # reuse: both directions start over at SSN 0
    for i in range(5):
        a.send(3, 53, b"after %d" % i, link.now)
        b.send(3, 53, b"reply %d" % i, link.now)
    link.run(lambda: len(received(link, 1, 3)) == 35 and len(received(link, 0, 3)) == 5)
    assert received(link, 1, 3)[30:] == [b"after %d" % i for i in range(5)]
    assert received(link, 0, 3) == [b"reply %d" % i for i in range(5)]


def test_reset_from_both_sides_at_once() -> None:
    a, b, link = connected(32)
    a.send(1, 51, b"x", link.now)
    b.send(1, 51, b"y", link.now)
    a.reset_streams([1, 5], link.now)
    b.reset_streams([1], link.now)
    link.run(lambda: len(link.of_type(0, StreamsReset)) >= 2
             and len(link.of_type(1, StreamsReset)) >= 2)
    for side in (0, 1):
        reset = sorted(s for e in link.of_type(side, StreamsReset) for s in e.stream_ids)
        assert reset == [1, 5]
    assert received(link, 1) == [b"x"] and received(link, 0) == [b"y"]


def test_incoming_reset_waits_for_the_last_tsn() -> None:
    """RFC 6525 §5.2.2: the reset takes effect only after every TSN before it arrived."""
    a, _b, link = connected(33)
    link.record = True
    held: list[bytes] = []

    def hold_data(side: int, pkt: bytes) -> bytes | None:
        parsed = parse_packet(pkt)
        if side == 0 and not held and any(isinstance(c, ch.DataChunk) for c in parsed.chunks):
            held.append(pkt)  # lose the DATA, let the RE-CONFIG bundled with it through
            rest = [c.encode() for c in parsed.chunks if not isinstance(c, ch.DataChunk)]
            return serialize_packet(5000, 5000, parsed.verification_tag, rest) if rest else None
        return pkt

    link.tap = hold_data
    a.send(2, 51, b"late", link.now)
    a.reset_streams([2], link.now)
    link.run_for(0.5)
    responses = [p for c in chunks_sent(link, 1, ch.ReconfigChunk) for p in c.params
                 if isinstance(p, ch.ReconfigResponse)]
    assert responses and responses[0].result == ch.RESULT_IN_PROGRESS
    assert not link.of_type(1, StreamsReset)
    link.run(lambda: link.of_type(1, StreamsReset))
    assert received(link, 1) == [b"late"]


# --- shutdown, abort, failure ------------------------------------------------------------------


@pytest.mark.parametrize("who", [0, 1, 2])
def test_graceful_shutdown(who: int) -> None:
    a, b, link = connected(41, loss=0.1)
    for _i in range(20):
        a.send(1, 53, bytes(5000), link.now)
        b.send(1, 53, bytes(100), link.now)
    if who in (0, 2):
        a.shutdown(link.now)
    if who in (1, 2):
        b.shutdown(link.now)
    with pytest.raises(ValueError):
        (a if who != 1 else b).send(1, 53, b"no", link.now)
    link.run(lambda: a.closed and b.closed, timeout=300)
    assert link.of_type(0, Closed) == [Closed("shutdown", aborted=False)]
    assert link.of_type(1, Closed) == [Closed("shutdown", aborted=False)]
    assert len(received(link, 1)) == 20 and len(received(link, 0)) == 20
    assert a.get_timer() is None and b.get_timer() is None


def test_abort_carries_the_reason() -> None:
    a, b, link = connected(42)
    a.abort("going away")
    assert a.closed and a.state is SctpState.CLOSED
    link.run(lambda: b.closed)
    assert link.of_type(0, Closed) == [Closed("going away", aborted=True)]
    [closed] = link.of_type(1, Closed)
    assert closed.aborted and "going away" in closed.reason
    # a closed association answers stray packets with ABORT and ignores ABORTs
    b.receive_packet(serialize_packet(5000, 5000, b.local_verification_tag,
                                      [ch.HeartbeatChunk(b"x").encode()]), link.now)
    [reply] = b.packets_to_send(link.now)
    assert isinstance(parse_packet(reply).chunks[0], ch.AbortChunk)


def test_heartbeats_while_idle() -> None:
    a, b, link = connected(43)
    link.run_for(200)
    for assoc in (a, b):
        assert assoc.heartbeats_sent >= 4
        assert assoc.heartbeat_acks_received == assoc.heartbeats_sent
        assert assoc.state is SctpState.ESTABLISHED
    assert a.sender is not None and a.sender.srtt is not None
    assert math.isclose(a.sender.srtt, 0.02, abs_tol=1e-6)  # measured from heartbeats


def test_idle_peer_that_vanished_is_declared_dead() -> None:
    a, b, link = connected(44)
    link.up = False
    link.run(lambda: a.closed and b.closed, timeout=3600)
    assert link.of_type(0, Closed)[0].reason == "too many retransmissions"


def test_retransmission_backoff_doubles_to_rto_max_then_fails() -> None:
    a, _b, link = connected(45)
    a.send(1, 53, b"into the void", link.now)
    link.up = False
    link.record = True
    link.run(lambda: a.closed, timeout=3600)
    times = []
    for pkt in link.sent[0]:
        if any(isinstance(c, ch.DataChunk) for c in parse_packet(pkt).chunks):
            times.append(link_time_of(pkt, link))
    gaps = [round(t2 - t1, 6) for t1, t2 in itertools.pairwise(times)]
    assert gaps == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert link.of_type(0, Closed) == [Closed("too many retransmissions", aborted=True)]
    # ten retransmissions; the 11th expiry exceeds Association.Max.Retrans = 10 and fails
    assert a.t3_expirations == 10


_send_times: dict[int, float] = {}


def link_time_of(pkt: bytes, link: Link) -> float:
    return _send_times[id(pkt)]


@pytest.fixture(autouse=True)
def _stamp_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember when each recorded packet left, for the backoff test."""
    original = Link._collect

    def collect(self: Link) -> None:
        before = [len(s) for s in self.sent]
        original(self)
        for side in (0, 1):
            for pkt in self.sent[side][before[side]:]:
                _send_times[id(pkt)] = self.now

    monkeypatch.setattr(Link, "_collect", collect)


# --- congestion control ------------------------------------------------------------------------


def test_cwnd_grows_in_slow_start_and_shrinks_on_loss() -> None:
    a, b, link = connected(51)
    snd = a.sender
    assert snd is not None
    assert snd.cwnd == 4380  # §7.2.1: min(4*MTU, max(2*MTU, 4380)) for MTU 1200
    assert snd.ssthresh == b.receiver.window  # type: ignore[union-attr]
    for _ in range(100):
        a.send(1, 53, bytes(10000), link.now)
    seen = [snd.cwnd]
    def watch() -> bool:
        seen.append(snd.cwnd)
        return len(received(link, 1)) == 100

    link.run(watch)
    # slow start, no loss: cwnd only grows (by at most one MTU per SACK, §7.2.1)
    assert seen == sorted(seen) and snd.cwnd > 8 * 4380
    # one lost packet in the middle of a burst: fast retransmit halves cwnd
    for _ in range(100):
        a.send(1, 53, bytes(10000), link.now)
    state = {"n": 0}

    def drop_tenth(side: int, pkt: bytes) -> bytes | None:
        if side == 0 and any(isinstance(c, ch.DataChunk) for c in parse_packet(pkt).chunks):
            state["n"] += 1
            if state["n"] == 10:
                return None
        return pkt

    link.tap = drop_tenth
    before = snd.cwnd
    link.run(lambda: snd.fast_retransmits > 0)
    assert snd.cwnd == snd.ssthresh == max(before // 2, 4 * 1200) or snd.cwnd < before
    link.run(lambda: len(received(link, 1)) == 200)
    # a dead link: T3 collapses cwnd to one MTU
    a.send(1, 53, bytes(50000), link.now)
    link.up = False
    link.run(lambda: snd.t3_expirations > 0)
    assert snd.cwnd == 1200 and snd.ssthresh >= 4 * 1200
    link.up = True
    link.run(lambda: len(received(link, 1)) == 201)


# --- limits and robustness ---------------------------------------------------------------------


def test_oversized_inbound_message_aborts_instead_of_buffering() -> None:
    a, b, link = pair(61, b_kw={"max_message_size": 10000})
    a.connect(link.now)
    link.run(lambda: up(a, b))
    a.send(1, 53, bytes(50000), link.now)
    link.run(lambda: a.closed and b.closed)
    [closed] = link.of_type(1, Closed)
    assert closed.aborted and "max-message-size" in closed.reason
    assert link.of_type(0, Closed)[0].aborted
    assert received(link, 1) == []


def test_send_validation() -> None:
    a, b, link = pair(62)
    with pytest.raises(ValueError):
        a.send(1, 51, b"not yet", link.now)
    a.connect(link.now)
    link.run(lambda: up(a, b))
    a.remote_max_message_size = 1000
    bads: list[Callable[[], object]] = [
        lambda: a.send(1, 51, b"", link.now),
        lambda: a.send(1, 51, bytes(1001), link.now),
        lambda: a.send(65535, 51, b"x", link.now),
        lambda: a.send(-1, 51, b"x", link.now),
        lambda: a.send(1, 51, b"x", link.now, max_retransmits=-1),
        lambda: a.reset_streams([70000], link.now),
        lambda: a.connect(link.now),
    ]
    for bad in bads:
        with pytest.raises(ValueError):
            bad()
    a.remote_max_message_size = 0  # RFC 8841: 0 means no limit
    a.send(1, 51, bytes(300000), link.now)
    assert a.buffered_amount(1) == 300000


def test_wrong_verification_tag_and_ports_are_dropped() -> None:
    _a, b, link = connected(63)
    wrong_tag = serialize_packet(5000, 5000, b.local_verification_tag ^ 1,
                                 [ch.AbortChunk().encode()])
    wrong_port = serialize_packet(5000, 5001, b.local_verification_tag,
                                  [ch.AbortChunk().encode()])
    reflected_wrong = serialize_packet(5000, 5000, b.local_verification_tag,
                                       [ch.AbortChunk(reflected=True).encode()])
    for pkt in (wrong_tag, wrong_port, reflected_wrong):
        b.receive_packet(pkt, link.now)
    assert b.state is SctpState.ESTABLISHED and b.packets_dropped == 3
    with pytest.raises(SctpError):
        b.receive_packet(b"\x00" * 20, link.now)
    reflected_ok = serialize_packet(5000, 5000, b.peer_verification_tag,
                                    [ch.AbortChunk(reflected=True).encode()])
    b.receive_packet(reflected_ok, link.now)
    assert b.closed


@pytest.mark.parametrize(
    ("ctype", "processes_rest", "reports"),
    [(0x3F, False, False), (0x7F, False, True), (0xBF, True, False), (0xFF, True, True)],
)
def test_unknown_chunk_types_follow_their_upper_bits(
    ctype: int, processes_rest: bool, reports: bool
) -> None:
    _a, b, link = connected(64)
    tsn = b.receiver.cum + 1  # type: ignore[union-attr]
    pkt = serialize_packet(5000, 5000, b.local_verification_tag, [
        ch.UnknownChunk(ctype, 0, b"mystery").encode(),
        ch.DataChunk(tsn & 0xFFFFFFFF, 1, 0, 51, b"after").encode(),
    ])
    b.receive_packet(pkt, link.now)
    out = [c for p in b.packets_to_send(link.now + 1) for c in parse_packet(p).chunks]
    errors = [c for c in out if isinstance(c, ch.ErrorChunk)]
    assert bool(errors) == reports
    if reports:
        code, body = errors[0].causes[0]
        assert code == ch.CAUSE_UNRECOGNIZED_CHUNK and body.startswith(bytes([ctype]))
    got = b.next_event()
    assert (got == MessageReceived(1, 51, b"after")) == processes_rest


def test_unknown_init_parameters_follow_their_upper_bits() -> None:
    b = make(65)
    init = ch.InitChunk(0x1234, MiB, 10, 10, 1000, [
        (0x8001, b"\x00\x00\x00\x01"),  # zero checksum (RFC 9653): skip silently
        (0xC123, b"skip+report"),
        (0x4321, b"stop+report"),
        (0xC000, b""),  # never reached
    ])
    b.receive_packet(serialize_packet(5000, 5000, 0, [init.encode()]), 0.0)
    [pkt] = b.packets_to_send(0.0)
    parsed = parse_packet(pkt)
    assert parsed.verification_tag == 0x1234
    [ack] = parsed.chunks
    assert isinstance(ack, ch.InitAckChunk)
    reported = [v for t, v in ack.params if t == ch.PARAM_UNRECOGNIZED]
    assert [ch.parse_params(v, 0, len(v))[0][0] for v in reported] == [0xC123, 0x4321]
    assert b.state is SctpState.CLOSED  # still no state kept


def test_data_on_an_invalid_stream_is_acked_and_reported() -> None:
    _a, b, link = connected(66)
    tsn = b.receiver.cum + 1  # type: ignore[union-attr]
    b.receive_packet(serialize_packet(5000, 5000, b.local_verification_tag, [
        ch.DataChunk(tsn & 0xFFFFFFFF, 65535, 0, 51, b"nowhere").encode()]), link.now)
    out = [c for p in b.packets_to_send(link.now + 1) for c in parse_packet(p).chunks]
    assert any(isinstance(c, ch.ErrorChunk) and c.causes[0][0] == ch.CAUSE_INVALID_STREAM
               for c in out)
    assert any(isinstance(c, ch.SackChunk) and c.cumulative_tsn == tsn & 0xFFFFFFFF for c in out)
    assert b.next_event() is None


def test_empty_data_chunk_aborts_with_no_user_data() -> None:
    _a, b, link = connected(67)
    tsn = b.receiver.cum + 1  # type: ignore[union-attr]
    b.receive_packet(serialize_packet(5000, 5000, b.local_verification_tag, [
        ch.DataChunk(tsn & 0xFFFFFFFF, 1, 0, 51, b"").encode()]), link.now)
    [pkt] = b.packets_to_send(link.now)
    [abort] = parse_packet(pkt).chunks
    assert isinstance(abort, ch.AbortChunk) and abort.causes[0][0] == ch.CAUSE_NO_USER_DATA
    assert b.closed


def test_duplicate_init_after_establishment_changes_nothing() -> None:
    """§5.2.2: a stale INIT gets an INIT ACK with a fresh tag; §5.2.3: the peer drops it."""
    a, b, link = pair(68)
    link.record = True
    a.connect(link.now)
    link.run(lambda: up(a, b))
    init = first_packet_with(link, 0, ch.InitChunk)
    b.receive_packet(init, link.now)
    [reply] = b.packets_to_send(link.now)
    [ack] = parse_packet(reply).chunks
    assert isinstance(ack, ch.InitAckChunk)
    assert ack.initiate_tag not in (0, b.local_verification_tag)
    assert b.state is SctpState.ESTABLISHED
    a.receive_packet(reply, link.now)  # unexpected INIT ACK: discarded
    assert a.packets_to_send(link.now) == [] and a.state is SctpState.ESTABLISHED
    a.send(1, 51, b"still here", link.now)
    link.run(lambda: received(link, 1) == [b"still here"])
    assert len(link.of_type(0, Established)) == len(link.of_type(1, Established)) == 1


def test_message_abandoned_half_sent_does_not_block_its_ordered_stream() -> None:
    """Lifetime runs out while cwnd holds back the rest of a message whose first fragments
    were delivered and acknowledged: a placeholder TSN lets FORWARD TSN skip its SSN."""
    a, b, link = connected(69, delay=0.1)
    link.record = True
    a.send(5, 53, bytes(20000), link.now, max_lifetime=0.15)  # ~17 fragments, cwnd ~4
    a.send(5, 53, b"next", link.now)
    link.run(lambda: received(link, 1, 5) == [b"next"], timeout=30)
    fwd = chunks_sent(link, 0, ch.ForwardTsnChunk)
    assert fwd and fwd[0].streams == [(5, 0)]
    sent_tsns = {c.tsn for c in chunks_sent(link, 0, ch.DataChunk)}
    assert fwd[0].new_cumulative_tsn not in sent_tsns  # the placeholder never went out
    assert a.messages_abandoned == 1
    link.run(lambda: b.receiver is not None and b.receiver.buffered == 0)


def test_webrtc_timer_profile() -> None:
    """Chromium-like timers: short RTO floor, 3 s backoff cap, never give up by itself."""
    from trio_sfu.proto.sctp import WEBRTC_TIMERS

    a, b, link = pair(70, a_kw=dict(WEBRTC_TIMERS), b_kw=dict(WEBRTC_TIMERS))
    a.connect(link.now)
    link.run(lambda: up(a, b))
    assert a.sender is not None and a.sender.rto == 0.5
    a.send(1, 53, b"lost for a while", link.now)
    link.up = False
    link.record = True
    link.run_for(60)
    assert not a.closed and a.sender.rto == 3.0 and a.t3_expirations >= 18
    link.up = True
    link.run(lambda: received(link, 1) == [b"lost for a while"], timeout=10)
