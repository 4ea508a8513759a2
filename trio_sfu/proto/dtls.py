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
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

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

# RFC 8122 §5 hash function names (as they appear in a=fingerprint) we can check.
_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}
_DTLS1_2_VERSION: Final = 0xFEFD
_RECORD_HEADER: Final = 13  # RFC 6347 §4.1: type, version, epoch, sequence_number, length
_MAX_RECORD_PLAINTEXT: Final = 16384  # RFC 5246 §6.2.1
# ECDHE only (forward secrecy), ECDSA first as browsers and we use P-256 certificates.
_CIPHERS: Final = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"
)
_EXPORTER_LABEL: Final = b"EXTRACTOR-dtls_srtp"  # RFC 5764 §4.2


def _hex_fingerprint(cert: x509.Certificate, algorithm: str) -> str:
    algo = _HASHES.get(algorithm.lower())
    if algo is None:
        raise DtlsError(f"unsupported fingerprint algorithm {algorithm!r}")
    return cert.fingerprint(algo()).hex(":").upper()


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
        return _hex_fingerprint(self.cert, algorithm)

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
            ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
            # After the handshake a connection only carries SCTP: let OpenSSL free its record
            # buffers while idle instead of keeping ~34 KB per peer (issue 10: memory per
            # idle peer).
            ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
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
    * Garbage never raises: OpenSSL discards undecryptable or malformed records in DTLS
      (RFC 6347 §4.1.2.7) and anything it does raise becomes a :class:`Closed` event. Only
      local misuse raises :class:`DtlsError`.
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
        self._conn = SSL.Connection(certificate._context(is_server, tuple(srtp_profiles)), None)
        self._conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        self._conn.set_ciphertext_mtu(mtu)
        if is_server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self._verify_error: str | None = None
        self._handshake_done = False
        self._held: list[bytes] = []
        self._early: list[bytes] = []
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
            peer = self._conn.get_peer_certificate(as_cryptography=True)
            if peer is None or not self._matches(peer, fingerprints):
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

    def _matches(self, cert: x509.Certificate, fingerprints: list[tuple[str, str]]) -> bool:
        for algorithm, value in fingerprints:
            if algorithm in _HASHES and _hex_fingerprint(cert, algorithm) == value:
                return True
        return False

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        """OpenSSL's verify callback: self-signed is fine, only the leaf's fingerprint counts
        (RFC 5763 §5: the SDP fingerprint is the trust anchor). Must never raise: pyOpenSSL
        would re-raise the exception from whatever call was running."""
        if depth != 0:
            return True
        try:
            if self._matches(cert.to_cryptography(), self._remote):
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
    def cleartext_mtu(self) -> int:
        """The largest application payload that still fits one ``mtu``-sized datagram with
        the negotiated cipher (size SCTP packets by this once connected)."""
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
            self._write(data)
        elif self.state in (DtlsState.NEW, DtlsState.CONNECTING) and (
            len(self._early) < self.MAX_EARLY
        ):
            self._early.append(bytes(data))

    def datagrams_to_send(self) -> list[bytes]:
        out = bytearray()
        while True:
            try:
                out += self._conn.bio_read(65536)
            except SSL.Error:  # WantReadError: the BIO is empty
                break
        if not out:
            return []
        datagrams: list[bytes] = []
        current = b""
        for record in _split_records(bytes(out)):
            if current and len(current) + len(record) > self.mtu:
                datagrams.append(current)
                current = b""
            current += record
        if current:
            datagrams.append(current)
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
        if self.state is not DtlsState.CONNECTING:
            self._retransmit_at = None
            self._deadline = None
            return
        if self._deadline is not None and now >= self._deadline:
            self._fatal("DTLS handshake timed out")
            return
        try:
            self._conn.DTLSv1_handle_timeout()
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
            self._shutdown()
        # Before the handshake completes OpenSSL refuses to send close_notify; the peer's
        # handshake will time out.
        self._finish(DtlsState.CLOSED, Closed("closed locally", False))

    def next_event(self) -> DtlsEvent | None:
        return self._events.pop(0) if self._events else None

    # -- internals ------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        try:
            self._conn.bio_write(data)
        except SSL.Error:
            return
        self._drive()

    def _drive(self) -> None:
        if not self._handshake_done:
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                return
            except SSL.Error as exc:
                self._fatal(self._verify_error or _ssl_reason(exc))
                return
            if not self._complete_handshake():
                return
        self._read_application_data()

    def _complete_handshake(self) -> bool:
        self._handshake_done = True
        peer = self._conn.get_peer_certificate(as_cryptography=True)
        # The verify callback already checked; this guards against a path that skipped it.
        if peer is None or not self._matches(peer, self._remote):
            self._shutdown()
            self._fatal("the peer certificate does not match the SDP fingerprint")
            return False
        name = self._conn.get_selected_srtp_profile().decode("ascii", "replace")
        profile = PROFILES.get(name)
        if profile is None:
            keying_material = b""
        else:
            keying_material = self._conn.export_keying_material(
                _EXPORTER_LABEL, profile.keying_material_length
            )
        self.state = DtlsState.CONNECTED
        self._deadline = None
        self._events.append(
            HandshakeComplete(
                profile.name if profile else None,
                keying_material,
                not self.is_server,
                _hex_fingerprint(peer, "sha-256"),
            )
        )
        early, self._early = self._early, []
        for data in early:
            if self.state is not DtlsState.CONNECTED:
                break
            self._write(data)
        return self.state is DtlsState.CONNECTED

    def _read_application_data(self) -> None:
        while True:
            try:
                data = self._conn.recv(65536)
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
        try:
            self._conn.send(data)
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self._fatal(_ssl_reason(exc))

    def _shutdown(self) -> None:
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()

    def _update_timer(self, now: float) -> None:
        self._now = now
        left = self._conn.DTLSv1_get_timeout() if self.state is DtlsState.CONNECTING else None
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
        self._events.append(event)
