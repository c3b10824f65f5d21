"""Unit tests of synthpref.ratings: both reply formats, every failure kind, N/A never a number."""

from __future__ import annotations

import json

import pytest

from synthpref import ratings
from synthpref.ratings import (
    Parsed,
    RatingFailure,
    _json_document,
    parse_json,
    parse_reply,
    parse_schema_reply,
    parse_text,
    rating_value,
)

U = RatingFailure.UNPARSEABLE
M = RatingFailure.MISSING
NA = RatingFailure.NOT_APPLICABLE
OOR = RatingFailure.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4", 4.0),
        (" 5 ", 5.0),
        ("1", 1.0),
        ("4/5", 4.0),
        ("4 / 5", 4.0),
        ("3 out of 5", 3.0),
        ("[2]", 2.0),
        ("(3)", 3.0),
        ("5 (excellent)", 5.0),
        ("4.0", 4.0),
        ("3.5", 3.5),
        ("N/A", NA),
        ("n/a", NA),
        ("NA", NA),
        ("[N/A]", NA),
        ("Not applicable", NA),
        ("0", OOR),
        ("6", OOR),
        ("-1", OOR),
        ("10", OOR),
        ("8/10", U),
        ("excellent", U),
        ("", U),
        ("four", U),
        ("?", U),
    ],
)
def test_rating_value(value: str, expected: Parsed) -> None:
    assert rating_value(value) == expected


TEXT_CASES: list[tuple[str, str, int, list[Parsed]]] = [
    (
        "plain blocks",
        "Answer 1\nRating: 4\nRationale: fine.\n\nAnswer 2\nRating: 2\nRationale: weak.",
        2,
        [4.0, 2.0],
    ),
    (
        "no headers, ratings in order",
        "Rating: 5\nRationale: a\nRating: 3\nRationale: b\nRating: 1\nRationale: c",
        3,
        [5.0, 3.0, 1.0],
    ),
    (
        "markdown bold and case",
        "**Answer 1**\n**Rating:** 4\n**Rationale:** ok\n\n"
        "**ANSWER 2**\n**RATING**: 5/5\nRATIONALE: great",
        2,
        [4.0, 5.0],
    ),
    (
        "ultrafeedback-style headers",
        "#### Output for Text 1\nRating: 3\nRationale: x\n"
        "#### Output for Text 2\nRating: N/A\nRationale: y",
        2,
        [3.0, NA],
    ),
    (
        "headers out of order map by number",
        "### Answer 2\nRating: 1\n### Answer 1\nRating: 5",
        2,
        [5.0, 1.0],
    ),
    (
        "bullets and extra whitespace",
        "Answer 1:\n  - rating :   2  \n  - rationale: meh\nAnswer 2:\n  * Rating: 4\n",
        2,
        [2.0, 4.0],
    ),
    ("rating on the next line", "Answer 1\nRating:\n3\nAnswer 2\nRating:\n\n4", 2, [3.0, 4.0]),
    (
        "header with rating on the same line",
        "Answer 1: Rating: 4\nAnswer 2: Rating: 2",
        2,
        [4.0, 2.0],
    ),
    (
        "fewer ratings than answers",
        "Rating: 4\nRationale: a\nRating: 3\nRationale: b",
        4,
        [4.0, 3.0, M, M],
    ),
    (
        "header section without rating",
        "Answer 1\nRating: 4\nAnswer 2\nRationale: forgot",
        2,
        [4.0, M],
    ),
    ("header missing entirely", "Answer 1\nRating: 4\nAnswer 3\nRating: 2", 3, [4.0, M, 2.0]),
    ("unreadable value", "Answer 1\nRating: good\nAnswer 2\nRating: 5", 2, [U, 5.0]),
    ("out of range values", "Rating: 0\nRating: 7\nRating: 3", 3, [OOR, OOR, 3.0]),
    ("other scale", "Rating: 8/10\nRating: 4/5", 2, [U, 4.0]),
    ("no ratings at all", "Both answers are fine, I like the first one more.", 2, [U, U]),
    ("empty reply", "", 3, [U, U, U]),
    ("more ratings than answers is ambiguous", "Rating: 4\nRating: 3\nRating: 2", 2, [U, U]),
    ("refusal", "I'm sorry, I can't help with that.", 4, [U, U, U, U]),
    (
        "words starting with rating are not ratings",
        "Ratings follow.\nRating: 4\nRating: 2",
        2,
        [4.0, 2.0],
    ),
    (
        "N/A in several spellings",
        "Rating: n/a\nRating: Not applicable\nRating: [N/A]",
        3,
        [NA, NA, NA],
    ),
    (
        "headers above k are ignored",
        "Answer 1\nRating: 4\nAnswer 2\nRating: 3\nAnswer 3\nRating: 2",
        2,
        [4.0, 3.0],
    ),
    (
        "truncated JSON is not salvaged",
        '{"1": {"rationale": "fine", "rating": 4}, "2": {"ratio',
        2,
        [U, U],
    ),
]


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [case[1:] for case in TEXT_CASES],
    ids=[case[0] for case in TEXT_CASES],
)
def test_free_text_reply(text: str, count: int, expected: list[Parsed]) -> None:
    assert parse_reply(text, count) == expected


def obj(*ratings: object) -> str:
    return json.dumps({str(n): {"rationale": "r", "rating": r} for n, r in enumerate(ratings, 1)})


JSON_CASES: list[tuple[str, str, int, list[Parsed]]] = [
    ("schema shape", obj(4, 2, 5), 3, [4.0, 2.0, 5.0]),
    ("schema shape with N/A", obj("N/A", 3), 2, [NA, 3.0]),
    ("code fence", "```json\n" + obj(1, 5) + "\n```", 2, [1.0, 5.0]),
    ("bare fence", "```\n" + obj(3, 3) + "\n```", 2, [3.0, 3.0]),
    ("numeric strings", obj("4", "2/5"), 2, [4.0, 2.0]),
    ("float", obj(4.0, 3), 2, [4.0, 3.0]),
    ("out of range", obj(0, 6, 3), 3, [OOR, OOR, 3.0]),
    ("missing key", obj(4, 2), 3, [4.0, 2.0, M]),
    ("item without rating", json.dumps({"1": {"rationale": "x"}, "2": {"rating": 2}}), 2, [M, 2.0]),
    ("boolean is not a rating", obj(True, 4), 2, [U, 4.0]),
    ("null is not a rating", obj(None, 4), 2, [U, 4.0]),
    ("word is not a rating", obj("great", 4), 2, [U, 4.0]),
    ("list is not a rating", obj([4], 4), 2, [U, 4.0]),
    ("values may be bare ratings", json.dumps({"1": 5, "2": "N/A"}), 2, [5.0, NA]),
    ("ratings array", json.dumps({"ratings": [{"rating": 5}, {"rating": 1}]}), 2, [5.0, 1.0]),
    ("short ratings array", json.dumps({"ratings": [{"rating": 5}]}), 3, [5.0, M, M]),
    ("long ratings array is ambiguous", json.dumps({"ratings": [1, 2, 3]}), 2, [U, U]),
    ("unknown object", json.dumps({"score": 5}), 2, [U, U]),
    ("extra keys ignored", obj(4, 3, 2), 2, [4.0, 3.0]),
    # Not strict JSON, but Python's reader takes them (and parse did before it used msgspec).
    ("NaN and Infinity are out of range", obj(float("nan"), float("inf"), 2), 3, [OOR, OOR, 2.0]),
    ("duplicate key: the last wins", '{"1": {"rating": 1}, "1": {"rating": 4}}', 1, [4.0]),
    ("big integer", obj(10**30, 5), 2, [OOR, 5.0]),
    ("bare digits keys only", json.dumps({"01": 5}), 1, [U]),
]


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [case[1:] for case in JSON_CASES],
    ids=[case[0] for case in JSON_CASES],
)
def test_json_reply(text: str, count: int, expected: list[Parsed]) -> None:
    assert parse_reply(text, count) == expected


@pytest.mark.parametrize(
    "text", ["Rating: N/A\nRating: N/A", obj("N/A", "N/A"), "hello", "Rating: 0\nRating: 9"]
)
def test_failures_are_never_numbers(text: str) -> None:
    # The original pipeline turned unparseable into 1 and N/A into -1; here they stay failures.
    parsed = parse_reply(text, 2)
    assert all(isinstance(p, RatingFailure) for p in parsed)
    assert not any(isinstance(p, float) for p in parsed)


def test_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="count"):
        parse_reply("Rating: 4", 0)


# Replies the typed fast path (`parse_schema_reply`) may or may not take, good and malformed.
FAST_PATH_CASES: list[tuple[str, int]] = [
    *((case[1].strip().removeprefix("```json").strip("`\n"), case[2]) for case in JSON_CASES),
    (obj(1, 2, 3, 4), 4),
    (obj(5, 4.5, 1.0), 3),
    (obj(0, 6, -1, 10**30), 4),
    (obj(3, 3), 4),
    (obj(3, 3, 3, 3, 3), 4),
    (obj(True, 2), 2),
    (obj(None, 2), 2),
    (obj("4", 2), 2),
    (obj([4], 2), 2),
    (obj({"rating": 4}, 2), 2),
    (json.dumps({"1": {"rationale": "r"}, "2": {"rating": 2}}), 2),
    (json.dumps({"1": {"rating": 4}, "note": "x"}), 2),
    (json.dumps({"1": 4, "2": {"rating": 2}}), 2),
    (json.dumps({"2": {"rating": 2}, "9": {"rating": 1}}), 2),
    (json.dumps({"9": {"rating": 1}}), 2),
    (json.dumps({}), 2),
    (json.dumps({"ratings": [{"rating": 4}, {"rating": 2}]}), 2),
    (json.dumps({"ratings": {"rating": 4}, "1": {"rating": 2}}), 2),
    ('{"1": {"rating": 2, "rating": 5}}', 1),
    ('{"1": {"rating": 2, "rating": "x"}}', 1),
    ('{"1": {"rating": 4}', 1),
    ('{"1": {"rating": 4}} trailing', 1),
    ('{"1": {"rating": NaN}}', 1),
    ("[1, 2]", 2),
]


def typed(parsed: list[Parsed] | None) -> list[tuple[type, Parsed]] | None:
    """Values with their types, so 4 and 4.0 (or a failure and its string) differ."""
    return None if parsed is None else [(type(value), value) for value in parsed]


@pytest.mark.parametrize(("text", "count"), FAST_PATH_CASES)
def test_fast_path_gives_what_the_general_path_gives(text: str, count: int) -> None:
    fast = parse_schema_reply(text, count)
    if fast is None:
        return  # not taken: parse_reply goes on to the general path itself
    document = _json_document(text)
    assert isinstance(document, dict)
    assert typed(fast) == typed(parse_json(document, count))


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        (obj(4, 2, 5), 3, [4.0, 2.0, 5.0]),
        (obj(0, 4.5), 2, [OOR, 4.5]),
        (obj(3), 2, [3.0, M]),
        (json.dumps({"7": {"rating": 3}}), 2, [U, U]),
        ('{"1": {"rating": 2, "rating": 5}}', 1, [5.0]),
    ],
)
def test_fast_path_takes_the_usual_replies(text: str, count: int, expected: list[Parsed]) -> None:
    assert typed(parse_schema_reply(text, count)) == typed(expected)


@pytest.mark.parametrize(
    "text",
    [
        obj("4", 2),
        obj(None, 2),
        obj(True, 2),
        json.dumps({"1": {"rationale": "r"}, "2": {"rating": 2}}),
        json.dumps({"ratings": [{"rating": 4}, {"rating": 2}]}),
        json.dumps({"1": {"rating": 4}, "note": "x"}),
        '{"1": {"rating": NaN}, "2": {"rating": 2}}',
        '{"1": {"rating": 4}',
    ],
)
def test_fast_path_leaves_every_other_shape_to_the_general_path(text: str) -> None:
    assert parse_schema_reply(text, 2) is None


def general_reply(text: str, count: int) -> list[Parsed]:
    """`parse_reply` without the fast path: strip, unfence, decode untyped, else rubric text."""
    stripped = text.strip()
    fenced = ratings._FENCE.match(stripped)
    if fenced is not None:
        stripped = fenced.group(1).strip()
    if stripped.startswith("{"):
        document = _json_document(stripped)
        if isinstance(document, dict):
            return parse_json(document, count)
    return parse_text(text, count)


REPLY_CASES: list[tuple[str, int]] = [
    *FAST_PATH_CASES,
    *((case[1], case[2]) for case in JSON_CASES),
    *((case[1], case[2]) for case in TEXT_CASES),
    *((f"\n {text}\r\n\t", count) for text, count in FAST_PATH_CASES),
    *((f"\u00a0{text}\u2003", count) for text, count in FAST_PATH_CASES),
    ("```json\n" + obj(4, 2) + "\n```", 2),
    ("Rating: 4\n" + obj(4, 2), 2),
]


@pytest.mark.parametrize(("text", "count"), REPLY_CASES)
def test_parse_reply_gives_what_the_general_path_gives(text: str, count: int) -> None:
    assert typed(parse_reply(text, count)) == typed(general_reply(text, count))


@pytest.mark.parametrize(
    ("reply", "fenced"),
    [
        ('{"1": {"rating": 4}, "2": {"rating": 2}}', False),
        ('```json\n{"1": {"rating": 4}, "2": {"rating": 2}}\n```', True),
        ('```\n{"1": {"rating": 4}, "2": {"rating": 2}}\n```', True),
        (
            'Here are my ratings:\n```json\n{"1": {"rating": 4}, "2": {"rating": 2}}\n```\nDone.',
            True,
        ),
        ('Ratings below.\n```json {"1": {"rating": 4}, "2": {"rating": 2}} ```', True),
    ],
)
def test_json_in_a_markdown_fence_is_parsed_and_counted(reply: str, fenced: bool) -> None:
    from synthpref.ratings import parse_reply_detail

    assert parse_reply_detail(reply, 2) == ([4.0, 2.0], fenced)
    assert parse_reply(reply, 2) == [4.0, 2.0]
