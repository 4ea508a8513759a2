"""SRTP: a client/server pair keyed from the same DTLS material, both profiles."""

from __future__ import annotations

import os
import struct

import pytest
from aiortc.rtcdtlstransport import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80
from pylibsrtp import Policy, Session

from trio_sfu.proto.errors import SrtpError
from trio_sfu.proto.srtp import MAX_DATAGRAM, PROFILES, SrtpContext

GCM = "SRTP_AEAD_AES_128_GCM"
CM = "SRTP_AES128_CM_SHA1_80"
BOTH = [GCM, CM]
# Authentication tag sizes: HMAC-SHA1-80 is 10 bytes, AES-GCM 16 (RFC 3711, RFC 7714).
TAG = {CM: 10, GCM: 16}


def rtp(seq: int, ssrc: int = 0x11223344, payload: bytes = b"\xab" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, ssrc) + payload


def rtcp_sr(ssrc: int = 0x11223344) -> bytes:
    # A minimal sender report: V=2, PT=200, length 6 words.
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)


def pair(profile: str, material: bytes | None = None) -> tuple[SrtpContext, SrtpContext]:
    if material is None:
        material = os.urandom(PROFILES[profile].keying_material_length)
    client = SrtpContext.from_dtls(profile, material, is_client=True)
    server = SrtpContext.from_dtls(profile, material, is_client=False)
    return client, server


@pytest.mark.parametrize("profile", BOTH)
def test_round_trip_both_ways(profile: str) -> None:
    client, server = pair(profile)
    for seq in range(1, 50):
        packet = rtp(seq)
        protected = client.protect_rtp(packet)
        assert len(protected) == len(packet) + TAG[profile]
        assert protected[:12] == packet[:12]  # the header stays in the clear...
        assert protected[12:172] != packet[12:]  # ...the payload does not
        assert server.unprotect_rtp(protected) == packet
        back = server.protect_rtp(rtp(seq, ssrc=0x55667788))
        assert client.unprotect_rtp(back) == rtp(seq, ssrc=0x55667788)
    report = rtcp_sr()
    protected = client.protect_rtcp(report)
    assert len(protected) == len(report) + 4 + TAG[profile]  # SRTCP index + tag
    assert server.unprotect_rtcp(protected) == report
    assert client.unprotect_rtcp(server.protect_rtcp(rtcp_sr(7))) == rtcp_sr(7)


@pytest.mark.parametrize("profile", BOTH)
def test_key_split_follows_rfc5764(profile: str) -> None:
    """client key | server key | client salt | server salt, checked with plain pylibsrtp
    sessions keyed by hand."""
    spec = PROFILES[profile]
    k, s = spec.key_length, spec.salt_length
    material = bytes(range(1, 2 * (k + s) + 1))
    client_key_salt = material[:k] + material[2 * k : 2 * k + s]
    server_key_salt = material[k : 2 * k] + material[2 * k + s :]
    client, server = pair(profile, material)

    def session(key: bytes, ssrc_type: int) -> Session:
        return Session(Policy(key=key, ssrc_type=ssrc_type, srtp_profile=spec.libsrtp_profile))

    by_hand_rx_from_client = session(client_key_salt, Policy.SSRC_ANY_INBOUND)
    by_hand_rx_from_server = session(server_key_salt, Policy.SSRC_ANY_INBOUND)
    assert by_hand_rx_from_client.unprotect(client.protect_rtp(rtp(1))) == rtp(1)
    assert by_hand_rx_from_server.unprotect(server.protect_rtp(rtp(1))) == rtp(1)


@pytest.mark.parametrize(("aiortc_profile", "profile"), [(SRTP_AEAD_AES_128_GCM, GCM),
                                                        (SRTP_AES128_CM_SHA1_80, CM)])
def test_key_split_matches_aiortc(aiortc_profile: object, profile: str) -> None:
    material = os.urandom(PROFILES[profile].keying_material_length)
    client_key = aiortc_profile.get_key_and_salt(material, 0)  # type: ignore[attr-defined]
    server_key = aiortc_profile.get_key_and_salt(material, 1)  # type: ignore[attr-defined]
    as_aiortc_client = SrtpContext(profile, client_key, server_key)
    ours = SrtpContext.from_dtls(profile, material, is_client=False)
    assert ours.unprotect_rtp(as_aiortc_client.protect_rtp(rtp(9))) == rtp(9)
    assert as_aiortc_client.unprotect_rtp(ours.protect_rtp(rtp(9))) == rtp(9)


@pytest.mark.parametrize("profile", BOTH)
def test_tampered_replayed_and_wrong_key_packets_raise(profile: str) -> None:
    client, server = pair(profile)
    protected = client.protect_rtp(rtp(1))
    for i in (2, 20, len(protected) - 1):  # header, payload, tag
        tampered = bytearray(protected)
        tampered[i] ^= 0x01
        with pytest.raises(SrtpError):
            server.unprotect_rtp(bytes(tampered))
    assert server.unprotect_rtp(protected) == rtp(1)
    with pytest.raises(SrtpError, match="replay"):
        server.unprotect_rtp(protected)
    stranger, _ = pair(profile)
    with pytest.raises(SrtpError):
        server.unprotect_rtp(stranger.protect_rtp(rtp(2)))
    report = client.protect_rtcp(rtcp_sr())
    with pytest.raises(SrtpError):
        server.unprotect_rtcp(report[:-1] + bytes([report[-1] ^ 1]))
    assert server.unprotect_rtcp(report) == rtcp_sr()
    with pytest.raises(SrtpError):
        server.unprotect_rtcp(report)  # SRTCP replay
    for garbage in (b"", b"\x80", os.urandom(11), os.urandom(3000)):
        with pytest.raises(SrtpError):
            server.unprotect_rtp(garbage)
        with pytest.raises(SrtpError):
            server.unprotect_rtcp(garbage)
    # The session still works after all that.
    assert server.unprotect_rtp(client.protect_rtp(rtp(3))) == rtp(3)


@pytest.mark.parametrize("profile", BOTH)
def test_replay_window(profile: str) -> None:
    client, server = pair(profile)
    packets = {seq: client.protect_rtp(rtp(seq)) for seq in range(1, 301)}
    assert server.unprotect_rtp(packets[300]) == rtp(300)
    assert server.unprotect_rtp(packets[250]) == rtp(250)  # late but inside the window
    with pytest.raises(SrtpError):
        server.unprotect_rtp(packets[100])  # older than the 128-packet window


@pytest.mark.parametrize("profile", BOTH)
def test_many_ssrcs_on_one_session(profile: str) -> None:
    sfu, subscriber = pair(profile)
    ssrcs = [0x1000 + i * 7919 for i in range(300)]
    for seq in range(1, 4):
        for ssrc in ssrcs:
            assert subscriber.unprotect_rtp(sfu.protect_rtp(rtp(seq, ssrc))) == rtp(seq, ssrc)


@pytest.mark.parametrize("profile", BOTH)
def test_resending_a_packet_is_allowed_outbound(profile: str) -> None:
    """A NACK answer re-protects a packet already sent; the receiver, having lost the first
    copy, accepts the second."""
    client, server = pair(profile)
    first = client.protect_rtp(rtp(5))
    again = client.protect_rtp(rtp(5))
    assert first == again
    assert server.unprotect_rtp(again) == rtp(5)


def test_bad_parameters() -> None:
    with pytest.raises(SrtpError):
        SrtpContext.from_dtls("SRTP_NULL_NULL", b"", is_client=True)
    with pytest.raises(SrtpError):
        SrtpContext.from_dtls(GCM, os.urandom(10), is_client=True)
    with pytest.raises(SrtpError):
        SrtpContext(CM, b"short", b"short")
    client, _ = pair(GCM)
    with pytest.raises(SrtpError):
        client.protect_rtp(b"\x80\x60")  # shorter than an RTP header
    with pytest.raises(SrtpError):
        client.protect_rtp(rtp(1, payload=b"x" * MAX_DATAGRAM))  # beyond our buffer


@pytest.mark.parametrize("profile", [GCM, CM])
@pytest.mark.parametrize("size", [1356, 1400, 1500, MAX_DATAGRAM - 16])
def test_large_packets_are_protected(profile: str, size: int) -> None:
    """GStreamer sends 1400-byte RTP by default; pylibsrtp alone refuses above 1356 bytes."""
    client, server = pair(profile)
    packet = rtp(1, payload=b"y" * (size - 12))
    assert len(packet) == size
    assert server.unprotect_rtp(client.protect_rtp(packet)) == packet


@pytest.mark.parametrize("profile", BOTH)
def test_protect_as_patches_ssrc_and_transport_sequence(profile: str) -> None:
    """Issue 10: a forwarding group's packet protected as one subscriber's stream — its SSRC
    and transport-cc number written in on the way into libsrtp; the input is not modified."""
    client, server = pair(profile)
    # X=1, one-byte form: id 5 (transport-cc), 2 bytes at offset 17, one byte of padding.
    packet = bytes.fromhex("9060000700000064000000c8" "bede0001" "51" "0000" "00") + b"\x77" * 300
    original = bytes(packet)
    for n, ssrc in enumerate((0x0A0B0C0D, 0x01020304)):
        view = server.protect_rtp_as(packet, ssrc, 17, 4000 + n)
        plain = client.unprotect_rtp(bytes(view))
        assert plain[8:12] == ssrc.to_bytes(4, "big")
        assert plain[17:19] == (4000 + n).to_bytes(2, "big")
        assert plain[:8] == packet[:8] and plain[19:] == packet[19:]
    assert packet == original
    # Without a transport-cc offset only the SSRC changes.
    view = server.protect_rtp_as(rtp(9), 0x99, -1, 0)
    assert client.unprotect_rtp(bytes(view)) == rtp(9, ssrc=0x99)
    with pytest.raises(SrtpError):
        server.protect_rtp_as(b"\x80" * 11, 1, -1, 0)
    with pytest.raises(SrtpError):
        server.protect_rtp_as(rtp(10, payload=bytes(MAX_DATAGRAM)), 1, -1, 0)
