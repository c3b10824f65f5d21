"""The `generate` stage: one model answers every prompt of this worker's shards.

The backend (vLLM, or an OpenAI-compatible endpoint) is built once per process and reused for
every shard. Worker i of n takes shards i, i+n, ...; each output shard lines up with its prompt
shard and is committed whole, so a rerun redoes only uncommitted shards. A prompt that fails
(too long for the context, an endpoint error) becomes a row with `error` set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from synthpref import layout
from synthpref.backends.base import ChatBackend, ChatRequest, ChatResult
from synthpref.jsonl import read_rows, write_rows
from synthpref.rows import GenerationRow, PromptRow
from synthpref.seeding import stable_seed
from synthpref.spec import ModelSpec, PreferenceRunSpec
from synthpref.stages.prepare import shard_count
from synthpref.storage import Storage


@dataclass
class GenerateSummary:
    model: str
    shards_done: int = 0
    shards_skipped: int = 0
    rows: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def chat_request(model: ModelSpec, prompt: PromptRow) -> ChatRequest:
    sampling = model.sampling
    return ChatRequest(
        key=prompt.id,
        messages=[{"role": "user", "content": prompt.text}],
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=stable_seed(sampling.seed, model.name, prompt.id) % (2**31),
    )


def generation_row(model: ModelSpec, result: ChatResult) -> GenerationRow:
    return GenerationRow(
        prompt_id=result.key,
        model=model.name,
        text=result.text if result.error is None else None,
        error=result.error,
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
    backend = backend_factory(model)
    try:
        for shard in pending:
            started = time.monotonic()
            prompts = list(read_rows(storage, layout.prompt_shard(shard), PromptRow))
            results = backend.complete([chat_request(model, p) for p in prompts])
            if [r.key for r in results] != [p.id for p in prompts]:
                raise RuntimeError(f"backend for {model.name} returned results out of order")
            rows = [generation_row(model, r) for r in results]
            tokens = sum(r.completion_tokens for r in rows)
            errors = sum(r.error is not None for r in rows)
            write_rows(
                storage,
                layout.generation_shard(model.name, shard),
                rows,
                {"errors": errors, "completion_tokens": tokens},
            )
            summary.seconds += time.monotonic() - started
            summary.shards_done += 1
            summary.rows += len(rows)
            summary.errors += errors
            summary.prompt_tokens += sum(r.prompt_tokens for r in rows)
            summary.completion_tokens += tokens
            if on_shard is not None:
                on_shard(shard)
    finally:
        backend.close()
    return summary
