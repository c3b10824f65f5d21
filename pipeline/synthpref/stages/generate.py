"""The `generate` stage: one model answers every prompt of this worker's shards.

The backend (vLLM, or an OpenAI-compatible endpoint) is built once per process and reused for
every shard. Worker i of n takes shards i, i+n, ...; each output shard lines up with its prompt
shard and is committed whole, so a rerun redoes only uncommitted shards.

Only per-row outcomes become rows with `error` set: a prompt the model cannot take (longer than
the context, rejected as a bad request, a chat template failure), an answer the content filter
stopped, an empty answer. A shard is not done, and nothing of it is committed, when what its rows
depend on fails (the backend raises `EndpointUnavailableError` or `FatalBackendError`) or when it
has more row errors than the model's `errorBudget` allows (`ErrorBudgetExceededError`); both are
`ShardFailedError`s that the CLI reports as one line, and a rerun (or the Job's retry) redoes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from synthpref import layout
from synthpref.backends.base import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    EndpointUnavailableError,
    count_finish_reasons,
)
from synthpref.errors import ShardFailedError
from synthpref.jsonl import read_rows, write_rows
from synthpref.model_record import describe_model, record_once
from synthpref.rows import GenerationRow, PromptRow
from synthpref.seeding import stable_seed
from synthpref.spec import GenerationBackend, ModelSpec, PreferenceRunSpec
from synthpref.stages.prepare import shard_count
from synthpref.storage import Storage
from synthpref.timing import TIMING_KEY, Stopwatch

# How many distinct row errors an ErrorBudgetExceededError quotes.
CAUSES_QUOTED = 3


class ErrorBudgetExceededError(ShardFailedError):
    """A shard had more per-row errors than `models[].errorBudget` allows; not committed."""


@dataclass
class GenerateSummary:
    model: str
    shards_done: int = 0
    shards_skipped: int = 0
    rows: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Answers by how they ended: "stop" (the model's end of turn), "length" (cut at maxTokens
    # or at the end of the context), "content_filter"; rows that never ran are not counted.
    finish_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def chat_request(model: ModelSpec, prompt: PromptRow) -> ChatRequest:
    """The model's request for one prompt: its system prompt (if any), then the prompt."""
    sampling = model.sampling
    messages = [{"role": "user", "content": prompt.text}]
    if model.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": model.system_prompt})
    return ChatRequest(
        key=prompt.id,
        messages=messages,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=stable_seed(sampling.seed, model.name, prompt.id) % (2**31),
    )


def row_error(result: ChatResult) -> str | None:
    """Why a result is no usable answer (for every backend), or None."""
    if result.finish_reason == "content_filter":
        return "content filtered (finish_reason content_filter)"
    if result.error is not None:
        return result.error
    if result.text is None or not result.text.strip():
        return "empty answer"
    return None


def generation_row(model: ModelSpec, result: ChatResult) -> GenerationRow:
    error = row_error(result)
    return GenerationRow(
        prompt_id=result.key,
        model=model.name,
        text=result.text if error is None else None,
        error=error,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
    )


def run_generate(
    spec: PreferenceRunSpec,
    storage: Storage,
    model_name: str,
    *,
    worker: int = 0,
    workers: int = 1,
    backend_factory: Callable[[ModelSpec], ChatBackend] | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> GenerateSummary:
    """Answer this worker's uncommitted shards with one model."""
    model = spec.model(model_name)
    summary = GenerateSummary(model=model.name)
    shards = layout.shards_for_worker(shard_count(storage), worker, workers)
    pending = [
        s for s in shards if storage.committed(layout.generation_shard(model.name, s)) is None
    ]
    summary.shards_skipped = len(shards) - len(pending)
    if not pending:
        return summary
    if backend_factory is None:
        from synthpref.backends.factory import backend_for_model

        backend_factory = backend_for_model
    loading: Stopwatch | None = Stopwatch()  # the first shard's time includes loading the model
    backend = backend_factory(model)
    record_once(
        storage,
        layout.model_record(model.name),
        {
            "name": model.name,
            "backend": model.backend.value,
            **describe_model(
                model.path, model.revision, api_model=model.backend is GenerationBackend.OPENAI
            ),
        },
    )
    try:
        for shard in pending:
            started = time.monotonic()
            stopwatch, loading = loading or Stopwatch(), None
            prompts = list(read_rows(storage, layout.prompt_shard(shard), PromptRow))
            try:
                results = backend.complete([chat_request(model, p) for p in prompts])
            except EndpointUnavailableError as error:
                raise EndpointUnavailableError(
                    f"{error}; prompt shard {shard} was not committed: rerun once the endpoint "
                    "answers (a Job's retry does it)"
                ) from None
            if [r.key for r in results] != [p.id for p in prompts]:
                raise RuntimeError(f"backend for {model.name} returned results out of order")
            rows = [generation_row(model, r) for r in results]
            tokens = sum(r.completion_tokens for r in rows)
            errors = sum(r.error is not None for r in rows)
            check_error_budget(model, shard, rows)
            write_rows(
                storage,
                layout.generation_shard(model.name, shard),
                rows,
                {"errors": errors, "completion_tokens": tokens, TIMING_KEY: stopwatch.record()},
            )
            summary.seconds += time.monotonic() - started
            summary.shards_done += 1
            summary.rows += len(rows)
            summary.errors += errors
            summary.prompt_tokens += sum(r.prompt_tokens for r in rows)
            summary.completion_tokens += tokens
            count_finish_reasons(summary.finish_reasons, [r.finish_reason for r in rows])
            if on_shard is not None:
                on_shard(shard)
    finally:
        backend.close()
    return summary


def check_error_budget(model: ModelSpec, shard: int, rows: list[GenerationRow]) -> None:
    """Raise ErrorBudgetExceededError when more rows failed than `errorBudget x rows`."""
    errors = [row.error for row in rows if row.error is not None]
    allowed = model.error_budget * len(rows)
    if len(errors) <= allowed:
        return
    first = list(dict.fromkeys(errors))[:CAUSES_QUOTED]
    causes = "; ".join(first)
    raise ErrorBudgetExceededError(
        f"model {model.name}: prompt shard {shard} has {len(errors)} row errors in {len(rows)} "
        f"rows, more than errorBudget {model.error_budget:g} allows ({allowed:g}); first causes: "
        f"{causes}; the shard was not committed: fix the cause (or raise "
        f"spec.models[].errorBudget) and rerun"
    )
