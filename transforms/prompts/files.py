"""Reading prompt-set files with line numbers, and one-line validation errors.

The file layer under :mod:`transforms.prompts.sets`: UTF-8 text, JSONL and JSON (objects and
arrays remember the line of every value), and checks that raise :class:`PromptSetError`
``file:line: field: message``.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
import re
from pathlib import Path
from typing import Any


class PromptSetError(ValueError):
    """A prompt-set file is invalid; the message is one line ``file:line: field: message``."""


def err(path: Path | str, line: int | None, fld: str, msg: str, col: int | None = None) -> PromptSetError:
    where = f"{path}" + (f":{line}" if line is not None else "") + (f":{col}" if col is not None else "")
    return PromptSetError(re.sub(r"[\r\n]+", " ", f"{where}: {fld}: {msg}"))


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def typed(value: Any) -> str:
    return f"{type(value).__name__} {short(value)}"


def read_text(path: Path) -> str:
    """Read a UTF-8 file (BOM tolerated); reject missing, undecodable and empty files."""
    if not path.is_file():
        raise err(path, None, "file", "missing file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise err(path, line, "encoding",
                   f"invalid UTF-8 byte 0x{data[e.start]:02x} at byte offset {e.start}") from None
    if not text.strip():
        raise err(path, None, "file", "empty file")
    return text


def unique(seen: dict[Any, int | None], key: Any, path: Path, line: int | None, fld: str, what: str) -> None:
    """Record ``key`` as seen on ``line``; a second occurrence is a duplicate error."""
    if key in seen:
        raise err(path, line, fld, f"duplicate {what} (first on line {seen[key]})")
    seen[key] = line


def check_str(value: Any, path: Path, line: int | None, fld: str, *, required: bool = True) -> str | None:
    """Validate a text field: a non-blank string (or absent/null when not required)."""
    if value is None:
        if required:
            raise err(path, line, fld, "missing field (or null)")
        return None
    if not isinstance(value, str):
        raise err(path, line, fld, f"expected a string, got {typed(value)}")
    if not value.strip():
        raise err(path, line, fld, "empty or whitespace-only text")
    return value


def check_id(value: Any, path: Path, line: int | None, fld: str) -> str | None:
    """Validate an optional explicit id (non-empty string or integer), returned as a string."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise err(path, line, fld, f"expected a string or integer id, got {typed(value)}")
    if isinstance(value, str) and not value.strip():
        raise err(path, line, fld, "empty id")
    return str(value)


class LDict(dict):  # type: ignore[type-arg]
    """A JSON object with ``line`` (its own) and ``lines`` (key -> line of the value)."""
    line: int | None = None
    lines: dict[Any, int] = {}


class LList(list):  # type: ignore[type-arg]
    """A JSON array with ``line`` (its own) and ``lines`` (index -> line of the item)."""
    line: int | None = None
    lines: dict[Any, int] = {}


def load_json(path: Path) -> Any:
    """Parse a JSON file keeping line numbers (objects -> LDict, arrays -> LList).

    Uses the stdlib pure-Python scanner with wrapped object/array parsers that record
    where each value starts; duplicate keys in an object are an error.
    """
    text = read_text(path)
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def located(parse: Any, cls: type, s_and_end: tuple[str, int], scan_once: Any, *args: Any) -> Any:
        starts: list[int] = []

        def scan(s: str, idx: int) -> Any:
            starts.append(idx)
            return scan_once(s, idx)

        items, end = parse(s_and_end, *args[:1], scan, *args[1:])
        out = cls()
        out.line, out.lines = bisect.bisect_left(newlines, s_and_end[1] - 1) + 1, {}
        for k, (item, start) in enumerate(zip(items, starts)):
            line = bisect.bisect_left(newlines, start) + 1
            if cls is LList:
                out.append(item)
                out.lines[k] = line
            elif item[0] in out:
                raise err(path, line, item[0], "duplicate key in JSON object")
            else:
                out[item[0]], out.lines[item[0]] = item[1], line
        return out, end

    decoder = json.JSONDecoder()
    decoder.parse_object = lambda se, strict, scan, hook, pairs_hook, memo=None: located(  # type: ignore
        json.decoder.JSONObject, LDict, se, scan, strict, None, list, memo)
    decoder.parse_array = lambda se, scan: located(json.decoder.JSONArray, LList, se, scan)  # type: ignore
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as e:
        raise err(path, e.lineno, "json", e.msg, col=e.colno) from None


def line_of(container: Any, key: Any) -> int | None:
    """Line of ``container[key]`` in its JSON file (else the container's line, else None)."""
    return getattr(container, "lines", {}).get(key, getattr(container, "line", None))


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as (1-based line number, text without line ending)."""
    return [(i, t.rstrip("\r")) for i, t in enumerate(read_text(path).split("\n"), 1) if t.strip()]


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSONL file into (line, object) pairs; blank lines are skipped."""
    out = []
    for line, text in read_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise err(path, line, "json", f"{e.msg} (col {e.colno})") from None
        if not isinstance(obj, dict):
            raise err(path, line, "json", f"expected a JSON object, got {type(obj).__name__}")
        out.append((line, obj))
    return out
