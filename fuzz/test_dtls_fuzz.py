"""DTLS fuzzing: random and mutated datagrams never raise anything but DtlsError (the
transport in fact never raises on input), and never break an established association. Each
example gets its own fresh association, so examples shrink and replay."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass

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


def established() -> tuple[DtlsTransport, DtlsTransport, list[bytes]]:
    """A fresh established association and its real datagrams (every handshake flight and
    some application records), which seed the mutations. Built per example, so an example
    depends on nothing an earlier one did: Hypothesis can shrink and replay it."""
    seeds: list[bytes] = []
    client, server = new_pair()
    server.start(0.0)
    client.start(0.0)
    pump(client, server, seeds)
    assert isinstance(drain(client)[0], HandshakeComplete)
    assert isinstance(drain(server)[0], HandshakeComplete)
    for payload in (b"a" * 10, b"b" * 300):
        client.send(payload)
        server.send(payload)
        seeds += client.datagrams_to_send() + server.datagrams_to_send()
    return client, server, seeds


# A mutation is drawn as data (which seed, which edits at which relative positions) and applied
# to the fresh association's own datagrams, so the same example replays the same edits.
Edit = tuple[int, int, int, bytes]  # (operation, position 0..65535, value, inserted bytes)
edits = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
              st.binary(min_size=1, max_size=16)),
    min_size=1, max_size=5,
)


def mutate(seed: bytes, plan: list[Edit]) -> bytes:
    data = bytearray(seed)
    for op, where, value, blob in plan:
        if op == 0:
            data[where * len(data) >> 16] ^= 1 << (value & 7)
        elif op == 1:
            del data[1 + (where * len(data) >> 16) :]
        elif op == 2:
            i = where * (len(data) + 1) >> 16
            data[i:i] = blob
        elif op == 3 and len(data) >= 13:  # a record length that lies
            struct.pack_into("!H", data, 11, value)
        elif len(data) >= 5:  # another epoch / content type
            struct.pack_into("!H", data, 3, value & 3)
            data[0] = (20, 21, 22, 23, 24, 25)[value % 6]
        if not data:
            data.append(22)
    return bytes(data)


@dataclass(frozen=True)
class Mutated:
    """Edits to the ``index``-th (mod how many there are) real datagram."""

    index: int
    plan: list[Edit]

    def apply(self, seeds: list[bytes]) -> bytes:
        return mutate(seeds[self.index % len(seeds)], self.plan)


mutated = st.builds(Mutated, st.integers(0, 63), edits)


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
datagrams = st.lists(st.one_of(dtls_range, record_like, mutated), min_size=1, max_size=5)


def feed(t: DtlsTransport, batch: list[bytes | Mutated], seeds: list[bytes]) -> list[object]:
    for item in batch:
        data = item.apply(seeds) if isinstance(item, Mutated) else item
        with contextlib.suppress(DtlsError):  # the transport never raises on input,
            t.receive_datagram(data, 1.0)  # but DtlsError would be within the contract
        t.datagrams_to_send()
    return drain(t)


SEEDS = established()[2]


@given(datagrams)
def test_established_association_survives(batch: list[bytes | Mutated]) -> None:
    client, server, seeds = established()
    for target in (server, client):
        evs = feed(target, batch, seeds)
        # Only genuine application records (replayed seeds) may come out: DTLS has replay
        # protection, so even those are dropped once seen.
        assert all(isinstance(e, ApplicationData) for e in evs), evs
        assert target.state is DtlsState.CONNECTED
    client.send(b"ping")
    server.send(b"pong")
    pump(client, server)
    assert drain(server) == [ApplicationData(b"ping")]
    assert drain(client) == [ApplicationData(b"pong")]


@given(datagrams, st.booleans())
def test_fresh_transport_raises_nothing(batch: list[bytes | Mutated], is_server: bool) -> None:
    seeds = SEEDS  # another association's datagrams: real records this one cannot decrypt
    client, server = new_pair()
    target = server if is_server else client
    target.start(0.0)
    target.datagrams_to_send()
    evs = feed(target, batch, seeds)
    # Garbage may kill a handshake in progress (a forged fatal alert is indistinguishable
    # from a real one before keys exist), but it never completes one.
    assert all(isinstance(e, Closed) and e.error for e in evs), evs
    target.handle_timer(2.0)
    target.get_timer()
    target.send(b"x")
    target.close()
