"""SDP model, parser and serializer against real browser SDP (tests/fixtures/sdp/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioice import Candidate

from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.sdp import (
    MAX_MEDIA_SECTIONS,
    Attribute,
    Bandwidth,
    Connection,
    Group,
    HeaderExtension,
    IceCandidate,
    MediaSection,
    MsidSemantic,
    Origin,
    Rid,
    RtpCodec,
    SessionDescription,
    Simulcast,
    SimulcastRid,
    SsrcAttribute,
    SsrcGroup,
    Timing,
    parse,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.sdp"))


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.sdp").read_bytes().decode()


# A Safari-shaped publisher offer (Safari 17/18 on macOS): H264 first (Constrained High, then
# Constrained Baseline), VP8 and VP9 after it, no AV1, RED/ulpfec, mDNS host candidates,
# Safari's extmap numbering, and an audio section with RED and telephone-event.
SAFARI_OFFER = """v=0
o=- 6447313312284402711 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1 2
a=extmap-allow-mixed
a=msid-semantic: WMS 5c8c1a3b-1b85-4bb8-9d3c-7a0e4b1f0a11
m=audio 62453 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 203.0.113.7
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:842163049 1 udp 1677729535 203.0.113.7 62453 typ srflx raddr 0.0.0.0 rport 0 generation 0 network-cost 999
a=candidate:3471623853 1 udp 2122260223 0b4b1cf2-6a9e-4bd4-8d56-0bb1e37e2e7c.local 62453 typ host generation 0 network-cost 999
a=ice-ufrag:Wz3c
a=ice-pwd:Vd8Hq8OT0sLx9EFlNcFt1hWL
a=ice-options:trickle
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:5c8c1a3b-1b85-4bb8-9d3c-7a0e4b1f0a11 0e6b3f9e-53a6-4c7b-9a39-4c62a5a2e9d0
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:1823477121 cname:mXyEq4tbOD7uS8mA
a=ssrc:1823477121 msid:5c8c1a3b-1b85-4bb8-9d3c-7a0e4b1f0a11 0e6b3f9e-53a6-4c7b-9a39-4c62a5a2e9d0
m=video 62453 UDP/TLS/RTP/SAVPF 96 97 98 99 100 101 127 125 104 105 106 107
c=IN IP4 203.0.113.7
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:842163049 1 udp 1677729535 203.0.113.7 62453 typ srflx raddr 0.0.0.0 rport 0 generation 0 network-cost 999
a=candidate:3471623853 1 udp 2122260223 0b4b1cf2-6a9e-4bd4-8d56-0bb1e37e2e7c.local 62453 typ host generation 0 network-cost 999
a=ice-ufrag:Wz3c
a=ice-pwd:Vd8Hq8OT0sLx9EFlNcFt1hWL
a=ice-options:trickle
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC
a=setup:actpass
a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:13 urn:3gpp:video-orientation
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay
a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type
a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing
a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:5c8c1a3b-1b85-4bb8-9d3c-7a0e4b1f0a11 7d1f2a8c-4b9e-4a51-8f0c-2b6e3d9a1c55
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 H264/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:98 H264/90000
a=rtcp-fb:98 goog-remb
a=rtcp-fb:98 transport-cc
a=rtcp-fb:98 ccm fir
a=rtcp-fb:98 nack
a=rtcp-fb:98 nack pli
a=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:99 rtx/90000
a=fmtp:99 apt=98
a=rtpmap:100 VP8/90000
a=rtcp-fb:100 goog-remb
a=rtcp-fb:100 transport-cc
a=rtcp-fb:100 ccm fir
a=rtcp-fb:100 nack
a=rtcp-fb:100 nack pli
a=rtpmap:101 rtx/90000
a=fmtp:101 apt=100
a=rtpmap:127 VP9/90000
a=rtcp-fb:127 goog-remb
a=rtcp-fb:127 transport-cc
a=rtcp-fb:127 ccm fir
a=rtcp-fb:127 nack
a=rtcp-fb:127 nack pli
a=fmtp:127 profile-id=0
a=rtpmap:125 rtx/90000
a=fmtp:125 apt=127
a=rtpmap:104 red/90000
a=rtpmap:105 rtx/90000
a=fmtp:105 apt=104
a=rtpmap:106 ulpfec/90000
a=rtpmap:107 H264/90000
a=fmtp:107 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f
a=ssrc-group:FID 2712426061 3519823301
a=ssrc:2712426061 cname:mXyEq4tbOD7uS8mA
a=ssrc:2712426061 msid:5c8c1a3b-1b85-4bb8-9d3c-7a0e4b1f0a11 7d1f2a8c-4b9e-4a51-8f0c-2b6e3d9a1c55
a=ssrc:3519823301 cname:mXyEq4tbOD7uS8mA
a=ssrc:3519823301 msid:5c8c1a3b-1b85-4bb8-9d3c-7a0e4b1f0a11 7d1f2a8c-4b9e-4a51-8f0c-2b6e3d9a1c55
m=application 62453 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 203.0.113.7
a=candidate:842163049 1 udp 1677729535 203.0.113.7 62453 typ srflx raddr 0.0.0.0 rport 0 generation 0 network-cost 999
a=candidate:3471623853 1 udp 2122260223 0b4b1cf2-6a9e-4bd4-8d56-0bb1e37e2e7c.local 62453 typ host generation 0 network-cost 999
a=ice-ufrag:Wz3c
a=ice-pwd:Vd8Hq8OT0sLx9EFlNcFt1hWL
a=ice-options:trickle
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC
a=setup:actpass
a=mid:2
a=sctp-port:5000
a=max-message-size:262144
"""  # noqa: E501  (real SDP lines are long)


# -- every fixture -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*FIXTURE_NAMES, "safari"])
def test_fixture_parses_and_round_trips(name: str) -> None:
    text = SAFARI_OFFER if name == "safari" else fixture(name)
    desc = parse(text)
    out = desc.serialize()
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    assert parse(out) == desc
    assert parse(out).serialize() == out  # the canonical form is a fixed point
    assert str(desc) == out
    # nothing dropped: every a= line of the original is in the output (modulo the space that
    # Chromium puts after "msid-semantic:")
    original = {line.replace("msid-semantic: ", "msid-semantic:") for line in text.splitlines()}
    written = set(out.split("\r\n"))
    missing = {line for line in original if line.startswith("a=") and line not in written}
    assert missing == set()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_lf_and_crlf_give_the_same_description(name: str) -> None:
    text = fixture(name)
    assert parse(text.replace("\r\n", "\n")) == parse(text)
    assert parse(text.encode()) == parse(text)


# -- Chromium specifics ------------------------------------------------------------------------


def test_chromium_publisher_offer_values() -> None:
    desc = parse(fixture("chromium-publisher-offer"))
    assert desc.origin == Origin("-", 8414626757886415547, 2, "IN", "IP4", "127.0.0.1")
    assert desc.name == "-" and desc.timing == Timing(0, 0)
    assert desc.groups == [Group("BUNDLE", ["0", "1", "2"])]
    assert desc.extmap_allow_mixed is True
    assert desc.msid_semantic == MsidSemantic("WMS", ["11443043-e15e-4c10-9fb3-b8b5d54e616d"])
    assert desc.fingerprints == [] and desc.ice_ufrag is None

    audio, video, data = desc.media
    assert (audio.kind, audio.port, audio.protocol) == ("audio", 32806, "UDP/TLS/RTP/SAVPF")
    assert audio.formats == ["111", "63", "9", "0", "8", "13", "110", "126"]
    assert audio.connection == Connection("IN", "IP4", "127.0.0.1")
    assert audio.rtcp == "9 IN IP4 0.0.0.0"
    assert audio.mid == "0" and audio.direction == "sendrecv"
    assert audio.rtcp_mux and audio.rtcp_rsize and not audio.rtcp_mux_only
    assert audio.ice_ufrag == "i52k" and audio.ice_pwd == "+i1grnzSsJK82KOTxGroggsi"
    assert audio.ice_options == ["trickle"] and audio.setup == "actpass"
    assert audio.fingerprints == [(
        "sha-256",
        "BA:FD:FC:5C:5F:16:7C:59:0E:AA:93:77:59:0F:6B:CB:4C:1E:78:0C:CF:03:17:FD:C6:01:AE:10:06:96:55:81",
    )]
    assert audio.codecs[0] == RtpCodec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1",
                                       ["transport-cc"])
    assert audio.codecs[1] == RtpCodec(63, "red", 48000, 2, "111/111", [])
    assert [c.payload_type for c in audio.codecs] == [111, 63, 9, 0, 8, 13, 110, 126]
    assert audio.extmaps[0] == HeaderExtension(1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level")
    assert audio.msid == [("11443043-e15e-4c10-9fb3-b8b5d54e616d",
                           "f65dd428-d51a-4a7c-940b-2e3e560518f2")]
    assert audio.attributes == [Attribute("rtcp-xr", "rcvr-rtt=all")]  # kept, unmodelled
    assert audio.ssrcs == [
        SsrcAttribute(3701275741, "cname", "VC4FSe7xZ6Fyj5MW"),
        SsrcAttribute(3701275741, "msid", "11443043-e15e-4c10-9fb3-b8b5d54e616d "
                                          "f65dd428-d51a-4a7c-940b-2e3e560518f2"),
    ]
    assert not audio.stopped and audio.is_rtp and not audio.is_datachannel

    host, *_, tcp6 = audio.candidates
    assert isinstance(host, Candidate)  # usable by the ICE agent as is
    assert (host.foundation, host.component, host.transport, host.priority) == (
        "2914414327", 1, "udp", 2122194687)
    assert (host.host, host.port, host.type, host.generation) == ("127.0.0.1", 32806, "host", 0)
    assert host.extensions == [("network-id", "3"), ("network-cost", "50")]
    assert (tcp6.transport, tcp6.host, tcp6.port, tcp6.tcptype) == ("tcp", "fd00::2", 9, "active")
    assert len(audio.candidates) == 8

    assert video.ssrc_groups == [SsrcGroup("FID", [2281557147, 2755931801])]
    h264 = video.codec(102)
    assert h264 is not None and h264.parameters == {
        "level-asymmetry-allowed": "1", "packetization-mode": "1", "profile-level-id": "42001f"}
    assert h264.rtcp_fb == ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    rtx = video.codec(97)
    assert rtx is not None and rtx.is_rtx and rtx.apt == 96
    assert len(video.codecs) == 23 and video.codec(120) == RtpCodec(120, "ulpfec", 90000)
    assert [e.id for e in video.extmaps] == [14, 2, 13, 3, 5, 6, 7, 8, 4, 10, 11]

    assert data.is_datachannel and data.formats == ["webrtc-datachannel"]
    assert (data.sctp_port, data.max_message_size, data.codecs) == (5000, 262144, [])


def test_chromium_simulcast_offer() -> None:
    video = parse(fixture("chromium-publisher-simulcast-offer")).media[1]
    assert video.direction == "sendonly"
    assert video.rids == [Rid("q", "send"), Rid("h", "send"), Rid("f", "send")]
    assert video.simulcast == Simulcast(
        send=[[SimulcastRid("q")], [SimulcastRid("h")], [SimulcastRid("f")]])
    assert video.ssrcs == [] and video.msid  # Chromium declares no SSRCs with rids
    assert video.extmaps[-2].uri.endswith("#dependency-descriptor-rtp-header-extension")


def test_chromium_renegotiation_offer_without_candidates() -> None:
    desc = parse(fixture("chromium-renegotiation-offer-by-peer"))
    assert [m.kind for m in desc.media] == ["application", "audio", "video", "audio", "video"]
    assert all(m.port == 9 and m.candidates == [] for m in desc.media[1:])
    assert [m.mid for m in desc.media] == ["0", "1", "2", "3", "4"]


# -- Firefox specifics -------------------------------------------------------------------------


def test_firefox_publisher_offer_values() -> None:
    desc = parse(fixture("firefox-publisher-offer"))
    assert desc.origin.username == "mozilla...THIS_IS_SDPARTA-99.0"
    assert desc.origin.address == "0.0.0.0" and desc.origin.session_version == 0
    assert desc.direction == "sendrecv"  # Firefox repeats a direction at session level
    assert desc.fingerprints == [(
        "sha-256",
        "1B:1A:FF:C7:50:B0:91:74:30:99:3B:94:F0:09:2E:F6:5D:72:16:9D:D2:5C:6C:7C:5B:C2:E9:78:33:2E:E2:0D",
    )]
    assert desc.ice_options == ["trickle"]
    assert desc.msid_semantic == MsidSemantic("WMS", ["*"])
    audio, video, data = desc.media
    assert audio.fingerprints == [] and desc.effective_fingerprints(audio) == desc.fingerprints
    assert desc.effective_ice_options(audio) == ["trickle"]
    assert desc.effective_setup(audio) == "actpass"
    assert audio.ice_ufrag == "a48eeefc" and desc.effective_ice_ufrag(audio) == "a48eeefc"
    assert audio.msid == [("{5dbceeb9-e3fc-48df-96a9-b33f0348bbf4}",
                           "{3808aefd-e184-44c0-9df0-fdc55ead94b5}")]
    assert audio.rtcp == "33424 IN IP4 192.0.2.2"
    assert audio.end_of_candidates and audio.extmap_allow_mixed
    assert [c.component for c in audio.candidates] == [1, 1, 1, 1, 2, 2, 2, 2]
    tcp = audio.candidates[2]
    assert (tcp.transport, tcp.port, tcp.tcptype, tcp.extensions) == ("TCP", 9, "active", [])
    assert [c.payload_type for c in audio.codecs] == [109, 9, 0, 8, 101]
    assert audio.codec(9) == RtpCodec(9, "G722", 8000, 1, None, ["transport-cc"])
    assert audio.codec(101) == RtpCodec(101, "telephone-event", 8000, None, "0-15", [])
    assert audio.extmaps[1] == HeaderExtension(
        2, "urn:ietf:params:rtp-hdrext:csrc-audio-level", "recvonly")
    assert audio.ssrcs == [SsrcAttribute(1227874275, "cname",
                                         "{21264c5c-8cf3-4349-8b2f-1e69cbcaee52}")]
    assert audio.attributes == []
    assert [c.name for c in video.codecs] == [
        "VP8", "rtx", "VP9", "rtx", "AV1", "rtx", "ulpfec", "red", "rtx"]
    assert video.codec(120) == RtpCodec(120, "VP8", 90000, None, "max-fs=12288;max-fr=60",
                                        ["nack", "nack pli", "ccm fir", "goog-remb",
                                         "transport-cc"])
    assert data.max_message_size == 1073741823 and data.direction == "sendrecv"


def test_firefox_simulcast_offer() -> None:
    video = parse(fixture("firefox-publisher-simulcast-offer")).media[1]
    assert [r.id for r in video.rids] == ["q", "h", "f"]
    assert video.simulcast is not None
    assert [[r.rid for r in alts] for alts in video.simulcast.send] == [["q"], ["h"], ["f"]]
    assert HeaderExtension(9, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
                           "sendonly") in video.extmaps
    assert [g.ssrcs for g in video.ssrc_groups] == [
        [3026541664, 143176418], [3661305923, 4037566094], [2665334644, 1459721621]]
    assert video.rtcp == "37249 IN IP4 192.0.2.2"


def test_firefox_answer_has_mixed_setup() -> None:
    desc = parse(fixture("firefox-subscriber-renegotiation-answer"))
    assert [m.setup for m in desc.media] == ["passive", "active", "active", "active", "active"]
    assert all(m.direction == "recvonly" for m in desc.media[1:])
    assert desc.media[1].port == 9 and desc.media[1].candidates == []


def test_safari_shape() -> None:
    desc = parse(SAFARI_OFFER)
    video = desc.media[1]
    assert video.codecs[0].name == "H264"
    assert video.codecs[0].parameters["profile-level-id"] == "640c1f"
    assert all(c.name != "AV1" for c in video.codecs)
    mdns = desc.media[0].candidates[1]
    assert mdns.host.endswith(".local") and mdns.extensions == [("network-cost", "999")]
    srflx = desc.media[0].candidates[0]
    assert (srflx.type, srflx.related_address, srflx.related_port) == ("srflx", "0.0.0.0", 0)


# -- details of the grammar --------------------------------------------------------------------

MINIMAL = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def test_formats_without_rtpmap_are_not_codecs() -> None:
    desc = parse(MINIMAL + "m=audio 9 RTP/AVP 0 8 96\r\na=rtpmap:8 PCMA/8000\r\n"
                 "a=fmtp:96 x=1\r\n")
    m = desc.media[0]
    assert m.formats == ["0", "8", "96"] and m.codecs == [RtpCodec(8, "PCMA", 8000)]
    # an fmtp for a payload type without rtpmap stays as an unknown attribute
    assert m.attributes == [Attribute("fmtp", "96 x=1")]
    assert parse(desc.serialize()) == desc


def test_rtpmap_for_unlisted_payload_type_is_kept_but_not_a_codec() -> None:
    desc = parse(MINIMAL + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
                 "a=rtpmap:100 VP9/90000\r\na=rtcp-fb:100 nack\r\na=rtcp-fb:* ccm fir\r\n")
    m = desc.media[0]
    assert m.codecs == [RtpCodec(96, "VP8", 90000)]
    assert m.attributes == [Attribute("rtpmap", "100 VP9/90000"), Attribute("rtcp-fb", "100 nack"),
                            Attribute("rtcp-fb", "* ccm fir")]
    assert parse(desc.serialize()) == desc


def test_simulcast_alternatives_paused_and_legacy_syntax() -> None:
    m = parse(MINIMAL + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
              "a=simulcast:recv 1,~2;3 send ~4\r\n").media[0]
    assert m.simulcast == Simulcast(
        send=[[SimulcastRid("4", True)]],
        recv=[[SimulcastRid("1"), SimulcastRid("2", True)], [SimulcastRid("3")]])
    assert m.simulcast.value() == "send ~4 recv 1,~2;3"
    legacy = parse(MINIMAL + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=simulcast:send rid=a;b\r\n")
    assert legacy.media[0].simulcast == Simulcast(send=[[SimulcastRid("a")], [SimulcastRid("b")]])


def test_rid_restrictions() -> None:
    m = parse(MINIMAL + "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"
              "a=rid:hi send pt=96,97;max-width=1280;max-height=720\r\n").media[0]
    assert m.rids[0].payload_types == [96, 97]
    assert m.rids[0].restrictions["max-width"] == "1280"


def test_unknown_lines_and_attributes_are_kept_in_order() -> None:
    text = (MINIMAL.replace("s=-\r\n", "s=-\r\ni=info\r\nu=http://x\r\n")
            + "a=x-session:1\r\na=x-flag\r\nb=AS:100\r\n"
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\ni=title\r\nc=IN IP4 0.0.0.0\r\nb=TIAS:500\r\n"
            "k=prompt\r\na=rtpmap:96 VP8/90000\r\na=x-b:2\r\na=x-a\r\na=rtcp-mux:weird\r\n")
    desc = parse(text)
    assert desc.extra_lines == [("i", "info"), ("u", "http://x")]
    assert desc.attributes == [Attribute("x-session", "1"), Attribute("x-flag")]
    assert desc.bandwidths == [Bandwidth("AS", 100)]
    m = desc.media[0]
    assert m.extra_lines == [("i", "title"), ("k", "prompt")]
    assert m.bandwidths == [Bandwidth("TIAS", 500)]
    assert m.attributes == [Attribute("x-b", "2"), Attribute("x-a"), Attribute("rtcp-mux", "weird")]
    assert not m.rtcp_mux  # a flag with a value is not the flag
    out = desc.serialize()
    assert "a=x-b:2\r\na=x-a\r\na=rtcp-mux:weird\r\n" in out
    assert out.index("i=title") < out.index("c=IN IP4 0.0.0.0") < out.index("k=prompt")
    assert parse(out) == desc


def test_bundle_only_is_not_stopped() -> None:
    m = parse(MINIMAL + "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=bundle-only\r\n").media[0]
    assert m.port == 0 and m.bundle_only and not m.stopped
    assert parse(MINIMAL + "m=video 0 UDP/TLS/RTP/SAVPF 96\r\n").media[0].stopped


def test_build_everything_round_trips() -> None:
    cand = IceCandidate("1", 1, "udp", 2130706431, "198.51.100.1", 3478, "srflx",
                        related_address="10.0.0.1", related_port=5000, generation=0,
                        extensions=[("ufrag", "abcd")])
    tcp = IceCandidate.from_candidate(
        Candidate("2", 1, "tcp", 1, "198.51.100.1", 9, "host", tcptype="passive"))
    media = MediaSection(
        kind="video", port=4000, protocol="UDP/TLS/RTP/SAVPF", port_count=2,
        connection=Connection("IN", "IP6", "::1"), bandwidths=[Bandwidth("AS", 300)],
        mid="v1", direction="sendonly", msid=[("s", "t"), ("s2", None)], rtcp_mux=True,
        rtcp_mux_only=True, rtcp_rsize=True, rtcp="4001 IN IP4 1.2.3.4", ice_ufrag="uf",
        ice_pwd="pw", ice_options=["trickle", "renomination"], fingerprints=[("sha-256", "AB")],
        setup="active", candidates=[cand, tcp], end_of_candidates=True, bundle_only=True,
        extmaps=[HeaderExtension(1, "urn:a"), HeaderExtension(4096, "urn:b", "sendonly", "x y")],
        extmap_allow_mixed=True,
        ssrcs=[SsrcAttribute(1, "cname", "c"), SsrcAttribute(2, "flag")],
        ssrc_groups=[SsrcGroup("FID", [1, 2])],
        rids=[Rid("a", "send", "max-fps=30"), Rid("b", "recv")],
        simulcast=Simulcast(send=[[SimulcastRid("a"), SimulcastRid("c", True)]],
                            recv=[[SimulcastRid("b")]]),
        attributes=[Attribute("x", "1"), Attribute("y")],
        extra_lines=[("i", "t"), ("k", "clear:x")],
    )
    media.set_codecs([RtpCodec(96, "VP8", 90000, None, None, ["nack", "nack pli"]),
                      RtpCodec(97, "rtx", 90000, None, "apt=96")])
    data = MediaSection("application", 9, "UDP/DTLS/SCTP", ["webrtc-datachannel"], mid="d",
                        sctp_port=5000, max_message_size=1024)
    desc = SessionDescription(
        origin=Origin("-", 99, 3), name="x", connection=Connection(), ice_lite=True,
        bandwidths=[Bandwidth("CT", 1)], extra_lines=[("e", "a@b"), ("r", "1 2 3")],
        groups=[Group("BUNDLE", ["v1", "d"]), Group("LS", [])], ice_ufrag="U", ice_pwd="P",
        ice_options=["ice2"], fingerprints=[("sha-1", "00"), ("sha-256", "11")], setup="actpass",
        direction="inactive", msid_semantic=MsidSemantic("WMS", ["*"]), extmap_allow_mixed=True,
        attributes=[Attribute("z", "9")], media=[media, data],
    )
    text = desc.serialize()
    assert parse(text) == desc
    assert "a=candidate:1 1 udp 2130706431 198.51.100.1 3478 typ srflx raddr 10.0.0.1 " \
           "rport 5000 generation 0 ufrag abcd\r\n" in text
    assert "m=video 4000/2 UDP/TLS/RTP/SAVPF 96 97\r\n" in text
    assert "a=extmap:4096/sendonly urn:b x y\r\n" in text
    assert "a=simulcast:send a,~c recv b\r\n" in text


# -- errors name the line and the problem ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line_number", "reason"),
    [
        ("o=- 1 1 IN IP4 1.1.1.1\n", 1, "SDP must start with v="),
        ("v=1\n", 1, "only SDP version 0 is supported"),
        ("v=0\nhello\n", 2, "line has no '='"),
        ("v=0\nab=c\n", 2, "type must be a single character followed by '='"),
        ("v=0\n1=c\n", 2, "type must be a letter"),
        ("v=0\no=- x 1 IN IP4 1.1.1.1\n", 2, "session id is not a number: 'x'"),
        ("v=0\no=- 1 1 IN IP4\n", 2, "o= needs 6 fields"),
        ("v=0\no=- 1 1 IN IP4 a\nv=0\n", 3, "duplicate or misplaced v= line"),
        (MINIMAL + "m=video 9 UDP/TLS/RTP/SAVPF\n", 5, "m= needs <media> <port> <proto> <fmt>..."),
        (MINIMAL + "m=video x UDP/TLS/RTP/SAVPF 96\n", 5, "port is not a number: 'x'"),
        (MINIMAL + "m=video 70000 RTP/AVP 96\n", 5, "port 70000 is out of range 0..65535"),
        (MINIMAL + "m=video 9 RTP/AVP 9x\n", 5, "payload type is not a number: '9x'"),
        (MINIMAL + "m=video 9 RTP/AVP 128\n", 5, "payload type 128 is out of range 0..127"),
        (MINIMAL + "m=video 9 RTP/AVP 96 96\n", 5, "payload type 96 listed twice"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=rtpmap:96 VP8\n", 6,
         "rtpmap encoding must be <name>/<clock rate>[/<channels>]"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=rtpmap:96 VP8/abc\n", 6,
         "clock rate is not a number: 'abc'"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=rtpmap:96 VP8/1\na=rtpmap:96 VP9/1\n", 7,
         "duplicate a=rtpmap:96"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=ssrc:abc cname:x\n", 6, "ssrc is not a number: 'abc'"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=ssrc:4294967296 cname:x\n", 6,
         "ssrc 4294967296 is out of range 0..4294967295"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=extmap:x urn:a\n", 6,
         "extmap id is not a number: 'x'"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=extmap:300 urn:a\n", 6,
         "extmap id 300 is not valid (RFC 8285 §5)"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=extmap:1/sideways urn:a\n", 6,
         "extmap direction must be sendrecv, sendonly, recvonly or inactive"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=extmap:1 urn:a\na=extmap:1 urn:b\n", 7,
         "duplicate a=extmap:1"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=mid:0\na=mid:1\n", 7, "duplicate a=mid"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=sendonly\na=recvonly\n", 7,
         "conflicting direction attributes"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=candidate:1 1 udp 1 1.2.3.4 9 host\n", 6,
         "candidate needs at least 8 fields"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=candidate:1 x udp 1 1.2.3.4 9 typ host\n", 6,
         "component is not a number: 'x'"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=candidate:1 1 udp 1 1.2.3.4 9 typ host raddr\n", 6,
         "candidate extension without a value"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=rid:a sideways\n", 6,
         "rid direction must be send or recv"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=simulcast:send a;;b\n", 6,
         "empty rid in simulcast list"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=simulcast:send a send b\n", 6,
         "simulcast direction must be send or recv, each at most once"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=setup:maybe\n", 6,
         "setup must be actpass, active, passive or holdconn"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=fingerprint:sha-256\n", 6,
         "fingerprint needs <hash-function> <fingerprint>"),
        (MINIMAL + "m=application 9 UDP/DTLS/SCTP x\na=sctp-port:abc\n", 6,
         "sctp-port is not a number: 'abc'"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=rtcp-fb:96\n", 6, "rtcp-fb needs a feedback type"),
        (MINIMAL + "m=video 9 RTP/AVP 96\na=ice-ufrag:a b\n", 6,
         "ice-ufrag must be a single token"),
        ("v=0\no=- 1 1 IN IP4 a\nt=0\n", 3, "t= needs <start> <stop>"),
        ("v=0\no=- 1 1 IN IP4 a\nc=IN IP4\n", 3, "c= needs <nettype> <addrtype> <address>"),
        ("v=0\no=- 1 1 IN IP4 a\nb=AS\n", 3, "b= needs <bwtype>:<bandwidth>"),
        ("v=0\no=- 1 1 IN IP4 a\na=group:\n", 3, "group needs a semantics token"),
    ],
)
def test_errors_name_line_and_problem(text: str, line_number: int, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        parse(text)
    assert info.value.reason == reason
    assert info.value.line_number == line_number
    assert info.value.line == text.split("\n")[line_number - 1]
    assert f"line {line_number}" in str(info.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty SDP (no v= line)"),
        ("\r\n \r\n", "empty SDP (no v= line)"),
        ("v=0\r\ns=-\r\n", "missing o= line"),
        (b"v=0\r\n\xff\r\n", "SDP is not valid UTF-8"),
    ],
)
def test_errors_without_a_line(text: str | bytes, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        parse(text)
    assert info.value.reason == reason and info.value.line_number is None


def test_size_limits() -> None:
    big = MINIMAL + "a=x:" + "y" * (300 * 1024) + "\r\n"
    with pytest.raises(SdpError, match="larger than"):
        parse(big)
    assert parse(big, max_length=1 << 20).attributes[0].name == "x"
    many = MINIMAL + "m=audio 9 RTP/AVP 0\r\n" * (MAX_MEDIA_SECTIONS + 1)
    with pytest.raises(SdpError, match="more than 1024 m-sections") as info:
        parse(many)
    assert info.value.line_number == 5 + MAX_MEDIA_SECTIONS
    assert len(parse(MINIMAL + "m=audio 9 RTP/AVP 0\r\n" * MAX_MEDIA_SECTIONS).media) == 1024


def test_huge_numbers_are_refused_cheaply() -> None:
    # int() of a 5000-digit string raises ValueError in CPython 3.11; we must say SdpError
    with pytest.raises(SdpError, match="port is not a number"):
        parse(MINIMAL + "m=audio " + "9" * 5000 + " RTP/AVP 0\r\n")
    with pytest.raises(SdpError, match="ssrc is not a number"):
        parse(MINIMAL + "m=audio 9 RTP/AVP 0\r\na=ssrc:\u0661\u0662 cname:x\r\n")  # Arabic digits


# -- an independent parser agrees (aiortc, tests only) -----------------------------------------


@pytest.mark.parametrize("name", [*FIXTURE_NAMES, "safari"])
def test_aiortc_reads_what_we_read(name: str) -> None:
    """aiortc's SDP parser is an independent implementation; on the fixtures and on our own
    serialization of them it must see the same codecs, extensions, SSRCs and transport."""
    from aiortc import sdp as aiortc_sdp

    ours = parse(SAFARI_OFFER if name == "safari" else fixture(name))
    for text in (SAFARI_OFFER if name == "safari" else fixture(name), ours.serialize()):
        theirs = aiortc_sdp.SessionDescription.parse(text)
        assert len(theirs.media) == len(ours.media)
        for a, b in zip(ours.media, theirs.media, strict=True):
            assert (a.kind, a.port, a.protocol) == (b.kind, b.port, b.profile)
            assert ours.effective_ice_ufrag(a) == b.ice.usernameFragment
            assert ours.effective_ice_pwd(a) == b.ice.password
            assert ours.effective_fingerprints(a) == [
                (f.algorithm, f.value) for f in b.dtls.fingerprints]
            assert [(c.foundation, c.component, c.transport, c.priority, c.host, c.port, c.type,
                     c.tcptype) for c in a.candidates] == [
                (c.foundation, c.component, c.protocol, c.priority, c.ip, c.port, c.type,
                 c.tcpType) for c in b.ice_candidates]
            assert a.rtcp_mux == b.rtcp_mux
            if not a.is_rtp:
                assert a.sctp_port == b.sctp_port
                continue
            assert [(c.payload_type, f"{a.kind}/{c.name}".lower(), c.clock_rate, c.apt)
                    for c in a.codecs] == [
                (c.payloadType, c.mimeType.lower(), c.clockRate, c.parameters.get("apt"))
                for c in b.rtp.codecs]
            assert [c.rtcp_fb for c in a.codecs] == [
                [f"{f.type} {f.parameter}" if f.parameter else f.type for f in c.rtcpFeedback]
                for c in b.rtp.codecs]
            assert [(e.id, e.uri) for e in a.extmaps] == [
                (e.id, e.uri) for e in b.rtp.headerExtensions]
            cnames = {s.ssrc: s.value for s in a.ssrcs if s.name == "cname"}
            assert cnames == {s.ssrc: s.cname for s in b.ssrc}
            assert [(g.semantics, g.ssrcs) for g in a.ssrc_groups] == [
                (g.semantic, g.items) for g in b.ssrc_group]
            expected_msid = " ".join(x for x in a.msid[0] if x) if a.msid else None
            assert expected_msid == b.msid


def test_ice_candidate_compares_by_content_and_is_an_aioice_candidate() -> None:
    line = "1 1 udp 2122194687 127.0.0.1 32806 typ host generation 0 network-id 3"
    cand = parse(MINIMAL + f"m=audio 9 RTP/AVP 0\r\na=candidate:{line}\r\n").media[0].candidates[0]
    plain = Candidate.from_sdp(line)  # aioice drops network-id
    assert cand.to_sdp() == line and plain.to_sdp() != line
    assert cand != plain and cand == IceCandidate.from_candidate(cand)
    assert IceCandidate.from_candidate(plain) == plain and hash(cand) == hash(IceCandidate(
        "1", 1, "udp", 2122194687, "127.0.0.1", 32806, "host", generation=0,
        extensions=[("network-id", "3")]))
    assert cand.can_pair_with(plain)


def test_effective_values_fall_back_to_the_session_level() -> None:
    desc = parse(MINIMAL + "a=ice-ufrag:sess\r\na=ice-pwd:sesspwd\r\na=setup:active\r\n"
                 "a=recvonly\r\na=fingerprint:sha-256 AA\r\n"
                 "m=audio 9 RTP/AVP 0\r\n"
                 "m=audio 9 RTP/AVP 0\r\na=ice-ufrag:med\r\na=setup:passive\r\na=inactive\r\n")
    first, second = desc.media
    assert (desc.effective_ice_ufrag(first), desc.effective_ice_pwd(first)) == ("sess", "sesspwd")
    assert desc.effective_setup(first) == "active" and desc.effective_direction(first) == "recvonly"
    assert desc.effective_fingerprints(second) == [("sha-256", "AA")]
    assert (desc.effective_ice_ufrag(second), desc.effective_setup(second)) == ("med", "passive")
    assert desc.effective_direction(second) == "inactive"
    assert parse(MINIMAL + "m=audio 9 RTP/AVP 0\r\n").effective_direction(first) == "sendrecv"


# A stopped transceiver's section in the full form Chromium writes and trio-sfu now writes too
# (RFC 8829 §5.2.2): port 0, the session's ICE/DTLS attributes, a=inactive, its codecs, no msid.
STOPPED_SECTION = (
    "m=video 0 UDP/TLS/RTP/SAVPF 96 97\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:4MdZ\r\n"
    "a=ice-pwd:itCHnl7t7A/Xpta8O/WaLCXF\r\n"
    "a=fingerprint:sha-256 3C:D6:51:11:2D:1F:01:73:02:52:13:AB:85:3D:5D:C5:35:B3:FF:AD:1F:BF:"
    "18:D2:02:22:97:B6:D8:14:1A:E9\r\n"
    "a=setup:actpass\r\n"
    "a=mid:2\r\n"
    "a=inactive\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
    "a=rtcp-fb:96 nack pli\r\n"
    "a=rtpmap:97 rtx/90000\r\n"
    "a=fmtp:97 apt=96\r\n"
)


def test_full_form_stopped_section_round_trips() -> None:
    desc = parse(MINIMAL + STOPPED_SECTION)
    m = desc.media[0]
    assert m.stopped and not m.bundle_only and m.direction == "inactive" and m.rtcp_mux
    assert (m.ice_ufrag, m.setup, m.mid) == ("4MdZ", "actpass", "2")
    assert [(c.payload_type, c.name) for c in m.codecs] == [(96, "VP8"), (97, "rtx")]
    assert m.codecs[1].apt == 96 and m.msid == [] and m.candidates == []
    assert desc.serialize().endswith(STOPPED_SECTION)
    assert parse(desc.serialize()) == desc
