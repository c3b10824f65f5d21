"""Read the judge's ratings for k answers out of one reply, free-text rubric or JSON.

Called by `parse` once per judge reply. Pure. Every answer gets either a float in 1..5 or a
typed failure; a failure is counted by the caller and never turned into a number (the original
scripts turned an unparseable reply into 1 and N/A into -1 and averaged them in).

Free text: `Rating: N` lines, tolerant of case, whitespace, markdown (`**Rating:** 4`, bullets),
`4/5`, `4 out of 5`, `[4]`, and of numbered headers (`Answer 2`, `#### Output for Text 2`,
`**Response 2:**`). With headers, each rating belongs to the header above it; without them,
ratings are taken in order. JSON: the `templates.rating_schema` shape ({"1": {"rating": ..}})
or {"ratings": [{"rating": ..}, ...]}, optionally in a ``` code fence.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any

import msgspec

MIN_RATING = 1.0
MAX_RATING = 5.0


class RatingFailure(StrEnum):
    """Why an answer has no usable rating (keys of the parse summary's counts)."""

    UNPARSEABLE = "unparseable"
    MISSING = "missing"
    NOT_APPLICABLE = "not_applicable"
    OUT_OF_RANGE = "out_of_range"


Parsed = float | RatingFailure

_HEADER = re.compile(
    r"^\s*(?:#{1,6}\s*)?[\[(]?\s*(?:output\s+for\s+)?(?:answer|text|response)\s*"
    r"(?:#|no\.?|number)?\s*(\d+)\s*[\])]?\s*(?:[:.)\-\u2013\u2014]\s*(.*))?$",
    re.IGNORECASE,
)
_RATING_LINE = re.compile(
    r"^\s*(?:[-+\u2022>]\s*)?(?:#{1,6}\s*)?(?:score|rating)\s*"
    r"(?:\([^)]*\))?\s*(?:[:=\-\u2013\uff1a]\s*|\s+|$)(.*)$",
    re.IGNORECASE,
)
_NOT_APPLICABLE = re.compile(r"^(?:n\s*/\s*a|n\.a\.?|na|not\s+applicable)\b", re.IGNORECASE)
_NUMBER = re.compile(
    r"^([+-]?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)
# A fenced JSON object anywhere in a reply ("Here are my ratings: ```json {...} ```").
_FENCED_OBJECT = re.compile(r"```[a-zA-Z]*[ \t]*\n?(\{.*?\})\s*```", re.DOTALL)


def rating_value(text: str) -> Parsed:
    """One rating value as written after `Rating:`, e.g. '4', '4/5', '[N/A]', '5 (great)'."""
    value = text.strip().strip("[]()").strip()
    if _NOT_APPLICABLE.match(value):
        return RatingFailure.NOT_APPLICABLE
    match = _NUMBER.match(value)
    if match is None:
        return RatingFailure.UNPARSEABLE
    number, scale = match.groups()
    if scale is not None and float(scale) != MAX_RATING:
        return RatingFailure.UNPARSEABLE  # another scale (8/10): rescaling would be a guess
    return _in_range(float(number))


def _in_range(number: float) -> Parsed:
    if MIN_RATING <= number <= MAX_RATING:
        return number
    return RatingFailure.OUT_OF_RANGE


def _clean(text: str) -> list[str]:
    # Markdown emphasis and code marks carry no meaning for ratings.
    return [line.replace("**", "").replace("__", "").replace("`", "") for line in text.splitlines()]


def _rating_in(lines: list[str]) -> Parsed | None:
    """The first rating in a block of lines; a bare `Rating:` takes the next non-empty line."""
    for index, line in enumerate(lines):
        match = _RATING_LINE.match(line.replace("*", ""))
        if match is None:
            continue
        value = match.group(1).strip()
        if not value:
            value = next((rest.strip() for rest in lines[index + 1 :] if rest.strip()), "")
        return rating_value(value)
    return None


def parse_text(text: str, count: int) -> list[Parsed]:
    """Ratings for `count` answers from a free-text rubric reply."""
    lines = _clean(text)
    sections: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        header = _HEADER.match(line.replace("*", ""))
        if header is not None:
            number = int(header.group(1))
            current = [] if number in sections else sections.setdefault(number, [])
            if header.group(2):
                current.append(header.group(2))
        elif current is not None:
            current.append(line)
    if sections:
        found = {n: _rating_in(block) for n, block in sections.items()}
        return [_or_missing(found.get(n)) for n in range(1, count + 1)]
    ratings: list[Parsed] = []
    for index in range(len(lines)):
        if _RATING_LINE.match(lines[index].replace("*", "")):
            parsed = _rating_in(lines[index : index + 2])
            ratings.append(parsed if parsed is not None else RatingFailure.UNPARSEABLE)
    if not ratings or len(ratings) > count:
        # Nothing to read, or more ratings than answers: no way to tell which is which.
        return [RatingFailure.UNPARSEABLE] * count
    return ratings + [RatingFailure.MISSING] * (count - len(ratings))


def _or_missing(parsed: Parsed | None) -> Parsed:
    return RatingFailure.MISSING if parsed is None else parsed


def _json_value(value: Any) -> Parsed:
    if isinstance(value, dict):
        if "rating" not in value:
            return RatingFailure.MISSING
        value = value["rating"]
    if type(value) is int:  # the usual case, first: parse reads millions of ratings
        return _in_range(float(value))
    if isinstance(value, bool) or value is None:
        return RatingFailure.UNPARSEABLE
    if isinstance(value, int | float):
        return _in_range(float(value))
    if isinstance(value, str):
        return rating_value(value)
    return RatingFailure.UNPARSEABLE


_ABSENT = object()


def parse_json(document: Any, count: int) -> list[Parsed]:
    """Ratings for `count` answers from a decoded JSON reply."""
    if not isinstance(document, dict):
        return [RatingFailure.UNPARSEABLE] * count
    if isinstance(document.get("ratings"), list):
        items = document["ratings"]
        if len(items) > count:
            return [RatingFailure.UNPARSEABLE] * count
        parsed = [_json_value(item) for item in items]
        return parsed + [RatingFailure.MISSING] * (count - len(parsed))
    values = [document.get(str(n), _ABSENT) for n in range(1, count + 1)]
    if all(value is _ABSENT for value in values):
        return [RatingFailure.UNPARSEABLE] * count
    return [RatingFailure.MISSING if value is _ABSENT else _json_value(value) for value in values]


def _json_document(text: str) -> Any:
    """The decoded JSON of `text`, or None. msgspec first (parse decodes a reply per request);
    what it refuses goes to the standard library, which also reads NaN and Infinity."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


class _Rated(msgspec.Struct):
    """One answer's entry of a `templates.rating_schema` reply as the fast path reads it: a
    numeric `rating` (other fields, the rationale, are skipped unread)."""

    rating: int | float


_decode_rated = msgspec.json.Decoder(dict[str, _Rated]).decode
# The keys "1".."n" of a reply for n answers, made once per n.
_ANSWER_KEYS: dict[int, tuple[str, ...]] = {}


def _answer_keys(count: int) -> tuple[str, ...]:
    keys = _ANSWER_KEYS.get(count)
    if keys is None:
        keys = _ANSWER_KEYS[count] = tuple(str(n) for n in range(1, count + 1))
    return keys


def parse_schema_reply(text: str, count: int) -> list[Parsed] | None:
    """`parse_json` of the usual structured reply, {"1": {"rating": 4, ...}, ...}, decoded by a
    typed decoder; None for any other document (the caller then takes the general path).

    Every value must be an object with a JSON number `rating`, so none of `_json_value`'s other
    cases (strings, N/A, a missing rating, a `ratings` list) can arise, and the result is what
    the general path gives for the same text (tests/unit/test_ratings.py compares them)."""
    try:
        document = _decode_rated(text)
    except msgspec.DecodeError:
        return None
    keys = _answer_keys(count)
    if document.keys().isdisjoint(keys):
        return [RatingFailure.UNPARSEABLE] * count
    return [
        RatingFailure.MISSING
        if (item := document.get(key)) is None
        else _in_range(float(item.rating))
        for key in keys
    ]


def _json_reply(text: str, count: int) -> list[Parsed] | None:
    """Ratings from a reply that is a JSON object; None when it is not one."""
    fast = parse_schema_reply(text, count)
    if fast is not None:
        return fast
    document = _json_document(text)
    if isinstance(document, dict):
        return parse_json(document, count)
    return None


def parse_reply(text: str, count: int) -> list[Parsed]:
    """Ratings for `count` answers: JSON when the reply is a JSON object, else rubric text."""
    return parse_reply_detail(text, count)[0]


def parse_reply_detail(text: str, count: int) -> tuple[list[Parsed], bool]:
    """`parse_reply`, and whether the JSON had to be taken out of a markdown fence (judges
    without structured output often fence it, with text around the fence or not)."""
    if count < 1:
        raise ValueError(f"count must be at least 1 (got {count})")
    # A JSON object with only JSON whitespace around it is what the steps below would strip,
    # find unfenced and decode: the fast path may take it as it is.
    parsed = parse_schema_reply(text, count)
    if parsed is not None:
        return parsed, False
    stripped = text.strip()
    fenced = _FENCE.match(stripped) or _FENCED_OBJECT.search(stripped)
    if fenced is not None:
        json_parsed = _json_reply(fenced.group(1).strip(), count)
        if json_parsed is not None:
            return json_parsed, True
    if stripped.startswith("{"):
        json_parsed = _json_reply(stripped, count)
        if json_parsed is not None:
            return json_parsed, False
    return parse_text(text, count), False
