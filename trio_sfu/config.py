"""Every setting of a trio-sfu process, with its default, its flag and its environment variable.

One table (the dataclass fields and their :class:`Setting` metadata) drives the CLI, the
environment fallbacks, ``--help`` and the README, so they cannot drift apart. Values are parsed
and checked here, before anything binds a socket: a bad value is a :class:`ConfigError` whose
message names the flag or variable and the problem.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import ifaddr

from trio_sfu.sfu.dc_protocol import valid_id

ENV_PREFIX = "TRIO_SFU_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
# LiveKit's single-port UDP mux uses the same number; 3478 would collide with a STUN/TURN server.
DEFAULT_UDP_PORT = 7882


class ConfigError(ValueError):
    """A setting the process cannot start with; the message says which and why."""


@dataclass(frozen=True)
class Setting:
    """How one :class:`Config` field is spelled on the command line and in the environment."""

    flag: str
    help: str
    parse: Callable[[str], Any]
    metavar: str
    repeatable: bool = False  # flag given many times; env var comma-separated
    secret: bool = False  # never repeat the value in messages
    switch: bool = False  # a flag without a value (on when given); env/file: true or false

    def shown(self, text: str) -> str:
        """``text`` as an error message may quote it."""
        return "'***'" if self.secret else repr(text)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.removeprefix("--").replace("-", "_").upper()


# -- parsers: str -> value, ValueError with a message fit for a user -------------------------


def parse_node_id(text: str) -> str:
    value = text.strip()
    if not valid_id(value):
        raise ValueError(f"{value!r} is not a node id ([A-Za-z0-9_.-]{{1,64}})")
    return value


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false (1/0, yes/no, on/off)")


def _count_parser(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is not between {low} and {high}")
        return value

    return parse


def parse_drain_timeout(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise ValueError(f"{value} is not between 0 and 86400 seconds")
    return value


def parse_drain_notice(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 600:
        raise ValueError(f"{value} is not between 0 and 600 seconds")
    return value


def parse_cluster_prefix(text: str) -> str:
    """One plain token: valid in a Redis key and as a NATS subject token, readable in both."""
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise ValueError(f"{value!r} is not a cluster prefix ([A-Za-z0-9_-]{{1,32}})")
    return value


def parse_port(text: str) -> int:
    try:
        port = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (0-65535; 0 picks a free port)")
    return port


#: ``--tcp-port`` values besides a port number.
TCP_SAME_AS_UDP = "same"
TCP_OFF = "off"


def parse_tcp_port(text: str) -> str:
    """``same`` (the UDP port's number), ``off``, or a port number (0: a free one)."""
    value = text.strip().lower()
    if value in (TCP_SAME_AS_UDP, TCP_OFF):
        return value
    try:
        return str(parse_port(value))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a port number, '{TCP_SAME_AS_UDP}' or '{TCP_OFF}'"
        ) from None


def parse_public_port(text: str) -> int:
    port = parse_port(text)
    if port == 0:
        raise ValueError("0 is not a port a client can connect to (1-65535)")
    return port


def parse_http_host(text: str) -> str:
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if (
        not host
        or len(host) > 253
        or not all(
            label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
            for label in labels
        )
    ):
        raise ValueError(f"{text!r} is neither an IP address nor a host name")
    return host


def parse_bind_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (0.0.0.0 or :: for all)") from None


def parse_public_ip(text: str) -> str:
    """An address to put in our ICE candidates: it must be one a peer can send to."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{address} cannot be advertised to peers")
    return str(address)


def parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def parse_log_format(text: str) -> str:
    fmt = text.strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_FORMATS)}")
    return fmt


def parse_origin(text: str) -> str:
    """``*`` or a browser origin, ``scheme://host[:port]`` (RFC 6454 §6.1 serialization)."""
    value = text.strip()
    if value == "*":
        return value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin like https://example.com") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ValueError(f"{text!r} is not an origin like https://example.com")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _url_parser(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        scheme = urlsplit(value).scheme if "://" in value else ""
        if scheme not in schemes:
            raise ValueError(f"{text!r} is not a URL starting with {' or '.join(schemes)}://")
        return value

    return parse


def parse_api_key(text: str) -> str:
    """The key id tokens carry in their ``kid`` header; an id, not a secret."""
    value = text.strip()
    if not valid_id(value):
        raise ValueError(f"{text!r} does not match [A-Za-z0-9_.-]{{1,64}}")
    return value


def parse_api_secret(text: str) -> str:
    from trio_sfu.auth import check_secret

    check_secret(text)
    return text


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server offered to WHIP/WHEP clients in ``Link`` headers (RFC 9725 §4.6).

    On the command line credentials ride in the URL's user part, percent-encoded where needed
    (``turn:user:secret@turn.example.net:3478?transport=udp``); the Link header carries them as
    parameters instead, and the URL without them.
    """

    url: str  # without credentials, e.g. turn:turn.example.net:3478?transport=udp
    username: str | None = None
    credential: str | None = field(default=None, repr=False)

    def link(self) -> str:
        value = f'<{self.url}>; rel="ice-server"'
        if self.username is not None and self.credential is not None:
            value += (
                f"; username={_quoted(self.username)}; credential={_quoted(self.credential)}"
                '; credential-type="password"'
            )
        return value

    def __str__(self) -> str:
        return self.url if self.username is None else f"{self.url} (user {self.username})"


def _quoted(text: str) -> str:
    # RFC 9110 §5.6.4 quoted-string: backslash-escape DQUOTE and backslash.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_ICE_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?\Z")
# Printable ASCII except what a header parameter could be confused by (no controls, no CR/LF).
_ICE_SECRET = re.compile(r"[\x21-\x7e ]{1,256}\Z")


def parse_ice_server(text: str) -> IceServer:
    """``stun[s]:host[:port]`` or ``turn[s]:user:credential@host[:port][?transport=udp|tcp]``
    (RFC 7064, RFC 7065; credentials percent-decoded). Messages never repeat the credentials."""
    value = text.strip()
    scheme, sep, rest = value.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("stun", "stuns", "turn", "turns"):
        raise ValueError("not a stun:, stuns:, turn: or turns: URL")
    rest, _, query = rest.partition("?")
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        hostport, userinfo = rest, ""
    shown = f"{scheme}:{hostport}"
    match = _ICE_HOST.match(hostport)
    if not match or (match.group(2) is not None and not 0 < int(match.group(2)) < 65536):
        raise ValueError(f"{scheme}: URL: the server part is not host[:port]")
    if query and (scheme.startswith("stun") or query not in ("transport=udp", "transport=tcp")):
        raise ValueError(f"{shown!r}: only turn URLs take a query, ?transport=udp or tcp")
    url = shown + (f"?{query}" if query else "")
    if scheme.startswith("stun"):
        if at:
            raise ValueError(f"{shown!r}: STUN servers take no credentials")
        return IceServer(url)
    user, colon, credential = userinfo.partition(":")
    user, credential = unquote(user), unquote(credential)
    if not at or not colon or not user or not credential:
        raise ValueError(f"{shown!r}: a TURN server needs credentials (USER:CREDENTIAL@host)")
    if not _ICE_SECRET.match(user) or not _ICE_SECRET.match(credential):
        raise ValueError(f"{shown!r}: TURN username and credential must be printable ASCII")
    return IceServer(url, user, credential)


def parse_turn_url(text: str) -> str:
    """``turn[s]:host[:port][?transport=udp|tcp]`` without credentials (they are made per
    client from ``--turn-secret``)."""
    value = text.strip()
    if "@" in value:
        raise ValueError("give TURN URLs without credentials: they come from --turn-secret")
    if not value.lower().startswith(("turn:", "turns:")):
        raise ValueError(f"{value!r} is not a turn: or turns: URL")
    return parse_ice_server(value.replace(":", ":u:c@", 1)).url


def parse_turn_secret(text: str) -> str:
    if len(text) < 16:
        raise ValueError("the TURN secret must be at least 16 characters")
    return text


def parse_turn_ttl(text: str) -> float:
    try:
        seconds = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 60 <= seconds <= 7 * 86400:
        raise ValueError(f"{seconds:g} is not between 60 s and 7 days")
    return seconds


def parse_timeout(text: str) -> float:
    try:
        seconds = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds <= 3600:
        raise ValueError(f"{text!r} is not between 0 and 3600 seconds")
    return seconds


def _rate_parser() -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number per second") from None
        if not 0 < value <= 1_000_000:
            raise ValueError(f"{text!r} is not between 0 and 1000000 per second")
        return value

    return parse


def parse_path(text: str) -> Path:
    if not text.strip():
        raise ValueError("empty path")
    return Path(text.strip()).expanduser()


def default_site_dir() -> Path:
    """The demo site: inside the installed package (``trio_sfu/site``, copied there when the
    wheel is built, see setup.py), else the repository's ``site/`` beside the package (a
    checkout or an editable install)."""
    package = Path(__file__).resolve().parent
    shipped = package / "site"
    return shipped if shipped.is_dir() else package.parent / "site"


def _setting(flag: str, help: str, parse: Callable[[str], Any], metavar: str, **kw: Any) -> Any:
    return {"setting": Setting(flag, help, parse, metavar, **kw)}


@dataclass(frozen=True)
class Config:
    """A process's settings. Defaults are the embedded single-node SFU on every interface."""

    http_host: str = field(
        default="0.0.0.0",
        metadata=_setting(
            "--http-host", "address the HTTP server listens on", parse_http_host, "HOST"
        ),
    )
    http_port: int = field(
        default=8080,
        metadata=_setting("--http-port", "HTTP(S) port; 0 picks a free one", parse_port, "PORT"),
    )
    udp_host: str = field(
        default="0.0.0.0",
        metadata=_setting(
            "--udp-host",
            "address the media socket binds (0.0.0.0: all IPv4, '::': all IPv6)",
            parse_bind_ip,
            "IP",
        ),
    )
    udp_port: int = field(
        default=DEFAULT_UDP_PORT,
        metadata=_setting(
            "--udp-port",
            "the one UDP port for all media (ICE, DTLS, SRTP); 0 picks a free one",
            parse_port,
            "PORT",
        ),
    )
    tcp_port: str = field(
        default=TCP_SAME_AS_UDP,
        metadata=_setting(
            "--tcp-port",
            "the one TCP port for ICE-TCP (RFC 6544 passive candidates, for clients whose "
            "network drops UDP): a number (0 picks a free one), 'same' (the UDP port's "
            "number) or 'off'",
            parse_tcp_port,
            "PORT",
        ),
    )
    tcp_public_port: int | None = field(
        default=None,
        metadata=_setting(
            "--tcp-public-port",
            "TCP port advertised in ICE-TCP candidates when a pass-through TCP load balancer "
            "or NAT maps another port to this pod's (default: the bound --tcp-port)",
            parse_public_port,
            "PORT",
        ),
    )
    public_ips: tuple[str, ...] = field(
        default=(),
        metadata=_setting(
            "--public-ip",
            "address advertised in ICE candidates, repeatable "
            "(env: comma-separated); default: this host's own addresses of the "
            "--udp-host family, loopback included",
            parse_public_ip,
            "IP",
            repeatable=True,
        ),
    )
    cert: Path | None = field(
        default=None,
        metadata=_setting(
            "--cert", "PEM certificate (chain) for HTTPS; needs --key", parse_path, "FILE"
        ),
    )
    key: Path | None = field(
        default=None,
        metadata=_setting("--key", "PEM private key for HTTPS; needs --cert", parse_path, "FILE"),
    )
    quic_port: int | None = field(
        default=None,
        metadata=_setting(
            "--quic-port",
            "also serve HTTP/3 (QUIC, aioquic) on this UDP port of --http-host, advertised "
            "to browsers with Alt-Svc; needs --cert/--key; 0 picks a free one",
            parse_port,
            "PORT",
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_setting(
            "--log-level", "one of " + ", ".join(LOG_LEVELS), parse_log_level, "LEVEL"
        ),
    )
    log_format: str = field(
        default="text",
        metadata=_setting(
            "--log-format",
            "text (key=value) or json (one object per line)",
            parse_log_format,
            "FORMAT",
        ),
    )
    cors_origins: tuple[str, ...] = field(
        default=(),
        metadata=_setting(
            "--cors-origin",
            "origin allowed to call the HTTP API from a browser, "
            "repeatable, '*' for any (env: comma-separated); default: same origin "
            "only",
            parse_origin,
            "ORIGIN",
            repeatable=True,
        ),
    )
    redis_url: str | None = field(
        default=None,
        metadata=_setting(
            "--redis-url",
            "cluster room state (with --nats-url; absent: embedded in-memory state)",
            _url_parser(("redis", "rediss", "unix")),
            "URL",
        ),
    )
    nats_url: str | None = field(
        default=None,
        metadata=_setting(
            "--nats-url",
            "cluster commands and media relay (with --redis-url; absent: in-process bus)",
            _url_parser(("nats", "tls", "ws", "wss")),
            "URL",
        ),
    )
    node_id: str | None = field(
        default=None,
        metadata=_setting(
            "--node-id",
            "this pod's name in the cluster (default: the host name and a random suffix)",
            parse_node_id,
            "ID",
        ),
    )
    drain_timeout: float = field(
        default=60.0,
        metadata=_setting(
            "--drain-timeout",
            "on SIGTERM: refuse new sessions, send RECONNECT to clients, and exit when empty "
            "or after this many seconds",
            parse_drain_timeout,
            "SECONDS",
        ),
    )
    drain_notice: float = field(
        default=2.0,
        metadata=_setting(
            "--drain-notice",
            "on SIGTERM: seconds between /readyz turning 503 and RECONNECT going out, so that "
            "load balancers stop sending clients here first (two 1 s health-check periods)",
            parse_drain_notice,
            "SECONDS",
        ),
    )
    cluster_prefix: str = field(
        default="trio-sfu",
        metadata=_setting(
            "--cluster-prefix",
            "the first part of every Redis key and NATS subject: clusters with different "
            "prefixes share one Redis and one NATS without seeing each other",
            parse_cluster_prefix,
            "PREFIX",
        ),
    )
    consent_timeout: float = field(
        default=30.0,
        metadata=_setting(
            "--consent-timeout",
            "seconds without consent (a valid check or authenticated media) before a peer is "
            "closed (RFC 7675)",
            parse_timeout,
            "SECONDS",
        ),
    )
    connect_timeout: float = field(
        default=10.0,
        metadata=_setting(
            "--connect-timeout",
            "seconds a new session has to complete ICE and DTLS before it is dropped "
            "(half-open sessions cost memory; docs/security.md)",
            parse_timeout,
            "SECONDS",
        ),
    )
    max_half_open_per_ip: int = field(
        default=20,
        metadata=_setting(
            "--max-half-open-per-ip",
            "sessions one client address may have still connecting; past it joins get 429",
            _count_parser(1, 1_000_000),
            "N",
        ),
    )
    max_half_open: int = field(
        default=500,
        metadata=_setting(
            "--max-half-open",
            "sessions still connecting on this node, all addresses; past it joins get 503",
            _count_parser(1, 1_000_000),
            "N",
        ),
    )
    max_joins_per_ip: float = field(
        default=10.0,
        metadata=_setting(
            "--max-joins-per-ip",
            "joins per second one client address may start (bursts of twice as many); "
            "past it 429",
            _rate_parser(),
            "PER_S",
        ),
    )
    max_joins: float = field(
        default=200.0,
        metadata=_setting(
            "--max-joins",
            "joins per second this node starts, all addresses (bursts of twice as many); "
            "past it 503",
            _rate_parser(),
            "PER_S",
        ),
    )
    max_members_per_room: int = field(
        default=200,
        metadata=_setting(
            "--max-members-per-room",
            "members of one room on this node (publishers, subscribers, viewers); past it 429",
            _count_parser(1, 1_000_000),
            "N",
        ),
    )
    max_rooms: int = field(
        default=1000,
        metadata=_setting(
            "--max-rooms",
            "rooms this node hosts at once; past it joins to a new room get 503",
            _count_parser(1, 1_000_000),
            "N",
        ),
    )
    chat_rate: float = field(
        default=5.0,
        metadata=_setting(
            "--chat-rate",
            "CHAT messages per second one member may send (bursts of --chat-burst); "
            "past it the member gets ERROR and the message is dropped",
            _rate_parser(),
            "PER_S",
        ),
    )
    chat_burst: int = field(
        default=20,
        metadata=_setting(
            "--chat-burst",
            "CHAT messages one member may send at once before --chat-rate applies",
            _count_parser(1, 10_000),
            "N",
        ),
    )
    max_send_buffer: int = field(
        default=1024 * 1024,
        metadata=_setting(
            "--max-send-buffer",
            "bytes queued on one member's control channel (bufferedAmount) before chat to "
            "it is dropped; a member left at the cap for 10 s is disconnected",
            _count_parser(16 * 1024, 1 << 30),
            "BYTES",
        ),
    )
    http2_cleartext: bool = field(
        default=False,
        metadata=_setting(
            "--http2-cleartext",
            "accept HTTP/2 without TLS (h2c upgrade and prior knowledge); HTTP/2 over TLS is "
            "always on",
            parse_bool,
            "",
            switch=True,
        ),
    )
    site_dir: Path | None = field(
        default=None,
        metadata=_setting(
            "--site-dir",
            "directory served at / (default: the demo site shipped with the package)",
            parse_path,
            "DIR",
        ),
    )
    api_key: str | None = field(
        default=None,
        metadata=_setting(
            "--api-key",
            "key id of the API secret (the tokens' kid); with --api-secret every signaling "
            "request needs a Bearer token (absent: the API is open to anyone)",
            parse_api_key,
            "KEY",
        ),
    )
    api_secret: str | None = field(
        default=None,
        repr=False,
        metadata=_setting(
            "--api-secret",
            "HS256 secret that signs tokens, at least 32 bytes; prefer the environment "
            "variable (a flag shows in the process list)",
            parse_api_secret,
            "SECRET",
            secret=True,
        ),
    )
    ice_servers: tuple[IceServer, ...] = field(
        default=(),
        metadata=_setting(
            "--ice-server",
            "STUN/TURN server offered to WHIP/WHEP clients (Link headers), repeatable "
            "(env: comma-separated): stun:host[:port] or "
            "turn:USER:CREDENTIAL@host[:port][?transport=udp]",
            parse_ice_server,
            "URL",
            repeatable=True,
            secret=True,
        ),
    )
    turn_urls: tuple[str, ...] = field(
        default=(),
        metadata=_setting(
            "--turn-url",
            "TURN server handed to clients (GET /ice-servers, Link headers) with short-lived "
            "credentials from --turn-secret, repeatable (env: comma-separated): "
            "turn:host[:port][?transport=udp|tcp] or turns:...",
            parse_turn_url,
            "URL",
            repeatable=True,
        ),
    )
    turn_secret: str | None = field(
        default=None,
        metadata=_setting(
            "--turn-secret",
            "the shared secret of coturn's use-auth-secret (static-auth-secret): TURN "
            "credentials are expiry:identity and base64(HMAC-SHA1(secret, username)); "
            "prefer the variable, a flag shows in ps",
            parse_turn_secret,
            "SECRET",
            secret=True,
        ),
    )
    turn_ttl: float = field(
        default=3600.0,
        metadata=_setting(
            "--turn-ttl",
            "seconds a TURN credential stays valid (60 s to 7 days)",
            parse_turn_ttl,
            "SECONDS",
        ),
    )

    require_backends: bool = field(
        default=False,
        metadata=_setting(
            "--require-backends",
            "exit (status 2) if Redis or NATS cannot be reached at start-up (default: start "
            "anyway, retry with back-off, /readyz 503 until they answer)",
            parse_bool,
            "",
            switch=True,
        ),
    )
    metrics_open: bool = field(
        default=False,
        metadata=_setting(
            "--metrics-open",
            "serve /metrics without a token even when tokens are required (default: an admin "
            "token for all rooms, unless --metrics-port)",
            parse_bool,
            "",
            switch=True,
        ),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=_setting(
            "--metrics-port",
            "also serve /metrics, without a token, on this port of --http-host (for the "
            "cluster's scraper; keep it off the public network)",
            parse_port,
            "PORT",
        ),
    )
    metrics_rooms: int = field(
        default=50,
        metadata=_setting(
            "--metrics-rooms",
            "per-room series in /metrics for at most this many rooms (the largest); the rest "
            "are summed under room=\"(other)\"",
            _count_parser(0, 10000),
            "N",
        ),
    )

    # -- derived values -------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return self.cert is not None

    @staticmethod
    def shown_url(url: str) -> str:
        """``url`` as logs and errors may show it: no user or password."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        try:
            port = f":{parts.port}" if parts.port is not None else ""
        except ValueError:
            port = ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    @property
    def cluster(self) -> bool:
        return self.redis_url is not None and self.nats_url is not None

    def effective_node_id(self) -> str:
        """``--node-id``, or the host name (as far as it fits the id pattern) plus a random
        suffix, so two pods on one host, or a restarted pod, never share a node id."""
        if self.node_id is not None:
            return self.node_id
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:48].strip("-.") or "node"
        return f"{host}-{secrets.token_hex(3)}"

    @property
    def auth_enabled(self) -> bool:
        return self.api_key is not None and self.api_secret is not None

    def site_root(self) -> Path | None:
        """The directory to serve, or None when the default one is not there (e.g. a wheel)."""
        if self.site_dir is not None:
            return self.site_dir
        default = default_site_dir()
        return default if default.is_dir() else None

    def tcp_bind_port(self) -> int | None:
        """The ICE-TCP port to bind: None when off, -1 for "the UDP port's number"
        (``RtcServer.bind``'s convention)."""
        if self.tcp_port == TCP_OFF:
            return None
        if self.tcp_port == TCP_SAME_AS_UDP:
            return -1
        return int(self.tcp_port)

    def advertised_addresses(self) -> list[str]:
        """``--public-ip`` values, else this host's addresses the UDP socket can receive on."""
        if self.public_ips:
            return list(self.public_ips)
        bind = ipaddress.ip_address(self.udp_host)
        if not bind.is_unspecified:
            return [str(bind)]
        return host_addresses(ipv6=bind.version == 6)

    def demo_url(self, http_port: int | None = None) -> str:
        """A URL a browser on this machine can open; loopback counts as a secure context,
        which getUserMedia needs."""
        host = self.http_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        port = self.http_port if http_port is None else http_port
        scheme = "https" if self.tls else "http"
        default = 443 if self.tls else 80
        return f"{scheme}://{host}{'' if port == default else f':{port}'}/"

    def check(self) -> None:
        """Cross-field and file-system checks that a single value's parser cannot do."""
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together: give both for HTTPS, or neither")
        for flag, path in (("--cert", self.cert), ("--key", self.key)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag} {path}: no such file")
        if self.cert is not None and self.key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                context.load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, OSError) as error:
                raise ConfigError(f"--cert/--key: cannot load them: {error}") from None
        if self.quic_port is not None and self.cert is None:
            raise ConfigError("--quic-port needs --cert and --key: HTTP/3 is always TLS")
        if self.site_dir is not None and not self.site_dir.is_dir():
            raise ConfigError(f"--site-dir {self.site_dir}: not a directory")
        if (self.api_key is None) != (self.api_secret is None):
            raise ConfigError(
                "--api-key and --api-secret go together: give both to require tokens, or "
                "neither for an open server"
            )
        if (self.redis_url is None) != (self.nats_url is None):
            given, missing = (
                ("--redis-url", "--nats-url")
                if self.nats_url is None
                else ("--nats-url", "--redis-url")
            )
            raise ConfigError(
                f"cluster mode needs both --redis-url and --nats-url: {given} is set but "
                f"{missing} is not (unset both for the embedded single node)"
            )
        if bool(self.turn_urls) != (self.turn_secret is not None):
            raise ConfigError(
                "--turn-url and --turn-secret go together: the URLs get credentials made "
                "from the secret (static TURN credentials go in --ice-server)"
            )
        if self.public_ips and ipaddress.ip_address(self.udp_host).is_unspecified:
            version = ipaddress.ip_address(self.udp_host).version
            wrong = [a for a in self.public_ips if ipaddress.ip_address(a).version != version]
            if wrong:
                raise ConfigError(
                    f"--public-ip {wrong[0]}: the media socket is IPv{version} only "
                    f"(--udp-host {self.udp_host})"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Settings from ``TRIO_SFU_*`` variables (then ``overrides``), checked."""
        values = env_values(os.environ if environ is None else environ)
        values.update(overrides)
        config = cls(**values)
        config.check()
        return config


def settings() -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    for f in dataclasses.fields(Config):
        yield f, f.metadata["setting"]


def parse_setting(setting: Setting, text: str) -> Any:
    """One flag or env value; repeatable settings take a comma-separated list from env."""
    if setting.repeatable:
        return tuple(setting.parse(item) for item in text.split(",") if item.strip())
    return setting.parse(text)


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The fields set in ``environ``; an unparsable value is a ConfigError naming the variable."""
    values: dict[str, Any] = {}
    for f, setting in settings():
        text = environ.get(setting.env)
        if text is None or text == "":
            continue
        try:
            values[f.name] = parse_setting(setting, text)
        except ValueError as error:
            raise ConfigError(f"{setting.env}={setting.shown(text)}: {error}") from None
    return values


# -- the configuration file (--config trio-sfu.toml) -----------------------------------------
# Keys are the flags without their dashes (``http-port = 8080``; ``http_port`` is accepted too);
# values are TOML strings, numbers, booleans (for switches) or lists (for repeatable flags).
# Precedence: flag > environment > file > default.

CONFIG_ENV = ENV_PREFIX + "CONFIG"


def file_key(setting: Setting) -> str:
    return setting.flag.removeprefix("--")


def file_values(path: Path) -> dict[str, Any]:
    """The fields set in the TOML file at ``path``; any problem is a ConfigError naming the
    file and the key (unknown keys included, all of them at once)."""
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except OSError as error:
        raise ConfigError(f"--config {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: not valid TOML: {error}") from None
    by_key = {file_key(s): (f, s) for f, s in settings()}
    unknown = sorted(k for k in data if k.replace("_", "-") not in by_key)
    if unknown:
        raise ConfigError(
            f"--config {path}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (keys are the flags without '--', e.g. http-port)"
        )
    values: dict[str, Any] = {}
    for key, raw in data.items():
        f, setting = by_key[key.replace("_", "-")]
        if f.name in values:
            raise ConfigError(f"--config {path}: {key} is given twice ({file_key(setting)})")
        try:
            values[f.name] = _file_value(setting, raw)
        except ValueError as error:
            shown = setting.shown(str(raw)) if isinstance(raw, str) else "***" if (
                setting.secret) else repr(raw)
            raise ConfigError(f"--config {path}: {key} = {shown}: {error}") from None
    return values


def _file_value(setting: Setting, raw: object) -> Any:
    if setting.switch:
        if not isinstance(raw, bool):
            raise ValueError("must be true or false")
        return raw
    if setting.repeatable:
        if isinstance(raw, str):
            return parse_setting(setting, raw)
        if not isinstance(raw, list) or not all(isinstance(v, str | int) for v in raw):
            raise ValueError("must be a list of strings (or one comma-separated string)")
        return tuple(setting.parse(str(v)) for v in raw)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError("must be a string or a number")
    return setting.parse(str(raw))


def config_toml(config: Config) -> str:
    """``config`` as a file ``--config`` reads back (secrets masked, unset keys commented)."""
    lines = ["# trio-sfu configuration: flag > environment > this file > default"]
    for f, setting in settings():
        value = getattr(config, f.name)
        key = file_key(setting)
        if value is None or value == ():
            lines.append(f"# {key} =  (unset)")
        elif setting.secret:
            lines.append(f"{key} = \"***\"  # secret, not shown")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # JSON strings are TOML basic strings


# -- this host's addresses (the default --public-ip) -----------------------------------------
# ifaddr (already needed by aioice) lists every interface's addresses on every platform; the
# source address of the default route is the fallback when it finds nothing.


def host_addresses(*, ipv6: bool = False) -> list[str]:
    """Usable unicast addresses of this host, non-loopback first, loopback last.

    IPv6 link-local addresses are left out: a candidate cannot carry the zone they need.
    """
    try:
        found = _interface_addresses(ipv6)
    except OSError:
        found = []
    if not found:
        found = _fallback_addresses(ipv6)
    usable = []
    for text in dict.fromkeys(found):
        address = ipaddress.ip_address(text)
        if address.is_link_local or address.is_unspecified or address.is_multicast:
            continue
        usable.append(address)
    usable.sort(key=lambda a: a.is_loopback)  # stable: interface order otherwise
    result = [str(a) for a in usable]
    loopback = "::1" if ipv6 else "127.0.0.1"
    if loopback not in result:
        result.append(loopback)
    return result


def _interface_addresses(ipv6: bool) -> list[str]:
    """Every interface's addresses of one family, in interface order (``ifaddr``)."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ipv6 and isinstance(ip.ip, tuple):
                found.append(ip.ip[0])  # (address, flowinfo, scope id)
            elif not ipv6 and isinstance(ip.ip, str):
                found.append(ip.ip)
    return found


def _fallback_addresses(ipv6: bool) -> list[str]:
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    target = ("2001:db8::1" if ipv6 else "192.0.2.1", 9)  # documentation prefixes: no packet
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(target)  # UDP connect sends nothing; it only picks a route
        except OSError:
            return []
        return [str(sock.getsockname()[0])]
