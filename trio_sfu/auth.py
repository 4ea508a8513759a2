"""Access tokens: HS256 JWTs (RFC 7519, via PyJWT) signed with the server's API secret.

A token names who may do what where: its subject (``sub``) is the identity, ``room`` one room
or ``*`` for every room, and ``grants`` an object of booleans (``publish``, ``subscribe``,
``admin``); ``exp`` is required. The JOSE header's ``kid`` is the API key, so a server can tell
which secret a token claims to be signed with (and refuse one for another deployment with a
message that says so). This module knows nothing about HTTP; ``trio_sfu.http.guard`` maps its
outcomes to 401/403.

Example payload::

    {"sub": "alice", "room": "r1", "grants": {"publish": true, "subscribe": true},
     "iat": 1700000000, "nbf": 1700000000, "exp": 1700003600, "iss": "<api key>"}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from trio_sfu.sfu.dc_protocol import valid_id, valid_user

Grant = Literal["publish", "subscribe", "admin"]
GRANTS: tuple[Grant, ...] = ("publish", "subscribe", "admin")
ALGORITHM = "HS256"
ANY_ROOM = "*"

#: RFC 7518 §3.2: an HS256 key MUST be at least as long as the hash output (256 bits).
MIN_SECRET_LENGTH = 32
#: Clock skew tolerated on ``exp``/``nbf`` between the machine that minted and this one.
LEEWAY = 5.0
#: Longer tokens are refused unread (a real one is a few hundred bytes).
MAX_TOKEN_LENGTH = 4096


class TokenError(ValueError):
    """A token we refuse; ``expired`` tells an expired token from a bad one."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token allows."""

    identity: str
    room: str  # a room name or ANY_ROOM
    publish: bool = False
    subscribe: bool = False
    admin: bool = False
    expires_at: float = 0.0

    def covers(self, room: str) -> bool:
        return self.room == ANY_ROOM or self.room == room

    def allows(self, grant: Grant, room: str) -> bool:
        """``grant`` in ``room``; admin implies every grant (it may also stop others)."""
        if not self.covers(room):
            return False
        return self.admin or getattr(self, grant)

    @property
    def grants(self) -> list[Grant]:
        return [g for g in GRANTS if getattr(self, g)]


def valid_identity(value: str) -> bool:
    return valid_user(value)


def valid_room(value: str) -> bool:
    return value == ANY_ROOM or valid_id(value)


def check_secret(secret: str) -> None:
    if len(secret.encode("utf-8")) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"the API secret must be at least {MIN_SECRET_LENGTH} bytes "
            "(RFC 7518 §3.2: an HS256 key as long as the hash)"
        )


def create_token(
    api_key: str,
    api_secret: str,
    *,
    identity: str,
    room: str,
    publish: bool = False,
    subscribe: bool = False,
    admin: bool = False,
    ttl: float = 3600.0,
    now: float | None = None,
) -> str:
    """A signed token; ValueError names the argument that cannot go into one."""
    if not valid_id(api_key):
        raise ValueError(f"API key {api_key!r} does not match [A-Za-z0-9_.-]{{1,64}}")
    check_secret(api_secret)
    if not valid_identity(identity):
        raise ValueError(f"identity {identity!r} does not match [A-Za-z0-9_.-]{{1,55}}")
    if not valid_room(room):
        raise ValueError(f"room {room!r} is neither '*' nor [A-Za-z0-9_.-]{{1,64}}")
    if not ttl > 0:
        raise ValueError("the time to live must be positive")
    if not (publish or subscribe or admin):
        raise ValueError("a token needs at least one grant: publish, subscribe or admin")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "sub": identity,
        "room": room,
        "grants": {"publish": publish, "subscribe": subscribe, "admin": admin},
        "iss": api_key,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl),
    }
    return jwt.encode(payload, api_secret, algorithm=ALGORITHM, headers={"kid": api_key})


class TokenVerifier:
    """Checks tokens for one API key/secret pair."""

    def __init__(self, api_key: str, api_secret: str, *, leeway: float = LEEWAY) -> None:
        check_secret(api_secret)
        self.api_key = api_key
        self._secret = api_secret
        self.leeway = leeway

    def __repr__(self) -> str:  # never show the secret in logs or tracebacks
        return f"TokenVerifier(api_key={self.api_key!r})"

    def verify(self, token: str, *, now: float | None = None) -> Claims:
        """The token's claims, or TokenError saying why not (and nothing else escapes)."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("not a JWT") from None
        if header.get("kid") != self.api_key:
            raise TokenError("unknown key id (kid): not signed with this server's API key")
        try:
            # exp/nbf are checked below against an injectable clock; PyJWT checks signature,
            # algorithm (only HS256: never "none", never a public-key confusion) and shape.
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["exp", "sub"]},
            )
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature") from None
        except jwt.PyJWTError as error:
            raise TokenError(f"invalid token: {error}") from None
        return self._claims(payload, time.time() if now is None else now)

    def _claims(self, payload: dict[str, Any], now: float) -> Claims:
        exp, nbf = payload.get("exp"), payload.get("nbf")
        # RFC 7519 §4.1.4/§4.1.5: NumericDate values (bool is an int in Python: refuse it).
        for name, value in (("exp", exp), ("nbf", nbf)):
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, int | float)):
                raise TokenError(f"{name} is not a NumericDate")
        assert isinstance(exp, int | float)
        if now >= exp + self.leeway:
            raise TokenError("token expired", expired=True)
        if isinstance(nbf, int | float) and now < nbf - self.leeway:
            raise TokenError("token not valid yet (nbf)")
        identity, room, grants = payload.get("sub"), payload.get("room"), payload.get("grants")
        if not isinstance(identity, str) or not valid_identity(identity):
            raise TokenError("sub (the identity) must match [A-Za-z0-9_.-]{1,55}")
        if not isinstance(room, str) or not valid_room(room):
            raise TokenError("room must be '*' or match [A-Za-z0-9_.-]{1,64}")
        if not isinstance(grants, dict):
            raise TokenError("grants must be an object of booleans")
        flags: dict[str, bool] = {}
        for grant in GRANTS:
            value = grants.get(grant, False)
            if not isinstance(value, bool):
                raise TokenError(f"grants.{grant} must be true or false")
            flags[grant] = value
        return Claims(identity=identity, room=room, expires_at=float(exp), **flags)
