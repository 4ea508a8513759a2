"""DTLS 1.2 for WebRTC, sans-IO, over pyOpenSSL memory BIOs (RFC 6347, RFC 5763, RFC 5764,
RFC 8842).

One :class:`Certificate` per process is shared by every peer (browsers only pin the SDP
fingerprint, so nothing is gained by a certificate per peer, and generating one costs a key).
One :class:`DtlsTransport` per peer turns datagrams into events: :class:`HandshakeComplete`
(with the DTLS-SRTP keys), :class:`ApplicationData` (SCTP packets) and :class:`Closed`.

Two OpenSSL quirks shape the code:

* A memory BIO is a byte stream, not a datagram queue: everything OpenSSL writes between two
  reads comes out concatenated. :meth:`DtlsTransport.datagrams_to_send` therefore splits the
  output at DTLS record boundaries (RFC 6347 §4.1, 13-byte headers) and packs whole records
  into datagrams of at most ``mtu`` bytes (RFC 6347 §4.1.1: a datagram may hold several
  records, never part of one).
* OpenSSL's handshake retransmission timer reads its own (real) clock. See
  :meth:`DtlsTransport.get_timer` for what that means under a fake clock.

OpenSSL only does the handshake. Its connection object costs ~93 KiB per peer for as long as
it lives, and after the handshake a WebRTC association carries nothing but SCTP packets and
alerts (the SRTP keys are exported by then), so when an AEAD suite was negotiated the
transport derives the epoch-1 record keys from the master secret, moves to its own record
layer (:mod:`trio_sfu.proto.dtls_record`) and frees the OpenSSL connection (issue 10: server
RSS per idle subscriber 156–163 → 85–86 KiB, ``bench/pod.py --idle 200``). Any other suite
keeps OpenSSL for the whole association, as before. :class:`DtlsTransport` explains what the
switch has to keep.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from trio_sfu.proto.dtls_record import (
    ALERT,
    APPLICATION_DATA,
    HANDSHAKE,
    HEADER_SIZE,
    RecordLayer,
    record_layer,
)
from trio_sfu.proto.errors import DtlsError
from trio_sfu.proto.srtp import PROFILES, SrtpContext

__all__ = [
    "ApplicationData",
    "Certificate",
    "Closed",
    "DtlsEvent",
    "DtlsState",
    "DtlsTransport",
    "HandshakeComplete",
]

# RFC 8122 §5 hash function names (as they appear in a=fingerprint) we can check, and their
# hashlib names.
_HASHES: Final[dict[str, str]] = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}
_DTLS1_2_VERSION: Final = 0xFEFD
_RECORD_HEADER: Final = HEADER_SIZE  # RFC 6347 §4.1: type, version, epoch, seq, length
_MAX_RECORD_PLAINTEXT: Final = 16384  # RFC 5246 §6.2.1
_FINISHED: Final = b"\x14"  # RFC 5246 §7.4: HandshakeType finished (20)
_CLOSE_NOTIFY: Final = b"\x01\x00"  # RFC 5246 §7.2: warning(1), close_notify(0)
#: RFC 5246 §7.2 alert descriptions, for the reason of a Closed event.
_ALERTS: Final = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
    22: "record_overflow", 40: "handshake_failure", 42: "bad_certificate",
    43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
    46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    49: "access_denied", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 90: "user_canceled",
    100: "no_renegotiation", 110: "unsupported_extension",
}  # fmt: skip
# ECDHE only (forward secrecy), ECDSA first as browsers and we use P-256 certificates; the
# AEAD suites first, as our own record layer protects those (the server picks by this order:
# OP_CIPHER_SERVER_PREFERENCE). The CBC ones stay for old peers, with OpenSSL's record layer.
_CIPHERS: Final = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"
)
_EXPORTER_LABEL: Final = b"EXTRACTOR-dtls_srtp"  # RFC 5764 §4.2


def _hex_fingerprint(der: bytes, algorithm: str) -> str:
    """RFC 8122 §5: the hash of the DER certificate, ``AB:CD:...``."""
    name = _HASHES.get(algorithm.lower())
    if name is None:
        raise DtlsError(f"unsupported fingerprint algorithm {algorithm!r}")
    return hashlib.new(name, der).digest().hex(":").upper()


def _matches(der: bytes, fingerprints: list[tuple[str, str]]) -> bool:
    for algorithm, value in fingerprints:
        if algorithm in _HASHES and _hex_fingerprint(der, algorithm) == value:
            return True
    return False


def _normalise(fingerprints: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Lower-case algorithm, upper-case hex (RFC 8122 §5 makes the hex case-insensitive)."""
    return [(algo.strip().lower(), value.strip().upper()) for algo, value in fingerprints]


class Certificate:
    """The process's DTLS identity: an ECDSA P-256 key and a self-signed certificate.

    WebRTC authenticates by the SDP fingerprint (RFC 8827 §6.5), not by a CA, so the subject
    is a random name. The short validity (30 days) follows browsers; restart or rotate
    before it ends.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self._contexts: dict[tuple[bool, tuple[str, ...]], SSL.Context] = {}

    @classmethod
    def generate(
        cls, *, not_before: datetime.datetime | None = None, days: int = 30
    ) -> Certificate:
        """``not_before`` defaults to the wall clock minus a day (clock skew); it is a
        parameter so tests can pin it."""
        if not_before is None:
            not_before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, os.urandom(12).hex())])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + datetime.timedelta(days=days + 1))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        """``AB:CD:...`` upper-case hex of the DER certificate (RFC 8122 §5)."""
        return _hex_fingerprint(self.cert.public_bytes(Encoding.DER), algorithm)

    @property
    def fingerprints(self) -> list[tuple[str, str]]:
        """What goes into SDP ``a=fingerprint`` lines: sha-256, as every browser sends."""
        return [("sha-256", self.fingerprint("sha-256"))]

    def _context(self, is_server: bool, srtp_profiles: tuple[str, ...]) -> SSL.Context:
        """A configured OpenSSL context, shared by all peers of one role and profile list
        (the per-peer fingerprint check is set on each connection)."""
        cache_key = (is_server, srtp_profiles)
        ctx = self._contexts.get(cache_key)
        if ctx is None:
            ctx = SSL.Context(SSL.DTLS_METHOD)
            ctx.set_min_proto_version(_DTLS1_2_VERSION)  # RFC 8827 §6.5: DTLS 1.2 or later
            # We set the MTU ourselves (memory BIOs have no path MTU); no session tickets
            # (no resumption in WebRTC, they only bloat the last flight); no renegotiation.
            # The server picks the suite by our order (AEAD first: our own record layer).
            ctx.set_options(
                SSL.OP_NO_QUERY_MTU
                | SSL.OP_NO_TICKET
                | SSL.OP_NO_RENEGOTIATION
                | SSL.OP_CIPHER_SERVER_PREFERENCE
            )
            # With a CBC suite OpenSSL keeps the record layer: let it free its record
            # buffers while idle instead of keeping ~34 KB per peer (issue 10: memory per
            # idle peer).
            ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
            # No resumption (WebRTC never resumes; the fingerprint check wants the peer's
            # certificate every time): no server-side session cache holding a session per
            # peer, and the last flight is always the server's (see DtlsTransport).
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            ctx.set_cipher_list(_CIPHERS)
            ctx.use_certificate(self.cert)
            ctx.use_privatekey(self.key)
            ctx.check_privatekey()
            if srtp_profiles:
                # OpenSSL's server picks the first profile of *its own* list that the client
                # offers, so listing GCM first makes GCM win whatever the client's order.
                ctx.set_tlsext_use_srtp(":".join(srtp_profiles).encode("ascii"))
            self._contexts[cache_key] = ctx
        return ctx


class DtlsState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(slots=True, frozen=True)
class HandshakeComplete:
    """The handshake is done and the peer's certificate matched its SDP fingerprint.

    ``keying_material`` is the RFC 5764 §4.2 block (client key, server key, client salt,
    server salt) for ``srtp_profile``; both are empty/None when the peer negotiated no SRTP
    (a data-channel-only peer that omitted use_srtp).
    """

    srtp_profile: str | None
    keying_material: bytes
    is_client: bool
    remote_fingerprint: str  # sha-256 of the peer's certificate

    def srtp_context(self) -> SrtpContext:
        if self.srtp_profile is None:
            raise DtlsError("no SRTP profile was negotiated")
        return SrtpContext.from_dtls(
            self.srtp_profile, self.keying_material, is_client=self.is_client
        )


@dataclass(slots=True, frozen=True)
class ApplicationData:
    data: bytes


@dataclass(slots=True, frozen=True)
class Closed:
    """The transport is finished. ``error`` is False for close_notify (either way)."""

    reason: str
    error: bool


DtlsEvent = HandshakeComplete | ApplicationData | Closed


def _ssl_reason(exc: SSL.Error) -> str:
    """OpenSSL packs (library, function, reason) tuples into args[0]; keep the reasons."""
    details = exc.args[0] if exc.args else None
    if isinstance(details, list):
        reasons = [str(item[-1]) for item in details if isinstance(item, tuple) and item]
        if reasons:
            return "; ".join(reasons)
    return str(exc) or type(exc).__name__


def _split_records(data: bytes) -> list[bytes]:
    records = []
    pos, n = 0, len(data)
    while pos < n:
        if pos + _RECORD_HEADER > n:
            records.append(data[pos:])  # cannot happen with OpenSSL output; keep it whole
            break
        end = pos + _RECORD_HEADER + int.from_bytes(data[pos + 11 : pos + 13], "big")
        records.append(data[pos:end])
        pos = end
    return records


class DtlsTransport:
    """One peer's DTLS association, sans-IO (see the module docstring).

    * The client sends ClientHello on :meth:`start`; the server waits for it (calling
      :meth:`start` on the server only arms the handshake timeout, and a datagram arriving
      first starts it implicitly).
    * Until ``remote_fingerprints`` is non-empty (the SDP answer may come after the client
      started), received datagrams are held (at most :attr:`MAX_HELD`) and fed in when the
      fingerprints are set, so the peer's certificate is always checked *during* the
      handshake: a mismatch or a missing certificate makes OpenSSL send a fatal alert and
      the transport emits ``Closed(error=True)``.
    * Application data sent before the handshake completes is *queued* (at most
      :attr:`MAX_EARLY`, then dropped: SCTP retransmits) and goes out right after it.
    * Garbage never raises: undecryptable or malformed records are discarded (RFC 6347
      §4.1.2.7) and a fatal error becomes a :class:`Closed` event. Only local misuse raises
      :class:`DtlsError`.

    The switch to our own record layer when the handshake completes with an AEAD suite
    (:mod:`trio_sfu.proto.dtls_record`) must not lose anything OpenSSL would have done:

    * **Sequence numbers.** OpenSSL wrote our Finished (and any retransmission of it) in
      epoch 1; every record it writes passes through :meth:`_drain`, which notes the last
      epoch-1 sequence number, and ours continue after it (RFC 6347 §4.1: never reused, or
      AES-GCM would reuse a nonce).
    * **The replay window.** Epoch-1 application records that arrive before the handshake
      completes (the peer's first SCTP packet right behind its Finished) are set aside, not
      given to OpenSSL, and go through our layer once it exists, so every application record
      of the association passes one RFC 6347 §4.1.2.6 window.
    * **The final flight.** RFC 6347 §4.2.4: the side that sends the last flight (the server
      in a full handshake) must answer a retransmission of the peer's last flight by
      retransmitting its own, for at least twice the MSL — that is how a lost
      ChangeCipherSpec + Finished is recovered (the client, not having it, repeats its
      Finished on its timer). So the server keeps the records OpenSSL wrote in answer to the
      client's Finished (~75 bytes: CCS + Finished) and sends them again, verbatim, whenever
      an epoch-1 Finished from the client authenticates — what OpenSSL does too (it answers
      only an authenticated epoch-1 Finished; epoch-0 records of the old flight are dropped
      as out of epoch). Verbatim is safe: the same sequence numbers carry the same bytes, so
      no nonce is reused, and a client that did get the first copy drops the second as a
      replay. The client's original Finished went to OpenSSL, not through our window, so a
      network duplicate of it is answered once (then the window has it). The records are
      kept for the association's life (cheaper than a 2·MSL timer per peer). The client
      keeps nothing: its handshake completes only on the server's Finished, after which
      the server has nothing left to ask for. Session resumption, where the roles of the
      last flight swap, is off (``SESS_CACHE_OFF``, no tickets).
    * **What is ignored after the switch**: epoch-0 records (the old handshake flights, or a
      new ClientHello; OpenSSL drops them as well, and RFC 6347 §4.2.8 only allows, not
      requires, a new association on the same 5-tuple), any other handshake message
      (renegotiation is off, as in OpenSSL with ``OP_NO_RENEGOTIATION``), and warning alerts
      other than close_notify (RFC 5246 §7.2.2).
    * **Alerts.** close_notify is answered with close_notify (RFC 5246 §7.2.1) and closes; a
      fatal alert closes with ``error=True``.
    """

    MAX_HELD = 32
    MAX_EARLY = 64

    def __init__(
        self,
        certificate: Certificate,
        *,
        is_server: bool,
        remote_fingerprints: Sequence[tuple[str, str]] = (),
        srtp_profiles: Sequence[str] = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"),
        mtu: int = 1200,
        handshake_timeout: float | None = 30.0,
    ) -> None:
        for name in srtp_profiles:
            if name not in PROFILES:
                raise DtlsError(f"unsupported SRTP profile {name!r}")
        self.certificate = certificate
        self.is_server = is_server
        self.mtu = mtu
        self.handshake_timeout = handshake_timeout
        self.state = DtlsState.NEW
        self._remote = _normalise(remote_fingerprints)
        # OpenSSL until the handshake completes; None after it when our record layer took
        # over (see the class docstring).
        self._conn: SSL.Connection | None = SSL.Connection(
            certificate._context(is_server, tuple(srtp_profiles)), None
        )
        self._conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        self._conn.set_ciphertext_mtu(mtu)
        if is_server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self._records: RecordLayer | None = None
        self._verify_error: str | None = None
        self._handshake_done = False
        self._peer_der = b""  # the peer's certificate (DER), once the handshake is done
        self._held: list[bytes] = []
        self._early: list[bytes] = []
        self._pending: list[bytes] = []  # epoch-1 application records before completion
        self._next_write_seq = 0  # after the last epoch-1 record OpenSSL wrote
        self._final_flight: bytes | None = None  # RFC 6347 §4.2.4, the server's last flight
        self._out: list[bytes] = []  # whole records (or runs of them) for datagrams_to_send
        # A list, not a deque: usually empty or one event, and an empty deque costs ~600 B
        # per peer (issue 10, memory per idle peer).
        self._events: list[DtlsEvent] = []
        self._now = 0.0
        self._retransmit_at: float | None = None
        self._deadline: float | None = None

    # -- fingerprints -----------------------------------------------------------------------

    @property
    def remote_fingerprints(self) -> list[tuple[str, str]]:
        return list(self._remote)

    @remote_fingerprints.setter
    def remote_fingerprints(self, value: Sequence[tuple[str, str]]) -> None:
        fingerprints = _normalise(value)
        if self._handshake_done:
            # A renegotiated SDP may repeat the fingerprint; it may not change it (RFC 8842
            # §5: a new fingerprint needs a new DTLS association).
            if not _matches(self._peer_der, fingerprints):
                raise DtlsError("the remote fingerprint cannot change after the handshake")
            self._remote = fingerprints
            return
        self._remote = fingerprints
        if fingerprints and self._held:
            held, self._held = self._held, []
            for data in held:
                if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
                    break
                self._feed(data)
            self._update_timer(self._now)

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        """OpenSSL's verify callback: self-signed is fine, only the leaf's fingerprint counts
        (RFC 5763 §5: the SDP fingerprint is the trust anchor). Must never raise: pyOpenSSL
        would re-raise the exception from whatever call was running."""
        if depth != 0:
            return True
        try:
            if _matches(cert.to_cryptography().public_bytes(Encoding.DER), self._remote):
                return True
        except Exception:  # a certificate cryptography cannot load fails like a mismatch
            pass
        self._verify_error = "the peer certificate does not match the SDP fingerprint"
        return False

    # -- sans-IO face -------------------------------------------------------------------------

    @property
    def is_client(self) -> bool:
        return not self.is_server

    @property
    def uses_own_record_layer(self) -> bool:
        """True once the handshake completed with an AEAD suite and OpenSSL was freed."""
        return self._records is not None

    @property
    def cleartext_mtu(self) -> int:
        """The largest application payload that still fits one ``mtu``-sized datagram with
        the negotiated cipher (size SCTP packets by this once connected)."""
        if self._records is not None:
            return self.mtu - _RECORD_HEADER - self._records.overhead
        if self._conn is None:
            raise DtlsError("no DTLS connection")
        return int(self._conn.get_cleartext_mtu())

    def start(self, now: float) -> None:
        if self.state is not DtlsState.NEW:
            return
        self.state = DtlsState.CONNECTING
        self._now = now
        if self.handshake_timeout is not None:
            self._deadline = now + self.handshake_timeout
        if not self.is_server:
            self._drive()
        self._update_timer(now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one UDP datagram (it may hold several records). Never raises."""
        records = self._records
        if records is not None:  # connected, our record layer (the usual case)
            if self.state is DtlsState.CONNECTED:
                self._now = now
                self._receive_records(records, data)
            return
        if self.state is DtlsState.NEW:
            if not self.is_server:
                return  # nothing can be meant for a client that has not said hello
            self.start(now)
        if self.state not in (DtlsState.CONNECTING, DtlsState.CONNECTED) or not data:
            return
        self._now = now
        if not self._remote and not self._handshake_done:
            if len(self._held) < self.MAX_HELD:
                self._held.append(bytes(data))
            return
        self._feed(data)
        self._update_timer(now)

    def send(self, data: bytes) -> None:
        """Send one application record (one SCTP packet). Queued before the handshake
        completes, silently dropped once closed (the Closed event has told the driver)."""
        if len(data) > _MAX_RECORD_PLAINTEXT:
            raise DtlsError(f"{len(data)} bytes do not fit one DTLS record")
        if self.state is DtlsState.CONNECTED:
            records = self._records
            if records is None:
                self._write(data)
                return
            try:
                self._out.append(records.protect(APPLICATION_DATA, data))
            except DtlsError as exc:  # sequence numbers exhausted
                self._fatal(str(exc))
        elif self.state in (DtlsState.NEW, DtlsState.CONNECTING) and (
            len(self._early) < self.MAX_EARLY
        ):
            self._early.append(bytes(data))

    def datagrams_to_send(self) -> list[bytes]:
        """Whole records packed into datagrams of at most ``mtu`` bytes (RFC 6347 §4.1.1)."""
        if self._conn is not None:
            self._drain()
        out = self._out
        if not out:
            return []
        self._out = []
        if len(out) == 1:
            return out
        mtu = self.mtu
        datagrams: list[bytes] = []
        parts: list[bytes] = []
        size = 0
        for record in out:
            if parts and size + len(record) > mtu:
                datagrams.append(b"".join(parts))
                parts = []
                size = 0
            parts.append(record)
            size += len(record)
        datagrams.append(b"".join(parts))
        return datagrams

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should run next, in the caller's clock.

        OpenSSL keeps the retransmission timer against its *own* real clock and exposes
        only "seconds left", so this is ``now + left`` as of the last call that passed
        ``now``. With a real monotonic clock both agree. With a fake clock they do not:
        jumping the fake clock to this deadline and calling :meth:`handle_timer` does not
        make OpenSSL retransmit until that much *real* time has passed (the call just
        re-arms the timer). Tests that need a retransmission must really wait (about 1 s
        for the first one, doubling after); loss-free tests are unaffected. The handshake
        timeout, by contrast, is kept in the caller's clock.
        """
        if self._retransmit_at is None:
            return self._deadline
        if self._deadline is None:
            return self._retransmit_at
        return min(self._retransmit_at, self._deadline)

    def handle_timer(self, now: float) -> None:
        self._now = now
        conn = self._conn
        if self.state is not DtlsState.CONNECTING or conn is None:
            self._retransmit_at = None
            self._deadline = None
            return
        if self._deadline is not None and now >= self._deadline:
            self._fatal("DTLS handshake timed out")
            return
        try:
            conn.DTLSv1_handle_timeout()
        except (SSL.WantReadError, SSL.WantWriteError):
            pass  # pyOpenSSL maps some non-fatal -1 returns to these; the state is intact
        except SSL.Error as exc:  # e.g. too many retransmissions
            self._fatal(_ssl_reason(exc))
            return
        self._update_timer(now)

    def close(self) -> None:
        """Send close_notify (RFC 5246 §7.2.1) if connected; emits ``Closed(error=False)``."""
        if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
            return
        if self.state is DtlsState.CONNECTED:
            if self._records is not None:
                self._send_close_notify(self._records)
            else:
                self._shutdown()
        # Before the handshake completes OpenSSL refuses to send close_notify; the peer's
        # handshake will time out.
        self._finish(DtlsState.CLOSED, Closed("closed locally", False))

    def next_event(self) -> DtlsEvent | None:
        return self._events.pop(0) if self._events else None

    # -- our record layer (after the handshake) ---------------------------------------------

    def _receive_records(self, records: RecordLayer, data: bytes) -> None:
        """Each record of one datagram (RFC 6347 §4.1.1: several per datagram). Only epoch-1
        application data, alerts and handshake records can mean anything now; whatever does
        not authenticate is dropped (RFC 6347 §4.1.2.7)."""
        pos, n = 0, len(data)
        while pos + _RECORD_HEADER <= n:
            end = pos + _RECORD_HEADER + ((data[pos + 11] << 8) | data[pos + 12])
            if end > n:
                return  # a truncated record: the rest of the datagram is unusable
            content_type = data[pos]
            if content_type == APPLICATION_DATA:
                plaintext = records.unprotect(data, pos, end)
                if plaintext:  # an empty record carries nothing (RFC 5246 §6.2.1)
                    self._events.append(ApplicationData(plaintext))
            elif content_type in (ALERT, HANDSHAKE):
                plaintext = records.unprotect(data, pos, end)
                if plaintext is not None:
                    if content_type == ALERT:
                        self._alert(records, plaintext)
                        if self.state is not DtlsState.CONNECTED:
                            return
                    elif plaintext[:1] == _FINISHED and self._final_flight is not None:
                        # The client repeats its Finished: our CCS + Finished were lost
                        # (RFC 6347 §4.2.4, see the class docstring).
                        self._out.append(self._final_flight)
            pos = end

    def _alert(self, records: RecordLayer, alert: bytes) -> None:
        if len(alert) != 2:
            return  # RFC 5246 §7.2: two bytes; a malformed one is dropped like garbage
        level, description = alert
        if description == 0:  # close_notify, whatever the level
            # RFC 5246 §7.2.1: answer close_notify with close_notify.
            self._send_close_notify(records)
            self._finish(DtlsState.CLOSED, Closed("close_notify received", False))
        elif level == 2:  # fatal (RFC 5246 §7.2.2)
            name = _ALERTS.get(description, str(description))
            self._finish(DtlsState.FAILED, Closed(f"fatal alert received: {name}", True))

    def _send_close_notify(self, records: RecordLayer) -> None:
        with contextlib.suppress(DtlsError):  # sequence numbers exhausted: nothing to say
            self._out.append(records.protect(ALERT, _CLOSE_NOTIFY))

    # -- OpenSSL (the handshake; the whole association for a non-AEAD suite) --------------

    def _drain(self) -> list[bytes]:
        """Move what OpenSSL wrote into :attr:`_out`, noting the last epoch-1 sequence
        number it used; returns the records moved."""
        conn = self._conn
        if conn is None:
            return []
        out = bytearray()
        while True:
            try:
                out += conn.bio_read(65536)
            except SSL.Error:  # WantReadError: the BIO is empty
                break
        if not out:
            return []
        records = _split_records(bytes(out))
        for record in records:
            if record[3:5] == b"\x00\x01" and len(record) >= _RECORD_HEADER:
                seq = int.from_bytes(record[5:11])
                if seq >= self._next_write_seq:
                    self._next_write_seq = seq + 1
        self._out += records
        return records

    def _set_aside_application_data(self, data: bytes) -> bytes:
        """``data`` without its epoch-1 application records, which wait in :attr:`_pending`
        until the handshake completes (see the class docstring: the replay window)."""
        pos, n = 0, len(data)
        kept: list[bytes] = []
        moved = False
        while pos + _RECORD_HEADER <= n:
            end = pos + _RECORD_HEADER + ((data[pos + 11] << 8) | data[pos + 12])
            if end > n:
                break
            if data[pos] == APPLICATION_DATA and data[pos + 3 : pos + 5] == b"\x00\x01":
                moved = True
                if len(self._pending) < self.MAX_HELD:
                    self._pending.append(data[pos:end])
            else:
                kept.append(data[pos:end])
            pos = end
        if not moved:
            return data
        kept.append(data[pos:])
        return b"".join(kept)

    def _feed(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        if not self._handshake_done:
            data = self._set_aside_application_data(data)
            # What OpenSSL writes from here on answers this datagram (the final flight).
            self._drain()
            if not data:
                return
        try:
            conn.bio_write(data)
        except SSL.Error:
            return
        self._drive()

    def _drive(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if not self._handshake_done:
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                return
            except SSL.Error as exc:
                self._fatal(self._verify_error or _ssl_reason(exc))
                return
            self._complete_handshake(conn)
            return
        self._read_application_data(conn)

    def _complete_handshake(self, conn: SSL.Connection) -> None:
        self._handshake_done = True
        peer = conn.get_peer_certificate(as_cryptography=True)
        der = b"" if peer is None else peer.public_bytes(Encoding.DER)
        # The verify callback already checked; this guards against a path that skipped it.
        if not der or not _matches(der, self._remote):
            self._shutdown()
            self._fatal("the peer certificate does not match the SDP fingerprint")
            return
        self._peer_der = der
        name = conn.get_selected_srtp_profile().decode("ascii", "replace")
        profile = PROFILES.get(name)
        if profile is None:
            keying_material = b""
        else:
            keying_material = conn.export_keying_material(
                _EXPORTER_LABEL, profile.keying_material_length
            )
        self.state = DtlsState.CONNECTED
        self._deadline = None
        self._retransmit_at = None
        self._events.append(
            HandshakeComplete(
                profile.name if profile else None,
                keying_material,
                not self.is_server,
                _hex_fingerprint(der, "sha-256"),
            )
        )
        records = self._take_over(conn)
        early, self._early = self._early, []
        for data in early:
            if self.state is not DtlsState.CONNECTED:
                break
            self.send(data)
        pending, self._pending = self._pending, []
        if records is not None:
            for record in pending:
                if self.state is not DtlsState.CONNECTED:
                    break
                self._receive_records(records, record)
        elif self.state is DtlsState.CONNECTED:
            if pending:
                with contextlib.suppress(SSL.Error):
                    conn.bio_write(b"".join(pending))
            self._read_application_data(conn)

    def _take_over(self, conn: SSL.Connection) -> RecordLayer | None:
        """Our record layer for the negotiated suite, with OpenSSL freed; None (OpenSSL
        stays) for a suite :mod:`~trio_sfu.proto.dtls_record` does not protect."""
        if conn.get_protocol_version() != _DTLS1_2_VERSION:
            return None  # a DTLS 1.3 handshake (an OpenSSL that has it) has other records
        master = conn.master_key()
        client_random = conn.client_random()
        server_random = conn.server_random()
        cipher = conn.get_cipher_name()
        if not (master and client_random and server_random and cipher):
            return None
        flight = self._drain()  # the records answering the peer's Finished, if any
        records = record_layer(
            cipher, master, client_random, server_random,
            is_client=not self.is_server, write_seq=self._next_write_seq,
        )  # fmt: skip
        if records is None:
            return None
        if self.is_server and flight:
            self._final_flight = b"".join(flight)
        self._records = records
        self._conn = None  # frees OpenSSL's connection (and its ~93 KiB)
        return records

    def _read_application_data(self, conn: SSL.Connection) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                # RFC 5246 §7.2.1: answer close_notify with close_notify.
                self._shutdown()
                self._finish(DtlsState.CLOSED, Closed("close_notify received", False))
                return
            except SSL.Error as exc:  # a fatal alert from the peer, or a fatal local error
                self._fatal(_ssl_reason(exc))
                return
            if data:
                self._events.append(ApplicationData(data))

    def _write(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.send(data)
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self._fatal(_ssl_reason(exc))

    def _shutdown(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()

    def _update_timer(self, now: float) -> None:
        self._now = now
        conn = self._conn
        left = (
            conn.DTLSv1_get_timeout()
            if self.state is DtlsState.CONNECTING and conn is not None
            else None
        )
        self._retransmit_at = None if left is None else now + left

    def _fatal(self, reason: str) -> None:
        # Whatever alert OpenSSL generated is already in the BIO for datagrams_to_send().
        self._finish(DtlsState.FAILED, Closed(reason, True))

    def _finish(self, state: DtlsState, event: Closed) -> None:
        self.state = state
        self._retransmit_at = None
        self._deadline = None
        self._held.clear()
        self._early.clear()
        self._pending.clear()
        self._events.append(event)
