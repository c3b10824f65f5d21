"""What `synthpref estimate` and the operator read for a run's estimate (`run_estimate`).

The prompts come from the prompt source (or another URI given instead), deduplicated as
`prepare` does. From the run's storage, when given: the measured answer lengths of every model
with committed generations, and, once every mix shard is committed, the judge request files.
Reads only; never writes.
"""

from __future__ import annotations

import json

from synthpref import layout
from synthpref.annotate.estimate import request_tokens, text_tokens
from synthpref.jsonl import read_rows
from synthpref.rows import GenerationRow
from synthpref.run_estimate import PromptStats, RequestStats, RunEstimate, estimate_run
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.inputs import request_files
from synthpref.stages.prepare import (
    PrepareSummary,
    PromptFileError,
    list_prompt_files,
    read_prompts,
)
from synthpref.storage import Storage


def prompt_stats(spec: PreferenceRunSpec, uri: str | None = None) -> PromptStats:
    """Unique prompts of `uri` (default: spec.prompts.uri) and their estimated tokens."""
    source = uri or spec.prompts.uri
    files = list_prompt_files(source, spec.storage.endpoint_url, spec.storage.region)
    if not files:
        raise PromptFileError(f"{source}: no prompt files (*.jsonl) found")
    count = tokens = 0
    for row in read_prompts(files, spec.prompts.on_malformed, PrepareSummary()):
        count += 1
        tokens += text_tokens(row.text)
    return PromptStats(count, tokens)


def _shards(storage: Storage) -> int | None:
    if not storage.exists(layout.PROMPTS_MANIFEST):
        return None
    return int(storage.read_json(layout.PROMPTS_MANIFEST)["shards"])


def measured_answers(spec: PreferenceRunSpec, storage: Storage) -> dict[str, float]:
    """Mean estimated tokens of each model's answers over its committed generation shards."""
    shards = _shards(storage) or 0
    means: dict[str, float] = {}
    for model in spec.models:
        count = tokens = 0
        for shard in range(shards):
            key = layout.generation_shard(model.name, shard)
            if storage.committed(key) is None:
                continue
            for row in read_rows(storage, key, GenerationRow):
                if row.text is not None:
                    count += 1
                    tokens += text_tokens(row.text)
        if count:
            means[model.name] = tokens / count
    return means


def request_stats(storage: Storage) -> RequestStats | None:
    """The judge request files' requests and input tokens, once every mix shard is committed."""
    shards = _shards(storage)
    if shards is None or any(storage.committed(layout.mix_shard(s)) is None for s in range(shards)):
        return None
    count = tokens = 0
    for shard in range(shards):
        for key in request_files(storage, shard):
            for text in storage.read_lines(key):
                if text.strip():
                    count += 1
                    tokens += request_tokens(json.loads(text).get("body") or {})
    return RequestStats(count, tokens)


def estimate_from(
    spec: PreferenceRunSpec, storage: Storage | None, prompts_uri: str | None = None
) -> RunEstimate:
    """The run's estimate from its prompts and, when `storage` is given, what it holds."""
    prompts = prompt_stats(spec, prompts_uri)
    if storage is None:
        return estimate_run(spec, prompts)
    return estimate_run(spec, prompts, measured_answers(spec, storage), request_stats(storage))
