"""Our DTLS 1.2 record layer after the handshake (trio_sfu/proto/dtls_record.py), against OpenSSL
itself: a plain pyOpenSSL connection in memory is the other end, so every record we protect is
checked by OpenSSL's record layer and every record we accept was written by it."""

from __future__ import annotations

import datetime
import gc
import struct
import time
import weakref
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
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
from trio_sfu.proto.dtls_record import SUITES, RecordLayer, prf, record_layer

OURS = Certificate.generate()
THEIRS = Certificate.generate()
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
CHACHA = "ECDHE-ECDSA-CHACHA20-POLY1305"
CBC = "ECDHE-ECDSA-AES128-SHA"


def _rsa_identity() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA certificate, as GStreamer's webrtcbin uses (ECDHE-RSA-* suites)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gst")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, cert


RSA_KEY, RSA_CERT = _rsa_identity()


class OpenSSLPeer:
    """The remote end: a bare pyOpenSSL DTLS connection with memory BIOs."""

    def __init__(self, *, is_server: bool, ciphers: str = AES128, rsa_cert: bool = False) -> None:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(0xFEFD)
        ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
        ctx.set_cipher_list(ciphers.encode())
        if rsa_cert:
            ctx.use_certificate(RSA_CERT)
            ctx.use_privatekey(RSA_KEY)
            self.cert = RSA_CERT
        else:
            ctx.use_certificate(THEIRS.cert)
            ctx.use_privatekey(THEIRS.key)
            self.cert = THEIRS.cert
        ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)
        ctx.set_tlsext_use_srtp(b"SRTP_AEAD_AES_128_GCM")
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_ciphertext_mtu(1200)
        if is_server:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
        self.done = False
        self.received: list[bytes] = []
        self.close_notify = False

    @property
    def fingerprints(self) -> list[tuple[str, str]]:
        return [("sha-256", self.cert.fingerprint(hashes.SHA256()).hex(":"))]

    def step(self) -> None:
        if not self.done:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                return
            self.done = True
        while True:
            try:
                self.received.append(self.conn.recv(65536))
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self.close_notify = True
                return

    def receive(self, datagram: bytes) -> None:
        self.conn.bio_write(datagram)
        self.step()

    def output(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.conn.bio_read(65536)
            except SSL.Error:
                return out

    def records(self, is_client: bool) -> RecordLayer:
        """A record layer with this peer's own keys, to forge authentic records."""
        layer = record_layer(
            self.conn.get_cipher_name() or "", self.conn.master_key() or b"",
            self.conn.client_random() or b"", self.conn.server_random() or b"",
            is_client=is_client, write_seq=1000,
        )  # fmt: skip
        assert layer is not None
        return layer


Drop = Callable[[bytes], bool]


def exchange(ours: DtlsTransport, peer: OpenSSLPeer, drop: Drop | None = None) -> list[bytes]:
    """Datagrams both ways until quiet; ``drop`` may lose some of ours. Returns ours."""
    sent: list[bytes] = []
    for _ in range(50):
        peer.step()
        theirs = peer.output()
        if theirs:
            ours.receive_datagram(theirs, time.monotonic())
        mine = ours.datagrams_to_send()
        for datagram in mine:
            sent.append(datagram)
            if drop is None or not drop(datagram):
                peer.receive(datagram)
        if not theirs and not mine:
            return sent
    raise AssertionError("no quiet after 50 rounds")


def events(t: DtlsTransport) -> list[DtlsEvent]:
    out = []
    while (event := t.next_event()) is not None:
        out.append(event)
    return out


def records(datagram: bytes) -> list[tuple[int, int, int]]:
    """(content type, epoch, sequence number) of each record (RFC 6347 §4.1)."""
    out, pos = [], 0
    while pos < len(datagram):
        ctype, _, epoch_seq, length = struct.unpack_from("!BHQH", datagram, pos)
        out.append((ctype, epoch_seq >> 48, epoch_seq & (2**48 - 1)))
        pos += 13 + length
    assert pos == len(datagram)
    return out


def connected(
    ours_role: str, ciphers: str = AES128, *, rsa_cert: bool = False
) -> tuple[DtlsTransport, OpenSSLPeer]:
    peer = OpenSSLPeer(is_server=ours_role == "client", ciphers=ciphers, rsa_cert=rsa_cert)
    ours = DtlsTransport(OURS, is_server=ours_role == "server",
                         remote_fingerprints=peer.fingerprints)  # fmt: skip
    ours.start(time.monotonic())
    exchange(ours, peer)
    [done] = events(ours)
    assert isinstance(done, HandshakeComplete) and peer.done
    return ours, peer


# -- the PRF and the keys --------------------------------------------------------------------


@pytest.mark.parametrize("cipher", [AES128, AES256])
def test_prf_matches_openssls_exporter(cipher: str) -> None:
    """RFC 5705 §4: an exporter is PRF(master_secret, label, client_random + server_random),
    with the suite's PRF hash (SHA-384 for AES-256-GCM); OpenSSL computes it independently."""
    _, peer = connected("server", cipher)
    conn = peer.conn
    seed = (conn.client_random() or b"") + (conn.server_random() or b"")
    expected = conn.export_keying_material(b"EXPERIMENTAL-trio", 100)
    hash_name = SUITES[cipher].prf_hash
    assert prf(conn.master_key() or b"", b"EXPERIMENTAL-trio", seed, 100, hash_name) == expected
    assert prf(conn.master_key() or b"", b"EXPERIMENTAL-trio", seed, 100, "md5") != expected


def test_unknown_suite_has_no_record_layer() -> None:
    assert record_layer(CBC, b"m" * 48, b"c" * 32, b"s" * 32, is_client=True, write_seq=1) is None


# -- data both ways, each suite and role --------------------------------------------------------


@pytest.mark.parametrize(
    ("ours_role", "cipher", "rsa_cert"),
    [(role, cipher, False) for role in ("server", "client") for cipher in (AES128, AES256, CHACHA)]
    # our certificate is ECDSA: an ECDHE-RSA suite needs an RSA peer as the server
    + [("client", "ECDHE-RSA-AES128-GCM-SHA256", True),
       ("client", "ECDHE-RSA-AES256-GCM-SHA384", True)],
)  # fmt: skip
def test_data_both_ways_with_openssl(ours_role: str, cipher: str, rsa_cert: bool) -> None:
    ours, peer = connected(ours_role, cipher, rsa_cert=rsa_cert)
    assert ours.uses_own_record_layer and ours._conn is None  # OpenSSL's connection is gone
    assert peer.conn.get_cipher_name() == cipher
    overhead = 16 if "CHACHA" in cipher else 24
    assert ours.cleartext_mtu == 1200 - 13 - overhead
    payloads = [b"x", bytes(range(256)) * 4, b"y" * ours.cleartext_mtu]
    for payload in payloads:
        ours.send(payload)
    datagrams = ours.datagrams_to_send()
    assert all(len(d) <= 1200 for d in datagrams)
    for datagram in datagrams:
        peer.receive(datagram)
    assert peer.received == payloads
    for payload in payloads:
        peer.conn.send(payload)
        ours.receive_datagram(peer.output(), 1.0)
    assert events(ours) == [ApplicationData(p) for p in payloads]


@pytest.mark.parametrize("ours_role", ["server", "client"])
def test_openssl_connection_is_freed_at_once(ours_role: str) -> None:
    """Freed by reference counting when the handshake completes, not at some later garbage
    collection: nothing (a verify callback, a cycle) may keep it alive (issue 10)."""
    peer = OpenSSLPeer(is_server=ours_role == "client")
    ours = DtlsTransport(OURS, is_server=ours_role == "server",
                         remote_fingerprints=peer.fingerprints)  # fmt: skip
    assert ours._conn is not None
    ref = weakref.ref(ours._conn)
    gc.disable()
    try:
        ours.start(0.0)
        exchange(ours, peer)
        assert ours.state is DtlsState.CONNECTED
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("ours_role", ["server", "client"])
def test_sequence_numbers_continue_after_openssls(ours_role: str) -> None:
    """Our first epoch-1 record follows the last one OpenSSL wrote (its Finished: seq 0)."""
    ours, peer = connected(ours_role)
    ours.send(b"first")
    ours.send(b"second")
    [datagram] = ours.datagrams_to_send()
    assert [(t, e, s) for t, e, s in records(datagram)] == [(23, 1, 1), (23, 1, 2)]
    peer.receive(datagram)
    assert peer.received == [b"first", b"second"]


def drop_first_ccs(lost: list[bytes]) -> Drop:
    """A loss rule for :func:`exchange`: the first datagram holding a ChangeCipherSpec (a
    flight that ends with Finished) is lost, and kept in ``lost``."""

    def drop(datagram: bytes) -> bool:
        if not lost and any(t == 20 for t, _, _ in records(datagram)):
            lost.append(datagram)
            return True
        return False

    return drop


def test_sequence_numbers_after_a_retransmitted_finished() -> None:
    """Our client's flight (with Finished at epoch-1 seq 0) is lost once; OpenSSL repeats it
    with seq 1 (RFC 6347 §4.2.4: new sequence numbers), so ours start at 2."""
    peer = OpenSSLPeer(is_server=True)
    ours = DtlsTransport(OURS, is_server=False, remote_fingerprints=peer.fingerprints)
    ours.start(time.monotonic())
    lost: list[bytes] = []
    exchange(ours, peer, drop_first_ccs(lost))
    assert lost and ours.state is DtlsState.CONNECTING
    timer = ours.get_timer()
    assert timer is not None
    time.sleep(max(0.0, timer - time.monotonic()) + 0.05)  # OpenSSL's own clock, ~1 s
    ours.handle_timer(time.monotonic())
    exchange(ours, peer)
    assert isinstance(events(ours)[0], HandshakeComplete) and ours.uses_own_record_layer
    ours.send(b"after")
    [datagram] = ours.datagrams_to_send()
    assert records(datagram) == [(23, 1, 2)]
    peer.receive(datagram)
    assert peer.received == [b"after"]


@pytest.mark.parametrize("cipher", [AES128, CBC])
def test_application_data_right_behind_the_finished(cipher: str) -> None:
    """The server's first record in the datagram that completes our handshake: set aside,
    then delivered through our layer (and its replay window) after HandshakeComplete — or
    through OpenSSL's when it stays (a CBC suite)."""
    peer = OpenSSLPeer(is_server=True, ciphers=cipher)
    ours = DtlsTransport(OURS, is_server=False, remote_fingerprints=peer.fingerprints)
    ours.start(0.0)
    ours.send(b"queued before the handshake")
    for _ in range(10):
        for datagram in ours.datagrams_to_send():
            peer.receive(datagram)
        if peer.done:
            break
        ours.receive_datagram(peer.output(), 0.0)
    peer.conn.send(b"right behind")
    last = peer.output()  # CCS + Finished + the application record, one datagram
    assert [t for t, _, _ in records(last)] == [20, 22, 23]
    ours.receive_datagram(last, 0.0)
    assert ours.uses_own_record_layer is (cipher == AES128)
    evs = events(ours)
    assert isinstance(evs[0], HandshakeComplete) and evs[1:] == [ApplicationData(b"right behind")]
    ours.receive_datagram(last, 1.0)  # replayed: the window saw it
    assert events(ours) == []
    for datagram in ours.datagrams_to_send():
        peer.receive(datagram)
    assert peer.received == [b"queued before the handshake"]


# -- what must not get through ---------------------------------------------------------------


def test_tampered_and_foreign_records_are_dropped() -> None:
    ours, peer = connected("server")
    other, other_peer = connected("server")
    peer.conn.send(b"genuine")
    genuine = peer.output()
    other_peer.conn.send(b"genuine")
    foreign = other_peer.output()  # another association's keys
    flipped = [genuine[:i] + bytes([genuine[i] ^ 1]) + genuine[i + 1 :]
               for i in range(len(genuine)) if i not in (11, 12)]  # fmt: skip
    as_alert = bytes([21]) + genuine[1:]  # the type is authenticated too (RFC 5246 §6.2.3.3)
    as_epoch0 = genuine[:3] + b"\x00\x00" + genuine[5:]
    for bad in [foreign, as_alert, as_epoch0, genuine[:-1], *flipped]:
        ours.receive_datagram(bad, 1.0)
    assert events(ours) == [] and ours.state is DtlsState.CONNECTED
    ours.receive_datagram(genuine, 1.0)
    assert events(ours) == [ApplicationData(b"genuine")]
    assert events(other) == []


def test_replay_window() -> None:
    """RFC 6347 §4.1.2.6: duplicates and records left of a 64-record window are dropped;
    late records inside it are accepted once."""
    ours, peer = connected("server")
    sent = []
    for i in range(100):
        peer.conn.send(b"%d" % i)
        sent.append(peer.output())
    ours.receive_datagram(sent[80], 1.0)
    ours.receive_datagram(sent[80], 1.0)  # duplicate
    ours.receive_datagram(sent[17], 1.0)  # seq 18: 63 behind seq 81, the window's left edge
    ours.receive_datagram(sent[16], 1.0)  # 64 behind: left of the window
    ours.receive_datagram(sent[17], 1.0)  # duplicate inside the window
    ours.receive_datagram(sent[99], 1.0)
    ours.receive_datagram(sent[50], 1.0)  # 49 behind the new top: still inside
    ours.receive_datagram(sent[30], 1.0)  # now left of the moved window
    assert [e.data for e in events(ours) if isinstance(e, ApplicationData)] == [
        b"80",
        b"17",
        b"99",
        b"50",
    ]


# -- alerts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ours_role", ["server", "client"])
def test_close_notify_we_send(ours_role: str) -> None:
    ours, peer = connected(ours_role)
    ours.close()
    assert events(ours) == [Closed("closed locally", False)]
    [datagram] = ours.datagrams_to_send()
    assert [(t, e) for t, e, _ in records(datagram)] == [(21, 1)]
    peer.receive(datagram)
    assert peer.close_notify


@pytest.mark.parametrize("ours_role", ["server", "client"])
def test_close_notify_we_receive_is_answered(ours_role: str) -> None:
    ours, peer = connected(ours_role)
    peer.conn.shutdown()  # RFC 5246 §7.2.1
    ours.receive_datagram(peer.output(), 1.0)
    assert events(ours) == [Closed("close_notify received", False)]
    assert ours.state is DtlsState.CLOSED
    [reply] = ours.datagrams_to_send()
    assert [(t, e) for t, e, _ in records(reply)] == [(21, 1)]
    peer.receive(reply)
    assert peer.close_notify
    ours.send(b"late")  # a silent no-op once closed
    assert ours.datagrams_to_send() == []


def test_fatal_alert_closes_and_warnings_do_not() -> None:
    ours, peer = connected("server")
    forger = peer.records(is_client=True)  # OpenSSL sends no alerts on demand; its keys do
    ours.receive_datagram(forger.protect(21, b"\x01\x5a"), 1.0)  # warning user_canceled
    ours.receive_datagram(forger.protect(21, b"\x02"), 1.0)  # malformed: dropped
    assert events(ours) == [] and ours.state is DtlsState.CONNECTED
    ours.receive_datagram(forger.protect(21, b"\x02\x50"), 1.0)  # fatal internal_error
    assert events(ours) == [Closed("fatal alert received: internal_error", True)]
    assert ours.state is DtlsState.FAILED
    ours.receive_datagram(forger.protect(23, b"after"), 1.0)
    assert events(ours) == []


# -- the final flight -------------------------------------------------------------------------


def test_lost_final_flight_is_answered_after_openssl_is_gone() -> None:
    """RFC 6347 §4.2.4: our server's CCS + Finished are lost; the OpenSSL client repeats its
    flight on its timer and our server, already on its own record layer, repeats its own."""
    peer = OpenSSLPeer(is_server=False)
    ours = DtlsTransport(OURS, is_server=True, remote_fingerprints=peer.fingerprints)
    ours.start(time.monotonic())
    lost: list[bytes] = []
    exchange(ours, peer, drop_first_ccs(lost))
    assert lost and not peer.done
    assert isinstance(events(ours)[0], HandshakeComplete) and ours.uses_own_record_layer
    ours.send(b"sent while the client waits")  # epoch-1 seq 1: the client cannot read it yet
    peer.receive(ours.datagrams_to_send()[0])
    assert peer.received == []  # OpenSSL holds it for the epoch it does not have yet
    timeout = peer.conn.DTLSv1_get_timeout()
    assert timeout is not None
    time.sleep(timeout + 0.05)  # OpenSSL's own clock, ~1 s
    peer.conn.DTLSv1_handle_timeout()
    repeated = peer.output()
    assert 22 in [t for t, e, _ in records(repeated) if e == 1]  # its Finished again
    ours.receive_datagram(repeated, time.monotonic())
    [answer] = ours.datagrams_to_send()
    assert answer == lost[0]  # the same records: the same sequence numbers, no nonce reuse
    peer.receive(answer)
    assert peer.done
    ours.receive_datagram(repeated, time.monotonic())  # a replay of it: no second answer
    assert ours.datagrams_to_send() == []
    ours.send(b"after recovery")
    peer.receive(ours.datagrams_to_send()[0])
    peer.conn.send(b"from the client")
    ours.receive_datagram(peer.output(), time.monotonic())
    assert peer.received == [b"sent while the client waits", b"after recovery"]
    assert events(ours) == [ApplicationData(b"from the client")]


def test_old_handshake_records_are_ignored_after_the_switch() -> None:
    """The client's whole flight again (epoch-0 records, then its Finished): only an
    authenticated epoch-1 Finished makes the server answer; a client answers nothing."""
    peer = OpenSSLPeer(is_server=False)
    ours = DtlsTransport(OURS, is_server=True, remote_fingerprints=peer.fingerprints)
    ours.start(0.0)
    flights: list[bytes] = []
    for _ in range(10):
        peer.step()
        out = peer.output()
        if not out:
            break
        flights.append(out)
        ours.receive_datagram(out, 0.0)
        for datagram in ours.datagrams_to_send():
            peer.receive(datagram)
    assert peer.done and ours.uses_own_record_layer
    events(ours)
    for flight in flights:  # ClientHello, then Certificate ... CCS, Finished
        epoch0 = b"".join(
            flight[p : p + 13 + int.from_bytes(flight[p + 11 : p + 13])]
            for p in _offsets(flight) if flight[p + 3 : p + 5] == b"\x00\x00"
        )  # fmt: skip
        ours.receive_datagram(epoch0, 1.0)
        assert ours.datagrams_to_send() == [] and events(ours) == []
    # The client side: the server's Finished repeated at it means nothing.
    client, server = connected("client")
    forger = server.records(is_client=False)
    finished = bytes([20]) + bytes(11) + bytes(12)
    client.receive_datagram(forger.protect(22, finished), 1.0)
    assert client.datagrams_to_send() == [] and events(client) == []
    assert client.state is DtlsState.CONNECTED


def _offsets(datagram: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(datagram):
        out.append(pos)
        pos += 13 + int.from_bytes(datagram[pos + 11 : pos + 13])
    return out


# -- other suites: OpenSSL stays ---------------------------------------------------------------


@pytest.mark.parametrize("ours_role", ["server", "client"])
def test_cbc_suite_falls_back_to_openssl(ours_role: str) -> None:
    ours, peer = connected(ours_role, CBC)
    assert peer.conn.get_cipher_name() == CBC
    assert not ours.uses_own_record_layer and ours._conn is not None
    ours.send(b"over openssl")
    for datagram in ours.datagrams_to_send():
        peer.receive(datagram)
    peer.conn.send(b"back")
    ours.receive_datagram(peer.output(), 1.0)
    assert peer.received == [b"over openssl"]
    assert events(ours) == [ApplicationData(b"back")]
    ours.close()
    for datagram in ours.datagrams_to_send():
        peer.receive(datagram)
    assert peer.close_notify


def test_server_picks_aes_gcm_over_a_client_preferring_chacha() -> None:
    """OP_CIPHER_SERVER_PREFERENCE: a client listing ChaCha20 first (as BoringSSL does on
    CPUs without AES instructions) still gets AES-128-GCM from our server."""
    ours, peer = connected("server", f"{CHACHA}:{AES256}:{AES128}")
    assert peer.conn.get_cipher_name() == AES128 and ours.uses_own_record_layer
