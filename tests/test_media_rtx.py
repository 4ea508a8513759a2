"""RTX (RFC 4588) wrap/unwrap, ``RtpRewriter.rewrite_as`` and the whole NACK answer path."""

from __future__ import annotations

import pytest
from aiortc import rtp as aiortc_rtp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from trio_sfu.proto.rtcp import Nack
from trio_sfu.proto.rtp import RtpPacket, RtpRewriter, TransportCcSequencer, parse_rtp
from trio_sfu.sfu.feedback import PacketCache, rtx_unwrap, rtx_wrap

PUB_SSRC = 0x11223344
SUB_SSRC = 0xCAFEBABE
RTX_SSRC = 0x0BADF00D
URI_ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def make(
    seq: int,
    ts: int = 90000,
    *,
    ssrc: int = PUB_SSRC,
    pt: int = 96,
    marker: bool = False,
    extensions: dict[int, bytes] | None = None,
    payload: bytes = b"payload",
    padding: int = 0,
    csrcs: list[int] | None = None,
) -> bytes:
    return RtpPacket(
        pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, marker, csrcs or [],
        extensions or {}, payload, padding,
    ).serialize()


# --- rtx_wrap / rtx_unwrap -----------------------------------------------------------------


def test_rtx_wrap_exact_bytes() -> None:
    # RFC 4588 §4: header as the original but SSRC/PT/seq of the RTX stream; payload = OSN +
    # original payload. Original: M=1 PT=96 seq 0x1234 ts 0xdeadbeef one-byte ext id 1.
    original = bytes.fromhex("90e01234deadbeef11223344" "bede0001" "10ff0000" "abcdef")
    rtx = rtx_wrap(original, RTX_SSRC, 97, 0x0007)
    assert rtx == bytes.fromhex(
        "90e10007deadbeef0badf00d" "bede0001" "10ff0000" "1234" "abcdef"
    )
    assert rtx_unwrap(rtx, PUB_SSRC, 96) == (0x1234, original)


def test_rtx_padding_is_not_payload() -> None:
    original = make(500, payload=b"\x01\x02\x03", padding=5)
    rtx = rtx_wrap(original, RTX_SSRC, 97, 1)
    assert rtx is not None
    p = parse_rtp(rtx)
    assert p.padding == 0 and p.payload == b"\x01\xf4\x01\x02\x03"
    # The rebuilt original has the payload back, without the padding it never needed.
    assert rtx_unwrap(rtx, PUB_SSRC, 96) == (500, make(500, payload=b"\x01\x02\x03"))
    # An RTX packet that is itself padded (a sender may pad it) unwraps the same.
    padded_rtx = make(1, ssrc=RTX_SSRC, pt=97, payload=b"\x01\xf4\x01\x02\x03", padding=8)
    assert rtx_unwrap(padded_rtx, PUB_SSRC, 96) == (500, make(500, payload=b"\x01\x02\x03"))


def test_rtx_unwrap_ignores_probes_and_garbage() -> None:
    # Browsers probe bandwidth with padding-only packets on the RTX SSRC: no OSN, no repair.
    probe = make(9, ssrc=RTX_SSRC, pt=97, payload=b"", padding=200)
    assert rtx_unwrap(probe, PUB_SSRC, 96) is None
    assert rtx_unwrap(make(9, ssrc=RTX_SSRC, pt=97, payload=b"\x01"), PUB_SSRC, 96) is None
    bad_padding = bytes.fromhex("a06000010000000000000001" "010209")  # counts 9 of 3 bytes
    for bad in (b"", b"\x80" * 11, b"\x40" + bytes(13), bad_padding):
        assert rtx_unwrap(bad, PUB_SSRC, 96) is None
        assert rtx_wrap(bad, RTX_SSRC, 97, 1) is None
    # Extension length running past the end.
    assert rtx_wrap(bytes.fromhex("90600001000000000000000" "1" "bede00ff"), 1, 97, 1) is None


def test_rtx_keeps_csrcs_extensions_marker_and_wraps_sequences() -> None:
    original = make(
        0xFFFF, 0xFFFFFFFF, marker=True, csrcs=[7, 8],
        extensions={3: b"\x00\x09", 20: b"two-byte form"}, payload=b"x" * 30,
    )
    rtx = rtx_wrap(original, RTX_SSRC, 97, 0x10000)  # seq wraps to 0
    assert rtx is not None
    p = parse_rtp(rtx)
    assert (p.sequence_number, p.ssrc, p.payload_type, p.marker) == (0, RTX_SSRC, 97, True)
    assert p.csrcs == [7, 8] and p.timestamp == 0xFFFFFFFF
    assert p.extensions == {3: b"\x00\x09", 20: b"two-byte form"}
    assert p.payload == b"\xff\xff" + b"x" * 30
    assert rtx_unwrap(rtx, PUB_SSRC, 96) == (0xFFFF, original)


def _aiortc_map() -> aiortc_rtp.HeaderExtensionsMap:
    ext_map = aiortc_rtp.HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=2, uri=URI_ABS),
                RTCRtpHeaderExtensionParameters(id=3, uri=URI_TWCC),
            ]
        )
    )
    return ext_map


@pytest.mark.parametrize("seq", [0, 1, 0x7FFF, 0xFFFF])
@pytest.mark.parametrize("padding", [0, 4])
def test_rtx_matches_aiortc(seq: int, padding: int) -> None:
    ext_map = _aiortc_map()
    theirs = aiortc_rtp.RtpPacket(
        payload_type=96, marker=1, sequence_number=seq, timestamp=123456, ssrc=PUB_SSRC,
        payload=bytes(range(100)),
    )
    theirs.padding_size = padding
    theirs.csrc = [0x01020304]
    theirs.extensions.abs_send_time = 0x123456
    theirs.extensions.transport_sequence_number = 0x0A0B
    raw = theirs.serialize(ext_map)
    ours = rtx_wrap(raw, RTX_SSRC, 97, 4242)
    assert ours is not None
    expected = aiortc_rtp.wrap_rtx(
        aiortc_rtp.RtpPacket.parse(raw, ext_map), payload_type=97, sequence_number=4242,
        ssrc=RTX_SSRC,
    ).serialize(ext_map)
    assert ours == expected
    unwrapped = rtx_unwrap(ours, PUB_SSRC, 96)
    assert unwrapped is not None
    osn, rebuilt = unwrapped
    theirs_back = aiortc_rtp.unwrap_rtx(
        aiortc_rtp.RtpPacket.parse(ours, ext_map), payload_type=96, ssrc=PUB_SSRC
    )
    assert osn == seq == theirs_back.sequence_number
    assert rebuilt == theirs_back.serialize(ext_map)
    # Without padding the round trip restores the original byte for byte.
    if not padding:
        assert rebuilt == raw


# --- rewrite_as ----------------------------------------------------------------------------


def rewriter(**kw: object) -> RtpRewriter:
    args: dict[str, object] = {"initial_sequence": 65530, "initial_timestamp": 0xFFFFFF00}
    args.update(kw)
    return RtpRewriter(SUB_SSRC, {96: 100, 97: 101}, {2: 5}, **args)  # type: ignore[arg-type]


def video_stream(first: int, count: int) -> list[bytes]:
    return [
        make(
            first + i, 1000 + 3000 * (i // 3), marker=i % 3 == 2,
            extensions={2: b"\x01\x02\x03", 3: (i & 0xFFFF).to_bytes(2, "big"), 4: b"0"},
            payload=bytes([i & 0xFF]) * (50 + i), csrcs=[9] if i % 4 == 0 else None,
        )
        for i in range(count)
    ]


def test_rewrite_as_is_byte_identical_across_the_wrap() -> None:
    rw = rewriter()
    packets = video_stream(65533, 12)  # input and output both wrap
    outputs = [rw.rewrite(p) for p in packets]
    assert all(o is not None for o in outputs)
    state = (rw.last_sequence, rw.last_timestamp, rw.packets, rw.octets)
    # Retransmit in a scrambled order: each is exactly what rewrite produced.
    for i in (5, 0, 11, 3, 3, 7):
        out_seq = (65530 + i) & 0xFFFF
        assert rw.to_input_sequence(out_seq) == (65533 + i) & 0xFFFF
        assert rw.rewrite_as(packets[i], out_seq) == outputs[i]
    assert (rw.last_sequence, rw.last_timestamp, rw.packets, rw.octets) == state
    assert rw.retransmitted == 6 and rw.dropped == 0
    # The duplicate window is untouched: the originals are still duplicates, the next is new.
    assert rw.rewrite(packets[4]) is None
    nxt = rw.rewrite(video_stream(65533 + 12, 1)[0])
    assert nxt is not None and parse_rtp(nxt).sequence_number == (65530 + 12) & 0xFFFF


def test_rewrite_as_gets_a_fresh_transport_cc_number() -> None:
    twcc = TransportCcSequencer(ext_id=7, start=100)
    rw = rewriter(twcc=twcc)
    packets = video_stream(10, 4)
    outputs = [rw.rewrite(p) for p in packets]
    again = rw.rewrite_as(packets[1], rw.last_sequence - 2)
    assert again is not None and outputs[1] is not None
    first, second = parse_rtp(outputs[1]), parse_rtp(again)
    assert first.extensions.pop(7) == b"\x00\x65"
    assert second.extensions.pop(7) == b"\x00\x68"  # 100..103 went to the originals
    assert first == second
    assert twcc.next_seq == 105


def test_rewrite_as_refuses_what_it_cannot_map() -> None:
    rw = rewriter()
    assert rw.rewrite_as(make(1), 65530) is None  # nothing forwarded yet
    packets = video_stream(100, 3)
    for p in packets:
        rw.rewrite(p)
    assert rw.rewrite_as(packets[0], 65531) is None  # out_seq is another packet's
    assert rw.rewrite_as(make(100, ssrc=0x999), 65530) is None  # another SSRC
    assert rw.rewrite_as(make(100, pt=111), 65530) is None  # unmapped payload type
    assert rw.rewrite_as(packets[0][:20], 65530) is None  # truncated header extension
    # After a source switch the old source's packets cannot be retransmitted any more.
    rw.switch_source(0.1, ssrc=0x77)
    rw.rewrite(make(5000, ssrc=0x77))
    assert rw.to_input_sequence(65530) is None
    assert rw.rewrite_as(packets[0], 65530) is None
    assert rw.rewrite_as(make(5000, ssrc=0x77), (65530 + 3) & 0xFFFF) is not None


# --- the whole NACK answer path --------------------------------------------------------------


def test_subscriber_nack_answered_from_cache_with_rtx() -> None:
    """Publisher packets → cache + rewriter; the subscriber NACKs; the SFU answers with RTX."""
    cache = PacketCache(capacity=64)
    rw = rewriter()
    packets = video_stream(65500, 60)
    sent = {}
    for p in packets:
        cache.put(p)
        out = rw.rewrite(p)
        assert out is not None
        sent[parse_rtp(out).sequence_number] = out
    # The subscriber lost three packets around its own wrap and NACKs them (RFC 4585).
    lost = [65534, 65535, 3]
    nack = Nack.from_lost(0x5, SUB_SSRC, lost)
    repaired = {}
    for rtx_seq, out_seq in enumerate(nack.lost):
        in_seq = rw.to_input_sequence(out_seq)
        assert in_seq is not None
        cached = cache.get(in_seq)
        assert cached is not None
        again = rw.rewrite_as(cached, out_seq)
        assert again is not None
        rtx = rtx_wrap(again, RTX_SSRC, 101, rtx_seq)
        assert rtx is not None
        # What the subscriber's RTX receiver rebuilds is exactly the packet it missed.
        back = rtx_unwrap(rtx, SUB_SSRC, 100)
        assert back is not None
        repaired[back[0]] = back[1]
    assert repaired == {s: sent[s] for s in lost}
