"""The vLLM backend's pure parts: engine arguments, CPU env defaults, length checks, seeds."""

from __future__ import annotations

from typing import Any

import pytest

from synthpref.backends.base import ChatRequest
from synthpref.backends.vllm_offline import (
    CPU_ENV_DEFAULTS,
    DEFAULT_STRUCTURED_OUTPUTS_CONFIG,
    cpu_engine_defaults,
    cpu_env_defaults,
    engine_kwargs,
    request_seed,
    too_long_error,
)


def _kwargs(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "tensor_parallel_size": 1,
        "max_model_len": None,
        "revision": None,
        "seed": 0,
        "engine_args": {},
    }
    settings.update(overrides)
    return engine_kwargs(**settings)


def test_cpu_env_defaults_fill_only_unset_keys_and_only_without_cuda() -> None:
    assert cpu_env_defaults({}, has_cuda=False) == dict(CPU_ENV_DEFAULTS)
    assert cpu_env_defaults({"VLLM_CPU_KVCACHE_SPACE": "4"}, has_cuda=False) == {
        "VLLM_CPU_OMP_THREADS_BIND": "nobind"
    }
    assert cpu_env_defaults({}, has_cuda=True) == {}


def test_engine_kwargs_merge_explicit_settings_and_free_args() -> None:
    kwargs = _kwargs(
        tensor_parallel_size=2,
        max_model_len=4096,
        revision="abc",
        seed=9,
        engine_args={"dtype": "bfloat16", "max_model_len": 4096},
    )
    assert kwargs == {
        "tensor_parallel_size": 2,
        "max_model_len": 4096,
        "revision": "abc",
        "seed": 9,
        "dtype": "bfloat16",
        "structured_outputs_config": dict(DEFAULT_STRUCTURED_OUTPUTS_CONFIG),
    }


def test_engine_args_may_supply_what_the_spec_leaves_unset() -> None:
    assert _kwargs(engine_args={"max_model_len": 2048})["max_model_len"] == 2048
    assert "max_model_len" not in _kwargs()
    assert "revision" not in _kwargs()


def test_engine_args_structured_outputs_config_wins_over_the_default() -> None:
    own = {"backend": "xgrammar"}
    assert (
        _kwargs(engine_args={"structured_outputs_config": own})["structured_outputs_config"] == own
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"engine_args": {"tensor_parallel_size": 4}}, "engine_args.tensor_parallel_size=4"),
        ({"max_model_len": 512, "engine_args": {"max_model_len": 1024}}, "max_model_len=1024"),
        ({"engine_args": {"seed": 3}}, "engine_args.seed=3"),
        ({"engine_args": {"model": "x"}}, "engine_args.model"),
    ],
)
def test_conflicting_engine_args_are_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _kwargs(**overrides)


@pytest.mark.parametrize(
    ("prompt_tokens", "expected"),
    [
        (10, None),
        (255, None),
        (256, "prompt too long: 256 tokens = max_model_len 256, no room for a reply"),
        (300, "prompt too long: 300 tokens > max_model_len 256"),
    ],
)
def test_too_long_error(prompt_tokens: int, expected: str | None) -> None:
    assert too_long_error(prompt_tokens, 256) == expected


def test_request_seed_uses_the_request_seed_or_derives_a_stable_one() -> None:
    seeded = ChatRequest(key="k", messages=[], max_tokens=1, seed=42)
    unseeded = ChatRequest(key="k", messages=[], max_tokens=1)
    other = ChatRequest(key="other", messages=[], max_tokens=1)
    assert request_seed(seeded, base_seed=0) == 42
    assert request_seed(unseeded, 0) == request_seed(unseeded, 0)
    assert request_seed(unseeded, 0) != request_seed(other, 0)
    assert request_seed(unseeded, 0) != request_seed(unseeded, 1)


def test_chunked_prefill_off_on_cpu_unless_set() -> None:
    assert cpu_engine_defaults({}, has_cuda=False) == {"enable_chunked_prefill": False}
    assert cpu_engine_defaults({"enable_chunked_prefill": True}, has_cuda=False) == {}
    assert cpu_engine_defaults({}, has_cuda=True) == {}
