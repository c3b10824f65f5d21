"""Where each artifact of a run lives under the storage root, and who works on which shard.

Every stage is sharded by the prompt shard index, so later stages join shard by shard and an
Indexed Job's pods split the work by index. Pure: names only, no I/O.
"""

from __future__ import annotations

import os

COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"

PROMPTS_MANIFEST = "prompts/manifest.json"
MIX_MANIFEST = "mix/manifest.json"
SUMMARY = "dataset/summary.json"

# What the run report step writes once the dataset is done (`synthpref.report`): the report
# itself, its warnings alone (a small object the operator reads onto the run), the error that
# stopped it (absent after a report was written), and beside the dataset its provenance and
# Hugging Face dataset card.
REPORT_HTML = "report/index.html"
REPORT_JSON = "report/report.json"
REPORT_WARNINGS = "report/warnings.json"
REPORT_ERROR = "report/error.json"
PROVENANCE = "dataset/provenance.json"
DATASET_CARD = "dataset/README.md"
# What a generation or judge worker loaded (path, revision, weight-file hashes, packages),
# written once by the first worker of that model (`synthpref.model_record`).
JUDGE_RECORD = "provenance/judge.json"


def _shard(index: int) -> str:
    return f"shard-{index:05d}"


def prompt_shard(index: int) -> str:
    return f"prompts/{_shard(index)}.jsonl"


def generation_shard(model: str, index: int) -> str:
    return f"generations/{model}/{_shard(index)}.jsonl"


def mix_shard(index: int) -> str:
    return f"mix/{_shard(index)}.jsonl"


def request_file(index: int, part: int) -> str:
    """A judge request file (OpenAI Batch input format); a shard may need several parts."""
    return f"requests/{_shard(index)}-part-{part:03d}.jsonl"


def request_prefix(index: int) -> str:
    """All judge request files of a shard start with this prefix."""
    return f"requests/{_shard(index)}-"


def result_prefix(index: int) -> str:
    """All judge result files of a shard start with this prefix."""
    return f"results/{_shard(index)}-"


def result_file(index: int, part: int, attempt: int = 1) -> str:
    """Judge results (OpenAI Batch output format) for one request file and attempt."""
    return f"{result_prefix(index)}part-{part:03d}-attempt-{attempt:02d}.jsonl"


def result_for_request(request_key: str, attempt: int = 1) -> str:
    """The result file that answers request file `request_key` (see `request_file`)."""
    return f"results/{_request_stem(request_key)}-attempt-{attempt:02d}.jsonl"


# The OpenAI judge's records (annotate.ledger): one ledger per request file, the request files
# of later attempts, and the marker of a cancelled run.
JUDGE_LEDGER_PREFIX = "judge/ledger/"
JUDGE_RESUBMIT_PREFIX = "judge/resubmit/"
JUDGE_CANCEL_MARKER = "judge/cancel.json"
# Every ledger in one document (annotate.state), derived from them, for one read per pass.
JUDGE_STATE = "judge/state.json"


def _request_stem(request_key: str) -> str:
    return request_key.removeprefix("requests/").removesuffix(".jsonl")


def judge_ledger(request_key: str) -> str:
    """The OpenAI judge's ledger of request file `request_key`."""
    return f"{JUDGE_LEDGER_PREFIX}{_request_stem(request_key)}.json"


def judge_resubmit(request_key: str, attempt: int) -> str:
    """The requests of `request_key` sent again in attempt `attempt` (failed or missing before)."""
    return f"{JUDGE_RESUBMIT_PREFIX}{_request_stem(request_key)}-attempt-{attempt:02d}.jsonl"


def model_record(model: str) -> str:
    """What the generation workers of `model` loaded (see `JUDGE_RECORD`)."""
    return f"provenance/models/{model}.json"


def engine_log(stage: str, model: str | None = None, worker: int = 0, workers: int = 1) -> str:
    """What the engine and its libraries printed while a stage ran on a local console
    (`synthpref.console`): logs/generate-MODEL.log, logs/judge.log; one per worker when several
    share the stage (logs/judge-worker-1.log)."""
    name = stage if model is None else f"{stage}-{model}"
    if workers > 1:
        name += f"-worker-{worker}"
    return f"logs/{name}.log"


def dataset_shard(index: int, extension: str = "jsonl") -> str:
    return f"dataset/part-{index:05d}.{extension}"


def dataset_parts_pattern(extension: str = "jsonl") -> str:
    """Every dataset part (`dataset_shard`), as a glob relative to `dataset/` (the dataset
    card's `configs` and loading snippet use it)."""
    return f"part-*.{extension}"


def parse_summary(index: int) -> str:
    return f"dataset/summaries/{_shard(index)}.json"


def write_probe(token: str) -> str:
    """A short-lived object that `Storage.check_writable` writes and deletes (`token` unique)."""
    return f".write-probe-{token}"


def shards_for_worker(total: int, worker: int, workers: int) -> list[int]:
    """The shards worker `worker` of `workers` takes: every shard s with s mod workers == worker."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (got {workers})")
    if not 0 <= worker < workers:
        raise ValueError(f"worker index {worker} is outside 0..{workers - 1}")
    return list(range(worker, total, workers))


def worker_from_env(default: int = 0) -> int:
    """This pod's index in an Indexed Job (JOB_COMPLETION_INDEX), else `default`."""
    value = os.environ.get(COMPLETION_INDEX_ENV)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise ValueError(f"{COMPLETION_INDEX_ENV}={value!r} is not a non-negative integer")
    return int(value)
