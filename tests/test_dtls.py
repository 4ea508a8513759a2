"""DTLS: two transports in memory (and one against aiortc's RTCDtlsTransport)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import random
import re
import struct
import time
from collections.abc import Callable

import pytest
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from trio_sfu.proto.dtls import (
    ApplicationData,
    Certificate,
    Closed,
    DtlsEvent,
    DtlsState,
    DtlsTransport,
    HandshakeComplete,
)
from trio_sfu.proto.errors import DtlsError

GCM = "SRTP_AEAD_AES_128_GCM"
CM = "SRTP_AES128_CM_SHA1_80"
CLIENT_CERT = Certificate.generate()
SERVER_CERT = Certificate.generate()
OTHER_CERT = Certificate.generate()


def make_pair(
    *,
    client_profiles: tuple[str, ...] = (GCM, CM),
    server_profiles: tuple[str, ...] = (GCM, CM),
    client_knows: list[tuple[str, str]] | None = None,
    server_knows: list[tuple[str, str]] | None = None,
    mtu: int = 1200,
) -> tuple[DtlsTransport, DtlsTransport]:
    client = DtlsTransport(
        CLIENT_CERT,
        is_server=False,
        remote_fingerprints=SERVER_CERT.fingerprints if client_knows is None else client_knows,
        srtp_profiles=client_profiles,
        mtu=mtu,
    )
    server = DtlsTransport(
        SERVER_CERT,
        is_server=True,
        remote_fingerprints=CLIENT_CERT.fingerprints if server_knows is None else server_knows,
        srtp_profiles=server_profiles,
        mtu=mtu,
    )
    return client, server


Drop = Callable[[DtlsTransport, bytes], bool]


def pump(
    a: DtlsTransport, b: DtlsTransport, now: float = 0.0, drop: Drop | None = None
) -> list[bytes]:
    """Exchange datagrams until both sides are quiet; returns everything that was sent."""
    sent: list[bytes] = []
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for data in src.datagrams_to_send():
                sent.append(data)
                moved = True
                if drop is None or not drop(src, data):
                    dst.receive_datagram(data, now)
        if not moved:
            return sent


def events(t: DtlsTransport) -> list[DtlsEvent]:
    out = []
    while (event := t.next_event()) is not None:
        out.append(event)
    return out


def connect(client: DtlsTransport, server: DtlsTransport) -> tuple[HandshakeComplete, ...]:
    server.start(0.0)
    client.start(0.0)
    pump(client, server)
    done = []
    for t in (client, server):
        evs = events(t)
        assert len(evs) == 1 and isinstance(evs[0], HandshakeComplete), evs
        done.append(evs[0])
    return tuple(done)


def records(datagram: bytes) -> list[tuple[int, int, bytes]]:
    """(content type, epoch, fragment) of each record, parsed independently (RFC 6347 §4.1)."""
    out, pos = [], 0
    while pos < len(datagram):
        ctype, version, epoch = struct.unpack_from("!BHH", datagram, pos)
        (length,) = struct.unpack_from("!H", datagram, pos + 11)
        # DTLS 1.2, or 1.0 on the ClientHello record for compatibility (RFC 6347 §4.1)
        assert version in (0xFEFD, 0xFEFF)
        out.append((ctype, epoch, datagram[pos + 13 : pos + 13 + length]))
        pos += 13 + length
    assert pos == len(datagram), "a record was split across datagrams"
    return out


# -- certificates --------------------------------------------------------------------------


def test_certificate() -> None:
    cert = Certificate.generate()
    key = cert.cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert cert.cert.issuer == cert.cert.subject  # self-signed
    validity = cert.cert.not_valid_after_utc - cert.cert.not_valid_before_utc
    assert datetime.timedelta(days=30) <= validity <= datetime.timedelta(days=32)
    fp = cert.fingerprint()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fp)
    assert fp == cert.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert cert.fingerprints == [("sha-256", fp)]
    assert len(cert.fingerprint("sha-1")) == 59 and len(cert.fingerprint("sha-512")) == 191
    assert cert.cert.subject != Certificate.generate().cert.subject  # random CN
    with pytest.raises(DtlsError):
        cert.fingerprint("md5")
    pinned = Certificate.generate(not_before=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    assert pinned.cert.not_valid_before_utc.year == 2030


# -- handshake -------------------------------------------------------------------------------


def test_handshake_both_roles_and_keys_agree() -> None:
    client, server = make_pair()
    assert client.get_timer() is None  # nothing armed before start
    c, s = connect(client, server)
    assert client.state is server.state is DtlsState.CONNECTED
    assert (c.is_client, s.is_client) == (True, False)
    assert c.srtp_profile == s.srtp_profile == GCM
    assert len(c.keying_material) == 2 * (16 + 12)
    assert c.keying_material == s.keying_material
    assert c.remote_fingerprint == SERVER_CERT.fingerprint()
    assert s.remote_fingerprint == CLIENT_CERT.fingerprint()
    assert client.get_timer() is None and server.get_timer() is None
    # The SRTP contexts made from the event talk to each other.
    rtp = bytes.fromhex("80600001000000640000beef") + b"payload"
    assert s.srtp_context().unprotect_rtp(c.srtp_context().protect_rtp(rtp)) == rtp


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "chosen"),
    [
        ((CM, GCM), (GCM, CM), GCM),  # the client prefers CM, our server still picks GCM
        ((GCM, CM), (GCM, CM), GCM),
        ((CM,), (GCM, CM), CM),  # a client without GCM
        ((GCM,), (GCM, CM), GCM),
        ((GCM, CM), (CM, GCM), CM),  # OpenSSL: the server's order wins
        ((GCM, CM), (CM,), CM),
    ],
)
def test_srtp_profile_selection(
    client_profiles: tuple[str, ...], server_profiles: tuple[str, ...], chosen: str
) -> None:
    client, server = make_pair(client_profiles=client_profiles, server_profiles=server_profiles)
    c, s = connect(client, server)
    assert c.srtp_profile == s.srtp_profile == chosen
    length = 2 * (16 + (12 if chosen == GCM else 14))
    assert len(c.keying_material) == length and c.keying_material == s.keying_material


def test_no_srtp_negotiated() -> None:
    client, server = make_pair(client_profiles=(), server_profiles=(GCM,))
    c, s = connect(client, server)
    assert c.srtp_profile is s.srtp_profile is None and c.keying_material == b""
    with pytest.raises(DtlsError):
        c.srtp_context()


def test_unsupported_profile_is_refused() -> None:
    with pytest.raises(DtlsError):
        DtlsTransport(CLIENT_CERT, is_server=False, srtp_profiles=("SRTP_NULL_NULL",))


def test_other_fingerprint_algorithms_are_accepted() -> None:
    client, server = make_pair(
        client_knows=[("SHA-512", SERVER_CERT.fingerprint("sha-512").lower())],
        server_knows=[("md5", "00:11"), ("sha-1", CLIENT_CERT.fingerprint("sha-1"))],
    )
    connect(client, server)


def test_remote_fingerprints_set_after_the_client_started() -> None:
    client, server = make_pair(client_knows=[])
    server.start(0.0)
    client.start(0.0)
    pump(client, server)
    assert client.state is DtlsState.CONNECTING and events(client) == []
    client.remote_fingerprints = SERVER_CERT.fingerprints  # the SDP answer arrives
    pump(client, server)
    assert isinstance(events(client)[0], HandshakeComplete)
    assert isinstance(events(server)[0], HandshakeComplete)
    # Repeating it in a later SDP is fine; changing it is not.
    client.remote_fingerprints = SERVER_CERT.fingerprints
    with pytest.raises(DtlsError):
        client.remote_fingerprints = OTHER_CERT.fingerprints


def assert_fatal_alert_sent(datagrams: list[bytes]) -> None:
    alerts = [f for d in datagrams for t, epoch, f in records(d) if t == 21]
    assert alerts, "no alert record was sent"


def test_server_rejects_a_client_certificate_that_does_not_match() -> None:
    client, server = make_pair(server_knows=OTHER_CERT.fingerprints)
    server.start(0.0)
    client.start(0.0)
    sent = pump(client, server)
    assert_fatal_alert_sent(sent)
    [s] = events(server)
    assert s == Closed("the peer certificate does not match the SDP fingerprint", True)
    [c] = events(client)
    assert isinstance(c, Closed) and c.error  # the client got the alert
    assert client.state is server.state is DtlsState.FAILED
    assert client.get_timer() is None and server.get_timer() is None


def test_client_rejects_a_server_certificate_that_does_not_match() -> None:
    client, server = make_pair(client_knows=OTHER_CERT.fingerprints)
    server.start(0.0)
    client.start(0.0)
    sent = pump(client, server)
    assert_fatal_alert_sent(sent)
    mismatch = Closed("the peer certificate does not match the SDP fingerprint", True)
    assert events(client) == [mismatch]
    [s] = events(server)
    assert isinstance(s, Closed) and s.error
    # The server never completed, so no keys ever came out.
    assert server.state is DtlsState.FAILED


def test_client_without_certificate_is_refused() -> None:
    """A bare pyOpenSSL client with no certificate: our server must fail the handshake
    (VERIFY_FAIL_IF_NO_PEER_CERT) with an alert, even though it knows a fingerprint."""
    server = DtlsTransport(SERVER_CERT, is_server=True,
                           remote_fingerprints=CLIENT_CERT.fingerprints)
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_options(SSL.OP_NO_QUERY_MTU)
    ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_tlsext_use_srtp(GCM.encode())
    bare = SSL.Connection(ctx, None)
    bare.set_connect_state()
    bare.set_ciphertext_mtu(1200)
    sent: list[bytes] = []
    for _ in range(5):
        with contextlib.suppress(SSL.Error):  # it ends with the server's alert
            bare.do_handshake()
        with contextlib.suppress(SSL.WantReadError):
            server.receive_datagram(bare.bio_read(65536), 0.0)
        for data in server.datagrams_to_send():
            sent.append(data)
            with contextlib.suppress(SSL.Error):
                bare.bio_write(data)
    assert_fatal_alert_sent(sent)
    [event] = events(server)
    assert isinstance(event, Closed) and event.error
    assert "certificate" in event.reason
    assert server.state is DtlsState.FAILED


def test_unknown_algorithm_only_is_a_mismatch() -> None:
    client, server = make_pair(server_knows=[("md5", "00:11:22")])
    server.start(0.0)
    client.start(0.0)
    pump(client, server)
    [s] = events(server)
    assert isinstance(s, Closed) and s.error


# -- application data, packing, close ----------------------------------------------------------


def test_application_data_both_ways_and_record_packing() -> None:
    client, server = make_pair(mtu=1200)
    connect(client, server)
    payloads = [os.urandom(n) for n in (1000, 100, 1100, 1, 50)]
    for p in payloads:
        client.send(p)
    datagrams = client.datagrams_to_send()
    assert all(len(d) <= 1200 for d in datagrams)
    # Whole records packed up to the MTU (37 bytes of AES-GCM record overhead each):
    # 1037 + 137, then 1137 + 38, then 87.
    assert [len(d) for d in datagrams] == [1174, 1175, 87]
    assert [len(records(d)) for d in datagrams] == [2, 2, 1]
    for d in datagrams:
        server.receive_datagram(d, 0.0)
    assert events(server) == [ApplicationData(p) for p in payloads]
    server.send(b"pong")
    pump(client, server)
    assert events(client) == [ApplicationData(b"pong")]
    assert 1100 < client.cleartext_mtu < 1200


def test_data_sent_before_the_handshake_is_queued() -> None:
    client, server = make_pair()
    client.send(b"early 1")
    client.send(b"early 2")
    server.send(b"early from server")
    server.start(0.0)
    client.start(0.0)
    pump(client, server)
    c, s = events(client), events(server)
    assert isinstance(c[0], HandshakeComplete) and isinstance(s[0], HandshakeComplete)
    assert s[1:] == [ApplicationData(b"early 1"), ApplicationData(b"early 2")]
    assert c[1:] == [ApplicationData(b"early from server")]


def test_oversized_application_data_is_refused() -> None:
    client, server = make_pair()
    connect(client, server)
    with pytest.raises(DtlsError):
        client.send(b"x" * 16385)


@pytest.mark.parametrize("closer", ["client", "server"])
def test_close_notify_both_ways(closer: str) -> None:
    client, server = make_pair()
    connect(client, server)
    first, second = (client, server) if closer == "client" else (server, client)
    first.close()
    assert events(first) == [Closed("closed locally", False)]
    [datagram] = first.datagrams_to_send()
    assert [(t, epoch) for t, epoch, _ in records(datagram)] == [(21, 1)]  # encrypted alert
    second.receive_datagram(datagram, 1.0)
    assert events(second) == [Closed("close_notify received", False)]
    assert first.state is second.state is DtlsState.CLOSED
    [reply] = second.datagrams_to_send()  # RFC 5246 §7.2.1: close_notify answered
    assert [t for t, _, _ in records(reply)] == [21]
    first.receive_datagram(reply, 1.0)
    assert events(first) == []
    # Nothing more goes out, and sending is a silent no-op.
    first.send(b"late")
    assert first.datagrams_to_send() == []
    first.close()
    assert events(first) == []


def test_close_before_the_handshake() -> None:
    client, _ = make_pair()
    client.start(0.0)
    client.close()
    assert events(client) == [Closed("closed locally", False)]
    assert client.get_timer() is None


# -- resilience ------------------------------------------------------------------------------


def test_garbage_does_not_kill_an_established_connection() -> None:
    client, server = make_pair()
    connect(client, server)
    rng = random.Random(5)
    client.send(b"template")
    [valid] = client.datagrams_to_send()
    garbage = [
        b"\x17",
        b"\x16\xfe\xfd",
        valid[:20],  # truncated record
        valid[:-1] + bytes([valid[-1] ^ 1]),  # bad authentication tag
        valid[:13] + os.urandom(len(valid) - 13),
        b"\x15\xfe\xfd" + b"\x00" * 8 + b"\x00\x02\x02\x28",  # forged plaintext fatal alert
        b"\x16\xfe\xfd" + b"\x00" * 8 + b"\x00\x0c" + b"\x01" + b"\x00" * 11,  # bogus hello
        valid + b"\x17\xfe\xfd\x00\x01",  # a good record followed by junk
    ]
    garbage += [bytes([rng.randrange(20, 64)]) + rng.randbytes(rng.randrange(0, 80))
                for _ in range(300)]
    for junk in garbage:
        server.receive_datagram(junk, 1.0)
    evs = events(server)
    # Only the one genuine record inside the junk got through.
    assert evs == [ApplicationData(b"template")]
    assert server.state is DtlsState.CONNECTED
    client.send(b"still alive")
    server.send(b"me too")
    pump(client, server)
    assert events(server) == [ApplicationData(b"still alive")]
    assert events(client) == [ApplicationData(b"me too")]


def test_handshake_timeout_in_the_callers_clock() -> None:
    client = DtlsTransport(
        CLIENT_CERT, is_server=False, remote_fingerprints=SERVER_CERT.fingerprints,
        handshake_timeout=10.0,
    )
    client.start(100.0)
    timer = client.get_timer()
    assert timer is not None and 100.0 < timer <= 101.0  # OpenSSL's first retransmit, ~1 s
    client.handle_timer(110.0)
    assert events(client) == [Closed("DTLS handshake timed out", True)]
    assert client.get_timer() is None


def wait_for_timer(t: DtlsTransport) -> None:
    timer = t.get_timer()
    assert timer is not None
    time.sleep(max(0.0, timer - time.monotonic()) + 0.05)  # bounded: ~1 s
    t.handle_timer(time.monotonic())


def test_lost_client_hello_is_retransmitted() -> None:
    """Real time: OpenSSL's retransmission timer runs on its own clock (about 1 s)."""
    client, server = make_pair()
    server.start(time.monotonic())
    client.start(time.monotonic())
    [lost] = client.datagrams_to_send()
    [(ctype, _, fragment)] = records(lost)
    assert (ctype, fragment[0]) == (22, 1)  # a ClientHello, dropped on the floor
    wait_for_timer(client)
    [again] = client.datagrams_to_send()
    [(ctype, _, fragment_again)] = records(again)
    assert (ctype, fragment_again[0]) == (22, 1)
    assert again != lost  # a new record sequence number (RFC 6347 §4.2.4)
    server.receive_datagram(again, time.monotonic())
    pump(client, server, now=time.monotonic())
    assert isinstance(events(client)[0], HandshakeComplete)
    assert isinstance(events(server)[0], HandshakeComplete)


def test_lost_final_flight_is_recovered() -> None:
    client, server = make_pair()
    server.start(time.monotonic())
    client.start(time.monotonic())
    dropped: list[bytes] = []

    def drop_servers_finished(src: DtlsTransport, data: bytes) -> bool:
        # The server's last flight is its ChangeCipherSpec + Finished (content type 20).
        if src is server and not dropped and any(t == 20 for t, _, _ in records(data)):
            dropped.append(data)
            return True
        return False

    pump(client, server, time.monotonic(), drop_servers_finished)
    assert dropped
    assert isinstance(events(server)[0], HandshakeComplete)
    assert events(client) == [] and client.state is DtlsState.CONNECTING
    wait_for_timer(client)  # the client repeats its flight...
    pump(client, server, time.monotonic())  # ...and the server repeats its last one
    assert isinstance(events(client)[0], HandshakeComplete)
    client.send(b"after recovery")
    pump(client, server)
    assert events(server) == [ApplicationData(b"after recovery")]


# -- interop with aiortc ------------------------------------------------------------------------


class _FakeIce:
    """Just enough of aiortc's RTCIceTransport for RTCDtlsTransport: a datagram pipe."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def _recv(self) -> bytes:
        return await self.inbox.get()

    async def _send(self, data: bytes) -> None:
        await self.outbox.put(data)


class _Receiver:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    async def _handle_data(self, data: bytes) -> None:
        self.data.append(data)


@pytest.mark.parametrize("aiortc_role", ["client", "server"])
def test_interop_with_aiortc(aiortc_role: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        theirs_cert = RTCCertificate.generateCertificate()
        ice = _FakeIce("controlled" if aiortc_role == "client" else "controlling")
        theirs = RTCDtlsTransport(ice, [theirs_cert])  # type: ignore[arg-type]
        receiver = _Receiver()
        theirs._register_data_receiver(receiver)
        ours = DtlsTransport(
            CLIENT_CERT,
            is_server=aiortc_role == "client",
            remote_fingerprints=[
                (f.algorithm, f.value) for f in theirs_cert.getFingerprints()
            ],
        )
        params = RTCDtlsParameters(
            fingerprints=[RTCDtlsFingerprint("sha-256", CLIENT_CERT.fingerprint())]
        )
        their_start = asyncio.ensure_future(theirs.start(params))
        ours.start(loop.time())
        done: HandshakeComplete | None = None
        got: list[bytes] = []
        srtp_checked = False
        deadline = loop.time() + 10
        while not (got and receiver.data and srtp_checked):
            assert loop.time() < deadline, (theirs.state, ours.state)
            for data in ours.datagrams_to_send():
                ice.inbox.put_nowait(data)
            await asyncio.sleep(0.005)
            while not ice.outbox.empty():
                ours.receive_datagram(ice.outbox.get_nowait(), loop.time())
            timer = ours.get_timer()
            if timer is not None and timer <= loop.time():
                ours.handle_timer(loop.time())
            while (event := ours.next_event()) is not None:
                if isinstance(event, HandshakeComplete):
                    done = event
                    ours.send(b"hello aiortc")
                elif isinstance(event, ApplicationData):
                    got.append(event.data)
                else:
                    raise AssertionError(event)
            if done is not None and their_start.done() and not srtp_checked:
                their_start.result()
                assert theirs.state == "connected"
                await theirs._send_data(b"hello trio-sfu")
                # SRTP both ways, with aiortc's own key split and libsrtp sessions.
                ctx = done.srtp_context()
                rtp = bytes.fromhex("80600007000000640000cafe") + os.urandom(100)
                assert theirs._rx_srtp.unprotect(ctx.protect_rtp(rtp)) == rtp
                assert ctx.unprotect_rtp(theirs._tx_srtp.protect(rtp)) == rtp
                srtp_checked = True
        assert receiver.data == [b"hello aiortc"]
        assert got == [b"hello trio-sfu"]
        assert done is not None and done.srtp_profile == GCM  # aiortc offers GCM too
        await theirs.stop()

    asyncio.run(main())
