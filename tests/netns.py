"""Run a command tree inside a fresh network namespace with a veth pair.

Why: libnice (GStreamer's ICE agent) never gathers loopback addresses, and this machine has no
dummy interface to give it something else that stays on the host. A private network namespace
with a veth pair gives every process in it two ordinary, non-loopback addresses (one per end)
that no packet can leave, so GStreamer, the server and the other test peers can meet there.

Command line (the form the tests build with :func:`netns_argv`)::

    unshare --net -- python -m tests.netns --inside -- CMD ARGS...

Inside the new namespace this module brings ``lo`` up, creates ``v0``/``v1``, puts
:data:`ADDRESS_A` on ``v0`` and :data:`ADDRESS_B` on ``v1``, brings both up, and then *execs*
``CMD`` with ``TRIO_SFU_NETNS=A,B`` in its environment, so the command (and every process it
starts) lives in the namespace; the namespace disappears with the last of them. Run without
``--inside`` it wraps itself in ``unshare --net`` first, which is handy by hand::

    python -m tests.netns -- ip -br addr

The addresses are from 198.18.0.0/15 (RFC 2544, benchmarking), which no real network uses:
traffic to them exists only inside the namespace.

The Trio side: :func:`netns_unavailable` says why namespaces cannot be used here (not root,
no ``unshare``/``ip``, a kernel without veth), :func:`require_netns` turns that into a skip
(a failure under ``TRIO_SFU_REQUIRE_BROWSER=1``, as CI runs), and :func:`open_netns` runs a
command tree in a namespace with the JSON-line plumbing of ``tests/peers/harness.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.peers.harness import PeerProcess

ADDRESS_A = "198.18.0.1"  # on v0: the server's side by convention
ADDRESS_B = "198.18.0.2"  # on v1: the peers' side by convention
PREFIX_LEN = 24
ENV = "TRIO_SFU_NETNS"  # set inside: "ADDRESS_A,ADDRESS_B"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Commands run inside the namespace before the payload; each must succeed.
SETUP = (
    ("ip", "link", "set", "lo", "up"),
    ("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"),
    ("ip", "addr", "add", f"{ADDRESS_A}/{PREFIX_LEN}", "dev", "v0"),
    ("ip", "addr", "add", f"{ADDRESS_B}/{PREFIX_LEN}", "dev", "v1"),
    ("ip", "link", "set", "v0", "up"),
    ("ip", "link", "set", "v1", "up"),
)


def inside() -> tuple[str, str] | None:
    """The two veth addresses when this process runs in a namespace made here, else None."""
    value = os.environ.get(ENV, "")
    parts = value.split(",")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def netns_argv(argv: Sequence[str], *, python: str | None = None) -> list[str]:
    """The command line that runs ``argv`` in a fresh namespace (see the module docstring)."""
    unshare = shutil.which("unshare") or "unshare"
    return [
        unshare, "--net", "--",
        python or sys.executable, "-m", "tests.netns", "--inside", "--", *argv,
    ]


@functools.lru_cache(maxsize=1)
def netns_unavailable() -> str | None:
    """None if a namespace with a veth pair can be made here, else what is missing."""
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package {package})"
    try:
        probe = subprocess.run(
            netns_argv(["ip", "-o", "-4", "addr", "show", "dev", "v1"]),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run unshare: {error}"
    if probe.returncode != 0 or ADDRESS_B not in probe.stdout:
        detail = (probe.stderr or probe.stdout).strip().splitlines()[-3:]
        return (
            "cannot create a network namespace with a veth pair "
            f"(needs root or CAP_SYS_ADMIN and veth support): {' | '.join(detail)}"
        )
    return None


def scenario_result(module: str, *args: str, timeout: float = 400) -> dict[str, Any]:
    """Run a :func:`run_scenario` module in a fresh namespace and return its result line,
    printed (without its bulky ``plans``) for the test's output; a scenario that reported an
    error fails the calling test with it and the run's log."""
    argv = netns_argv([sys.executable, "-m", module, *args])
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in result.items() if k != "plans"}, indent=1))
    assert "error" not in result, f"{result['error']}\n{done.stderr[-4000:]}"
    return result


def require_netns() -> None:
    """Skip the calling test when namespaces are unusable (fail under CI's strict flag)."""
    import pytest

    from tests.peers.harness import REQUIRE_BROWSER_ENV

    missing = netns_unavailable()
    if missing is None:
        return
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{missing} ({REQUIRE_BROWSER_ENV}=1 forbids skipping)")
    pytest.skip(missing)


@asynccontextmanager
async def open_lines(
    argv: Sequence[str], *, name: str | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[PeerProcess]:
    """Run any command that speaks the peers' JSON-line protocol, for the block's duration.

    ``tests/peers/harness.open_peer`` runs a peer under this interpreter; this runs any
    command (GStreamer's peer needs Debian's ``/usr/bin/python3``). Leaving the block closes
    the process's stdin, waits, and kills its process group (it leads its own session).
    """
    from tests.peers.harness import open_command

    label = name or os.path.basename(argv[-1] if argv else "process")
    async with open_command(argv, name=label, env=env, cwd=REPO) as peer:
        yield peer


def open_netns(
    argv: Sequence[str], *, name: str | None = None, env: Mapping[str, str] | None = None
) -> AbstractAsyncContextManager[PeerProcess]:
    """:func:`open_lines` for ``argv`` run in a fresh namespace; killing the process group
    at the end ends everything in the namespace, and the namespace with it."""
    return open_lines(netns_argv(argv), name=name or "netns", env=env)


# --------------------------------------------------------------------------- in the namespace


def _setup() -> None:
    # No IPv6 in the namespace: link-local candidates would only add noise to every ICE check.
    # These sysctls are per namespace; best effort, since a kernel may lack IPv6 altogether.
    for knob in ("all", "default"):
        try:
            with open(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass
    for command in SETUP:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise SystemExit(
                f"tests.netns: {' '.join(command)} failed: {done.stderr.strip()}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--inside", action="store_true", help="already in the new namespace (set up and exec)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given (… -- CMD ARGS...)")
    if not args.inside:
        full = netns_argv(command)
        os.execvp(full[0], full)
    _setup()
    os.environ[ENV] = f"{ADDRESS_A},{ADDRESS_B}"
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"tests.netns: cannot run {command[0]}: {error}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())


def run_scenario(
    scenario: Callable[..., Awaitable[dict[str, Any]]],
    *args: Any,
    partial: dict[str, Any] | None = None,
) -> int:
    """The ``main`` of a scenario module run inside a namespace: logs to stderr, runs
    ``scenario(*args)`` under Trio and prints one JSON result line on stdout, the parent's
    only input. On an error the line carries it, with what ``partial`` measured before it,
    so a failure still reports its figures; the exit status is 0 either way."""
    import trio  # here: the launcher itself stays light

    protocol = sys.stdout
    sys.stdout = sys.stderr  # servers print their URLs; only the result goes to stdout
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        result = trio.run(scenario, *args)
    except BaseException as error:  # report, then fail: the parent reads one line either way
        import traceback

        traceback.print_exc()
        leaf: BaseException = error
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        result = {"type": "result", **(partial or {}), "error": f"{type(leaf).__name__}: {leaf}"}
    protocol.write(json.dumps(result) + "\n")
    protocol.flush()
    return 0
