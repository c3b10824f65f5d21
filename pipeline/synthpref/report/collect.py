"""Reads a finished run's artifacts into `RunStats`, streaming, one shard at a time.

Called by `report.writer`. Per prompt shard it streams every model's answers, reads the shard's
judge results into a custom_id → reply map (what `parse` holds for a shard too), reads the
shard's dataset part into a prompt id → pairs map, then streams the shard's MixRows: each judge
reply is parsed again exactly as `parse` did (`ratings.parse_reply`), in the order the judge saw
the answers, which is what the position diagnostics need. Memory holds one shard at a time plus
the aggregates. The commit markers' timings give the time per stage.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from synthpref import layout
from synthpref.binarize import score_answers, to_candidate_order
from synthpref.jsonl import read_rows
from synthpref.judge_requests import encode_custom_id
from synthpref.ratings import Parsed, RatingFailure, parse_reply
from synthpref.records import ResultRecord
from synthpref.report.stats import RunStats
from synthpref.rows import GenerationRow, MixRow, PreferenceRow
from synthpref.spec import OutputFormat, PreferenceRunSpec
from synthpref.stages.parse import (
    ParseSummary,
    Reply,
    RequestFailure,
    dataset_key,
    read_replies,
    result_files,
)
from synthpref.stages.prepare import shard_count
from synthpref.storage import Storage
from synthpref.timing import timing_of

# (chosen model, rejected model, margin) of one dataset row
PairRow = tuple[str, str, float]


def _time(stats: RunStats, stage: str, info: dict[str, Any] | None) -> None:
    timing = timing_of(info)
    if timing is not None:
        stats.add_timing(stage, *timing)


def _line(stats: RunStats, line: ResultRecord) -> None:
    response = line.response
    body = (response.body if response is not None else None) or {}
    ok = line.error is None and response is not None and response.status_code == 200
    code = None
    if line.error is not None:
        code = line.error.code or "error"
    elif response is not None and response.status_code != 200:
        code = f"http_{response.status_code}"
    choices = body.get("choices") if isinstance(body, dict) else None
    finish = None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        finish = choices[0].get("finish_reason")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    stats.add_result_line(
        ok=ok,
        error_code=code,
        usage=usage,
        finish_reason=str(finish) if finish is not None else None,
        served_model=str(body["model"]) if body.get("model") else None,
        fingerprint=str(body["system_fingerprint"]) if body.get("system_fingerprint") else None,
    )


def dataset_pairs(
    spec: PreferenceRunSpec, storage: Storage, shard: int
) -> Iterator[tuple[str, PairRow]]:
    """(prompt id, pair) for every row of a committed dataset part."""
    key = dataset_key(spec, shard)
    if spec.output.format is OutputFormat.PARQUET:
        import pyarrow.parquet as pq

        columns = [
            "prompt_id",
            "chosen_model",
            "rejected_model",
            "chosen_rating",
            "rejected_rating",
        ]
        table = pq.read_table(io.BytesIO(storage.read_bytes(key)), columns=columns)
        for record in table.to_pylist():
            margin = float(record["chosen_rating"]) - float(record["rejected_rating"])
            yield record["prompt_id"], (record["chosen_model"], record["rejected_model"], margin)
        return
    for row in read_rows(storage, key, PreferenceRow):
        margin = row.chosen_rating - row.rejected_rating
        yield row.prompt_id, (row.chosen_model, row.rejected_model, margin)


def _shown(value: Parsed) -> float | str:
    return value.value if isinstance(value, RatingFailure) else value


def collect_shard(spec: PreferenceRunSpec, storage: Storage, shard: int, stats: RunStats) -> None:
    """Add one prompt shard's answers, judgements and pairs to `stats`."""
    for model in spec.models:
        key = layout.generation_shard(model.name, shard)
        _time(stats, f"generate: {model.name}", storage.committed(key))
        for row in read_rows(storage, key, GenerationRow):
            stats.add_answer(
                model.name,
                text=row.text,
                error=row.error,
                finish_reason=row.finish_reason,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
            )
    for key in result_files(storage, shard):
        _time(stats, "judge", storage.committed(key))
    replies = read_replies(storage, shard, ParseSummary(), on_line=lambda line: _line(stats, line))
    _time(stats, "parse", storage.committed(dataset_key(spec, shard)))
    pairs: dict[str, list[PairRow]] = {}
    for prompt_id, pair in dataset_pairs(spec, storage, shard):
        pairs.setdefault(prompt_id, []).append(pair)
    mix_key = layout.mix_shard(shard)
    _time(stats, "mix", storage.committed(mix_key))
    for mixed in read_rows(storage, mix_key, MixRow):
        add_prompt(stats, shard, mixed, replies, pairs.pop(mixed.prompt_id, []))


def add_prompt(
    stats: RunStats,
    shard: int,
    row: MixRow,
    replies: dict[str, Reply],
    pairs: list[PairRow],
) -> None:
    """One mixed prompt: its judge replies (taken out of `replies`) and its dataset pairs."""
    models = [c.model for c in row.candidates]
    lengths = [len(c.text) for c in row.candidates]
    count = len(row.candidates)
    ratings: dict[str, list[Parsed]] = {}
    for aspect, order in row.order.items():
        custom_id = encode_custom_id(shard, row.prompt_id, aspect)
        reply = replies.pop(custom_id, RequestFailure.NO_RESULT)
        if isinstance(reply, RequestFailure):
            stats.add_request_failure(reply.value)
            continue
        shown = parse_reply(reply, count)
        stats.add_reply(
            aspect,
            [(models[c], lengths[c], _shown(v)) for c, v in zip(order, shown, strict=True)],
        )
        ratings[aspect] = to_candidate_order(shown, order)
    scores = score_answers(ratings, count)
    stats.add_prompt(models, [s.mean if s else None for s in scores], judged=bool(ratings))
    for chosen, rejected, margin in pairs:
        if chosen not in models or rejected not in models:
            continue
        c, r = models.index(chosen), models.index(rejected)
        positions = [(row.order[a].index(c) + 1, row.order[a].index(r) + 1, count) for a in ratings]
        stats.add_pair(
            chosen_model=chosen, rejected_model=rejected, margin=margin, positions=positions
        )


def collect(spec: PreferenceRunSpec, storage: Storage) -> RunStats:
    """Every aggregate of the report, from the run's committed artifacts."""
    stats = RunStats(
        models=[m.name for m in spec.models],
        aspects=list(spec.mix.aspects),
        max_tokens=max(m.sampling.max_tokens for m in spec.models),
    )
    shards = shard_count(storage)
    _time(stats, "prepare", storage.read_json(layout.PROMPTS_MANIFEST))
    for shard in range(shards):
        collect_shard(spec, storage, shard, stats)
    return stats
