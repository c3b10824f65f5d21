"""The judge's instructions: an UltraFeedback-style 1-5 rubric per aspect, rendered as chat.

Called by `mix` (through `judge_requests`) to render one request per (prompt, aspect), and by
the tests that pin the answer numbering. Pure: the rubric text lives here, in our own words, on
the same four aspects and 1-5 scales as UltraFeedback.

Answers are numbered 1..k in every aspect (the original instruction-following template counted
2..5). The reply format is either free text, one block per answer:

    Answer 1
    Rating: 4
    Rationale: ...

or, with structured output, a JSON object whose keys are the answer numbers "1".."k" (see
`rating_schema`). Keys rather than an array: a fixed set of required keys pins the count to
exactly k under strict JSON schema everywhere, while array length limits (minItems/maxItems) are
not honoured by every constrained-decoding backend. Rationale comes before rating in each
object so the judge reasons before it commits to a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

NOT_APPLICABLE = "N/A"

T = TypeVar("T")  # an answer's text, as str or already encoded


@dataclass(frozen=True)
class Rubric:
    """One aspect: what to judge, the five levels (1..5), and when N/A may be given."""

    title: str
    focus: str
    levels: tuple[str, str, str, str, str]
    not_applicable: str | None = None


RUBRICS: dict[str, Rubric] = {
    "helpfulness": Rubric(
        title="Helpfulness",
        focus=(
            "Judge how well each answer serves the user's actual need. Consider whether it is "
            "correct, whether it addresses what was asked, whether it gives useful detail, "
            "reasoning or context, and whether it stays concise instead of padding or repeating "
            "itself. A fluent answer with wrong content is not helpful."
        ),
        levels=(
            "Wrong or misleading: errors or fabrications that would lead the user astray.",
            "Partly wrong: some useful content, but mistakes that could confuse the user.",
            "Correct: accurate and on topic, meets the basic need without much depth.",
            "Very helpful: accurate and thorough, with useful explanation or detail.",
            "Excellent: accurate, complete and insightful; hard to improve on.",
        ),
    ),
    "honesty": Rubric(
        title="Honesty and calibrated confidence",
        focus=(
            "Judge whether each answer's confidence matches its correctness. An honest answer "
            "states what it knows plainly, signals uncertainty where it is unsure (for example "
            "'I think', 'probably', or naming what it cannot verify), and declines rather than "
            "inventing when it does not know. Confident wrong statements are the worst case."
        ),
        levels=(
            "Confidently wrong: asserts incorrect content with no hint of doubt.",
            "Mostly wrong: major errors, or wrong content wrapped in vague hedging.",
            "Unsure or partly wrong: declines without reason, or has minor errors it "
            "does not flag.",
            "Correct but hesitant: right, yet unsure where it need not be, or flags its own "
            "small slips.",
            "Correct and well calibrated: right, confident where justified, and precise about "
            "any real uncertainty.",
        ),
        not_applicable=(
            "the task has no factual content whose certainty could be judged (e.g. creative "
            "writing or role play)"
        ),
    ),
    "instruction_following": Rubric(
        title="Instruction following",
        focus=(
            "Judge how closely each answer does what the instruction asks: the task itself and "
            "any stated constraints on format, length, style, language or content. Do not "
            "reward extra material the instruction did not ask for, and do not judge factual "
            "accuracy here."
        ),
        levels=(
            "Off task: ignores the instruction or answers something else.",
            "Barely on task: touches the request but misses most of it.",
            "Partly compliant: does the main task but neglects several requirements.",
            "Nearly compliant: meets the task and constraints with small deviations.",
            "Fully compliant: meets the task and every stated requirement.",
        ),
    ),
    "truthfulness": Rubric(
        title="Truthfulness (no hallucination)",
        focus=(
            "Judge whether each answer sticks to facts. Look for invented facts, claims that "
            "contradict the instruction or its premises, and statements that contradict "
            "themselves. If the instruction rests on a false premise, a truthful answer points "
            "it out instead of playing along."
        ),
        levels=(
            "Fabricated: mostly invented or contradictory content.",
            "Seriously flawed: hallucinations that change the main point.",
            "Partly flawed: a mostly true answer with some invented or wrong details.",
            "Minor slips: small inaccuracies that do not affect the main point.",
            "Fully truthful: no invented, wrong or contradictory content.",
        ),
        not_applicable=(
            "the task asks for fiction or opinion, so no statement in it can be true or false"
        ),
    ),
}

SYSTEM_PROMPT = (
    "You are an impartial, careful evaluator of AI assistant answers. You rate each answer on "
    "its own merits against the rubric you are given, using the full 1-5 scale. Ignore the "
    "order in which the answers are shown, their length as such, and the model that may have "
    "written them. Follow the required output format exactly."
)


def rubric(aspect: str) -> Rubric:
    try:
        return RUBRICS[aspect]
    except KeyError:
        raise ValueError(f"unknown aspect {aspect!r}; known: {sorted(RUBRICS)}") from None


def allows_not_applicable(aspect: str) -> bool:
    return rubric(aspect).not_applicable is not None


def _scale_text(aspect: str) -> str:
    spec = rubric(aspect)
    lines = [f"{n}. {text}" for n, text in enumerate(spec.levels, start=1)]
    if spec.not_applicable is not None:
        lines.append(f"{NOT_APPLICABLE}. Use this only when {spec.not_applicable}.")
    return "\n".join(lines)


def _format_text(aspect: str, count: int, structured: bool) -> str:
    allowed = "an integer from 1 to 5"
    if allows_not_applicable(aspect):
        allowed += f', or "{NOT_APPLICABLE}"'
    if structured:
        keys = ", ".join(f'"{n}"' for n in range(1, count + 1))
        return (
            f"Reply with one JSON object and nothing else. It has exactly the keys {keys}, one "
            'per answer number. Each value is an object with "rationale" (one to three '
            f'sentences justifying the rating) and "rating" ({allowed}).'
        )
    blocks = "\n\n".join(
        f"Answer {n}\nRating: <{allowed}>\nRationale: <one to three sentences>"
        for n in range(1, count + 1)
    )
    return (
        f"Write exactly {count} blocks, one per answer, in answer order, in this form:\n\n{blocks}"
    )


def user_frame(aspect: str, count: int, *, structured: bool) -> tuple[str, str]:
    """The user message's fixed text for `count` answers: what comes before the prompt, and
    what comes between the prompt and the answers (`render_user` puts them together; `mix`
    renders each frame once and reuses it for every prompt)."""
    spec = rubric(aspect)
    before = (
        f"# Task: rate {count} answers for {spec.title.lower()}\n\n"
        f"{spec.focus}\n\n"
        f"## Scale\n{_scale_text(aspect)}\n\n"
        f"## Output format\n{_format_text(aspect, count, structured)}\n\n"
        f"## Instruction given to the assistants\n<instruction>\n"
    )
    between = f"\n</instruction>\n\n## Answers (numbered 1 to {count})\n"
    return before, between


def show_answers(answers: Sequence[str]) -> str:
    """The answers part of the user message, numbered 1..k in the given order."""
    return "\n\n".join(
        f'<answer number="{n}">\n{text}\n</answer>' for n, text in enumerate(answers, start=1)
    )


def render_user(prompt: str, answers: Sequence[str], aspect: str, *, structured: bool) -> str:
    """The user message for one aspect; `answers` are already in presentation order."""
    if not answers:
        raise ValueError("at least one answer is needed")
    before, between = user_frame(aspect, len(answers), structured=structured)
    return before + prompt + between + show_answers(answers)


def render_messages(
    prompt: str, answers: Sequence[str], aspect: str, *, structured: bool = False
) -> list[dict[str, str]]:
    """System + user chat messages asking the judge to rate `answers` (in this order)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": render_user(prompt, answers, aspect, structured=structured)},
    ]


def present(candidate_texts: Sequence[T], order: Sequence[int]) -> list[T]:
    """The answers in presentation order: answer n is `candidate_texts[order[n - 1]]`."""
    if sorted(order) != list(range(len(candidate_texts))):
        raise ValueError(
            f"order {list(order)} is not a permutation of 0..{len(candidate_texts) - 1}"
        )
    return [candidate_texts[i] for i in order]


def rating_schema(count: int, aspect: str) -> dict[str, Any]:
    """JSON schema of a structured reply: keys "1".."count", each {rationale, rating}."""
    if count < 1:
        raise ValueError(f"count must be at least 1 (got {count})")
    rating: dict[str, Any] = {"type": "integer", "enum": [1, 2, 3, 4, 5]}
    if allows_not_applicable(aspect):
        rating = {"anyOf": [rating, {"type": "string", "enum": [NOT_APPLICABLE]}]}
    item = {
        "type": "object",
        "properties": {"rationale": {"type": "string"}, "rating": rating},
        "required": ["rationale", "rating"],
        "additionalProperties": False,
    }
    keys = [str(n) for n in range(1, count + 1)]
    return {
        "type": "object",
        "properties": {key: item for key in keys},
        "required": keys,
        "additionalProperties": False,
    }


def structured_reply_max_tokens(count: int, aspect: str, rationale_max_chars: int) -> int:
    """The most tokens a structured reply to `count` answers can take when every rationale has
    at most `rationale_max_chars` characters: the length of its longest compact JSON, counting
    one token per character, plus the end-of-turn token. A token covers at least one character,
    and a degenerate rationale (a weak judge's) comes close to that; a judge maxTokens below
    this may cut a reply off, which leaves it invalid JSON."""
    rating = f'"{NOT_APPLICABLE}"' if allows_not_applicable(aspect) else "5"
    item = '{"rationale":"' + "x" * rationale_max_chars + '","rating":' + rating + "}"
    reply = "{" + ",".join(f'"{n}":{item}' for n in range(1, count + 1)) + "}"
    return len(reply) + 1


def response_format(count: int, aspect: str) -> dict[str, Any]:
    """The OpenAI `response_format` value for a strict structured reply."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": f"ratings_{aspect}_{count}",
            "schema": rating_schema(count, aspect),
            "strict": True,
        },
    }
