"""The command line, the settings table behind it, and the log formats."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trio_sfu import __version__
from trio_sfu.cli import build_parser, config_from_args, flags_markdown, main
from trio_sfu.config import (
    DEFAULT_UDP_PORT,
    Config,
    ConfigError,
    _fallback_addresses,
    default_site_dir,
    host_addresses,
    parse_ice_server,
    parse_origin,
    settings,
)
from trio_sfu.logs import JsonFormatter, TextFormatter, setup_logging

REPO = Path(__file__).resolve().parent.parent


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway localhost certificate and key (PEM) for the HTTPS tests."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_self_signed(tmp_path)


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    parser = build_parser()
    return config_from_args(parser, parser.parse_args(argv), environ or {})


def usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str] | None = None
) -> str:
    """Run the CLI expecting a usage error; the message it printed."""
    with pytest.raises(SystemExit) as caught:
        main(argv, environ or {})
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "usage: trio-sfu" in err
    return err.splitlines()[-1]


# -- help and version -------------------------------------------------------------------------


def test_help_lists_every_flag_and_env_var() -> None:
    text = build_parser().format_help()
    names = [(s.flag, s.env) for _, s in settings()]
    assert len(names) == 42
    for flag, env in names:
        assert flag in text
        assert env in text
    for required in (
        "--http-port",
        "TRIO_SFU_HTTP_PORT",
        "--public-ip",
        "--cors-origin",
        "--redis-url",
        "--nats-url",
        "--consent-timeout",
        "--site-dir",
        "--udp-host",
        "--log-format",
        "--cert",
        "--key",
        "serve",
    ):
        assert required in text
    assert "default 8080" in text
    assert f"default {DEFAULT_UDP_PORT}" in text


def test_readme_documents_every_flag() -> None:
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md yet")
    text = readme.read_text()
    missing = [s.flag for _, s in settings() if s.flag not in text or s.env not in text]
    assert not missing, f"README.md lacks {missing} (trio_sfu.cli.flags_markdown() has the table)"


def test_flags_markdown_has_a_row_per_setting() -> None:
    rows = flags_markdown().splitlines()[2:]
    assert len(rows) == len(list(settings()))
    assert "| `--http-port PORT` | `TRIO_SFU_HTTP_PORT` | `8080` |" in flags_markdown()


def test_python_m_help_and_version() -> None:
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "trio_sfu", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: trio-sfu")
    for _, setting in settings():
        assert setting.env in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "trio_sfu", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert (out.returncode, out.stdout.strip()) == (0, f"trio-sfu {__version__}")


def test_python_m_bad_flag_exits_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trio_sfu", "--http-port", "http"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert "argument --http-port: 'http' is not a port number" in out.stderr


# -- values: defaults, environment, flags -----------------------------------------------------


def test_defaults() -> None:
    config = parse([])
    assert config == Config()
    assert (config.http_host, config.http_port) == ("0.0.0.0", 8080)
    assert (config.udp_host, config.udp_port) == ("0.0.0.0", DEFAULT_UDP_PORT)
    assert (config.log_level, config.log_format) == ("info", "text")
    assert config.public_ips == () and config.cors_origins == ()
    assert config.redis_url is None and config.nats_url is None
    assert config.consent_timeout == 30.0
    assert parse(["serve"]) == Config()


ENV_CASES: list[tuple[str, str, str, Any]] = [
    ("TRIO_SFU_HTTP_HOST", "127.0.0.1", "http_host", "127.0.0.1"),
    ("TRIO_SFU_HTTP_HOST", "[::1]", "http_host", "::1"),
    ("TRIO_SFU_HTTP_HOST", "sfu.example", "http_host", "sfu.example"),
    ("TRIO_SFU_HTTP_PORT", "9000", "http_port", 9000),
    ("TRIO_SFU_UDP_HOST", "::", "udp_host", "::"),
    ("TRIO_SFU_UDP_PORT", "0", "udp_port", 0),
    ("TRIO_SFU_TCP_PORT", "Off", "tcp_port", "off"),
    ("TRIO_SFU_TCP_PORT", "8443", "tcp_port", "8443"),
    ("TRIO_SFU_TCP_PUBLIC_PORT", "443", "tcp_public_port", 443),
    ("TRIO_SFU_TURN_TTL", "600", "turn_ttl", 600.0),
    ("TRIO_SFU_PUBLIC_IP", "203.0.113.7", "public_ips", ("203.0.113.7",)),
    (
        "TRIO_SFU_PUBLIC_IP",
        "203.0.113.7, 198.51.100.1,",
        "public_ips",
        ("203.0.113.7", "198.51.100.1"),
    ),
    ("TRIO_SFU_LOG_LEVEL", "DEBUG", "log_level", "debug"),
    ("TRIO_SFU_LOG_FORMAT", "json", "log_format", "json"),
    ("TRIO_SFU_CORS_ORIGIN", "*", "cors_origins", ("*",)),
    (
        "TRIO_SFU_CORS_ORIGIN",
        "https://A.example:8443/,http://b.example",
        "cors_origins",
        ("https://a.example:8443", "http://b.example"),
    ),
    ("TRIO_SFU_CONSENT_TIMEOUT", "7.5", "consent_timeout", 7.5),
    ("TRIO_SFU_SITE_DIR", str(REPO / "tests"), "site_dir", REPO / "tests"),
    ("TRIO_SFU_NODE_ID", "pod-7", "node_id", "pod-7"),
    ("TRIO_SFU_DRAIN_TIMEOUT", "12", "drain_timeout", 12.0),
    ("TRIO_SFU_DRAIN_NOTICE", "4.5", "drain_notice", 4.5),
    ("TRIO_SFU_CLUSTER_PREFIX", "blue", "cluster_prefix", "blue"),
    (
        "TRIO_SFU_ICE_SERVER",
        "stun:stun.example:3478",
        "ice_servers",
        (parse_ice_server("stun:stun.example:3478"),),
    ),
    ("TRIO_SFU_REQUIRE_BACKENDS", "true", "require_backends", True),
    ("TRIO_SFU_METRICS_OPEN", "yes", "metrics_open", True),
    ("TRIO_SFU_METRICS_OPEN", "0", "metrics_open", False),
    ("TRIO_SFU_METRICS_PORT", "9100", "metrics_port", 9100),
    ("TRIO_SFU_METRICS_ROOMS", "7", "metrics_rooms", 7),
    ("TRIO_SFU_CONNECT_TIMEOUT", "4", "connect_timeout", 4.0),
    ("TRIO_SFU_MAX_HALF_OPEN_PER_IP", "3", "max_half_open_per_ip", 3),
    ("TRIO_SFU_MAX_HALF_OPEN", "40", "max_half_open", 40),
    ("TRIO_SFU_MAX_JOINS_PER_IP", "2.5", "max_joins_per_ip", 2.5),
    ("TRIO_SFU_MAX_JOINS", "50", "max_joins", 50.0),
    ("TRIO_SFU_MAX_MEMBERS_PER_ROOM", "8", "max_members_per_room", 8),
    ("TRIO_SFU_MAX_ROOMS", "9", "max_rooms", 9),
    ("TRIO_SFU_CHAT_RATE", "0.5", "chat_rate", 0.5),
    ("TRIO_SFU_CHAT_BURST", "3", "chat_burst", 3),
    ("TRIO_SFU_MAX_SEND_BUFFER", "65536", "max_send_buffer", 65536),
    ("TRIO_SFU_HTTP2_CLEARTEXT", "yes", "http2_cleartext", True),
]


@pytest.mark.parametrize(("env", "text", "name", "value"), ENV_CASES)
def test_env_fallback(env: str, text: str, name: str, value: Any) -> None:
    assert getattr(parse([], {env: text}), name) == value
    assert getattr(Config.from_env({env: text}), name) == value


def test_every_setting_has_an_env_case() -> None:
    covered = {env for env, *_ in ENV_CASES}
    # These only make sense in pairs; test_pairs_from_env covers them (--quic-port needs
    # --cert/--key: tests/test_http3.py).
    untestable_here = {
        "TRIO_SFU_QUIC_PORT",
        "TRIO_SFU_CERT",
        "TRIO_SFU_KEY",
        "TRIO_SFU_REDIS_URL",
        "TRIO_SFU_NATS_URL",
        "TRIO_SFU_API_KEY",
        "TRIO_SFU_API_SECRET",
        "TRIO_SFU_TURN_URL",  # with TURN_SECRET: test_turn.py::test_turn_settings
        "TRIO_SFU_TURN_SECRET",
    }
    assert {s.env for _, s in settings()} == covered | untestable_here


def test_pairs_from_env() -> None:
    env = {"TRIO_SFU_API_KEY": "k1", "TRIO_SFU_API_SECRET": "s" * 32}
    config = parse([], env)
    assert (config.api_key, config.api_secret) == ("k1", "s" * 32)
    env = {"TRIO_SFU_REDIS_URL": "redis://r:6379/0", "TRIO_SFU_NATS_URL": "nats://n:4222"}
    config = parse([], env)
    assert (config.redis_url, config.nats_url, config.cluster) == (
        "redis://r:6379/0",
        "nats://n:4222",
        True,
    )


def test_cert_and_key_from_env(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    config = parse([], {"TRIO_SFU_CERT": str(cert), "TRIO_SFU_KEY": str(key)})
    assert (config.cert, config.key, config.tls) == (cert, key, True)
    assert config.demo_url(8443) == "https://127.0.0.1:8443/"


def test_flags_win_over_env() -> None:
    env = {
        "TRIO_SFU_HTTP_PORT": "9000",
        "TRIO_SFU_PUBLIC_IP": "203.0.113.7,198.51.100.1",
        "TRIO_SFU_LOG_LEVEL": "nonsense",  # not consulted: the flag is given
    }
    config = parse(
        [
            "--http-port",
            "9001",
            "--public-ip",
            "192.0.2.9",
            "--public-ip",
            "192.0.2.10",
            "--log-level",
            "warning",
        ],
        env,
    )
    assert config.http_port == 9001
    assert config.public_ips == ("192.0.2.9", "192.0.2.10")  # replaced, not appended
    assert config.log_level == "warning"
    # Empty variables count as unset.
    assert parse([], {"TRIO_SFU_HTTP_PORT": ""}).http_port == 8080


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["stop"], "invalid choice: 'stop'"),
        (["--http-port", "x"], "argument --http-port: 'x' is not a port number"),
        (["--http-port", "65536"], "65536 is not a port number"),
        (["--udp-port", "-1"], "argument --udp-port"),
        (["--udp-host", "example.com"], "'example.com' is not an IP address"),
        (["--http-host", "bad host"], "neither an IP address nor a host name"),
        (["--public-ip", "0.0.0.0"], "0.0.0.0 cannot be advertised"),
        (["--public-ip", "10.0.0.300"], "'10.0.0.300' is not an IP address"),
        (["--log-level", "loud"], "'loud' is not one of debug, info"),
        (["--log-format", "xml"], "'xml' is not one of text, json"),
        (["--cors-origin", "example.com"], "not an origin like https://example.com"),
        (["--cors-origin", "https://x.example/path"], "not an origin"),
        (["--consent-timeout", "0"], "not between 0 and 3600"),
        (["--consent-timeout", "soon"], "not a number of seconds"),
        (["--redis-url", "localhost:6379"], "not a URL starting with redis"),
        (["--redis-url", "redis://localhost:6379"], "needs both --redis-url and --nats-url"),
        (["--nats-url", "nats://localhost:4222"], "needs both --redis-url and --nats-url"),
        (["--node-id", "no/slash"], "is not a node id"),
        (["--drain-timeout", "-1"], "between 0 and 86400"),
        (["--cert", "/nonexistent.pem"], "--cert and --key go together"),
        (["--cert", "/nonexistent.pem", "--key", "/nonexistent.key"], "no such file"),
        (["--site-dir", "/nonexistent-site"], "--site-dir /nonexistent-site: not a directory"),
        (["--udp-host", "0.0.0.0", "--public-ip", "::1"], "the media socket is IPv4 only"),
    ],
)
def test_bad_flags_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in usage_error(capsys, argv)


@pytest.mark.parametrize(
    ("env", "text", "message"),
    [
        ("TRIO_SFU_HTTP_PORT", "eighty", "TRIO_SFU_HTTP_PORT='eighty': 'eighty' is not a port"),
        ("TRIO_SFU_PUBLIC_IP", "203.0.113.7,nope", "TRIO_SFU_PUBLIC_IP="),
        ("TRIO_SFU_LOG_FORMAT", "yaml", "TRIO_SFU_LOG_FORMAT='yaml'"),
        ("TRIO_SFU_NATS_URL", "nats://n:4222", "needs both --redis-url and --nats-url"),
        ("TRIO_SFU_MAX_ROOMS", "0", "TRIO_SFU_MAX_ROOMS='0': 0 is not between 1 and"),
        ("TRIO_SFU_CHAT_RATE", "-1", "TRIO_SFU_CHAT_RATE='-1'"),
        ("TRIO_SFU_HTTP2_CLEARTEXT", "maybe", "'maybe' is not true or false"),
    ],
)
def test_bad_env_exits_2(
    capsys: pytest.CaptureFixture[str], env: str, text: str, message: str
) -> None:
    assert message in usage_error(capsys, [], {env: text})
    if env != "TRIO_SFU_NATS_URL":
        with pytest.raises(ConfigError, match=env):
            Config.from_env({env: text})


def test_unloadable_cert_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    assert "cannot load them" in usage_error(capsys, ["--cert", str(cert), "--key", str(key)])


def test_help_works_with_bad_env() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trio_sfu", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "TRIO_SFU_HTTP_PORT": "nonsense"},
    )
    assert out.returncode == 0


def test_origin_normalisation() -> None:
    assert parse_origin("HTTPS://App.Example:443/") == "https://app.example:443"
    assert parse_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("null", "ftp://x.example", "https://", "https://u@x.example", "https://x:99999"):
        with pytest.raises(ValueError):
            parse_origin(bad)


# -- derived values ---------------------------------------------------------------------------


def test_demo_url() -> None:
    assert Config().demo_url() == "http://127.0.0.1:8080/"
    assert Config(http_host="::").demo_url(9000) == "http://[::1]:9000/"
    assert Config(http_host="192.0.2.5").demo_url(80) == "http://192.0.2.5/"
    assert Config(http_host="sfu.example").demo_url(8080) == "http://sfu.example:8080/"


def test_site_dir_default_is_the_repository_site() -> None:
    assert default_site_dir() == REPO / "site"
    assert Config().site_root() == (REPO / "site" if (REPO / "site").is_dir() else None)
    assert Config(site_dir=REPO / "tests").site_root() == REPO / "tests"


def test_advertised_addresses() -> None:
    assert Config(public_ips=("203.0.113.7",)).advertised_addresses() == ["203.0.113.7"]
    assert Config(udp_host="127.0.0.1").advertised_addresses() == ["127.0.0.1"]
    ipv4 = Config().advertised_addresses()
    assert ipv4[-1] == "127.0.0.1"  # loopback included, last (lowest ICE priority)
    assert all(ipaddress.ip_address(a).version == 4 for a in ipv4)
    assert len(set(ipv4)) == len(ipv4)
    ipv6 = Config(udp_host="::").advertised_addresses()
    assert ipv6[-1] == "::1"
    assert all(
        ipaddress.ip_address(a).version == 6 and not ipaddress.ip_address(a).is_link_local
        for a in ipv6
    )


def test_host_address_probes_agree() -> None:
    """ifaddr finds what `ip` lists (up interfaces) and the default route's source address."""
    ipv4 = set(host_addresses())
    assert "127.0.0.1" in ipv4
    if shutil.which("ip"):
        out = subprocess.run(
            ["ip", "-j", "addr", "show", "up"], capture_output=True, check=True, timeout=5
        ).stdout
        listed = {
            info["local"]
            for link in json.loads(out)
            for info in link.get("addr_info", [])
            if info.get("family") == "inet" and not info["local"].startswith("169.254.")
        }
        assert listed <= ipv4, (listed, ipv4)
    fallback = _fallback_addresses(False)
    if fallback:
        assert fallback[0] in ipv4


# -- logging ----------------------------------------------------------------------------------


def make_record(msg: str = "peer joined", **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("trio_sfu.test")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, (), None, extra=extra)


def test_json_log_lines_carry_extra_fields() -> None:
    line = JsonFormatter().format(
        make_record(room="r1", peer="alice-k3j2", addr=("127.0.0.1", 5000), odd="\udcff")
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "peer joined"
    assert entry["level"] == "info"
    assert entry["logger"] == "trio_sfu.test"
    assert (entry["room"], entry["peer"]) == ("r1", "alice-k3j2")
    assert entry["addr"] == ["127.0.0.1", 5000]
    assert entry["ts"].endswith("Z")
    line.encode("utf-8")  # a lone surrogate from client input cannot break the stream


def test_text_log_lines_show_extra_as_key_value() -> None:
    line = TextFormatter().format(
        make_record(room="r1", peer="alice-k3j2", reason="consent timeout", ips=["a", "b"])
    )
    assert " INFO trio_sfu.test: peer joined " in line
    assert line.endswith('room=r1 peer=alice-k3j2 reason="consent timeout" ips=a,b')


def test_exceptions_are_logged_in_both_formats() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record()
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exc"]
    assert "ValueError: boom" in TextFormatter().format(record)


def test_setup_logging_routes_every_logger() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    quieted = {n: logging.getLogger(n).level for n in ("aioice", "hpack", "h2", "h11")}
    stream = io.StringIO()
    try:
        setup_logging("warning", "json", stream)
        logging.getLogger("trio_sfu.sfu").info("hidden", extra={"room": "r"})
        logging.getLogger("hypercorn.error").warning("shown", extra={"room": "r"})
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert [(x["msg"], x["room"]) for x in lines] == [("shown", "r")]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)
