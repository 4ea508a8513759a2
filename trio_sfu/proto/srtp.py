"""SRTP/SRTCP for one peer (RFC 3711, RFC 7714 AES-GCM) over pylibsrtp, keyed by DTLS-SRTP.

This is the per-packet path, so it is deliberately thin: one libsrtp session per direction,
no per-packet Python beyond a method call and a ``try`` (free on the happy path in CPython
3.11). Packets must be ``bytes``: pylibsrtp refuses ``bytearray``/``memoryview``, so a
rewrite done in a preallocated ``bytearray`` is frozen with ``bytes(buf[:n])`` first.

* Outbound allows any SSRC (the SFU sends many streams to one subscriber) and repeated
  sequence numbers (``allow_repeat_tx``: NACK answers resend a packet as it was).
* Inbound allows any SSRC with libsrtp's replay window (128 packets, per SSRC): a replayed
  or too-old packet is refused like a forged one.
"""

from __future__ import annotations

from typing import Final

import pylibsrtp
from pylibsrtp import ERRORS, SRTP_MAX_TRAILER_LEN, Policy, Session
from pylibsrtp._binding import ffi, lib

from trio_sfu.proto.errors import SrtpError

__all__ = ["PROFILES", "SrtpContext", "SrtpProfile"]


class SrtpProfile:
    """A DTLS-SRTP protection profile: its name in OpenSSL/RFC 5764 terms, libsrtp's id and
    the master key/salt lengths that split the exported keying material."""

    __slots__ = ("key_length", "libsrtp_profile", "name", "salt_length")

    def __init__(self, name: str, libsrtp_profile: int, key_length: int, salt_length: int):
        self.name = name
        self.libsrtp_profile = libsrtp_profile
        self.key_length = key_length
        self.salt_length = salt_length

    @property
    def keying_material_length(self) -> int:
        """RFC 5764 §4.2: two keys and two salts."""
        return 2 * (self.key_length + self.salt_length)


PROFILES: Final[dict[str, SrtpProfile]] = {
    # RFC 5764 §4.1.2: 128-bit key, 112-bit salt.
    "SRTP_AES128_CM_SHA1_80": SrtpProfile(
        "SRTP_AES128_CM_SHA1_80", Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14
    ),
    # RFC 7714 §12: 128-bit key, 96-bit salt.
    "SRTP_AEAD_AES_128_GCM": SrtpProfile(
        "SRTP_AEAD_AES_128_GCM", Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12
    ),
}


#: The largest datagram the stack handles (the UDP readers use the same size). pylibsrtp
#: works in a 1500-byte buffer and reserves the largest trailer in it, so out of the box it
#: refuses RTP above 1356 bytes — and GStreamer's default MTU is 1400: its keyframes' first
#: packets were dropped. The buffer is pylibsrtp's own attribute, read on every call.
MAX_DATAGRAM: Final = 4096


def _reason(status: int) -> str:
    """libsrtp's name for a status code, as pylibsrtp words it ("replay check failed", …)."""
    return ERRORS[status] if 0 <= status < len(ERRORS) else f"libsrtp status {status}"


#: One work buffer for every SRTP call of the process (libsrtp protects and unprotects in
#: place). Every call is synchronous and the result is copied out or sent before the next
#: one, on the one thread that runs Trio, so sharing is safe — and saves pylibsrtp's two
#: buffers per peer (≈ 8 KB each peer at MAX_DATAGRAM, issue 10's memory per idle peer).
_WORK: Final = ffi.new("char[]", MAX_DATAGRAM + SRTP_MAX_TRAILER_LEN)
_WORK_BUFFER: Final = ffi.buffer(_WORK)
_WORK_VIEW: Final = memoryview(_WORK_BUFFER)
_LENGTH: Final = ffi.new("int *")
#: The same cell as a memoryview of one C int: its item is set and read without cffi's
#: conversions (about half the cost of ``_LENGTH[0]``, twice per packet).
_LENGTH_VIEW: Final = memoryview(ffi.buffer(_LENGTH)).cast("i")
#: libsrtp's calls taken once: ``lib.srtp_protect`` is an attribute lookup on every use.
_PROTECT: Final = lib.srtp_protect
_UNPROTECT: Final = lib.srtp_unprotect


def _session(profile: SrtpProfile, key_and_salt: bytes, *, outbound: bool) -> Session:
    policy = Policy(
        key=key_and_salt,
        ssrc_type=Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND,
        srtp_profile=profile.libsrtp_profile,
    )
    if outbound:
        policy.allow_repeat_tx = True
    session = Session(policy)
    session._cdata = _WORK
    session._buffer = _WORK_BUFFER
    return session


class SrtpContext:
    """One peer's SRTP state: an outbound session (protect) and an inbound one (unprotect).

    ``unprotect_*`` raise :class:`SrtpError` on authentication failure, replay or garbage; the
    driver drops the packet and counts it. ``protect_*`` raise :class:`SrtpError` only for a
    packet libsrtp cannot process (shorter than a header, longer than its 1500-byte buffer,
    or a sequence number outside the replay window of what was already sent).
    """

    __slots__ = ("_rx", "_rx_ctx", "_tx", "_tx_ctx", "profile")

    def __init__(self, profile: str, tx_key: bytes, rx_key: bytes) -> None:
        """``tx_key``/``rx_key`` are master key || master salt for each direction."""
        spec = PROFILES.get(profile)
        if spec is None:
            raise SrtpError(f"unsupported SRTP profile {profile!r}")
        try:
            self._tx = _session(spec, tx_key, outbound=True)
            self._rx = _session(spec, rx_key, outbound=False)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"cannot create SRTP sessions: {exc}") from None
        self.profile = profile
        # The per-packet calls go straight to libsrtp (see protect_rtp_as / unprotect_rtp).
        self._tx_ctx = self._tx._srtp[0]
        self._rx_ctx = self._rx._srtp[0]

    @classmethod
    def from_dtls(cls, profile: str, keying_material: bytes, *, is_client: bool) -> SrtpContext:
        """Split ``EXTRACTOR-dtls_srtp`` output per RFC 5764 §4.2:
        client key | server key | client salt | server salt. The client sends with the
        client's key and salt and receives with the server's; the server the other way."""
        spec = PROFILES.get(profile)
        if spec is None:
            raise SrtpError(f"unsupported SRTP profile {profile!r}")
        k, s = spec.key_length, spec.salt_length
        if len(keying_material) != 2 * (k + s):
            raise SrtpError(
                f"{profile} needs {2 * (k + s)} bytes of keying material,"
                f" got {len(keying_material)}"
            )
        client = keying_material[:k] + keying_material[2 * k : 2 * k + s]
        server = keying_material[k : 2 * k] + keying_material[2 * k + s :]
        if is_client:
            return cls(profile, client, server)
        return cls(profile, server, client)

    def protect_rtp(self, packet: bytes) -> bytes:
        try:
            return self._tx.protect(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTP protect failed: {exc}") from None

    def protect_rtp_as(
        self, packet: bytes, ssrc: int, twcc_offset: int, twcc_seq: int
    ) -> memoryview:
        """Protect ``packet`` sent under ``ssrc``, with ``twcc_seq`` written at byte
        ``twcc_offset`` when that is not negative; returns a view valid until the next call.

        The forwarding fan-out (issue 10): a group of subscribers shares one rewritten packet,
        and what differs per subscriber — its SSRC and its transport-wide sequence number
        (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2) — is patched in while the
        packet is copied into libsrtp's buffer, which protects in place (RFC 3711 §3.3). No
        object is made per call but the returned slice; pylibsrtp's ``protect`` would copy
        twice and allocate a length cell. The view is into the process's one SRTP work
        buffer: send or copy it before the next SRTP call.
        """
        n = len(packet)
        if n < 12 or n > MAX_DATAGRAM:
            raise SrtpError("SRTP protect failed: bad packet length")
        out = _WORK_VIEW
        out[:n] = packet
        # byte by byte: six item stores cost less than two ``Struct.pack_into`` method calls
        out[8] = ssrc >> 24
        out[9] = (ssrc >> 16) & 0xFF
        out[10] = (ssrc >> 8) & 0xFF
        out[11] = ssrc & 0xFF
        if twcc_offset >= 0:
            out[twcc_offset] = twcc_seq >> 8
            out[twcc_offset + 1] = twcc_seq & 0xFF
        length = _LENGTH_VIEW
        length[0] = n
        status = _PROTECT(self._tx_ctx, _WORK, _LENGTH)
        if status:
            raise SrtpError(f"SRTP protect failed: {_reason(status)}")
        return out[: length[0]]

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """The plain RTP packet; straight on libsrtp with a preallocated length cell (the
        per-packet ingress path, issue 10), one copy in and one out."""
        n = len(packet)
        if n > MAX_DATAGRAM:
            raise SrtpError("SRTP unprotect failed: packet too long")
        buffer = _WORK_BUFFER
        buffer[0:n] = packet
        length = _LENGTH_VIEW
        length[0] = n
        status = _UNPROTECT(self._rx_ctx, _WORK, _LENGTH)
        if status:
            raise SrtpError(f"SRTP unprotect failed: {_reason(status)}")
        return buffer[0 : length[0]]  # type: ignore[no-any-return]

    def protect_rtcp(self, packet: bytes) -> bytes:
        try:
            return self._tx.protect_rtcp(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTCP protect failed: {exc}") from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        try:
            return self._rx.unprotect_rtcp(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"SRTCP unprotect failed: {exc}") from None
