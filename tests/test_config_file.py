"""``--config trio-sfu.toml`` (issue 13, item 6): every flag is a key, precedence is
flag > environment > file > default, unknown keys are errors naming them, and ``trio-sfu
config --print`` writes a file that reads back to the same settings.

The cases come from test_cli's table of environment values, so a flag added to the settings
table is covered here as soon as it has its environment case there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import ENV_CASES, parse
from trio_sfu import cli
from trio_sfu.config import Config, ConfigError, file_values, settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trio-sfu.toml"
    path.write_text(text)
    return path


def key_of(env: str) -> str:
    return next(s.flag.removeprefix("--") for _, s in settings() if s.env == env)


@pytest.mark.parametrize(("env", "text", "name", "value"), ENV_CASES)
def test_every_flag_is_a_key(tmp_path: Path, env: str, text: str, name: str, value: Any) -> None:
    # Switches take TOML booleans; everything else the same text as the environment.
    toml_value = json.dumps(value if isinstance(value, bool) else text)
    path = write(tmp_path, f"{key_of(env)} = {toml_value}\n")
    assert getattr(parse(["--config", str(path)], {}), name) == value
    assert getattr(parse([], {"TRIO_SFU_CONFIG": str(path)}), name) == value


def test_native_toml_types(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([
        "http-port = 9000",
        "drain_timeout = 2.5",  # underscores work too
        "metrics-open = true",
        'public-ip = ["203.0.113.7", "198.51.100.1"]',
        'cors-origin = "https://a.example"',
    ]))
    config = parse(["--config", str(path)], {})
    assert (config.http_port, config.drain_timeout, config.metrics_open) == (9000, 2.5, True)
    assert config.public_ips == ("203.0.113.7", "198.51.100.1")
    assert config.cors_origins == ("https://a.example",)


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    path = write(tmp_path, "http-port = 9001\nudp-port = 9002\nlog-level = 'warning'\n")
    env = {"TRIO_SFU_HTTP_PORT": "9003", "TRIO_SFU_UDP_PORT": "9004"}
    config = parse(["--config", str(path), "--http-port", "9005"], env)
    assert config.http_port == 9005  # flag beats env and file
    assert config.udp_port == 9004  # env beats file
    assert config.log_level == "warning"  # file beats default
    assert config.log_format == Config().log_format  # default
    # A flag naming another file beats the environment's file.
    other = tmp_path / "other.toml"
    other.write_text("log-level = 'error'\n")
    assert parse(["--config", str(other)], {"TRIO_SFU_CONFIG": str(path)}).log_level == "error"


@pytest.mark.parametrize(("text", "message"), [
    ("htp-port = 1\nbogus = 2\n", "unknown keys 'bogus', 'htp-port'"),
    ("http-port = 'x'\n", "http-port = 'x': 'x' is not a port number"),
    ("http-port = 70000\n", "http-port = 70000: 70000 is not a port number"),
    ("metrics-open = 'yes'\n", "metrics-open = 'yes': must be true or false"),
    ("http-port = true\n", "must be a string or a number"),
    ("[server]\nhttp-port = 1\n", "unknown key 'server'"),
    ("http-port = 1\nhttp_port = 2\n", "http_port is given twice"),
    ("http-port = \n", "not valid TOML"),
    ("api-secret = 12\n", "api-secret = ***:"),
])
def test_bad_files_are_errors_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        file_values(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_bad_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "nope = 1\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--config", str(path)], {})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'nope'" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.main(["--config", str(tmp_path / "missing.toml")], {})
    assert "No such file" in capsys.readouterr().err


def test_config_print_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--http-port", "9100", "--public-ip", "203.0.113.7", "--metrics-open",
            "--cors-origin", "*", "--drain-timeout", "3", "--api-key", "k1"]
    env = {"TRIO_SFU_API_SECRET": "s" * 32, "TRIO_SFU_LOG_FORMAT": "json"}
    assert cli.main(["config", "--print", *argv], env) == 0
    printed = capsys.readouterr().out
    assert "s" * 32 not in printed and 'api-secret = "***"' in printed
    assert 'log-format = "json"' in printed and "metrics-open = true" in printed
    path = write(tmp_path, printed.replace('api-secret = "***"', "# api-secret"))
    expected = parse(argv, env)
    again = parse(["--config", str(path)], {"TRIO_SFU_API_SECRET": "s" * 32})
    assert again == expected


def test_config_and_print_go_together(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["config"], ["--print"]):
        with pytest.raises(SystemExit):
            cli.main(argv, {})
        assert "--print" in capsys.readouterr().err
