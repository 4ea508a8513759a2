"""One error family for everything a remote peer can send us.

Parsers raise only subclasses of :class:`ProtocolError`, so a driver can drop a bad datagram
with a single ``except ProtocolError`` and count it, and the fuzz suites can assert that nothing
else ever escapes.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Input from the network (or a signaling peer) that we refuse."""


class SdpError(ProtocolError):
    """Malformed or unacceptable SDP; the message names the line and the problem."""

    def __init__(self, message: str, line_number: int | None = None, line: str | None = None):
        self.reason = message
        self.line_number = line_number
        self.line = line
        if line_number is not None:
            shown = line if line is None or len(line) <= 80 else line[:77] + "..."
            message = f"line {line_number} ({shown!r}): {message}"
        super().__init__(message)


class StunError(ProtocolError):
    """A datagram that is not a valid STUN message."""


class DtlsError(ProtocolError):
    """A DTLS record or handshake we cannot accept (includes fingerprint mismatch)."""


class SrtpError(ProtocolError):
    """An SRTP/SRTCP packet that failed authentication, replay checks or decoding."""


class RtpError(ProtocolError):
    """A malformed RTP packet."""


class RtcpError(ProtocolError):
    """A malformed RTCP packet."""


class SctpError(ProtocolError):
    """A malformed SCTP packet or chunk."""


class DcepError(ProtocolError):
    """A malformed Data Channel Establishment Protocol message."""
