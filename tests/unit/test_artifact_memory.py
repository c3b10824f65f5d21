"""The reconcile pass's memory of a run's storage (`artifact_memory.py`, used by
`observe.observe_artifacts`): a pass lists a part of storage again only when that part's stage
Job changed, when it never looked, or every `relist_seconds`; a retry or a spec change forgets
everything. Storage is a real directory; the spy only records which prefixes were listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthpref import layout
from synthpref.spec import PreferenceRunSpec
from synthpref.storage import LocalStorage
from synthpref_operator.artifact_memory import ArtifactMemory, JobMark, job_marks
from synthpref_operator.names import Stage
from synthpref_operator.observe import observe_artifacts, one_listing_is_cheaper
from synthpref_operator.planner import JobState
from tests.builders import spec_dict

SHARDS = 3


class ListingSpy(LocalStorage):
    """A real local storage that records the prefixes it listed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        self.listed.append(prefix)
        return super().list(prefix, limit)


@pytest.fixture
def storage(tmp_path: Path) -> ListingSpy:
    storage = ListingSpy(tmp_path)
    storage.write_json(layout.PROMPTS_MANIFEST, {"shards": SHARDS, "prompts": 6})
    return storage


@pytest.fixture
def spec() -> PreferenceRunSpec:
    return PreferenceRunSpec.model_validate(spec_dict())


def commit(storage: LocalStorage, key: str) -> None:
    storage.write_bytes(key, b"{}\n")
    storage.commit(key, {"rows": 1})


def generating(succeeded: int, complete: bool = False) -> dict[str, JobState]:
    job = JobState(
        "r-generate-m0", Stage.GENERATE, "m0", completions=2, succeeded=succeeded, complete=complete
    )
    return {job.name: job}


def test_a_fresh_memory_lists_everything(storage: ListingSpy, spec: PreferenceRunSpec) -> None:
    commit(storage, layout.generation_shard("m0", 0))
    commit(storage, layout.generation_shard("m1", 2))
    artifacts = observe_artifacts(spec, storage, ArtifactMemory(), {}, now=0.0)
    assert artifacts.shards == SHARDS and artifacts.prompts == 6
    assert artifacts.generated == {"m0": 1, "m1": 1, "m2": 0, "m3": 0}
    assert sorted(storage.listed) == ["dataset/", "generations/", "mix/"]
    # Without a memory (deletion, tests): full listings, as always.
    storage.listed.clear()
    assert observe_artifacts(spec, storage) == artifacts
    assert sorted(storage.listed) == ["dataset/", "generations/", "mix/"]


def test_steady_state_lists_nothing_and_a_changed_job_lists_its_part_only(
    storage: ListingSpy, spec: PreferenceRunSpec
) -> None:
    memory = ArtifactMemory()
    observe_artifacts(spec, storage, memory, generating(0), now=0.0)
    storage.listed.clear()
    commit(storage, layout.generation_shard("m0", 0))
    # The Job shows nothing new yet: nothing is listed (the commit is seen later).
    unchanged = observe_artifacts(spec, storage, memory, generating(0), now=1.0)
    assert storage.listed == [] and unchanged.generated["m0"] == 0
    # An index of m0's Job succeeded: progress is shown at most every progress_seconds (15),
    # counted from the part's last look (at 0.0); then only m0's prefix is listed again.
    early = observe_artifacts(spec, storage, memory, generating(1), now=2.0)
    assert storage.listed == [] and early.generated["m0"] == 0
    seen = observe_artifacts(spec, storage, memory, generating(1), now=15.0)
    assert storage.listed == ["generations/m0/"]
    assert seen.generated == {"m0": 1, "m1": 0, "m2": 0, "m3": 0}
    storage.listed.clear()
    commit(storage, layout.generation_shard("m0", 1))
    commit(storage, layout.generation_shard("m0", 2))
    # The Job completed: looked at at once, whatever the time since the last look.
    done = observe_artifacts(spec, storage, memory, generating(2, complete=True), now=16.0)
    assert storage.listed == ["generations/m0/"] and done.generated["m0"] == SHARDS


def test_a_failed_job_is_looked_at_at_once(storage: ListingSpy, spec: PreferenceRunSpec) -> None:
    memory = ArtifactMemory()
    observe_artifacts(spec, storage, memory, generating(0), now=0.0)
    commit(storage, layout.generation_shard("m0", 0))
    storage.listed.clear()
    job = JobState("r-generate-m0", Stage.GENERATE, "m0", completions=2, succeeded=1, failed=True)
    failed = observe_artifacts(spec, storage, memory, {job.name: job}, now=1.0)
    assert storage.listed == ["generations/m0/"] and failed.generated["m0"] == 1


@pytest.mark.parametrize(
    ("shards", "models", "due", "one_listing"),
    [
        (3, 4, 2, True),  # small run: all of generations/ fits one page
        (20, 20, 2, True),  # 800 keys: one page against two
        (1000, 20, 3, False),  # 40 pages against 3 x 2
        (1000, 20, 20, True),  # every model due: 40 pages either way
    ],
)
def test_generations_are_listed_whole_only_when_that_takes_fewer_pages(
    shards: int, models: int, due: int, one_listing: bool
) -> None:
    assert one_listing_is_cheaper(shards, models, due) is one_listing


def test_every_part_is_listed_again_every_relist_interval_a_few_parts_a_pass(
    storage: ListingSpy, spec: PreferenceRunSpec
) -> None:
    memory = ArtifactMemory(relist_seconds=60, routine_per_pass=2)
    observe_artifacts(spec, storage, memory, {}, now=0.0)
    commit(storage, layout.generation_shard("m1", 0))  # a worker still running committed
    storage.listed.clear()
    assert observe_artifacts(spec, storage, memory, {}, now=59.0).generated["m1"] == 0
    assert storage.listed == []
    # Six parts are due for the safety net; each pass takes two, in the order of the parts
    # (two models of a small run: one listing of generations/ is the cheaper way).
    passes = []
    for now in (60.0, 61.0, 62.0):
        storage.listed.clear()
        seen = observe_artifacts(spec, storage, memory, {}, now=now)
        passes.append(sorted(storage.listed))
    assert passes == [["generations/"], ["generations/"], ["dataset/", "mix/"]]
    assert seen.generated["m1"] == 1
    storage.listed.clear()
    observe_artifacts(spec, storage, memory, {}, now=119.0)
    assert storage.listed == []  # each part's own look starts its interval again


def test_progress_looks_come_first_and_are_capped_per_pass() -> None:
    parts = ["generations/m0/", "generations/m1/", "generations/m2/", "mix/", "dataset/"]

    def marks(succeeded: int, complete: str = "") -> dict[str, JobMark]:
        jobs = [
            JobState(
                f"r-generate-{p}",
                Stage.GENERATE,
                p.split("/")[1],
                completions=2,
                succeeded=2 if p == complete else succeeded,
                complete=p == complete,
            )
            for p in parts[:3]
        ]
        return job_marks(jobs)

    memory = ArtifactMemory(relist_seconds=60, routine_per_pass=2, manifest=(10, 100))
    for part in parts:
        memory.saw(part, 0, marks(0), now=0.0)
    assert memory.due(parts, marks(0), now=30.0) == set()
    # All three Jobs made progress and the safety net is due too: progress first, two a pass.
    assert memory.due(parts, marks(1), now=60.0) == {"generations/m0/", "generations/m1/"}
    memory.saw("generations/m0/", 1, marks(1), now=60.0)
    memory.saw("generations/m1/", 1, marks(1), now=60.0)
    assert memory.due(parts, marks(1), now=60.5) == {"generations/m2/", "mix/"}
    # A completed Job's part is looked at at once, beyond the cap.
    done = marks(1, complete="generations/m0/")
    assert memory.due(parts, done, now=61.0) == {"generations/m0/", "generations/m2/", "mix/"}


def test_a_part_with_every_shard_committed_is_not_listed_again(
    storage: ListingSpy, spec: PreferenceRunSpec
) -> None:
    for shard in range(SHARDS):
        commit(storage, layout.generation_shard("m0", shard))
    memory = ArtifactMemory(relist_seconds=60, routine_per_pass=10)
    assert observe_artifacts(spec, storage, memory, {}, now=0.0).generated["m0"] == SHARDS
    parts = [f"generations/m{i}/" for i in range(4)] + ["mix/", "dataset/"]
    assert memory.due(parts, {}, now=60.0) == set(parts) - {"generations/m0/"}
    # The parse part is final only once the run summary is there too.
    memory.saw("dataset/", SHARDS, {}, now=60.0)
    assert "dataset/" in memory.due(parts, {}, now=120.0)
    memory.summary = {"pairs": 3}
    assert "dataset/" not in memory.due(parts, {}, now=120.0)


def test_a_retry_or_spec_change_forgets_what_was_seen(
    storage: ListingSpy, spec: PreferenceRunSpec
) -> None:
    memory = ArtifactMemory()
    memory.rebase(("uid-1", 1, None))
    observe_artifacts(spec, storage, memory, {}, now=0.0)
    storage.uncommit(layout.PROMPTS_MANIFEST)
    storage.delete(layout.PROMPTS_MANIFEST)  # as prepare does when it cuts shards again
    storage.listed.clear()
    memory.rebase(("uid-1", 1, None))  # same basis: remembered
    assert observe_artifacts(spec, storage, memory, {}, now=1.0).shards == SHARDS
    memory.rebase(("uid-1", 1, "again"))  # retried: looks again
    assert observe_artifacts(spec, storage, memory, {}, now=2.0).shards is None
    storage.write_json(layout.PROMPTS_MANIFEST, {"shards": SHARDS, "prompts": 6})
    assert observe_artifacts(spec, storage, memory, {}, now=3.0).shards == SHARDS
    storage.delete(layout.PROMPTS_MANIFEST)
    memory.rebase(("uid-2", 1, "again"))  # deleted and made again under the same name
    assert observe_artifacts(spec, storage, memory, {}, now=4.0).shards is None


def test_the_judge_and_the_outcome_are_looked_at_when_their_jobs_change(
    storage: ListingSpy, spec: PreferenceRunSpec
) -> None:
    for shard in range(SHARDS):
        commit(storage, layout.mix_shard(shard))
        request = layout.request_file(shard, 0)
        commit(storage, request)
        commit(storage, layout.result_for_request(request))
    memory = ArtifactMemory()
    first = observe_artifacts(spec, storage, memory, {}, now=0.0)
    assert first.mixed == first.judged == SHARDS and first.summary is None
    assert sorted(storage.listed) == [
        "dataset/",
        "generations/",
        "mix/",
        "requests/",
        "results/",
    ]
    storage.listed.clear()
    storage.write_json(layout.SUMMARY, {"pairs": 3})
    storage.write_bytes(layout.REPORT_HTML, b"<html></html>")
    parse = JobState("r-parse", Stage.PARSE, completions=1, succeeded=1, complete=True)
    done = observe_artifacts(spec, storage, memory, {parse.name: parse}, now=1.0)
    assert storage.listed == ["dataset/"]
    assert done.summary == {"pairs": 3} and done.report_uri == storage.url(layout.REPORT_HTML)


def test_job_marks_group_jobs_by_the_part_they_write() -> None:
    jobs = [
        JobState("r-prepare", Stage.PREPARE),
        JobState("r-generate-a", Stage.GENERATE, "a", succeeded=1),
        JobState("r-mix", Stage.MIX, failed=True, failed_indexes=(0,)),
        JobState("r-judge", Stage.JUDGE),
        JobState("r-parse", Stage.PARSE),
    ]
    marks = job_marks(jobs)
    assert sorted(marks) == ["dataset/", "generations/a/", "judge", "mix/"]
    assert marks["mix/"] == (("r-mix", 0, False, True, (0,)),)
