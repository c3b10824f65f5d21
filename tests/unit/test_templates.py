"""Unit tests of synthpref.templates: numbering 1..k in every aspect, order, JSON schema."""

from __future__ import annotations

import json
import re

import pytest

from synthpref.ratings import parse_reply
from synthpref.spec import DEFAULT_ASPECTS
from synthpref.stages.judge import bound_strings
from synthpref.templates import (
    NOT_APPLICABLE,
    RUBRICS,
    SYSTEM_PROMPT,
    allows_not_applicable,
    present,
    rating_schema,
    render_messages,
    response_format,
    structured_reply_max_tokens,
)

CASES = [
    (aspect, k, structured)
    for aspect in DEFAULT_ASPECTS
    for k in (2, 4, 5)
    for structured in (False, True)
]


def answer_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r'<answer number="(\d+)">', text)]


@pytest.mark.parametrize(("aspect", "k", "structured"), CASES)
def test_answers_are_numbered_one_to_k_in_every_aspect(
    aspect: str, k: int, structured: bool
) -> None:
    answers = [f"ANSWER-TEXT-{i}" for i in range(k)]
    messages = render_messages("the prompt", answers, aspect, structured=structured)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert answer_numbers(user) == list(range(1, k + 1))
    for n, text in enumerate(answers, start=1):
        assert f'<answer number="{n}">\n{text}\n</answer>' in user
    if structured:
        assert ", ".join(f'"{n}"' for n in range(1, k + 1)) in user
    else:
        # The output format asks for exactly blocks "Answer 1".."Answer k", nothing else.
        assert re.findall(r"^Answer (\d+)$", user, re.MULTILINE) == [
            str(n) for n in range(1, k + 1)
        ]
    assert "the prompt" in user


@pytest.mark.parametrize("aspect", DEFAULT_ASPECTS)
def test_every_aspect_has_its_own_rubric_with_five_levels(aspect: str) -> None:
    user = render_messages("p", ["a", "b"], aspect)[1]["content"]
    for n in range(1, 6):
        assert re.search(rf"^{n}\. \S", user, re.MULTILINE)
    assert RUBRICS[aspect].focus in user
    others = [RUBRICS[a].focus for a in DEFAULT_ASPECTS if a != aspect]
    assert not any(focus in user for focus in others)


@pytest.mark.parametrize(
    ("aspect", "has_na"),
    [
        ("helpfulness", False),
        ("honesty", True),
        ("instruction_following", False),
        ("truthfulness", True),
    ],
)
def test_not_applicable_offered_where_the_rubric_has_it(aspect: str, has_na: bool) -> None:
    assert allows_not_applicable(aspect) is has_na
    user = render_messages("p", ["a", "b"], aspect)[1]["content"]
    assert (f"{NOT_APPLICABLE}." in user) is has_na
    schema_text = json.dumps(rating_schema(2, aspect))
    assert (f'"{NOT_APPLICABLE}"' in schema_text) is has_na


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ([0, 1, 2, 3], ["A", "B", "C", "D"]),
        ([2, 0, 3, 1], ["C", "A", "D", "B"]),
        ([3, 2, 1, 0], ["D", "C", "B", "A"]),
    ],
)
def test_permutation_is_applied(order: list[int], expected: list[str]) -> None:
    shown = present(["A", "B", "C", "D"], order)
    assert shown == expected
    user = render_messages("p", shown, "helpfulness")[1]["content"]
    positions = [
        user.index(f'<answer number="{n}">\n{text}\n') for n, text in enumerate(expected, 1)
    ]
    assert positions == sorted(positions)


@pytest.mark.parametrize("order", [[0, 0, 1, 2], [0, 1, 2], [1, 2, 3, 4]])
def test_bad_permutation_is_rejected(order: list[int]) -> None:
    with pytest.raises(ValueError, match="permutation"):
        present(["A", "B", "C", "D"], order)


def test_unknown_aspect_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown aspect 'style'"):
        render_messages("p", ["a", "b"], "style")


@pytest.mark.parametrize("k", [2, 4, 16])
def test_schema_requires_exactly_keys_one_to_k(k: int) -> None:
    schema = rating_schema(k, "helpfulness")
    keys = [str(n) for n in range(1, k + 1)]
    assert schema["required"] == keys
    assert list(schema["properties"]) == keys
    assert schema["additionalProperties"] is False
    item = schema["properties"]["1"]
    assert item["required"] == ["rationale", "rating"]
    assert item["additionalProperties"] is False
    assert item["properties"]["rating"]["enum"] == [1, 2, 3, 4, 5]
    wrapper = response_format(k, "helpfulness")
    assert wrapper["type"] == "json_schema"
    assert wrapper["json_schema"]["strict"] is True
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", wrapper["json_schema"]["name"])
    assert wrapper["json_schema"]["schema"] == schema


def test_a_reply_shaped_like_the_schema_parses() -> None:
    reply = {"1": {"rationale": "good", "rating": 5}, "2": {"rationale": "n/a", "rating": "N/A"}}
    schema = rating_schema(2, "honesty")
    assert set(reply) == set(schema["required"])
    assert parse_reply(json.dumps(reply), 2)[0] == 5.0


def test_system_prompt_is_shared() -> None:
    assert render_messages("p", ["a", "b"], "honesty")[0]["content"] == SYSTEM_PROMPT


@pytest.mark.parametrize(("aspect", "k", "max_chars"), [("honesty", 4, 40), ("helpfulness", 3, 1)])
def test_structured_reply_bound_is_the_longest_valid_reply(
    aspect: str, k: int, max_chars: int
) -> None:
    """The longest compact reply the bounded schema allows, one token per character, plus the
    end of turn: what judge.maxTokens must cover so a reply is never cut off."""
    schema = bound_strings(rating_schema(k, aspect), max_chars)
    item = schema["properties"]["1"]["properties"]
    assert item["rationale"]["maxLength"] == max_chars
    rating: int | str = NOT_APPLICABLE if allows_not_applicable(aspect) else 5
    assert json.dumps(rating) in json.dumps(item["rating"])  # the longest rating allowed
    longest = {str(n): {"rationale": "x" * max_chars, "rating": rating} for n in range(1, k + 1)}

    bound = structured_reply_max_tokens(k, aspect, max_chars)

    assert bound == len(json.dumps(longest, separators=(",", ":"))) + 1
