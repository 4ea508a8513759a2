"""WHIP ingest (RFC 9725) and WHEP egress (draft-ietf-wish-whep-03) over the SFU.

``POST /whip/{room}`` publishes into a room like a seed-API publisher; ``POST /whep/{room}``
watches the room's live publisher (``/whep/{room}/{publisher}`` one named publisher). Each
answer creates a session resource (``Location: /sessions/<id>``) that takes ``PATCH`` with a
trickle-ice-sdpfrag (new candidates, or new credentials for an ICE restart) and ``DELETE``.

The HTTP layer is strict where interoperability depends on it — content types, the offer's
shape, preconditions — and leaves media decisions to the SFU (``Sfu.publish``/``Sfu.whep``
build the answers). Every refusal is a 4xx with a sentence saying why.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from quart import Blueprint, Response, request
from werkzeug.exceptions import UnprocessableEntity

from trio_sfu.auth import Claims
from trio_sfu.config import IceServer
from trio_sfu.http.errors import error_response
from trio_sfu.http.forwarding import (
    Forwarder,
    forward_current,
    forward_new_session,
    is_forwarded,
)
from trio_sfu.http.guard import Guard
from trio_sfu.http.ice_servers import IceServerList, ice_server_list
from trio_sfu.http.limits import MAX_BODY, SDP_TYPE, check_name, read_sdp
from trio_sfu.http.sessions import (
    PRUNE_PER_CREATE,
    Session,
    SessionKind,
    Sessions,
    answer_transport,
    etag_for,
    if_match_allows,
)
from trio_sfu.http.signaling import PublishApi
from trio_sfu.proto.sdp import MediaSection, SessionDescription
from trio_sfu.proto.sdp import parse as parse_sdp
from trio_sfu.proto.sdp.frag import build_frag, parse_frag
from trio_sfu.sfu.errors import BadRequest, Conflict, NotFound, SfuError, Unavailable
from trio_sfu.sfu.model import Role

log = logging.getLogger(__name__)

FRAG_TYPE = "application/trickle-ice-sdpfrag"
#: Retry-After (seconds) for new sessions while the node drains, and for WHEP with no
#: publisher yet when the SFU did not say.
RETRY_AFTER = 2


@runtime_checkable
class WhipSfuApi(PublishApi, Protocol):
    """What WHIP/WHEP need from the SFU beyond the seed API (README.md, "WHIP and WHEP")."""

    async def whep(
        self,
        room: str,
        peer_id: str,
        offer_sdp: str,
        *,
        publisher_id: str | None = None,
        source: str | None = None,
    ) -> str: ...

    def ice_credentials(self, role: Role, room: str, peer_id: str) -> tuple[str, str]: ...

    def restart_ice(
        self, role: Role, room: str, peer_id: str, remote_ufrag: str, remote_pwd: str
    ) -> tuple[str, str]: ...


# -- what an offer must look like ---------------------------------------------------------------


def _media(desc: SessionDescription) -> list[MediaSection]:
    return [m for m in desc.media if m.kind in ("audio", "video") and not m.stopped]


def check_whip_offer(desc: SessionDescription) -> None:
    """RFC 9725 ("WebRTC constraints"): one MediaStream with at most one audio and one video
    track, sent by the client (sendonly, or sendrecv). 422 says which rule the offer broke."""
    media = _media(desc)
    if not media:
        raise UnprocessableEntity("a WHIP offer needs an audio or a video m-section")
    for kind in ("audio", "video"):
        count = sum(1 for m in media if m.kind == kind)
        if count > 1:
            raise UnprocessableEntity(
                f"a WHIP offer carries at most one {kind} m-section, this one has {count}"
            )
    for m in media:
        direction = desc.effective_direction(m)
        if direction not in ("sendonly", "sendrecv"):
            raise UnprocessableEntity(
                f"m={m.kind} (mid {m.mid}) is {direction}: a WHIP client sends its media "
                "(sendonly)"
            )
    streams = _stream_ids(media)
    if len(streams) > 1:
        raise UnprocessableEntity(
            f"a WHIP offer carries one MediaStream, this one has {len(streams)}: "
            + ", ".join(sorted(streams)[:4])
        )


def check_whep_offer(desc: SessionDescription) -> None:
    """draft-ietf-wish-whep-03 §4.2: the viewer receives (recvonly, or sendrecv)."""
    media = _media(desc)
    if not media:
        raise UnprocessableEntity("a WHEP offer needs an audio or a video m-section")
    for m in media:
        direction = desc.effective_direction(m)
        if direction not in ("recvonly", "sendrecv"):
            raise UnprocessableEntity(
                f"m={m.kind} (mid {m.mid}) is {direction}: a WHEP viewer receives (recvonly)"
            )


def _stream_ids(media: list[MediaSection]) -> set[str]:
    """MediaStream ids from a=msid (RFC 8830 §2; "-" means none) and legacy a=ssrc msid."""
    streams: set[str] = set()
    for m in media:
        for stream, _track in m.msid:
            if stream != "-":
                streams.add(stream)
        for ssrc in m.ssrcs:
            if ssrc.name == "msid" and ssrc.value:
                stream = ssrc.value.split()[0]
                if stream != "-":
                    streams.add(stream)
    return streams


def _client_credentials(desc: SessionDescription) -> tuple[str | None, str | None]:
    group = desc.bundle_group()
    first = desc.media_by_mid(group.mids[0]) if group is not None and group.mids else None
    if first is None:
        live = _media(desc) or desc.media
        if not live:
            return desc.ice_ufrag, desc.ice_pwd
        first = live[0]
    return desc.effective_ice_ufrag(first), desc.effective_ice_pwd(first)


# -- the routes ---------------------------------------------------------------------------------


def whip_blueprint(
    sfu: WhipSfuApi,
    guard: Guard,
    *,
    ice_servers: Sequence[IceServer] | IceServerList = (),
    sessions: Sessions | None = None,
    forwarder: Forwarder | None = None,
) -> Blueprint:
    bp = Blueprint("whip", __name__)
    if sessions is None:
        sessions = Sessions(forwarder.node_id if forwarder is not None else None)
    table = sessions
    servers = ice_server_list(ice_servers)

    def prune() -> None:
        """Forget sessions whose connection the SFU already ended (a consent timeout, a
        STOP): a few per POST, so the table tracks the SFU without a task of its own."""
        for session in table.oldest(PRUNE_PER_CREATE):
            try:
                sfu.ice_credentials(session.role, session.room, session.peer_id)
            except NotFound:
                table.remove(session)
            else:
                table.rotate(session)

    def draining() -> None:
        if getattr(sfu, "draining", False):
            raise Unavailable("the server is draining: retry on another node",
                              retry_after=RETRY_AFTER)

    async def create(kind: SessionKind, room: str, publisher: str | None) -> Response:
        claims = guard.authenticate()
        check_name("room", room)
        if publisher is not None:
            check_name("publisher", publisher)
        guard.authorize(claims, "publish" if kind == "whip" else "subscribe", room)
        elsewhere = await forward_new_session(forwarder, getattr(sfu, "draining", False))
        if elsewhere is not None:
            return elsewhere
        draining()
        offer = await read_sdp(request)
        desc = parse_sdp(offer)
        if kind == "whip":
            check_whip_offer(desc)
        else:
            check_whep_offer(desc)
        prune()
        peer_id = _peer_id(claims, kind)
        source = request.remote_addr  # admission limits count sessions per client address
        if kind == "whip":
            answer = await sfu.publish(room, peer_id, offer, source=source)
        else:
            try:
                answer = await sfu.whep(
                    room, peer_id, offer, publisher_id=publisher, source=source
                )
            except Conflict as error:
                if error.retry_after is None:  # no live publisher: tell the viewer when to retry
                    error.retry_after = RETRY_AFTER
                raise
        remote_ufrag, remote_pwd = _client_credentials(desc)
        server = answer_transport(answer)
        session = table.create(
            kind,
            room,
            peer_id,
            owner=claims.identity if claims is not None else None,
            remote_ufrag=remote_ufrag,
            remote_pwd=remote_pwd,
            server=server,
        )
        if server.ice_ufrag is not None and server.ice_pwd is not None:
            etag = etag_for(server.ice_ufrag, server.ice_pwd)
        else:
            etag = etag_for(*sfu.ice_credentials(session.role, room, peer_id))
        response = Response(answer, status=201, content_type=SDP_TYPE)
        response.headers["Location"] = session.url
        response.headers["ETag"] = etag
        # RFC 9725 §4.6: one Link per STUN/TURN server (RFC 8288), TURN credentials fresh.
        for link in servers.links(claims.identity if claims is not None else None):
            response.headers.add("Link", link)
        log.info("%s session created", kind.upper(), extra=session.log_extra)
        return response

    def session_for(session_id: str) -> tuple[Session, Claims | None]:
        """401, then 404 for an unknown session, then 403 (another room, grant or identity)."""
        claims = guard.authenticate()
        session = table.get(session_id)
        if session is None:
            raise NotFound("no such session (it ended, or never existed)")
        guard.authorize(claims, session.grant, session.room)
        guard.authorize_owner(claims, session.owner, "this session")
        return session, claims

    def current_credentials(session: Session) -> tuple[str, str]:
        try:
            return sfu.ice_credentials(session.role, session.room, session.peer_id)
        except NotFound:
            table.remove(session)  # the connection ended on its own
            raise NotFound("no such session (its connection has ended)") from None

    async def delete_session(session_id: str) -> Response:
        # RFC 9725: DELETE ends the session; clients should not send If-Match, and it is
        # ignored when they do.
        session, _ = session_for(session_id)
        try:
            await sfu.stop(session.role, session.room, session.peer_id)
        except NotFound:
            pass  # already gone on its own: the resource is gone all the same
        # (any other refusal propagates and leaves the session in place, to be retried)
        table.remove(session)
        log.info("%s session deleted", session.kind.upper(), extra=session.log_extra)
        return Response("", status=200)

    async def patch_session(session_id: str) -> Response:
        session, _ = session_for(session_id)
        if request.mimetype != FRAG_TYPE:
            got = request.headers.get("Content-Type")
            response = error_response(
                415, f"415 Content-Type must be {FRAG_TYPE}" + (f", got {got!r}" if got else "")
            )
            response.headers["Accept-Patch"] = FRAG_TYPE
            return response
        if_match = request.headers.getlist("If-Match")
        if not if_match:
            # RFC 9725 (ICE support): trickle sends the ETag it got, a restart sends "*".
            return error_response(428, "428 If-Match is required (the session's ETag, or *)")
        ufrag, pwd = current_credentials(session)
        etag = etag_for(ufrag, pwd)
        if not if_match_allows(if_match, etag):
            return error_response(
                412, "412 If-Match does not match the session's ETag (an ICE restart changed it)"
            )
        data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        if len(data) > MAX_BODY:
            raise BadRequest("fragment too large")
        frag = parse_frag(data)  # SdpError -> 400
        if frag.ice_ufrag is None or frag.ice_ufrag == session.remote_ufrag:
            if frag.ice_pwd is not None and session.remote_pwd is not None and (
                frag.ice_pwd != session.remote_pwd
            ):
                raise BadRequest("a new ice-pwd needs a new ice-ufrag (RFC 8839 §4.4.1.1.1)")
            # Trickle: an ICE-lite server checks nothing itself (RFC 8445 §2.5), so the
            # candidates only need to be well-formed; the client's checks find us.
            return Response("", status=204)
        if frag.ice_pwd is None:
            raise BadRequest("an ICE restart (new ice-ufrag) needs the new ice-pwd too")
        new_ufrag, new_pwd = restart(session, frag.ice_ufrag, frag.ice_pwd)
        answer = build_frag(
            new_ufrag,
            new_pwd,
            candidates=session.server.candidates,
            mid=session.server.mid,
            kind=session.server.kind,
            bundle=session.server.bundle,
            ice_lite=session.server.ice_lite,
        )
        response = Response(answer.serialize(), status=200, content_type=FRAG_TYPE)
        response.headers["ETag"] = etag_for(new_ufrag, new_pwd)
        log.info("ICE restart", extra=session.log_extra)
        return response

    def restart(session: Session, ufrag: str, pwd: str) -> tuple[str, str]:
        try:
            new = sfu.restart_ice(session.role, session.room, session.peer_id, ufrag, pwd)
        except NotFound:
            table.remove(session)
            raise NotFound("no such session (its connection has ended)") from None
        except SfuError:
            raise  # refused: the old credentials and ETag stay as they were
        session.remote_ufrag, session.remote_pwd = ufrag, pwd
        return new

    # -- routes (OPTIONS is ours, not Quart's automatic one: it carries Accept-Post/-Patch) --

    @bp.post("/whip/<room>", provide_automatic_options=False)
    async def post_whip(room: str) -> Response:
        return await create("whip", room, None)

    @bp.post("/whep/<room>", provide_automatic_options=False)
    async def post_whep(room: str) -> Response:
        return await create("whep", room, None)

    @bp.post("/whep/<room>/<publisher>", provide_automatic_options=False)
    async def post_whep_publisher(room: str, publisher: str) -> Response:
        return await create("whep", room, publisher)

    @bp.route("/whip/<room>", methods=["OPTIONS"])
    @bp.route("/whep/<room>", methods=["OPTIONS"])
    @bp.route("/whep/<room>/<publisher>", methods=["OPTIONS"])
    async def options_endpoint(room: str, publisher: str | None = None) -> Response:
        # RFC 9725: OPTIONS needs no token and says what a POST takes (Accept-Post, from
        # W3C Linked Data Platform); preflights are answered earlier, by the CORS layer.
        response = Response("", status=200)
        response.headers["Accept-Post"] = SDP_TYPE
        response.headers["Allow"] = "OPTIONS, POST"
        return response

    async def elsewhere(session_id: str) -> Response | None:
        """Cluster mode: the owning pod's answer to a request about a session held there."""
        if forwarder is None or table.get(session_id) is not None or is_forwarded():
            return None
        node = Sessions.node_of(session_id)
        if node is None or node == forwarder.node_id:
            return None
        guard.authenticate()  # 401 here, as the owner would say it
        return await forward_current(forwarder, node)

    @bp.delete("/sessions/<session_id>", provide_automatic_options=False)
    async def delete(session_id: str) -> Response:
        forwarded = await elsewhere(session_id)
        return forwarded if forwarded is not None else await delete_session(session_id)

    @bp.patch("/sessions/<session_id>", provide_automatic_options=False)
    async def patch(session_id: str) -> Response:
        forwarded = await elsewhere(session_id)
        return forwarded if forwarded is not None else await patch_session(session_id)

    @bp.route("/sessions/<session_id>", methods=["OPTIONS"])
    async def options_session(session_id: str) -> Response:
        response = Response("", status=200)
        response.headers["Accept-Patch"] = FRAG_TYPE  # RFC 5789 §3.1
        response.headers["Allow"] = "OPTIONS, PATCH, DELETE"
        return response

    return bp


def _peer_id(claims: Claims | None, kind: SessionKind) -> str:
    """The seed's unique-id rule: ``<identity>-<random suffix>`` (so seed-API subscribers
    see a WHIP publisher as ``PUB_JOIN alice-3f9a0c1d``)."""
    user = claims.identity if claims is not None else kind
    return f"{user}-{secrets.token_hex(4)}"


__all__ = [
    "FRAG_TYPE",
    "WhipSfuApi",
    "check_whep_offer",
    "check_whip_offer",
    "whip_blueprint",
]
