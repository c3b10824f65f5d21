"""The failure-mode table: bad inputs and faults through the real `synthpref` command.

Each row is one way a run goes wrong as a user meets it: what was given or what broke, the
command, the exit code, what its one `Error:` line must name, and what must be on disk
afterwards (nothing half-done that a later run would trust, nothing committed lost). Every
command runs as a subprocess of the console script, against local storage, a real S3 server
(moto) and the OpenAI-compatible test server. The same table, with what the user sees and how
to recover, is docs/failure-modes.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref import layout
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.generate import run_generate
from synthpref.stages.mix import run_mix
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage
from tests.support.cli import error_lines, one_error, synthpref
from tests.support.openai_server import (
    DEFAULT_API_KEY,
    ErrorLine,
    Judgement,
    OpenAIServer,
    RequestInfo,
    closed_base_url,
)

KEYS = {"ANSWER_KEY": DEFAULT_API_KEY, "JUDGE_KEY": DEFAULT_API_KEY}
PROMPTS = [{"text": f"Question {i}: why?", "n": i} for i in range(4)]


@dataclass
class World:
    """One case's files, servers and environment."""

    root: Path
    server: OpenAIServer
    s3_endpoint: str
    env: dict[str, str] = field(default_factory=lambda: dict(KEYS))

    @property
    def store(self) -> LocalStorage:
        return LocalStorage(self.root / "store")

    def prompts(self, *lines: Any, name: str = "p.jsonl") -> Path:
        """Write a prompt file; a line is a dict (JSON), str (as is) or bytes (raw)."""
        folder = self.root / "prompts"
        folder.mkdir(exist_ok=True)
        data = b"".join(
            line
            if isinstance(line, bytes)
            else (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n"
            for line in lines
        )
        (folder / name).write_bytes(data)
        return folder

    def spec(self, **sections: Any) -> dict[str, Any]:
        endpoint = {"baseUrl": self.server.base_url, "maxRetries": 0, "timeoutSeconds": 5}
        document: dict[str, Any] = {
            "prompts": {"uri": str(self.root / "prompts"), "shardSize": 2},
            "storage": {"uri": str(self.root / "store")},
            "models": [
                {
                    "name": name,
                    "backend": "openai",
                    "path": name,
                    "sampling": {"maxTokens": 16, "seed": i},
                    "openai": {**endpoint, "apiKeyEnv": "ANSWER_KEY"},
                }
                for i, name in enumerate(("a", "b"))
            ],
            "mix": {"responsesPerPrompt": 2, "seed": 1},
            "judge": {
                "backend": "openai",
                "model": "judge-1",
                "pollIntervalSeconds": 0.01,
                "openai": {**endpoint, "apiKeyEnv": "JUDGE_KEY", "maxRetries": 2},
            },
        }
        document.update(sections)
        return document

    def run_file(self, spec: dict[str, Any] | None = None, name: str = "run") -> str:
        return self.text(yaml.safe_dump(manifest(spec or self.spec(), name)))

    def text(self, content: str) -> str:
        path = self.root / "run.yaml"
        path.write_text(content)
        return str(path)

    def parsed(self, spec: dict[str, Any] | None = None) -> PreferenceRunSpec:
        return PreferenceRunSpec.model_validate(spec or self.spec())

    def done_through(self, last: str, spec: dict[str, Any] | None = None) -> PreferenceRunSpec:
        """Run the stages up to `last` (prepare, generate or mix) in this process, with the
        default prompts unless the case wrote its own."""
        if not (self.root / "prompts").exists():
            self.prompts(*PROMPTS)
        parsed = self.parsed(spec)
        order = ["prepare", "generate", "mix"]
        for done in order[: order.index(last) + 1]:
            if done == "prepare":
                run_prepare(parsed, self.store)
            elif done == "generate":
                for model in parsed.models:
                    run_generate(parsed, self.store, model.name)
            elif done == "mix":
                run_mix(parsed, self.store)
        return parsed


def manifest(spec: dict[str, Any], name: str = "run") -> dict[str, Any]:
    return {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "PreferenceRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def with_model(world: World, **fields: Any) -> dict[str, Any]:
    """The default spec with `fields` set on the first model."""
    spec = world.spec()
    spec["models"][0] = {**spec["models"][0], **fields}
    return spec


def nested(world: World, path: str, value: Any) -> dict[str, Any]:
    """The default spec with one field (dotted path, camelCase) set."""
    spec = world.spec()
    node: Any = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[last] = value
    return spec


# ------------------------------------------------------------------ what must be on disk


def nothing_written(world: World) -> None:
    assert not (world.root / "store").exists() or not any((world.root / "store").iterdir())


def not_prepared(world: World) -> None:
    assert not world.store.exists(layout.PROMPTS_MANIFEST)
    assert world.store.list("generations/") == []


def no_generations(world: World) -> None:
    assert [k for k in world.store.list("generations/") if k.endswith(".commit")] == []


def no_dataset(world: World) -> None:
    assert world.store.list("dataset/") == []


def prepared_only(world: World) -> None:
    assert world.store.exists(layout.PROMPTS_MANIFEST)
    no_generations(world)


def generations_kept(world: World) -> None:
    """What generate committed before the failing stage is still there."""
    for model in ("a", "b"):
        for shard in range(2):
            assert world.store.committed(layout.generation_shard(model, shard)) is not None


def judged_nothing(world: World) -> None:
    generations_kept(world)
    assert [k for k in world.store.list("results/") if k.endswith(".commit")] == []
    no_dataset(world)


def dataset_kept(world: World) -> None:
    summary = world.store.read_json(layout.SUMMARY)
    assert summary["outcome"]["accepted"] is False
    assert all(world.store.committed(layout.dataset_shard(s)) is not None for s in range(2))


def skipped_one(world: World) -> None:
    assert world.store.read_json(layout.PROMPTS_MANIFEST)["malformed"] == 1


def anything(world: World) -> None:
    """Nothing to check beyond the exit code and the message."""


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[World], list[str]]  # prepares the world, returns the command's arguments
    exit_code: int
    names: tuple[str, ...]  # substrings the Error line must contain ({url}: the server's URL)
    after: Callable[[World], None] = anything
    said: tuple[str, ...] = ()  # substrings stderr must contain besides (e.g. data loss)


def prepare(world: World, spec: dict[str, Any] | None = None, *lines: Any) -> list[str]:
    world.prompts(*(lines or PROMPTS))
    return ["prepare", world.run_file(spec)]


def stage(
    command: str,
    *options: str,
    done: str,
    spec: Callable[[World], dict[str, Any]] | None = None,
) -> Callable[[World], list[str]]:
    """Setup: the stages through `done` run in this process, then `synthpref COMMAND RUN.yaml
    OPTIONS` (a subcommand as "annotate/run")."""

    def setup(world: World) -> list[str]:
        document = spec(world) if spec is not None else world.spec()
        world.done_through(done, document)
        return [*command.split("/"), world.run_file(document), *options]

    return setup


def without(key: str, then: Callable[[World], list[str]]) -> Callable[[World], list[str]]:
    """Setup: `then`, with environment variable `key` unset for the command."""

    def setup(world: World) -> list[str]:
        args = then(world)
        world.env.pop(key)
        return args

    return setup


def two_runs(world: World) -> list[str]:
    first = yaml.safe_dump(manifest(world.spec(), "a"))
    return ["prepare", world.text(first + "---\n" + yaml.safe_dump(manifest(world.spec(), "b")))]


def local_run(world: World, *lines: Any, spec: dict[str, Any] | None = None) -> list[str]:
    world.prompts(*(lines or PROMPTS))
    return ["run", world.run_file(spec), "--local", "--no-progress"]


def uncommit_prompt_shard(world: World) -> list[str]:
    world.done_through("prepare")
    world.store.uncommit(layout.prompt_shard(1))
    return ["generate", world.run_file(), "--model", "a"]


def changed_prompts(world: World) -> list[str]:
    world.done_through("prepare")
    world.store.uncommit(layout.prompt_shard(1))
    world.prompts(*PROMPTS, {"text": "a new prompt"})
    return ["prepare", world.run_file()]


def storage_is_a_file(world: World) -> list[str]:
    (world.root / "store").write_text("not a folder")
    return prepare(world)


def s3_unreachable(world: World) -> list[str]:
    world.env["SYNTHPREF_STORAGE_RETRY_SECONDS"] = "2"
    endpoint = closed_base_url().removesuffix("/v1")
    return prepare(
        world, nested(world, "storage", {"uri": "s3://bucket-x/run", "endpointUrl": endpoint})
    )


def s3_bucket_missing(world: World) -> list[str]:
    storage = {"uri": "s3://no-such-bucket-here/run", "endpointUrl": world.s3_endpoint}
    return prepare(world, nested(world, "storage", storage))


def all_tied(world: World, spec: dict[str, Any] | None = None) -> list[str]:
    def tie(info: RequestInfo) -> Judgement | None:
        return Judgement({1: 3, 2: 3}) if info.custom_id else None

    world.server.request_script = tie
    return local_run(world, spec=spec)


def every_request_failed(world: World) -> list[str]:
    """The judge answers every request with an error line; then `synthpref parse`."""
    spec = world.spec()
    spec["judge"]["maxAttempts"] = 1
    world.done_through("mix", spec)
    world.server.request_script = lambda info: ErrorLine() if info.custom_id else None
    judged = synthpref("annotate", "run", world.run_file(spec), env=world.env, cwd=world.root)
    assert judged.returncode == 0, judged.stderr
    return ["parse", world.run_file(spec)]


def judge_down(world: World) -> dict[str, Any]:
    spec = world.spec()
    spec["judge"]["openai"] = {**spec["judge"]["openai"], "baseUrl": closed_base_url()}
    spec["judge"]["giveUpAfterSeconds"] = 1
    return spec


def answers_down(world: World) -> dict[str, Any]:
    return with_model(
        world, openai={"baseUrl": closed_base_url(), "apiKeyEnv": "ANSWER_KEY", "maxRetries": 0}
    )


def budget_exceeded(world: World) -> list[str]:
    world.done_through("prepare")
    world.server.fail_next(
        "POST",
        "/v1/chat/completions",
        400,
        count=2,  # both prompts of shard 0: more than errorBudget 0.1 of 2 rows
        message="This model's maximum context length is 16 tokens.",
        code="context_length_exceeded",
    )
    return ["generate", world.run_file(), "--model", "a"]


def key_rejected(world: World) -> list[str]:
    world.env["ANSWER_KEY"] = "sk-wrong"
    return stage("generate", "--model", "a", done="prepare")(world)


NOT_UTF8 = b'{"text": "caf\xe9"}\n'
NOT_UTF8_OFFSET = len(json.dumps(PROMPTS[0]).encode()) + 1 + NOT_UTF8.index(b"\xe9")


def skipping(world: World) -> dict[str, Any]:
    return nested(world, "prompts.onMalformed", "skip")


CASES = [
    # ---- the manifest: refused before any work
    Case(
        "yaml-syntax",
        lambda w: ["prepare", w.text("spec: [unclosed\n")],
        1,
        ("run.yaml", "not valid YAML"),
        nothing_written,
    ),
    Case(
        "no-preferencerun",
        lambda w: ["prepare", w.text("kind: Secret\nmetadata: {name: x}\n")],
        1,
        ("no document with kind: PreferenceRun",),
        nothing_written,
    ),
    Case(
        "two-preferenceruns",
        two_runs,
        1,
        ("2 PreferenceRun documents (a, b)", "its own file"),
        nothing_written,
    ),
    Case(
        "missing-run-file",
        lambda w: ["prepare", str(w.root / "missing.yaml")],
        1,
        ("missing.yaml: cannot read",),
    ),
    Case("run-file-is-a-folder", lambda w: ["prepare", str(w.root)], 2, ("is a directory",)),
    Case(
        "wrong-api-version",
        lambda w: [
            "prepare",
            w.text(yaml.safe_dump({**manifest(w.spec()), "apiVersion": "synthpref.dev/v1"})),
        ],
        1,
        ("apiVersion: must be 'synthpref.dev/v1alpha1'",),
        nothing_written,
    ),
    Case(
        "unknown-field",
        lambda w: ["prepare", w.run_file({**w.spec(), "modelz": []})],
        1,
        ("spec.modelz", "Extra inputs are not permitted"),
        nothing_written,
    ),
    Case(
        "bad-run-name",
        lambda w: ["prepare", w.run_file(name="My_Run")],
        1,
        ("metadata.name", "'My_Run' is not a valid run name"),
        nothing_written,
    ),
    Case(
        "run-name-too-long",
        lambda w: ["prepare", w.run_file(name="r" * 64)],
        1,
        ("metadata.name", "at most 63"),
        nothing_written,
    ),
    Case(
        "storage-uri-s3-typo",
        lambda w: prepare(w, nested(w, "storage.uri", "s3:/bucket/run")),
        1,
        ("spec.storage.uri", "unsupported URI scheme 's3:' (did you mean s3://...?)"),
        nothing_written,
    ),
    Case(
        "storage-uri-unknown-scheme",
        lambda w: prepare(w, nested(w, "storage.uri", "gs://bucket/run")),
        1,
        ("spec.storage.uri", "unsupported URI scheme 'gs:'"),
        nothing_written,
    ),
    Case(
        "storage-uri-bad-bucket",
        lambda w: prepare(w, nested(w, "storage.uri", "s3://My_Bucket/run")),
        1,
        ("spec.storage.uri", "'My_Bucket' is not a valid S3 bucket name"),
        nothing_written,
    ),
    Case(
        "prompts-uri-http",
        lambda w: prepare(w, nested(w, "prompts.uri", "https://example.com/p.jsonl")),
        1,
        ("spec.prompts.uri", "unsupported URI scheme 'https:'"),
        nothing_written,
    ),
    Case(
        "duplicate-model-names",
        lambda w: prepare(w, nested(w, "models.1.name", "a")),
        1,
        ("models: names must be unique", "['a']"),
        nothing_written,
    ),
    Case(
        "on-policy-model-unknown",
        lambda w: prepare(w, nested(w, "mix.onPolicyModel", "zz")),
        1,
        ("mix.onPolicyModel: 'zz' is not one of models",),
        nothing_written,
    ),
    Case(
        "k-above-models",
        lambda w: prepare(w, nested(w, "mix.responsesPerPrompt", 3)),
        1,
        ("mix.responsesPerPrompt: needs 3 distinct models, spec has 2",),
        nothing_written,
    ),
    Case(
        "bad-model-name",
        lambda w: prepare(w, nested(w, "models.0.name", "Model_A")),
        1,
        ("spec.models.0.name", "'Model_A'"),
        nothing_written,
    ),
    Case(
        "temperature-out-of-range",
        lambda w: prepare(w, nested(w, "models.0.sampling.temperature", 5)),
        1,
        ("spec.models.0.sampling.temperature", "less than or equal to 2"),
        nothing_written,
    ),
    Case(
        "error-budget-out-of-range",
        lambda w: prepare(w, nested(w, "models.0.errorBudget", 1.5)),
        1,
        ("spec.models.0.errorBudget", "less than or equal to 1"),
        nothing_written,
    ),
    Case(
        "acceptance-out-of-range",
        lambda w: prepare(w, nested(w, "acceptance", {"minPairFraction": -0.1})),
        1,
        ("spec.acceptance.minPairFraction", "greater than or equal to 0"),
        nothing_written,
    ),
    Case(
        "memory-not-a-quantity",
        lambda w: prepare(w, nested(w, "models.0.resources", {"requests": {"memory": "lots"}})),
        1,
        ("spec.models.0.resources.requests.memory", "'lots' is not a Kubernetes quantity"),
        nothing_written,
    ),
    # ---- prompt files: refused naming file and line; nothing prepared
    Case(
        "no-prompt-files",
        lambda w: ["prepare", w.run_file(nested(w, "prompts.uri", str(w.root / "nowhere")))],
        1,
        ("nowhere: no prompt files (*.jsonl) found",),
        not_prepared,
    ),
    Case(
        "prompt-not-json",
        lambda w: prepare(w, None, PROMPTS[0], "{not json", PROMPTS[1]),
        1,
        ("p.jsonl:2: not valid JSON",),
        not_prepared,
    ),
    Case(
        "prompt-without-text",
        lambda w: prepare(w, None, PROMPTS[0], PROMPTS[1], {"prompt": "no text"}),
        1,
        ("p.jsonl:3: missing string field 'text'",),
        not_prepared,
    ),
    Case(
        "prompt-text-empty",
        lambda w: prepare(w, None, {"text": "  "}),
        1,
        ("p.jsonl:1: field 'text' is empty",),
        not_prepared,
    ),
    Case(
        "prompt-not-an-object",
        lambda w: prepare(w, None, PROMPTS[0], '["text"]'),
        1,
        ("p.jsonl:2: expected a JSON object, got list",),
        not_prepared,
    ),
    Case(
        "prompt-not-utf8",
        lambda w: prepare(w, None, PROMPTS[0], NOT_UTF8),
        1,
        (f"p.jsonl:2: not valid UTF-8 at byte offset {NOT_UTF8_OFFSET}",),
        not_prepared,
    ),
    Case(
        "prompt-not-utf8-skipped",
        lambda w: prepare(w, skipping(w), PROMPTS[0], NOT_UTF8),
        0,
        (),
        skipped_one,
    ),
    Case(
        "every-prompt-malformed-skipped",
        lambda w: prepare(w, skipping(w), "{bad", "[1]"),
        1,
        (
            "no usable prompts in 1 file(s)",
            "2 malformed line(s) skipped (prompts.onMalformed: skip), e.g. ",
            "p.jsonl:1: not valid JSON",
        ),
        not_prepared,
    ),
    Case(
        "prompt-file-empty",
        lambda w: prepare(w, None, ""),
        1,
        ("no usable prompts in 1 file(s) (the files hold no prompt lines)",),
        not_prepared,
    ),
    Case(
        "run-local-malformed-prompt",
        lambda w: local_run(w, PROMPTS[0], "{not json"),
        1,
        ("p.jsonl:2: not valid JSON",),
        not_prepared,
    ),
    Case(
        "prompt-files-changed-before-repair",
        changed_prompts,
        1,
        (
            "the prompt files changed since prepare first ran",
            "4 prompts in 2 shards then, 5 in 3 now",
        ),
        not_prepared,
    ),
    # ---- storage
    Case("storage-is-a-file", storage_is_a_file, 1, ("exists and is not a directory",)),
    Case(
        "storage-not-writable",
        lambda w: prepare(w, nested(w, "storage.uri", "/sys/synthpref-store")),
        1,
        ("/sys/synthpref-store",),
    ),
    Case(
        "s3-bucket-missing",
        s3_bucket_missing,
        1,
        ("s3://no-such-bucket-here/run", "does not exist"),
    ),
    Case(
        "s3-unreachable",
        s3_unreachable,
        1,
        ("s3://bucket-x/run", "unavailable for", "rerun to resume"),
    ),
    # ---- a stage before its inputs: refused naming what to run; nothing committed
    Case(
        "generate-before-prepare",
        lambda w: (w.prompts(*PROMPTS), ["generate", w.run_file(), "--model", "a"])[1],
        1,
        ("prompts/manifest.json: not found; run the prepare stage first",),
        no_generations,
    ),
    Case(
        "mix-before-generate",
        stage("mix", done="prepare"),
        1,
        ("not committed: model a shard(s) 0, 1; model b shard(s) 0, 1", "run generate"),
        prepared_only,
    ),
    Case(
        "vllm-judge-before-mix",
        stage("judge", done="generate", spec=lambda w: nested(w, "judge.backend", "vllm")),
        1,
        ("mix shard(s) 0, 1 not committed; run the mix stage first",),
        generations_kept,
    ),
    Case(
        "annotate-before-mix",
        stage("annotate/submit", done="generate"),
        1,
        ("mix not committed; run the mix stage first",),
        generations_kept,
    ),
    Case(
        "parse-before-judge",
        stage("parse", done="mix"),
        1,
        (
            "the judge has not finished requests/shard-00000-part-000.jsonl (no result)",
            "synthpref annotate run",
        ),
        judged_nothing,
    ),
    Case(
        "prompt-shard-uncommitted",
        uncommit_prompt_shard,
        1,
        ("prompt shard(s) 1 of 2 have no commit marker; run the prepare stage again",),
        no_generations,
    ),
    Case(
        "unknown-model-option",
        stage("generate", "--model", "nope", done="prepare"),
        2,
        ("no model named 'nope'",),
    ),
    Case(
        "worker-out-of-range",
        stage("generate", "--model", "a", "--worker", "3", "--workers", "2", done="prepare"),
        2,
        ("worker 3 is not below --workers 2",),
    ),
    # ---- keys and endpoints: nothing committed that a rerun would not redo
    Case(
        "answer-key-missing",
        without("ANSWER_KEY", stage("generate", "--model", "a", done="prepare")),
        1,
        ("no API key for model 'a'", "ANSWER_KEY is not set"),
        no_generations,
    ),
    Case(
        "judge-key-missing",
        without("JUDGE_KEY", stage("annotate/run", done="mix")),
        1,
        ("JUDGE_KEY is not set",),
        generations_kept,
    ),
    Case(
        "answer-key-rejected",
        key_rejected,
        1,
        ("{url} rejected the API key from $ANSWER_KEY (HTTP 401",),
        no_generations,
    ),
    Case(
        "answer-endpoint-unreachable",
        stage("generate", "--model", "a", done="prepare", spec=answers_down),
        1,
        ("model a", "unreachable", "prompt shard 0 was not committed"),
        no_generations,
    ),
    Case(
        "error-budget-exceeded", budget_exceeded, 1, ("model a", "errorBudget 0.1"), no_generations
    ),
    Case(
        "judge-unreachable",
        stage("annotate/run", done="mix", spec=judge_down),
        1,
        (
            "judge endpoint http://127.0.0.1:",
            "unreachable for",
            "results fetched so far are kept",
            "rerun to resume",
        ),
        judged_nothing,
    ),
    # ---- the outcome
    Case(
        "zero-pairs-rejected",
        all_tied,
        3,
        (
            "failed its acceptance check",
            "dataset with 0 pairs",
            "0 of 4 prompts (0.0%) yielded a pair",
            "acceptance.minPairFraction 0.5",
        ),
        dataset_kept,
    ),
    Case(
        "parse-every-request-failed",
        every_request_failed,
        0,
        (),
        said=("data loss: 16 judge requests failed after all attempts",),
    ),
    Case(
        "zero-pairs-accepted-when-asked",
        lambda w: all_tied(w, nested(w, "acceptance", {"minPairFraction": 0})),
        0,
        (),
    ),
]


@pytest.fixture(scope="module")
def server() -> Any:
    with OpenAIServer() as running:
        yield running


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_failure_mode(
    case: Case,
    tmp_path: Path,
    server: OpenAIServer,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)  # for the stages a case runs in this process
    server.request_script = None
    world = World(tmp_path, server, s3_endpoint)
    args = case.setup(world)
    for key in KEYS:
        if key not in world.env:
            monkeypatch.delenv(key)
    result = synthpref(*args, env=world.env, cwd=tmp_path)
    assert result.returncode == case.exit_code, (result.stdout[-2000:], result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    if case.exit_code == 0:
        assert error_lines(result) == []
    else:
        message = one_error(result)
        for part in case.names:
            assert part.format(url=server.base_url) in message, message
    for part in case.said:
        assert part in result.stderr, result.stderr
    case.after(world)
    assert DEFAULT_API_KEY not in result.stdout + result.stderr


def test_the_table_is_large_and_every_case_is_named() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_ctrl_c_exits_130_and_keeps_committed_work(
    tmp_path: Path, server: OpenAIServer, s3_endpoint: str
) -> None:
    """SIGINT (Ctrl-C) in the middle of a stage: the documented exit 130 and message, not
    click's "Aborted!" and 1; what was committed stays."""
    import signal
    import subprocess
    import time

    from tests.support.cli import SYNTHPREF

    world = World(tmp_path, server, s3_endpoint)
    world.done_through("prepare")
    server.chat_delay_s = 30  # every answer hangs: the command is mid-request when interrupted
    before = len(server.calls_to("POST", "/v1/chat/completions"))  # the server is shared
    try:
        process = subprocess.Popen(
            [str(SYNTHPREF), "generate", world.run_file(), "--model", "a"],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **world.env},
        )
        deadline = time.monotonic() + 120
        while len(server.calls_to("POST", "/v1/chat/completions")) == before:
            assert time.monotonic() < deadline and process.poll() is None, "no request was sent"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        server.chat_delay_s = 0
    assert process.returncode == 130, stderr
    assert "Interrupted: committed work is kept; rerun to resume." in stderr
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    assert world.store.exists(layout.PROMPTS_MANIFEST)
