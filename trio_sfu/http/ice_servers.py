"""The STUN/TURN servers handed to clients, with short-lived TURN credentials.

Why: a client whose network blocks UDP *and* the SFU's TCP port can still reach a TURN relay
(coturn on 443/TCP, say) that operators run beside the pods. Handing out a long-lived TURN
password would make the relay open to anyone who ever saw it, so TURN URLs given with
``--turn-url`` get per-request credentials in coturn's ``use-auth-secret`` scheme (the
"TURN REST API" draft, draft-uberti-behave-turn-rest-00 §2.2): username
``<expiry unix time>:<identity>``, credential ``base64(HMAC-SHA1(secret, username))``; coturn
checks the same HMAC with ``static-auth-secret`` and refuses the username once it expired.

The same list reaches clients three ways: ``GET /ice-servers`` (JSON in the
``RTCConfiguration.iceServers`` shape, for the demo site and ``site/sfu-client.js``), and a
``Link: <url>; rel="ice-server"`` header per server on the seed API's and WHIP/WHEP's ``201``
answers (RFC 9725 §4.6).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any

from trio_sfu.config import IceServer

#: Identity in TURN usernames when tokens are off (nobody proved who they are).
ANONYMOUS = "anonymous"


def turn_rest_credentials(secret: str, identity: str, ttl: float, now: float) -> tuple[str, str]:
    """(username, credential) valid until ``now + ttl`` (coturn ``use-auth-secret``)."""
    username = f"{int(now + ttl)}:{identity}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


class IceServerList:
    """Static servers (``--ice-server``) plus TURN URLs with fresh credentials per call."""

    def __init__(
        self,
        static: Sequence[IceServer] = (),
        *,
        turn_urls: Sequence[str] = (),
        turn_secret: str | None = None,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if turn_urls and not turn_secret:
            raise ValueError("TURN URLs without a secret: set --turn-secret")
        self.static = list(static)
        self.turn_urls = list(turn_urls)
        self._secret = turn_secret
        self.ttl = ttl
        self._clock = clock

    def __repr__(self) -> str:  # never show the secret
        return f"<IceServerList static={len(self.static)} turn={len(self.turn_urls)}>"

    def __bool__(self) -> bool:
        return bool(self.static or self.turn_urls)

    def for_identity(self, identity: str | None) -> list[IceServer]:
        servers = list(self.static)
        if self.turn_urls and self._secret:
            username, credential = turn_rest_credentials(
                self._secret, identity or ANONYMOUS, self.ttl, self._clock()
            )
            servers += [IceServer(url, username, credential) for url in self.turn_urls]
        return servers

    def links(self, identity: str | None) -> list[str]:
        return [server.link() for server in self.for_identity(identity)]

    def as_json(self, identity: str | None) -> dict[str, Any]:
        """``{"iceServers": [...], "ttl": seconds}``: ``iceServers`` is what
        ``new RTCPeerConnection({iceServers})`` takes (W3C webrtc-pc §4.2.1)."""
        entries: list[dict[str, Any]] = []
        for server in self.for_identity(identity):
            entry: dict[str, Any] = {"urls": [server.url]}
            if server.username is not None and server.credential is not None:
                entry["username"] = server.username
                entry["credential"] = server.credential
            entries.append(entry)
        return {"iceServers": entries, "ttl": int(self.ttl)}


def ice_server_list(servers: Sequence[IceServer] | IceServerList) -> IceServerList:
    return servers if isinstance(servers, IceServerList) else IceServerList(servers)
