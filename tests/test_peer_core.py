"""The sans-IO peer core (``trio_sfu.proto.peer``) without Trio: two cores wired back to back,
datagrams carried by hand, time passed in as numbers (issue 16 item 1).

The sequencing rules live here: SCTP before later DTLS events of one datagram, ABORT before
close_notify, closing is final, consent, address moves, SSRC learning, and Hypothesis
sequences of interleaved inputs (drops, duplicates, reordering, timers, closes).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from trio_sfu.proto import stun
from trio_sfu.proto.capabilities import URI_MID
from trio_sfu.proto.datachannel import ChannelMessage, ChannelOpened
from trio_sfu.proto.dtls import Certificate
from trio_sfu.proto.ice import IceLiteAgent
from trio_sfu.proto.jsep import JsepSession, LocalTransport
from trio_sfu.proto.peer import (
    Closed,
    Connected,
    CoreEvent,
    IncomingStream,
    LocalCredentialsChanged,
    PeerCore,
)
from trio_sfu.proto.rtp import RtpPacket, parse_rtp
from trio_sfu.proto.srtp import SrtpContext

CLIENT_ADDR = ("192.0.2.1", 40000)
CLIENT_ADDR_2 = ("192.0.2.1", 40002)
SERVER_ADDR = ("198.51.100.1", 3478)
CONSENT = 30.0


@cache
def certificate(which: str) -> Certificate:
    return Certificate.generate()


@dataclass
class Channel:
    """What the core needs of an application's data channel (``ChannelSpec``)."""

    label: str
    protocol: str = ""
    ordered: bool = True
    max_retransmits: int | None = None
    max_packet_lifetime: int | None = None
    negotiated: bool = False
    id: int | None = None


class Pair:
    """A client core (full ICE done elsewhere: its path is the server's address) and a lite
    server core whose paths are tokens ``"udp:<port>"``; ``now`` is a plain number."""

    def __init__(self, *, video: bool = False, data: bool = True) -> None:
        self.now = 0.0
        cjsep = JsepSession(LocalTransport(
            "cufrag", "c" * 22, certificate("c").fingerprints, setup_when_answering="active"))
        ufrag, pwd = "sufrag", "s" * 22
        sjsep = JsepSession(
            LocalTransport(ufrag, pwd, certificate("s").fingerprints, ice_lite=True),
            new_transceiver_direction="recvonly",
        )
        self.agent = IceLiteAgent(ufrag, pwd, consent_timeout=CONSENT, now=0.0)
        self.client: PeerCore[Any] = PeerCore(cjsep, certificate("c"), now=0.0)
        self.server: PeerCore[Any] = PeerCore(
            sjsep, certificate("s"), now=0.0, ice_agent=self.agent,
            path_usable=lambda token: token not in self.dead,
        )
        self.dead: set[str] = set()
        self.tokens: dict[tuple[str, int], str] = {}
        self.client.remote_address = self.client.path = SERVER_ADDR
        self.events: dict[str, list[CoreEvent]] = {"client": [], "server": []}
        self.rtp: list[tuple[IncomingStream, bytes]] = []
        self.moves: list[tuple[float, bool]] = []
        self.server.on_rtp = lambda stream, packet, now: self.rtp.append((stream, packet))
        self.server.on_path_changed = lambda now, by_media: self.moves.append((now, by_media))
        self.channel: Channel | None = None
        if video:
            self.transceiver = cjsep.add_transceiver("video", "sendonly")
        if data:
            cjsep.add_data_channel()
            self.channel = Channel("chat")
            self.client.open_channel(self.channel, self.now)
        answer, assigned = self.server.handle_offer(cjsep.create_offer().serialize(), self.now)
        assert assigned == [] and self.agent.remote_ufrag == "cufrag"
        tolerated, assigned = self.client.handle_answer(answer, self.now)
        assert tolerated == [] and assigned == ([self.channel] if data else [])

    # -- inputs the endpoint would give the server --------------------------------------

    def check(self, addr: tuple[str, int], *, nominated: bool = True) -> None:
        """A valid STUN check from ``addr`` (what the endpoint validates, then reports)."""
        data = stun.binding_request(
            username="sufrag:cufrag", password="s" * 22, priority=1 << 24, tie_breaker=1,
            transaction_id=secrets.token_bytes(12), use_candidate=nominated,
        )
        self.agent.heard(self.server.heard_at)
        assert self.agent.handle_request(stun.parse(data), data, addr, self.now).valid
        token = self.tokens.setdefault(addr, f"udp:{addr[1]}")  # one token per path, as a
        self.server.address_validated(token, addr, "udp", nominated, self.now)  # driver has

    # -- carrying datagrams ---------------------------------------------------------------

    def collect(self) -> None:
        for side in ("client", "server"):
            core = getattr(self, side)
            while (event := core.next_event()) is not None:
                self.events[side].append(event)

    def to_server(self, *, source: tuple[str, int] = CLIENT_ADDR) -> list[bytes]:
        out = [bytes(d) for d, path in self.client.datagrams_to_send()]
        for data in out:
            self.server.receive_datagram(data, source, self.now)
        self.collect()
        return out

    def to_client(self) -> list[tuple[bytes, Any]]:
        out = [(bytes(d), path) for d, path in self.server.datagrams_to_send()]
        for data, _ in out:
            self.client.receive_datagram(data, SERVER_ADDR, self.now)
        self.collect()
        return out

    def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            if not self.to_server() and not self.to_client():
                return

    def connect(self) -> None:
        self.check(CLIENT_ADDR)
        self.settle()
        assert self.client.connected and self.server.connected

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for core in (self.client, self.server):
            timer = core.get_timer()
            if timer is not None and timer <= self.now:
                core.handle_timer(self.now)
        self.collect()

    def rtp_packet(self, seq: int, ssrc: int = 0x1234, *, mid: bytes | None = b"0") -> bytes:
        srtp = self.client.srtp
        assert srtp is not None
        extensions = {}
        if mid is not None:
            ext = self.transceiver.extension_id(URI_MID)
            assert ext is not None
            extensions[ext] = mid
        pt = self.transceiver.codecs[0].payload_type
        packet = RtpPacket(pt, seq, seq * 3000, ssrc, extensions=extensions, payload=b"x" * 100)
        return bytes(srtp.protect_rtp(packet.serialize()))


def kinds(events: list[CoreEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


# -- the happy path ---------------------------------------------------------------------


def test_two_cores_connect_open_a_channel_and_talk() -> None:
    pair = Pair()
    assert pair.server.get_timer() == pytest.approx(30.0)  # connect deadline, consent
    pair.check(CLIENT_ADDR)
    assert pair.server.path == "udp:40000" and pair.server.remote_address == CLIENT_ADDR
    pair.settle()
    assert pair.channel is not None and pair.channel.id is not None
    assert kinds(pair.events["server"]) == ["Connected", "ChannelOpened"]
    assert kinds(pair.events["client"]) == ["Connected", "ChannelOpened"]
    assert pair.server.srtp is not None and pair.client.srtp is not None
    for i in range(3):
        pair.client.channel_send(pair.channel.id, f"hello {i}", pair.now)
    pair.settle()
    messages = [e for e in pair.events["server"] if isinstance(e, ChannelMessage)]
    assert [m.data for m in messages] == ["hello 0", "hello 1", "hello 2"]
    assert pair.server.stats.dc_messages_in == 3
    # Every datagram the server queued went to the path its checks came over.
    pair.server.channel_send(pair.channel.id, b"back", pair.now)
    assert {path for _, path in pair.to_client()} == {"udp:40000"}


class PathSink:
    """A path token that can send (``MediaPath``), as the server driver's paths are."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes | memoryview) -> None:
        self.sent.append(bytes(data))


def test_send_rtp_as_sends_the_packet_as_our_stream_on_the_path() -> None:
    """The SFU's per-subscriber send (issue 10): protected with this transport's keys, our
    SSRC and transport-cc number patched in, straight to the path's ``send``; counted, and
    dropped and counted while there is nowhere to send it or SRTP refuses it."""
    pair = Pair(video=True, data=False)
    sink = PathSink()
    group_packet = RtpPacket(96, 7, 9000, 0, extensions={5: b"\0\0"}, payload=b"v" * 50)
    plain = group_packet.serialize()
    pair.server.path = sink  # before DTLS: no keys yet
    pair.server.send_rtp_as(plain, 0xCAFE, 17, 4321)
    assert sink.sent == [] and pair.server.stats.media_not_sent == 1
    pair.connect()
    pair.server.path = None  # a TCP path closed: nothing until the next valid check
    pair.server.send_rtp_as(plain, 0xCAFE, 17, 4321)
    assert sink.sent == [] and pair.server.stats.media_not_sent == 2
    pair.server.path = sink
    pair.server.send_rtp_as(b"short", 0xCAFE, -1, 0)  # SRTP refuses it; nothing else breaks
    assert sink.sent == [] and pair.server.stats.media_not_sent == 3
    second = RtpPacket(96, 8, 9000, 0, extensions={5: b"\0\0"}, payload=b"w" * 50)
    pair.server.send_rtp_as(plain, 0xCAFE, 17, 4321)
    pair.server.send_rtp_as(second.serialize(), 0xCAFE, 17, 4322)
    assert pair.server.stats.rtp_out == 2 and len(sink.sent) == 2
    srtp = pair.client.srtp
    assert srtp is not None
    for data, sent, twcc_seq in zip(sink.sent, (group_packet, second), (4321, 4322), strict=True):
        received = parse_rtp(srtp.unprotect_rtp(data))
        assert received.ssrc == 0xCAFE and received.sequence_number == sent.sequence_number
        assert received.extensions[5] == twcc_seq.to_bytes(2, "big")
        assert received.payload == sent.payload


def test_no_path_no_datagrams() -> None:
    """A lite server answers nothing before a valid check gave it a path."""
    pair = Pair()
    pair.to_server()
    assert pair.server.datagrams_to_send() == []


# -- pump and close order ---------------------------------------------------------------


def test_abort_then_close_notify_in_one_datagram_closes_as_an_abort() -> None:
    """SCTP's outcome of a record is handled before the next DTLS event of the same datagram:
    the server sees the ABORT, not the close_notify behind it."""
    pair = Pair()
    pair.connect()
    pair.client.close("bye", pair.now)
    out = [bytes(d) for d, _ in pair.client.datagrams_to_send()]
    assert len(out) >= 1
    pair.server.receive_datagram(b"".join(out), CLIENT_ADDR, pair.now)
    pair.collect()
    assert pair.server.close_reason == "sctp abort: aborted by peer (cause 12: bye)"
    assert kinds(pair.events["server"])[-1] == "Closed"


def test_close_sends_abort_first_then_close_notify() -> None:
    """Datagram by datagram, the first thing the remote side learns is the ABORT."""
    pair = Pair()
    pair.connect()
    pair.client.close("leaving", pair.now)
    out = [bytes(d) for d, _ in pair.client.datagrams_to_send()]
    pair.server.receive_datagram(out[0], CLIENT_ADDR, pair.now)
    assert pair.server.close_reason == "sctp abort: aborted by peer (cause 12: leaving)"


def test_close_notify_alone_closes_as_dtls() -> None:
    pair = Pair(video=True, data=False)
    pair.connect()
    pair.client.close("leaving", pair.now)
    pair.to_server()
    assert pair.server.close_reason is not None
    assert pair.server.close_reason.startswith("dtls closed")


def test_closing_is_final() -> None:
    pair = Pair()
    pair.connect()
    pair.server.close("done", pair.now)
    pair.collect()
    assert pair.events["server"][-1] == Closed("done")
    pair.server.close("again", pair.now)  # idempotent
    assert pair.channel is not None and pair.channel.id is not None
    pair.client.channel_send(pair.channel.id, "late", pair.now)
    dropped = pair.server.stats.dtls_dropped
    pair.to_server()
    assert pair.server.stats.dtls_dropped > dropped
    pair.advance(100.0)
    assert pair.events["server"][-1] == Closed("done")
    assert pair.server.close_reason == "done" and pair.server.next_event() is None
    with pytest.raises(RuntimeError):
        pair.server.channel_send(0, "x", pair.now)


def test_an_offer_with_an_ice_restart_gives_the_lite_agent_new_credentials() -> None:
    """Our answer to a restart carries fresh local credentials (RFC 8839 §4.4.1.1.2): the lite
    agent takes them, keeps the old ones until a check uses the new, and the driver is told
    to route the new ufrag (an event, before the answer leaves)."""
    pair = Pair()
    pair.connect()
    cjsep, sjsep = pair.client.jsep, pair.server.jsep
    offer = cjsep.create_offer(ice_restart=True).serialize()
    answer, _ = pair.server.handle_offer(offer, pair.now)
    new = sjsep.transport.ice_ufrag
    assert new != "sufrag" and f"a=ice-ufrag:{new}" in answer
    assert pair.server.next_event() == LocalCredentialsChanged()
    assert set(pair.agent.local_ufrags) == {new, "sufrag"}
    assert pair.agent.remote_ufrag == cjsep.transport.ice_ufrag
    pair.client.handle_answer(answer, pair.now)
    assert pair.server.connected and not pair.server.closing


def test_connect_timeout() -> None:
    pair = Pair()
    pair.advance(29.0)
    assert not pair.server.closing
    pair.advance(1.0)
    assert pair.server.close_reason == "connect timeout"


# -- consent and address moves (RFC 7675; docs/security.md "Path changes") -----------------


def test_consent_is_renewed_by_authenticated_media_and_expires_without() -> None:
    pair = Pair(video=True, data=False)
    pair.connect()
    for i in range(5):
        pair.now += 20.0
        pair.server.receive_datagram(pair.rtp_packet(i), CLIENT_ADDR, pair.now)
        pair.advance(0.0)
        assert not pair.server.closing
    assert len(pair.rtp) == 5
    forged = bytearray(pair.rtp_packet(99))
    forged[-1] ^= 1  # fails authentication: not proof of the peer
    pair.now += 20.0
    pair.server.receive_datagram(bytes(forged), CLIENT_ADDR, pair.now)
    assert pair.server.stats.srtp_rejected == 1
    pair.advance(10.0)
    assert pair.server.close_reason == "consent timeout"


def test_a_nominated_check_alone_does_not_move_a_confirmed_path() -> None:
    pair = Pair(video=True, data=False)
    pair.connect()
    pair.server.receive_datagram(pair.rtp_packet(1), CLIENT_ADDR, pair.now)  # confirmed
    pair.now += 4.0  # heard 4 s ago: silent, but not PATH_SILENCE (8 s) silent
    pair.check(CLIENT_ADDR_2)
    assert pair.server.path == "udp:40000" and pair.moves == []
    # Authenticated media from the candidate is the proof: media moves, and the callback
    # fires before that packet is delivered.
    seen_before: list[int] = []

    def moved(now: float, by_media: bool) -> None:
        pair.moves.append((now, by_media))
        seen_before.append(len(pair.rtp))

    pair.server.on_path_changed = moved
    pair.now += 0.5
    pair.server.receive_datagram(pair.rtp_packet(2), CLIENT_ADDR_2, pair.now)
    assert pair.server.path == "udp:40002" and pair.server.remote_address == CLIENT_ADDR_2
    assert pair.moves == [(pair.now, True)] and seen_before == [1] and len(pair.rtp) == 2
    assert pair.server.datagrams_to_send() == [] and pair.server.next_event() is None


def test_a_candidate_takes_over_when_the_path_goes_silent() -> None:
    pair = Pair(video=True, data=False)
    pair.connect()
    pair.server.receive_datagram(pair.rtp_packet(1), CLIENT_ADDR, pair.now)
    pair.now += 1.0
    pair.check(CLIENT_ADDR_2)
    timer = pair.server.get_timer()
    assert timer is not None and timer == pytest.approx(8.0)  # PATH_SILENCE after last heard
    pair.advance(timer - pair.now)
    assert pair.server.path == "udp:40002" and pair.moves == [(pair.now, False)]
    # Sent there at once, but the peer's media counts as moved only when it arrives.
    assert pair.server.remote_address == CLIENT_ADDR
    pair.server.receive_datagram(pair.rtp_packet(2), CLIENT_ADDR_2, pair.now + 0.1)
    assert pair.server.remote_address == CLIENT_ADDR_2 and pair.moves[-1] == (pair.now + 0.1, True)


def test_before_any_media_the_newest_nomination_wins_and_dead_paths_are_skipped() -> None:
    pair = Pair()
    pair.check(CLIENT_ADDR)
    pair.check(CLIENT_ADDR_2)
    assert pair.server.path == "udp:40002" and pair.moves == [(0.0, False)]
    pair.server.path_closed(pair.tokens[CLIENT_ADDR_2], CLIENT_ADDR_2)
    assert pair.server.path is None and pair.server.remote_address is None
    pair.dead.add("udp:40000")
    pair.check(CLIENT_ADDR)
    assert pair.server.path is None  # not usable: nothing to send on
    pair.dead.clear()
    pair.check(CLIENT_ADDR)
    assert pair.server.path == "udp:40000"


# -- SSRC learning (RFC 8843 §9.2) ------------------------------------------------------------


def test_an_undeclared_ssrc_is_learned_by_mid_and_counted_when_unroutable() -> None:
    pair = Pair(video=True, data=False)
    pair.connect()
    pair.server.receive_datagram(pair.rtp_packet(1, ssrc=0xABC), CLIENT_ADDR, pair.now)
    stream, _ = pair.rtp[-1]
    assert stream.ssrc == 0xABC and stream.transceiver.mid == "0" and stream.packets == 1
    assert pair.server.streams[0xABC] is stream
    # A MID naming no receiving section and a second receiving section would be ambiguous;
    # with one receiving section the packet still routes there (the last resort).
    pair.server.receive_datagram(pair.rtp_packet(2, ssrc=0xDEF, mid=b"9"), CLIENT_ADDR, pair.now)
    assert pair.rtp[-1][0].ssrc == 0xDEF
    pair.server.close("done", pair.now)
    pair.server.teardown()
    assert pair.server.streams == {} and pair.server.srtp is None


# -- Hypothesis: interleaved inputs -----------------------------------------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.sampled_from(["client", "server"]),
                  st.sampled_from(["all", "drop_first", "reverse", "duplicate", "join"])),
        st.tuples(st.just("advance"), st.sampled_from([0.05, 0.5, 1.0, 3.0, 9.0, 31.0])),
        st.tuples(st.just("send"), st.sampled_from(["client", "server"])),
        st.tuples(st.just("media"), st.sampled_from([CLIENT_ADDR, CLIENT_ADDR_2])),
        st.tuples(st.just("check"), st.sampled_from([CLIENT_ADDR, CLIENT_ADDR_2]), st.booleans()),
        st.tuples(st.just("close"), st.sampled_from(["client", "server"])),
        st.tuples(st.just("settle")),
        st.tuples(st.just("client_leaves")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), STEPS)
def test_interleaved_inputs_keep_the_rules(
    connect_first: bool, steps: list[tuple[Any, ...]]
) -> None:
    """Whatever the order, loss, duplication and timing of inputs: nothing raises, Closed is
    the last event and comes once, an SRTP input queues nothing, messages on the ordered
    reliable channel arrive in order without duplicates, every datagram goes to a path the
    server validated, and a lite server's media path is always a validated, usable path."""
    pair = Pair(video=True)
    if connect_first:
        pair.connect()
    else:
        pair.check(CLIENT_ADDR)
    sent = {"client": [], "server": []}  # type: dict[str, list[str]]
    validated = {"udp:40000"}
    held: list[tuple[bytes, Any]] = []  # the server's output queued before a media step
    seq = 0
    for step in steps:
        action = step[0]
        if action == "deliver":
            sender = getattr(pair, step[1])
            out = [(bytes(d), path) for d, path in sender.datagrams_to_send()]
            if step[1] == "server":
                out, held = held + out, []
                assert all(path in validated for _, path in out)
            mode = step[2]
            data = [d for d, _ in out]
            if mode == "drop_first":
                data = data[1:]
            elif mode == "reverse":
                data.reverse()
            elif mode == "duplicate":
                data = data + data
            elif mode == "join" and data:
                data = [b"".join(data)]
            receiver = pair.server if step[1] == "client" else pair.client
            source = CLIENT_ADDR if step[1] == "client" else SERVER_ADDR
            for datagram in data:
                receiver.receive_datagram(datagram, source, pair.now)
        elif action == "advance":
            pair.advance(step[1])
        elif action == "send":
            core = getattr(pair, step[1])
            channel = pair.channel
            assert channel is not None
            if core.connected and not core.closing and channel.id is not None:
                opened = any(isinstance(e, ChannelOpened) for e in pair.events[step[1]])
                if opened:
                    text = f"{step[1]}-{len(sent[step[1]])}"
                    core.channel_send(channel.id, text, pair.now)
                    sent[step[1]].append(text)
        elif action == "media":
            # The endpoint routes SRTP only from addresses a valid check vouched for.
            if pair.client.srtp is not None and f"udp:{step[1][1]}" in validated:
                seq += 1
                packet = pair.rtp_packet(seq)
                held += [(bytes(d), path) for d, path in pair.server.datagrams_to_send()]
                pair.server.receive_datagram(packet, step[1], pair.now)
                # The hot path queues nothing: no event object or datagram per packet.
                assert pair.server.datagrams_to_send() == [] and pair.server.next_event() is None
        elif action == "check":
            if not pair.server.closing:
                pair.check(step[1], nominated=step[2])
                validated.add(f"udp:{step[1][1]}")
        elif action == "client_leaves":
            # The client closes and everything it queued arrives as one datagram: with its
            # association up, the ABORT ahead of close_notify names the server's reason.
            was_up = (
                pair.client.connected and not pair.client.closing and not pair.server.closing
                and any(isinstance(e, ChannelOpened) for e in pair.events["client"])
            )
            pair.client.close("bye", pair.now)
            joined = b"".join(bytes(d) for d, _ in pair.client.datagrams_to_send())
            pair.server.receive_datagram(joined, CLIENT_ADDR, pair.now)
            if was_up:
                assert pair.server.close_reason is not None
                assert pair.server.close_reason.startswith("sctp abort"), pair.server.close_reason
        elif action == "settle":
            pair.settle()
        elif action == "close":
            getattr(pair, step[1]).close("bye", pair.now)
        pair.collect()
        for side in ("client", "server"):
            events = pair.events[side]
            closed = [i for i, e in enumerate(events) if isinstance(e, Closed)]
            assert len(closed) <= 1
            if closed:
                assert closed[0] == len(events) - 1
            core = getattr(pair, side)
            assert core.closing == bool(closed) == (core.close_reason is not None)
            timer = core.get_timer()
            assert timer is None or timer == timer  # never NaN
        if pair.server.path is not None:
            assert pair.server.path in validated and pair.server.path not in pair.dead
    event(f"connected={pair.server.connected}, closed={pair.server.closing}")
    delivered = any(isinstance(e, ChannelMessage) for e in pair.events["server"])
    event(f"messages delivered={delivered}")
    event(f"rtp delivered={bool(pair.rtp)}, path moved={bool(pair.moves)}")
    for to, by in (("server", "client"), ("client", "server")):
        got = [e.data for e in pair.events[to] if isinstance(e, ChannelMessage)]
        assert got == sent[by][: len(got)]  # ordered, reliable: a prefix, no duplicates
        opens = [e for e in pair.events[to] if isinstance(e, ChannelOpened | Connected)]
        if got:
            assert opens and isinstance(opens[0], Connected)


# -- Hypothesis: the path rule on a lite server's core alone -----------------------------------

ADDRS = [("192.0.2.1", 40000), ("192.0.2.1", 40002), ("203.0.113.9", 5000)]
PATH_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("check"), st.sampled_from(ADDRS), st.booleans()),
        st.tuples(st.just("media"), st.sampled_from(ADDRS)),
        st.tuples(st.just("dtls"), st.sampled_from(ADDRS)),
        st.tuples(st.just("advance"), st.sampled_from([0.1, 1.0, 2.5, 4.0, 8.0])),
        st.tuples(st.just("close_path"), st.sampled_from(ADDRS)),
    ),
    min_size=10,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(PATH_STEPS)
@example([("check", ADDRS[0], True), *[("advance", 8.0)] * 5])
@example([("check", ADDRS[0], False), ("dtls", ADDRS[0]), ("check", ADDRS[1], True),
          ("close_path", ADDRS[1]), ("advance", 8.0), ("media", ADDRS[0]),
          ("check", ADDRS[1], False)])  # a candidate whose path closed must not be selected
@example([("check", ADDRS[0], True), ("dtls", ADDRS[0]), ("advance", 4.0),
          ("check", ADDRS[1], True)])
@example([("check", ADDRS[0], True), ("dtls", ADDRS[0]), ("check", ADDRS[1], True),
          ("advance", 8.0), ("media", ADDRS[1])])
@example([("check", ADDRS[0], True), ("dtls", ADDRS[0]), ("check", ADDRS[1], True),
          ("media", ADDRS[1])])
def test_the_path_rule_holds_under_any_sequence(steps: list[tuple[Any, ...]]) -> None:
    """A server core with SRTP keys and no DTLS: valid checks, authenticated SRTP, timers and
    closed paths in any order. Media goes only to a validated, open path; a confirmed path is
    never taken by a check alone while it is heard (docs/security.md, "Path changes");
    ``remote_address`` (whose input counts as hearing the peer) follows the path only once
    authenticated media comes over it, and ``on_path_changed`` says so in that order; consent
    ends the peer after 30 s without authenticated input."""
    key = bytes(range(28))
    ufrag, pwd = "sufrag", "s" * 22
    agent = IceLiteAgent(ufrag, pwd, consent_timeout=CONSENT, now=0.0)
    jsep = JsepSession(LocalTransport(ufrag, pwd, certificate("s").fingerprints, ice_lite=True))
    core: PeerCore[str] = PeerCore(
        jsep, certificate("s"), now=0.0, ice_agent=agent, connect_timeout=1e9
    )
    core.srtp = SrtpContext("SRTP_AEAD_AES_128_GCM", key, key)
    sender = SrtpContext("SRTP_AEAD_AES_128_GCM", key, key)
    agent.set_remote_credentials("cufrag", "c" * 22)
    moves: list[tuple[float, bool]] = []
    core.on_path_changed = lambda now, by_media: moves.append((now, by_media))
    now, seq = 0.0, 0
    open_paths: set[tuple[str, int]] = set()
    tokens = {addr: f"udp:{addr[0]}:{addr[1]}" for addr in ADDRS}
    for step in steps:
        if core.closing:
            break
        heard = max(agent.heard_at, core.heard_at)
        before = (core.path, core.remote_address, agent.confirmed, heard, len(moves))
        if step[0] == "check":
            addr, nominated = step[1], step[2]
            data = stun.binding_request(
                username=f"{ufrag}:cufrag", password=pwd, priority=1 << 24, tie_breaker=1,
                transaction_id=secrets.token_bytes(12), use_candidate=nominated,
            )
            agent.heard(core.heard_at)
            assert agent.handle_request(stun.parse(data), data, addr, now).valid
            open_paths.add(addr)
            core.address_validated(tokens[addr], addr, "udp", nominated, now)
            if core.path != before[0] and before[0] is not None and before[2]:
                # A confirmed path moves on a check only once it has been silent long enough.
                assert now - before[3] >= agent.path_silence
        elif step[0] == "dtls":  # a DTLS record from addr decrypted (what receive_dtls reports)
            addr = step[1]
            if addr not in open_paths:
                continue
            core.authenticated(addr, now)
            if len(moves) > before[4]:
                assert moves[-1] == (now, True) and core.path_address == addr
            if core.path is not None and core.path_address == addr:
                assert core.remote_address == addr
        elif step[0] == "media":
            addr = step[1]
            if addr not in open_paths:
                continue  # the endpoint routes SRTP only from validated addresses
            seq += 1
            packet = RtpPacket(96, seq, seq, 0x42, payload=b"m" * 20).serialize()
            core.receive_datagram(bytes(sender.protect_rtp(packet)), addr, now)
            assert core.datagrams_to_send() == [] and core.next_event() is None
            if core.path is not None and core.path_address == addr:
                assert core.remote_address == addr  # the peer's media comes this way now
            if len(moves) > before[4]:
                assert moves[-1] == (now, True) and core.path_address == addr
                event("moved by media")
        elif step[0] == "advance":
            now += step[1]
            timer = core.get_timer()
            if timer is not None and timer <= now:
                core.handle_timer(now)
            if len(moves) > before[4]:
                assert moves[-1] == (now, False)  # moved on silence: not by the peer's media
                event("moved on silence")
            if not core.closing:  # consent holds only while the peer was heard lately
                assert now < max(agent.heard_at, core.heard_at) + CONSENT
            else:
                event("consent timeout")
        elif step[0] == "close_path":
            addr = step[1]
            open_paths.discard(addr)
            core.path_closed(tokens[addr], addr)
            assert core.path != tokens[addr]
        if core.path is not None:
            assert core.path_address in open_paths and core.path == tokens[core.path_address]
        if core.remote_address is None:
            assert core.path is None
    if core.closing:
        assert core.close_reason == "consent timeout"
