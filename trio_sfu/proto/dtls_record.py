"""The DTLS 1.2 record layer after the handshake, for AEAD cipher suites (RFC 6347 §4.1).

Why our own: once the handshake is done a WebRTC DTLS association only carries SCTP packets
and alerts (the SRTP keys are exported at that point, RFC 5764 §4.2), yet an OpenSSL
connection object keeps ~93 KiB per peer (handshake state, certificates, buffers, the
session) for the life of the association — most of an idle subscriber's memory (issue 10).
:class:`~trio_sfu.proto.dtls.DtlsTransport` therefore lets OpenSSL do the handshake, derives
the epoch-1 record keys from its master secret and frees it; this module is that record
layer: a few hundred bytes per peer, one AEAD call per record.

Supported suites, the ones WebRTC stacks negotiate (Chromium, Firefox, aiortc, GStreamer,
libdatachannel and werift all offer ECDHE with AES-GCM first, and our server picks its own
order): AES-128/256-GCM (RFC 5288: 4-byte implicit salt from the key block + 8-byte explicit
nonce carried in the record) and ChaCha20-Poly1305 (RFC 7905 §2: 12-byte IV XOR the
sequence number, no explicit nonce). Anything else (a CBC suite) keeps OpenSSL's record layer:
:func:`record_layer` returns None.

Keys, RFC 5246 §6.3: ``key_block = PRF(master_secret, "key expansion", server_random +
client_random)``, split into client/server MAC keys (empty for AEAD), client/server write keys
and client/server IVs; the PRF is P_SHA256, or the suite's hash for SHA-384 suites (RFC 5246
§5, RFC 5288 §3).
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from trio_sfu.proto.errors import DtlsError

__all__ = [
    "ALERT",
    "APPLICATION_DATA",
    "HANDSHAKE",
    "SUITES",
    "AeadSuite",
    "RecordLayer",
    "prf",
    "record_layer",
]

# RFC 5246 §6.2.1 content types
CHANGE_CIPHER_SPEC: Final = 20
ALERT: Final = 21
HANDSHAKE: Final = 22
APPLICATION_DATA: Final = 23

_VERSION: Final = 0xFEFD  # DTLS 1.2 (RFC 6347 §4.1)
_EPOCH: Final = 1  # the only epoch after a handshake: no renegotiation, no resumption
_EPOCH_BITS: Final = _EPOCH << 48
_SEQ_MASK: Final = (1 << 48) - 1
_WINDOW: Final = 64  # RFC 6347 §4.1.2.6: a window of at least 32 MUST, 64 preferred
_WINDOW_MASK: Final = (1 << _WINDOW) - 1
#: type, version, epoch << 48 | sequence number, length (RFC 6347 §4.1)
_HEADER: Final = struct.Struct("!BHQH")
HEADER_SIZE: Final = _HEADER.size
#: RFC 5246 §6.2.3.3: additional_data = seq_num + type + version + length, where DTLS's
#: seq_num is epoch || sequence_number (RFC 6347 §4.1.2.1)
_AAD: Final = struct.Struct("!QBHH")
_TAG: Final = 16


@dataclass(frozen=True, slots=True)
class AeadSuite:
    key_length: int
    iv_length: int  # 4: the RFC 5288 implicit salt; 12: the RFC 7905 IV
    prf_hash: str  # hashlib name of the PRF hash (RFC 5246 §5)
    chacha: bool = False


#: OpenSSL's cipher names (``SSL_get_cipher_name``) of the suites this layer protects.
SUITES: Final[dict[str, AeadSuite]] = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": AeadSuite(16, 4, "sha256"),
    "ECDHE-RSA-AES128-GCM-SHA256": AeadSuite(16, 4, "sha256"),
    "ECDHE-ECDSA-AES256-GCM-SHA384": AeadSuite(32, 4, "sha384"),
    "ECDHE-RSA-AES256-GCM-SHA384": AeadSuite(32, 4, "sha384"),
    "ECDHE-ECDSA-CHACHA20-POLY1305": AeadSuite(32, 12, "sha256", chacha=True),
    "ECDHE-RSA-CHACHA20-POLY1305": AeadSuite(32, 12, "sha256", chacha=True),
}


def prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """TLS 1.2 PRF = P_hash(secret, label + seed) (RFC 5246 §5)."""
    seed = label + seed
    out = bytearray()
    a = seed  # A(0)
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)  # A(i) = HMAC_hash(secret, A(i-1))
        out += hmac.digest(secret, a + seed, hash_name)
    return bytes(out[:length])


class RecordLayer:
    """Epoch-1 record protection for one association, in both directions.

    ``write_seq`` is the next sequence number we send: OpenSSL already sent our Finished
    (and perhaps retransmissions of it) in epoch 1, so the caller continues after the last
    epoch-1 record OpenSSL wrote (RFC 6347 §4.1: a sequence number is never reused within
    an epoch, or AES-GCM would reuse a nonce).

    Receiving applies the RFC 6347 §4.1.2.6 sliding window (64 records, updated only after
    the record authenticated) and discards, without a word, anything that does not
    authenticate (RFC 6347 §4.1.2.7).
    """

    __slots__ = ("_read", "_read_iv", "_write", "_write_iv", "chacha", "overhead",
                 "rx_mask", "rx_top", "write_seq")  # fmt: skip

    def __init__(
        self,
        suite: AeadSuite,
        write_key: bytes,
        write_iv: bytes,
        read_key: bytes,
        read_iv: bytes,
        *,
        write_seq: int,
    ) -> None:
        aead = ChaCha20Poly1305 if suite.chacha else AESGCM
        self._write: AESGCM | ChaCha20Poly1305 = aead(write_key)
        self._read: AESGCM | ChaCha20Poly1305 = aead(read_key)
        self._write_iv = write_iv
        self._read_iv = read_iv
        self.chacha = suite.chacha
        #: bytes a record adds to its plaintext besides the header: explicit nonce + tag
        self.overhead = _TAG if suite.chacha else 8 + _TAG
        self.write_seq = write_seq
        self.rx_top = -1  # the highest sequence number received (none yet)
        self.rx_mask = 0  # bit i: rx_top - i was received (RFC 6347 §4.1.2.6)

    def protect(self, content_type: int, plaintext: bytes) -> bytes:
        """One epoch-1 record (header included) holding ``plaintext``."""
        seq = self.write_seq
        if seq > _SEQ_MASK:
            # 2^48 records; RFC 6347 §4.1 would need a rehandshake, which WebRTC never does.
            raise DtlsError("DTLS sequence numbers exhausted")
        self.write_seq = seq + 1
        seq_num = _EPOCH_BITS | seq
        aad = _AAD.pack(seq_num, content_type, _VERSION, len(plaintext))
        if self.chacha:  # RFC 7905 §2: the IV XOR the padded 64-bit seq_num
            nonce = (int.from_bytes(self._write_iv) ^ seq_num).to_bytes(12)
            body = self._write.encrypt(nonce, plaintext, aad)
        else:  # RFC 5288 §3: salt + explicit nonce; the explicit nonce is the seq_num
            explicit = seq_num.to_bytes(8)
            body = explicit + self._write.encrypt(self._write_iv + explicit, plaintext, aad)
        return _HEADER.pack(content_type, _VERSION, seq_num, len(body)) + body

    def unprotect(self, data: bytes, pos: int, end: int) -> bytes | None:
        """The plaintext of the epoch-1 record ``data[pos:end]``, or None when it is a
        replay, too old for the window, or does not authenticate."""
        content_type, version, seq_num, _ = _HEADER.unpack_from(data, pos)
        if seq_num >> 48 != _EPOCH or version != _VERSION:
            return None
        seq = seq_num & _SEQ_MASK
        top = self.rx_top
        if seq <= top:
            behind = top - seq
            if behind >= _WINDOW or (self.rx_mask >> behind) & 1:
                return None  # RFC 6347 §4.1.2.6: duplicate or left of the window
        start = pos + HEADER_SIZE
        length = end - start - self.overhead
        if length < 0:
            return None
        aad = _AAD.pack(seq_num, content_type, version, length)
        try:
            if self.chacha:
                nonce = (int.from_bytes(self._read_iv) ^ seq_num).to_bytes(12)
                plaintext = self._read.decrypt(nonce, data[start:end], aad)
            else:
                nonce = self._read_iv + data[start : start + 8]
                plaintext = self._read.decrypt(nonce, data[start + 8 : end], aad)
        except InvalidTag:
            return None
        # RFC 6347 §4.1.2.6: the window moves only for a record that authenticated.
        if seq > top:
            self.rx_mask = ((self.rx_mask << (seq - top)) | 1) & _WINDOW_MASK
            self.rx_top = seq
        else:
            self.rx_mask |= 1 << (top - seq)
        return plaintext


def record_layer(
    cipher: str,
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    *,
    is_client: bool,
    write_seq: int,
) -> RecordLayer | None:
    """The record layer for a negotiated ``cipher`` (OpenSSL's name), or None when the suite
    is not one of :data:`SUITES` (the caller keeps OpenSSL then)."""
    suite = SUITES.get(cipher)
    if suite is None:
        return None
    k, i = suite.key_length, suite.iv_length
    # RFC 5246 §6.3; AEAD suites have no MAC keys (RFC 5246 §6.2.3.3).
    block = prf(master_secret, b"key expansion", server_random + client_random,
                2 * (k + i), suite.prf_hash)  # fmt: skip
    client_key, server_key = block[:k], block[k : 2 * k]
    client_iv, server_iv = block[2 * k : 2 * k + i], block[2 * k + i :]
    if is_client:
        return RecordLayer(suite, client_key, client_iv, server_key, server_iv,
                           write_seq=write_seq)  # fmt: skip
    return RecordLayer(suite, server_key, server_iv, client_key, client_iv,
                       write_seq=write_seq)  # fmt: skip
