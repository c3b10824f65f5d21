"""Deterministic names and labels of a run's child objects; pure.

The planner, the builders and the observer all name a run's Jobs through `job_name`, so the
same work always maps to the same object: creating it twice is a 409, never a second Job.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

DOMAIN = "synthpref.dev"
LABEL_RUN = f"{DOMAIN}/run"
LABEL_STAGE = f"{DOMAIN}/stage"
LABEL_MODEL = f"{DOMAIN}/model"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "synthpref-operator"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
# Set on a Job the operator suspended for `spec.suspend`; only those it resumes, so an
# external suspend (Kueue) is never undone.
ANNOTATION_SUSPENDED_BY_RUN = f"{DOMAIN}/suspended-by-run"
FINALIZER = f"{DOMAIN}/cancel-batches"
# A Secret carrying this label set to "true" may be named by runs (see `admission.py`).
LABEL_ALLOW_RUNS = f"{DOMAIN}/allow-runs"
# "true" on a run being deleted: let it go without cancelling its judge batches.
ANNOTATION_SKIP_BATCH_CANCEL = f"{DOMAIN}/skip-batch-cancel"
# A new value on a Failed run retries it from where it stopped (committed shards are kept).
ANNOTATION_RETRY = f"{DOMAIN}/retry"

# The worker's run manifest (read by `synthpref.cli.load`).
MANIFEST_ENV = "SYNTHPREF_RUN_MANIFEST"

_MAX_NAME = 63  # Job names end up in the pods' job-name label


class Stage(StrEnum):
    PREPARE = "prepare"
    GENERATE = "generate"
    MIX = "mix"
    JUDGE = "judge"
    PARSE = "parse"


def job_name(run: str, stage: Stage, model: str | None = None) -> str:
    """`<run>-<stage>[-<model>]`, shortened with a hash suffix when over 63 characters."""
    suffix = f"{stage.value}-{model}" if model else stage.value
    name = f"{run}-{suffix}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = _MAX_NAME - len(digest) - 1
    return f"{name[:keep].rstrip('-')}-{digest}"


def run_selector(run: str) -> str:
    """The label selector of a run's Jobs."""
    return f"{LABEL_RUN}={run},{LABEL_MANAGED_BY}={MANAGED_BY}"
