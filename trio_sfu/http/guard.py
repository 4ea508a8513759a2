"""Bearer-token checks for the signaling routes (RFC 6750 on top of :mod:`trio_sfu.auth`).

Every route authenticates first (401: no usable credentials), then validates its path, then
authorizes (403: a valid token that does not allow this). With no API key configured the guard
lets everything through and the routes behave as in the seed. CORS preflights and plain
``OPTIONS`` never reach it: browsers send preflights without credentials (Fetch standard).

The policy, per route:

=============================================  ========================================
``POST``/``DELETE /pub/{room}/{id}``            ``publish`` in the room; ``id`` is
                                               ``<identity>-<suffix>`` unless ``admin``
``POST``/``DELETE /sub/{room}/{id}``            ``subscribe`` in the room; same id rule
``POST /whip/{room}``                           ``publish`` in the room
``POST /whep/{room}[/{publisher}]``             ``subscribe`` in the room
``PATCH``/``DELETE`` a WHIP/WHEP session        the grant that created it, same identity
                                               (or ``admin``)
``GET /rooms/{room}``                           any grant in the room
``GET /rooms``                                  ``admin``; a one-room admin token lists
                                               only its room
=============================================  ========================================

``admin`` implies every grant in the rooms its token covers.
"""

from __future__ import annotations

import re

from quart import request

from trio_sfu.auth import Claims, Grant, TokenError, TokenVerifier

REALM = "trio-sfu"
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")
# RFC 6750 §3: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
_UNSAFE_DESCRIPTION = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


class AuthRefused(Exception):
    """A request the token (or its absence) does not allow; rendered by the error handlers."""

    def __init__(self, status: int, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error  # RFC 6750 §3.1 error code, None when no credentials were sent

    def www_authenticate(self) -> str:
        value = f'Bearer realm="{REALM}"'
        if self.error is not None:
            description = _UNSAFE_DESCRIPTION.sub("?", self.message)[:200]
            value += f', error="{self.error}", error_description="{description}"'
        return value


def unauthorized(message: str, *, invalid: bool = False) -> AuthRefused:
    return AuthRefused(401, message, error="invalid_token" if invalid else None)


def forbidden(message: str) -> AuthRefused:
    return AuthRefused(403, message, error="insufficient_scope")


class Guard:
    """Authenticates and authorizes the current request; open when ``verifier`` is None."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self.verifier = verifier

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def authenticate(self) -> Claims | None:
        """The request's verified claims (None when auth is off), else 401."""
        verifier = self.verifier
        if verifier is None:
            return None
        values = request.headers.getlist("Authorization")
        if not values:
            raise unauthorized("a Bearer token is required (Authorization: Bearer <token>)")
        if len(values) > 1:
            raise unauthorized("more than one Authorization header", invalid=True)
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer":  # RFC 9110 §11.1: auth schemes are case-insensitive
            raise unauthorized(f"the Authorization scheme must be Bearer, not {scheme[:20]!r}")
        token = token.strip()
        if not _B64TOKEN.match(token):
            raise unauthorized("malformed Bearer token", invalid=True)
        try:
            return verifier.verify(token)
        except TokenError as error:
            raise unauthorized(str(error), invalid=True) from None

    def authorize(self, claims: Claims | None, grant: Grant | None, room: str) -> None:
        """403 unless ``claims`` cover ``room`` (and hold ``grant`` there, when one is named)."""
        if claims is None:
            return
        if not claims.covers(room):
            raise forbidden(f"the token is for room {claims.room!r}, not {room!r}")
        if grant is not None and not claims.allows(grant, room):
            raise forbidden(f"the token does not grant {grant}")

    def authorize_owner(self, claims: Claims | None, owner: str | None, what: str) -> None:
        """403 unless the token's identity is ``owner`` (the one who created ``what``) or the
        token is an admin one."""
        if claims is None or claims.admin or owner is None or claims.identity == owner:
            return
        raise forbidden(f"{what} belongs to another identity (an admin token may act on it)")

    def require(self, grant: Grant | None, room: str) -> Claims | None:
        claims = self.authenticate()
        self.authorize(claims, grant, room)
        return claims
