"""``trio-sfu [serve] [flags]`` (also ``python -m trio_sfu``).

The flags are generated from :class:`~trio_sfu.config.Config`, so every setting has exactly one
flag and one ``TRIO_SFU_*`` variable, both shown in ``--help``. A flag wins over its variable.
Usage errors — an unknown flag, a value that does not parse (on the command line or in the
environment), settings that do not go together — exit with status 2 and one line saying what is
wrong; failures while starting (a port in use) exit with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from trio_sfu import __version__
from trio_sfu.config import Config, ConfigError, Setting, parse_setting, settings

COMMANDS = ("serve",)


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
        help="what to do (default: serve): run the SFU, its HTTP API and the demo site",
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
            parser.error(f"environment variable {setting.env}={text!r}: {error}")
    config = Config(**values)
    try:
        config.check()
    except ConfigError as error:
        parser.error(str(error))
    return config


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(parser, args, os.environ if environ is None else environ)

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
