"""WHIP/WHEP sessions as HTTP resources: unguessable ids, ETags and If-Match (RFC 9725).

The SFU knows connections by (role, room, peer id); the HTTP layer hands clients a session URL
instead, so that the URL is a capability (unguessable, as RFC 9725 asks) and the peer id never
has to be exposed. The ETag of a session names its current ICE credentials (RFC 9725, "ICE
support": a strong entity-tag per ICE session): it changes exactly when an ICE restart gives
the session new ones, which is what ``If-Match`` protects against (a trickle PATCH that arrives
after a restart must not apply to the new generation).

This table lives in one process. In cluster mode a session id ends with ``.<node>``, the pod
that holds it, so any pod can forward the session's PATCH/DELETE there without a lookup
(:mod:`trio_sfu.http.forwarding`; node ids match ``[A-Za-z0-9_.-]`` and the random part never
holds a ``.``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from aioice import Candidate

from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.sdp import SessionDescription
from trio_sfu.proto.sdp import parse as parse_sdp
from trio_sfu.sfu.model import Role

#: which protocol a session belongs to (not rtc.demux.Kind, the kind of a datagram)
SessionKind = Literal["whip", "whep"]
#: The prefix of every session URL (one namespace for WHIP and WHEP: no room name can clash).
SESSION_PATH = "/sessions/"
#: How many sessions one POST checks for peers the SFU already forgot (consent timeout, STOP).
PRUNE_PER_CREATE = 8


def etag_for(ufrag: str, pwd: str) -> str:
    """A strong entity-tag (RFC 9110 §8.8.3) that changes with the ICE credentials and does not
    reveal the password."""
    digest = hashlib.sha256(f"{ufrag}:{pwd}".encode()).hexdigest()[:32]
    return f'"{digest}"'


def if_match_allows(values: list[str], current: str) -> bool:
    """RFC 9110 §13.1.1: ``*`` or a list of entity-tags compared strongly (weak ones never
    match). A malformed field matches nothing."""
    tags = [t.strip() for v in values for t in v.split(",") if t.strip()]
    if tags == ["*"]:
        return True
    return current in tags


@dataclass(slots=True)
class Transport:
    """What the server's answer said about its side of the (bundled) transport; an ICE restart
    answer repeats it with the new credentials."""

    mid: str = "0"
    kind: str = "audio"
    bundle: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    ice_lite: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None


def transport_of(desc: SessionDescription) -> Transport:
    """The BUNDLE-tag m-section's transport of ``desc`` (RFC 8843 §7.2.1: its first mid)."""
    live = [m for m in desc.media if not m.stopped]
    group = desc.bundle_group()
    first = None
    if group is not None and group.mids:
        first = desc.media_by_mid(group.mids[0])
    if first is None and live:
        first = live[0]
    if first is None:
        return Transport(ice_lite=desc.ice_lite)
    return Transport(
        mid=first.mid or "0",
        kind=first.kind,
        bundle=list(group.mids) if group is not None else [],
        candidates=list(first.candidates),
        ice_lite=desc.ice_lite,
        ice_ufrag=desc.effective_ice_ufrag(first),
        ice_pwd=desc.effective_ice_pwd(first),
    )


def answer_transport(answer: str) -> Transport:
    try:
        return transport_of(parse_sdp(answer))
    except SdpError:
        return Transport()  # the SFU wrote it; nothing a client sent can get here


@dataclass(slots=True)
class Session:
    id: str
    kind: SessionKind
    room: str
    peer_id: str
    owner: str | None  # the identity of the token that created it (None: auth is off)
    remote_ufrag: str | None  # the client's current ICE ufrag/pwd (its offer's, or a restart's)
    remote_pwd: str | None
    server: Transport

    @property
    def role(self) -> Role:
        return "pub" if self.kind == "whip" else "whep"

    @property
    def grant(self) -> Literal["publish", "subscribe"]:
        return "publish" if self.kind == "whip" else "subscribe"

    @property
    def url(self) -> str:
        return SESSION_PATH + self.id

    @property
    def log_extra(self) -> dict[str, str]:
        return {"session": self.id[:8], "kind": self.kind, "room": self.room, "peer": self.peer_id}


class Sessions:
    """The live sessions of this process, oldest first."""

    def __init__(self, node: str | None = None) -> None:
        self._by_id: dict[str, Session] = {}
        #: the node id that ends every session id (cluster mode), or None
        self.node = node

    @staticmethod
    def node_of(session_id: str) -> str | None:
        """The pod a session id names (cluster mode), or None for a single-node id."""
        _, dot, node = session_id.partition(".")
        return node if dot and node else None

    def create(
        self,
        kind: SessionKind,
        room: str,
        peer_id: str,
        *,
        owner: str | None,
        remote_ufrag: str | None,
        remote_pwd: str | None,
        server: Transport,
    ) -> Session:
        session_id = secrets.token_urlsafe(24)  # 192 bits: unguessable, never holds "."
        if self.node is not None:
            session_id = f"{session_id}.{self.node}"
        session = Session(session_id, kind, room, peer_id, owner, remote_ufrag, remote_pwd, server)
        self._by_id[session_id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        return self._by_id.get(session_id)

    def remove(self, session: Session) -> None:
        if self._by_id.get(session.id) is session:
            del self._by_id[session.id]

    def oldest(self, count: int) -> list[Session]:
        found: list[Session] = []
        for session in self._by_id.values():
            if len(found) >= count:
                break
            found.append(session)
        return found

    def rotate(self, session: Session) -> None:
        """Move a checked session to the back, so the next prune looks at others."""
        if self._by_id.get(session.id) is session:
            del self._by_id[session.id]
            self._by_id[session.id] = session

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_id.values()))
