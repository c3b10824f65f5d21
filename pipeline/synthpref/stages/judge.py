"""The `judge` stage with the vLLM backend: answer judge request files offline.

Reads the request files `mix` committed for this worker's shards (OpenAI Batch input format),
runs them through one vLLM engine loaded once, and writes one committed result file per request
file in the OpenAI Batch output format, so `parse` reads the same lines whichever judge ran.
A request that fails (e.g. too long) becomes an error line, as in the Batch API's error file.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from synthpref import layout
from synthpref.backends.base import ChatBackend, ChatRequest, ChatResult, count_finish_reasons
from synthpref.jsonl import read_rows, write_rows
from synthpref.model_record import describe_model, record_once
from synthpref.rows import BatchError, BatchRequestLine, BatchResponse, BatchResultLine
from synthpref.seeding import stable_seed
from synthpref.spec import JudgeSpec, PreferenceRunSpec
from synthpref.stages.inputs import request_files, require_mix
from synthpref.stages.prepare import shard_count
from synthpref.storage import Storage
from synthpref.timing import TIMING_KEY, Stopwatch


@dataclass
class JudgeSummary:
    request_files: int = 0
    skipped_files: int = 0
    requests: int = 0
    errors: int = 0
    completion_tokens: int = 0
    # Replies by how they ended; "length" means cut off (a structured reply is then broken).
    finish_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def bound_strings(schema: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """A copy of a JSON schema where every free string (no enum) gets maxLength."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        copy = {key: walk(value) for key, value in node.items()}
        if copy.get("type") == "string" and "enum" not in copy:
            copy["maxLength"] = min(max_chars, copy.get("maxLength", max_chars))
        return copy

    bounded: dict[str, Any] = walk(schema)
    return bounded


def chat_request_from_line(line: BatchRequestLine, judge: JudgeSpec) -> ChatRequest:
    """A Batch request body → ChatRequest; the body's own settings win over the spec's."""
    body = line.body
    schema: dict[str, Any] | None = None
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format["json_schema"]["schema"]
        if judge.rationale_max_chars is not None:
            schema = bound_strings(schema, judge.rationale_max_chars)
    return ChatRequest(
        key=line.custom_id,
        messages=list(body["messages"]),
        max_tokens=int(body.get("max_tokens", body.get("max_completion_tokens", judge.max_tokens))),
        temperature=float(body.get("temperature", judge.temperature)),
        top_p=float(body.get("top_p", 1.0)),
        # A judge sampling at temperature > 0 stays reproducible: one seed per request.
        seed=body.get("seed", stable_seed("judge", line.custom_id) % (2**31)),
        json_schema=schema,
    )


def result_line(result: ChatResult, model: str) -> BatchResultLine:
    """A ChatResult in the Batch output line format (an error line when it failed)."""
    request_id = f"req_{uuid.uuid4().hex}"
    if result.error is not None:
        return BatchResultLine(
            id=f"batch_req_{uuid.uuid4().hex}",
            custom_id=result.key,
            response=None,
            error=BatchError(code="vllm_error", message=result.error),
        )
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
    return BatchResultLine(
        id=f"batch_req_{uuid.uuid4().hex}",
        custom_id=result.key,
        response=BatchResponse(status_code=200, request_id=request_id, body=body),
        error=None,
    )


def committed_request_files(storage: Storage, shard: int) -> list[str]:
    """The request files of a shard; raises when the shard's mix is not committed."""
    return request_files(storage, shard)


def run_judge(
    spec: PreferenceRunSpec,
    storage: Storage,
    *,
    worker: int = 0,
    workers: int = 1,
    backend_factory: Callable[[JudgeSpec], ChatBackend] | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> JudgeSummary:
    """Rate every uncommitted request file of this worker's shards with the vLLM judge."""
    summary = JudgeSummary()
    shards = layout.shards_for_worker(shard_count(storage), worker, workers)
    require_mix(storage, shards)
    work: list[tuple[int, list[str]]] = []
    for shard in shards:
        keys = committed_request_files(storage, shard)
        pending = [k for k in keys if storage.committed(layout.result_for_request(k)) is None]
        summary.skipped_files += len(keys) - len(pending)
        work.append((shard, pending))
    if not any(pending for _, pending in work):
        return summary
    if backend_factory is None:
        from synthpref.backends.factory import backend_for_judge

        backend_factory = backend_for_judge
    loading: Stopwatch | None = Stopwatch()  # the first file's time includes loading the model
    backend = backend_factory(spec.judge)
    record = {"backend": spec.judge.backend.value, **describe_model(spec.judge.model, None)}
    record_once(storage, layout.JUDGE_RECORD, record)
    try:
        for shard, pending in work:
            for key in pending:
                started = time.monotonic()
                stopwatch, loading = loading or Stopwatch(), None
                lines = list(read_rows(storage, key, BatchRequestLine))
                results = backend.complete([chat_request_from_line(x, spec.judge) for x in lines])
                rows = [result_line(r, spec.judge.model) for r in results]
                errors = sum(r.error is not None for r in results)
                info = {"errors": errors, TIMING_KEY: stopwatch.record()}
                write_rows(storage, layout.result_for_request(key), rows, info)
                summary.seconds += time.monotonic() - started
                summary.request_files += 1
                summary.requests += len(rows)
                summary.errors += errors
                summary.completion_tokens += sum(r.completion_tokens for r in results)
                count_finish_reasons(summary.finish_reasons, [r.finish_reason for r in results])
            if on_shard is not None:
                on_shard(shard)
    finally:
        backend.close()
    return summary
