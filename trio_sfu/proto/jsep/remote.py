"""Reading a remote description: transport parameters, what the peer sends, simulcast."""

from __future__ import annotations

from dataclasses import dataclass

from aioice import Candidate

from ..errors import SdpError
from ..sdp import (
    Direction,
    MediaSection,
    Rid,
    RtpCodec,
    SessionDescription,
    Simulcast,
    SimulcastRid,
)
from .simulcast import simulcast_layers
from .types import Transceiver

_HASHES = frozenset(("sha-1", "sha-224", "sha-256", "sha-384", "sha-512"))


@dataclass(slots=True)
class RemoteTransport:
    """The peer's ICE/DTLS parameters, taken from the BUNDLE-tag m-section."""

    ufrag: str
    pwd: str
    fingerprints: list[tuple[str, str]]
    setup: str
    candidates: list[Candidate]
    end_of_candidates: bool
    ice_lite: bool


def intersect(ours: Direction, theirs_reversed: Direction) -> Direction:
    """RFC 8829 §5.3.1: the answer may only send/receive where both sides allow it."""
    send = ours in ("sendrecv", "sendonly") and theirs_reversed in ("sendrecv", "sendonly")
    recv = ours in ("sendrecv", "recvonly") and theirs_reversed in ("sendrecv", "recvonly")
    if send and recv:
        return "sendrecv"
    return "sendonly" if send else "recvonly" if recv else "inactive"


def fail(media: MediaSection, index: int, problem: str) -> SdpError:
    """An SdpError that names the m-section, so a signaling log shows what the peer got wrong."""
    return SdpError(f"m-section {index} (mid {media.mid!r}): {problem}")


def remote_transport(desc: SessionDescription, m: MediaSection, index: int,
                      answer: bool) -> RemoteTransport:
    """ICE (RFC 8839 §5.4) and DTLS (RFC 8842 §5) parameters of the bundle's transport."""
    ufrag, pwd = desc.effective_ice_ufrag(m), desc.effective_ice_pwd(m)
    if ufrag is None or pwd is None:
        raise fail(m, index, "missing a=ice-ufrag or a=ice-pwd")
    if not 4 <= len(ufrag) <= 256 or not 22 <= len(pwd) <= 256:
        raise fail(m, index, "ice-ufrag must be 4-256 and ice-pwd 22-256 characters")
    fingerprints = desc.effective_fingerprints(m)
    if not any(alg.lower() in _HASHES for alg, _ in fingerprints):
        raise fail(m, index, "no a=fingerprint with a known hash function")
    setup = desc.effective_setup(m) or "active"  # RFC 4145 §4: absent means active
    allowed = ("active", "passive") if answer else ("actpass", "active", "passive")
    if setup not in allowed:
        what = "an answer" if answer else "an offer"
        raise fail(m, index, f"a=setup:{setup} is not allowed in {what}")
    return RemoteTransport(
        ufrag, pwd, list(fingerprints), setup,
        [c for c in m.candidates if c.component == 1], m.end_of_candidates, desc.ice_lite,
    )


def record_remote(t: Transceiver, m: MediaSection) -> None:
    """Remember what the peer sends on this section (RFC 5576 ssrc, RFC 8830 msid)."""
    rtx = {g.ssrcs[1]: g.ssrcs[0] for g in m.ssrc_groups
           if g.semantics.upper() == "FID" and len(g.ssrcs) == 2}
    ssrcs: list[int] = []
    for attr in m.ssrcs:
        if attr.ssrc not in rtx and attr.ssrc not in ssrcs:
            ssrcs.append(attr.ssrc)
    t.remote_ssrcs = ssrcs
    t.remote_rtx_ssrcs = {media: repair for repair, media in rtx.items()}
    t.remote_cname = next((a.value for a in m.ssrcs if a.name == "cname"), None)
    t.remote_msid = m.msid[0] if m.msid else None
    if t.remote_msid is None:  # legacy form: a=ssrc:<ssrc> msid:<stream> <track>
        legacy = next((a.value.split() for a in m.ssrcs if a.name == "msid" and a.value), None)
        if legacy:
            t.remote_msid = (legacy[0], legacy[1] if len(legacy) > 1 else None)
    if m.simulcast is not None and m.simulcast.send:
        t.remote_rids = simulcast_layers(m)  # lowest quality first (issue 11)
        t.remote_simulcast = m.simulcast
    else:
        t.remote_rids, t.remote_simulcast = [], None


def simulcast_answer(m: MediaSection, codecs: list[RtpCodec],
                      direction: Direction) -> tuple[list[Rid], Simulcast | None]:
    """RFC 8853 §5.3: `a=simulcast:send q;h;f` + `a=rid:q send` is answered by the mirror."""
    if m.simulcast is None or not m.simulcast.send or direction not in ("sendrecv", "recvonly"):
        return [], None
    offered = {r.id: r for r in m.rids if r.direction == "send"}
    kept = {c.payload_type for c in codecs}
    rids: list[Rid] = []
    streams: list[list[SimulcastRid]] = []
    for alternatives in m.simulcast.send:
        alts: list[SimulcastRid] = []
        for alt in alternatives:
            rid = offered.get(alt.rid)
            if rid is None or any(r.id == alt.rid for r in rids):
                continue
            params = rid.params
            if rid.payload_types:  # RFC 8851 §6: only formats that survived negotiation
                pts = [str(pt) for pt in rid.payload_types if pt in kept]
                if not pts:
                    continue
                restrictions = {**rid.restrictions, "pt": ",".join(pts)}
                params = ";".join(k if v == "" else f"{k}={v}" for k, v in restrictions.items())
            alts.append(SimulcastRid(alt.rid, alt.paused))
            rids.append(Rid(alt.rid, "recv", params))
        if alts:
            streams.append(alts)
    return (rids, Simulcast(recv=streams)) if streams else ([], None)
