"""Mutations of real SDP-like texts, shared by the SDP and trickle-ice-sdpfrag fuzz suites.

Starting from a valid sample makes Hypothesis reach deep into the parsers; the mutations are
what browsers and hostile clients get wrong: lines dropped, duplicated or swapped, a token
replaced, a few characters changed, LF instead of CRLF, a truncated body.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


@st.composite
def mutated_text(
    draw: st.DrawFn,
    samples: Sequence[str],
    tokens: Sequence[str],
    *,
    line_rounds: int = 3,
    truncate: bool = False,
) -> str:
    lines = draw(st.sampled_from(samples)).split("\r\n")
    for _ in range(draw(st.integers(0, line_rounds))):
        op = draw(st.integers(0, 3))
        i = draw(st.integers(0, len(lines) - 1))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif op == 2:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            parts = lines[i].split(" ")
            parts[draw(st.integers(0, len(parts) - 1))] = draw(st.sampled_from(tokens))
            lines[i] = " ".join(parts)
        if not lines:
            break
    text = draw(st.sampled_from(["\r\n", "\n"])).join(lines)
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(text)))
        repl = draw(st.one_of(st.sampled_from(tokens), st.text(max_size=3)))
        text = text[:pos] + repl + text[pos + draw(st.integers(0, 2)) :]
    if truncate and draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text
