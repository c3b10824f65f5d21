"""The `parse` stage: judge results → ratings → (chosen, rejected) pairs → the dataset.

Run by `synthpref parse` (a Job, one worker per index) and by the local run. Works shard by
shard, one shard in memory at most: it reads the shard's committed judge result files (OpenAI
Batch output format, any number of parts and attempts) into a map custom_id → reply, then
streams the shard's MixRows, parses each aspect's reply (`ratings`), undoes the answer order,
scores and binarizes (`binarize`), and writes

- `dataset/summaries/shard-NNNNN.json`, the shard's counts of every kind of drop;
- `dataset/part-NNNNN.jsonl` (or `.parquet`), committed last: the shard's done marker.

When every shard is done, the shard summaries (and the mix and prepare stages' counts) are
merged into `dataset/summary.json`, with what was lost by cause and the run's assessment
against `spec.acceptance` (`outcome`).

Joining results: a request with no result line counts as `no_result`; a result with an `error`
object as `error`; a non-200 response as `http_error`; a 200 without message text as
`empty_reply`. When a custom_id has several lines (retries), a usable reply wins over a failure,
and among equals the later file (higher attempt) wins.

Rows are read and written as their msgspec twins (`synthpref.records`): the same bytes, a
fraction of pydantic's cost per row.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from synthpref import layout
from synthpref.binarize import binarize_prompt, preference_row, score_answers, to_candidate_order
from synthpref.jsonl import read_records, write_records
from synthpref.judge_requests import CustomIdError, encode_custom_id, in_shard
from synthpref.outcome import assess
from synthpref.ratings import Parsed, RatingFailure, parse_reply_detail
from synthpref.records import MixRecord, PreferenceRecord, ResultRecord
from synthpref.spec import OutputFormat, PreferenceRunSpec
from synthpref.stages.inputs import require_judged, require_mix, uncommitted
from synthpref.stages.mix import MixSummary
from synthpref.stages.prepare import shard_count
from synthpref.stages.shards import ShardSummary, run_shards
from synthpref.storage import Storage
from synthpref.timing import TIMING_KEY, Stopwatch


class RequestFailure(StrEnum):
    """Why a judge request gave no reply to parse (keys of `request_failures`)."""

    NO_RESULT = "no_result"
    ERROR = "error"
    HTTP_ERROR = "http_error"
    EMPTY_REPLY = "empty_reply"


@dataclass
class ParseSummary(ShardSummary):
    """Counts over the shards covered; every request, rating, answer and prompt is accounted.

    requests = replies parsed + sum(request_failures);
    answer ratings from parsed replies = valid_ratings + sum(rating_failures);
    prompts = prompts_with_pairs + sum(prompts_dropped).
    """

    prompts: int = 0
    prompts_with_pairs: int = 0
    pairs: int = 0
    requests: int = 0
    replies: int = 0
    request_failures: dict[str, int] = field(default_factory=dict)
    valid_ratings: int = 0
    rating_failures: dict[str, int] = field(default_factory=dict)
    unrated_answers: int = 0
    prompts_dropped: dict[str, int] = field(default_factory=dict)
    unknown_results: int = 0
    # Replies whose JSON was inside a markdown fence (parsed all the same).
    fenced_replies: int = 0


Reply = str | RequestFailure


def reply_of(line: ResultRecord) -> Reply:
    """The reply text of a result line, or why it has none."""
    if line.error is not None or line.response is None:
        return RequestFailure.ERROR
    if line.response.status_code != 200:
        return RequestFailure.HTTP_ERROR
    body = line.response.body or {}
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return RequestFailure.EMPTY_REPLY
    if not isinstance(content, str) or not content.strip():
        return RequestFailure.EMPTY_REPLY
    return content


def result_files(storage: Storage, shard: int) -> list[str]:
    """The shard's committed result files, in name order (attempts ascending)."""
    return [
        key
        for key in storage.list(layout.result_prefix(shard))
        if key.endswith(".jsonl") and storage.committed(key) is not None
    ]


def read_replies(
    storage: Storage,
    shard: int,
    summary: ParseSummary,
    on_line: Callable[[ResultRecord], None] | None = None,
) -> dict[str, Reply]:
    """custom_id → the reply (or why there is none) for every result line of the shard;
    `on_line` sees every line of this shard (the report counts the judge's usage with it)."""
    replies: dict[str, Reply] = {}
    for key in result_files(storage, shard):
        for line in read_records(storage, key, ResultRecord):
            try:
                known = in_shard(line.custom_id, shard)
            except CustomIdError:
                known = False
            if not known:
                summary.unknown_results += 1
                continue
            if on_line is not None:
                on_line(line)
            reply = reply_of(line)
            if isinstance(reply, RequestFailure) and isinstance(replies.get(line.custom_id), str):
                continue  # an earlier attempt succeeded; a later failure does not undo it
            replies[line.custom_id] = reply
    return replies


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _count_ratings(summary: ParseSummary, parsed: list[Parsed]) -> None:
    failures = [value for value in parsed if isinstance(value, RatingFailure)]
    summary.valid_ratings += len(parsed) - len(failures)
    for failure in failures:
        _count(summary.rating_failures, failure.value)


def parse_row(
    spec: PreferenceRunSpec,
    row: MixRecord,
    shard: int,
    replies: dict[str, Reply],
    summary: ParseSummary,
) -> list[PreferenceRecord]:
    """The dataset rows of one prompt; every failure and drop is counted into `summary`."""
    count = len(row.candidates)
    ratings: dict[str, list[Parsed]] = {}
    for aspect, order in row.order.items():
        summary.requests += 1
        custom_id = encode_custom_id(shard, row.prompt_id, aspect)
        reply = replies.pop(custom_id, RequestFailure.NO_RESULT)
        if isinstance(reply, RequestFailure):
            _count(summary.request_failures, reply.value)
            continue
        summary.replies += 1
        shown, fenced = parse_reply_detail(reply, count)
        summary.fenced_replies += fenced
        parsed = to_candidate_order(shown, order)
        _count_ratings(summary, parsed)
        ratings[aspect] = parsed
    scores = score_answers(ratings, count)
    summary.unrated_answers += sum(score is None for score in scores)
    outcome = binarize_prompt(row.prompt_id, scores, spec.binarization)
    summary.prompts += 1
    if outcome.dropped is not None:
        _count(summary.prompts_dropped, outcome.dropped.value)
        return []
    summary.prompts_with_pairs += 1
    summary.pairs += len(outcome.pairs)
    return [preference_row(row, pair, scores) for pair in outcome.pairs]


def parquet_bytes(rows: list[PreferenceRecord], aspects: Sequence[str]) -> bytes:
    """The rows as a Parquet file; `metadata` is stored as JSON text (its shape varies).

    Aspect ratings are a struct with one nullable field per aspect (null: no valid rating),
    not a map: loaders such as Hugging Face `datasets` have no feature type for Arrow maps.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    ratings = pa.struct([(aspect, pa.float64()) for aspect in aspects])
    schema = pa.schema(
        [
            ("prompt_id", pa.string()),
            ("prompt", pa.string()),
            ("chosen", pa.list_(message)),
            ("rejected", pa.list_(message)),
            ("chosen_rating", pa.float64()),
            ("rejected_rating", pa.float64()),
            ("chosen_model", pa.string()),
            ("rejected_model", pa.string()),
            ("chosen_aspect_ratings", ratings),
            ("rejected_aspect_ratings", ratings),
            ("metadata", pa.string()),
        ]
    )
    records = []
    for row in rows:
        record = msgspec.to_builtins(row)
        for side in ("chosen_aspect_ratings", "rejected_aspect_ratings"):
            record[side] = {aspect: record[side].get(aspect) for aspect in aspects}
        record["metadata"] = json.dumps(record["metadata"], sort_keys=True)
        records.append(record)
    table = pa.Table.from_pylist(records, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def dataset_key(spec: PreferenceRunSpec, shard: int) -> str:
    extension = "parquet" if spec.output.format is OutputFormat.PARQUET else "jsonl"
    return layout.dataset_shard(shard, extension)


def parse_shard(spec: PreferenceRunSpec, storage: Storage, shard: int) -> ParseSummary:
    """Parse one shard and commit its dataset part; returns the shard's summary."""
    stopwatch = Stopwatch()
    mix_key = layout.mix_shard(shard)
    require_judged(storage, [shard])
    summary = ParseSummary(shards_done=1)
    replies = read_replies(storage, shard, summary)
    rows: list[PreferenceRecord] = []
    for row in read_records(storage, mix_key, MixRecord):
        rows.extend(parse_row(spec, row, shard, replies, summary))
    # Whatever is left answered no request of this shard's mix (e.g. a stale attempt).
    summary.unknown_results += len(replies)
    storage.write_json(layout.parse_summary(shard), asdict(summary))
    key = dataset_key(spec, shard)
    info = {"summary": asdict(summary), TIMING_KEY: stopwatch.record()}
    if spec.output.format is OutputFormat.PARQUET:
        storage.write_bytes(key, parquet_bytes(rows, spec.mix.aspects))
        storage.commit(key, {"rows": len(rows), **info})
    else:
        write_records(storage, key, rows, info)
    return summary


def merge_summaries(summaries: Iterable[ParseSummary]) -> ParseSummary:
    """The run's parse summary from the shards' summaries."""
    total = ParseSummary()
    for summary in summaries:
        total.add(summary)
    return total


# Called with the run summary just before it is written (the run report step).
BeforeSummary = Callable[[dict[str, Any]], None]


def write_run_summary(
    spec: PreferenceRunSpec,
    storage: Storage,
    shards: int,
    before_summary: BeforeSummary | None = None,
) -> bool:
    """Merge every shard's summary into `dataset/summary.json` once all shards are done.

    Returns False (and writes nothing) while some shard is not committed yet, so any worker
    may call it and the last one to finish writes the summary. `before_summary` runs with the
    summary first: whatever it writes (the run report) exists once the summary, which marks the
    run done, does.
    """
    parse_done, mix_done = [], []
    for shard in range(shards):
        info = storage.committed(dataset_key(spec, shard))
        mix_info = storage.committed(layout.mix_shard(shard))
        if info is None or mix_info is None:
            return False
        parse_done.append(ParseSummary.from_stored(info.get("summary", {})))
        mix_done.append(MixSummary.from_stored(mix_info.get("summary", {})))
    merged = merge_summaries(parse_done)
    mix_total = MixSummary()
    for item in mix_done:
        mix_total.add(item)
    document = asdict(merged)
    del document["shards_done"], document["shards_skipped"]
    mix_document = asdict(mix_total)
    del mix_document["shards_done"], mix_document["shards_skipped"]
    prepared = storage.read_json(layout.PROMPTS_MANIFEST)
    document.update(
        shards=shards,
        format=spec.output.format.value,
        dataset=storage.url("dataset/"),
        mix=mix_document,
        prepare={key: prepared.get(key, 0) for key in ("prompts", "duplicates", "malformed")},
    )
    assessment = assess(document, spec.acceptance)
    document.update(losses=assessment.losses, outcome=assessment.to_dict())
    if before_summary is not None:
        before_summary(document)
    storage.write_json(layout.SUMMARY, document)
    return True


def run_parse(
    spec: PreferenceRunSpec,
    storage: Storage,
    shards: Iterable[int] | None = None,
    *,
    worker: int = 0,
    workers: int = 1,
    on_shard: Callable[[int], None] | None = None,
    before_summary: BeforeSummary | None = None,
) -> ParseSummary:
    """Parse `shards` (default: this worker's share), skipping done ones; then, when every
    shard of the run is done, write the run summary (calling `before_summary` with it first).
    The returned summary also counts shards committed by an earlier run."""
    total_shards = shard_count(storage)
    if shards is None:
        shards = layout.shards_for_worker(total_shards, worker, workers)
    shards = list(shards)
    keys = {s: dataset_key(spec, s) for s in shards}
    pending = set(uncommitted(storage, list(keys.values()), "dataset/"))
    todo = [s for s in shards if keys[s] in pending]
    require_mix(storage, todo)
    require_judged(storage, todo)
    total = run_shards(
        shards,
        committed=lambda shard: storage.committed(dataset_key(spec, shard)),
        run_shard=lambda shard: parse_shard(spec, storage, shard),
        total=ParseSummary(),
        on_shard=on_shard,
    )
    write_run_summary(spec, storage, total_shards, before_summary)
    return total
