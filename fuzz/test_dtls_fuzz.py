"""DTLS fuzzing: random and mutated datagrams never raise anything but DtlsError (the
transport in fact never raises on input), and never break an established association."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto.dtls import (
    ApplicationData,
    Certificate,
    Closed,
    DtlsState,
    DtlsTransport,
    HandshakeComplete,
)
from trio_sfu.proto.errors import DtlsError

CLIENT_CERT = Certificate.generate()
SERVER_CERT = Certificate.generate()


def new_pair() -> tuple[DtlsTransport, DtlsTransport]:
    client = DtlsTransport(CLIENT_CERT, is_server=False,
                           remote_fingerprints=SERVER_CERT.fingerprints)
    server = DtlsTransport(SERVER_CERT, is_server=True,
                           remote_fingerprints=CLIENT_CERT.fingerprints)
    return client, server


def pump(a: DtlsTransport, b: DtlsTransport, captured: list[bytes] | None = None) -> None:
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for data in src.datagrams_to_send():
                moved = True
                if captured is not None:
                    captured.append(data)
                dst.receive_datagram(data, 0.0)


def drain(t: DtlsTransport) -> list[object]:
    out: list[object] = []
    while (event := t.next_event()) is not None:
        out.append(event)
    return out


# One established association shared by every example: garbage accumulates across examples,
# which is the harsher test. Real datagrams (every handshake flight and some application
# records) seed the mutations.
SEEDS: list[bytes] = []
CLIENT, SERVER = new_pair()
SERVER.start(0.0)
CLIENT.start(0.0)
pump(CLIENT, SERVER, SEEDS)
assert isinstance(drain(CLIENT)[0], HandshakeComplete)
assert isinstance(drain(SERVER)[0], HandshakeComplete)
for payload in (b"a" * 10, b"b" * 300):
    CLIENT.send(payload)
    SERVER.send(payload)
    SEEDS += CLIENT.datagrams_to_send() + SERVER.datagrams_to_send()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.integers(0, 4))
        if op == 0:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del data[draw(st.integers(1, len(data))) :]
        elif op == 2:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == 3 and len(data) >= 13:  # a record length that lies
            struct.pack_into("!H", data, 11, draw(st.integers(0, 0xFFFF)))
        elif len(data) >= 5:  # another epoch / content type
            struct.pack_into("!H", data, 3, draw(st.integers(0, 3)))
            data[0] = draw(st.sampled_from([20, 21, 22, 23, 24, 25]))
        if not data:
            data.append(22)
    return bytes(data)


dtls_range = st.builds(
    lambda first, rest: bytes([first]) + rest, st.integers(20, 63), st.binary(max_size=300)
)
record_like = st.builds(
    lambda ctype, version, epoch, seq, body: struct.pack("!BHH", ctype, version, epoch)
    + seq.to_bytes(6, "big") + struct.pack("!H", len(body)) + body,
    st.integers(20, 26),
    st.sampled_from([0xFEFD, 0xFEFF, 0x0303, 0]),
    st.integers(0, 2),
    st.integers(0, 2**48 - 1),
    st.binary(max_size=200),
)
datagrams = st.lists(st.one_of(dtls_range, record_like, mutated()), min_size=1, max_size=5)


def feed(t: DtlsTransport, batch: list[bytes]) -> list[object]:
    for data in batch:
        with contextlib.suppress(DtlsError):  # the transport never raises on input,
            t.receive_datagram(data, 1.0)  # but DtlsError would be within the contract
        t.datagrams_to_send()
    return drain(t)


@given(datagrams)
def test_established_association_survives(batch: list[bytes]) -> None:
    for target in (SERVER, CLIENT):
        evs = feed(target, batch)
        # Only genuine application records (replayed seeds) may come out: DTLS has replay
        # protection, so even those are dropped once seen.
        assert all(isinstance(e, ApplicationData) for e in evs), evs
        assert target.state is DtlsState.CONNECTED
    CLIENT.send(b"ping")
    SERVER.send(b"pong")
    pump(CLIENT, SERVER)
    assert drain(SERVER) == [ApplicationData(b"ping")]
    assert drain(CLIENT) == [ApplicationData(b"pong")]


@given(datagrams, st.booleans())
def test_fresh_transport_raises_nothing(batch: list[bytes], is_server: bool) -> None:
    client, server = new_pair()
    target = server if is_server else client
    target.start(0.0)
    target.datagrams_to_send()
    evs = feed(target, batch)
    # Garbage may kill a handshake in progress (a forged fatal alert is indistinguishable
    # from a real one before keys exist), but it never completes one.
    assert all(isinstance(e, Closed) and e.error for e in evs), evs
    target.handle_timer(2.0)
    target.get_timer()
    target.send(b"x")
    target.close()
