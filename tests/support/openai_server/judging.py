"""What the test server answers a chat request with: the outcomes a test can script
(`Judgement`, `ReplyText`, `Garbled`, `ContentFiltered`, `ErrorLine`), the default ratings (a
hash of each answer's text, `default_rating`), and replies that fit a request's JSON schema or
the rubric format. Pure; used by `chat` (sync and batch requests alike)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from tests.support.openai_server.wire import TOKEN, JsonObject, digest, message_text


def default_rating(answer_text: str) -> int:
    """The rating 1..5 the server gives an answer by default: a hash of its stripped text."""
    return 1 + digest("rating", answer_text.strip()) % 5


# `<text 3> ...` (UltraFeedback), `Answer 3:` / `### Answer 3` / `[Answer 3]` style markers.
_ANSWER_MARKER = re.compile(
    r"(?im)^[ \t]*(?:#+[ \t]*)?"
    r"(?:<text[ \t]+(\d+)>|\[?(?:answer|response|text)[ \t]+(\d+)\]?[ \t]*:?)"
)
_SECTION_END = re.compile(r"(?m)^[ \t]*(?:#{2,}|</?texts?>\s*$|</answers?>)")


_ANSWER_TAG = re.compile(r'<answer number="(\d+)">\n?(.*?)\n?</answer>', re.DOTALL)


def extract_answers(text: str) -> dict[int, str]:
    """The numbered answers in a judge prompt: number -> answer text (empty if none found).

    `<answer number="N">...</answer>` blocks (synthpref's templates) win. Otherwise an answer
    runs from its marker (`<text N>`, `Answer N:`) to its closing tag (`</text N>`), the next
    marker, or the next heading, whichever comes first.
    """
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return {int(number): body.strip() for number, body in tagged}
    markers = list(_ANSWER_MARKER.finditer(text))
    answers: dict[int, str] = {}
    for position, match in enumerate(markers):
        number = int(match.group(1) or match.group(2))
        start = match.end()
        end = markers[position + 1].start() if position + 1 < len(markers) else len(text)
        chunk = text[start:end]
        closing = re.search(rf"</text[ \t]+{number}>", chunk, re.IGNORECASE)
        if closing:
            chunk = chunk[: closing.start()]
        else:
            section = _SECTION_END.search(chunk)
            if section:
                chunk = chunk[: section.start()]
        answers.setdefault(number, chunk.strip())
    return answers


def request_answers(body: JsonObject) -> dict[int, str]:
    """The numbered answers of a judge request (searched in the last user message)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return extract_answers(message_text(message.get("content")))
    return {}


# ----------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Judgement:
    """Judge ratings per answer number (an int 1..5, or a string such as "N/A")."""

    ratings: dict[int, int | str]
    rationale: str = "Scripted judgement."


@dataclass(frozen=True)
class ReplyText:
    """A reply with exactly this text."""

    text: str


@dataclass(frozen=True)
class Garbled:
    """A reply that is neither valid JSON nor the rubric format."""

    text: str = "I would rather not rate these answers; they are all lovely in their own way."


@dataclass(frozen=True)
class ContentFiltered:
    """A reply the content filter stopped: `finish_reason` "content_filter", content so far."""

    text: str = ""


@dataclass(frozen=True)
class ErrorLine:
    """A failed request: `status_code` None puts `error` on the line (response null), as the
    service does for `batch_expired` / `request_timeout`; otherwise a non-2xx response."""

    code: str = "request_timeout"
    message: str = "The request timed out."
    status_code: int | None = None


Outcome = Judgement | ReplyText | Garbled | ContentFiltered | ErrorLine


@dataclass(frozen=True)
class RequestInfo:
    """What a request script sees: custom_id (None for sync chat), body, batch and attempt."""

    custom_id: str | None
    body: JsonObject
    batch_id: str | None
    seen_before: int  # how many earlier batches already processed this custom_id


# --------------------------------------------------------------------------------- judgements


def _resolve(schema: JsonObject, root: JsonObject) -> JsonObject:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return _resolve(target, root)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            return _resolve(non_null[0] if non_null else options[0], root)
    return schema


def _fill(
    schema: JsonObject,
    root: JsonObject,
    name: str,
    answer: int | None,
    judgement: Judgement,
) -> Any:
    schema = _resolve(schema, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    lowered = name.lower()
    rating = judgement.ratings.get(answer) if answer is not None else None
    if "enum" in schema:
        choices = list(schema["enum"])
        for candidate in (rating, str(rating)):
            if candidate in choices:
                return candidate
        return choices[0]
    if kind == "object" or "properties" in schema:
        properties: JsonObject = schema.get("properties", {})
        result: JsonObject = {}
        for prop, sub in properties.items():
            numbered = re.search(r"(\d+)$", prop)
            if answer is None and numbered and int(numbered.group(1)) in judgement.ratings:
                result[prop] = _fill(sub, root, prop, int(numbered.group(1)), judgement)
            else:
                result[prop] = _fill(sub, root, prop, answer, judgement)
        return result
    if kind == "array":
        items = schema.get("items", {})
        if answer is None:
            return [_fill(items, root, name, n, judgement) for n in sorted(judgement.ratings)]
        return [_fill(items, root, name, answer, judgement)]
    is_rating = "rating" in lowered or "score" in lowered
    is_number = lowered in ("answer", "index", "number", "answer_number", "id", "text", "n")
    if answer is None and is_rating and len(judgement.ratings) == 1:
        answer = next(iter(judgement.ratings))
        rating = judgement.ratings[answer]
    if kind in ("integer", "number"):
        if is_rating and isinstance(rating, int):
            return rating
        if is_number and answer is not None:
            return answer
        return 0
    if kind == "boolean":
        return False
    if is_rating and rating is not None:
        return str(rating)
    if is_number and answer is not None:
        return str(answer)
    if "rationale" in lowered or "reason" in lowered or "explanation" in lowered:
        return f"{judgement.rationale} (answer {answer})" if answer else judgement.rationale
    return ""


def judgement_json(judgement: Judgement, response_format: JsonObject) -> str:
    """A JSON reply for a judgement that matches the request's `json_schema` response format."""
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return json.dumps(
            {"ratings": [{"answer": n, "rating": r} for n, r in sorted(judgement.ratings.items())]}
        )
    return json.dumps(_fill(schema, schema, "", None, judgement))


def judgement_text(judgement: Judgement) -> str:
    """The rubric reply: per answer `Answer N` / `Rating: R` / `Rationale: ...` (the templates'
    format)."""
    blocks = [
        f"Answer {n}\nRating: {r}\nRationale: {judgement.rationale}"
        for n, r in sorted(judgement.ratings.items())
    ]
    return "\n\n".join(blocks)


_WORDS = TOKEN.findall(
    "the answer depends on context and careful reasoning about each step we take consider data "
    "model prompt result value system method example question clear simple first then finally "
    "because therefore however also indeed likely"
)


def default_reply(body: JsonObject) -> str:
    """A deterministic plain reply from the model name, seed and messages (20..60 words)."""
    model = body.get("model")
    seed = body.get("seed")
    messages = json.dumps(body.get("messages"), sort_keys=True)
    rng = random.Random(digest("reply", model, seed, messages))
    words = [rng.choice(_WORDS) for _ in range(rng.randint(20, 60))]
    return f"[{model}] " + " ".join(words) + "."
