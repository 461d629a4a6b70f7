"""The position language: which tokens of a (prompt + response) sequence to read.

Grammar::

    position := frame "[" index "]" | frame "[" [start] ":" [stop] "]"
    frame    := "prompt" | "response" | "all"
    index, start, stop := optional "-" followed by digits

Semantics (conventions shared with ``docs/ARCHITECTURE.md``):

- A frame is a window of the full token sequence: ``prompt`` = tokens ``[0, prompt_len)``,
  ``response`` = ``[prompt_len, total_len)``, ``all`` = ``[0, total_len)``.
  ``prompt_len`` is the number of prompt token *ids* (never a re-tokenized length).
- Inside the frame, Python slice semantics, clamped: ``response[:5]`` = response tokens
  0-4 (fewer if the response is shorter), ``prompt[-3:]`` = last three prompt tokens.
  No step.
- A single index is one token: ``response[3]`` = ``response[3:4]``; negative indices count
  from the end of the frame: ``prompt[-1]`` = the last prompt token = the state that
  produces the first response token. An index outside the frame selects nothing.
- A span that selects nothing raises :class:`EmptySpanError`; callers decide whether that
  is an error, a skipped sample or a NaN row.
- Positions are pooled by mean over the span by the capture code.

``str(position)`` is the canonical text (``[0:5]`` is written ``[:5]``); ``position.slug``
is a filesystem/SQL-safe, injective name: ``response[:5]`` -> ``response__5``,
``prompt[-1]`` -> ``prompt_m1``, ``all[:]`` -> ``all__``, ``response[2:-1]`` ->
``response_2_m1``, ``response[3]`` -> ``response_3``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Frame = Literal["prompt", "response", "all"]
FRAMES: tuple[str, ...] = ("prompt", "response", "all")

_POSITION_RE = re.compile(
    r"^(?P<frame>[a-z_]+)\[(?:(?P<index>-?\d+)|(?P<start>-?\d+)?:(?P<stop>-?\d+)?)\]$"
)
_FORMS = "expected prompt[a:b], response[a:b], all[a:b] or a single index like response[3]"


class EmptySpanError(ValueError):
    """A position selects no token of a given sequence (e.g. ``response[:5]`` of an empty
    response, ``prompt[-10]`` of a 3-token prompt)."""


@dataclass(frozen=True)
class Position:
    """A parsed position. Either ``index`` is set (one token) or ``start``/``stop`` (a slice,
    ``None`` = open end). Build with :func:`parse_position`."""

    frame: Frame
    start: int | None = None
    stop: int | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"bad position frame {self.frame!r}: expected one of {', '.join(FRAMES)}")
        if self.index is not None and (self.start is not None or self.stop is not None):
            raise ValueError("a Position has either an index or a start/stop slice, not both")
        if self.start == 0:  # canonical: [0:b] is [:b]
            object.__setattr__(self, "start", None)

    @property
    def is_single(self) -> bool:
        """True for a single-token index like ``response[3]``."""
        return self.index is not None

    def __str__(self) -> str:
        if self.index is not None:
            return f"{self.frame}[{self.index}]"
        a = "" if self.start is None else str(self.start)
        b = "" if self.stop is None else str(self.stop)
        return f"{self.frame}[{a}:{b}]"

    @property
    def slug(self) -> str:
        """Filesystem/SQL-safe injective name (``[a-z0-9_]``): ``frame_i`` for an index,
        ``frame_start_stop`` for a slice (empty for an open end), ``m`` for minus."""

        def enc(v: int | None) -> str:
            return "" if v is None else (f"m{-v}" if v < 0 else str(v))

        if self.index is not None:
            return f"{self.frame}_{enc(self.index)}"
        return f"{self.frame}_{enc(self.start)}_{enc(self.stop)}"

    def frame_bounds(self, prompt_len: int, total_len: int) -> tuple[int, int]:
        """Absolute ``[start, end)`` of the frame in the full sequence."""
        if not 0 <= prompt_len <= total_len:
            raise ValueError(
                f"position {self}: need 0 <= prompt_len <= total_len, got "
                f"prompt_len={prompt_len}, total_len={total_len}"
            )
        if self.frame == "prompt":
            return 0, prompt_len
        if self.frame == "response":
            return prompt_len, total_len
        return 0, total_len

    def span(self, prompt_len: int, total_len: int) -> tuple[int, int]:
        """Absolute ``[start, end)`` token indices into the full sequence (prompt + response).

        Raises EmptySpanError when the position selects no token of this sequence.
        """
        lo, hi = self.frame_bounds(prompt_len, total_len)
        n = hi - lo
        if self.index is not None:
            i = self.index + n if self.index < 0 else self.index
            if not 0 <= i < n:
                raise EmptySpanError(
                    f"position {self} is empty for a {self.frame} of {n} tokens "
                    f"(prompt_len={prompt_len}, total_len={total_len})"
                )
            return lo + i, lo + i + 1
        s, e, _ = slice(self.start, self.stop).indices(n)
        if e <= s:
            raise EmptySpanError(
                f"position {self} is empty for a {self.frame} of {n} tokens "
                f"(prompt_len={prompt_len}, total_len={total_len})"
            )
        return lo + s, lo + e


def parse_position(text: str) -> Position:
    """Parse ``prompt[a:b]`` / ``response[a:b]`` / ``all[a:b]`` / ``response[3]``.

    Raises ValueError with a one-line message for anything else (``resp[:5]``,
    ``response[a:b]``, ``response[::2]``, ``response[5``, ...).
    """
    if isinstance(text, Position):
        return text
    if not isinstance(text, str):
        raise ValueError(f"bad position {text!r}: not a string; {_FORMS}")
    s = text.strip()
    m = _POSITION_RE.match(s)
    if m is None:
        frame = s.split("[", 1)[0]
        if "[" in s and frame not in FRAMES:
            raise ValueError(f"bad position {text!r}: unknown frame {frame!r}; {_FORMS}")
        raise ValueError(f"bad position {text!r}: {_FORMS}")
    frame = m["frame"]
    if frame not in FRAMES:
        raise ValueError(f"bad position {text!r}: unknown frame {frame!r}; {_FORMS}")
    if m["index"] is not None:
        return Position(frame, index=int(m["index"]))  # type: ignore[arg-type]
    start = None if m["start"] is None else int(m["start"])
    stop = None if m["stop"] is None else int(m["stop"])
    return Position(frame, start=start, stop=stop)  # type: ignore[arg-type]
