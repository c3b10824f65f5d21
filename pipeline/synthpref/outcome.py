"""A finished run's outcome: everything lost on the way, by cause, and whether the spec's
acceptance thresholds hold.

Pure. `assess` reads the run summary that `parse` writes (`dataset/summary.json`, with the
mix and prepare counts in it). `parse` records the assessment in that summary, the local run
turns a rejected one into exit code 3, and the operator's planner into the `DataLoss`
condition and Succeeded vs Failed, so a run that lost its data never looks finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from synthpref.errors import SynthprefError
from synthpref.spec import AcceptanceSpec

# Every way an item is lost between the prompt files and the dataset, in pipeline order:
# cause -> how a message names it.
LOSS_CAUSES: Mapping[str, str] = {
    "malformed_prompt_lines": "malformed prompt lines skipped",
    "model_shards_failed": "model shards failed",
    "failed_answers": "answers lost to per-row errors",
    "prompts_lacking_answers": "prompts without enough answers",
    "requests_failed": "judge requests failed after all attempts",
    "unparseable_ratings": "ratings not parseable (or missing, or out of range)",
    "not_applicable_ratings": "ratings the judge gave as N/A (left out of the mean)",
    "prompts_without_pair": "prompts without a pair (ties, margin, too few ratings)",
}


class AcceptanceError(SynthprefError):
    """The run finished, but what it lost breaks the spec's acceptance thresholds."""

    exit_code = 3


def _total(counts: Any) -> int:
    return sum(int(v) for v in counts.values()) if isinstance(counts, Mapping) else 0


def losses(summary: Mapping[str, Any], model_shards_failed: int = 0) -> dict[str, int]:
    """Lost items by cause (only causes with a loss), from a run summary."""
    mix = summary.get("mix") or {}
    prepare = summary.get("prepare") or {}
    ratings = summary.get("rating_failures") or {}
    not_applicable = int(ratings.get("not_applicable", 0))
    counts = {
        "malformed_prompt_lines": int(prepare.get("malformed", 0)),
        "model_shards_failed": model_shards_failed,
        "failed_answers": int(mix.get("unusable_answers", 0)),
        "prompts_lacking_answers": _total(mix.get("prompts_lacking")),
        "requests_failed": _total(summary.get("request_failures")),
        "unparseable_ratings": _total(ratings) - not_applicable,
        "not_applicable_ratings": not_applicable,
        "prompts_without_pair": _total(summary.get("prompts_dropped")),
    }
    return {cause: n for cause, n in counts.items() if n}


def describe_losses(counts: Mapping[str, int]) -> str:
    """`3 judge requests failed after all attempts, 1 prompts without enough answers`."""
    return ", ".join(f"{n} {LOSS_CAUSES.get(cause, cause)}" for cause, n in counts.items() if n)


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass(frozen=True)
class Assessment:
    """The outcome of a finished run against its acceptance thresholds."""

    prompts: int
    prompts_with_pairs: int
    pairs: int
    requests: int
    requests_failed: int
    min_pair_fraction: float
    max_failed_request_fraction: float
    losses: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return not self.problems

    @property
    def pair_fraction(self) -> float:
        return _fraction(self.prompts_with_pairs, self.prompts)

    @property
    def failed_request_fraction(self) -> float:
        return _fraction(self.requests_failed, self.requests)

    def message(self, dataset_uri: str = "") -> str:
        """One line: the dataset, what was lost, and (when rejected) which threshold broke."""
        where = f" at {dataset_uri}" if dataset_uri else ""
        text = f"dataset with {self.pairs} pairs{where}"
        if self.losses:
            text += f"; lost: {describe_losses(self.losses)}"
        if self.problems:
            text += f"; rejected: {'; '.join(self.problems)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["problems"] = list(self.problems)
        document.update(
            accepted=self.accepted,
            pair_fraction=round(self.pair_fraction, 6),
            failed_request_fraction=round(self.failed_request_fraction, 6),
        )
        return document


def assess(
    summary: Mapping[str, Any], acceptance: AcceptanceSpec, model_shards_failed: int = 0
) -> Assessment:
    """Judge a run summary against `acceptance`; every broken threshold is one problem."""
    mix = summary.get("mix") or {}
    prompts = int(mix.get("prompts", summary.get("prompts", 0)))
    with_pairs = int(summary.get("prompts_with_pairs", 0))
    requests = int(summary.get("requests", 0))
    failed = _total(summary.get("request_failures"))
    problems: list[str] = []
    if _fraction(with_pairs, prompts) < acceptance.min_pair_fraction:
        problems.append(
            f"{with_pairs} of {prompts} prompts ({_fraction(with_pairs, prompts):.1%}) yielded "
            f"a pair, below acceptance.minPairFraction {acceptance.min_pair_fraction:g}"
        )
    if requests and _fraction(failed, requests) > acceptance.max_failed_request_fraction:
        problems.append(
            f"{failed} of {requests} judge requests ({_fraction(failed, requests):.1%}) failed "
            f"after all attempts, above acceptance.maxFailedRequestFraction "
            f"{acceptance.max_failed_request_fraction:g}"
        )
    return Assessment(
        prompts=prompts,
        prompts_with_pairs=with_pairs,
        pairs=int(summary.get("pairs", 0)),
        requests=requests,
        requests_failed=failed,
        min_pair_fraction=acceptance.min_pair_fraction,
        max_failed_request_fraction=acceptance.max_failed_request_fraction,
        losses=losses(summary, model_shards_failed),
        problems=tuple(problems),
    )
