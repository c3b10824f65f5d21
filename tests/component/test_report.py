"""The run report, provenance and dataset card on real runs.

One run is made up to `mix` (24 prompts answered by four "models" of the OpenAI-compatible test
server through the `openai` backend); copies of it are then judged through the OpenAI Batch API
by scripted judges (the test server's `request_script`): one that rates by content (a hash of
each answer's text), one by the position an answer is shown in, one by length, one that gives
every answer a 3, one whose replies do not parse, one whose requests fail, one whose replies
are cut at maxTokens. Each bias warning fires for its judge and stays quiet for the others.
The page is loaded in a real headless chromium; the dataset loads with Hugging Face `datasets`.

Set SYNTHPREF_TEST_ARTIFACTS to a directory to keep the report's screenshot there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref import layout
from synthpref.annotate.local import annotate_until_done
from synthpref.jsonl import read_rows
from synthpref.report.collect import collect
from synthpref.report.document import build_document
from synthpref.report.writer import write_report
from synthpref.rows import PreferenceRow
from synthpref.spec import PreferenceRunManifest
from synthpref.stages.generate import run_generate
from synthpref.stages.mix import run_mix
from synthpref.stages.parse import run_parse
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage
from tests.builders import manifest_dict, spec_dict
from tests.support.browser import load_page
from tests.support.cli import one_error, synthpref
from tests.support.openai_server import (
    DEFAULT_API_KEY,
    ErrorLine,
    Garbled,
    Judgement,
    OpenAIServer,
    Outcome,
    RequestInfo,
    default_rating,
    request_answers,
)

pytestmark = pytest.mark.timeout(300)

KEY_ENV = "SYNTHPREF_TEST_REPORT_KEY"
PROMPTS = 24
ARTIFACTS_ENV = "SYNTHPREF_TEST_ARTIFACTS"
Script = Callable[[RequestInfo], Outcome | None]


def rating_judge(rate: Callable[[int, str, dict[int, str]], int]) -> Script:
    """A judge that rates answer number n (text t, all answers a) with rate(n, t, a)."""

    def script(info: RequestInfo) -> Outcome | None:
        answers = request_answers(info.body)
        if not answers:
            return None  # not a judge request
        return Judgement({n: rate(n, text, answers) for n, text in answers.items()})

    return script


def outcome_judge(outcome: Outcome) -> Script:
    return lambda info: outcome if request_answers(info.body) else None


def by_length(n: int, text: str, answers: dict[int, str]) -> int:
    return 2 + sum(len(other) < len(text) for other in answers.values())


# Past the requests' max_tokens (judge.maxTokens, 1024 when mix wrote them): cut, unparseable.
LONG = Judgement(
    {n: 4 for n in range(1, 5)},
    "A long rationale that goes on and on about every detail of the answer. " * 25,
)

# judge name → (its script, extra judge settings, the warnings it must raise)
JUDGES: dict[str, tuple[Script, dict[str, Any], set[str]]] = {
    "content": (rating_judge(lambda n, t, a: default_rating(t)), {}, set()),
    "position": (rating_judge(lambda n, t, a: 6 - n), {}, {"position_bias", "pair_order"}),
    "length": (rating_judge(by_length), {}, {"length_bias"}),
    "constant": (rating_judge(lambda n, t, a: 3), {}, {"rating_collapse"}),
    "garbled": (outcome_judge(Garbled()), {}, {"unparseable_ratings"}),
    "failing": (outcome_judge(ErrorLine()), {}, {"failed_requests"}),
    "truncated": (outcome_judge(LONG), {}, {"truncated_replies", "unparseable_ratings"}),
}


def run_manifest(root: Path, server: OpenAIServer, **judge: Any) -> PreferenceRunManifest:
    endpoint = {"baseUrl": server.base_url, "apiKeyEnv": KEY_ENV, "concurrency": 4}
    document = spec_dict(
        prompts_uri=str(root.parent / "prompts.jsonl"),
        storage_uri=str(root / "store"),
        mix={"responsesPerPrompt": 4, "seed": 3, "shuffleAnswers": True},
        judge={
            "backend": "openai",
            "model": "judge-1",
            "maxAttempts": 1,
            "pollIntervalSeconds": 0.01,
            "openai": {**endpoint, "maxRetries": 2},
            **judge,
        },
        # A tiny run must be able to fail its judge without the acceptance check mattering.
        acceptance={"minPairFraction": 0, "maxFailedRequestFraction": 1},
    )
    document["prompts"]["shardSize"] = 8
    document["models"] = [
        {
            "name": f"m{i}",
            "backend": "openai",
            "path": f"model-{i}",
            "sampling": {"maxTokens": 80, "seed": i},
            "openai": endpoint,
        }
        for i in range(4)
    ]
    return PreferenceRunManifest.model_validate(manifest_dict(document, name="report-run"))


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with pytest.MonkeyPatch.context() as patch, OpenAIServer() as running:
        patch.setenv(KEY_ENV, DEFAULT_API_KEY)
        yield running


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, server: OpenAIServer) -> Path:
    """A run up to mix (prepared, answered, mixed): the start of every judged copy."""
    base = tmp_path_factory.mktemp("report")
    (base / "prompts.jsonl").write_text(
        "".join(
            json.dumps({"text": f"Question {i}: how do tides work?", "topic": f"t{i % 3}"}) + "\n"
            for i in range(PROMPTS)
        )
    )
    root = base / "mixed"
    spec = run_manifest(root, server).spec
    storage = LocalStorage(root / "store")
    run_prepare(spec, storage)
    for model in spec.models:
        run_generate(spec, storage, model.name)
    run_mix(spec, storage)
    return root


Judged = tuple[PreferenceRunManifest, LocalStorage]


@pytest.fixture(scope="module")
def judged(mixed: Path, server: OpenAIServer) -> Callable[[str], Judged]:
    """The mixed run judged by one of JUDGES and parsed (each judge once per module)."""
    runs: dict[str, Judged] = {}

    def run(name: str) -> Judged:
        if name not in runs:
            script, settings, _ = JUDGES[name]
            root = mixed.parent / name
            shutil.copytree(mixed / "store", root / "store")
            manifest = run_manifest(root, server, **settings)
            storage = LocalStorage(root / "store")
            server.request_script = script
            try:
                annotate_until_done(manifest.spec, storage, run_name=manifest.metadata.name)
            finally:
                server.request_script = None
            run_parse(manifest.spec, storage)
            runs[name] = (manifest, storage)
        return runs[name]

    return run


@pytest.mark.parametrize("judge", sorted(JUDGES))
def test_each_warning_fires_for_its_judge_and_stays_quiet_for_the_others(
    judge: str, judged: Callable[[str], Judged]
) -> None:
    manifest, storage = judged(judge)
    stats = collect(manifest.spec, storage)
    document = build_document(stats, storage.read_json(layout.SUMMARY), manifest.spec, run={})
    kinds = {w["kind"] for w in document["warnings"]}
    assert kinds == JUDGES[judge][2], document["warnings"]
    judge_section = next(s for s in document["sections"] if s["id"] == "judge")
    assert judge_section["warnings"] == document["warnings"]


def artifact_path(tmp_path: Path, name: str) -> Path:
    directory = os.environ.get(ARTIFACTS_ENV)
    return Path(directory) / name if directory else tmp_path / name


def test_the_report_page_draws_every_figure_in_a_real_browser(
    judged: Callable[[str], Judged], tmp_path: Path
) -> None:
    manifest, storage = judged("position")
    result = write_report(manifest, storage)
    document = storage.read_json(layout.REPORT_JSON)
    ids = [f["id"] for s in document["sections"] for f in s["figures"]]
    assert result.figures == ids and len(ids) >= 15

    screenshot = artifact_path(tmp_path, "report-position-judge.png")
    page = load_page(Path(result.uri), screenshot)
    print(f"\nreport screenshot: {screenshot}")

    assert page.console_errors == [] and page.page_errors == [] and page.failed_requests == []
    assert page.requests == [Path(result.uri).resolve().as_uri()]  # nothing fetched: offline
    assert [f.id for f in page.figures] == ids
    for figure in page.figures:
        assert figure.svgs == 1 and figure.width > 200 and figure.height > 100, figure
    assert set(page.warnings) == {"position_bias", "pair_order"}
    assert "Position bias" in page.text and document["title"] == page.title
    assert screenshot.stat().st_size > 50_000

    summary = storage.read_json(layout.SUMMARY)
    assert document["headline"]["pairs"] == summary["pairs"] > 0
    stage_times = next(
        t for s in document["sections"] for t in s["tables"] if t["id"] == "stage_time"
    )
    stages = [row[0] for row in stage_times["rows"]]
    assert stages == ["prepare", *(f"generate: m{i}" for i in range(4)), "mix", "judge", "parse"]
    assert all(row[1] >= 1 for row in stage_times["rows"])


def test_provenance_and_card_describe_the_run(judged: Callable[[str], Judged]) -> None:
    manifest, storage = judged("content")
    write_report(manifest, storage)
    provenance = storage.read_json(layout.PROVENANCE)
    summary = storage.read_json(layout.SUMMARY)
    assert provenance["spec"] == manifest.spec.model_dump(mode="json", by_alias=True)
    assert provenance["spec"]["judge"]["openai"]["apiKeyEnv"] == KEY_ENV  # a name, no key
    assert DEFAULT_API_KEY not in json.dumps(provenance)
    loaded = provenance["models"][0]["loaded"]
    assert loaded["path"] == "model-0" and "openai" in loaded["packages"]
    assert provenance["judge"]["served_as"] == ["judge-1"]
    assert provenance["judge"]["system_fingerprints"] == ["fp_test"]
    assert set(provenance["templates"]["aspects"]) == set(manifest.spec.mix.aspects)
    assert provenance["seeds"]["mix"] == 3 and provenance["seeds"]["models"]["m2"] == 2
    assert {"synthpref", "openai"} <= set(provenance["packages"])
    times = provenance["times"]
    assert times["started"] <= times["finished"] <= times["report_written"]
    assert provenance["counts"]["pairs"] == summary["pairs"] > 0
    for item in provenance["dataset"]["files"]:
        data = (storage.root / item["key"]).read_bytes()
        assert item["sha256"] == __import__("hashlib").sha256(data).hexdigest()
        assert item["rows"] == data.count(b"\n")

    card = storage.read_bytes(layout.DATASET_CARD).decode()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "part-*.jsonl"}]
    assert "license" not in front and "# license:" in card


def load_card_snippet(storage: LocalStorage, cache: Path) -> Any:
    """Run the card's two-line snippet as a user would paste it; returns `pairs`."""
    card = storage.read_bytes(layout.DATASET_CARD).decode()
    snippet = re.search(r"```python\n(.*?)```", card, re.S)
    assert snippet is not None and len(snippet.group(1).strip().splitlines()) == 2
    code = snippet.group(1).replace("split=", f"cache_dir={str(cache)!r}, split=")
    scope: dict[str, Any] = {}
    exec(code, scope)
    return scope["pairs"]


def check_features(pairs: Any, rows: int, aspects: list[str]) -> None:
    from datasets import List, Value

    features = pairs.features
    message = {"role": Value("string"), "content": Value("string")}
    assert features["prompt"] == Value("string")
    for side in ("chosen", "rejected"):
        assert features[side] == List(message)
        assert features[f"{side}_rating"] == Value("float64")
        assert features[f"{side}_model"] == Value("string")
        assert set(features[f"{side}_aspect_ratings"]) == set(aspects)
    assert pairs.num_rows == rows
    first = pairs[0]
    assert [m["role"] for m in first["chosen"]] == ["user", "assistant"]
    assert first["chosen"][0]["content"] == first["prompt"]


def test_the_dataset_loads_with_hugging_face_datasets(
    judged: Callable[[str], Judged], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasets import load_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    manifest, storage = judged("content")
    write_report(manifest, storage)
    rows = storage.read_json(layout.SUMMARY)["pairs"]
    aspects = list(manifest.spec.mix.aspects)
    check_features(load_card_snippet(storage, tmp_path / "hf"), rows, aspects)
    # The card's `configs` make the folder itself loadable.
    folder = load_dataset(str(storage.root / "dataset"), cache_dir=str(tmp_path / "hf"))
    check_features(folder["train"], rows, aspects)
    assert "metadata" in folder["train"].features

    # The same run written as Parquet.
    parquet_root = tmp_path / "parquet"
    shutil.copytree(storage.root, parquet_root / "store", ignore=shutil.ignore_patterns("dataset"))
    document = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    document["spec"]["output"] = {"format": "parquet"}
    document["spec"]["storage"]["uri"] = str(parquet_root / "store")
    parquet_manifest = PreferenceRunManifest.model_validate(document)
    parquet = LocalStorage(parquet_root / "store")
    run_parse(parquet_manifest.spec, parquet)
    write_report(parquet_manifest, parquet)
    pairs = load_card_snippet(parquet, tmp_path / "hf")
    check_features(pairs, rows, aspects)
    assert sorted(pairs["prompt_id"]) == sorted(
        row.prompt_id
        for shard in range(3)
        for row in read_rows(storage, layout.dataset_shard(shard), PreferenceRow)
    )


def test_a_run_that_has_not_finished_has_no_report_yet(
    mixed: Path, server: OpenAIServer, tmp_path: Path
) -> None:
    manifest = run_manifest(mixed, server)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(manifest.model_dump(mode="json", by_alias=True)))
    result = synthpref("report", str(run_file), env={KEY_ENV: DEFAULT_API_KEY})
    assert result.returncode == 1
    assert one_error(result) == (
        f"{mixed / 'store' / layout.SUMMARY}: not found: the run has not finished its parse "
        "stage; run it (or the whole run) first"
    )
    assert not (mixed / "store" / "report").exists()


def test_a_report_error_is_one_line_and_the_dataset_stays(
    judged: Callable[[str], Judged], tmp_path: Path
) -> None:
    manifest, storage = judged("length")
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(manifest.model_dump(mode="json", by_alias=True)))
    before = {k: storage.read_bytes(k) for k in storage.list("dataset/part-")}
    blocked = storage.root / "report"
    blocked.mkdir()
    blocked.chmod(stat.S_IRUSR | stat.S_IXUSR)  # read-only: the report cannot be written
    if os.access(blocked, os.W_OK):  # root writes anyway: make `report` a file instead
        blocked.chmod(0o755)
        blocked.rmdir()
        blocked.write_text("not a folder")
    try:
        env = {KEY_ENV: DEFAULT_API_KEY}
        for command in (
            ["report", str(run_file)],
            ["run", str(run_file), "--local", "--no-progress"],
        ):
            result = synthpref(*command, env=env)
            assert result.returncode == 1, result.stderr
            message = one_error(result)
            assert "run report-run: the run report could not be written" in message
            assert str(storage.root / "report") in message
            assert "the dataset and every committed artifact are kept" in message
        assert {k: storage.read_bytes(k) for k in storage.list("dataset/part-")} == before
    finally:
        if blocked.is_dir():
            blocked.chmod(0o755)
        else:
            blocked.unlink()
    result = synthpref("report", str(run_file), env={KEY_ENV: DEFAULT_API_KEY})
    assert result.returncode == 0, result.stderr
    assert f"report: {storage.url(layout.REPORT_HTML)}" in result.stdout
    assert "warning: Length bias" in result.stderr
    assert not storage.exists(layout.REPORT_ERROR)


def test_on_s3_the_report_has_content_types_warnings_and_opens(
    judged: Callable[[str], Judged], s3_endpoint: str, tmp_path: Path
) -> None:
    """Written to S3, each report object has its Content-Type (a browser shows the page, not a
    download), report/warnings.json holds the warnings alone, and `synthpref report open`
    fetches the report or prints a presigned SigV4 link whose page is text/html."""
    import urllib.request

    from synthpref.report.writer import CONTENT_TYPES
    from synthpref.storage import S3Storage, s3_client
    from tests.support.s3 import new_bucket

    local_manifest, local = judged("position")
    uri = f"s3://{new_bucket(s3_endpoint)}/runs/position"
    client = s3_client(s3_endpoint, "us-east-1")
    storage = S3Storage(uri, client)
    for path in sorted(local.root.rglob("*")):  # the judged run, without its report
        key = path.relative_to(local.root).as_posix()
        if path.is_file() and key not in CONTENT_TYPES:
            storage.write_bytes(key, path.read_bytes())
    document = local_manifest.model_dump(mode="json", by_alias=True)
    document["spec"]["storage"] = {"uri": uri, "endpointUrl": s3_endpoint}
    manifest = PreferenceRunManifest.model_validate(document)
    result = write_report(manifest, storage)
    for key, content_type in CONTENT_TYPES.items():
        head = client.head_object(Bucket=storage.bucket, Key=f"runs/position/{key}")
        assert head["ContentType"] == content_type, key
    warnings = storage.read_json(layout.REPORT_WARNINGS)["warnings"]
    assert {w["kind"] for w in warnings} == JUDGES["position"][2]
    assert [w["message"] for w in warnings] == [w["message"] for w in result.warnings]

    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(manifest.model_dump(mode="json", by_alias=True)))
    env = {KEY_ENV: DEFAULT_API_KEY}
    opened = synthpref("report", "open", str(run_file), "--to", "fetched", env=env, cwd=tmp_path)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip() == "report: fetched/index.html"
    assert "warning: Position bias" in opened.stderr
    assert sorted(p.name for p in (tmp_path / "fetched").iterdir()) == [
        "index.html",
        "report.json",
        "warnings.json",
    ]
    assert (tmp_path / "fetched" / "index.html").read_bytes() == storage.read_bytes(
        layout.REPORT_HTML
    )
    link = synthpref("report", "open", str(run_file), "--url", "--expires", "600", env=env)
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip()
    assert url.startswith(f"{s3_endpoint}/") and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert "X-Amz-Expires=600" in url
    with urllib.request.urlopen(url, timeout=30) as reply:  # no credentials: the link's own
        assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
        assert reply.read() == storage.read_bytes(layout.REPORT_HTML)
