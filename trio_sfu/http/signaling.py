"""The seed's signaling API: one POST per connection, DELETE to leave, and the room lists.

Handlers only validate and translate: the SFU decides everything else and reports refusals as
:class:`~trio_sfu.sfu.errors.SfuError` or :class:`~trio_sfu.proto.errors.SdpError`, which the
app's error handlers turn into statuses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from quart import Blueprint, Response, request

from trio_sfu.auth import ANY_ROOM, Claims
from trio_sfu.http.forwarding import (
    Forwarder,
    forward_current,
    forward_new_session,
    is_forwarded,
)
from trio_sfu.http.guard import Guard, forbidden
from trio_sfu.http.ice_servers import IceServerList
from trio_sfu.http.limits import SDP_TYPE, check_name, read_sdp
from trio_sfu.sfu.dc_protocol import user_of
from trio_sfu.sfu.errors import NotFound
from trio_sfu.sfu.model import Role

log = logging.getLogger(__name__)



class PublishApi(Protocol):
    """Joining as a publisher and leaving: what the seed API and WHIP share."""

    async def publish(
        self,
        room: str,
        peer_id: str,
        offer_sdp: str,
        *,
        source: str | None = None,
        app_ids: Sequence[str] = (),
    ) -> str: ...

    async def stop(self, role: Role, room: str, peer_id: str) -> None: ...


class SfuApi(PublishApi, Protocol):
    """What the HTTP layer needs from the SFU (``trio_sfu.sfu.service.Sfu`` provides it)."""

    async def subscribe(
        self, room: str, peer_id: str, offer_sdp: str, *, source: str | None = None
    ) -> str: ...

    async def list_rooms(self) -> list[dict[str, Any]]: ...

    async def room_info(self, room: str) -> dict[str, Any]: ...


def signaling_blueprint(
    sfu: SfuApi,
    guard: Guard | None = None,
    forwarder: Forwarder | None = None,
    *,
    ice_servers: IceServerList | None = None,
) -> Blueprint:
    bp = Blueprint("signaling", __name__)
    guard = guard if guard is not None else Guard(None)
    servers = ice_servers if ice_servers is not None else IceServerList()

    def allow(role: Role, room: str, peer_id: str) -> Claims | None:
        """401, then 400 for bad names, then 403 (see :mod:`trio_sfu.http.guard`)."""
        claims = guard.authenticate()
        check_name("room", room)
        check_name("id", peer_id)
        guard.authorize(claims, "publish" if role == "pub" else "subscribe", room)
        if claims is not None and not claims.admin and user_of(peer_id) != claims.identity:
            # The seed's id rule ties a connection to its user; a token ties it to one user.
            raise forbidden(f"the id must be {claims.identity}-<suffix> for this token")
        return claims

    async def offer(role: Role, room: str, peer_id: str) -> Response:
        claims = allow(role, room, peer_id)
        elsewhere = await forward_new_session(forwarder, getattr(sfu, "draining", False))
        if elsewhere is not None:
            return elsewhere
        sdp = await read_sdp(request)
        source = request.remote_addr  # admission limits count sessions per client address
        if role == "pub":
            # ?app_ids=mic,screen labels the offer's media sections in order (issue 15): a
            # screen shared alone, or tracks re-published after RECONNECT, keep their labels.
            raw = request.args.get("app_ids", "")
            app_ids = raw.split(",") if raw else []
            answer = await sfu.publish(room, peer_id, sdp, source=source, app_ids=app_ids)
        else:
            answer = await sfu.subscribe(room, peer_id, sdp, source=source)
        response = Response(answer, status=201, content_type=SDP_TYPE)
        # The connection's resource: DELETE it to leave (WHIP, RFC 9725 §4.2, does the same).
        response.headers["Location"] = f"/{role}/{room}/{peer_id}"
        # As WHIP does (RFC 9725 §4.6): the STUN/TURN servers, TURN credentials for this user,
        # for a client's next connection or ICE restart (GET /ice-servers gives them before).
        identity = claims.identity if claims is not None else user_of(peer_id)
        for link in servers.links(identity):
            response.headers.add("Link", link)
        return response

    async def stop(role: Role, room: str, peer_id: str) -> Response:
        allow(role, room, peer_id)
        try:
            await sfu.stop(role, room, peer_id)
        except NotFound:
            if forwarder is None or is_forwarded():
                raise
            # Cluster mode: the connection may live on another pod; its claim says which.
            owner = await forwarder.owner_of(peer_id)
            if owner is None:
                raise NotFound(f"no connection {peer_id} on any live pod") from None
            if owner == forwarder.node_id:
                raise
            return await forward_current(forwarder, owner)
        return Response("", status=204)

    @bp.post("/pub/<room>/<peer_id>")
    async def post_pub(room: str, peer_id: str) -> Response:
        return await offer("pub", room, peer_id)

    @bp.post("/sub/<room>/<peer_id>")
    async def post_sub(room: str, peer_id: str) -> Response:
        return await offer("sub", room, peer_id)

    @bp.delete("/pub/<room>/<peer_id>")
    async def delete_pub(room: str, peer_id: str) -> Response:
        return await stop("pub", room, peer_id)

    @bp.delete("/sub/<room>/<peer_id>")
    async def delete_sub(room: str, peer_id: str) -> Response:
        return await stop("sub", room, peer_id)

    @bp.get("/rooms")
    async def get_rooms() -> dict[str, Any]:
        claims = guard.authenticate()
        if claims is None:
            return {"rooms": await sfu.list_rooms()}
        if not claims.admin:
            raise forbidden("listing rooms needs an admin token")
        rooms = await sfu.list_rooms()
        if claims.room != ANY_ROOM:
            rooms = [r for r in rooms if r.get("room") == claims.room]
        return {"rooms": rooms}

    @bp.get("/rooms/<room>")
    async def get_room(room: str) -> dict[str, Any]:
        claims = guard.authenticate()
        check_name("room", room)
        guard.authorize(claims, None, room)
        return await sfu.room_info(room)

    return bp
