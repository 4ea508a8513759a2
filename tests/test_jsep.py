"""JSEP negotiation core: answers to real browser offers, our offers, renegotiation loops."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from aioice import Candidate

from trio_sfu.proto.capabilities import (
    DEFAULT_VIDEO_CODECS,
    URI_ABS_SEND_TIME,
    URI_MID,
    URI_RID,
    URI_TRANSPORT_CC,
    CodecCapability,
    IdAllocator,
    capabilities_from_codecs,
    codec_matches,
    h264_profile,
    negotiate_codecs,
)
from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.jsep import JsepSession, JsepStateError, LocalTransport, Transceiver
from trio_sfu.proto.sdp import (
    Group,
    HeaderExtension,
    Rid,
    RtpCodec,
    SessionDescription,
    Simulcast,
    SimulcastRid,
    SsrcGroup,
    parse,
)

from .test_sdp import SAFARI_OFFER


def session_state(session: JsepSession) -> str:
    """Every attribute of a (slotted) session, to compare before and after a refused call."""
    return str({name: getattr(session, name, None) for name in JsepSession.__slots__})

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
FINGERPRINT = ("sha-256", ":".join(["5A"] * 32))


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.sdp").read_bytes().decode()


def rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def server(seed: int = 1, **kwargs: object) -> JsepSession:
    """The SFU: ICE-lite, one host candidate, DTLS server when answering."""
    transport = LocalTransport(
        "srvufrag", "srvpassword0123456789abc", [FINGERPRINT],
        [Candidate("1", 1, "udp", 2130706431, "203.0.113.5", 40000, "host")], ice_lite=True)
    for key, value in kwargs.items():
        setattr(transport, key, value)
    return JsepSession(transport, random_bytes=rng(seed))


def client(seed: int = 2, **kwargs: object) -> JsepSession:
    """A full-ICE client (like our Python client or a browser): DTLS client when answering."""
    transport = LocalTransport(
        "cliufrag", "clipassword0123456789abc", [("sha-256", ":".join(["C1"] * 32))],
        [Candidate("7", 1, "udp", 2122260223, "2001:db8::7", 50000, "host")],
        ice_options=["trickle"], setup_when_answering="active", end_of_candidates=False)
    for key, value in kwargs.items():
        setattr(transport, key, value)
    return JsepSession(transport, random_bytes=rng(seed))


def edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def pts(m_codecs: list[RtpCodec]) -> list[int]:
    return [c.payload_type for c in m_codecs]


def answer_offer(session: JsepSession, text: str) -> SessionDescription:
    session.set_remote_description(text, "offer")
    answer = session.create_answer()
    assert parse(str(answer)) == answer  # what we build round-trips
    return answer


# -- answering real browser offers -------------------------------------------------------------


def test_answer_chromium_publisher_offer() -> None:
    s = server()
    changes = s.set_remote_description(fixture("chromium-publisher-offer"), "offer")
    assert [t.kind for t in changes.added] == ["audio", "video"]
    assert changes.data_channel_added and not changes.ice_restart and not changes.stopped
    assert s.signaling_state == "have-remote-offer"
    answer = s.create_answer()
    assert s.signaling_state == "stable"
    assert answer.groups == [Group("BUNDLE", ["0", "1", "2"])]
    assert answer.ice_lite and answer.extmap_allow_mixed
    audio, video, data = answer.media
    for m in answer.media:
        assert (m.port, m.connection) == (40000, parse("v=0\no=- 1 1 IN IP4 a\nc=IN IP4 "
                                                       "203.0.113.5\n").connection)
        assert (m.ice_ufrag, m.ice_pwd, m.setup) == ("srvufrag", "srvpassword0123456789abc",
                                                     "passive")
        assert m.fingerprints == [FINGERPRINT] and m.end_of_candidates
        assert [c.to_sdp() for c in m.candidates] == [
            "1 1 udp 2130706431 203.0.113.5 40000 typ host"]
    assert [m.mid for m in answer.media] == ["0", "1", "2"]
    assert audio.codecs == [RtpCodec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1",
                                     ["transport-cc"])]
    assert audio.formats == ["111"]
    # VP8, H264 42001f/42e01f with packetization-mode=1, AV1, VP9 profile 0 - with their RTX,
    # in Chromium's order and with Chromium's payload types; pm=0, Main, VP9 profile 2, red,
    # ulpfec and the RTX of dropped codecs are gone.
    assert pts(video.codecs) == [96, 97, 102, 103, 108, 109, 45, 46, 98, 99]
    assert [(c.payload_type, c.apt) for c in video.codecs if c.is_rtx] == [
        (97, 96), (103, 102), (109, 108), (46, 45), (99, 98)]
    assert video.codec(102) is not None and "packetization-mode=1" in (video.codec(102).fmtp or "")
    assert video.codec(96) == RtpCodec(96, "VP8", 90000, None, None,
                                       ["goog-remb", "transport-cc", "ccm fir", "nack",
                                        "nack pli"])
    assert [(e.id, e.uri) for e in audio.extmaps] == [
        (1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"), (2, URI_ABS_SEND_TIME),
        (3, URI_TRANSPORT_CC), (4, URI_MID)]
    assert [e.id for e in video.extmaps] == [2, 3, 4, 10, 11]
    assert audio.direction == video.direction == "recvonly"  # new_transceiver_direction
    assert audio.rtcp_mux and audio.rtcp_rsize and not audio.rtcp_mux_only
    assert audio.msid == [] and audio.ssrcs == []  # we do not send on recvonly sections
    assert (data.kind, data.protocol, data.formats) == (
        "application", "UDP/DTLS/SCTP", ["webrtc-datachannel"])
    assert (data.sctp_port, data.max_message_size) == (5000, 262144)

    t_audio, t_video = s.transceivers
    assert s.transceiver("1") is t_video and s.transceiver("2") is None
    assert (t_audio.mid, t_audio.mline_index, t_audio.current_direction) == ("0", 0, "recvonly")
    assert t_audio.remote_ssrcs == [3701275741] and t_audio.remote_cname == "VC4FSe7xZ6Fyj5MW"
    assert t_audio.remote_msid == ("11443043-e15e-4c10-9fb3-b8b5d54e616d",
                                   "f65dd428-d51a-4a7c-940b-2e3e560518f2")
    assert t_video.remote_ssrcs == [2281557147]
    assert t_video.remote_rtx_ssrcs == {2281557147: 2755931801}
    assert t_video.rtx_payload_type(96) == 97 and t_video.rtx_payload_type(45) == 46
    assert t_video.rtx_payload_type(104) is None
    assert t_video.codec(45) is not None and t_video.codec(45).name == "AV1"
    assert t_video.extension_id(URI_MID) == 4 and t_video.extension_id(URI_RID) == 10
    assert t_video.nack and t_video.pli and t_video.fir and t_video.remb and t_video.transport_cc
    assert t_audio.transport_cc and not t_audio.nack and not t_audio.pli
    assert [c.name for c in t_video.media_codecs] == ["VP8", "H264", "H264", "AV1", "VP9"]
    assert t_video.receiving and not t_video.sending

    assert s.dtls_role == "server" and s.data_mid == "2"
    assert (s.remote_ice_ufrag, s.remote_ice_pwd) == ("i52k", "+i1grnzSsJK82KOTxGroggsi")
    assert s.remote_fingerprints == parse(fixture("chromium-publisher-offer")).media[0].fingerprints
    assert len(s.remote_candidates) == 8 and s.remote_setup == "actpass"
    assert not s.remote_ice_lite and not s.remote_end_of_candidates
    assert (s.remote_sctp_port, s.remote_max_message_size) == (5000, 262144)
    assert s.local_description is answer and s.current_remote_description is not None


def test_answer_firefox_publisher_offer() -> None:
    s = server()
    answer = answer_offer(s, fixture("firefox-publisher-offer"))
    audio, video, data = answer.media
    assert answer.groups == [Group("BUNDLE", ["0", "1", "2"])]
    assert audio.codecs == [RtpCodec(109, "opus", 48000, 2,
                                     "maxplaybackrate=48000;stereo=1;useinbandfec=1",
                                     ["transport-cc"])]
    assert pts(video.codecs) == [120, 124, 121, 125, 99, 100]  # no red/ulpfec/rtx-of-red
    assert video.codec(120).fmtp == "max-fs=12288;max-fr=60"  # type: ignore[union-attr]
    assert [e.id for e in audio.extmaps] == [1, 3, 7]  # csrc-audio-level is not ours
    assert [e.id for e in video.extmaps] == [3, 4, 7]
    assert answer.extmap_allow_mixed  # offered at media level
    assert not audio.rtcp_rsize and video.rtcp_rsize  # only where offered
    # session-level fingerprint, media-level ICE; component-2 candidates are not ours to use
    assert s.remote_fingerprints[0][1].startswith("1B:1A:FF")
    assert s.remote_ice_ufrag == "a48eeefc" and len(s.remote_candidates) == 4
    assert all(c.component == 1 for c in s.remote_candidates)
    assert s.remote_end_of_candidates and s.remote_max_message_size == 1073741823
    t_audio, t_video = s.transceivers
    assert t_audio.remote_msid == ("{5dbceeb9-e3fc-48df-96a9-b33f0348bbf4}",
                                   "{3808aefd-e184-44c0-9df0-fdc55ead94b5}")
    assert t_video.rtx_payload_type(120) == 124 and t_video.rtx_payload_type(99) == 100
    assert data.max_message_size == 262144


@pytest.mark.parametrize("browser", ["chromium", "firefox"])
def test_answer_simulcast_offer(browser: str) -> None:
    s = server()
    answer = answer_offer(s, fixture(f"{browser}-publisher-simulcast-offer"))
    video = answer.media[1]
    assert video.direction == "recvonly"
    assert video.rids == [Rid("q", "recv"), Rid("h", "recv"), Rid("f", "recv")]
    assert video.simulcast == Simulcast(
        recv=[[SimulcastRid("q")], [SimulcastRid("h")], [SimulcastRid("f")]])
    assert "a=simulcast:recv q;h;f\r\n" in str(answer) and "a=rid:q recv\r\n" in str(answer)
    t = s.transceivers[1]
    assert t.remote_rids == ["q", "h", "f"] and t.remote_simulcast is not None
    assert t.extension_id(URI_RID) is not None
    if browser == "firefox":
        # Firefox says it only sends rid/repaired-rid; the answer mirrors the direction
        assert HeaderExtension(9, URI_RID, "recvonly") in video.extmaps
        assert t.remote_ssrcs == [3026541664, 3661305923, 2665334644]
        assert t.remote_rtx_ssrcs == {3026541664: 143176418, 3661305923: 4037566094,
                                      2665334644: 1459721621}
    else:
        assert t.remote_ssrcs == [] and t.extension_id(URI_RID) == 10


def test_simulcast_rid_payload_type_restrictions_follow_the_codecs() -> None:
    text = edit(fixture("chromium-publisher-simulcast-offer"), "a=rid:q send\r\n",
                "a=rid:q send pt=104,96;max-width=320\r\n")
    text = edit(text, "a=rid:h send\r\n", "a=rid:h send pt=104\r\n")
    video = answer_offer(server(), text).media[1]
    assert video.rids == [Rid("q", "recv", "pt=96;max-width=320"), Rid("f", "recv")]
    assert video.simulcast == Simulcast(recv=[[SimulcastRid("q")], [SimulcastRid("f")]])


def test_our_simulcast_offer_is_answered_by_our_sfu() -> None:
    """Our client offers simulcast as a browser does (RFC 8853 §5.1): rids, no ssrc lines;
    the SFU's answer takes every stream and the client keeps one SSRC per rid."""
    c, s = client(), server()
    t = c.add_transceiver("video", "sendonly", send_rids=["q", "h", "f"])
    c.add_data_channel()
    offer = c.create_offer()
    video = offer.media[0]
    assert video.rids == [Rid("q", "send"), Rid("h", "send"), Rid("f", "send")]
    assert video.simulcast == Simulcast(
        send=[[SimulcastRid("q")], [SimulcastRid("h")], [SimulcastRid("f")]])
    assert video.ssrcs == [] and video.ssrc_groups == []
    assert video.msid == [(t.stream_id, t.track_id)]
    assert {e.uri for e in video.extmaps} >= {URI_MID, URI_RID}
    s.set_remote_description(str(offer), "offer")
    assert s.transceivers[0].remote_rids == ["q", "h", "f"]
    assert s.transceivers[0].remote_ssrcs == []
    c.set_remote_description(str(s.create_answer()), "answer")
    assert list(t.send_rids) == ["q", "h", "f"]
    assert len(set(t.send_rids.values()) | {t.sender_ssrc}) == 4
    # A renegotiation offers the same streams again.
    assert "a=simulcast:send q;h;f\r\n" in str(c.create_offer())


def test_an_answer_without_simulcast_leaves_one_stream() -> None:
    """RFC 8829 §5.10: an answer that drops a=simulcast (or some rids) keeps only what it took."""
    c = client()
    t = c.add_transceiver("video", "sendonly", send_rids=["q", "h", "f"])
    offer = str(c.create_offer())
    answer = answer_offer(server(), offer)
    answer.media[0].simulcast = Simulcast(recv=[[SimulcastRid("q")], [SimulcastRid("f")]])
    c.set_remote_description(str(answer), "answer")
    assert list(t.send_rids) == ["q", "f"]
    answer = answer_offer(server(), str(c.create_offer()))
    answer.media[0].rids, answer.media[0].simulcast = [], None
    c.set_remote_description(str(answer), "answer")
    assert t.send_rids == {}
    again = c.create_offer().media[0]
    assert again.simulcast is None and again.rids == [] and again.ssrcs


@pytest.mark.parametrize(
    ("kind", "rids"), [("audio", ["a", "b"]), ("video", ["q", "q"]), ("video", ["q;h"])]
)
def test_simulcast_needs_video_and_valid_distinct_rids(kind: str, rids: list[str]) -> None:
    with pytest.raises(ValueError, match="simulcast"):
        client().add_transceiver(kind, "sendonly", send_rids=rids)  # type: ignore[arg-type]


@pytest.mark.parametrize("browser", ["chromium", "firefox"])
def test_answer_subscriber_offer_data_channel_only(browser: str) -> None:
    s = server()
    changes = s.set_remote_description(fixture(f"{browser}-subscriber-offer"), "offer")
    assert changes.data_channel_added and changes.added == []
    answer = s.create_answer()
    assert [m.kind for m in answer.media] == ["application"]
    assert answer.groups == [Group("BUNDLE", ["0"])]
    assert s.data_mid == "0" and s.transceivers == [] and s.dtls_role == "server"


def test_answer_safari_offer_keeps_h264_first() -> None:
    s = server()
    video = answer_offer(s, SAFARI_OFFER).media[1]
    assert pts(video.codecs) == [96, 97, 98, 99, 100, 101, 127, 125]
    assert video.codec(96).fmtp.endswith("profile-level-id=640c1f")  # type: ignore[union-attr]
    assert s.transceivers[1].remote_rtx_ssrcs == {2712426061: 3519823301}
    assert s.remote_candidates[1].host.endswith(".local")


def test_codec_preferences_restrict_the_answer() -> None:
    s = server()
    s.set_remote_description(fixture("chromium-publisher-offer"), "offer")
    vp9 = [c for c in DEFAULT_VIDEO_CODECS if c.name == "VP9" or c.fmtp == "apt=98"]
    s.transceivers[1].codec_preferences = vp9
    video = s.create_answer().media[1]
    assert pts(video.codecs) == [98, 99]


# -- rejected sections, directions, roles ------------------------------------------------------


def test_sections_without_common_codec_or_support_are_rejected_not_errors() -> None:
    text = edit(fixture("chromium-publisher-offer"),
                "m=video 50797 UDP/TLS/RTP/SAVPF 96 97 102 103 104 107 108 109 114 115 116 117 "
                "39 40 45 46 98 99 100 101 118 119 120",
                "m=video 50797 UDP/TLS/RTP/SAVPF 104 107 116 117 100 101 118 119 120")
    text = edit(text, "a=group:BUNDLE 0 1 2", "a=group:BUNDLE 0 1 2 3 4")
    text += ("m=text 9 RTP/AVP 98\r\nc=IN IP4 0.0.0.0\r\na=mid:3\r\na=rtpmap:98 t140/1000\r\n"
             "m=application 9 DTLS/SCTP 5000\r\nc=IN IP4 0.0.0.0\r\na=mid:4\r\n"
             "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:5\r\na=rtcp-mux\r\n"
             "a=rtpmap:111 opus/48000/2\r\n"
             "m=audio 0 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:6\r\n"
             "a=rtpmap:111 opus/48000/2\r\n")
    s = server()
    changes = s.set_remote_description(text, "offer")
    assert [t.kind for t in changes.added] == ["audio"]  # no transceiver for rejected sections
    answer = s.create_answer()
    assert [m.port for m in answer.media] == [40000, 0, 40000, 0, 0, 0, 0]
    assert answer.groups == [Group("BUNDLE", ["0", "2"])]
    rejected = answer.media[1]
    # RFC 8829 §5.3.1 / §5.2.2: the rejected section keeps the offered formats and the
    # session's transport attributes (the full form), but no candidates and no msid.
    assert (rejected.kind, rejected.mid, rejected.direction) == ("video", "1", "inactive")
    assert rejected.formats == ["104", "107", "116", "117", "100", "101", "118", "119", "120"]
    assert rejected.codecs[0].name == "H264" and rejected.candidates == []
    assert rejected.ice_ufrag == answer.media[0].ice_ufrag and rejected.fingerprints
    assert rejected.setup == "passive" and rejected.msid == [] and rejected.ssrcs == []
    assert [(m.kind, m.protocol, m.mid, m.formats) for m in answer.media[3:]] == [
        ("text", "RTP/AVP", "3", ["98"]), ("application", "DTLS/SCTP", "4", ["5000"]),
        ("audio", "UDP/TLS/RTP/SAVPF", "5", ["111"]), ("audio", "UDP/TLS/RTP/SAVPF", "6", ["111"])]
    assert len(s.transceivers) == 1 and s.data_mid == "2"


def test_no_bundle_group_means_only_the_first_section() -> None:
    text = edit(fixture("chromium-publisher-offer"), "a=group:BUNDLE 0 1 2\r\n", "")
    answer = answer_offer(server(), text)
    assert [m.port for m in answer.media] == [40000, 0, 0] and answer.groups == []


@pytest.mark.parametrize(
    ("wish", "offered", "expected"),
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendrecv", "sendonly", "recvonly"),
        ("sendrecv", "recvonly", "sendonly"),
        ("sendonly", "sendrecv", "sendonly"),
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "recvonly", "inactive"),
        ("recvonly", "sendrecv", "recvonly"),
        ("sendrecv", "inactive", "inactive"),
        ("inactive", "sendrecv", "inactive"),
    ],
)
def test_answer_direction_is_the_intersection(wish: str, offered: str, expected: str) -> None:
    text = edit(fixture("chromium-publisher-offer"), "a=sendrecv\r\na=msid:11443043-e15e-4c10-"
                "9fb3-b8b5d54e616d f65dd428", f"a={offered}\r\na=msid:11443043-e15e-4c10-9fb3-"
                "b8b5d54e616d f65dd428")
    s = server()
    s.new_transceiver_direction = wish  # type: ignore[assignment]
    audio = answer_offer(s, text).media[0]
    assert audio.direction == expected
    assert s.transceivers[0].current_direction == expected
    sends = expected in ("sendrecv", "sendonly")
    assert bool(audio.msid) == sends and bool(audio.ssrcs) == sends


def test_pre_added_transceiver_is_used_and_sends_msid_and_ssrcs() -> None:
    s = server()
    mine = s.add_transceiver("video", "sendonly", stream_id="stream", track_id="track")
    changes = s.set_remote_description(fixture("chromium-publisher-offer"), "offer")
    assert [t.kind for t in changes.added] == ["audio"] and mine.mid == "1"
    video = s.create_answer().media[1]
    assert video.direction == "sendonly" and video.msid == [("stream", "track")]
    assert video.ssrc_groups == [SsrcGroup("FID", [mine.sender_ssrc, mine.sender_rtx_ssrc])]
    assert [(a.ssrc, a.name, a.value) for a in video.ssrcs] == [
        (mine.sender_ssrc, "cname", mine.cname), (mine.sender_ssrc, "msid", "stream track"),
        (mine.sender_rtx_ssrc, "cname", mine.cname),
        (mine.sender_rtx_ssrc, "msid", "stream track")]
    assert mine.sending and not mine.receiving


@pytest.mark.parametrize(
    ("offered", "when_answering", "answered", "role"),
    [
        ("actpass", "passive", "passive", "server"),
        ("actpass", "active", "active", "client"),
        ("active", "active", "passive", "server"),
        ("passive", "passive", "active", "client"),
    ],
)
def test_dtls_role_from_setup(offered: str, when_answering: str, answered: str,
                              role: str) -> None:
    s = server(setup_when_answering=when_answering)
    text = fixture("chromium-publisher-offer").replace("a=setup:actpass", f"a=setup:{offered}")
    answer = answer_offer(s, text)
    assert {m.setup for m in answer.media} == {answered}
    assert s.dtls_role == role


def test_established_dtls_role_is_kept_on_renegotiation() -> None:
    s = server(setup_when_answering="active")
    answer_offer(s, fixture("chromium-subscriber-offer"))
    assert s.dtls_role == "client"
    answer = answer_offer(s, fixture("chromium-subscriber-offer"))  # actpass again
    assert answer.media[0].setup == "active" and s.dtls_role == "client"
    with pytest.raises(SdpError, match="would change the DTLS role"):
        s.set_remote_description(
            fixture("chromium-subscriber-offer").replace("setup:actpass", "setup:active"),
            "offer")


# -- validation of remote offers: SdpError and no state change ---------------------------------


CHROMIUM = fixture("chromium-publisher-offer")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CHROMIUM.replace("a=fingerprint:", "a=x-fingerprint:"), "no a=fingerprint"),
        (CHROMIUM.replace("a=fingerprint:sha-256", "a=fingerprint:md5"), "no a=fingerprint"),
        (CHROMIUM.replace("a=ice-ufrag:", "a=x-ufrag:"), "missing a=ice-ufrag"),
        (CHROMIUM.replace("a=ice-pwd:+i1grnzSsJK82KOTxGroggsi", "a=ice-pwd:short"),
         "ice-pwd 22-256"),
        (CHROMIUM.replace("a=rtcp-mux\r\n", ""), "a=rtcp-mux is required"),
        (CHROMIUM.replace("a=setup:actpass", "a=setup:holdconn"), "a=setup:holdconn"),
        (CHROMIUM.replace("a=mid:1", "a=mid:0"), "duplicate a=mid"),
        (CHROMIUM.replace("a=mid:2\r\n", ""), "missing a=mid"),
        (CHROMIUM.replace("BUNDLE 0 1 2", "BUNDLE 0 1 2 7"), "BUNDLE group names a mid"),
        ("v=0\r\nfoo\r\n", "line 2"),
    ],
)
def test_invalid_offer_raises_sdp_error_and_changes_nothing(text: str, message: str) -> None:
    s = server()
    before = session_state(s)
    with pytest.raises(SdpError, match=message):
        s.set_remote_description(text, "offer")
    assert session_state(s) == before
    assert s.signaling_state == "stable" and s.transceivers == [] and s.remote_ice_ufrag is None
    answer_offer(s, CHROMIUM)  # and the session is still usable


def test_invalid_renegotiation_offers() -> None:
    s = server()
    answer_offer(s, CHROMIUM)
    desc = parse(CHROMIUM)
    shorter = parse(CHROMIUM)
    shorter.media.pop()
    with pytest.raises(SdpError, match="fewer m-sections"):
        s.set_remote_description(shorter, "offer")
    renamed = parse(CHROMIUM)
    renamed.media[1].mid = "9"
    renamed.groups[0].mids[1] = "9"
    with pytest.raises(SdpError, match="replaces live mid '1'"):
        s.set_remote_description(renamed, "offer")
    rekinded = parse(CHROMIUM)
    rekinded.media[0].kind = "video"
    with pytest.raises(SdpError, match="kind changed from audio to video"):
        s.set_remote_description(rekinded, "offer")
    assert s.signaling_state == "stable"
    changes = s.set_remote_description(desc, "offer")
    assert changes.added == [] and not changes.ice_restart


# -- the state machine -------------------------------------------------------------------------


def test_state_machine_misuse_raises_jsep_state_error() -> None:
    s = server()
    with pytest.raises(JsepStateError):
        s.create_answer()
    with pytest.raises(JsepStateError):
        s.set_remote_description(CHROMIUM, "answer")
    with pytest.raises(JsepStateError):
        s.rollback()
    s.set_remote_description(CHROMIUM, "offer")
    with pytest.raises(JsepStateError):
        s.create_offer()
    with pytest.raises(JsepStateError):
        s.set_remote_description(CHROMIUM, "offer")
    s.create_answer()
    s.create_offer()
    with pytest.raises(JsepStateError):  # glare: the caller must roll back first
        s.set_remote_description(CHROMIUM, "offer")
    with pytest.raises(JsepStateError):
        s.set_remote_description(CHROMIUM, "pranswer")  # type: ignore[arg-type]
    assert not issubclass(JsepStateError, SdpError)


# -- we offer, browsers answer (the fixtures' subscriber renegotiation) ------------------------


def _audio_video_pairs(s: JsepSession, n: int, **kwargs: object) -> list[Transceiver]:
    out = []
    for _ in range(n):
        out.append(s.add_transceiver("audio", "sendonly", **kwargs.get("audio", {})))  # type: ignore[arg-type]
        out.append(s.add_transceiver("video", "sendonly", **kwargs.get("video", {})))  # type: ignore[arg-type]
    return out


def test_subscriber_renegotiation_with_chromium_answer() -> None:
    s = server(setup_when_answering="active")  # the capture's far side was a DTLS client
    answer_offer(s, fixture("chromium-subscriber-offer"))
    added = _audio_video_pairs(s, 2)
    offer = s.create_offer()
    assert s.signaling_state == "have-local-offer"
    assert [m.mid for m in offer.media] == ["0", "1", "2", "3", "4"]
    assert offer.groups == [Group("BUNDLE", ["0", "1", "2", "3", "4"])]
    assert {m.setup for m in offer.media} == {"actpass"} and offer.extmap_allow_mixed
    assert [t.mid for t in added] == ["1", "2", "3", "4"]
    for t, m in zip(added, offer.media[1:], strict=True):
        assert m.direction == "sendonly" and m.msid == [(t.stream_id, t.track_id)]
        assert m.rtcp_mux and m.rtcp_rsize
        assert m.ssrcs[0].ssrc == t.sender_ssrc and m.ssrcs[0].value == t.cname
    audio1, video1, audio2, video2 = offer.media[1:]
    assert pts(audio1.codecs) == pts(audio2.codecs) == [111]
    assert pts(video1.codecs) == pts(video2.codecs) == [96, 97, 98, 99, 108, 109, 102, 103,
                                                        112, 113, 45, 46]
    assert video1.ssrc_groups == [SsrcGroup("FID", [added[1].sender_ssrc,
                                                    added[1].sender_rtx_ssrc])]
    # 12: the AV1 dependency descriptor (the recorded answer below predates it)
    assert [e.id for e in video1.extmaps] == [2, 3, 4, 10, 11, 12]
    assert [e.id for e in audio1.extmaps] == [1, 2, 3, 4]

    changes = s.set_remote_description(fixture("chromium-subscriber-renegotiation-answer"),
                                       "answer")
    assert s.signaling_state == "stable" and changes.stopped == [] and not changes.ice_restart
    assert s.dtls_role == "client"
    assert [t.current_direction for t in added] == ["sendonly"] * 4
    assert pts(added[0].codecs) == [111]
    assert pts(added[1].codecs) == [96, 97, 102, 103, 108, 109, 45, 46, 98, 99]
    assert added[1].rtx_payload_type(96) == 97
    assert [e.id for e in added[1].header_extensions] == [2, 3, 4, 10, 11]
    assert s.transceivers == added and s.data_mid == "0"


def test_subscriber_renegotiation_with_firefox_answer() -> None:
    # The SFU forwards a Firefox publisher's codecs: offer them under Firefox's payload types.
    publisher = server(seed=5)
    answer_offer(publisher, fixture("firefox-publisher-offer"))
    audio_prefs = capabilities_from_codecs(publisher.transceivers[0].codecs)
    video_prefs = capabilities_from_codecs(publisher.transceivers[1].codecs[:4])  # VP8, VP9
    s = server(setup_when_answering="active")
    answer_offer(s, fixture("firefox-subscriber-offer"))
    added = _audio_video_pairs(s, 2, audio={"codec_preferences": audio_prefs},
                               video={"codec_preferences": video_prefs})
    offer = s.create_offer()
    assert pts(offer.media[1].codecs) == [109]
    assert pts(offer.media[2].codecs) == pts(offer.media[4].codecs) == [120, 124, 121, 125]
    assert offer.media[2].codec(120).fmtp == "max-fs=12288;max-fr=60"  # type: ignore[union-attr]
    s.set_remote_description(fixture("firefox-subscriber-renegotiation-answer"), "answer")
    assert [t.current_direction for t in added] == ["sendonly"] * 4
    assert pts(added[1].codecs) == [120, 124, 121, 125] and pts(added[2].codecs) == [109]
    # the answer's (Firefox's) extension ids are what the peer will use
    assert [(e.id, e.uri) for e in added[0].header_extensions] == [
        (1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"), (3, URI_MID), (7, URI_TRANSPORT_CC)]
    assert s.remote_ice_ufrag == "101750b7" and s.dtls_role == "client"


@pytest.mark.parametrize(
    ("name", "stream", "tracks"),
    [
        ("safari-publisher-offer", "8a1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
         ["2b9e8c7a-1d3f-4e5a-9b6c-7d8e9f0a1b2c", "c4d5e6f7-0a1b-4c2d-8e3f-4a5b6c7d8e9f"]),
        # older WebKit: no media-level a=msid, only a=ssrc:<ssrc> msid:/mslabel:/label:
        ("webkit-legacy-publisher-offer", "5kx3DhQ6fEo1nR2bLmT7",
         ["a7b6c5d4-e3f2-4a1b-9c8d-7e6f5a4b3c2d", "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"]),
    ],
)
def test_answer_webkit_shaped_publisher_offers(name: str, stream: str, tracks: list[str]) -> None:
    """Safari-shaped offers (issue 12): no a=extmap-allow-mixed, H264 first, a=rtcp-rsize,
    both a=msid forms. Accepted; H264 stays first; tracks keep their ids; RTX pairs found."""
    text = fixture(name)
    assert "a=extmap-allow-mixed" not in text and "a=rtcp-rsize" in text
    s = server()
    answer = answer_offer(s, text)
    assert [m.kind for m in answer.media] == ["audio", "video", "application"]
    assert [m.direction for m in answer.media[:2]] == ["recvonly", "recvonly"]
    assert not answer.extmap_allow_mixed  # never claimed when the offer did not
    video = answer.media[1]
    first = video.codecs[0]
    assert (first.name, first.payload_type) == ("H264", 96)
    assert first.fmtp is not None and "profile-level-id=640c1f" in first.fmtp
    assert video.rtcp_rsize  # mirrored (RFC 5506)
    audio_t, video_t = s.transceivers
    assert [audio_t.remote_msid, video_t.remote_msid] == [(stream, t) for t in tracks]
    assert len(video_t.remote_ssrcs) == 1 and len(video_t.remote_rtx_ssrcs) == 1
    assert s.data_mid == "2" and s.dtls_role == "server"


def test_answer_safari_subscriber_offer() -> None:
    s = server()
    changes = s.set_remote_description(fixture("safari-subscriber-offer"), "offer")
    assert changes.data_channel_added and changes.added == []
    assert [m.kind for m in s.create_answer().media] == ["application"]
    assert s.remote_candidates[0].host.endswith(".local")  # mDNS, as Safari sends


# -- browsers offer again, we answer -----------------------------------------------------------


@pytest.mark.parametrize("browser", ["chromium", "firefox"])
def test_browser_renegotiation_offer(browser: str) -> None:
    full = parse(fixture(f"{browser}-renegotiation-offer-by-peer"))
    first = parse(fixture(f"{browser}-renegotiation-offer-by-peer"))
    first.media = first.media[:1]
    first.groups = [Group("BUNDLE", ["0"])]
    s = server()
    answer_offer(s, str(first))
    changes = s.set_remote_description(full, "offer")
    assert [t.kind for t in changes.added] == ["audio", "video", "audio", "video"]
    assert not changes.ice_restart and not changes.data_channel_added
    answer = s.create_answer()
    assert answer.groups == [Group("BUNDLE", ["0", "1", "2", "3", "4"])]
    assert [m.direction for m in answer.media[1:]] == ["recvonly"] * 4
    assert {m.setup for m in answer.media} == {"passive"} and s.dtls_role == "server"
    assert [t.mid for t in s.transceivers] == ["1", "2", "3", "4"]
    # the transport is the BUNDLE tag's (mid 0, the data channel); the new sections carry
    # no candidates of their own
    tag = [c for c in full.media[0].candidates if c.component == 1]
    assert s.remote_candidates == tag and len(tag) == (4 if browser == "chromium" else 0)
    assert all(m.candidates == [] for m in full.media[1:])
    if browser == "chromium":
        assert s.transceivers[1].remote_rtx_ssrcs == {289970884: 3038839076}
        assert s.transceivers[0].remote_cname == "Vs410BsKakf0GOHT"


# -- two JSEP sessions, many rounds ------------------------------------------------------------


def _negotiate(offerer: JsepSession, answerer: JsepSession, **kwargs: bool) -> tuple[
        SessionDescription, SessionDescription]:
    offer = offerer.create_offer(**kwargs)
    text = str(offer)
    assert parse(text) == offer
    answerer.set_remote_description(text, "offer")
    answer = answerer.create_answer()
    assert parse(str(answer)) == answer
    offerer.set_remote_description(str(answer), "answer")
    return offer, answer


def _check_bundle_consistency(desc: SessionDescription, table: dict[int, tuple[str, str]]) -> None:
    """RFC 8843 §9: one payload type means one codec across the session (and its history)."""
    mids = [m.mid for m in desc.media]
    assert len(set(mids)) == len(mids)
    bundle = desc.groups[0].mids if desc.groups else []
    for m in desc.media:
        if m.stopped:
            assert m.mid not in bundle and m.msid == [] and m.ssrcs == []
            continue
        assert m.mid in bundle
        for c in m.codecs:
            key = (c.name.lower(), c.fmtp or "")
            assert table.setdefault(c.payload_type, key) == key, (c.payload_type, key)


def test_many_rounds_of_publishers_coming_and_going() -> None:
    a = server()
    b = client()
    b.add_data_channel()
    _negotiate(b, a)  # the browser's first offer: a data channel only
    assert a.data_mid == b.data_mid == "0" and a.dtls_role == "server" and b.dtls_role == "client"

    r = random.Random(7)
    vp8_only = [CodecCapability("VP8", 90000, None, "max-fs=12288;max-fr=60",
                                ["nack", "nack pli"], 120),
                CodecCapability("rtx", 90000, None, "apt=120", [], 124)]
    live: list[tuple[Transceiver, Transceiver]] = []
    seen_mids: set[str] = {"0"}
    table: dict[int, tuple[str, str]] = {}
    created = sizes = 0
    max_sections = 0
    for round_number in range(300):
        for _ in range(r.randrange(0, 3)):
            if len(live) < 6:
                video_prefs = vp8_only if r.random() < 0.3 else None
                pair = (a.add_transceiver("audio", "sendonly"),
                        a.add_transceiver("video", "sendonly", codec_preferences=video_prefs))
                live.append(pair)
                created += 2
        for _ in range(r.randrange(0, 3)):
            if live:
                for t in live.pop(r.randrange(len(live))):
                    a.stop_transceiver(t)
        if r.random() < 0.15:  # now and then the browser renegotiates on its own
            for desc in _negotiate(b, a):
                _check_bundle_consistency(desc, table)
        offer, answer = _negotiate(a, b)
        for desc in (offer, answer):
            _check_bundle_consistency(desc, table)
        fresh = {m.mid for m in offer.media if not m.stopped} - seen_mids
        for m in offer.media:
            if m.mid in fresh:
                assert m.mid not in seen_mids  # a mid is never reused
        seen_mids |= {m.mid for m in offer.media if m.mid is not None}
        max_sections = max(max_sections, len(offer.media))
        sizes = max(sizes, len(str(offer)))
        # both sides agree on what is live
        a_live = {t.mid: t for t in a.transceivers if not t.stopped and not t.stopping}
        assert {t.mid for pair in live for t in pair} == set(a_live)
        b_by_mid = {t.mid: t for t in b.transceivers}
        for mid, t in a_live.items():
            assert t.current_direction == "sendonly"
            peer = b_by_mid[mid]
            assert peer.current_direction == "recvonly" and not peer.stopped
            assert peer.remote_msid == (t.stream_id, t.track_id)
            assert peer.remote_ssrcs == [t.sender_ssrc]
            assert pts(peer.codecs) == pts(t.codecs)
        assert all(t.stopped for t in b.transceivers if t.mid not in a_live)
        assert a.signaling_state == b.signaling_state == "stable", round_number
    # 1 data + at most 12 live + what this round stopped (port 0, recyclable only next round)
    assert max_sections <= 1 + 12 + 4
    assert created > 150 and sizes < 40_000
    assert len(a.transceivers) <= 12 + 8 and len(b.transceivers) <= 12 + 8
    assert table[96] == ("vp8", "") and table[120] == ("vp8", "max-fs=12288;max-fr=60")


def test_stop_then_recycle_same_index_new_mid() -> None:
    a, b = server(), client()
    b.add_data_channel()
    _negotiate(b, a)
    audio, video = a.add_transceiver("audio", "sendonly"), a.add_transceiver("video", "sendonly")
    _negotiate(a, b)
    assert (audio.mid, video.mid) == ("1", "2")
    a.stop_transceiver(video)
    offer, answer = _negotiate(a, b)
    assert (offer.media[2].port, offer.media[2].msid, offer.media[2].mid) == (0, [], "2")
    assert offer.media[2].ssrcs == [] and offer.media[2].direction == "inactive"
    stopped = str(offer).split("m=video ")[1]
    formats = " ".join(str(c.payload_type) for c in video.codecs)
    assert stopped.startswith(f"0 UDP/TLS/RTP/SAVPF {formats}\r\nc=IN IP4 0.0.0.0\r\n")
    for line in ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:sha-256 ", "a=setup:actpass",
                 "a=mid:2", "a=inactive", "a=rtcp-mux", "a=rtpmap:96 VP8/90000"):
        assert f"\r\n{line}" in stopped, line
    assert "a=msid" not in stopped and "a=candidate" not in stopped and "a=ssrc" not in stopped
    assert offer.groups[0].mids == ["0", "1"] and answer.media[2].port == 0
    assert video.stopped and video in a.transceivers  # until its section is recycled
    new = a.add_transceiver("audio", "sendonly")
    offer, _ = _negotiate(a, b)
    assert len(offer.media) == 3 and offer.media[2].kind == "audio"
    assert new.mid == "3" and new.mline_index == 2 and video not in a.transceivers
    assert offer.groups[0].mids == ["0", "1", "3"]
    assert [t.mid for t in b.transceivers] == ["1", "3"]


def test_stopping_before_association_needs_no_negotiation() -> None:
    a = server()
    t = a.add_transceiver("video")
    a.stop_transceiver(t)
    assert t.stopped and a.transceivers == []
    assert a.create_offer().media == []


def test_rollback_restores_everything_and_mids_are_not_reused() -> None:
    a, b = server(), client()
    b.add_data_channel()
    _negotiate(b, a)
    t = a.add_transceiver("video", "sendonly")
    offer = a.create_offer(ice_restart=True)
    assert t.mid == "1" and offer.media[1].ice_ufrag != "srvufrag"
    a.rollback()
    assert a.signaling_state == "stable" and t.mid is None and t.mline_index is None
    assert a.transport.ice_ufrag == "srvufrag" and a.pending_local_description is None
    # glare: the peer's offer is applied after our rollback
    b_offer = b.create_offer()
    a.set_remote_description(str(b_offer), "offer")
    b.set_remote_description(str(a.create_answer()), "answer")
    offer, _ = _negotiate(a, b)
    assert t.mid == "2" and [m.mid for m in offer.media] == ["0", "2"]


def test_ice_restart_both_ways() -> None:
    a, b = server(), client()
    b.add_data_channel()
    _negotiate(b, a)
    offer = b.create_offer(ice_restart=True)
    assert offer.media[0].ice_ufrag == b.transport.ice_ufrag != "cliufrag"
    changes = a.set_remote_description(str(offer), "offer")
    assert changes.ice_restart and a.remote_ice_ufrag == b.transport.ice_ufrag
    answer = a.create_answer()
    assert answer.media[0].ice_ufrag == a.transport.ice_ufrag != "srvufrag"
    assert len(a.transport.ice_pwd) >= 22
    changes = b.set_remote_description(str(answer), "answer")
    assert changes.ice_restart and b.remote_ice_ufrag == a.transport.ice_ufrag
    assert a.dtls_role == "server" and b.dtls_role == "client"  # DTLS untouched
    changes = a.set_remote_description(str(b.create_offer()), "offer")
    assert not changes.ice_restart


def test_same_seed_same_sdp() -> None:
    def run() -> str:
        a = server(seed=9)
        answer_offer(a, fixture("chromium-subscriber-offer"))
        _audio_video_pairs(a, 1)
        return str(a.create_offer())

    assert run() == run()


# -- validation of remote answers --------------------------------------------------------------


def _pending_offer() -> tuple[JsepSession, JsepSession, SessionDescription]:
    a, b = server(), client()
    b.add_data_channel()
    _negotiate(b, a)
    _audio_video_pairs(a, 1)
    offer = a.create_offer()
    b.set_remote_description(str(offer), "offer")
    return a, b, b.create_answer()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.media.pop(), "does not have the offer's m-sections"),
        (lambda d: setattr(d.media[1], "mid", "x"), "answer mid differs"),
        (lambda d: setattr(d.media[1], "kind", "video"), "answer has kind video"),
        (lambda d: [setattr(m, "setup", "actpass") for m in d.media], "a=setup:actpass"),
        (lambda d: setattr(d, "groups", []), "does not BUNDLE"),
        (lambda d: d.media[2].set_codecs([RtpCodec(33, "MP2T", 90000)]), "no codec we offered"),
        (lambda d: setattr(d.media[1], "rtcp_mux", False), "rtcp-mux is required"),
        (lambda d: [setattr(m, "fingerprints", []) for m in d.media], "no a=fingerprint"),
        (lambda d: [setattr(m, "setup", "passive") for m in d.media], "change the DTLS role"),
    ],
)
def test_invalid_answer_raises_and_keeps_the_offer_pending(
        mutate: Callable[[SessionDescription], object], message: str) -> None:
    a, _, answer = _pending_offer()
    bad = parse(str(answer))
    mutate(bad)
    with pytest.raises(SdpError, match=message):
        a.set_remote_description(bad, "answer")
    assert a.signaling_state == "have-local-offer"
    assert all(t.current_direction is None for t in a.transceivers)
    a.set_remote_description(answer, "answer")
    assert [t.current_direction for t in a.transceivers] == ["sendonly", "sendonly"]


def test_answer_rejecting_a_section_stops_the_transceiver() -> None:
    a, _, answer = _pending_offer()
    answer.media[2].port = 0
    answer.groups[0].mids.remove("2")
    changes = a.set_remote_description(answer, "answer")
    video = a.transceivers[1]
    assert changes.stopped == [video] and video.stopped and video.current_direction is None
    offer = a.create_offer()
    assert offer.media[2].port == 0


def test_answer_accepting_a_rejected_section_is_taken_as_rejecting_it() -> None:
    """aiortc and libdatachannel answer a stopped section with a live port (issue 8): what we
    offered decides, the deviation is reported once in the changes, and nothing else moves."""
    a, b = server(), client()
    b.add_data_channel()
    _negotiate(b, a)
    t = a.add_transceiver("audio", "sendonly")
    kept = a.add_transceiver("video", "sendonly")
    _negotiate(a, b)
    a.stop_transceiver(t)
    offer = a.create_offer()
    b.set_remote_description(str(offer), "offer")
    answer = b.create_answer()
    answer.media[1].port = 9
    answer.media[1].direction = "recvonly"
    answer.groups[0].mids.append("1")
    changes = a.set_remote_description(str(answer), "answer")
    assert a.signaling_state == "stable"
    assert changes.tolerated == ["m-section 1 (mid '1'): answer accepts a section the offer "
                                 "rejected; taken as rejected"]
    assert t.stopped and t.current_direction is None and not t.sending
    assert kept.current_direction == "sendonly" and not kept.stopped
    recycled = a.add_transceiver("video", "sendonly")
    again = a.create_offer()
    assert again.media[1].port != 0 and again.media[1].mid == "3" and recycled.mid == "3"


# -- capabilities ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile_level_id", "profile"),
    [("42e01f", "constrained-baseline"), ("42c01f", "constrained-baseline"),
     ("4d801f", "constrained-baseline"), ("4d401f", "main"), ("42001f", "baseline"),
     ("4d001f", "main"),
     ("640c1f", "constrained-high"), ("64001f", "high"), ("f4001f", "predictive-high-444"),
     ("zz001f", None), ("42e0", None), ("6e001f", None)],
)
def test_h264_profiles(profile_level_id: str, profile: str | None) -> None:
    assert h264_profile({"profile-level-id": profile_level_id}) == profile
    assert h264_profile({}) == "baseline"  # RFC 6184 §8.1 default 42000a


def test_codec_matching_rules() -> None:
    cb = CodecCapability("H264", 90000, None,
                         "packetization-mode=1;profile-level-id=42e01f", [], 108)
    assert codec_matches(RtpCodec(1, "h264", 90000, None,
                                  "profile-level-id=42e034;packetization-mode=1"), cb)  # level
    assert not codec_matches(RtpCodec(1, "H264", 90000, None, "profile-level-id=42e01f"), cb)
    assert not codec_matches(RtpCodec(1, "H264", 90000, None,
                                      "packetization-mode=1;profile-level-id=4d001f"), cb)
    vp9 = CodecCapability("VP9", 90000, None, "profile-id=0")
    assert codec_matches(RtpCodec(1, "VP9", 90000), vp9)
    assert not codec_matches(RtpCodec(1, "VP9", 90000, None, "profile-id=2"), vp9)
    opus = CodecCapability("opus", 48000, 2)
    assert not codec_matches(RtpCodec(1, "opus", 48000), opus)  # mono opus is not opus/2
    assert not codec_matches(RtpCodec(1, "opus", 8000, 2), opus)


def test_negotiate_codecs_pairs_rtx_with_kept_codecs_only() -> None:
    offered = [RtpCodec(100, "VP8", 90000, None, None, ["nack", "x-unknown", "NACK  PLI"]),
               RtpCodec(101, "rtx", 90000, None, "apt=100"),
               RtpCodec(102, "rtx", 90000, None, "apt=103"),
               RtpCodec(103, "red", 90000),
               RtpCodec(104, "rtx", 90000, None, "apt=100")]
    assert negotiate_codecs(offered, DEFAULT_VIDEO_CODECS) == [
        RtpCodec(100, "VP8", 90000, None, None, ["nack", "NACK  PLI"]),
        RtpCodec(101, "rtx", 90000, None, "apt=100")]


def test_id_allocator() -> None:
    ids = IdAllocator(range(128), range(96, 98))
    assert ids.allocate("vp8", 96, {}) == 96
    assert ids.allocate("vp9", 96, {}) == 97  # preferred taken
    assert ids.allocate("vp8", None, {}) == 96  # sticky
    assert ids.allocate("h264", None, {96: "vp8", 97: "vp9"}) is None  # all in use
    assert ids.allocate("h264", None, {97: "vp9"}) == 96  # evicts an id nobody uses
    ids.register(97, "av1")
    assert ids.lookup("vp9") is None and ids.lookup("av1") == 97


# -- interop with aiortc (an independent JSEP implementation, tests only) ----------------------


def test_aiortc_offer_answered_by_us() -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    async def main() -> None:
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("audio", direction="sendonly")
            pc.addTransceiver("video", direction="sendonly")
            pc.createDataChannel("chat")
            await pc.setLocalDescription(await pc.createOffer())
            s = server()
            answer = answer_offer(s, pc.localDescription.sdp)
            assert [t.current_direction for t in s.transceivers] == ["recvonly", "recvonly"]
            assert [c.name for c in s.transceivers[1].media_codecs] == ["VP8", "H264", "H264"]
            await pc.setRemoteDescription(RTCSessionDescription(str(answer), "answer"))
            audio, video = pc.getTransceivers()
            assert audio.currentDirection == video.currentDirection == "sendonly"
            assert [c.mimeType for c in video._codecs if "rtx" not in c.mimeType] == [
                "video/VP8", "video/H264", "video/H264"]
            assert pc.sctp is not None
        finally:
            await pc.close()

    asyncio.run(main())


def test_our_offer_answered_by_aiortc() -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    async def main() -> None:
        pc = RTCPeerConnection()
        try:
            s = server()
            s.add_data_channel()
            audio, video = _audio_video_pairs(s, 1)
            offer = s.create_offer()
            await pc.setRemoteDescription(RTCSessionDescription(str(offer), "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            changes = s.set_remote_description(pc.localDescription.sdp, "answer")
            assert changes.stopped == [] and s.data_mid == "2"
            assert audio.current_direction == video.current_direction == "sendonly"
            assert [c.name for c in audio.codecs] == ["opus"]
            assert [c.name for c in video.media_codecs] == ["VP8", "H264", "H264"]
            assert video.rtx_payload_type(96) == 97
            assert s.dtls_role in ("client", "server")
            remote = pc.getTransceivers()
            assert [t.currentDirection for t in remote] == ["recvonly", "recvonly"]
        finally:
            await pc.close()

    asyncio.run(main())


def test_stopped_section_keeps_its_full_form_until_recycled() -> None:
    """A section stopped in one round is still written in full in later offers (RFC 8829
    §5.2.2) while it waits to be recycled; every stack that refused the bare form needs that."""
    a, b = server(), client()
    b.add_data_channel()
    _negotiate(b, a)
    audio, video = a.add_transceiver("audio", "sendonly"), a.add_transceiver("video", "sendonly")
    _negotiate(a, b)
    a.stop_transceiver(audio)
    a.stop_transceiver(video)
    _negotiate(a, b)
    fresh = a.add_transceiver("audio", "sendonly")
    offer, answer = _negotiate(a, b)
    assert fresh.mline_index == 1 and offer.media[1].port != 0
    waiting = offer.media[2]
    assert (waiting.port, waiting.mid, waiting.direction) == (0, "2", "inactive")
    assert [c.name for c in waiting.codecs if not c.is_rtx] == [
        c.name for c in video.media_codecs]
    assert waiting.ice_ufrag == offer.media[0].ice_ufrag and waiting.fingerprints
    assert waiting.setup == "actpass" and waiting.msid == [] and waiting.candidates == []
    assert offer.groups[0].mids == ["0", "3"] and answer.media[2].port == 0


def test_recycling_can_be_turned_off() -> None:
    a, b = server(), client()
    b.add_data_channel()
    _negotiate(b, a)
    a.recycle = False
    video = a.add_transceiver("video", "sendonly")
    _negotiate(a, b)
    a.stop_transceiver(video)
    _negotiate(a, b)
    fresh = a.add_transceiver("video", "sendonly")
    offer, _ = _negotiate(a, b)
    assert [m.port == 0 for m in offer.media] == [False, True, False]
    assert fresh.mline_index == 2 and offer.media[1].mid == video.mid
