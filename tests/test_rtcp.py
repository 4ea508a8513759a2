"""RTCP parsing/serialization against hand-computed RFC vectors and aiortc's implementation."""

from __future__ import annotations

from typing import Any

import pytest
from aiortc import rtp as aiortc_rtp

from trio_sfu.proto.errors import RtcpError
from trio_sfu.proto.rtcp import (
    REMB_MAX_BITRATE,
    Bye,
    Fir,
    FirEntry,
    Nack,
    PacketStatus,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    Sdes,
    SdesChunk,
    SenderReport,
    TransportCcFeedback,
    UnknownRtcp,
    compact_ntp,
    ntp_time,
    parse_rtcp,
    retarget_feedback,
    round_trip_time,
    seconds_to_compact,
    serialize_compound,
)


def aiortc_parse(raw: bytes) -> list[Any]:
    """aiortc's independent RTCP parser, loosely typed for attribute checks."""
    return list(aiortc_rtp.RtcpPacket.parse(raw))


# RFC 3550 §6.4.1: V=2 RC=1 PT=200 length=12 | SSRC | NTP msw, lsw | RTP ts | packets | octets
# | report block: SSRC | fraction 0x40, cumulative lost -1 | highest seq | jitter | LSR | DLSR
SR = bytes.fromhex(
    "81c8000c" "01020304" "e1e2e3e4" "00008000" "00001000" "0000000a" "00000100"
    "0a0b0c0d" "40ffffff" "00010005" "00000020" "11223344" "00010000"
)
SR_OBJ = SenderReport(
    ssrc=0x01020304, ntp_msw=0xE1E2E3E4, ntp_lsw=0x8000, rtp_timestamp=0x1000,
    packet_count=10, octet_count=256,
    reports=[ReportBlock(0x0A0B0C0D, 0x40, -1, 0x10005, 0x20, 0x11223344, 0x10000)],
)
# RFC 3550 §6.5: one chunk, CNAME "ab" (01 02 61 62), then a null octet padded to 32 bits.
SDES = bytes.fromhex("81ca0003" "01020304" "01026162" "00000000")
# RFC 3550 §6.6: one SSRC and the reason "bye" (length 3).
BYE = bytes.fromhex("81cb0002" "01020304" "03627965")
# RFC 4585 §6.3.1 PLI (PSFB, FMT=1): sender SSRC, media SSRC, no FCI.
PLI = bytes.fromhex("81ce0002" "00000001" "0000abcd")
# RFC 5104 §4.3.1.1 FIR (PSFB, FMT=4): media SSRC 0, FCI = target SSRC, seq nr 5, reserved.
FIR = bytes.fromhex("84ce0004" "00000001" "00000000" "0000abcd" "05000000")
# RFC 4585 §6.2.1 generic NACK across the wrap: PID 65535 BLP 0b11 (0, 1), then PID 17.
NACK = bytes.fromhex("81cd0004" "00000001" "0000abcd" "ffff0003" "00110000")
# draft-alvestrand-rmcat-remb-03: 1 Mbit/s = mantissa 250000 (0x3d090) << exponent 2.
REMB = bytes.fromhex("8fce0005" "00000001" "00000000" "52454d42" "010bd090" "0a0b0c0d")


def test_sender_report_vector() -> None:
    assert parse_rtcp(SR) == [SR_OBJ]
    assert SR_OBJ.serialize() == SR
    assert SR_OBJ.compact_ntp == 0xE3E40000


def test_receiver_report_round_trip() -> None:
    rr = ReceiverReport(5, [ReportBlock(6, 255, 0x7FFFFF, 0xFFFFFFFF, 1, 2, 3)])
    raw = rr.serialize()
    assert raw[:4] == bytes.fromhex("81c90007")
    assert parse_rtcp(raw) == [rr]
    empty = ReceiverReport(5)
    assert empty.serialize() == bytes.fromhex("80c9000100000005")


def test_packets_lost_saturates() -> None:
    raw = ReportBlock(1, packets_lost=-(1 << 30)).serialize()
    assert raw[4:8] == bytes.fromhex("00800000")
    assert ReportBlock.parse(raw, 0).packets_lost == -(1 << 23)


def test_sdes_and_bye_vectors() -> None:
    assert Sdes.cname_for(0x01020304, "ab").serialize() == SDES
    (sdes,) = parse_rtcp(SDES)
    assert isinstance(sdes, Sdes) and sdes.chunks[0].cname == "ab"
    assert Bye([0x01020304], b"bye").serialize() == BYE
    assert parse_rtcp(BYE) == [Bye([0x01020304], b"bye")]
    assert parse_rtcp(Bye([1, 2]).serialize()) == [Bye([1, 2], None)]


def test_sdes_item_filling_a_word_gets_a_full_null_word() -> None:
    # Items end on a 32-bit boundary, so a whole word of nulls terminates the chunk.
    raw = Sdes([SdesChunk(7, [(1, b"abcdef")])]).serialize()
    assert raw == bytes.fromhex("81ca0004" "00000007" "0106616263646566" "00000000")
    multi = Sdes([SdesChunk(7, [(1, b"a"), (6, b"tool")]), SdesChunk(8)])
    assert parse_rtcp(multi.serialize()) == [multi]


def test_compound_sr_sdes_bye() -> None:
    raw = SR + SDES + BYE
    packets = parse_rtcp(raw)
    assert packets == [SR_OBJ, Sdes.cname_for(0x01020304, "ab"), Bye([0x01020304], b"bye")]
    assert serialize_compound(packets) == raw
    # aiortc's independent parser reads the same compound the same way.
    theirs = aiortc_parse(raw)
    assert isinstance(theirs[0], aiortc_rtp.RtcpSrPacket)
    assert theirs[0].ssrc == 0x01020304
    assert theirs[0].sender_info.ntp_timestamp == (0xE1E2E3E4 << 32) | 0x8000
    assert theirs[0].sender_info.rtp_timestamp == 0x1000
    assert (theirs[0].sender_info.packet_count, theirs[0].sender_info.octet_count) == (10, 256)
    block = theirs[0].reports[0]
    assert (block.ssrc, block.fraction_lost, block.packets_lost) == (0x0A0B0C0D, 0x40, -1)
    assert (block.highest_sequence, block.jitter, block.lsr, block.dlsr) == (
        0x10005, 0x20, 0x11223344, 0x10000,
    )
    assert theirs[1].chunks[0].items == [(1, b"ab")]
    assert theirs[2].sources == [0x01020304]


def test_aiortc_serialized_packets_parse() -> None:
    sr = aiortc_rtp.RtcpSrPacket(
        ssrc=9,
        sender_info=aiortc_rtp.RtcpSenderInfo(
            ntp_timestamp=(5 << 32) | 6, rtp_timestamp=7, packet_count=8, octet_count=9
        ),
        reports=[
            aiortc_rtp.RtcpReceiverInfo(
                ssrc=1, fraction_lost=2, packets_lost=-3, highest_sequence=4, jitter=5,
                lsr=6, dlsr=7,
            )
        ],
    )
    sdes = aiortc_rtp.RtcpSdesPacket(
        chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=9, items=[(1, b"{cname}")])]
    )
    nack = aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=9, media_ssrc=10, lost=[100, 101, 117, 200])
    pli = aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=9, media_ssrc=10)
    remb = aiortc_rtp.RtcpPsfbPacket(
        fmt=15, ssrc=9, media_ssrc=0, fci=aiortc_rtp.pack_remb_fci(4_000_000, [10, 11])
    )
    bye = aiortc_rtp.RtcpByePacket(sources=[9])
    raw = b"".join(bytes(p) for p in (sr, sdes, nack, pli, remb, bye))
    ours = parse_rtcp(raw)
    assert ours[0] == SenderReport(9, 5, 6, 7, 8, 9, [ReportBlock(1, 2, -3, 4, 5, 6, 7)])
    assert ours[1] == Sdes([SdesChunk(9, [(1, b"{cname}")])])
    assert isinstance(ours[2], Nack) and ours[2].lost == [100, 101, 117, 200]
    assert ours[3] == Pli(9, 10)
    assert ours[4] == Remb(9, 4_000_000, [10, 11])
    assert ours[5] == Bye([9])


def test_reduced_size_single_pli() -> None:
    # RFC 5506: a lone feedback packet with no report first.
    assert parse_rtcp(PLI) == [Pli(1, 0xABCD)]
    assert Pli(1, 0xABCD).serialize() == PLI
    (theirs,) = aiortc_parse(PLI)
    assert (theirs.fmt, theirs.ssrc, theirs.media_ssrc) == (1, 1, 0xABCD)


def test_fir_vector() -> None:
    fir = Fir(1, [FirEntry(0xABCD, 5)])
    assert fir.serialize() == FIR
    assert parse_rtcp(FIR) == [fir]
    (theirs,) = aiortc_parse(FIR)
    assert (theirs.fmt, theirs.ssrc, theirs.fci) == (4, 1, bytes.fromhex("0000abcd05000000"))


def test_nack_wraparound_both_ways() -> None:
    nack = Nack.from_lost(1, 0xABCD, [65535, 0, 1, 17])
    assert nack.pairs == [(65535, 0b11), (17, 0)]
    assert nack.serialize() == NACK
    assert parse_rtcp(NACK) == [nack]
    assert nack.lost == [65535, 0, 1, 17]
    (theirs,) = aiortc_parse(NACK)
    assert [s & 0xFFFF for s in theirs.lost] == [65535, 0, 1, 17]


def test_nack_from_lost_packs_and_dedupes() -> None:
    nack = Nack.from_lost(1, 2, [5, 3, 3, 4, 20, 19, 36])
    assert nack.pairs == [(3, 0b1000000000000011), (20, 0b1000000000000000)]
    assert sorted(nack.lost) == [3, 4, 5, 19, 20, 36]
    wrapped = Nack.from_lost(1, 2, [65530 + i for i in range(6)] + list(range(12)))
    assert wrapped.pairs == [(65530, 0xFFFF), (11, 0)]
    assert Nack.from_lost(1, 2, []).pairs == []


def test_remb_vector_and_aiortc() -> None:
    remb = Remb(1, 1_000_000, [0x0A0B0C0D])
    assert remb.serialize() == REMB
    assert parse_rtcp(REMB) == [remb]
    (theirs,) = aiortc_parse(REMB)
    assert aiortc_rtp.unpack_remb_fci(theirs.fci) == (1_000_000, [0x0A0B0C0D])


@pytest.mark.parametrize(
    ("bitrate", "exponent", "mantissa"),
    [
        (0, 0, 0),
        (1, 0, 1),
        ((1 << 18) - 1, 0, (1 << 18) - 1),
        (1 << 18, 1, 1 << 17),
        ((1 << 18) + 1, 1, 1 << 17),  # the lowest bit is lost
        (REMB_MAX_BITRATE, 63, (1 << 18) - 1),
        (REMB_MAX_BITRATE + 12345, 63, (1 << 18) - 1),  # saturates
    ],
)
def test_remb_exponent_mantissa_edges(bitrate: int, exponent: int, mantissa: int) -> None:
    raw = Remb(1, bitrate).serialize()
    assert raw[17] >> 2 == exponent
    assert ((raw[17] & 3) << 16) | (raw[18] << 8) | raw[19] == mantissa
    (back,) = parse_rtcp(raw)
    assert isinstance(back, Remb) and back.bitrate == mantissa << exponent
    if bitrate < (1 << 64):
        assert aiortc_rtp.unpack_remb_fci(raw[12:]) == (mantissa << exponent, [])


def test_remb_rejects_negative() -> None:
    with pytest.raises(ValueError):
        Remb(1, -1).serialize()


# draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1 vectors (RTPFB FMT=15).
# Run-length chunk: 20 packets received, small deltas of 1 tick; 38 bytes of body, so 2
# bytes of RTCP padding (P bit, count 2).
TWCC_RLE = bytes.fromhex(
    "af cd 000a" "00000001" "00000002" "000a 0014" "000000 00" "2014" + "01" * 20 + "0002"
)
# One-bit status vector: statuses 1,0,1,1,0,0,0,0,0,0,0,0,0,1 → 0b1_0_10110000000001.
# 22 bytes of body, so 2 bytes of padding.
TWCC_1BIT = bytes.fromhex(
    "af cd 0006" "00000001" "00000002" "0000 000e" "000001 07" "ac01" "04050607" "0002"
)
# Two-bit status vector with a large (250 ms) and a negative (-1 ms) delta, a loss, a 0 delta;
# reference time -2 (two's complement over 24 bits). 24 bytes of body: no padding.
TWCC_2BIT = bytes.fromhex(
    "8f cd 0006" "00000001" "00000002" "fffe 0005" "fffffe ff" "da10" "01 03e8 fffc 00"
)


def test_twcc_run_length_vector() -> None:
    fb = TransportCcFeedback(1, 2, 10, 0, 0, [(10 + i, True, 250) for i in range(20)])
    assert fb.serialize() == TWCC_RLE
    assert parse_rtcp(TWCC_RLE) == [fb]


def test_twcc_one_bit_vector() -> None:
    received = [1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    deltas = iter([1000, 1250, 1500, 1750])
    packets = [(i, bool(r), next(deltas) if r else None) for i, r in enumerate(received)]
    fb = TransportCcFeedback(1, 2, 0, 1, 7, packets)
    assert fb.serialize() == TWCC_1BIT
    assert parse_rtcp(TWCC_1BIT) == [fb]


def test_twcc_two_bit_vector_large_and_negative_deltas() -> None:
    packets = [
        (65534, True, 250),
        (65535, True, 250_000),
        (0, True, -1000),
        (1, False, None),
        (2, True, 0),
    ]
    fb = TransportCcFeedback(1, 2, 65534, -2, 255, packets)
    assert fb.serialize() == TWCC_2BIT
    assert parse_rtcp(TWCC_2BIT) == [fb]
    assert fb.arrival_times_us() == [
        (65534, -128000 + 250), (65535, -128000 + 250_250), (0, -128000 + 249_250),
        (1, None), (2, -128000 + 249_250),
    ]


def test_twcc_decodes_chunk_forms_we_do_not_emit() -> None:
    # Ten statuses: a two-bit vector 0b11_01_01_00_00_00_00_00 carrying only small deltas
    # (received, received, 5 lost), then a run of 8 lost clamped to the 3 still missing,
    # then the deltas and the draft's zero padding without the P bit.
    raw = bytes.fromhex(
        "8f cd 0006" "00000001" "00000002" "0064 000a" "000000 00" "d400" "0008" "0408" "0000"
    )
    (fb,) = parse_rtcp(raw)
    assert isinstance(fb, TransportCcFeedback)
    assert fb.packets == [(100, True, 1000), (101, True, 2000)] + [
        (seq, False, None) for seq in range(102, 110)
    ]
    # Re-encoding picks our own chunk forms but says the same thing.
    assert parse_rtcp(fb.serialize()) == [fb]


def test_twcc_long_runs_split_into_chunks() -> None:
    packets: list[PacketStatus] = [(i & 0xFFFF, False, None) for i in range(9000)]
    packets.append((9000, True, 500))
    fb = TransportCcFeedback(1, 2, 0, 0, 0, packets)
    raw = fb.serialize()
    assert raw[20:24] == bytes.fromhex("1fff 0329")  # 8191 lost, then 809 lost
    assert parse_rtcp(raw) == [fb]


@pytest.mark.parametrize(
    "packets",
    [
        [],
        [(5, True, None)],
        [(6, True, 0)],  # base is 5
        [(5, True, 250 * 40000)],  # beyond 16 signed bits of ticks
    ],
)
def test_twcc_serialize_rejects_inconsistent(packets: list[tuple[int, bool, int | None]]) -> None:
    with pytest.raises(ValueError):
        TransportCcFeedback(1, 2, 5, 0, 0, packets).serialize()


def test_unknown_types_kept() -> None:
    app = bytes.fromhex("81cc0003" "00000001" "6e616d65" "deadbeef")  # APP subtype 1 "name"
    xr = bytes.fromhex("80cf0002" "00000001" "04000000")
    afb = bytes.fromhex("8fce0003" "00000001" "00000002" "41424344")  # AFB, not REMB
    tmmbr = bytes.fromhex("83cd0002" "00000001" "00000002")
    packets = parse_rtcp(app + xr + afb + tmmbr)
    assert packets == [
        UnknownRtcp(204, 1, bytes.fromhex("000000016e616d65deadbeef")),
        UnknownRtcp(207, 0, bytes.fromhex("0000000104000000")),
        UnknownRtcp(206, 15, bytes.fromhex("000000010000000241424344")),
        UnknownRtcp(205, 3, bytes.fromhex("0000000100000002")),
    ]
    assert serialize_compound(packets) == app + xr + afb + tmmbr


def test_padding_is_stripped_and_regenerated() -> None:
    padded = bytes.fromhex("a1ce0003" "00000001" "0000abcd" "00000004")
    assert parse_rtcp(padded) == [Pli(1, 0xABCD)]
    odd = UnknownRtcp(204, 0, b"abcde")
    raw = odd.serialize()
    assert raw == bytes.fromhex("a0cc0002") + b"abcde" + bytes.fromhex("000003")
    assert parse_rtcp(raw) == [odd]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x81\xc8\x00",
        bytes.fromhex("41c80000"),  # version 1
        bytes.fromhex("80600000"),  # RTP payload type, not RTCP
        bytes.fromhex("80c90002" "00000001"),  # length past the end
        SR[:-4] + bytes(0),  # truncated: length claims more
        bytes.fromhex("81c90001" "00000001"),  # RR claims one block, has none
        bytes.fromhex("81c80001" "00000001"),  # SR without sender info
        bytes.fromhex("81ca0001" "00000001"),  # SDES without terminator
        bytes.fromhex("81ca0002" "00000001" "01056162"),  # SDES item past the end
        bytes.fromhex("82cb0001" "00000001"),  # BYE with 2 SSRCs, one present
        bytes.fromhex("81cb0002" "00000001" "09627965"),  # BYE reason past the end
        bytes.fromhex("a1ce0003" "00000001" "0000abcd" "00000000"),  # padding count 0
        bytes.fromhex("a1ce0003" "00000001" "0000abcd" "000000ff"),  # padding too long
        bytes.fromhex("a0cc0000"),  # padding bit on an empty packet
        bytes.fromhex("81ce0001" "00000001"),  # PLI without media SSRC
        bytes.fromhex("84ce0003" "00000001" "00000000" "0000abcd"),  # FIR entry cut
        bytes.fromhex("a1cd0003" "00000001" "00000002" "00000002"),  # NACK FCI not words
        bytes.fromhex("8fce0004" "00000001" "00000000" "52454d42" ),  # REMB cut
        bytes.fromhex("8fce0005" "00000001" "00000000" "52454d42" "020bd090" "0a0b0c0d"),
        bytes.fromhex("8fcd0004" "00000001" "00000002" "00000000" "00000000"),  # 0 statuses
        bytes.fromhex("8fcd0004" "00000001" "00000002" "00000005" "00000000"),  # no chunks
        bytes.fromhex("8fcd0005" "00000001" "00000002" "00000003" "00000000" "20030000"),
        bytes.fromhex("8fcd0005" "00000001" "00000002" "00000001" "00000000" "60010000"),
        bytes.fromhex("8fcd0005" "00000001" "00000002" "00000001" "00000000" "f0000000"),
        SR + b"\x80",  # trailing garbage shorter than a header
    ],
)
def test_malformed_raises_rtcp_error(raw: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_rtcp(raw)


def test_ntp_helpers() -> None:
    assert ntp_time(0.0) == (2208988800, 0)
    assert ntp_time(1.5) == (2208988801, 0x80000000)
    assert ntp_time(1_700_000_000.25) == ((1_700_000_000 + 2208988800) & 0xFFFFFFFF, 1 << 30)
    assert compact_ntp(0x12345678, 0x9ABCDEF0) == 0x56789ABC
    assert seconds_to_compact(1.0) == 65536 and seconds_to_compact(-1) == 0
    # RFC 3550 §6.4.1 Figure 2: A=0xb710:8000 (46864.5 s), LSR=0xb705:2000, DLSR=0x0005:4000
    # (5.25 s) give an RTT of 0x0006:2000, 6.125 s.
    assert round_trip_time(0xB7108000, 0xB7052000, 0x00054000) == 6.125
    assert round_trip_time(0xB7108000, 0, 0) is None
    assert round_trip_time(0x1000, 0x2000, 0) is None


def test_retarget_feedback_towards_publisher() -> None:
    assert retarget_feedback(Pli(7, 100), sender_ssrc=1, media_ssrc=200) == Pli(1, 200)
    fir = retarget_feedback(Fir(7, [FirEntry(100, 9)]), sender_ssrc=1, media_ssrc=200)
    assert fir == Fir(1, [FirEntry(200, 9)], 0)
    nack = retarget_feedback(Nack(7, 100, [(5, 1)]), sender_ssrc=1, media_ssrc=200)
    assert nack == Nack(1, 200, [(5, 1)])
    remb = retarget_feedback(Remb(7, 5000, [100, 101]), sender_ssrc=1, media_ssrc=200)
    assert remb == Remb(1, 5000, [200])
    original = Pli(7, 100)
    retarget_feedback(original, sender_ssrc=1, media_ssrc=2)
    assert original == Pli(7, 100)  # a copy, not a mutation
