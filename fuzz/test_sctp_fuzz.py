"""SctpAssociation.receive_packet against hostile input, in every state.

Three generators: raw bytes; packets recorded from a scripted exchange, mutated and given a
fixed-up CRC (so parsing goes deep); and well-formed chunks with adversarial field values stamped
with the target's verification tag (so the state machine goes deep). The target is rebuilt by
replaying the same seeded script, so recorded packets carry tags and TSNs it really expects.

Properties: only SctpError ever escapes; afterwards nothing raises while the link keeps running,
and the association either still carries a message both ways or reports Closed.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from tests.test_sctp_link import Link, check_invariants
from trio_sfu.proto.errors import SctpError
from trio_sfu.proto.sctp import (
    Closed,
    Established,
    MessageReceived,
    SctpAssociation,
    SctpState,
)
from trio_sfu.proto.sctp import chunks as ch
from trio_sfu.proto.sctp.chunks import parse_packet, serialize_packet

Step = Callable[[Link, SctpAssociation, SctpAssociation], None]


def _up(a: SctpAssociation, b: SctpAssociation) -> bool:
    return a.state is SctpState.ESTABLISHED and b.state is SctpState.ESTABLISHED


def _connect(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    a.connect(link.now)
    link.run_for(0.005)  # INIT on the wire


def _to_cookie_echoed(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    link.run_for(0.015)  # INIT ACK back, COOKIE ECHO out


def _established(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    link.run(lambda: _up(a, b))


def _traffic(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    rng = random.Random(5)
    for i in range(12):
        a.send(i % 3, 53, rng.randbytes(rng.choice([5, 1500, 4000])), link.now, ordered=i % 3 != 2)
        b.send(1, 51, b"reply %d" % i, link.now)
    a.send(4, 99, bytes(3000), link.now, max_retransmits=0)
    link.tap = _lose_ppid_99  # the partially reliable message is lost: FORWARD TSN follows
    link.loss = 0.3
    link.run_for(0.015)  # data in flight, some lost


def _lose_ppid_99(side: int, pkt: bytes) -> bytes | None:
    chunks = parse_packet(pkt).chunks
    if any(isinstance(c, ch.DataChunk) and c.ppid == 99 for c in chunks):
        return None
    return pkt


def _recover(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    link.loss = 0.0
    link.run_for(3.0)  # retransmissions, FORWARD TSN, SACKs
    link.tap = None


def _reset(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    a.reset_streams([0, 2], link.now)
    link.run_for(0.015)


def _idle(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    link.run_for(40.0)  # heartbeats; the reset has completed


def _unknown(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    b.receive_packet(serialize_packet(5000, 5000, b.local_verification_tag,
                                      [ch.UnknownChunk(0xC7, 0, b"?").encode()]), link.now)
    link.run_for(0.015)  # ERROR chunk goes out


def _shutdown(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    a.send(1, 53, bytes(2500), link.now)
    a.shutdown(link.now)
    link.run_for(0.015)


def _closed(link: Link, a: SctpAssociation, b: SctpAssociation) -> None:
    link.run_for(2.0)


SCRIPT: list[Step] = [
    _connect, _to_cookie_echoed, _established, _traffic, _recover, _reset, _idle, _unknown,
    _shutdown, _closed,
]


def build(steps: int, seed: int = 1) -> tuple[SctpAssociation, SctpAssociation, Link]:
    a = SctpAssociation(rng=random.Random(seed).randbytes)
    b = SctpAssociation(rng=random.Random(seed + 1).randbytes)
    link = Link(a, b, seed=seed)
    link.record = True
    for step in SCRIPT[:steps]:
        step(link, a, b)
    return a, b, link


@functools.cache
def corpus() -> tuple[tuple[int, bytes], ...]:
    """(receiving side, packet) for every packet the full script put on the wire."""
    _, _, link = build(len(SCRIPT))
    out = [(1, p) for p in link.sent[0]] + [(0, p) for p in link.sent[1]]
    a, _, link = build(SCRIPT.index(_idle))
    a.abort("done")  # an ABORT with the same tags, from the same replay
    out.append((1, a.packets_to_send(link.now)[0]))
    return tuple(out)


def test_corpus_covers_the_chunk_types() -> None:
    kinds = {type(c).__name__ for _, p in corpus() for c in parse_packet(p).chunks}
    assert kinds >= {
        "InitChunk", "InitAckChunk", "CookieEchoChunk", "CookieAckChunk", "DataChunk",
        "SackChunk", "ForwardTsnChunk", "ReconfigChunk", "HeartbeatChunk",
        "HeartbeatAckChunk", "ErrorChunk", "ShutdownChunk", "ShutdownAckChunk",
        "ShutdownCompleteChunk", "AbortChunk",
    }


def fix_crc(buf: bytearray) -> bytes:
    from crc32c import crc32c

    if len(buf) >= 12:
        buf[8:12] = b"\x00\x00\x00\x00"
        buf[8:12] = crc32c(bytes(buf)).to_bytes(4, "little")
    return bytes(buf)


def feed_and_check(steps: int, side: int, make_packet: Callable[[SctpAssociation], bytes]) -> None:
    a, b, link = build(steps)
    target = (a, b)[side]
    packet = make_packet(target)
    try:
        target.receive_packet(packet, link.now)
        rejected = False
    except SctpError:
        rejected = True
    # Afterwards the link keeps running without any exception. A rejected packet must leave no
    # trace: a message then gets through both ways (or a handshake under way completes). An
    # accepted hostile packet may cost data (a forged TSN cannot be told from a real one, and
    # over DTLS only the peer can send), but the association stays consistent and never stalls
    # silently: it either carries messages or ends with Closed.
    link.record = False
    link.loss = 0.0
    link.tap = None
    probed = [False, False]
    seen_restarts = [0]

    def delivered() -> bool:
        return all(
            any(e.data == b"probe-%d" % (1 - s) for e in link.of_type(s, MessageReceived))
            for s in (0, 1)
        )

    def done() -> bool:
        restarts = sum(e.restarted for s in (0, 1) for e in link.of_type(s, Established))
        if restarts != seen_restarts[0]:
            seen_restarts[0] = restarts
            probed[:] = [False, False]  # a restart loses what was in flight: probe again
        for i, assoc in enumerate((a, b)):
            if not probed[i] and assoc.state is SctpState.ESTABLISHED:
                assoc.send(7, 51, b"probe-%d" % i, link.now)
                probed[i] = True
        return a.closed or b.closed or delivered()

    def idle_listeners() -> bool:
        return all(x.state is SctpState.CLOSED and not x.closed for x in (a, b))

    link.run(lambda: done() or (idle_listeners() and not link.pending), timeout=4000,
             require=rejected)
    if idle_listeners() and not done():
        a.connect(link.now)  # nobody had started a handshake: start one now
    if rejected:
        link.run(done, timeout=4000)
        if steps < SCRIPT.index(_shutdown):
            assert delivered(), "a rejected packet disturbed the association"
    else:
        link.run_for(600)
    for assoc in (a, b):
        check_invariants(assoc)
    if a.closed or b.closed:
        assert link.of_type(0, Closed) or link.of_type(1, Closed)


states = st.integers(0, len(SCRIPT))


@given(steps=states, side=st.integers(0, 1), data=st.binary(max_size=300))
def test_random_bytes(steps: int, side: int, data: bytes) -> None:
    feed_and_check(steps, side, lambda _: data)


@given(steps=states, side=st.integers(0, 1), body=st.binary(min_size=4, max_size=300),
       keep_tag=st.booleans())
def test_random_chunks_behind_a_valid_header(
    steps: int, side: int, body: bytes, keep_tag: bool
) -> None:
    def make(target: SctpAssociation) -> bytes:
        tag = target.local_verification_tag if keep_tag else 0
        header = bytearray(serialize_packet(5000, 5000, tag, [])[:12])
        return fix_crc(header + bytearray(body))

    feed_and_check(steps, side, make)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], int | None, bytes, bool]:
    index = draw(st.integers(0, len(corpus()) - 1))
    edits = draw(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6))
    cut = draw(st.none() | st.integers(0, 1500))
    tail = draw(st.binary(max_size=8))
    retag = draw(st.booleans())
    return index, edits, cut, tail, retag


@given(steps=states, mutation=mutations())
def test_mutated_recorded_packets(
    steps: int, mutation: tuple[int, list[tuple[int, int]], int | None, bytes, bool]
) -> None:
    index, edits, cut, tail, retag = mutation
    side, original = corpus()[index]

    def make(target: SctpAssociation) -> bytes:
        buf = bytearray(original)
        if retag and len(buf) >= 8 and buf[12:13] != b"\x01":
            buf[4:8] = target.local_verification_tag.to_bytes(4, "big")
        for pos, value in edits:
            if 12 <= pos < len(buf):
                buf[pos] = value
        if cut is not None:
            del buf[max(12, cut):]
        return fix_crc(buf + bytearray(tail))

    feed_and_check(steps, side, make)


# --- structurally valid chunks with hostile values ---------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
near = st.integers(-70000, 70000)


@st.composite
def hostile_chunks(draw: st.DrawFn, cum: int, next_tsn: int) -> ch.Chunk:
    """Chunks whose TSNs sit around the target's own counters, so they are not just dropped."""
    tsn = st.one_of(near.map(lambda d: (cum + d) & 0xFFFFFFFF), u32)
    our = st.one_of(st.integers(-40, 40).map(lambda d: (next_tsn + d) & 0xFFFFFFFF), u32)
    streams = st.lists(u16, max_size=5)
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return ch.DataChunk(draw(tsn), draw(st.integers(0, 8) | u16), draw(u16), draw(u32),
                            draw(st.binary(max_size=40)), draw(st.integers(0, 255)))
    if kind == 1:
        return ch.SackChunk(draw(our), draw(u32),
                            draw(st.lists(st.tuples(u16, u16), max_size=6)),
                            draw(st.lists(u32, max_size=4)))
    if kind == 2:
        return ch.ForwardTsnChunk(draw(tsn), draw(st.lists(st.tuples(u16, u16), max_size=4)))
    if kind == 3:
        params: list[ch.ReconfigParam] = [draw(st.one_of(
            st.builds(ch.OutgoingResetRequest, u32, u32, tsn, streams),
            st.builds(ch.IncomingResetRequest, u32, streams),
            st.builds(ch.ReconfigResponse, u32, st.integers(0, 7)),
            st.builds(ch.OtherReconfigRequest, st.sampled_from([15, 17, 18]), u32),
        )) for _ in range(draw(st.integers(1, 2)))]
        return ch.ReconfigChunk(params)
    if kind == 4:
        return ch.ShutdownChunk(draw(our))
    if kind == 5:
        simple: list[ch.Chunk] = [ch.ShutdownAckChunk(), ch.CookieAckChunk(),
                                  ch.ShutdownCompleteChunk(), ch.HeartbeatChunk(b"x" * 16)]
        return draw(st.sampled_from(simple))
    if kind == 6:
        return ch.HeartbeatAckChunk(draw(st.binary(max_size=24)))
    if kind == 7:
        return ch.ErrorChunk([(draw(u16), draw(st.binary(max_size=8)))])
    if kind == 8:
        return ch.CookieEchoChunk(draw(st.binary(max_size=90)))
    return ch.UnknownChunk(draw(st.integers(15, 255).filter(lambda t: t not in (
        ch.FORWARD_TSN, ch.RECONFIG))), 0, draw(st.binary(max_size=12)))


@given(steps=states, side=st.integers(0, 1), data=st.data())
def test_hostile_but_well_formed_chunks(steps: int, side: int, data: st.DataObject) -> None:
    def make(target: SctpAssociation) -> bytes:
        rcv, snd = target.receiver, target.sender
        cum = rcv.cum if rcv else 0
        nxt = snd.next_tsn if snd else 0
        chunks = data.draw(st.lists(hostile_chunks(cum, nxt), min_size=1, max_size=4))
        tag = target.local_verification_tag
        return serialize_packet(5000, 5000, tag, [c.encode() for c in chunks])

    feed_and_check(steps, side, make)


@given(seed=st.integers(0, 2**16), count=st.integers(1, 20))
def test_garbage_storm_then_handshake(seed: int, count: int) -> None:
    """A listener fed junk (some of it INITs) still accepts the real peer afterwards."""
    rng = random.Random(seed)
    a, b, link = build(0)
    for _ in range(count):
        if rng.random() < 0.3:
            init = ch.InitChunk(rng.randrange(1, 2**32), rng.randrange(2**32), 1, 1, 0)
            pkt = serialize_packet(5000, 5000, 0, [init.encode()])
        else:
            pkt = fix_crc(bytearray(rng.randbytes(rng.randrange(12, 200))))
        with contextlib.suppress(SctpError):
            b.receive_packet(pkt, link.now)
    b.packets_to_send(link.now)
    a.connect(link.now)
    link.run(lambda: _up(a, b))
