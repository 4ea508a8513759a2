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
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from trio_sfu import __version__
from trio_sfu.config import (
    CONFIG_ENV,
    Config,
    ConfigError,
    Setting,
    config_toml,
    file_values,
    parse_path,
    parse_setting,
    settings,
)

COMMANDS = ("serve", "token", "config", "watch", "load")
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
        "'config --print' prints the settings serve would use, as a --config file; "
        "'token' prints an access token (see trio-sfu token --help); 'watch ROOM' prints a "
        "room's events (see trio-sfu watch --help); 'load' load-tests a running server (see "
        "trio-sfu load --help)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        type=_argument_type(Setting("--config", "", parse_path, "FILE")),
        default=None,
        help="a TOML file of settings, keys named like the flags without '--' "
        f"(http-port = 8080); flags and environment variables win over it [env {CONFIG_ENV}]",
    )
    parser.add_argument(
        "--print", dest="print_config", action="store_true",
        help="with 'config': print the effective settings",
    )
    for f, setting in settings():
        default = f.default if f.default not in (None, (), False) else None
        shown = f", default {default}" if default is not None else ""
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": None,
            "help": f"{setting.help} [env {setting.env}{shown}]",
        }
        if setting.switch:
            kwargs.update(action="store_const", const=True)
        else:
            kwargs.update(metavar=setting.metavar, type=_argument_type(setting))
        if setting.repeatable:
            kwargs["action"] = "append"
        parser.add_argument(setting.flag, **kwargs)
    return parser


def flags_markdown() -> str:
    """The flag table for the README, from the same settings that build the parser."""
    rows = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for f, setting in settings():
        default = "" if f.default in (None, ()) else f"`{f.default}`"
        flag = f"`{setting.flag} {setting.metavar}`".replace(" `", "`")
        rows.append(f"| {flag} | `{setting.env}` | {default} | {setting.help} |")
    return "\n".join(rows) + "\n"


def config_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> Config:
    """Flags, else environment, else the --config file, else defaults; any problem is a
    usage error (exit 2)."""
    values: dict[str, Any] = {}
    path = args.config_file
    if path is None and environ.get(CONFIG_ENV, ""):
        try:
            path = parse_path(environ[CONFIG_ENV])
        except ValueError as error:
            parser.error(f"environment variable {CONFIG_ENV}: {error}")
    if path is not None:
        try:
            values.update(file_values(path))
        except ConfigError as error:
            parser.error(str(error))
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


def build_watch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-sfu watch",
        description="Print a room's events live (publishers and subscribers joining and "
        "leaving, chat with --chat) from a running trio-sfu, over its WebSocket stream "
        "GET /rooms/{room}/events. Ends when the server closes the stream.",
    )
    parser.add_argument("room", nargs="?", help="the room; omit it with --all")
    parser.add_argument("--all", action="store_true",
                        help="every room (GET /events; needs an admin token for all rooms)")
    parser.add_argument("--url", default=None, metavar="URL",
                        help="the server, e.g. http://127.0.0.1:8080 [env TRIO_SFU_URL, "
                        "default http://127.0.0.1:8080]")
    parser.add_argument("--token", default=None, metavar="TOKEN",
                        help="an access token for the room [env TRIO_SFU_TOKEN]")
    parser.add_argument("--chat", action="store_true", help="include chat messages")
    parser.add_argument("--json", action="store_true", help="print each event as JSON")
    return parser


def watch_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    import trio

    from trio_sfu.client.events import (
        EventStreamClosed,
        EventStreamRefused,
        describe,
        room_events,
    )
    from trio_sfu.sfu.dc_protocol import valid_id

    parser = build_watch_parser()
    args = parser.parse_args(argv)
    if (args.room is None) != args.all:
        parser.error("name a ROOM, or give --all (and not both)")
    if args.room is not None and not valid_id(args.room):
        parser.error(f"{args.room!r} is not a room name ([A-Za-z0-9_.-]{{1,64}})")
    url = args.url or environ.get("TRIO_SFU_URL") or "http://127.0.0.1:8080"
    token = args.token or environ.get("TRIO_SFU_TOKEN") or None

    async def run() -> int:
        try:
            async with room_events(url, args.room, token=token, chat=args.chat) as events:
                async for event in events:
                    line = json.dumps(event) if args.json else describe(event)
                    print(line, flush=True)
        except EventStreamRefused as error:
            print(f"trio-sfu watch: {url}: refused: {error}", file=sys.stderr)
            return 1
        except EventStreamClosed as closed:
            print(f"trio-sfu watch: {closed}", file=sys.stderr)
            return 0 if closed.code in (1000, 1001, 1012) else 1
        except OSError as error:
            print(f"trio-sfu watch: cannot connect to {url}: {error}", file=sys.stderr)
            return 1
        return 0

    try:
        return trio.run(run)
    except KeyboardInterrupt:
        return 130


def fail(config: Config, message: str) -> None:
    """One line on stderr: plain text, or a JSON log object when the logs are JSON."""
    if config.log_format == "json":
        import logging

        logging.getLogger("trio_sfu").critical(message, extra={"event": "start-up failed"})
    else:
        print(f"trio-sfu: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    if argv[:1] == ["token"]:
        return token_main(argv[1:], environ)
    if argv[:1] == ["watch"]:
        return watch_main(argv[1:], environ)
    if argv[:1] == ["load"]:
        from trio_sfu.client.load import main as load_main

        return load_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("token", "watch", "load"):
        parser.error(
            f"'{args.command}' comes first and takes its own flags: "
            f"trio-sfu {args.command} --help"
        )
    if args.print_config != (args.command == "config"):
        parser.error("'config' takes --print (and --print goes with 'config'): "
                     "trio-sfu config --print [--config FILE] [flags]")
    config = config_from_args(parser, args, environ)
    if args.command == "config":
        print(config_toml(config), end="")
        return 0

    # Heavy imports only once we know we will serve (keeps --help and usage errors fast).
    import trio

    from trio_sfu.app import StartupError, serve
    from trio_sfu.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    try:
        trio.run(serve, config)
    except StartupError as error:  # a port in use, a backend required but unreachable
        fail(config, str(error))
        return error.status
    except OSError as error:
        fail(config, f"cannot start: {error}")
        return 1
    except ConfigError as error:  # defensive: check() already ran
        print(f"trio-sfu: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a signal arriving before the handlers were installed
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
