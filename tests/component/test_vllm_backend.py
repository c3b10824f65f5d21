"""VllmChatBackend against a real vLLM engine on CPU with tiny models built on the spot.

Engine starts are the cost here (~45 s each on 2 cores), so the whole file starts two: one
module-scoped engine for tiny-a, and one for tiny-b inside the test that compares two models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthpref.backends.base import ChatRequest, ChatResult
from synthpref.backends.vllm_offline import VllmChatBackend
from synthpref.tinymodels import build_tiny_models

pytestmark = pytest.mark.vllm

MAX_MODEL_LEN = 256
# float32 is faster than vLLM's bfloat16 default on CPUs without AVX-512, and eager mode skips
# the ~30 s torch.compile warm-up at every engine start.
TINY_ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"), ["tiny-a", "tiny-b"])


def _backend(model: Path) -> VllmChatBackend:
    return VllmChatBackend(
        str(model), max_model_len=MAX_MODEL_LEN, engine_args=TINY_ENGINE_ARGS, seed=0
    )


@pytest.fixture(scope="module")
def backend(tiny_models: dict[str, Path]) -> Iterator[VllmChatBackend]:
    engine = _backend(tiny_models["tiny-a"])
    try:
        yield engine
    finally:
        engine.close()


def _ask(key: str, text: str, **settings: object) -> ChatRequest:
    options: dict[str, object] = {"max_tokens": 24, "temperature": 0.8, "seed": 11}
    options.update(settings)
    return ChatRequest(key=key, messages=[{"role": "user", "content": text}], **options)  # type: ignore[arg-type]


PROMPTS = [
    _ask("p0", "Write a short poem about the sea."),
    _ask("p1", "What is the capital of France?"),
    _ask("p2", "Explain how a rainbow forms.", max_tokens=8),
]


def _texts(results: list[ChatResult]) -> list[str | None]:
    return [r.text for r in results]


def test_answers_carry_finish_reason_and_token_counts(backend: VllmChatBackend) -> None:
    results = backend.complete(PROMPTS)

    assert [r.key for r in results] == ["p0", "p1", "p2"]
    for request, result in zip(PROMPTS, results, strict=True):
        assert result.error is None
        assert isinstance(result.text, str)
        assert result.finish_reason in ("stop", "length")
        assert result.prompt_tokens == len(backend.render(request.messages))
        assert 0 < result.completion_tokens <= request.max_tokens
        if result.finish_reason == "length":
            assert result.completion_tokens == request.max_tokens
    # Random weights rarely pick EOS: at least one answer runs into its token limit.
    assert "length" in [r.finish_reason for r in results]


def test_too_long_prompt_is_a_row_error_and_the_others_still_answer(
    backend: VllmChatBackend,
) -> None:
    long_text = "Explain the history of science in detail. " * 80
    prompt_tokens = len(backend.render([{"role": "user", "content": long_text}]))
    assert prompt_tokens > MAX_MODEL_LEN

    results = backend.complete([PROMPTS[0], _ask("long", long_text), PROMPTS[1]])

    assert [r.key for r in results] == ["p0", "long", "p1"]
    assert results[1].text is None
    assert results[1].error == (
        f"prompt too long: {prompt_tokens} tokens > max_model_len {MAX_MODEL_LEN}"
    )
    assert results[1].prompt_tokens == prompt_tokens
    assert results[0].text is not None and results[2].text is not None
    assert _texts(results[0::2]) == _texts(backend.complete(PROMPTS[:2]))


def test_reply_is_cut_to_the_room_left_in_the_context(backend: VllmChatBackend) -> None:
    text = "Explain the history of science. " * 32
    prompt_tokens = len(backend.render([{"role": "user", "content": text}]))
    room = MAX_MODEL_LEN - prompt_tokens
    assert 0 < room < 100, f"prompt of {prompt_tokens} tokens does not fit the test"

    [result] = backend.complete([_ask("near-full", text, max_tokens=500, temperature=0.0)])

    assert result.error is None
    assert result.prompt_tokens + result.completion_tokens <= MAX_MODEL_LEN
    if result.finish_reason == "length":
        assert result.completion_tokens == room


def test_same_seed_same_answer_and_another_seed_another(backend: VllmChatBackend) -> None:
    request = _ask("s", "Summarize the following text in one sentence.", max_tokens=32)
    first, second = backend.complete([request]), backend.complete([request])
    reseeded = backend.complete([_ask("s", request.messages[0]["content"], seed=12)])

    assert first[0].text and first[0].text == second[0].text
    assert reseeded[0].text != first[0].text


def test_structured_output_matches_the_schema(backend: VllmChatBackend) -> None:
    item = {
        "type": "object",
        "properties": {
            "rationale": {"type": "string", "maxLength": 40},
            "rating": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
        },
        "required": ["rationale", "rating"],
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "properties": {"1": item, "2": item},
        "required": ["1", "2"],
        "additionalProperties": False,
    }
    requests = [
        _ask(
            f"j{i}",
            f"Rate answers 1 and 2 to question {i}.",
            max_tokens=200,
            seed=i,
            json_schema=schema,
        )
        for i in range(4)
    ]

    results = backend.complete(requests)

    for result in results:
        assert result.error is None and result.text is not None
        reply = json.loads(result.text)  # strict: raw control characters would fail here
        assert set(reply) == {"1", "2"}
        for rated in reply.values():
            assert set(rated) == {"rationale", "rating"}
            assert rated["rating"] in (1, 2, 3, 4, 5)
            assert isinstance(rated["rationale"], str) and len(rated["rationale"]) <= 40


def test_request_vllm_rejects_is_a_row_error_and_the_others_still_answer(
    backend: VllmChatBackend,
) -> None:
    bad = _ask("bad", "Rate this.", json_schema={"type": "object", "properties": 5})

    results = backend.complete([PROMPTS[0], bad, PROMPTS[1]])

    assert [r.key for r in results] == ["p0", "bad", "p1"]
    assert results[1].text is None and results[1].error
    assert _texts([results[0], results[2]]) == _texts(backend.complete(PROMPTS[:2]))


def test_two_differently_seeded_models_answer_differently(
    backend: VllmChatBackend, tiny_models: dict[str, Path]
) -> None:
    other = _backend(tiny_models["tiny-b"])
    try:
        theirs = other.complete(PROMPTS)
    finally:
        other.close()
    ours = backend.complete(PROMPTS)

    assert all(r.error is None for r in theirs + ours)
    for mine, their in zip(ours, theirs, strict=True):
        assert mine.text != their.text
