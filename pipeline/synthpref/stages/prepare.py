"""The `prepare` stage: read prompt files, give prompts stable ids, drop duplicates, shard.

Input: JSONL files of {"text": ..., **metadata} (a file, a directory, a glob, or an s3:// prefix).
Output: committed prompt shards of `shard_size` rows and `prompts/manifest.json`, written last;
the stage is done when the manifest and every shard's commit marker exist (`stages.inputs`).
Rerunning skips shards already committed and cuts a shard whose marker is missing again; files
are read in sorted order so shard contents are the same on every run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synthpref import layout
from synthpref.annotate.estimate import text_tokens
from synthpref.errors import SynthprefError
from synthpref.jsonl import write_rows
from synthpref.rows import PromptRow
from synthpref.spec import MalformedPolicy, PreferenceRunSpec
from synthpref.stages.inputs import describe, missing_prompt_shards, prompt_shards
from synthpref.storage import LocalStorage, NotUtf8Error, S3Storage, Storage, s3_client
from synthpref.timing import Stopwatch

MAX_REPORTED_MALFORMED = 50

log = logging.getLogger(__name__)


class PromptFileError(SynthprefError, ValueError):
    """A malformed prompt line (under the `fail` policy) or an unusable prompt source."""


@dataclass
class PrepareSummary:
    shards: int = 0
    prompts: int = 0
    # Estimated tokens of the prompts (`annotate.estimate.text_tokens`): the operator's judge
    # cost estimate reads this count, never the prompts themselves.
    prompt_tokens: int = 0
    duplicates: int = 0
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)  # when it ran (`synthpref.timing`)


def prompt_id(text: str) -> str:
    """A stable id for a prompt: the first 16 hex digits of the SHA-256 of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def list_prompt_files(
    uri: str, endpoint_url: str | None = None, region: str | None = None
) -> list[tuple[Storage, str]]:
    """Every prompt file under `uri` as (storage, key) pairs, in a stable order."""
    if uri.startswith("s3://"):
        if uri.endswith(".jsonl"):
            parent, _, name = uri.rpartition("/")
            return [(S3Storage(parent, s3_client(endpoint_url, region)), name)]
        storage = S3Storage(uri, s3_client(endpoint_url, region))
        return [(storage, key) for key in storage.list() if key.endswith(".jsonl")]
    path = Path(uri).expanduser()
    if path.is_file():
        return [(LocalStorage(path.parent), path.name)]
    if path.is_dir():
        files = sorted(path.rglob("*.jsonl"))
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    return [(LocalStorage(f.parent), f.name) for f in files if f.is_file()]


def parse_prompt_line(line: str, where: str) -> PromptRow:
    """One input line → PromptRow; raises PromptFileError naming `where` (file:line)."""
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{where}: not valid JSON: {error.msg}") from None
    if not isinstance(record, dict):
        raise PromptFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    text = record.pop("text", None)
    if not isinstance(text, str):
        raise PromptFileError(f"{where}: missing string field 'text'")
    if not text.strip():
        raise PromptFileError(f"{where}: field 'text' is empty")
    return PromptRow(id=prompt_id(text), text=text, metadata=record, source=where)


def read_prompts(
    files: list[tuple[Storage, str]], policy: MalformedPolicy, summary: PrepareSummary
) -> Iterator[PromptRow]:
    """Unique prompts from all files; counts duplicates and (under `skip`) malformed lines,
    among them lines that are not UTF-8."""
    # numpy is loaded here, not at import: the other stages import this module (shard_count)
    from synthpref.dedup import DigestSet

    seen = DigestSet()  # of the ids as 64-bit numbers: ~8 bytes a prompt
    for storage, key in files:
        url = storage.url(key)
        summary.files.append(url)
        for raw in storage.read_raw_lines(key):
            try:
                line = raw.text(url)  # NotUtf8Error names file:line and the byte offset
                if not line.strip():
                    continue
                row = parse_prompt_line(line, f"{url}:{raw.number}")
            except (PromptFileError, NotUtf8Error) as error:
                if policy is MalformedPolicy.FAIL:
                    raise PromptFileError(str(error)) from None
                summary.malformed += 1
                if len(summary.malformed_examples) < MAX_REPORTED_MALFORMED:
                    summary.malformed_examples.append(str(error))
                continue
            if not seen.add(int(row.id, 16)):
                summary.duplicates += 1
                continue
            yield row


def run_prepare(
    spec: PreferenceRunSpec,
    storage: Storage,
    on_shard: Callable[[int], None] | None = None,
) -> PrepareSummary:
    """Run the stage; returns what the manifest records. A done stage is not redone; one whose
    manifest is there but a shard's commit marker is not is repaired (the missing shards are
    cut again from the same files), or refused when the prompt files changed meanwhile."""
    earlier: dict[str, Any] | None = None
    if storage.exists(layout.PROMPTS_MANIFEST):
        earlier = storage.read_json(layout.PROMPTS_MANIFEST)
        missing = missing_prompt_shards(storage, int(earlier["shards"]))
        if not missing:
            return PrepareSummary(**earlier)
        log.warning(
            "%s: prompt shard(s) %s lack their commit marker; preparing them again",
            storage.url("prompts/"),
            describe([str(s) for s in missing]),
        )
        # Until every shard is back, nothing may look prepared.
        storage.delete(layout.PROMPTS_MANIFEST)
    stopwatch = Stopwatch()
    source = spec.prompts
    files = list_prompt_files(source.uri, spec.storage.endpoint_url, spec.storage.region)
    if not files:
        raise PromptFileError(f"{source.uri}: no prompt files (*.jsonl) found")
    summary = PrepareSummary()
    batch: list[PromptRow] = []

    def flush() -> None:
        key = layout.prompt_shard(summary.shards)
        if storage.committed(key) is None:
            write_rows(storage, key, batch)
        summary.shards += 1
        if on_shard is not None:
            on_shard(summary.shards)
        batch.clear()

    for row in read_prompts(files, source.on_malformed, summary):
        summary.prompts += 1
        summary.prompt_tokens += text_tokens(row.text)
        batch.append(row)
        if len(batch) == source.shard_size:
            flush()
    if batch:
        flush()
    if summary.prompts == 0:
        raise PromptFileError(
            f"{source.uri}: no usable prompts in {len(files)} file(s) ({unusable(summary)})"
        )
    if earlier is not None and (earlier["prompts"], earlier["shards"]) != (
        summary.prompts,
        summary.shards,
    ):
        raise PromptFileError(
            f"{source.uri}: the prompt files changed since prepare first ran "
            f"({earlier['prompts']} prompts in {earlier['shards']} shards then, "
            f"{summary.prompts} in {summary.shards} now), so the missing shards cannot be "
            "repaired; use a new storage.uri for the new prompts"
        )
    summary.timing = stopwatch.record()
    storage.write_json(layout.PROMPTS_MANIFEST, asdict(summary))
    return summary


def unusable(summary: PrepareSummary) -> str:
    """Why no prompt was left: the lines skipped as malformed (with an example) and the
    duplicates dropped, or that the files held no line at all."""
    if not (summary.malformed or summary.duplicates):
        return "the files hold no prompt lines"
    parts = []
    if summary.malformed:
        example = f", e.g. {summary.malformed_examples[0]}" if summary.malformed_examples else ""
        parts.append(
            f"{summary.malformed} malformed line(s) skipped (prompts.onMalformed: skip){example}"
        )
    if summary.duplicates:
        parts.append(f"{summary.duplicates} duplicate(s) dropped")
    return "; ".join(parts)


def shard_count(storage: Storage) -> int:
    """The number of prompt shards; an error naming what to run when prepare is not done (no
    manifest, or a shard without its commit marker)."""
    return prompt_shards(storage)
