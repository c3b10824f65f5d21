"""`synthpref run RUN.yaml --local`: every stage in order, in this process, with progress bars.

The same stage functions the cluster Jobs run, called one after the other as a single worker.
Every stage skips what is already committed, so an interrupted local run resumes where it
stopped when started again. Its last step is the run report (`synthpref.report`), written by
the parse stage just before the run summary, whatever the outcome. The result carries the run's
assessment against `spec.acceptance` (`outcome.assess`), which the CLI turns into its exit
code. What the vLLM engines and their libraries print goes to the run's `logs/`, not between
the progress bars, unless `verbose` (`synthpref.console`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from synthpref import layout
from synthpref.console import captured, quiet
from synthpref.errors import SynthprefError
from synthpref.outcome import Assessment, assess
from synthpref.report.writer import ReportError, ReportResult, report_or_error
from synthpref.spec import GenerationBackend, JudgeBackend, PreferenceRunManifest, PreferenceRunSpec
from synthpref.storage import Storage


@dataclass
class LocalRunResult:
    summary: dict[str, Any]
    dataset_uri: str
    pairs: int
    assessment: Assessment
    report: ReportResult | ReportError | None = None  # None: `report` was off


@contextmanager
def stage_bar(
    name: str, total: int | None, enabled: bool, file: TextIO | None = None
) -> Iterator[Callable[[int], None]]:
    """A progress bar for one stage (on `file`, default stderr); yields the per-shard callback
    the stages accept."""
    with tqdm(
        total=total,
        desc=f"{name:<9}",
        unit="shard",
        disable=not enabled,
        file=file,
        dynamic_ncols=True,
    ) as bar:

        def tick(_shard: int) -> None:
            bar.update(1)

        yield tick


class LocalModelMissingError(SynthprefError, FileNotFoundError):
    """A vLLM model (or judge) names a local path that does not exist."""


def _local_path(path: str) -> bool:
    """A path as the spec writes local models (`./x`, `../x`, `.models/x`, `/x`, `~/x`), not a
    Hugging Face repo id (`org/name`)."""
    return path.startswith((".", "/", "~"))


def check_local_models(spec: PreferenceRunSpec) -> None:
    """Before anything runs: every vLLM model or judge given as a local path exists (else
    vLLM would fail much later with a traceback about repo ids)."""
    wanted = [
        (f"models[{i}] {m.name}", m.path)
        for i, m in enumerate(spec.models)
        if m.backend is GenerationBackend.VLLM
    ]
    if spec.judge.backend is JudgeBackend.VLLM:
        wanted.append(("judge", spec.judge.model))
    missing = [
        (what, path)
        for what, path in wanted
        if _local_path(path) and not Path(path).expanduser().exists()
    ]
    if missing:
        listed = "; ".join(f"{what}: {path}" for what, path in missing)
        raise LocalModelMissingError(
            f"local model path(s) not found (relative to {Path.cwd()}): {listed}; make the "
            "demo's models with `synthpref dev models .models --tiny tiny-bad` (tiny random "
            "models: `synthpref dev tiny-models DIR --names a,b`), or point the path at a "
            "model directory or a Hugging Face repo id"
        )


def run_local(
    manifest: PreferenceRunManifest,
    storage: Storage,
    *,
    progress: bool = True,
    report: bool = True,
    verbose: bool = False,
) -> LocalRunResult:
    """Run prepare → generate (each model) → mix → judge → parse (the run report, when
    `report`, written just before the run summary); return the run summary. Each vLLM engine's
    output goes to logs/ in the storage (`layout.engine_log`), unless `verbose`."""
    from synthpref.stages.generate import run_generate
    from synthpref.stages.judge import run_judge
    from synthpref.stages.mix import run_mix
    from synthpref.stages.parse import run_parse
    from synthpref.stages.prepare import run_prepare

    spec = manifest.spec
    check_local_models(spec)
    quiet_console = quiet(verbose, local_run=True)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {}

    def timed(name: str, started: float) -> None:
        timings[name] = round(time.monotonic() - started, 2)

    started = time.monotonic()
    with stage_bar("prepare", None, progress) as tick:
        summary["prepare"] = asdict(run_prepare(spec, storage, on_shard=tick))
    timed("prepare", started)
    shards = summary["prepare"]["shards"]

    summary["generate"] = {}
    for model in spec.models:
        started = time.monotonic()
        engine = quiet_console and model.backend is GenerationBackend.VLLM
        with (
            captured(storage, layout.engine_log("generate", model.name), enabled=engine) as out,
            stage_bar(model.name, shards, progress, out) as tick,
        ):
            result = run_generate(spec, storage, model.name, on_shard=tick)
        summary["generate"][model.name] = asdict(result)
        timed(f"generate/{model.name}", started)

    started = time.monotonic()
    with stage_bar("mix", shards, progress) as tick:
        summary["mix"] = asdict(run_mix(spec, storage, on_shard=tick))
    timed("mix", started)

    started = time.monotonic()
    engine = quiet_console and spec.judge.backend is JudgeBackend.VLLM
    with (
        captured(storage, layout.engine_log("judge"), enabled=engine) as out,
        stage_bar("judge", shards, progress, out) as tick,
    ):
        if spec.judge.backend is JudgeBackend.VLLM:
            summary["judge"] = asdict(run_judge(spec, storage, on_shard=tick))
        else:
            from synthpref.annotate.local import annotate_until_done

            summary["judge"] = annotate_until_done(
                spec, storage, run_name=manifest.metadata.name, on_shard=tick
            )
    timed("judge", started)

    reports: list[ReportResult | ReportError] = []

    def write_report(document: dict[str, Any]) -> None:
        reports.append(report_or_error(manifest, storage, summary=document))

    started = time.monotonic()
    with stage_bar("parse", shards, progress) as tick:
        parsed = run_parse(
            spec, storage, on_shard=tick, before_summary=write_report if report else None
        )
    timed("parse", started)
    summary["parse"] = storage.read_json(layout.SUMMARY)
    summary["seconds"] = timings
    return LocalRunResult(
        summary=summary,
        dataset_uri=storage.url("dataset/"),
        pairs=int(summary["parse"].get("pairs", getattr(parsed, "pairs", 0))),
        assessment=assess(summary["parse"], spec.acceptance),
        report=reports[-1] if reports else None,
    )
