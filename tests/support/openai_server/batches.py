"""The Batch API of the test server and each batch's lifecycle: create (validating the input
file as the service does, the queued-token limit), retrieve, list (newest first, cursor pages),
cancel, and the scripted move through validating → in_progress → finalizing → completed (or
failed / expired / cancelling → cancelled), writing the output and error files."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from typing import Any

from tests.support.openai_server.chat import ChatCompletions
from tests.support.openai_server.files import FilesStore
from tests.support.openai_server.judging import ErrorLine
from tests.support.openai_server.records import BatchInfo, BatchState, InputLines, StoredFile
from tests.support.openai_server.wire import (
    ACTIVE_STATUSES,
    EXPIRY_SECONDS,
    MAX_ERRORS_REPORTED,
    SUPPORTED_ENDPOINTS,
    ApiError,
    JsonObject,
    cursor_page,
    prompt_tokens,
)


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise ApiError(400, "'metadata' must be an object.", param="metadata")
    if len(metadata) > 16:
        raise ApiError(
            400,
            f"Invalid 'metadata': too many properties ({len(metadata)} > 16).",
            param="metadata",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise ApiError(
                400, f"Invalid 'metadata': key {key[:20]!r}... longer than 64.", param="metadata"
            )
        if not isinstance(value, str) or len(value) > 512:
            raise ApiError(
                400,
                f"Invalid 'metadata.{key}': values must be strings of at most 512 characters.",
                param=f"metadata.{key}",
            )


def _line_spans(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of `data` (split at "\\n", as the service reads JSONL)."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        yield start, end
        start = end + 1


class BatchesApi(ChatCompletions, FilesStore):
    """Batches and their lifecycle."""

    def queued_tokens(self, model: str) -> int:
        """Tokens now queued for `model` in accepted, unfinished batches."""
        with self._lock:
            self._refresh_all()
            return self._queued(model)

    def _queued(self, model: str, exclude: str | None = None) -> int:
        return sum(
            b.tokens
            for b in self.batches.values()
            if b.accepted and b.model == model and b.status in ACTIVE_STATUSES and b.id != exclude
        )

    def _validate_input(
        self, data: bytes, endpoint: str
    ) -> tuple[InputLines, str | None, int, list[JsonObject]]:
        """Parse and check an input file: (requests, model, prompt tokens, errors)."""
        errors: list[JsonObject] = []

        def error(
            code: str, message: str, line: int | None = None, param: str | None = None
        ) -> None:
            if len(errors) < MAX_ERRORS_REPORTED:
                errors.append({"code": code, "message": message, "param": param, "line": line})

        if len(data) > self.max_file_bytes:
            error(
                "file_too_large",
                f"The input file is larger than the {self.max_file_bytes} byte limit.",
            )
            return InputLines(), None, 0, errors
        spans: list[tuple[int, int]] = []
        tokens = 0
        seen_ids: set[str] = set()
        models: set[str] = set()
        for number, (start, end) in enumerate(_line_spans(data), start=1):
            raw = data[start:end]
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                error("invalid_json_line", "This line is not parseable as valid JSON.", number)
                continue
            if not isinstance(line, dict):
                error("invalid_json_line", "This line is not a JSON object.", number)
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                error("missing_required_parameter", "Missing 'custom_id'.", number, "custom_id")
                continue
            if custom_id in seen_ids:
                error(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request. The "
                    "custom_id parameter must be unique for each request in a batch.",
                    number,
                    "custom_id",
                )
                continue
            seen_ids.add(custom_id)
            if line.get("method") != "POST":
                error("invalid_method", "The method must be POST.", number, "method")
                continue
            if line.get("url") != endpoint:
                error(
                    "invalid_url",
                    f"The url {line.get('url')!r} does not match the batch endpoint {endpoint!r}.",
                    number,
                    "url",
                )
                continue
            body = line.get("body")
            if not isinstance(body, dict):
                error("missing_required_parameter", "Missing 'body'.", number, "body")
                continue
            model = body.get("model")
            if not isinstance(model, str) or not model:
                error("missing_required_parameter", "Missing 'body.model'.", number, "body.model")
                continue
            if models and model not in models:
                error(
                    "mismatched_model",
                    "The provided model is not identical across all requests in the batch; "
                    "a batch input file may use one model only.",
                    number,
                    "body.model",
                )
                continue
            models.add(model)
            spans.append((start, end))
            tokens += prompt_tokens(body)
        if not spans and not errors:
            error("empty_file", "The batch input file is empty.")
        if len(spans) > self.max_requests_per_file:
            error(
                "too_many_requests",
                f"The batch input file has {len(spans)} requests; the maximum is "
                f"{self.max_requests_per_file}.",
            )
        model = next(iter(models)) if models else None
        if model is not None and self.models is not None and model not in self.models:
            error(
                "model_not_found",
                f"The model `{model}` does not exist or you do not have access to it.",
                param="body.model",
            )
        if errors:
            return InputLines(), model, 0, errors
        return InputLines(data, spans), model, tokens, errors

    def create_batch(self, body: JsonObject) -> JsonObject:
        input_file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        metadata = body.get("metadata")
        if not isinstance(input_file_id, str):
            raise ApiError(
                400, "Missing required parameter: 'input_file_id'.", param="input_file_id"
            )
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise ApiError(
                400,
                f"Invalid value for 'endpoint': {endpoint!r}. Supported: {SUPPORTED_ENDPOINTS}.",
                param="endpoint",
            )
        if window != "24h":
            raise ApiError(
                400,
                f"Invalid value for 'completion_window': {window!r}. Supported: '24h'.",
                param="completion_window",
            )
        if metadata is not None:
            _check_metadata(metadata)
        stored = self.files.get(input_file_id)
        if stored is None or stored.deleted:
            raise ApiError(
                400,
                f"Invalid 'input_file_id': {input_file_id!r}: no such file.",
                param="input_file_id",
            )
        if stored.purpose != "batch":
            raise ApiError(
                400,
                f"File {input_file_id} has purpose {stored.purpose!r}; a batch needs 'batch'.",
                param="input_file_id",
            )
        requests, model, tokens, errors = self._validate_input(stored.data, str(endpoint))
        seq = len(self.batches)
        script = self.batch_script(
            BatchInfo(seq, input_file_id, stored.filename, dict(metadata or {}), len(requests))
        )
        batch = BatchState(
            id=self._new_id("batch_"),
            seq=seq,
            input_file_id=input_file_id,
            endpoint=str(endpoint),
            metadata=dict(metadata) if metadata is not None else None,
            created_at=self.clock.now(),
            script=script,
            requests=requests,
            model=model,
            tokens=tokens,
            errors=errors,
        )
        self._refresh_all()
        if not errors and model is not None:
            limit = self.token_limits.get(model)
            queued = self._queued(model)
            if limit is not None and queued + tokens > limit:
                batch.accepted = False
                batch.errors = [
                    {
                        "code": "token_limit_exceeded",
                        "message": f"Enqueued token limit reached for {model} in organization "
                        f"org-test. Limit: {limit} enqueued tokens. Please try submitting "
                        "fewer tasks or wait for existing batches to complete.",
                        "param": None,
                        "line": None,
                    }
                ]
            else:
                self.max_queued_tokens[model] = max(self.max_queued_tokens[model], queued + tokens)
        if not errors and script.outcome == "failed" and batch.accepted:
            code, message = script.fail_error
            batch.errors = [{"code": code, "message": message, "param": None, "line": None}]
        self.batches[batch.id] = batch
        return batch.view()

    def get_batch(self, batch_id: str) -> BatchState:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.")
        self._refresh(batch)
        return batch

    def list_batches(self, query: dict[str, str]) -> JsonObject:
        self._refresh_all()
        items = sorted(self.batches.values(), key=lambda b: (b.created_at, b.seq), reverse=True)
        return cursor_page(items, query, default_limit=20, max_limit=100, view=BatchState.view)

    def cancel_batch(self, batch_id: str) -> JsonObject:
        batch = self.get_batch(batch_id)
        if batch.status in ("cancelling", "cancelled"):
            return batch.view()
        if batch.status not in ("validating", "in_progress", "finalizing"):
            raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
        now = self.clock.now()
        self._process_until(batch, now)
        batch.status = "cancelling"
        batch.times["cancelling"] = now
        return batch.view()

    def _refresh_all(self) -> None:
        for batch in self.batches.values():
            self._refresh(batch)

    def _process_until(self, batch: BatchState, now: float) -> None:
        """Run requests up to the share of the in_progress time that has passed by `now`."""
        if batch.status != "in_progress" or batch.errors:
            return
        started = batch.times["in_progress"]
        share = (
            1.0 if batch.script.in_progress_s <= 0 else (now - started) / batch.script.in_progress_s
        )
        target = min(len(batch.requests), math.floor(len(batch.requests) * max(0.0, share)))
        if batch.script.outcome == "expired":
            target = min(target, batch.script.expire_done)
        self._process(batch, target)

    def _process(self, batch: BatchState, target: int) -> None:
        while batch.done < target:
            line = batch.requests[batch.done]
            batch.done += 1
            custom_id = line["custom_id"]
            outcome = self._outcome(custom_id, line["body"], batch.id)
            request_id = self._new_id("req_")
            result: JsonObject = {"id": self._new_id("batch_req_"), "custom_id": custom_id}
            if isinstance(outcome, ErrorLine):
                if outcome.status_code is None:
                    result["response"] = None
                    result["error"] = {"code": outcome.code, "message": outcome.message}
                else:
                    result["response"] = {
                        "status_code": outcome.status_code,
                        "request_id": request_id,
                        "body": {
                            "error": {
                                "message": outcome.message,
                                "type": "server_error",
                                "param": None,
                                "code": outcome.code,
                            }
                        },
                    }
                    result["error"] = None
                batch.results.append(("error", json.dumps(result)))
            else:
                result["response"] = {
                    "status_code": 200,
                    "request_id": request_id,
                    "body": self._completion(line["body"], outcome),
                }
                result["error"] = None
                batch.results.append(("ok", json.dumps(result)))
                batch.completed += 1

    def _write_outputs(self, batch: BatchState, now: float, unfinished_code: str | None) -> None:
        """Store the output and error files of a finished batch (output order is shuffled)."""
        ok = [line for kind, line in batch.results if kind == "ok"]
        failed = [line for kind, line in batch.results if kind == "error"]
        if unfinished_code is not None:
            for line in batch.requests[batch.done :]:
                failed.append(
                    json.dumps(
                        {
                            "id": self._new_id("batch_req_"),
                            "custom_id": line["custom_id"],
                            "response": None,
                            "error": {
                                "code": unfinished_code,
                                "message": "This request could not be executed before the "
                                "completion window expired.",
                            },
                        }
                    )
                )
        rng = random.Random(batch.seq)
        rng.shuffle(ok)
        for lines, attr, suffix in (
            (ok, "output_file_id", "output"),
            (failed, "error_file_id", "error"),
        ):
            if not lines:
                continue
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            stored = StoredFile(
                self._new_id("file-"),
                f"batch_{batch.id}_{suffix}.jsonl",
                "batch_output",
                data,
                int(now),
            )
            self.files[stored.id] = stored
            setattr(batch, attr, stored.id)

    def _refresh(self, batch: BatchState) -> None:
        """Move a batch along its script up to the clock's now (several steps at once if due)."""
        now = self.clock.now()
        script = batch.script
        while True:
            status = batch.status
            if status == "validating":
                due = batch.created_at + script.validating_s
                if now < due:
                    return
                if batch.errors:
                    batch.status = "failed"
                    batch.times["failed"] = due
                    return
                batch.status = "in_progress"
                batch.times["in_progress"] = due
            elif status == "in_progress":
                started = batch.times["in_progress"]
                due = started + script.in_progress_s
                # A scripted expiry ends the in_progress time; otherwise the 24 h window does.
                expires = due if script.outcome == "expired" else batch.created_at + EXPIRY_SECONDS
                if now >= expires and expires <= due:
                    self._process_until(batch, expires)
                    batch.status = "expired"
                    batch.times["expired"] = expires
                    self._write_outputs(batch, expires, "batch_expired")
                    return
                if now < due:
                    self._process_until(batch, now)
                    return
                self._process(batch, len(batch.requests))
                batch.status = "finalizing"
                batch.times["finalizing"] = due
            elif status == "finalizing":
                due = batch.times["finalizing"] + script.finalizing_s
                if now < due:
                    return
                batch.status = "completed"
                batch.times["completed"] = due
                self._write_outputs(batch, due, None)
                return
            elif status == "cancelling":
                due = batch.times["cancelling"] + script.cancelling_s
                if now < due:
                    return
                batch.status = "cancelled"
                batch.times["cancelled"] = due
                self._write_outputs(batch, due, None)
                return
            else:
                return
