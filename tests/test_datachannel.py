"""Two DataChannelEndpoints (DTLS client and server) over the in-memory link."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.test_sctp_link import Link
from trio_sfu.proto.datachannel import (
    PPID_BINARY,
    PPID_BINARY_PARTIAL,
    PPID_STRING,
    PPID_STRING_PARTIAL,
    AssociationClosed,
    AssociationEstablished,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    ChannelState,
    DataChannelEndpoint,
)
from trio_sfu.proto.dcep import PPID_DCEP
from trio_sfu.proto.sctp import chunks as ch
from trio_sfu.proto.sctp.chunks import parse_packet

CLIENT, SERVER = 0, 1


Trio = tuple[DataChannelEndpoint, DataChannelEndpoint, Link]


def endpoints(seed: int = 0, **link_kw: float) -> Trio:
    c = DataChannelEndpoint(is_dtls_client=True, rng=random.Random(seed).randbytes,
                            remote_max_message_size=262144)
    s = DataChannelEndpoint(is_dtls_client=False, rng=random.Random(seed + 1000).randbytes,
                            remote_max_message_size=262144)
    return c, s, Link(c, s, seed=seed, **link_kw)


def established(seed: int = 0, **link_kw: float) -> Trio:
    c, s, link = endpoints(seed, **link_kw)
    c.connect(link.now)
    link.run(lambda: link.of_type(0, AssociationEstablished)
             and link.of_type(1, AssociationEstablished))
    return c, s, link


def messages(link: Link, side: int, channel: int | None = None) -> list[str | bytes]:
    return [e.data for e in link.of_type(side, ChannelMessage)
            if channel is None or e.channel_id == channel]


def opened(link: Link, side: int) -> list[ChannelOpened]:
    return link.of_type(side, ChannelOpened)


def data_chunks(link: Link, side: int) -> list[ch.DataChunk]:
    return [c for p in link.sent[side] for c in parse_packet(p).chunks
            if isinstance(c, ch.DataChunk)]


def test_dcep_open_and_ack_with_stream_id_parity() -> None:
    c, s, link = established(1)
    link.record = True
    cid = c.open_channel("chat", link.now, protocol="json")
    sid = s.open_channel("events", link.now, ordered=False)
    assert cid % 2 == 0 and sid % 2 == 1  # RFC 8832 §6: DTLS client even, server odd
    assert c.channel(cid).state is ChannelState.OPEN and not c.channel(cid).acked
    link.run(lambda: len(opened(link, 0)) == 2 and len(opened(link, 1)) == 2)
    link.run_for(0.5)
    assert c.channel(cid).acked and s.channel(sid).acked
    theirs = next(e for e in opened(link, SERVER) if e.channel_id == cid)
    assert (theirs.label, theirs.protocol, theirs.locally_opened) == ("chat", "json", False)
    mine = next(e for e in opened(link, CLIENT) if e.channel_id == cid)
    assert mine.locally_opened and not mine.negotiated
    info = c.channel(sid)
    assert (info.label, info.ordered, info.locally_opened, info.reliability) == (
        "events", False, False, ("reliable", None))
    dcep = [d for d in data_chunks(link, CLIENT) if d.ppid == PPID_DCEP]
    assert [d.payload[0] for d in dcep] == [0x03, 0x02]  # our OPEN, our ACK of theirs
    assert all(not d.flags & ch.FLAG_UNORDERED for d in dcep)  # DCEP goes ordered
    assert c.open_channel("second", link.now) == cid + 2


def test_string_binary_and_empty_messages_keep_their_type() -> None:
    c, _s, link = established(2)
    link.record = True
    cid = c.open_channel("m", link.now)
    sent: list[str | bytes] = ["hello", b"\x00\x01", "", b"", "ünïcødé", b"x" * 200000]
    for m in sent:
        c.send(cid, m, link.now)
    link.run(lambda: len(messages(link, SERVER)) == len(sent))
    got = messages(link, SERVER)
    assert got == sent and [type(m) for m in got] == [type(m) for m in sent]
    ppids = [d.ppid for d in data_chunks(link, CLIENT) if d.flags & ch.FLAG_BEGIN]
    assert ppids == [PPID_DCEP, 51, 53, 56, 57, 51, 53]
    empties = [d for d in data_chunks(link, CLIENT) if d.ppid in (56, 57)]
    assert [d.payload for d in empties] == [b"\x00", b"\x00"]  # RFC 8831 §6.6


def test_ordered_until_acked_then_unordered() -> None:
    c, _s, link = endpoints(3)
    link.record = True
    c.connect(link.now)
    link.run(lambda: link.of_type(0, AssociationEstablished))
    cid = c.open_channel("u", link.now, ordered=False)
    c.send(cid, b"early", link.now)  # before the ACK can possibly have arrived
    link.run(lambda: c.channel(cid).acked)
    c.send(cid, b"late", link.now)
    link.run(lambda: len(messages(link, SERVER)) == 2)
    flags = {d.payload: d.flags & ch.FLAG_UNORDERED for d in data_chunks(link, CLIENT)}
    assert flags[b"early"] == 0 and flags[b"late"] == ch.FLAG_UNORDERED


def test_unordered_and_ordered_channels_under_loss() -> None:
    c, _s, link = established(4, loss=0.1, reorder=0.2)
    ordered = c.open_channel("o", link.now)
    unordered = c.open_channel("u", link.now, ordered=False)
    link.run(lambda: c.channel(unordered).acked)
    for i in range(200):
        c.send(ordered, f"o{i}", link.now)
        c.send(unordered, f"u{i}", link.now)
    link.run(lambda: len(messages(link, SERVER)) == 400, timeout=600)
    assert messages(link, SERVER, ordered) == [f"o{i}" for i in range(200)]
    assert sorted(messages(link, SERVER, unordered)) == sorted(f"u{i}" for i in range(200))


@pytest.mark.parametrize("kw", [{"max_retransmits": 0}, {"max_packet_lifetime": 300}])
def test_partially_reliable_channels(kw: dict[str, Any]) -> None:
    c, _s, link = established(5)
    cid = c.open_channel("pr", link.now, ordered=False, **kw)
    link.run(lambda: len(opened(link, SERVER)) == 1 and c.channel(cid).acked)
    link.loss = 0.15
    theirs = opened(link, SERVER)[0]
    assert (theirs.max_retransmits, theirs.max_packet_lifetime, theirs.ordered) == (
        kw.get("max_retransmits"), kw.get("max_packet_lifetime"), False)
    for i in range(300):
        c.send(cid, b"%d" % i + bytes(2000), link.now)
    link.run_for(30)
    got = messages(link, SERVER)
    assert 0 < len(got) < 300 and len(set(got)) == len(got)
    assert c.association.messages_abandoned > 0
    # the channel still works afterwards (nothing stalled); the probe is itself unreliable,
    # so it goes over a clean link
    link.loss = 0.0
    c.send(cid, b"still alive", link.now)
    link.run(lambda: b"still alive" in messages(link, SERVER), timeout=60)


def test_negotiated_channels_skip_dcep_and_open_at_once() -> None:
    c, s, link = endpoints(6)
    link.record = True
    assert c.open_channel("neg", 100.0, negotiated=True, id=7) == 7
    assert s.open_channel("neg", 100.0, negotiated=True, id=7) == 7
    with pytest.raises(ValueError):
        c.open_channel("clash", 100.0, negotiated=True, id=7)
    c.connect(link.now)
    link.run(lambda: opened(link, 0) and opened(link, 1))
    assert opened(link, 0)[0].negotiated and opened(link, 0)[0].locally_opened
    c.send(7, "ping", link.now)
    link.run(lambda: messages(link, SERVER) == ["ping"])
    s.send(7, b"pong", link.now)
    link.run(lambda: messages(link, CLIENT) == [b"pong"])
    assert not [d for d in data_chunks(link, 0) + data_chunks(link, 1) if d.ppid == PPID_DCEP]


@pytest.mark.parametrize("closer", [CLIENT, SERVER])
def test_close_from_either_side_closes_both_and_frees_the_id(closer: int) -> None:
    c, s, link = established(7, loss=0.05)
    cid = c.open_channel("bye", link.now)
    link.run(lambda: opened(link, SERVER))
    for i in range(10):
        c.send(cid, f"m{i}", link.now)
    (c, s)[closer].close_channel(cid, link.now)
    if closer == CLIENT:
        with pytest.raises(ValueError):
            c.send(cid, "after close", link.now)
    link.run(lambda: link.of_type(0, ChannelClosed) and link.of_type(1, ChannelClosed))
    assert link.of_type(0, ChannelClosed) == [ChannelClosed(cid)]
    assert link.of_type(1, ChannelClosed) == [ChannelClosed(cid)]
    if closer == CLIENT:
        assert messages(link, SERVER) == [f"m{i}" for i in range(10)]
    for ep in (c, s):
        with pytest.raises(KeyError):
            ep.channel(cid)
    again = c.open_channel("again", link.now)
    assert again == cid
    c.send(again, "fresh", link.now)
    link.run(lambda: "fresh" in messages(link, SERVER))
    assert opened(link, SERVER)[-1].label == "again"


def test_channels_opened_before_the_association_are_queued() -> None:
    c, _s, link = endpoints(8)
    a = c.open_channel("a", 100.0)
    b = c.open_channel("b", 100.0, protocol="p")
    assert c.channel(a).state is ChannelState.CONNECTING
    with pytest.raises(ValueError):
        c.send(a, "too early", 100.0)
    gone = c.open_channel("gone", 100.0)
    c.close_channel(gone, 100.0)
    assert link.of_type(0, ChannelClosed) == [] and c.next_event() == ChannelClosed(gone)
    c.connect(link.now)
    link.run(lambda: len(opened(link, SERVER)) == 2)
    assert [(e.channel_id, e.label) for e in opened(link, SERVER)] == [(a, "a"), (b, "b")]


def test_association_shutdown_closes_every_channel() -> None:
    c, s, link = established(9)
    ids = [c.open_channel(str(i), link.now) for i in range(3)]
    link.run(lambda: len(opened(link, SERVER)) == 3)
    s.shutdown(link.now)
    link.run(lambda: link.of_type(0, AssociationClosed) and link.of_type(1, AssociationClosed))
    for side in (0, 1):
        assert sorted(e.channel_id for e in link.of_type(side, ChannelClosed)) == ids
        assert link.events[side][-1] == AssociationClosed("shutdown", aborted=False)
    with pytest.raises(ValueError):
        c.open_channel("late", link.now)


def test_abort_is_reported_on_both_sides() -> None:
    c, _s, link = established(10)
    c.open_channel("x", link.now)
    c.abort("test over")
    link.run(lambda: link.of_type(1, AssociationClosed))
    [closed] = link.of_type(1, AssociationClosed)
    assert closed.aborted and "test over" in closed.reason


def test_deprecated_partial_ppids_are_reassembled() -> None:
    c, s, link = established(11)
    cid = c.open_channel("old", link.now)
    link.run(lambda: c.channel(cid).acked)
    assoc = c.association
    assoc.send(cid, PPID_STRING_PARTIAL, b"hel", link.now)
    assoc.send(cid, PPID_STRING_PARTIAL, b"lo ", link.now)
    assoc.send(cid, PPID_STRING, "wörld".encode(), link.now)
    assoc.send(cid, PPID_BINARY_PARTIAL, b"\x01", link.now)
    assoc.send(cid, PPID_BINARY, b"\x02", link.now)
    assoc.send(cid, PPID_BINARY_PARTIAL, b"\x03", link.now)
    assoc.send(cid, PPID_STRING, b"mismatch", link.now)  # binary partial ended as string
    link.run(lambda: s.dropped_messages == 1)
    assert messages(link, SERVER) == ["hello wörld", b"\x01\x02"]


def test_garbage_on_the_wire_is_counted_not_fatal() -> None:
    c, s, link = established(12)
    cid = c.open_channel("x", link.now)
    link.run(lambda: c.channel(cid).acked)
    c.association.send(cid, PPID_DCEP, b"\x09garbage", link.now)  # not a DCEP message
    c.association.send(cid, PPID_STRING, b"\xff\xfe", link.now)  # not UTF-8
    c.association.send(40, PPID_BINARY, b"no channel", link.now)
    c.association.send(cid, 1234, b"unknown ppid", link.now)
    c.association.send(cid, PPID_DCEP, bytes.fromhex("03000000000000000000 0000"), link.now)
    c.send(cid, "ok", link.now)
    link.run(lambda: messages(link, SERVER) == ["ok"])
    assert s.dcep_errors == 2 and s.dropped_messages == 3


def test_send_limits() -> None:
    c, _s, link = established(13)
    c.remote_max_message_size = 1000
    cid = c.open_channel("x", link.now)
    c.send(cid, bytes(1000), link.now)
    with pytest.raises(ValueError):
        c.send(cid, bytes(1001), link.now)
    with pytest.raises(ValueError):
        c.send(99, "no such channel", link.now)
    with pytest.raises(ValueError):
        c.open_channel("x", link.now, id=4)  # ids are chosen only for negotiated channels
    with pytest.raises(ValueError):
        c.open_channel("x", link.now, negotiated=True)
    with pytest.raises(ValueError):
        c.open_channel("x", link.now, max_retransmits=1, max_packet_lifetime=1)
    assert c.buffered_amount(cid) >= 0
