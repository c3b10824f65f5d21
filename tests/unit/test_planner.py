"""Table tests of the pure planner: every phase transition, conditions, progress, events."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from synthpref.spec import PreferenceRunSpec
from synthpref_operator.names import Stage, job_name
from synthpref_operator.planner import (
    Artifacts,
    CreateJob,
    Event,
    JobState,
    JudgeLedger,
    JudgeOutage,
    Observed,
    StepJudge,
    SuspendJob,
    plan,
    set_condition,
)
from synthpref_operator.status import (
    ConditionStatus,
    ConditionType,
    JudgeProgress,
    Phase,
    Reason,
    RunStatus,
)
from tests.builders import spec_dict

RUN = "r"
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
MODELS = ("m0", "m1", "m2", "m3")


def spec(judge: str = "vllm", **extra: Any) -> PreferenceRunSpec:
    document = spec_dict(judge={"backend": judge}, **extra)
    document["models"][0]["replicas"] = 2
    return PreferenceRunSpec.model_validate(document)


def job(stage: Stage, model: str | None = None, **state: Any) -> JobState:
    return JobState(name=job_name(RUN, stage, model), stage=stage, model=model, **state)


def gen_jobs(**state: Any) -> dict[str, JobState]:
    jobs = [job(Stage.GENERATE, m, **state) for m in MODELS]
    return {j.name: j for j in jobs}


def jobs(*items: JobState) -> dict[str, JobState]:
    return {j.name: j for j in items}


EMPTY = Artifacts()
PREPARED = Artifacts(shards=3, prompts=6)
GENERATED = replace(PREPARED, generated=dict.fromkeys(MODELS, 3))
MIXED = replace(GENERATED, mixed=3)
JUDGED = replace(MIXED, judged=3)
SUMMARY = {
    "pairs": 5,
    "prompts": 6,
    "prompts_with_pairs": 5,
    "dataset": "s3://bucket/run/dataset/",
    "prompts_dropped": {"ties": 1},
}
PARSED = replace(JUDGED, parsed=3, summary=SUMMARY)


def observe(
    artifacts: Artifacts = EMPTY,
    job_states: dict[str, JobState] | None = None,
    status: RunStatus | None = None,
    judge: JudgeLedger | None = None,
) -> Observed:
    return Observed(
        name=RUN,
        generation=1,
        status=status or RunStatus(),
        jobs=job_states or {},
        artifacts=artifacts,
        judge=judge,
    )


def creates(actions: list[Any]) -> list[tuple[str, Stage, int, str | None]]:
    return [(a.name, a.stage, a.completions, a.model) for a in actions if isinstance(a, CreateJob)]


@pytest.mark.parametrize(
    ("artifacts", "job_states", "judge", "phase", "created"),
    [
        # Nothing yet: Pending, create the prepare Job.
        (Artifacts(), {}, "vllm", Phase.PENDING, [("r-prepare", Stage.PREPARE, 1, None)]),
        # Prepare Job exists, manifest not committed yet: Preparing, nothing to create.
        (Artifacts(), jobs(job(Stage.PREPARE)), "vllm", Phase.PREPARING, []),
        # Prompts prepared: one Indexed generation Job per model (completions = replicas).
        (
            PREPARED,
            jobs(job(Stage.PREPARE, complete=True)),
            "vllm",
            Phase.GENERATING,
            [("r-generate-m0", Stage.GENERATE, 2, "m0")]
            + [(f"r-generate-{m}", Stage.GENERATE, 1, m) for m in MODELS[1:]],
        ),
        # One model done, the others running: nothing new.
        (replace(PREPARED, generated={"m0": 3}), gen_jobs(), "vllm", Phase.GENERATING, []),
        # A done model's Job that went away is not recreated; a missing running one is.
        (
            replace(PREPARED, generated={"m0": 3, "m1": 3, "m2": 3}),
            {},
            "vllm",
            Phase.GENERATING,
            [("r-generate-m3", Stage.GENERATE, 1, "m3")],
        ),
        # Every model committed: mix.
        (GENERATED, gen_jobs(complete=True), "vllm", Phase.MIXING, [("r-mix", Stage.MIX, 1, None)]),
        # Mixed: the vLLM judge Job.
        (
            MIXED,
            jobs(job(Stage.MIX, complete=True)),
            "vllm",
            Phase.ANNOTATING,
            [("r-judge", Stage.JUDGE, 1, None)],
        ),
        # Mixed with the OpenAI judge: no Job (the controller steps the ledger).
        (MIXED, jobs(job(Stage.MIX, complete=True)), "openai", Phase.ANNOTATING, []),
        # Judged: parse.
        (
            JUDGED,
            jobs(job(Stage.JUDGE, complete=True)),
            "vllm",
            Phase.PARSING,
            [("r-parse", Stage.PARSE, 1, None)],
        ),
        # Summary committed: Succeeded.
        (PARSED, jobs(job(Stage.PARSE, complete=True)), "vllm", Phase.SUCCEEDED, []),
    ],
)
def test_phase_transitions(
    artifacts: Artifacts,
    job_states: dict[str, JobState],
    judge: str,
    phase: Phase,
    created: list[tuple[str, Stage, int, str | None]],
) -> None:
    actions, status = plan(spec(judge), observe(artifacts, job_states), T0)
    assert status.phase is phase
    assert creates(actions) == created
    assert (StepJudge() in actions) == (phase is Phase.ANNOTATING and judge == "openai")
    assert status.observed_generation == 1 and status.start_time == T0


def test_success_reports_the_result_and_completion_time() -> None:
    actions, status = plan(spec(), observe(PARSED), T1)
    assert status.result is not None and status.result.pairs == 5
    assert status.result.drops == {"ties": 1}
    assert status.completion_time == T1
    assert status.progress == "22/22"  # 1 + 3 shards x (4 models + mix + judge + parse)
    assert Event("Normal", "Succeeded", status.message) in actions
    succeeded = status.condition(ConditionType.SUCCEEDED)
    assert succeeded is not None and succeeded.status is ConditionStatus.TRUE


def test_the_result_names_the_report_or_why_it_is_missing() -> None:
    _, status = plan(spec(), observe(PARSED), T1)
    assert status.result is not None and status.result.report_uri is None
    written = replace(PARSED, report_uri="s3://bucket/run/report/index.html")
    _, status = plan(spec(), observe(written), T1)
    assert status.result is not None
    assert status.result.report_uri == "s3://bucket/run/report/index.html"
    assert status.phase is Phase.SUCCEEDED
    failed = replace(PARSED, report_error="run r: the run report could not be written (...)")
    _, status = plan(spec(), observe(failed), T1)
    assert status.phase is Phase.SUCCEEDED  # a report error never fails a finished run
    assert status.result is not None and status.result.report_error == failed.report_error
    assert status.model_dump(by_alias=True)["result"]["reportError"] == failed.report_error


def test_progress_and_per_model_counts() -> None:
    artifacts = replace(PREPARED, generated={"m0": 3, "m1": 1})
    _, status = plan(spec(), observe(artifacts, gen_jobs()), T0)
    assert status.progress == "5/22"
    assert [(m.name, m.shards_done, m.shards_total) for m in status.stages.models] == [
        ("m0", 3, 3),
        ("m1", 1, 3),
        ("m2", 0, 3),
        ("m3", 0, 3),
    ]
    assert "m1 1/3" in status.message


def test_failed_index_names_model_and_shards() -> None:
    failed = job(
        Stage.GENERATE,
        "m0",
        completions=2,
        failed=True,
        failed_indexes=(1,),
        failure="MaxFailedIndexesExceeded",
        pod_failures=("index 1: OOMKilled (exit 137)",),
    )
    states = {**gen_jobs(), failed.name: failed}
    actions, status = plan(spec(), observe(PREPARED, states), T0)
    assert status.phase is Phase.FAILED
    # Index 1 of 2 workers over 3 shards takes shard 1.
    assert "model m0: shard(s) 1 failed: Job r-generate-m0 index(es) 1" in status.message
    assert status.message.endswith("; pods: index 1: OOMKilled (exit 137)")
    assert creates(actions) == []
    assert any(isinstance(a, Event) and a.type == "Warning" for a in actions)
    failed_condition = status.condition(ConditionType.FAILED)
    assert failed_condition is not None and failed_condition.reason is Reason.JOB_FAILED
    # Failed is sticky: the next pass changes nothing, whatever it observes.
    again, same = plan(spec(), observe(PARSED, status=status), T1)
    assert again == [] and same.phase is Phase.FAILED and same.message == status.message


def test_a_failed_job_whose_work_is_committed_is_not_a_failure() -> None:
    failed = job(Stage.GENERATE, "m0", completions=2, failed=True, failed_indexes=(1,))
    artifacts = replace(PREPARED, generated={"m0": 3})
    _, status = plan(spec(), observe(artifacts, {**gen_jobs(), failed.name: failed}), T0)
    assert status.phase is Phase.GENERATING


def test_job_that_exits_zero_without_committing_fails_the_run() -> None:
    done_but_empty = jobs(job(Stage.MIX, complete=True))
    _, status = plan(spec(), observe(replace(GENERATED, mixed=2), done_but_empty), T0)
    assert status.phase is Phase.FAILED
    assert "Job r-mix completed but its work is not committed: mix: 2/3" in status.message
    failed = status.condition(ConditionType.FAILED)
    assert failed is not None and failed.reason is Reason.STAGE_INCOMPLETE


def test_judge_error_fails_the_run() -> None:
    judge = JudgeLedger(error="HTTP 401: bad key (OPENAI_API_KEY)")
    _, status = plan(spec("openai"), observe(MIXED, judge=judge), T0)
    assert status.phase is Phase.FAILED and "judge: HTTP 401" in status.message


def test_suspend_and_resume() -> None:
    running = gen_jobs()
    finished = job(Stage.PREPARE, complete=True)
    states = {**running, finished.name: finished}
    actions, status = plan(spec(suspend=True), observe(PREPARED, states), T0)
    assert status.phase is Phase.SUSPENDED
    assert sorted(a.name for a in actions if isinstance(a, SuspendJob) and a.suspend) == sorted(
        running
    )
    assert creates(actions) == []
    suspended = status.condition(ConditionType.SUSPENDED)
    assert suspended is not None and suspended.status is ConditionStatus.TRUE
    # Suspended, the OpenAI judge takes no step.
    actions, _ = plan(spec("openai", suspend=True), observe(MIXED), T0)
    assert StepJudge() not in actions
    # Resume: only Jobs the run suspended are resumed (an external suspend is left alone).
    mine = job(Stage.GENERATE, "m0", suspended=True, suspended_by_run=True)
    kueue = job(Stage.GENERATE, "m1", suspended=True)
    actions, resumed = plan(spec(), observe(PREPARED, jobs(mine, kueue), status), T1)
    assert [a for a in actions if isinstance(a, SuspendJob)] == [SuspendJob(mine.name, False)]
    assert resumed.phase is Phase.GENERATING
    condition = resumed.condition(ConditionType.SUSPENDED)
    assert condition is not None and condition.reason is Reason.RESUMED
    assert condition.last_transition_time == T1


def test_condition_time_moves_only_on_a_real_change() -> None:
    _, first = plan(spec(), observe(PREPARED, gen_jobs()), T0)
    _, second = plan(spec(), observe(replace(PREPARED, generated={"m0": 2}), gen_jobs(), first), T1)
    generated = second.condition(ConditionType.GENERATED)
    assert generated is not None and generated.last_transition_time == T0
    _, third = plan(spec(), observe(GENERATED, gen_jobs(complete=True), second), T1)
    generated = third.condition(ConditionType.GENERATED)
    assert generated is not None and generated.status is ConditionStatus.TRUE
    assert generated.last_transition_time == T1
    assert [c.type for c in third.conditions] == sorted(
        (c.type for c in third.conditions), key=list(ConditionType).index
    )


def test_set_condition_keeps_time_but_updates_reason() -> None:
    conditions = set_condition(
        [], ConditionType.MIXED, ConditionStatus.FALSE, Reason.WAITING, "", 1, T0
    )
    updated = set_condition(
        conditions, ConditionType.MIXED, ConditionStatus.FALSE, Reason.IN_PROGRESS, "now", 2, T1
    )
    assert len(updated) == 1
    assert updated[0].last_transition_time == T0 and updated[0].reason is Reason.IN_PROGRESS
    assert updated[0].observed_generation == 2


def test_events_only_on_phase_change() -> None:
    actions, status = plan(spec(), observe(PREPARED, gen_jobs()), T0)
    assert [a.reason for a in actions if isinstance(a, Event)] == ["Generating"]
    actions, _ = plan(spec(), observe(PREPARED, gen_jobs(), status), T1)
    assert [a for a in actions if isinstance(a, Event)] == []


def test_judge_progress_is_reported() -> None:
    ledger = JudgeLedger(
        JudgeProgress(
            files=3,
            files_done=1,
            requests=36,
            requests_done=12,
            batches=3,
            batches_by_status={"submitted": 2},
        )
    )
    _, status = plan(spec("openai"), observe(MIXED, judge=ledger), T0)
    assert status.stages.judge is not None and status.stages.judge.requests_done == 12
    assert "1/3 request files, 12/36 requests" in status.message


def test_large_runs_get_several_mix_workers() -> None:
    big = Artifacts(shards=45, generated=dict.fromkeys(MODELS, 45))
    actions, _ = plan(spec(), observe(big), T0)
    assert creates(actions) == [("r-mix", Stage.MIX, 3, None)]


def test_status_never_holds_a_secret() -> None:
    document = spec_dict(
        storage={
            "uri": "s3://bucket/p",
            "credentials": {
                "accessKeyId": {"name": "s3", "key": "id"},
                "secretAccessKey": {"name": "s3", "key": "secret"},
            },
        }
    )
    _, status = plan(PreferenceRunSpec.model_validate(document), observe(PARSED), T0)
    assert "s3" not in str(status.to_body()).replace("s3://", "")


def condition_of(status: RunStatus, kind: ConditionType) -> tuple[ConditionStatus, Reason, str]:
    found = status.condition(kind)
    assert found is not None, f"no {kind.value} condition"
    return found.status, found.reason, found.message


def test_a_clean_run_reports_no_data_loss() -> None:
    clean = replace(PARSED, summary={**SUMMARY, "prompts_dropped": {}, "prompts_with_pairs": 6})
    _, status = plan(spec(), observe(clean), T1)
    assert status.phase is Phase.SUCCEEDED and status.losses == {}
    assert condition_of(status, ConditionType.DATA_LOSS)[:2] == (
        ConditionStatus.FALSE,
        Reason.NO_DATA_LOSS,
    )


def test_success_with_losses_says_what_was_lost() -> None:
    lossy = {
        **SUMMARY,
        "requests": 24,
        "request_failures": {"error": 2},
        "rating_failures": {"unparseable": 3},
        "mix": {"prompts": 6, "unusable_answers": 1},
    }
    _, status = plan(spec(), observe(replace(PARSED, summary=lossy)), T1)
    assert status.phase is Phase.SUCCEEDED
    assert status.losses == {
        "failed_answers": 1,
        "requests_failed": 2,
        "unparseable_ratings": 3,
        "prompts_without_pair": 1,
    }
    state, reason, message = condition_of(status, ConditionType.DATA_LOSS)
    assert (state, reason) == (ConditionStatus.TRUE, Reason.DATA_LOST)
    assert "2 judge requests failed after all attempts" in message
    assert "lost: " in status.message and status.result is not None and status.result.accepted


def test_zero_pairs_is_never_success_by_default() -> None:
    empty = {**SUMMARY, "pairs": 0, "prompts_with_pairs": 0, "prompts_dropped": {"all_tied": 6}}
    actions, status = plan(spec(), observe(replace(PARSED, summary=empty)), T1)
    assert status.phase is Phase.FAILED
    assert status.message.startswith("acceptance check failed: dataset with 0 pairs")
    assert "0 of 6 prompts (0.0%) yielded a pair, below acceptance.minPairFraction 0.5" in (
        status.message
    )
    assert condition_of(status, ConditionType.FAILED)[:2] == (
        ConditionStatus.TRUE,
        Reason.ACCEPTANCE_FAILED,
    )
    assert status.result is not None and status.result.accepted is False
    assert Event("Warning", "Failed", status.message) in actions
    # The same spec again: still Failed, nothing recomputed.
    again, same = plan(spec(), observe(replace(PARSED, summary=empty), status=status), T1)
    assert again == [] and same.phase is Phase.FAILED
    # The user accepts empty datasets (a spec edit, so a new generation): re-assessed.
    edited = replace(observe(replace(PARSED, summary=empty), status=status), generation=2)
    _, accepted = plan(spec(acceptance={"minPairFraction": 0}), edited, T1)
    assert accepted.phase is Phase.SUCCEEDED
    assert condition_of(accepted, ConditionType.FAILED)[:2] == (
        ConditionStatus.FALSE,
        Reason.NO_FAILURE,
    )


def test_other_failures_are_not_reassessed_after_an_edit() -> None:
    judge = JudgeLedger(error="HTTP 401: bad key (OPENAI_API_KEY)")
    _, failed = plan(spec("openai"), observe(MIXED, judge=judge), T0)
    edited = replace(observe(PARSED, status=failed), generation=2)
    _, still = plan(spec("openai"), edited, T1)
    assert still.phase is Phase.FAILED and still.message == failed.message


def test_losses_show_while_the_run_goes_on() -> None:
    ledger = JudgeLedger(JudgeProgress(files=3, requests=36, requests_done=30, requests_failed=2))
    _, status = plan(spec("openai"), observe(MIXED, judge=ledger), T0)
    assert status.phase is Phase.ANNOTATING
    assert status.losses == {"requests_failed": 2}
    assert condition_of(status, ConditionType.DATA_LOSS)[0] is ConditionStatus.TRUE


def test_failed_model_shards_are_counted_as_lost() -> None:
    failed = job(Stage.GENERATE, "m0", completions=2, failed=True, failed_indexes=(0,))
    _, status = plan(spec(), observe(PREPARED, {**gen_jobs(), failed.name: failed}), T0)
    assert status.phase is Phase.FAILED
    # Index 0 of 2 workers over 3 shards takes shards 0 and 2.
    assert status.losses == {"model_shards_failed": 2}
    assert "2 model shards failed" in condition_of(status, ConditionType.DATA_LOSS)[2]


def test_an_unreachable_judge_endpoint_shows_in_the_status_and_one_warning() -> None:
    ledger = JudgeLedger(
        JudgeProgress(files=3, files_done=1, requests=36, requests_done=12),
        outage=JudgeOutage("http://judge:8000/v1", T0, "ConnectError: Connection refused"),
    )
    actions, status = plan(spec("openai"), observe(MIXED, judge=ledger), T1)
    assert status.phase is Phase.ANNOTATING
    assert status.message.endswith(
        "12/36 requests; judge endpoint http://judge:8000/v1 unreachable since "
        f"{T0}, retrying every pass (last error: ConnectError: Connection refused)"
    )
    assert status.stages.judge is not None
    assert status.stages.judge.endpoint_failing_since == T0
    assert status.stages.judge.last_error == "ConnectError: Connection refused"
    warnings = [a for a in actions if isinstance(a, Event) and a.type == "Warning"]
    assert [w.reason for w in warnings] == ["JudgeUnreachable"]
    assert "http://judge:8000/v1 unreachable" in warnings[0].message
    blocked = status.condition(ConditionType.BLOCKED)
    assert blocked is not None and blocked.status is ConditionStatus.TRUE
    assert blocked.reason is Reason.JUDGE_UNREACHABLE
    # While it stays down: no new Warning each pass.
    again, _ = plan(spec("openai"), observe(MIXED, judge=ledger, status=status), T1)
    assert [a for a in again if isinstance(a, Event)] == []
    # Back up: the outage leaves the status.
    back = JudgeLedger(JudgeProgress(files=3, files_done=2, requests=36, requests_done=24))
    _, recovered = plan(spec("openai"), observe(MIXED, judge=back, status=status), T1)
    assert recovered.stages.judge is not None
    assert recovered.stages.judge.endpoint_failing_since is None
    assert "unreachable" not in recovered.message
    unblocked = recovered.condition(ConditionType.BLOCKED)
    assert unblocked is not None and unblocked.reason is Reason.NOT_BLOCKED
