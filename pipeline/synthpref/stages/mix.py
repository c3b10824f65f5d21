"""The `mix` stage: join every model's answers by prompt, sample k, write judge request files.

Run by `synthpref mix` (a Job, one worker per index) and by the local run. Works shard by shard:
it reads one prompt shard and the same shard of every model's generations (one shard in memory
at most), samples candidates per prompt (`sampling`), and writes

- the shard's judge request files, `requests/shard-NNNNN-part-PPP.jsonl` (OpenAI Batch input
  format, split under MixSpec's request and byte limits), each committed;
- the shard's MixRow file `mix/shard-NNNNN.jsonl`, committed last with the shard's summary: its
  commit marker is what says the shard (requests included) is done, so a rerun skips it.

A prompt without enough usable answers is counted by reason, never dropped silently. Rows are
handled as their msgspec twins (`synthpref.records`) and request lines are encoded from frames
rendered once per shard (`judge_requests.RequestEncoder`): the same bytes as the pydantic rows
and `build_request` give, at a fraction of the cost (scripts/bench_mix_parse.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from synthpref import layout
from synthpref.errors import SynthprefError
from synthpref.jsonl import read_records, write_lines, write_records
from synthpref.judge_requests import RequestEncoder, split_parts
from synthpref.records import GenerationRecord, MixRecord, PromptRecord
from synthpref.sampling import Selection, select
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.inputs import require_generations, uncommitted
from synthpref.stages.prepare import shard_count
from synthpref.stages.shards import ShardSummary, run_shards
from synthpref.storage import COMMIT_SUFFIX, Storage
from synthpref.timing import TIMING_KEY, Stopwatch


class MixInputError(SynthprefError, ValueError):
    """A committed generation shard that contradicts the spec (a row of another model)."""


@dataclass
class MixSummary(ShardSummary):
    """Counts over the shards this call covered (done now or committed before)."""

    prompts: int = 0
    prompts_mixed: int = 0
    prompts_lacking: dict[str, int] = field(default_factory=dict)
    unusable_answers: int = 0
    orphan_generations: int = 0
    requests: int = 0
    request_files: int = 0


def _generations(
    spec: PreferenceRunSpec, storage: Storage, shard: int, prompt_ids: set[str]
) -> tuple[dict[str, list[GenerationRecord]], int, int]:
    """Prompt id → the models' rows for that prompt; plus unusable and orphan counts."""
    by_prompt: dict[str, list[GenerationRecord]] = {}
    unusable = orphans = 0
    for model in spec.models:
        key = layout.generation_shard(model.name, shard)
        for row in read_records(storage, key, GenerationRecord):
            if row.model != model.name:
                raise MixInputError(
                    f"{storage.url(key)}: row for prompt {row.prompt_id!r} names model "
                    f"{row.model!r}, expected {model.name!r}"
                )
            if row.prompt_id not in prompt_ids:
                orphans += 1
                continue
            if row.error is not None or not (row.text or "").strip():
                unusable += 1
            by_prompt.setdefault(row.prompt_id, []).append(row)
    return by_prompt, unusable, orphans


def mix_rows(
    spec: PreferenceRunSpec,
    prompts: Iterable[PromptRecord],
    generations: dict[str, list[GenerationRecord]],
    summary: MixSummary,
) -> list[MixRecord]:
    """The MixRows of one shard's prompts; shortfalls are counted into `summary`."""
    mix = spec.mix
    lacking: Counter[str] = Counter()
    rows: list[MixRecord] = []
    for prompt in prompts:
        summary.prompts += 1
        result = select(
            prompt.id,
            generations.get(prompt.id, []),
            k=mix.responses_per_prompt,
            seed=mix.seed,
            aspects=mix.aspects,
            on_policy_model=mix.on_policy_model,
            shuffle=mix.shuffle_answers,
        )
        if not isinstance(result, Selection):
            lacking[result.reason.value] += 1
            continue
        summary.prompts_mixed += 1
        rows.append(
            MixRecord(
                prompt_id=prompt.id,
                prompt=prompt.text,
                metadata=prompt.metadata,
                candidates=result.candidates,
                order=result.order,
            )
        )
    summary.prompts_lacking = dict(sorted(lacking.items()))
    return rows


def _write_requests(
    spec: PreferenceRunSpec, storage: Storage, shard: int, rows: list[MixRecord]
) -> tuple[int, list[dict[str, Any]]]:
    """Write and commit the shard's request files; remove stale parts of an earlier attempt."""
    written: list[dict[str, Any]] = []
    lines = RequestEncoder(spec.judge, shard).encode_all(rows, spec.mix.aspects)
    parts = split_parts(
        lines,
        max_requests=spec.mix.max_requests_per_file,
        max_bytes=spec.mix.max_bytes_per_file,
    )
    total = 0
    for part, part_lines in parts:
        key = layout.request_file(shard, part)
        with storage.open_byte_writer(key) as stream:
            count, size = write_lines(stream, (line.data for line in part_lines))
        storage.commit(key, {"rows": count, "bytes": size})
        written.append({"key": key, "requests": count, "bytes": size})
        total += count
    keep = {item["key"] for item in written}
    for key in storage.list(layout.request_prefix(shard)):
        if key.removesuffix(COMMIT_SUFFIX) not in keep:
            storage.delete(key)
    return total, written


def mix_shard(spec: PreferenceRunSpec, storage: Storage, shard: int) -> MixSummary:
    """Mix one shard and commit it; returns its summary (also stored in the commit marker)."""
    stopwatch = Stopwatch()
    prompts = list(read_records(storage, layout.prompt_shard(shard), PromptRecord))
    ids = {p.id for p in prompts}
    generations, unusable, orphans = _generations(spec, storage, shard, ids)
    summary = MixSummary(shards_done=1, unusable_answers=unusable, orphan_generations=orphans)
    rows = mix_rows(spec, prompts, generations, summary)
    del generations
    summary.requests, files = _write_requests(spec, storage, shard, rows)
    summary.request_files = len(files)
    info = {"summary": asdict(summary), "request_files": files, TIMING_KEY: stopwatch.record()}
    write_records(storage, layout.mix_shard(shard), rows, info)
    return summary


def run_mix(
    spec: PreferenceRunSpec,
    storage: Storage,
    shards: Iterable[int] | None = None,
    *,
    worker: int = 0,
    workers: int = 1,
    on_shard: Callable[[int], None] | None = None,
) -> MixSummary:
    """Mix `shards` (default: this worker's share of all prompt shards), skipping done ones.

    The returned summary also counts shards committed by an earlier run (from their commit
    markers), so it describes the whole share, not only what this call redid.
    """
    if shards is None:
        shards = layout.shards_for_worker(shard_count(storage), worker, workers)
    shards = list(shards)
    pending = uncommitted(storage, [layout.mix_shard(s) for s in shards], "mix/")
    require_generations(spec, storage, [s for s in shards if layout.mix_shard(s) in pending])
    return run_shards(
        shards,
        committed=lambda shard: storage.committed(layout.mix_shard(shard)),
        run_shard=lambda shard: mix_shard(spec, storage, shard),
        total=MixSummary(),
        on_shard=on_shard,
    )
