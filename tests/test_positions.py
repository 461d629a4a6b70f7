"""The position language: parsing, canonical text, slugs, spans (table-driven)."""

from __future__ import annotations

import itertools
import re

import pytest

from transforms.sequences import EmptySpanError, Position, parse_position

# (text, prompt_len, total_len, expected absolute [start, end))
SPANS = [
    # prompt frame = [0, 4) of a 4 + 6 token sequence
    ("prompt[:]", 4, 10, (0, 4)),
    ("prompt[-1]", 4, 10, (3, 4)),  # the state that produces the first response token
    ("prompt[0]", 4, 10, (0, 1)),
    ("prompt[1:3]", 4, 10, (1, 3)),
    ("prompt[-2:]", 4, 10, (2, 4)),
    ("prompt[:-1]", 4, 10, (0, 3)),
    ("prompt[-10:]", 4, 10, (0, 4)),  # clamped
    ("prompt[2:100]", 4, 10, (2, 4)),  # clamped to the frame, never into the response
    # response frame = [4, 10)
    ("response[:5]", 4, 10, (4, 9)),  # response tokens 0-4
    ("response[:50]", 4, 10, (4, 10)),  # clamped
    ("response[:]", 4, 10, (4, 10)),
    ("response[3]", 4, 10, (7, 8)),
    ("response[-1]", 4, 10, (9, 10)),
    ("response[-3:-1]", 4, 10, (7, 9)),
    ("response[2:]", 4, 10, (6, 10)),
    ("response[0:5]", 4, 10, (4, 9)),
    # all frame = [0, 10)
    ("all[:]", 4, 10, (0, 10)),
    ("all[-1]", 4, 10, (9, 10)),
    ("all[3:6]", 4, 10, (3, 6)),
    ("all[-100:2]", 4, 10, (0, 2)),
    # short responses
    ("response[:5]", 4, 6, (4, 6)),
    ("response[1]", 4, 6, (5, 6)),
    ("prompt[-1]", 1, 1, (0, 1)),
]

EMPTY = [
    ("response[:5]", 4, 4),  # no response
    ("response[:]", 7, 7),
    ("response[0]", 4, 4),
    ("response[5]", 4, 9),  # index past the end
    ("response[-6]", 4, 9),  # negative index before the start
    ("response[3:2]", 4, 10),
    ("response[-1:-1]", 4, 10),
    ("prompt[-1]", 0, 5),  # no prompt
    ("prompt[10]", 4, 10),
    ("prompt[4:]", 4, 10),  # a prompt slice never reaches the response
    ("all[:0]", 4, 10),
    ("all[:]", 0, 0),
]

BAD = [
    "resp[:5]",
    "response[a:b]",
    "response[::2]",
    "response[1:5:1]",
    "response[5",
    "response 5]",
    "response",
    "response[]",
    "Response[:5]",
    "response[1.5]",
    "response[- 1]",
    "response[:5]x",
    "[:5]",
    "",
    "prompt[-]",
    "all[1,2]",
]


@pytest.mark.parametrize("text, prompt_len, total_len, expected", SPANS)
def test_span(text, prompt_len, total_len, expected):
    assert parse_position(text).span(prompt_len, total_len) == expected


@pytest.mark.parametrize("text, prompt_len, total_len", EMPTY)
def test_empty_span_raises(text, prompt_len, total_len):
    with pytest.raises(EmptySpanError, match=re.escape(str(parse_position(text)))):
        parse_position(text).span(prompt_len, total_len)


def test_empty_span_error_is_a_value_error():
    assert issubclass(EmptySpanError, ValueError)


@pytest.mark.parametrize("text", BAD)
def test_bad_strings(text):
    with pytest.raises(ValueError) as info:
        parse_position(text)
    assert not isinstance(info.value, EmptySpanError)
    msg = str(info.value)
    assert "\n" not in msg and repr(text) in msg


def test_bad_frame_named():
    with pytest.raises(ValueError, match="unknown frame 'resp'"):
        parse_position("resp[:5]")


@pytest.mark.parametrize("prompt_len, total_len", [(-1, 5), (6, 5)])
def test_inconsistent_lengths(prompt_len, total_len):
    with pytest.raises(ValueError, match="prompt_len") as info:
        parse_position("all[:]").span(prompt_len, total_len)
    assert not isinstance(info.value, EmptySpanError)


@pytest.mark.parametrize(
    "text, canonical, slug",
    [
        ("response[:5]", "response[:5]", "response__5"),
        ("response[0:5]", "response[:5]", "response__5"),
        ("prompt[-1]", "prompt[-1]", "prompt_m1"),
        ("all[:]", "all[:]", "all__"),
        ("response[3]", "response[3]", "response_3"),
        ("response[3:]", "response[3:]", "response_3_"),
        ("response[2:-1]", "response[2:-1]", "response_2_m1"),
        ("prompt[-3:]", "prompt[-3:]", "prompt_m3_"),
        ("  prompt[1:3] ", "prompt[1:3]", "prompt_1_3"),
        ("all[007]", "all[7]", "all_7"),
    ],
)
def test_canonical_text_and_slug(text, canonical, slug):
    pos = parse_position(text)
    assert str(pos) == canonical
    assert pos.slug == slug
    assert parse_position(str(pos)) == pos  # round trip
    assert re.fullmatch(r"[a-z0-9_]+", pos.slug)


def test_slug_injective():
    values = [None, 0, 1, 2, 12, -1, -2, -12]
    positions = set()
    for frame in ("prompt", "response", "all"):
        for a, b in itertools.product(values, values):
            positions.add(Position(frame, start=a, stop=b))
        for i in values[1:]:
            positions.add(Position(frame, index=i))
    slugs = {p.slug for p in positions}
    texts = {str(p) for p in positions}
    assert len(slugs) == len(positions) == len(texts)


def test_position_is_frozen_and_hashable():
    pos = parse_position("response[:5]")
    with pytest.raises(AttributeError):
        pos.stop = 6  # type: ignore[misc]
    assert {pos: 1}[parse_position("response[0:5]")] == 1
    assert pos.is_single is False and parse_position("prompt[-1]").is_single
    assert parse_position(pos) is pos
    with pytest.raises(ValueError, match="either an index or"):
        Position("prompt", start=1, index=2)
    with pytest.raises(ValueError, match="frame"):
        Position("resp")  # type: ignore[arg-type]
