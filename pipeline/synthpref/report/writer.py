"""The report step: a finished run's report, provenance and dataset card, written to its storage.

Called by `synthpref report RUN.yaml` and, as the last step of every run, by the parse stage
just before it writes the run summary (`stages.parse.run_parse(before_summary=...)`: in `synthpref
run --local`, and on a cluster in the parse Job's last worker), so the report exists once the
run counts as done. Reads the run (`report.collect`, streaming), then writes

- `dataset/provenance.json` (`report.provenance`) and `dataset/README.md` (`report.card`);
- `report/report.json` (`report.document`), `report/warnings.json` (the warnings alone: a
  small object, which the operator puts on the run as its `ReportWarnings` condition) and
  `report/index.html` (`report.page`, figures drawn by `report.render`), the page last.

Each object gets its Content-Type where the storage keeps one (S3: `CONTENT_TYPES`), so a
browser shows the page, and a presigned link to it (`synthpref report open --url`) opens it.

A report never takes a finished run down with it: `report_or_error` turns any failure into a
`ReportError` (one line naming the run and the cause) after recording it in
`report/error.json`, where the operator reads it into `status.result.reportError`; the dataset
and everything else committed stays as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from synthpref import layout
from synthpref.errors import InputsNotReadyError, SynthprefError
from synthpref.model_record import package_versions
from synthpref.report.card import dataset_card
from synthpref.report.collect import collect
from synthpref.report.document import build_document, figure_ids
from synthpref.report.provenance import build_provenance
from synthpref.report.stats import RunStats
from synthpref.spec import PreferenceRunManifest
from synthpref.stages.parse import dataset_key
from synthpref.storage import Storage

log = logging.getLogger(__name__)

HTML = "text/html; charset=utf-8"
JSON = "application/json"
MARKDOWN = "text/markdown; charset=utf-8"
CONTENT_TYPES = {
    layout.REPORT_HTML: HTML,
    layout.REPORT_JSON: JSON,
    layout.REPORT_WARNINGS: JSON,
    layout.PROVENANCE: JSON,
    layout.DATASET_CARD: MARKDOWN,
}
# At most this many warnings, each cut to this many characters, go into report/warnings.json
# (the report's checks give a handful; the operator bounds what it reads anyway).
MAX_WARNINGS = 20
MAX_WARNING_CHARS = 1000


class ReportError(SynthprefError):
    """The report (or provenance, or card) of a finished run could not be written."""


@dataclass
class ReportResult:
    uri: str
    json_uri: str
    provenance_uri: str
    card_uri: str
    figures: list[str]
    warnings: list[dict[str, Any]] = field(default_factory=list)


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _read(storage: Storage, key: str) -> dict[str, Any] | None:
    return storage.read_json(key) if storage.exists(key) else None


def dataset_files(
    manifest: PreferenceRunManifest, storage: Storage, shards: int
) -> list[dict[str, Any]]:
    """Each dataset part: key, rows (from its commit marker) and SHA-256 (streamed)."""
    files = []
    for shard in range(shards):
        key = dataset_key(manifest.spec, shard)
        digest = hashlib.sha256()
        for chunk in storage.read_chunks(key):
            digest.update(chunk)
        info = storage.committed(key) or {}
        files.append({"key": key, "rows": int(info.get("rows", 0)), "sha256": digest.hexdigest()})
    return files


def _times(stats: RunStats) -> tuple[float | None, float | None]:
    starts = [t.first_start for t in stats.stage_times.values() if t.first_start is not None]
    ends = [t.last_end for t in stats.stage_times.values() if t.last_end is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)


def write_report(
    manifest: PreferenceRunManifest,
    storage: Storage,
    *,
    summary: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> ReportResult:
    """Write the run's provenance, dataset card and report; raises when the run is not done.

    `summary`: the run summary about to be written (the parse stage's last step); by default
    the one in storage.
    """
    from synthpref.report.page import page
    from synthpref.report.render import svg

    spec = manifest.spec
    if summary is None:
        if not storage.exists(layout.SUMMARY):
            raise InputsNotReadyError(
                f"{storage.url(layout.SUMMARY)}: not found: the run has not finished its parse "
                "stage; run it (or the whole run) first"
            )
        summary = storage.read_json(layout.SUMMARY)
    stats = collect(spec, storage)
    started, finished = _times(stats)
    times = {"started": iso(started), "finished": iso(finished), "report_written": iso(clock())}
    report_uri = storage.url(layout.REPORT_HTML)
    dataset_uri = str(summary.get("dataset") or storage.url("dataset/"))

    provenance = build_provenance(
        manifest,
        summary,
        model_records={m.name: _read(storage, layout.model_record(m.name)) for m in spec.models},
        judge_record=_read(storage, layout.JUDGE_RECORD),
        judge_served=list(stats.judge.served_models),
        judge_fingerprints=list(stats.judge.fingerprints),
        packages=package_versions(),
        times=times,
        dataset_files=dataset_files(manifest, storage, int(summary.get("shards", 0))),
        storage_uri=storage.url(""),
    )
    storage.write_json(layout.PROVENANCE, provenance, content_type=JSON)
    card = dataset_card(
        manifest,
        summary,
        dataset_uri=dataset_uri,
        report_uri=report_uri,
        judge_served=sorted(stats.judge.served_models),
    )
    storage.write_bytes(layout.DATASET_CARD, card.encode("utf-8"), content_type=MARKDOWN)

    run = {
        "name": manifest.metadata.name,
        "namespace": manifest.metadata.namespace,
        "storage": storage.url(""),
        "dataset": dataset_uri,
        "started": times["started"],
        "finished": times["finished"],
        "generated_at": times["report_written"],
    }
    document = build_document(stats, summary, spec, run=run)
    svgs = {figure["id"]: svg(figure) for s in document["sections"] for figure in s["figures"]}
    storage.write_bytes(
        layout.REPORT_JSON,
        json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8"),
        content_type=JSON,
    )
    storage.write_json(
        layout.REPORT_WARNINGS, warnings_document(document["warnings"]), content_type=JSON
    )
    storage.write_bytes(layout.REPORT_HTML, page(document, svgs).encode("utf-8"), content_type=HTML)
    if storage.exists(layout.REPORT_ERROR):
        storage.delete(layout.REPORT_ERROR)
    return ReportResult(
        uri=report_uri,
        json_uri=storage.url(layout.REPORT_JSON),
        provenance_uri=storage.url(layout.PROVENANCE),
        card_uri=storage.url(layout.DATASET_CARD),
        figures=figure_ids(document),
        warnings=document["warnings"],
    )


def warnings_document(warnings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`report/warnings.json`: each warning's kind and sentence (at most `MAX_WARNINGS`)."""
    return {
        "warnings": [
            {"kind": str(w["kind"]), "message": str(w["message"])[:MAX_WARNING_CHARS]}
            for w in warnings[:MAX_WARNINGS]
        ]
    }


def report_or_error(
    manifest: PreferenceRunManifest, storage: Storage, **kwargs: Any
) -> ReportResult | ReportError:
    """`write_report`, with any failure returned as one `ReportError` (also recorded in
    `report/error.json` when the storage takes it) instead of raised."""
    try:
        return write_report(manifest, storage, **kwargs)
    except Exception as error:  # a report never fails a finished run, whatever went wrong
        log.debug("run report failed", exc_info=True)
        cause = (
            str(error) if isinstance(error, SynthprefError) else f"{type(error).__name__}: {error}"
        )
        failure = ReportError(
            f"run {manifest.metadata.name}: the run report could not be written ({cause}); the "
            f"dataset and every committed artifact are kept; fix the cause and rerun "
            f"`synthpref report RUN.yaml`"
        )
        try:
            storage.write_json(layout.REPORT_ERROR, {"error": str(failure)})
        except Exception:  # the storage itself is failing: the message still reaches the user
            log.debug("could not record the report error", exc_info=True)
        return failure
