"""The `openai` chat backend against the OpenAI-compatible test server on loopback."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator

import pytest

from synthpref.backends.base import ChatRequest, EndpointUnavailableError
from synthpref.backends.openai_chat import FatalBackendError, OpenAIChatBackend
from synthpref.spec import ModelSpec, OpenAIEndpoint
from tests.support.openai_server import (
    DEFAULT_API_KEY,
    OpenAIServer,
    closed_base_url,
    default_rating,
    prompt_tokens,
)

KEY_ENV = "SYNTHPREF_TEST_OPENAI_KEY"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(models={"model-a", "model-b", "judge"}) as running:
        yield running


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, DEFAULT_API_KEY)


def backend(server: OpenAIServer, model: str = "model-a", **endpoint: object) -> OpenAIChatBackend:
    settings = OpenAIEndpoint.model_validate(
        {"base_url": server.base_url, "api_key_env": KEY_ENV, **endpoint}
    )
    return OpenAIChatBackend(model, settings, backoff_base_s=0.01, backoff_max_s=0.05, seed=0)


def ask(key: str, text: str, max_tokens: int = 200, seed: int | None = 1) -> ChatRequest:
    return ChatRequest(
        key=key, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, seed=seed
    )


def test_answers_carry_text_tokens_and_finish_reasons(server: OpenAIServer) -> None:
    requests = [ask("long", "Tell me about rivers."), ask("short", "Tell me about rivers.", 3)]
    results = backend(server).complete(requests)

    assert [r.key for r in results] == ["long", "short"]
    long, short = results
    assert long.error is None and long.text is not None and long.text.startswith("[model-a]")
    assert long.finish_reason == "stop"
    assert long.completion_tokens > 3
    body = {"messages": requests[0].messages}
    assert long.prompt_tokens == prompt_tokens(body)
    assert short.finish_reason == "length"
    assert short.completion_tokens == 3
    assert long.text.startswith(str(short.text))


def test_models_and_seeds_answer_differently(server: OpenAIServer) -> None:
    question = "Name a prime number."
    a1 = backend(server, "model-a").complete([ask("k", question, seed=1)])[0].text
    a1_again = backend(server, "model-a").complete([ask("k", question, seed=1)])[0].text
    a2 = backend(server, "model-a").complete([ask("k", question, seed=2)])[0].text
    b1 = backend(server, "model-b").complete([ask("k", question, seed=1)])[0].text
    assert a1 == a1_again
    assert len({a1, a2, b1}) == 3


def test_structured_output_returns_schema_shaped_ratings(server: OpenAIServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "ratings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "answer": {"type": "integer"},
                        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                        "rationale": {"type": "string"},
                    },
                },
            }
        },
    }
    answers = {1: "Paris is the capital.", 2: "Lyon, I think.", 3: "Marseille."}
    prompt = "Rate the answers.\n" + "".join(f"<text {n}> {t}\n" for n, t in answers.items())
    request = ChatRequest(
        key="j", messages=[{"role": "user", "content": prompt}], max_tokens=500, json_schema=schema
    )
    result = backend(server, "judge").complete([request])[0]
    assert result.text is not None
    reply = json.loads(result.text)
    got = {item["answer"]: item["rating"] for item in reply["ratings"]}
    assert got == {n: default_rating(t) for n, t in answers.items()}


def test_rate_limit_burst_is_retried_until_success(server: OpenAIServer) -> None:
    server.fail_next("POST", "/v1/chat/completions", 429, count=3, retry_after=0.01)
    result = backend(server, max_retries=5).complete([ask("k", "hello")])[0]

    assert result.error is None and result.text
    statuses = [c.status for c in server.calls_to("POST", "/v1/chat/completions")]
    assert statuses == [429, 429, 429, 200]
    assert result.extra["attempts"] == 4


def test_persistent_server_errors_stop_the_shard_naming_model_endpoint_and_cause(
    server: OpenAIServer,
) -> None:
    server.fail_next("POST", "/v1/chat/completions", 500, count=3)
    with pytest.raises(EndpointUnavailableError) as caught:
        backend(server, max_retries=2, concurrency=1).complete(
            [ask("doomed", "first"), ask("cancelled", "second")]
        )

    message = str(caught.value)
    assert message.startswith(f"model model-a: endpoint {server.base_url} failing after 3 tries")
    assert "HTTP 500 server_error: Injected fault." in message
    statuses = [c.status for c in server.calls_to("POST", "/v1/chat/completions")]
    assert statuses[:3] == [500, 500, 500]
    assert 200 not in statuses  # the request next in line was cancelled, not answered


def test_unreachable_endpoint_warns_at_once_throttled_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = closed_base_url()
    settings = OpenAIEndpoint(base_url=url, api_key_env=KEY_ENV, max_retries=2, concurrency=8)
    chat = OpenAIChatBackend(
        "model-a", settings, backoff_base_s=0.01, backoff_max_s=0.05, seed=0, name="llama-8b"
    )
    caplog.set_level(logging.WARNING)
    with pytest.raises(EndpointUnavailableError) as caught:
        chat.complete([ask(f"k{i}", "hi") for i in range(8)])

    assert str(caught.value).startswith(
        f"model llama-8b: endpoint {url} unreachable after 3 tries: ConnectError: "
    )
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines[0].startswith(f"model llama-8b: endpoint {url} unreachable (1st try, next in ")
    assert "s): ConnectError: " in lines[0]
    assert len(lines) < 8  # 8 requests failing together are not 8 lines (24 tries in all)
    assert DEFAULT_API_KEY not in caplog.text


def test_bad_request_is_a_row_error_without_retries(server: OpenAIServer) -> None:
    bad = ChatRequest(key="bad", messages=[], max_tokens=10)
    results = backend(server, max_retries=4).complete([bad, ask("good", "hi")])

    assert results[0].error is not None and results[0].error.startswith("HTTP 400")
    assert results[1].text
    assert [c.status for c in server.calls_to("POST", "/v1/chat/completions")].count(400) == 1


def test_wrong_key_stops_with_a_clear_error_that_hides_the_key(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-key-that-must-not-leak-42"
    monkeypatch.setenv(KEY_ENV, wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(FatalBackendError) as caught:
        backend(server).complete([ask(f"k{i}", "hi") for i in range(5)])

    message = str(caught.value)
    assert KEY_ENV in message and "401" in message and "invalid_api_key" in message
    rendered = "".join(traceback.format_exception(caught.value))
    for fragment in (wrong, wrong[-8:]):
        assert fragment not in rendered
        assert fragment not in caplog.text


def test_unknown_model_stops_with_an_error_naming_it(server: OpenAIServer) -> None:
    with pytest.raises(FatalBackendError, match="no-such-model"):
        backend(server, "no-such-model").complete([ask("k", "hi")])


def test_missing_key_variable_is_named() -> None:
    endpoint = OpenAIEndpoint(api_key_env="SYNTHPREF_UNSET_VARIABLE")
    with pytest.raises(FatalBackendError, match="SYNTHPREF_UNSET_VARIABLE"):
        OpenAIChatBackend("model-a", endpoint)


def test_concurrency_bound_is_respected(server: OpenAIServer) -> None:
    server.chat_delay_s = 0.2  # long enough that three requests overlap even on a busy CPU
    results = backend(server, concurrency=3).complete([ask(f"k{i}", f"q{i}") for i in range(12)])

    assert all(r.text for r in results)
    assert server.max_concurrent_chat == 3


def test_from_model_spec_uses_the_spec_endpoint(server: OpenAIServer) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "hosted",
            "backend": "openai",
            "path": "model-b",
            "openai": {"baseUrl": server.base_url, "apiKeyEnv": KEY_ENV},
        }
    )
    result = OpenAIChatBackend.from_model_spec(spec).complete([ask("k", "hi")])[0]
    assert result.text is not None and result.text.startswith("[model-b]")
