"""``trio-sfu [serve] [flags]`` and ``trio-sfu token ...`` (also ``python -m trio_sfu``).

The flags are generated from :class:`~trio_sfu.config.Config`, so every setting has exactly one
flag and one ``TRIO_SFU_*`` variable, both shown in ``--help``. A flag wins over its variable.
Usage errors — an unknown flag, a value that does not parse (on the command line or in the
environment), settings that do not go together — exit with status 2 and one line saying what is
wrong; failures while starting (a port in use) exit with status 1.

``trio-sfu token --room R --identity I --publish --subscribe [--admin] [--ttl 1h]`` prints an
access token signed with ``--api-key``/``--api-secret`` (or their environment variables), the
same pair the server is started with.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from trio_sfu import __version__
from trio_sfu.config import Config, ConfigError, Setting, parse_setting, settings

COMMANDS = ("serve", "token", "load")
#: The longest a token may live: a token cannot be revoked short of changing the secret.
MAX_TTL = 366 * 86400
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _argument_type(setting: Setting) -> Any:
    def parse(text: str) -> Any:
        try:
            return setting.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = setting.metavar.lower()  # argparse names the type in some messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-sfu",
        description="A horizontally scalable WebRTC SFU on Trio. With no --redis-url/--nats-url "
        "one process runs everything with in-memory state and serves the demo site at /.",
        epilog="Every flag can also be set through the environment variable shown beside it "
        "(repeatable flags take a comma-separated list); a flag given on the command line wins.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=COMMANDS,
        default="serve",
        help="what to do (default: serve): run the SFU, its HTTP API and the demo site; "
        "'token' prints an access token (see trio-sfu token --help); 'load' load-tests a "
        "running server (see trio-sfu load --help)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for f, setting in settings():
        default = f.default if f.default not in (None, ()) else None
        shown = f", default {default}" if default is not None else ""
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "metavar": setting.metavar,
            "type": _argument_type(setting),
            "default": None,
            "help": f"{setting.help} [env {setting.env}{shown}]",
        }
        if setting.repeatable:
            kwargs["action"] = "append"
        parser.add_argument(setting.flag, **kwargs)
    return parser


def flags_markdown() -> str:
    """The flag table for the README, from the same settings that build the parser."""
    rows = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for f, setting in settings():
        default = "" if f.default in (None, ()) else f"`{f.default}`"
        flag = f"`{setting.flag} {setting.metavar}`"
        rows.append(f"| {flag} | `{setting.env}` | {default} | {setting.help} |")
    return "\n".join(rows) + "\n"


def config_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> Config:
    """Flags, else environment, else defaults; any problem is a usage error (exit 2)."""
    values: dict[str, Any] = {}
    for f, setting in settings():
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = tuple(given) if setting.repeatable else given
            continue
        text = environ.get(setting.env, "")
        if text == "":
            continue
        try:
            values[f.name] = parse_setting(setting, text)
        except ValueError as error:
            parser.error(f"environment variable {setting.env}={setting.shown(text)}: {error}")
    config = Config(**values)
    try:
        config.check()
    except ConfigError as error:
        parser.error(str(error))
    return config


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``7d`` (a number of seconds, minutes, hours, days)."""
    match = re.fullmatch(r"(\d{1,9}(?:\.\d{1,6})?)([smhd]?)", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 1h or 7d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 1 <= seconds <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 1 s and 366 days")
    return seconds


def build_token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-sfu token",
        description="Print an access token (an HS256 JWT) for a server started with the same "
        "--api-key/--api-secret. Grants: publish (POST /pub, /whip), subscribe (POST /sub, "
        "/whep), admin (room lists, and acting on other identities' connections).",
    )
    parser.add_argument("--room", required=True, help="the room the token is for, or '*' for all")
    parser.add_argument("--identity", required=True,
                        help="who the holder is: the user part of its connection ids")
    parser.add_argument("--publish", action="store_true", help="may publish")
    parser.add_argument("--subscribe", action="store_true", help="may subscribe")
    parser.add_argument("--admin", action="store_true", help="may list rooms and stop others")
    parser.add_argument("--ttl", type=parse_ttl, default=3600.0, metavar="DURATION",
                        help="lifetime: 90s, 30m, 1h (default), 7d; at most 366d")
    for f, setting in settings():
        if f.name in ("api_key", "api_secret"):
            parser.add_argument(setting.flag, dest=f.name, metavar=setting.metavar,
                                type=_argument_type(setting), default=None,
                                help=f"[env {setting.env}]")
    return parser


def token_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    from trio_sfu.auth import create_token

    parser = build_token_parser()
    args = parser.parse_args(argv)
    values: dict[str, str] = {}
    for f, setting in settings():
        if f.name not in ("api_key", "api_secret"):
            continue
        given = getattr(args, f.name)
        if given is None and environ.get(setting.env, ""):
            try:
                given = setting.parse(environ[setting.env])
            except ValueError as error:
                parser.error(
                    f"environment variable {setting.env}={setting.shown(environ[setting.env])}: "
                    f"{error}"
                )
        if given is None:
            parser.error(f"{setting.flag} (or {setting.env}) is required to sign a token")
        values[f.name] = given
    try:
        token = create_token(
            values["api_key"],
            values["api_secret"],
            identity=args.identity,
            room=args.room,
            publish=args.publish,
            subscribe=args.subscribe,
            admin=args.admin,
            ttl=args.ttl,
        )
    except ValueError as error:
        parser.error(str(error))
    print(token)
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    if argv[:1] == ["token"]:
        return token_main(argv[1:], environ)
    if argv[:1] == ["load"]:
        from trio_sfu.client.load import main as load_main

        return load_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("token", "load"):
        parser.error(
            f"'{args.command}' comes first and takes its own flags: "
            f"trio-sfu {args.command} --help"
        )
    config = config_from_args(parser, args, environ)

    # Heavy imports only once we know we will serve (keeps --help and usage errors fast).
    import trio

    from trio_sfu.app import serve
    from trio_sfu.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    try:
        trio.run(serve, config)
    except OSError as error:  # e.g. a port already in use
        print(f"trio-sfu: cannot start: {error}", file=sys.stderr)
        return 1
    except ConfigError as error:  # defensive: check() already ran
        print(f"trio-sfu: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a signal arriving before the handlers were installed
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
