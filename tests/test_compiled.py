"""The optional mypyc build of the forwarding path (``trio_sfu/compiled.py``, issue 10).

``scripts/test`` runs the suite twice over these modules: pure Python (the whole suite, with
``TRIO_SFU_EXPECT_COMPILED=0``) and compiled (``=1``, after ``scripts/compile``: the tests of the
compiled modules). The first test makes each run prove which code it ran; the rest keep the modules
compilable and the clones that used to read ``__slots__`` correct either way.
"""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest

from tests.fanout_helpers import packet
from trio_sfu.compiled import COMPILED_MODULES, compiled_modules
from trio_sfu.proto.codecs.vp8 import PictureIdRewriter
from trio_sfu.proto.layers import LayerSelector
from trio_sfu.proto.rtp import RtpRewriter, TransportCcSequencer

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = bytes(20)


def test_the_run_is_the_path_it_says() -> None:
    expected = os.environ.get("TRIO_SFU_EXPECT_COMPILED")
    if expected is None:
        pytest.skip("TRIO_SFU_EXPECT_COMPILED is not set (scripts/test sets it for each run)")
    if expected == "1":
        assert compiled_modules() == list(COMPILED_MODULES)
    else:
        assert compiled_modules() == [], "stale extension modules: run scripts/compile --clean"


@pytest.mark.parametrize("name", COMPILED_MODULES)
def test_a_compiled_module_has_no_coroutines(name: str) -> None:
    """Trio's tasks stay interpreted: a compiled module holds per-packet work only."""
    path = ROOT / (name.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    coroutines = [n.name for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef)]
    assert coroutines == []


@pytest.mark.parametrize("name", COMPILED_MODULES)
def test_a_compiled_module_reads_no_slots_at_run_time(name: str) -> None:
    """A class compiled by mypyc has no ``__slots__`` attribute: code that iterates over it
    would copy nothing when compiled (the clones below keep their names in a constant)."""
    source = (ROOT / (name.replace(".", "/") + ".py")).read_text()
    reads = [
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Attribute) and n.attr == "__slots__" and isinstance(n.ctx, ast.Load)
    ]
    assert reads == []


def test_the_clone_constants_are_the_slots() -> None:
    """In pure Python the constants are the classes' slots, so a field added to one is
    copied by its clone too."""
    for module, cls, const in (
        ("trio_sfu.proto.rtp.rewriter", "RtpRewriter", "_REWRITER_FIELDS"),
        ("trio_sfu.proto.codecs.vp8", "PictureIdRewriter", "_PICTURE_ID_FIELDS"),
        ("trio_sfu.proto.layers", "LayerSelector", "_SELECTOR_FIELDS"),
    ):
        mod = importlib.import_module(module)
        fields = getattr(mod, const)
        if mod.__file__ is not None and mod.__file__.endswith(".py"):
            assert getattr(mod, cls).__slots__ is fields
        assert len(set(fields)) == len(fields)


def test_a_cloned_rewriter_continues_and_is_independent() -> None:
    rewriter = RtpRewriter(0xABCD, {96: 100}, twcc=TransportCcSequencer(3, 17))
    for seq in range(10):
        assert rewriter.rewrite(packet(seq, PAYLOAD)) is not None
    twin = rewriter.clone()
    a = bytes(rewriter.rewrite(packet(10, PAYLOAD)) or b"")
    b = bytes(twin.rewrite(packet(10, PAYLOAD)) or b"")
    assert a and a == b  # the same next output: sequence, timestamp, SSRC, payload type
    assert twin.packets == rewriter.packets
    # a duplicate for one is a duplicate for the other; the windows are copies, not shared
    assert rewriter.rewrite(packet(10, PAYLOAD)) is None
    assert twin.rewrite(packet(11, PAYLOAD)) is not None
    assert rewriter.rewrite(packet(11, PAYLOAD)) is not None


def test_a_cloned_picture_id_rewriter_and_selector_copy_every_field() -> None:
    pid = PictureIdRewriter()
    pid._last_pid, pid._pid_off, pid._pending = 1234, 7, True
    twin = pid.clone()
    assert [getattr(twin, n) for n in ("_last_pid", "_pid_off", "_pending")] == [1234, 7, True]
    selector = LayerSelector(48000, keyframe_interval=0.25)
    selector.seq = 99
    copy = selector.clone()
    assert (copy.seq, copy._clock_rate, copy._keyframe_interval) == (99, 48000, 0.25)
    copy.seq = 5
    assert selector.seq == 99
